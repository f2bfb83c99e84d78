"""Two probes of one task on the same test samples, compared: the paired difference of their metrics.

"Does my encoder beat its random twin / raw pixels?" is a question about a difference, and two metrics with
overlapping intervals can still differ clearly: both probes see the same test patients, so the difference is
taken on each patient-bootstrap resample (:func:`cxrjepa.probe.metrics.paired_difference`). Reads each
probe's test predictions (predictions.parquet) and the first probe's split (patient keys); single-label
classification tasks (binary, multi-class) only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrjepa.probe.layout import Probe
from cxrjepa.probe.metrics import paired_difference

#: task types whose predictions carry one score column per class
COMPARABLE = ("binary", "multiclass")


@dataclass
class TestScores:
    sample_id: np.ndarray
    classes: list[str]
    y: np.ndarray
    scores: np.ndarray


def test_scores(probe: Probe, task: str, kind: str) -> TestScores | None:
    """The test predictions of one task and probe kind, sorted by sample_id; ``None`` when there are none."""
    df = probe.predictions(task, kind)
    if df is None or df.empty:
        return None
    df = df.sort_values("sample_id", kind="stable")
    cols = [c for c in df.columns if c.startswith("score_")]
    classes = [c[len("score_") :] for c in cols]
    target = df["target"].astype(str)
    if not cols or not target.isin(classes).all():
        return None
    y = target.map(classes.index).to_numpy(np.int64)
    return TestScores(df["sample_id"].astype(str).to_numpy(), classes, y, df[cols].to_numpy(np.float64))


def compare_probes(
    a: Probe, b: Probe, task: str, kind: str = "linear", *, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict] | None:
    """Metrics of probe ``a`` minus probe ``b`` for ``task`` with paired 95 % intervals (see the module), or
    ``None`` when they cannot be paired: a task type other than binary / multi-class, missing predictions,
    or different test samples or classes (different splits)."""
    ta, tb = a.metrics.tasks.get(task), b.metrics.tasks.get(task)
    if ta is None or tb is None or ta.type not in COMPARABLE or tb.type != ta.type:
        return None
    sa, sb = test_scores(a, task, kind), test_scores(b, task, kind)
    if sa is None or sb is None or sa.classes != sb.classes:
        return None
    if not (np.array_equal(sa.sample_id, sb.sample_id) and np.array_equal(sa.y, sb.y)):
        return None
    split = a.split()
    groups = sa.sample_id
    if split is not None and "patient_key" in split:
        patients = dict(zip(split["sample_id"].astype(str), split["patient_key"].astype(str)))
        groups = np.array([patients.get(s, s) for s in sa.sample_id])
    return paired_difference(ta.type, sa.y, sa.scores, sb.scores, groups, n_boot=n_boot, seed=seed)
