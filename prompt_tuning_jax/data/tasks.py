"""The `Task`: one data set as a text-to-text task.

A `Task` turns raw rows (dicts from a source, see `sources.py`) into
text-to-text examples

    {"inputs": "sst2 sentence: a gorgeous film .", "targets": "positive", "label": 1}

plus task-specific extras some metrics need (`answers` for ReCoRD, `group` for
MultiRC), through its formatter (`formats.py`). It also maps decoded model text
back to predictions and runs its metrics. The data layer never knows the model:
tokenizing is `pipeline.py`'s job, and named tasks live in `registry.py`.

    task = Task("my_sst2", "classification", fields_formatter("sentence"), ("sentence",),
                label_names=("negative", "positive"), prefix="sst2",
                source=FileSource("/data/sst2", {"train": "train.tsv"}))
    examples = task.load("train", limit=100)
    task.format({"sentence": "a gorgeous film .", "label": "1"})
    task.compute_metrics(task.metric_targets(examples), predictions)

`style` sets the input text: "t5" is `"<prefix> <field>: <text> ..."`,
"taskless" drops the prefix, "raw" keeps only the texts. The built-in GLUE and
SuperGLUE tasks default to "taskless", as the prompt-tuning paper trained; their
T5X names (`glue_sst2_v200`, ...) select "t5" (see `registry.py`).

`train_transform` turns each formatted example of the "train" split into the
examples trained on (ReCoRD: one per answer; WSC simple: correct referents
only), so `task.load("train")` already gives what T5's training data holds and
the pipeline stays model- and task-agnostic.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from prompt_tuning_jax.data import metrics
from prompt_tuning_jax.data.formats import Formatter
from prompt_tuning_jax.data.sources import LOCAL_HINT, FileSource, HFSource, HubError

KINDS = ("classification", "regression", "generation")
STYLES = ("t5", "taskless", "raw")


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
    train_transform: formatted example -> the examples to train on, applied by
      `load` to the "train" split only (None: the example itself).
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
    train_transform: Callable[[dict], list[dict]] | None = None

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
        """Raw row -> example {"inputs": str, "targets": str, "label": int | float, ...}.

        Generation tasks get label -1; their formatter sees the row's own label.
        """
        row = dict(row)
        if self.kind == "classification":
            row["label"] = self.label_index(row["label"])
        elif self.kind == "regression":
            row["label"] = float(row["label"])
        label = row["label"] if self.kind != "generation" else -1
        example = self.formatter(row, self)
        example.setdefault("targets", self.target_text(label))
        example.setdefault("label", label)
        return example

    def load(self, split: str, limit: int | None = None) -> list[dict]:
        """Examples of one split (the first `limit` when given), `train_transform` applied to "train"."""
        if self.source is None:
            raise ValueError(f"task {self.name} has no source; pass source=/data_dir= to get_task")
        required = self.fields + (("label",) if self.kind != "generation" else ())
        expand = self.train_transform if split == "train" else None
        examples = []
        try:
            for i, row in enumerate(self.source.load(split, required=required)):
                if limit is not None and len(examples) >= limit:
                    break
                try:
                    example = self.format(row)
                except (ValueError, KeyError) as e:
                    raise ValueError(f"{self._where(split, i)}: {e}") from None
                examples.extend(expand(example) if expand else [example])
        except HubError as e:
            raise HubError(f"task {self.name}: {e.reason}", self._local_hint(split)) from None
        if not examples and limit != 0:
            where = self.source.path(split) if hasattr(self.source, "path") else f"split {split!r}"
            raise ValueError(f"{where}: task {self.name} has no examples in split {split!r} (an empty file, or "
                             "a header only)")
        return examples[:limit] if limit is not None else examples

    def _local_hint(self, split: str) -> str:
        """How to give this task local files for `split` instead of the hub: its own file name and folder."""
        local = self.local_source
        file = (local.files or {}).get(split) if local is not None else None
        if file is None:
            return LOCAL_HINT
        hint = (f"without the hub, give the task local files: TASK_OVERRIDES={{'data_dir': '<folder with {file}>'}} "
                f"(get_task({self.name!r}, data_dir=...))")
        if local.data_dir.startswith("{shared}"):
            folder = local.data_dir.replace("{shared}", "$PTJ_SHARED_DATA")
            hint += (f", or put {file} in {folder} (now {local.path(split).parent}) with "
                     "TASK_OVERRIDES={'source': 'local'}")
        return hint

    def _where(self, split: str, i: int) -> str:
        """`file:line` of data row i (0-based) of a file source (after its header line), else the split."""
        if not hasattr(self.source, "path"):
            return f"split {split!r}, data row {i + 1}"
        path = self.source.path(split)
        fmt = self.source._format(path) if hasattr(self.source, "_format") else ""
        header = fmt in ("tsv", "csv") and bool(getattr(self.source, "header", False))
        return f"{path}:{i + 1 + int(header)}"

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
