"""Loading a T5X checkpoint vs the same weights as Hugging Face safetensors: `ptj.from_pretrained` time and memory.

    python benchmarks/t5x_read.py                                # t5_1_1_lm100k_base (248M parameters), 3 repeats
    python benchmarks/t5x_read.py --repeats 5 --workdir /data/ptj_t5x_read
    python benchmarks/t5x_read.py --model t5_1_1_lm100k_small    # a quicker run

Writes once, cached under --workdir, a random checkpoint of the named size as T5X
(`scripts/make_random_checkpoint.py --format t5x`: zarr arrays with gzip and T5X's
64 MiB chunks) and the same weights as safetensors (that checkpoint loaded with
`from_pretrained` and written with `save_pretrained`). Then, for each format, fresh
child processes each time `ptj.from_pretrained(path)` until every array is on the
device (`block_until_ready`), float32, no mesh. Memory, each as a difference from
the child's RSS after the imports and the JAX backend start ("start"): its peak RSS
(`getrusage` ru_maxrss), its RSS once loaded, and its RSS after a `gc.collect()`
(safetensors are memory-mapped: the mapped pages count in RSS while the map lives,
and from_pretrained leaves it to the cycle collector). One untimed child per format runs first so
both are read from a warm page cache; then the formats alternate, `--repeats` times
each, and the median is reported with the ratio T5X / safetensors. Results go to
benchmarks/results/t5x_read.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results", "t5x_read.json")
RESULT_TAG = "T5X_READ_RESULT "
STEP = 1_100_000
FORMATS = ("t5x", "safetensors")
MiB = 2**20


def paths(args) -> dict[str, str]:
    root = os.path.join(os.path.abspath(args.workdir), args.model)
    return {"t5x": os.path.join(root, f"checkpoint_{STEP}"), "safetensors": os.path.join(root, "safetensors")}


def build(args) -> dict[str, str]:
    """Both checkpoints of args.model under args.workdir, written unless already there."""
    where = paths(args)
    if not os.path.isfile(os.path.join(where["t5x"], "checkpoint")):
        print(f"writing {where['t5x']} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_random_checkpoint.py"), args.model,
                        where["t5x"], "--format", "t5x", "--step", str(STEP)], check=True)
    if not os.path.isfile(os.path.join(where["safetensors"], "model.safetensors")):
        print(f"writing {where['safetensors']} ...", file=sys.stderr, flush=True)
        run_child("convert", where["t5x"], where["safetensors"])
    return where


def convert(t5x_dir: str, folder: str) -> dict:
    """The T5X checkpoint's weights as a Hugging Face folder (config.json + model.safetensors)."""
    import prompt_tuning_jax as ptj

    ptj.save_pretrained(ptj.from_pretrained(t5x_dir), folder)
    return {}


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def load(path: str) -> dict:
    """One timed `from_pretrained(path)` in this (fresh) process, with its memory."""
    import gc
    import resource

    import jax
    import jax.numpy as jnp
    from flax import nnx

    import prompt_tuning_jax as ptj

    jnp.zeros(1).block_until_ready()  # the backend is up before the clock starts
    rss_start = current_rss()
    start = time.perf_counter()
    model = ptj.from_pretrained(path)
    state = nnx.state(model, nnx.Param)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    rss_loaded = current_rss()
    gc.collect()  # whatever the loader left for the cycle collector (a memory map, say) is let go
    rss_held = current_rss()
    leaves = jax.tree.leaves(state)
    device = jax.devices()[0]
    return {"seconds": seconds, "rss_start": rss_start, "peak_rss": peak, "rss_loaded": rss_loaded,
            "rss_held": rss_held,
            "parameters": int(sum(x.size for x in leaves)),
            "fingerprint": sum(float(jnp.sum(x)) for x in leaves),  # the same weights give the same sum
            "backend": f"jax {jax.__version__} on {device.platform} ({device.device_kind})"}


def run_child(kind: str, *argv: str) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", kind, *argv], env=env,
                          capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise SystemExit(f"the {kind} child failed (exit {proc.returncode})")


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("jax", "flax", "tensorstore", "numpy")}


def commit() -> str:
    """The commit measured (HEAD; the working tree may differ from it)."""
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() or "unknown"


def summarize(runs: list[dict]) -> dict:
    med = lambda key: float(np.median([r[key] for r in runs]))
    return {"seconds": [r["seconds"] for r in runs], "median_seconds": med("seconds"),
            "peak_minus_start_mib": float(np.median([(r["peak_rss"] - r["rss_start"]) / MiB for r in runs])),
            "loaded_minus_start_mib": float(np.median([(r["rss_loaded"] - r["rss_start"]) / MiB for r in runs])),
            "held_minus_start_mib": float(np.median([(r["rss_held"] - r["rss_start"]) / MiB for r in runs])),
            "rss_start_mib": med("rss_start") / MiB, "fingerprint": runs[0]["fingerprint"],
            "parameters": runs[0]["parameters"], "backend": runs[0]["backend"]}


def report(args, where: dict, results: dict, load_before: float) -> dict:
    t, s = results["t5x"], results["safetensors"]
    if t["fingerprint"] != s["fingerprint"] or t["parameters"] != s["parameters"]:
        raise SystemExit(f"the two formats did not load the same weights: {t['fingerprint']} vs {s['fingerprint']}")
    for name in FORMATS:
        results[name]["disk_mib"] = disk_bytes(where[name]) / MiB
    ratios = {key: t[key] / s[key] for key in ("median_seconds", "peak_minus_start_mib", "loaded_minus_start_mib",
                                                "held_minus_start_mib", "disk_mib")}
    print(f"from_pretrained of {args.model} ({t['parameters']:,} parameters, float32), median of {args.repeats} "
          f"fresh processes per format, warm page cache; {t['backend']}; host {os.cpu_count()} CPUs; load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after; {versions()}")
    print("| format | median s | runs s | peak RSS - start MiB | loaded - start MiB | after gc - start MiB | "
          "on disk MiB |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for name, label in (("t5x", "T5X (zarr, gzip)"), ("safetensors", "safetensors")):
        r = results[name]
        runs = " ".join(f"{x:.2f}" for x in r["seconds"])
        print(f"| {label} | {r['median_seconds']:.2f} | {runs} | {r['peak_minus_start_mib']:.0f} | "
              f"{r['loaded_minus_start_mib']:.0f} | {r['held_minus_start_mib']:.0f} | {r['disk_mib']:.0f} |")
    print(f"| ratio T5X / safetensors | {ratios['median_seconds']:.2f} | | {ratios['peak_minus_start_mib']:.2f} | "
          f"{ratios['loaded_minus_start_mib']:.2f} | {ratios['held_minus_start_mib']:.2f} | {ratios['disk_mib']:.2f} |")
    return {"command": " ".join(["python", "benchmarks/t5x_read.py", *sys.argv[1:]]), "commit": commit(),
            "model": args.model, "repeats": args.repeats, "paths": where, "cpus": os.cpu_count(),
            "load_average_before": load_before, "load_average_after": os.getloadavg()[0], "versions": versions(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results, "ratios_t5x_over_safetensors": ratios}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="t5_1_1_lm100k_base", help="a T5X name or hub id of a released T5 size")
    p.add_argument("--workdir", default="/tmp/ptj_t5x_read", help="where both checkpoints are written once")
    p.add_argument("--repeats", type=int, default=3, help="timed loads per format (median reported)")
    p.add_argument("--results", default=RESULTS, help="the JSON file to write ('' for none)")
    p.add_argument("--_child", choices=["load", "convert"], help=argparse.SUPPRESS)
    p.add_argument("_args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        result = load(*args._args) if args._child == "load" else convert(*args._args)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    where = build(args)
    load_before = os.getloadavg()[0]
    for name in FORMATS:  # untimed: both read from a warm page cache afterwards
        run_child("load", where[name])
    runs = {name: [] for name in FORMATS}
    for r in range(args.repeats):
        for name in FORMATS:
            print(f"repeat {r + 1}/{args.repeats}: {name} ...", file=sys.stderr, flush=True)
            runs[name].append(run_child("load", where[name]))
    summary = report(args, where, {name: summarize(rs) for name, rs in runs.items()}, load_before)
    if args.results:
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        with open(args.results, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
