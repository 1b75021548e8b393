"""Issue 3 through the real NGINX: signature, expiry, scope, purpose, revocation, transports, path tricks,
fail-closed behaviour, the audit log, CORS, and the WebView cookie exchange."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from gateway.dicomweb.multipart import encode_multipart
from gateway.tokens import TokenService
from gateway.tools.stack import Stack, free_port
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack

OHIF_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def raw_get(stack: RunningStack, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A GET with the path exactly as given (requests would normalise dot segments)."""
    parsed = urlparse(stack.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def ct(synthetic: dict[str, Any]) -> tuple[str, str, str]:
    return uids_of(synthetic["ct"][0])


def series_url(root: str, study: str, series: str) -> str:
    return f"{root}/studies/{study}/series/{series}"


def test_valid_token_each_transport(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    study, series, _ = ct
    token = stack.issue([study])["token"]
    path_form = requests.get(f"{series_url(stack.root(token), study, series)}/instances", timeout=10)
    query_form = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances", params={"token": token}, timeout=10
    )
    cookie_form = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances",
        cookies={"dicomgw_token": token},
        timeout=10,
    )
    for answer in (path_form, query_form, cookie_form):
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"] == "application/dicom+json"
        assert len(answer.json()) == 6


def test_a_query_token_is_kept_in_the_uris_an_answer_names(
    stack: RunningStack, synthetic: dict[str, Any], ct: tuple[str, str, str], tmp_path: Path
) -> None:
    """README Tokens: the URIs an answer names (metadata's BulkDataURIs, QIDO's and STOW's RetrieveURLs) end with
    the query token the request presented, as they keep a path token: without it a client that authenticates by
    ``?token=`` got URIs that answered 401 (a viewer loading a bulk value). The unmodified dicomweb-client follows
    the BulkDataURI as given. A cookie or an Authorization credential is never put into a URI, and one token's
    answer never names another's."""
    study, series, sop = ct
    pixels = pydicom.dcmread(synthetic["ct"][0]).PixelData
    token = stack.issue([study])["token"]
    client = DICOMwebClient(url=f"{stack.url}/dicomweb")
    metadata = client.retrieve_instance_metadata(study, series, sop, additional_params={"token": token})
    instance_url = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri == f"{instance_url}/bulkdata/7FE00010?token={token}"
    [bulk] = client.retrieve_bulkdata(uri)
    assert bulk == pixels
    for level in (f"studies/{study}", f"studies/{study}/series/{series}"):
        answer = requests.get(f"{stack.url}/dicomweb/{level}/metadata?token={token}", timeout=30)
        assert answer.status_code == 200, answer.text
        uris = [d["7FE00010"]["BulkDataURI"] for d in answer.json()]
        assert uris and all(u.endswith(f"/bulkdata/7FE00010?token={token}") for u in uris)
    # QIDO: each match's Retrieve URL, followed as given
    answer = requests.get(f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances?token={token}", timeout=30)
    assert answer.status_code == 200, answer.text
    urls = {match["00080018"]["Value"][0]: match["00081190"]["Value"][0] for match in answer.json()}
    assert urls[sop] == f"{instance_url}?token={token}"
    retrieved = requests.get(urls[sop], headers={"Accept": "application/dicom"}, timeout=30)
    assert retrieved.status_code == 200 and retrieved.content == synthetic["ct"][0].read_bytes()
    # another token on the same URLs gets its own URIs (no answer naming one token is kept for another)
    other = stack.issue([study])["token"]
    answer = requests.get(f"{instance_url}/metadata?token={other}", timeout=30)
    assert answer.json()[0]["7FE00010"]["BulkDataURI"] == f"{instance_url}/bulkdata/7FE00010?token={other}"
    # a credential that travels by itself, or no token in the query (%74oken= is none, README; sent raw, as
    # requests would decode it): no query at all
    for headers in ({"Authorization": f"Bearer {token}"}, {"Cookie": f"dicomgw_token={token}"}):
        answer = requests.get(f"{instance_url}/metadata", headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["7FE00010"]["BulkDataURI"] == f"{instance_url}/bulkdata/7FE00010"
    status, raw = raw_get(stack, f"{urlparse(instance_url).path}/metadata?%74oken={token}", stack.api_headers)
    assert status == 200
    assert json.loads(raw)[0]["7FE00010"]["BulkDataURI"] == f"{instance_url}/bulkdata/7FE00010"
    # STOW: the RetrieveURLs of the answer, followed as given
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=32, columns=32, seed=1601, clean=True)
    new_study, new_series, new_sop = uids_of(path)
    writer = stack.issue([new_study], actions=["read", "write"])["token"]
    body = encode_multipart([path])
    stored = requests.post(
        f"{stack.url}/dicomweb/studies?token={writer}",
        data=body,
        headers={"Content-Type": body.content_type, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert stored.status_code == 200, stored.text
    study_url = f"{stack.url}/dicomweb/studies/{new_study}"
    assert stored.json()["00081190"]["Value"] == [f"{study_url}?token={writer}"]
    [item] = stored.json()["00081199"]["Value"]
    assert item["00081190"]["Value"] == [f"{study_url}/series/{new_series}/instances/{new_sop}?token={writer}"]
    retrieved = requests.get(item["00081190"]["Value"][0], headers={"Accept": "application/dicom"}, timeout=30)
    assert retrieved.status_code == 200 and retrieved.content == path.read_bytes()


def test_missing_token_is_401(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    answer = requests.get(f"{stack.url}/dicomweb/studies", timeout=10)
    assert answer.status_code == 401
    detail = "no token in the path, the query, the Authorization header or the cookie"
    assert answer.json() == {"error": "token_missing", "detail": detail}


@pytest.mark.parametrize("mutate", ["payload", "signature", "timestamp", "truncate"])
def test_tampered_token_is_401(stack: RunningStack, ct: tuple[str, str, str], mutate: str) -> None:
    study, series, _ = ct
    token = stack.issue([study])["token"]
    head, stamp, signature = token.rsplit(".", 2)
    if mutate == "payload":
        head = head[:-2] + ("A" if head[-2] != "A" else "B") + head[-1]
    elif mutate == "signature":
        # a middle character: the last base64 character also carries padding bits that decode to nothing
        middle = len(signature) // 2
        signature = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
    elif mutate == "timestamp":
        stamp = stamp[:1] + ("A" if stamp[1] != "A" else "B") + stamp[2:]
    forged = f"{head}.{stamp}.{signature}" if mutate != "truncate" else token[:-5]
    answer = requests.get(f"{series_url(stack.root(forged), study, series)}/instances", timeout=10)
    assert answer.status_code == 401
    assert answer.json()["error"] == "token_invalid"


def test_unknown_key_is_401(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    study, series, _ = ct
    outsider = TokenService(("x" * 48,), 3600).issue(sub="mallory", studies=[study]).token
    answer = requests.get(f"{series_url(stack.root(outsider), study, series)}/instances", timeout=10)
    assert answer.status_code == 401


def test_expired_token_is_401_with_frozen_time(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    study, series, _ = ct
    service = TokenService((stack.stack.signing_key,), 3600)
    # signed 20 minutes ago with a 10-minute lifetime: no sleeping, the clock is set at issue time
    expired = service.issue(sub="late", studies=[study], ttl=600, now=int(time.time()) - 1200).token
    answer = requests.get(f"{series_url(stack.root(expired), study, series)}/instances", timeout=10)
    assert answer.status_code == 401
    assert answer.json() == {"error": "token_expired", "detail": "token expired"}


def test_other_study_is_403(stack: RunningStack, synthetic: dict[str, Any], ct: tuple[str, str, str]) -> None:
    mr_study, mr_series, mr_sop = uids_of(synthetic["mr"][0])
    token = stack.issue([ct[0]])["token"]
    root = stack.root(token)
    for url in (
        f"{root}/studies/{mr_study}/series/{mr_series}/instances",
        f"{root}/studies/{mr_study}/series/{mr_series}/instances/{mr_sop}/frames/1",
        f"{root}/studies/{mr_study}/metadata",
        f"{root}/studies/{mr_study}",
    ):
        answer = requests.get(url, timeout=10)
        assert answer.status_code == 403, url
        assert answer.json()["error"] == "out_of_scope"


def test_series_token_on_sibling_series_is_403(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    study, series_a, sop_a = uids_of(synthetic["ct"][0])
    _, series_b, sop_b = uids_of(synthetic["ct_b"][0])
    token = stack.issue([study], series=[series_a])["token"]
    root = stack.root(token)
    ok = requests.get(
        f"{root}/studies/{study}/series/{series_a}/instances/{sop_a}/frames/1",
        headers={"Accept": "application/octet-stream"},
        timeout=10,
    )
    assert ok.status_code == 200
    assert len(ok.content) == 512 * 512 * 2
    sibling = requests.get(f"{root}/studies/{study}/series/{series_b}/instances/{sop_b}/frames/1", timeout=10)
    assert sibling.status_code == 403
    whole_study = requests.get(f"{root}/studies/{study}", timeout=10)
    assert whole_study.status_code == 403
    # QIDO inside the study is allowed but shows only the token's series
    listed = requests.get(f"{root}/studies/{study}/series", timeout=10)
    assert listed.status_code == 200
    assert [s["0020000E"]["Value"][0] for s in listed.json()] == [series_a]
    # STOW's top-level RetrieveURL names the study, which a series token cannot retrieve (the 403 above): it is
    # present and empty, as when nothing of the study is served here; each instance's RetrieveURL is followed
    writer = stack.issue([study], series=[series_a], actions=["read", "write"])["token"]
    stored = stack.stow([synthetic["ct"][0]], root=stack.root(writer))
    assert (stored.status_code, stored.json()["00081190"]) == (200, {"vr": "UR"}), stored.text
    item = stored.json()["00081199"]["Value"][0]
    assert item["00081190"]["Value"] == [f"{stack.root(writer)}/studies/{study}/series/{series_a}/instances/{sop_a}"]
    assert requests.get(item["00081190"]["Value"][0], timeout=10).status_code == 200


def test_write_token_cannot_read_and_read_token_cannot_write(
    stack: RunningStack, synthetic: dict[str, Any], ct: tuple[str, str, str]
) -> None:
    study, series, _ = ct
    service = TokenService((stack.stack.signing_key,), 3600)
    write_only = service.issue(sub="uploader", studies=[study], actions=["write"]).token
    # a good token whose actions do not include the request's: 403 insufficient_scope (RFC 6750 3.1)
    read = requests.get(f"{series_url(stack.root(write_only), study, series)}/instances", timeout=10)
    assert (read.status_code, read.json()) == (
        403, {"error": "insufficient_scope", "detail": "token does not allow read"}
    )
    read_only = stack.issue([study])["token"]
    stored = stack.stow([synthetic["ct"][0]], root=stack.root(read_only))
    assert (stored.status_code, stored.json()) == (
        403, {"error": "insufficient_scope", "detail": "token does not allow write"}
    )
    read_write = stack.issue([study], actions=["read", "write"])["token"]
    assert stack.stow([synthetic["ct"][0]], root=stack.root(read_write)).status_code == 200
    assert requests.get(f"{series_url(stack.root(read_write), study, series)}/instances", timeout=10).ok


def test_revoked_token_stops_working_within_seconds(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    study, series, _ = ct
    issued = stack.issue([study])
    url = f"{series_url(stack.root(issued['token']), study, series)}/instances"
    assert requests.get(url, timeout=10).status_code == 200
    revoke = requests.post(f"{stack.url}/api/v1/tokens/{issued['jti']}/revoke", headers=stack.api_headers, timeout=10)
    assert revoke.status_code == 204 and "Content-Type" not in revoke.headers
    deadline = time.monotonic() + 8
    status = 200
    while time.monotonic() < deadline:
        status = requests.get(url, timeout=10).status_code
        if status == 401:
            break
        time.sleep(0.25)
    assert status == 401


def test_revoke_needs_the_api_key(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    issued = stack.issue([ct[0]])
    answer = requests.post(
        f"{stack.url}/api/v1/tokens/{issued['jti']}/revoke",
        headers={"Authorization": "Bearer wrong"},
        timeout=10,
    )
    assert answer.status_code == 401


def test_a_token_on_the_api_keys_endpoints_is_a_403_and_does_nothing(
    stack: RunningStack, ct: tuple[str, str, str]
) -> None:
    """A viewer's or an uploader's token sent where only the API key may go (issuing, revoking, the admin API) is a
    credential of ours that may not do this: 403 ``insufficient_scope`` (RFC 6750 3.1), as a token's DELETE is. It
    was the 401 "a valid API key is required", which tells a client's HTTP stack the token itself is bad, so one
    that renews on a 401 renewed it and asked again. Nothing is done: the token it tried to revoke still reads.
    A value that is no credential of ours is still the 401."""
    study = ct[0]
    reader = stack.issue([study])
    writer = stack.issue([study], actions=["read", "write"])
    calls = [
        ("POST", "/api/v1/tokens", {"sub": "x", "studies": [study]}),
        ("POST", f"/api/v1/tokens/{reader['jti']}/revoke", None),
        ("GET", "/api/v1/admin/quarantine", None),
        ("GET", "/api/v1/admin/audit", None),
        ("GET", "/api/v1/admin/access", None),
        ("POST", "/api/v1/admin/erasure", {"patient_id": "nobody"}),
    ]
    for method, path, body in calls:
        for token in (reader["token"], writer["token"]):
            answer = requests.request(
                method, f"{stack.url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            assert answer.status_code == 403, (path, answer.text)
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.json()["error"] == "insufficient_scope", answer.text
            assert "WWW-Authenticate" not in answer.headers
        stranger = requests.request(
            method, f"{stack.url}{path}", json=body, headers={"Authorization": "Bearer wrong"}, timeout=10
        )
        assert (stranger.status_code, stranger.json()["error"]) == (401, "unauthorized"), path
    still = requests.get(f"{stack.root(reader['token'])}/studies/{study}/series", timeout=10)
    assert still.status_code == 200, still.text


def test_encoded_dot_segments_never_reuse_a_cached_decision(
    stack: RunningStack, synthetic: dict[str, Any], ct: tuple[str, str, str]
) -> None:
    """A decision cached for series A must not authorise a path that NGINX would resolve into study B."""
    study, series, sop = ct
    other = uids_of(synthetic["mr"][0])
    token = stack.issue([study])["token"]
    base = f"/t/{token}/dicomweb/studies/{study}/series/{series}"
    assert raw_get(stack, f"{base}/instances/{sop}/frames/1")[0] == 200  # decision now cached
    status, body = raw_get(stack, f"{base}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/studies/{other[0]}/series/{other[1]}/metadata")
    assert status == 400
    assert other[0].encode() not in body


@pytest.mark.parametrize(
    "suffix",
    [
        "/studies/{st}/series/{se}/../../../studies/{other}/series",
        "/studies/{st}/series/{se}%2F..%2F..%2Fstudies%2F{other}",
        "/studies/{st}//series/{se}/instances",
        "/studies/{st}/series/{se}\\instances",
        "/studies/{st}/series/{se}/instances/%2e%2e/%2e%2e",
        "/studies/{st}/series/{se}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/studies/{other}/series",
        "/studies/{st}/series/{se}/instances/1.2.3%252F",
        "/studies/{st}/series/{se}/instances/1.2.abc",
        "/studies/{st}/series/" + "1" * 65 + "/instances",
    ],
)
def test_path_tricks_are_refused(
    stack: RunningStack, synthetic: dict[str, Any], ct: tuple[str, str, str], suffix: str
) -> None:
    study, series, _ = ct
    other = uids_of(synthetic["mr"][0])[0]
    token = stack.issue([study])["token"]
    path = f"/t/{token}/dicomweb" + suffix.format(st=study, se=series, other=other)
    status, body = raw_get(stack, path)
    assert status in (400, 403), (status, body[:200])
    assert other.encode() not in body


def test_oversized_token_is_refused(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    study, series, _ = ct
    answer = requests.get(f"{series_url(stack.root('A' * 5000), study, series)}/instances", timeout=10)
    assert answer.status_code == 401


def test_token_never_in_access_log(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    study, series, _ = ct
    token = stack.issue([study], sub="audit-me")["token"]
    base = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances"
    requests.get(f"{series_url(stack.root(token), study, series)}/instances", timeout=10)
    requests.get(base, params={"token": token}, timeout=10)
    requests.get(base, cookies={"dicomgw_token": token}, timeout=10)
    requests.get(
        f"{stack.url}/api/v1/session",
        params={"token": token, "next": "/viewer/"},
        allow_redirects=False,
        timeout=10,
    )
    stack.settle_access_log()
    text = stack.stack.access_log.read_text()
    assert token not in text
    assert token.split(".")[-1] not in text  # not even the signature
    entries = [e for e in stack.access_log() if e["sub"] == "audit-me"]
    assert len(entries) >= 3
    assert all(e["study"] == study and e["jti"] and e["status"] == 200 for e in entries[:3])
    assert any(e["uri"].startswith("/t/***/dicomweb/") for e in entries)
    assert any("token=***" in e["uri"] for e in entries)


def test_cors_simple_get_and_preflight(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    study, series, sop = ct
    token = stack.issue([study])["token"]
    url = f"{series_url(stack.root(token), study, series)}/instances/{sop}/frames/1"
    answer = requests.get(url, headers={"Origin": "https://portal.example", "Accept": OHIF_ACCEPT}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == "https://portal.example"
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in answer.headers["Vary"]
    assert "Content-Range" in answer.headers["Access-Control-Expose-Headers"]
    assert answer.headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    stranger = requests.get(url, headers={"Origin": "https://evil.example", "Accept": OHIF_ACCEPT}, timeout=10)
    assert "Access-Control-Allow-Origin" not in stranger.headers
    preflight = requests.options(
        f"{stack.root(token)}/studies",
        headers={
            "Origin": "https://portal.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://portal.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize("length", [8001, 9000, 32000])
def test_a_uri_too_long_is_a_414_a_browser_can_read(stack: RunningStack, ct: tuple[str, str, str], length: int) -> None:
    """A URI over 8000 bytes is a JSON 414. NGINX refused one longer than its 8 KB header buffer before reading any
    header, so that 414 had no Access-Control-Allow-Origin and a cross-origin viewer saw a network error instead;
    URIs up to 32 KB are now read with their headers and answered with the CORS every JSON error carries."""
    # a retrieve's URI (a search's may be 32 KB: test_hostile.py)
    path = f"{urlparse(stack.root(stack.issue([ct[0]])['token'])).path}/studies/{ct[0]}/metadata?x="
    answer = requests.get(
        f"{stack.url}{path}{'a' * (length - len(path))}", headers={"Origin": "https://portal.example"}, timeout=10
    )
    assert answer.status_code == 414
    assert answer.headers["Access-Control-Allow-Origin"] == "https://portal.example"
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    assert answer.headers["Content-Type"] == "application/json"
    detail = "the request URI is longer than 8000 bytes (32 KB for a search)"
    assert answer.json() == {"error": "uri_too_long", "detail": detail}


def test_a_header_line_nginx_takes_is_answered_by_the_gateway(stack: RunningStack) -> None:
    """NGINX now reads header lines up to 32 KB (for the 414 above): gunicorn takes as long a line, so such a request
    is answered, never refused with gunicorn's plain page."""
    headers = {**stack.api_headers, "X-Portal-Context": "a" * 30000}
    answer = requests.get(f"{stack.url}/dicomweb/studies?limit=1", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text[:200]
    assert answer.headers["Content-Type"] == "application/dicom+json"


def test_session_cookie_exchange(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    """README, HTTP API: a 303 to ``next`` with the HttpOnly cookie, and no body (no HTML page where JSON is due)."""
    study, series, _ = ct
    token = stack.issue([study], ttl=600)["token"]
    answer = requests.get(
        f"{stack.url}/api/v1/session",
        params={"token": token, "next": "/viewer/#study=1"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/viewer/#study=1"
    # a redirect needs no body: Werkzeug's "Redirecting..." HTML page was sent, text/html, where JSON is the rule
    assert (answer.content, answer.headers.get("Content-Length")) == (b"", "0")
    assert "Content-Type" not in answer.headers
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"dicomgw_token={token};")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Max-Age=" in cookie
    jar = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances",
        cookies={"dicomgw_token": token},
        timeout=10,
    )
    assert jar.status_code == 200


def test_the_session_cookie_is_renewed_by_posting_an_empty_object(
    stack: RunningStack, ct: tuple[str, str, str]
) -> None:
    """The WebView flow's page holds no token: ``POST /api/v1/tokens/renew`` with ``{}`` renews the session cookie
    itself (the fresh token only in Set-Cookie, never in the body). A revoked token is ``token_revoked`` at the
    cookie exchange (it said ``token_missing``); a JSON body is required (a form cannot post one cross-site)."""
    study, series, _ = ct
    issued = stack.issue([study], ttl=60, session_max=600)
    exchange = requests.Session()
    opened = exchange.get(
        f"{stack.url}/api/v1/session", params={"token": issued["token"], "next": "/viewer/"}, allow_redirects=False
    )
    assert opened.status_code == 303
    renewed = exchange.post(f"{stack.url}/api/v1/tokens/renew", json={}, timeout=10)
    assert renewed.status_code == 200, renewed.text
    body = renewed.json()
    assert "token" not in body and body["session"] == issued["session"] and body["jti"] != issued["jti"]
    assert 0 < body["expires_in"] <= 60 and 0 < body["session_expires_in"] <= 600
    cookie = renewed.headers["Set-Cookie"]
    fresh = exchange.cookies["dicomgw_token"]
    assert fresh != issued["token"] and cookie.startswith(f"dicomgw_token={fresh};")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert fresh not in renewed.text
    listed = exchange.get(f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances", timeout=10)
    assert listed.status_code == 200
    as_form = exchange.post(f"{stack.url}/api/v1/tokens/renew", data="{}", timeout=10)  # text/plain: no preflight
    assert (as_form.status_code, as_form.json()["error"]) == (415, "unsupported_media_type")
    no_cookie = requests.post(f"{stack.url}/api/v1/tokens/renew", json={}, timeout=10)
    assert (no_cookie.status_code, no_cookie.json()["error"]) == (401, "token_missing")
    revoke = requests.post(f"{stack.url}/api/v1/tokens/{issued['jti']}/revoke", headers=stack.api_headers, timeout=10)
    assert revoke.status_code == 204
    deadline = time.monotonic() + 8  # every worker reloads revocations within DICOMGW_REVOCATION_REFRESH
    while True:
        again = requests.get(
            f"{stack.url}/api/v1/session", params={"token": issued["token"]}, allow_redirects=False, timeout=10
        )
        if again.status_code != 303 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert (again.status_code, again.json()) == (401, {"error": "token_revoked", "detail": "token revoked"})


def test_renewal_if_session_is_a_204_for_a_token_without_one(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    """``"if_session": true``: what the bundled viewer sends on load, not knowing whether its token has a session.
    A plain token is a 204 (no body, nothing renewed) instead of the 400 every browser console showed; a session
    token renews as before; a bad token is still refused."""
    url = f"{stack.url}/api/v1/tokens/renew"
    plain = stack.issue([ct[0]])["token"]
    probe = requests.post(url, json={"token": plain, "if_session": True}, timeout=10)
    assert (probe.status_code, probe.content, probe.headers.get("Content-Type")) == (204, b"", None)
    assert requests.post(url, json={"token": plain}, timeout=10).status_code == 400  # the plain form: unchanged
    session = stack.issue([ct[0]], ttl=60, session_max=600)["token"]
    renewed = requests.post(url, json={"token": session, "if_session": True}, timeout=10)
    assert renewed.status_code == 200 and renewed.json()["token"] != session
    assert requests.post(url, json={"token": "x" + plain, "if_session": True}, timeout=10).status_code == 401
    wrong = requests.post(url, json={"token": plain, "if_session": False}, timeout=10)
    assert (wrong.status_code, wrong.json()["detail"]) == (400, "if_session must be true when given")


def test_a_viewer_on_an_allowed_origin_can_renew(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    """README, Sessions: OHIF or Cornerstone3D on the portal's origin renew with a fetch POST of JSON, which needs a
    CORS preflight: allowed origins get it (an HTML 200 without CORS headers before), others get no CORS header."""
    issued = stack.issue([ct[0]], ttl=60, session_max=600)
    url = f"{stack.url}/api/v1/tokens/renew"
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    preflight = requests.options(url, headers={"Origin": "https://portal.example", **ask}, timeout=10)
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://portal.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    stranger = requests.options(url, headers={"Origin": "https://evil.example", **ask}, timeout=10)
    assert "Access-Control-Allow-Origin" not in stranger.headers
    origin = {"Origin": "https://portal.example"}
    renewed = requests.post(url, json={"token": issued["token"]}, headers=origin, timeout=10)
    assert renewed.status_code == 200
    assert renewed.headers["Access-Control-Allow-Origin"] == "https://portal.example"
    assert renewed.headers["Content-Type"] == "application/json"
    assert renewed.json()["token"] != issued["token"]


def largest_session_token(stack: RunningStack, study: str, ttl: int = 60, session_max: int = 600) -> dict[str, Any]:
    """A session token of the largest scope one token takes (a portal opening a patient's whole history): ``study``
    and as many random 2.25 study UIDs (the least compressible) as fit, found from above, then one more UID as long
    as still fits, so the token is within a few characters of the bound."""
    digits = random.Random(86)
    others = [f"2.25.{digits.getrandbits(190)}" for _ in range(99)]

    def issue(studies: list[str]) -> dict[str, Any] | None:
        body = {"sub": "portal-user", "studies": studies, "ttl": ttl, "session_max": session_max}
        answer = requests.post(f"{stack.url}/api/v1/tokens", json=body, headers=stack.api_headers, timeout=10)
        if answer.status_code == 201:
            issued: dict[str, Any] = answer.json()
            return issued
        assert answer.status_code == 400 and "too large for one token" in answer.json()["detail"], answer.text
        return None

    for count in range(len(others), 0, -1):
        fitted = issue([study, *others[:count]])
        if fitted is not None:
            for length in range(58, 0, -1) if count < len(others) else ():  # the longest extra UID that fits
                larger = issue([study, *others[:count], f"2.25.9{digits.getrandbits(200) % 10**length}"])
                if larger is not None:
                    return larger
            return fitted
    raise AssertionError("no scope fits one token")


def test_the_largest_token_goes_through_the_cookie_exchange_and_its_renewal(
    stack: RunningStack, ct: tuple[str, str, str]
) -> None:
    """Session 25: an issued token (a 201) is taken by the WebView cookie exchange and renewed in its cookie,
    whatever its size. The answer's headers hold it in ``Set-Cookie`` (the exchange's also ``next`` in
    ``Location``), and past NGINX's default 4 KB buffer for an upstream's headers the exchange was a 503
    (``upstream sent too big header``, a 502 to NGINX): a token of ~3,800 characters, or a 3,000-character
    ``next`` with any token. A ``next`` longer than 2,048 bytes is a JSON 400 naming the bound."""
    study, series, _ = ct
    issued = largest_session_token(stack, study)
    token = issued["token"]
    assert len(token) > 3800, len(token)  # the size that made the exchange a 503
    exchange = requests.Session()
    for target in (f"/viewer/#study={study}", "/viewer/#study=" + "1" * 2033):
        opened = exchange.get(
            f"{stack.url}/api/v1/session", params={"token": token, "next": target}, allow_redirects=False, timeout=10
        )
        assert opened.status_code == 303, (len(target), opened.status_code, opened.text[:200])
        assert opened.headers["Location"] == target
        assert exchange.cookies["dicomgw_token"] == token
    listed = exchange.get(f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances", timeout=10)
    assert listed.status_code == 200
    renewed = exchange.post(f"{stack.url}/api/v1/tokens/renew", json={}, timeout=10)
    assert renewed.status_code == 200, renewed.text[:200]
    fresh = exchange.cookies["dicomgw_token"]
    assert fresh != token and len(fresh) > 3800
    assert renewed.json()["session"] == issued["session"]
    again = exchange.get(f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances", timeout=10)
    assert again.status_code == 200
    plain = stack.issue([study])["token"]
    too_long = requests.get(
        f"{stack.url}/api/v1/session",
        params={"token": plain, "next": "/viewer/?x=" + "a" * 3000},
        allow_redirects=False,
        timeout=10,
    )
    assert too_long.status_code == 400 and too_long.headers["Content-Type"] == "application/json"
    assert too_long.json() == {
        "error": "invalid_path",
        "detail": "next must be at most 2048 bytes long (URL-encoded)",
    }
    assert "Set-Cookie" not in too_long.headers


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "javascript:alert(1)",
        "/%2F%2Fevil.example",
        "\r\nSet-Cookie: x=1",
    ],
)
def test_session_refuses_open_redirects(stack: RunningStack, ct: tuple[str, str, str], target: str) -> None:
    token = stack.issue([ct[0]])["token"]
    answer = requests.get(
        f"{stack.url}/api/v1/session",
        params={"token": token, "next": target},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 400
    assert "Set-Cookie" not in answer.headers


def test_issue_validation(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    url = f"{stack.url}/api/v1/tokens"
    cases = [
        ({"sub": "a", "studies": [ct[0]], "extra": 1}, "unknown fields: extra"),
        ({"sub": "a", "studies": ["1.2.abc"]}, "studies: every entry must be a valid DICOM UID"),
        ({"sub": "a", "studies": [ct[0]], "ttl": 10**6}, "ttl exceeds the maximum of 3600 seconds"),
        ({"sub": "a", "studies": []}, "studies must be a non-empty list of Study Instance UIDs"),
    ]
    for body, detail in cases:
        answer = requests.post(url, json=body, headers=stack.api_headers, timeout=10)
        assert answer.status_code == 400
        assert answer.json() == {"error": "bad_request", "detail": detail}
    # 100 studies of 64-character UIDs: a token no transport takes (a 201 before, then a 401 everywhere)
    digits = random.Random(7)
    studies = ["1.2." + "".join(digits.choice("123456789") for _ in range(60)) for _ in range(100)]
    too_large = requests.post(url, json={"sub": "a", "studies": studies}, headers=stack.api_headers, timeout=10)
    assert too_large.status_code == 400
    assert re.fullmatch(
        r"the scope is too large for one token \(4[0-9]{3} characters, at most 4012\): issue several tokens with "
        r"fewer studies or series each",
        too_large.json()["detail"],
    )
    bad_key = requests.post(url, json=cases[0][0], headers={"Authorization": "Bearer nope"}, timeout=10)
    assert bad_key.status_code == 401
    good = stack.issue([ct[0]])
    assert set(good) == {"token", "expires_at", "jti", "dicomweb_root", "viewer_url"}
    assert len(good["token"]) < 250
    assert good["viewer_url"] == f"{stack.url}/viewer/#study={ct[0]}&token={good['token']}"


# -- stacks of their own: key rotation and a dead gateway --------------------------------------------------------


def _stack(tmp: Path, **env: str) -> Stack:
    stack = Stack(tmp, port=free_port(), extra_env=env)
    stack.start()
    return stack


def test_key_rotation(tmp_path: Path, synthetic: dict[str, Any]) -> None:
    old, new = "o" * 48, "n" * 48
    study, series, _ = uids_of(synthetic["ct"][0])
    signed_old = TokenService((old,), 3600).issue(sub="rotation", studies=[study]).token
    signed_new = TokenService((old, new), 3600).issue(sub="rotation", studies=[study]).token
    # step 1: NEW is only known for verifying: a node still signing with OLD accepts tokens of updated nodes
    learning = _stack(tmp_path, DICOMGW_SIGNING_KEYS=old, DICOMGW_VERIFY_KEYS=new)
    try:
        url = f"{learning.url}/t/{{}}/dicomweb/series?StudyInstanceUID={study}&SeriesInstanceUID={series}"
        assert requests.get(url.format(signed_old), timeout=10).status_code == 200
        assert requests.get(url.format(signed_new), timeout=10).status_code == 200
        issued = requests.post(
            f"{learning.url}/api/v1/tokens",
            json={"sub": "r", "studies": [study]},
            headers={"Authorization": f"Bearer {learning.api_key}"},
            timeout=10,
        ).json()["token"]
        assert TokenService((old,), 3600).verify(issued, "read").sub == "r"  # still signed with OLD
    finally:
        learning.stop()
    during = _stack(tmp_path, DICOMGW_SIGNING_KEYS=f"{old},{new}")
    try:
        url = f"{during.url}/t/{{}}/dicomweb/series?StudyInstanceUID={study}&SeriesInstanceUID={series}"
        assert requests.get(url.format(signed_old), timeout=10).status_code == 200
        assert requests.get(url.format(signed_new), timeout=10).status_code == 200
    finally:
        during.stop()
    after = _stack(tmp_path, DICOMGW_SIGNING_KEYS=new)
    try:
        url = f"{after.url}/t/{{}}/dicomweb/series?StudyInstanceUID={study}&SeriesInstanceUID={series}"
        assert requests.get(url.format(signed_old), timeout=10).status_code == 401
        assert requests.get(url.format(signed_new), timeout=10).status_code == 200
    finally:
        after.stop()


def test_dead_gateway_is_503_never_200(tmp_path: Path, synthetic: dict[str, Any]) -> None:
    running = _stack(tmp_path)
    try:
        study, series, sop = uids_of(synthetic["ct"][0])
        token = TokenService((running.signing_key,), 3600).issue(sub="x", studies=[study]).token
        running.kill("gunicorn")
        for url in (
            f"{running.url}/t/{token}/dicomweb/studies/{study}/series/{series}/instances",
            f"{running.url}/t/{token}/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1",
            f"{running.url}/t/{token}/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        ):
            answer = requests.get(url, timeout=15)
            assert answer.status_code == 503, url
            assert answer.json()["error"] == "gateway_unavailable"
    finally:
        running.stop()


UNAVAILABLE = {"error": "gateway_unavailable", "detail": "the gateway is unavailable, try again shortly"}


def assert_unavailable(answer: requests.Response, what: str) -> None:
    """README, "Fail closed": the 503 a client gets from a dead or slow gateway is JSON and says when to retry."""
    assert answer.status_code == 503, (what, answer.status_code, answer.text[:200])
    assert answer.headers["Content-Type"] == "application/json", what
    assert answer.headers["Retry-After"] == "5", what
    assert answer.json() == UNAVAILABLE, what


def test_dead_gateway_503_says_when_to_retry(tmp_path: Path, synthetic: dict[str, Any]) -> None:
    """gunicorn killed: every DICOMweb read (decided by the auth hop), STOW (the same hop, before the body) and the
    token API (proxied, no auth hop) is the JSON 503 with ``Retry-After: 5``: a viewer or portal can tell "try
    again shortly" from a refusal, and a bare NGINX 502 page never reaches it."""
    running = _stack(tmp_path)
    try:
        study, series, sop = uids_of(synthetic["ct"][0])
        token = TokenService((running.signing_key,), 3600).issue(sub="x", studies=[study]).token
        api = {"Authorization": f"Bearer {running.api_key}"}
        running.kill("gunicorn")
        root = f"{running.url}/t/{token}/dicomweb"
        instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
        for what, answer in (
            ("qido", requests.get(f"{root}/studies", timeout=15)),
            ("frame", requests.get(f"{instance}/frames/1", timeout=15)),
            ("retrieve", requests.get(instance, headers={"Accept": "application/dicom"}, timeout=15)),
            ("metadata", requests.get(f"{instance}/metadata", timeout=15)),
            ("api key", requests.get(f"{running.url}/dicomweb/studies", headers=api, timeout=15)),
            (
                "stow",
                requests.post(
                    f"{running.url}/dicomweb/studies",
                    data=synthetic["ct"][0].read_bytes(),
                    headers={**api, "Content-Type": "application/dicom"},
                    timeout=15,
                ),
            ),
            (
                "token api",
                requests.post(f"{running.url}/api/v1/tokens", json={"sub": "x", "studies": [study]}, headers=api),
            ),
        ):
            assert_unavailable(answer, what)
    finally:
        running.stop()


def test_slow_gateway_is_a_503_with_retry_after_then_served_again(tmp_path: Path) -> None:
    """gunicorn frozen (SIGSTOP: it accepts connections and never answers, a hung process): the auth hop gives up
    after its 5-second read timeout and every DICOMweb read is the JSON 503 with ``Retry-After: 5`` within seconds,
    never a 200 and never a request held for gunicorn's 300 s. Resumed, the same URLs with the same token are
    served: the 503 was the gateway's silence, not a refusal of the token."""
    from tests.e2e.harness import start_stack

    running = start_stack(tmp_path / "var", "file", None)
    try:
        files = make_series(tmp_path / "ct", modality="CT", slices=1, rows=32, columns=32, seed=2301, clean=True)
        assert running.stow(files).status_code == 200
        study, series, sop = uids_of(files[0])
        # signed here, never presented before the freeze: no decision and no plan of these URLs is cached
        token = TokenService((running.stack.signing_key,), 3600).issue(sub="slow", studies=[study]).token
        instance = f"{running.root(token)}/studies/{study}/series/{series}/instances/{sop}"
        reads = {
            "qido": (f"{running.root(token)}/studies/{study}/series", {}),
            "frame": (f"{instance}/frames/1", {"Accept": "application/octet-stream"}),
            "retrieve": (instance, {"Accept": "application/dicom"}),
            "metadata": (f"{instance}/metadata", {}),
        }
        gunicorn = running.stack.processes["gunicorn"].pid  # its own process group: the master and its workers
        os.killpg(gunicorn, signal.SIGSTOP)
        try:
            def timed_read(url: str, headers: dict[str, str]) -> tuple[requests.Response, float]:
                started = time.monotonic()
                return requests.get(url, headers=headers, timeout=60), time.monotonic() - started

            with ThreadPoolExecutor(len(reads)) as pool:  # at once: each waits out the same 5 s
                answers = dict(zip(reads, pool.map(lambda read: timed_read(*read), reads.values()), strict=True))
            for what, (answer, took) in answers.items():
                assert_unavailable(answer, what)
                assert took < 20, (what, took)  # the auth hop's 5 s read timeout, not gunicorn's 300 s
        finally:
            os.killpg(gunicorn, signal.SIGCONT)
        deadline = time.monotonic() + 30
        for what, (url, headers) in reads.items():
            while (answer := requests.get(url, headers=headers, timeout=60)).status_code == 503:
                assert time.monotonic() < deadline, f"{what} still 503 after SIGCONT"
                time.sleep(0.2)
            assert answer.status_code == 200, (what, answer.text[:200])
        retrieved = requests.get(reads["retrieve"][0], headers=reads["retrieve"][1], timeout=30)
        assert retrieved.content == files[0].read_bytes()
    finally:
        running.stack.stop()
