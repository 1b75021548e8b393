"""Attributes every synthetic instance shares: patient, study and equipment modules, with the fake PHI
hidden where real files hide it (or the PS3.15 basic-profile result under ``clean``), and the file meta."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

from gateway.tools.synth.identity import PRIVATE_CREATOR, _Identity, _uid


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _pname_item(name: str) -> Dataset:
    """A content item (TID 1002-style) holding a person name: how names end up deep inside sequences."""
    item = Dataset()
    item.ValueType = "PNAME"
    item.ConceptNameCodeSequence = [_code("121008", "DCM", "Person Observer Name")]
    item.PersonName = name
    return item


def _common(ds: Dataset, ident: _Identity, *, clean: bool, modality: str, description: str) -> None:
    """Patient, study, series and equipment attributes shared by every synthetic instance, PHI or not."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Modality = modality
    ds.Manufacturer = "dicom-gateway"
    ds.ManufacturerModelName = "synth"
    ds.SoftwareVersions = "1"
    if clean:
        # PS3.15 basic profile: Type 2 attributes emptied, Type 1 ones removed or dummied, no private tags.
        for keyword in (
            "PatientName",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "ReferringPhysicianName",
        ):
            setattr(ds, keyword, "")
        ds.PatientID = ident.pseudonym
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "dicom-gateway synth --clean: synthetic, never identified"
        ds.DeidentificationMethodCodeSequence = [
            _code("113100", "DCM", "Basic Application Confidentiality Profile")
        ]
        return

    name = ident.name
    ds.PatientName = name
    ds.PatientID = ident.patient_id
    ds.IssuerOfPatientID = "SYNTH-HOSPITAL"
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.PatientAge = ident.age
    ds.PatientAddress = ident.address
    ds.PatientTelephoneNumbers = ident.phone
    other = Dataset()
    other.PatientID = ident.other_id
    other.IssuerOfPatientID = "SSA"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = ident.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = ident.study_time
    ds.AccessionNumber = ident.accession
    ds.StudyID = ident.accession[-4:]
    ds.StudyDescription = f"{description} - {ident.given} {ident.family}"
    ds.ImageComments = f"Pt {ident.family}, {ident.given} (DOB {ident.birth_date}), {ident.phone}: no motion"
    ds.InstitutionName = ident.institution
    ds.InstitutionAddress = ident.institution_address
    ds.InstitutionalDepartmentName = "Radiology" if modality != "SM" else "Pathology"
    ds.StationName = f"{modality}STATION{ident.device_serial[-2:]}"
    ds.DeviceSerialNumber = ident.device_serial
    ds.OperatorsName = ident.operator
    ds.ReferringPhysicianName = ident.referring
    ds.PerformingPhysicianName = ident.referring
    ds.RequestingPhysician = ident.referring

    # Three sequences deep: RequestAttributes > ScheduledProtocolCode > ProtocolContext > PersonName.
    protocol = _code("P-" + modality, "99SYNTH", f"{modality} protocol")
    protocol.ProtocolContextSequence = [_pname_item(name)]
    request = Dataset()
    request.RequestedProcedureID = ident.accession
    request.ScheduledProcedureStepID = ident.accession + "1"
    request.ScheduledProtocolCodeSequence = [protocol]
    ds.RequestAttributesSequence = [request]

    # A vendor block: a name in a private LO, and a private sequence holding the name and birth date again.
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", f"{ident.given} {ident.family}")
    inner = Dataset()
    inner.PatientName = name
    inner.PatientBirthDate = ident.birth_date
    inner.private_block(0x0009, PRIVATE_CREATOR, create=True).add_new(0x10, "PN", name)
    block.add_new(0x02, "SQ", [inner])


def _trailing_phi(ident: _Identity) -> list[tuple[int, int, str, bytes]]:
    """Private elements in group 7FE1, stored after Pixel Data, where ``stop_before_pixels`` never looks."""
    return [
        (0x7FE1, 0x0010, "LO", PRIVATE_CREATOR.encode()),
        (0x7FE1, 0x1001, "PN", ident.name.encode("utf-8")),
    ]


def _file_meta(sop_class: str, sop_uid: str, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = _uid(0, "implementation")
    meta.ImplementationVersionName = "DICOMGW_SYNTH"
    return meta


def _ds(value: float) -> str:
    """A DS string that always fits 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text



def write_whole(path: Path, ds: Dataset) -> None:
    """``ds`` as the PS3.10 file ``path``, written beside it and renamed once whole, as the whole-slide image is: a
    Ctrl-C or a crash mid-write left a truncated .dcm that `upload` of the folder then failed on."""
    partial = path.with_name(path.name + ".partial")
    try:
        dcmwrite(partial, ds, enforce_file_format=True)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
