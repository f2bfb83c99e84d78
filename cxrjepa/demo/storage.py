"""How a phantom's display brightness is stored in DICOM pixels, the way real CR/DX archives vary.

A viewer (and cxrjepa ingest) recovers the picture with the standard pipeline:
stored values -> Modality LUT (RescaleSlope/Intercept) -> VOI (VOI LUT Sequence, else the first
WindowCenter/Width, with VOILUTFunction) -> MONOCHROME1 inverted after windowing. :func:`to_stored` is the
exact inverse up to rounding: for every file, that pipeline gives a monotone increasing function of the
phantom's brightness, and a linear one when the VOI is a LINEAR window or absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from cxrjepa.demo.codecs import BY_KEY

#: VOI flavours written: a LINEAR window, two windows (the first applies), a SIGMOID window, a VOI LUT
#: Sequence (monotone curve; a window is present too but the LUT takes precedence), or no VOI at all.
VOI_KINDS = ("window", "windows", "sigmoid", "lut", "none")


@dataclass(frozen=True)
class Storage:
    """Pixel module settings of one file."""

    syntax: str  # key in codecs.BY_KEY
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str  # MONOCHROME1 or MONOCHROME2
    dark: int  # stored value of display brightness 0
    bright: int  # stored value of display brightness 1 (below ``dark`` for MONOCHROME1)
    slope: float | None  # None: no Modality LUT tags
    intercept: float | None
    voi: str  # one of VOI_KINDS
    window_margin: float = 0.05  # the window is this much wider than the data
    lut_gamma: float = 1.0  # VOI LUT curve exponent

    @property
    def dtype(self) -> np.dtype:
        if self.bits_allocated == 8:
            return np.dtype(np.uint8)
        return np.dtype(np.int16 if self.signed else np.uint16)

    def modality(self, stored: float | np.ndarray) -> float | np.ndarray:
        """Stored value -> modality value (what the Modality LUT makes of it)."""
        if self.slope is None:
            return stored
        return stored * self.slope + self.intercept


def sample_storage(rng: np.random.Generator, syntax: str) -> Storage:
    """Pixel settings a real archive might use, compatible with ``syntax``."""
    only_8bit = BY_KEY[syntax].only_8bit
    if only_8bit or rng.random() < 0.2:
        bits_allocated, bits_stored, signed = 8, 8, False
    else:
        bits_allocated = 16
        bits_stored = int(rng.choice([10, 12, 12, 12, 14, 14, 16]))
        signed = bits_stored in (12, 16) and rng.random() < 0.15
    mono1 = rng.random() < 0.3
    if signed and mono1:
        bits_stored = 16  # GDCM (and so SimpleITK) cannot read signed MONOCHROME1 with fewer stored bits

    # detectors use part of the representable range
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    span = int((hi - lo) * rng.uniform(0.55, 0.9))
    start = lo + int((hi - lo - span) * rng.random())
    dark, bright = (start + span, start) if mono1 else (start, start + span)

    if bits_allocated == 8:
        slope, intercept = (None, None) if rng.random() < 0.8 else (1.0, 0.0)
    else:
        slope, intercept = [(None, None), (1.0, 0.0), (1.0, -1024.0), (0.5, 0.0), (2.0, -4096.0)][
            int(rng.choice(5, p=[0.35, 0.3, 0.15, 0.1, 0.1]))
        ]

    lut_ok = (slope in (None, 1.0)) and (intercept in (None, 0.0)) and not signed and span < 65535
    weights = {"window": 0.5, "windows": 0.1, "sigmoid": 0.06, "lut": 0.12 if lut_ok else 0.0, "none": 0.22}
    kinds = list(weights)
    p = np.array([weights[k] for k in kinds])
    voi = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    return Storage(
        syntax=syntax,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=signed,
        photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
        dark=dark,
        bright=bright,
        slope=slope,
        intercept=intercept,
        voi=voi,
        window_margin=float(rng.uniform(0.0, 0.1)),
        lut_gamma=float(rng.uniform(0.6, 1.6)),
    )


def to_stored(brightness: np.ndarray, st: Storage) -> np.ndarray:
    """Display brightness in [0, 1] -> stored pixel values (rounded, in the file's dtype)."""
    values = st.dark + (st.bright - st.dark) * brightness.astype(np.float64)
    return np.rint(values).astype(st.dtype)


def _ds(value: float) -> str:
    """A DS value: short decimal text."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def set_pixel_tags(ds: Dataset, st: Storage, rows: int, cols: int) -> None:
    """Image pixel, Modality LUT and VOI LUT module attributes of ``st`` on ``ds`` (no PixelData)."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = st.photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = st.bits_allocated
    ds.BitsStored = st.bits_stored
    ds.HighBit = st.bits_stored - 1
    ds.PixelRepresentation = int(st.signed)
    if st.slope is not None:
        ds.RescaleIntercept = _ds(st.intercept)
        ds.RescaleSlope = _ds(st.slope)
        ds.RescaleType = "US"
    if st.voi == "none":
        return
    m_lo, m_hi = sorted((float(st.modality(st.dark)), float(st.modality(st.bright))))
    width = (m_hi - m_lo) * (1.0 + st.window_margin) + 1.0
    center = (m_lo + m_hi) / 2.0 + 0.5
    if st.voi == "windows":
        ds.WindowCenter = [_ds(center), _ds(center)]
        ds.WindowWidth = [_ds(width), _ds(width * 0.6)]
        ds.WindowCenterWidthExplanation = ["NORMAL", "HARDER"]
    else:
        ds.WindowCenter = _ds(center)
        ds.WindowWidth = _ds(width)
    if st.voi == "sigmoid":
        ds.VOILUTFunction = "SIGMOID"
    if st.voi == "lut":
        first, count = int(m_lo), int(m_hi) - int(m_lo) + 1
        x = np.linspace(0.0, 1.0, count)
        data = np.rint(4095 * x**st.lut_gamma).astype(np.uint16)
        item = Dataset()
        item.add_new(0x00283002, "US", [count, first, 12])  # LUTDescriptor (first mapped value >= 0 here)
        item.LUTExplanation = f"GAMMA {st.lut_gamma:.2f}"
        item.add_new(0x00283006, "OW", data.astype("<u2").tobytes())  # LUTData
        ds.VOILUTSequence = [item]
