"""FLOP accounting for the benchmarks: a same-run matmul peak, model FLOPs per step, utilisation.

    from flops import jax_matmul_peak, xla_flops, analytic_gpt2_flops, report   # from a script in benchmarks/

    peak = jax_matmul_peak()                                # FLOP/s of a dense 2048^3 float32 matmul here
    flops = xla_flops(jitted_step, *step_args)              # what XLA says the compiled step costs
    flops = analytic_gpt2_flops(12, 768, 50257, tokens_per_example=64, prompt_len=20, batch=8,
                                lm_head_positions=8)        # the same, counted by hand
    report("ours", flops, seconds_per_step, peak, source="xla")

Utilisation is achieved FLOP/s over the matmul peak measured in the same process
(`jax_matmul_peak` for JAX code, `torch_matmul_peak` for PyTorch code): both
libraries reach a different fraction of the CPU's theoretical peak, and the
measured one is what a step could get at best from that library on that machine.

Scripts run as `python benchmarks/x.py` have `benchmarks/` on `sys.path`, so
`import flops` works from any of them.
"""
from __future__ import annotations

import time

import numpy as np


def _median_seconds(run, warmup: int, repeats: int) -> float:
    """Median wall time of `run()` (which must block until done) after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def jax_matmul_peak(n: int = 2048, dtype: str = "float32", warmup: int = 2, repeats: int = 10) -> float:
    """FLOP/s of one jitted [n, n] @ [n, n] matmul under XLA on the default device: 2 n^3 / median time.

    Narrower dtypes (bfloat16) sum in float32, as the models' matmuls do (`models.common.dense`):
    on CPUs with AVX512-BF16 that is the fast path, and a bfloat16-summed matmul is not.
    """
    import jax
    import jax.numpy as jnp

    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), getattr(jnp, dtype))
    b = jax.random.normal(key_b, (n, n), getattr(jnp, dtype))
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(a.dtype))
    seconds = _median_seconds(lambda: matmul(a, b).block_until_ready(), warmup, repeats)
    return 2.0 * n**3 / seconds


def torch_matmul_peak(n: int = 2048, dtype: str = "float32", warmup: int = 2, repeats: int = 10,
                      device: str = "cpu") -> float:
    """FLOP/s of one `torch.matmul` of [n, n] @ [n, n] on `device` with torch's current threads: 2 n^3 / median."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator, dtype=getattr(torch, dtype)).to(device)
    b = torch.randn(n, n, generator=generator, dtype=getattr(torch, dtype)).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        torch.matmul(a, b)
        sync()

    with torch.no_grad():
        seconds = _median_seconds(run, warmup, repeats)
    return 2.0 * n**3 / seconds


def matmul_peak(n: int = 2048, dtype: str = "float32", framework: str = "jax") -> float:
    """`jax_matmul_peak` or `torch_matmul_peak` (framework "jax" | "torch"): FLOP/s."""
    if framework == "jax":
        return jax_matmul_peak(n, dtype)
    if framework == "torch":
        return torch_matmul_peak(n, dtype)
    raise ValueError(f"framework={framework!r}; expected 'jax' or 'torch'")


def xla_flops(jitted_fn, *args) -> float | None:
    """FLOPs of one call of `jitted_fn(*args)` by XLA's cost analysis of the compiled program (None if absent).

    `jitted_fn` is a `jax.jit` function; args may be arrays or `jax.ShapeDtypeStruct`s. Counts
    every op XLA executes (matmuls, and also softmax, layer norms, the optimizer update), after
    its optimisations, on the padded shapes it is given. `cost_analysis()` returned a list with
    one dict per program in older jax and a dict in newer; both are read.
    """
    analysis = jitted_fn.lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def analytic_gpt2_flops(n_layer: int, d: int, vocab: int, tokens_per_example, prompt_len: int, batch: int,
                        lm_head_positions, backward_to_input: bool = True, context=0):
    """FLOPs of a GPT-2 forward (and backward to the input embeddings) over `batch` rows, by hand.

    Each row runs S = prompt_len + tokens_per_example positions. Counted (multiply-add = 2 FLOPs):

        linear    = 2 * 12 d^2 * S * n_layer     the matmuls of the blocks: 12 d^2 weights per layer
                                                 (attention in/out 4 d^2, MLP 8 d^2), 2 FLOPs per weight per token
        attention = 4 * S * (context + S) * d * n_layer
                                                 Q K^T and A V over the full S x (context + S) rectangle
                                                 (neither library skips the masked half on CPU); context:
                                                 earlier positions already in a KV cache that the S also
                                                 attend to (0: plain self-attention, 4 S^2 d per layer)
        head      = 2 * d * vocab * lm_head_positions   the tied LM head, at the positions given

        forward   = linear + attention + head
        backward  = linear + 2 * attention + head      (when backward_to_input)

    Backward to the prompt only: the frozen weights get no gradients, so each matmul X W needs
    only dX = dY W^T, about its forward cost (1x forward, not the 2x of full training, which
    adds dW). The attention matmuls have activations on both sides (Q and K, A and V), so
    both operands get a gradient: 2x their forward. The LM head's backward (dH = dlogits W^T)
    costs what its forward did, at the same positions. Layer norms, GELU, softmax and the
    optimizer update are left out (a few % at GPT-2 sizes); embedding lookups cost nothing.

    tokens_per_example / lm_head_positions / context: positions per row (excluding the prompt),
    LM-head positions per row, cached positions per row; ints, or numpy arrays of per-row values
    (the result is then an array of their broadcast shape: sum it). Per-row real lengths with
    lm_head_positions = the scored tokens give the useful work; padded batch lengths give the
    work the padded step does.
    Returns FLOPs for `batch` rows (a float, or an array for array inputs).
    """
    s = prompt_len + np.asarray(tokens_per_example, np.float64)
    linear = 2.0 * 12 * d * d * s * n_layer
    attention = 4.0 * s * (np.asarray(context, np.float64) + s) * d * n_layer
    head = 2.0 * d * vocab * np.asarray(lm_head_positions, np.float64)
    flops = linear + attention + head
    if backward_to_input:
        flops = flops + linear + 2 * attention + head
    flops = batch * flops
    return float(flops) if np.ndim(flops) == 0 else flops


def least_prompt_tuning_flops(n_layer: int, d: int, vocab: int, prompt_len: int, input_lengths, target_lengths,
                              batches: int, backward_to_input: bool = True) -> float:
    """The least work of scoring targets after prefix-prompted GPT-2 inputs, by `analytic_gpt2_flops`.

    input_lengths [N]: real input tokens per example; target_lengths [N] (one target per
    input: training) or [N, C] (C candidate targets per input: rank classification);
    batches: how many batches the N examples came in. Nothing is computed twice:

        prompt   once per batch: P positions that see only themselves (causal attention, positions
                 0..P-1 in every row), so they are the same in every row
        input    once per example: its tokens attending to the prompt and to themselves, the LM
                 head at its last position (which predicts every target's first token)
        targets  per target: its tokens but the last (no score reads the last one's output),
                 attending to prompt + input + themselves, the LM head at each of them

    With backward_to_input, each part's backward to the prompt is counted as in
    `analytic_gpt2_flops`. This is the work any implementation must do (padding, the LM head
    at unscored positions and recomputing the prompt per row or the input per label are not
    in it); single-token targets (SST-2's labels) need the input pass and one LM-head position.
    """
    dims = {"n_layer": n_layer, "d": d, "vocab": vocab, "backward_to_input": backward_to_input}
    inputs = np.asarray(input_lengths, np.float64)
    targets = np.asarray(target_lengths, np.float64)
    targets = targets[:, None] if targets.ndim == 1 else targets
    rest = np.maximum(targets - 1, 0)  # [N, C]
    prompt = analytic_gpt2_flops(**dims, tokens_per_example=0, prompt_len=prompt_len, batch=batches,
                                 lm_head_positions=0)
    per_input = analytic_gpt2_flops(**dims, tokens_per_example=inputs, prompt_len=0, batch=1, lm_head_positions=1,
                                    context=prompt_len)
    per_target = analytic_gpt2_flops(**dims, tokens_per_example=rest, prompt_len=0, batch=1, lm_head_positions=rest,
                                     context=prompt_len + inputs[:, None])
    return float(prompt + np.sum(per_input) + np.sum(per_target))


def utilisation(flops_per_step: float, step_seconds: float, peak_flops: float) -> tuple[float, float]:
    """(achieved FLOP/s, achieved / peak)."""
    achieved = flops_per_step / step_seconds
    return achieved, achieved / peak_flops


def report(name: str, flops_per_step: float, step_seconds: float, peak_flops: float, source: str) -> str:
    """Prints (and returns) one line: model FLOPs per step and their source, achieved GFLOP/s, the peak, utilisation.

    source: how the FLOPs were counted, e.g. "xla" (cost analysis of the compiled step) or
    "analytic" (`analytic_gpt2_flops`); peak_flops: the same-run matmul peak in FLOP/s.
    """
    achieved, fraction = utilisation(flops_per_step, step_seconds, peak_flops)
    line = (f"{name}: {flops_per_step / 1e9:.1f} GFLOP/step ({source}), {step_seconds * 1e3:.0f} ms/step -> "
            f"{achieved / 1e9:.1f} GFLOP/s; same-run matmul peak {peak_flops / 1e9:.1f} GFLOP/s; "
            f"utilisation {100 * fraction:.1f}%")
    print(line)
    return line
