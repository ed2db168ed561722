"""Metrics against scikit-learn / scipy on random inputs, ties and degenerate cases."""
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from prompt_tuning_jax.data import metrics

SEEDS = range(5)


def _labels(seed, n=200, k=2):
    rng = np.random.default_rng(seed)
    t = rng.integers(k, size=n)
    p = np.where(rng.random(n) < 0.7, t, rng.integers(k, size=n))  # correlated, imperfect
    return t, p


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_f1_against_sklearn(seed):
    t, p = _labels(seed)
    assert metrics.accuracy(t, p)["accuracy"] == pytest.approx(100 * sklearn.metrics.accuracy_score(t, p))
    assert metrics.f1(t, p)["f1"] == pytest.approx(100 * sklearn.metrics.f1_score(t, p))
    both = metrics.f1_and_accuracy(t, p)
    assert both["f1_accuracy_mean"] == pytest.approx((both["f1"] + both["accuracy"]) / 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_macro_f1_and_mcc_multiclass_against_sklearn(seed):
    t, p = _labels(seed, k=3)
    assert metrics.macro_f1(t, p)["macro_f1"] == pytest.approx(
        100 * sklearn.metrics.f1_score(t, p, average="macro"))
    assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
        100 * sklearn.metrics.matthews_corrcoef(t, p))
    tb, pb = _labels(seed)
    assert metrics.matthews_corrcoef(tb, pb)["matthews_corrcoef"] == pytest.approx(
        100 * sklearn.metrics.matthews_corrcoef(tb, pb))


def test_macro_f1_num_classes_counts_absent_class_as_zero():
    t, p = [0, 0, 1, 1], [0, 0, 1, 1]
    assert metrics.macro_f1(t, p)["macro_f1"] == pytest.approx(100.0)
    expected = 100 * sklearn.metrics.f1_score(t, p, labels=[0, 1, 2], average="macro", zero_division=0)
    assert metrics.macro_f1(t, p, num_classes=3)["macro_f1"] == pytest.approx(expected)
    assert expected == pytest.approx(200 / 3)


def test_degenerate_cases_match_sklearn():
    t = np.array([0, 1, 1, 0, 1])
    constant = np.ones(5, int)
    assert metrics.matthews_corrcoef(t, constant)["matthews_corrcoef"] == 0.0
    assert sklearn.metrics.matthews_corrcoef(t, constant) == 0.0
    assert metrics.matthews_corrcoef(constant, constant)["matthews_corrcoef"] == 0.0
    zeros = np.zeros(5, int)
    assert metrics.f1(zeros, zeros)["f1"] == 0.0  # no positives anywhere: sklearn's zero_division -> 0
    assert sklearn.metrics.f1_score(zeros, zeros, zero_division=0) == 0.0
    assert metrics.pearson([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])["pearson_corrcoef"] == 0.0
    assert metrics.spearman([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])["spearman_corrcoef"] == 0.0
    with pytest.raises(ValueError):
        metrics.accuracy([], [])
    with pytest.raises(ValueError):
        metrics.accuracy([1, 2], [1])


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_against_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    t = np.round(rng.uniform(0, 5, 150) * 5) / 5  # STS-B style: many ties
    p = np.round((t + rng.normal(0, 1, 150)) * 2) / 2
    assert metrics.pearson(t, p)["pearson_corrcoef"] == pytest.approx(100 * scipy.stats.pearsonr(t, p)[0])
    assert metrics.spearman(t, p)["spearman_corrcoef"] == pytest.approx(100 * scipy.stats.spearmanr(t, p)[0])
    np.testing.assert_allclose(metrics.rankdata(p), scipy.stats.rankdata(p))
    both = metrics.pearson_and_spearman(t, p)
    assert both["pearson_spearman_mean"] == pytest.approx(
        (both["pearson_corrcoef"] + both["spearman_corrcoef"]) / 2)


def test_exact_match_strips():
    assert metrics.exact_match([" positive", "negative"], ["positive ", "positive"]) == {"exact_match": 50.0}


def test_multirc_em_is_per_question():
    targets = [("q1", 1), ("q1", 0), ("q2", 1), ("q2", 1)]
    predictions = [1, 0, 1, 0]  # q1 fully right, q2 one option wrong
    out = metrics.multirc_f1a_em(targets, predictions)
    assert out["exact_match"] == 50.0
    assert out["f1a"] == pytest.approx(100 * sklearn.metrics.f1_score([1, 0, 1, 1], predictions))


def test_squad_takes_best_answer_after_normalisation():
    out = metrics.squad([["The Eiffel Tower", "Eiffel"], ["Paris"]], ["eiffel tower!", "London Paris"])
    assert out["exact_match"] == 50.0
    assert out["f1"] == pytest.approx(100 * (1.0 + 2 / 3) / 2)
