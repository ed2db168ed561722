"""In-context learning in the same engine (METHOD 'icl:K'): its rank-classification scores equal a direct
teacher-forced computation in PyTorch of each label after the demonstrations and the query, and a run
(what a sweep cell is) records that evaluation like a trained run's."""
import json

import numpy as np
import pytest
import torch
import transformers
from helpers import save_tiny_gpt2

from prompt_tuning_jax import heads
from prompt_tuning_jax.data import EvalIterator
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, loading, train

K = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = save_tiny_gpt2(tmp_path_factory.mktemp("icl") / "ckpt", n_positions=256)
    data = DataSpec("demo_sentiment", feature_lengths={"inputs": 200, "targets": 4}, batch_size=8, eval_limit=20,
                    seed=5)
    return ModelSpec(folder), PromptSpec(length=1, method=f"icl:{K}"), data


def _torch_scores(folder, texts, labels) -> np.ndarray:
    """log p(label | text) summed over the label's tokens, one unpadded sequence at a time: [N, C]."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    out = np.zeros((len(texts), len(labels)))
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            for c, label in enumerate(labels):
                label_ids = tok(" " + label, add_special_tokens=False)["input_ids"]
                logits = model(torch.tensor([ids + label_ids])).logits[0, len(ids) - 1:-1]
                logp = torch.log_softmax(logits.double(), -1)
                out[i, c] = float(logp[torch.arange(len(label_ids)), torch.tensor(label_ids)].sum())
    return out


def test_icl_scores_equal_teacher_forced_torch(setup):
    model, prompt, data = setup
    task = data.tasks()[0]
    loaded = loading.load_prompted(model, prompt, [task], loading.make_mesh((-1, 1)))
    tokenized = loading.tokenize_split(task, "validation", loaded, data, limit=data.eval_limit)
    train_texts = {f"{e['inputs']} {e['targets']}" for e in task.load("train")}
    for example in tokenized.examples:  # K demonstrations from the training split, then the query
        parts = example["inputs"].split("\n\n")
        assert len(parts) == K + 1 and set(parts[:K]) <= train_texts
    label_ids, label_mask = loading.label_ids(task, loaded, data)
    prompted = loaded.state.merge()
    ours = np.zeros((len(tokenized), len(task.label_names)))
    for batch in EvalIterator(tokenized, 8, padding_side="right"):
        scores = np.asarray(heads.rank_classification(prompted, batch["input_ids"], batch["attention_mask"],
                                                      label_ids, label_mask))
        real = batch["weight"] > 0
        ours[batch["example_index"][real]] = scores[real]
    theirs = _torch_scores(model.path, [e["inputs"] for e in tokenized.examples], task.label_names)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_an_icl_run_records_its_evaluation(setup, tmp_path):
    model, prompt, data = setup
    summary = train(str(tmp_path / "run"), model, prompt, data, TrainSpec(steps=5, eval_scoring="rank"))
    tokenized = loading.tokenize_split(data.tasks()[0], "validation", loading.load_prompted(
        model, prompt, data.tasks(), loading.make_mesh((-1, 1))), data, limit=data.eval_limit)
    theirs = _torch_scores(model.path, [e["inputs"] for e in tokenized.examples], data.tasks()[0].label_names)
    accuracy = 100.0 * np.mean(theirs.argmax(1) == np.asarray(tokenized.label))
    assert summary["eval"]["rank_accuracy"] == pytest.approx(accuracy)
    assert (summary["step"], summary["trainable_params"]) == (0, 0)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "split": "eval", "rank_accuracy": pytest.approx(accuracy)}]
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert (best["metric"], best["value"]) == ("rank_accuracy", pytest.approx(accuracy))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["method"] == f"icl:{K}"
    train(str(tmp_path / "run"), model, prompt, data, TrainSpec(steps=5, eval_scoring="rank"))  # a rerun
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1  # replaces, not appends


def test_icl_refuses_a_head():
    with pytest.raises(ValueError, match="in-context learning.*drop prompts/linear_head.gin"):
        PromptSpec(length=1, method="icl:2", head="linear")
