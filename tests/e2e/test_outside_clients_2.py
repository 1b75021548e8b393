"""Outside DICOMweb clients, round two: what the unmodified Python dicomweb-client (and other clients) ask of the
gateway the ways their documentation shows and the earlier client suites did not, against the real stack on both
storage backends.

PS3.18 10.4.1.1.4 defines the rendered frames resource for a frame list (`frames/1,5,9/rendered`), and Table
8.7.4-1 gives a multi-frame image one rendered media type, `image/gif`: dicomweb-client's
`retrieve_instance_frames_rendered` with several frames was a 404 "no such DICOMweb resource" (as if the instance
were gone). It is now one animated GIF whose frames are the frames' own renderings; an Accept that takes no GIF
is a JSON 406 that says why."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image, ImageSequence
from pydicom.data import get_testdata_file

from gateway.dicom.walker import quiet_validation
from gateway.dicomweb.xml import to_xml
from gateway.tools.synth import make_series, make_wsi
from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import RunningStack, module_stack

# a 30-frame JPEG Baseline YBR cine (Frame Time 33.333 ms), a single-frame CT, and a report (no pixel data)
NAMES = {"cine": "examples_ybr_color.dcm", "ct": "CT_small.dcm", "sr": "reportsi.dcm"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    found = {key: Path(str(get_testdata_file(name))) for key, name in NAMES.items()}
    # a slide of 90 JPEG tiles of 512x512 RGB: 70.8 MB of pixels decoded, over what one rendering holds (64 MiB)
    slide = make_wsi(tmp_path_factory.mktemp("slide"), frames=90, tile=512, seed=2203, clean=True)
    return {**found, "slide": slide}


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> Iterator[RunningStack]:
    yield from module_stack(request, tmp_path_factory, "clients2", list(files.values()))


@pytest.fixture(scope="module")
def root(stack: RunningStack, files: dict[str, Path]) -> str:
    """A token root for the module's studies, as a client is given."""
    return stack.root(stack.issue([uids_of(path)[0] for path in files.values()])["token"])


def instance_url(root: str, path: Path) -> str:
    study, series, sop = uids_of(path)
    return f"{root}/studies/{study}/series/{series}/instances/{sop}"


def gif_frames(body: bytes) -> list[np.ndarray]:
    image = Image.open(io.BytesIO(body))
    assert image.format == "GIF"
    return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]


def assert_json_error(answer: requests.Response, status: int, error: str, detail: str) -> None:
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"error": error, "detail": detail}


def test_rendered_frame_list_is_one_animated_gif_of_the_frames_renderings(root: str, files: dict[str, Path]) -> None:
    cine = files["cine"]
    study, series, sop = uids_of(cine)
    client = DICOMwebClient(url=root)
    body = client.retrieve_instance_frames_rendered(study, series, sop, frame_numbers=[3, 1, 30])
    frames = gif_frames(body)
    assert len(frames) == 3
    image = Image.open(io.BytesIO(body))
    assert image.size == (320, 240)
    assert image.info["loop"] == 0  # a cine loops
    assert image.info["duration"] == 30  # Frame Time 33.333 ms, in the GIF's hundredths of a second
    url = instance_url(root, cine)
    for got, number in zip(frames, (3, 1, 30), strict=True):
        one = requests.get(f"{url}/frames/{number}/rendered", headers={"Accept": "image/gif"}, timeout=60)
        assert one.status_code == 200
        [alone] = gif_frames(one.content)
        assert np.array_equal(got, alone), number
    assert not np.array_equal(frames[0], frames[1])  # the frames asked for, not one frame three times

    # the rendering parameters apply to each frame; the answer is revalidated as every rendering is
    answer = requests.get(f"{url}/frames/1,2/rendered?viewport=64,64", headers={"Accept": "image/*"}, timeout=60)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "image/gif"
    assert answer.headers["Cache-Control"] == "private, no-cache"
    assert [frame.shape for frame in gif_frames(answer.content)] == [(48, 64, 3)] * 2


def test_rendered_frame_list_refusals_are_json(root: str, files: dict[str, Path]) -> None:
    url = instance_url(root, files["cine"])
    for accept in ("image/jpeg", "image/png", "image/png, image/jpeg;q=0.5"):
        assert_json_error(
            requests.get(f"{url}/frames/1,2/rendered", headers={"Accept": accept}, timeout=60),
            406,
            "not_acceptable",
            "several frames are rendered as one animated image/gif only (PS3.18 Table 8.7.4-1): accept image/gif, "
            "or ask for each frame's /frames/{n}/rendered",
        )
    assert_json_error(
        requests.get(f"{url}/frames/1,31/rendered", timeout=60),
        404,
        "frame_not_found",
        "frame 31 does not exist; the instance has 30 frame(s)",
    )
    for spec in ("1,abc", "0,1", "abc"):  # the last was the 404 "no such DICOMweb resource" too
        assert_json_error(
            requests.get(f"{url}/frames/{spec}/rendered", timeout=60),
            400,
            "bad_request",
            "frame number: expected an integer from 1 to 2147483647",
        )
    ct = instance_url(root, files["ct"])
    assert_json_error(
        requests.get(f"{ct}/frames/1,1/rendered", timeout=60),
        400,
        "bad_request",
        "the frame list is longer than the instance's 1 frame(s)",
    )
    assert_json_error(
        requests.get(f"{instance_url(root, files['sr'])}/frames/1,2/rendered", timeout=60),
        406,
        "not_acceptable",
        "this instance has no pixel data: it is no image to render",
    )
    slide = instance_url(root, files["slide"])
    every = ",".join(str(n) for n in range(1, 91))
    assert_json_error(
        requests.get(f"{slide}/frames/{every}/rendered", timeout=60),
        400,
        "bad_request",
        "the frames asked for hold more than 64 MB of pixels: render fewer at once",
    )
    # two blank corner tiles: the same image twice is one GIF frame shown for both (no Frame Time: 100 ms each)
    corners = Image.open(io.BytesIO(requests.get(f"{slide}/frames/1,90/rendered", timeout=60).content))
    assert (corners.format, corners.n_frames, corners.info["duration"]) == ("GIF", 1, 200)
    # one frame stays the single-frame rendering, JPEG by default
    one = requests.get(f"{url}/frames/2/rendered", timeout=60)
    assert one.status_code == 200
    assert one.headers["Content-Type"] == "image/jpeg"


def multipart(parts: list[tuple[dict[str, str], bytes]], boundary: str = "gw-outside-2") -> bytes:
    body = b""
    for headers, data in parts:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        body += f"--{boundary}\r\n{lines}\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


METADATA_REFUSAL = (
    "STOW-RS of metadata and bulk data ({}, PS3.18 10.5.2) is not supported: send each instance as its DICOM Part "
    '10 file, multipart/related; type="application/dicom" (one DICOM Part 10 file per part) or application/dicom'
)


def test_stow_of_metadata_and_bulk_data_is_a_415_that_says_so(stack: RunningStack, tmp_path: Path) -> None:
    """PS3.18 10.5.2's other request form, as a client writes it: the instance's DICOM JSON (or XML) with its pixel
    data as a bulk data part named by Content-Location. The gateway stores Part 10 files only; the 415 said
    "STOW-RS accepts multipart/related; type=application/dicom" (and, for one application/dicom+json body, "must
    be" that), naming neither the form it refused nor the single-part body it takes."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=2201, clean=True)
    dataset = pydicom.dcmread(path)
    study, _, sop = uids_of(path)
    uri = f"{stack.url}/bulk/{sop}/pixels"
    metadata = dataset.to_json_dict(bulk_data_threshold=256, bulk_data_element_handler=lambda _: uri)
    assert metadata["7FE00010"] == {"vr": "OW", "BulkDataURI": uri}
    bulk = ({"Content-Type": "application/octet-stream", "Content-Location": uri}, dataset.PixelData)
    headers = {**stack.api_headers, "Accept": "application/dicom+json"}
    as_json = ({"Content-Type": "application/dicom+json"}, json.dumps([metadata]).encode())
    as_xml = ({"Content-Type": "application/dicom+xml"}, to_xml(metadata))
    sent = [("application/dicom+json", [as_json, bulk]), ("application/dicom+xml", [as_xml, bulk])]
    for part_type, parts in sent:
        for content_type in (
            f'multipart/related; type="{part_type}"; boundary=gw-outside-2',
            f"multipart/related; boundary=gw-outside-2; type={part_type.upper()}; start=\"<metadata>\"",
        ):
            answer = requests.post(
                f"{stack.url}/dicomweb/studies/{study}",
                data=multipart(parts),
                headers={**headers, "Content-Type": content_type},
                timeout=60,
            )
            assert_json_error(answer, 415, "unsupported_media_type", METADATA_REFUSAL.format(part_type))
    single = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=json.dumps([metadata]).encode(),
        headers={**headers, "Content-Type": "application/dicom+json"},
        timeout=60,
    )
    assert_json_error(single, 415, "unsupported_media_type", METADATA_REFUSAL.format("application/dicom+json"))
    other = requests.post(
        f"{stack.url}/dicomweb/studies", data=b"x", headers={**headers, "Content-Type": "image/jpeg"}, timeout=60
    )
    assert_json_error(
        other,
        415,
        "unsupported_media_type",
        'STOW-RS takes multipart/related; type="application/dicom" (one DICOM Part 10 file per part) or '
        "application/dicom",
    )
    found = requests.get(f"{stack.url}/dicomweb/instances?SOPInstanceUID={sop}", headers=headers, timeout=30)
    assert (found.status_code, found.json()) == (200, [])  # nothing of it stored

    # the same instance as its Part 10 file, as the 415 says, is stored
    stored = stack.stow([path])
    assert stored.status_code == 200, stored.text


def test_a_token_that_may_write_is_refused_a_delete_as_insufficient_scope(stack: RunningStack, tmp_path: Path) -> None:
    """dicomweb-client's `delete_study`/`delete_series`/`delete_instance` with a read-write token: deleting is the
    API key's alone (README, Lifecycle), an action no token holds, so RFC 6750 3.1's `insufficient_scope`, as a
    read token's STOW gets. It was `out_of_scope` (a read-only token already got `insufficient_scope`), which told
    the user the study lay outside a token that reaches it; and so it still was, until session 29, for a token in
    the Authorization header or the cookie whose scope did not cover the target (a series token, another study's)."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=2202, clean=True)
    assert stack.stow([path]).status_code == 200
    study, series, sop = uids_of(path)
    writer = stack.issue([study], actions=["read", "write"])["token"]
    reader = stack.issue([study])["token"]
    # whatever the token's scope and transport: one of a series, or of another study, in the header was the 403
    # out_of_scope ("the token reaches only some series of this study"), as if a wider token could delete it
    series_writer = stack.issue([study], series=[series], actions=["read", "write"])["token"]
    elsewhere = stack.issue(["2.25.2202"], actions=["read", "write"])["token"]
    clients = [
        DICOMwebClient(url=stack.root(writer)),
        DICOMwebClient(url=f"{stack.url}/dicomweb", headers={"Authorization": f"Bearer {writer}"}),
        DICOMwebClient(url=f"{stack.url}/dicomweb", headers={"Authorization": f"Bearer {reader}"}),
        DICOMwebClient(url=f"{stack.url}/dicomweb", headers={"Authorization": f"Bearer {series_writer}"}),
        DICOMwebClient(url=f"{stack.url}/dicomweb", headers={"Authorization": f"Bearer {elsewhere}"}),
        DICOMwebClient(url=f"{stack.url}/dicomweb", headers={"Cookie": f"dicomgw_token={elsewhere}"}),
    ]
    for client in clients:
        for method, uids in (
            ("delete_study", (study,)),
            ("delete_series", (study, series)),
            ("delete_instance", (study, series, sop)),
        ):
            with pytest.raises(requests.HTTPError) as refused:
                getattr(client, method)(*uids)
            answer = refused.value.response
            assert (answer.status_code, answer.json()["error"]) == (403, "insufficient_scope"), answer.text
    # nothing was removed; the API key deletes, and the study is then gone
    assert [item["00080018"]["Value"] for item in clients[0].search_for_instances(study)] == [[sop]]
    DICOMwebClient(url=f"{stack.url}/dicomweb", headers=stack.api_headers).delete_study(study)
    gone = requests.get(f"{stack.root(writer)}/studies/{study}/series", timeout=30)
    assert gone.status_code == 404


# The includefield list Google's ez-wsi-dicomweb 6.1.6 sends with every instance search (dicom_web_interface.py,
# DEFAULT_INSTANCE_TAGS), in its order; it reads each slide level's Transfer Syntax UID (0002,0010) from the answer
EZ_WSI_INCLUDES = (
    "00080018 00200013 00280010 00280011 00280002 00280100 00280102 00280103 00280030 00280008 00280009 00480001 "
    "00480002 00480003 00480006 00480007 00480008 00480010 00480012 22000002 22000005 00209228 00209161 00080008 "
    "00020010 00282000 00480105 00280004 00081115 0020000E 00081140 00081155 00081140 00081155 00081072 00401101 "
    "00080119 52009229 00209311"
).split()


def test_an_instance_search_naming_transfer_syntax_uid_answers_it(root: str, files: dict[str, Path]) -> None:
    """Google's ez-wsi-dicomweb (its DicomSlide, tried against this stack outside the suite) searches a slide's
    instances with `includefield=00020010` among others and stops with "DICOM tag 00020010 is missing from the
    DICOM object": the gateway kept group 0002 out of QIDO and answered the syntax only as Available Transfer
    Syntax UID (0008,3002). An instance-level includefield naming Transfer Syntax UID now gets the stored syntax
    (with that element ez-wsi opened the slide and read a patch through the frames resource); `all` and the study
    and series levels are as before."""
    study, series, sop = uids_of(files["slide"])
    query = "&".join(f"includefield={tag}" for tag in EZ_WSI_INCLUDES)
    answer = requests.get(f"{root}/studies/{study}/series/{series}/instances?{query}", timeout=30)
    assert answer.status_code == 200
    assert "Warning" not in answer.headers
    [instance] = answer.json()
    jpeg = {"vr": "UI", "Value": ["1.2.840.10008.1.2.4.50"]}
    assert (instance["00020010"], instance["00083002"]) == (jpeg, jpeg)
    assert instance["00480006"] == {"vr": "UL", "Value": [5120]}  # what else ez-wsi reads of the level is there

    client = DICOMwebClient(url=root)
    ct_study, _, ct_sop = uids_of(files["ct"])
    [found] = client.search_for_instances(ct_study, fields=["TransferSyntaxUID"])
    explicit = {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}  # CT_small.dcm: Explicit VR Little Endian
    assert (found["00080018"]["Value"], found["00020010"]) == ([ct_sop], explicit)
    # named only: `all` keeps File Meta out, and a study or series is no instance with a transfer syntax
    [every] = client.search_for_instances(ct_study, fields=["all"])
    assert "00020010" not in every and every["00083002"] == explicit
    [as_study] = client.search_for_studies(search_filters={"StudyInstanceUID": ct_study}, fields=["00020010"])
    [as_series] = client.search_for_series(ct_study, fields=["00020010"])
    assert "00020010" not in as_study and "00020010" not in as_series


def test_a_base_url_ending_in_a_slash_is_told_what_is_wrong(root: str, files: dict[str, Path]) -> None:
    """A DICOMweb base URL written with a trailing slash, as Orthanc's configuration examples write theirs
    (`.../dicomweb/`), given to dicomweb-client: it joins `/studies` to it, and every request's path holds `//`,
    which the gateway refuses (NGINX and Python must never read a path differently). The 400 said only "the
    request path is not canonical"; it now names the empty segment and where it comes from. Other non-canonical
    paths keep their answer."""
    study, series, _ = uids_of(files["ct"])
    client = DICOMwebClient(url=f"{root}/")
    detail = "the request path is not canonical: it holds an empty segment (//), as a base URL ending in / makes"
    for call in (lambda: client.search_for_studies(), lambda: client.retrieve_series_metadata(study, series)):
        with pytest.raises(requests.HTTPError) as refused:
            call()
        assert_json_error(refused.value.response, 400, "bad_request", detail)
    dotted = requests.get(f"{root}/studies/{study}/%2e%2e", timeout=30)
    assert_json_error(dotted, 400, "bad_request", "the request path is not canonical")
    assert [s["0020000D"]["Value"] for s in DICOMwebClient(url=root).search_for_studies()] != []


def several_frames_refusal(part_type: str) -> str:
    return (
        "several frames are sent as multipart/related only, one part per frame: accept "
        f'multipart/related; type="{part_type}"'
    )


def test_several_frames_in_a_single_part_type_are_a_406_that_says_multipart(root: str, files: dict[str, Path]) -> None:
    """Several frames, or the Pixel Data of a JPEG cine as bulk data, asked for in a single-part media type:
    ez-wsi-dicomweb's `get_bulkdata` sends `Accept: application/octet-stream; transfer-syntax=*`, a client asking
    JPEG frames `image/jpeg`. They cannot be one part, and the 406 said "none of the accepted media types can be
    produced from the stored data (no transcoding)", though the frames are JPEG as asked: it now says that
    several frames go as multipart only, and names the part type to ask for. One frame stays single part."""
    url = instance_url(root, files["cine"])
    cases = [
        ("frames/1,2", "image/jpeg", "image/jpeg"),
        ("frames/1,2", "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", "image/jpeg"),
        ("frames/2,1", "application/octet-stream", "application/octet-stream"),
        ("bulkdata/7FE00010", "application/octet-stream; transfer-syntax=*", "application/octet-stream"),
        ("bulkdata/7FE00010", "image/jpeg", "image/jpeg"),
    ]
    for path, accept, part_type in cases:
        answer = requests.get(f"{url}/{path}", headers={"Accept": accept}, timeout=30)
        assert_json_error(answer, 406, "not_acceptable", several_frames_refusal(part_type))
    # what the 406 says to ask for is served
    asked = requests.get(f"{url}/frames/1,2", headers={"Accept": 'multipart/related; type="image/jpeg"'}, timeout=30)
    assert asked.status_code == 200
    assert asked.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"; boundary=')
    one = requests.get(f"{url}/frames/2", headers={"Accept": "image/jpeg"}, timeout=30)
    assert (one.status_code, one.headers["Content-Type"]) == (200, "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50")
    # a type the frames are not in is the generic refusal, naming what the frames are answered as
    png = requests.get(f"{url}/frames/1,2", headers={"Accept": "image/png"}, timeout=30)
    baseline = "transfer-syntax=1.2.840.10008.1.2.4.50"
    assert_json_error(
        png,
        406,
        "not_acceptable",
        "none of the accepted media types can be produced from the stored data (no transcoding): this resource is "
        f'answered as multipart/related; type="image/jpeg"; {baseline} or multipart/related; '
        f'type="application/octet-stream"; {baseline}',
    )


def test_curl_form_parts_are_refused_for_their_media_type_not_their_sop_class(
    stack: RunningStack, tmp_path: Path
) -> None:
    """The STOW recipe many pages give, `curl -F file=@x.dcm -H "Content-Type: multipart/related;
    type=application/dicom"`: curl keeps the multipart/related type, adds its boundary, and labels the file part
    `application/octet-stream` (with a form-data Content-Disposition). The part was refused with FailureReason
    0x0122, "SOP class not supported", which sent the user after the file's SOP class; it is now 0xC000 (cannot
    understand) with a reason naming the part's media type and what a part must be. With `;type=application/dicom`
    the same curl command stores the file."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=2204, clean=True)
    study, _, sop = uids_of(path)
    key = stack.api_headers["Authorization"]

    def send(form: str) -> dict[str, Any]:
        headers = [f"Authorization: {key}", "Accept: application/dicom+json"]
        headers.append("Content-Type: multipart/related; type=application/dicom")
        command = [curl, "-sS", "-w", "\\n%{http_code}", *(f for h in headers for f in ("-H", h)), "-F", form]
        done = subprocess.run(
            [*command, f"{stack.url}/dicomweb/studies"], capture_output=True, text=True, timeout=60, check=True
        )
        body, _, status = done.stdout.rpartition("\n")
        return {"status": int(status), "answer": json.loads(body)}

    refused = send(f"file=@{path}")
    assert refused["status"] == 409
    [item] = refused["answer"]["00081198"]["Value"]
    assert item["00081197"] == {"vr": "US", "Value": [0xC000]}
    # naming the instance the part holds (README, Ingest; it named none)
    assert item["00081150"] == {"vr": "UI", "Value": [str(pydicom.dcmread(path).SOPClassUID)]}
    assert item["00081155"] == {"vr": "UI", "Value": [sop]}
    assert item["00091001"] == {
        "vr": "LT",
        "Value": [
            "part is application/octet-stream, not application/dicom: each part is one DICOM Part 10 file, "
            "Content-Type: application/dicom"
        ],
    }
    stored = send(f"file=@{path};type=application/dicom")
    assert stored["status"] == 200
    assert [i["00081155"]["Value"] for i in stored["answer"]["00081199"]["Value"]] == [[sop]]
    assert stored["answer"]["00081190"]["Value"] == [f"{stack.url}/dicomweb/studies/{study}"]


def test_a_data_set_sent_without_its_file_meta_is_refused_naming_its_instance(stack: RunningStack) -> None:
    """Orthanc's STOW client sends an instance stored through its REST API as it came, which for pydicom's
    `rtstruct.dcm` is a bare data set (no preamble, no file meta): refused (0xC000, no Part 10 file), but its item
    named no instance, so neither Orthanc nor its user could tell which failed. Its UIDs are read as pydicom reads
    such a data set when told to."""
    path = Path(get_testdata_file("rtstruct.dcm"))
    dataset = pydicom.dcmread(path, force=True)
    answer = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=path.read_bytes(),
        headers={**stack.api_headers, "Content-Type": "application/dicom", "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert answer.status_code == 409, answer.text
    [item] = answer.json()["00081198"]["Value"]
    assert item["00081197"] == {"vr": "US", "Value": [0xC000]}
    assert item["00081150"] == {"vr": "UI", "Value": [str(dataset.SOPClassUID)]}
    assert item["00081155"] == {"vr": "UI", "Value": [str(dataset.SOPInstanceUID)]}


def test_a_parts_own_headers_do_not_change_what_is_stored(stack: RunningStack, tmp_path: Path) -> None:
    """README, Ingest: a part's `transfer-syntax` parameter (here JPEG Baseline, for an Explicit VR Little Endian
    file), its Content-ID and Content-Location and the body's `start` are not read: the file is stored byte for
    byte, and its own Transfer Syntax UID is what the frames and the search say."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=2205, clean=True)
    study, series, sop = uids_of(path)
    part = {
        "Content-Type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50",
        "Content-ID": "<instance-1@outside.example>",
        "Content-Location": "file:///C:/Export/IM000001",
    }
    answer = requests.post(
        f"{stack.url}/dicomweb/studies/{study}",
        data=multipart([(part, path.read_bytes())]),
        headers={
            **stack.api_headers,
            "Accept": "application/dicom+json",
            "Content-Type": 'multipart/related; type="application/dicom"; start="<instance-1@outside.example>"; '
            "boundary=gw-outside-2",
        },
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    url = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    whole = requests.get(url, headers={**stack.api_headers, "Accept": "application/dicom"}, timeout=30)
    assert (whole.headers["Content-Type"], whole.content) == ("application/dicom", path.read_bytes())
    raw = {**stack.api_headers, "Accept": "application/octet-stream"}
    frame = requests.get(f"{url}/frames/1", headers=raw, timeout=30)
    assert frame.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert frame.content == pydicom.dcmread(path).PixelData


def test_an_integer_string_with_a_fraction_is_read_as_pydicom_reads_it(stack: RunningStack, tmp_path: Path) -> None:
    """A modality that writes IS values with a fraction (`1.5`; PS3.5 wants an integer): pydicom reads 1.5 (its
    ISfloat) and dcm2json writes "1.5", but dicomweb-client's `retrieve_instance_metadata` said 1, another number
    than the stored file holds. A non-integer IS is now its number (an integral one stays an integer: `2.0` is 2,
    `+0012` is 12)."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=2206, clean=True)
    with quiet_validation():  # pydicom warns of the invalid IS values it writes and reads
        ds = pydicom.dcmread(path)
        ds.add_new(0x00200012, "IS", "1.5")  # Acquisition Number
        ds.add_new(0x00180086, "IS", "2.0\\-0.25\\+0012")  # Echo Numbers
        ds.save_as(path)
        stored = pydicom.dcmread(path)
        expected = [float(stored.AcquisitionNumber)], [float(v) for v in stored.EchoNumbers]
    assert expected == ([1.5], [2.0, -0.25, 12.0])
    assert stack.stow([path]).status_code == 200
    study, series, sop = uids_of(path)
    client = DICOMwebClient(url=stack.root(stack.issue([study])["token"]))
    metadata = client.retrieve_instance_metadata(study, series, sop)
    assert metadata["00200012"] == {"vr": "IS", "Value": [1.5]}
    assert metadata["00180086"] == {"vr": "IS", "Value": [2, -0.25, 12]}
    assert [type(v) for v in metadata["00180086"]["Value"]] == [int, float, int]
