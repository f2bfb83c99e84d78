"""Provenance: which command, versions, host and devices produced an artifact."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

import cxrjepa

TRACKED_PACKAGES = (
    "torch",
    "timm",
    "numpy",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "python-gdcm",
    "SimpleITK",
    "opencv-python-headless",
    "zarr",
    "scikit-learn",
    "safetensors",
)


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def devices() -> dict:
    """CPU count, and GPUs when the stage uses torch (importing torch only to describe the machine costs
    seconds, so stages that never load it, like ingest, record ``gpus_checked: false``)."""
    info: dict = {"cpus": os.cpu_count() or 1}
    if "torch" not in sys.modules:
        info["gpus"] = []
        info["gpus_checked"] = False
        return info
    try:
        import torch

        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        else:
            info["gpus"] = []
    except Exception:  # torch broken: doctor reports it; provenance must not fail
        info["gpus"] = []
    return info


def command_line() -> str:
    argv = list(sys.argv)
    if argv:
        argv[0] = os.path.basename(argv[0])
        if argv[0] in ("__main__.py", "-m"):
            argv[0] = "cxrjepa"
    return shlex.join(argv)


def producer() -> dict:
    return {
        "command": command_line(),
        "cxrjepa": cxrjepa.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "host": socket.gethostname(),
        "packages": package_versions(),
        "devices": devices(),
    }
