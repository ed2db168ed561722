"""In-context learning inputs: K demonstrations from the pool before each input, drawn per example by seed."""
import pytest

from prompt_tuning_jax.data.demonstrations import with_demonstrations

POOL = [{"inputs": f"train {i}", "targets": "positive" if i % 2 else "negative", "label": i % 2} for i in range(20)]
QUERIES = [{"inputs": f"query {i}", "targets": "negative", "label": 0} for i in range(6)]


def test_each_input_gets_k_distinct_demonstrations_then_itself():
    out = with_demonstrations(QUERIES, POOL, k=3, seed=7)
    shown = {f"{p['inputs']} {p['targets']}" for p in POOL}
    for query, example in zip(QUERIES, out):
        parts = example["inputs"].split("\n\n")
        assert len(parts) == 4 and parts[-1] == query["inputs"]
        assert len(set(parts[:3])) == 3 and set(parts[:3]) <= shown
        assert (example["targets"], example["label"]) == (query["targets"], query["label"])


def test_the_draw_is_per_example_and_reproducible():
    a = with_demonstrations(QUERIES, POOL, k=3, seed=7)
    assert a == with_demonstrations(QUERIES, POOL, k=3, seed=7)
    assert with_demonstrations(QUERIES[:3], POOL, k=3, seed=7) == a[:3]  # example i's draw: seed and i only
    assert a != with_demonstrations(QUERIES, POOL, k=3, seed=8)
    assert len({e["inputs"].split("\n\n", 1)[0] for e in a}) > 1  # examples do not all share one draw


def test_zero_shot_and_too_many():
    assert with_demonstrations(QUERIES, POOL, k=0) == QUERIES
    with pytest.raises(ValueError, match="25 demonstrations asked for, but the training split has 20 examples"):
        with_demonstrations(QUERIES, POOL, k=25)
