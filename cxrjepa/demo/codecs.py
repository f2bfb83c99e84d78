"""The DICOM transfer syntaxes this install can *write*, and how to encode pixel data in each: the one
synthetic-DICOM encoder (demo-data and the tests' files go through :func:`encode`).

Uncompressed syntaxes (implicit / explicit VR little endian, deflated, the retired explicit big endian) are
written by pydicom itself. Compressed ones go through pydicom 3's encoders where one of their plugins is
installed (``pydicom.pixels.get_encoder(uid).is_available``), else through python-gdcm's
``ImageChangeTransferSyntax`` (which adds JPEG Lossless, JPEG-LS and JPEG baseline, none of which pydicom
can encode without extra packages). A syntax nobody here can encode is simply not offered.

``demo-data`` draws the syntaxes marked ``demo``; the others (explicit big endian, lossy JPEG 2000,
near-lossless JPEG-LS) are written only when asked for by key.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)


@dataclass(frozen=True)
class Syntax:
    """A transfer syntax the generator may write."""

    key: str  # short name used in configs and manifests
    uid: UID
    lossy: bool = False
    only_8bit: bool = False  # JPEG baseline: 8-bit unsigned only
    gdcm_name: str | None = None  # gdcm.TransferSyntax constant, when gdcm can encode it
    #: preferred pydicom encoding plugins, fastest first; ``None``: never through pydicom (gdcm only)
    pydicom_plugins: tuple[str, ...] | None = ()
    #: extra keyword arguments of ``Dataset.compress`` (a lossy JPEG 2000's compression ratio)
    compress_args: tuple[tuple[str, object], ...] = ()
    #: LossyImageCompressionMethod of a lossy syntax
    lossy_method: str | None = None
    #: drawn by demo-data (``transfer_syntaxes: [auto]``); the others are written only when asked for
    demo: bool = True

    @property
    def name(self) -> str:
        return self.uid.name

    @property
    def compressed(self) -> bool:
        return self.uid.is_compressed


SYNTAXES: tuple[Syntax, ...] = (
    Syntax("explicit", ExplicitVRLittleEndian),
    Syntax("implicit", ImplicitVRLittleEndian),
    Syntax("deflated", DeflatedExplicitVRLittleEndian),
    Syntax("rle", RLELossless, gdcm_name="RLELossless", pydicom_plugins=("pylibjpeg", "gdcm", "pydicom")),
    Syntax("jpeg-lossless", JPEGLosslessSV1, gdcm_name="JPEGLosslessProcess14_1"),
    Syntax("jpeg-ls", JPEGLSLossless, gdcm_name="JPEGLSLossless", pydicom_plugins=("pyjpegls",)),
    Syntax("jpeg2000", JPEG2000Lossless, gdcm_name="JPEG2000Lossless", pydicom_plugins=("pylibjpeg",)),
    Syntax(
        "jpeg-baseline",
        JPEGBaseline8Bit,
        lossy=True,
        only_8bit=True,
        gdcm_name="JPEGBaselineProcess1",
        lossy_method="ISO_10918_1",
    ),
    Syntax("big-endian", ExplicitVRBigEndian, demo=False),
    Syntax(
        "jpeg2000-lossy",
        JPEG2000,
        lossy=True,
        pydicom_plugins=("pylibjpeg",),
        compress_args=(("j2k_cr", [10]),),
        lossy_method="ISO_15444_1",
        demo=False,
    ),
    Syntax(
        "jpeg-ls-near",
        JPEGLSNearLossless,
        lossy=True,
        gdcm_name="JPEGLSNearLossless",
        pydicom_plugins=None,
        lossy_method="ISO_14495_1",
        demo=False,
    ),
)
BY_KEY = {s.key: s for s in SYNTAXES}
BY_UID = {s.uid: s for s in SYNTAXES}
#: the keys demo-data may be asked for
DEMO_KEYS = tuple(s.key for s in SYNTAXES if s.demo)


def _gdcm():
    try:
        import gdcm  # python-gdcm

        return gdcm
    except Exception:  # not installed or broken
        return None


def _pydicom_plugin(syntax: Syntax) -> str | None:
    """The pydicom encoding plugin to use for ``syntax``, or None if pydicom cannot encode it here."""
    if not syntax.compressed:
        return "native"
    if syntax.pydicom_plugins is None:
        return None
    try:
        encoder = pydicom.pixels.get_encoder(syntax.uid)
    except (NotImplementedError, ValueError):
        return None
    if not encoder.is_available:
        return None
    available = set(encoder.available_plugins)
    for plugin in syntax.pydicom_plugins:
        if plugin in available:
            return plugin
    return sorted(available)[0] if available else None


@cache
def encoder_for(key: str) -> str | None:
    """How ``key`` is encoded on this install: ``pydicom`` (native), ``pydicom:<plugin>``, ``gdcm`` or None."""
    syntax = BY_KEY[key]
    plugin = _pydicom_plugin(syntax)
    if plugin == "native":
        return "pydicom"
    if plugin is not None:
        return f"pydicom:{plugin}"
    gdcm = _gdcm()
    if syntax.gdcm_name and gdcm is not None and hasattr(gdcm.TransferSyntax, syntax.gdcm_name):
        return "gdcm"
    return None


def available_syntaxes(*, every: bool = False) -> list[Syntax]:
    """Transfer syntaxes this install can encode, in the order of :data:`SYNTAXES`: those demo-data draws, or
    ``every`` one."""
    return [s for s in SYNTAXES if (every or s.demo) and encoder_for(s.key) is not None]


def needs_even_pixel_count(key: str, bits_allocated: int) -> bool:
    """gdcm's JPEG encoders reject 8-bit frames with an odd number of pixels (the even-padded pixel data
    no longer matches Rows x Columns); the generator then draws one column fewer."""
    return bits_allocated == 8 and encoder_for(key) == "gdcm"


def _gdcm_transcode(ds: Dataset, syntax: Syntax) -> None:
    """Compress ``ds`` (uncompressed, in memory) with gdcm and copy the encapsulated pixel data back.

    gdcm reads and writes files, so the dataset makes a round trip through a temporary folder; every
    other element of ``ds`` stays exactly as pydicom wrote it.
    """
    gdcm = _gdcm()
    assert gdcm is not None and syntax.gdcm_name
    with tempfile.TemporaryDirectory(prefix="cxrjepa-gdcm-") as tmp:
        src, dst = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        if not reader.Read():
            raise RuntimeError(f"gdcm could not read a dataset to encode as {syntax.name}")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax.gdcm_name)))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"gdcm could not encode {syntax.name}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"gdcm could not write {syntax.name}")
        out = pydicom.dcmread(dst)
    ds["PixelData"] = out["PixelData"]
    ds.file_meta.TransferSyntaxUID = syntax.uid
    if out.PhotometricInterpretation != ds.PhotometricInterpretation:  # colour JPEG: stored as YCbCr
        ds.PhotometricInterpretation = out.PhotometricInterpretation
    if syntax.lossy:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = syntax.lossy_method
        for keyword in ("LossyImageCompressionRatio",):
            if keyword in out:
                ds[keyword] = out[keyword]


def encode(ds: Dataset, key: str, *, new_instance_uid: bool = False) -> str:
    """Put ``ds`` (uncompressed pixel data, explicit VR little endian) into the transfer syntax ``key``.

    Returns the encoder used. Raises ``ValueError`` when the syntax cannot hold these pixels (JPEG
    baseline: 8-bit unsigned only) and ``RuntimeError`` when no encoder is installed. ``new_instance_uid``:
    a pydicom encoder gives the compressed copy a new SOPInstanceUID (as ``Dataset.compress`` does by default).
    """
    syntax = BY_KEY[key]
    how = encoder_for(key)
    if how is None:
        raise RuntimeError(f"No encoder for {syntax.name} is installed.")
    if syntax.only_8bit and (int(ds.BitsAllocated) != 8 or int(ds.PixelRepresentation) != 0):
        raise ValueError(f"{syntax.name} holds 8-bit unsigned pixels only.")
    if how == "pydicom":
        if syntax.uid == ExplicitVRBigEndian and int(ds.BitsAllocated) > 8:  # pydicom writes the bytes as they are
            dtype = np.int16 if int(ds.PixelRepresentation) else np.uint16
            ds.PixelData = np.frombuffer(ds.PixelData, dtype=dtype).byteswap().tobytes()
        ds.file_meta.TransferSyntaxUID = syntax.uid
    elif how.startswith("pydicom:"):
        ds.compress(
            syntax.uid,
            encoding_plugin=how.split(":", 1)[1],
            generate_instance_uid=new_instance_uid,
            **dict(syntax.compress_args),
        )
    else:
        _gdcm_transcode(ds, syntax)
    return how
