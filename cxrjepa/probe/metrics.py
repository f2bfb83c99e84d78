"""Probe metrics with patient-level bootstrap 95 % intervals.

Every metric is computed for a batch of sample-weight vectors at once: ``W`` (B, n). The point estimate
uses unit weights; a bootstrap resample is a weight vector of how often each sample was drawn, so B
resamples cost a few matrix operations instead of B calls into scikit-learn. With unit weights each
function equals its scikit-learn counterpart (tests/unit/test_probe_metrics.py checks this):

* ``auroc`` = ``roc_auc_score``; multi-class = one-vs-rest macro (``multi_class="ovr"``)
* ``auprc`` = ``average_precision_score`` (macro over classes for multi-class / multi-label)
* ``accuracy``, ``balanced_accuracy``, ``macro_f1`` (``f1_score(average="macro")``) from argmax predictions;
  multi-label: subset accuracy, per-label 0.5 threshold, balanced accuracy = mean of per-label values
* regression: ``mae`` (``mean_absolute_error``), ``r2`` (``r2_score``)

Resampling is by patient (a cluster bootstrap): all images of a drawn patient enter together, so
intervals are not too narrow when patients have several images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

CLASSIFICATION_METRICS = ("auroc", "auprc", "macro_f1", "accuracy", "balanced_accuracy")
REGRESSION_METRICS = ("mae", "r2")
#: the metric a task's probes are selected and compared on
PRIMARY = {"binary": "auroc", "multiclass": "auroc", "multilabel": "auroc", "regression": "mae"}
#: metrics where lower is better
LOWER_IS_BETTER = {"mae"}


def _groups(s: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s if descending else s, kind="mergesort")
    ss = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ss)) + 1]
    return order, starts


def _pos_neg(W: np.ndarray, pos: np.ndarray, order: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Wo = W[:, order]
    po = pos[order]
    P = np.add.reduceat(Wo * po, starts, axis=1)
    N = np.add.reduceat(Wo * ~po, starts, axis=1)
    return P, N


def auroc(W: np.ndarray, pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Weighted area under the ROC curve per row of ``W`` (NaN where a class is absent)."""
    pos = np.asarray(pos, dtype=bool)
    order, starts = _groups(np.asarray(score, dtype=np.float64), descending=False)
    P, N = _pos_neg(W, pos, order, starts)
    n_before = np.cumsum(N, axis=1) - N
    num = (P * (n_before + 0.5 * N)).sum(axis=1)
    den = P.sum(axis=1) * N.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def average_precision(W: np.ndarray, pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Weighted average precision (area under the precision-recall curve, scikit-learn's definition)."""
    pos = np.asarray(pos, dtype=bool)
    order, starts = _groups(np.asarray(score, dtype=np.float64), descending=True)
    P, N = _pos_neg(W, pos, order, starts)
    tp = np.cumsum(P, axis=1)
    fp = np.cumsum(N, axis=1)
    total = tp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
        ap = (P * prec).sum(axis=1) / np.where(total > 0, total, 1)
    return np.where(total > 0, ap, np.nan)


def confusion(W: np.ndarray, true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Weighted confusion matrices (B, k, k): rows true class, columns predicted class."""
    code = np.asarray(true, dtype=np.int64) * k + np.asarray(pred, dtype=np.int64)
    onehot = np.zeros((len(code), k * k), dtype=W.dtype)
    onehot[np.arange(len(code)), code] = 1.0
    return (W @ onehot).reshape(-1, k, k)


def _f1_per_class(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 (B, k) and which classes count for macro averages (present in truth or prediction)."""
    tp = np.diagonal(C, axis1=1, axis2=2)
    true_n = C.sum(axis=2)
    pred_n = C.sum(axis=1)
    den = true_n + pred_n
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)
    return f1, den > 0


def confusion_metrics(C: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diagonal(C, axis1=1, axis2=2)
    total = C.sum(axis=(1, 2))
    true_n = C.sum(axis=2)
    f1, present = _f1_per_class(C)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = tp.sum(axis=1) / np.where(total > 0, total, 1)
        recall = np.where(true_n > 0, tp / np.where(true_n > 0, true_n, 1), np.nan)
        bal = _nanmean(recall)
        macro_f1 = (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    return {"accuracy": acc, "balanced_accuracy": bal, "macro_f1": macro_f1, "f1": f1}


def classification(
    W: np.ndarray, y: np.ndarray, proba: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Binary / multi-class metrics. ``y`` (n,) class indices, ``proba`` (n, k).

    Returns (overall metrics {name: (B,)}, per-class metrics {name: (B, k)}).
    """
    k = proba.shape[1]
    pred = np.argmax(proba, axis=1)
    cm = confusion_metrics(confusion(W, y, pred, k))
    per_auc = np.stack([auroc(W, y == c, proba[:, c]) for c in range(k)], axis=1)
    per_ap = np.stack([average_precision(W, y == c, proba[:, c]) for c in range(k)], axis=1)
    if k == 2:
        overall_auc, overall_ap = per_auc[:, 1], per_ap[:, 1]
    else:  # macro over the classes defined in this (re)sample
        overall_auc, overall_ap = _nanmean(per_auc), _nanmean(per_ap)
    overall = {
        "auroc": overall_auc,
        "auprc": overall_ap,
        "macro_f1": cm["macro_f1"],
        "accuracy": cm["accuracy"],
        "balanced_accuracy": cm["balanced_accuracy"],
    }
    return overall, {"auroc": per_auc, "auprc": per_ap, "f1": cm["f1"]}


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Row means over the defined (non-NaN) entries; NaN for a row with none."""
    ok = ~np.isnan(a)
    cnt = ok.sum(axis=1)
    tot = np.where(ok, a, 0.0).sum(axis=1)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def multilabel(
    W: np.ndarray, Y: np.ndarray, proba: np.ndarray, threshold: float = 0.5
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Multi-label metrics. ``Y`` (n, k) 0/1, ``proba`` (n, k) independent probabilities."""
    Y = np.asarray(Y, dtype=bool)
    k = Y.shape[1]
    P = proba >= threshold
    per_auc = np.stack([auroc(W, Y[:, c], proba[:, c]) for c in range(k)], axis=1)
    per_ap = np.stack([average_precision(W, Y[:, c], proba[:, c]) for c in range(k)], axis=1)
    per_f1, per_bal = [], []
    for c in range(k):
        cm = confusion(W, Y[:, c], P[:, c], 2)
        tp, fp, fn = cm[:, 1, 1], cm[:, 0, 1], cm[:, 1, 0]
        den = 2 * tp + fp + fn
        per_f1.append(np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0))
        per_bal.append(confusion_metrics(cm)["balanced_accuracy"])
    per_f1 = np.stack(per_f1, axis=1)
    total = W.sum(axis=1)
    exact = (Y == P).all(axis=1).astype(W.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        overall = {
            "auroc": _nanmean(per_auc),
            "auprc": _nanmean(per_ap),
            "macro_f1": per_f1.mean(axis=1),
            "accuracy": (W @ exact) / np.where(total > 0, total, 1),
            "balanced_accuracy": _nanmean(np.stack(per_bal, axis=1)),
        }
    return overall, {"auroc": per_auc, "auprc": per_ap, "f1": per_f1}


def regression(W: np.ndarray, y: np.ndarray, pred: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    y = np.asarray(y, dtype=np.float64)
    err = np.asarray(pred, dtype=np.float64) - y
    total = W.sum(axis=1)
    safe = np.where(total > 0, total, 1)
    mae = (W @ np.abs(err)) / safe
    mean = (W @ y) / safe
    ss_res = W @ (err**2)
    ss_tot = (W * (y[None, :] - mean[:, None]) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.nan)
    return {"mae": mae, "r2": r2}, {}


def compute(task_type: str, W: np.ndarray, y: np.ndarray, scores: np.ndarray):
    if task_type == "regression":
        return regression(W, y, scores)
    if task_type == "multilabel":
        return multilabel(W, y, scores)
    return classification(W, y, scores)


# ---------------------------------------------------------------- bootstrap


def bootstrap_weights(groups: np.ndarray, n_boot: int, seed: int, block: int | None = None) -> Iterator[np.ndarray]:
    """Blocks of patient-level resample weights (b, n): each patient drawn with replacement, G times."""
    codes, inverse = np.unique(np.asarray(groups), return_inverse=True)
    g = len(codes)
    n = len(inverse)
    rng = np.random.default_rng(seed)
    block = block or max(1, min(n_boot, int(5e6 // max(n, 1))))  # <= ~40 MB of weights at a time
    left = n_boot
    while left > 0:
        b = min(block, left)
        counts = rng.multinomial(g, np.full(g, 1.0 / g), size=b).astype(np.float64)
        yield counts[:, inverse]
        left -= b


def metric_value(x: float) -> float | None:
    """A metric as metrics.json holds it: rounded to 6 decimals, ``None`` when it is not finite."""
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)


def percentile_ci(samples: np.ndarray) -> list[float] | None:
    """The 95% percentile interval of bootstrap ``samples``; ``None`` when too few of them are finite."""
    finite = samples[np.isfinite(samples)]
    if len(finite) < max(10, 0.5 * len(samples)):
        return None
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [round(float(lo), 6), round(float(hi), 6)]


def evaluate(
    task_type: str,
    y: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    classes: list[str] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """``{"metrics": {name: {"value", "ci"}}, "per_class": {class: {name: {"value", "ci"}}}}``.

    ``n_boot=0`` gives values without intervals (``ci`` is then absent).
    """
    n = len(y)
    one = np.ones((1, n))
    point, per_point = compute(task_type, one, y, scores)
    boots: dict[str, list[np.ndarray]] = {k: [] for k in point}
    per_boots: dict[str, list[np.ndarray]] = {k: [] for k in per_point}
    if n_boot > 0 and n > 0:
        for W in bootstrap_weights(groups, n_boot, seed):
            o, p = compute(task_type, W, y, scores)
            for k, v in o.items():
                boots[k].append(v)
            for k, v in p.items():
                per_boots[k].append(v)

    def pack(value, samples):
        d = {"value": metric_value(value)}
        if n_boot > 0:
            d["ci"] = percentile_ci(np.concatenate(samples)) if samples else None
        return d

    metrics = {k: pack(point[k][0], boots[k]) for k in point}
    per_class = {}
    if per_point and classes is not None:
        for c, name in enumerate(classes):
            per_class[str(name)] = {k: pack(per_point[k][0, c], [b[:, c] for b in per_boots[k]]) for k in per_point}
    out = {"metrics": metrics}
    if per_class:
        out["per_class"] = per_class
    return out


def paired_difference(
    task_type: str,
    y: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """Each metric of ``scores_a`` minus that of ``scores_b`` on the same samples ``{name: {"value", "ci"}}``,
    with a paired patient-bootstrap 95 % interval: both are scored on every resample, so the interval of the
    difference is far narrower than two separate intervals suggest."""
    one = np.ones((1, len(y)))
    a, _ = compute(task_type, one, y, scores_a)
    b, _ = compute(task_type, one, y, scores_b)
    boots: dict[str, list[np.ndarray]] = {k: [] for k in a}
    if n_boot > 0 and len(y) > 0:
        for W in bootstrap_weights(groups, n_boot, seed):
            wa, _ = compute(task_type, W, y, scores_a)
            wb, _ = compute(task_type, W, y, scores_b)
            for k in boots:
                boots[k].append(wa[k] - wb[k])
    return {
        k: {
            "value": metric_value(a[k][0] - b[k][0]),
            "ci": percentile_ci(np.concatenate(boots[k])) if boots[k] else None,
        }
        for k in a
    }


def point(task_type: str, y: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Metric values without intervals (validation selection, few-shot)."""
    o, _ = compute(task_type, np.ones((1, len(y))), y, scores)
    return {k: metric_value(v[0]) for k, v in o.items()}


def curves(task_type: str, y: np.ndarray, scores: np.ndarray, classes: list[str], max_points: int = 200) -> dict:
    """ROC curves per class (binary: the positive class) and the confusion matrix (single-label tasks)."""
    from sklearn.metrics import confusion_matrix, roc_curve

    if task_type == "regression":
        return {}
    out: dict = {"roc": {}}
    if task_type == "multilabel":
        cols = range(len(classes))
        truth = lambda c: np.asarray(y)[:, c].astype(bool)  # noqa: E731
    else:
        cols = [1] if task_type == "binary" else range(len(classes))
        truth = lambda c: np.asarray(y) == c  # noqa: E731
    for c in cols:
        t = truth(c)
        if t.all() or not t.any():
            continue
        fpr, tpr, _ = roc_curve(t, scores[:, c])
        if len(fpr) > max_points:
            keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
            fpr, tpr = fpr[keep], tpr[keep]
        out["roc"][str(classes[c])] = {
            "fpr": [round(float(v), 5) for v in fpr],
            "tpr": [round(float(v), 5) for v in tpr],
        }
    if task_type != "multilabel":
        cm = confusion_matrix(y, np.argmax(scores, axis=1), labels=list(range(len(classes))))
        out["confusion"] = {"labels": [str(c) for c in classes], "matrix": cm.tolist()}
    return out
