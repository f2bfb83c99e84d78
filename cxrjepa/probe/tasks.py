"""Probe tasks: labels joined to the embeddings, the task type detected (or set), targets encoded.

Labels come from the embeddings' index (the dataset's joined label columns, or any metadata column such as
``age``) or from a CSV joined on a key (``--labels CSV --key COL``, ``--key CSVCOL=INDEXCOL`` when the names
differ). Identifying columns of the CSV (:mod:`cxrjepa.core.phi`: names, IDs, dates, ...) never become tasks,
and ages above 89 are read as 90. Types: ``binary``, ``multiclass``, ``multilabel`` (list values, or text with ``|`` between labels)
and ``regression``; detection rules are in :func:`detect_type`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrjepa.core.errors import UsageError
from cxrjepa.core.phi import cap_age, identifying, is_age

TYPES = ("binary", "multiclass", "multilabel", "regression")
#: class names read as the negative class of a binary task (so the other one is "positive")
NEGATIVE_NAMES = {"0", "false", "no", "negative", "normal", "none", "healthy", "benign", "absent", "no finding", "neg"}
MAX_CLASSES = 20


@dataclass
class Task:
    """One label column made ready for probing. Rows are embeddings rows; ``mask`` marks labelled ones."""

    name: str
    type: str
    classes: list[str] = field(default_factory=list)
    positive: str | None = None
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) int / float, or (n, k) 0/1 (multilabel)
    mask: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def is_classification(self) -> bool:
        return self.type != "regression"

    def strata(self) -> np.ndarray | None:
        """Per-row class for stratified splits (single-label classification), else ``None``."""
        if self.type in ("binary", "multiclass"):
            s = np.full(len(self.mask), -1, dtype=np.int64)
            s[self.mask] = self.y[self.mask]
            return s
        return None

    def target_text(self, rows: np.ndarray) -> list[str]:
        if self.type == "regression":
            return [f"{v:g}" for v in self.y[rows]]
        if self.type == "multilabel":
            return ["|".join(c for c, on in zip(self.classes, r) if on) for r in self.y[rows]]
        return [self.classes[int(v)] for v in self.y[rows]]

    def prediction_text(self, scores: np.ndarray) -> list[str]:
        if self.type == "regression":
            return [f"{v:g}" for v in scores]
        if self.type == "multilabel":
            return ["|".join(c for c, on in zip(self.classes, r) if on) for r in scores >= 0.5]
        return [self.classes[int(v)] for v in np.argmax(scores, axis=1)]


def _missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _is_listlike(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _class_name(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def detect_type(values: pd.Series, sep: str = "|") -> str:
    """binary / multiclass / multilabel / regression from a column's labelled values.

    Lists or text holding ``sep`` -> multilabel; booleans and two distinct values -> binary; text, or at
    most 20 distinct whole numbers -> multiclass; other numbers -> regression.
    """
    vals = [v for v in values.tolist() if not (not _is_listlike(v) and _missing(v))]
    if not vals:
        raise UsageError(f"The label column '{values.name}' has no values.")
    if any(_is_listlike(v) for v in vals) or any(isinstance(v, str) and sep in v for v in vals):
        return "multilabel"
    uniq = set(_class_name(v) for v in vals)
    if len(uniq) < 2:
        raise UsageError(f"The label column '{values.name}' has a single value; a probe needs at least two.")
    if len(uniq) == 2:
        return "binary"
    numeric = pd.to_numeric(pd.Series(vals), errors="coerce")
    if numeric.notna().all():
        whole = np.all(np.isclose(numeric, np.round(numeric)))
        return "multiclass" if whole and len(uniq) <= MAX_CLASSES else "regression"
    if len(uniq) > MAX_CLASSES * 5:
        raise UsageError(
            f"The label column '{values.name}' has {len(uniq)} distinct text values; set its type with --task."
        )
    return "multiclass"


def _sorted_classes(names: set[str]) -> list[str]:
    try:
        return sorted(names, key=lambda c: float(c))
    except ValueError:
        return sorted(names)


def make_task(
    values: pd.Series, name: str, task_type: str | None = None, positive: str | None = None, sep: str = "|"
) -> Task:
    """Encode a label column (one entry per embeddings row) as a :class:`Task`."""
    task_type = task_type or detect_type(values, sep)
    if task_type not in TYPES:
        raise UsageError(f"Task type for '{name}' must be one of {', '.join(TYPES)}, not '{task_type}'.")
    raw = values.tolist()
    n = len(raw)
    if task_type == "regression":
        y = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        mask = np.isfinite(y)
        if mask.sum() == 0:
            raise UsageError(f"The label column '{name}' has no numeric values for a regression task.")
        return Task(name, task_type, [], None, np.where(mask, y, 0.0), mask)
    if task_type == "multilabel":
        lists: list[list[str] | None] = []
        for v in raw:
            if _is_listlike(v):
                lists.append([_class_name(x) for x in v if not _missing(x)])
            elif _missing(v):
                lists.append(None)
            else:
                lists.append([p.strip() for p in str(v).split(sep) if p.strip()])
        classes = _sorted_classes({c for lst in lists if lst for c in lst})
        if not classes:
            raise UsageError(f"The multi-label column '{name}' names no labels.")
        col = {c: i for i, c in enumerate(classes)}
        Y = np.zeros((n, len(classes)), dtype=np.int64)
        mask = np.array([lst is not None for lst in lists])
        for i, lst in enumerate(lists):
            for c in lst or []:
                Y[i, col[c]] = 1
        return Task(name, task_type, classes, None, Y, mask)
    names = [None if _missing(v) else _class_name(v) for v in raw]
    mask = np.array([v is not None for v in names])
    classes = _sorted_classes({v for v in names if v is not None})
    if len(classes) < 2:
        raise UsageError(f"The label column '{name}' has a single class; a probe needs at least two.")
    if task_type == "binary":
        if len(classes) != 2:
            raise UsageError(f"The label column '{name}' has {len(classes)} classes; a binary task needs exactly two.")
        if positive is not None:
            if str(positive) not in classes:
                raise UsageError(f"The positive class '{positive}' is not a value of '{name}' ({', '.join(classes)}).")
            pos = str(positive)
        else:
            neg = [c for c in classes if c.lower() in NEGATIVE_NAMES]
            pos = [c for c in classes if c not in neg][0] if len(neg) == 1 else classes[1]
        classes = [c for c in classes if c != pos] + [pos]
    col = {c: i for i, c in enumerate(classes)}
    y = np.array([col[v] if v is not None else 0 for v in names], dtype=np.int64)
    return Task(name, task_type, classes, classes[1] if task_type == "binary" else None, y, mask)


def _norm_key(s: pd.Series) -> pd.Series:
    out = s.astype(str).str.strip().str.replace("\\", "/", regex=False)
    return out.str.replace(r"^\./", "", regex=True)


def join_labels(
    index: pd.DataFrame, csv: str | Path, key: str, columns: list[str] | None = None
) -> tuple[pd.DataFrame, dict]:
    """Label columns from ``csv`` aligned with the embeddings ``index`` rows; plus join counts.

    ``key`` is a column present in both, or ``CSVCOL=INDEXCOL``. Paths are compared with forward slashes.
    Without ``columns``, every column but the key and the identifying ones (dropped before anything else
    reads them; their names are in the join counts) is a label column.
    """
    csv = Path(csv)
    if not csv.is_file():
        raise UsageError(f"The labels file '{csv}' does not exist.")
    try:
        table = pd.read_csv(csv)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
        raise UsageError(f"The labels file '{csv}' is not a readable CSV.") from None
    ckey, _, ikey = key.partition("=")
    ikey = ikey or ckey
    if ckey not in table.columns:
        raise UsageError(
            f"The labels file has no column '{ckey}' (its columns: {', '.join(map(str, table.columns[:20]))})."
        )
    if ikey not in index.columns:
        raise UsageError(
            f"The embeddings index has no column '{ikey}' to join labels on (try sample_id or source_path)."
        )
    left_out = [c for c in identifying(table.columns) if c != ckey]
    columns = list(columns or [c for c in table.columns if c != ckey and c not in left_out])
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UsageError(f"The labels file has no column '{missing[0]}'.")
    table = table.drop(columns=left_out)
    for c in columns:
        if is_age(c):
            table[c] = pd.to_numeric(table[c], errors="coerce").map(cap_age)
    keys = _norm_key(table[ckey])
    dup = int(keys.duplicated().sum())
    if dup:
        raise UsageError(f"The labels file has {dup} repeated values of '{ckey}'; each key must appear once.")
    table = table.assign(_key=keys.to_numpy()).set_index("_key")[columns]
    joined = table.reindex(_norm_key(index[ikey]).to_numpy())
    joined.index = index.index
    matched = int(joined.notna().any(axis=1).sum())
    info = {"rows": int(len(table)), "matched_samples": matched, "unmatched_samples": int(len(index) - matched)}
    if left_out:
        info["identifying_columns_left_out"] = [str(c) for c in left_out]
    return joined, info
