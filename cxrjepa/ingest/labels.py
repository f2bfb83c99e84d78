"""Joining a labels CSV into the metadata table (``--labels CSV --key path|filename|sop_uid|study_uid``).

* ``path``: the CSV value is a path relative to the source folder (``source_path``); when it does not
  match as is, leading folders are dropped until it does (a CSV written for a parent folder still works).
* ``filename``: the file name alone (every sample with that name gets the row).
* ``sop_uid`` / ``study_uid``: raw UIDs in the CSV are hashed with the dataset's salt and matched to
  ``sample_id`` / ``study_key``; the raw UIDs are never stored.

Every other column becomes a label column, except identifying ones (:mod:`cxrjepa.core.phi`, the rule every
stage applies): a patient column (``patient_id`` ...) is hashed into ``patient_key`` (so probes split by
patient) and never stored raw; names, IDs, dates, accession numbers, UIDs, institutions, contact details and
free text are dropped. ``sex``, ``age`` and ``view`` fill the table's own columns where
DICOM left them empty; other names that clash with table columns get a ``label_`` prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxrjepa.core.errors import UsageError
from cxrjepa.core.phi import AGE_CAP, is_identifying, normalized
from cxrjepa.ingest.phi import Salt, age_years, coded, sex_code
from cxrjepa.ingest.table import COLUMNS

KEY_COLUMNS = {
    "path": ("path", "file", "filepath", "file_path", "source_path", "image", "image_path", "filename"),
    "filename": ("filename", "file_name", "file", "image", "path"),
    "sop_uid": ("sop_uid", "sopinstanceuid", "sop_instance_uid"),
    "study_uid": ("study_uid", "studyinstanceuid", "study_instance_uid"),
}
PATIENT_COLUMNS = ("patient_id", "patientid", "patient")
FILL_COLUMNS = ("sex", "age", "view")


@dataclass
class LabelsResult:
    meta: pd.DataFrame
    label_columns: list[str]
    stats: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def find_column(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    """The first of ``wanted`` among a CSV's ``columns``, compared by normalized name (case, spaces, ``_``)."""
    by_norm = {normalized(c): c for c in columns}
    for w in wanted:
        if normalized(w) in by_norm:
            return by_norm[normalized(w)]
    return None


def clean_path(value: str) -> str:
    """A path from a CSV as the ledger spells sources: forward slashes, no leading ``./``."""
    v = value.strip().replace("\\", "/")
    while v.startswith("./"):
        v = v[2:]
    return v


def join_labels(
    meta: pd.DataFrame,
    csv: str | Path,
    *,
    key: str,
    column: str,
    patient_column: str,
    salt: Salt,
    not_samples: set[str] | None = None,
    skip_columns: tuple[str, ...] | list[str] = (),
) -> LabelsResult:
    """Join ``csv`` into ``meta``. ``not_samples``: paths of inputs that are in the ledger (rejected,
    skipped, duplicates), so unmatched label rows that belong to them are reported apart; ``skip_columns``
    are not labels (the masks column)."""
    try:
        header = list(pd.read_csv(csv, nrows=0).columns)
    except Exception:
        raise UsageError(f"Cannot read the labels file '{csv}' as CSV.") from None
    if not header:
        raise UsageError(f"The labels file '{csv}' has no columns.")
    key_col = column or find_column(header, KEY_COLUMNS[key]) or header[0]
    if key_col not in header:
        raise UsageError(f"The labels file '{csv}' has no column '{key_col}'.")
    pcol = None
    if patient_column == "auto":
        pcol = find_column(header, PATIENT_COLUMNS)
    elif patient_column and patient_column != "none":
        if patient_column not in header:
            raise UsageError(f"The labels file '{csv}' has no patient column '{patient_column}'.")
        pcol = patient_column
    dtypes = {key_col: str}
    if pcol:
        dtypes[pcol] = str
    labels = pd.read_csv(csv, dtype=dtypes, keep_default_na=True)
    labels = labels[labels[key_col].notna()]
    keys = labels[key_col].astype(str).str.strip()

    # sample row index for each CSV row
    n_rows = len(labels)
    if key == "path":
        paths = meta["source_path"].astype(str).tolist()
        index = {}
        for i, p in enumerate(paths):
            index.setdefault(p, []).append(i)
        matches = []
        for k in keys:
            k = clean_path(k)
            hit = index.get(k)
            parts = k.split("/")
            while hit is None and len(parts) > 1:
                parts = parts[1:]
                hit = index.get("/".join(parts))
            matches.append(hit or [])
    elif key == "filename":
        index = {}
        for i, p in enumerate(meta["source_path"].astype(str)):
            index.setdefault(p.rsplit("/", 1)[-1], []).append(i)
        matches = [index.get(clean_path(k).rsplit("/", 1)[-1], []) for k in keys]
    else:
        target = "sample_id" if key == "sop_uid" else "study_key"
        kind = "sop" if key == "sop_uid" else "study"
        index = {}
        for i, v in enumerate(meta[target].astype(str)):
            if v:
                index.setdefault(v, []).append(i)
        matches = [index.get(salt.key(kind, k), []) for k in keys]

    label_cols_src = [c for c in header if c not in (key_col, pcol, *skip_columns) and not is_identifying(c)]
    dropped = [c for c in header if c not in (key_col, pcol) and is_identifying(c)]
    out = meta.copy()
    assign: dict[int, int] = {}  # sample row -> CSV row (first CSV row wins)
    duplicate_keys = 0
    for csv_row, hits in enumerate(matches):
        for i in hits:
            if i in assign:
                duplicate_keys += 1
                continue
            assign[i] = csv_row
    rows_idx = list(assign.keys())
    csv_idx = [assign[i] for i in rows_idx]
    sub = labels.iloc[csv_idx].reset_index(drop=True)

    stored_names: list[str] = []
    for c in label_cols_src:
        norm = normalized(c)
        values = sub[c]
        if norm in FILL_COLUMNS:
            _fill(out, norm, rows_idx, values)
            continue
        name = c if c not in COLUMNS and not c.startswith("_") else f"label_{c}"
        out[name] = pd.Series(values.to_numpy(), index=rows_idx).reindex(range(len(out))).to_numpy()
        stored_names.append(name)
    if pcol:
        pvals = sub[pcol]
        pk = out["patient_key"].to_numpy(dtype=object).copy()
        for i, v in zip(rows_idx, pvals):
            if isinstance(v, str) and v.strip():
                pk[i] = salt.key("patient", v.strip())
        out["patient_key"] = pk
    matched_rows = sum(1 for m in matches if m)
    ledgered = 0
    if not_samples and key in ("path", "filename"):
        names = not_samples if key == "path" else {p.rsplit("/", 1)[-1] for p in not_samples}
        for k, m in zip(keys, matches):
            k = clean_path(k)
            if not m and (k in names or k.rsplit("/", 1)[-1] in names and key == "filename"):
                ledgered += 1
    stats = {
        "labels_rows": int(n_rows),
        "labels_matched_rows": int(matched_rows),
        "labels_unmatched_rows": int(n_rows - matched_rows),
        "labels_rows_of_ledgered_inputs": int(ledgered),
        "samples_with_labels": int(len(rows_idx)),
        "samples_without_labels": int(len(out) - len(rows_idx)),
    }
    notes = []
    if pcol:
        notes.append(f"labels: column '{pcol}' was hashed into patient_key and not stored")
    if dropped:
        notes.append("labels: identifying columns not stored: " + ", ".join(dropped))
    if duplicate_keys:
        notes.append(f"labels: {duplicate_keys} CSV rows matched samples that already had labels (first row kept)")
    return LabelsResult(out, stored_names, stats, notes)


def _age(v: object) -> float:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return math.nan
    try:
        return float(min(max(float(v), 0.0), AGE_CAP))
    except (TypeError, ValueError):
        return age_years(v)


def _fill(out: pd.DataFrame, name: str, rows_idx: list[int], values: pd.Series) -> None:
    """Fill the table's own ``sex`` / ``age`` / ``view`` where they are empty."""
    col = out[name].to_numpy(dtype="float64" if name == "age" else object).copy()
    for i, v in zip(rows_idx, values):
        if name == "age":
            if math.isnan(col[i]):
                col[i] = _age(v)
        elif not col[i]:
            col[i] = sex_code(v) if name == "sex" else (coded(v) if isinstance(v, str) else "")
    out[name] = col
