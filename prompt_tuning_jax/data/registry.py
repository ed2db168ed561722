"""Task registry: the named tasks and `get_task`, which returns one with overrides.

Built in: GLUE (`glue_sst2`, ... with the bare config names as aliases),
SuperGLUE (`super_glue_boolq`, ...), `ag_news`, `imdb` and the offline
synthetic `demo_sentiment` (`demo_sentiment.py`). Importing
`prompt_tuning_jax.data` registers them all.

    task = get_task("sst2")                                   # shared local files
    task = get_task("sst2", style="taskless")                 # "sentence: ..."
    task = get_task("sst2", label_names=("bad", "good"))      # other verbalizers
    task = get_task("cola", data_dir="/data/CoLA", header=False,
                    column_names=("source", "label", "note", "sentence"))
    task = get_task("sst2", source="hf")                      # datasets.load_dataset
    examples = task.load("validation")
    register_task(Task("my_task", ...), aliases=("mine",))
    list_tasks()                                              # sorted names

Sources (`sources.py`): SST-2, RTE and AG News default to the shared files in
`$PTJ_SHARED_DATA` (default `<repo>/../shared/data`), split by split, with the
hub for splits that have no local file; the other tasks default to the hub,
and any task reads local files when given `data_dir=` / `files=`.

Split names: the shared SST-2 `test.tsv` is the GLUE validation set, so for
SST-2 `"validation"` and `"test"` both read it and `"dev"` is the held-out 10%
of training; for RTE `"validation"` and `"dev"` read `dev.tsv`.
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
    wsc_formatter,
)
from prompt_tuning_jax.data.sources import FileSource, HFSource, LocalOrHub
from prompt_tuning_jax.data.tasks import Task


class UnknownTaskError(KeyError):
    """`get_task` with a name that is not registered (the message lists close matches)."""

    def __str__(self):
        return str(self.args[0])


_REGISTRY: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}
_FILE_KEYS = {"data_dir", "files", "file_format", "header", "column_names", "columns"}


def register_task(task: Task, aliases: Sequence[str] = (), overwrite: bool = False) -> Task:
    """Add `task` (and alias names for it) to the registry; returns it."""
    for name in (task.name, *aliases):
        taken = name in _REGISTRY or name in _ALIASES
        if taken and not overwrite:
            raise ValueError(f"task name {name!r} is already registered (pass overwrite=True)")
    _REGISTRY[task.name] = task
    _ALIASES.pop(task.name, None)
    for alias in aliases:
        _ALIASES[alias] = task.name
    return task


def list_tasks(include_aliases: bool = False) -> list[str]:
    names = list(_REGISTRY) + (list(_ALIASES) if include_aliases else [])
    return sorted(names)


def get_task(name: str, **overrides) -> Task:
    """The registered task `name` (or alias), with overrides applied.

    overrides: any `Task` field (label_names, style, prefix, metric_fns, ...);
      source="hf" | "local" | a source object; and local-file arguments
      data_dir, files, file_format, header, column_names, columns, which switch
      the task to a `FileSource` built from its default local layout.
    """
    canonical = _ALIASES.get(name, name)
    if canonical not in _REGISTRY:
        known = list_tasks(include_aliases=True)
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        close += [k for k in known if name and name in k and k not in close]
        hint = f"; did you mean {close[:5]}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}{hint} Registered tasks: {list_tasks()}")
    task = _REGISTRY[canonical]

    file_args = {k: overrides.pop(k) for k in list(overrides) if k in _FILE_KEYS}
    source = overrides.pop("source", None)
    valid = {f.name for f in dataclasses.fields(Task)}
    unknown = set(overrides) - valid
    if unknown:
        raise TypeError(
            f"get_task({name!r}): unknown overrides {sorted(unknown)}; "
            f"allowed: {sorted(valid | _FILE_KEYS | {'source'})}"
        )
    if file_args:
        if source not in (None, "local"):
            raise ValueError(f"get_task({name!r}): local file arguments {sorted(file_args)} with source={source!r}")
        base = task.local_source or FileSource(data_dir=".", files={})
        source = dataclasses.replace(base, **file_args)
        overrides["local_source"] = source
    elif source == "hf":
        if task.hf_source is None:
            raise ValueError(f"task {canonical} has no Hugging Face source")
        source = task.hf_source
    elif source == "local":
        if task.local_source is None:
            raise ValueError(f"task {canonical} has no default local files; pass data_dir=/files=")
        source = task.local_source
    if source is not None:
        overrides["source"] = source
    return dataclasses.replace(task, **overrides) if overrides else task


# --------------------------------------------------------------------------- built-in tasks

_TSV_SPLITS = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_JSONL_SPLITS = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}


def _builtin(name, prefix, fields, label_names=(), *, kind="classification", hf=None, local=None,
             default_local=False, formatter=None, aliases=(), **kwargs) -> Task:
    task = Task(
        name=name,
        kind=kind,
        formatter=formatter or fields_formatter(*fields),
        fields=fields,
        label_names=label_names,
        prefix=prefix,
        hf_source=hf,
        local_source=local,
        source=(LocalOrHub(local, hf) if local is not None and hf is not None else local) if default_local else hf,
        **kwargs,
    )
    return register_task(task, aliases=aliases)


def _glue(config, fields, label_names, *, split_map=None, local=None, default_local=False, **kwargs):
    return _builtin(
        f"glue_{config}", config, fields, label_names,
        hf=HFSource("nyu-mll/glue", config, split_map or {}),
        local=local or FileSource(f"{{shared}}/{config}", dict(_TSV_SPLITS)),
        default_local=default_local, aliases=(config,), **kwargs,
    )


def _super_glue(config, fields, label_names=(), *, hf_config=None, **kwargs):
    return _builtin(
        f"super_glue_{config}", config, fields, label_names,
        hf=HFSource("aps/super_glue", hf_config or config),
        local=FileSource(f"{{shared}}/super_glue_{config}", dict(_JSONL_SPLITS)),
        **kwargs,
    )


_glue("sst2", ("sentence",), ("negative", "positive"), default_local=True,
      local=FileSource("{shared}/sst2", {"train": "train.tsv", "dev": "dev.tsv",
                                         "test": "test.tsv", "validation": "test.tsv"}))
_glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), default_local=True,
      local=FileSource("{shared}/rte", {"train": "train.tsv", "dev": "dev.tsv", "validation": "dev.tsv"}))
_glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
      metric_fns=(metrics.f1_and_accuracy,))
_glue("cola", ("sentence",), ("unacceptable", "acceptable"), metric_fns=(metrics.matthews_corrcoef,))
_glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"))
_glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
      metric_fns=(metrics.f1_and_accuracy,))
_glue("mnli", ("hypothesis", "premise"), ("entailment", "neutral", "contradiction"),
      split_map={"validation": "validation_matched", "test": "test_matched"},
      local=FileSource("{shared}/mnli", {
          "train": "train.tsv", "validation": "dev_matched.tsv",
          "validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"}))
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
_super_glue("multirc", ("paragraph", "question", "answer"), ("False", "True"),
            formatter=multirc_formatter, aliases=("multirc",),
            metric_fns=(metrics.multirc_f1a_em,),
            metric_target=lambda e: (e["group"], e["label"]))
_super_glue("record", ("passage", "query", "entities", "answers"), kind="generation",
            formatter=record_formatter, aliases=("record",),
            metric_fns=(metrics.squad,), metric_target=lambda e: e["answers"])

_builtin("ag_news", "ag_news", ("text",), ("World", "Sports", "Business", "Sci/Tech"),
         hf=HFSource("fancyzhx/ag_news"), default_local=True,
         local=FileSource("{shared}/ag_news", {"dev": "dev.tsv", "test": "test.tsv"},
                          header=False, column_names=("text", "label")))
_builtin("imdb", "imdb", ("text",), ("negative", "positive"), hf=HFSource("stanfordnlp/imdb"),
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
