"""From a batch of frames to per-sample features: prepare, forward (bf16 on CUDA), pool, clip-pool."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cxrjepa.core.errors import UsageError
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.embed.config import EmbedConfig, zones
from cxrjepa.encoders import FeatureEncoder

FEATURES = "features"
LAST4 = "features_last4"
PATCH = "patch_tokens"

#: a corruption (or any transform) applied to the [0, 1] frames (F, 1, H, W) on the device before prepare
Transform = Callable[[torch.Tensor], torch.Tensor]


def output_names(config: EmbedConfig) -> list[str]:
    return [FEATURES] + ([LAST4] if config.last4 else []) + ([PATCH] if config.patch_tokens else [])


def input_size(config: EmbedConfig, encoder: FeatureEncoder) -> int:
    return int(config.image_size or encoder.image_size)


def output_shapes(config: EmbedConfig, encoder: FeatureEncoder) -> dict[str, tuple[int, ...]]:
    """Per-row shape of each output array (clip encoders: patch tokens on the (T', h, w) grid)."""
    d = encoder.embed_dim
    size = input_size(config, encoder)
    tokens = 1
    for g in encoder.token_grid(size, size):
        tokens *= g
    rows, cols = zones(config.pooling) or (1, 1)
    width = rows * cols * d
    shapes = {FEATURES: (width,), LAST4: (4 * width,), PATCH: (tokens, d)}
    return {k: shapes[k] for k in output_names(config)}


def check_config(config: EmbedConfig, encoder: FeatureEncoder) -> None:
    if config.pooling == "cls" and not encoder.has_cls:
        raise UsageError(f"The encoder '{encoder.spec}' has no CLS token; use pooling=mean.")
    grid = zones(config.pooling)
    if grid is not None:
        size = input_size(config, encoder)
        h, w = encoder.token_grid(size, size)[-2:]
        if grid[0] > h or grid[1] > w:
            raise UsageError(
                f"pooling={config.pooling} needs a token grid of at least {grid[0]} x {grid[1]}; "
                f"the encoder '{encoder.spec}' has {h} x {w} at {size} px."
            )


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, ...], pooling: str) -> torch.Tensor:
    """Per-input features (B, width) from patch tokens (B, L, D) on ``grid`` ((h, w), or (T', h, w) for a clip:
    time is averaged first): their mean (for ``mean``, and for ``cls``, whose token is not among them), or for
    ``grid:RxC`` the mean token of each of R x C zones (adaptive average pooling), concatenated row-major."""
    rows_cols = zones(pooling)
    if rows_cols is None:
        return tokens.mean(dim=1)
    b, _, d = tokens.shape
    t = tokens.reshape(b, -1, grid[-2], grid[-1], d).mean(dim=1).permute(0, 3, 1, 2)  # (B, D, h, w)
    return F.adaptive_avg_pool2d(t, rows_cols).permute(0, 2, 3, 1).reshape(b, -1)


class Extractor:
    """Runs the encoder on one batch of frames and returns float32 numpy arrays per sample."""

    def __init__(
        self,
        encoder: FeatureEncoder,
        config: EmbedConfig,
        device: torch.device,
        max_value: float,
        transform: Transform | None = None,
    ):
        check_config(config, encoder)
        self.encoder = encoder
        self.config = config
        self.device = device
        self.scale = 1.0 / float(max_value)
        self.size = input_size(config, encoder)
        self.grid = encoder.token_grid(self.size, self.size)
        self.transform = transform
        self.n_layers = 4 if config.last4 else 1
        #: frames per input of a clip encoder (each sample's frames come as whole windows), else 0
        self.clip = encoder.clip_frames if encoder.clip_frames > 1 else 0

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor, counts: torch.Tensor) -> dict[str, np.ndarray]:
        x = frames.to(self.device, non_blocking=True).float().mul_(self.scale).unsqueeze(1)
        if self.transform is not None:
            x = self.transform(x)
        x = self.encoder.prepare(x, self.size)
        if self.clip:  # (windows * T, C, S, S) -> (windows, C, T, S, S); counts become windows per sample
            n, c, h, w = x.shape
            x = x.reshape(n // self.clip, self.clip, c, h, w).transpose(1, 2)
            counts = counts // self.clip
        with self.autocast():
            out = self.encoder.run(x, self.n_layers)
        tokens = out.tokens.float()
        if self.config.pooling == "cls":
            per_frame = {FEATURES: out.prefix[:, 0].float()}
        else:
            per_frame = {FEATURES: pool_tokens(tokens, self.grid, self.config.pooling)}
        if self.config.last4:
            # every block pooled like features (cls: the blocks' mean, pool_tokens' answer for it)
            layers = [pool_tokens(t.float(), self.grid, self.config.pooling) for t in out.layers]
            per_frame[LAST4] = torch.cat(layers, dim=1)
        if self.config.patch_tokens:
            per_frame[PATCH] = tokens
        counts = counts.to(self.device)
        n = int(counts.numel())
        if int(counts.sum()) != n:  # clips: mean over each sample's frames
            seg = torch.repeat_interleave(torch.arange(n, device=self.device), counts)
            denom = counts.float()
            pooled = {}
            for k, v in per_frame.items():
                acc = torch.zeros((n, *v.shape[1:]), device=self.device, dtype=torch.float32).index_add_(0, seg, v)
                pooled[k] = acc / denom.view(-1, *([1] * (v.ndim - 1)))
            per_frame = pooled
        return {k: v.cpu().numpy() for k, v in per_frame.items()}


def embed_rows(
    encoder: FeatureEncoder,
    data: DatasetArtifact,
    rows: Sequence[int] | None,
    config: EmbedConfig,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    transform: Transform | None = None,
) -> dict[str, np.ndarray]:
    """Features of dataset rows ``rows`` (all when ``None``) in memory, in the given order.

    The in-memory twin of ``cxrjepa embed`` (probe robustness re-embeds corrupted test images with it).
    """
    from cxrjepa.embed.reader import FramePlan, encoder_clip, plan_for, read_frames

    device = torch.device(device)
    starts, counts = data.frame_index
    rows = np.arange(len(starts)) if rows is None else np.asarray(rows, dtype=np.int64)
    plan = plan_for(encoder_clip(encoder), starts[rows], counts[rows], config.clip_frames, config.clip_pool)
    ext = Extractor(encoder, config, device, data.max_value, transform)
    parts: dict[str, list[np.ndarray]] = {}
    for lo, hi in _batches(plan, batch_size):
        fr = plan.frames[plan.ptr[lo] : plan.ptr[hi]]
        order = np.argsort(fr, kind="stable")
        arr = read_frames(data.images, fr[order])
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        arr = arr[inv].astype(np.int32 if arr.dtype == np.uint16 else arr.dtype)
        out = ext(torch.from_numpy(np.ascontiguousarray(arr)), torch.from_numpy(FramePlan.counts(plan, lo, hi)))
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _batches(plan, batch_size: int) -> Iterator[tuple[int, int]]:
    from cxrjepa.embed.reader import plan_batches

    for _, lo, hi in plan_batches(plan, [0], max(plan.rows, 1), batch_size):
        yield lo, hi
