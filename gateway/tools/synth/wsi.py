"""The whole-slide writer: one TILED_FULL level with a filled, empty or extended offset table, streamed
fragment by fragment (the Pixel Data value is never built in memory)."""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from PIL import ImageCms
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from gateway.tools.synth.attributes import _code, _common, _ds, _file_meta, _pname_item, _trailing_phi
from gateway.tools.synth.identity import _Identity, _identity, _study_uid, _uid
from gateway.tools.synth.tiles import (
    _COM_LEN,
    DEFAULT_FRAMES,
    DEFAULT_NATIVE_FRAMES,
    _grid,
    _jpeg_tiles,
    _layout,
    wsi_tile,
)

WSI_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"

Offsets = Literal["bot", "empty", "eot"]


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
