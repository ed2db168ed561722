"""The training loop: take a batch, step, then run the hooks that are due.

    hooks = standard_hooks(model_dir, evaluate=..., eval_every=100, checkpoint_every=100)
    summary = fit(trainer, TrainIterator(...), steps=1000, hooks=hooks.hooks, resume_from=hooks.checkpointer)

Everything that is not the step lives in a hook (`hooks.py`): evaluation,
checkpoints, the run record, the progress bar, preemption. A hook sees the
`Loop` (the trainer, the step, the metrics not yet logged, the best evaluation
so far) and may ask it to stop. Time spent in hooks marked `pauses_clock`
(evaluation, checkpoints) does not count against throughput.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Iterator, Sequence

import jax
import numpy as np

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Loop:
    """What hooks see and share while `fit` runs."""

    trainer: Any
    steps: int
    stream: Any = None                 # the batch iterator (with state() when resumable)
    pending: list = dataclasses.field(default_factory=list)  # on-device metric sums not yet logged
    examples: int = 0                  # real examples / tokens since the last log
    tokens: int = 0
    clock: float = dataclasses.field(default_factory=time.perf_counter)  # start of the current log window
    paused: float = 0.0                # seconds of clock-pausing hooks in the current window
    last_train: dict = dataclasses.field(default_factory=dict)
    last_eval: dict = dataclasses.field(default_factory=dict)
    best: dict = dataclasses.field(default_factory=dict)
    stop_reason: str | None = None
    nonfinite: str = "stop"            # a NaN/Inf loss or gradient: 'stop' the run, or 'skip' the step
    skipped: int = 0                   # steps whose loss or gradient was not finite (state left unchanged)
    checked: int = 0                   # how many of `pending` check_finite has seen
    last_checkpoint: str | None = None

    @property
    def step(self) -> int:
        return self.trainer.step

    def stop(self, reason: str) -> None:
        self.stop_reason = reason

    def restart_clock(self) -> None:
        self.examples = self.tokens = 0
        self.clock, self.paused = time.perf_counter(), 0.0

    def meta(self) -> dict:
        """What a checkpoint stores besides the arrays: the data position and the best evaluation."""
        state = self.stream.state() if hasattr(self.stream, "state") else None
        return {"data": state, "best": self.best}

    def summary(self) -> dict[str, Any]:
        return {"step": self.step, "train": self.last_train, "eval": self.last_eval, "best": self.best,
                "preempted": self.stop_reason == "preempted", "nonfinite_steps": self.skipped}

    def check_finite(self) -> None:
        """Counts the steps since the last check whose loss or gradient was NaN or Inf (the step left the
        state unchanged); with nonfinite='stop' raises NonFiniteError. Reads only metrics already computed."""
        new = [m["nonfinite_steps"] for m in self.pending[self.checked:] if "nonfinite_steps" in m]
        self.checked = len(self.pending)
        bad = int(round(float(np.sum(jax.device_get(new))))) if new else 0
        if not bad:
            return
        self.skipped += bad
        where = f"{bad} of the {len(new)} steps up to step {self.step}"
        if self.nonfinite == "stop":
            raise NonFiniteError(
                f"the loss or a gradient was NaN or Inf in {where}; those steps left the prompt unchanged. Last "
                f"good checkpoint: {self.last_checkpoint or 'none (no checkpoint was saved)'}. Lower the learning "
                "rate or check the data, or skip such steps with --gin.ptj.TrainSpec.nonfinite=\"'skip'\"")
        logger.warning("skipped %s: NaN or Inf loss or gradient (%d skipped in all)", where, self.skipped)


class NonFiniteError(FloatingPointError):
    """A NaN or Inf loss or gradient under nonfinite='stop'."""


class Hook:
    """Runs between steps when `due`; `start` before the first step, `end` after the last."""

    every: int = 0
    pauses_clock = False

    def due(self, loop: Loop) -> bool:
        return bool(self.every) and loop.step % self.every == 0

    def start(self, loop: Loop) -> None:
        pass

    def step(self, loop: Loop) -> None:
        pass

    def end(self, loop: Loop) -> None:
        pass

    def abort(self, loop: Loop) -> None:
        """The run stopped on an error (after `start`): release what `end` would, write nothing."""


def resume(trainer, batches, checkpointer) -> dict:
    """Restores the trainer (prompt, head, optimizer, step) and the data position from the newest
    intact checkpoint, if there is one; returns the checkpoint's meta ({} for a fresh run)."""
    if checkpointer is None or checkpointer.latest_step() is None:
        return {}
    trainer.trainable, trainer.opt_state, meta = checkpointer.restore_newest_intact(trainer.trainable,
                                                                                    trainer.opt_state)
    trainer.step = int(meta["step"])
    if meta.get("data") is not None and hasattr(batches, "restore"):
        batches.restore(meta["data"])
    return meta


def fit(trainer, batches: Iterator[dict], steps: int, hooks: Sequence[Hook] = (), *, resume_from=None,
        prefetch: int = 2, nonfinite: str = "stop") -> dict[str, Any]:
    """Trains `trainer` to `steps` total steps -> {'step', 'train', 'eval', 'best', 'preempted'}.

    batches: this process's batch dicts, with `state()` / `restore(state)` to resume
    (`data.TrainIterator`). resume_from: a `Checkpointer` to continue from; the
    data position is restored before `prefetch` batches are read ahead in a thread.
    nonfinite: 'stop' (NonFiniteError) or 'skip' on a step whose loss or gradient is NaN or Inf (see
    `Loop.check_finite`; either way that step leaves the state unchanged).
    """
    if nonfinite not in ("stop", "skip"):
        raise ValueError(f"nonfinite must be 'stop' or 'skip', got {nonfinite!r} (ptj.TrainSpec.nonfinite)")
    from prompt_tuning_jax.data.pipeline import Prefetch

    loop = Loop(trainer, steps, best=resume(trainer, batches, resume_from).get("best") or {}, nonfinite=nonfinite)
    loop.stream = Prefetch(batches, size=prefetch) if prefetch else batches
    try:
        for hook in hooks:
            hook.start(loop)
        loop.restart_clock()
        while loop.step < steps and loop.stop_reason is None:
            local = next(loop.stream)
            loop.examples += int(np.count_nonzero(local["weight"] > 0)) * jax.process_count()  # real rows
            loop.tokens += int(np.sum(local["attention_mask"])) * jax.process_count()
            loop.pending.append(trainer.train_step(local))
            _run_due(hooks, loop)
        for hook in hooks:
            hook.end(loop)
    except BaseException:
        for hook in hooks:
            hook.abort(loop)
        raise
    finally:
        if prefetch:
            loop.stream.close()
    return loop.summary()


def _run_due(hooks: Sequence[Hook], loop: Loop) -> None:
    for hook in hooks:
        if hook.due(loop):
            started = time.perf_counter()
            hook.step(loop)
            if hook.pauses_clock:
                loop.paused += time.perf_counter() - started
