"""Reading a prompt through the vocabulary (Lester et al. 2021, section 7): cosine similarity to token embeddings.

    ids, sims = nearest_tokens(prompt, model.embedding_table, k=5)     # [P, k] each
    label_sims = label_similarity(prompt, model.embedding_table, [[4550], [2841]])   # [P, C]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest_tokens(prompt, table, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt position's k most cosine-similar vocabulary rows: prompt [P, H], table [V, H] ->
    (ids [P, k], similarities [P, k]), most similar first."""
    prompt, table = np.asarray(prompt), np.asarray(table)
    if prompt.ndim != 2 or table.ndim != 2 or prompt.shape[1] != table.shape[1]:
        raise ValueError(f"a [P, H] prompt and a [V, H] embedding table are needed; got {prompt.shape} and "
                         f"{table.shape} (is the prompt for this model's width?)")
    sims = _unit(prompt) @ _unit(table).T  # [P, V]
    k = min(k, table.shape[0])
    ids = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, ids, axis=1), axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    return ids, np.take_along_axis(sims, ids, axis=1)


def label_similarity(prompt, table, label_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Cosine similarity of each prompt position to each class label, a label being the mean embedding
    of its tokens (as class-label initialization uses them): [P, H], [V, H], C lists of ids -> [P, C]."""
    table = np.asarray(table, np.float32)
    if any(len(ids) == 0 for ids in label_ids):
        raise ValueError("a class label has no tokens")
    labels = np.stack([table[list(ids)].mean(axis=0) for ids in label_ids])  # [C, H]
    return _unit(prompt) @ _unit(labels).T


def toward_tokens(prompt, table, ids: Sequence[int]) -> dict:
    """How close prompt positions 0..n-1 are to the tokens `ids` (n of them, e.g. a wayward prompt's text):
    {'rank': [n] the rank of token ids[p] among row p's cosine neighbours (0: the nearest),
     'matches': how many rows have ids[p] as their nearest token, 'n': n,
     'distance': sum_p ||prompt_p - table[ids[p]]||^2 / P over the P rows (zero target rows after n),
     the distance a wayward prompt's loss weighs}."""
    prompt, table = np.asarray(prompt, np.float32), np.asarray(table, np.float32)
    ids = list(ids)[:len(prompt)]
    n = len(ids)
    sims = _unit(prompt[:n]) @ _unit(table).T  # [n, V]
    own = sims[np.arange(n), ids]
    rank = (sims > own[:, None]).sum(axis=1)
    target = np.zeros_like(prompt)
    target[:n] = table[ids]
    distance = float(np.sum(np.square(prompt - target)) / len(prompt))
    return {"rank": rank, "matches": int((rank == 0).sum()), "n": n, "distance": distance}
