"""SALT's frozen teacher: any encoder cxrjepa can load, giving patch tokens on the student's token grid.

Sources (the same specs as ``cxrjepa embed --encoder``; never a download):

* a cxrjepa run or export folder (image or clip encoder), with its own intensity normalisation;
* ``timm:NAME`` plus a local weights file (``--teacher-weights``);
* a local Hugging Face folder (ViT, DINOv2, RAD-DINO ...), or ``hf:FOLDER``;
* ``random:ARCH`` (a randomly initialised ViT: a control, not a recipe).

The teacher takes the student's crops in [0, 1] intensity units (``stored / max``) and applies its own
preprocessing. Its tokens must sit on the student's token grid, in one of two ways (``salt.teacher.grid``):

* ``match`` (default): the teacher runs at ``student grid x teacher patch`` pixels, so its grid *is* the
  student's (student ViT/16 at 224 px = 14 x 14 tokens; a patch-14 teacher such as RAD-DINO then runs at
  196 px). Exact alignment and the cheapest teacher forward. Use it when the teacher copes with that size
  (ViTs with interpolated positions do, within ~2x of their training size).
* ``resample``: the teacher runs at ``salt.teacher.size`` (default: its own input size, e.g. RAD-DINO's 518 px,
  37 x 37 tokens) and its feature map is resampled to the student's grid (area averaging when shrinking,
  bilinear when growing). Use it for teachers that degrade away from their training resolution, for CNNs
  (stride-32 maps), or when a finer teacher map should be averaged into each student token.

Clip students with an image teacher get the teacher's tokens of every frame averaged over each tubelet's
frames; a clip teacher (a cxrjepa clip encoder) must use the student's tubelet length.

The teacher is in eval mode without gradients (``requires_grad`` off, run under ``torch.inference_mode``) and
in bf16 on CUDA (:meth:`Teacher.to_precision`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cxrjepa.core.errors import ConfigError, UsageError
from cxrjepa.encoders import FeatureEncoder, load_feature_encoder, parse_encoder_spec
from cxrjepa.models.vit import EncoderConfig, ViTEncoder


@dataclass
class TeacherConfig:
    """How the teacher's tokens are put on the student's token grid."""

    #: ``match``: run the teacher at student grid x teacher patch pixels; ``resample``: run it at ``size``
    #: and resample its feature map to the student's grid
    grid: Literal["match", "resample"] = "match"
    #: input size for ``resample`` (empty = the teacher's own input size)
    size: int | None = None

    def validate(self) -> None:
        if self.size is not None and self.size < 8:
            raise ConfigError("'salt.teacher.size' must be at least 8 pixels (or empty for the teacher's own size).")


def resample_tokens(tokens: torch.Tensor, grid: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """(N, h*w, D) tokens on ``grid`` -> (N, gh*gw, D) on ``out`` (area when shrinking, bilinear otherwise)."""
    if tuple(grid) == tuple(out):
        return tokens
    n, _, d = tokens.shape
    m = tokens.transpose(1, 2).reshape(n, d, grid[0], grid[1]).float()
    if grid[0] >= out[0] and grid[1] >= out[1]:
        m = F.interpolate(m, size=out, mode="area")
    else:
        m = F.interpolate(m, size=out, mode="bilinear", align_corners=False)
    return m.flatten(2).transpose(1, 2).to(tokens.dtype)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size), antialiased when shrinking."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class Teacher(nn.Module):
    """A frozen encoder giving patch tokens on a student's token grid: ``teacher(x01, grid) -> (B, L, D)``.

    ``x01``: (B, 1, H, W) images or (B, 1, T, H, W) clips in [0, 1]; ``grid``: the student's token grid
    ((h, w) or (T', h, w)). The tokens are the teacher's final-normed last-layer patch tokens, not layer-normed
    again (SALT does that as an option).
    """

    def __init__(
        self,
        spec: str | Path,
        *,
        weights: str | Path | None = None,
        student: EncoderConfig,
        config: TeacherConfig | None = None,
        normalization: dict | None = None,
    ):
        super().__init__()
        self.config = config or TeacherConfig()
        self.student = student
        sp = parse_encoder_spec(str(spec), weights)
        self.spec = sp.text
        self.source = sp.source
        norm = normalization or {}
        if sp.source == "cxrjepa":
            from cxrjepa.models.export import load_encoder

            _refuse_partial_run(Path(sp.target))
            loaded = load_encoder(sp.target)
            self.vit: ViTEncoder | None = loaded.model
            self.features: FeatureEncoder | None = None
            cfg = loaded.config
            self.clip = cfg.is_clip
            self.tubelet = cfg.tubelet
            self.patch = cfg.patch_size
            self.native_size = cfg.image_size
            self.embed_dim = cfg.embed_dim
            self.fingerprint = loaded.fingerprint
            self.mean, self.std = float(loaded.normalization.mean), float(loaded.normalization.std)
        else:
            enc = load_feature_encoder(
                sp,
                seed=0,
                image_size=student.image_size,
                normalization={k: norm[k] for k in ("mean", "std") if k in norm},
            )
            self.vit, self.features = None, enc
            self.clip, self.tubelet = False, 1
            self.patch = enc.patch_size
            self.native_size = enc.image_size
            self.embed_dim = enc.embed_dim
            self.fingerprint = enc.fingerprint
            self.mean, self.std = 0.0, 1.0
        if self.clip and not student.is_clip:
            raise UsageError(
                f"The teacher '{self.spec}' is a clip encoder but the student is an image encoder; "
                "use an image teacher or set model.frames / model.tubelet for the student."
            )
        if self.clip and self.tubelet != student.tubelet:
            raise UsageError(
                f"The clip teacher '{self.spec}' has tubelets of {self.tubelet} frames and the student "
                f"of {student.tubelet}; give the student the teacher's tubelet length."
            )
        self.requires_grad_(False)
        self.eval()
        self.dtype = torch.float32

    # ------------------------------------------------------------------ properties
    def input_size(self, grid: tuple[int, int]) -> int:
        """The teacher's input size for a student spatial grid ``grid`` (h, w)."""
        if self.config.grid == "match":
            return int(grid[0]) * self.patch
        return int(self.config.size or self.native_size)

    def teacher_grid(self, size: int) -> tuple[int, int]:
        if self.features is not None:
            return self.features.grid(size, size)
        return size // self.patch, size // self.patch

    def describe(self) -> dict:
        """What the run manifest records about the teacher."""
        grid = self.student.token_grid(self.student.input_shape)[-2:]
        size = self.input_size(grid)
        return {
            "spec": self.spec,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "embed_dim": self.embed_dim,
            "patch_size": self.patch,
            "native_size": self.native_size,
            "clip": self.clip,
            "grid_mode": self.config.grid,
            "input_size": size,
            "teacher_grid": list(self.teacher_grid(size)),
            "student_grid": list(grid),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def to_precision(self, dtype: torch.dtype) -> Teacher:
        """Keep the weights in ``dtype`` (bf16 on CUDA: half the memory and no per-step weight casts)."""
        self.dtype = dtype
        return self.to(dtype)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # always frozen

    # ------------------------------------------------------------------ forward
    def _frames(self, x01: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(N, 1, H, W) frames -> (N, gh*gw, D) tokens on the spatial student grid."""
        size = self.input_size(grid)
        x = _resize(x01.float(), size)
        if self.features is not None:
            x = self.features.prepare(x, size)
            tokens = self.features.run(x.to(self.dtype)).tokens
        else:
            x = (x - self.mean) / self.std
            tokens = self.vit.tokens(x.to(self.dtype))
        tg = self.teacher_grid(size)
        if tokens.shape[1] != tg[0] * tg[1]:
            raise UsageError(
                f"The teacher '{self.spec}' gave {tokens.shape[1]} tokens at {size} px, not a "
                f"{tg[0]} x {tg[1]} grid; use salt.teacher.grid=resample with another salt.teacher.size."
            )
        return resample_tokens(tokens, tg, tuple(grid))

    @torch.inference_mode()
    def forward(self, x01: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        spatial = tuple(int(g) for g in grid[-2:])
        if x01.ndim == 4:
            return self._frames(x01, spatial)
        b, c, t, h, w = x01.shape
        if not self.clip:  # an image teacher on every frame, averaged over each tubelet's frames
            tokens = self._frames(x01.transpose(1, 2).reshape(b * t, c, h, w), spatial)
            steps = int(grid[0])
            return (
                tokens.reshape(b, steps, t // steps, -1, tokens.shape[-1]).mean(dim=2).reshape(b, -1, tokens.shape[-1])
            )
        size = self.input_size(spatial)
        frames = _resize(x01.transpose(1, 2).reshape(b * t, c, h, w).float(), size)
        clip = frames.reshape(b, t, c, size, size).transpose(1, 2)
        tokens = self.vit.tokens(((clip - self.mean) / self.std).to(self.dtype))  # (B, T'*gh*gw, D)
        tg = self.teacher_grid(size)
        steps = tokens.shape[1] // (tg[0] * tg[1])
        per = resample_tokens(tokens.reshape(b * steps, tg[0] * tg[1], -1), tg, spatial)
        return per.reshape(b, steps * spatial[0] * spatial[1], -1)


def _refuse_partial_run(path: Path) -> None:
    from cxrjepa.core.artifact import open_artifact, read_manifest

    if path.is_dir() and read_manifest(path) is not None:
        open_artifact(path, "run", what="teacher run")
