"""The method seam: what METHOD trains, as one module per method behind a registry (as families are).

A method is a `Method` subclass registered under its name. It declares

- its form: `name` alone, or `name:N` when `argument` names N (K blocks, rank R, ...);
- `has_prompt` (a soft prompt trains) and `trains` (False: nothing trains, e.g. in-context learning);
- `check(spec)` and `check_training(spec)` (what only a training run refuses): its checks of the settings (`experiments.PromptSpec`), and `settings`, the
  PromptSpec fields only it reads (set with another method, they are refused);
- `add_variables(model, spec)`: variables it adds to the frozen model (LoRA factors);
- `prompt_module(spec, model, init, num_tasks)`: a module that makes each row's prompt from its task
  (multi-task prompts), or None: the soft prompt of `prompts.PromptedModel`;
- `prompt_options(spec)`: keyword arguments it adds to `prompts.with_prompt` (METHOD 'per_layer':
  `layer_combine`, a prompt at every block);
- `trainable(prompted)`: the nnx filter of what trains (gradients, optimizer state, checkpoints);
- `regularizer(spec, model, tokenizer)`: an extra loss term on what trains, or None;
- `load_adapter(prompted, folder)`: sets what trains from a PEFT adapter folder (INITIAL_ADAPTER, or
  CHECKPOINT_PATH to evaluate one); methods without a PEFT counterpart refuse;
- `export(model_dir, state, trainable, base_model)`: what it writes at the end of a run beyond the
  checkpoints and the prompt `.npy` files (a PEFT adapter), as summary entries.

    get_method("lora:8")            # -> LoRA(8)
    register_method(MyMethod)       # METHOD 'mine' (or 'mine:N') from now on

The engine, the sweeps and the CLI ask the method these questions and never branch on its name.
"""
from __future__ import annotations

from typing import Any, ClassVar

from flax import nnx

from prompt_tuning_jax.variables import Trainable

# A head (linear probe) trains with every method; the baselines' empty prompt never does.
HEAD = nnx.All(Trainable, nnx.Not(nnx.PathContains("soft_prompt")))


class Method:
    """One training method (METHOD). Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    argument: ClassVar[str | None] = None  # 'K', 'R', ...: the method is written 'name:N'
    minimum: ClassVar[int] = 1  # the smallest N
    has_prompt: ClassVar[bool] = False
    trains: ClassVar[bool] = True
    settings: ClassVar[dict[str, Any]] = {}  # PromptSpec field -> its default, read by this method only

    def __init__(self, n: int | None = None):
        self.n = n

    def __str__(self) -> str:
        return self.name if self.argument is None else f"{self.name}:{self.n}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n if self.argument else ''})"

    @property
    def demonstrations(self) -> int | None:
        """K demonstrations before each evaluated input (in-context learning), else None."""
        return None

    def check(self, spec) -> None:
        """Raises ValueError for settings of `spec` (a PromptSpec) this method cannot run with."""

    def check_training(self, spec) -> None:
        """Raises ValueError for settings that evaluation takes but a training run must refuse."""

    def add_variables(self, model, spec) -> None:
        """Adds this method's variables to the frozen `model` (in place), before the prompt wraps it."""

    def prompt_module(self, spec, model, init, num_tasks: int):
        """The nnx module that makes each row's prompt, task_index [B] -> [B, P', H], holding `Trainable`
        variables, in place of PromptedModel's own `soft_prompt`; None (the default) keeps the soft prompt.
        `init` is PROMPT_INIT's `init(rng, shape)`, `num_tasks` the number of tasks K (METHOD 'multitask').
        A module with a nonzero `dropout_rate` attribute is also called with `dropout_rng=` (one key for the
        batch) in training steps (P-tuning's LSTM dropout)."""
        return None

    def prompt_options(self, spec) -> dict:
        """Keyword arguments for `prompts.with_prompt` beyond the PromptSpec's own (none by default)."""
        return {}

    def trainable(self, prompted) -> nnx.filterlib.Filter:
        """The nnx filter of what trains in `prompted` (a PromptedModel); by default its head only."""
        return HEAD

    def regularizer(self, spec, model, tokenizer):
        """An extra loss term on the trained state: a function PromptedModel -> scalar, added once per step to
        the objective's mean loss (after accumulation), or None (the default). `model` and `tokenizer` are the
        run's frozen model and tokenizer, for terms that need its embeddings (METHOD 'wayward')."""
        return None

    def load_adapter(self, prompted, folder: str) -> None:
        """Sets what trains in `prompted` from the PEFT adapter in `folder` (in place); by default refused."""
        raise ValueError(f"METHOD {str(self)!r} has no PEFT adapter to start from or evaluate ({folder}); give a "
                         "MODEL_DIR as CHECKPOINT_PATH, or the METHOD the adapter was trained with")

    def export(self, model_dir: str, state, trainable, base_model: str) -> dict:
        """Writes what this method leaves beside the checkpoints -> summary entries. `state` is the run's
        `MeshState`, `trainable` the trained values (every process calls it; process 0 writes)."""
        return {}


def trained_model(state, trainable):
    """The PromptedModel holding the run's trained values, on every process (they are replicated), for export."""
    import jax

    from prompt_tuning_jax import partitioning

    return state.merge(jax.tree.map(partitioning.host_value, trainable))


def write_adapter(model_dir: str, name: str, write, model, base_model: str) -> dict:
    """`write(folder, model, base_model)` into MODEL_DIR/<name>_adapter on process 0 -> {'<name>_adapter': folder}."""
    import os

    import jax

    folder = os.path.join(model_dir, f"{name}_adapter")
    if jax.process_index() == 0:
        write(folder, model, base_model)
    return {f"{name}_adapter": folder}


_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Makes METHOD `cls.name` (or `cls.name:N`) available; usable as a class decorator."""
    if not getattr(cls, "name", None) or ":" in cls.name:
        raise ValueError(f"{cls.__name__} needs a `name` without ':'")
    _METHODS[cls.name] = cls
    return cls


def method_forms() -> str:
    """The forms METHOD takes, for error messages: 'prompt', 'probe', ..., 'lora:R' (R >= 1), ..."""
    return ", ".join(f"'{c.name}'" if c.argument is None else f"'{c.name}:{c.argument}' ({c.argument} >= {c.minimum})"
                     for c in _METHODS.values())


def get_method(method: str | Method) -> Method:
    """'last:2' -> the registered method with its N; ValueError naming METHOD and the forms otherwise."""
    if isinstance(method, Method):
        return method
    name, sep, n = str(method).partition(":")
    cls = _METHODS.get(name)
    if cls is not None and cls.argument is None and not sep:
        return cls()
    if cls is not None and cls.argument is not None and n.isdigit() and int(n) >= cls.minimum:
        return cls(int(n))
    raise ValueError(f"METHOD {method!r} is not a training method; use {method_forms()}")


def registered() -> dict[str, type[Method]]:
    return dict(_METHODS)
