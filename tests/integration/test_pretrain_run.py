"""End to end: a tiny I-JEPA run, its export, exact resume, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.config import load_config
from cxrjepa.data.store import write_dataset
from cxrjepa.models.export import load_encoder
from cxrjepa.models.vit import ViTEncoder
from cxrjepa.pretrain import PretrainConfig, PretrainOptions, run_pretrain
from cxrjepa.pretrain.checkpoint import list_checkpoints
from cxrjepa.pretrain.monitors import MetricsLog
from cxrjepa.pretrain.objectives.ijepa import IJEPA
from tests.pretrain_cli import kill_after_first_checkpoint, pretrain_args, pretrain_command

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "model": {"size": "tiny", "patch_size": 8, "image_size": 32, "layers": 2},
    "ijepa": {"predictor": {"depth": 1, "width": 32, "heads": 2}, "masks": {"min_context": 4}},
    "train": {"batch_size": 8, "steps": 8},
    "runtime": {
        "workers": 0,
        "log_every": 2,
        "monitor_every": 4,
        "checkpoint_every": 2,
        "keep_last": 2,
        "monitor_batch": 16,
    },
}


def phantoms(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Chest-like phantoms: a bright body, two dark lungs, sometimes a bright nodule, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        im = np.where(((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.48) ** 2 < 1, 0.7, 0.1)
        for cx in (0.32, 0.68):
            im = np.where(((xx - cx - rng.normal(0, 0.02)) / 0.14) ** 2 + ((yy - 0.48) / 0.3) ** 2 < 1, 0.25, im)
        if rng.random() < 0.5:
            cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.09)
            im = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, 0.9, im)
        out[i] = np.clip((im + rng.normal(0, 0.03, im.shape)) * 255, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "phantoms"
    write_dataset(path, phantoms(48, 40))
    return path


def tiny_config(**sets) -> PretrainConfig:
    return load_config(PretrainConfig, layers=[TINY], overrides=[f"{k}={v}" for k, v in sets.items()])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({f"{f.stem}/{k}": v for k, v in safetensors.torch.load_file(str(f)).items()})
    return out


def assert_same_weights(a: Path, b: Path, tol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= tol, worst


def assert_same_optimizer(a: Path, b: Path, tol: float) -> None:
    oa = torch.load(a / "optimizer.pt", weights_only=True)["state"]
    ob = torch.load(b / "optimizer.pt", weights_only=True)["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        for key in ("exp_avg", "exp_avg_sq"):
            assert float((oa[k][key] - ob[k][key]).abs().max()) <= tol


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "straight"
    run_pretrain(out, tiny_config(), data=dataset)
    return out


def test_tiny_run_trains_checkpoints_and_exports(straight, dataset):
    manifest = yaml.safe_load((straight / "manifest.yaml").read_text())
    assert manifest["kind"] == "run" and manifest["status"] == "complete"
    assert manifest["counts"]["steps"] == 8 and manifest["counts"]["images_seen"] == 64
    assert manifest["inputs"][0]["name"] == "data"
    assert "runtime" not in manifest["params"] and manifest["options"]["runtime"]["workers"] == 0
    rows = MetricsLog.read(straight)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert [r["step"] for r in rows] == [0, 2, 4, 6, 8] and all(np.isfinite(losses))
    last = rows[-1]
    assert last["feat_std"] > 0.3  # no collapse: targets still vary across tokens
    assert last["rankme"] > max(1.5, 0.5 * rows[0]["rankme"])  # nor across images
    for key in ("lr", "wd", "momentum", "grad_norm", "images_per_s", "epoch", "time_s"):
        assert key in last
    assert [s for s, _ in list_checkpoints(straight)] == [6, 8]
    ck = straight / "checkpoints" / "step-000008"
    assert {p.name for p in ck.iterdir()} == {
        "encoder.safetensors",
        "predictor.safetensors",
        "target.safetensors",
        "optimizer.pt",
        "state.json",
    }
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 8 and state["sampler"]["position"] == 64 and state["schedules"]["momentum"] > 0.996
    cfg = yaml.safe_load((straight / "config.yaml").read_text())
    assert cfg["model"]["image_size"] == 32 and cfg["runtime"]["workers"] == 0
    export = json.loads((straight / "encoder" / "config.json").read_text())
    assert export["objective"] == "ijepa" and export["step"] == 8 and export["image_size"] == 32
    assert manifest["contents"]["encoder"]["weights_sha256"] == export["weights_sha256"]
    assert export["normalization"]["divide_by"] == 255.0
    # the loss moves: the predictor learns something in 8 steps on phantoms
    assert losses[-1] < losses[0]


def test_a_complete_run_is_up_to_date(straight, dataset):
    before = (straight / "encoder" / "encoder.safetensors").stat().st_mtime_ns
    art = run_pretrain(straight, tiny_config(), data=dataset)
    assert art.manifest["status"] == "complete"
    assert (straight / "encoder" / "encoder.safetensors").stat().st_mtime_ns == before
    # runtime settings are not science: changing them does not make the run stale
    art = run_pretrain(straight, tiny_config(**{"runtime.log_every": 3}), data=dataset)
    assert (straight / "encoder" / "encoder.safetensors").stat().st_mtime_ns == before


def _snippet(markdown: str) -> str:
    return re.search(r"```python\n(.*?)```", markdown, re.S).group(1)


def test_documented_snippet_loads_the_export_with_the_run_features(straight):
    code = _snippet((ROOT / "docs" / "export.md").read_text()).replace('run = "RUN"', f'run = "{straight}"')
    scope: dict = {}
    exec(compile(code, "docs/export.md", "exec"), scope)
    stored = torch.from_numpy(phantoms(4, 32, seed=9)).unsqueeze(1)
    got = scope["features"](stored)
    # the run's own EMA target encoder, straight from the last checkpoint
    cfg = tiny_config()
    target = ViTEncoder(cfg.model).eval()
    target.load_state_dict(safetensors.torch.load_file(str(straight / "checkpoints/step-000008/target.safetensors")))
    norm = json.loads((straight / "encoder" / "config.json").read_text())["normalization"]
    with torch.no_grad():
        want = target((stored.float() / norm["divide_by"] - norm["mean"]) / norm["std"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    enc = load_encoder(straight)
    with torch.no_grad():
        torch.testing.assert_close(enc.model(enc.normalization.apply(stored)), want, rtol=0, atol=1e-5)


def test_interrupted_run_resumes_to_the_same_weights(straight, dataset, tmp_path, monkeypatch):
    """Crash after step 5 (last checkpoint at 4), rerun: identical weights, optimizer and metrics to 1e-6."""
    out = tmp_path / "crashed"
    original = IJEPA.after_step

    def crash(self, step, total):
        if step == 5:
            raise RuntimeError("simulated crash")
        return original(self, step, total)

    monkeypatch.setattr(IJEPA, "after_step", crash)
    with pytest.raises(RuntimeError):
        run_pretrain(out, tiny_config(), data=dataset)
    monkeypatch.setattr(IJEPA, "after_step", original)
    assert yaml.safe_load((out / "manifest.yaml").read_text())["status"] == "partial"
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    plan = run_pretrain(out, tiny_config(), data=dataset, dry_run=True)
    assert (plan.action, plan.resume_step) == ("resume", 4)
    run_pretrain(out, tiny_config(), data=dataset)
    for step in ("step-000006", "step-000008"):
        assert_same_weights(straight / "checkpoints" / step, out / "checkpoints" / step, 1e-6)
        assert_same_optimizer(straight / "checkpoints" / step, out / "checkpoints" / step, 1e-6)
    assert_same_weights(straight / "encoder", out / "encoder", 1e-6)
    a, b = MetricsLog.read(straight), MetricsLog.read(out)
    assert [r["step"] for r in b] == [r["step"] for r in a]  # each step once, despite the crash
    np.testing.assert_allclose([r.get("loss", 0) for r in b], [r.get("loss", 0) for r in a], atol=1e-6)


def test_max_steps_stops_early_and_a_rerun_continues(straight, dataset, tmp_path):
    out = tmp_path / "early"
    art = run_pretrain(out, tiny_config(), data=dataset, options=PretrainOptions(max_steps=4))
    assert art.manifest["status"] == "complete" and art.contents["stopped_early"]
    assert art.counts["steps"] == 4 and (out / "encoder" / "encoder.safetensors").is_file()
    assert "--max-steps" in " ".join(art.manifest["notes"])
    art = run_pretrain(out, tiny_config(), data=dataset)
    assert art.counts["steps"] == 8 and not art.contents["stopped_early"]
    assert_same_weights(straight / "checkpoints" / "step-000008", out / "checkpoints" / "step-000008", 1e-6)


@pytest.mark.parametrize(
    "runtime",
    [
        {"runtime.grad_accum": 2},
        {"runtime.activation_checkpointing": "true"},
        {"runtime.workers": 1},
        {"runtime.frame_cache": "CACHE"},
    ],
)
def test_runtime_settings_train_the_same_model(straight, dataset, tmp_path, runtime):
    """Accumulation, activation checkpointing, loader workers and the frame cache change how, not what, the
    run computes."""
    out = tmp_path / "variant"
    runtime = {k: (str(tmp_path / "cache") if v == "CACHE" else v) for k, v in runtime.items()}
    run_pretrain(out, tiny_config(**runtime), data=dataset)
    assert_same_weights(straight / "checkpoints" / "step-000008", out / "checkpoints" / "step-000008", 1e-5)


def test_killed_cli_run_resumes_to_the_same_weights(straight, dataset, tmp_path):
    """SIGKILL a CLI run after its first checkpoint; the same command finishes it with identical weights."""
    out = tmp_path / "killed"
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(TINY))
    cmd = pretrain_command(dataset, out, cfg_file, "--quiet")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kill_after_first_checkpoint(cmd, env, out, timeout=120)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_same_weights(straight / "checkpoints" / "step-000008", out / "checkpoints" / "step-000008", 1e-6)
    assert_same_weights(straight / "encoder", out / "encoder", 1e-6)
    steps = [r["step"] for r in MetricsLog.read(out)]
    assert steps == sorted(set(steps))


runner = CliRunner()


def test_cli_dry_run_prints_the_plan_and_writes_nothing(dataset, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "never"
    res = runner.invoke(
        app, pretrain_args(dataset, out, cfg_file, "--nproc", "2", "--dry-run", "--set", "optim.lr=3e-4")
    )
    assert res.exit_code == 0, res.output
    assert "torch.distributed.run --standalone --nproc-per-node=2 --log-dir=" in res.stdout
    assert "-m cxrjepa.cli.worker" in res.stdout
    assert "lr: 0.0003" in res.stdout and "plan: create" in res.stdout  # the resolved config the workers get
    assert not out.exists()
    res = runner.invoke(app, pretrain_args(dataset, out, cfg_file, "--dry-run", "--json"))
    data = json.loads(res.stdout)
    assert data["processes"] == 1 and data["launch"] is None and data["planned_steps"] == 8
    assert data["config"]["train"]["batch_size"] == 8 and not out.exists()


def test_cli_dry_run_plans_gpus_on_a_machine_without_them(dataset, tmp_path):
    """A login node: --gpus 8 --dry-run prints the 8-process torchrun launch and the resolved config, exits 0
    and writes nothing; without --dry-run the same command is refused there."""
    from cxrjepa.core.config import to_dict

    out = tmp_path / "R"
    res = runner.invoke(app, ["pretrain", "--data", str(dataset), "--out", str(out), "--gpus", "8", "--dry-run"])
    assert res.exit_code == 0, res.output
    launch = next(line for line in res.stdout.splitlines() if line.startswith("# launch: "))
    assert "-m torch.distributed.run --standalone --nproc-per-node=8 --log-dir=" in launch
    assert launch.endswith("/launch.json") and "-m cxrjepa.cli.worker" in launch
    assert "# processes: 8 on 8 GPUs" in res.stdout
    assert yaml.safe_load(res.stdout.split("# resolved config:\n", 1)[1]) == to_dict(load_config(PretrainConfig))
    assert not out.exists()
    if not torch.cuda.is_available():
        assert "not checked: CUDA is not available here" in res.stdout
        res = runner.invoke(app, ["pretrain", "--data", str(dataset), "--out", str(out), "--gpus", "8"])
        assert res.exit_code == 2 and "--gpus 0" in res.stderr and not out.exists()


def test_cli_print_config_and_json_result(dataset, tmp_path):
    res = runner.invoke(app, ["pretrain", "--print-config", "--set", "model.size=small"])
    assert res.exit_code == 0 and yaml.safe_load(res.stdout)["model"]["size"] == "small"
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(TINY))
    res = runner.invoke(
        app, pretrain_args(dataset, tmp_path / "r", cfg_file, "--max-steps", "2", "--json", "--quiet", "--tensorboard")
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["kind"] == "run" and summary["counts"]["steps"] == 2
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))


def test_cli_errors_are_one_sentence(dataset, tmp_path):
    res = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(app, ["pretrain", "--data", str(dataset), "--out", str(tmp_path / "r"), "--set", "optim.lrr=1"])
    assert res.exit_code == 2 and "Did you mean 'lr'" in res.stderr
    res = runner.invoke(app, ["pretrain", "--data", str(dataset), "--out", str(tmp_path / "r"), "--gpus", "2"])
    if not torch.cuda.is_available():
        assert res.exit_code == 2 and "--gpus 0" in res.stderr
    res = runner.invoke(app, ["pretrain", "--data", str(dataset), "--out", str(tmp_path / "r"), "--objective", "mae"])
    assert res.exit_code == 2 and "objective" in res.stderr


def test_sigterm_saves_a_checkpoint_and_stops_cleanly(straight, dataset, tmp_path, monkeypatch):
    """Cluster preemption: SIGTERM mid-run checkpoints the current step; the rerun finishes identically."""
    out = tmp_path / "preempted"
    original = IJEPA.after_step

    def preempt(self, step, total):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, total)

    monkeypatch.setattr(IJEPA, "after_step", preempt)
    from cxrjepa.core.errors import CxrjepaError

    with pytest.raises(CxrjepaError, match="Stopped by a signal at step 3"):
        run_pretrain(out, tiny_config(**{"runtime.checkpoint_every": 100}), data=dataset)
    monkeypatch.setattr(IJEPA, "after_step", original)
    assert [s for s, _ in list_checkpoints(out)] == [3]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    run_pretrain(out, tiny_config(), data=dataset)
    assert_same_weights(straight / "checkpoints" / "step-000008", out / "checkpoints" / "step-000008", 1e-6)


def test_collapse_monitor_warns_loudly_and_is_recorded(dataset, tmp_path, capsys):
    """Wiring of the collapse monitor: an unreachable std floor must fire the warning and reach the manifest."""
    art = run_pretrain(tmp_path / "alarm", tiny_config(**{"runtime.collapse_std": 5.0}), data=dataset)
    err = capsys.readouterr().err
    assert "WARNING: representation collapse suspected at step 4" in err
    assert art.counts["collapse_warnings"] == 1  # once per episode, not at every check
    assert any("collapse" in note for note in art.manifest["notes"])


def test_extra_hooks_and_sinks_plug_into_the_metrics_processor(dataset, tmp_path):
    """The loop's extension points (trackers, in-training probes): a hook made from the built trainer adds a
    column computed from the student's encoder at the steps it chooses (which are then logged), and a sink
    receives exactly the rows of metrics.jsonl."""
    from cxrjepa import runtime
    from cxrjepa.core.artifact import begin
    from cxrjepa.data.store import DatasetArtifact
    from cxrjepa.pretrain.trainer import Trainer

    class EncoderNorm:
        def __init__(self, trainer):
            self.trainer, self.steps = trainer, []

        def due(self, step):
            return step % 3 == 0

        def __call__(self, step, row):
            self.steps.append(step)
            encoder = self.trainer.objective.export_encoder()
            row["encoder_norm"] = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in encoder.parameters())))

    class Rows:
        def __init__(self):
            self.rows, self.closed = [], False

        def write(self, row):
            self.rows.append(dict(row))

        def close(self):
            self.closed = True

    made, sink = [], Rows()
    run = tmp_path / "run"
    cfg = tiny_config()
    begin(run, "run", cfg.science())
    info = runtime.init_worker(False)
    try:
        Trainer(
            run,
            cfg,
            DatasetArtifact.open(dataset),
            info,
            hooks=[lambda t: made.append(EncoderNorm(t)) or made[-1]],
            sinks=[sink],
        ).fit()
    finally:
        runtime.shutdown(info)
    rows = MetricsLog.read(run)
    assert sink.rows == rows and sink.closed
    assert [r["step"] for r in rows] == [0, 2, 3, 4, 6, 8]  # log_every 2, the last step, and the hook's 3 and 6
    assert made[0].steps == [3, 6] and [r["step"] for r in rows if "encoder_norm" in r] == [3, 6]
    assert rows[2]["encoder_norm"] != rows[4]["encoder_norm"]  # measured on the training encoder, as it moves
