"""Task registry: the named tasks and `get_task`, which returns one with overrides.

Built in: GLUE (`glue_sst2`, ... with the bare config names as aliases, plus
`glue_mnli_matched` / `glue_mnli_mismatched`), SuperGLUE (`super_glue_boolq`,
..., `super_glue_wsc` as classification and `super_glue_wsc_simple` as T5's
generative WSC), `ag_news`, `imdb` and the offline synthetic `demo_sentiment`
(`demo_sentiment.py`). Importing `prompt_tuning_jax.data` registers them all.

    task = get_task("sst2")                                   # "sentence: ..." (taskless)
    task = get_task("glue_sst2_v200")                         # "sst2 sentence: ..." (T5)
    task = get_task("taskless_glue_sst2_v200_examples")       # the original's name, taskless
    task = get_task("sst2", label_names=("bad", "good"))      # other verbalizers
    task = get_task("cola", data_dir="/data/CoLA", header=False,
                    column_names=("source", "label", "note", "sentence"))
    task = get_task("sst2", source="hf")                      # datasets.load_dataset
    examples = task.load("validation")
    register_task(Task("my_task", ...), aliases=("mine",))
    register_alias("my_t5_task", "my_task", style="t5")
    list_tasks()                                              # sorted names

Style: GLUE and SuperGLUE tasks default to the taskless format ("sentence: ...",
T5's GLUE format without the task-name prefix), as the prompt-tuning paper
trained. The T5X names of the original library and T5 are aliases that pick the
style (`t5x_names()`): `taskless_glue_<c>_<v002|v200>[_examples]` and
`taskless_super_glue_<c>_v102[_examples]` are taskless; `glue_<c>_<v>[_examples]`
and `super_glue_<c>_v102[_examples]` keep T5's prefix ("sst2 sentence: ...").
AG News keeps "ag_news text: ..."; IMDB is the review text alone, as the
original's IMDB task; demo_sentiment keeps "sentiment sentence: ...".

Sources (`sources.py`): SST-2, RTE, MRPC and AG News default to the shared files
in `$PTJ_SHARED_DATA` (default `<repo>/../shared/data`), split by split, with the
hub for splits that have no local file; the other tasks default to the hub,
and any task reads local files when given `data_dir=` / `files=`. MRPC also
reads GLUE's own TSV header (`Quality  #1 ID  #2 ID  #1 String  #2 String`).

Split names: the shared SST-2 `test.tsv` is the GLUE validation set, so for
SST-2 `"validation"` and `"test"` both read it and `"dev"` is the held-out 10%
of training; for RTE `"validation"` and `"dev"` read `dev.tsv`. AG News and
IMDB have no validation split: AG News `"validation"` reads its test set; IMDB
`"validation"` is 1,000 rows held out of train with seed 0 (and `"train"` the
other 24,000), both logged when read. Training-split expansion (ReCoRD: one
example per answer; WSC simple: correct referents only) is the task's
`train_transform`, applied by `Task.load("train")`.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Sequence

from prompt_tuning_jax.data import metrics
from prompt_tuning_jax.data.demo_sentiment import DemoSource
from prompt_tuning_jax.data.formats import (
    fields_formatter,
    multirc_formatter,
    record_formatter,
    record_train_examples,
    wsc_formatter,
    wsc_simple_formatter,
    wsc_simple_train_examples,
)
from prompt_tuning_jax.data.sources import DerivedValidation, FileSource, HFSource, LocalOrHub
from prompt_tuning_jax.data.tasks import Task


class UnknownTaskError(KeyError):
    """`get_task` with a name that is not registered (the message lists close matches)."""

    def __str__(self):
        return str(self.args[0])


_REGISTRY: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}
_ALIAS_OVERRIDES: dict[str, dict] = {}
_FILE_KEYS = {"data_dir", "files", "file_format", "header", "column_names", "columns"}


def _check_free(name: str, overwrite: bool) -> None:
    if (name in _REGISTRY or name in _ALIASES) and not overwrite:
        raise ValueError(f"task name {name!r} is already registered (pass overwrite=True)")


def register_task(task: Task, aliases: Sequence[str] = (), overwrite: bool = False) -> Task:
    """Add `task` (and alias names for it) to the registry; returns it."""
    for name in (task.name, *aliases):
        _check_free(name, overwrite)
    _REGISTRY[task.name] = task
    _ALIASES.pop(task.name, None)
    _ALIAS_OVERRIDES.pop(task.name, None)
    for alias in aliases:
        _ALIASES[alias] = task.name
        _ALIAS_OVERRIDES.pop(alias, None)
    return task


def register_alias(alias: str, task_name: str, overwrite: bool = False, **overrides) -> None:
    """`get_task(alias)` is `get_task(task_name, **overrides)` (e.g. style="t5"); caller overrides win."""
    if task_name not in _REGISTRY:
        raise ValueError(f"cannot alias {alias!r} to unregistered task {task_name!r}")
    _check_free(alias, overwrite)
    _ALIASES[alias] = task_name
    _ALIAS_OVERRIDES[alias] = dict(overrides)


def list_tasks(include_aliases: bool = False) -> list[str]:
    names = list(_REGISTRY) + (list(_ALIASES) if include_aliases else [])
    return sorted(names)


def _unknown(name: str) -> UnknownTaskError:
    known = list_tasks(include_aliases=True)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    close += [k for k in known if name and name in k and k not in close]
    hint = f"; did you mean {close[:5]}?" if close else ""
    if name.startswith("task_index_"):
        hint += (" (the original's task_index_* variants put a task-index sentinel token before the "
                 "inputs; that is not supported: use the taskless_* name)")
    elif name.startswith(("mt5_", "byt5_")):
        hint += " (the vocabulary prefix is not needed: the model's own tokenizer is always used)"
    return UnknownTaskError(f"unknown task {name!r}{hint} Registered tasks: {list_tasks()}")


def _pick_source(name: str, task: Task, source, file_args: dict, overrides: dict):
    """The source `get_task` overrides with (None: keep the task's); may set overrides["local_source"]."""
    if file_args:
        if source not in (None, "local"):
            raise ValueError(f"get_task({name!r}): local file arguments {sorted(file_args)} with source={source!r}")
        base = task.local_source or FileSource(data_dir=".", files={})
        source = dataclasses.replace(base, **file_args)
        overrides["local_source"] = source
    elif source == "hf":
        if task.hf_source is None:
            raise ValueError(f"task {task.name} has no Hugging Face source")
        source = task.hf_source
    elif source == "local":
        if task.local_source is None:
            raise ValueError(f"task {task.name} has no default local files; pass data_dir=/files=")
        source = task.local_source
    return source


# The original library's and T5's seqio task modules: their GLUE / SuperGLUE tasks are built in here, by the
# same names (`t5x_names`), so MIXTURE_OR_TASK_MODULE naming one of them imports nothing.
_ORIGINAL_TASK_MODULES = ("prompt_tuning.data", "t5.data")


def import_task_module(module: str) -> str:
    """MIXTURE_OR_TASK_MODULE, as T5X imports it: a user's module that registers tasks (`register_task`) when
    imported. The original library's and T5's task modules are not imported: -> what was done, in words."""
    import importlib

    if not isinstance(module, str) or not module:
        raise ValueError(f"MIXTURE_OR_TASK_MODULE must be a module name like 'my_tasks', got {module!r}")
    if module == _ORIGINAL_TASK_MODULES[0] or module.startswith(tuple(f"{m}." for m in _ORIGINAL_TASK_MODULES)) \
            or module in _ORIGINAL_TASK_MODULES:
        return f"{module} not imported: its tasks are built in here by the same names (taskless_glue_*, ...)"
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"MIXTURE_OR_TASK_MODULE {module!r} cannot be imported ({e}): name a module on the "
                         "PYTHONPATH that registers its tasks with prompt_tuning_jax.data.register_task") from None
    return f"imported {module}"


def get_task(name: str, **overrides) -> Task:
    """The registered task `name` (or alias, T5X names included), with overrides applied.

    overrides: any `Task` field (label_names, style, prefix, metric_fns, ...);
      source="hf" | "local" | a source object; and local-file arguments
      data_dir, files, file_format, header, column_names, columns, which switch
      the task to a `FileSource` built from its default local layout.
    """
    canonical = _ALIASES.get(name, name)
    if canonical not in _REGISTRY:
        raise _unknown(name)
    task = _REGISTRY[canonical]
    overrides = {**_ALIAS_OVERRIDES.get(name, {}), **overrides}

    file_args = {k: overrides.pop(k) for k in list(overrides) if k in _FILE_KEYS}
    source = overrides.pop("source", None)
    valid = {f.name for f in dataclasses.fields(Task)}
    unknown = set(overrides) - valid
    if unknown:
        raise TypeError(
            f"get_task({name!r}): unknown overrides {sorted(unknown)}; "
            f"allowed: {sorted(valid | _FILE_KEYS | {'source'})}"
        )
    source = _pick_source(name, task, source, file_args, overrides)
    if source is not None:
        overrides["source"] = source
    return dataclasses.replace(task, **overrides) if overrides else task


# --------------------------------------------------------------------------- built-in tasks

_TSV_SPLITS = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_JSONL_SPLITS = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}


def _builtin(name, prefix, fields, label_names=(), *, kind="classification", hf=None, local=None,
             default_local=False, formatter=None, aliases=(), style="taskless", wrap=None,
             **kwargs) -> Task:
    """wrap: applied to the default and the hub source (e.g. `DerivedValidation`), not to local files."""
    wrap = wrap or (lambda source: source)
    source = (LocalOrHub(local, hf) if local is not None and hf is not None else local) if default_local else hf
    task = Task(
        name=name,
        kind=kind,
        formatter=formatter or fields_formatter(*fields),
        fields=fields,
        label_names=label_names,
        prefix=prefix,
        style=style,
        hf_source=wrap(hf) if hf is not None else None,
        local_source=local,
        source=wrap(source) if source is not None else None,
        **kwargs,
    )
    return register_task(task, aliases=aliases)


def _glue(config, fields, label_names, *, split_map=None, local=None, default_local=False,
          hf_config=None, prefix=None, **kwargs):
    return _builtin(
        f"glue_{config}", prefix or config, fields, label_names,
        hf=HFSource("nyu-mll/glue", hf_config or config, split_map or {}),
        local=local or FileSource(f"{{shared}}/{config}", dict(_TSV_SPLITS)),
        default_local=default_local, aliases=(config,), **kwargs,
    )


def _super_glue(config, fields, label_names=(), *, hf_config=None, prefix=None, local_dir=None, **kwargs):
    return _builtin(
        f"super_glue_{config}", prefix or config, fields, label_names,
        hf=HFSource("aps/super_glue", hf_config or config),
        local=FileSource(f"{{shared}}/super_glue_{local_dir or config}", dict(_JSONL_SPLITS)),
        **kwargs,
    )


_MNLI_LOCAL = {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
               "validation_mismatched": "dev_mismatched.tsv"}
# GLUE's own MRPC TSV header: Quality, #1 ID, #2 ID, #1 String, #2 String.
_MRPC_COLUMNS = {"label": "Quality", "sentence1": "#1 String", "sentence2": "#2 String"}

_glue("sst2", ("sentence",), ("negative", "positive"), default_local=True,
      local=FileSource("{shared}/sst2", {"train": "train.tsv", "dev": "dev.tsv",
                                         "test": "test.tsv", "validation": "test.tsv"}))
_glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), default_local=True,
      local=FileSource("{shared}/rte", {"train": "train.tsv", "dev": "dev.tsv", "validation": "dev.tsv"}))
_glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), default_local=True,
      local=FileSource("{shared}/mrpc", dict(_TSV_SPLITS), columns=_MRPC_COLUMNS),
      metric_fns=(metrics.f1_and_accuracy,))
_glue("cola", ("sentence",), ("unacceptable", "acceptable"), metric_fns=(metrics.matthews_corrcoef,))
_glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"))
_glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
      metric_fns=(metrics.f1_and_accuracy,))
_glue("mnli", ("hypothesis", "premise"), ("entailment", "neutral", "contradiction"),
      split_map={"validation": "validation_matched", "test": "test_matched"},
      local=FileSource("{shared}/mnli", {**_MNLI_LOCAL, "validation": "dev_matched.tsv"}))
for _which in ("matched", "mismatched"):  # T5's glue_mnli_{matched,mismatched}: MNLI, one dev set
    _glue(f"mnli_{_which}", ("hypothesis", "premise"), ("entailment", "neutral", "contradiction"),
          hf_config="mnli", prefix="mnli",
          split_map={"validation": f"validation_{_which}", "test": f"test_{_which}"},
          local=FileSource("{shared}/mnli", {**_MNLI_LOCAL, "validation": f"dev_{_which}.tsv"}))
_glue("stsb", ("sentence1", "sentence2"), kind="regression", label_names=(),
      metric_fns=(metrics.pearson_and_spearman,))

_super_glue("boolq", ("passage", "question"), ("False", "True"), aliases=("boolq",))
_super_glue("cb", ("hypothesis", "premise"), ("entailment", "contradiction", "neutral"),
            aliases=("cb",),
            metric_fns=(metrics.accuracy, lambda t, p: metrics.macro_f1(t, p, num_classes=3)))
_super_glue("copa", ("choice1", "choice2", "premise", "question"), ("choice1", "choice2"),
            aliases=("copa",))
_super_glue("rte", ("hypothesis", "premise"), ("entailment", "not_entailment"))
_super_glue("wic", ("sentence1", "sentence2", "word"), ("False", "True"), aliases=("wic",))
_super_glue("wsc", ("text", "span1_index", "span1_text", "span2_index", "span2_text"),
            ("False", "True"), hf_config="wsc.fixed", formatter=wsc_formatter, aliases=("wsc",))
_super_glue("wsc_simple", ("text", "span1_text", "span2_index", "span2_text"), kind="generation",
            hf_config="wsc.fixed", prefix="wsc:", local_dir="wsc", formatter=wsc_simple_formatter,
            aliases=("wsc_simple",), train_transform=wsc_simple_train_examples,
            metric_fns=(metrics.wsc_simple_accuracy,), metric_target=lambda e: (e["targets"], e["correct"]))
_super_glue("multirc", ("paragraph", "question", "answer"), ("False", "True"),
            formatter=multirc_formatter, aliases=("multirc",),
            metric_fns=(metrics.multirc_f1a_em,),
            metric_target=lambda e: (e["group"], e["label"]))
_super_glue("record", ("passage", "query", "entities", "answers"), kind="generation",
            formatter=record_formatter, aliases=("record",), train_transform=record_train_examples,
            metric_fns=(metrics.squad,), metric_target=lambda e: e["answers"])

# Neither has a validation split on the hub: AG News validates on its test set; IMDB on 1,000
# training rows held out with a seed (the original holds out train[-1000:] of TFDS's shuffled
# order; the hub's train is sorted by label, so a seeded slice stands in).
_builtin("ag_news", "ag_news", ("text",), ("World", "Sports", "Business", "Sci/Tech"), style="t5",
         hf=HFSource("fancyzhx/ag_news"), default_local=True,
         wrap=lambda source: DerivedValidation(source, "ag_news", use="test"),
         local=FileSource("{shared}/ag_news", {"dev": "dev.tsv", "test": "test.tsv", "validation": "test.tsv"},
                          header=False, column_names=("text", "label")))
# The original's IMDB task (prompt_tuning/recycling/data/imdb.py) feeds the review text as it is.
_builtin("imdb", "imdb", ("text",), ("negative", "positive"), style="raw",
         hf=HFSource("stanfordnlp/imdb"),
         wrap=lambda source: DerivedValidation(source, "imdb", use="heldout", size=1000, seed=0),
         local=FileSource("{shared}/imdb", dict(_TSV_SPLITS)))

register_task(Task(
    name="demo_sentiment",
    kind="classification",
    formatter=fields_formatter("sentence"),
    fields=("sentence",),
    label_names=("negative", "positive"),
    metric_fns=(metrics.accuracy,),
    prefix="sentiment",
    source=DemoSource(),
))


# --------------------------------------------------------------------------- T5X names

def t5x_names() -> dict[str, tuple[str, str]]:
    """T5X / seqio task names of the original library (and T5) -> (our task, style).

    GLUE (`prompt_tuning/data/glue.py`, T5's `glue_*_v002`), for each config:
    `glue_<c>_<v>[_examples]` (style "t5") and `taskless_glue_<c>_<v>[_examples]`
    ("taskless"), v in v002 (TFDS glue 1.0.0) and v200 (2.0.0).
    SuperGLUE (`prompt_tuning/data/super_glue.py`, T5's `super_glue_*_v102`):
    `super_glue_<c>_v102[_examples]` and `taskless_super_glue_<c>_v102[_examples]`;
    WSC only as T5's "simple" variants (`..._wsc_v102_simple_{train,eval}[_examples]`,
    `..._wsc_and_dev_v102_simple[_examples]`), which are our `super_glue_wsc_simple`.
    """
    names = {}
    glue = ("sst2", "rte", "mrpc", "cola", "qnli", "qqp", "mnli", "mnli_matched", "mnli_mismatched", "stsb")
    for config in glue:
        for version in ("v002", "v200"):
            for suffix in ("", "_examples"):
                names[f"glue_{config}_{version}{suffix}"] = (f"glue_{config}", "t5")
                names[f"taskless_glue_{config}_{version}{suffix}"] = (f"glue_{config}", "taskless")
    for config in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic"):
        for suffix in ("", "_examples"):
            names[f"super_glue_{config}_v102{suffix}"] = (f"super_glue_{config}", "t5")
            names[f"taskless_super_glue_{config}_v102{suffix}"] = (f"super_glue_{config}", "taskless")
    wsc = ("wsc_v102_simple_train", "wsc_v102_simple_eval", "wsc_and_dev_v102_simple")
    for variant in wsc:
        for suffix in ("", "_examples"):
            names[f"super_glue_{variant}{suffix}"] = ("super_glue_wsc_simple", "t5")
            names[f"taskless_super_glue_{variant}{suffix}"] = ("super_glue_wsc_simple", "taskless")
    return names


for _alias, (_task, _style) in t5x_names().items():
    register_alias(_alias, _task, style=_style)
