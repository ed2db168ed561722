"""`python -m prompt_tuning_jax.sweep --gin_file=sweeps/<name>.gin --gin.SWEEP_DIR="'<dir>'"`: run a grid of runs.

The sweep file binds `ptj.Sweep` (see `experiments/sweeps.py`); every cell is a
`python -m prompt_tuning_jax.train` run of its own. `--gin.SWEEP_PARALLEL=N` runs
N cells at once. Rerunning the command skips finished cells and rebuilds the
results. The same command started on several machines (or several times on one)
with the same SWEEP_DIR (a gs:// folder across machines; `scripts/tpu.sh sweep`
starts one per TPU VM) shares the grid out: each worker claims the cells it runs,
takes over those of a worker that died once their lease (`--gin.SWEEP_LEASE_S`)
expires, and ends when every cell has, with the same results.csv and table.md.
"""

from prompt_tuning_jax import cli
from prompt_tuning_jax.experiments import sweeps


def run() -> None:
    sweep = cli.configured(sweeps.Sweep)()
    rows = sweeps.run(sweep, log=lambda line: print(line, flush=True))  # flushed: read while it runs
    failed = [r for r in rows if r["status"] != "done"]
    degenerate = sum(1 for r in rows if r["degenerate"])
    print(f"sweep: {len(rows) - len(failed)} of {len(rows)} runs finished, {degenerate} degenerate; "
          f"{sweep.sweep_dir}/results.csv, table.md, plots/")
    if failed:
        raise RuntimeError(f"{len(failed)} runs did not finish (first: {failed[0]['model_dir']}/sweep.log); "
                           "rerun the same command to retry them")


def console_main():
    cli.exit_process(cli.main(run, "Run a sweep of training runs (gin-configured)."))


if __name__ == "__main__":
    console_main()
