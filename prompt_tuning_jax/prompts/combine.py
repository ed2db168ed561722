"""Putting a prompt into embedded inputs: one vectorised insert, two placements.

Every example gets its [P, H] prompt inserted at its own position `at[b]`:

    prefix: at = first real token      right pad: prompt text pads    left pad: pads prompt text
    suffix: at = last real token + 1   right pad: text prompt pads    left pad: pads text prompt

so the prompt always touches the text (never "prompt, pads, text"). Shapes stay
static ([B, T, H] -> [B, T + P, H]); the insert is one gather, no loop over the batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

PLACEMENTS = ("prefix", "suffix")


def first_real(mask: jax.Array) -> jax.Array:
    """[B, T] 0/1 -> [B] index of the first real token (0 for an all-pad row)."""
    return jnp.argmax(mask > 0, axis=-1).astype(jnp.int32)


def last_real(mask: jax.Array) -> jax.Array:
    """[B, T] 0/1 -> [B] index of the last real token (-1 for an all-pad row)."""
    t = mask.shape[-1]
    return (t - 1 - jnp.argmax(jnp.flip(mask > 0, axis=-1), axis=-1)
            - jnp.where(jnp.any(mask > 0, axis=-1), 0, t)).astype(jnp.int32)


def insert_positions(mask: jax.Array, placement: str, before_eos: bool = False) -> jax.Array:
    """[B] index in the input where the prompt starts, for `placement` ('prefix' or 'suffix').

    `before_eos` (suffix only; for T5, whose inputs end in EOS): the prompt goes
    before the last real token instead of after it.
    """
    if placement == "prefix":
        return first_real(mask)
    if placement == "suffix":
        return jnp.maximum(last_real(mask) + (0 if before_eos else 1), 0)
    raise ValueError(f"unknown prompt placement {placement!r}; use one of {PLACEMENTS}")


def insert(embeds: jax.Array, mask: jax.Array, prompt: jax.Array, at: jax.Array):
    """Inserts `prompt` into each row of `embeds` at `at[b]`.

    embeds [B, T, H], mask [B, T], prompt [P, H] or [B, P, H] (one per example:
    multi-task batches), at [B] ->
    (embeds [B, T+P, H], mask [B, T+P] with the prompt real, source [B, T] the new
    position of each original token).
    """
    b, t, h = embeds.shape
    if prompt.ndim == 2:
        prompt = jnp.broadcast_to(prompt[None], (b, *prompt.shape))
    p = prompt.shape[1]
    j = jnp.arange(t + p)[None, :]  # output positions [1, T+P]
    at = at[:, None]
    in_prompt = (j >= at) & (j < at + p)
    # Index into concat([embeds, prompt]) along the sequence axis: [B, T+P].
    src = jnp.where(j < at, j, jnp.where(in_prompt, t + j - at, j - p))
    both = jnp.concatenate([embeds, prompt.astype(embeds.dtype)], axis=1)
    out = jnp.take_along_axis(both, src[..., None], axis=1)
    out_mask = jnp.where(in_prompt, 1, jnp.take_along_axis(mask, jnp.clip(src, 0, t - 1), axis=1))
    tokens = jnp.arange(t)[None, :]
    source = jnp.where(tokens < at, tokens, tokens + p).astype(jnp.int32)
    return out, out_mask.astype(mask.dtype), source


def remove(x: jax.Array, source: jax.Array) -> jax.Array:
    """Gathers per-token values back to the input order: x [B, T+P, ...], source [B, T] -> [B, T, ...]."""
    idx = source.reshape(*source.shape, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, idx, axis=1)
