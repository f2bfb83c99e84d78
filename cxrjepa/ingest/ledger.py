"""The failure ledger: one record per input that did not become a sample, with a categorical reason.

Records are ``{"path", "source_index", "status", "reason", "detail"}``:

* ``status`` is ``rejected`` (bad, unreadable or undecodable input: the run exits with code 3), ``skipped``
  (left out by policy: DICOMDIR, non-image objects, modality filter, FOR PROCESSING, entries that are not
  regular files), ``duplicate`` (same instance or same pixels as an earlier input; ``duplicate_of`` names
  it) or ``ignored`` (not an image by name or content: sidecar, text and hidden files, volume data files
  read through their header, zarr stores and artifacts met inside an input folder).
* ``reason`` is one of a fixed set of sentences; ``detail`` is a category too (an exception class name,
  a transfer syntax or SOP class name), never text taken from a file or from a library's exception
  message, because those can hold identifying values.
"""

from __future__ import annotations

from dataclasses import dataclass

REJECTED = "rejected"
SKIPPED = "skipped"
DUPLICATE = "duplicate"
IGNORED = "ignored"  # not an image (sidecar, text, hidden file): ledgered, never a rejection

# reasons (stable strings: they are the keys of counts.by_reason)
EMPTY_FILE = "empty file"
UNREADABLE_FILE = "unreadable file"  # detail: the system's sentence for the error (no permission, dangling link, ...)
UNREADABLE_FOLDER = "unreadable folder"  # a folder that could not be listed: its files are unknown
NOT_REGULAR = "not a regular file"  # FIFO, socket or device: never opened (detail: which)
LINKED_FOLDER = "link to a folder (not followed)"
UNRECOGNIZED = "unrecognized format"
TEXT_FILE = "text file"
UNREADABLE_DICOM = "unreadable DICOM"
DICOMDIR = "DICOMDIR (a directory index, not an image)"
NON_IMAGE = "non-image DICOM object"
NO_PIXELS = "no pixel data"
UNSUPPORTED_PIXELS = "unsupported pixel data"
NO_DECODER = "no decoder for the transfer syntax on this install"
DECODE_FAILED = "pixel data could not be decoded"
CONSTANT = "constant image"
MODALITY = "modality not selected"
FOR_PROCESSING = "FOR PROCESSING image (use --allow-for-processing)"
UNREADABLE_IMAGE = "unreadable image"
UNREADABLE_VIDEO = "unreadable video"
NO_FRAMES = "no frames"
UNREADABLE_VOLUME = "unreadable volume"
UNSUPPORTED_SHAPE = "unsupported image shape"
WORKER_CRASHED = "the decoder crashed on this input"  # detail: the signal, or the decoders that crashed
TIME_LIMIT = "decoding took longer than the time limit"
MEMORY_LIMIT = "decoding needed more memory than the limit"
TOO_LARGE = "image larger than max_pixels"  # detail: rows x columns
PIXELS_MISMATCH = "header does not match the pixel data"  # Rows, Columns, BitsAllocated, SamplesPerPixel, frames
PIXELS_SHORT = "pixel data shorter than the header describes (a truncated file?)"
INTERNAL = "internal error"
DUP_INSTANCE = "duplicate instance (same SOPInstanceUID or same file)"
DUP_PIXELS = "duplicate pixels"
# ignored entries (status IGNORED)
SIDECAR = "sidecar file (not an image)"  # detail: the extension
HIDDEN = "hidden file or folder"
VOLUME_DATA = "volume data file (read through its header)"
NOT_WALKED = "zarr store or cxrjepa artifact (not walked)"
# masks (--masks): the image is rejected with its mask, never kept with a wrong or missing one
MASK_UNREADABLE = "unreadable mask"
MASK_SIZE = "mask size differs from the image"
MASK_VALUES = "mask values are not a label map"
MASK_AMBIGUOUS = "mask name matches several inputs or files"
MASK_MULTIFRAME = "mask for a multi-frame sample (masks are for still images)"
MASK_OTHER_IMAGE = "DICOM SEG mask references another image"


class Reject(Exception):
    """An input that does not become a sample. ``detail`` must be a category, never a value from a file."""

    def __init__(self, reason: str, detail: str = "", status: str = REJECTED):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.status = status


def skip(reason: str, detail: str = "") -> Reject:
    return Reject(reason, detail, SKIPPED)


@dataclass
class Record:
    path: str
    source_index: int
    status: str
    reason: str
    detail: str = ""
    duplicate_of: str = ""
    format: str = ""

    def to_json(self) -> dict:
        d = {"path": self.path, "source_index": self.source_index, "status": self.status, "reason": self.reason}
        if self.detail:
            d["detail"] = self.detail
        if self.duplicate_of:
            d["duplicate_of"] = self.duplicate_of
        if self.format:
            d["format"] = self.format
        return d
