"""Signed, time-limited, scoped tokens (itsdangerous ``URLSafeTimedSerializer``, HMAC-SHA256).

Claims are kept short so a one-study read token stays under ~250 characters: ``v`` version, ``s`` sub, ``st``
study UIDs, ``se`` series UIDs (optional, then exactly one study), ``a`` actions (``r``, ``w`` or ``rw``), ``t``
lifetime in seconds (added to the signed timestamp), ``j`` jti. The salt depends on the purpose: a token that may
write is signed with the write salt, so a read-only token can never authorise a write and a write-only token never a
read. Keys are a list, oldest first; the newest signs and all verify (rotation without downtime).

A session token (``session_max`` at issue) adds ``si``, the session id (the jti of the token the portal issued), and
``sx``, the session's hard end (epoch seconds). ``renew`` trades a valid one for a fresh token of the same session
until ``sx``; revoking the session id ends every token of the session.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadData, BadSignature, TimestampSigner, URLSafeTimedSerializer

from gateway.errors import BadRequest, InsufficientScope, TokenExpired, TokenInvalid, TokenRevoked, TokenUnrecognised
from gateway.numbers import json_integer
from gateway.scope import Scope
from gateway.uids import is_uid

VERSION = 1
SALTS = {"read": "dicomgw.read.v1", "write": "dicomgw.write.v1"}
MAX_TOKEN_LENGTH = 4096  # a longer value is refused before any work: no transport takes it
# A browser keeps a cookie whose name and value are at most 4,096 bytes together (RFC 6265 6.1; Chromium and Firefox
# drop a longer one without a word, and the WebView's next request had no token). The longest name the token travels
# under is gateway.auth.SECURE_COOKIE_NAME, "__Host-dicomgw_token": no token we sign is longer than this.
MAX_SIGNED_LENGTH = MAX_TOKEN_LENGTH - len("__Host-dicomgw_token")
# issue() leaves room for the session's renewals: a renewal's own jti, apart from its session id, takes 9-35
# characters more (measured over 8,000 renewals of near-limit scopes, studies and series sorted as here)
MAX_ISSUED_LENGTH = MAX_SIGNED_LENGTH - 64
ACTIONS = ("read", "write")
# what a token we sign is made of (base64url and dots): anything else is refused before itsdangerous, which takes
# a padded value ("...=") as the same token
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")
# sub travels in a response header to NGINX's audit log: printable ASCII only
_SUB = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True)
class Claims:
    sub: str
    scope: Scope | None  # None: unrestricted (the API key)
    actions: frozenset[str]
    issued_at: int
    expires_at: int
    jti: str
    session: str | None = None  # the session id (the first token's jti) of a renewable token
    session_expires_at: int | None = None  # the session's hard end: no renewal reaches past it

    def may(self, action: str) -> bool:
        return action in self.actions


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: Claims


def _clock() -> int:
    return int(time.time())


class _TimestampSerializer(URLSafeTimedSerializer):
    """Lets the issuer choose the signing time, so expiry tests freeze time instead of sleeping."""

    def __init__(self, *args: Any, now: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._now = now

    def make_signer(self, salt: Any = None) -> Any:
        signer = super().make_signer(salt)
        if self._now is not None and isinstance(signer, TimestampSigner):
            now = self._now
            signer.get_timestamp = lambda: now  # type: ignore[method-assign]
        return signer


class TokenService:
    """Issues and verifies tokens. Verification results are cached per token string (bounded), because a
    viewer sends the same token with every frame request; expiry is still checked on every call."""

    def __init__(
        self,
        signing_keys: tuple[str, ...],
        max_ttl: int,
        default_ttl: int = 900,
        verify_keys: tuple[str, ...] = (),
    ) -> None:
        """``signing_keys``: oldest first, the last one signs. ``verify_keys``: accepted, never used to sign — the
        first step of a rotation, so every node knows a key before any node signs with it."""
        if not signing_keys:
            raise ValueError("at least one signing key is required")
        # itsdangerous signs with the last key of the list and verifies with all of them
        self._keys = [*verify_keys, *signing_keys]
        self.max_ttl = max_ttl
        self.default_ttl = min(default_ttl, max_ttl)
        self._serializers = {
            purpose: URLSafeTimedSerializer(
                self._keys, salt=salt, signer_kwargs={"digest_method": hashlib.sha256}
            )
            for purpose, salt in SALTS.items()
        }
        self._cache: OrderedDict[str, tuple[Claims, str]] = OrderedDict()
        self._cache_size = 4096

    # -- issuing ---------------------------------------------------------------------------------------------
    def issue(
        self,
        *,
        sub: str,
        studies: list[str],
        series: list[str] | None = None,
        actions: list[str] | None = None,
        ttl: int | None = None,
        now: int | None = None,
        session_max: int | None = None,
        session_cap: int = 0,
    ) -> IssuedToken:
        """Validate the request (400 with a clear detail on anything odd) and sign a token. ``session_max``
        (seconds, at most ``session_cap``) makes it renewable until that long after now (``renew``)."""
        actions = ["read"] if actions is None else actions
        if not isinstance(sub, str) or not _SUB.fullmatch(sub):
            raise BadRequest("sub must be 1-128 printable ASCII characters without spaces")
        if not isinstance(studies, list) or not studies:
            raise BadRequest("studies must be a non-empty list of Study Instance UIDs")
        if len(studies) > 100:
            raise BadRequest("at most 100 studies per token")
        if not all(isinstance(uid, str) and is_uid(uid) for uid in studies):
            raise BadRequest("studies: every entry must be a valid DICOM UID")
        if series is not None:
            if not isinstance(series, list) or not series:
                raise BadRequest("series, when given, must be a non-empty list of Series Instance UIDs")
            if len(studies) != 1:
                raise BadRequest("a series-scoped token names exactly one study")
            if len(series) > 100 or not all(isinstance(uid, str) and is_uid(uid) for uid in series):
                raise BadRequest("series: every entry must be a valid DICOM UID (at most 100)")
        # every entry a string before the set: a list or an object among them is unhashable (a 500 before)
        if (
            not isinstance(actions, list)
            or not actions
            or not all(isinstance(action, str) for action in actions)
            or not set(actions) <= set(ACTIONS)
        ):
            raise BadRequest("actions must be a non-empty list drawn from 'read' and 'write'")
        # one rule for every integer field of a JSON body (gateway.numbers.json_integer): 900.0 is 900
        lifetime = json_integer(self.default_ttl if ttl is None else ttl)
        if lifetime is None or lifetime <= 0:
            raise BadRequest("ttl must be a positive integer number of seconds")
        ttl = lifetime
        if ttl > self.max_ttl:
            raise BadRequest(f"ttl exceeds the maximum of {self.max_ttl} seconds")
        jti = secrets.token_urlsafe(9)
        code = "".join(a[0] for a in ACTIONS if a in actions)
        # sorted as a renewal sorts them: the same order compresses to the same size
        payload: dict[str, Any] = {"v": VERSION, "s": sub, "st": sorted(studies), "a": code, "t": ttl, "j": jti}
        if series is not None:
            payload["se"] = sorted(series)
        issued = _clock() if now is None else now
        if session_max is not None:
            session_max = json_integer(session_max)
            if session_max is None or session_max <= 0:
                raise BadRequest("session_max must be a positive integer number of seconds")
            if session_max > session_cap:
                raise BadRequest(f"session_max exceeds the maximum of {session_cap} seconds")
            payload.update(si=jti, sx=issued + session_max, t=min(ttl, session_max))
        return self._sign(payload, issued, MAX_ISSUED_LENGTH)

    def renew(self, token: str, revoked: set[str], now: int | None = None) -> IssuedToken:
        """A fresh token of the same session: same subject, scope and actions, a new jti, the session id and end
        of the one presented, which must be valid now (not expired, not revoked, not past its session). Its
        lifetime is the presented token's, cut at the session's end."""
        now = _clock() if now is None else now
        claims = self.check_live(token, revoked, now)
        if claims.session is None or claims.session_expires_at is None:
            raise BadRequest("this token has no session to renew (issue it with session_max)")
        payload: dict[str, Any] = {
            "v": VERSION,
            "s": claims.sub,
            "st": sorted(claims.scope.studies) if claims.scope else [],
            "a": "".join(a[0] for a in ACTIONS if a in claims.actions),
            "t": min(claims.expires_at - claims.issued_at, claims.session_expires_at - now),
            "j": secrets.token_urlsafe(9),
            "si": claims.session,
            "sx": claims.session_expires_at,
        }
        if claims.scope is not None and claims.scope.series is not None:
            payload["se"] = sorted(claims.scope.series)
        return self._sign(payload, now, MAX_SIGNED_LENGTH)

    def _sign(self, payload: dict[str, Any], issued: int, limit: int) -> IssuedToken:
        purpose = "write" if "w" in payload["a"] else "read"
        serializer = _TimestampSerializer(
            self._keys, salt=SALTS[purpose], signer_kwargs={"digest_method": hashlib.sha256}, now=issued
        )
        token = serializer.dumps(payload)
        assert isinstance(token, str)
        if len(token) > limit:  # a browser would drop it as a cookie: never hand out a token that cannot work
            raise BadRequest(
                f"the scope is too large for one token ({len(token)} characters, at most {limit}): "
                "issue several tokens with fewer studies or series each"
            )
        return IssuedToken(token, decode_claims(payload, issued, self.max_ttl))

    # -- verifying -------------------------------------------------------------------------------------------
    def verify(self, token: str, purpose: str, now: int | None = None) -> Claims:
        """Claims of a token valid for ``purpose`` ("read" or "write"). Raises TokenUnrecognised when no key of
        ours signed it, TokenExpired, TokenInvalid (bad claims, issued in the future), or InsufficientScope (a token
        whose actions do not include ``purpose``).

        A read is allowed with a read token, or with a write token whose actions include read; a write only with
        a token signed with the write salt."""
        now = _clock() if now is None else now
        claims, signed_for = self._cached(token)
        if now >= claims.expires_at:
            raise TokenExpired("token expired")
        if now < claims.issued_at - 60:
            raise TokenInvalid("token issued in the future")
        if not claims.may(purpose) or (purpose == "write" and signed_for != "write"):
            raise InsufficientScope(f"token does not allow {purpose}")
        return claims

    def check_live(self, token: str, revoked: set[str], now: int) -> Claims:
        """The claims of a token of ours that is neither revoked (itself or its session) nor past its own or its
        session's end: TokenRevoked / TokenExpired first, whatever else is asked of the token (a dead token is a
        401 before a token without a session is a 400)."""
        claims, _ = self._cached(token)
        if claims.jti in revoked or (claims.session is not None and claims.session in revoked):
            raise TokenRevoked("token revoked")
        if claims.session_expires_at is not None and now >= claims.session_expires_at:
            raise TokenExpired("session expired")
        if now >= claims.expires_at:
            raise TokenExpired("token expired")
        return claims

    def claims_of(self, token: str) -> Claims:
        """The claims of a value one of our keys signed, whatever its expiry, purpose or revocation: whom a refusal
        refused (the access audit). Raises TokenUnrecognised or TokenInvalid as ``verify`` does."""
        return self._cached(token)[0]

    def signed_by_us(self, token: str) -> bool:
        """Whether ``token`` is a value one of our keys signed (sane claims or not): what an ``Authorization: Bearer``
        value must be to count as a token of this gateway (a portal's JWT, ``None`` or a padded token do not)."""
        try:
            self._cached(token)
        except TokenUnrecognised:
            return False
        except TokenInvalid:
            return True
        return True

    def _cached(self, token: str) -> tuple[Claims, str]:
        cached = self._cache.get(token)
        if cached is None:
            cached = self._verify_uncached(token)
            self._cache[token] = cached
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return cached

    def _verify_uncached(self, token: str) -> tuple[Claims, str]:
        """The claims and the purpose whose salt signed them. Both salts are tried, so a token of ours used for the
        wrong purpose is told apart from a value we never signed."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenUnrecognised("token too long")
        if token and not TOKEN_CHARS.fullmatch(token):
            # every read refuses such a value (auth.well_formed): the cookie exchange made a cookie of a padded token
            # ("...=", which itsdangerous decodes as the token) that no read then took, and renewal renewed it
            raise TokenUnrecognised("malformed token")
        for purpose, serializer in self._serializers.items():
            try:
                # No max_age: itsdangerous would measure age with the wall clock and refuse any clock skew;
                # verify() checks expiry against ``now`` with the lifetime already capped at max_ttl.
                payload, issued = serializer.loads(token, return_timestamp=True)
            except BadSignature:
                continue
            except BadData:  # signed by us, yet not base64 / zlib / JSON: a refusal, never a 5xx
                raise TokenInvalid("malformed token claims: not JSON") from None
            except (ArithmeticError, ValueError, OSError):  # a signed time that is no date
                raise TokenInvalid("malformed token timestamp") from None
            return decode_claims(payload, int(issued.timestamp()), self.max_ttl), purpose
        raise TokenUnrecognised("token signature does not verify")


_CLAIM_NAMES = frozenset({"v", "s", "st", "se", "a", "t", "j", "si", "sx"})
_ACTION_CODES = {"r": frozenset({"read"}), "w": frozenset({"write"}), "rw": frozenset({"read", "write"})}
# What a jti is (``secrets.token_urlsafe``): ASCII only, also where an admin names one to revoke
JTI = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_MAX_UIDS = 100
# A session's end lies after the token's issue and within a year of it (``DICOMGW_SESSION_MAX`` caps it far lower).
# A signed end beyond that (a hand-signed token, an old release) would overflow the date it is shown as: a 500.
_SESSION_SPAN = 366 * 86400


def decode_claims(payload: object, issued: int, max_ttl: int) -> Claims:
    """Strict decoding of signed claims: exactly the shapes ``issue`` writes, else TokenInvalid naming the claim.
    A signature only proves who wrote the claims, not that they are sane (an old release, a hand-signed test
    token): ``sub`` and ``jti`` go out in response headers and the audit log, UIDs into SQL, ``t`` into sums."""
    if not isinstance(payload, dict):
        raise TokenInvalid("malformed token claims: not an object")
    unknown = payload.keys() - _CLAIM_NAMES
    if unknown:
        raise TokenInvalid("malformed token claims: unknown claim")
    version = payload.get("v")
    if type(version) is not int or version != VERSION:  # type(): True == 1 but is no version
        raise TokenInvalid("unsupported token version")
    sub = payload.get("s")
    if not isinstance(sub, str) or not _SUB.fullmatch(sub):
        raise TokenInvalid("malformed token claims: sub")
    studies = _uid_list(payload.get("st"), "studies")
    series = None
    if "se" in payload:
        series = _uid_list(payload["se"], "series")
        if len(studies) != 1:
            raise TokenInvalid("malformed token claims: a series scope names exactly one study")
    actions = _ACTION_CODES.get(payload["a"]) if isinstance(payload.get("a"), str) else None
    if actions is None:
        raise TokenInvalid("malformed token claims: actions")
    ttl = payload.get("t")
    if type(ttl) is not int or ttl <= 0:
        raise TokenInvalid("malformed token claims: lifetime")
    jti = payload.get("j")
    if not isinstance(jti, str) or not JTI.fullmatch(jti):
        raise TokenInvalid("malformed token claims: jti")
    session, session_end = payload.get("si"), payload.get("sx")
    if (session is None) != (session_end is None):
        raise TokenInvalid("malformed token claims: session")
    if session is not None and (not isinstance(session, str) or not JTI.fullmatch(session)):
        raise TokenInvalid("malformed token claims: session")
    if session_end is not None and (type(session_end) is not int or not issued < session_end <= issued + _SESSION_SPAN):
        raise TokenInvalid("malformed token claims: session")
    return Claims(
        sub=sub,
        scope=Scope(studies, series),
        actions=actions,
        issued_at=issued,
        expires_at=issued + min(ttl, max_ttl),
        jti=jti,
        session=session if isinstance(session, str) else None,
        session_expires_at=session_end if type(session_end) is int else None,
    )


def _uid_list(value: object, name: str) -> frozenset[str]:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= _MAX_UIDS
        or not all(isinstance(uid, str) and is_uid(uid) for uid in value)
    ):
        raise TokenInvalid(f"malformed token claims: {name}")
    return frozenset(value)
