"""IA3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning"): learned vectors that rescale activations inside the frozen blocks.

    add_ia3(model)        # the family's targets (PEFT's) get a vector of ones
    merge_ia3(model)      # fold the vectors into the frozen weights: the same logits, no extra multiply

A target projection y = x W (+ b) then computes, as PEFT's `IA3Layer`:

    an attention projection:   y = (x W + b) * l       l: [out], its output rescaled
    a feed-forward projection: y = (x * l) W + b       l: [in], the MLP's intermediate activation rescaled

The targets are the family's `ia3_targets` ({module name: feed-forward?}), PEFT's defaults:
GPT-2 `c_attn` (its fused query, key and value: PEFT rescales all three, the paper keys and values)
and `mlp.c_proj`; T5 `k`, `v` (self- and cross-attention) and `wo` (the input of the MLP's output
projection), which is where the original library's `extended/train/ia3.py` puts them (`IA3Attention`
on keys and values, `IA3` on the MLP's intermediate activation); mT5 too (PEFT's mT5 default rescales
`wi_1`'s output instead: the same product). Vectors start at one, so the adapted model starts at the pretrained one. They
are `IA3Param`s (a `Trainable`): METHOD 'ia3' trains them (and a head) and nothing else.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning_jax.models.lora import projections
from prompt_tuning_jax.variables import IA3Param


class IA3(nnx.Module):
    """x [..., N] -> x * l (computed in float32, returned in x's dtype); l: `ia3_l` [N]."""

    def __init__(self, size: int, feedforward: bool):
        self.ia3_l = IA3Param(jnp.ones((size,), jnp.float32))
        self.feedforward = feedforward

    def __call__(self, x: jax.Array) -> jax.Array:
        return (x.astype(jnp.float32) * self.ia3_l[...]).astype(x.dtype)


def targets(model) -> dict[str, bool]:
    """{module name (its last parts, 'mlp.c_proj'): feed-forward?} of the family (`ia3_targets`)."""
    found = getattr(model, "ia3_targets", None)
    if not found:
        raise ValueError(f"{type(model).__name__} names no IA3 targets (ia3_targets), so METHOD 'ia3' has nothing "
                         "to rescale")
    return dict(found)


def target_layers(model) -> list[tuple[tuple, nnx.Module, str]]:
    """(path, projection, target name) of every projection of the blocks that a target names."""
    named = targets(model)
    found = []
    for path, layer in projections(model):
        dotted = ".".join(str(p) for p in path)
        name = next((t for t in named if dotted == t or dotted.endswith("." + t)), None)
        if name is not None:
            found.append((path, layer, name))
    return found


def add_ia3(model):
    """Gives every target projection its IA3 vector (ones); returns `model`."""
    named = targets(model)
    layers = target_layers(model)
    if not layers:
        raise ValueError(f"no projection of {type(model).__name__}'s blocks is an IA3 target {sorted(named)}")
    for _, layer, name in layers:
        n_in, n_out = layer.in_out
        layer.ia3 = nnx.data(IA3(n_in if named[name] else n_out, named[name]))
    return model


def merge_ia3(model):
    """Folds each IA3 vector into its projection's frozen weight (and bias) and removes it: the same
    function, without the extra multiply at every call. Returns `model` (changed in place)."""
    for _, layer, _ in target_layers(model):
        if layer.ia3 is None:
            continue
        scale = layer.ia3.ia3_l[...]
        layer.merge_scale(scale, input_side=layer.ia3.feedforward)
        layer.ia3 = None
    return model
