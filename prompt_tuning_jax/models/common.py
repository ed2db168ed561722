"""Small pieces shared by the model files: parameters with logical axes, masks, norms, dropout, ragged rows.

Every parameter is an `nnx.Param` whose metadata `axes` names its logical axes
(`vocab`, `embed`, `heads`, `mlp`, ...). `prompt_tuning_jax/partitioning.py` maps those
names to mesh axes; the model files never mention a mesh.

Rows are ragged inside padded [B, T] arrays: a row's real tokens are where its
attention mask is 1, on either side of the padding. `first_real`, `last_real`,
`insert` and `remove` work from the mask alone, and so do GPT-2's positions
(`positions_from_mask`), so that no prediction depends on the padding.

Dropout is explicit and functional: a model gets `dropout_rng` (None: no
dropout), turns it into one key per row (`row_keys`), derives a key for every
dropout site by folding in fixed integers (`fold`: layer, site), and draws each
row's mask from its own key (`dropout`). A row's masks therefore depend only on
its key, never on which other rows share the batch: split the batch into
micro-batches or over devices and every row draws the same masks.

Attention runs one of three implementations (`pick_attention`): 'einsum' (our
own two einsums, with dropout on the probabilities), 'xla' and 'cudnn'
(`jax.nn.dot_product_attention`; cuDNN flash attention on NVIDIA GPUs). The
models' `attention` config field asks for one, or 'auto': cuDNN where it applies
(a CUDA GPU, bf16/fp16, no attention dropout in this call), else einsum.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

# Added to attention scores of masked keys. Finite (not -inf) so that a query
# row whose keys are all masked (a pad position) gives a uniform softmax, not NaN.
MASK_VALUE = -1e9


def param(rngs: nnx.Rngs | None, shape, axes, dtype, stddev: float | None = 0.02) -> nnx.Param:
    """A parameter of `shape` with logical `axes`; normal(stddev) or ones when stddev is None.

    rngs None: zeros, a placeholder for weights about to be read (`hf.from_pretrained` builds its
    abstract model so: drawing under `nnx.eval_shape` costs time quadratic in the model's size).
    """
    if len(shape) != len(axes):
        raise ValueError(f"shape {shape} and axes {axes} differ in rank")
    if rngs is None:
        value = jnp.zeros(shape, dtype)
    elif stddev is None:
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


def prefix_mask(attention_mask: jax.Array | None, p: int) -> jax.Array | None:
    """[B, T] mask -> [B, P + T] with P real positions before it (a prefix's keys); as given when P = 0 or None."""
    if attention_mask is None or p == 0:
        return attention_mask
    return jnp.concatenate([jnp.ones((attention_mask.shape[0], p), attention_mask.dtype), attention_mask], axis=1)


def with_prefix(prefix, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """k, v [B, T, N, D] after a prefix's (k, v) [1|B, P, N, D] every row attends to -> [B, P + T, N, D] each;
    k, v as given without a prefix (None)."""
    if prefix is None:
        return k, v
    return tuple(jnp.concatenate([jnp.broadcast_to(c, (y.shape[0], *c.shape[1:])).astype(y.dtype), y], axis=1)
                 for c, y in zip(prefix, (k, v)))


def causal_bias(q_len: int, k_len: int, offset: int | jax.Array = 0) -> jax.Array:
    """Additive causal bias [1, 1, Tq, Tk]: query i (at absolute position offset + i) sees keys <= it."""
    q = jnp.arange(q_len)[:, None] + offset
    k = jnp.arange(k_len)[None, :]
    return jnp.where(k <= q, 0.0, MASK_VALUE).astype(jnp.float32)[None, None]


ATTENTION_IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn")


def check_attention(name: str) -> str:
    """`name` if it is one of ATTENTION_IMPLEMENTATIONS, else a ValueError."""
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; use one of {ATTENTION_IMPLEMENTATIONS}")
    return name


def pick_attention(requested: str, platform: str, dtype, head_dim: int, q_len: int, kv_len: int,
                   dropout: bool) -> str:
    """The implementation one attention call runs: 'einsum' | 'xla' | 'cudnn'.

    requested: 'auto' | 'einsum' | 'xla' | 'cudnn'; platform: 'cpu' | 'gpu' (CUDA) | 'tpu' | ...;
    dtype: of q, k and v; dropout: whether this call drops out attention probabilities.
    Dropout exists only on the einsum path, so while it acts every request runs einsum.
    'auto' is 'cudnn' where cuDNN's flash attention takes the call (a CUDA GPU, bf16 or
    fp16, a head dim that is a multiple of 8 and at most 128, and even lengths, which its
    backward with a bias needs), else 'einsum'.
    """
    check_attention(requested)
    if dropout:
        return "einsum"
    if requested != "auto":
        return requested
    cudnn_fits = (platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
                  and head_dim % 8 == 0 and head_dim <= 128 and q_len % 2 == 0 and kv_len % 2 == 0)
    return "cudnn" if cudnn_fits else "einsum"


def platform() -> str:
    """jax's default backend ('cpu', 'gpu', 'tpu'), with a GPU that is not CUDA (no cuDNN) called 'rocm'."""
    backend = jax.default_backend()
    if backend == "gpu" and "cuda" not in jax.devices()[0].client.platform_version.lower():
        return "rocm"
    return backend


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, scale: float,
           dropout_rate: float = 0.0, keys: jax.Array | None = None, implementation: str = "auto") -> jax.Array:
    """Dot-product attention with the softmax in float32.

    q [B, Tq, N, D], k/v [B, Tk, N, D], bias broadcastable to [B, N, Tq, Tk] -> [B, Tq, N, D].
    With per-row `keys` [B], dropout at `dropout_rate` on the attention probabilities
    (after the softmax and the cast to v's dtype, as transformers' eager attention does).
    implementation: 'auto' | 'einsum' | 'xla' | 'cudnn' (`pick_attention`); 'xla' gives
    the einsum path's numbers, masked query rows included.
    """
    impl = pick_attention(implementation, platform(), q.dtype, q.shape[-1], q.shape[1], k.shape[1],
                          dropout=keys is not None and dropout_rate > 0)
    if impl == "einsum":
        # XLA:CPU runs both products 3x faster with the heads before the positions ([B, N, T, D]: the batch
        # dimensions leading) than it transposes them itself (benchmarks/profile_eval.py); elsewhere the
        # layouts are the compiler's to choose.
        heads_first = platform() == "cpu"
        if heads_first:
            q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
        scores = jnp.einsum("bnqd,bnkd->bnqk" if heads_first else "bqnd,bknd->bnqk", q, k,
                            preferred_element_type=jnp.float32)
        scores = scores * scale + bias
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        probs = dropout(probs, dropout_rate, keys)
        if heads_first:
            return jnp.einsum("bnqk,bnkd->bnqd", probs, v).transpose(0, 2, 1, 3)
        return jnp.einsum("bnqk,bknd->bqnd", probs, v)
    if impl == "cudnn":
        # cuDNN adds the bias in q's dtype and wants it [B|1, N|1, Tq, Tk]. MASK_VALUE must stay
        # finite there: float16 tops out at 65504, so a float16 query row with no key to see
        # averages by its scores instead of uniformly (finite; such pad rows are never read).
        bias = jnp.broadcast_to(bias, (*bias.shape[:2], q.shape[1], k.shape[1]))
        bias = jnp.maximum(bias, jnp.finfo(q.dtype).min / 2).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation=impl)


def dense(x: jax.Array, w: jax.Array, *, out_in: bool = False, out_dtype=None) -> jax.Array:
    """x [..., I] times a weight w [I, O] (or [O, I] with out_in) -> [..., O] in out_dtype (default: x's).

    float32 x: a plain matmul. Narrower x (bfloat16): the products are taken in x's dtype
    and summed in float32, in the forward and in both backward matmuls (a custom VJP:
    JAX's own rule would turn the float32 cotangent into float32 matmuls). This is how
    TPUs, tensor cores and CPUs with AVX512-BF16 multiply fast: on this project's CPU a
    bfloat16 matmul summed in float32 runs at twice the float32 rate, one summed in
    bfloat16 at the float32 rate. w is cast to x's dtype.
    """
    w = w.astype(x.dtype)
    if x.dtype == jnp.float32:
        y = jax.lax.dot_general(x, w, (((x.ndim - 1,), (1 if out_in else 0,)), ((), ())))
        return y if out_dtype is None else y.astype(out_dtype)
    return _narrow_dense(x, w, out_in, jnp.dtype(out_dtype or x.dtype))


def _contract_last(a: jax.Array, b: jax.Array, b_axis: int) -> jax.Array:
    """a [..., K] with b's axis `b_axis` (of 2) -> [..., other axis of b], summed in float32."""
    return jax.lax.dot_general(a, b, (((a.ndim - 1,), (b_axis,)), ((), ())), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _narrow_dense(x, w, out_in, out_dtype):
    return _contract_last(x, w, 1 if out_in else 0).astype(out_dtype)


def _narrow_dense_fwd(x, w, out_in, out_dtype):
    return _narrow_dense(x, w, out_in, out_dtype), (x, w)


def _narrow_dense_bwd(out_in, out_dtype, residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)
    dx = _contract_last(g, w, 0 if out_in else 1).astype(x.dtype)
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    pair = (g2, x2) if out_in else (x2, g2)  # dw = g^T x ([O, I]) or x^T g ([I, O])
    dw = jax.lax.dot_general(*pair, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dx, dw.astype(w.dtype)  # dw of a frozen weight is never used, and XLA drops it


_narrow_dense.defvjp(_narrow_dense_fwd, _narrow_dense_bwd)


def run_block(block: nnx.Module, remat: bool, *args):
    """block(*args), rematerialised in the backward pass when `remat` (only the block's inputs are saved).

    Every path through a stack of blocks calls them through here, so none forgets remat.
    """
    if remat:
        return nnx.remat(type(block).__call__)(block, *args)
    return block(*args)


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


# --- dropout -------------------------------------------------------------------------

def row_keys(dropout_rng: jax.Array | None, batch: int) -> jax.Array | None:
    """`dropout_rng` -> one typed PRNG key per row [B] (None stays None: no dropout).

    dropout_rng: a single key (typed, or raw uint32 [2]): row b gets fold_in(key, b);
    or already one key per row ([B] typed, or raw [B, 2]), used as given (the
    trainer derives them from each row's index in the global batch).
    """
    if dropout_rng is None:
        return None
    if not jax.dtypes.issubdtype(dropout_rng.dtype, jax.dtypes.prng_key):
        dropout_rng = jax.random.wrap_key_data(dropout_rng)
    if dropout_rng.ndim == 0:
        return jax.vmap(jax.random.fold_in, (None, 0))(dropout_rng, jnp.arange(batch))
    if dropout_rng.shape != (batch,):
        raise ValueError(f"dropout_rng has {dropout_rng.shape[0]} row keys for a batch of {batch} rows")
    return dropout_rng


def fold(keys: jax.Array | None, *data: int | jax.Array) -> jax.Array | None:
    """Per-row keys [B] with integers folded in (a layer, a site): an independent stream per site."""
    if keys is None:
        return None
    for d in data:
        keys = jax.vmap(jax.random.fold_in, (0, None))(keys, d)
    return keys


def repeat_keys(keys: jax.Array | None, r: int) -> jax.Array | None:
    """Row keys [B] -> [R*B] in example-major order (as `jnp.repeat`); copy r of row b gets fold_in(key_b, r).

    R == 1 leaves them unchanged, so a single target per input draws its input's masks.
    """
    if keys is None or r == 1:
        return keys
    return jax.vmap(jax.random.fold_in)(jnp.repeat(keys, r, axis=0), jnp.tile(jnp.arange(r), keys.shape[0]))


def dropout(x: jax.Array, rate: float, keys: jax.Array | None) -> jax.Array:
    """Inverted dropout as `torch.nn.functional.dropout` in training: each value is zeroed with
    probability `rate` and the others are scaled by 1 / (1 - rate).

    x [B, ...]; keys [B]: row b's mask comes from keys[b] alone. Identity, with no
    random numbers drawn, when `keys` is None or `rate` is 0.
    """
    if keys is None or rate == 0:
        return x
    if rate >= 1:
        return jnp.zeros_like(x)
    keep = jax.vmap(lambda key: jax.random.bernoulli(key, 1.0 - rate, x.shape[1:]))(keys)
    return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))  # as torch


# --- ragged rows in padded arrays (lengths always come from the mask) -------------

def positions_from_mask(mask: jax.Array) -> jax.Array:
    """[B, T] 0/1 -> [B, T] positions that count real tokens only: cumsum(mask) - 1, clipped at 0.

    Real tokens are numbered 0, 1, ... whatever padding precedes them (as
    transformers' `generate` numbers left-padded rows); pads get the position of
    the real token before them (0 before the first).
    """
    return jnp.maximum(jnp.cumsum((mask > 0).astype(jnp.int32), axis=-1) - 1, 0)


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


# --- where a soft prompt sits, for what the blocks and attention do with it ---------------------
@struct.dataclass
class PromptSite:
    """Where the soft prompt sits in a model's input: a prompt for every block, and who may see it.

    A model given one (`prompt_site=` of `activations`, `target_hidden`, `start_decode`) finds
    the prompt's positions itself (`slots`), from the real-token numbering that padding, GPT-2's
    left-aligned prefill and appended targets all keep: row b's prompt vector p is the real
    token numbered start[b] + p.
    - `layers` [L, P, H] (METHOD 'per_layer'): block i > 0 gets `layers[i]` at those positions
      (`block_input`; block 0's prompt is the one inserted into the embeddings), by 'replace'
      or 'add'. Positions a decoder runs later against its cache (generated tokens, targets)
      are never prompt positions, so no step re-adds a prompt.
    - `visibility` (PROMPT_VISIBILITY, normalised by `visibility.check`): which of
      prompt->prompt, prompt->prompt;causal and prompt->input attention are allowed
      (`visibility_bias`); None keeps the model's own attention.
    """

    start: jax.Array                      # [B] real-token number of each row's first prompt vector
    length: int = struct.field(pytree_node=False)  # P
    layers: jax.Array | None = None       # [L, P, H] one prompt per block (layers[0]: the inserted one)
    combine: str = struct.field(pytree_node=False, default="replace")  # 'replace' | 'add'
    visibility: frozenset | None = struct.field(pytree_node=False, default=None)

    def slots(self, mask: jax.Array) -> jax.Array:
        """[B, S] mask of a sequence in time order -> [B, S] the prompt row p at each prompt position, else -1."""
        slot = positions_from_mask(mask) - self.start[:, None]
        return jnp.where((mask > 0) & (slot >= 0) & (slot < self.length), slot, -1)


def block_input(site: PromptSite | None, i: int, x: jax.Array, slots: jax.Array | None) -> jax.Array:
    """The input of block i: x [B, S, H] with `site.layers[i]` put at the prompt's `slots` [B, S] (from
    `PromptSite.slots`) by the site's combine; x itself for block 0, or without layer prompts."""
    if site is None or site.layers is None or i == 0:
        return x
    return combine_at(x, site.layers[i], slots, site.combine)


def visibility_bias(site: PromptSite | None, mask: jax.Array, slots: jax.Array | None, *, causal: bool,
                    keys: int | None = None) -> jax.Array | float:
    """Additive bias [B, 1, S, keys] (float32) of the site's PROMPT_VISIBILITY over a sequence of S positions
    (mask [B, S], slots from `PromptSite.slots`); keys > S (a cache's later slots) are left to the causal
    bias. 0.0 without a site or a visibility setting."""
    if site is None or site.visibility is None:
        return 0.0
    from prompt_tuning_jax.models import visibility

    kinds = jnp.where(mask > 0, jnp.where(slots >= 0, visibility.PROMPT, visibility.INPUT), visibility.PAD)
    allowed = visibility.allowed_mask(kinds, site.visibility, causal=causal)  # [B, S, S]
    s = mask.shape[1]
    if keys is not None and keys > s:
        allowed = jnp.pad(allowed, ((0, 0), (0, 0), (0, keys - s)), constant_values=True)
    return jnp.where(allowed, 0.0, MASK_VALUE).astype(jnp.float32)[:, None]


def combine_at(x: jax.Array, prompt: jax.Array, slots: jax.Array, combine: str) -> jax.Array:
    """x [B, S, H] with prompt row slots[b, s] replacing ('replace') or added to ('add') x[b, s] wherever
    slots [B, S] >= 0. prompt: [P, H], or [B, P, H] (one per row)."""
    index = jnp.maximum(slots, 0)
    if prompt.ndim == 2:
        rows = jnp.take(prompt, index, axis=0)  # [B, S, H]
    else:
        rows = jnp.take_along_axis(prompt, index[..., None], axis=1)
    rows = rows.astype(x.dtype)
    return jnp.where((slots >= 0)[..., None], rows if combine == "replace" else x + rows, x)
