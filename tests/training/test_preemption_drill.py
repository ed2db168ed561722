"""The preemption drill: kill -9 at 10 random points of a run, resume after each, and the final prompt is
bit-identical to an uninterrupted run's (10 of 10 resumes)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO

STEPS = 60


def _command(model_dir):
    return [sys.executable, "-m", "prompt_tuning_jax.train", "--gin_file=runs/demo.gin",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={STEPS}", "--gin.CHECKPOINT_PERIOD=2",
            "--gin.EVAL_PERIOD=0", "--gin.KEEP_CHECKPOINTS=2"]


def _saved_steps(model_dir) -> list[int]:
    folder = os.path.join(model_dir, "prompts")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return [int(n[len("prompt_"):-4]) for n in names if n[len("prompt_"):-4].isdigit()]


def _kill_after(model_dir, step: int, delay: float) -> int:
    """Starts the run, kill -9s it `delay` s after a checkpoint at or past `step` appears -> the newest saved step."""
    proc = subprocess.Popen(_command(model_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while max(_saved_steps(model_dir), default=0) < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(delay)  # lands between checkpoints, or inside the next save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return max(_saved_steps(model_dir), default=0)


@pytest.mark.slow
def test_ten_kill_9_and_resume_give_the_uninterrupted_prompt(tmp_path):
    reference = subprocess.run(_command(tmp_path / "reference"), cwd=REPO, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = np.load(tmp_path / "reference" / "prompts" / "prompt_latest.npy")

    rng = np.random.default_rng(2026)
    run = tmp_path / "drill"
    kills = sorted(rng.choice(np.arange(2, STEPS - 10, 2), size=10, replace=False))
    resumed = []
    for step in kills:  # each kill waits for a checkpoint its own run wrote
        target = min(max(int(step), resumed[-1] + 2 if resumed else 0), STEPS - 2)
        resumed.append(_kill_after(run, target, float(rng.uniform(0.0, 0.3))))
    final = subprocess.run(_command(run), cwd=REPO, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"trained {STEPS} steps" in final.stdout
    print(f"kill -9 after checkpoints {list(map(int, kills))}; newest step on disk at each kill: {resumed}")
    np.testing.assert_array_equal(np.load(run / "prompts" / "prompt_latest.npy"), expected)
