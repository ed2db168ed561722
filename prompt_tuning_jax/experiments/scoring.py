"""Scoring a task split with the current prompt, in the three ways a prompt can answer.

    scorer = TaskScorer(loaded, task, tokenized, data, scoring="generate", decoding=DecodeSpec(), padding_side="right")
    metrics, scored = scorer()          # metrics for the task; scored.texts / predictions / valid per example

- "generate" (the paper's protocol, T5X's eval): greedy decoding (or `decoding`),
  then the decoded text must equal a label string exactly; anything else is an
  invalid prediction and counts as T5's metrics count it (`task.text_to_prediction`).
- "rank": rank classification, the log-likelihood of every label string; never
  invalid. Its metrics are reported as `rank_<metric>`.
- "head": a linear head's class (or value); used whenever the prompt has a head.

The state is read when the scorer is called, so one scorer follows a training run.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from prompt_tuning_jax import partitioning
from prompt_tuning_jax.data import EvalIterator
from prompt_tuning_jax.decoding import DecodeSpec
from prompt_tuning_jax.experiments import loading
from prompt_tuning_jax.training.predict import Generator, Predictor

SCORINGS = ("generate", "rank")


@dataclasses.dataclass
class Scored:
    texts: list[str]       # what was compared: the decoded text, or the chosen label string
    predictions: list      # in label space: class ids (-1 invalid), floats, or texts
    valid: list[bool]      # False where a generated text is no label string / no number


def check_scoring(scoring: str, task, has_head: bool) -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; use one of {SCORINGS} (EVAL_SCORING)")
    if scoring == "rank" and not has_head and task.kind != "classification":
        raise ValueError(f"rank classification needs label strings; task {task.name} is {task.kind} "
                         "(use scoring='generate')")


class TaskScorer:
    """Scores one tokenized split of `task` with `loaded.state` (task_index: which task prompt of a mixture,
    for all examples or one per example)."""

    def __init__(self, loaded, task, tokenized, data, *, scoring: str = "generate",
                 decoding: DecodeSpec = DecodeSpec(), padding_side: str = "right", task_index=0):
        check_scoring(scoring, task, loaded.state.has_head)
        self.loaded, self.task, self.tokenized = loaded, task, tokenized
        self.mode = "head" if loaded.state.has_head else scoring
        self.batches = EvalIterator(tokenized, data.eval_batch_size or data.batch_size, task_index=task_index,
                                    padding_side=padding_side)
        if self.mode == "generate":
            self.generator = make_generator(loaded, decoding, default_max_new_tokens(task, loaded, data))
        else:
            objective = loading.objective(loaded.prompt, task) if self.mode == "head" else "lm"
            self.predictor = Predictor(loaded.state, objective)
            self.labels = loading.label_ids(task, loaded, data) if self.mode == "rank" else (None, None)

    def __call__(self) -> tuple[dict[str, float], Scored]:
        task = self.task
        if self.mode == "generate":
            texts = generate_texts(self.generator, self.batches, self.loaded)
            predictions = [task.text_to_prediction(t) for t in texts]
            scored = Scored(texts, predictions, [_valid(task, t, p) for t, p in zip(texts, predictions)])
        else:
            ids = self.predictor.predict_all(self.batches, *self.labels)
            predictions = [float(p) if task.kind == "regression" else int(p) for p in ids]
            texts = [f"{p:g}" if task.kind == "regression" else task.label_names[p] for p in predictions]
            scored = Scored(texts, predictions, [True] * len(texts))
        metrics = task.compute_metrics(task.metric_targets(self.tokenized.examples), scored.predictions)
        prefix = "rank_" if self.mode == "rank" else ""
        return {prefix + k: float(v) for k, v in metrics.items()}, scored


def _valid(task, text: str, prediction) -> bool:
    if task.kind == "classification":
        return prediction >= 0
    if task.kind == "regression":
        try:
            float(text.strip())
        except ValueError:
            return False
    return True


def eos_id(loaded) -> int:
    eos = loaded.tokenizer.eos_token_id
    return eos if eos is not None else loaded.model.config.eos_token_id


def default_max_new_tokens(task, loaded, data) -> int:
    """The longest label string for classification (T5 labels end in EOS; GPT-2 stops after the label),
    else TASK_FEATURE_LENGTHS['targets']."""
    if task is not None and task.kind == "classification":
        return int(loading.label_ids(task, loaded, data)[1].sum(-1).max())
    return data.feature_lengths["targets"]


def make_generator(loaded, decoding: DecodeSpec, default_max_new: int) -> Generator:
    max_new = decoding.max_new_tokens if decoding.max_new_tokens is not None else default_max_new
    eos = eos_id(loaded)
    return Generator(loaded.state, lambda m, ids, mask, task_index: decoding.generate(
        m, ids, mask, eos, task_index=task_index, max_new_tokens=max_new))


def generate_texts(generator: Generator, batches, loaded) -> list[str]:
    """Decoded generations for every example of `batches`, in example order (up to each row's EOS)."""
    batches = list(batches)
    dispatched = [generator.generate(b) for b in batches]  # every batch queued before the first is read
    tokens = np.concatenate([partitioning.host_value(t) for t in dispatched])
    keep = partitioning.gather_batches([b["weight"] for b in batches]) > 0
    index = partitioning.gather_batches([b["example_index"] for b in batches])[keep]
    tokens = tokens[keep][np.argsort(index, kind="stable")]
    eos = eos_id(loaded)
    return [loaded.tokenizer.decode(row[:row.index(eos)] if eos in row else row, skip_special_tokens=True)
            for row in tokens.tolist()]
