"""The compiled step: accumulation, objectives, compilation count, shardings, donation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.training import optim
from prompt_tuning_jax.training.trainer import Trainer

# Sizes for tiny_model(): a vocabulary of 61 (which does not split over 2 model shards).
GPT2 = dict(vocab_size=61, n_positions=48, n_embd=32)
T5 = dict(vocab_size=61, relative_attention_num_buckets=32, relative_attention_max_distance=128)


def batch(rng, b=8, t=12, tt=3, vocab=61):
    lengths = rng.integers(3, t + 1, b)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": np.where(mask, rng.integers(1, vocab, (b, t)), 0).astype(np.int32),
            "attention_mask": mask,
            "target_ids": rng.integers(1, vocab, (b, tt)).astype(np.int32),
            "target_mask": np.ones((b, tt), np.int32),
            "label": rng.integers(0, 2, b).astype(np.int32),
            "task_index": np.zeros(b, np.int32), "weight": np.ones(b, np.float32)}


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["lm", "classification"])
def test_gradient_accumulation_equals_one_big_batch(rng, objective):
    head = dict(head="linear", num_labels=2) if objective == "classification" else {}
    b = batch(rng)
    results = []
    for accum in (1, 4):
        prompted = ptj.with_prompt(tiny_model("gpt2", **GPT2), 3, None, placement="suffix", seed=1, **head)
        trainer = Trainer(prompted, optim.make_optimizer("sgd", 0.5), objective=objective, accum_steps=accum,
                          mesh=partitioning.make_mesh(devices=jax.devices()[:2]))
        metrics = trainer.train_step(b)
        results.append((trainer.prompt, float(metrics["loss_sum"]), float(metrics["denominator"])))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
    assert results[0][2] == results[1][2]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_lm_objective_learns_the_targets(rng, family):
    model = (tiny_model("gpt2", initializer_range=0.3, **GPT2) if family == "gpt2"
             else tiny_model("t5", untied=True, **T5))  # sharp enough to be steered
    prompted = ptj.with_prompt(model, 4, None, placement="prefix")
    trainer = Trainer(prompted, optim.make_optimizer("adamw", 0.05, weight_decay=0.0), objective="lm")
    b = batch(rng)
    first = trainer.train_step(b)
    for _ in range(30):
        last = trainer.train_step(b)
    loss = lambda m: float(m["loss_sum"]) / float(m["denominator"])
    assert loss(last) < 0.7 * loss(first)


@pytest.mark.slow
def test_one_compilation_per_shape_and_no_weight_donation(rng):
    prompted = ptj.with_prompt(tiny_model("gpt2", **GPT2), 3, None, placement="suffix", head="linear", num_labels=2)
    trainer = Trainer(prompted, optim.make_optimizer("adamw", 1e-3), objective="classification")
    frozen_before = jax.tree.leaves(trainer.state.frozen)[0]
    for _ in range(5):
        trainer.train_step(batch(rng))
    assert trainer._step._cache_size() == 1
    trainer.train_step(batch(rng, t=16))  # a second bucket length compiles once more
    trainer.train_step(batch(rng, t=16))
    assert trainer._step._cache_size() == 2
    assert not frozen_before.is_deleted()  # frozen weights are never donated


@pytest.mark.slow
def test_sharded_step_equals_single_device(rng):
    """Frozen weights split over model=2, batch over data=4: the same prompt as on one device."""
    assert jax.device_count() == 8
    b = batch(rng)
    prompts = []
    for mesh in (partitioning.make_mesh(devices=jax.devices()[:1]), partitioning.make_mesh(data=4, model=2)):
        prompted = ptj.with_prompt(tiny_model("gpt2", **GPT2), 3, None, placement="suffix", head="linear",
                                   num_labels=2, seed=2)
        trainer = Trainer(prompted, optim.make_optimizer("adamw", 1e-2), objective="classification", mesh=mesh)
        for _ in range(3):
            trainer.train_step(b)
        prompts.append(trainer.prompt)
        if mesh.shape["model"] == 2:
            wte = trainer.state.frozen["model"]["wte"]["weight"]
            assert wte.sharding.spec[0] is None  # vocab 61 does not split in 2: replicated, not an error
            c_fc = trainer.state.frozen["model"]["h"][0]["mlp"]["c_fc"]["weight"]
            assert tuple(c_fc.sharding.spec) == (None, "model")
    np.testing.assert_allclose(prompts[0], prompts[1], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_trainable_state(rng):
    prompted = ptj.with_prompt(tiny_model("gpt2", dtype=jnp.bfloat16, **GPT2), 3, None, placement="suffix",
                               head="linear", num_labels=2)
    trainer = Trainer(prompted, optim.make_optimizer("adafactor", 0.3), objective="classification")
    metrics = trainer.train_step(batch(rng))
    assert np.isfinite(float(metrics["loss_sum"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trainer.trainable))


def test_batch_must_split_over_data_shards(rng):
    prompted = ptj.with_prompt(tiny_model("gpt2", **GPT2), 3, None, placement="suffix", head="linear", num_labels=2)
    trainer = Trainer(prompted, optim.make_optimizer("sgd", 0.1), objective="classification",
                      mesh=partitioning.make_mesh(data=8))
    with pytest.raises(ValueError, match="global batch size 6"):
        trainer.train_step(batch(rng, b=6))


def test_objective_needs_a_head():
    with pytest.raises(ValueError, match="needs a head"):
        Trainer(ptj.with_prompt(tiny_model("gpt2", **GPT2), 3, None), optim.make_optimizer(),
                objective="classification")
