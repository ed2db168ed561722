"""Typed settings of a run, one dataclass per concern; gin binds their fields, Python builds them directly.

    model = ModelSpec("gpt2", dtype="bfloat16")
    prompt = PromptSpec(length=20, init="class_labels", placement="suffix", head="linear")
    data = DataSpec("sst2", feature_lengths={"inputs": 128, "targets": 4}, batch_size=32)
    schedule = TrainSpec(steps=2000, eval_every=200, checkpoint_every=200)

Decoding settings are `decoding.DecodeSpec`; the optimizer is any optax
transformation (`training.optim.make_optimizer` gives the paper's Adafactor).
"""
from __future__ import annotations

import dataclasses
import io
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning_jax import files

INIT_KINDS = ("random_uniform", "zeros", "sampled_vocab", "class_labels", "string", "file", "sampled_vocab_numpy",
              "class_labels_numpy")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def default_compute_dtype() -> str:
    """'bfloat16' on GPUs and TPUs, 'float32' on CPUs; the prompt, head and optimizer state stay float32."""
    return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"


def _dtype(name):
    """A dtype name ('auto': `default_compute_dtype()`) -> the jnp dtype; a dtype is returned as it is."""
    if not isinstance(name, str):
        return name
    if name == "auto":
        name = default_compute_dtype()
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


def check_count(value, name: str, minimum: int = 1, allow_none: bool = False) -> None:
    """An integer setting >= minimum, or a ValueError naming the gin macro (`name`) and how to set it."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        flag = name[name.index("(") + 1:-1] if "(" in name else name  # 'x (ptj.Spec.x)' -> ptj.Spec.x
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r} (set --gin.{flag}=N)")


@dataclasses.dataclass
class ModelSpec:
    """The frozen model: a hub id, Hugging Face folder or T5X checkpoint directory (`INITIAL_CHECKPOINT_PATH`)
    and how to run it.

    dtype: compute dtype ('auto': bfloat16 on GPUs and TPUs, float32 on CPUs; the
    trainable prompt and head are float32 whatever it is); param_dtype: storage of
    the frozen weights; tokenizer: defaults to the checkpoint's; padding_side: where
    pads go in batches. dropout_rate: DROPOUT_RATE, replaces all of the checkpoint's
    dropout rates in training steps (None: config.json's rates; 0.0: no dropout).
    attention: 'auto' (cuDNN flash attention where it applies, see
    `models.common.pick_attention`) | 'einsum' | 'xla' | 'cudnn'. revision: the hub
    revision (branch, tag or commit) of a hub id; with HF_HUB_OFFLINE=1 hub ids load
    from the Hugging Face cache, and HF_TOKEN opens gated repositories.
    parameter_partitioning_dims: 1 shards weights over the mesh's `model` axis only; 2 (T5X's
    2-D parameter partitioning, runtime/parameter_partitioning_2d.gin) also splits their
    `embed` dimension over `data` (`partitioning.PARAMETER_2D_RULES`).
    config_overrides: config fields (Hugging Face names) that replace the checkpoint's; a T5X
    checkpoint directory needs those its arrays cannot tell, e.g. {'relative_attention_max_distance': 8}
    (`models.t5x.config_from_checkpoint`). A T5X directory holds no tokenizer: set `tokenizer`.
    """

    path: str
    tokenizer: str | None = None
    dtype: str = "auto"
    param_dtype: str = "float32"
    remat: bool = False
    padding_side: str = "right"
    dropout_rate: float | None = None
    attention: str = "auto"
    revision: str | None = None
    parameter_partitioning_dims: int = 1
    config_overrides: dict | None = None

    def __post_init__(self):
        from prompt_tuning_jax import partitioning

        partitioning.rules_for(self.parameter_partitioning_dims)
        for field, name in (("dtype", "COMPUTE_DTYPE (ptj.ModelSpec.dtype)"),
                            ("param_dtype", "ptj.ModelSpec.param_dtype")):
            value = getattr(self, field)
            if isinstance(value, str) and value != "auto" and value not in DTYPES:
                raise ValueError(f"{name} is {value!r}; use one of {sorted(DTYPES)}"
                                 + (" or 'auto'" if field == "dtype" else ""))
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")

    @property
    def rules(self):
        """The logical-axis rules that place this model's weights (`partitioning.rules_for`)."""
        from prompt_tuning_jax import partitioning

        return partitioning.rules_for(self.parameter_partitioning_dims)

    def load(self, mesh=None):
        from prompt_tuning_jax.models import from_pretrained

        return from_pretrained(self.path, dtype=_dtype(self.dtype), param_dtype=_dtype(self.param_dtype),
                               mesh=mesh, rules=self.rules, remat=self.remat, dropout_rate=self.dropout_rate,
                               attention=self.attention, revision=self.revision,
                               config_overrides=self.config_overrides)

    def build_abstract(self):
        """A function that builds this model with placeholder weights (no files read): run it inside
        `nnx.eval_shape` for the model's shapes alone. Its config comes from `models.hf.pretrained_config`."""
        from prompt_tuning_jax.models.hf import init_random, pretrained_config

        config = pretrained_config(self.path, self.revision, config_overrides=self.config_overrides)
        return lambda: init_random(config, dtype=_dtype(self.dtype), param_dtype=_dtype(self.param_dtype),
                                   remat=self.remat, dropout_rate=self.dropout_rate, attention=self.attention,
                                   seed=None)

    def load_tokenizer(self):
        from prompt_tuning_jax.models import t5x
        from prompt_tuning_jax.tokenizer import load_tokenizer

        name = self.tokenizer
        if not name and t5x.is_t5x_checkpoint(self.path):
            vocab = t5x.T5XCheckpoint(self.path).shape_of(t5x.EMBEDDING_VARIABLE)[0]  # [V, d]: the vocabulary
            name, why = t5x.default_tokenizer(self.path, vocab)
            if name is None:
                raise ValueError(f"{self.path} is a T5X checkpoint, which holds no tokenizer, and {why}: set "
                                 "ptj.ModelSpec.tokenizer to its tokenizer folder or hub id (e.g. "
                                 "--gin.ptj.ModelSpec.tokenizer=\"'google/t5-v1_1-base'\")")
            print(f"tokenizer: {name}, {why} (a T5X checkpoint holds none; ptj.ModelSpec.tokenizer sets another)",
                  file=sys.stderr)
        revision = None if self.tokenizer else self.revision
        return load_tokenizer(name or self.path, padding_side=self.padding_side, revision=revision)


@dataclasses.dataclass
class PromptSpec:
    """The prompt: length P, initializer, placement and head.

    init: random_uniform (in [0, scale)) | zeros (for a prompt restored right after) | sampled_vocab
    (first `population_size` rows) | class_labels (`class_labels`, then sampled vocab) | string (`text`,
    then sampled vocab) | file (`file`, a [P, H] .npy) | sampled_vocab_numpy and
    class_labels_numpy (the same, from the [V, H] table in `embedding_file`, e.g.
    one written by `python -m prompt_tuning_jax.extract_variable`).
    `file` and `embedding_file` may also be T5X checkpoint directories, as the original's `t5x_load`
    read them: the variables `file_variable` (default `target/encoder/prompt/prompt/prompt`) and
    `embedding_variable` (default `target/token_embedder/embedding`).
    head: None (LM head: rank classification / generation) or "linear" (`num_labels`).
    method: METHOD, what trains: 'prompt' (prompt tuning), or a baseline without a prompt:
    'probe' (the linear head only), 'full' (all weights), 'first:K' / 'last:K' / 'middle:K'
    (K transformer blocks of each stack), 'lora:R' (rank-R LoRA on the blocks' projections,
    scaled by lora_alpha / R, on `lora_targets` (None: all) as `models.lora`), 'icl:K'
    (in-context learning: K demonstrations from the training split before each eval input;
    nothing trains), 'wayward' (prompt tuning plus wayward_gamma * the squared distance to the
    text `wayward_prompt` embedded, Khashabi et al., 2021); see `methods/`, one module per method.
    multitask_*: METHOD 'multitask' (the original's extended multi-task prompts, `methods/multitask.py`),
    a shared prompt and per-task parts combined for each row by its task: multitask_combine 'add' |
    'concat' | 'concat_features' | 'project' | 'factorized'; multitask_task_length (P_t of 'concat' and
    'factorized', None: P); multitask_shared_features (H_s of 'concat_features' and 'project');
    multitask_factors ('factorized': each mixture task's [first, second] factor, e.g. [language, task]);
    multitask_task (evaluate or infer task k of a K-task run: every row gets task k's prompt; with num_tasks=K).
    adapter: INITIAL_ADAPTER, a PEFT adapter folder whose values start what METHOD trains (a PROMPT_TUNING
    adapter for 'prompt' / 'wayward', LORA for 'lora:R', IA3 for 'ia3', MULTITASK_PROMPT_TUNING for 'mpt';
    `Method.load_adapter`).
    per_layer_combine: METHOD 'per_layer' (the original's extended per-layer prompts, `methods/per_layer.py`),
    a [P, H] prompt at the input of every block, [L, P, H]: 'replace' (the block's input at the prompt's
    positions) or 'add' (added to it).
    visibility: PROMPT_VISIBILITY (the original's extended masks, `models/visibility.py`), which attention the
    prompt gets beyond input->input and input->prompt: a list of 'prompt->prompt', 'prompt->prompt;causal',
    'prompt->input' (e.g. [] : each prompt position sees only itself); None (the default): the model's own
    (T5's encoder: everything; GPT-2: causal).
    ptuning_*: METHOD 'ptuning' (P-tuning, Liu et al., 2021, as PEFT's PromptEncoderConfig, `methods/ptuning.py`),
    a prompt encoder makes the [P, H] prompt (P: `length`) from an embedding of P virtual tokens:
    ptuning_encoder 'mlp' (PEFT's default) | 'lstm' (a bidirectional LSTM, then an MLP; the paper's);
    ptuning_hidden (PEFT's encoder_hidden_size, None: the model's width); ptuning_num_layers (the LSTM's
    layers, PEFT's encoder_num_layers, 2); ptuning_dropout (PEFT's encoder_dropout: between LSTM layers, in training).
    mpt_*: METHOD 'mpt' (multitask prompt tuning, Wang et al., 2023, as PEFT's MultitaskPromptTuningConfig,
    `methods/mpt.py`), task k's prompt = shared [P, H] * (cols[k] [P, r] @ rows[k] [r, H]): mpt_rank (r, PEFT's
    num_ranks, 1); mpt_task (evaluate or infer task k of a K-task run: every row gets task k's prompt; with
    num_tasks=K).
    prefix_projection: METHOD 'prefix:P' (prefix tuning, PEFT's PrefixTuningConfig, `models/prefix.py`): None (the
    default, PEFT's): the keys and values train directly; H': an embedding [P, H] and an MLP H -> H' -> keys and
    values make them in training (PEFT's prefix_projection with encoder_hidden_size H'), folded away when saved.
    """

    length: int = 100
    init: str = "class_labels"
    placement: str = "prefix"
    scale: float = 0.5
    population_size: int = 5000
    class_labels: Sequence[str] | None = None
    text: str | None = None
    file: str | None = None
    file_variable: str | None = None
    embedding_file: str | None = None
    embedding_variable: str | None = None
    head: str | None = None
    num_labels: int | None = None
    regression: bool = False
    before_eos: bool = False
    num_tasks: int = 1
    seed: int = 0
    method: str = "prompt"
    lora_alpha: float = 8.0
    lora_targets: Sequence[str] | None = None
    wayward_prompt: str | None = None
    wayward_gamma: float = 0.01
    multitask_combine: str = "add"
    multitask_task_length: int | None = None
    multitask_shared_features: int | None = None
    multitask_factors: Sequence[Sequence[int]] | None = None
    multitask_task: int | None = None
    per_layer_combine: str = "replace"
    adapter: str | None = None
    visibility: Sequence[str] | None = None
    ptuning_encoder: str = "mlp"
    ptuning_hidden: int | None = None
    ptuning_num_layers: int = 2
    ptuning_dropout: float = 0.0
    mpt_rank: int = 1
    mpt_task: int | None = None
    prefix_projection: int | None = None

    def __post_init__(self):
        check_count(self.length, "PROMPT_LENGTH")
        self.method_impl.check(self)
        self._check_other_methods_settings()
        check_count(self.num_tasks, "num_tasks (ptj.PromptSpec.num_tasks)")
        if self.placement not in ("prefix", "suffix"):
            raise ValueError(f"PROMPT_PLACEMENT must be 'prefix' or 'suffix', got {self.placement!r}")
        if self.head not in (None, "linear"):
            raise ValueError(f"the prompt's head must be None (the LM head) or 'linear', got {self.head!r} "
                             "(ptj.PromptSpec.head)")
        if self.init not in INIT_KINDS:
            raise ValueError(f"unknown prompt init {self.init!r} (ptj.PromptSpec.init); use one of {INIT_KINDS}")
        if self.visibility is not None:
            from prompt_tuning_jax.models import visibility

            visibility.check(self.visibility)
            if not self.has_prompt:
                raise ValueError(f"PROMPT_VISIBILITY is set but METHOD {self.method!r} trains no prompt: drop it, or "
                                 "use a prompt method")

    def initializer(self, model, tokenizer):
        from prompt_tuning_jax.prompts import initializers as inits

        if self.init == "random_uniform":
            return inits.random_uniform(self.scale)
        if self.init == "zeros":
            return inits.zeros()
        if self.init == "file":
            if not self.file:
                raise ValueError("init='file' needs PROMPT_FILE (a [P, H] .npy, or a T5X checkpoint directory)")
            return inits.from_npy(self.file, variable=self.file_variable)
        # the table's first rows are sliced only for the inits that draw from them
        table = self._embedding_table(model)
        sampled = inits.from_sample_of_embeddings(table, population_size=min(self.population_size, table.shape[0]))
        if self.init in ("sampled_vocab", "sampled_vocab_numpy"):
            return sampled
        if self.init in ("class_labels", "class_labels_numpy"):
            if not self.class_labels:
                raise ValueError("init='class_labels' needs CLASS_LABELS (the verbalizers, e.g. ['negative', "
                                 "'positive']); or use the task's label names")
            return inits.from_class_labels(table, tokenizer, list(self.class_labels), sampled)
        if self.init == "string":
            if not self.text:
                raise ValueError("init='string' needs the text to embed (PromptSpec.text)")
            return inits.from_string(table, tokenizer, self.text, sampled)
        raise ValueError(f"unknown prompt init {self.init!r}; use one of {INIT_KINDS}")

    def _embedding_table(self, model):
        """The model's own table, or for the *_numpy inits the [V, H] one in EMBEDDING_FILE."""
        if not self.init.endswith("_numpy"):
            return model.embedding_table
        from prompt_tuning_jax.models import t5x

        if not self.embedding_file:
            raise ValueError(f"init={self.init!r} needs EMBEDDING_FILE (a [V, H] .npy of embeddings, or a T5X "
                             "checkpoint directory)")
        if t5x.is_t5x_checkpoint(self.embedding_file):  # the original's t5x_load
            table = t5x.read_variable(self.embedding_file, self.embedding_variable or t5x.EMBEDDING_VARIABLE)
        elif not files.is_file(self.embedding_file):
            raise FileNotFoundError(f"EMBEDDING_FILE {self.embedding_file} does not exist")
        else:
            table = np.load(io.BytesIO(files.read_bytes(self.embedding_file)), allow_pickle=False)
        hidden = model.embedding_table.shape[1]
        if table.ndim != 2 or table.shape[1] != hidden:
            raise ValueError(f"EMBEDDING_FILE {self.embedding_file} holds shape {table.shape}; this model needs "
                             f"[V, {hidden}] embeddings")
        return jnp.asarray(table, jnp.float32)

    @property
    def method_impl(self):
        """METHOD as its `methods.Method` (what it adds, what trains, what it exports)."""
        from prompt_tuning_jax.methods import get_method

        return get_method(self.method)

    def _check_other_methods_settings(self) -> None:
        """A setting only another method reads (LORA_TARGETS without 'lora:R') would be ignored: refused."""
        from prompt_tuning_jax.methods import registered

        mine = type(self.method_impl)
        for cls in registered().values():
            for field, default in cls.settings.items():
                if cls is not mine and field not in mine.settings and getattr(self, field) != default:
                    raise ValueError(f"{field.upper()} is set but METHOD is {self.method!r}, which does not read "
                                     f"it: set METHOD '{cls.name}{':' + cls.argument if cls.argument else ''}', "
                                     f"or drop {field.upper()}")

    @property
    def has_prompt(self) -> bool:
        """Whether a soft prompt trains (prompt tuning; not the baselines)."""
        return self.method_impl.has_prompt

    @property
    def demonstrations(self) -> int | None:
        """K demonstrations before each evaluated input (METHOD 'icl:K'), else None."""
        return self.method_impl.demonstrations

    def build(self, model, tokenizer):
        """The PromptedModel: METHOD's variables added to `model`, then the prompt (if METHOD has one) and head."""
        from prompt_tuning_jax.prompts import with_prompt

        self.method_impl.add_variables(model, self)
        init = self.initializer(model, tokenizer) if self.has_prompt else None
        module = self.method_impl.prompt_module(self, model, init, self.num_tasks)  # None: the soft prompt
        return with_prompt(model, self.length if self.has_prompt else 0, init, placement=self.placement,
                           head=self.head, num_labels=self.num_labels, regression=self.regression,
                           num_tasks=self.num_tasks, before_eos=self.before_eos, seed=self.seed,
                           prompt_module=module, visibility=self.visibility, **self.method_impl.prompt_options(self))

    def trainable(self, prompted):
        """The nnx filter of the variables METHOD trains in `prompted` (`methods.Method.trainable`)."""
        return self.method_impl.trainable(prompted)

    def for_task(self, task) -> "PromptSpec":
        """Fills what the task knows: the head's number of labels, and the class labels to initialise from."""
        spec = self
        if spec.head == "linear" and spec.num_labels is None:
            regression = task.kind == "regression"
            spec = dataclasses.replace(spec, num_labels=1 if regression else task.num_classes, regression=regression)
        if spec.init in ("class_labels", "class_labels_numpy") and not spec.class_labels and task.label_names:
            spec = dataclasses.replace(spec, class_labels=list(task.label_names))
        return spec


@dataclasses.dataclass
class DataSpec:
    """The task (MIXTURE_OR_TASK_NAME: one name, or a list for a mixture with one prompt per task) and batches.

    feature_lengths: TASK_FEATURE_LENGTHS, the token limits {'inputs': ..., 'targets': ...}.
    task_overrides: TASK_OVERRIDES, any `get_task` override (local files, verbalizers, ...).
    module: MIXTURE_OR_TASK_MODULE, module(s) imported first, to register a user's tasks (T5X's; the
      original library's `prompt_tuning.data.glue` and T5's are built in, `data.registry.import_task_module`).
    use_cached: USE_CACHED_TASKS, T5X's seqio cache switch; there is no cache here, tasks are always
      tokenized from their sources at the start (True is accepted and says so).
    eval_batch_size: defaults to batch_size; eval_limit: evaluate the first N examples only.
    truncate: 'right' | 'left' | 'error' for over-long examples; prefetch: batches read ahead.
    group_by_length: training batches come from windows of this many batches of the shuffled
      data, sorted by length, so each batch is padded little (0: plain shuffling).
    """

    task: str | Sequence[str] | None = None
    feature_lengths: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"inputs": 128, "targets": 8})
    batch_size: int = 32
    eval_batch_size: int | None = None
    train_split: str = "train"
    eval_split: str | None = "validation"
    eval_limit: int | None = None
    task_overrides: Mapping[str, Any] | None = None
    mixture_rates: Sequence[float] | None = None
    truncate: str = "right"
    seed: int = 0
    prefetch: int = 2
    group_by_length: int = 50
    module: str | Sequence[str] | None = None
    use_cached: bool = False

    def __post_init__(self):
        lengths = self.feature_lengths
        example = "{'inputs': 128, 'targets': 8}"
        if not isinstance(lengths, Mapping) or "inputs" not in lengths:
            raise ValueError(f"TASK_FEATURE_LENGTHS must be a dict like {example}, got {lengths!r}")
        unknown = sorted(set(lengths) - {"inputs", "targets"})
        if unknown:
            raise ValueError(f"TASK_FEATURE_LENGTHS has unknown keys {unknown}; it takes 'inputs' and 'targets', "
                             f"like {example}")
        for key, value in lengths.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"TASK_FEATURE_LENGTHS['{key}'] must be a positive number of tokens, got {value!r} "
                                 f"(e.g. --gin.TASK_FEATURE_LENGTHS=\"{example}\")")
        self.feature_lengths = {"targets": 8, **lengths}
        check_count(self.batch_size, "BATCH_SIZE")
        check_count(self.eval_batch_size, "eval_batch_size (ptj.DataSpec.eval_batch_size)", allow_none=True)
        check_count(self.eval_limit, "eval_limit (ptj.DataSpec.eval_limit)", allow_none=True)
        check_count(self.group_by_length, "group_by_length (ptj.DataSpec.group_by_length)", minimum=0)
        check_count(self.prefetch, "prefetch (ptj.DataSpec.prefetch)", minimum=0)
        if self.truncate not in ("right", "left", "error"):
            raise ValueError(f"truncate must be 'right', 'left' or 'error', got {self.truncate!r}")

    @property
    def task_names(self) -> list[str]:
        if self.task is None:
            return []
        return [self.task] if isinstance(self.task, str) else list(self.task)

    def tasks(self) -> list:
        """The `Task` objects, with TASK_OVERRIDES applied, after importing MIXTURE_OR_TASK_MODULE (`module`)."""
        from prompt_tuning_jax.data import get_task
        from prompt_tuning_jax.data.registry import import_task_module

        for module in [self.module] if isinstance(self.module, str) else list(self.module or []):
            print(f"MIXTURE_OR_TASK_MODULE: {import_task_module(module)}", file=sys.stderr)
        if self.use_cached:
            print("USE_CACHED_TASKS=True: there is no seqio cache here; tasks are read from their sources and "
                  "tokenized when the run starts", file=sys.stderr)
        return [get_task(name, **dict(self.task_overrides or {})) for name in self.task_names]


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """How long to train and what happens on the way.

    Every `eval_every` steps (and at step 0 and at the end) the eval split is
    scored; every `checkpoint_every` steps (and at the end, and on SIGTERM) a
    checkpoint is saved, keeping the newest `keep`. `accum_steps` micro-batches
    make one step's batch. eval_scoring: 'generate' (greedy text must equal a
    label string, the paper's protocol) or 'rank' (see `experiments.scoring`).
    nonfinite: a step whose loss or gradient is NaN or Inf leaves the state unchanged, and
    then 'stop' ends the run with an error naming the last good checkpoint, 'skip' counts it
    (`nonfinite_steps` in the summary) and goes on. wandb_project (WANDB_PROJECT): also log
    to Weights & Biases (`pip install 'prompt_tuning_jax[wandb]'`; WANDB_MODE=offline works
    without network); TensorBoard, CSV and JSONL are always written.
    """

    steps: int = 1000
    eval_every: int = 0
    checkpoint_every: int = 0
    keep: int = 3
    log_every: int = 10
    accum_steps: int = 1
    progress: bool = True
    eval_scoring: str = "generate"
    nonfinite: str = "stop"
    wandb_project: str | None = None

    def __post_init__(self):
        check_count(self.steps, "TRAIN_STEPS")
        check_count(self.eval_every, "EVAL_PERIOD", minimum=0)
        check_count(self.checkpoint_every, "CHECKPOINT_PERIOD", minimum=0)
        check_count(self.keep, "KEEP_CHECKPOINTS", allow_none=True)
        check_count(self.log_every, "log_every (ptj.TrainSpec.log_every)")
        check_count(self.accum_steps, "ACCUM_STEPS")
        if self.eval_scoring not in ("generate", "rank"):
            raise ValueError(f"EVAL_SCORING must be 'generate' or 'rank', got {self.eval_scoring!r}")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be 'stop' or 'skip', got {self.nonfinite!r} (ptj.TrainSpec.nonfinite)")
