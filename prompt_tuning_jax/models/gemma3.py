"""Gemma 3 (the 1B text model, and the text part of the larger ones) in Flax NNX, read top to bottom.

Module and parameter names mirror the Hugging Face checkpoint of `Gemma3ForCausalLM` (model_type
`gemma3_text`: `model.layers.0.self_attn.q_proj.weight`, ...), and `nn.Linear` weights keep their
[out, in] layout, so loading is a name join (`checkpoint_key` adds `model.`).

Multimodal checkpoints (the hub's 4B, 12B and 27B: model_type `gemma3`, `Gemma3ForConditionalGeneration`) load
as this text model: prompt tuning feeds text only, so the vision tower and the multi-modal projector are ignored,
and their tensors are never read (a safetensors file is read tensor by tensor; a pytorch_model.bin is unpickled
whole by torch, so there they are read but not used). What is read:
- the config: `text_config` as transformers 5 reads it (`multimodal_text_config`): a field it omits takes
  Gemma3TextConfig's default (the hub's 4B config names five), nothing at the top level is copied into it;
  final_logit_softcapping is dropped (with a warning if set), as Gemma3ForConditionalGeneration never applies it;
- the tensors, in either layout transformers 5 loads (`LAYOUTS`, picked from the tensor names and kept in
  `config.checkpoint_prefix`): `language_model.model.*` (+ `language_model.lm_head.weight` when untied), as the
  hub's files hold them and as transformers' `save_pretrained` still writes them (it reverses its renaming), or
  `model.language_model.*` (+ `lm_head.weight`), the module names, which `save_pretrained(...,
  save_original_format=False)` writes. `Gemma3.load_key` gives those names; `checkpoint_key` stays gemma3_text's;
- the head: untied exactly when the checkpoint holds one (transformers 5 ties by the top-level
  `tie_word_embeddings`, and saves no head when it ties).
`save_pretrained` of such a model writes a text-only `gemma3_text` checkpoint (Gemma3ForCausalLM, no vision tower),
whose logits on text are the multimodal model's; PEFT adapters exported from it name the modules as
Gemma3ForCausalLM does, so they apply to that checkpoint, not to the multimodal one.

What matches transformers' `Gemma3ForCausalLM` (modeling_gemma3.py):
- `embed_tokens` multiplies the looked-up rows by sqrt(H) in the compute dtype
  (`Gemma3TextScaledWordEmbedding`); `embed(ids)` returns them scaled, so a soft prompt enters beside
  the scaled token embeddings, where PEFT puts it (`inputs_embeds`);
- every RMSNorm is Gemma's: float32 inside, times (1 + weight), weights stored zero-centred;
- a block is input_layernorm -> attention -> post_attention_layernorm -> residual, then
  pre_feedforward_layernorm -> GeGLU MLP (down(act(gate(x)) * up(x)), gelu tanh) ->
  post_feedforward_layernorm -> residual;
- attention: grouped-query (K key/value heads serve N query heads), head_dim from the config (not H / N),
  q_norm / k_norm per head before RoPE, scores scaled by query_pre_attn_scalar ** -0.5, the softmax in
  float32. `attn_logit_softcapping` is read and not applied: transformers' Gemma3Attention never passes
  it to its attention (Gemma 2's does; Gemma 3 replaced soft-capping by the q/k norms, and its released
  configs set None), so a config that sets it runs there, and here, without it;
- `layer_types` alternates 'sliding_attention' (a query sees the `sliding_window` - 1 positions before it
  and itself) and 'full_attention' layers; each type has its own RoPE (`models/rope.py`): the local
  base (rope_local_base_freq) on sliding layers, the global one (with Gemma 3 4B+'s linear scaling)
  on full layers;
- the LM head is tied to `embed_tokens` (unless the config unties it), logits tanh soft-capped when
  `final_logit_softcapping` is set.

Where we differ:
- positions come from the attention mask (cumsum(mask) - 1) in every path, as transformers' `generate`
  numbers them, so no row depends on its padding; the sliding window is measured in those positions
  (transformers' plain forward measures it in slots, which is the same wherever a row's real tokens
  are contiguous, as padding on either side leaves them);
- the KV cache (`init_cache`, `forward_cached`) keeps all M slots for every layer, sliding ones
  included, and hides the slots outside the window by the mask; transformers keeps only the last
  `sliding_window` for those (the same numbers, less memory at long lengths);
- `embedding_table` is the table as `embed` sees it, times sqrt(H) (see its docstring);

Dropout: Gemma 3 has only `attention_dropout`, on the attention probabilities after the softmax, as
transformers' eager attention applies it in train mode; each row draws its masks from its own key
(block i: fold(key, i + 1), as GPT-2 numbers them). `activations` and `target_hidden` take it.

Prefix tuning (METHOD 'prefix:P', `models/prefix.py`): PEFT's layout for grouped-query models, a table
[L, 2, P, K, D] whose heads are the K key/value heads; block i reads row i. Its keys and values go
into attention as they are (no norm, no RoPE, as PEFT fills transformers' cache), at positions
0..P-1, so the inputs' positions continue after P and a sliding window hides the prefix from queries
`sliding_window` or more positions after it, as in transformers' cache.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning_jax.models import base, causal_lm, common, lm_head, rope
from prompt_tuning_jax.models.llama import Linear  # the same projection: PyTorch layout, LoRA and IA3 hooks

logger = logging.getLogger(__name__)

LAYER_TYPES = ("sliding_attention", "full_attention")


# Where a checkpoint keeps the text model: the prefix of the decoder's tensors -> the name of an untied LM head.
LAYOUTS = {
    "model.": "lm_head.weight",  # Gemma3ForCausalLM (gemma3_text)
    # Gemma3ForConditionalGeneration (gemma3): the hub's files, and what transformers' save_pretrained writes
    "language_model.model.": "language_model.lm_head.weight",
    "model.language_model.": "lm_head.weight",  # ... its module names (save_pretrained(save_original_format=False))
}
MULTIMODAL_PREFIXES = ("language_model.model.", "model.language_model.")


def _rope_items(theta: float, **scaling) -> tuple:
    """RoPE parameters as a hashable tuple of sorted (name, value) pairs (a config is static under jit)."""
    return tuple(sorted({"rope_type": "default", "rope_theta": float(theta), **scaling}.items()))


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    """The fields of a Hugging Face `Gemma3TextConfig` that change the computation; the defaults are its own.

    `layer_types`: one per layer; None fills them as transformers does from `sliding_window_pattern`
    (every 6th layer full, the others sliding). `rope_global` / `rope_local`: the RoPE parameters of the
    'full_attention' / 'sliding_attention' layers (transformers 5's `rope_parameters`), as sorted pairs.
    """

    vocab_size: int = 262_208
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072  # read by 'dynamic' RoPE only: positions are not limited
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    tie_word_embeddings: bool = True
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    # Only fills `layer_types` when they are not given (older configs): the layer types are what count, so it is
    # neither written to config.json nor part of equality.
    sliding_window_pattern: int = dataclasses.field(default=6, compare=False)
    layer_types: tuple[str, ...] | None = None
    rope_global: tuple = _rope_items(1_000_000.0)
    rope_local: tuple = _rope_items(10_000.0)
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None  # not applied, as transformers' Gemma 3 (module docstring)
    # Used only when a training step passes a dropout_rng.
    attention_dropout: float = 0.0
    # How attention runs ('auto' | 'einsum' | 'xla' | 'cudnn', see `common.pick_attention`); a runtime
    # choice, not part of config.json.
    attention: str = "auto"
    # Where the checkpoint this config was read from keeps the text model's tensors (a key of LAYOUTS; see the
    # module docstring): read by loading only (`Gemma3.load_key`), so not part of config.json nor of equality.
    checkpoint_prefix: str = dataclasses.field(default="model.", compare=False)

    model_type = "gemma3_text"

    def __post_init__(self):
        common.check_attention(self.attention)
        common.activation(self.hidden_activation)  # fail early on an unknown activation
        if self.layer_types is None:
            pattern = self.sliding_window_pattern
            types = tuple(LAYER_TYPES[(i + 1) % pattern == 0] for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", types)
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown or len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types must name one of {LAYER_TYPES} for each of the {self.num_hidden_layers} "
                             f"layers; got {len(self.layer_types)} entries{f', unknown {unknown}' if unknown else ''}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}: each key/value head serves a group")
        if "sliding_attention" in self.layer_types and not (self.sliding_window or 0) >= 1:
            raise ValueError(f"sliding_window is {self.sliding_window!r} but layer_types has sliding layers: give "
                             "the window (Gemma 3: 512 for 1B, 1024 for 4B and up), or make every layer full_attention")
        for params in (self.rope_global, self.rope_local):
            rope.parameters({"rope_parameters": dict(params)})  # an unknown rope_type fails here
        if self.checkpoint_prefix not in LAYOUTS:
            raise ValueError(f"checkpoint_prefix must be one of {list(LAYOUTS)}, got {self.checkpoint_prefix!r}")

    @property
    def prompt_blocks(self) -> int:
        """The blocks a prompt at the input passes through (METHOD 'per_layer' gives each one)."""
        return self.num_hidden_layers

    @property
    def has_dropout(self) -> bool:
        return self.attention_dropout > 0

    def with_dropout(self, rate: float) -> "Gemma3Config":
        """`attention_dropout` replaced by `rate` (T5X's DROPOUT_RATE); Gemma 3 has no other dropout."""
        return dataclasses.replace(self, attention_dropout=rate)

    def rope(self, layer_type: str) -> dict[str, Any]:
        """The RoPE parameters of one layer type (`models/rope.py`'s dict)."""
        items = self.rope_local if layer_type == "sliding_attention" else self.rope_global
        return rope.parameters({"rope_parameters": dict(items)})

    @classmethod
    def from_hf(cls, config: dict[str, Any], tensor_names=None) -> "Gemma3Config":
        """From a `gemma3_text` config.json: transformers 5's (`rope_parameters` per layer type, `layer_types`) or
        the hub's older one (`rope_theta`, `rope_local_base_freq`, `rope_scaling` for the global layers and
        `sliding_window_pattern`), read as transformers reads them. A list of EOS ids keeps the first.

        A multimodal `gemma3` config.json gives its language model's (`multimodal_text_config`); `tensor_names`,
        the checkpoint's, then tell where its tensors are (`checkpoint_prefix`) and whether it has its own head."""
        prefix = "model."
        if config.get("model_type") == "gemma3":
            config, prefix = multimodal_text_config(config, tensor_names)
        if config.get("use_bidirectional_attention"):
            raise ValueError("use_bidirectional_attention is set (an embedding model such as EmbeddingGemma): only "
                             "causal Gemma 3 language models are supported")
        if config.get("attention_bias"):
            raise ValueError("attention_bias is true, but Gemma 3 projections have no biases here: use a checkpoint "
                             "with attention_bias false (every released Gemma 3 is)")
        if config.get("attn_logit_softcapping") is not None:
            logger.warning("attn_logit_softcapping %s is not applied: transformers' Gemma 3 ignores it too",
                           config["attn_logit_softcapping"])
        names = {f.name for f in dataclasses.fields(cls)} - {"attention", "rope_global", "rope_local", "layer_types",
                                                              "eos_token_id", "sliding_window_pattern",
                                                              "checkpoint_prefix"}
        kwargs = {k: v for k, v in config.items() if k in names}
        eos = config.get("eos_token_id", 1)
        kwargs["eos_token_id"] = eos[0] if isinstance(eos, (list, tuple)) else eos
        kwargs["sliding_window_pattern"] = config.get("sliding_window_pattern",
                                                      config.get("_sliding_window_pattern", 6))
        if config.get("layer_types") is not None:
            kwargs["layer_types"] = tuple(config["layer_types"])
        found = config.get("rope_parameters")
        if isinstance(found, dict) and all(t in found for t in LAYER_TYPES):  # transformers 5
            full, local = (rope.parameters(config, t) for t in ("full_attention", "sliding_attention"))
        else:  # the hub's config.json: the global RoPE (scaled), and the local base for sliding layers
            full = rope.parameters({"rope_theta": config.get("rope_theta", 1_000_000.0),
                                    "rope_scaling": config.get("rope_scaling")})
            local = rope.parameters({"rope_theta": config.get("rope_local_base_freq", 10_000.0)})
        return cls(**kwargs, rope_global=tuple(sorted(full.items())), rope_local=tuple(sorted(local.items())),
                   checkpoint_prefix=prefix)

    def describe(self) -> str:
        sliding = self.layer_types.count("sliding_attention")
        kinds = f"{sliding} sliding window {self.sliding_window}, " if sliding else ""
        return (f"gemma3_text: {self.num_hidden_layers} layers ({kinds}{self.num_hidden_layers - sliding} global), "
                f"hidden {self.hidden_size}, {self.num_attention_heads} "
                f"heads x {self.head_dim} ({self.num_key_value_heads} key/value), intermediate "
                f"{self.intermediate_size}, vocab {self.vocab_size}")

    def to_hf(self) -> dict[str, Any]:
        skip = {"attention", "rope_global", "rope_local", "sliding_window_pattern", "checkpoint_prefix"}
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        fields["layer_types"] = list(self.layer_types)
        fields["rope_parameters"] = {"full_attention": dict(self.rope_global),
                                     "sliding_attention": dict(self.rope_local)}
        return {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], **fields}


def multimodal_text_config(config: dict[str, Any], tensor_names=None) -> tuple[dict[str, Any], str]:
    """A multimodal `gemma3` config.json (Gemma3ForConditionalGeneration) -> (the `gemma3_text` config of its
    language model, the prefix of that model's tensors: a key of LAYOUTS).

    As transformers 5 builds the language model: from `text_config` alone (Gemma3TextConfig(**text_config): a field
    it omits takes the default, which our Gemma3Config shares; no top-level field is copied into it), with
    - the LM head untied exactly when the checkpoint holds one (`tensor_names`; without them, as the top-level
      `tie_word_embeddings` says, default true: what Gemma3ForConditionalGeneration ties by);
    - no final_logit_softcapping: Gemma3ForConditionalGeneration's logits are its lm_head's, never capped (only
      Gemma3ForCausalLM caps them), so a value set in `text_config` is dropped, with a warning.
    tensor_names: the checkpoint's, whose language model sits under one of MULTIMODAL_PREFIXES; None (the config
    alone, e.g. to plan a run) assumes the hub's layout, `language_model.model.`.
    """
    text = dict(config.get("text_config") or {})
    prefix = MULTIMODAL_PREFIXES[0]
    if tensor_names is None:
        text["tie_word_embeddings"] = config.get("tie_word_embeddings", True)
    else:
        found = [p for p in MULTIMODAL_PREFIXES if any(name.startswith(p) for name in tensor_names)]
        if not found:
            raise ValueError("model_type is 'gemma3' (Gemma3ForConditionalGeneration), but the checkpoint holds no "
                             "language model tensors: none is named 'language_model.model.*' (the hub's files, "
                             "transformers' save_pretrained) or 'model.language_model.*' (transformers 5's module "
                             f"names); it has e.g. {sorted(tensor_names)[:3]}. Is config.json from the same model as "
                             "the weights?")
        prefix = found[0]
        text["tie_word_embeddings"] = LAYOUTS[prefix] not in tensor_names
    if text.get("final_logit_softcapping") is not None:
        logger.warning("final_logit_softcapping %s in text_config is not applied: transformers' "
                       "Gemma3ForConditionalGeneration never applies it", text["final_logit_softcapping"])
        text["final_logit_softcapping"] = None
    return text, prefix


# The released sizes' text configs (https://huggingface.co/google/gemma-3-1b-pt and siblings; the 4B and up are
# multimodal checkpoints, model_type 'gemma3', whose `text_config` this is).
_1B = Gemma3Config(vocab_size=262_144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, max_position_embeddings=32_768,
                   query_pre_attn_scalar=256, sliding_window=512)
_12B = Gemma3Config(vocab_size=262_208, hidden_size=3840, intermediate_size=15_360, num_hidden_layers=48,
                    num_attention_heads=16, num_key_value_heads=8, head_dim=256, max_position_embeddings=131_072,
                    query_pre_attn_scalar=256, sliding_window=1024,
                    rope_global=_rope_items(1_000_000.0, rope_type="linear", factor=8.0))
PRESETS = {"gemma-3-1b-pt": _1B, "gemma-3-1b-it": _1B, "gemma-3-12b-pt": _12B, "gemma-3-12b-it": _12B}


class Embedding(nnx.Module):
    """`weight` [V, H]; rows come out times sqrt(H), in the compute dtype (`Gemma3TextScaledWordEmbedding`)."""

    def __init__(self, num, features, *, dtype, param_dtype, stddev, rngs):
        self.weight = common.param(rngs, (num, features), ("vocab", "embed"), param_dtype, stddev)
        self.scale = features**0.5
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        rows = jnp.take(self.weight[...], ids, axis=0).astype(self.dtype)
        return rows * jnp.asarray(self.scale, self.dtype)  # sqrt(H) rounded to the dtype, as transformers does


class RMSNorm(nnx.Module):
    """Gemma's RMS norm: float32 inside, times (1 + `weight`), `weight` [features] starting at zero."""

    def __init__(self, features, eps, axes=("embed",), *, param_dtype):
        self.weight = common.zeros_param((features,), axes, param_dtype)
        self.eps = eps

    def __call__(self, x):
        return common.rms_norm(x, 1.0 + self.weight[...].astype(jnp.float32), self.eps)


def window_bias(q_positions: jax.Array, k_positions: jax.Array, window: int) -> jax.Array:
    """Additive bias [B|1, 1, Tq, Tk] (float32) hiding keys `window` or more positions before their query
    (transformers' sliding_window_overlay: key > query - window); positions [B|1, Tq] and [B|1, Tk]."""
    far = q_positions[:, :, None] - k_positions[:, None, :] >= window
    return jnp.where(far, common.MASK_VALUE, 0.0).astype(jnp.float32)[:, None]


class Attention(nnx.Module):
    def __init__(self, config: Gemma3Config, *, dtype, param_dtype, rngs):
        h, n, k, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, stddev=config.initializer_range, rngs=rngs)
        self.q_proj = Linear(h, n * d, ("heads", "embed"), bias=False, **kw)
        self.k_proj = Linear(h, k * d, ("heads", "embed"), bias=False, **kw)
        self.v_proj = Linear(h, k * d, ("heads", "embed"), bias=False, **kw)
        self.o_proj = Linear(n * d, h, ("embed", "heads"), bias=False, **kw)
        self.q_norm = RMSNorm(d, config.rms_norm_eps, ("head_dim",), param_dtype=param_dtype)
        self.k_norm = RMSNorm(d, config.rms_norm_eps, ("head_dim",), param_dtype=param_dtype)
        self.heads, self.kv_heads, self.head_dim = n, k, d
        self.scale = config.query_pre_attn_scalar**-0.5
        self.dropout_rate = config.attention_dropout
        self.attention = config.attention

    def _qkv(self, x: jax.Array, positions: jax.Array, inv_freq: jax.Array):
        """x [B, T, H] -> q [B, T, N, D], k and v [B, T, K, D]; q and k normed per head, then rotated."""
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, t, self.heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).reshape(b, t, self.kv_heads, self.head_dim))
        v = self.v_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        return rope.apply(q, positions, inv_freq), rope.apply(k, positions, inv_freq), v

    def _attend(self, q, k, v, bias, keys=None) -> jax.Array:
        """q [B, Tq, N, D] over k, v [B, Tk, K, D] -> [B, Tq, H] after o_proj."""
        b, t = q.shape[:2]
        groups = self.heads // self.kv_heads  # query head n reads key/value head n // groups (repeat_kv)
        k, v = (jnp.repeat(y, groups, axis=2) for y in (k, v))
        out = common.attend(q, k, v, bias, self.scale, self.dropout_rate, keys, self.attention)
        return self.o_proj(out.reshape(b, t, self.heads * self.head_dim))

    def __call__(self, x, positions, inv_freq, bias, keys=None, prefix=None) -> jax.Array:
        """x [B, T, H] at positions [B|1, T], bias [B|1, 1, T, P+T] -> [B, T, H]; per-row dropout `keys` [B] or None.

        prefix: None, or the (k, v) [1, P, K, D] of P positions before x that every row attends to (prefix
        tuning). Dropout: attention_dropout on the attention probabilities.
        """
        q, k, v = self._qkv(x, positions, inv_freq)
        k, v = common.with_prefix(prefix, k, v)
        return self._attend(q, k, v, bias, common.fold(keys, 0))

    def cached(self, x, positions, inv_freq, bias, cache, index, prefix=None):
        """x [B, T, H], bias [B|1, 1, T, P+M], cache (k, v) [B, M, K, D] -> ([B, T, H], updated cache).

        The new (rotated) keys and values go to slots index..index+T-1; queries attend over all M slots, after
        the P positions of `prefix` ((k, v) [1, P, K, D], held once for the batch, never written to the cache).
        """
        q, k, v = self._qkv(x, positions, inv_freq)
        k_all, v_all = (jax.lax.dynamic_update_slice(c, y.astype(c.dtype), (0, index, 0, 0))
                        for c, y in zip(cache, (k, v)))
        return self._attend(q, *common.with_prefix(prefix, k_all, v_all), bias), (k_all, v_all)


class MLP(nnx.Module):
    """GeGLU: down_proj(act(gate_proj(x)) * up_proj(x))."""

    def __init__(self, config: Gemma3Config, *, dtype, param_dtype, rngs):
        h, i = config.hidden_size, config.intermediate_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, stddev=config.initializer_range, rngs=rngs)
        self.gate_proj = Linear(h, i, ("mlp", "embed"), bias=False, **kw)
        self.up_proj = Linear(h, i, ("mlp", "embed"), bias=False, **kw)
        self.down_proj = Linear(i, h, ("embed", "mlp"), bias=False, **kw)
        self.act = common.activation(config.hidden_activation)

    def __call__(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: Gemma3Config, *, dtype, param_dtype, rngs):
        h, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Attention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp = MLP(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(h, eps, param_dtype=param_dtype)
        self.post_attention_layernorm = RMSNorm(h, eps, param_dtype=param_dtype)
        self.pre_feedforward_layernorm = RMSNorm(h, eps, param_dtype=param_dtype)
        self.post_feedforward_layernorm = RMSNorm(h, eps, param_dtype=param_dtype)

    def _mlp(self, x):
        with jax.named_scope("mlp"):
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))

    def __call__(self, x, positions, inv_freq, bias, keys=None, prefix=None):
        with jax.named_scope("attention"):  # scopes name the HLO ops for profiles (benchmarks/profile_step.py)
            a = self.self_attn(self.input_layernorm(x), positions, inv_freq, bias, common.fold(keys, 0), prefix)
            x = x + self.post_attention_layernorm(a)
        return self._mlp(x)

    def cached(self, x, positions, inv_freq, bias, cache, index, prefix=None):
        with jax.named_scope("attention"):
            a, cache = self.self_attn.cached(self.input_layernorm(x), positions, inv_freq, bias, cache, index, prefix)
            x = x + self.post_attention_layernorm(a)
        return self._mlp(x), cache


class Gemma3(causal_lm.CausalLM, nnx.Module):
    """Gemma 3's text model with its LM head (Hugging Face `Gemma3ForCausalLM`).

    `dtype` is the compute dtype (float32 or bfloat16); `param_dtype` the storage dtype of the
    weights. Norms, RoPE and the attention softmax run in float32.
    """

    BLOCK_COLLECTION = "layers"  # `layers.<i>`: the decoder layers (for METHOD first/last/middle:K)

    def __init__(self, config: Gemma3Config, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.remat = remat
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, stddev=config.initializer_range, **kw)
        self.layers = nnx.List([DecoderLayer(config, **kw) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.lm_head = None if config.tie_word_embeddings else nnx.Dict(weight=common.param(
            rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), param_dtype, config.initializer_range))
        self.prefix = None  # trained keys and values before every layer's own (METHOD 'prefix:P', models/prefix.py)

    # --- the seam (models/base.py) ---------------------------------------------
    target_prefix = " "  # targets continue the input text
    peft_task_type = "CAUSAL_LM"  # PEFT's task_type for adapters of this family (models/lora.py)
    # PEFT's IA3 defaults for gemma3_text: q_proj and v_proj outputs, down_proj's input (feed-forward).
    ia3_targets = {"q_proj": False, "v_proj": False, "down_proj": True}

    def prefix_dims(self) -> tuple[int, int, int]:
        """(rows L, heads, head size D) of a prefix table (models/prefix.py): as PEFT sizes it for grouped-query
        attention, the heads are the K key/value heads and D is head_dim."""
        return self.config.num_hidden_layers, self.config.num_key_value_heads, self.config.head_dim

    def prefix_rows(self) -> list[int]:
        """The prefix table's row each layer's attention reads: layer i, row i."""
        return list(range(self.config.num_hidden_layers))

    @property
    def embedding_table(self) -> jax.Array:
        """The token embeddings [V, H] as `embed` gives them: `embed_tokens.weight` times sqrt(H), in its dtype.

        Prompt initializers sample and look up rows of this table, so a prompt drawn from the vocabulary
        (or a class label's tokens) starts at the scale of the token embeddings beside it, as PEFT's
        initializers (which call the scaled `embed_tokens`) give it; the raw rows would be sqrt(H) times
        smaller (34x for the 1B). Nearest-token reading is cosine, so the scale does not change it.
        """
        w = self.embed_tokens.weight[...]
        return w * jnp.asarray(self.embed_tokens.scale, w.dtype)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings times sqrt(H), as the checkpoint's `embed_tokens` returns them: [B, T] -> [B, T, H]."""
        return self.embed_tokens(input_ids)

    def _layer_inputs(self, q_positions, k_positions, bias) -> dict:
        """{layer type: (RoPE inverse frequencies [D/2], attention bias)}: the sliding layers' bias adds the window.

        q_positions [B|1, T] of the queries, k_positions [B|1, K] of the keys (a prefix's included), bias
        [B|1, 1, T, K] the causal, padding and visibility bias the two types share.
        """
        c = self.config
        out = {}
        for kind in sorted(set(c.layer_types)):
            inv_freq = rope.inverse_frequencies(c.rope(kind), c.head_dim, q_positions, c.max_position_embeddings)
            extra = window_bias(q_positions, k_positions, c.sliding_window) if kind == "sliding_attention" else 0.0
            out[kind] = (inv_freq, bias + extra)
        return out

    def forward_embeddings(self, inputs_embeds: jax.Array, attention_mask: jax.Array | None = None,
                           position_ids: jax.Array | None = None, dropout_rng: jax.Array | None = None,
                           prompt_site: common.PromptSite | None = None) -> jax.Array:
        """Runs the decoder layers and final norm on embeddings: [B, T, H] -> hidden [B, T, H].

        `position_ids` [B|1, T] default to cumsum(attention_mask) - 1, clipped at 0 (0..T-1 without a mask):
        pads are not counted, so left and right padding give the same numbers at real tokens. They rotate
        q and k and measure the sliding window. dropout_rng: None (no dropout), a key, or one key per row
        [B] (see `common.row_keys`); draws nothing when attention_dropout is 0. prompt_site: where the
        prompt sits (`common.PromptSite`: a prompt for every block, its visibility), or None.
        """
        b, t = inputs_embeds.shape[:2]
        p = self.prefix_length
        if position_ids is None:
            position_ids = (jnp.arange(t)[None] if attention_mask is None
                            else common.positions_from_mask(attention_mask))
        keys = common.row_keys(dropout_rng, b) if self.config.has_dropout else None
        x = inputs_embeds.astype(self.dtype)
        positions = p + position_ids  # after a prefix's P positions
        k_positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (positions.shape[0], p)), positions], 1)
        slots = None if prompt_site is None else prompt_site.slots(attention_mask)
        bias = (common.causal_bias(t, p + t, offset=p)
                + common.padding_bias(common.prefix_mask(attention_mask, p), p + t)
                + common.visibility_bias(prompt_site, attention_mask, slots, causal=True))
        inputs = self._layer_inputs(positions, k_positions, bias)
        for i, (layer, kind, kv) in enumerate(zip(self.layers, self.config.layer_types, self._prefix_kv())):
            x = common.block_input(prompt_site, i, x, slots)
            x = common.run_block(layer, self.remat, x, positions, *inputs[kind], common.fold(keys, i + 1), kv)
        return self.norm(x)

    def output_head(self) -> lm_head.LMHead:
        """The LM head (tied to `embed_tokens` unless the config unties it) [V, H], in the compute dtype,
        tanh soft-capped when final_logit_softcapping is set."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head["weight"]
        return lm_head.LMHead(weight[...], self.dtype, softcap=self.config.final_logit_softcapping)

    # --- incremental decoding with a KV cache ------------------------------------
    def init_cache(self, batch: int, max_length: int):
        """An empty cache: per layer a (k, v) pair of zeros [B, M, K, D] (K key/value heads) in the compute dtype."""
        shape = (batch, max_length, self.config.num_key_value_heads, self.config.head_dim)
        return tuple((jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)) for _ in self.layers)

    def forward_cached(self, inputs_embeds: jax.Array, cache_mask: jax.Array, position_ids: jax.Array, cache,
                       index: int | jax.Array, prompt_site: common.PromptSite | None = None, prefix_kv=None):
        """Runs T new positions against the cache: -> (hidden [B, T, H], updated cache).

        inputs_embeds [B, T, H] sit in cache slots index..index+T-1 (`index` may be traced); cache_mask [B, M]
        marks the slots holding real tokens (slots after the current position are hidden by the causal mask,
        whatever their mask); position_ids [B, T] are the new positions, which must count the mask's real
        slots as `common.positions_from_mask(cache_mask)` does: the sliding window reads the cached keys'
        positions from it. With M = T, index 0 and the same positions this equals `forward_embeddings`.
        Never drops out. prompt_site (a prefill only, index 0): the prompt at every block's input and its
        visibility. A prefix (METHOD 'prefix:P') is attended to before the cache's slots and never stored in it;
        positions continue after its P. prefix_kv: its per-layer (k, v) (`_prefix_kv()`), else computed here.
        """
        t, m, p = inputs_embeds.shape[1], cache_mask.shape[1], self.prefix_length
        prefix_kv = self._prefix_kv() if prefix_kv is None else prefix_kv
        x = inputs_embeds.astype(self.dtype)
        positions = p + position_ids
        k_positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (cache_mask.shape[0], p)),
                                       p + common.positions_from_mask(cache_mask)], axis=1)  # [B, P + M]
        slots = None if prompt_site is None else prompt_site.slots(cache_mask[:, :t])
        bias = (common.causal_bias(t, p + m, offset=p + index)
                + common.padding_bias(common.prefix_mask(cache_mask, p), p + m)
                + common.visibility_bias(prompt_site, cache_mask[:, :t], slots, causal=True, keys=m))
        inputs = self._layer_inputs(positions, k_positions, bias)
        new_cache = []
        for i, (layer, kind, layer_cache, kv) in enumerate(zip(self.layers, self.config.layer_types, cache, prefix_kv)):
            x = common.block_input(prompt_site, i, x, slots)
            x, layer_cache = layer.cached(x, positions, *inputs[kind], layer_cache, index, kv)
            new_cache.append(layer_cache)
        return self.norm(x), tuple(new_cache)

    # --- checkpoint names ----------------------------------------------------
    CHECKPOINT_PREFIX = "model."

    def checkpoint_key(self, path: tuple) -> str:
        """Our state path ('layers', 0, 'self_attn', 'q_proj', 'weight') -> the HF tensor name
        ('model.layers.0.self_attn.q_proj.weight'); an untied head is 'lm_head.weight'. The names of a
        `gemma3_text` checkpoint, whatever the model was loaded from: `save_pretrained` writes them."""
        name = ".".join(str(p) for p in path)
        return name if path[0] == "lm_head" else self.CHECKPOINT_PREFIX + name

    def load_key(self, path: tuple) -> str:
        """The tensor `from_pretrained` reads our state path from, in the layout of the checkpoint the config was
        read from (`config.checkpoint_prefix`): 'model.layers.0.self_attn.q_proj.weight' in a gemma3_text one,
        'language_model.model.layers.0.self_attn.q_proj.weight' in a multimodal one as the hub holds it."""
        if path[0] == "lm_head":
            return LAYOUTS[self.config.checkpoint_prefix]
        return self.config.checkpoint_prefix + ".".join(str(p) for p in path)


base.register_family("gemma3_text", Gemma3Config, Gemma3, PRESETS)
base.register_family("gemma3", Gemma3Config, Gemma3)  # multimodal checkpoints: their language model (module docstring)
