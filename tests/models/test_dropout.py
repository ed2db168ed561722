"""Dropout: where it sits (against transformers in train mode), its rates, its masks, and when it is off.

Random masks cannot be matched with PyTorch's, so placement is checked with a deterministic stand-in: on both
sides every dropout site multiplies by (1 - rate) (`helpers.scale_instead_of_dropout`). The logits agree only
if both models have the same sites, with the same rates, in the same places.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import assert_logits_close, padded_batch, scale_instead_of_dropout, tiny_config, torch_model, train_mode

import prompt_tuning_jax as ptj
from prompt_tuning_jax.models import common, hf

t = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)


# --- placement: transformers' train mode ----------------------------------------------------------

def test_gpt2_dropout_sites_match_transformers(tmp_path, rng, monkeypatch):
    """embd_pdrop on wte + wpe, attn_pdrop on attention probabilities, resid_pdrop after both projections."""
    theirs = train_mode(torch_model("gpt2", tmp_path, resid_pdrop=0.1, embd_pdrop=0.2, attn_pdrop=0.3))
    model = ptj.from_pretrained(tmp_path)
    assert (model.config.resid_pdrop, model.config.embd_pdrop, model.config.attn_pdrop) == (0.1, 0.2, 0.3)
    scale_instead_of_dropout(monkeypatch)
    ids, mask = padded_batch(rng, 211, [9, 5, 2], 9, side="right")
    with torch.no_grad():
        want = theirs(input_ids=t(ids), attention_mask=t(mask)).logits.numpy()
    got = model(ids, mask, dropout_rng=jax.random.key(0))
    assert_logits_close(got, want, mask)
    plain = np.asarray(model(ids, mask))  # without a dropout_rng: no site acts
    assert np.abs(plain - np.asarray(got))[mask > 0].max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("untied", [False, True])
def test_t5_dropout_sites_match_transformers(tmp_path, rng, monkeypatch, untied):
    """Embeddings, attention weights (self and cross), inside the MLP, each sublayer output, after each final norm."""
    theirs = train_mode(torch_model("t5", tmp_path, untied=untied, dropout_rate=0.3))
    model = ptj.from_pretrained(tmp_path)
    assert model.config.dropout_rate == 0.3
    scale_instead_of_dropout(monkeypatch)
    ids, mask = padded_batch(rng, 199, [8, 5], 8, side="left")
    dec, dec_mask = padded_batch(rng, 199, [4, 3], 4, side="right")
    with torch.no_grad():
        want = theirs(input_ids=t(ids), attention_mask=t(mask), decoder_input_ids=t(dec),
                      decoder_attention_mask=t(dec_mask)).logits.numpy()
    got = model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask, dropout_rng=jax.random.key(0))
    assert_logits_close(got, want, dec_mask)
    plain = np.asarray(model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask))
    assert np.abs(plain - np.asarray(got))[dec_mask > 0].max() > 1e-2


# --- masks --------------------------------------------------------------------------------------------

def test_half_is_zeroed_and_the_rest_doubled_like_torch():
    x = jnp.ones((4, 250_000))
    out = np.asarray(common.dropout(x, 0.5, common.row_keys(jax.random.key(0), 4)))
    assert set(np.unique(out)) == {0.0, 2.0}
    zeroed = (out == 0).mean(axis=1)
    np.testing.assert_allclose(zeroed, 0.5, atol=0.005)  # per row: 250k draws, std 0.001
    theirs = torch.nn.functional.dropout(torch.ones(4, 250_000), 0.5, training=True).numpy()
    assert set(np.unique(theirs)) == {0.0, 2.0}
    np.testing.assert_allclose((theirs == 0).mean(axis=1), zeroed, atol=0.01)
    np.testing.assert_array_equal(common.dropout(x, 1.0, common.row_keys(jax.random.key(0), 4)), 0 * x)


def test_a_rows_mask_depends_only_on_its_key():
    keys = common.row_keys(jax.random.key(3), 6)
    x = jnp.ones((6, 5, 40))
    whole = np.asarray(common.dropout(x, 0.3, keys))
    np.testing.assert_array_equal(common.dropout(x[2:5], 0.3, keys[2:5]), whole[2:5])  # any split of the batch
    assert not np.array_equal(whole[0], whole[1])  # rows draw different masks
    raw = jax.random.key_data(keys)  # raw uint32 keys are accepted too
    np.testing.assert_array_equal(common.dropout(x, 0.3, common.row_keys(raw, 6)), whole)
    with pytest.raises(ValueError, match="3 row keys for a batch of 6"):
        common.row_keys(keys[:3], 6)


def draws_random_numbers(fn, *args) -> bool:
    text = str(jax.make_jaxpr(fn)(*args))
    return "random_bits" in text or "threefry" in text


@pytest.mark.slow
def test_rate_zero_draws_nothing_and_changes_nothing(rng):
    """dropout_rate=0 (DROPOUT_RATE=0): bit for bit the model without dropout, and no random numbers in the graph."""
    ids, mask = padded_batch(rng, 199, [7, 3], 7)  # within both tiny vocabularies
    key = jax.random.key(0)
    for family, extra in (("gpt2", {}), ("t5", {"decoder_input_ids": ids[:, :3]})):
        model = ptj.init_random(tiny_config(family), dropout_rate=0.0)
        with_rng = lambda k: model(ids, mask, dropout_rng=k, **extra)
        np.testing.assert_array_equal(with_rng(key), model(ids, mask, **extra))
        assert not draws_random_numbers(with_rng, key)
        dropping = ptj.init_random(tiny_config(family))  # transformers' default rate, 0.1
        assert draws_random_numbers(lambda k: dropping(ids, mask, dropout_rng=k, **extra), key)
        np.testing.assert_array_equal(dropping(ids, mask, **extra), model(ids, mask, **extra))  # no rng: no dropout


# --- rates: config.json and the DROPOUT_RATE override --------------------------------------------------

def test_rates_are_read_from_and_written_to_config_json(tmp_path):
    torch_model("gpt2", tmp_path / "gpt2", resid_pdrop=0.05, embd_pdrop=0.15, attn_pdrop=0.25)
    torch_model("t5", tmp_path / "t5", dropout_rate=0.2)
    gpt2, t5 = ptj.from_pretrained(tmp_path / "gpt2"), ptj.from_pretrained(tmp_path / "t5")
    assert (gpt2.config.resid_pdrop, gpt2.config.embd_pdrop, gpt2.config.attn_pdrop) == (0.05, 0.15, 0.25)
    assert t5.config.dropout_rate == 0.2
    assert {k: gpt2.config.to_hf()[k] for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")} == {
        "resid_pdrop": 0.05, "embd_pdrop": 0.15, "attn_pdrop": 0.25}
    assert t5.config.to_hf()["dropout_rate"] == 0.2
    assert ptj.GPT2Config.from_hf({"n_embd": 8}).resid_pdrop == 0.1  # transformers' defaults when absent
    assert ptj.T5Config.from_hf({"d_model": 8}).dropout_rate == 0.1


def test_dropout_rate_replaces_every_rate(tmp_path):
    torch_model("gpt2", tmp_path / "gpt2", resid_pdrop=0.05, embd_pdrop=0.15, attn_pdrop=0.25)
    torch_model("t5", tmp_path / "t5", dropout_rate=0.2)
    gpt2 = ptj.from_pretrained(tmp_path / "gpt2", dropout_rate=0.0).config
    assert (gpt2.resid_pdrop, gpt2.embd_pdrop, gpt2.attn_pdrop) == (0.0, 0.0, 0.0) and not gpt2.has_dropout
    assert ptj.from_pretrained(tmp_path / "t5", dropout_rate=0.3).config.dropout_rate == 0.3
    assert ptj.init_random(tiny_config("t5"), dropout_rate=0.4).config.dropout_rate == 0.4
    with pytest.raises(ValueError, match="dropout_rate must be in"):
        hf.with_dropout_rate(tiny_config("gpt2"), 1.5)


def test_model_spec_passes_dropout_rate(tmp_path):
    from prompt_tuning_jax.experiments import ModelSpec

    torch_model("t5", tmp_path, dropout_rate=0.2)
    assert ModelSpec(str(tmp_path)).load().config.dropout_rate == 0.2
    assert ModelSpec(str(tmp_path), dropout_rate=0.0).load().config.dropout_rate == 0.0
