"""DICOM datasets for the demo archive, with fake but realistic identifying attributes.

Every identifying value is obviously fake (names like ``PHANTOM^ALICE``, IDs starting ``DEMO``,
"Phantom General Hospital") yet placed exactly where a real archive has them -- names, IDs, birth dates,
accession numbers, institutions, physicians, station names, free-text descriptions and comments, UIDs -- so
a stage that must keep patient data out of its outputs is really exercised. UIDs are ``2.25`` UIDs derived
from the seed, so the same seed writes byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
US_MULTIFRAME_STORAGE = UID("1.2.840.10008.5.1.4.1.1.3.1")

LAST_NAMES = ("PHANTOM", "DOE", "ROE", "SYNTHETIC", "EXAMPLE", "TESTPERSON", "NOBODY", "FAKENAME")
FIRST_NAMES = {
    "F": ("JANE", "ALICE", "MARY", "EVE", "ADA", "GRACE"),
    "M": ("JOHN", "BOB", "ALAN", "CARL", "OTTO", "HUGO"),
    "O": ("ALEX", "SAM", "KIM"),
}
INSTITUTIONS = (
    ("Phantom General Hospital", "1 Example Road, Nowhere Town"),
    ("Demo Chest Clinic", "42 Imaginary Lane, Fakeville"),
    ("Synthetic County Infirmary", "7 Placeholder Street, Testham"),
)
MANUFACTURERS = (
    ("Phantom Medical Systems", "PhantomRad 300"),
    ("Synthetic Imaging Co.", "SynthDR X1"),
    ("DemoRay", "DR-2000 Demo"),
)


@dataclass(frozen=True)
class Identity:
    """A fake patient."""

    patient_id: str
    name: str
    sex: str
    birth_date: dt.date
    other_id: str | None


@dataclass(frozen=True)
class Study:
    """One fake examination (one image per study here)."""

    date: dt.date
    time: str  # HHMMSS
    accession: str
    institution: int
    manufacturer: int
    station: str
    study_uid: str
    series_uid: str
    sop_uid: str
    study_id: str

    def age_of(self, identity: Identity) -> int:
        b, d = identity.birth_date, self.date
        return d.year - b.year - ((d.month, d.day) < (b.month, b.day))


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cxrjepa/demo-data")


def uid(seed: int, *parts: object) -> str:
    """A deterministic ``2.25`` UID (a name-based UUID as an integer, PS3.5 B.2) for ``parts`` under ``seed``.

    pydicom's ``generate_uid(prefix=None)`` is random (uuid4), so it cannot be used for repeatable files.
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, (seed, *parts)))).int}"


def sample_identity(rng: np.random.Generator, patient_id: str, sex: str, age: int, first_study: dt.date) -> Identity:
    name = f"{LAST_NAMES[rng.integers(len(LAST_NAMES))]}^{FIRST_NAMES[sex][rng.integers(len(FIRST_NAMES[sex]))]}"
    if rng.random() < 0.5:
        name += f"^{chr(ord('A') + int(rng.integers(26)))}"
    # born ``age`` years (and some days) before the first study
    anniversary = first_study.replace(year=first_study.year - age, day=min(first_study.day, 28))
    birth = anniversary - dt.timedelta(days=int(rng.integers(1, 330)))
    other = f"MRN{int(rng.integers(10**7, 10**8))}" if rng.random() < 0.3 else None
    return Identity(patient_id, name, sex, birth, other)


def sample_study(rng: np.random.Generator, seed: int, index: object, date: dt.date) -> Study:
    return Study(
        date=date,
        time=f"{int(rng.integers(7, 20)):02d}{int(rng.integers(60)):02d}{int(rng.integers(60)):02d}",
        accession=f"ACC{int(rng.integers(10**8, 10**9))}",
        institution=int(rng.integers(len(INSTITUTIONS))),
        manufacturer=int(rng.integers(len(MANUFACTURERS))),
        station=f"DEMO-RAD-{int(rng.integers(1, 20)):02d}",
        study_uid=uid(seed, "study", index),
        series_uid=uid(seed, "series", index),
        sop_uid=uid(seed, "instance", index),
        study_id=f"S{int(rng.integers(10**4, 10**5))}",
    )


def _base(sop_class: UID, study: Study) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = study.sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = study.sop_uid
    return ds


def _patient_and_study(ds: Dataset, identity: Identity, study: Study, *, with_age: bool, description: str) -> None:
    date = study.date.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study.time
    ds.AccessionNumber = study.accession
    institution, address = INSTITUTIONS[study.institution]
    manufacturer, model = MANUFACTURERS[study.manufacturer]
    ds.Manufacturer = manufacturer
    ds.InstitutionName = institution
    ds.InstitutionAddress = address
    ds.ReferringPhysicianName = "FAKE^REFERRER^DR"
    ds.StationName = study.station
    ds.StudyDescription = description
    ds.OperatorsName = "DEMO^OPERATOR"
    ds.ManufacturerModelName = model
    ds.PatientName = identity.name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date.strftime("%Y%m%d")
    ds.PatientSex = identity.sex
    if with_age:
        ds.PatientAge = f"{study.age_of(identity):03d}Y"
    if identity.other_id:
        ds.OtherPatientIDs = identity.other_id
    ds.PatientIdentityRemoved = "NO"
    ds.DeviceSerialNumber = f"SN-{study.station}"
    ds.SoftwareVersions = "demo 1.0"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = study.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1


def radiograph(
    identity: Identity,
    study: Study,
    *,
    modality: str,
    view: str,
    spacing_mm: float | None,
    with_age: bool,
) -> Dataset:
    """A CR or DX chest radiograph dataset without pixel module attributes."""
    ds = _base(CR_STORAGE if modality == "CR" else DX_STORAGE, study)
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if modality == "CR" else ["DERIVED", "PRIMARY"]
    ds.Modality = modality
    _patient_and_study(ds, identity, study, with_age=with_age, description=f"XR CHEST {view} (synthetic phantom)")
    ds.SeriesDescription = f"CHEST {view}"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.PatientOrientation = ["L", "F"]
    ds.KVP = "120" if view == "PA" else "90"
    ds.ImageComments = f"Synthetic phantom for {identity.name.replace('^', ' ')}; not a real patient"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    if spacing_mm is not None:
        value = [f"{spacing_mm:.4f}", f"{spacing_mm:.4f}"]
        if modality == "DX":
            ds.ImagerPixelSpacing = value
        else:
            ds.PixelSpacing = value
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def ultrasound(identity: Identity, study: Study, *, description: str) -> Dataset:
    """An ultrasound multi-frame dataset without pixel module attributes."""
    ds = _base(US_MULTIFRAME_STORAGE, study)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
    ds.Modality = "US"
    _patient_and_study(ds, identity, study, with_age=True, description=description)
    ds.SeriesDescription = "CINE"
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    return ds
