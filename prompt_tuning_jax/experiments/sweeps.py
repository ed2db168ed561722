"""Sweeps: a grid of ordinary training runs, then one results table, one markdown table and plots.

    python -m prompt_tuning_jax.sweep --gin_file=sweeps/demo.gin --gin.SWEEP_DIR="'runs/sweep'"
    run(Sweep("runs/sweep", ["runs/demo.gin"], methods={"prefix": {"PROMPT_PLACEMENT": "'prefix'"}}, seeds=[0, 1]))

A sweep gin file binds `ptj.Sweep`: the gin files every run starts from, and the
axes of the grid. `methods`, `models` and `tasks` map a name to the gin bindings
that select it (`{'prefix': {'PROMPT_PLACEMENT': "'prefix'"}}`); `prompt_lengths`
and `seeds` are lists of values for PROMPT_LENGTH and SEED. Every cell of
method x model x task x prompt length x seed is a normal `python -m
prompt_tuning_jax.train` run in `SWEEP_DIR/runs/<cell>/` (its log in `sweep.log`
there). A cell whose run finished has `sweep_done.json` and is skipped, so a
sweep resumes where it stopped; a failed cell is recorded and the others go on.
`parallel` cells run at once, each a separate process.

Outputs, rebuilt from the cells' own files after every sweep:
- `SWEEP_DIR/results.csv`: one row per cell (`RESULT_COLUMNS`);
- `SWEEP_DIR/table.md`: mean ± std over seeds (n runs), rows model, columns method;
- `SWEEP_DIR/plots/`: the metric against model and prompt length per method, and
  every cell's eval curve.
A run is `degenerate` when its metric is NaN, its last loss is not finite, or
its best metric is within `DEGENERATE_MARGIN` points of always answering the
eval split's majority class.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

from prompt_tuning_jax import files

RESULT_COLUMNS = ("method", "model", "task", "placement", "prompt_length", "seed", "metric", "value", "best_step",
                  "trainable_params", "examples_per_s", "wall_s", "model_dir", "degenerate", "status")
DEGENERATE_MARGIN = 0.5  # points of the metric (accuracy is in percent)
DONE = "sweep_done.json"


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
    (gin macro -> value as gin text); bindings: given to every run; metric: the eval metric compared."""

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

    def __post_init__(self):
        for axis in ("methods", "models", "tasks", "prompt_lengths", "seeds"):
            if not getattr(self, axis):
                raise ValueError(f"ptj.Sweep.{axis} is empty: a sweep needs at least one value on every axis")
        if self.parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {self.parallel}")

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


def run_cell(sweep: Sweep, cell: Cell) -> str:
    """Runs one cell unless it finished before -> 'done' | 'skipped' | 'failed (exit N)'."""
    folder = sweep.run_dir(cell)
    if files.exists(os.path.join(folder, DONE)):
        return "skipped"
    files.makedirs(folder)
    start = time.time()
    with open(os.path.join(folder, "sweep.log"), "w") as log:
        code = subprocess.call(sweep.command(cell), stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        return f"failed (exit {code})"
    done = {"cell": cell.name, "wall_s": time.time() - start, "command": sweep.command(cell)}
    files.atomic_write(os.path.join(folder, DONE), json.dumps(done, indent=2))
    return "done"


def run(sweep: Sweep, log=print) -> list[dict]:
    """Runs every unfinished cell (`sweep.parallel` at once), then writes results.csv, table.md and plots."""
    cells = sweep.cells()
    todo = [c for c in cells if not files.exists(os.path.join(sweep.run_dir(c), DONE))]
    log(f"sweep: {len(cells)} cells, {len(cells) - len(todo)} finished before, {len(todo)} to run "
        f"({sweep.parallel} at a time) in {sweep.sweep_dir}")
    with ThreadPoolExecutor(max_workers=sweep.parallel) as pool:
        for cell, status in zip(todo, pool.map(lambda c: run_cell(sweep, c), todo)):
            log(f"  {cell.name}: {status}")
    rows = [result_row(sweep, c) for c in cells]
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
           "status": "done" if done else ("failed" if files.exists(os.path.join(folder, "sweep.log")) else "pending")}
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
