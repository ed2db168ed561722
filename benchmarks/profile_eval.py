"""Where the released-prompt eval's time goes, per batch: encoder and decoder attention and MLP, the decoder's
cross-attention, the LM head, other ops and the host, from a `jax.profiler` trace.

    python benchmarks/profile_eval.py [--size small|base] [--mode generate|rank] [--batches 4] [--top N]

The setting is `benchmarks/t5_eval.py`'s (the released SST-2 prompt, P = 100, the real T5 tokenizer,
SST-2 validation in batches of 32, a random checkpoint). The batches traced are the eval's own, of its
most common shape, after a warm-up call (no compile in the trace). Each XLA:CPU thunk carries its HLO
instruction; the compiled module's text gives the JAX name stack of each, and T5 names its parts:
`encoder` / `decoder`, `attention` (self-attention), `cross_attention`, `mlp`, `lm_head` (the decode loop's
logits, or rank classification's log-probabilities). Everything else (embeddings, biases, argmax, the
loop's bookkeeping) is `other`. "host" is the wall time minus the union of the thunk intervals: Python
dispatch, putting the batch on the device, gaps. Thunks may run side by side on the CPU's threads; each
part gets its share of the summed thunk time.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import profile_step  # noqa: E402 - benchmarks/profile_step.py: op names, thunk events, busy time
import t5_eval  # noqa: E402 - the checkpoint and setting

PARTS = ("encoder/attention", "encoder/mlp", "decoder/attention", "decoder/cross_attention", "decoder/mlp",
         "lm_head")


def part_of(op_name: str) -> str:
    if re.search(r"\blm_head\b", op_name):
        return "lm_head"
    stack = "encoder" if re.search(r"\bencoder\b", op_name) else "decoder" if re.search(r"\bdecoder\b", op_name) \
        else None
    for part in ("cross_attention", "attention", "mlp"):
        if stack and re.search(rf"\b{part}\b", op_name):
            return f"{stack}/{part}"
    return "other"


def scorer_for(args, model_path: str):
    from prompt_tuning_jax import experiments as ptj
    from prompt_tuning_jax.decoding import DecodeSpec
    from prompt_tuning_jax.experiments import loading
    from prompt_tuning_jax.experiments.scoring import TaskScorer
    from prompt_tuning_jax.pretrained_prompts import released_prompt

    prompt_file = released_prompt("t5_1_1_lm100k_base/sst2.npy")
    model = ptj.ModelSpec(model_path)
    prompt = ptj.PromptSpec(length=100, init="file", file=prompt_file)
    data = ptj.DataSpec("taskless_glue_sst2_v200_examples", feature_lengths={"inputs": 512, "targets": 8},
                        batch_size=t5_eval.BATCH, eval_split="validation")
    task = data.tasks()[0]
    loaded = loading.load_prompted(model, prompt, [task], loading.make_mesh((1, 1)), prompt_file)
    tok = loading.tokenize_split(task, data.eval_split, loaded, data)
    return TaskScorer(loaded, task, tok, data, scoring=args.mode, decoding=DecodeSpec(max_new_tokens=8),
                      padding_side=model.padding_side)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(t5_eval.SIZES), default="small")
    p.add_argument("--mode", choices=("generate", "rank"), default="generate")
    p.add_argument("--batches", type=int, default=4, help="batches traced")
    p.add_argument("--top", type=int, default=0, help="also list the N most expensive instructions")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "ptj-bench-t5"))
    args = p.parse_args(argv)
    import jax

    scorer = scorer_for(args, t5_eval.make_checkpoint(args.size, args.cache))
    batches = list(scorer.batches)
    shape = collections.Counter(b["input_ids"].shape for b in batches).most_common(1)[0][0]
    batches = [b for b in batches if b["input_ids"].shape == shape][:args.batches]
    if args.mode == "generate":
        gen = scorer.generator
        lowered = gen.lower({k: jax.ShapeDtypeStruct((shape[0], *v.shape[1:]), v.dtype) for k, v in
                             batches[0].items() if k in ("input_ids", "attention_mask", "task_index")})
        call = gen.generate
    else:
        pred, labels = scorer.predictor, scorer.labels
        lowered = pred.lower({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batches[0].items()},
                             tuple(jax.ShapeDtypeStruct(np.shape(x), np.int32) for x in labels))
        call = lambda b: pred._dispatch(b, *labels)  # noqa: E731
    hlo = lowered.compile().as_text()
    module = re.search(r"^HloModule ([\w.\-]+)", hlo, flags=re.MULTILINE).group(1)
    names = profile_step.op_names(hlo)
    jax.block_until_ready(call(batches[0]))  # compiled by the first call, outside the trace
    trace_dir = tempfile.mkdtemp(prefix="ptj_profile_eval_")
    walls = []
    with jax.profiler.trace(trace_dir):
        for b in batches:
            start = time.perf_counter()
            jax.block_until_ready(call(b))
            walls.append(time.perf_counter() - start)
    events = profile_step.thunk_events(trace_dir, module)
    if not events:
        raise SystemExit(f"no thunk events of the eval's program in {trace_dir} (is this XLA:CPU?)")
    wall, n = float(np.sum(walls)) * 1e9, len(walls)
    print(f"released-prompt eval, {args.mode}: T5 {args.size}, batch {shape[0]} x {shape[1]} input tokens + P 100; "
          f"{n} traced batches, {wall / n / 1e6:.0f} ms/batch wall")
    per_op = profile_step.part_table(events, names, part_of, PARTS, n, wall, "batch", 26)
    for op, ns in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {ns / n / 1e6:8.1f}  {part_of(names.get(op, '')):<24} {op:<28} {names.get(op, '')[-100:]}")


if __name__ == "__main__":
    main()
