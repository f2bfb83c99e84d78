"""Task types are detected (or set), the positive class is the abnormal one, CSV labels join by key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrjepa.core.errors import UsageError
from cxrjepa.probe.tasks import detect_type, join_labels, make_task


@pytest.mark.parametrize(
    "values, expected",
    [
        (["NORMAL", "PNEUMONIA", None, "NORMAL"], "binary"),
        ([0, 1, 1, 0], "binary"),
        ([True, False], "binary"),
        (["covid", "viral", "bacterial", "normal"], "multiclass"),
        ([0, 1, 2, 3, 2], "multiclass"),
        (["effusion|edema", "edema", ""], "multilabel"),
        ([["a", "b"], ["a"], []], "multilabel"),
        (list(np.linspace(1, 90, 60)), "regression"),
        (list(range(100)), "regression"),
    ],
)
def test_detect_type(values, expected):
    assert detect_type(pd.Series(values, name="x")) == expected


def test_single_valued_column_is_a_usage_error():
    with pytest.raises(UsageError, match="single value"):
        detect_type(pd.Series(["a", "a"], name="x"))


def test_binary_positive_class_is_the_abnormal_one():
    t = make_task(pd.Series(["PNEUMONIA", "NORMAL", None]), "finding")
    assert t.classes == ["NORMAL", "PNEUMONIA"] and t.positive == "PNEUMONIA"
    assert t.y[:2].tolist() == [1, 0] and t.mask.tolist() == [True, True, False]
    t = make_task(pd.Series([1.0, 0.0, np.nan]), "flag")
    assert t.classes == ["0", "1"] and t.positive == "1"
    t = make_task(pd.Series(["benign", "malignant"]), "b", positive="benign")
    assert t.positive == "benign" and t.y.tolist() == [1, 0]


def test_multilabel_encoding_and_missing_rows():
    t = make_task(pd.Series(["b|a", "a", "", None]), "m")
    assert t.type == "multilabel" and t.classes == ["a", "b"]
    assert t.y.tolist() == [[1, 1], [1, 0], [0, 0], [0, 0]]
    assert t.mask.tolist() == [True, True, False, False]  # empty text = unlabelled, like an empty CSV cell


def test_regression_targets():
    t = make_task(pd.Series([10.5, None, 80.0]), "age", "regression")
    assert t.mask.tolist() == [True, False, True] and t.y[2] == 80.0


def test_join_labels_by_path_with_other_column_name(tmp_path):
    index = pd.DataFrame({"sample_id": ["s1", "s2", "s3"], "source_path": ["a/1.dcm", "a/2.dcm", "b/3.dcm"]})
    (tmp_path / "labels.csv").write_text("file,finding\n./a/2.dcm,PNEUMONIA\na\\1.dcm,NORMAL\nzzz.dcm,NORMAL\n")
    table, info = join_labels(index, tmp_path / "labels.csv", "file=source_path", ["finding"])
    assert table["finding"].tolist()[:2] == ["NORMAL", "PNEUMONIA"] and pd.isna(table["finding"].iloc[2])
    assert info == {"rows": 3, "matched_samples": 2, "unmatched_samples": 1}


def test_join_labels_refuses_duplicates_and_unknown_columns(tmp_path):
    index = pd.DataFrame({"sample_id": ["s1"]})
    (tmp_path / "l.csv").write_text("sample_id,y\ns1,1\ns1,0\n")
    with pytest.raises(UsageError, match="repeated"):
        join_labels(index, tmp_path / "l.csv", "sample_id")
    with pytest.raises(UsageError, match="no column 'nope'"):
        join_labels(index, tmp_path / "l.csv", "nope")
