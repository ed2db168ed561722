"""The LM head, and log p(target) without the [N, V] logits: the memory-lean path of the "lm" loss.

    head = model.output_head()                   # LMHead(weight [V, H], dtype, scale, softcap)
    head.logits(hidden)                          # [..., H] -> [..., V] float32
    head.log_probs(hidden, targets)              # [..., L, H], [..., L] -> log p(target) [..., L] float32

With a 128k-262k vocabulary the float32 logits of a training step, [B*L, V], and their gradient are its
largest buffers (Llama 3's 128,256 tokens: 525 MB each for B8 x 128). `log_probs` never holds them whole: it
runs the head over the target positions in chunks of about `chunk_bytes` of logits (at most MAX_CHUNKS of them),
and a custom VJP takes the gradient of every chunk while its logits are still there:

    forward, per chunk:  z = h W^T -> y (soft-capped) -> log p = y[t] - logsumexp(y)
                         dh = (onehot(t) - softmax(y)) dy/dz W         (only when h is differentiated)
    backward:            ct_h = g * dh;  ct_W recomputes each chunk    (only when W is differentiated)

So prompt tuning (a frozen head) does the head's two matmuls per chunk, as the plain path does, holds one
chunk's logits at a time, and keeps dh [.., H] (the size of the hidden states) for the backward pass; a
trained head (METHOD 'full') adds the recomputation for its weight gradient. The gradients equal the plain
path's (`logits` then log_softmax) to float32 rounding (tests/models/test_lm_head.py).

Chunks are strided over the target positions (chunk c holds positions c, c + n, c + 2n, ...), so the batch
axis and its sharding are untouched: every device works on its own rows. Targets shorter than the chunking
would split (rank classification's few label tokens) are scored in one piece.

On TPU the chunks are unrolled (one matmul pair each), elsewhere they are a `lax.map` loop. Inside a while loop
XLA hoists whatever depends on the weight alone out of the loop, and XLA:TPU starts a float32 matmul at default
precision with a cast of the weight to bfloat16: hoisted, that is a copy of the whole table (half its float32
bytes) held through the step. Unrolled, each chunk's matmul casts as it reads, as the plain path's does
(tests/models/test_lm_head.py compiles both for a TPU chip). XLA:CPU, on the other hand, runs unrolled chunks
side by side (all their logits at once), so there the loop stays. MAX_CHUNKS keeps the unrolled program small:
past it the chunks grow instead. A cast the code asks for (a float32 table under bfloat16 compute) is hoisted
out of the loop the same way on CPU and GPU, and out of a trained head's weight-gradient loop everywhere.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from prompt_tuning_jax.models import common

CHUNK_BYTES = 64 << 20  # float32 logits per chunk in `log_probs` (all rows of the global batch)
MAX_CHUNKS = 16  # chunks in `log_probs` at most (unrolled in the program on TPU)


@dataclasses.dataclass(frozen=True)
class LMHead:
    """hidden [..., H] -> logits [..., V] float32: (hidden * scale) @ weight^T in `dtype`, then cap * tanh(/ cap).

    weight [V, H]: the output embedding (the input one when tied). scale: T5 v1.0's d_model**-0.5 on tied
    embeddings, else None. softcap: Gemma's final_logit_softcapping, else None.
    """

    weight: jax.Array
    dtype: Any
    scale: float | None = None
    softcap: float | None = None

    def logits(self, hidden: jax.Array) -> jax.Array:
        with jax.named_scope("lm_head"):
            return _logits(hidden, self.weight, jnp.dtype(self.dtype), self.scale, self.softcap)

    def log_probs(self, hidden: jax.Array, targets: jax.Array, chunk_bytes: int | None = None) -> jax.Array:
        """log softmax(logits(hidden))[target]: hidden [..., L, H], targets [..., L] -> [..., L] float32.

        The logits are made about `chunk_bytes` (default CHUNK_BYTES) at a time, in MAX_CHUNKS pieces at most,
        never all at once.
        """
        *lead, length, h = hidden.shape
        rows = math.prod(lead)
        per_chunk = max(1, (chunk_bytes or CHUNK_BYTES) // (4 * self.weight.shape[0] * max(rows, 1)))
        n = min(-(-length // per_chunk), MAX_CHUNKS)  # chunks
        per_chunk = -(-length // n)
        with jax.named_scope("lm_loss"):
            if n == 1:
                return target_log_probs(self.logits(hidden), targets)
            # Strided chunks: position i * n + c goes to chunk c; padding (target 0) to a multiple of n.
            pad = n * per_chunk - length
            x = jnp.pad(hidden.reshape(rows, length, h), ((0, 0), (0, pad), (0, 0)))
            t = jnp.pad(targets.reshape(rows, length).astype(jnp.int32), ((0, 0), (0, pad)))
            x = jnp.moveaxis(x.reshape(rows, per_chunk, n, h), 2, 0)  # [n, rows, per_chunk, H]
            t = jnp.moveaxis(t.reshape(rows, per_chunk, n), 2, 0)
            out = _chunked(x, t, self.weight, jnp.dtype(self.dtype), self.scale, self.softcap)  # [n, rows, per_chunk]
            out = jnp.moveaxis(out, 0, 2).reshape(rows, n * per_chunk)[:, :length]
            return out.reshape(*lead, length)


def target_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log_softmax(logits)[target] without materialising the [..., V] log-probabilities: [...]."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def _logits(hidden, weight, dtype, scale, softcap):
    if scale is not None:
        hidden = hidden * scale
    z = common.dense(hidden.astype(dtype), weight, out_in=True, out_dtype=jnp.float32)
    return z if softcap is None else softcap * jnp.tanh(z / softcap)


def _logits_and_dlogits(h, t, weight, dtype, scale, softcap):
    """One chunk: h [R, C, H], t [R, C] -> (log p [R, C], d log p / dz [R, C, V]), z the logits before the cap."""
    y = _logits(h, weight, dtype, scale, softcap)
    lse = jax.nn.logsumexp(y, axis=-1)
    logp = jnp.take_along_axis(y, t[..., None], axis=-1)[..., 0] - lse
    g = jax.nn.one_hot(t, y.shape[-1], dtype=jnp.float32) - jnp.exp(y - lse[..., None])
    if softcap is not None:
        g = g * (1.0 - jnp.square(y / softcap))  # d cap * tanh(z / cap) / dz
    return logp, g


def _hidden_grad(g, weight, dtype, scale, like):
    """d/dh of the chunk's log p from g = d log p / dz [R, C, V] -> [R, C, H] in `like`'s dtype, as `dense`'s
    backward rounds it (products in `dtype`, sums in float32)."""
    w = weight.astype(dtype)
    dh = jax.lax.dot_general(g.astype(dtype), w, (((2,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    dh = dh.astype(dtype).astype(jnp.float32)
    return (dh if scale is None else dh * scale).astype(like.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _chunked(x, t, weight, dtype, scale, softcap):
    """x [n, R, C, H], t [n, R, C] -> log p [n, R, C], one chunk (leading axis) at a time."""
    return _chunk_map(lambda h, tc: target_log_probs(_logits(h, weight, dtype, scale, softcap), tc), x, t)


def _chunked_fwd(x, t, weight, dtype, scale, softcap):
    want_h, want_w = x.perturbed, weight.perturbed
    x, t, weight = x.value, t.value, weight.value
    if not want_h:
        return _chunked(x, t, weight, dtype, scale, softcap), (None, x, t, weight, want_w)

    def chunk(h, tc):
        logp, g = _logits_and_dlogits(h, tc, weight, dtype, scale, softcap)
        return logp, _hidden_grad(g, weight, dtype, scale, h)

    logp, dh = _chunk_map(chunk, x, t)
    return logp, (dh, x, t, weight, want_w)


def _chunked_bwd(dtype, scale, softcap, residuals, ct):
    dh, x, t, weight, want_w = residuals
    ct_x = None if dh is None else (dh * ct[..., None].astype(dh.dtype)).astype(x.dtype)
    ct_w = None
    if want_w:  # a trained head: recompute each chunk's softmax for the weight's gradient
        def add(acc, xtc):
            h, tc, c = xtc
            _, g = _logits_and_dlogits(h, tc, weight, dtype, scale, softcap)
            hs = (h if scale is None else h * scale).astype(dtype)
            gw = (g * c[..., None]).astype(dtype)  # [R, C, V]
            return acc + jax.lax.dot_general(gw, hs, (((0, 1), (0, 1)), ((), ())),
                                             preferred_element_type=jnp.float32), None

        ct_w, _ = jax.lax.scan(add, jnp.zeros(weight.shape, jnp.float32), (x, t, ct.astype(jnp.float32)))
        ct_w = ct_w.astype(weight.dtype)
    return ct_x, None, ct_w


def _chunk_map(f, x, t):
    """f(x[c], t[c]) for each chunk c of the leading axis, stacked, one chunk after another: a `lax.map` loop,
    but unrolled on TPU (see the module docstring)."""
    def unrolled(x, t):
        outs = [f(x[c], t[c]) for c in range(x.shape[0])]
        return jax.tree.map(lambda *o: jnp.stack(o), *outs)

    return jax.lax.platform_dependent(x, t, tpu=unrolled, default=lambda x, t: jax.lax.map(lambda xt: f(*xt), (x, t)))


_chunked.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)
