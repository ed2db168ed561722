"""Evaluation metrics, computed the way GLUE / SuperGLUE define them.

Every metric is a plain numpy function `fn(targets, predictions) -> dict[str, float]`.
Scores are reported on a 0..100 scale, as T5X and the GLUE leaderboard report
them (SST-2 accuracy 95.07, not 0.9507); correlations are also x100.

`targets` and `predictions` are sequences of the same length N: class ids for
classification metrics, floats for correlations, strings for exact match.
Degenerate inputs follow scikit-learn: a metric whose denominator is zero
(constant predictions for MCC, no positive predictions and no positive targets
for F1) is 0. Correlations with a constant side are also 0 (scipy returns nan;
an eval loop that picks the best checkpoint is better served by 0).

Invalid predictions (decoded text that is no label string: `Task.text_to_prediction`
gives -1, or -1.0 for STS-B as T5's `string_to_float(default=-1.)`) count as T5
(`t5/evaluation/metrics.py`, `t5/data/glue_utils.py`) counts them:

    accuracy      wrong (never equal to a target)
    f1            T5's `f1_score_with_invalid`: an invalid prediction becomes the
                  opposite of its target (1 - target), then binary F1 (MRPC, QQP,
                  MultiRC f1a); targets [0, 1, 1, 0], predictions [-1, 1, -1, 0] -> 50.0
    macro_f1      T5's `mean_multiclass_f1` (sklearn `fbeta_score`, labels=range(3),
                  average="macro"): -1 is in no class, so it is a miss of its
                  target's class and a false positive of none (CB)
    matthews      sklearn's `matthews_corrcoef` on the labels as they are, -1 a
                  class of its own (CoLA)
    correlations  -1.0 is an ordinary value (STS-B)
    exact_match   MultiRC: per question, every answer option right (`all_match`),
                  an invalid option is wrong; ReCoRD: no label space
"""
from __future__ import annotations

import collections
import re
import string
from typing import Sequence

import numpy as np


def _pair(targets, predictions, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(targets, dtype=dtype)
    p = np.asarray(predictions, dtype=dtype)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"targets {t.shape} and predictions {p.shape} must both be [N]")
    if t.size == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return t, p


def accuracy(targets, predictions) -> dict[str, float]:
    """Percentage of predictions equal to their target."""
    t, p = _pair(targets, predictions)
    return {"accuracy": 100.0 * float(np.mean(t == p))}


def _binary_f1(t: np.ndarray, p: np.ndarray, positive) -> float:
    tp = np.sum((p == positive) & (t == positive))
    fp = np.sum((p == positive) & (t != positive))
    fn = np.sum((p != positive) & (t == positive))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else float(2 * tp / denom)


def _invalid_to_wrong(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """T5's `f1_score_with_invalid` step: a prediction other than 0 / 1 becomes 1 - target."""
    invalid = (p != 0) & (p != 1)
    return np.where(invalid, 1 - t, p)


def f1(targets, predictions) -> dict[str, float]:
    """Binary F1 of the positive class 1 (MRPC, QQP), T5's `f1_score_with_invalid`.

    A prediction that is neither 0 nor 1 (invalid, -1) is replaced by the
    opposite of its target before computing F1, so it is always wrong: a false
    positive when the target is 0, a false negative when it is 1.
    """
    t, p = _pair(targets, predictions)
    return {"f1": 100.0 * _binary_f1(t, _invalid_to_wrong(t, p), 1)}


f1_score_with_invalid = f1  # T5's name


def macro_f1(targets, predictions, num_classes: int | None = None) -> dict[str, float]:
    """Unweighted mean of per-class F1 (CommitmentBank).

    Classes are `range(num_classes)` when given (as T5 does for CB, so a class
    absent from both sides counts as F1 0), else the classes seen in either
    targets or predictions (scikit-learn's `f1_score(average="macro")`).
    With `num_classes`, an invalid prediction (-1) is in no class: it misses its
    target's class and is a false positive of none, as sklearn's `fbeta_score`
    with `labels=range(num_classes)` (T5's `mean_multiclass_f1`) counts it.
    """
    t, p = _pair(targets, predictions)
    classes = range(num_classes) if num_classes is not None else np.union1d(t, p)
    return {"macro_f1": 100.0 * float(np.mean([_binary_f1(t, p, c) for c in classes]))}


def matthews_corrcoef(targets, predictions) -> dict[str, float]:
    """Matthews correlation (CoLA), multi-class form of scikit-learn; 0 when undefined.

    As T5 (`sklearn_metrics_wrapper("matthews_corrcoef")` on the postprocessed
    labels): invalid predictions (-1) stay a class of their own.
    """
    t, p = _pair(targets, predictions)
    classes, encoded = np.unique(np.concatenate([t, p]), return_inverse=True)
    k = len(classes)
    confusion = np.zeros((k, k), np.float64)
    np.add.at(confusion, (encoded[: len(t)], encoded[len(t):]), 1.0)
    t_sum = confusion.sum(axis=1)
    p_sum = confusion.sum(axis=0)
    n = confusion.sum()
    correct = np.trace(confusion)
    cov_tp = correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    if cov_pp * cov_tt == 0:
        return {"matthews_corrcoef": 0.0}
    return {"matthews_corrcoef": 100.0 * float(cov_tp / np.sqrt(cov_tt * cov_pp))}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
    if denom == 0:
        return 0.0
    return float(np.clip(np.sum(x * y) / denom, -1.0, 1.0))


def rankdata(values) -> np.ndarray:
    """[N] -> [N] float64 ranks 1..N; ties get the average of their ranks (scipy's default)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start of every run of equal values in sorted order.
    new_run = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    run_id = np.cumsum(new_run) - 1
    run_starts = np.flatnonzero(new_run)
    run_ends = np.concatenate([run_starts[1:], [len(values)]])
    average_rank = (run_starts + run_ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(values), np.float64)
    ranks[order] = average_rank[run_id]
    return ranks


def pearson(targets, predictions) -> dict[str, float]:
    """Pearson correlation x100 (STS-B)."""
    t, p = _pair(targets, predictions, np.float64)
    return {"pearson_corrcoef": 100.0 * _pearson(t, p)}


def spearman(targets, predictions) -> dict[str, float]:
    """Spearman rank correlation x100 (STS-B); ties take average ranks like scipy."""
    t, p = _pair(targets, predictions, np.float64)
    return {"spearman_corrcoef": 100.0 * _pearson(rankdata(t), rankdata(p))}


def pearson_and_spearman(targets, predictions) -> dict[str, float]:
    """Both STS-B correlations and their mean (the GLUE score of STS-B)."""
    out = {**pearson(targets, predictions), **spearman(targets, predictions)}
    out["pearson_spearman_mean"] = (out["pearson_corrcoef"] + out["spearman_corrcoef"]) / 2
    return out


def f1_and_accuracy(targets, predictions) -> dict[str, float]:
    """Binary F1, accuracy and their mean (MRPC and QQP report both)."""
    out = {**f1(targets, predictions), **accuracy(targets, predictions)}
    out["f1_accuracy_mean"] = (out["f1"] + out["accuracy"]) / 2
    return out


def exact_match(targets, predictions) -> dict[str, float]:
    """Percentage of predicted strings equal to the target after `str.strip()`."""
    if len(targets) != len(predictions) or len(targets) == 0:
        raise ValueError(f"need equal, non-zero lengths; got {len(targets)} and {len(predictions)}")
    hits = [str(t).strip() == str(p).strip() for t, p in zip(targets, predictions)]
    return {"exact_match": 100.0 * float(np.mean(hits))}


def multirc_f1a_em(targets, predictions) -> dict[str, float]:
    """MultiRC: `f1a` over every answer option, `exact_match` per question.

    targets: N `(question_group, label)` pairs, label 0/1 for one answer option;
    the group is the question's `idx` on hub data (T5 groups by `idx/question`).
    predictions: N labels, -1 for invalid. As T5: `f1a` is `f1_score_with_invalid`
    over all options (`multirc_f1_over_all_answers`); `exact_match` is the mean
    over questions of `all_match` (every option of the question right, an
    invalid one is wrong).
    """
    groups = [g for g, _ in targets]
    labels = np.asarray([label for _, label in targets])
    t, p = _pair(labels, predictions)
    correct = collections.defaultdict(lambda: True)
    for g, ok in zip(groups, t == p):
        correct[g] = correct[g] and bool(ok)
    return {
        "f1a": 100.0 * _binary_f1(t, _invalid_to_wrong(t, p), 1),
        "exact_match": 100.0 * float(np.mean(list(correct.values()))),
    }


def _normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, articles and extra space."""
    text = "".join(ch for ch in str(text).lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
    t = _normalize_answer(target).split()
    p = _normalize_answer(prediction).split()
    common = sum((collections.Counter(t) & collections.Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(t)
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """ReCoRD / SQuAD: max over each example's gold answers of normalised EM and token F1.

    targets: N lists of acceptable answers; predictions: N strings.
    """
    if len(targets) != len(predictions) or len(targets) == 0:
        raise ValueError(f"need equal, non-zero lengths; got {len(targets)} and {len(predictions)}")
    em, f1s = [], []
    for answers, pred in zip(targets, predictions):
        answers = [answers] if isinstance(answers, str) else list(answers)
        if not answers:
            raise ValueError("an example has no gold answers")
        em.append(max(float(_normalize_answer(a) == _normalize_answer(pred)) for a in answers))
        f1s.append(max(_token_f1(a, pred) for a in answers))
    return {"exact_match": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1s))}


_WSC_DETERMINERS = frozenset({
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our", "some", "that",
    "the", "their", "these", "this", "those", "which", "whose", "your",
})


def _wsc_clean(text: str) -> str:
    words = str(text).strip().lower().split(" ")
    return " ".join(w for w in words if w not in _WSC_DETERMINERS)


def wsc_simple_prediction(prediction: str, referent: str) -> int:
    """T5's `postprocessors.wsc_simple`: 1 if the generated text names the referent, else 0; -1 if empty.

    Case and determiners are ignored; one side's words may be a subset of the
    other's ("fuzzy bunny" vs "bunny"), but a possessive only matches a possessive.
    """
    prediction, referent = _wsc_clean(prediction), _wsc_clean(referent)
    if not prediction:
        return -1
    if ("'" in prediction) != ("'" in referent):
        return 0
    p, r = set(prediction.split(" ")), set(referent.split(" "))
    return int(p <= r or r <= p)


def wsc_simple_accuracy(targets, predictions) -> dict[str, float]:
    """WSC as T5's `wsc_simple` tasks: did the model name the candidate exactly when it is the referent?

    targets: N `(candidate, label)` pairs, label 1 when the candidate is the
    pronoun's referent; predictions: N generated texts.
    """
    if len(targets) != len(predictions) or len(targets) == 0:
        raise ValueError(f"need equal, non-zero lengths; got {len(targets)} and {len(predictions)}")
    predicted = [wsc_simple_prediction(p, referent) for (referent, _), p in zip(targets, predictions)]
    return accuracy([int(label) for _, label in targets], predicted)
