"""What runs between training steps, one small hook per job (see `loop.py`).

In the order `standard_hooks` gives them, which is the order they run after a step:

    RecordHook      every log_every steps: fetch the metric sums, log loss, grad norm, examples/s
    ProgressHook    every step: the progress bar
    EvalHook        every eval_every steps (also at step 0 of a fresh run and at the last step)
    CheckpointHook  every checkpoint_every steps, and at the end (preempted or not)
    PreemptionHook  SIGTERM (a TPU VM's preemption notice) stops the loop after the current step
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from typing import Any, Callable

import jax

from prompt_tuning_jax.files import atomic_write
from prompt_tuning_jax.training.loop import Hook, Loop


class RecordHook(Hook):
    """Training metrics every `every` steps (and at the last), into the run record when there is one."""

    def __init__(self, record=None, every: int = 10):
        self.record, self.every = record, every

    def due(self, loop: Loop) -> bool:
        return loop.step % self.every == 0 or loop.step == loop.steps

    def start(self, loop: Loop) -> None:
        if self.record is not None and loop.step > 0:
            self.record.truncate_after(loop.step)  # a resumed run redoes the steps after its checkpoint

    def step(self, loop: Loop) -> None:
        loop.check_finite()
        sums = jax.device_get(jax.tree.map(lambda *xs: sum(xs), *loop.pending))
        n_steps, loop.pending, loop.checked = len(loop.pending), [], 0
        n_steps = max(n_steps - int(round(float(sums.get("nonfinite_steps", 0)))), 1)  # grad_norm is 0 there
        seconds = time.perf_counter() - loop.clock - loop.paused
        loop.last_train = {"loss": sums["loss_sum"] / max(sums["denominator"], 1e-9),
                           "grad_norm": float(sums["grad_norm"]) / n_steps,
                           "examples_per_s": loop.examples / seconds, "tokens_per_s": loop.tokens / seconds}
        if "regularizer" in sums:  # a method's extra loss term (METHOD 'wayward'), per step
            loop.last_train["regularizer"] = float(sums["regularizer"]) / n_steps
        if "correct" in sums:
            loop.last_train["accuracy"] = 100.0 * sums["correct"] / max(sums["examples"], 1e-9)
        loop.restart_clock()
        if self.record is not None:
            self.record.log(loop.step, "train", loop.last_train)

    def end(self, loop: Loop) -> None:
        if self.record is None:
            return
        self.record.write_summary()
        if loop.best and jax.process_index() == 0:
            atomic_write(os.path.join(self.record.directory, "best.json"), json.dumps(loop.best, indent=2))
        self.record.close()


class ProgressHook(Hook):
    """A tqdm bar on process 0 with the step, loss, examples/s and the latest evaluation."""

    every = 1

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and jax.process_index() == 0
        self.bar = None

    def start(self, loop: Loop) -> None:
        from tqdm.auto import tqdm

        # In a log file (a TPU worker's nohup log, a batch job) every refresh is a new line: one a minute.
        refresh_s = 0.1 if sys.stderr.isatty() else 60.0
        self.bar = tqdm(total=loop.steps, initial=loop.step, disable=not self.enabled, dynamic_ncols=True,
                        desc="train", mininterval=refresh_s, maxinterval=max(refresh_s, 10.0))

    def step(self, loop: Loop) -> None:
        if loop.last_train:
            self.bar.set_postfix(loss=f"{loop.last_train['loss']:.4f}",
                                 ex_s=f"{loop.last_train['examples_per_s']:.1f}",
                                 **{k: f"{v:.3f}" for k, v in loop.last_eval.items()}, refresh=False)
        self.bar.update(1)

    def end(self, loop: Loop) -> None:
        self.bar.close()

    def abort(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.close()  # ends the bar's line, so an error message starts on a line of its own


class EvalHook(Hook):
    """`evaluate(trainer) -> metrics` every `every` steps, at step 0 of a fresh run, and at the last step.

    The best step by `main_metric` (default: the first metric) is kept in `loop.best`.
    With every=0 it runs only at the last step.
    """

    pauses_clock = True

    def __init__(self, evaluate: Callable[[Any], dict[str, float]], every: int = 0, record=None,
                 main_metric: str | None = None, at_start: bool = True):
        self.evaluate, self.every, self.record = evaluate, every, record
        self.main_metric, self.at_start = main_metric, at_start

    def due(self, loop: Loop) -> bool:
        return super().due(loop) or loop.step == loop.steps

    def start(self, loop: Loop) -> None:
        if self.every and self.at_start and loop.step == 0:
            self.step(loop)  # the starting point, so the record shows the metric rising

    def step(self, loop: Loop) -> None:
        metrics = self.evaluate(loop.trainer)
        key = self.main_metric or next(iter(metrics))
        if not loop.best or metrics[key] > loop.best["value"]:
            loop.best = {"step": loop.step, "metric": key, "value": float(metrics[key]), "metrics": metrics}
        if self.record is not None:
            self.record.log(loop.step, "eval", metrics)
        loop.last_eval = metrics


class CheckpointHook(Hook):
    """Saves trainable state, optimizer state and `loop.meta()` every `every` steps and at the end; then
    flushes the run record (a bucket's rows wait for it), so a resumed run loses no logged row."""

    pauses_clock = True

    def __init__(self, checkpointer, every: int = 0, record=None):
        self.checkpointer, self.every, self.record = checkpointer, every, record

    def start(self, loop: Loop) -> None:
        latest = self.checkpointer.latest_step()
        if latest is not None:
            loop.last_checkpoint = f"step {latest} in {self.checkpointer.directory}/checkpoints"

    def step(self, loop: Loop) -> None:
        loop.check_finite()  # never save after a NaN step under nonfinite='stop'
        self.checkpointer.save(loop.step, loop.trainer.trainable, loop.trainer.opt_state, loop.meta())
        loop.last_checkpoint = f"step {loop.step} in {self.checkpointer.directory}/checkpoints"
        if self.record is not None:
            self.record.flush()

    def end(self, loop: Loop) -> None:
        if self.checkpointer.latest_step() != loop.step:
            self.step(loop)
        self.checkpointer.close()


class PreemptionHook(Hook):
    """Turns SIGTERM into `loop.stop('preempted')` after the current step (then the checkpoint is saved)."""

    every = 1

    def __init__(self):
        self.requested, self._old = False, None

    def start(self, loop: Loop) -> None:
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._old = None

    def _handle(self, signum, frame):
        self.requested = True

    def step(self, loop: Loop) -> None:
        if self.requested:
            loop.stop("preempted")

    def end(self, loop: Loop) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


@dataclasses.dataclass
class StandardHooks:
    hooks: list
    checkpointer: Any  # resume from it: fit(..., resume_from=checkpointer)


def standard_hooks(model_dir: str | None, *, evaluate=None, eval_every: int = 0, checkpoint_every: int = 0,
                   keep: int = 3, log_every: int = 10, progress: bool = True, main_metric: str | None = None,
                   eval_at_start: bool = True, wandb_project: str | None = None,
                   config: dict | None = None) -> StandardHooks:
    """The hooks of a run writing to `model_dir` (None: no files, no checkpoints), in their running order.
    wandb_project: also log to W&B, with `config` as the run's config."""
    from prompt_tuning_jax.training.checkpoint import Checkpointer
    from prompt_tuning_jax.training.records import RunRecord

    record = RunRecord(model_dir, wandb_project=wandb_project, config=config) if model_dir else None
    checkpointer = Checkpointer(model_dir, keep) if model_dir else None
    hooks: list[Hook] = [RecordHook(record, log_every), ProgressHook(progress)]
    if evaluate is not None:
        hooks.append(EvalHook(evaluate, eval_every, record, main_metric, eval_at_start))
    if checkpointer is not None:
        hooks.append(CheckpointHook(checkpointer, checkpoint_every, record))
    hooks.append(PreemptionHook())
    return StandardHooks(hooks, checkpointer)
