"""Sources: where the rows of a data set come from.

A source has `load(split, required=()) -> Iterator[dict]`: the raw rows of one
split, as dicts of column -> value, with the `required` fields checked on the
first row (`MissingColumnError` names the columns that do exist). Turning rows
into text is the job of a `Task` (`tasks.py`) and its formatter (`formats.py`).

    source = FileSource("{shared}/sst2", {"train": "train.tsv", "validation": "test.tsv"})
    rows = source.load("validation", required=("sentence", "label"))
    source = FileSource("/data/CoLA", {"train": "train.tsv"}, header=False,
                        column_names=("source", "label", "note", "sentence"))
    source = HFSource("nyu-mll/glue", "mnli", {"validation": "validation_matched"})
    source = LocalOrHub(local=FileSource(...), hub=HFSource(...))   # per split

`FileSource` reads TSV (csv module, `QUOTE_NONE`, so quotes in text are kept
as-is), CSV or JSONL, with or without a header, with a column mapping given as
arguments (gin can bind all of them). `HFSource` calls
`datasets.load_dataset(path, name, split=...)` when the hub is reachable.
`LocalOrHub` reads a split's local file where it exists, else the hub.
`DerivedValidation` gives a "validation" split to data sets that have none
(AG News: its test set; IMDB: a seeded slice held out of train).
A leading "{shared}" in a `data_dir` stands for `shared_data_dir()`:
`$PTJ_SHARED_DATA`, default `<repo>/../shared/data`.

Offline (`HF_DATASETS_OFFLINE=1` or `HF_HUB_OFFLINE=1`) `datasets` reads a hub
data set from its cache (`HF_DATASETS_CACHE`, default
~/.cache/huggingface/datasets) when an earlier online run filled it.
When the hub cannot give a split (offline and not cached, no such split, or
`datasets` >= 4 refusing a data set that still needs a loading script)
`HFSource` raises one `HubError` (a `ValueError`) that names the data set and
how to use local files; `Task.load` swaps in the task's own local layout.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from etils import epath

from prompt_tuning_jax import files as storage  # FileSource has a field named `files`

log = logging.getLogger(__name__)

LOCAL_HINT = ("without the hub, point the task at local files: put them in $PTJ_SHARED_DATA "
              "(default <repo>/../shared/data) or pass TASK_OVERRIDES={'data_dir': ..., 'files': {...}} "
              "(get_task(name, data_dir=..., files=...))")


def shared_data_dir() -> Path:
    """`$PTJ_SHARED_DATA`, else `<repo>/../shared/data`."""
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    return Path(os.environ.get("PTJ_SHARED_DATA", default))


class MissingColumnError(KeyError):
    """A row lacks a field the task reads (the message names the columns that exist)."""

    def __str__(self):
        return str(self.args[0])


def check_fields(row: Mapping, required: Sequence[str], where: str) -> None:
    """Raise `MissingColumnError` if `row` lacks any of `required`; `where` names the data."""
    missing = [f for f in required if f not in row]
    if missing:
        raise MissingColumnError(
            f"{where}: column(s) {missing} not found; columns there: {sorted(row)}. "
            "Map them with columns={'<field>': '<column in file>'} "
            "(or name headerless columns with column_names=...)."
        )


class HubError(ValueError):
    """The Hugging Face hub could not give a split; the message names the data set and the way out.

    `reason` is the message without its hint on local files, so a task can give its own hint instead.
    """

    def __init__(self, reason: str, hint: str | None = None):
        super().__init__(reason if hint is None else f"{reason}; {hint}")
        self.reason = reason


def _offline_state() -> str:
    """Why the hub is not asked, in words: the offline variable that is set, or an unreachable hub."""
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        return "the hub cannot be reached"
    variable = "HF_DATASETS_OFFLINE" if os.environ.get("HF_DATASETS_OFFLINE") is not None else "HF_HUB_OFFLINE"
    return f"{variable}={os.environ.get(variable, '1')} keeps the hub off"


def _not_cached(error: Exception) -> str | None:
    """Why a data set could not load when it is neither on a reachable hub nor in the datasets cache, else None.

    `datasets` tries its cache after the hub fails: a ConnectionError means the data set is not cached;
    a ValueError "Couldn't find cache for ..." means other configs of it are (they are listed).
    """
    import datasets

    text = str(error)
    if not (isinstance(error, ConnectionError) or text.startswith("Couldn't find cache for")):
        return None
    cached = text.split("Available configs in the cache: ", 1)[1] if "Available configs" in text else ""
    where = f"the datasets cache {datasets.config.HF_DATASETS_CACHE}"
    held = f" (it holds only configs {cached})" if cached else ""
    return f"it is not in {where}{held} and {_offline_state()} ({type(error).__name__})"


def _hub_error(name: str, split: str, error: Exception) -> HubError:
    """One `HubError` for a failed `datasets.load_dataset`, in our words where the cause is known."""
    first_line = (str(error).splitlines() or [""])[0][:200]
    not_cached = _not_cached(error)
    if not_cached:
        return HubError(f"could not load {name} split {split!r}: {not_cached}", LOCAL_HINT)
    if "scripts are no longer supported" in str(error):
        import datasets

        why = (f"datasets {datasets.__version__} no longer runs the loading script this data set needs "
               f"({first_line}); use local files, or datasets<4")
    else:
        why = f"{type(error).__name__}: {first_line}"
    return HubError(f"could not load {name} split {split!r} from the Hugging Face hub ({why})", LOCAL_HINT)


@dataclasses.dataclass(frozen=True)
class HFSource:
    """Rows from `datasets.load_dataset(path, name, split=split_map.get(split, split))`."""

    path: str
    name: str | None = None
    split_map: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def load(self, split: str, required: Sequence[str] = ()) -> Iterator[dict]:
        import datasets  # heavy; only when the hub path is used

        hf_split = self.split_map.get(split, split)
        name = f"{self.path}{'/' + self.name if self.name else ''}"
        try:
            data = datasets.load_dataset(self.path, self.name, split=hf_split)
        except (ConnectionError, OSError, ValueError, RuntimeError, ImportError) as e:
            raise _hub_error(name, hf_split, e) from None
        for i, row in enumerate(data):
            if i == 0:
                check_fields(row, required, f"{name} split {hf_split!r}")
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

    def path(self, split: str) -> epath.Path:
        """The split's file: a local path or a bucket object (gs://)."""
        if split not in self.files:
            raise ValueError(f"no file for split {split!r}; splits: {sorted(self.files)}")
        data_dir = self.data_dir.replace("{shared}", str(shared_data_dir()))
        return storage.Path(data_dir) / self.files[split]

    def _format(self, path: epath.Path) -> str:
        fmt = self.file_format or path.suffix.lstrip(".").lower()
        if fmt not in ("tsv", "csv", "jsonl"):
            raise ValueError(f"{path}: unknown file format {fmt!r}; use file_format='tsv'|'csv'|'jsonl'")
        return fmt

    def _raw_rows(self, path: epath.Path) -> Iterator[dict]:
        fmt = self._format(path)
        with _open_text(path, newline="" if fmt != "jsonl" else None) as f:
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
                check_fields(row, required, str(path))
            yield row


def _open_text(path: epath.Path, newline: str | None):
    """A text file to iterate over: streamed when local, read whole from a bucket (CSV needs newline='')."""
    if storage.is_local(path):
        return open(path, newline=newline, encoding="utf-8")
    return io.StringIO(path.read_text(encoding="utf-8"), newline=newline)


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

    def path(self, split: str) -> epath.Path:
        return self.local.path(split)

    def load(self, split: str, required: Sequence[str] = ()) -> Iterator[dict]:
        return self._pick(split).load(split, required)


@dataclasses.dataclass(frozen=True)
class DerivedValidation:
    """A "validation" split for a data set that has none, logged whenever it is read.

    use="test": "validation" reads the source's "test" split.
    use="heldout": "validation" is `size` rows of the source's "train" split,
    picked by a permutation with `seed`, in their original order; "train" is
    then the other rows, so the two never overlap. Other splits pass through.
    """

    source: Any
    dataset: str
    use: str = "test"
    size: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.use not in ("test", "heldout"):
            raise ValueError(f"DerivedValidation use={self.use!r}; use 'test' or 'heldout'")

    def describe(self) -> str:
        if self.use == "test":
            return f"{self.dataset} has no validation split: 'validation' reads its 'test' split"
        return (f"{self.dataset} has no validation split: 'validation' is {self.size} rows held out of "
                f"'train' (seeded permutation, seed {self.seed}) and 'train' is the other rows")

    def load(self, split: str, required: Sequence[str] = ()) -> Iterator[dict]:
        if split == "validation":
            log.warning(self.describe())
        if self.use == "test" or split not in ("train", "validation"):
            yield from self.source.load("test" if split == "validation" else split, required)
            return
        rows = list(self.source.load("train", required))
        if len(rows) <= self.size:
            raise ValueError(f"{self.dataset}: cannot hold out {self.size} of {len(rows)} training rows")
        held = np.zeros(len(rows), bool)
        held[np.random.default_rng(self.seed).permutation(len(rows))[: self.size]] = True
        keep = held if split == "validation" else ~held
        yield from (row for row, k in zip(rows, keep) if k)
