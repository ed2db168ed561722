"""Prompt-tuning train step: prompt_tuning_jax's Trainer vs PEFT's PromptTuning, same random checkpoint.

    python benchmarks/train_step.py [--model gpt2|llama] [--n_layer N] [--batch 8] [--length 128]
                                    [--prompt_length 20] [--steps 5] [--warmup 2]
                                    [--dtype float32|bfloat16] [--device cpu|cuda] [--cpus N]
                                    [--sides ours,ours_plain,peft]

Builds a random-weight GPT-2 checkpoint of the named size with transformers (no
hub needed), or with `--model llama` a random Llama of 149M parameters (LLAMA_150M
below: Llama 3's 128,256-token vocabulary, tied embeddings as Llama 3.2's small
models, grouped-query attention, SwiGLU, Llama 3 RoPE scaling), then times one
optimizer step of soft-prompt tuning on both sides, each in its own child
process (so the peak-memory numbers do not mix and the two frameworks' thread
pools never run at once), and prints examples/s, tokens/s, first-step time and
peak memory side by side with the ratio ours / PEFT.

The same work on both sides
---------------------------
PEFT: `get_peft_model(GPT2LMHeadModel, PromptTuningConfig(task_type="CAUSAL_LM",
num_virtual_tokens=P))` (LlamaForCausalLM for `--model llama`), AdamW on the
prompt only, called with `input_ids = labels = x` ([B, L] random tokens). PEFT
prepends the P virtual tokens and labels them -100, so the model runs on P + L
positions and the loss is the mean next-token NLL of all L tokens of x (x[0] is
predicted from the last prompt position).

Ours: `Trainer(with_prompt(model, P), make_optimizer("adamw", ...), objective="lm")`.
The "lm" objective scores `target_ids` placed right after the prompted input's
last real token. To score exactly the L tokens PEFT scores, the batch is

    input_ids      [B, 1]  one pad token, attention_mask 0   (an empty input)
    target_ids     [B, L]  x,             target_mask 1

so the sequence is [prompt (P), x (L), pad (1)]: x sits at positions P ..
P+L-1 as in PEFT, x[0] is predicted from the last prompt position, and the loss
is the same number (the script checks this: both children report the loss at the
same initial prompt; they agree to float32 rounding). (An input of width 0 is
not accepted by `combine.first_real`, hence the single masked pad; it adds one
causal position after the text that no loss reads, 1 / (P+L+1) extra work for
ours.) Both sides do a full forward and backward through the frozen model
down to the prompt (the frozen weights get no gradients: PEFT sets
`requires_grad=False`, our step differentiates only the `Trainable` state) and
one AdamW update of the [P, H] prompt. Differences that remain are the
libraries' own: HF's GPT2LMHeadModel computes LM logits at all P+L positions
and PEFT's loss shifts them; ours computes logits only at the L scored
positions. Dropout is set to 0 in the checkpoint (ours has none), so torch runs
in train mode with no dropout work (Llama's only dropout, attention_dropout, is
0 by default).

The LM head
-----------
`ours` scores the targets with the memory-lean head (`models/lm_head.py`): the logits are made a chunk of
target positions at a time (about 64 MiB of float32 logits each) and their gradient is taken inside the
chunk, so the step never holds the [B*L, V] logits (Llama 3's 128,256 tokens: 525 MB for B8 x 128) or their
gradient. `ours_plain` is the same step with the head over all positions at once, as before it: the side to
compare with for the head's own cost in time and memory.

Measurement
-----------
Each side: `--warmup` steps first (the first one includes JAX tracing and XLA
compilation, or torch's lazy initialisation: reported as "first step"), then
`--steps` timed steps, each ended by `block_until_ready` on the new prompt, the
optimizer state and the metrics (JAX) or `torch.cuda.synchronize()` (CUDA);
the median step time is reported. With `--rounds R` the two children run R
times, alternating, and each side's fastest round is shown (load from other
processes only ever slows a run down; the per-round medians are printed).
Every step includes moving the host batch to the device (`Trainer.train_step`
does `put_batch`; torch does `.to(device)`).
examples/s = B / median step; tokens/s = B * L / median step (text tokens;
the P prompt positions are not counted).

Memory: a thread samples the process RSS (psutil) every 5 ms; "RSS loaded" is
the RSS after the model, optimizer and batch are built and every weight has been
read once (both load lazily from the memory-mapped safetensors file), before the first step;
"peak RSS" the highest RSS seen during the timed steps, and "delta" their
difference: the working memory of a step (activations kept for the backward,
gradients, temporaries). On a GPU the device numbers are reported too: JAX
`jax.devices()[0].memory_stats()` (`bytes_in_use` before the first step,
`peak_bytes_in_use`) and torch `memory_allocated()` / `max_memory_allocated()`
(peak reset after warm-up). JAX preallocates most of a GPU's memory by default,
so the RSS numbers mean little there; the device peak is the one to compare.

Threads: both children see the same CPUs (`--cpus N` pins both to the first N
with `sched_setaffinity` and sets `torch.set_num_threads(N)`); XLA:CPU sizes its
pool from the CPUs the process may use; torch's thread count is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import flops  # benchmarks/flops.py (this script's folder is on sys.path)

RESULT_TAG = "RESULT_JSON "
GPT2_MODELS = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
SIDES = ["ours", "ours_plain", "peft"]  # ours_plain: our step with the whole [B*L, V] logits (no chunked LM head)
# --model llama: 148.8M parameters, 98.5M of them the tied 128,256 x 768 embedding table; the rest in
# 8 layers of 6.29M (attention 12 query heads sharing 4 KV heads of 64: 1.57M; SwiGLU MLP 768 -> 2048: 4.72M).
# The other fields are Llama 3.2's (vocabulary, RoPE scaling, norm eps, BOS/EOS ids, tied head).
LLAMA_150M = dict(vocab_size=128256, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                  num_attention_heads=12, num_key_value_heads=4, head_dim=64, max_position_embeddings=131072,
                  rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192})
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO)


# --------------------------------------------------------------------------- measuring


class RSSSampler:
    """Samples this process's resident set size in a background thread; `peak` since the last `reset()`."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def now(self) -> int:
        return self._proc.memory_info().rss

    def _run(self):
        while not self._stop.is_set():
            rss = self.now()
            if rss > self.peak:
                self.peak = rss
            time.sleep(self.interval)

    def reset(self) -> int:
        self.peak = self.now()
        return self.peak

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())
        return self.peak


def time_steps(step, warmup: int, steps: int, sampler: RSSSampler, device_reset=None):
    """Runs `warmup` then `steps` calls of `step()` (which must block until done).

    Returns (first step seconds, per-step seconds of the timed steps, rss before, rss peak, losses).
    """
    rss_loaded = sampler.reset()
    losses = []
    t0 = time.perf_counter()
    losses.append(step())
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        losses.append(step())
    if device_reset is not None:
        device_reset()
    sampler.reset()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    rss_peak = sampler.stop()
    return first, times, rss_loaded, rss_peak, losses


def _pin(cpus: int | None) -> None:
    if cpus:
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[:cpus])


# --------------------------------------------------------------------------- ours (JAX)


def ours_trainer(args, folder: str, sampler=None):
    """Our side's Trainer (prefix prompt, AdamW, "lm" objective) and host batch -> (trainer, batch, rss_model)."""
    import jax
    import jax.numpy as jnp

    import prompt_tuning_jax as ptj
    from prompt_tuning_jax.training.optim import make_optimizer
    from prompt_tuning_jax.training.trainer import Trainer

    dtype = getattr(jnp, args.dtype)
    model = ptj.from_pretrained(folder, dtype=dtype, param_dtype=dtype)
    rss_model = sampler.now() if sampler else None
    init_prompt = np.load(os.path.join(folder, "init_prompt.npy"))
    prompted = ptj.with_prompt(model, args.prompt_length, init=init_prompt, placement="prefix")
    tx = make_optimizer("adamw", learning_rate=args.lr, weight_decay=args.weight_decay)
    trainer = Trainer(prompted, tx, objective="lm")
    del model, prompted  # the trainer holds the split state
    # Both libraries map the safetensors file lazily: read every weight once so "RSS loaded" holds them.
    jax.block_until_ready(jax.tree.map(jnp.sum, trainer.state.frozen))

    x = np.load(os.path.join(folder, "tokens.npy"))  # [B, L]
    b, _ = x.shape
    batch = {
        "input_ids": np.full((b, 1), model_dims(args)["pad_id"], np.int32),  # an empty input: one masked pad
        "attention_mask": np.zeros((b, 1), np.int32),
        "target_ids": x.astype(np.int32),
        "target_mask": np.ones_like(x, np.int32),
        "weight": np.ones((b,), np.float32),
    }
    return trainer, batch, rss_model


def run_ours(args, folder: str, plain_head: bool = False) -> dict:
    import jax

    if plain_head:  # the LM head over all target positions at once: the [B*L, V] logits and their gradient
        from prompt_tuning_jax.models import lm_head

        lm_head.CHUNK_BYTES = 1 << 62
    sampler = RSSSampler()
    rss_start = sampler.now()
    trainer, batch, rss_model = ours_trainer(args, folder, sampler)
    dev = jax.devices()[0]

    def step():
        metrics = trainer.train_step(batch)
        jax.block_until_ready((trainer.trainable, trainer.opt_state, metrics))
        return float(metrics["loss_sum"] / metrics["denominator"])

    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    device_loaded = stats.get("bytes_in_use") if stats else None
    first, times, rss_loaded, rss_peak, losses = time_steps(step, args.warmup, args.steps, sampler)
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if not plain_head:
        # XLA's cost analysis counts a loop body once, and on CPU the lean head's chunks are a loop: count the
        # same step with the head in one piece (the same matmuls) instead.
        from prompt_tuning_jax.models import lm_head

        lm_head.CHUNK_BYTES = 1 << 62
        jax.clear_caches()
    step_flops = flops.xla_flops(trainer._step, trainer.trainable, trainer.opt_state,
                                 trainer.state.frozen, trainer.state.put_batch(batch), np.int32(0))
    return {
        "name": "ours, whole logits" if plain_head else "ours",
        "backend": f"jax {jax.__version__} on {dev.platform} ({dev.device_kind})",
        "threads": f"XLA, {len(os.sched_getaffinity(0))} CPUs visible",
        "first": first, "times": times, "rss_start": rss_start, "rss_model": rss_model, "rss_loaded": rss_loaded,
        "rss_peak": rss_peak, "device_loaded": device_loaded, "device_peak": stats.get("peak_bytes_in_use") if stats else None,
        "first_loss": losses[0], "last_loss": losses[-1],
        "flops": step_flops, "peak_flops": flops.jax_matmul_peak(dtype=args.dtype),
    }


# --------------------------------------------------------------------------- PEFT (PyTorch)


def run_peft(args, folder: str) -> dict:
    import peft
    import torch
    import transformers

    if args.cpus:
        torch.set_num_threads(args.cpus)
    sampler = RSSSampler()
    rss_start = sampler.now()
    device = torch.device(args.device)
    tdtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model_cls = transformers.LlamaForCausalLM if args.model == "llama" else transformers.GPT2LMHeadModel
    model = model_cls.from_pretrained(folder, dtype=tdtype).to(device)
    rss_model = sampler.now()
    model = peft.get_peft_model(model, peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                               num_virtual_tokens=args.prompt_length))
    init_prompt = torch.tensor(np.load(os.path.join(folder, "init_prompt.npy")))
    embedding = model.prompt_encoder["default"].embedding
    with torch.no_grad():
        embedding.weight.copy_(init_prompt.to(embedding.weight.dtype))
    model.train()  # dropout is 0 in the checkpoint's config
    trainable = [p for p in model.parameters() if p.requires_grad]
    # hidden_size: GPT2Config maps it to n_embd (model_dims would import prompt_tuning_jax, and jax, into this child)
    assert sum(p.numel() for p in trainable) == args.prompt_length * model.config.hidden_size, "only the prompt trains"
    with torch.no_grad():  # read every weight once (lazily mapped from the file), as on our side
        for param in model.parameters():
            param.sum()
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)

    x = torch.tensor(np.load(os.path.join(folder, "tokens.npy")), dtype=torch.long)  # [B, L] on the host
    mask = torch.ones_like(x)
    cuda = device.type == "cuda"

    def step():
        ids, m = x.to(device), mask.to(device)
        loss = model(input_ids=ids, attention_mask=m, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return float(loss.detach())

    device_loaded = torch.cuda.memory_allocated(device) if cuda else None
    reset = (lambda: torch.cuda.reset_peak_memory_stats(device)) if cuda else None
    first, times, rss_loaded, rss_peak, losses = time_steps(step, args.warmup, args.steps, sampler, reset)
    return {
        "name": "PEFT PromptTuning (torch)",
        "backend": f"torch {torch.__version__} on {device.type}, transformers {transformers.__version__}, "
                   f"peft {peft.__version__}, attention {model.config._attn_implementation}",
        "threads": f"torch {torch.get_num_threads()} threads, {len(os.sched_getaffinity(0))} CPUs visible",
        "first": first, "times": times, "rss_start": rss_start, "rss_model": rss_model, "rss_loaded": rss_loaded,
        "rss_peak": rss_peak, "device_loaded": device_loaded, "device_peak": torch.cuda.max_memory_allocated(device) if cuda else None,
        "first_loss": losses[0], "last_loss": losses[-1],
        "peak_flops": flops.torch_matmul_peak(dtype=args.dtype, device=args.device),
    }


# --------------------------------------------------------------------------- model sizes


def model_dims(args) -> dict:
    """The sizes both sides and the FLOP counts need: layers (--n_layer or the model's), hidden d, vocabulary,
    query / KV heads, head size, MLP width, and the id of the one masked pad token of our empty input."""
    if args.model == "llama":
        c = LLAMA_150M
        return {"n_layer": args.n_layer or c["num_hidden_layers"], "d": c["hidden_size"], "vocab": c["vocab_size"],
                "heads": c["num_attention_heads"], "kv_heads": c["num_key_value_heads"], "head_dim": c["head_dim"],
                "intermediate": c["intermediate_size"], "pad_id": c["eos_token_id"]}
    from prompt_tuning_jax.models import preset

    cfg = preset(args.model)
    return {"n_layer": args.n_layer or cfg.n_layer, "d": cfg.n_embd, "vocab": cfg.vocab_size, "heads": cfg.n_head,
            "kv_heads": cfg.n_head, "head_dim": cfg.n_embd // cfg.n_head, "intermediate": 4 * cfg.n_embd,
            "pad_id": 50256}


def analytic_llama_flops(dims: dict, tokens_per_example, prompt_len: int, batch: int, lm_head_positions,
                         context=0) -> float:
    """`flops.analytic_gpt2_flops` for a Llama block (forward and backward to the input embeddings).

    The same accounting with Llama's matmuls: per layer and token 2 FLOPs per weight of q (d x Hq hd), k and v
    (d x Hkv hd each: grouped-query attention), o (Hq hd x d) and the SwiGLU MLP (gate, up, down: 3 d I);
    attention 4 S (context + S) Hq hd (every query head scores every key, K and V shared or not); the tied head
    2 d V at `lm_head_positions`. Backward to the prompt only: linear + 2 attention + head again. RMSNorms,
    RoPE, SiLU, softmax and the optimizer update are left out.
    """
    d, q, kv = dims["d"], dims["heads"] * dims["head_dim"], dims["kv_heads"] * dims["head_dim"]
    weights = d * q + 2 * d * kv + q * d + 3 * d * dims["intermediate"]
    s = prompt_len + np.asarray(tokens_per_example, np.float64)
    linear = 2.0 * weights * s * dims["n_layer"]
    attention = 4.0 * s * (np.asarray(context, np.float64) + s) * q * dims["n_layer"]
    head = 2.0 * d * dims["vocab"] * np.asarray(lm_head_positions, np.float64)
    return float(np.sum(batch * (2 * linear + 3 * attention + 2 * head)))


def least_llama_flops(dims: dict, prompt_len: int, length: int, batch: int) -> float:
    """`flops.least_prompt_tuning_flops` of this step (empty inputs, targets of `length`) for Llama: the prompt
    once, then per row the tokens but the last attending to prompt and themselves, the head at `length` positions."""
    prompt = analytic_llama_flops(dims, 0, prompt_len, 1, 0)
    first = analytic_llama_flops(dims, 0, 0, batch, 1, context=prompt_len)  # the head at the prompt's last position
    rest = analytic_llama_flops(dims, length - 1, 0, batch, length - 1, context=prompt_len)
    return prompt + first + rest


# --------------------------------------------------------------------------- driver


def build_checkpoint(args, folder: str) -> None:
    import torch
    import transformers

    dims = model_dims(args)
    torch.manual_seed(0)
    if args.model == "llama":
        hf_config = transformers.LlamaConfig(**{**LLAMA_150M, "num_hidden_layers": dims["n_layer"]})
        model = transformers.LlamaForCausalLM(hf_config)
        print(f"random Llama: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
              f"({dims['n_layer']} layers, hidden {dims['d']}, {dims['heads']} heads / {dims['kv_heads']} KV "
              f"x {dims['head_dim']}, mlp {dims['intermediate']}, vocab {dims['vocab']}, tied)", flush=True)
        model.save_pretrained(folder)
        del model
    else:
        hf_config = transformers.GPT2Config(n_embd=dims["d"], n_layer=dims["n_layer"], n_head=dims["heads"],
                                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        transformers.GPT2LMHeadModel(hf_config).save_pretrained(folder)
    rng = np.random.default_rng(0)
    np.save(os.path.join(folder, "tokens.npy"),
            rng.integers(0, dims["vocab"], (args.batch, args.length)).astype(np.int64))
    # The paper's fallback init (rows of the embedding table) is what both would use; any fixed array will do.
    np.save(os.path.join(folder, "init_prompt.npy"),
            (0.02 * rng.standard_normal((args.prompt_length, dims["d"]))).astype(np.float32))


def run_child(args, side: str, folder: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", side, "--_folder", folder] + args.passthrough
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise SystemExit(f"the {side} child failed (exit {proc.returncode})")


def mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


def report(args, results: dict) -> None:
    """One row per side (ours, ours with the whole logits, PEFT), then each of ours against PEFT."""
    b, length = args.batch, args.length
    rows = {}
    for side, r in results.items():
        t = float(np.median(r["times"]))
        rows[side] = {**r, "t": t, "ex_s": b / t, "tok_s": b * length / t, "rss_delta": r["rss_peak"] - r["rss_loaded"]}
    print(f"prompt-tuning train step: {args.model} ({args.n_layer or 'all'} layers), batch {b} x {length} tokens, "
          f"prompt {args.prompt_length}, {args.dtype}, AdamW on the prompt; median of {args.steps} steps "
          f"after {args.warmup} warm-up")
    print(f"host: {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable"
          + (f", every side pinned to {args.cpus}" if args.cpus else "")
          + f"; load average {args.load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other processes "
            "running at the same time slow every side)")
    for r in rows.values():
        print(f"  {r['name']}: {r['backend']}; {r['threads']}; RSS MiB: {mib(r['rss_start'])} after imports, "
              f"{mib(r['rss_model'])} with the model, {mib(r['rss_loaded'])} ready to step")
    print("  loss at the same initial prompt: " + ", ".join(f"{r['name']} {r['first_loss']:.6f}" for r in rows.values()))
    header = (f"{'':28s}{'ms/step':>10s}{'examples/s':>12s}{'tokens/s':>10s}{'first step s':>14s}"
              f"{'RSS loaded MiB':>16s}{'peak RSS MiB':>14s}{'delta MiB':>11s}")
    gpu = any(r["device_peak"] is not None for r in rows.values())
    if gpu:
        header += f"{'dev loaded MiB':>16s}{'dev peak MiB':>14s}"
    print(header)
    for r in rows.values():
        line = (f"{r['name']:28s}{r['t'] * 1e3:10.1f}{r['ex_s']:12.2f}{r['tok_s']:10.0f}{r['first']:14.2f}"
                f"{mib(r['rss_loaded']):>16s}{mib(r['rss_peak']):>14s}{mib(r['rss_delta']):>11s}")
        if gpu:
            line += f"{mib(r['device_loaded']):>16s}{mib(r['device_peak']):>14s}"
        print(line)
    ratio = lambda a, c: "-" if not a or not c else f"{a / c:.2f}"
    pairs = [(o, "peft") for o in ("ours", "ours_plain")] + [("ours", "ours_plain")]
    for mine, other in pairs:
        if mine not in rows or other not in rows:
            continue
        o, p = rows[mine], rows[other]
        line = (f"{'ratio ' + mine + ' / ' + other:28s}{ratio(o['t'], p['t']):>10s}{ratio(o['ex_s'], p['ex_s']):>12s}"
                f"{ratio(o['tok_s'], p['tok_s']):>10s}{ratio(o['first'], p['first']):>14s}"
                f"{ratio(o['rss_loaded'], p['rss_loaded']):>16s}{ratio(o['rss_peak'], p['rss_peak']):>14s}"
                f"{ratio(o['rss_delta'], p['rss_delta']):>11s}")
        if gpu:
            line += (f"{ratio(o['device_loaded'], p['device_loaded']):>16s}"
                     f"{ratio(o['device_peak'], p['device_peak']):>14s}")
        print(line)
    print("step times (ms): " + " | ".join(f"{r['name']} " + " ".join(f"{t * 1e3:.0f}" for t in r["times"])
                                           for r in rows.values()))
    if any("rounds" in r for r in rows.values()):
        med = lambda r: " ".join(f"{t * 1e3:.0f}" for t in r.get("rounds", []))
        print("median ms/step of each round: " + " | ".join(f"{r['name']} {med(r)}" for r in rows.values())
              + " (the fastest round is shown)")
    report_flops(args, rows.get("ours"), rows.get("peft"))


def report_flops(args, ours: dict | None, theirs: dict | None) -> None:
    """Model FLOPs per step, achieved GFLOP/s and utilisation against each child's own matmul peak (flops.py).

    executed: what the step computes (ours: XLA's cost analysis of the compiled step, all ops;
    PEFT: the analytic count with HF's LM head at all P + L positions). useful: the analytic
    least work (`flops.least_prompt_tuning_flops`: the prompt once per batch, the L text tokens
    attending to it, the LM head at the L scored positions; the same on both sides).
    """
    b, length, p = args.batch, args.length, args.prompt_length
    if args.model == "llama":
        useful = least_llama_flops(model_dims(args), p, length, b)
        executed_peft = analytic_llama_flops(model_dims(args), tokens_per_example=length, prompt_len=p, batch=b,
                                             lm_head_positions=p + length)
    else:
        dims = {k: v for k, v in model_dims(args).items() if k in ("n_layer", "d", "vocab")}
        useful = flops.least_prompt_tuning_flops(**dims, prompt_len=p, input_lengths=np.zeros(b),
                                                 target_lengths=np.full(b, length), batches=1)
        executed_peft = flops.analytic_gpt2_flops(**dims, tokens_per_example=length, prompt_len=p, batch=b,
                                                  lm_head_positions=p + length)
    print(f"FLOPs per step (utilisation against a dense 2048^3 {args.dtype} matmul timed in the same child):")
    if ours is not None:
        t = float(np.median(ours["times"]))
        if ours.get("flops"):
            flops.report("  ours executed", ours["flops"], t, ours["peak_flops"], "xla")
        flops.report("  ours useful", useful, t, ours["peak_flops"], "analytic least work")
    if theirs is not None:
        t = float(np.median(theirs["times"]))
        flops.report("  PEFT executed", executed_peft, t, theirs["peak_flops"],
                     "analytic, LM head at all P + L positions")
        flops.report("  PEFT useful", useful, t, theirs["peak_flops"], "analytic least work")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", choices=GPT2_MODELS + ["llama"],
                   help="a GPT-2 size (preset), or 'llama': the random ~150M Llama of LLAMA_150M")
    p.add_argument("--n_layer", type=int, default=None, help="fewer layers than the preset (quick CPU runs)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128, help="text tokens per example (L)")
    p.add_argument("--prompt_length", type=int, default=20, help="P")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1; the first compiles)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="torch device (default: cuda when available); JAX uses its default device")
    p.add_argument("--cpus", type=int, default=None, help="pin both sides to the first N CPUs")
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--rounds", type=int, default=1,
                   help="run each side this many times, alternating; the round with the fastest median is shown")
    p.add_argument("--sides", default="ours,peft",
                   help="comma-separated, of ours (the lean LM head), ours_plain (the whole [B*L, V] logits at once) "
                        "and peft")
    p.add_argument("--only", choices=SIDES, default=None, help="run one side only")
    p.add_argument("--_child", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--_folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1")
    sides = [x for x in args.sides.split(",") if x]
    if not sides or set(sides) - set(SIDES):
        p.error(f"--sides takes a comma-separated list of {', '.join(SIDES)}; got {args.sides!r}")
    if args.only:
        sides = [args.only]
    if args.device is None:
        try:
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            args.device = "cpu"

    if args._child:
        _pin(args.cpus)
        result = (run_peft(args, args._folder) if args._child == "peft"
                  else run_ours(args, args._folder, plain_head=args._child == "ours_plain"))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    args.passthrough = [f"--{k}={v}" for k, v in vars(args).items()
                        if v is not None and k not in ("only", "rounds", "sides", "_child", "_folder")]
    args.load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        build_checkpoint(args, folder)
        runs = {side: [] for side in sides}
        for r in range(args.rounds):
            for side in sides:
                print(f"round {r + 1}/{args.rounds}: {side} ...", file=sys.stderr, flush=True)
                runs[side].append(run_child(args, side, folder))
    # Other load only slows a run down: keep each side's round with the fastest median step.
    results = {side: min(rs, key=lambda x: float(np.median(x["times"]))) for side, rs in runs.items() if rs}
    for side, rs in runs.items():
        if len(rs) > 1:
            results[side]["rounds"] = [float(np.median(x["times"])) for x in rs]
    if args.only:
        r = results[args.only]
        t = float(np.median(r["times"]))
        print(f"{r['name']}: {t * 1e3:.1f} ms/step, {args.batch / t:.2f} examples/s, "
              f"{args.batch * args.length / t:.0f} tokens/s, first step {r['first']:.2f} s, "
              f"peak RSS {mib(r['rss_peak'])} MiB (+{mib(r['rss_peak'] - r['rss_loaded'])}); {r['backend']}")
        report_flops(args, results.get("ours"), results.get("peft"))
        return
    report(args, results)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
