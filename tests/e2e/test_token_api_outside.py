"""The token API, the cookie exchange and renewal as portal back-ends and mobile apps call them (session 27, h5).

Bodies and tokens as clients nobody here wrote send them (a portal's JSON of the wrong shapes, a token a client
padded), through the real stack: every answer is JSON with the status the README names, never a 5xx, and the
cookie exchange and renewal judge a token as every read judges it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, stack_holding


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack on the local folder holding one small CT study."""
    files = make_series(tmp_path_factory.mktemp("token-api-data"), modality="CT", slices=2, seed=57, clean=True)
    with stack_holding(tmp_path_factory.mktemp("token-api"), "file", None, files) as running:
        running.uploaded["ct"] = uids_of(files[0])
        yield running


def post_json(stack: RunningStack, path: str, body: str, **headers: str) -> requests.Response:
    """``body`` as the client wrote it (not re-encoded by requests), sent as ``application/json``."""
    return requests.post(
        f"{stack.url}{path}",
        data=body.encode(),
        headers={"Content-Type": "application/json", **headers},
        timeout=30,
    )


ACTIONS_DETAIL = "actions must be a non-empty list drawn from 'read' and 'write'"


@pytest.mark.parametrize("actions", ['[["read"]]', "[{}]", '[{"read": true}]', '["read", 1]', '["read", null]'])
def test_actions_of_the_wrong_json_type_are_a_400_never_a_500(stack: RunningStack, actions: str) -> None:
    """``"actions": [["read"]]`` (a portal's array of arrays) and ``[{}]`` were the 500 "unexpected server error"
    (``set()`` of unhashable values, a traceback in gunicorn.log): the client's mistake, a JSON 400 naming it."""
    study = stack.uploaded["ct"][0]
    body = f'{{"sub": "portal", "studies": ["{study}"], "actions": {actions}}}'
    answer = post_json(stack, "/api/v1/tokens", body, **stack.api_headers)
    assert answer.status_code == 400, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"error": "bad_request", "detail": ACTIONS_DETAIL}
    assert "Traceback" not in stack.stack.gunicorn_log.read_text(errors="replace")


def test_the_same_body_with_good_actions_is_issued(stack: RunningStack) -> None:
    study = stack.uploaded["ct"][0]
    body = json.dumps({"sub": "portal", "studies": [study], "actions": ["read"]})
    answer = post_json(stack, "/api/v1/tokens", body, **stack.api_headers)
    assert answer.status_code == 201, answer.text
    assert answer.json()["token"]


INVALID = 'Bearer realm="dicom-gateway", error="invalid_token"'


@pytest.mark.parametrize("padding", ["=", "=="])
def test_a_padded_token_is_refused_by_the_cookie_exchange_and_renewal_as_by_every_read(
    stack: RunningStack, padding: str
) -> None:
    """A token with base64 padding added (``...=``: a client that pads base64url) is no token every read takes
    (NGINX's 401 ``token_invalid``), yet itsdangerous decodes it as the token: ``GET /api/v1/session?token=T=``
    answered the 303 with ``Set-Cookie: dicomgw_token=T=``, and the viewer it led to then read nothing (401 on every
    frame), and renewal renewed it. Both now refuse it first, as a read does."""
    study, series, _ = stack.uploaded["ct"]
    issued = stack.issue([study], session_max=600)
    padded = issued["token"] + padding
    read = requests.get(f"{stack.url}/dicomweb/studies/{study}/series/{series}/metadata?token={padded}", timeout=30)
    assert read.status_code == 401
    assert read.json()["error"] == "token_invalid"

    exchange = requests.get(
        f"{stack.url}/api/v1/session",
        params={"token": padded, "next": "/viewer/"},
        allow_redirects=False,
        timeout=30,
    )
    assert exchange.status_code == 401
    assert exchange.headers["Content-Type"] == "application/json"
    assert exchange.headers["WWW-Authenticate"] == INVALID
    assert "Set-Cookie" not in exchange.headers
    assert exchange.json() == {"error": "token_invalid", "detail": "malformed token"}

    renewal = post_json(stack, "/api/v1/tokens/renew", json.dumps({"token": padded}))
    assert renewal.status_code == 401
    assert renewal.headers["WWW-Authenticate"] == INVALID
    assert renewal.json() == {"error": "token_invalid", "detail": "malformed token"}

    # the token as issued goes through both, and its cookie reads
    good = requests.get(
        f"{stack.url}/api/v1/session",
        params={"token": issued["token"], "next": "/viewer/"},
        allow_redirects=False,
        timeout=30,
    )
    assert good.status_code == 303
    cookie = good.headers["Set-Cookie"].split(";")[0]
    assert cookie == f"dicomgw_token={issued['token']}"
    metadata = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/metadata", headers={"Cookie": cookie}, timeout=30
    )
    assert metadata.status_code == 200
    assert post_json(stack, "/api/v1/tokens/renew", json.dumps({"token": issued["token"]})).status_code == 200


REFRESH, AUTH_CACHE = 2, 2  # the stack's DICOMGW_REVOCATION_REFRESH and DICOMGW_AUTH_CACHE_SECONDS (defaults)
# README, HTTP API: a revoked token fails everywhere within REFRESH + AUTH_CACHE + 1 s (NGINX's whole-second clock)
REVOCATION_BOUND = REFRESH + AUTH_CACHE + 1


def frame_url(stack: RunningStack, token: str) -> str:
    study, series, sop = stack.uploaded["ct"]
    return f"{stack.url}/t/{token}/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"


def start_of_a_second() -> float:
    """Sleep to just past the start of the next wall-clock second (NGINX stamps cache entries in whole seconds)."""
    time.sleep(1.05 - time.time() % 1)
    return float(int(time.time()))


def test_a_revoked_token_reads_until_the_bound_the_readme_names_and_not_after(stack: RunningStack) -> None:
    """How long a revoked token still reads frames (NGINX serves them on its cached decision, without asking
    Python): README said within ``DICOMGW_REVOCATION_REFRESH`` + ``DICOMGW_AUTH_CACHE_SECONDS`` (≈4 s), but NGINX
    keeps an entry until the end of the whole second its lifetime ends in, so a decision made at the start of a
    second is used for up to AUTH_CACHE + 1 s, after a worker's list that may be REFRESH old. Measured here: a read
    more than AUTH_CACHE after the revocation is still served from the decision cached before it, the last read
    served comes within REFRESH + AUTH_CACHE + 1 s, and from then on every read is the 401 ``token_revoked``."""
    for _ in range(3):  # a loaded machine may miss the second it aims at: then again, with a new token
        issued = stack.issue([stack.uploaded["ct"][0]])
        url = frame_url(stack, issued["token"])
        second = start_of_a_second()
        assert requests.get(url, timeout=30).status_code == 200  # the decision NGINX keeps, made in this second
        revoke = requests.post(
            f"{stack.url}/api/v1/tokens/{issued['jti']}/revoke", headers=stack.api_headers, timeout=30
        )
        assert revoke.status_code == 204
        revoked_at = time.time()
        if revoked_at > second + 0.4:
            continue
        time.sleep(max(0.0, second + 2.4 - time.time()))
        sent = time.time()
        kept = requests.get(url, timeout=30)
        if kept.status_code != 200 and time.time() >= second + 3:
            continue  # it reached NGINX after the kept decision's last second
        break
    else:
        pytest.fail("three attempts missed the second they aimed at: the machine is too slow for this measure")
    assert kept.status_code == 200  # AUTH_CACHE (2 s) after the decision and after the revocation: still served
    assert sent - revoked_at >= AUTH_CACHE
    last_served = sent - revoked_at
    refused = None
    while time.time() < revoked_at + REVOCATION_BOUND + 3:
        started = time.time()
        answer = requests.get(url, timeout=30)
        if answer.status_code == 200:
            assert refused is None, "a read was served after one was refused"
            last_served = started - revoked_at
        else:
            refused = refused or answer
        time.sleep(0.1)
    assert refused is not None
    assert refused.status_code == 401
    assert refused.json() == {"error": "token_revoked", "detail": "token revoked"}
    assert last_served <= REVOCATION_BOUND, last_served


def test_with_no_decision_cache_and_no_refresh_a_revocation_holds_at_the_next_read(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """README, design decisions: ``DICOMGW_AUTH_CACHE_SECONDS=0`` and ``DICOMGW_REVOCATION_REFRESH=0`` trade the
    cache for revocation at the next request (the README said the decision cache alone did it, but each gunicorn
    worker other than the revoking one keeps its list for ``DICOMGW_REVOCATION_REFRESH``)."""
    files = make_series(tmp_path_factory.mktemp("no-cache-data"), modality="CT", slices=1, seed=58, clean=True)
    env = {"DICOMGW_AUTH_CACHE_SECONDS": "0", "DICOMGW_REVOCATION_REFRESH": "0"}
    with stack_holding(tmp_path_factory.mktemp("no-cache"), "file", None, files, **env) as running:
        running.uploaded["ct"] = uids_of(files[0])
        for _ in range(3):
            issued = running.issue([running.uploaded["ct"][0]])
            url = frame_url(running, issued["token"])
            assert all(requests.get(url, timeout=30).status_code == 200 for _ in range(4))  # every worker asked
            revoke = requests.post(
                f"{running.url}/api/v1/tokens/{issued['jti']}/revoke", headers=running.api_headers, timeout=30
            )
            assert revoke.status_code == 204
            answers = [requests.get(url, timeout=30) for _ in range(4)]
            assert [answer.status_code for answer in answers] == [401] * 4
            assert answers[0].json() == {"error": "token_revoked", "detail": "token revoked"}


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/api/v1/tokens", {"POST", "OPTIONS"}),
        ("/api/v1/tokens/abc/revoke", {"POST", "OPTIONS"}),
        ("/api/v1/session", {"GET", "HEAD", "OPTIONS"}),
        ("/api/v1/admin/erasure", {"POST", "OPTIONS"}),
        ("/healthz", {"GET", "HEAD", "OPTIONS"}),
        ("/readyz", {"GET", "HEAD", "OPTIONS"}),
        ("/metrics", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_an_options_request_to_the_api_is_a_204_with_allow_and_no_html(
    stack: RunningStack, path: str, methods: set[str]
) -> None:
    """``OPTIONS /api/v1/tokens`` (an HTTP library probing what the resource takes, a browser's preflight from a
    portal page) was Flask's ``200`` with ``Content-Type: text/html; charset=utf-8`` and no body; NGINX answers
    DICOMweb's and the renewal's as a 204 with ``Allow`` and no Content-Type. Now so are the API's."""
    answer = requests.options(f"{stack.url}{path}", headers=stack.api_headers, timeout=30)
    assert answer.status_code == 204
    assert "Content-Type" not in answer.headers
    assert answer.content == b""
    assert {method.strip() for method in answer.headers["Allow"].split(",")} == methods


def test_every_answer_holding_a_token_is_no_store(stack: RunningStack) -> None:
    """RFC 6749 5.1's rule for a response holding a token (``Cache-Control: no-store``): the renewal's answer and the
    cookie exchange's 303 had it, the issue's 201 (token, DICOMweb root and viewer URL) did not."""
    study = stack.uploaded["ct"][0]
    body = json.dumps({"sub": "portal", "studies": [study], "session_max": 600})
    issued = post_json(stack, "/api/v1/tokens", body, **stack.api_headers)
    assert issued.status_code == 201
    assert issued.headers["Cache-Control"] == "no-store"
    renewed = post_json(stack, "/api/v1/tokens/renew", json.dumps({"token": issued.json()["token"]}))
    assert renewed.status_code == 200
    assert renewed.headers["Cache-Control"] == "no-store"
    exchange = requests.get(
        f"{stack.url}/api/v1/session", params={"token": issued.json()["token"]}, allow_redirects=False, timeout=30
    )
    assert exchange.status_code == 303
    assert exchange.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("ttl, session_max", [("900.0", "1800.0"), ("9e2", "1.8e3"), ("900", "1800")])
def test_an_integral_json_number_is_that_integer_in_the_token_api(
    stack: RunningStack, ttl: str, session_max: str
) -> None:
    """``"ttl": 900.0`` (what Python's ``json.dumps`` of a float, Gson and PHP write for 900) was the 400 "ttl must be
    a positive integer number of seconds": JSON has one number type (RFC 8259 6), and 900.0 is 900. The token lives
    exactly 900 s, its session 1800 s."""
    study = stack.uploaded["ct"][0]
    body = f'{{"sub": "portal", "studies": ["{study}"], "ttl": {ttl}, "session_max": {session_max}}}'
    answer = post_json(stack, "/api/v1/tokens", body, **stack.api_headers)
    assert answer.status_code == 201, answer.text
    renewed = post_json(stack, "/api/v1/tokens/renew", json.dumps({"token": answer.json()["token"]}))
    assert renewed.status_code == 200, renewed.text
    assert 898 <= renewed.json()["expires_in"] <= 900
    assert 1797 <= renewed.json()["session_expires_in"] <= 1800


@pytest.mark.parametrize(
    "field, value",
    [
        ("ttl", "900.5"),
        ("ttl", "true"),
        ("ttl", '"900"'),
        ("ttl", "NaN"),
        ("ttl", "Infinity"),
        ("ttl", "-Infinity"),
        ("ttl", "1e400"),
        ("ttl", "0.0"),
        ("ttl", "-900.0"),
        ("session_max", "600.25"),
        ("session_max", "false"),
        ("session_max", "NaN"),
        ("session_max", "1e999"),
    ],
)
def test_a_json_number_that_is_no_integer_is_a_400_naming_its_field(
    stack: RunningStack, field: str, value: str
) -> None:
    study = stack.uploaded["ct"][0]
    body = f'{{"sub": "portal", "studies": ["{study}"], "{field}": {value}}}'
    answer = post_json(stack, "/api/v1/tokens", body, **stack.api_headers)
    assert answer.status_code == 400, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"error": "bad_request", "detail": f"{field} must be a positive integer number of seconds"}


@pytest.mark.parametrize("field, value", [("ttl", "1e20"), ("ttl", "3601.0"), ("session_max", "1e300")])
def test_a_huge_integral_json_number_is_over_its_cap(stack: RunningStack, field: str, value: str) -> None:
    study = stack.uploaded["ct"][0]
    body = f'{{"sub": "portal", "studies": ["{study}"], "{field}": {value}}}'
    answer = post_json(stack, "/api/v1/tokens", body, **stack.api_headers)
    assert answer.status_code == 400, answer.text
    cap = 3600 if field == "ttl" else 43200
    assert answer.json() == {"error": "bad_request", "detail": f"{field} exceeds the maximum of {cap} seconds"}


def test_renewal_takes_the_token_an_app_sends_as_bearer(stack: RunningStack) -> None:
    """Mobile apps' HTTP clients (OkHttp interceptors, NSURLSession's ``httpAdditionalHeaders``) send the token as
    ``Authorization: Bearer`` with every call, as they read DICOMweb: ``POST /api/v1/tokens/renew`` with that header
    and ``{}`` answered 401 ``token_missing``. The Bearer token is renewed now, the fresh one in the body (never a
    cookie: the app holds the token), and preferred to a session cookie, as a read prefers it."""
    study, series, _ = stack.uploaded["ct"]
    issued = stack.issue([study], session_max=600)
    other = stack.issue([study], session_max=600)
    renew = "/api/v1/tokens/renew"

    for scheme in ("Bearer", "bearer"):
        renewed = post_json(stack, renew, "{}", Authorization=f"{scheme} {issued['token']}")
        assert renewed.status_code == 200, renewed.text
        assert renewed.headers["Cache-Control"] == "no-store"
        assert "Set-Cookie" not in renewed.headers
        fresh = renewed.json()
        assert set(fresh) == {
            "token", "expires_at", "expires_in", "jti", "session", "session_expires_at", "session_expires_in"
        }
        assert fresh["session"] == issued["session"] and fresh["token"] != issued["token"]
        metadata = requests.get(
            f"{stack.url}/dicomweb/studies/{study}/series/{series}/metadata",
            headers={"Authorization": f"Bearer {fresh['token']}"},
            timeout=30,
        )
        assert metadata.status_code == 200

    # the same token in the body and the header is that token
    same = post_json(stack, renew, json.dumps({"token": issued["token"]}), Authorization=f"Bearer {issued['token']}")
    assert same.status_code == 200 and same.json()["session"] == issued["session"]
    # a session cookie of another session: the Bearer token is the one renewed, the cookie left as it is
    both = post_json(
        stack, renew, "{}", Authorization=f"Bearer {issued['token']}", Cookie=f"dicomgw_token={other['token']}"
    )
    assert both.status_code == 200 and both.json()["session"] == issued["session"]
    assert "Set-Cookie" not in both.headers
    # "if_session" holds for the header as for the body: a token without a session is a 204
    plain = stack.issue([study])
    assert post_json(stack, renew, '{"if_session": true}', Authorization=f"Bearer {plain['token']}").status_code == 204


def test_two_different_tokens_in_a_renewal_are_a_400(stack: RunningStack) -> None:
    study = stack.uploaded["ct"][0]
    first, second = stack.issue([study], session_max=600), stack.issue([study], session_max=600)
    answer = post_json(
        stack, "/api/v1/tokens/renew", json.dumps({"token": first["token"]}), Authorization=f"Bearer {second['token']}"
    )
    assert answer.status_code == 400
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {
        "error": "bad_request",
        "detail": "the body and the Authorization header hold two different tokens: send the one to renew, in either",
    }


def test_an_authorization_value_not_ours_is_no_token_to_renew(stack: RunningStack) -> None:
    """As a read ignores it: a portal's JWT or ``Bearer None`` with a session cookie renews the cookie; alone it is
    the 401 ``token_invalid`` a read answers; an API key is no token (``token_missing``)."""
    study = stack.uploaded["ct"][0]
    issued = stack.issue([study], session_max=600)
    renew = "/api/v1/tokens/renew"
    with_cookie = post_json(stack, renew, "{}", Authorization="Bearer None", Cookie=f"dicomgw_token={issued['token']}")
    assert with_cookie.status_code == 200, with_cookie.text
    assert "token" not in with_cookie.json()
    assert with_cookie.headers["Set-Cookie"].startswith("dicomgw_token=")
    for value in ("Bearer None", f"Bearer {issued['token']}=", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln"):
        alone = post_json(stack, renew, "{}", Authorization=value)
        assert alone.status_code == 401, (value, alone.text)
        assert alone.headers["WWW-Authenticate"] == INVALID
        assert alone.json() == {
            "error": "token_invalid",
            "detail": "the Authorization header holds neither an API key nor a token of this gateway",
        }
    key = post_json(stack, renew, "{}", **stack.api_headers)
    assert key.status_code == 401
    assert key.json() == {"error": "token_missing", "detail": "no token to renew"}
