"""Builders of DICOM test files for the PHI tests (pydicom-written, no fixtures from elsewhere).

``clean_dataset()`` scans clean under the Basic Profile: 2.25 UIDs, empty Type 2 attributes, Burned In
Annotation NO. Each test adds one hiding place and asserts the exact findings. Also a self-test so this module
is collected.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ORG_ROOT = "1.2.826.0.1.3680043.8.498"  # an organisation's root: UIDs under it are findings


def clean_dataset(sop: str = "2.25.1001", study: str = "2.25.1", series: str = "2.25.11") -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = "MODALITY1"
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "Scanner 3000"
    # Type 2 attributes a clean file carries empty
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.add_new(0x7FE00010, "OW", bytes(range(32)))
    return ds


def phi_dataset(
    sop: str = ORG_ROOT + ".3.1",
    study: str = ORG_ROOT + ".1",
    series: str = ORG_ROOT + ".2",
    name: str = "DOE^JOHN",
) -> Dataset:
    """A CT with PHI in many places (names, IDs, dates, private tags, sequences, references)."""
    ds = clean_dataset(sop, study, series)
    ds.PatientName = name
    ds.PatientID = "MRN12345"
    ds.PatientBirthDate = "19500214"
    ds.PatientAge = "074Y"
    ds.PatientSex = "M"
    ds.StudyDate = "20240315"
    ds.StudyTime = "101500"
    ds.SeriesDate = "20240315"
    ds.ContentDate = "20240315"
    ds.AcquisitionDateTime = "20240315101501.123456"
    ds.AccessionNumber = "ACC998877"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "WHO^DOCTOR"
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = "follow-up for DOE"
    ds.DeviceSerialNumber = "SN-42"
    ds.FrameOfReferenceUID = ORG_ROOT + ".4"
    other = Dataset()
    other.PatientID = "ALT-555"
    ds.OtherPatientIDsSequence = Sequence([other])
    request = Dataset()
    request.RequestingPhysician = "SMITH^ANNA"
    request.RequestedProcedureDescription = "chest"
    ds.RequestAttributesSequence = Sequence([request])
    reference = Dataset()
    reference.ReferencedSOPClassUID = CT_IMAGE
    reference.ReferencedSOPInstanceUID = ORG_ROOT + ".3.0"
    ds.ReferencedImageSequence = Sequence([reference])
    ds.add_new(0x00090010, "LO", "ACME SAFE")
    ds.add_new(0x00091001, "DS", "1.5")
    ds.add_new(0x00091002, "LO", "operator DOE")
    ds.add_new(0x00110010, "LO", "ACME SECRET")
    ds.add_new(0x00111001, "LO", "secret stuff")
    return ds


def write(ds: Dataset, path: Path, implicit: bool = False) -> Path:
    if implicit:
        from pydicom.uid import ImplicitVRLittleEndian

        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def write_big_native(
    path: Path, frames: int, rows: int = 512, columns: int = 512, trailing: bool = True
) -> int:
    """A native multi-frame file whose Pixel Data is a sparse hole of ``frames`` x rows x columns x 2 bytes,
    followed (optionally) by a private element that carries a name. Returns the pixel data length."""
    ds = clean_dataset()
    del ds[0x7FE00010]
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path, enforce_file_format=True)
    length = frames * rows * columns * 2
    with path.open("r+b") as handle:
        handle.seek(0, 2)
        handle.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, length))
        handle.seek(length, 1)  # a hole: the file system stores nothing for it
        if trailing:
            creator = b"GEMS_TRAIL"
            handle.write(struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", len(creator)) + creator)
            value = b"DOE^JOHN"
            handle.write(struct.pack("<HH2sH", 0x7FE1, 0x1001, b"LO", len(value)) + value)
        else:
            handle.truncate()
    return length


def test_builders_produce_readable_files(tmp_path: Path) -> None:
    import pydicom

    path = write(phi_dataset(), tmp_path / "phi.dcm")
    assert pydicom.dcmread(path).PatientName == "DOE^JOHN"
