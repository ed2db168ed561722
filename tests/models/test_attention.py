"""The attention switch: `jax.nn.dot_product_attention` ('xla', 'cudnn') against our einsum path, the picker,
whole models with either path, and ModelSpec's compute dtype by backend. CPU only: 'cudnn' itself needs a GPU."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import padded_batch, tiny_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax import decoding
from prompt_tuning_jax.experiments import ModelSpec, specs
from prompt_tuning_jax.models import common
from prompt_tuning_jax.variables import Trainable

B, T, N, D = 3, 6, 4, 8


def qkv(dtype=jnp.float32, s=T, seed=0):
    """q [B, T, N, D], k and v [B, s, N, D]."""
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (B, T, N, D), dtype), jax.random.normal(kk, (B, s, N, D), dtype),
            jax.random.normal(kv, (B, s, N, D), dtype))


def gpt2_bias():
    """Causal + padding [B, 1, T, T]: rows right-padded, left-padded (pad queries see no real key) and full."""
    mask = np.array([[1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    return common.causal_bias(T, T) + common.padding_bias(jnp.asarray(mask), T)


def t5_bias():
    """A relative position bias as T5's [1, N, T, T] (one value per head and distance) + padding [B, 1, 1, T]."""
    table = 3.0 * jax.random.normal(jax.random.key(5), (2 * T - 1, N))
    rel = table[np.arange(T)[None, :] - np.arange(T)[:, None] + T - 1].transpose(2, 0, 1)[None]
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    return rel + common.padding_bias(jnp.asarray(mask), T)


@functools.partial(jax.jit, static_argnames=("scale", "implementation"))
def attend(q, k, v, bias, scale, implementation):
    """`common.attend`, compiled once per implementation (op-by-op dispatch is slow)."""
    return common.attend(q, k, v, bias, scale, implementation=implementation)


@functools.partial(jax.jit, static_argnames=("implementation", "scale"))
def run(implementation, q, k, v, bias, scale=D**-0.5):
    """Output [B, T, N, D] and the gradient of a weighted sum of it w.r.t. q, k and v."""
    w = jax.random.normal(jax.random.key(9), q.shape, jnp.float32)

    def f(q, k, v):
        out = attend(q, k, v, bias, scale, implementation)
        return jnp.sum(out.astype(jnp.float32) * w), out

    grads, out = jax.grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


@pytest.mark.parametrize("bias", [gpt2_bias, t5_bias], ids=["gpt2_causal_padding", "t5_relative_padding"])
def test_xla_equals_einsum_values_and_gradients(bias):
    q, k, v = qkv()
    (out_x, grads_x), (out_e, grads_e) = run("xla", q, k, v, bias()), run("einsum", q, k, v, bias())
    assert out_x.dtype == out_e.dtype == jnp.float32
    np.testing.assert_allclose(out_x, out_e, atol=1e-5, rtol=1e-5)
    for gx, ge in zip(grads_x, grads_e):
        np.testing.assert_allclose(gx, ge, atol=1e-5, rtol=1e-5)


def test_masked_query_rows_are_uniform_not_nan():
    """A left-padded row's pad queries see no real key: uniform over the keys the causal mask leaves, as today."""
    q, k, v = qkv()
    out_x, out_e = (attend(q, k, v, gpt2_bias(), D**-0.5, i) for i in ("xla", "einsum"))
    assert not np.isnan(out_x).any()
    np.testing.assert_allclose(out_x, out_e, atol=1e-5, rtol=1e-5)
    # Row 1 is [pad, pad, pad, real, real, real]. Pad query 1 sees every key masked once (-1e9: pads 0 and 1
    # before it, the real keys 3-5 after it) except key 2 (a pad after it, -2e9): it averages v over the five.
    np.testing.assert_allclose(out_x[1, 1], v[1, [0, 1, 3, 4, 5]].mean(axis=0), atol=1e-6)
    # A row whose every key is masked by one mask averages all of v.
    everything_masked = common.padding_bias(jnp.zeros((B, T), jnp.int32), T)
    out = attend(q, k, v, everything_masked, D**-0.5, "xla")
    np.testing.assert_allclose(out, jnp.broadcast_to(v.mean(axis=1, keepdims=True), out.shape), atol=1e-6)


def test_xla_equals_einsum_in_bfloat16():
    q, k, v = qkv(jnp.bfloat16)
    (out_x, grads_x), (out_e, grads_e) = run("xla", q, k, v, t5_bias()), run("einsum", q, k, v, t5_bias())
    assert out_x.dtype == out_e.dtype == jnp.bfloat16
    f32 = lambda x: np.asarray(x, np.float32)
    np.testing.assert_allclose(f32(out_x), f32(out_e), atol=2e-2, rtol=2e-2)
    for gx, ge in zip(grads_x, grads_e):
        np.testing.assert_allclose(f32(gx), f32(ge), atol=5e-2, rtol=5e-2)


def test_cross_attention_and_cache_shapes():
    """Keys longer than queries (cross-attention, a KV cache) with a padding-only bias [B, 1, 1, S]."""
    q, k, v = qkv(s=10)
    bias = common.padding_bias(jnp.asarray(np.arange(10)[None] < np.array([[10], [7], [2]])), 10)
    out_x, out_e = (attend(q, k, v, bias, 1.0, i) for i in ("xla", "einsum"))
    np.testing.assert_allclose(out_x, out_e, atol=1e-5, rtol=1e-5)


# --- the picker -------------------------------------------------------------------------

def test_auto_on_cpu_runs_the_einsum_path(monkeypatch):
    assert common.platform() == "cpu"
    q, k, v = qkv(jnp.bfloat16)
    expected = common.attend(q, k, v, gpt2_bias(), D**-0.5, implementation="einsum")

    def refuse(*args, **kwargs):
        raise AssertionError("'auto' on a CPU must not call jax.nn.dot_product_attention")

    monkeypatch.setattr(jax.nn, "dot_product_attention", refuse)
    out = common.attend(q, k, v, gpt2_bias(), D**-0.5)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))


@pytest.mark.parametrize("platform,dtype,head_dim,lengths,dropout,expected", [
    ("gpu", jnp.bfloat16, 64, (128, 128), False, "cudnn"),
    ("gpu", jnp.float16, 128, (8, 16), False, "cudnn"),
    ("gpu", jnp.float32, 64, (128, 128), False, "einsum"),  # cuDNN runs bf16/fp16 only
    ("gpu", jnp.bfloat16, 64, (128, 128), True, "einsum"),  # dropout on the probabilities: einsum only
    ("gpu", jnp.bfloat16, 60, (128, 128), False, "einsum"),  # head dim not a multiple of 8
    ("gpu", jnp.bfloat16, 256, (128, 128), False, "einsum"),  # head dim over 128
    ("gpu", jnp.bfloat16, 64, (1, 128), False, "einsum"),  # odd lengths (a decoding step)
    ("rocm", jnp.bfloat16, 64, (128, 128), False, "einsum"),
    ("cpu", jnp.bfloat16, 64, (128, 128), False, "einsum"),
    ("tpu", jnp.bfloat16, 64, (128, 128), False, "einsum"),
])
def test_auto_picks_cudnn_only_where_it_applies(platform, dtype, head_dim, lengths, dropout, expected):
    assert common.pick_attention("auto", platform, dtype, head_dim, *lengths, dropout=dropout) == expected


def test_explicit_choices_and_dropout():
    for name in ("einsum", "xla", "cudnn"):
        assert common.pick_attention(name, "cpu", jnp.float32, 64, 3, 3, dropout=False) == name
        assert common.pick_attention(name, "gpu", jnp.bfloat16, 64, 8, 8, dropout=True) == "einsum"
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        common.pick_attention("flash", "gpu", jnp.bfloat16, 64, 8, 8, dropout=False)
    with pytest.raises(ValueError, match="unknown attention implementation"):
        ptj.GPT2Config(attention="flash")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_cudnn_call_gets_a_full_bias_in_the_inputs_dtype(monkeypatch, dtype):
    """What the 'cudnn' branch hands `jax.nn.dot_product_attention`, checked on a CPU by running it with 'xla':
    the bias [B|1, N|1, Tq, Tk] (cuDNN wants full lengths) in q's dtype, finite (float16 cannot hold -1e9)."""
    calls = []
    xla = jax.nn.dot_product_attention

    def record(q, k, v, *, bias, scale, implementation):
        calls.append((bias, implementation))
        return xla(q, k, v, bias=bias, scale=scale, implementation="xla")

    monkeypatch.setattr(jax.nn, "dot_product_attention", record)
    q, k, v = qkv(dtype, s=10)
    bias = common.padding_bias(jnp.asarray(np.arange(10)[None] < np.array([[10], [7], [0]])), 10)  # [B, 1, 1, S]
    out = common.attend(q, k, v, bias, 1.0, implementation="cudnn")
    (passed, implementation), = calls
    assert implementation == "cudnn" and passed.shape == (B, 1, T, 10) and passed.dtype == dtype
    assert np.isfinite(np.asarray(passed, np.float32)).all() and np.isfinite(np.asarray(out, np.float32)).all()
    expected = common.attend(q, k, v, bias, 1.0, implementation="einsum")
    # Rows 0 and 1 see real keys; row 2 sees none, and only its finiteness matters (float16's clipped
    # mask no longer swamps the scores, so its average is not uniform there).
    np.testing.assert_allclose(np.asarray(out[:2], np.float32), np.asarray(expected[:2], np.float32),
                               atol=2e-2, rtol=2e-2)


def test_dropout_falls_back_to_einsum_with_any_implementation():
    q, k, v = qkv()
    keys = common.row_keys(jax.random.key(0), B)
    outs = [common.attend(q, k, v, gpt2_bias(), D**-0.5, 0.5, keys, implementation=i) for i in ("xla", "einsum")]
    np.testing.assert_array_equal(outs[0], outs[1])


# --- whole models -----------------------------------------------------------------------

def t5_batch(rng):
    ids, mask = padded_batch(rng, 199, [8, 3, 6], 8)
    dec, dec_mask = padded_batch(rng, 199, [4, 2, 3], 4)
    return ids, mask, dec, dec_mask


def test_models_give_the_same_logits_with_xla_and_einsum(rng):
    ids, mask = padded_batch(rng, 211, [9, 4, 6], 9, side="left")
    gpt2 = {a: tiny_model("gpt2", n_layer=1, attention=a) for a in ("xla", "einsum")}
    logits = {a: nnx.jit(lambda m: m(ids, mask))(m) for a, m in gpt2.items()}
    np.testing.assert_allclose(logits["xla"], logits["einsum"], atol=1e-5, rtol=1e-5)

    ids, mask, dec, dec_mask = t5_batch(rng)
    t5 = {a: tiny_model("t5", untied=True, num_layers=1, attention=a) for a in ("xla", "einsum")}
    run = lambda m: m(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    logits = {a: nnx.jit(run)(m) for a, m in t5.items()}
    np.testing.assert_allclose(logits["xla"], logits["einsum"], atol=1e-5, rtol=1e-5)


def prompt_gradient(model, ids, mask, **decoder):
    """The gradient of -mean log p(token 1 at the prediction position) w.r.t. the prompt [P, H]."""
    prompted = ptj.with_prompt(model, 4, None, placement="prefix")
    graphdef, trainable, frozen = nnx.split(prompted, Trainable, ...)

    def loss(trainable):
        out = nnx.merge(graphdef, trainable, frozen)(ids, mask, **decoder)
        return -jnp.mean(jax.nn.log_softmax(out.prediction)[:, 1])

    grads = jax.jit(jax.grad(loss))(trainable)
    return grads["soft_prompt"][...]


def test_prompt_gradients_agree_with_xla_and_einsum(rng):
    ids, mask = padded_batch(rng, 211, [9, 4, 6], 9)
    g = {a: prompt_gradient(tiny_model("gpt2", n_layer=1, attention=a), ids, mask) for a in ("xla", "einsum")}
    assert float(jnp.abs(g["einsum"]).sum()) > 0
    np.testing.assert_allclose(g["xla"], g["einsum"], atol=1e-5, rtol=1e-4)

    ids, mask, dec, dec_mask = t5_batch(rng)
    g = {a: prompt_gradient(tiny_model("t5", num_layers=1, attention=a), ids, mask, decoder_input_ids=dec,
                            decoder_attention_mask=dec_mask) for a in ("xla", "einsum")}
    np.testing.assert_allclose(g["xla"], g["einsum"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_cached_decoding_gives_the_same_tokens(rng, family):
    vocab = 211 if family == "gpt2" else 199
    ids, mask = padded_batch(rng, vocab, [7, 3, 5], 7, side="right")
    overrides = dict(initializer_range=0.3) if family == "gpt2" else dict(initializer_factor=3.0)
    tokens = {a: np.asarray(decoding.generate(tiny_model(family, attention=a, **overrides), ids, mask,
                                              max_new_tokens=6, eos_id=-1))
              for a in ("xla", "einsum")}
    assert len(np.unique(tokens["einsum"])) > 1  # not one token repeated: the comparison means something
    np.testing.assert_array_equal(tokens["xla"], tokens["einsum"])


def test_attention_is_not_written_to_config_json(tmp_path):
    model = tiny_model("t5", attention="xla")
    ptj.save_pretrained(model, tmp_path)
    assert "attention" not in json.loads((tmp_path / "config.json").read_text())
    assert ptj.from_pretrained(tmp_path).config.attention == "auto"
    assert "attention" not in tiny_model("gpt2").config.to_hf()


# --- ModelSpec: compute dtype by backend, attention threaded to the model ---------------

@pytest.mark.parametrize("backend,expected", [("cpu", jnp.float32), ("gpu", jnp.bfloat16), ("tpu", jnp.bfloat16)])
def test_model_spec_default_compute_dtype(monkeypatch, backend, expected):
    monkeypatch.setattr(specs.jax, "default_backend", lambda: backend)
    assert ModelSpec("gpt2").dtype == "auto"
    assert specs._dtype("auto") == expected
    assert specs._dtype("float32") == jnp.float32 and specs._dtype("bfloat16") == jnp.bfloat16  # explicit wins


def test_model_spec_loads_with_its_dtype_and_attention(tmp_path, monkeypatch):
    ptj.save_pretrained(tiny_model("gpt2"), tmp_path)
    model = ModelSpec(str(tmp_path), attention="xla").load()
    assert model.dtype == jnp.float32 and model.h[0].attn.attention == "xla"
    monkeypatch.setattr(specs.jax, "default_backend", lambda: "tpu")
    model = ModelSpec(str(tmp_path)).load()
    assert model.dtype == jnp.bfloat16 and model.h[0].attn.attention == "auto"
    prompted = ptj.with_prompt(model, 3, None)
    assert prompted.prompt.dtype == jnp.float32  # the trainable prompt stays float32
