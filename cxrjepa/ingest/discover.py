"""Finding inputs: walk folders (and accept single files and file lists), sorted, and recognise each file's
format by its content (DICOM with or without preamble, PNG, JPEG, ...), falling back to the extension for
videos and volumes.

Sidecar files (CSV, text, JSON, YAML, notebooks, ...) and hidden files are *ignored* (counted, not ledgered);
every other file is an input that becomes a sample or a ledger record.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from cxrjepa.core.errors import UsageError
from cxrjepa.ingest.context import InputItem

DICOM = "dicom"
IMAGE = "image"
VIDEO = "video"
VOLUME = "volume"
UNKNOWN = "unknown"
EMPTY = "empty"
TEXT = "text"

VIDEO_EXTS = (".mp4", ".m4v", ".avi", ".mov", ".mpeg", ".mpg", ".gif", ".wmv", ".mkv", ".webm", ".ogv")
VOLUME_EXTS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm")
#: files that are never images: ignored, not rejected
SIDECAR_EXTS = frozenset(
    ".csv .tsv .txt .md .rst .json .jsonl .yaml .yml .xml .html .htm .log .ini .cfg .toml .py .sh .ipynb "
    ".xls .xlsx .doc .docx .pdf .parquet .zarr .db .sqlite .lock".split()
)
#: detached data files of volume headers (.mhd / .nhdr point at them)
VOLUME_DATA_EXTS = (".raw", ".zraw", ".img")


def _ext(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(lower)[1]


def is_sidecar(name: str) -> bool:
    return name.startswith(".") or _ext(name) in SIDECAR_EXTS or name.upper() == "LICENSE"


def sniff(path: str | Path) -> str:
    """The format of ``path`` from its first bytes (then its extension): one of dicom, image, video,
    volume, text, empty, unknown."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
    except OSError:
        return UNKNOWN
    if not head:
        return EMPTY
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    ext = _ext(str(path))
    if head.startswith(b"GIF8"):
        return VIDEO
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x0cjP  ")):
        return IMAGE
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return IMAGE
    if head[4:8] == b"ftyp" or (head.startswith(b"RIFF") and head[8:11] == b"AVI") or head.startswith(b"\x00\x00\x01\xba"):
        return VIDEO
    if ext in VOLUME_EXTS or head.startswith(b"NRRD") or head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return VOLUME
    if ext in VIDEO_EXTS:
        return VIDEO
    if _looks_like_bare_dicom(head):
        return DICOM
    if ext in IMAGE_EXTS:
        return IMAGE  # let the image reader decide (and reject with a reason)
    if _is_text(head):
        return TEXT
    return UNKNOWN


#: extensions that promise an image: a text file wearing one is a rejection, not a sidecar
PROMISING_EXTS = frozenset((".dcm", ".dicom", ".dic", ".ima") + VIDEO_EXTS + VOLUME_EXTS + IMAGE_EXTS)


def promises_image(name: str) -> bool:
    return _ext(name) in PROMISING_EXTS


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head[:-3].decode("utf-8", errors="strict") if len(head) > 3 and _utf8_prefix(head) else None
    if text is None:
        return False
    return all(ch.isprintable() or ch in "\r\n\t\f" for ch in text)


def _utf8_prefix(head: bytes) -> bool:
    """True when ``head`` is valid UTF-8 except for a multi-byte character cut at the end."""
    for cut in (1, 2, 3):
        try:
            head[:-cut].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A DICOM data set without preamble and file meta: starts with a group 0002 or 0008 element."""
    if len(head) < 8:
        return False
    vr = head[4:6]
    explicit = vr.isalpha() and vr.isupper()
    for order in "<>":  # little endian (usual) or explicit VR big endian
        group, elem = struct.unpack(order + "HH", head[:4])
        if group not in (0x0002, 0x0008) or elem > 0x0020:
            continue
        if explicit:
            return True
        if order == "<":
            (length,) = struct.unpack("<I", head[4:8])  # implicit VR: a small value length
            return 0 < length < 256 or (elem == 0 and length == 4)
    return False


def _is_artifact(folder: str, filenames: list[str]) -> bool:
    if "manifest.yaml" not in filenames:
        return False
    try:
        with open(os.path.join(folder, "manifest.yaml"), encoding="utf-8", errors="replace") as fh:
            head = fh.read(200)
    except OSError:
        return False
    return "cxrjepa.artifact/" in head


def _walk(root: Path, exclude: frozenset[str] = frozenset()) -> Iterable[Path]:
    """Files under ``root`` in sorted order, skipping hidden folders, zarr stores, cxrjepa artifacts
    (an output folder inside an input folder) and ``exclude``."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if os.path.realpath(dirpath) in exclude or _is_artifact(dirpath, filenames):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(".zarr"))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _read_list(path: Path) -> list[Path]:
    base = path.parent
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            out.append(p if p.is_absolute() else base / p)
    return out


def discover(sources: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> tuple[list[InputItem], int]:
    """Inputs of every source in a deterministic order (source order, then sorted path), and how many
    files were ignored as sidecars.

    A source is a folder (walked recursively), a file, or ``@LIST`` (a text file with one path per line,
    relative to the list's folder). Paths are recorded relative to their source (a file's own name for a
    single-file source). Volume data files referenced by a header (.raw next to .mhd) are not inputs, nor
    is anything inside ``exclude`` (the output folder) or inside another cxrjepa artifact.
    """
    items: list[InputItem] = []
    ignored = 0
    skip = frozenset(os.path.realpath(p) for p in exclude)
    for index, src in enumerate(sources):
        src_s = str(src)
        if src_s.startswith("@"):
            lst = Path(src_s[1:])
            if not lst.is_file():
                raise UsageError(f"The file list '{lst}' does not exist.")
            files = sorted(set(_read_list(lst)))
            base = lst.parent
            for f in files:
                rel = os.path.relpath(f, base).replace(os.sep, "/")
                items.append(InputItem(str(f), rel, index))
            continue
        root = Path(src)
        if root.is_file():
            items.append(InputItem(str(root), root.name, index))
            continue
        if not root.is_dir():
            raise UsageError(f"The input '{root}' does not exist.")
        files = list(_walk(root, skip))
        headers = {str(f)[: -len(_ext(f.name))] for f in files if _ext(f.name) in (".mhd", ".nhdr")}
        for f in files:
            if is_sidecar(f.name) or (_ext(f.name) in VOLUME_DATA_EXTS and str(f)[: -len(_ext(f.name))] in headers):
                ignored += 1
                continue
            items.append(InputItem(str(f), f.relative_to(root).as_posix(), index))
    return items, ignored
