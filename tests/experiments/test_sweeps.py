"""Sweeps: the grid, degenerate runs, the table, claims of cells among workers, sweep.json, and a real two-cell sweep
that resumes without rerunning."""
import csv
import json
import math
import os
import sys
import threading
import time

import pytest

from prompt_tuning_jax.experiments import sweep_report, sweeps
from prompt_tuning_jax.experiments.sweeps import Sweep, is_degenerate
from prompt_tuning_jax.training.lock import RunLock


def _sweep(tmp_path, **kw):
    args = dict(sweep_dir=str(tmp_path), gin_files=["runs/demo.gin"],
                methods={"prefix": {"PROMPT_PLACEMENT": "'prefix'"}, "suffix": {}})
    return Sweep(**{**args, **kw})


def test_cells_are_the_product_of_the_axes_and_a_method_wins_over_shared_bindings(tmp_path):
    sweep = _sweep(tmp_path, models={"a": {"X": "1"}, "b": {"X": "2"}}, prompt_lengths=[1, 5], seeds=[0, 1, 2],
                   bindings={"TRAIN_STEPS": "3", "PROMPT_PLACEMENT": "'suffix'"})
    cells = sweep.cells()
    assert len(cells) == 2 * 2 * 2 * 3 and len({c.name for c in cells}) == len(cells)
    prefix = [c for c in cells if c.method == "prefix"][0]
    assert prefix.bindings["PROMPT_PLACEMENT"] == "'prefix'" and prefix.bindings["TRAIN_STEPS"] == "3"
    command = sweep.command(prefix)
    assert command[:3] == [sys.executable, "-m", "prompt_tuning_jax.train"]
    assert f"--gin.MODEL_DIR={sweep.run_dir(prefix)!r}" in command
    assert f"--gin.PROMPT_LENGTH={prefix.prompt_length}" in command and f"--gin.SEED={prefix.seed}" in command


def test_an_empty_axis_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ptj.Sweep.seeds is empty"):
        _sweep(tmp_path, seeds=[])


def test_degenerate_means_nan_or_stuck_at_the_majority_class():
    assert is_degenerate(49.08, 0.69, 0.4908)  # seed 002's bad runs: SST-2's majority class
    assert is_degenerate(50.2, 0.7, 0.502) and not is_degenerate(53.0, 0.7, 0.502)
    assert is_degenerate(math.nan, 0.7, 0.5) and is_degenerate(90.0, math.nan, 0.5)
    assert not is_degenerate(None, None, 0.5) and not is_degenerate(50.0, 0.1, None)


def _row(method, model, seed, value, degenerate=False, length=5):
    return {"method": method, "model": model, "task": "sst2", "prompt_length": length, "seed": seed,
            "value": value, "degenerate": degenerate, "model_dir": "/nowhere"}


def test_table_is_mean_and_std_over_seeds_without_degenerate_runs():
    rows = [_row("prefix", "gpt2", 0, 90.0), _row("prefix", "gpt2", 1, 92.0), _row("prefix", "gpt2", 2, 49.1, True),
            _row("suffix", "gpt2", 0, 80.0), _row("suffix", "gpt2-medium", 0, 85.0), _row("suffix", "gpt2-medium", 1, 87.0)]
    table = sweep_report.markdown_table(rows, "accuracy")
    assert "| model | prefix | suffix |" in table
    assert "| gpt2 | 91.00 ± 1.41 (2) [1 degenerate] | 80.00 ± 0.00 (1) |" in table
    assert "| gpt2-medium | - | 86.00 ± 1.41 (2) |" in table


@pytest.mark.slow
def test_a_sweep_runs_every_cell_writes_results_table_plots_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = _sweep(tmp_path / "sweep", seeds=[0], prompt_lengths=[4],
                   bindings={"TRAIN_STEPS": "4", "EVAL_PERIOD": "2", "CHECKPOINT_PERIOD": "4"})
    logs = []
    rows = sweeps.run(sweep, log=logs.append)
    assert [r["status"] for r in rows] == ["done", "done"], open(os.path.join(rows[0]["model_dir"], "sweep.log")).read()
    with open(tmp_path / "sweep" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and set(sweeps.RESULT_COLUMNS) <= set(table[0])
    for row in table:  # every row agrees with its own run's files
        best = json.load(open(os.path.join(row["model_dir"], "best.json")))
        summary = json.load(open(os.path.join(row["model_dir"], "summary.json")))
        assert float(row["value"]) == best["value"] and int(row["best_step"]) == best["step"]
        assert int(row["trainable_params"]) == summary["trainable_params"] > 4 * 16  # prompt [4, H] and a head
        assert row["placement"] == {"prefix": "prefix", "suffix": "suffix"}[row["method"]]
        assert float(row["examples_per_s"]) > 0 and float(row["wall_s"]) > 0
    text = (tmp_path / "sweep" / "table.md").read_text()
    assert "±" in text and f"| {table[0]['model']} | {int(table[0]['trainable_params']):,} |" in text
    for name in ("metric_vs_model.png", "metric_vs_prompt_length.png", "metric_vs_parameters.png",
                 "learning_curves.png"):
        assert (tmp_path / "sweep" / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = [os.path.getmtime(os.path.join(r["model_dir"], sweeps.DONE)) for r in rows]
    logs.clear()
    again = sweeps.run(sweep, log=logs.append)
    assert "2 finished before, 0 to run" in logs[0] and len(logs) == 1  # nothing ran
    assert [os.path.getmtime(os.path.join(r["model_dir"], sweeps.DONE)) for r in again] == done
    assert [r["value"] for r in again] == [r["value"] for r in rows]


@pytest.mark.parametrize("name", ["demo", "seed_table", "baselines", "extended_demo", "methods", "methods_demo"])
def test_every_cell_of_the_shipped_sweeps_is_a_valid_run(name, tmp_path):
    """Each cell's command line parses as the train command would parse it (files found, macros used)."""
    import gin

    from prompt_tuning_jax import cli

    cli.parse_gin([f"sweeps/{name}.gin"], [f"SWEEP_DIR='{tmp_path}'"])
    sweep = cli.configured(Sweep)()
    cells = sweep.cells()
    assert len(cells) >= {"baselines": 18, "extended_demo": 6, "methods": 36, "methods_demo": 12}.get(name, 12)
    for cell in cells:
        rest, bindings = cli.split_gin_flags(sweep.command(cell)[3:])
        cli.parse_gin([arg.split("=", 1)[1] for arg in rest], bindings)
        assert gin.query_parameter("%PROMPT_LENGTH") == cell.prompt_length
    gin.clear_config()


def test_sweep_json_records_the_grid_and_a_sweep_dir_of_another_grid_is_refused(tmp_path):
    sweeps.check_grid(_sweep(tmp_path))
    recorded = json.loads((tmp_path / sweeps.GRID).read_text())
    assert recorded["methods"] == {"prefix": {"PROMPT_PLACEMENT": "'prefix'"}, "suffix": {}}
    assert recorded["seeds"] == [0] and recorded["gin_files"] == ["runs/demo.gin"]
    sweeps.check_grid(_sweep(tmp_path, parallel=3, lease_s=9))  # another worker of the same grid
    with pytest.raises(ValueError, match=rf"^SWEEP_DIR {tmp_path} holds another grid \(its seeds: \[0\], this "
                                         r"sweep's: \[0, 1\]; see .*sweep.json\): run the sweep file that made it, "
                                         r"or pick a new SWEEP_DIR$"):
        sweeps.check_grid(_sweep(tmp_path, seeds=[0, 1]))
    with pytest.raises(ValueError, match=r"its methods: \[\"prefix\", \"suffix\"\], this sweep's: \[\"prefix\"\]"):
        sweeps.check_grid(_sweep(tmp_path, methods={"prefix": {}}))


def _quick(tmp_path, **kw):
    """A sweep whose cells run `python -c pass` instead of training."""
    sweep = _sweep(tmp_path, **kw)
    sweep.command = lambda cell: [sys.executable, "-c", "pass"]
    return sweep


def test_a_cell_claimed_by_a_live_worker_or_run_is_busy_and_a_failed_one_is_left_to_its_worker(tmp_path):
    sweep = _quick(tmp_path, lease_s=2.0)
    cell = sweep.cells()[0]
    folder = sweep.run_dir(cell)
    os.makedirs(folder)
    with RunLock(folder, lease_s=2.0, name=sweeps.CELL_LOCK):  # another worker's claim
        assert sweeps.run_cell(sweep, cell) == sweeps.BUSY
    with RunLock(folder, lease_s=2.0):  # the run.lock of a train process that outlived its worker
        assert sweeps.run_cell(sweep, cell) == sweeps.BUSY
    (tmp_path / "runs" / cell.name / sweeps.FAILED).write_text(json.dumps({"worker": "vm-2:42"}))
    assert sweeps.run_cell(sweep, cell, retry_failed=False) == "failed (by vm-2:42)"
    logs = []
    assert sweeps.run_cell(sweep, cell, log=logs.append) == "done"  # a new start of the sweep retries it
    assert not os.path.exists(os.path.join(folder, sweeps.FAILED)) and not os.path.exists(
        os.path.join(folder, sweeps.CELL_LOCK))
    assert logs == [f"  {cell.name}: running (worker {sweeps.WORKER})", f"  {cell.name}: done (worker {sweeps.WORKER})"]
    assert sweeps.run_cell(sweep, cell) == "skipped"


def test_a_worker_runs_the_free_cells_then_waits_for_the_one_another_worker_holds(tmp_path):
    sweep = _quick(tmp_path, lease_s=1.0)
    held, free = sweep.cells()
    folder = sweep.run_dir(held)
    os.makedirs(folder)
    claim = RunLock(folder, lease_s=1.0, name=sweeps.CELL_LOCK)
    claim.acquire()

    def other_worker_finishes():
        (tmp_path / "runs" / held.name / sweeps.DONE).write_text(json.dumps({"worker": "vm-2:42", "wall_s": 1.0}))
        claim.release()

    timer = threading.Timer(2.0, other_worker_finishes)
    timer.start()
    logs = []
    start = time.time()
    rows = sweeps.run(sweep, log=logs.append)
    timer.join()
    assert time.time() - start >= 2.0 and [r["status"] for r in rows] == ["done", "done"]
    assert logs[1:] == [f"  {free.name}: running (worker {sweeps.WORKER})",
                        f"  {free.name}: done (worker {sweeps.WORKER})",
                        f"sweep: waiting for 1 cells other workers run ({held.name})"]
    assert (tmp_path / "results.csv").exists() and (tmp_path / "table.md").exists()
    assert not (tmp_path / sweeps.DIR_LOCK).exists()


def test_a_mixture_run_is_read_by_its_own_task_metric():
    """A mixture (or multi-task prompt) run records `<task>/<metric>`; the sweep reads the one it chose."""
    best = {"metric": "demo_sentiment/rank_accuracy", "value": 99.0}
    records = [{"split": "eval", "step": 10, "demo_sentiment/rank_accuracy": 99.0}]
    assert sweeps._metric_name(best, records, "accuracy") == "demo_sentiment/rank_accuracy"
    assert sweeps._metric_name({"metric": "demo_sentiment/f1"}, [], "accuracy") == "accuracy"
    assert sweeps._metric_name({"metric": "rank_accuracy"}, [], "accuracy") == "rank_accuracy"
