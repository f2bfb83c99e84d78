"""What every section builder gets: the lineage, the settings, and helpers for figures and run facts."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cxrjepa.core import console
from cxrjepa.core.schema import SchemaError
from cxrjepa.report.config import ReportConfig
from cxrjepa.report.doc import Figure, Section
from cxrjepa.report.lineage import Lineage, Node, Variant


@dataclass
class Context:
    lineage: Lineage
    config: ReportConfig
    device: str = "cpu"
    _names: set[str] = field(default_factory=set)

    def figure(self, name: str, png: bytes, alt: str, caption: str = "") -> Figure:
        """A figure with a file name unique within the report."""
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in name.lower()).strip("-") or "figure"
        unique, i = stem, 2
        while unique in self._names:
            unique, i = f"{stem}-{i}", i + 1
        self._names.add(unique)
        return Figure(unique, png, alt, caption)

    @property
    def variants(self) -> list[Variant]:
        return self.lineage.variants


def guarded(section: Section, what: str, fn: Callable[[], Any]) -> Any:
    """Run one part of a section; an unexpected failure becomes a warning in the report, not a crash.

    An artifact that does not match its kind's schema is not unexpected: that error stops the report with
    its one sentence (the field, the stage to rerun) instead of quietly becoming a warning.
    """
    try:
        return fn()
    except SchemaError:
        raise
    except Exception as exc:  # a malformed artifact must not take the whole report down
        if console.settings.verbose:
            traceback.print_exc()
        console.warn(f"The report could not draw {what} ({type(exc).__name__}); it is left out.")
        section.note(
            f"{what[:1].upper()}{what[1:]} could not be drawn ({type(exc).__name__}: {str(exc)[:160]}); "
            "it is left out.",
            "warn",
        )
        return None


def encoder_meta(run: Node) -> dict | None:
    """The exported encoder's config.json of a run (the contract's description of the architecture)."""
    return run.as_run.encoder_config()


#: how an embeddings artifact's encoder source reads when no run is behind it
_SOURCES = {"random": "random init", "timm": "timm weights", "hf": "Hugging Face"}


def _embedding_encoder(variant) -> dict:
    """The encoder an embeddings artifact of a run-less variant recorded (random:, timm:, HF folder)."""
    for emb in getattr(variant, "embeddings", []) or []:
        return emb.as_embeddings.encoder
    return {}


def run_objective(run: Node | None, variant=None) -> str:
    if run is None:
        source = _embedding_encoder(variant).get("source") if variant is not None else None
        return _SOURCES.get(str(source), str(source)) if source else "–"
    return run.as_run.contents.objective


def encoder_label(run: Node | None, variant=None) -> str:
    meta = encoder_meta(run) if run is not None else (_embedding_encoder(variant) if variant is not None else None)
    if not meta:
        return "–"
    enc = meta.get("encoder") or {}
    size = enc.get("size")
    patch = meta.get("patch_size") or enc.get("patch_size")
    img = meta.get("image_size") or enc.get("image_size")
    name = f"ViT-{str(size)[:1].upper()}" if size else str(meta.get("timm_model", "ViT"))
    return f"{name}/{patch} @ {img} px" if patch and img else name
