"""cxrjepa export end to end: a tiny real run exported to every format, each format's features equal to
``cxrjepa embed``'s for the same images (two batch sizes), a failed check refused, clip encoders, the CLI and
the pipeline stage.

Every exported model is loaded the way docs/export.md tells a downstream engineer to: onnxruntime,
``torch.jit.load``, ``transformers.AutoModel`` + ``AutoImageProcessor``, and timm for safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.artifact import read_manifest
from cxrjepa.core.config import load_config
from cxrjepa.core.errors import ArtifactError, CxrjepaError, UsageError
from cxrjepa.data.store import DatasetArtifact, default_meta, write_dataset
from cxrjepa.embed.api import EmbedConfig, EmbedOptions, run_embed
from cxrjepa.embed.store import Embeddings
from cxrjepa.export import formats as export_formats
from cxrjepa.export.api import ExportConfig, run_export
from cxrjepa.models.export import Normalization, export_encoder, load_encoder
from cxrjepa.models.vit import EncoderConfig, create_vit
from cxrjepa.pretrain import PretrainConfig, run_pretrain
from tests.report_chain import make_dataset

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
SIZE = 32  # the encoder's input size; the dataset is stored at 64 px, so every check also resizes
TINY = {
    "model": {"size": "tiny", "patch_size": 8, "image_size": SIZE, "layers": 2, "pos_embed": "sincos"},
    "ijepa": {"predictor": {"depth": 1, "width": 32, "heads": 2}, "masks": {"min_context": 4}},
    "train": {"batch_size": 8, "steps": 2},
    "runtime": {"workers": 0, "log_every": 1, "monitor_every": 2, "checkpoint_every": 2, "monitor_batch": 8},
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A dataset (64 px, 8-bit), a 2-step I-JEPA run on it, its embeddings, and its export in every format."""
    root = tmp_path_factory.mktemp("export")
    make_dataset(root / "ds", n=24)
    run_pretrain(root / "run", load_config(PretrainConfig, layers=[TINY]), data=root / "ds")
    emb = run_embed(
        root / "emb",
        EmbedConfig(patch_tokens=True, patch_dtype="float32"),
        encoder=root / "run",
        data=root / "ds",
        options=EmbedOptions(device="cpu", batch_size=16, workers=0),
    )
    art = run_export(root / "export", ExportConfig(check_samples=6), encoder=root / "run")
    e = Embeddings.open(emb.path)
    return root, art, e.array("features"), e.array("patch_tokens")


def _stored(root: Path) -> np.ndarray:
    """The dataset's images as stored (uint8, 64 px), in sample order."""
    return np.asarray(DatasetArtifact.open(root / "ds").images[:])


def _unit_images(stored: np.ndarray) -> torch.Tensor:
    """docs/export.md: stored / 255 (8-bit) in [0, 1], resized to the encoder's size (bilinear, antialiased)."""
    x = torch.from_numpy(stored.astype(np.float32) / 255.0)[:, None]
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)


def _run_format(fmt: str, folder: Path, stored: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and patch tokens of every image, ``batch_size`` at a time, with the format's own loader."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
        run = lambda s: session.run(["features", "patch_tokens"], {"image": _unit_images(s).numpy()})  # noqa: E731
    elif fmt == "torchscript":
        module = torch.jit.load(str(folder / "encoder.pt"))
        run = lambda s: [t.numpy() for t in module(_unit_images(s))]  # noqa: E731
    elif fmt == "hf":
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)

        def run(s):
            out = model(**processor(s[:, None].astype(np.float32), return_tensors="pt"))
            return out.pooler_output.numpy(), out.last_hidden_state.numpy()
    else:
        import safetensors.torch
        import timm

        cfg = json.loads((folder / "config.json").read_text())
        model = timm.create_model(cfg["timm_model"], pretrained=False, **cfg["timm_kwargs"])
        model.load_state_dict(safetensors.torch.load_file(str(folder / "encoder.safetensors")))
        model.eval()
        n = cfg["normalization"]

        def run(s):
            x = (_unit_images(s) - n["mean"]) / n["std"]
            return model(x).numpy(), model.forward_features(x).numpy()

    feats, tokens = [], []
    with torch.no_grad():
        for lo in range(0, len(stored), batch_size):
            f, t = run(stored[lo : lo + batch_size])
            feats.append(f)
            tokens.append(t)
    return np.concatenate(feats), np.concatenate(tokens)


def test_manifest_records_every_format_and_its_check(chain):
    root, art, _, _ = chain
    m = read_manifest(root / "export")
    assert m["kind"] == "export" and m["status"] == "complete" and m["counts"]["formats"] == 4
    c = m["contents"]
    ds = read_manifest(root / "ds")
    assert c["check"]["kind"] == "dataset" and c["check"]["fingerprint"] == ds["content_fingerprint"]
    assert c["check"]["samples"] == 6 and len(c["check"]["rows"]) == 6
    assert c["encoder"]["image_size"] == SIZE and c["encoder"]["normalization"]["divide_by"] == 255
    assert [i["name"] for i in m["inputs"]] == ["encoder"]
    assert m["inputs"][0]["fingerprint"] == read_manifest(root / "run")["content_fingerprint"]
    assert set(c["formats"]) == {"safetensors", "onnx", "torchscript", "hf"}
    for fmt, entry in c["formats"].items():
        assert 0 <= entry["max_abs_diff"] <= entry["tolerance"], fmt
        assert entry["checked_batch_sizes"] == [6, 1]
        assert entry["files"] and entry["normalization"]
        for rel, f in entry["files"].items():
            assert (root / "export" / rel).stat().st_size == f["bytes"] > 0
    assert c["formats"]["onnx"]["opset"] == 18
    assert c["formats"]["onnx"]["inputs"]["image"]["shape"] == ["batch", 1, SIZE, SIZE]
    assert c["formats"]["torchscript"]["method"] == "script"
    assert c["formats"]["hf"]["model_class"] == "TimmWrapperModel"
    assert not list((root / "export").glob(".staging-*"))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "hf", "safetensors"])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_exported_features_equal_embed_features(chain, fmt, batch_size):
    root, art, features, tokens = chain
    tol = art.manifest["contents"]["formats"][fmt]["tolerance"]
    f, t = _run_format(fmt, root / "export" / fmt, _stored(root), batch_size)
    assert f.shape == features.shape and t.shape == tokens.shape == (24, (SIZE // 8) ** 2, 192)
    assert np.abs(f - features).max() <= tol
    assert np.abs(t - tokens).max() <= tol
    assert np.abs(features).max() > 0.1  # real features, not zeros


def test_onnx_graph_has_named_outputs_and_a_dynamic_batch_axis(chain):
    import onnx

    root, _, _, _ = chain
    model = onnx.load(str(root / "export" / "onnx" / "encoder.onnx"))
    onnx.checker.check_model(model)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i)) for i in model.graph.input] == [("image", ["batch", 1, SIZE, SIZE])]
    outs = {o.name: dims(o) for o in model.graph.output}
    assert outs == {"features": ["batch", 192], "patch_tokens": ["batch", 16, 192]}


def test_hf_processor_reproduces_embed_preprocessing(chain):
    from transformers import AutoImageProcessor

    root, art, _, _ = chain
    stored = _stored(root)[:3]
    proc = AutoImageProcessor.from_pretrained(str(root / "export" / "hf"), local_files_only=True)
    n = art.manifest["contents"]["encoder"]["normalization"]
    got = proc(stored[:, None].astype(np.float32), return_tensors="pt")["pixel_values"]
    want = (_unit_images(stored) - n["mean"]) / n["std"]
    assert got.shape == want.shape == (3, 1, SIZE, SIZE)
    assert float((got - want).abs().max()) < 1e-4


def test_scripted_torchscript_takes_other_image_sizes_like_pytorch(chain):
    root, art, _, _ = chain
    module = torch.jit.load(str(root / "export" / "torchscript" / "encoder.pt"))
    enc = load_encoder(root / "run")
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        f, t = module(x)
        want = enc.model.tokens(enc.normalization.apply(x * enc.normalization.divide_by))
    assert t.shape == (2, 36, 192)
    assert float((t - want).abs().max()) < 1e-4 and float((f - want.mean(1)).abs().max()) < 1e-4


def test_rerun_is_up_to_date_and_an_export_reexports(chain, tmp_path):
    root, art, _, _ = chain
    again = run_export(root / "export", ExportConfig(check_samples=6), encoder=root / "run")
    assert again.manifest["finished"] == art.manifest["finished"]
    second = run_export(
        tmp_path / "again", ExportConfig(formats=["torchscript"], check_samples=3), encoder=root / "export"
    )
    c = second.manifest["contents"]
    assert list(c["formats"]) == ["torchscript"] and c["check"]["kind"] == "dataset"  # the first export's dataset
    assert second.manifest["inputs"][0]["kind"] == "export"


def _corrupting_onnx_writer(src, folder, batch, opset):
    """The real ONNX writer, then one weight of the graph changed by 1% (a subtly broken export)."""
    import onnx
    from onnx import numpy_helper

    info = export_formats.write_onnx(src, folder, batch, opset)
    path = folder / export_formats.ONNX_FILE
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    arr = numpy_helper.to_array(init) * 1.01
    init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    onnx.save(model, str(path))
    return info


def test_a_failed_check_is_refused_and_nothing_is_presented_as_complete(chain, tmp_path, monkeypatch):
    root, _, _, _ = chain
    monkeypatch.setitem(export_formats.FORMAT_IO, "onnx", (_corrupting_onnx_writer, export_formats.run_onnx))
    out = tmp_path / "bad"
    res = runner.invoke(
        app,
        ["export", str(root / "run"), "--out", str(out), "-f", "safetensors", "-f", "onnx", "--set", "check_samples=3"],
    )
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert "onnx export differs from the PyTorch encoder" in res.stderr and "above its tolerance 0.001" in res.stderr
    m = read_manifest(out)
    assert m["status"] == "partial" and list(m["contents"]["formats"]) == ["safetensors"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.yaml", "safetensors"]  # no onnx/, no staging left
    with pytest.raises(ArtifactError, match="incomplete"):  # readers refuse it
        run_export(tmp_path / "again", ExportConfig(formats=["torchscript"]), encoder=out)


def test_a_tolerance_of_zero_refuses_an_inexact_runtime(chain, tmp_path):
    root, _, _, _ = chain
    cfg = load_config(ExportConfig, overrides=["formats=[hf]", "tolerance.hf=0", "check_samples=4"])
    # TimmWrapperModel fed by the image processor: float32 rounding differs from embed's at this 64 -> 32 resize
    with pytest.raises(CxrjepaError, match="hf export differs"):
        run_export(tmp_path / "zero", cfg, encoder=root / "run")


def _clip_encoder(path: Path) -> Path:
    cfg = EncoderConfig(size="tiny", image_size=SIZE, patch_size=16, layers=2, frames=4, tubelet=2)
    torch.manual_seed(1)
    vit = create_vit(cfg)
    with torch.no_grad():
        vit.time_embed.normal_(0, 0.5)  # time positions that matter
    export_encoder(vit, cfg, path, Normalization(mean=0.4, std=0.2), extra={"clip_stride": 2})
    return path


def test_clip_encoder_exports_what_is_faithful_and_refuses_hf(tmp_path):
    enc = _clip_encoder(tmp_path / "clip")
    art = run_export(tmp_path / "out", ExportConfig(check_samples=3), encoder=enc)
    c = art.manifest["contents"]
    assert list(c["formats"]) == ["safetensors", "onnx", "torchscript"] and c["encoder"]["clip"] is True
    assert c["check"]["kind"] == "synthetic" and any("hf was not written" in n for n in art.manifest["notes"])
    assert any("synthetic" in n for n in art.manifest["notes"])
    assert c["formats"]["torchscript"]["method"] == "trace"
    assert c["formats"]["onnx"]["inputs"]["image"]["shape"] == ["batch", 1, 4, SIZE, SIZE]
    # the exported graphs against cxrjepa's own clip encoder on new clips, at two batch sizes
    import onnxruntime as ort

    loaded = load_encoder(enc)
    session = ort.InferenceSession(str(tmp_path / "out" / "onnx" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    module = torch.jit.load(str(tmp_path / "out" / "torchscript" / "encoder.pt"))
    for b in (1, 5):
        x = torch.rand(b, 1, 4, SIZE, SIZE)
        with torch.no_grad():
            want = loaded.model.tokens((x - 0.4) / 0.2)
            ts_f, ts_t = module(x)
        on_f, on_t = session.run(None, {"image": x.numpy()})
        assert want.shape == (b, 2 * 4, 192)
        assert np.abs(on_t - want.numpy()).max() < 1e-3 and np.abs(on_f - want.mean(1).numpy()).max() < 1e-3
        assert float((ts_t - want).abs().max()) < 1e-5 and float((ts_f - want.mean(1)).abs().max()) < 1e-5
    with pytest.raises(UsageError, match="clip \\(tubelet\\) encoder cannot be a Hugging Face folder"):
        run_export(tmp_path / "hf", ExportConfig(formats=["hf"]), encoder=enc)
    res = runner.invoke(app, ["export", str(enc), "--out", str(tmp_path / "hf2"), "--format", "hf"])
    assert res.exit_code == 2 and "Hugging Face folder" in res.stderr and not (tmp_path / "hf2").exists()


def test_clip_encoder_checked_on_a_video_dataset(tmp_path):
    enc = _clip_encoder(tmp_path / "clip")
    counts = np.array([6, 1, 9])
    frames = np.random.default_rng(0).integers(0, 65535, (int(counts.sum()), 40, 40), dtype=np.uint16)
    write_dataset(tmp_path / "us", frames, default_meta(3, counts))
    art = run_export(tmp_path / "out", ExportConfig(formats=["onnx"]), encoder=enc, data=tmp_path / "us")
    c = art.manifest["contents"]
    assert c["check"]["kind"] == "dataset" and c["check"]["samples"] == 3
    assert [i["name"] for i in art.manifest["inputs"]] == ["encoder", "data"]
    assert c["formats"]["onnx"]["max_abs_diff"] <= 1e-3


def test_cli_writes_the_asked_formats_and_reports_missing_packages(chain, tmp_path, monkeypatch):
    root, _, _, _ = chain
    res = runner.invoke(
        app,
        [
            "export",
            str(root / "run" / "encoder"),
            "--out",
            str(tmp_path / "x"),
            "-f",
            "torchscript",
            "--data",
            str(root / "ds"),
            "--set",
            "check_samples=2",
            "--json",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["kind"] == "export" and out["counts"]["formats"] == 1
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["manifest.yaml", "torchscript"]
    res = runner.invoke(app, ["export", str(root / "run"), "--out", str(tmp_path / "y"), "-f", "pickle"])
    assert res.exit_code == 2 and "must be one of" in res.stderr
    monkeypatch.setattr(export_formats.importlib.util, "find_spec", lambda name: None)
    res = runner.invoke(app, ["export", str(root / "run"), "--out", str(tmp_path / "z"), "-f", "onnx"])
    assert res.exit_code == 2 and "pip install 'cxrjepa[export]'" in res.stderr and not (tmp_path / "z").exists()


def test_pipeline_export_stage_plans_runs_and_skips(chain, tmp_path):
    root, _, _, _ = chain
    pipe = {
        "name": "exp",
        "out": str(tmp_path / "runs"),
        "stages": {
            "export": {
                "stage": "export",
                "inputs": {"encoder": str(root / "run"), "data": str(root / "ds")},
                "params": {"formats": ["onnx", "hf"], "check_samples": 2},
            }
        },
    }
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(pipe))
    dry = runner.invoke(app, ["run", str(p), "--dry-run", "--json", "-q"])
    assert dry.exit_code == 0 and json.loads(dry.stdout)["stages"][0]["action"] == "would run"
    first = runner.invoke(app, ["run", str(p), "--json", "-q"])
    assert first.exit_code == 0, first.stderr
    m = read_manifest(tmp_path / "runs" / "export")
    assert m["status"] == "complete" and sorted(m["contents"]["formats"]) == ["hf", "onnx"]
    again = runner.invoke(app, ["run", str(p), "--dry-run", "--json", "-q"])
    assert json.loads(again.stdout)["stages"][0]["action"] == "would skip"


def test_quickstart_exports_onnx_and_hf():
    spec = yaml.safe_load((ROOT / "pipelines" / "quickstart.yaml").read_text())
    stage = next(s for s in spec["stages"].values() if s["stage"] == "export")
    assert stage["inputs"]["encoder"] == "@run" and sorted(stage["params"]["formats"]) == ["hf", "onnx"]


def test_embed_reads_the_hf_export_back(chain, tmp_path):
    """`cxrjepa embed --encoder EXPORT/hf` (a TimmWrapperModel folder) gives the run's own features."""
    root, _, features, tokens = chain
    emb = run_embed(
        tmp_path / "emb",
        EmbedConfig(patch_tokens=True, patch_dtype="float32"),
        encoder=root / "export" / "hf",
        data=root / "ds",
        options=EmbedOptions(device="cpu", batch_size=16, workers=0),
    )
    e = Embeddings.open(emb.path)
    assert emb.manifest["contents"]["encoder"]["hf_model_type"] == "timm_wrapper"
    np.testing.assert_allclose(e.array("features"), features, atol=1e-5)
    np.testing.assert_allclose(e.array("patch_tokens"), tokens, atol=1e-5)


@pytest.mark.parametrize(
    "sets, message",
    [
        (["onnx_opset=17"], "'onnx_opset' must be 18 or later"),
        (["formats=[onnx, onnx]"], "names a format twice"),
        (["tolerance.onnx=-1"], "'tolerance.onnx' must be zero or more"),
        (["check_samples=0"], "'check_samples' must be at least 1"),
        (["tolerance.tflite=1"], "Unknown setting 'tolerance.tflite'"),
    ],
)
def test_bad_settings_are_one_sentence(sets, message):
    from cxrjepa.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(ExportConfig, overrides=sets)
