"""The preemption drill: kill -9 at 10 random points of a run, resume after each, and the final prompt is
bit-identical to an uninterrupted run's (10 of 10 resumes). Then the same in a bucket (fake-gcs-server):
kill -9 at 5 random points and one SIGTERM."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from prompt_tuning_jax import files
from tests.helpers import REPO, cli_env, emulator_env

STEPS = 60


def _command(model_dir):
    return [sys.executable, "-m", "prompt_tuning_jax.train", "--gin_file=runs/demo.gin",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={STEPS}", "--gin.CHECKPOINT_PERIOD=2",
            "--gin.EVAL_PERIOD=0", "--gin.KEEP_CHECKPOINTS=2"]


def _saved_steps(model_dir) -> list[int]:
    folder = os.path.join(model_dir, "prompts")
    if files.is_local(folder):
        names = os.listdir(folder) if os.path.isdir(folder) else []
    else:
        files._gcs().invalidate_cache(folder)
        names = files.listdir(folder) if files.exists(folder) else []
    return [int(n[len("prompt_"):-4]) for n in names if n[len("prompt_"):-4].isdigit()]


def _interrupt_after(model_dir, step: int, delay: float, sig=signal.SIGKILL, env=None) -> int:
    """Starts the run, sends `sig` `delay` s after a checkpoint at or past `step` appears -> the newest saved step."""
    proc = subprocess.Popen(_command(model_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env or cli_env())
    deadline = time.time() + 300
    while max(_saved_steps(model_dir), default=0) < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(delay)  # lands between checkpoints, or inside the next save
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    assert sig == signal.SIGKILL or code == 0, f"exit {code} after {sig.name}"  # SIGTERM: saved, exit 0
    return max(_saved_steps(model_dir), default=0)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The prompt of the run without interruptions."""
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    reference = subprocess.run(_command(folder), cwd=REPO, capture_output=True, text=True, env=cli_env())
    assert reference.returncode == 0, reference.stderr[-2000:]
    return np.load(folder / "prompts" / "prompt_latest.npy")


@pytest.mark.slow
def test_ten_kill_9_and_resume_give_the_uninterrupted_prompt(tmp_path, uninterrupted):
    expected = uninterrupted

    rng = np.random.default_rng(2026)
    run = tmp_path / "drill"
    kills = sorted(rng.choice(np.arange(2, STEPS - 10, 2), size=10, replace=False))
    resumed = []
    for step in kills:  # each kill waits for a checkpoint its own run wrote
        target = min(max(int(step), resumed[-1] + 2 if resumed else 0), STEPS - 2)
        resumed.append(_interrupt_after(run, target, float(rng.uniform(0.0, 0.3))))
    final = subprocess.run(_command(run), cwd=REPO, capture_output=True, text=True, env=cli_env())
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"trained {STEPS} steps" in final.stdout
    print(f"kill -9 after checkpoints {list(map(int, kills))}; newest step on disk at each kill: {resumed}")
    np.testing.assert_array_equal(np.load(run / "prompts" / "prompt_latest.npy"), expected)


@pytest.mark.slow
def test_in_a_bucket_five_kill_9_and_a_sigterm_give_the_uninterrupted_prompt(gcs, uninterrupted):
    run, env = "gs://bucket/drill", emulator_env(gcs)
    rng = np.random.default_rng(7)
    stops = sorted(int(s) for s in rng.choice(np.arange(4, STEPS - 10, 2), size=6, replace=False))
    term = int(rng.integers(len(stops)))  # which of the six is a SIGTERM (a preemption notice)
    resumed = []
    for i, step in enumerate(stops):
        target = min(max(step, resumed[-1] + 2 if resumed else 0), STEPS - 2)
        sig = signal.SIGTERM if i == term else signal.SIGKILL
        resumed.append(_interrupt_after(run, target, float(rng.uniform(0.0, 0.3)), sig, env))
    final = subprocess.run(_command(run), cwd=REPO, capture_output=True, text=True, env=env)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"trained {STEPS} steps" in final.stdout
    print(f"bucket: stopped after checkpoints {stops} (SIGTERM at the {term + 1}th, kill -9 at the others); "
          f"newest step in the bucket at each stop: {resumed}")
    prompt = np.load(io.BytesIO(files.read_bytes(f"{run}/prompts/prompt_latest.npy")), allow_pickle=False)
    np.testing.assert_array_equal(prompt, uninterrupted)
    rows = [json.loads(line) for line in files.read_text(f"{run}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == sorted({r["step"] for r in rows})  # no gap, no repeat
