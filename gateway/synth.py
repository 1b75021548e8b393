"""Synthetic DICOM for demos, tests and benchmarks: a CT or MR series and a whole-slide image (WSI).

The files are meant to be *hard* in the ways real files are hard, so the gateway is tested against them:

* the CT/MR series is a 512x512 phantom (body, fat, bone ring, organs) that changes slice by slice;
* the WSI is a TILED_FULL JPEG pyramid level with 32,000 frames by default, with a filled, empty or extended
  offset table and optionally several fragments per frame;
* unless ``clean`` is set, fake PHI sits where real files hide it: nested three sequences deep, in private
  blocks and private sequences, in free text, and in a private element stored *after* Pixel Data.

Everything is a pure function of the seed (names, dates, UIDs, pixels), so ``--seed`` gives byte-identical
files. The WSI writer never builds the Pixel Data value in memory: it computes every frame's length up front
(each frame is one of a few Pillow-encoded base tiles plus a fixed-size JPEG COM segment carrying the frame
number), writes the header with pydicom, then streams the fragments.
"""

from __future__ import annotations

import functools
import io
import math
import random
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Literal

import click
import numpy as np
from PIL import Image, ImageCms
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from gateway.errors import InvalidUID
from gateway.uids import check_uid

__all__ = [
    "CT_IMAGE",
    "FAKE_PATIENT_NAMES",
    "MR_IMAGE",
    "WSI_IMAGE",
    "make_series",
    "make_wsi",
    "synth",
    "wsi_tile",
]

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
WSI_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"

Offsets = Literal["bot", "empty", "eot"]
DEFAULT_SLICES = {"CT": 200, "MR": 60}
DEFAULT_FRAMES = 32_000
DEFAULT_NATIVE_FRAMES = 64  # 64 x 256 x 256 x 3 = 12.6 MB; 32,000 native tiles would be 6.3 GB
PRIVATE_CREATOR = "ACME_SYNTH 1.0"

# ----------------------------------------------------------------------------------------------------------
# Fake identities. Non-ASCII names on purpose (SpecificCharacterSet ISO_IR 192): scanners and JSON must cope.

_PATIENTS = [
    ("Doe", "Jane", "F"),
    ("Müller", "Hans Peter", "M"),
    ("García López", "María", "F"),
    ("O'Brien", "Seán", "M"),
    ("Nguyen", "Thi Lan", "F"),
    ("Kowalski", "Anna", "F"),
    ("Johansson", "Erik", "M"),
    ("Rossi", "Giulia", "F"),
    ("Okafor", "Chinedu", "M"),
    ("Tanaka", "Yuki", "F"),
    ("Dubois", "Claire", "F"),
    ("Smith", "Robert", "M"),
]
# Every fake patient name (PN form) the generator can write: a PHI scanner's test can look for these.
FAKE_PATIENT_NAMES = tuple(f"{family}^{given}" for family, given, _ in _PATIENTS)
_DOCTORS = [
    "Lindqvist^Sara^^Dr",
    "Haddad^Omar^^Dr",
    "Baker^Emily^^Dr",
    "Ferreira^João^^Dr",
    "Kim^Min-jun^^Dr",
]
_OPERATORS = ["Weber^Lukas", "Brown^Olivia", "Santos^Ana", "Novak^Petr"]
_STREETS = ["Elm Street", "Rue des Lilas", "Hauptstraße", "Via Roma", "Calle Mayor", "Maple Avenue"]
_CITIES = ["Springfield", "Lyon", "Freiburg", "Bologna", "Sevilla", "Portland"]
_INSTITUTIONS = ["St. Elsewhere General Hospital", "Mercy West Medical Center", "Klinikum Nordstadt"]


@dataclass(frozen=True)
class _Identity:
    """Everything identifying about one fake patient and visit; a pure function of the seed."""

    family: str
    given: str
    sex: str
    patient_id: str
    other_id: str
    birth_date: str
    age: str
    address: str
    phone: str
    accession: str
    study_date: str
    study_time: str
    referring: str
    operator: str
    institution: str
    institution_address: str
    device_serial: str
    pseudonym: str  # what --clean writes as PatientID: the caller's --patient, else empty

    @property
    def name(self) -> str:
        return f"{self.family}^{self.given}"


def _identity(seed: int, patient: str | None) -> _Identity:
    rng = random.Random(f"dicom-gateway-synth-identity-{seed}")
    family, given, sex = rng.choice(_PATIENTS)
    study = date(2023, 1, 2) + timedelta(days=rng.randrange(700))
    years = rng.randrange(18, 90)
    born = study - timedelta(days=years * 365 + rng.randrange(365))
    return _Identity(
        family=family,
        given=given,
        sex=sex,
        patient_id=patient if patient is not None else f"MRN{rng.randrange(10**7):07d}",
        other_id=f"{rng.randrange(100, 999)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}",
        birth_date=born.strftime("%Y%m%d"),
        age=f"{years:03d}Y",
        address=f"{rng.randrange(1, 200)} {rng.choice(_STREETS)}, {rng.choice(_CITIES)}",
        phone=f"+1 555 01{rng.randrange(100):02d} {rng.randrange(1000):03d}",
        accession=f"A{rng.randrange(10**8):08d}",
        study_date=study.strftime("%Y%m%d"),
        study_time=f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
        referring=rng.choice(_DOCTORS),
        operator=rng.choice(_OPERATORS),
        institution=rng.choice(_INSTITUTIONS),
        institution_address=f"{rng.randrange(1, 99)} Hospital Road, {rng.choice(_CITIES)}",
        device_serial=f"SN{rng.randrange(10**6):06d}",
        pseudonym=patient or "",
    )


def _uid(seed: int, *parts: str) -> UID:
    """Deterministic 2.25 UID from a name-based (v5) UUID: same seed and parts, same UID, on every machine.
    (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and is random.)"""
    name = "/".join(["dicom-gateway-synth", str(seed), *parts])
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}")


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


def _study_uid(seed: int, study_uid: str | None, kind: str) -> str:
    if study_uid is None:
        return str(_uid(seed, "study", kind))
    return check_uid(study_uid, "study UID")


def _ds(value: float) -> str:
    """A DS string that always fits 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# ----------------------------------------------------------------------------------------------------------
# CT / MR: one label map per slice (same anatomy), turned into HU or MR signal by a lookup table.

_AIR, _FAT, _MUSCLE, _CORTEX, _MARROW, _LUNG, _LIVER, _KIDNEY, _BLOOD, _CSF, _FLUID, _HEART, _TABLE = range(
    13
)
_CT_HU = np.array([-1000, -100, 50, 900, 300, -850, 60, 35, 180, 10, 5, 45, 100], dtype=np.float32)
_MR_SIGNAL = np.array([0, 700, 250, 30, 600, 30, 300, 550, 60, 1600, 1700, 350, 0], dtype=np.float32)


class _Painter:
    """Paints ellipses into a label map, computing only their bounding box (full-image masks are slow)."""

    def __init__(self, rows: int, columns: int) -> None:
        self.rows, self.columns = rows, columns
        self.y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
        self.x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
        self.theta = np.arctan2(self.y, self.x)

    def ellipse(self, labels: np.ndarray, cx: float, cy: float, ax: float, ay: float, label: int) -> None:
        c0 = max(0, int((cx - ax + 1) / 2 * (self.columns - 1)))
        c1 = min(self.columns, int((cx + ax + 1) / 2 * (self.columns - 1)) + 2)
        r0 = max(0, int((cy - ay + 1) / 2 * (self.rows - 1)))
        r1 = min(self.rows, int((cy + ay + 1) / 2 * (self.rows - 1)) + 2)
        if c0 >= c1 or r0 >= r1:
            return
        inside = ((self.x[:, c0:c1] - cx) / ax) ** 2 + ((self.y[r0:r1] - cy) / ay) ** 2 <= 1.0
        labels[r0:r1, c0:c1][inside] = label


def _phantom(p: _Painter, t: float) -> np.ndarray:
    """Label map of an axial slice at height ``t`` (0 = pelvis, 1 = upper chest), patient supine, viewed from
    the feet (patient's right on the image left), as radiology displays it."""
    labels = np.zeros((p.rows, p.columns), dtype=np.uint8)
    ax = 0.80 + 0.05 * math.sin(math.pi * t)
    ay = 0.52 + 0.05 * math.cos(2 * math.pi * t)
    labels[(p.y > ay + 0.12) & (p.y < ay + 0.17) & (np.abs(p.x) < 0.9)] = _TABLE
    body = (p.x / ax) ** 2 + (p.y / ay) ** 2
    labels[body <= 1.0] = _FAT
    labels[body <= 0.88**2] = _MUSCLE
    # The "bone ring": ribs in the chest, broken up so they move as one scrolls.
    if t > 0.45:
        ribs = (body > 0.74**2) & (body < 0.80**2) & (np.cos(14 * p.theta + 40 * t) > 0.25) & (p.y < 0.25)
        labels[ribs] = _CORTEX
    if t < 0.28:  # iliac wings and a bladder
        for side in (-1, 1):
            p.ellipse(labels, side * 0.45, 0.10, 0.16, 0.24, _CORTEX)
            p.ellipse(labels, side * 0.45, 0.10, 0.12, 0.19, _MARROW)
        p.ellipse(labels, 0.0, 0.05, 0.22 * (1 - t), 0.18 * (1 - t), _FLUID)
    if t > 0.6:  # lungs grow towards the apex and the heart sits between them
        grow = min(1.0, (t - 0.6) * 4)
        for side in (-1, 1):
            p.ellipse(labels, side * 0.36, -0.04, 0.19 * grow + 0.04, 0.28 * grow + 0.04, _LUNG)
        if t < 0.9:
            p.ellipse(labels, 0.08, -0.12, 0.20 * (0.9 - t) * 4, 0.16 * (0.9 - t) * 4, _HEART)
    if 0.35 < t < 0.7:  # the liver on the patient's right, with a cyst that comes and goes
        size = math.sin((t - 0.35) / 0.35 * math.pi)
        p.ellipse(labels, -0.30, -0.02, 0.32 * size + 0.02, 0.26 * size + 0.02, _LIVER)
        if 0.45 < t < 0.55:
            p.ellipse(labels, -0.36, -0.05, 0.06, 0.05, _FLUID)
    if 0.3 < t < 0.5:
        size = math.sin((t - 0.3) / 0.2 * math.pi)
        for side in (-1, 1):
            p.ellipse(labels, side * 0.30, 0.24, 0.10 * size + 0.01, 0.13 * size + 0.01, _KIDNEY)
    p.ellipse(labels, 0.05, 0.16, 0.045, 0.045, _BLOOD)  # aorta
    p.ellipse(labels, 0.0, 0.36, 0.10, 0.09, _CORTEX)  # vertebral body
    p.ellipse(labels, 0.0, 0.36, 0.08, 0.07, _MARROW)
    p.ellipse(labels, 0.0, 0.52, 0.035, 0.04, _CSF)  # spinal canal
    return labels


def make_series(
    out: Path,
    *,
    modality: str = "CT",
    slices: int | None = None,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
    clean: bool = False,
    study_uid: str | None = None,
    patient: str | None = None,
) -> list[Path]:
    """Write an axial CT or MR series to ``out`` (created if missing); return the paths, instance 1 first.

    ``slices`` defaults to 200 for CT and 60 for MR. ``patient`` replaces the fake PatientID (under ``clean``
    it is the only identifier written, as the caller's pseudonym). Files are named
    ``{ct|mr}-{seed}-{instance:04d}.dcm`` and are overwritten. Raises ``ValueError`` (or ``InvalidUID``) on
    bad arguments.
    """
    modality = modality.upper()
    if modality not in DEFAULT_SLICES:
        raise ValueError(f"modality must be CT or MR, not {modality!r}")
    slices = DEFAULT_SLICES[modality] if slices is None else slices
    if not 1 <= slices <= 5000:
        raise ValueError("slices must be between 1 and 5000")
    if not (16 <= rows <= 4096 and 16 <= columns <= 4096):
        raise ValueError("rows and columns must be between 16 and 4096")
    ct = modality == "CT"
    ident = _identity(seed, patient)
    study = _study_uid(seed, study_uid, modality)
    series = str(_uid(seed, study, modality, "series"))
    frame_of_reference = str(_uid(seed, study, modality, "for"))
    spacing = _ds(400.0 / columns)
    thickness, gap = (2.5, 2.5) if ct else (5.0, 6.0)
    painter = _Painter(rows, columns)
    noise = np.random.default_rng([seed, 1 if ct else 2])
    table = _CT_HU if ct else _MR_SIGNAL
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(slices):
        t = 1.0 - index / (slices - 1) if slices > 1 else 0.5
        signal = table[_phantom(painter, t)] + noise.standard_normal((rows, columns), dtype=np.float32) * (
            12.0 if ct else 25.0
        )
        stored = (signal + 1024.0) if ct else np.abs(signal)  # MR magnitude noise is never negative
        pixels = np.clip(np.rint(stored), 0, 65535).astype("<u2")

        ds = Dataset()
        sop = str(_uid(seed, series, str(index)))
        ds.file_meta = _file_meta(CT_IMAGE if ct else MR_IMAGE, sop, ExplicitVRLittleEndian)
        _common(
            ds,
            ident,
            clean=clean,
            modality=modality,
            description="CT CHEST ABDOMEN PELVIS W CONTRAST" if ct else "MR ABDOMEN T2",
        )
        ds.SOPClassUID = CT_IMAGE if ct else MR_IMAGE
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.SeriesNumber = 2 if ct else 3
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        if not clean:  # free text the basic profile removes (X)
            ds.SeriesDescription = "AX 2.5mm BODY" if ct else "AX T2 TSE"
        ds.BodyPartExamined = "ABDOMEN"
        ds.PatientPosition = "HFS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        z = _ds(-index * gap)
        # Centre of the first pixel, for a field of view centred on the table axis.
        ds.ImagePositionPatient = [
            _ds((1 - columns) * float(spacing) / 2),
            _ds((1 - rows) * float(spacing) / 2),
            z,
        ]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = _ds(thickness)
        ds.SliceLocation = z
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if ct:
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
            ds.WindowCenterWidthExplanation = ["ABDOMEN", "LUNG"]
            ds.KVP, ds.XRayTubeCurrent, ds.ConvolutionKernel = 120, 200, "STANDARD"
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "SK", ""
            ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "2D", 4000, 90, 16
            ds.SpacingBetweenSlices = _ds(gap)
            ds.MagneticFieldStrength, ds.ImagedNucleus = 1.5, "1H"
            ds.WindowCenter, ds.WindowWidth = 700, 1400
        ds.PixelData = pixels.tobytes()
        if not clean:
            for group, element, vr, value in _trailing_phi(ident):
                ds.add_new((group << 16) | element, vr, value.decode("utf-8"))
        path = out / f"{modality.lower()}-{seed}-{index + 1:04d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------------------
# WSI: a handful of base tiles, a tissue layout, and a streaming writer.

_COM_LEN = 4 + len(b"dicom-gateway synth frame 0000000000")


def _com(frame_number: int) -> bytes:
    """A JPEG COM segment that makes each frame's bytes distinct (decoders ignore it)."""
    text = f"dicom-gateway synth frame {frame_number:010d}".encode()
    return b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text


def _periodic_noise(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Gaussian-filtered white noise on an n x n torus (tiles cut from it join seamlessly), unit variance."""
    white = rng.standard_normal((n, n))
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    field = np.fft.irfft2(
        np.fft.rfft2(white) * np.exp(-2 * (math.pi * scale) ** 2 * (fx**2 + fy**2)), s=(n, n)
    )
    return (field - field.mean()) / field.std()


@functools.lru_cache(maxsize=4)
def _base_tiles(seed: int, tile: int) -> tuple[np.ndarray, ...]:
    """Base tile 0 is glass (background); 1..16 are a 4x4 cut of a periodic H&E-like texture."""
    n = 4 * tile
    rng = np.random.default_rng([seed, 7])
    stroma, fibres, cells, density = (_periodic_noise(rng, n, s) for s in (40.0, 3.0, 6.0, 60.0))
    pink = np.array([232.0, 150.0, 192.0])
    rgb = pink * (1.0 + 0.06 * stroma + 0.04 * fibres)[..., None]
    lumen = np.clip((-1.2 - stroma) * 3.0, 0.0, 1.0)[..., None]
    rgb = rgb * (1 - lumen) + np.array([246.0, 238.0, 244.0]) * lumen
    nuclei = np.clip((cells - (1.5 - 0.5 * density)) * 4.0, 0.0, 1.0)[..., None] * (1 - lumen)
    rgb = rgb * (1 - nuclei) + np.array([78.0, 44.0, 140.0]) * nuclei
    texture = np.clip(rgb, 0, 255).astype(np.uint8)
    glass = np.clip(241.0 + rng.standard_normal((tile, tile, 1)) * 1.5, 0, 255) * np.ones(3)
    tiles = [glass.astype(np.uint8)]
    tiles += [
        texture[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile].copy()
        for r in range(4)
        for c in range(4)
    ]
    return tuple(tiles)


@functools.lru_cache(maxsize=4)
def _jpeg_tiles(seed: int, tile: int) -> tuple[tuple[bytes, bytes], ...]:
    """Each base tile JPEG-encoded once (baseline, 4:2:2 = YBR_FULL_422), split where the COM segment goes:
    right after the JFIF APP0 segment, which JFIF wants first after SOI."""
    out = []
    for pixels in _base_tiles(seed, tile):
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=80, subsampling=1, optimize=False)
        data = buffer.getvalue()
        cut = 2
        if data[2:4] == b"\xff\xe0":
            cut = 4 + struct.unpack(">H", data[4:6])[0]
        out.append((data[:cut], data[cut:]))
    return tuple(out)


def _grid(frames: int) -> tuple[int, int]:
    """(rows, columns) of tiles: TILED_FULL needs frames == rows * columns, so the most square factor pair,
    landscape like a glass slide. A prime frame count gives a one-row strip."""
    rows = max(d for d in range(1, math.isqrt(frames) + 1) if frames % d == 0)
    return rows, frames // rows


@functools.lru_cache(maxsize=8)
def _layout(seed: int, frames: int) -> np.ndarray:
    """Base tile index of every frame (row-major, frame 1 first): two wobbly tissue sections on glass."""
    rows, columns = _grid(frames)
    r, c = np.divmod(np.arange(frames), columns)
    u, v = (c + 0.5) / columns, (r + 0.5) / rows
    phase = random.Random(f"dicom-gateway-synth-layout-{seed}").random() * 2 * math.pi
    tissue = np.zeros(frames, dtype=bool)
    for cx in (0.3, 0.7):
        dx, dy = (u - cx) / 0.17, (v - 0.5) / 0.38
        wobble = 1 + 0.15 * np.sin(3 * np.arctan2(dy, dx) + phase + cx * 7)
        tissue |= dx**2 + dy**2 < wobble**2
    return np.where(tissue, 1 + (r % 4) * 4 + (c % 4), 0).astype(np.int16)


def _check_wsi(frames: int, offsets: str, fragments_per_frame: int, native: bool, tile: int) -> None:
    if not 1 <= frames <= 1_000_000:
        raise ValueError("frames must be between 1 and 1,000,000")
    if tile % 16 or not 16 <= tile <= 2048:
        raise ValueError("tile must be a multiple of 16 between 16 and 2048")
    if offsets not in ("bot", "empty", "eot"):
        raise ValueError("offsets must be bot, empty or eot")
    if not 1 <= fragments_per_frame <= 64:
        raise ValueError("fragments per frame must be between 1 and 64")
    if native and (offsets != "bot" or fragments_per_frame != 1):
        raise ValueError("--offsets and --fragments-per-frame apply to JPEG only, not to --native")
    if offsets == "eot" and fragments_per_frame != 1:
        # PS3.3 C.7.6.3.1.8 / Table C.7-11a: the Extended Offset Table allows exactly one fragment per frame.
        raise ValueError("an Extended Offset Table requires one fragment per frame (PS3.3 Table C.7-11a)")


def wsi_tile(
    seed: int, frame_number: int, *, frames: int | None = None, native: bool = False, tile: int = 256
) -> bytes:
    """The exact bytes ``make_wsi`` writes for ``frame_number`` (1-based) given the same seed, frames, native
    and tile: the whole JPEG frame with its 0x00 pad (fragments concatenated), or the raw RGB tile if native.
    """
    frames = (DEFAULT_NATIVE_FRAMES if native else DEFAULT_FRAMES) if frames is None else frames
    if not 1 <= frame_number <= frames:
        raise ValueError(f"frame number {frame_number} outside 1..{frames}")
    base = int(_layout(seed, frames)[frame_number - 1])
    if native:
        # Stamp the frame number into the first pixel (and a half) so that no two native frames are equal.
        return struct.pack(">I", frame_number) + _base_tiles(seed, tile)[base].tobytes()[4:]
    head, tail = _jpeg_tiles(seed, tile)[base]
    data = head + _com(frame_number) + tail
    return data + b"\x00" if len(data) % 2 else data


def _fragments(frame: bytes, count: int) -> list[bytes]:
    """Split an even-length frame into ``count`` even-length fragments (the last one takes the remainder)."""
    size = (len(frame) // count) & ~1
    if size < 2:
        raise ValueError("frame too small for that many fragments")
    cuts = [i * size for i in range(count)] + [len(frame)]
    return [frame[cuts[i] : cuts[i + 1]] for i in range(count)]


def _element(group: int, element: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element with a short (2-byte) length, padded to even with a space."""
    if len(value) % 2:
        value += b" "
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def make_wsi(
    out: Path,
    *,
    frames: int | None = None,
    offsets: Offsets = "bot",
    fragments_per_frame: int = 1,
    native: bool = False,
    tile: int = 256,
    seed: int = 0,
    clean: bool = False,
    study_uid: str | None = None,
    patient: str | None = None,
) -> Path:
    """Write one VL Whole Slide Microscopy image (a single TILED_FULL level) to ``out/wsi-{seed}.dcm``.

    ``frames`` defaults to 32,000 (JPEG) or 64 (``native``). JPEG frames are baseline YBR_FULL_422; with
    ``offsets="bot"`` the Basic Offset Table points at the first fragment of each frame, ``"empty"`` leaves it
    empty, ``"eot"`` leaves it empty and fills (7FE0,0001)/(7FE0,0002). Raises ``ValueError`` on bad arguments
    (including a BOT that would overflow 32 bits) before writing anything.
    """
    frames = (DEFAULT_NATIVE_FRAMES if native else DEFAULT_FRAMES) if frames is None else frames
    _check_wsi(frames, offsets, fragments_per_frame, native, tile)
    ident = _identity(seed, patient)
    study = _study_uid(seed, study_uid, "SM")
    series = str(_uid(seed, study, "SM", "series"))
    sop = str(_uid(seed, series, "wsi"))
    grid_rows, grid_columns = _grid(frames)
    layout = _layout(seed, frames)

    ds = Dataset()
    ds.file_meta = _file_meta(WSI_IMAGE, sop, ExplicitVRLittleEndian if native else JPEGBaseline8Bit)
    _common(ds, ident, clean=clean, modality="SM", description="SKIN EXCISION H&E")
    _wsi_attributes(
        ds,
        ident,
        seed=seed,
        clean=clean,
        study=study,
        series=series,
        sop=sop,
        frames=frames,
        tile=tile,
        grid=(grid_rows, grid_columns),
        native=native,
    )
    trailing = b"" if clean else b"".join(_element(*e) for e in _trailing_phi(ident))

    if not native:
        sizes = np.array([len(h) + _COM_LEN + len(t) for h, t in _jpeg_tiles(seed, tile)], dtype=np.int64)
        lengths = sizes[layout]
        lengths += lengths % 2
        starts = np.concatenate(([0], np.cumsum(lengths + 8 * fragments_per_frame)[:-1]))
        if offsets == "eot":
            ds.ExtendedOffsetTable = starts.astype("<u8").tobytes()
            ds.ExtendedOffsetTableLengths = lengths.astype("<u8").tobytes()
        if offsets == "bot" and int(starts[-1]) >= 2**32:
            raise ValueError("the Basic Offset Table would overflow 32 bits; use --offsets eot")
    else:
        lengths = np.full(frames, tile * tile * 3, dtype=np.int64)
        if int(lengths.sum()) >= 2**32 - 1:
            raise ValueError("native Pixel Data over 4 GB cannot be written; use fewer frames")

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"wsi-{seed}.dcm"
    partial = path.with_name(path.name + ".partial")  # a crash never leaves a truncated .dcm behind
    try:
        with partial.open("wb", buffering=8 << 20) as f:
            dcmwrite(f, ds, enforce_file_format=True)
            if native:
                _write_native(f, seed, frames, tile, int(lengths.sum()))
            else:
                bot = starts.astype("<u4").tobytes() if offsets == "bot" else b""
                _write_encapsulated(f, seed, frames, tile, fragments_per_frame, bot)
            f.write(trailing)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _write_native(f: BinaryIO, seed: int, frames: int, tile: int, total: int) -> None:
    f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, total))
    for number in range(1, frames + 1):
        f.write(wsi_tile(seed, number, frames=frames, native=True, tile=tile))


def _write_encapsulated(f: BinaryIO, seed: int, frames: int, tile: int, per_frame: int, bot: bytes) -> None:
    item = struct.Struct("<HHI")
    f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
    f.write(item.pack(0xFFFE, 0xE000, len(bot)) + bot)
    for number in range(1, frames + 1):
        frame = wsi_tile(seed, number, frames=frames, tile=tile)
        for fragment in _fragments(frame, per_frame) if per_frame > 1 else (frame,):
            f.write(item.pack(0xFFFE, 0xE000, len(fragment)))
            f.write(fragment)
    f.write(item.pack(0xFFFE, 0xE0DD, 0))


@functools.lru_cache(maxsize=1)
def _srgb_profile() -> bytes:
    """Pillow's sRGB ICC profile with its creation date pinned, so output stays byte-identical."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
    return bytes(profile)


def _wsi_attributes(
    ds: Dataset,
    ident: _Identity,
    *,
    seed: int,
    clean: bool,
    study: str,
    series: str,
    sop: str,
    frames: int,
    tile: int,
    grid: tuple[int, int],
    native: bool,
) -> None:
    """The VL Whole Slide Microscopy IOD modules a viewer checks (PS3.3 A.32.8)."""
    spacing_mm = 0.00025  # 0.25 um per pixel, a 40x scan
    ds.SOPClassUID = WSI_IMAGE
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if not clean:  # free text the basic profile removes
        ds.SeriesDescription = "H&E 40x"
    ds.FrameOfReferenceUID = str(_uid(seed, series, "for"))
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    # Type 1 in this IOD, so --clean writes dummy values (the PS3.15 "D" action) instead of removing them.
    dummy_dt = "19000101000000"  # the dummy date PHI scanners recognise
    ds.ContentDate = ds.get("ContentDate") or dummy_dt[:8]
    ds.ContentTime = ds.get("ContentTime") or dummy_dt[8:]
    ds.AcquisitionDateTime = dummy_dt if clean else ident.study_date + ident.study_time
    ds.DeviceSerialNumber = ds.get("DeviceSerialNumber") or "0"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB" if native else "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    ds.Rows = ds.Columns = tile
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.BurnedInAnnotation = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.LossyImageCompression = "00" if native else "01"
    if not native:
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = 10
    ds.VolumetricProperties = "VOLUME"
    grid_rows, grid_columns = grid
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = grid_rows * tile, grid_columns * tile
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.ImagedVolumeWidth = float(grid_columns * tile * spacing_mm)  # FL, millimetres
    ds.ImagedVolumeHeight = float(grid_rows * tile * spacing_mm)
    ds.ImagedVolumeDepth = 1.0  # micrometres, unlike width and height
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20
    origin.YOffsetInSlideCoordinateSystem = 40
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    ds.DimensionOrganizationType = "TILED_FULL"
    organization = str(_uid(seed, sop, "dimensions"))
    ds.DimensionOrganizationSequence = [Dataset()]
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = organization
    ds.DimensionIndexSequence = []
    for pointer in (0x0048021E, 0x0048021F):  # Column/RowPositionInTotalImagePixelMatrix
        index = Dataset()
        index.DimensionOrganizationUID = organization
        index.DimensionIndexPointer = pointer
        index.FunctionalGroupPointer = 0x0048021A  # PlanePositionSlideSequence
        ds.DimensionIndexSequence.append(index)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [_ds(spacing_mm), _ds(spacing_mm)]
    measures.SliceThickness = "0.001"
    shared.PixelMeasuresSequence = [measures]
    frame_type = Dataset()
    frame_type.FrameType = ds.ImageType
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    path_id = Dataset()
    path_id.OpticalPathIdentifier = "1"
    shared.OpticalPathIdentificationSequence = [path_id]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.NumberOfOpticalPaths = 1
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    optical.OpticalPathDescription = "Brightfield"
    optical.IlluminationTypeCodeSequence = [_code("111744", "DCM", "Brightfield illumination")]
    optical.IlluminationColorCodeSequence = [_code("414298005", "SCT", "Full Spectrum")]
    optical.ICCProfile = _srgb_profile()
    optical.ColorSpace = "SRGB"
    ds.OpticalPathSequence = [optical]
    slide = "ANONYMIZED" if clean else f"S{ident.accession[-6:]}-A1"
    ds.ContainerIdentifier = slide
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = [_code("433466003", "SCT", "Microscope slide")]
    specimen = Dataset()
    specimen.SpecimenIdentifier = "ANONYMIZED" if clean else slide[:-1]
    specimen.SpecimenUID = str(_uid(seed, sop, "specimen"))
    specimen.IssuerOfTheSpecimenIdentifierSequence = []
    specimen.SpecimenPreparationSequence = []
    if not clean:
        # Who cut the slide: another name three sequences deep, the way specimen preparation steps carry it.
        step = Dataset()
        step.SpecimenPreparationStepContentItemSequence = [_pname_item(ident.operator)]
        specimen.SpecimenPreparationSequence = [step]
        specimen.SpecimenShortDescription = f"Excision, {ident.family}"
    ds.SpecimenDescriptionSequence = [specimen]
    ds.AcquisitionContextSequence = []


# ----------------------------------------------------------------------------------------------------------
# Command line: ``dicom-gateway synth ct|mr|wsi --out DIR``.


def _common_options(function: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option(
                "--out",
                required=True,
                type=click.Path(file_okay=False, path_type=Path),
                help="Output folder (created if missing; files in it are overwritten).",
            ),
            click.option(
                "--seed", default=0, show_default=True, type=int, help="Same seed, byte-identical files."
            ),
            click.option("--clean", is_flag=True, help="No PHI at all: passes a PS3.15 basic-profile scan."),
            click.option(
                "--study-uid", default=None, help="Put the series into this study (default: from the seed)."
            ),
            click.option(
                "--patient", default=None, help="PatientID to use (default: a fake MRN from the seed)."
            ),
        ]
    ):
        function = option(function)
    return function


def _run(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except (ValueError, InvalidUID) as error:
        raise click.UsageError(str(error)) from None


@click.group(name="synth")
def synth() -> None:
    """Write synthetic DICOM (CT, MR, whole-slide) with realistic fake PHI, or none with --clean."""


def _series_command(modality: str) -> click.Command:
    @_common_options
    @click.option("--slices", type=int, default=DEFAULT_SLICES[modality], show_default=True)
    @click.option("--rows", type=int, default=512, show_default=True)
    @click.option("--columns", type=int, default=512, show_default=True)
    def command(
        out: Path,
        seed: int,
        clean: bool,
        study_uid: str | None,
        patient: str | None,
        slices: int,
        rows: int,
        columns: int,
    ) -> None:
        started = time.perf_counter()
        paths = _run(
            lambda: make_series(
                out,
                modality=modality,
                slices=slices,
                rows=rows,
                columns=columns,
                seed=seed,
                clean=clean,
                study_uid=study_uid,
                patient=patient,
            )
        )
        size = sum(p.stat().st_size for p in paths)
        click.echo(
            f"wrote {len(paths)} {modality} files ({size / 1e6:.1f} MB) to {out} "
            f"in {time.perf_counter() - started:.1f} s: {paths[0].name} .. {paths[-1].name}"
        )

    command.__doc__ = (
        f"{'A CT' if modality == 'CT' else 'An MR'} series: a 16-bit phantom that changes per slice."
    )
    return click.command(name=modality.lower())(command)


@synth.command(name="wsi")
@_common_options
@click.option(
    "--frames",
    type=int,
    default=None,
    help=f"Number of tiles [default: {DEFAULT_FRAMES:,}, or {DEFAULT_NATIVE_FRAMES} with --native].",
)
@click.option(
    "--offsets",
    type=click.Choice(["bot", "empty", "eot"]),
    default=None,
    help="bot: Basic Offset Table filled [default]; empty: empty BOT; eot: empty BOT + Extended "
    "Offset Table.",
)
@click.option(
    "--fragments-per-frame",
    type=int,
    default=1,
    show_default=True,
    help="Split each JPEG frame into N items.",
)
@click.option("--native", is_flag=True, help="Uncompressed RGB, Explicit VR Little Endian.")
@click.option("--tile", type=int, default=256, show_default=True, help="Tile width and height in pixels.")
def wsi_command(
    out: Path,
    seed: int,
    clean: bool,
    study_uid: str | None,
    patient: str | None,
    frames: int | None,
    offsets: Offsets | None,
    fragments_per_frame: int,
    native: bool,
    tile: int,
) -> None:
    """A VL Whole Slide Microscopy image: 256x256 JPEG baseline tiles, TILED_FULL."""
    if native and offsets is not None:
        raise click.UsageError("--offsets applies to JPEG tiles only, not to --native")
    started = time.perf_counter()
    path = _run(
        lambda: make_wsi(
            out,
            frames=frames,
            offsets=offsets or "bot",
            fragments_per_frame=fragments_per_frame,
            native=native,
            tile=tile,
            seed=seed,
            clean=clean,
            study_uid=study_uid,
            patient=patient,
        )
    )
    count = frames or (DEFAULT_NATIVE_FRAMES if native else DEFAULT_FRAMES)
    click.echo(
        f"wrote {path} ({count:,} frames, {path.stat().st_size / 1e6:.1f} MB) "
        f"in {time.perf_counter() - started:.1f} s"
    )


for _modality in ("CT", "MR"):
    synth.add_command(_series_command(_modality))
