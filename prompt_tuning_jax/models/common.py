"""Small pieces shared by the model files: parameters with logical axes, masks, norms, ragged rows.

Every parameter is an `nnx.Param` whose metadata `axes` names its logical axes
(`vocab`, `embed`, `heads`, `mlp`, ...). `prompt_tuning_jax/partitioning.py` maps those
names to mesh axes; the model files never mention a mesh.

Rows are ragged inside padded [B, T] arrays: a row's real tokens are where its
attention mask is 1, on either side of the padding. `first_real`, `last_real`,
`insert` and `remove` work from the mask alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# Added to attention scores of masked keys. Finite (not -inf) so that a query
# row whose keys are all masked (a pad position) gives a uniform softmax, not NaN.
MASK_VALUE = -1e9


def param(rngs: nnx.Rngs, shape, axes, dtype, stddev: float | None = 0.02) -> nnx.Param:
    """A parameter of `shape` with logical `axes`; normal(stddev) or ones when stddev is None."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {shape} and axes {axes} differ in rank")
    if stddev is None:
        value = jnp.ones(shape, dtype)
    else:
        value = stddev * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(value, axes=tuple(axes))


def zeros_param(shape, axes, dtype) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype), axes=tuple(axes))


def padding_bias(attention_mask: jax.Array | None, length: int) -> jax.Array:
    """[B, Tk] 0/1 mask -> additive bias [B, 1, 1, Tk] (float32); zeros when mask is None."""
    if attention_mask is None:
        return jnp.zeros((1, 1, 1, length), jnp.float32)
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, MASK_VALUE).astype(jnp.float32)


def causal_bias(q_len: int, k_len: int, offset: int | jax.Array = 0) -> jax.Array:
    """Additive causal bias [1, 1, Tq, Tk]: query i (at absolute position offset + i) sees keys <= it."""
    q = jnp.arange(q_len)[:, None] + offset
    k = jnp.arange(k_len)[None, :]
    return jnp.where(k <= q, 0.0, MASK_VALUE).astype(jnp.float32)[None, None]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, scale: float) -> jax.Array:
    """Dot-product attention with the softmax in float32.

    q [B, Tq, N, D], k/v [B, Tk, N, D], bias broadcastable to [B, N, Tq, Tk] -> [B, Tq, N, D].
    """
    scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
    scores = scores * scale + bias
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bnqk,bknd->bqnd", probs, v)


def layer_norm(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis, computed in float32, returned in x.dtype."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """T5's LayerNorm: no mean subtraction, no bias; float32 inside, x.dtype out."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps)
    return (y * weight.astype(jnp.float32)).astype(x.dtype)


def gelu_new(x: jax.Array) -> jax.Array:
    """The tanh approximation of GELU (GPT-2's `gelu_new`, T5 v1.1's `gelu_new`)."""
    return jax.nn.gelu(x, approximate=True)


ACTIVATIONS = {
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": gelu_new,
    "gelu_fast": gelu_new,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


# --- ragged rows in padded arrays (lengths always come from the mask) -------------

def first_real(mask: jax.Array) -> jax.Array:
    """[B, T] 0/1 -> [B] index of the first real token (0 for an all-pad row)."""
    return jnp.argmax(mask > 0, axis=-1).astype(jnp.int32)


def last_real(mask: jax.Array) -> jax.Array:
    """[B, T] 0/1 -> [B] index of the last real token (-1 for an all-pad row)."""
    t = mask.shape[-1]
    return (t - 1 - jnp.argmax(jnp.flip(mask > 0, axis=-1), axis=-1)
            - jnp.where(jnp.any(mask > 0, axis=-1), 0, t)).astype(jnp.int32)


def insert(embeds: jax.Array, mask: jax.Array, block: jax.Array, at: jax.Array):
    """Inserts `block` (a prompt, or target tokens) into each row of `embeds` at `at[b]`; one gather.

    embeds [B, T, H], mask [B, T], block [P, H] or [B, P, H] (one per row:
    multi-task prompts), at [B] ->
    (embeds [B, T+P, H], mask [B, T+P] with the block real, source [B, T] the new
    position of each original token).
    """
    b, t, h = embeds.shape
    if block.ndim == 2:
        block = jnp.broadcast_to(block[None], (b, *block.shape))
    p = block.shape[1]
    j = jnp.arange(t + p)[None, :]  # output positions [1, T+P]
    at = at[:, None]
    in_prompt = (j >= at) & (j < at + p)
    # Index into concat([embeds, prompt]) along the sequence axis: [B, T+P].
    src = jnp.where(j < at, j, jnp.where(in_prompt, t + j - at, j - p))
    both = jnp.concatenate([embeds, block.astype(embeds.dtype)], axis=1)
    out = jnp.take_along_axis(both, src[..., None], axis=1)
    out_mask = jnp.where(in_prompt, 1, jnp.take_along_axis(mask, jnp.clip(src, 0, t - 1), axis=1))
    tokens = jnp.arange(t)[None, :]
    source = jnp.where(tokens < at, tokens, tokens + p).astype(jnp.int32)
    return out, out_mask.astype(mask.dtype), source


def remove(x: jax.Array, source: jax.Array) -> jax.Array:
    """Gathers per-token values back to the input order: x [B, T+P, ...], source [B, T] -> [B, T, ...]."""
    idx = source.reshape(*source.shape, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, idx, axis=1)
