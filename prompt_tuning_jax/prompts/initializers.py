"""Prompt initializers: closures `init(rng, shape) -> [P, H]` that compose.

The same shape as google-research/prompt-tuning (`prompt_tuning/prompts.py`):
an initializer is built once from what it needs (an embedding table, label
embeddings, an array) and then called with a PRNG key and the prompt shape
`(P, H)`. Initializers that fill only some rows take a fallback initializer for
the rest, so the paper's class-label init is

    fallback = from_sample_of_embeddings(table, population_size=5000)
    init = from_class_labels(table, tokenizer, ["negative", "positive"], fallback)

The rows the fallback provides are exactly `fallback(rng, (P, H))[L:]`: like the
original library, the fallback is called with the full shape and its first L
rows are overwritten, so the same key gives the same rows as the original code.

Tokenizing happens when the closure is built, never inside `init`, so every
initializer here runs under `jax.jit(lambda rng: init(rng, shape))` with a
static shape.

Random-init ranges, for the record: the original code's default
(`flax.linen.initializers.uniform()`) is [0, 0.01); this project's default,
`random_uniform()`, is [0, 0.5).
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning_jax.prompts import io as prompt_io

Initializer = Callable[[jax.Array, Sequence[int]], jax.Array]

PAPER_POPULATION_SIZE = 5000  # sampled-vocab init draws from the first 5,000 rows in the paper's configs


def _check_shape(shape: Sequence[int], hidden: int | None = None, what: str = "") -> tuple[int, int]:
    """`shape` as a (P, H) tuple; ValueError unless it is 2-D and H matches `hidden`."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"a prompt shape is (P, H) with P, H >= 1, got {shape}")
    if hidden is not None and shape[1] != hidden:
        raise ValueError(f"{what} has hidden size {hidden} but the prompt shape {shape} asks for {shape[1]}")
    return shape


def zeros(dtype=jnp.float32) -> Initializer:
    """All zeros: the start of a prompt that a checkpoint, a `.npy` or an adapter replaces right after, so
    that no random draw is compiled and run for nothing. -> [P, H]"""

    def init(rng, shape):
        return jnp.zeros(_check_shape(shape), dtype)

    return init


# --- random -----------------------------------------------------------------------

def random_uniform(scale: float = 0.5, centered: bool = False, dtype=jnp.float32) -> Initializer:
    """Uniform values in [0, scale), or [-scale, scale) with `centered=True`. -> [P, H]"""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    low = -scale if centered else 0.0

    def init(rng, shape):
        shape = _check_shape(shape)
        return jax.random.uniform(rng, shape, dtype, minval=low, maxval=scale)

    return init


def normal(stddev: float = 1.0, dtype=jnp.float32) -> Initializer:
    """Normal values with mean 0 and standard deviation `stddev`. -> [P, H]"""
    if stddev <= 0:
        raise ValueError(f"stddev must be > 0, got {stddev}")

    def init(rng, shape):
        shape = _check_shape(shape)
        return stddev * jax.random.normal(rng, shape, dtype)

    return init


# --- sampled vocabulary ------------------------------------------------------------

def from_sample_of_embeddings(embeddings, population_size: int | None = None) -> Initializer:
    """Rows drawn from the first `population_size` rows of the table (all rows when None).

    embeddings: [V, H]. Draws are without replacement, and with replacement only
    when the prompt is longer than the population (P > N), as in the original
    (`jax.random.choice(rng, N, (P,), replace=P > N)`). A population larger than
    V is clamped to V with a warning. -> [P, H] in the table's dtype.
    """
    if np.ndim(embeddings) != 2:
        raise ValueError(f"embeddings must be a [V, H] table, got shape {np.shape(embeddings)}")
    vocab, hidden = np.shape(embeddings)
    if population_size is None:
        population_size = vocab
    if population_size <= 0:
        raise ValueError(f"population_size must be > 0, got {population_size}")
    if population_size > vocab:
        warnings.warn(f"population_size {population_size} is larger than the embedding table ({vocab} rows); "
                      f"sampling from all {vocab} rows", stacklevel=2)
        population_size = vocab
    population = jnp.asarray(embeddings[:population_size])  # [N, H]: only what can be drawn is kept

    def init(rng, shape):
        length, _ = _check_shape(shape, hidden, "the embedding table")
        replace = length > population_size
        if replace:
            warnings.warn(f"prompt length {length} is larger than the population ({population_size} rows): "
                          "sampling with replacement", stacklevel=2)
        index = jax.random.choice(rng, population_size, (length,), replace=replace)
        return population[index]

    return init


# --- class labels and strings ----------------------------------------------------------

def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens (no EOS / BOS); T5 keeps its leading '▁' piece."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if not ids:
        raise ValueError(f"{text!r} tokenizes to no tokens")
    return ids


def _lookup(embeddings, ids: list[int], text: str) -> jax.Array:
    """Rows `ids` of the [V, H] table -> [n, H]; errors on ids outside the table (jnp would clamp them)."""
    vocab = np.shape(embeddings)[0]
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"{text!r} has token ids {bad} outside the embedding table of {vocab} rows: "
                         "do the tokenizer and the model share a vocabulary?")
    return jnp.asarray(embeddings[np.asarray(ids)])  # indexes NumPy or JAX tables without copying them whole


def from_embedded_list(embedded_list: Sequence, initializer: Initializer | None = None,
                       names: Sequence[str] | None = None) -> Initializer:
    """Row i is the mean of item i's embeddings (class-label init); the rest come from `initializer`.

    embedded_list: one item per label, each [n_i, H] (the label's sub-token
    embeddings, averaged here) or an already averaged [H] row. With L labels and
    a prompt of P rows: rows [0, min(L, P)) are the labels, in order; labels past
    P are dropped with a warning (`names` makes it readable); rows [L, P) are
    `initializer(rng, (P, H))[L:]` (default `random_uniform()`). -> [P, H]
    """
    if len(embedded_list) == 0:
        raise ValueError("from_embedded_list needs at least one label embedding")
    rows = []
    for i, item in enumerate(embedded_list):
        item = jnp.asarray(item)
        if item.ndim == 2:
            if item.shape[0] == 0:
                raise ValueError(f"label {i} has no token embeddings")
            item = item.mean(axis=0)
        if item.ndim != 1:
            raise ValueError(f"label {i}: expected [n, H] or [H] embeddings, got shape {item.shape}")
        rows.append(item)
    hidden = rows[0].shape[0]
    if any(r.shape[0] != hidden for r in rows):
        raise ValueError(f"label embeddings have different hidden sizes: {[r.shape[0] for r in rows]}")
    rows = jnp.stack(rows)  # [L, H]
    names = list(names) if names is not None else [f"#{i}" for i in range(len(rows))]
    fallback = initializer if initializer is not None else random_uniform()

    def init(rng, shape):
        length, _ = _check_shape(shape, hidden, "the label embeddings")
        if len(rows) > length:
            warnings.warn(f"prompt length {length} is shorter than the {len(rows)} class labels: "
                          f"labels {names[length:]} are not used for initialization", stacklevel=2)
        used = rows[:length]
        prompt = jnp.asarray(fallback(rng, shape))
        return prompt.at[: len(used)].set(used.astype(prompt.dtype))

    return init


def from_class_labels(embeddings, tokenizer, labels: Sequence[str],
                      initializer: Initializer | None = None) -> Initializer:
    """Class-label init: row i is the mean embedding of `labels[i]`'s tokens; see `from_embedded_list`.

    embeddings: [V, H]. Each label is tokenized without special tokens (with the
    real T5 tokenizer "entailment" is ['▁', 'en', 'tail', 'ment'] and its row is
    the mean of those four rows; for GPT-2 pass " positive" with its leading
    space if that is how the target is tokenized). The default fallback is the
    paper's: sampled from the first 5,000 rows of `embeddings`. -> [P, H]
    """
    if isinstance(labels, str):
        raise TypeError("labels must be a list of strings, not one string")
    embedded = [_lookup(embeddings, _encode(tokenizer, label), label) for label in labels]
    if initializer is None:
        initializer = from_sample_of_embeddings(embeddings, min(PAPER_POPULATION_SIZE, np.shape(embeddings)[0]))
    return from_embedded_list(embedded, initializer, names=list(labels))


def from_embedded_string(embedded_string, initializer: Initializer | None = None) -> Initializer:
    """One token per row: row i is `embedded_string[i]`, truncated to P (with a warning) or filled by the fallback.

    embedded_string: [n, H]. Rows [n, P) are `initializer(rng, (P, H))[n:]`
    (default `random_uniform()`). -> [P, H]
    """
    embedded_string = jnp.asarray(embedded_string)
    if embedded_string.ndim != 2 or embedded_string.shape[0] == 0:
        raise ValueError(f"embedded_string must be [n, H] with n >= 1, got shape {embedded_string.shape}")
    hidden = embedded_string.shape[1]
    fallback = initializer if initializer is not None else random_uniform()

    def init(rng, shape):
        length, _ = _check_shape(shape, hidden, "the embedded string")
        if embedded_string.shape[0] > length:
            warnings.warn(f"the string has {embedded_string.shape[0]} tokens but the prompt only {length} rows: "
                          f"the last {embedded_string.shape[0] - length} tokens are dropped", stacklevel=2)
        used = embedded_string[:length]
        prompt = jnp.asarray(fallback(rng, shape))
        return prompt.at[: used.shape[0]].set(used.astype(prompt.dtype))

    return init


def from_string(embeddings, tokenizer, text: str, initializer: Initializer | None = None) -> Initializer:
    """The embeddings of `text`'s tokens (no special tokens), one per row; see `from_embedded_string`.

    embeddings: [V, H]. The default fallback samples from the first 5,000 rows. -> [P, H]
    """
    ids = _encode(tokenizer, text)
    if initializer is None:
        initializer = from_sample_of_embeddings(embeddings, min(PAPER_POPULATION_SIZE, np.shape(embeddings)[0]))
    return from_embedded_string(_lookup(embeddings, ids, text), initializer)


# --- given values ------------------------------------------------------------------------

def from_array(array, source: str | None = None) -> Initializer:
    """Exactly `array` ([P, H]; [L, P, H] layer prompts); the requested shape must match it. The key is unused.

    Returns the NumPy array with its dtype kept (a float64 array stays float64:
    JAX would silently make it float32 without x64); cast it where you use it.
    `source` names where the array came from in shape errors.
    """
    array = np.array(array)  # a copy: later changes to the caller's array do not leak in
    if array.ndim not in (2, 3):
        raise ValueError(f"{source or 'the array'} has shape {array.shape}; a prompt is [P, H] ([L, P, H]: one "
                         "per layer)")

    def init(rng, shape):
        del rng
        prompt_io.check_prompt_shape(array.shape, tuple(shape), source)
        return array

    init.array_shape = array.shape
    return init


def from_npy(path: str | os.PathLike, variable: str | None = None) -> Initializer:
    """The prompt saved in a `.npy` file ([P, H]; [L, P, H] layer prompts), or `variable` of a T5X checkpoint directory (default
    `target/encoder/prompt/prompt/prompt`), read now; see `from_array` (dtype kept, exact shape)."""
    array = prompt_io.load_prompt(path, variable=variable, layers=True)
    return from_array(array, source=f"prompt file {os.fspath(path)}")
