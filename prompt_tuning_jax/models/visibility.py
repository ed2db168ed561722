"""Which positions a prompt-tuned model may attend to: prompt visibility masks.

A port of the rules in the original library's `prompt_tuning/extended/masks.py`,
written from scratch as one vectorised function over a `[B, S]` array of
position kinds (PAD, PROMPT, INPUT, TARGET), in sequence order: index order is
time order, and prompts come first in every layout our models build.

The setting (PROMPT_VISIBILITY, a list of names from gin) says what may see what.
Each name reads "query->key":

  input->input           inputs see inputs (always on)
  input->prompt          inputs see prompts (always on)
  prompt->prompt         prompts see every prompt
  prompt->prompt;causal  prompts see the prompts at or before them
  prompt->input          prompts see the inputs (and, without a prefix, targets)

`check` validates a setting and normalises it: the two always-on names are
added silently, and when both prompt->prompt and prompt->prompt;causal are
given the causal one wins (as in the original). With neither, a prompt sees
only itself among the prompts.

`allowed_mask` turns kinds and a setting into a bool `[B, S, S]` (query, key):

  * PAD positions see nothing and are seen by nothing.
  * Non-causal (an encoder): inputs see every input and prompt; prompts see
    prompts by the prompt->prompt rule and inputs only with prompt->input.
    A TARGET, if present, counts as an INPUT.
  * Causal (a decoder): the encoder rules, and in addition every key must be at
    or before its query. Under causality prompt->prompt therefore behaves like
    prompt->prompt;causal.
  * Causal prefix-LM (`prefix_lm=True`, the original's `decoder_causal_attention`
    marking the inputs): the prompts and inputs form a fully visible prefix.
    Inputs see the whole prefix plus any earlier key; prompts follow the
    encoder rules within the prefix and never see targets; targets see every
    key at or before them.
"""
from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp

INPUT_INPUT = "input->input"
INPUT_PROMPT = "input->prompt"
PROMPT_PROMPT = "prompt->prompt"
PROMPT_PROMPT_CAUSAL = "prompt->prompt;causal"
PROMPT_INPUT = "prompt->input"
ATTENTION_TYPES = (INPUT_INPUT, INPUT_PROMPT, PROMPT_PROMPT, PROMPT_PROMPT_CAUSAL, PROMPT_INPUT)

# Kinds of positions, the values of a `kinds` array.
PAD, PROMPT, INPUT, TARGET = 0, 1, 2, 3

_ALWAYS = frozenset({INPUT_INPUT, INPUT_PROMPT})

_WORDS = {
    INPUT_INPUT: "inputs can see the inputs",
    INPUT_PROMPT: "inputs can see the prompts",
    PROMPT_PROMPT: "prompts can see all the prompts",
    PROMPT_PROMPT_CAUSAL: "prompts can see the prompts at or before their own position",
    PROMPT_INPUT: "prompts can see the inputs",
}


def check(allowed: Iterable[str]) -> frozenset[str]:
    """Validate and normalise a PROMPT_VISIBILITY setting.

    input->input and input->prompt are always added (the original warns first;
    we add them silently). Given both prompt->prompt and prompt->prompt;causal,
    only the causal one is kept. A bare string counts as a list of one name.

    Raises:
      ValueError: naming the first unknown entry and listing the valid names.
    """
    names = (allowed,) if isinstance(allowed, str) else tuple(allowed)
    for name in names:
        if name not in ATTENTION_TYPES:
            raise ValueError(f"PROMPT_VISIBILITY: unknown attention type {name!r}; "
                             f"valid ones are {', '.join(ATTENTION_TYPES)}")
    out = set(names) | _ALWAYS
    if PROMPT_PROMPT_CAUSAL in out:
        out.discard(PROMPT_PROMPT)
    return frozenset(out)


def describe(allowed: Iterable[str]) -> str:
    """The normalised setting in words, one line per allowed attention (for logs)."""
    allowed = check(allowed)
    lines = [f"  {_WORDS[name]} ({name})" for name in ATTENTION_TYPES if name in allowed]
    if PROMPT_PROMPT not in allowed and PROMPT_PROMPT_CAUSAL not in allowed:
        lines.append("  each prompt sees only itself among the prompts")
    return "Prompt visibility:\n" + "\n".join(lines)


def _prompt_keys(allowed: frozenset[str], length: int) -> jax.Array:
    """[1, S, S] which prompt keys a prompt query sees, by index: all, k <= q, or k == q."""
    q = jnp.arange(length)[None, :, None]
    k = jnp.arange(length)[None, None, :]
    if PROMPT_PROMPT_CAUSAL in allowed:
        return k <= q
    if PROMPT_PROMPT in allowed:
        return jnp.ones((1, length, length), bool)
    return k == q


def allowed_mask(kinds: jax.Array, allowed: Iterable[str], *, causal: bool,
                 prefix_lm: bool = False) -> jax.Array:
    """Whether query q may attend to key k.

    Args:
      kinds: [B, S] int, one of PAD, PROMPT, INPUT, TARGET per position.
      allowed: a PROMPT_VISIBILITY setting (see `check`); static under jit.
      causal: a decoder (keys at or before the query) rather than an encoder.
      prefix_lm: with `causal`, the prompts and inputs are a fully visible prefix.

    Returns:
      [B, S, S] bool, indexed (batch, query, key).
    """
    if prefix_lm and not causal:
        raise ValueError("prefix_lm=True needs causal=True (an encoder is fully visible already)")
    allowed = check(allowed)
    kinds = jnp.asarray(kinds)
    length = kinds.shape[1]
    q, k = kinds[:, :, None], kinds[:, None, :]
    real = (q != PAD) & (k != PAD)
    earlier = jnp.arange(length)[None, None, :] <= jnp.arange(length)[None, :, None]
    # A prompt query: prompt keys by the prompt->prompt rule, the rest by prompt->input.
    prompt_row = jnp.where(k == PROMPT, _prompt_keys(allowed, length), PROMPT_INPUT in allowed)
    if not causal:
        return real & jnp.where(q == PROMPT, prompt_row, True)
    if not prefix_lm:
        return real & earlier & jnp.where(q == PROMPT, prompt_row, True)
    in_prefix = (k == PROMPT) | (k == INPUT)
    row = jnp.where(q == PROMPT, prompt_row & in_prefix,
                    jnp.where(q == INPUT, in_prefix | earlier, earlier))
    return real & row
