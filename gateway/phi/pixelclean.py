"""The Clean Pixel Data option on a de-identified file: find the text regions, and either report them (review)
or mask them in every frame and apply the PS3.15 consequences (clean).

Consequences of a clean: a new SOP Instance UID (derived with the key from the de-identified one, so it differs
from what a de-identification without pixel cleaning gives), Burned In Annotation NO, and code 113101 "Clean
Pixel Data Option" in the De-identification Method Code Sequence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

from gateway.phi.deidentify import earlier_methods, remap_uid
from gateway.phi.pixelfile import PixelFile
from gateway.phi.pixels import Box, PixelOptions, band_boxes, find_words, merge, ocr_image

CLEAN_PIXEL_CODE = ("113101", "Clean Pixel Data Option")


@dataclass(frozen=True)
class PixelResult:
    regions: list[Box]
    frames: int
    ocr_frames: int
    seconds: float
    sop_uid: str | None = None  # the new SOP Instance UID when the file was cleaned

    def to_dict(self) -> dict[str, object]:
        return {
            "regions": [box.to_dict() for box in self.regions],
            "frames": self.frames,
            "ocr_frames": self.ocr_frames,
        }


def find_regions(file: PixelFile, options: PixelOptions, terms: frozenset[str] | None) -> tuple[list[Box], int]:
    """Word boxes OCR finds in every ``ocr_stride``-th frame (and the last), plus the configured bands."""
    boxes = band_boxes(file.dataset, options, file.rows, file.columns)
    read = 0
    for index, frame in enumerate(file.read_frames()):
        if index % options.ocr_stride and index != file.frames - 1:
            continue
        boxes.extend(find_words(ocr_image(frame, file.decoded_photometric), options, terms))
        read += 1
    return merge(boxes, file.rows, file.columns), read


def _mark(dataset: Dataset, key: bytes) -> str:
    sop = remap_uid("clean-pixels/" + str(dataset.SOPInstanceUID), key)
    dataset.SOPInstanceUID = sop
    dataset.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    dataset.BurnedInAnnotation = "NO"
    codes = dataset.get("DeidentificationMethodCodeSequence") or []
    if not any(str(item.get("CodeValue", "")) == CLEAN_PIXEL_CODE[0] for item in codes):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = CLEAN_PIXEL_CODE[0], "DCM", CLEAN_PIXEL_CODE[1]
        codes.append(item)
        dataset.DeidentificationMethodCodeSequence = sorted(codes, key=lambda code: str(code.CodeValue))
    # one more value (the method is multi-valued, PS3.3 C.7.1.1: one value joined to a list was "['a', 'b']; c")
    methods = earlier_methods(dataset)
    dataset.DeidentificationMethod = [*methods, CLEAN_PIXEL_CODE[1]] if methods else CLEAN_PIXEL_CODE[1]
    return sop


def process(
    src: Path, dst: Path | None, options: PixelOptions, terms: frozenset[str] | None, key: bytes
) -> PixelResult:
    """Find the regions of ``src``; with ``dst``, also write the masked, marked file there.

    Raises ``CannotClean`` (send to review) or ``OcrUnavailable`` (refuse)."""
    started = time.perf_counter()
    file = PixelFile.open(src, options.max_frames)
    regions, read = find_regions(file, options, terms)
    sop = None
    if dst is not None:
        sop = _mark(file.dataset, key)
        file.write_masked(regions, dst)
    return PixelResult(regions, file.frames, read, time.perf_counter() - started, sop)
