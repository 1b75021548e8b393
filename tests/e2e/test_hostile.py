"""Issue 11 (4, 6, 9, 10, 13) through the real NGINX: malformed request lines, every error class a client can
trigger answered as JSON, multi-range requests, stored objects that are not regular files, and tokens kept out of
every log whatever the request looks like."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pydicom
import pytest
import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack


def raw(stack: RunningStack, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given (no client library normalises them); status, headers and body of the answer."""
    parsed = urlparse(stack.url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as connection:
        try:
            connection.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # NGINX answered and closed before a long request was all sent: its answer is still there to read
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return int(lines[0].split(" ")[1]), headers, body


def get(path: str, **headers: str) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "gw", **headers, "Connection": "close"}.items())
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode("latin-1")


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, (status, body[:300])
    assert headers["content-type"] == "application/json", (headers, body[:300])
    document: dict[str, Any] = json.loads(body)
    assert set(document) == {"error", "detail"} and all(isinstance(v, str) and v for v in document.values())
    return document


@pytest.fixture(scope="module")
def ct(stack: RunningStack, synthetic: dict[str, Any]) -> dict[str, str]:
    study, series, sop = uids_of(synthetic["ct"][0])
    token = stack.issue([study])["token"]
    return {"study": study, "series": series, "sop": sop, "token": token, "root": f"/t/{token}/dicomweb"}


# -- 4: malformed request lines --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"GET /dicomweb/studies\x00x HTTP/1.1",
        b"GET /dicomweb/studies%00 HTTP/1.1",
        b"GET /dicomweb/\tstudies HTTP/1.1",
        b"GET * HTTP/1.1",
        b"get /dicomweb/studies HTTP/1.1",
        b"GET dicomweb/studies HTTP/1.1",
        b"GET /dicomweb/ studies HTTP/1.1",
        b"PRI * HTTP/2.0",
    ],
)
def test_malformed_request_line_is_a_json_400(stack: RunningStack, line: bytes) -> None:
    status, headers, body = raw(stack, line + b"\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert_json_error(status, headers, body, 400)


def test_a_dot_segment_is_the_json_400_of_a_path_that_is_not_canonical(stack: RunningStack, ct: dict[str, str]) -> None:
    """A "." segment is a dot segment as ".." is (RFC 3986 3.3, 5.2.4; clients remove them before sending). NGINX
    routed "/./healthz" as "/healthz" and Python read the raw path: a 404; a DICOMweb path with one was the auth
    step's 403 "invalid_path", as if the token were refused, and the viewer served it. Each is now the 400 that
    "..", "//" and a backslash get, before any location, decision or cache."""
    instance = f"{ct['root']}/studies/{ct['study']}/series/{ct['series']}/instances/{ct['sop']}"
    key = f"Bearer {stack.stack.api_key}"
    refused = {"error": "bad_request", "detail": "the request path is not canonical"}
    failures = []
    for path in (
        "/./healthz",
        "/healthz/.",
        "/api/v1/./admin/audit",
        "/viewer/./index.html",
        "/.",
        f"{ct['root']}/./studies",
        f"{ct['root']}/studies/.",
        f"{instance}/./frames/1",
        f"{instance}/frames/1/.",
        f"/t/{ct['token']}/./dicomweb/studies",
    ):
        status, headers, body = raw(stack, get(path, Authorization=key) if "/api/" in path else get(path))
        try:
            assert (status, assert_json_error(status, headers, body, 400)) == (400, refused)
        except (AssertionError, ValueError, KeyError) as error:
            failures.append(f"{path.replace(ct['token'], 'T')}: {error!r}")
    assert not failures, "\n".join(failures)
    # a dot inside a segment is no dot segment: UIDs and the viewer's assets keep theirs
    status, headers, body = raw(stack, get(f"{instance}/metadata"))
    assert (status, headers["content-type"]) == (200, "application/dicom+json"), body[:200]


def test_a_jti_of_bytes_no_token_holds_is_not_revoked(stack: RunningStack) -> None:
    """``POST /api/v1/tokens/{jti}/revoke`` with raw bytes outside ASCII in the path (a jti copied with a Cyrillic
    "а" for the Latin one, fullwidth digits, a byte that is no UTF-8): Python's str.isalnum() took them and the
    admin got the 204 of a revocation that matches no token, the token still working. A jti is
    ``[A-Za-z0-9_-]{1,64}``, as the gateway writes it: anything else is the JSON 400 "malformed jti"."""
    key = f"Authorization: Bearer {stack.stack.api_key}\r\n"
    issued = stack.issue(["1.2.3"], sub="revoke-bytes")
    for jti in (issued["jti"].encode()[:-1] + "а".encode(), "１２３".encode(), b"\xff", b"abc\xc3\xa9"):
        request = b"POST /api/v1/tokens/" + jti + b"/revoke HTTP/1.1\r\nHost: gw\r\n" + key.encode()
        status, headers, body = raw(stack, request + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        assert assert_json_error(status, headers, body, 400) == {"error": "bad_request", "detail": "malformed jti"}, jti
    # a jti as issued is revoked as before
    request = f"POST /api/v1/tokens/{issued['jti']}/revoke HTTP/1.1\r\nHost: gw\r\n{key}Content-Length: 0\r\n"
    status, _, body = raw(stack, request.encode() + b"Connection: close\r\n\r\n")
    assert (status, body) == (204, b"")


def test_a_read_with_a_large_body_is_a_json_413_before_it_is_read(stack: RunningStack, ct: dict[str, str]) -> None:
    """NGINX reads a request's body whole before it proxies a read plan or /healthz, past 1 MB into a temp file: a
    GET of /healthz (no credential needed) or of a frame with a body of STOW's limit (8 GB) had NGINX write all of
    it to disk, and a few such requests at once filled the disk the caches and the catalog live on. A read has no use
    for a body (RFC 9110 9.3.1): past 1 MB, announced or chunked, it is the JSON 413 at once; a smaller one is read in
    memory and the read answered as before."""
    instance = f"{ct['root']}/studies/{ct['study']}/series/{ct['series']}/instances/{ct['sop']}"
    too_large = {"error": "payload_too_large", "detail": "the request body is larger than 1m"}
    body = b"\0" * (1024 * 1024 + 1)
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    for path, accept in (
        ("/healthz", "*/*"),
        ("/readyz", "*/*"),
        (f"{instance}/frames/1", "application/octet-stream"),
        (instance, "application/dicom"),
        (f"{instance}/bulkdata/7FE00010", "application/octet-stream"),
        (f"{ct['root']}/studies/{ct['study']}", 'multipart/related; type="application/dicom"'),
    ):
        head = f"GET {path} HTTP/1.1\r\nHost: gw\r\nAccept: {accept}\r\nConnection: close\r\n"
        for framing, content in ((f"Content-Length: {len(body)}", body), ("Transfer-Encoding: chunked", chunked)):
            status, headers, answer = raw(stack, f"{head}{framing}\r\n\r\n".encode() + content)
            assert assert_json_error(status, headers, answer, 413) == too_large, (path, framing)
    # every 413 names the limit of the location that refused it: /healthz, /readyz and /metrics take 1 MB whatever
    # the method (a POST or DELETE there was refused at 1 MB but named STOW's 8g)
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        for path in ("/healthz", "/readyz", "/metrics"):
            head = f"{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
            status, headers, answer = raw(stack, head.encode() + body)
            assert assert_json_error(status, headers, answer, 413) == too_large, (method, path)
    # an upload's limit stays STOW's, named as such (the error page's redirect makes any method a GET)
    upload = f"POST {ct['root']}/studies HTTP/1.1\r\nHost: gw\r\nContent-Type: application/dicom\r\n"
    status, headers, answer = raw(stack, f"{upload}Content-Length: {1 << 40}\r\nConnection: close\r\n\r\n".encode())
    assert assert_json_error(status, headers, answer, 413)["detail"] == "the request body is larger than 8g"
    # a body of a few bytes, as some clients send with a GET, is no reason to refuse the read
    octets = {"Accept": "application/octet-stream"}
    frame = requests.get(f"{stack.url}{instance}/frames/1", data=b"{}", headers=octets, timeout=30)
    without = requests.get(f"{stack.url}{instance}/frames/1", headers=octets, timeout=30)
    assert frame.request.headers["Content-Length"] == "2"
    assert (frame.status_code, frame.content) == (200, without.content) and len(without.content) == 512 * 512 * 2


def test_http09_request_line_is_a_json_400(stack: RunningStack) -> None:
    """A request line without a version that NGINX cannot parse is answered as HTTP/1.1: a status line and JSON."""
    status, headers, body = raw(stack, b"GET *\r\n\r\n")
    assert_json_error(status, headers, body, 400)


def _closed_without_a_byte(connect: socket.socket, request: bytes) -> bytes:
    with connect as connection:
        connection.settimeout(10)
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_http09_requests_are_closed_without_an_answer(stack: RunningStack, ct: dict[str, str]) -> None:
    """HTTP/0.9 (``GET /path`` without a version) has no status line and no headers: NGINX answered it with a bare
    body (a frame's bytes, /healthz's JSON, the viewer's page, an error page's JSON) a client could not tell from
    anything else. Every server block now closes it without a byte; HTTP/1.0 is still answered."""
    instance = f"{ct['root']}/studies/{ct['study']}/series/{ct['series']}/instances/{ct['sop']}"
    parsed = urlparse(stack.url)
    for path in (f"{instance}/frames/1", instance, "/healthz", "/viewer/", "/", "/dicomweb/x/%2e%2e", "/_dgw/error"):
        for line in (f"GET {path}\r\n", f"GET {path}\n"):
            connection = socket.create_connection((parsed.hostname, parsed.port))
            assert _closed_without_a_byte(connection, line.encode()) == b"", line
    # HTTP/0.9 has only GET: NGINX's 400 for another method was a bare JSON body too; and a bare LF ends the request
    # line early (the rest is never read as a request)
    for request in (b"HEAD /healthz\r\n", b"POST /dicomweb/studies\n", b"GET /healthz\n HTTP/1.1\r\nHost: gw\r\n\r\n"):
        connection = socket.create_connection((parsed.hostname, parsed.port))
        assert _closed_without_a_byte(connection, request) == b"", request
    status, _, body = raw(stack, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    # the local-folder origin server (its own socket, which the main server proxies to)
    origin = socket.socket(socket.AF_UNIX)
    origin.connect(str(stack.stack.run_dir / "storage.sock"))
    assert _closed_without_a_byte(origin, b"GET /\r\n") == b""


# -- 10: every error class a client can trigger is JSON ---------------------------------------------------------


INTERNAL_PATHS = [
    "/_seg/0-1/studies/x.dcm",
    "/_seg/all/studies/x.dcm",
    "/_fseg/x",
    "/_file/x",
    "/_obj/x",
    "/_frame/dicomweb/studies/1/series/2/instances/3/frames/1",
    "/_plan/dicomweb/studies/1",
    "/_auth",
    "/_block3/dicomweb/studies/1/series/2/instances/3/frames/1",
    "/_dgw/abort",
    "/_dgw/error",
    "/_dgw/storage",
    "/_dgw/storage-503",
]


def error_cases(ct: dict[str, str]) -> list[tuple[str, bytes, int]]:
    root, study, series, sop = ct["root"], ct["study"], ct["series"], ct["sop"]
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    post = "POST {} HTTP/1.1\r\nHost: gw\r\n{}Connection: close\r\n\r\n{}"
    many_headers = {f"X-Header-{n}": "v" for n in range(150)}
    beyond = "bytes=99999999-"
    return [
        ("path not canonical", get(f"{root}/studies/{study}/%2e%2e"), 400),
        ("header too large", get("/dicomweb/studies", X="a" * 40000), 431),
        ("no Host", b"GET /dicomweb/studies HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (
            "broken chunked body",
            post.format("/dicomweb/studies", "Transfer-Encoding: chunked\r\n", "zz\r\n").encode(),
            400,
        ),
        (
            "broken chunked STOW body",
            post.format(f"{root}/studies/{study}", "Transfer-Encoding: chunked\r\n", "zz\r\n").encode(),
            400,
        ),
        ("token missing", get(f"/dicomweb/studies/{study}/series"), 401),
        ("token garbage", get(f"/t/garbage/dicomweb/studies/{study}/series"), 401),
        (
            "STOW to /studies/{st} with a read token",
            post.format(
                f"{root}/studies/{study}", "Content-Type: application/dicom\r\nContent-Length: 0\r\n", ""
            ).encode(),
            403,  # a good token without write: insufficient_scope (RFC 6750 3.1)
        ),
        (
            "method the auth step refuses",
            f"DELETE {instance} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode(),
            403,
        ),
        ("study out of scope", get(f"{root}/studies/1.2.3/series"), 403),
        ("a folder of static files", get("/viewer/assets/"), 403),
        ("unknown path", get("/nope"), 404),
        ("POST to a static file", post.format("/viewer/index.html", "Content-Length: 0\r\n", "").encode(), 405),
        ("unknown DICOMweb resource", get(f"{root}/studies/{study}/nope"), 404),
        ("frame out of range", get(f"{instance}/frames/999"), 404),
        ("not acceptable", get(instance, Accept="text/html"), 406),
        ("body too large", post.format(f"{root}/studies", "Content-Length: 99999999999\r\n", "").encode(), 413),
        (
            "STOW body too large to /studies/{st}",
            post.format(f"{root}/studies/{study}", "Content-Length: 99999999999\r\n", "").encode(),
            413,
        ),
        # reaching Python, both are the JSON 400 of a malformed date (a parameter QIDO does not know is ignored)
        ("5 KB URI (over gunicorn's default request line)", get(f"{root}/studies?StudyDate={'a' * 5000}"), 400),
        ("150 headers (over gunicorn's default count)", get(f"{root}/studies?StudyDate=1", **many_headers), 400),
        ("retrieve URI over 8,000 bytes", get(f"{instance}/metadata?x={'a' * 8100}"), 414),
        ("URI longer than NGINX's buffers", get(f"{root}/studies?x={'a' * 40000}"), 414),
        ("range beyond the object", get(instance, Accept="application/dicom", Range="bytes=99999999-"), 416),
        # NGINX's JSON answers on a path whose last segment has an extension were typed by it (text/html, image/svg+xml,
        # application/javascript, a thumbnail's image/jpeg): the named error locations keep the client's URI
        ("token missing, path ending .html", get("/dicomweb/x.html"), 401),
        ("token garbage, path ending .js", get("/t/garbage/dicomweb/a.js"), 401),
        ("out of scope, path ending .svg", get(f"{root}/x.svg"), 403),
        ("not a UID, path ending .png", get("/dicomweb/studies/1.png"), 400),
        ("range beyond a thumbnail", get(f"{root}/studies/{study}/series/{series}/thumbnail", Range=beyond), 416),
        ("unknown transfer encoding", post.format("/api/v1/tokens", "Transfer-Encoding: gzip\r\n", "").encode(), 501),
        ("HTTP/3 on a HTTP/1 socket", b"GET / HTTP/3.0\r\nHost: gw\r\nConnection: close\r\n\r\n", 505),
        # a raw query byte that is not UTF-8 (a 500 from werkzeug's request.args before), on each kind of route
        ("raw non-UTF-8 byte in a QIDO query", get(f"{root}/studies?PatientName=\xff"), 400),
        ("raw non-UTF-8 byte in a metadata query", get(f"{instance}/metadata?x=\xc3"), 400),
        ("raw non-UTF-8 byte in a rendered query", get(f"{instance}/rendered?quality=\xff"), 400),
        (
            "raw non-UTF-8 byte in a WADO-URI query",
            get(f"{root}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}&contentType=\xff"),
            400,
        ),
        ("raw non-UTF-8 byte in the session exchange", get("/api/v1/session?token=\xff"), 400),
        # NGINX's internal locations asked for directly (a closed connection without an answer, or a 403, before)
        *((f"internal path {path}", get(path), 404) for path in INTERNAL_PATHS),
    ]


def test_every_error_a_client_can_trigger_is_json(stack: RunningStack, ct: dict[str, str]) -> None:
    failures = []
    for name, request, expected in error_cases(ct):
        status, headers, body = raw(stack, request)
        try:
            assert_json_error(status, headers, body, expected)
        except (AssertionError, ValueError, KeyError) as error:
            failures.append(f"{name}: {error!r}")
    assert not failures, "\n".join(failures)


def test_a_method_the_resource_does_not_take_is_a_405_with_allow(stack: RunningStack, ct: dict[str, str]) -> None:
    """PUT, PATCH, an unknown method, or POST/DELETE where no resource takes them: a JSON 405 naming what the
    resource takes (RFC 9110 requires Allow), whatever the credential; they were a 403 "out_of_scope" even with the
    API key, a POST to a frame a 404, and no 405 had an Allow header. DELETE where it exists stays the auth step's
    (API key only: a token gets 403, above)."""
    root, study, series, sop = ct["root"], ct["study"], ct["series"], ct["sop"]
    instance = f"studies/{study}/series/{series}/instances/{sop}"
    key = {"Authorization": f"Bearer {stack.stack.api_key}"}
    cases = [
        ("PUT", "studies", "GET, HEAD, POST, OPTIONS"),
        ("PATCH", f"studies/{study}", "GET, HEAD, POST, DELETE, OPTIONS"),
        ("FOO", instance, "GET, HEAD, DELETE, OPTIONS"),
        ("TRACE", f"{instance}/frames/1", "GET, HEAD, OPTIONS"),
        ("POST", f"{instance}/frames/1", "GET, HEAD, OPTIONS"),
        ("POST", f"{instance}/bulkdata/7FE00010", "GET, HEAD, OPTIONS"),
        ("POST", f"studies/{study}/metadata", "GET, HEAD, OPTIONS"),
        ("DELETE", "studies", "GET, HEAD, POST, OPTIONS"),
        ("DELETE", f"studies/{study}/series", "GET, HEAD, OPTIONS"),
    ]
    failures = []
    for method, path, allow in cases:
        for base, headers in ((root, {}), ("/dicomweb", key)):
            lines = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "gw", **headers, "Connection": "close"}.items())
            request = f"{method} {base}/{path} HTTP/1.1\r\n{lines}Content-Length: 0\r\n\r\n".encode()
            status, answer, body = raw(stack, request)
            try:
                assert_json_error(status, answer, body, 405)
                assert answer.get("allow") == allow, answer
            except (AssertionError, ValueError, KeyError) as error:
                failures.append(f"{method} {base}/{path}: {error!r}")
    # Python's own 405s keep werkzeug's Allow too
    status, answer, body = raw(stack, b"PUT /api/v1/tokens HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert_json_error(status, answer, body, 405)
    assert set(answer.get("allow", "").split(", ")) == {"POST", "OPTIONS"}, answer
    # and NGINX's own 405 there (TRACE, refused before any location) names what Python names: it said "GET, HEAD,
    # POST, DELETE" on every API path, methods none of them takes
    for path in (
        "/api/v1/tokens",
        "/api/v1/tokens/abc/revoke",
        "/api/v1/tokens/renew",
        "/api/v1/session",
        "/api/v1/admin/audit",
        "/api/v1/admin/access",
        "/api/v1/admin/quarantine",
        "/api/v1/admin/quarantine/incoming/a.dcm/release",
        "/api/v1/admin/quarantine/incoming/a.dcm/preview",
        "/api/v1/admin/quarantine/incoming/a.dcm",
        "/api/v1/admin/erasure",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        allowed = []
        for method in ("PUT", "TRACE"):
            request = f"{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode()
            status, answer, body = raw(stack, request)
            assert_json_error(status, answer, body, 405)
            allowed.append(set(answer.get("allow", "").split(", ")))
        if allowed[0] != allowed[1]:
            failures.append(f"{path}: PUT's Allow {allowed[0]}, TRACE's {allowed[1]}")
    # a path that names no resource is the 404 for every method (a PUT there was a 405 saying GET was allowed)
    for path in ("/nothing", "/index.html", "/t/abc/viewer"):
        for method in ("GET", "PUT", "DELETE", "OPTIONS", "POST", "PATCH"):
            request = f"{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            status, answer, body = raw(stack, request.encode())
            assert_json_error(status, answer, body, 404)
            if "allow" in answer:
                failures.append(f"{method} {path}: Allow {answer['allow']} on a 404")
    assert not failures, "\n".join(failures)


def test_options_names_what_the_resource_takes(stack: RunningStack, ct: dict[str, str]) -> None:
    """An OPTIONS (a CORS preflight or not) is answered by NGINX; it had no Allow, which RFC 9110 9.3.7 names as
    what an OPTIONS answer should carry: the same list a 405 on that resource gives."""
    root, study, series, sop = ct["root"], ct["study"], ct["series"], ct["sop"]
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    cases = [
        (f"{root}/studies", "GET, HEAD, POST, OPTIONS"),
        (f"{root}/studies/{study}", "GET, HEAD, POST, DELETE, OPTIONS"),
        (instance, "GET, HEAD, DELETE, OPTIONS"),
        (f"{instance}/frames/1", "GET, HEAD, OPTIONS"),
        (f"/dicomweb/studies/{study}/series/{series}/thumbnail", "GET, HEAD, OPTIONS"),
        ("/api/v1/tokens/renew", "POST, OPTIONS"),
    ]
    for path, allow in cases:
        for origin in ({}, {"Origin": "https://portal.example", "Access-Control-Request-Method": "GET"}):
            answer = requests.options(f"{stack.url}{path}", headers=origin, timeout=30)
            assert answer.status_code == 204, (path, answer.text)
            assert answer.headers.get("Allow") == allow, (path, answer.headers)


def test_json_nested_deeper_than_the_decoder_is_a_400(stack: RunningStack) -> None:
    """A JSON body nested 100,000 deep (RecursionError in the decoder) is malformed JSON like any other: a JSON 400,
    never a 500 "unexpected server error" (it was one, even on the unauthenticated renewal route)."""
    deep = b'{"token":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    key = f"Authorization: Bearer {stack.stack.api_key}\r\n"
    for path, auth in (("/api/v1/tokens/renew", ""), ("/api/v1/tokens", key), ("/api/v1/admin/erasure", key)):
        head = f"POST {path} HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\n"
        head += f"Content-Length: {len(deep)}\r\nConnection: close\r\n\r\n"
        status, headers, body = raw(stack, head.encode() + deep)
        assert_json_error(status, headers, body, 400)


def test_a_json_key_given_twice_is_a_400(stack: RunningStack, ct: dict[str, str]) -> None:
    """``{"studies": [A], "studies": [B]}``: the last one silently won, so a portal that read the first and the
    gateway could issue a token for different studies from one body. Every JSON API refuses it, naming the key."""
    key = f"Authorization: Bearer {stack.stack.api_key}\r\n"
    for path, auth, body, twice in (
        ("/api/v1/tokens", key, f'{{"sub":"u","studies":["{ct["study"]}"],"studies":["1.2.3"]}}', "studies"),
        ("/api/v1/tokens/renew", "", '{"token":"a","token":"b"}', "token"),
        ("/api/v1/admin/erasure", key, '{"patient_id":"x","reason":"r","patient_id":"y"}', "patient_id"),
    ):
        head = f"POST {path} HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        status, headers, answer = raw(stack, head.encode() + body.encode())
        error = assert_json_error(status, headers, answer, 400)
        assert error["detail"] == f"the JSON body gives {twice!r} twice", error


def test_long_uri_and_many_headers_are_served(stack: RunningStack, ct: dict[str, str]) -> None:
    """Whatever NGINX lets through, gunicorn takes too (its defaults refused 4 KB lines and 100 headers)."""
    query = "&".join(["includefield=00080020"] * 350)
    assert 7500 < len(f"{ct['root']}/studies/{ct['study']}/series?{query}") < 8000
    many_headers = {f"X-Header-{n}": "v" for n in range(150)}
    status, headers, body = raw(stack, get(f"{ct['root']}/studies/{ct['study']}/series?{query}", **many_headers))
    assert status == 200, body[:300]
    assert headers["content-type"] == "application/dicom+json"
    assert ct["series"] in [item["0020000E"]["Value"][0] for item in json.loads(body)]


ORIGIN = "https://portal.example"  # the harness's allowed CORS origin


@pytest.mark.parametrize("size", [8 * 1024, 32 * 1024, 64 * 1024, 1024 * 1024])
@pytest.mark.parametrize("where", ["path", "query"])
def test_an_over_long_uri_is_a_json_414_at_once(stack: RunningStack, ct: dict[str, str], where: str, size: int) -> None:
    """A retrieve's URI of 8 KB to 1 MB, long in its path or its query: the JSON 414 at once, never NGINX's HTML
    page, a hang or a closed connection; with CORS while NGINX reads the request line whole (up to 32 KB)."""
    instance = f"{ct['root']}/studies/{ct['study']}/series/{ct['series']}/instances/{ct['sop']}"
    uri = f"{instance}/{'1' * size}" if where == "path" else f"{instance}/metadata?x={'a' * size}"
    started = time.monotonic()
    status, headers, body = raw(stack, get(uri, Origin=ORIGIN))
    assert time.monotonic() - started < 20  # not a hang (a loaded 2-core CI machine can take seconds)
    error = assert_json_error(status, headers, body, 414)
    assert error["detail"] == "the request URI is longer than 8000 bytes (32 KB for a search)"
    assert (headers.get("access-control-allow-origin") == ORIGIN) == (len(uri) < 32 * 1024 - 100), headers


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Client-State": "a" * 32 * 1024},
        {"X-Client-State": "a" * 64 * 1024},
        {"X-Client-State": "a" * 1024 * 1024},
        {"Cookie": "state=" + "a" * 40000},
        {f"X-Header-{n}": "v" for n in range(1000)},
        {f"X-Header-{n}": "a" * 30000 for n in range(5)},  # each line NGINX takes, 150 KB in all
    ],
    ids=["32 KB line", "64 KB line", "1 MB line", "40 KB cookie", "1000 headers", "five 30 KB lines"],
)
def test_over_large_headers_are_a_json_431(stack: RunningStack, ct: dict[str, str], headers: dict[str, str]) -> None:
    """Header lines over NGINX's 32 KB buffer, headers over its buffers, or too many, were a 400 "the request is
    malformed" (NGINX's own code for them, 494, answered as a 400): they are the 431 RFC 6585 section 5 defines,
    as JSON that says why, with CORS, at once."""
    started = time.monotonic()
    status, answer, body = raw(stack, get(f"{ct['root']}/studies", Origin=ORIGIN, **headers))
    assert time.monotonic() - started < 20  # not a hang (a loaded 2-core CI machine can take seconds)
    error = assert_json_error(status, answer, body, 431)
    detail = "the request headers are too large (a line over 32 KB, or too many)"
    assert error == {"error": "request_header_fields_too_large", "detail": detail}
    assert answer["access-control-allow-origin"] == ORIGIN, answer


def test_a_search_for_300_studies_by_uid_is_answered(stack: RunningStack, ct: dict[str, str]) -> None:
    """A study list asks for its 300 studies by StudyInstanceUID in one QIDO query (~20 KB of 64-character UIDs):
    every URI over 8,000 bytes was the 414. A search's URI may be as long as NGINX reads (32 KB): searches are
    answered by Python uncached, while retrieve URIs, which are plan cache keys, stay within 8,000 bytes."""
    others = [f"1.2.826.0.1.3680043.8.498.{10**37 + n}" for n in range(299)]
    assert {len(uid) for uid in others} == {64}
    studies = f"{ct['root']}/studies?StudyInstanceUID={','.join([*others[:150], ct['study'], *others[150:]])}"
    series = f"{ct['root']}/studies/{ct['study']}/series?SeriesInstanceUID={','.join([*others, ct['series']])}"
    for uri, level, uid in ((studies, "0020000D", ct["study"]), (series, "0020000E", ct["series"])):
        assert 19000 < len(uri) < 32000
        status, headers, body = raw(stack, get(uri, Origin=ORIGIN))
        assert status == 200, body[:300]
        assert headers["access-control-allow-origin"] == ORIGIN
        assert [item[level]["Value"][0] for item in json.loads(body)] == [uid]
    # longer than NGINX reads: its own 414, still JSON
    status, headers, body = raw(stack, get(f"{ct['root']}/studies?StudyInstanceUID={','.join(others * 2)}"))
    assert_json_error(status, headers, body, 414)


def test_a_list_of_more_modalities_than_dicom_defines_is_a_400(stack: RunningStack, ct: dict[str, str]) -> None:
    """``ModalitiesInStudy`` with 500 distinct codes (2.5 KB of query): each code is a test of its own in the
    search's SQL, and a few hundred passed SQLite's expression depth, so the search was a 503 "catalog unavailable"
    with Retry-After, which a client retries for ever and an operator reads as an outage. PS3.3 defines fewer than
    128 modality codes: a longer list is the client's mistake, a JSON 400 saying so; 128 are still searched."""
    codes = [f"{a}{b}{c}" for a in "ABCDEFGHIJ" for b in "KLMNOPQRST" for c in "UVWXY"]  # none of them CT
    for listed in (codes, [f"{code}*" for code in codes]):
        status, headers, body = raw(stack, get(f"{ct['root']}/studies?ModalitiesInStudy={','.join(listed)}"))
        error = assert_json_error(status, headers, body, 400)
        assert error == {"error": "bad_request", "detail": "ModalitiesInStudy: a list of at most 128 codes (500 given)"}
    status, headers, body = raw(stack, get(f"{ct['root']}/studies?ModalitiesInStudy={','.join([*codes[:127], 'CT'])}"))
    assert status == 200, body[:300]
    assert [item["0020000D"]["Value"][0] for item in json.loads(body)] == [ct["study"]]


def test_416_keeps_content_range(stack: RunningStack, ct: dict[str, str], synthetic: dict[str, Any]) -> None:
    """RFC 9110 15.5.17: a 416 says the representation's length (``bytes */{size}``), so a client can ask again. The
    local origin's is kept; S3 (moto alike) sends none with a whole object's 416, and a download resuming past the
    end of an instance on S3 got no length to start again from: the gateway names the size the catalog holds."""
    instance = f"{ct['root']}/studies/{ct['study']}/series/{ct['series']}/instances/{ct['sop']}"
    for wanted in ("bytes=99999999-", "bytes=-0"):
        status, headers, body = raw(stack, get(instance, Accept="application/dicom", Range=wanted))
        assert_json_error(status, headers, body, 416)
        assert headers["content-range"] == f"bytes */{synthetic['ct'][0].stat().st_size}", wanted
        assert headers["access-control-expose-headers"].split(", ").count("Content-Range") == 1


def test_a_thumbnails_416_keeps_content_range(stack: RunningStack, ct: dict[str, str]) -> None:
    """A stored thumbnail is a whole object as an instance is: on S3 (moto alike) its 416 had no Content-Range, so
    a client had no length to ask again from; it says ``bytes */{size}`` on every storage, the thumbnail rendered
    by the request itself or stored before."""
    series = f"{ct['root']}/studies/{ct['study']}/series/{ct['series']}"
    for url in (f"{series}/instances/{ct['sop']}/thumbnail", f"{series}/thumbnail"):
        for _ in range(2):  # the first may render and store it, the second finds it stored
            status, headers, body = raw(stack, get(url, Accept="image/jpeg", Range="bytes=99999999-"))
            assert_json_error(status, headers, body, 416)
            whole = requests.get(stack.url + url, headers={**stack.api_headers, "Accept": "image/jpeg"}, timeout=30)
            assert whole.status_code == 200 and whole.headers["Content-Type"] == "image/jpeg"
            assert headers["content-range"] == f"bytes */{len(whole.content)}", url
            assert "x-dgw-size" not in headers and "X-Dgw-Size" not in whole.headers


def test_a_last_position_beyond_any_object_means_to_the_end(
    stack: RunningStack, ct: dict[str, str], synthetic: dict[str, Any]
) -> None:
    """RFC 9110 14.1.2: a last-pos past the end is the end. Twenty digits overflowed storage's parser: a 416 for the
    whole instance, where frames answered 206."""
    instance = f"{ct['root']}/studies/{ct['study']}/series/{ct['series']}/instances/{ct['sop']}"
    whole = synthetic["ct"][0].read_bytes()
    status, headers, body = raw(
        stack, get(instance, Accept="application/dicom", Range="bytes=100-99999999999999999999")
    )
    assert status == 206, body[:200]
    assert headers["content-range"] == f"bytes 100-{len(whole) - 1}/{len(whole)}"
    assert body == whole[100:]


@pytest.mark.parametrize(
    "suffix", ["9223372036854775808", "99999999999999999999", "00000000000000000000000000018446744073709551616"]
)
def test_a_suffix_longer_than_any_object_is_the_whole_object(
    stack: RunningStack, ct: dict[str, str], synthetic: dict[str, Any], suffix: str
) -> None:
    """RFC 9110 14.1.3: a suffix-length past the representation's is the whole of it. One beyond 2^63 - 1 overflowed
    storage's parser: the instance was the JSON 416 ``bytes */{size}``, where its frames and bulk data answered 206
    with every byte. A suffix of leading zeros is still its value: the last 500 bytes."""
    instance = f"{ct['root']}/studies/{ct['study']}/series/{ct['series']}/instances/{ct['sop']}"
    whole = synthetic["ct"][0].read_bytes()
    status, headers, body = raw(stack, get(instance, Accept="application/dicom", Range=f"bytes=-{suffix}"))
    assert status == 206, body[:200]
    assert headers["content-range"] == f"bytes 0-{len(whole) - 1}/{len(whole)}"
    assert body == whole
    status, headers, body = raw(stack, get(instance, Accept="application/dicom", Range=f"bytes=-{'0' * 20}500"))
    last = f"bytes {len(whole) - 500}-{len(whole) - 1}/{len(whole)}"
    assert (status, headers["content-range"], body) == (206, last, whole[-500:])


@pytest.fixture(scope="module")
def tiny(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 16x16 CT slice stored for these tests: its one frame (and Pixel Data) is 512 bytes, shorter than a range
    from 600."""
    seed = 1701 if stack.backend == "file" else 1702
    folder = tmp_path_factory.mktemp("tiny")
    [path] = make_series(folder, modality="CT", slices=1, rows=16, columns=16, seed=seed, clean=True)
    assert stack.stow([path]).status_code == 200
    study, series, sop = uids_of(path)
    root = stack.root(stack.issue([study])["token"])
    pixels = pydicom.dcmread(path).PixelData
    assert len(pixels) == 512
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    return {"instance": instance, "file": path.read_bytes(), "pixels": pixels}


def _tiny_targets(tiny: dict[str, Any]) -> list[tuple[str, dict[str, str], bytes]]:
    octets = {"Accept": "application/octet-stream"}
    return [
        (tiny["instance"], {"Accept": "application/dicom"}, tiny["file"]),
        (f"{tiny['instance']}/frames/1", octets, tiny["pixels"]),
        (f"{tiny['instance']}/bulkdata/7FE00010", octets, tiny["pixels"]),
    ]


INVALID_RANGES = [
    "bytes=600-2", "bytes=5-2", "BYTES=3-0", "bytes=0012-011", "bytes=", "bytes=abc", "items=0-5",
    # whitespace inside a range-spec: NGINX ignored it for a whole instance, Python's plan served frames a 206
    "bytes= 0-9", "bytes=\t0-9", "bytes=0-\t9",
]  # fmt: skip


@pytest.mark.parametrize("invalid", INVALID_RANGES)
def test_an_invalid_range_is_ignored(stack: RunningStack, tiny: dict[str, Any], invalid: str) -> None:
    """RFC 9110 14.1.1: a byte-range-spec whose last position is below its first is invalid, and a Range that is
    not a valid ranges-specifier must be ignored: the whole body, a 200. ``bytes=5-2`` of a whole instance was a
    416 (storage answered it), and of a frame or bulk value a 416 when its first position was past the end."""
    for url, accept, whole in _tiny_targets(tiny):
        answer = requests.get(url, headers={**accept, "Range": invalid}, timeout=30)
        assert answer.status_code == 200, (url, invalid, answer.status_code, answer.text[:200])
        assert "Content-Range" not in answer.headers
        assert answer.content == whole


@pytest.mark.parametrize("unsatisfiable", ["bytes=-0", "bytes=999999999-", "bytes={length}-"])
def test_a_valid_unsatisfiable_range_stays_a_416(
    stack: RunningStack, tiny: dict[str, Any], unsatisfiable: str
) -> None:
    """``bytes=-0`` (an empty suffix) and a first position at or past the end are valid but unsatisfiable: 416."""
    for url, accept, whole in _tiny_targets(tiny):
        wanted = unsatisfiable.format(length=len(whole))
        status, headers, body = raw(stack, get(urlparse(url).path, **accept, Range=wanted))
        assert_json_error(status, headers, body, 416)
        assert headers["content-range"] == f"bytes */{len(whole)}", (url, wanted)


# -- 6: multi-range ---------------------------------------------------------------------------------------------


def test_multi_range_answers_the_whole_object(
    stack: RunningStack, ct: dict[str, str], synthetic: dict[str, Any]
) -> None:
    data = synthetic["ct"][0].read_bytes()
    instance = f"{stack.url}{ct['root']}/studies/{ct['study']}/series/{ct['series']}/instances/{ct['sop']}"
    wado = (
        f"{stack.url}{ct['root']}/wado?requestType=WADO&studyUID={ct['study']}&seriesUID={ct['series']}"
        f"&objectUID={ct['sop']}&contentType=application/dicom"
    )
    for url in (instance, wado):
        for multi in ("bytes=0-1,5-6", "bytes=0-1, 5-6", "bytes=128-131,0-0"):
            answer = requests.get(url, headers={"Accept": "application/dicom", "Range": multi}, timeout=30)
            assert answer.status_code == 200, (url, multi, answer.status_code)
            assert answer.headers["Content-Type"] == "application/dicom"
            assert answer.content == data
        single = requests.get(url, headers={"Accept": "application/dicom", "Range": "bytes=128-131"}, timeout=30)
        assert single.status_code == 206
        assert single.headers["Content-Range"] == f"bytes 128-131/{len(data)}"
        assert single.content == b"DICM"


# -- several Accept lines ---------------------------------------------------------------------------------------


def _answer(stack: RunningStack, path: str, accepts: list[str], **headers: str) -> tuple[int, str, bytes]:
    """Status, Content-Type and body of a GET sending each of ``accepts`` as an Accept line of its own (http.client
    sends header lines as given), multipart boundaries blanked so two answers compare."""
    parsed = urlparse(stack.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        for value in accepts:
            connection.putheader("Accept", value)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        content_type, body = response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()
    boundary = re.search(r"boundary=([^;\s]+)", content_type)
    if boundary:
        content_type = content_type.replace(boundary.group(1), "B")
        body = body.replace(boundary.group(1).encode(), b"B")
    return response.status, content_type, body


ACCEPT_LINES = [
    ["image/jpeg", "application/octet-stream"],
    ["application/dicom+json", "application/octet-stream"],
    ["application/octet-stream; q=0.5", 'multipart/related; type="application/octet-stream"'],
    ['multipart/related; type="application/octet-stream"; q=0.5', "application/octet-stream"],
]


@pytest.mark.parametrize("accepts", ACCEPT_LINES)
def test_several_accept_lines_are_answered_as_one_joined_line(
    stack: RunningStack, ct: dict[str, str], accepts: list[str]
) -> None:
    """RFC 9110 5.3: a field sent as several lines is the same as one comma-joined line. NGINX 1.22 keyed and made
    plans on the first Accept line only (``image/jpeg`` then ``application/octet-stream`` was a 406 for a frame
    that one line with both serves). Each target first with the lines, then joined, then with the first value
    alone: a plan cached for the lines never answers the one value."""
    instance = f"{ct['root']}/studies/{ct['study']}/series/{ct['series']}/instances/{ct['sop']}"
    for path, headers in (
        (f"{instance}/frames/1", {}),  # njs's per-frame plans (/_frame/)
        (f"{instance}/frames/1", {"Range": "bytes=0-99"}),  # Python's (/_plan/)
        (f"{instance}/bulkdata/7FE00010", {}),
        (f"{instance}/metadata", {}),
    ):
        lines = _answer(stack, path, accepts, **headers)
        joined = _answer(stack, path, [", ".join(accepts)], **headers)
        assert lines == joined, (path, headers, lines[:2], joined[:2])
        assert lines[0] in (200, 206) or path.endswith("/metadata"), (path, lines[:2])
        alone = _answer(stack, path, accepts[:1], **headers)
        fresh = _answer(stack, f"{path}?x={len(accepts[0])}", accepts[:1], **headers)  # a key nothing was cached on
        assert alone[:2] == fresh[:2], (path, alone[:2], fresh[:2])


# -- 9 and 10: stored objects that are missing or not regular files ---------------------------------------------


@pytest.fixture
def victim(stack: RunningStack, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """A series of its own per test (so no other test sees the damage), its second instance about to be broken;
    restored afterwards."""
    seed = 1000 + zlib.crc32(request.node.nodeid.encode()) % 100000
    files = make_series(tmp_path / "victim", modality="MR", slices=2, seed=seed, clean=True)
    answer = stack.stow(files)
    assert answer.status_code == 200, answer.text
    study, series, sop = uids_of(files[1])
    token = stack.issue([study])["token"]
    root = f"{stack.url}/t/{token}/dicomweb"
    key = f"studies/{study}/series/{series}/instances/{sop}.dcm"
    saved = tmp_path / "saved.dcm"
    stack.storage().download(key, saved)
    yield {"study": study, "series": series, "sop": sop, "key": key, "root": root, "saved": str(saved)}
    if stack.backend == "file":
        target = stack.stack.var_dir / "objects" / key
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    stack.storage().put_file(key, saved)


def assert_never_other_bytes(stack: RunningStack, victim: dict[str, str]) -> None:
    study, series, sop, root = victim["study"], victim["series"], victim["sop"], victim["root"]
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    # Multipart bodies are composed as they stream: the transfer must fail, never complete as a 200.
    for url in (f"{root}/studies/{study}/series/{series}", f"{instance}/frames/1", instance):
        try:
            answer = requests.get(url, timeout=30)
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError):
            continue
        assert answer.status_code != 200, (url, answer.content[:200])
    wado = (
        f"{root}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
        "&contentType=application/dicom"
    )
    for url, accept in (
        (instance, "application/dicom"),
        (wado, "*/*"),
        (f"{instance}/rendered", "image/jpeg"),
        (f"{instance}/thumbnail", "image/jpeg"),
    ):
        answer = requests.get(url, headers={"Accept": accept}, timeout=30)
        assert answer.status_code == 404, (url, answer.status_code, answer.content[:200])
        assert answer.headers["Content-Type"] == "application/json", url
        assert answer.json()["error"] == "not_found"


def test_missing_object_is_never_served_as_other_bytes(stack: RunningStack, victim: dict[str, str]) -> None:
    stack.storage().delete(victim["key"])
    assert_never_other_bytes(stack, victim)


def break_object(stack: RunningStack, victim: dict[str, str], kind: str) -> Path:
    """Put a directory, a dangling symlink or a FIFO where the victim's object was."""
    target = stack.stack.var_dir / "objects" / victim["key"]
    target.unlink()
    if kind == "directory":
        target.mkdir()
    elif kind == "dangling symlink":
        target.symlink_to(target.parent / "nowhere.dcm")
    else:
        os.mkfifo(target)
    return target


@pytest.mark.parametrize("stack", ["file"], indirect=True)
@pytest.mark.parametrize("kind", ["directory", "dangling symlink", "fifo"])
def test_frames_of_an_object_that_is_not_a_regular_file_are_the_whole_objects_json_404(
    stack: RunningStack, victim: dict[str, str], kind: str
) -> None:
    """No object for NGINX, none for Python: frames and bulkdata answer the whole object's JSON 404 (a directory or
    FIFO passed the presence check of their plan, which then aborted the transfer)."""
    break_object(stack, victim, kind)
    instance = f"{victim['root']}/studies/{victim['study']}/series/{victim['series']}/instances/{victim['sop']}"
    gone = {"error": "not_found", "detail": "the object is missing from storage"}
    for suffix, accept in (
        ("", "application/dicom"),
        ("/frames/1", "application/octet-stream"),
        ("/bulkdata/7FE00010", "application/octet-stream"),
    ):
        answer = requests.get(instance + suffix, headers={"Accept": accept}, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"], answer.json()) == (404, "application/json", gone)


@pytest.mark.parametrize("stack", ["file"], indirect=True)
@pytest.mark.parametrize("kind", ["directory", "dangling symlink", "fifo"])
def test_object_that_is_not_a_regular_file(stack: RunningStack, victim: dict[str, str], kind: str) -> None:
    """Tests run as root, so an unreadable mode would not stop the reader: these shapes do."""
    target = break_object(stack, victim, kind)
    assert_never_other_bytes(stack, victim)
    # the gateway still works (no worker is left blocked on the FIFO)
    target.unlink() if not target.is_dir() else target.rmdir()
    shutil.copyfile(victim["saved"], target)
    whole = requests.get(
        f"{victim['root']}/studies/{victim['study']}/series/{victim['series']}/instances/{victim['sop']}",
        headers={"Accept": "application/dicom"},
        timeout=30,
    )
    assert whole.status_code == 200 and whole.content == Path(victim["saved"]).read_bytes()


@pytest.mark.parametrize("stack", ["file"], indirect=True)
def test_object_cut_short_never_serves_a_short_frame(stack: RunningStack, victim: dict[str, str]) -> None:
    """A frame whose bytes now lie past the end of its object (cut short behind the gateway's back): the transfer
    fails, never a complete 200 with fewer or other bytes (njs reads local ranges: a short read is not a frame)."""
    target = stack.stack.var_dir / "objects" / victim["key"]
    target.write_bytes(target.read_bytes()[:1024])
    instance = f"{victim['root']}/studies/{victim['study']}/series/{victim['series']}/instances/{victim['sop']}"
    for accept in ("application/octet-stream", 'multipart/related; type="application/octet-stream"'):
        for _ in range(2):  # the frame's plan made, then cached
            try:
                answer = requests.get(f"{instance}/frames/1", headers={"Accept": accept}, timeout=30)
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError):
                continue
            assert answer.status_code != 200, (accept, len(answer.content))


# -- 13: no token in any log --------------------------------------------------------------------------------------


def test_no_token_reaches_any_log_whatever_the_request_looks_like(stack: RunningStack, ct: dict[str, str]) -> None:
    study = ct["study"]
    token = stack.issue([study], sub="hostile-shapes")["token"]
    shapes = [
        f"/t/x/../t/{token}/dicomweb/studies/{study}/series",
        f"/t/x/%2e%2e/t/{token}/dicomweb/studies",
        f"/dicomweb/t/{token}/studies",
        f"//t/{token}/dicomweb/studies",
        f"/t/{token}",
        f"/t/t/{token}/dicomweb/studies",
        f"/T/{token}/dicomweb/studies",
        f"/%74/{token}/dicomweb/studies",
        f"/t%2f{token}/dicomweb/studies",
        f"/t\\{token}\\dicomweb",
        f"/t/{token}/dicomweb/studies/{study}/series?token={token}",
        f"/dicomweb/studies/{study}/series?token={token}&token={token}",
        f"/dicomweb/studies/{study}/series?a=1&TOKEN={token}",
        f"/dicomweb/studies/{study}/series?%74oken={token}",
        f"/dicomweb/studies/{study}/series?x=token&token={token}",
        f"/dicomweb/studies/{study}/series?xtoken={token}",
        f"/t/{token}/dicomweb/studies\x00",
        f"/t/{token}/dicomweb/\tstudies",
        f"/t/{token}/dicomweb/ studies",
        f"/t/{token}/dicomweb/studies/{study}/series/1.2.3/instances/4.5.6/frames/1",  # a storage miss
        f"/api/v1/session?next=/viewer/&token={token}",
    ]
    for shape in shapes:
        status, _, _ = raw(stack, get(shape))
        assert status < 500, shape
    stack.settle_access_log()
    logs = [p for p in stack.stack.var_dir.rglob("*") if p.is_file() and p.suffix in (".log", ".out")]
    assert stack.stack.access_log in logs
    for path in logs:
        text = path.read_bytes()
        assert token.encode() not in text, path
        assert token.split(".")[-1].encode() not in text, path  # not even the signature
    entries = [e for e in stack.access_log() if e["uri"].startswith("/t/***/dicomweb/studies/")]
    assert entries, "the masked path is still logged"


def test_answers_nginx_gives_itself_keep_the_query_in_the_access_log(stack: RunningStack) -> None:
    """An error page redirect empties $args: the logged query comes from the request line instead. (The path is
    none of ours, so it is logged as "/***"; the limit, a value the log shows, tells this request apart.)"""
    marker = os.urandom(6).hex()
    limit = int.from_bytes(os.urandom(3), "big") + 1
    status, headers, body = raw(stack, get(f"/no/such/{marker}?probe={marker}&limit={limit}"))
    assert_json_error(status, headers, body, 404)
    stack.settle_access_log()
    logged = [e["status"] for e in stack.access_log() if e["uri"] == f"/***?probe=***&limit={limit}"]
    assert logged == [404]


def test_query_values_that_may_be_phi_or_credentials_never_reach_the_access_log(
    stack: RunningStack, ct: dict[str, str]
) -> None:
    """QIDO matching values can be PHI, and a client may put a credential under any parameter name: the access log
    (a file on disk, echoed to CloudWatch by the collector) keeps every parameter's name but only the values that
    name a resource or a representation. The audit still finds the study of a WADO-URI read (its UIDs are kept)."""
    root, study, series, sop = ct["root"], ct["study"], ct["series"], ct["sop"]
    secrets_sent = ["DOE^JOHNATHAN", "PID-884422", "ACC-77110", "19570312", "k3y-" + os.urandom(8).hex(), "SMITHSON"]
    name, patient_id, accession, birth, api_key, fuzzy = secrets_sent
    requests.get(
        f"{stack.url}{root}/studies",
        params={"PatientName": name, "PatientID": patient_id, "00080050": accession, "limit": "5"},
        timeout=30,
    )
    born = {"PatientBirthDate": birth, "includefield": "00100010"}
    requests.get(f"{stack.url}{root}/studies", params=born, timeout=30)
    # the matching switches are booleans: only "true" or "false" is shown, a name sent there is not
    switches = {"fuzzymatching": fuzzy, "emptyvaluematching": "true", "multiplevaluematching": "false", "limit": "6"}
    requests.get(f"{stack.url}{root}/studies", params=switches, timeout=30)
    requests.get(f"{stack.url}{root}/studies", params={"emptyvaluematching": fuzzy, "limit": "7"}, timeout=30)
    requests.post(f"{stack.url}/api/v1/tokens", params={"api_key": api_key}, json={}, timeout=30)
    requests.get(f"{stack.url}/api/v1/admin/access", params={"key": api_key}, timeout=30)
    wado = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    requests.get(f"{stack.url}{root}/wado", params={**wado, "contentType": "application/dicom"}, timeout=30)
    stack.settle_access_log()
    text = stack.stack.access_log.read_bytes()
    for value in secrets_sent:
        assert value.encode() not in text and value.replace("^", "%5E").encode() not in text, value
    uris = [e["uri"] for e in stack.access_log()]
    assert f"{root.replace(ct['token'], '***')}/studies?PatientName=***&PatientID=***&00080050=***&limit=5" in uris
    assert f"{root.replace(ct['token'], '***')}/studies?PatientBirthDate=***&includefield=00100010" in uris
    assert "/api/v1/tokens?api_key=***" in uris and "/api/v1/admin/access?key=***" in uris
    switched = "fuzzymatching=***&emptyvaluematching=true&multiplevaluematching=false&limit=6"
    assert f"{root.replace(ct['token'], '***')}/studies?{switched}" in uris
    assert f"{root.replace(ct['token'], '***')}/studies?emptyvaluematching=***&limit=7" in uris
    wado_query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    assert any(uri.endswith(f"/wado?{wado_query}&contentType=application%2Fdicom") for uri in uris), uris


def test_a_patient_name_in_a_path_never_reaches_the_access_log(stack: RunningStack, ct: dict[str, str]) -> None:
    """A portal that puts what it has in the path (studies/Zylberstein^Quirinus/series) gets a 403 or 404, and the
    access log kept the name: a path is now logged as it is only when each segment is one of ours (UIDs, frame
    lists, bulkdata tags, route words), else up to the first segment that is not, then "/***"."""
    root, study, series, sop = ct["root"], ct["study"], ct["series"], ct["sop"]
    masked = root.replace(ct["token"], "***")
    name = "Zylberstein^Quirinus"  # sent as Zylberstein%5EQuirinus: cut at the "%", as before
    requests.get(f"{stack.url}{root}/studies/{name}/series", timeout=30)
    requests.get(f"{stack.url}{root}/studies/Zylberstein/series", timeout=30)
    requests.get(f"{stack.url}/dicomweb/studies/{study}/series/PID88442211", headers=stack.api_headers, timeout=30)
    # a segment that begins like a UID is cut whole, never after its digits
    requests.get(f"{stack.url}/dicomweb/studies/{study}/series/1957031299Doe", headers=stack.api_headers, timeout=30)
    frame = f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/1"
    assert requests.get(f"{stack.url}{frame}", timeout=30).status_code == 200
    stack.settle_access_log()
    text = stack.stack.access_log.read_bytes()
    for value in (name, "Zylberstein", "PID88442211", "/series/1957031299"):
        assert value.encode() not in text and value.replace("^", "%5E").encode() not in text, value
    uris = [e["uri"] for e in stack.access_log()]
    assert "/***" in uris and f"{masked}/studies/***" in uris
    assert f"/dicomweb/studies/{study}/series/***" in uris
    assert frame.replace(ct["token"], "***") in uris  # our own paths stay whole: the audit needs their UIDs


# -- a refused path is not the series' decision -------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["file"], indirect=True)
def test_a_path_refused_below_a_series_does_not_refuse_the_series(stack: RunningStack, ct: dict[str, str]) -> None:
    """NGINX keeps an auth decision per credential, method and series (every frame of a series shares one). A path
    whose instance segment is no UID (a Java client's ``;jsessionid=`` path parameter) is refused 403
    ``invalid_path``, and that refusal was kept as the series' decision: for the next seconds every read of the
    series with that credential, the metadata and frames a viewer asks for next, was the same 403. The refusal
    concerns that path alone, so it is not kept; and it is the client's mistake, a 400 (it was a 403, or Python's
    400 when NGINX had kept an allowing decision for the series)."""
    series = f"/studies/{ct['study']}/series/{ct['series']}"
    # fresh tokens: no decision of theirs is kept yet, so the odd path is the first the auth step judges
    in_path, in_header = (stack.issue([ct["study"]])["token"] for _ in range(2))
    for root, headers in ((f"/t/{in_path}/dicomweb", {}), ("/dicomweb", {"Authorization": f"Bearer {in_header}"})):
        instance = f"{stack.url}{root}{series}/instances/{ct['sop']}"
        odd = requests.get(f"{instance};jsessionid=1F2E/metadata", headers=headers, timeout=30)
        assert (odd.status_code, odd.content) == (
            400, b'{"error":"invalid_path","detail":"a UID path segment is not a valid DICOM UID"}'
        )
        for url, accept in (
            (f"{instance}/metadata", "application/dicom+json"),
            (f"{instance}/frames/1", "application/octet-stream"),
            (f"{stack.url}{root}{series}/instances", "application/dicom+json"),
        ):
            answer = requests.get(url, headers={**headers, "Accept": accept}, timeout=30)
            assert (answer.status_code, answer.headers["Content-Type"].split(";")[0]) == (200, accept), (
                url,
                answer.content[:200],
            )


# -- JSON bodies that are valid JSON and no Unicode text ----------------------------------------------------------


@pytest.mark.parametrize("stack", ["file"], indirect=True)
def test_a_lone_surrogate_in_a_json_body_is_a_400_and_changes_nothing(
    stack: RunningStack, ct: dict[str, str], synthetic: dict[str, Any]
) -> None:
    """``"\\ud800"`` is valid JSON and no Unicode text (an unpaired surrogate). In an erasure's ``patient_id``,
    ``issuer`` or ``reason`` it reached the catalog, where encoding it as UTF-8 failed: a 500, and for ``reason`` the
    deletion had begun (rolled back). Any JSON body holding one is now a 400 before anything is read from it; a
    surrogate pair (one character outside the BMP) is text and is read as before."""
    patient = str(pydicom.dcmread(synthetic["ct"][0]).PatientID)
    refused = {
        "error": "bad_request",
        "detail": "the JSON body holds a lone surrogate escape (\\ud800-\\udfff): strings must be Unicode text",
    }
    for path, body in (
        ("/api/v1/admin/erasure", b'{"patient_id":"\\ud800"}'),
        ("/api/v1/admin/erasure", b'{"patient_id":"P","issuer":"\\udfff"}'),
        ("/api/v1/admin/erasure", b'{"patient_id":"' + patient.encode() + b'","reason":"x\\ud800"}'),
        ("/api/v1/tokens", b'{"sub":"\\udc00","studies":["1.2.3"]}'),
        ("/api/v1/tokens", b'{"\\ud800":1}'),
    ):
        answer = requests.post(
            f"{stack.url}{path}",
            data=body,
            headers={**stack.api_headers, "Content-Type": "application/json"},
            timeout=30,
        )
        assert (answer.status_code, answer.headers["Content-Type"], answer.json()) == (
            400, "application/json", refused
        ), body
    # nothing was erased: the study is still there, and no deletion was recorded
    token = stack.issue([ct["study"]])["token"]
    listed = requests.get(f"{stack.root(token)}/studies?StudyInstanceUID={ct['study']}", timeout=30)
    assert [s["0020000D"]["Value"] for s in listed.json()] == [[ct["study"]]]
    audit = requests.get(
        f"{stack.url}/api/v1/admin/audit",
        params={"kind": "deletion", "study_uid": ct["study"]},
        headers=stack.api_headers,
        timeout=10,
    )
    assert audit.json()["items"] == []
    # a pair is one character (U+1F600): read as text, a sub the token rules then judge as they judge any
    paired = requests.post(
        f"{stack.url}/api/v1/tokens",
        data=b'{"sub":"\\ud83d\\ude00","studies":["1.2.3"]}',
        headers={**stack.api_headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert paired.status_code == 400 and paired.json()["detail"].startswith("sub must be")


@pytest.mark.parametrize("stack", ["file"], indirect=True)
def test_a_request_the_auth_step_cannot_read_is_a_400_whether_or_not_a_decision_is_kept(
    stack: RunningStack, ct: dict[str, str]
) -> None:
    """A path whose instance segment is no UID was the auth step's 403 (as if the token were refused), or Python's
    400 when NGINX held an allowing decision for the series from a read in the last seconds: one request, two
    answers. A WADO-URI query naming no object was a token's 403 ``out_of_scope`` and the API key's 400. Each is now
    the same JSON 400 whoever asks and whatever NGINX holds."""
    token = stack.issue([ct["study"]])["token"]
    series = f"{stack.root(token)}/studies/{ct['study']}/series/{ct['series']}"
    odd = f"{series}/instances/{ct['sop']};jsessionid=1F2E/metadata"
    cold = requests.get(odd, timeout=30)  # the first request of this token: no decision kept
    assert requests.get(f"{series}/instances/{ct['sop']}/metadata", timeout=30).status_code == 200  # one kept now
    warm = requests.get(odd, timeout=30)
    invalid = {"error": "invalid_path", "detail": "a UID path segment is not a valid DICOM UID"}
    for answer in (cold, warm):
        assert (answer.status_code, answer.headers["Content-Type"], answer.json()) == (400, "application/json", invalid)
    wado = f"requestType=WADO&studyUID={ct['study']}&seriesUID={ct['series']}"
    for query, detail in (
        ("requestType=WADO", "WADO-URI needs exactly one objectUID"),
        (wado.removeprefix("requestType=WADO&") + f"&objectUID={ct['sop']}", "WADO-URI needs exactly one requestType"),
        (f"{wado}&objectUID={ct['sop']}&objectUID={ct['sop']}", "WADO-URI needs exactly one objectUID"),
        (f"requestType=WADO&objectuid={ct['sop']}", "WADO-URI needs exactly one objectUID"),
    ):
        by_token = requests.get(f"{stack.root(token)}/wado?{query}", timeout=30)
        by_key = requests.get(f"{stack.url}/dicomweb/wado?{query}", headers=stack.api_headers, timeout=30)
        for answer in (by_token, by_key):
            assert (answer.status_code, answer.json()) == (400, {"error": "bad_request", "detail": detail}), query
