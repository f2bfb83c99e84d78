"""Every failure is one sentence naming the file and the cause, with the documented exit code (issue 16,
item 10): a full disk, a corrupt safetensors file, a weights file that would run code, through the CLI and
the pipeline runner, without --verbose."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.errors import EXIT_FAILURE, EXIT_USAGE, format_error
from cxrjepa.data.store import write_dataset
from cxrjepa.models.export import Normalization, export_encoder
from cxrjepa.models.vit import EncoderConfig, create_vit

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "ds"
    write_dataset(path, np.random.default_rng(0).integers(0, 255, (12, 32, 32), dtype=np.uint8))
    return path


def one_sentence(res) -> str:
    """The one error line (progress messages may precede it)."""
    err = res.stderr.strip()
    assert "Traceback" not in err and "Unexpected" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err
    return errors[0]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_sentence_with_what_and_how_much(dataset, tmp_path, monkeypatch, code):
    import cxrjepa.embed.store as store

    def full(self, *args, **kwargs):  # the first unit's ledger line: a write without a file name, as f.write gives
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store.Ledger, "append", full)
    out = tmp_path / "emb"
    res = runner.invoke(
        app,
        [
            "embed",
            "--encoder",
            "random:tiny/8",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--patch-tokens",
        ],
    )
    assert res.exit_code == EXIT_FAILURE
    err = one_sentence(res)
    assert os.strerror(code) in err and f"'{out}'" in err and "while writing the embeddings" in err
    # 12 samples x (192 fp32 features + 16 x 192 fp16 patch tokens) = 83 kB
    assert "writes up to about under 1 MB there" in err and "free" in err
    assert "rerun the same command to resume" in err


def test_a_full_disk_in_a_pipeline_stage_is_the_stage_s_one_sentence(tmp_path, monkeypatch):
    import cxrjepa.core.artifact as artifact

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifact, "atomic_write_yaml", full)
    p = tmp_path / "p.yaml"
    p.write_text(f"name: t\nout: {tmp_path / 'runs'}\nstages:\n  demo:\n    stage: demo-data\n    params: {{n: 2}}\n")
    res = runner.invoke(app, ["run", str(p), "--quiet"])
    assert res.exit_code == EXIT_FAILURE
    err = one_sentence(res)
    assert err.startswith("error: Stage 'demo' failed: The disk is full (No space left on device)")
    assert f"'{tmp_path / 'runs' / 'demo'}'" in err


def test_a_corrupt_safetensors_encoder_names_the_file(dataset, tmp_path):
    cfg = EncoderConfig(size="tiny", patch_size=8, image_size=32, layers=1)
    enc = export_encoder(create_vit(cfg), cfg, tmp_path / "enc", Normalization())
    weights = enc / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    res = runner.invoke(
        app, ["embed", "--encoder", str(enc), "--data", str(dataset), "--out", str(tmp_path / "emb"), "--device", "cpu"]
    )
    assert res.exit_code == EXIT_FAILURE
    err = one_sentence(res)
    assert f"'{weights}'" in err and "not a valid safetensors file" in err


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("stage", ["pretrain", "embed"])
def test_a_weights_file_that_would_run_code_is_refused_naming_it(dataset, tmp_path, stage):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "weights.pt"
    torch.save({"pos_embed": _Payload(marker)}, evil)
    if stage == "pretrain":
        args = [
            "pretrain",
            "--data",
            str(dataset),
            "--out",
            str(tmp_path / "run"),
            "--objective",
            "salt",
            "--teacher",
            "timm:vit_tiny_patch16_224",
            "--teacher-weights",
            str(evil),
            "--gpus",
            "0",
            "--set",
            "model.size=tiny",
            "--set",
            "model.patch_size=8",
            "--set",
            "model.image_size=64",
            "--set",
            "train.batch_size=4",
        ]
    else:
        args = [
            "embed",
            "--encoder",
            "timm:vit_tiny_patch16_224",
            "--weights",
            str(evil),
            "--data",
            str(dataset),
            "--out",
            str(tmp_path / "emb"),
            "--device",
            "cpu",
        ]
    res = runner.invoke(app, args)
    assert res.exit_code == EXIT_USAGE
    err = one_sentence(res)
    assert str(evil) in err and "torch.load(weights_only=True) refused" in err
    assert not marker.exists()  # the payload never ran


def test_os_errors_name_the_file_and_unknown_errors_stay_unnamed(tmp_path):
    msg, code = format_error(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x")))
    assert msg == f"Cannot use '{tmp_path / 'x'}': Permission denied." and code == EXIT_FAILURE
    msg, _ = format_error(MemoryError())
    assert "Ran out of memory" in msg
    assert format_error(KeyError("PatientName=DOE^JOHN")) is None  # a bug: only its type is shown
    import yaml

    with pytest.raises(yaml.YAMLError) as exc:
        yaml.safe_load("a: [1, 2\nb: PATIENT-SECRET")
    msg, _ = format_error(exc.value)
    assert "not valid YAML at line" in msg and "PATIENT-SECRET" not in msg
