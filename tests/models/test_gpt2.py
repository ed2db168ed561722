"""Our GPT-2 against transformers' GPT2LMHeadModel on random checkpoints.

Our positions count real tokens only (cumsum(mask) - 1), as transformers' `generate` numbers left-padded rows;
its plain forward numbers them 0..T-1. Under left padding the reference gets those positions explicitly; under
right padding the two agree at every real token.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import assert_logits_close, padded_batch, tiny_model, torch_model

import prompt_tuning_jax as ptj


def torch_logits(model, ids, mask, position_ids=None):
    t = lambda a: None if a is None else torch.tensor(np.asarray(a), dtype=torch.long)
    with torch.no_grad():
        return model(input_ids=t(ids), attention_mask=t(mask), position_ids=t(position_ids)).logits.numpy()


def mask_positions(mask):
    """What transformers' generate passes for a padded batch: cumsum(mask) - 1, clipped at 0."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("overrides", [
    {},
    {"n_embd": 40, "n_head": 5, "n_inner": 72, "n_layer": 3},
    {"activation_function": "relu", "scale_attn_by_inverse_layer_idx": True},
])
def test_logits_match_transformers(tmp_path, rng, side, overrides):
    hf = torch_model("gpt2", tmp_path, **overrides)
    model = ptj.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, hf.config.vocab_size, [9, 5, 1], 9, side=side)
    ours = jax.jit(lambda i, m: model(i, attention_mask=m))(ids, mask)
    assert ours.shape == (3, 9, hf.config.vocab_size) and ours.dtype == jnp.float32
    positions = mask_positions(mask) if side == "left" else None  # right padding: 0..T-1 is the same
    assert_logits_close(ours, torch_logits(hf, ids, mask, positions), mask)


def test_explicit_position_ids_are_used_as_given(tmp_path, rng):
    """A caller may still number positions 0..T-1 under left padding (transformers' forward)."""
    hf = torch_model("gpt2", tmp_path)
    model = ptj.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, 211, [9, 5, 1], 9, side="left")
    ours = model(ids, mask, position_ids=np.arange(9)[None])
    assert_logits_close(ours, torch_logits(hf, ids, mask), mask)
    assert np.abs(np.asarray(ours) - np.asarray(model(ids, mask)))[1:][mask[1:] > 0].max() > 1e-3  # it matters


def test_no_mask_is_all_real(tmp_path, rng):
    hf = torch_model("gpt2", tmp_path)
    model = ptj.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, hf.config.vocab_size, [7, 7], 7)
    assert_logits_close(model(ids), torch_logits(hf, ids, mask))


@pytest.mark.slow
def test_bfloat16_compute_is_close_to_float32(tmp_path, rng):
    torch_model("gpt2", tmp_path)
    f32 = ptj.from_pretrained(tmp_path)
    bf16 = ptj.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    ids, mask = padded_batch(rng, 211, [8, 6], 8)
    a, b = f32(ids, mask), bf16(ids, mask)
    assert b.dtype == jnp.float32  # logits come out in float32 for the loss
    assert bf16.h[0].attn.c_attn.weight[...].dtype == jnp.float32  # storage stays float32
    rel = np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(a)).max()
    assert 0 < rel < 5e-2


def test_seam_composes_to_the_forward(tmp_path, rng):
    torch_model("gpt2", tmp_path)
    model = ptj.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, 211, [6, 4], 6)
    via_seam = model.logits(model.forward_embeddings(model.embed(ids), mask))
    np.testing.assert_array_equal(np.asarray(via_seam), np.asarray(model(ids, mask)))
    assert model.embedding_table.shape == (211, 48)


def test_every_parameter_has_logical_axes():
    from flax import nnx

    model = tiny_model("gpt2", vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata().get("axes")
        assert axes is not None and len(axes) == var[...].ndim, path


@pytest.mark.parametrize("side", ["right", "left"])
def test_rank_targets_from_one_run_of_the_input_equal_separate_runs(rng, side):
    """R targets per input (rank classification, no dropout) reuse the input's keys and values; the logits
    equal running input + target once per target, as training does."""
    model = tiny_model("gpt2", initializer_range=0.3)
    ids, mask = padded_batch(rng, model.config.vocab_size, [7, 3, 5], 9, side=side)
    embeds = model.embed(jnp.asarray(ids))
    labels = rng.integers(1, model.config.vocab_size, (3, 4))  # C = 3 label strings of up to 4 tokens
    label_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    tiled, tiled_mask = np.tile(labels, (3, 1)), np.tile(label_mask, (3, 1))  # [B*C, L], example-major
    together = np.asarray(model.target_logits(embeds, jnp.asarray(mask), tiled, tiled_mask))
    for c in range(3):
        alone = np.asarray(model.target_logits(embeds, jnp.asarray(mask), np.tile(labels[c], (3, 1)),
                                               np.tile(label_mask[c], (3, 1))))
        real = label_mask[c] > 0
        np.testing.assert_allclose(together[c::3][:, real], alone[:, real], rtol=1e-5, atol=1e-5)
