"""Which frames each sample contributes, how rows become units and batches, and slab reads."""

from __future__ import annotations

import numpy as np
import zarr

from cxrjepa.embed.reader import plan_batches, plan_frames, read_frames, unit_ranges
from cxrjepa.embed.store import unit_rows_for


def test_plan_frames_picks_evenly_spaced_clip_frames():
    starts, counts = np.array([0, 1, 11, 14]), np.array([1, 10, 3, 1])
    p = plan_frames(starts, counts, clip_frames=4)
    assert p.counts().tolist() == [1, 4, 3, 1]
    assert p.frames[p.ptr[1] : p.ptr[2]].tolist() == [1, 4, 7, 10]  # 0, 3, 6, 9 within the clip
    assert p.frames[p.ptr[2] : p.ptr[3]].tolist() == [11, 12, 13]
    mid = plan_frames(starts, counts, clip_pool="middle")
    assert mid.frames.tolist() == [0, 6, 12, 14]  # start + count // 2, as FrameDataset(per_sample=True)
    one = plan_frames(starts, counts, clip_frames=1)
    assert one.frames.tolist() == [0, 6, 12, 14]


def test_batches_cover_every_row_once_within_units_and_frame_budget():
    counts = np.array([1, 5, 1, 1, 9, 2, 1, 1, 1, 3])
    p = plan_frames(np.cumsum(np.r_[0, counts[:-1]]), counts, clip_frames=16)
    batches = plan_batches(p, [0, 1, 2], unit_rows=4, batch_size=6)
    rows = [r for _, lo, hi in batches for r in range(lo, hi)]
    assert rows == list(range(10))
    for unit, lo, hi in batches:
        assert unit * 4 <= lo < hi <= min(unit * 4 + 4, 10)
        assert p.ptr[hi] - p.ptr[lo] <= 6 or hi - lo == 1  # a sample longer than a batch goes alone
    assert plan_batches(p, [1], unit_rows=4, batch_size=100) == [(1, 4, 8)]
    assert unit_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_read_frames_matches_fancy_indexing(tmp_path):
    arr = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=(50, 4, 4), chunks=(1, 4, 4), shards=(16, 4, 4), dtype="uint8"
    )
    data = np.arange(50 * 16, dtype=np.uint8).reshape(50, 4, 4)
    arr[:] = data
    for frames in ([3, 4, 5, 6], [3, 5, 6, 8], [0, 20, 49], [7]):
        np.testing.assert_array_equal(read_frames(arr, np.array(frames)), data[frames])


def test_unit_rows_shrink_for_large_patch_tokens():
    assert unit_rows_for({"features": (768,)}) == 256
    assert unit_rows_for({"features": (768,), "patch_tokens": (1369, 768)}) == 16


def test_units_are_balanced_over_ranks_for_small_datasets():
    from cxrjepa.embed.store import balanced_unit_rows

    assert balanced_unit_rows(256, 1_000_000, 8) == 256
    assert balanced_unit_rows(256, 1000, 8) == 16  # 62 units: every one of 8 ranks gets ~8
    assert balanced_unit_rows(256, 40, 2) == 8  # never below 8 rows
