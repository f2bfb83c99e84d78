"""cxrjepa doctor: decodable syntaxes agree with pydicom, decoders are really tested, exit codes, --json."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from cxrjepa import doctor
from cxrjepa.cli.app import app


@pytest.fixture(scope="module")
def syntaxes() -> list[dict]:
    return doctor.check_transfer_syntaxes()


def test_decodable_syntaxes_agree_with_pydicom(syntaxes):
    assert {s["uid"] for s in syntaxes} == {str(u) for u in pydicom.uid.AllTransferSyntaxes}
    for s in syntaxes:
        try:
            decoder = pydicom.pixels.get_decoder(s["uid"])
        except NotImplementedError:
            assert not s["decodable"] and s["plugins"] == []
            continue
        assert s["decodable"] == decoder.is_available
        if not decoder.is_native:
            assert s["plugins"] == list(decoder.available_plugins)


def test_decoders_are_self_tested_on_real_samples(syntaxes):
    by_uid = {s["uid"]: s for s in syntaxes}
    # this install (pylibjpeg + gdcm) decodes every syntax common in archives, and each passes its test
    for uid in doctor.ESSENTIAL_SYNTAXES:
        assert by_uid[uid]["decodable"], by_uid[uid]["name"]
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"):
        entry = by_uid[uid]
        assert entry["verified"] == "ok", entry.get("verification")
        assert set(entry["verification"]["by_plugin"]) == set(entry["plugins"])
    # syntaxes with no decoder are never claimed to be tested
    assert all(s["verified"] == "not tested" for s in syntaxes if not s["decodable"])


class _Decoder:
    """A decoder whose plugins behave as told: "good", "wrong" (silently bad pixels) or "raise"."""

    def __init__(self, behaviour: dict[str, str], pixels: np.ndarray):
        self.behaviour, self.pixels = behaviour, pixels

    def as_array(self, ds, decoding_plugin=""):
        how = self.behaviour[decoding_plugin]
        if how == "raise":
            raise RuntimeError("Unable to decode:\n  x: not supported for 12-bit")
        return (self.pixels if how == "good" else self.pixels[::-1]), {}


@pytest.mark.parametrize(
    "behaviour, status",
    [
        ({"a": "good", "b": "good"}, "ok"),
        ({"a": "raise", "b": "good"}, "partial"),
        ({"a": "good", "b": "wrong"}, "failed"),
        ({"a": "raise", "b": "raise"}, "failed"),
    ],
)
def test_verification_catches_broken_decoders(behaviour, status):
    pixels = np.arange(48, dtype=np.uint16).reshape(6, 8)
    result = doctor._verify(_Decoder(behaviour, pixels), list(behaviour), (None, pixels, False))
    assert result["status"] == status
    if "raise" in behaviour.values():
        assert "not supported for 12-bit" in next(v for v in result["by_plugin"].values() if v != "ok")


def test_output_checks(tmp_path):
    assert doctor.check_output(tmp_path)["writable"]
    fresh = doctor.check_output(tmp_path / "new" / "deeper")
    assert fresh["writable"] and not fresh["exists"] and not (tmp_path / "new").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    blocked = doctor.check_output(blocker / "sub")  # even root cannot create a folder inside a file
    assert not blocked["writable"] and blocked["error"]
    assert list(tmp_path.iterdir()) == [blocker]  # the doctor left nothing behind


def test_package_checks():
    missing = doctor.check_package(doctor.Package("no-such-dist-cxrjepa", "no_such_module_cxrjepa", "test"), {})
    assert not missing["importable"] and missing["version"] is None and "ModuleNotFoundError" in missing["error"]
    too_new = doctor.check_package(doctor.Package("numpy", "numpy", "arrays"), {"numpy": "<1"})
    assert too_new["importable"] and too_new["requirement"] == "<1" and too_new["satisfied"] is False
    fine = doctor.check_package(doctor.Package("numpy", "numpy", "arrays"), {"numpy": ">=1"})
    assert fine["satisfied"] is True and fine["version"] == np.__version__


def test_declared_ranges_come_from_the_project():
    specs = doctor._declared_requirements()
    assert specs["pydicom"] and specs["zarr"]  # from pyproject.toml or the installed metadata
    names = {p.dist.lower() for p in doctor.PACKAGES}
    assert set(specs) <= names | {"opencv-python-headless"}  # every declared dependency is checked


def test_missing_required_package_is_a_problem(monkeypatch, tmp_path):
    monkeypatch.setattr(
        doctor,
        "PACKAGES",
        (*doctor.PACKAGES[:2], doctor.Package("no-such-dist-cxrjepa", "no_such_module_cxrjepa", "test")),
    )
    monkeypatch.setattr(doctor, "check_transfer_syntaxes", lambda verify=True: [])
    report = doctor.diagnose(tmp_path)
    assert not report["ok"] and any("no-such-dist-cxrjepa" in p for p in report["problems"])
    optional = (
        *doctor.PACKAGES[:2],
        doctor.Package("no-such-dist-cxrjepa", "no_such_module_cxrjepa", "test", required=False),
    )
    monkeypatch.setattr(doctor, "PACKAGES", optional)
    assert doctor.diagnose(tmp_path)["ok"]


def test_cli_json_and_exit_codes(tmp_path):
    runner = CliRunner()
    good = runner.invoke(app, ["doctor", "--out", str(tmp_path), "--json"])
    assert good.exit_code == 0, good.output
    report = json.loads(good.stdout)
    assert report["ok"] and report["output"]["writable"] and report["python"]["version"]
    assert any(s["uid"] == "1.2.840.10008.1.2.4.70" and s["decodable"] for s in report["dicom"]["transfer_syntaxes"])
    assert {p["name"] for p in report["packages"]} >= {"torch", "pydicom", "zarr", "python-gdcm", "pylibjpeg-openjpeg"}

    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = runner.invoke(app, ["doctor", "--out", str(blocker / "out"), "--json"])
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert not report["ok"] and not report["output"]["writable"]
    assert any("Cannot write" in p for p in report["problems"])

    human = runner.invoke(app, ["doctor", "--out", str(blocker / "out")])
    assert human.exit_code == 1 and "problem" in human.stdout and "Packages" in human.stdout


@pytest.mark.gpu
def test_doctor_lists_every_gpu():
    import torch

    info = doctor.check_torch()
    assert info["cuda_available"] and info["cuda_version"] == torch.version.cuda
    assert [g["name"] for g in info["gpus"]] == [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
    assert all(g["memory_gb"] > 0 for g in info["gpus"])
