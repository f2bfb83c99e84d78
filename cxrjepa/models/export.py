"""Exported encoders: ``encoder.safetensors`` + ``config.json``, loadable with timm alone.

The documented snippet (docs/export.md)::

    import json, timm, safetensors.torch
    cfg = json.load(open("RUN/encoder/config.json"))
    model = timm.create_model(cfg["timm_model"], pretrained=False, **cfg["timm_kwargs"])
    model.load_state_dict(safetensors.torch.load_file("RUN/encoder/encoder.safetensors"))
    model.eval()  # model(x) -> (B, D) mean-pooled patch features; x: (B, 1, H, W) normalized as cfg says

Clip (video) encoders (``encoder.frames > 1``: 3-D tubelet patches, config ``timm_loadable: false``) cannot be
built by timm alone; load them with :func:`load_encoder`, whose model takes clips ``(B, 1, T, H, W)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from cxrjepa.core.atomic import atomic_write_json
from cxrjepa.core.config import from_dict, to_dict
from cxrjepa.core.errors import ArtifactError, reading
from cxrjepa.core.fingerprint import hash_file
from cxrjepa.models.vit import EncoderConfig, ViTEncoder, create_vit

FORMAT = "cxrjepa.encoder/1"
WEIGHTS = "encoder.safetensors"
CONFIG = "config.json"
EXPORT_DIR = "encoder"


@dataclass
class Normalization:
    """How stored pixels become model input: ``x = (stored / divide_by - mean) / std``."""

    divide_by: float = 255.0
    mean: float = 0.5
    std: float = 0.25

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / self.divide_by - self.mean) / self.std


@dataclass
class LoadedEncoder:
    model: ViTEncoder
    config: EncoderConfig
    normalization: Normalization
    meta: dict = field(default_factory=dict)
    fingerprint: str = ""


def export_encoder(
    vit: nn.Module,
    config: EncoderConfig,
    out_dir: str | Path,
    normalization: Normalization,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the bare timm ViT ``vit`` as safetensors + config.json into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in vit.state_dict().items()}
    tmp = out_dir / f".{WEIGHTS}.tmp"
    safetensors.torch.save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(out_dir / WEIGHTS)
    cfg = {
        "format": FORMAT,
        "timm_model": config.timm_model,
        "timm_kwargs": config.timm_kwargs(),
        "encoder": to_dict(config),
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "in_chans": config.in_chans,
        "embed_dim": config.embed_dim,
        "features": "mean of final-normed patch tokens (no CLS token)",
        # clip encoders have a 3-D tubelet patch embedding that timm cannot build: use load_encoder
        "timm_loadable": not config.is_clip,
        "normalization": to_dict(normalization),
        "weights_sha256": hash_file(out_dir / WEIGHTS),
    }
    cfg.update(extra or {})
    atomic_write_json(out_dir / CONFIG, cfg)
    return out_dir


def find_export(path: str | Path) -> Path:
    """The export folder for a run artifact, an export folder, or its config.json."""
    path = Path(path)
    if path.is_file() and path.name == CONFIG:
        path = path.parent
    for cand in (path, path / EXPORT_DIR):
        if (cand / CONFIG).is_file() and (cand / WEIGHTS).is_file():
            return cand
    raise ArtifactError(
        f"'{path}' holds no exported encoder ({EXPORT_DIR}/{WEIGHTS}); run 'cxrjepa pretrain' to make one."
    )


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors, or a torch file loaded with ``weights_only=True`` (never pickle code)."""
    path = Path(path)
    with reading(path, "weights file"):  # corrupt, truncated or code-carrying files: one sentence naming them
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> LoadedEncoder:
    """Load an exported encoder (or a run's) as a :class:`ViTEncoder` in eval mode."""
    folder = find_export(path)
    try:
        meta = json.loads((folder / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"The encoder config '{folder / CONFIG}' is corrupt.") from None
    cfg = from_dict(EncoderConfig, meta["encoder"])
    vit = create_vit(cfg)
    vit.load_state_dict(load_state_dict(folder / WEIGHTS))
    model = ViTEncoder(cfg, vit).to(device).eval()
    norm = from_dict(Normalization, meta.get("normalization", {}))
    return LoadedEncoder(model, cfg, norm, meta, meta.get("weights_sha256") or hash_file(folder / WEIGHTS))
