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


def parameters(config: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """The RoPE parameters of a config.json dict: `rope_parameters` (or its `key` entry, Gemma 3's per layer
    type), else the older `rope_theta` + `rope_scaling`. Always has 'rope_type' and 'rope_theta'."""
    found = config.get("rope_parameters")
    if isinstance(found, dict) and key is not None and key in found:
        found = found[key]
    if isinstance(found, dict) and "rope_theta" in found:
        params = dict(found)
    else:
        params = dict(config.get("rope_scaling") or {})
        params["rope_theta"] = config.get("rope_theta", 10000.0)
    params["rope_type"] = params.get("rope_type", params.pop("type", "default")) or "default"
    if params["rope_type"] not in ROPE_TYPES:
        raise ValueError(f"rope_type {params['rope_type']!r} is not supported; supported: {ROPE_TYPES}")
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
