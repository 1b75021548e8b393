"""Files Orthanc makes, stored in the gateway and read back (session 22).

Orthanc 1.10 (Debian's `orthanc` + `orthanc-dicomweb`), unmodified, is used through its REST API the way its users
use it, to make files nobody on this project wrote: `/tools/create-dicom` (PNG data URIs as Pixel Data: RGB, 8- and
16-bit grayscale; names in several Specific Character Sets; an encapsulated PDF), `/modify` with `Transcode`,
`/anonymize` (Keep, Replace, Remove, KeepPrivateTags, Force), `/merge` and `/split`. They are stored in the gateway by
Orthanc's own DICOMweb STOW client (`/dicom-web/servers/gateway/stow`, the API key in `HttpHeaders`) or by our STOW,
and read back (retrieve, frames, metadata, bulkdata, rendered, WADO-URI, QIDO) against what pydicom decodes of the
file Orthanc gives (`/instances/{id}/file`, or `/modify`'s answer), on both storage backends.

What Orthanc 1.10 here cannot make, and so is not tested: JPEG 2000 and RLE (`Transcode` answers a 500 "Cannot
transcode to transfer syntax": its DCMTK has no encoder for them; the gateway's handling of both is tested with
files other tools write), and a multi-frame image (several "Content" entries make one instance each, a series).
A file `/tools/create-dicom` makes without a "SOPClassUID" tag carries none in its data set (only DCMTK's private
class in the file meta); the gateway refuses it as 0xC000 "SOP Class UID (0008,0016) is missing", as it refuses any
such file (it is no valid instance), and Orthanc's STOW client then fails its whole job.

Each `*_fixed` test failed before its fix (CHANGELOG, session 22).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.encaps import generate_frames

from gateway.tools import orthanc as orthanc_tool
from gateway.tools.orthanc import Orthanc
from tests.e2e.conftest import BACKENDS
from tests.e2e.harness import RunningStack, start_stack
from tests.requirements import require

pytestmark = pytest.mark.third_party

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ORTHANC_METHOD = "Orthanc 1.10.1 - PS 3.15-2021b Table E.1-1 Basic Profile"  # its /anonymize's (0012,0063)
GATEWAY_METHOD = "dicom-gateway PS3.15 E.1-1"  # gateway.phi.deidentify.METHOD
# A small PDF (over the 1 KiB the metadata inlines, so its bulkdata has a URI); odd-length, so the file pads it
PDF = b"%PDF-1.4\n%" + b"x" * 3000 + b"\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
# Orthanc's Transcode targets it has an encoder for here (J2K and RLE: a 500, see above)
TRANSCODED = {
    "jpeg-baseline": "1.2.840.10008.1.2.4.50",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg-ls-near": "1.2.840.10008.1.2.4.81",
    "deflated": "1.2.840.10008.1.2.1.99",
    "big-endian": "1.2.840.10008.1.2.2",
    "implicit": "1.2.840.10008.1.2",
}
POLICY = """
version = "orthanc-made"

[destinations.main]
storage = "default"
region = "eu-west-1"
identifiable_allowed = false

[default]
action = "deidentify"
destination = "main"
"""


def png(kind: str, width: int = 16, height: int = 12) -> str:
    """A PNG data URI of a gradient: ``gray8``, ``rgb`` or ``gray16`` (16-bit grayscale)."""
    count = width * height
    if kind == "rgb":
        image = Image.fromarray((np.arange(count * 3) % 251).astype(np.uint8).reshape(height, width, 3), "RGB")
    elif kind == "gray16":
        image = Image.fromarray((np.arange(count) * 300 % 65536).astype(np.uint16).reshape(height, width))
    else:
        image = Image.fromarray((np.arange(count) * 7 % 256).astype(np.uint8).reshape(height, width), "L")
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def parse_multipart(response: requests.Response) -> list[tuple[str, bytes]]:
    header = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(header + response.content)
    assert message.is_multipart()
    return [(str(part["Content-Type"]), part.get_payload(decode=True)) for part in message.get_payload()]


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    backend = request.param
    moto = request.getfixturevalue("moto_server") if backend == "s3" else None
    running = start_stack(tmp_path_factory.mktemp(f"orthanc-made-{backend}"), backend, moto)
    try:
        yield running
    finally:
        running.stack.stop()


@pytest.fixture(scope="module")
def orthanc(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc with the gateway as its DICOMweb server `gateway` (the API key as a bearer header)."""
    servers = {"gateway": {"Url": f"{stack.url}/dicomweb/", "HttpHeaders": stack.api_headers}}
    try:
        running = orthanc_tool.start_orthanc(tmp_path_factory.mktemp("orthanc-made"), servers)
    except orthanc_tool.OrthancMissing as missing:
        require(False, f"{missing} (`make test` installs Debian's orthanc and orthanc-dicomweb with apt)")
        raise
    try:
        yield running
    finally:
        running.stop()


def create(orthanc: Orthanc, tags: dict[str, str], content: str) -> str:
    """`/tools/create-dicom` as its users call it; the new instance's Orthanc ID."""
    answer = orthanc.post("/tools/create-dicom", {"Tags": tags, "Content": content})
    assert answer.status_code == 200, answer.text
    identifier: str = answer.json()["ID"]
    return identifier


def file_of(orthanc: Orthanc, instance: str) -> bytes:
    answer = orthanc.get(f"/instances/{instance}/file")
    assert answer.status_code == 200
    return answer.content


def modified(orthanc: Orthanc, instance: str, body: dict[str, Any]) -> bytes:
    """`/instances/{id}/modify`'s file (Orthanc answers it, storing nothing)."""
    answer = orthanc.post(f"/instances/{instance}/modify", body)
    assert answer.status_code == 200, answer.text[:300]
    return answer.content


def stow_by_orthanc(orthanc: Orthanc, resources: list[str], count: int) -> None:
    """Orthanc's own DICOMweb STOW client sends ``resources`` (its IDs) to the gateway."""
    answer = orthanc.post("/dicom-web/servers/gateway/stow", {"Resources": resources})
    assert answer.status_code == 200, f"{answer.text}\n{orthanc.log.read_text(errors='replace')[-1500:]}"
    assert int(answer.json()["InstancesCount"]) == count


def stow_ours(stack: RunningStack, folder: Path, blobs: list[bytes]) -> requests.Response:
    paths = []
    for blob in blobs:
        path = folder / f"{pydicom.dcmread(io.BytesIO(blob)).SOPInstanceUID}.dcm"
        path.write_bytes(blob)
        paths.append(path)
    return stack.stow(paths)


def instance_url(stack: RunningStack, ds: pydicom.Dataset) -> str:
    return (
        f"{stack.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def get(stack: RunningStack, url: str, accept: str | None = None, **headers: str) -> requests.Response:
    if accept is not None:
        headers["Accept"] = accept
    return requests.get(url, headers={**stack.api_headers, **headers}, timeout=60)


def wado_uri(stack: RunningStack, ds: pydicom.Dataset, **params: str) -> requests.Response:
    query = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID}
    return requests.get(
        f"{stack.url}/dicomweb/wado",
        params={**query, "objectUID": ds.SOPInstanceUID, **params},
        headers=stack.api_headers,
        timeout=60,
    )


@pytest.mark.parametrize("kind", ["gray8", "rgb", "gray16"])
def test_images_orthanc_creates_and_stores_by_its_stow_client(
    stack: RunningStack, orthanc: Orthanc, kind: str
) -> None:
    """A PNG turned into a secondary capture by `/tools/create-dicom`, stored by Orthanc's STOW client: the
    instance is Orthanc's file byte for byte, its frame is pydicom's pixels, its metadata and rendering agree."""
    tags = {"PatientName": f"Created^{kind}", "PatientID": "ORTHANC-MADE", "SOPClassUID": SECONDARY_CAPTURE}
    made = create(orthanc, {**tags, "Modality": "OT"}, png(kind))
    blob = file_of(orthanc, made)
    ds = pydicom.dcmread(io.BytesIO(blob))
    stow_by_orthanc(orthanc, [made], 1)
    url = instance_url(stack, ds)

    whole = get(stack, url, "application/dicom")
    assert (whole.status_code, whole.headers["Content-Type"], whole.content) == (200, "application/dicom", blob)
    uri = wado_uri(stack, ds, contentType="application/dicom")
    assert (uri.status_code, uri.headers["Content-Type"], uri.content) == (200, "application/dicom", blob)

    frame = get(stack, f"{url}/frames/1", "application/octet-stream")
    assert frame.status_code == 200
    assert frame.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert frame.content == ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()

    [metadata] = get(stack, f"{url}/metadata", "application/dicom+json").json()
    for keyword, tag in (("Rows", "00280010"), ("Columns", "00280011"), ("BitsAllocated", "00280100")):
        assert metadata[tag] == {"vr": "US", "Value": [ds[keyword].value]}
    assert metadata["00280004"] == {"vr": "CS", "Value": [ds.PhotometricInterpretation]}

    rendered = get(stack, f"{url}/rendered", "image/png")
    assert (rendered.status_code, rendered.headers["Content-Type"]) == (200, "image/png")
    image = Image.open(io.BytesIO(rendered.content))
    assert (image.mode, image.size) == ("RGB" if kind == "rgb" else "L", (ds.Columns, ds.Rows))
    if kind == "rgb":  # no window applies to colour: the pixels themselves
        assert np.array_equal(np.asarray(image), ds.pixel_array)


def test_a_content_array_makes_a_series_stored_whole(stack: RunningStack, orthanc: Orthanc) -> None:
    """Several "Content" entries make one instance each, in one new series (Orthanc 1.10 makes no multi-frame
    image of them): Orthanc's STOW client stores the series, QIDO lists its instances in order, each frame is
    pydicom's pixels of that instance."""
    body = {
        "Tags": {"PatientID": "ORTHANC-SERIES", "SOPClassUID": SECONDARY_CAPTURE, "Modality": "OT"},
        "Content": [{"Content": png(kind)} for kind in ("gray8", "rgb", "gray16")],
    }
    answer = orthanc.post("/tools/create-dicom", body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["Path"] == f"/series/{answer.json()['ID']}"
    instances = orthanc.get(f"/series/{answer.json()['ID']}/instances").json()
    assert len(instances) == 3
    stow_by_orthanc(orthanc, [answer.json()["ID"]], 3)
    written = [pydicom.dcmread(io.BytesIO(file_of(orthanc, instance["ID"]))) for instance in instances]
    series = {(ds.StudyInstanceUID, ds.SeriesInstanceUID) for ds in written}
    [(study, series_uid)] = series
    listed = get(stack, f"{stack.url}/dicomweb/studies/{study}/series/{series_uid}/instances", "application/dicom+json")
    assert sorted(match["00080018"]["Value"][0] for match in listed.json()) == sorted(
        ds.SOPInstanceUID for ds in written
    )
    for ds in written:
        frame = get(stack, f"{instance_url(stack, ds)}/frames/1", "application/octet-stream")
        assert frame.status_code == 200
        assert frame.content == ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize(
    ("charset", "name", "description"),
    [
        ("ISO_IR 192", "Müller^Zoë", "Étude thoracique"),
        ("ISO_IR 100", "Müller^Zoë", "Étude thoracique"),
        ("ISO_IR 144", "Иванов^Иван", "Исследование"),
    ],
)
def test_names_in_the_character_set_orthanc_writes(
    stack: RunningStack, orthanc: Orthanc, tmp_path: Path, charset: str, name: str, description: str
) -> None:
    """Orthanc encodes the tags in the Specific Character Set it is given; the metadata and QIDO give the values
    pydicom decodes from the file, whatever the set."""
    tags = {"SpecificCharacterSet": charset, "PatientName": name, "StudyDescription": description}
    made = create(orthanc, {**tags, "PatientID": "ORTHANC-CS", "SOPClassUID": SECONDARY_CAPTURE}, png("gray8"))
    blob = file_of(orthanc, made)
    ds = pydicom.dcmread(io.BytesIO(blob))
    assert (str(ds.PatientName), ds.StudyDescription, ds.SpecificCharacterSet) == (name, description, charset)
    assert stow_ours(stack, tmp_path, [blob]).status_code == 200

    [metadata] = get(stack, f"{instance_url(stack, ds)}/metadata", "application/dicom+json").json()
    assert metadata["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": name}]}
    assert metadata["00081030"] == {"vr": "LO", "Value": [description]}
    found = get(stack, f"{stack.url}/dicomweb/studies?StudyInstanceUID={ds.StudyInstanceUID}", "application/dicom+json")
    [study] = found.json()
    assert (study["00100010"], study["00081030"]) == (metadata["00100010"], metadata["00081030"])


@pytest.mark.parametrize(
    ("syntax", "kind"),
    # JPEG baseline holds 8-bit samples only (Orthanc refuses a 16-bit image)
    [(s, k) for s in TRANSCODED for k in ("gray8", "rgb", "gray16") if (s, k) != ("jpeg-baseline", "gray16")],
)
def test_files_orthanc_transcodes(
    stack: RunningStack, orthanc: Orthanc, tmp_path: Path, kind: str, syntax: str
) -> None:
    """`/modify` with `Transcode`: compressed frames are the file's own codestream (pydicom's frame of the
    encapsulated Pixel Data), deflated and big-endian ones its decoded pixels in little endian; each is rendered,
    retrieved as Orthanc wrote it and listed by QIDO."""
    made = create(orthanc, {"PatientID": "ORTHANC-TX", "SOPClassUID": SECONDARY_CAPTURE, "Modality": "OT"}, png(kind))
    blob = modified(orthanc, made, {"Transcode": TRANSCODED[syntax], "Force": True})
    ds = pydicom.dcmread(io.BytesIO(blob))
    assert ds.file_meta.TransferSyntaxUID == TRANSCODED[syntax]
    assert stow_ours(stack, tmp_path, [blob]).status_code == 200
    url = instance_url(stack, ds)

    whole = get(stack, url, "application/dicom")
    assert (whole.status_code, whole.content) == (200, blob)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        frame = get(stack, f"{url}/frames/1", "*/*")
        assert frame.status_code == 200
        [(part_type, body)] = parse_multipart(frame)
        assert part_type.endswith(f"; transfer-syntax={TRANSCODED[syntax]}")
        assert body == next(generate_frames(ds.PixelData, number_of_frames=1))
    else:
        frame = get(stack, f"{url}/frames/1", "application/octet-stream")
        assert frame.status_code == 200
        assert frame.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        assert frame.content == ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()
    rendered = get(stack, f"{url}/rendered", "image/png")
    assert (rendered.status_code, rendered.headers["Content-Type"]) == (200, "image/png")
    image = Image.open(io.BytesIO(rendered.content))
    assert image.size == (ds.Columns, ds.Rows)
    if kind == "rgb":
        # colour has no window: the pixels Orthanc decodes of the same file (pydicom has no JPEG Lossless decoder
        # here), YBR_FULL_422 of JPEG baseline included
        put = requests.post(f"{orthanc.url}/instances", data=blob, timeout=60)
        assert put.status_code == 200, put.text
        preview = requests.get(
            f"{orthanc.url}/instances/{put.json()['ID']}/frames/0/preview", headers={"Accept": "image/png"}, timeout=60
        )
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(preview.content)).convert("RGB")))
    found = get(stack, f"{stack.url}/dicomweb/instances?SOPInstanceUID={ds.SOPInstanceUID}", "application/dicom+json")
    assert [match["00080018"]["Value"] for match in found.json()] == [[ds.SOPInstanceUID]]


def multiframe(kind: str, frames: int = 4, rows: int = 12, columns: int = 16) -> bytes:
    """A native multi-frame secondary capture for Orthanc to transcode (`/tools/create-dicom` makes none): 8-bit
    gray or RGB, or 12 bits stored in 16."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    samples, bits = (3, 8) if kind == "rgb" else (1, 16 if kind == "gray12" else 8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = {
        "gray8": "1.2.840.10008.5.1.4.1.1.7.2",
        "gray12": "1.2.840.10008.5.1.4.1.1.7.3",
        "rgb": "1.2.840.10008.5.1.4.1.1.7.4",
    }[kind]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "ORTHANC-MF", "Multi", "OT", 1, 1
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.NumberOfFrames = rows, columns, samples, frames
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    stored = 12 if bits == 16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, 0
    values = np.arange(frames * rows * columns * samples) * 13 % (1 << stored)
    ds.PixelData = values.astype(np.uint16 if bits == 16 else np.uint8).tobytes()
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("syntax", "kind"),
    # JPEG baseline holds 8-bit samples only
    [
        (s, k)
        for s in TRANSCODED
        if s != "implicit"
        for k in ("gray8", "gray12", "rgb")
        if (s, k) != ("jpeg-baseline", "gray12")
    ],
)
def test_multiframe_files_orthanc_transcodes(
    stack: RunningStack, orthanc: Orthanc, tmp_path: Path, kind: str, syntax: str
) -> None:
    """DCMTK's encapsulation of a multi-frame image (Orthanc's `Transcode`: an empty Basic Offset Table, one
    fragment a frame): every frame is the file's own, pydicom's frame of the encapsulated Pixel Data or its decoded
    pixels in little endian, and a middle frame is rendered."""
    put = requests.post(f"{orthanc.url}/instances", data=multiframe(kind), timeout=60)
    assert put.status_code == 200, put.text
    blob = modified(orthanc, put.json()["ID"], {"Transcode": TRANSCODED[syntax], "Force": True})
    ds = pydicom.dcmread(io.BytesIO(blob))
    assert stow_ours(stack, tmp_path, [blob]).status_code == 200
    url = instance_url(stack, ds)
    compressed = ds.file_meta.TransferSyntaxUID.is_compressed
    expected = (
        list(generate_frames(ds.PixelData, number_of_frames=4))
        if compressed
        else [frame.astype(frame.dtype.newbyteorder("<")).tobytes() for frame in ds.pixel_array]
    )
    answer = get(stack, f"{url}/frames/1,2,3,4", "*/*")
    assert answer.status_code == 200
    assert [body for _, body in parse_multipart(answer)] == expected
    rendered = get(stack, f"{url}/frames/3/rendered", "image/png")
    assert (rendered.status_code, rendered.headers["Content-Type"]) == (200, "image/png")
    assert Image.open(io.BytesIO(rendered.content)).size == (ds.Columns, ds.Rows)


def stored_pdf(stack: RunningStack, orthanc: Orthanc, folder: Path, syntax: str) -> pydicom.Dataset:
    """An Encapsulated PDF `/tools/create-dicom` made of PDF, stored by Orthanc's STOW client as created, or
    by ours `Transcode`d to ``syntax``."""
    made = create(orthanc, {"PatientID": "ORTHANC-PDF", "PatientName": "Pdf^Doc", "Modality": "DOC"},
                  "data:application/pdf;base64," + base64.b64encode(PDF).decode())  # fmt: skip
    if syntax == "as-created":
        blob = file_of(orthanc, made)
        stow_by_orthanc(orthanc, [made], 1)
    else:
        blob = modified(orthanc, made, {"Transcode": TRANSCODED[syntax], "Force": True})
        assert stow_ours(stack, folder, [blob]).status_code == 200
    ds = pydicom.dcmread(io.BytesIO(blob))
    assert ds.file_meta.TransferSyntaxUID == TRANSCODED.get(syntax, "1.2.840.10008.1.2.1")
    # Orthanc pads the odd length with a NUL (and writes no Encapsulated Document Length)
    assert bytes(ds.EncapsulatedDocument) == PDF + b"\0"
    return ds


@pytest.mark.parametrize("syntax", ["as-created", "deflated", "big-endian"])
def test_an_encapsulated_pdf_is_its_bulkdata_as_application_pdf_fixed(
    stack: RunningStack, orthanc: Orthanc, tmp_path: Path, syntax: str
) -> None:
    """`/tools/create-dicom` with a PDF data URI makes an Encapsulated PDF. Its metadata's BulkDataURI answered
    only application/octet-stream: `Accept: application/pdf` (OHIF's `?accept=application/pdf` too) was a JSON 406,
    and the default was `multipart/related; type="application/octet-stream"`. The document is its own media type
    now, as `/rendered` already served it; octet-stream is still served when asked."""
    ds = stored_pdf(stack, orthanc, tmp_path, syntax)
    document = bytes(ds.EncapsulatedDocument)
    url = instance_url(stack, ds)
    [metadata] = get(stack, f"{url}/metadata", "application/dicom+json").json()
    assert metadata["00420012"] == {"vr": "LO", "Value": ["application/pdf"]}
    bulk = metadata["00420011"]["BulkDataURI"]
    assert bulk == f"{url}/bulkdata/00420011"

    for answer in (get(stack, bulk, "application/pdf"), get(stack, f"{bulk}?accept=application/pdf")):
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/pdf")
        assert answer.content == document
        assert answer.headers["Accept-Ranges"] == "bytes"
    default = get(stack, bulk)
    assert default.status_code == 200
    assert default.headers["Content-Type"].startswith('multipart/related; type="application/pdf"; boundary=')
    assert parse_multipart(default) == [("application/pdf", document)]
    named = get(stack, bulk, 'multipart/related; type="application/pdf"')
    assert (named.status_code, parse_multipart(named)) == (200, [("application/pdf", document)])
    head = get(stack, bulk, "application/pdf", Range="bytes=0-7")
    assert (head.status_code, head.headers["Content-Type"], head.content) == (206, "application/pdf", b"%PDF-1.4")
    assert head.headers["Content-Range"] == f"bytes 0-7/{len(document)}"
    octets = get(stack, bulk, "application/octet-stream")
    assert (octets.status_code, octets.headers["Content-Type"], octets.content) == (
        200,
        "application/octet-stream",
        document,
    )
    refused = get(stack, bulk, "image/png")
    assert (refused.status_code, refused.headers["Content-Type"]) == (406, "application/json")


@pytest.mark.parametrize("syntax", ["as-created", "deflated", "big-endian"])
def test_an_encapsulated_pdf_renders_as_itself_in_any_syntax_fixed(
    stack: RunningStack, orthanc: Orthanc, tmp_path: Path, syntax: str
) -> None:
    """The rendering of a document is the document, `/rendered` and WADO-URI alike: a deflated or big-endian one's
    (Orthanc's `Transcode` makes them) was a JSON 406 "no pixel data", its value having no stored byte range."""
    ds = stored_pdf(stack, orthanc, tmp_path, syntax)
    document = bytes(ds.EncapsulatedDocument)
    url = instance_url(stack, ds)
    for rendered in (get(stack, f"{url}/rendered"), wado_uri(stack, ds, contentType="application/pdf")):
        assert (rendered.status_code, rendered.headers["Content-Type"], rendered.content) == (
            200,
            "application/pdf",
            document,
        )


def test_a_document_of_another_type_stays_octet_stream(stack: RunningStack, tmp_path: Path) -> None:
    """Only PDF is served as itself: an uploaded text/html "document" would run its scripts on the gateway's
    origin, so its bulkdata stays application/octet-stream and `Accept: text/html` is a 406."""
    from tests.e2e.test_outside_files import image, write

    ds = image(PatientID="ORTHANC-HTML")
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.MIMETypeOfEncapsulatedDocument = "text/html"
    ds.EncapsulatedDocument = b"<script>alert(1)</script>" * 60
    assert stack.stow([write(ds, tmp_path)]).status_code == 200
    bulk = f"{instance_url(stack, ds)}/bulkdata/00420011"
    refused = get(stack, bulk, "text/html")
    assert (refused.status_code, refused.headers["Content-Type"]) == (406, "application/json")
    octets = get(stack, bulk)
    assert octets.headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    assert parse_multipart(octets) == [("application/octet-stream", bytes(ds.EncapsulatedDocument))]


def test_anonymized_modified_merged_and_split_studies(stack: RunningStack, orthanc: Orthanc) -> None:
    """Studies Orthanc's `/anonymize` (Keep, Replace, Remove, KeepPrivateTags, Force), `/modify`, `/merge` and
    `/split` made, stored by its STOW client: each instance is Orthanc's file byte for byte, QIDO lists each study
    with its instance count, and the metadata says what Orthanc wrote (PatientIdentityRemoved, its method, the
    private element it kept with its creator)."""
    tags = {"PatientName": "Doe^Jane", "PatientID": "ORTHANC-ANON", "PatientBirthDate": "19700101",
            "StudyDescription": "CT chest", "SeriesDescription": "axial", "InstitutionName": "General Hospital",
            "SOPClassUID": SECONDARY_CAPTURE, "Modality": "OT", "BurnedInAnnotation": "NO"}  # fmt: skip
    source = create(orthanc, tags, png("gray8"))
    ds = pydicom.dcmread(io.BytesIO(file_of(orthanc, source)))
    ds.private_block(0x0011, "ACME 1.0", create=True).add_new(0x01, "LO", "kept private value")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert requests.delete(f"{orthanc.url}/instances/{source}", timeout=30).status_code == 200  # replaced by:
    put = requests.post(f"{orthanc.url}/instances", data=buffer.getvalue(), timeout=60)
    assert put.status_code == 200, put.text
    study = put.json()["ParentStudy"]
    other = orthanc.get(f"/instances/{create(orthanc, {**tags, 'SeriesDescription': 'coronal'}, png('gray8'))}/series")

    made: dict[str, str] = {}
    for name, body in {
        "basic": {},
        "keep-replace-remove": {"Keep": ["StudyDescription"], "Replace": {"PatientName": "Research^Subject"},
                                "Remove": ["InstitutionName"], "Force": True},  # fmt: skip
        "private-kept": {"KeepPrivateTags": True},
    }.items():
        answer = orthanc.post(f"/studies/{study}/anonymize", body)
        assert answer.status_code == 200, answer.text
        made[name] = answer.json()["ID"]
    answer = orthanc.post(f"/studies/{study}/modify", {"Replace": {"StudyDescription": "modified"}, "Force": True})
    made["modified"] = answer.json()["ID"]
    merged = orthanc.post(f"/studies/{made['modified']}/merge", {"Resources": [other.json()["ID"]]})
    assert merged.status_code == 200, merged.text
    series_of_basic = orthanc.get(f"/studies/{made['basic']}").json()["Series"]
    split = orthanc.post(f"/studies/{made['basic']}/split", {"Series": series_of_basic, "KeepSource": True})
    assert split.status_code == 200, split.text
    made["split"] = split.json()["TargetStudy"]

    for name, identifier in made.items():
        instances = orthanc.get(f"/studies/{identifier}/instances").json()
        stow_by_orthanc(orthanc, [identifier], len(instances))
        study_uid = orthanc.get(f"/studies/{identifier}").json()["MainDicomTags"]["StudyInstanceUID"]
        found = get(stack, f"{stack.url}/dicomweb/studies?StudyInstanceUID={study_uid}", "application/dicom+json")
        [match] = found.json()
        assert match["00201208"] == {"vr": "IS", "Value": [len(instances)]}, name
        for instance in instances:
            blob = file_of(orthanc, instance["ID"])
            written = pydicom.dcmread(io.BytesIO(blob))
            url = instance_url(stack, written)
            assert get(stack, url, "application/dicom").content == blob, name
            [metadata] = get(stack, f"{url}/metadata", "application/dicom+json").json()
            assert metadata["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": str(written.PatientName)}]}
            if "PatientIdentityRemoved" in written:
                assert metadata["00120062"] == {"vr": "CS", "Value": [written.PatientIdentityRemoved]}
            if "DeidentificationMethod" in written:
                assert metadata["00120063"] == {"vr": "LO", "Value": [written.DeidentificationMethod]}
            if name == "private-kept":
                assert metadata["00110010"] == {"vr": "LO", "Value": ["ACME 1.0"]}
                assert metadata["00111001"] == {"vr": "LO", "Value": ["kept private value"]}
            if name == "keep-replace-remove":
                assert metadata["00100010"]["Value"] == [{"Alphabetic": "Research^Subject"}]
                assert metadata["00081030"] == {"vr": "LO", "Value": ["CT chest"]}
                assert "00080080" not in metadata
    # the merged study holds both series, the split one the series taken from the anonymized study
    merged_uid = orthanc.get(f"/studies/{made['modified']}").json()["MainDicomTags"]["StudyInstanceUID"]
    series = get(stack, f"{stack.url}/dicomweb/studies/{merged_uid}/series", "application/dicom+json").json()
    assert len(series) == 2


@pytest.fixture(scope="module")
def anonymized(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instance Orthanc's `/anonymize` made with its defaults (PS3.15 2021b Basic Profile)."""
    tags = {"PatientName": "Doe^John", "PatientID": "ORTHANC-PHI", "PatientBirthDate": "19650402",
            "SOPClassUID": SECONDARY_CAPTURE, "Modality": "CT", "BurnedInAnnotation": "NO",
            "InstitutionName": "General Hospital", "AccessionNumber": "ACC-9"}  # fmt: skip
    made = create(orthanc, tags, png("gray8"))
    answer = orthanc.post(f"/instances/{made}/anonymize", {})
    assert answer.status_code == 200, answer.text
    path = tmp_path_factory.mktemp("orthanc-anonymized") / "anonymized.dcm"
    path.write_bytes(answer.content)
    ds = pydicom.dcmread(path)
    assert (ds.PatientIdentityRemoved, ds.DeidentificationMethod) == ("YES", ORTHANC_METHOD)
    return path


def test_an_orthanc_anonymized_file_is_not_clean_to_the_default_scan(anonymized: Path) -> None:
    """README (PHI): Orthanc's Basic Profile writes dummies a scanner cannot tell from identifiers (Patient's Name
    "Anonymized1", a random UUID as Patient ID), new UIDs under DCMTK's root rather than `2.25.`, and a fresh
    Instance Creation Date and Time (X/D): the scan fails closed on each, whatever PatientIdentityRemoved says."""
    scan = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", str(anonymized)], capture_output=True, text=True, check=False
    )
    assert scan.returncode == 1, scan.stderr
    report = json.loads(scan.stdout)
    assert report["status"] == "phi"
    assert [(f["keyword"], f["rule"]) for f in report["findings"]] == [
        ("MediaStorageSOPInstanceUID", "e1-1:U"),
        ("InstanceCreationDate", "e1-1:X/D"),
        ("InstanceCreationTime", "e1-1:X/Z/D"),
        ("SOPInstanceUID", "e1-1:U"),
        ("PatientName", "e1-1:Z"),
        ("PatientID", "e1-1:Z/D"),
        ("StudyInstanceUID", "e1-1:U"),
        ("SeriesInstanceUID", "e1-1:U"),
    ]


def test_de_identifying_an_orthanc_anonymized_file_keeps_orthancs_method_fixed(
    anonymized: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A `deidentify` policy stores an Orthanc-anonymized file de-identified again (202, coerced). The stored
    file's De-identification Method was the gateway's alone: Orthanc's step was erased from the record. PS3.3
    C.7.1.1 makes the method (and its code sequence) hold each successive step: Orthanc's value comes first now."""
    base = tmp_path_factory.mktemp("orthanc-made-phi")
    policy = base / "policy.toml"
    policy.write_text(POLICY)
    running = start_stack(base / "stack", "file", None, DICOMGW_PHI_POLICY=str(policy))
    try:
        answer = running.stow([anonymized], **{"X-DICOMGW-Tenant": "research", "X-DICOMGW-Region": "eu-west-1"})
        assert answer.status_code == 202, answer.text
        [stored] = answer.json()["00081199"]["Value"]
        assert stored["00081196"] == {"vr": "US", "Value": [0xB000]}
        url = stored["00081190"]["Value"][0]
        blob = get(running, url, "application/dicom").content
        ds = pydicom.dcmread(io.BytesIO(blob))
        assert ds.PatientIdentityRemoved == "YES"
        assert list(ds.DeidentificationMethod) == [ORTHANC_METHOD, GATEWAY_METHOD]
        assert [code.CodeValue for code in ds.DeidentificationMethodCodeSequence] == ["113100"]
        [metadata] = get(running, f"{url}/metadata", "application/dicom+json").json()
        assert metadata["00120063"] == {"vr": "LO", "Value": [ORTHANC_METHOD, GATEWAY_METHOD]}
    finally:
        running.stack.stop()
