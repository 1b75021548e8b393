"""The decision behind NGINX ``auth_request``: is this method on this URI allowed for the token it carries?

NGINX passes the raw ``X-Original-URI`` (``$request_uri``) and the client's Cookie and Authorization headers; this
module finds the credentials (path prefix ``/t/{token}/``, ``?token=``, ``Authorization: Bearer`` token or API key,
the ``dicomgw_token`` cookie), verifies each, and matches the target (``gateway.dicomweb.paths`` parses the URL,
refusing anything ambiguous) against their scope. It is pure logic with no Flask, so the fast WSGI path and tests
call it directly.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import parse_qs

from gateway.config import ApiKey
from gateway.dicomweb.paths import Target, check_wado_request_type, parse_target, split_token, wado_object
from gateway.errors import (
    GatewayError,
    InsufficientScope,
    InvalidPath,
    OutOfScope,
    TokenInvalid,
    TokenMissing,
    TokenRevoked,
    TokenUnrecognised,
)
from gateway.scope import Scope
from gateway.tokens import MAX_TOKEN_LENGTH, TOKEN_CHARS, Claims, TokenService

# The session cookie's name: ``__Host-`` over TLS (the browser then takes it only from a secure origin, for this host
# and path "/"), the plain name otherwise. Only the name of the deployment's mode is read: with both accepted, an
# unprefixed cookie planted by a sibling subdomain or over plain HTTP was used once the real one expired.
SECURE_COOKIE_NAME, PLAIN_COOKIE_NAME = "__Host-dicomgw_token", "dicomgw_token"
READ_METHODS = frozenset({"GET", "HEAD"})
API_KEY_JTI = "api-key"  # the jti of an API key's claims (no token id: the label names the caller)
WRITE_METHODS = frozenset({"POST"})
DELETE_METHODS = frozenset({"DELETE"})  # a write that only the API key may make
# Deletions stay tombstones this long: longer than NGINX keeps a read plan (wado.STABLE_PLAN_SECONDS, 10 min), so
# a plan cached before a delete is never looked up again under the key it was cached with.
TOMBSTONE_SECONDS = 1800
T = TypeVar("T")


@dataclass(frozen=True)
class Decision:
    claims: Claims
    target: Target
    via: str = ""  # the transports whose credentials decided, space-separated (for the access audit)
    located: str = ""  # the study a WADO-URI query names, or where the object it names alone is (``_wado_study``)

    @property
    def study(self) -> str:
        """The study the request reads, for the access audit (``X-Dgw-Study``) and the plan cache's key."""
        return self.target.study or self.located


def query_token(query: str) -> str | None:
    """The raw value of ``token=`` in the query, as NGINX's ``$dgw_query_token`` (part of the decision-cache key)
    reads it: never percent-decoded, so ``%74oken=...`` is no token here either and cannot reuse another request's
    cached decision. The same token given twice is that token (a client holding it in its session's parameters,
    requests' ``Session.params``, adds it again to a RetrieveURL or BulkDataURI that already ends with it); two
    different ones are refused: which one the request meant is anyone's guess."""
    if "token=" not in query:  # the common case: no parsing at all
        return None
    found = {item[6:] for item in query.split("&") if item.startswith("token=")}
    if len(found) > 1:
        raise TokenInvalid("more than one token in the query")
    return found.pop() if found else None


def cookie_name(tls: bool) -> str:
    """The session cookie's name for a deployment served over TLS (``DICOMGW_TLS``) or not."""
    return SECURE_COOKIE_NAME if tls else PLAIN_COOKIE_NAME


def cookie_token(header: str, name: str = PLAIN_COOKIE_NAME) -> str | None:
    """The value of the first cookie called ``name`` (``cookie_name``); any other cookie is ignored."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value.strip('"')
    return None


def bearer_value(authorization: str) -> str:
    """``Authorization: Bearer <value>`` → value; ``""`` for any other scheme."""
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def well_formed(token: str) -> bool:
    return len(token) <= MAX_TOKEN_LENGTH and TOKEN_CHARS.fullmatch(token) is not None


# Where a stored instance is, by its SOP Instance UID: (study, series), or None when nothing is stored under it.
Locate = Callable[[str], tuple[str, str] | None]


def check_scope(scope: Scope, method: str, target: Target, locate: Locate | None = None) -> None:
    """Raise OutOfScope unless ``target`` lies inside ``scope``. QIDO answers are filtered later, so search paths
    (``/studies``, ``/series``, ``/instances`` and the study-level ``series``/``instances`` lists) pass here when
    the study (if any) is touched by the scope. ``locate`` finds a WADO-URI object named by its SOP Instance UID
    alone (without it such a request is refused)."""
    if target.study is None:
        if target.rest in ("studies", "series", "instances", "wado", ""):
            if target.rest == "wado":
                _check_wado(scope, target, locate)
            return
        raise OutOfScope("path outside the token's scope")
    if target.series is None:
        if not scope.touches_study(target.study):
            raise OutOfScope("study outside the token's scope")
        if method in READ_METHODS and target.rest in ("series", "instances"):
            return  # QIDO inside the study: filtered to the visible series
        if method in WRITE_METHODS and target.rest == "":
            # STOW to the study (PS3.18 10.5.1): each instance is checked against the scope as it is stored (one
            # outside fails alone), as a STOW to /studies is; a series token was refused here as a whole
            return
        if not scope.allows_study(target.study):
            raise OutOfScope("the token reaches only some series of this study")
        return
    if not scope.allows_series(target.study, target.series):
        raise OutOfScope("series outside the token's scope")


def _check_wado(scope: Scope, target: Target, locate: Locate | None) -> None:
    """The series a WADO-URI query names must be in scope. NGINX asks before the view parses anything, so the
    query is read here as the view reads it (``paths.wado_object``). An object named by its SOP Instance UID alone
    is judged by where it is stored; one stored nowhere gets the answer of one stored outside the scope, so a
    token cannot learn which UIDs exist beyond what it may read. A named study and series decide on their own, as
    before: a malformed objectUID beside them stays the view's 400. A query the view would refuse before it reads
    anything (no ``requestType`` of WADO, no or two objectUIDs, a value that is no UID) is that view's 400 here too
    (``BadRequest``, which NGINX answers as such): a 403 ``out_of_scope`` told the client its token was refused,
    where the API key got the 400 naming the mistake; it reveals nothing a token may not know."""
    params = parse_qs(target.query)
    check_wado_request_type(params)
    named = wado_object({name: params.get(name, []) for name in ("studyUID", "seriesUID")})
    study, series = named.study, named.series
    if study is None or series is None:
        sop = wado_object(params).required_sop()
        found = locate(sop) if locate is not None else None
        if found is None:
            raise OutOfScope("object outside the token's scope")
        # where it is stored: a study or series also named and not its own is the view's 404, after this
        study, series = found
    if not scope.allows_series(study, series):
        raise OutOfScope("object outside the token's scope")


class Reloaded(Generic[T]):
    """A value loaded from the catalog at most every ``refresh`` seconds, on the first use after that: what every
    node's revocation list and deletion tombstones are, so a change on one node holds on all within ``refresh``."""

    def __init__(self, load: Callable[[int], T], empty: T, refresh: float, clock: Callable[[], float]) -> None:
        self._load = load
        self._value = empty
        self._refresh = refresh
        self._clock = clock
        self._loaded_at = float("-inf")

    def get(self) -> T:
        now = self._clock()
        if now - self._loaded_at >= self._refresh:
            self._value = self._load(int(now))
            self._loaded_at = now
        return self._value

    def forget(self) -> None:
        self._loaded_at = float("-inf")


class Authorizer:
    """Token verification + revocation + scope. Revocations come from the catalog, reloaded at most every
    ``refresh`` seconds, so a revoke on any node takes effect everywhere within a few seconds. Recent deletions
    (tombstones) are reloaded the same way: ``generation(study)`` changes when something of the study is deleted,
    and NGINX keys cached read plans on it, so no node reuses a plan made before the delete."""

    def __init__(
        self,
        tokens: TokenService,
        api_keys: tuple[ApiKey, ...],
        load_revoked: Callable[[int], set[str]],
        refresh: float = 2.0,
        clock: Callable[[], float] = time.time,
        load_generations: Callable[[int], dict[str, int]] | None = None,
        cookie: str = PLAIN_COOKIE_NAME,
        locate: Locate | None = None,
    ) -> None:
        self.tokens = tokens
        self._locate = locate  # a WADO-URI object named by its SOP Instance UID alone (``check_scope``)
        self.cookie = cookie  # the one cookie name read (``cookie_name``)
        self._api_keys = tuple((key.secret.encode(), key.label) for key in api_keys)
        self._clock = clock
        self._revoked: Reloaded[set[str]] = Reloaded(load_revoked, set(), refresh, clock)
        self._generations: Reloaded[dict[str, int]] | None = None
        if load_generations is not None:
            tombstones = load_generations  # those of the last TOMBSTONE_SECONDS
            self._generations = Reloaded(lambda now: tombstones(now - TOMBSTONE_SECONDS), {}, refresh, clock)

    def generation(self, study: str) -> int:
        """The id of the study's newest recent deletion (0: none): part of NGINX's plan-cache key."""
        if self._generations is None or not study:
            return 0
        return self._generations.get().get(study, 0)

    def forget_deletions(self) -> None:
        """Force a reload on the next check (this node just deleted something)."""
        if self._generations is not None:
            self._generations.forget()

    def revoked(self) -> set[str]:
        return self._revoked.get()

    def forget_revocations(self) -> None:
        """Force a reload on the next check (this node just revoked something)."""
        self._revoked.forget()

    def is_api_key(self, authorization: str) -> bool:
        """Constant-time check of an ``Authorization: Bearer <API key>`` header."""
        return self.api_key_label(authorization) is not None

    def api_key_label(self, authorization: str) -> str | None:
        """The label of the API key in an ``Authorization: Bearer`` header (what audit records name), or None."""
        return self._key_label(bearer_value(authorization))

    def _key_label(self, presented: str) -> str | None:
        if not presented:
            return None
        candidate = presented.encode()
        # compare against every key so the time taken does not tell which one (or whether any) matched
        matches = [label for key, label in self._api_keys if hmac.compare_digest(candidate, key)]
        return matches[0] if matches else None

    def decide(
        self,
        method: str,
        raw_uri: str,
        cookie_header: str = "",
        authorization: str = "",
        now: int | None = None,
    ) -> Decision:
        """The README's rule (Tokens, "Transports"): every explicit credential present (path, query,
        Authorization) must allow the request on its own, and the request gets what all of them allow; the cookie
        counts only when there is none; an Authorization value that is neither an API key nor a token we signed
        is not a credential of ours and is ignored (a refusal when nothing else is presented)."""
        if method not in READ_METHODS and method not in WRITE_METHODS and method not in DELETE_METHODS:
            raise OutOfScope(f"method {method} is not allowed")
        now_s = int(self._clock()) if now is None else now
        if "#" in raw_uri:
            # No request-target holds a fragment (RFC 9112 3.2). NGINX refuses one first; here as well because this
            # reads the raw URI whole while the view's query (gunicorn's) ends at "#": the two would judge and serve
            # different objects
            raise InvalidPath("a request target holds no fragment (#)")
        path_token, rest = split_token(raw_uri)
        path, _, query = rest.partition("?")
        target = parse_target(path, query)
        # every token of ours presented, allowed or not: a refusal names them for the access audit
        presented: list[tuple[str, Claims]] = []
        try:
            granted, via = self._granted(
                method, target, path_token, (cookie_header, authorization), now_s, presented
            )
        except GatewayError as error:
            if error.status in (401, 403):
                # who was refused and the study asked for (a WADO-URI's, where its object is: an encoded
                # %73tudyUID= hid it from the logged query), for the access audit (``to_auth_answer``)
                error.refused = (*_named(presented), self._refused_study(target))
            raise
        claims = granted[0] if len(granted) == 1 else intersect(granted)
        return Decision(claims, target, " ".join(via), self._wado_study(target))

    def _granted(
        self,
        method: str,
        target: Target,
        path_token: str | None,
        headers: tuple[str, str],
        now: int,
        presented: list[tuple[str, Claims]],
    ) -> tuple[list[Claims], list[str]]:
        """The claims of every credential that decides (``decide``'s rule) and their transports, or the refusal.
        ``headers``: the Cookie and Authorization values; ``presented`` collects the tokens of ours met."""
        cookie_header, authorization = headers
        purpose = "read" if method in READ_METHODS else "write"
        granted: list[Claims] = []
        via: list[str] = []
        for transport, token in (("path", path_token), ("query", query_token(target.query))):
            if token:  # an empty value carries nothing: absent
                if not well_formed(token):
                    raise TokenInvalid("malformed token")
                granted.append(self._check(token, purpose, method, target, now, (transport, presented)))
                via.append(transport)
        if authorization:
            bearer = self._bearer(bearer_value(authorization), purpose, method, target, now, presented)
            if bearer is not None:
                granted.append(bearer)
                via.append("api-key" if bearer.jti == API_KEY_JTI else "bearer")
        if not granted and cookie_header:
            # Ambient: the browser sends it whatever the page meant, so it never vetoes nor joins an explicit one.
            token = cookie_token(cookie_header, self.cookie)
            if token:
                if not well_formed(token):
                    raise TokenInvalid("malformed token")
                granted.append(self._check(token, purpose, method, target, now, ("cookie", presented)))
                via.append("cookie")
        if not granted:
            if authorization:
                raise TokenInvalid("the Authorization header holds neither an API key nor a token of this gateway")
            raise TokenMissing("no token in the path, the query, the Authorization header or the cookie")
        return granted, via

    def _refused_study(self, target: Target) -> str:
        """The study a refused request asked for: its path's, or its WADO-URI query's (``_wado_study``); ``""``
        when the catalog cannot say now (the refusal stands, the audit row names no study)."""
        try:
            return target.study or self._wado_study(target)
        except GatewayError:
            return ""

    def _wado_study(self, target: Target) -> str:
        """The study of a WADO-URI request, for the access audit: the one its query names (decoded, as the view
        reads it), else where the object its SOP Instance UID names is stored. The audit cannot take it from the
        logged query alone, which shows a value only under a plain ``studyUID`` among its first parameters
        (``%73tudyUID=`` or 32 parameters before it hid the study of a read). ``""`` for any other request."""
        if target.rest != "wado" or target.study is not None:
            return ""
        try:
            named = wado_object(parse_qs(target.query))
        except GatewayError:
            return ""
        if named.study is not None:
            return named.study
        found = None if named.sop is None or self._locate is None else self._locate(named.sop)
        return "" if found is None else found[0]

    def _bearer(
        self, value: str, purpose: str, method: str, target: Target, now: int, presented: list[tuple[str, Claims]]
    ) -> Claims | None:
        """The credential in an ``Authorization: Bearer`` value, or None when it is not one of ours."""
        label = self._key_label(value)
        if label is not None:
            return api_key_claims(now, label)
        if not value or not well_formed(value):
            return None
        try:
            return self._check(value, purpose, method, target, now, ("bearer", presented))
        except TokenUnrecognised:  # nothing we signed (a JWT of the portal, "None"): not ours to judge
            return None

    def _check(
        self,
        token: str,
        purpose: str,
        method: str,
        target: Target,
        now: int,
        record: tuple[str, list[tuple[str, Claims]]],
    ) -> Claims:
        """The claims of ``token`` if it allows the request; ``record``: its transport, and the list it joins
        once its signature holds (before expiry, revocation, purpose and scope are judged)."""
        transport, presented = record
        presented.append((transport, self.tokens.claims_of(token)))
        try:
            claims = self.tokens.verify(token, purpose, now=now)
        except InsufficientScope:
            # revoked is the answer whatever the token is asked for: a read token revoked, then sent with a STOW or
            # a DELETE, was told it lacks write, which hid the revocation from the client and the access trail
            self._refuse_revoked(self.tokens.claims_of(token))
            raise
        self._refuse_revoked(claims)
        if method in DELETE_METHODS:
            # an action no token holds, whatever its scope or transport (RFC 6750 3.1's insufficient_scope, as a
            # read token's STOW): a token whose scope did not cover the target got "out_of_scope" in the
            # Authorization header or the cookie, as if a wider token could delete it
            raise InsufficientScope("only the API key may delete")
        if claims.scope is not None:
            check_scope(claims.scope, method, target, self._locate)
        return claims

    def _refuse_revoked(self, claims: Claims) -> None:
        revoked = self.revoked()
        # a renewed token carries its session's id: revoking the session's first token ends all of them
        if claims.jti in revoked or (claims.session is not None and claims.session in revoked):
            raise TokenRevoked("token revoked")


def decision_lifetime(expires_at: int, now: int, cached_for: int) -> int | None:
    """How long NGINX may keep a decision allowing a credential that expires at ``expires_at`` (``X-Accel-Expires``),
    or None when its own ``DICOMGW_AUTH_CACHE_SECONDS`` (``cached_for``) ends first. Kept for that long, a decision
    made in a token's last seconds let frames, bulkdata and metadata be read with it up to that long after its
    expiry. NGINX counts whole seconds and may read the next one when it stores the decision: two seconds spare
    (0: not kept at all)."""
    left = expires_at - now - 2
    return None if left >= cached_for else max(left, 0)


def _named(presented: list[tuple[str, Claims]]) -> tuple[str, str, str]:
    """The subjects, token ids and transports of the tokens a refused request presented, as the audit headers name
    an allowed request's (space-separated)."""
    return (
        " ".join(dict.fromkeys(claims.sub for _, claims in presented)),
        " ".join(dict.fromkeys(claims.jti for _, claims in presented)),
        " ".join(transport for transport, _ in presented),
    )


def intersect(granted: list[Claims]) -> Claims:
    """What every one of several credentials allows: the narrowest scope, the common actions, the earliest expiry.
    The audit headers name them all (``sub`` and ``jti`` hold no spaces, so a space separates them)."""
    scope: Scope | None = None
    for claims in granted:
        if claims.scope is not None:
            scope = claims.scope if scope is None else scope.intersect(claims.scope)
    return Claims(
        sub=" ".join(dict.fromkeys(claims.sub for claims in granted)),
        scope=scope,
        actions=frozenset.intersection(*(claims.actions for claims in granted)),
        issued_at=max(claims.issued_at for claims in granted),
        expires_at=min(claims.expires_at for claims in granted),
        jti=" ".join(dict.fromkeys(claims.jti for claims in granted)),
    )


API_KEY_JTI = "api-key"


def api_key_claims(now: int, label: str = "api-key") -> Claims:
    """The credential of a server holding an API key: everything, read and write; ``sub`` is the key's label."""
    return Claims(label, None, frozenset({"read", "write"}), now, now + 60, API_KEY_JTI)
