"""Section logic that a reader relies on: collapse warnings, metric formatting, best-value marking, ROC fallbacks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrjepa.core.artifact import begin, input_refs
from cxrjepa.core.schema import SchemaError
from cxrjepa.pretrain.layout import RunMetrics
from cxrjepa.probe.layout import FewshotMetric, Metric
from cxrjepa.report.config import ReportConfig
from cxrjepa.report.doc import Figure, Note, Table
from cxrjepa.report.lineage import collect
from cxrjepa.report.sections import probes
from cxrjepa.report.sections.base import Context
from cxrjepa.report.sections.pretraining import collapse_warnings
from tests.report_chain import bare_artifact, training_log


def _metrics(rows):
    return RunMetrics(pd.DataFrame(rows), len(rows), {})


def test_collapse_is_flagged_when_feature_std_and_rank_fall_and_not_otherwise():
    healthy = collapse_warnings("ok", _metrics(training_log(60, 0)))
    assert healthy == []
    collapsed = collapse_warnings("bad", _metrics(training_log(60, 0, collapse=True)))
    assert any("feature std fell" in w for w in collapsed)
    assert any("effective rank fell" in w for w in collapsed)
    dead = collapse_warnings("dead", _metrics([{"step": s, "feat_std": 0.5 if s < 5 else 1e-5} for s in range(10)]))
    assert any("collapsed to a constant" in w for w in dead)
    nan = collapse_warnings("nan", RunMetrics(pd.DataFrame({"step": [0, 1]}), 2, {"loss": 3}))
    assert nan == ["Run nan: loss was NaN or infinite at 3 logged step(s); training diverged there."]


def test_metric_values_are_formatted_with_their_intervals():
    assert probes.fmt_metric(Metric(0.91234, [0.88, 0.9401])) == "0.912 (0.880–0.940)"
    assert probes.fmt_metric(Metric(0.5)) == "0.500"
    assert probes.fmt_metric(Metric(0.5, [None, None])) == "0.500"
    assert probes.fmt_metric(FewshotMetric(mean=0.7, std=0.1)) == "0.700"
    assert probes.fmt_metric(None) == "–"
    assert probes.fmt_metric(Metric(float("nan"))) == "–"
    assert probes.primary_metric(["mae", "r2"]) == "r2"


N = {"train": 20, "val": 5, "test": 10}


def _probe(root, name, tasks, predictions=None, emb=None):
    """A probe artifact as the probe stage lays it out (probe/layout.py), with the given metrics.json tasks."""
    b = begin(root / name, "probe", {"n": name}, input_refs({"embeddings": emb} if emb else {}), force=True)
    (b.path / "metrics.json").write_text(json.dumps({"tasks": tasks}))
    if predictions is not None:
        predictions.to_parquet(b.path / "predictions.parquet", index=False)
    b.contents.update(
        {
            "metrics": "metrics.json",
            "predictions": "predictions.parquet",
            "split": {"path": "split.csv"},
            "tasks": {t: body["type"] for t, body in tasks.items()},
        }
    )
    return b.finish()


def _ctx(paths):
    return Context(collect(paths), ReportConfig())


def test_the_best_value_of_each_metric_is_bold_and_lower_is_better_for_mae(tmp_path):
    def t(auc, mae):
        return {
            "a": {"type": "binary", "n": N, "probes": {"linear": {"metrics": {"auroc": {"value": auc}}}}},
            "age": {"type": "regression", "n": N, "probes": {"linear": {"metrics": {"mae": {"value": mae}}}}},
        }

    bare_artifact(tmp_path / "emb1", "embeddings")
    bare_artifact(tmp_path / "emb2", "embeddings")
    p1 = _probe(tmp_path, "p1", t(0.8, 5.0), emb=tmp_path / "emb1")
    p2 = _probe(tmp_path, "p2", t(0.9, 7.0), emb=tmp_path / "emb2")
    sec = probes.build(_ctx([p1.path, p2.path]))
    tables = [b for b in sec.blocks if isinstance(b, Table) and "Probe" in b.columns and "Test n" in b.columns]
    auroc, mae = tables
    assert [r[0].text for r in auroc.rows] == ["emb1", "emb2"]
    assert [r[3].strong for r in auroc.rows] == [False, True]
    assert [r[3].strong for r in mae.rows] == [True, False]


def test_values_that_look_equal_are_both_marked_best():
    from cxrjepa.report.doc import is_best

    assert is_best(0.66666, 0.6667) and not is_best(0.665, 0.6667) and not is_best(None, 0.5)


def test_roc_is_drawn_from_predictions_when_metrics_have_no_curves(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)
    score = np.clip(y * 0.4 + rng.uniform(0, 0.6, 40), 0, 1)
    preds = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(40)],
            "task": "finding",
            "probe": "linear",
            "split": "test",
            "target": np.where(y == 1, "POS", "NEG"),
            "prediction": "POS",
            "score_POS": score,
            "score_NEG": 1 - score,
        }
    )
    tasks = {
        "finding": {
            "type": "binary",
            "classes": ["NEG", "POS"],
            "positive": "POS",
            "n": N,
            "probes": {"linear": {"metrics": {"auroc": {"value": 0.8, "ci": [0.7, 0.9]}}}},
        }
    }
    p = _probe(tmp_path, "p", tasks, preds)
    sec = probes.build(_ctx([p.path]))
    figs = [b for b in sec.blocks if isinstance(b, Figure)]
    assert [f.name for f in figs] == ["probe-roc-finding"]
    assert "predictions.parquet" in figs[0].caption
    assert figs[0].png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_probe_that_does_not_match_the_schema_is_an_error_naming_the_field_and_the_stage(tmp_path):
    """Not a warning that quietly leaves a section out: a renamed field, a missing file, bare contents."""
    good = {"t": {"type": "binary", "n": N, "probes": {"linear": {"metrics": {"auroc": {"value": 0.7}}}}}}
    renamed = {"t": {"type": "binary", "n": N, "heads": {"linear": {"metrics": {"auroc": {"value": 0.7}}}}}}
    p = _probe(tmp_path, "renamed", renamed)
    with pytest.raises(SchemaError, match=r"'tasks\.t\.probes' is missing; rerun 'cxrjepa probe' with --force"):
        probes.build(_ctx([p.path]))
    p = _probe(tmp_path, "nometrics", good)
    (p.path / "metrics.json").unlink()
    with pytest.raises(SchemaError, match="has no readable metrics.json; rerun 'cxrjepa probe'"):
        probes.build(_ctx([p.path]))
    bare = bare_artifact(tmp_path / "bare", "probe")
    with pytest.raises(SchemaError, match=r"manifest.yaml contents.*'metrics' is missing"):
        probes.build(_ctx([bare.path]))


def test_patient_leakage_across_splits_is_flagged(tmp_path):
    p = _probe(
        tmp_path, "p", {"t": {"type": "binary", "n": N, "probes": {"linear": {"metrics": {"auroc": {"value": 0.7}}}}}}
    )
    pd.DataFrame(
        {"sample_id": ["a", "b", "c"], "patient_key": ["p1", "p1", "p2"], "split": ["train", "test", "val"]}
    ).to_csv(p.path / "split.csv", index=False)
    sec = probes.build(_ctx([p.path]))
    assert any(isinstance(b, Note) and "more than one split" in b.text for b in sec.blocks)


def test_the_summary_repeats_every_warning_and_names_the_sections_left_out(tmp_path):
    from cxrjepa.report.doc import Para, Section
    from cxrjepa.report.sections import summary

    p = _probe(
        tmp_path, "p", {"t": {"type": "binary", "n": N, "probes": {"linear": {"metrics": {"auroc": {"value": 0.7}}}}}}
    )
    shown = Section("pretraining", "Pretraining").add(Para("curves"))
    shown.note("Run x: the feature std fell from 0.5 to 0.01", "warn")
    missing = Section("embeddings", "Embeddings")
    missing.note("Left out: no embeddings artifact")
    sec = summary.build(_ctx([p.path]), [shown, missing])
    warns = [b.text for b in sec.blocks if isinstance(b, Note) and b.level == "warn"]
    assert warns == ["Run x: the feature std fell from 0.5 to 0.01"]
    assert any(isinstance(b, Para) and "Left out for lack of inputs: Embeddings" in b.text for b in sec.blocks)
    table = next(b for b in sec.blocks if isinstance(b, Table))
    assert table.columns[-1] == "t: AUROC" and table.rows[0][-1].text == "0.700"
