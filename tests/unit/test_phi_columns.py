"""One rule for identifying columns, whatever the spelling: ingest, probe and the report all use it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxrjepa.core.errors import UsageError
from cxrjepa.core.phi import cap_age, column_words, identifying, is_age, is_identifying
from cxrjepa.probe.tasks import join_labels

IDENTIFYING = [
    # names
    "PatientName",
    "Patient Name",
    "patient_name",
    "PATIENT-NAME",
    "patientname",
    "Patient's Name",
    "pt name",
    "Name",
    "first_name",
    "LastName",
    "surname",
    "ReferringPhysicianName",
    "Referring Physician",
    "OperatorsName",
    "PerformingPhysicianName",
    "StationName",
    # IDs and record numbers
    "PatientID",
    "Patient ID",
    "patient_id",
    "patientid",
    "pid",
    "OtherPatientIDs",
    "other_patient_ids",
    "MRN",
    "mrn",
    "Medical Record Number",
    "AccessionNumber",
    "Accession #",
    "accession_no",
    "acc_no",
    "StudyID",
    "subject_id",
    "SSN",
    "Social Security Number",
    "DeviceSerialNumber",
    "insurance_number",
    # dates
    "PatientBirthDate",
    "birth_date",
    "birthdate",
    "DOB",
    "dob",
    "Date of Birth",
    "StudyDate",
    "study_date",
    "AcquisitionDateTime",
    "ExamDate",
    "date",
    "timestamp",
    # institutions, contact details, UIDs, free text
    "InstitutionName",
    "Institution",
    "institution_address",
    "hospital",
    "PatientAddress",
    "phone",
    "Telephone Number",
    "email",
    "e-mail",
    "zip",
    "StudyInstanceUID",
    "sop_uid",
    "SeriesInstanceUID",
    "StudyDescription",
    "comments",
    "clinical notes",
    "AdditionalPatientHistory",
    "report",
]
NOT_IDENTIFYING = [
    "finding",
    "Finding Labels",
    "No Finding",
    "effusion",
    "nodule",
    "label",
    "labels",
    "covid",
    "class_name",
    "sex",
    "PatientSex",
    "age",
    "PatientAge",
    "Patient Age",
    "view",
    "View Position",
    "site",
    "manufacturer",
    "modality",
    "sample_id",
    "file",
    "path",
    "source_path",
    "filename",
    "Image Index",
    "study",
    "series",
    "split",
    "pleural_fluid",
    "candidate",
    "updated",
    "dataset",
    "year",
    "fold",
]


@pytest.mark.parametrize("name", IDENTIFYING)
def test_identifying_columns_are_recognised_in_every_spelling(name):
    assert is_identifying(name)


@pytest.mark.parametrize("name", NOT_IDENTIFYING)
def test_label_and_key_columns_are_not_identifying(name):
    assert not is_identifying(name)


def test_words_and_ages():
    assert column_words("SOPInstanceUID") == ("sop", "instance", "uid")
    assert column_words("OtherPatientIDs") == ("other", "patient", "ids")
    assert column_words(" Patient  Birth-Date ") == ("patient", "birth", "date")
    assert identifying(["file", "MRN", "finding", "DOB"]) == ["MRN", "DOB"]
    assert (
        is_age("age") and is_age("PatientAge") and is_age("age_years") and not is_age("image") and not is_age("stage")
    )
    assert cap_age(97.0) == 90.0 and cap_age(45.0) == 45.0 and math.isnan(cap_age(float("nan")))


def test_the_probe_join_drops_identifying_columns_before_anything_reads_them(tmp_path):
    index = pd.DataFrame({"sample_id": ["a", "b", "c", "d"]})
    csv = tmp_path / "labels.csv"
    pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "finding": [0, 1, 0, 1],
            "Patient Name": ["W", "X", "Y", "Z"],
            "MRN": [1, 2, 3, 4],
            "age": [30, 95, 60, np.nan],
        }
    ).to_csv(csv, index=False)
    table, info = join_labels(index, csv, "sample_id")
    assert list(table.columns) == ["finding", "age"]
    assert info["identifying_columns_left_out"] == ["Patient Name", "MRN"]
    assert table["age"].tolist()[:3] == [30.0, 90.0, 60.0]


def test_the_probe_refuses_to_probe_or_group_by_an_identifying_column(tmp_path):
    from cxrjepa.probe.api import ProbeConfig, refuse_identifying

    with pytest.raises(UsageError, match="'PatientID' holds identifying values"):
        refuse_identifying(ProbeConfig(tasks=["finding", "PatientID"]).tasks, "probe")
    with pytest.raises(UsageError, match="does not group metrics by it"):
        refuse_identifying(["sex", "Institution Name"], "group metrics by")
    refuse_identifying(["sex", "age_band", "view", "site"], "group metrics by")
