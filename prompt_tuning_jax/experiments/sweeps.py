"""Sweeps: a grid of ordinary training runs, then one results table, one markdown table and plots.

    python -m prompt_tuning_jax.sweep --gin_file=sweeps/demo.gin --gin.SWEEP_DIR="'runs/sweep'"
    run(Sweep("runs/sweep", ["runs/demo.gin"], methods={"prefix": {"PROMPT_PLACEMENT": "'prefix'"}}, seeds=[0, 1]))

A sweep gin file binds `ptj.Sweep`: the gin files every run starts from, and the
axes of the grid. `methods`, `models` and `tasks` map a name to the gin bindings
that select it (`{'prefix': {'PROMPT_PLACEMENT': "'prefix'"}}`); `prompt_lengths`
and `seeds` are lists of values for PROMPT_LENGTH and SEED. Every cell of
method x model x task x prompt length x seed is a normal `python -m
prompt_tuning_jax.train` run in `SWEEP_DIR/runs/<cell>/` (its log in `sweep.log`
there). A cell whose run finished has `sweep_done.json` and is never run again, so a
sweep resumes where it stopped; a failed cell gets `sweep_failed.json`, the others go
on, and the next start of the sweep retries it. `parallel` cells run at once, each a
separate process.

Several workers (the same command, on one machine or many) may share one SWEEP_DIR,
local or gs://. A worker claims a cell before running it: `sweep.lock` in the cell's
folder, a `RunLock` whose lease (`lease_s`, 5 minutes by default) the worker renews
while the cell runs. A worker skips the cells others hold, and after its pass waits
for them, looking every lease_s / 10: a cell whose claim expired (its worker died, or
on this host its process is gone) is taken over and run again, a cell another
worker failed is left failed. So every worker ends when the whole grid has ended.
`SWEEP_DIR/sweep.json` records the grid (`grid`) at the first start; a worker of
another grid is refused with a ValueError.

Outputs, rebuilt from the cells' own files by every worker as it ends (in turn, under
`SWEEP_DIR/sweep_dir.lock`, each file written atomically):
- `SWEEP_DIR/results.csv`: one row per cell (`RESULT_COLUMNS`);
- `SWEEP_DIR/table.md`: mean ± std over seeds (n runs), rows model, columns method;
- `SWEEP_DIR/plots/`: the metric against model and prompt length per method, and
  every cell's eval curve.
A run is `degenerate` when its metric is NaN, its last loss is not finite, or
its best metric is within `DEGENERATE_MARGIN` points of always answering the
eval split's majority class.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

from prompt_tuning_jax import files
from prompt_tuning_jax.training.lock import LEASE_S, RENEW_EVERY, RunLock

RESULT_COLUMNS = ("method", "model", "task", "placement", "prompt_length", "seed", "metric", "value", "best_step",
                  "trainable_params", "examples_per_s", "wall_s", "model_dir", "degenerate", "status")
DEGENERATE_MARGIN = 0.5  # points of the metric (accuracy is in percent)
DONE = "sweep_done.json"  # in a cell's folder: its run finished (never run again)
FAILED = "sweep_failed.json"  # in a cell's folder: its last run failed (the next `run` of the sweep retries it)
CELL_LOCK = "sweep.lock"  # in a cell's folder: the worker running it (the run itself holds run.lock)
DIR_LOCK = "sweep_dir.lock"  # in SWEEP_DIR: held while a worker checks sweep.json or writes the outputs
GRID = "sweep.json"  # in SWEEP_DIR: the grid (`grid`), written at the first start
BUSY = "busy"  # run_cell: another worker holds the cell
WORKER = f"{socket.gethostname()}:{os.getpid()}"


@dataclasses.dataclass
class Cell:
    method: str
    model: str
    task: str
    prompt_length: int
    seed: int
    bindings: dict

    @property
    def name(self) -> str:
        return f"{self.model}-{self.task}-{self.method}-p{self.prompt_length}-s{self.seed}"


@dataclasses.dataclass
class Sweep:
    """The grid. gin_files: the files every run starts from; methods / models / tasks: name -> bindings
    (gin macro -> value as gin text); bindings: given to every run; metric: the eval metric compared;
    parallel: cells this worker runs at once; lease_s: how long a worker's claim on a cell lasts without a
    renewal (a dead worker's cell is taken over after it)."""

    sweep_dir: str
    gin_files: Sequence[str]
    methods: Mapping[str, Mapping[str, str]]
    models: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=lambda: {"default": {}})
    tasks: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=lambda: {"default": {}})
    prompt_lengths: Sequence[int] = (20,)
    seeds: Sequence[int] = (0,)
    bindings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    metric: str = "accuracy"
    parallel: int = 1
    lease_s: float = LEASE_S

    def __post_init__(self):
        for axis in ("methods", "models", "tasks", "prompt_lengths", "seeds"):
            if not getattr(self, axis):
                raise ValueError(f"ptj.Sweep.{axis} is empty: a sweep needs at least one value on every axis")
        if self.parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {self.parallel}")
        if not self.lease_s > 0:
            raise ValueError(f"ptj.Sweep.lease_s must be a positive number of seconds, got {self.lease_s}")

    def cells(self) -> list[Cell]:
        out = []
        for (method, mb), (model, ob), (task, tb), length, seed in itertools.product(
                self.methods.items(), self.models.items(), self.tasks.items(), self.prompt_lengths, self.seeds):
            bindings = {**self.bindings, **ob, **tb, "PROMPT_LENGTH": str(int(length)), "SEED": str(int(seed)), **mb}
            out.append(Cell(method, model, task, int(length), int(seed), bindings))
        return out

    def run_dir(self, cell: Cell) -> str:
        return os.path.join(self.sweep_dir, "runs", cell.name)

    def command(self, cell: Cell) -> list[str]:
        args = [sys.executable, "-m", "prompt_tuning_jax.train"] + [f"--gin_file={f}" for f in self.gin_files]
        bindings = {**cell.bindings, "MODEL_DIR": repr(self.run_dir(cell))}
        return args + [f"--gin.{name}={value}" for name, value in bindings.items()]


def run(sweep: Sweep, log=print) -> list[dict]:
    """Runs every cell no worker has finished or is running (`sweep.parallel` at once), waits for the cells
    other workers run (taking over those whose worker died), then writes results.csv, table.md and plots."""
    cells = sweep.cells()
    check_grid(sweep)
    todo = [c for c in cells if not _done(sweep, c)]
    log(f"sweep: {len(cells)} cells, {len(cells) - len(todo)} finished before, {len(todo)} to run "
        f"({sweep.parallel} at a time) in {sweep.sweep_dir}; worker {WORKER}")
    first_pass, waiting_for = True, []
    while todo:
        with ThreadPoolExecutor(max_workers=sweep.parallel) as pool:
            statuses = list(pool.map(lambda c: run_cell(sweep, c, log, retry_failed=first_pass), todo))
        todo = [c for c, status in zip(todo, statuses) if status == BUSY and not _done(sweep, c)]
        if todo and [c.name for c in todo] != waiting_for:
            log(f"sweep: waiting for {len(todo)} cells other workers run ({', '.join(c.name for c in todo)})")
        waiting_for, first_pass = [c.name for c in todo], False
        if todo:
            time.sleep(sweep.lease_s / RENEW_EVERY)
    return finish(sweep)


def _done(sweep: Sweep, cell: Cell) -> bool:
    return files.exists(os.path.join(sweep.run_dir(cell), DONE))


def run_cell(sweep: Sweep, cell: Cell, log=print, retry_failed: bool = True) -> str:
    """Claims the cell and runs it -> 'done' | 'skipped' (finished before) | BUSY (another worker holds it)
    | 'failed (exit N)' | 'failed (by W)' (another worker's run failed it; only with `retry_failed` False,
    else a failed cell is run again)."""
    folder = sweep.run_dir(cell)
    if _done(sweep, cell):
        return "skipped"
    files.makedirs(folder)
    claim = RunLock(folder, lease_s=sweep.lease_s, name=CELL_LOCK)
    try:
        claim.acquire()
    except RuntimeError:  # a live lease of another worker
        return BUSY
    try:
        if _done(sweep, cell):  # finished between our look and our claim
            return "skipped"
        failed = _read_json(os.path.join(folder, FAILED))
        if failed and not retry_failed:
            return f"failed (by {failed.get('worker')})"
        if _trained_elsewhere(folder):
            return BUSY
        files.remove(os.path.join(folder, FAILED))
        log(f"  {cell.name}: running (worker {WORKER})")
        status = _train(sweep, cell, folder)
        log(f"  {cell.name}: {status} (worker {WORKER})")
        return status
    finally:
        claim.release()


def _trained_elsewhere(folder: str) -> bool:
    """True while the cell's own `run.lock` is live: its train process outlived a worker that lost the cell
    (a worker killed alone, or a host whose claim expired before its run's lock did)."""
    probe = RunLock(folder)
    try:
        probe.acquire()
    except RuntimeError:
        return True
    probe.release()
    return False


def _train(sweep: Sweep, cell: Cell, folder: str) -> str:
    """The cell's train process, its output in `sweep.log`; writes sweep_done.json or sweep_failed.json."""
    command = sweep.command(cell)
    start = time.time()
    with _cell_log(folder) as log_file:
        code = subprocess.call(command, stdout=log_file, stderr=subprocess.STDOUT)
    if code != 0:
        files.atomic_write(os.path.join(folder, FAILED), json.dumps({"cell": cell.name, "exit": code,
                                                                     "worker": WORKER}, indent=2))
        return f"failed (exit {code})"
    done = {"cell": cell.name, "wall_s": time.time() - start, "command": command, "worker": WORKER}
    files.atomic_write(os.path.join(folder, DONE), json.dumps(done, indent=2))
    return "done"


@contextlib.contextmanager
def _cell_log(folder: str):
    """A file for the train process's output: `folder/sweep.log`, or in a bucket a local file uploaded there
    when the run ends."""
    path = os.path.join(folder, "sweep.log")
    if files.is_local(path):
        with open(path, "w") as f:
            yield f
        return
    with tempfile.TemporaryFile() as f:
        try:
            yield f
        finally:
            f.seek(0)
            files.atomic_write(path, f.read())


# --------------------------------------------------------------------------- SWEEP_DIR


def grid(sweep: Sweep) -> dict:
    """What decides a sweep's cells and table, as SWEEP_DIR/sweep.json holds it."""
    return json.loads(json.dumps({
        "gin_files": list(sweep.gin_files), "methods": sweep.methods, "models": sweep.models, "tasks": sweep.tasks,
        "prompt_lengths": list(sweep.prompt_lengths), "seeds": list(sweep.seeds), "bindings": sweep.bindings,
        "metric": sweep.metric}))


def check_grid(sweep: Sweep) -> None:
    """Writes SWEEP_DIR/sweep.json at the sweep's first start; a SWEEP_DIR of another grid is refused."""
    path = os.path.join(sweep.sweep_dir, GRID)
    mine = grid(sweep)
    with _sweep_dir_locked(sweep):
        found = _read_json(path)
        if found is None:
            files.atomic_write(path, json.dumps(mine, indent=2))
            return
    if found != mine:
        raise ValueError(f"SWEEP_DIR {sweep.sweep_dir} holds another grid ({_difference(found, mine)}; see {path}): "
                         "run the sweep file that made it, or pick a new SWEEP_DIR")


def _difference(found: dict, mine: dict) -> str:
    """The first setting of the grid that differs, in a few words."""
    for key in mine:
        theirs, ours = found.get(key), mine[key]
        if theirs != ours:
            if isinstance(theirs, dict) and isinstance(ours, dict) and set(theirs) != set(ours):
                theirs, ours = sorted(theirs), sorted(ours)
            return f"its {key}: {_short(theirs)}, this sweep's: {_short(ours)}"
    return "its settings differ"


def _short(value, limit: int = 120) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def _sweep_dir_locked(sweep: Sweep):
    """SWEEP_DIR/sweep_dir.lock for a moment (the check of sweep.json, the writing of the outputs), waited for
    while another worker holds it."""
    files.makedirs(sweep.sweep_dir)
    lock = RunLock(sweep.sweep_dir, lease_s=sweep.lease_s, name=DIR_LOCK)
    while True:
        try:
            lock.acquire()
            break
        except RuntimeError:
            time.sleep(min(1.0, sweep.lease_s / RENEW_EVERY))
    try:
        yield
    finally:
        lock.release()


def finish(sweep: Sweep) -> list[dict]:
    """Reads every cell's row and writes the outputs, under SWEEP_DIR's lock: of several workers ending
    together, each writes a whole table in turn, the last from the newest files."""
    with _sweep_dir_locked(sweep):
        rows = [result_row(sweep, c) for c in sweep.cells()]
        write_outputs(sweep, rows)
    return rows


# --------------------------------------------------------------------------- reading a run


def _read_json(path: str):
    return json.loads(files.read_text(path)) if files.exists(path) else None


def _records(folder: str) -> list[dict]:
    path = os.path.join(folder, "metrics.jsonl")
    if not files.exists(path):
        return []
    return [json.loads(line) for line in files.read_text(path).splitlines() if line.strip()]


def result_row(sweep: Sweep, cell: Cell) -> dict:
    """One results.csv row from the cell's own files (best.json, metrics.jsonl, summary.json, sweep_done.json)."""
    folder = sweep.run_dir(cell)
    done, best, summary = (_read_json(os.path.join(folder, n)) for n in (DONE, "best.json", "summary.json"))
    records = _records(folder)
    train = [r for r in records if r.get("split") == "train"]
    speeds = [r["examples_per_s"] for r in train if r.get("examples_per_s")]
    speeds = speeds[1:] or speeds  # the first interval includes compiling the step
    metric = _metric_name(best, records, sweep.metric)
    value = best["value"] if best and best.get("metric") == metric else _last_eval(records, metric)
    row = {"method": cell.method, "model": cell.model, "task": cell.task,
           "placement": (summary or {}).get("placement"), "prompt_length": cell.prompt_length,
           "seed": cell.seed, "metric": metric, "value": value,
           "best_step": best.get("step") if best else None,
           "trainable_params": (summary or {}).get("trainable_params"),
           "examples_per_s": sum(speeds) / len(speeds) if speeds else None,
           "wall_s": done.get("wall_s") if done else None, "model_dir": folder,
           "status": "done" if done else ("failed" if files.exists(os.path.join(folder, FAILED)) else "pending")}
    row["degenerate"] = is_degenerate(value, train[-1].get("loss") if train else None,
                                      (summary or {}).get("majority_rate"))
    return row


def _metric_name(best, records, metric: str) -> str:
    """`metric`, or `rank_<metric>` for runs scored by rank classification (a verbalizer, EVAL_SCORING='rank'),
    or for a mixture run (one prompt per task, or multi-task prompts) the run's own `<task>/<metric>` it
    picked its best step by."""
    seen = {best.get("metric")} if best else set()
    seen.update(k for r in records if r.get("split") == "eval" for k in r)
    for name in (metric, f"rank_{metric}"):
        if name in seen:
            return name
    chosen = (best or {}).get("metric") or ""
    return chosen if chosen.rpartition("/")[2] in (metric, f"rank_{metric}") else metric


def _last_eval(records: list[dict], metric: str):
    values = [r[metric] for r in records if r.get("split") == "eval" and metric in r]
    return values[-1] if values else None


def is_degenerate(value, last_loss, majority_rate) -> bool:
    """NaN metric or loss, or a metric (in percent) within DEGENERATE_MARGIN of the majority-class rate."""
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return True
    if last_loss is not None and not math.isfinite(last_loss):
        return True
    return majority_rate is not None and abs(value - 100.0 * majority_rate) <= DEGENERATE_MARGIN


# --------------------------------------------------------------------------- outputs


def write_outputs(sweep: Sweep, rows: list[dict]) -> None:
    import io

    from prompt_tuning_jax.experiments import sweep_report

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    files.atomic_write(os.path.join(sweep.sweep_dir, "results.csv"), buffer.getvalue())
    files.atomic_write(os.path.join(sweep.sweep_dir, "table.md"), sweep_report.markdown_table(rows, sweep.metric))
    sweep_report.plots(rows, sweep, os.path.join(sweep.sweep_dir, "plots"))
