"""`demo_sentiment`: a small synthetic sentiment task generated in code, fully offline.

Sentences are built from templates, nouns and positive / negative adjectives,
e.g. "the soundtrack was dull and the acting felt clumsy ." -> "negative".
A sentence's polarity is that of its adjectives (all adjectives in one
sentence share it), so a tiny model can learn it in a few hundred steps.
The same `seed` always gives the same splits; no sentence appears in two splits.

    rows = generate(100, seed=0)          # [{"sentence": str, "label": 0 | 1}, ...]
    DemoSource().load("train")            # 4,000 rows; "validation" and "test": 500 each
    task = get_task("demo_sentiment")     # the Task over DemoSource, see `registry.py`
    task.load("train")                    # "sentiment sentence: ..." -> "negative" | "positive"
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from prompt_tuning_jax.data.sources import check_fields

POSITIVE = (
    "wonderful", "brilliant", "charming", "delightful", "moving", "superb", "fresh", "funny",
    "gorgeous", "clever", "touching", "great", "beautiful", "thrilling", "warm", "excellent",
    "lovely", "smart", "inventive", "joyful",
)
NEGATIVE = (
    "dull", "boring", "clumsy", "awful", "tedious", "bland", "terrible", "weak", "messy",
    "lifeless", "predictable", "poor", "ugly", "annoying", "flat", "tiresome", "silly",
    "painful", "stale", "dreadful",
)
NOUNS = (
    "movie", "film", "plot", "acting", "soundtrack", "story", "cast", "ending", "script",
    "dialogue", "pacing", "camera work", "lead actor", "director", "score", "humor",
)
ADVERBS = ("", "really ", "quite ", "truly ", "very ", "rather ")
TEMPLATES = (
    "the {noun} was {adv}{adj} .",
    "the {noun} was {adj} and the {noun2} felt {adj2} .",
    "what a {adj} {noun} !",
    "i found the {noun} {adv}{adj} .",
    "a {adj} {noun} with a {adj2} {noun2} .",
    "overall , {adv}{adj} .",
    "the {noun} is {adj} , the {noun2} even more {adj2} .",
    "{adj} {noun} , {adj2} {noun2} .",
)
SPLITS = {"train": 4000, "validation": 500, "test": 500}


def generate(num_examples: int, seed: int = 0) -> list[dict]:
    """`num_examples` distinct rows {"sentence": str, "label": 0 | 1}, balanced at random."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    rows = []
    while len(rows) < num_examples:
        label = int(rng.integers(2))
        words = POSITIVE if label else NEGATIVE
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        noun, noun2 = rng.choice(len(NOUNS), size=2, replace=False)
        adj, adj2 = rng.choice(len(words), size=2, replace=False)
        sentence = template.format(
            noun=NOUNS[noun], noun2=NOUNS[noun2], adj=words[adj], adj2=words[adj2],
            adv=ADVERBS[rng.integers(len(ADVERBS))],
        )
        if sentence not in seen:
            seen.add(sentence)
            rows.append({"sentence": sentence, "label": label})
    return rows


@dataclasses.dataclass(frozen=True)
class DemoSource:
    """Rows of the synthetic task; the splits are consecutive slices of one distinct pool."""

    splits: dict = dataclasses.field(default_factory=lambda: dict(SPLITS))
    seed: int = 0

    def load(self, split: str, required: Sequence[str] = ()) -> Iterator[dict]:
        if split not in self.splits:
            raise KeyError(f"demo_sentiment has no split {split!r}; splits: {sorted(self.splits)}")
        rows = generate(sum(self.splits.values()), self.seed)
        start = 0
        for name, size in self.splits.items():
            if name == split:
                for i, row in enumerate(rows[start:start + size]):
                    if i == 0:
                        check_fields(row, required, "demo_sentiment")
                    yield row
                return
            start += size
