"""Prompt ensembling (Lester et al. 2021, section 6): K prompts on one frozen model, then a majority vote.

    metrics = evaluate(model, PromptSpec(length=100), data, checkpoint_path=["a.npy", "b.npy", "c.npy"])
    # {'prompt_0/accuracy': ..., 'prompt_1/accuracy': ..., 'prompt_2/accuracy': ..., 'ensemble/accuracy': ...}

The K prompts become the K task prompts of one [K, P, H] prompt, and the eval
split is scored once as K x N rows whose task index picks the prompt: rows of
different prompts share batches, as in the paper's batched ensemble. Each
example's vote is its most common prediction (a tie goes to the prediction of
the earliest prompt among the tied ones); invalid outputs (-1) vote too but a
valid answer wins over them.
"""
from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning_jax.data.pipeline import concatenate
from prompt_tuning_jax.experiments import loading
from prompt_tuning_jax.experiments.scoring import TaskScorer
from prompt_tuning_jax.prompts.io import load_prompt


def majority_vote(predictions: np.ndarray) -> np.ndarray:
    """[K, N] class predictions -> [N]: the most common valid one per column, ties to the earliest prompt."""
    votes = []
    for column in np.asarray(predictions).T.tolist():
        valid = [p for p in column if p >= 0] or column
        counts = collections.Counter(valid)
        top = max(counts.values())
        votes.append(next(p for p in valid if counts[p] == top))
    return np.asarray(votes)


def ensemble_scores(model, prompt, task, data, prompt_files, mesh, *, scoring, decoding, padding_side):
    """-> (metrics, per-prompt predictions [K, N], votes [N], texts [K][N]) of K prompt files on `task`."""
    if prompt.head is not None:
        raise ValueError("prompt ensembling votes with LM-head prompts; this prompt has a linear head")
    if task.kind != "classification":
        raise ValueError(f"prompt ensembling takes a majority vote over classes; task {task.name} is {task.kind}")
    k = len(prompt_files)
    loaded = loading.load_prompted(model, dataclasses.replace(prompt, num_tasks=k, init="zeros"), [task],
                                   mesh)
    current = loaded.state.trainable["soft_prompt"]  # [K, P, H]
    stacked = np.stack([load_prompt(f, expected_shape=current.shape[1:]) for f in prompt_files])
    loaded.state.trainable = jax.device_put(dict(loaded.state.trainable, soft_prompt=jnp.asarray(stacked, current.dtype)),
                                            loaded.state.trainable_shardings)
    tok = loading.tokenize_split(task, data.eval_split, loaded, data, limit=data.eval_limit)
    n = len(tok)
    scorer = TaskScorer(loaded, task, concatenate([tok] * k), data, scoring=scoring, decoding=decoding,
                        padding_side=padding_side, task_index=np.repeat(np.arange(k, dtype=np.int32), n))
    _, scored = scorer()
    predictions = np.asarray(scored.predictions).reshape(k, n)
    votes = majority_vote(predictions)
    targets = task.metric_targets(tok.examples)
    prefix = "rank_" if scorer.mode == "rank" else ""
    metrics = {}
    for i in range(k):
        metrics.update({f"prompt_{i}/{prefix}{m}": float(v)
                        for m, v in task.compute_metrics(targets, list(predictions[i])).items()})
    metrics.update({f"ensemble/{prefix}{m}": float(v) for m, v in task.compute_metrics(targets, list(votes)).items()})
    texts = [scored.texts[i * n:(i + 1) * n] for i in range(k)]
    return metrics, predictions, votes, texts, tok
