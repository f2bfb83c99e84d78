"""cxrjepa's own encoders: a run or export folder (the default kind), and ``random:ARCH`` / ``random:RUN``.

* ``RUN``, ``RUN/encoder`` or an export folder: loaded with :func:`cxrjepa.models.export.load_encoder`, with
  the normalization it was trained with; a run that is not complete is refused with one sentence;
* ``random:ARCH``: the same ViT architecture, randomly initialised with a seed (the sanity baseline). ``ARCH``
  is a cxrjepa size (``tiny``, ``small``, ``base``, ...) with an optional patch size (``random:small/8``), or
  the path of an export / run whose architecture is copied.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from cxrjepa.core.errors import ArtifactError, UsageError
from cxrjepa.core.fingerprint import hash_obj
from cxrjepa.encoders.base import EncoderOutput, FeatureEncoder, Preprocess, TimmTokens, grey_stats, normalization_of
from cxrjepa.encoders.registry import EncoderSpec, LoadOptions, register_encoder


class ClipTokens(nn.Module):
    """Tokens from a cxrjepa clip encoder (a ViTEncoder with tubelets): clips (B, C, T, H, W) in."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.num_prefix_tokens = 0

    def forward(self, x: torch.Tensor, n_layers: int = 1) -> EncoderOutput:
        tokens = self.encoder.embed(x)
        if n_layers <= 1:
            return EncoderOutput([self.encoder.run_blocks(tokens)])
        if n_layers > len(self.encoder.vit.blocks):
            raise UsageError(
                f"The clip encoder has {len(self.encoder.vit.blocks)} blocks, fewer than the {n_layers} layers asked for."
            )
        return EncoderOutput(list(self.encoder.run_blocks(tokens, return_layers=n_layers)))


def cxrjepa_encoder_ref(name: str, path: Path) -> dict:
    """A run artifact by its content fingerprint; a bare export folder by its weights' sha256."""
    from cxrjepa.core.artifact import input_refs, open_artifact, read_manifest
    from cxrjepa.models.export import CONFIG, find_export

    if path.is_dir() and read_manifest(path) is not None:  # a run: complete, or refused with one sentence
        return open_artifact(path, "run", what="run").input_ref(name)
    folder = find_export(path)
    try:
        sha = json.loads((folder / CONFIG).read_text()).get("weights_sha256")
    except (json.JSONDecodeError, UnicodeDecodeError):
        sha = None
    if not sha:
        return input_refs({name: folder})[0]
    return {"name": name, "path": str(path), "kind": "encoder", "fingerprint": sha}


@register_encoder(
    "cxrjepa",
    default=True,
    target="path",
    usage="RUN",
    input_ref=lambda name, spec: cxrjepa_encoder_ref(name, Path(spec.target)),
)
def load_run_encoder(spec: EncoderSpec, options: LoadOptions) -> FeatureEncoder:
    """A cxrjepa run (complete) or export folder, as trained: its own normalization and input size."""
    from cxrjepa.core.artifact import open_artifact, read_manifest
    from cxrjepa.models.export import load_encoder

    path = Path(spec.target)
    if path.is_dir() and read_manifest(path) is not None:
        open_artifact(path, "run", what="run")  # a partial or other kind of artifact is refused here
    loaded = load_encoder(path)
    norm = loaded.normalization
    mean, std = grey_stats(norm.mean, norm.std)
    cfg = loaded.config
    clip = {}
    if cfg.is_clip:  # timm's forward cannot run tubelets: tokens come from the ViTEncoder itself
        clip = {
            "clip_frames": cfg.frames,
            "clip_stride": int(loaded.meta.get("clip_stride", 1) or 1),
            "tubelet": cfg.tubelet,
        }
    return FeatureEncoder(
        ClipTokens(loaded.model) if cfg.is_clip else TimmTokens(loaded.model.vit),
        source="cxrjepa",
        spec=spec.text,
        preprocess=Preprocess(cfg.image_size, cfg.in_chans, mean * cfg.in_chans, std * cfg.in_chans),
        embed_dim=cfg.embed_dim,
        patch_size=cfg.patch_size,
        num_prefix_tokens=int(getattr(loaded.model.vit, "num_prefix_tokens", 0) or 0),
        fingerprint=loaded.fingerprint,
        info={"timm_model": cfg.timm_model, "encoder": dict(loaded.meta.get("encoder", {}))},
        **clip,
    )


_ARCH = re.compile(r"^(?P<size>[a-z]+)(?:/(?P<patch>\d+))?$")


@register_encoder("random", prefix="random:", target="path-or-name", usage="random:SIZE[/PATCH]")
def load_random_encoder(spec: EncoderSpec, options: LoadOptions) -> FeatureEncoder:
    """A randomly initialised cxrjepa ViT of a size (input size ``options.image_size``, default 224) or of
    the architecture of an export / run, seeded with ``options.seed``; normalized with
    ``options.normalization`` (else, for a copied architecture, the export's own)."""
    from cxrjepa.core.config import from_dict, to_dict
    from cxrjepa.models.export import Normalization, find_export
    from cxrjepa.models.vit import SIZES, EncoderConfig, create_vit

    arch, seed, normalization = spec.target, options.seed, options.normalization
    norm = normalization_of(normalization)
    m = _ARCH.match(arch)
    if m and m.group("size") in SIZES:
        cfg = EncoderConfig(
            size=m.group("size"), patch_size=int(m.group("patch") or 16), image_size=options.image_size or 224
        )
        cfg.image_size -= cfg.image_size % cfg.patch_size
        cfg.validate()
    else:
        try:
            folder = find_export(arch)
        except ArtifactError:
            raise UsageError(
                f"Unknown architecture in '{spec.text}'; use random:SIZE[/PATCH] with SIZE one of "
                f"{', '.join(SIZES)}, or random:PATH of an exported encoder."
            ) from None
        meta = json.loads((folder / "config.json").read_text())
        cfg = from_dict(EncoderConfig, meta["encoder"])
        if "normalization" in meta and not normalization:
            norm = from_dict(Normalization, meta["normalization"])
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        vit = create_vit(cfg)
    finally:
        torch.random.set_rng_state(gen_state)
    mean, std = grey_stats(norm.mean, norm.std)
    return FeatureEncoder(
        TimmTokens(vit),
        source="random",
        spec=spec.text,
        preprocess=Preprocess(cfg.image_size, cfg.in_chans, mean * cfg.in_chans, std * cfg.in_chans),
        embed_dim=cfg.embed_dim,
        patch_size=cfg.patch_size,
        num_prefix_tokens=int(getattr(vit, "num_prefix_tokens", 0) or 0),
        fingerprint=hash_obj({"random": to_dict(cfg), "seed": seed}),
        info={"timm_model": cfg.timm_model, "encoder": to_dict(cfg), "seed": seed},
    )
