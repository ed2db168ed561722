"""Prefix tuning (Li & Liang, 2021; its deep form P-tuning v2, Liu et al., 2022): trained keys and values that
every row's self-attention sees before its own, in every layer. PEFT's `PrefixTuningConfig`.

    add_prefix(model, length=20)                  # METHOD 'prefix:20': a table [L, 2, P, N, D], N(0, 1)
    add_prefix(model, 20, projection=512)         # PREFIX_PROJECTION: an embedding [P, H] and an MLP make it
    fold_prefix(model)                            # the MLP's output becomes the table: same logits, no MLP

The table holds, for each of L rows, the keys (0) and values (1) of P virtual positions, per head
[L, 2, P, N, D]: PEFT's `prompt_embeddings` [P, L * 2 * N * D] reshaped. With a projection (PEFT's
`prefix_projection`, Li & Liang's reparameterisation) the table is `transform(embedding)`, where the embedding
is [P, N * D] (PEFT's token_dim: H, or T5's heads x d_kv) and transform = Linear(N * D, H'), tanh,
Linear(H', L * 2 * N * D), run once per batch on the P virtual tokens (PEFT runs it once per row). Only the table is needed after training: `fold_prefix` replaces the MLP by its output, and a
PEFT adapter holds the table alone, as PEFT saves one.

Which row each attention layer reads is the family's `prefix_rows()` (PEFT's layout, so that adapters are
exchangeable): GPT-2's block i reads row i. On T5, PEFT's prefix reaches the decoder's self-attention only
(the encoder runs without past keys, and PEFT empties the cross-attention cache), and because PEFT doubles
the table for two submodules before splitting it into layers of four, decoder block i reads row 2i mod L:
with an even L only the even rows are read (twice each); the odd rows get no gradient and stay as they
started. The encoder, cross-attention and the odd rows are left as PEFT leaves them.

Positions: the prefix has none of its own; the input's positions continue after it (P, P+1, ...), as
transformers numbers the tokens after P cached ones (T5's relative bias counts the prefix as positions
0..P-1 of the decoder). The trained values are `PrefixParam`s: METHOD 'prefix:P' trains them (and a head).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning_jax.variables import PrefixParam

AXES = ("layers", None, "prompt", "heads", None)  # [L, 2, P, N, D]: heads split like the attention's


def dims(model) -> tuple[int, int, int]:
    """(L rows, N heads, D head size) of `model`'s prefix table (`prefix_dims` of the family)."""
    found = getattr(model, "prefix_dims", None)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no prefix layout (prefix_dims, prefix_rows), so METHOD "
                         "'prefix:P' has no attention to give keys and values to")
    return found()


class Prefix(nnx.Module):
    """The trained keys and values: `table` [L, 2, P, N, D], or `embedding` [P, N * D] and `transform` making it.

    Called -> the table [L, 2, P, N, D] in float32, computed once (not per row).
    Start, as PEFT's: the table (or the embedding) from N(0, 1), the MLP's Linear layers as PyTorch draws
    them (U(+-1/sqrt(fan_in))).
    """

    def __init__(self, layers: int, length: int, heads: int, head_dim: int, *, projection: int | None = None,
                 rngs: nnx.Rngs):
        self.shape = (layers, 2, length, heads, head_dim)
        if projection is None:
            self.table = PrefixParam(jax.random.normal(rngs.params(), self.shape, jnp.float32), axes=AXES)
            self.embedding, self.transform = nnx.data(None), nnx.data(None)
            return
        self.table = nnx.data(None)
        hidden = heads * head_dim  # PEFT's token_dim (T5: N * d_kv, which need not be d_model)
        self.embedding = PrefixParam(jax.random.normal(rngs.params(), (length, hidden), jnp.float32),
                                     axes=("prompt", None))
        width = layers * 2 * heads * head_dim

        def linear(fan_in, fan_out):
            bound = 1.0 / np.sqrt(fan_in)
            draw = lambda shape: jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
            return nnx.Dict(weight=PrefixParam(draw((fan_out, fan_in))), bias=PrefixParam(draw((fan_out,))))

        self.transform = nnx.List([linear(hidden, projection), linear(projection, width)])

    @property
    def length(self) -> int:
        return self.shape[2]

    def __call__(self) -> jax.Array:
        if self.table is not None:
            return self.table[...]
        first, second = self.transform
        x = jnp.tanh(self.embedding[...] @ first["weight"][...].T + first["bias"][...])
        x = x @ second["weight"][...].T + second["bias"][...]  # [P, L * 2 * N * D]
        return from_flat(x, self.shape)


def to_flat(table) -> np.ndarray:
    """[L, 2, P, N, D] -> PEFT's `prompt_embeddings` [P, L * 2 * N * D] (its view(P, L * 2, N, D))."""
    table = np.asarray(table, np.float32)
    layers, _, p, n, d = table.shape
    return np.ascontiguousarray(table.transpose(2, 0, 1, 3, 4).reshape(p, layers * 2 * n * d))


def from_flat(flat, shape):
    """PEFT's [P, L * 2 * N * D] -> [L, 2, P, N, D] (jax or NumPy, as given)."""
    layers, _, p, n, d = shape
    xp = jnp if isinstance(flat, jax.Array) else np
    return xp.reshape(flat, (p, layers, 2, n, d)).transpose(1, 2, 0, 3, 4)


def add_prefix(model, length: int, projection: int | None = None, seed: int = 0):
    """Gives `model` a trainable prefix of `length` positions (`model.prefix`); returns `model`."""
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"the prefix length P must be an integer >= 1, got {length!r}")
    layers, heads, head_dim = dims(model)
    model.prefix = nnx.data(Prefix(layers, length, heads, head_dim, projection=projection, rngs=nnx.Rngs(seed)))
    return model


def fold_prefix(model):
    """Replaces a projected prefix by its output table (the same keys and values, no MLP); returns `model`."""
    prefix = getattr(model, "prefix", None)
    if prefix is not None and prefix.table is None:
        table = prefix()
        prefix.table = PrefixParam(table, axes=AXES)
        prefix.embedding, prefix.transform = None, None
    return model


class PrefixSeam:
    """What every family that takes a prefix shares, mixed into its model class: it needs the model's `prefix`
    (None until `add_prefix`), its `prefix_rows()` (the table row each attention layer reads) and `dtype`."""

    @property
    def prefix_length(self) -> int:
        """P, the prefix's positions before every input (0 without one)."""
        return 0 if self.prefix is None else self.prefix.length

    def _prefix_kv(self) -> list:
        """Each attention layer's prefix (k, v) [1, P, N, D] in the compute dtype (None per layer without one)."""
        return layer_kv(None if self.prefix is None else self.prefix(), self.prefix_rows(), self.dtype)


def layer_kv(table: jax.Array | None, rows, dtype) -> list:
    """Each attention layer's (k, v) [1, P, N, D] in `dtype` from the table [L, 2, P, N, D] by `rows`
    (the family's `prefix_rows()`), or a None per layer without a table."""
    if table is None:
        return [None] * len(rows)
    return [(table[r, 0][None].astype(dtype), table[r, 1][None].astype(dtype)) for r in rows]
