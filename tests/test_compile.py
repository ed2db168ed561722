"""`python -m prompt_tuning_jax.compile`: the real XLA:TPU compiler (libtpu) on this CPU, for real slices.

Skipped without libtpu; CI installs it (`pip install "jax[tpu]==<installed jax>"`).
"""
import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

import prompt_tuning_jax as ptj
from prompt_tuning_jax import cli, compile as compile_cmd, partitioning, topologies
from prompt_tuning_jax.experiments import demo_model
from prompt_tuning_jax.models import hf

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not topologies.has_libtpu(), reason=f"needs libtpu, the TPU compiler: {topologies.install_command()}")]

DEMO = ["--gin_file=models/demo_gpt2_tiny.gin", "--gin_file=prompts/from_sampled_vocab.gin",
        "--gin_file=runs/prompt_finetune.gin", "--gin.MODEL_DIR='unused'", "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.DROPOUT_RATE=0.1"]


def compile_main(*argv) -> int:
    return cli.main(compile_cmd.run, "compile", argv=list(argv), add_arguments=compile_cmd.add_arguments)


def shard_sum(config, devices, mesh_shape, rules, itemsize=4) -> int:
    """Each weight's shard on one device, summed, from the logical axes on a mesh of those TPU devices."""
    mesh = partitioning.make_mesh(*mesh_shape, devices=devices)
    total = 0
    for _, v in nnx.to_flat_state(nnx.state(nnx.eval_shape(lambda: ptj.init_random(config)))):
        shape = jax.sharding.NamedSharding(mesh, partitioning.variable_spec(v, mesh, rules)).shard_shape(v.shape)
        total += int(np.prod(shape)) * itemsize
    return total


@pytest.mark.parametrize("accelerator, slices, chips, hosts", [("v4-8", 1, 4, 1), ("v4-16", 1, 8, 2),
                                                                ("v4-8", 2, 4, 2)])
def test_demo_model_programs_compile_for_v4(tmp_path, capsys, accelerator, slices, chips, hosts):
    out = tmp_path / "plan.json"
    mesh = "--gin.MESH_SHAPE=(-1, 2)" if slices == 1 else "--gin.MESH_SHAPE=(-1, 1)"
    assert compile_main(f"--accelerator={accelerator}", f"--num_slices={slices}", f"--json={out}", *DEMO, mesh) == 0
    plan = json.loads(out.read_text())
    assert (plan["chips"], plan["hosts"], plan["devices"]) == (chips, hosts, chips * slices)
    assert plan["hbm_bytes_per_chip"] == 32 * 2**30 and plan["fits"]
    assert set(plan["programs"]) == {"train_step", "eval_step", "decode"}
    devices = topologies.target_devices(topologies.accelerator(accelerator), slices)
    config = hf.pretrained_config(demo_model.demo_checkpoint())
    expected = shard_sum(config, devices, plan["mesh_shape"], partitioning.DEFAULT_RULES)
    for name, program in plan["programs"].items():
        assert program["fits"] and program["flops"] > 0 and program["compile_s"] > 0, name
        assert program["weights_bytes_per_chip"] == expected
        memory = program["bytes_per_chip"]
        # XLA:TPU pads small minor dims to its tiles, so the arguments can exceed what we hold
        assert memory["arguments"] >= expected and memory["peak"] >= memory["arguments"]
    printed = capsys.readouterr().out
    assert f"{accelerator}{' x 2 slices' if slices > 1 else ''}: {chips * slices} chips (megacore)" in printed
    assert "train_step" in printed and "decode" in printed


def test_t5_small_shaped_programs_compile_for_v5litepod_4(tmp_path):
    """A released size's hub id resolves without the hub: the shipped config of t5-small-lm-adapt."""
    from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, planning

    run = planning.Run("train", ModelSpec("google/t5-small-lm-adapt", dtype="bfloat16", dropout_rate=0.0),
                       PromptSpec(length=20, init="random_uniform"),
                       DataSpec(None, {"inputs": 64, "targets": 4}, batch_size=8))
    spec = topologies.accelerator("v5litepod-4")
    devices = topologies.target_devices(spec)
    plan = planning.compile_run(run, devices, spec.hbm_bytes, (2, 2))
    assert plan.fits and list(plan.programs) == ["train_step", "eval_step", "decode"]
    config = hf.pretrained_config("google/t5-small-lm-adapt")
    assert plan.programs["train_step"].weights == shard_sum(config, devices, (2, 2), partitioning.DEFAULT_RULES)
    assert {d.device_kind for d in devices} == {"TPU v5 lite"}


def test_per_layer_prompts_with_a_visibility_setting_compile_for_v5litepod_4():
    """METHOD 'per_layer' ([L, P, H] prompts at every encoder block) under PROMPT_VISIBILITY: the same three
    programs compile for the TPU, and evaluation holds the [L, P, H] prompt (replicated) as its trainable state."""
    from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, planning

    prompt = PromptSpec(length=20, init="random_uniform", method="per_layer", per_layer_combine="add",
                        visibility=["prompt->prompt"])
    run = planning.Run("train", ModelSpec("google/t5-small-lm-adapt", dtype="bfloat16", dropout_rate=0.0), prompt,
                       DataSpec(None, {"inputs": 64, "targets": 4}, batch_size=8))
    spec = topologies.accelerator("v5litepod-4")
    plan = planning.compile_run(run, topologies.target_devices(spec), spec.hbm_bytes, (2, 2))
    assert plan.fits and list(plan.programs) == ["train_step", "eval_step", "decode"]
    assert plan.programs["eval_step"].trainable == 8 * 20 * 512 * 4  # 8 encoder blocks x P x H, float32


def test_prefix_tuning_with_a_projection_compiles_for_v5litepod_4():
    """METHOD 'prefix:P' with PREFIX_PROJECTION on T5's decoder (6 heads over the model axis of 2, d_model 512 !=
    heads x d_kv 384): the three programs compile, decoding included, and train the embedding and the MLP."""
    from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, planning

    run = planning.Run("train", ModelSpec("google/t5-small-lm-adapt", dtype="bfloat16", dropout_rate=0.0),
                       PromptSpec(method="prefix:16", prefix_projection=64),
                       DataSpec(None, {"inputs": 64, "targets": 4}, batch_size=8))
    spec = topologies.accelerator("v5litepod-4")
    plan = planning.compile_run(run, topologies.target_devices(spec), spec.hbm_bytes, (2, 2))
    assert plan.fits and list(plan.programs) == ["train_step", "eval_step", "decode"]
    width = 8 * 2 * 6 * 64  # L x 2 x N x D
    assert plan.programs["eval_step"].trainable == 4 * (16 * 384 + 384 * 64 + 64 + 64 * width + width)


@pytest.mark.parametrize("vocab, batch, says, advice", [
    # 4.5B float32 parameters: 17.5 GiB of weights on a 16 GiB v5e chip; refused before compiling
    (1_100_000, 4, "the frozen weights alone take 17.5 GiB (so it was not compiled) but a chip has 16.0 GiB",
     ("MESH_SHAPE=(-1, 2)", "bfloat16", "parameter_partitioning_2d.gin")),
    # 15.6 GiB of weights fit, but the step's temporaries for 64 rows a chip do not: XLA:TPU's own refusal, its
    # figure parsed
    (970_000, 256, "(weights 15.6, trainable 0.00, batch 0.00, temporaries {}) but a chip has 16.0 GiB",
     ("MESH_SHAPE=(-1, 2)", "ACCUM_STEPS", "bfloat16", "parameter_partitioning_2d.gin"))])
def test_a_run_that_cannot_fit_fails_with_one_error_line(tmp_path, capsys, vocab, batch, says, advice):
    """Exit 2, one error line naming the program, the GiB against the HBM and what to change; the JSON says no."""
    folder = tmp_path / "huge"
    folder.mkdir()
    config = ptj.GPT2Config(vocab_size=vocab, n_embd=4096, n_layer=1, n_head=32, n_positions=64)
    (folder / "config.json").write_text(json.dumps(config.to_hf()))
    out = tmp_path / "plan.json"
    code = compile_main("--accelerator=v5litepod-4", f"--json={out}", "--gin_file=models/gpt2.gin",
                        "--gin_file=prompts/random.gin", "--gin_file=runs/prompt_finetune.gin",
                        f"--gin.INITIAL_CHECKPOINT_PATH='{folder}'", "--gin.MODEL_DIR='unused'",
                        "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'", "--gin.PROMPT_LENGTH=4",
                        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 2}", f"--gin.BATCH_SIZE={batch}",
                        "--gin.COMPUTE_DTYPE='float32'", "--gin.MESH_SHAPE=(-1, 1)")
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    line = errors[0]
    assert line.startswith("error: train_step needs ") and "GiB per chip on MESH_SHAPE (4, 1)" in line
    parsed = "{}" in says  # XLA:TPU's figure, parsed from its refusal: over what the weights leave
    if parsed:
        temporaries = re.search(r"temporaries ([\d.]+)\)", line)
        assert temporaries and float(temporaries.group(1)) > 16.0 - 15.6
        says = says.format(temporaries.group(1))
    assert says in line
    for tip in advice:
        assert tip in line
    assert ("ACCUM_STEPS" in line) == ("ACCUM_STEPS" in advice)  # no batch advice when weights alone are too big
    plan = json.loads(out.read_text())
    assert not plan["fits"] and not plan["programs"]["train_step"]["fits"]
    if parsed:  # the JSON holds the same figure, in bytes
        temporary = plan["programs"]["train_step"]["bytes_per_chip"]["temporary"]
        assert f"{temporary / 2**30:.1f}" == temporaries.group(1)
