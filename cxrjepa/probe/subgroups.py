"""Subgroup analysis: the test metrics by sex, age band, view and site (where the index has them), with
the largest gap between groups per attribute; the attribute with the largest gap is flagged."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrjepa.probe import metrics

AGE_BAND = "age_band"


def age_bands(age: pd.Series, edges: list[float]) -> pd.Series:
    """'0-17', '18-39', ..., '80+' from ages in years (edges are the lower bounds after the first band)."""
    a = pd.to_numeric(age, errors="coerce")
    bounds = [0.0, *sorted(float(e) for e in edges)]
    labels = [f"{int(lo)}-{int(hi) - 1}" for lo, hi in zip(bounds[:-1], bounds[1:])] + [f"{int(bounds[-1])}+"]
    out = pd.Series(pd.NA, index=age.index, dtype=object)
    for i, lo in enumerate(bounds):
        hi = bounds[i + 1] if i + 1 < len(bounds) else np.inf
        out[(a >= lo) & (a < hi)] = labels[i]
    return out


def attribute_columns(index: pd.DataFrame, wanted: list[str], edges: list[float]) -> dict[str, pd.Series]:
    """The subgroup columns present in the index, as text (missing values stay missing)."""
    cols = {}
    for name in wanted:
        if name == AGE_BAND:
            if "age" in index.columns:
                cols[name] = age_bands(index["age"], edges)
        elif name in index.columns:
            s = index[name]
            s = s.where(s.notna() & (s.astype(str).str.strip() != ""))
            cols[name] = s.astype(object).where(s.isna(), s.astype(str))
    return {k: v for k, v in cols.items() if v.notna().sum() > 0}


def evaluate_subgroups(
    task_type, y, scores, patients, columns: dict[str, pd.Series], *, min_n: int, n_boot: int, seed: int
) -> dict:
    """Per attribute: {"groups": {g: {"n", "metrics"}}, "gap": {...}} (groups under ``min_n`` get n only)."""
    primary = metrics.PRIMARY[task_type]
    lower = primary in metrics.LOWER_IS_BETTER
    out = {}
    for attr, col in columns.items():
        vals = col.to_numpy()
        groups = {}
        for g in sorted({v for v in vals if isinstance(v, str)}):
            rows = np.flatnonzero(vals == g)
            entry: dict = {"n": int(len(rows))}
            yy = y[rows]
            enough = len(rows) >= min_n
            if enough and task_type in ("binary", "multiclass"):
                enough = len(np.unique(yy)) >= 2
            if enough:
                entry["metrics"] = metrics.evaluate(
                    task_type, yy, scores[rows], patients[rows], n_boot=n_boot, seed=seed
                )["metrics"]
            groups[g] = entry
        scored = {
            g: e["metrics"][primary]["value"]
            for g, e in groups.items()
            if "metrics" in e and e["metrics"][primary]["value"] is not None
        }
        if len(groups) < 2:
            continue
        res: dict = {"groups": groups}
        if len(scored) >= 2:
            ranked = sorted(scored, key=lambda g: (scored[g], g))  # ties: two different groups all the same
            worst, best = (ranked[-1], ranked[0]) if lower else (ranked[0], ranked[-1])
            res["gap"] = {
                "metric": primary,
                "value": round(abs(scored[best] - scored[worst]), 6),
                "between": [worst, best],
            }
        out[attr] = res
    gaps = {a: r["gap"]["value"] for a, r in out.items() if "gap" in r}
    if gaps:
        out[max(gaps, key=gaps.get)]["flagged"] = True
    return out
