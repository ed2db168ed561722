"""METHOD 'wayward' (Khashabi et al., 2021; the original's extended/train/wayward.py): the loss adds
gamma * sum_p ||prompt_p - text_p||^2 / P. One step against a NumPy reference of the added term, resume
exactness, a (4, 2) mesh against one device, and the pull toward the text growing with gamma."""
import numpy as np
import optax
import pytest
from helpers import padded_batch

import prompt_tuning_jax as ptj
from prompt_tuning_jax import inspect as ptj_inspect
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, train
from prompt_tuning_jax.methods.wayward import discrete_prompt, squared_l2_distance
from prompt_tuning_jax.prompts.io import load_prompt
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

TEXT = "this movie is great and good"
LR = 0.5


def test_the_target_is_the_text_embedded_then_zero_rows(tiny_gpt2_dir):
    model = ptj.from_pretrained(tiny_gpt2_dir)
    tokenizer = ptj.load_tokenizer(tiny_gpt2_dir)
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    table = np.asarray(model.embedding_table)
    target = discrete_prompt(table, tokenizer, TEXT, len(ids) + 3)
    np.testing.assert_array_equal(target[:len(ids)], table[ids])
    assert not target[len(ids):].any()
    np.testing.assert_array_equal(discrete_prompt(table, tokenizer, TEXT, 2), table[ids[:2]])  # cut to P
    x, y = np.ones((2, 4, 3)), np.zeros((2, 4, 3))
    assert float(squared_l2_distance(x, y)) == pytest.approx(3.0)  # sum over [P, H] / P, mean over tasks


def _step(folder, spec, batch):
    model, tokenizer = ptj.from_pretrained(folder), ptj.load_tokenizer(folder)
    prompted = spec.build(model, tokenizer)
    state = MeshState(prompted, trainable=spec.trainable(prompted))
    trainer = Trainer(state, optax.sgd(LR), objective="lm", seed=None,
                      regularizer=spec.method_impl.regularizer(spec, model, tokenizer))
    before = np.asarray(trainer.prompt)
    metrics = trainer.train_step(batch)
    return before, np.asarray(trainer.prompt), metrics


def test_one_step_adds_the_gradient_of_the_wayward_term(tiny_gpt2_dir, rng):
    """The step of METHOD 'wayward' minus the same step of 'prompt' (same init, same batch) is
    -LR * gamma * 2 (prompt - target) / P, computed in NumPy."""
    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    batch = {"input_ids": ids, "attention_mask": mask, "target_ids": ids[:, :2], "target_mask": np.ones((8, 2), np.int32),
             "label": np.zeros(8, np.int32), "weight": np.ones(8, np.float32)}
    common = dict(length=5, init="string", text=TEXT, seed=1)
    gamma = 0.3
    before, after_wayward, metrics = _step(tiny_gpt2_dir, PromptSpec(method="wayward", wayward_prompt="great movie",
                                                                     wayward_gamma=gamma, **common), batch)
    before_plain, after_plain, _ = _step(tiny_gpt2_dir, PromptSpec(method="prompt", **common), batch)
    np.testing.assert_array_equal(before, before_plain)
    target = discrete_prompt(ptj.from_pretrained(tiny_gpt2_dir).embedding_table, ptj.load_tokenizer(tiny_gpt2_dir),
                             "great movie", 5)
    expected = -LR * gamma * 2 * (before - target) / 5
    np.testing.assert_allclose(after_wayward - after_plain, expected, rtol=1e-4, atol=1e-6)
    assert float(metrics["regularizer"]) == pytest.approx(gamma * np.sum((before - target) ** 2) / 5, rel=1e-5)


def _run(folder, tmp_path, name, steps, gamma=1.0, **schedule):
    spec = PromptSpec(method="wayward", length=6, init="random_uniform", wayward_prompt=TEXT, wayward_gamma=gamma)
    data = DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4})
    summary = train(str(tmp_path / name), ModelSpec(folder), spec, data,
                    TrainSpec(steps=steps, eval_every=0, progress=False, **schedule), mesh_shape=(-1, 1),
                    optimizer=optax.adam(0.05))
    return np.asarray(summary["prompt"]), summary


@pytest.mark.slow
def test_wayward_resumes_exactly(tiny_gpt2_dir, tmp_path):
    whole, summary = _run(tiny_gpt2_dir, tmp_path, "whole", 6, checkpoint_every=3)
    assert summary["method"] == "wayward" and summary["trainable_params"] == 6 * 32
    _run(tiny_gpt2_dir, tmp_path, "halves", 3, checkpoint_every=3)
    resumed, _ = _run(tiny_gpt2_dir, tmp_path, "halves", 6, checkpoint_every=3)  # resumes from step 3
    np.testing.assert_array_equal(resumed, whole)


def test_a_model_parallel_mesh_equals_one_device(tiny_gpt2_dir, rng):
    import jax

    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    batch = {"input_ids": ids, "attention_mask": mask, "target_ids": ids[:, :2], "target_mask": np.ones((8, 2), np.int32),
             "label": np.zeros(8, np.int32), "weight": np.ones(8, np.float32)}
    spec = PromptSpec(method="wayward", length=5, init="random_uniform", wayward_prompt=TEXT, wayward_gamma=0.5)
    prompts = []
    for mesh in (partitioning.make_mesh(4, 2), partitioning.make_mesh(1, 1, devices=jax.devices()[:1])):
        model, tokenizer = ptj.from_pretrained(tiny_gpt2_dir), ptj.load_tokenizer(tiny_gpt2_dir)
        prompted = spec.build(model, tokenizer)
        trainer = Trainer(MeshState(prompted, mesh, trainable=spec.trainable(prompted)), optax.adam(0.05),
                          objective="lm", seed=None, regularizer=spec.method_impl.regularizer(spec, model, tokenizer))
        for _ in range(3):
            trainer.train_step(batch)
        prompts.append(np.asarray(trainer.prompt))
    np.testing.assert_allclose(prompts[0], prompts[1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_larger_gamma_pulls_the_prompt_toward_the_text(tiny_gpt2_dir, tmp_path, capsys):
    tokenizer = ptj.load_tokenizer(tiny_gpt2_dir)
    table = np.asarray(ptj.from_pretrained(tiny_gpt2_dir).embedding_table)
    target = discrete_prompt(table, tokenizer, TEXT, 6)
    distances, matches = [], []
    for gamma in (0.0, 1.0, 10.0):
        prompt, _ = _run(tiny_gpt2_dir, tmp_path, f"g{gamma}", 30, gamma=gamma, checkpoint_every=30)
        distances.append(float(np.sum((prompt - target) ** 2) / 6))
        folder = tmp_path / f"g{gamma}"
        assert ptj_inspect.main([str(folder / "prompts" / "prompt_latest.npy"), "--model", tiny_gpt2_dir,
                                 "--toward", TEXT, "--png", str(tmp_path / f"g{gamma}.png")]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("toward "))
        with capsys.disabled():  # the figures: `pytest -s -k larger_gamma`
            print(f"gamma {gamma}: {line}")
        matches.append(int(line.split(": ")[1].split(" of ")[0]))
    assert distances[0] > distances[1] > distances[2], distances
    assert matches[2] >= matches[0] and matches[2] >= 4, matches
    np.testing.assert_allclose(load_prompt(tmp_path / "g10.0" / "prompts" / "prompt_latest.npy"), prompt)


@pytest.mark.parametrize("kw,message", [
    (dict(method="wayward"), "METHOD 'wayward' needs WAYWARD_PROMPT"),
    (dict(method="wayward", wayward_prompt="x", wayward_gamma=-1), "WAYWARD_GAMMA must be a number >= 0"),
    (dict(method="prompt", wayward_prompt="x"), "WAYWARD_PROMPT is set but METHOD is 'prompt'"),
])
def test_bad_wayward_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        PromptSpec(**kw)
