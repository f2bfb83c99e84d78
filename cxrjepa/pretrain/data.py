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

What is an *item* (:func:`training_items`): a frame for image encoders (every frame of every sample, stills
and clip frames alike), a sample for clip encoders (:class:`PretrainClips` draws a window of
``model.frames`` frames, every ``clips.stride``-th, at a random start, with one crop for all its frames).
Objectives with model selection hold out a seeded share of the *patients* (:func:`split_holdout`).
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
_HOLDOUT_STREAM = 5


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
    def resolve(cls, setting: str | None, data: DatasetArtifact) -> FrameCache | None:
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

    Items: ``{"image": (1, S, S) uint8/uint16, "step", "pos", "index"}`` (``index``: the frame); normalise with
    :class:`Normalizer`. Frames come from the zarr store, or from a :class:`FrameCache` when one is given.
    ``items`` maps the sampler's indices to frames (default: every frame); ``extras(frames)`` adds per-frame
    arrays (cached teacher targets). ``stream`` separates the random draws of held-out sets from training's.
    """

    def __init__(
        self,
        data: DatasetArtifact,
        size: int,
        augment: AugmentConfig,
        seed: int,
        cache: FrameCache | None = None,
        *,
        items: np.ndarray | None = None,
        extras: Callable[[np.ndarray], dict] | None = None,
        stream: int = _SAMPLE_STREAM,
    ):
        self.data = data
        self.crop = RandomResizedCrop(size, augment)
        self.seed = seed
        self.cache = cache
        self.items = None if items is None else np.asarray(items, dtype=np.int64)
        self.extras = extras
        self.stream = stream

    def __len__(self) -> int:
        return int(self.data.images.shape[0]) if self.items is None else len(self.items)

    def rng(self, step: int, pos: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.stream, step, pos])

    def source(self):
        return self.cache if self.cache is not None else self.data.images

    def _extras(self, frames: np.ndarray, squeeze: bool) -> dict:
        if self.extras is None:
            return {}
        return {k: (v[0] if squeeze else v) for k, v in self.extras(frames).items()}

    def __getitem__(self, key: Key) -> dict:
        step, pos, i = key
        idx = int(i) if self.items is None else int(self.items[int(i)])
        frame = np.asarray(self.source()[idx])  # one chunk read (faster in zarr 3 than a fancy index)
        out = self.crop(frame, self.rng(step, pos))
        return {
            "image": out[None],
            "step": step,
            "pos": pos,
            "index": idx,
            **self._extras(np.array([idx]), squeeze=True),
        }


def clip_frames(start: int, count: int, length: int, stride: int, offset: int) -> np.ndarray:
    """Frame indices of the clip of ``length`` frames, every ``stride``-th, from ``offset`` in the sample
    ``[start, start + count)``; past the sample's end the last frame repeats (stills: a static clip)."""
    return start + np.minimum(offset + np.arange(length, dtype=np.int64) * stride, count - 1)


def clip_offset(count: int, length: int, stride: int, rng: np.random.Generator | None) -> int:
    """A random start that keeps the clip inside the sample (the middle one without ``rng``)."""
    room = count - ((length - 1) * stride + 1)
    if room <= 0:
        return 0
    return int(rng.integers(0, room + 1)) if rng is not None else room // 2


class PretrainClips(PretrainImages):
    """Clips of a dataset's samples, addressed by :data:`Key` with the sample as index.

    Items: ``{"image": (1, T, S, S), "frames": (T,) frame indices, "step", "pos", "index"}``: ``T`` =
    ``length`` frames every ``stride``-th from a random start, one random-resized crop (and flip) for all.
    """

    def __init__(
        self,
        data: DatasetArtifact,
        size: int,
        augment: AugmentConfig,
        seed: int,
        length: int,
        stride: int,
        cache: FrameCache | None = None,
        *,
        items: np.ndarray | None = None,
        extras: Callable[[np.ndarray], dict] | None = None,
        stream: int = _SAMPLE_STREAM,
        random_window: bool = True,
    ):
        super().__init__(data, size, augment, seed, cache, items=items, extras=extras, stream=stream)
        self.length, self.stride = int(length), int(stride)
        self.random_window = random_window
        self.starts, self.counts = data.frame_index

    def __len__(self) -> int:
        return len(self.starts) if self.items is None else len(self.items)

    def __getitem__(self, key: Key) -> dict:
        step, pos, i = key
        sample = int(i) if self.items is None else int(self.items[int(i)])
        rng = self.rng(step, pos)
        start, count = int(self.starts[sample]), int(self.counts[sample])
        offset = clip_offset(count, self.length, self.stride, rng if self.random_window else None)
        frames = clip_frames(start, count, self.length, self.stride, offset)
        lo, hi = int(frames[0]), int(frames[-1])
        slab = np.asarray(self.source()[lo : hi + 1])  # consecutive frames: one slab read
        top, left, h, w = self.crop.params(rng, slab.shape[1], slab.shape[2])
        flip = self.crop.config.hflip and rng.random() < 0.5
        out = np.stack(
            [resize(np.ascontiguousarray(slab[f - lo, top : top + h, left : left + w]), self.crop.size) for f in frames]
        )
        if flip:
            out = out[:, :, ::-1]
        return {
            "image": np.ascontiguousarray(out)[None],
            "frames": frames,
            "step": step,
            "pos": pos,
            "index": sample,
            **self._extras(frames, squeeze=False),
        }


def training_items(config, data: DatasetArtifact) -> tuple[np.ndarray, np.ndarray]:
    """``(items, patients)``: what a run samples -- frames for image encoders, samples for clip encoders --
    and each item's patient (``patient_key``; a sample without one is its own patient)."""
    starts, counts = data.frame_index
    meta = data.meta
    keys = meta["patient_key"].astype("string").fillna("") if "patient_key" in meta else None
    samples = np.arange(len(starts), dtype=np.int64)
    if keys is None:
        patient = samples.copy()
    else:
        own = np.asarray(["\0" + str(i) for i in samples], dtype=object)
        vals = keys.to_numpy(dtype=object)
        patient = np.unique(np.where(vals == "", own, vals), return_inverse=True)[1].astype(np.int64)
    if config.model.is_clip:
        return samples, patient
    n_frames = int(data.images.shape[0])
    rows = np.repeat(samples, counts)  # frame -> sample, wherever each sample's frames are stored
    offsets = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    frame_patient = np.full(n_frames, -1, dtype=np.int64)
    frame_patient[starts[rows] + offsets] = patient[rows]
    orphans = frame_patient < 0  # frames of no sample (none in ingest's datasets): each its own group
    frame_patient[orphans] = patient.max(initial=-1) + 1 + np.arange(int(orphans.sum()))
    return np.arange(n_frames, dtype=np.int64), frame_patient


def split_holdout(items: np.ndarray, patients: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, holdout)`` items: whole patients, in a seeded order, until ``fraction`` of the items are
    held out (at least one patient; none when ``fraction`` is 0). Both keep the items' order."""
    if fraction <= 0 or len(items) == 0:
        return items, items[:0]
    groups, inverse, sizes = np.unique(patients, return_inverse=True, return_counts=True)
    if len(groups) < 2:
        raise ConfigError(
            "Model selection needs at least two patients (or samples) to hold one out; "
            "set salt.holdout=0 and salt.export=last."
        )
    order = np.random.default_rng([seed, _HOLDOUT_STREAM]).permutation(len(groups))
    target = fraction * len(items)
    held = np.zeros(len(groups), dtype=bool)
    total = 0
    for g in order:
        if total >= target or held.sum() >= len(groups) - 1:
            break
        held[g] = True
        total += int(sizes[g])
    mask = held[inverse]
    return items[~mask], items[mask]


def training_images(
    config,
    data: DatasetArtifact,
    cache: FrameCache | None = None,
    *,
    items: np.ndarray | None = None,
    extras: Callable[[np.ndarray], dict] | None = None,
) -> Dataset:
    """The dataset a run trains on, addressed by :data:`Key`: crops of frames, or clips of samples for clip
    encoders (``model.frames > 1``). ``items``: the frames / samples to draw from (default: all)."""
    model = config.model
    if model.is_clip:
        return PretrainClips(
            data,
            model.image_size,
            config.augment,
            config.train.seed,
            model.frames,
            config.clips.stride,
            cache,
            items=items,
            extras=extras,
        )
    return PretrainImages(data, model.image_size, config.augment, config.train.seed, cache, items=items, extras=extras)


def evaluation_images(
    config,
    data: DatasetArtifact,
    items: np.ndarray,
    cache: FrameCache | None = None,
    *,
    extras: Callable[[np.ndarray], dict] | None = None,
) -> Dataset:
    """Fixed inputs for held-out evaluation: whole frames (no crop, no flip) and middle clip windows."""
    whole = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False)
    model = config.model
    if model.is_clip:
        return PretrainClips(
            data,
            model.image_size,
            whole,
            config.train.seed,
            model.frames,
            config.clips.stride,
            cache,
            items=items,
            extras=extras,
            stream=_HOLDOUT_STREAM,
            random_window=False,
        )
    return PretrainImages(
        data, model.image_size, whole, config.train.seed, cache, items=items, extras=extras, stream=_HOLDOUT_STREAM
    )


_ITEM_KEYS = {"image", "index", "step", "pos"}


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
        for key in items[0].keys() - _ITEM_KEYS:  # per-item arrays: clip frame indices, cached targets
            out[key] = torch.from_numpy(np.stack([it[key] for it in items]))
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


def fixed_batch(data: DatasetArtifact, count: int, size: int, normalization: dict, config=None) -> torch.Tensor:
    """``count`` frames spread evenly over the dataset, whole (no crop), resized and normalised: (N, 1, S, S).

    With a clip encoder's ``config``: ``count`` samples' middle clips, (N, 1, T, S, S)."""
    if config is not None and config.model.is_clip:
        n = len(data.frame_index[0])
        idx = np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(np.int64))
        ds = evaluation_images(config, data, idx)
        stored = np.stack([ds[(0, j, j)]["image"] for j in range(len(idx))])
        return Normalizer(normalization)(torch.from_numpy(stored))
    n = int(data.images.shape[0])
    idx = np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(np.int64))
    stored = np.stack([resize(np.asarray(data.images[int(i)]), size)[None] for i in idx])
    return Normalizer(normalization)(torch.from_numpy(stored))


def spread(items: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of ``items``, evenly spread (all of them when there are fewer)."""
    if len(items) <= count:
        return items
    return items[np.unique(np.linspace(0, len(items) - 1, num=count).round().astype(np.int64))]
