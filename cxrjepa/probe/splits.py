"""Patient-level train/val/test splits, saved as ``split.csv`` (sample_id, patient_key, split).

Whole patients go to one side: a patient's images are never on two sides. Patients are shuffled with a
seed and divided per stratum (the patient's most frequent class of the first classification task) so each
side sees every class where there are enough patients. A split file (from ``--split`` or a previous run in
the same folder) is reused: its samples keep their side, and new samples of a known patient follow that
patient; only unseen patients are assigned afresh.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrjepa.core.atomic import atomic_write_text
from cxrjepa.core.errors import UsageError

SPLITS = ("train", "val", "test")
COLUMNS = ("sample_id", "patient_key", "split")


def patient_keys(index: pd.DataFrame) -> np.ndarray:
    """Patient per row; a sample without a patient key is its own patient."""
    sid = index["sample_id"].astype(str).to_numpy()
    if "patient_key" not in index.columns:
        return np.array(["s:" + s for s in sid], dtype=object)
    pk = index["patient_key"]
    empty = pk.isna() | (pk.astype(str).str.strip() == "")
    return np.where(empty.to_numpy(), np.array(["s:" + s for s in sid], dtype=object), pk.astype(str).to_numpy())


def _allocate(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """(test, val) patient counts for a stratum of ``n`` patients; at least one each once n >= 3."""
    _, f_val, f_test = fractions
    n_test = int(round(f_test * n))
    n_val = int(round(f_val * n))
    if n >= 3:
        n_test = max(n_test, 1) if f_test > 0 else 0
        n_val = max(n_val, 1) if f_val > 0 else 0
    while n_test + n_val > n - 1 and n > 1:  # keep a patient for training
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_test, n_val


def assign_patients(patients: np.ndarray, strata: np.ndarray | None, fractions, seed: int) -> dict[str, str]:
    """patient -> split for the given patients (one entry per row; strata per row or ``None``)."""
    df = pd.DataFrame({"p": patients, "s": strata if strata is not None else np.zeros(len(patients), dtype=np.int64)})
    # a patient's stratum: its most frequent labelled class (-1 = unlabelled, used only if nothing else)
    df["s2"] = df["s"].where(df["s"] >= 0, np.iinfo(np.int64).max)
    per_patient = df.groupby("p")["s2"].agg(lambda s: s.value_counts().idxmax())
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for _, group in sorted(per_patient.groupby(per_patient), key=lambda kv: kv[0]):
        names = np.array(sorted(group.index.astype(str)))
        rng.shuffle(names)
        n_test, n_val = _allocate(len(names), fractions)
        for i, p in enumerate(names):
            out[p] = "test" if i < n_test else ("val" if i < n_test + n_val else "train")
    return out


def read_split(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"The split file '{path}' does not exist.")
    try:
        df = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
        raise UsageError(f"The split file '{path}' is not a readable CSV.") from None
    if "sample_id" not in df.columns or "split" not in df.columns:
        raise UsageError(f"The split file '{path}' needs the columns sample_id and split.")
    bad = set(df["split"].dropna()) - set(SPLITS)
    if bad:
        raise UsageError(f"The split file '{path}' has split values other than train, val and test.")
    return df


def make_split(
    index: pd.DataFrame,
    strata: np.ndarray | None,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    previous: pd.DataFrame | None = None,
) -> tuple[np.ndarray, dict]:
    """Split per embeddings row (array of 'train'/'val'/'test') and a summary for the manifest."""
    patients = patient_keys(index)
    sid = index["sample_id"].astype(str).to_numpy()
    split = np.full(len(index), "", dtype=object)
    info = {"source": "new", "reused_samples": 0, "new_samples": 0}
    if previous is not None:
        by_sample = dict(zip(previous["sample_id"].astype(str), previous["split"]))
        split[:] = [by_sample.get(s, "") for s in sid]
        known = split != ""
        by_patient: dict[str, str] = {}
        for p, s in zip(patients[known], split[known]):
            if by_patient.setdefault(p, s) != s:
                raise UsageError("The split file puts one patient's images on two sides; fix it or drop --split.")
        follow = ~known & np.array([p in by_patient for p in patients])
        split[follow] = [by_patient[p] for p in patients[follow]]
        info.update(source="file", reused_samples=int(known.sum()))
    todo = split == ""
    if todo.any():
        assigned = assign_patients(patients[todo], None if strata is None else strata[todo], fractions, seed)
        split[todo] = [assigned[p] for p in patients[todo]]
        info["new_samples"] = int(todo.sum())
    info["counts"] = {s: int((split == s).sum()) for s in SPLITS}
    info["patients"] = {s: int(len(set(patients[split == s]))) for s in SPLITS}
    return split.astype(str), info


def write_split(path: str | Path, index: pd.DataFrame, split: np.ndarray) -> None:
    df = pd.DataFrame({"sample_id": index["sample_id"].astype(str), "patient_key": patient_keys(index), "split": split})
    atomic_write_text(path, df.to_csv(index=False))
