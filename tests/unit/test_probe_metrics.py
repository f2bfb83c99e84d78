"""Probe metrics agree with scikit-learn on fixed data, and bootstrap weights equal explicit resampling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from cxrjepa.probe import metrics as m


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _one(n):
    return np.ones((1, n))


def test_binary_metrics_match_sklearn_with_ties(rng):
    n = 300
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n) + 0.4 * y, 1)  # rounding makes many ties
    proba = np.stack([1 - s / s.max(), s / s.max()], axis=1)
    pred = proba.argmax(1)
    overall, per = m.classification(_one(n), y, proba)
    assert overall["auroc"][0] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert overall["auprc"][0] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert overall["macro_f1"][0] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    assert overall["accuracy"][0] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert overall["balanced_accuracy"][0] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert per["f1"][0, 1] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    assert per["auprc"][0, 0] == pytest.approx(skm.average_precision_score(y == 0, proba[:, 0]), abs=1e-12)


def test_multiclass_metrics_match_sklearn(rng):
    n, k = 400, 4
    y = rng.integers(0, k, n)
    p = rng.dirichlet(np.ones(k), n)
    p[np.arange(n), y] += 0.25
    p /= p.sum(1, keepdims=True)
    overall, per = m.classification(_one(n), y, p)
    pred = p.argmax(1)
    assert overall["auroc"][0] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    assert overall["auprc"][0] == pytest.approx(
        np.mean([skm.average_precision_score(y == c, p[:, c]) for c in range(k)]), abs=1e-12
    )
    assert overall["macro_f1"][0] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    assert overall["balanced_accuracy"][0] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    np.testing.assert_allclose(per["f1"][0], skm.f1_score(y, pred, average=None), atol=1e-12)


def test_macro_f1_ignores_classes_absent_from_truth_and_prediction_like_sklearn():
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [0.6, 0.4, 0.0], [0.7, 0.3, 0.0]])
    overall, _ = m.classification(_one(5), y, p)
    assert overall["macro_f1"][0] == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))


def test_multilabel_metrics_match_sklearn(rng):
    n = 250
    Y = rng.integers(0, 2, (n, 3))
    P = np.clip(0.35 * Y + 0.65 * rng.random((n, 3)), 0, 1)
    overall, per = m.multilabel(_one(n), Y, P)
    assert overall["auroc"][0] == pytest.approx(skm.roc_auc_score(Y, P, average="macro"), abs=1e-12)
    assert overall["auprc"][0] == pytest.approx(skm.average_precision_score(Y, P, average="macro"), abs=1e-12)
    assert overall["macro_f1"][0] == pytest.approx(skm.f1_score(Y, P >= 0.5, average="macro"), abs=1e-12)
    assert overall["accuracy"][0] == pytest.approx(skm.accuracy_score(Y, P >= 0.5), abs=1e-12)


def test_regression_metrics_match_sklearn(rng):
    y = rng.normal(40, 15, 120)
    pred = y + rng.normal(0, 5, 120)
    out, _ = m.regression(_one(120), y, pred)
    assert out["mae"][0] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert out["r2"][0] == pytest.approx(skm.r2_score(y, pred))


def test_resample_weights_equal_explicit_resampling(rng):
    """A bootstrap resample as sample counts gives what scikit-learn gives on the resampled arrays."""
    n = 150
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n) + 0.3 * y, 2)
    proba = np.stack([1 - s, s], axis=1)
    yr, pr = rng.normal(size=n), rng.normal(size=n)
    for _ in range(5):
        idx = rng.integers(0, n, n)
        W = np.bincount(idx, minlength=n)[None].astype(float)
        assert m.auroc(W, y == 1, s)[0] == pytest.approx(skm.roc_auc_score(y[idx], s[idx]), abs=1e-12)
        assert m.average_precision(W, y == 1, s)[0] == pytest.approx(
            skm.average_precision_score(y[idx], s[idx]), abs=1e-12
        )
        o, _ = m.classification(W, y, proba)
        pred = proba.argmax(1)
        assert o["macro_f1"][0] == pytest.approx(skm.f1_score(y[idx], pred[idx], average="macro"), abs=1e-12)
        assert o["balanced_accuracy"][0] == pytest.approx(skm.balanced_accuracy_score(y[idx], pred[idx]), abs=1e-12)
        r, _ = m.regression(W, yr, pr)
        assert r["r2"][0] == pytest.approx(skm.r2_score(yr[idx], pr[idx]), abs=1e-12)


def test_auroc_undefined_when_one_class_is_missing():
    W = np.ones((1, 4))
    assert np.isnan(m.auroc(W, np.array([True] * 4), np.arange(4.0)))[0]
    assert np.isnan(m.average_precision(W, np.array([False] * 4), np.arange(4.0)))[0]


def test_patient_bootstrap_draws_whole_patients():
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    for W in m.bootstrap_weights(groups, 50, seed=3):
        # the three images of patient a always carry the same weight; weights sum to patient draws
        assert np.all(W[:, 0] == W[:, 1]) and np.all(W[:, 1] == W[:, 2]) and np.all(W[:, 4] == W[:, 5])
        assert np.all(W[:, [0, 3, 4]].sum(axis=1) == 3)


def test_evaluate_interval_brackets_value_and_narrows_with_n(rng):
    def run(n):
        y = rng.integers(0, 2, n)
        s = rng.random(n) + 0.8 * y
        return m.evaluate("binary", y, np.stack([1 - s, s], 1), np.arange(n), ["neg", "pos"], n_boot=400, seed=0)

    small, large = run(60), run(2000)
    for res in (small, large):
        v, (lo, hi) = res["metrics"]["auroc"]["value"], res["metrics"]["auroc"]["ci"]
        assert lo <= v <= hi
    width = lambda r: r["metrics"]["auroc"]["ci"][1] - r["metrics"]["auroc"]["ci"][0]  # noqa: E731
    assert width(large) < width(small)
    assert set(small["per_class"]) == {"neg", "pos"}


def test_evaluate_is_repeatable_and_seeded(rng):
    y = rng.integers(0, 2, 80)
    s = rng.random(80) + 0.5 * y
    p = np.stack([1 - s, s], 1)
    a = m.evaluate("binary", y, p, np.arange(80), n_boot=200, seed=7)
    b = m.evaluate("binary", y, p, np.arange(80), n_boot=200, seed=7)
    assert a == b
    assert "ci" not in m.evaluate("binary", y, p, np.arange(80), n_boot=0)["metrics"]["auroc"]


def test_curves_and_confusion_match_sklearn(rng):
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet(np.ones(3), 90)
    c = m.curves("multiclass", y, p, ["a", "b", "c"])
    assert c["confusion"]["matrix"] == skm.confusion_matrix(y, p.argmax(1)).tolist()
    assert set(c["roc"]) == {"a", "b", "c"}
    assert c["roc"]["a"]["fpr"][0] == 0.0 and c["roc"]["a"]["tpr"][-1] == 1.0
