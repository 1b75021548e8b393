"""Tokens, cookies and the browser as portals and mobile WebViews use them (session 22, real Chromium, real stack).

A portal on another origin embeds the viewer in an iframe or calls DICOMweb with ``fetch()``; a WebView trades its
URL token for the session cookie. What those clients can read and keep is the browser's decision, so it is the
browser that judges here: a cross-site iframe's cookie (third-party cookie rules), the JSON error and the challenge
of a refused ``fetch()`` (CORS on every answer), hostile tokens and path tricks, which must all fail closed.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import pytest
import requests

from gateway.dicomweb.multipart import encode_multipart
from gateway.tools.stack import own_certificate
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_viewer import (  # noqa: F401 - browser and portal are fixtures
    ARTIFACTS,
    NetworkLog,
    Portal,
    browser,
    open_page,
    portal,
    wait_ready,
)

pytestmark = pytest.mark.browser

CHALLENGE = 'Bearer realm="dicom-gateway"'
INVALID = 'Bearer realm="dicom-gateway", error="invalid_token"'
SECURE_COOKIE = "__Host-dicomgw_token"
# the unpartitioned cookie of the same name, deleted as the partitioned one is set
UNPARTITIONED_DELETED = (
    "__Host-dicomgw_token=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Secure; HttpOnly; Path=/; SameSite=None"
)
APP_ORIGIN = "capacitor://localhost"  # what WKWebView sends from a Capacitor app's bundled pages


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two small studies: the token's (CT, two series) and another patient's (MR)."""
    base = tmp_path_factory.mktemp("token-clients-data")
    ct = make_series(base / "ct", modality="CT", slices=3, seed=41, clean=True)
    ct_b = make_series(base / "ct-b", modality="CT", slices=2, seed=43, clean=True, study_uid=uids_of(ct[0])[0])
    mr = make_series(base / "mr", modality="MR", slices=2, seed=42, clean=True)
    return {"files": [*ct, *ct_b, *mr], "ct": uids_of(ct[0]), "ct_b": uids_of(ct_b[0]), "mr": uids_of(mr[0])}


def store(running: RunningStack, files: list[Path]) -> None:
    body = encode_multipart(files)
    with own_certificate():
        answer = requests.post(
            f"{running.url}/dicomweb/studies",
            data=body,
            headers={"Content-Type": body.content_type, "Accept": "application/dicom+json", **running.api_headers},
            timeout=120,
            verify=False,  # noqa: S501 - the stack's own self-signed certificate
        )
    assert answer.status_code == 200, answer.text


def issue(running: RunningStack, studies: list[str], **body: Any) -> dict[str, Any]:
    with own_certificate():
        answer = requests.post(
            f"{running.url}/api/v1/tokens",
            json={"sub": "portal-user", "studies": studies, **body},
            headers=running.api_headers,
            timeout=30,
            verify=False,  # noqa: S501 - the stack's own self-signed certificate
        )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


@pytest.fixture(scope="module")
def plain(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any], portal: Portal  # noqa: F811 - the fixture
) -> Iterator[RunningStack]:
    """Plain HTTP, the portal's origin allowed to call DICOMweb and to frame the viewer, and an iOS app's WebView
    (Capacitor's ``capacitor://localhost``) allowed to call DICOMweb."""
    running = start_stack(
        tmp_path_factory.mktemp("token-clients-plain"),
        "file",
        None,
        DICOMGW_CORS_ORIGINS=f"{portal.origin},{APP_ORIGIN}",
        DICOMGW_FRAME_ANCESTORS=portal.origin,
    )
    try:
        store(running, data["files"])
        yield running
    finally:
        running.stack.stop()


@pytest.fixture(scope="module")
def secure(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any], portal: Portal  # noqa: F811 - the fixture
) -> Iterator[RunningStack]:
    """TLS with ``DICOMGW_COOKIE_SAMESITE=None``: the README's set-up for a portal's cross-site iframe."""
    running = start_stack(
        tmp_path_factory.mktemp("token-clients-tls"),
        "file",
        None,
        tls=True,
        DICOMGW_COOKIE_SAMESITE="None",
        DICOMGW_CORS_ORIGINS=portal.origin,
        DICOMGW_FRAME_ANCESTORS=portal.origin,
    )
    try:
        store(running, data["files"])
        yield running
    finally:
        running.stack.stop()


def forge(token: str) -> str:
    """The token with its signature's end changed: well formed, signed by no key."""
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


def cookie_attributes(set_cookie: str) -> tuple[str, set[str]]:
    """``name=value`` and the attributes a Set-Cookie names, without the two that change with the clock."""
    first, *rest = [part.strip() for part in set_cookie.split(";")]
    return first, {part for part in rest if not part.startswith(("Expires=", "Max-Age="))}


# -- a portal's cross-site iframe keeps the session cookie ---------------------------------------------------------


def test_a_cross_site_iframe_keeps_its_session_cookie_partitioned(
    secure: RunningStack, data: dict[str, Any], portal: Portal, browser: Any  # noqa: F811 - the fixture
) -> None:
    """The README's cross-site iframe set-up (TLS, ``DICOMGW_COOKIE_SAMESITE=None``): the portal frames
    ``/api/v1/session?token=...&next=/viewer/#study=...`` and the viewer then reads with the cookie alone. Chromium
    blocks third-party cookies, so the unpartitioned cookie was dropped and the viewer said "Open the study again
    from your portal" (no credential at all). The cookie is now Partitioned (CHIPS): kept for the gateway under
    this portal only, renewed there by the viewer's ``{}`` renewal."""
    study = data["ct"][0]
    issued = issue(secure, [study], ttl=10, session_max=60)
    # the gateway by its address: a site other than the portal's (localhost) whatever the schemes
    gateway = secure.url.replace("://localhost:", "://127.0.0.1:")
    session_url = f"{gateway}/api/v1/session?token={issued['token']}&next=" + quote(f"/viewer/#study={study}", safe="")

    with own_certificate():
        answer = requests.get(session_url, allow_redirects=False, timeout=10, verify=False)  # noqa: S501
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"/viewer/#study={study}"
    deleted, kept = answer.raw.headers.getlist("Set-Cookie")
    assert deleted == UNPARTITIONED_DELETED
    pair, attributes = cookie_attributes(kept)
    assert pair == f"{SECURE_COOKIE}={issued['token']}"
    assert attributes == {"Secure", "HttpOnly", "Path=/", "SameSite=None", "Partitioned"}

    portal.html = (
        '<!doctype html><html><body><iframe id="viewer" referrerpolicy="no-referrer" '
        f'style="width:900px;height:600px;border:0" src="{session_url}"></iframe></body></html>'
    )
    page = open_page(browser, NetworkLog(), ignore_https_errors=True)
    try:
        # the viewer renews at once on load ({} to /api/v1/tokens/renew: the cookie flow), which sets a new cookie
        with page.expect_response(lambda r: r.url == f"{gateway}/api/v1/tokens/renew") as renewal:
            page.goto(f"{portal.origin}/patient")
        frame = page.frame_locator("#viewer")
        frame.locator("#viewport[data-state=ready], #error:not([hidden])").first.wait_for()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "token-clients-iframe-cookie.png"))
        assert frame.locator("#error").get_attribute("data-kind") is None, "the viewer showed its error screen"
        assert frame.locator("#viewport").get_attribute("data-state") == "ready"
        assert renewal.value.status == 200
        jar = [c for c in page.context.cookies() if c["name"] == SECURE_COOKIE]
        assert [(c.get("partitionKey"), c["sameSite"], c["secure"], c["httpOnly"]) for c in jar] == [
            (portal.origin.rsplit(":", 1)[0], "None", True, True)
        ]
        assert jar[0]["value"] != issued["token"]  # the renewed token replaced the first in the partition
    finally:
        page.context.close()


# -- a portal's fetch() reads every answer: the JSON, and on a 401 the challenge -----------------------------------

FETCH_ALL = """async (requests) => {
  const out = [];
  for (const [name, url] of requests) {
    const answer = await fetch(url, {headers: {Accept: 'application/dicom+json'}, cache: 'no-store'});
    out.push({name, status: answer.status, type: answer.headers.get('content-type'),
              challenge: answer.headers.get('www-authenticate'), body: await answer.text()});
  }
  return out;
}"""


def test_a_portal_fetch_reads_each_refusal_its_json_and_challenge(
    plain: RunningStack, data: dict[str, Any], portal: Portal, browser: Any  # noqa: F811 - the fixture
) -> None:
    """A portal page on another origin calls DICOMweb with ``fetch()``, the token in the path or the query: no
    preflight, and every answer readable (CORS on the 200 and on each refusal), so the page can tell the user why.
    A 401 had no ``WWW-Authenticate`` at all (RFC 9110 15.5.2 requires one), so a client could not tell from the
    protocol that the token needs renewing; it now names the Bearer challenge, with ``error="invalid_token"``
    when a token was presented (RFC 6750 3), and CORS exposes it."""
    ct, mr = data["ct"][0], data["mr"][0]
    token = issue(plain, [ct])["token"]
    forged = forge(token)
    root = f"{plain.url}/t/{token}/dicomweb"
    asked = [
        ("path", f"{root}/studies/{ct}/series"),
        ("query", f"{plain.url}/dicomweb/studies/{ct}/series?token={token}"),
        ("missing", f"{plain.url}/dicomweb/studies/{ct}/series"),
        ("forged", f"{plain.url}/t/{forged}/dicomweb/studies/{ct}/series"),
        ("other study", f"{root}/studies/{mr}/series"),
        # the browser's URL parser resolves the encoded dot segment before sending: the other study, refused
        ("dot segment", f"{root}/studies/{ct}/%2e%2e/{mr}/series"),
        ("no such series", f"{root}/studies/{ct}/series/1.2.3/metadata"),
    ]
    portal.html = "<!doctype html><title>portal</title>"
    log = NetworkLog()
    page = open_page(browser, log)
    try:
        page.goto(f"{portal.origin}/patient")
        answers = {a["name"]: a for a in page.evaluate(FETCH_ALL, asked)}
    finally:
        page.context.close()
    assert [url for method, url, kind in log.wire if method == "OPTIONS" or kind == "Preflight"] == []

    for name in ("path", "query"):
        assert (answers[name]["status"], answers[name]["type"], answers[name]["challenge"]) == (
            200,
            "application/dicom+json",
            None,
        )
        listed = json.loads(answers[name]["body"])
        assert sorted(series["0020000E"]["Value"][0] for series in listed) == sorted([data["ct"][1], data["ct_b"][1]])
    refused = {
        name: (a["status"], a["type"], a["challenge"], a["body"]) for name, a in answers.items() if a["status"] != 200
    }
    assert refused == {
        "missing": (401, "application/json", CHALLENGE, MISSING),
        "forged": (401, "application/json", INVALID, bad_token("token signature does not verify")[1]),
        "other study": (403, "application/json", None, OUT_OF_SCOPE[1]),
        "dot segment": (403, "application/json", None, OUT_OF_SCOPE[1]),
        "no such series": (404, "application/json", None, '{"error": "not_found", "detail": "no instances"}'),
    }


def test_every_401_the_gateway_answers_carries_the_challenge(plain: RunningStack, data: dict[str, Any]) -> None:
    """NGINX's 401s (the auth step) and Python's (renewal, the cookie exchange, the API key) alike: the Bearer
    challenge, ``invalid_token`` for a token that was presented, and one JSON shape, the error's own code and its
    detail (NGINX's said ``{"error": "unauthorized", "detail": "token_invalid"}`` where Python's said ``{"error":
    "token_invalid", "detail": "token signature does not verify"}``). A 403 carries no challenge."""
    ct = data["ct"][0]
    token = issue(plain, [ct])["token"]
    forged = forge(token)
    series = f"/dicomweb/studies/{ct}/series"
    renew = f"{plain.url}/api/v1/tokens/renew"
    answers = {
        "nginx, none": requests.get(plain.url + series, timeout=10),
        "nginx, query": requests.get(f"{plain.url}{series}?token={forged}", timeout=10),
        "nginx, cookie": requests.get(plain.url + series, headers={"Cookie": f"dicomgw_token={forged}"}, timeout=10),
        "nginx, bearer": requests.get(plain.url + series, headers={"Authorization": "Bearer None"}, timeout=10),
        "renew, none": requests.post(renew, json={}, timeout=10),
        "renew, forged": requests.post(renew, json={"token": forged}, timeout=10),
        "session, forged": requests.get(f"{plain.url}/api/v1/session?token={forged}", timeout=10),
        "api, no key": requests.post(f"{plain.url}/api/v1/tokens", json={"sub": "x", "studies": [ct]}, timeout=10),
    }
    seen = {name: (a.status_code, a.headers.get("WWW-Authenticate"), a.json()["error"]) for name, a in answers.items()}
    assert seen == {
        "nginx, none": (401, CHALLENGE, "token_missing"),
        "nginx, query": (401, INVALID, "token_invalid"),
        "nginx, cookie": (401, INVALID, "token_invalid"),
        "nginx, bearer": (401, INVALID, "token_invalid"),
        "renew, none": (401, CHALLENGE, "token_missing"),
        "renew, forged": (401, INVALID, "token_invalid"),
        "session, forged": (401, INVALID, "token_invalid"),
        "api, no key": (401, CHALLENGE, "unauthorized"),
    }
    # the same error, the same body: a forged token in the query (NGINX) and in renewal's body (Python)
    assert answers["nginx, query"].json() == answers["renew, forged"].json() == {
        "error": "token_invalid",
        "detail": "token signature does not verify",
    }
    assert set(answers["nginx, none"].json()) == set(answers["renew, none"].json()) == {"error", "detail"}
    other = requests.get(f"{plain.url}/t/{token}/dicomweb/studies/{data['mr'][0]}/series", timeout=10)
    assert (other.status_code, other.headers.get("WWW-Authenticate")) == (403, None)
    assert other.json() == {"error": "out_of_scope", "detail": "study outside the token's scope"}


def test_an_app_webview_origin_may_call_dicomweb(plain: RunningStack, data: dict[str, Any]) -> None:
    """A hybrid app's bundled page (iOS Capacitor: WKWebView sends ``Origin: capacitor://localhost``; Ionic's
    ``ionic://localhost`` alike) calls DICOMweb with ``fetch()``. Such an origin in ``DICOMGW_CORS_ORIGINS`` was
    refused at start-up (only http and https), so no app could be allowed at all; it is now an origin like any
    other: echoed on the answer and on a refusal, its preflight allowed. ``Origin: null`` (a ``file:`` page, any
    sandboxed one) is still never allowed."""
    ct = data["ct"][0]
    token = issue(plain, [ct])["token"]
    url = f"{plain.url}/t/{token}/dicomweb/studies/{ct}/series"
    accept = {"Accept": "application/dicom+json"}
    read = requests.get(url, headers={**accept, "Origin": APP_ORIGIN}, timeout=10)
    refused = requests.get(url.replace(token, forge(token)), headers={**accept, "Origin": APP_ORIGIN}, timeout=10)
    preflight = requests.options(
        f"{plain.url}/dicomweb/studies/{ct}/series",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    opaque = requests.get(url, headers={**accept, "Origin": "null"}, timeout=10)
    assert [(a.status_code, a.headers.get("Access-Control-Allow-Origin")) for a in (read, refused, preflight)] == [
        (200, APP_ORIGIN),
        (401, APP_ORIGIN),
        (204, APP_ORIGIN),
    ]
    assert [a.headers.get("Access-Control-Allow-Credentials") for a in (read, refused, preflight)] == ["true"] * 3
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert sorted(s["0020000E"]["Value"][0] for s in read.json()) == sorted([data["ct"][1], data["ct_b"][1]])
    assert refused.json() == {"error": "token_invalid", "detail": "token signature does not verify"}
    assert (opaque.status_code, opaque.headers.get("Access-Control-Allow-Origin")) == (200, None)


# -- a token's expiry is its end, whatever NGINX keeps --------------------------------------------------------------


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def wait_until(moment: float) -> None:
    """Wait out a documented instant (a token's expiry): explicit, never a guess."""
    time.sleep(max(0.0, moment - time.time()))


def test_an_expired_token_reads_nothing_with_a_decision_nginx_kept(plain: RunningStack, data: dict[str, Any]) -> None:
    """A viewer reading frames while its token runs out: NGINX keeps each allowing decision
    ``DICOMGW_AUTH_CACHE_SECONDS`` (2 s) per token and series, so a frame read in the token's last second let every
    read of that series (frames, bulkdata, metadata, rendered) go on for up to two seconds after the expiry. The
    decision now lives no longer than its credential: the first read after the expiry is the 401
    ``token_expired``."""
    study, series, sop = data["ct"]
    issued = issue(plain, [study], ttl=3)
    expiry = epoch(issued["expires_at"])
    root = f"{plain.url}/t/{issued['token']}/dicomweb/studies/{study}/series/{series}"
    reads = {
        "frame": (f"{root}/instances/{sop}/frames/1", "multipart/related; type=application/octet-stream"),
        "bulkdata": (f"{root}/instances/{sop}/bulkdata/7FE00010", "application/octet-stream"),
        "metadata": (f"{root}/metadata", "application/dicom+json"),
        "rendered": (f"{root}/instances/{sop}/rendered", "image/jpeg"),
    }
    wait_until(expiry - 1.0)  # the token's last second: this read's decision is kept
    before = requests.get(reads["frame"][0], headers={"Accept": reads["frame"][1]}, timeout=10)
    assert before.status_code == 200
    wait_until(expiry + 0.3)
    after = {
        name: requests.get(url, headers={"Accept": accept}, timeout=10) for name, (url, accept) in reads.items()
    }
    assert {name: (a.status_code, a.headers.get("WWW-Authenticate"), a.content) for name, a in after.items()} == {
        name: (401, INVALID, b'{"error":"token_expired","detail":"token expired"}') for name in reads
    }


def test_a_token_that_expires_while_the_viewer_is_open_shows_the_expired_screen(
    plain: RunningStack, data: dict[str, Any], browser: Any  # noqa: F811 - the fixture
) -> None:
    """A link without a session (no ``session_max``) lives its own lifetime: the viewer keeps what it has shown,
    and its next read after the expiry (opening the study's other series) shows "This link has expired", not a
    black stage or a withdrawn link."""
    study = data["ct"][0]
    issued = issue(plain, [study], ttl=12)
    page = open_page(browser, NetworkLog())
    try:
        page.goto(f"{plain.url}/viewer/#study={study}&token={issued['token']}")
        wait_ready(page)
        wait_until(epoch(issued["expires_at"]) + 0.5)
        page.click(f"#series button[data-uid='{data['ct_b'][1]}']")
        page.wait_for_selector("#error:not([hidden])")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "token-clients-expired-while-open.png"))
        assert page.get_attribute("#error", "data-kind") == "expired"
        assert page.inner_text("#error-title") == "This link has expired"
    finally:
        page.context.close()


# -- hostile tokens and path tricks fail closed, as JSON a portal's page can read -----------------------------------

REFUSED_PATH = (400, '{"error":"bad_request","detail":"the request path is not canonical"}')
EMPTY_SEGMENT = (
    400,
    '{"error":"bad_request","detail":"the request path is not canonical: it holds an empty segment (//), as a base '
    'URL ending in / makes"}',
)
MISSING = '{"error":"token_missing","detail":"no token in the path, the query, the Authorization header or the cookie"}'
OUT_OF_SCOPE = (403, '{"error":"out_of_scope","detail":"study outside the token\'s scope"}')
INVALID_PATH = (400, '{"error":"invalid_path","detail":"a UID path segment is not a valid DICOM UID"}')


def bad_token(detail: str) -> tuple[int, str]:
    return 401, f'{{"error":"token_invalid","detail":"{detail}"}}'



def hostile_requests(token: str, study: str, other: str) -> list[tuple[str, bytes, dict[str, str], tuple[int, str]]]:
    """(name, raw request target, headers, the refusal): each as a client sends it, never normalised on the way."""
    root = f"/t/{token}/dicomweb"
    plain = f"/dicomweb/studies/{study}/series"
    return [
        ("dot-dot to the other study", f"{root}/studies/{study}/../{other}/series".encode(), {}, REFUSED_PATH),
        ("encoded dot-dot", f"{root}/studies/{study}/%2e%2e/{other}/series".encode(), {}, REFUSED_PATH),
        ("encoded slash in the token", f"/t/{token[:20]}%2F{token[20:]}{plain}".encode(), {}, REFUSED_PATH),
        ("empty segment", f"{root}/studies/{study}//series".encode(), {}, EMPTY_SEGMENT),
        ("matrix parameter", f"{root}/studies/{other};{study}/series".encode(), {}, INVALID_PATH),
        ("other study, own as a parameter", f"{root}/studies/{other}/series?StudyInstanceUID={study}".encode(), {},
         OUT_OF_SCOPE),
        ("upper-case route", f"{root}/STUDIES/{other}/series".encode(), {},
         (403, '{"error":"out_of_scope","detail":"path outside the token\'s scope"}')),
        ("trailing dot", f"{root}/studies/{study}./series".encode(), {}, INVALID_PATH),
        ("raw UTF-8 token", f"/t/\u00e9{token}{plain}".encode(), {}, bad_token("malformed token")),
        ("20 KB token in the path", f"/t/{'A' * 20_000}{plain}".encode(), {}, bad_token("malformed token")),
        ("20 KB token in the query", f"{plain}?token={'A' * 20_000}".encode(), {}, bad_token("malformed token")),
        ("20 KB token in the cookie", plain.encode(), {"Cookie": f"dicomgw_token={'A' * 20_000}"},
         bad_token("malformed token")),
        ("two tokens in the query", f"{plain}?token={token}&token={token[:-1]}x".encode(), {},
         bad_token("more than one token in the query")),
        # an explicit credential decides alone: a cookie for the other study neither widens nor vetoes it
        ("path token, other study's cookie", f"{root}/studies/{other}/series".encode(),
         {"Cookie": f"dicomgw_token={token}"}, OUT_OF_SCOPE),
    ]


def raw_request(running: RunningStack, target: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A GET of ``target`` byte for byte (http.client and requests would encode or normalise it)."""
    parsed = urlparse(running.url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        lines = [b"GET " + target + b" HTTP/1.1", f"Host: {parsed.netloc}".encode(), b"Connection: close",
                 f"Origin: {APP_ORIGIN}".encode(), b"Accept: application/dicom+json"]
        lines += [f"{name}: {value}".encode() for name, value in headers.items()]
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parsed_headers = {name.lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
    return int(status_line.split()[1]), parsed_headers, body


def test_hostile_tokens_and_path_tricks_fail_closed_as_readable_json(plain: RunningStack, data: dict[str, Any]) -> None:
    """A token for study A used for study B by path tricks, hostile tokens in each transport: every one a refusal
    (never the other study, never a 5xx), JSON with CORS so the page that sent it can read why."""
    study, other = data["ct"][0], data["mr"][0]
    token = issue(plain, [study])["token"]
    for name, target, headers, (status, body) in hostile_requests(token, study, other):
        got_status, got_headers, got_body = raw_request(plain, target, headers)
        assert (got_status, got_body.decode()) == (status, body), name
        assert got_headers["content-type"] == "application/json", name
        assert got_headers.get("access-control-allow-origin") == APP_ORIGIN, name


# -- the cookie exchange where the browser would drop its cookie --------------------------------------------------

NOT_KEPT = (
    '{"error": "cookie_not_kept", "detail": "a cross-site iframe does not keep this gateway\'s SameSite=Lax cookie, '
    "so the page would have no credential: embed /viewer/#study=...&token=... instead, or serve the gateway over TLS "
    'with DICOMGW_COOKIE_SAMESITE=None"}'
)


def test_the_cookie_exchange_in_a_cross_site_iframe_over_http_says_why_it_cannot_work(
    plain: RunningStack, data: dict[str, Any], portal: Portal, browser: Any  # noqa: F811 - the fixture
) -> None:
    """Over plain HTTP the cookie is SameSite=Lax, which a browser drops when it arrives in another site's iframe:
    a portal framing ``/api/v1/session`` got a viewer saying "Open the study again from your portal", which the
    portal can only do again, to the same end. The exchange now refuses there (Fetch Metadata tells it where its
    answer goes) with a JSON 400 naming what works; a WebView's top-level page and a same-site frame still get
    the cookie."""
    study = data["ct"][0]
    token = issue(plain, [study])["token"]
    session_url = f"{plain.url}/api/v1/session?token={token}&next=" + quote(f"/viewer/#study={study}", safe="")
    portal.html = (
        '<!doctype html><html><body><iframe id="viewer" referrerpolicy="no-referrer" '
        f'style="width:900px;height:600px;border:0" src="{session_url}"></iframe></body></html>'
    )
    page = open_page(browser, NetworkLog())
    try:
        with page.expect_response(lambda r: "/api/v1/session" in r.url) as exchange:
            page.goto(f"{portal.origin}/patient")
        assert (exchange.value.status, exchange.value.headers["content-type"]) == (400, "application/json")
        assert exchange.value.text() == NOT_KEPT
        assert page.context.cookies() == []
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "token-clients-iframe-lax-cookie.png"))
    finally:
        page.context.close()

    def exchange_as(site: str, dest: str) -> requests.Response:
        headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Dest": dest, "Sec-Fetch-Mode": "navigate"}
        return requests.get(session_url, headers=headers, allow_redirects=False, timeout=10)

    refused = exchange_as("cross-site", "iframe")
    assert (refused.status_code, refused.text, refused.headers.get("Set-Cookie")) == (400, NOT_KEPT, None)
    for site, dest in (("none", "document"), ("cross-site", "document"), ("same-site", "iframe")):
        kept = exchange_as(site, dest)
        assert (kept.status_code, kept.headers["Location"]) == (303, f"/viewer/#study={study}"), (site, dest)
        pair, attributes = cookie_attributes(kept.headers["Set-Cookie"])
        assert (pair, attributes) == (f"dicomgw_token={token}", {"HttpOnly", "Path=/", "SameSite=Lax"})


def test_a_cookie_from_before_the_partitioned_one_never_shadows_it(
    secure: RunningStack, data: dict[str, Any], browser: Any  # noqa: F811 - the fixture
) -> None:
    """A WebView (top-level) that did the exchange before the cookie was ``Partitioned`` holds an unpartitioned
    ``__Host-dicomgw_token``: a browser keeps the two apart and sends both, the older first, which the gateway
    reads. A new exchange for another study then opened a viewer refused with the old study's token. The exchange
    now deletes the unpartitioned cookie as it sets the partitioned one."""
    study, other = data["ct"][0], data["mr"][0]
    old = issue(secure, [other], ttl=600)["token"]
    new = issue(secure, [study], ttl=600)["token"]
    page = open_page(browser, NetworkLog(), ignore_https_errors=True)
    try:
        page.context.add_cookies(
            [{"name": SECURE_COOKIE, "value": old, "url": secure.url + "/", "secure": True,
              "httpOnly": True, "sameSite": "None"}]
        )
        page.goto(f"{secure.url}/api/v1/session?token={new}&next=" + quote(f"/viewer/#study={study}", safe=""))
        page.locator("#viewport[data-state=ready], #error:not([hidden])").first.wait_for()
        assert page.get_attribute("#error", "data-kind") is None, "the viewer showed its error screen"
        jar = [(c["value"], c.get("partitionKey")) for c in page.context.cookies() if c["name"] == SECURE_COOKIE]
        assert jar == [(new, "https://localhost")]
    finally:
        page.context.close()


IMAGES = """async (sources) => Promise.all(sources.map(([name, src]) => new Promise((resolve) => {
  const img = new Image();
  img.referrerPolicy = 'no-referrer';
  img.onload = () => resolve([name, img.naturalWidth, img.naturalHeight]);
  img.onerror = () => resolve([name, 0, 0]);
  img.src = src;
})))"""


def test_a_portal_page_shows_rendered_images_by_img_src(
    plain: RunningStack, data: dict[str, Any], portal: Portal, browser: Any  # noqa: F811 - the fixture
) -> None:
    """``<img src>`` on a portal page (another origin, no CORS involved): the rendered image, a frame's, the
    thumbnail and WADO-URI's JPEG show with the token in the path or the query, at the image's size; another
    study's image does not show at all."""
    study, series, sop = data["ct"]
    token = issue(plain, [study])["token"]
    root = f"{plain.url}/t/{token}/dicomweb/studies/{study}/series/{series}"
    other = "/".join(("", "studies", data["mr"][0], "series", data["mr"][1], "instances", data["mr"][2]))
    wado = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    sources = [
        ("rendered", f"{root}/instances/{sop}/rendered"),
        ("rendered, query token", f"{plain.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered"
         f"?token={token}"),
        ("frame rendered", f"{root}/instances/{sop}/frames/1/rendered"),
        ("thumbnail", f"{root}/thumbnail"),
        ("wado-uri", f"{plain.url}/t/{token}/dicomweb/wado?{wado}"),
        ("other study", f"{plain.url}/t/{token}/dicomweb{other}/rendered"),
    ]
    portal.html = "<!doctype html><title>portal</title>"
    page = open_page(browser, NetworkLog())
    try:
        page.goto(f"{portal.origin}/patient")
        shown = {name: (width, height) for name, width, height in page.evaluate(IMAGES, sources)}
    finally:
        page.context.close()
    size = (512, 512)  # the synthetic CT's Columns and Rows
    assert shown.pop("other study") == (0, 0)
    assert shown.pop("thumbnail")[0] > 0
    assert shown == {"rendered": size, "rendered, query token": size, "frame rendered": size, "wado-uri": size}
