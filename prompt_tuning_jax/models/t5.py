"""T5 (v1.0, v1.1, LM-adapted "lm100k", Flan-T5) in Flax NNX.

Names mirror the Hugging Face checkpoint (`encoder.block.0.layer.0.SelfAttention.q.weight`,
...) and `nn.Linear` weights keep their [out, in] layout, so loading is a name join.

Differences that matter (all read from config.json):
- v1.0: ReLU MLP (`wi`, `wo`), LM head tied to `shared`, decoder output scaled by d_model**-0.5.
- v1.1 / lm-adapt / Flan: gated-GELU MLP (`wi_0`, `wi_1`, `wo`), untied `lm_head`, no rescale.
- No 1/sqrt(d) attention scaling; relative position bias from layer 0 shared by the stack.

`T5` implements the library's seam (`models/base.py`): `embed`, `activations`
(the encoder on embeddings, then the decoder), `output_head` and `logits`, `target_hidden` (the
encoder once per input, the decoder once per target), `start_decode` and
`embedding_table`; `encode` and `decode` are the two halves.

T5 has no absolute positions (relative position buckets only), so a row's
numbers never depend on its padding.

Dropout (training only: a `dropout_rng`) at `dropout_rate`, exactly where
transformers' PyTorch `T5ForConditionalGeneration` applies it in train mode
(modeling_t5.py), in the encoder and in the decoder alike:
- on the input embeddings (`T5Stack.dropout(inputs_embeds)`), so on soft prompt
  embeddings too, as PEFT feeds them through `inputs_embeds`;
- on the attention weights after the softmax, in self- and cross-attention
  (`eager_attention_forward`'s dropout);
- inside the MLP after the activation (gated: after act(wi_0 x) * wi_1 x), before `wo`
  (`T5DenseActDense.dropout` / `T5DenseGatedActDense.dropout`);
- on each sublayer's output before its residual add (`T5LayerSelfAttention`,
  `T5LayerCrossAttention`, `T5LayerFF` `.dropout`);
- after the final layer norm of each stack (`T5Stack.dropout(final_layer_norm(...))`).
No dropout in the LM head.

Decoding uses `init_cache(encoder_hidden, M)` (a fixed-size decoder
self-attention cache plus the cross-attention keys and values, computed once
from the encoder output) and `decode_cached`, which runs new decoder positions
from slot `index` on.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning_jax.models import base, common, lm_head
from prompt_tuning_jax.models import prefix as prefix_lib


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The fields of a Hugging Face T5 `config.json` that change the computation.

    `tie_word_embeddings`: the LM head is `shared` (no `lm_head` parameter).
    `scale_decoder_outputs`: multiply the decoder output by d_model**-0.5 before the head.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    initializer_factor: float = 1.0
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    # transformers' default; used only when a training step passes a dropout_rng.
    dropout_rate: float = 0.1
    # How attention runs ('auto' | 'einsum' | 'xla' | 'cudnn', see `common.pick_attention`);
    # a runtime choice, not part of config.json.
    attention: str = "auto"

    model_type = "t5"

    def __post_init__(self):
        common.check_attention(self.attention)
        act = self.feed_forward_proj.split("-")
        if len(act) > 2 or (len(act) == 2 and act[0] != "gated"):
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} must be 'ACT' or 'gated-ACT'")
        common.activation(self.act_name)  # fail early on an unknown activation

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def prompt_blocks(self) -> int:
        """The blocks a prompt at the input passes through: the encoder's (METHOD 'per_layer')."""
        return self.num_layers

    @property
    def n_decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def has_dropout(self) -> bool:
        return self.dropout_rate > 0

    def with_dropout(self, rate: float) -> "T5Config":
        """`dropout_rate` replaced by `rate` (T5X's DROPOUT_RATE)."""
        return dataclasses.replace(self, dropout_rate=rate)

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def act_name(self) -> str:
        name = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else name

    @classmethod
    def from_hf(cls, config: dict[str, Any], tensor_names=None) -> "T5Config":
        """Reads both config styles (see module docstring of `models/hf.py`).

        Old style (hub): `tie_word_embeddings: false` marks v1.1 (untied, no rescale).
        transformers 5 style: `tie_word_embeddings: true` + `scale_decoder_outputs`;
        the head is untied exactly when the checkpoint (`tensor_names`) holds `lm_head.weight`.
        """
        has_lm_head = None if tensor_names is None else "lm_head.weight" in tensor_names
        names = {f.name for f in dataclasses.fields(cls)} - {"tie_word_embeddings", "scale_decoder_outputs",
                                                              "attention"}
        kwargs = {k: v for k, v in config.items() if k in names and v is not None}
        tie_flag = config.get("tie_word_embeddings", True)
        # mT5 is v1.1-style: transformers' MT5 never rescales, whatever its tie flag says.
        scale = config.get("scale_decoder_outputs", tie_flag is not False and config.get("model_type") != "mt5")
        tie = (not has_lm_head) if has_lm_head is not None else tie_flag is not False
        return cls(**kwargs, tie_word_embeddings=bool(tie), scale_decoder_outputs=bool(scale))

    def describe(self) -> str:
        kind = "v1.1-style (gated, untied)" if not self.tie_word_embeddings else "v1.0-style (tied, rescaled)"
        return (f"t5: {self.num_layers}+{self.n_decoder_layers} layers, d_model {self.d_model}, {self.num_heads} heads "
                f"x {self.d_kv}, d_ff {self.d_ff} ({self.feed_forward_proj}), vocab {self.vocab_size}, {kind}")

    def to_hf(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["attention"]
        d["num_decoder_layers"] = self.n_decoder_layers
        d.update(model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True,
                 dense_act_fn=self.act_name, is_gated_act=self.is_gated)
        # Old-style flag: false means v1.1 (no rescale); transformers 5 reads it the same way.
        d["tie_word_embeddings"] = self.scale_decoder_outputs
        return d


def _v11(**kw):
    return T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False, scale_decoder_outputs=False, **kw)


# Released sizes. v1.1 / lm-adapt ("lm100k") / Flan-T5 share an architecture per size.
PRESETS = {
    "t5-small": T5Config(d_model=512, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12),
    "t5-large": T5Config(d_model=1024, d_ff=4096, num_layers=24, num_heads=16),
    "t5-3b": T5Config(d_model=1024, d_kv=128, d_ff=16384, num_layers=24, num_heads=32),
    "t5-11b": T5Config(d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_heads=128),
    "t5-v1_1-small": _v11(d_model=512, d_ff=1024, num_layers=8, num_heads=6),
    "t5-v1_1-base": _v11(d_model=768, d_ff=2048, num_layers=12, num_heads=12),
    "t5-v1_1-large": _v11(d_model=1024, d_ff=2816, num_layers=24, num_heads=16),
    "t5-v1_1-xl": _v11(d_model=2048, d_ff=5120, num_layers=24, num_heads=32),
    "t5-v1_1-xxl": _v11(d_model=4096, d_ff=10240, num_layers=24, num_heads=64),
}
for _size in ("small", "base", "large", "xl", "xxl"):
    PRESETS[f"t5-{_size}-lm-adapt"] = PRESETS[f"t5-v1_1-{_size}"]
    PRESETS[f"flan-t5-{_size}"] = PRESETS[f"t5-v1_1-{_size}"]
    # mT5 is T5 1.1 with the 250k mC4 SentencePiece vocabulary (250,112 embedding rows).
    PRESETS[f"mt5-{_size}"] = dataclasses.replace(PRESETS[f"t5-v1_1-{_size}"], vocab_size=250112)


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """T5's bucketing of (key - query) distances: exact for small ones, log-spaced up to max_distance."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
        relative_position = jnp.abs(relative_position)
    else:
        relative_position = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    scaled = jnp.log(jnp.maximum(relative_position, 1).astype(jnp.float32) / max_exact)
    large = max_exact + (scaled / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, relative_position, large)


class Linear(nnx.Module):
    """Bias-free linear layer with the PyTorch layout: `weight` [out, in]; plus a LoRA update once
    `models.lora` adds one, or an IA3 rescaling once `models.ia3` adds one."""

    def __init__(self, n_in, n_out, axes, *, dtype, param_dtype, stddev, rngs):
        self.weight = common.param(rngs, (n_out, n_in), axes, param_dtype, stddev)
        self.dtype = dtype
        self.in_out, self.lora, self.ia3 = (n_in, n_out), None, None

    def __call__(self, x):
        x = x.astype(self.dtype)
        if self.ia3 is not None and self.ia3.feedforward:
            x = self.ia3(x)
        y = common.dense(x, self.weight[...], out_in=True)
        y = y if self.lora is None else y + self.lora(x)
        return y if self.ia3 is None or self.ia3.feedforward else self.ia3(y)

    def merge_scale(self, scale, input_side: bool) -> None:
        """Folds a rescaling into the weight [out, in]: of the input [in] (`input_side`), else of the output [out]."""
        w = self.weight[...]
        factor = scale[None, :] if input_side else scale[:, None]
        self.weight[...] = (w.astype(jnp.float32) * factor).astype(w.dtype)


class LayerNorm(nnx.Module):
    """T5's RMS norm: `weight` [d_model], no bias, no mean."""

    def __init__(self, d_model, eps, *, param_dtype):
        self.weight = nnx.Param(jnp.ones((d_model,), param_dtype), axes=("embed",))
        self.eps = eps

    def __call__(self, x):
        return common.rms_norm(x, self.weight[...], self.eps)


class Attention(nnx.Module):
    """T5Attention: q, k, v, o without bias and without 1/sqrt(d) scaling."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool, *, dtype, param_dtype, rngs):
        d, inner, f = config.d_model, config.num_heads * config.d_kv, config.initializer_factor
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q = Linear(d, inner, ("heads", "embed"), stddev=f * (d * config.d_kv) ** -0.5, **kw)
        self.k = Linear(d, inner, ("heads", "embed"), stddev=f * d**-0.5, **kw)
        self.v = Linear(d, inner, ("heads", "embed"), stddev=f * d**-0.5, **kw)
        self.o = Linear(inner, d, ("embed", "heads"), stddev=f * inner**-0.5, **kw)
        if has_relative_attention_bias:
            self.relative_attention_bias = nnx.Dict(weight=common.param(
                rngs, (config.relative_attention_num_buckets, config.num_heads),
                ("relpos_buckets", "relpos_heads"), param_dtype, f * d**-0.5))
        self.num_heads, self.d_kv = config.num_heads, config.d_kv
        self.dropout_rate = config.dropout_rate
        self.attention = config.attention

    def _heads(self, y: jax.Array) -> jax.Array:
        return y.reshape(*y.shape[:2], self.num_heads, self.d_kv)

    def project_kv(self, kv: jax.Array) -> tuple[jax.Array, jax.Array]:
        """kv [B, Tk, d] -> keys and values, each [B, Tk, N, D]."""
        return self._heads(self.k(kv)), self._heads(self.v(kv))

    def attend_to(self, x: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
                  keys: jax.Array | None = None) -> jax.Array:
        """x [B, Tq, d] attends to projected k, v [B, Tk, N, D]; bias [B|1, N|1, Tq, Tk] -> [B, Tq, d].

        With per-row dropout `keys` [B]: dropout on the attention weights after the softmax.
        """
        out = common.attend(self._heads(self.q(x)), k, v, bias, 1.0, self.dropout_rate, keys, self.attention)
        return self.o(out.reshape(*out.shape[:2], -1))

    def __call__(self, x: jax.Array, kv: jax.Array, bias: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        """x [B, Tq, d], kv [B, Tk, d], bias [B|1, N|1, Tq, Tk] -> [B, Tq, d]."""
        return self.attend_to(x, *self.project_kv(kv), bias, keys)

    def absorbs(self, queries: int) -> bool:
        """Whether `attend_to_memory` is the cheaper way for `queries` query positions per memory row: plain
        k and v weights (no LoRA, no IA3), and fewer queries than d_kv. Projecting keys and values costs
        S x d x N x D per memory row once; reading the memory through the weights costs S x d x N per query."""
        plain = all(w.lora is None and w.ia3 is None for w in (self.k, self.v))
        return plain and queries < self.d_kv

    def attend_to_memory(self, x: jax.Array, memory: jax.Array, bias: jax.Array) -> jax.Array:
        """x [R*B, Tq, d] attends to memory [B, S, d] (the encoder output; R >= 1 query rows per memory row,
        example-major) without projecting it: q·(m Wk)ᵀ = (q Wk)·mᵀ and p·(m Wv) = (p·m) Wv, the same
        numbers up to float rounding. bias: cross-attention's padding bias [R*B|1, 1, 1, S]. No dropout."""
        b, s, d = memory.shape
        r, tq = x.shape[0] // b, x.shape[1]
        q = self._heads(self.q(x)).reshape(b, r * tq, self.num_heads, self.d_kv)  # [B, R*Tq, N, D]
        wk, wv = (w.weight[...].reshape(self.num_heads, self.d_kv, d).astype(q.dtype) for w in (self.k, self.v))
        memory = memory.astype(q.dtype)
        scores = jnp.einsum("bqne,bke->bnqk", jnp.einsum("bqnd,nde->bqne", q, wk), memory,
                            preferred_element_type=jnp.float32)  # [B, N, R*Tq, S]
        if bias.shape[0] > 1:  # one row per query row: the R rows of an input share their memory's padding
            bias = bias.reshape(b, r, *bias.shape[1:])[:, 0]
        probs = jax.nn.softmax(scores + bias, axis=-1).astype(q.dtype)
        out = jnp.einsum("bqne,nde->bqnd", jnp.einsum("bnqk,bke->bqne", probs, memory), wv)  # [B, R*Tq, N, D]
        return self.o(out.reshape(r * b, tq, -1))

    def position_bias(self, q_len: int, k_len: int, bidirectional: bool, num_buckets: int,
                      max_distance: int, q_offset: int | jax.Array = 0) -> jax.Array:
        """Learned relative position bias [1, N, Tq, Tk] in float32; query i sits at position q_offset + i."""
        rel = jnp.arange(k_len)[None, :] - (jnp.arange(q_len)[:, None] + q_offset)
        buckets = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
        values = jnp.take(self.relative_attention_bias["weight"][...], buckets, axis=0)  # [Tq, Tk, N]
        return values.transpose(2, 0, 1)[None].astype(jnp.float32)


class LayerSelfAttention(nnx.Module):
    def __init__(self, config, has_relative_attention_bias, *, dtype, param_dtype, rngs):
        self.SelfAttention = Attention(config, has_relative_attention_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = LayerNorm(config.d_model, config.layer_norm_epsilon, param_dtype=param_dtype)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, bias, keys=None, prefix=None):
        """prefix: None, or (k, v) [1, P, N, D] attended to before x's own (prefix tuning, models/prefix.py)."""
        h = self.layer_norm(x)
        k, v = common.with_prefix(prefix, *self.SelfAttention.project_kv(h))
        out = self.SelfAttention.attend_to(h, k, v, bias, common.fold(keys, 0))
        return x + common.dropout(out, self.dropout_rate, common.fold(keys, 1))

    def cached(self, x, bias, cache, index, prefix=None):
        """x [B, T, d]; cache (k, v) [B, M, N, D] gets this step's keys and values at slot `index`; a
        prefix's (k, v) [1, P, N, D] are attended to before the cache's slots, never stored in it."""
        h = self.layer_norm(x)
        k_all, v_all = (jax.lax.dynamic_update_slice(c, y.astype(c.dtype), (0, index, 0, 0))
                        for c, y in zip(cache, self.SelfAttention.project_kv(h)))
        return x + self.SelfAttention.attend_to(h, *common.with_prefix(prefix, k_all, v_all), bias), (k_all, v_all)


class EncoderMemory(NamedTuple):
    """The encoder output as a decoder layer's cross-attention cache, read through the k and v weights
    (`Attention.attend_to_memory`) instead of projected into keys and values."""

    hidden: jax.Array  # [B, S, d]


class LayerCrossAttention(nnx.Module):
    def __init__(self, config, *, dtype, param_dtype, rngs):
        self.EncDecAttention = Attention(config, False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = LayerNorm(config.d_model, config.layer_norm_epsilon, param_dtype=param_dtype)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, encoder_hidden, bias, keys=None):
        """x [R*B, T, d] attends to encoder_hidden [B, S, d] (R >= 1 targets per input, example-major, as rank
        classification scores R labels). Short targets without attention dropout read the encoder output
        through the weights (`Attention.attend_to_memory`); otherwise keys and values are projected once per
        input (and repeated R times)."""
        attention, h = self.EncDecAttention, self.layer_norm(x)
        r = x.shape[0] // encoder_hidden.shape[0]
        if attention.absorbs(r * x.shape[1]) and (keys is None or self.dropout_rate == 0):
            out = attention.attend_to_memory(h, encoder_hidden, bias)
        else:
            k, v = (jnp.repeat(y, r, axis=0) if r > 1 else y for y in attention.project_kv(encoder_hidden))
            out = attention.attend_to(h, k, v, bias, common.fold(keys, 0))
        return x + common.dropout(out, self.dropout_rate, common.fold(keys, 1))

    def cached(self, x, cross, bias):
        """Cross-attention to the encoder output (`init_cache`): its projected (keys, values), or the output
        itself (an `EncoderMemory`) read through the weights."""
        if isinstance(cross, EncoderMemory):
            return x + self.EncDecAttention.attend_to_memory(self.layer_norm(x), cross.hidden, bias)
        return x + self.EncDecAttention.attend_to(self.layer_norm(x), *cross, bias)


class DenseActDense(nnx.Module):
    """v1.0 MLP: wo(act(wi(x)))."""

    def __init__(self, config, *, dtype, param_dtype, rngs):
        d, ff, f = config.d_model, config.d_ff, config.initializer_factor
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.wi = Linear(d, ff, ("mlp", "embed"), stddev=f * d**-0.5, **kw)
        self.wo = Linear(ff, d, ("embed", "mlp"), stddev=f * ff**-0.5, **kw)
        self.act = common.activation(config.act_name)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, keys=None):
        return self.wo(common.dropout(self.act(self.wi(x)), self.dropout_rate, keys))


class DenseGatedActDense(nnx.Module):
    """v1.1 MLP: wo(act(wi_0(x)) * wi_1(x))."""

    def __init__(self, config, *, dtype, param_dtype, rngs):
        d, ff, f = config.d_model, config.d_ff, config.initializer_factor
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.wi_0 = Linear(d, ff, ("mlp", "embed"), stddev=f * d**-0.5, **kw)
        self.wi_1 = Linear(d, ff, ("mlp", "embed"), stddev=f * d**-0.5, **kw)
        self.wo = Linear(ff, d, ("embed", "mlp"), stddev=f * ff**-0.5, **kw)
        self.act = common.activation(config.act_name)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, keys=None):
        return self.wo(common.dropout(self.act(self.wi_0(x)) * self.wi_1(x), self.dropout_rate, keys))


class LayerFF(nnx.Module):
    def __init__(self, config, *, dtype, param_dtype, rngs):
        mlp = DenseGatedActDense if config.is_gated else DenseActDense
        self.DenseReluDense = mlp(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = LayerNorm(config.d_model, config.layer_norm_epsilon, param_dtype=param_dtype)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, keys=None):
        out = self.DenseReluDense(self.layer_norm(x), common.fold(keys, 0))
        return x + common.dropout(out, self.dropout_rate, common.fold(keys, 1))


class Block(nnx.Module):
    """`layer` = [self-attention, (cross-attention,) feed-forward], as in the checkpoint."""

    def __init__(self, config, is_decoder: bool, has_relative_attention_bias: bool, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layers = [LayerSelfAttention(config, has_relative_attention_bias, **kw)]
        if is_decoder:
            layers.append(LayerCrossAttention(config, **kw))
        layers.append(LayerFF(config, **kw))
        self.layer = nnx.List(layers)
        self.is_decoder = is_decoder

    def __call__(self, x, bias, encoder_hidden=None, cross_bias=None, keys=None, prefix=None):
        with jax.named_scope("attention"):  # scopes name the HLO ops for profiles (benchmarks/profile_step.py)
            x = self.layer[0](x, bias, common.fold(keys, 0), prefix)
        if self.is_decoder:
            with jax.named_scope("cross_attention"):
                x = self.layer[1](x, encoder_hidden, cross_bias, common.fold(keys, 1))
        with jax.named_scope("mlp"):
            return self.layer[-1](x, common.fold(keys, 2))

    def cached(self, x, bias, self_kv, cross_kv, cross_bias, index, prefix=None):
        """Decoder block on new positions: -> (x, updated self-attention cache)."""
        with jax.named_scope("attention"):
            x, self_kv = self.layer[0].cached(x, bias, self_kv, index, prefix)
        with jax.named_scope("cross_attention"):
            x = self.layer[1].cached(x, cross_kv, cross_bias)
        with jax.named_scope("mlp"):
            return self.layer[-1](x), self_kv


class Stack(nnx.Module):
    """T5Stack: blocks and `final_layer_norm`; embeddings come from the shared table."""

    def __init__(self, config: T5Config, is_decoder: bool, *, dtype, param_dtype, remat, rngs):
        n = config.n_decoder_layers if is_decoder else config.num_layers
        self.block = nnx.List([Block(config, is_decoder, i == 0, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                               for i in range(n)])
        self.final_layer_norm = LayerNorm(config.d_model, config.layer_norm_epsilon, param_dtype=param_dtype)
        self.is_decoder = is_decoder
        self.remat = remat
        self.buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, attention_mask=None, encoder_hidden=None, encoder_mask=None, keys=None, prompt_site=None,
                 prefix_kv=None):
        """x [B, T, d] embeddings -> [B, T, d]; decoder: causal + cross-attention to encoder_hidden [B, S, d].

        keys: per-row dropout keys [B] or None (dropout on the embeddings, in the blocks,
        and after the final layer norm). prompt_site (the encoder): a prompt at every block's input, its visibility.
        prefix_kv: per block, None or the (k, v) [1, P, N, D] its self-attention sees first (the decoder's
        prefix, models/prefix.py); x's positions then continue after the prefix's P.
        """
        t = x.shape[1]
        prefix_kv = [None] * len(self.block) if prefix_kv is None else prefix_kv
        p = 0 if prefix_kv[0] is None else prefix_kv[0][0].shape[1]
        x = common.dropout(x, self.dropout_rate, common.fold(keys, 0))
        rel = self.block[0].layer[0].SelfAttention
        bias = rel.position_bias(t, p + t, not self.is_decoder, self.buckets, self.max_distance, q_offset=p)
        slots = None if prompt_site is None else prompt_site.slots(attention_mask)
        bias = (bias + common.padding_bias(common.prefix_mask(attention_mask, p), p + t)
                + common.visibility_bias(prompt_site, attention_mask, slots, causal=False))
        cross_bias = None
        if self.is_decoder:
            bias = bias + common.causal_bias(t, p + t, offset=p)
            cross_bias = common.padding_bias(encoder_mask, encoder_hidden.shape[1])
        for i, (block, kv) in enumerate(zip(self.block, prefix_kv)):
            block_keys = common.fold(keys, i + 2)
            x = common.block_input(prompt_site, i, x, slots)
            x = common.run_block(block, self.remat, x, bias, encoder_hidden, cross_bias, block_keys, kv)
        return common.dropout(self.final_layer_norm(x), self.dropout_rate, common.fold(keys, 1))

    def cached(self, x, cache, index, encoder_mask=None, prefix_kv=None):
        """Decoder only: x [B, T, d] at positions index..index+T-1 -> ([B, T, d], updated cache).
        prefix_kv: as in `__call__`, attended to before the cache's slots (positions continue after it)."""
        t, m = x.shape[1], cache["self"][0][0].shape[1]
        prefix_kv = [None] * len(self.block) if prefix_kv is None else prefix_kv
        p = 0 if prefix_kv[0] is None else prefix_kv[0][0].shape[1]
        rel = self.block[0].layer[0].SelfAttention
        bias = rel.position_bias(t, p + m, False, self.buckets, self.max_distance, q_offset=p + index)
        bias = bias + common.causal_bias(t, p + m, offset=p + index)
        cross_bias = common.padding_bias(encoder_mask, cache["cross"][0][0].shape[1])
        new_self = []
        for block, self_kv, cross_kv, kv in zip(self.block, cache["self"], cache["cross"], prefix_kv):
            x, self_kv = block.cached(x, bias, self_kv, cross_kv, cross_bias, index, kv)
            new_self.append(self_kv)
        return self.final_layer_norm(x), {"self": tuple(new_self), "cross": cache["cross"]}


class T5(prefix_lib.PrefixSeam, nnx.Module):
    """T5 encoder-decoder with its LM head (Hugging Face `T5ForConditionalGeneration`)."""

    BLOCK_COLLECTION = "block"  # `encoder.block.<i>`, `decoder.block.<i>` (METHOD first/last/middle:K)

    def __init__(self, config: T5Config, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        self.shared = nnx.Dict(weight=common.param(rngs, (config.vocab_size, config.d_model), ("vocab", "embed"),
                                                   param_dtype, config.initializer_factor))
        self.encoder = Stack(config, False, **kw)
        self.decoder = Stack(config, True, **kw)
        self.prefix = None  # trained keys and values before the decoder's own (METHOD 'prefix:P', models/prefix.py)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.d_model, config.vocab_size, ("vocab", "embed"), dtype=dtype,
                                  param_dtype=param_dtype, stddev=config.initializer_factor, rngs=rngs)

    # --- the seam (models/base.py) ---------------------------------------------
    target_prefix = ""  # the decoder starts targets afresh
    peft_task_type = "SEQ_2_SEQ_LM"  # PEFT's task_type for adapters of this family (models/lora.py)
    # PEFT's IA3 targets, name -> feed-forward (models/ia3.py): keys and values (self- and cross-attention) and
    # the MLP's intermediate activation (the input of wo; PEFT's mT5 default rescales wi_1's output instead, the
    # same product, and loads this adapter as written)
    ia3_targets = {"k": False, "v": False, "wo": True}

    def prefix_dims(self) -> tuple[int, int, int]:
        """(rows L, heads N, head size D) of a prefix table (models/prefix.py): PEFT's num_layers (the encoder's
        count, config `num_layers`), heads and head size."""
        return self.config.num_layers, self.config.num_heads, self.config.d_kv

    def prefix_rows(self) -> list[int]:
        """The prefix table's row each decoder block's self-attention reads: 2i mod L, as PEFT lays it out for
        two submodules (models/prefix.py); the encoder and cross-attention get none."""
        return [(2 * i) % self.config.num_layers for i in range(self.config.n_decoder_layers)]

    @property
    def embedding_table(self) -> jax.Array:
        """The shared token embedding table [V, d]."""
        return self.shared["weight"][...]

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """[B, T] -> [B, T, d]."""
        return jnp.take(self.shared["weight"][...], input_ids, axis=0).astype(self.dtype)

    def _row_keys(self, dropout_rng, batch: int):
        """Per-row dropout keys [B], or None when there is no rng or every rate is 0 (nothing drawn)."""
        return common.row_keys(dropout_rng, batch) if self.config.has_dropout else None

    def encode(self, inputs_embeds: jax.Array, attention_mask: jax.Array | None = None,
               dropout_rng: jax.Array | None = None, prompt_site: common.PromptSite | None = None) -> jax.Array:
        """Encoder on embeddings: [B, S, d] -> [B, S, d]. dropout_rng: None, a key, or row keys [B].
        prompt_site: a prompt at the input of every encoder block (`common.PromptSite`), or None."""
        keys = self._row_keys(dropout_rng, inputs_embeds.shape[0])
        with jax.named_scope("encoder"):  # names the HLO ops for profiles (benchmarks/profile_eval.py)
            return self.encoder(inputs_embeds.astype(self.dtype), attention_mask, keys=keys, prompt_site=prompt_site)

    def decode(self, decoder_input_ids: jax.Array, encoder_hidden: jax.Array, encoder_mask: jax.Array | None = None,
               decoder_attention_mask: jax.Array | None = None, dropout_rng: jax.Array | None = None) -> jax.Array:
        """Decoder: ids [R*B, T] attending to encoder_hidden [B, S, d] (R >= 1 targets per input, example-major;
        encoder_mask [R*B, S]) -> hidden [R*B, T, d]."""
        keys = self._row_keys(dropout_rng, decoder_input_ids.shape[0])
        with jax.named_scope("decoder"):
            return self.decoder(self.embed(decoder_input_ids), decoder_attention_mask, encoder_hidden, encoder_mask,
                                keys=keys, prefix_kv=self._prefix_kv())

    def output_head(self) -> lm_head.LMHead:
        """The LM head [V, d] in the compute dtype, with v1.0's d_model**-0.5 rescale when configured."""
        w = self.embedding_table if self.config.tie_word_embeddings else self.lm_head.weight[...]
        return lm_head.LMHead(w, self.dtype, scale=self.config.d_model**-0.5 if self.config.scale_decoder_outputs
                              else None)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[..., d] -> [..., V] float32."""
        with jax.named_scope("lm_head"):
            return self.output_head().logits(hidden)

    def activations(self, inputs_embeds, attention_mask, *, decoder_input_ids=None, decoder_attention_mask=None,
                    dropout_rng=None, prompt_site=None):
        """Encoder on [B, S, d] embeddings, then the decoder -> (decoder hidden [B, T, d], mask [B, T]).

        decoder_input_ids [B, T] default to one start token: the prediction is the first output token.
        Row b's encoder and decoder draw their dropout masks from fold_in(key_b, 0) and fold_in(key_b, 1).
        """
        b = inputs_embeds.shape[0]
        if decoder_input_ids is None:
            decoder_input_ids = jnp.full((b, 1), self.config.decoder_start_token_id, jnp.int32)
        keys = self._row_keys(dropout_rng, b)
        encoded = self.encode(inputs_embeds, attention_mask, common.fold(keys, 0), prompt_site)
        hidden = self.decode(decoder_input_ids, encoded, attention_mask, decoder_attention_mask,
                             common.fold(keys, 1))
        mask = (decoder_attention_mask if decoder_attention_mask is not None
                else jnp.ones(decoder_input_ids.shape, jnp.int32))
        return hidden, mask

    def target_hidden(self, inputs_embeds, attention_mask, target_ids, target_mask, dropout_rng=None,
                      prompt_site=None):
        """The encoder once per input [B, S, d], the decoder once per target [R*B, L] -> the decoder states that
        predict each target token [R*B, L, d] (the LM head's input).

        Dropout keys as in `activations`; with R > 1, decoder copy r of row b folds in r.
        """
        b, rb = inputs_embeds.shape[0], target_ids.shape[0]
        rep = lambda x: jnp.repeat(x, rb // b, axis=0)  # [B, ...] -> [R*B, ...]
        keys = self._row_keys(dropout_rng, b)
        encoded = self.encode(inputs_embeds, attention_mask, common.fold(keys, 0), prompt_site)
        start = jnp.full((rb, 1), self.config.decoder_start_token_id, target_ids.dtype)
        decoder_input_ids = jnp.concatenate([start, target_ids[:, :-1]], axis=1)  # shifted right
        decoder_keys = common.repeat_keys(common.fold(keys, 1), rb // b)
        return self.decode(decoder_input_ids, encoded, rep(attention_mask), target_mask, decoder_keys)

    def target_logits(self, inputs_embeds, attention_mask, target_ids, target_mask, dropout_rng=None,
                      prompt_site=None):
        """`target_hidden` through the LM head -> logits [R*B, L, V]."""
        return self.logits(self.target_hidden(inputs_embeds, attention_mask, target_ids, target_mask, dropout_rng,
                                              prompt_site))

    def start_decode(self, inputs_embeds, attention_mask, max_new_tokens: int, prompt_site=None):
        """Encoder -> (None, decoder self-attention cache, step): the decoding loop's first pass,
        `step(cache, _, -1)`, feeds `decoder_start_token_id` at position 0, so the decoder step compiles once
        (a separate first step compiled for a third of t5-base's generate program)."""
        encoded = self.encode(inputs_embeds, attention_mask, prompt_site=prompt_site)
        cache = self.init_cache(encoded, max_new_tokens + 1)
        cross = cache["cross"]
        prefix_kv = self._prefix_kv()  # once for the whole decode, shared by every row and step

        def step(self_cache, tokens, t):  # generated token t sits at decoder position t + 1; t = -1: the start
            tokens = jnp.where(t < 0, self.config.decoder_start_token_id, tokens).astype(jnp.int32)
            h, c = self.decode_cached(tokens[:, None], {"self": self_cache, "cross": cross}, t + 1, attention_mask,
                                      prefix_kv)
            return self.logits(h[:, 0]), c["self"]

        return None, cache["self"], step

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 decoder_input_ids: jax.Array, decoder_attention_mask: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> jax.Array:
        """input_ids [B, S], decoder_input_ids [B, T] -> logits [B, T, V] (float32); no dropout without dropout_rng."""
        hidden, _ = self.activations(self.embed(input_ids), attention_mask, decoder_input_ids=decoder_input_ids,
                                     decoder_attention_mask=decoder_attention_mask, dropout_rng=dropout_rng)
        return self.logits(hidden)

    # --- incremental decoding with a KV cache ------------------------------------
    def init_cache(self, encoder_hidden: jax.Array, max_length: int) -> dict:
        """Cache for decoding M = max_length decoder positions against encoder_hidden [B, S, d].

        {"self": per layer (k, v) zeros [B, M, N, D], "cross": per layer (k, v) [B, S, N, D] projected
        from the encoder output, or for a short decode (M < d_kv, plain weights: `Attention.absorbs`) the
        output itself [B, S, d] as an `EncoderMemory`, read through the weights at each step: cheaper than
        projecting it}; compute dtype.
        """
        b, c = encoder_hidden.shape[0], self.config
        shape = (b, max_length, c.num_heads, c.d_kv)
        self_kv = tuple((jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)) for _ in self.decoder.block)
        encoder_hidden = encoder_hidden.astype(self.dtype)
        cross = tuple(EncoderMemory(encoder_hidden) if attention.absorbs(max_length) else attention.project_kv(
            encoder_hidden) for attention in (block.layer[1].EncDecAttention for block in self.decoder.block))
        return {"self": self_kv, "cross": cross}

    def decode_cached(self, decoder_input_ids: jax.Array, cache: dict, index: int | jax.Array,
                      encoder_mask: jax.Array | None = None, prefix_kv=None):
        """Decoder ids [B, T] at positions index..index+T-1 (`index` may be traced), attending to the
        cached earlier positions and to the encoder (encoder_mask [B, S]) -> (hidden [B, T, d], cache).

        Same numbers as `decode` on the whole prefix (decoder inputs have no padding here). A prefix
        (METHOD 'prefix:P') is attended to first: prefix_kv from `_prefix_kv()`, computed here if not given.
        """
        prefix_kv = self._prefix_kv() if prefix_kv is None else prefix_kv
        with jax.named_scope("decoder"):
            return self.decoder.cached(self.embed(decoder_input_ids), cache, index, encoder_mask, prefix_kv)

    # --- checkpoint names ----------------------------------------------------
    def checkpoint_key(self, path: tuple) -> str:
        return ".".join(str(p) for p in path)


base.register_family("t5", T5Config, T5, PRESETS)
base.register_family("mt5", T5Config, T5)  # mT5's config.json says "mt5"; the architecture is T5 1.1's
