"""Frozen feature encoders from any source, behind one interface.

:func:`load_feature_encoder` turns an encoder *spec* into a :class:`FeatureEncoder`:

* a cxrjepa run artifact or export folder (``RUN`` or ``RUN/encoder``), loaded with
  :func:`cxrjepa.models.export.load_encoder`;
* ``random:ARCH`` -- the same ViT architecture, randomly initialised with a seed (the sanity baseline).
  ``ARCH`` is a cxrjepa size (``tiny``, ``small``, ``base``, ...) with an optional patch size
  (``random:small/8``), or the path of an export / run whose architecture is copied;
* ``pixels:SIZE`` -- no network: the image downsampled (area) to SIZE x SIZE and flattened, normalised with
  the dataset's mean/std (the "does the encoder beat raw pixels?" baseline); one token of SIZE^2 values;
* ``timm:NAME`` plus a local weights file (``weights=``): any timm model, weights loaded through timm's own
  pretrained-weights path (its checkpoint filters and input-channel adaptation apply), read with
  safetensors or ``torch.load(weights_only=True)``, never downloaded;
* a local Hugging Face folder (``config.json`` + weights, e.g. RAD-DINO or a DINOv2/ViT checkpoint), or
  ``hf:FOLDER``, loaded with ``transformers`` (``local_files_only=True``).

Every encoder takes images as ``(B, 1, H, W)`` floats in [0, 1] (stored intensity / maximum), and
:meth:`FeatureEncoder.prepare` resizes them to the encoder's input size, repeats the grey channel when the
model wants RGB, and applies the model's own mean/std. :meth:`FeatureEncoder.run` returns the final-normed
patch tokens ``(B, L, D)`` of the last ``n`` blocks on a ``grid`` plus the prefix (CLS/register) tokens;
``forward`` gives mean-pooled features ``(B, D)``. SALT's frozen teacher uses the same loader.

Clip encoders (cxrjepa runs with ``model.frames > 1``) have ``clip_frames > 1``: :meth:`FeatureEncoder.run`
then takes clips ``(B, C, T, S, S)`` (prepare their frames like images, then stack them) and returns tokens
on the (T', h, w) grid, time-major; ``clip_stride`` is the frame step they were trained with.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrjepa.core.errors import ArtifactError, UnreadableFileError, UsageError
from cxrjepa.core.fingerprint import hash_obj

RANDOM_PREFIX = "random:"
PIXELS_PREFIX = "pixels:"
TIMM_PREFIX = "timm:"
HF_PREFIX = "hf:"


@dataclass
class Preprocess:
    """How [0, 1] grey images become model input."""

    image_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class EncoderOutput:
    """``layers``: final-normed patch tokens (B, L, D) of the last n blocks (oldest first);
    ``prefix``: the last block's prefix tokens (B, P, D) (CLS, registers), ``None`` when there are none."""

    layers: list[torch.Tensor]
    prefix: torch.Tensor | None = None

    @property
    def tokens(self) -> torch.Tensor:
        return self.layers[-1]


class FeatureEncoder(nn.Module):
    """A frozen encoder with one interface for every source (see the module docstring)."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        source: str,
        spec: str,
        preprocess: Preprocess,
        embed_dim: int,
        patch_size: int,
        num_prefix_tokens: int,
        fingerprint: str,
        info: dict | None = None,
        clip_frames: int = 1,
        clip_stride: int = 1,
        tubelet: int = 1,
    ):
        super().__init__()
        self.backbone = backbone
        self.clip_frames = int(clip_frames)
        self.clip_stride = int(clip_stride)
        self.tubelet = int(tubelet)
        self.source = source
        self.spec = spec
        self.preprocess = preprocess
        self.embed_dim = int(embed_dim)
        self.patch_size = int(patch_size)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.fingerprint = fingerprint
        self.info = dict(info or {})
        self.register_buffer(
            "_mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "_std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.requires_grad_(False)
        self.eval()

    @property
    def has_cls(self) -> bool:
        return self.num_prefix_tokens > 0

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    def grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """The patch-token grid for an input of ``height x width`` (default: the encoder's input size)."""
        h = height or self.image_size
        w = width or self.image_size
        return h // self.patch_size, w // self.patch_size

    def token_grid(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """The token grid of one input: (h, w), or (T', h, w) for a clip encoder."""
        grid = self.grid(height, width)
        return (self.clip_frames // self.tubelet, *grid) if self.clip_frames > 1 else grid

    def prepare(self, x: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> normalized model input (B, C, S, S)."""
        size = int(image_size or self.image_size)
        x = x.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if self.preprocess.in_chans != x.shape[1]:
            x = x.expand(-1, self.preprocess.in_chans, -1, -1)
        return (x - self._mean) / self._std

    def run(self, x: torch.Tensor, n_layers: int = 1) -> EncoderOutput:
        """Patch tokens of the last ``n_layers`` blocks for prepared input ``x``."""
        return self.backbone(x, n_layers)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x).tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x).tokens.mean(dim=1)

    def describe(self) -> dict:
        """What the embeddings manifest records about the encoder."""
        return {
            "spec": self.spec,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "embed_dim": self.embed_dim,
            "patch_size": self.patch_size,
            "image_size": self.image_size,
            "in_chans": self.preprocess.in_chans,
            "mean": list(self.preprocess.mean),
            "std": list(self.preprocess.std),
            "prefix_tokens": self.num_prefix_tokens,
            **(
                {"clip_frames": self.clip_frames, "clip_stride": self.clip_stride, "tubelet": self.tubelet}
                if self.clip_frames > 1
                else {}
            ),
            **self.info,
        }


class TimmTokens(nn.Module):
    """Tokens from a timm model: ViT-like models give (B, P + L, D); CNNs give (B, D, h, w) maps."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)

    def forward(self, x: torch.Tensor, n_layers: int = 1) -> EncoderOutput:
        p = self.num_prefix_tokens
        if n_layers <= 1:
            feats = self.model.forward_features(x)
            if feats.ndim == 4:  # CNN feature map -> tokens on its grid
                return EncoderOutput([feats.flatten(2).transpose(1, 2)])
            return EncoderOutput([feats[:, p:]], feats[:, :p] if p else None)
        if not hasattr(self.model, "forward_intermediates"):
            raise UsageError(
                f"The timm model '{type(self.model).__name__}' cannot give intermediate layers; drop the last-4-layer features."
            )
        outs = self.model.forward_intermediates(
            x, indices=n_layers, norm=True, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=bool(p)
        )
        if p:
            return EncoderOutput([o[0] for o in outs], outs[-1][1])
        return EncoderOutput(list(outs))


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


class HFTokens(nn.Module):
    """Tokens from a Hugging Face vision transformer (ViTModel, Dinov2Model and kin)."""

    def __init__(self, model: nn.Module, num_prefix_tokens: int):
        super().__init__()
        self.model = model
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = getattr(model, "layernorm", None) or nn.Identity()
        import inspect

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


def _grey_stats(mean: float, std: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (float(mean),), (float(max(std, 1e-6)),)


def _cxrjepa_encoder(path: Path, spec: str) -> FeatureEncoder:
    from cxrjepa.core.artifact import open_artifact, read_manifest
    from cxrjepa.models.export import load_encoder

    if path.is_dir() and read_manifest(path) is not None:
        open_artifact(path, "run", what="run")  # a partial or other kind of artifact is refused here
    loaded = load_encoder(path)
    norm = loaded.normalization
    mean, std = _grey_stats(norm.mean, norm.std)
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
        spec=spec,
        preprocess=Preprocess(cfg.image_size, cfg.in_chans, mean * cfg.in_chans, std * cfg.in_chans),
        embed_dim=cfg.embed_dim,
        patch_size=cfg.patch_size,
        num_prefix_tokens=int(getattr(loaded.model.vit, "num_prefix_tokens", 0) or 0),
        fingerprint=loaded.fingerprint,
        info={"timm_model": cfg.timm_model, "encoder": dict(loaded.meta.get("encoder", {}))},
        **clip,
    )


_ARCH = re.compile(r"^(?P<size>[a-z]+)(?:/(?P<patch>\d+))?$")


def _random_encoder(
    arch: str, spec: str, seed: int, image_size: int | None, normalization: dict | None
) -> FeatureEncoder:
    from cxrjepa.core.config import from_dict, to_dict
    from cxrjepa.models.export import Normalization, find_export
    from cxrjepa.models.vit import SIZES, EncoderConfig, create_vit

    norm = Normalization(**{k: float(v) for k, v in (normalization or {}).items() if k in ("divide_by", "mean", "std")})
    m = _ARCH.match(arch)
    if m and m.group("size") in SIZES:
        cfg = EncoderConfig(size=m.group("size"), patch_size=int(m.group("patch") or 16), image_size=image_size or 224)
        cfg.image_size -= cfg.image_size % cfg.patch_size
        cfg.validate()
    else:
        try:
            folder = find_export(arch)
        except ArtifactError:
            raise UsageError(
                f"Unknown architecture in '{spec}'; use random:SIZE[/PATCH] with SIZE one of "
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
    mean, std = _grey_stats(norm.mean, norm.std)
    return FeatureEncoder(
        TimmTokens(vit),
        source="random",
        spec=spec,
        preprocess=Preprocess(cfg.image_size, cfg.in_chans, mean * cfg.in_chans, std * cfg.in_chans),
        embed_dim=cfg.embed_dim,
        patch_size=cfg.patch_size,
        num_prefix_tokens=int(getattr(vit, "num_prefix_tokens", 0) or 0),
        fingerprint=hash_obj({"random": to_dict(cfg), "seed": seed}),
        info={"timm_model": cfg.timm_model, "encoder": to_dict(cfg), "seed": seed},
    )


class PixelTokens(nn.Module):
    """The prepared image itself, flattened: one token of ``C * H * W`` values."""

    def forward(self, x: torch.Tensor, n_layers: int = 1) -> EncoderOutput:
        token = x.flatten(1).unsqueeze(1)
        return EncoderOutput([token] * max(n_layers, 1))


class PixelEncoder(FeatureEncoder):
    """``pixels:SIZE``: the image area-averaged to SIZE x SIZE (whatever the input size), normalised; its
    single token covers the whole image."""

    def prepare(self, x: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x.float(), self.image_size)
        return (x - self._mean) / self._std

    def grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        return 1, 1


def _pixel_encoder(size_text: str, spec: str, normalization: dict | None) -> FeatureEncoder:
    from cxrjepa.models.export import Normalization

    if not size_text.isdigit() or not 2 <= int(size_text) <= 256:
        raise UsageError(f"Use pixels:SIZE with SIZE a whole number from 2 to 256, not '{spec}'.")
    size = int(size_text)
    norm = Normalization(**{k: float(v) for k, v in (normalization or {}).items() if k in ("divide_by", "mean", "std")})
    mean, std = _grey_stats(norm.mean, norm.std)
    return PixelEncoder(
        PixelTokens(),
        source="pixels",
        spec=spec,
        preprocess=Preprocess(size, 1, mean, std),
        embed_dim=size * size,
        patch_size=size,
        num_prefix_tokens=0,
        fingerprint=hash_obj({"pixels": size, "mean": mean, "std": std}),
        info={"pixels": size},
    )


def _timm_encoder(name: str, spec: str, weights: Path | None) -> FeatureEncoder:
    import timm

    from cxrjepa.core.fingerprint import hash_file

    if weights is None:
        raise UsageError(f"'{spec}' needs a local weights file (--weights FILE); cxrjepa never downloads weights.")
    weights = Path(weights)
    if not weights.is_file():
        raise UsageError(f"The weights file '{weights}' does not exist.")
    if not timm.is_model(name):
        raise UsageError(f"'{name}' is not a timm model name (see timm.list_models()).")
    from cxrjepa.models.export import load_state_dict

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
        spec=spec,
        preprocess=Preprocess(size, in_chans, mean, std),
        embed_dim=int(model.num_features),
        patch_size=patch,
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0),
        fingerprint=hash_file(weights),
        info={"timm_model": name, "weights": str(weights)},
    )


def is_hf_folder(path: Path) -> bool:
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


def _hf_encoder(folder: Path, spec: str) -> FeatureEncoder:
    try:
        from transformers import AutoModel
    except ImportError:  # pragma: no cover - depends on the environment
        raise UsageError(
            "Loading a Hugging Face folder needs the 'transformers' package (pip install transformers)."
        ) from None
    from cxrjepa.core.fingerprint import fingerprint_path

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
        return _timm_wrapper_encoder(model, proc, folder, spec)
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
        spec=spec,
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


@dataclass
class EncoderSpec:
    """A parsed ``--encoder`` value."""

    text: str
    source: str  # cxrjepa | random | pixels | timm | hf
    target: str  # path, architecture or model name
    weights: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def path(self) -> Path | None:
        """The file or folder the encoder is read from (what its fingerprint follows), if any."""
        if self.source in ("cxrjepa", "hf"):
            return Path(self.target)
        if self.source == "timm":
            return self.weights
        if self.source == "random" and Path(self.target).exists():
            return Path(self.target)
        return None

    def absolute(self) -> str:
        """The spec with absolute paths, so it loads the same encoder from any working directory."""
        if self.source == "cxrjepa":
            return str(Path(self.target).resolve())
        if self.source == "hf":
            return HF_PREFIX + str(Path(self.target).resolve())
        if self.source == "random" and Path(self.target).exists():
            return RANDOM_PREFIX + str(Path(self.target).resolve())
        return self.text


def parse_encoder_spec(text: str | Path, weights: str | Path | None = None) -> EncoderSpec:
    text = str(text)
    w = Path(weights) if weights else None
    if text.startswith(RANDOM_PREFIX):
        return EncoderSpec(text, "random", text[len(RANDOM_PREFIX) :])
    if text.startswith(PIXELS_PREFIX):
        return EncoderSpec(text, "pixels", text[len(PIXELS_PREFIX) :])
    if text.startswith(TIMM_PREFIX):
        return EncoderSpec(text, "timm", text[len(TIMM_PREFIX) :], w)
    if text.startswith(HF_PREFIX):
        return EncoderSpec(text, "hf", text[len(HF_PREFIX) :])
    if w is not None:
        raise UsageError("--weights goes with --encoder timm:NAME.")
    path = Path(text)
    if path.is_dir() and is_hf_folder(path):
        return EncoderSpec(text, "hf", text)
    return EncoderSpec(text, "cxrjepa", text)


def load_feature_encoder(
    spec: str | Path | EncoderSpec,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    image_size: int | None = None,
    normalization: dict | None = None,
) -> FeatureEncoder:
    """Load the encoder named by ``spec`` (see the module docstring) in eval mode on ``device``.

    ``seed`` and ``image_size`` apply to ``random:SIZE`` encoders; ``normalization`` (``mean``/``std`` of
    [0, 1] intensities, e.g. a dataset's) is what ``random:`` and ``pixels:`` encoders normalize with.
    """
    sp = spec if isinstance(spec, EncoderSpec) else parse_encoder_spec(spec, weights)
    if sp.source == "random":
        enc = _random_encoder(sp.target, sp.text, seed, image_size, normalization)
    elif sp.source == "pixels":
        enc = _pixel_encoder(sp.target, sp.text, normalization)
    elif sp.source == "timm":
        enc = _timm_encoder(sp.target, sp.text, sp.weights)
    elif sp.source == "hf":
        enc = _hf_encoder(Path(sp.target), sp.text)
    else:
        enc = _cxrjepa_encoder(Path(sp.target), sp.text)
    return enc.to(device)


def encoder_input_ref(name: str, encoder: str | Path, weights: str | Path | None = None) -> dict:
    """How a downstream artifact records an encoder it reads (embed's ``encoder``, SALT's ``teacher``).

    A cxrjepa run by its content fingerprint (a partial run is refused with one sentence), a bare export
    folder by its weights' sha256, a Hugging Face folder or a timm weights file by their files (plus the
    timm model name), and ``random:SIZE`` by the spec itself.
    """
    from cxrjepa.core.artifact import input_refs

    spec = parse_encoder_spec(encoder, weights)
    if spec.source == "cxrjepa":
        return cxrjepa_encoder_ref(name, Path(spec.target))
    if spec.path is not None:
        ref = input_refs({name: spec.path})[0]
        kind = {"source": spec.source, "model": spec.target if spec.source == "timm" else None}
        ref["fingerprint"] = hash_obj({**kind, "path": ref["fingerprint"]})
        # not the artifact itself (random:RUN only borrows a run's architecture): readers must not follow it
        ref["kind"] = f"{spec.source}-encoder"
        return ref
    return {"name": name, "path": spec.text, "kind": "spec", "fingerprint": hash_obj({"spec": spec.text})}


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
