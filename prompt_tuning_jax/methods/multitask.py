"""METHOD 'multitask': multi-task prompts, a shared part and a part per task, combined for each row by its task.

The original library's extended multi-task prompts (`extended/multitask_prompts.py`, and the factorized
language x task prompts of `extended/multitask_factorized_prompts.py`). There the first input token named
the task; here each row of a mixture (DataSpec.task, a list) carries its `task_index` k, the task's place in
the list. MULTITASK_COMBINE says how the row's prompt [P', H] is made (P: PROMPT_LENGTH, H: the model's
width, K: the number of tasks, P_t: MULTITASK_TASK_LENGTH, None: P, H_s: MULTITASK_SHARED_FEATURES):

| combine           | trainable variables                              | row of task k                       | P'      |
| ----------------- | ------------------------------------------------ | ----------------------------------- | ------- |
| 'add'             | shared [P, H], tasks [K, P, H]                   | shared + tasks[k]                   | P       |
| 'concat'          | shared [P, H], tasks [K, P_t, H]                 | [shared; tasks[k]] along the length | P + P_t |
| 'concat_features' | shared [P, H_s], tasks [K, P, H - H_s]           | [shared, tasks[k]] along features   | P       |
| 'project'         | shared [P, H_s], kernel [K, H, H_s], bias [K, H] | shared @ kernel[k].T + bias[k]      | P       |
| 'factorized'      | first [F1, P, H], second [F2, P_t, H]            | [first[a]; second[b]] along length  | P + P_t |

H_s defaults to H // 2 ('concat_features') and H ('project'). 'factorized' (language x task in the
original) gives each mixture task k its pair (a, b) of factors in MULTITASK_FACTORS, e.g.
[[0, 0], [0, 1], [1, 0]]: F1 = max a + 1 and F2 = max b + 1 prompts, and tasks sharing a factor share it.
The kernel is laid out as the original's flattened task vector ([H_out, H_s] then the bias).

Start: PROMPT_INIT makes one [P', H] prompt (P' = P + P_t for 'concat' and 'factorized', else P; a
PROMPT_FILE must have that shape) and every task's combined prompt starts as it: 'add' starts the task
parts at zero, 'concat' / 'concat_features' / 'factorized' split it between the parts (each task's part a
copy), 'project' starts at the identity kernel and zero bias (with H_s < H: the first H_s features, the
rest zero). The parts then move apart by training. (The original's configs drew every part from
uniform(0.5).)

Saved: checkpoints hold these variables (`prompt_module` in the trainable state; `soft_prompt` is empty
and frozen, so checkpoints write no `prompt_<step>.npy`). At the end of a run, `prompts/prompt_latest.npy`
holds every task's combined prompt [K, P', H] (the form of METHOD 'prompt''s K task prompts; [P', H] for
one task) and `prompts/task_<k>.npy` task k's [P', H]. To evaluate task k: CHECKPOINT_PATH=MODEL_DIR with
the run's settings plus `ptj.PromptSpec.num_tasks = K` and MULTITASK_TASK = k (every row gets task k's
prompt), or METHOD 'prompt' with PROMPT_LENGTH = P' and CHECKPOINT_PATH=MODEL_DIR/prompts/task_<k>.npy.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning_jax.methods.base import HEAD, Method, register_method, trained_model
from prompt_tuning_jax.variables import Trainable

COMBINES = ("add", "concat", "concat_features", "project", "factorized")
PARTS = {"add": ("shared", "tasks"), "concat": ("shared", "tasks"), "concat_features": ("shared", "tasks"),
         "project": ("shared", "kernel", "bias"), "factorized": ("first", "second")}


# ===== combining the parts of a batch: one row per example =====
def add(shared, tasks):
    """shared [P, H] + tasks [B, P, H] -> [B, P, H]."""
    return shared[None] + tasks


def concat_length(shared, tasks):
    """shared [P, H] before tasks [B, P_t, H] -> [B, P + P_t, H]."""
    return jnp.concatenate([jnp.broadcast_to(shared, (tasks.shape[0], *shared.shape)), tasks], axis=1)


def concat_features(shared, tasks):
    """shared [P, H_s] beside tasks [B, P, H_t] -> [B, P, H_s + H_t]."""
    return jnp.concatenate([jnp.broadcast_to(shared, (tasks.shape[0], *shared.shape)), tasks], axis=2)


def project(shared, kernel, bias):
    """Each row's affine map of the shared prompt: shared [P, H_s], kernel [B, H, H_s], bias [B, H] -> [B, P, H]."""
    return jnp.einsum("ps,bhs->bph", shared, kernel) + bias[:, None, :]


def concat_factors(first, second):
    """first [B, P, H] before second [B, P_t, H] -> [B, P + P_t, H]."""
    return jnp.concatenate([first, second], axis=1)


class MultiTaskPrompt(nnx.Module):
    """The trainable parts (`parts`: name -> initial array, see PARTS) and how they combine.

    Called with task_index [B] -> each row's prompt [B, P', H]. factors ('factorized'): each task's
    (first, second) factor; task: every row gets this task's prompt (None: its own task_index).
    """

    def __init__(self, combine: str, parts: dict, num_tasks: int, factors=None, task: int | None = None):
        if combine not in COMBINES:
            raise ValueError(f"MULTITASK_COMBINE must be one of {COMBINES}, got {combine!r}")
        self.combine, self.num_tasks, self.task = combine, num_tasks, task
        self.factors = None if factors is None else tuple(tuple(int(i) for i in pair) for pair in factors)
        for name in PARTS[combine]:
            setattr(self, name, Trainable(jnp.asarray(parts[name], jnp.float32)))

    def __call__(self, task_index) -> jax.Array:
        k = jnp.asarray(task_index, jnp.int32)
        if self.task is not None:
            k = jnp.full_like(k, self.task)
        return self.rows(k)

    def rows(self, k) -> jax.Array:
        """Prompts of tasks k [B] -> [B, P', H]."""
        pick = lambda part, index: jnp.take(part[...], index, axis=0)  # [N, ...] -> [B, ...]
        if self.combine == "factorized":
            pairs = jnp.asarray(self.factors, jnp.int32)[k]  # [B, 2]: each row's (first, second) factor
            return concat_factors(pick(self.first, pairs[:, 0]), pick(self.second, pairs[:, 1]))
        if self.combine == "project":
            return project(self.shared[...], pick(self.kernel, k), pick(self.bias, k))
        combine = {"add": add, "concat": concat_length, "concat_features": concat_features}[self.combine]
        return combine(self.shared[...], pick(self.tasks, k))

    def all_tasks(self) -> jax.Array:
        """Every task's combined prompt [K, P', H]."""
        return self.rows(jnp.arange(self.num_tasks))


def combined_length(combine: str, length: int, task_length: int | None) -> int:
    """P': the prompt length a row gets."""
    return length + (task_length or length) if combine in ("concat", "factorized") else length


def shared_features(combine: str, hidden: int, features: int | None) -> int:
    """H_s: MULTITASK_SHARED_FEATURES, or its default (H // 2 for 'concat_features', H for 'project')."""
    if features is not None:
        return features
    return hidden // 2 if combine == "concat_features" else hidden


def initial_parts(combine: str, start, num_tasks: int, length: int, features: int, factors=None) -> dict:
    """The parts' first values from one prompt `start` [P', H], so that every task's combined prompt starts as
    `start` (module docstring). length: P, the shared length; features: H_s."""
    start = jnp.asarray(start, jnp.float32)
    hidden = start.shape[1]
    copies = lambda x, n: jnp.broadcast_to(x, (n, *x.shape))
    if combine == "add":
        return {"shared": start, "tasks": jnp.zeros((num_tasks, *start.shape), jnp.float32)}
    if combine == "concat":
        return {"shared": start[:length], "tasks": copies(start[length:], num_tasks)}
    if combine == "concat_features":
        return {"shared": start[:, :features], "tasks": copies(start[:, features:], num_tasks)}
    if combine == "project":
        return {"shared": start[:, :features], "kernel": copies(jnp.eye(hidden, features), num_tasks),
                "bias": jnp.zeros((num_tasks, hidden), jnp.float32)}
    firsts, seconds = (max(pair[i] for pair in factors) + 1 for i in (0, 1))
    return {"first": copies(start[:length], firsts), "second": copies(start[length:], seconds)}


def parameter_count(combine: str, num_tasks: int, length: int, hidden: int, task_length: int | None = None,
                    features: int | None = None, factors=None) -> int:
    """How many values train (the head aside): (K + 1) P H for 'add', P H + K P_t H for 'concat',
    P H_s + K P (H - H_s) for 'concat_features', P H_s + K (H H_s + H) for 'project', and
    F1 P H + F2 P_t H for 'factorized'."""
    t = task_length or length
    s = shared_features(combine, hidden, features)
    if combine == "factorized":
        firsts, seconds = (max(pair[i] for pair in factors) + 1 for i in (0, 1))
        return firsts * length * hidden + seconds * t * hidden
    return {"add": (num_tasks + 1) * length * hidden, "concat": length * hidden + num_tasks * t * hidden,
            "concat_features": length * s + num_tasks * length * (hidden - s),
            "project": length * s + num_tasks * (hidden * s + hidden)}[combine]


def check_task_pick(name: str, task, num_tasks) -> None:
    """A setting that gives every row task `task`'s prompt (MULTITASK_TASK, MPT_TASK) must name one of the run's tasks."""
    if task is not None and isinstance(num_tasks, int) and task >= num_tasks:
        raise ValueError(f"{name}={task} picks a task of a run with more tasks than num_tasks={num_tasks}: set "
                         "ptj.PromptSpec.num_tasks to the run's number of tasks K")


def refuse_task_pick(name: str, task) -> None:
    """Training refuses such a setting: a training run trains every task of its mixture."""
    if task is not None:
        raise ValueError(f"{name}={task} gives every row one task's prompt, for evaluating or inferring task k; a "
                         f"training run trains every task of its mixture: drop {name}")


def _check_count(value, name: str, minimum: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum} or None, got {value!r}")


def _check_factors(factors) -> None:
    ok = (isinstance(factors, (list, tuple)) and len(factors) > 0
          and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(
              isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in p) for p in factors))
    if not ok:
        raise ValueError("MULTITASK_COMBINE 'factorized' needs MULTITASK_FACTORS, each task's [first, second] factor "
                         f"(integers >= 0, e.g. [[0, 0], [0, 1], [1, 0]] for [language, task]), got {factors!r}")


@register_method
class MultiTask(Method):
    name = "multitask"
    has_prompt = True
    # MULTITASK_COMBINE, MULTITASK_TASK_LENGTH, MULTITASK_SHARED_FEATURES, MULTITASK_FACTORS, MULTITASK_TASK
    settings = {"multitask_combine": "add", "multitask_task_length": None, "multitask_shared_features": None,
                "multitask_factors": None, "multitask_task": None}
    readers = {"multitask_task_length": ("concat", "factorized"),
               "multitask_shared_features": ("concat_features", "project"), "multitask_factors": ("factorized",)}

    def check(self, spec) -> None:
        combine = spec.multitask_combine
        if combine not in COMBINES:
            raise ValueError(f"MULTITASK_COMBINE must be one of {COMBINES}, got {combine!r}")
        _check_count(spec.multitask_task_length, "MULTITASK_TASK_LENGTH")
        _check_count(spec.multitask_shared_features, "MULTITASK_SHARED_FEATURES")
        _check_count(spec.multitask_task, "MULTITASK_TASK", minimum=0)
        for field, users in self.readers.items():
            if getattr(spec, field) is not None and combine not in users:
                raise ValueError(f"{field.upper()} is set but MULTITASK_COMBINE is {combine!r}, which does not read "
                                 f"it: use {' or '.join(map(repr, users))}, or drop {field.upper()}")
        if combine == "factorized":
            _check_factors(spec.multitask_factors)
        check_task_pick("MULTITASK_TASK", spec.multitask_task, spec.num_tasks)

    def check_training(self, spec) -> None:
        refuse_task_pick("MULTITASK_TASK", spec.multitask_task)

    def prompt_module(self, spec, model, init, num_tasks: int) -> MultiTaskPrompt:
        """The shared and per-task parts for `num_tasks` tasks, started from PROMPT_INIT (module docstring)."""
        from prompt_tuning_jax.prompts.prompt import _resolve_init

        hidden, combine, length = model.config.hidden_size, spec.multitask_combine, spec.length
        features = shared_features(combine, hidden, spec.multitask_shared_features)
        if combine == "concat_features" and not 1 <= features < hidden:
            raise ValueError(f"MULTITASK_SHARED_FEATURES must be from 1 to {hidden - 1} with 'concat_features' (the "
                             f"task parts get the rest of the model's {hidden} features), got {features}")
        if combine == "project" and features > hidden:
            raise ValueError(f"MULTITASK_SHARED_FEATURES must be at most the model's {hidden} features with "
                             f"'project', got {features}")
        factors = spec.multitask_factors
        if combine == "factorized" and len(factors) != num_tasks:
            raise ValueError(f"MULTITASK_FACTORS gives {len(factors)} tasks their factors, but the run has "
                             f"{num_tasks} tasks: give one [first, second] pair per task of MIXTURE_OR_TASK_NAME")
        shape = (combined_length(combine, length, spec.multitask_task_length), hidden)
        start = _resolve_init(init, model)(nnx.Rngs(spec.seed).params(), shape)
        parts = initial_parts(combine, start, num_tasks, length, features, factors)
        return MultiTaskPrompt(combine, parts, num_tasks, factors, spec.multitask_task)

    def trainable(self, prompted):
        return HEAD  # the module's parts and a head (the empty soft prompt is frozen)

    def export(self, model_dir: str, state, trainable, base_model: str) -> dict:
        """Every task's combined prompt: prompts/prompt_latest.npy [K, P', H] ([P', H] for one task) and
        prompts/task_<k>.npy [P', H] (written by process 0)."""
        return write_task_prompts(model_dir, np.asarray(trained_model(state, trainable).prompt_module.all_tasks()))


def write_task_prompts(model_dir: str, prompts: np.ndarray) -> dict:
    """Every task's prompt [K, P', H] as prompts/prompt_latest.npy ([P', H] for one task) and prompts/task_<k>.npy
    (written by process 0) -> summary entries."""
    from prompt_tuning_jax.prompts.io import save_prompt

    folder = os.path.join(model_dir, "prompts")
    latest = os.path.join(folder, "prompt_latest.npy")
    paths = [os.path.join(folder, f"task_{k}.npy") for k in range(len(prompts))]
    if jax.process_index() == 0:
        save_prompt(latest, prompts if len(prompts) > 1 else prompts[0])
        for path, prompt in zip(paths, prompts):
            save_prompt(path, prompt)
    return {"prompt_file": latest, "task_prompt_files": paths, "prompt": prompts}
