"""IA3 evaluation: the vectors merged into the frozen weights vs applied at every call; PEFT's IA3 beside both.

    python benchmarks/ia3_merge.py                   # gpt2 124M, batch 16 x 128, float32, 10 timed calls per side
    python benchmarks/ia3_merge.py --rounds 2        # each side twice, alternating; fastest round shown
    python benchmarks/ia3_merge.py --n_layer 2       # a quick smoke run

One random checkpoint of the size (transformers' GPT2LMHeadModel, saved and loaded by both), IA3 on PEFT's
GPT-2 targets (c_attn's output, mlp.c_proj's input) with random vectors. Ours: the jitted forward (logits of
every position, what rank classification reads) with the vectors applied (`models.ia3.add_ia3`) and after
`merge_ia3` folds them into the weights. PEFT: `PeftModel` with the same adapter (exported by ours), unmerged
and after `merge_and_unload()`. All four give the same logits (checked); the script prints examples/s of each
and the ratios merged / unmerged and ours / PEFT. Results go to benchmarks/results/ia3_merge.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results", "ia3_merge.json")


def timed(fn, iters: int) -> float:
    """Median seconds of fn() after two warm-up calls (compilation included there)."""
    fn()
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def ours(folder: str, ids, vectors_seed: int):
    """(unmerged forward, merged forward, the model) as jitted closures returning numpy logits."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import prompt_tuning_jax as ptj
    from prompt_tuning_jax.models.ia3 import add_ia3, merge_ia3, target_layers

    model = add_ia3(ptj.from_pretrained(folder))
    rng = np.random.default_rng(vectors_seed)
    for _, layer, _ in target_layers(model):
        layer.ia3.ia3_l[...] = jnp.asarray(rng.uniform(0.5, 1.5, layer.ia3.ia3_l.shape), jnp.float32)

    def jitted(m):
        graphdef, state = nnx.split(m)
        run = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids, jnp.ones_like(ids)))
        return lambda: np.asarray(run(state, ids))

    unmerged = jitted(model)
    reference = unmerged()
    merged_model = nnx.clone(model)  # a copy to merge
    merge_ia3(merged_model)
    return unmerged, jitted(merged_model), model, reference


def peft_sides(folder: str, adapter: str, ids):
    import torch
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    torch.set_grad_enabled(False)
    x = torch.tensor(np.asarray(ids)).long()
    unmerged = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(folder), adapter).eval()
    merged = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(folder), adapter).merge_and_unload().eval()
    return (lambda: unmerged(input_ids=x).logits.numpy()), (lambda: merged(input_ids=x).logits.numpy())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)

    import jax
    import torch
    import transformers

    from prompt_tuning_jax.prompts.io import export_peft_ia3

    folder = tempfile.mkdtemp(prefix="ia3_merge_")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=args.n_layer)).save_pretrained(folder)
    ids = np.random.default_rng(0).integers(0, 50257, (args.batch, args.length)).astype(np.int32)
    unmerged, merged, model, reference = ours(folder, ids, vectors_seed=1)
    export_peft_ia3(os.path.join(folder, "adapter"), model, folder)
    peft_unmerged, peft_merged = peft_sides(folder, os.path.join(folder, "adapter"), ids)
    sides = {"ours unmerged": unmerged, "ours merged": merged, "peft unmerged": peft_unmerged,
             "peft merged": peft_merged}
    for name, fn in sides.items():
        diff = float(np.abs(fn() - reference).max())
        assert diff < 1e-3, f"{name}: max |diff| {diff} from ours unmerged"
    best = {name: float("inf") for name in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            best[name] = min(best[name], timed(fn, args.iters))
    rate = {name: args.batch / s for name, s in best.items()}
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); gpt2 with {args.n_layer} layers, batch {args.batch} x {args.length}")
    for name in sides:
        print(f"  {name:14s} {rate[name]:8.1f} examples/s  ({best[name] * 1e3:.1f} ms a batch)")
    ratios = {"ours merged / unmerged": rate["ours merged"] / rate["ours unmerged"],
              "peft merged / unmerged": rate["peft merged"] / rate["peft unmerged"],
              "ours / peft, unmerged": rate["ours unmerged"] / rate["peft unmerged"],
              "ours / peft, merged": rate["ours merged"] / rate["peft merged"]}
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}x")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"args": vars(args), "examples_per_s": rate, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
