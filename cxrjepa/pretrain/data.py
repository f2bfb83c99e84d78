"""The pretraining data stream: which frames each step sees, their crops, and their masks.

Design: every random choice is a pure function of ``(seed, step, position in the global batch)``.

* :class:`StepSampler` walks an endless stream made of one seeded permutation of the frames per epoch;
  global step ``s`` takes stream positions ``[s * B, (s + 1) * B)``. Each process takes its slice of that
  global batch and splits it into micro-batches. Resuming at step ``s`` is starting the sampler at ``s``.
* :class:`PretrainImages` crops sample ``(step, pos, frame)`` with a generator seeded by
  ``(seed, step, pos)``, in the stored dtype; :class:`Normalizer` turns batches into model input on the
  training device.
* :class:`Collator` builds the masks of the whole global batch from ``(seed, step)`` and keeps its rows.

So the data a run sees does not depend on the number of processes, loader workers or accumulation
steps, and an interrupted run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cxrjepa.core import console
from cxrjepa.core.errors import ConfigError
from cxrjepa.data.loader import worker_init
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.pretrain.augment import AugmentConfig, RandomResizedCrop, resize
from cxrjepa.pretrain.masks import Masks

Key = tuple[int, int, int]  # (global step, position in the global batch, frame index)

_SAMPLE_STREAM = 1
_MASK_STREAM = 2
_ORDER_STREAM = 3


def sample_rng(seed: int, step: int, pos: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SAMPLE_STREAM, step, pos])


def mask_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, _MASK_STREAM, step])


class StepSampler(Sampler):
    """Yields the micro-batches of keys of one process, from ``start_step`` to ``total_steps``."""

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        seed: int,
        total_steps: int,
        *,
        start_step: int = 0,
        world: int = 1,
        rank: int = 0,
        accum: int = 1,
    ):
        if num_samples < 1:
            raise ConfigError("The dataset has no frames to train on.")
        if global_batch % (world * accum):
            raise ConfigError(
                f"'train.batch_size' ({global_batch}) must be divisible by processes x runtime.grad_accum "
                f"({world} x {accum})."
            )
        self.n = num_samples
        self.batch = global_batch
        self.seed = seed
        self.total = total_steps
        self.start = start_step
        self.world, self.rank, self.accum = world, rank, accum
        self.micro = global_batch // (world * accum)
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            perm = self._perms[epoch] = np.random.default_rng([self.seed, _ORDER_STREAM, epoch]).permutation(self.n)
        return perm

    def global_indices(self, step: int) -> np.ndarray:
        """Frame indices of the global batch of ``step`` (B,)."""
        stream = np.arange(step * self.batch, (step + 1) * self.batch, dtype=np.int64)
        epochs, offsets = np.divmod(stream, self.n)
        out = np.empty(self.batch, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.permutation(int(e))[offsets[sel]]
        return out

    def epoch_at(self, step: int) -> float:
        return step * self.batch / self.n

    def micro_batches(self, step: int) -> list[list[Key]]:
        idx = self.global_indices(step)
        share = self.batch // self.world
        out = []
        for m in range(self.accum):
            lo = self.rank * share + m * self.micro
            out.append([(step, p, int(idx[p])) for p in range(lo, lo + self.micro)])
        return out

    def __iter__(self):
        for step in range(self.start, self.total):
            yield from self.micro_batches(step)

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.accum


class Normalizer:
    """Stored pixels -> model input, ``(stored / divide_by - mean) / std`` (the dataset's statistics).

    Applied on the training device: batches travel as stored integers (4x less to copy than float32).
    """

    def __init__(self, normalization: dict):
        self.divide_by = float(normalization["divide_by"])
        self.mean = float(normalization["mean"])
        self.std = float(normalization["std"])

    def __call__(self, stored: torch.Tensor) -> torch.Tensor:
        x = stored.float()
        return x.mul_(1.0 / (self.divide_by * self.std)).sub_(self.mean / self.std)


class FrameCache:
    """An uncompressed copy of a dataset's frames in one local file, read by memory map.

    Random single-frame reads from a sharded zarr store cost ~2-3 ms each in zarr's Python machinery, which
    caps a loader worker near 300-400 frames/s; from the memory map they cost microseconds. The copy is made
    once per node (frames x H x W x itemsize bytes, named by the dataset's content fingerprint, so a changed
    dataset gets a new file) by reading whole shards in order.
    """

    def __init__(self, folder: str | Path, data: DatasetArtifact):
        self.shape = tuple(int(x) for x in data.images.shape)
        self.dtype = np.dtype(data.images.dtype)
        digest = data.artifact.content_fingerprint.split(":")[-1][:16]
        self.path = Path(folder) / f"cxrjepa-frames-{digest}-{'x'.join(map(str, self.shape))}-{self.dtype.name}.raw"
        self._data = data
        self._map: np.memmap | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @classmethod
    def resolve(cls, setting: str | None, data: DatasetArtifact) -> "FrameCache | None":
        """The cache ``runtime.frame_cache`` asks for: a folder, ``auto`` (the temporary folder, e.g. a
        cluster job's node-local ``$TMPDIR``, when it has 1.5x the room) or nothing."""
        if not setting:
            return None
        folder = Path(tempfile.gettempdir()) if setting == "auto" else Path(setting)
        cache = cls(folder, data)
        if setting == "auto" and not cache.path.is_file():
            free = shutil.disk_usage(folder).free
            if free < 1.5 * cache.nbytes:
                console.warn(
                    f"No room for the frame cache in {folder} ({cache.nbytes / 1e9:.1f} GB needed, "
                    f"{free / 1e9:.1f} GB free); reading the zarr store directly (slower loader)."
                )
                return None
        return cache

    def build(self, block: int = 256) -> bool:
        """Write the file if it is not there yet; True when it was written now."""
        if self.path.is_file() and self.path.stat().st_size == self.nbytes:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        mm = np.memmap(tmp, dtype=self.dtype, mode="w+", shape=self.shape)
        images = self._data.images
        for start in range(0, self.shape[0], block):
            mm[start : start + block] = images[start : start + block]
        mm.flush()
        del mm
        os.replace(tmp, self.path)
        return True

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_map"] = None
        return state

    def __getitem__(self, i: int) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        return self._map[i]


class PretrainImages(Dataset):
    """Frames of a dataset artifact as random-resized crops in the stored dtype, addressed by :data:`Key`.

    Items: ``{"image": (1, S, S) uint8/uint16, "step", "pos", "index"}``; normalise with :class:`Normalizer`.
    Frames come from the zarr store, or from a :class:`FrameCache` when one is given.
    """

    def __init__(self, data: DatasetArtifact, size: int, augment: AugmentConfig, seed: int,
                 cache: FrameCache | None = None):
        self.data = data
        self.crop = RandomResizedCrop(size, augment)
        self.seed = seed
        self.cache = cache

    def __len__(self) -> int:
        return int(self.data.images.shape[0])

    def __getitem__(self, key: Key) -> dict:
        step, pos, idx = key
        source = self.cache if self.cache is not None else self.data.images
        frame = np.asarray(source[int(idx)])  # one chunk read (faster in zarr 3 than a fancy index)
        out = self.crop(frame, sample_rng(self.seed, step, pos))
        return {"image": out[None], "step": step, "pos": pos, "index": idx}


def training_images(config, data: DatasetArtifact, cache: FrameCache | None = None) -> Dataset:
    """The dataset a run trains on, addressed by :data:`Key`: frames as random-resized crops.

    The one place that decides what a sample is; clip (video) sampling plugs in here.
    """
    return PretrainImages(data, config.model.image_size, config.augment, config.train.seed, cache)


class Collator:
    """Stacks crops and attaches the masks of their rows of the global batch (picklable for workers)."""

    def __init__(self, masks: Callable[[np.random.Generator, int], Masks] | None, global_batch: int, seed: int):
        self.masks = masks
        self.global_batch = global_batch
        self.seed = seed
        self._cache: tuple[int, Masks] | None = None

    def global_masks(self, step: int) -> Masks:
        if self._cache is None or self._cache[0] != step:
            self._cache = (step, self.masks(mask_rng(self.seed, step), self.global_batch))
        return self._cache[1]

    def __call__(self, items: list[dict]) -> dict:
        step = int(items[0]["step"])
        out = {
            "images": torch.from_numpy(np.stack([it["image"] for it in items])),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
            "step": step,
        }
        if self.masks is not None:
            rows = self.global_masks(step).rows(np.asarray([it["pos"] for it in items]))
            out["context"] = torch.from_numpy(rows.context)
            out["targets"] = torch.from_numpy(rows.targets)
        return out


def default_workers(procs_per_node: int = 1) -> int:
    """Loader workers per training process: the node's cores shared out, one left for the process, 1..8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // max(procs_per_node, 1) - 1))


def build_loader(
    dataset: PretrainImages,
    sampler: StepSampler,
    collator: Collator,
    *,
    workers: int,
    pin_memory: bool = False,
    prefetch: int = 4,
    persistent: bool = True,
) -> DataLoader:
    kwargs = {}
    if workers > 0:
        kwargs = {"prefetch_factor": prefetch, "persistent_workers": persistent, "worker_init_fn": worker_init}
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collator, num_workers=workers, pin_memory=pin_memory, **kwargs
    )


def fixed_batch(data: DatasetArtifact, count: int, size: int, normalization: dict) -> torch.Tensor:
    """``count`` frames spread evenly over the dataset, whole (no crop), resized and normalised: (N, 1, S, S)."""
    n = int(data.images.shape[0])
    idx = np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(np.int64))
    stored = np.stack([resize(np.asarray(data.images[int(i)]), size)[None] for i in idx])
    return Normalizer(normalization)(torch.from_numpy(stored))
