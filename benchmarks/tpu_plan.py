"""The README's "Will it fit?" table: every shipped T5 1.1 lm100k and GPT-2 size on five TPU slices.

    python benchmarks/tpu_plan.py                      # all cells (hours on 2 cores: XXL compiles take minutes)
    python benchmarks/tpu_plan.py --rows xxl --two_d   # one row, with 2-D parameter sharding
    python benchmarks/tpu_plan.py --markdown           # the table from the cached results

Each cell is what `MESH_SHAPE='auto'` picks for the paper's setting (batch 32, inputs
512, targets 8, prompt 100, Adafactor, bfloat16 weights and compute, remat) on
that slice, found by compiling the training step and the
decoding loop with libtpu (`experiments.planning.auto_mesh_shape`), and the peak
GiB per chip of both programs there. The table compiles without dropout (`--dropout`,
DROPOUT_RATE=0): threefry dropout makes XLA:TPU take 5x longer to compile the
training step (t5-small on a v4-8: 276 s against 52 s) for about the same bytes
(compare the `small|v4-8|1d|dropout0.1` cell). Results go to benchmarks/results/tpu_plan.json
as each cell finishes, so an interrupted run resumes where it stopped. Needs
libtpu: pip install "jax[tpu]==<installed jax>".
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROWS = {"small": "google/t5-small-lm-adapt", "base": "google/t5-base-lm-adapt", "large": "google/t5-large-lm-adapt",
        "xl": "google/t5-xl-lm-adapt", "xxl": "google/t5-xxl-lm-adapt",
        "gpt2": "gpt2", "gpt2-medium": "gpt2-medium", "gpt2-large": "gpt2-large", "gpt2-xl": "gpt2-xl"}
COLUMNS = ("v4-8", "v4-32", "v5litepod-16", "v5p-8", "v6e-8")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tpu_plan.json")
GiB = 2 ** 30


def paper_run(path: str, two_d: bool, dropout: float = 0.0):
    from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, planning
    from prompt_tuning_jax.training import optim

    model = ModelSpec(path, dtype="bfloat16", param_dtype="bfloat16", remat=True,
                      dropout_rate=dropout, parameter_partitioning_dims=2 if two_d else 1)
    return planning.Run("train", model, PromptSpec(length=100, init="random_uniform"),
                        DataSpec(None, {"inputs": 512, "targets": 8}, batch_size=32), TrainSpec(steps=30000),
                        optim.make_optimizer(total_steps=30000), mesh_shape="auto")


def cell(job: tuple[str, str, bool, float]) -> dict:
    """One (row, accelerator, 2-D) cell: the mesh 'auto' chose and both programs' peaks there."""
    from prompt_tuning_jax import topologies
    from prompt_tuning_jax.experiments import planning

    row, accelerator, two_d, dropout = job
    spec = topologies.accelerator(accelerator)
    devices = topologies.target_devices(spec)
    start = time.perf_counter()
    run = paper_run(ROWS[row], two_d, dropout)
    out = {"row": row, "accelerator": accelerator, "two_d": two_d, "dropout": dropout,
           "hbm_gib": spec.hbm_bytes / GiB}
    try:
        shape, plans = planning.auto_mesh_shape(run, devices, spec.hbm_bytes, programs=("train_step", "decode"))
    except ValueError as e:
        out.update(fits=False, message=str(e))
    else:
        programs = plans[-1].programs
        out.update(fits=True, mesh_shape=list(shape), tried=[list(p.mesh_shape) for p in plans],
                   **{f"{name}_peak_gib": p.peak / GiB for name, p in programs.items()},
                   **{f"{name}_compile_s": p.compile_s for name, p in programs.items()},
                   **{f"{name}_flops": p.flops for name, p in programs.items()})
    out["seconds"] = time.perf_counter() - start
    return out


def load() -> dict:
    if not os.path.exists(RESULTS):
        return {}
    with open(RESULTS) as f:
        return json.load(f)


def key(row: str, accelerator: str, two_d: bool, dropout: float = 0.0) -> str:
    return f"{row}|{accelerator}|{'2d' if two_d else '1d'}" + (f"|dropout{dropout}" if dropout else "")


def markdown(results: dict, two_d_rows=("xxl", "xl")) -> str:
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for row in ROWS:
        for two_d in (False, True):
            cells = [results.get(key(row, acc, two_d)) for acc in COLUMNS]
            if two_d and not any(cells):
                continue
            label = ROWS[row].split("/")[-1] + (" (2-D)" if two_d else "")
            lines.append(f"| {label} | " + " | ".join(_cell_text(c) for c in cells) + " |")
    return "\n".join(lines)


def _cell_text(c: dict | None) -> str:
    if c is None:
        return "(not run)"
    if not c["fits"]:
        return "does not fit"
    return (f"({c['mesh_shape'][0]}, {c['mesh_shape'][1]}): {c['train_step_peak_gib']:.1f} / "
            f"{c.get('decode_peak_gib', 0):.1f} GiB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ",".join(ROWS))
    p.add_argument("--columns", default=",".join(COLUMNS))
    p.add_argument("--two_d", action="store_true", help="also 2-D parameter sharding for these rows")
    p.add_argument("--only_two_d", action="store_true", help="only 2-D parameter sharding for these rows")
    p.add_argument("--dropout", type=float, default=0.0, help="DROPOUT_RATE to compile with (see above)")
    p.add_argument("--workers", type=int, default=1, help="cells compiled at once (each compile uses ~1 core)")
    p.add_argument("--markdown", action="store_true", help="print the table from the cached results and exit")
    args = p.parse_args(argv)
    results = load()
    if args.markdown:
        print(markdown(results))
        return 0
    variants = [True] if args.only_two_d else [False, True] if args.two_d else [False]
    jobs = [(r, a, d, args.dropout) for r in args.rows.split(",") for a in args.columns.split(",")
            for d in variants if key(r, a, d, args.dropout) not in results]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    # One process per cell (libtpu's compiler keeps memory); a killed one (out of host memory: an XXL
    # compile takes up to 15 GB) stops the run with its cell named, and a rerun resumes from the cache.
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        futures = {pool.submit(cell, job): job for job in jobs}
        try:
            for future in as_completed(futures):
                out = future.result()
                results = load()
                results[key(out["row"], out["accelerator"], out["two_d"], out["dropout"])] = out
                with open(RESULTS + ".tmp", "w") as f:
                    json.dump(results, f, indent=1, sort_keys=True)
                os.replace(RESULTS + ".tmp", RESULTS)
                print(json.dumps(out), flush=True)
        except BrokenProcessPool:
            done = load()
            left = [key(*job) for job in jobs if key(*job) not in done]
            print(f"error: a compile process died (out of host memory?) with {left} not done; the other cells "
                  f"are saved in {RESULTS}: run again with fewer --workers to finish", file=sys.stderr)
            return 1
    print(markdown(load()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
