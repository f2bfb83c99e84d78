"""A local Hugging Face folder (``config.json`` + weights, e.g. RAD-DINO or a DINOv2/ViT checkpoint), or
``hf:FOLDER``, loaded with ``transformers`` (``local_files_only=True``); a ``timm_wrapper`` folder (what
``cxrjepa export --format hf`` writes) runs its timm model with the folder's preprocessing."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import nn

from cxrjepa.core.errors import UsageError
from cxrjepa.encoders.base import EncoderOutput, FeatureEncoder, Preprocess, TimmTokens
from cxrjepa.encoders.registry import EncoderSpec, LoadOptions, register_encoder


class HFTokens(nn.Module):
    """Tokens from a Hugging Face vision transformer (ViTModel, Dinov2Model and kin)."""

    def __init__(self, model: nn.Module, num_prefix_tokens: int):
        super().__init__()
        self.model = model
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = getattr(model, "layernorm", None) or nn.Identity()
        self._interp = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def forward(self, x: torch.Tensor, n_layers: int = 1) -> EncoderOutput:
        kwargs = {"interpolate_pos_encoding": True} if self._interp else {}
        out = self.model(pixel_values=x, output_hidden_states=n_layers > 1, return_dict=True, **kwargs)
        p = self.num_prefix_tokens
        last = out.last_hidden_state  # final-normed
        if n_layers <= 1:
            layers = [last[:, p:]]
        else:
            hidden = [self.norm(h) for h in out.hidden_states[-n_layers:-1]]
            layers = [h[:, p:] for h in hidden] + [last[:, p:]]
        return EncoderOutput(layers, last[:, :p] if p else None)


def is_hf_folder(path: Path) -> bool:
    """A folder with a Hugging Face ``config.json`` (one with a ``model_type``), not a cxrjepa export."""
    cfg = path / "config.json"
    if not cfg.is_file() or (path / "encoder.safetensors").is_file():
        return False
    try:
        return "model_type" in json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _hf_size(proc: dict, default: int) -> int:
    for key in ("crop_size", "size"):
        val = proc.get(key)
        if isinstance(val, int):
            return val
        if isinstance(val, dict):
            for k in ("height", "shortest_edge", "width"):
                if k in val:
                    return int(val[k])
    return default


@register_encoder(
    "hf", prefix="hf:", detect=lambda path: path.is_dir() and is_hf_folder(path), target="path", usage="hf:FOLDER"
)
def load_hf_encoder(spec: EncoderSpec, options: LoadOptions) -> FeatureEncoder:
    try:
        from transformers import AutoModel
    except ImportError:  # pragma: no cover - depends on the environment
        raise UsageError(
            "Loading a Hugging Face folder needs the 'transformers' package (pip install transformers)."
        ) from None
    from cxrjepa.core.fingerprint import fingerprint_path

    folder = Path(spec.target)
    if not folder.is_dir():
        raise UsageError(f"The Hugging Face folder '{folder}' does not exist.")
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"'{folder}' is not a loadable Hugging Face model folder ({type(exc).__name__}).") from None
    cfg = model.config
    proc_path = folder / "preprocessor_config.json"
    proc = json.loads(proc_path.read_text()) if proc_path.is_file() else {}
    if getattr(cfg, "model_type", "") == "timm_wrapper":  # a timm model in a HF folder (cxrjepa export --format hf)
        return _timm_wrapper_encoder(model, proc, folder, spec.text)
    chans = int(getattr(cfg, "num_channels", 3))
    mean = tuple(float(v) for v in proc.get("image_mean", [0.5] * chans))
    std = tuple(float(v) for v in proc.get("image_std", [0.5] * chans))
    cfg_size = getattr(cfg, "image_size", 224)
    size = _hf_size(proc, int(cfg_size if isinstance(cfg_size, int) else cfg_size[0]))
    patch = getattr(cfg, "patch_size", 16)
    patch = int(patch if isinstance(patch, int) else patch[0])
    prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
    return FeatureEncoder(
        HFTokens(model.eval(), prefix),
        source="hf",
        spec=spec.text,
        preprocess=Preprocess(size, chans, mean, std),
        embed_dim=int(cfg.hidden_size),
        patch_size=patch,
        num_prefix_tokens=prefix,
        fingerprint=fingerprint_path(folder),
        info={"hf_model_type": getattr(cfg, "model_type", ""), "hf_class": type(model).__name__},
    )


def _timm_wrapper_encoder(model: nn.Module, proc: dict, folder: Path, spec: str) -> FeatureEncoder:
    """transformers' ``TimmWrapperModel``: its timm model runs as a timm encoder, with the folder's preprocessing."""
    from cxrjepa.core.fingerprint import fingerprint_path

    vit = model.timm_model.eval()
    args = dict(model.config.model_args or {})
    chans = int(args.get("in_chans", 3))
    patch = getattr(getattr(vit, "patch_embed", None), "patch_size", None)
    patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch or 16)
    return FeatureEncoder(
        TimmTokens(vit),
        source="hf",
        spec=spec,
        preprocess=Preprocess(
            _hf_size(proc, int(args.get("img_size", 224))),
            chans,
            tuple(float(v) for v in proc.get("image_mean", [0.5] * chans)),
            tuple(float(v) for v in proc.get("image_std", [0.5] * chans)),
        ),
        embed_dim=int(vit.num_features),
        patch_size=patch,
        num_prefix_tokens=int(getattr(vit, "num_prefix_tokens", 0) or 0),
        fingerprint=fingerprint_path(folder),
        info={
            "hf_model_type": "timm_wrapper",
            "hf_class": type(model).__name__,
            "timm_model": model.config.architecture,
        },
    )
