"""What every section builder gets: the lineage, the settings, and helpers for figures and run facts."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cxrjepa.core import console
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
    """Run one part of a section; an unexpected failure becomes a warning in the report, not a crash."""
    try:
        return fn()
    except Exception as exc:  # a malformed artifact must not take the whole report down
        if console.settings.verbose:
            traceback.print_exc()
        console.warn(f"The report could not draw {what} ({type(exc).__name__}); it is left out.")
        section.note(f"{what[:1].upper()}{what[1:]} could not be drawn ({type(exc).__name__}: {str(exc)[:160]}); "
                     "it is left out.", "warn")
        return None


def deep_find(data: Any, names: tuple[str, ...]) -> Any:
    """The first scalar value of a key in ``names`` anywhere in nested mappings (breadth first)."""
    queue = [data]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, Mapping):
            for n in names:
                v = cur.get(n)
                if v is not None and not isinstance(v, (Mapping, list)):
                    return v
                if isinstance(v, Mapping):
                    for k in ("name", "kind", "type"):
                        if isinstance(v.get(k), str):
                            return v[k]
            queue.extend(v for v in cur.values() if isinstance(v, Mapping))
    return None


def encoder_meta(run: Node) -> dict | None:
    """The exported encoder's config.json of a run (the contract's description of the architecture)."""
    for cand in (run.path / "encoder" / "config.json", run.path / "config.json"):
        if cand.is_file() and cand.parent.joinpath("encoder.safetensors").is_file():
            try:
                return json.loads(cand.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None
    return None


#: how an embeddings artifact's encoder source reads when no run is behind it
_SOURCES = {"random": "random init", "timm": "timm weights", "hf": "Hugging Face"}


def _embedding_encoder(variant) -> dict:
    """The encoder an embeddings artifact of a run-less variant recorded (random:, timm:, HF folder)."""
    for emb in getattr(variant, "embeddings", []) or []:
        enc = (emb.manifest.get("contents") or {}).get("encoder")
        if isinstance(enc, dict):
            return enc
    return {}


def run_objective(run: Node | None, variant=None) -> str:
    if run is None:
        source = _embedding_encoder(variant).get("source") if variant is not None else None
        return _SOURCES.get(str(source), str(source)) if source else "–"
    v = deep_find(run.manifest.get("params") or {}, ("objective", "method", "recipe", "algorithm"))
    return str(v) if v is not None else "–"


def encoder_label(run: Node | None, variant=None) -> str:
    meta = encoder_meta(run) if run is not None else (_embedding_encoder(variant) if variant is not None else None)
    if run is None and not meta:
        return "–"
    if meta:
        enc = meta.get("encoder") or {}
        size = enc.get("size")
        patch = meta.get("patch_size") or enc.get("patch_size")
        img = meta.get("image_size") or enc.get("image_size")
        name = f"ViT-{str(size)[:1].upper()}" if size else str(meta.get("timm_model", "ViT"))
        return f"{name}/{patch} @ {img} px" if patch and img else name
    size = deep_find(run.manifest.get("params") or {}, ("size",))
    return f"ViT {size}" if size else "–"
