"""One error hierarchy for the whole gateway, mapped to HTTP in exactly one place (``to_response`` below).

Every error carries a machine-readable ``code`` and a human ``detail``; ``to_response`` turns it into status,
headers and the JSON body ``{"error": code, "detail": detail}``, for the Flask error handler (``app.py``) and the
WSGI fast path (``fastpath.py``) alike; ``to_auth_answer`` is the same error as NGINX's ``auth_request`` needs it.
NGINX's own error bodies (the template) use the same shape and, for the same situation, the same codes
(tests/unit/test_errors.py). Views raise, they never build error responses. Details never contain token values
or PHI.
"""

from __future__ import annotations

import json
from typing import ClassVar

from gateway import nginx_contract as nginx

# Codes only NGINX answers (nginx/templates/dicomgw.conf.template): situations the Python side never sees.
NGINX_ONLY_CODES = {
    "error": "a status the template's map does not name",
    "gateway_unavailable": "the gateway did not answer NGINX (dead, slow, or a 5xx from the auth hop)",
    "method_not_allowed": "a method NGINX does not route to the gateway",
    "request_timeout": "the client did not send the request in time",
    "uri_too_long": "a request line longer than NGINX's buffers",
    "request_header_fields_too_large": "a header line longer than NGINX's buffers, or too many headers (431)",
    "not_implemented": "a transfer encoding NGINX does not support",
    "http_version_not_supported": "neither HTTP/1.x nor HTTP/2",
}
RETRY_AFTER_SECONDS = "5"


class GatewayError(Exception):
    """Base class: an expected failure with an HTTP status."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    detail: str
    # Who a refusal refused, and where, for the access audit: the subjects, token ids and transports of the tokens of
    # ours the request presented (``Authorizer.decide``), space-separated as an allowed request's are, and the study
    # it asked for. Empty: nobody we know, no study.
    refused: tuple[str, str, str, str] = ("", "", "", "")

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code

    def headers(self) -> list[tuple[str, str]]:
        """Headers the answer carries besides its Content-Type: a 503 says when to retry."""
        return [("Retry-After", RETRY_AFTER_SECONDS)] if self.status == 503 else []


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class InvalidUID(BadRequest):
    code = "invalid_uid"


class InvalidPath(BadRequest):
    code = "invalid_path"


class MalformedMultipart(BadRequest):
    code = "malformed_multipart"


class CookieNotKept(BadRequest):
    """The cookie exchange asked for where the browser will not keep the cookie (a cross-site iframe, unless the
    cookie is ``SameSite=None``): the viewer behind it would have no credential at all."""

    code = "cookie_not_kept"


# The challenge of every 401 (RFC 9110 15.5.2: a 401 MUST carry one; RFC 6750 3: Bearer, and ``invalid_token`` when a
# token was presented but is bad). A client's HTTP stack (OkHttp's Authenticator, Java's and .NET's handlers, an
# OIDC library) reads it to tell "renew the token" from any other failure. NGINX's own 401 sends the same
# (``$dgw_challenge``, nginx/templates/dicomgw.conf.template).
BEARER_CHALLENGE = 'Bearer realm="dicom-gateway"'
INVALID_TOKEN_CHALLENGE = BEARER_CHALLENGE + ', error="invalid_token"'


class Unauthorized(GatewayError):
    """No credential, or one that does not verify (bad signature, expired, revoked)."""

    status = 401
    code = "unauthorized"
    challenge: ClassVar[str] = BEARER_CHALLENGE

    def headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", self.challenge)]


class TokenMissing(Unauthorized):
    code = "token_missing"


class TokenInvalid(Unauthorized):
    code = "token_invalid"
    challenge = INVALID_TOKEN_CHALLENGE


class TokenUnrecognised(TokenInvalid):
    """No key of ours signed this value (or it is not a token at all). In the Authorization header, which other
    systems share (an OIDC JWT, dicomweb-client's ``Bearer None``), such a value is not a credential of ours."""


class TokenExpired(TokenInvalid):
    code = "token_expired"


class TokenRevoked(TokenInvalid):
    code = "token_revoked"


class Forbidden(GatewayError):
    """A good credential asking for something outside its scope."""

    status = 403
    code = "forbidden"


class OutOfScope(Forbidden):
    code = "out_of_scope"


class InsufficientScope(Forbidden):
    """A token of ours, valid, whose actions do not include the request's (a read token on STOW): RFC 6750 3.1's
    ``insufficient_scope``, a 403. A 401 told the user the token itself was bad."""

    code = "insufficient_scope"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class NotAcceptable(GatewayError):
    status = 406
    code = "not_acceptable"


class Conflict(GatewayError):
    status = 409
    code = "conflict"


class SeriesInOtherStudy(Conflict):
    """A Series Instance UID already registered under a different Study Instance UID."""

    code = "series_in_other_study"


class PatientMismatch(Conflict):
    """An instance whose Patient ID (and issuer) differs from the one its study already holds: the catalog keeps
    one patient per study, so storing it would hide it from that patient's erasure."""

    code = "patient_mismatch"


class ReservationLost(Conflict):
    """An upload's reservation of its SOP Instance UID was taken over (its lease ran out) before the commit."""

    code = "reservation_lost"


class PreconditionFailed(GatewayError):
    """An If-Match or If-Unmodified-Since the representation does not meet (RFC 9110 15.5.13)."""

    status = 412
    code = "precondition_failed"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"


class UnsupportedContentEncoding(UnsupportedMediaType):
    """A compressed request body: the 415 names the one coding accepted (RFC 9110 15.5.16, Accept-Encoding)."""

    def headers(self) -> list[tuple[str, str]]:
        return [("Accept-Encoding", "identity")]


class RangeNotSatisfiable(GatewayError):
    """A Range outside the representation; ``length`` is its size, for ``Content-Range: bytes */length``."""

    status = 416
    code = "range_not_satisfiable"
    length: int

    def __init__(self, detail: str = "", *, length: int = 0) -> None:
        super().__init__(detail)
        self.length = length

    def headers(self) -> list[tuple[str, str]]:
        return [("Content-Range", f"bytes */{self.length}")]


class StorageUnavailable(GatewayError):
    """Object storage could not be reached or refused a write; nothing was made visible."""

    status = 503
    code = "storage_unavailable"


class CatalogUnavailable(GatewayError):
    status = 503
    code = "catalog_unavailable"


class ShuttingDown(GatewayError):
    """This gunicorn worker is stopping (SIGTERM: a deploy, a reload, ``max_requests``) and its graceful time is
    over: Python takes no new thread work, so what it has not stored is for another worker."""

    status = 503
    code = "shutting_down"


class UploadInProgress(GatewayError):
    """Another upload of the same SOP Instance UID held it for longer than an upload waits (a release of a held file
    meeting a STOW of it): a retry after ``Retry-After`` meets that upload ended, as STOW's 0xA700 says."""

    status = 503
    code = "upload_in_progress"


class ConfigError(Exception):
    """A bad or missing setting; raised at start-up with a message that names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class DicomError(GatewayError):
    """A file that is not usable DICOM (not DICOM, truncated, missing or invalid UIDs)."""

    status = 400
    code = "invalid_dicom"


class FrameNotFound(NotFound):
    """A frame number outside 1..NumberOfFrames."""

    code = "frame_not_found"


class FramesNotServable(NotAcceptable):
    """The instance is stored in a form whose frames cannot be served (Bits Allocated 1, video, or an encapsulation
    whose frame boundaries could not be found): only the whole instance can be retrieved. Big-endian and deflated
    frames are converted (``gateway.dicom.converted``)."""

    code = "frames_not_servable"


class DeidentificationFailed(GatewayError):
    """A file that cannot be de-identified safely (unreadable, an Encapsulated Document, no key...)."""

    status = 422
    code = "deidentification_failed"


def error_body(code: str, detail: str) -> bytes:
    """The JSON body of every error a client gets from Python: ``{"error": code, "detail": detail}``."""
    return json.dumps({"error": code, "detail": detail}).encode()


# Every error answer's: a shared cache (a CDN in front) keeps none, a browser asks again before it shows one. A 404
# is heuristically cacheable (RFC 9111 4.2.2): without it, one kept for a cookie's request could answer any other
# credential (or none) without the auth step, and a study missing until its upload ended stayed missing.
ERROR_CACHE_CONTROL = "private, no-cache"


def to_response(error: GatewayError) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and JSON body for ``error`` (no Content-Length: the caller knows the body)."""
    headers = [("Content-Type", "application/json"), ("Cache-Control", ERROR_CACHE_CONTROL), *error.headers()]
    return error.status, headers, error_body(error.code, error.detail)


def all_codes() -> set[str]:
    """Every ``code`` of the hierarchy (the codes a client can get from Python)."""
    found: set[str] = set()
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        found.add(cls.code)
        pending.extend(cls.__subclasses__())
    return found


def to_auth_answer(error: GatewayError) -> tuple[int, list[tuple[str, str]]]:
    """The same error as an ``auth_request`` answer: NGINX passes only 401 and 403 on (a malformed path is a
    refusal too) and turns 500 into its JSON 503, so a 5xx (e.g. the catalog is down) is never a cached refusal.
    The code and the detail travel in ``X-Dgw-Error`` and ``X-Dgw-Error-Detail`` for the JSON body NGINX writes, the
    body ``to_response`` writes (a client met two shapes of 401: NGINX's said ``{"error": "unauthorized", "detail":
    "token_expired"}``); there is no body here. The detail is JSON-escaped ASCII, written into that body as it is."""
    status = 401 if isinstance(error, Unauthorized) else 403
    if error.status >= 500:
        status = 500
    detail = json.dumps(error.detail)[1:-1]
    headers = [(nginx.ERROR, error.code), (nginx.ERROR_DETAIL, detail), ("Content-Length", "0")]
    # a refused token of ours and the study it asked for are named in the access log as an allowed request's are:
    # who tried to reach what it may not
    named = zip((nginx.SUB, nginx.JTI, nginx.VIA, nginx.STUDY), error.refused, strict=True)
    headers += [(name, value) for name, value in named if value]
    if isinstance(error, BadRequest):
        # the request's own mistake (an instance segment or a WADO-URI query the step cannot read): NGINX answers
        # the 400 Python answers it with (a 403 told the client its credential was refused, and Python's 400 came
        # instead whenever NGINX had kept an allowing decision for the series), and never keeps it: a decision is
        # kept per series (every path below it shares one), and this refusal kept there refused every read of the
        # series for seconds
        headers += [(nginx.ERROR_STATUS, "400"), ("X-Accel-Expires", "0")]
    return status, headers
