"""Runs from plain arguments: train, evaluate and infer. gin (see `cli.py`) only binds these arguments.

    model = ModelSpec("gpt2", dtype="bfloat16")
    prompt = PromptSpec(length=20, init="class_labels", class_labels=["negative", "positive"], placement="suffix")
    train("runs/sst2", model, prompt, task="sst2", feature_lengths={"inputs": 128, "targets": 4},
          batch_size=32, steps=2000)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)

INIT_KINDS = ("random_uniform", "sampled_vocab", "class_labels", "string", "file")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype(name):
    if not isinstance(name, str):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


@dataclasses.dataclass
class ModelSpec:
    """The frozen model: a hub id or Hugging Face folder (`INITIAL_CHECKPOINT_PATH`) and how to run it.

    dtype: compute dtype; param_dtype: storage of the frozen weights; tokenizer:
    defaults to the checkpoint's; padding_side: where pads go in batches.
    """

    path: str
    tokenizer: str | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    padding_side: str = "right"

    def load(self, mesh=None):
        import prompt_tuning_jax as ptj

        return ptj.from_pretrained(self.path, dtype=_dtype(self.dtype), param_dtype=_dtype(self.param_dtype),
                                   mesh=mesh, remat=self.remat)

    def load_tokenizer(self):
        import prompt_tuning_jax as ptj

        return ptj.load_tokenizer(self.tokenizer or self.path, padding_side=self.padding_side)


@dataclasses.dataclass
class PromptSpec:
    """The prompt: length P, initializer, placement and head.

    init: random_uniform (in [0, scale)) | sampled_vocab (first `population_size`
    rows) | class_labels (`class_labels`, then sampled vocab) | string (`text`,
    then sampled vocab) | file (`file`, a [P, H] .npy).
    head: None (LM head: rank classification / generation) or "linear" (`num_labels`).
    """

    length: int = 100
    init: str = "class_labels"
    placement: str = "prefix"
    scale: float = 0.5
    population_size: int = 5000
    class_labels: Sequence[str] | None = None
    text: str | None = None
    file: str | None = None
    head: str | None = None
    num_labels: int | None = None
    regression: bool = False
    before_eos: bool = False
    num_tasks: int = 1
    seed: int = 0

    def initializer(self, model, tokenizer):
        from prompt_tuning_jax.prompts import initializers as inits

        table = model.embedding_table
        sampled = inits.from_sample_of_embeddings(table, population_size=min(self.population_size, table.shape[0]))
        if self.init == "random_uniform":
            return inits.random_uniform(self.scale)
        if self.init == "sampled_vocab":
            return sampled
        if self.init == "class_labels":
            if not self.class_labels:
                raise ValueError("init='class_labels' needs CLASS_LABELS (the verbalizers, e.g. ['negative', "
                                 "'positive']); or use the task's label names")
            return inits.from_class_labels(table, tokenizer, list(self.class_labels), sampled)
        if self.init == "string":
            if not self.text:
                raise ValueError("init='string' needs the text to embed (PromptSpec.text)")
            return inits.from_string(table, tokenizer, self.text, sampled)
        if self.init == "file":
            if not self.file:
                raise ValueError("init='file' needs PROMPT_FILE (a [P, H] .npy)")
            return inits.from_npy(self.file)
        raise ValueError(f"unknown prompt init {self.init!r}; use one of {INIT_KINDS}")

    def build(self, model, tokenizer):
        import prompt_tuning_jax as ptj

        return ptj.with_prompt(model, self.length, self.initializer(model, tokenizer), placement=self.placement,
                               head=self.head, num_labels=self.num_labels, regression=self.regression,
                               num_tasks=self.num_tasks, before_eos=self.before_eos, seed=self.seed)


def _labels_for(task, tokenizer, model, lengths):
    """Token ids [C, L] and mask of each class's verbalizer, tokenized like targets."""
    from prompt_tuning_jax.data import pipeline

    examples = [{"inputs": "", "targets": name, "label": i} for i, name in enumerate(task.label_names)]
    tok = pipeline.tokenize(examples, tokenizer, max_input_length=8, max_target_length=lengths["targets"],
                            target_prefix=_target_prefix(model))
    width = max(len(t) for t in tok.target_ids)
    ids = np.zeros((len(examples), width), np.int32)
    mask = np.zeros_like(ids)
    for i, t in enumerate(tok.target_ids):
        ids[i, :len(t)], mask[i, :len(t)] = t, 1
    return ids, mask


def _target_prefix(model) -> str:
    return " " if model.config.model_type == "gpt2" else ""


def _objective(prompt: PromptSpec, task) -> str:
    if prompt.head is None:
        return "lm"
    return "regression" if task.kind == "regression" else "classification"


def _tokenize(task, split, tokenizer, model, lengths, limit=None, truncate="right"):
    from prompt_tuning_jax.data import pipeline

    return pipeline.tokenize_task(task, split, tokenizer, limit=limit, max_input_length=lengths["inputs"],
                                  max_target_length=lengths.get("targets", 8), truncate=truncate,
                                  target_prefix=_target_prefix(model))


def _complete_prompt(prompt: PromptSpec, task) -> PromptSpec:
    """Fills what the task knows: the head's number of labels, and the class labels to initialise from."""
    if prompt.head == "linear" and prompt.num_labels is None:
        regression = task.kind == "regression"
        prompt = dataclasses.replace(prompt, num_labels=1 if regression else task.num_classes, regression=regression)
    if prompt.init == "class_labels" and not prompt.class_labels:
        prompt = dataclasses.replace(prompt, class_labels=list(task.label_names))
    return prompt


def _check_lengths(lengths):
    if not isinstance(lengths, dict) or "inputs" not in lengths:
        raise ValueError(f"TASK_FEATURE_LENGTHS must be a dict like {{'inputs': 128, 'targets': 8}}, got {lengths!r}")


def train(model_dir: str, model: ModelSpec, prompt: PromptSpec, task: str | Sequence[str],
          feature_lengths: dict[str, int], batch_size: int, steps: int, *, optimizer=None,
          task_overrides: dict[str, Any] | None = None, mixture_rates: Sequence[float] | None = None,
          train_split: str = "train", eval_split: str | None = "validation", eval_every: int = 0,
          eval_batch_size: int | None = None, eval_limit: int | None = None, checkpoint_every: int = 0,
          keep: int = 3, log_every: int = 10, accum_steps: int = 1, mesh_shape: Sequence[int] = (-1, 1),
          seed: int = 0, truncate: str = "right", prefetch: int = 2, progress: bool = True) -> dict:
    """Trains a prompt (and head) on a task or a mixture; writes everything under `model_dir`.

    `task` is MIXTURE_OR_TASK_NAME: one task name, or a list of names for a
    multi-task mixture (each task gets its own prompt; `prompt.num_tasks` is set).
    Returns fit()'s summary plus the paths written.
    """
    from prompt_tuning_jax.data import EvalIterator, TrainIterator, get_task
    from prompt_tuning_jax import partitioning
    from prompt_tuning_jax.training import optim, trainer as trainer_lib

    _check_lengths(feature_lengths)
    names = [task] if isinstance(task, str) else list(task)
    tasks = [get_task(n, **dict(task_overrides or {})) for n in names]
    if len(tasks) > 1:
        prompt = dataclasses.replace(prompt, num_tasks=len(tasks))
    prompt = _complete_prompt(prompt, tasks[0])
    mesh = partitioning.make_mesh(*mesh_shape)
    base = model.load(mesh=mesh)
    tokenizer = model.load_tokenizer()
    prompted = prompt.build(base, tokenizer)
    objective = _objective(prompt, tasks[0])
    tx = optimizer if optimizer is not None else optim.make_optimizer(total_steps=steps)
    trainer = trainer_lib.Trainer(prompted, tx, objective=objective, mesh=mesh, accum_steps=accum_steps)
    batcher_kw = dict(padding_side=model.padding_side)
    train_parts = [_tokenize(t, train_split, tokenizer, base, feature_lengths, truncate=truncate) for t in tasks]
    batches = TrainIterator(train_parts if len(train_parts) > 1 else train_parts[0], batch_size,
                            rates=mixture_rates, seed=seed, **batcher_kw)
    evaluators = []  # (task, batches, label ids, label mask) for every task of the mixture
    for k, t in enumerate(tasks):
        if not eval_split or t.kind == "generation":
            continue
        labels = (_labels_for(t, tokenizer, base, feature_lengths) if objective == "lm" and
                  t.kind == "classification" else (None, None))
        eval_tok = _tokenize(t, eval_split, tokenizer, base, feature_lengths, limit=eval_limit, truncate=truncate)
        evaluators.append((t, EvalIterator(eval_tok, eval_batch_size or batch_size, task_index=k, **batcher_kw),
                           *labels))

    def evaluate(tr):
        if len(evaluators) == 1:
            t, b, ids, mask = evaluators[0]
            return tr.evaluate(b, t, ids, mask)
        return {f"{t.name}/{k}": v for t, b, ids, mask in evaluators for k, v in tr.evaluate(b, t, ids, mask).items()}

    if jax.process_index() == 0:
        os.makedirs(model_dir, exist_ok=True)
    summary = trainer_lib.fit(trainer, batches, steps, model_dir=model_dir, evaluate=evaluate if evaluators else None,
                              eval_every=eval_every, checkpoint_every=checkpoint_every, keep=keep,
                              log_every=log_every, progress=progress, prefetch=prefetch)
    summary["prompt_file"] = os.path.join(model_dir, "prompts", "prompt_latest.npy")
    summary["model_dir"] = model_dir
    summary["prompt"] = trainer.prompt
    return summary


def evaluate(model: ModelSpec, prompt: PromptSpec, task: str, feature_lengths: dict[str, int], batch_size: int,
             checkpoint_path: str | None = None, output_dir: str | None = None, split: str = "validation",
             task_overrides: dict[str, Any] | None = None, limit: int | None = None,
             mesh_shape: Sequence[int] = (-1, 1)) -> dict[str, float]:
    """Evaluates a prompt (CHECKPOINT_PATH: a .npy, or a MODEL_DIR) on a task split with its metrics.

    Classification tasks without a head use rank classification over the label
    strings. Writes `<output_dir>/metrics.json` (and predictions) when given.
    """
    from prompt_tuning_jax.data import EvalIterator, get_task
    from prompt_tuning_jax import partitioning
    from prompt_tuning_jax.training import optim, trainer as trainer_lib

    _check_lengths(feature_lengths)
    task_obj = get_task(task, **dict(task_overrides or {}))
    prompt = _complete_prompt(prompt, task_obj)
    from_run = bool(checkpoint_path) and os.path.isdir(os.path.join(checkpoint_path, "checkpoints"))
    if from_run:  # a training MODEL_DIR: prompt and head come from its latest checkpoint
        prompt = dataclasses.replace(prompt, init="random_uniform")
    elif checkpoint_path:  # a prompt file replaces the initializer (and skips class-label lookups)
        if prompt.head is not None:
            raise ValueError(f"{checkpoint_path} holds only a prompt, but this run has a {prompt.head!r} head: "
                             "give the training MODEL_DIR as CHECKPOINT_PATH so the head is restored too")
        prompt = dataclasses.replace(prompt, init="file", file=_prompt_file(checkpoint_path))
    mesh = partitioning.make_mesh(*mesh_shape)
    base = model.load(mesh=mesh)
    tokenizer = model.load_tokenizer()
    prompted = prompt.build(base, tokenizer)
    objective = _objective(prompt, task_obj)
    label_ids = label_mask = None
    if objective == "lm":
        if task_obj.kind != "classification":
            raise ValueError(f"evaluate() scores classification tasks by rank classification; task "
                             f"{task_obj.name} is {task_obj.kind} (use infer() to generate text)")
        label_ids, label_mask = _labels_for(task_obj, tokenizer, base, feature_lengths)
    trainer = trainer_lib.Trainer(prompted, optim.make_optimizer("sgd", 0.0), objective=objective, mesh=mesh)
    if from_run:
        from prompt_tuning_jax.training.checkpoint import Checkpointer

        ckpt = Checkpointer(checkpoint_path, keep=None)
        trainer.trainable = ckpt.restore_trainable(trainer.trainable)
        ckpt.close()
    tok = _tokenize(task_obj, split, tokenizer, base, feature_lengths, limit=limit)
    metrics = trainer.evaluate(EvalIterator(tok, batch_size, padding_side=model.padding_side), task_obj,
                               label_ids, label_mask)
    metrics = {k: float(v) for k, v in metrics.items()}
    if output_dir and jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump({"task": task_obj.name, "split": split, "examples": len(tok), **metrics}, f, indent=2)
    return metrics


def _prompt_file(checkpoint_path: str) -> str:
    if os.path.isdir(checkpoint_path):
        path = os.path.join(checkpoint_path, "prompts", "prompt_latest.npy")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{checkpoint_path} has no prompts/prompt_latest.npy: is it a MODEL_DIR "
                                    "of a finished training run?")
        return path
    if not os.path.exists(checkpoint_path):
        raise FileNotFoundError(f"CHECKPOINT_PATH {checkpoint_path} does not exist (give a .npy prompt or a MODEL_DIR)")
    return checkpoint_path
