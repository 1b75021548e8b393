"""WADO-URI requests exactly as Weasis, Horos/OsiriX and Cornerstone's ``wadouri`` loader build them, against the
real stack on both storage backends, with each token transport (path prefix, query, cookie).

Weasis (``LoadSeries``) asks ``?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..&contentType=application%2Fdicom``
then, if configured, ``&transferSyntax=..&imageQuality=..``, then its ``additionnalParameters`` (a portal puts the
token there); its thumbnails are ``contentType=image/jpeg&imageQuality=70&rows=..&columns=..``. With the manifest's
``requireOnlySOPInstanceUID`` it sends ``studyUID=`` and ``seriesUID=`` empty: that was a 400, it is now found by its
SOP Instance UID, and a scoped token is judged by where the instance is stored (out of scope, or stored nowhere: the
403 of the full form for another study). Horos asks ``contentType=application/dicom`` unencoded with
``&useOrig=true`` (a dcm4chee parameter) or ``&transferSyntax=*&useOrig=true``, and tests a server with
``studyUID=1&seriesUID=1&objectUID=1``. Cornerstone's loader requests the image id's URL as given (its ``frame=`` cut
off) with the browser's ``Accept: */*``.

PS3.18 Table 8.7.4-1: without ``contentType`` a structured report's default is ``text/html`` (it was sent as
``application/dicom``); ``text/xml`` is optional for the URI service and stays a JSON 406."""

from __future__ import annotations

import io
import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from PIL import Image
from pydicom.data import get_testdata_file

from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import RunningStack, module_stack
from tests.e2e.test_client_queries import IMG_ACCEPT, PAGE_ACCEPT
from tests.e2e.test_hostile import assert_json_error, raw
from tests.e2e.test_hostile import get as raw_get
from tests.e2e.test_sr_rendered import CSP, encapsulated_pdf

NAMES = {"ct": "CT_small.dcm", "rgb2": "SC_rgb_rle_2frame.dcm", "sr": "reportsi.dcm", "mr": "MR_small.dcm"}
TRANSPORTS = ["path", "query", "cookie"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    found = {key: Path(str(get_testdata_file(name))) for key, name in NAMES.items()}
    return {**found, "pdf": encapsulated_pdf(tmp_path_factory.mktemp("wado-clients") / "pdf.dcm")}


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> Iterator[RunningStack]:
    yield from module_stack(request, tmp_path_factory, "wado-clients", list(files.values()))


@pytest.fixture(scope="module")
def token(stack: RunningStack, files: dict[str, Path]) -> str:
    """A viewer's token: every study but the MR's."""
    studies = [uids_of(path)[0] for key, path in files.items() if key != "mr"]
    assert uids_of(files["mr"])[0] not in studies
    result: str = stack.issue(studies)["token"]
    return result


def get(stack: RunningStack, token: str, transport: str, query: str, **headers: str) -> requests.Response:
    """``GET /wado?{query}`` carrying the token as ``transport`` says (the query token last, as Weasis appends its
    additional parameters)."""
    cookies: dict[str, Any] = {}
    if transport == "path":
        url = f"{stack.root(token)}/wado?{query}"
    elif transport == "query":
        url = f"{stack.url}/dicomweb/wado?{query}&token={token}"
    else:
        url, cookies = f"{stack.url}/dicomweb/wado?{query}", {"dicomgw_token": token}
    return requests.get(url, headers=headers, cookies=cookies, timeout=60)


def weasis(path: Path, *, only_sop: bool, extra: str = "") -> str:
    study, series, sop = uids_of(path)
    if only_sop:
        study = series = ""
    ids = f"studyUID={study}&seriesUID={series}&objectUID={sop}"
    return f"requestType=WADO&{ids}&contentType=application%2Fdicom{extra}"


def assert_json(answer: requests.Response, status: int, error: str) -> dict[str, Any]:
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = answer.json()
    assert body["error"] == error, body
    return body


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_weasis_require_only_sop_instance_uid_is_served_in_scope_only(
    stack: RunningStack, token: str, files: dict[str, Path], transport: str
) -> None:
    for key in ("ct", "rgb2", "sr"):
        for only_sop in (False, True):
            answer = get(stack, token, transport, weasis(files[key], only_sop=only_sop))
            assert answer.status_code == 200, (key, only_sop, answer.status_code, answer.text[:300])
            assert answer.headers["Content-Type"].startswith("application/dicom"), answer.headers["Content-Type"]
            assert answer.content == files[key].read_bytes(), (key, only_sop)
    # left out rather than empty, or only one of them: the same object
    study, series, sop = uids_of(files["ct"])
    for query in (
        f"requestType=WADO&objectUID={sop}&contentType=application%2Fdicom",
        f"requestType=WADO&studyUID={study}&seriesUID=&objectUID={sop}&contentType=application%2Fdicom",
        f"objectUID={sop}&seriesUID={series}&requestType=WADO&contentType=application%2Fdicom",
    ):
        answer = get(stack, token, transport, query)
        assert (answer.status_code, answer.content) == (200, files["ct"].read_bytes()), query
    # outside the token's scope: the full form's 403, and the same for the UID alone (nothing more, nothing less)
    full = assert_json(get(stack, token, transport, weasis(files["mr"], only_sop=False)), 403, "out_of_scope")
    alone = assert_json(get(stack, token, transport, weasis(files["mr"], only_sop=True)), 403, "out_of_scope")
    assert full == {"error": "out_of_scope", "detail": "object outside the token's scope"}
    assert alone == full
    # a UID stored nowhere answers as one stored outside the scope: a token cannot probe which UIDs exist
    nowhere = "requestType=WADO&studyUID=&seriesUID=&objectUID=1.2.3.999&contentType=application%2Fdicom"
    assert assert_json(get(stack, token, transport, nowhere), 403, "out_of_scope") == full
    # a study of the token named beside an object stored in another study lends it no scope
    mr_sop = uids_of(files["mr"])[2]
    lent = f"requestType=WADO&studyUID={study}&seriesUID=&objectUID={mr_sop}&contentType=application%2Fdicom"
    assert assert_json(get(stack, token, transport, lent), 403, "out_of_scope") == full


def test_the_access_audit_names_the_study_of_an_object_named_alone(
    stack: RunningStack, token: str, files: dict[str, Path]
) -> None:
    """Its query names no study, so the study the decision located goes into the log line (``X-Dgw-Study``), and
    the audit row holds it: a search of who read a study's objects finds this read."""
    from gateway.accesslog import access_row

    study, _, sop = uids_of(files["ct"])
    agent = f"weasis-{uuid.uuid4().hex}"
    for transport in TRANSPORTS:
        answer = get(stack, token, transport, weasis(files["ct"], only_sop=True), **{"User-Agent": agent})
        assert answer.status_code == 200
    stack.settle_access_log()
    lines = [line for line in stack.access_log() if line.get("user_agent") == agent]
    assert len(lines) == 3 and {line["study"] for line in lines} == {study}, lines
    for line in lines:
        row = access_row(json.dumps(line))
        assert row is not None
        assert (row["action"], row["study_uid"], row["sop_uid"]) == ("wado-uri", study, sop)
        assert token not in json.dumps(line)


def test_only_sop_instance_uid_with_the_api_key(stack: RunningStack, files: dict[str, Path]) -> None:
    """The unscoped credential reaches every object; one stored nowhere is a 404, and a named study or series
    that is not the object's a 404 as in the full form."""
    base = f"{stack.url}/dicomweb/wado"
    answer = requests.get(f"{base}?{weasis(files['mr'], only_sop=True)}", headers=stack.api_headers, timeout=60)
    assert (answer.status_code, answer.content) == (200, files["mr"].read_bytes())
    nowhere = "requestType=WADO&studyUID=&seriesUID=&objectUID=1.2.3.999&contentType=application%2Fdicom"
    assert_json(requests.get(f"{base}?{nowhere}", headers=stack.api_headers, timeout=60), 404, "not_found")
    ct_study = uids_of(files["ct"])[0]
    other = f"requestType=WADO&studyUID={ct_study}&objectUID={uids_of(files['mr'])[2]}"
    body = assert_json(requests.get(f"{base}?{other}", headers=stack.api_headers, timeout=60), 404, "not_found")
    assert body["detail"] == "no such instance"  # as a UID stored nowhere


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_weasis_thumbnail_and_transfer_syntax_requests(
    stack: RunningStack, token: str, files: dict[str, Path], transport: str
) -> None:
    study, series, sop = uids_of(files["ct"])
    for ids in (f"studyUID={study}&seriesUID={series}", "studyUID=&seriesUID="):
        thumbnail = f"requestType=WADO&{ids}&objectUID={sop}&contentType=image/jpeg&imageQuality=70&rows=64&columns=64"
        answer = get(stack, token, transport, thumbnail)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/jpeg"), answer.text[:300]
        image = Image.open(io.BytesIO(answer.content))
        assert image.format == "JPEG" and max(image.size) == 64, image.size
    stored = str(pydicom.dcmread(files["ct"], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    # the stored syntax (or "*"), with the compression rate Weasis adds: the object as stored
    for syntax in (stored, "*"):
        extra = f"&transferSyntax={syntax}&imageQuality=80"
        answer = get(stack, token, transport, weasis(files["ct"], only_sop=True, extra=extra))
        assert (answer.status_code, answer.content) == (200, files["ct"].read_bytes()), answer.text[:300]
    lossy = weasis(files["ct"], only_sop=True, extra="&transferSyntax=1.2.840.10008.1.2.4.91&imageQuality=80")
    body = assert_json(get(stack, token, transport, lossy), 406, "not_acceptable")
    assert stored in body["detail"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_horos_requests(stack: RunningStack, token: str, files: dict[str, Path], transport: str) -> None:
    study, series, sop = uids_of(files["rgb2"])
    base = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}&contentType=application/dicom"
    for extra in ("&useOrig=true", "&transferSyntax=*&useOrig=true"):
        answer = get(stack, token, transport, base + extra)
        assert answer.status_code == 200, answer.text[:300]
        assert answer.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.5"
        assert answer.content == files["rgb2"].read_bytes()
    # its "test the server" request: a study the token does not reach
    probe = "requestType=WADO&studyUID=1&seriesUID=1&objectUID=1&contentType=application/dicom&useOrig=true"
    assert_json(get(stack, token, transport, probe), 403, "out_of_scope")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cornerstone_wadouri_requests(stack: RunningStack, token: str, files: dict[str, Path], transport: str) -> None:
    """The loader fetches the image id's URL with XMLHttpRequest: a browser's ``Accept: */*``."""
    for key in ("ct", "rgb2"):
        answer = get(stack, token, transport, weasis(files[key], only_sop=False), Accept="*/*")
        assert answer.status_code == 200, answer.text[:300]
        assert answer.headers["Content-Type"].startswith("application/dicom")
        assert answer.content == files[key].read_bytes()
    # Cornerstone's documentation's example asks for baseline JPEG, which this object is not stored as
    jpeg = weasis(files["ct"], only_sop=False, extra="&transferSyntax=1.2.840.10008.1.2.4.50")
    assert_json(get(stack, token, transport, jpeg, Accept="*/*"), 406, "not_acceptable")


def test_default_media_type_follows_the_resource_category(
    stack: RunningStack, token: str, files: dict[str, Path]
) -> None:
    """PS3.18 Table 8.7.4-1 (URI column): image/jpeg for an image, text/html for a report (an Encapsulated PDF is
    sent as the PDF, the one rendering made of it); without a rendered type (a waveform, ...) the object."""

    def ask(key: str, transport: str, headers: dict[str, str]) -> requests.Response:
        study, series, sop = uids_of(files[key])
        query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
        return get(stack, token, transport, query, **headers)

    for headers in ({"Accept": "*/*"}, {"Accept": IMG_ACCEPT}, {"Accept": PAGE_ACCEPT}):
        for transport in TRANSPORTS:
            image = ask("ct", transport, headers)
            assert (image.status_code, image.headers["Content-Type"]) == (200, "image/jpeg")
            assert image.content.startswith(b"\xff\xd8")
            report = ask("sr", transport, headers)
            assert report.status_code == 200, report.text[:300]
            assert report.headers["Content-Type"] == "text/html; charset=utf-8"
            assert report.headers["Content-Security-Policy"] == CSP
            assert b"<html" in report.content
            pdf = ask("pdf", transport, headers)
            assert (pdf.status_code, pdf.headers["Content-Type"]) == (200, "application/pdf")
            assert pdf.content == pydicom.dcmread(files["pdf"]).EncapsulatedDocument  # as stored: its even-length pad


def test_report_content_types(stack: RunningStack, token: str, files: dict[str, Path]) -> None:
    study, series, sop = uids_of(files["sr"])
    query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    text = get(stack, token, "path", f"{query}&contentType=text/plain")
    assert (text.status_code, text.headers["Content-Type"]) == (200, "text/plain; charset=utf-8")
    # the object when asked for, by the parameter or the header
    for answer in (
        get(stack, token, "path", f"{query}&contentType=application/dicom"),
        get(stack, token, "path", query, Accept="application/dicom"),
    ):
        assert (answer.status_code, answer.content) == (200, files["sr"].read_bytes())
    # text/xml is optional for the URI service (Table 8.7.4-1), served as the RESTful rendered resource serves it:
    # the report's data set as a Native DICOM Model document (it was a JSON 406)
    xml = get(stack, token, "path", f"{query}&contentType=text/xml")
    assert (xml.status_code, xml.headers["Content-Type"]) == (200, "text/xml; charset=utf-8"), xml.text[:300]
    assert xml.headers["Content-Security-Policy"] == CSP
    assert ET.fromstring(xml.content).tag == "{http://dicom.nema.org/PS3.19/models/NativeDICOM}NativeDicomModel"
    body = assert_json(get(stack, token, "path", f"{query}&contentType=image/png"), 406, "not_acceptable")
    assert "text/html, text/plain or text/xml" in body["detail"]


def test_application_any_is_the_object(stack: RunningStack, token: str, files: dict[str, Path]) -> None:
    """``application/*`` (as ``contentType`` or, without it, first in the Accept header) takes ``application/dicom``,
    which every instance has: it was a JSON 406 "none of the accepted media types" as ``contentType``, and from the
    header a JPEG or a report's HTML, neither of them an application/ type. An Encapsulated PDF's default, the PDF,
    is one, so it is still the PDF."""
    for key in ("ct", "rgb2", "sr"):
        study, series, sop = uids_of(files[key])
        query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
        for extra, headers in (
            ("&contentType=application/*", {}),
            ("&contentType=application%2F*%3Bq%3D0.5%2Cimage%2Fpng%3Bq%3D0.4", {}),
            ("", {"Accept": "application/*"}),
            ("", {"Accept": "application/*, */*;q=0.1"}),
        ):
            answer = get(stack, token, "path", query + extra, **headers)
            assert answer.status_code == 200, (key, extra, answer.text[:300])
            assert answer.headers["Content-Type"].split(";")[0] == "application/dicom", (key, extra)
            assert answer.content == files[key].read_bytes()
    # a refusal is no request for the object: the defaults stay
    study, series, sop = uids_of(files["ct"])
    query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    answer = get(stack, token, "path", query, Accept="application/*;q=0, */*")
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/jpeg")
    study, series, sop = uids_of(files["pdf"])
    query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    for extra, headers in (("&contentType=application/*", {}), ("", {"Accept": "application/*"})):
        answer = get(stack, token, "path", query + extra, **headers)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/pdf"), extra
        assert answer.content == pydicom.dcmread(files["pdf"]).EncapsulatedDocument


def test_the_most_preferred_type_the_instance_is_answered_as_is_served(
    stack: RunningStack, token: str, files: dict[str, Path]
) -> None:
    """PS3.18 8.7.8.1: the Selected Media Type is the most preferred one the instance's category supports. The first
    type listed decided alone, so a type the instance has none of hid the next: ``contentType=image/jpeg,
    application/dicom;q=0.5`` of a report, or ``text/plain, application/dicom;q=0.5`` of an image, was a JSON 406
    where the object was acceptable and available."""

    def ask(key: str, extra: str, **headers: str) -> requests.Response:
        study, series, sop = uids_of(files[key])
        query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}{extra}"
        return get(stack, token, "path", query, **headers)

    for key, extra, headers in (
        ("sr", "&contentType=image/jpeg,application/dicom;q=0.5", {}),
        ("sr", "&contentType=image%2Fpng%2Capplication%2Fdicom%3Bq%3D0.2", {}),
        ("sr", "", {"Accept": "image/jpeg, image/png;q=0.9, application/dicom;q=0.5"}),
        ("ct", "&contentType=text/plain,application/dicom;q=0.5", {}),
        ("ct", "&contentType=text/*,application/dicom;q=0.1", {}),
        ("pdf", "&contentType=image/jpeg,text/html;q=0.8,application/dicom;q=0.5", {}),
        ("pdf", "", {"Accept": "text/plain, application/dicom;q=0.5"}),
    ):
        answer = ask(key, extra, **headers)
        assert answer.status_code == 200, (key, extra, headers, answer.text[:300])
        assert answer.headers["Content-Type"].split(";")[0] == "application/dicom", (key, extra, headers)
        assert answer.content == files[key].read_bytes()
    # a rendering further down the list, and the category's default for a `*/*` after a type it lacks
    for key, extra, media in (
        ("ct", "&contentType=text/plain,image/png;q=0.5", "image/png"),
        ("sr", "&contentType=image/png,text/plain;q=0.5,application/dicom;q=0.4", "text/plain; charset=utf-8"),
        ("sr", "&contentType=image/jpeg,*/*;q=0.1", "text/html; charset=utf-8"),
        ("pdf", "&contentType=image/png,application/pdf;q=0.3", "application/pdf"),
    ):
        answer = ask(key, extra)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, media), (key, extra, answer.text[:300])
    # nothing the instance is answered as: the 406 of its category, as before
    body = assert_json(ask("sr", "&contentType=image/jpeg,image/gif;q=0.5"), 406, "not_acceptable")
    assert "text/html, text/plain or text/xml" in body["detail"]


def test_values_in_other_cases(stack: RunningStack, token: str, files: dict[str, Path]) -> None:
    """``requestType``'s value is an ABNF quoted string (case-insensitive), media types are case-insensitive; the
    parameter names are case-sensitive (``%s"objectUID="``), so a lower-case name names nothing."""
    study, series, sop = uids_of(files["ct"])
    ids = f"studyUID={study}&seriesUID={series}&objectUID={sop}"
    for query in (
        f"requestType=wado&{ids}&contentType=application/dicom",
        f"requestType=Wado&{ids}&contentType=Application/DICOM",
        f"requestType=WADO&{ids}&contentType=application/dicom&anonymize=NO",
    ):
        answer = get(stack, token, "path", query)
        assert (answer.status_code, answer.content) == (200, files["ct"].read_bytes()), (query, answer.text[:300])
    answer = get(stack, token, "path", f"requestType=WADO&{ids}&contentType=IMAGE/PNG")
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/png")
    # the names are not case-insensitive: no objectUID, the same 400 for a token as for the API key (a token's was
    # the 403 out_of_scope, as if the token were refused)
    lower = f"requestType=WADO&{ids.lower()}"
    by_key = requests.get(f"{stack.url}/dicomweb/wado?{lower}", headers=stack.api_headers, timeout=60)
    for answer in (get(stack, token, "path", lower), by_key):
        body = assert_json(answer, 400, "bad_request")
        assert body["detail"] == "WADO-URI needs exactly one objectUID"


def test_a_parameter_given_twice_is_a_json_400_naming_it(
    stack: RunningStack, token: str, files: dict[str, Path]
) -> None:
    """Each WADO-URI parameter holds one value (PS3.18 9): of two, the first was used in silence (a PNG asked for
    after a JPEG got the JPEG, a 64-row thumbnail asked for twice at two sizes got the first), while a repeated UID
    or frameNumber was already a 400. Now every repeat of a parameter PS3.18 defines is the same JSON 400, naming
    it (a client's own parameters are not read, repeated or not)."""
    study, series, sop = uids_of(files["ct"])
    ids = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    for extra, name in (
        ("&contentType=image/png&contentType=image/jpeg", "contentType"),
        ("&contentType=application/dicom&contentType=application/dicom", "contentType"),
        ("&contentType=image/jpeg&rows=64&rows=512", "rows"),
        ("&windowCenter=40&windowWidth=400&windowCenter=50", "windowCenter"),
        ("&transferSyntax=1.2.840.10008.1.2.1&transferSyntax=1.2.840.10008.1.2.1", "transferSyntax"),
        ("&frameNumber=1&frameNumber=1", "frameNumber"),
    ):
        body = assert_json(get(stack, token, "path", ids + extra), 400, "bad_request")
        assert body["detail"] == f"WADO-URI takes one {name}", (extra, body)
    # one of each is served as before, whichever transport carries the token
    for transport in TRANSPORTS:
        answer = get(stack, token, transport, f"{ids}&contentType=image/png&rows=64")
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/png"), answer.text[:200]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_fragment_cannot_split_what_is_judged_from_what_is_served(
    stack: RunningStack, token: str, files: dict[str, Path], transport: str
) -> None:
    """The auth step read ``$request_uri`` whole, gunicorn's query (the view's) ends at ``#``: the token's own study
    and series after a ``#`` passed the decision, and the view served the object named before it, alone, from a
    study outside the scope. No request-target holds a fragment (RFC 9112 3.2): a JSON 400 before any decision,
    with the token in any transport. Sent as raw bytes: a client library drops the fragment."""
    own_study, own_series, _ = uids_of(files["ct"])
    mr_sop = uids_of(files["mr"])[2]
    query = f"requestType=WADO&contentType=application/dicom&objectUID={mr_sop}"
    split = f"{query}#&studyUID={own_study}&seriesUID={own_series}"
    headers: dict[str, str] = {}
    if transport == "path":
        target = f"/t/{token}/dicomweb/wado?{split}"
    elif transport == "query":
        target = f"/dicomweb/wado?token={token}&{split}"
    else:
        target, headers = f"/dicomweb/wado?{split}", {"Cookie": f"dicomgw_token={token}"}
    status, answer_headers, body = raw(stack, raw_get(target, **headers))
    assert_json_error(status, answer_headers, body, 400)
    assert json.loads(body) == {"error": "bad_request", "detail": "the request target holds a fragment (#)"}
    # a fragment anywhere, even after a query the token may read, is the same refusal
    ct_study, ct_series, ct_sop = uids_of(files["ct"])
    own = f"/t/{token}/dicomweb/wado?requestType=WADO&studyUID={ct_study}&seriesUID={ct_series}&objectUID={ct_sop}"
    status, answer_headers, body = raw(stack, raw_get(own + "#page"))
    assert_json_error(status, answer_headers, body, 400)
    # and the object itself stays out of reach by its UID alone
    assert_json(get(stack, token, transport, query), 403, "out_of_scope")


def test_own_study_beside_another_studys_object_tells_nothing(
    stack: RunningStack, token: str, files: dict[str, Path]
) -> None:
    """A token names its own study and series (which pass the auth step) beside the SOP Instance UID of an object
    stored in a study it cannot read: the 404 said "no such instance in this study and series", a UID stored
    nowhere "no such instance", so the token learned which UIDs exist. Both are now one answer, for WADO-URI and
    for WADO-RS's instance, frame, metadata and rendered resources."""
    study, series, _ = uids_of(files["ct"])
    mr_sop, nowhere = uids_of(files["mr"])[2], "1.2.3.999"
    answers: dict[str, list[tuple[int, str, bytes]]] = {}
    for sop in (mr_sop, nowhere):
        wado_uri = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
        instance = f"{stack.root(token)}/studies/{study}/series/{series}/instances/{sop}"
        for url in (
            f"{stack.root(token)}/wado?{wado_uri}&contentType=application%2Fdicom",
            f"{stack.root(token)}/wado?{wado_uri}",
            instance,
            f"{instance}/frames/1",
            f"{instance}/metadata",
            f"{instance}/rendered",
        ):
            answer = requests.get(url, timeout=60)
            assert answer.status_code == 404, (url, answer.status_code, answer.text[:300])
            assert answer.headers["Content-Type"] == "application/json", url
            key = url.replace(sop, "{sop}")
            answers.setdefault(key, []).append((answer.status_code, answer.headers["Content-Type"], answer.content))
    for url, (stored_elsewhere, stored_nowhere) in answers.items():
        assert stored_elsewhere == stored_nowhere, url


def test_the_access_audit_names_the_study_however_the_query_is_spelled(
    stack: RunningStack, token: str, files: dict[str, Path]
) -> None:
    """The audit read a WADO-URI study from the query as logged, and the log shows a value only under a plain
    ``studyUID`` among the first 32 parameters (PHI and credentials travel under other names): ``%73tudyUID=``,
    which the decision and the view decode, or 32 parameters before it left the read of a study out of a search of
    who read it. The decision now names the study it judged (``X-Dgw-Study``) whenever the query names one."""
    from gateway.accesslog import access_row

    study, series, sop = uids_of(files["ct"])
    agent = f"hidden-{uuid.uuid4().hex}"
    for query in (
        f"requestType=WADO&%73tudyUID={study}&seriesUID={series}&objectUID={sop}&contentType=application%2Fdicom",
        "&".join(["x=1"] * 32) + "&" + weasis(files["ct"], only_sop=False),
        "&".join(["x=1"] * 32) + "&" + weasis(files["ct"], only_sop=True),
    ):
        answer = get(stack, token, "path", query, **{"User-Agent": agent})
        assert (answer.status_code, answer.content) == (200, files["ct"].read_bytes()), answer.text[:300]
    stack.settle_access_log()
    lines = [line for line in stack.access_log() if line.get("user_agent") == agent]
    assert [line["study"] for line in lines] == [study] * 3, lines
    for line in lines:
        row = access_row(json.dumps(line))
        assert row is not None and (row["action"], row["study_uid"]) == ("wado-uri", study), row


def test_an_object_deleted_then_stored_in_another_study_is_found_there(
    stack: RunningStack, tmp_path: Path, files: dict[str, Path]
) -> None:
    """A worker kept the instance it had served under its SOP Instance UID, checked only against the generation of
    the study asked for: once the instance was deleted and stored again in another study (a misfiled instance
    moved), its SOP Instance UID alone was found in the catalog in the new study and then refused as "not in this
    study" by every worker that had served it before, until its cache evicted it."""
    moved = pydicom.dcmread(files["ct"])
    moved.SOPInstanceUID = moved.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    moved.StudyInstanceUID, moved.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    before = tmp_path / "before.dcm"
    moved.save_as(before)
    assert stack.stow([before]).status_code == 200
    query = f"requestType=WADO&objectUID={moved.SOPInstanceUID}&contentType=application%2Fdicom"
    alone = f"{stack.url}/dicomweb/wado?{query}"
    for _ in range(8):  # every worker serves it once at least
        answer = requests.get(alone, headers=stack.api_headers, timeout=60)
        assert (answer.status_code, answer.content) == (200, before.read_bytes())
    old = f"studies/{moved.StudyInstanceUID}/series/{moved.SeriesInstanceUID}/instances/{moved.SOPInstanceUID}"
    gone = requests.delete(f"{stack.url}/dicomweb/{old}", headers=stack.api_headers, timeout=120)
    assert gone.status_code in (200, 202, 204), gone.text
    moved.StudyInstanceUID, moved.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    after = tmp_path / "after.dcm"
    moved.save_as(after)
    assert stack.stow([after]).status_code == 200
    for _ in range(8):
        answer = requests.get(alone, headers=stack.api_headers, timeout=60)
        assert answer.status_code == 200, answer.text[:300]
        assert answer.content == after.read_bytes()
