"""Experiment trackers on real tiny runs, offline: MLflow read back with its own client, W&B's offline run
folder, TensorBoard's events, resume after a kill, broken trackers that never cost the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.config import load_config
from cxrjepa.core.fingerprint import hash_file
from cxrjepa.data.store import write_dataset
from cxrjepa.pretrain import PretrainConfig, PretrainOptions, run_pretrain
from cxrjepa.pretrain.monitors import MetricsLog
from cxrjepa.tracking import STATE_FILE, read_state
from cxrjepa.tracking.base import flat_params, row_metrics
from tests.integration.test_pretrain_run import phantoms
from tests.pretrain_cli import kill_after_first_checkpoint, pretrain_command

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "model": {"size": "tiny", "patch_size": 8, "image_size": 32, "layers": 2},
    "ijepa": {"predictor": {"depth": 1, "width": 32, "heads": 2}, "masks": {"min_context": 4}},
    "train": {"batch_size": 8, "steps": 6},
    "runtime": {
        "workers": 0,
        "log_every": 2,
        "monitor_every": 2,
        "checkpoint_every": 2,
        "keep_last": 2,
        "monitor_batch": 8,
    },
}
runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "phantoms"
    write_dataset(path, phantoms(24, 40))
    return path


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """No tracking server, no W&B account, no network: a SQLite MLflow store and W&B's files under tmp; the
    working directory is an empty folder (nothing may land there: ``tmp_path / "cwd"``)."""
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    for key in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_DIR", "WANDB_RESUME", "WANDB_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: any call would fail
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home" / key.lower()))
    return store


def tiny(**sets) -> PretrainConfig:
    return load_config(PretrainConfig, layers=[TINY], overrides=[f"{k}={v}" for k, v in sets.items()])


def client() -> MlflowClient:
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def only_run(experiment: str = "cxrjepa"):
    exp = client().get_experiment_by_name(experiment)
    runs = client().search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client().get_metric_history(run_id, key))


def assert_history_is_the_metrics_log(run_id: str, out: Path, atol: float = 0.0) -> None:
    """Every numeric column of every metrics.jsonl row is in MLflow at its step, once."""
    rows = MetricsLog.read(out)
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row_metrics("pretrain", row).items():
            expected.setdefault(key, []).append((int(row["step"]), value))
    assert "pretrain/loss" in expected and "pretrain/rankme" in expected
    keys = set(client().get_run(run_id).data.metrics)
    assert keys == set(expected)
    for key, want in expected.items():
        got = history(run_id, key)
        assert [s for s, _ in got] == [s for s, _ in want], key
        if key.split("/")[-1] not in ("images_per_s", "time_s", "mfu"):  # timings differ after a resume
            np.testing.assert_allclose([v for _, v in got], [v for _, v in want], atol=atol, rtol=0, err_msg=key)


def test_mlflow_and_tensorboard_hold_the_config_every_row_and_the_artifacts(dataset, offline, tmp_path):
    out = tmp_path / "runs" / "run"
    art = run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(loggers=["mlflow", "tensorboard"]))
    run = only_run()
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    # the resolved config, flattened
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert run.data.params == flat_params(config)
    assert run.data.params["model.size"] == "tiny" and run.data.params["train.steps"] == "6"
    # every row of metrics.jsonl at its step
    assert [r["step"] for r in MetricsLog.read(out)] == [0, 2, 4, 6]
    assert_history_is_the_metrics_log(run.info.run_id, out)
    # fingerprints
    tags = run.data.tags
    assert (
        tags["cxrjepa.fingerprint"] == art.fingerprint
        and tags["cxrjepa.content_fingerprint"] == art.content_fingerprint
    )
    assert tags["cxrjepa.dataset_fingerprint"] == art.manifest["inputs"][0]["fingerprint"]
    assert tags["cxrjepa.stage"] == "pretrain" and tags["cxrjepa.objective"] == "ijepa"
    # a SQLite store keeps its artifacts beside its database, not in the working directory
    assert run.info.artifact_uri.startswith((offline / "mlartifacts").as_uri())
    assert list((tmp_path / "cwd").iterdir()) == []
    # the manifest, the config and the encoder, byte for byte
    files = {a.path for a in client().list_artifacts(run.info.run_id)}
    assert {"manifest.yaml", "config.yaml", "encoder"} <= files
    local = Path(client().download_artifacts(run.info.run_id, "", str(tmp_path / "download")))
    assert yaml.safe_load((local / "manifest.yaml").read_text()) == art.manifest
    assert hash_file(local / "encoder" / "encoder.safetensors") == art.contents["encoder"]["weights_sha256"]
    assert json.loads((local / "encoder" / "config.json").read_text()) == json.loads(
        (out / "encoder" / "config.json").read_text()
    )
    # the run folder remembers the tracker run; the manifest what was asked for
    state = read_state(out)
    assert state["mlflow"]["run_id"] == run.info.run_id and state["mlflow"]["last_step"] == 6
    assert (
        art.manifest["options"]["loggers"] == ["mlflow", "tensorboard"] and art.contents["tensorboard"] == "tensorboard"
    )
    # TensorBoard: the same names at the same steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert "pretrain/loss" in events.Tags()["scalars"] and "pretrain/rankme" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("pretrain/loss")] == [2, 4, 6]
    np.testing.assert_allclose(
        [e.value for e in events.Scalars("pretrain/loss")],
        [r["loss"] for r in MetricsLog.read(out) if "loss" in r],
        rtol=1e-6,
    )


def test_a_killed_run_resumes_the_same_mlflow_run(dataset, offline, tmp_path):
    """SIGKILL a CLI run after its first checkpoint; the same command finishes it in the same MLflow run,
    whose history is metrics.jsonl's, each step once."""
    out = tmp_path / "killed"
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(TINY))
    cmd = pretrain_command(dataset, out, cfg_file, "--quiet", "--logger", "mlflow")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kill_after_first_checkpoint(cmd, env, out, timeout=180)
    assert yaml.safe_load((out / "manifest.yaml").read_text())["status"] == "partial"
    before = only_run()
    assert before.info.status == "RUNNING" and history(before.info.run_id, "pretrain/feat_std")  # it had begun
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = only_run()
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    assert [s for s, _ in history(after.info.run_id, "pretrain/loss")] == [2, 4, 6]
    assert_history_is_the_metrics_log(after.info.run_id, out, atol=1e-6)
    assert {a.path for a in client().list_artifacts(after.info.run_id)} >= {"manifest.yaml", "encoder"}
    assert list((tmp_path / "cwd").iterdir()) == []


def wandb_history(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> metrics of the history records in an offline W&B run folder, read with W&B's own reader."""
    res = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out: dict[int, dict[str, float]] = {}
    for line in res.stdout.splitlines():
        record = json.loads(line)
        if record.get("type") == "history":
            items = record["history"]["item"]
            out[int(record["history"]["step"]["num"])] = {k: v for k, v in items.items() if not k.startswith("_")}
    return out


def test_wandb_offline_writes_its_run_folder_without_network_and_a_resume_keeps_the_id(dataset, offline, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(loggers=["wandb"], max_steps=4))
    run_id = read_state(out)["wandb"]["id"]
    assert read_state(out)["wandb"]["mode"] == "offline"
    (first,) = (out / "wandb").glob(f"offline-run-*-{run_id}")
    logged = wandb_history(first)
    assert sorted(logged) == [0, 2, 4]
    rows = {r["step"]: row_metrics("pretrain", r) for r in MetricsLog.read(out)}
    for step, metrics in logged.items():
        assert set(metrics) == set(rows[step])
        np.testing.assert_allclose([metrics[k] for k in sorted(metrics)], [rows[step][k] for k in sorted(metrics)])
    saved = first / "files" / "manifest.yaml"  # saved with the run for `wandb sync`, as it was then
    assert not saved.is_symlink() and yaml.safe_load(saved.read_text())["counts"]["steps"] == 4
    # the continued run (no more --max-steps) logs into the same W&B run id, from step 6 on
    run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(loggers=["wandb"]))
    assert read_state(out)["wandb"]["id"] == run_id
    folders = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 2 and sorted(wandb_history(folders[1])) == [6]
    # an up-to-date run asked for a tracker that never saw it logs its whole history there
    run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(loggers=["wandb", "mlflow"]))
    assert len(sorted((out / "wandb").glob("offline-run-*"))) == 2  # W&B already had everything
    assert_history_is_the_metrics_log(only_run().info.run_id, out)


def test_missing_or_unreachable_trackers_are_one_warning_and_the_run_completes(
    dataset, offline, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails as if it were not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "missing"
    art = run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(loggers=["mlflow", "wandb"], max_steps=2))
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 2, warned
    assert "MLflow is not installed (pip install 'cxrjepa[mlflow]')" in warned[0]
    assert "W&B is not installed (pip install 'cxrjepa[wandb]')" in warned[1]
    assert art.manifest["status"] == "complete" and [r["step"] for r in MetricsLog.read(out)] == [0, 2]
    assert not (out / STATE_FILE).exists() and not (out / "wandb").exists()

    monkeypatch.delitem(sys.modules, "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:9")  # a server that is down
    out = tmp_path / "unreachable"
    art = run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(loggers=["mlflow"], max_steps=2))
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "MLflow could not start" in warned[0] and "does not answer" in warned[0]
    assert "secret" not in warned[0]
    assert art.manifest["status"] == "complete" and [r["step"] for r in MetricsLog.read(out)] == [0, 2]


def test_a_tracker_failing_mid_run_is_switched_off_and_a_rerun_catches_it_up(
    dataset, offline, tmp_path, monkeypatch, capsys
):
    from cxrjepa.tracking.mlflow import MlflowTracker

    original = MlflowTracker.log_metrics

    def flaky(self, metrics, step):
        if step >= 4:
            raise ConnectionError("the server went away")
        return original(self, metrics, step)

    monkeypatch.setattr(MlflowTracker, "log_metrics", flaky)
    out = tmp_path / "flaky"
    art = run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(loggers=["mlflow"]))
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "MLflow logging failed at step 4" in warned[0]
    assert art.manifest["status"] == "complete" and [r["step"] for r in MetricsLog.read(out)] == [0, 2, 4, 6]
    run = only_run()
    assert run.info.status == "FAILED" and [s for s, _ in history(run.info.run_id, "pretrain/feat_std")] == [0, 2]
    monkeypatch.setattr(MlflowTracker, "log_metrics", original)
    run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(loggers=["mlflow"]))  # up to date: catches up
    run = only_run()
    assert run.info.status == "FINISHED"
    assert_history_is_the_metrics_log(run.info.run_id, out)


def test_only_rank_zero_logs_and_the_launch_spec_carries_the_loggers(dataset, offline, tmp_path):
    out = tmp_path / "two"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)}
    env.pop("OMP_NUM_THREADS", None)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "train": {"batch_size": 8, "steps": 4}}))
    res = subprocess.run(
        pretrain_command(dataset, out, cfg_file, "--nproc", "2", "--logger", "mlflow", "--quiet"),
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stderr
    run = only_run()  # one MLflow run, not one per process
    assert run.info.status == "FINISHED"
    assert_history_is_the_metrics_log(run.info.run_id, out)


def test_probe_logs_its_metrics_with_intervals_to_the_default_store_next_to_it(tmp_path, monkeypatch):
    from cxrjepa.data.store import default_meta
    from cxrjepa.embed.api import EmbedConfig, run_embed

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    rng = np.random.default_rng(0)
    n = 80
    finding = rng.random(n) < 0.4
    images = rng.integers(0, 120, (n, 32, 32), dtype=np.uint8)
    images[finding, 8:24, 8:24] = 250
    meta = default_meta(n)
    meta["patient_key"] = [f"p{i // 2:04d}" for i in range(n)]
    meta["finding"] = np.where(finding, "PNEUMONIA", "NORMAL")
    meta["sex"] = np.where(rng.random(n) < 0.5, "F", "M")
    chain = tmp_path / "chain"
    write_dataset(chain / "ds", images, meta, label_columns=["finding"])
    emb = run_embed(chain / "emb", EmbedConfig(), encoder="random:tiny", data=chain / "ds")
    res = runner.invoke(
        app,
        [
            "probe",
            "--embeddings",
            str(emb.path),
            "--out",
            str(chain / "probe"),
            "--quiet",
            "--fewshot",
            "none",
            "--bootstrap",
            "50",
            "--set",
            "subgroups=[]",
            "--logger",
            "mlflow",
        ],
    )
    assert res.exit_code == 0, res.output
    # the default store: SQLite next to the artifact, artifacts beside it
    assert (chain / "mlflow.db").is_file() and (chain / "mlartifacts").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{chain / 'mlflow.db'}")
    run = only_run()
    metrics = json.loads((chain / "probe" / "metrics.json").read_text())
    auroc = metrics["tasks"]["finding"]["probes"]["linear"]["metrics"]["auroc"]
    logged = run.data.metrics
    assert logged["probe/finding/linear/auroc"] == pytest.approx(auroc["value"])
    assert logged["probe/finding/linear/auroc/ci_low"] == pytest.approx(auroc["ci"][0])
    assert logged["probe/finding/linear/auroc/ci_high"] == pytest.approx(auroc["ci"][1])
    assert "probe/finding/knn/auroc" in logged and any(k.startswith("probe/attributes/sex/") for k in logged)
    assert run.data.params["bootstrap"] == "50" and run.data.tags["cxrjepa.stage"] == "probe"
    assert run.data.tags["cxrjepa.dataset_fingerprint"] == emb.manifest["inputs"][0]["fingerprint"]
    assert {a.path for a in client().list_artifacts(run.info.run_id)} == {"manifest.yaml", "metrics.json"}
    # a rerun is up to date and logs nothing twice
    res = runner.invoke(
        app,
        [
            "probe",
            "--embeddings",
            str(emb.path),
            "--out",
            str(chain / "probe"),
            "--quiet",
            "--fewshot",
            "none",
            "--bootstrap",
            "50",
            "--set",
            "subgroups=[]",
            "--logger",
            "mlflow",
        ],
    )
    assert res.exit_code == 0 and len(client().get_metric_history(run.info.run_id, "probe/finding/linear/auroc")) == 1
    assert only_run().info.run_id == run.info.run_id


def test_dry_run_names_the_loggers_and_where_they_write(dataset, offline, tmp_path):
    out = tmp_path / "never"
    res = runner.invoke(
        app,
        [
            "pretrain",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--gpus",
            "0",
            "--dry-run",
            "--logger",
            "csv,mlflow",
            "--logger",
            "wandb",
            "--tensorboard",
        ],
    )
    assert res.exit_code == 0, res.output
    line = next(x for x in res.stdout.splitlines() if x.startswith("# loggers:"))
    assert f"mlflow ({os.environ['MLFLOW_TRACKING_URI']})" in line and f"wandb ({out / 'wandb'}, offline)" in line
    assert f"tensorboard ({out / 'tensorboard'})" in line and not out.exists()
    res = runner.invoke(app, ["pretrain", "--data", str(dataset), "--out", str(out), "--logger", "comet"])
    assert res.exit_code == 2 and "Unknown logger 'comet'" in res.stderr and not out.exists()
