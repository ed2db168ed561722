"""`python -m prompt_tuning_jax.inspect PROMPT.npy --model <hub id or folder>`: a prompt's nearest tokens.

    python -m prompt_tuning_jax.inspect t5_1_1_lm100k_base/sst2.npy --model google/t5-base-lm-adapt \
        --labels negative,positive --png sst2_prompt.png

PROMPT is a `.npy` file ([P, H], or [K, P, H] for K task prompts: each is shown)
or the name of a released prompt (`t5_1_1_lm100k_base/sst2.npy`). For every
prompt position it prints the `--top` vocabulary tokens nearest by cosine
similarity, then the similarity of the positions to each class label (mean
embedding of the label's tokens), and writes a PNG heatmap of the latter with
each position's nearest token. `--toward TEXT` adds how near each position is to the token of
TEXT at that position (a wayward prompt's WAYWARD_PROMPT: the rank of that token among the
position's neighbours, how many positions have it nearest, and the squared distance).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from prompt_tuning_jax import files
from prompt_tuning_jax.pretrained_prompts import RELEASED, released_prompt
from prompt_tuning_jax.prompts.interpret import label_similarity, nearest_tokens, toward_tokens
from prompt_tuning_jax.prompts.io import load_prompt


def _token(tokenizer, i: int) -> str:
    text = tokenizer.convert_ids_to_tokens(int(i)) if i < len(tokenizer) else None
    return text if text is not None else f"<id {i}>"


def inspect_prompt(prompt: np.ndarray, table: np.ndarray, tokenizer, labels=(), top: int = 5) -> dict:
    """{'tokens': [P][top] (token, similarity), 'labels': names, 'label_similarity': [P, C]} of a [P, H] prompt."""
    ids, sims = nearest_tokens(prompt, table, top)
    tokens = [[(_token(tokenizer, i), float(s)) for i, s in zip(row_ids, row_sims)] for row_ids, row_sims in zip(ids, sims)]
    label_ids = [tokenizer.encode(label, add_special_tokens=False) for label in labels]
    label_sims = label_similarity(prompt, table, label_ids) if labels else np.zeros((len(prompt), 0))
    return {"tokens": tokens, "labels": list(labels), "label_similarity": label_sims}


def report(result: dict, title: str) -> str:
    lines = [f"{title}: nearest vocabulary tokens by cosine similarity"]
    for p, row in enumerate(result["tokens"]):
        lines.append(f"  {p:4d}  " + "  ".join(f"{tok!r} {sim:.3f}" for tok, sim in row))
    if result["labels"]:
        sims = result["label_similarity"]
        lines.append("similarity to the class labels (mean over positions, then the closest position):")
        for c, label in enumerate(result["labels"]):
            best = int(np.argmax(sims[:, c]))
            lines.append(f"  {label!r}: mean {sims[:, c].mean():.3f}; position {best} at {sims[best, c]:.3f}")
    return "\n".join(lines)


def toward_report(prompt, table, tokenizer, text: str) -> str:
    """Lines saying how near the prompt's first positions are to the tokens of `text` (`toward_tokens`)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    near = toward_tokens(prompt, table, ids)
    ranks = near["rank"]
    lines = [f"toward {text!r}: {near['matches']} of {near['n']} positions have the text's token as their nearest; "
             f"median rank {int(np.median(ranks)) if len(ranks) else 0}; squared distance {near['distance']:.4f} "
             "(sum over positions / P, zero rows past the text)"]
    lines += [f"  {p:4d}  {_token(tokenizer, i)!r}: rank {int(r)}" for p, (i, r) in enumerate(zip(ids, ranks))]
    return "\n".join(lines)


def heatmap(result: dict, path: str, title: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sims = result["label_similarity"]
    columns = result["labels"] + ["nearest token"]
    data = np.concatenate([sims, np.array([[row[0][1]] for row in result["tokens"]])], axis=1)  # [P, C + 1]
    fig, ax = plt.subplots(figsize=(2 + 1.4 * len(columns), 1 + 0.22 * len(data)))
    image = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(data)), [f"{p}: {row[0][0]}" for p, row in enumerate(result["tokens"])], fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="cosine similarity")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    files.atomic_write(path, buffer.getvalue())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="a .npy prompt, or a released prompt's name: " + ", ".join(sorted(RELEASED)))
    p.add_argument("--model", required=True, help="hub id or Hugging Face folder whose embeddings the prompt lives in")
    p.add_argument("--tokenizer", default=None, help="default: the model's")
    p.add_argument("--labels", default="", help="comma-separated class labels, e.g. negative,positive")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--png", default=None, help="heatmap path (default: <prompt name>_inspect.png here)")
    p.add_argument("--toward", default=None, metavar="TEXT",
                   help="a discrete prompt (a wayward prompt's WAYWARD_PROMPT): how near each position is to its token")
    args = p.parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args) -> None:
    from prompt_tuning_jax.models import from_pretrained
    from prompt_tuning_jax.tokenizer import load_tokenizer

    path = released_prompt(args.prompt) if args.prompt in RELEASED else args.prompt
    if not files.exists(path):
        raise FileNotFoundError(f"prompt file {path} does not exist (give a .npy or one of {sorted(RELEASED)})")
    prompts = load_prompt(path, layers=True)  # [P, H], or [K, P, H] task / [L, P, H] layer prompts: each one
    prompts = prompts[None] if prompts.ndim == 2 else prompts
    table = np.asarray(from_pretrained(args.model).embedding_table, np.float32)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    stem = os.path.splitext(os.path.basename(path))[0]
    for k, prompt in enumerate(prompts):
        title = stem if len(prompts) == 1 else f"{stem}[{k}]"
        result = inspect_prompt(prompt, table, tokenizer, labels, args.top)
        print(report(result, title))
        if args.toward:
            print(toward_report(prompt, table, tokenizer, args.toward))
        png = args.png or f"{stem}_inspect.png"
        if len(prompts) > 1:
            png = f"{os.path.splitext(png)[0]}_{k}.png"
        heatmap(result, png, f"{title}: similarity to labels and nearest token")
        print(f"heatmap: {png}")


if __name__ == "__main__":
    sys.exit(main())
