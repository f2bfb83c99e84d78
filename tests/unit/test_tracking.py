"""The tracker set: names, one warning per broken tracker, trackers.json, continuing and catching up."""

from __future__ import annotations

import json

import pytest

from cxrjepa.core.errors import UsageError
from cxrjepa.core.schema import parse
from cxrjepa.probe.layout import ProbeMetrics
from cxrjepa.tracking import (
    STATE_FILE,
    RunInfo,
    Tracker,
    TrackerMissing,
    TrackerSet,
    parse_loggers,
    read_state,
    registry,
)
from cxrjepa.tracking.base import flat_params, metric_name, probe_metrics, redact, row_metrics


class Memory(Tracker):
    """A tracker that keeps what it is given in a class-level store (so a reopened one sees its earlier run)."""

    name = "memory"
    label = "Memory"
    install = "memory-tracker"
    runs: dict[str, dict] = {}
    fail_at: int | None = None
    fail_open: Exception | None = None

    @classmethod
    def where(cls, folder):
        return f"memory of {folder.name}"

    def open(self, previous):
        if self.fail_open is not None:
            raise self.fail_open
        if previous and previous.get("run") in self.runs:
            self.run = previous["run"]
            self.runs[self.run]["status"] = "running"
            return {"run": self.run}, True
        self.run = f"run{len(self.runs)}"
        self.runs[self.run] = {"metrics": [], "files": {}, "tags": {}, "status": "running"}
        return {"run": self.run}, False

    def log_metrics(self, metrics, step):
        if self.fail_at is not None and step >= self.fail_at:
            raise RuntimeError("server said no\nsecond line")
        self.runs[self.run]["metrics"].append((step, dict(metrics)))

    def log_files(self, files):
        self.runs[self.run]["files"].update({k: str(v) for k, v in files.items()})

    def set_tags(self, tags):
        self.runs[self.run]["tags"].update(tags)

    def close(self, status):
        self.runs[self.run]["status"] = status


@pytest.fixture
def memory(monkeypatch):
    monkeypatch.setitem(registry._TRACKERS, "memory", Memory)
    monkeypatch.setattr(Memory, "runs", {})
    monkeypatch.setattr(Memory, "fail_at", None)
    monkeypatch.setattr(Memory, "fail_open", None)
    return Memory


def rows(steps):
    return [{"step": s, "epoch": s / 10, "loss": 1.0 / (s + 1), "grad_norm": None, "lr": 1e-3} for s in steps]


def warnings_in(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def test_logger_names_are_checked_and_csv_is_always_on():
    assert parse_loggers(["csv,mlflow", "wandb", "mlflow"]) == ["mlflow", "wandb"]
    assert parse_loggers(None, tensorboard=True) == ["tensorboard"]
    assert parse_loggers("TensorBoard, csv") == ["tensorboard"]
    with pytest.raises(UsageError) as err:
        parse_loggers(["mlflow,comet"])
    assert (
        err.value.exit_code == 2
        and "comet" in err.value.message
        and "csv, mlflow, tensorboard, wandb" in err.value.message
    )


def test_metric_names_are_the_same_for_every_tracker():
    row = {"step": 4, "loss": 0.5, "grad_norm": None, "stopped": True, "epoch": 1, "note": "x"}
    assert row_metrics("pretrain", row) == {"pretrain/loss": 0.5, "pretrain/epoch": 1.0}
    assert (
        metric_name("probe", "Pleural Effusion (any)", "linear", "auroc") == "probe/Pleural Effusion _any_/linear/auroc"
    )
    assert metric_name("probe", "a/b", "knn", "f1") == "probe/a_b/knn/f1"
    assert flat_params({"model": {"size": "tiny", "grid": [2, 2]}, "seed": 0, "none": None, "empty": {}}) == {
        "model.size": "tiny",
        "model.grid": "[2, 2]",
        "seed": "0",
        "none": "null",
        "empty": "{}",
    }
    assert redact("https://alice:s3cret@mlflow.example:5000/") == "https://***@mlflow.example:5000/"


def test_probe_metrics_carry_values_and_intervals():
    data = {
        "tasks": {
            "finding": {
                "type": "binary",
                "n": {"train": 8, "val": 2, "test": 4},
                "probes": {
                    "linear": {
                        "metrics": {"auroc": {"value": 0.9, "ci": [0.8, 0.97]}, "ap": {"value": 0.7, "ci": None}}
                    },
                    "knn": {"metrics": {"auroc": {"value": None, "ci": [None, None]}}},
                },
            }
        },
        "attributes": {"sex": {"metrics": {"auroc": {"value": 0.6, "ci": [0.5, 0.7]}}}},
    }
    got = probe_metrics(parse(ProbeMetrics, data, what="test", rerun="probe"))
    assert got == {
        "probe/finding/linear/auroc": 0.9,
        "probe/finding/linear/auroc/ci_low": 0.8,
        "probe/finding/linear/auroc/ci_high": 0.97,
        "probe/finding/linear/ap": 0.7,
        "probe/attributes/sex/auroc": 0.6,
        "probe/attributes/sex/auroc/ci_low": 0.5,
        "probe/attributes/sex/auroc/ci_high": 0.7,
    }


def test_a_failing_tracker_is_one_warning_and_the_others_go_on(memory, tmp_path, capsys, monkeypatch):
    class Other(Memory):
        name = "other"
        runs: dict[str, dict] = {}
        fail_at = None

    monkeypatch.setitem(registry._TRACKERS, "other", Other)
    info = RunInfo("pretrain", tmp_path, {"train": {"steps": 8}}, {"cxrjepa.fingerprint": "abc"})
    trackers = TrackerSet.open(["memory", "other"], info)
    Memory.fail_at = 4
    for row in rows([0, 2, 4, 6, 8]):
        trackers.write(row)
    trackers.close()
    trackers.finish({"manifest.yaml": tmp_path / "nothing-here.yaml", "folder": tmp_path}, {"cxrjepa.done": "yes"})
    warned = warnings_in(capsys)
    assert (
        len(warned) == 1
        and "Memory logging failed at step 4" in warned[0]
        and "RuntimeError: server said no" in warned[0]
    )
    assert "second line" not in warned[0]
    mem, other = Memory.runs["run0"], Other.runs["run0"]
    assert [s for s, _ in mem["metrics"]] == [0, 2] and mem["status"] == "failed" and not mem["tags"]
    assert [s for s, _ in other["metrics"]] == [0, 2, 4, 6, 8] and other["status"] == "finished"
    assert other["metrics"][1][1] == {"pretrain/epoch": 0.2, "pretrain/loss": 1 / 3, "pretrain/lr": 1e-3}
    assert other["files"] == {"folder": str(tmp_path)} and other["tags"] == {"cxrjepa.done": "yes"}
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["format"] == "cxrjepa.trackers/1"
    assert state["memory"] == {"run": "run0", "last_step": 2} and state["other"] == {"run": "run0", "last_step": 8}


def test_missing_or_unreachable_trackers_are_one_warning_each(memory, tmp_path, capsys, monkeypatch):
    Memory.fail_open = TrackerMissing("memory")
    trackers = TrackerSet.open(["memory"], RunInfo("pretrain", tmp_path))
    warned = warnings_in(capsys)
    assert len(warned) == 1 and "Memory is not installed (pip install 'memory-tracker')" in warned[0]
    assert trackers.names == [] and not (tmp_path / STATE_FILE).exists()
    trackers.write(rows([0])[0])
    trackers.finish({})
    Memory.fail_open = ConnectionError("the server https://bob:pw@host does not answer")
    TrackerSet.open(["memory"], RunInfo("probe", tmp_path))
    warned = warnings_in(capsys)
    assert len(warned) == 1 and "could not start (ConnectionError" in warned[0] and "pw" not in warned[0]
    assert "metrics.json keeps every metric" in warned[0]


def test_a_resumed_run_continues_its_tracker_run_and_catches_up_once(memory, tmp_path):
    """Killed after step 6 with the tracker off since step 4 and the last checkpoint at 4: the resumed run
    fills in step 4 from the history (metrics.jsonl cut back to the checkpoint) and logs 6, 8 once."""
    log = rows([0, 2, 4, 6])
    info = RunInfo("pretrain", tmp_path)
    trackers = TrackerSet.open(["memory"], info, history=lambda: [r for r in log if r["step"] <= 4])
    Memory.fail_at = 4
    for row in log:
        trackers.write(row)
    trackers.end("killed")
    assert Memory.runs["run0"]["status"] == "failed" and read_state(tmp_path)["memory"]["last_step"] == 2

    Memory.fail_at = None
    history = rows([0, 2, 4])  # what metrics.jsonl holds after the resume cut it back to step 4
    trackers = TrackerSet.open(["memory"], info, history=lambda: history)
    assert trackers.names == ["memory"] and list(Memory.runs) == ["run0"]
    for row in rows([6, 8]):
        trackers.write(row)
    trackers.finish({})
    run = Memory.runs["run0"]
    assert [s for s, _ in run["metrics"]] == [0, 2, 4, 6, 8] and run["status"] == "finished"


def test_a_tracker_that_already_holds_a_step_does_not_get_it_again(memory, tmp_path):
    info = RunInfo("pretrain", tmp_path)
    trackers = TrackerSet.open(["memory"], info)
    for row in rows([0, 2, 4, 6]):
        trackers.write(row)
    trackers.end("killed")
    trackers = TrackerSet.open(["memory"], info, history=lambda: rows([0, 2, 4]))
    for row in rows([6, 8]):  # 6 is recomputed after the resume from step 4
        trackers.write(row)
    trackers.finish({})
    assert [s for s, _ in Memory.runs["run0"]["metrics"]] == [0, 2, 4, 6, 8]


def test_an_unreadable_state_file_starts_new_runs(memory, tmp_path):
    (tmp_path / STATE_FILE).write_text("{not json")
    assert read_state(tmp_path) == {}
    TrackerSet.open(["memory"], RunInfo("pretrain", tmp_path)).end("finished")
    assert read_state(tmp_path)["memory"]["run"] == "run0"
