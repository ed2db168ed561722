"""Llama, Mistral, Qwen2 and Qwen3 in Flax NNX, read top to bottom: one file, because the code is one.

Module and parameter names mirror the Hugging Face checkpoint (`model.layers.0.self_attn.q_proj.weight`, ...;
our paths drop the `model.` that `checkpoint_key` adds back), and `nn.Linear` weights keep their [out, in]
layout, so loading is a name join, not a table.

The four `model_type`s are transformers' `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM` and
`Qwen3ForCausalLM`: pre-norm blocks of RMSNorm, grouped-query self-attention with rotary positions
(`models/rope.py`: default, linear, dynamic, llama3) and a SwiGLU MLP (down(silu(gate(x)) * up(x))), a final
RMSNorm and an LM head tied to the embeddings or not (`tie_word_embeddings`). They differ only in what each
class reads from config.json, which `LlamaConfig` keeps as transformers does:
- llama: q/k/v/o biases when `attention_bias`, MLP biases when `mlp_bias`; no sliding window;
- mistral: no biases; every layer attends to the last `sliding_window` positions when it is set;
- qwen2: q/k/v biases always (o none); the layers `layer_types` marks 'sliding_attention' (transformers derives
  them from `use_sliding_window` and `max_window_layers`) attend to the last `sliding_window` positions;
- qwen3: q/k/v/o biases when `attention_bias`; RMSNorm of each query and key head (`q_norm`, `k_norm`, over
  `head_dim`, before RoPE); sliding layers as qwen2. `head_dim` need not be hidden / heads.

`Llama` implements the library's seam (`models/base.py`) as `models/gpt2.py` does, and shares its conventions:
- positions come from the attention mask (cumsum(mask) - 1, clipped at 0) in every path, so a row's numbers
  never depend on the side or amount of its padding (transformers' forward numbers positions 0..T-1, counting
  left pads; its `generate` numbers them from the mask as we do). RoPE is relative, so only 'dynamic' (whose
  frequencies follow the longest position of a call, as transformers' do) would notice the difference;
- a sliding window is measured in those positions (a query at position q sees keys at q - W < k <= q). For the
  contiguous real tokens of a padded row that is transformers' window on sequence indices;
- decoding uses a fixed-size KV cache (`init_cache`, `forward_cached`) holding the rotated keys of the KV heads;
  the window applies there too, over the positions of the cache's slots;
- prefix tuning (METHOD 'prefix:P', `models/prefix.py`) gives every layer P keys and values per KV head, seen
  before the input's own (in PEFT's layout for grouped-query attention: KV heads x `head_dim`); the input's
  positions continue after them (P, P+1, ...), as transformers numbers tokens after P cached ones. The prefix
  holds positions 0..P-1 for the sliding window too, as transformers' mask over PEFT's past keys does: queries
  more than W - 1 positions past it no longer see it.

Dropout: only `attention_dropout`, on the attention probabilities after the softmax, as transformers' eager
attention applies it in train mode (these models have no embedding or residual dropout). Row b draws from its
own key (`common.row_keys`): block i folds in i + 1.

Grouped-query attention repeats each KV head for its `num_attention_heads / num_key_value_heads` query heads just
before attending (transformers' `repeat_kv`); the cache and the prefix hold the KV heads only.

bfloat16: `dtype` is the compute dtype; norms, RoPE and the softmax run in float32 and logits come out float32.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning_jax.models import base, causal_lm, common, lm_head, rope

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}
SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' layer_types


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The fields of a Llama / Mistral / Qwen2 / Qwen3 `config.json` that change the computation.

    `rope_parameters` is transformers 5's dict (`rope.parameters` reads older files' `rope_theta` + `rope_scaling`),
    kept as sorted (key, value) pairs so that the config stays hashable; pass a dict. `sliding_window` is the window
    in effect (qwen2 / qwen3: already None unless `use_sliding_window`), `layer_types` which layers use it (qwen2 /
    qwen3 only; None: none). `eos_token_id`: the first id when config.json lists several.
    """

    model_type: str = "llama"  # which transformers class this matches (MODEL_TYPES)
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # K; None: num_attention_heads (no grouping)
    head_dim: int | None = None  # D; None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    rope_parameters: Any = (("rope_theta", 10000.0), ("rope_type", "default"))
    attention_bias: bool = False  # llama, qwen3: biases of q, k, v and o (qwen2's q, k, v always have them)
    mlp_bias: bool = False  # llama only
    sliding_window: int | None = None  # mistral: every layer; qwen2 / qwen3: the layers `layer_types` marks
    layer_types: tuple[str, ...] | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    # Used only when a training step passes a dropout_rng.
    attention_dropout: float = 0.0
    # How attention runs ('auto' | 'einsum' | 'xla' | 'cudnn', see `common.pick_attention`);
    # a runtime choice, not part of config.json.
    attention: str = "auto"

    def __post_init__(self):
        common.check_attention(self.attention)
        common.activation(self.hidden_act)  # fail early on an unknown activation
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of this family's {MODEL_TYPES}")
        params = dict(self.rope_parameters)
        params.setdefault("rope_theta", 10000.0)
        params = rope.parameters({"rope_parameters": params, "max_position_embeddings": self.max_position_embeddings})
        object.__setattr__(self, "rope_parameters", tuple(sorted(params.items())))
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        heads = self.num_attention_heads
        if self.head_dim is None and self.hidden_size % heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {heads}; "
                             "set head_dim")
        # Resolved once, as transformers' configs do: None means "as many as the query heads" / "hidden / heads".
        object.__setattr__(self, "num_key_value_heads", self.num_key_value_heads or heads)
        object.__setattr__(self, "head_dim", self.head_dim or self.hidden_size // heads)
        if heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads "
                             f"{self.num_key_value_heads}")
        self._check_windows()

    def _check_windows(self):
        types = self.layer_types if self.model_type in ("qwen2", "qwen3") else None
        if types is not None and len(types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(types)} entries for {self.num_hidden_layers} layers")
        if types is not None and self.sliding_window is None and SLIDING in types:
            raise ValueError("layer_types marks sliding_attention layers but sliding_window is not set (qwen2 / "
                             "qwen3: use_sliding_window must be true); set both or mark every layer full_attention")
        if any(self.window(i) is not None for i in range(self.num_hidden_layers)) and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")

    # --- what the rest of the library reads -------------------------------------
    @property
    def prompt_blocks(self) -> int:
        """The blocks a prompt at the input passes through (METHOD 'per_layer' gives each one)."""
        return self.num_hidden_layers

    @property
    def has_dropout(self) -> bool:
        return self.attention_dropout > 0

    def with_dropout(self, rate: float) -> "LlamaConfig":
        """`attention_dropout`, the only dropout rate, replaced by `rate` (T5X's DROPOUT_RATE)."""
        return dataclasses.replace(self, attention_dropout=rate)

    # --- what each model_type's transformers class reads ----------------------------
    @property
    def rope(self) -> dict[str, Any]:
        return dict(self.rope_parameters)

    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2" or (self.attention_bias and self.model_type in ("llama", "qwen3"))

    @property
    def o_bias(self) -> bool:
        return self.attention_bias and self.model_type in ("llama", "qwen3")

    @property
    def has_mlp_bias(self) -> bool:
        return self.mlp_bias and self.model_type == "llama"

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "qwen3"

    def window(self, layer: int) -> int | None:
        """Layer `layer`'s sliding window W (a query sees the keys of the last W positions, itself included) or None."""
        if self.model_type == "mistral":
            return self.sliding_window
        if self.model_type in ("qwen2", "qwen3") and self.layer_types and self.layer_types[layer] == SLIDING:
            return self.sliding_window
        return None

    # --- config.json -----------------------------------------------------------------
    @classmethod
    def from_hf(cls, config: dict[str, Any], tensor_names=None) -> "LlamaConfig":
        """Reads config.json as the model_type's transformers config does (its defaults where a key is missing)."""
        kind = config.get("model_type")
        if kind not in MODEL_TYPES:
            raise ValueError(f"model_type {kind!r} is not one of this family's {MODEL_TYPES}")
        plain = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                 "initializer_range", "tie_word_embeddings", "attention_dropout"}
        kw = {k: v for k, v in config.items() if k in plain and v is not None}
        # Special tokens: LlamaConfig and MistralConfig default to BOS 1 and EOS 2, Qwen's to none.
        defaults = (None, None) if kind in ("qwen2", "qwen3") else (1, 2)
        eos = config.get("eos_token_id", defaults[1])
        kw.update(bos_token_id=config.get("bos_token_id", defaults[0]), pad_token_id=config.get("pad_token_id"),
                  eos_token_id=eos[0] if isinstance(eos, (list, tuple)) and eos else eos)
        kw["rope_parameters"] = rope.parameters(config)
        if kind in ("llama", "qwen3"):
            kw["attention_bias"] = bool(config.get("attention_bias", False))
        if kind == "llama":
            kw["mlp_bias"] = bool(config.get("mlp_bias", False))
        if kind == "mistral":
            kw["sliding_window"] = config.get("sliding_window", 4096)  # MistralConfig's default
        if kind in ("qwen2", "qwen3"):
            window = config.get("sliding_window", 4096) if config.get("use_sliding_window", False) else None
            types = config.get("layer_types")
            if types is None:  # Qwen2Config.__post_init__
                first = config.get("max_window_layers", 28)
                types = [SLIDING if window is not None and i >= first else FULL
                         for i in range(config.get("num_hidden_layers", cls.num_hidden_layers))]
            kw.update(sliding_window=window, layer_types=tuple(types))
        return cls(model_type=kind, **kw)

    def to_hf(self) -> dict[str, Any]:
        """The config.json that transformers loads back as this model_type."""
        kept_apart = ("attention", "rope_parameters", "attention_bias", "mlp_bias", "sliding_window", "layer_types")
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in kept_apart}
        d.update(architectures=[ARCHITECTURES[self.model_type]], rope_parameters=self.rope)
        if self.model_type in ("llama", "qwen3"):
            d["attention_bias"] = self.attention_bias
        if self.model_type == "llama":
            d["mlp_bias"] = self.mlp_bias
        if self.model_type == "mistral":
            d["sliding_window"] = self.sliding_window
        if self.model_type in ("qwen2", "qwen3"):
            d.update(use_sliding_window=self.sliding_window is not None, sliding_window=self.sliding_window,
                     max_window_layers=self.num_hidden_layers,
                     layer_types=list(self.layer_types or [FULL] * self.num_hidden_layers))
        return d

    def describe(self) -> str:
        layers = self.num_hidden_layers
        sliding = sum(self.window(i) is not None for i in range(layers))
        window = f", sliding window {self.sliding_window} in {sliding} of {layers} layers" if sliding else ""
        tied = "tied" if self.tie_word_embeddings else "untied"
        return (f"{self.model_type}: {layers} layers, hidden {self.hidden_size}, "
                f"{self.num_attention_heads} heads ({self.num_key_value_heads} KV) x {self.head_dim}, "
                f"mlp {self.intermediate_size}, vocab {self.vocab_size} ({tied}), "
                f"rope {self.rope['rope_type']}{window}")


def _llama3(factor: float) -> dict[str, Any]:
    return {"rope_type": "llama3", "rope_theta": 500000.0, "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


_LLAMA3 = dict(vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=128000,
               eos_token_id=128001, num_key_value_heads=8)
# The released sizes (their config.json on the hub), by hub name without the organisation.
PRESETS = {
    "Llama-3.1-8B": LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, rope_parameters=_llama3(8.0), **_LLAMA3),
    "Llama-3.1-70B": LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                 num_attention_heads=64, rope_parameters=_llama3(8.0), **_LLAMA3),
    "Llama-3.2-1B": LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                                head_dim=64, tie_word_embeddings=True, rope_parameters=_llama3(32.0), **_LLAMA3),
    "Mistral-7B-v0.1": LlamaConfig(model_type="mistral", hidden_size=4096, intermediate_size=14336,
                                   num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                   max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=4096),
    "Qwen2.5-7B": LlamaConfig(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                              max_position_embeddings=131072, rope_parameters={"rope_theta": 1000000.0},
                              layer_types=(FULL,) * 28, bos_token_id=151643, eos_token_id=151643),
    "Qwen3-8B": LlamaConfig(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                            num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                            max_position_embeddings=40960, rope_parameters={"rope_theta": 1000000.0},
                            layer_types=(FULL,) * 36, bos_token_id=151643, eos_token_id=151645),
}


class Embedding(nnx.Module):
    """`weight` [V, H]."""

    def __init__(self, num, features, *, dtype, param_dtype, stddev, rngs):
        self.weight = common.param(rngs, (num, features), ("vocab", "embed"), param_dtype, stddev)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0).astype(self.dtype)


class RMSNorm(nnx.Module):
    """`weight` [features]; no mean, no bias; float32 inside (transformers' LlamaRMSNorm)."""

    def __init__(self, features, eps, axis, *, param_dtype):
        self.weight = nnx.Param(jnp.ones((features,), param_dtype), axes=(axis,))
        self.eps = eps

    def __call__(self, x):
        return common.rms_norm(x, self.weight[...], self.eps)


class Linear(nnx.Module):
    """PyTorch's layout: `weight` [out, in], `bias` [out] or None; plus a LoRA update once `models.lora` adds one,
    or an IA3 rescaling once `models.ia3` adds one."""

    def __init__(self, n_in, n_out, axes, *, bias: bool, dtype, param_dtype, stddev, rngs):
        self.weight = common.param(rngs, (n_out, n_in), axes, param_dtype, stddev)
        self.bias = common.zeros_param((n_out,), axes[:1], param_dtype) if bias else None
        self.dtype = dtype
        self.in_out, self.lora, self.ia3 = (n_in, n_out), None, None

    def __call__(self, x):
        x = x.astype(self.dtype)
        if self.ia3 is not None and self.ia3.feedforward:
            x = self.ia3(x)
        y = common.dense(x, self.weight[...], out_in=True)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        y = y if self.lora is None else y + self.lora(x)
        return y if self.ia3 is None or self.ia3.feedforward else self.ia3(y)

    def merge_scale(self, scale, input_side: bool) -> None:
        """Folds a rescaling into the weight [out, in]: of the input [in] (`input_side`), else of the output [out]
        (and the bias)."""
        w = self.weight[...]
        factor = scale[None, :] if input_side else scale[:, None]
        self.weight[...] = (w.astype(jnp.float32) * factor).astype(w.dtype)
        if not input_side and self.bias is not None:
            self.bias[...] = (self.bias[...].astype(jnp.float32) * scale).astype(self.bias.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE: N query heads, K KV heads, each of size D."""

    def __init__(self, config: LlamaConfig, *, dtype, param_dtype, rngs):
        h, n, k, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, stddev=config.initializer_range, rngs=rngs)
        # K and V split over the model axis like Q: K * D as one dimension, so fewer KV heads than devices still
        # splits (inside heads); where K * D does not divide, partitioning.logical_to_spec replicates it.
        self.q_proj = Linear(h, n * d, ("heads", "embed"), bias=config.qkv_bias, **kw)
        self.k_proj = Linear(h, k * d, ("heads", "embed"), bias=config.qkv_bias, **kw)
        self.v_proj = Linear(h, k * d, ("heads", "embed"), bias=config.qkv_bias, **kw)
        self.o_proj = Linear(n * d, h, ("embed", "heads"), bias=config.o_bias, **kw)
        if config.qk_norm:  # qwen3: per head, over D
            self.q_norm = RMSNorm(d, config.rms_norm_eps, None, param_dtype=param_dtype)
            self.k_norm = RMSNorm(d, config.rms_norm_eps, None, param_dtype=param_dtype)
        else:
            self.q_norm = self.k_norm = None
        self.num_heads, self.num_kv_heads, self.head_dim = n, k, d
        self.scale = d**-0.5
        self.attention_dropout = config.attention_dropout
        self.attention = config.attention

    def _qkv(self, x: jax.Array, positions: jax.Array, inv_freq: jax.Array):
        """x [B, T, H] at positions [B|1, T] -> q [B, T, N, D], k and v [B, T, K, D]; q, k normed (qwen3), rotated."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return rope.apply(q, positions, inv_freq), rope.apply(k, positions, inv_freq), v

    def _attend(self, q, k, v, bias, keys=None) -> jax.Array:
        """q [B, T, N, D], k/v [B, S, K, D], bias [B|1, 1, T, S] -> [B, T, H] (after o_proj)."""
        b, t = q.shape[:2]
        groups = self.num_heads // self.num_kv_heads
        k, v = (jnp.repeat(y, groups, axis=2) for y in (k, v))  # KV head j serves query heads j*G..(j+1)*G-1
        out = common.attend(q, k, v, bias, self.scale, self.attention_dropout, keys, self.attention)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))

    def __call__(self, x, bias, positions, inv_freq, keys=None, prefix=None) -> jax.Array:
        """x [B, T, H], bias [B|1, 1, T, P+T], positions [B|1, T] -> [B, T, H]; per-row dropout `keys` [B] or None
        (attention_dropout on the probabilities). prefix: None, or the (k, v) [1, P, K, D] every row sees first."""
        q, k, v = self._qkv(x, positions, inv_freq)
        return self._attend(q, *common.with_prefix(prefix, k, v), bias, keys)

    def cached(self, x, bias, positions, inv_freq, cache, index, prefix=None):
        """x [B, T, H], bias [B|1, 1, T, P+M], cache (k, v) [B, M, K, D] -> ([B, T, H], updated cache).

        The new (rotated) keys and values go to slots index..index+T-1; queries attend over all M slots, after the
        P positions of `prefix` ((k, v) [1, P, K, D], held once for the batch and never written to the cache).
        """
        q, k, v = self._qkv(x, positions, inv_freq)
        k_all, v_all = (jax.lax.dynamic_update_slice(c, y.astype(c.dtype), (0, index, 0, 0))
                        for c, y in zip(cache, (k, v)))
        return self._attend(q, *common.with_prefix(prefix, k_all, v_all), bias), (k_all, v_all)


class MLP(nnx.Module):
    """SwiGLU: down_proj(act(gate_proj(x)) * up_proj(x))."""

    def __init__(self, config: LlamaConfig, *, dtype, param_dtype, rngs):
        h, i = config.hidden_size, config.intermediate_size
        kw = dict(bias=config.has_mlp_bias, dtype=dtype, param_dtype=param_dtype, stddev=config.initializer_range,
                  rngs=rngs)
        self.gate_proj = Linear(h, i, ("mlp", "embed"), **kw)
        self.up_proj = Linear(h, i, ("mlp", "embed"), **kw)
        self.down_proj = Linear(i, h, ("embed", "mlp"), **kw)
        self.act = common.activation(config.hidden_act)

    def __call__(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    """transformers' DecoderLayer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=param_dtype)
        self.self_attn = Attention(config, **kw)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed",
                                                param_dtype=param_dtype)
        self.mlp = MLP(config, **kw)

    def __call__(self, x, bias, positions, inv_freq, keys=None, prefix=None):
        with jax.named_scope("attention"):  # scopes name the HLO ops for profiles (benchmarks/profile_step.py)
            x = x + self.self_attn(self.input_layernorm(x), bias, positions, inv_freq, common.fold(keys, 0), prefix)
        with jax.named_scope("mlp"):
            return x + self.mlp(self.post_attention_layernorm(x))

    def cached(self, x, bias, positions, inv_freq, cache, index, prefix=None):
        with jax.named_scope("attention"):
            a, cache = self.self_attn.cached(self.input_layernorm(x), bias, positions, inv_freq, cache, index, prefix)
            x = x + a
        with jax.named_scope("mlp"):
            return x + self.mlp(self.post_attention_layernorm(x)), cache


class Llama(causal_lm.CausalLM, nnx.Module):
    """A Llama-style decoder with its LM head (transformers' `LlamaForCausalLM` and the three like it).

    `dtype` is the compute dtype (float32 or bfloat16); `param_dtype` the storage dtype of the weights.
    """

    BLOCK_COLLECTION = "layers"  # `layers.<i>`: the decoder blocks (for METHOD first/last/middle:K)

    def __init__(self, config: LlamaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.remat = remat
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, stddev=config.initializer_range, **kw)
        self.layers = nnx.List([Block(config, **kw) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=param_dtype)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, ("vocab", "embed"), bias=False,
                                  stddev=config.initializer_range, **kw)
        self.prefix = None  # trained keys and values before every layer's own (METHOD 'prefix:P', models/prefix.py)

    # --- the seam (models/base.py) ---------------------------------------------
    target_prefix = " "  # targets continue the input text (Llama 3's and Qwen's byte-level BPE mark the space)
    peft_task_type = "CAUSAL_LM"  # PEFT's task_type for adapters of this family (models/lora.py)

    @property
    def ia3_targets(self) -> dict[str, bool]:
        """PEFT's IA3 targets, name -> feed-forward (models/ia3.py): llama / mistral k_proj, v_proj; qwen2 / qwen3
        q_proj, v_proj; all down_proj's input."""
        attention = ("q_proj", "v_proj") if self.config.model_type in ("qwen2", "qwen3") else ("k_proj", "v_proj")
        return {**dict.fromkeys(attention, False), "down_proj": True}

    def prefix_dims(self) -> tuple[int, int, int]:
        """(rows L, heads, head size D) of a prefix table (models/prefix.py): PEFT's num_layers and, for
        grouped-query attention, the KV heads and head_dim (PEFT's token_dim = K * D)."""
        return self.config.num_hidden_layers, self.config.num_key_value_heads, self.config.head_dim

    def prefix_rows(self) -> list[int]:
        """The prefix table's row each layer's attention reads: layer i, row i."""
        return list(range(self.config.num_hidden_layers))

    @property
    def embedding_table(self) -> jax.Array:
        """The token embedding table [V, H]."""
        return self.embed_tokens.weight[...]

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings: [B, T] -> [B, T, H]."""
        return self.embed_tokens(input_ids)

    # --- positions: rotations, the causal window -------------------------------------
    def _inverse_frequencies(self, positions: jax.Array) -> jax.Array:
        """RoPE's [D/2] inverse frequencies for a call whose positions are [B|1, T] (only 'dynamic' reads them)."""
        c = self.config
        return rope.inverse_frequencies(c.rope, c.head_dim, positions, c.max_position_embeddings)

    def _layer_biases(self, bias: jax.Array, positions: jax.Array, key_positions: jax.Array) -> list:
        """Each layer's attention bias: `bias`, plus the sliding window's (a key more than W - 1 positions before
        the query is hidden) in the layers that have one. positions [B|1, T], key_positions [B|1, S]."""
        windows = [self.config.window(i) for i in range(self.config.num_hidden_layers)]
        if all(w is None for w in windows):
            return [bias] * len(windows)
        far = positions[:, :, None] - key_positions[:, None, :] >= self.config.sliding_window  # [B|1, T, S]
        windowed = bias + jnp.where(far, common.MASK_VALUE, 0.0).astype(jnp.float32)[:, None]
        return [bias if window is None else windowed for window in windows]

    def _key_positions(self, positions: jax.Array) -> jax.Array:
        """[B|1, S] positions of S keys after the prefix's P -> [B|1, P + S] (the prefix holds 0..P-1)."""
        p = self.prefix_length
        if p == 0:
            return positions
        return jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (positions.shape[0], p)), positions], axis=1)

    def forward_embeddings(self, inputs_embeds: jax.Array, attention_mask: jax.Array | None = None,
                           position_ids: jax.Array | None = None, dropout_rng: jax.Array | None = None,
                           prompt_site: common.PromptSite | None = None) -> jax.Array:
        """Runs the blocks and final norm on embeddings: [B, T, H] -> hidden [B, T, H].

        `position_ids` [B|1, T] default to cumsum(attention_mask) - 1, clipped at 0 (0..T-1 without a mask): pads
        are not counted, so left and right padding give the same numbers at real tokens. With a prefix they
        continue after its P. dropout_rng: None (no dropout), a key, or one key per row [B] (`common.row_keys`);
        draws nothing when attention_dropout is 0. prompt_site: where the prompt sits (`common.PromptSite`: a
        prompt for every block, its visibility), or None.
        """
        b, t = inputs_embeds.shape[:2]
        p = self.prefix_length
        if position_ids is None:
            position_ids = (jnp.arange(t)[None] if attention_mask is None
                            else common.positions_from_mask(attention_mask))
        positions = p + position_ids
        keys = common.row_keys(dropout_rng, b) if self.config.has_dropout else None
        x = inputs_embeds.astype(self.dtype)
        slots = None if prompt_site is None else prompt_site.slots(attention_mask)
        bias = (common.causal_bias(t, p + t, offset=p)
                + common.padding_bias(common.prefix_mask(attention_mask, p), p + t)
                + common.visibility_bias(prompt_site, attention_mask, slots, causal=True))
        biases = self._layer_biases(bias, positions, self._key_positions(positions))
        inv_freq = self._inverse_frequencies(positions)
        for i, (block, layer_bias, kv) in enumerate(zip(self.layers, biases, self._prefix_kv())):
            x = common.block_input(prompt_site, i, x, slots)
            x = common.run_block(block, self.remat, x, layer_bias, positions, inv_freq, common.fold(keys, i + 1), kv)
        return self.norm(x)

    def output_head(self) -> lm_head.LMHead:
        """The LM head (the token embeddings when tied) [V, H], in the compute dtype."""
        w = self.embed_tokens.weight[...] if self.config.tie_word_embeddings else self.lm_head.weight[...]
        return lm_head.LMHead(w, self.dtype)

    # --- incremental decoding with a KV cache ------------------------------------
    def init_cache(self, batch: int, max_length: int):
        """An empty cache: per layer a (k, v) pair of zeros [B, M, K, D] (K: the KV heads) in the compute dtype."""
        shape = (batch, max_length, self.config.num_key_value_heads, self.config.head_dim)
        return tuple((jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)) for _ in self.layers)

    def forward_cached(self, inputs_embeds: jax.Array, cache_mask: jax.Array, position_ids: jax.Array, cache,
                       index: int | jax.Array, prompt_site: common.PromptSite | None = None, prefix_kv=None):
        """Runs T new positions against the cache: -> (hidden [B, T, H], updated cache).

        inputs_embeds [B, T, H] sit in cache slots index..index+T-1 (`index` may be traced); cache_mask [B, M] marks
        the slots holding real tokens (slots after the current position are hidden by the causal mask, whatever
        their mask), laid out as `_prefill` does: the slots' positions are cumsum(cache_mask) - 1, which the
        sliding window reads; position_ids [B, T] are the new tokens'. With M = T, index 0 and the same positions
        this equals `forward_embeddings`. Never drops out.
        prompt_site (a prefill only, index 0): the prompt at every block's input and its visibility; the steps
        after it run positions that are not the prompt's, so they never take one. A prefix (METHOD 'prefix:P') is
        attended to before the cache's slots and is never stored in it; positions continue after its P.
        prefix_kv: its per-layer (k, v) (`_prefix_kv()`, computed once by a caller that runs many steps), else
        computed here.
        """
        t, m, p = inputs_embeds.shape[1], cache_mask.shape[1], self.prefix_length
        prefix_kv = self._prefix_kv() if prefix_kv is None else prefix_kv
        positions = p + position_ids
        x = inputs_embeds.astype(self.dtype)
        slots = None if prompt_site is None else prompt_site.slots(cache_mask[:, :t])
        bias = (common.causal_bias(t, p + m, offset=p + index)
                + common.padding_bias(common.prefix_mask(cache_mask, p), p + m)
                + common.visibility_bias(prompt_site, cache_mask[:, :t], slots, causal=True, keys=m))
        biases = self._layer_biases(bias, positions, self._key_positions(p + common.positions_from_mask(cache_mask)))
        inv_freq = self._inverse_frequencies(positions)
        new_cache = []
        for i, (block, layer_cache, layer_bias, kv) in enumerate(zip(self.layers, cache, biases, prefix_kv)):
            x = common.block_input(prompt_site, i, x, slots)
            x, layer_cache = block.cached(x, layer_bias, positions, inv_freq, layer_cache, index, kv)
            new_cache.append(layer_cache)
        return self.norm(x), tuple(new_cache)

    # --- checkpoint names ----------------------------------------------------
    CHECKPOINT_PREFIX = "model."  # everything but lm_head sits under `model.` (transformers' LlamaModel)

    def checkpoint_key(self, path: tuple) -> str:
        """Our state path ('layers', 0, 'self_attn', 'q_proj', 'weight') -> the HF tensor name."""
        name = ".".join(str(p) for p in path)
        return name if path[0] == "lm_head" else self.CHECKPOINT_PREFIX + name


for _model_type in MODEL_TYPES:
    base.register_family(_model_type, LlamaConfig, Llama, PRESETS)
