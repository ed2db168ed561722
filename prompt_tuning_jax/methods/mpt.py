"""METHOD 'mpt': multitask prompt tuning (Wang et al., 2023, "Multitask Prompt Tuning Enables Parameter-Efficient
Transfer Learning"), as PEFT's `MultitaskPromptTuningConfig` (peft/tuners/multitask_prompt_tuning).

Each task k of the mixture (MIXTURE_OR_TASK_NAME a list; each row carries its `task_index` k) gets the shared
prompt rescaled element-wise by a rank-r matrix of its own (P: PROMPT_LENGTH, H: the model's width, K: the
number of tasks, r: MPT_RANK, PEFT's num_ranks):

    prompt_k [P, H] = shared [P, H] * (prefix_task_cols[k] [P, r] @ prefix_task_rows[k] [r, H])

which is PEFT's `MultitaskPromptEmbedding.forward` (variable names as PEFT's). All three are `Trainable`,
float32, and train together (PEFT trains them all too). MPT_TASK = k gives every row task k's prompt, to
evaluate or infer task k of a K-task run (with `ptj.PromptSpec.num_tasks = K`); a training run refuses it.

Start: the shared prompt is PROMPT_INIT's `init(rng, (P, H))`, like every method's (PEFT's prompt_tuning_init
RANDOM draws it from N(0, 1), which no PROMPT_INIT draws: give such a prompt as PROMPT_FILE; PEFT's TEXT is
PROMPT_INIT 'string'); `prefix_task_cols` and `prefix_task_rows` are drawn from N(0, 0.02) as PEFT draws them,
so every task's prompt starts near zero (its entries about r * 4e-4 times the shared prompt's).

Where PEFT (and so this method) differs from the paper: the paper first trains one shared prompt on the
source tasks by distilling from per-task teacher prompts, then adapts it to each target task with the rank-one
task matrices. PEFT's config holds only the second stage's parameterisation; the distillation is not part of
it, nor here. PEFT's inits AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK and ONLY_SOURCE_SHARED start from a source
run's state dict (prompt_tuning_init_state_dict_path); here no setting reads them: start from a source run
with INITIAL_ADAPTER (a PEFT MPT adapter of the same P, K and r, e.g. this method's `mpt_adapter`), or use
the source task's prompt as PROMPT_FILE (ONLY_SOURCE_SHARED's idea).
PEFT's rank default is 1 (the paper's rank-one matrices), here too.

Encoder-decoder models: PEFT's default for SEQ_2_SEQ_LM, num_transformer_submodules = 2, makes a 2P-row
prompt and puts rows [P, 2P) before the decoder's input as well (MPT goes through PEFT's generic seq2seq path,
unlike PROMPT_TUNING). Only the encoder's prompt exists here, so the adapter this method writes sets
num_transformer_submodules = 1 (PEFT then prepends the P rows to the encoder's input only, and gives our
logits); an adapter with 2 submodules is refused by `load_adapter`.

Saved: checkpoints hold the three variables (`prompt_module`; `soft_prompt` is empty and frozen). At the end of
a run, `prompts/prompt_latest.npy` holds every task's prompt [K, P, H] ([P, H] for one task),
`prompts/task_<k>.npy` task k's [P, H] (evaluate it with METHOD 'prompt'), and `mpt_adapter/` a PEFT
MULTITASK_PROMPT_TUNING adapter: adapter_config.json and adapter_model.safetensors with PEFT's three tensors,
`prompt_embeddings` (the shared prompt [P, H]), `prefix_task_cols` [K, P, r] and `prefix_task_rows` [K, r, H]:
all of the module, so `PeftModel.from_pretrained(model, folder)` gives our logits with the same `task_ids`,
and `load_adapter` restores the module from it (CHECKPOINT_PATH or INITIAL_ADAPTER).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning_jax.methods.base import HEAD, Method, register_method, trained_model, write_adapter
from prompt_tuning_jax.methods.multitask import check_task_pick, refuse_task_pick
from prompt_tuning_jax.variables import Trainable

PEFT_TYPE = "MULTITASK_PROMPT_TUNING"
INIT_STD = 0.02  # PEFT's torch.normal(mean=0, std=0.02) for prefix_task_cols and prefix_task_rows


class MultitaskPromptTuning(nnx.Module):
    """PEFT's MultitaskPromptEmbedding: shared [P, H], prefix_task_cols [K, P, r], prefix_task_rows [K, r, H].

    Called with task_index [B] -> each row's prompt [B, P, H]; task: every row gets this task's (MPT_TASK).
    """

    def __init__(self, shared, cols, rows, task: int | None = None):
        self.shared = Trainable(jnp.asarray(shared, jnp.float32))
        self.prefix_task_cols = Trainable(jnp.asarray(cols, jnp.float32))
        self.prefix_task_rows = Trainable(jnp.asarray(rows, jnp.float32))
        self.num_tasks, self.rank = int(cols.shape[0]), int(cols.shape[2])
        self.task = task

    def __call__(self, task_index) -> jax.Array:
        k = jnp.asarray(task_index, jnp.int32)
        if self.task is not None:
            k = jnp.full_like(k, self.task)
        return self.rows(k)

    def rows(self, k) -> jax.Array:
        """Prompts of tasks k [B] -> [B, P, H]: shared * (cols[k] @ rows[k])."""
        cols = jnp.take(self.prefix_task_cols[...], k, axis=0)  # [B, P, r]
        rows = jnp.take(self.prefix_task_rows[...], k, axis=0)  # [B, r, H]
        return self.shared[...][None] * jnp.matmul(cols, rows)

    def all_tasks(self) -> jax.Array:
        """Every task's prompt [K, P, H]."""
        return self.rows(jnp.arange(self.num_tasks))


def initial_module(start, num_tasks: int, rank: int, key, task: int | None = None) -> MultitaskPromptTuning:
    """The module from the shared prompt `start` [P, H], the task matrices drawn from N(0, 0.02) with `key`."""
    length, hidden = start.shape
    k_cols, k_rows = jax.random.split(key)
    cols = INIT_STD * jax.random.normal(k_cols, (num_tasks, length, rank), jnp.float32)
    rows = INIT_STD * jax.random.normal(k_rows, (num_tasks, rank, hidden), jnp.float32)
    return MultitaskPromptTuning(start, cols, rows, task)


def peft_tensors(module: MultitaskPromptTuning) -> dict[str, np.ndarray]:
    """The module under the names PEFT saves (`MultitaskPromptEmbedding._get_adapter_state_dict`), float32."""
    return {"prompt_embeddings": np.asarray(module.shared[...], np.float32),
            "prefix_task_cols": np.asarray(module.prefix_task_cols[...], np.float32),
            "prefix_task_rows": np.asarray(module.prefix_task_rows[...], np.float32)}


def set_from_peft(module: MultitaskPromptTuning, tensors: dict, source: str = "the PEFT adapter") -> None:
    """Sets the module (in place) from PEFT's tensors (arrays or torch tensors; `prompt_embeddings` or PEFT's
    parameter name `embedding.weight`); one ValueError when they are not all of it or do not fit."""
    tensors = {("prompt_embeddings" if name == "embedding.weight" else name): value for name, value in tensors.items()}
    wanted = {"prompt_embeddings": module.shared, "prefix_task_cols": module.prefix_task_cols,
              "prefix_task_rows": module.prefix_task_rows}
    if set(tensors) != set(wanted):
        raise ValueError(f"{source} holds {sorted(tensors)}, not all of a multitask prompt ({sorted(wanted)}): "
                         "give a MULTITASK_PROMPT_TUNING adapter as PEFT saves it")
    values = {}
    for name, variable in wanted.items():
        value = tensors[name]
        value = np.asarray(value.detach().cpu().float().numpy() if hasattr(value, "detach") else value, np.float32)
        if value.shape != variable.shape:
            raise ValueError(f"{source}: {name} has shape {value.shape}, but this run's is {variable.shape} "
                             "(PROMPT_LENGTH P, ptj.PromptSpec.num_tasks K and MPT_RANK r must be the adapter's: "
                             "prompt_embeddings [P, H], prefix_task_cols [K, P, r], prefix_task_rows [K, r, H])")
        values[name] = value
    for name, variable in wanted.items():
        variable[...] = jnp.asarray(values[name])


def peft_adapter_config(module: MultitaskPromptTuning, model, base_model_name_or_path: str | None) -> dict:
    """adapter_config.json of a PEFT MULTITASK_PROMPT_TUNING adapter (the keys PEFT 0.21 writes, inference mode;
    one transformer submodule, see the module docstring)."""
    from prompt_tuning_jax.prompts.io import _model_dims

    dims = _model_dims(model.config)
    length, hidden = module.shared.shape
    config = {
        "auto_mapping": None, "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
        "modules_to_save": None, "num_attention_heads": dims.get("num_attention_heads"),
        "num_layers": dims.get("num_layers"), "num_ranks": module.rank, "num_tasks": module.num_tasks,
        "num_transformer_submodules": 1, "num_virtual_tokens": int(length), "peft_type": PEFT_TYPE,
        "prompt_tuning_init": "RANDOM", "prompt_tuning_init_state_dict_path": None, "prompt_tuning_init_task": 0,
        "prompt_tuning_init_text": None, "revision": None, "task_type": getattr(model, "peft_task_type", None),
        "token_dim": int(hidden), "tokenizer_kwargs": None, "tokenizer_name_or_path": None,
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        config["peft_version"] = importlib.metadata.version("peft")  # as PEFT writes it; omitted without peft
    return config


def export_peft_mpt(folder: str | os.PathLike, module: MultitaskPromptTuning, model,
                    base_model_name_or_path: str | None = None) -> str:
    """Writes the module as PEFT saves a multitask prompt tuning model (adapter_config.json and
    adapter_model.safetensors with `peft_tensors`). Returns the folder."""
    from prompt_tuning_jax.prompts.io import _write_peft

    tensors = {name: np.ascontiguousarray(value) for name, value in peft_tensors(module).items()}
    return _write_peft(os.fspath(folder), peft_adapter_config(module, model, base_model_name_or_path), tensors)


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@register_method
class MultitaskPromptTuningMethod(Method):
    name = "mpt"
    has_prompt = True
    settings = {"mpt_rank": 1, "mpt_task": None}  # MPT_RANK (PEFT's num_ranks), MPT_TASK

    def check(self, spec) -> None:
        _check_int(spec.mpt_rank, "MPT_RANK (PEFT's num_ranks)", 1)
        task = spec.mpt_task
        if task is not None:
            _check_int(task, "MPT_TASK (None: each row's own task)", 0)
        check_task_pick("MPT_TASK", task, spec.num_tasks)

    def check_training(self, spec) -> None:
        refuse_task_pick("MPT_TASK", spec.mpt_task)

    def prompt_module(self, spec, model, init, num_tasks: int) -> MultitaskPromptTuning:
        """The shared prompt from PROMPT_INIT and K task matrices of rank MPT_RANK (module docstring)."""
        from prompt_tuning_jax.prompts.prompt import _resolve_init

        rngs = nnx.Rngs(spec.seed)
        start = _resolve_init(init, model)(rngs.params(), (spec.length, model.config.hidden_size))
        return initial_module(jnp.asarray(start, jnp.float32), num_tasks, spec.mpt_rank, rngs.params(),
                              spec.mpt_task)

    def trainable(self, prompted):
        return HEAD  # the module's three variables and a head (the empty soft prompt is frozen)

    def load_adapter(self, prompted, folder: str) -> None:
        """Sets the module from a PEFT MULTITASK_PROMPT_TUNING adapter of the same P, K and r."""
        from prompt_tuning_jax.prompts.io import read_peft_adapter

        config, tensors = read_peft_adapter(folder, PEFT_TYPE)
        submodules = config.get("num_transformer_submodules")
        if submodules is None:
            submodules = 2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1
        if submodules != 1:
            raise ValueError(f"PEFT adapter {folder} has num_transformer_submodules={submodules}: PEFT puts half of "
                             "its prompt before the decoder's input, which METHOD 'mpt' has no place for; train it "
                             "with num_transformer_submodules=1 (the encoder's prompt only, as METHOD 'mpt' writes)")
        set_from_peft(prompted.prompt_module, tensors, f"PEFT adapter {folder}")

    def export(self, model_dir: str, state, trainable, base_model: str) -> dict:
        """Every task's prompt: prompts/prompt_latest.npy [K, P, H] ([P, H] for one task), prompts/task_<k>.npy
        [P, H], and the module as a PEFT adapter in MODEL_DIR/mpt_adapter (written by process 0)."""
        from prompt_tuning_jax.methods.multitask import write_task_prompts

        prompted = trained_model(state, trainable)
        summary = write_task_prompts(model_dir, np.asarray(prompted.prompt_module.all_tasks()))  # [K, P, H]
        write = lambda folder, model, base: export_peft_mpt(folder, prompted.prompt_module, model, base)
        return {**summary, **write_adapter(model_dir, "mpt", write, prompted.model, base_model)}
