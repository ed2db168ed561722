"""PROMPT_VISIBILITY (the original's extended masks) in the models: T5's encoder and GPT-2 attend as
`models.visibility.allowed_mask` says, against transformers given that mask; the defaults written out
change no number; decoding keeps the rules; a setting trains on a (4, 2) mesh as on one device."""
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close, padded_batch, tiny_model, torch_model, trained_on_both_meshes

import prompt_tuning_jax as ptj
from prompt_tuning_jax.experiments import PromptSpec
from prompt_tuning_jax.models import visibility as V

P = 3
DEFAULTS = {"gpt2": ["prompt->prompt;causal", "prompt->input"], "t5": ["prompt->prompt", "prompt->input"]}


def _transformers_prediction(family, hf, prompt, ids, placement, allowed):
    """Next-token logits [B, V] of transformers' model on [prompt; ids] (or [ids; prompt]) under the [B, S, S] mask."""
    import torch

    b, t = ids.shape
    tokens = hf.get_input_embeddings()(torch.tensor(ids))
    first = torch.tensor(prompt).expand(b, -1, -1)
    x = torch.cat([first, tokens], 1) if placement == "prefix" else torch.cat([tokens, first], 1)
    mask = torch.tensor(np.asarray(allowed))[:, None]  # [B, 1, S, S] bool
    with torch.no_grad():
        if family == "gpt2":
            return hf(inputs_embeds=x, attention_mask=mask).logits[:, -1].numpy()
        encoded = hf.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
        return hf(encoder_outputs=(encoded,), attention_mask=torch.ones((b, x.shape[1]), dtype=torch.long),
                  decoder_input_ids=torch.zeros((b, 1), dtype=torch.long)).logits[:, -1].numpy()


@pytest.mark.parametrize("family,placement,setting", [
    ("t5", "prefix", []), ("t5", "prefix", ["prompt->prompt"]), ("t5", "suffix", ["prompt->prompt;causal"]),
    ("t5", "prefix", ["prompt->input"]), ("gpt2", "prefix", []), ("gpt2", "suffix", ["prompt->prompt;causal"]),
])
def test_attention_follows_the_setting_as_transformers_does_with_that_mask(tmp_path, rng, family, placement, setting):
    hf = torch_model(family, tmp_path, untied=family == "t5")
    model = ptj.from_pretrained(tmp_path)
    prompt = rng.normal(0, 1, (P, model.config.hidden_size)).astype(np.float32)
    ids = rng.integers(2, 50, (2, 5)).astype(np.int32)
    ours = ptj.with_prompt(model, P, prompt, placement=placement, visibility=setting)
    kinds = [V.PROMPT] * P + [V.INPUT] * 5 if placement == "prefix" else [V.INPUT] * 5 + [V.PROMPT] * P
    allowed = V.allowed_mask(np.array([kinds, kinds]), setting, causal=family == "gpt2")
    got = np.asarray(ours(ids, np.ones_like(ids)).prediction)
    np.testing.assert_allclose(got, _transformers_prediction(family, hf, prompt, ids, placement, allowed),
                               rtol=1e-4, atol=2e-5)
    default = np.asarray(ptj.with_prompt(model, P, prompt, placement=placement)(ids, np.ones_like(ids)).prediction)
    assert np.abs(got - default).max() > 1e-5  # the setting changes what the model computes


@pytest.mark.parametrize("family", ["gpt2", "t5"])
@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_the_defaults_written_out_change_nothing(rng, family, placement):
    """None (each model's own attention) equals its default setting written out: predictions, target scores
    (T5's encoder: everything visible; GPT-2: causal) and generated tokens."""
    from prompt_tuning_jax.decoding import generate

    model = tiny_model(family, seed=1)
    prompt = rng.normal(0, 1, (P, model.config.hidden_size)).astype(np.float32)
    ids, mask = padded_batch(rng, 40, [5, 3, 6], 6)
    targets = rng.integers(2, 40, (3, 2)).astype(np.int32)
    plain = ptj.with_prompt(model, P, prompt, placement=placement)
    written = ptj.with_prompt(model, P, prompt, placement=placement, visibility=DEFAULTS[family])
    np.testing.assert_allclose(written(ids, mask).prediction, plain(ids, mask).prediction, rtol=1e-5, atol=1e-6)
    ones = np.ones_like(targets)
    np.testing.assert_allclose(written.target_logits(ids, mask, targets, ones),
                               plain.target_logits(ids, mask, targets, ones), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(generate(written, ids, mask, max_new_tokens=3, eos_id=-1),
                                  generate(plain, ids, mask, max_new_tokens=3, eos_id=-1))


def test_padding_changes_no_prediction_under_a_setting(rng):
    model = tiny_model("t5", seed=1)
    prompted = ptj.with_prompt(model, P, rng.normal(0, 1, (P, 32)).astype(np.float32), visibility=[])
    ids, mask = padded_batch(rng, 40, [5, 3, 6], 6)
    right = np.asarray(prompted(ids, mask).prediction)
    left_ids, left_mask = np.zeros((3, 8), np.int32), np.zeros((3, 8), np.int32)
    for b, n in enumerate([5, 3, 6]):
        left_ids[b, 8 - n:], left_mask[b, 8 - n:] = ids[b, :n], 1
    np.testing.assert_allclose(prompted(left_ids, left_mask).prediction, right, rtol=1e-5, atol=1e-5)


def test_gpt2_decoding_keeps_the_setting(rng):
    """Generated tokens through the cache equal greedy steps recomputed on the whole sequence: a suffix prompt
    that sees only itself, the generated tokens after it seeing everything before them."""
    from prompt_tuning_jax.decoding import generate

    model = tiny_model("gpt2", seed=1)
    prompt = rng.normal(0, 1, (P, model.config.hidden_size)).astype(np.float32)
    prompted = ptj.with_prompt(model, P, prompt, placement="suffix", visibility=[])
    ids, mask = padded_batch(rng, 40, [5, 3, 6], 6)
    ours = np.asarray(generate(prompted, ids, mask, max_new_tokens=4, eos_id=-1))
    embeds, full_mask, _, site = prompted._combine(jnp.asarray(ids), jnp.asarray(mask), None)
    tokens = []
    for _ in range(4):
        seq, seq_mask = embeds, full_mask
        if tokens:
            seq, seq_mask, _ = ptj.models.common.insert(embeds, full_mask, model.embed(jnp.asarray(np.stack(tokens, 1))),
                                                        jnp.asarray(full_mask.sum(1)))
        hidden, _ = model.activations(seq, seq_mask, **site)
        last = jnp.asarray(seq_mask.sum(1) - 1)
        tokens.append(np.asarray(jnp.argmax(model.logits(jnp.take_along_axis(hidden, last[:, None, None], 1)[:, 0]),
                                            -1), np.int32))
    np.testing.assert_array_equal(ours[:, :4], np.stack(tokens, 1))
    plain = ptj.with_prompt(model, P, np.asarray(prompted.prompt), placement="suffix")
    assert np.abs(np.asarray(prompted(ids, mask).prediction - plain(ids, mask).prediction)).max() > 1e-4


def test_a_model_parallel_mesh_equals_one_device(tiny_gpt2_dir, rng):
    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    batch = {"input_ids": ids, "attention_mask": mask, "target_ids": ids[:, :2], "target_mask": np.ones((8, 2), np.int32),
             "label": np.zeros(8, np.int32), "weight": np.ones(8, np.float32)}
    spec = PromptSpec(length=P, init="random_uniform", placement="suffix", visibility=["prompt->prompt"])
    assert_trees_close(*trained_on_both_meshes(tiny_gpt2_dir, spec, batch))


@pytest.mark.parametrize("kw,message", [
    (dict(visibility=["prompt->inputs"]), "PROMPT_VISIBILITY: unknown attention type 'prompt->inputs'"),
    (dict(method="probe", head="linear", visibility=[]), "PROMPT_VISIBILITY is set but METHOD 'probe' trains no prompt"),
])
def test_bad_visibility_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        PromptSpec(**kw)
