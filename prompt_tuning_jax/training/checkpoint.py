"""Checkpoints (orbax) of the trainable state only, plus the prompt as `.npy`.

A checkpoint holds the trainable state (prompt, head), the optimizer state,
the step and the data position (JSON), so a resumed run continues exactly where
it stopped. The frozen model is never written: it is the `INITIAL_CHECKPOINT_PATH`.
Every save also exports the prompt as `prompts/prompt_<step>.npy` (and
`prompt_latest.npy`), written atomically; only process 0 writes those files.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from prompt_tuning_jax import files
from prompt_tuning_jax.partitioning import host_value
from prompt_tuning_jax.prompts.io import save_prompt
from prompt_tuning_jax.training import watchdog


logger = logging.getLogger(__name__)


class DamagedCheckpoint(ValueError):
    """A checkpoint folder that cannot be read back (partial write, damaged files)."""


class Checkpointer:
    """Saves to and restores from `<directory>/checkpoints/<step>/`, keeping the newest `keep` (None: all)."""

    def __init__(self, directory: str | os.PathLike, keep: int | None = 3):
        import orbax.checkpoint as ocp  # imported here: an eval without checkpoints never needs orbax (0.2 s)
        self.directory = files.absolute(directory)  # a local folder or gs://bucket/run
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(os.path.join(self.directory, "checkpoints"), options=options,
                                             item_names=("trainable", "opt_state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, trainable, opt_state, meta: dict[str, Any]) -> None:
        """Saves (all processes must call this) and exports the prompt from process 0."""
        import orbax.checkpoint as ocp
        try:
            self.manager.save(step, args=ocp.args.Composite(
                trainable=ocp.args.StandardSave(trainable), opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave({**meta, "step": int(step)})), force=True)
            self.manager.wait_until_finished()
        except Exception as e:  # tensorstore reports a full disk as RESOURCE_EXHAUSTED ... os_error_code='28'
            if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) or "os_error_code='28'" in str(e):
                raise OSError(errno.ENOSPC, f"No space left on device while saving checkpoint step {step} in "
                                            f"{self.directory}/checkpoints; the earlier checkpoints are intact: free "
                                            "space and run the same command to resume") from None
            raise
        watchdog.note_checkpoint(step, self.directory)
        self.export_prompt(step, trainable)

    def export_prompt(self, step: int, trainable) -> None:
        if "soft_prompt" not in trainable:  # a baseline without a prompt (METHOD probe, full, ...)
            return
        array = host_value(trainable["soft_prompt"])
        if jax.process_index() != 0:
            return
        folder = os.path.join(self.directory, "prompts")
        save_prompt(os.path.join(folder, f"prompt_{step}.npy"), array)
        save_prompt(os.path.join(folder, "prompt_latest.npy"), array)

    def restore(self, trainable_like, opt_state_like, step: int | None = None):
        """-> (trainable, opt_state, meta) from `step` (default: latest), placed like the given templates."""
        import orbax.checkpoint as ocp
        step = self.latest_step() if step is None else step
        self.check_prompt_shape(step, trainable_like)
        abstract = lambda tree: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
        restored = self._restore(step, ocp.args.Composite(
            trainable=ocp.args.StandardRestore(abstract(trainable_like)),
            opt_state=ocp.args.StandardRestore(abstract(opt_state_like)),
            meta=ocp.args.JsonRestore()))
        watchdog.note_checkpoint(step, self.directory)
        return restored["trainable"], restored["opt_state"], dict(restored["meta"])

    def _restore(self, step: int, args):
        try:
            return self.manager.restore(step, args=args)
        except Exception as e:  # orbax and tensorstore errors are long, name no setting, and are not ours to show
            if "structures do not match" in str(e) or "Requested shape" in str(e):  # another setup, not damage
                raise ValueError(f"the checkpoint of step {step} in {self.directory}/checkpoints holds other "
                                 "trainable variables than this run: resume with the METHOD, PROMPT_LENGTH and "
                                 "head it was trained with, or use a new MODEL_DIR") from e
            logger.debug("checkpoint step %d cannot be read: %r", step, e)  # the library's words, for --verbose
            raise DamagedCheckpoint(f"the checkpoint of step {step} in {self.directory}/checkpoints cannot be read "
                                    "(a file in it is damaged, cut short or missing): use a new MODEL_DIR, or move "
                                    "that step's folder away to resume from an older one") from e

    def check_prompt_shape(self, step: int | None, trainable_like) -> None:
        """The prompt exported with checkpoint `step` must have this run's prompt shape (PROMPT_LENGTH, width)."""
        path = os.path.join(self.directory, "prompts", f"prompt_{step}.npy")
        if step is None or "soft_prompt" not in trainable_like or not files.exists(path):
            return
        saved = np.load(io.BytesIO(files.read_bytes(path)), allow_pickle=False).shape
        wanted = tuple(trainable_like["soft_prompt"].shape)
        if saved != wanted:
            raise ValueError(f"MODEL_DIR {self.directory} holds a run whose prompt has shape {saved}, but this "
                             f"run's prompt has shape {wanted} (PROMPT_LENGTH {wanted[-2]}, width {wanted[-1]}): "
                             f"resume with PROMPT_LENGTH={saved[-2]} and the same model, or use a new MODEL_DIR")

    def restore_newest_intact(self, trainable_like, opt_state_like):
        """`restore` of the newest checkpoint that reads back. Damaged newer ones are set aside in
        `checkpoints_damaged/<step>-<time>/` (moved on disk; in a bucket copied there, then removed from
        `checkpoints/`), so that saving that step again works, never deleted; the run says so."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = self.restore(trainable_like, opt_state_like, step)
            except DamagedCheckpoint:
                where = self._set_aside(step)
                logger.warning("checkpoint step %d in %s/checkpoints cannot be read (a file in it is damaged, cut "
                               "short or missing): set aside in %s", step, self.directory, where)
                continue
            if step != steps[0]:
                logger.warning("resuming from step %d, the newest intact checkpoint in %s/checkpoints (newer ones "
                               "are in checkpoints_damaged/)", step, self.directory)
            return restored
        raise DamagedCheckpoint(f"no checkpoint in {self.directory}/checkpoints can be read (steps {steps}, now "
                                f"in checkpoints_damaged/): use a new MODEL_DIR to start over")

    def _set_aside(self, step: int) -> str:
        """Moves a damaged step's folder to checkpoints_damaged/ (process 0; the others wait) -> where it went."""
        source = os.path.join(self.directory, "checkpoints", str(step))
        target = os.path.join(self.directory, "checkpoints_damaged", f"{step}-{int(time.time())}")
        if jax.process_index() == 0:
            if files.is_local(source):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(source, target)
            else:
                files.copy_folder(source, target)  # every object copied before any is removed
                files.remove_folder(source)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"ptj_set_aside_{step}")
        self.manager.reload()
        return target

    def restore_trainable(self, trainable_like, step: int | None = None):
        """Only the trainable state (prompt and head) of `step` (default: latest), e.g. for evaluation."""
        import orbax.checkpoint as ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}/checkpoints")
        self.check_prompt_shape(step, trainable_like)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                trainable_like)
        restored = self._restore(step, ocp.args.Composite(trainable=ocp.args.StandardRestore(abstract)))
        return restored["trainable"]

    def close(self):
        self.manager.close()
