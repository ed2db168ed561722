"""Formatters: how a data set's rows become text.

A formatter is `fn(row, task) -> {"inputs": str, ...}`; the `Task`
(`tasks.py`) calls it with row["label"] already converted (class id / float)
and fills in "targets" (the label's verbalizer) and "label" unless the
formatter sets them. Task-specific extras some metrics need ride along:
`answers` for ReCoRD, `group` for MultiRC.

    {"inputs": "sst2 sentence: a gorgeous film .", "targets": "positive", "label": 1}

Formats follow T5: `"<prefix> <field>: <text> <field>: <text>"` with the data
set's own field names, built with `task.join(...)` so the task's style applies:
`style="taskless"` drops the task prefix (the original prompt-tuning library's
"taskless" variants); `style="raw"` keeps only the texts.

    fields_formatter("sentence1", "sentence2")   # GLUE pairs, in this order
    wsc_formatter      # WSC: "*candidate*" and "#pronoun#" marked in the text
    multirc_formatter  # MultiRC: one example per answer option
    record_formatter   # ReCoRD: query, candidate entities, passage -> answer entity
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

Formatter = Callable[[Mapping[str, Any], "Task"], dict]  # noqa: F821


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
