"""SST-2 prompt tuning (and prefix tuning) end to end: training and rank-classification eval throughput, ours vs PEFT.

    python benchmarks/sst2_epoch.py [--model gpt2] [--n_layer N] [--batch_size 16] [--prompt_length 20]
                                    [--steps 50] [--warmup 2] [--rounds 1] [--eval_examples 872]
                                    [--skip_eval] [--sides ours,ours_grouped,peft_a,peft_b]
    python benchmarks/sst2_epoch.py --sides ours,ours_prefix,peft_a,peft_prefix ...   # prefix tuning beside

Builds a random-weight GPT-2 of the named size (`--n_layer` keeps the width and the
real 50,257-token vocabulary but fewer layers) with transformers, then trains a
prefix soft prompt on the real SST-2 training sentences and scores the GLUE SST-2
validation set by rank classification, on every side in its own child process
(clean peak-memory numbers; never two thread pools at once):

    ours          prompt_tuning_jax as `train` runs it: `loading.load_prompted` (ModelSpec,
                  PromptSpec(placement="prefix")), `loading.tokenize_split`, `TrainIterator`
                  (default bucketing: inputs padded to a multiple of 16, targets to 8) fed
                  through `fit` (Prefetch, dispatch without blocking) to `Trainer` with the
                  objective `loading.objective` picks for an LM-head task ("lm"); eval:
                  `TaskScorer(scoring="rank")`, the path `experiments.evaluate` takes.
    ours_grouped  the same with `TrainIterator(group_by_length=50)` (when the installed
                  pipeline has the option): windows of 50 batches sorted by length.
    peft_a        `get_peft_model(GPT2LMHeadModel, PromptTuningConfig(task_type="CAUSAL_LM",
                  num_virtual_tokens=P))`, a torch DataLoader over shuffled examples
                  (RandomSampler) with `DataCollatorForSeq2Seq(padding="longest")`: each batch
                  padded to its longest example, labels -100 everywhere but the label word.
                  Eval in dataset order (HF's SequentialSampler), same collator.
    peft_b        the same with transformers' `LengthGroupedSampler` (what `group_by_length=True`
                  makes: megabatches of 50 x batch sorted by length, the longest batch first),
                  for training and, as the HF Trainer does, for eval.

Prefix tuning (Li & Liang, 2021), only when `--sides` names them (the default is the four above):

    ours_prefix   `ours` with METHOD 'prefix:P' (`PromptSpec(method="prefix:P")`, P = `--prompt_length`):
                  no prompt in the input; a trainable table [L, 2, P, N, D] of keys and values
                  (`model.prefix`, `models/prefix.py`) that every row's self-attention sees before
                  its own, in every layer; what trains is the method's `spec.trainable(prompted)`
                  (the table). Same loader, Trainer, objective and `TaskScorer` as `ours`.
    peft_prefix   `get_peft_model(GPT2LMHeadModel, PrefixTuningConfig(task_type="CAUSAL_LM",
                  num_virtual_tokens=P))` (no projection: `prompt_encoder.embedding` [P, L*2*N*D]
                  trains), otherwise exactly `peft_a` (RandomSampler, pad to longest, AdamW, eval in
                  dataset order). Built with `get_peft_model` and the initial values copied in (PEFT
                  refuses `PeftModel.from_pretrained(..., is_trainable=True)` for prompt learning).

    Both start from the same table: N(0, 1) (both libraries' own initializer) drawn by the parent
    from `--seed` (`init_prefix.npy`, [L, 2, P, N, D]), put into our `model.prefix.table` and, as
    `models.prefix.to_flat(table)` ([P, L*2*N*D], PEFT's layout), into PEFT's
    `prompt_encoder['default'].embedding.weight`. Eval restores that table on both sides; the eval
    table's "agreement with ours" of `peft_prefix` is with `ours_prefix` (of the prompt sides, with
    `ours`). Extra ratio rows: ours prefix / PEFT prefix, and ours prefix / ours (prefix vs prompt
    tuning, same loader and scorer). FLOPs of the prefix sides: nothing of the prefix runs through
    the blocks; every input and target token attends to the P prefix positions in every layer
    (`analytic_gpt2_flops` with prompt_len 0 and context P; "useful" is `least_prompt_tuning_flops`
    without its prompt pass, `least_prefix_tuning_flops` here). PEFT's logits cover only the real
    positions (no virtual tokens), so its eval reads the label token j at position j - 1.

The same work on every side
---------------------------
Model: the same checkpoint folder, dropout 0. Data: the examples `get_task("sst2")`
gives (input "sentence: <text>", target " negative" / " positive", one GPT-2 token),
tokenized once by `pipeline.tokenize_task` (inputs <= `--max_input_length`, targets
<= `--max_target_length`); the PEFT sides read the parent's token ids, and ours
tokenizes itself through `loading.tokenize_split` (the script checks that the ids
are identical). Prompt: the same [P, H] initial array on every side. Loss: mean
NLL of the target tokens (the label word) predicted from the prompted input
(PEFT: labels -100 elsewhere). Optimizer: AdamW (lr `--lr` 1e-2, betas 0.9 /
0.999, eps 1e-8, decoupled weight decay `--weight_decay` 0.01) on the prompt
only: `make_optimizer("adamw")` and `torch.optim.AdamW`. Eval: both label strings
scored after every input with the initial prompt restored (so every side scores
the same prompt: the report shows how often the predictions agree with ours),
`--eval_batch_size` examples per batch.

What differs is each library's own way of doing it: ours pads to a few bucket
lengths (compiled once each), computes the LM head only at the target positions
and, in the checkout measured, may skip repeated work (GPT-2 rank classification
runs each input once for all labels; a prefix prompt may run once per batch); HF
runs one full row per (example, label), computes logits at every position of
every row (PEFT's virtual tokens included) and pads each batch to its longest row.

Measurement
-----------
Timed: `--steps` consecutive training steps from the start of the seeded epoch
order, as one wall-clock interval that includes building the batches (ours:
TrainIterator in fit's Prefetch thread; PEFT: DataLoader + collator), moving
them to the device, forward, backward to the prompt, the AdamW update, and a
final `block_until_ready` (JAX) or the loss read each step (torch, synchronous
on CPU). The default 50 steps are one HF megabatch (and one window of ours
grouped), so the grouped sides see a whole sorted window, not only its longest
batches. Warm-up first (untimed): ours runs one step on a batch of every
(input, target) shape the timed window will see (read ahead from a twin
iterator with the same seed: the timed loop never compiles; "first step" is the
first of these, tracing + compilation, "compile" all of them), then more up to
`--warmup` steps; PEFT runs its first `--warmup` batches. Padding fraction =
1 - real tokens / positions (input and target positions of the batches, the
prompt not counted); tokens/s counts real tokens. Eval: ours scores the split
once (compiling each eval shape: "first pass") then again, timed; PEFT runs
`--warmup` untimed batches, then the timed pass. `--rounds R` runs every side R
times, alternating, and keeps each side's fastest (other load only ever slows
a run down).

Memory: the process RSS sampled every 5 ms (psutil): "RSS loaded" with the model
and optimizer built and every weight read once, "peak RSS" during the timed
training steps, "eval peak" during the timed eval pass.

FLOPs (`benchmarks/flops.py`): "useful" = `least_prompt_tuning_flops`, the least
work of the task on the real tokens (the prompt once per batch, each input once,
the LM head only where a label token is predicted: the same definition on every
side); "executed" = the padded work each side really does: XLA's cost analysis
of the compiled step or scorer (ours; all ops) or `analytic_gpt2_flops` on the
padded batch with the prompt in every row and the LM head at every position
(PEFT, as HF computes it). Achieved GFLOP/s is over the timed interval;
utilisation is against a dense 2048^3 float32 matmul timed in the same child
before the warm-up and after the run, the higher of the two (`jax_matmul_peak`
for ours, `torch_matmul_peak` for PEFT; other load only lowers it).
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import flops
from train_step import RSSSampler

RESULT_TAG = "RESULT_JSON "
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO)

SIDES = {
    "ours": "prompt_tuning_jax",
    "ours_grouped": "prompt_tuning_jax, length-grouped",
    "peft_a": "PEFT-A (shuffled, pad to longest)",
    "peft_b": "PEFT-B (group_by_length)",
    "ours_prefix": "prompt_tuning_jax, prefix tuning",
    "peft_prefix": "PEFT prefix tuning (shuffled, pad to longest)",
}
DEFAULT_SIDES = ("ours", "ours_grouped", "peft_a", "peft_b")  # the prefix sides run when --sides names them
PREFIX_SIDES = ("ours_prefix", "peft_prefix")
GROUP_WINDOW = 50       # batches per sorted window: transformers' megabatch multiplier
TARGET_PREFIX = " "     # GPT-2 targets follow the input after a space (the model's `target_prefix`)


def shared_data_dir() -> str:
    return os.environ.get("PTJ_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))


def tokenizer_dir() -> str:
    return os.path.join(shared_data_dir(), "gpt2_tokenizer")


def token_digest(input_ids, target_ids) -> str:
    """sha1 of all ids and lengths: the same value on two sides means the same tokenized data."""
    h = hashlib.sha1()
    for x, y in zip(input_ids, target_ids):
        h.update(np.int32(len(x)).tobytes() + np.asarray(x, np.int32).tobytes())
        h.update(np.int32(len(y)).tobytes() + np.asarray(y, np.int32).tobytes())
    return h.hexdigest()


def model_dims(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    return {"n_layer": cfg["n_layer"], "d": cfg["n_embd"], "vocab": cfg["vocab_size"]}


def write_initial_prefix(args, folder: str) -> None:
    """The prefix sides' initial keys and values, drawn from `--seed`: `init_prefix.npy` [L, 2, P, N, D] (ours)
    and `init_prefix_flat.npy` [P, L*2*N*D] (PEFT's `prompt_embeddings`, by `models.prefix.to_flat`).

    N(0, 1), the initializer both libraries use for an unprojected prefix. Written on every run (cheap), so a
    reused `--checkpoint_dir` always holds the table for this `--prompt_length`.
    """
    from prompt_tuning_jax.models.prefix import from_flat, to_flat

    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    shape = (cfg["n_layer"], 2, args.prompt_length, cfg["n_head"], cfg["n_embd"] // cfg["n_head"])
    table = np.random.default_rng([args.seed, 1]).standard_normal(shape).astype(np.float32)
    flat = to_flat(table)
    assert np.array_equal(from_flat(flat, shape), table), "to_flat / from_flat disagree"
    np.save(os.path.join(folder, "init_prefix.npy"), table)
    np.save(os.path.join(folder, "init_prefix_flat.npy"), flat)


def least_prefix_tuning_flops(n_layer: int, d: int, vocab: int, prompt_len: int, input_lengths, target_lengths,
                              batches: int, backward_to_input: bool = True) -> float:
    """`flops.least_prompt_tuning_flops` for prefix tuning: the same input and target passes (each token
    attending to P prefix positions in every layer: context P), without the prompt's own pass (a prefix's keys
    and values are trained directly; nothing of it runs through the blocks)."""
    dims = {"n_layer": n_layer, "d": d, "vocab": vocab, "backward_to_input": backward_to_input}
    with_prompt = flops.least_prompt_tuning_flops(**dims, prompt_len=prompt_len, input_lengths=input_lengths,
                                                  target_lengths=target_lengths, batches=batches)
    prompt_pass = flops.analytic_gpt2_flops(**dims, tokens_per_example=0, prompt_len=prompt_len, batch=batches,
                                            lm_head_positions=0)
    return with_prompt - prompt_pass


def least_flops(side: str):
    """The least-work count for `side`: prefix tuning's or prompt tuning's."""
    return least_prefix_tuning_flops if side in PREFIX_SIDES else flops.least_prompt_tuning_flops


# --------------------------------------------------------------------------- ours (JAX)


def grouping_option() -> dict | None:
    """The TrainIterator keyword that groups batches by length, if this checkout has one: {name: value}."""
    from prompt_tuning_jax.data import TrainIterator

    params = inspect.signature(TrainIterator).parameters
    for name in ("group_by_length", "length_grouping"):
        if name in params:
            return {name: True if isinstance(params[name].default, bool) else GROUP_WINDOW}
    return None


def prefix_state(table: np.ndarray, trainable: dict) -> dict:
    """`trainable` (a MeshState's pure dict) with the prefix table [L, 2, P, N, D] replaced by `table`, on the host.

    METHOD 'prefix:P' trains exactly `model.prefix.table` (no projection): anything else is refused.
    """
    leaves = {path: x for path, x in _leaves(trainable)}
    key = ("model", "prefix", "table")
    if set(leaves) != {key}:
        raise ValueError(f"expected METHOD 'prefix:P' to train only {'/'.join(key)}, it trains {sorted(leaves)}")
    if tuple(leaves[key].shape) != table.shape:
        raise ValueError(f"the initial prefix is {table.shape}, the model's table {tuple(leaves[key].shape)}")
    return {"model": {"prefix": {"table": np.asarray(table, leaves[key].dtype)}}}


def _leaves(tree: dict, path=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, path + (k,))
        else:
            yield path + (k,), v


def run_ours(args, folder: str) -> dict:
    import jax
    import jax.numpy as jnp

    from prompt_tuning_jax.data import TrainIterator
    from prompt_tuning_jax.experiments import loading
    from prompt_tuning_jax.experiments.scoring import TaskScorer
    from prompt_tuning_jax.experiments.specs import DataSpec, ModelSpec, PromptSpec
    from prompt_tuning_jax.training.loop import fit
    from prompt_tuning_jax.training.optim import make_optimizer
    from prompt_tuning_jax.training.trainer import Trainer

    sampler = RSSSampler()
    rss_start = sampler.now()
    dims = model_dims(folder)
    init_prompt = os.path.join(folder, "init_prompt.npy")
    model_spec = ModelSpec(folder, tokenizer=tokenizer_dir())
    prefix = args._child == "ours_prefix"
    if prefix:  # METHOD 'prefix:P': keys and values in every layer, no prompt in the input
        prompt_spec = PromptSpec(method=f"prefix:{args.prompt_length}", seed=args.seed)
    else:
        prompt_spec = PromptSpec(length=args.prompt_length, init="file", file=init_prompt, placement="prefix")
    data = DataSpec("sst2", feature_lengths={"inputs": args.max_input_length, "targets": args.max_target_length},
                    batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, seed=args.seed)
    task = data.tasks()[0]
    loaded = loading.load_prompted(model_spec, prompt_spec, [task], loading.make_mesh((-1, 1)))
    if prefix:  # the parent's table, the one PEFT starts from too (host copy: restored for eval)
        initial_prefix = prefix_state(np.load(os.path.join(folder, "init_prefix.npy")), loaded.state.trainable)
        loaded.state.trainable = jax.device_put(initial_prefix, loaded.state.trainable_shardings)
    rss_model = sampler.now()
    t0 = time.perf_counter()
    train = loading.tokenize_split(task, "train", loaded, data)
    t_tokenize = time.perf_counter() - t0

    tx = make_optimizer("adamw", learning_rate=args.lr, weight_decay=args.weight_decay, b1=0.9, b2=0.999)
    trainer = Trainer(loaded.state, tx, objective=loading.objective(loaded.prompt, task), seed=data.seed)
    grouping = grouping_option() if args._child == "ours_grouped" else {}
    new_iterator = lambda: TrainIterator(train, args.batch_size, seed=args.seed,
                                         padding_side=model_spec.padding_side, **grouping)
    # Same seed, same batches: a twin iterator shows what the timed loop will get (shapes to compile, stats).
    timed = list(itertools.islice(new_iterator(), args.steps))
    peak_before = flops.jax_matmul_peak()
    jax.block_until_ready(jax.tree.map(jnp.sum, trainer.state.frozen))  # read the lazily mapped weights once
    rss_loaded = sampler.reset()

    # --- warm-up: compile every shape of the timed window, then up to --warmup steps ---------------
    by_shape = {}
    for batch in timed:
        by_shape.setdefault((batch["input_ids"].shape[1], batch["target_ids"].shape[1]), batch)
    warm = list(by_shape.values())
    warm += [timed[i % len(timed)] for i in range(max(0, args.warmup - len(warm)))]
    t0 = time.perf_counter()
    jax.block_until_ready(trainer.train_step(warm[0]))
    first = time.perf_counter() - t0
    for batch in warm[1:]:
        jax.block_until_ready(trainer.train_step(batch))
    t_warm = time.perf_counter() - t0

    # --- timed: fit() over a fresh iterator with the same seed ----------------------------------
    load = [os.getloadavg()[0]]
    sampler.reset()
    t0 = time.perf_counter()
    fit(trainer, new_iterator(), trainer.step + args.steps, prefetch=2)
    jax.block_until_ready((trainer.trainable, trainer.opt_state))
    seconds = time.perf_counter() - t0
    rss_peak = sampler.peak

    # --- FLOPs: XLA's count for each shape in the window, analytic useful / executed ------------
    state = trainer.state
    xla = {shape: flops.xla_flops(trainer._step, state.trainable, trainer.opt_state, state.frozen,
                                  state.put_batch(b), np.int32(0))
           for shape, b in by_shape.items()}
    stats = {"examples": 0, "real": 0, "positions": 0, "shapes": set(), "useful": 0.0, "executed": 0.0, "xla": 0.0}
    for b in timed:
        input_len, target_len = b["attention_mask"].sum(1), b["target_mask"].sum(1)  # [B] real tokens per row
        bsz, t, tt = b["input_ids"].shape[0], b["input_ids"].shape[1], b["target_ids"].shape[1]
        stats["examples"] += int(np.count_nonzero(b["weight"]))
        stats["real"] += int(input_len.sum() + target_len.sum())
        stats["positions"] += bsz * (t + tt)
        stats["shapes"].add((t, tt))
        stats["useful"] += least_flops(args._child)(**dims, prompt_len=args.prompt_length, input_lengths=input_len,
                                                    target_lengths=target_len, batches=1)
        if prefix:  # the prefix's keys and values before every row, in every layer
            stats["executed"] += flops.analytic_gpt2_flops(**dims, tokens_per_example=t + tt, prompt_len=0,
                                                           batch=bsz, lm_head_positions=tt,
                                                           context=args.prompt_length)
        else:
            stats["executed"] += flops.analytic_gpt2_flops(**dims, tokens_per_example=t + tt,  # the prompt in every row
                                                           prompt_len=args.prompt_length, batch=bsz,
                                                           lm_head_positions=tt)
        stats["xla"] += xla[(t, tt)] or 0.0
    result = {
        "backend": f"jax {jax.__version__} on {jax.devices()[0].platform}",
        "threads": f"XLA, {len(os.sched_getaffinity(0))} CPUs visible",
        "digest": token_digest(train.input_ids, train.target_ids),
        "tokenize_s": t_tokenize, "grouping": grouping,
        "first": first, "compile": t_warm, "warm_steps": len(warm), "compiled_shapes": sorted(by_shape),
        "seconds": seconds, "steps": args.steps, "examples": stats["examples"], "real_tokens": stats["real"],
        "positions": stats["positions"], "shapes": sorted(stats["shapes"]),
        "useful_flops": stats["useful"] / args.steps, "executed_flops": stats["xla"] / args.steps,
        "executed_source": "xla", "analytic_executed_flops": stats["executed"] / args.steps,
        "rss_start": rss_start, "rss_model": rss_model, "rss_loaded": rss_loaded, "rss_peak": rss_peak,
    }

    # --- eval: rank classification of the validation split with the initial prompt (prefix) ----
    if args.run_eval:
        if prefix:
            state.trainable = jax.device_put(initial_prefix, state.trainable_shardings)
        else:
            state.restore(init_prompt)
        val = loading.tokenize_split(task, "validation", loaded, data, limit=args.eval_examples)
        scorer = TaskScorer(loaded, task, val, data, scoring="rank", padding_side=model_spec.padding_side)
        t0 = time.perf_counter()
        scorer()
        eval_first = time.perf_counter() - t0
        sampler.reset()
        t0 = time.perf_counter()
        _, scored = scorer()
        eval_seconds = time.perf_counter() - t0
        eval_rss_peak = sampler.peak
        # A batch holds each input once and the [C, L] label table: positions B * (T + C * L).
        label_ids, label_mask = (np.asarray(x, np.int32) for x in scorer.labels)
        xla_eval = {}
        real = positions = executed = 0
        for b in scorer.batches:
            rows, t = b["input_ids"].shape
            real_rows = int(np.count_nonzero(b["weight"]))
            real += int(b["attention_mask"][b["weight"] > 0].sum()) + real_rows * int(label_mask.sum())
            positions += rows * (t + label_ids.size)
            if t not in xla_eval:
                xla_eval[t] = flops.xla_flops(scorer.predictor._predict, state.trainable, state.frozen,
                                              state.put_batch(b), (label_ids, label_mask))
            executed += xla_eval[t] or 0.0
        result.update(eval_first=eval_first, eval_seconds=eval_seconds, eval_examples=len(val),
                      eval_rss_peak=eval_rss_peak, eval_predictions=[int(p) for p in scored.predictions],
                      eval_real_tokens=real, eval_positions=positions, eval_shapes=len(xla_eval),
                      eval_executed_flops=executed, eval_digest=token_digest(val.input_ids, val.target_ids))
    sampler.stop()
    load.append(os.getloadavg()[0])
    result.update(load=load, peak_flops_runs=[peak_before, flops.jax_matmul_peak()])
    return result


# --------------------------------------------------------------------------- PEFT (PyTorch)


def load_split(folder: str, split: str) -> tuple[list[list[int]], list[list[int]], np.ndarray]:
    """The parent's tokenization of a split: (input ids per example, target ids per example, labels [N])."""
    data = np.load(os.path.join(folder, f"tokens_{split}.npz"))
    cut = lambda ids, lengths: [x.tolist() for x in np.split(ids, np.cumsum(lengths)[:-1])]
    return (cut(data["input_ids"], data["input_lengths"]), cut(data["target_ids"], data["target_lengths"]),
            data["label"])


def causal_lm_features(inputs: list[int], target: list[int]) -> dict:
    """One row: input then target tokens, the loss only on the target (labels -100 on the input)."""
    return {"input_ids": inputs + target, "attention_mask": [1] * (len(inputs) + len(target)),
            "labels": [-100] * len(inputs) + target}


def run_peft(args, folder: str) -> dict:
    import peft
    import torch
    import transformers
    from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    grouped = args._child == "peft_b"
    prefix = args._child == "peft_prefix"
    sampler = RSSSampler()
    rss_start = sampler.now()
    dims = model_dims(folder)
    torch.manual_seed(args.seed)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder)
    rss_model = sampler.now()
    if prefix:  # the table as PEFT holds it: prompt_encoder's embedding [P, L*2*N*D] (no projection)
        config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.prompt_length)
        init_prompt = torch.tensor(np.load(os.path.join(folder, "init_prefix_flat.npy")))
        n_trainable = args.prompt_length * dims["n_layer"] * 2 * dims["d"]
    else:
        config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.prompt_length)
        init_prompt = torch.tensor(np.load(os.path.join(folder, "init_prompt.npy")))
        n_trainable = args.prompt_length * dims["d"]
    model = peft.get_peft_model(model, config)
    embedding = model.prompt_encoder["default"].embedding
    assert tuple(embedding.weight.shape) == tuple(init_prompt.shape), (embedding.weight.shape, init_prompt.shape)

    def set_initial_prompt():
        with torch.no_grad():
            embedding.weight.copy_(init_prompt)

    set_initial_prompt()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == n_trainable, "only the prompt (prefix) trains"
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir())
    tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; the usual choice (ours pads with it too)
    collator = transformers.DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100,
                                                   return_tensors="pt")
    inputs, targets, _ = load_split(folder, "train")
    features = [causal_lm_features(x, y) for x, y in zip(inputs, targets)]

    def loader():
        generator = torch.Generator().manual_seed(args.seed)
        order = (LengthGroupedSampler(args.batch_size, lengths=[len(f["input_ids"]) for f in features],
                                      generator=generator) if grouped
                 else RandomSampler(features, generator=generator))
        return DataLoader(features, batch_size=args.batch_size, sampler=order, collate_fn=collator)

    timed = list(itertools.islice(loader(), args.steps))  # the same batches the timed loop gets
    with torch.no_grad():  # read every weight once (lazily mapped from the file), as on our side
        for param in model.parameters():
            param.sum()
    model.train()  # dropout is 0 in the checkpoint's config
    peak_before = flops.torch_matmul_peak()

    def step(batch) -> float:
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    rss_loaded = sampler.reset()
    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    step(timed[0])
    first = time.perf_counter() - t0
    for batch in timed[1:args.warmup]:
        step(batch)
    sampler.reset()
    t0 = time.perf_counter()
    for batch in itertools.islice(loader(), args.steps):
        step(batch)
    seconds = time.perf_counter() - t0
    rss_peak = sampler.peak

    stats = {"examples": 0, "real": 0, "positions": 0, "shapes": set(), "useful": 0.0, "executed": 0.0}
    for b in timed:
        bsz, length = b["input_ids"].shape
        row_len = b["attention_mask"].sum(1).numpy()
        scored = (b["labels"] != -100).sum(1).numpy()
        stats["examples"] += bsz
        stats["real"] += int(row_len.sum())
        stats["positions"] += bsz * length
        stats["shapes"].add(length)
        stats["useful"] += least_flops(args._child)(**dims, prompt_len=args.prompt_length,
                                                    input_lengths=row_len - scored, target_lengths=scored, batches=1)
        if prefix:  # the prefix as past keys and values of every row (P cached positions); logits at the row's own
            stats["executed"] += flops.analytic_gpt2_flops(**dims, tokens_per_example=length, prompt_len=0,
                                                           batch=bsz, lm_head_positions=length,
                                                           context=args.prompt_length)
        else:  # HF computes logits (and their gradient) at every position, the virtual tokens included.
            stats["executed"] += flops.analytic_gpt2_flops(**dims, tokens_per_example=length,
                                                           prompt_len=args.prompt_length, batch=bsz,
                                                           lm_head_positions=args.prompt_length + length)
    result = {
        "backend": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
                   f"attention {model.config._attn_implementation}",
        "threads": f"torch {torch.get_num_threads()} threads, {len(os.sched_getaffinity(0))} CPUs visible",
        "first": first, "compile": None, "warm_steps": min(args.warmup, len(timed)),
        "seconds": seconds, "steps": args.steps, "examples": stats["examples"], "real_tokens": stats["real"],
        "positions": stats["positions"], "shapes": sorted(stats["shapes"]),
        "useful_flops": stats["useful"] / args.steps, "executed_flops": stats["executed"] / args.steps,
        "executed_source": "analytic",
        "rss_start": rss_start, "rss_model": rss_model, "rss_loaded": rss_loaded, "rss_peak": rss_peak,
    }

    # --- eval: both label strings after every input, log-likelihood summed over the label tokens ----
    if args.run_eval:
        set_initial_prompt()
        model.eval()
        inputs, _, _ = load_split(folder, "validation")
        label_ids = [list(map(int, row[mask > 0])) for row, mask in zip(*np.load(os.path.join(folder, "labels.npy")))]
        c = len(label_ids)
        lengths = [len(x) for x in inputs]
        generator = torch.Generator().manual_seed(args.seed)
        order = list(LengthGroupedSampler(args.eval_batch_size, lengths=lengths, generator=generator) if grouped
                     else SequentialSampler(inputs))
        chunks = [order[i:i + args.eval_batch_size] for i in range(0, len(order), args.eval_batch_size)]
        p = args.prompt_length

        @torch.inference_mode()
        def score(chunk) -> tuple[np.ndarray, dict]:
            """Examples -> class scores [b, C]: rows (example, label), log p(label tokens | prompt, input)."""
            batch = collator([causal_lm_features(inputs[i], label) for i in chunk for label in label_ids])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [b*C, P+L, V]
            labels = batch["labels"]                  # [b*C, L]
            if prefix:  # logits [b*C, L, V] (no virtual tokens): token j is predicted at position j - 1
                logits, labels = logits[:, :-1], labels[:, 1:]
            else:
                logits = logits[:, p - 1:-1]          # token j of a row is predicted at position P + j - 1
            scored = labels != -100
            predicting = logits[scored]               # [n, V]
            logp = predicting.gather(-1, labels[scored][:, None])[:, 0] - torch.logsumexp(predicting.float(), -1)
            per_row = torch.zeros(labels.shape[0]).index_add_(0, scored.nonzero()[:, 0], logp.float())
            return per_row.view(len(chunk), c).numpy(), batch

        for chunk in chunks[:args.warmup]:
            score(chunk)
        sampler.reset()
        predictions = np.zeros(len(inputs), np.int64)
        batches = []
        t0 = time.perf_counter()
        for chunk in chunks:
            scores, batch = score(chunk)
            predictions[chunk] = scores.argmax(-1)
            batches.append(batch["attention_mask"])
        eval_seconds = time.perf_counter() - t0
        # Rows (example, label) padded to the longest; HF computes the LM head at every position.
        executed = sum(flops.analytic_gpt2_flops(**dims, tokens_per_example=m.shape[1], prompt_len=0 if prefix else p,
                                                 batch=m.shape[0], lm_head_positions=m.shape[1] + (0 if prefix else p),
                                                 backward_to_input=False, context=p if prefix else 0)
                       for m in batches)
        result.update(eval_first=None, eval_seconds=eval_seconds, eval_examples=len(inputs),
                      eval_rss_peak=sampler.peak, eval_predictions=predictions.tolist(),
                      eval_real_tokens=int(sum(m.sum() for m in batches)),
                      eval_positions=sum(m.numel() for m in batches),
                      eval_shapes=len({m.shape[1] for m in batches}), eval_executed_flops=executed)
    sampler.stop()
    load.append(os.getloadavg()[0])
    result.update(load=load, peak_flops_runs=[peak_before, flops.torch_matmul_peak()])
    return result


# --------------------------------------------------------------------------- driver: data and checkpoint


def build_checkpoint(args, folder: str) -> None:
    """A random GPT-2 of `args.model`'s size (`--n_layer` fewer layers), dropout 0, and the initial prompt."""
    import torch
    import transformers

    from prompt_tuning_jax.models import preset

    cfg = preset(args.model)
    torch.manual_seed(args.seed)
    hf_config = transformers.GPT2Config(n_embd=cfg.n_embd, n_layer=args.n_layer or cfg.n_layer, n_head=cfg.n_head,
                                        vocab_size=cfg.vocab_size, n_positions=cfg.n_positions,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    transformers.GPT2LMHeadModel(hf_config).save_pretrained(folder)
    rng = np.random.default_rng(args.seed)
    # The scale of the random embedding rows (std 0.02): what a sampled-vocabulary init would give.
    np.save(os.path.join(folder, "init_prompt.npy"),
            (0.02 * rng.standard_normal((args.prompt_length, cfg.n_embd))).astype(np.float32))


def write_tokens(args, folder: str) -> dict:
    """Tokenizes the SST-2 train and validation splits for the PEFT sides; returns their sizes and digests."""
    from prompt_tuning_jax.data import get_task, pipeline
    from prompt_tuning_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir())
    task = get_task("sst2")
    summary = {}
    for split, limit in (("train", None), ("validation", args.eval_examples)):
        tok = pipeline.tokenize_task(task, split, tokenizer, limit=limit, max_input_length=args.max_input_length,
                                     max_target_length=args.max_target_length, target_prefix=TARGET_PREFIX)
        np.savez(os.path.join(folder, f"tokens_{split}.npz"),
                 input_ids=np.concatenate(tok.input_ids), input_lengths=tok.input_lengths,
                 target_ids=np.concatenate(tok.target_ids), target_lengths=tok.target_lengths, label=tok.label)
        summary[split] = {"examples": len(tok), "input_mean": float(tok.input_lengths.mean()),
                          "input_max": int(tok.input_lengths.max()), "truncated": tok.num_truncated,
                          "digest": token_digest(tok.input_ids, tok.target_ids), "labels": tok.label.tolist(),
                          "input_lengths": tok.input_lengths.tolist(), "target_lengths": tok.target_lengths.tolist()}
    # The label strings as rank classification tokenizes them (`loading.label_ids`): [2, C, L] ids and mask.
    labels = pipeline.tokenize([{"inputs": "", "targets": name, "label": i} for i, name in enumerate(task.label_names)],
                               tokenizer, max_input_length=8, max_target_length=args.max_target_length,
                               target_prefix=TARGET_PREFIX)
    width = max(len(t) for t in labels.target_ids)
    ids, mask = np.zeros((2, len(labels), width), np.int64)
    for i, t in enumerate(labels.target_ids):
        ids[i, :len(t)], mask[i, :len(t)] = t, 1
    np.save(os.path.join(folder, "labels.npy"), np.stack([ids, mask]))
    summary["label_lengths"] = mask.sum(1).tolist()
    return summary


def run_child(args, side: str, folder: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", side, "--_folder", folder] + args.passthrough
    if args.skip_eval or side == "ours_grouped":  # ours grouped scores exactly as ours
        cmd.append("--skip_eval")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise SystemExit(f"the {side} child failed (exit {proc.returncode})")


# --------------------------------------------------------------------------- driver: report


def mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


NO_RATIO = {"shapes", "seconds", "agreement with ours", "accuracy"}  # columns whose ratio means nothing
PREFIX_RATIOS = [("ratio ours prefix / PEFT prefix", SIDES["ours_prefix"], SIDES["peft_prefix"]),
                 ("ratio ours prefix / ours (prefix vs prompt)", SIDES["ours_prefix"], SIDES["ours"]),
                 ("ratio PEFT prefix / PEFT-A (prefix vs prompt)", SIDES["peft_prefix"], SIDES["peft_a"])]


def ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def train_row(r: dict) -> dict:
    s = r["seconds"] / r["steps"]
    useful_rate = r["useful_flops"] / s
    executed_rate = r["executed_flops"] / s
    return {"ms/step": 1e3 * s, "examples/s": r["examples"] / r["seconds"], "tokens/s": r["real_tokens"] / r["seconds"],
            "padding": 1 - r["real_tokens"] / r["positions"], "shapes": len(r["shapes"]), "first step s": r["first"],
            "peak RSS MiB": r["rss_peak"] / 2**20, "useful GFLOP/step": r["useful_flops"] / 1e9,
            "useful GFLOP/s": useful_rate / 1e9, "executed GFLOP/step": r["executed_flops"] / 1e9,
            "matmul peak GFLOP/s": r["peak_flops"] / 1e9,
            "useful util %": 100 * useful_rate / r["peak_flops"], "executed util %": 100 * executed_rate / r["peak_flops"]}


def markdown_table(rows: dict[str, dict], ratios: list[tuple[str, str, str]], formats: dict[str, str]) -> None:
    columns = list(formats)
    print("| | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join("-" if row.get(c) is None else format(row[c], formats[c])
                                           for c in columns) + " |")
    for label, a, b in ratios:
        if a in rows and b in rows:
            print(f"| {label} | " + " | ".join("" if c in NO_RATIO else ratio(rows[a].get(c), rows[b].get(c))
                                               for c in columns) + " |")


def checkout_state() -> str:
    """The commit measured and the package files changed on top of it (ours runs the working tree)."""
    git = lambda *a: subprocess.run(["git", "-C", REPO, *a], capture_output=True, text=True).stdout
    commit = git("rev-parse", "--short", "HEAD").strip()
    if not commit:
        return "not a git checkout"
    changed = git("status", "--porcelain", "--", "prompt_tuning_jax").splitlines()  # "XY path"
    return f"prompt_tuning_jax at {commit}" + (f" with uncommitted changes to {', '.join(line[3:] for line in changed)}"
                                               if changed else "")


def report(args, data: dict, results: dict, rounds: dict) -> None:
    dims = results[next(iter(results))]["dims"]
    train_info = data["train"]
    print(f"SST-2 prompt tuning: {args.model} ({dims['n_layer']} layers, width {dims['d']}, vocab {dims['vocab']}, "
          f"random weights), prefix prompt {args.prompt_length}"
          + (f" (prefix tuning sides: a prefix of {args.prompt_length} keys and values in every layer)"
             if any(side in PREFIX_SIDES for side in results) else "")
          + f", batch {args.batch_size}, inputs <= "
          f"{args.max_input_length} / targets <= {args.max_target_length} tokens, float32; AdamW lr {args.lr} "
          f"wd {args.weight_decay} on the prompt; {args.steps} timed steps after warm-up, best of {args.rounds} "
          f"round(s)")
    print(f"data: SST-2 train {train_info['examples']:,} examples (input tokens mean {train_info['input_mean']:.1f}, "
          f"max {train_info['input_max']}; target = 1 label token)"
          + (f"; validation {data['validation']['examples']} examples" if not args.skip_eval else ""))
    print(f"code: {args.code_before} at the start; {checkout_state()} at the end")
    print(f"host: {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable; load average "
          f"{args.load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other processes slow every side)")
    for side, r in results.items():
        print(f"  {SIDES[side]}: {r['backend']}; {r['threads']}; RSS MiB {mib(r['rss_start'])} after imports, "
              f"{mib(r['rss_model'])} with the model, {mib(r['rss_loaded'])} ready to step")
        print(f"    load average {r['load'][0]:.2f} at the timed steps, {r['load'][1]:.2f} at the end; matmul peak "
              + " / ".join(f"{x / 1e9:.1f}" for x in r["peak_flops_runs"]) + " GFLOP/s before / after (the higher used)")
        if r.get("digest") and r["digest"] != train_info["digest"]:
            print(f"  WARNING: {SIDES[side]} tokenized the training split differently from the PEFT sides")
        if r.get("compiled_shapes"):
            print(f"    tokenization {r['tokenize_s']:.1f} s (one-off); warm-up: {r['warm_steps']} steps on shapes "
                  f"{r['compiled_shapes']} (input, target) in {r['compile']:.1f} s; timed batches took "
                  f"{len(r['shapes'])} shapes")
        if r.get("grouping"):
            print(f"    TrainIterator({', '.join(f'{k}={v}' for k, v in r['grouping'].items())})")
        if len(rounds[side]) > 1:
            print("    seconds over the timed steps, per round: " + " ".join(f"{x:.1f}" for x in rounds[side]))
        s = r["seconds"] / r["steps"]
        if r["executed_source"] == "xla":
            flops.report("    executed", r["executed_flops"], s, r["peak_flops"], "xla, padded batches")
            print(f"    cross-check: {r['analytic_executed_flops'] / 1e9:.1f} GFLOP/step by `analytic_gpt2_flops` on the "
                  f"same padded batches with the {'prefix' if side in PREFIX_SIDES else 'prompt'} in every row "
                  f"(xla / analytic = "
                  f"{r['executed_flops'] / r['analytic_executed_flops']:.2f}; below 1: work the step shares or skips)")
        else:
            flops.report("    executed", r["executed_flops"], s, r["peak_flops"],
                         "analytic, padded batches, LM head at every position")
        flops.report("    useful", r["useful_flops"], s, r["peak_flops"],
                     "analytic least work: real tokens, "
                     + ("attending to the prefix" if side in PREFIX_SIDES else "the prompt once per batch")
                     + ", LM head at the label")

    print("\n### Training\n")
    rows = {SIDES[k]: train_row(r) for k, r in results.items()}
    formats = {"ms/step": ".0f", "examples/s": ".2f", "tokens/s": ".0f", "padding": ".2f", "shapes": "d",
               "first step s": ".2f", "peak RSS MiB": ".0f", "useful GFLOP/step": ".1f", "useful GFLOP/s": ".1f",
               "executed GFLOP/step": ".1f", "matmul peak GFLOP/s": ".1f", "useful util %": ".1f",
               "executed util %": ".1f"}
    a, b = SIDES["peft_a"], SIDES["peft_b"]
    markdown_table(rows, [("ratio ours / PEFT-A", SIDES["ours"], a), ("ratio ours / PEFT-B", SIDES["ours"], b),
                          ("ratio ours grouped / PEFT-B", SIDES["ours_grouped"], b)] + PREFIX_RATIOS, formats)
    print("\nexecuted: XLA's cost analysis of our compiled step, `analytic_gpt2_flops` of PEFT's padded batches; "
          "useful: `least_prompt_tuning_flops` of the real tokens (the prompt once per batch, the LM head at the "
          "label word); utilisation against the same-run matmul peak"
          + ("; prefix sides: `least_prefix_tuning_flops` (no prompt pass, every token attends to the P prefix "
             "positions), PEFT's executed with the prefix as P cached positions of every row"
             if any(side in PREFIX_SIDES for side in results) else ""))
    per_epoch = train_info["examples"] / args.batch_size
    for side, r in results.items():
        print(f"  one epoch ({train_info['examples']:,} examples, {per_epoch:.0f} steps) at this rate: "
              f"{per_epoch * r['seconds'] / r['steps'] / 60:.0f} min, {SIDES[side]}"
              + (" (plus one compile per bucket shape not seen here)" if side.startswith("ours") else ""))

    evals = {k: r for k, r in results.items() if "eval_seconds" in r}
    if not evals:
        return
    print(f"\n### Eval: rank classification of {data['validation']['examples']} validation examples, "
          f"{args.eval_batch_size} per batch, both labels, the initial prompt\n")
    val = data["validation"]
    inputs = np.array(val["input_lengths"])
    useful_of = {kind: least_flops(kind)(**dims, prompt_len=args.prompt_length, input_lengths=inputs,
                                         target_lengths=np.broadcast_to(data["label_lengths"],
                                                                        (len(inputs), len(data["label_lengths"]))),
                                         batches=-(-len(inputs) // args.eval_batch_size), backward_to_input=False)
                 for kind in ("ours", "ours_prefix")}
    rows = {}
    for side, r in evals.items():
        useful = useful_of["ours_prefix" if side in PREFIX_SIDES else "ours"]
        rate = useful / r["eval_seconds"]
        predictions = np.array(r["eval_predictions"])
        # Agreement with our side of the same method (the prefix sides: ours_prefix), same initial values.
        reference = evals.get("ours_prefix" if side in PREFIX_SIDES else "ours", {}).get("eval_predictions")
        agree = np.mean(predictions == np.array(reference)) if reference is not None else None
        rows[SIDES[side]] = {"examples/s": r["eval_examples"] / r["eval_seconds"], "seconds": r["eval_seconds"],
                             "first pass s": r["eval_first"], "padding": 1 - r["eval_real_tokens"] / r["eval_positions"],
                             "shapes": r["eval_shapes"], "peak RSS MiB": r["eval_rss_peak"] / 2**20,
                             "useful GFLOP/s": rate / 1e9, "useful util %": 100 * rate / r["peak_flops"],
                             "executed GFLOP": r["eval_executed_flops"] / 1e9,
                             "executed util %": 100 * r["eval_executed_flops"] / r["eval_seconds"] / r["peak_flops"],
                             "agreement with ours": agree, "accuracy": np.mean(predictions == np.array(val["labels"]))}
        if r.get("eval_digest") and r["eval_digest"] != val["digest"]:
            print(f"WARNING: {SIDES[side]} tokenized the validation split differently from the PEFT sides")
    formats = {"examples/s": ".1f", "seconds": ".1f", "first pass s": ".1f", "padding": ".2f", "shapes": "d",
               "peak RSS MiB": ".0f", "useful GFLOP/s": ".1f", "useful util %": ".1f", "executed GFLOP": ".0f",
               "executed util %": ".1f", "agreement with ours": ".3f", "accuracy": ".3f"}
    markdown_table(rows, [("ratio ours / PEFT-A", SIDES["ours"], a), ("ratio ours / PEFT-B", SIDES["ours"], b)]
                   + PREFIX_RATIOS, formats)
    counts = {SIDES[side]: np.bincount(r["eval_predictions"], minlength=len(data["label_lengths"])).tolist()
              for side, r in evals.items()}
    print("\npredicted classes (examples per class): " + "; ".join(f"{k} {v}" for k, v in counts.items())
          + ("  (every side predicts one class: agreement 1.000 says little; random weights)"
             if all(max(v) == sum(v) for v in counts.values()) else ""))
    if any(side in PREFIX_SIDES for side in evals):
        print(f"\nprefix sides: useful eval work {useful_of['ours_prefix'] / 1e9:.0f} GFLOP "
              "(`least_prefix_tuning_flops`: no prompt pass, every token attends to the prefix); executed for PEFT "
              "with the prefix as P cached positions of every row and logits at the rows' own positions; "
              "\"agreement with ours\" of the prefix sides is with ours prefix tuning (the same initial table)")
    useful = useful_of["ours"]
    print(f"\nuseful eval work: {useful / 1e9:.0f} GFLOP (`least_prompt_tuning_flops`: the prompt once per batch, "
          "each input once, the LM head where a label token is predicted); executed: XLA's count of our compiled scorer, analytic for PEFT "
          "(2 full rows per example, LM head at every position); padding: over the positions each side's batches "
          "hold (ours: each input once plus the label table; PEFT: one input + label row per label); ours' first "
          "pass compiles one program per input bucket; accuracy is chance-level (random weights)")


# --------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", choices=["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
    p.add_argument("--n_layer", type=int, default=None, help="fewer layers than the preset (same width and vocab)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--eval_batch_size", type=int, default=None, help="examples per eval batch (default: batch_size)")
    p.add_argument("--prompt_length", type=int, default=20, help="P")
    p.add_argument("--max_input_length", type=int, default=128)
    p.add_argument("--max_target_length", type=int, default=8, help="the CLI's default TASK_FEATURE_LENGTHS")
    p.add_argument("--steps", type=int, default=50, help="timed training steps (one interval)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (and eval batches) first, >= 1")
    p.add_argument("--rounds", type=int, default=1, help="run every side this many times, alternating; keep the fastest")
    p.add_argument("--eval_examples", type=int, default=None, help="first N validation examples (default: all 872)")
    p.add_argument("--skip_eval", action="store_true")
    p.add_argument("--sides", default=",".join(DEFAULT_SIDES),
                   help=f"comma-separated subset of {','.join(SIDES)} (default: {','.join(DEFAULT_SIDES)})")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint_dir", default=None,
                   help="keep the random checkpoint here and reuse it on later runs (default: a temporary folder)")
    p.add_argument("--_child", choices=list(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--_folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1")
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    args.run_eval = not args.skip_eval

    if args._child:
        run = run_ours if args._child.startswith("ours") else run_peft
        result = run(args, args._folder)
        result["dims"] = model_dims(args._folder)
        result["peak_flops"] = max(result["peak_flops_runs"])  # load only lowers it
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(sides) - set(SIDES)
    if unknown:
        p.error(f"--sides: unknown {sorted(unknown)}; choose from {list(SIDES)}")
    if "ours_grouped" in sides and grouping_option() is None:
        print("TrainIterator has no length-grouping option in this checkout: skipping 'ours_grouped'", file=sys.stderr)
        sides.remove("ours_grouped")
    args.passthrough = [f"--{k}={v}" for k, v in vars(args).items()
                        if v is not None and k in ("model", "n_layer", "batch_size", "eval_batch_size", "prompt_length",
                                                   "max_input_length", "max_target_length", "steps", "warmup",
                                                   "eval_examples", "lr", "weight_decay", "seed")]
    args.load_before = os.getloadavg()[0]
    args.code_before = checkout_state()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.checkpoint_dir or tmp
        if not os.path.exists(os.path.join(folder, "config.json")):
            os.makedirs(folder, exist_ok=True)
            print(f"building a random {args.model} checkpoint in {folder} ...", file=sys.stderr, flush=True)
            build_checkpoint(args, folder)
        dims = model_dims(folder)
        if args.n_layer and dims["n_layer"] != args.n_layer:
            p.error(f"--checkpoint_dir {folder} holds {dims['n_layer']} layers, not --n_layer {args.n_layer}")
        data = write_tokens(args, folder)
        if any(side in PREFIX_SIDES for side in sides):
            write_initial_prefix(args, folder)
        runs = {side: [] for side in sides}
        for r in range(args.rounds):
            for side in sides:
                print(f"round {r + 1}/{args.rounds}: {side} ...", file=sys.stderr, flush=True)
                runs[side].append(run_child(args, side, folder))
    # Other load only slows a run down: keep each side's fastest training round, and its fastest eval.
    results, rounds = {}, {}
    for side, rs in runs.items():
        results[side] = dict(min(rs, key=lambda x: x["seconds"]))
        rounds[side] = [x["seconds"] for x in rs]
        with_eval = [x for x in rs if "eval_seconds" in x]
        if with_eval:
            best_eval = min(with_eval, key=lambda x: x["eval_seconds"])
            results[side].update({k: v for k, v in best_eval.items() if k.startswith("eval_")})
    report(args, data, results, rounds)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
