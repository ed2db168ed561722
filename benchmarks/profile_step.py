"""Where one prompt-tuning train step spends its time: attention, MLP, LM head, loss, optimizer, other, host.

    python benchmarks/profile_step.py [--model gpt2] [--n_layer N] [--batch 8] [--length 128]
                                      [--prompt_length 20] [--steps 3] [--dtype float32|bfloat16]
                                      [--top N] [--trace_dir DIR]

The step is `benchmarks/train_step.py`'s (ours: a prefix prompt on a random-weight
GPT-2, AdamW, the LM loss on L tokens, the same batch). It is run under
`jax.profiler.trace`; every XLA:CPU thunk event of the step's program carries
the name of the HLO instruction it ran (`hlo_op`). The compiled module's text
gives each instruction's `op_name`, the JAX name stack it came from, and the
models open a `jax.named_scope` for each part: `attention` (layer norm, q/k/v,
scores, softmax, weighted sum, output projection, residual), `mlp`, `lm_head`
(the tied-embedding logits), `loss` (log-softmax pick), `optimizer` (the optax
update). Backward ops keep their forward op's scope (`transpose(jvp(attention))`).
Everything else (embedding lookups, prompt insertion, the final layer norm,
gradient scaling, metrics) is `other`.

Per step, "device busy" is the union of the thunk intervals (thunks can run
side by side on the CPU's threads), and "host" is the wall time of
`Trainer.train_step` plus waiting for its results minus that union: Python
dispatch, `put_batch` (numpy -> device arrays), and the gaps between thunks.
Each part's share of the busy time is its share of the summed thunk time.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

import train_step  # benchmarks/train_step.py (this script's folder is on sys.path)

PARTS = ("attention", "mlp", "lm_head", "loss", "optimizer")


def op_names(hlo_text: str) -> dict[str, str]:
    """Compiled HLO text -> {instruction name: the JAX name stack in its metadata op_name}."""
    names = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{([^}]*)\}", hlo_text, flags=re.MULTILINE):
        op_name = re.search(r'op_name="([^"]*)"', m.group(2))
        names[m.group(1)] = op_name.group(1) if op_name else ""
    return names


def part_of(op_name: str) -> str:
    """The part a JAX name stack belongs to; the innermost named scope wins (e.g. a loss inside no model scope)."""
    found = [(op_name.rfind(part), part) for part in PARTS if re.search(rf"\b{part}\b", op_name)]
    return max(found)[1] if found else "other"


def thunk_events(trace_dir: str, module: str):
    """(start ns, end ns, hlo op) of every XLA:CPU thunk of `module` in the newest trace under trace_dir."""
    import jax

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)[-1]
    events = []
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            for e in line.events:
                stats = dict(e.stats)
                if stats.get("hlo_module") == module and "hlo_op" in stats:
                    events.append((e.start_ns, e.start_ns + e.duration_ns, stats["hlo_op"]))
    return events


def busy_ns(events) -> float:
    """Length of the union of [start, end) intervals."""
    total, end = 0.0, -np.inf
    for s, e, _ in sorted(events):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def profile(args) -> None:
    import jax

    with tempfile.TemporaryDirectory() as folder:
        train_step.build_checkpoint(args, folder)
        trainer, batch, _ = train_step.ours_trainer(args, folder)
        compiled = trainer._step.lower(trainer.trainable, trainer.opt_state, trainer.state.frozen,
                                       trainer.state.put_batch(batch), np.int32(0)).compile()
        hlo = compiled.as_text()
        module = re.search(r"^HloModule ([\w.\-]+)", hlo, flags=re.MULTILINE).group(1)
        names = op_names(hlo)

        def step():
            metrics = trainer.train_step(batch)
            jax.block_until_ready((trainer.trainable, trainer.opt_state, metrics))

        for _ in range(2):
            step()
        trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="ptj_profile_")
        walls = []
        with jax.profiler.trace(trace_dir):
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step()
                walls.append(time.perf_counter() - t0)
        events = thunk_events(trace_dir, module)
    report(args, walls, events, names, trace_dir)


def part_table(events, names, part_of, parts, n: int, wall: float, unit: str, width: int, host_note: str = ""):
    """Prints each part's ms per `unit` (its share of the summed thunk time, scaled to the busy time) and
    % of the wall time, then the host's (wall minus busy); -> the summed ns of each HLO instruction."""
    per_part, per_op = defaultdict(float), defaultdict(float)
    for s, e, op in events:
        per_part[part_of(names.get(op, ""))] += e - s
        per_op[op] += e - s
    summed, busy = sum(per_part.values()), busy_ns(events)
    print(f"{'part':<{width}}{'ms/' + unit:>10}{'% of ' + unit:>12}")
    for part in parts + ("other",):
        ms = per_part[part] / summed * busy / n / 1e6
        print(f"{part:<{width}}{ms:>10.1f}{100 * ms * 1e6 * n / wall:>11.1f}%")
    host = max(wall - busy, 0.0)
    print(f"{'host':<{width}}{host / n / 1e6:>10.1f}{100 * host / wall:>11.1f}%{host_note}")
    return per_op


def report(args, walls, events, names, trace_dir) -> None:
    if not events:
        raise SystemExit(f"no thunk events of the step's program in {trace_dir} (is this XLA:CPU?)")
    wall, n = float(np.sum(walls)) * 1e9, args.steps
    print(f"one prompt-tuning train step: {args.model} ({args.n_layer or 'all'} layers), batch {args.batch} x "
          f"{args.length}, prefix prompt {args.prompt_length}, {args.dtype}; {n} traced steps, "
          f"{wall / n / 1e6:.0f} ms/step wall; {len(events) // n} thunks/step")
    per_op = part_table(events, names, part_of, PARTS, n, wall, "step", 12, "   (dispatch, put_batch, gaps)")
    if args.top:
        print(f"the {args.top} most expensive instructions (ms/step, part, HLO name, JAX name stack):")
        for op, ns in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {ns / n / 1e6:8.1f}  {part_of(names.get(op, '')):<10} {op:<28} {names.get(op, '')[-110:]}")
    print(f"trace: {trace_dir} (open with TensorBoard's profile plugin or xprof)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", choices=["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
    p.add_argument("--n_layer", type=int, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--prompt_length", type=int, default=20)
    p.add_argument("--steps", type=int, default=3, help="traced steps")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--top", type=int, default=0, help="also list the N most expensive HLO instructions")
    p.add_argument("--trace_dir", default=None, help="keep the trace here (default: a new temporary folder)")
    profile(p.parse_args(argv))


if __name__ == "__main__":
    if train_step.REPO not in sys.path:
        sys.path.insert(0, train_step.REPO)
    main()
