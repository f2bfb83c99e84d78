"""Segmentation metrics: Dice and IoU per image and class, averaged over images with patient-bootstrap
95 % intervals (the same resampling as the other probe metrics, :func:`cxrjepa.probe.metrics.bootstrap_weights`).

Per image and foreground class c, with P the predicted and T the true pixels of c (ignored pixels left out):

    dice = 2 |P ∩ T| / (|P| + |T|)        iou = |P ∩ T| / |P ∪ T|

An image where c is neither true nor predicted says nothing about c: its value is undefined (NaN) and it
does not enter c's mean. A class's score is the mean over images; ``dice`` / ``iou`` overall are the mean
over classes of the class scores.
"""

from __future__ import annotations

import numpy as np

from cxrjepa.probe.metrics import bootstrap_weights, metric_value, percentile_ci


def confusion_counts(
    pred: np.ndarray, true: np.ndarray, n_classes: int, ignore: int = 255
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and class index: intersection, predicted and true pixel counts, each (n, n_classes).

    ``pred`` and ``true`` are (n, H, W) class indices; ``true == ignore`` pixels are left out.
    """
    n = pred.shape[0]
    inter = np.zeros((n, n_classes), np.int64)
    p_cnt = np.zeros((n, n_classes), np.int64)
    t_cnt = np.zeros((n, n_classes), np.int64)
    for i in range(n):
        t = true[i].ravel()
        p = pred[i].ravel()
        ok = t != ignore
        t, p = t[ok].astype(np.int64), p[ok].astype(np.int64)
        inter[i] = np.bincount(t[t == p], minlength=n_classes)[:n_classes]
        p_cnt[i] = np.bincount(p, minlength=n_classes)[:n_classes]
        t_cnt[i] = np.bincount(t, minlength=n_classes)[:n_classes]
    return inter, p_cnt, t_cnt


def dice_iou(inter: np.ndarray, p_cnt: np.ndarray, t_cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU arrays of the same shape as the counts (NaN where the class is absent in both)."""
    total = p_cnt + t_cnt
    union = total - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2.0 * inter / np.where(total > 0, total, 1), np.nan)
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
    return dice, iou


def _weighted_means(W: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(B, k) means over images of (n, k) values, NaN entries left out, for each weight row of (B, n)."""
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0)
    num = W @ v
    den = W @ ok.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _class_mean(per_class: np.ndarray) -> np.ndarray:
    ok = np.isfinite(per_class)
    cnt = ok.sum(axis=1)
    return np.where(cnt > 0, np.where(ok, per_class, 0.0).sum(axis=1) / np.maximum(cnt, 1), np.nan)


def evaluate(
    dice: np.ndarray, iou: np.ndarray, groups: np.ndarray, class_names: list[str], *, n_boot: int = 1000, seed: int = 0
) -> dict:
    """``{"metrics": {"dice", "iou"}, "per_class": {name: {"dice", "iou"}}}`` with values and 95 % intervals.

    ``dice`` / ``iou``: (n images, k foreground classes); ``groups``: the patient of each image.
    """
    n = dice.shape[0]
    arrays = {"dice": dice, "iou": iou}
    one = np.ones((1, n))
    point = {k: _weighted_means(one, v)[0] for k, v in arrays.items()}
    boots: dict[str, list[np.ndarray]] = {k: [] for k in arrays}
    if n_boot > 0 and n > 0:
        for W in bootstrap_weights(groups, n_boot, seed):
            for k, v in arrays.items():
                boots[k].append(_weighted_means(W, v))

    def pack(value, samples) -> dict:
        d = {"value": metric_value(value)}
        if n_boot > 0:
            d["ci"] = percentile_ci(np.concatenate(samples)) if samples else None
        return d

    metrics = {k: pack(_class_mean(point[k][None])[0], [_class_mean(b) for b in boots[k]]) for k in arrays}
    per_class = {
        name: {k: pack(point[k][c], [b[:, c] for b in boots[k]]) for k in arrays} for c, name in enumerate(class_names)
    }
    return {"metrics": metrics, "per_class": per_class}


def point(dice: np.ndarray, iou: np.ndarray) -> dict[str, float | None]:
    """Overall Dice and IoU without intervals (validation selection, few-shot)."""
    one = np.ones((1, dice.shape[0]))
    return {
        "dice": metric_value(_class_mean(_weighted_means(one, dice))[0]),
        "iou": metric_value(_class_mean(_weighted_means(one, iou))[0]),
    }
