"""DICOM pixels: decode with the fastest plugin for the transfer syntax, then the documented order

    stored values -> modality LUT (Modality LUT Sequence or RescaleSlope/Intercept)
                  -> VOI LUT Sequence, else the first WindowCenter/Width (VOILUTFunction honoured)
                  -> [MONOCHROME1 is inverted later, after the robust range: see normalize.py]
    colour (RGB, YBR_* converted by pydicom, PALETTE COLOR through its LUT) -> grey (ITU-R BT.601 luma)

Large pixel data is streamed from the file frame by frame (only the frames kept are decoded), so memory
stays at one frame whatever the file size. Attributes that enhanced multi-frame objects keep in functional
groups (rescale, window, spacing) are looked up there too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, as_pixel_options, get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

PIXEL_DATA_TAG = 0x7FE00010

#: decoding plugins in order of preference per transfer syntax (measured on a 2-core machine with 12-bit
#: 512-1024 px images: gdcm is 1.3-2.4x faster than pylibjpeg on JPEG lossless and 0-30 % faster on
#: lossless JPEG 2000; pyjpegls (CharLS) is 1.7x faster than gdcm and 4x faster than pylibjpeg on
#: JPEG-LS; pylibjpeg is 1.7x faster than gdcm on lossy JPEG 2000; Pillow is 2x faster on 8-bit baseline
#: JPEG; pylibjpeg-rle is ~10x faster than pydicom's own RLE). A plugin that fails on a file is followed
#: by the next one; unknown syntaxes use pydicom's own order.
PLUGIN_PREFERENCE: dict[str, tuple[str, ...]] = {
    JPEGBaseline8Bit: ("pillow", "gdcm", "pylibjpeg"),
    JPEGExtended12Bit: ("pylibjpeg", "gdcm", "pillow"),
    JPEGLossless: ("gdcm", "pylibjpeg"),
    JPEGLosslessSV1: ("gdcm", "pylibjpeg"),
    JPEGLSLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEGLSNearLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEG2000Lossless: ("gdcm", "pylibjpeg", "pillow"),
    JPEG2000: ("pylibjpeg", "gdcm", "pillow"),
    HTJ2KLossless: ("pylibjpeg",),
    HTJ2KLosslessRPCL: ("pylibjpeg",),
    HTJ2K: ("pylibjpeg",),
    RLELossless: ("pylibjpeg", "pydicom", "gdcm"),
}


#: when pool workers fill the cores, CPU time per image is what counts: gdcm decodes JPEG 2000 with
#: OpenJPEG's own threads (1.6-1.7 cores' CPU on 2 cores for 1.4x the speed of single-threaded pylibjpeg,
#: i.e. 20 % more CPU per image; the thread count is not settable from Python, and pinned to one core gdcm
#: is slower than pylibjpeg: 4.2 vs 5.5 img/s), so a worker per core oversubscribes the machine. There
#: the single-threaded plugin comes first (see :func:`cxrjepa.ingest.pool.single_threaded_decoders`).
PARALLEL_PREFERENCE: dict[str, tuple[str, ...]] = {
    JPEG2000Lossless: ("pylibjpeg", "gdcm", "pillow"),
}
#: the table :func:`plugins_for` reads: PLUGIN_PREFERENCE, or PARALLEL_PREFERENCE over it
_preference: dict[str, tuple[str, ...]] = PLUGIN_PREFERENCE


def prefer_single_threaded(on: bool = True) -> None:
    """Called in pool workers that fill the cores: prefer decoders that use one thread (see
    :data:`PARALLEL_PREFERENCE`); ``on=False`` goes back to the fastest decoders for one process."""
    global _preference
    _preference = {**PLUGIN_PREFERENCE, **PARALLEL_PREFERENCE} if on else PLUGIN_PREFERENCE


class DecodeError(Exception):
    """Every plugin failed on a frame (the message names no value from the file)."""


class NoDecoder(Exception):
    """This install has no decoder for the transfer syntax."""


class NonFiniteRescale(ValueError):
    """RescaleSlope or RescaleIntercept is NaN or infinite: the modality values would be meaningless."""


def plugins_for(tsyntax: str) -> list[str]:
    """The plugins to try for ``tsyntax`` on this install, best first ('' = pydicom decides)."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise NoDecoder(tsyntax) from None
    if not decoder.is_available:
        raise NoDecoder(tsyntax)
    available = set(decoder.available_plugins)
    if not available:  # native (uncompressed / deflated): no plugins involved
        return [""]
    preferred = [p for p in _preference.get(UID(tsyntax), ()) if p in available]
    rest = sorted(available - set(preferred))
    return preferred + rest


# ---------------------------------------------------------------- attribute lookup (functional groups)

_GROUP_MACROS = {
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
    "RescaleType": "PixelValueTransformationSequence",
    "WindowCenter": "FrameVOILUTSequence",
    "WindowWidth": "FrameVOILUTSequence",
    "VOILUTFunction": "FrameVOILUTSequence",
    "PixelSpacing": "PixelMeasuresSequence",
}


def lookup(ds: Dataset, keyword: str, index: int = 0) -> Any:
    """``keyword`` from the top level, else the per-frame, else the shared functional groups."""
    value = ds.get(keyword)
    if value is not None and value != "":
        return value
    macro = _GROUP_MACROS.get(keyword)
    if macro is None:
        return None
    for groups_kw, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_kw)
        if not groups or len(groups) <= i:
            continue
        seq = groups[i].get(macro)
        if seq:
            value = seq[0].get(keyword)
            if value is not None and value != "":
                return value
    return None


_LUT_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsStored",
    "BitsAllocated",
    "PixelRepresentation",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "SamplesPerPixel",
)


def lut_dataset(ds: Dataset, index: int = 0) -> Dataset:
    """A small dataset with the attributes the LUT functions read, functional groups resolved for frame
    ``index`` (pydicom's LUT functions only look at the top level)."""
    out = Dataset()
    for kw in _LUT_KEYWORDS:
        if kw in ds:
            out[kw] = ds[kw]
    for kw in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction"):
        value = lookup(ds, kw, index)
        if value is not None:
            setattr(out, kw, value)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    enc = getattr(ds, "original_encoding", None)
    if enc and enc[0] is not None:
        out.set_original_encoding(*enc)
    return out


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
            value = value[0] if len(value) else None
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class Voi:
    """What the VOI step did: ``kind`` is 'voi_lut', 'window' or 'none'."""

    kind: str = "none"
    center: float = math.nan
    width: float = math.nan


def _voi_of(lds: Dataset) -> Voi:
    if lds.get("VOILUTSequence"):
        return Voi("voi_lut")
    c, w = _first(lds.get("WindowCenter")), _first(lds.get("WindowWidth"))
    if c is not None and w is not None and math.isfinite(c) and math.isfinite(w) and w > 0:  # else no window
        return Voi("window", c, w)
    return Voi()


# ---------------------------------------------------------------- decoding


@contextmanager
def _pixel_source(ds: Dataset, path: Path) -> Iterator[tuple[Any, dict]]:
    """The pixel data source for pydicom's decoder: the dataset, or (for pixel data left on disk by
    ``defer_size``) the open file positioned at the value, with the options pydicom needs."""
    tsyntax = ds.file_meta.TransferSyntaxUID
    raw = ds._dict.get(PIXEL_DATA_TAG)
    deferred = raw is not None and getattr(raw, "value", 0) is None and getattr(raw, "value_tell", None) is not None
    if not deferred or tsyntax == DeflatedExplicitVRLittleEndian:
        yield ds, {}
        return
    opts = as_pixel_options(ds)
    opts["transfer_syntax_uid"] = tsyntax
    opts["pixel_keyword"] = "PixelData"
    if raw.VR in ("OB", "OW"):
        opts["pixel_vr"] = raw.VR
    with open(path, "rb") as fh:
        fh.seek(raw.value_tell)
        yield fh, opts


@dataclass(frozen=True)
class PluginWatch:
    """How a decode worker follows the plugins on the input it works on: ``announce(name)`` is called
    before each decoding attempt (so that a native crash is blamed on that plugin, see
    :mod:`cxrjepa.ingest.pool`), and plugins in ``avoid`` (they crashed a worker on this input before) are
    not tried again, so the input gets the next plugin, as when a plugin raises."""

    announce: Callable[[str], None] | None = None
    avoid: frozenset[str] = frozenset()


_watch = PluginWatch()


@contextmanager
def watch_plugins(watch: PluginWatch) -> Iterator[None]:
    """Follow the plugins (see :class:`PluginWatch`) for the input processed inside the block."""
    global _watch
    old, _watch = _watch, watch
    try:
        yield
    finally:
        _watch = old


class AllPluginsCrashed(DecodeError):
    """Every plugin for the transfer syntax crashed a worker on this input (the message names them)."""


#: exceptions that are not a plugin failing on an input: they end the decoding of the input at once
_NOT_A_PLUGIN_FAILURE = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)


def decode_frames(ds: Dataset, path: Path, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray, str]]:
    """Yield ``(index, stored array, photometric after decoding)`` for each frame in ``indices``.

    Colour frames come back as RGB (pydicom converts YBR_FULL / YBR_FULL_422; JPEG 2000 decoders undo
    YBR_RCT / YBR_ICT). A plugin that raises, ``BaseException`` subclasses such as pylibjpeg-rle's
    ``pyo3_runtime.PanicException`` included, is followed by the next one. Raises :class:`DecodeError`
    when no plugin can decode a frame (:class:`AllPluginsCrashed` when each one crashed a worker before).
    """
    tsyntax = ds.file_meta.TransferSyntaxUID
    watch = _watch
    plugins = [p for p in plugins_for(tsyntax) if p not in watch.avoid]
    if not plugins:
        raise AllPluginsCrashed(", ".join(sorted(p or "pydicom" for p in watch.avoid)))
    decoder = get_decoder(tsyntax)
    with _pixel_source(ds, path) as (src, opts):
        start = src.tell() if hasattr(src, "seek") else None
        for index in indices:
            last: BaseException | None = None
            for k, plugin in enumerate(plugins):
                try:
                    if start is not None:
                        src.seek(start)
                    if watch.announce is not None:
                        watch.announce(plugin)
                    arr, meta = decoder.as_array(src, index=index, decoding_plugin=plugin, **opts)
                except _NOT_A_PLUGIN_FAILURE:
                    raise
                except BaseException as exc:  # try the next plugin; messages are not kept (they may hold values)
                    last = exc
                    continue
                finally:
                    if watch.announce is not None:
                        watch.announce("")
                if k:  # remember the plugin that worked for the following frames
                    plugins.insert(0, plugins.pop(k))
                yield index, arr, str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
                break
            else:
                raise DecodeError(type(last).__name__ if last else "no plugin")


def modality_lut(arr: np.ndarray, lds: Dataset) -> np.ndarray:
    """Stored values -> modality values as float32 (Modality LUT Sequence, else RescaleSlope/Intercept)."""
    if lds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(arr, lds), dtype=np.float32)
    slope, intercept = _first(lds.get("RescaleSlope")), _first(lds.get("RescaleIntercept"))
    if not all(v is None or math.isfinite(v) for v in (slope, intercept)):
        raise NonFiniteRescale("RescaleSlope or RescaleIntercept is not a finite number")
    x = arr.astype(np.float32)
    if slope is not None and slope != 1.0:
        x *= np.float32(slope)
    if intercept:
        x += np.float32(intercept)
    return x


def voi(x: np.ndarray, lds: Dataset, arr: np.ndarray) -> tuple[np.ndarray, Voi]:
    """Apply the VOI LUT Sequence, else the first window, to modality values ``x`` (``arr``: stored).

    A LINEAR / LINEAR_EXACT window is a positive affine map of the values clipped to the window's edges
    (DICOM PS3.3 C.11.2.1.2), and the robust range that follows removes any positive affine map, so the
    window is applied as that clip (float32, no copy of pydicom's float64 output). Sigmoid windows and
    VOI LUT tables go through pydicom.
    """
    v = _voi_of(lds)
    if v.kind == "voi_lut":
        out = apply_voi_lut(np.asarray(apply_modality_lut(arr, lds)), lds, index=0, prefer_lut=True)
        return np.asarray(out, dtype=np.float32), v
    if v.kind == "window":
        fn = str(lds.get("VOILUTFunction") or "LINEAR").strip().upper()
        c, w = v.center, v.width
        if fn == "LINEAR" and w > 1:
            return np.clip(x, np.float32(c - w / 2), np.float32(c - 1 + w / 2), out=x), v
        if fn == "LINEAR_EXACT":
            return np.clip(x, np.float32(c - w / 2), np.float32(c + w / 2), out=x), v
        out = apply_voi_lut(np.asarray(apply_modality_lut(arr, lds)), lds, index=0, prefer_lut=False)
        return np.asarray(out, dtype=np.float32), v
    return x, v


def to_grey(arr: np.ndarray, photometric: str, lds: Dataset, ds: Dataset | None = None) -> tuple[np.ndarray, Voi]:
    """One decoded frame -> float32 grey after the modality LUT and VOI (monochrome) or luma (colour).

    ``lds`` is the frame's :func:`lut_dataset` (or the dataset itself); ``ds`` the whole dataset (for
    palette colour tables).
    """
    photometric = photometric.upper()
    if photometric.startswith("MONOCHROME"):
        return voi(modality_lut(arr, lds), lds, arr)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds if ds is not None else lds)
    elif photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        arr = convert_color_space(arr, photometric, "RGB")
    if arr.ndim == 3 and arr.shape[-1] >= 3:
        rgb = np.ascontiguousarray(arr[..., :3], dtype=np.float32)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), Voi()
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.float32), Voi()
