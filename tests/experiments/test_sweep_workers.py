"""Several sweep workers on one SWEEP_DIR: every cell runs once, a killed worker's cell is taken over, one table.

The workers are real `python -m prompt_tuning_jax.sweep` processes on a 4-cell cut of sweeps/demo.gin
(4 methods, prompt length 4, seed 0, 4 steps), compared with one worker alone on the same grid. The killed
worker runs as another host where this one allows it (a UTS namespace, `unshare -u`), so its claim is taken
over when its lease expires, as a dead machine's is; elsewhere its dead process is seen at once.
`-s` prints the cells each worker ran.
"""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, cli_env, emulator_env

from prompt_tuning_jax import files
from prompt_tuning_jax.experiments import sweeps

pytestmark = pytest.mark.slow

LEASE_S = 4
GRID = ["--gin_file=sweeps/demo.gin", "--gin.ptj.Sweep.prompt_lengths=[4]", "--gin.ptj.Sweep.seeds=[0]",
        "--gin.ptj.Sweep.bindings={'TRAIN_STEPS': '4', 'EVAL_PERIOD': '2', 'CHECKPOINT_PERIOD': '4'}",
        f"--gin.SWEEP_LEASE_S={LEASE_S}"]
CELLS = 4
LINE = re.compile(r"^  (\S+): (running|done|failed.*) \(worker (\S+)\)$")
COMPARED = ("method", "model", "task", "placement", "prompt_length", "seed", "metric", "value", "best_step",
            "trainable_params", "degenerate", "status")
OTHER_HOST = "sweep-vm-0"


def sweep_cmd(sweep_dir: str) -> list[str]:
    return [sys.executable, "-m", "prompt_tuning_jax.sweep", *GRID, f"--gin.SWEEP_DIR='{sweep_dir}'"]


STARTED = []  # the worker processes of the running test, killed at its end if still running


@pytest.fixture(autouse=True)
def no_worker_left():
    yield
    while STARTED:
        worker = STARTED.pop()
        if worker.proc.poll() is None:
            worker.kill()


class Worker:
    """One sweep worker process (its own process group, as on its own machine), its output in files."""

    def __init__(self, name: str, sweep_dir: str, env: dict, folder, prefix: tuple = ()):
        self.name, self.out, self.err = name, folder / f"{name}.out", folder / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([*prefix, *sweep_cmd(sweep_dir)], cwd=REPO, env=env, stdout=out,
                                         stderr=err, start_new_session=True)
        STARTED.append(self)

    def events(self) -> list[tuple[str, str]]:
        """(cell, 'running' | 'done' | 'failed ...') from the worker's log lines, in order."""
        return [m.group(1, 2) for m in map(LINE.match, self.out.read_text().splitlines()) if m]

    def ran(self, status: str = "done") -> list[str]:
        return [cell for cell, what in self.events() if what == status]

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9 of the worker and its cell's train process (what losing the machine does)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def other_host_prefix() -> tuple:
    """A command prefix giving the process another host name (a UTS namespace, when this host allows one),
    so that its claims expire by their lease as a dead machine's do; () where it does not."""
    if not shutil.which("unshare"):
        return ()
    probe = subprocess.run(["unshare", "-u", "sh", "-c", f"hostname {OTHER_HOST}"], capture_output=True, check=False)
    if probe.returncode != 0:
        return ()
    return ("unshare", "-u", "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh")


def wait_for(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def results(sweep_dir: str) -> list[dict]:
    rows = list(csv.DictReader(files.read_text(os.path.join(sweep_dir, "results.csv")).splitlines()))
    return [{k: row[k] for k in COMPARED} for row in rows]


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """The grid run by a single worker on a local SWEEP_DIR: (results, table.md, wall seconds)."""
    sweep_dir = tmp_path_factory.mktemp("one_worker") / "sweep"
    start = time.time()
    out = subprocess.run(sweep_cmd(str(sweep_dir)), cwd=REPO, env=cli_env(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return results(str(sweep_dir)), (sweep_dir / "table.md").read_text(), time.time() - start


def failed_logs(sweep_dir: str) -> str:
    """The end of the sweep.log of every cell that failed (for an assertion's message)."""
    runs = os.path.join(sweep_dir, "runs")
    return "\n".join(f"== {cell}\n" + files.read_text(os.path.join(runs, cell, "sweep.log"))[-2000:]
                     for cell in files.listdir(runs) if files.exists(os.path.join(runs, cell, sweeps.FAILED)))


def report(title: str, workers: list[Worker]) -> None:
    print(f"\n{title}")
    for w in workers:
        print(f"  {w.name}: started {w.ran('running')}, finished {w.ran('done')}")


def test_three_workers_in_a_bucket_share_the_grid_and_take_over_a_killed_workers_cell(gcs, tmp_path, one_worker):
    sweep_dir = "gs://bucket/three_workers"
    env = emulator_env(gcs)
    prefix = other_host_prefix()
    killed = Worker("worker0", sweep_dir, env, tmp_path, prefix)
    wait_for(lambda: killed.ran("running"), "worker0's first cell")
    workers = [Worker(f"worker{i}", sweep_dir, env, tmp_path) for i in (1, 2)]
    killed.kill()  # mid-cell: its train process has been started
    lost = killed.ran("running")[0]
    start = time.time()
    codes = [w.wait() for w in workers]
    report(f"3 workers, gs:// SWEEP_DIR, lease {LEASE_S} s; worker0 killed in {lost} "
           f"({'as host ' + OTHER_HOST if prefix else 'on this host'}); survivors ended {time.time() - start:.0f} s "
           "after the kill", [killed, *workers])
    for w, code in zip(workers, codes):
        assert code == 0, w.err.read_text()[-3000:] + failed_logs(sweep_dir)

    assert killed.ran("running") == [lost] and killed.ran("done") == []
    done = [cell for w in workers for cell in w.ran("done")]
    started = [cell for w in [killed, *workers] for cell in w.ran("running")]
    assert sorted(done) == sorted(set(done)) and len(done) == CELLS  # every cell finished once, by a survivor
    assert sorted(started) == sorted(done + [lost])                  # and started once, the lost cell twice
    takeover = "".join(w.err.read_text() for w in workers)
    reason = f"the lease of process {killed.proc.pid} on {OTHER_HOST}" if prefix else \
        f"its process {killed.proc.pid} (started"
    assert f"taking over {sweep_dir}/runs/{lost}/{sweeps.CELL_LOCK}: {reason}" in takeover, takeover
    print("  " + next(line for line in takeover.splitlines() if "taking over" in line))
    survivors = {str(w.proc.pid) for w in workers}
    for cell in done:  # each cell's own record names the survivor that ran it
        record = json.loads(files.read_text(f"{sweep_dir}/runs/{cell}/{sweeps.DONE}"))
        assert record["worker"].rpartition(":")[2] in survivors, record
    assert files.exists(f"{sweep_dir}/{sweeps.GRID}")

    rows, table, _ = one_worker
    assert results(sweep_dir) == rows
    assert files.read_text(f"{sweep_dir}/table.md") == table


def test_two_workers_racing_on_a_local_sweep_dir_run_each_cell_once(tmp_path, one_worker):
    sweep_dir = tmp_path / "sweep"
    start = time.time()
    workers = [Worker(f"worker{i}", str(sweep_dir), cli_env(), tmp_path) for i in range(2)]
    codes = [w.wait() for w in workers]
    wall = time.time() - start
    report(f"2 workers started together, local SWEEP_DIR: {wall:.0f} s (1 worker alone: {one_worker[2]:.0f} s)",
           workers)
    for w, code in zip(workers, codes):
        assert code == 0, w.err.read_text()[-3000:] + failed_logs(str(sweep_dir))
    done = [cell for w in workers for cell in w.ran("done")]
    assert sorted(done) == sorted(set(done)) and len(done) == CELLS
    assert sorted(cell for w in workers for cell in w.ran("running")) == sorted(done)
    rows, table, _ = one_worker
    assert results(str(sweep_dir)) == rows and (sweep_dir / "table.md").read_text() == table
