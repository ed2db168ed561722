"""The paper's protocol: T5X task names, the taskless default, T5's invalid-prediction metrics, data fixes."""
import json
import logging
import pathlib

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from prompt_tuning_jax.data import metrics, registry
from prompt_tuning_jax.data.registry import UnknownTaskError, get_task, list_tasks, t5x_names
from prompt_tuning_jax.data.sources import DerivedValidation, HFSource, HubError, shared_data_dir

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SHARED = shared_data_dir()
GLUE = ("sst2", "rte", "mrpc", "cola", "qnli", "qqp", "mnli", "stsb")
SUPER_GLUE = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic")


# ---------------------------------------------------------------- T5X names


@pytest.mark.parametrize("config", GLUE)
def test_glue_t5x_names(config):
    row = {"sentence": "s", "sentence1": "a", "sentence2": "b", "question": "q", "question1": "q1",
           "question2": "q2", "premise": "p", "hypothesis": "h", "label": 0}
    t5 = get_task(config, style="t5").format(row)["inputs"]
    for version in ("v002", "v200"):
        for suffix in ("", "_examples"):
            assert get_task(f"glue_{config}_{version}{suffix}").format(row)["inputs"] == t5
            taskless = get_task(f"taskless_glue_{config}_{version}{suffix}")
            assert taskless.name == f"glue_{config}" and taskless.style == "taskless"
            assert taskless.format(row)["inputs"] == t5.split(" ", 1)[1]


@pytest.mark.parametrize("config", SUPER_GLUE)
def test_super_glue_t5x_names(config):
    for suffix in ("", "_examples"):
        t5 = get_task(f"super_glue_{config}_v102{suffix}")
        taskless = get_task(f"taskless_super_glue_{config}_v102{suffix}")
        assert t5.name == taskless.name == f"super_glue_{config}"
        assert (t5.style, taskless.style) == ("t5", "taskless")


def test_named_examples_from_the_original():
    sst2 = {"sentence": "a gorgeous film ", "label": 1}
    assert get_task("taskless_glue_sst2_v200_examples").format(sst2)["inputs"] == "sentence: a gorgeous film"
    assert get_task("glue_sst2_v200").format(sst2)["inputs"] == "sst2 sentence: a gorgeous film"
    boolq = {"question": "is it?", "passage": "It is.", "label": 1}
    taskless = get_task("taskless_super_glue_boolq_v102_examples").format(boolq)
    assert taskless["inputs"] == "passage: It is. question: is it?"
    assert get_task("super_glue_boolq_v102").format(boolq)["inputs"] == "boolq passage: It is. question: is it?"
    # Caller overrides still win over the name's style.
    assert get_task("glue_sst2_v200", style="raw").format(sst2)["inputs"] == "a gorgeous film"
    # MNLI's matched / mismatched variants: MNLI with the one dev set, prefix "mnli".
    assert get_task("glue_mnli_mismatched_v002").source.split_map["validation"] == "validation_mismatched"
    assert get_task("glue_mnli_matched_v200").format({"premise": "P", "hypothesis": "H", "label": 0})["inputs"] \
        == "mnli hypothesis: H premise: P"
    for name in ("taskless_super_glue_wsc_and_dev_v102_simple", "super_glue_wsc_v102_simple_train",
                 "taskless_super_glue_wsc_v102_simple_eval_examples"):
        assert get_task(name).name == "super_glue_wsc_simple"


def test_every_t5x_name_resolves_and_misspellings_list_matches():
    names = set(list_tasks(include_aliases=True))
    assert set(t5x_names()) <= names
    assert len(t5x_names()) == 10 * 2 * 2 * 2 + 7 * 2 * 2 + 3 * 2 * 2
    with pytest.raises(UnknownTaskError, match="taskless_glue_sst2_v200_examples"):
        get_task("taskless_glue_sst2_v200_example")
    with pytest.raises(UnknownTaskError, match="task-index sentinel"):
        get_task("task_index_glue_sst2_v200_examples")
    with pytest.raises(UnknownTaskError, match="tokenizer"):
        get_task("mt5_taskless_glue_sst2_v200_examples")
    registry.register_alias("tmp_t5x_alias", "glue_rte", style="raw")
    try:
        assert get_task("tmp_t5x_alias").style == "raw"
        with pytest.raises(ValueError, match="already registered"):
            registry.register_alias("tmp_t5x_alias", "glue_rte")
    finally:
        registry._ALIASES.pop("tmp_t5x_alias")
        registry._ALIAS_OVERRIDES.pop("tmp_t5x_alias")


# ---------------------------------------------------------------- metrics with invalid predictions


def t5_f1_score_with_invalid(targets, predictions):
    """T5's f1_score_with_invalid (t5/evaluation/metrics.py), as it is written there."""
    targets, predictions = np.asarray(targets), np.array(predictions)
    invalid = np.logical_and(predictions != 0, predictions != 1)
    predictions[invalid] = 1 - targets[invalid]
    return {"f1": 100 * sklearn.metrics.f1_score(targets, predictions)}


def _with_invalid(seed, k=2, n=200):
    rng = np.random.default_rng(seed)
    t = rng.integers(k, size=n)
    p = np.where(rng.random(n) < 0.7, t, rng.integers(k, size=n))
    return t, np.where(rng.random(n) < 0.15, -1, p)


def test_mrpc_f1_counts_invalid_as_the_opposite_of_the_target():
    targets, predictions = [0, 1, 1, 0], [-1, 1, -1, 0]
    assert metrics.f1(targets, predictions)["f1"] == pytest.approx(50.0)
    assert t5_f1_score_with_invalid(targets, predictions)["f1"] == pytest.approx(50.0)
    mrpc = get_task("mrpc")
    predicted = [mrpc.text_to_prediction(t) for t in ("maybe", "equivalent", "", "not_equivalent")]
    assert predicted == predictions
    out = mrpc.compute_metrics(targets, predicted)
    assert out["f1"] == pytest.approx(50.0) and out["accuracy"] == pytest.approx(50.0)
    assert get_task("qqp").compute_metrics(targets, predicted)["f1"] == pytest.approx(50.0)


@pytest.mark.parametrize("seed", range(5))
def test_invalid_predictions_against_t5_and_sklearn(seed):
    t, p = _with_invalid(seed)
    assert metrics.f1(t, p)["f1"] == pytest.approx(t5_f1_score_with_invalid(t, p)["f1"])
    assert metrics.accuracy(t, p)["accuracy"] == pytest.approx(100 * sklearn.metrics.accuracy_score(t, p))
    # CoLA: sklearn's MCC on the labels as they are (T5's sklearn_metrics_wrapper), -1 a class.
    assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
        100 * sklearn.metrics.matthews_corrcoef(t, p))
    # CB: T5's mean_multiclass_f1 = sklearn fbeta_score(labels=range(3), average="macro").
    t3, p3 = _with_invalid(seed, k=3)
    expected = 100 * sklearn.metrics.fbeta_score(t3, p3, beta=1, labels=range(3), average="macro")
    assert metrics.macro_f1(t3, p3, num_classes=3)["macro_f1"] == pytest.approx(expected)
    cb = get_task("cb").compute_metrics(t3.tolist(), p3.tolist())
    assert cb["macro_f1"] == pytest.approx(expected)


def test_stsb_invalid_is_minus_one():
    stsb = get_task("stsb")
    texts = ["3.8", "oops", "1.2", "5.0", ""]
    predicted = [stsb.text_to_prediction(t) for t in texts]
    assert predicted == [3.8, -1.0, 1.2, 5.0, -1.0]  # T5's string_to_float(default=-1.)
    targets = [3.6, 2.0, 1.0, 4.8, 0.4]
    out = stsb.compute_metrics(targets, predicted)
    assert out["pearson_corrcoef"] == pytest.approx(100 * scipy.stats.pearsonr(targets, predicted)[0])
    assert out["spearman_corrcoef"] == pytest.approx(100 * scipy.stats.spearmanr(targets, predicted)[0])


def test_multirc_invalid_and_question_groups():
    targets = [(7, 1), (7, 0), (8, 0), (8, 1)]
    predictions = [1, -1, 0, 1]  # question 7 has an invalid option -> not exact
    out = metrics.multirc_f1a_em(targets, predictions)
    assert out["exact_match"] == 50.0
    labels = [label for _, label in targets]
    assert out["f1a"] == pytest.approx(t5_f1_score_with_invalid(labels, predictions)["f1"])
    assert out["f1a"] == pytest.approx(80.0)  # the invalid option became a false positive


# ---------------------------------------------------------------- data fixes


def test_wsc_marks_spans_with_spaces_like_t5():
    wsc = get_task("wsc", style="t5")
    # T5's own docstring example (preprocessors.wsc): pronoun before the candidate.
    row = {"text": "This is a test sentence .", "span1_text": "test", "span1_index": 3,
           "span2_text": "This", "span2_index": 0, "label": 0}
    assert wsc.format(row)["inputs"] == "wsc text: # This # is a * test * sentence ."
    # Punctuation in the same word stays after the closing mark; multi-word candidates.
    row = {"text": "The big dog chased Tom and bit him.", "span1_text": "The big dog", "span1_index": 0,
           "span2_text": "him", "span2_index": 7, "label": 1}
    assert wsc.format(row)["inputs"] == "wsc text: * The big dog * chased Tom and bit # him #."
    assert get_task("wsc").format(row)["inputs"] == "text: * The big dog * chased Tom and bit # him #."
    # A span that is not at its word index is left unmarked, as T5's regex leaves it.
    row = {**row, "span2_index": 3}
    assert get_task("wsc").format(row)["inputs"] == "text: * The big dog * chased Tom and bit him."


def test_wsc_simple_format_training_filter_and_metric(tmp_path):
    rows = [
        {"text": "Mitchell asked Tom if he could lend some money.", "span1_index": 2, "span1_text": "Tom",
         "span2_index": 4, "span2_text": "he", "label": True},
        {"text": "Mitchell asked Tom if he could lend some money.", "span1_index": 0, "span1_text": "Mitchell",
         "span2_index": 4, "span2_text": "he", "label": False},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t5 = get_task("super_glue_wsc_v102_simple_train", data_dir=str(tmp_path), files={"train": "train.jsonl",
                                                                                     "validation": "train.jsonl"})
    train = t5.load("train")  # T5's correct_referent_only: only the true referent is trained on
    assert [(e["inputs"], e["targets"]) for e in train] == [
        ("wsc: Mitchell asked Tom if *he* could lend some money.", "Tom")]
    validation = get_task("taskless_super_glue_wsc_and_dev_v102_simple", data_dir=str(tmp_path),
                          files={"validation": "train.jsonl"}).load("validation")
    assert [e["inputs"] for e in validation] == ["Mitchell asked Tom if *he* could lend some money."] * 2
    task = get_task("wsc_simple")
    targets = task.metric_targets(validation)
    assert targets == [("Tom", 1), ("Mitchell", 0)]
    assert task.compute_metrics(targets, ["tom", "Tom"]) == {"accuracy": 100.0}
    assert task.compute_metrics(targets, ["the Tom", "Mitchell"]) == {"accuracy": 50.0}
    assert task.compute_metrics(targets, ["", "the"]) == {"accuracy": 0.0}  # empty: invalid, wrong
    assert metrics.wsc_simple_prediction("fuzzy bunny", "the bunny") == 1
    assert metrics.wsc_simple_prediction("Bob", "Bob's hat") == 0


def test_record_sorts_entities_and_trains_on_every_answer(tmp_path):
    row = {"passage": "Paris and Lyon.\n@highlight\nNice", "query": "@placeholder is a city",
           "entities": ["Paris", "Nice", "Lyon", "Paris"], "answers": ["Paris", "Lyon", "Paris"],
           "idx": {"passage": 0, "query": 0}}
    for split in ("train", "val"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    task = get_task("record", data_dir=str(tmp_path))
    train = task.load("train")
    assert [e["targets"] for e in train] == ["Lyon", "Paris"]  # one per answer, sorted
    assert all(e["answers"] == ["Lyon", "Paris"] for e in train)
    assert train[0]["inputs"] == ("query: @placeholder is a city entities: Lyon, Nice, Paris "
                                  "passage: Paris and Lyon. Nice")
    assert task.load("train", limit=1) == train[:1]
    validation = task.load("validation")
    assert len(validation) == 1 and validation[0]["answers"] == ["Lyon", "Paris"]
    assert task.compute_metrics(task.metric_targets(validation), ["Paris"])["exact_match"] == 100.0


def test_multirc_groups_by_question_idx_and_falls_back_to_texts():
    task = get_task("multirc")
    base = {"paragraph": "P.", "question": "Same?", "answer": "a", "label": 1}
    hub = [task.format({**base, "idx": {"paragraph": 0, "question": q, "answer": a}})
           for q, a in ((0, 0), (0, 1), (1, 2))]
    assert [e["group"] for e in hub] == [0, 0, 1]  # same texts, two questions by idx
    out = task.compute_metrics(task.metric_targets(hub), [1, 1, 0])
    assert out["exact_match"] == 50.0
    local = [task.format(base), task.format({**base, "answer": "b"})]
    assert local[0]["group"] == local[1]["group"] == ("P.", "Same?")


def _fake_hub(monkeypatch, splits):
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, split))
        if split not in splits:
            raise ValueError(f'Unknown split "{split}". Should be one of {sorted(splits)}.')
        return splits[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_imdb_validation_is_a_seeded_slice_held_out_of_train(monkeypatch, caplog):
    train = [{"text": f"review {i}", "label": int(i >= 1500)} for i in range(3000)]  # sorted by label
    calls = _fake_hub(monkeypatch, {"train": train, "test": train[:5]})
    task = get_task("imdb")
    with caplog.at_level(logging.WARNING):
        validation = task.load("validation")
    assert "imdb has no validation split" in caplog.text and "seed 0" in caplog.text
    assert "held out of 'train'" in task.source.describe()
    training = task.load("train")
    assert len(validation) == 1000 and len(training) == 2000
    assert not {e["inputs"] for e in validation} & {e["inputs"] for e in training}
    assert 0.4 < np.mean([e["label"] for e in validation]) < 0.6  # mixed, not the sorted tail
    assert validation == task.load("validation")  # the same rows every time
    assert len(task.load("test")) == 5 and ("stanfordnlp/imdb", "validation") not in calls


def test_ag_news_validation_reads_test(monkeypatch, caplog, tmp_path):
    calls = _fake_hub(monkeypatch, {"test": [{"text": "Stocks fell.", "label": 2}]})
    with caplog.at_level(logging.WARNING):
        examples = get_task("ag_news", source="hf").load("validation")
    assert calls == [("fancyzhx/ag_news", "test")] and examples[0]["targets"] == "Business"
    assert "'validation' reads its 'test' split" in caplog.text
    # Default source: the local test.tsv where there is one.
    (tmp_path / "ag_news").mkdir()
    (tmp_path / "ag_news" / "test.tsv").write_text("A goal!\tSports\n")
    monkeypatch.setenv("PTJ_SHARED_DATA", str(tmp_path))
    assert [e["label"] for e in get_task("ag_news").load("validation")] == [1]
    local = get_task("ag_news", data_dir=str(tmp_path / "ag_news"))  # the same layout elsewhere
    assert [e["label"] for e in local.load("validation")] == [1]
    assert len(calls) == 1
    with pytest.raises(ValueError, match="use 'test' or 'heldout'"):
        DerivedValidation(None, "x", use="dev")


def test_hub_script_error_is_one_clear_message(monkeypatch):
    import datasets

    def load_dataset(path, name=None, split=None):
        raise RuntimeError("Dataset scripts are no longer supported, but found super_glue.py")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(HubError) as info:
        get_task("wsc", source="hf").load("validation")
    message = str(info.value)
    for part in ("task super_glue_wsc", "aps/super_glue/wsc.fixed", "'validation'", "loading script",
                 "datasets<4", "TASK_OVERRIDES", "PTJ_SHARED_DATA"):
        assert part in message
    with pytest.raises(ValueError, match="ConnectionError"):  # HubError is a ValueError
        monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("x")))
        list(HFSource("nyu-mll/glue", "cola").load("train"))


def test_mrpc_reads_glue_tsv_fixture():
    expected_first = ("sentence1: The council approved the new budget on Tuesday . "
                      "sentence2: On Tuesday , the council passed the new budget .")
    task = get_task("mrpc", data_dir=str(FIXTURES / "mrpc"))  # GLUE layout: dev.tsv is validation
    examples = task.load("validation")
    assert len(examples) == 6 and examples[0]["inputs"] == expected_first
    assert [e["label"] for e in examples] == [1, 0, 1, 0, 1, 0]
    assert examples[0]["targets"] == "equivalent" and examples[1]["targets"] == "not_equivalent"
    assert '"We are pleased with the result , " the coach said .' in examples[4]["inputs"]  # quotes kept
    for name in ("taskless_glue_mrpc_v200_examples", "glue_mrpc_v002"):
        named = get_task(name, data_dir=str(FIXTURES), files={"validation": "mrpc/dev.tsv"})
        inputs = [e["inputs"] for e in named.load("validation")]
        assert inputs[0] == (expected_first if name.startswith("taskless") else "mrpc " + expected_first)
    out = task.compute_metrics(task.metric_targets(examples), [1, 0, -1, 0, 1, -1])
    assert out["accuracy"] == pytest.approx(400 / 6) and out["f1"] == pytest.approx(200 / 3)


@pytest.mark.skipif(not (SHARED / "sst2").is_dir(), reason=f"shared data folder {SHARED} absent")
def test_shared_sst2_under_both_names():
    plain, t5x = get_task("sst2").load("test", limit=3), get_task("glue_sst2_v200").load("test", limit=3)
    assert [e["inputs"] for e in t5x] == ["sst2 " + e["inputs"] for e in plain]
    assert plain[0]["inputs"].startswith("sentence: ")
