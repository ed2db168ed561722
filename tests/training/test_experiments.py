"""`experiments.train` from Python (no gin): multi-task mixtures with one prompt per task."""
import dataclasses
import json

import numpy as np
import pytest

from prompt_tuning_jax.data import get_task, register_task
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, train


@pytest.mark.slow
def test_mixture_trains_one_prompt_per_task_and_reports_each(tmp_path, tiny_gpt2_dir):
    base = get_task("demo_sentiment")
    register_task(dataclasses.replace(base, name="demo_sentiment_words", label_names=("dull", "great")),
                  overwrite=True)
    summary = train(str(tmp_path / "mix"), ModelSpec(tiny_gpt2_dir), PromptSpec(length=3, init="sampled_vocab"),
                    DataSpec(["demo_sentiment", "demo_sentiment_words"], {"inputs": 32, "targets": 4}, batch_size=8,
                             eval_limit=16),
                    TrainSpec(steps=6, eval_every=6, progress=False))
    assert summary["prompt"].shape == (2, 3, 32)  # [K, P, H]
    assert set(summary["eval"]) == {"demo_sentiment/accuracy", "demo_sentiment_words/accuracy"}
    assert np.load(tmp_path / "mix" / "prompts" / "prompt_latest.npy").shape == (2, 3, 32)
    rows = [json.loads(l) for l in (tmp_path / "mix" / "metrics.jsonl").read_text().splitlines()]
    assert any("demo_sentiment_words/accuracy" in r for r in rows)
