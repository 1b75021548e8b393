"""The token API, the cookie exchange and renewal as portal back-ends and mobile apps call them (session 27, h5).

Bodies and tokens as clients nobody here wrote send them (a portal's JSON of the wrong shapes, a token a client
padded), through the real stack: every answer is JSON with the status the README names, never a 5xx, and the
cookie exchange and renewal judge a token as every read judges it.
"""

from __future__ import annotations

import json
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
    assert read.json() == {"error": "unauthorized", "detail": "token_invalid"}

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
