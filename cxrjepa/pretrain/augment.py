"""Augmentation for pretraining: random resized crop (I-JEPA's only augmentation), no flip by default, and
for multi-view objectives (LeJEPA) global and local crops with grey-level jitter.

Horizontal flips move the heart to the other side of a chest X-ray, so they are off unless asked for.
Crops are drawn from a generator the caller seeds per sample (from seed, step and position), which makes
a run's data independent of worker count, process count and interruptions.

Grey-level jitter (:class:`IntensityConfig`) suits radiographs and ultrasound: contrast, brightness, gamma,
Gaussian blur and additive (or, for ultrasound, multiplicative speckle) noise; no hue or saturation (one
channel) and no solarisation. It works on the stored values and returns the stored dtype, so batches still
travel as integers (a uint8 view is quantised to 1/255 like any 8-bit image pipeline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

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


@dataclass
class IntensityConfig:
    """Grey-level jitter of each view, on values scaled to [0, 1] by the dataset's ``divide_by``."""

    #: probability of the contrast / brightness / gamma jitter (drawn once per view). Off by default: brightness
    #: is signal in radiographs (opacities), and invariance to it cost a pneumonia probe (docs/pretrain.md)
    jitter_p: float = 0.0
    #: contrast: scale around the view's mean by a factor in [1 - c, 1 + c]
    contrast: float = 0.4
    #: brightness: shift by up to +- this fraction of the value range
    brightness: float = 0.2
    #: gamma: exponent drawn log-uniformly in this range (1 = off)
    gamma: tuple[float, float] = (0.7, 1.4)
    #: probability of a Gaussian blur, and its sigma range in pixels of a 224-px view (scaled with the view size)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    #: probability of noise, its kind (``speckle``: multiplicative, for ultrasound) and its std range (of the range)
    noise_p: float = 0.3
    noise: Literal["gaussian", "speckle"] = "gaussian"
    noise_std: tuple[float, float] = (0.0, 0.05)

    def validate(self) -> None:
        for name in ("jitter_p", "blur_p", "noise_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"'intensity.{name}' must be a probability in [0, 1].")
        if not 0.0 <= self.contrast < 1.0 or not 0.0 <= self.brightness <= 1.0:
            raise ConfigError("'intensity.contrast' must be in [0, 1) and 'intensity.brightness' in [0, 1].")
        if not 0.0 < self.gamma[0] <= self.gamma[1]:
            raise ConfigError(f"'intensity.gamma' must satisfy 0 < low <= high, not {list(self.gamma)}.")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"'intensity.blur_sigma' must satisfy 0 < low <= high, not {list(self.blur_sigma)}.")
        if not 0.0 <= self.noise_std[0] <= self.noise_std[1]:
            raise ConfigError(f"'intensity.noise_std' must satisfy 0 <= low <= high, not {list(self.noise_std)}.")


def _dtype_max(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else float("inf")


class IntensityJitter:
    """Applies :class:`IntensityConfig` to a view: one (H, W) image, or a clip (T, H, W) with the same jitter
    on every frame (independent noise per frame). ``value_range``: the stored value of white (``divide_by``)."""

    def __init__(self, config: IntensityConfig, value_range: float):
        self.config = config
        self.range = float(value_range)

    def __call__(self, view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        jitter = rng.random() < cfg.jitter_p
        if jitter:
            contrast = rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast)
            brightness = rng.uniform(-cfg.brightness, cfg.brightness)
            gamma = math.exp(rng.uniform(math.log(cfg.gamma[0]), math.log(cfg.gamma[1])))
        blur = rng.random() < cfg.blur_p
        if blur:
            sigma = rng.uniform(*cfg.blur_sigma) * view.shape[-1] / 224.0
        noise = rng.random() < cfg.noise_p
        if noise:
            std = rng.uniform(*cfg.noise_std)
        if not (jitter or blur or noise):
            return view
        x = view.astype(np.float32) / self.range
        if jitter:
            x = (x - x.mean()) * contrast + x.mean() + brightness
            x = np.power(np.clip(x, 0.0, None), gamma)
        if blur:
            frames = x.reshape(-1, *x.shape[-2:])
            x = np.stack([cv2.GaussianBlur(f, (0, 0), sigmaX=sigma) for f in frames]).reshape(x.shape)
        if noise:
            n = rng.standard_normal(x.shape, dtype=np.float32) * std
            x = x * (1.0 + n) if self.config.noise == "speckle" else x + n
        x = np.clip(x * self.range, 0.0, _dtype_max(view.dtype))
        return (np.rint(x) if np.issubdtype(view.dtype, np.integer) else x).astype(view.dtype)


@dataclass
class ViewsConfig:
    """Multi-view sampling (LeJEPA): global crops at ``model.image_size`` (area ``augment.crop_scale``) and
    local crops at ``local_size`` (area ``local_scale``); all share ``augment.crop_ratio`` and ``augment.hflip``."""

    global_views: int = 2
    local_views: int = 6
    local_scale: tuple[float, float] = (0.05, 0.3)
    #: side of the local crops in pixels; empty = half the image size, rounded down to the patch grid
    local_size: int | None = None
    #: clip encoders: frames of a local clip (a multiple of model.tubelet); empty = half the clip's frames
    local_frames: int | None = None
    intensity: IntensityConfig = field(default_factory=IntensityConfig)

    def validate(self) -> None:
        if self.global_views < 1 or self.local_views < 0:
            raise ConfigError("'views.global_views' must be at least 1 and 'views.local_views' not negative.")
        if self.global_views + self.local_views < 2:
            raise ConfigError("A multi-view objective needs at least 2 views (global_views + local_views).")
        lo, hi = self.local_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"'views.local_scale' must satisfy 0 < low <= high <= 1, not {list(self.local_scale)}.")
        if self.local_size is not None and self.local_size < 1:
            raise ConfigError("'views.local_size' must be positive (or empty for half the image size).")
        if self.local_frames is not None and self.local_frames < 1:
            raise ConfigError("'views.local_frames' must be positive (or empty for half the clip).")

    def resolved_local_size(self, image_size: int, patch: int) -> int:
        size = self.local_size if self.local_size is not None else image_size // 2
        return max(patch, size // patch * patch)

    def resolved_local_frames(self, frames: int, tubelet: int) -> int:
        n = self.local_frames if self.local_frames is not None else frames // 2
        return max(tubelet, n // tubelet * tubelet)


class MultiCrop:
    """The views of one sample: ``global_views`` crops of side ``size`` and ``local_views`` of side
    ``local_size``, each with its own crop, flip and grey-level jitter. Picklable (built in the main process,
    used in loader workers). For clips, each view also gets its own window of frames (``frames`` /
    ``local_frames``, see :class:`cxrjepa.pretrain.data.PretrainClipViews`)."""

    def __init__(
        self,
        views: ViewsConfig,
        augment: AugmentConfig,
        size: int,
        local_size: int,
        value_range: float,
        frames: int = 1,
        local_frames: int = 1,
    ):
        self.views = views
        self.size, self.local_size = int(size), int(local_size)
        self.frames, self.local_frames = int(frames), int(local_frames)
        self.global_crop = RandomResizedCrop(self.size, augment)
        local = AugmentConfig(
            crop_scale=tuple(views.local_scale), crop_ratio=tuple(augment.crop_ratio), hflip=augment.hflip
        )
        self.local_crop = RandomResizedCrop(self.local_size, local)
        self.jitter = IntensityJitter(views.intensity, value_range)

    def plan(self) -> list[tuple[RandomResizedCrop, int]]:
        """(crop, frames) of every view in order: the global views first."""
        return [(self.global_crop, self.frames)] * self.views.global_views + [
            (self.local_crop, self.local_frames)
        ] * self.views.local_views

    def view(self, crop: RandomResizedCrop, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One view of an image (H, W) or of a clip's frames (T, H, W): crop, flip, jitter."""
        top, left, h, w = crop.params(rng, img.shape[-2], img.shape[-1])
        frames = img.reshape(-1, *img.shape[-2:])
        out = np.stack([resize(np.ascontiguousarray(f[top : top + h, left : left + w]), crop.size) for f in frames])
        if crop.config.hflip and rng.random() < 0.5:
            out = out[:, :, ::-1]
        out = self.jitter(np.ascontiguousarray(out.reshape(*img.shape[:-2], crop.size, crop.size)), rng)
        return np.ascontiguousarray(out)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """(global views (V, S, S), local views (W, s, s) or None) of an image (H, W)."""
        views = [self.view(crop, img, rng) for crop, _ in self.plan()]
        g = self.views.global_views
        return np.stack(views[:g]), (np.stack(views[g:]) if len(views) > g else None)
