"""gateway.tokens: issue/verify round trip, validation details, purposes (salts), expiry with frozen time, key
rotation, tampering, the verify cache.

Time is frozen by passing ``now=`` to ``issue`` and ``verify``; ``T`` is taken from the wall clock once at import
so the tests do not depend on itsdangerous' own clock (see ``test_frozen_time_is_independent_of_the_wall_clock``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import time
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer

from gateway.errors import BadRequest, InsufficientScope, TokenExpired, TokenInvalid, TokenUnrecognised
from gateway.scope import Scope
from gateway.tokens import (
    MAX_ISSUED_LENGTH,
    MAX_SIGNED_LENGTH,
    MAX_TOKEN_LENGTH,
    SALTS,
    Claims,
    TokenService,
    _TimestampSerializer,
    decode_claims,
)
from gateway.uids import is_uid

KEY_OLD = "old-signing-key-" + "o" * 32
KEY_NEW = "new-signing-key-" + "n" * 32
STUDY = "1.2.826.0.1.3680043.8.498.1"
STUDY2 = "1.2.826.0.1.3680043.8.498.2"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"
T = int(time.time())


def service(keys: tuple[str, ...] = (KEY_NEW,), max_ttl: int = 3600, default_ttl: int = 900) -> TokenService:
    return TokenService(keys, max_ttl=max_ttl, default_ttl=default_ttl)


def payload_of(token: str) -> dict[str, Any]:
    """Decode (without verifying) the JSON payload of an itsdangerous URL-safe token."""
    compressed = token.startswith(".")
    body = token.rsplit(".", 2)[0].lstrip(".")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return dict(json.loads(zlib.decompress(raw) if compressed else raw))


# -- round trip and claims ---------------------------------------------------------------------------------------


def test_issue_verify_round_trip_with_exact_claims() -> None:
    tokens = service()
    issued = tokens.issue(sub="portal-user-7", studies=[STUDY], series=[SERIES], ttl=600, now=T)
    expected = Claims(
        sub="portal-user-7",
        scope=Scope(frozenset({STUDY}), frozenset({SERIES})),
        actions=frozenset({"read"}),
        issued_at=T,
        expires_at=T + 600,
        jti=issued.claims.jti,
    )
    assert issued.claims == expected
    assert tokens.verify(issued.token, "read", now=T) == expected
    # a fresh service (no cache) agrees
    assert service().verify(issued.token, "read", now=T + 1) == expected


def test_payload_uses_short_claim_names() -> None:
    issued = service().issue(sub="u", studies=[STUDY], actions=["read", "write"], ttl=60, now=T)
    assert payload_of(issued.token) == {"v": 1, "s": "u", "st": [STUDY], "a": "rw", "t": 60, "j": issued.claims.jti}
    assert len(issued.claims.jti) == 12  # token_urlsafe(9)


def test_jti_is_unique_per_issue() -> None:
    tokens = service()
    jtis = {tokens.issue(sub="u", studies=[STUDY], now=T).claims.jti for _ in range(50)}
    assert len(jtis) == 50


def test_defaults_read_and_default_ttl() -> None:
    claims = service(default_ttl=300).issue(sub="u", studies=[STUDY], now=T).claims
    assert claims.actions == frozenset({"read"})
    assert claims.scope == Scope(frozenset({STUDY}), None)
    assert claims.expires_at == T + 300


def test_default_ttl_is_capped_by_max_ttl() -> None:
    tokens = service(max_ttl=120, default_ttl=900)
    assert tokens.default_ttl == 120
    assert tokens.issue(sub="u", studies=[STUDY], now=T).claims.expires_at == T + 120


def test_one_study_read_token_is_short() -> None:
    uid = "1.2." + "3" * 60
    assert len(uid) == 64
    token = service().issue(sub="portal-user-0042", studies=[uid], now=T).token
    assert len(token) < 250


def test_no_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one signing key"):
        TokenService((), max_ttl=60)


# -- validation: 400 with an exact detail ---------------------------------------------------------------------

BAD_ISSUES: list[tuple[dict[str, Any], str]] = [
    ({"sub": ""}, "sub must be 1-128 printable ASCII characters without spaces"),
    ({"sub": "x" * 129}, "sub must be 1-128 printable ASCII characters without spaces"),
    ({"sub": 42}, "sub must be 1-128 printable ASCII characters without spaces"),
    ({"studies": []}, "studies must be a non-empty list of Study Instance UIDs"),
    ({"studies": STUDY}, "studies must be a non-empty list of Study Instance UIDs"),
    ({"studies": [f"1.{i}" for i in range(101)]}, "at most 100 studies per token"),
    ({"studies": ["1.2.abc"]}, "studies: every entry must be a valid DICOM UID"),
    ({"studies": ["1." + "2" * 63]}, "studies: every entry must be a valid DICOM UID"),
    ({"studies": [STUDY, 5]}, "studies: every entry must be a valid DICOM UID"),
    ({"series": []}, "series, when given, must be a non-empty list of Series Instance UIDs"),
    ({"series": SERIES}, "series, when given, must be a non-empty list of Series Instance UIDs"),
    ({"studies": [STUDY, STUDY2], "series": [SERIES]}, "a series-scoped token names exactly one study"),
    ({"series": ["x.1"]}, "series: every entry must be a valid DICOM UID (at most 100)"),
    ({"series": [f"1.{i}" for i in range(101)]}, "series: every entry must be a valid DICOM UID (at most 100)"),
    ({"actions": []}, "actions must be a non-empty list drawn from 'read' and 'write'"),
    ({"actions": ["read", "delete"]}, "actions must be a non-empty list drawn from 'read' and 'write'"),
    ({"actions": "read"}, "actions must be a non-empty list drawn from 'read' and 'write'"),
    # JSON values no action is: a list or an object among them is unhashable (a 500 before), a number is not one
    ({"actions": [["read"]]}, "actions must be a non-empty list drawn from 'read' and 'write'"),
    ({"actions": [{}]}, "actions must be a non-empty list drawn from 'read' and 'write'"),
    ({"actions": ["read", 1]}, "actions must be a non-empty list drawn from 'read' and 'write'"),
    ({"ttl": 0}, "ttl must be a positive integer number of seconds"),
    ({"ttl": -5}, "ttl must be a positive integer number of seconds"),
    ({"ttl": True}, "ttl must be a positive integer number of seconds"),
    ({"ttl": 1.5}, "ttl must be a positive integer number of seconds"),
    ({"ttl": "900"}, "ttl must be a positive integer number of seconds"),
    ({"ttl": 3601}, "ttl exceeds the maximum of 3600 seconds"),
]


@pytest.mark.parametrize(("change", "detail"), BAD_ISSUES)
def test_issue_validation_details(change: dict[str, Any], detail: str) -> None:
    request: dict[str, Any] = {"sub": "u", "studies": [STUDY], "now": T, **change}
    with pytest.raises(BadRequest) as caught:
        service(max_ttl=3600).issue(**request)
    assert caught.value.detail == detail
    assert caught.value.status == 400


def test_ttl_at_the_cap_is_accepted() -> None:
    assert service(max_ttl=3600).issue(sub="u", studies=[STUDY], ttl=3600, now=T).claims.expires_at == T + 3600


def test_verifier_with_a_lower_cap_shortens_the_lifetime() -> None:
    """A token issued under a long cap is held to the verifier's (shorter) cap."""
    token = service(max_ttl=3600).issue(sub="u", studies=[STUDY], ttl=3600, now=T).token
    strict = service(max_ttl=600)
    assert strict.verify(token, "read", now=T + 599).expires_at == T + 600
    with pytest.raises(TokenExpired):
        strict.verify(token, "read", now=T + 600)


# -- purposes ---------------------------------------------------------------------------------------------------


def test_read_token_cannot_write() -> None:
    tokens = service()
    token = tokens.issue(sub="u", studies=[STUDY], actions=["read"], now=T).token
    with pytest.raises(InsufficientScope) as caught:  # RFC 6750 3.1: a 403, the token itself is good
        tokens.verify(token, "write", now=T)
    assert caught.value.detail == "token does not allow write"
    assert caught.value.status == 403


def test_write_only_token_cannot_read() -> None:
    tokens = service()
    token = tokens.issue(sub="u", studies=[STUDY], actions=["write"], now=T).token
    assert tokens.verify(token, "write", now=T).actions == frozenset({"write"})
    with pytest.raises(InsufficientScope) as caught:
        tokens.verify(token, "read", now=T)
    assert caught.value.detail == "token does not allow read"


def test_read_write_token_does_both() -> None:
    tokens = service()
    token = tokens.issue(sub="u", studies=[STUDY], actions=["write", "read"], now=T).token
    assert tokens.verify(token, "read", now=T).actions == frozenset({"read", "write"})
    assert tokens.verify(token, "write", now=T).actions == frozenset({"read", "write"})


def test_salts_differ_per_purpose() -> None:
    assert SALTS["read"] != SALTS["write"]


# -- expiry with frozen time ------------------------------------------------------------------------------------


def test_expiry_at_the_exact_second() -> None:
    tokens = service()
    token = tokens.issue(sub="u", studies=[STUDY], ttl=900, now=T).token
    assert tokens.verify(token, "read", now=T + 899).expires_at == T + 900
    with pytest.raises(TokenExpired) as caught:
        tokens.verify(token, "read", now=T + 900)
    assert caught.value.detail == "token expired"
    assert caught.value.code == "token_expired"


def test_cache_does_not_bypass_expiry() -> None:
    tokens = service()
    token = tokens.issue(sub="u", studies=[STUDY], ttl=30, now=T).token
    tokens.verify(token, "read", now=T)  # now cached
    with pytest.raises(TokenExpired):
        tokens.verify(token, "read", now=T + 30)
    # and the cache does not remember a purpose it was never asked about
    with pytest.raises(InsufficientScope):
        tokens.verify(token, "write", now=T)


def test_token_far_in_the_future_is_refused() -> None:
    tokens = service()
    token = tokens.issue(sub="u", studies=[STUDY], now=T + 120).token
    with pytest.raises(TokenInvalid) as caught:
        tokens.verify(token, "read", now=T)
    assert caught.value.detail == "token issued in the future"


def test_small_clock_skew_is_tolerated() -> None:
    """Another node whose clock runs 30 s ahead issued the token: within the 60 s tolerance it is accepted."""
    tokens = service()
    token = tokens.issue(sub="u", studies=[STUDY], now=T + 30).token
    assert tokens.verify(token, "read", now=T).issued_at == T + 30


def test_frozen_time_is_independent_of_the_wall_clock() -> None:
    """``now`` is the only clock: a token issued and verified at a frozen instant in the past verifies."""
    frozen = 1_700_000_000
    tokens = service()
    token = tokens.issue(sub="u", studies=[STUDY], ttl=60, now=frozen).token
    assert tokens.verify(token, "read", now=frozen + 10).expires_at == frozen + 60


# -- keys, tampering, junk --------------------------------------------------------------------------------------


def test_key_rotation() -> None:
    old_token = service((KEY_OLD,)).issue(sub="u", studies=[STUDY], now=T).token
    assert service((KEY_OLD, KEY_NEW)).verify(old_token, "read", now=T).sub == "u"
    with pytest.raises(TokenInvalid) as caught:
        service((KEY_NEW,)).verify(old_token, "read", now=T)
    assert caught.value.detail == "token signature does not verify"
    # the newest key signs: [old, new] tokens verify with [new] alone but not with [old]
    new_token = service((KEY_OLD, KEY_NEW)).issue(sub="u", studies=[STUDY], now=T).token
    assert service((KEY_NEW,)).verify(new_token, "read", now=T).sub == "u"
    with pytest.raises(TokenInvalid):
        service((KEY_OLD,)).verify(new_token, "read", now=T)


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


@pytest.mark.parametrize("part", ["payload", "timestamp", "signature"])
def test_tampering_is_detected(part: str) -> None:
    tokens = service()
    token = tokens.issue(sub="u", studies=[STUDY], now=T).token
    payload, stamp, signature = token.rsplit(".", 2)  # a compressed payload starts with "."
    if part == "payload":
        tampered = ".".join([_flip(payload, 5), stamp, signature])
    elif part == "timestamp":
        tampered = ".".join([payload, _flip(stamp, 2), signature])
    else:
        tampered = ".".join([payload, stamp, _flip(signature, 10)])
    assert tampered != token
    with pytest.raises(TokenInvalid) as caught:
        tokens.verify(tampered, "read", now=T)
    assert type(caught.value) is TokenUnrecognised  # nothing we signed
    assert caught.value.detail == "token signature does not verify"


def test_resigned_payload_for_another_study_does_not_verify() -> None:
    """Swapping the claims while keeping the original signature fails."""
    tokens = service()
    token = tokens.issue(sub="u", studies=[STUDY], now=T).token
    forged = URLSafeTimedSerializer("attacker-key", salt=SALTS["read"]).dumps(
        {"v": 1, "s": "u", "st": [STUDY2], "a": "r", "t": 900, "j": "x"}
    )
    spliced = forged.rsplit(".", 1)[0] + "." + token.rsplit(".", 1)[1]
    with pytest.raises(TokenInvalid):
        tokens.verify(spliced, "read", now=T)


def _sign(payload: Any, key: str = KEY_NEW, purpose: str = "read") -> str:
    serializer = URLSafeTimedSerializer([key], salt=SALTS[purpose], signer_kwargs={"digest_method": hashlib.sha256})
    token = serializer.dumps(payload)
    assert isinstance(token, str)
    return token


def test_validly_signed_but_malformed_claims() -> None:
    tokens = service()
    now = int(time.time())
    with pytest.raises(TokenInvalid) as caught:
        tokens.verify(_sign({"v": 1, "s": "u", "a": "r", "t": 60, "j": "x"}), "read", now=now)
    assert caught.value.detail == "malformed token claims: studies"
    with pytest.raises(TokenInvalid) as caught:
        tokens.verify(_sign({"v": 2, "s": "u", "st": [STUDY], "a": "r", "t": 60, "j": "x"}), "read", now=now)
    assert caught.value.detail == "unsupported token version"


GOOD_CLAIMS: dict[str, Any] = {"v": 1, "s": "u", "st": [STUDY], "a": "r", "t": 60, "j": "jti-1"}


def _with(**changes: Any) -> dict[str, Any]:
    claims = {**GOOD_CLAIMS, **changes}
    return {key: value for key, value in claims.items() if value is not _DROP}


_DROP = object()


# Issue 11: each of these is correctly signed with our key, yet must answer 401 (TokenInvalid naming the claim),
# never an exception that the fast path turns into a 5xx.
ODD_CLAIMS = [
    (_with(t=float("inf")), "malformed token claims: lifetime"),
    (_with(t=float("-inf")), "malformed token claims: lifetime"),
    (_with(t=float("nan")), "malformed token claims: lifetime"),
    (_with(t=60.0), "malformed token claims: lifetime"),
    (_with(t=True), "malformed token claims: lifetime"),
    (_with(t="60"), "malformed token claims: lifetime"),
    (_with(t=0), "malformed token claims: lifetime"),
    (_with(t=-(10**40)), "malformed token claims: lifetime"),
    (_with(t={"n": 60}), "malformed token claims: lifetime"),
    (_with(t=_DROP), "malformed token claims: lifetime"),
    (_with(s="user\r\nX-Injected: 1"), "malformed token claims: sub"),
    (_with(s="user\n"), "malformed token claims: sub"),
    (_with(s="two words"), "malformed token claims: sub"),
    (_with(s=""), "malformed token claims: sub"),
    (_with(s="\u00e9t\u00e9"), "malformed token claims: sub"),
    (_with(s="x" * 129), "malformed token claims: sub"),
    (_with(s=10**30), "malformed token claims: sub"),
    (_with(s={"nested": {"deeper": [1]}}), "malformed token claims: sub"),
    (_with(s=None), "malformed token claims: sub"),
    (_with(j="a\r\nb"), "malformed token claims: jti"),
    (_with(j=7), "malformed token claims: jti"),
    (_with(j="x" * 65), "malformed token claims: jti"),
    (_with(j=_DROP), "malformed token claims: jti"),
    (_with(st=STUDY), "malformed token claims: studies"),
    (_with(st=[]), "malformed token claims: studies"),
    (_with(st=[STUDY + "\n"]), "malformed token claims: studies"),
    (_with(st=[1]), "malformed token claims: studies"),
    (_with(st=[[STUDY]]), "malformed token claims: studies"),
    (_with(st=[{"uid": STUDY}]), "malformed token claims: studies"),
    (_with(st=[f"1.2.{n}" for n in range(101)]), "malformed token claims: studies"),
    (_with(se=[SERIES], st=[STUDY, STUDY2]), "malformed token claims: a series scope names exactly one study"),
    (_with(se=[]), "malformed token claims: series"),
    (_with(se=None), "malformed token claims: series"),
    (_with(se=SERIES), "malformed token claims: series"),
    (_with(a="x"), "malformed token claims: actions"),
    (_with(a="wr"), "malformed token claims: actions"),
    (_with(a=["r"]), "malformed token claims: actions"),
    (_with(a={"r": 1}), "malformed token claims: actions"),
    (_with(a=None), "malformed token claims: actions"),
    (_with(v=True), "unsupported token version"),
    (_with(v=1.0), "unsupported token version"),
    (_with(v="1"), "unsupported token version"),
    (_with(v=10**100), "unsupported token version"),
    (_with(v=_DROP), "unsupported token version"),
    (_with(extra=1), "malformed token claims: unknown claim"),
    ([GOOD_CLAIMS], "malformed token claims: not an object"),
    ("claims", "malformed token claims: not an object"),
    (None, "malformed token claims: not an object"),
    (10**300, "malformed token claims: not an object"),
]


@pytest.mark.parametrize(("payload", "detail"), ODD_CLAIMS)
def test_signed_odd_claims_are_token_invalid(payload: Any, detail: str) -> None:
    tokens = service()
    for purpose in ("read", "write"):
        with pytest.raises(TokenInvalid) as caught:
            tokens.verify(_sign(payload, purpose=purpose), purpose, now=int(time.time()))
        assert type(caught.value) is TokenInvalid  # signed by us: never TokenUnrecognised
        assert caught.value.detail == detail
        assert caught.value.status == 401


def test_the_good_claims_of_the_odd_claims_table_verify() -> None:
    """The table above changes one claim of a payload that is itself valid."""
    assert service().verify(_sign(GOOD_CLAIMS), "read", now=int(time.time())).jti == "jti-1"


def test_a_huge_lifetime_is_capped_not_refused() -> None:
    claims = service(max_ttl=3600).verify(_sign(_with(t=10**40)), "read", now=int(time.time()))
    assert claims.expires_at - claims.issued_at == 3600


def test_a_signed_payload_that_is_not_json_is_token_invalid() -> None:
    serializer = URLSafeTimedSerializer([KEY_NEW], salt=SALTS["read"], signer_kwargs={"digest_method": hashlib.sha256})
    for raw in (b"eyJ2I", b"eyJ2Ijox", b".eJzLSM3JyQcABiwCFQ"):  # no base64 (5 letters), cut JSON, zlib of "hello"
        token = serializer.make_signer().sign(raw).decode()
        with pytest.raises(TokenInvalid) as caught:
            service().verify(token, "read", now=int(time.time()))
        assert caught.value.detail == "malformed token claims: not JSON"


@pytest.mark.parametrize("stamp", [2**40, 2**62, 2**64 - 1])
def test_a_signed_timestamp_that_is_no_date_is_token_invalid(stamp: int) -> None:
    serializer = _TimestampSerializer(
        [KEY_NEW], salt=SALTS["read"], signer_kwargs={"digest_method": hashlib.sha256}, now=stamp
    )
    token = serializer.dumps(GOOD_CLAIMS)
    with pytest.raises(TokenInvalid) as caught:
        service().verify(token, "read", now=T)
    assert caught.value.detail == "malformed token timestamp"


# -- the claim decoder under hypothesis: any JSON a signer could hold is Claims or TokenInvalid, nothing else ------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["r", "w", "rw", STUDY, SERIES, "u\r\n", "1.2.3\n"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
_claim_values = {
    "v": st.one_of(st.just(1), _json),
    "s": st.one_of(st.just("user"), st.text(max_size=140), _json),
    "st": st.one_of(st.just([STUDY]), st.lists(st.sampled_from([STUDY, STUDY2, "1.2\n", "x"]), max_size=3), _json),
    "se": st.one_of(st.just([SERIES]), _json),
    "a": st.one_of(st.sampled_from(["r", "w", "rw"]), _json),
    "t": st.one_of(st.integers(min_value=-5, max_value=10**30), _json),
    "j": st.one_of(st.just("jti-1"), st.text(max_size=70), _json),
}
_payloads = st.one_of(
    st.fixed_dictionaries({}, optional=_claim_values),
    st.fixed_dictionaries(_claim_values, optional={"zz": _json}),
    _json,
)
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_payloads, issued=st.integers(min_value=0, max_value=2**40))
def test_decode_claims_is_total_and_strict(payload: Any, issued: int) -> None:
    try:
        claims = decode_claims(payload, issued, 3600)
    except TokenInvalid as error:
        assert error.status == 401 and error.detail
        return
    # what comes out is safe for a response header, the audit log and SQL
    assert _HEADER_SAFE.fullmatch(claims.sub) and _HEADER_SAFE.fullmatch(claims.jti)
    assert claims.scope is not None and 1 <= len(claims.scope.studies) <= 100
    assert all(is_uid(uid) for uid in claims.scope.studies | (claims.scope.series or frozenset()))
    assert claims.scope.series is None or len(claims.scope.studies) == 1
    assert claims.actions in ({"read"}, {"write"}, {"read", "write"})
    assert 0 < claims.expires_at - claims.issued_at <= 3600


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_payloads)
def test_verify_of_any_signed_payload_is_claims_or_token_invalid(payload: Any) -> None:
    """The whole path: JSON through itsdangerous (which writes and reads NaN and Infinity) and back."""
    try:
        token = _sign(payload)
    except (TypeError, ValueError):  # not JSON-serialisable (cannot be signed at all)
        return
    try:
        service().verify(token, "read", now=int(time.time()))
    except TokenInvalid as error:
        assert type(error) is not TokenUnrecognised
    except InsufficientScope:  # valid claims that allow only "write": the 403 meant for them (Hypothesis draws
        pass  # on the project's own constants, so a code change anywhere can bring such a payload into the examples)


@pytest.mark.parametrize("junk", ["", "abc", "a.b.c", "." * 10])
def test_junk_does_not_verify(junk: str) -> None:
    with pytest.raises(TokenInvalid) as caught:
        service().verify(junk, "read", now=T)
    assert caught.value.detail == "token signature does not verify"


@pytest.mark.parametrize("padding", ["=", "=="])
def test_a_padded_token_is_malformed_as_every_read_judges_it(padding: str) -> None:
    """itsdangerous decodes ``T=`` as ``T``; auth.well_formed refuses it on every read, and so does verify now (the
    cookie exchange and renewal call it alone)."""
    token = service().issue(sub="u", studies=[STUDY], now=T).token
    assert service().verify(token, "read", now=T).sub == "u"
    with pytest.raises(TokenInvalid) as caught:
        service().verify(token + padding, "read", now=T)
    assert caught.value.detail == "malformed token"


def test_oversized_token_is_refused_before_any_work() -> None:
    with pytest.raises(TokenInvalid) as caught:
        service().verify("a" * (MAX_TOKEN_LENGTH + 1), "read", now=T)
    assert caught.value.detail == "token too long"


def test_verify_only_keys_verify_but_never_sign() -> None:
    """Rotation step 1: every node learns NEW as verify-only before any node signs with it, so a token signed by
    an already-updated node is accepted by a node that still signs with OLD."""
    old, new = "o" * 40, "n" * 40
    updated_node = TokenService((old, new), 3600)
    lagging_node = TokenService((old,), 3600, verify_keys=(new,))
    signed_with_new = updated_node.issue(sub="u", studies=["1.2.3"], now=T).token
    assert lagging_node.verify(signed_with_new, "read", now=T).sub == "u"
    signed_by_lagging = lagging_node.issue(sub="u", studies=["1.2.3"], now=T).token
    assert TokenService((old,), 3600).verify(signed_by_lagging, "read", now=T).sub == "u"  # signed with OLD
    with pytest.raises(TokenInvalid):
        TokenService((new,), 3600).verify(signed_by_lagging, "read", now=T)


def test_every_token_issued_and_renewed_fits_a_browser_cookie_beside_its_longest_name() -> None:
    """A browser drops a cookie whose name and value pass 4,096 bytes (RFC 6265 6.1; Chromium and Firefox). Scopes
    grown until the API refuses them: what it issues leaves room for every renewal of the session, whose own jti
    takes a few more characters; a scope one UID larger is the 400 naming the bound."""
    from gateway.auth import PLAIN_COOKIE_NAME, SECURE_COOKIE_NAME

    assert len(max(SECURE_COOKIE_NAME, PLAIN_COOKIE_NAME, key=len)) + MAX_SIGNED_LENGTH == 4096
    tokens = service()
    for seed in range(40):
        digits = random.Random(seed)
        uids = [f"2.25.{digits.getrandbits(190)}" for _ in range(100)]
        series = seed % 2 == 1  # a series-scoped token: one study, many series
        issued = None
        for count in range(1, 101):
            scope = {"studies": [uids[0]], "series": uids[:count]} if series else {"studies": uids[:count]}
            try:
                issued = tokens.issue(sub="portal-user", ttl=600, session_max=3600, session_cap=86400, now=T, **scope)
            except BadRequest as refused:
                assert re.fullmatch(
                    rf"the scope is too large for one token \(4[0-9]{{3}} characters, at most {MAX_ISSUED_LENGTH}\): "
                    "issue several tokens with fewer studies or series each",
                    refused.detail,
                ), refused.detail
                break
        assert issued is not None and MAX_ISSUED_LENGTH - 80 < len(issued.token) <= MAX_ISSUED_LENGTH
        token = issued.token
        for step in range(1, 6):
            token = tokens.renew(token, set(), now=T + step).token
            assert len(token) <= MAX_SIGNED_LENGTH


def test_an_integer_field_of_a_json_body_is_an_integral_number() -> None:
    """One rule for every integer field of the JSON API (``gateway.numbers.json_integer``): 900.0 is 900."""
    from gateway.numbers import json_integer

    assert [json_integer(v) for v in (900, 900.0, 9e2, -3.0, 10**30, 1e20)] == [900, 900, 900, -3, 10**30, 10**20]
    for value in (900.5, True, False, "900", None, float("nan"), float("inf"), float("-inf"), [900], {"v": 1}):
        assert json_integer(value) is None, value
