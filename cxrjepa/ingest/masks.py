"""Masks through ingest (``--masks``): pair mask files with inputs, read them, store them with the image's
exact geometry as uint8 label maps (docs/ingest.md, "Masks").

Pairing happens once, in the main process, before any pixel is read: each input gets the mask files that
belong to it (:attr:`InputItem.masks`). Sources of masks:

* ``DIR``: mask files anywhere under DIR, matched to an input by their path relative to DIR without
  extension (a tree that mirrors the inputs), else by file stem when that stem names a single input. A
  ``_mask`` / ``-mask`` / ``_seg`` / ``-seg`` suffix is ignored (``IMG1_mask.png`` belongs to ``IMG1.dcm``).
  Binary files become class 1; label maps keep their values (0 = background).
* ``NAME=DIR``: binary masks of the class NAME (every non-zero pixel). Several give classes 1, 2, ... in
  the order given (e.g. ``--masks left_lung=L --masks right_lung=R``); where they overlap the later wins.
* a column of the labels CSV (``labels_mask_column``): mask paths relative to the CSV's folder, several
  separated by ``|`` (the k-th file's non-zero pixels become class k).

Reading happens in the workers, right after the image (:func:`attach_masks`): PNG, JPEG, BMP, TIFF, GIF
(Pillow: palette indices are labels), DICOM SEG (highdicom; the SEG must reference the image), other
DICOM objects (their stored values), NIfTI / MHA / NRRD (SimpleITK; one slice). The mask must have the
image's original size; it is mapped to the stored square with :func:`~cxrjepa.ingest.geometry.apply_geometry`
(``nearest=True``) and the image's recorded geometry. JPEG is lossy, so JPEG masks are thresholded at half
their range (binary). Any problem rejects the input with a reason in the ledger, never keeps the image with
a wrong or missing mask.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cxrjepa.core.errors import UsageError
from cxrjepa.ingest import discover, ledger
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.geometry import Geometry, apply_geometry
from cxrjepa.ingest.ledger import Reject
from cxrjepa.ingest.table import Sample, pixel_hash

#: file name endings of mask files (longest first, so .nii.gz wins over .gz)
MASK_EXTS = (
    ".nii.gz",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".webp",
    ".pgm",
    ".ppm",
    ".dcm",
    ".dicom",
    ".nii",
    ".mha",
    ".mhd",
    ".nrrd",
)
#: file name endings of inputs that are dropped to get an input's stem
INPUT_EXTS = tuple(
    sorted(
        set(discover.IMAGE_EXTS + discover.VOLUME_EXTS + discover.VIDEO_EXTS + (".dcm", ".dicom", ".dic", ".ima")),
        key=len,
        reverse=True,
    )
)
#: suffixes of mask stems that are ignored when matching (IMG1_mask.png belongs to IMG1)
MASK_SUFFIXES = ("_mask", "-mask", "_seg", "-seg")
#: label value of "ignore" in label maps (as in PASCAL VOC); the segmentation probe skips these pixels
IGNORE = 255


# ---------------------------------------------------------------- pairing (main process)


@dataclass(frozen=True)
class MaskSource:
    """One ``--masks`` value: a folder, and the class name when its files are binary masks of one class."""

    path: Path
    name: str | None = None

    @classmethod
    def parse(cls, text: str | Path) -> MaskSource:
        s = str(text)
        name, sep, folder = s.partition("=")
        if sep and name and "/" not in name and not Path(s).exists():
            return cls(Path(folder), name.strip())
        return cls(Path(s))


def parse_sources(masks: Sequence[str | Path] | str | Path | None) -> list[MaskSource]:
    if masks is None:
        return []
    values = [masks] if isinstance(masks, (str, Path)) else list(masks)
    sources = [MaskSource.parse(v) for v in values]
    for s in sources:
        if not s.path.is_dir():
            raise UsageError(f"The masks folder '{s.path}' does not exist.")
    named = [s for s in sources if s.name]
    if named and len(named) != len(sources):
        raise UsageError(
            "Give masks either as one folder (label maps or binary masks) or as NAME=FOLDER "
            "for every class, not a mix of both."
        )
    if len(sources) > 1 and not named:
        raise UsageError("Several masks folders need class names: --masks NAME=FOLDER for each.")
    if len({s.name for s in named}) != len(named):
        raise UsageError("Each --masks class name must be given once.")
    return sources


def _strip_ext(name: str, exts: Sequence[str]) -> str:
    lower = name.lower()
    for e in exts:
        if lower.endswith(e) and len(name) > len(e):
            return name[: -len(e)]
    return name


def input_key(rel: str) -> str:
    """An input's path without its file extension (``P1/IMG1.dcm`` -> ``P1/IMG1``)."""
    head, _, name = rel.rpartition("/")
    stem = _strip_ext(name, INPUT_EXTS)
    return f"{head}/{stem}" if head else stem


def mask_key(rel: str) -> str:
    """A mask file's path without extension and without a ``_mask``-like suffix."""
    head, _, name = rel.rpartition("/")
    stem = _strip_ext(name, MASK_EXTS)
    for suf in MASK_SUFFIXES:
        if stem.lower().endswith(suf) and len(stem) > len(suf):
            stem = stem[: -len(suf)]
            break
    return f"{head}/{stem}" if head else stem


def _mask_files(folder: Path) -> list[str]:
    """Mask files under ``folder`` (relative, '/'-separated, sorted); hidden files and sidecars left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not discover.is_sidecar(name):
                out.append(Path(os.path.relpath(os.path.join(dirpath, name), folder)).as_posix())
    return out


@dataclass
class Pairing:
    """Inputs with their masks, and what the manifest says about the pairing."""

    items: list[InputItem]
    classes: dict[str, str] = field(default_factory=dict)  # label value -> class name (named sources)
    stats: dict[str, int] = field(default_factory=dict)
    excluded: list[Path] = field(default_factory=list)  # folders that must not be ingested as inputs


def pair_masks(items: list[InputItem], sources: Sequence[MaskSource]) -> Pairing:
    """Give each input the mask files of every source that match it (see the module docstring)."""
    stems = Counter(input_key(i.rel).rpartition("/")[2] for i in items if not i.verdict)
    found: list[list[tuple[str, int]]] = [[] for _ in items]
    errors = [""] * len(items)
    files_total = files_used = 0
    for k, src in enumerate(sources):
        label = k + 1 if src.name else 0
        files = _mask_files(src.path)
        files_total += len(files)
        by_path: dict[str, list[str]] = defaultdict(list)
        by_stem: dict[str, list[str]] = defaultdict(list)
        for f in files:
            key = mask_key(f)
            by_path[key].append(f)
            by_stem[key.rpartition("/")[2]].append(f)
        used: set[str] = set()
        for i, item in enumerate(items):
            if item.verdict:  # not an input (a sidecar, a FIFO, ...): never paired
                continue
            key = input_key(item.rel)
            stem = key.rpartition("/")[2]
            hits = by_path.get(key)
            if hits is None and stem in by_stem:
                hits = by_stem[stem]
                if stems[stem] > 1:  # the name does not say which input it belongs to
                    errors[i] = errors[i] or ledger.MASK_AMBIGUOUS
                    used.update(hits)
                    continue
            if not hits:
                continue
            used.update(hits)
            if len(hits) > 1:
                errors[i] = errors[i] or ledger.MASK_AMBIGUOUS
                continue
            found[i].append((str(src.path / hits[0]), label))
        files_used += len(used)
    out = [
        replace(item, masks=tuple(m), mask_error=e) if (m or e) else item for item, m, e in zip(items, found, errors)
    ]
    classes = {str(k + 1): s.name for k, s in enumerate(sources) if s.name}
    stats = {
        "mask_files": files_total,
        "mask_files_unmatched": files_total - files_used,
        "inputs_with_masks": sum(1 for m, e in zip(found, errors) if m and not e),
    }
    return Pairing(out, classes, stats, [s.path for s in sources])


def pair_masks_from_csv(
    items: list[InputItem], csv: str | Path, mask_column: str, key: str, key_column: str = ""
) -> Pairing:
    """Masks named in a column of the labels CSV (paths relative to the CSV's folder, ``|`` between several)."""
    import pandas as pd

    from cxrjepa.ingest.labels import KEY_COLUMNS, clean_path, find_column

    if key not in ("path", "filename"):
        raise UsageError(
            "A masks column in the labels CSV needs --key path or filename (UIDs are only known after reading)."
        )
    header = list(pd.read_csv(csv, nrows=0).columns)
    if mask_column not in header:
        raise UsageError(f"The labels file '{csv}' has no masks column '{mask_column}'.")
    key_col = key_column or find_column(header, KEY_COLUMNS[key]) or header[0]
    table = pd.read_csv(csv, dtype=str, usecols=[key_col, mask_column], keep_default_na=False)
    base = Path(csv).parent
    by_rel: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if not it.verdict:
            by_rel[it.rel if key == "path" else it.rel.rpartition("/")[2]].append(i)
    found: dict[int, list[tuple[str, int]]] = {}
    errors: dict[int, str] = {}
    n_files = 0
    for k, value in zip(table[key_col], table[mask_column]):
        files = [v.strip() for v in str(value).split("|") if v.strip()]
        if not files or not str(k).strip():
            continue
        n_files += len(files)
        k = clean_path(str(k))
        if key == "filename":
            hits = by_rel.get(k.rpartition("/")[2], [])
        else:
            parts = k.split("/")
            hits = by_rel.get(k, [])
            while not hits and len(parts) > 1:
                parts = parts[1:]
                hits = by_rel.get("/".join(parts), [])
        refs = [
            (str(p if (p := Path(f)).is_absolute() else base / f), j + 1 if len(files) > 1 else 0)
            for j, f in enumerate(files)
        ]
        for i in hits:
            if i in found:
                errors[i] = ledger.MASK_AMBIGUOUS
            found[i] = refs
    out = [
        replace(it, masks=tuple(found.get(i, ())), mask_error=errors.get(i, "")) if (i in found or i in errors) else it
        for i, it in enumerate(items)
    ]
    stats = {"mask_files": n_files, "inputs_with_masks": sum(1 for i in found if i not in errors)}
    return Pairing(out, {}, stats, [])


# ---------------------------------------------------------------- reading (workers)


def _pil_array(path: Path) -> tuple[np.ndarray, bool]:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        lossy = (im.format or "").upper() in ("JPEG", "MPO", "WEBP")
        im = ImageOps.exif_transpose(im) if (im.format or "").upper() in ("JPEG", "MPO", "TIFF", "WEBP") else im
        if im.mode == "P" or im.mode == "1" or im.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(im)
        else:  # colour: a grey mask saved as RGB(A) is fine, a colour-coded one is not a label map
            rgb = np.asarray(im.convert("RGB"))
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise Reject(ledger.MASK_VALUES, "colour mask")
            arr = rgb[..., 0]
    return arr, lossy


def _dicom_array(path: Path, row: dict, ctx: Context) -> tuple[np.ndarray, dict[str, str]]:
    from cxrjepa.ingest.dicom import quiet_pydicom, read_header

    with quiet_pydicom():
        ds = read_header(path, stop_before_pixels=True)
        if str(ds.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.66.4":
            return np.asarray(read_header(path).pixel_array), {}
        try:
            import highdicom as hd
        except ImportError:
            raise Reject(ledger.MASK_UNREADABLE, "DICOM SEG needs highdicom (pip install highdicom)") from None
        seg = hd.seg.segread(str(path))
        sops = [uid for _, _, uid in seg.get_source_image_uids()]
        mine = [uid for uid in sops if ctx.salt.key("sop", str(uid)) == row["sample_id"]]
        if not mine:
            raise Reject(ledger.MASK_OTHER_IMAGE)
        numbers = list(seg.segment_numbers)
        labels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=mine[:1], segment_numbers=numbers, combine_segments=True, relabel=False
        )
        names = {}
        for n in numbers:
            desc = seg.get_segment_description(n)
            names[str(n)] = str(desc.segmented_property_type.meaning)
        return np.asarray(labels)[0], names


def _volume_array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    with discover.utf8_name(path) as name:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(name))
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise Reject(ledger.MASK_VALUES, f"{arr.ndim}-D mask volume")
    return arr


def read_mask(path: str | Path, row: dict, ctx: Context) -> tuple[np.ndarray, bool, dict[str, str]]:
    """A mask file as a 2-D array (source pixels), whether it is lossy, and class names it carries."""
    path = Path(path)
    try:
        fmt = discover.sniff(path)
    except Reject as r:  # missing, unreadable or not a regular file
        raise Reject(ledger.MASK_UNREADABLE, r.detail) from None
    try:
        if fmt == discover.DICOM:
            arr, names = _dicom_array(path, row, ctx)
            return arr, False, names
        if fmt == discover.VOLUME:
            return _volume_array(path), False, {}
        if fmt in (discover.IMAGE, discover.VIDEO):  # GIF sniffs as video; masks are single images
            arr, lossy = _pil_array(path)
            return arr, lossy, {}
    except Reject:
        raise
    except Exception as exc:  # library messages can quote file content: the class name only
        raise Reject(ledger.MASK_UNREADABLE, type(exc).__name__) from None
    raise Reject(ledger.MASK_UNREADABLE, fmt)


def to_labels(arr: np.ndarray, label: int, lossy: bool) -> np.ndarray:
    """One mask file's values -> a uint8 label map (see the module docstring)."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating) and (not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a))):
        raise Reject(ledger.MASK_VALUES, "fractional values")
    if lossy:
        top = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else float(a.max() or 1)
        return np.where(a >= top / 2, max(label, 1), 0).astype(np.uint8)
    if label > 0:
        return np.where(a != 0, label, 0).astype(np.uint8)
    values = np.unique(a)
    if values[0] < 0:
        raise Reject(ledger.MASK_VALUES, "negative values")
    nz = values[values > 0]
    top = np.iinfo(a.dtype).max if np.issubdtype(a.dtype, np.integer) else None
    if len(nz) == 0 or (len(nz) == 1 and (nz[0] == 1 or nz[0] == top)):
        return (a != 0).astype(np.uint8)
    if nz[-1] > 255:
        raise Reject(ledger.MASK_VALUES, "labels above 255")
    return a.astype(np.uint8)


def attach_masks(sample: Sample, item: InputItem, ctx: Context) -> Sample:
    """Read the input's masks, check their size, store them with the sample's geometry."""
    if item.mask_error:
        raise Reject(item.mask_error)
    row = sample.row
    if int(sample.frames.shape[0]) != 1:
        raise Reject(ledger.MASK_MULTIFRAME)
    shape = (int(row["rows"]), int(row["cols"]))
    combined: np.ndarray | None = None
    names: dict[str, str] = {}
    for path, label in item.masks:
        arr, lossy, found = read_mask(path, row, ctx)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if tuple(arr.shape) != shape:
            raise Reject(ledger.MASK_SIZE, f"mask {'x'.join(map(str, arr.shape))}, image {shape[0]}x{shape[1]}")
        lm = to_labels(arr, label, lossy)
        names.update(found)
        combined = lm if combined is None else np.where(lm > 0, lm, combined)
    assert combined is not None
    stored = apply_geometry(combined, Geometry.from_row(row, ctx.config.size), nearest=True)[None]
    sample.mask = stored
    row["has_mask"] = True
    row["_mask_hash"] = pixel_hash(stored)
    row["_mask_names"] = json.dumps(names, sort_keys=True) if names else ""
    row["_mask_values"] = ",".join(str(int(v)) for v in np.unique(stored) if v > 0)
    return sample


def class_names(
    pairing_classes: dict[str, str], configured: Sequence[str], found: Sequence[str], values: Sequence[int]
) -> dict[str, str]:
    """Label value -> class name for the manifest: named sources, else ``mask_classes``, else names from
    DICOM SEG files, else ``foreground`` for binary masks and the value itself for label maps."""
    out: dict[str, str] = {}
    seg: dict[str, str] = {}
    for text in found:
        if text:
            seg.update(json.loads(text))
    for v in sorted(int(x) for x in values if 0 < int(x) < IGNORE):
        k = str(v)
        if k in pairing_classes:
            out[k] = pairing_classes[k]
        elif v <= len(configured):
            out[k] = configured[v - 1]
        elif k in seg:
            out[k] = seg[k]
        else:
            out[k] = "foreground" if v == 1 and not pairing_classes else k
    for k, name in pairing_classes.items():  # named classes are listed even when no pixel has them
        out.setdefault(k, name)
    for i, name in enumerate(configured):
        out.setdefault(str(i + 1), name)
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))
