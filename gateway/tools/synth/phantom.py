"""CT and MR series: a 512x512 phantom (body, fat, bone ring, organs) that changes slice by slice."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from gateway.tools.synth.attributes import _common, _ds, _file_meta, _trailing_phi, write_whole
from gateway.tools.synth.identity import _identity, _study_uid, _uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
DEFAULT_SLICES = {"CT": 200, "MR": 60}

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


def _ct_noise(rng: np.random.Generator, rows: int, columns: int, sigma: float) -> np.ndarray:
    """CT noise as filtered back projection leaves it: not white but correlated over a few pixels (the
    reconstruction kernel's noise power spectrum falls off at high frequencies), ``sigma`` HU in the image. White
    noise made every synthetic slice far less compressible than a real one."""
    white = rng.standard_normal((rows + 4, columns + 4), dtype=np.float32)
    kernel = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32)  # binomial, ~1 pixel standard deviation
    smooth = np.apply_along_axis(np.convolve, 0, white, kernel, "valid")
    smooth = np.apply_along_axis(np.convolve, 1, smooth, kernel, "valid")
    return smooth * np.float32(sigma / float(np.sqrt((kernel**2).sum()) ** 2))


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
    yy, xx = np.mgrid[0:rows, 0:columns]
    fov = (yy - (rows - 1) / 2) ** 2 + (xx - (columns - 1) / 2) ** 2 <= (min(rows, columns) / 2) ** 2
    table = _CT_HU if ct else _MR_SIGNAL
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(slices):
        t = 1.0 - index / (slices - 1) if slices > 1 else 0.5
        if ct:
            signal = table[_phantom(painter, t)] + _ct_noise(noise, rows, columns, 12.0)
            stored = np.where(fov, signal + 1024.0, 0.0)  # outside the reconstruction circle: padding
        else:
            signal = table[_phantom(painter, t)] + noise.standard_normal((rows, columns), dtype=np.float32) * 25.0
            stored = np.abs(signal)  # MR magnitude noise is never negative
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
            ds.PixelPaddingValue = 0
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
        write_whole(path, ds)
        paths.append(path)
    return paths

