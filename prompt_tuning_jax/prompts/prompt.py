"""PromptX: a frozen model (GPT-2, T5, any `models.base.PromptableModel`) with a trainable soft prompt.

    prompted = with_prompt(model, length=20, init=..., placement="suffix", head="linear", num_labels=2)
    out = prompted(input_ids, attention_mask)         # called like the model itself
    out.logits      # LM logits over the prompted sequence ([B, T+P, V]; T5: decoder [B, Td, V])
    out.prediction  # right after the prompt: next-token logits [B, V], or class logits [B, C] with a head

The prompt lives in a `Prompt` variable ([P, H], or [K, P, H] for K task prompts
in multi-task batches), unless a method gives a prompt module (`prompt_module`,
`methods.Method.prompt_module`, e.g. METHOD 'multitask'): that module then makes
each row's prompt [B, P', H] from its task_index, and `soft_prompt` is empty
([0, H], not trained). With `layer_combine` ('replace' or 'add', METHOD 'per_layer') the prompt holds
one [P, H] prompt per block of the model ([L, P, H], L = `config.prompt_blocks`): the first is
inserted as usual, and block i > 0 gets the i-th at the prompt's positions, replacing or added to
its input there (`models.common.PromptSite`). `visibility` (PROMPT_VISIBILITY, the original's extended
masks) says which of prompt->prompt, prompt->prompt;causal and prompt->input attention are allowed, in
T5's encoder and in GPT-2 (`models.visibility`); None keeps each model's own. The model's weights stay `nnx.Param` and are never
differentiated. Under `jax.jit`, outputs you do not use are not computed. The
wrapper uses the model only through its seam (`embed`, `activations`, `logits`,
`embedding_table`): it never asks which family it wraps.

The prompt enters where input embeddings enter (`activations(inputs_embeds)`),
so in training (`dropout_rng`) the model's embedding dropout applies to it, as
PEFT's prompt tuning does through `inputs_embeds`. Without `dropout_rng` (the
default: evaluation, prediction, decoding) nothing is dropped. Padding never
changes a prediction: positions come from the mask (module docs of `models/`).
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from prompt_tuning_jax.heads import ClassificationHead
from prompt_tuning_jax.models import visibility as visibility_rules
from prompt_tuning_jax.models.common import PromptSite
from prompt_tuning_jax.prompts import combine
from prompt_tuning_jax.variables import Trainable


class Prompt(Trainable):
    """Soft prompt embeddings [P, H] (or [K, P, H]), float32."""


@struct.dataclass
class PromptOutput:
    logits: jax.Array          # GPT-2 [B, T+P, V] over the prompted sequence; T5 decoder [B, Td, V]
    attention_mask: jax.Array  # [B, T+P] the prompted (encoder) input's mask
    token_positions: jax.Array  # [B, T] where each input token sits in the prompted sequence
    hidden: jax.Array          # [B, H] hidden state at the prediction position
    prediction: jax.Array      # [B, V] next-token logits, [B, C] class logits, or [B] regression

    def token_logits(self) -> jax.Array:
        """GPT-2: logits at the input tokens' own positions, [B, T, V] (prefix LM training)."""
        return combine.remove(self.logits, self.token_positions)


def _resolve_init(init, model) -> Callable:
    if callable(init):
        return init
    from prompt_tuning_jax.prompts import initializers

    if init is None:  # the paper's fallback: sampled from the 5,000 most common tokens
        table = model.embedding_table
        return initializers.from_sample_of_embeddings(table, population_size=min(5000, table.shape[0]))
    if isinstance(init, (str, os.PathLike)):
        return initializers.from_npy(init)
    return initializers.from_array(np.asarray(init))


def _layer_values(init_fn, rngs, layers: int, shape) -> jax.Array:
    """[L, P, H] layer prompts: an [L, P, H] array or file as given, else `init_fn` once per layer."""
    given = getattr(init_fn, "array_shape", None)
    if given is not None:  # a file or an array: all layers' prompts
        if len(given) != 3:
            raise ValueError(f"the prompt given has shape {tuple(given)}; layer prompts are one per block, "
                             f"[L, P, H] = {(layers, *shape)}: give an [L, P, H] file (a per-layer run's "
                             "prompt_<step>.npy), or another PROMPT_INIT")
        return jnp.asarray(init_fn(None, (layers, *shape)), jnp.float32)
    return jnp.stack([jnp.asarray(init_fn(rngs.params(), shape), jnp.float32) for _ in range(layers)])


class PromptedModel(nnx.Module):
    def __init__(self, model, length: int, init=None, *, placement: str = "prefix", head=None,
                 num_labels: int | None = None, regression: bool = False, num_tasks: int = 1,
                 before_eos: bool = False, seed: int = 0, prompt_module: nnx.Module | None = None,
                 layer_combine: str | None = None, visibility=None):
        if placement not in combine.PLACEMENTS:
            raise ValueError(f"unknown prompt placement {placement!r}; use one of {combine.PLACEMENTS}")
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"prompt length must be an int >= 0 (0: no prompt, for baselines), got {length!r}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.model = model
        self.placement, self.before_eos, self.num_tasks = placement, before_eos, num_tasks
        self.prompt_module = prompt_module  # task_index [B] -> [B, P', H]; None: the soft prompt below
        self.layer_combine = layer_combine  # None: a prompt at the input only; else one per block
        self.visibility = None if visibility is None else visibility_rules.check(visibility)
        if layer_combine not in (None, "replace", "add"):
            raise ValueError(f"layer_combine must be None, 'replace' or 'add', got {layer_combine!r}")
        if layer_combine is not None and (num_tasks > 1 or prompt_module is not None):
            raise ValueError(f"layer prompts are one prompt per block for one task; this run has {num_tasks} "
                             "tasks: train one task, or use METHOD 'prompt' or 'multitask' for a mixture")
        if prompt_module is not None:
            length, init = 0, None
        hidden = model.config.hidden_size
        rngs = nnx.Rngs(seed)
        shape = (length, hidden)
        if num_tasks > 1 and not callable(init) and init is not None and np.ndim(init) == 3:
            init = np.asarray(init)  # one [P, H] prompt per task, given together
            if init.shape != (num_tasks, *shape):
                raise ValueError(f"task prompts have shape {init.shape}; expected {(num_tasks, *shape)}")
            init_fn = None
        else:
            init_fn = _resolve_init(init, model)
        if length == 0:  # no prompt: a baseline that trains model weights or a head (`methods/`)
            value = jnp.zeros(((num_tasks,) if num_tasks > 1 else ()) + shape, jnp.float32)
        elif layer_combine is not None:
            value = _layer_values(init_fn, rngs, model.config.prompt_blocks, shape)
        elif init_fn is None:
            value = jnp.asarray(init, jnp.float32)
        elif num_tasks == 1:
            value = jnp.asarray(init_fn(rngs.params(), shape), jnp.float32)
        else:
            value = jnp.stack([jnp.asarray(init_fn(rngs.params(), shape), jnp.float32) for _ in range(num_tasks)])
        lead = ("tasks",) if num_tasks > 1 else ("layers",) if value.ndim == 3 else ()
        self.soft_prompt = Prompt(value, axes=lead + ("prompt", "embed"))
        if head == "linear":
            if num_labels is None:
                raise ValueError("head='linear' needs num_labels (>= 2, or 1 with regression=True)")
            head = ClassificationHead(hidden, num_labels, regression=regression, rngs=rngs)
        elif head is not None and not isinstance(head, nnx.Module):
            raise ValueError(f"head must be None, 'linear' or an nnx.Module, got {head!r}")
        self.head = head

    @property
    def prompt(self) -> jax.Array:
        """The prompt array: [P, H], or [K, P, H] with several task prompts ([0, H] with a prompt module)."""
        return self.soft_prompt[...]

    @property
    def config(self):
        return self.model.config

    def _prompt_for(self, task_index, batch: int, dropout_rng=None) -> jax.Array:
        """The prompt to insert: [P, H] (one soft prompt), or one per row [B, P', H] by task_index [B].
        dropout_rng (training): handed to a prompt module with a nonzero `dropout_rate` (P-tuning's LSTM) as
        one key for the batch."""
        if self.layer_combine is not None:
            return self.soft_prompt[0]
        if self.prompt_module is None and self.num_tasks == 1:
            return self.soft_prompt[...]
        if task_index is None:
            if self.num_tasks > 1:
                raise ValueError(f"this model has {self.num_tasks} task prompts: pass task_index [B]")
            task_index = jnp.zeros((batch,), jnp.int32)  # one task
        if self.prompt_module is not None:
            if dropout_rng is not None and getattr(self.prompt_module, "dropout_rate", 0):
                return self.prompt_module(jnp.asarray(task_index), dropout_rng=_batch_key(dropout_rng))
            return self.prompt_module(jnp.asarray(task_index))  # [B, P', H]
        return jnp.take(self.soft_prompt[...], jnp.asarray(task_index), axis=0)  # [B, P, H]

    def embed_inputs(self, input_ids, attention_mask=None, task_index=None):
        """Embeds [B, T] ids and inserts the prompt -> (embeds [B, T+P, H], mask [B, T+P])."""
        embeds, mask, _, _ = self._combine(input_ids, attention_mask, task_index)
        return embeds, mask

    def start_decode(self, input_ids, attention_mask, task_index, max_new_tokens: int):
        """The model's `start_decode` on the prompted inputs [B, T] -> (next-token logits [B, V], or None for an
        encoder-decoder (`models.base`), cache, step)."""
        embeds, mask, _, site = self._combine(input_ids, attention_mask, task_index)
        return self.model.start_decode(embeds, mask, max_new_tokens, **site)

    def target_hidden(self, input_ids, attention_mask, target_ids, target_mask, task_index=None,
                      dropout_rng=None) -> jax.Array:
        """Targets [R*B, L] teacher-forced after the prompted inputs [B, T] -> the states predicting them [R*B, L, H].

        Where targets go is the model's business (`target_hidden`: GPT-2 continues the
        prompted input, T5 decodes them). One prefix prompt in a causal model without
        dropout (and one target per input) runs once per batch, not once per row
        (`shared_prefix_target_hidden`): the same states and gradients, less work.
        """
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if self._shares_prefix(dropout_rng) and target_ids.shape[0] == input_ids.shape[0]:
            embeds = self.model.embed(input_ids)
            return self.model.shared_prefix_target_hidden(self.prompt.astype(embeds.dtype), embeds, attention_mask,
                                                          target_ids, target_mask)
        embeds, mask, _, site = self._combine(input_ids, attention_mask, task_index, dropout_rng)
        return self.model.target_hidden(embeds, mask, target_ids, target_mask, dropout_rng=dropout_rng, **site)

    def target_logits(self, input_ids, attention_mask, target_ids, target_mask, task_index=None,
                      dropout_rng=None) -> jax.Array:
        """`target_hidden` through the model's LM head -> logits [R*B, L, V]."""
        return self.model.logits(self.target_hidden(input_ids, attention_mask, target_ids, target_mask, task_index,
                                                    dropout_rng))

    def _shares_prefix(self, dropout_rng) -> bool:
        return (self.placement == "prefix" and self.num_tasks == 1 and self.prompt_module is None
                and self.layer_combine is None and self.visibility is None
                and self.soft_prompt.shape[-2] > 0
                and hasattr(self.model, "shared_prefix_target_hidden")
                and getattr(self.model, "prefix", None) is None  # a prefix's keys (METHOD 'prefix:P') go first
                and (dropout_rng is None or not self.model.config.has_dropout))

    def _combine(self, input_ids, attention_mask, task_index, dropout_rng=None):
        """-> (embeds [B, T+P, H], mask [B, T+P], token positions [B, T], site): `site` holds the keyword
        `prompt_site` (a `models.common.PromptSite`) for the model when there are layer prompts, else nothing."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        at = combine.insert_positions(attention_mask, self.placement, self.before_eos)
        prompt = self._prompt_for(task_index, input_ids.shape[0], dropout_rng)
        embeds, mask, positions = combine.insert(self.model.embed(input_ids), attention_mask, prompt, at)
        site = {}
        if self.layer_combine is not None or self.visibility is not None:
            # the prompt's first vector follows the real tokens before `at`
            start = jnp.sum((attention_mask > 0) & (jnp.arange(input_ids.shape[1])[None] < at[:, None]), axis=1)
            layers = self.soft_prompt[...] if self.layer_combine is not None else None
            site = {"prompt_site": PromptSite(start, prompt.shape[-2], layers, self.layer_combine or "replace",
                                              self.visibility)}
        return embeds, mask, positions, site

    def __call__(self, input_ids, attention_mask=None, *, decoder_input_ids=None, decoder_attention_mask=None,
                 task_index=None, dropout_rng=None) -> PromptOutput:
        """input_ids / attention_mask [B, T] -> PromptOutput.

        dropout_rng: None (no dropout), one key per row [B], or a single key (training only).
        """
        embeds, mask, positions, site = self._combine(input_ids, attention_mask, task_index, dropout_rng)
        hidden, read_mask = self.model.activations(embeds, mask, decoder_input_ids=decoder_input_ids,
                                                   decoder_attention_mask=decoder_attention_mask,
                                                   dropout_rng=dropout_rng, **site)
        last = jnp.maximum(combine.last_real(read_mask), 0)
        h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, H]
        prediction = self.head(h_last) if self.head is not None else self.model.logits(h_last)
        return PromptOutput(logits=self.model.logits(hidden), attention_mask=mask, token_positions=positions,
                            hidden=h_last, prediction=prediction)


def _batch_key(dropout_rng: jax.Array) -> jax.Array:
    """One typed key for the whole batch from a key or per-row keys [B] (row 0's, folded apart from its own
    streams): the same on every mesh, as row keys come from global row numbers."""
    if not jax.dtypes.issubdtype(dropout_rng.dtype, jax.dtypes.prng_key):
        dropout_rng = jax.random.wrap_key_data(dropout_rng)
    key = dropout_rng if dropout_rng.ndim == 0 else dropout_rng[0]
    return jax.random.fold_in(key, 0x70726F6D)  # 'prom'


def with_prompt(model, length: int, init=None, placement: str = "prefix", head=None, **kwargs) -> PromptedModel:
    """Wraps a frozen model with a trainable [length, H] prompt.

    init: an `init(rng, shape)` closure from `prompts.initializers`, a [P, H]
    array, a `.npy` path, or None (sampled from the first 5,000 vocabulary rows).
    placement: 'prefix' (Lester, PEFT) or 'suffix' (right after each example's last real token).
    head: None (LM head; verbalizers / rank classification), 'linear' (with
    num_labels=...), or an nnx.Module applied to the hidden state [B, H].
    Other keyword arguments: num_labels, regression, num_tasks, before_eos, seed, prompt_module
    (an nnx module task_index [B] -> prompts [B, P', H] that replaces the soft prompt; `length` and
    `init` are then unused), layer_combine ('replace' or 'add': a [P, H] prompt per block of the
    model, [L, P, H]; `init` then makes each layer's, or is an [L, P, H] array or file), and visibility
    (a list of 'prompt->prompt', 'prompt->prompt;causal', 'prompt->input'; None: the model's own).
    """
    return PromptedModel(model, length, init, placement=placement, head=head, **kwargs)
