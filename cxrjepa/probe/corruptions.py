"""Image corruptions for robustness probes (UltraBench / US-JEPA protocol), at 3 severities.

Each corruption works on [0, 1] frames ``(F, 1, H, W)`` before the encoder's own resize and
normalization, with severities after ImageNet-C (blur and noise scaled to the image size):

* ``blur``: Gaussian blur, sigma 1 / 2 / 3 pixels per 224 pixels of image side
* ``contrast``: intensities pulled towards the image mean, keeping 40 / 30 / 20 % of the contrast
* ``noise``: additive Gaussian noise, sigma 0.08 / 0.12 / 0.18
* ``speckle``: multiplicative noise x + x * n, n ~ N(0, 0.15 / 0.20 / 0.35) (ultrasound-like)

Noise is seeded, so a robustness run is repeatable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cxrjepa.core.errors import UsageError

if TYPE_CHECKING:  # torch is imported only when images are corrupted (probe runs without it otherwise)
    import torch

SEVERITIES = (1, 2, 3)
_BLUR = {1: 1.0, 2: 2.0, 3: 3.0}
_CONTRAST = {1: 0.4, 2: 0.3, 3: 0.2}
_NOISE = {1: 0.08, 2: 0.12, 3: 0.18}
_SPECKLE = {1: 0.15, 2: 0.20, 3: 0.35}


def _blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    sigma = _BLUR[severity] * x.shape[-1] / 224.0
    k = max(3, int(2 * round(3 * sigma) + 1))
    return gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


def _contrast(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (x - mean) * _CONTRAST[severity] + mean


def _noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    import torch

    n = torch.randn(x.shape, generator=gen, device="cpu").to(x.device)
    return x + n * _NOISE[severity]


def _speckle(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    import torch

    n = torch.randn(x.shape, generator=gen, device="cpu").to(x.device)
    return x + x * n * _SPECKLE[severity]


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "blur": _blur,
    "contrast": _contrast,
    "noise": _noise,
    "speckle": _speckle,
}


def check(names) -> list[str]:
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad:
        raise UsageError(f"Unknown corruption '{bad[0]}'; choose from {', '.join(CORRUPTIONS)}.")
    return names


def corruption(name: str, severity: int, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A transform for :func:`cxrjepa.embed.extract.embed_rows` (clipped to [0, 1])."""
    if severity not in SEVERITIES:
        raise UsageError(f"Corruption severity must be 1, 2 or 3, not {severity}.")
    import torch

    fn = CORRUPTIONS[check([name])[0]]
    gen = torch.Generator().manual_seed(seed * 100 + severity)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return fn(x, severity, gen).clamp_(0.0, 1.0)

    return apply
