"""Checkpoints (orbax) of the trainable state only, plus the prompt as `.npy`.

A checkpoint holds the trainable state (prompt, head), the optimizer state,
the step and the data position (JSON), so a resumed run continues exactly where
it stopped. The frozen model is never written: it is the `INITIAL_CHECKPOINT_PATH`.
Every save also exports the prompt as `prompts/prompt_<step>.npy` (and
`prompt_latest.npy`), written atomically; only process 0 writes those files.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from prompt_tuning_jax import files
from prompt_tuning_jax.partitioning import host_value
from prompt_tuning_jax.prompts.io import save_prompt


class Checkpointer:
    """Saves to and restores from `<directory>/checkpoints/<step>/`, keeping the newest `keep` (None: all)."""

    def __init__(self, directory: str | os.PathLike, keep: int | None = 3):
        self.directory = files.absolute(directory)  # a local folder or gs://bucket/run
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(os.path.join(self.directory, "checkpoints"), options=options,
                                             item_names=("trainable", "opt_state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, trainable, opt_state, meta: dict[str, Any]) -> None:
        """Saves (all processes must call this) and exports the prompt from process 0."""
        self.manager.save(step, args=ocp.args.Composite(
            trainable=ocp.args.StandardSave(trainable), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave({**meta, "step": int(step)})), force=True)
        self.manager.wait_until_finished()
        self.export_prompt(step, trainable)

    def export_prompt(self, step: int, trainable) -> None:
        array = host_value(trainable["soft_prompt"])
        if jax.process_index() != 0:
            return
        folder = os.path.join(self.directory, "prompts")
        save_prompt(os.path.join(folder, f"prompt_{step}.npy"), array)
        save_prompt(os.path.join(folder, "prompt_latest.npy"), array)

    def restore(self, trainable_like, opt_state_like, step: int | None = None):
        """-> (trainable, opt_state, meta) from `step` (default: latest), placed like the given templates."""
        step = self.latest_step() if step is None else step
        abstract = lambda tree: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            trainable=ocp.args.StandardRestore(abstract(trainable_like)),
            opt_state=ocp.args.StandardRestore(abstract(opt_state_like)),
            meta=ocp.args.JsonRestore()))
        return restored["trainable"], restored["opt_state"], dict(restored["meta"])

    def restore_trainable(self, trainable_like, step: int | None = None):
        """Only the trainable state (prompt and head) of `step` (default: latest), e.g. for evaluation."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}/checkpoints")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                trainable_like)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            trainable=ocp.args.StandardRestore(abstract)))
        return restored["trainable"]

    def close(self):
        self.manager.close()
