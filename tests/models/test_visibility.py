"""`visibility`: the prompt-visibility masks, ported from the original library's masks_test.py.

Every case of the original's PromptDecoderAttentionTest and PromptEncoderAttentionTest is here,
with the same lengths and prompt lengths; `test_decoder_X` / `test_encoder_X` stand for the
original's `test_prompt_decoder_attention_X` / the encoder class's `test_X`.

How the original's inputs map to ours:
  * decoder tokens laid out [prompt (P), prefix inputs, targets, padding] -> a `kinds` row
    [PROMPT]*P + [INPUT]*prefix + [TARGET]*target + [PAD]*rest;
  * `decoder_causal_attention` marking the prefix -> `causal=True, prefix_lm=True`; all zeros or
    None -> `causal=True, prefix_lm=False` (the original ignores the rules for None; each ported
    None case checks only what also holds under the rules, see the comments);
  * encoder tokens -> `causal=False` with [PROMPT]*P + [INPUT]*length + [PAD]*rest.
  * The original runs each case twice, with `multitask` True and False: True drops a leading
    task-index token before building the mask. Our rows carry their task index outside the
    tokens, so there is no such token to drop and each pair is one case here.
  * The original's mask is float [B, 1, Q, K] of a chosen dtype; ours is bool [B, Q, K], so its
    dtype/shape tests become bool and shape checks.

The original asserts element by element over a region of the mask; here each test builds the
expected mask and the region with numpy broadcasting and compares the region at once.
"""
import functools

import jax
import numpy as np
import pytest

from prompt_tuning_jax.models import visibility as vis
from prompt_tuning_jax.models.visibility import INPUT, PAD, PROMPT, TARGET

# The original's decoder lengths (most decoder tests) and its "full causal" lengths.
PREFIX, TARGETS, P = [4, 6, 2, 3, 5], [2, 1, 3, 1, 1], 4
FULL_PREFIX, FULL_TARGETS, FULL_P = [10, 3, 8, 2, 9, 10], [3, 2, 6, 1, 1, 2], 10


def decoder_kinds(prompt_length, prefix_lengths, target_lengths):
    """[B, P + max(prefix + target)] kinds rows, right-padded."""
    width = max(p + t for p, t in zip(prefix_lengths, target_lengths))
    return np.array([[PROMPT] * prompt_length + [INPUT] * p + [TARGET] * t + [PAD] * (width - p - t)
                     for p, t in zip(prefix_lengths, target_lengths)], np.int32)


def encoder_kinds(prompt_length, lengths):
    """[B, P + max(length)] kinds rows, right-padded."""
    return np.array([[PROMPT] * prompt_length + [INPUT] * n + [PAD] * (max(lengths) - n) for n in lengths],
                    np.int32)


def grid(kinds, prompt_length, lengths, prefix_lengths=None):
    """Broadcastable index arrays: q [1, S, 1], k [1, 1, S], row ends [B, 1, 1], prefix ends [B, 1, 1]."""
    s = kinds.shape[1]
    q, k = np.arange(s)[None, :, None], np.arange(s)[None, None, :]
    end = prompt_length + np.asarray(lengths)[:, None, None]
    prefix_end = None if prefix_lengths is None else prompt_length + np.asarray(prefix_lengths)[:, None, None]
    return q, k, end, prefix_end


def assert_region(mask, expected, region):
    """mask == expected wherever region is true (all three broadcast to [B, S, S])."""
    mask = np.asarray(mask)
    assert mask.dtype == bool and mask.ndim == 3
    expected, region = np.broadcast_to(expected, mask.shape), np.broadcast_to(region, mask.shape)
    wrong = np.argwhere(region & (mask != expected))
    assert not len(wrong), f"{len(wrong)} wrong entries, first [b, q, k] = {wrong[:5].tolist()}"


def decoder_mask(allowed, *, prefix_lm, prefix=PREFIX, targets=TARGETS, prompt_length=P):
    kinds = decoder_kinds(prompt_length, prefix, targets)
    fn = jax.jit(functools.partial(vis.allowed_mask, allowed=allowed, causal=True, prefix_lm=prefix_lm))
    ends = [p + t for p, t in zip(prefix, targets)]
    return fn(kinds), grid(kinds, prompt_length, ends, prefix)


def encoder_mask(allowed, lengths, prompt_length):
    kinds = encoder_kinds(prompt_length, lengths)
    fn = jax.jit(functools.partial(vis.allowed_mask, allowed=allowed, causal=False))
    return fn(kinds), grid(kinds, prompt_length, lengths)


# ---------------------------------------------------------------- PromptDecoderAttentionTest


def test_decoder_causal_targets():
    """Prefix-LM: from the end of the prefix on, a target sees every real key at or before it."""
    mask, (q, k, end, prefix_end) = decoder_mask(set(), prefix_lm=True)
    real = (q < end) & (k < end)
    assert_region(mask, real & (k <= q), q >= prefix_end)


@pytest.mark.parametrize("original_causal", ["zeros", "none"])
def test_decoder_causal_inputs(original_causal):
    """Fully causal decoder: the inputs and targets see every real key at or before them.

    The original's `_with_none` twin passed None for `decoder_causal_attention`, which ignores the
    rules; it checks only non-prompt queries, which the rules leave causal anyway, so it holds too.
    """
    mask, (q, k, end, _) = decoder_mask(set(), prefix_lm=False)
    real = (q < end) & (k < end)
    assert_region(mask, real & (k <= q), (q >= P) & (q < end))


@pytest.mark.parametrize("original_causal", ["zeros", "none"])
def test_decoder_full_causal(original_causal):
    """{prompt->prompt;causal} in a fully causal decoder is the plain causal + padding mask.

    Its `_with_none` twin ignored the rules, but with this setting the rules give the same mask.
    """
    mask, (q, k, end, _) = decoder_mask({"prompt->prompt;causal"}, prefix_lm=False, prefix=FULL_PREFIX,
                                        targets=FULL_TARGETS, prompt_length=FULL_P)
    real = (q < end) & (k < end)
    assert_region(mask, real & (k <= q), True)


def test_decoder_input_visibility():
    """Prefix-LM "fully visible prefix": inputs and targets see the whole prefix, then causally."""
    mask, (q, k, end, prefix_end) = decoder_mask(set(), prefix_lm=True)
    real = (q < end) & (k < end)
    assert_region(mask, real & ((k < prefix_end) | (k <= q)), (q >= P) & (q < end))


def test_decoder_prompt_prompt():
    mask, (q, k, _, _) = decoder_mask({"prompt->prompt"}, prefix_lm=True)
    assert_region(mask, True, (q < P) & (k < P))


def test_decoder_prompt_input_visible():
    mask, (q, k, _, prefix_end) = decoder_mask({"prompt->input"}, prefix_lm=True)
    assert_region(mask, True, (q < P) & (k >= P) & (k < prefix_end))


def test_decoder_prompt_input_not_visible():
    mask, (q, k, _, prefix_end) = decoder_mask(set(), prefix_lm=True)
    assert_region(mask, False, (q < P) & (k >= P) & (k < prefix_end))


def test_decoder_prompt_prompt_self_only():
    mask, (q, k, _, _) = decoder_mask(set(), prefix_lm=True)
    assert_region(mask, q == k, (q < P) & (k < P))


def test_decoder_prefix_visibility_causal():
    mask, (q, k, _, _) = decoder_mask({"prompt->prompt;causal"}, prefix_lm=True)
    assert_region(mask, k <= q, (q < P) & (k < P))


@pytest.mark.parametrize("prefix_lm", [True, False])
@pytest.mark.parametrize("allowed", [{"prompt->input"}, {"prompt->prompt"}, set()], ids=["p-i", "p-p", "none"])
def test_decoder_mask_dtype(allowed, prefix_lm):
    """The original checked bfloat16 and float32 masks; ours is always bool, jitted with static args."""
    kinds = decoder_kinds(P, PREFIX, TARGETS)
    fn = jax.jit(vis.allowed_mask, static_argnames=("allowed", "causal", "prefix_lm"))
    mask = fn(kinds, allowed=frozenset(allowed), causal=True, prefix_lm=prefix_lm)
    assert mask.dtype == bool


def test_decoder_mask_shape():
    mask, _ = decoder_mask(set(), prefix_lm=True)
    length = P + max(p + t for p, t in zip(PREFIX, TARGETS))
    assert mask.shape == (len(PREFIX), length, length)


# ---------------------------------------------------------------- PromptEncoderAttentionTest


def test_encoder_prompt_input_attention():
    """prompt->input and prompt->prompt: every real position sees every real position."""
    mask, (q, k, end, _) = encoder_mask({"prompt->input", "prompt->prompt"}, [5, 6, 7, 6, 1], 4)
    assert_region(mask, (q < end) & (k < end), True)


def test_encoder_prompt_self_only_mask():
    mask, (q, k, end, _) = encoder_mask(set(), [1, 2, 6, 3, 2, 5], 10)
    real = (q < end) & (k < end)
    assert_region(mask, real & ((q >= 10) | (k == q)), True)


def test_encoder_prompt_prompt_attention():
    mask, (q, k, end, _) = encoder_mask({"prompt->prompt"}, [10, 5, 2, 1, 2, 5, 10], 5)
    real = (q < end) & (k < end)
    assert_region(mask, real & ((q >= 5) | (k < 5)), True)


def test_encoder_prompt_prompt_causal_attention():
    mask, (q, k, end, _) = encoder_mask({"prompt->prompt;causal"}, [8, 1, 3, 4, 1, 5], 4)
    real = (q < end) & (k < end)
    assert_region(mask, real & ((q >= 4) | (k <= q)), True)


def test_encoder_prompt_prompt_causal_and_inputs_attention():
    mask, (q, k, end, _) = encoder_mask({"prompt->prompt;causal", "prompt->input"}, [8, 1, 3, 4, 1, 5], 4)
    real = (q < end) & (k < end)
    assert_region(mask, real & ((q >= 4) | (k <= q) | (k >= 4)), True)


@pytest.mark.parametrize("allowed", [{"prompt->input"}, {"prompt->prompt"}, set()], ids=["p-i", "p-p", "none"])
def test_encoder_mask_dtype(allowed):
    """The original checked bfloat16 and float32 masks; ours is always bool, jitted with static args."""
    fn = jax.jit(vis.allowed_mask, static_argnames=("allowed", "causal", "prefix_lm"))
    assert fn(encoder_kinds(4, [5, 6, 7, 6, 1]), allowed=frozenset(allowed), causal=False).dtype == bool


def test_encoder_mask_shape():
    mask, _ = encoder_mask(set(), [7, 12, 10, 3], 13)
    assert mask.shape == (4, 13 + 12, 13 + 12)


# ---------------------------------------------------------------- ours: check, describe, defaults


def test_check_names_an_unknown_entry_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match="PROMPT_VISIBILITY") as err:
        vis.check(["prompt->prompt", "prompt->inputs"])
    assert "'prompt->inputs'" in str(err.value)
    assert all(name in str(err.value) for name in vis.ATTENTION_TYPES)


def test_check_adds_the_defaults_and_prefers_causal():
    assert vis.check([]) == {vis.INPUT_INPUT, vis.INPUT_PROMPT}
    assert vis.check(["prompt->prompt", "prompt->prompt;causal"]) == {
        vis.INPUT_INPUT, vis.INPUT_PROMPT, vis.PROMPT_PROMPT_CAUSAL}
    assert vis.check(vis.ATTENTION_TYPES) == set(vis.ATTENTION_TYPES) - {vis.PROMPT_PROMPT}
    assert vis.check("prompt->input") == {vis.INPUT_INPUT, vis.INPUT_PROMPT, vis.PROMPT_INPUT}
    assert isinstance(vis.check(["prompt->input"]), frozenset)


def test_describe_has_one_line_per_allowed_attention():
    text = vis.describe(["prompt->prompt", "prompt->prompt;causal"])
    assert "prompt->prompt;causal" in text and "(prompt->prompt)" not in text
    assert len(text.splitlines()) == 1 + 3
    assert "only itself" in vis.describe([])


def test_prefix_lm_needs_causal():
    with pytest.raises(ValueError, match="causal"):
        vis.allowed_mask(encoder_kinds(2, [3]), [], causal=False, prefix_lm=True)


def test_encoder_full_visibility_and_all_types():
    """Every non-causal type: every real position sees every real position (T5's encoder today).

    Naming all five types keeps prompt->prompt;causal over prompt->prompt (as the original does
    for its default of all types), so a prompt then sees only the prompts at or before it.
    """
    lengths, p = [5, 1, 7, 0], 3
    kinds = encoder_kinds(p, lengths)
    q, k, end, _ = grid(kinds, p, lengths)
    real = (q < end) & (k < end)
    full = vis.allowed_mask(kinds, [vis.PROMPT_PROMPT, vis.PROMPT_INPUT], causal=False)
    assert_region(full, real, True)
    every = vis.allowed_mask(kinds, vis.ATTENTION_TYPES, causal=False)
    assert_region(every, real & ~((q < p) & (k < p) & (k > q)), True)


@pytest.mark.parametrize("prefix_lm", [False, True])
def test_decoder_default_is_plain_causal_with_padding(prefix_lm):
    """{prompt->prompt;causal} in a causal decoder (GPT-2 today): causal + padding, nothing more.

    With prefix_lm the inputs also see the rest of the prefix, so only the prompt rows and the
    target rows stay plain causal there.
    """
    mask, (q, k, end, prefix_end) = decoder_mask({"prompt->prompt;causal"}, prefix_lm=prefix_lm)
    real = (q < end) & (k < end)
    region = True if not prefix_lm else (q < P) | (q >= prefix_end)
    assert_region(mask, real & (k <= q), region)


def test_causal_prompt_prompt_is_causal_and_prompts_never_see_later_keys():
    """Under plain causality prompt->prompt acts as prompt->prompt;causal, and prompt->input adds nothing."""
    kinds = decoder_kinds(P, PREFIX, TARGETS)
    a = vis.allowed_mask(kinds, ["prompt->prompt", "prompt->input"], causal=True)
    b = vis.allowed_mask(kinds, ["prompt->prompt;causal"], causal=True)
    np.testing.assert_array_equal(a, b)


def test_prefix_lm_prompts_never_see_targets():
    """Not in the original's tests, but its prefix mask has no target keys for prompt queries."""
    mask, (q, k, end, prefix_end) = decoder_mask(set(vis.ATTENTION_TYPES), prefix_lm=True)
    assert_region(mask, False, (q < P) & (k >= prefix_end))


@pytest.mark.parametrize("allowed, prompt_rows", [([], "self"), (["prompt->input"], "self"),
                                                  (["prompt->prompt"], "causal")],
                         ids=["none", "p-i", "p-p"])
def test_causal_decoder_keeps_the_prompt_rules(allowed, prompt_rows):
    """Fully causal: prompt rows follow the rules (the original's None path would ignore them)."""
    mask, (q, k, end, _) = decoder_mask(allowed, prefix_lm=False)
    prompt_keys = (k == q) if prompt_rows == "self" else (k <= q)
    assert_region(mask, prompt_keys & (k < P), q < P)


def test_padding_may_sit_on_either_side():
    """A left-padded row gets the right-padded row's mask, shifted along both axes."""
    right = decoder_kinds(P, [3, 5], [2, 2])[:1]  # [PROMPT]*4 + [INPUT]*3 + [TARGET]*2 + [PAD]*2
    left = np.concatenate([np.full((1, 2), PAD, np.int32), right[:, :-2]], axis=1)
    for causal, prefix_lm in [(False, False), (True, False), (True, True)]:
        allowed = ["prompt->input"]
        m_right = np.asarray(vis.allowed_mask(right, allowed, causal=causal, prefix_lm=prefix_lm))
        m_left = np.asarray(vis.allowed_mask(left, allowed, causal=causal, prefix_lm=prefix_lm))
        np.testing.assert_array_equal(m_left[:, 2:, 2:], m_right[:, :-2, :-2])
        assert not m_left[:, :2].any() and not m_left[:, :, :2].any()
