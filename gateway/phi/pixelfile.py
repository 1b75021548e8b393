"""Frames in, masked frames out, for the encodings the Clean Pixel Data option can re-encode honestly.

- Native (uncompressed) pixel data: masked in place in the Pixel Data buffer, frame by frame.
- RLE Lossless: decoded one frame at a time and re-encoded with pydicom's own RLE encoder (lossless stays
  lossless).
- JPEG Baseline (8-bit, lossy): each frame decoded with Pillow and re-encoded with ``quality="keep"``, i.e.
  with the source's own quantisation tables and chroma subsampling, so the output keeps the source's quality
  (one more lossy generation, inside the masked boxes nothing is left to lose).

Anything else (JPEG-LS, JPEG 2000, JPEG lossless, 1-bit, deflate...) raises ``CannotClean``: the policy sends
it to review rather than storing it uncleaned or re-encoded differently. Memory: the file's Pixel Data as
stored (read once into a writable buffer, masked in place), one decoded frame, and the re-encoded frames of a
compressed file.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_data_element
from pydicom.pixels import iter_pixels
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from gateway.dicom.model import MAX_DECODED_PIXELS
from gateway.phi.pixels import Box, mask
from gateway.phi.scanner import DEFER_SIZE
from gateway.phi.textrules import deferred

PIXEL_DATA = 0x7FE00010
NATIVE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian})
SUPPORTED = NATIVE | {RLELossless, JPEGBaseline8Bit}


class CannotClean(Exception):
    """This file's pixels cannot be cleaned honestly (the message says why; never a value)."""


@dataclass
class PixelFile:
    """A read file and how to walk its frames."""

    path: Path
    dataset: Dataset
    syntax: UID
    frames: int
    rows: int
    columns: int
    samples: int
    photometric: str
    _buffer: bytearray | None = None
    _vr: str = "OW"

    @classmethod
    def open(cls, path: Path, max_frames: int) -> PixelFile:
        dataset = pydicom.dcmread(str(path), defer_size=DEFER_SIZE)
        syntax = UID(dataset.file_meta.TransferSyntaxUID)
        if "PixelData" not in dataset:
            raise CannotClean("no Pixel Data (Float/Double Float Pixel Data is not supported)")
        if syntax not in SUPPORTED:
            raise CannotClean(f"transfer syntax {syntax.name} cannot be re-encoded without changing its quality")
        bits = int(dataset.get("BitsAllocated", 0) or 0)
        if bits not in (8, 16, 32) or (syntax == JPEGBaseline8Bit and bits != 8):
            raise CannotClean(f"{bits}-bit pixels are not supported")
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if frames > max_frames:
            raise CannotClean(f"{frames} frames, more than [pixels].max_frames = {max_frames}")
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        if rows * columns > MAX_DECODED_PIXELS:  # a compressed frame can declare far more than its file holds
            raise CannotClean(f"a frame of {columns} x {rows} pixels, more than the {MAX_DECODED_PIXELS} decoded here")
        return cls(
            path,
            dataset,
            syntax,
            frames,
            rows,
            columns,
            int(dataset.get("SamplesPerPixel", 1) or 1),
            str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip(),
        )

    @property
    def decoded_photometric(self) -> str:
        """The colour space of ``read_frames`` output (Pillow gives JPEG frames as RGB)."""
        return "RGB" if self.syntax == JPEGBaseline8Bit and self.samples == 3 else self.photometric

    # -- native: a writable view of the whole Pixel Data, one frame at a time
    def _native(self) -> np.ndarray:
        ds = self.dataset
        bits = int(ds.BitsAllocated)
        kind = "i" if int(ds.get("PixelRepresentation", 0) or 0) else "u"
        order = ">" if self.syntax == ExplicitVRBigEndian else "<"
        dtype = np.dtype(f"{order}{kind}{bits // 8}")
        if self._buffer is None:
            self._vr = str(ds.get_item(PIXEL_DATA, keep_deferred=True).VR)  # ds["PixelData"] would load it
            self._buffer = self._read_native()  # masked in place, written back as bytes
        buffer = self._buffer
        count = self.frames * self.rows * self.columns * self.samples
        if len(buffer) < count * dtype.itemsize:
            raise CannotClean("Pixel Data is shorter than Rows x Columns x frames")
        flat = np.frombuffer(buffer, dtype=dtype, count=count)
        if self.samples > 1 and int(ds.get("PlanarConfiguration", 0) or 0) == 1:
            raise CannotClean("planar colour (PlanarConfiguration 1) is not supported")
        shape = (self.frames, self.rows, self.columns) + ((self.samples,) if self.samples > 1 else ())
        return flat.reshape(shape)

    def _read_native(self) -> bytearray:
        """The Pixel Data bytes, read once from the file into a writable buffer (no second copy)."""
        raw = deferred(self.dataset, PIXEL_DATA)
        if raw is None:
            return bytearray(self.dataset.PixelData)
        buffer = bytearray(int(raw.length))
        with self.path.open("rb") as source:
            source.seek(raw.value_tell)
            if source.readinto(buffer) != len(buffer):
                raise CannotClean("Pixel Data runs past the end of the file")
        return buffer

    def read_frames(self) -> Iterator[np.ndarray]:
        """Each frame decoded (read-only use: OCR)."""
        if self.syntax in NATIVE:
            yield from self._native()
        elif self.syntax == RLELossless:
            yield from iter_pixels(self.dataset, raw=True)
        else:
            for data in generate_frames(self.dataset.PixelData, number_of_frames=self.frames):
                with self._open_jpeg(data) as image:
                    yield np.asarray(image)

    def _stored_rgb(self, image: Image.Image) -> bool:
        """True when this JPEG frame holds R, G and B without a colour transform, as Photometric Interpretation RGB
        says (PS3.5 8.2.1; some devices write captures so): read and written as pydicom and viewers decode it, unless
        a JFIF marker (or an Adobe one asking for the transform) says the components are YCbCr."""
        return (
            self.samples == 3
            and self.photometric == "RGB"
            and "jfif" not in image.info
            and image.info.get("adobe_transform", 0) == 0
        )

    def _open_jpeg(self, data: bytes) -> Image.Image:
        """A JPEG frame as RGB (or grey). Without an Adobe marker Pillow takes three components for YCbCr and turned
        an RGB frame's grey into magenta: such a frame is read as stored (``draft("YCbCr")``: no conversion)."""
        image = Image.open(io.BytesIO(data))
        if self._stored_rgb(image) and "adobe_transform" not in image.info:
            image.draft("YCbCr", image.size)
            image.load()
            return Image.frombytes("RGB", image.size, image.tobytes())
        return image

    def write_masked(self, boxes: list[Box], dst: Path) -> None:
        """Mask ``boxes`` in every frame and save the dataset (header as it is now) to ``dst``."""
        ds = self.dataset
        if self.syntax in NATIVE:
            for frame in self._native():
                mask(frame, boxes, self.photometric)
            self._save_native(dst)
            return
        if self.syntax == RLELossless:
            bits = int(ds.BitsAllocated)
            if bits > 16:  # pydicom's RLE encoder writes 8- and 16-bit samples: review, never stored uncleaned
                raise CannotClean(f"{bits}-bit RLE frames cannot be re-encoded here")
            encoded = []
            for frame in iter_pixels(ds, raw=True):
                encoded.append(RLELosslessEncoder.encode(mask(frame.copy(), boxes, self.photometric), **_kwargs(ds)))
            ds.PixelData = encapsulate(encoded)
        else:
            ds.PixelData = encapsulate([self._jpeg(data, boxes) for data in self._jpeg_frames()])
            methods = [str(v) for v in (ds.get("LossyImageCompressionMethod") or [])]
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionMethod = methods + ["ISO_10918_1"] if methods else "ISO_10918_1"
        if self.syntax not in NATIVE:
            ds["PixelData"].VR = "OB"
        ds.save_as(dst, enforce_file_format=True)

    def _save_native(self, dst: Path) -> None:
        """Save with the masked buffer written straight to the file: pydicom's writer would copy a value twice
        (into a buffer, then out of it), tripling a cine's memory."""
        ds = self.dataset
        buffer = self._buffer or bytearray()
        tail = Dataset()
        for tag in [tag for tag in ds.keys() if tag > PIXEL_DATA]:
            tail[tag] = ds[tag]  # loads a deferred trailing value (small: large private ones were removed)
            del ds[tag]
        del ds[PIXEL_DATA]
        ds.save_as(dst, enforce_file_format=True)
        little, implicit = self.syntax.is_little_endian, self.syntax.is_implicit_VR
        end = "<" if little else ">"
        padded = len(buffer) + len(buffer) % 2
        with dst.open("ab") as raw:
            header = struct.pack(end + "HH", PIXEL_DATA >> 16, PIXEL_DATA & 0xFFFF)
            if implicit:
                header += struct.pack(end + "L", padded)
            else:
                header += self._vr.encode("ascii") + b"\0\0" + struct.pack(end + "L", padded)
            raw.write(header)
            raw.write(buffer)
            if padded != len(buffer):
                raw.write(b"\0")
            out = DicomFileLike(raw)
            out.is_little_endian, out.is_implicit_VR = little, implicit
            for tag in sorted(tail.keys()):
                write_data_element(out, tail[tag], ds.get("SpecificCharacterSet", "iso8859"))
        self._buffer = None

    def _jpeg_frames(self) -> list[bytes]:
        return list(generate_frames(self.dataset.PixelData, number_of_frames=self.frames))

    def _jpeg(self, data: bytes, boxes: list[Box]) -> bytes:
        with Image.open(io.BytesIO(data)) as source:
            source.load()
            rgb = self._stored_rgb(source)
            tables = getattr(source, "quantization", None)  # a JPEG frame always has them
            image = self._open_jpeg(data) if rgb else source
            draw = ImageDraw.Draw(image)
            # black as displayed: the brightest value of a MONOCHROME1 image is its black
            black = (0, 0, 0) if image.mode == "RGB" else 255 if self.photometric == "MONOCHROME1" else 0
            for box in boxes:
                draw.rectangle((box.left, box.top, box.left + box.width - 1, box.top + box.height - 1), fill=black)
            out = io.BytesIO()
            if rgb:
                # stored as RGB again (an Adobe marker, no transform: what Photometric Interpretation RGB says),
                # with the source's tables; RGB is never chroma-subsampled
                image.save(out, format="JPEG", qtables=tables, subsampling=0, keep_rgb=True)
            else:
                # the source's quantisation tables and subsampling: same quality, no silent up- or down-grade
                image.save(out, format="JPEG", quality="keep")
        return out.getvalue()


def _kwargs(ds: Dataset) -> dict[str, Any]:
    return {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "samples_per_pixel": int(ds.get("SamplesPerPixel", 1) or 1),
        "bits_allocated": int(ds.BitsAllocated),
        "bits_stored": int(ds.BitsStored),
        "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
        "photometric_interpretation": str(ds.PhotometricInterpretation),
        "number_of_frames": 1,
        # pydicom's encoder requires it for colour (an RGB RLE file, as DCMTK's dcmcrle and ultrasound devices
        # write it, failed with AttributeError); RLE keeps one segment per sample whatever its value
        "planar_configuration": int(ds.get("PlanarConfiguration", 0) or 0),
    }
