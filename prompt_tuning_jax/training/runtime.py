"""A prompted model on a device mesh: the state that training, evaluation and inference share.

    state = MeshState(prompted, mesh)           # split, then placed
    state.restore("runs/sst2")                  # or a [P, H] .npy: prompt (and head) from a run
    batch = state.put_batch(local_batch)        # this process's rows -> global arrays over `data`
    live = state.merge()                        # a PromptedModel again (inside jit, or for notebooks)

The model is split once into its trainable state (the prompt, and a head if
any: `Trainable` variables) and its frozen weights (everything else). The
trainable state is replicated; the frozen weights are sharded by their logical
axes (`partitioning.DEFAULT_RULES`); batches are split over the mesh's `data`
axis, each process supplying only its own rows. Both states are pure nested
dicts of jax.Arrays, so they go straight into `jax.jit` with explicit shardings.

An abstract prompted model (`nnx.eval_shape`: ShapeDtypeStruct leaves, no weights)
gives an abstract state: ShapeDtypeStructs that carry their shardings, for
lowering and compiling the programs ahead of time (`Trainer.lower`,
`Predictor.lower`, `Generator.lower`, `experiments.planning`).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from prompt_tuning_jax import files, partitioning
from prompt_tuning_jax.models import t5x
from prompt_tuning_jax.prompts.io import load_prompt
from prompt_tuning_jax.training.checkpoint import Checkpointer
from prompt_tuning_jax.variables import Trainable

BATCH_KEYS = ("input_ids", "attention_mask", "target_ids", "target_mask", "label", "task_index", "weight")


class MeshState:
    """`graphdef`, `trainable` and `frozen` (sharded) state of a prompted model, with their shardings.

    trainable: an nnx filter of what trains (`methods.Method.trainable`; default the
    `Trainable` prompt and head). Prompt and head are replicated; model weights that
    train (fine-tuning baselines) keep the sharding of their logical axes.
    """

    def __init__(self, prompted: nnx.Module, mesh=None, rules=None, trainable=Trainable):
        self.mesh = mesh if mesh is not None else partitioning.make_mesh()
        self.rules = rules or partitioning.DEFAULT_RULES
        self.graphdef, trainable, frozen = nnx.split(prompted, trainable, ...)
        self.replicated = partitioning.replicated(self.mesh)
        self.trainable_shardings = nnx.to_pure_dict(jax.tree.map(
            lambda v: self.replicated if isinstance(v, Trainable)
            else NamedSharding(self.mesh, partitioning.variable_spec(v, self.mesh, self.rules)),
            trainable, is_leaf=lambda x: isinstance(x, nnx.Variable)))
        self.frozen_shardings = partitioning.state_shardings(frozen, self.mesh, self.rules)
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.trainable = place(nnx.to_pure_dict(trainable), self.trainable_shardings)
        self.frozen = place(nnx.to_pure_dict(frozen), self.frozen_shardings)

    @property
    def is_abstract(self) -> bool:
        """Whether this state holds shapes only (built from `nnx.eval_shape`), for compiling ahead of time."""
        return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(self.frozen))

    def abstract_batch(self, shapes: dict[str, tuple[tuple[int, ...], object]]) -> dict[str, jax.ShapeDtypeStruct]:
        """{key: (global shape, dtype)} -> ShapeDtypeStructs split over `data`, like `put_batch`'s arrays."""
        return {key: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding)
                for key, (shape, dtype) in shapes.items()}

    def merge(self, trainable=None) -> nnx.Module:
        """The live prompted model with `trainable` (default: the current state)."""
        return nnx.merge(self.graphdef, self.trainable if trainable is None else trainable, self.frozen)

    @property
    def prompt(self) -> np.ndarray:
        """The current prompt, [P, H] (or [K, P, H]), as numpy on every process ([0, H] for a baseline)."""
        return partitioning.host_value((self.trainable if self.has_prompt else self.frozen)["soft_prompt"])

    @property
    def has_prompt(self) -> bool:
        """Whether a prompt trains (False for the baselines: METHOD probe, full, first/last/middle:K)."""
        return "soft_prompt" in self.trainable

    @property
    def has_head(self) -> bool:
        return "head" in self.trainable

    # --- batches -----------------------------------------------------------------------
    def check_batch(self, local_batch: dict, accum_steps: int = 1) -> None:
        """The global batch must split evenly over the data shards (and into `accum_steps` micro-batches)."""
        n = local_batch["input_ids"].shape[0] * jax.process_count()
        data = self.mesh.shape["data"]
        if n % (accum_steps * data):
            raise ValueError(f"global batch size {n} must be divisible by the {data} data shards"
                             + (f" and by accum_steps={accum_steps} x {data}" if accum_steps > 1 else "")
                             + " (change BATCH_SIZE or MESH_SHAPE)")

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows -> global arrays split over the mesh's `data` axis (keys in BATCH_KEYS)."""
        return {key: partitioning.global_rows(local_batch[key], self.batch_sharding)
                for key in BATCH_KEYS if key in local_batch}

    # --- restoring a trained prompt ------------------------------------------------------
    def restore(self, checkpoint_path: str | os.PathLike) -> None:
        """Replaces the prompt (and head) with a trained one.

        checkpoint_path: a training MODEL_DIR (its latest checkpoint: prompt and
        head), a folder holding `prompts/prompt_latest.npy`, a `.npy` prompt
        file or a prompt-tuned T5X checkpoint (`target/encoder/prompt/prompt/prompt`)
        (a prompt only: refused when this model has a head).
        """
        path = check_checkpoint_path(checkpoint_path)
        if _exists(os.path.join(path, "checkpoints")):
            ckpt = Checkpointer(path, keep=None)
            try:
                self.trainable = ckpt.restore_trainable(self.trainable)
            finally:
                ckpt.close()
            return
        if self.has_head:
            raise ValueError(f"{path} holds only a prompt, but this run has a head: give the training "
                             "MODEL_DIR as CHECKPOINT_PATH so the head is restored too")
        self._set_prompt(_prompt_file(path))

    def _set_prompt(self, path: str) -> None:
        if not self.has_prompt:
            raise ValueError(f"{path} is a prompt, but this run trains no prompt (METHOD is a baseline): give the "
                             "training MODEL_DIR as CHECKPOINT_PATH")
        current = self.trainable["soft_prompt"]
        array = load_prompt(path, expected_shape=current.shape)
        trainable = dict(self.trainable, soft_prompt=jnp.asarray(array, current.dtype))
        self.trainable = jax.device_put(trainable, self.trainable_shardings)


def place(tree, shardings):
    """Arrays -> device_put with their shardings; ShapeDtypeStructs -> ShapeDtypeStructs carrying them."""
    def one(x, sharding):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return jax.device_put(x, sharding)

    return jax.tree.map(one, tree, shardings)


def check_checkpoint_path(checkpoint_path: str | os.PathLike) -> str:
    """The path as a string; FileNotFoundError naming CHECKPOINT_PATH when there is nothing there."""
    path = os.fspath(checkpoint_path)
    if not _exists(path):
        raise FileNotFoundError(f"CHECKPOINT_PATH {path} does not exist (give a .npy prompt, a MODEL_DIR or a "
                                "prompt-tuned T5X checkpoint)")
    return path


def _exists(path: str) -> bool:
    return files.exists(path)


def _prompt_file(path: str) -> str:
    """A .npy file or a T5X checkpoint directory (its prompt variable) as given; a folder -> its
    prompts/prompt_latest.npy."""
    if not files.is_dir(path) or t5x.is_t5x_checkpoint(path):
        return path
    latest = os.path.join(path, "prompts", "prompt_latest.npy")
    if not _exists(latest):
        raise FileNotFoundError(f"{path} has no prompts/prompt_latest.npy: is it a MODEL_DIR of a finished "
                                "training run?")
    return latest
