"""The embeddings artifact on disk: features.zarr, index.parquet, the ledger of written units, exports.

Layout (docs/artifacts.md, kind ``embeddings``)::

    EMB/manifest.yaml
    EMB/features.zarr/      features (N, D) [+ features_last4 (N, 4D), patch_tokens (N, L, D)]
    EMB/index.parquet       row -> sample_id, patient_key, the dataset's metadata and label columns
    EMB/ledger/rank-RRR.jsonl   units written (resume), one JSON line per unit: unit, rows, digest
                                (part-K-of-N.rank-RRR.jsonl when written by the parts of an array job)
    EMB/features.npy | features.parquet   with --format npy | parquet

Row ``i`` of every array is row ``i`` of ``index.parquet``: the dataset's sample order. The manifest's
``contents`` follow :class:`EmbeddingsContents` (the writer fills it, :class:`Embeddings` and the report check it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from cxrjepa.core.artifact import Artifact, open_artifact
from cxrjepa.core.atomic import fsync_dir
from cxrjepa.core.errors import ArtifactError

ZARR = "features.zarr"
INDEX = "index.parquet"
LEDGER = "ledger"
DIMS = {1: ("sample", "feature"), 2: ("sample", "token", "feature")}


@dataclass
class ArrayEntry:
    """``contents.arrays[name]``: where an array is, its shape and dtype (``grid`` for patch tokens)."""

    path: str
    shape: list[int]
    dtype: str
    grid: list[int] | None = None


@dataclass
class DatasetRef:
    path: str
    fingerprint: str | None = None


@dataclass
class EmbeddingsContents:
    """The embeddings manifest's ``contents``."""

    arrays: dict[str, ArrayEntry]
    index: str
    label_columns: list[str]
    #: ``spec``, ``load``, ``source``, ``fingerprint``, ``embed_dim``, ``patch_size``, ... (docs/artifacts.md)
    encoder: dict[str, Any]
    dataset: DatasetRef
    input_size: int | None = None
    unit_rows: int | None = None
    exports: list[str] = field(default_factory=list)


def unit_rows_for(
    shapes: dict[str, tuple[int, ...]], patch_itemsize: int = 2, budget: int = 64 << 20, cap: int = 256
) -> int:
    """Rows per unit (= rows per output chunk/shard): 256, fewer when patch tokens would exceed ~64 MB."""
    per_row = max(int(np.prod(s)) * (patch_itemsize if len(s) > 1 else 4) for s in shapes.values())
    rows = max(8, min(cap, budget // max(per_row, 1)))
    return 1 << (int(rows).bit_length() - 1)  # a power of two


def create_arrays(
    out: Path, n: int, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str], unit_rows: int
) -> dict[str, zarr.Array]:
    root = zarr.open_group(str(out / ZARR), mode="w")
    arrays = {}
    for name, tail in shapes.items():
        shape = (n, *tail)
        if len(tail) == 1:
            arr = root.create_array(
                name, shape=shape, dtype=dtypes[name], chunks=(unit_rows, *tail), dimension_names=DIMS[1], fill_value=0
            )
        else:  # one sample per chunk, one unit per shard file
            arr = root.create_array(
                name,
                shape=shape,
                dtype=dtypes[name],
                chunks=(1, *tail),
                shards=(unit_rows, *tail),
                dimension_names=DIMS[2],
                fill_value=0,
            )
        arrays[name] = arr
    return arrays


def open_arrays(out: Path, mode: str = "r") -> dict[str, zarr.Array]:
    root = zarr.open_group(str(out / ZARR), mode=mode)
    return {name: arr for name, arr in root.arrays()}


def existing_unit_rows(out: Path, n: int, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str]) -> int | None:
    """Rows per unit of a resumed artifact's arrays, if they are the arrays this run would create."""
    try:
        arrays = open_arrays(out)
    except (FileNotFoundError, ValueError, KeyError, zarr.errors.GroupNotFoundError):
        return None
    if set(arrays) != set(shapes):
        return None
    rows = set()
    for name, arr in arrays.items():
        if tuple(arr.shape) != (n, *shapes[name]) or str(arr.dtype) != dtypes[name]:
            return None
        rows.add(int(arr.shards[0] if arr.shards else arr.chunks[0]))
    return rows.pop() if len(rows) == 1 else None


def balanced_unit_rows(unit_rows: int, n: int, world: int) -> int:
    """Fewer rows per unit when that gives every rank at least ~4 units (small datasets, many GPUs)."""
    share = max(1, n // max(4 * world, 1))
    cap = max(8, 1 << (share.bit_length() - 1))
    return min(unit_rows, cap)


def digest(values: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(values):
        h.update(name.encode())
        h.update(np.ascontiguousarray(values[name]).tobytes())
    return h.hexdigest()[:32]


class Ledger:
    """Units whose rows are written, appended (and fsynced) after the arrays hold them.

    Each writer has its own file: ``rank-RRR.jsonl``, or ``PREFIXrank-RRR.jsonl`` for the ranks of a part of
    an array job (``part-K-of-N.rank-RRR.jsonl``); :meth:`done` reads them all."""

    def __init__(self, out: Path, rank: int = 0, prefix: str = ""):
        self.dir = Path(out) / LEDGER
        self.rank = rank
        self.prefix = prefix

    @property
    def path(self) -> Path:
        return self.dir / f"{self.prefix}rank-{self.rank:03d}.jsonl"

    def append(self, unit: int, lo: int, hi: int, dig: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"unit": int(unit), "rows": [int(lo), int(hi)], "digest": dig}) + "\n"
        with open(self.path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def done(self) -> dict[int, dict]:
        """unit -> its ledger entry, from every rank's file (a torn last line is ignored)."""
        entries: dict[int, dict] = {}
        if not self.dir.is_dir():
            return entries
        for path in sorted(self.dir.glob("*rank-*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    e = json.loads(line)
                    entries[int(e["unit"])] = e
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
        return entries

    def clear(self, prefix: str | None = None) -> None:
        """Forget every unit (``prefix``: only those of the writers with that prefix)."""
        if self.dir.is_dir():
            for p in self.dir.glob(f"{prefix}rank-*.jsonl" if prefix is not None else "*rank-*.jsonl"):
                p.unlink()


def write_index(out: Path, meta: pd.DataFrame, extra: dict[str, np.ndarray] | None = None) -> None:
    idx = meta.reset_index(drop=True).copy()
    idx.insert(0, "row", np.arange(len(idx), dtype=np.int64))
    for k, v in (extra or {}).items():
        idx[k] = v
    tmp = out / f".{INDEX}.tmp"
    idx.to_parquet(tmp, index=False)
    os.replace(tmp, out / INDEX)
    fsync_dir(out)


def export_npy(out: Path, arrays: dict[str, zarr.Array], unit_rows: int) -> list[str]:
    """``NAME.npy`` per array (memory-mappable with ``np.load(..., mmap_mode="r")``), copied unit by unit."""
    files = []
    for name, arr in arrays.items():
        tmp = out / f".{name}.npy.tmp"
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=arr.dtype, shape=arr.shape)
        for lo in range(0, arr.shape[0], unit_rows):
            mm[lo : lo + unit_rows] = arr[lo : lo + unit_rows]
        mm.flush()
        del mm
        os.replace(tmp, out / f"{name}.npy")
        files.append(f"{name}.npy")
    return files


def export_parquet(out: Path, arrays: dict[str, zarr.Array], sample_ids: np.ndarray, unit_rows: int) -> list[str]:
    """``features.parquet``: sample_id plus one fixed-size list column per pooled array (not patch tokens)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pooled = {k: a for k, a in arrays.items() if a.ndim == 2}
    tmp = out / ".features.parquet.tmp"
    writer = None
    try:
        for lo in range(0, len(sample_ids), unit_rows):
            cols = {"sample_id": pa.array(sample_ids[lo : lo + unit_rows].astype(str))}
            for name, arr in pooled.items():
                block = np.asarray(arr[lo : lo + unit_rows])
                cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
            table = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out / "features.parquet")
    return ["features.parquet"]


class Embeddings:
    """A complete embeddings artifact: ``index`` (DataFrame), ``array(name)`` (numpy), encoder and dataset refs."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.path = artifact.path
        self.contents: EmbeddingsContents = artifact.contents_as(EmbeddingsContents)

    @classmethod
    def open(cls, path: str | Path) -> Embeddings:
        return cls(open_artifact(path, "embeddings"))

    @cached_property
    def index(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / INDEX)

    @property
    def arrays(self) -> list[str]:
        return list(self.contents.arrays)

    def array(self, name: str = "features") -> np.ndarray:
        if name not in self.arrays:
            have = ", ".join(self.arrays) or "none"
            raise ArtifactError(
                f"The embeddings '{self.path}' hold no '{name}' (they hold {have}); re-run 'cxrjepa embed' with it."
            )
        return np.asarray(open_arrays(self.path)[name][:])

    @property
    def label_columns(self) -> list[str]:
        return list(self.contents.label_columns)

    @property
    def encoder(self) -> dict:
        return dict(self.contents.encoder)

    @property
    def dataset_path(self) -> Path | None:
        return Path(self.contents.dataset.path)

    @property
    def config(self) -> dict:
        return dict(self.artifact.params)
