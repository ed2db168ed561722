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


# --- leases ------------------------------------------------------------------------------------------------

def test_a_renewed_lease_outlives_its_length_and_a_refusal_says_when_it_ends(tmp_path):
    with RunLock(str(tmp_path), lease_s=1.0, renew_s=0.1) as held:
        time.sleep(1.6)  # past the lease: only the renewals keep it
        with pytest.raises(RuntimeError, match=r"its lease was renewed 0 s ago and lasts 1 s.*loses the lock 1 s "
                                               r"from now"):
            RunLock(str(tmp_path)).acquire()
        assert held.held and not held.lost
    assert not (tmp_path / LOCK_NAME).exists()


def test_an_expired_lease_from_another_host_is_taken_over_and_said(tmp_path, caplog):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"host": "tpu-worker-3", "pid": 7, "started": "x", "lease_s": 60}))
    os.utime(lock, (time.time() - 61, time.time() - 61))  # last renewed 61 s ago
    with caplog.at_level(logging.WARNING), RunLock(str(tmp_path)):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert ("the lease of process 7 on tpu-worker-3 (started x) was last renewed 61 s ago, more than its 60 s"
            in caplog.text)


def test_an_unreadable_lock_is_taken_over(tmp_path, caplog):
    (tmp_path / LOCK_NAME).write_text('{"host": "tpu-wor')  # written by a run killed mid-write
    with caplog.at_level(logging.WARNING), RunLock(str(tmp_path)):
        pass
    assert "empty or unreadable" in caplog.text


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_holder_whose_lock_was_taken_over_says_so_and_leaves_it(tmp_path, request, caplog, where):
    """A holder that could not renew for a whole lease finds another run's lock at its next renewal: it logs
    one error naming that run, stops renewing, and its release leaves the other run's lock in place."""
    folder = str(tmp_path) if where == "local" else f"gs://bucket/{request.node.name}"
    if where == "bucket":
        request.getfixturevalue("gcs")
    holder = RunLock(folder, lease_s=60, renew_s=0.2)
    with caplog.at_level(logging.ERROR):
        holder.acquire()
        other = {"host": "tpu-worker-5", "pid": 99, "started": "y", "token": "theirs", "lease_s": 60}
        version = holder.store.read()[1]
        assert holder.store.replace(json.dumps(other), version) is not None  # what a takeover writes
        deadline = time.time() + 10
        while not holder.lost and time.time() < deadline:
            time.sleep(0.05)
        holder.release()
    assert holder.lost
    assert "lost" in caplog.text and "to process 99 on tpu-worker-5" in caplog.text
    assert holder.store.read()[0]["token"] == "theirs"


RACER = r"""
import json, os, sys, time
from prompt_tuning_jax.training.lock import RunLock
folder, rounds, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print("READY", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
start, spacing = json.load(open(go))
held = []
for r in range(rounds):
    time.sleep(max(0.0, start + r * spacing - time.time()))
    if "://" not in folder:
        os.makedirs(f"{folder}/round{r}", exist_ok=True)
    lock = RunLock(f"{folder}/round{r}", lease_s=600)
    try:
        lock.acquire()
        held.append(lock)  # held to the end: a late racer must still lose
        print(f"{r} WON", flush=True)
    except RuntimeError as e:
        assert "is in use by process" in str(e), e
        print(f"{r} LOST", flush=True)
"""  # never released: a racer that finished early must not free a lock that a slower one is about to try


def race(folder: str, tmp_path, processes: int, rounds: int, spacing: float) -> list[int]:
    """`processes` racers try to lock one new MODEL_DIR a round, all at the same instant: winners per round."""
    go = tmp_path / "go.json"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, folder, str(rounds), str(go)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "READY", p.stderr.read()
        go.write_text(json.dumps([time.time() + 0.5, spacing]))
        outs = [p.communicate(timeout=120 + rounds * spacing) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    wins = [0] * rounds
    for out, _ in outs:
        for line in out.splitlines():
            r, result = line.split()
            wins[int(r)] += result == "WON"
    return wins


@pytest.mark.slow
def test_of_8_processes_racing_for_a_bucket_model_dir_exactly_one_wins_every_round(gcs, tmp_path):
    assert race("gs://bucket/race", tmp_path, processes=8, rounds=20, spacing=0.5) == [1] * 20


@pytest.mark.slow
def test_of_8_processes_racing_for_a_local_model_dir_exactly_one_wins_every_round(tmp_path):
    assert race(str(tmp_path / "race"), tmp_path, processes=8, rounds=10, spacing=0.3) == [1] * 10


HOLDER = r"""
import socket, sys, time
socket.gethostname = lambda: "tpu-worker-9"  # as if it ran on another host: no pid check can help
from prompt_tuning_jax.training.lock import RunLock
lock = RunLock(sys.argv[1], lease_s=float(sys.argv[2]), renew_s=0.2)
lock.acquire()
print("HELD", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_killed_holder_on_another_host_is_taken_over_when_its_lease_ends(tmp_path, request, caplog, where):
    """kill -9 of a holder on another host (its lock names one, so no pid check helps): the next run is refused
    while the lease lasts and takes over when it ends (within a renewal of it)."""
    folder = str(tmp_path) if where == "local" else f"gs://bucket/{request.node.name}"
    if where == "bucket":
        request.getfixturevalue("gcs")
    lease = 3.0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, folder, str(lease)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        time.sleep(0.5)  # a few renewals
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    killed = time.time()
    with pytest.raises(RuntimeError, match="in use by process"):
        RunLock(folder).acquire()
    with caplog.at_level(logging.WARNING):
        while True:
            try:
                lock = RunLock(folder)
                lock.acquire()
                break
            except RuntimeError:
                assert time.time() - killed < lease + 5
                time.sleep(0.1)
    took = time.time() - killed
    lock.release()
    assert lease - 1.0 < took < lease + 2.0, took
    assert "the lease of process" in caplog.text and "on tpu-worker-9" in caplog.text
    print(f"{where}: taken over {took:.2f} s after kill -9 (lease {lease:.0f} s)")
