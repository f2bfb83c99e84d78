"""Paired differences of two probes on the same test samples (cxrjepa.probe.metrics.paired_difference)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from cxrjepa.probe.metrics import evaluate, paired_difference


def _two_class(p):
    return np.stack([1 - p, p], axis=1)


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    groups = np.repeat(np.arange(n // 2), 2)  # two images per patient
    good = _two_class(1 / (1 + np.exp(-(2.5 * (y - 0.5) + rng.normal(0, 1, n)))))
    weak = _two_class(1 / (1 + np.exp(-(0.4 * (y - 0.5) + rng.normal(0, 1, n)))))
    return y, groups, good, weak


def test_the_difference_is_the_difference_of_the_two_aurocs_and_its_interval_excludes_0_for_a_real_gap():
    y, groups, good, weak = _data()
    d = paired_difference("binary", y, good, weak, groups, n_boot=300, seed=0)
    expected = roc_auc_score(y, good[:, 1]) - roc_auc_score(y, weak[:, 1])
    assert abs(d["auroc"]["value"] - expected) < 1e-6 and expected > 0.2
    lo, hi = d["auroc"]["ci"]
    assert 0 < lo < expected < hi
    # the same resamples for both: the paired interval is narrower than the two separate intervals together
    a = evaluate("binary", y, good, groups, n_boot=300, seed=0)["metrics"]["auroc"]["ci"]
    b = evaluate("binary", y, weak, groups, n_boot=300, seed=0)["metrics"]["auroc"]["ci"]
    assert hi - lo < (a[1] - a[0]) + (b[1] - b[0])
    flipped = paired_difference("binary", y, weak, good, groups, n_boot=300, seed=0)
    assert flipped["auroc"]["value"] == -d["auroc"]["value"] and flipped["auroc"]["ci"][1] < 0


def test_a_probe_compared_with_itself_differs_by_exactly_0():
    y, groups, good, _ = _data(seed=1)
    d = paired_difference("multiclass", y, good, good, groups, n_boot=50, seed=0)
    assert all(v["value"] == 0 and v["ci"] == [0.0, 0.0] for v in d.values())


def test_noise_alone_gives_an_interval_that_spans_0():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    a, b = (_two_class(rng.random(300)) for _ in range(2))
    lo, hi = paired_difference("binary", y, a, b, np.arange(300), n_boot=300, seed=0)["auroc"]["ci"]
    assert lo < 0 < hi
