"""Files no one on the project wrote, in shapes the toolkits' own test data do not take (session 21): each is built
here byte by byte or with pydicom, stored through STOW-RS on the real stack (both storage backends; the catalog's
part on SQLite and PostgreSQL) and read back as a viewer reads it. Each test failed before its fix (CHANGELOG,
session 21)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from tests.e2e.conftest import BACKENDS
from tests.e2e.harness import RunningStack, start_stack
from tests.fixtures.servers import MotoServer, postgres_database

CANNOT_UNDERSTAND = 0xC000


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack on each catalog backend: values a file holds meet the catalog's columns, and PostgreSQL takes less
    than SQLite (no NUL in text, bounded index rows, the modality column's 16 characters)."""
    with contextlib.ExitStack() as cleanup:
        env: dict[str, str] = {}
        if request.param == "postgres":
            server = request.getfixturevalue("postgres_server")
            env["DICOMGW_DATABASE_URL"] = cleanup.enter_context(postgres_database(server))
        running = start_stack(tmp_path_factory.mktemp(f"outside-{request.param}"), "file", None, **env)
        cleanup.callback(running.stack.stop)
        yield running


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack on each storage backend (SQLite): frames and rendering read stored ranges, a plan NGINX follows."""
    moto: MotoServer | None = request.getfixturevalue("moto_server") if request.param == "s3" else None
    running = start_stack(tmp_path_factory.mktemp(f"outside-files-{request.param}"), request.param, moto)
    try:
        yield running
    finally:
        running.stack.stop()


def image(frames: int | None = None, **values: Any) -> Dataset:
    """A small native 16-bit secondary capture (4 x 6), ``frames`` frames, ``values`` set on it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "OUTSIDE-1", "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 6, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = np.arange((frames or 1) * 24, dtype="<u2").tobytes()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def write(ds: Dataset, folder: Path) -> Path:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())
    return path


def address(stack: RunningStack, ds: Dataset) -> str:
    return (
        f"{stack.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def get(stack: RunningStack, url: str, accept: str) -> requests.Response:
    return requests.get(url, headers={**stack.api_headers, "Accept": accept}, timeout=30)


def items(answer: requests.Response, tag: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = answer.json().get(tag, {}).get("Value", [])
    return found


def test_an_empty_number_of_frames_is_one_frame(stack: RunningStack, tmp_path: Path) -> None:
    """Number of Frames present but empty (zero length) is one frame, as pydicom decodes it and as index.py's own
    docstring said: pydicom reads the empty IS as None, which the check took for no number, a 0xC000 refusal."""
    ds = image(frames=1)
    ds["NumberOfFrames"].value = ""
    path = write(ds, tmp_path)
    answer = stack.stow([path])
    assert answer.status_code == 200, answer.text
    assert [item["00081155"]["Value"] for item in items(answer, "00081199")] == [[ds.SOPInstanceUID]]
    frame = get(stack, f"{address(stack, ds)}/frames/1", "application/octet-stream")
    assert (frame.status_code, frame.headers["Content-Type"]) == (
        200,
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
    )
    assert frame.content == ds.PixelData
    metadata = get(stack, f"{address(stack, ds)}/metadata", "application/dicom+json")
    assert metadata.status_code == 200
    assert metadata.json()[0]["00280008"] == {"vr": "IS"}
    retrieved = get(stack, address(stack, ds), "application/dicom")
    assert (retrieved.status_code, retrieved.content) == (200, path.read_bytes())


def test_encapsulated_pixel_data_under_a_native_transfer_syntax_is_refused(
    stack: RunningStack, tmp_path: Path
) -> None:
    """Encapsulated (undefined-length) Pixel Data in an Explicit VR Little Endian file, as a tool writes that
    rewrites a compressed file's Transfer Syntax UID without decoding it (PS3.5 A.4 allows encapsulation only in
    the compressed syntaxes). It was stored, and its frame 1 was the item headers and compressed bytes sent as
    native pixels (`application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1`), rendered as an image of
    them. Now a 0xC000 failure naming the element; the request's good file is stored, the bad one is nowhere."""
    bad = image(frames=2)
    bad.file_meta.TransferSyntaxUID = RLELossless  # pydicom writes encapsulated data only under such a syntax
    bad.PixelData = encapsulate([bytes(bad.PixelData[:48]), bytes(bad.PixelData[48:])])
    bad_path = write(bad, tmp_path)
    written = bad_path.read_bytes()
    assert written.count(b"1.2.840.10008.1.2.5\0") == 1
    bad_path.write_bytes(written.replace(b"1.2.840.10008.1.2.5\0", b"1.2.840.10008.1.2.1\0"))  # the same length
    good, failure = stow_beside_a_good_file(stack, bad_path, bad.SOPInstanceUID, tmp_path)
    assert failure["00091001"]["Value"] == [
        "Pixel Data (7FE0,0010) is encapsulated (undefined length), which the native transfer syntax "
        "1.2.840.10008.1.2.1 does not allow"
    ]
    for path, accept in (("/metadata", "application/dicom+json"), ("/frames/1", "application/octet-stream")):
        gone = get(stack, address(stack, bad) + path, accept)
        assert (gone.status_code, gone.headers["Content-Type"]) == (404, "application/json"), gone.text
    frame = get(stack, f"{address(stack, good)}/frames/1", "application/octet-stream")
    assert (frame.status_code, frame.content) == (200, good.PixelData)


def stow_beside_a_good_file(
    stack: RunningStack, bad_path: Path, bad_uid: str, folder: Path
) -> tuple[Dataset, dict[str, Any]]:
    """``bad_path`` sent in one STOW with a good file: a 202 storing the good one, whose data set is returned with
    the request's only failure item, the bad one's 0xC000."""
    good = image()
    answer = stack.stow([bad_path, write(good, folder)])
    assert answer.status_code == 202, answer.text
    assert [item["00081155"]["Value"] for item in items(answer, "00081199")] == [[good.SOPInstanceUID]]
    (failure,) = items(answer, "00081198")
    assert failure["00081155"]["Value"] == [bad_uid]
    assert failure["00081197"]["Value"] == [CANNOT_UNDERSTAND]
    return good, failure


def with_value(ds: Dataset, tag: int, raw: bytes, folder: Path) -> Path:
    """``ds`` written with the value of the (short-VR) element ``tag`` replaced by ``raw`` as given: bytes pydicom
    would not write itself (a NUL inside a name)."""
    path = write(ds, folder)
    data = path.read_bytes()
    header = tag.to_bytes(4, "big")
    header = header[1::-1] + header[:1:-1]  # (gggg,eeee) little endian
    start = data.index(header + ds[tag].VR.encode())
    length = int.from_bytes(data[start + 6 : start + 8], "little")
    value = raw + b" " * (len(raw) % 2)
    path.write_bytes(data[: start + 6] + len(value).to_bytes(2, "little") + value + data[start + 8 + length :])
    return path


def application_log(stack: RunningStack) -> str:
    return "".join(
        path.read_text(errors="replace")
        for path in (stack.stack.gunicorn_log, stack.stack.var_dir / "logs" / "gunicorn.out")
        if path.exists()
    )


@pytest.mark.parametrize("stack", ["file"], indirect=True)  # refused before storage: one backend is enough
@pytest.mark.parametrize(
    ("keyword", "tag", "vr", "syntax"),
    [("Rows", b"\x28\x00\x10\x00", b"PN", RLELossless), ("BitsStored", b"\x28\x00\x01\x01", b"DA", None)],
)
def test_a_pixel_description_of_another_vr_than_us_is_refused(
    stack: RunningStack, tmp_path: Path, keyword: str, tag: bytes, vr: bytes, syntax: str | None
) -> None:
    """An explicit VR file whose Rows (or Bits Stored) is written with another VR than PS3.6's US, as a byte flip
    in a VR makes: pydicom reads it as a name (or a date), and the file was stored, its frames served, and its
    rendered, thumbnail and WADO-URI JPEG a 500 each time (``int()`` of a PersonName). Now a 0xC000 failure naming
    the element (dciodvfy calls it a bad VR); the good file of the request is stored, the bad one is nowhere."""
    bad = image()
    if syntax is not None:
        bad.compress(syntax)  # a native image's bad Rows was refused already, by its frame size
    bad_path = write(bad, tmp_path)
    written = bad_path.read_bytes()
    assert written.count(tag + b"US") == 1
    bad_path.write_bytes(written.replace(tag + b"US", tag + vr))
    good, failure = stow_beside_a_good_file(stack, bad_path, bad.SOPInstanceUID, tmp_path)
    element = "(0028,0010)" if keyword == "Rows" else "(0028,0101)"
    assert failure["00091001"]["Value"] == [f"{keyword} {element} has the VR {vr.decode()}, not US as PS3.6 gives it"]
    for path, accept in (("/metadata", "application/dicom+json"), ("/rendered", "image/jpeg")):
        assert get(stack, address(stack, bad) + path, accept).status_code == 404
    assert get(stack, address(stack, good) + "/rendered", "image/jpeg").status_code == 200


@pytest.mark.parametrize("stack", ["file"], indirect=True)  # the window is read alike from either backend
def test_a_window_of_another_vr_than_ds_is_no_window(stack: RunningStack, tmp_path: Path) -> None:
    """Window Center written as PN (a byte flip in its VR; pydicom reads a name): the file is stored, as Orthanc and
    DCMTK store it, and its rendered image and thumbnail were 500s (``float()`` of a PersonName). A window that is no
    number is no window, as a DS that holds none already was: the frame's range is used, as without one."""
    ds = image(WindowCenter="100", WindowWidth="50")
    plain = image()
    plain.PixelData = ds.PixelData
    bad_path = write(ds, tmp_path)
    written = bad_path.read_bytes()
    assert written.count(b"\x28\x00\x50\x10DS") == 1
    bad_path.write_bytes(written.replace(b"\x28\x00\x50\x10DS", b"\x28\x00\x50\x10PN"))
    assert stack.stow([bad_path, write(plain, tmp_path)]).status_code == 200
    for suffix in ("/rendered", "/thumbnail"):
        answer = get(stack, address(stack, ds) + suffix, "image/png")
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/png"), answer.text[:200]
        assert answer.content == get(stack, address(stack, plain) + suffix, "image/png").content


def test_no_value_of_a_file_reaches_the_application_log(catalog_stack: RunningStack, tmp_path: Path) -> None:
    """A catalog error while an instance was registered logged SQLAlchemy's message, which quotes every bound
    parameter: the Patient's Name, ID, birth date and study description of the file, in clear (a NUL in a name,
    which PostgreSQL's text cannot hold, was one such error). The engines now hide parameters from their errors."""
    ds = image(PatientName="Zyxwq^Quorvan", PatientBirthDate="19610417", StudyDescription="Knee left qwzx")
    ds.PatientID = "PHI-7Q2ZK"
    path = with_value(ds, 0x00100010, b"Zyxwq\x00^Quorvan", tmp_path)
    answer = catalog_stack.stow([path])
    assert answer.status_code in (200, 409), answer.text
    catalog_stack.settle_access_log()
    log = application_log(catalog_stack)
    for value in ("Zyxwq", "Quorvan", "PHI-7Q2ZK", "19610417", "qwzx"):
        assert value not in log


def test_values_the_catalog_cannot_index_are_stored_and_answered_whole(
    catalog_stack: RunningStack, tmp_path: Path
) -> None:
    """Values no VR allows, which SQLite took and PostgreSQL refused: a NUL inside a name (0xC000 "the file could
    not be processed"), a 30,000-character Patient's Name, Patient ID or Accession Number (a 503 "catalog
    unavailable (ProgramLimitExceeded)" with Retry-After, for a file no retry could store: an index row of
    PostgreSQL holds ~2.7 KB), a 20-character Modality and an 18-character Study Date or Patient's Sex
    (VARCHAR(16)). Each is stored on both catalogs and answered whole; the catalog searches a NUL as U+FFFD and
    leaves a value longer than its column (256 characters, 16 for those) unsearched."""
    long_text = "Qx" * 15_000
    nul = image(PatientName="x")
    nul_path = with_value(nul, 0x00100010, b"Nulname\x00^Given", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom says each value is longer than its VR allows
        others = [
            image(PatientName=long_text),
            image(PatientID=long_text),
            image(AccessionNumber=long_text),
            image(Modality="ABCDEFGHIJKLMNOPQRST"),
            image(StudyDate="20200101-20210101X", PatientSex="UNKNOWN-SEX-VALUE"),
        ]
        paths = [write(ds, tmp_path) for ds in others]
    answer = catalog_stack.stow([nul_path, *paths])
    assert answer.status_code == 200, answer.text
    assert len(items(answer, "00081199")) == 6
    for ds, path in [(nul, nul_path), *zip(others, paths, strict=True)]:
        retrieved = get(catalog_stack, address(catalog_stack, ds), "application/dicom")
        assert (retrieved.status_code, retrieved.content) == (200, path.read_bytes())
    metadata = get(catalog_stack, f"{address(catalog_stack, nul)}/metadata", "application/dicom+json").json()[0]
    assert metadata["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Nulname\x00^Given"}]}
    long_name = get(catalog_stack, f"{address(catalog_stack, others[0])}/metadata", "application/dicom+json")
    assert long_name.json()[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": long_text}]}
    found = requests.get(
        f"{catalog_stack.url}/dicomweb/studies",
        params={"PatientName": "Nulname*"},
        headers=catalog_stack.api_headers,
        timeout=30,
    )
    assert found.status_code == 200, found.text
    assert [study["0020000D"]["Value"] for study in found.json()] == [[nul.StudyInstanceUID]]
    series = requests.get(
        f"{catalog_stack.url}/dicomweb/studies/{others[3].StudyInstanceUID}/series",
        headers=catalog_stack.api_headers,
        timeout=30,
    )
    assert series.status_code == 200, series.text
    assert [s["00080060"]["Value"] for s in series.json()] == [["ABCDEFGHIJKLMNOPQRST"]]


def test_a_nul_in_a_search_is_a_json_400_on_every_catalog(catalog_stack: RunningStack) -> None:
    """A NUL (%00) in a QIDO match value, the access trail's subject or an erasure's Patient ID was a JSON 500 on
    PostgreSQL ("unexpected server error": its text takes no NUL) and an empty 200 on SQLite. No DICOM value or
    identifier holds one: a 400 naming the parameter on both."""
    headers = catalog_stack.api_headers
    for path, name in (
        ("/dicomweb/studies?PatientName=A%00*", "PatientName"),
        ("/dicomweb/series?PatientID=A%00B", "PatientID"),
        ("/dicomweb/instances?AccessionNumber=%00", "AccessionNumber"),
        ("/api/v1/admin/access?subject=a%00b", "subject"),
    ):
        answer = requests.get(catalog_stack.url + path, headers=headers, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (400, "application/json"), answer.text
        assert answer.json() == {"error": "bad_request", "detail": f"{name} holds a NUL character (%00)"}
    erasure = requests.post(
        f"{catalog_stack.url}/api/v1/admin/erasure", json={"patient_id": "A\x00B"}, headers=headers, timeout=30
    )
    assert (erasure.status_code, erasure.json()) == (
        400,
        {"error": "bad_request", "detail": "patient_id and issuer hold no NUL character"},
    )


def encapsulated(fragments: list[bytes], offsets: list[int], frames: int) -> Dataset:
    """An RLE Lossless image of ``frames`` frames whose Pixel Data items are ``fragments`` exactly as given, after
    a Basic Offset Table of ``offsets`` (pydicom's writer makes no empty item)."""
    ds = image(frames=frames)
    ds.file_meta.TransferSyntaxUID = RLELossless
    items = [len(b"".join(o.to_bytes(4, "little") for o in offsets))]
    table = b"".join(o.to_bytes(4, "little") for o in offsets)
    value = b"\xfe\xff\x00\xe0" + items[0].to_bytes(4, "little") + table
    for fragment in fragments:
        value += b"\xfe\xff\x00\xe0" + len(fragment).to_bytes(4, "little") + fragment
    ds.PixelData = value
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def test_an_empty_fragment_is_no_byte_of_its_frame(stack: RunningStack, tmp_path: Path) -> None:
    """A zero-length Pixel Data item (even, so legal, and no rule keeps one out of a frame) inside a frame, and
    a frame of one empty item: the plan asked storage for the range {first}-{first - 1}, which it refuses, so
    NGINX closed the connection without an answer (444) for the frame, any frame list holding it and
    bulkdata/7FE00010. A frame is now its non-empty fragments' bytes; an empty frame is an empty part."""
    first = b"\x01" * 64 + b"ab"
    last = b"\x02" * 64 + b"cd"
    # frame 1: `first` then an empty item; frame 2: one empty item; frame 3: `last`
    ds = encapsulated([first, b"", b"", last], [0, 74 + 8, 74 + 8 + 8], frames=3)
    answer = stack.stow([write(ds, tmp_path)])
    assert answer.status_code == 200, answer.text
    url = address(stack, ds)
    for n, expected in ((1, first), (2, b""), (3, last)):
        frame = get(stack, f"{url}/frames/{n}", "image/dicom-rle")
        assert (frame.status_code, frame.headers["Content-Type"], frame.content) == (
            200,
            "image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5",
            expected,
        )
    for path in ("frames/1,2,3", "bulkdata/7FE00010"):
        multipart = get(stack, f"{url}/{path}", 'multipart/related; type="image/dicom-rle"')
        assert multipart.status_code == 200, multipart.text
        boundary = multipart.headers["Content-Type"].split("boundary=")[1]
        parts = multipart.content.split(f"--{boundary}".encode())[1:-1]
        assert [part.split(b"\r\n\r\n", 1)[1][:-2] for part in parts] == [first, b"", last]


def test_encapsulated_uncompressed_frames_are_rendered(stack: RunningStack, tmp_path: Path) -> None:
    """Encapsulated Uncompressed Explicit VR Little Endian (1.2.840.10008.1.2.1.98, PS3.5 A.4.11): each item holds
    one frame's native pixels. Its frames were served, but `rendered` and `thumbnail` were a JSON 406 ("frames in
    Encapsulated Uncompressed Explicit VR Little Endian cannot be rendered here": pydicom has no decoder by that
    name); they are the native frame's image now, an odd-sized 8-bit frame (its item padded to even) included."""
    from tests.e2e.test_real_files import assert_renders_as_pydicom_decodes

    for rows, columns, bits in ((4, 6, 16), (3, 5, 8)):
        native = image(frames=2, Rows=rows, Columns=columns, BitsAllocated=bits, BitsStored=bits, HighBit=bits - 1)
        size = rows * columns * bits // 8
        native.PixelData = (np.arange(2 * rows * columns) * 7 % (1 << bits)).astype(f"<u{bits // 8}").tobytes()
        ds = image(frames=2, Rows=rows, Columns=columns, BitsAllocated=bits, BitsStored=bits, HighBit=bits - 1)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.98"
        ds.PixelData = encapsulate([native.PixelData[:size], native.PixelData[size:]])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        answer = stack.stow([write(ds, tmp_path)])
        assert answer.status_code == 200, answer.text
        url = address(stack, ds)
        for path, media_type in (("frames/2/rendered", "image/png"), ("thumbnail", "image/jpeg")):
            shown = get(stack, f"{url}/{path}", media_type)
            assert (shown.status_code, shown.headers["Content-Type"]) == (200, media_type), shown.text
        second = native.copy()
        second.NumberOfFrames = 1
        second.PixelData = native.PixelData[size:]
        assert_renders_as_pydicom_decodes(second, get(stack, f"{url}/frames/2/rendered", "image/png").content)


def jpeg_xl(syntax: str, fragments: list[bytes], frames: int, folder: Path) -> tuple[Dataset, Path]:
    """A JPEG XL file (Supplement 232; pydicom 3.0 does not know its syntaxes, so it is written as JPEG 2000 and
    its Transfer Syntax UID put in after), Pixel Data items ``fragments`` after an empty offset table."""
    ds = image(frames=frames)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.91"
    ds.PixelData = b"".join(
        [b"\xfe\xff\x00\xe0\x00\x00\x00\x00"]
        + [b"\xfe\xff\x00\xe0" + len(f).to_bytes(4, "little") + f for f in fragments]
    )
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = write(ds, folder)
    data = path.read_bytes()
    old = b"\x02\x00\x10\x00UI\x16\x001.2.840.10008.1.2.4.91"
    new = b"\x02\x00\x10\x00UI\x18\x00" + syntax.encode() + b"\x00"
    assert data.count(old) == 1
    data = data.replace(old, new)
    at = data.index(b"\x02\x00\x00\x00UL\x04\x00") + 8  # File Meta Information Group Length: 2 bytes more
    data = data[:at] + (int.from_bytes(data[at : at + 4], "little") + 2).to_bytes(4, "little") + data[at + 4 :]
    path.write_bytes(data)
    return ds, path


def test_jpeg_xl_frames_are_image_jxl(stack: RunningStack, tmp_path: Path) -> None:
    """JPEG XL (1.2.840.10008.1.2.4.110-112; DCMTK 3.6.9 and Orthanc write and serve them) frames were only
    `application/octet-stream` with the syntax named, and `Accept: image/jxl` (the media type Supplement 232 gives
    them) a JSON 406. A frame split over several items without an offset table (each frame starting with the
    codestream signature FF 0A) could not be told apart from the next: a 406 too."""
    one, two = b"\xff\x0a" + b"\x11" * 40, b"\xff\x0a" + b"\x22" * 40
    cases = [
        ("1.2.840.10008.1.2.4.110", [one, two]),
        ("1.2.840.10008.1.2.4.112", [one[:20], one[20:], two[:10], two[10:]]),  # two items a frame
    ]
    for syntax, fragments in cases:
        ds, path = jpeg_xl(syntax, fragments, 2, tmp_path)
        answer = stack.stow([path])
        assert answer.status_code == 200, answer.text
        url = address(stack, ds)
        for n, expected in ((1, one), (2, two)):
            frame = get(stack, f"{url}/frames/{n}", "image/jxl")
            assert (frame.status_code, frame.headers["Content-Type"], frame.content) == (
                200,
                f"image/jxl; transfer-syntax={syntax}",
                expected,
            ), frame.text
        multipart = get(stack, f"{url}/frames/1,2", "*/*")
        assert multipart.status_code == 200, multipart.text
        assert multipart.headers["Content-Type"].startswith('multipart/related; type="image/jxl"; boundary=')


def test_a_un_value_pydicom_cannot_read_by_its_tag_is_kept_as_un(stack: RunningStack, tmp_path: Path) -> None:
    """An element written with VR UN (a PACS that did not know it passed it on so) under a tag the dictionary
    gives another VR: pydicom converts it by the dictionary, and when its bytes are no such value (no item of
    Referenced Image Sequence) the metadata dropped the element. Its bytes are now its InlineBinary, as dcm2json
    writes it (PS3.18 F.2.7), in the JSON and the XML."""
    ds = image()
    ds.add_new(0x00081140, "OB", b"abcd")  # written as OB, then made UN (pydicom would not write these bytes)
    path = write(ds, tmp_path)
    data = path.read_bytes()
    at = data.index(b"\x08\x00\x40\x11OB")
    path.write_bytes(data[: at + 4] + b"UN" + data[at + 6 :])
    answer = stack.stow([path])
    assert answer.status_code == 200, answer.text
    metadata = get(stack, f"{address(stack, ds)}/metadata", "application/dicom+json")
    assert metadata.json()[0]["00081140"] == {"vr": "UN", "InlineBinary": "YWJjZA=="}
    xml = get(stack, f"{address(stack, ds)}/metadata", "application/dicom+xml")
    assert xml.status_code == 200
    assert '<DicomAttribute tag="00081140" vr="UN" keyword="ReferencedImageSequence"><InlineBinary>YWJjZA==' in (
        xml.text.replace("\n", "").replace("  ", "")
    )


def test_frames_an_offset_table_does_not_count_are_a_406_that_says_so(stack: RunningStack, tmp_path: Path) -> None:
    """Number of Frames 5 over three RLE items whose Basic Offset Table has three entries (a file cut down, or a
    count written wrong): the frames cannot be told apart, a 406 as README says, but its detail said there was
    "no offset table", sending whoever read it to look for the wrong fault. It says the table does not count the
    frames now."""
    frames = [bytes([n]) * 64 + b"ab" for n in range(3)]
    ds = encapsulated(frames, [0, 74, 148], frames=5)
    answer = stack.stow([write(ds, tmp_path)])
    assert answer.status_code == 200, answer.text
    frame = get(stack, f"{address(stack, ds)}/frames/1", "image/dicom-rle")
    assert (frame.status_code, frame.headers["Content-Type"]) == (406, "application/json")
    assert frame.json() == {
        "error": "frames_not_servable",
        "detail": "frames of this instance cannot be served as stored byte ranges (its compressed frames cannot be "
        "told apart: no offset table with an entry for each frame, and fragments that do not each start one); "
        "retrieve the instance instead",
    }


def video(syntax: str, fragments: list[bytes], frames: int) -> Dataset:
    """A video (an endoscope's or an ultrasound cart's MPEG export) of ``frames`` frames: its Pixel Data items are
    ``fragments`` after an empty offset table, as DCMTK's img2dcm and the carts write it (the bytes need not decode:
    the gateway never decodes a video)."""
    ds = image(frames=frames, Rows=4, Columns=6, SamplesPerPixel=3, PhotometricInterpretation="YBR_PARTIAL_420")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PlanarConfiguration = 8, 8, 7, 0
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = b"".join(
        [b"\xfe\xff\x00\xe0\x00\x00\x00\x00"]
        + [b"\xfe\xff\x00\xe0" + len(f).to_bytes(4, "little") + f for f in fragments]
    )
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


@pytest.mark.parametrize(
    ("syntax", "media_type"),
    [("1.2.840.10008.1.2.4.102", "video/mp4"), ("1.2.840.10008.1.2.4.100", "video/mpeg2")],
)
def test_a_video_is_its_pixel_data_bulkdata_as_one_stream(
    stack: RunningStack, tmp_path: Path, syntax: str, media_type: str
) -> None:
    """A video's frames cannot be told apart (a 406, as before), and there was no way to get its stream over WADO-RS:
    `bulkdata/7FE00010`, the BulkDataURI its metadata names, was the same 406 for any Accept. It is now the whole
    stream, every fragment in order, as one part in the video's media type (PS3.18 8.7.3.3.2, note 5), single or
    multipart as asked, and a byte range of it for a player that seeks."""
    stream = [b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 3, b"\x00\x00\x01\xb3" * 50, b"\x42" * 1001 + b"\x00"]
    ds = video(syntax, stream, frames=90)
    answer = stack.stow([write(ds, tmp_path)])
    assert answer.status_code == 200, answer.text
    url = address(stack, ds)
    whole = b"".join(stream)
    metadata = get(stack, f"{url}/metadata", "application/dicom+json").json()[0]
    bulk = metadata["7FE00010"]["BulkDataURI"]
    assert bulk.endswith(f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010")
    content_type = f"{media_type}; transfer-syntax={syntax}"
    single = get(stack, f"{url}/bulkdata/7FE00010", media_type)
    assert (single.status_code, single.headers["Content-Type"], single.content) == (200, content_type, whole)
    multipart = get(stack, f"{url}/bulkdata/7FE00010", f'multipart/related; type="{media_type}"')
    assert multipart.status_code == 200, multipart.text
    boundary = multipart.headers["Content-Type"].split("boundary=")[1]
    parts = multipart.content.split(f"--{boundary}".encode())[1:-1]
    assert len(parts) == 1
    head, body = parts[0].split(b"\r\n\r\n", 1)
    assert f"Content-Type: {content_type}".encode() in head and body[:-2] == whole
    seek = requests.get(
        f"{url}/bulkdata/7FE00010", headers={**stack.api_headers, "Accept": media_type, "Range": "bytes=700-1099"},
        timeout=30,
    )
    assert (seek.status_code, seek.headers["Content-Range"], seek.content) == (
        206, f"bytes 700-1099/{len(whole)}", whole[700:1100]
    )
    frames = get(stack, f"{url}/frames/1", media_type)
    assert frames.status_code == 406 and frames.json()["error"] == "frames_not_servable", frames.text
    assert "its Pixel Data bulkdata is the stream" in frames.json()["detail"]
    assert get(stack, f"{url}/bulkdata/7FE00010", "image/jpeg").status_code == 406
