"""Compiled inference on a `MeshState`: class predictions with a task's metrics, and generation.

    predictor = Predictor(state, objective="lm")
    metrics = predictor.evaluate(EvalIterator(...), task, label_ids, label_mask)
    tokens = Generator(state, decode).generate(local_batch)       # [B_global, N] on every process

Each is one `jax.jit` per batch shape with explicit shardings (prompt and head
replicated, frozen weights sharded, rows over `data`). An evaluation dispatches
every batch before fetching anything, then gathers weights and example indices
across processes in one collective.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx

from prompt_tuning_jax import partitioning
from prompt_tuning_jax.training import objectives
from prompt_tuning_jax.training.runtime import MeshState


class Predictor:
    """Class predictions ([B] ids, or values for regression) of the state's current prompt and head."""

    def __init__(self, state: MeshState, objective: str):
        self.state, self.objective = state, objective
        self._predict = jax.jit(self._predict_fn, in_shardings=(state.replicated, state.frozen_shardings,
                                                                state.batch_sharding, state.replicated),
                                out_shardings=state.replicated)

    def _predict_fn(self, trainable, frozen, batch, labels):
        model = nnx.merge(self.state.graphdef, trainable, frozen)
        return objectives.predict_classes(model, batch, self.objective, *labels)

    def lower(self, batch: dict[str, jax.ShapeDtypeStruct], labels=(None, None)) -> jax.stages.Lowered:
        """The prediction program lowered for a global batch; labels: ShapeDtypeStructs [C, L] or (None, None)."""
        return self._predict.lower(self.state.trainable, self.state.frozen, batch, labels)

    def _dispatch(self, local_batch, label_ids=None, label_mask=None) -> jax.Array:
        self.state.check_batch(local_batch)
        labels = (None, None) if label_ids is None else (np.asarray(label_ids, np.int32),
                                                          np.asarray(label_mask, np.int32))
        return self._predict(self.state.trainable, self.state.frozen, self.state.put_batch(local_batch), labels)

    def predict(self, local_batch, label_ids=None, label_mask=None) -> np.ndarray:
        """Predictions for the whole global batch, on every process: [B_global].

        label_ids / label_mask [C, L]: the class strings for rank classification (LM objective).
        """
        return partitioning.host_value(self._dispatch(local_batch, label_ids, label_mask))

    def predict_all(self, batches, label_ids=None, label_mask=None) -> np.ndarray:
        """Predictions for every example of an eval iterator, in example order (padding rows dropped): [N]."""
        preds, weights, indices = [], [], []
        for local in batches:
            preds.append(self._dispatch(local, label_ids, label_mask))
            weights.append(local["weight"])
            indices.append(local["example_index"])
        preds = np.concatenate([partitioning.host_value(p) for p in preds])  # [nb * B_global], batch-major
        keep = partitioning.gather_batches(weights) > 0
        preds, index = preds[keep], partitioning.gather_batches(indices)[keep]
        return preds[np.argsort(index, kind="stable")]

    def evaluate(self, batches, task, label_ids=None, label_mask=None) -> dict[str, float]:
        """Runs the task's metrics over an eval iterator.

        Without a head, classification is rank classification over `label_ids` / `label_mask` [C, L].
        """
        examples = batches.tokenized.examples
        if examples is None:
            raise ValueError("the eval iterator's Tokenized has no examples to take targets from")
        preds = self.predict_all(batches, label_ids, label_mask)
        preds = [float(p) if task.kind == "regression" else int(p) for p in preds]
        return task.compute_metrics(task.metric_targets(examples), preds)


class Generator:
    """Generated tokens for whole global batches: `decode(model, input_ids, attention_mask, task_index)`.

    decode: traced inside one jit with the live prompted model, e.g.
    `lambda m, ids, mask, task: DecodeSpec(...).generate(m, ids, mask, eos_id, task, max_new_tokens=N)`.
    """

    def __init__(self, state: MeshState, decode: Callable):
        self.state = state

        def generate(trainable, frozen, input_ids, attention_mask, task_index):
            return decode(nnx.merge(state.graphdef, trainable, frozen), input_ids, attention_mask, task_index)

        rows = state.batch_sharding
        self._generate = jax.jit(generate, in_shardings=(state.replicated, state.frozen_shardings, rows, rows, rows),
                                 out_shardings=state.replicated)

    def lower(self, batch: dict[str, jax.ShapeDtypeStruct]) -> jax.stages.Lowered:
        """The whole decoding loop lowered for a global batch (input_ids, attention_mask, task_index)."""
        return self._generate.lower(self.state.trainable, self.state.frozen, batch["input_ids"],
                                    batch["attention_mask"], batch["task_index"])

    def generate(self, local_batch: dict[str, np.ndarray]) -> jax.Array:
        """This process's rows -> tokens [B_global, N] (replicated; read with `partitioning.host_value`)."""
        self.state.check_batch(local_batch)
        batch = self.state.put_batch(local_batch)
        return self._generate(self.state.trainable, self.state.frozen, batch["input_ids"], batch["attention_mask"],
                              batch["task_index"])
