"""Our T5 against transformers' T5ForConditionalGeneration on random checkpoints."""
import jax
import numpy as np
import pytest
import torch
from helpers import assert_logits_close, padded_batch, torch_model

import prompt_tuning_jax as ptj


def torch_logits(model, ids, mask, dec, dec_mask):
    t = lambda a: torch.tensor(a, dtype=torch.long)
    with torch.no_grad():
        return model(input_ids=t(ids), attention_mask=t(mask), decoder_input_ids=t(dec),
                     decoder_attention_mask=t(dec_mask)).logits.numpy()


CASES = {
    "v1.0 tied+rescaled": dict(untied=False),
    "v1.1 untied": dict(untied=True),
    "odd sizes": dict(untied=True, d_model=36, d_kv=5, num_heads=3, num_layers=3, num_decoder_layers=1),
    "v1.0 deeper decoder": dict(untied=False, d_kv=12, num_heads=2, num_layers=1, num_decoder_layers=3),
}


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(tmp_path, rng, side, case):
    hf = torch_model("t5", tmp_path, **CASES[case])
    model = ptj.from_pretrained(tmp_path)
    assert model.config.tie_word_embeddings == (not CASES[case]["untied"])
    assert model.config.scale_decoder_outputs == (not CASES[case]["untied"])
    v = hf.config.vocab_size
    ids, mask = padded_batch(rng, v, [11, 6, 2], 11, side=side)
    dec, dec_mask = padded_batch(rng, v, [5, 3, 1], 5, side="right")
    ours = jax.jit(lambda a, b, c, d: model(a, b, decoder_input_ids=c, decoder_attention_mask=d))(ids, mask, dec,
                                                                                                  dec_mask)
    assert ours.shape == (3, 5, v)
    assert_logits_close(ours, torch_logits(hf, ids, mask, dec, dec_mask), dec_mask)


@pytest.mark.slow
def test_hub_style_config_untied(tmp_path, rng):
    """Real v1.1 hub configs say tie_word_embeddings: false (and lack scale_decoder_outputs)."""
    import json

    hf = torch_model("t5", tmp_path, untied=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("scale_decoder_outputs", None)
    cfg["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = ptj.from_pretrained(tmp_path)
    assert not model.config.scale_decoder_outputs and not model.config.tie_word_embeddings
    ids, mask = padded_batch(rng, 199, [7, 3], 7)
    dec, dec_mask = padded_batch(rng, 199, [4, 4], 4)
    assert_logits_close(model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask),
                        torch_logits(hf, ids, mask, dec, dec_mask))


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    from prompt_tuning_jax.models.t5 import relative_position_bucket

    rel = np.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for buckets, dist in ((32, 128), (8, 20)):
            want = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional, buckets, dist).numpy()
            got = relative_position_bucket(rel, bidirectional, buckets, dist)
            np.testing.assert_array_equal(np.asarray(got), want)


def test_mt5_checkpoints_load_as_t5_1_1(tmp_path, rng):
    """mT5 (config.json model_type 'mt5', MT5ForConditionalGeneration) is T5 1.1 with another vocabulary."""
    import torch
    import transformers

    from tests.helpers import UNTIED_T5, TINY, _randomize_layernorms

    torch.manual_seed(0)
    hf = transformers.MT5ForConditionalGeneration(transformers.MT5Config(**{**TINY["t5"], **UNTIED_T5})).eval()
    hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight) * 0.5)  # untied, as released
    _randomize_layernorms(hf, 0)
    hf.save_pretrained(tmp_path)
    model = ptj.from_pretrained(tmp_path)
    assert not model.config.tie_word_embeddings and model.config.is_gated
    ids, mask = padded_batch(rng, hf.config.vocab_size, [9, 4], 9)
    dec, dec_mask = padded_batch(rng, hf.config.vocab_size, [4, 2], 4)
    ours = model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    assert_logits_close(ours, torch_logits(hf, ids, mask, dec, dec_mask), dec_mask)
    from prompt_tuning_jax.models import preset

    assert preset("google/mt5-xl").vocab_size == 250112 and preset("google/mt5-xl").d_model == 2048
