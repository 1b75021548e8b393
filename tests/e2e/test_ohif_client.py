"""OHIF's DICOMweb client (npm `dicomweb-client` 0.11, dcmjs-org) and dcmjs 0.52, unmodified, installed by `npm ci`
in tests/e2e/ohif/, in Debian's Chromium as OHIF runs them (the client is XMLHttpRequest: Node would need a
polyfill), against the real stack on both storage backends.

The page comes from another origin (`http://localhost:P`, allowed by `DICOMGW_CORS_ORIGINS`), as OHIF usually is.
The token travels as OHIF deployments carry it: the token root `/t/{token}/dicomweb` as the client's `url`, or
`/dicomweb` with `Authorization: Bearer` in the client's `headers` (a preflighted request). Every call is the
library's own: QIDO with the parameters OHIF's study list sends, study and series metadata naturalized by dcmjs,
instances parsed by dcmjs and compared byte for byte with the stored files, frames (native and compressed, one and
several), every BulkDataURI followed as the metadata gives it, rendered and thumbnail, and STOW of files dcmjs read
and wrote again (`DicomDict.write()`) through the client's own multipart writer. Errors reach the client as an
Error with the status and the gateway's JSON body.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import HTJ2KLossless, JPEGLosslessSV1, generate_uid

from gateway.tools.synth import make_series, make_wsi
from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import LoopbackPageServer, RunningStack, folder_page_server, module_stack
from tests.e2e.test_compressed_render import fresh_copy
from tests.e2e.test_viewer import CHROMIUM, CHROMIUM_ARGS, playwright_sync
from tests.fixtures.compressed import compressed_twin, pydicom_file
from tests.requirements import require

pytestmark = [pytest.mark.browser, pytest.mark.third_party]

PAGE_DIR = Path(__file__).resolve().parent / "ohif"
MODULES = PAGE_DIR / "node_modules"

require(
    (MODULES / "dicomweb-client" / "build" / "dicomweb-client.js").exists()
    and (MODULES / "dcmjs" / "build" / "dcmjs.js").exists(),
    "dicomweb-client and dcmjs are not installed: run `make ohif` (npm ci in tests/e2e/ohif)",
    module=True,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"



def named(path: Path, **values: str) -> Path:
    """``path`` rewritten with the given attributes (the patient and study values OHIF's study list matches)."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def with_bulk_elements(source: Path, target: Path) -> Path:
    """A CT slice in a series of its own with two more bulk elements than its Pixel Data: an icon's Pixel Data
    inside a sequence (BulkDataURI `.../bulkdata/00880200/0/7FE00010`) and Overlay Data."""
    ds = pydicom.dcmread(source)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    icon = Dataset()
    icon.Rows = icon.Columns = 64
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.add_new(0x7FE00010, "OB", bytes(range(256)) * 16)
    ds.IconImageSequence = [icon]
    ds.add_new(0x60000010, "US", 128)  # Overlay Rows
    ds.add_new(0x60000011, "US", 128)  # Overlay Columns
    ds.add_new(0x60000040, "CS", "G")  # Overlay Type
    ds.add_new(0x60000050, "SS", [1, 1])  # Overlay Origin
    ds.add_new(0x60000100, "US", 1)  # Overlay Bits Allocated
    ds.add_new(0x60000102, "US", 0)  # Overlay Bit Position
    ds.add_new(0x60003000, "OW", bytes((k * 7) & 0xFF for k in range(2048)))
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two patients' studies for the study list, multi-frame native and JPEG slides, compressed twins of pydicom's
    files (HTJ2K, two-frame JPEG Lossless) and two of them (JPEG-LS, RLE), one with bulk elements besides Pixel
    Data."""
    base = tmp_path_factory.mktemp("ohif-data")
    ct = make_series(base / "ct", modality="CT", slices=3, rows=64, columns=64, seed=41, clean=True)
    for path in ct:
        named(path, PatientName="OHIF^Alpha", StudyDate="20240315", StudyDescription="Chest", AccessionNumber="A41")
    mr = make_series(base / "mr", modality="MR", slices=2, rows=64, columns=64, seed=42, clean=True)
    for path in mr:
        named(path, PatientName="OHIF^Beta", StudyDate="20230101", StudyDescription="Head", AccessionNumber="B42")
    made = {f"ct{k + 1}": path for k, path in enumerate(ct)} | {f"mr{k + 1}": path for k, path in enumerate(mr)}
    made["bulk"] = with_bulk_elements(ct[0], base / "bulk.dcm")
    made["native"] = make_wsi(base / "native", frames=4, native=True, tile=64, seed=43, clean=True)
    made["jpeg"] = make_wsi(base / "jpeg", frames=5, tile=64, seed=44, clean=True)
    made["htj2k"] = compressed_twin(pydicom_file("MR_small.dcm"), HTJ2KLossless, base / "htj2k.dcm")
    made["sv1"] = compressed_twin(pydicom_file("SC_rgb_rle_2frame.dcm"), JPEGLosslessSV1, base / "sv1.dcm")
    made["jls"] = fresh_copy(pydicom_file("MR_small_jpeg_ls_lossless.dcm"), base / "jls.dcm")
    made["rle"] = fresh_copy(pydicom_file("MR_small_RLE.dcm"), base / "rle.dcm")
    return made


@pytest.fixture(scope="module")
def page_server() -> Iterator[LoopbackPageServer]:
    with folder_page_server(PAGE_DIR) as server:
        yield server


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    files: dict[str, Path],
    page_server: LoopbackPageServer,
) -> Iterator[RunningStack]:
    yield from module_stack(
        request, tmp_path_factory, "ohif", list(files.values()), DICOMGW_CORS_ORIGINS=page_server.origin
    )


@pytest.fixture(scope="module")
def page(page_server: LoopbackPageServer) -> Iterator[Any]:
    """The page with both packages loaded, in Chromium."""
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            opened = browser.new_page()
            opened.set_default_timeout(60_000)
            opened.goto(f"{page_server.origin}/index.html")
            opened.wait_for_function("() => window.ohifReady === true")
            yield opened
        finally:
            browser.close()


@pytest.fixture(scope="module")
def token(stack: RunningStack, files: dict[str, Path]) -> str:
    """A read and write token for every study stored (and none other)."""
    studies = sorted({uids_of(path)[0] for path in files.values()})
    return str(stack.issue(studies, actions=["read", "write"])["token"])


@pytest.fixture(params=["token-root", "bearer"])
def config(request: pytest.FixtureRequest, stack: RunningStack, token: str) -> dict[str, Any]:
    """The client's options as an OHIF data source sets them: the token root as `url`, or the plain root with
    `Authorization: Bearer` in `headers`."""
    if request.param == "token-root":
        return {"url": stack.root(token)}
    return {"url": f"{stack.url}/dicomweb", "headers": {"Authorization": f"Bearer {token}"}}


def with_token(config: dict[str, Any], stack: RunningStack, token: str) -> dict[str, Any]:
    """``config`` carrying another token the same way."""
    if "headers" in config:
        return {**config, "headers": {"Authorization": f"Bearer {token}"}}
    return {"url": stack.root(token)}


def call(page: Any, config: dict[str, Any], method: str, options: dict[str, Any]) -> Any:
    """``new DICOMwebClient(config)[method](options)`` in the page; its value (bytes decoded), or fails."""
    result = page.evaluate("([c, m, o]) => window.callClient(c, m, o)", [config, method, options])
    assert "error" not in result, (method, options, result["error"])
    return unbytes(result["value"])


def call_error(page: Any, config: dict[str, Any], method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The error the client rejected with: its status and body (the gateway's JSON, parsed when it was text)."""
    result = page.evaluate("([c, m, o]) => window.callClient(c, m, o)", [config, method, options])
    assert "error" in result, (method, options, "resolved")
    error: dict[str, Any] = result["error"]
    if isinstance(error.get("body"), str):
        error["body"] = json.loads(error["body"])
    return error


def unbytes(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"bytes"}:
        return base64.b64decode(value["bytes"])
    if isinstance(value, list):
        return [unbytes(item) for item in value]
    return value


def value_of(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def frames_of(path: Path) -> list[bytes]:
    """Each frame as a frame request answers it: native frames cut from Pixel Data, encapsulated ones as stored."""
    ds = pydicom.dcmread(path)
    count = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    size = len(ds.PixelData) // count
    return [ds.PixelData[k * size : (k + 1) * size] for k in range(count)]


# -- QIDO-RS as OHIF's study list, series list and instance list send it -------------------------------------------


def study_uids(answer: list[dict[str, Any]]) -> list[str]:
    return sorted(value_of(item, "0020000D") for item in answer)


def test_study_list_queries(page: Any, config: dict[str, Any], files: dict[str, Path]) -> None:
    alpha, beta = uids_of(files["ct1"])[0], uids_of(files["mr1"])[0]
    ohif = {"limit": 101, "offset": 0, "fuzzymatching": "false", "includefield": "00081030,00080060"}

    def search(**params: Any) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = call(page, config, "searchForStudies", {"queryParams": {**params, **ohif}})
        return answer

    answer = search(PatientName="OHIF^Alpha")
    assert study_uids(answer) == [alpha]
    [study] = answer
    assert value_of(study, "00081030") == "Chest"  # includefield
    assert study["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert value_of(study, "00100010") == {"Alphabetic": "OHIF^Alpha"}
    assert value_of(study, "00201208") == 4  # NumberOfStudyRelatedInstances: three slices and the bulk one
    assert value_of(study, "00081190") == f"{config['url']}/studies/{alpha}"  # RetrieveURL, under the client's root
    # PatientName wildcards as OHIF's search box sends them
    assert study_uids(search(PatientName="OHIF*")) == sorted([alpha, beta])
    assert study_uids(search(PatientName="*Beta*")) == [beta]
    assert study_uids(search(PatientName="*Gamma*")) == []
    # StudyDate ranges (PS3.4 C.2.2.2.5), closed and open on either side, as OHIF's date picker sends them
    assert study_uids(search(StudyDate="20240101-20241231")) == [alpha]
    # (the slides and pydicom's files are in older studies, or have no date)
    assert study_uids(search(StudyDate="-20231231", PatientName="OHIF*")) == [beta]
    assert study_uids(search(StudyDate="20230101-")) == sorted([alpha, beta])
    assert study_uids(search(StudyDate="20230101-20230101", PatientName="OHIF*")) == [beta]
    assert study_uids(search(AccessionNumber="A41", ModalitiesInStudy="CT")) == [alpha]
    # fuzzymatching=true is accepted (PS3.18 8.3.4.1 lets the server match no more fuzzily than it can)
    fuzzy = call(
        page, config, "searchForStudies", {"queryParams": {**ohif, "fuzzymatching": "true", "PatientName": "OHIF*"}}
    )
    assert study_uids(fuzzy) == sorted([alpha, beta])  # literal matching (README: accepted, with a Warning)
    # a page at a time: OHIF's limit/offset
    everything = study_uids(search(PatientName="OHIF*"))
    pages = [
        call(page, config, "searchForStudies", {"queryParams": {"PatientName": "OHIF*", "limit": 1, "offset": k}})
        for k in range(3)
    ]
    assert [len(p) for p in pages] == [1, 1, 0]
    assert sorted(study_uids(pages[0]) + study_uids(pages[1])) == everything


def test_series_and_instance_lists(page: Any, config: dict[str, Any], files: dict[str, Path]) -> None:
    study, series, _ = uids_of(files["ct1"])
    bulk_series = uids_of(files["bulk"])[1]
    answer = call(
        page,
        config,
        "searchForSeries",
        {"studyInstanceUID": study, "queryParams": {"includefield": "0008103E,00080021,00080031"}},
    )
    by_uid = {value_of(item, "0020000E"): item for item in answer}
    assert sorted(by_uid) == sorted([series, bulk_series])
    assert value_of(by_uid[series], "00080060") == "CT"
    assert value_of(by_uid[series], "00201209") == 3  # NumberOfSeriesRelatedInstances
    instances = call(page, config, "searchForInstances", {"studyInstanceUID": study, "seriesInstanceUID": series})
    expected = sorted(uids_of(files[f"ct{k}"])[2] for k in (1, 2, 3))
    assert sorted(value_of(item, "00080018") for item in instances) == expected
    first = call(
        page,
        config,
        "searchForInstances",
        {"studyInstanceUID": study, "seriesInstanceUID": series, "queryParams": {"limit": 2, "offset": 0}},
    )
    rest = call(
        page,
        config,
        "searchForInstances",
        {"studyInstanceUID": study, "seriesInstanceUID": series, "queryParams": {"limit": 2, "offset": 2}},
    )
    assert (len(first), len(rest)) == (2, 1)
    assert sorted(value_of(item, "00080018") for item in first + rest) == expected
    # instances of a study, across its series, and by SOP Instance UID without a study (OHIF's instance lookup)
    sop = uids_of(files["bulk"])[2]
    across = call(page, config, "searchForInstances", {"studyInstanceUID": study})
    assert len(across) == 4
    found = call(page, config, "searchForInstances", {"queryParams": {"SOPInstanceUID": sop}})
    assert [value_of(item, "00080018") for item in found] == [sop]


# -- metadata, naturalized by dcmjs --------------------------------------------------------------------------------


def test_study_and_series_metadata_naturalized(page: Any, config: dict[str, Any], files: dict[str, Path]) -> None:
    study, series, _ = uids_of(files["ct1"])
    result = page.evaluate(
        "([c, m, o]) => window.naturalizedMetadata(c, m, o)",
        [config, "retrieveStudyMetadata", {"studyInstanceUID": study}],
    )
    assert "error" not in result, result
    by_sop = {item["SOPInstanceUID"]: item for item in result["value"]}
    names = ["ct1", "ct2", "ct3", "bulk"]
    assert sorted(by_sop) == sorted(uids_of(files[name])[2] for name in names)
    for name in names:
        source = pydicom.dcmread(files[name])
        item = by_sop[source.SOPInstanceUID]
        assert item["PatientName"] == [{"Alphabetic": "OHIF^Alpha"}]
        assert item["StudyDate"] == "20240315"
        assert (item["Rows"], item["Columns"]) == (source.Rows, source.Columns)
        assert item["ImagePositionPatient"] == [float(v) for v in source.ImagePositionPatient]
        assert item["RescaleSlope"] == float(source.RescaleSlope)
        assert item["PixelData"]["BulkDataURI"].endswith(
            f"/studies/{study}/series/{source.SeriesInstanceUID}/instances/{source.SOPInstanceUID}/bulkdata/7FE00010"
        )
    result = page.evaluate(
        "([c, m, o]) => window.naturalizedMetadata(c, m, o)",
        [config, "retrieveSeriesMetadata", {"studyInstanceUID": study, "seriesInstanceUID": series}],
    )
    assert "error" not in result, result
    assert sorted(item["SOPInstanceUID"] for item in result["value"]) == sorted(
        uids_of(files[f"ct{k}"])[2] for k in (1, 2, 3)
    )
    assert {item["InstanceNumber"] for item in result["value"]} == {1, 2, 3}


# -- instances, parsed by dcmjs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct1", "native", "jpeg", "htj2k", "sv1", "jls", "rle", "bulk"])
def test_instance_parsed_by_dcmjs(page: Any, config: dict[str, Any], files: dict[str, Path], name: str) -> None:
    path = files[name]
    study, series, sop = uids_of(path)
    options = {"studyInstanceUID": study, "seriesInstanceUID": series, "sopInstanceUID": sop}
    result = page.evaluate("([c, o]) => window.retrieveAndParse(c, o)", [config, options])
    assert "error" not in result, result
    parsed = result["value"]
    assert base64.b64decode(parsed["bytes"]) == path.read_bytes()
    source = pydicom.dcmread(path)
    assert parsed["meta"]["TransferSyntaxUID"] == source.file_meta.TransferSyntaxUID
    assert parsed["dataset"]["SOPInstanceUID"] == sop
    assert (parsed["dataset"]["Rows"], parsed["dataset"]["Columns"]) == (source.Rows, source.Columns)
    frames = [base64.b64decode(frame) for frame in parsed["pixelFrames"]]
    if source.file_meta.TransferSyntaxUID.is_compressed:
        assert frames == frames_of(path)  # dcmjs splits the encapsulated value into one buffer per frame
    else:
        assert b"".join(frames) == source.PixelData


def test_series_and_study_retrieved(page: Any, config: dict[str, Any], files: dict[str, Path]) -> None:
    """Whole series and studies, each part a stored file byte for byte. (The client's ``mediaTypes`` for these and
    for retrieveInstance never reach the wire in 0.11: it compares the common type ``application/`` with
    ``application/dicom`` and throws, so OHIF calls them without, as here.)"""
    study, series, _ = uids_of(files["ct1"])
    parts = call(page, config, "retrieveSeries", {"studyInstanceUID": study, "seriesInstanceUID": series})
    assert sorted(parts) == sorted(files[f"ct{k}"].read_bytes() for k in (1, 2, 3))
    parts = call(page, config, "retrieveStudy", {"studyInstanceUID": study})
    assert sorted(parts) == sorted(files[name].read_bytes() for name in ("ct1", "ct2", "ct3", "bulk"))
    # a slide stored as JPEG: the stored bytes (no transfer-syntax named: README "No transfer-syntax named")
    study, series, _ = uids_of(files["jpeg"])
    assert call(page, config, "retrieveSeries", {"studyInstanceUID": study, "seriesInstanceUID": series}) == [
        files["jpeg"].read_bytes()
    ]


# -- frames ----------------------------------------------------------------------------------------------------------


def frame_options(path: Path, numbers: list[int], media_types: list[dict[str, str]] | None = None) -> dict[str, Any]:
    study, series, sop = uids_of(path)
    options: dict[str, Any] = {
        "studyInstanceUID": study,
        "seriesInstanceUID": series,
        "sopInstanceUID": sop,
        "frameNumbers": numbers,
    }
    if media_types is not None:
        options["mediaTypes"] = media_types
    return options


def test_native_frames(page: Any, config: dict[str, Any], files: dict[str, Path]) -> None:
    """No mediaTypes: the client asks `multipart/related; type="application/octet-stream"`."""
    [frame] = call(page, config, "retrieveInstanceFrames", frame_options(files["ct2"], [1]))
    assert frame == pydicom.dcmread(files["ct2"]).PixelData
    stored = frames_of(files["native"])
    answer = call(page, config, "retrieveInstanceFrames", frame_options(files["native"], [1, 3, 4]))
    assert answer == [stored[0], stored[2], stored[3]]
    answer = call(
        page,
        config,
        "retrieveInstanceFrames",
        frame_options(files["native"], [2], [{"mediaType": "application/octet-stream", "transferSyntaxUID": "*"}]),
    )
    assert answer == [stored[1]]


@pytest.mark.parametrize(
    ("name", "numbers", "media_types"),
    [
        # one shared type: the client's image path (`multipart/related; type="image/jpeg"; transfer-syntax=...`)
        ("jpeg", [1], [{"mediaType": "image/jpeg", "transferSyntaxUID": JPEG_BASELINE}]),
        ("jpeg", [2, 5, 3], [{"mediaType": "image/jpeg", "transferSyntaxUID": JPEG_BASELINE}]),
        ("sv1", [1, 2], [{"mediaType": "image/jpeg", "transferSyntaxUID": "1.2.840.10008.1.2.4.70"}]),
        # the pre-registration names the client's table holds (README: read as image/jls, image/dicom-rle)
        ("jls", [1], [{"mediaType": "image/x-jls", "transferSyntaxUID": "1.2.840.10008.1.2.4.80"}]),
        ("rle", [1], [{"mediaType": "image/x-dicom-rle", "transferSyntaxUID": "1.2.840.10008.1.2.5"}]),
        # several types (compressed or not, whichever is stored), as a viewer that decodes both asks
        (
            "htj2k",
            [1],
            [
                {"mediaType": "application/octet-stream", "transferSyntaxUID": "*"},
                {"mediaType": "image/jhc", "transferSyntaxUID": str(HTJ2KLossless)},
            ],
        ),
        # the stored bytes whatever they are (`transfer-syntax=*`), what OHIF's image loader asks
        ("jpeg", [4, 1], [{"mediaType": "application/octet-stream", "transferSyntaxUID": "*"}]),
        ("sv1", [2], [{"mediaType": "application/octet-stream", "transferSyntaxUID": "*"}]),
    ],
)
def test_compressed_frames(
    page: Any,
    config: dict[str, Any],
    files: dict[str, Path],
    name: str,
    numbers: list[int],
    media_types: list[dict[str, str]],
) -> None:
    stored = frames_of(files[name])
    answer = call(page, config, "retrieveInstanceFrames", frame_options(files[name], numbers, media_types))
    assert answer == [stored[n - 1] for n in numbers]


# -- bulk data, by each BulkDataURI the metadata gives ---------------------------------------------------------------


def bulk_uris(value: Any, found: dict[str, str]) -> dict[str, str]:
    """Every BulkDataURI in DICOM JSON, by its path after ``bulkdata/``."""
    if isinstance(value, dict):
        if "BulkDataURI" in value:
            uri = value["BulkDataURI"]
            found[uri.split("/bulkdata/", 1)[1].split("?", 1)[0]] = uri
        for item in value.values():
            bulk_uris(item, found)
    elif isinstance(value, list):
        for item in value:
            bulk_uris(item, found)
    return found


def test_every_bulkdata_uri_followed_as_given(page: Any, config: dict[str, Any], files: dict[str, Path]) -> None:
    path = files["bulk"]
    study, series, sop = uids_of(path)
    [metadata] = call(
        page,
        config,
        "retrieveInstanceMetadata",
        {"studyInstanceUID": study, "seriesInstanceUID": series, "sopInstanceUID": sop},
    )
    source = pydicom.dcmread(path)
    expected = {
        "7FE00010": source.PixelData,
        "60003000": source[0x60003000].value,
        "00880200/0/7FE00010": source.IconImageSequence[0].PixelData,
    }
    uris = bulk_uris(metadata, {})
    assert sorted(uris) == sorted(expected)
    for key, uri in uris.items():
        # absolute, under the root the client was given, so the token (in the path or the header) goes with it
        assert uri.startswith(f"{config['url']}/studies/{study}/series/{series}/instances/{sop}/bulkdata/"), uri
        assert call(page, config, "retrieveBulkData", {"BulkDataURI": uri}) == [expected[key]], key
        # a byte range (the client sends Range with its multipart Accept)
        [part] = call(page, config, "retrieveBulkData", {"BulkDataURI": uri, "byteRange": [10, 109]})
        assert part == expected[key][10:110], key
        # OHIF's `singlepart: "bulkdata"`: a plain GET, the value as the whole body
        assert call(page, {**config, "singlepart": "bulkdata"}, "retrieveBulkData", {"BulkDataURI": uri}) == [
            expected[key]
        ], key


# -- rendered and thumbnail ------------------------------------------------------------------------------------------


def picture(data: bytes, kind: str) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == kind
    return image


def test_rendered_and_thumbnail(page: Any, config: dict[str, Any], files: dict[str, Path], stack: RunningStack) -> None:
    path = files["ct1"]
    study, series, sop = uids_of(path)
    options = {"studyInstanceUID": study, "seriesInstanceUID": series, "sopInstanceUID": sop}
    headers = config.get("headers", {})
    url = f"{config['url']}/studies/{study}/series/{series}/instances/{sop}"
    [png] = call(page, config, "retrieveInstanceRendered", {**options, "mediaTypes": [{"mediaType": "image/png"}]})
    assert picture(png, "PNG").size == (64, 64)
    same = requests.get(f"{url}/rendered", headers={**headers, "Accept": "image/png"}, timeout=30)
    assert png == same.content
    # without mediaTypes the browser's own Accept (*/*): the default, JPEG
    [jpeg] = call(page, config, "retrieveInstanceRendered", options)
    assert picture(jpeg, "JPEG").size == (64, 64)
    jpeg_only = [{"mediaType": "image/jpeg"}]
    [thumbnail] = call(page, config, "retrieveInstanceThumbnail", {**options, "mediaTypes": jpeg_only})
    picture(thumbnail, "JPEG")
    frame = call(
        page,
        config,
        "retrieveInstanceFramesRendered",
        {**frame_options(files["native"], [3]), "mediaTypes": [{"mediaType": "image/png"}]},
    )
    picture(frame[0], "PNG")
    # with query parameters the client reads the answer as bytes too
    [small] = call(
        page,
        config,
        "retrieveInstanceRendered",
        {**options, "mediaTypes": [{"mediaType": "image/png"}], "queryParams": {"viewport": "32,32"}},
    )
    assert picture(small, "PNG").size == (32, 32)


def test_a_frames_thumbnail(page: Any, config: dict[str, Any], files: dict[str, Path]) -> None:
    """The client's ``retrieveInstanceFramesThumbnail`` (``.../frames/{n}/thumbnail``, PS3.18 10.4.1.1.4) was the
    JSON 404 "no such DICOMweb resource": it is the frame's rendering fitted into 128 px, in the type asked for."""
    study, series, sop = uids_of(files["native"])
    url = f"{config['url']}/studies/{study}/series/{series}/instances/{sop}/frames"
    headers = config.get("headers", {})
    for media, kind in (("image/jpeg", "JPEG"), ("image/png", "PNG")):
        options = frame_options(files["native"], [3], [{"mediaType": media}])
        [thumbnail] = call(page, config, "retrieveInstanceFramesThumbnail", options)
        assert picture(thumbnail, kind).size == (64, 64)  # the 64 px tile fits 128 px: never enlarged
        rendered = requests.get(f"{url}/3/rendered?viewport=128,128", headers={**headers, "Accept": media}, timeout=30)
        assert thumbnail == rendered.content
    # a viewport of the request's own is its size; a frame past the last is the frames resource's 404
    options = frame_options(files["native"], [2], [{"mediaType": "image/png"}])
    options["queryParams"] = {"viewport": "32,32"}
    [small] = call(page, config, "retrieveInstanceFramesThumbnail", options)
    assert picture(small, "PNG").size == (32, 32)
    missing = requests.get(f"{url}/9/thumbnail", headers=headers, timeout=30)
    assert (missing.status_code, missing.json()["error"]) == (404, "frame_not_found")


def test_storage_cors_and_headers_stay_behind_nginx(
    stack: RunningStack, files: dict[str, Path], token: str, page_server: LoopbackPageServer
) -> None:
    """What NGINX hands over from storage as it is (a single-part instance, a stored thumbnail) carries the
    gateway's CORS answer alone: moto answered every object with its own `Access-Control-Allow-Origin: *`, so the
    browser saw two and refused the thumbnail (the client's `retrieveInstanceThumbnail` failed with status 0)."""
    study, series, sop = uids_of(files["ct3"])
    url = f"{stack.root(token)}/studies/{study}/series/{series}/instances/{sop}"
    for path, accept in (("", "application/dicom"), ("/thumbnail", "image/jpeg")):
        for _ in range(2):  # the thumbnail rendered and stored, then served from storage
            answer = requests.get(url + path, headers={"Accept": accept, "Origin": page_server.origin}, timeout=30)
            assert answer.status_code == 200, answer.text[:300]
            # requests joins repeated header lines with ", ": one line is exactly the origin
            assert answer.headers["Access-Control-Allow-Origin"] == page_server.origin, path
            assert answer.headers["Access-Control-Allow-Credentials"] == "true"
            assert [name for name in answer.headers if name.lower().startswith("x-am")] == [], path
            # an origin the gateway does not allow gets no CORS answer at all: storage's `*` let any page read an
            # object through a path token (a token in the URL needs no credentials, which `*` excludes)
            foreign = requests.get(
                url + path, headers={"Accept": accept, "Origin": "https://elsewhere.example"}, timeout=30
            )
            assert foreign.status_code == 200, foreign.text[:300]
            assert "Access-Control-Allow-Origin" not in foreign.headers, path
            assert "Access-Control-Allow-Credentials" not in foreign.headers, path
    assert requests.get(url, timeout=30, headers={"Accept": "application/dicom"}).content == files["ct3"].read_bytes()


# -- STOW-RS of files dcmjs wrote, by the client's own multipart writer ------------------------------------------------


def test_store_files_dcmjs_wrote(
    page: Any, config: dict[str, Any], files: dict[str, Path], stack: RunningStack
) -> None:
    study = generate_uid()
    series = generate_uid()
    sources = [files["ct2"], files["jpeg"]]
    uids = [{"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": generate_uid()} for _ in sources]
    own = with_token(config, stack, stack.issue([study], actions=["read", "write"])["token"])
    payload = [
        {"bytes": base64.b64encode(path.read_bytes()).decode(), "uids": ids}
        for path, ids in zip(sources, uids, strict=True)
    ]
    result = page.evaluate("([c, f, s]) => window.rewriteAndStore(c, f, s)", [own, payload, study])
    assert "error" not in result, result
    written = [base64.b64decode(item) for item in result["value"]["written"]]
    answer = json.loads(result["value"]["answer"])
    stored = answer["00081199"]["Value"]
    assert sorted(value_of(item, "00081155") for item in stored) == sorted(ids["SOPInstanceUID"] for ids in uids)
    assert "00081198" not in answer  # no failed instance
    for data, ids, source in zip(written, uids, sources, strict=True):
        # dcmjs's file, another toolkit's writing: pydicom reads it, the pixels are the source's
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == ids["SOPInstanceUID"]
        assert ds.PixelData == pydicom.dcmread(source).PixelData
        assert data != source.read_bytes()
        options = {"studyInstanceUID": study, "seriesInstanceUID": series, "sopInstanceUID": ids["SOPInstanceUID"]}
        assert call(page, own, "retrieveInstance", options) == data
    # the same files again, to /studies without a study: the same bytes are a success again (PS3.18 10.5.3)
    result = page.evaluate("([c, f, s]) => window.rewriteAndStore(c, f, s)", [own, payload, None])
    assert "error" not in result, result
    again = json.loads(result["value"]["answer"])
    assert len(again["00081199"]["Value"]) == 2
    assert "00081198" not in again


# -- errors the client can read ---------------------------------------------------------------------------------------


def test_errors_reach_the_client_with_their_status_and_json(
    page: Any, config: dict[str, Any], files: dict[str, Path], stack: RunningStack, token: str
) -> None:
    study, series, _ = uids_of(files["ct1"])
    missing = {"studyInstanceUID": study, "seriesInstanceUID": series, "sopInstanceUID": generate_uid()}
    # 404 of a JSON call (the client asked responseType "json": the body arrives parsed)
    error = call_error(page, config, "retrieveInstanceMetadata", missing)
    assert error["status"] == 404
    assert error["body"]["error"] == "not_found"
    # 404 of a bytes call
    error = call_error(page, config, "retrieveInstance", missing)
    assert error["status"] == 404
    assert error["body"]["error"] == "not_found"
    # a frame past the instance's one: the frames resource does not exist (WADO-URI's frameNumber would be a 400)
    error = call_error(page, config, "retrieveInstanceFrames", frame_options(files["ct1"], [2]))
    assert error["status"] == 404
    assert error["body"]["error"] == "frame_not_found"
    # 403: a study the token does not reach
    other = {"studyInstanceUID": generate_uid()}
    error = call_error(page, config, "retrieveStudyMetadata", other)
    assert (error["status"], error["body"]["error"]) == (403, "out_of_scope")
    # 403 insufficient_scope: STOW with a read-only token
    own = with_token(config, stack, stack.issue([study], actions=["read"])["token"])
    payload = [{"bytes": base64.b64encode(files["ct1"].read_bytes()).decode(), "uids": {}}]
    result = page.evaluate("([c, f, s]) => window.rewriteAndStore(c, f, s)", [own, payload, study])
    assert result["error"]["status"] == 403, result["error"]
    refused = {"error": "insufficient_scope", "detail": "token does not allow write"}
    assert json.loads(result["error"]["body"]) == refused
    # 401: a revoked or unknown token
    error = call_error(page, with_token(config, stack, "not-a-token"), "searchForStudies", {})
    assert (error["status"], error["body"]["error"]) == (401, "token_invalid")
