"""Rotary position embeddings (RoPE) as transformers computes them, for the decoder-only families (Llama, Mistral,
Qwen, Gemma 3).

    inv_freq = inverse_frequencies(params, head_dim, positions, max_position_embeddings)   # [D/2] float32
    q = apply(q, positions, inv_freq)                                                      # q [B, T, N, D]

`params` is a checkpoint's `rope_parameters` (transformers 5; older config.json files give `rope_theta` and
`rope_scaling`, which `parameters` turns into the same dict). Types: 'default', 'linear' (positions divided by
`factor`), 'dynamic' (NTK-aware: the base grows once the longest position passes max_position_embeddings), and
'llama3' (Llama 3.1's: long wavelengths divided by `factor`, short ones kept, a smooth blend between). Positions
come from the attention mask, so a row's rotation does not depend on its padding.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
# The keys each type needs beyond rope_theta (transformers' `_check_received_keys`).
REQUIRED = {"default": (), "linear": ("factor",), "dynamic": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def parameters(config: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """The RoPE parameters of a config.json dict, as transformers 5 standardises them (`convert_rope_params_to_dict`,
    `standardize_rope_params`): `rope_scaling` (older files) or else `rope_parameters` (or its `key` entry, Gemma
    3's per layer type); `rope_theta` from the dict, else the top level, else 10000; 'type' read as 'rope_type';
    llama3's `original_max_position_embeddings` defaults to the top-level one, else to `max_position_embeddings`.

    -> a dict with 'rope_type', 'rope_theta' and the keys its type needs. ValueError on a type we do not compute or a
    missing key, naming it."""
    found = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if key is not None and isinstance(found.get(key), dict):
        found = found[key]
    params = dict(found)
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.pop("type", "default")) or "default"
    kind = params["rope_type"]
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_type {kind!r} is not supported (config.json's rope_parameters / rope_scaling); "
                         f"supported: {ROPE_TYPES}")
    if kind == "llama3":
        if config.get("original_max_position_embeddings") is not None:
            params["original_max_position_embeddings"] = config["original_max_position_embeddings"]
        elif config.get("max_position_embeddings") is not None:
            params.setdefault("original_max_position_embeddings", config["max_position_embeddings"])
    missing = [k for k in REQUIRED[kind] if params.get(k) is None]
    if missing:
        raise ValueError(f"rope_type {kind!r} needs {', '.join(missing)} in config.json's rope_parameters "
                         f"(or rope_scaling); found {sorted(params)}")
    return params


def _default(theta: float, dim: int) -> jax.Array:
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def inverse_frequencies(params: dict[str, Any], head_dim: int, positions: jax.Array,
                        max_position_embeddings: int) -> jax.Array:
    """[D/2] inverse frequencies ('dynamic': from the batch's longest position, as transformers takes the max of
    position_ids)."""
    kind, theta = params["rope_type"], float(params["rope_theta"])
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    if kind == "default":
        return _default(theta, dim)
    factor = float(params["factor"])
    if kind == "linear":
        return _default(theta, dim) / factor
    if kind == "dynamic":
        seq_len = jnp.maximum(jnp.max(positions) + 1, max_position_embeddings).astype(jnp.float32)
        base = theta * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    # llama3
    inv_freq = _default(theta, dim)
    original = float(params["original_max_position_embeddings"])
    low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    low_wavelen, high_wavelen = original / low, original / high
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def apply(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """x [B, T, N, D] rotated by positions [B|1, T] (transformers' rotate_half layout: the two halves of D pair up),
    computed in float32, returned in x's dtype."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq.reshape(-1)  # [B, T, D/2]
    rot = angles.shape[-1] * 2
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]  # [B, T, 1, D/2]
    x32 = x.astype(jnp.float32)
    x1, x2, rest = x32[..., :rot // 2], x32[..., rot // 2:rot], x32[..., rot:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return out.astype(x.dtype)
