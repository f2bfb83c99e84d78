"""The teacher-target cache: a frozen SALT teacher's tokens of every frame, computed once (fp16 zarr).

With whole-frame crops (``augment.crop_scale: [1, 1]``, ``crop_ratio: [1, 1]``, no flips) a frame's teacher
targets never change, so SALT can skip the teacher's forward pass: ``runtime.teacher_cache: FOLDER`` computes
them once into ``FOLDER/<fingerprint>/`` -- an artifact of kind ``targets`` -- and every epoch, and every
student with the same teacher, dataset, input size and grid mode, reads them from there.

```
FOLDER/<16 hex>/
  manifest.yaml    kind: targets; params (teacher grid mode/size, image size, student grid); inputs: data, teacher
  targets.zarr/tokens   (frames, h*w, D) float16: the teacher's tokens of frame i on the student's spatial grid
                        (not layer-normed); chunk = 1 frame, shard = 256 frames
  ledger/rank-RRR.jsonl  finished blocks of 256 frames (an interrupted build resumes)
```

Targets are per frame, so a clip student reads the frames of its clip and averages each tubelet's frames,
exactly as the live teacher does (a clip teacher cannot be cached). Values are fp16: a cached run differs
from a live one by the rounding of the targets (relative ~5e-4), like bf16 on a GPU. Several processes
build the cache together (blocks round-robin over ranks; each block is its own shard file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import zarr

from cxrjepa.core import console
from cxrjepa.core.artifact import begin, open_artifact, plan_artifact
from cxrjepa.core.atomic import fsync_dir
from cxrjepa.core.fingerprint import hash_obj
from cxrjepa.pretrain.augment import resize

KIND = "targets"
ZARR = "targets.zarr"
ARRAY = "tokens"
LEDGER = "ledger"
BLOCK = 256


def cache_params(teacher, student, data) -> dict:
    grid = student.token_grid(student.input_shape)[-2:]
    return {
        "image_size": student.image_size,
        "student_grid": list(grid),
        "patch_size": student.patch_size,
        "teacher_grid": teacher.config.grid,
        "teacher_input": teacher.input_size(grid),
        "dtype": "float16",
        "frames": int(data.images.shape[0]),
    }


def cache_folder(root: str | Path, params: dict, refs: list[dict]) -> Path:
    """``root/<16 hex>``: one cache per (teacher, dataset, settings), so one root serves many students."""
    from cxrjepa.core.artifact import compute_fingerprint

    return Path(root) / compute_fingerprint(KIND, params, refs).split(":")[-1][:16]


def whole_frames_ok(augment) -> bool:
    """Whether crops are deterministic whole frames (the condition for caching teacher targets)."""
    return tuple(augment.crop_scale) == (1.0, 1.0) and tuple(augment.crop_ratio) == (1.0, 1.0) and not augment.hflip


class CachedTargets:
    """Per-frame teacher tokens from a cache: ``reader(frame_ids) -> {"teacher_tokens": (n, L, D) fp16}``.

    Picklable (loader workers open their own zarr handle)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._array = None
        self._pid = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None, "_pid": None}

    @property
    def array(self):
        if self._array is None or self._pid != os.getpid():
            self._array = zarr.open_group(str(self.folder / ZARR), mode="r")[ARRAY]
            self._pid = os.getpid()
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    def __call__(self, frames: np.ndarray) -> dict:
        frames = np.asarray(frames, dtype=np.int64)
        lo, hi = int(frames.min()), int(frames.max())
        if hi - lo + 1 <= 2 * len(frames):  # consecutive frames (clips): one slab read
            out = np.asarray(self.array[lo : hi + 1])[frames - lo]
        else:
            out = np.stack([np.asarray(self.array[int(f)]) for f in frames])
        return {"teacher_tokens": out}


def _done_blocks(folder: Path) -> set[int]:
    done: set[int] = set()
    for f in sorted((folder / LEDGER).glob("rank-*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                done.add(int(json.loads(line)["block"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line: that block is redone
    return done


def build_cache(root: str | Path, teacher, student, data, refs: list[dict], env, *, batch: int = 64) -> CachedTargets:
    """Make (or reuse) the cache of ``teacher``'s targets for every frame of ``data`` under ``root``.

    Every rank of a process group calls this; blocks of frames are shared out round-robin."""
    from cxrjepa.runtime import barrier

    info = env.info
    params = cache_params(teacher, student, data)
    folder = cache_folder(root, params, refs)
    n = int(data.images.shape[0])
    d = int(teacher.embed_dim)
    grid = tuple(params["student_grid"])
    tokens = grid[0] * grid[1]
    plan = plan_artifact(folder, KIND, params, refs)
    if plan.action == "skip":
        if info.is_main:
            console.info(f"Teacher targets: reusing the cache {folder}.")
        return CachedTargets(folder)
    barrier(info)
    if info.is_main:
        builder = begin(folder, KIND, params, refs, options={"processes": info.world})
        if not builder.resumed or not (folder / ZARR).exists():
            root_group = zarr.open_group(str(folder / ZARR), mode="w")
            root_group.create_array(
                ARRAY,
                shape=(n, tokens, d),
                dtype="float16",
                chunks=(1, tokens, d),
                shards=(min(BLOCK, max(n, 1)), tokens, d),
                fill_value=0,
                dimension_names=["frame", "token", "channel"],
            )
            if (folder / LEDGER).exists():
                for f in (folder / LEDGER).glob("*.jsonl"):
                    f.unlink()
        (folder / LEDGER).mkdir(exist_ok=True)
        console.info(f"Teacher targets: computing {n} frames into {folder} (once; reused by later runs).")
    barrier(info)
    done = _done_blocks(folder)
    array = zarr.open_group(str(folder / ZARR), mode="r+")[ARRAY]
    blocks = [b for b in range((n + BLOCK - 1) // BLOCK) if b % info.world == info.rank and b not in done]
    scale = 1.0 / float(data.max_value)
    ledger = folder / LEDGER / f"rank-{info.rank:03d}.jsonl"
    for b in blocks:
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        frames = np.asarray(data.images[lo:hi])
        out = np.empty((hi - lo, tokens, d), dtype=np.float16)
        for s in range(0, hi - lo, batch):
            x = np.stack([resize(f, student.image_size) for f in frames[s : s + batch]]).astype(np.float32)
            x01 = torch.from_numpy(x).to(env.device).mul_(scale).unsqueeze(1)
            with torch.inference_mode():
                out[s : s + len(x)] = teacher(x01, grid).float().cpu().numpy().astype(np.float16)
        array[lo:hi] = out
        with open(ledger, "a") as fh:  # after the data: a block in the ledger is on disk
            fh.write(json.dumps({"block": b, "rows": [lo, hi]}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    barrier(info)
    if info.is_main:
        missing = set(range((n + BLOCK - 1) // BLOCK)) - _done_blocks(folder)
        if missing:
            from cxrjepa.core.errors import CxrjepaError

            raise CxrjepaError(f"The teacher-target cache {folder} misses {len(missing)} blocks; rerun to finish it.")
        fsync_dir(folder)
        builder = begin(folder, KIND, params, refs, options={"processes": info.world})
        builder.counts.update({"frames": n, "blocks": (n + BLOCK - 1) // BLOCK})
        builder.contents.update(
            {
                "array": {"path": f"{ZARR}/{ARRAY}", "shape": [n, tokens, d], "dtype": "float16"},
                "teacher": teacher.describe(),
                "ledger": LEDGER,
            }
        )
        builder.finish(hash_obj({"fingerprint": builder.fingerprint, "frames": n}))
    barrier(info)
    open_artifact(folder, KIND, what="teacher-target cache")
    return CachedTargets(folder)
