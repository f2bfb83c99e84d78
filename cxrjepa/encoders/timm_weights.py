"""``timm:NAME`` plus a local weights file (``--weights FILE``): any timm model, its weights loaded through
timm's own pretrained-weights path (its checkpoint filters and input-channel adaptation apply), read with
safetensors or ``torch.load(weights_only=True)``, never downloaded."""

from __future__ import annotations

from pathlib import Path

from cxrjepa.core.errors import UnreadableFileError, UsageError
from cxrjepa.encoders.base import FeatureEncoder, Preprocess, TimmTokens
from cxrjepa.encoders.registry import EncoderSpec, LoadOptions, register_encoder


@register_encoder("timm", prefix="timm:", weights=True, usage="timm:NAME")
def load_timm_encoder(spec: EncoderSpec, options: LoadOptions) -> FeatureEncoder:
    import timm

    from cxrjepa.core.fingerprint import hash_file
    from cxrjepa.models.export import load_state_dict

    name, weights = spec.target, spec.weights
    if weights is None:
        raise UsageError(f"'{spec.text}' needs a local weights file (--weights FILE); cxrjepa never downloads weights.")
    weights = Path(weights)
    if not weights.is_file():
        raise UsageError(f"The weights file '{weights}' does not exist.")
    if not timm.is_model(name):
        raise UsageError(f"'{name}' is not a timm model name (see timm.list_models()).")
    try:  # safetensors, or torch.load(weights_only=True): never pickled code
        state = load_state_dict(weights)
    except UnreadableFileError as exc:  # names the file and the cause (a refused pickle, a corrupt file)
        raise UsageError(exc.message) from None
    except Exception as exc:
        raise UsageError(
            f"Cannot read the weights file '{weights}' ({type(exc).__name__}); use safetensors or a plain state dict."
        ) from None
    # through timm's pretrained path (its checkpoint filters and input-channel adaptation), from memory
    kwargs = {
        "pretrained": True,
        "pretrained_cfg_overlay": {"state_dict": state, "source": "state_dict"},
        "num_classes": 0,
    }
    try:
        model = timm.create_model(name, dynamic_img_size=True, **kwargs)
    except TypeError:  # not a ViT: no dynamic image size
        model = timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        raise UsageError(
            f"The weights in '{weights}' do not fit the timm model '{name}' ({str(exc).splitlines()[0][:200]})."
        ) from None
    for attr in ("pretrained_cfg", "default_cfg"):  # do not keep a second copy of the weights
        cfg_dict = getattr(model, attr, None)
        if isinstance(cfg_dict, dict):
            cfg_dict.pop("state_dict", None)
    del state
    pcfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    in_chans, size = int(pcfg.get("input_size", (3, 224, 224))[0]), int(pcfg.get("input_size", (3, 224, 224))[-1])
    mean = tuple(float(v) for v in pcfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in pcfg.get("std", (0.229, 0.224, 0.225)))
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = (
        int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        if patch
        else int(getattr(model, "feature_info", [{}])[-1].get("reduction", 32))
    )
    return FeatureEncoder(
        TimmTokens(model.eval()),
        source="timm",
        spec=spec.text,
        preprocess=Preprocess(size, in_chans, mean, std),
        embed_dim=int(model.num_features),
        patch_size=patch,
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0),
        fingerprint=hash_file(weights),
        info={"timm_model": name, "weights": str(weights)},
    )
