"""Forward throughput: our Flax GPT-2 vs transformers' PyTorch GPT-2, same random checkpoint.

    python benchmarks/forward.py [--model gpt2] [--batch 8] [--length 128] [--iters 10]

Builds a random-weight checkpoint of the named size with transformers
(no hub needed), loads it into both, and prints tokens/s side by side with the
ratio (ours / PyTorch). float32 on whatever the default JAX device is; PyTorch on CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO)


def timeit(fn, iters):
    fn()  # warm-up (and compile)
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2", choices=["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import transformers
    from flax import nnx

    import prompt_tuning_jax as ptj
    from prompt_tuning_jax.models import preset

    cfg = preset(args.model)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (args.batch, args.length)).astype(np.int32)
    mask = np.ones_like(ids)
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                                                                  n_head=cfg.n_head)).eval()
        hf.save_pretrained(folder)
        ours = ptj.from_pretrained(folder, dtype=getattr(jnp, args.dtype))

    fwd = nnx.jit(lambda m, i, k: m(i, k))
    jids, jmask = jax.device_put(ids), jax.device_put(mask)
    t_ours = timeit(lambda: fwd(ours, jids, jmask).block_until_ready(), args.iters)

    tids, tmask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    tdtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    hf = hf.to(tdtype)
    with torch.inference_mode():
        t_torch = timeit(lambda: hf(input_ids=tids, attention_mask=tmask).logits, args.iters)

    tokens = args.batch * args.length
    print(f"forward {args.model} batch {args.batch} x {args.length} tokens, {args.dtype}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), median of {args.iters}")
    print(f"{'':24s}{'ms/batch':>10s}{'tokens/s':>12s}")
    print(f"{'prompt_tuning_jax (JAX)':24s}{t_ours * 1e3:10.1f}{tokens / t_ours:12.0f}")
    print(f"{'transformers (PyTorch)':24s}{t_torch * 1e3:10.1f}{tokens / t_torch:12.0f}")
    print(f"ratio ours/PyTorch (throughput): {t_torch / t_ours:.2f}x")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
