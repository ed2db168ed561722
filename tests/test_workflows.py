"""Real tokenizers and real data from ../shared/data, driven only by gin bindings (skipped without it)."""
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, cli_env, shared_path

pytestmark = pytest.mark.slow  # real tokenizers and data, minutes of CPU


def cli(module, *args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", f"prompt_tuning_jax.{module}", *args], capture_output=True,
                          text=True, cwd=REPO, env=cli_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def random_checkpoint(folder, model, tokenizer, *overrides):
    cmd = [sys.executable, "scripts/make_random_checkpoint.py", model, str(folder), "--tokenizer", str(tokenizer)]
    for o in overrides:
        cmd += ["--override", o]
    subprocess.run(cmd, check=True, cwd=REPO, env=cli_env(), capture_output=True)
    return folder


def test_gpt2_suffix_prompt_and_linear_head_on_sst2(tmp_path):
    """The real GPT-2 tokenizer and SST-2; evaluation on all 872 validation sentences; CSV and plots."""
    tok = shared_path("gpt2_tokenizer")
    shared_path("sst2", "test.tsv")
    ckpt = random_checkpoint(tmp_path / "gpt2", "gpt2", tok, "n_layer=2", "n_embd=64", "n_head=4")
    out = tmp_path / "run"
    cli("train", "--gin_file=models/gpt2.gin", "--gin_file=prompts/from_class_labels.gin",
        "--gin_file=prompts/linear_head.gin", "--gin_file=runs/prompt_finetune.gin",
        f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'", f"--gin.MODEL_DIR='{out}'",
        "--gin.MIXTURE_OR_TASK_NAME='sst2'", "--gin.TRAIN_STEPS=20", "--gin.EVAL_PERIOD=20",
        "--gin.BATCH_SIZE=16", "--gin.ptj.DataSpec.eval_batch_size=64", "--gin.ptj.TrainSpec.progress=False")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 20] and 0 <= evals[-1]["accuracy"] <= 100
    assert (out / "metrics.csv").read_text().startswith("step,split")
    assert (out / "plots" / "train_loss.png").stat().st_size > 1000
    assert (out / "plots" / "eval_metrics.png").stat().st_size > 1000
    # The metric really is over the 872 validation sentences: eval the run again, same number.
    cli("eval", "--gin_file=models/gpt2.gin", "--gin_file=prompts/from_class_labels.gin",
             "--gin_file=prompts/linear_head.gin", "--gin_file=runs/prompt_eval.gin",
             f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'", f"--gin.CHECKPOINT_PATH='{out}'",
             f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'", "--gin.MIXTURE_OR_TASK_NAME='sst2'",
             "--gin.BATCH_SIZE=64")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 872 and metrics["accuracy"] == evals[-1]["accuracy"]


def test_released_sst2_prompt_with_rank_classification_on_t5(tmp_path):
    """Lester's released SST-2 prompt on a random T5 1.1 (d_model 768) with the real T5 tokenizer."""
    tok = shared_path("t5_tokenizer")
    prompt = shared_path("released_prompts", "t5_1_1_lm100k_base", "sst2.npy")
    shared_path("sst2", "test.tsv")
    ckpt = random_checkpoint(tmp_path / "t5", "google/t5-base-lm-adapt", tok, "num_layers=1",
                             "num_decoder_layers=1", "d_ff=128")
    out = tmp_path / "eval"
    proc = cli("eval", "--gin_file=models/t5_1_1_lm100k_base.gin", "--gin_file=prompts/from_class_labels.gin",
               "--gin_file=runs/prompt_eval.gin", f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'",
               f"--gin.CHECKPOINT_PATH='{prompt}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
               "--gin.MIXTURE_OR_TASK_NAME='sst2'", "--gin.BATCH_SIZE=64", "--gin.EVAL_SCORING='rank'")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 872 and 0 <= metrics["rank_accuracy"] <= 100
    assert metrics["scoring"] == "rank" and metrics["invalid"] == 0
    assert "rank_accuracy" in proc.stdout


@pytest.mark.parametrize("task,extra", [
    ("rte", []),
    ("ag_news", ["--gin.ptj.DataSpec.train_split='dev'", "--gin.EVAL_SPLIT='test'",
                 "--gin.ptj.DataSpec.eval_limit=64"]),
])
def test_sentence_pairs_and_four_classes_from_shared_files(tmp_path, task, extra):
    tok = shared_path("gpt2_tokenizer")
    shared_path(task)
    ckpt = random_checkpoint(tmp_path / "gpt2", "gpt2", tok, "n_layer=1", "n_embd=32", "n_head=2")
    out = tmp_path / "run"
    cli("train", "--gin_file=models/gpt2.gin", "--gin_file=prompts/from_class_labels.gin",
        "--gin_file=prompts/linear_head.gin", "--gin_file=runs/prompt_finetune.gin",
        f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'", f"--gin.MODEL_DIR='{out}'",
        f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=4",
        "--gin.BATCH_SIZE=8", "--gin.ptj.TrainSpec.progress=False", *extra)
    best = json.loads((out / "best.json").read_text())
    assert "accuracy" in best["metrics"]
    head = np.load(out / "prompts" / "prompt_latest.npy")
    assert head.shape == (20, 32)
