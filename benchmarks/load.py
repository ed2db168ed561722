"""Loading a checkpoint: `ptj.from_pretrained` vs transformers' `from_pretrained`, peak memory against the weights.

    python benchmarks/load.py                              # random gpt2-large (774M, 2.88 GiB float32 safetensors)
    python benchmarks/load.py --dtypes bfloat16            # loaded as bfloat16 (converted tensor by tensor)
    python benchmarks/load.py --model llama                # a random Llama of ~1.2B (Llama 3.2 1B's shape)
    python benchmarks/load.py --n_layer 2 --repeats 1      # a quick smoke run

Writes once, cached under --workdir (default /tmp/ptj_load), a random checkpoint of the model with
transformers and torch (`GPT2LMHeadModel` / `LlamaForCausalLM`, float32 safetensors, `save_pretrained`).
Then, for each dtype, fresh child processes load it: ours `ptj.from_pretrained(folder, dtype, param_dtype)`
(both the dtype given) until every array is ready, and transformers' `AutoModelForCausalLM.from_pretrained(
folder, dtype=...)`. One untimed child per side first warms the page cache; then the sides alternate,
`--repeats` times each, and the median is reported.

Memory, in the child (GiB): its RSS after the imports and the backend start ("start"); the peak RSS during
the load ("peak in load": the child's VmHWM, which counts memory-mapped file pages while they are mapped;
ru_maxrss would also count the parent's RSS at the fork); its RSS once loaded and after a `gc.collect()`;
then every weight is read once (sum |w|; no whole-tensor temporary: a fused jitted reduction for ours,
4M-element chunks for torch; "all read": a loader may leave weights as memory-mapped file pages, resident
only once used, as transformers does for float32), and "peak" is the child's high-water mark after that:
the memory the loaded model really took at its worst. "weights" are the bytes the loaded model holds (its
parameters at the dtype, tied ones once): what this host must hold in any case. The ratios: peak / weights
(the issue's figure; the start, imports and runtime, counts in it) and (peak - start) / weights (what
loading added). Both sides must load the same weights (parameter count and sum |w| within 1e-3).

Measured here (2 CPUs, jax 0.10.2, torch 2.13, transformers 5.25), peak / weights, ours then transformers:
gpt2-large float32 1.09x vs 1.14x, bfloat16 1.18x vs 3.26x; the Llama float32 1.05x vs 1.09x, bfloat16 1.11x
vs 3.16x. The memory-mapped reader this replaced took 2.08x / 3.25x (gpt2-large) and 2.05x / 3.13x (Llama).
Results go to benchmarks/results/load_<model>.json.
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
RESULTS = os.path.join(REPO, "benchmarks", "results", "load_{model}.json")
RESULT_TAG = "LOAD_RESULT "
SIDES = ("ours", "transformers")
GiB = 2**30

# gpt2-large; and Llama 3.2 1B's shape (1.24B parameters, tied embedding).
MODELS = {
    "gpt2": dict(n_embd=1280, n_layer=36, n_head=20),
    "llama": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, max_position_embeddings=2048,
                  tie_word_embeddings=True, rope_theta=500000.0),
}


def folder_of(args) -> str:
    layers = f"-{args.n_layer}l" if args.n_layer else ""
    return os.path.join(os.path.abspath(args.workdir), f"{args.model}{layers}")


def build(model: str, folder: str, n_layer: str) -> dict:
    """A random float32 checkpoint of `model` in `folder`, written by transformers (in a child process)."""
    import torch
    import transformers

    fields = dict(MODELS[model])
    if n_layer:
        fields["n_layer" if model == "gpt2" else "num_hidden_layers"] = int(n_layer)
    torch.manual_seed(0)
    if model == "gpt2":
        net = transformers.GPT2LMHeadModel(transformers.GPT2Config(**fields))
    else:
        net = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
    net.to(torch.float32).save_pretrained(folder + ".tmp", safe_serialization=True)
    os.replace(folder + ".tmp", folder)
    return {}


def require_family(model: str) -> None:
    """Fails clearly when ptj cannot load `model` checkpoints (e.g. the Llama family is not registered yet)."""
    import importlib
    import importlib.util

    import prompt_tuning_jax  # noqa: F401
    from prompt_tuning_jax.models import base

    model_type = {"gpt2": "gpt2", "llama": "llama"}[model]
    if model_type not in base.FAMILIES and importlib.util.find_spec(f"prompt_tuning_jax.models.{model_type}"):
        importlib.import_module(f"prompt_tuning_jax.models.{model_type}")
    if model_type not in base.FAMILIES:
        raise SystemExit(f"ptj.from_pretrained cannot load model_type {model_type!r} checkpoints yet (families "
                         f"registered: {sorted(base.FAMILIES)}); --model {model} needs "
                         f"prompt_tuning_jax/models/{model_type}.py to register it")


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """This process's RSS high-water mark (VmHWM; ru_maxrss where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


CHUNK = 1 << 22  # elements summed at a time: reading every weight adds no copy of a whole tensor


def measured(load, read_all, rss_start: float) -> dict:
    """Times `load()`, then reads every weight once (`read_all(model)` -> sum |w|), with the memory figures."""
    import gc

    start = time.perf_counter()
    model, weights, parameters = load()
    seconds = time.perf_counter() - start
    peak_load, rss_loaded = peak_rss(), current_rss()
    gc.collect()
    rss_held = current_rss()
    fingerprint = read_all(model)
    return {"seconds": seconds, "rss_start": rss_start, "peak_load": peak_load, "rss_loaded": rss_loaded,
            "rss_held": rss_held, "peak_rss": peak_rss(), "rss_read": current_rss(), "weights": weights,
            "parameters": parameters, "fingerprint": fingerprint}


def load_ours(folder: str, dtype: str, model: str) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import prompt_tuning_jax as ptj

    require_family(model)
    abs_sum = jax.jit(lambda x: jnp.sum(jnp.abs(x), dtype=jnp.float32))
    abs_sum(jnp.zeros(8, jnp.dtype(dtype))).block_until_ready()  # the backend is up before the clock starts

    def load():
        net = ptj.from_pretrained(folder, dtype=getattr(jnp, dtype), param_dtype=getattr(jnp, dtype))
        leaves = jax.block_until_ready(jax.tree.leaves(nnx.state(net, nnx.Param)))
        return net, int(sum(x.nbytes for x in leaves)), int(sum(x.size for x in leaves))

    def read_all(net):  # abs and sum fuse in one jitted reduction: no temporary array
        return sum(float(abs_sum(x)) for x in jax.tree.leaves(nnx.state(net, nnx.Param)))

    device = jax.devices()[0]
    return {**measured(load, read_all, current_rss()), "backend": f"jax {jax.__version__} on {device.platform}"}


def load_transformers(folder: str, dtype: str, model: str) -> dict:
    import torch
    import transformers

    torch.set_grad_enabled(False)
    torch.zeros(1)

    def load():
        net = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
        params = list(net.parameters())  # tied ones once
        return net, int(sum(p.numel() * p.element_size() for p in params)), int(sum(p.numel() for p in params))

    def read_all(net):
        total = 0.0
        for p in net.parameters():
            flat = p.reshape(-1)
            total += sum(float(flat[i:i + CHUNK].abs().sum(dtype=torch.float32)) for i in range(0, flat.numel(), CHUNK))
        return total

    return {**measured(load, read_all, current_rss()),
            "backend": f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
                       f"transformers {transformers.__version__}"}


def check(model: str) -> dict:
    """{} when ptj loads `model` checkpoints, else {'error': why} (asked in a child: the parent stays light)."""
    try:
        require_family(model)
    except SystemExit as e:
        return {"error": str(e)}
    return {}


CHILDREN = {"ours": load_ours, "transformers": load_transformers, "build": build, "check": check}


def run_child(kind: str, *argv: str) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", kind, *argv], env=env,
                          capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise SystemExit(f"the {kind} child failed (exit {proc.returncode})")


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(".safetensors"))


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("jax", "flax", "numpy", "safetensors", "torch", "transformers")}


def commit() -> str:
    """The commit measured (HEAD; the working tree may differ from it)."""
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() or "unknown"


def summarize(runs: list[dict]) -> dict:
    med = lambda key: float(np.median([r[key] for r in runs]))  # noqa: E731
    above = lambda key: float(np.median([(r[key] - r["rss_start"]) / GiB for r in runs]))  # noqa: E731
    weights = runs[0]["weights"]
    return {"seconds": [r["seconds"] for r in runs], "median_seconds": med("seconds"),
            "start_gib": med("rss_start") / GiB, "peak_load_gib": med("peak_load") / GiB,
            "peak_gib": med("peak_rss") / GiB, "loaded_minus_start_gib": above("rss_loaded"),
            "held_minus_start_gib": above("rss_held"), "read_minus_start_gib": above("rss_read"),
            "peak_minus_start_gib": above("peak_rss"), "weights_gib": weights / GiB,
            "peak_over_weights": med("peak_rss") / weights,
            "added_over_weights": float(np.median([(r["peak_rss"] - r["rss_start"]) / weights for r in runs])),
            "parameters": runs[0]["parameters"], "fingerprint": runs[0]["fingerprint"], "backend": runs[0]["backend"]}


def report(args, folder: str, results: dict, load_before: float) -> dict:
    file_gib = disk_bytes(folder) / GiB
    print(f"{args.model}{f' ({args.n_layer} layers)' if args.n_layer else ''}: {folder}, {file_gib:.2f} GiB of "
          f"float32 safetensors; median of {args.repeats} fresh processes per side, warm page cache; "
          f"host {os.cpu_count()} CPUs; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    first = results[args.dtypes[0]]
    print(f"  ours: {first['ours']['backend']}; transformers: {first['transformers']['backend']}")
    print("| dtype | side | load s | weights GiB | start GiB | peak in load GiB | loaded - start | after gc - start "
          "| all read - start | peak GiB | peak / weights | (peak - start) / weights |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios = {}
    for dtype, sides in results.items():
        o, t = sides["ours"], sides["transformers"]
        if o["parameters"] != t["parameters"] or abs(o["fingerprint"] - t["fingerprint"]) > 1e-3 * t["fingerprint"]:
            raise SystemExit(f"{dtype}: the sides did not load the same weights: {o['parameters']} parameters, "
                             f"sum |w| {o['fingerprint']} (ours) vs {t['parameters']}, {t['fingerprint']}")
        for side in SIDES:
            r = sides[side]
            print(f"| {dtype} | {side} | {r['median_seconds']:.2f} | {r['weights_gib']:.2f} | {r['start_gib']:.2f} | "
                  f"{r['peak_load_gib']:.2f} | {r['loaded_minus_start_gib']:.2f} | {r['held_minus_start_gib']:.2f} | "
                  f"{r['read_minus_start_gib']:.2f} | {r['peak_gib']:.2f} | {r['peak_over_weights']:.2f}x | "
                  f"{r['added_over_weights']:.2f}x |")
        ratios[dtype] = {"seconds ours / transformers": o["median_seconds"] / t["median_seconds"],
                         "peak RSS ours / transformers": o["peak_gib"] / t["peak_gib"]}
        print(f"| {dtype} | ours / transformers | {ratios[dtype]['seconds ours / transformers']:.2f}x | | | | | | | "
              f"{ratios[dtype]['peak RSS ours / transformers']:.2f}x | | |")
    return {"command": " ".join(["python", "benchmarks/load.py", *sys.argv[1:]]), "commit": commit(),
            "model": args.model, "n_layer": args.n_layer, "folder": folder, "file_gib": file_gib,
            "repeats": args.repeats, "cpus": os.cpu_count(), "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0], "versions": versions(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results, "ratios": ratios}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="gpt2",
                   help="gpt2: gpt2-large's shape; llama: Llama 3.2 1B's shape (needs ptj's Llama family)")
    p.add_argument("--n_layer", type=int, default=0, help="layers (0: the model's own); fewer for a smoke run")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    p.add_argument("--workdir", default="/tmp/ptj_load", help="where the random checkpoint is written once")
    p.add_argument("--repeats", type=int, default=3, help="timed loads per side and dtype (median reported)")
    p.add_argument("--sides", default=",".join(SIDES), help="comma-separated: ours, transformers")
    p.add_argument("--results", default=RESULTS, help="the JSON file to write ('' for none; default "
                   "benchmarks/results/load_<model>.json)")
    p.add_argument("--_child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("_args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        print(RESULT_TAG + json.dumps(CHILDREN[args._child](*args._args)), flush=True)
        return
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not set(args.dtypes) <= {"float32", "bfloat16"} or not set(sides) <= set(SIDES) or args.repeats < 1:
        p.error("--dtypes takes float32 and/or bfloat16, --sides ours and/or transformers, --repeats >= 1")
    if args.model != "gpt2" and "ours" in sides:
        missing = run_child("check", args.model).get("error")
        if missing:
            raise SystemExit(missing)
    folder = folder_of(args)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        print(f"writing a random {args.model} checkpoint to {folder} ...", file=sys.stderr, flush=True)
        run_child("build", args.model, folder, str(args.n_layer or ""))
    load_before = os.getloadavg()[0]
    for dtype in args.dtypes[:1]:
        for side in sides:  # untimed: every side reads from a warm page cache afterwards
            run_child(side, folder, dtype, args.model)
    runs = {dtype: {side: [] for side in sides} for dtype in args.dtypes}
    for dtype in args.dtypes:
        for r in range(args.repeats):
            for side in sides:
                print(f"{dtype} repeat {r + 1}/{args.repeats}: {side} ...", file=sys.stderr, flush=True)
                runs[dtype][side].append(run_child(side, folder, dtype, args.model))
    results = {dtype: {side: summarize(rs) for side, rs in by_side.items()} for dtype, by_side in runs.items()}
    if set(sides) != set(SIDES):
        print(json.dumps(results, indent=1))
        return
    summary = report(args, folder, results, load_before)
    if args.results:
        results_file = args.results.format(model=args.model)
        os.makedirs(os.path.dirname(os.path.abspath(results_file)), exist_ok=True)
        with open(results_file, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
