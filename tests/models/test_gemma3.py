"""Our Gemma 3 (`models/gemma3.py`) against transformers' Gemma3ForCausalLM on random-weight checkpoints.

The tiny shapes are ones no released config has: grouped-query attention (4 query heads, 2 key/value heads),
head_dim 12 != hidden 32 / 4 heads, query_pre_attn_scalar 10 != head_dim, a sliding window of 3 positions
(shorter than every input) on layers 0 and 2 around a global layer 1, small RoPE bases (10 local, 100 global)
and linear scaling (factor 4) on the global layer, zero-centred norm weights drawn at random (0.2 * N(0, 1)),
and token embeddings shrunk to 0.3x so that greedy generation does not repeat the input token. The references
run transformers' eager attention; under left padding they get cumsum(mask) - 1 positions, as `generate` does.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from helpers import (assert_logits_close, assert_trees_close, both_sides, padded_batch, train_mode, transformers_greedy,
                     trained_on_both_meshes)

import prompt_tuning_jax as ptj
import prompt_tuning_jax.models.gemma3  # noqa: F401  (registers gemma3_text until models/__init__.py imports it)
from prompt_tuning_jax import decoding, partitioning
from prompt_tuning_jax.experiments import PromptSpec
from prompt_tuning_jax.models import base, gemma3, hf
from prompt_tuning_jax.prompts import io
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

t = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)
V, N = 97, 8  # vocabulary, new tokens in generation
TINY = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=12, query_pre_attn_scalar=10, sliding_window=3,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_scaling={"rope_type": "linear", "factor": 4.0}, rope_theta=100.0, rope_local_base_freq=10.0,
            initializer_range=0.3)


def reference(folder=None, seed=0, **overrides):
    """transformers' Gemma3ForCausalLM (eager attention, eval mode) with TINY's shapes, saved to `folder`."""
    torch.manual_seed(seed)
    config = transformers.Gemma3TextConfig(**{**TINY, **overrides}, attn_implementation="eager")
    model = transformers.Gemma3ForCausalLM(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # Gemma's norms multiply by 1 + weight: zero-centred
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        model.model.embed_tokens.weight.mul_(0.3)
        if not config.tie_word_embeddings:
            model.lm_head.weight.copy_(0.3 * torch.randn(model.lm_head.weight.shape, generator=g))
    if folder is not None:
        model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """(transformers' model, its folder)."""
    folder = tmp_path_factory.mktemp("gemma3")
    return reference(folder), str(folder)


def torch_logits(model, ids, mask, position_ids=None, **kw):
    with torch.no_grad():
        return model(input_ids=t(ids), attention_mask=t(mask),
                     position_ids=None if position_ids is None else t(position_ids), **kw).logits.numpy()


def lm_batch(ids, targets, mask=None):
    b = ids.shape[0]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else mask, "target_ids": targets,
            "target_mask": np.ones_like(targets), "label": np.zeros(b, np.int32), "weight": np.ones(b, np.float32)}


# --- the forward -------------------------------------------------------------------------------------

def test_logits_match_transformers_under_left_and_right_padding(gemma, rng):
    theirs, folder = gemma
    model = ptj.from_pretrained(folder)
    ids, mask = both_sides(rng, V, [9, 5, 4, 1], 9)
    ours = jax.jit(lambda i, m: model(i, m))(ids, mask)
    assert ours.shape == (4, 9, V) and ours.dtype == jnp.float32
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)  # right padding: the same as 0..T-1 at real tokens
    assert_logits_close(ours, torch_logits(theirs, ids, mask, positions), mask)


def test_soft_capping_and_an_untied_head_match_transformers(tmp_path, rng):
    """The final logits are capped; attn_logit_softcapping is not applied, as transformers' Gemma 3 ignores it."""
    theirs = reference(tmp_path, attn_logit_softcapping=0.5, final_logit_softcapping=2.0, tie_word_embeddings=False)
    model = ptj.from_pretrained(tmp_path)
    assert model.lm_head is not None and model.config.final_logit_softcapping == 2.0
    ids, mask = padded_batch(rng, V, [9, 6], 9, side="left")
    ours = np.asarray(model(ids, mask))
    assert np.abs(ours).max() < 2.0  # capped
    assert_logits_close(ours, torch_logits(theirs, ids, mask, np.maximum(np.cumsum(mask, 1) - 1, 0)), mask)


def test_bfloat16_compute_is_close_to_float32(gemma, rng):
    _, folder = gemma
    f32, bf16 = ptj.from_pretrained(folder), ptj.from_pretrained(folder, dtype=jnp.bfloat16)
    ids, mask = padded_batch(rng, V, [8, 6], 8)
    a, b = np.asarray(jax.jit(f32)(ids, mask)), jax.jit(bf16)(ids, mask)
    assert b.dtype == jnp.float32 and bf16.layers[0].self_attn.q_proj.weight[...].dtype == jnp.float32
    rel = np.abs(a - np.asarray(b))[mask > 0].max() / np.abs(a).max()
    assert 0 < rel < 5e-2


# --- decoding and scoring from the cache ---------------------------------------------------------------

def test_greedy_matches_transformers_generate(gemma, rng):
    """N = 8 new tokens after inputs of up to 9 (right- and left-padded rows), past the window of 3: the cache's
    sliding layers too."""
    theirs, folder = gemma
    model = ptj.from_pretrained(folder)
    ids, mask = both_sides(rng, V, [5, 9, 7, 1, 4, 6], 9)
    ours = np.asarray(decoding.generate(model, ids, mask, max_new_tokens=N, eos_id=-1))  # no EOS: all N tokens
    np.testing.assert_array_equal(ours, transformers_greedy(theirs, ids, mask, N))
    assert len({tuple(r) for r in ours}) > 1 and len(set(ours[0])) > 2  # not degenerate


def test_rank_targets_from_one_run_of_the_input_equal_separate_runs(gemma, rng):
    """R targets per input reuse the input's keys and values (`_cached_target_hidden`); the logits equal running
    input + target once per target, as training does."""
    _, folder = gemma
    model = ptj.from_pretrained(folder)
    ids, mask = padded_batch(rng, V, [7, 3, 5], 9, side="left")
    scores = jax.jit(lambda i, m, tg, tm: model.target_logits(model.embed(i), m, tg, tm))
    labels = rng.integers(1, V, (3, 4))
    label_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    together = np.asarray(scores(ids, mask, np.tile(labels, (3, 1)), np.tile(label_mask, (3, 1))))
    for c in range(3):
        alone = np.asarray(scores(ids, mask, np.tile(labels[c], (3, 1)), np.tile(label_mask[c], (3, 1))))
        real = label_mask[c] > 0
        np.testing.assert_allclose(together[c::3][:, real], alone[:, real], rtol=1e-5, atol=1e-5)


# --- training through the seam ---------------------------------------------------------------------------

def test_a_prompt_tuning_step_has_the_loss_of_transformers_on_inputs_embeds(gemma, rng):
    """The prompt enters beside the scaled token embeddings: the first step's loss is transformers' on
    inputs_embeds = [prompt, embed_tokens(ids)] (PEFT's layout). The embedding table, which prompt initializers
    sample, holds the rows `embed` returns (times sqrt(H))."""
    theirs, folder = gemma
    model = ptj.from_pretrained(folder)
    np.testing.assert_allclose(np.asarray(model.embedding_table)[[3, 7]], np.asarray(model.embed(jnp.array([3, 7]))),
                               rtol=1e-6)
    prompt = rng.normal(size=(4, 32)).astype(np.float32)
    prompted = ptj.with_prompt(model, 4, prompt, placement="prefix")
    ids, targets = rng.integers(2, V, (3, 5)).astype(np.int32), rng.integers(2, V, (3, 3)).astype(np.int32)
    one = partitioning.make_mesh(devices=jax.devices()[:1])
    trainer = Trainer(MeshState(prompted, one), optax.adam(0.05), objective="lm", seed=None)
    metrics = trainer.train_step(lm_batch(ids, targets))
    with torch.no_grad():
        tokens = theirs.model.embed_tokens(t(np.concatenate([ids, targets[:, :-1]], 1)))
        embeds = torch.cat([torch.tensor(prompt)[None].expand(3, -1, -1), tokens], 1)
        logits = theirs(inputs_embeds=embeds).logits[:, 4 + 5 - 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), t(targets).reshape(-1))
    assert float(metrics["loss_sum"]) / float(metrics["denominator"]) == pytest.approx(float(loss), rel=1e-5)
    assert not np.allclose(np.asarray(trainer.state.merge(trainer.trainable).soft_prompt[...]), prompt)


@pytest.mark.parametrize("method", ["lora:2", "ia3", "prefix:3"])
def test_a_method_takes_a_step_and_its_adapter_gives_peft_logits(gemma, rng, tmp_path, method):
    """METHOD lora:R, ia3 and prefix:P build on Gemma 3 and train; the adapter exported after the step
    (PEFT's module names, its IA3 targets, its prefix layout for grouped-query attention) gives PEFT's logits."""
    from peft import PeftModel

    _, folder = gemma
    spec = PromptSpec(method=method)
    prompted = spec.build(ptj.from_pretrained(folder), None)
    trainer = Trainer(MeshState(prompted, partitioning.make_mesh(devices=jax.devices()[:1]),
                                trainable=spec.trainable(prompted)), optax.adam(0.05), objective="lm", seed=None)
    before = jax.tree.map(np.asarray, trainer.trainable)
    ids, mask = padded_batch(rng, V, [6, 4, 5], 6)
    metrics = trainer.train_step(lm_batch(ids, ids[:, :2], mask))
    assert np.isfinite(float(metrics["loss_sum"]))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(trainer.trainable)))
    model = trainer.state.merge(trainer.trainable).model
    export = {"lora:2": io.export_peft_lora, "ia3": io.export_peft_ia3, "prefix:3": io.export_peft_prefix}[method]
    export(tmp_path / "adapter", model, folder)
    peft = PeftModel.from_pretrained(reference(), str(tmp_path / "adapter")).eval()
    assert_logits_close(jax.jit(model)(ids, mask), torch_logits(peft, ids, mask), mask)


def test_a_model_parallel_mesh_equals_one_device(tmp_path, rng):
    """One key/value head, fewer than the (4, 2) mesh's model axis: LoRA trains alike on the mesh and on one device."""
    reference(tmp_path, num_key_value_heads=1, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
    ids, mask = padded_batch(rng, V, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    spec = PromptSpec(method="lora:2")
    # atol 1e-5: Adam's step divides by |gradient|, so a LoRA A entry whose gradient is near zero (B starts at zero)
    # moves by the rounding of its gradient, which differs with the mesh's order of sums.
    assert_trees_close(*trained_on_both_meshes(str(tmp_path), spec, lm_batch(ids, ids[:, :2], mask)), atol=1e-5)


def every_other_key_instead_of_dropout(monkeypatch):
    """Dropout on both sides replaced by scaling every other key's probability by (1 - rate), only where each side
    would drop out (`helpers.scale_instead_of_dropout` scales uniformly, which Gemma's post-attention norm undoes)."""
    from prompt_tuning_jax.models import common

    def torch_fake(input, p=0.5, training=True, inplace=False):
        return input * (1 - p * (torch.arange(input.shape[-1]) % 2)) if training and p > 0 else input

    def jax_fake(x, rate, keys):
        return x if keys is None or rate == 0 else x * (1 - rate * (jnp.arange(x.shape[-1]) % 2)).astype(x.dtype)

    monkeypatch.setattr(torch.nn.functional, "dropout", torch_fake)
    monkeypatch.setattr(common, "dropout", jax_fake)


def test_attention_dropout_sits_where_transformers_puts_it(tmp_path, rng, monkeypatch):
    """On the attention probabilities [B, N, Tq, Tk] after the softmax, and nowhere else."""
    theirs = train_mode(reference(tmp_path, attention_dropout=0.3))
    model = ptj.from_pretrained(tmp_path)
    assert model.config.has_dropout and model.config.with_dropout(0.0).attention_dropout == 0.0
    every_other_key_instead_of_dropout(monkeypatch)
    ids, mask = padded_batch(rng, V, [9, 5], 9, side="right")
    got = model(ids, mask, dropout_rng=jax.random.key(0))
    assert_logits_close(got, torch_logits(theirs, ids, mask), mask)
    assert np.abs(np.asarray(model(ids, mask)) - np.asarray(got))[mask > 0].max() > 1e-2  # no key: no dropout


# --- checkpoints, configs and bad input ---------------------------------------------------------------

def test_a_saved_model_loads_in_transformers_as_the_model_it_came_from(gemma, rng, tmp_path):
    theirs, folder = gemma
    model = ptj.from_pretrained(folder)
    ptj.save_pretrained(model, tmp_path)
    again = transformers.Gemma3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = padded_batch(rng, V, [7, 4], 7)
    np.testing.assert_array_equal(torch_logits(again, ids, mask), torch_logits(theirs, ids, mask))
    assert hf.config_from_folder(str(tmp_path)) == model.config
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata().get("axes")
        assert axes is not None and len(axes) == var[...].ndim, path


# google/gemma-3-1b-pt's config.json as the hub serves it (transformers 4.50's keys).
HUB_1B = {"architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
          "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
          "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
          "hidden_size": 1152, "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
          "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
          "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
          "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
          "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": True, "vocab_size": 262144}


def test_presets_are_the_released_configs_as_transformers_reads_them():
    one_b = gemma3.Gemma3Config.from_hf(HUB_1B)
    assert base.preset("google/gemma-3-1b-pt") == one_b == base.preset("gemma-3-1b-it")
    assert one_b.layer_types.count("full_attention") == 4 and one_b.layer_types[5] == "full_attention"
    assert one_b.rope("sliding_attention") == {"rope_type": "default", "rope_theta": 10000.0}
    assert one_b.rope("full_attention") == {"rope_type": "default", "rope_theta": 1000000.0}
    theirs = transformers.Gemma3TextConfig.from_dict(HUB_1B)
    assert list(one_b.layer_types) == theirs.layer_types
    assert {k: dict(v) for k, v in one_b.to_hf()["rope_parameters"].items()} == theirs.rope_parameters
    twelve = base.preset("google/gemma-3-12b-pt")
    assert twelve.rope("full_attention") == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}
    assert (twelve.hidden_size, twelve.num_hidden_layers, twelve.num_key_value_heads, twelve.vocab_size,
            twelve.sliding_window) == (3840, 48, 8, 262208, 1024)
    assert gemma3.Gemma3Config.from_hf({**HUB_1B, "eos_token_id": [1, 106]}).eos_token_id == 1
    assert one_b.describe().startswith("gemma3_text: 26 layers (22 sliding window 512, 4 global)")


@pytest.mark.parametrize("fields,message", [
    ({"num_hidden_layers": 3, "layer_types": ["full_attention"]}, "one of .* for each of the 3 layers"),
    ({"num_attention_heads": 4, "num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
    ({"sliding_window": None}, "sliding_window is None"),
    ({"use_bidirectional_attention": True}, "only causal"),
    ({"attention_bias": True}, "attention_bias is true"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_type 'yarn' is not supported"),
])
def test_a_config_we_cannot_run_is_one_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        gemma3.Gemma3Config.from_hf({**HUB_1B, **fields})
