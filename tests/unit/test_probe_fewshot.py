"""Few-shot subsets respect the fraction per class, with at least one example per class."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrjepa.probe.fewshot import per_class_count, run_fewshot, sample_fraction
from cxrjepa.probe.tasks import make_task


def test_fractions_are_respected_per_class():
    y = np.array([0] * 300 + [1] * 40 + [2] * 7)
    task = make_task(pd.Series(["a", "b", "c"]).rename("t"), "t", "multiclass")
    for frac in (0.01, 0.05, 0.1, 0.5):
        for seed in range(3):
            pos = sample_fraction(task, y, frac, seed)
            assert len(np.unique(pos)) == len(pos)
            for c, n_c in ((0, 300), (1, 40), (2, 7)):
                assert (y[pos] == c).sum() == max(1, round(frac * n_c))
    assert len(sample_fraction(task, y, 1.0, 0)) == len(y)
    assert per_class_count(7, 0.01) == 1


def test_seeds_draw_different_subsets():
    y = np.array([0] * 100 + [1] * 100)
    task = make_task(pd.Series(["a", "b"]).rename("t"), "t", "binary")
    a, b = sample_fraction(task, y, 0.1, 0), sample_fraction(task, y, 0.1, 1)
    assert not np.array_equal(a, b)


def test_multilabel_subset_keeps_a_positive_of_every_label():
    rng = np.random.default_rng(0)
    Y = np.zeros((200, 3), dtype=int)
    Y[:, 0] = rng.integers(0, 2, 200)
    Y[5, 1] = 1  # a rare label with a single positive
    Y[:, 2] = 1
    task = make_task(pd.Series(["x|y", "z"]).rename("t"), "t", "multilabel")
    pos = sample_fraction(task, Y, 0.01, 0)
    assert Y[pos].sum(axis=0).min() >= 1


def test_run_fewshot_reports_mean_and_spread():
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 8)) + y[:, None] * 1.5
    task = make_task(pd.Series(["a", "b"]).rename("t"), "t", "binary")
    res = run_fewshot(
        task,
        X[:120],
        y[:120],
        X[120:150],
        y[120:150],
        X[150:],
        y[150:],
        fractions=[0.05, 1.0],
        seeds=3,
        c_grid=[0.1, 1.0],
        alpha_grid=[1.0],
    )
    assert [r["fraction"] for r in res] == [0.05, 1.0]
    assert res[0]["seeds"] == 3 and res[1]["seeds"] == 1
    assert res[0]["n_train"] == sum(max(1, round(0.05 * (y[:120] == c).sum())) for c in (0, 1))
    assert res[1]["metrics"]["auroc"]["mean"] > 0.9 and res[1]["metrics"]["auroc"]["std"] == 0.0
    assert res[0]["metrics"]["auroc"]["std"] >= 0.0
