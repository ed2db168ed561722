"""`python -m prompt_tuning_jax.info MODEL [--text TEXT --tokenizer TOK]`: load a checkpoint and describe it.

Prints the family, sizes, parameter count and, given a tokenizer, the model's
next-token prediction for a text: a quick check that a checkpoint loads and runs.
"""
from __future__ import annotations

import argparse
import sys


def describe(model) -> str:
    """'gpt2: 12 layers, hidden 768, ...; 124,439,808 parameters'."""
    import jax
    from flax import nnx

    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return f"{model.config.describe()}; {n:,} parameters"


def next_tokens(model, tokenizer, text: str, k: int = 5) -> list[str]:
    """The model's k most likely next tokens after `text`, read where the seam says the prediction is."""
    import jax.numpy as jnp
    import numpy as np

    ids = jnp.asarray([tokenizer(text)["input_ids"]], jnp.int32)
    hidden, mask = model.activations(model.embed(ids), jnp.ones_like(ids))
    logits = model.logits(hidden[0, int(mask[0].sum()) - 1])
    return [tokenizer.decode([int(i)]) for i in np.argsort(-np.asarray(logits))[:k]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="hub id or local Hugging Face checkpoint folder")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the model's)")
    parser.add_argument("--text", help="text whose next token to predict")
    args = parser.parse_args(argv)
    try:
        import prompt_tuning_jax as ptj

        model = ptj.from_pretrained(args.model)
        print(describe(model))
        if args.text:
            tok = ptj.load_tokenizer(args.tokenizer or args.model)
            top = next_tokens(model, tok, args.text)
            print(f"next token after {args.text!r}: " + ", ".join(repr(t) for t in top))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def console_main():
    sys.exit(main())


if __name__ == "__main__":
    console_main()
