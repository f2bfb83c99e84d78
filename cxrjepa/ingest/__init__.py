"""Ingest: DICOM / video / volume / image archives -> a dataset artifact (docs/ingest.md).

``run_ingest`` is the stage function; ``apply_geometry`` + ``Geometry`` map any 2-D array (masks) into a
sample's stored square. Names are imported lazily so ``cxrjepa --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "run_ingest": "cxrjepa.ingest.api",
    "IngestConfig": "cxrjepa.ingest.config",
    "IngestOptions": "cxrjepa.ingest.config",
    "Geometry": "cxrjepa.ingest.geometry",
    "apply_geometry": "cxrjepa.ingest.geometry",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
