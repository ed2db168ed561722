"""Heads on a prompted model: a linear classifier, and LM scoring (verbalizers, rank classification)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prompt_tuning_jax.models.lm_head import target_log_probs
from prompt_tuning_jax.variables import Trainable


class ClassificationHead(nnx.Module):
    """Linear head on one hidden state: [B, H] -> class logits [B, C] (or [B] for regression).

    `num_labels` must be >= 2 for classification; 1 means regression and is
    accepted only with `regression=True`.
    """

    def __init__(self, hidden_size: int, num_labels: int, *, regression: bool = False, stddev: float = 0.02,
                 rngs: nnx.Rngs):
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
        if regression and num_labels != 1:
            raise ValueError(f"a regression head has num_labels=1, got {num_labels}")
        if num_labels == 1 and not regression:
            raise ValueError("num_labels=1 means regression: pass regression=True, or num_labels >= 2 to classify")
        self.weight = Trainable(stddev * jax.random.normal(rngs.params(), (hidden_size, num_labels)),
                                axes=("embed", "classes"))
        self.bias = Trainable(jnp.zeros((num_labels,)), axes=("classes",))
        self.num_labels, self.regression = num_labels, regression

    def __call__(self, hidden: jax.Array) -> jax.Array:
        out = hidden.astype(jnp.float32) @ self.weight[...] + self.bias[...]
        return out[..., 0] if self.regression else out


def verbalizer_logits(next_token_logits: jax.Array, label_token_ids) -> jax.Array:
    """Next-token logits [B, V] restricted to one token per class [C] -> [B, C]."""
    return jnp.take(next_token_logits, jnp.asarray(label_token_ids), axis=-1)


def token_log_likelihood(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum of log p(target) over real target positions: logits [B, L, V], targets/mask [B, L] -> [B]."""
    return jnp.sum(target_log_probs(logits, targets) * mask, axis=-1)


def target_token_logprobs(prompted, input_ids: jax.Array, attention_mask: jax.Array, target_ids: jax.Array,
                          target_mask: jax.Array, task_index: jax.Array | None = None,
                          dropout_rng: jax.Array | None = None) -> jax.Array:
    """log p(target token | prompted input, earlier target tokens) for each target position: [R*B, L].

    input_ids / attention_mask [B, T]; target_ids / target_mask [R*B, L], R >= 1
    targets per example in example-major order (rank classification passes R = C).
    How targets are placed is the model's business (`target_hidden`): GPT-2
    continues the prompted input with them, T5 decodes them. dropout_rng: None (no
    dropout) or the training step's keys, one per input row [B] (or a single key).
    The LM head scores them a chunk at a time (`LMHead.log_probs`): the [R*B, L, V]
    logits never exist whole, in the forward or the backward pass.
    """
    b, rb = input_ids.shape[0], target_ids.shape[0]
    if rb % b:
        raise ValueError(f"{rb} targets do not divide evenly among {b} inputs")
    hidden = prompted.target_hidden(input_ids, attention_mask, target_ids, target_mask, task_index, dropout_rng)
    with jax.named_scope("lm_head"):
        return prompted.model.output_head().log_probs(hidden, target_ids) * target_mask


def rank_classification(prompted, input_ids: jax.Array, attention_mask: jax.Array, label_ids: jax.Array,
                        label_mask: jax.Array, task_index: jax.Array | None = None,
                        length_normalize: bool = False) -> jax.Array:
    """Log-likelihood of every label string given each input: [B, C]; argmax is the prediction.

    label_ids / label_mask [C, L]: each class's verbalizer tokens (T5: ending in EOS).
    """
    b, c = input_ids.shape[0], label_ids.shape[0]
    label_ids, label_mask = jnp.asarray(label_ids), jnp.asarray(label_mask).astype(jnp.float32)
    tiled_ids, tiled_mask = jnp.tile(label_ids, (b, 1)), jnp.tile(label_mask, (b, 1))  # [B*C, L]
    scores = target_token_logprobs(prompted, input_ids, attention_mask, tiled_ids, tiled_mask, task_index).sum(-1)
    if length_normalize:
        scores = scores / jnp.maximum(tiled_mask.sum(-1), 1.0)
    return scores.reshape(b, c)
