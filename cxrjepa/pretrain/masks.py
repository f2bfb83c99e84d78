"""Multi-block masks for I-JEPA (and any masked-prediction objective).

Per image: ``targets`` target blocks of one shared size (scale and aspect drawn once per batch, as in the
reference collator, so tensors stay rectangular), and one context block with the target patches removed.
Context sets are cut to the smallest context size in the batch by dropping a random subset of their tokens
(the reference keeps the first ones, which biases the context towards the top of the image).

Everything is vectorised numpy over the batch. The generator draws from the ``rng`` it is given, so a
caller that seeds it from (seed, step) gets the same masks on every rank, in every worker and after a
resume; :class:`cxrjepa.pretrain.data.Collator` builds the masks of a whole global batch and keeps its rows,
so the masks do not depend on how the batch is split over processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxrjepa.core.errors import ConfigError, CxrjepaError


def _check_range(name: str, pair: tuple[float, float], lo: float, hi: float) -> None:
    a, b = pair
    if not (lo < a <= b <= hi):
        raise ConfigError(f"'{name}' must be two numbers with {lo} < low <= high <= {hi}, not {list(pair)}.")


@dataclass
class MaskConfig:
    """Multi-block mask settings (I-JEPA defaults)."""

    targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    #: fewest context tokens an image may keep
    min_context: int = 10

    def validate(self) -> None:
        if self.targets < 1:
            raise ConfigError("'masks.targets' must be at least 1.")
        _check_range("masks.target_scale", self.target_scale, 0.0, 1.0)
        _check_range("masks.context_scale", self.context_scale, 0.0, 1.0)
        _check_range("masks.target_aspect", self.target_aspect, 0.0, float("inf"))
        _check_range("masks.context_aspect", self.context_aspect, 0.0, float("inf"))
        if self.min_context < 1:
            raise ConfigError("'masks.min_context' must be at least 1.")


@dataclass
class Masks:
    """Flat token indices (row-major over the grid) for a batch."""

    context: np.ndarray  # (B, K) int64, sorted per row
    targets: np.ndarray  # (B, M, T) int64, each block sorted
    target_block: tuple[int, int]  # (h, w) of every target block
    context_block: tuple[int, int]

    def rows(self, rows: np.ndarray | slice) -> Masks:
        return Masks(self.context[rows], self.targets[rows], self.target_block, self.context_block)


class MultiBlockMasks:
    """``masks(rng, batch)`` -> :class:`Masks` for a token grid ``grid`` = (h, w)."""

    tries = 20

    def __init__(self, config: MaskConfig, grid: tuple[int, int]):
        self.config = config
        self.height, self.width = int(grid[0]), int(grid[1])
        self.num_tokens = self.height * self.width
        if config.min_context >= self.num_tokens:
            raise ConfigError(
                f"'masks.min_context' ({config.min_context}) must be below the number of tokens ({self.num_tokens})."
            )

    def block_size(
        self, rng: np.random.Generator, scale: tuple[float, float], aspect: tuple[float, float]
    ) -> tuple[int, int]:
        """A block (h, w) covering about ``scale`` of the grid with aspect ratio h / w in ``aspect``."""
        s = rng.uniform(*scale) if scale[1] > scale[0] else scale[0]
        a = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1]))) if aspect[1] > aspect[0] else aspect[0]
        keep = max(1, int(self.num_tokens * s))
        h = int(round(math.sqrt(keep * a)))
        w = int(round(math.sqrt(keep / a)))
        return min(max(h, 1), self.height), min(max(w, 1), self.width)

    def _blocks(self, rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
        """``n`` boolean (H, W) masks, each one h x w block at a uniformly random position."""
        top = rng.integers(0, self.height - h + 1, size=n)
        left = rng.integers(0, self.width - w + 1, size=n)
        rows = np.arange(self.height)
        cols = np.arange(self.width)
        in_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + h)
        in_cols = (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + w)
        return in_rows[:, :, None] & in_cols[:, None, :]

    def __call__(self, rng: np.random.Generator, batch: int) -> Masks:
        cfg = self.config
        m, n_tok = cfg.targets, self.num_tokens
        th, tw = self.block_size(rng, cfg.target_scale, cfg.target_aspect)
        ch, cw = self.block_size(rng, cfg.context_scale, cfg.context_aspect)
        targets = self._blocks(rng, batch * m, th, tw).reshape(batch, m, n_tok)
        context = self._blocks(rng, batch, ch, cw).reshape(batch, n_tok) & ~targets.any(axis=1)
        for _ in range(self.tries):
            bad = np.flatnonzero(context.sum(axis=1) < cfg.min_context)
            if bad.size == 0:
                break
            targets[bad] = self._blocks(rng, bad.size * m, th, tw).reshape(bad.size, m, n_tok)
            context[bad] = self._blocks(rng, bad.size, ch, cw).reshape(bad.size, n_tok) & ~targets[bad].any(axis=1)
        bad = context.sum(axis=1) < cfg.min_context
        if bad.any():  # context block too small for these targets: keep every non-target token
            context[bad] = ~targets[bad].any(axis=1)
            if (context.sum(axis=1) < cfg.min_context).any():
                raise CxrjepaError(
                    f"The masks leave fewer than {cfg.min_context} context tokens on a {self.height}x{self.width} "
                    "token grid; use smaller target blocks (masks.target_scale), fewer targets or a larger image."
                )
        keep = int(context.sum(axis=1).min())
        keys = rng.random((batch, n_tok))
        keys[~context] = 2.0  # never picked
        ctx_idx = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :keep], axis=1).astype(np.int64)
        tgt_idx = np.nonzero(targets.reshape(batch * m, n_tok))[1].reshape(batch, m, th * tw).astype(np.int64)
        return Masks(ctx_idx, tgt_idx, (th, tw), (ch, cw))


class TubeMasks:
    """Tube masks for clips (V-JEPA): multi-block masks drawn on the spatial grid and repeated over time.

    ``grid`` = (T, h, w) tubelet grid. Every target block and the context cover the same spatial positions at
    every time step, so the student cannot copy a target from the frame next to it. Flat indices are
    time-major (``t * h * w + y * w + x``), as the clip encoder orders its tokens; ``masks.min_context`` counts
    spatial positions (each is repeated ``T`` times).
    """

    def __init__(self, config: MaskConfig, grid: tuple[int, int, int]):
        self.time = int(grid[0])
        self.spatial = MultiBlockMasks(config, (int(grid[1]), int(grid[2])))
        self.num_tokens = self.time * self.spatial.num_tokens

    def __call__(self, rng: np.random.Generator, batch: int) -> Masks:
        m = self.spatial(rng, batch)
        offsets = np.arange(self.time, dtype=np.int64) * self.spatial.num_tokens
        b, k = m.context.shape
        _, n, t = m.targets.shape
        context = (m.context[:, None, :] + offsets[None, :, None]).reshape(b, self.time * k)
        targets = (m.targets[:, :, None, :] + offsets[None, None, :, None]).reshape(b, n, self.time * t)
        return Masks(context, targets, m.target_block, m.context_block)


def block_masks(config: MaskConfig, grid: tuple[int, ...]) -> MultiBlockMasks | TubeMasks:
    """The mask generator for a token grid: multi-block for images (h, w), tube masks for clips (T, h, w)."""
    return TubeMasks(config, grid) if len(grid) == 3 else MultiBlockMasks(config, grid)
