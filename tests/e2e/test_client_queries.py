"""WADO-URI and QIDO-RS requests as third-party clients send them, against the real stack holding pydicom's test
files: a single-frame CT, a two-frame RLE colour image and an SR.

PS3.18 9.3: without ``contentType`` the Accept header selects the media type (a request with `Accept:
application/dicom` was sent a JPEG); 9.5.2.1: a ``frameNumber`` past the instance's frames, or given twice, is a
400 (it was a 404, and a second one was ignored). Table 8.7.4-1: a single-frame image's rendered resource answers
``image/gif`` too (it was a 406). 9.4.1.2.1: ``anonymize`` has the one value ``yes`` (refused: nothing is
de-identified); another value was ignored, so ``anonymize=true`` was sent identified data. QIDO: an empty value is
universal matching (PS3.4 C.2.2.2.3), a return key; of an attribute the catalog does not match it was a 400. A
parameter, key or includefield value QIDO does not support is ignored and named in a Warning (PS3.18 8.3): a 400
before, so a viewer adding its own parameter (jQuery's ``_``) got no study list."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom.data import get_testdata_file

from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import RunningStack, module_stack

NAMES = {"ct": "CT_small.dcm", "rgb2": "SC_rgb_rle_2frame.dcm", "sr": "reportsi.dcm"}
# What Chromium sends for an <img> and for a page it opens: neither names a type WADO-URI answers before a wildcard
IMG_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
PAGE_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3;q=0.7"
)


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    found = {key: get_testdata_file(name) for key, name in NAMES.items()}
    return {key: Path(str(path)) for key, path in found.items()}


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> Iterator[RunningStack]:
    yield from module_stack(request, tmp_path_factory, "clients", list(files.values()))


@pytest.fixture(scope="module")
def root(stack: RunningStack, files: dict[str, Path]) -> str:
    """A token root for the three studies, as a viewer is given."""
    return stack.root(stack.issue([uids_of(path)[0] for path in files.values()])["token"])


def wado(root: str, path: Path, extra: str = "") -> str:
    study, series, sop = uids_of(path)
    return f"{root}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}{extra}"


def assert_400(answer: requests.Response, needle: str) -> None:
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == "bad_request"
    assert needle in answer.json()["detail"]


def test_wado_uri_without_content_type_answers_what_the_accept_header_asks(
    root: str, files: dict[str, Path]
) -> None:
    answer = requests.get(wado(root, files["ct"]), headers={"Accept": "application/dicom"}, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["Content-Type"] == "application/dicom"
    assert answer.content == files["ct"].read_bytes()
    answer = requests.get(wado(root, files["ct"]), headers={"Accept": "image/png"}, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["Content-Type"] == "image/png"
    assert answer.content.startswith(b"\x89PNG\r\n\x1a\n")
    # contentType wins over the header (PS3.18 8.7): the header is only read without it
    answer = requests.get(
        wado(root, files["ct"], "&contentType=image/jpeg"), headers={"Accept": "application/dicom"}, timeout=30
    )
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "image/jpeg"
    # a browser's own Accept keeps the defaults (PS3.18 Table 8.7.4-1): JPEG for an image, HTML for an SR
    for accept in (IMG_ACCEPT, PAGE_ACCEPT, "*/*"):
        answer = requests.get(wado(root, files["ct"]), headers={"Accept": accept}, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/jpeg"), accept
        assert answer.content.startswith(b"\xff\xd8")
        answer = requests.get(wado(root, files["sr"]), headers={"Accept": accept}, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "text/html; charset=utf-8"), accept
        assert answer.content.startswith(b"<!DOCTYPE html>")


# Java's HttpURLConnection sends this when the caller sets no Accept (ImageIO.read(url), a Java viewer's applet)
JAVA_ACCEPT = "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"


def test_a_tie_between_image_types_is_the_jpeg_default_as_java_sends_it(root: str, files: dict[str, Path]) -> None:
    """RFC 9110 gives ranges of one q no order, and PS3.18 names image/jpeg the default rendered type (WADO-URI:
    a JPEG "if compatible with the Accept field"): Java's Accept names GIF and JPEG at q=1, and got a GIF of 256
    colours, four times the JPEG's size, on WADO-URI, rendered and thumbnail alike. A higher q still wins."""
    study, series, sop = uids_of(files["ct"])
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    for url, accept in (
        (wado(root, files["ct"]), JAVA_ACCEPT),
        (wado(root, files["ct"], "&contentType=image/gif,image/jpeg"), JAVA_ACCEPT),
        (wado(root, files["ct"], "&contentType=image/png;q=0.5,image/gif;q=0.5,image/jpeg;q=0.5"), "*/*"),
        (wado(root, files["rgb2"], "&frameNumber=2"), JAVA_ACCEPT),
        (f"{instance}/rendered", JAVA_ACCEPT),
        (f"{instance}/rendered", "image/png, image/gif, image/jpeg"),
        (f"{instance}/frames/1/rendered", JAVA_ACCEPT),
        (f"{instance}/rendered?accept=image/gif,image/jpeg", "*/*"),
        (f"{instance}/thumbnail", JAVA_ACCEPT),
    ):
        answer = requests.get(url, headers={"Accept": accept}, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/jpeg"), (url, accept)
        assert answer.content.startswith(b"\xff\xd8"), url
    # .NET's HttpClient sends no Accept at all
    answer = requests.get(wado(root, files["ct"]), headers={"Accept": None}, timeout=30)
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/jpeg")
    # a type preferred by its q is still what is served
    for url, accept, media in (
        (f"{instance}/rendered", "image/gif, image/jpeg;q=0.9", "image/gif"),
        (f"{instance}/rendered", "image/png, image/*;q=0.5", "image/png"),
        (wado(root, files["ct"]), "image/png, image/jpeg;q=0.8", "image/png"),
        (wado(root, files["ct"], "&contentType=image/gif,image/jpeg;q=0.9"), "*/*", "image/gif"),
    ):
        answer = requests.get(url, headers={"Accept": accept}, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, media), (url, accept)


def test_an_image_type_that_is_not_made_is_a_406_naming_those_that_are(root: str, files: dict[str, Path]) -> None:
    """``contentType=image/bmp`` or ``Accept: image/webp`` of a rendering: the 406 said "none of the accepted media
    types can be produced from the stored data (no transcoding)", about a resource made for the request; it now
    names the three types a client can ask for instead (PS3.18 8.7.4), on every route that renders an image."""
    study, series, sop = uids_of(files["ct"])
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    for url, accept in (
        (wado(root, files["ct"], "&contentType=image/bmp"), "*/*"),
        (wado(root, files["ct"], "&contentType=image/jp2,image/webp;q=0.5"), "*/*"),
        (f"{instance}/rendered", "image/webp"),
        (f"{instance}/rendered", "image/jpeg;q=0, image/png;q=0, image/gif;q=0"),
        (f"{instance}/rendered?accept=image/jp2", "*/*"),
        (f"{instance}/frames/1/rendered", "image/avif"),
        (f"{instance}/thumbnail", "image/webp"),
        (f"{root}/studies/{study}/series/{series}/thumbnail", "text/html"),
    ):
        answer = requests.get(url, headers={"Accept": accept}, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (406, "application/json"), (url, accept)
        assert answer.json() == {
            "error": "not_acceptable",
            "detail": "an image is rendered as image/jpeg, image/png or image/gif only",
        }, (url, accept)


def test_an_accept_of_thousands_of_ranges_is_answered_at_once(root: str, files: dict[str, Path]) -> None:
    """Negotiation found an offer's q again for each range matching it: a 25 KB Accept of 1,500 ``image/jpeg;q=0.5``
    and one refusal (what NGINX's 32 KB header buffer lets through) held a gunicorn thread about 5 s per request,
    any number at once. It is now read once: the same 406, at once; the same Accept naming PNG, a PNG."""
    study, series, sop = uids_of(files["ct"])
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    hostile = ",".join(["image/jpeg;q=0.5"] * 1500 + ["image/jpeg;q=0"])
    for url in (f"{instance}/rendered", wado(root, files["ct"])):
        started = time.monotonic()
        answer = requests.get(url, headers={"Accept": hostile}, timeout=60)
        assert time.monotonic() - started < 2, url
        assert (answer.status_code, answer.headers["Content-Type"]) == (406, "application/json"), answer.text[:300]
    answer = requests.get(f"{instance}/rendered", headers={"Accept": hostile + ",image/png;q=0.4"}, timeout=60)
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/png")


def test_wado_uri_frame_number_past_the_frames_or_given_twice_is_400(root: str, files: dict[str, Path]) -> None:
    answer = requests.get(wado(root, files["rgb2"], "&contentType=image/jpeg&frameNumber=2"), timeout=30)
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/jpeg")
    assert_400(
        requests.get(wado(root, files["rgb2"], "&contentType=image/jpeg&frameNumber=3"), timeout=30),
        "frame 3 does not exist; the instance has 2 frame(s)",
    )
    assert_400(
        requests.get(wado(root, files["ct"], "&frameNumber=2"), timeout=30),
        "frame 2 does not exist; the instance has 1 frame(s)",
    )
    assert_400(
        requests.get(wado(root, files["rgb2"], "&frameNumber=1&frameNumber=2"), timeout=30),
        "WADO-URI takes one frameNumber",
    )


def test_gif_renderings_hold_the_png_rendering_pixels(root: str, files: dict[str, Path]) -> None:
    study, series, sop = uids_of(files["ct"])
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    for url, accept in (
        (f"{instance}/rendered", "image/gif"),
        (f"{instance}/frames/1/rendered", "image/gif"),
        (f"{instance}/thumbnail", "image/gif"),
        (wado(root, files["ct"], "&contentType=image/gif"), ""),
        (wado(root, files["ct"]), "image/gif"),
    ):
        gif = requests.get(url, headers={"Accept": accept} if accept else {}, timeout=30)
        assert (gif.status_code, gif.headers["Content-Type"]) == (200, "image/gif"), (url, gif.text[:300])
        assert gif.content.startswith(b"GIF8")
        png = requests.get(url.replace("image/gif", "image/png"), headers={"Accept": "image/png"}, timeout=30)
        assert (png.status_code, png.headers["Content-Type"]) == (200, "image/png"), url
        # the same grey levels: 8-bit grey is exact in a GIF's palette
        grey = [np.asarray(Image.open(io.BytesIO(answer.content)).convert("L")) for answer in (gif, png)]
        assert np.array_equal(*grey), url


@pytest.mark.parametrize("value", ["true", "1", "Y", "", "no&anonymize=yes"])
def test_wado_uri_anonymize_other_than_yes_or_no_is_400(root: str, files: dict[str, Path], value: str) -> None:
    for content_type in ("application/dicom", "image/jpeg"):
        answer = requests.get(wado(root, files["ct"], f"&contentType={content_type}&anonymize={value}"), timeout=30)
        assert_400(answer, "not supported: objects are served as stored")
    answer = requests.get(wado(root, files["ct"], "&contentType=application/dicom&anonymize=no"), timeout=30)
    assert (answer.status_code, answer.content) == (200, files["ct"].read_bytes())


def test_qido_empty_values_are_return_keys_as_c_find_style_clients_send_them(
    root: str, files: dict[str, Path]
) -> None:
    """DICOMcloud's web client's study query (empty keys, a trailing ``&``), with PatientAge and Rows added."""
    study, _, _ = uids_of(files["ct"])
    asked = requests.get(
        f"{root}/studies?00200010=&00080020=&00100010=&00100020=&00101010=&StudyInstanceUID={study}&limit=12&offset=0&",
        timeout=30,
    )
    included = requests.get(f"{root}/studies?includefield=00101010&StudyInstanceUID={study}", timeout=30)
    assert (asked.status_code, asked.headers["Content-Type"]) == (200, "application/dicom+json"), asked.text[:300]
    assert asked.json() == included.json()
    assert asked.json()[0]["00101010"] == {"vr": "AS", "Value": ["000Y"]}
    asked = requests.get(f"{root}/studies/{study}/instances?NumberOfFrames=&Rows=&Columns=", timeout=30)
    assert asked.status_code == 200, asked.text[:300]
    assert [(a["00280010"], a["00280011"]) for a in asked.json()] == [({"vr": "US", "Value": [128]},) * 2]


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        ("studies", "Modality=&SeriesInstanceUID=&SOPInstanceUID=&InstanceNumber="),
        ("series", "SOPInstanceUID=&InstanceNumber=&00280010="),
    ],
)
def test_qido_empty_values_of_a_lower_level_are_return_keys_too(
    root: str, files: dict[str, Path], level: str, keys: str
) -> None:
    """An empty value asks nothing to be matched (universal matching, PS3.4 C.2.2.2.3): it is a return key, as
    includefield names one, whatever the attribute's level (README). Of an attribute below the query's level
    (`/studies?...&Modality=`, a C-FIND-style template's keys) it was the JSON 400 "Modality: cannot match an
    attribute of a lower level in a studies query" that a value there still gets; now the answer is the one
    without it (Orthanc answers 200 too). A value there stays a 400."""
    study, _, _ = uids_of(files["ct"])
    plain = requests.get(f"{root}/{level}?StudyInstanceUID={study}", timeout=30)
    asked = requests.get(f"{root}/{level}?StudyInstanceUID={study}&{keys}", timeout=30)
    assert (asked.status_code, asked.headers["Content-Type"]) == (200, "application/dicom+json"), asked.text[:300]
    assert asked.json() == plain.json()
    assert "Warning" not in asked.headers
    valued = requests.get(f"{root}/{level}?StudyInstanceUID={study}&InstanceNumber=1", timeout=30)
    assert_400(valued, f"InstanceNumber: cannot match an attribute of a lower level in a {level} query")


def test_qido_ignores_what_it_does_not_support_and_says_so_in_a_warning(
    stack: RunningStack, root: str, files: dict[str, Path]
) -> None:
    """PS3.18 8.3: an origin server ignores a query parameter, key or value it does not support and answers as if
    it were absent. jQuery's cache buster (``_``), a parameter a viewer adds, a key the catalog does not match and
    an includefield naming no attribute were each a JSON 400; now the answer is the one without them, and a
    ``Warning: 299`` names what was ignored (never its value: ``Token=`` may carry a credential)."""
    study, _, _ = uids_of(files["ct"])
    service = f"299 {stack.url}/dicomweb: "
    plain = requests.get(f"{root}/studies?StudyInstanceUID={study}&includefield=PatientAge", timeout=30)
    assert plain.status_code == 200 and "Warning" not in plain.headers
    assert plain.json()[0]["00101010"] == {"vr": "AS", "Value": ["000Y"]}
    cache_buster = requests.get(
        f"{root}/studies?StudyInstanceUID={study}&includefield=PatientAge&_=1712345678", timeout=30
    )
    assert (cache_buster.status_code, cache_buster.json()) == (200, plain.json())
    assert "Warning" not in cache_buster.headers  # a transport parameter, ignored silently
    answer = requests.get(
        f"{root}/studies?StudyInstanceUID={study}&foo=bar&includefield=PatientAge,NotAKeyword&Token=s3cr3t"
        "&ImageType=DERIVED&RequestAttributesSequence.AccessionNumber=A1&Vendor.Option=1&bad%0D%0Aname=1",
        timeout=30,
    )
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/dicom+json"), answer.text
    # ImageType is no study attribute: returned where a study has it (here none), never matched
    assert answer.json() == plain.json()
    assert answer.raw.headers.getlist("Warning") == [
        f'{service}"The following query parameters are not supported and were ignored: foo, Token, Vendor.Option, '
        '1 other"',
        f'{service}"The following attributes are not supported as query keys and were not matched: ImageType, '
        'RequestAttributesSequence.AccessionNumber"',
        f'{service}"The following includefield values name no attribute and were ignored: NotAKeyword"',
    ]
    assert "s3cr3t" not in str(answer.headers) and "DERIVED" not in str(answer.headers)
    # an instance key not matched is still a return key of the instances it is asked of
    rows = requests.get(f"{root}/studies/{study}/instances?Rows=64&ImageType=X", timeout=30)
    assert rows.status_code == 200, rows.text[:300]
    assert [(a["00280010"], a["00080008"]["Value"]) for a in rows.json()] == [
        ({"vr": "US", "Value": [128]}, ["ORIGINAL", "PRIMARY", "AXIAL"])
    ]
    assert rows.raw.headers.getlist("Warning") == [
        f'{service}"The following attributes are not supported as query keys and were not matched: Rows, ImageType"'
    ]
    # what the standard makes a malformed request stays the JSON 400: a bad value of what is supported
    assert_400(requests.get(f"{root}/studies?StudyDate=2020-13-01&foo=bar", timeout=30), "StudyDate")
    assert_400(requests.get(f"{root}/studies?limit=ten", timeout=30), "limit")
    assert_400(requests.get(f"{root}/studies?SOPInstanceUID=1.2", timeout=30), "lower level")
