"""What train, evaluate and infer share: a prompted model on the mesh, and its tokenized data.

    loaded = load_prompted(ModelSpec("gpt2"), PromptSpec(length=20), tasks, mesh, checkpoint_path="runs/sst2")
    loaded.state       # MeshState: prompt (and head) replicated, frozen weights sharded
    loaded.tokenizer, loaded.model, loaded.prompt   # the tokenizer, the frozen model, the completed PromptSpec
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Sequence

import numpy as np

from prompt_tuning_jax.data import pipeline
from prompt_tuning_jax.data.demonstrations import with_demonstrations
from prompt_tuning_jax.experiments.specs import DataSpec, ModelSpec, PromptSpec
from prompt_tuning_jax.training.runtime import MeshState, check_checkpoint_path


@dataclasses.dataclass
class Loaded:
    state: MeshState
    tokenizer: Any
    model: Any            # the frozen model (a `models.base.PromptableModel`)
    prompt: PromptSpec    # completed for the task: number of labels, class labels, number of task prompts


def load_prompted(model: ModelSpec, prompt: PromptSpec, tasks: Sequence, mesh,
                  checkpoint_path: str | None = None) -> Loaded:
    """Loads the frozen model and tokenizer, builds the prompt for `tasks` and places both on `mesh`.

    checkpoint_path: a training MODEL_DIR or a `.npy` prompt; the trained prompt
    (and head) replace the initial ones, so the initializer is not even run. A PEFT adapter folder
    (as CHECKPOINT_PATH, or PromptSpec.adapter, INITIAL_ADAPTER, to start a run from) gives what METHOD
    trains instead (`methods.Method.load_adapter`: prompt tuning, LoRA, IA3).
    """
    from prompt_tuning_jax.prompts.io import is_peft_adapter

    adapter = prompt.adapter
    if adapter and not is_peft_adapter(adapter):
        raise FileNotFoundError(f"INITIAL_ADAPTER {adapter} is not a PEFT adapter folder (it has no "
                                "adapter_config.json)")
    if checkpoint_path and is_peft_adapter(checkpoint_path):
        adapter, checkpoint_path = os.fspath(checkpoint_path), None
        if prompt.head is not None:
            raise ValueError(f"CHECKPOINT_PATH {adapter} is a PEFT adapter, which holds no linear head: evaluate "
                             "the training MODEL_DIR instead")
    if len(tasks) > 1:
        prompt = dataclasses.replace(prompt, num_tasks=len(tasks))
    if tasks:
        prompt = prompt.for_task(tasks[0])
    if not checkpoint_path and not adapter:
        prompt = t5x_prompt(model, prompt)
    if checkpoint_path:
        check_checkpoint_path(checkpoint_path)  # before the (slow) model load
    if checkpoint_path or adapter:
        prompt = dataclasses.replace(prompt, init="zeros")  # overwritten by the restore or the adapter
    base = model.load(mesh=mesh)
    tokenizer = model.load_tokenizer()
    prompted = prompt.build(base, tokenizer)
    if adapter:
        prompt.method_impl.load_adapter(prompted, adapter)
    state = MeshState(prompted, mesh, rules=model.rules, trainable=prompt.trainable(prompted))
    if checkpoint_path:
        state.restore(checkpoint_path)
    return Loaded(state, tokenizer, base, prompt)


def t5x_prompt(model: ModelSpec, prompt: PromptSpec) -> PromptSpec:
    """A prompt-tuned T5X checkpoint as INITIAL_CHECKPOINT_PATH brings its prompt: `prompt` then starts
    from its `target/encoder/prompt/prompt/prompt` (continuing the original library's run) unless
    PROMPT_FILE names another. A base model's checkpoint (no prompt variable) changes nothing."""
    from prompt_tuning_jax.models import t5x

    if not prompt.has_prompt or prompt.init == "file" or not t5x.is_t5x_checkpoint(model.path):
        return prompt
    if not t5x.has_variable(model.path, t5x.PROMPT_VARIABLE):
        return prompt
    print(f"prompt: from {model.path} {t5x.PROMPT_VARIABLE} (a prompt-tuned T5X checkpoint), in place of the "
          f"{prompt.init} initializer", file=sys.stderr)
    return dataclasses.replace(prompt, init="file", file=model.path, file_variable=t5x.PROMPT_VARIABLE)


def tokenize_split(task, split: str, loaded: Loaded, data: DataSpec, limit: int | None = None):
    """A task split tokenized for this model (targets get the model's `target_prefix`).

    In-context learning (METHOD 'icl:K'): each input of a split other than TRAIN_SPLIT is preceded
    by K demonstrations from TRAIN_SPLIT (`data.demonstrations`; SEED draws them), and over-long
    inputs lose their first tokens (the oldest demonstrations), never the query, unless
    truncate='error'.
    """
    lengths = data.feature_lengths
    examples = task.load(split, limit=limit)
    truncate = data.truncate
    k = loaded.prompt.demonstrations
    if k is not None and split != data.train_split:
        examples = with_demonstrations(examples, task.load(data.train_split), k, seed=data.seed)
        truncate = "error" if truncate == "error" else "left"
    return pipeline.tokenize(examples, loaded.tokenizer, max_input_length=lengths["inputs"],
                             max_target_length=lengths["targets"], truncate=truncate,
                             target_prefix=loaded.model.target_prefix, name=f"{task.name}/{split}")


def label_ids(task, loaded: Loaded, data: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [C, L] and mask of each class's verbalizer, tokenized like targets (for rank classification)."""
    examples = [{"inputs": "", "targets": name, "label": i} for i, name in enumerate(task.label_names)]
    tok = pipeline.tokenize(examples, loaded.tokenizer, max_input_length=8,
                            max_target_length=data.feature_lengths["targets"],
                            target_prefix=loaded.model.target_prefix)
    width = max(len(t) for t in tok.target_ids)
    ids = np.zeros((len(examples), width), np.int32)
    mask = np.zeros_like(ids)
    for i, t in enumerate(tok.target_ids):
        ids[i, :len(t)], mask[i, :len(t)] = t, 1
    return ids, mask


def objective(prompt: PromptSpec, task) -> str:
    """What training minimises: the LM loss on the targets without a head, else the head's loss."""
    if prompt.head is None:
        return "lm"
    return "regression" if task.kind == "regression" else "classification"


def make_mesh(mesh_shape: Sequence[int]):
    """MESH_SHAPE (data, model) -> the mesh; -1 for data takes what model leaves of the devices."""
    import jax

    from prompt_tuning_jax import partitioning

    ok = (isinstance(mesh_shape, (tuple, list)) and len(mesh_shape) == 2
          and all(isinstance(x, int) and not isinstance(x, bool) for x in mesh_shape)
          and (mesh_shape[0] == -1 or mesh_shape[0] >= 1) and mesh_shape[1] >= 1)
    if not ok:
        raise ValueError(f"MESH_SHAPE must be (data, model) with model >= 1 and data >= 1 or -1 (all the rest), "
                         f"got {mesh_shape!r}: e.g. --gin.MESH_SHAPE=\"(-1, 1)\", or 'auto' (the smallest model axis "
                         "that fits, found by compiling)")
    try:
        return partitioning.make_mesh(*mesh_shape)
    except ValueError as e:
        raise ValueError(f"MESH_SHAPE {tuple(mesh_shape)}: {e} ({jax.device_count()} devices here; "
                         "(-1, 1) uses them all for data parallelism)") from None
