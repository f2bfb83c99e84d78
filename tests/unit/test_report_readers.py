"""The report's reads are bounded: thinned logs, streamed tables, sampled rows; never a whole array."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from cxrjepa.pretrain.layout import read_metrics
from cxrjepa.probe.layout import Probe
from cxrjepa.report import readers
from tests.report_chain import bare_artifact


def test_metrics_log_is_thinned_keeping_first_and_last_step_and_counting_nans_over_all_lines(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as fh:
        for s in range(10_000):
            loss = float("nan") if s == 4321 else 1.0 / (s + 1)
            fh.write(json.dumps({"step": s, "loss": loss, "lr": 1e-3}) + "\n")
        fh.write(json.dumps({"event": "checkpoint"}) + "\n")  # not a step record
    m = read_metrics([tmp_path / "metrics.jsonl", tmp_path / "metrics.csv"], max_points=100)
    assert m is not None
    steps = m.frame["step"].to_numpy()
    assert 90 <= len(steps) <= 102
    assert steps[0] == 0 and steps[-1] == 9999
    assert np.all(np.diff(steps) > 0)
    assert m.nonfinite == {"loss": 1}
    assert m.frame.loc[m.frame["step"] == 9999, "loss"].item() == pytest.approx(1e-4)


def test_metrics_fall_back_to_csv(tmp_path):
    pd.DataFrame({"step": range(50), "loss": np.linspace(1, 0.1, 50)}).to_csv(tmp_path / "metrics.csv", index=False)
    m = read_metrics([tmp_path / "metrics.jsonl", tmp_path / "metrics.csv"], max_points=10)
    assert m.frame["step"].iloc[0] == 0 and m.frame["step"].iloc[-1] == 49 and len(m.frame) <= 11
    assert read_metrics([tmp_path / "nothing" / "metrics.jsonl"]) is None


def test_metadata_is_summarised_batch_by_batch_exactly(tmp_path):
    n = 1000
    df = pd.DataFrame(
        {
            "sex": np.where(np.arange(n) % 3 == 0, "F", "M"),
            "view": ["PA"] * 990 + [""] * 5 + [None] * 5,
            "age": np.where(np.arange(n) % 10 == 0, np.nan, np.arange(n) % 100),
        }
    )
    df.to_parquet(tmp_path / "m.parquet", row_group_size=64)
    bins = np.arange(0, 105, 5, dtype=float)
    out = readers.summarize_columns(
        tmp_path / "m.parquet", ["sex", "view", "missing_col"], {"age": bins}, batch_size=97
    )
    assert out["sex"].counts == {"F": 334, "M": 666}
    assert out["view"].counts == {"PA": 990} and out["view"].missing == 10
    assert "missing_col" not in out
    age = out["age"]
    assert age.missing == 100 and age.hist.sum() == 900
    assert age.mean == pytest.approx(np.nanmean(df["age"]))


def test_stratified_sample_covers_every_class_and_is_sorted_and_unique():
    strata = np.asarray(["a"] * 95 + ["b"] * 4 + ["c"])
    rows = readers.sample_rows(100, 6, seed=1, strata=strata)
    assert len(rows) == 6 and len(set(rows)) == 6 and np.all(np.diff(rows) > 0)
    assert set(strata[rows]) == {"a", "b", "c"}
    assert list(readers.sample_rows(5, 10)) == [0, 1, 2, 3, 4]
    assert len(readers.sample_rows(0, 3)) == 0


class CountingArray:
    """Stands in for a zarr array and records every selection made on it."""

    def __init__(self, arr):
        self.arr = arr
        self.shape = arr.shape
        self.dtype = arr.dtype
        self.requests: list[int] = []
        outer = self

        class Orthogonal:
            def __getitem__(self, sel):
                rows = np.asarray(sel[0])
                outer.requests.append(len(rows))
                return outer.arr.oindex[sel]

        self.oindex = Orthogonal()

    def __getitem__(self, sel):  # a plain slice would read everything: the report must never do it
        raise AssertionError("whole-array read")


def test_feature_rows_are_read_as_sampled_blocks_only(tmp_path):
    root = zarr.open_group(str(tmp_path / "f.zarr"), mode="w")
    data = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float16)
    a = root.create_array("features", shape=data.shape, dtype="float16", chunks=(100, 8))
    a[:] = data
    arr = CountingArray(zarr.open_group(str(tmp_path / "f.zarr"), mode="r")["features"])
    rows = readers.sample_rows(1000, 250, seed=3)
    x = readers.read_feature_rows(arr, rows, block=64)
    np.testing.assert_array_equal(x, data[rows].astype(np.float32))
    assert sum(arr.requests) == 250 and max(arr.requests) <= 64


def test_failure_reasons_are_counted_without_file_details(tmp_path):
    lines = [
        {"path": "a/PatientName^X.dcm", "reason": "decode failed: JPEG 2000 stream in a/PatientName^X.dcm"},
        {"path": "b.dcm", "reason": "decode failed: bad marker"},
        {"path": "c", "reason": "constant image"},
    ]
    (tmp_path / "failures.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    counts = readers.count_failures(tmp_path / "failures.jsonl")
    assert counts == {"decode failed": 2, "constant image": 1}


def test_predictions_are_filtered_to_one_task_probe_and_split(tmp_path):
    df = pd.DataFrame(
        {
            "sample_id": list("abcdef"),
            "task": ["t"] * 4 + ["u"] * 2,
            "probe": ["linear", "knn"] * 3,
            "split": ["test", "test", "train", "test", "test", "test"],
            "target": list("010101"),
            "prediction": list("010101"),
            "score_1": np.linspace(0, 1, 6),
        }
    )
    art = bare_artifact(tmp_path / "probe", "probe")
    df.to_parquet(art.path / "predictions.parquet")
    art.manifest["contents"] = {
        "metrics": "metrics.json",
        "predictions": "predictions.parquet",
        "split": {"path": "split.csv"},
        "tasks": {"t": "binary", "u": "binary"},
    }
    got = Probe(art).predictions("t", "knn", "test")
    assert list(got["sample_id"]) == ["b", "d"]
