"""Input pipeline vs train step: can TrainIterator + Prefetch feed the prompt-tuning step?

    python benchmarks/input_pipeline.py [--model gpt2] [--n_layer N] [--batch 32]
                                        [--max_input_length 128] [--steps 8] [--prefetch 2]

1. Tokenizes the real SST-2 training split (`get_task("sst2")`, the shared
   files under $PTJ_SHARED_DATA, default ../shared/data) with the real GPT-2
   tokenizer (`<shared data>/gpt2_tokenizer`), as the `train` command does:
   inputs up to `--max_input_length` tokens, targets " negative" / " positive"
   up to `--max_target_length`. The one-off tokenization time is printed.
2. Pipeline alone: `measure_throughput` of `TrainIterator(batch 32)` and of
   `Prefetch(TrainIterator(...))`: examples/s and tokens/s (real input + target
   tokens, i.e. the attention and target masks summed).
3. Step alone: the prompt-tuning train step (prefix prompt of `--prompt_length`,
   objective "lm", the paper's Adafactor) on a randomly initialised GPT-2 of the
   `--model` size (`--n_layer` fewer layers for quick CPU runs), fed from a
   pre-built list of `--steps` batches, after one compile per batch shape in
   that list (the pipeline buckets input lengths to 16 / 32 / 64 / 128).
4. The same `--steps` batches (same seed, so the same shapes: nothing compiles)
   fed by `Prefetch(TrainIterator(...))`, as `fit` does. Both loops dispatch
   like `fit` (no per-step block; one `block_until_ready` at the end).

The table shows the pipeline's examples/s next to the step's with their ratio
(> 1: the pipeline produces batches faster than the step eats them), and the
step fed by Prefetch over the step fed from memory (1.00: the input never
starves the step; below 1: time lost waiting for input, or to the prefetch
thread competing with XLA for the CPU cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO)


def batch_tokens(batch) -> int:
    return int(batch["attention_mask"].sum() + batch["target_mask"].sum())


def run_steps(trainer, batches, steps: int):
    """Feeds `steps` batches from `batches` to the trainer as `fit` does; returns (seconds, examples, tokens)."""
    import jax

    examples = tokens = 0
    metrics = None
    iterator = iter(batches)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
        examples += int(np.count_nonzero(batch["weight"]))
        tokens += batch_tokens(batch)
        metrics = trainer.train_step(batch)
    jax.block_until_ready((trainer.trainable, trainer.opt_state, metrics))
    return time.perf_counter() - t0, examples, tokens


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", choices=["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
    p.add_argument("--n_layer", type=int, default=None, help="fewer layers than the preset (quick CPU runs)")
    p.add_argument("--task", default="sst2")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: <shared data>/gpt2_tokenizer)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max_input_length", type=int, default=128)
    p.add_argument("--max_target_length", type=int, default=8)
    p.add_argument("--prompt_length", type=int, default=20)
    p.add_argument("--steps", type=int, default=8, help="steps per timed loop")
    p.add_argument("--pipeline_batches", type=int, default=300, help="batches timed for the pipeline alone")
    p.add_argument("--prefetch", type=int, default=2, help="Prefetch queue size (fit's default)")
    p.add_argument("--rounds", type=int, default=2,
                   help="repeat the two step loops, alternating; the fastest of each is kept (other load on the "
                        "machine only ever slows a loop down)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    load_before = os.getloadavg()[0]
    import jax
    import jax.numpy as jnp

    import prompt_tuning_jax as ptj
    from prompt_tuning_jax.data import get_task
    from prompt_tuning_jax.data.pipeline import Prefetch, TrainIterator, measure_throughput, tokenize_task
    from prompt_tuning_jax.data.sources import shared_data_dir
    from prompt_tuning_jax.models import init_random, preset
    from prompt_tuning_jax.training.optim import make_optimizer
    from prompt_tuning_jax.training.trainer import Trainer

    # --- data -------------------------------------------------------------------------
    tokenizer = ptj.load_tokenizer(args.tokenizer or shared_data_dir() / "gpt2_tokenizer")
    task = get_task(args.task)
    t0 = time.perf_counter()
    tok = tokenize_task(task, "train", tokenizer, max_input_length=args.max_input_length,
                        max_target_length=args.max_target_length, target_prefix=" ")
    t_tokenize = time.perf_counter() - t0
    new_iterator = lambda: TrainIterator(tok, args.batch, seed=args.seed)

    pipe = measure_throughput(new_iterator(), num_batches=args.pipeline_batches)
    with Prefetch(new_iterator(), size=args.prefetch) as stream:
        pipe_prefetch = measure_throughput(stream, num_batches=args.pipeline_batches)

    # --- model and step ---------------------------------------------------------------
    config = preset(args.model)
    if args.n_layer:
        config = dataclasses.replace(config, n_layer=args.n_layer)
    dtype = getattr(jnp, args.dtype)
    model = init_random(config, dtype=dtype, param_dtype=dtype, seed=args.seed)
    prompted = ptj.with_prompt(model, args.prompt_length, placement="prefix")
    trainer = Trainer(prompted, make_optimizer(), objective="lm")
    del model, prompted

    it = new_iterator()
    listed = [next(it) for _ in range(args.steps)]
    shapes = {}
    for b in listed:
        shapes.setdefault((b["input_ids"].shape[1], b["target_ids"].shape[1]), b)
    t0 = time.perf_counter()
    for b in shapes.values():  # one compile per (input, target) length in the timed batches
        jax.block_until_ready(trainer.train_step(b))
    t_compile = time.perf_counter() - t0

    fed_list, fed_prefetch = [], []
    for _ in range(args.rounds):
        fed_list.append(run_steps(trainer, listed, args.steps))
        with Prefetch(new_iterator(), size=args.prefetch) as stream:
            fed_prefetch.append(run_steps(trainer, stream, args.steps))
    best = lambda runs: min(runs, key=lambda r: r[0])
    s_list, ex_list, tk_list = best(fed_list)
    s_pref, ex_pref, tk_pref = best(fed_prefetch)
    step_ex = ex_list / s_list

    # --- report -----------------------------------------------------------------------
    import torch  # only for the thread-count line: tokenizers run in Rust, the step in XLA

    dev = jax.devices()[0]
    lengths = tok.input_lengths
    print(f"input pipeline vs train step: {args.task} train ({len(tok)} examples, input tokens mean "
          f"{lengths.mean():.1f} / max {lengths.max()}), batch {args.batch}, inputs <= {args.max_input_length}, "
          f"targets <= {args.max_target_length}")
    print(f"step: {args.model} ({config.n_layer} layers, random weights), prefix prompt {args.prompt_length}, "
          f"objective lm, Adafactor, {args.dtype}; jax {jax.__version__} on {dev.platform}; "
          f"{len(os.sched_getaffinity(0))} CPUs usable (torch would use {torch.get_num_threads()} threads); "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"tokenization (one-off): {t_tokenize:.1f} s; compile: {len(shapes)} shapes "
          f"{sorted(shapes)} in {t_compile:.1f} s; step loops: {args.steps} steps, best of {args.rounds}")
    print(f"{'':38s}{'examples/s':>12s}{'tokens/s':>12s}{'ms/batch':>10s}")
    rows = [("pipeline: TrainIterator", pipe["examples_per_s"], pipe["tokens_per_s"], 1e3 / pipe["batches_per_s"]),
            (f"pipeline: Prefetch({args.prefetch}) of it", pipe_prefetch["examples_per_s"],
             pipe_prefetch["tokens_per_s"], 1e3 / pipe_prefetch["batches_per_s"]),
            ("step fed from a pre-built list", step_ex, tk_list / s_list, 1e3 * s_list / args.steps),
            ("step fed by Prefetch(TrainIterator)", ex_pref / s_pref, tk_pref / s_pref, 1e3 * s_pref / args.steps)]
    for name, ex, tk, ms in rows:
        print(f"{name:38s}{ex:12.1f}{tk:12.0f}" + (f"{ms:10.1f}" if ms >= 10 else f"{ms:10.3f}"))
    if args.rounds > 1:
        per = lambda runs: " ".join(f"{1e3 * r[0] / args.steps:.0f}" for r in runs)
        print(f"ms/step of each round: from list {per(fed_list)} | by Prefetch {per(fed_prefetch)}")
    ratio_pipe = pipe_prefetch["examples_per_s"] / step_ex
    starve = (ex_pref / s_pref) / step_ex
    print(f"ratio pipeline (Prefetch) / step: {ratio_pipe:.0f}x  (the pipeline needs "
          f"{100 / ratio_pipe:.2g}% of a step's time per batch)")
    print(f"step fed by Prefetch / fed from list: {starve:.3f}  (1.0: the input never starves the step; "
          "compare with the spread of the rounds above)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
