"""kNN probe on L2-normalized features: DINO-style votes weighted by exp(cosine / 0.07), k chosen on
validation."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from cxrjepa.probe.linear import Probe, selection_score
from cxrjepa.probe.tasks import Task

TEMPERATURE = 0.07


def _normalize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def cosine_weights(dist: np.ndarray) -> np.ndarray:
    """Vote weights from Euclidean distances between unit vectors: exp(cos / T), cos = 1 - d^2 / 2."""
    return np.exp((1.0 - np.asarray(dist) ** 2 / 2.0) / TEMPERATURE)


class _Normalizer:
    def transform(self, X):
        return _normalize(X)


def fit_knn(task: Task, Xtr, ytr, Xva, yva, *, ks) -> Probe:
    norm = _Normalizer()
    Ztr = norm.transform(Xtr)
    reg = task.type == "regression"
    best = None
    for k in sorted({min(int(k), len(Ztr)) for k in ks}):
        cls = KNeighborsRegressor if reg else KNeighborsClassifier
        model = cls(n_neighbors=k, weights=cosine_weights, algorithm="brute").fit(Ztr, ytr)
        probe = Probe("knn", task.type, model, norm, {"k": int(k)}, len(task.classes))
        score = selection_score(task.type, yva, probe.scores(Xva)) if len(yva) else 0.0
        if best is None or score > best[0] + 1e-12:
            best = (score, probe)
    probe = best[1]
    probe.params["val_score"] = None if not np.isfinite(best[0]) else round(float(abs(best[0])), 6)
    return probe
