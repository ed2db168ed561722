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
A leading "{shared}" in a `data_dir` stands for `shared_data_dir()`:
`$PTJ_SHARED_DATA`, default `<repo>/../shared/data`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence


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
                check_fields(row, required, f"{self.path}/{self.name} split {hf_split!r}")
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
                check_fields(row, required, str(path))
            yield row


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
