"""Runs that live in a bucket: train, resume after SIGKILL, two processes and eval, against a real GCS emulator.

The subprocesses get STORAGE_EMULATOR_HOST and nothing else about storage (no credentials, no
tensorstore or gcsfs settings): the package derives the rest. The test process reads the bucket back
through the same path layer.
"""
import io
import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, cli_env, emulator_env, train_cmd

from prompt_tuning_jax import files

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "prompt_tuning_jax.train", "--gin_file=runs/demo.gin", "--gin.TRAIN_STEPS=60",
        "--gin.CHECKPOINT_PERIOD=20", "--gin.EVAL_PERIOD=30", "--gin.ptj.TrainSpec.progress=False",
        "--gin.ptj.DataSpec.prefetch=0"]


def load_npy(path):
    return np.load(io.BytesIO(files.read_bytes(path)), allow_pickle=False)


def run(cmd, env, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def test_demo_in_a_bucket_resumes_after_sigkill_like_a_local_run(gcs, tmp_path):
    local = tmp_path / "local"
    straight = run([*DEMO, f"--gin.MODEL_DIR='{local}'"], cli_env())
    assert straight.returncode == 0, straight.stderr[-3000:]

    bucket_run = "gs://bucket/demo"
    cmd = [*DEMO, f"--gin.MODEL_DIR='{bucket_run}'"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=emulator_env(gcs), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not files.exists(f"{bucket_run}/prompts/prompt_20.npy") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(s) for s in files.listdir(f"{bucket_run}/checkpoints") if s.isdigit())
    assert done and done[-1] < 60, f"the run was not interrupted (checkpoints {done})"

    resumed = run(cmd, emulator_env(gcs))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"prompt: {bucket_run}/prompts/prompt_latest.npy" in resumed.stdout
    np.testing.assert_array_equal(load_npy(f"{bucket_run}/prompts/prompt_latest.npy"),
                                  np.load(local / "prompts" / "prompt_latest.npy"))
    rows = [json.loads(line) for line in files.read_text(f"{bucket_run}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [0, 30, 60]
    for name in ("metrics.csv", "best.json", "plots/train_loss.png", "plots/eval_metrics.png"):
        assert files.exists(f"{bucket_run}/{name}"), name
    assert files.listdir(f"{bucket_run}/tensorboard")

    # Evaluation reads the run (prompt and head) from the bucket and writes its results there.
    evaluated = run([sys.executable, "-m", "prompt_tuning_jax.eval", "--gin_file=models/demo_gpt2_tiny.gin",
                     "--gin_file=prompts/from_sampled_vocab.gin", "--gin_file=prompts/linear_head.gin",
                     "--gin_file=runs/prompt_eval.gin", "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'",
                     "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
                     f"--gin.CHECKPOINT_PATH='{bucket_run}'", "--gin.EVAL_OUTPUT_DIR='gs://bucket/eval'"],
                    emulator_env(gcs))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads(files.read_text("gs://bucket/eval/metrics.json"))
    assert metrics["accuracy"] == rows[-1]["accuracy"]
    predictions = files.read_text("gs://bucket/eval/predictions.jsonl").splitlines()
    assert len(predictions) == metrics["examples"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_one_run_to_a_bucket(gcs, tmp_path, tiny_gpt2_dir):
    """Two hosts (CPU, gloo) write one run: orbax checkpoints from both, everything else from process 0."""
    steps = ["--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_PERIOD=4", "--gin.EVAL_PERIOD=4",
             "--gin.ptj.DataSpec.eval_limit=16"]
    single = tmp_path / "single"
    one = run(train_cmd(single, tiny_gpt2_dir, *steps), cli_env())
    assert one.returncode == 0, one.stderr[-3000:]
    bucket_run = "gs://bucket/two_hosts"
    port = _free_port()
    procs = [subprocess.Popen(train_cmd(bucket_run, tiny_gpt2_dir, *steps, f"--coordinator_address=127.0.0.1:{port}",
                                        "--num_processes=2", f"--process_id={i}"),
                              cwd=REPO, env=emulator_env(gcs), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    np.testing.assert_allclose(load_npy(f"{bucket_run}/prompts/prompt_latest.npy"),
                               np.load(single / "prompts" / "prompt_latest.npy"), rtol=1e-5, atol=1e-5)
    assert files.listdir(f"{bucket_run}/prompts") == ["prompt_4.npy", "prompt_8.npy", "prompt_latest.npy"]
    assert [s for s in files.listdir(f"{bucket_run}/checkpoints") if s.isdigit()] == ["4", "8"]
    rows = [json.loads(line) for line in files.read_text(f"{bucket_run}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [0, 4, 8]  # one writer: no duplicated rows


def test_model_prompt_and_outputs_all_in_a_bucket(gcs, tmp_path, tiny_gpt2_dir):
    """INITIAL_CHECKPOINT_PATH (a Hugging Face folder), PROMPT_FILE and EVAL_OUTPUT_DIR are all gs:// paths."""
    import os

    for name in os.listdir(tiny_gpt2_dir):
        with open(os.path.join(tiny_gpt2_dir, name), "rb") as f:
            files.atomic_write(f"gs://bucket/models/tiny/{name}", f.read())
    prompt = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    files.atomic_write("gs://bucket/prompts/p.npy", lambda f: np.save(f, prompt))
    common = ["--gin_file=models/gpt2.gin", "--gin_file=prompts/from_file.gin", "--gin_file=runs/prompt_eval.gin",
              "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
              "--gin.PROMPT_LENGTH=4", "--gin.EVAL_SCORING='rank'", "--gin.ptj.DataSpec.eval_limit=16"]
    in_bucket = run([sys.executable, "-m", "prompt_tuning_jax.eval", *common,
                     "--gin.INITIAL_CHECKPOINT_PATH='gs://bucket/models/tiny'",
                     "--gin.PROMPT_FILE='gs://bucket/prompts/p.npy'", "--gin.CHECKPOINT_PATH=None",
                     "--gin.EVAL_OUTPUT_DIR='gs://bucket/eval_from_bucket'"],
                    dict(emulator_env(gcs), PTJ_CACHE=str(tmp_path / "cache")))
    assert in_bucket.returncode == 0, in_bucket.stderr[-3000:]
    np.save(tmp_path / "p.npy", prompt)
    on_disk = run([sys.executable, "-m", "prompt_tuning_jax.eval", *common,
                   f"--gin.INITIAL_CHECKPOINT_PATH='{tiny_gpt2_dir}'", f"--gin.PROMPT_FILE='{tmp_path / 'p.npy'}'",
                   "--gin.CHECKPOINT_PATH=None", f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'"], cli_env())
    assert on_disk.returncode == 0, on_disk.stderr[-3000:]
    assert json.loads(files.read_text("gs://bucket/eval_from_bucket/metrics.json")) == \
        json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_a_damaged_checkpoint_in_a_bucket_is_set_aside_and_the_run_resumes_from_an_older_one(gcs):
    """As on disk: the newest intact step is restored, and the damaged one is copied to checkpoints_damaged/
    (every file, byte for byte) before it leaves checkpoints/, so that step can be saved again."""
    bucket_run = "gs://bucket/damaged"
    cmd = [*DEMO, f"--gin.MODEL_DIR='{bucket_run}'", "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=0"]
    first = run([*cmd, "--gin.TRAIN_STEPS=4"], emulator_env(gcs))
    assert first.returncode == 0, first.stderr[-3000:]
    fs = files._gcs()
    fs.invalidate_cache()
    step_4 = [p for p in fs.find(f"{bucket_run}/checkpoints/4")]
    damaged = {p.split("/checkpoints/4/", 1)[1]: b"garbage" for p in step_4}
    for name, content in damaged.items():
        files.atomic_write(f"{bucket_run}/checkpoints/4/{name}", content)

    resumed = run([*cmd, "--gin.TRAIN_STEPS=6"], emulator_env(gcs))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trained 6 steps" in resumed.stdout
    assert "checkpoint step 4 in gs://bucket/damaged/checkpoints cannot be read" in resumed.stderr
    assert "resuming from step 2" in resumed.stderr
    assert not [line for line in resumed.stderr.splitlines() if line.startswith(("ERROR", "Traceback"))], \
        resumed.stderr  # the libraries' own read errors are not shown: the warning says it
    fs.invalidate_cache()
    aside = files.listdir(f"{bucket_run}/checkpoints_damaged")
    assert len(aside) == 1 and aside[0].startswith("4-"), aside
    for name, content in damaged.items():  # copied whole, never deleted
        assert files.read_bytes(f"{bucket_run}/checkpoints_damaged/{aside[0]}/{name}") == content
    assert sorted(int(s) for s in files.listdir(f"{bucket_run}/checkpoints") if s.isdigit()) == [2, 4, 6]
