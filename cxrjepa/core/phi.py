"""Identifying columns: one rule for every table a user hands to cxrjepa (labels CSVs, metadata, indexes).

A column is *identifying* when its name says it holds a person's or institution's name, an ID or record
number, a date, a contact detail, a UID or free text (the identifiers of HIPAA's Safe Harbor method and of
DICOM PS3.15's basic confidentiality profile). Its values never reach an artifact, a log or a report:
ingest drops such columns from a labels CSV (a patient ID column is first hashed into ``patient_key``), probe
leaves them out of its tasks and refuses to probe or group by one, and the report does not show one.

Names are compared by their words, so ``PatientName``, ``Patient Name``, ``patient_name``, ``PATIENT-NAME``
and ``pt name`` are one column, as are ``MRN``, ``Medical Record Number`` and ``mrn``; ``DOB``,
``Date of Birth`` and ``PatientBirthDate``. Ages above 89 identify too: :func:`cap_age` reports them as 90.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: ages above 89 are identifying (HIPAA Safe Harbor): they are reported as 90
AGE_CAP = 90

#: a column whose words include one of these is identifying whatever else it says
_ALWAYS = frozenset(
    {
        # record numbers and identity documents
        "mrn",
        "ssn",
        "accession",
        "passport",
        "licence",
        "license",
        "insurance",
        "serial",
        # dates (a year alone is not identifying, but a column named date or with date in it is taken to hold more)
        "date",
        "dates",
        "datetime",
        "timestamp",
        "dob",
        "birth",
        "birthdate",
        "birthday",
        "death",
        "deceased",
        # contact details and places smaller than a state
        "address",
        "street",
        "city",
        "zip",
        "zipcode",
        "postcode",
        "postal",
        "phone",
        "telephone",
        "fax",
        "email",
        "mail",
        "url",
        # UIDs (DICOM study, series, SOP instance, frame of reference)
        "uid",
        "uids",
        # institutions and the staff who saw the patient
        "institution",
        "hospital",
        "physician",
        "physicians",
        "doctor",
        "radiologist",
        "operator",
        "operators",
        "technologist",
        "surname",
        "firstname",
        "lastname",
        "forename",
        "initials",
        # free text about the patient or the study
        "description",
        "descriptions",
        "comment",
        "comments",
        "note",
        "notes",
        "history",
        "report",
        "reports",
        "narrative",
    }
)
#: with ``name``: a person's or an institution's name
_NAMED = frozenset(
    {
        "patient",
        "patients",
        "pt",
        "person",
        "first",
        "last",
        "given",
        "family",
        "middle",
        "maiden",
        "full",
        "mother",
        "mothers",
        "other",
        "referring",
        "performing",
        "reading",
        "requesting",
        "attending",
        "station",
    }
)
#: with one of :data:`_NUMBERED`: an ID or record number of a person, a visit or a study
_ABOUT = frozenset(
    {
        "patient",
        "patients",
        "pt",
        "person",
        "subject",
        "medical",
        "record",
        "study",
        "series",
        "instance",
        "sop",
        "visit",
        "encounter",
        "admission",
        "account",
        "social",
        "security",
        "health",
        "member",
        "beneficiary",
    }
)
_NUMBERED = frozenset({"id", "ids", "number", "numbers", "no", "num", "nr"})
#: whole names (words run together, no separators) that are identifying
_EXACT = frozenset({"name", "names", "patient", "pt", "pid", "ptid", "accno", "accnum", "acc"})
#: run-together names that contain one of these are identifying ("patientid", "studyinstanceuid", ...)
_CONTAINS = (
    "patientname",
    "patientsname",
    "patientid",
    "patientsid",
    "birthdate",
    "dateofbirth",
    "accession",
    "institution",
    "physician",
    "instanceuid",
    "medicalrecord",
    "socialsecurity",
)

_PLURAL_ACRONYM = re.compile(r"(U?ID)s(?![a-z])")  # OtherPatientIDs, UIDs
_CAMEL_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_SPLIT = re.compile(r"[^a-z0-9]+")


def column_words(name: object) -> tuple[str, ...]:
    """The lower-case words of a column name: ``PatientBirthDate`` -> (patient, birth, date),
    ``SOPInstanceUID`` -> (sop, instance, uid), ``"Patient's Name "`` -> (patient, s, name)."""
    text = _PLURAL_ACRONYM.sub(lambda m: m.group(1).capitalize() + "s", str(name))
    text = _CAMEL.sub(r"\1 \2", _CAMEL_ACRONYM.sub(r"\1 \2", text))
    return tuple(w for w in _SPLIT.split(text.lower()) if w)


def normalized(name: object) -> str:
    """A column name's words joined with ``_`` (``Patient Name`` and ``patient_name`` -> ``patient_name``)."""
    return "_".join(column_words(name))


def is_identifying(name: object) -> bool:
    """Whether a column of that name holds values that identify a patient (see the module's docstring)."""
    words = [w for w in column_words(name) if w != "s"]  # "patient's name"
    if not words:
        return False
    joined = "".join(words)
    if joined in _EXACT or any(part in joined for part in _CONTAINS):
        return True
    found = set(words)
    if found & _ALWAYS:
        return True
    if found & {"name", "names"} and (len(found) == 1 or found & _NAMED):
        return True
    return bool(found & _NUMBERED and found & _ABOUT)


def identifying(columns: Iterable[object]) -> list[str]:
    """The identifying names among ``columns``, in their order."""
    return [str(c) for c in columns if is_identifying(c)]


def is_age(name: object) -> bool:
    """An age column (``age``, ``PatientAge``, ``age_years``): its values are capped with :func:`cap_age`."""
    words = [w for w in column_words(name) if w != "s"]
    return "age" in words and set(words) <= {
        "age",
        "patient",
        "patients",
        "pt",
        "years",
        "yrs",
        "y",
        "at",
        "study",
        "exam",
        "scan",
        "in",
    }


def cap_age(value: float) -> float:
    """An age in years with ages above 89 reported as :data:`AGE_CAP` (NaN stays NaN)."""
    return value if value != value or value <= AGE_CAP else float(AGE_CAP)
