"""Work units and the staging area: how an ingest survives Ctrl-C, kill -9 and power loss.

The sorted input list is cut into fixed *work units*. A worker processes a unit's inputs in order and
writes, in ``OUT/staging/``:

    unit-NNNNNN.raw    the unit's stored frames, back to back (written to a temporary name, fsynced, renamed)
    unit-NNNNNN.mask.raw  with --masks, only for units with masks: the masks of its samples that have one
                       (uint8, same frame size), in the same way
    unit-NNNNNN.json   its metadata rows and ledger records: written last and atomically, this file is the
                       unit's "done" mark (the ledger of completed work)

A rerun with the same fingerprint skips every unit whose ``.json`` exists and redoes the others, so nothing
is lost or counted twice. The final dataset is assembled from the units in unit order (see writer.py), so
its order does not depend on the number of workers or on interruptions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrjepa.core.atomic import atomic_write_text
from cxrjepa.core.fingerprint import hash_obj
from cxrjepa.ingest.context import InputItem

STAGING = "staging"
PLAN = "plan.json"


def unit_size_for(n_inputs: int, workers: int) -> int:
    """Inputs per unit: about 8 units per worker (balance, progress, little lost on a kill), 8 to 256
    inputs each (each unit costs a few file syncs)."""
    return int(min(256, max(8, math.ceil(n_inputs / (8 * max(1, workers))))))


@dataclass(frozen=True)
class Unit:
    index: int
    start: int  # position of its first input in the sorted input list
    items: tuple[InputItem, ...]
    #: positions of its inputs in the whole sorted input list when they are not ``start``, ``start + 1``, ...
    #: (a part of an array job holds every N-th input or so, see :mod:`cxrjepa.ingest.parts`)
    orders: tuple[int, ...] = ()

    def order(self, k: int) -> int:
        """The position of the unit's ``k``-th input in the whole sorted input list (the sample order)."""
        return self.orders[k] if self.orders else self.start + k


def make_units(items: Sequence[InputItem], unit_size: int, orders: Sequence[int] | None = None) -> list[Unit]:
    """Consecutive units of ``unit_size`` inputs; ``orders``: each input's position in the whole input list
    (default: its position in ``items``)."""
    if orders is None:
        return [Unit(u, s, tuple(items[s : s + unit_size])) for u, s in enumerate(range(0, len(items), unit_size))]
    return [
        Unit(
            u,
            int(orders[s]) if s < len(orders) else s,
            tuple(items[s : s + unit_size]),
            tuple(int(o) for o in orders[s : s + unit_size]),
        )
        for u, s in enumerate(range(0, len(items), unit_size))
    ]


def inputs_fingerprint(items: Sequence[InputItem]) -> str:
    """A hash of an input list as the staging area sees it: paths, mask pairings, discovery verdicts."""
    return hash_obj(
        [
            (
                i.source_index,
                i.rel,
                *((i.masks, i.mask_error) if i.masks or i.mask_error else ()),
                *((i.verdict,) if i.verdict else ()),
            )
            for i in items
        ]
    )


class Staging:
    """The staging folder of one artifact (or of one part of an array job: ``Staging(OUT/parts/K-of-N)``)."""

    def __init__(self, out: Path):
        self.dir = Path(out) / STAGING

    def raw(self, unit: int, kind: str = "images") -> Path:
        return self.dir / (f"unit-{unit:06d}.raw" if kind == "images" else f"unit-{unit:06d}.mask.raw")

    def done_path(self, unit: int) -> Path:
        return self.dir / f"unit-{unit:06d}.json"

    def is_done(self, unit: int) -> bool:
        return self.done_path(unit).is_file()

    def load(self, unit: int) -> dict:
        return json.loads(self.done_path(unit).read_text())

    def frames(self, unit: int, size: int, dtype: str, kind: str = "images") -> np.ndarray:
        """The unit's frames (``kind="masks"``: its masks) as a read-only memory map (T, size, size)."""
        path = self.raw(unit, kind)
        n = path.stat().st_size // (size * size * np.dtype(dtype).itemsize) if path.is_file() else 0
        if n == 0:
            return np.zeros((0, size, size), dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(n, size, size))

    def prepare(
        self, items: Sequence[InputItem], unit_size: int, size: int, dtype: str, orders: Sequence[int] | None = None
    ) -> int:
        """Create the staging folder, or check that the one there belongs to this input list (else start
        it over). Returns the unit size to use (the stored one when resuming). ``orders``: the inputs'
        positions in the whole input list, when ``items`` is a part of it."""
        inputs_hash = inputs_fingerprint(items)
        if orders is not None:
            inputs_hash = hash_obj([inputs_hash, [int(o) for o in orders]])
        plan = {
            "n_inputs": len(items),
            "inputs_hash": inputs_hash,
            "unit_size": unit_size,
            "size": size,
            "dtype": dtype,
        }
        path = self.dir / PLAN
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = {}
            same = all(old.get(k) == plan[k] for k in ("n_inputs", "inputs_hash", "size", "dtype"))
            if same and int(old.get("unit_size", 0)) > 0:
                for tmp in self.dir.glob(".unit-*.tmp"):  # left by workers killed mid-unit
                    tmp.unlink(missing_ok=True)
                return int(old["unit_size"])
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(plan))
        return unit_size

    def remove(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)


class UnitWriter:
    """Appends a unit's frames to a temporary file; :meth:`commit` makes the unit durable and done."""

    def __init__(self, staging: Staging, unit: int):
        self.staging = staging
        self.unit = unit
        self.tmp = staging.dir / f".unit-{unit:06d}.{os.getpid()}.raw.tmp"
        self.fh = open(self.tmp, "wb")
        self.frames = 0
        self.mask_tmp = staging.dir / f".unit-{unit:06d}.{os.getpid()}.mask.raw.tmp"
        self.mask_fh = None  # opened by the first mask: units without masks write no mask file
        self.mask_frames = 0

    def append(self, frames: np.ndarray) -> int:
        """Write frames; returns the unit-local index of the first one."""
        start = self.frames
        self.fh.write(np.ascontiguousarray(frames).data)
        self.frames += int(frames.shape[0])
        return start

    def append_mask(self, masks: np.ndarray) -> int:
        """Write a sample's masks (uint8, one per frame); returns the unit-local index of the first one."""
        if self.mask_fh is None:
            self.mask_fh = open(self.mask_tmp, "wb")
        start = self.mask_frames
        self.mask_fh.write(np.ascontiguousarray(masks, dtype=np.uint8).data)
        self.mask_frames += int(masks.shape[0])
        return start

    def commit(self, summary: dict) -> None:
        if self.mask_fh is not None:
            self.mask_fh.flush()
            os.fsync(self.mask_fh.fileno())
            self.mask_fh.close()
            os.replace(self.mask_tmp, self.staging.raw(self.unit, "masks"))
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.staging.raw(self.unit))
        # the done mark's atomic write syncs the folder, which also makes the rename above durable
        atomic_write_text(self.staging.done_path(self.unit), json.dumps(summary, allow_nan=True))

    def abort(self) -> None:
        for fh, tmp in ((self.fh, self.tmp), (self.mask_fh, self.mask_tmp)):
            try:
                if fh is not None:
                    fh.close()
                    tmp.unlink()
            except OSError:
                pass
