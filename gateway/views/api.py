"""Server-to-server API (API key): issue and revoke tokens, admin calls; and the WebView cookie exchange."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from flask import Blueprint, Response, jsonify, redirect, request
from werkzeug.urls import iri_to_uri
from werkzeug.wrappers import Response as WerkzeugResponse

from gateway.auth import bearer_value, cookie_name, cookie_token
from gateway.catalog.deletions import Patient
from gateway.errors import BadRequest, CookieNotKept, InvalidPath, NotFound, TokenInvalid, TokenMissing, TokenRevoked
from gateway.lifecycle import check_reason, summary
from gateway.numbers import parse_int
from gateway.phi.deidentify import identifier_digest
from gateway.tokens import JTI, Claims
from gateway.uids import check_uid
from gateway.views.common import (
    check_params,
    json_body,
    no_content,
    public_base,
    refuse_repeats,
    require_api_key,
    services,
)

bp = Blueprint("api", __name__, url_prefix="/api/v1")

TOKEN_FIELDS = {"sub", "studies", "series", "actions", "ttl", "session_max"}


def token_urls(token: str, study: str, base: str) -> dict[str, str]:
    return {
        "dicomweb_root": f"{base}/t/{token}/dicomweb",
        "viewer_url": f"{base}/viewer/#study={quote(study)}&token={token}",
    }


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@bp.post("/tokens")
def issue_token() -> tuple[Response, int]:
    require_api_key()
    body = json_body()
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - TOKEN_FIELDS)
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(unknown)}")
    if "sub" not in body:
        raise BadRequest("sub is required")
    srv = services()
    issued = srv.tokens.issue(
        sub=body["sub"],
        studies=body.get("studies"),  # type: ignore[arg-type]  # validated inside
        series=body.get("series"),
        actions=body.get("actions"),
        ttl=body.get("ttl"),
        session_max=body.get("session_max"),
        session_cap=srv.settings.session_max,
    )
    # who could read what, until when, issued by which key: one insert, never the token (README, "Audit trail");
    # a catalog that cannot record it is a 503 and no token (fail closed)
    audit_token("issued", issued.claims, api_key_label())
    payload: dict[str, Any] = {
        "token": issued.token,
        "expires_at": iso(issued.claims.expires_at),
        "jti": issued.claims.jti,
        **session_fields(issued.claims),
        **token_urls(issued.token, body["studies"][0], public_base()),
    }
    response = jsonify(payload)
    # a credential: no cache between the portal and the gateway keeps it (as the renewal's; RFC 6749 5.1)
    response.headers["Cache-Control"] = "no-store"
    return response, 201


def session_fields(claims: Claims) -> dict[str, Any]:
    if claims.session_expires_at is None:
        return {}
    return {"session": claims.session, "session_expires_at": iso(claims.session_expires_at)}


# what a renewal's body may be (README, HTTP API)
RENEW_BODY = (
    'the body must be {"token": "<the current token>"}, or {} to renew the session cookie (either may add '
    '"if_session": true)'
)


def renewal_token(body: dict[str, Any], srv: Any) -> tuple[str, bool]:
    """The token a renewal renews, and whether it came from the session cookie (whose renewal goes back into it).
    The body's ``token`` first, then an ``Authorization: Bearer`` token of ours (what mobile apps' HTTP clients,
    OkHttp and NSURLSession, send with every call), then the cookie, which counts only when no explicit token is
    there (as for a read: ``Authorizer.decide``). The body and the header naming two different tokens is a 400: which
    one the client meant to renew is not ours to guess. An ``Authorization`` value that is an API key or not a token
    of ours (a portal's JWT, ``Bearer None``) is not a token to renew, and is ignored as a read ignores it."""
    authorization = request.headers.get("Authorization", "")
    presented = bearer_value(authorization)
    api_key = bool(presented) and srv.authorizer.is_api_key(authorization)
    bearer = presented if presented and not api_key and srv.tokens.signed_by_us(presented) else ""
    if "token" in body:
        token = body["token"]
        if not isinstance(token, str):
            raise BadRequest(RENEW_BODY)
        if bearer and token and bearer != token:
            raise BadRequest(
                "the body and the Authorization header hold two different tokens: send the one to renew, in either"
            )
        if not token:
            raise TokenMissing("no token to renew")
        return token, False
    if bearer:
        return bearer, False
    token = cookie_token(request.headers.get("Cookie", ""), srv.authorizer.cookie)
    if token:
        return token, True
    if presented and not api_key:
        raise TokenInvalid("the Authorization header holds neither an API key nor a token of this gateway")
    raise TokenMissing("no token to renew")


@bp.post("/tokens/renew")
def renew_token() -> Response | tuple[Response, int]:
    """A viewer's renewal: ``{"token": ...}`` in the body (never in a URL, which logs keep), a fresh token of the
    same session in the answer, until the session's end or its revocation (401 then, as for a read). ``{}`` renews
    the session cookie instead (the WebView flow, whose page holds no token): the fresh token goes into the cookie,
    never into the body. Only a JSON body is read, so a cross-site form cannot post one without a CORS preflight."""
    body = json_body()
    if not isinstance(body, dict) or not set(body) <= {"token", "if_session"}:
        raise BadRequest(RENEW_BODY)
    # "if_session": true asks "renew if this token has a session": a 204 for one without instead of the 400 (the
    # bundled viewer asks so on load; a 400 there was an error in every browser console)
    if body.get("if_session", True) is not True:
        raise BadRequest("if_session must be true when given")
    srv = services()
    token, in_cookie = renewal_token(body, srv)
    now = int(time.time())
    revoked = srv.authorizer.revoked()
    # an expired or revoked token is told so (401), session or not: a 204 or 400 left a viewer renewing a dead link
    claims = srv.tokens.check_live(token, revoked, now)
    if body.get("if_session") and claims.session is None:
        return no_content()
    issued = srv.tokens.renew(token, revoked, now=now)
    # a renewed token reads as the first did: its jti, seen in the access trail, leads to its session's issuance (it
    # had no row); no API key asked, its holder did (api_key empty)
    audit_token("renewed", issued.claims, "")
    payload = {
        "expires_at": iso(issued.claims.expires_at),
        "expires_in": issued.claims.expires_at - now,
        "jti": issued.claims.jti,
        **session_fields(issued.claims),
        "session_expires_in": (issued.claims.session_expires_at or now) - now,
    }
    if not in_cookie:
        payload = {"token": issued.token, **payload}
    response = jsonify(payload)
    response.headers["Cache-Control"] = "no-store"
    if in_cookie:
        set_session_cookie(response, issued.token, issued.claims)
    return response, 200


@bp.post("/tokens/<jti>/revoke")
def revoke_token(jti: str) -> Response:
    require_api_key()
    # ASCII only, as tokens.py writes a jti: str.isalnum() took "ÿ" (a raw 0xFF byte), a Cyrillic "а" pasted for a
    # Latin one or fullwidth digits, and answered 204 for a revocation that matches no token
    if not JTI.fullmatch(jti):
        raise BadRequest("malformed jti")
    srv = services()
    # The jti alone does not tell the token's expiry: keep the revocation for the longest possible lifetime, a
    # session's included (a session id is its first token's jti).
    longest = max(srv.settings.token_max_ttl, srv.settings.session_max)
    now = int(time.time())
    kept_until = now + longest + 60
    srv.catalog.revoke(jti, kept_until)
    srv.authorizer.forget_revocations()
    srv.catalog.add_token_event("revoked", api_key=api_key_label(), jti=jti, created_at=now, expires_at=kept_until)
    return no_content()


def audit_token(event: str, claims: Claims, api_key: str) -> None:
    """The token audit's row of a token made now (``issued``, ``renewed``): its subject, scope and lifetimes."""
    services().catalog.add_token_event(
        event,
        api_key=api_key,
        jti=claims.jti,
        created_at=claims.issued_at,
        sub=claims.sub,
        studies=sorted(claims.scope.studies) if claims.scope else None,
        series=sorted(claims.scope.series) if claims.scope and claims.scope.series is not None else None,
        actions=sorted(claims.actions),
        expires_at=claims.expires_at,
        session=claims.session,
        session_expires_at=claims.session_expires_at,
    )


def api_key_label() -> str:
    """The label of the request's API key, as audit records name it (never the key)."""
    return services().authorizer.api_key_label(request.headers.get("Authorization", "")) or "api-key"


MAX_NEXT_BYTES = 2048  # of ``next`` as sent in Location (URL-encoded): with the cookie, well inside NGINX's 16 KB


def safe_next(value: str) -> str:
    """A same-origin relative path: no scheme, no authority (``//``), no backslash tricks, no control chars, and
    at most ``MAX_NEXT_BYTES`` once URL-encoded as Location sends it (a longer one, beside a token of up to 4,076
    characters in Set-Cookie, made headers NGINX refused to pass on: a 503). None given: the viewer, under the
    path ``DICOMGW_PUBLIC_URL`` publishes the gateway at (``https://portal.example/pacs`` → ``/pacs/viewer/``)."""
    if not value:
        return urlsplit(services().settings.public_url).path + "/viewer/"
    if (
        not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
        or "%2f" in value.lower()
        or "%5c" in value.lower()
    ):
        raise InvalidPath("next must be a relative path on this site")
    if len(iri_to_uri(value)) > MAX_NEXT_BYTES:
        raise InvalidPath(f"next must be at most {MAX_NEXT_BYTES} bytes long (URL-encoded)")
    return value


COOKIE_AFTER_END_SECONDS = 60  # how long the session cookie outlives its token (``set_session_cookie``)


@bp.get("/session")
def session() -> WerkzeugResponse:
    """Trade a URL token for a first-party HttpOnly cookie (mobile WebViews), then 303 to ``next``."""
    # two tokens (or two targets) name no one answer: the first alone was taken, in silence
    refuse_repeats(request.args)
    token = request.args.get("token", "")
    if not token:
        raise TokenMissing("token query parameter is required")
    target = safe_next(request.args.get("next", ""))
    srv = services()
    claims = srv.tokens.verify(token, "read")
    revoked = srv.authorizer.revoked()
    if claims.jti in revoked or (claims.session is not None and claims.session in revoked):
        raise TokenRevoked("token revoked")
    if srv.settings.cookie_samesite != "None" and cross_site_frame():
        raise CookieNotKept(
            f"a cross-site iframe does not keep this gateway's SameSite={srv.settings.cookie_samesite} cookie, so the "
            "page would have no credential: embed /viewer/#study=...&token=... instead, or serve the gateway over TLS "
            "with DICOMGW_COOKIE_SAMESITE=None"
        )
    response = redirect(target, code=303)
    # a redirect needs no body: Werkzeug's was a small "Redirecting..." HTML page, text/html where JSON is the rule
    response.set_data(b"")
    del response.headers["Content-Type"]
    set_session_cookie(response, token, claims)
    response.headers["Cache-Control"] = "no-store"
    return response


def cross_site_frame() -> bool:
    """Whether the browser loads this answer into a frame of another site (Fetch Metadata: every current browser
    sends it). There a SameSite=Lax or Strict cookie is dropped on arrival, and the viewer the exchange redirects to
    said "Open the study again from your portal", which the portal could only do again, to the same end."""
    return request.headers.get("Sec-Fetch-Site") == "cross-site" and request.headers.get("Sec-Fetch-Dest") in (
        "iframe",
        "frame",
    )


def set_session_cookie(response: WerkzeugResponse, token: str, claims: Claims) -> None:
    """The HttpOnly session cookie holding ``token``. It outlives the token (or its session) by a minute: a renewal
    or a read just after the end still presents it and is told ``token_expired``, not ``token_missing``, which the
    viewer can only show as a withdrawn link. An expired token opens nothing."""
    settings = services().settings
    end = claims.session_expires_at or claims.expires_at
    partitioned = settings.cookie_samesite == "None"
    if partitioned:
        # an unpartitioned cookie of the same name (set before cookies were partitioned) is a cookie of its own
        # to a browser, sent with this one and before it: the gateway reads the first, so it shadowed every new one
        response.delete_cookie(
            cookie_name(settings.tls), path="/", secure=settings.tls, httponly=True, samesite=settings.cookie_samesite
        )
    response.set_cookie(
        cookie_name(settings.tls),
        token,
        max_age=max(0, end - int(time.time())) + COOKIE_AFTER_END_SECONDS,
        path="/",
        secure=settings.tls,
        httponly=True,
        samesite=settings.cookie_samesite,
        # SameSite=None is for a portal's cross-site iframe, where browsers that block third-party cookies (Chromium
        # by default, Safari, Firefox's strict mode) drop an unpartitioned cookie: the viewer then had no credential.
        # Partitioned (CHIPS) keeps it, for this gateway under that portal's site only.
        partitioned=partitioned,
    )


# -- admin: quarantine and audit (API key) -------------------------------------------------------------------


@bp.get("/admin/quarantine")
def list_quarantine() -> Response:
    """The held files, newest first. No parameter is taken: ``?limit=5`` (what the audit and access listings take)
    was read by no one and answered with every held file; now a 400 naming it, as those listings answer."""
    require_api_key()
    check_params(request.args, frozenset())
    response = jsonify(items=services().catalog.list_quarantine())
    response.headers["Cache-Control"] = "no-store"  # UIDs, who uploaded what and why it is held: never cached
    return response


@bp.post("/admin/quarantine/<path:key>/release")
def release_quarantine(key: str) -> tuple[Response, int]:
    require_api_key()
    from gateway.quarantine import release

    full = key if key.startswith("quarantine/") else "quarantine/" + key
    result = release(services(), full, sub=api_key_label())
    response = jsonify(result)
    response.headers["Cache-Control"] = "no-store"
    return response, 200


@bp.get("/admin/quarantine/<path:key>/preview")
def preview_quarantine(key: str) -> Response:
    """One frame as a PNG with the pixel-text regions outlined, for the reviewer (``?frame=N``, 1-based)."""
    require_api_key()
    from gateway.quarantine import preview

    frame = request.args.get("frame", "1")
    if not frame.isdigit():
        raise BadRequest("frame must be a positive integer")
    full = key if key.startswith("quarantine/") else "quarantine/" + key
    response = Response(preview(services(), full, int(frame)), mimetype="image/png")
    response.headers["Cache-Control"] = "no-store"  # the image may show PHI: never cached
    return response


@bp.delete("/admin/quarantine/<path:key>")
def delete_quarantine(key: str) -> Response:
    require_api_key()
    from gateway.quarantine import remove

    remove(services(), key if key.startswith("quarantine/") else "quarantine/" + key)
    return no_content()


AUDIT_PARAMS = {"kind", "sop_uid", "study_uid", "jti", "limit", "cursor"}
AUDIT_KINDS = ("hook", "deletion", "token")
MAX_AUDIT_PAGE = 1000


@bp.get("/admin/audit")
def audit() -> Response:
    """``kind=hook`` (default): the PHI hook decisions; ``kind=deletion``: who deleted what, when and why;
    ``kind=token``: which API key issued or revoked which token, its subject, scope and lifetime. Newest first, a
    page at a time: ``cursor`` is the ``next_cursor`` of the previous page (None after the last)."""
    require_api_key()
    args = request.args
    check_params(args, AUDIT_PARAMS)
    kind = args.get("kind", "hook")
    if kind not in AUDIT_KINDS:
        raise BadRequest("kind must be hook, deletion or token")
    if kind != "hook" and "sop_uid" in args:
        raise BadRequest("sop_uid filters kind=hook only")
    if kind != "token" and "jti" in args:
        raise BadRequest("jti filters kind=token only")
    if "jti" in args and not JTI.fullmatch(args["jti"]):
        raise BadRequest("malformed jti")
    # README: pages of ``limit`` 1-1000; a larger one is a 400 naming the bound, as the access trail answers it
    # (it was cut to 1000 in silence up to 2**31 - 1, and above that a 400 that named 2147483647 as the bound)
    limit = parse_int(args.get("limit") or "100", "limit", low=1, high=MAX_AUDIT_PAGE)
    filters: dict[str, Any] = {
        name: check_uid(args[name], name) for name in ("sop_uid", "study_uid") if name in args
    }
    if "cursor" in args:
        filters["before_id"] = parse_int(args["cursor"], "cursor", low=1, high=2**62)
    catalog = services().catalog
    if kind == "token":
        items = catalog.token_records(**filters, jti=args.get("jti"), limit=limit)
    else:
        records = catalog.deletion_records if kind == "deletion" else catalog.audit_records
        items = records(**filters, limit=limit)
    next_cursor = str(items[-1]["id"]) if len(items) == limit else None
    response = jsonify(items=items, next_cursor=next_cursor)
    response.headers["Cache-Control"] = "no-store"
    return response


ERASURE_FIELDS = {"patient_id", "issuer", "reason"}


@bp.post("/admin/erasure")
def erase_patient() -> tuple[Response, int]:
    """Right to erasure: every study of a Patient ID (optionally of one issuer), removed as a DELETE removes a
    study, less another patient's instances an older catalog stored in it (they stay: ``kept``). The Patient ID
    travels in the body, never in a URL (URLs are logged)."""
    require_api_key()
    body = json_body()
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - ERASURE_FIELDS)
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(unknown)}")
    patient_id, issuer, reason = body.get("patient_id"), body.get("issuer"), body.get("reason", "")
    # blank is no Patient ID: held files that name none would all match it
    if not isinstance(patient_id, str) or not patient_id.strip() or len(patient_id) > 64:
        raise BadRequest("patient_id must be a non-empty string of at most 64 characters")
    if issuer is not None and (not isinstance(issuer, str) or len(issuer) > 64):
        raise BadRequest("issuer must be a string of at most 64 characters")
    if "\0" in patient_id + (issuer or ""):  # no Patient ID holds one, and PostgreSQL's text takes none (a 500)
        raise BadRequest("patient_id and issuer hold no NUL character")
    if not isinstance(reason, str):
        raise BadRequest("reason must be a string")
    srv = services()
    label = api_key_label()
    # the patient's studies, less another patient's instances an older catalog stored in one, and the patient's
    # instances it stored in another patient's study (STOW refuses both now)
    plan = srv.catalog.erasure_plan(patient_id, issuer)
    # held files are recorded under keyed digests of their Patient ID and issuer (gateway.ingest), and so are this
    # erasure's deletion records: the same call sent again after a crash finishes what this one began
    key = srv.settings.deid_key
    patient = Patient(identifier_digest(patient_id, key), None if issuer is None else identifier_digest(issuer, key))
    erasing = srv.deleter()
    removed = erasing.delete(plan.targets, sub=label, reason=check_reason(reason), rebuild=True, patient=patient)
    # files of the patient held for review are the patient's data too, whether or not a study of theirs is stored;
    # those of a study only an instance was taken from are not (they are the study's patient's). A whole study
    # removed is one of the patient's (also one an interrupted erasure of theirs hid)
    erased = sorted(
        {item.target.study for item in removed if item.target.level == "study" or item.target.study in plan.studies}
    )
    quarantined = srv.catalog.quarantine_of_patient(patient.patient_id, patient.issuer, erased)
    from gateway.quarantine import remove

    for key in quarantined:
        try:
            remove(srv, key)
        except NotFound:  # released (or deleted) meanwhile: a release's stored copy is in the second plan below
            pass
    # a release of one of the patient's held files that ended after the first plan stored its instance before it
    # took the file's record away: a second plan finds it. One that had not taken the record finds it gone and
    # removes what it stored itself (gateway.quarantine.release)
    late = srv.catalog.erasure_plan(patient_id, issuer).targets
    if late:
        removed += erasing.delete(late, sub=label, reason=check_reason(reason), rebuild=True, patient=patient)
    if not removed and not quarantined:
        raise NotFound("no study or quarantined file of this patient is stored")
    kept = {"studies": sorted(plan.kept), "instances": sum(map(len, plan.kept.values()))}
    response = jsonify({**summary(removed), "kept": kept, "quarantined": len(quarantined)})
    response.headers["Cache-Control"] = "no-store"  # the UIDs of a patient's studies, as the audit lists them
    return response, 200
