"""Pretraining never leaves a finished run demoted (issue 16, item 11) and never starts a run that cannot fit
in memory (item 12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.artifact import open_artifact, read_manifest
from cxrjepa.core.config import load_config
from cxrjepa.core.errors import EXIT_USAGE
from cxrjepa.data.store import write_dataset
from cxrjepa.embed.api import EmbedConfig, EmbedOptions, run_embed
from cxrjepa.pretrain import PretrainConfig, PretrainOptions, run_pretrain
from cxrjepa.pretrain.checkpoint import list_checkpoints

runner = CliRunner()
GB = 2**30

TINY = {
    "model": {"size": "tiny", "patch_size": 8, "image_size": 32, "layers": 2},
    "ijepa": {"predictor": {"depth": 1, "width": 32, "heads": 2}, "masks": {"min_context": 4}},
    "train": {"batch_size": 8, "steps": 6},
    "runtime": {
        "workers": 0,
        "log_every": 2,
        "monitor_every": 4,
        "checkpoint_every": 2,
        "keep_last": 2,
        "monitor_batch": 16,
    },
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "ds"
    rng = np.random.default_rng(0)
    write_dataset(path, rng.integers(0, 255, (24, 40, 40), dtype=np.uint8))
    return path


def tiny() -> PretrainConfig:
    return load_config(PretrainConfig, layers=[TINY])


@pytest.mark.parametrize("failure", [RuntimeError("the continuation crashed"), KeyboardInterrupt()])
def test_a_failed_continuation_leaves_a_finished_run_complete(dataset, tmp_path, monkeypatch, failure):
    out = tmp_path / "run"
    art = run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(gpus=0, max_steps=2))
    assert art.manifest["status"] == "complete" and art.contents["stopped_early"]
    before = read_manifest(out)

    import cxrjepa.pretrain.api as api

    def crash(self):
        assert read_manifest(self.run)["status"] == "partial"  # the continuation had started
        raise failure

    monkeypatch.setattr(api.Trainer, "fit", crash)
    with pytest.raises(type(failure)):
        run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(gpus=0, max_steps=4))
    assert read_manifest(out) == before  # still the complete run stopped early at step 2
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert open_artifact(out, "run").counts["steps"] == 2
    emb = run_embed(tmp_path / "emb", EmbedConfig(), encoder=out, data=dataset, options=EmbedOptions(device="cpu"))
    assert emb.manifest["status"] == "complete" and emb.counts["samples"] == 24


def test_a_continuation_that_saved_a_checkpoint_stays_resumable(dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(gpus=0, max_steps=2))
    from cxrjepa.pretrain.checkpoint import Checkpointer

    real = Checkpointer.save

    def crash_after_checkpoint(self, step):
        folder = real(self, step)
        if step == 4:
            raise RuntimeError("crashed after step 4's checkpoint")
        return folder

    monkeypatch.setattr(Checkpointer, "save", crash_after_checkpoint)
    with pytest.raises(RuntimeError):
        run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(gpus=0))
    assert read_manifest(out)["status"] == "partial"  # it moved on: a rerun resumes from step 4
    monkeypatch.undo()
    art = run_pretrain(out, tiny(), data=dataset, options=PretrainOptions(gpus=0))
    assert art.manifest["status"] == "complete" and art.counts["steps"] == 6


def _refuse_building(monkeypatch):
    import cxrjepa.models.vit as vit
    import cxrjepa.pretrain.trainer as trainer

    def boom(*a, **k):
        raise AssertionError("a model was built before the memory check")

    monkeypatch.setattr(trainer, "build_objective", boom)
    monkeypatch.setattr(vit, "create_vit", boom)
    monkeypatch.setattr(vit.ViTEncoder, "__init__", boom)


def test_defaults_that_cannot_fit_are_refused_before_any_model_is_built(dataset, tmp_path, monkeypatch):
    """The issue's call: SALT with no config (ViT-B/16, 224 px, batch 256) on a 24 GB CPU machine."""
    import cxrjepa.core.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu", index=0: 22 * GB)
    _refuse_building(monkeypatch)
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "pretrain",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--objective",
            "salt",
            "--teacher",
            "random:small",
            "--max-steps",
            "5",
            "--gpus",
            "0",
        ],
    )
    assert res.exit_code == EXIT_USAGE, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "Unexpected" not in err
    assert "needs about" in err and "22.0 GB is available" in err
    assert "--set runtime.grad_accum=" in err and "recipes/cxr-small-cpu.yaml" in err
    assert "runtime.memory_check=false" in err
    assert not out.exists()  # nothing written

    # the setting it names does fit
    accum = int(err.split("--set runtime.grad_accum=")[1].split()[0])
    from cxrjepa.pretrain.memory import estimate_pretrain

    cfg = load_config(PretrainConfig, flags={"objective": "salt"})
    est = estimate_pretrain(
        cfg, device="cpu", world=1, procs_per_node=1, frames=24, teacher="random:small", grad_accum=accum
    )
    assert est.total <= memory.MARGIN * 22 * GB
    full = estimate_pretrain(cfg, device="cpu", world=1, procs_per_node=1, frames=24, teacher="random:small")
    assert full.total > 30 * GB


def test_the_memory_check_can_be_turned_off(dataset, tmp_path, monkeypatch):
    import cxrjepa.core.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu", index=0: 1 * GB)
    res = runner.invoke(app, ["pretrain", "--data", str(dataset), "--out", str(tmp_path / "run"), "--gpus", "0"])
    assert res.exit_code == EXIT_USAGE and "needs about" in res.stderr
    cfg = load_config(PretrainConfig, layers=[TINY], overrides=["runtime.memory_check=false", "train.steps=1"])
    art = run_pretrain(tmp_path / "run", cfg, data=dataset, options=PretrainOptions(gpus=0))
    assert art.manifest["status"] == "complete"
