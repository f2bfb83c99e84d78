"""Patient-level splits: no patient on two sides, stratified, seeded, reusable from a file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrjepa.core.errors import UsageError
from cxrjepa.probe.splits import make_split, patient_keys, read_split, write_split


def _index(n_patients=120, seed=0):
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 5, n_patients)  # 1-4 images per patient
    pk = np.repeat([f"p{i:04d}" for i in range(n_patients)], per)
    sid = [f"{i:016x}" for i in range(len(pk))]
    label = np.repeat(rng.integers(0, 2, n_patients), per)
    return pd.DataFrame({"sample_id": sid, "patient_key": pk}), label


def test_no_patient_on_two_sides_and_fractions_close():
    index, label = _index()
    split, info = make_split(index, label, (0.7, 0.1, 0.2), seed=0)
    per_patient = pd.DataFrame({"p": index["patient_key"], "s": split}).groupby("p")["s"].nunique()
    assert per_patient.max() == 1
    n_pat = index["patient_key"].nunique()
    assert info["patients"]["test"] == pytest.approx(0.2 * n_pat, abs=2)
    assert info["patients"]["val"] == pytest.approx(0.1 * n_pat, abs=2)
    # stratified: both classes on every side
    for side in ("train", "val", "test"):
        assert set(label[split == side]) == {0, 1}


def test_split_is_seeded():
    index, label = _index()
    a, _ = make_split(index, label, (0.7, 0.1, 0.2), seed=1)
    b, _ = make_split(index, label, (0.7, 0.1, 0.2), seed=1)
    c, _ = make_split(index, label, (0.7, 0.1, 0.2), seed=2)
    assert (a == b).all() and not (a == c).all()


def test_missing_patient_key_means_one_patient_per_sample():
    index = pd.DataFrame({"sample_id": ["a", "b", "c"], "patient_key": ["p1", None, ""]})
    keys = patient_keys(index)
    assert keys[0] == "p1" and len(set(keys)) == 3


def test_split_file_is_reused_and_new_samples_follow_their_patient(tmp_path):
    index, label = _index(60)
    split, _ = make_split(index, label, (0.7, 0.1, 0.2), seed=0)
    write_split(tmp_path / "split.csv", index, split)
    prev = read_split(tmp_path / "split.csv")
    assert list(prev.columns) == ["sample_id", "patient_key", "split"]
    # a new image of an existing patient, and a new patient
    p = index["patient_key"].iloc[0]
    more = pd.concat(
        [index, pd.DataFrame({"sample_id": ["new1", "new2"], "patient_key": [p, "pnew"]})], ignore_index=True
    )
    again, info = make_split(more, None, (0.7, 0.1, 0.2), seed=5, previous=prev)
    assert (again[: len(index)] == split).all()
    assert again[len(index)] == split[0]
    assert info["source"] == "file" and info["reused_samples"] == len(index) and info["new_samples"] == 1


def test_split_file_with_a_patient_on_two_sides_is_refused(tmp_path):
    index = pd.DataFrame({"sample_id": ["a", "b"], "patient_key": ["p", "p"]})
    prev = pd.DataFrame({"sample_id": ["a", "b"], "split": ["train", "test"]})
    with pytest.raises(UsageError, match="two sides"):
        make_split(index, None, (0.7, 0.1, 0.2), previous=prev)


def test_split_file_with_bad_values_is_refused(tmp_path):
    (tmp_path / "s.csv").write_text("sample_id,split\na,holdout\n")
    with pytest.raises(UsageError, match="train, val and test"):
        read_split(tmp_path / "s.csv")
