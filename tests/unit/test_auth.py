"""gateway.auth: token transports, path parsing and refusals, the scope matrix, revocation reloads, API keys."""

from __future__ import annotations

import hmac
import time

import pytest

from gateway import auth
from gateway.auth import Authorizer, Target, api_key_claims, check_scope, find_token, parse_target, split_token
from gateway.errors import InvalidPath, OutOfScope, TokenExpired, TokenInvalid, TokenMissing, TokenRevoked
from gateway.scope import Scope
from gateway.tokens import TokenService

KEY = "auth-test-signing-key-" + "k" * 32
ST = "1.2.840.113619.2.1"
ST2 = "1.2.840.113619.2.2"
SE = "1.2.840.113619.2.1.1"
SE2 = "1.2.840.113619.2.1.2"
IN = "1.2.840.113619.2.1.1.1"
T = int(time.time())


# -- split_token / find_token -----------------------------------------------------------------------------------


def test_split_token() -> None:
    assert split_token("/t/abc.DEF-_9/dicomweb/studies?x=1") == ("abc.DEF-_9", "/dicomweb/studies?x=1")
    assert split_token("/dicomweb/studies") == (None, "/dicomweb/studies")
    assert split_token("/tx/abc/dicomweb") == (None, "/tx/abc/dicomweb")
    with pytest.raises(InvalidPath) as caught:
        split_token("/t/abc")
    assert caught.value.detail == "token path prefix without a path"


def test_find_token_path_wins_over_query_and_cookie() -> None:
    token, target = find_token(f"/t/pathtok/dicomweb/studies/{ST}?token=querytok", "dicomgw_token=cookietok")
    assert token == "pathtok"
    assert target == Target(f"/studies/{ST}", ST, None, None, "", "token=querytok")


def test_find_token_query_wins_over_cookie() -> None:
    token, _ = find_token(f"/dicomweb/studies/{ST}?a=1&token=querytok", "dicomgw_token=cookietok")
    assert token == "querytok"


def test_find_token_cookie() -> None:
    token, target = find_token(f"/dicomweb/studies/{ST}", "theme=dark; dicomgw_token=cookietok; other=1")
    assert token == "cookietok"
    assert target.study == ST


def test_host_prefixed_cookie_is_preferred_whatever_the_order() -> None:
    assert find_token("/dicomweb/studies", "dicomgw_token=plain; __Host-dicomgw_token=host")[0] == "host"
    assert find_token("/dicomweb/studies", "__Host-dicomgw_token=host; dicomgw_token=plain")[0] == "host"
    assert find_token("/dicomweb/studies", '__Host-dicomgw_token="quoted"')[0] == "quoted"
    # the first cookie of a name counts
    assert find_token("/dicomweb/studies", "dicomgw_token=first; dicomgw_token=second")[0] == "first"


def test_duplicate_query_token_is_invalid() -> None:
    with pytest.raises(TokenInvalid) as caught:
        find_token("/dicomweb/studies?token=a&token=b", "")
    assert caught.value.detail == "more than one token in the query"


@pytest.mark.parametrize(
    ("uri", "cookie"),
    [
        ("/dicomweb/studies", ""),
        ("/dicomweb/studies?other=1", "theme=dark"),
        ("/dicomweb/studies?token=", ""),
        ("/t//dicomweb/studies", "dicomgw_token=cookietok"),
    ],
)
def test_missing_token(uri: str, cookie: str) -> None:
    with pytest.raises(TokenMissing) as caught:
        find_token(uri, cookie)
    assert caught.value.detail == "no token in the path, the query or the cookie"


@pytest.mark.parametrize(
    ("uri", "cookie"),
    [
        ("/dicomweb/studies?token=a%20b", ""),
        ("/dicomweb/studies?token=a+b", ""),
        ("/dicomweb/studies", "dicomgw_token=<script>"),
        ("/dicomweb/studies?token=" + "a" * 4097, ""),
    ],
)
def test_malformed_token(uri: str, cookie: str) -> None:
    with pytest.raises(TokenInvalid) as caught:
        find_token(uri, cookie)
    assert caught.value.detail == "malformed token"


# -- parse_target --------------------------------------------------------------------------------------------------

STUDY_PATH = f"/dicomweb/studies/{ST}"
SERIES_PATH = f"{STUDY_PATH}/series/{SE}"
INSTANCE_PATH = f"{SERIES_PATH}/instances/{IN}"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/dicomweb", Target("/", None, None, None, "")),
        ("/dicomweb/", Target("/", None, None, None, "")),
        ("/dicomweb/studies", Target("/studies", None, None, None, "studies")),
        ("/dicomweb/series", Target("/series", None, None, None, "series")),
        ("/dicomweb/instances", Target("/instances", None, None, None, "instances")),
        (STUDY_PATH, Target(f"/studies/{ST}", ST, None, None, "")),
        (f"{STUDY_PATH}/metadata", Target(f"/studies/{ST}/metadata", ST, None, None, "metadata")),
        (f"{STUDY_PATH}/series", Target(f"/studies/{ST}/series", ST, None, None, "series")),
        (f"{STUDY_PATH}/instances", Target(f"/studies/{ST}/instances", ST, None, None, "instances")),
        (SERIES_PATH, Target(f"/studies/{ST}/series/{SE}", ST, SE, None, "")),
        (f"{SERIES_PATH}/instances", Target(f"/studies/{ST}/series/{SE}/instances", ST, SE, None, "instances")),
        (f"{SERIES_PATH}/rendered", Target(f"/studies/{ST}/series/{SE}/rendered", ST, SE, None, "rendered")),
        (INSTANCE_PATH, Target(f"/studies/{ST}/series/{SE}/instances/{IN}", ST, SE, IN, "")),
        (f"{INSTANCE_PATH}/metadata", Target(INSTANCE_PATH[9:] + "/metadata", ST, SE, IN, "metadata")),
        (f"{INSTANCE_PATH}/frames/1,2", Target(INSTANCE_PATH[9:] + "/frames/1,2", ST, SE, IN, "frames/1,2")),
        (f"{INSTANCE_PATH}/bulkdata/a/b", Target(INSTANCE_PATH[9:] + "/bulkdata/a/b", ST, SE, IN, "bulkdata/a/b")),
        (f"{INSTANCE_PATH}/thumbnail", Target(INSTANCE_PATH[9:] + "/thumbnail", ST, SE, IN, "thumbnail")),
    ],
)
def test_parse_target_shapes(path: str, expected: Target) -> None:
    assert parse_target(path) == expected


def test_parse_target_keeps_the_query_and_decodes_once() -> None:
    query = f"requestType=WADO&studyUID={ST}"
    assert parse_target("/dicomweb/wado", query) == Target("/wado", None, None, None, "wado", query)
    # percent-encoded digits decode to the same UID
    assert parse_target("/dicomweb/studies/1%2E2%2E3").study == "1.2.3"


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        (f"{STUDY_PATH}/../{ST2}", "path is not canonical"),
        (f"{STUDY_PATH}/%2e%2e/{ST2}", "path is not canonical"),
        (f"{STUDY_PATH}/./series", "path is not canonical"),
        (f"{STUDY_PATH}/.", "path is not canonical"),
        ("/dicomweb//studies", "path is not canonical"),
        (f"{STUDY_PATH}//series/{SE}", "path is not canonical"),
        (f"{STUDY_PATH}%2Fseries%2F{SE}", "encoded slashes and backslashes are not allowed"),
        (f"{STUDY_PATH}%2fseries", "encoded slashes and backslashes are not allowed"),
        (f"{STUDY_PATH}%5Cseries", "encoded slashes and backslashes are not allowed"),
        (f"{STUDY_PATH}%5cseries", "encoded slashes and backslashes are not allowed"),
        (f"{STUDY_PATH}\\series", "encoded slashes and backslashes are not allowed"),
        (f"{STUDY_PATH}%252Fseries", "double-encoded paths are not allowed"),
        (f"{STUDY_PATH}%255Cseries", "double-encoded paths are not allowed"),
        ("/dicomweb/studies/abc", "a UID path segment is not a valid DICOM UID"),
        ("/dicomweb/studies/1..2", "a UID path segment is not a valid DICOM UID"),
        ("/dicomweb/studies/series", "a UID path segment is not a valid DICOM UID"),
        (f"/dicomweb/studies/1.{'2' * 63}", "a UID path segment is not a valid DICOM UID"),
        (f"{STUDY_PATH}/series/x{SE}", "a UID path segment is not a valid DICOM UID"),
        (f"{SERIES_PATH}/instances/1.2.", "a UID path segment is not a valid DICOM UID"),
        ("/studies", "not a DICOMweb path"),
        ("/api/v1/tokens", "not a DICOMweb path"),
        ("/dicomwebx/studies", "not a DICOMweb path"),
        ("/t/abc/dicomweb/studies", "not a DICOMweb path"),
    ],
)
def test_parse_target_refusals(path: str, detail: str) -> None:
    with pytest.raises(InvalidPath) as caught:
        parse_target(path)
    assert caught.value.detail == detail


def test_a_64_character_uid_is_accepted() -> None:
    uid = "1." + "2" * 62
    assert parse_target(f"/dicomweb/studies/{uid}").study == uid


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
    assert scope_detail(SERIES_SCOPE, f"/dicomweb/studies/{ST2}/series") == "study outside the token's scope"


def test_search_paths_without_a_study_pass() -> None:
    for path in ("/dicomweb", "/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances"):
        assert allowed(SERIES_SCOPE, path), path
    assert scope_detail(STUDY_SCOPE, "/dicomweb/workitems") == "path outside the token's scope"


def test_wado_scope_from_the_query() -> None:
    wado = "/dicomweb/wado"
    assert allowed(SERIES_SCOPE, wado, query=f"requestType=WADO&studyUID={ST}&seriesUID={SE}&objectUID={IN}")
    assert allowed(STUDY_SCOPE, wado, query=f"studyUID={ST}&seriesUID={SE2}")
    assert scope_detail(SERIES_SCOPE, wado, query=f"studyUID={ST}&seriesUID={SE2}") == (
        "object outside the token's scope"
    )
    assert scope_detail(STUDY_SCOPE, wado, query=f"studyUID={ST2}&seriesUID={SE}") == (
        "object outside the token's scope"
    )
    needs = "WADO-URI needs valid studyUID and seriesUID"
    assert scope_detail(STUDY_SCOPE, wado, query=f"studyUID={ST}") == needs
    assert scope_detail(STUDY_SCOPE, wado, query=f"studyUID={ST}&seriesUID=abc") == needs
    assert scope_detail(STUDY_SCOPE, wado) == needs


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
    return Authorizer(tokens, ("api-key-one-" + "1" * 20, "api-key-two-" + "2" * 20), revocations, 2.0, clock)


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
    with pytest.raises(TokenInvalid) as caught:
        authorizer.decide("POST", f"/t/{issued.token}{STUDY_PATH}", now=T)
    assert caught.value.detail == "token signature does not verify"
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
    decision = authorizer.decide("POST", f"/t/ignored{STUDY_PATH}", authorization="Bearer api-key-two-" + "2" * 20)
    assert decision.claims == api_key_claims(5000)
    assert decision.claims.scope is None
    assert decision.claims.actions == frozenset({"read", "write"})
    assert decision.target == Target(f"/studies/{ST}", ST, None, None, "")
    assert authorizer.decide("GET", "/dicomweb/studies", authorization="bearer api-key-one-" + "1" * 20).study == ""
    assert api_key_claims(10) == api_key_claims(10)
    assert (api_key_claims(10).issued_at, api_key_claims(10).expires_at) == (10, 70)


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", "Bearer api-key-one-" + "1" * 19, "Basic api-key-one-" + "1" * 20, "Bearer ", "api-key"],
)
def test_wrong_api_key(tokens: TokenService, authorization: str) -> None:
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    with pytest.raises(TokenInvalid) as caught:
        authorizer.decide("GET", STUDY_PATH, authorization=authorization)
    assert caught.value.detail == "bad API key"


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


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH", "OPTIONS", "get"])
def test_other_methods_are_out_of_scope(tokens: TokenService, method: str) -> None:
    authorizer = make_authorizer(tokens, Revocations(), Clock(T))
    with pytest.raises(OutOfScope) as caught:
        authorizer.decide(method, STUDY_PATH, authorization="Bearer api-key-one-" + "1" * 20)
    assert caught.value.detail == f"method {method} is not allowed"
