"""Assembling the dataset from the finished work units (the last step of ``cxrjepa ingest``).

1. Units are read in unit order, so samples keep the sorted input order whatever the workers did; the
   units of the parts of an array job (cxrjepa.ingest.parts) are merged back into that order.
2. Duplicates are dropped deterministically, first in input order wins: the same instance (SOPInstanceUID,
   or the same file bytes for non-DICOM) and then the same stored pixels; each is ledgered with the input
   it repeats.
3. Frame offsets are laid out densely; the final ``images`` array is written shard by shard (64 frames,
   one call per shard), the shards split into contiguous ranges, one range per worker task. With
   ``--masks`` the ``masks`` array (uint8 label maps, same shape and shards) is written in the same loop,
   shard for shard; frames without a mask stay 0 and ``has_mask`` says which samples have one.
4. metadata.parquet and failures.jsonl are written; the caller writes the manifest last.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from cxrjepa.core.atomic import atomic_write_text
from cxrjepa.core.fingerprint import hash_bytes
from cxrjepa.data import layout
from cxrjepa.data.store import create_frames_array
from cxrjepa.ingest import ledger
from cxrjepa.ingest.staging import Staging
from cxrjepa.ingest.table import COLUMNS, PRIVATE


@dataclass
class Assembled:
    meta: pd.DataFrame  # kept samples, table columns + private ones
    records: list[dict]  # ledger records (rejected, skipped, duplicate, ignored), in input order
    ignored: int = 0  # how many of them are ignored


INTERNAL = ["_store", "_unit", "_local_start", "_order", "_mask_local"]


def _frame(rows: list[dict], store: int, unit: int) -> pd.DataFrame:
    columns = list(COLUMNS) + list(PRIVATE) + INTERNAL
    df = pd.DataFrame(rows, columns=columns)
    df["_store"] = store
    df["_unit"] = unit
    return df


def collect(stores: Sequence[tuple[Staging, int]], dedupe: bool) -> Assembled:
    """The kept samples (a table in input order, frame offsets laid out) and every ledger record.

    ``stores``: the staging areas and their unit counts: one for a single run, one per part for the parts
    of an array job (their rows are merged back into the whole input list's order, so duplicates across
    parts are dropped as in one run: the first in input order wins).

    Rows are turned into a columnar table unit by unit, so a million samples cost a few hundred MB in
    this process, not a million dicts.
    """
    frames: list[pd.DataFrame] = []
    records: list[dict] = []
    ignored = 0
    for s, (staging, n_units) in enumerate(stores):
        for u in range(n_units):
            data = staging.load(u)
            if data["rows"]:
                frames.append(_frame(data["rows"], s, u))
            for r in data["records"]:
                ignored += r.get("status") == ledger.IGNORED
                records.append(r)
    meta = pd.concat(frames, ignore_index=True) if frames else _frame([], 0, 0).iloc[0:0]
    if len(stores) > 1 and len(meta):  # parts interleave in input order
        meta = meta.sort_values("_order", kind="stable").reset_index(drop=True)
    if dedupe and len(meta):
        dup_key = meta["_dedupe_key"].duplicated(keep="first").to_numpy()
        first_by_key = meta.loc[~dup_key].set_index("_dedupe_key")["source_path"]
        dup_pix = np.zeros(len(meta), bool)
        rest = ~dup_key
        dup_pix[rest] = meta.loc[rest, "pixel_hash"].duplicated(keep="first").to_numpy()
        first_by_pixels = meta.loc[rest & ~dup_pix].set_index("pixel_hash")["source_path"]
        for i in np.flatnonzero(dup_key | dup_pix):
            row = meta.iloc[i]
            if dup_key[i]:
                reason, first = ledger.DUP_INSTANCE, first_by_key[row["_dedupe_key"]]
            else:
                reason, first = ledger.DUP_PIXELS, first_by_pixels[row["pixel_hash"]]
            rec = ledger.Record(
                row["source_path"],
                int(row["source_index"]),
                ledger.DUPLICATE,
                reason,
                duplicate_of=first,
                format=row["format"],
            )
            records.append({**rec.to_json(), "_order": int(row["_order"])})
        meta = meta.loc[~(dup_key | dup_pix)]
    records.sort(key=lambda r: r["_order"])
    meta = meta.reset_index(drop=True)
    for c, default in COLUMNS.items():
        meta[c] = meta[c].astype(_dtype(default))
    counts = np.asarray(meta["frame_count"], dtype=np.int64)
    meta["frame_start"] = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else counts
    return Assembled(meta, records, ignored)


def _dtype(default: object) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int64"
    if isinstance(default, float):
        return "float64"
    return "object"


def frame_table(meta: pd.DataFrame, masks: bool = False) -> np.ndarray:
    """(global_start, count, store, unit, local_start) per kept sample, int64; ``masks=True``: of the samples
    with a mask, local_start into the unit's mask file."""
    if masks:
        meta = meta[meta["has_mask"].astype(bool)]
    local = "_mask_local" if masks else "_local_start"
    return (
        np.stack([meta[c].to_numpy(np.int64) for c in ("frame_start", "frame_count", "_store", "_unit", local)], axis=1)
        if len(meta)
        else np.zeros((0, 5), np.int64)
    )


def create_images(out: Path, n_frames: int, size: int, dtype: str, masks: bool = False) -> tuple[str, str | None, int]:
    """The final ``images`` array (and ``masks``, same shape and shards, uint8); their paths and the shard length."""
    root = zarr.open_group(str(out / layout.ZARR), mode="w")
    arr = create_frames_array(root, layout.IMAGES, n_frames, size, dtype)
    mask_path = None
    if masks:
        create_frames_array(root, layout.MASKS, n_frames, size, "uint8")
        mask_path = str(out / layout.ZARR / layout.MASKS)
    shard = int(arr.shards[0]) if arr.shards else layout.SHARD_FRAMES
    return str(out / layout.ZARR / layout.IMAGES), mask_path, shard


def shard_tasks(n_frames: int, shard: int, pieces: int) -> list[tuple[int, int]]:
    """Contiguous shard ranges, about ``pieces`` of them."""
    n_shards = -(-n_frames // shard) if n_frames else 0
    if n_shards == 0:
        return []
    step = max(1, -(-n_shards // max(1, pieces)))
    return [(s, min(s + step, n_shards)) for s in range(0, n_shards, step)]


def write_tables(out: Path, meta: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """metadata.parquet (public columns only) and failures.jsonl; returns the public table."""
    public = meta[[c for c in meta.columns if not c.startswith("_")]].reset_index(drop=True)
    tmp = out / (layout.METADATA + ".tmp")
    public.to_parquet(tmp, index=False)
    tmp.replace(out / layout.METADATA)
    lines = [json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) for r in records]
    atomic_write_text(out / layout.FAILURES, "\n".join(lines) + ("\n" if lines else ""))
    return public


def normalization(meta: pd.DataFrame, max_value: float) -> dict:
    n = float(meta["_npix"].sum()) if len(meta) else 0.0
    if n <= 0:
        return {"divide_by": max_value, "mean": 0.5, "std": 0.25}
    mean = float(meta["_sum"].sum()) / n
    var = max(float(meta["_sumsq"].sum()) / n - mean * mean, 0.0)
    return {"divide_by": float(max_value), "mean": round(mean, 6), "std": round(max(var**0.5, 1e-3), 6)}


def content_fingerprint(public: pd.DataFrame, size: int, dtype: str, mask_hashes: pd.Series | None = None) -> str:
    """Hash of what the dataset holds: every table value (pixel hashes stand for the pixels, mask hashes
    for the masks when there are masks)."""
    h = pd.util.hash_pandas_object(public, index=False).to_numpy().tobytes() if len(public) else b""
    if mask_hashes is not None:
        h += b"|masks|" + "|".join(mask_hashes.fillna("").astype(str)).encode()
    return hash_bytes(f"{size}|{dtype}|{list(public.columns)}".encode() + h)


def copy_all(
    out: Path,
    meta: pd.DataFrame,
    size: int,
    dtype: str,
    workers: int,
    run: Callable[[Callable, list[tuple], int, Callable], None],
    on_progress: Callable[[int], None] = lambda n: None,
    masks: bool = False,
    stores: Sequence[Staging] | None = None,
) -> int:
    """Create the final array (and ``masks``) and fill it from the staging units of ``stores`` (default: the
    artifact's own staging area); returns the number of frames."""
    from cxrjepa.ingest.worker import copy_shards

    n_frames = int(meta["frame_count"].sum()) if len(meta) else 0
    zpath, mpath, shard = create_images(out, n_frames, size, dtype, masks)
    store_dirs = [str(st.dir.parent) for st in (stores if stores is not None else [Staging(out)])]
    table = frame_table(meta)
    mtable = frame_table(meta, masks=True) if masks else None
    tasks = []
    for s0, s1 in shard_tasks(n_frames, shard, max(1, workers) * 4):
        # only the rows overlapping this range travel to the worker
        task = (zpath, store_dirs, size, dtype, shard, _rows_in(table, s0 * shard, s1 * shard), (s0, s1))
        if mtable is not None:
            task += (mpath, _rows_in(mtable, s0 * shard, s1 * shard))
        tasks.append(task)
    run(copy_shards, tasks, workers, lambda i, n: on_progress(n))
    return n_frames


def _rows_in(table: np.ndarray, f0: int, f1: int) -> np.ndarray:
    """The rows of a frame table whose frames overlap ``f0:f1``."""
    lo = max(0, int(np.searchsorted(table[:, 0], f0, side="right")) - 1)
    hi = int(np.searchsorted(table[:, 0], f1, side="left"))
    return table[lo:hi]
