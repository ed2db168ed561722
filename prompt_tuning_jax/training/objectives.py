"""What a step minimises and what evaluation predicts, for the three kinds of task.

- "lm": teacher-forced log-likelihood of the target text (Lester / PEFT style;
  T5 decoder targets, GPT-2 targets right after the prompted input).
- "classification": cross-entropy of the linear head's class logits.
- "regression": squared error of the head's scalar output.

Each loss returns sums, not means (`loss_sum`, `denominator`), so gradient
accumulation and multi-device batches normalise once, by the true total.

`loss_terms` takes the training step's `dropout_rng` (one key per row, see
`models/base.py`); `predict_classes` never drops out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prompt_tuning_jax.heads import rank_classification, target_token_logprobs

OBJECTIVES = ("lm", "classification", "regression")


def check_objective(objective: str, prompted) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
    if objective != "lm" and prompted.head is None:
        raise ValueError(f"objective {objective!r} needs a head: with_prompt(..., head='linear', num_labels=...)")


def _task_index(prompted, batch):
    return batch["task_index"] if prompted.num_tasks > 1 else None


def loss_terms(prompted, batch: dict, objective: str, dropout_rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per-batch sums: {'loss_sum', 'denominator', ...metric sums} (all float32 scalars).

    dropout_rng: None (no dropout: eval mode) or one key per row of `batch` [B].
    """
    weight = batch["weight"].astype(jnp.float32)  # [B]
    task = _task_index(prompted, batch)
    if objective == "lm":
        target_mask = batch["target_mask"].astype(jnp.float32) * weight[:, None]
        logp = target_token_logprobs(prompted, batch["input_ids"], batch["attention_mask"], batch["target_ids"],
                                     target_mask, task, dropout_rng=dropout_rng)  # [B, L]
        return {"loss_sum": -logp.sum(), "denominator": target_mask.sum(), "examples": weight.sum()}
    out = prompted(batch["input_ids"], batch["attention_mask"], task_index=task, dropout_rng=dropout_rng)
    if objective == "classification":
        logp = jax.nn.log_softmax(out.prediction.astype(jnp.float32), axis=-1)
        label = batch["label"].astype(jnp.int32)
        nll = -jnp.take_along_axis(logp, label[:, None], axis=-1)[:, 0]
        correct = (jnp.argmax(logp, axis=-1) == label).astype(jnp.float32)
        return {"loss_sum": (nll * weight).sum(), "denominator": weight.sum(), "examples": weight.sum(),
                "correct": (correct * weight).sum()}
    err = out.prediction.astype(jnp.float32) - batch["label"].astype(jnp.float32)
    return {"loss_sum": (jnp.square(err) * weight).sum(), "denominator": weight.sum(), "examples": weight.sum()}


def predict_classes(prompted, batch: dict, objective: str, label_ids=None, label_mask=None) -> jax.Array:
    """[B] predicted class ids (or [B] float values for regression).

    With a head: argmax of its logits (or its value). LM: rank classification
    over the class verbalizers `label_ids` / `label_mask` [C, L].
    """
    task = _task_index(prompted, batch)
    if objective == "lm":
        if label_ids is None:
            raise ValueError("rank classification needs the label strings' token ids")
        scores = rank_classification(prompted, batch["input_ids"], batch["attention_mask"], label_ids, label_mask,
                                     task)
        return jnp.argmax(scores, axis=-1)
    out = prompted(batch["input_ids"], batch["attention_mask"], task_index=task)
    return out.prediction if objective == "regression" else jnp.argmax(out.prediction, axis=-1)
