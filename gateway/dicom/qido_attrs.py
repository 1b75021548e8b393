"""QIDO-RS return attributes (PS3.18 Tables 10.6.3-3, -4, -5) and the flat searchable values for catalog
columns.

The ``*_attrs`` functions take the instance's DICOM JSON (``gateway.dicom.metadata``) and return the subset
for one level, so QIDO answers reuse the exact values of the metadata. Attributes that describe many instances
(Number of Study Related Series/Instances, Number of Series Related Instances, Modalities in Study, Instance
Availability, Retrieve URL) are computed by the catalog and the read path, not here. Transfer syntax is
answered as Available Transfer Syntax UID (0008,3002), the QIDO attribute for it; group 0002 never appears in
QIDO.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

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
}
_INT_KEYS = {
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
    "number_of_frames": "NumberOfFrames",
}
SEARCHABLE_KEYS = tuple(_TEXT_KEYS) + tuple(_INT_KEYS)


def searchable(ds: Dataset) -> dict[str, str | int | None]:
    """Flat values for catalog columns: every key of ``SEARCHABLE_KEYS``, None when missing."""
    out: dict[str, str | int | None] = {}
    for key, keyword in _TEXT_KEYS.items():
        out[key] = _text(ds, keyword)
    for key, keyword in _INT_KEYS.items():
        out[key] = int32_or_none(_text(ds, keyword))
    return out


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - an undecodable value is "not searchable", not a failed ingest
        return None
    if value is None:
        return None
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
        if value is None:
            return None
    if keyword.endswith("Name") and hasattr(value, "alphabetic"):
        text = str(value.alphabetic)
    else:
        text = str(value)
    text = text.strip()
    return text or None
