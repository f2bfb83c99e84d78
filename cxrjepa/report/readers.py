"""Bounded reads of artifact outputs: the report samples, it never loads a whole image or feature array.

* metadata tables are streamed batch by batch (only the columns asked for) and aggregated;
* images are read one frame (one zarr chunk) at a time for a handful of sampled rows;
* features are read for a sampled, sorted set of rows (``oindex``), in blocks;

Run metrics logs and probe outputs are read through their kinds' layouts (``cxrjepa.pretrain.layout``,
``cxrjepa.probe.layout``), which bound their reads the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cxrjepa.data import layout

# ---------------------------------------------------------------- tables


def parquet_columns(path: Path) -> list[str]:
    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError):
        return []


def read_columns(path: Path, columns: list[str], rows: np.ndarray | None = None) -> pd.DataFrame:
    """The present ``columns`` of a parquet table (all rows, or the sorted ``rows``)."""
    present = [c for c in columns if c in set(parquet_columns(path))]
    if not present:
        return pd.DataFrame(index=range(0 if rows is None else len(rows)))
    table = pq.read_table(path, columns=present)
    if rows is not None:
        table = table.take(np.asarray(rows, dtype=np.int64))
    return table.to_pandas()


@dataclass
class ColumnSummary:
    """Exact value counts (categorical) or a histogram (numeric) of one metadata column."""

    name: str
    counts: Counter = field(default_factory=Counter)
    missing: int = 0
    numeric: bool = False
    bins: np.ndarray | None = None
    hist: np.ndarray | None = None
    total: int = 0
    mean: float = float("nan")


def summarize_columns(
    path: Path,
    categorical: list[str],
    numeric: dict[str, np.ndarray],
    batch_size: int = 65536,
) -> dict[str, ColumnSummary]:
    """Stream a parquet table and count categories / bin numbers without holding it in memory."""
    names = set(parquet_columns(path))
    cats = [c for c in categorical if c in names]
    nums = [c for c in numeric if c in names]
    out: dict[str, ColumnSummary] = {c: ColumnSummary(c) for c in cats}
    sums: dict[str, float] = {}
    for c in nums:
        out[c] = ColumnSummary(c, numeric=True, bins=numeric[c], hist=np.zeros(len(numeric[c]) - 1, np.int64))
        sums[c] = 0.0
    if not out:
        return out
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_size, columns=cats + nums):
        df = batch.to_pandas()
        for c in cats:
            s = df[c]
            blank = s.isna() | (s.astype(str).str.strip() == "")
            out[c].missing += int(blank.sum())
            out[c].counts.update(s[~blank].astype(str).tolist())
            out[c].total += len(s)
        for c in nums:
            v = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
            ok = np.isfinite(v)
            summ = out[c]
            summ.missing += int((~ok).sum())
            summ.total += len(v)
            h, _ = np.histogram(np.clip(v[ok], summ.bins[0], summ.bins[-1]), bins=summ.bins)
            summ.hist += h
            sums[c] += float(v[ok].sum())
    for c in nums:
        seen = out[c].total - out[c].missing
        out[c].mean = sums[c] / seen if seen else float("nan")
    return out


def count_failures(path: Path, limit: int = 1_000_000) -> Counter:
    """Rejections by reason from a failure ledger (JSON lines), reading at most ``limit`` lines."""
    counts: Counter = Counter()
    if not path.is_file():
        return counts
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            if i >= limit:
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            reason = rec.get("reason") if isinstance(rec, dict) else None
            counts[_short_reason(str(reason or "unknown"))] += 1
    return counts


def _short_reason(reason: str) -> str:
    """The kind of a rejection, without details that could name a file (text before the first colon)."""
    return reason.split(":", 1)[0].strip()[:80] or "unknown"


# ---------------------------------------------------------------- sampling


def sample_rows(n: int, k: int, seed: int = 0, strata: np.ndarray | None = None) -> np.ndarray:
    """Up to ``k`` sorted row numbers out of ``n``; with ``strata``, spread evenly over its values."""
    if n <= 0 or k <= 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if strata is None:
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    strata = np.asarray(strata).astype(str)
    groups = {v: rng.permutation(np.flatnonzero(strata == v)) for v in sorted(set(strata.tolist()))}
    picked: list[int] = []
    depth = 0
    while len(picked) < k:
        added = False
        for rows in groups.values():
            if depth < len(rows) and len(picked) < k:
                picked.append(int(rows[depth]))
                added = True
        if not added:
            break
        depth += 1
    return np.sort(np.asarray(picked, np.int64))


# ---------------------------------------------------------------- datasets


@dataclass
class FrameLocator:
    """Where each sample's frames are, read from the metadata (two integer columns)."""

    start: np.ndarray
    count: np.ndarray
    sample_id: np.ndarray

    def middle(self, row: int) -> int:
        return int(self.start[row] + self.count[row] // 2)


def frame_locator(dataset: Path) -> FrameLocator | None:
    meta = dataset / layout.METADATA
    df = read_columns(meta, ["sample_id", "frame_start", "frame_count"])
    if "frame_start" not in df or "sample_id" not in df:
        return None
    count = df["frame_count"].to_numpy(np.int64) if "frame_count" in df else np.ones(len(df), np.int64)
    return FrameLocator(df["frame_start"].to_numpy(np.int64), count, df["sample_id"].astype(str).to_numpy())


def open_images(dataset: Path):
    """The dataset's ``images`` zarr array (lazy), or ``None``."""
    import zarr

    try:
        group = zarr.open_group(str(dataset / layout.ZARR), mode="r")
        return group[layout.IMAGES]
    except Exception:  # a missing or unreadable store: the caller leaves the part out
        return None


def read_frames(images, frames: list[int]) -> list[np.ndarray]:
    """Frames one by one (one chunk each); never the whole array."""
    return [np.asarray(images[int(f)]) for f in frames]


def to_unit(img: np.ndarray) -> np.ndarray:
    """A stored frame as float in [0, 1] (by its dtype's range)."""
    img = np.asarray(img)
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    return ((img - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


# ---------------------------------------------------------------- embeddings


def open_features(emb, name: str = "features"):
    """The (lazy) zarr array ``name`` of an embeddings reader (:class:`cxrjepa.embed.store.Embeddings`),
    where its manifest says it is; ``None`` when it cannot be opened."""
    import zarr

    entry = emb.contents.arrays.get(name)
    if entry is None:
        return None
    try:
        return zarr.open_array(str(emb.path / entry.path), mode="r")
    except Exception:  # a missing or unreadable store: the caller leaves the embeddings out
        return None


def read_feature_rows(features, rows: np.ndarray, block: int = 4096) -> np.ndarray:
    """Rows ``rows`` (sorted) of an (N, D) array as float32, read in blocks of at most ``block`` rows."""
    rows = np.asarray(rows, np.int64)
    out = np.empty((len(rows), int(features.shape[1])), np.float32)
    for s in range(0, len(rows), block):
        sel = rows[s : s + block]
        out[s : s + len(sel)] = np.asarray(features.oindex[sel, :], dtype=np.float32)
    return out
