"""End to end: lejepa and jepa-sigreg runs train, export their encoder, hold no teacher, resume exactly after a
kill, train the same weights on 2 gloo processes as on 1, and go through ``cxrjepa export``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import yaml

from cxrjepa.core.config import load_config
from cxrjepa.data.store import DatasetArtifact, default_meta, write_dataset
from cxrjepa.embed.api import EmbedConfig, EmbedOptions, run_embed
from cxrjepa.embed.store import Embeddings
from cxrjepa.export.api import ExportConfig, run_export
from cxrjepa.models.export import load_encoder
from cxrjepa.pretrain import PretrainConfig, PretrainOptions, run_pretrain
from cxrjepa.pretrain.monitors import MetricsLog
from cxrjepa.pretrain.objectives import build_objective
from tests.integration.test_pretrain_run import assert_same_optimizer, assert_same_weights, phantoms
from tests.pretrain_cli import kill_after_first_checkpoint, pretrain_command

ROOT = Path(__file__).resolve().parents[2]

CONFIG = {
    "model": {"size": "tiny", "patch_size": 8, "image_size": 32, "layers": 2},
    "lejepa": {"views": {"local_views": 2}, "projector": {"hidden": 64, "out": 16}},
    "jepa_sigreg": {"predictor": {"depth": 1, "width": 32, "heads": 2}, "masks": {"min_context": 4}},
    "sigreg": {"slices": 32},
    "train": {"batch_size": 8, "steps": 6},
    "runtime": {
        "workers": 0,
        "log_every": 2,
        "monitor_every": 2,
        "checkpoint_every": 2,
        "keep_last": 3,
        "monitor_batch": 8,
    },
}
#: the trained module besides the encoder
SECOND = {"lejepa": "projector", "jepa-sigreg": "predictor"}
TERMS = {"lejepa": "invariance", "jepa-sigreg": "prediction"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "phantoms"
    write_dataset(path, phantoms(32, 40))
    return path


def config_file(folder: Path, objective: str) -> Path:
    path = folder / f"{objective}.yaml"
    path.write_text(yaml.safe_dump({"objective": objective, **CONFIG}))
    return path


@pytest.fixture(scope="module", params=["lejepa", "jepa-sigreg"])
def single(request, dataset, tmp_path_factory):
    """The one-process reference run of each objective: (objective, config file, run)."""
    tmp = tmp_path_factory.mktemp(request.param)
    cfg_file = config_file(tmp, request.param)
    run = tmp / "single"
    run_pretrain(
        run,
        load_config(PretrainConfig, files=[cfg_file]),
        data=dataset,
        options=PretrainOptions(loggers=["tensorboard"]),
    )
    return request.param, cfg_file, run


def env(threads: bool = True) -> dict:
    """The CLI's environment: this process's (its thread count too: float sums depend on it) or, for torchrun
    launches (which set their workers' threads), without OMP_NUM_THREADS."""
    out = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not threads:
        out.pop("OMP_NUM_THREADS", None)
    return out


def test_run_trains_one_encoder_exports_it_and_holds_no_teacher(single):
    objective, cfg_file, run = single
    manifest = yaml.safe_load((run / "manifest.yaml").read_text())
    assert manifest["status"] == "complete" and manifest["params"]["objective"] == objective
    ck = run / "checkpoints" / "step-000006"
    # one encoder and its head, their optimizer state: no EMA target, no teacher
    assert {p.name for p in ck.iterdir()} == {
        "encoder.safetensors",
        f"{SECOND[objective]}.safetensors",
        "optimizer.pt",
        "state.json",
    }
    encoder = safetensors.torch.load_file(str(ck / "encoder.safetensors"))
    head = safetensors.torch.load_file(str(ck / f"{SECOND[objective]}.safetensors"))
    assert all(k.startswith("vit.") for k in encoder)
    student = build_objective(load_config(PretrainConfig, files=[cfg_file])).student
    assert set(student.state_dict()) == {f"encoder.{k}" for k in encoder} | {f"{SECOND[objective]}.{k}" for k in head}
    optim = torch.load(ck / "optimizer.pt", weights_only=True)
    assert len(optim["state"]) == sum(1 for p in student.parameters() if p.requires_grad)  # its parameters only
    # the export is the trained encoder itself (no projector, no predictor)
    export = json.loads((run / "encoder" / "config.json").read_text())
    assert export["objective"] == objective and export["step"] == 6
    exported = safetensors.torch.load_file(str(run / "encoder" / "encoder.safetensors"))
    assert exported.keys() == {k.removeprefix("vit.") for k in encoder}
    for k, v in encoder.items():
        assert torch.equal(exported[k.removeprefix("vit.")], v)
    rows = MetricsLog.read(run)
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    last = rows[-1]
    for key in ("loss", "sigreg", TERMS[objective], "feat_std", "rankme", "grad_norm"):
        assert np.isfinite(last[key]), key
    assert last["feat_std"] > 0.1 and last["rankme"] > 1.5  # no collapse
    # the loss terms go through the metrics processor to every sink: TensorBoard holds metrics.jsonl's values
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    for key in ("sigreg", TERMS[objective]):
        scalars = events.Scalars(f"pretrain/{key}")
        assert [e.step for e in scalars] == [2, 4, 6]
        np.testing.assert_allclose([e.value for e in scalars], [r[key] for r in rows[1:]], rtol=1e-6)


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_gloo_processes_match_one_process(single, strategy, dataset, tmp_path):
    """DDP, and FSDP2 for lejepa (two encoder passes and global batch norm in one sharded forward): 2 CPU
    processes train the weights of 1 process on the same global batch."""
    objective, cfg_file, run = single
    if strategy == "fsdp" and objective != "lejepa":
        pytest.skip("jepa-sigreg's student shards like ijepa's (tested in test_pretrain_distributed)")
    multi = tmp_path / "multi"
    res = subprocess.run(
        pretrain_command(dataset, multi, cfg_file, "--nproc", "2", "--json", "--set", f"runtime.strategy={strategy}"),
        env=env(threads=False),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    manifest = yaml.safe_load((multi / "manifest.yaml").read_text())
    assert manifest["contents"]["world_size"] == 2 and manifest["contents"]["strategy"] == strategy
    assert manifest["fingerprint"] == yaml.safe_load((run / "manifest.yaml").read_text())["fingerprint"]
    for step in ("step-000002", "step-000006"):
        assert_same_weights(run / "checkpoints" / step, multi / "checkpoints" / step, 1e-5)
    rows, ref = MetricsLog.read(multi), MetricsLog.read(run)
    for key in ("loss", "sigreg"):  # SIGReg is computed on the global batch, on either side
        np.testing.assert_allclose([r.get(key, 0) for r in rows], [r.get(key, 0) for r in ref], rtol=1e-4, atol=1e-6)


def test_killed_run_resumes_to_the_same_weights(single, dataset, tmp_path):
    """SIGKILL the CLI run after its first checkpoint; the same command finishes it with identical weights."""
    objective, cfg_file, run = single
    out = tmp_path / "killed"
    cmd = pretrain_command(dataset, out, cfg_file, "--quiet")
    kill_after_first_checkpoint(cmd, env(), out)
    assert not (out / "checkpoints" / "step-000006" / "state.json").exists()  # killed mid-run
    assert yaml.safe_load((out / "manifest.yaml").read_text())["status"] != "complete"
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for step in ("step-000004", "step-000006"):
        assert_same_weights(run / "checkpoints" / step, out / "checkpoints" / step, 1e-6)
        assert_same_optimizer(run / "checkpoints" / step, out / "checkpoints" / step, 1e-6)
    assert_same_weights(run / "encoder", out / "encoder", 1e-6)
    a, b = MetricsLog.read(run), MetricsLog.read(out)
    assert [r["step"] for r in b] == [r["step"] for r in a]
    np.testing.assert_allclose([r.get("loss", 0) for r in b], [r.get("loss", 0) for r in a], atol=1e-6)


def test_export_writes_the_encoder_alone_with_embeds_features(single, dataset, tmp_path):
    """cxrjepa export of the run to safetensors and ONNX: the trained encoder without projector or predictor,
    and ONNX Runtime on the stored images gives cxrjepa embed's features."""
    import onnxruntime as ort

    objective, _, run = single
    out = tmp_path / "export"
    art = run_export(out, ExportConfig(formats=["safetensors", "onnx"], check_samples=4), encoder=run)
    assert art.manifest["status"] == "complete" and list(art.manifest["contents"]["formats"]) == ["safetensors", "onnx"]
    trained = safetensors.torch.load_file(str(run / "checkpoints" / "step-000006" / "encoder.safetensors"))
    exported = safetensors.torch.load_file(str(out / "safetensors" / "encoder.safetensors"))
    assert exported.keys() == {k.removeprefix("vit.") for k in trained}  # no projector, no predictor
    for k, v in trained.items():
        assert torch.equal(exported[k.removeprefix("vit.")], v)
    assert json.loads((out / "safetensors" / "config.json").read_text())["objective"] == objective
    emb = run_embed(
        tmp_path / "emb",
        EmbedConfig(),
        encoder=run,
        data=dataset,
        options=EmbedOptions(device="cpu", batch_size=16, workers=0),
    )
    features = Embeddings.open(emb.path).array("features")
    stored = np.asarray(DatasetArtifact.open(dataset).images[:])
    # docs/export.md: stored / 255 in [0, 1], resized to the encoder's size (bilinear, antialiased)
    size = CONFIG["model"]["image_size"]
    x = F.interpolate(
        torch.from_numpy(stored.astype(np.float32) / 255.0)[:, None],
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    session = ort.InferenceSession(str(out / "onnx" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    (onnx_features,) = session.run(["features"], {"image": x.numpy()})
    assert onnx_features.shape == features.shape == (len(stored), 192)
    np.testing.assert_allclose(onnx_features, features, atol=1e-3)
    assert np.std(features, axis=0).mean() > 1e-3  # features that tell images apart


def test_lejepa_trains_a_clip_encoder_on_spatio_temporal_views(tmp_path):
    rng = np.random.default_rng(0)
    counts = [1, 6, 9, 12]
    frames = phantoms(sum(counts), 32)
    frames = np.clip(frames.astype(int) + rng.integers(-8, 8, frames.shape), 0, 255).astype(np.uint8)
    write_dataset(tmp_path / "clips", frames, default_meta(len(counts), counts))
    cfg = load_config(
        PretrainConfig,
        layers=[CONFIG],
        overrides=[
            "objective=lejepa",
            "model.frames=4",
            "model.tubelet=2",
            "clips.stride=2",
            "train.steps=2",
            "train.batch_size=4",
            "runtime.checkpoint_every=2",
        ],
    )
    art = run_pretrain(tmp_path / "run", cfg, data=tmp_path / "clips")
    assert art.manifest["status"] == "complete"
    enc = load_encoder(tmp_path / "run")
    assert enc.config.is_clip and enc.config.frames == 4
    rows = MetricsLog.read(tmp_path / "run")
    assert np.isfinite(rows[-1]["sigreg"]) and rows[-1]["invariance"] > 0
