"""Derived objects written by highdicom (PyPI ``highdicom``, what imaging-AI tools write for OHIF, Slim and dcm4chee):
encodings our synthetic CT and WSI never carry, made with highdicom's own API from `dicom-gateway synth` sources.

- binary Segmentations (Bits Allocated 1): one of 33 x 35 frames, whose frames are not byte-aligned in the native
  Pixel Data (1,155 bits each), and a TILED_FULL one on a whole-slide image, whose 16 x 16 frames are;
- the binary one again in Implicit VR Little Endian, and a LABELMAP Segmentation with a palette (PALETTE COLOR,
  3 entries of 8 bits: the LUT data is padded to an even length);
- a fractional Segmentation, native and in JPEG-LS lossless, once with an Extended Offset Table (highdicom's
  compressed SEG: its binary JPEG 2000 needs pylibjpeg-openjpeg, which nothing here installs);
- Parametric Maps with Float Pixel Data (7FE0,0008) and Double Float Pixel Data (7FE0,0009);
- a Comprehensive 3D SR holding a TID 1500 measurement report (no pixel data, nested sequences, references).

highdicom 0.28 writes no VL Whole Slide Microscopy image itself (no ``hd.sm``, its legacy conversion is CT, MR and
PET only): the TILED_FULL Segmentation of the synthetic slide is the whole-slide object here.

Each is stored through STOW-RS on the real stack and checked against PS3.18 and what pydicom and highdicom decode
from the same file: the instance byte for byte, the metadata (pydicom's JSON with the bulk values each BulkDataURI
answers), every frame alone and in frame lists (a 1-bit frame starts on a byte boundary: PS3.5 8.1.1, README),
rendered and thumbnail, and QIDO.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pack_bits, unpack_bits
from pydicom.sr.codedict import codes

from gateway.dicom.index import NATIVE_SYNTAXES, frame_media_type
from gateway.dicom.walker import quiet_validation
from gateway.tools.synth import make_series, make_wsi
from tests.e2e.conftest import BACKENDS
from tests.e2e.harness import RunningStack, stack_holding
from tests.e2e.test_compressed_render import url
from tests.e2e.test_dicom_xml import NS, assert_as_dcmtk_reads, flatten
from tests.e2e.test_real_files import bulkdata_uris, get, inline, multipart_parts, pydicom_json, value_at

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
OCTETS = "application/octet-stream"
MULTIPART = "multipart/related; type=application/octet-stream; transfer-syntax=*"
IMAGES = [
    "seg-binary",
    "seg-binary-implicit",
    "seg-fractional",
    "seg-jpegls",
    "seg-jpegls-eot",
    "seg-labelmap",
    "seg-tiled-full",
    "pm-float",
    "pm-double",
]
ALL = [*IMAGES, "sr-tid1500"]


def _equipment() -> dict[str, Any]:
    return {
        "series_instance_uid": hd.UID(),
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": "dicom-gateway tests",
        "manufacturer_model_name": "highdicom",
        "software_versions": hd.__version__,
        "device_serial_number": "1",
    }


def _segments(count: int) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name="test", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"segment {number}",
            segmented_property_category=codes.cid7150.Tissue,
            segmented_property_type=codes.cid7166.ConnectiveTissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number in range(1, count + 1)
    ]


def _segmentation(sources: list[pydicom.Dataset], mask: np.ndarray, kind: str, number: int, **options: Any) -> Any:
    """``mask``: one plane per segment on the last axis, or (a label map) segment numbers as values."""
    segments = _segments(mask.shape[-1] if mask.ndim == 4 else max(int(mask.max()), 1))
    return hd.seg.Segmentation(
        sources, mask, kind, segments, series_number=number, **_equipment(), **options
    )


def _parametric_map(sources: list[pydicom.Dataset], values: np.ndarray, number: int) -> Any:
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="value",
        lut_explanation="test values",
        unit=codes.UCUM.NoUnits,
        value_range=(float(values.min()), float(values.max())),
        intercept=0,
        slope=1,
    )
    voi = hd.VOILUTTransformation(window_center=0.0, window_width=400.0)
    return hd.pm.ParametricMap(
        sources,
        values,
        series_number=number,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[voi],
        **_equipment(),
    )


def _measurement_report(sources: list[pydicom.Dataset]) -> Any:
    """TID 1500 with one planar ROI (a polyline on the first slice) and one 3D point, each with a measurement."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="model"),
    )
    context = hd.sr.ObservationContext(observer_device_context=observer)
    polyline = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([[2.0, 2.0], [20.0, 2.0], [20.0, 20.0], [2.0, 2.0]]),
        source_image=hd.sr.SourceImageForRegion.from_source_image(sources[0]),
    )
    point = hd.sr.ImageRegion3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([[1.5, 2.5, 0.0]]),
        frame_of_reference_uid=sources[0].FrameOfReferenceUID,
    )
    groups = [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"finding {n}"),
            referenced_region=region,
            measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=162.5 + n, unit=codes.UCUM.SquareMillimeter)],
        )
        for n, region in enumerate((polyline, point))
    ]
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=sources,
        content=report,
        series_number=40,
        **{k: v for k, v in _equipment().items() if k not in ("manufacturer_model_name", "software_versions",
                                                                  "device_serial_number")},
    )


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The highdicom objects, by name, written with ``save_as`` as highdicom's users do."""
    base = tmp_path_factory.mktemp("highdicom")
    ct_files = make_series(base / "ct", modality="CT", slices=3, rows=33, columns=35, seed=41, clean=True)
    ct = [pydicom.dcmread(p) for p in ct_files]
    wsi = pydicom.dcmread(make_wsi(base / "wsi", frames=12, native=True, tile=16, seed=42, clean=True))
    shape = (len(ct), int(ct[0].Rows), int(ct[0].Columns))
    mask = np.zeros((*shape, 2), dtype=bool)
    mask[:, 3:25, 4:30, 0] = True
    mask[:, 10:32, 1:12, 1] = True
    mask[1, 0, 0, 0] = mask[2, 32, 34, 1] = True  # first and last bits of a frame
    labels = np.where(mask[..., 1], 2, np.where(mask[..., 0], 1, 0)).astype(np.uint8)  # segment 2 over 1
    fractional = np.zeros((*shape, 1), dtype=np.float32)
    fractional[:, 2:31, 3:32, 0] = np.linspace(0.0, 1.0, 29 * 29, dtype=np.float32).reshape(29, 29)
    values = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) * 0.37 - 150.25
    slide = np.zeros((1, int(wsi.TotalPixelMatrixRows), int(wsi.TotalPixelMatrixColumns), 1), dtype=bool)
    slide[0, 5:40, 7:50, 0] = True
    made = {
        "seg-binary": _segmentation(ct, mask, "BINARY", 10),
        "seg-fractional": _segmentation(ct, fractional, "FRACTIONAL", 11),
        "seg-jpegls": _segmentation(ct, fractional, "FRACTIONAL", 12, transfer_syntax_uid=pydicom.uid.JPEGLSLossless),
        "seg-jpegls-eot": _segmentation(
            ct, fractional, "FRACTIONAL", 14, transfer_syntax_uid=pydicom.uid.JPEGLSLossless,
            use_extended_offset_table=True,
        ),
        "seg-binary-implicit": _segmentation(
            ct, mask, "BINARY", 15, transfer_syntax_uid=pydicom.uid.ImplicitVRLittleEndian
        ),
        "seg-labelmap": _segmentation(
            ct, labels, "LABELMAP", 16,
            palette_color_lut_transformation=hd.PaletteColorLUTTransformation.from_colors(["black", "red", "blue"]),
        ),
        "seg-tiled-full": _segmentation(
            [wsi], slide, "BINARY", 13, tile_pixel_array=True, dimension_organization_type="TILED_FULL",
            omit_empty_frames=False,
        ),
        "pm-float": _parametric_map(ct, values.astype(np.float32), 20),
        "pm-double": _parametric_map(ct, values, 21),
        "sr-tid1500": _measurement_report(ct),
    }
    paths = {}
    for name, dataset in made.items():
        paths[name] = base / f"{name}.dcm"
        dataset.save_as(paths[name])
    return paths


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, objects: dict[str, Path]
) -> Iterator[RunningStack]:
    moto = request.getfixturevalue("moto_server") if request.param == "s3" else None
    var = tmp_path_factory.mktemp(f"highdicom-{request.param}")
    with stack_holding(var, request.param, moto, list(objects.values())) as running:
        yield running


def test_the_objects_carry_the_encodings_they_are_made_for(objects: dict[str, Path]) -> None:
    """What each test below relies on, as pydicom reads the files."""
    read = {name: pydicom.dcmread(path) for name, path in objects.items()}
    binary = read["seg-binary"]
    assert (binary.BitsAllocated, binary.NumberOfFrames) == (1, 6)
    assert (binary.Rows * binary.Columns) % 8 != 0  # frames 2..6 start inside a byte
    tiled = read["seg-tiled-full"]
    assert (tiled.BitsAllocated, tiled.DimensionOrganizationType) == (1, "TILED_FULL")
    assert (tiled.Rows * tiled.Columns) % 8 == 0  # each frame a whole number of bytes
    assert read["seg-fractional"].BitsAllocated == 8
    assert read["seg-jpegls"].file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    assert "ExtendedOffsetTable" in read["seg-jpegls-eot"]
    implicit = read["seg-binary-implicit"]
    assert (implicit.file_meta.TransferSyntaxUID, implicit.BitsAllocated) == (pydicom.uid.ImplicitVRLittleEndian, 1)
    labelmap = read["seg-labelmap"]
    assert (labelmap.SegmentationType, labelmap.PhotometricInterpretation) == ("LABELMAP", "PALETTE COLOR")
    assert "FloatPixelData" in read["pm-float"] and "DoubleFloatPixelData" in read["pm-double"]
    assert not any(keyword in read["sr-tid1500"] for keyword in PIXEL_KEYWORDS)


def expected_frames(ds: pydicom.Dataset) -> list[bytes]:
    """Frame n as PS3.18 8.7.3 sends it: a compressed frame's codestream, native frames as little-endian bytes, and
    a 1-bit frame as the pixels pydicom decodes, packed from the first bit of a byte (PS3.5 8.1.1, README)."""
    count = int(ds.get("NumberOfFrames") or 1)
    if str(ds.file_meta.TransferSyntaxUID) not in NATIVE_SYNTAXES:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    if ds.BitsAllocated == 1:
        return [pack_bits(frame.ravel(), pad=False) for frame in ds.pixel_array.reshape(count, -1)]
    keyword = next(k for k in PIXEL_KEYWORDS if k in ds)
    value = ds[keyword].value
    size = len(value) // count if keyword != "PixelData" else int(ds.Rows) * int(ds.Columns) * ds.BitsAllocated // 8
    return [value[n * size : (n + 1) * size] for n in range(count)]


@pytest.mark.parametrize("name", ALL)
def test_a_highdicom_object_is_stored_byte_identical_and_described_as_pydicom_reads_it(
    stack: RunningStack, objects: dict[str, Path], name: str
) -> None:
    """The instance byte for byte, its metadata pydicom's JSON (each BulkDataURI, Float and Double Float Pixel Data
    included, answering the value's bytes), and QIDO finds it at every level."""
    path = objects[name]
    ds = pydicom.dcmread(path)
    address = url(stack, path)
    whole = get(stack, address, "application/dicom; transfer-syntax=*")
    assert whole.status_code == 200, whole.text[:200]
    assert whole.content == path.read_bytes()
    answer = get(stack, f"{address}/metadata", "application/dicom+json")
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/dicom+json")
    [metadata] = answer.json()
    fetched = {}
    for element, uri in bulkdata_uris(metadata):
        assert uri == f"{address}/bulkdata/{element}"
        if element == "7FE00010" and str(ds.file_meta.TransferSyntaxUID) not in NATIVE_SYNTAXES:
            fetched[element] = value_at(ds, element)  # its bulkdata is its frames, checked below
            continue
        bulk = get(stack, uri, OCTETS)
        assert (bulk.status_code, bulk.headers["Content-Type"].split(";")[0]) == (200, OCTETS), element
        assert bulk.content == value_at(ds, element), element
        fetched[element] = bulk.content
    pixels = [k for k, tag in zip(PIXEL_KEYWORDS, ("7FE00010", "7FE00008", "7FE00009"), strict=True) if tag in fetched]
    assert pixels == [k for k in PIXEL_KEYWORDS if k in ds]  # the pixel data of each kind is a BulkDataURI
    with quiet_validation():
        assert inline(metadata, fetched) == pydicom_json(ds.to_json_dict())
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    for level, query in (
        ("studies", f"StudyInstanceUID={study}"),
        (f"studies/{study}/series", f"SeriesInstanceUID={series}"),
        (f"studies/{study}/series/{series}/instances", f"SOPInstanceUID={sop}"),
    ):
        found = get(stack, f"{stack.url}/dicomweb/{level}?{query}", "application/dicom+json")
        assert found.status_code == 200, (level, found.text[:200])
        assert len(found.json()) == 1, level
    [attrs] = get(
        stack, f"{stack.url}/dicomweb/studies/{study}/instances?SOPInstanceUID={sop}", "application/dicom+json"
    ).json()
    assert attrs["00080016"]["Value"] == [str(ds.SOPClassUID)]


@pytest.mark.parametrize("name", IMAGES)
def test_every_frame_of_a_highdicom_object_is_what_pydicom_decodes(
    stack: RunningStack, objects: dict[str, Path], name: str
) -> None:
    """Each frame alone and in frame lists (in order, reversed, repeated), single part and multipart; a 1-bit
    frame decodes to that frame's mask and float frames are exact."""
    path = objects[name]
    ds = pydicom.dcmread(path)
    ts = str(ds.file_meta.TransferSyntaxUID)
    address = url(stack, path)
    frames = expected_frames(ds)
    native = ts in NATIVE_SYNTAXES
    single = OCTETS if native else f"{frame_media_type(ts)}; transfer-syntax={ts}"
    for number, frame in enumerate(frames, 1):
        answer = get(stack, f"{address}/frames/{number}", single)
        assert answer.status_code == 200, (number, answer.text[:200])
        assert answer.headers["Content-Type"].split(";")[0] == single.split(";")[0]
        assert answer.content == frame, f"frame {number}"
    numbers = [*range(1, len(frames) + 1)]
    # a single part honours one Range (a progressive reader's first bytes), re-packed frames too
    last = frames[-1]
    headers = {**stack.api_headers, "Accept": single, "Range": "bytes=1-"}
    ranged = requests.get(f"{address}/frames/{len(frames)}", headers=headers, timeout=60)
    assert (ranged.status_code, ranged.headers["Content-Range"]) == (206, f"bytes 1-{len(last) - 1}/{len(last)}")
    assert ranged.content == last[1:]
    for listed in (numbers, numbers[::-1], [numbers[-1], 1, numbers[-1]]):
        answer = get(stack, f"{address}/frames/{','.join(map(str, listed))}", MULTIPART)
        assert answer.status_code == 200, (listed, answer.text[:200])
        assert [body for _, body in multipart_parts(answer)] == [frames[n - 1] for n in listed], listed
    if ds.BitsAllocated == 1 and native:
        # what a client decodes from the bytes: frame n's mask, as pydicom and highdicom read it from the file
        bits = int(ds.Rows) * int(ds.Columns)
        masks = ds.pixel_array.reshape(len(frames), int(ds.Rows), int(ds.Columns))
        segmentation = hd.seg.segread(path)
        for number in numbers:
            answer = get(stack, f"{address}/frames/{number}", OCTETS)
            decoded = unpack_bits(answer.content)[:bits].reshape(int(ds.Rows), int(ds.Columns))
            assert np.array_equal(decoded, masks[number - 1]), f"frame {number}"
            assert np.array_equal(decoded, segmentation.get_stored_frame(number)), f"frame {number}"
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        dtype = "<f4" if "FloatPixelData" in ds else "<f8"
        for number in numbers:
            answer = get(stack, f"{address}/frames/{number}", OCTETS)
            values = np.frombuffer(answer.content, dtype).reshape(int(ds.Rows), int(ds.Columns))
            assert np.array_equal(values, ds.pixel_array[number - 1]), f"frame {number}"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("resource", ["rendered", "thumbnail"])
def test_rendered_and_thumbnail_of_a_highdicom_object_are_an_image_or_a_json_406(
    stack: RunningStack, objects: dict[str, Path], name: str, resource: str
) -> None:
    """An image of the object's first frame; for the report, whose rendering is text, a JSON 406 for an image, and
    the drawing of a page as its thumbnail (README, rendered): never a 5xx."""
    address = url(stack, objects[name])
    answer = get(stack, f"{address}/{resource}", "image/png")
    if name == "sr-tid1500" and resource == "rendered":
        assert (answer.status_code, answer.headers["Content-Type"]) == (406, "application/json"), answer.text[:200]
        return
    if name == "sr-tid1500":
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/png"), answer.text[:200]
        assert Image.open(io.BytesIO(answer.content)).format == "PNG"
        return
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/png"), answer.text[:200]
    ds = pydicom.dcmread(objects[name])
    image = Image.open(io.BytesIO(answer.content))
    if resource == "rendered":
        assert image.size == (int(ds.Columns), int(ds.Rows))
    if resource == "rendered" and name == "seg-labelmap":  # frame 1's labels in the palette's colours
        colours = np.array([(0, 0, 0), (255, 0, 0), (0, 0, 255)], dtype=np.uint8)
        assert np.array_equal(np.asarray(image.convert("RGB")), colours[ds.pixel_array[0]])
    if resource == "rendered" and ds.BitsAllocated == 1:  # frame 1's mask: set pixels white, the rest black
        shown = np.asarray(image.convert("L"))
        mask = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))[0].astype(bool)
        assert np.array_equal(shown, np.where(mask, 255, 0).astype(np.uint8))


@pytest.mark.parametrize("name", ["seg-binary", "seg-binary-implicit", "seg-tiled-full"])
def test_dicomweb_client_and_highdicom_read_a_binary_segmentation_over_dicomweb(
    stack: RunningStack, objects: dict[str, Path], name: str
) -> None:
    """dicomweb-client, unmodified, as an AI pipeline reads a SEG back: the instance (highdicom finds the masks of
    the file in it) and its frames (each decodes to that frame's mask, as highdicom decodes the file's)."""
    from dicomweb_client.api import DICOMwebClient

    local = hd.seg.segread(objects[name])
    study, series, sop = str(local.StudyInstanceUID), str(local.SeriesInstanceUID), str(local.SOPInstanceUID)
    client = DICOMwebClient(url=stack.root(stack.issue([study])["token"]))
    remote = hd.seg.Segmentation.from_dataset(client.retrieve_instance(study, series, sop))
    numbers = list(range(1, int(local.NumberOfFrames) + 1))
    assert np.array_equal(remote.get_stored_frames(), local.get_stored_frames())
    frames = client.retrieve_instance_frames(study, series, sop, frame_numbers=numbers[::-1])
    bits = int(local.Rows) * int(local.Columns)
    for number, frame in zip(numbers[::-1], frames, strict=True):
        decoded = unpack_bits(frame)[:bits].reshape(int(local.Rows), int(local.Columns))
        assert np.array_equal(decoded, local.get_stored_frame(number)), f"frame {number}"


def test_highdicom_reads_the_measurement_report_over_dicomweb(stack: RunningStack, objects: dict[str, Path]) -> None:
    """The TID 1500 report as retrieved: highdicom finds both measurement groups, their tracking identifiers and
    values, and the source image the polyline refers to."""
    from dicomweb_client.api import DICOMwebClient

    local = pydicom.dcmread(objects["sr-tid1500"])
    study, series, sop = str(local.StudyInstanceUID), str(local.SeriesInstanceUID), str(local.SOPInstanceUID)
    client = DICOMwebClient(url=stack.root(stack.issue([study])["token"]))
    remote, mine = (
        hd.sr.MeasurementReport.from_sequence(hd.sr.Comprehensive3DSR.from_dataset(ds).content)
        for ds in (client.retrieve_instance(study, series, sop), local)
    )
    groups = remote.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["finding 0", "finding 1"]
    assert [g.get_measurements()[0].value for g in groups] == [162.5, 163.5]
    assert [g.roi for g in groups] == [g.roi for g in mine.get_planar_roi_measurement_groups()]
    [source] = groups[0].roi.ContentSequence  # the polyline's source image
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == str(
        local.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
    )


def test_the_measurement_report_rendered_as_xml_is_what_dcmtk_reads(
    stack: RunningStack, objects: dict[str, Path], tmp_path: Path
) -> None:
    """``/rendered`` of the TID 1500 report as text/xml (PS3.18 Table 8.7.4-1): its data set as a Native DICOM Model
    document, the nested measurement groups, their tracking identifiers, measurements and the polyline's graphic
    data among them, attribute for attribute what DCMTK's ``dcm2xml --native-format`` reads of the stored file."""
    address = url(stack, objects["sr-tid1500"])
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(get(stack, address, "application/dicom").content)
    answer = get(stack, f"{address}/rendered", "text/xml")
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "text/xml; charset=utf-8"), answer.text[:300]
    document = ET.fromstring(answer.content)
    assert document.tag == f"{NS}NativeDicomModel"
    assert_as_dcmtk_reads(document, stored, address)
    values = flatten(document)
    texts = {value[0] for key, (vr, value) in values.items() if key.endswith("0040A160") and value}
    numbers = sorted(float(value[0]) for key, (vr, value) in values.items() if key.endswith("0040A30A"))
    assert {"finding 0", "finding 1"} <= texts and numbers == [162.5, 163.5]
    assert any(key.endswith("00700022") and vr == "FL" for key, (vr, _) in values.items())  # the polyline's points
