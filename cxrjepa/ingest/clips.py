"""Which frames of a cine, video or volume are stored.

* Clips with a known frame rate (videos, cines with FrameTime / CineRate / RecommendedDisplayFrameRate):
  consecutive frames resampled to ``clip_fps`` (never faster than the source), starting at the first
  frame, at most ``max_frames``. ``clip_fps = 0`` keeps the source rate.
* Multi-frame DICOM without timing and volumes: at most ``max_slices`` frames, evenly spaced over the whole
  object (so a volume is covered end to end).
"""

from __future__ import annotations

import math

import numpy as np


class RateSampler:
    """Decides frame by frame (for streams whose length is unknown) which frames to keep."""

    def __init__(self, src_fps: float, target_fps: float, max_frames: int):
        self.src_fps = src_fps if src_fps and math.isfinite(src_fps) and src_fps > 0 else math.nan
        if target_fps <= 0 or math.isnan(self.src_fps) or target_fps >= self.src_fps:
            self.step = 1.0  # keep every frame
            self.fps = self.src_fps
        else:
            self.step = self.src_fps / target_fps
            self.fps = float(target_fps)
        self.max_frames = max_frames
        self.kept = 0
        self._next = 0.0

    @property
    def done(self) -> bool:
        return self.kept >= self.max_frames

    def keep(self, i: int) -> bool:
        """Keep source frame ``i`` (call with i = 0, 1, 2, ...)?"""
        if self.done:
            return False
        if i + 1e-6 >= self._next:
            self.kept += 1
            self._next += self.step
            return True
        return False


def rate_indices(n: int, src_fps: float, target_fps: float, max_frames: int) -> tuple[list[int], float]:
    sampler = RateSampler(src_fps, target_fps, max_frames)
    out = []
    for i in range(n):
        if sampler.done:
            break
        if sampler.keep(i):
            out.append(i)
    return out, sampler.fps


def even_indices(n: int, count: int) -> list[int]:
    """At most ``count`` indices evenly spaced over 0..n-1 (first and last included)."""
    if n <= count:
        return list(range(n))
    return [int(i) for i in np.unique(np.linspace(0, n - 1, count).round().astype(int))]
