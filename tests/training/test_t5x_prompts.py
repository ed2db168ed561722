"""Prompts in T5X checkpoints (the original library's runs): a prompt-tuned checkpoint written here in T5X's
layout is read by extract_variable, PROMPT_FILE, CHECKPOINT_PATH and as INITIAL_CHECKPOINT_PATH (the model
plus its prompt); EMBEDDING_FILE reads a T5X embedding table; the tokenizer a T5X checkpoint lacks is found."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.data import get_task
from prompt_tuning_jax.experiments import ModelSpec, PromptSpec
from prompt_tuning_jax.experiments.loading import load_prompted
from prompt_tuning_jax.models import hf, preset, t5x
from tests.helpers import REPO, cli_env, shared_path

TINY = dict(d_model=8, d_ff=16, d_kv=4, num_heads=2, num_layers=2, num_decoder_layers=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(base, tuned, prompt): a random T5 1.1 (T5's 32,128-row vocabulary) saved by T5X at step 1,100,000, and
    the same weights plus a trained [4, 8] prompt at target/encoder/prompt/prompt/prompt, step 1,100,300."""
    root = tmp_path_factory.mktemp("t5x_prompts")
    config = dataclasses.replace(preset("google/t5-base-lm-adapt"), **TINY)
    variables = t5x.variables_from_model(ptj.init_random(config, seed=3))
    base, tuned = root / "base" / "checkpoint_1100000", root / "tuned" / "checkpoint_1100300"
    prompt = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    t5x.write_checkpoint(base, variables, step=1_100_000)
    t5x.write_checkpoint(tuned, {**variables, t5x.PROMPT_VARIABLE: prompt}, step=1_100_300)
    return base, tuned, prompt


def spec(path, **kw):
    return ModelSpec(str(path), tokenizer=str(shared_path("t5_tokenizer")), **kw)


def test_extract_variable_reads_the_prompt_of_a_prompt_tuned_checkpoint(checkpoints, tmp_path):
    _, tuned, prompt = checkpoints
    out = tmp_path / "prompt.npy"
    proc = subprocess.run([sys.executable, "-m", "prompt_tuning_jax.extract_variable", str(tuned),
                           "target/encoder/prompt/prompt/prompt", str(out)], capture_output=True, text=True,
                          env=cli_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(out), prompt)


def test_prompt_file_takes_a_t5x_checkpoint_and_a_variable(checkpoints):
    base, tuned, prompt = checkpoints
    model = hf.from_pretrained(str(base))
    init = PromptSpec(length=4, init="file", file=str(tuned)).initializer(model, None)
    np.testing.assert_array_equal(np.asarray(init(None, (4, 8))), prompt)
    # any variable by the original's path (target/ optional), as t5x_load read it; it must be [P, H]
    with pytest.raises(ValueError, match=r"checkpoint_1100300 target/encoder/encoder_norm/scale holds an array of "
                                         r"shape \(8,\); expected a \[P, H\] \(or \[L, P, H\] layer prompts\) prompt"):
        PromptSpec(length=2, init="file", file=str(tuned), file_variable="encoder/encoder_norm/scale").initializer(
            model, None)
    with pytest.raises(ValueError, match=r"no variable 'target/encoder/prompt/prompt/prompt'"):
        PromptSpec(length=4, init="file", file=str(base)).initializer(model, None)


def test_embedding_file_takes_a_t5x_checkpoint(checkpoints):
    base, _, _ = checkpoints
    model = hf.from_pretrained(str(base))
    table = t5x.read_variable(base, "token_embedder/embedding")
    prompt = PromptSpec(length=6, init="sampled_vocab_numpy", embedding_file=str(base), population_size=50)
    rows = np.asarray(prompt.initializer(model, None)(ptj_key(), (6, 8)))
    assert all(any(np.array_equal(row, t) for t in table[:50]) for row in rows)


def ptj_key():
    import jax

    return jax.random.key(0)


def test_a_prompt_tuned_checkpoint_as_initial_checkpoint_path_brings_its_prompt(checkpoints, capsys):
    _, tuned, prompt = checkpoints
    tasks = [get_task("demo_sentiment")]
    loaded = load_prompted(spec(tuned), PromptSpec(length=4, init="class_labels"), tasks, partitioning.make_mesh())
    np.testing.assert_array_equal(np.asarray(loaded.state.trainable["soft_prompt"]), prompt)
    assert f"prompt: from {tuned} target/encoder/prompt/prompt/prompt" in capsys.readouterr().err


def test_a_base_model_checkpoint_keeps_the_initializer(checkpoints):
    base, _, prompt = checkpoints
    loaded = load_prompted(spec(base), PromptSpec(length=4, init="random_uniform"), [get_task("demo_sentiment")],
                           partitioning.make_mesh())
    values = np.asarray(loaded.state.trainable["soft_prompt"])
    assert values.min() >= 0 and values.max() < 0.5 and not np.array_equal(values, prompt)


def eval_cmd(*flags):
    return [sys.executable, "-m", "prompt_tuning_jax.eval", *flags, "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'",
            "--gin.PROMPT_LENGTH=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
            f"--gin.ptj.ModelSpec.tokenizer='{shared_path('t5_tokenizer')}'", "--gin.ptj.DataSpec.eval_limit=16"]


@pytest.mark.slow
def test_a_prompt_tuned_checkpoint_evaluates_with_its_base_model(checkpoints, tmp_path):
    base, tuned, _ = checkpoints
    ours = eval_cmd("--gin_file=models/t5_1_1_lm100k_base.gin", "--gin_file=prompts/random.gin",
                    "--gin_file=runs/prompt_eval.gin",
                    f"--gin.INITIAL_CHECKPOINT_PATH='{base}'", f"--gin.CHECKPOINT_PATH='{tuned}'",
                    f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'ours'}'")
    # the original's way: CHECKPOINT_PATH is the model, PROMPT_FILE the prompt
    original = eval_cmd("--gin_file=prompt_tuning/configs/models/t5_1_1_base_prompt.gin",
                        "--gin_file=prompt_tuning/configs/runs/prompt_eval.gin",
                        f"--gin.CHECKPOINT_PATH='{base}'", f"--gin.PROMPT_FILE='{tuned}'",
                        f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'original'}'", "--gin.utils.DatasetConfig.split='validation'")
    outputs = []
    for cmd in (ours, original):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        print(" ".join(cmd[1:]), proc.stdout, sep="\n")
        assert proc.stdout.startswith("accuracy ")
        outputs.append((tmp_path / ("ours" if cmd is ours else "original") / "predictions.jsonl").read_text())
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 16  # the same prompt, the same answers


def test_the_tokenizer_of_a_t5x_checkpoint(checkpoints, tmp_path):
    base, _, _ = checkpoints
    assert t5x.default_tokenizer(base, 32128) == ("google/t5-v1_1-base",
                                                  "the vocabulary its 32128-row embedding implies")
    assert t5x.default_tokenizer(base, 250112)[0] == "google/mt5-base"
    assert t5x.default_tokenizer(base, 64)[0] is None
    beside = tmp_path / "run"
    (beside / "checkpoint_5").mkdir(parents=True)
    (beside / "spiece.model").write_bytes(b"")
    assert t5x.default_tokenizer(beside / "checkpoint_5", 64)[0] == str(beside)


def test_a_t5x_checkpoint_of_an_unknown_vocabulary_asks_for_a_tokenizer(tmp_path):
    config = dataclasses.replace(preset("google/t5-base-lm-adapt"), vocab_size=64, **TINY)
    t5x.write_checkpoint(tmp_path / "checkpoint_1", t5x.variables_from_model(ptj.init_random(config)), step=1)
    with pytest.raises(ValueError, match=r"holds no tokenizer, and its 64-row embedding matches no T5 vocabulary: "
                                         r"set ptj.ModelSpec.tokenizer"):
        ModelSpec(str(tmp_path / "checkpoint_1")).load_tokenizer()


def test_the_released_t5x_names_have_their_known_config():
    for size in ("small", "base", "xxl"):
        path = f"gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_{size}/checkpoint_1100000"
        assert t5x.released_hub_id(path) == f"google/t5-{size}-lm-adapt"
        assert hf.pretrained_config(path) == preset(f"google/t5-{size}-lm-adapt")  # no read: there is no network
    assert hf.pretrained_config("gs://t5-data/pretrained_models/t5x/mt5_base/checkpoint_1000000").vocab_size == 250112
    assert t5x.released_hub_id("gs://my-bucket/t5_1_1_lm100k_base/checkpoint_1100000") is None
