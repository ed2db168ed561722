"""GPT-2 in Flax NNX, read top to bottom.

Module and parameter names mirror the Hugging Face checkpoint
(`transformer.h.0.attn.c_attn.weight`, ...), and weights keep the checkpoint's
layout (`Conv1D` weights are [in, out]), so loading is a name join, not a table.

`GPT2` implements the library's seam (`models/base.py`): `embed` (token
embeddings, no positions), `forward_embeddings` (positions + blocks + final
norm on [B, T, H] embeddings), `output_head` (the tied LM head), the KV cache
and `embedding_table`; `models/causal_lm.py` builds the rest of the seam
(targets placed right after each row's last real position, decoding) on them.

Positions come from the attention mask (cumsum(mask) - 1, clipped at 0) in
every path: the forward, the prompted model, target scoring and decoding. A
row's prediction therefore never depends on the side or amount of its padding
(Hugging Face's forward numbers positions 0..T-1, counting left pads; its
`generate` numbers them from the mask as we do). Right-padded rows get the same
positions as 0..T-1 at every real token.

Dropout (training only: a `dropout_rng`) sits exactly where transformers'
PyTorch `GPT2LMHeadModel` applies it in train mode (modeling_gpt2.py):
- `embd_pdrop` on wte + wpe (`GPT2Model.drop`), so on soft prompt embeddings too,
  as PEFT feeds them through `inputs_embeds`;
- `attn_pdrop` on the attention probabilities, after the softmax
  (`GPT2Attention.attn_dropout` / eager_attention_forward);
- `resid_pdrop` after the attention output projection (`GPT2Attention.resid_dropout`)
  and after the MLP output projection (`GPT2MLP.dropout`), before each residual add.
No dropout after `ln_f` or in the LM head, as in transformers.

Decoding uses a fixed-size KV cache: `init_cache(B, M)` and `forward_cached`,
which writes the keys and values of T new positions at slot `index` and attends
over all M slots; shapes never change, so a generation loop runs inside one
`lax.while_loop`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning_jax.models import base, causal_lm, common, lm_head


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """The fields of a Hugging Face GPT-2 `config.json` that change the computation."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    # Dropout rates (transformers' defaults); used only when a training step passes a dropout_rng.
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    # How attention runs ('auto' | 'einsum' | 'xla' | 'cudnn', see `common.pick_attention`);
    # a runtime choice, not part of config.json.
    attention: str = "auto"

    model_type = "gpt2"

    def __post_init__(self):
        common.check_attention(self.attention)

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def prompt_blocks(self) -> int:
        """The blocks a prompt at the input passes through (METHOD 'per_layer' gives each one)."""
        return self.n_layer

    @property
    def inner_size(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def has_dropout(self) -> bool:
        return max(self.resid_pdrop, self.embd_pdrop, self.attn_pdrop) > 0

    def with_dropout(self, rate: float) -> "GPT2Config":
        """Every dropout rate (resid, embd, attn) replaced by `rate` (T5X's DROPOUT_RATE)."""
        return dataclasses.replace(self, resid_pdrop=rate, embd_pdrop=rate, attn_pdrop=rate)

    @classmethod
    def from_hf(cls, config: dict[str, Any], tensor_names=None) -> "GPT2Config":
        names = {f.name for f in dataclasses.fields(cls)} - {"attention"}
        return cls(**{k: v for k, v in config.items() if k in names})

    def describe(self) -> str:
        return f"gpt2: {self.n_layer} layers, hidden {self.n_embd}, {self.n_head} heads, vocab {self.vocab_size}"

    def to_hf(self) -> dict[str, Any]:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "attention"}
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], **fields, "tie_word_embeddings": True}


# The released sizes (https://huggingface.co/gpt2 and siblings).
PRESETS = {
    "gpt2": GPT2Config(),
    "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPT2Config(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPT2Config(n_embd=1600, n_layer=48, n_head=25),
}


class Embedding(nnx.Module):
    """`weight` [V, H]."""

    def __init__(self, num, features, axes, *, dtype, param_dtype, stddev, rngs):
        self.weight = common.param(rngs, (num, features), axes, param_dtype, stddev)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0).astype(self.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, features, eps, *, param_dtype):
        self.weight = nnx.Param(jnp.ones((features,), param_dtype), axes=("embed",))
        self.bias = common.zeros_param((features,), ("embed",), param_dtype)
        self.eps = eps

    def __call__(self, x):
        return common.layer_norm(x, self.weight[...], self.bias[...], self.eps)


class Conv1D(nnx.Module):
    """GPT-2's linear layer: `weight` [in, out], `bias` [out]; plus a LoRA update once `models.lora` adds one,
    or an IA3 rescaling once `models.ia3` adds one."""

    FAN_IN_FAN_OUT = True  # weight is [in, out] (PEFT's fan_in_fan_out, for a LoRA adapter's config)

    def __init__(self, n_in, n_out, axes, *, dtype, param_dtype, stddev, rngs):
        self.weight = common.param(rngs, (n_in, n_out), axes, param_dtype, stddev)
        self.bias = common.zeros_param((n_out,), axes[1:], param_dtype)
        self.dtype = dtype
        self.in_out, self.lora, self.ia3 = (n_in, n_out), None, None

    def __call__(self, x):
        x = x.astype(self.dtype)
        if self.ia3 is not None and self.ia3.feedforward:
            x = self.ia3(x)
        y = common.dense(x, self.weight[...]) + self.bias[...].astype(self.dtype)
        y = y if self.lora is None else y + self.lora(x)
        return y if self.ia3 is None or self.ia3.feedforward else self.ia3(y)

    def merge_scale(self, scale, input_side: bool) -> None:
        """Folds a rescaling into the weights: of the input [in] (`input_side`), else of the output [out]."""
        w = self.weight[...]
        if input_side:
            self.weight[...] = (w.astype(jnp.float32) * scale[:, None]).astype(w.dtype)
        else:
            self.weight[...] = (w.astype(jnp.float32) * scale[None, :]).astype(w.dtype)
            self.bias[...] = (self.bias[...].astype(jnp.float32) * scale).astype(self.bias.dtype)


class Attention(nnx.Module):
    def __init__(self, config: GPT2Config, layer_idx: int, *, dtype, param_dtype, rngs):
        h, std = config.n_embd, config.initializer_range
        if h % config.n_head:
            raise ValueError(f"n_embd {h} is not divisible by n_head {config.n_head}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.c_attn = Conv1D(h, 3 * h, ("embed", "qkv"), stddev=std, **kw)
        self.c_proj = Conv1D(h, h, ("heads", "embed"), stddev=std / (2 * config.n_layer) ** 0.5, **kw)
        self.n_head = config.n_head
        head_dim = h // config.n_head
        scale = head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale
        self.attn_pdrop, self.resid_pdrop = config.attn_pdrop, config.resid_pdrop
        self.attention = config.attention

    def _qkv(self, x: jax.Array):
        """x [B, T, H] -> q, k, v, each [B, T, N, D]."""
        b, t, h = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        return tuple(y.reshape(b, t, self.n_head, h // self.n_head) for y in (q, k, v))

    def __call__(self, x: jax.Array, bias: jax.Array, keys: jax.Array | None = None, prefix=None) -> jax.Array:
        """x [B, T, H], bias [B|1, 1, T, P+T] -> [B, T, H]; per-row dropout `keys` [B] or None.

        prefix: None, or the (k, v) [1, P, N, D] of P positions before x that every row
        attends to (a shared prefix prompt, `GPT2.shared_prefix_target_hidden`; prefix tuning, `models/prefix.py`).
        Dropout: attn_pdrop on the attention probabilities, resid_pdrop after c_proj.
        """
        b, t, h = x.shape
        q, k, v = self._qkv(x)
        k, v = common.with_prefix(prefix, k, v)
        out = common.attend(q, k, v, bias, self.scale, self.attn_pdrop, common.fold(keys, 0), self.attention)
        return common.dropout(self.c_proj(out.reshape(b, t, h)), self.resid_pdrop, common.fold(keys, 1))

    def cached(self, x: jax.Array, bias: jax.Array, cache, index, prefix=None):
        """x [B, T, H], bias [B|1, 1, T, P+M], cache (k, v) [B, M, N, D] -> ([B, T, H], updated cache).

        The new keys and values go to slots index..index+T-1; queries attend over all M slots, after the P
        positions of `prefix` ((k, v) [1, P, N, D], held once for the batch and never written to the cache).
        """
        b, t, h = x.shape
        q, k, v = self._qkv(x)
        k_all, v_all = (jax.lax.dynamic_update_slice(c, y.astype(c.dtype), (0, index, 0, 0))
                        for c, y in zip(cache, (k, v)))
        keys, values = common.with_prefix(prefix, k_all, v_all)
        out = common.attend(q, keys, values, bias, self.scale, implementation=self.attention)
        return self.c_proj(out.reshape(b, t, h)), (k_all, v_all)


class MLP(nnx.Module):
    def __init__(self, config: GPT2Config, *, dtype, param_dtype, rngs):
        h, std = config.n_embd, config.initializer_range
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.c_fc = Conv1D(h, config.inner_size, ("embed", "mlp"), stddev=std, **kw)
        self.c_proj = Conv1D(config.inner_size, h, ("mlp", "embed"), stddev=std / (2 * config.n_layer) ** 0.5, **kw)
        self.act = common.activation(config.activation_function)
        self.resid_pdrop = config.resid_pdrop

    def __call__(self, x, keys=None):
        """Dropout: resid_pdrop after c_proj (`GPT2MLP.dropout`)."""
        return common.dropout(self.c_proj(self.act(self.c_fc(x))), self.resid_pdrop, keys)


class Block(nnx.Module):
    def __init__(self, config: GPT2Config, layer_idx: int, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.n_embd, eps, param_dtype=param_dtype)
        self.attn = Attention(config, layer_idx, **kw)
        self.ln_2 = LayerNorm(config.n_embd, eps, param_dtype=param_dtype)
        self.mlp = MLP(config, **kw)

    def __call__(self, x, bias, keys=None, prefix=None):
        with jax.named_scope("attention"):  # scopes name the HLO ops for profiles (benchmarks/profile_step.py)
            x = x + self.attn(self.ln_1(x), bias, common.fold(keys, 0), prefix)
        with jax.named_scope("mlp"):
            return x + self.mlp(self.ln_2(x), common.fold(keys, 1))

    def cached(self, x, bias, cache, index, prefix=None):
        with jax.named_scope("attention"):
            a, cache = self.attn.cached(self.ln_1(x), bias, cache, index, prefix)
            x = x + a
        with jax.named_scope("mlp"):
            return x + self.mlp(self.ln_2(x)), cache


class GPT2(causal_lm.CausalLM, nnx.Module):
    """GPT-2 with its tied LM head (Hugging Face `GPT2LMHeadModel`).

    `dtype` is the compute dtype (float32 or bfloat16); `param_dtype` the storage
    dtype of the weights. Layer norms and the attention softmax run in float32.
    """

    BLOCK_COLLECTION = "h"  # `h.<i>`: the transformer blocks (for METHOD first/last/middle:K)

    def __init__(self, config: GPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.remat = remat
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        std = config.initializer_range
        self.wte = Embedding(config.vocab_size, config.n_embd, ("vocab", "embed"), stddev=std, **kw)
        self.wpe = Embedding(config.n_positions, config.n_embd, ("positions", "embed"), stddev=std, **kw)
        self.h = nnx.List([Block(config, i, **kw) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon, param_dtype=param_dtype)
        self.prefix = None  # trained keys and values before every block's own (METHOD 'prefix:P', models/prefix.py)

    # --- the seam (models/base.py) ---------------------------------------------
    target_prefix = " "  # targets continue the input text
    peft_task_type = "CAUSAL_LM"  # PEFT's task_type for adapters of this family (models/lora.py)
    ia3_targets = {"c_attn": False, "mlp.c_proj": True}  # PEFT's IA3 targets: name -> feed-forward (models/ia3.py)

    def prefix_dims(self) -> tuple[int, int, int]:
        """(rows L, heads N, head size D) of a prefix table (models/prefix.py): PEFT's num_layers, heads, token_dim / N."""
        return self.config.n_layer, self.config.n_head, self.config.n_embd // self.config.n_head

    def prefix_rows(self) -> list[int]:
        """The prefix table's row each block's attention reads: block i, row i."""
        return list(range(self.config.n_layer))

    @property
    def embedding_table(self) -> jax.Array:
        """The token embedding table [V, H] (also the LM head)."""
        return self.wte.weight[...]

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings, no positions: [B, T] -> [B, T, H]."""
        return self.wte(input_ids)

    def forward_embeddings(self, inputs_embeds: jax.Array, attention_mask: jax.Array | None = None,
                           position_ids: jax.Array | None = None, dropout_rng: jax.Array | None = None,
                           prompt_site: common.PromptSite | None = None) -> jax.Array:
        """Adds positions and runs the blocks and final norm: [B, T, H] -> hidden [B, T, H].

        `position_ids` [B|1, T] default to cumsum(attention_mask) - 1, clipped at 0
        (0..T-1 without a mask): pads are not counted, so left and right padding
        give the same numbers at real tokens. dropout_rng: None (no dropout), a key,
        or one key per row [B] (see `common.row_keys`); draws nothing when every rate is 0.
        prompt_site: where the prompt sits (`common.PromptSite`: a prompt for every block, its visibility), or None.
        """
        b, t = inputs_embeds.shape[:2]
        p = self.prefix_length
        if p + t > self.config.n_positions:
            raise ValueError(f"sequence length {t}{f' after a prefix of {p}' if p else ''} exceeds GPT-2's "
                             f"n_positions {self.config.n_positions}")
        if position_ids is None:
            position_ids = (jnp.arange(t)[None] if attention_mask is None
                            else common.positions_from_mask(attention_mask))
        keys = common.row_keys(dropout_rng, b) if self.config.has_dropout else None
        x = inputs_embeds.astype(self.dtype) + self.wpe(p + position_ids)  # after a prefix's P positions
        x = common.dropout(x, self.config.embd_pdrop, common.fold(keys, 0))
        slots = None if prompt_site is None else prompt_site.slots(attention_mask)
        bias = (common.causal_bias(t, p + t, offset=p) + common.padding_bias(common.prefix_mask(attention_mask, p), p + t)
                + common.visibility_bias(prompt_site, attention_mask, slots, causal=True))
        for i, (block, kv) in enumerate(zip(self.h, self._prefix_kv())):
            block_keys = common.fold(keys, i + 1)
            x = common.block_input(prompt_site, i, x, slots)
            x = common.run_block(block, self.remat, x, bias, block_keys, kv)
        return self.ln_f(x)

    def output_head(self) -> lm_head.LMHead:
        """The tied LM head: the token embeddings [V, H], in the compute dtype."""
        return lm_head.LMHead(self.wte.weight[...], self.dtype)

    def _check_length(self, positions: int, what: str) -> None:
        if positions > self.config.n_positions:
            p = self.prefix_length
            raise ValueError(f"{what}{f' + a prefix of {p}' if p else ''} exceed GPT-2's n_positions "
                             f"{self.config.n_positions}")

    # --- a prefix shared by every row (a prefix prompt), run once per batch ------------------
    def shared_prefix_target_hidden(self, prefix, inputs_embeds, attention_mask, target_ids, target_mask):
        """`target_hidden` of [prefix; input] rows whose [P, H] prefix is the same for all, without dropout.

        In a causal model the prefix sees only itself, and positions come from the mask
        (the prefix holds 0..P-1 in every row), so its keys and values are the same in
        every row: they are computed once ([1, P]) and every row attends to them.
        inputs_embeds [B, T, H] / attention_mask [B, T] exclude the prefix; targets
        [R*B, L] as in `target_hidden`. Same states (and gradients) as inserting the prefix.
        """
        (b, t, _), (rb, length), p = inputs_embeds.shape, target_ids.shape, prefix.shape[0]
        if p + t + length > self.config.n_positions:
            raise ValueError(f"sequence length {p + t + length} exceeds GPT-2's n_positions {self.config.n_positions}")
        prefix_hidden, prefix_kv = self.forward_cached(prefix[None], jnp.ones((1, p), jnp.int32),
                                                       jnp.arange(p)[None], self.init_cache(1, p), 0)
        rep = lambda x: jnp.repeat(x, rb // b, axis=0)  # [B, ...] -> [R*B, ...]
        at = rep(common.last_real(attention_mask) + 1)  # [R*B] where the first target token goes (0: empty input)
        # The last target token predicts nothing, so it is never run.
        x, mask, _ = common.insert(rep(inputs_embeds), rep(attention_mask), self.embed(target_ids[:, :-1]), at)
        s = x.shape[1]  # T + L - 1
        x = x.astype(self.dtype) + self.wpe(p + common.positions_from_mask(mask))
        bias = (common.causal_bias(s, p + s, offset=p)
                + common.padding_bias(jnp.concatenate([jnp.ones((rb, p), mask.dtype), mask], axis=1), p + s))
        for block, kv in zip(self.h, prefix_kv):
            x = common.run_block(block, self.remat, x, bias, None, kv)  # (x, bias, keys, prefix)
        # Target l is predicted from the position before it: the prefix's last one for l = 0 of an empty input.
        hidden = jnp.concatenate([jnp.broadcast_to(prefix_hidden[:, -1:], (rb, 1, x.shape[-1])), self.ln_f(x)], 1)
        pos = at[:, None] + jnp.arange(length)[None, :]  # in `hidden`, shifted by the prefix's row
        return jnp.take_along_axis(hidden, pos[..., None], axis=1)

    # --- incremental decoding with a KV cache ------------------------------------
    def init_cache(self, batch: int, max_length: int):
        """An empty cache: per layer a (k, v) pair of zeros [B, M, N, D] in the compute dtype."""
        n = self.config.n_head
        shape = (batch, max_length, n, self.config.n_embd // n)
        return tuple((jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)) for _ in self.h)

    def forward_cached(self, inputs_embeds: jax.Array, cache_mask: jax.Array, position_ids: jax.Array, cache,
                       index: int | jax.Array, prompt_site: common.PromptSite | None = None, prefix_kv=None):
        """Runs T new positions against the cache: -> (hidden [B, T, H], updated cache).

        inputs_embeds [B, T, H] sit in cache slots index..index+T-1 (`index` may be
        traced); cache_mask [B, M] marks the slots holding real tokens (slots after
        the current position are hidden by the causal mask, whatever their mask);
        position_ids [B, T] are the positions added to the embeddings. With M = T,
        index 0 and the same positions this equals `forward_embeddings`. Never drops out.
        prompt_site (a prefill only, index 0): the prompt at every block's input and its visibility; the
        steps after it run positions that are not the prompt's, so they never take one.
        A prefix (METHOD 'prefix:P') is attended to before the cache's slots and is never stored in it; positions
        continue after its P. prefix_kv: its per-block (k, v) (`_prefix_kv()`, computed once by a caller that
        runs many steps), else computed here.
        """
        t, m, p = inputs_embeds.shape[1], cache_mask.shape[1], self.prefix_length
        prefix_kv = self._prefix_kv() if prefix_kv is None else prefix_kv
        x = inputs_embeds.astype(self.dtype) + self.wpe(p + position_ids)
        slots = None if prompt_site is None else prompt_site.slots(cache_mask[:, :t])
        bias = (common.causal_bias(t, p + m, offset=p + index)
                + common.padding_bias(common.prefix_mask(cache_mask, p), p + m)
                + common.visibility_bias(prompt_site, cache_mask[:, :t], slots, causal=True, keys=m))
        new_cache = []
        for i, (block, layer_cache, kv) in enumerate(zip(self.h, cache, prefix_kv)):
            x = common.block_input(prompt_site, i, x, slots)
            x, layer_cache = block.cached(x, bias, layer_cache, index, kv)
            new_cache.append(layer_cache)
        return self.ln_f(x), tuple(new_cache)

    # --- checkpoint names ----------------------------------------------------
    CHECKPOINT_PREFIX = "transformer."

    def checkpoint_key(self, path: tuple) -> str:
        """Our state path ('h', 0, 'attn', 'c_attn', 'weight') -> the HF tensor name."""
        return self.CHECKPOINT_PREFIX + ".".join(str(p) for p in path)


base.register_family("gpt2", GPT2Config, GPT2, PRESETS)
