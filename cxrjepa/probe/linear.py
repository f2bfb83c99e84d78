"""Linear probe: standardized features, logistic regression (one per label for multi-label) or ridge
regression; the regularisation strength chosen on the validation split by the task's primary metric."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgWarning
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from cxrjepa.probe import metrics
from cxrjepa.probe.tasks import Task


@dataclass
class Probe:
    """A fitted probe: ``scores(X)`` gives class probabilities (n, k) or regression predictions (n,)."""

    kind: str
    task_type: str
    model: object
    scaler: object | None
    params: dict
    n_classes: int = 0

    def scores(self, X: np.ndarray) -> np.ndarray:
        Z = self.scaler.transform(X) if self.scaler is not None else X
        if self.task_type == "regression":
            return np.asarray(self.model.predict(Z), dtype=np.float64)
        return _proba(self.model, Z, self.task_type, self.n_classes)


def _proba(model, Z: np.ndarray, task_type: str, k: int) -> np.ndarray:
    if task_type == "multilabel":
        p = model.predict_proba(Z)
        if isinstance(p, list):  # kNN multi-output: one (n, c) array per label
            p = np.stack(
                [q[:, -1] if q.shape[1] > 1 else np.full(len(Z), float(cls[-1])) for q, cls in zip(p, model.classes_)],
                axis=1,
            )
        return np.asarray(p, dtype=np.float64)
    p = model.predict_proba(Z)
    full = np.zeros((len(Z), k))
    full[:, np.asarray(model.classes_, dtype=np.int64)] = p  # classes absent from training get 0
    return full


def selection_score(task_type: str, y: np.ndarray, scores: np.ndarray) -> float:
    """Higher is better: the primary metric on validation, with a fallback when it is undefined."""
    vals = metrics.point(task_type, y, scores)
    key = metrics.PRIMARY[task_type]
    v = vals.get(key)
    if v is None:
        v = vals.get("balanced_accuracy") if task_type != "regression" else None
    if v is None:
        return -np.inf
    return -v if key in metrics.LOWER_IS_BETTER else v


def _model(task_type: str, seed: int):
    """One estimator refitted along the grid; logistic regression starts each fit from the previous one."""
    if task_type == "regression":
        return Ridge()
    lr = LogisticRegression(max_iter=2000, random_state=seed, warm_start=task_type != "multilabel")
    return OneVsRestClassifier(lr) if task_type == "multilabel" else lr


def _set_strength(model, task_type: str, strength: float) -> None:
    if task_type == "regression":
        model.set_params(alpha=strength)
    elif task_type == "multilabel":
        model.set_params(estimator__C=strength)
    else:
        model.set_params(C=strength)


def fit_linear(task: Task, Xtr, ytr, Xva, yva, *, c_grid, alpha_grid, seed: int = 0) -> Probe:
    """Fit on train for every strength in the grid (strongest regularisation first, each fit warm-started
    from the previous one); keep the best on validation (ties: the stronger regularisation)."""
    scaler = StandardScaler().fit(Xtr)
    Ztr = scaler.transform(Xtr)
    reg = task.type == "regression"
    grid = sorted(alpha_grid, reverse=True) if reg else sorted(c_grid)
    k = len(task.classes)
    model = _model(task.type, seed)
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", LinAlgWarning)  # ridge at the weakest strengths; validation picks the strength
        warnings.filterwarnings("ignore", message=".*not present in all training examples.*")
        for strength in grid:
            _set_strength(model, task.type, strength)
            model.fit(Ztr, ytr)
            probe = Probe("linear", task.type, model, scaler, {"alpha" if reg else "C": float(strength)}, k)
            score = selection_score(task.type, yva, probe.scores(Xva)) if len(yva) else 0.0
            if best is None or score > best[0] + 1e-12:
                best = (score, Probe(probe.kind, probe.task_type, copy.deepcopy(model), scaler, probe.params, k))
    probe = best[1]
    probe.params["val_score"] = None if not np.isfinite(best[0]) else round(float(abs(best[0])), 6)
    return probe
