"""Reading (and, for small in-memory sets, writing) dataset artifacts.

The zarr store is opened lazily, so a :class:`DatasetArtifact` can be pickled into DataLoader workers
(fork or spawn) and each worker opens its own handle.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from cxrjepa.core.artifact import Artifact, open_artifact
from cxrjepa.data import layout


def create_frames_array(
    root: zarr.Group, name: str, n_frames: int, size: int, dtype: str, shard_frames: int = layout.SHARD_FRAMES
):
    """A sharded (frames, size, size) array: one frame per chunk, ``shard_frames`` frames per shard file."""
    shard = max(1, min(shard_frames, max(n_frames, 1)))
    return root.create_array(
        name,
        shape=(n_frames, size, size),
        dtype=dtype,
        chunks=(1, size, size),
        shards=(shard, size, size),
        dimension_names=layout.DIMENSION_NAMES,
        fill_value=0,
        overwrite=True,
    )


class DatasetArtifact:
    """A complete dataset artifact: ``.meta`` (one row per sample), ``.images`` (frames), ``.frames(i)``;
    ``.contents`` and ``.counts``: its manifest's, checked against :mod:`cxrjepa.data.layout`'s schema."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.path = artifact.path
        self.contents: layout.DatasetContents = artifact.contents_as(layout.DatasetContents)
        self.counts: layout.DatasetCounts = artifact.counts_as(layout.DatasetCounts)
        self._group = None

    @classmethod
    def open(cls, path: str | Path) -> DatasetArtifact:
        return cls(open_artifact(path, "dataset"))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"] = None  # each process opens its own zarr handle
        state.pop("images", None)
        state.pop("masks", None)
        state.pop("meta", None)  # the table is re-read on demand; workers get compact arrays instead
        return state

    @property
    def manifest(self) -> dict:
        return self.artifact.manifest

    @cached_property
    def meta(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / layout.METADATA)

    def __len__(self) -> int:
        return int(self.counts.samples)

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(str(self.path / layout.ZARR), mode="r")
        return self._group

    @cached_property
    def images(self) -> zarr.Array:
        return self.group[layout.IMAGES]

    @cached_property
    def masks(self) -> zarr.Array | None:
        return self.group.get(layout.MASKS)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def max_value(self) -> float:
        return float(np.iinfo(np.dtype(self.images.dtype)).max)

    @cached_property
    def frame_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame_start, frame_count) per sample as int64 arrays (cheap to share with workers)."""
        return (
            self.meta["frame_start"].to_numpy(np.int64),
            self.meta["frame_count"].to_numpy(np.int64),
        )

    @property
    def sample_ids(self) -> np.ndarray:
        return self.meta["sample_id"].to_numpy()

    def frames(self, i: int, start: int = 0, count: int | None = None) -> np.ndarray:
        """Frames of sample ``i`` as (T, H, W) in the stored dtype."""
        fs, fc = self.frame_index
        n = int(fc[i])
        count = n - start if count is None else count
        s = int(fs[i]) + start
        return self.images[s : s + count]

    def image(self, i: int) -> np.ndarray:
        """The (middle frame of the) sample ``i`` as (H, W)."""
        fs, fc = self.frame_index
        return self.images[int(fs[i] + fc[i] // 2)]

    @property
    def label_columns(self) -> list[str]:
        return list(self.contents.label_columns)

    @property
    def normalization(self) -> dict:
        """Intensity statistics of the stored images (``divide_by``, ``mean``, ``std``)."""
        norm = dict(self.contents.normalization or {})
        norm.setdefault("divide_by", self.max_value)
        norm.setdefault("mean", 0.5)
        norm.setdefault("std", 0.25)
        return norm


def intensity_stats(images: np.ndarray | zarr.Array, max_value: float, sample: int = 256, seed: int = 0) -> dict:
    """Mean and std of stored frames (a random sample of at most ``sample`` frames), in [0, 1] units."""
    n = images.shape[0]
    if n == 0:
        return {"divide_by": max_value, "mean": 0.5, "std": 0.25}
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
    vals = np.stack([np.asarray(images[int(i)], dtype=np.float64)[::4, ::4] for i in idx]) / max_value
    return {"divide_by": float(max_value), "mean": float(vals.mean()), "std": float(max(vals.std(), 1e-3))}


def write_arrays(out: str | Path, images: np.ndarray, meta: pd.DataFrame, masks: np.ndarray | None = None) -> None:
    """Write frames, optional masks and the metadata table of a dataset (not the manifest).

    For in-memory sets (tests, demo); ``cxrjepa ingest`` streams shard by shard instead.
    """
    out = Path(out)
    root = zarr.open_group(str(out / layout.ZARR), mode="w")
    size = images.shape[-1]
    arr = create_frames_array(root, layout.IMAGES, images.shape[0], size, str(images.dtype))
    arr[:] = images
    if masks is not None:
        marr = create_frames_array(root, layout.MASKS, masks.shape[0], size, "uint8")
        marr[:] = masks
    meta.to_parquet(out / layout.METADATA, index=False)


def default_meta(n: int, frame_counts: Sequence[int] | None = None) -> pd.DataFrame:
    counts = np.asarray(frame_counts if frame_counts is not None else np.ones(n), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return pd.DataFrame(
        {
            "sample_id": [f"{i:016x}" for i in range(n)],
            "patient_key": [f"p{i:015x}" for i in range(n)],
            "frame_start": starts,
            "frame_count": counts,
        }
    )


def write_dataset(
    out: str | Path,
    images: np.ndarray,
    meta: pd.DataFrame | None = None,
    *,
    masks: np.ndarray | None = None,
    label_columns: Sequence[str] = (),
    params: dict | None = None,
) -> Artifact:
    """A complete dataset artifact from in-memory frames (tests, notebooks, small demos)."""
    from cxrjepa.core.artifact import begin
    from cxrjepa.core.fingerprint import hash_bytes
    from cxrjepa.core.schema import check_written

    meta = default_meta(len(images)) if meta is None else meta
    builder = begin(out, "dataset", params or {"source": "in-memory"}, force=True)
    write_arrays(builder.path, images, meta, masks)
    max_value = float(np.iinfo(images.dtype).max)
    builder.counts.update(
        {"inputs": int(len(meta)), "samples": int(len(meta)), "frames": int(len(images)), "rejected": 0}
    )
    builder.contents.update(
        {
            "images": {
                "path": f"{layout.ZARR}/{layout.IMAGES}",
                "shape": list(images.shape),
                "dtype": str(images.dtype),
            },
            "metadata": layout.METADATA,
            "label_columns": list(label_columns),
            "normalization": intensity_stats(images, max_value),
            "masks": masks is not None,
        }
    )
    check_written(layout.DatasetContents, builder.contents, what="a dataset manifest's contents")
    return builder.finish(hash_bytes(images.tobytes() + pd.util.hash_pandas_object(meta, index=False).values.tobytes()))
