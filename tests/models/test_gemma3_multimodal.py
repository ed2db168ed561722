"""Multimodal Gemma 3 checkpoints (model_type `gemma3`, Gemma3ForConditionalGeneration) load as our text-only Gemma 3.

The reference is a tiny random Gemma3ForConditionalGeneration: test_gemma3.py's text shapes (grouped-query
attention, head_dim != hidden / heads, a sliding window of 3 around a global layer, linear RoPE scaling, random
zero-centred norms) beside a one-layer SigLIP vision tower. Its logits on text (eager attention, cumsum(mask) - 1
positions) and its greedy tokens are what ours must give, from each tensor layout transformers loads:
- 'save_pretrained': what transformers 5's save_pretrained writes (it reverses its renaming): `language_model.model.*`,
  `language_model.lm_head.weight` when untied, `vision_tower.*`, `multi_modal_projector.*`;
- 'module_names': save_pretrained(save_original_format=False), the module names: `model.language_model.*`,
  `lm_head.weight`, `model.vision_tower.*`, `model.multi_modal_projector.*`;
- 'hub': the hub's files (transformers 4.50): `language_model.model.*`, `vision_tower.vision_model.*`, and a sparse
  config.json in transformers 4's keys (rope_theta, rope_local_base_freq, rope_scaling, sliding_window_pattern;
  omitted fields default), which transformers itself reads back as the same model (checked below).
"""
import dataclasses
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx
from helpers import assert_logits_close, both_sides, padded_batch, transformers_greedy

import prompt_tuning_jax as ptj
from prompt_tuning_jax import decoding
from prompt_tuning_jax.models import base, gemma3, hf

t = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)
V, N = 97, 8  # vocabulary, new tokens in generation
TEXT = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=12, query_pre_attn_scalar=10, sliding_window=3,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_scaling={"rope_type": "linear", "factor": 4.0}, rope_theta=100.0, rope_local_base_freq=10.0,
            initializer_range=0.3)
VISION = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=28,
              patch_size=14)
LAYOUTS = ["save_pretrained", "module_names", "hub"]
PREFIX = {"save_pretrained": "language_model.model.", "module_names": "model.language_model.",
          "hub": "language_model.model."}
HEAD = {"save_pretrained": "language_model.lm_head.weight", "module_names": "lm_head.weight"}


def hub_config(config: dict) -> dict:
    """transformers 5's config.json as transformers 4.50 wrote the hub's: the text config in its keys (RoPE as
    rope_theta / rope_local_base_freq / rope_scaling, layer types as sliding_window_pattern), fields at their default
    omitted, eos_token_id at the top level."""
    text = {k: TEXT[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads", "head_dim", "query_pre_attn_scalar",
                                 "sliding_window", "rope_scaling", "rope_theta", "rope_local_base_freq",
                                 "initializer_range")}
    text.update(model_type="gemma3_text", sliding_window_pattern=2)  # layers 0, 2 sliding, 1 full: TEXT's
    vision = {**VISION, "model_type": "siglip_vision_model"}
    return {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "eos_token_id": [1, 106],
            "mm_tokens_per_image": config["mm_tokens_per_image"], "text_config": text, "vision_config": vision,
            "torch_dtype": "float32", "transformers_version": "4.50.0.dev0"}


def reference(folder=None, layout="save_pretrained", seed=0, tie=True, **text_overrides):
    """transformers' Gemma3ForConditionalGeneration (eager attention, eval mode), saved to `folder` in `layout`."""
    torch.manual_seed(seed)
    config = transformers.Gemma3Config(text_config={**TEXT, **text_overrides}, vision_config=VISION,
                                       mm_tokens_per_image=4, tie_word_embeddings=tie, attn_implementation="eager")
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    assert model.config.get_text_config()._attn_implementation == "eager"
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name and "norm" in name:  # Gemma's norms multiply by 1 + weight: zero-centred
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        model.model.language_model.embed_tokens.weight.mul_(0.3)
        if not tie:
            model.lm_head.weight.copy_(0.3 * torch.randn(model.lm_head.weight.shape, generator=g))
    if folder is not None:
        folder = str(folder)
        model.save_pretrained(folder, save_original_format=layout != "module_names")
        if layout == "hub":
            path = os.path.join(folder, "model.safetensors")
            tensors = safetensors.torch.load_file(path)
            tensors = {"vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k: v
                       for k, v in tensors.items()}
            safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
            with open(os.path.join(folder, "config.json"), "w") as f:
                json.dump(hub_config(config.to_dict()), f)
    return model


def tensor_names(folder) -> set[str]:
    return set(hf.SafetensorsFile(os.path.join(folder, "model.safetensors")).keys())


@pytest.fixture(scope="module", params=LAYOUTS)
def gemma(request, tmp_path_factory):
    """(transformers' model, its folder in one of LAYOUTS, the layout)."""
    folder = tmp_path_factory.mktemp(f"gemma3_{request.param}")
    return reference(folder, request.param), str(folder), request.param


def torch_logits(model, ids, mask):
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)  # as generate numbers them (right padding: 0..T-1 at reals)
    with torch.no_grad():
        return model(input_ids=t(ids), attention_mask=t(mask), position_ids=t(positions)).logits.numpy()


# --- the layouts -----------------------------------------------------------------------------------------------

def test_the_layouts_are_what_transformers_writes_and_reads(gemma, rng):
    """The fixture's folders hold the names the module docstring lists, and transformers loads each of them (the
    hub's config.json included) as the model it came from, with no tensor missing or left over."""
    theirs, folder, layout = gemma
    names = tensor_names(folder)
    assert "model.language_model.embed_tokens.weight" in theirs.state_dict()  # transformers' own module names
    assert f"{PREFIX[layout]}layers.2.self_attn.q_norm.weight" in names and f"{PREFIX[layout]}norm.weight" in names
    vision = {"save_pretrained": "vision_tower.encoder.", "module_names": "model.vision_tower.encoder.",
              "hub": "vision_tower.vision_model.encoder."}[layout]
    assert any(n.startswith(vision) for n in names)
    assert not any(n.startswith(("model.layers.", "lm_head", "language_model.lm_head")) for n in names)  # tied
    again, info = transformers.Gemma3ForConditionalGeneration.from_pretrained(folder, attn_implementation="eager",
                                                                              output_loading_info=True)
    assert not any(info.values()), info
    ids, mask = padded_batch(rng, V, [7, 4], 7)
    np.testing.assert_array_equal(torch_logits(again.eval(), ids, mask), torch_logits(theirs, ids, mask))


# --- the forward and decoding ----------------------------------------------------------------------------------

def test_logits_match_transformers_under_left_and_right_padding(gemma, rng):
    theirs, folder, layout = gemma
    model = ptj.from_pretrained(folder)
    assert isinstance(model, gemma3.Gemma3) and model.config.checkpoint_prefix == PREFIX[layout]
    assert model.lm_head is None and model.config.final_logit_softcapping is None
    ids, mask = both_sides(rng, V, [9, 5, 4, 1], 9)
    ours = jax.jit(lambda i, m: model(i, m))(ids, mask)
    assert ours.shape == (4, 9, V)
    assert_logits_close(ours, torch_logits(theirs, ids, mask), mask)


def test_greedy_matches_transformers_generate(gemma, rng):
    """N = 8 new tokens after inputs of up to 9 (right- and left-padded rows), past the window of 3."""
    theirs, folder, _ = gemma
    model = ptj.from_pretrained(folder)
    ids, mask = both_sides(rng, V, [5, 9, 7, 1, 4, 6], 9)
    ours = np.asarray(decoding.generate(model, ids, mask, max_new_tokens=N, eos_id=-1))  # no EOS: all N tokens
    np.testing.assert_array_equal(ours, transformers_greedy(theirs, ids, mask, N))
    assert len({tuple(r) for r in ours}) > 1 and len(set(ours[0])) > 2  # not degenerate


@pytest.mark.parametrize("layout", ["save_pretrained", "module_names"])
def test_an_untied_head_loads_and_final_softcapping_is_not_applied(tmp_path, rng, caplog, layout):
    """The head is the checkpoint's own (`language_model.lm_head.weight` or `lm_head.weight`); a
    final_logit_softcapping in text_config is left out, as Gemma3ForConditionalGeneration leaves it out."""
    theirs = reference(tmp_path, layout, tie=False, final_logit_softcapping=0.5)
    assert HEAD[layout] in tensor_names(tmp_path)
    with caplog.at_level(logging.WARNING):
        model = ptj.from_pretrained(tmp_path)
    assert "final_logit_softcapping 0.5 in text_config is not applied" in caplog.text
    assert model.lm_head is not None and model.config.final_logit_softcapping is None
    np.testing.assert_array_equal(np.asarray(model.lm_head["weight"][...]), theirs.lm_head.weight.detach().numpy())
    ids, mask = both_sides(rng, V, [9, 6], 9)
    ours = np.asarray(model(ids, mask))
    assert np.abs(ours[mask > 0]).max() > 0.5  # not capped
    assert_logits_close(ours, torch_logits(theirs, ids, mask), mask)


# --- the vision tower is never read ----------------------------------------------------------------------------

def test_only_the_language_model_is_read(gemma, monkeypatch):
    """Every tensor read is one of the language model's, and every one of those is read: no vision parameters."""
    _, folder, layout = gemma
    read = []
    original = hf.SafetensorsFile.read
    monkeypatch.setattr(hf.SafetensorsFile, "read", lambda self, key, *a, **kw: read.append(key) or
                        original(self, key, *a, **kw))
    model = ptj.from_pretrained(folder)
    language = {n for n in tensor_names(folder) if n.startswith(PREFIX[layout])}
    assert len(language) == 1 + 3 * 13 + 1  # embed_tokens, 13 tensors a layer, norm
    assert sorted(read) == sorted(language)
    ours = {model.load_key(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert ours == language


def test_a_checkpoint_without_its_vision_tower_loads_the_same(gemma, tmp_path, rng):
    _, folder, layout = gemma
    tensors = safetensors.torch.load_file(os.path.join(folder, "model.safetensors"))
    kept = {k: v for k, v in tensors.items() if k.startswith(PREFIX[layout])}
    assert 0 < len(kept) < len(tensors)
    safetensors.torch.save_file(kept, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(folder, "config.json"), tmp_path)
    ids, mask = both_sides(rng, V, [7, 3], 7)
    np.testing.assert_array_equal(np.asarray(ptj.from_pretrained(tmp_path)(ids, mask)),
                                  np.asarray(ptj.from_pretrained(folder)(ids, mask)))


# --- saving, configs and bad input -----------------------------------------------------------------------------

def test_save_pretrained_writes_a_gemma3_text_checkpoint_with_the_same_logits(gemma, tmp_path, rng):
    theirs, folder, _ = gemma
    model = ptj.from_pretrained(folder)
    ptj.save_pretrained(model, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "gemma3_text" and "checkpoint_prefix" not in written
    assert all(n.startswith("model.layers.") or n in ("model.embed_tokens.weight", "model.norm.weight")
               for n in tensor_names(tmp_path))
    again = transformers.Gemma3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = padded_batch(rng, V, [7, 4], 7)
    assert_logits_close(torch_logits(again, ids, mask), torch_logits(theirs, ids, mask), mask)
    reloaded = hf.config_from_folder(str(tmp_path))
    assert reloaded == model.config and reloaded.checkpoint_prefix == "model."


# The shape of google/gemma-3-4b-pt's config.json as the hub serves it: a sparse text_config, the rest defaulted.
HUB_4B = {"architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
          "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02,
          "mm_tokens_per_image": 256, "model_type": "gemma3",
          "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                          "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                          "sliding_window": 1024},
          "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
          "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                            "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                            "patch_size": 14, "vision_use_head": False}}


def test_a_hub_config_reads_as_transformers_reads_its_text_config():
    ours = gemma3.Gemma3Config.from_hf(HUB_4B)  # no tensor names: the hub's layout, the head tied
    theirs = transformers.Gemma3Config.from_dict(HUB_4B).text_config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "query_pre_attn_scalar", "sliding_window", "rms_norm_eps",
                  "final_logit_softcapping", "hidden_activation", "max_position_embeddings"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert list(ours.layer_types) == theirs.layer_types and ours.layer_types.count("full_attention") == 5
    assert {k: dict(v) for k, v in ours.to_hf()["rope_parameters"].items()} == theirs.rope_parameters
    assert ours.rope("full_attention") == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0}
    assert ours.tie_word_embeddings and ours.checkpoint_prefix == "language_model.model."
    assert base.family("gemma3") == base.family("gemma3_text")
    untied = gemma3.Gemma3Config.from_hf({**HUB_4B, "tie_word_embeddings": False})
    assert not untied.tie_word_embeddings and untied == dataclasses.replace(ours, tie_word_embeddings=False)


def test_a_gemma3_config_beside_text_only_tensors_is_one_clear_error(tmp_path):
    """config.json says gemma3 but the tensors are a gemma3_text checkpoint's: the error names both layouts."""
    reference(tmp_path)
    path = str(tmp_path / "model.safetensors")
    tensors = safetensors.torch.load_file(path)
    prefix = PREFIX["save_pretrained"]
    safetensors.torch.save_file({"model." + k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                path, metadata={"format": "pt"})
    with pytest.raises(ptj.CheckpointError, match="holds no language model tensors.*language_model.model.*"
                                                   "model.language_model"):
        ptj.from_pretrained(tmp_path)
