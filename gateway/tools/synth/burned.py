"""Ultrasound cine and secondary captures with the patient's name, ID and dates burned into the pixels.

What the Clean Pixel Data option (docs/phi.md) must find: text rendered with Pillow's built-in font (no font
file, no network) in a header band, as ultrasound devices write it, and one line inside the image. The header
attributes carry the same fake PHI as the CT/MR series (``attributes._common``); Burned In Annotation is YES.
``planted(seed)`` lists the strings rendered into the files of a seed, ``text_boxes`` where they are.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from gateway.tools.synth.attributes import _common, _file_meta, write_whole
from gateway.tools.synth.identity import _Identity, _identity, _study_uid, _uid

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
FONT_SIZE = 22
LINE = 30  # pixels from one text line to the next
MARGIN = 8


def _dashed(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:]}"


def planted_lines(ident: _Identity) -> list[str]:
    """The lines written into the pixels: header band (name, ID), then birth and study dates."""
    return [
        f"{ident.family.upper()} {ident.given.upper()}",
        f"ID {ident.patient_id}",
        f"DOB {_dashed(ident.birth_date)}",
        f"STUDY {_dashed(ident.study_date)}",
    ]


def planted_strings(ident: _Identity) -> list[str]:
    """What OCR of a clean output must not find: family name, patient ID, birth date, study date."""
    return [ident.family.upper(), ident.patient_id, _dashed(ident.birth_date), _dashed(ident.study_date)]


def text_boxes(rows: int, columns: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each planted line: three in the header band, one near the bottom."""
    boxes = [(MARGIN, MARGIN + LINE * i, columns // 2 + 40, MARGIN + LINE * i + LINE) for i in range(3)]
    boxes.append((MARGIN, rows - LINE - MARGIN, columns // 2 + 40, rows - MARGIN))
    return boxes


def _draw_text(image: Image.Image, lines: list[str]) -> None:
    font = ImageFont.load_default(size=FONT_SIZE)
    draw = ImageDraw.Draw(image)
    white = 255 if image.mode == "L" else (255, 255, 255)
    for line, (left, top, _, _) in zip(lines, text_boxes(image.height, image.width), strict=True):
        draw.text((left, top + 2), line, fill=white, font=font)


def _speckle(rows: int, columns: int, seed: int) -> np.ndarray:
    """A sector of speckle on black, as an ultrasound B-mode frame looks (8-bit)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows * 0.05, columns / 2
    radius = np.hypot(y - cy, x - cx)
    angle = np.abs(np.arctan2(x - cx, y - cy))
    sector = (radius > rows * 0.25) & (radius < rows - 2 * LINE) & (angle < 0.6)
    values = rng.rayleigh(45.0, (rows, columns)).clip(0, 255).astype(np.uint8)
    # blurred: speckle grains span a few pixels, as in a B-mode image
    smooth = np.asarray(Image.fromarray(values, mode="L").filter(ImageFilter.GaussianBlur(1.2)))
    return np.where(sector, smooth, 0).astype(np.uint8)


def _frames(ident: _Identity, rows: int, columns: int, frames: int, seed: int, color: bool) -> Iterator[Image.Image]:
    base = _speckle(rows, columns, seed)
    lines = planted_lines(ident)
    for index in range(frames):
        # The speckle moves a little per frame (cheap: a roll), the text stays where the device put it.
        image = Image.fromarray(np.roll(base, index * 3, axis=1), mode="L")
        if color:
            image = image.convert("RGB")
        _draw_text(image, lines)
        yield image


def _image_pixel(ds: Dataset, rows: int, columns: int, color: bool, jpeg: bool) -> None:
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = ("YBR_FULL_422" if jpeg else "RGB") if color else "MONOCHROME2"
    if color:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.BurnedInAnnotation = "YES"


def _write(
    out: Path,
    kind: str,
    seed: int,
    *,
    frames: int,
    rows: int,
    columns: int,
    color: bool,
    jpeg: bool,
    patient: str | None,
    study_uid: str | None,
) -> Path:
    if frames < 1 or rows < 8 * LINE or columns < 320:
        raise ValueError(f"need at least 1 frame and {8 * LINE}x320 pixels for the burned-in text")
    ident = _identity(seed, patient)
    us = kind == "US"
    study = _study_uid(seed, study_uid, kind)
    series = str(_uid(seed, study, kind, "series"))
    sop = str(_uid(seed, series, kind, "0"))
    sop_class = US_MULTIFRAME if us else SECONDARY_CAPTURE
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop, JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian)
    _common(ds, ident, clean=False, modality="US" if us else "OT", description="US ABDOMEN" if us else "SCREEN")
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if us else ["DERIVED", "SECONDARY"]
    # Type 2C in General Series and General Image (PS3.3 C.7.3.1, C.7.6.1): Laterality is needed unless the body
    # part is known to be unpaired, Patient Orientation (empty: unknown) unless the plane is in the header
    ds.BodyPartExamined = "ABDOMEN"  # both pictures are an abdominal B-mode sector
    ds.PatientOrientation = ""
    if not us:
        ds.ConversionType = "WSD"
    _image_pixel(ds, rows, columns, color, jpeg)
    if us:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = "33.3"
    images = _frames(ident, rows, columns, frames if us else 1, seed, color)
    if jpeg:
        encoded = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90, subsampling=2 if color else 0)
            encoded.append(buffer.getvalue())
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = b"".join(image.tobytes() for image in images)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind.lower()}-{seed}.dcm"
    write_whole(path, ds)
    return path


def make_us(
    out: Path,
    *,
    frames: int = 30,
    rows: int = 480,
    columns: int = 640,
    color: bool = False,
    jpeg: bool = False,
    seed: int = 0,
    patient: str | None = None,
    study_uid: str | None = None,
) -> Path:
    """A multi-frame ultrasound cine with burned-in name, ID and dates (native, or JPEG baseline frames)."""
    return _write(
        out,
        "US",
        seed,
        frames=frames,
        rows=rows,
        columns=columns,
        color=color,
        jpeg=jpeg,
        patient=patient,
        study_uid=study_uid,
    )


def make_sc(
    out: Path,
    *,
    rows: int = 480,
    columns: int = 640,
    color: bool = True,
    jpeg: bool = False,
    seed: int = 0,
    patient: str | None = None,
    study_uid: str | None = None,
) -> Path:
    """A secondary capture (a screenshot) with burned-in name, ID and dates."""
    return _write(
        out,
        "SC",
        seed,
        frames=1,
        rows=rows,
        columns=columns,
        color=color,
        jpeg=jpeg,
        patient=patient,
        study_uid=study_uid,
    )


def planted(seed: int = 0, patient: str | None = None) -> list[str]:
    """The strings ``make_us``/``make_sc`` with this seed rendered into the pixels."""
    return planted_strings(_identity(seed, patient))
