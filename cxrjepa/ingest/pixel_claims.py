"""What a DICOM header claims about its pixels, checked against its pixel data before anything is decoded.

A decoder trusts Rows, Columns, SamplesPerPixel, BitsAllocated and NumberOfFrames: it allocates what they
claim and lays the bytes out by them. A header that disagrees with its pixel data therefore gives a sheared
or cropped image (native syntaxes), a decoder crash, or a memory bomb (a 9 KB RLE file claiming 65535 x
65535 pixels asks for 8.6 GB). So, before decoding:

* every format: at most ``max_pixels`` pixels per frame (``ingest.max_pixels``; no radiograph has more),
  else "image larger than max_pixels";
* native (uncompressed) syntaxes: the pixel data holds exactly Rows x Columns x samples x BitsAllocated x
  frames bits; only padding may follow (the pad byte of an odd length, or zero bytes);
* RLE: the first frame has one segment per sample byte, and each segment can expand to a plane (an RLE
  byte pair expands to at most 128 bytes);
* JPEG, JPEG-LS, JPEG 2000 and HTJ2K: the first frame's codestream header (SOF / SIZ marker) has the
  header's rows, columns and samples per pixel, and no more bits than BitsAllocated.

Anything else is "header does not match the pixel data", or "pixel data shorter than the header describes"
for native data cut short (details are sizes, never values from the file).
Later frames of a multi-frame object are checked by shape after decoding (see dicom.py).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from cxrjepa.ingest import ledger
from cxrjepa.ingest.ledger import Reject

PIXEL_DATA_TAG = 0x7FE00010
#: an RLE segment expands at most 64-fold: a 2-byte replicate run gives at most 128 bytes
RLE_MAX_EXPANSION = 64
#: excess bytes after native pixel data that are read to check they are padding (more: a mismatch)
MAX_PADDING = 1 << 20
_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian: every encapsulated item starts with it
#: JPEG frame header markers (SOF0-SOF15 without DHT, JPG and DAC) and JPEG-LS's SOF55
_J2K = frozenset(JPEG2000TransferSyntaxes)  # HTJ2K included
_JPEG = frozenset(JPEGTransferSyntaxes) | frozenset(JPEGLSTransferSyntaxes)
_SOF = frozenset([*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7])


def check_size(rows: int, cols: int, max_pixels: int) -> None:
    """Raise "image larger than max_pixels" for a frame of more than ``max_pixels`` pixels (any format)."""
    if max_pixels > 0 and rows * cols > max_pixels:
        raise Reject(ledger.TOO_LARGE, f"{rows} x {cols}")


def check_claims(ds: Dataset, path: Path, frames: int, max_pixels: int) -> None:
    """Raise a :class:`Reject` when ``ds``'s pixel description is unsupported, too large or disagrees with
    its pixel data (``frames``: the frame count the header claims). Reads at most the first 64 KB of
    the pixel data (and up to 1 MB of trailing padding), from the file when it was left there."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp, bits = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
    if spp not in (1, 3, 4):
        raise Reject(ledger.UNSUPPORTED_PIXELS, f"SamplesPerPixel {spp}")
    if bits not in (1, 8, 16, 32, 64):
        raise Reject(ledger.UNSUPPORTED_PIXELS, f"BitsAllocated {bits}")
    stored = ds.get("BitsStored")
    if isinstance(stored, int) and stored > bits:
        raise Reject(ledger.UNSUPPORTED_PIXELS, "BitsStored above BitsAllocated")
    check_size(rows, cols, max_pixels)
    tsyntax = UID(str(ds.file_meta.TransferSyntaxUID))
    source = _PixelBytes(ds, path)
    if not tsyntax.is_encapsulated:
        _check_native(ds, source, rows, cols, spp, bits, frames)
        return
    head = source.first_fragment()
    if tsyntax == RLELossless:
        _check_rle(head, rows, cols, spp, bits)
        return
    found = None
    if tsyntax in _J2K:
        found = _j2k_size(head)
    elif tsyntax in _JPEG:
        found = _jpeg_size(head)
    if found is None:
        return  # a syntax whose codestream we do not parse: max_pixels and the decoded shape still hold
    c_rows, c_cols, c_comps, precision = found
    if (c_rows and c_rows != rows) or c_cols != cols or c_comps != spp:
        raise Reject(
            ledger.PIXELS_MISMATCH, f"codestream {c_rows} x {c_cols} x {c_comps}, header {rows} x {cols} x {spp}"
        )
    if precision > bits:
        raise Reject(ledger.PIXELS_MISMATCH, f"codestream {precision} bits, BitsAllocated {bits}")


def native_length(rows: int, cols: int, spp: int, bits: int, frames: int, photometric: str) -> int:
    """Bytes of native pixel data for this description (YBR_FULL_422 stores 2 samples per pixel)."""
    if bits == 1:
        return math.ceil(rows * cols * spp * frames / 8)
    samples = 2 if spp == 3 and photometric == "YBR_FULL_422" else spp
    return rows * cols * samples * (bits // 8) * frames


def _check_native(ds: Dataset, source: _PixelBytes, rows: int, cols: int, spp: int, bits: int, frames: int) -> None:
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    expected = native_length(rows, cols, spp, bits, frames, photometric)
    have = source.length
    if have == expected or (have == expected + 1 and expected % 2):  # an odd length's pad byte
        return
    if have > expected and have - expected <= MAX_PADDING and not source.read(expected, have - expected).strip(b"\x00"):
        return  # trailing zero padding (a writer's): the image is intact
    reason = ledger.PIXELS_SHORT if have < expected else ledger.PIXELS_MISMATCH
    raise Reject(reason, f"{have} bytes of pixel data, header implies {expected}")


def _check_rle(head: _Fragment, rows: int, cols: int, spp: int, bits: int) -> None:
    if len(head) < 64:
        raise Reject(ledger.PIXELS_MISMATCH, "RLE header missing")
    n, *offsets = struct.unpack("<16I", head[:64])
    want = spp * math.ceil(bits / 8)
    if n != want:
        raise Reject(ledger.PIXELS_MISMATCH, f"{n} RLE segments, header implies {want}")
    total = head.fragment_length
    for start, end in zip(offsets[:n], [*offsets[1:n], total]):
        if not 64 <= start <= end <= total or (end - start) * RLE_MAX_EXPANSION < rows * cols:
            raise Reject(ledger.PIXELS_MISMATCH, f"an RLE segment cannot hold {rows} x {cols} pixels")


class _Fragment(bytes):
    """The first bytes of a fragment, knowing the fragment's full length."""

    fragment_length: int


class _PixelBytes:
    """Reads parts of the pixel data value, in memory or still in the file (``defer_size``)."""

    def __init__(self, ds: Dataset, path: Path):
        raw = ds._dict.get(PIXEL_DATA_TAG)
        self.value = getattr(raw, "value", None)
        self.tell = getattr(raw, "value_tell", None)
        self.path = path
        if self.value is not None:
            self.length = len(self.value)
        else:
            self.length = int(getattr(raw, "length", 0) or 0)

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n <= 0:
            return b""
        if self.value is not None:
            return bytes(self.value[offset : offset + n])
        if self.tell is None:
            return b""
        with open(self.path, "rb") as fh:
            fh.seek(self.tell + offset)
            return fh.read(n)

    def first_fragment(self, n: int = 1 << 16) -> _Fragment:
        """The first ``n`` bytes of the first fragment after the basic offset table."""
        bot = self.read(0, 8)
        if len(bot) < 8 or bot[:4] != _ITEM:
            raise Reject(ledger.PIXELS_MISMATCH, "pixel data is not encapsulated")
        pos = 8 + struct.unpack("<I", bot[4:8])[0]
        item = self.read(pos, 8)
        if len(item) < 8 or item[:4] != _ITEM:
            raise Reject(ledger.PIXELS_MISMATCH, "no pixel data fragment")
        length = struct.unpack("<I", item[4:8])[0]
        head = _Fragment(self.read(pos + 8, min(n, length)))  # (may end early: a truncated file)
        head.fragment_length = length
        return head


def _jpeg_size(buf: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, precision) from a JPEG / JPEG-LS frame header; rows may be 0 (DNL)."""
    if not buf.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _SOF:
            if i + 10 > len(buf):
                return None
            precision, rows, cols, comps = struct.unpack(">BHHB", buf[i + 4 : i + 10])
            return rows, cols, comps, precision
        if marker == 0xDA:  # scan data before any frame header
            return None
        i += 2 + struct.unpack(">H", buf[i + 2 : i + 4])[0]
    return None


def _j2k_size(buf: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, precision) from a JPEG 2000 codestream's SIZ marker (also inside JP2)."""
    at = buf.find(b"\xff\x4f\xff\x51")
    if at < 0 or at + 42 > len(buf):
        return None
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", buf[at + 8 : at + 24])
    comps = struct.unpack(">H", buf[at + 40 : at + 42])[0]
    precision = (buf[at + 42] & 0x7F) + 1 if at + 42 < len(buf) else 0
    return ysiz - yo, xsiz - xo, comps, precision
