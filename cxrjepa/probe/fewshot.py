"""Few-shot probes: train on a fraction of the training labels (per class), several seeds, report mean and
spread on the test split. Classes keep their share: a fraction f of class c's training samples, at least
one; multi-label tasks draw f of the samples and add one positive for any label left without one."""

from __future__ import annotations

import numpy as np

from cxrjepa.probe import metrics
from cxrjepa.probe.linear import fit_linear
from cxrjepa.probe.tasks import Task


def per_class_count(n_class: int, fraction: float) -> int:
    return max(1, int(round(fraction * n_class))) if n_class else 0


def sample_fraction(task: Task, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions (into the training rows) of a ``fraction`` subset; sorted."""
    rng = np.random.default_rng(seed)
    n = len(y)
    if fraction >= 1.0:
        return np.arange(n)
    if task.type in ("binary", "multiclass"):
        picks = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            picks.append(rng.choice(idx, size=per_class_count(len(idx), fraction), replace=False))
        return np.sort(np.concatenate(picks))
    if task.type == "multilabel":
        chosen = set(rng.choice(n, size=max(1, int(round(fraction * n))), replace=False).tolist())
        for c in range(y.shape[1]):
            pos = np.flatnonzero(y[:, c] == 1)
            if len(pos) and not any(int(p) in chosen for p in pos):
                chosen.add(int(rng.choice(pos)))
        return np.array(sorted(chosen), dtype=np.int64)
    return np.sort(rng.choice(n, size=min(n, max(2, int(round(fraction * n)))), replace=False))


def run_fewshot(
    task: Task, Xtr, ytr, Xva, yva, Xte, yte, *, fractions, seeds: int, c_grid, alpha_grid, seed: int = 0
) -> list[dict]:
    names = metrics.REGRESSION_METRICS if task.type == "regression" else metrics.CLASSIFICATION_METRICS
    out = []
    for frac in fractions:
        runs, sizes = [], []
        n_seeds = 1 if frac >= 1.0 else seeds  # the full set is the same for every seed
        for s in range(n_seeds):
            pos = sample_fraction(task, ytr, frac, seed + 1000 * s + 1)
            if task.is_classification and task.type != "multilabel" and len(np.unique(ytr[pos])) < 2:
                continue
            probe = fit_linear(task, Xtr[pos], ytr[pos], Xva, yva, c_grid=c_grid, alpha_grid=alpha_grid, seed=seed)
            runs.append(metrics.point(task.type, yte, probe.scores(Xte)))
            sizes.append(len(pos))
        if not runs:
            continue
        summary = {}
        for name in names:
            vals = np.array([r[name] for r in runs if r.get(name) is not None], dtype=np.float64)
            if len(vals):
                summary[name] = {
                    "mean": round(float(vals.mean()), 6),
                    "std": round(float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, 6),
                }
        out.append(
            {"fraction": float(frac), "n_train": int(round(np.mean(sizes))), "seeds": len(runs), "metrics": summary}
        )
    return out
