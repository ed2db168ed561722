"""In-context learning: each example's input preceded by K solved examples from another split.

    examples = with_demonstrations(task.load("validation"), task.load("train"), k=4, seed=0)

Example i gets K demonstrations drawn without replacement from the pool by
`np.random.default_rng([seed, i])`, so every example has its own, the draw does not
depend on which other examples are scored, and a seed reproduces it. A demonstration
is its formatted input and its target text (`"<inputs> <targets>"`); demonstrations and
the query are joined by `separator`:

    "sst2 sentence: a gem . positive\n\nsst2 sentence: dull . negative\n\nsst2 sentence: <query>"

The target stays the query's own, so rank classification scores each label right after
the query and generation continues from there. K = 0 is zero-shot: the input unchanged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def with_demonstrations(examples: Sequence[dict], pool: Sequence[dict], k: int, seed: int = 0,
                        separator: str = "\n\n") -> list[dict]:
    """Copies of `examples` whose "inputs" start with k demonstrations from `pool` (both formatted examples)."""
    if k < 0:
        raise ValueError(f"the number of demonstrations must be >= 0, got {k}")
    if k > len(pool):
        raise ValueError(f"{k} demonstrations asked for, but the training split has {len(pool)} examples "
                         "(METHOD 'icl:K' draws them from TRAIN_SPLIT)")
    out = []
    for i, example in enumerate(examples):
        picks = np.random.default_rng([seed, i]).choice(len(pool), size=k, replace=False) if k else []
        shots = [f"{pool[j]['inputs']} {pool[j]['targets']}" for j in picks]
        out.append({**example, "inputs": separator.join([*shots, example["inputs"]])})
    return out
