"""Clean Pixel Data (PS3.15 Annex E): find burned-in text with Tesseract OCR, and the boxes to mask.

Tesseract is Debian's ``tesseract-ocr`` with ``tesseract-ocr-eng``, driven by ``pytesseract`` (a thin,
maintained wrapper around the binary: no native build, and the model is the OS package's, so nothing is
downloaded at run time). ``check_ocr()`` runs at start-up when a policy needs it.

Regions are reported as boxes (left, top, width, height, source), never with the text read: the text
is the PHI. Every box is applied to every frame: devices draw text at fixed places, and a box read in one frame
covers the same overlay in frames where OCR missed it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

import numpy as np
import pytesseract
from PIL import Image
from pydicom.dataset import Dataset

from gateway.errors import ConfigError
from gateway.phi.textrules import text_values

PixelAction = Literal["clean", "review", "refuse"]
MatchMode = Literal["all", "identifiers"]
# Automatic page segmentation (psm 3): sparse-text mode (11) reads hundreds of "words" in speckle and is 20x
# slower. LSTM engine, the OS package's model.
OCR_CONFIG = "--psm 3 --oem 1"
# One OpenMP thread per tesseract run (an operator may override it): a request thread runs one OCR at a time,
# and on 2 shared cores Tesseract's own threads made each frame ~1.8x slower (0.35 s vs 0.20 s per 640x480 frame).
os.environ.setdefault("OMP_THREAD_LIMIT", "1")
MIN_CONFIDENCE = 10.0  # Tesseract's word confidence (0-100); below this a "word" is usually speckle
MIN_TERM = 3
_NOT_ALNUM = re.compile(r"[^0-9A-Z]+")


class OcrUnavailable(RuntimeError):
    """Tesseract (or its English model) is not installed."""


def check_ocr() -> None:
    """Raise ``ConfigError`` unless the tesseract binary and its English model are installed."""
    if shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
        raise ConfigError(
            "DICOMGW_PHI_POLICY",
            'pixels = "clean" or "review" needs Tesseract OCR: install the tesseract-ocr and tesseract-ocr-eng '
            "packages",
        )
    try:
        languages = pytesseract.get_languages(config="")
    except (pytesseract.TesseractError, OSError, subprocess.SubprocessError):
        languages = []
    if "eng" not in languages:
        raise ConfigError("DICOMGW_PHI_POLICY", "Tesseract has no English model: install the tesseract-ocr-eng package")


@dataclass(frozen=True)
class Band:
    """A fixed text area of a device layout, masked even when OCR finds nothing. Ints are pixels, floats
    (0..1) fractions of the image height (top, height) or width (left, width)."""

    modality: str = "*"
    manufacturer: str = "*"
    model: str = "*"
    top: float = 0
    height: float = 0
    left: float = 0
    width: float = 1.0

    def applies(self, dataset: Dataset) -> bool:
        return all(
            fnmatchcase(str(dataset.get(keyword, "") or "").strip(), pattern)
            for keyword, pattern in (
                ("Modality", self.modality),
                ("Manufacturer", self.manufacturer),
                ("ManufacturerModelName", self.model),
            )
        )

    def box(self, rows: int, columns: int) -> Box:
        def size(value: float, full: int) -> int:
            return round(value * full) if isinstance(value, float) else int(value)

        left, top = size(self.left, columns), size(self.top, rows)
        return Box(left, top, size(self.width, columns), size(self.height, rows), "band").clip(rows, columns)


@dataclass(frozen=True)
class PixelOptions:
    """The policy's ``[pixels]`` table."""

    margin: int = 4  # pixels added around each word box
    bands: tuple[Band, ...] = ()
    ocr_stride: int = 1  # OCR every Nth frame (1 = every frame); boxes apply to all frames
    max_frames: int = 1000  # more frames than this: review, not clean
    upscale: int = 1  # OCR on an image this many times larger: fonts under ~12 px read far better at 2


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    width: int
    height: int
    source: str  # "ocr" or "band"

    def clip(self, rows: int, columns: int) -> Box:
        left, top = max(0, self.left), max(0, self.top)
        right, bottom = min(columns, self.left + self.width), min(rows, self.top + self.height)
        return Box(left, top, max(0, right - left), max(0, bottom - top), self.source)

    def to_dict(self) -> dict[str, Any]:
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height, "source": self.source}


# Letters NFKD does not decompose into a base letter and its accent (after upper-casing; ß is already SS)
_FOLD = str.maketrans({"Ø": "O", "Đ": "D", "Ł": "L", "Þ": "TH", "Æ": "AE", "Œ": "OE", "Ħ": "H"})


def _normal(text: str) -> str:
    """Upper-case A-Z and 0-9 only, accents folded to their base letter: a name `Müller^Hans` is the term MULLER,
    and OCR's English model reads the burned-in MÜLLER as MULLER (or MÜLLER). Dropping the accented letter instead
    made the term MLLER, which no word matched: the name stayed readable under `pixels_match = "identifiers"`."""
    decomposed = unicodedata.normalize("NFKD", text.upper().translate(_FOLD))
    return _NOT_ALNUM.sub("", "".join(c for c in decomposed if not unicodedata.combining(c)))


MONTHS = (
    "JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE",
    "JULY", "AUGUST", "SEPTEMBER", "OCTOBER", "NOVEMBER", "DECEMBER",
)  # fmt: skip


def identifier_terms(dataset: Dataset) -> frozenset[str]:
    """Normalised (A-Z0-9 only) name parts, IDs and dates of the patient and visit, for ``match =
    "identifiers"``: read from the *original* file, before the header is de-identified."""
    terms: set[str] = set()
    for keyword in ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"):
        for value in text_values(dataset.get(keyword)):
            terms.update(_normal(part) for part in re.split(r"[\^=\s,]+", value))
    for keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID"):
        terms.update(_normal(v) for v in text_values(dataset.get(keyword)))
    for item in dataset.get("OtherPatientIDsSequence") or []:
        terms.add(_normal(str(item.get("PatientID", "") or "")))
    for keyword in ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        for value in text_values(dataset.get(keyword)):
            terms.update(date_terms(_normal(value)))
    return frozenset(term for term in terms if len(term) >= MIN_TERM)


def date_terms(day: str) -> set[str]:
    """A date (YYYYMMDD) as a screen shows it, separators dropped: YYYYMMDD, DDMMYYYY and MMDDYYYY, with and without
    leading zeros (``5/2/1961``: 521961), and with the month's English name or its abbreviation (``05-Feb-1961``,
    ``1961-Feb-05``, ``Feb-05-1961``), each read as one word."""
    if len(day) != 8:
        return set()
    year, month, of_month = day[:4], day[4:6], day[6:]
    terms = {day, of_month + month + year, month + of_month + year}
    if not day.isdigit() or not 1 <= int(month) <= 12:
        return terms  # no month to name: the value's own digits in the three orders
    days, months = {of_month, of_month.lstrip("0")}, {month, month.lstrip("0")}
    for d in days:
        terms.add(year + month + d)
        for m in months:
            terms.update((d + m + year, m + d + year))
        for name in (MONTHS[int(month) - 1], MONTHS[int(month) - 1][:3]):
            terms.update((d + name + year, name + d + year, year + name + d))
    return terms


def _matches(word: str, terms: frozenset[str]) -> bool:
    text = _normal(word)
    return len(text) >= MIN_TERM and any(term in text or (len(text) >= 4 and text in term) for term in terms)


def ocr_image(frame: np.ndarray, photometric: str) -> Image.Image:
    """An 8-bit grey image of a frame for OCR (colour: luminance; more than 8 bits: min-max scaled)."""
    data = frame
    if data.ndim == 3:
        data = data[..., 0] if photometric.startswith("YBR") else data.mean(axis=2)
    low, high = float(data.min()), float(data.max())
    scaled = (data - low) * (255.0 / (high - low)) if high > low else np.zeros_like(data, dtype=np.float64)
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return Image.fromarray(np.asarray(scaled, dtype=np.uint8), mode="L")


def find_words(image: Image.Image, options: PixelOptions, terms: frozenset[str] | None) -> list[Box]:
    """Word boxes Tesseract reads in ``image`` (only those matching ``terms`` when given), with the margin."""
    scale = max(1, options.upscale)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)
    try:
        data = pytesseract.image_to_data(image, config=OCR_CONFIG, output_type=pytesseract.Output.DICT)
    except (pytesseract.TesseractNotFoundError, OSError) as exc:
        raise OcrUnavailable("tesseract is not installed") from exc
    boxes = []
    margin = options.margin
    for index, word in enumerate(data["text"]):
        if not any(c.isalnum() for c in word) or float(data["conf"][index]) < MIN_CONFIDENCE:
            continue
        if terms is not None and not _matches(word, terms):
            continue
        left, top = data["left"][index] // scale, data["top"][index] // scale
        width, height = -(-data["width"][index] // scale), -(-data["height"][index] // scale)
        boxes.append(Box(left - margin, top - margin, width + 2 * margin, height + 2 * margin, "ocr"))
    return boxes


def band_boxes(dataset: Dataset, options: PixelOptions, rows: int, columns: int) -> list[Box]:
    return [band.box(rows, columns) for band in options.bands if band.applies(dataset)]


def merge(boxes: Iterable[Box], rows: int, columns: int) -> list[Box]:
    """Clipped, deduplicated, in a stable order (what the quarantine report lists)."""
    unique = {box.clip(rows, columns) for box in boxes}
    return sorted((b for b in unique if b.width and b.height), key=lambda b: (b.top, b.left, b.source))


def fill_value(frame: np.ndarray, photometric: str) -> Any:
    """What the masked pixels become: black as displayed."""
    if photometric == "MONOCHROME1":
        return frame.max()
    if photometric in ("YBR_FULL", "YBR_FULL_422") and frame.ndim == 3:
        return np.array([0, 128, 128], dtype=frame.dtype)
    return frame.min() if frame.ndim == 2 else 0


def mask(frame: np.ndarray, boxes: Iterable[Box], photometric: str) -> np.ndarray:
    """Fill every box in ``frame`` (a writable array, changed in place and returned)."""
    value = fill_value(frame, photometric)
    for box in boxes:
        frame[box.top : box.top + box.height, box.left : box.left + box.width] = value
    return frame
