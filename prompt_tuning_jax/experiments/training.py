"""`train(...)`: train a prompt (and head) on a task or a mixture; `python -m prompt_tuning_jax.train` runs it.

    train("runs/sst2", ModelSpec("gpt2"), PromptSpec(length=20, placement="suffix", head="linear"),
          DataSpec("sst2", feature_lengths={"inputs": 128, "targets": 4}), TrainSpec(steps=2000, eval_every=200))

Writes under `model_dir`: checkpoints/ (orbax: prompt, head, optimizer state,
data position), prompts/prompt_<step>.npy and prompt_latest.npy (METHOD 'lora:R': lora_adapter/, a PEFT
LoRA adapter of the final factors),
metrics.jsonl / metrics.csv / plots / TensorBoard, best.json, and summary.json at the
end; `run.lock` (host, pid) while it trains, so a second run on the same folder
refuses. Running the same call again resumes from the newest intact checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from typing import Sequence

import jax
import numpy as np

from prompt_tuning_jax import files
from prompt_tuning_jax.data import TrainIterator
from prompt_tuning_jax.experiments import loading, planning
from prompt_tuning_jax.experiments.scoring import TaskScorer
from prompt_tuning_jax.experiments.specs import DataSpec, ModelSpec, PromptSpec, TrainSpec
from prompt_tuning_jax.training import optim
from prompt_tuning_jax.training.hooks import standard_hooks
from prompt_tuning_jax.training.lock import RunLock
from prompt_tuning_jax.training.loop import fit
from prompt_tuning_jax.training.trainer import Trainer

logger = logging.getLogger(__name__)


def train(model_dir: str, model: ModelSpec, prompt: PromptSpec, data: DataSpec, schedule: TrainSpec = TrainSpec(),
          optimizer=None, mesh_shape: Sequence[int] = (-1, 1)) -> dict:
    """Trains on `data.task` (a list of names: a mixture, one prompt per task) -> fit()'s summary plus
    {'prompt_file', 'model_dir', 'prompt'}. optimizer: an optax transformation (default: the paper's Adafactor).
    """
    if files.exists(model_dir) and not files.is_dir(model_dir):
        raise ValueError(f"MODEL_DIR {model_dir} is a file; give a folder (a new one, or a run's to resume it)")
    tasks = data.tasks()
    if not tasks:
        raise ValueError("train() needs a task: set MIXTURE_OR_TASK_NAME")
    prompt.method_impl.check_training(prompt)
    schedule = t5x_schedule(model, schedule)  # before MODEL_DIR is made: a TRAIN_STEPS <= N writes nothing
    if jax.process_index() == 0:
        try:
            files.makedirs(model_dir)
        except OSError as e:
            raise OSError(e.errno, f"cannot create MODEL_DIR {model_dir} ({e.strerror or e}); choose a folder this "
                                   "process can write") from None
    with RunLock(model_dir) if jax.process_index() == 0 else contextlib.nullcontext():  # one run per MODEL_DIR
        summary = _train(model_dir, model, prompt, data, schedule, optimizer, mesh_shape, tasks)
    if jax.process_index() == 0 and not summary.get("preempted"):
        _write_summary(model_dir, summary)
    return summary


def _train(model_dir, model, prompt, data, schedule, optimizer, mesh_shape, tasks) -> dict:
    mesh_shape = planning.resolve_mesh_shape(planning.Run("train", model, prompt, data, schedule, optimizer,
                                                          mesh_shape=mesh_shape))
    loaded = loading.load_prompted(model, prompt, tasks, loading.make_mesh(mesh_shape))
    if not prompt.method_impl.trains:
        return _in_context(model_dir, loaded, model, data, schedule, tasks)
    tx = optimizer if optimizer is not None else optim.make_optimizer(total_steps=schedule.steps)
    trainer = Trainer(loaded.state, tx, objective=loading.objective(loaded.prompt, tasks[0]),
                      accum_steps=schedule.accum_steps, seed=data.seed,  # SEED: data order and dropout masks
                      regularizer=prompt.method_impl.regularizer(loaded.prompt, loaded.model, loaded.tokenizer))
    evaluate, majority_rate = _evaluator(tasks, loaded, data, schedule, model.padding_side)
    config = {"model": dataclasses.asdict(model), "prompt": dataclasses.asdict(prompt), "data": dataclasses.asdict(data),
              "schedule": dataclasses.asdict(schedule), "mesh_shape": list(mesh_shape)}
    hooks = standard_hooks(model_dir, evaluate=evaluate,
                           eval_every=schedule.eval_every, checkpoint_every=schedule.checkpoint_every,
                           keep=schedule.keep, log_every=schedule.log_every, progress=schedule.progress,
                           wandb_project=schedule.wandb_project, config=config)
    batches = _train_batches(tasks, loaded, data, model.padding_side)
    summary = fit(trainer, batches, schedule.steps, hooks.hooks, resume_from=hooks.checkpointer,
                  prefetch=data.prefetch, nonfinite=schedule.nonfinite)
    summary.update(prompt_file=os.path.join(model_dir, "prompts", "prompt_latest.npy") if loaded.state.has_prompt
                   else None, model_dir=model_dir, method=prompt.method,
                   prompt=trainer.prompt, padding_fraction=batches.batcher.padding_fraction,
                   batch_shapes=len(batches.batcher.shapes))
    logger.info("training batches: %.1f%% padding, %d shapes (one compilation each)",
                100 * summary["padding_fraction"], summary["batch_shapes"])
    if not summary.get("preempted"):  # what the method leaves beside the checkpoints (a PEFT adapter)
        summary.update(prompt.method_impl.export(model_dir, loaded.state, trainer.trainable, model.path))
    summary.update(trainable_params=int(sum(np.size(x) for x in jax.tree.leaves(trainer.trainable))),
                   majority_rate=majority_rate, placement=prompt.placement, prompt_length=prompt.length)
    return summary


def t5x_schedule(model: ModelSpec, schedule: TrainSpec) -> TrainSpec:
    """`schedule` with T5X's step semantics when the model is a T5X checkpoint saved at step N.

    T5X counts TRAIN_STEPS from the checkpoint's step: the original's commands start from step
    1,100,000 and say TRAIN_STEPS=1_150_000 for 50,000 steps of prompt tuning. So TRAIN_STEPS - N
    steps run. Our own step counter (checkpoints, records, prompt_<step>.npy, dropout keys) still
    starts at 0, and the default optimizer's total_steps is the steps run; an optimizer passed in
    (gin's OPTIMIZER, total_steps = TRAIN_STEPS) keeps its own schedule, which sees steps 0.. where
    T5X's sees N.. (the same for the paper's constant learning rate). Hugging Face checkpoints are
    unchanged.
    """
    from prompt_tuning_jax.models import t5x

    if not t5x.is_t5x_checkpoint(model.path):
        return schedule
    start = t5x.checkpoint_step(model.path)
    if not start:
        return schedule
    if schedule.steps <= start:
        raise ValueError(f"TRAIN_STEPS={schedule.steps} but the T5X checkpoint {model.path} is at step {start}, and "
                         f"T5X counts TRAIN_STEPS from it: set TRAIN_STEPS to {start} plus the steps of prompt "
                         f"tuning (e.g. --gin.TRAIN_STEPS={start + 1000} for 1000)")
    print(f"t5x: the checkpoint is at step {start:,}, so TRAIN_STEPS={schedule.steps:,} runs "
          f"{schedule.steps - start:,} steps of prompt tuning (T5X counts TRAIN_STEPS from the checkpoint's step)",
          file=sys.stderr)
    return dataclasses.replace(schedule, steps=schedule.steps - start)


def _in_context(model_dir, loaded, model: ModelSpec, data: DataSpec, schedule: TrainSpec, tasks) -> dict:
    """A METHOD that trains nothing (in-context learning, 'icl:K'): the eval split, with the method's
    demonstrations before each input, is scored once and recorded as the evaluation of step 0
    (metrics.jsonl, best.json), like a run's."""
    from prompt_tuning_jax.training.records import RunRecord

    evaluate, majority_rate = _evaluator(tasks, loaded, data, schedule, model.padding_side)
    if evaluate is None:
        raise ValueError(f"METHOD {loaded.prompt.method!r} trains nothing and only evaluates: set EVAL_SPLIT "
                         "(and for a classification task EVAL_SCORING 'rank' or 'generate')")
    metrics = evaluate(None)
    key = next(iter(metrics))
    best = {"step": 0, "metric": key, "value": float(metrics[key]), "metrics": metrics}
    if jax.process_index() == 0:
        record = RunRecord(model_dir, wandb_project=schedule.wandb_project,
                           config={"method": loaded.prompt.method, "data": dataclasses.asdict(data)})
        record.truncate_after(-1)  # a rerun replaces the evaluation instead of adding to it
        record.log(0, "eval", metrics)
        record.write_summary()
        record.close()
        files.atomic_write(os.path.join(model_dir, "best.json"), json.dumps(best, indent=2))
    logger.info("METHOD %s, nothing trained: %s", loaded.prompt.method, metrics)
    return {"step": 0, "train": {}, "eval": metrics, "trained": False, "best": best, "preempted": False, "nonfinite_steps": 0,
            "prompt_file": None, "model_dir": model_dir, "method": loaded.prompt.method, "prompt": None,
            "trainable_params": 0, "majority_rate": majority_rate, "placement": loaded.prompt.placement,
            "prompt_length": 0}


def _write_summary(model_dir: str, summary: dict) -> None:
    """summary.json: what a sweep reads of a finished run (steps, metrics, trainable parameters, ...)."""
    keep = ("step", "eval", "best", "method", "trainable_params", "placement", "prompt_length", "majority_rate",
            "padding_fraction", "batch_shapes", "nonfinite_steps")
    files.atomic_write(os.path.join(model_dir, "summary.json"),
                       json.dumps({k: summary.get(k) for k in keep}, indent=2, default=float))


def _train_batches(tasks, loaded, data: DataSpec, padding_side: str) -> TrainIterator:
    parts = [loading.tokenize_split(t, data.train_split, loaded, data) for t in tasks]
    return TrainIterator(parts if len(parts) > 1 else parts[0], data.batch_size, rates=data.mixture_rates,
                         seed=data.seed, padding_side=padding_side, group_by_length=data.group_by_length)


def _evaluator(tasks, loaded, data: DataSpec, schedule: TrainSpec, padding_side: str):
    """(evaluate(trainer) -> metrics on the eval split of every task of the mixture, the first task's
    majority-class rate); (None, None) when there is nothing to evaluate.

    Scored as `schedule.eval_scoring` says (see `experiments.scoring`). With several
    tasks, metric names get the task's name: 'rte/accuracy'.
    """
    scorers = []
    for k, task in enumerate(tasks):
        if not data.eval_split or (task.kind == "generation" and schedule.eval_scoring != "generate"):
            continue
        tok = loading.tokenize_split(task, data.eval_split, loaded, data, limit=data.eval_limit)
        scorers.append((task, TaskScorer(loaded, task, tok, data, scoring=schedule.eval_scoring,
                                         padding_side=padding_side, task_index=k)))
    if not scorers:
        return None, None

    def evaluate(trainer) -> dict[str, float]:
        results = [(task, scorer()[0]) for task, scorer in scorers]
        if len(results) == 1:
            return results[0][1]
        return {f"{t.name}/{k}": v for t, metrics in results for k, v in metrics.items()}

    return evaluate, _majority_rate(scorers[0][1].tokenized)


def _majority_rate(tokenized) -> float | None:
    """The share of the eval examples in their most common class (None when labels are not classes)."""
    labels = np.asarray(tokenized.label)
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        return None
    return float(np.bincount(labels).max() / labels.size)
