"""Compiling a run ahead of time from its config alone: bytes per device, MESH_SHAPE 'auto', 2-D weights.

These run on the 8 fake CPU devices (XLA:CPU reports memory too); tests/test_compile.py does the same for
TPU topologies with libtpu.
"""
import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import tiny_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, planning, train
from prompt_tuning_jax.training import optim
from prompt_tuning_jax.training.trainer import Trainer

# Weights dominate: a 4096-token vocabulary at width 64 (1 MiB in float32) splits over `model`.
CONFIG = ptj.GPT2Config(vocab_size=4096, n_positions=64, n_embd=64, n_layer=2, n_head=4, eos_token_id=0)


@pytest.fixture(scope="module")
def config_only(tmp_path_factory) -> str:
    """A checkpoint folder holding only config.json: enough to compile, nothing to load."""
    folder = tmp_path_factory.mktemp("config_only")
    (folder / "config.json").write_text(json.dumps(CONFIG.to_hf()))
    return str(folder)


def make_run(folder, kind="train", dims=1, batch_size=8, **model):
    return planning.Run(kind, ModelSpec(folder, parameter_partitioning_dims=dims, **model),
                        PromptSpec(length=4, init="random_uniform"),
                        DataSpec(None, {"inputs": 16, "targets": 4}, batch_size=batch_size), TrainSpec(steps=10),
                        optim.make_optimizer(total_steps=10))


def expected_weight_bytes(mesh, rules) -> int:
    """Each weight's shard on one device, summed: computed here from the logical axes, not by planning."""
    abstract = nnx.eval_shape(lambda: ptj.init_random(CONFIG))
    total = 0
    for _, variable in nnx.to_flat_state(nnx.state(abstract)):
        spec = partitioning.variable_spec(variable, mesh, rules)
        shape = jax.sharding.NamedSharding(mesh, spec).shard_shape(variable.shape)
        total += int(np.prod(shape)) * 4
    return total


@pytest.mark.parametrize("dims", [1, 2])
def test_programs_compile_from_a_config_and_count_their_bytes(config_only, dims):
    run = make_run(config_only, dims=dims)
    plan = planning.compile_run(run, jax.devices(), None, (4, 2))
    assert list(plan.programs) == ["train_step", "eval_step", "decode"] and plan.mesh_shape == (4, 2)
    mesh = partitioning.make_mesh(4, 2)
    for report in plan.programs.values():
        assert report.weights == expected_weight_bytes(mesh, partitioning.rules_for(dims))
        # jit drops the batch arrays a program never reads (an LM step has no use for `label`)
        given = report.weights + report.trainable + report.batch
        assert given - report.batch <= report.arguments <= given + 4  # + the step number
        assert report.flops > 0 and report.peak >= report.arguments and report.error is None
    train_step = plan.programs["train_step"]
    assert train_step.trainable > plan.programs["eval_step"].trainable  # + the optimizer state
    # 2 of the 8 rows per device, int32/float32: ids and mask [2, 16], targets and mask [2, 4], 3 x [2]
    assert train_step.batch == 2 * (2 * 16 * 4) + 2 * (2 * 4 * 4) + 3 * (2 * 4)
    assert plan.programs["decode"].batch == 2 * (2 * 16 * 4) + 2 * 4  # ids, mask, task index


def test_two_d_partitioning_splits_frozen_weights_over_data_too(config_only):
    one, two = (planning.compile_run(make_run(config_only, dims=d), jax.devices(), None, (4, 2),
                                     programs=["eval_step"]).programs["eval_step"] for d in (1, 2))
    assert two.weights < one.weights / 3  # embed over data (4) as well as vocab/heads/MLP over model (2)


def test_two_d_partitioning_trains_to_the_same_prompt(rng):
    """The rules only move weights: a step on (4, 2) gives the same prompt with 1-D and 2-D weights."""
    mask = (np.arange(12)[None] < rng.integers(3, 13, 8)[:, None]).astype(np.int32)
    b = {"input_ids": np.where(mask, rng.integers(1, 61, (8, 12)), 0).astype(np.int32), "attention_mask": mask,
         "target_ids": rng.integers(1, 61, (8, 3)).astype(np.int32), "target_mask": np.ones((8, 3), np.int32),
         "label": np.zeros(8, np.int32), "task_index": np.zeros(8, np.int32), "weight": np.ones(8, np.float32)}
    prompts = []
    for dims in (1, 2):
        model = tiny_model("gpt2", vocab_size=61, n_positions=48, n_embd=32, dropout_rate=0.0)
        prompted = ptj.with_prompt(model, 3, None, seed=1)
        trainer = Trainer(prompted, optim.make_optimizer("sgd", 0.5), objective="lm",
                          mesh=partitioning.make_mesh(4, 2), rules=partitioning.rules_for(dims), seed=None)
        trainer.train_step(b)
        prompts.append(trainer.prompt)
        if dims == 2:
            wte = trainer.state.frozen["model"]["wte"]["weight"]
            assert wte.sharding.spec == jax.sharding.PartitionSpec(None, "data")  # vocab 61 does not split
    np.testing.assert_allclose(prompts[0], prompts[1], rtol=1e-5, atol=1e-6)


def test_auto_mesh_takes_the_smallest_model_axis_that_fits(config_only):
    run = make_run(config_only)
    step = ["train_step"]
    need = {m: planning.compile_run(run, jax.devices(), None, (8 // m, m), programs=step).programs["train_step"].peak
            for m in (1, 2)}
    assert need[2] < need[1]
    shape, plans = planning.auto_mesh_shape(run, jax.devices(), hbm_bytes=(need[1] + need[2]) // 2, programs=step)
    assert shape == (4, 2) and [p.mesh_shape for p in plans] == [(8, 1), (4, 2)]
    assert not plans[0].fits and plans[1].fits
    assert planning.auto_mesh_shape(run, jax.devices(), hbm_bytes=need[1], programs=step)[0] == (8, 1)


def test_nothing_fits_names_the_program_and_what_to_change(config_only):
    run = make_run(config_only)
    with pytest.raises(ValueError, match="frozen weights alone exceed") as e:
        planning.auto_mesh_shape(run, jax.devices(), hbm_bytes=1000)
    assert "MESH_SHAPE=(" not in str(e.value) and "bfloat16" in str(e.value) and "bigger slice" in str(e.value)
    plan = planning.compile_run(run, jax.devices(), None, mesh_shape=(8, 1), programs=["train_step"])
    step = plan.programs["train_step"]
    between = (step.weights + step.peak) // 2  # the weights fit, the step does not
    message = planning.no_fit_message(run, [dataclasses.replace(plan, hbm_bytes=between)], between, 8)
    assert message.startswith("train_step needs 0.0 GiB per chip on MESH_SHAPE (8, 1) (weights 0.0")
    for advice in ("MESH_SHAPE=(-1, 2)", "BATCH_SIZE", "ACCUM_STEPS", "remat = True", "bfloat16",
                   "parameter_partitioning_2d.gin"):
        assert advice in message
    # Weights alone over the HBM on a fixed mesh: refused without compiling, and only advice that shrinks weights.
    plan = planning.compile_run(run, jax.devices(), hbm_bytes=1000, mesh_shape=(8, 1), programs=["train_step"])
    step = plan.programs["train_step"]
    assert step.error == planning.WEIGHTS_ALONE and step.compile_s == 0 and not plan.fits
    message = planning.no_fit_message(run, [plan], 1000, 8)
    assert "the frozen weights alone take" in message and "so it was not compiled" in message
    assert "MESH_SHAPE=(-1, 8)" in message and "ACCUM_STEPS" not in message and "remat" not in message  # none is enough


def test_batch_that_does_not_split_over_data_is_refused(config_only):
    with pytest.raises(ValueError, match="global batch size 6 must be divisible by the 4 data shards"):
        planning.compile_run(make_run(config_only, batch_size=6), jax.devices(), None, (4, 2))


def test_runs_without_a_head_decode_and_infer_only_decodes(config_only):
    assert make_run(config_only, kind="infer").programs == ("decode",)
    assert make_run(config_only, kind="evaluate").programs == ("eval_step", "decode")
    run = make_run(config_only)
    run.prompt = PromptSpec(length=4, init="random_uniform", head="linear", num_labels=3)
    assert run.programs == ("train_step", "eval_step")
    assert run.for_target("tpu").model.dtype == "bfloat16" and run.for_target("cpu").model.dtype == "float32"


@pytest.mark.slow
def test_a_run_with_mesh_shape_auto_trains_on_cpu(tmp_path, tiny_gpt2_dir):
    """CPUs report no memory limit: 'auto' is (-1, 1) there, and the run goes on."""
    assert planning.resolve_mesh_shape(make_run(tiny_gpt2_dir)) == (-1, 1)
    run = make_run(tiny_gpt2_dir)
    run.mesh_shape = "auto"
    assert planning.resolve_mesh_shape(run) == (-1, 1)
    summary = train(str(tmp_path / "run"), ModelSpec(tiny_gpt2_dir), PromptSpec(length=2, init="random_uniform"),
                    DataSpec("demo_sentiment", {"inputs": 32, "targets": 4}, batch_size=8, eval_split=None),
                    TrainSpec(steps=2, progress=False), mesh_shape="auto")
    assert summary["step"] == 2
