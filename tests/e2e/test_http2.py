"""HTTP/2 as browsers, mobile WebViews and HTTP/2 clients speak it to `stack up --tls` (README: "HTTP/2 on the TLS
listener"): every DICOMweb read and upload, errors and credentials travel over h2 through the real NGINX, with
unmodified clients (httpx with h2, its h2 protocol library for a body cut mid-stream, Debian's curl, Chromium), each
checking the stack's own self-signed certificate. Exact statuses, bytes and headers, as over HTTP/1.1."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pydicom
import pytest

from gateway.dicomweb.multipart import encode_multipart
from gateway.tools.stack import Stack
from gateway.tools.synth import make_series, make_wsi, wsi_tile
from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import padded_file, start_stack
from tests.fixtures.servers import MotoServer
from tests.requirements import require

CHROMIUM = "/usr/bin/chromium"
# the auth step's refusals, as Python writes the same errors (gateway/errors.py)
MISSING = {
    "error": "token_missing",
    "detail": "no token in the path, the query, the Authorization header or the cookie",
}
OUT_OF_SCOPE = {"error": "out_of_scope", "detail": "study outside the token's scope"}


class H2Stack:
    """A `stack up --tls` stack and an HTTP/2 client that checks its certificate."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = stack.url
        self.cert = stack.var_dir / "tls" / "tls.crt"
        self.tls = ssl.create_default_context(cafile=str(self.cert))
        self.client = httpx.Client(http2=True, verify=self.tls, timeout=120)
        self.api = {"Authorization": f"Bearer {stack.api_key}"}

    def get(self, url: str, **headers: str) -> httpx.Response:
        answer = self.client.get(url, headers=headers)
        assert answer.http_version == "HTTP/2", answer.http_version
        return answer

    def issue(self, studies: list[str]) -> str:
        answer = self.client.post(f"{self.url}/api/v1/tokens", json={"sub": "h2", "studies": studies}, headers=self.api)
        assert answer.status_code == 201, answer.text
        token: str = answer.json()["token"]
        return token

    def stow(self, files: list[Path], **headers: str) -> httpx.Response:
        body = encode_multipart(files)
        answer = self.client.post(
            f"{self.url}/dicomweb/studies",
            content=iter(body),  # streamed from disk in DATA frames, as the upload client streams it
            headers={**self.api, "Content-Type": body.content_type, "Accept": "application/dicom+json", **headers},
        )
        assert answer.http_version == "HTTP/2"
        return answer

    def curl(self, url: str, *args: str, report: str = "%{http_version} %{http_code}") -> tuple[str, bytes]:
        """Debian's curl over HTTP/2 (nghttp2): (what ``report`` asks curl, by default the HTTP version and status it
        reports, the body)."""
        done = subprocess.run(
            ["curl", "-sS", "--http2", "--cacert", str(self.cert), "-w", f"\n{report}", *args, url],
            capture_output=True,
            timeout=60,
            check=True,
        )
        body, _, status = done.stdout.rpartition(b"\n")
        return status.decode(), body


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("h2-data")
    return {
        "ct": make_series(base / "ct", modality="CT", slices=20, seed=181, clean=True),
        "wsi": make_wsi(base / "wsi", frames=300, offsets="bot", seed=182, clean=True),
    }


@pytest.fixture(scope="module", params=BACKENDS)
def h2stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any]
) -> Iterator[H2Stack]:
    """`stack up --tls` on each storage backend (the local folder's reads are njs's, S3's are proxied)."""
    moto: MotoServer | None = request.getfixturevalue("moto_server") if request.param == "s3" else None
    stack = start_stack(tmp_path_factory.mktemp(f"h2-{request.param}"), request.param, moto, tls=True).stack
    running = H2Stack(stack)
    try:
        stored = running.stow([data["wsi"]])
        assert stored.status_code == 200, stored.text
        yield running
    finally:
        running.client.close()
        stack.stop()


@pytest.fixture(scope="module")
def ct_stored(h2stack: H2Stack, data: dict[str, Any]) -> str:
    """The 20-instance CT series, stored by one STOW-RS over h2 (test_stow_of_twenty_instances checks the answer)."""
    answer = h2stack.stow(data["ct"])
    assert answer.status_code == 200, answer.text
    return uids_of(data["ct"][0])[0]


def parts(answer: httpx.Response) -> list[tuple[str, bytes]]:
    header = f"Content-Type: {answer.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(header + answer.content)
    assert message.is_multipart()
    return [(str(part["Content-Type"]), part.get_payload(decode=True)) for part in message.get_payload()]


def frames_url(h2stack: H2Stack, data: dict[str, Any]) -> str:
    study, series, sop = uids_of(data["wsi"])
    return f"{h2stack.url}/t/{h2stack.issue([study])}/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames"


def test_stow_of_twenty_instances(h2stack: H2Stack, data: dict[str, Any], ct_stored: str) -> None:
    """The fixture's upload stored all 20; the same body again (a client's retry over h2) is answered alike."""
    again = h2stack.stow(data["ct"])
    assert (again.status_code, again.headers["Content-Type"]) == (200, "application/dicom+json")
    stored = {item["00081155"]["Value"][0] for item in again.json()["00081199"]["Value"]}
    assert stored == {uids_of(path)[2] for path in data["ct"]}
    assert "00081198" not in again.json()


@pytest.mark.parametrize("length", ["declared", "undeclared"])
def test_stow_to_a_study(h2stack: H2Stack, tmp_path: Path, length: str) -> None:
    """STOW-RS to /studies/{study}: NGINX hands it to Python from another location (an error page's redirect), with
    the body not yet read; over h2 with and without a Content-Length."""
    seed = {"declared": 186, "undeclared": 187}[length]
    files = make_series(tmp_path / "study", modality="CT", slices=3, seed=seed, clean=True)
    study = uids_of(files[0])[0]
    body = encode_multipart(files)
    answer = h2stack.client.post(
        f"{h2stack.url}/dicomweb/studies/{study}",
        content=b"".join(body) if length == "declared" else iter(body),
        headers={**h2stack.api, "Content-Type": body.content_type, "Accept": "application/dicom+json"},
    )
    assert (answer.http_version, answer.status_code) == ("HTTP/2", 200), answer.text
    for path in files:
        _, series, sop = uids_of(path)
        url = f"{h2stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        stored = h2stack.get(url, **h2stack.api, Accept="application/dicom")
        assert (stored.status_code, stored.content) == (200, path.read_bytes())


def test_frames_and_frame_lists(h2stack: H2Stack, data: dict[str, Any]) -> None:
    url = frames_url(h2stack, data)
    one = h2stack.get(f"{url}/7", Accept="image/jpeg")
    assert (one.status_code, one.headers["Content-Type"]) == (200, "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50")
    assert one.content == wsi_tile(182, 7, frames=300)
    listed = h2stack.get(f"{url}/5,1,300")
    assert listed.status_code == 200
    assert listed.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"; boundary=')
    assert [body for _, body in parts(listed)] == [wsi_tile(182, n, frames=300) for n in (5, 1, 300)]
    status, body = h2stack.curl(f"{url}/300", "-H", "Accept: image/jpeg")
    assert (status, body) == ("2 200", wsi_tile(182, 300, frames=300))


def test_a_hundred_frames_multiplexed_on_one_connection(h2stack: H2Stack, data: dict[str, Any]) -> None:
    """What a slide viewer does: every visible tile at once, as concurrent streams of one connection."""
    url = frames_url(h2stack, data)

    async def fetch() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(http2=True, verify=h2stack.tls, limits=limits, timeout=120) as client:
            return await asyncio.gather(
                *(client.get(f"{url}/{n}", headers={"Accept": "image/jpeg"}) for n in range(101, 201))
            )

    answers = asyncio.run(fetch())
    assert {a.http_version for a in answers} == {"HTTP/2"}
    assert len({id(a.extensions["network_stream"]) for a in answers}) == 1  # one TCP connection
    assert len({a.extensions["stream_id"] for a in answers}) == 100
    expected = [(200, wsi_tile(182, n, frames=300)) for n in range(101, 201)]
    assert [(a.status_code, a.content) for a in answers] == expected


def test_bulkdata_range_and_whole_study_byte_identical(h2stack: H2Stack, data: dict[str, Any], ct_stored: str) -> None:
    path = data["ct"][3]
    study, series, sop = uids_of(path)
    root = f"{h2stack.url}/t/{h2stack.issue([study])}/dicomweb/studies/{study}"
    pixels = pydicom.dcmread(path).PixelData
    bulk = f"{root}/series/{series}/instances/{sop}/bulkdata/7FE00010"
    part = h2stack.get(bulk, Accept="application/octet-stream", Range="bytes=100-1099")
    assert (part.status_code, part.headers["Content-Range"]) == (206, f"bytes 100-1099/{len(pixels)}")
    assert part.content == pixels[100:1100]
    tail = h2stack.get(bulk, Range="bytes=-10")
    assert (tail.status_code, tail.content) == (206, pixels[-10:])
    whole = h2stack.get(root, Accept="multipart/related; type=application/dicom")
    assert whole.status_code == 200
    got = sorted(hashlib.sha256(body).hexdigest() for _, body in parts(whole))
    assert got == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in data["ct"])


def test_whole_studies_retrieved_at_once_on_one_connection(
    h2stack: H2Stack, data: dict[str, Any], ct_stored: str
) -> None:
    """Eight retrieves of the 20-instance study as concurrent streams: NGINX composes each from storage (SSI) while
    h2 flow control interleaves them; every one byte-identical."""
    study = ct_stored
    url = f"{h2stack.url}/t/{h2stack.issue([study])}/dicomweb/studies/{study}"
    expected = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in data["ct"])

    async def fetch() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(http2=True, verify=h2stack.tls, limits=limits, timeout=120) as client:
            return await asyncio.gather(*(client.get(url) for _ in range(8)))

    answers = asyncio.run(fetch())
    assert len({id(a.extensions["network_stream"]) for a in answers}) == 1
    for answer in answers:
        assert (answer.http_version, answer.status_code) == ("HTTP/2", 200)
        assert sorted(hashlib.sha256(body).hexdigest() for _, body in parts(answer)) == expected


def test_metadata_and_qido_are_gzipped_json(h2stack: H2Stack, data: dict[str, Any], ct_stored: str) -> None:
    study, series, _ = uids_of(data["ct"][0])
    root = f"{h2stack.url}/t/{h2stack.issue([study])}/dicomweb"
    for url in (f"{root}/studies/{study}/metadata", f"{root}/studies/{study}/series/{series}/instances"):
        raw = h2stack.client.get(url, headers={"Accept-Encoding": "gzip"})
        plain = h2stack.get(url, **{"Accept-Encoding": "identity"})
        assert (raw.http_version, raw.status_code, plain.status_code) == ("HTTP/2", 200, 200)
        assert raw.headers["Content-Encoding"] == "gzip" and "Content-Encoding" not in plain.headers
        assert raw.headers["Content-Type"] == plain.headers["Content-Type"] == "application/dicom+json"
        assert raw.content == plain.content  # httpx decoded the gzip
        assert len(json.loads(raw.content)) == 20


def test_rendered_thumbnail_and_wado_uri(h2stack: H2Stack, data: dict[str, Any], ct_stored: str) -> None:
    path = data["ct"][0]
    study, series, sop = uids_of(path)
    root = f"{h2stack.url}/t/{h2stack.issue([study])}/dicomweb"
    rendered = h2stack.get(f"{root}/studies/{study}/series/{series}/instances/{sop}/rendered", Accept="image/png")
    assert (rendered.status_code, rendered.headers["Content-Type"]) == (200, "image/png")
    assert rendered.content[:8] == b"\x89PNG\r\n\x1a\n"
    thumbnail = h2stack.get(f"{root}/studies/{study}/series/{series}/thumbnail")
    assert (thumbnail.status_code, thumbnail.headers["Content-Type"]) == (200, "image/jpeg")
    assert thumbnail.content[:3] == b"\xff\xd8\xff"
    query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}&contentType=application%2Fdicom"
    wado = h2stack.get(f"{root}/wado?{query}")
    assert (wado.status_code, wado.headers["Content-Type"]) == (200, "application/dicom")
    assert wado.content == path.read_bytes()


def test_head_preconditions_and_preflight(h2stack: H2Stack, data: dict[str, Any], ct_stored: str) -> None:
    path = data["ct"][2]
    study, series, sop = uids_of(path)
    instance = f"{h2stack.url}/t/{h2stack.issue([study])}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    got = h2stack.get(instance, Accept="application/dicom")
    assert (got.status_code, got.content) == (200, path.read_bytes())
    head = h2stack.client.head(instance, headers={"Accept": "application/dicom"})
    assert (head.http_version, head.status_code, head.content) == ("HTTP/2", 200, b"")
    assert head.headers["Content-Length"] == str(len(path.read_bytes())) and head.headers["ETag"] == got.headers["ETag"]
    again = h2stack.get(instance, Accept="application/dicom", **{"If-None-Match": got.headers["ETag"]})
    assert (again.status_code, again.content) == (304, b"")
    part = h2stack.get(instance, Accept="application/dicom", Range="bytes=0-131")
    assert (part.status_code, part.headers["Content-Range"]) == (206, f"bytes 0-131/{len(path.read_bytes())}")
    assert part.content == path.read_bytes()[:132]
    preflight = h2stack.client.options(
        f"{h2stack.url}/dicomweb/studies",
        headers={"Origin": "https://portal.example", "Access-Control-Request-Method": "POST"},
    )
    assert (preflight.http_version, preflight.status_code) == ("HTTP/2", 204)
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://portal.example"
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST, OPTIONS"


def test_expect_100_continue(h2stack: H2Stack, data: dict[str, Any], tmp_path: Path) -> None:
    """HTTP/2 has no 100 (curl waits a second, then sends): the upload is stored; a refused one is JSON."""
    [path] = make_series(tmp_path / "expect", modality="CT", slices=1, seed=183, clean=True)
    body = encode_multipart([path])
    upload = tmp_path / "body"
    upload.write_bytes(b"".join(body))
    headers = ["-H", f"Content-Type: {body.content_type}", "-H", "Expect: 100-continue", "--data-binary", f"@{upload}"]
    url = f"{h2stack.url}/dicomweb/studies"
    auth = f"Authorization: {h2stack.api['Authorization']}"
    status, answer = h2stack.curl(url, *headers, "-H", auth, "-H", "Accept: application/dicom+json")
    assert status == "2 200", answer
    assert json.loads(answer)["00081199"]["Value"][0]["00081155"]["Value"] == [uids_of(path)[2]]
    status, answer = h2stack.curl(url, *headers)
    assert (status, json.loads(answer)) == ("2 401", MISSING)


def test_a_refused_upload_is_answered_before_its_body(h2stack: H2Stack, tmp_path: Path) -> None:
    """An upload the auth step refuses gets its JSON 401 at once, then RST_STREAM(NO_ERROR) (RFC 9113 8.1): the
    client stops sending its body (curl sent 64 KB, the stream's first window, of 8 MB)."""
    upload = tmp_path / "body"
    upload.write_bytes(b"\0" * (8 << 20))
    content_type = "Content-Type: multipart/related; type=application/dicom; boundary=x"
    for path in ("/dicomweb/studies", "/dicomweb/studies/1.2.3"):
        report, body = h2stack.curl(
            f"{h2stack.url}{path}",
            *("-H", content_type, "--data-binary", f"@{upload}"),
            report="%{http_version} %{http_code} %{size_upload}",
        )
        version, status, sent = report.split()
        assert (version, status, json.loads(body)) == ("2", "401", MISSING)
        assert int(sent) < 1 << 20, sent


def _cut_upload(h2stack: H2Stack, headers: list[tuple[str, str]], body: bytes) -> None:
    """Send ``headers`` and ``body`` on one h2 stream, then reset it (a client gone mid-upload): no END_STREAM."""
    parsed = urlparse(h2stack.url)
    tls = ssl.create_default_context(cafile=str(h2stack.cert))
    tls.set_alpn_protocols(["h2"])
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as raw:
        with tls.wrap_socket(raw, server_hostname=parsed.hostname) as sock:
            assert sock.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, [(":method", "POST"), (":scheme", "https"), (":authority", parsed.netloc),
                                       (":path", "/dicomweb/studies"), *headers])
            sent = 0
            while sent < len(body):
                room = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size, len(body) - sent)
                if room <= 0:  # NGINX opens the window as it passes the bytes on
                    conn.receive_data(sock.recv(65536))
                    sock.sendall(conn.data_to_send())
                    continue
                conn.send_data(stream, body[sent : sent + room])
                sent += room
                sock.sendall(conn.data_to_send())
            time.sleep(0.5)  # NGINX has passed the bytes on
            conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
            sock.sendall(conn.data_to_send())


@pytest.mark.parametrize("length", ["declared", "undeclared"])
def test_a_body_cut_mid_stream_stores_nothing_and_the_retry_stores_all(
    h2stack: H2Stack, tmp_path: Path, length: str
) -> None:
    """A client gone mid-upload (RST_STREAM). Without a Content-Length (h2 needs none) NGINX streams the body to
    gunicorn chunked: a cut must never read as a body that ended. Cut at an element boundary, where the file still
    parses (before its trailing padding), and in a multipart body after a whole part."""
    seed = {"declared": 184, "undeclared": 185}[length]
    [single] = make_series(tmp_path / "single", modality="CT", slices=1, seed=seed, clean=True)
    whole, cut = padded_file(single)
    first, second = make_series(tmp_path / "multi", modality="CT", slices=2, seed=seed + 10, clean=True)
    multipart = encode_multipart([first, second])
    body = b"".join(multipart)
    cut_at = body.index(second.read_bytes()[:1000]) + 1000

    def sized(headers: list[tuple[str, str]], size: int) -> list[tuple[str, str]]:
        return [*headers, ("content-length", str(size))] if length == "declared" else headers

    auth = ("authorization", h2stack.api["Authorization"])
    _cut_upload(h2stack, sized([auth, ("content-type", "application/dicom")], len(whole)), whole[:cut])
    _cut_upload(h2stack, sized([auth, ("content-type", multipart.content_type)], len(body)), body[:cut_at])
    time.sleep(0.5)
    instances = {}
    for path in (single, first, second):
        study, series, sop = uids_of(path)
        instances[path] = f"{h2stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    assert h2stack.get(instances[single], **h2stack.api).status_code == 404
    assert h2stack.get(instances[second], **h2stack.api).status_code == 404
    retry = h2stack.client.post(
        f"{h2stack.url}/dicomweb/studies", content=whole, headers={**h2stack.api, "Content-Type": "application/dicom"}
    )
    assert retry.status_code == 200, retry.text
    assert h2stack.stow([first, second]).status_code == 200
    for path, expected in ((single, whole), (first, first.read_bytes()), (second, second.read_bytes())):
        stored = h2stack.get(instances[path], **h2stack.api, Accept="application/dicom")
        assert (stored.status_code, stored.content) == (200, expected)


def test_errors_are_json(h2stack: H2Stack, data: dict[str, Any]) -> None:
    url = frames_url(h2stack, data)
    study = uids_of(data["wsi"])[0]
    token = h2stack.issue([study])
    cases = [
        (f"{h2stack.url}/dicomweb/studies", {}, 401, MISSING),
        (f"{h2stack.url}/t/{token}/dicomweb/studies/1.2.3", {}, 403, OUT_OF_SCOPE),
        (f"{h2stack.url}/nope", {}, 404, {"error": "not_found", "detail": "no such resource"}),
        (f"{url}/301", {"Accept": "image/jpeg"}, 404, {"error": "frame_not_found"}),
        (f"{url}/1", {"Accept": "text/html"}, 406, {"error": "not_acceptable"}),
    ]
    for target, headers, status, expected in cases:
        answer = h2stack.get(target, Origin="https://portal.example", **headers)
        assert (answer.status_code, answer.headers["Content-Type"]) == (status, "application/json"), target
        assert expected.items() <= answer.json().items(), answer.text
        assert answer.headers["Access-Control-Allow-Origin"] == "https://portal.example"
        assert answer.headers["Strict-Transport-Security"] == "max-age=63072000"


def test_plain_http_to_the_tls_port_is_a_json_400_saying_so(h2stack: H2Stack) -> None:
    """``http://`` typed for ``https://`` (the same host and port): NGINX's "400 The plain HTTP request was sent to
    HTTPS port" was an HTML page, where every error is JSON. It is the JSON 400 naming the scheme to use; the
    connection is closed (it cannot become TLS)."""
    plain = h2stack.url.replace("https://", "http://", 1)
    for method, path in (("GET", "/dicomweb/studies"), ("POST", "/api/v1/tokens"), ("GET", "/viewer/")):
        answer = httpx.request(method, f"{plain}{path}", headers=h2stack.api, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"], answer.headers["Connection"]) == (
            400,
            "application/json",
            "close",
        ), (path, answer.text)
        assert answer.json() == {
            "error": "bad_request",
            "detail": "this port speaks HTTPS: send the request to https:// instead of http://",
        }


@pytest.mark.parametrize("path", ["/dicomweb/studies", "/dicomweb/studies/1.2.3", "/api/v1/tokens"])
def test_a_body_too_large_is_a_json_413(h2stack: H2Stack, path: str) -> None:
    """Over HTTP/1.1 NGINX's 413 was our JSON; over HTTP/2 it was NGINX's HTML page (NGINX 1.22 checks the declared
    length again in the error page's own location)."""
    for client in ("httpx", "curl"):
        headers = {
            **h2stack.api,
            "Content-Type": "multipart/related; type=application/dicom; boundary=x",
            "Content-Length": str(1 << 40),
            "Origin": "https://portal.example",
        }
        if client == "httpx":
            request = h2stack.client.build_request("POST", f"{h2stack.url}{path}", headers=headers, content=b"x")
            answer = h2stack.client.send(request)
            assert answer.http_version == "HTTP/2"
            got = (answer.status_code, answer.headers["Content-Type"], answer.json())
            assert answer.headers["Access-Control-Allow-Origin"] == "https://portal.example"
        else:
            flags = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
            status, body = h2stack.curl(f"{h2stack.url}{path}", "-X", "POST", *flags, "--data-binary", "x")
            assert status == "2 413", body
            got = (413, "application/json", json.loads(body))
        limit = "1m" if path.startswith("/api/") else "8g"  # the API's JSON bodies are bounded apart (session 21)
        detail = {"error": "payload_too_large", "detail": f"the request body is larger than {limit}"}
        assert got == (413, "application/json", detail), client


def test_the_token_in_path_query_and_host_cookie(h2stack: H2Stack, data: dict[str, Any]) -> None:
    study = uids_of(data["wsi"])[0]
    token = h2stack.issue([study])
    studies = f"{h2stack.url}/dicomweb/studies"
    for url, headers in (
        (f"{h2stack.url}/t/{token}/dicomweb/studies", {}),
        (f"{studies}?token={token}", {}),
        (studies, {"Cookie": f"__Host-dicomgw_token={token}"}),
    ):
        answer = h2stack.get(url, **headers)
        assert answer.status_code == 200, (url, answer.text)
        assert [item["0020000D"]["Value"] for item in answer.json()] == [[study]]
    plain = h2stack.get(studies, Cookie=f"dicomgw_token={token}")  # over TLS only the __Host- cookie counts
    assert (plain.status_code, plain.json()) == (401, MISSING)
    # the session exchange sets the __Host- cookie over h2 too (a client of its own: the shared one keeps cookies)
    with httpx.Client(http2=True, verify=h2stack.tls) as client:
        session = client.get(f"{h2stack.url}/api/v1/session", params={"token": token, "next": "/viewer/"})
    assert (session.http_version, session.status_code) == ("HTTP/2", 303)
    assert session.headers["Set-Cookie"].startswith(f"__Host-dicomgw_token={token};")


def test_large_headers_a_browser_sends_reach_the_gateway(h2stack: H2Stack, data: dict[str, Any]) -> None:
    """A browser sends each cookie of the site as its own header field over h2 (RFC 9113 8.2.3) and NGINX joins
    them into one Cookie line; NGINX bounds h2 headers by their HPACK-encoded size and the whole list (128 KB),
    not by the 32 KB line it takes over HTTP/1.1. Lines longer than 32 KB were refused by gunicorn: the cookie
    line made the auth step fail (a 503 "gateway unavailable"), any other header was gunicorn's HTML 431."""
    study = uids_of(data["wsi"])[0]
    token = h2stack.issue([study])
    studies = f"{h2stack.url}/dicomweb/studies"
    crumbs = [
        ("cookie", f"analytics={'a' * 20000}"),
        ("cookie", f"__Host-dicomgw_token={token}"),
        ("cookie", f"preferences={'b' * 20000}"),
    ]
    answer = h2stack.client.get(studies, headers=crumbs)
    assert (answer.http_version, answer.status_code) == ("HTTP/2", 200), answer.text[:200]
    assert [item["0020000D"]["Value"] for item in answer.json()] == [[study]]
    long_header = h2stack.get(f"{h2stack.url}/t/{token}/dicomweb/studies", **{"X-Client-State": "c" * 40000})
    assert (long_header.status_code, long_header.headers["Content-Type"]) == (200, "application/dicom+json")


def _wire(response: dict[str, Any]) -> tuple[str, int, str]:
    return response.get("protocol", ""), int(response["status"]), str(response["url"])


@pytest.mark.browser
def test_the_viewer_over_https_h2(h2stack: H2Stack, data: dict[str, Any], ct_stored: str) -> None:
    """Chromium loads the viewer, a CT and a slide over h2, by a token link and by the WebView's __Host- cookie."""
    playwright_sync = pytest.importorskip("playwright.sync_api")
    require(Path(CHROMIUM).exists(), f"{CHROMIUM} is not installed (`make test` installs it with apt)")
    study, slide = ct_stored, uids_of(data["wsi"])[0]
    token = h2stack.issue([study, slide])
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            # the certificate is the stack's own: Chromium is told to take it, as a user accepts it once
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1200, "height": 800})
            page = context.new_page()
            page.set_default_timeout(30_000)
            seen: list[tuple[str, int, str]] = []
            cdp = context.new_cdp_session(page)
            cdp.on(
                "Network.responseReceived",
                lambda event: seen.append(_wire(event["response"])),
            )
            cdp.send("Network.enable")
            for url, count in (
                (f"{h2stack.url}/viewer/#study={study}&token={token}", "20"),
                (f"{h2stack.url}/viewer/#study={slide}&token={token}", "300"),
                (f"{h2stack.url}/api/v1/session?token={token}&next={quote(f'/viewer/#study={study}', safe='')}", "20"),
            ):
                page.goto("about:blank")  # a link differing only in its fragment would not load the page again
                page.goto(url)
                page.wait_for_selector(f"#viewport[data-state=ready][data-count='{count}']")
                page.wait_for_function(
                    "() => { const d = document.getElementById('viewport').dataset;"
                    " return Number(d.loaded) >= 1 && document.getElementById('progress').hidden; }"
                )
            cookies = {c["name"]: c for c in context.cookies()}
            assert cookies["__Host-dicomgw_token"]["secure"] and cookies["__Host-dicomgw_token"]["httpOnly"]
        finally:
            browser.close()
    wire = [(protocol, status, url) for protocol, status, url in seen if url.startswith("https:")]
    frames = [url for _, _, url in wire if "/frames/" in url]
    assert len([url for url in frames if slide in url]) >= 1 and len([url for url in frames if study in url]) >= 20
    assert [entry for entry in wire if entry[0] != "h2" or entry[1] >= 400] == []


def test_over_long_requests_over_h2_are_refused_at_once(h2stack: H2Stack, data: dict[str, Any]) -> None:
    """Over HTTP/2 as over HTTP/1.1 (test_hostile.py): a retrieve URI over 8,000 bytes is the JSON 414 with CORS, a
    search for 300 studies by UID is answered, 1,000 headers are the JSON 431. Over NGINX's h2 limits the request
    fails at once, unanswered, never hangs: a URI of 64 KB (curl's; httpx sends none over 32 KB, curl none of 1 MB)
    ends its stream, a header list over 128 KB the connection (GOAWAY ENHANCE_YOUR_CALM: the HPACK state is the
    connection's, RFC 9113 4.3)."""
    study, series, sop = uids_of(data["wsi"])
    token = h2stack.issue([study])
    root = f"{h2stack.url}/t/{token}/dicomweb"
    origin = {"Origin": "https://portal.example"}
    uri_error = {"error": "uri_too_long", "detail": "the request URI is longer than 8000 bytes (32 KB for a search)"}
    for size in (8 * 1024, 32 * 1024 - 200):
        answer = h2stack.get(f"{root}/studies/{study}/metadata?x={'a' * size}", **origin)
        assert (answer.status_code, answer.json()) == (414, uri_error)
        assert answer.headers["Access-Control-Allow-Origin"] == "https://portal.example"
    report, body = h2stack.curl(f"{root}/studies/{study}/metadata?x={'a' * 33 * 1024}")  # httpx sends none as long
    assert (report, json.loads(body)) == ("2 414", uri_error)
    # a :path field of 64 KB is over NGINX's h2 limit: the stream ends unanswered, at once
    started = time.monotonic()
    url = f"{root}/studies/{study}/metadata?x={'a' * 64 * 1024}"
    done = subprocess.run(["curl", "-sS", "--http2", "--cacert", str(h2stack.cert), url], capture_output=True)
    assert (done.returncode, done.stdout) == (56, b""), done.stderr[-300:]
    assert time.monotonic() - started < 20  # not a hang (a loaded 2-core CI machine can take seconds)
    uids = [f"1.2.826.0.1.3680043.8.498.{10**37 + n}" for n in range(299)] + [study]
    answer = h2stack.get(f"{root}/studies?StudyInstanceUID={','.join(uids)}", **origin)
    assert answer.status_code == 200 and [item["0020000D"]["Value"] for item in answer.json()] == [[study]]
    answer = h2stack.get(f"{root}/studies", **{f"X-Header-{n}": "v" for n in range(1000)})
    assert (answer.status_code, answer.json()["error"]) == (431, "request_header_fields_too_large")
    started = time.monotonic()
    with httpx.Client(http2=True, verify=h2stack.tls, timeout=30) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="error_code:11"):
            client.get(f"{root}/studies", headers={"X-Client-State": "a" * 130_000})
    assert time.monotonic() - started < 20  # not a hang (a loaded 2-core CI machine can take seconds)
