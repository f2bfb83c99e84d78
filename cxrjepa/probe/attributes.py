"""How well the embeddings predict patient attributes (RAD-DINO's test): sex (AUROC) and age (MAE, R^2),
with the probe's own patient-level split and a linear probe chosen on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrjepa.probe import metrics
from cxrjepa.probe.linear import fit_linear
from cxrjepa.probe.tasks import make_task

MIN_TRAIN = 10
MIN_TEST = 5


def _sex(index: pd.DataFrame) -> pd.Series | None:
    if "sex" not in index.columns:
        return None
    s = index["sex"].astype(str).str.strip().str.upper()
    return s.where(s.isin(["M", "F"])).rename("sex")


def _age(index: pd.DataFrame) -> pd.Series | None:
    if "age" not in index.columns:
        return None
    return pd.to_numeric(index["age"], errors="coerce").rename("age")


def predict_attributes(
    X, index: pd.DataFrame, split: np.ndarray, patients: np.ndarray, *, c_grid, alpha_grid, n_boot: int, seed: int
) -> dict:
    out = {}
    for name, col, ttype in (("sex", _sex(index), "binary"), ("age", _age(index), "regression")):
        if col is None or col.notna().sum() == 0:
            continue
        if ttype == "binary" and col.dropna().nunique() < 2:
            continue
        task = make_task(col, name, ttype, positive="F" if ttype == "binary" else None)
        sides = {s: np.flatnonzero(task.mask & (split == s)) for s in ("train", "val", "test")}
        if len(sides["train"]) < MIN_TRAIN or len(sides["test"]) < MIN_TEST:
            continue
        if ttype == "binary" and any(len(np.unique(task.y[sides[s]])) < 2 for s in ("train", "test")):
            continue
        tr, va, te = sides["train"], sides["val"], sides["test"]
        probe = fit_linear(task, X[tr], task.y[tr], X[va], task.y[va], c_grid=c_grid, alpha_grid=alpha_grid, seed=seed)
        res = metrics.evaluate(
            ttype, task.y[te], probe.scores(X[te]), patients[te], task.classes or None, n_boot=n_boot, seed=seed
        )
        entry = {
            "type": ttype,
            "n": {s: int(len(v)) for s, v in sides.items()},
            "params": probe.params,
            "metrics": res["metrics"],
        }
        if ttype == "binary":
            entry["classes"], entry["positive"] = task.classes, task.positive
        out[name] = entry
    return out
