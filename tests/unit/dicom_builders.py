"""Small pydicom-written P10 files for the index tests (independent of gateway.tools.synth on purpose)."""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.2"
SOP = "1.2.826.0.1.3680043.8.498.1.2.3"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"


def base(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = SOP
    ds.StudyDate = "20240131"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC42"
    ds.Modality = "CT"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "PID-7"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.StudyID = "S1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 7
    ds.StudyDescription = "Chest"
    ds.SeriesDescription = "Axial"
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def image(ds: Dataset, rows: int, cols: int, bits: int, frames: int, samples: int = 1) -> Dataset:
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    return ds


def write(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    ds.save_as(
        path,
        enforce_file_format=True,
        implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
        little_endian=transfer_syntax != ExplicitVRBigEndian,
    )
    return path


def native_frames(count: int, length: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(length) for _ in range(count)]


def jpeg_frames(count: int, length: int, seed: int = 2) -> list[bytes]:
    """Even-length fake JPEG codestreams: SOI, bytes without 0xFF (so no marker appears by chance), EOI."""
    rnd = random.Random(seed)
    return [
        b"\xff\xd8" + bytes(rnd.randrange(0, 0xFF) for _ in range(length - 4)) + b"\xff\xd9"
        for _ in range(count)
    ]


def encapsulated(
    path: Path,
    frames: list[bytes],
    *,
    fragments_per_frame: int = 1,
    bot: bool = True,
    extended: bool = False,
    transfer_syntax: str = JPEGBaseline8Bit,
    number_of_frames: int | None = None,
    **attrs: object,
) -> Path:
    ds = image(base(SOPClassUID=VL_WSI, **attrs), 16, 16, 8, number_of_frames or len(frames))
    if extended:
        value, offsets, lengths = encapsulate_extended(frames)
        ds.ExtendedOffsetTable = offsets
        ds.ExtendedOffsetTableLengths = lengths
    else:
        value = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=bot)
    ds.PixelData = value
    ds["PixelData"].VR = "OB"
    return write(ds, path, transfer_syntax)


@contextmanager
def lenient_pydicom() -> Iterator[None]:
    """Let a test write deliberately invalid values."""
    saved = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.writing_validation_mode = saved


def nested_dataset() -> tuple[Dataset, dict[str, bytes]]:
    """Sequences with bulk OB inside (defined and undefined length) and elements after Pixel Data; returns the
    data set and the expected bulk bytes by BulkDataURI path."""
    ds = image(base(), 4, 4, 8, 1)
    big = bytes(range(256)) * 12  # 3072 bytes
    small = b"\x01\x02\x03\x04"
    inner = Dataset()
    inner.EncryptedContent = big[:2000]
    enc0, enc1 = Dataset(), Dataset()
    enc0.EncryptedContent = small
    enc1.EncryptedContent = big
    ds.EncryptedAttributesSequence = Sequence([enc0, enc1])
    ds["EncryptedAttributesSequence"].is_undefined_length = True
    enc1.is_undefined_length_sequence_item = True
    request = Dataset()
    request.ScheduledProcedureStepID = "SPS1"
    request.RequestedProcedureID = "RP1"
    request.EncryptedAttributesSequence = Sequence([inner])
    ds.RequestAttributesSequence = Sequence([request])
    ds.PixelData = b"\x07" * 16
    ds["PixelData"].VR = "OB"
    # Elements after Pixel Data: a digital signature (with an OB inside) and trailing padding.
    sig = Dataset()
    sig.Signature = big[:1500]
    ds.DigitalSignaturesSequence = Sequence([sig])
    ds.DataSetTrailingPadding = b"\x00" * 2048
    expected = {
        "00400275/0/04000500/0/04000520": big[:2000],
        "04000500/1/04000520": big,
        "7FE00010": b"\x07" * 16,
        "FFFAFFFA/0/04000120": big[:1500],
        "FFFCFFFC": b"\x00" * 2048,
    }
    return ds, expected


def read_ranges(path: Path, ranges: list[tuple[int, int]]) -> bytes:
    out = b""
    with open(path, "rb") as f:
        for offset, length in ranges:
            f.seek(offset)
            out += f.read(length)
    return out


__all__ = [
    "DeflatedExplicitVRLittleEndian",
    "ExplicitVRBigEndian",
    "ExplicitVRLittleEndian",
    "ImplicitVRLittleEndian",
    "JPEGBaseline8Bit",
]
