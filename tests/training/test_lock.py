"""One run per MODEL_DIR: run.lock refuses a second run, and a dead process's lock is taken over."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from prompt_tuning_jax.training.lock import LOCK_NAME, RunLock
from tests.helpers import REPO


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_lock_on_the_folder_is_refused_and_release_frees_it(tmp_path):
    with RunLock(str(tmp_path)):
        held = json.loads((tmp_path / LOCK_NAME).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(RuntimeError, match=rf"in use by process {os.getpid()} on {socket.gethostname()}"):
            RunLock(str(tmp_path)).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(str(tmp_path)):  # free again
        pass


def test_a_dead_process_lock_is_taken_over_and_said(tmp_path, caplog):
    pid = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": "x"}))
    with caplog.at_level(logging.WARNING), RunLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"its process {pid}" in caplog.text and "no longer running" in caplog.text


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "tpu-worker-3", "pid": 1, "started": "x"}))
    with pytest.raises(RuntimeError, match=r"on tpu-worker-3 .*delete .*run.lock"):
        RunLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "tpu-worker-3"  # left alone


@pytest.mark.slow
def test_two_cli_runs_on_one_model_dir(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "prompt_tuning_jax.train", "--gin_file=runs/demo.gin", f"--gin.MODEL_DIR='{run}'"]
    first = subprocess.Popen(cmd + ["--gin.TRAIN_STEPS=100000", "--gin.EVAL_PERIOD=0"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (run / LOCK_NAME).exists() and time.time() < deadline:
            time.sleep(0.5)
        second = subprocess.run(cmd + ["--gin.TRAIN_STEPS=5"], cwd=REPO, capture_output=True, text=True)
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert lines[0].startswith(f"error: MODEL_DIR {run} is in use by process {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock
        first.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == first.pid
    third = subprocess.run(cmd + ["--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=0"], cwd=REPO, capture_output=True,
                           text=True)
    assert third.returncode == 0, third.stderr
    assert f"taking over {run / LOCK_NAME}: its process {first.pid}" in third.stderr
    assert not (run / LOCK_NAME).exists()
