"""One error hierarchy for the whole gateway, mapped to HTTP in exactly one place (``app.py``).

Every error carries a machine-readable ``code`` and a human ``detail``; the Flask error handler turns it into
``{"error": code, "detail": detail}`` with ``status``. Views raise, they never build error responses.
Details never contain token values or PHI.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: an expected failure with an HTTP status."""

    status = 500
    code = "internal_error"

    def __init__(self, detail: str = "", **extra: object) -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code
        self.extra = extra


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class InvalidUID(BadRequest):
    code = "invalid_uid"


class InvalidPath(BadRequest):
    code = "invalid_path"


class MalformedMultipart(BadRequest):
    code = "malformed_multipart"


class Unauthorized(GatewayError):
    """No credential, or one that does not verify (bad signature, expired, revoked, wrong purpose)."""

    status = 401
    code = "unauthorized"


class TokenMissing(Unauthorized):
    code = "token_missing"


class TokenInvalid(Unauthorized):
    code = "token_invalid"


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


class ReservationLost(Conflict):
    """An upload's reservation of its SOP Instance UID was taken over (its lease ran out) before the commit."""

    code = "reservation_lost"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"


class RangeNotSatisfiable(GatewayError):
    status = 416
    code = "range_not_satisfiable"


class StorageUnavailable(GatewayError):
    """Object storage could not be reached or refused a write; nothing was made visible."""

    status = 503
    code = "storage_unavailable"


class CatalogUnavailable(GatewayError):
    status = 503
    code = "catalog_unavailable"


class ConfigError(Exception):
    """A bad or missing setting; raised at start-up with a message that names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class DicomError(GatewayError):
    """A file that is not usable DICOM (not DICOM, truncated, missing or invalid UIDs)."""

    status = 400
    code = "invalid_dicom"


class FrameNotFound(NotFound):
    """A frame number outside 1..NumberOfFrames."""

    code = "frame_not_found"


class FramesNotServable(NotAcceptable):
    """The instance is stored in a form whose frames cannot be served as byte ranges (big-endian, deflated,
    Bits Allocated 1, video, or an encapsulation whose frame boundaries could not be found): only the whole
    instance can be retrieved."""

    code = "frames_not_servable"


class DeidentificationFailed(GatewayError):
    """A file that cannot be de-identified safely (unreadable, an Encapsulated Document, no key...)."""

    status = 422
    code = "deidentification_failed"
