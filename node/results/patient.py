"""The patient and study a result belongs to, copied from its source so that every object we
build files under the same patient and study as the images it was made from."""

from __future__ import annotations

import copy

from pydicom import Dataset

# Patient, Patient Study and General Study module attributes (PS3.3 C.7.1.1, C.7.2.2,
# C.7.2.1) a result carries when its source does; Study Instance UID is set by the builders.
PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex",
    "OtherPatientIDsSequence", "OtherPatientNames", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "PatientAge", "PatientSize", "PatientWeight",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription",
)


def copy_patient_and_study(target: Dataset, source: Dataset) -> None:
    """Give ``target`` every :data:`PATIENT_AND_STUDY` attribute ``source`` has, and its
    Specific Character Set (names may be UTF-8). ``target`` must be in ``source``'s study."""
    if str(target.StudyInstanceUID) != str(source.StudyInstanceUID):
        raise ValueError("a result is filed in its source's study")
    for keyword in PATIENT_AND_STUDY:
        if keyword in source:
            setattr(target, keyword, copy.deepcopy(source[keyword].value))
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet
