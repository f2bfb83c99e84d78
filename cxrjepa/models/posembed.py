"""Fixed sine-cosine positional embeddings for token grids of any dimension (2-D images, 3-D clips)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) positions -> (N, dim) embedding: half sines, half cosines (MAE / I-JEPA convention)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_grid(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """Embedding of a row-major token grid (e.g. ``(h, w)`` or ``(t, h, w)``): (prod(grid), dim) float32.

    The width is split evenly over the axes (each part even), as in the MAE / I-JEPA / V-JEPA reference
    code; leftover channels (when ``dim`` does not divide evenly) are zero.
    """
    axes = len(grid)
    part = 2 * (dim // (2 * axes))
    coords = torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij")
    embs = [sincos_1d(part, c.reshape(-1)) for c in coords]
    emb = torch.cat(embs, dim=1)
    if emb.shape[1] < dim:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], dim - emb.shape[1])], dim=1)
    return emb.float()
