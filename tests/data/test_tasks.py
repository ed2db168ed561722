"""Task registry, formats, local file sources and their errors."""
import json
import re

import numpy as np
import pytest

from prompt_tuning_jax.data import metrics, registry
from prompt_tuning_jax.data.formats import fields_formatter
from prompt_tuning_jax.data.registry import UnknownTaskError, get_task, list_tasks, register_task
from prompt_tuning_jax.data.sources import MissingColumnError, shared_data_dir
from prompt_tuning_jax.data.tasks import Task

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(not (SHARED / "sst2").is_dir(),
                                  reason=f"shared data folder {SHARED} absent (set PTJ_SHARED_DATA)")


def test_registry_has_glue_superglue_and_more():
    names = set(list_tasks())
    for config in ("sst2", "rte", "mrpc", "cola", "qnli", "qqp", "mnli", "stsb"):
        assert f"glue_{config}" in names
        assert get_task(config).name == f"glue_{config}"  # bare GLUE names are aliases
    for config in ("boolq", "cb", "copa", "rte", "wic", "wsc", "multirc", "record"):
        assert f"super_glue_{config}" in names
    assert {"ag_news", "imdb", "demo_sentiment"} <= names
    assert get_task("boolq").name == "super_glue_boolq"


def test_unknown_task_lists_close_matches():
    with pytest.raises(UnknownTaskError) as info:
        get_task("sst_2")
    assert "'sst2'" in str(info.value) and "unknown task 'sst_2'" in str(info.value)
    with pytest.raises(TypeError, match="label_nmes"):
        get_task("sst2", label_nmes=("a", "b"))


def test_register_refuses_duplicates_and_validates():
    task = Task("tmp_task", "classification", fields_formatter("x"), ("x",), ("a", "b"))
    register_task(task)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_task(task)
        assert get_task("tmp_task") is task
    finally:
        registry._REGISTRY.pop("tmp_task")
    with pytest.raises(ValueError, match="label_names"):
        Task("bad", "classification", fields_formatter("x"), ("x",))
    with pytest.raises(ValueError, match="kind"):
        Task("bad", "ranking", fields_formatter("x"), ("x",), ("a",))
    with pytest.raises(ValueError, match="2 classes"):
        get_task("sst2", label_names=("a", "b", "c"))


# Rows shaped like the Hugging Face data sets (integer labels).
FORMAT_CASES = [
    ("sst2", {"sentence": "a gorgeous film ", "label": 1}, "sst2 sentence: a gorgeous film", "positive"),
    ("rte", {"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0},
     "rte sentence1: A cat sat. sentence2: An animal sat.", "entailment"),
    ("mnli", {"premise": "P.", "hypothesis": "H.", "label": 2}, "mnli hypothesis: H. premise: P.", "contradiction"),
    ("mrpc", {"sentence1": "a", "sentence2": "b", "label": 1}, "mrpc sentence1: a sentence2: b", "equivalent"),
    ("cola", {"sentence": "Him went.", "label": 0}, "cola sentence: Him went.", "unacceptable"),
    ("qnli", {"question": "Q?", "sentence": "S.", "label": 1}, "qnli question: Q? sentence: S.", "not_entailment"),
    ("qqp", {"question1": "a?", "question2": "b?", "label": 0}, "qqp question1: a? question2: b?", "not_duplicate"),
    ("stsb", {"sentence1": "a", "sentence2": "b", "label": 3.75}, "stsb sentence1: a sentence2: b", "3.8"),
    ("stsb", {"sentence1": "a", "sentence2": "b", "label": 3.92}, "stsb sentence1: a sentence2: b", "4.0"),
    ("boolq", {"question": "is it?", "passage": "It is.", "label": 1}, "boolq passage: It is. question: is it?", "True"),
    ("cb", {"premise": "P", "hypothesis": "H", "label": 2}, "cb hypothesis: H premise: P", "neutral"),
    ("copa", {"premise": "It rained.", "choice1": "Wet.", "choice2": "Dry.", "question": "effect", "label": 0},
     "copa choice1: Wet. choice2: Dry. premise: It rained. question: effect", "choice1"),
    ("super_glue_rte", {"premise": "P", "hypothesis": "H", "label": 1}, "rte hypothesis: H premise: P", "not_entailment"),
    ("wic", {"word": "bank", "sentence1": "s1", "sentence2": "s2", "label": 0},
     "wic sentence1: s1 sentence2: s2 word: bank", "False"),
    ("wsc", {"text": "Mark told Pete many lies about himself .", "span1_index": 2, "span1_text": "Pete",
             "span2_index": 6, "span2_text": "himself", "label": 0},
     "wsc text: Mark told * Pete * many lies about # himself # .", "False"),
]


@pytest.mark.parametrize("name,row,inputs,targets", FORMAT_CASES)
def test_t5_formats_and_taskless_default(name, row, inputs, targets):
    example = get_task(name, style="t5").format(row)
    assert example["inputs"] == inputs
    assert example["targets"] == targets
    assert example["label"] == row["label"]
    # The plain names default to taskless: T5's text less its first word (the original's
    # remove_first_text_token, regex "^[^ ]* ").
    taskless = get_task(name).format(row)
    assert get_task(name).style == "taskless"
    assert taskless["inputs"] == re.sub(r"^[^ ]* ", "", inputs, count=1)
    assert (taskless["targets"], taskless["label"]) == (targets, row["label"])


def test_other_tasks_keep_their_formats():
    assert get_task("ag_news").format({"text": "Stocks fell.", "label": 2}) == {
        "inputs": "ag_news text: Stocks fell.", "targets": "Business", "label": 2}
    # The original's IMDB task (recycling/data/imdb.py) feeds the review text alone.
    assert get_task("imdb").format({"text": "Loved it.", "label": 1})["inputs"] == "Loved it."
    demo = get_task("demo_sentiment")
    assert (demo.style, demo.prefix) == ("t5", "sentiment")


def test_multirc_and_record_formats():
    multirc = get_task("super_glue_multirc_v102")
    row = {"paragraph": "<b>Sent 1: </b>Cats purr.<br>", "question": "Who purrs?", "answer": "Cats", "label": 1}
    example = multirc.format(row)
    assert example["inputs"] == "multirc question: Who purrs? answer: Cats paragraph: Sent 1: Cats purr."
    assert example["targets"] == "True"
    assert multirc.metric_targets([example]) == [(example["group"], 1)]

    record = get_task("super_glue_record_v102")
    row = {"passage": "Paris is big.\n@highlight\nFrance wins\n@highlight\nLyon", "query": "@placeholder is big",
           "entities": ["Paris", "France", "Lyon", "Paris"], "answers": ["Paris"]}
    example = record.format(row)
    # Entities de-duplicated and sorted; "\n@highlight\n" after "." is a space, else ". " (T5's record).
    assert example["inputs"] == ("record query: @placeholder is big entities: France, Lyon, Paris "
                                 "passage: Paris is big. France wins. Lyon")
    assert example["targets"] == "Paris" and example["label"] == -1
    assert record.compute_metrics(record.metric_targets([example]), ["paris"])["exact_match"] == 100.0


def test_styles_and_verbalizer_overrides():
    row = {"sentence1": "A.", "sentence2": "B.", "label": "not_entailment"}
    assert get_task("rte", style="taskless").format(row)["inputs"] == "sentence1: A. sentence2: B."
    assert get_task("rte", style="raw").format(row)["inputs"] == "A. B."
    assert get_task("rte", style="t5").format(row)["inputs"] == "rte sentence1: A. sentence2: B."
    custom = get_task("rte", label_names=("yes", "no"), prefix="entail", style="t5")
    example = custom.format(row)
    assert example["inputs"].startswith("entail sentence1:")
    assert (example["targets"], example["label"]) == ("no", 1)
    # The data set's own label strings still parse after the verbalizers change.
    assert custom.label_index("entailment") == 0 and custom.label_index("yes") == 0
    assert custom.text_to_prediction(" no ") == 1 and custom.text_to_prediction("maybe") == -1


def test_predictions_and_metrics_through_the_task():
    stsb = get_task("stsb")
    assert stsb.text_to_prediction("3.8") == 3.8 and stsb.text_to_prediction("x") == -1.0
    cola = get_task("cola")
    out = cola.compute_metrics([0, 1, 1, 0], [0, 1, 0, 0])
    assert set(out) == {"matthews_corrcoef"}
    cb = get_task("cb").compute_metrics([0, 1, 2, 0], [0, 1, 1, 0])
    assert set(cb) == {"accuracy", "macro_f1"}
    assert cb["macro_f1"] == pytest.approx(metrics.macro_f1([0, 1, 2, 0], [0, 1, 1, 0], num_classes=3)["macro_f1"])
    assert set(get_task("mrpc").compute_metrics([1, 0], [1, 1])) >= {"f1", "accuracy"}


# ---------------------------------------------------------------- local files


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_with_header_and_quotes(tmp_path):
    _write(tmp_path / "train.tsv", 'sentence\tlabel\nhe said "wow\t1\n"quoted" start\t0\n')
    task = get_task("sst2", data_dir=str(tmp_path), files={"train": "train.tsv"})
    examples = task.load("train")
    assert [e["inputs"] for e in examples] == ['sentence: he said "wow', 'sentence: "quoted" start']
    assert [e["label"] for e in examples] == [1, 0]


def test_headerless_tsv_with_string_labels_and_column_mapping(tmp_path):
    _write(tmp_path / "d.tsv", "Stocks rose.\tBusiness\nA goal!\tSports\n")
    task = get_task("ag_news", data_dir=str(tmp_path), files={"x": "d.tsv"},
                    header=False, column_names=("body", "label"), columns={"text": "body"})
    assert [(e["inputs"], e["label"]) for e in task.load("x")] == [
        ("ag_news text: Stocks rose.", 2), ("ag_news text: A goal!", 1)]


def test_csv_and_jsonl(tmp_path):
    _write(tmp_path / "a.csv", 'premise,hypothesis,label\n"A, b.",C.,entailment\n')
    cb = get_task("cb", data_dir=str(tmp_path), files={"validation": "a.csv"})
    assert cb.load("validation")[0]["inputs"] == "hypothesis: C. premise: A, b."
    _write(tmp_path / "b.jsonl", json.dumps({"question": "q", "passage": "p", "label": True}) + "\n\n")
    boolq = get_task("boolq", data_dir=str(tmp_path), files={"train": "b.jsonl"})
    assert boolq.load("train")[0]["label"] == 1
    _write(tmp_path / "c.txt", "sentence\tlabel\nfine\t1\n")
    sst2 = get_task("sst2", data_dir=str(tmp_path), files={"train": "c.txt"}, file_format="tsv")
    assert sst2.load("train", limit=1)[0]["label"] == 1


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        get_task("sst2", data_dir=str(tmp_path), files={"train": "nope.tsv"}).load("train")
    _write(tmp_path / "t.tsv", "text\tlabel\nhi\t1\n")
    with pytest.raises(MissingColumnError, match=r"\['sentence'\].*\['label', 'text'\]"):
        get_task("sst2", data_dir=str(tmp_path), files={"train": "t.tsv"}).load("train")
    _write(tmp_path / "r.tsv", "sentence1\tsentence2\tlabel\na\tb\tentails\n")
    with pytest.raises(ValueError, match=r"r.tsv.*'entails'.*\['entailment', 'not_entailment'\]"):
        get_task("rte", data_dir=str(tmp_path), files={"train": "r.tsv"}).load("train")
    _write(tmp_path / "n.tsv", "sentence\tlabel\nhi\t7\n")
    with pytest.raises(ValueError, match="not a class id"):
        get_task("sst2", data_dir=str(tmp_path), files={"train": "n.tsv"}).load("train")
    _write(tmp_path / "h.tsv", "hi\t1\n")
    with pytest.raises(ValueError, match="column_names"):
        get_task("sst2", data_dir=str(tmp_path), files={"train": "h.tsv"}, header=False).load("train")
    with pytest.raises(ValueError, match="splits"):
        get_task("sst2", data_dir=str(tmp_path), files={"train": "h.tsv"}).load("validation")


def test_hf_source_code_path(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [{"premise": "P", "hypothesis": "H", "label": 1, "idx": 0}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = get_task("mnli", source="hf").load("validation")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert examples[0]["targets"] == "neutral"
    assert get_task("wsc").source.name == "wsc.fixed"


# ---------------------------------------------------------------- shared data + demo


@needs_shared
def test_shared_files_load_with_arguments_only():
    sst2 = get_task("sst2").load("test")
    assert len(sst2) == 872
    assert np.bincount([e["label"] for e in sst2]).tolist() == [428, 444]
    rte = get_task("rte").load("validation")
    assert len(rte) == 277 and {e["targets"] for e in rte} == {"entailment", "not_entailment"}
    news = get_task("ag_news").load("test")
    assert len(news) == 7600 and np.bincount([e["label"] for e in news]).tolist() == [1900] * 4


def test_demo_task_is_deterministic_balanced_and_disjoint():
    task = get_task("demo_sentiment")
    train, validation = task.load("train"), task.load("validation")
    assert len(train) == 4000 and len(validation) == 500
    assert train == task.load("train")
    assert not {e["inputs"] for e in train} & {e["inputs"] for e in validation}
    assert 0.4 < np.mean([e["label"] for e in train]) < 0.6
    assert train[0]["inputs"].startswith("sentiment sentence: ")
    assert {e["targets"] for e in validation} == {"negative", "positive"}


# ---------------------------------------------------------------- bad data files: named with file and line


def _sst2_files(tmp_path, train_text):
    (tmp_path / "train.tsv").write_text(train_text)
    return get_task("sst2", data_dir=str(tmp_path))


def test_an_unknown_label_is_named_with_file_and_line(tmp_path):
    task = _sst2_files(tmp_path, "sentence\tlabel\ngood\t1\nbad\t0\nso so\tmaybe\n")
    with pytest.raises(ValueError, match=rf"{tmp_path}/train.tsv:4: task glue_sst2: unknown label 'maybe'"):
        task.load("train")


def test_a_short_row_is_named_with_file_and_line(tmp_path):
    task = _sst2_files(tmp_path, "sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(ValueError, match=rf"{tmp_path}/train.tsv:3: 1 fields, expected 2"):
        task.load("train")


@pytest.mark.parametrize("text", ["", "sentence\tlabel\n"])
def test_an_empty_file_is_named(tmp_path, text):
    task = _sst2_files(tmp_path, text)
    with pytest.raises(ValueError, match=rf"{tmp_path}/train.tsv: task glue_sst2 has no examples in split 'train'"):
        task.load("train")


def test_a_missing_column_is_named_with_the_file(tmp_path):
    task = _sst2_files(tmp_path, "text\tlabel\ngood\t1\n")
    with pytest.raises(MissingColumnError, match=rf"{tmp_path}/train.tsv: column\(s\) \['sentence'\] not found"):
        task.load("train")
