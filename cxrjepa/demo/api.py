"""``cxrjepa demo-data``: a synthetic chest radiograph archive with labels and lung masks.

The archive looks like what a radiology team exports: DICOM files in nested patient / study folders, with
and without ``.dcm``, of many sizes, bit depths, photometric interpretations, rescale and VOI settings and
transfer syntaxes, carrying fake identifying attributes. Each image is a phantom (see
:mod:`cxrjepa.demo.phantom`) with independently drawn findings (``nodule``, ``effusion``) that a probe can
learn, an exact lung mask, and a row in ``labels.csv``. Everything follows from the seed: the same config
writes byte-identical files.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset

from cxrjepa.core import console
from cxrjepa.core.artifact import Artifact, begin
from cxrjepa.core.atomic import atomic_write_text
from cxrjepa.core.errors import ConfigError
from cxrjepa.core.fingerprint import hash_files
from cxrjepa.core.lock import locks_output
from cxrjepa.demo import codecs, dicom, ultrasound
from cxrjepa.demo.phantom import (
    Anatomy,
    Findings,
    Phantom,
    View,
    draw,
    persist_findings,
    sample_anatomy,
    sample_findings,
    sample_view,
)
from cxrjepa.demo.storage import Storage, sample_storage, set_pixel_tags, to_stored

#: bump when a change to this stage's code changes what it writes for the same settings and inputs
#: (docs/artifacts.md, "Algorithm versions")
ALGORITHM_VERSION = 1
LABEL_COLUMNS = ("nodule", "effusion")
CSV_COLUMNS = ("file", "patient_id", "nodule", "effusion", "sex", "age", "view")
US_CSV_COLUMNS = (
    "file",
    "patient_id",
    "frames",
    "fps",
    "photometric",
    "transfer_syntax",
    "regions",
    "x0",
    "y0",
    "x1",
    "y1",
)

#: how often each transfer syntax is drawn (every available one appears at least once when n allows)
SYNTAX_WEIGHTS = {
    "explicit": 0.42,
    "implicit": 0.14,
    "deflated": 0.06,
    "rle": 0.10,
    "jpeg-lossless": 0.08,
    "jpeg-ls": 0.07,
    "jpeg2000": 0.07,
    "jpeg-baseline": 0.06,
}

#: cines are written uncompressed or RLE (how scanners commonly export them), as far as the config allows
US_SYNTAXES = ("explicit", "rle", "implicit")

# random streams: every draw comes from np.random.default_rng([seed, STREAM, ...])
_PLAN, _PATIENT, _FINDINGS, _ACQ, _STORAGE, _STUDY, _US = range(1, 8)


@dataclass
class DemoConfig:
    """Settings of the synthetic archive (all of them enter the artifact's fingerprint)."""

    n: int = 240  # chest radiographs
    seed: int = 0
    ultrasound: int = 0  # ultrasound cines
    nodule_rate: float = 0.42  # share of patients' first images with a nodule
    effusion_rate: float = 0.42
    second_image_rate: float = 0.1  # share of patients with a second, later image
    min_size: int = 200  # shorter image side, pixels (at least)
    max_size: int = 640  # longer image side, pixels (at most)
    transfer_syntaxes: list[str] = field(
        default_factory=lambda: ["auto"]
    )  # keys, or "auto": all this install can write

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigError("'n' must be at least 1.")
        if self.ultrasound < 0:
            raise ConfigError("'ultrasound' cannot be negative.")
        for name in ("nodule_rate", "effusion_rate", "second_image_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"'{name}' must be between 0 and 1.")
        if not 64 <= self.min_size <= self.max_size <= 4096:
            raise ConfigError("Sizes must satisfy 64 <= min_size <= max_size <= 4096.")
        for key in self.transfer_syntaxes:
            if key != "auto" and key not in codecs.DEMO_KEYS:
                raise ConfigError(f"Unknown transfer syntax '{key}'; choose from auto, {', '.join(codecs.DEMO_KEYS)}.")

    def resolved(self) -> DemoConfig:
        """A copy whose ``transfer_syntaxes`` lists the keys really written (``auto`` expanded)."""
        available = [s.key for s in codecs.available_syntaxes()]
        keys: list[str] = []
        for key in self.transfer_syntaxes:
            for k in available if key == "auto" else [key]:
                if k not in available:
                    raise ConfigError(f"Transfer syntax '{k}' cannot be encoded on this install (see cxrjepa doctor).")
                if k not in keys:
                    keys.append(k)
        if not keys:
            raise ConfigError("No transfer syntax to write.")
        return replace(self, transfer_syntaxes=keys)


@dataclass(frozen=True)
class Case:
    """One planned radiograph."""

    index: int
    patient: int
    visit: int  # 0: the patient's first image; 1: a later one
    patient_id: str
    file: str  # relative to dicom/
    syntax: str

    @property
    def stem(self) -> str:
        return Path(self.file).name.split(".")[0]


@dataclass
class Rendered:
    """A radiograph ready to write: the phantom, how it is stored, the dataset (uncompressed) and its label row."""

    case: Case
    phantom: Phantom
    storage: Storage
    view: View
    dataset: Dataset
    row: dict


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _file_name(index: int, style: int) -> str:
    """File names as archives have them: with and without .dcm, upper-case extensions, bare numbers."""
    return (f"IMG{index:05d}.dcm", f"IM{index:05d}", f"img_{index:05d}.DCM", f"{index + 1:08d}")[style % 4]


def _patient_ids(seed: int, count: int) -> list[str]:
    numbers = _rng(seed, _PLAN, 1).choice(900_000, size=count, replace=False) + 100_000
    return [f"DEMO{int(n):06d}" for n in numbers]


def _assign_syntaxes(rng: np.random.Generator, keys: list[str], n: int) -> list[str]:
    weights = np.array([SYNTAX_WEIGHTS[k] for k in keys])
    picks = [keys[i] for i in rng.choice(len(keys), size=n, p=weights / weights.sum())]
    counts = Counter(picks)
    for key in keys:  # every syntax at least once, taken from one that is there twice
        if counts[key] or n < len(keys):
            continue
        for i in rng.permutation(n):
            if counts[picks[i]] > 1:
                counts[picks[i]] -= 1
                picks[i] = key
                counts[key] += 1
                break
    return picks


def plan_cases(cfg: DemoConfig) -> list[Case]:
    """Which patient each image belongs to, its file name and transfer syntax."""
    cfg = cfg.resolved()
    rng = _rng(cfg.seed, _PLAN)
    patients = max(1, int(round(cfg.n / (1.0 + cfg.second_image_rate))))
    second = set(rng.choice(patients, size=min(patients, cfg.n - patients), replace=False).tolist())
    ids = _patient_ids(cfg.seed, patients + cfg.ultrasound)
    syntaxes = _assign_syntaxes(rng, list(cfg.transfer_syntaxes), cfg.n)
    cases: list[Case] = []
    for p in range(patients):
        for visit in (0, 1) if p in second else (0,):
            i = len(cases)
            folder = f"P{p:04d}/S{visit + 1}" + ("/SER1" if i % 5 == 0 else "")
            cases.append(Case(i, p, visit, ids[p], f"{folder}/{_file_name(i, int(rng.integers(4)))}", syntaxes[i]))
    return cases[: cfg.n]


def _patient(cfg: DemoConfig, p: int) -> tuple[Anatomy, dt.date]:
    rng = _rng(cfg.seed, _PATIENT, p)
    anatomy = sample_anatomy(rng)
    first = dt.date(2016, 1, 1) + dt.timedelta(days=int(rng.integers(0, 7 * 365)))
    return anatomy, first


@dataclass(frozen=True)
class _Acquisition:
    position: str
    rows: int
    cols: int
    modality: str
    with_age: bool
    spacing_mm: float | None
    view: View


def _acquisition(cfg: DemoConfig, a: Anatomy, p: int, visit: int, *, even_pixels: bool = False) -> _Acquisition:
    rng = _rng(cfg.seed, _ACQ, p, visit)
    position = "AP" if rng.random() < 0.3 else "PA"
    long = int(rng.integers(max(cfg.min_size, int(cfg.max_size * 0.4)), cfg.max_size + 1))
    short = max(cfg.min_size, int(long * rng.uniform(0.72, 0.95)))
    shape = rng.random()
    if shape < 0.55:
        rows, cols = long, short  # portrait
    elif shape < 0.85:
        rows, cols = short, long  # landscape
    else:
        rows = cols = (long + short) // 2
    if even_pixels and rows * cols % 2:
        cols -= 1
    view = sample_view(rng, rows, cols, position)
    chest_mm = 300.0 if a.sex == "F" else 330.0
    spacing = chest_mm / view.scale if rng.random() < 0.9 else None
    return _Acquisition(
        position=position,
        rows=rows,
        cols=cols,
        modality="CR" if rng.random() < 0.4 else "DX",
        with_age=bool(rng.random() < 0.85),
        spacing_mm=spacing,
        view=view,
    )


def _findings(cfg: DemoConfig, a: Anatomy, p: int, visit: int, position: str) -> Findings:
    rng = _rng(cfg.seed, _FINDINGS, p, 0)
    first_position = position if visit == 0 else _acquisition(cfg, a, p, 0).position
    nodule, effusion = rng.random() < cfg.nodule_rate, rng.random() < cfg.effusion_rate
    first = sample_findings(rng, a, first_position, nodule=bool(nodule), effusion=bool(effusion))
    if visit == 0:
        return first
    return persist_findings(
        _rng(cfg.seed, _FINDINGS, p, visit), first, a, position, (cfg.nodule_rate, cfg.effusion_rate)
    )


def storage_for(cfg: DemoConfig, case: Case) -> Storage:
    """How ``case``'s pixels are stored (cheap: nothing is drawn)."""
    return sample_storage(_rng(cfg.seed, _STORAGE, case.patient, case.visit), case.syntax)


def findings_for(cfg: DemoConfig, case: Case) -> Findings:
    """``case``'s findings (cheap: nothing is drawn)."""
    a, _ = _patient(cfg, case.patient)
    even = codecs.needs_even_pixel_count(case.syntax, storage_for(cfg, case).bits_allocated)
    acq = _acquisition(cfg, a, case.patient, case.visit, even_pixels=even)
    return _findings(cfg, a, case.patient, case.visit, acq.position)


def render_case(cfg: DemoConfig, case: Case, *, with_findings: bool = True) -> Rendered:
    """Draw one planned radiograph and build its (uncompressed) dataset.

    ``with_findings=False`` draws the same image without its findings (everything else, noise included, is
    identical), which shows exactly what the findings changed.
    """
    a, first_date = _patient(cfg, case.patient)
    storage = storage_for(cfg, case)
    even = codecs.needs_even_pixel_count(case.syntax, storage.bits_allocated)
    acq = _acquisition(cfg, a, case.patient, case.visit, even_pixels=even)
    findings = _findings(cfg, a, case.patient, case.visit, acq.position)
    phantom = draw(a, acq.view, findings if with_findings else Findings())

    study_rng = _rng(cfg.seed, _STUDY, case.patient, case.visit)
    date = first_date + dt.timedelta(days=int(study_rng.integers(30, 700)) if case.visit else 0)
    identity = dicom.sample_identity(
        _rng(cfg.seed, _PATIENT, case.patient, 1), case.patient_id, a.sex, a.age, first_date
    )
    study = dicom.sample_study(study_rng, cfg.seed, case.index, date)
    ds = dicom.radiograph(
        identity, study, modality=acq.modality, view=acq.position, spacing_mm=acq.spacing_mm, with_age=acq.with_age
    )
    set_pixel_tags(ds, storage, acq.rows, acq.cols)
    ds.PixelData = to_stored(phantom.image, storage).tobytes()
    row = {
        "file": case.file,
        "patient_id": case.patient_id,
        "nodule": phantom.findings.nodule,
        "effusion": phantom.findings.effusion,
        "sex": a.sex,
        "age": study.age_of(identity),
        "view": acq.position,
    }
    return Rendered(case, phantom, storage, acq.view, ds, row)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _write_radiographs(out: Path, cfg: DemoConfig, cases: list[Case], task) -> tuple[list[dict], Counter, dict]:
    rows: list[dict] = []
    tally: Counter = Counter()
    encoders: dict[str, str] = {}
    for case in cases:
        r = render_case(cfg, case)
        encoders[case.syntax] = codecs.encode(r.dataset, case.syntax)
        path = out / "dicom" / case.file
        path.parent.mkdir(parents=True, exist_ok=True)
        r.dataset.save_as(path, enforce_file_format=True)
        cv2.imwrite(str(out / "masks" / f"{case.stem}.png"), r.phantom.lungs.astype(np.uint8) * 255)
        rows.append(r.row)
        st = r.storage
        tally[("syntax", codecs.BY_KEY[case.syntax].name)] += 1
        tally[("photometric", st.photometric)] += 1
        tally[("bits", f"{st.bits_allocated}/{st.bits_stored}{' signed' if st.signed else ''}")] += 1
        tally[("voi", st.voi)] += 1
        tally[("rescale", "yes" if st.slope is not None else "no")] += 1
        task.advance()
    return rows, tally, encoders


def _write_ultrasound(
    out: Path, cfg: DemoConfig, first_patient: int, ids: list[str], task
) -> tuple[list[dict], Counter, dict]:
    rows: list[dict] = []
    tally: Counter = Counter()
    encoders: dict[str, str] = {}
    keys = [k for k in US_SYNTAXES if k in cfg.transfer_syntaxes] or ["explicit"]
    for j in range(cfg.ultrasound):
        p = first_patient + j
        rng = _rng(cfg.seed, _US, j)
        cine = ultrasound.sample_cine(rng)
        sex = "F" if rng.random() < 0.5 else "M"
        age = int(rng.integers(18, 90))
        first = dt.date(2016, 1, 1) + dt.timedelta(days=int(rng.integers(0, 7 * 365)))
        identity = dicom.sample_identity(rng, ids[p], sex, age, first)
        study = dicom.sample_study(rng, cfg.seed, f"us{j}", first)
        institution = dicom.INSTITUTIONS[study.institution][0]
        annotation = [institution, identity.name, f"ID {identity.patient_id}", first.strftime("%d/%m/%Y")]
        frames, mask = ultrasound.draw_cine(cine, annotation)
        box = ultrasound.region_box(mask)
        ds = dicom.ultrasound(identity, study, description="US ECHO (synthetic phantom)")
        ultrasound.set_pixels(ds, cine, frames, box)
        key = keys[j % len(keys)]
        encoders[key] = codecs.encode(ds, key)
        rel = f"U{j:04d}/CINE{j:03d}" + (".dcm" if j % 2 == 0 else "")
        path = out / "ultrasound" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        rows.append(
            {
                "file": rel,
                "patient_id": identity.patient_id,
                "frames": cine.frames,
                "fps": cine.fps,
                "photometric": cine.photometric,
                "transfer_syntax": codecs.BY_KEY[key].name,
                "regions": int(cine.regions),
                "x0": box[0],
                "y0": box[1],
                "x1": box[2],
                "y1": box[3],
            }
        )
        tally[("syntax", codecs.BY_KEY[key].name)] += 1
        tally[("photometric", cine.photometric)] += 1
        task.advance()
    return rows, tally, encoders


def _by(tally: Counter, kind: str) -> dict:
    return {k: v for (t, k), v in sorted(tally.items()) if t == kind}


@locks_output("demo-data")
def run_demo(
    out: str | Path, config: DemoConfig | None = None, *, force: bool = False, dry_run: bool = False
) -> Artifact | dict:
    """Write the demo archive to ``out`` (a ``demo`` artifact) and return it.

    With ``dry_run`` nothing is written and the plan (create / skip / overwrite and why) is returned.
    """
    out = Path(out)
    config = config or DemoConfig()
    # the fingerprint holds the settings as given ("auto" stays "auto", so a pipeline's dry run computes the
    # same one); which syntaxes "auto" meant here is recorded in contents, and the files' hash covers them
    cfg = config.resolved()
    builder = begin(out, "demo", config, [], force=force, dry_run=dry_run, version=ALGORITHM_VERSION)
    if dry_run:
        console.info(
            f"demo-data: would {builder.action} '{out}' ({cfg.n} radiographs, {cfg.ultrasound} ultrasound cines)."
        )
        return {"path": str(out), "kind": "demo", "action": builder.action, "fingerprint": builder.fingerprint}
    if builder.skipped:
        console.info(f"demo-data: '{out}' is up to date.")
        return builder.existing_artifact()
    # generation takes seconds: an interrupted run simply starts again
    for sub in ("dicom", "masks", "ultrasound"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    cases = plan_cases(cfg)
    patients = len({c.patient for c in cases})
    ids = _patient_ids(cfg.seed, patients + cfg.ultrasound)
    with console.progress("demo-data", total=len(cases) + cfg.ultrasound) as task:
        rows, tally, encoders = _write_radiographs(out, cfg, cases, task)
        us_rows, us_tally, us_encoders = (
            _write_ultrasound(out, cfg, patients, ids, task) if cfg.ultrasound else ([], Counter(), {})
        )
    encoders.update(us_encoders)
    _write_csv(out / "labels.csv", CSV_COLUMNS, rows)
    if us_rows:
        _write_csv(out / "ultrasound.csv", US_CSV_COLUMNS, us_rows)

    per_patient = Counter(c.patient for c in cases)
    builder.counts = {
        "files": len(cases) + len(us_rows),
        "images": len(cases),
        "patients": patients,
        "patients_with_two_images": sum(1 for v in per_patient.values() if v > 1),
        "nodule": sum(r["nodule"] for r in rows),
        "effusion": sum(r["effusion"] for r in rows),
        "ultrasound": len(us_rows),
        "by_transfer_syntax": _by(tally + us_tally, "syntax"),
        "by_photometric": _by(tally + us_tally, "photometric"),
        "by_bits": _by(tally, "bits"),
        "by_voi": _by(tally, "voi"),
        "by_rescale": _by(tally, "rescale"),
    }
    builder.contents = {
        "dicom": "dicom",
        "labels": "labels.csv",
        "label_columns": list(LABEL_COLUMNS),
        "columns": list(CSV_COLUMNS),
        "masks": {
            "path": "masks",
            "format": "png",
            "values": [0, 255],
            "classes": {"255": "lung"},
            "naming": "image file stem",
        },
        "transfer_syntaxes": {  # what was written, and by which encoder
            s.key: {"uid": str(s.uid), "name": s.name, "encoder": encoders[s.key]}
            for s in codecs.SYNTAXES
            if s.key in encoders
        },
    }
    if us_rows:
        builder.contents["ultrasound"] = {
            "path": "ultrasound",
            "table": "ultrasound.csv",
            "columns": list(US_CSV_COLUMNS),
        }
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "manifest.yaml"]
    artifact = builder.finish(hash_files(files, root=out))
    console.info(
        f"demo-data: wrote {len(cases)} radiographs of {patients} patients"
        + (f" and {len(us_rows)} ultrasound cines" if us_rows else "")
        + f" to '{out}'."
    )
    return artifact
