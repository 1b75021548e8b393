"""gateway.fastpath: the WSGI callable called directly (no server), with a real Authorizer and TokenService, a
recording stand-in for Flask and a scripted Planner."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import pytest
from itsdangerous import URLSafeTimedSerializer

from gateway import nginx_contract as nginx
from gateway.auth import Authorizer
from gateway.config import parse_api_keys
from gateway.dicomweb.wado import Planner, PlanResponse
from gateway.errors import CatalogUnavailable, GatewayError, NotAcceptable, RangeNotSatisfiable
from gateway.fastpath import FastPath, served_length
from gateway.tokens import SALTS, TokenService

KEY = "fastpath-test-signing-key-" + "k" * 32
API_KEY = "fastpath-api-key-" + "a" * 20
ST = "1.2.3"
ST2 = "1.2.4"
SE = "1.2.3.4"
IN = "1.2.3.4.5"
SERIES_PATH = f"/dicomweb/studies/{ST}/series/{SE}"


class StartResponse:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        self.calls.append((status, list(headers)))

    @property
    def status(self) -> str:
        assert len(self.calls) == 1
        return self.calls[0][0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        assert len(self.calls) == 1
        return self.calls[0][1]


class FakeFlask:
    def __init__(self) -> None:
        self.environs: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.environs.append(dict(environ))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"flask"]


class ScriptedPlanner(Planner):
    """Answers ``plan`` with a fixed response (or raises a fixed error) and records its arguments."""

    def __init__(self, answer: PlanResponse | Exception) -> None:
        super().__init__(lambda sop: None, lambda study, series: [], lambda key: "/" + key)
        self.answer = answer
        self.calls: list[tuple[str, str, str, str]] = []

    def plan(
        self,
        method: str,
        raw_uri: str,
        accept: str,
        range_header: str,
        convert: bool = False,
        if_none_match: str = "",
    ) -> PlanResponse:
        self.calls.append(("convert" if convert else method, raw_uri, accept, range_header))
        self.if_none_match = if_none_match
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def block(self, raw_uri: str, accept: str) -> PlanResponse:
        self.calls.append(("block", raw_uri, accept, ""))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Revocations:
    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.error: Exception | None = None

    def __call__(self, now: int) -> set[str]:
        if self.error is not None:
            raise self.error
        return self.revoked


@pytest.fixture
def tokens() -> TokenService:
    return TokenService((KEY,), max_ttl=3600)


@pytest.fixture
def revocations() -> Revocations:
    return Revocations()


@pytest.fixture
def flask() -> FakeFlask:
    return FakeFlask()


def make_app(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask, answer: PlanResponse | Exception | None = None
) -> tuple[FastPath, ScriptedPlanner]:
    planner = ScriptedPlanner(answer if answer is not None else PlanResponse(200, [], b""))
    authorizer = Authorizer(tokens, parse_api_keys(API_KEY), revocations, refresh=0.0)
    return FastPath(flask, authorizer, planner), planner


def auth_environ(uri: str, method: str = "GET", **headers: str) -> dict[str, Any]:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/_auth",
        "HTTP_X_ORIGINAL_URI": uri,
        "HTTP_X_ORIGINAL_METHOD": method,
    }
    environ.update(headers)
    return environ


def call(app: FastPath, environ: dict[str, Any]) -> tuple[StartResponse, bytes]:
    recorder = StartResponse()
    body = b"".join(app(environ, recorder))
    return recorder, body


# -- /_auth --------------------------------------------------------------------------------------------------------


def test_auth_allows_with_204_and_audit_headers(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask
) -> None:
    app, planner = make_app(tokens, revocations, flask)
    issued = tokens.issue(sub="portal-user-9", studies=[ST])
    recorder, body = call(app, auth_environ(f"/t/{issued.token}{SERIES_PATH}/instances/{IN}/frames/1"))
    assert recorder.status == "204 No Content"
    assert recorder.headers == [
        ("X-Dgw-Sub", "portal-user-9"),
        ("X-Dgw-Jti", issued.claims.jti),
        ("X-Dgw-Study", ST),
        ("X-Dgw-Generation", "0"),  # no deletion in this study: the plan-cache key's generation
        ("X-Dgw-Via", "path"),  # the transport, for the access audit
    ]
    assert body == b""
    assert flask.environs == []
    assert planner.calls == []


def test_auth_with_cookie_query_and_api_key(tokens: TokenService, revocations: Revocations, flask: FakeFlask) -> None:
    app, _ = make_app(tokens, revocations, flask)
    issued = tokens.issue(sub="u", studies=[ST])
    cookie, _ = call(app, auth_environ("/dicomweb/studies", HTTP_COOKIE=f"dicomgw_token={issued.token}"))
    assert cookie.headers == [
        ("X-Dgw-Sub", "u"),
        ("X-Dgw-Jti", issued.claims.jti),
        ("X-Dgw-Study", ""),
        ("X-Dgw-Generation", "0"),
        ("X-Dgw-Via", "cookie"),
    ]
    query, _ = call(app, auth_environ(f"{SERIES_PATH}?token={issued.token}"))
    assert query.status == "204 No Content"
    assert ("X-Dgw-Via", "query") in query.headers
    both, _ = call(app, auth_environ(f"/t/{issued.token}{SERIES_PATH}", HTTP_AUTHORIZATION=f"Bearer {issued.token}"))
    assert ("X-Dgw-Via", "path bearer") in both.headers
    admin, _ = call(app, auth_environ(f"/dicomweb/studies/{ST2}", "POST", HTTP_AUTHORIZATION=f"Bearer {API_KEY}"))
    assert admin.status == "204 No Content"
    label = parse_api_keys(API_KEY)[0].label  # the key's label is what the access log names, never the key
    assert admin.headers == [
        ("X-Dgw-Sub", label),
        ("X-Dgw-Jti", "api-key"),
        ("X-Dgw-Study", ST2),
        ("X-Dgw-Generation", "0"),
        ("X-Dgw-Via", "api-key"),
    ]


@pytest.mark.parametrize(
    ("uri", "extra", "status", "code"),
    [
        (SERIES_PATH, {}, "401 Unauthorized", "token_missing"),
        (f"/t/not-a-token{SERIES_PATH}", {}, "401 Unauthorized", "token_invalid"),
        (f"{SERIES_PATH}?token=a&token=b", {}, "401 Unauthorized", "token_invalid"),
        (SERIES_PATH, {"HTTP_AUTHORIZATION": "Bearer wrong"}, "401 Unauthorized", "token_invalid"),
        (f"{SERIES_PATH}/../../{ST2}", {}, "403 Forbidden", "invalid_path"),
        (f"/dicomweb/studies/{ST}%2Fseries", {}, "403 Forbidden", "invalid_path"),
        ("/api/v1/tokens", {}, "403 Forbidden", "invalid_path"),
    ],
)
def test_auth_refusals(
    tokens: TokenService,
    revocations: Revocations,
    flask: FakeFlask,
    uri: str,
    extra: dict[str, str],
    status: str,
    code: str,
) -> None:
    app, _ = make_app(tokens, revocations, flask)
    recorder, body = call(app, auth_environ(uri, **extra))
    assert recorder.status == status
    # a path's own refusal: not the series', and answered by NGINX as the client's mistake (a 400)
    kept = [("X-Dgw-Error-Status", "400"), ("X-Accel-Expires", "0")] if code == "invalid_path" else []
    # the study asked for, for the access audit, where the path names one it could read
    named = [("X-Dgw-Study", ST)] if code.startswith("token_") else []
    assert [h for h in recorder.headers if h[0] != "X-Dgw-Error-Detail"] == [
        ("X-Dgw-Error", code),
        ("Content-Length", "0"),
        *named,
        *kept,
    ]
    assert body == b""


def test_auth_expired_revoked_and_out_of_scope(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask
) -> None:
    app, _ = make_app(tokens, revocations, flask)
    expired = tokens.issue(sub="u", studies=[ST], ttl=900, now=int(time.time()) - 1000).token
    recorder, _ = call(app, auth_environ(f"/t/{expired}{SERIES_PATH}"))
    assert (recorder.status, recorder.headers[0]) == ("401 Unauthorized", ("X-Dgw-Error", "token_expired"))

    issued = tokens.issue(sub="u", studies=[ST])
    recorder, _ = call(app, auth_environ(f"/t/{issued.token}/dicomweb/studies/{ST2}"))
    assert (recorder.status, recorder.headers[0]) == ("403 Forbidden", ("X-Dgw-Error", "out_of_scope"))
    recorder, _ = call(app, auth_environ(f"/t/{issued.token}{SERIES_PATH}", "DELETE"))  # no token deletes
    assert (recorder.status, recorder.headers[0]) == ("403 Forbidden", ("X-Dgw-Error", "insufficient_scope"))
    recorder, _ = call(app, auth_environ(f"/t/{issued.token}{SERIES_PATH}", "POST"))  # a read token: RFC 6750 3.1
    assert (recorder.status, recorder.headers[0]) == ("403 Forbidden", ("X-Dgw-Error", "insufficient_scope"))

    revocations.revoked.add(issued.claims.jti)
    recorder, _ = call(app, auth_environ(f"/t/{issued.token}{SERIES_PATH}"))
    assert (recorder.status, recorder.headers[0]) == ("401 Unauthorized", ("X-Dgw-Error", "token_revoked"))


def test_auth_fails_closed_on_an_unexpected_error(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = make_app(tokens, revocations, flask)
    issued = tokens.issue(sub="u", studies=[ST])
    revocations.error = RuntimeError("catalog exploded")
    with caplog.at_level(logging.ERROR, logger="gateway.fastpath"):
        recorder, body = call(app, auth_environ(f"/t/{issued.token}{SERIES_PATH}"))
    assert recorder.status == "500 Internal Server Error"
    assert recorder.headers == [("Content-Length", "0")]
    assert body == b""
    assert [r.getMessage() for r in caplog.records] == ["auth decision failed"]
    assert issued.token not in caplog.text


def test_auth_catalog_outage_is_not_a_refusal(tokens: TokenService, revocations: Revocations, flask: FakeFlask) -> None:
    """A 5xx GatewayError (the revocation list cannot be loaded) must reach NGINX as 500, which it maps to 503
    (`docs/design.md` §2: a failing gateway is 503 for the client), not as a 403 that NGINX caches and shows as
    'forbidden'."""
    app, _ = make_app(tokens, revocations, flask)
    issued = tokens.issue(sub="u", studies=[ST])
    revocations.error = CatalogUnavailable("catalog unreachable")
    recorder, _ = call(app, auth_environ(f"/t/{issued.token}{SERIES_PATH}"))
    assert recorder.status == "500 Internal Server Error"


def test_auth_tombstone_outage_is_not_a_refusal_nor_an_exception(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask
) -> None:
    """The deletion generation is read after the decision: a catalog outage there went up to gunicorn as an
    exception (a traceback in its log, and NGINX's generic answer); it is NGINX's 500 (its JSON 503) now."""

    def outage(since: int) -> dict[str, int]:
        raise CatalogUnavailable("catalog unreachable")

    authorizer = Authorizer(tokens, parse_api_keys(API_KEY), revocations, refresh=0.0, load_generations=outage)
    app = FastPath(flask, authorizer, ScriptedPlanner(PlanResponse(200, [], b"")))
    issued = tokens.issue(sub="u", studies=[ST])
    recorder, body = call(app, auth_environ(f"/t/{issued.token}{SERIES_PATH}"))
    assert recorder.status == "500 Internal Server Error"
    assert dict(recorder.headers)["X-Dgw-Error"] == "catalog_unavailable"


def _signed(payload: Any) -> str:
    serializer = URLSafeTimedSerializer([KEY], salt=SALTS["read"], signer_kwargs={"digest_method": hashlib.sha256})
    token = serializer.dumps(payload)
    assert isinstance(token, str)
    return token


ODD = [
    {"t": float("inf")},
    {"t": float("nan")},
    {"s": "u\r\nX-Injected: 1"},
    {"j": "a\r\nb"},
    {"s": {"nested": [1, {"x": None}]}},
    {"st": [[ST]]},
    {"v": 10**100},
]


@pytest.mark.parametrize("change", ODD)
def test_auth_signed_odd_claims_are_401_never_500(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask, change: dict[str, Any]
) -> None:
    """Issue 11: these escaped the decision (OverflowError, or a CR LF in a response header) and NGINX showed 503."""
    app, _ = make_app(tokens, revocations, flask)
    token = _signed({"v": 1, "s": "u", "st": [ST], "a": "r", "t": 60, "j": "j1", **change})
    for environ in (
        auth_environ(f"/t/{token}{SERIES_PATH}"),
        auth_environ(f"{SERIES_PATH}?token={token}"),
        auth_environ(SERIES_PATH, HTTP_AUTHORIZATION=f"Bearer {token}"),
        auth_environ(SERIES_PATH, HTTP_COOKIE=f"dicomgw_token={token}"),
    ):
        recorder, body = call(app, environ)
        assert recorder.status == "401 Unauthorized"
        assert [h for h in recorder.headers if h[0] != "X-Dgw-Error-Detail"] == [
            ("X-Dgw-Error", "token_invalid"),
            ("Content-Length", "0"),
            ("X-Dgw-Study", ST),  # the study asked for; no claim of such a token is named
        ]
        assert body == b""


def test_auth_bearer_none_next_to_a_path_token(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask
) -> None:
    app, _ = make_app(tokens, revocations, flask)
    issued = tokens.issue(sub="u", studies=[ST])
    recorder, _ = call(app, auth_environ(f"/t/{issued.token}{SERIES_PATH}", HTTP_AUTHORIZATION="Bearer None"))
    assert recorder.status == "204 No Content"
    assert recorder.headers == [
        ("X-Dgw-Sub", "u"),
        ("X-Dgw-Jti", issued.claims.jti),
        ("X-Dgw-Study", ST),
        ("X-Dgw-Generation", "0"),
        ("X-Dgw-Via", "path"),  # "Bearer None" is no credential of ours: not a transport that decided
    ]
    recorder, _ = call(app, auth_environ(SERIES_PATH, HTTP_AUTHORIZATION=f"Bearer {issued.token}"))
    assert recorder.status == "204 No Content"
    other = tokens.issue(sub="v", studies=[ST])
    recorder, _ = call(app, auth_environ(f"/t/{issued.token}{SERIES_PATH}", HTTP_AUTHORIZATION=f"Bearer {other.token}"))
    assert recorder.headers == [
        ("X-Dgw-Sub", "u v"),
        ("X-Dgw-Jti", f"{issued.claims.jti} {other.claims.jti}"),
        ("X-Dgw-Study", ST),
        ("X-Dgw-Generation", "0"),
        ("X-Dgw-Via", "path bearer"),
    ]


# -- plan route ----------------------------------------------------------------------------------------------------


def plan_environ(raw_uri: str, path: str | None = None, **headers: str) -> dict[str, Any]:
    """What NGINX's internal /_plan location sends: the original URI behind the /_plan prefix."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/_plan" + (path if path is not None else raw_uri.partition("?")[0]),
        "RAW_URI": "/_plan" + raw_uri,
    }
    environ.update(headers)
    return environ


def test_plan_route_answers_with_the_plan(tokens: TokenService, revocations: Revocations, flask: FakeFlask) -> None:
    body = b'<!--# include virtual="/_seg/0-9/objects/x.dcm" wait="yes" -->'
    answer = PlanResponse(206, [("Content-Type", "application/octet-stream"), ("X-Accel-Expires", "600")], body)
    app, planner = make_app(tokens, revocations, flask, answer)
    raw = f"/t/tok{SERIES_PATH}/instances/{IN}/bulkdata/7FE00010?accept=x"
    recorder, sent = call(app, plan_environ(raw, HTTP_ACCEPT="application/octet-stream", HTTP_X_DGW_RANGE="bytes=0-9"))
    assert planner.calls == [("GET", raw, "application/octet-stream", "bytes=0-9")]
    assert recorder.status == "206 Partial Content"
    assert recorder.headers == [
        ("Content-Type", "application/octet-stream"),
        ("X-Accel-Expires", "600"),
        ("X-Dgw-Length", "10"),  # the body SSI makes of it: an HTTP/1.0 client's Content-Length (dgw-plan.conf)
        ("Content-Length", str(len(body))),
    ]
    assert sent == body
    assert flask.environs == []


def test_served_length_is_known_only_when_every_include_names_its_range() -> None:
    include = b'<!--# include virtual="/_fseg/5-9/objects/x.dcm" wait="yes" -->'
    ranged = b"--B\r\n" + include + b"\r\n--B--\r\n"
    assert served_length(ranged) == len(ranged) - len(include) + 5
    whole = b'<!--# include virtual="/_seg/all/objects/x.dcm" wait="yes" -->' + ranged
    assert served_length(whole) is None
    assert served_length(b'<!--# include virtual="$dgw_frame_segment/objects/x.dcm" wait="yes" -->') is None


def test_plan_route_without_raw_uri_uses_request_uri(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask
) -> None:
    app, planner = make_app(tokens, revocations, flask)
    environ = plan_environ(f"{SERIES_PATH}?accept=a")
    del environ["RAW_URI"]
    environ["REQUEST_URI"] = f"{SERIES_PATH}?accept=b"
    recorder, _ = call(app, environ)
    assert planner.calls == [("GET", f"{SERIES_PATH}?accept=b", "", "")]
    assert recorder.headers == [("X-Dgw-Length", "0"), ("Content-Length", "0")]


def test_plan_error_is_json(tokens: TokenService, revocations: Revocations, flask: FakeFlask) -> None:
    app, _ = make_app(tokens, revocations, flask, NotAcceptable("nothing fits"))
    recorder, body = call(app, plan_environ(f"{SERIES_PATH}/instances/{IN}/frames/1"))
    expected = json.dumps({"error": "not_acceptable", "detail": "nothing fits"}).encode()
    assert recorder.status == "406 Not Acceptable"
    assert recorder.headers == [
        ("Content-Type", "application/json"),
        ("Cache-Control", "private, no-cache"),
        ("Content-Length", str(len(expected))),
    ]
    assert body == expected


def test_plan_416_carries_content_range(tokens: TokenService, revocations: Revocations, flask: FakeFlask) -> None:
    app, _ = make_app(tokens, revocations, flask, RangeNotSatisfiable("range starts beyond the end", length=1000))
    recorder, body = call(app, plan_environ(f"{SERIES_PATH}/instances/{IN}/bulkdata/x"))
    assert recorder.status == "416 Range Not Satisfiable"
    assert ("Content-Range", "bytes */1000") in recorder.headers
    assert json.loads(body) == {"error": "range_not_satisfiable", "detail": "range starts beyond the end"}


def test_plan_unknown_status_and_unexpected_error(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask, caplog: pytest.LogCaptureFixture
) -> None:
    class Teapot(GatewayError):
        status = 418
        code = "teapot"

    app, _ = make_app(tokens, revocations, flask, Teapot())
    recorder, _ = call(app, plan_environ(SERIES_PATH))
    assert recorder.status == "418 Error"
    app, _ = make_app(tokens, revocations, flask, ValueError("boom"))
    with caplog.at_level(logging.ERROR, logger="gateway.fastpath"):
        recorder, body = call(app, plan_environ(SERIES_PATH))
    assert recorder.status == "500 Internal Server Error"
    assert json.loads(body) == {"error": "internal_error", "detail": "the read plan could not be made"}
    assert ("Content-Length", str(len(body))) in recorder.headers


# -- handing over to Flask ------------------------------------------------------------------------------------------


def test_path_token_is_stripped_for_flask(tokens: TokenService, revocations: Revocations, flask: FakeFlask) -> None:
    app, planner = make_app(tokens, revocations, flask)
    recorder, body = call(app, {"REQUEST_METHOD": "GET", "PATH_INFO": f"/t/abc.def{SERIES_PATH}/metadata"})
    assert body == b"flask"
    assert recorder.status == "200 OK"
    assert flask.environs[0]["PATH_INFO"] == f"{SERIES_PATH}/metadata"
    assert flask.environs[0]["dicomgw.path_token"] == "abc.def"
    assert planner.calls == []


def test_other_paths_go_to_flask_unchanged(tokens: TokenService, revocations: Revocations, flask: FakeFlask) -> None:
    app, _ = make_app(tokens, revocations, flask)
    call(app, {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/v1/tokens"})
    call(app, {"REQUEST_METHOD": "GET", "PATH_INFO": "/dicomweb/studies"})
    assert [e["PATH_INFO"] for e in flask.environs] == ["/api/v1/tokens", "/dicomweb/studies"]
    assert all("dicomgw.path_token" not in e for e in flask.environs)


@pytest.mark.parametrize("header", ["X-Dgw-Route", "X-Dgw-Plan"])
def test_only_the_internal_plan_path_gets_a_plan(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask, header: str
) -> None:
    """No header makes a plan: only the /_plan/ path NGINX's internal location uses (a client gets 404 there)."""
    app, planner = make_app(tokens, revocations, flask)
    key = "HTTP_" + header.upper().replace("-", "_")
    call(app, {"REQUEST_METHOD": "GET", "PATH_INFO": SERIES_PATH, "RAW_URI": SERIES_PATH, key: "plan"})
    call(app, {"REQUEST_METHOD": "GET", "PATH_INFO": "/_planx" + SERIES_PATH, "RAW_URI": "/_planx" + SERIES_PATH})
    assert planner.calls == []
    assert len(flask.environs) == 2


@pytest.mark.parametrize(
    "query", ["contentType=application/dicom", "contentType=image/jpeg", "contentType=image/png", ""]
)
def test_wado_uri_always_goes_to_flask(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask, query: str
) -> None:
    """WADO-URI is served from NGINX's Python location (no SSI): it never reaches the plan route, whatever it
    asks for; Flask hands application/dicom to NGINX by X-Accel-Redirect."""
    app, planner = make_app(tokens, revocations, flask)
    raw = f"/t/tok/dicomweb/wado?requestType=WADO&studyUID={ST}&seriesUID={SE}&objectUID={IN}&{query}"
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/t/tok/dicomweb/wado", "RAW_URI": raw}
    call(app, environ)
    assert (len(planner.calls), len(flask.environs)) == (0, 1)
    assert flask.environs[0]["PATH_INFO"] == "/dicomweb/wado"
    assert flask.environs[0]["dicomgw.path_token"] == "tok"


def test_block_route_answers_with_the_block_plan(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask
) -> None:
    body = b"200\tContent-Type: application/octet-stream\t<!--# include -->"
    app, planner = make_app(tokens, revocations, flask, PlanResponse(200, [("Content-Type", "text/plain")], body))
    raw = f"{SERIES_PATH}/instances/{IN}/frames/1"
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": nginx.BLOCK + raw, "RAW_URI": nginx.BLOCK + raw}
    recorder, sent = call(app, {**environ, "HTTP_ACCEPT": "application/octet-stream", "HTTP_X_DGW_RANGE": "bytes=0-1"})
    assert planner.calls == [("block", raw, "application/octet-stream", "")]  # a block has no Range
    assert recorder.status == "200 OK"
    assert recorder.headers == [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    assert (sent, flask.environs) == (body, [])
    app, _ = make_app(tokens, revocations, flask, NotAcceptable("nothing fits"))
    recorder, sent = call(app, environ)
    assert recorder.status == "406 Not Acceptable"
    assert json.loads(sent)["error"] == "not_acceptable"


def test_a_plan_judges_the_preconditions_nginx_would_refuse(
    tokens: TokenService, revocations: Revocations, flask: FakeFlask
) -> None:
    """A composed read has no validator (RFC 9110 13.1): an If-Match tag is the JSON 412, ``*`` holds,
    ``If-None-Match: *`` is a 304 kept by no cache, a date is ignored; a request carrying If-Match or
    If-Unmodified-Since gets its plan uncached (NGINX does not check an uncached answer: its own 412 closed the
    connection). A whole object's redirect is storage's to judge, on its own validators."""
    body = b'<!--# include virtual="/_seg/0-9/objects/x.dcm" wait="yes" -->'
    headers = [("Content-Type", "application/octet-stream"), ("X-Accel-Expires", "600"), (nginx.ACCEPT_RANGES, "bytes")]
    answer = PlanResponse(200, headers, body)
    app, _ = make_app(tokens, revocations, flask, answer)
    frame = f"{SERIES_PATH}/instances/{IN}/frames/1"
    recorder, sent = call(app, plan_environ(frame, HTTP_IF_MATCH='"x"'))
    assert recorder.status == "412 Precondition Failed" and json.loads(sent)["error"] == "precondition_failed"
    recorder, sent = call(app, plan_environ(frame, HTTP_IF_NONE_MATCH="*"))
    assert (recorder.status, recorder.headers, sent) == ("304 Not Modified", [("X-Accel-Expires", "0")], b"")
    for header in ({"HTTP_IF_MATCH": "*"}, {"HTTP_IF_UNMODIFIED_SINCE": "Thu, 01 Jan 1970 00:00:00 GMT"}):
        recorder, sent = call(app, plan_environ(frame, **header))
        assert recorder.status == "200 OK" and sent == body, header
        assert [v for k, v in recorder.headers if k == "X-Accel-Expires"] == ["0"], header
    recorder, _ = call(app, plan_environ(frame, HTTP_IF_NONE_MATCH='"x"', HTTP_IF_MODIFIED_SINCE="x"))
    assert ("X-Accel-Expires", "600") in recorder.headers  # cached as usual
    redirect = PlanResponse(200, [("X-Accel-Redirect", "/_obj/objects/x.dcm"), ("X-Accel-Expires", "0")])
    app, _ = make_app(tokens, revocations, flask, redirect)
    recorder, _ = call(app, plan_environ(f"{SERIES_PATH}/instances/{IN}", HTTP_IF_MATCH='"storage-etag"'))
    assert recorder.status == "200 OK"
    # a block's errors would be NGINX's pages: the frame's own plan answers it, in Python's words
    app, _ = make_app(tokens, revocations, flask, answer)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": nginx.BLOCK + frame, "RAW_URI": nginx.BLOCK + frame}
    for header in ({"HTTP_IF_MATCH": '"x"'}, {"HTTP_IF_MATCH": "*"}, {"HTTP_IF_NONE_MATCH": "*"}):
        recorder, sent = call(app, {**environ, **header})
        assert (recorder.status, recorder.headers, sent) == (
            "404 Not Found",
            [("X-Accel-Expires", "0"), ("Content-Length", "0")],
            b"",
        ), header
