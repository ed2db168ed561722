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

`export_peft(model, folder, ...)` writes the factors as a PEFT LoRA adapter
(`PeftModel.from_pretrained(base, folder)` loads it and computes what ours does); a
METHOD 'lora:R' training run writes one to `MODEL_DIR/lora_adapter/` at its end.
"""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning_jax import files
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


def lora_rank(model) -> int | None:
    """The rank of `model`'s LoRA factors (None: no LoRA)."""
    ranks = {layer.lora.lora_A.shape[1] for _, layer in projections(model) if layer.lora is not None}
    return ranks.pop() if ranks else None


def export_peft(model, folder: str | os.PathLike, base_model_name_or_path: str | None = None,
                task_type: str | None = None, arrays=None) -> str:
    """Writes `model`'s LoRA factors as a PEFT LoRA adapter: `adapter_config.json` and
    `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight` [r, in] and
    `lora_B.weight` [out, r] (PyTorch's Linear layout); returns the folder.

    task_type: default the family's (`peft_task_type`: "CAUSAL_LM" for GPT-2, "SEQ_2_SEQ_LM" for T5). arrays: optional host copies of the
    factors, {module: (A [in, r], B [r, out])}, e.g. gathered from a multi-host run.
    """
    from safetensors.numpy import save as safetensors_bytes

    adapted = [(path, layer) for path, layer in projections(model) if layer.lora is not None]
    if not adapted:
        raise ValueError("this model has no LoRA factors to export (add_lora first)")
    tensors, targets = {}, set()
    for path, layer in adapted:
        module = model.checkpoint_key((*path, "weight"))[:-len(".weight")]
        a, b = (arrays or {}).get(module) or (np.asarray(layer.lora.lora_A[...]), np.asarray(layer.lora.lora_B[...]))
        tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(np.asarray(a, np.float32).T)
        tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(np.asarray(b, np.float32).T)
        targets.add(str(path[-1]))
    first = adapted[0][1]
    rank = first.lora.lora_A.shape[1]
    config = {"peft_type": "LORA", "task_type": task_type or model.peft_task_type, "base_model_name_or_path": base_model_name_or_path,
              "r": rank, "lora_alpha": first.lora.scaling * rank, "lora_dropout": 0.0, "bias": "none",
              "target_modules": sorted(targets), "fan_in_fan_out": bool(getattr(first, "FAN_IN_FAN_OUT", False)),
              "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "revision": None}
    folder = os.fspath(folder)
    files.atomic_write(os.path.join(folder, "adapter_model.safetensors"),
                       safetensors_bytes(tensors, metadata={"format": "pt"}))
    files.atomic_write(os.path.join(folder, "adapter_config.json"), json.dumps(config, indent=2, sort_keys=True))
    return folder
