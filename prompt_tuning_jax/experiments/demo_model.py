"""The offline demo's frozen model: a tiny GPT-2 (or Llama) with a word-level tokenizer, built in code.

`demo_checkpoint()` writes (once, in about 20 seconds) a Hugging Face checkpoint
folder — config.json, model.safetensors and a tokenizer — for a 2-layer GPT-2
whose vocabulary covers the synthetic `demo_sentiment` task; `demo_checkpoint(family="llama")`
the same for a 2-layer Llama (grouped-query attention, RoPE, a tied head: `models/demo_llama_tiny.gin`). The model is
pretrained as a plain language model on the task's training sentences, without
labels (like any LM, it learns which words go together); then it is frozen, and
prompt tuning has to find the task in it. No download.

The build runs in a child process on one CPU device and one core. XLA's
reductions depend on how many devices and cores it splits work over, and 600
steps of AdamW turn a last-bit difference into a different model, so building
in whatever process asked (a test run with 8 fake devices, a 64-core host)
would make the demo's numbers depend on what ran first. Pinned, the weights are
the same whatever the device count and core count (checked on Linux, where the
core can be pinned; elsewhere only the device count is).

    python -m prompt_tuning_jax.experiments.demo_model FOLDER [--family llama]   # what the child runs
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

CACHE = os.path.expanduser(os.environ.get("PTJ_CACHE", "~/.cache/prompt_tuning_jax"))
FOLDERS = {"gpt2": "demo-gpt2-tiny-v2",  # v2: built pinned (see above)
           "llama": "demo-llama-tiny-v2"}  # v2: 1500 pretraining steps
# Pretraining steps by family. After 600 the tiny Llama's last hidden state told positive from negative for only
# ~70% of sentences under a least-squares probe (the demo's prompt stayed at chance); after 1500, for 99.5%, as
# GPT-2's does after 600.
PRETRAIN_STEPS = {"gpt2": 600, "llama": 1500}
DEFAULT_FOLDER = os.path.join(CACHE, FOLDERS["gpt2"])
SPECIAL = ["<|endoftext|>", "<unk>"]


def _vocabulary() -> list[str]:
    from prompt_tuning_jax.data import demo_sentiment as demo

    words = set()
    for group in (demo.POSITIVE, demo.NEGATIVE, demo.NOUNS, demo.ADVERBS, demo.TEMPLATES):
        for text in group:
            words.update(re.findall(r"[a-z]+|[^\sa-z{}]", re.sub(r"\{[a-z0-9]+\}", " ", text)))
    words.update(["sentence", ":", "positive", "negative", "demo_sentiment", "sst2"])
    return SPECIAL + sorted(words)


def build_tokenizer():
    """A word-level `PreTrainedTokenizerFast` (whitespace + punctuation split), EOS = pad = <|endoftext|>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>", bos_token="<|endoftext|>")


def demo_checkpoint(folder: str | None = None, seed: int = 0, initializer_range: float = 0.02,
                    pretrain_steps: int | None = None, family: str = "gpt2") -> str:
    """The demo checkpoint folder of `family` ('gpt2' or 'llama'), built on first use in a pinned child process;
    returns its path. pretrain_steps: None is the family's PRETRAIN_STEPS."""
    if family not in FOLDERS:
        raise ValueError(f"the demo model's family must be one of {sorted(FOLDERS)}, got {family!r}")
    folder = os.fspath(folder or os.path.join(CACHE, FOLDERS[family]))
    if not _complete(folder):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=PINNED_XLA_FLAGS)
        cmd = [sys.executable, "-m", "prompt_tuning_jax.experiments.demo_model", folder, "--seed", str(seed),
               "--initializer_range", str(initializer_range), "--family", family]
        cmd += [] if pretrain_steps is None else ["--pretrain_steps", str(pretrain_steps)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not _complete(folder):
            raise RuntimeError(f"building the demo model in {folder} failed: "
                               f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return folder


PINNED_XLA_FLAGS = "--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false"


def _complete(folder: str) -> bool:
    return all(os.path.exists(os.path.join(folder, name)) for name in ("model.safetensors", "tokenizer.json"))


def _config(family: str, vocab_size: int, initializer_range: float):
    import prompt_tuning_jax as ptj

    if family == "llama":  # 4 query heads share 2 key/value heads; RoPE; the head tied to the embeddings
        return ptj.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                               tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                               initializer_range=initializer_range)
    return ptj.GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                          bos_token_id=0, eos_token_id=0, initializer_range=initializer_range)


def build(folder: str, seed: int = 0, initializer_range: float = 0.02, pretrain_steps: int | None = None,
          family: str = "gpt2") -> None:
    """Builds the demo checkpoint in this process and publishes the folder whole (see the module docstring).
    pretrain_steps: None is the family's PRETRAIN_STEPS."""
    import shutil

    import prompt_tuning_jax as ptj

    tokenizer = build_tokenizer()
    config = _config(family, len(tokenizer), initializer_range)
    model = ptj.init_random(config, seed=seed)
    pretrain(model, tokenizer, steps=PRETRAIN_STEPS[family] if pretrain_steps is None else pretrain_steps, seed=seed)
    tmp = f"{folder}.tmp{os.getpid()}"  # several processes may build at once: each in its own folder
    os.makedirs(tmp, exist_ok=True)
    ptj.save_pretrained(model, tmp)
    tokenizer.save_pretrained(tmp)
    try:
        if os.path.exists(folder) and not _complete(folder):
            shutil.rmtree(folder)  # a half-built folder from an older interrupted run
        os.replace(tmp, folder)
    except OSError:  # another process finished first; its result is identical
        shutil.rmtree(tmp, ignore_errors=True)


def pretrain(model, tokenizer, steps: int = 600, batch_size: int = 64, learning_rate: float = 3e-3, seed: int = 0):
    """Next-token training of all weights on the unlabeled training sentences of `demo_sentiment`."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from prompt_tuning_jax.data import demo_sentiment as demo_data

    sentences = [row["sentence"] for row in demo_data.generate(demo_data.SPLITS["train"], seed=0)]
    ids = tokenizer(sentences)["input_ids"]
    length = max(len(x) for x in ids) + 1
    eos = tokenizer.eos_token_id
    tokens = np.full((len(ids), length), eos, np.int32)
    mask = np.zeros((len(ids), length), np.float32)
    for i, x in enumerate(ids):
        tokens[i, :len(x) + 1] = [*x, eos]
        mask[i, :len(x) + 1] = 1
    optimizer = nnx.Optimizer(model, optax.adamw(learning_rate, weight_decay=0.01), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, tokens, mask):
        def loss_fn(model):
            logits = model(tokens[:, :-1], mask[:, :-1])
            logp = jax.nn.log_softmax(logits, -1)
            nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
            return (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rows = rng.integers(0, len(tokens), batch_size)
        step(model, optimizer, tokens[rows], mask[rows])


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build the demo checkpoint (demo_checkpoint() runs this).")
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--initializer_range", type=float, default=0.02)
    parser.add_argument("--pretrain_steps", type=int, default=None, help="default: the family's PRETRAIN_STEPS")
    parser.add_argument("--family", choices=sorted(FOLDERS), default="gpt2")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core, before the XLA backend starts its thread pool
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    build(args.folder, args.seed, args.initializer_range, args.pretrain_steps, args.family)
