"""The training loop: one compiled step over a device mesh, evaluation, checkpoints.

    trainer = Trainer(prompted, make_optimizer(), objective="lm", mesh=make_mesh())
    fit(trainer, TrainIterator(...), steps=1000, model_dir="runs/x", evaluate=..., eval_every=100)

The hot path is a pure function

    step(trainable, opt_state, frozen, batch) -> (trainable, opt_state, metrics)

compiled once per batch shape with `jax.jit(in_shardings=..., out_shardings=...,
donate_argnums=(0, 1))`: the trainable state (prompt, head) and its optimizer
state are replicated and donated; the frozen weights are sharded by their
logical axes, never donated and never differentiated; the batch is split over
the `data` axis, each process supplying only its own rows. Gradient
accumulation is a `lax.scan` over micro-batches inside the same step. Metrics
stay on device and are fetched only every `log_every` steps.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from prompt_tuning_jax import partitioning
from prompt_tuning_jax.training import objectives
from prompt_tuning_jax.variables import Trainable

BATCH_KEYS = ("input_ids", "attention_mask", "target_ids", "target_mask", "label", "task_index", "weight")


def _train_step(trainable, opt_state, frozen, batch, *, graphdef, tx, objective, accum_steps):
    def sums(tr, micro):
        terms = objectives.loss_terms(nnx.merge(graphdef, tr, frozen), micro, objective)
        return terms["loss_sum"], terms

    grad_fn = jax.grad(sums, has_aux=True)
    if accum_steps == 1:
        grads, terms = grad_fn(trainable, batch)
    else:
        # Row i*A + a goes to micro-batch a: each micro-batch stays spread over all data shards.
        micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
                             .swapaxes(0, 1), batch)
        zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, trainable, jax.tree.map(lambda x: x[0], micro)))

        def body(carry, mb):
            return jax.tree.map(jnp.add, carry, grad_fn(trainable, mb)), None

        (grads, terms), _ = jax.lax.scan(body, zero, micro)
    denominator = jnp.maximum(terms["denominator"], 1e-9)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = {**terms, "grad_norm": optax.tree.norm(grads)}
    return trainable, opt_state, metrics


class Trainer:
    """Holds the split state of a prompted model and its compiled step and predict functions."""

    def __init__(self, prompted, optimizer: optax.GradientTransformation, *, objective: str = "lm", mesh=None,
                 rules=None, accum_steps: int = 1):
        objectives.check_objective(objective, prompted)
        if accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
        self.mesh = mesh if mesh is not None else partitioning.make_mesh()
        self.rules = rules or partitioning.DEFAULT_RULES
        self.objective, self.accum_steps, self.tx = objective, accum_steps, optimizer
        self.graphdef, trainable, frozen = nnx.split(prompted, Trainable, ...)
        self.replicated = partitioning.replicated(self.mesh)
        self.frozen_shardings = partitioning.state_shardings(frozen, self.mesh, self.rules)
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.trainable = jax.device_put(nnx.to_pure_dict(trainable), self.replicated)
        self.frozen = jax.device_put(nnx.to_pure_dict(frozen), self.frozen_shardings)
        self.opt_state = jax.jit(optimizer.init, out_shardings=self.replicated)(self.trainable)
        self.step = 0
        step_fn = functools.partial(_train_step, graphdef=self.graphdef, tx=optimizer, objective=objective,
                                    accum_steps=accum_steps)
        self._step = jax.jit(step_fn, in_shardings=(self.replicated, self.replicated, self.frozen_shardings,
                                                    self.batch_sharding),
                             out_shardings=(self.replicated, self.replicated, self.replicated),
                             donate_argnums=(0, 1))
        self._predict = jax.jit(self._predict_fn, in_shardings=(self.replicated, self.frozen_shardings,
                                                                self.batch_sharding, self.replicated),
                                out_shardings=self.replicated)

    # --- batches ---------------------------------------------------------------------
    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows -> global arrays split over the mesh's `data` axis."""
        out = {}
        for key in BATCH_KEYS:
            if key in local_batch:
                x = np.asarray(local_batch[key])
                global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
                out[key] = jax.make_array_from_process_local_data(self.batch_sharding, x, global_shape)
        return out

    def _check_batch(self, local_batch, accum_steps=None):
        n = local_batch["input_ids"].shape[0] * jax.process_count()
        data = self.mesh.shape["data"]
        if n % ((accum_steps or self.accum_steps) * data):
            raise ValueError(f"global batch size {n} must be divisible by the {data} data shards and by "
                             f"accum_steps={self.accum_steps} x {data}")

    # --- training ----------------------------------------------------------------------
    def train_step(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """One optimizer step on a batch (this process's rows); returns on-device metric sums."""
        self._check_batch(local_batch)
        batch = self.put_batch(local_batch)
        self.trainable, self.opt_state, metrics = self._step(self.trainable, self.opt_state, self.frozen, batch)
        self.step += 1
        return metrics

    # --- inference ---------------------------------------------------------------------
    def _predict_fn(self, trainable, frozen, batch, labels):
        model = nnx.merge(self.graphdef, trainable, frozen)
        return objectives.predict_classes(model, batch, self.objective, *labels)

    def _predict_device(self, local_batch, label_ids=None, label_mask=None) -> jax.Array:
        self._check_batch(local_batch, accum_steps=1)
        labels = (None, None) if label_ids is None else (np.asarray(label_ids, np.int32),
                                                          np.asarray(label_mask, np.int32))
        return self._predict(self.trainable, self.frozen, self.put_batch(local_batch), labels)

    def predict(self, local_batch, label_ids=None, label_mask=None) -> np.ndarray:
        """Predictions for the whole global batch, on every process: [B_global].

        label_ids / label_mask [C, L]: the class strings for rank classification (LM objective).
        """
        from prompt_tuning_jax.training.checkpoint import host_value

        return host_value(self._predict_device(local_batch, label_ids, label_mask))

    def evaluate(self, batches, task, label_ids=None, label_mask=None) -> dict[str, float]:
        """Runs the task's metrics over an eval iterator (weight-0 padding rows dropped).

        Without a head, classification is rank classification over `label_ids` / `label_mask` [C, L].
        All batches are dispatched before anything is fetched: one host sync per evaluation.
        """
        from prompt_tuning_jax.training.checkpoint import host_value

        examples = batches.tokenized.examples
        if examples is None:
            raise ValueError("the eval iterator's Tokenized has no examples to take targets from")
        preds, weights, indices = [], [], []
        for local in batches:
            preds.append(self._predict_device(local, label_ids, label_mask))
            weights.append(np.asarray(local["weight"]))
            indices.append(np.asarray(local["example_index"]))
        preds = np.concatenate([host_value(p) for p in preds])  # [nb * B_global], batch-major
        weight, index = _allgather_host(np.stack(weights)), _allgather_host(np.stack(indices))
        keep = weight > 0
        preds, index = preds[keep], index[keep]
        order = np.argsort(index, kind="stable")
        targets = task.metric_targets([examples[i] for i in index[order]])
        preds = [float(p) if task.kind == "regression" else int(p) for p in preds[order]]
        return task.compute_metrics(targets, preds)

    def prompted_model(self):
        """A live PromptedModel with the current trainable state (for decoding, export, notebooks)."""
        return nnx.merge(self.graphdef, self.trainable, self.frozen)

    @property
    def prompt(self) -> np.ndarray:
        from prompt_tuning_jax.training.checkpoint import host_value

        return host_value(self.trainable["soft_prompt"])


def _allgather_host(x: np.ndarray) -> np.ndarray:
    """[num_batches, B_local] per process -> [num_batches * B_global], in global batch order."""
    if jax.process_count() == 1:
        return np.asarray(x).reshape(-1)
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.asarray(x)))  # [P, nb, B_local]
    return gathered.transpose(1, 0, 2).reshape(-1)


class _closing:
    def __init__(self, thing):
        self.thing = thing

    def __enter__(self):
        return self.thing

    def __exit__(self, *exc):
        if self.thing is not None:
            self.thing.close()


class _Preemption:
    """Turns SIGTERM (a TPU VM preemption notice) into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def fit(trainer: Trainer, batches: Iterator[dict], steps: int, *, model_dir: str | None = None,
        evaluate: Callable[[Trainer], dict[str, float]] | None = None, eval_every: int = 0,
        checkpoint_every: int = 0, keep: int = 3, log_every: int = 10, main_metric: str | None = None,
        progress: bool = True, resume: bool = True, eval_at_start: bool = True,
        prefetch: int = 2) -> dict[str, Any]:
    """Trains `trainer` to `steps` total steps, resuming from `model_dir` when it holds a checkpoint.

    batches: an iterator of this process's batch dicts with `state()` / `restore(state)`
    (e.g. `data.TrainIterator`); it is restored first, then read ahead by
    `prefetch` batches in a background thread.
    Every `eval_every` steps (and at step 0 of a fresh run) `evaluate(trainer)` runs; the best step by
    `main_metric` (default: the first metric) is recorded. Every
    `checkpoint_every` steps (and at the end, and on SIGTERM) a checkpoint is
    saved and the prompt exported. Returns {'step', 'train', 'eval', 'best', 'preempted'}.
    """
    from tqdm.auto import tqdm

    from prompt_tuning_jax.training.checkpoint import Checkpointer
    from prompt_tuning_jax.training.records import RunRecord

    ckpt = Checkpointer(model_dir, keep) if model_dir else None
    record = RunRecord(model_dir) if model_dir else None
    best: dict[str, Any] = {}
    if ckpt is not None and resume and ckpt.latest_step() is not None:
        trainer.trainable, trainer.opt_state, meta = ckpt.restore(trainer.trainable, trainer.opt_state)
        trainer.step = int(meta["step"])
        best = meta.get("best") or {}
        if "data" in meta and hasattr(batches, "restore"):
            batches.restore(meta["data"])
        if record is not None:
            record.truncate_after(trainer.step)

    from prompt_tuning_jax.data.pipeline import Prefetch

    stream = Prefetch(batches, size=prefetch) if prefetch else batches

    def meta():
        return {"data": stream.state() if hasattr(stream, "state") else None, "best": best}

    def run_eval():
        nonlocal best
        metrics = evaluate(trainer)
        key = main_metric or next(iter(metrics))
        if not best or metrics[key] > best["value"]:
            best = {"step": trainer.step, "metric": key, "value": float(metrics[key]), "metrics": metrics}
        if record is not None:
            record.log(trainer.step, "eval", metrics)
        return metrics

    if evaluate is not None and eval_every and eval_at_start and trainer.step == 0:
        last_eval = run_eval()  # the starting point, so the record shows the metric rising
    else:
        last_eval = {}
    bar = tqdm(total=steps, initial=trainer.step, disable=not progress or jax.process_index() != 0,
               dynamic_ncols=True, desc="train")
    pending, last_train = [], {}
    examples = tokens = 0
    t0 = time.perf_counter()
    preempted = False
    with _Preemption() as preemption, _closing(stream if prefetch else None):
        while trainer.step < steps:
            local = next(stream)
            examples += int(np.sum(local["weight"])) * jax.process_count()
            tokens += int(np.sum(local["attention_mask"])) * jax.process_count()
            pending.append(trainer.train_step(local))
            step = trainer.step
            if step % log_every == 0 or step == steps:
                sums = jax.device_get(jax.tree.map(lambda *xs: sum(xs), *pending))
                n_steps, pending = len(pending), []
                dt = time.perf_counter() - t0
                last_train = {"loss": sums["loss_sum"] / max(sums["denominator"], 1e-9),
                              "grad_norm": float(sums["grad_norm"]) / n_steps,
                              "examples_per_s": examples / dt, "tokens_per_s": tokens / dt}
                if "correct" in sums:
                    last_train["accuracy"] = 100.0 * sums["correct"] / max(sums["examples"], 1e-9)
                examples = tokens = 0
                t0 = time.perf_counter()
                if record is not None:
                    record.log(step, "train", last_train)
                bar.set_postfix(loss=f"{last_train['loss']:.4f}", ex_s=f"{last_train['examples_per_s']:.1f}",
                                **({k: f"{v:.3f}" for k, v in last_eval.items()} if last_eval else {}))
            bar.update(1)
            paused = time.perf_counter()  # evaluation and checkpoints do not count against throughput
            if evaluate is not None and eval_every and step % eval_every == 0:
                last_eval = run_eval()
            if ckpt is not None and checkpoint_every and step % checkpoint_every == 0:
                ckpt.save(step, trainer.trainable, trainer.opt_state, meta())
            t0 += time.perf_counter() - paused
            if preemption.requested:
                preempted = True
                break
    bar.close()
    if evaluate is not None and (not eval_every or trainer.step % eval_every) and not preempted:
        last_eval = run_eval()
    if ckpt is not None:
        if ckpt.latest_step() != trainer.step:
            ckpt.save(trainer.step, trainer.trainable, trainer.opt_state, meta())
        ckpt.close()
    if record is not None:
        record.write_summary()
        if best and jax.process_index() == 0:
            with open(os.path.join(model_dir, "best.json"), "w", encoding="utf-8") as f:
                json.dump(best, f, indent=2)
        record.close()
    return {"step": trainer.step, "train": last_train, "eval": last_eval, "best": best, "preempted": preempted}
