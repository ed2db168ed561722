"""The memory-lean LM head (`models/lm_head.py`): chunked log p(target) with the plain path's values and
gradients, and without the [N, V] logits in the compiled step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import padded_batch, tiny_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax import topologies
from prompt_tuning_jax.heads import target_token_logprobs
from prompt_tuning_jax.models import lm_head
from prompt_tuning_jax.variables import Trainable

V, H = 257, 16


def _head(rng, dtype=jnp.float32, scale=None, softcap=None):
    return lm_head.LMHead(jnp.asarray(rng.normal(size=(V, H)), jnp.float32), dtype, scale, softcap)


def _plain(head, hidden, targets):
    return lm_head.target_log_probs(head.logits(hidden), targets)


def _inputs(rng, lead=(3,), length=11):
    hidden = jnp.asarray(rng.normal(size=(*lead, length, H)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (*lead, length)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(*lead, length)), jnp.float32)  # a loss that weighs each position
    return hidden, targets, weights


# 4 * V bytes is one row of logits: 5 rows a chunk over 3 rows of 11 positions -> one position a chunk (11 chunks)
@pytest.mark.parametrize("scale, softcap", [(None, None), (0.25, None), (None, 3.0)])
@pytest.mark.parametrize("chunk_rows", [3, 7, 12])
def test_chunked_log_probs_and_gradients_equal_the_plain_path(rng, scale, softcap, chunk_rows):
    """Values, d/dhidden and d/dweight (a trained head) equal logits -> log_softmax, for chunkings that leave a
    ragged last chunk (padded) and with T5's scale and Gemma's soft cap."""
    head = _head(rng, scale=scale, softcap=softcap)
    hidden, targets, weights = _inputs(rng)

    def loss(hidden, weight, lean):
        h = lm_head.LMHead(weight, head.dtype, scale, softcap)
        logp = h.log_probs(hidden, targets, chunk_bytes=chunk_rows * 4 * V) if lean else _plain(h, hidden, targets)
        return jnp.sum(logp * weights), logp

    (lean, logp_lean), g_lean = jax.value_and_grad(loss, (0, 1), has_aux=True)(hidden, head.weight, True)
    (plain, logp_plain), g_plain = jax.value_and_grad(loss, (0, 1), has_aux=True)(hidden, head.weight, False)
    np.testing.assert_allclose(logp_lean, logp_plain, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(lean, plain, rtol=1e-6)
    for a, b in zip(g_lean, g_plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert float(jnp.abs(b).max()) > 1e-3


def test_bfloat16_compute_gradient_matches_the_plain_path(rng):
    """A bfloat16 head rounds as `common.dense` does (products in bfloat16, sums in float32)."""
    head = _head(rng, dtype=jnp.bfloat16)
    hidden, targets, weights = _inputs(rng)
    hidden = hidden.astype(jnp.bfloat16)

    def loss(hidden, lean):
        logp = head.log_probs(hidden, targets, chunk_bytes=4 * 4 * V) if lean else _plain(head, hidden, targets)
        return jnp.sum(logp * weights)

    g_lean, g_plain = (jax.grad(loss)(hidden, lean).astype(jnp.float32) for lean in (True, False))
    np.testing.assert_allclose(g_lean, g_plain, rtol=2e-2, atol=2e-2)
    assert float(jnp.abs(g_lean - g_plain).max()) < 0.02 * float(jnp.abs(g_plain).max())


def _dots(f, *args, platform="cpu") -> int:
    """Matrix products in f's program as lowered for `platform`: a loop body's once, unrolled chunks' each."""
    return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text().count("stablehlo.dot_general")


def test_a_frozen_head_costs_two_products_and_no_weight_gradient(rng):
    """Prompt tuning differentiates the hidden states only: the step does the head's two matrix products (logits,
    d/dh) per chunk, as the plain path does; a trained head adds the recomputation for its weight's gradient. On
    CPU the chunks are one loop, on TPU they are unrolled."""
    head = _head(rng)
    hidden, targets, weights = _inputs(rng)  # 3 rows of 11 positions: one position (3 rows) a chunk, 11 chunks
    lean = lambda h, w: jnp.sum(lm_head.LMHead(w, jnp.float32).log_probs(h, targets, chunk_bytes=3 * 4 * V) * weights)
    frozen, trained = jax.grad(lean), jax.grad(lean, (0, 1))
    assert _dots(frozen, hidden, head.weight) == 2
    assert _dots(trained, hidden, head.weight) == 4
    assert _dots(frozen, hidden, head.weight, platform="tpu") == 2 * 11
    assert _dots(trained, hidden, head.weight, platform="tpu") == 2 * 11 + 2


def test_the_chunks_are_at_most_max_chunks(rng, monkeypatch):
    """Past MAX_CHUNKS the chunks grow: 11 positions in 4 chunks (3, 3, 3 and 2 positions), the values unchanged."""
    head = _head(rng)
    hidden, targets, _ = _inputs(rng)
    plain = _plain(head, hidden, targets)
    monkeypatch.setattr(lm_head, "MAX_CHUNKS", 4)
    lean = lambda h: head.log_probs(h, targets, chunk_bytes=3 * 4 * V)
    assert _dots(lean, hidden, platform="tpu") == 4
    np.testing.assert_allclose(lean(hidden), plain, rtol=1e-6, atol=1e-5)


def test_the_compiled_step_never_holds_the_whole_logits(rng):
    """XLA's own accounting: the gradient's temporary buffers stay far below one [N, V] float32 logits array
    with the lean head, and not without it."""
    n, length, v = 8, 64, 4096
    weight = jnp.asarray(rng.normal(size=(v, H)), jnp.float32)
    hidden = jnp.asarray(rng.normal(size=(n, length, H)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, (n, length)), jnp.int32)
    logits_bytes = n * length * v * 4  # 8 MiB

    def temp_bytes(chunk_bytes):
        head = lm_head.LMHead(weight, jnp.float32)
        grad = jax.jit(jax.grad(lambda h: head.log_probs(h, targets, chunk_bytes=chunk_bytes).sum()))
        return grad.lower(hidden).compile().memory_analysis().temp_size_in_bytes

    plain, lean = temp_bytes(logits_bytes), temp_bytes(logits_bytes // 16)
    assert plain >= logits_bytes
    assert lean < logits_bytes / 4, (lean, plain)


@pytest.mark.skipif(not topologies.has_libtpu(), reason=f"needs libtpu, the TPU compiler: {topologies.install_command()}")
def test_on_tpu_the_step_holds_neither_the_logits_nor_a_copy_of_the_table():
    """Compiled for one v5e chip (float32 table and compute, so XLA:TPU casts the table to bfloat16 for its default
    precision): the gradient's temporaries stay under an eighth of the logits and under a tenth of the table's
    bfloat16 bytes, so neither the [N, V] logits nor a cast copy of the [V, H] table is held (a `lax.map` over the
    chunks held the copy: the cast was hoisted out of the loop), while the plain path holds the logits."""
    v, h, n, length = 65_536, 1024, 8, 64  # a 256 MiB table, 128 MiB of logits
    device = topologies.target_devices(topologies.accelerator("v5litepod-1"))[0]
    replicated = jax.sharding.SingleDeviceSharding(device)
    args = (jax.ShapeDtypeStruct((n, length, h), jnp.float32, sharding=replicated),
            jax.ShapeDtypeStruct((v, h), jnp.float32, sharding=replicated),
            jax.ShapeDtypeStruct((n, length), jnp.int32, sharding=replicated))

    def temp_bytes(chunk_bytes):
        loss = lambda x, w, t: lm_head.LMHead(w, jnp.float32).log_probs(x, t, chunk_bytes=chunk_bytes).sum()
        return jax.jit(jax.grad(loss)).lower(*args).compile().memory_analysis().temp_size_in_bytes

    logits_bytes, table_bf16 = n * length * v * 4, v * h * 2
    plain, lean = temp_bytes(logits_bytes), temp_bytes(logits_bytes // 16)
    assert plain >= logits_bytes
    assert lean < logits_bytes / 8 and lean < table_bf16 / 10, (lean, plain)


@pytest.mark.parametrize("family", ["gpt2", "t5", "llama", "gemma3"])
def test_the_lm_loss_and_rank_scores_are_the_same_chunked(rng, family, monkeypatch):
    """Through a prompted model: the "lm" loss's value and prompt gradient, and rank classification's scores, do
    not change when the head is chunked down to one target position a chunk."""
    from prompt_tuning_jax.heads import rank_classification

    model = tiny_model(family, dropout_rate=0.0, seed=2)
    vocab = model.config.vocab_size
    ids, mask = padded_batch(rng, vocab, [5, 2, 4], 6)
    targets = rng.integers(1, vocab, (3, 5)).astype(np.int32)
    target_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], np.float32)
    graphdef, trainable, frozen = nnx.split(ptj.with_prompt(model, 3, placement="suffix"), Trainable, ...)

    def loss(trainable):
        prompted = nnx.merge(graphdef, trainable, frozen)
        return -target_token_logprobs(prompted, ids, mask, targets, target_mask).sum()

    labels = rng.integers(1, vocab, (4, 3)).astype(np.int32)
    scores = lambda: rank_classification(nnx.merge(graphdef, trainable, frozen), ids, mask, labels, np.ones((4, 3)))

    (value, grad), ranked = jax.value_and_grad(loss)(trainable), scores()
    monkeypatch.setattr(lm_head, "CHUNK_BYTES", 4 * vocab * 12)  # one position of 12 rows (4 labels x 3) a chunk
    (chunked_value, chunked_grad), chunked_ranked = jax.value_and_grad(loss)(trainable), scores()
    np.testing.assert_allclose(chunked_value, value, rtol=1e-6)
    np.testing.assert_allclose(chunked_grad["soft_prompt"][...], grad["soft_prompt"][...], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(grad["soft_prompt"][...]).max()) > 0
    np.testing.assert_allclose(chunked_ranked, ranked, rtol=1e-6, atol=1e-6)
