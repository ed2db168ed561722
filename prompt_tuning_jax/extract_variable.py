"""`python -m prompt_tuning_jax.extract_variable SOURCE VARIABLE OUTPUT.npy`: one array out of a checkpoint.

The original library's `extract_variable`, for the three kinds of checkpoint here:

    # a tensor of a Hugging Face checkpoint (folder or hub id), e.g. the embedding table that
    # prompts/from_*_numpy.gin read as EMBEDDING_FILE; `embedding_table` asks the model for its own
    python -m prompt_tuning_jax.extract_variable google/t5-base-lm-adapt embedding_table t5_base_embeddings.npy
    python -m prompt_tuning_jax.extract_variable /ckpt/gpt2 transformer.wte.weight wte.npy
    # the trained state of a run (MODEL_DIR): soft_prompt, head.weight, head.bias; --step (default: latest)
    python -m prompt_tuning_jax.extract_variable runs/sst2 soft_prompt sst2_prompt.npy --step 2000
    # a variable of a T5X checkpoint (the original library's), by its `/`-separated path under target/
    # (`target/` may be left out), e.g. a prompt it trained or its embedding table
    python -m prompt_tuning_jax.extract_variable gs://bucket/model/checkpoint_1110000 \
        target/encoder/prompt/prompt/prompt prompt.npy
    python -m prompt_tuning_jax.extract_variable /ckpt/checkpoint_3 target/token_embedder/embedding e.npy

The array is written as it is stored (float32 or bfloat16 becomes float32), atomically.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np


def from_run(model_dir: str, variable: str, step: int | None = None) -> np.ndarray:
    """A trained variable ('soft_prompt', 'head.weight', ...) from a MODEL_DIR's checkpoint."""
    import orbax.checkpoint as ocp

    from prompt_tuning_jax.training.checkpoint import Checkpointer

    ckpt = Checkpointer(model_dir, keep=None)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {model_dir}/checkpoints")
        tree = ckpt.manager.restore(step, args=ocp.args.Composite(trainable=ocp.args.StandardRestore()))["trainable"]
    finally:
        ckpt.close()
    flat = _flatten(tree)
    if variable not in flat:
        raise KeyError(f"{model_dir} step {step} has no variable {variable!r}; it has {sorted(flat)}")
    return np.asarray(flat[variable], np.float32)


def from_hf(source: str, variable: str) -> np.ndarray:
    """A tensor of a Hugging Face checkpoint by name, or the model's own `embedding_table`."""
    from prompt_tuning_jax.models import hf

    if variable == "embedding_table":
        return np.asarray(hf.from_pretrained(source).embedding_table, np.float32)
    ckpt = hf.Checkpoint(hf.resolve_folder(source))
    if variable not in ckpt:
        raise KeyError(f"{source} has no tensor {variable!r}; it has e.g. {sorted(ckpt.keys())[:8]} "
                       "(or ask for embedding_table)")
    return np.asarray(ckpt.get(variable), np.float32)


def from_t5x(source: str, variable: str) -> np.ndarray:
    """A variable of a T5X checkpoint directory by path (`target/encoder/prompt/prompt/prompt`);
    `embedding_table` is `target/token_embedder/embedding`."""
    from prompt_tuning_jax.models import t5x

    name = t5x.variable_name("token_embedder/embedding" if variable == "embedding_table" else variable)
    return np.asarray(t5x.read_variables(source, [name])[name], np.float32)


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a MODEL_DIR of a run, a Hugging Face checkpoint folder / hub id, or a "
                                           "T5X checkpoint directory")
    parser.add_argument("variable", help="soft_prompt, head.weight, ... (a run); a tensor name or embedding_table "
                                         "(Hugging Face); target/encoder/prompt/prompt/prompt, ... (T5X)")
    parser.add_argument("output", help="the .npy file to write")
    parser.add_argument("--step", type=int, help="checkpoint step of a run (default: the latest)")
    args = parser.parse_args(argv)
    try:
        from prompt_tuning_jax.models import t5x

        if os.path.isdir(os.path.join(args.source, "checkpoints")):
            array = from_run(args.source, args.variable, args.step)
        elif t5x.is_t5x_checkpoint(args.source):
            array = from_t5x(args.source, args.variable)
        else:
            array = from_hf(args.source, args.variable)
        from prompt_tuning_jax.files import atomic_write

        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        atomic_write(args.output, buffer.getvalue())
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(f"wrote {args.variable} {array.shape} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
