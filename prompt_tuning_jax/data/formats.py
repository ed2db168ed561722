"""Formatters: how a data set's rows become text.

A formatter is `fn(row, task) -> {"inputs": str, ...}`; the `Task`
(`tasks.py`) calls it with row["label"] already converted (class id / float;
generation tasks see the row's own label, if any) and fills in "targets" (the
label's verbalizer) and "label" unless the formatter sets them. Task-specific
extras some metrics need ride along: `answers` for ReCoRD, `group` for MultiRC,
`correct` for WSC simple.

    {"inputs": "sst2 sentence: a gorgeous film .", "targets": "positive", "label": 1}

Formats follow T5 (`t5/data/preprocessors.py`): `"<prefix> <field>: <text> <field>: <text>"`
with the data set's own field names, built with `task.join(...)` so the task's
style applies: `style="taskless"` drops the task prefix (the original
prompt-tuning library's "taskless" variants, its `remove_first_text_token`);
`style="raw"` keeps only the texts.

    fields_formatter("sentence1", "sentence2")   # GLUE pairs, in this order
    wsc_formatter         # WSC: "* candidate *" and "# pronoun #" marked in the text
    wsc_simple_formatter  # WSC simple: "*pronoun*" marked -> generate the candidate
    multirc_formatter     # MultiRC: one example per answer option
    record_formatter      # ReCoRD: query, candidate entities, passage -> answer entity

A task's `train_transform` (`record_train_examples`, `wsc_simple_train_examples`)
turns one formatted training example into the examples trained on.
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


# RE2's \S and \s (T5 builds its WSC pattern for `tf.strings.regex_replace`, i.e. RE2).
_NOT_SPACE, _SPACE = r"[^\t\n\f\r ]", r"[\t\n\f\r ]"


def _mark_span(text: str, span: str, index: int, mark: str) -> str:
    r"""T5's `wsc._mark_span`: `^((?:\S+\s){index})(span)` -> `\1<mark> \2 <mark>`.

    The span must start right after `index` words; if it does not, the text is
    left unmarked, as T5 leaves it. (T5 puts the span text into the pattern
    unescaped; it is escaped here, which differs only for spans with regex
    metacharacters.)
    """
    pattern = rf"^((?:{_NOT_SPACE}+{_SPACE}){{{int(index)}}})({re.escape(str(span))})"
    return re.sub(pattern, lambda m: f"{m.group(1)}{mark} {m.group(2)} {mark}", text, count=1)


def wsc_formatter(row, task):
    """WSC as classification, T5's `preprocessors.wsc`: candidate in ` * `, pronoun in ` # `; target False/True.

    The marks stand as words of their own, a space on each side:

        "Mark told Pete many lies about himself ."  span1 "Pete" at 2, span2 "himself" at 6
        -> "wsc text: Mark told * Pete * many lies about # himself # ."

    A span followed by punctuation in the same word keeps it after the closing
    mark ("# him #."). The pronoun's word index is shifted by 2 when the
    candidate comes first (the two marks added before it). `style="taskless"`
    drops "wsc": "text: Mark told * Pete * ...".
    """
    span1_index, span2_index = int(row["span1_index"]), int(row["span2_index"])
    text = _mark_span(str(row["text"]), row["span1_text"], span1_index, "*")
    text = _mark_span(text, row["span2_text"], span2_index + 2 * (span1_index < span2_index), "#")
    return {"inputs": task.join(("text", text))}


# The two texts T5's `_wsc_inputs` handles by hand (the span index points at another word).
_WSC_SPECIAL_CASES = {
    'The boy continued to whip the pony , and eventually the pony threw him over. John laughed out '
    'quite loud. "Good for him," he said. ':
    'The boy continued to whip the pony , and eventually the pony threw him over. John laughed out '
    'quite loud. "Good for X ," he said.',
    'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic '
    'pebble in an iron safe . Some day they might want to use it , but really for now, what more '
    'could they wish for?':
    'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic '
    'pebble in an iron safe . Some day they might want to use X , but really for now, what more '
    'could they wish for?',
}


def _wsc_blank_pronoun(row) -> str:
    """T5's `_wsc_inputs`: the text with the pronoun (span2, a word index) replaced by "X"."""
    text = str(row["text"])
    if text in _WSC_SPECIAL_CASES:
        return _WSC_SPECIAL_CASES[text]
    words = text.split(" ")
    index = int(row["span2_index"])
    if not 0 < index < len(words) or words[index] != str(row["span2_text"]):
        raise ValueError(f"WSC pronoun {row['span2_text']!r} is not word {index} of {text!r}")
    return " ".join([" ".join(words[:index]), "X", " ".join(words[index + 1:])])


def wsc_simple_formatter(row, task):
    """WSC as T5's `wsc_simple`: the pronoun marked `*like this*` (no inner spaces); target the candidate.

        "Mitchell asked Tom if he could lend some money."  span1 "Tom", span2 "he" at 4
        -> inputs "wsc: Mitchell asked Tom if *he* could lend some money."  targets "Tom"

    `style="taskless"` drops "wsc:" (the original library's
    `remove_first_text_token`). Every " X " is replaced, as T5's global
    `regex_replace`. `correct` is the row's label (1: the candidate is the
    pronoun's referent, -1: unlabeled); training keeps only correct rows
    (`wsc_simple_train_examples`) and the metric asks whether the generated
    text names the candidate exactly when it is correct (`metrics.wsc_simple_accuracy`).
    """
    marked = _wsc_blank_pronoun(row).replace(" X ", f" *{row['span2_text']}* ")
    prefixed = task.style == "t5" and task.prefix
    return {"inputs": f"{task.prefix} {marked}" if prefixed else marked,
            "targets": str(row["span1_text"]), "correct": _binary_label(row.get("label"))}


def _binary_label(value) -> int:
    """A WSC label as the hub (0 / 1 / -1), JSONL (true / false) or TSV ("True", "1") write it -> 1, 0 or -1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return -1
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "false"):
            return int(text == "true")
        value = int(text)
    value = int(value)
    if value not in (-1, 0, 1):
        raise ValueError(f"WSC label {value!r} is not 0, 1 or -1")
    return value


def wsc_simple_train_examples(example: dict) -> list[dict]:
    """Training on WSC simple uses only rows whose candidate is the referent (T5's `correct_referent_only`)."""
    return [example] if example["correct"] == 1 else []


def _remove_markup(text: str) -> str:
    return re.sub(r"<(/)?b>", "", re.sub(r"<br>", " ", str(text)))


def multirc_formatter(row, task):
    """MultiRC: one example per answer option; `group` is its question, for exact match.

    The group is the question's `idx` where rows carry T5's / the hub's
    `idx: {paragraph, question, answer}` (T5 groups by `idx/question`), else
    the (paragraph, question) texts (local files without idx).
    """
    paragraph, question = _remove_markup(row["paragraph"]), _remove_markup(row["question"])
    idx = row.get("idx")
    group = idx["question"] if isinstance(idx, Mapping) and "question" in idx else (paragraph, question)
    return {
        "inputs": task.join(("question", question), ("answer", _remove_markup(row["answer"])),
                            ("paragraph", paragraph)),
        "group": group,
    }


def _as_list(value) -> list[str]:
    if isinstance(value, str):
        return [v for v in value.split("|") if v] if "|" in value else ([value] if value else [])
    if isinstance(value, Mapping) and "text" in value:  # ReCoRD JSON entity spans
        return list(value["text"])
    return [str(v) for v in value]


def record_formatter(row, task):
    """ReCoRD as T5's `preprocessors.record`: query, candidate entities, passage -> an answer entity.

        "record query: <query> entities: <e1>, <e2>, ... passage: <passage>"

    Entities and answers are de-duplicated and sorted, as TFDS's super_glue
    builder gives them to T5. "\n@highlight\n" after . ? ! " ' becomes a space,
    any other one ". ". Targets are the first answer; `answers` keeps all of
    them for the metric. Training uses one example per answer
    (`record_train_examples`, as T5). Lists may be JSON lists or "|"-separated
    strings in TSV/CSV files.
    """
    passage = re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", str(row["passage"]))
    passage = re.sub(r"\n@highlight\n", ". ", passage)
    answers = sorted(set(_as_list(row["answers"])))
    entities = sorted(set(_as_list(row["entities"])))
    return {
        "inputs": task.join(("query", row["query"]), ("entities", ", ".join(entities)),
                            ("passage", passage)),
        "targets": answers[0] if answers else "",
        "answers": answers,
    }


def record_train_examples(example: dict) -> list[dict]:
    """One training example per answer (T5's `record` preprocessor); `answers` stays the full list."""
    return [{**example, "targets": a} for a in example["answers"]] or [example]
