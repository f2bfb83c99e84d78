"""One geometry path for images and masks: crop -> resize keeping aspect -> centred pad."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxrjepa.ingest.geometry import Geometry, apply_geometry
from cxrjepa.ingest.normalize import store_frames


@pytest.mark.parametrize(
    "shape, crop, expect",
    [
        ((200, 100), None, dict(scale=0.32, out_h=64, out_w=32, pad_y=0, pad_x=16)),  # portrait
        ((100, 200), None, dict(scale=0.32, out_h=32, out_w=64, pad_y=16, pad_x=0)),  # landscape
        ((50, 50), None, dict(scale=1.28, out_h=64, out_w=64, pad_y=0, pad_x=0)),  # enlarged square
        ((300, 400), (100, 50, 200, 250), dict(scale=0.32, out_h=32, out_w=64, pad_y=16, pad_x=0)),  # cropped
    ],
)
def test_fit(shape, crop, expect):
    g = Geometry.fit(shape, 64, crop)
    for k, v in expect.items():
        assert getattr(g, k) == pytest.approx(v), k


def test_row_roundtrip():
    g = Geometry.fit((300, 400), 64, (100, 50, 200, 250))
    assert Geometry.from_row({**g.columns(), "size": 64}) == g


@pytest.mark.parametrize("shape", [(120, 60), (60, 120), (90, 90), (37, 101)])
def test_mask_stays_aligned_with_image(shape):
    """A bright drawn shape and its mask end up on the same stored pixels (portrait, landscape, padded)."""
    h, w = shape
    img = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    pts = np.array([[w * 0.2, h * 0.3], [w * 0.7, h * 0.2], [w * 0.6, h * 0.8]], np.int32)
    cv2.fillPoly(img, [pts], 1.0)
    cv2.fillPoly(mask, [pts], 3)  # label value 3: nearest neighbour must keep it exactly
    stored = store_frames([img + 0.0], size=64, dtype="uint8", low=0, high=100).frames[0]
    g = Geometry.fit(shape, 64)
    smask = apply_geometry(mask, g, nearest=True)
    assert set(np.unique(smask)) <= {0, 3}
    inside = cv2.erode((smask == 3).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    outside = ~cv2.dilate((smask == 3).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert inside.sum() > 20
    assert (stored[inside] > 200).all() and (stored[outside] < 55).all()
    # the padding is outside the resized image, for the mask and the image alike
    pad = np.ones((64, 64), bool)
    pad[g.pad_y : g.pad_y + g.out_h, g.pad_x : g.pad_x + g.out_w] = False
    assert (stored[pad] == 0).all() and (smask[pad] == 0).all()


def test_dtypes_are_kept():
    g = Geometry.fit((40, 30), 16)
    for dt in (np.uint8, np.uint16, np.int16, np.float32, np.int32, np.int64, bool):
        a = (np.arange(1200).reshape(40, 30) % 5).astype(dt)
        assert apply_geometry(a, g, nearest=True).dtype == np.dtype(dt)
    assert apply_geometry(np.ones((40, 30), np.uint16) * 1000, g).dtype == np.uint16
