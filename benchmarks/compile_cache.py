"""The persistent compilation cache: a command's first run against its second, each a whole process.

    python benchmarks/compile_cache.py                 # the README demo and an eval of its run, 1 round
    python benchmarks/compile_cache.py --rounds 3      # fastest of 3 rounds per cell
    python benchmarks/compile_cache.py --steps 50      # a shorter demo: compiling is a larger share of it

Two commands, as a user types them:
- demo: `python -m prompt_tuning_jax.train --gin_file=runs/demo.gin --gin.MODEL_DIR=<new folder>`
  (the README's offline demo: tiny GPT-2, 300 steps, evaluations and checkpoints);
- eval: `python -m prompt_tuning_jax.eval` on the demo model with the prompt and head of a demo run
  (`runs/prompt_eval.gin`, CHECKPOINT_PATH = that run, a new EVAL_OUTPUT_DIR each time).
Each runs twice with a fresh, empty cache folder (`--compilation_cache=<folder>`): the first run compiles
and fills it, the second loads its programs from it. For reference, each also runs twice with
`--compilation_cache=off`, where both runs compile. Per run: wall seconds and the child's CPU seconds
(user + system: steadier than wall time on a shared machine). First, one untimed demo run builds the demo
model if it is not cached yet and warms the page cache; its run is the one the evals read.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, "-m", "prompt_tuning_jax.train", "--gin_file=runs/demo.gin"]
EVAL = [sys.executable, "-m", "prompt_tuning_jax.eval", "--gin_file=models/demo_gpt2_tiny.gin",
        "--gin_file=prompts/from_sampled_vocab.gin", "--gin_file=prompts/linear_head.gin",
        "--gin_file=runs/prompt_eval.gin", "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}"]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")  # a checkout without `pip install -e .`
    return env


def timed(cmd: list[str]) -> tuple[float, float]:
    """Runs `cmd` to the end -> (wall seconds, CPU seconds of the child); raises with its stderr if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=child_env())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def command(name: str, out: str, demo_run: str, steps: int | None) -> list[str]:
    """The command line of `name` writing into the folder `out` (new each time: a run must never resume)."""
    if name == "demo":
        return [*TRAIN, f"--gin.MODEL_DIR='{out}'", "--gin.ptj.TrainSpec.progress=False",
                *([f"--gin.TRAIN_STEPS={steps}"] if steps else [])]
    return [*EVAL, f"--gin.CHECKPOINT_PATH='{demo_run}'", f"--gin.EVAL_OUTPUT_DIR='{out}'"]


def new(work: str, name: str) -> str:
    return tempfile.mkdtemp(prefix=f"{name}_", dir=work)


def cache_files(folder: str) -> int:
    return len([n for n in os.listdir(folder) if n.endswith("-cache")]) if os.path.isdir(folder) else 0


def one_round(work: str, demo_run: str, steps: int | None) -> dict:
    """{(command, cache): [(wall, cpu) of the first run, of the second], ...} and the entries written."""
    out = {}
    for name in ("demo", "eval"):
        out[name, "off"] = [timed([*command(name, new(work, name), demo_run, steps), "--compilation_cache=off"])
                            for _ in range(2)]
        cache = tempfile.mkdtemp(prefix=f"xla_{name}_", dir=work)
        out[name, "on"] = [timed([*command(name, new(work, name), demo_run, steps), f"--compilation_cache={cache}"])
                           for _ in range(2)]
        out[name, "entries"] = cache_files(cache)
    return out


def fastest(rounds: list[dict]) -> dict:
    """Per cell and run (first, second), the round with the least wall time."""
    keys = [k for k in rounds[0] if k[1] != "entries"]
    best = {k: [min((r[k][i] for r in rounds), key=lambda t: t[0]) for i in range(2)] for k in keys}
    best.update({k: rounds[-1][k] for k in rounds[0] if k[1] == "entries"})
    return best


def report(best: dict) -> None:
    print(f"{'command':8} {'cache':6} {'first s':>8} {'second s':>9} {'saved s':>8} {'second/first':>13}"
          f" {'CPU first s':>12} {'CPU second s':>13}")
    for name in ("demo", "eval"):
        for cache in ("off", "on"):
            (wall1, cpu1), (wall2, cpu2) = best[name, cache]
            print(f"{name:8} {cache:6} {wall1:8.1f} {wall2:9.1f} {wall1 - wall2:8.1f} {wall2 / wall1:13.2f}"
                  f" {cpu1:12.1f} {cpu2:13.1f}")
        print(f"{'':8} {best[name, 'entries']} programs in the cache after the first run")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1, help="repeat everything; the fastest round per cell is shown")
    p.add_argument("--steps", type=int, help="TRAIN_STEPS of the demo (default: the demo's own, 300)")
    p.add_argument("--workdir", help="where the runs and caches go (default: a new temporary folder)")
    args = p.parse_args()
    import jax

    print(f"jax {jax.__version__}, {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!r}", flush=True)
    work = tempfile.mkdtemp(prefix="ptj_compile_cache_", dir=args.workdir)
    demo_run = new(work, "demo")
    timed([*command("demo", demo_run, "", args.steps), "--compilation_cache=off"])  # untimed: see the docstring
    rounds = [one_round(work, demo_run, args.steps) for _ in range(args.rounds)]
    report(fastest(rounds))
    print(f"(runs and caches in {work})")


if __name__ == "__main__":
    main()
