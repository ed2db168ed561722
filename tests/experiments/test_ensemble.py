"""Prompt ensembling: 3 prompts scored in one batched pass equal 3 separate evaluations, and the vote is theirs."""
import json

import numpy as np
import pytest

from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, evaluate
from prompt_tuning_jax.experiments.demo_model import demo_checkpoint
from prompt_tuning_jax.experiments.ensemble import majority_vote


def test_majority_vote_prefers_valid_answers_and_breaks_ties_by_prompt_order():
    predictions = np.array([[0, 1, -1, 2, 1],
                            [0, 0, -1, 1, 0],
                            [1, 1, 1, 0, -1]])
    assert majority_vote(predictions).tolist() == [0, 1, 1, 2, 1]


@pytest.mark.slow
def test_an_ensemble_of_three_prompts_reports_each_and_the_vote(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for k in range(3):
        path = tmp_path / f"prompt_{k}.npy"
        np.save(path, rng.normal(scale=0.5, size=(8, 64)).astype(np.float32))
        files.append(str(path))
    model = ModelSpec(demo_checkpoint())
    prompt = PromptSpec(length=8, placement="prefix", init="random_uniform")
    data = DataSpec("demo_sentiment", feature_lengths={"inputs": 32, "targets": 4}, batch_size=16, eval_limit=96)
    metrics = evaluate(model, prompt, data, checkpoint_path=files, output_dir=str(tmp_path / "out"), scoring="rank")
    assert set(metrics) == {"prompt_0/rank_accuracy", "prompt_1/rank_accuracy", "prompt_2/rank_accuracy",
                            "ensemble/rank_accuracy"}
    for k, path in enumerate(files):  # the batched pass scores each prompt as evaluating it alone does
        alone = evaluate(model, prompt, data, checkpoint_path=path, scoring="rank")
        assert metrics[f"prompt_{k}/rank_accuracy"] == pytest.approx(alone["rank_accuracy"])
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 96 and all(len(r["predictions"]) == 3 for r in rows)
    for r in rows:  # the vote is the majority of the three answers
        counts = {p: r["predictions"].count(p) for p in r["predictions"]}
        assert counts[r["vote"]] == max(counts.values())
    vote_accuracy = 100.0 * np.mean([r["vote"] == r["target"] for r in rows])
    assert metrics["ensemble/rank_accuracy"] == pytest.approx(vote_accuracy)
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["prompts"] == files and summary["ensemble/rank_accuracy"] == metrics["ensemble/rank_accuracy"]
