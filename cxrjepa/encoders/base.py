"""The one interface every frozen encoder has: :class:`FeatureEncoder`, its input preparation and its output.

Every encoder takes images as ``(B, 1, H, W)`` floats in [0, 1] (stored intensity / maximum), and
:meth:`FeatureEncoder.prepare` resizes them to the encoder's input size, repeats the grey channel when the
model wants RGB, and applies the model's own mean/std. :meth:`FeatureEncoder.run` returns the final-normed
patch tokens ``(B, L, D)`` of the last ``n`` blocks on a ``grid`` plus the prefix (CLS/register) tokens;
``forward`` gives mean-pooled features ``(B, D)``.

Clip encoders (cxrjepa runs with ``model.frames > 1``) have ``clip_frames > 1``: :meth:`FeatureEncoder.run`
then takes clips ``(B, C, T, S, S)`` (prepare their frames like images, then stack them) and returns tokens
on the (T', h, w) grid, time-major; ``clip_stride`` is the frame step they were trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrjepa.core.errors import UsageError


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
    """A frozen encoder with one interface for every source (see the module docstring).

    ``backbone(x, n_layers)`` returns an :class:`EncoderOutput` for prepared input ``x``; ``source`` is the
    encoder kind that loaded it (:mod:`cxrjepa.encoders.registry`), ``fingerprint`` what follows its weights.
    """

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


def grey_stats(mean: float, std: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """One grey channel's mean and std as preprocessing tuples (a std of 0 becomes 1e-6)."""
    return (float(mean),), (float(max(std, 1e-6)),)


def normalization_of(normalization: dict | None):
    """A dataset's intensity statistics (``divide_by``, ``mean``, ``std``; others ignored) as a
    :class:`cxrjepa.models.export.Normalization`, its defaults where missing."""
    from cxrjepa.models.export import Normalization

    return Normalization(**{k: float(v) for k, v in (normalization or {}).items() if k in ("divide_by", "mean", "std")})


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` is CUDA when there is a device, else the CPU; any other name as given."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
