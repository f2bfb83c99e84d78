"""Video files (mp4, avi, mov, mpeg, gif, ... through OpenCV's FFmpeg backend) -> one clip sample.

Frames are read strictly in order (OpenCV's frame counts and seeking are unreliable); frames that are not
kept are grabbed but not converted, and reading stops once ``max_frames`` are kept. Colour becomes grey;
with ``us_crop`` the scan region is found from the temporal variance (burned-in text and calipers go).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import cv2
import numpy as np

from cxrjepa.ingest import ledger
from cxrjepa.ingest.clips import RateSampler
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.discover import utf8_name
from cxrjepa.ingest.ledger import Reject
from cxrjepa.ingest.normalize import ConstantImage, store_frames
from cxrjepa.ingest.pixel_claims import check_size
from cxrjepa.ingest.raster import bgr_to_grey
from cxrjepa.ingest.region import region_from_variance
from cxrjepa.ingest.table import Sample, new_row


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_frames(
    path: Path, target_fps: float, max_frames: int, max_pixels: int = 0
) -> tuple[list[np.ndarray], float, int, bool]:
    """(grey float32 frames kept, stored fps, source frame count, colour?) of a video file; frames larger
    than ``max_pixels`` are refused before any is decoded."""
    with utf8_name(path) as name:
        cap = cv2.VideoCapture(name)
        try:
            if not cap.isOpened():
                raise Reject(ledger.UNREADABLE_VIDEO)
            check_size(
                int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), max_pixels
            )
            sampler = RateSampler(cap.get(cv2.CAP_PROP_FPS), target_fps, max_frames)
            frames: list[np.ndarray] = []
            colour = False
            i = 0
            while not sampler.done:
                if not cap.grab():
                    break
                if sampler.keep(i):
                    ok, frame = cap.retrieve()
                    if not ok or frame is None:
                        break
                    if frame.ndim == 3 and frame.shape[2] >= 3 and not colour:
                        b, g, r = frame[..., 0], frame[..., 1], frame[..., 2]
                        colour = not (np.array_equal(b, g) and np.array_equal(g, r))
                    frames.append(bgr_to_grey(frame))
                i += 1
            reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            total = max(reported, i) if sampler.done else i
            return frames, sampler.fps, total, colour
        finally:
            cap.release()


def process_video(path: Path, item: InputItem, ctx: Context) -> Sample:
    cfg = ctx.config
    frames, fps, total, colour = read_frames(path, cfg.clip_fps, cfg.max_frames, cfg.max_pixels)
    if not frames:
        raise Reject(ledger.NO_FRAMES)
    shape = frames[0].shape
    if any(f.shape != shape for f in frames):
        raise Reject(ledger.UNSUPPORTED_SHAPE, "frames of different sizes")
    if min(shape) < 2:
        raise Reject(ledger.UNSUPPORTED_SHAPE, "fewer than 2 rows or columns")
    region = region_from_variance(frames, with_fov=cfg.us_blank_outside) if cfg.us_crop else None
    try:
        stored = store_frames(
            frames,
            size=cfg.size,
            dtype=cfg.dtype,
            low=cfg.percentile_low,
            high=cfg.percentile_high,
            crop=region.crop if region else None,
            fov=region.fov if region else None,
        )
    except ConstantImage:
        raise Reject(ledger.CONSTANT) from None
    digest = file_digest(path)
    sample_id = ctx.salt.key("file", digest)
    row = new_row(
        sample_id=sample_id,
        patient_key=ctx.salt.key("patient-file", digest),
        fps=fps if not math.isnan(fps) else math.nan,
        source_path=item.rel,
        source_index=item.source_index,
        format="video",
        rows=int(shape[0]),
        cols=int(shape[1]),
        frames=int(total),
        photometric="RGB" if colour else "MONOCHROME2",
        bits_stored=8,
        intensity_lo=stored.intensity_lo,
        intensity_hi=stored.intensity_hi,
        region_source=region.source if region else "none",
        _dedupe_key=sample_id,
        **stored.geometry.columns(),
    )
    return Sample(stored.frames, row).finish()
