"""What every decoder-only family does the same way once it has a forward pass and a KV cache.

`CausalLM` is mixed into GPT-2, Llama (Mistral, Qwen) and Gemma 3. A family gives it
- `embed(ids)`, `output_head()` (an `lm_head.LMHead`);
- `forward_embeddings(embeds, mask, position_ids, dropout_rng, prompt_site)` -> hidden [B, T, H];
- `init_cache(B, M)` and `forward_cached(embeds, cache_mask, position_ids, cache, index, prompt_site, prefix_kv)`;
- `prefix` and `prefix_rows()` (`prefix.PrefixSeam`, which this extends), `dtype` and `config.has_dropout`;
and gets the rest of the seam (`models/base.py`): the LM head's `logits`, `activations`, `target_hidden` /
`target_logits` (targets teacher-forced right after each row's last real position; R targets per input scored
from one run of the input), `start_decode` (a left-aligned prefill, then one cached step per token) and
`__call__`.

Positions come from the attention mask in every path (cumsum(mask) - 1), so targets continue each row's real
tokens and generation continues right after its last real position, whatever the padding side or the
prompt's placement, as transformers' `generate` numbers them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prompt_tuning_jax.models import common
from prompt_tuning_jax.models import prefix as prefix_lib


class CausalLM(prefix_lib.PrefixSeam):
    """The decoder-only half of the seam, on a family's `forward_embeddings` and `forward_cached`."""

    def _check_length(self, positions: int, what: str) -> None:
        """Raises if `positions` (a prefix's included) exceed what the family can number; most cannot run out."""

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The LM head: [..., H] -> [..., V] in float32."""
        return self.output_head().logits(hidden)

    def activations(self, inputs_embeds, attention_mask, *, decoder_input_ids=None, decoder_attention_mask=None,
                    dropout_rng=None, prompt_site=None):
        """[B, S, H] embeddings -> (hidden [B, S, H], mask [B, S]): the prediction follows the last real input."""
        hidden = self.forward_embeddings(inputs_embeds, attention_mask, dropout_rng=dropout_rng,
                                         prompt_site=prompt_site)
        return hidden, attention_mask

    def target_hidden(self, inputs_embeds, attention_mask, target_ids, target_mask, dropout_rng=None,
                      prompt_site=None):
        """Targets [R*B, L] teacher-forced right after each input's last real position -> the hidden states
        that predict them [R*B, L, H] (the LM head's input: `target_logits` applies it).

        The target block counts as real whatever `target_mask` says: padded target positions come after the
        real ones, so no real target attends to them. Positions come from the mask, so the targets continue
        the real tokens' numbering. With R > 1, copy r of row b draws its dropout masks from fold_in(key_b, r).
        With R > 1 and no dropout (rank classification), the input runs once and each target continues it
        from its keys and values (`_cached_target_hidden`).
        """
        b, (rb, length) = inputs_embeds.shape[0], target_ids.shape
        keys = common.repeat_keys(common.row_keys(dropout_rng, b) if self.config.has_dropout else None, rb // b)
        if rb > b and keys is None:
            return self._cached_target_hidden(inputs_embeds, attention_mask, target_ids, prompt_site)
        rep = lambda x: jnp.repeat(x, rb // b, axis=0)  # [B, ...] -> [R*B, ...]
        at = rep(common.last_real(attention_mask) + 1)  # [R*B] where the first target token goes
        # The last target token predicts nothing, so it is never run.
        full, full_mask, _ = common.insert(rep(inputs_embeds), rep(attention_mask), self.embed(target_ids[:, :-1]), at)
        site = None if prompt_site is None else prompt_site.replace(start=rep(prompt_site.start))
        hidden = self.forward_embeddings(full, full_mask, dropout_rng=keys, prompt_site=site)  # [R*B, S+L-1, H]
        # Target token l sits at at+l and is predicted from position at+l-1.
        pos = at[:, None] - 1 + jnp.arange(length)[None, :]
        return jnp.take_along_axis(hidden, pos[..., None], axis=1)

    def target_logits(self, inputs_embeds, attention_mask, target_ids, target_mask, dropout_rng=None,
                      prompt_site=None):
        """`target_hidden` through the LM head -> logits [R*B, L, V] (training scores them with
        `output_head().log_probs`, which never holds these whole)."""
        return self.logits(self.target_hidden(inputs_embeds, attention_mask, target_ids, target_mask, dropout_rng,
                                              prompt_site))

    def start_decode(self, inputs_embeds, attention_mask, max_new_tokens: int, prompt_site=None):
        """Prefill of [B, S, H] embeddings -> (next-token logits [B, V], cache, step).

        The sequence is left-aligned first (pads, then real tokens, one gather) and positions are
        cumsum(mask) - 1, as transformers' `generate` numbers them, so generation continues right after each
        row's last real position whatever the padding side or prompt placement.
        """
        s = inputs_embeds.shape[1]
        self._check_length(self.prefix_length + s + max_new_tokens, f"{s} input positions + max_new_tokens "
                                                                    f"{max_new_tokens}")
        prefix_kv = self._prefix_kv()  # once for the whole decode, shared by every row and step
        hidden, cache, cache_mask, next_position = self._prefill(inputs_embeds, attention_mask, max_new_tokens,
                                                                 prompt_site, prefix_kv)

        def step(cache, tokens, t):
            h, cache = self.forward_cached(self.embed(tokens[:, None]), cache_mask, (next_position + t)[:, None],
                                           cache, s + t, prefix_kv=prefix_kv)
            return self.logits(h[:, 0]), cache

        return self.logits(hidden[:, -1]), cache, step

    def _prefill(self, inputs_embeds, attention_mask, extra: int, prompt_site=None, prefix_kv=None):
        """[B, S, H] embeddings into a cache of S + `extra` slots.

        -> (hidden [B, S, H], cache, cache_mask [B, S + extra], next_position [B]). The sequence is left-aligned
        first (pads, then real tokens, one gather), so the slots' positions are cumsum(cache_mask) - 1 and what
        follows in the `extra` slots continues right after each row's last real position.
        """
        b = inputs_embeds.shape[0]
        order = jnp.argsort(attention_mask > 0, axis=1, stable=True)  # pads first, real tokens in order
        embeds = jnp.take_along_axis(inputs_embeds, order[..., None], axis=1)
        mask = jnp.take_along_axis(attention_mask, order, axis=1)
        positions = common.positions_from_mask(mask)  # as forward_embeddings numbers them
        cache_mask = jnp.concatenate([mask, jnp.ones((b, extra), mask.dtype)], axis=1)  # [B, S + extra]
        cache = self.init_cache(b, mask.shape[1] + extra)
        hidden, cache = self.forward_cached(embeds, cache_mask, positions, cache, 0, prompt_site, prefix_kv)
        return hidden, cache, cache_mask, positions[:, -1] + 1

    def _cached_target_hidden(self, inputs_embeds, attention_mask, target_ids, prompt_site=None):
        """R targets per input [R*B, L] scored from one run of the input -> hidden [R*B, L, H].

        The input's keys and values are computed once and copied R times; each copy then runs only its L target
        tokens. Target l is predicted from the input's last real position (l = 0) or from target l - 1.
        """
        (b, s, _), (rb, length) = inputs_embeds.shape, target_ids.shape
        rep = lambda x: jnp.repeat(x, rb // b, axis=0)  # [B, ...] -> [R*B, ...]
        prefix_kv = self._prefix_kv()
        hidden, cache, cache_mask, next_position = self._prefill(inputs_embeds, attention_mask, length - 1, prompt_site,
                                                                 prefix_kv)
        positions = rep(next_position)[:, None] + jnp.arange(length - 1)[None, :]  # [R*B, L-1]
        # The last target token predicts nothing, so it is never run.
        targets, _ = self.forward_cached(self.embed(target_ids[:, :-1]), rep(cache_mask), positions,
                                         jax.tree.map(rep, cache), s, prefix_kv=prefix_kv)
        return jnp.concatenate([rep(hidden[:, -1:]), targets], axis=1)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None, *, dropout_rng: jax.Array | None = None) -> jax.Array:
        """input_ids [B, T], attention_mask [B, T] (1 = real) -> logits [B, T, V] (float32).

        Positions default to cumsum(attention_mask) - 1 (see `forward_embeddings`); pass `position_ids` to number
        them otherwise. No dropout unless `dropout_rng` is given.
        """
        return self.logits(self.forward_embeddings(self.embed(input_ids), attention_mask, position_ids, dropout_rng))
