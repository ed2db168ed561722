"""LoRA (Hu et al., 2021): a trainable low-rank update beside each frozen projection of the blocks.

    add_lora(model, rank=8, alpha=8)        # every projection of every block gets one
    add_lora(model, 4, 8, targets=["c_attn"])   # or only those named so (PEFT's target_modules)

A projection W (with bias b) then computes, as PEFT's `LoraLayer` does without dropout,

    y = x W + b + (alpha / rank) * (x A) B       A: `lora_A` [in, r], B: `lora_B` [r, out]

A starts as PEFT's (Kaiming-uniform with a = sqrt(5): uniform in +-1/sqrt(in)), B at zero,
so the adapted model starts exactly at the pretrained one. A and B are `LoRAParam`s (a
`Trainable`): METHOD 'lora:R' trains them (and a head, if any) and nothing else, so the
optimizer state holds only them. The projections are the dense layers of the family's
blocks (GPT-2: c_attn, attn.c_proj, c_fc, mlp.c_proj; T5: q, k, v, o, wi / wi_0, wi_1, wo);
a family marks them with a `lora` attribute (None until `add_lora`) and `in_out` (in, out).

`prompts.io.export_peft_lora(model, folder, ...)` writes the factors as a PEFT LoRA adapter
(`PeftModel.from_pretrained(base, folder)` loads it and computes what ours does); a
METHOD 'lora:R' training run writes one to `MODEL_DIR/lora_adapter/` at its end.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning_jax.models import common
from prompt_tuning_jax.variables import LoRAParam


class LoRA(nnx.Module):
    """x [..., in] -> scaling * (x A) B [..., out], in x's dtype (bf16 products summed in float32)."""

    def __init__(self, n_in: int, n_out: int, rank: int, alpha: float, *, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(n_in)
        self.lora_A = LoRAParam(jax.random.uniform(rngs.params(), (n_in, rank), jnp.float32, -bound, bound))
        self.lora_B = LoRAParam(jnp.zeros((rank, n_out), jnp.float32))
        self.scaling = float(alpha) / rank

    def __call__(self, x: jax.Array) -> jax.Array:
        update = common.dense(common.dense(x, self.lora_A[...]), self.lora_B[...])
        return update * jnp.asarray(self.scaling, x.dtype)


def projections(model, targets: Sequence[str] | None = None) -> list[tuple[tuple, nnx.Module]]:
    """(path, layer) of the dense layers in `model`'s blocks (`model.BLOCK_COLLECTION`) that LoRA adapts;
    `targets`: only layers whose own name is in it (e.g. ['c_attn'], ['q', 'v'])."""
    collection = getattr(model, "BLOCK_COLLECTION", None)  # a family without blocks has nothing to adapt
    found = []
    for path, module in nnx.iter_modules(model):
        in_block = any(path[j] == collection and isinstance(path[j + 1], int) for j in range(len(path) - 1))
        if in_block and hasattr(module, "in_out") and (targets is None or (path and path[-1] in targets)):
            found.append((path, module))
    return found


def add_lora(model, rank: int, alpha: float = 8.0, targets: Sequence[str] | None = None, seed: int = 0):
    """Gives each projection of the blocks (or of `targets`) a LoRA update of `rank`; returns `model`.

    alpha: the update is scaled by alpha / rank (PEFT's `lora_alpha`; its default is 8).
    seed: of lora_A's draw (layer i draws from fold_in(key(seed), i)).
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"the LoRA rank must be an int >= 1 (METHOD 'lora:R'), got {rank!r}")
    layers = projections(model, targets)
    if not hasattr(model, "BLOCK_COLLECTION"):
        raise ValueError(f"{type(model).__name__} names no transformer blocks (BLOCK_COLLECTION), so METHOD "
                         "'lora:R' has no projections to adapt")
    if not layers:
        names = sorted({str(p[-1]) for p, _ in projections(model)})
        raise ValueError(f"LORA_TARGETS {list(targets or [])} names no projection of this model's blocks; "
                         f"its projections are {names}")
    key = jax.random.key(seed)
    for i, (_, layer) in enumerate(layers):
        layer.lora = nnx.data(LoRA(*layer.in_out, rank, alpha, rngs=nnx.Rngs(params=jax.random.fold_in(key, i))))
    return model

