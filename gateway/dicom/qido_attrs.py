"""QIDO-RS return attributes (PS3.18 Tables 10.6.3-3, -4, -5) and the flat searchable values for catalog
columns.

The ``*_attrs`` functions take the instance's DICOM JSON (``gateway.dicom.metadata``) and return the subset
for one level, so QIDO answers reuse the exact values of the metadata. Attributes that describe many instances
(Number of Study Related Series/Instances, Number of Series Related Instances, Modalities in Study, Instance
Availability, Retrieve URL) are computed by the catalog and the read path, not here. Transfer syntax is
answered as Available Transfer Syntax UID (0008,3002), the QIDO attribute for it; group 0002 appears in QIDO
only as Transfer Syntax UID (0002,0010) of an instance whose includefield names it (``gateway.catalog.search``).
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import tag_for_keyword

from gateway.dicom.times import date_key, time_key
from gateway.numbers import int32_or_none


def _tags(*keywords: str) -> tuple[str, ...]:
    out = []
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        out.append(f"{tag:08X}")
    return tuple(out)


STUDY_TAGS = _tags(
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "TimezoneOffsetFromUTC",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
)
SERIES_TAGS = _tags(
    "SpecificCharacterSet",
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "SeriesNumber",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
    "Laterality",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
)
INSTANCE_TAGS = _tags(
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "TimezoneOffsetFromUTC",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "SeriesInstanceUID",
    "StudyInstanceUID",
)
# What a study- or series-level includefield may take from one instance of the study or series, beyond the
# stored attributes above: the attributes of the modules of that level (PS3.3 C.7.1.1 Patient, C.7.2.1 General
# Study, C.7.2.2 Patient Study; C.7.3.1 General Series, C.7.5.1 General Equipment, C.7.4.1 Frame of Reference),
# never an attribute of one image (its SOP Instance UID, its Slice Thickness).
INCLUDABLE_STUDY_TAGS = frozenset(
    _tags(
        *"""PatientName PatientID IssuerOfPatientID TypeOfPatientID IssuerOfPatientIDQualifiersSequence
        PatientBirthDate PatientBirthTime PatientSex OtherPatientIDsSequence OtherPatientNames PatientBirthName
        PatientMotherBirthName EthnicGroup PatientComments PatientSpeciesDescription PatientSpeciesCodeSequence
        PatientBreedDescription PatientBreedCodeSequence ResponsiblePerson ResponsiblePersonRole
        ResponsibleOrganization PatientIdentityRemoved DeidentificationMethod DeidentificationMethodCodeSequence
        QualityControlSubject StudyInstanceUID StudyDate StudyTime ReferringPhysicianName
        ReferringPhysicianIdentificationSequence StudyID AccessionNumber IssuerOfAccessionNumberSequence
        StudyDescription PhysiciansOfRecord NameOfPhysiciansReadingStudy RequestingService ProcedureCodeSequence
        ReasonForPerformedProcedureCodeSequence ReferencedStudySequence AdmittingDiagnosesDescription
        AdmittingDiagnosesCodeSequence PatientAge PatientSize PatientWeight PatientSizeCodeSequence Occupation
        AdditionalPatientHistory MedicalAlerts Allergies SmokingStatus PregnancyStatus LastMenstrualDate
        PatientState AdmissionID IssuerOfAdmissionIDSequence ServiceEpisodeID ServiceEpisodeDescription
        PatientSexNeutered TimezoneOffsetFromUTC""".split()
    )
)
INCLUDABLE_SERIES_TAGS = INCLUDABLE_STUDY_TAGS | frozenset(
    _tags(
        *"""Modality SeriesInstanceUID SeriesNumber Laterality SeriesDate SeriesTime PerformingPhysicianName
        ProtocolName SeriesDescription SeriesDescriptionCodeSequence OperatorsName BodyPartExamined PatientPosition
        ReferencedPerformedProcedureStepSequence RelatedSeriesSequence PerformedProcedureStepID
        PerformedProcedureStepStartDate PerformedProcedureStepStartTime PerformedProcedureStepDescription
        AnatomicalOrientationType Manufacturer InstitutionName InstitutionAddress StationName
        InstitutionalDepartmentName ManufacturerModelName DeviceSerialNumber SoftwareVersions SpatialResolution
        DateOfLastCalibration TimeOfLastCalibration PixelPaddingValue FrameOfReferenceUID
        PositionReferenceIndicator""".split()
    )
)

# Request Attributes Sequence: only the two identifiers PS3.18 asks for, not the whole request.
_REQUEST_ATTRIBUTES = _tags("RequestAttributesSequence")[0]
_REQUEST_ITEM_TAGS = _tags("ScheduledProcedureStepID", "RequestedProcedureID")
_AVAILABLE_TS = _tags("AvailableTransferSyntaxUID")[0]


def _subset(metadata: dict[str, Any], tags: tuple[str, ...]) -> dict[str, Any]:
    return {t: metadata[t] for t in sorted(tags) if t in metadata}


def study_attrs(metadata: dict[str, Any]) -> dict[str, Any]:
    return _subset(metadata, STUDY_TAGS)


def series_attrs(metadata: dict[str, Any]) -> dict[str, Any]:
    out = _subset(metadata, SERIES_TAGS)
    seq = metadata.get(_REQUEST_ATTRIBUTES)
    if isinstance(seq, dict) and isinstance(seq.get("Value"), list):
        items = [_subset(item, _REQUEST_ITEM_TAGS) for item in seq["Value"] if isinstance(item, dict)]
        out[_REQUEST_ATTRIBUTES] = {"vr": "SQ", "Value": items}
    return {k: out[k] for k in sorted(out)}


def instance_attrs(metadata: dict[str, Any], transfer_syntax_uid: str) -> dict[str, Any]:
    out = _subset(metadata, INSTANCE_TAGS)
    out[_AVAILABLE_TS] = {"vr": "UI", "Value": [transfer_syntax_uid]}
    return {k: out[k] for k in sorted(out)}


# Catalog column → keyword. Strings are the DICOM value as text (dates YYYYMMDD, times HHMMSS.FFFFFF, names in
# DICOM PN form "Family^Given", alphabetic group only); None when absent, empty or undecodable.
_TEXT_KEYS = {
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
    "sop_class_uid": "SOPClassUID",
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "accession_number": "AccessionNumber",
    "study_id": "StudyID",
    "study_description": "StudyDescription",
    "referring_physician_name": "ReferringPhysicianName",
    "modality": "Modality",
    "series_description": "SeriesDescription",
    "series_date": "SeriesDate",
    "body_part_examined": "BodyPartExamined",
    "performed_procedure_step_start_date": "PerformedProcedureStepStartDate",
    "performed_procedure_step_start_time": "PerformedProcedureStepStartTime",
}
_INT_KEYS = {
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
    "number_of_frames": "NumberOfFrames",
}
SEARCHABLE_KEYS = tuple(_TEXT_KEYS) + tuple(_INT_KEYS)


# TM columns: stored as ``time_key`` writes them, so QIDO compares times, not the texts files happen to hold
_TIME_KEYS = frozenset({"study_time", "performed_procedure_step_start_time"})
# DA columns: stored as ``date_key`` writes them (a date of the form before DICOM 3.0 without its dots; None for a
# value that names no day), so QIDO compares dates
_DATE_KEYS = frozenset({"patient_birth_date", "study_date", "series_date", "performed_procedure_step_start_date"})
# The longest value a text column holds, on both backends alike: PostgreSQL refused a longer one (an index row is
# at most ~2.7 KB; a date, sex or modality column is a VARCHAR(16) or (32), gateway/catalog/schema.py), a 503
# "catalog unavailable" for a file with a 30,000 character name. No VR searched holds more than 64 characters
# (PS3.5 6.2), a DA 8 (18 as a range), a CS 16, so only a broken value is left out: the file is stored and answered
# whole, just not searchable by that value (as an out-of-range Series Number). Time columns hold a time_key.
_TEXT_LIMIT = 256
_TEXT_LIMITS = {
    "modality": 16,
    "patient_sex": 16,
    "patient_birth_date": 16,
    "study_date": 16,
    "performed_procedure_step_start_date": 32,
}


def _storable(key: str, text: str | None) -> str | None:
    if text is None:
        return None
    text = text.replace("\0", "\ufffd")  # PostgreSQL's text holds no NUL (as DICOM XML, U+FFFD stands for it)
    return text if len(text) <= _TEXT_LIMITS.get(key, _TEXT_LIMIT) else None


def searchable(metadata: dict[str, Any]) -> dict[str, str | int | None]:
    """Flat values for catalog columns, from the instance's DICOM JSON (values pydicom decoded once, see
    ``gateway.dicom.valuememo``): every key of ``SEARCHABLE_KEYS``, None when missing, empty, undecodable or
    longer than a column holds (a time column holds its ``time_key``, None for a value that is no time, a date
    column its ``date_key``, None for a value that is no day; a NUL is U+FFFD)."""
    out: dict[str, str | int | None] = {}
    for key, tag in _TEXT_TAGS.items():
        text = _storable(key, _text(metadata.get(tag)))
        if text is not None and key in _DATE_KEYS:
            text = date_key(text)
        out[key] = time_key(text) if key in _TIME_KEYS and text is not None else text
    for key, tag in _INT_TAGS.items():
        out[key] = int32_or_none(_text(metadata.get(tag)))
    return out


_TEXT_TAGS = dict(zip(_TEXT_KEYS, _tags(*_TEXT_KEYS.values()), strict=True))
_INT_TAGS = dict(zip(_INT_KEYS, _tags(*_INT_KEYS.values()), strict=True))


def _text(element: Any) -> str | None:
    """The first value of a DICOM JSON element as text (a PN's alphabetic group)."""
    values = element.get("Value") if isinstance(element, dict) else None
    value = values[0] if isinstance(values, list) and values else None
    if isinstance(value, dict):  # PN
        value = value.get("Alphabetic")
    if value is None:
        return None
    text = str(value).strip()
    return text or None
