"""Our Llama / Mistral / Qwen2 / Qwen3 (models/llama.py) against transformers on random checkpoints it saved.

Shapes no released config has: 6 query heads sharing 2 KV heads, Qwen3's head_dim (12) != hidden / heads (8),
Llama 3's rope scaling with a short original_max_position_embeddings (8) so that it acts, 'linear' and
'dynamic' RoPE on inputs longer than max_position_embeddings, sliding windows (3) shorter than the inputs, random
norms and biases. Our positions count real tokens only (cumsum(mask) - 1), as transformers' `generate` numbers
left-padded rows; under left padding the reference's forward gets those positions explicitly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from helpers import assert_logits_close, assert_trees_close, padded_batch, trained_on_both_meshes

import prompt_tuning_jax as ptj
from prompt_tuning_jax import decoding, partitioning
from prompt_tuning_jax.experiments import PromptSpec
from prompt_tuning_jax.models import llama, rope  # importing llama registers llama, mistral, qwen2 and qwen3
from prompt_tuning_jax.models.prefix import add_prefix, to_flat
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

VOCAB = 97
BASE = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, eos_token_id=2,
            bos_token_id=1)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
# id -> (transformers config class, its fields beyond BASE)
CASES = {
    "llama": (transformers.LlamaConfig, dict(attention_bias=True, mlp_bias=True, rope_parameters=LLAMA3)),
    "llama-tied-linear": (transformers.LlamaConfig, dict(tie_word_embeddings=True, max_position_embeddings=6,
                                                         rope_parameters={"rope_type": "linear", "factor": 2.0})),
    "llama-dynamic": (transformers.LlamaConfig, dict(max_position_embeddings=6,
                                                     rope_parameters={"rope_type": "dynamic", "factor": 2.0})),
    "mistral": (transformers.MistralConfig, dict(sliding_window=3, head_dim=10)),
    "qwen2": (transformers.Qwen2Config, dict(use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=12, attention_bias=True, tie_word_embeddings=True)),
}


def reference(case, folder=None, seed=0, **overrides):
    """The transformers model of CASES[case] in eval mode, norms and biases random (a wrong one cannot pass),
    written with save_pretrained when `folder` is given."""
    config_cls, fields = CASES[case]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config_cls(**{**BASE, **fields, **overrides})).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    if folder is not None:
        model.save_pretrained(folder)
    return model


def torch_logits(model, ids, mask, position_ids=None):
    t = lambda a: None if a is None else torch.tensor(np.asarray(a), dtype=torch.long)
    with torch.no_grad():
        return model(input_ids=t(ids), attention_mask=t(mask), position_ids=t(position_ids)).logits.numpy()


def _batch(ids, targets, mask=None):
    b = ids.shape[0]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else mask, "target_ids": targets,
            "target_mask": np.ones_like(targets), "label": np.zeros(b, np.int32), "weight": np.ones(b, np.float32)}


@pytest.mark.parametrize("case", CASES)
def test_logits_and_greedy_generation_match_transformers(tmp_path, rng, case):
    """Logits of rows of 9, 5 and 1 real tokens under right and left padding (9 > max_position_embeddings 6 and >
    the window 3 where a case has them); greedy generation of 8 tokens after left-padded rows of 7 and 4 tokens
    (through the KV cache, past max_position_embeddings and the window) equals transformers' `generate`."""
    hf = reference(case, tmp_path)
    model = ptj.from_pretrained(tmp_path)
    assert model.config.model_type == CASES[case][0].model_type and isinstance(model, llama.Llama)
    forward = jax.jit(lambda i, m: model(i, attention_mask=m))
    for side in ("right", "left"):
        ids, mask = padded_batch(rng, VOCAB, [9, 5, 1], 9, side=side)
        # a fresh reference each time: transformers' dynamic RoPE keeps state between calls
        expected = torch_logits(reference(case), ids, mask, np.maximum(np.cumsum(mask, 1) - 1, 0))
        ours = forward(ids, mask)
        assert ours.shape == (3, 9, VOCAB) and ours.dtype == jnp.float32
        assert_logits_close(ours, expected, mask)
    if case == "llama-tied-linear":
        return  # nothing the decoding path does differently from "llama"
    ids, mask = padded_batch(rng, VOCAB, [7, 4], 7, side="left")
    with torch.no_grad():
        expected = hf.generate(torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(), max_new_tokens=8,
                               do_sample=False, pad_token_id=2, eos_token_id=2).numpy()[:, 7:]
    ours = decoding.generate(model, ids, mask, max_new_tokens=8, eos_id=2)
    np.testing.assert_array_equal(np.asarray(ours)[:, :expected.shape[1]], expected)


def test_config_round_trips_through_transformers(tmp_path, rng):
    """Our config.json and weights (save_pretrained) load in transformers with the same logits, for every
    model_type, sliding layers and a tied head included."""
    ids, mask = padded_batch(rng, VOCAB, [9, 6], 9)
    for case in ("llama", "mistral", "qwen2", "qwen3"):
        reference(case, tmp_path / case)
        ours = ptj.from_pretrained(tmp_path / case)
        ptj.save_pretrained(ours, tmp_path / f"{case}-again")
        again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"{case}-again").eval()
        assert type(again).__name__ == llama.ARCHITECTURES[ours.config.model_type]
        assert llama.LlamaConfig.from_hf(again.config.to_dict()) == ours.config
        assert_logits_close(jax.jit(ours)(ids, mask), torch_logits(again, ids, mask), mask)


def test_bfloat16_compute_is_close_to_float32_and_a_prompt_trains_on_it(tmp_path, rng):
    reference("qwen3", tmp_path)
    f32 = ptj.from_pretrained(tmp_path)
    bf16 = ptj.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    ids, mask = padded_batch(rng, VOCAB, [8, 6, 7, 5], 8)
    a, b = np.asarray(jax.jit(f32)(ids, mask)), jax.jit(bf16)(ids, mask)
    assert b.dtype == jnp.float32  # logits come out in float32 for the loss
    assert bf16.layers[0].self_attn.q_proj.weight[...].dtype == jnp.float32  # storage stays float32
    rel = np.abs(a - np.asarray(b))[mask > 0].max() / np.abs(a).max()
    assert 0 < rel < 5e-2
    # prompt tuning through the seam: only the [P, H] prompt trains, in float32
    prompted = ptj.with_prompt(bf16, 3, placement="suffix")
    state = MeshState(prompted, partitioning.make_mesh(devices=jax.devices()[:1]))
    assert [x.shape for x in jax.tree.leaves(state.trainable)] == [(3, 48)]
    trainer = Trainer(state, optax.adam(0.05), objective="lm", seed=None)
    losses = [float(trainer.train_step(_batch(ids, ids[:, :2], mask))["loss_sum"]) for _ in range(2)]
    assert np.isfinite(losses[0]) and losses[1] < losses[0]
    assert {x.dtype for x in jax.tree.leaves(trainer.trainable)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("side", ["right", "left"])
def test_rank_targets_from_one_run_of_the_input_equal_separate_runs(tmp_path, rng, side):
    """R targets per input reuse the input's keys and values (the window applies over the cache's slots); the
    logits equal running input + target once per target, as training does."""
    reference("mistral", tmp_path)
    model = ptj.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, VOCAB, [7, 3, 5], 9, side=side)
    score = jax.jit(lambda i, m, t, tm: model.target_logits(model.embed(i), m, t, tm))
    labels = rng.integers(1, VOCAB, (3, 4))  # C = 3 label strings of up to 4 tokens
    label_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    together = np.asarray(score(ids, mask, np.tile(labels, (3, 1)), np.tile(label_mask, (3, 1))))
    for c in range(3):
        alone = np.asarray(score(ids, mask, np.tile(labels[c], (3, 1)), np.tile(label_mask[c], (3, 1))))
        real = label_mask[c] > 0
        np.testing.assert_allclose(together[c::3][:, real], alone[:, real], rtol=1e-5, atol=1e-5)


def test_a_prefix_equals_peft_prefix_tuning(tmp_path, rng):
    """METHOD 'prefix:P' on grouped-query attention: our table [L, 2, P, K, D] in PEFT's layout gives PEFT's
    logits (its past keys and values per KV head; the input's positions continue after them, the window too)."""
    from peft import PrefixTuningConfig, get_peft_model

    hf = reference("mistral", tmp_path)
    model = add_prefix(ptj.from_pretrained(tmp_path), 4, seed=3)
    assert model.prefix.shape == (2, 2, 4, 2, model.config.head_dim)  # KV heads and head_dim, as PEFT makes for GQA
    peft = get_peft_model(hf, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight.copy_(torch.tensor(to_flat(model.prefix.table[...])))
    ids, mask = padded_batch(rng, VOCAB, [6, 4], 6, side="right")
    assert_logits_close(jax.jit(model)(ids, mask), torch_logits(peft, ids, mask), mask)


@pytest.mark.parametrize("method", ["lora:2", "ia3", "prefix:3"])  # 'prompt': the mesh test below
def test_every_method_builds_and_takes_a_step(tmp_path, rng, method):
    reference("qwen2", tmp_path)
    spec = PromptSpec(method=method)
    prompted = spec.build(ptj.from_pretrained(tmp_path), None)
    one = partitioning.make_mesh(devices=jax.devices()[:1])
    state = MeshState(prompted, one, trainable=spec.trainable(prompted))
    count = sum(np.size(x) for x in jax.tree.leaves(state.trainable))
    k, d, h, i = 2, 8, 48, 64  # KV heads, head size, hidden, intermediate
    per_layer_lora = (h + 6 * d) + 2 * (h + k * d) + (6 * d + h) + 2 * (h + i) + (i + h)  # q, k v, o, gate up, down
    expected = {"lora:2": 2 * 2 * per_layer_lora,  # 2 layers, rank 2
                "ia3": 2 * (6 * d + k * d + i), "prefix:3": 2 * 2 * 3 * k * d}[method]  # qwen2's IA3: q, v, down
    assert count == expected
    trainer = Trainer(state, optax.adam(0.05), objective="lm", seed=None)
    ids, mask = padded_batch(rng, VOCAB, [6, 4, 5, 3], 6)
    first = trainer.train_step(_batch(ids, ids[:, :2], mask))
    second = trainer.train_step(_batch(ids, ids[:, :2], mask))
    assert np.isfinite(float(first["loss_sum"])) and float(second["loss_sum"]) < float(first["loss_sum"])


def test_a_model_parallel_mesh_equals_one_device(tmp_path, rng):
    """Prompt tuning on a (4, 2) mesh with one KV head (fewer than the model axis): the same prompt as on one device."""
    reference("llama", tmp_path, num_key_value_heads=1)
    ids, mask = padded_batch(rng, VOCAB, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    spec = PromptSpec(length=3, init="random_uniform", placement="suffix")
    assert_trees_close(*trained_on_both_meshes(tmp_path, spec, _batch(ids, ids[:, :2], mask)), atol=1e-6)


def test_dropout_acts_on_attention_probabilities_only_and_per_row(tmp_path, rng):
    reference("llama", tmp_path, attention_dropout=0.5)
    model = ptj.from_pretrained(tmp_path)
    assert model.config.has_dropout and not ptj.from_pretrained(tmp_path, dropout_rate=0.0).config.has_dropout
    forward = jax.jit(lambda i, m, keys: model(i, m, dropout_rng=keys))
    ids, mask = padded_batch(rng, VOCAB, [6, 4], 6)
    plain = np.asarray(jax.jit(model)(ids, mask))  # no key: no dropout
    keys = jax.random.split(jax.random.key(0), 2)
    dropped = np.asarray(forward(ids, mask, keys))
    assert np.abs(dropped - plain)[mask > 0].max() > 1e-3
    other = ids.copy()
    other[1] = rng.integers(1, VOCAB, 6)
    np.testing.assert_array_equal(np.asarray(forward(other, mask, keys))[0], dropped[0])  # row 0's masks are its own


# The parameter counts of the released checkpoints (their safetensors' sums).
RELEASED = {"meta-llama/Llama-3.1-8B": 8_030_261_248, "meta-llama/Llama-3.2-1B": 1_235_814_400,
            "meta-llama/Llama-3.1-70B": 70_553_706_496, "Qwen/Qwen2.5-7B": 7_615_616_512,
            "Qwen/Qwen3-8B": 8_190_735_360, "mistralai/Mistral-7B-v0.1": 7_241_732_096}


@pytest.mark.parametrize("name", RELEASED)
def test_released_sizes_have_their_parameter_counts(name):
    """Built (shapes only) with one and two layers; every further layer adds what the second did."""
    import dataclasses

    config = ptj.models.preset(name)

    def count(layers):
        small = dataclasses.replace(config, num_hidden_layers=layers, layer_types=None)
        abstract = nnx.eval_shape(lambda: llama.Llama(small, rngs=nnx.Rngs(0)))
        return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))

    one, two = count(1), count(2)
    assert one + (config.num_hidden_layers - 1) * (two - one) == RELEASED[name], config.describe()


def test_every_parameter_has_logical_axes_and_a_checkpoint_name(tmp_path):
    reference("qwen3", tmp_path)
    model = ptj.from_pretrained(tmp_path)
    names = set()
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata().get("axes")
        assert axes is not None and len(axes) == var[...].ndim, path
        names.add(model.checkpoint_key(path))
    assert "model.layers.1.self_attn.k_norm.weight" in names and "lm_head.weight" not in names  # qwen3 tied here


@pytest.mark.parametrize("config,match", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_type 'yarn' is not supported"),
    ({"rope_scaling": {"type": "linear"}}, "needs factor"),
    ({"num_key_value_heads": 4}, "not a multiple of num_key_value_heads 4"),
    ({"model_type": "qwen2", "layer_types": ["sliding_attention"] * 2}, "sliding_window is not set"),
])
def test_bad_configs_are_one_clear_error(config, match):
    raw = {"model_type": "llama", **BASE, **config}
    with pytest.raises(ValueError, match=match):
        llama.LlamaConfig.from_hf(raw)


def test_rope_reads_old_and_new_configs_alike():
    new = rope.parameters({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0},
                           "max_position_embeddings": 8192})
    old = rope.parameters({"rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0}, "rope_theta": 5e5,
                           "max_position_embeddings": 8192})
    assert new == old and new["original_max_position_embeddings"] == 8192
