"""Task registry: where the rows of a data set come from and how they become text.

A `Task` turns raw rows (dicts from a file or a Hugging Face data set) into
text-to-text examples

    {"inputs": "sst2 sentence: a gorgeous film .", "targets": "positive", "label": 1}

plus task-specific extras some metrics need (`answers` for ReCoRD, `group` for
MultiRC). The data layer never knows the model: tokenizing is `pipeline.py`'s job.

    task = get_task("sst2")                                   # shared local files
    task = get_task("sst2", style="taskless")                 # "sentence: ..."
    task = get_task("sst2", label_names=("bad", "good"))      # other verbalizers
    task = get_task("cola", data_dir="/data/CoLA", header=False,
                    column_names=("source", "label", "note", "sentence"))
    task = get_task("sst2", source="hf")                      # datasets.load_dataset
    examples = task.load("validation")

Formats follow T5: `"<prefix> <field>: <text> <field>: <text>"` with the data
set's own field names. `style="taskless"` drops the task prefix (the original
prompt-tuning library's "taskless" variants); `style="raw"` keeps only the texts.

Sources. `FileSource` reads TSV (csv module, `QUOTE_NONE`, so quotes in text
are kept as-is), CSV or JSONL, with or without a header, with a column mapping
given as arguments (gin can bind all of them). `HFSource` calls
`datasets.load_dataset(path, name, split=...)` when the hub is reachable.
SST-2, RTE and AG News default to the shared files in `$PTJ_SHARED_DATA`
(default `<repo>/../shared/data`); the other tasks default to the hub, and any
task reads local files when given `data_dir=` / `files=`.

Split names: the shared SST-2 `test.tsv` is the GLUE validation set, so for
SST-2 `"validation"` and `"test"` both read it and `"dev"` is the held-out 10%
of training; for RTE `"validation"` and `"dev"` read `dev.tsv`.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from prompt_tuning_jax.data import metrics

KINDS = ("classification", "regression", "generation")
STYLES = ("t5", "taskless", "raw")


def shared_data_dir() -> Path:
    """`$PTJ_SHARED_DATA`, else `<repo>/../shared/data`."""
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    return Path(os.environ.get("PTJ_SHARED_DATA", default))


class UnknownTaskError(KeyError):
    """`get_task` with a name that is not registered (the message lists close matches)."""

    def __str__(self):
        return str(self.args[0])


class MissingColumnError(KeyError):
    """A row lacks a field the task reads (the message names the columns that exist)."""

    def __str__(self):
        return str(self.args[0])


def _check_fields(row: Mapping, required: Sequence[str], where: str) -> None:
    missing = [f for f in required if f not in row]
    if missing:
        raise MissingColumnError(
            f"{where}: column(s) {missing} not found; columns there: {sorted(row)}. "
            "Map them with columns={'<field>': '<column in file>'} "
            "(or name headerless columns with column_names=...)."
        )


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class HFSource:
    """Rows from `datasets.load_dataset(path, name, split=split_map.get(split, split))`."""

    path: str
    name: str | None = None
    split_map: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def load(self, split: str, required: Sequence[str] = ()) -> Iterator[dict]:
        import datasets  # heavy; only when the hub path is used

        hf_split = self.split_map.get(split, split)
        try:
            data = datasets.load_dataset(self.path, self.name, split=hf_split)
        except (ConnectionError, OSError, ValueError) as e:
            raise ValueError(
                f"could not load {self.path}{'/' + self.name if self.name else ''} split {hf_split!r} from the "
                f"Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}); without the hub, "
                "point the task at local files (PTJ_SHARED_DATA, or TASK_OVERRIDES={'data_dir': ..., 'files': ...})"
            ) from None
        for i, row in enumerate(data):
            if i == 0:
                _check_fields(row, required, f"{self.path}/{self.name} split {hf_split!r}")
            yield dict(row)


@dataclasses.dataclass(frozen=True)
class FileSource:
    """Rows from local TSV / CSV / JSONL files, one file per split.

    data_dir: folder of the files; a leading "{shared}" is replaced by
      `shared_data_dir()` when the file is read.
    files: split name -> file name (relative to data_dir, or absolute).
    file_format: "tsv", "csv" or "jsonl"; None infers it from the suffix.
    header: whether the first TSV/CSV line names the columns.
    column_names: names for the columns by position when there is no header
      (also allowed with a header, to rename them all).
    columns: task field -> column in the file, for files whose names differ
      (e.g. {"sentence": "text"}); unmapped fields keep their own name.
    """

    data_dir: str
    files: Mapping[str, str]
    file_format: str | None = None
    header: bool = True
    column_names: Sequence[str] | None = None
    columns: Mapping[str, str] | None = None

    def path(self, split: str) -> Path:
        if split not in self.files:
            raise ValueError(f"no file for split {split!r}; splits: {sorted(self.files)}")
        data_dir = self.data_dir.replace("{shared}", str(shared_data_dir()))
        return Path(data_dir) / self.files[split]

    def _format(self, path: Path) -> str:
        fmt = self.file_format or path.suffix.lstrip(".").lower()
        if fmt not in ("tsv", "csv", "jsonl"):
            raise ValueError(f"{path}: unknown file format {fmt!r}; use file_format='tsv'|'csv'|'jsonl'")
        return fmt

    def _raw_rows(self, path: Path) -> Iterator[dict]:
        fmt = self._format(path)
        with open(path, newline="" if fmt != "jsonl" else None, encoding="utf-8") as f:
            if fmt == "jsonl":
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as e:
                            raise ValueError(f"{path}:{line_no}: bad JSON: {e}") from None
                return
            if fmt == "tsv":
                reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                reader = csv.reader(f)
            names = list(self.column_names) if self.column_names is not None else None
            for line_no, values in enumerate(reader, 1):
                if line_no == 1 and self.header:
                    names = names or values
                    continue
                if names is None:
                    raise ValueError(
                        f"{path} has no header (header=False): name its columns with column_names=..."
                    )
                if len(values) != len(names):
                    raise ValueError(
                        f"{path}:{line_no}: {len(values)} fields, expected {len(names)} ({names})"
                    )
                yield dict(zip(names, values))

    def load(self, split: str, required: Sequence[str] = ()) -> Iterator[dict]:
        path = self.path(split)
        if not path.is_file():
            raise FileNotFoundError(
                f"data file for split {split!r} not found: {path} "
                "(set PTJ_SHARED_DATA, pass data_dir=/files=, or use source='hf')"
            )
        mapping = dict(self.columns or {})
        for i, row in enumerate(self._raw_rows(path)):
            for field, column in mapping.items():
                if column in row:
                    row[field] = row[column]
            if i == 0:
                _check_fields(row, required, str(path))
            yield row


# --------------------------------------------------------------------------- task


Formatter = Callable[[Mapping[str, Any], "Task"], dict]


@dataclasses.dataclass(frozen=True)
class LocalOrHub:
    """Local files where they exist (e.g. ../shared/data), else the Hugging Face hub, per split."""

    local: FileSource
    hub: HFSource

    def _pick(self, split: str):
        try:
            if self.local.path(split).exists():
                return self.local
        except ValueError:  # no local file for this split
            pass
        return self.hub

    def path(self, split: str) -> Path:
        return self.local.path(split)

    def load(self, split: str, required: Sequence[str] = ()) -> Iterator[dict]:
        return self._pick(split).load(split, required)


@dataclasses.dataclass(frozen=True)
class Task:
    """One data set as a text-to-text task.

    name: registry name.
    kind: "classification" (label is a class id), "regression" (a float) or
      "generation" (free text; label is -1).
    formatter: `fn(row, task) -> {"inputs", "targets", ...}`; row["label"] is
      already converted (class id / float). Use `task.join(...)` and
      `task.target_text(label)` so style and verbalizers apply.
    fields: row fields the formatter reads (checked on the first row), besides "label".
    label_names: verbalizers, the target text of each class (overridable).
    classes: the data set's own class names, used to read string labels from
      files; defaults to label_names. Labels may also be integer ids.
    metric_fns: `fn(targets, predictions) -> dict`, see `metrics.py`.
    prefix: the T5 task prefix ("sst2"); style: "t5" | "taskless" | "raw".
    source: what `load` reads; hf_source / local_source: the alternatives
      `get_task(source="hf" | "local")` switches to.
    metric_target: example -> the object metrics compare with predictions;
      default the label (classification, regression) or the targets text.
    """

    name: str
    kind: str
    formatter: Formatter
    fields: tuple[str, ...]
    label_names: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    metric_fns: tuple[Callable, ...] = (metrics.accuracy,)
    prefix: str = ""
    style: str = "t5"
    source: Any = None
    hf_source: HFSource | None = None
    local_source: FileSource | None = None
    metric_target: Callable[[dict], Any] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} not in {KINDS}")
        if self.style not in STYLES:
            raise ValueError(f"task {self.name}: style {self.style!r} not in {STYLES}")
        object.__setattr__(self, "label_names", tuple(self.label_names))
        object.__setattr__(self, "classes", tuple(self.classes or self.label_names))
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "metric_fns", tuple(self.metric_fns))
        if self.kind == "classification":
            if not self.label_names:
                raise ValueError(f"task {self.name}: a classification task needs label_names")
            if len(self.label_names) != len(self.classes):
                raise ValueError(
                    f"task {self.name}: {len(self.label_names)} label_names {self.label_names} "
                    f"for {len(self.classes)} classes {self.classes}"
                )
            if len(set(self.label_names)) != len(self.label_names):
                raise ValueError(f"task {self.name}: label_names must differ: {self.label_names}")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    # ---- text formatting helpers for formatters
    def join(self, *pairs: tuple[str, str]) -> str:
        """[(field, text), ...] -> input text in this task's style (texts stripped)."""
        if self.style == "raw":
            return " ".join(str(text).strip() for _, text in pairs)
        body = " ".join(f"{field}: {str(text).strip()}" for field, text in pairs)
        return f"{self.prefix} {body}" if self.style == "t5" and self.prefix else body

    def target_text(self, label) -> str:
        """Class id -> verbalizer; regression -> T5's rounding to 0.2 ("3.8"); -1 -> ""."""
        if self.kind == "regression":
            return f"{np.round(float(label) * 5) / 5:.1f}"
        return self.label_names[label] if label >= 0 else ""

    # ---- labels
    def label_index(self, value) -> int:
        """A raw label (id, "3", class name or verbalizer) -> class id; -1 stays unlabeled."""
        if isinstance(value, (bool, np.bool_)):
            value = int(value)
        if isinstance(value, str):
            text = value.strip()
            for names in (self.classes, self.label_names):
                if text in names:
                    return names.index(text)
            lowered = [n.lower() for n in self.classes]
            if text.lower() in lowered:
                return lowered.index(text.lower())
            if re.fullmatch(r"-?\d+", text):
                value = int(text)
            else:
                raise ValueError(
                    f"task {self.name}: unknown label {value!r}; known labels: {list(self.classes)}"
                    + (f" (or verbalizers {list(self.label_names)})" if self.label_names != self.classes else "")
                    + f" or ids 0..{self.num_classes - 1}"
                )
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        if not isinstance(value, (int, np.integer)) or not -1 <= value < self.num_classes:
            raise ValueError(
                f"task {self.name}: label {value!r} is not a class id in -1..{self.num_classes - 1} "
                f"(classes {list(self.classes)})"
            )
        return int(value)

    def format(self, row: Mapping[str, Any]) -> dict:
        """Raw row -> example {"inputs": str, "targets": str, "label": int | float, ...}."""
        row = dict(row)
        if self.kind == "classification":
            row["label"] = self.label_index(row["label"])
        elif self.kind == "regression":
            row["label"] = float(row["label"])
        else:
            row["label"] = -1
        example = self.formatter(row, self)
        example.setdefault("targets", self.target_text(row["label"]))
        example.setdefault("label", row["label"])
        return example

    def load(self, split: str, limit: int | None = None) -> list[dict]:
        """Examples of one split (the first `limit` rows when given)."""
        if self.source is None:
            raise ValueError(f"task {self.name} has no source; pass source=/data_dir= to get_task")
        required = self.fields + (("label",) if self.kind != "generation" else ())
        examples = []
        for i, row in enumerate(self.source.load(split, required=required)):
            if limit is not None and len(examples) >= limit:
                break
            try:
                examples.append(self.format(row))
            except ValueError as e:
                where = self.source.path(split) if hasattr(self.source, "path") else f"split {split!r}"
                raise ValueError(f"{where}, data row {i + 1}: {e}") from None
        return examples

    # ---- predictions and metrics
    def text_to_prediction(self, text: str):
        """Decoded model text -> prediction in label space (as T5's postprocessors).

        classification: class id of the exactly matching verbalizer, else -1
        (always wrong); regression: the float, else -1.0; generation: stripped text.
        """
        text = text.strip()
        if self.kind == "classification":
            return self.label_names.index(text) if text in self.label_names else -1
        if self.kind == "regression":
            try:
                return float(text)
            except ValueError:
                return -1.0
        return text

    def metric_targets(self, examples: Sequence[dict]) -> list:
        if self.metric_target is not None:
            return [self.metric_target(e) for e in examples]
        key = "targets" if self.kind == "generation" else "label"
        return [e[key] for e in examples]

    def compute_metrics(self, targets: Sequence, predictions: Sequence) -> dict[str, float]:
        """Run every metric fn and merge their dicts (later keys win on a clash)."""
        out: dict[str, float] = {}
        for fn in self.metric_fns:
            out.update(fn(targets, predictions))
        return out


# --------------------------------------------------------------------------- formatters


def fields_formatter(*fields: str) -> Formatter:
    """T5's GLUE format: `"<prefix> f1: <row[f1]> f2: <row[f2]>"` in the given order."""

    def formatter(row, task):
        return {"inputs": task.join(*[(f, row[f]) for f in fields])}

    formatter.__name__ = f"fields_formatter{fields}"
    return formatter


def _mark_words(words: list[str], start: int, text: str, mark: str) -> None:
    n = max(1, len(str(text).split()))
    if not (0 <= start and start + n <= len(words)):
        raise ValueError(f"span {text!r} at word {start} is outside the text ({len(words)} words)")
    words[start] = mark + words[start]
    words[start + n - 1] = words[start + n - 1] + mark


def wsc_formatter(row, task):
    """WSC: the candidate is marked *like this*, the pronoun #like this#; target True/False."""
    words = str(row["text"]).split(" ")
    _mark_words(words, int(row["span1_index"]), row["span1_text"], "*")
    _mark_words(words, int(row["span2_index"]), row["span2_text"], "#")
    return {"inputs": task.join(("text", " ".join(words)))}


def _remove_markup(text: str) -> str:
    return re.sub(r"<(/)?b>", "", re.sub(r"<br>", " ", str(text)))


def multirc_formatter(row, task):
    """MultiRC: one example per answer option; `group` identifies its question for EM."""
    paragraph, question = _remove_markup(row["paragraph"]), _remove_markup(row["question"])
    return {
        "inputs": task.join(("question", question), ("answer", _remove_markup(row["answer"])),
                            ("paragraph", paragraph)),
        "group": (paragraph, question),
    }


def _as_list(value) -> list[str]:
    if isinstance(value, str):
        return [v for v in value.split("|") if v] if "|" in value else ([value] if value else [])
    if isinstance(value, Mapping) and "text" in value:  # ReCoRD JSON entity spans
        return list(value["text"])
    return [str(v) for v in value]


def record_formatter(row, task):
    """ReCoRD: query with @placeholder, candidate entities, passage -> the answer entity.

    Targets are the first gold answer; `answers` keeps all of them for the metric.
    Lists may be JSON lists or "|"-separated strings in TSV/CSV files.
    """
    passage = re.sub(r"\n@highlight\n", ". ", str(row["passage"]))
    answers = _as_list(row["answers"])
    entities = list(dict.fromkeys(_as_list(row["entities"])))
    return {
        "inputs": task.join(("query", row["query"]), ("entities", ", ".join(entities)),
                            ("passage", passage)),
        "targets": answers[0] if answers else "",
        "answers": answers,
    }


# --------------------------------------------------------------------------- registry

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

# The offline demo task registers itself on import (it needs Task and register_task above).
from prompt_tuning_jax.data import demo as _demo  # noqa: E402,F401
