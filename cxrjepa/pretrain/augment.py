"""Augmentation for pretraining: random resized crop (I-JEPA's only augmentation), no flip by default.

Horizontal flips move the heart to the other side of a chest X-ray, so they are off unless asked for.
Crops are drawn from a generator the caller seeds per sample (from seed, step and position), which makes
a run's data independent of worker count, process count and interruptions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cxrjepa.core.errors import ConfigError


@dataclass
class AugmentConfig:
    """Random-resized-crop settings: area fraction, aspect-ratio range and optional horizontal flip."""

    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: bool = False

    def validate(self) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"'augment.crop_scale' must satisfy 0 < low <= high <= 1, not {list(self.crop_scale)}.")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ConfigError(f"'augment.crop_ratio' must satisfy 0 < low <= high, not {list(self.crop_ratio)}.")


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D float image to (size, size): area averaging when shrinking, bilinear when enlarging."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


class RandomResizedCrop:
    """A crop of random area and aspect ratio, resized to ``size`` (torchvision's sampling rule)."""

    def __init__(self, size: int, config: AugmentConfig):
        self.size = size
        self.config = config
        self.log_ratio = (math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]))

    def params(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop; after 10 misses, the largest centred crop within the ratio range."""
        area = height * width
        lo, hi = self.config.crop_scale
        for _ in range(10):
            target = area * rng.uniform(lo, hi)
            ratio = math.exp(rng.uniform(*self.log_ratio))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.config.crop_ratio[0]:
            w, h = width, int(round(width / self.config.crop_ratio[0]))
        elif in_ratio > self.config.crop_ratio[1]:
            h, w = height, int(round(height * self.config.crop_ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        top, left, h, w = self.params(rng, img.shape[0], img.shape[1])
        out = resize(np.ascontiguousarray(img[top : top + h, left : left + w]), self.size)
        if self.config.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)
