"""A T5X checkpoint as INITIAL_CHECKPOINT_PATH: config_overrides, an explicit tokenizer, and T5X's step
semantics (TRAIN_STEPS counts from the checkpoint's step), from the training command line end to end.

The checkpoint is tests/models/fixtures/t5x_tiny/checkpoint_3 (the original library's test checkpoint:
T5 1.1, d_model 4, relative attention max distance 8, saved at step 3).
"""
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, cli_env, shared_path

from prompt_tuning_jax.experiments import ModelSpec, TrainSpec
from prompt_tuning_jax.experiments.training import t5x_schedule
from prompt_tuning_jax.models import t5x

CKPT = REPO / "tests" / "models" / "fixtures" / "t5x_tiny" / "checkpoint_3"
OVERRIDES = {"relative_attention_max_distance": 8}


def t5x_train_cmd(model_dir, tokenizer, *extra):
    return [sys.executable, "-m", "prompt_tuning_jax.train",
            "--gin_file=models/t5_1_1_small.gin", "--gin_file=prompts/from_sampled_vocab.gin",
            "--gin_file=runs/prompt_finetune.gin",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{CKPT}'",
            f"--gin.ptj.ModelSpec.config_overrides={OVERRIDES}", f"--gin.ptj.ModelSpec.tokenizer='{tokenizer}'",
            "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'", "--gin.PROMPT_LENGTH=4",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.BATCH_SIZE=4",
            "--gin.EVAL_PERIOD=0", "--gin.EVAL_SPLIT=None", "--gin.CHECKPOINT_PERIOD=0",
            "--gin.ptj.TrainSpec.progress=False", *extra]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=300)


def test_the_checkpoint_step_is_read_from_the_msgpack():
    assert t5x.checkpoint_step(CKPT) == 3


def test_train_steps_count_from_the_t5x_checkpoint_step():
    model = ModelSpec(str(CKPT), config_overrides=OVERRIDES)
    assert t5x_schedule(model, TrainSpec(steps=1_000_003)).steps == 1_000_000
    with pytest.raises(ValueError, match=r"TRAIN_STEPS=3 .* at step 3.*--gin.TRAIN_STEPS=1003"):
        t5x_schedule(model, TrainSpec(steps=3))


def test_config_overrides_reach_the_abstract_build():
    import flax.nnx as nnx

    model = nnx.eval_shape(ModelSpec(str(CKPT), config_overrides=OVERRIDES).build_abstract())
    assert model.config.relative_attention_max_distance == 8 and model.config.d_model == 4


@pytest.mark.slow
def test_prompt_tuning_from_a_t5x_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = run(t5x_train_cmd(out, shared_path("t5_tokenizer"), "--gin.TRAIN_STEPS=5"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("t5x: the checkpoint is at step 3, so TRAIN_STEPS=5 runs 2 steps of prompt tuning (T5X counts "
            "TRAIN_STEPS from the checkpoint's step)") in proc.stderr
    assert proc.stdout.startswith("trained 2 steps;")
    assert sorted(p.name for p in (out / "prompts").iterdir()) == ["prompt_2.npy", "prompt_latest.npy"]
    assert np.load(out / "prompts" / "prompt_latest.npy").shape == (4, 4)


@pytest.mark.slow
def test_train_steps_not_past_the_t5x_checkpoint_step_is_one_clear_error(tmp_path):
    out = tmp_path / "run"
    proc = run(t5x_train_cmd(out, shared_path("t5_tokenizer"), "--gin.TRAIN_STEPS=3"))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TRAIN_STEPS=3" in errors[0] and "at step 3" in errors[0], proc.stderr[-2000:]
    assert not out.exists()
