"""gateway.auth: token transports, path parsing and refusals, the scope matrix, revocation reloads, API keys."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from gateway import auth
from gateway.auth import (
    Authorizer,
    api_key_claims,
    bearer_value,
    check_scope,
    cookie_name,
    cookie_token,
    query_token,
)
from gateway.config import parse_api_keys
from gateway.dicomweb.paths import Target, parse_target
from gateway.errors import (
    BadRequest,
    InsufficientScope,
    InvalidPath,
    OutOfScope,
    TokenExpired,
    TokenInvalid,
    TokenMissing,
    TokenRevoked,
)
from gateway.scope import Scope
from gateway.tokens import Claims, TokenService

KEY = "auth-test-signing-key-" + "k" * 32
ST = "1.2.840.113619.2.1"
ST2 = "1.2.840.113619.2.2"
SE = "1.2.840.113619.2.1.1"
SE2 = "1.2.840.113619.2.1.2"
IN = "1.2.840.113619.2.1.1.1"
T = int(time.time())


# -- the transports ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "token"),
    [
        ("", None),
        ("token=querytok", "querytok"),
        ("a=1&token=querytok&b=2", "querytok"),
        ("token=", ""),
        ("xtoken=abc&tokens=def", None),
        ("%74oken=abc", None),  # never decoded: NGINX's cache key ($dgw_query_token) does not see it either
        ("a=b?token=abc", None),
        ("token=a%2Eb", "a%2Eb"),  # raw, then refused as malformed by decide()
        ("token=abc&x=1&token=abc", "abc"),  # the same token twice is that token
    ],
)
def test_query_token_is_read_raw(query: str, token: str | None) -> None:
    assert query_token(query) == token


def test_duplicate_query_token_is_invalid() -> None:
    with pytest.raises(TokenInvalid) as caught:
        query_token("token=a&token=b")
    assert caught.value.detail == "more than one token in the query"


def test_cookie_token() -> None:
    assert cookie_token("theme=dark; dicomgw_token=cookietok; other=1") == "cookietok"
    assert cookie_token("theme=dark") is None


def test_only_the_cookie_name_of_the_deployments_mode_is_read() -> None:
    """Over TLS only ``__Host-dicomgw_token`` (a plain cookie may be planted by a sibling subdomain or over HTTP),
    without TLS only ``dicomgw_token``; whatever the order."""
    secure, plain = cookie_name(tls=True), cookie_name(tls=False)
    assert (secure, plain) == ("__Host-dicomgw_token", "dicomgw_token")
    assert cookie_token("dicomgw_token=plain; __Host-dicomgw_token=host", secure) == "host"
    assert cookie_token("dicomgw_token=plain; __Host-dicomgw_token=host", plain) == "plain"
    assert cookie_token("dicomgw_token=planted", secure) is None
    assert cookie_token("__Host-dicomgw_token=host", plain) is None
    assert cookie_token('__Host-dicomgw_token="quoted"', secure) == "quoted"
    # the first cookie of a name counts
    assert cookie_token("dicomgw_token=first; dicomgw_token=second") == "first"


@pytest.mark.parametrize(
    ("authorization", "value"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER abc", "abc"), ("Basic abc", ""), ("abc", ""), ("", "")],
)
def test_bearer_value(authorization: str, value: str) -> None:
    assert bearer_value(authorization) == value


# -- paths used below ---------------------------------------------------------------------------------------------

STUDY_PATH = f"/dicomweb/studies/{ST}"
SERIES_PATH = f"{STUDY_PATH}/series/{SE}"
INSTANCE_PATH = f"{SERIES_PATH}/instances/{IN}"


# -- check_scope -------------------------------------------------------------------------------------------------

STUDY_SCOPE = Scope(frozenset({ST}))
SERIES_SCOPE = Scope(frozenset({ST}), frozenset({SE}))


def allowed(scope: Scope, path: str, method: str = "GET", query: str = "") -> bool:
    try:
        check_scope(scope, method, parse_target(path, query))
    except OutOfScope:
        return False
    return True


def scope_detail(scope: Scope, path: str, method: str = "GET", query: str = "") -> str:
    with pytest.raises(OutOfScope) as caught:
        check_scope(scope, method, parse_target(path, query))
    return caught.value.detail


def test_study_token_scope() -> None:
    assert allowed(STUDY_SCOPE, STUDY_PATH)
    assert allowed(STUDY_SCOPE, f"{STUDY_PATH}/metadata")
    assert allowed(STUDY_SCOPE, f"{SERIES_PATH}")
    assert allowed(STUDY_SCOPE, f"/dicomweb/studies/{ST}/series/{SE2}/instances/{IN}/frames/1")
    assert allowed(STUDY_SCOPE, STUDY_PATH, method="POST")
    assert scope_detail(STUDY_SCOPE, f"/dicomweb/studies/{ST2}") == "study outside the token's scope"
    assert scope_detail(STUDY_SCOPE, f"/dicomweb/studies/{ST2}/series") == "study outside the token's scope"
    assert scope_detail(STUDY_SCOPE, f"/dicomweb/studies/{ST2}/series/{SE}") == "series outside the token's scope"


def test_series_token_scope() -> None:
    assert allowed(SERIES_SCOPE, SERIES_PATH)
    assert allowed(SERIES_SCOPE, f"{SERIES_PATH}/instances")
    assert allowed(SERIES_SCOPE, f"{INSTANCE_PATH}/frames/1")
    assert scope_detail(SERIES_SCOPE, f"{STUDY_PATH}/series/{SE2}") == "series outside the token's scope"
    assert scope_detail(SERIES_SCOPE, f"{STUDY_PATH}/series/{SE2}/instances/{IN}") == (
        "series outside the token's scope"
    )
    only_some = "the token reaches only some series of this study"
    assert scope_detail(SERIES_SCOPE, STUDY_PATH) == only_some
    assert scope_detail(SERIES_SCOPE, f"{STUDY_PATH}/metadata") == only_some
    # QIDO inside the study is filtered later, so it passes here (reads only)
    assert allowed(SERIES_SCOPE, f"{STUDY_PATH}/series")
    assert allowed(SERIES_SCOPE, f"{STUDY_PATH}/instances")
    assert allowed(SERIES_SCOPE, f"{STUDY_PATH}/series", method="HEAD")
    assert scope_detail(SERIES_SCOPE, f"{STUDY_PATH}/series", method="POST") == only_some
    # STOW to the study: its instances are checked one by one as they are stored, as a STOW to /studies
    assert allowed(SERIES_SCOPE, STUDY_PATH, method="POST")
    assert scope_detail(SERIES_SCOPE, f"/dicomweb/studies/{ST2}", method="POST") == "study outside the token's scope"
    assert scope_detail(SERIES_SCOPE, f"/dicomweb/studies/{ST2}/series") == "study outside the token's scope"


def test_search_paths_without_a_study_pass() -> None:
    for path in ("/dicomweb", "/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances"):
        assert allowed(SERIES_SCOPE, path), path
    assert scope_detail(STUDY_SCOPE, "/dicomweb/workitems") == "path outside the token's scope"


def test_wado_scope_from_the_query() -> None:
    wado = "/dicomweb/wado"
    q = "requestType=WADO&"
    assert allowed(SERIES_SCOPE, wado, query=f"{q}studyUID={ST}&seriesUID={SE}&objectUID={IN}")
    assert allowed(STUDY_SCOPE, wado, query=f"{q}studyUID={ST}&seriesUID={SE2}")
    assert scope_detail(SERIES_SCOPE, wado, query=f"{q}studyUID={ST}&seriesUID={SE2}") == (
        "object outside the token's scope"
    )
    assert scope_detail(STUDY_SCOPE, wado, query=f"{q}studyUID={ST2}&seriesUID={SE}") == (
        "object outside the token's scope"
    )
    assert allowed(STUDY_SCOPE, wado, query=f"{q}studyUID={ST}&seriesUID={SE}&objectUID=x&objectUID=y")  # the view: 400
    # no objectUID to find the series by: refused without a locator, and by one when it is not stored
    outside = "object outside the token's scope"
    assert scope_detail(STUDY_SCOPE, wado, query=f"{q}studyUID=&seriesUID=&objectUID={IN}") == outside


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("", "WADO-URI needs exactly one requestType"),
        (f"studyUID={ST}&seriesUID={SE}&objectUID={IN}", "WADO-URI needs exactly one requestType"),
        ("requestType=WADO&requestType=WADO", "WADO-URI needs exactly one requestType"),
        ("requestType=WADO-RS", "requestType must be WADO"),
        ("requestType=WADO", "WADO-URI needs exactly one objectUID"),
        (f"requestType=WADO&studyUID={ST}", "WADO-URI needs exactly one objectUID"),
        (f"requestType=wado&objectuid={IN}", "WADO-URI needs exactly one objectUID"),
        (f"requestType=WADO&objectUID={IN}&objectUID={IN}", "WADO-URI needs exactly one objectUID"),
        ("requestType=WADO&objectUID=x", "objectUID is not a valid DICOM UID"),
        (f"requestType=WADO&studyUID={ST}&seriesUID=abc", "seriesUID is not a valid DICOM UID"),
        (f"requestType=WADO&studyUID={ST}&studyUID={ST2}&seriesUID={SE}", "WADO-URI needs exactly one studyUID"),
    ],
)
def test_a_wado_query_the_view_would_refuse_is_its_400_whatever_the_scope(query: str, detail: str) -> None:
    """A token's query that names no object (no requestType of WADO, no or two objectUIDs, a value that is no UID)
    was refused as out of scope (403), while the API key got the view's 400 naming the mistake: it is that 400
    (``BadRequest``, which NGINX answers as such, ``errors.to_auth_answer``), and tells nothing of what is stored."""
    for scope in (STUDY_SCOPE, SERIES_SCOPE):
        with pytest.raises(BadRequest) as caught:
            check_scope(scope, "GET", parse_target("/dicomweb/wado", query), lambda sop: None)
        assert caught.value.detail == detail


def test_wado_object_named_alone_is_judged_by_where_it_is_stored() -> None:
    """Weasis's requireOnlySOPInstanceUID: studyUID and seriesUID empty or left out, the scope decided by the
    series the instance is stored in; one stored nowhere gets the out-of-scope answer (no existence oracle)."""
    stored = {IN: (ST, SE)}
    wado = "/dicomweb/wado"
    for query in (f"studyUID=&seriesUID=&objectUID={IN}", f"objectUID={IN}", f"studyUID={ST}&objectUID={IN}"):
        query = "requestType=WADO&" + query
        check_scope(SERIES_SCOPE, "GET", parse_target(wado, query), stored.get)
        assert_out_of_scope(Scope(frozenset({ST}), frozenset({SE2})), wado, query, stored.get)
        assert_out_of_scope(Scope(frozenset({ST2})), wado, query, stored.get)
    assert_out_of_scope(STUDY_SCOPE, wado, "requestType=WADO&objectUID=1.2.999", stored.get)
    # a study named beside it that the token reaches does not lend its scope to an object stored elsewhere
    assert_out_of_scope(Scope(frozenset({ST2})), wado, f"requestType=WADO&studyUID={ST2}&objectUID={IN}", stored.get)


def assert_out_of_scope(scope: Scope, path: str, query: str, locate: auth.Locate) -> None:
    with pytest.raises(OutOfScope) as caught:
        check_scope(scope, "GET", parse_target(path, query), locate)
    assert caught.value.detail == "object outside the token's scope"


# -- Authorizer ----------------------------------------------------------------------------------------------------


class Revocations:
    """A fake catalog: the revoked jtis, and a record of every load (with the ``now`` it was given)."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.loads: list[int] = []

    def __call__(self, now: int) -> set[str]:
        self.loads.append(now)
        return set(self.revoked)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tokens() -> TokenService:
    return TokenService((KEY,), max_ttl=3600)


def make_authorizer(tokens: TokenService, revocations: Revocations, clock: Clock) -> Authorizer:
    keys = parse_api_keys("api-key-one-" + "1" * 20 + ",portal:api-key-two-" + "2" * 20)
    return Authorizer(tokens, keys, revocations, 2.0, clock)


def test_decide_locates_a_wado_object_named_alone(tokens: TokenService) -> None:
    """Weasis's requireOnlySOPInstanceUID: the scope is checked on the series the object is stored in, and the
    decision names its study (X-Dgw-Study: the access audit's study of a query that names none)."""
    stored = {IN: (ST, SE)}
    asked: list[str] = []

    def locate(sop: str) -> tuple[str, str] | None:
        asked.append(sop)
        return stored.get(sop)

    keys = parse_api_keys("api-key-one-" + "1" * 20)
    authorizer = Authorizer(tokens, keys, Revocations(), 2.0, Clock(T), locate=locate)
    token = tokens.issue(sub="u", studies=[ST], now=T).token
    query = f"requestType=WADO&studyUID=&seriesUID=&objectUID={IN}&contentType=application%2Fdicom"
    decision = authorizer.decide("GET", f"/t/{token}/dicomweb/wado?{query}", now=T)
    assert decision.study == ST and asked == [IN, IN]
    api_key = authorizer.decide("GET", f"/dicomweb/wado?{query}", authorization="Bearer " + "api-key-one-" + "1" * 20)
    assert api_key.study == ST  # no scope to check, the audit still names the study
    full = authorizer.decide(
        "GET", f"/t/{token}/dicomweb/wado?requestType=WADO&studyUID={ST}&seriesUID={SE}&objectUID={IN}", now=T
    )
    assert full.study == ST and len(asked) == 3  # a named study needs no lookup
    other = tokens.issue(sub="u", studies=[ST2], now=T).token
    with pytest.raises(OutOfScope):
        authorizer.decide("GET", f"/t/{other}/dicomweb/wado?{query}", now=T)


def test_decide_refuses_a_fragment(tokens: TokenService) -> None:
    """The view's query (gunicorn's) ends at "#", this decision read the raw URI whole: the own series after a "#"
    let the object before it be served alone from any study. No request-target holds a fragment (RFC 9112 3.2)."""
    stored = {IN: (ST2, SE)}
    authorizer = Authorizer(tokens, (), Revocations(), 2.0, Clock(T), locate=stored.get)
    token = tokens.issue(sub="u", studies=[ST], now=T).token
    for uri in (
        f"/t/{token}/dicomweb/wado?requestType=WADO&objectUID={IN}#&studyUID={ST}&seriesUID={SE}",
        f"/t/{token}/dicomweb/studies/{ST}/series/{SE}#",
    ):
        with pytest.raises(InvalidPath):
            authorizer.decide("GET", uri, now=T)


def test_decide_with_a_path_token(tokens: TokenService) -> None:
    issued = tokens.issue(sub="u", studies=[ST], now=T)
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    decision = authorizer.decide("GET", f"/t/{issued.token}{SERIES_PATH}/instances", now=T)
    assert decision.claims == issued.claims
    assert decision.target == Target(f"/studies/{ST}/series/{SE}/instances", ST, SE, None, "instances")
    assert decision.study == ST
    assert authorizer.decide("GET", "/dicomweb/studies", f"dicomgw_token={issued.token}", now=T).study == ""


def test_decide_checks_scope_purpose_and_expiry(tokens: TokenService) -> None:
    issued = tokens.issue(sub="u", studies=[ST], ttl=60, now=T)
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    with pytest.raises(OutOfScope):
        authorizer.decide("GET", f"/t/{issued.token}/dicomweb/studies/{ST2}", now=T)
    with pytest.raises(InsufficientScope) as caught:  # a 403: the token is good, its actions are not enough
        authorizer.decide("POST", f"/t/{issued.token}{STUDY_PATH}", now=T)
    assert caught.value.detail == "token does not allow write"
    with pytest.raises(TokenExpired):
        authorizer.decide("GET", f"/t/{issued.token}{STUDY_PATH}", now=T + 60)
    with pytest.raises(TokenMissing):
        authorizer.decide("GET", STUDY_PATH, now=T)


def test_write_token_may_post(tokens: TokenService) -> None:
    issued = tokens.issue(sub="u", studies=[ST], actions=["write"], now=T)
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    assert authorizer.decide("POST", f"/t/{issued.token}{STUDY_PATH}", now=T).claims.actions == {"write"}


def test_revoked_token(tokens: TokenService) -> None:
    issued = tokens.issue(sub="u", studies=[ST], now=T)
    other = tokens.issue(sub="u", studies=[ST], now=T)
    revocations = Revocations()
    revocations.revoked.add(issued.claims.jti)
    authorizer = make_authorizer(tokens, revocations, Clock(T))
    with pytest.raises(TokenRevoked) as caught:
        authorizer.decide("GET", f"/t/{issued.token}{STUDY_PATH}", now=T)
    assert caught.value.detail == "token revoked"
    assert caught.value.status == 401
    assert authorizer.decide("GET", f"/t/{other.token}{STUDY_PATH}", now=T).claims.jti == other.claims.jti


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_a_revoked_read_token_asked_to_write_is_refused_as_revoked(tokens: TokenService, method: str) -> None:
    """A read token, revoked, sent with a STOW or a DELETE got 403 ``insufficient_scope`` ("token does not allow
    write"): the client and the access trail could not tell it had been revoked. Revoked comes first, as for a read;
    an unrevoked read token is still the 403."""
    issued = tokens.issue(sub="u", studies=[ST], now=T)
    other = tokens.issue(sub="u", studies=[ST], now=T)
    revocations = Revocations()
    revocations.revoked.add(issued.claims.jti)
    authorizer = make_authorizer(tokens, revocations, Clock(T))
    with pytest.raises(TokenRevoked):
        authorizer.decide(method, f"/t/{issued.token}{STUDY_PATH}", now=T)
    with pytest.raises(InsufficientScope) as caught:
        authorizer.decide(method, f"/t/{other.token}{STUDY_PATH}", now=T)
    assert caught.value.detail == "token does not allow write"


def test_revocations_reload_every_refresh_seconds(tokens: TokenService) -> None:
    issued = tokens.issue(sub="u", studies=[ST], now=T)
    uri = f"/t/{issued.token}{STUDY_PATH}"
    revocations = Revocations()
    clock = Clock(1000.5)
    authorizer = make_authorizer(tokens, revocations, clock)
    authorizer.decide("GET", uri, now=T)
    assert revocations.loads == [1000]
    revocations.revoked.add(issued.claims.jti)  # revoked elsewhere: not seen until the next reload
    clock.now = 1002.4
    authorizer.decide("GET", uri, now=T)
    assert revocations.loads == [1000]
    clock.now = 1002.5
    with pytest.raises(TokenRevoked):
        authorizer.decide("GET", uri, now=T)
    assert revocations.loads == [1000, 1002]
    revocations.revoked.clear()
    clock.now = 1003.0
    with pytest.raises(TokenRevoked):
        authorizer.decide("GET", uri, now=T)
    authorizer.forget_revocations()
    assert authorizer.decide("GET", uri, now=T).claims.jti == issued.claims.jti
    assert revocations.loads == [1000, 1002, 1003]


def test_api_key(tokens: TokenService) -> None:
    authorizer = make_authorizer(tokens, Revocations(), Clock(5000.7))
    decision = authorizer.decide("POST", STUDY_PATH, authorization="Bearer api-key-two-" + "2" * 20)
    assert decision.claims == api_key_claims(5000, "portal")
    assert decision.claims.sub == "portal"  # the label, never the key
    assert decision.claims.scope is None
    assert decision.claims.actions == frozenset({"read", "write"})
    assert decision.target == Target(f"/studies/{ST}", ST, None, None, "")
    unlabelled = authorizer.decide("GET", "/dicomweb/studies", authorization="bearer api-key-one-" + "1" * 20)
    assert unlabelled.study == ""
    assert unlabelled.claims.sub == "key-" + hashlib.sha256(("api-key-one-" + "1" * 20).encode()).hexdigest()[:8]
    assert authorizer.api_key_label("Bearer api-key-two-" + "2" * 20) == "portal"
    assert authorizer.api_key_label("Bearer api-key-two-" + "2" * 19) is None
    assert api_key_claims(10) == api_key_claims(10)
    assert (api_key_claims(10).issued_at, api_key_claims(10).expires_at) == (10, 70)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer wrong",
        "Bearer api-key-one-" + "1" * 19,
        "Basic api-key-one-" + "1" * 20,
        "Bearer ",
        "api-key",
        "Bearer None",
        "Bearer a.b.c",
    ],
)
def test_wrong_api_key_alone(tokens: TokenService, authorization: str) -> None:
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    with pytest.raises(TokenInvalid) as caught:
        authorizer.decide("GET", STUDY_PATH, authorization=authorization)
    assert caught.value.detail == "the Authorization header holds neither an API key nor a token of this gateway"


def test_api_key_is_compared_in_constant_time_against_every_key(
    tokens: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    first = "api-key-one-" + "1" * 20
    assert authorizer.is_api_key(f"Bearer {first}")
    assert len(calls) == 2  # the match on the first key does not stop the loop
    assert authorizer.is_api_key("Bearer nope") is False
    assert len(calls) == 4


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS", "get", "delete"])
def test_other_methods_are_out_of_scope(tokens: TokenService, method: str) -> None:
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    with pytest.raises(OutOfScope) as caught:
        authorizer.decide(method, STUDY_PATH, authorization="Bearer api-key-one-" + "1" * 20)
    assert caught.value.detail == f"method {method} is not allowed"


def test_delete_is_for_the_api_key_only(tokens: TokenService) -> None:
    """README, Lifecycle: a token never deletes, whatever its actions and scope; the API key alone does, and a
    token presented next to it does not narrow that into a refusal-free delete either."""
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    writer = tokens.issue(sub="u", studies=[ST], actions=["read", "write"], now=T).token
    decision = authorizer.decide("DELETE", STUDY_PATH, authorization="Bearer api-key-two-" + "2" * 20, now=T)
    assert decision.claims.sub == "portal"
    for attempt in (
        {"authorization": f"Bearer {writer}"},
        {"cookie_header": f"dicomgw_token={writer}"},
    ):
        with pytest.raises((InsufficientScope, TokenInvalid)):
            authorizer.decide("DELETE", STUDY_PATH, now=T, **attempt)  # type: ignore[arg-type]
    with pytest.raises(InsufficientScope):
        authorizer.decide(
            "DELETE", f"/t/{writer}{STUDY_PATH}", authorization="Bearer api-key-two-" + "2" * 20, now=T
        )
    # whatever its scope or transport: a series token, or another study's, was "out_of_scope" in the header
    series = tokens.issue(sub="u", studies=[ST], series=[SE], actions=["read", "write"], now=T).token
    other = tokens.issue(sub="u", studies=[ST2], actions=["read", "write"], now=T).token
    for token in (series, other):
        for attempt in ({"authorization": f"Bearer {token}"}, {"cookie_header": f"dicomgw_token={token}"}):
            with pytest.raises(InsufficientScope):
                authorizer.decide("DELETE", STUDY_PATH, now=T, **attempt)  # type: ignore[arg-type]


def test_generation_follows_the_tombstones_within_the_refresh(tokens: TokenService) -> None:
    clock = Clock(T)
    tombstones: dict[str, int] = {}
    since: list[int] = []

    def load(after: int) -> dict[str, int]:
        since.append(after)
        return dict(tombstones)

    authorizer = Authorizer(tokens, (), lambda now: set(), refresh=2.0, clock=clock, load_generations=load)
    assert authorizer.generation(ST) == 0
    tombstones[ST] = 7
    assert authorizer.generation(ST) == 0  # cached until the refresh
    clock.now += 2
    assert authorizer.generation(ST) == 7 and authorizer.generation("9.9") == 0
    tombstones[ST] = 8
    authorizer.forget_deletions()
    assert authorizer.generation(ST) == 8
    assert since[-1] == T + 2 - auth.TOMBSTONE_SECONDS


# -- the transports through decide(), and several credentials (README, Tokens, "Transports") ------------------------

API_KEY = "api-key-one-" + "1" * 20


def test_each_transport_alone(tokens: TokenService) -> None:
    issued = tokens.issue(sub="u", studies=[ST], now=T)
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    forms = [
        authorizer.decide("GET", f"/t/{issued.token}{SERIES_PATH}", now=T),
        authorizer.decide("GET", f"{SERIES_PATH}?a=1&token={issued.token}", now=T),
        authorizer.decide("GET", SERIES_PATH, authorization=f"Bearer {issued.token}", now=T),
        authorizer.decide("GET", SERIES_PATH, cookie_header=f"theme=x; dicomgw_token={issued.token}", now=T),
    ]
    assert [decision.claims for decision in forms] == [issued.claims] * 4


@pytest.mark.parametrize(
    ("uri", "cookie"),
    [
        ("/dicomweb/studies", ""),
        ("/dicomweb/studies?other=1", "theme=dark"),
        ("/dicomweb/studies?token=", ""),
        ("/dicomweb/studies?%74oken=abc", ""),
    ],
)
def test_missing_token(tokens: TokenService, uri: str, cookie: str) -> None:
    with pytest.raises(TokenMissing) as caught:
        make_authorizer(tokens, Revocations(), Clock(T)).decide("GET", uri, cookie, now=T)
    assert caught.value.detail == "no token in the path, the query, the Authorization header or the cookie"


@pytest.mark.parametrize(
    ("uri", "cookie"),
    [
        ("/dicomweb/studies?token=a%20b", ""),
        ("/dicomweb/studies?token=a+b", ""),
        ("/dicomweb/studies", "dicomgw_token=<script>"),
        ("/dicomweb/studies?token=" + "a" * 4097, ""),
        ("/t/a%0Ab/dicomweb/studies", ""),
    ],
)
def test_malformed_token(tokens: TokenService, uri: str, cookie: str) -> None:
    with pytest.raises(TokenInvalid) as caught:
        make_authorizer(tokens, Revocations(), Clock(T)).decide("GET", uri, cookie, now=T)
    assert caught.value.detail == "malformed token"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer None", "Basic dXNlcjpwYXNz", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "Negotiate", "Bearer"],
)
def test_foreign_authorization_is_ignored_next_to_a_token(tokens: TokenService, authorization: str) -> None:
    """dicomweb_client sends "Bearer None"; a portal's OIDC JWT is not ours either: the path token decides."""
    issued = tokens.issue(sub="u", studies=[ST], now=T)
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    for uri, cookie in (
        (f"/t/{issued.token}{SERIES_PATH}", ""),
        (f"{SERIES_PATH}?token={issued.token}", ""),
        (SERIES_PATH, f"dicomgw_token={issued.token}"),
    ):
        assert authorizer.decide("GET", uri, cookie, authorization, now=T).claims == issued.claims
        # and it never widens: the same token out of its scope is still refused
        with pytest.raises(OutOfScope):
            authorizer.decide("GET", uri.replace(ST, ST2), cookie.replace(ST, ST2), authorization, now=T)


def test_a_tampered_bearer_token_is_not_ours(tokens: TokenService) -> None:
    issued = tokens.issue(sub="u", studies=[ST], now=T)
    tampered = issued.token[:-3] + ("AAA" if not issued.token.endswith("AAA") else "BBB")
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    assert authorizer.decide("GET", f"/t/{issued.token}{SERIES_PATH}", authorization=f"Bearer {tampered}", now=T)
    with pytest.raises(TokenInvalid):  # alone: refused, as any unusable Authorization value
        authorizer.decide("GET", SERIES_PATH, authorization=f"Bearer {tampered}", now=T)
    with pytest.raises(TokenInvalid):  # in the path (our transport only), tampering is always a refusal
        authorizer.decide("GET", f"/t/{tampered}{SERIES_PATH}", authorization=f"Bearer {issued.token}", now=T)


def test_every_explicit_credential_must_pass(tokens: TokenService) -> None:
    good = tokens.issue(sub="good", studies=[ST], now=T)
    other = tokens.issue(sub="other", studies=[ST2], now=T)
    expired = tokens.issue(sub="late", studies=[ST], ttl=60, now=T - 120)
    revoked = tokens.issue(sub="gone", studies=[ST], now=T)
    revocations = Revocations()
    revocations.revoked.add(revoked.claims.jti)
    authorizer = make_authorizer(tokens, revocations, Clock(T))
    path = f"/t/{good.token}{SERIES_PATH}"
    with pytest.raises(OutOfScope):
        authorizer.decide("GET", path, authorization=f"Bearer {other.token}", now=T)
    with pytest.raises(TokenExpired):
        authorizer.decide("GET", f"{path}?token={expired.token}", now=T)
    with pytest.raises(TokenRevoked):
        authorizer.decide("GET", path, authorization=f"Bearer {revoked.token}", now=T)
    with pytest.raises(TokenRevoked):
        authorizer.decide("GET", f"/t/{revoked.token}{SERIES_PATH}", authorization=f"Bearer {good.token}", now=T)


def test_a_refusal_names_the_tokens_of_ours_it_refused(tokens: TokenService) -> None:
    """The access audit's who of a refusal (``to_auth_answer``'s X-Dgw-Sub/Jti/Via): every token of ours the request
    presented, whichever refused it (out of scope, lacking the action, expired, revoked); a value no key of ours
    signed names nobody. Before, every refusal was on record without a subject: who probed another study was not
    told by the trail."""
    good = tokens.issue(sub="good", studies=[ST], now=T)
    other = tokens.issue(sub="other", studies=[ST2], now=T)
    writer = tokens.issue(sub="writer", studies=[ST], actions=["write"], now=T)
    expired = tokens.issue(sub="late", studies=[ST], ttl=60, now=T - 120)
    revoked = tokens.issue(sub="gone", studies=[ST], now=T)
    revocations = Revocations()
    revocations.revoked.add(revoked.claims.jti)
    stored = {IN: (ST2, SE2)}
    authorizer = Authorizer(tokens, (), revocations, 2.0, Clock(T), locate=stored.get)
    wado = f"/dicomweb/wado?requestType=WADO&objectUID={IN}"
    cases = [
        (f"/t/{good.token}/dicomweb/studies/{ST2}", "", "", OutOfScope, ("good", good.claims.jti, "path", ST2)),
        (f"{STUDY_PATH}?token={writer.token}", "", "", InsufficientScope, ("writer", writer.claims.jti, "query", ST)),
        (STUDY_PATH, f"dicomgw_token={expired.token}", "", TokenExpired, ("late", expired.claims.jti, "cookie", ST)),
        (
            f"/t/{good.token}{SERIES_PATH}",
            "",
            f"Bearer {revoked.token}",
            TokenRevoked,
            ("good gone", f"{good.claims.jti} {revoked.claims.jti}", "path bearer", ST),
        ),
        (f"/t/{good.token}{SERIES_PATH}", "", f"Bearer {other.token}", OutOfScope, None),
        (f"/t/{good.token[:-4]}AAAA{SERIES_PATH}", "", "", TokenInvalid, ("", "", "", ST)),
        # a WADO-URI's study, where its object is (an encoded %73tudyUID= hides it from the logged query)
        (f"{wado}&%73tudyUID={ST2}&token={good.token}", "", "", OutOfScope, ("good", good.claims.jti, "query", ST2)),
        (f"{wado}&token={good.token}", "", "", OutOfScope, ("good", good.claims.jti, "query", ST2)),
        (wado, "", "", TokenMissing, ("", "", "", ST2)),
    ]
    for uri, cookie, authorization, refusal, named in cases:
        with pytest.raises(refusal) as caught:
            authorizer.decide("GET", uri, cookie, authorization, now=T)
        if named is None:
            named = ("good other", f"{good.claims.jti} {other.claims.jti}", "path bearer", ST)
        assert caught.value.refused == named, uri
    for uri, authorization, named in (
        (STUDY_PATH, f"Bearer {good.token}", ("good", good.claims.jti, "bearer", ST)),
        (f"/t/{good.token}{STUDY_PATH}?token=junk", "", ("good", good.claims.jti, "path", ST)),
    ):
        with pytest.raises(InsufficientScope) as caught:
            authorizer.decide("DELETE", uri, authorization=authorization, now=T)
        assert caught.value.refused == named


def test_the_cookie_counts_only_without_an_explicit_credential(tokens: TokenService) -> None:
    """A cookie left by an earlier session never vetoes (nor joins) a token the page chose."""
    good = tokens.issue(sub="good", studies=[ST], now=T)
    other = tokens.issue(sub="other", studies=[ST2], now=T)
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    decision = authorizer.decide("GET", f"/t/{good.token}{SERIES_PATH}", f"dicomgw_token={other.token}", now=T)
    assert decision.claims == good.claims
    decision = authorizer.decide("GET", SERIES_PATH, "dicomgw_token=junk!", f"Bearer {good.token}", now=T)
    assert decision.claims == good.claims
    with pytest.raises(TokenInvalid):  # a foreign Authorization value is no explicit credential: the cookie counts
        authorizer.decide("GET", SERIES_PATH, "dicomgw_token=junk!", "Bearer None", now=T)


def test_two_tokens_get_the_intersection(tokens: TokenService) -> None:
    both = tokens.issue(sub="both", studies=[ST, ST2], now=T, ttl=600)
    one_series = tokens.issue(sub="narrow", studies=[ST], series=[SE], now=T, ttl=300)
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    decision = authorizer.decide(
        "GET", f"/t/{both.token}/dicomweb/studies", authorization=f"Bearer {one_series.token}", now=T
    )
    assert decision.claims == Claims(
        sub="both narrow",
        scope=Scope(frozenset({ST}), frozenset({SE})),
        actions=frozenset({"read"}),
        issued_at=T,
        expires_at=T + 300,
        jti=f"{both.claims.jti} {one_series.claims.jti}",
    )
    # the same token twice is one credential
    same = authorizer.decide("GET", f"/t/{both.token}{SERIES_PATH}?token={both.token}", now=T)
    assert same.claims == both.claims
    with pytest.raises(OutOfScope):  # the narrow token cannot see the whole study, so neither can the pair
        authorizer.decide("GET", f"/t/{both.token}{STUDY_PATH}", authorization=f"Bearer {one_series.token}", now=T)


def test_an_api_key_with_a_token_gets_the_token(tokens: TokenService) -> None:
    issued = tokens.issue(sub="u", studies=[ST], now=T)
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    decision = authorizer.decide("GET", f"/t/{issued.token}/dicomweb/studies", authorization=f"Bearer {API_KEY}")
    assert decision.claims.scope == issued.claims.scope
    assert decision.claims.actions == {"read"}
    with pytest.raises(OutOfScope):
        authorizer.decide("GET", f"/t/{issued.token}/dicomweb/studies/{ST2}", authorization=f"Bearer {API_KEY}")
    with pytest.raises(InsufficientScope):  # the read token cannot write, whatever key comes with it
        authorizer.decide("POST", f"/t/{issued.token}{STUDY_PATH}", authorization=f"Bearer {API_KEY}")


def test_write_token_in_the_authorization_header(tokens: TokenService) -> None:
    """Orthanc's DICOMweb plugin STOWs to the plain root with HttpHeaders {Authorization: Bearer <token>}."""
    writer = tokens.issue(sub="orthanc", studies=[ST], actions=["write"], now=T)
    reader = tokens.issue(sub="viewer", studies=[ST], now=T)
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    assert authorizer.decide("POST", STUDY_PATH, authorization=f"Bearer {writer.token}", now=T).claims.sub == "orthanc"
    assert authorizer.decide("POST", "/dicomweb/studies", authorization=f"Bearer {writer.token}", now=T)
    with pytest.raises(InsufficientScope) as caught:  # ours, for the wrong purpose: refused, not ignored
        authorizer.decide("POST", f"/t/{writer.token}{STUDY_PATH}", authorization=f"Bearer {reader.token}", now=T)
    assert caught.value.detail == "token does not allow write"


# The matrix: every state of every transport, every combination, against the rule and against each credential alone.

STATES = ("none", "in", "out", "expired", "revoked", "tampered")
AUTH_STATES = (*STATES, "foreign", "apikey")
TRANSPORTS = ("path", "query", "auth", "cookie")
MATRIX_TARGETS = [  # method, path, whether the "in" and the "out" token alone may
    ("GET", SERIES_PATH + "/instances", True, False),
    ("GET", STUDY_PATH, True, False),
    ("GET", "/dicomweb/studies", True, True),
    ("POST", STUDY_PATH, True, False),
    ("GET", f"/dicomweb/studies/{ST2}/series", False, True),
]


def _credentials(tokens: TokenService, revocations: Revocations) -> dict[str, str]:
    """One token per state: "in" reads and writes study ST, "out" reads and writes ST2 only."""
    rw = ["read", "write"]
    values = {
        "in": tokens.issue(sub="in", studies=[ST], actions=rw, now=T).token,
        "out": tokens.issue(sub="out", studies=[ST2], actions=rw, now=T).token,
        "expired": tokens.issue(sub="expired", studies=[ST], actions=rw, ttl=60, now=T - 120).token,
        "foreign": "None",
        "apikey": API_KEY,
    }
    revoked = tokens.issue(sub="revoked", studies=[ST], actions=rw, now=T)
    revocations.revoked.add(revoked.claims.jti)
    values["revoked"] = revoked.token
    good = values["in"]
    values["tampered"] = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    return values


def _request(states: dict[str, str], values: dict[str, str], path: str) -> tuple[str, str, str]:
    uri = path
    if states["path"] != "none":
        uri = f"/t/{values[states['path']]}{uri}"
    if states["query"] != "none":
        uri = f"{uri}?token={values[states['query']]}"
    cookie = f"dicomgw_token={values[states['cookie']]}" if states["cookie"] != "none" else ""
    auth = f"Bearer {values[states['auth']]}" if states["auth"] != "none" else ""
    return uri, cookie, auth


def _outcome(authorizer: Authorizer, method: str, request: tuple[str, str, str]) -> Scope | None | str:
    """The decision's scope when allowed (None: unrestricted), else the error code."""
    uri, cookie, auth = request
    try:
        return authorizer.decide(method, uri, cookie, auth, now=T).claims.scope
    except (TokenInvalid, TokenMissing, OutOfScope) as error:
        return error.code


def _within(inner: Scope | None, outer: Scope | None) -> bool:
    if outer is None:
        return True
    if inner is None:
        return False
    if not inner.studies:
        return True
    return inner.studies <= outer.studies and (
        outer.series is None or (inner.series is not None and inner.series <= outer.series)
    )


def test_no_combination_grants_more_than_its_credentials_alone(tokens: TokenService) -> None:
    """For every state of every transport (6 x 6 x 8 x 6 combinations) and every target: the answer follows the
    README's rule, and an allowed request's scope lies within that of every credential that counted, alone."""
    import itertools

    revocations = Revocations()
    values = _credentials(tokens, revocations)
    authorizer = make_authorizer(tokens, revocations, Clock(T))
    failing = {"expired": "token_expired", "revoked": "token_revoked", "tampered": "token_invalid"}
    checked = 0
    for method, path, in_may, out_may in MATRIX_TARGETS:
        alone: dict[tuple[str, str], Scope | None | str] = {}
        for transport in TRANSPORTS:
            for state in AUTH_STATES if transport == "auth" else STATES:
                states = {t: (state if t == transport else "none") for t in TRANSPORTS}
                alone[transport, state] = _outcome(authorizer, method, _request(states, values, path))
                if state in failing:
                    assert alone[transport, state] == failing[state]
        assert alone["auth", "foreign"] == "token_invalid" and alone["auth", "apikey"] is None
        assert alone["path", "in"] == (Scope(frozenset({ST})) if in_may else "out_of_scope")
        assert alone["cookie", "out"] == (Scope(frozenset({ST2})) if out_may else "out_of_scope")
        for combo in itertools.product(STATES, STATES, AUTH_STATES, STATES):
            states = dict(zip(TRANSPORTS, combo, strict=True))
            got = _outcome(authorizer, method, _request(states, values, path))
            explicit = [
                t
                for t in ("path", "query", "auth")
                if states[t] != "none" and not (t == "auth" and states[t] in ("foreign", "tampered"))
            ]
            counted = explicit or (["cookie"] if states["cookie"] != "none" else [])
            # the rule, as the README states it
            if not counted:
                expected_code = "token_invalid" if states["auth"] != "none" else "token_missing"
                assert got == expected_code, (method, path, states)
            else:
                for t in counted:  # the first failing credential in transport order answers
                    single = alone[t, states[t]]
                    if isinstance(single, str):
                        assert got == single, (method, path, states)
                        break
                else:
                    assert not isinstance(got, str), (method, path, states)
            # never more than any credential that counted would get alone
            if not isinstance(got, str):
                for t in counted:
                    single = alone[t, states[t]]
                    assert not isinstance(single, str) and _within(got, single), (method, path, states)
            checked += 1
    assert checked == len(MATRIX_TARGETS) * 6 * 6 * 8 * 6
