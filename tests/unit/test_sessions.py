"""Session tokens (issue 13): ``session_max`` at issue, ``renew`` until the session's end, revocation of the session
id ending every renewed token, and strict decoding of the session claims."""

from __future__ import annotations

import hashlib

import pytest

from gateway.auth import Authorizer
from gateway.errors import BadRequest, TokenExpired, TokenInvalid, TokenRevoked
from gateway.tokens import SALTS, TokenService, _TimestampSerializer

KEY = "k" * 40
ST, SE = "1.2.3", "1.2.3.4"
T0 = 1_800_000_000


@pytest.fixture
def tokens() -> TokenService:
    return TokenService((KEY,), max_ttl=3600)


def test_a_session_token_names_itself_and_its_end(tokens: TokenService) -> None:
    issued = tokens.issue(sub="u", studies=[ST], ttl=600, session_max=7200, session_cap=43200, now=T0)
    claims = issued.claims
    assert (claims.session, claims.session_expires_at, claims.expires_at) == (claims.jti, T0 + 7200, T0 + 600)
    short = tokens.issue(sub="u", studies=[ST], ttl=600, session_max=60, session_cap=43200, now=T0)
    assert short.claims.expires_at == T0 + 60  # no token outlives its session
    plain = tokens.issue(sub="u", studies=[ST], now=T0).claims
    assert (plain.session, plain.session_expires_at) == (None, None)


@pytest.mark.parametrize(
    ("value", "detail"), [(0, "positive"), (True, "positive"), ("60", "positive"), (50_000, "maximum")]
)
def test_session_max_is_validated_and_capped(tokens: TokenService, value: object, detail: str) -> None:
    with pytest.raises(BadRequest, match=detail):
        tokens.issue(sub="u", studies=[ST], session_max=value, session_cap=43200)  # type: ignore[arg-type]


def test_renew_keeps_subject_scope_and_session_until_its_end(tokens: TokenService) -> None:
    first = tokens.issue(sub="u", studies=[ST], series=[SE], ttl=600, session_max=1000, session_cap=43200, now=T0)
    second = tokens.renew(first.token, set(), now=T0 + 300)
    c = second.claims
    assert (c.sub, c.scope, c.actions, c.session) == ("u", first.claims.scope, first.claims.actions, first.claims.jti)
    assert c.jti != first.claims.jti
    assert (c.issued_at, c.expires_at, c.session_expires_at) == (T0 + 300, T0 + 900, T0 + 1000)
    third = tokens.renew(second.token, set(), now=T0 + 800)
    assert third.claims.expires_at == T0 + 1000  # cut at the session's end
    with pytest.raises(TokenExpired, match="session expired"):
        tokens.renew(third.token, set(), now=T0 + 1000)
    with pytest.raises(TokenExpired, match="token expired"):
        tokens.renew(first.token, set(), now=T0 + 600)


def test_renew_refuses_revoked_sessions_and_plain_tokens(tokens: TokenService) -> None:
    first = tokens.issue(sub="u", studies=[ST], ttl=600, session_max=1000, session_cap=43200, now=T0)
    second = tokens.renew(first.token, set(), now=T0 + 10)
    with pytest.raises(TokenRevoked):
        tokens.renew(second.token, {first.claims.jti}, now=T0 + 20)
    with pytest.raises(TokenRevoked):
        tokens.renew(second.token, {second.claims.jti}, now=T0 + 20)
    with pytest.raises(BadRequest, match="no session"):
        tokens.renew(tokens.issue(sub="u", studies=[ST], now=T0).token, set(), now=T0 + 1)


def test_revoking_the_session_id_refuses_every_renewed_token(tokens: TokenService) -> None:
    revoked: set[str] = set()
    authorizer = Authorizer(tokens, (), lambda now: revoked, refresh=0, clock=lambda: T0 + 20)
    first = tokens.issue(sub="u", studies=[ST], ttl=600, session_max=1000, session_cap=43200, now=T0)
    renewed = tokens.renew(first.token, set(), now=T0 + 10)
    uri = f"/t/{renewed.token}/dicomweb/studies/{ST}/series"
    assert authorizer.decide("GET", uri).claims.session == first.claims.jti
    revoked.add(first.claims.jti)
    with pytest.raises(TokenRevoked):
        authorizer.decide("GET", uri)


@pytest.mark.parametrize(
    "extra",
    [
        {"si": "abc"},
        {"sx": T0},
        {"si": "a b", "sx": T0},
        {"si": "abc", "sx": "1"},
        {"si": "abc", "sx": 0},
        {"si": 5, "sx": T0},
        {"si": "abc", "sx": T0},  # ends when it was issued
        {"si": "abc", "sx": T0 + 367 * 86400},  # beyond any session
        {"si": "abc", "sx": 10**20},  # a date Python cannot show: renew answered 500
        {"si": "abc", "sx": 2**63},
    ],
)
def test_malformed_session_claims_are_refused(tokens: TokenService, extra: dict[str, object]) -> None:
    payload = {"v": 1, "s": "u", "st": [ST], "a": "r", "t": 60, "j": "abc", **extra}
    serializer = _TimestampSerializer(
        (KEY,), salt=SALTS["read"], signer_kwargs={"digest_method": hashlib.sha256}, now=T0
    )
    with pytest.raises(TokenInvalid, match="session"):
        tokens.verify(serializer.dumps(payload), "read", now=T0 + 1)
