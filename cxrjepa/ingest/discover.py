"""Finding inputs: walk folders (and accept single files and file lists), sorted, and recognise each file's
format by its content (DICOM with or without preamble, PNG, JPEG, ...), falling back to the extension for
videos and volumes.

Every entry met is accounted for: regular files are inputs (a sample or a ledger row); everything else gets
a ledger row from discovery itself and is never opened (see :data:`InputItem.verdict`):

* sidecar files (CSV, text, JSON, YAML, notebooks, ...), hidden files and folders, the data file of a
  detached volume header, zarr stores and cxrjepa artifacts inside an input folder: ``ignored``;
* FIFOs, sockets and devices (opening a FIFO waits forever for a writer): ``skipped``, "not a regular file";
  links to folders are not followed (no loops, no second copy of a tree): ``skipped``;
* folders that cannot be listed, dangling links and link loops: ``rejected``, "unreadable folder" /
  "unreadable file", with the system's sentence for the error as detail.

File names are bytes on Linux and need not be UTF-8: such names are opened as they are and recorded with
the offending bytes written as ``\\xNN`` (:func:`display_name`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from cxrjepa.core.errors import UsageError
from cxrjepa.ingest import ledger
from cxrjepa.ingest.context import InputItem
from cxrjepa.ingest.ledger import Reject

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


def display_name(name: str) -> str:
    """``name`` as text that is valid UTF-8 whatever the file system holds: bytes of a name that are not
    UTF-8 (legal on Linux, common in old archives) are written as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@contextlib.contextmanager
def utf8_name(path: str | Path) -> Iterator[str]:
    """A name of ``path`` that libraries taking UTF-8 strings can open: ``path`` itself, or for a name that
    is not UTF-8 a link with a plain name in a temporary folder (OpenCV crashes on such a name, SimpleITK
    refuses it). A detached volume header opened through the link does not find its data file."""
    name = os.fspath(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        with tempfile.TemporaryDirectory(prefix="cxrjepa-") as tmp:
            link = os.path.join(tmp, "input" + _ext(display_name(os.path.basename(name))))
            os.symlink(os.path.abspath(name), link)
            yield link
        return
    yield name


def unreadable(exc: OSError) -> str:
    """The detail of an "unreadable" ledger row: the system's fixed sentence for the error (never a name)."""
    code = exc.errno or errno.EIO
    return {errno.ENOENT: "dangling link or missing file", errno.ELOOP: "link loop"}.get(code, os.strerror(code))


def special_kind(mode: int) -> str:
    """What a non-regular, non-folder entry is (its ``st_mode``)."""
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def read_head(path: str | Path, n: int = 352) -> bytes:
    """The first ``n`` bytes of a regular file. The file is opened without blocking and checked to be
    regular before any read, so a FIFO or device put in its place never hangs the reader.

    Raises :class:`Reject` ("unreadable file", or "not a regular file" as a skip)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise Reject(ledger.UNREADABLE_FILE, unreadable(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise Reject(ledger.UNREADABLE_FILE, "a folder, not a file")
        if not stat.S_ISREG(mode):
            raise Reject(ledger.NOT_REGULAR, special_kind(mode), status=ledger.SKIPPED)
        return os.read(fd, n)
    except OSError as exc:
        raise Reject(ledger.UNREADABLE_FILE, unreadable(exc)) from None
    finally:
        os.close(fd)


def sniff(path: str | Path) -> str:
    """The format of ``path`` from its first bytes (then its extension): one of dicom, image, video,
    volume, text, empty, unknown. Raises :class:`Reject` for a file that cannot be read or is not a
    regular file (see :func:`read_head`)."""
    head = read_head(path)
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
    if (
        head[4:8] == b"ftyp"
        or (head.startswith(b"RIFF") and head[8:11] == b"AVI")
        or head.startswith(b"\x00\x00\x01\xba")
    ):
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


def _is_artifact(folder: str, names: Sequence[str]) -> bool:
    if "manifest.yaml" not in names:
        return False
    try:
        with open(os.path.join(folder, "manifest.yaml"), encoding="utf-8", errors="replace") as fh:
            head = fh.read(200)
    except OSError:
        return False
    return "cxrjepa.artifact/" in head


Verdict = tuple[str, str, str]
_INPUT: Verdict = ()


def _ignored(name: str, is_folder: bool = False) -> Verdict:
    if name.startswith("."):
        return (ledger.IGNORED, ledger.HIDDEN, "folder" if is_folder else "file")
    return (ledger.IGNORED, ledger.SIDECAR, _ext(name))


def _link_verdict(path: str) -> Verdict:
    """A symbolic link: its target decides (a regular file is an input; folders are not followed)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:  # dangling, a loop, or a target we may not see
        return (ledger.REJECTED, ledger.UNREADABLE_FILE, unreadable(exc))
    if stat.S_ISDIR(mode):
        return (ledger.SKIPPED, ledger.LINKED_FOLDER, "")
    return _INPUT if stat.S_ISREG(mode) else (ledger.SKIPPED, ledger.NOT_REGULAR, special_kind(mode))


def _entry_verdict(entry: os.DirEntry, headers: set[str]) -> Verdict:
    """The verdict on a folder entry that is not a folder: by name first (sidecars and hidden files are
    never opened), then by type. Only :class:`os.DirEntry` data is used for regular files (no extra
    system call per file)."""
    name = entry.name
    if is_sidecar(name):
        return _ignored(name)
    ext = _ext(name)
    if ext in VOLUME_DATA_EXTS and name[: -len(ext)] in headers:
        return (ledger.IGNORED, ledger.VOLUME_DATA, "")
    try:
        if entry.is_symlink():
            return _link_verdict(entry.path)
        if entry.is_file(follow_symlinks=False):
            return _INPUT
        return (ledger.SKIPPED, ledger.NOT_REGULAR, special_kind(entry.stat(follow_symlinks=False).st_mode))
    except OSError as exc:
        return (ledger.REJECTED, ledger.UNREADABLE_FILE, unreadable(exc))


def _walk(root: str, exclude: frozenset[str] = frozenset()) -> Iterator[tuple[str, str, Verdict]]:
    """``(path, path relative to root, verdict)`` for every entry under ``root``: a folder's entries in
    name order, then its sub-folders one after the other, depth first (the order of ``os.walk``).

    Hidden folders, zarr stores, cxrjepa artifacts (an output folder inside an input folder) and folders
    that cannot be listed are one row each; ``exclude`` (this run's output and mask folders) is passed over.
    """
    stack: list[tuple[str, str]] = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        if os.path.realpath(folder) in exclude:
            continue
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not rel:
                why = os.strerror(exc.errno or errno.EIO)
                raise UsageError(f"The input folder '{display_name(folder)}' cannot be read ({why}).") from None
            yield folder, rel + "/", (ledger.REJECTED, ledger.UNREADABLE_FOLDER, unreadable(exc))
            continue
        names = [e.name for e in entries]
        if _is_artifact(folder, names):
            if rel:
                yield folder, rel + "/", (ledger.IGNORED, ledger.NOT_WALKED, "artifact")
            continue
        headers = {n[: -len(_ext(n))] for n in names if _ext(n) in (".mhd", ".nhdr")}
        subfolders = []
        for entry in entries:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_folder = False
            if not is_folder:
                yield entry.path, sub, _entry_verdict(entry, headers)
            elif entry.name.startswith("."):
                yield entry.path, sub + "/", _ignored(entry.name, is_folder=True)
            elif entry.name.endswith(".zarr"):
                yield entry.path, sub + "/", (ledger.IGNORED, ledger.NOT_WALKED, "zarr")
            else:
                subfolders.append((entry.path, sub))
        stack.extend(reversed(subfolders))


def _read_list(path: Path) -> list[Path]:
    base = path.parent
    out = []
    for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            out.append(p if p.is_absolute() else base / p)
    return out


def _named_verdict(path: str) -> Verdict:
    """A file named explicitly (a single-file source, a line of a file list): an input whatever its name,
    when it is a regular file."""
    try:
        if os.path.islink(path):
            return _link_verdict(path)
        mode = os.stat(path).st_mode
    except OSError as exc:
        return (ledger.REJECTED, ledger.UNREADABLE_FILE, unreadable(exc))
    if stat.S_ISDIR(mode):
        return (ledger.REJECTED, ledger.UNREADABLE_FILE, "a folder, not a file")
    return _INPUT if stat.S_ISREG(mode) else (ledger.SKIPPED, ledger.NOT_REGULAR, special_kind(mode))


def discover(sources: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> list[InputItem]:
    """Every entry of every source in a deterministic order (source order, then sorted path).

    A source is a folder (walked recursively), a file, or ``@LIST`` (a text file with one path per line,
    relative to the list's folder). Paths are recorded relative to their source (a file's own name for a
    single-file source). Entries that are not inputs carry their ledger row as ``verdict`` (see the module
    docstring); nothing inside ``exclude`` (the output and mask folders) is an entry.
    """
    items: list[InputItem] = []
    skip = frozenset(os.path.realpath(p) for p in exclude)
    for index, src in enumerate(sources):
        src_s = str(src)
        if src_s.startswith("@"):
            lst = Path(src_s[1:])
            if not lst.is_file():
                raise UsageError(f"The file list '{lst}' does not exist.")
            base = lst.parent
            for f in sorted(set(_read_list(lst))):
                rel = os.path.relpath(f, base).replace(os.sep, "/")
                items.append(InputItem(str(f), display_name(rel), index, verdict=_named_verdict(str(f))))
            continue
        root = Path(src)
        if root.is_dir():
            items.extend(
                InputItem(path, display_name(rel), index, verdict=v) for path, rel, v in _walk(str(root), skip)
            )
        elif os.path.lexists(root):
            items.append(InputItem(str(root), display_name(root.name), index, verdict=_named_verdict(str(root))))
        else:
            raise UsageError(f"The input '{root}' does not exist.")
    return items
