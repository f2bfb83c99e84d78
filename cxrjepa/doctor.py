"""``cxrjepa doctor``: is this install ready? Python, torch and GPUs, packages, DICOM decoders, output folder.

:func:`diagnose` returns a plain dict (the ``--json`` output). ``report["problems"]`` lists what makes the
install unusable -- a required package that cannot be imported or is outside the version range cxrjepa
declares, a common DICOM transfer syntax nothing here can decode, a decoder that fails its self-test, an
output folder that cannot be written -- and the CLI exits 1 when there is any. ``warnings`` are worth
knowing but not fatal (no GPU, little disk space).

Decoders are taken from pydicom (``pydicom.pixels.get_decoder(uid)`` and its plugins) and then *tested*:
a small image is encoded in each syntax this install can write (the demo-data encoders) or taken from
pydicom's bundled test files, and decoded with every available plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import platform
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cxrjepa


@dataclass(frozen=True)
class Package:
    dist: str  # distribution name on PyPI
    module: str  # what to import
    purpose: str
    required: bool = True
    alternatives: tuple[str, ...] = ()  # other distributions that provide the same module


PACKAGES: tuple[Package, ...] = (
    Package("typer", "typer", "command line"),
    Package("rich", "rich", "console output"),
    Package("torch", "torch", "training and inference"),
    Package("torchvision", "torchvision", "timm's image utilities"),
    Package("timm", "timm", "Vision Transformer encoders"),
    Package("numpy", "numpy", "arrays"),
    Package("pydicom", "pydicom", "DICOM reading"),
    Package("pylibjpeg", "pylibjpeg", "DICOM decoder framework"),
    Package("pylibjpeg-libjpeg", "libjpeg", "JPEG / JPEG Lossless / JPEG-LS decoding"),
    Package("pylibjpeg-openjpeg", "openjpeg", "JPEG 2000 decoding"),
    Package("pylibjpeg-rle", "rle", "fast RLE decoding"),
    Package("python-gdcm", "gdcm", "second decoder for JPEG family and JPEG 2000"),
    Package("SimpleITK", "SimpleITK", "NIfTI / volumes"),
    Package(
        "opencv-python-headless",
        "cv2",
        "video and image processing",
        alternatives=("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"),
    ),
    Package("zarr", "zarr", "dataset storage"),
    Package("pyyaml", "yaml", "configs and manifests"),
    Package("pandas", "pandas", "tables"),
    Package("pyarrow", "pyarrow", "parquet tables"),
    Package("scikit-learn", "sklearn", "probes"),
    Package("scipy", "scipy", "linear probes (solver warnings)"),
    Package("threadpoolctl", "threadpoolctl", "BLAS thread limits in probes"),
    Package("packaging", "packaging", "doctor's version checks"),
    Package("matplotlib", "matplotlib", "report figures"),
    Package("safetensors", "safetensors", "checkpoints and exported encoders"),
    Package("psutil", "psutil", "memory and CPU monitoring"),
    Package("transformers", "transformers", "local Hugging Face encoders (RAD-DINO, DINOv2) as teachers and for embed"),
    Package("highdicom", "highdicom", "DICOM SEG masks"),
    Package("pydantic", "pydantic", "artifact schemas"),
    Package("tensorboard", "tensorboard", "--logger tensorboard (pretrain, probe)", required=False),
    Package("mlflow", "mlflow", "--logger mlflow (pretrain, probe)", required=False),
    Package("wandb", "wandb", "--logger wandb (pretrain, probe)", required=False),
    Package("onnx", "onnx", "cxrjepa export --format onnx (extra 'export')", required=False),
    Package("onnxscript", "onnxscript", "torch's ONNX exporter, for cxrjepa export (extra 'export')", required=False),
    Package("onnxruntime", "onnxruntime", "checking ONNX exports (extra 'export')", required=False),
    Package("pyjpegls", "jpeg_ls", "fastest JPEG-LS decoder; JPEG-LS encoding"),
    Package("pillow", "PIL", "PNG / JPEG images and an extra JPEG decoder"),
    Package("pytest", "pytest", "running the test suite", required=False),
)

#: transfer syntaxes common in radiology archives: not being able to decode one is a problem
ESSENTIAL_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still found)
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)

#: pydicom's bundled test files used to test decoders of syntaxes this install cannot encode
BUNDLED_SAMPLES = (
    "JPGExtended.dcm",
    "JPEG-lossy.dcm",
    "JPEGLSNearLossless_16.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
)


# ----------------------------------------------------------------------------------------- packages


def _project_metadata() -> tuple[list[str], str | None]:
    """cxrjepa's declared dependencies and Requires-Python: installed metadata, else the source pyproject.toml."""
    try:
        lines = [r for r in (metadata.requires("cxrjepa") or []) if "extra ==" not in r]
        return lines, metadata.metadata("cxrjepa").get("Requires-Python")
    except metadata.PackageNotFoundError:
        pass
    pyproject = Path(cxrjepa.__file__).resolve().parent.parent / "pyproject.toml"
    if not pyproject.is_file():
        return [], None
    import tomllib

    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except (tomllib.TOMLDecodeError, OSError):
        return [], None
    return list(project.get("dependencies", [])), project.get("requires-python")


def _declared_requirements() -> dict[str, str]:
    """Version specifiers cxrjepa declares, by canonical distribution name."""
    lines, _ = _project_metadata()
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # packaging is nearly always there; without it ranges are not checked
        return {}
    out = {}
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        out[canonicalize_name(req.name)] = str(req.specifier)
    return out


def _version_of(pkg: Package) -> tuple[str | None, str | None]:
    for dist in (pkg.dist, *pkg.alternatives):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def check_package(pkg: Package, specs: dict[str, str]) -> dict:
    """Installed version, importability and declared range of one package."""
    dist, version = _version_of(pkg)
    entry: dict[str, Any] = {
        "name": pkg.dist,
        "module": pkg.module,
        "purpose": pkg.purpose,
        "required": pkg.required,
        "distribution": dist,
        "version": version,
        "importable": False,
        "requirement": None,
        "satisfied": None,
        "error": None,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(pkg.module)
        entry["importable"] = True
        if version is None:
            entry["version"] = getattr(module, "__version__", None)
    except Exception as exc:  # ImportError, or a broken binary raising anything
        entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}".rstrip(": ")
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.utils import canonicalize_name
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return entry
    spec = specs.get(canonicalize_name(pkg.dist))
    if spec:
        entry["requirement"] = spec
        if entry["version"]:
            try:
                entry["satisfied"] = Version(str(entry["version"])) in SpecifierSet(spec)
            except InvalidVersion:
                entry["satisfied"] = None
    return entry


# ---------------------------------------------------------------------------------------- torch / GPU


def check_torch() -> dict:
    info: dict[str, Any] = {
        "version": None,
        "cuda_available": False,
        "cuda_version": None,
        "cudnn": None,
        "gpus": [],
        "mps_available": False,
        "threads": None,
        "error": None,
    }
    try:
        import torch
    except Exception as exc:
        info["error"] = type(exc).__name__
        return info
    info["version"] = torch.__version__
    info["threads"] = torch.get_num_threads()
    info["cuda_version"] = torch.version.cuda
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["cudnn"] = torch.backends.cudnn.version()
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                info["gpus"].append(
                    {
                        "index": i,
                        "name": props.name,
                        "memory_gb": round(props.total_memory / 2**30, 1),
                        "capability": f"{props.major}.{props.minor}",
                        "bf16": bool(props.major >= 8),
                    }
                )
        mps = getattr(torch.backends, "mps", None)
        info["mps_available"] = bool(mps is not None and mps.is_available())
    except Exception as exc:  # a broken driver must not break the doctor
        info["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return info


# ------------------------------------------------------------------------------------------- DICOM


def _sample_dataset(key: str):
    """A small image encoded in syntax ``key`` by this install, with the pixels it should decode to."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from cxrjepa.demo import codecs

    syntax = codecs.BY_KEY[key]
    bits = 8 if syntax.only_8bit else 12
    y, x = np.mgrid[0:48, 0:64]
    rng = np.random.default_rng(0)
    pixels = ((x * 3 + y * 5) % (1 << bits) + rng.integers(0, 7, size=y.shape)) % (1 << bits)
    pixels = pixels.astype(np.uint8 if bits == 8 else np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "2.25.1"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (8 if bits == 8 else 16), bits, bits - 1, 0
    ds.PixelData = pixels.tobytes()
    codecs.encode(ds, key)
    return ds, pixels, syntax.lossy


def _samples() -> dict[str, tuple[Any, Any, bool]]:
    """uid -> (dataset, expected pixels or None, lossy) for every syntax we can get a sample of."""
    samples: dict[str, tuple[Any, Any, bool]] = {}
    try:
        from cxrjepa.demo import codecs

        for syntax in codecs.available_syntaxes():
            try:
                samples[str(syntax.uid)] = _sample_dataset(syntax.key)
            except Exception:  # an encoder that fails is reported through the missing sample
                continue
    except Exception:
        pass
    try:
        import pydicom
        from pydicom.data import get_testdata_file

        for name in BUNDLED_SAMPLES:
            path = get_testdata_file(name, download=False)
            if not path:
                continue
            ds = pydicom.dcmread(path)
            uid = str(ds.file_meta.TransferSyntaxUID)
            if uid not in samples:
                samples[uid] = (ds, None, uid.endswith((".50", ".51", ".81", ".91")))
    except Exception:
        pass
    return samples


def _verify(decoder, plugins: list[str], sample) -> dict:
    """Decode ``sample`` with each plugin: ``ok`` when every one gives the expected (or the same) pixels."""
    import numpy as np

    ds, expected, lossy = sample
    results: dict[str, str] = {}
    arrays = {}
    for plugin in plugins or [""]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr, _ = decoder.as_array(ds, decoding_plugin=plugin)
        except Exception as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = lines[-1].split(": ", 1)[-1][:120] if lines else type(exc).__name__
            results[plugin or "pydicom"] = f"error: {reason}"
            continue
        arr = np.asarray(arr, dtype=np.float64)
        reference = expected if expected is not None else next(iter(arrays.values()), None)
        arrays[plugin] = arr
        if arr.size == 0 or arr.max() == arr.min():
            results[plugin or "pydicom"] = "constant image"
        elif reference is not None and np.shape(reference) != arr.shape:
            results[plugin or "pydicom"] = "wrong shape"
        elif reference is not None:
            err = np.abs(arr - np.asarray(reference, dtype=np.float64)).mean()
            tolerance = 0.05 * (np.ptp(arr) or 1.0) if lossy else 0.0
            results[plugin or "pydicom"] = "ok" if err <= tolerance else "wrong pixels"
        else:
            results[plugin or "pydicom"] = "ok"
    values = list(results.values())
    if values and all(v == "ok" for v in values):
        status = "ok"
    elif "ok" in values and not any(v in ("wrong pixels", "wrong shape", "constant image") for v in values):
        status = "partial"  # some plugins refuse this sample; pydicom falls back to one that works
    else:
        status = "failed"  # nothing decodes it, or a plugin silently returns wrong pixels
    return {
        "status": status,
        "by_plugin": results,
        "sample": "encoded here" if expected is not None else "pydicom test file",
    }


def check_transfer_syntaxes(verify: bool = True) -> list[dict]:
    """Every transfer syntax pydicom knows: can this install decode it, with which plugins, does it work."""
    import pydicom
    from pydicom.uid import UID

    samples = _samples() if verify else {}
    rows = []
    for uid in pydicom.uid.AllTransferSyntaxes:
        uid = UID(uid)
        entry: dict[str, Any] = {
            "uid": str(uid),
            "name": uid.name,
            "compressed": bool(uid.is_compressed),
            "decodable": False,
            "plugins": [],
            "missing": [],
            "essential": str(uid) in ESSENTIAL_SYNTAXES,
            "verified": "not tested",
        }
        try:
            decoder = pydicom.pixels.get_decoder(uid)
        except (NotImplementedError, ValueError):
            rows.append(entry)
            continue
        entry["decodable"] = bool(decoder.is_available)
        entry["plugins"] = list(decoder.available_plugins) if not decoder.is_native else ["pydicom"]
        if not decoder.is_native:
            entry["missing"] = list(decoder.missing_dependencies)  # "plugin - requires ..." lines
        if entry["decodable"] and str(uid) in samples:
            plugins = [] if decoder.is_native else list(decoder.available_plugins)
            check = _verify(decoder, plugins, samples[str(uid)])
            entry["verified"] = check["status"]
            entry["verification"] = check
        rows.append(entry)
    return rows


# ------------------------------------------------------------------------------------------- output


def check_output(path: str | Path) -> dict:
    """Can cxrjepa write in ``path``? Writes (and removes) a temporary file; creates nothing else."""
    path = Path(path).expanduser()
    entry: dict[str, Any] = {
        "path": str(path),
        "exists": path.exists(),
        "writable": False,
        "free_gb": None,
        "error": None,
    }
    target = path
    if not path.exists():
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
    if not target.is_dir():
        entry["error"] = f"'{target}' is not a folder"
        return entry
    try:
        entry["free_gb"] = round(shutil.disk_usage(target).free / 2**30, 1)
    except OSError:
        pass
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".cxrjepa-doctor-", delete=True) as fh:
            fh.write(b"ok")
            fh.flush()
        entry["writable"] = True
        if not path.exists():
            entry["note"] = f"will be created inside '{target}'"
    except OSError as exc:
        entry["error"] = exc.strerror or type(exc).__name__
    return entry


# ------------------------------------------------------------------------------------------- report


def _python_satisfies(spec: str | None) -> bool | None:
    if not spec:
        return None
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        return None
    return platform.python_version() in SpecifierSet(spec)


def diagnose(out: str | Path = ".", *, verify_decoders: bool = True) -> dict:
    """Everything ``cxrjepa doctor`` reports, as a JSON-able dict; ``report["ok"]`` is False on any problem."""
    specs = _declared_requirements()
    packages = [check_package(p, specs) for p in PACKAGES]
    torch_info = check_torch()
    syntaxes = check_transfer_syntaxes(verify=verify_decoders)
    output = check_output(out)
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        memory_gb = None

    problems: list[str] = []
    warn: list[str] = []
    requires_python = _project_metadata()[1]
    python_ok = _python_satisfies(requires_python)
    if python_ok is False:
        problems.append(f"Python {platform.python_version()} is too old; cxrjepa needs {requires_python}.")
    for p in packages:
        if not p["importable"]:
            if p["required"]:
                problems.append(
                    f"Required package {p['name']} cannot be imported"
                    + (f" ({p['error']})" if p["error"] else "")
                    + f"; install it with: pip install '{p['name']}{p['requirement'] or ''}'."
                )
        elif p["satisfied"] is False:
            (problems if p["required"] else warn).append(
                f"{p['name']} {p['version']} is outside the range cxrjepa needs ({p['requirement']})."
            )
    for s in syntaxes:
        if s["essential"] and not s["decodable"]:
            problems.append(
                f"No decoder for {s['name']} ({s['uid']}); install pylibjpeg-libjpeg, pylibjpeg-openjpeg and python-gdcm."
            )
        elif s["verified"] in ("failed", "partial"):
            bad = ", ".join(f"{k}: {v}" for k, v in s["verification"]["by_plugin"].items() if v != "ok")
            if s["verified"] == "failed":
                problems.append(f"Decoding {s['name']} fails its self-test ({bad}).")
            else:
                warn.append(
                    f"Some decoders cannot read the {s['name']} sample ({bad}); pydicom falls back to another plugin."
                )
    if not output["writable"]:
        problems.append(f"Cannot write to the output folder '{output['path']}' ({output['error']}).")
    elif output["free_gb"] is not None and output["free_gb"] < 1.0:
        warn.append(f"Only {output['free_gb']} GB free in the output folder.")
    if torch_info["version"] and not torch_info["cuda_available"]:
        warn.append("No CUDA GPU: cxrjepa runs on CPU (fine for the quickstart; slow for real pretraining).")
    if torch_info.get("error") and torch_info["version"]:
        warn.append(f"torch could not query devices ({torch_info['error']}).")

    return {
        "ok": not problems,
        "problems": problems,
        "warnings": warn,
        "cxrjepa": cxrjepa.__version__,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "requirement": requires_python,
            "satisfied": python_ok,
        },
        "platform": platform.platform(terse=True),
        "cpu": {"count": os.cpu_count(), "memory_gb": memory_gb},
        "torch": torch_info,
        "packages": packages,
        "dicom": {"transfer_syntaxes": syntaxes},
        "output": output,
    }
