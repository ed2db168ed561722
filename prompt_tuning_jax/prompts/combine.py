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

from prompt_tuning_jax.models.common import first_real, insert, last_real, remove  # noqa: F401 (the placement ops)

PLACEMENTS = ("prefix", "suffix")


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
