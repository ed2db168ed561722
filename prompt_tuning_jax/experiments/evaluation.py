"""`evaluate(...)`: score a trained or released prompt on a task split; `python -m prompt_tuning_jax.eval` runs it.

    evaluate(ModelSpec("google/t5-base-lm-adapt"), PromptSpec(length=100),
             DataSpec("sst2", feature_lengths={"inputs": 512, "targets": 8}),
             checkpoint_path="released/sst2.npy", output_dir="runs/eval_sst2")

Classification tasks without a head use rank classification over the label
strings. Writes `<output_dir>/metrics.json` when given.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax

from prompt_tuning_jax.data import EvalIterator
from prompt_tuning_jax.experiments import loading
from prompt_tuning_jax.experiments.specs import DataSpec, ModelSpec, PromptSpec
from prompt_tuning_jax.files import atomic_write
from prompt_tuning_jax.training.predict import Predictor


def evaluate(model: ModelSpec, prompt: PromptSpec, data: DataSpec, checkpoint_path: str | None = None,
             output_dir: str | None = None, mesh_shape: Sequence[int] = (-1, 1)) -> dict[str, float]:
    """Metrics of the prompt at `checkpoint_path` (a `.npy`, or a MODEL_DIR: prompt and head) on
    `data.eval_split` of `data.task` (its first `data.eval_limit` examples when set)."""
    tasks = data.tasks()
    if len(tasks) != 1:
        raise ValueError(f"evaluate() scores one task; MIXTURE_OR_TASK_NAME is {data.task!r}")
    task = tasks[0]
    objective = loading.objective(prompt, task)
    if objective == "lm" and task.kind != "classification":
        raise ValueError(f"evaluate() scores classification tasks by rank classification; task "
                         f"{task.name} is {task.kind} (use infer() to generate text)")
    loaded = loading.load_prompted(model, prompt, tasks, loading.make_mesh(mesh_shape), checkpoint_path)
    labels = loading.label_ids(task, loaded, data) if objective == "lm" else (None, None)
    tok = loading.tokenize_split(task, data.eval_split, loaded, data, limit=data.eval_limit)
    batches = EvalIterator(tok, data.eval_batch_size or data.batch_size, padding_side=model.padding_side)
    metrics = {k: float(v) for k, v in Predictor(loaded.state, objective).evaluate(batches, task, *labels).items()}
    if output_dir and jax.process_index() == 0:
        summary = {"task": task.name, "split": data.eval_split, "examples": len(tok), **metrics}
        atomic_write(os.path.join(output_dir, "metrics.json"), json.dumps(summary, indent=2))
    return metrics
