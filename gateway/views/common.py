"""Helpers shared by the views: the services object and the credential of the current request."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Response, current_app, request
from werkzeug.http import parse_etags, unquote_etag

from gateway.auth import Decision, bearer_value, query_token
from gateway.errors import (
    BadRequest,
    InsufficientScope,
    PreconditionFailed,
    Unauthorized,
    UnsupportedContentEncoding,
    UnsupportedMediaType,
)
from gateway.services import Services


def services() -> Services:
    found = current_app.extensions["dicomgw"]
    assert isinstance(found, Services)
    return found


def raw_uri() -> str:
    """The URI as the client sent it (with the ``/t/{token}`` prefix, if any)."""
    raw = request.environ.get("RAW_URI")
    if raw:
        return str(raw)
    token = request.environ.get("dicomgw.path_token")
    path = request.path if token is None else f"/t/{token}{request.path}"
    query = request.query_string.decode("latin-1")
    return f"{path}?{query}" if query else path


def decision() -> Decision:
    """Re-check the credential inside Python (NGINX already did; this also yields the scope for filtering)."""
    return services().authorizer.decide(
        request.method,
        raw_uri(),
        request.headers.get("Cookie", ""),
        request.headers.get("Authorization", ""),
    )


def require_api_key() -> None:
    srv = services()
    authorization = request.headers.get("Authorization", "")
    if srv.authorizer.is_api_key(authorization):
        return
    presented = bearer_value(authorization)
    if presented and srv.tokens.signed_by_us(presented):
        # RFC 6750 3.1: a token of ours is a credential that may not do this, as on a DELETE. Its 401 said the token
        # was bad, and a client's HTTP stack that renews on a 401 (OkHttp's Authenticator) renewed and asked again.
        raise InsufficientScope("only the API key may do this: a token never issues, revokes or administers")
    raise Unauthorized("a valid API key is required (Authorization: Bearer ...)")


def public_base() -> str:
    """``DICOMGW_PUBLIC_URL``, else the scheme and host the client used, as NGINX passes them on (``Host`` and
    ``X-Forwarded-Proto``, set by the proxy snippet; gunicorn trusts the latter only from its allowed proxies)."""
    return services().settings.public_url or request.host_url.rstrip("/")


def dicomweb_root() -> str:
    """The DICOMweb root the client used, relative to the host: ``/t/{token}/dicomweb`` or ``/dicomweb``."""
    token = request.environ.get("dicomgw.path_token")
    return f"/t/{token}/dicomweb" if token else "/dicomweb"


def token_query() -> str:
    """``?token={T}`` when the request presented a token in its query, else ``""``: the URIs an answer names
    (RetrieveURLs, BulkDataURIs) end with it, as they keep a path token in ``dicomweb_root``, so a client that
    authenticates that way can follow them (without it they answered 401). The value is the raw one the decision
    read (``query_token``; a token that passed is URL-safe characters only, so it needs no encoding). A cookie or an
    Authorization value never goes into a URI: the client sends those again by itself."""
    token = query_token(raw_uri().partition("?")[2])
    return f"?token={token}" if token else ""


def no_content() -> Response:
    """A 204 without a body, and so without a Content-Type (Flask's default said text/html)."""
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def json_body() -> Any:
    """The request's JSON body, or None when it is not JSON. Only ``application/json`` is read (so a cross-site form
    cannot send one without a CORS preflight): another type is a 415 naming it, since a JSON body sent as ``curl
    -d`` sends it (``application/x-www-form-urlencoded``) was told "the body must be a JSON object". A key given
    twice is a 400: parsers disagree on which one counts (the last one silently won here), so a portal and the
    gateway could read one body two ways."""
    if not request.is_json:
        sent = f"as {request.mimetype[:60]}" if request.mimetype else "with no Content-Type"
        raise UnsupportedMediaType(
            f"the body must be JSON sent with Content-Type: application/json (it was sent {sent})"
        )
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ("", "identity"):  # read as JSON, a gzip body was "the body must be a JSON object"
        raise UnsupportedContentEncoding(f"Content-Encoding {coding[:40]} is not supported: send the body uncompressed")
    try:
        # the app's provider: a body nested too deeply is a ValueError there too, never a 500
        body = current_app.json.loads(request.get_data(cache=True), object_pairs_hook=_unique_keys)
    except _DuplicateKey as duplicate:
        raise BadRequest(f"the JSON body gives {str(duplicate)!r} twice") from None
    except ValueError:
        return None
    if _holds_a_lone_surrogate(body):
        # "\ud800" alone is valid JSON syntax and no Unicode text: it reached the catalog and UTF-8 encoding failed
        # there, a 500 (an erasure's patient_id, issuer or reason)
        raise BadRequest("the JSON body holds a lone surrogate escape (\\ud800-\\udfff): strings must be Unicode text")
    return body


def _holds_a_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in a parsed JSON value (keys included) holds a surrogate code point, which only a
    lone ``\\uD8xx``/``\\uDCxx`` escape makes (a pair decodes to one character)."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if not item.isascii() and any("\ud800" <= char <= "\udfff" for char in item):
                return True
        elif isinstance(item, dict):
            todo += item.keys()
            todo += item.values()
        elif isinstance(item, list):
            todo += item
    return False


def make_conditional(response: Response) -> Response:
    """Evaluate the request's preconditions against ``response``'s validators (304 or the response itself). A
    failed If-Match / If-Unmodified-Since is our JSON 412: werkzeug kept the whole representation as its body.
    If-Match is evaluated here, first (RFC 9110 13.2.2): werkzeug refused ``If-Match: *``, which holds for any
    current representation (13.1.1), and compared a weak ETag strongly as if it were strong."""
    if_match = parse_etags(request.headers.get("If-Match"))
    if if_match:
        tag, weak = unquote_etag(response.headers.get("ETag"))
        if not (if_match.star_tag or (tag is not None and not weak and if_match.is_strong(tag))):
            raise PreconditionFailed("the representation does not match If-Match or If-Unmodified-Since")
    response.make_conditional({k: v for k, v in request.environ.items() if k != "HTTP_IF_MATCH"})
    if response.status_code == 412:
        raise PreconditionFailed("the representation does not match If-Match or If-Unmodified-Since")
    return response


# a stored (relative) BulkDataURI in canonical metadata text: its path is tags, item numbers and slashes, no quote
_BULK_URI = re.compile(r'"BulkDataURI":"bulkdata/([^"]*)"')


def metadata_text(row: Any) -> str:
    """An instance's stored DICOM JSON text with its BulkDataURIs absolute, under the root the client used (a path
    token stays in it, a query token ends each URI), as RetrieveURLs are: PS3.18 F.2.2 calls the value "the WADO-RS
    URL" of the bulk data, and clients such as dicomweb-client fetch it as given (a relative one failed there)."""
    root = json.dumps(f"{public_base()}{dicomweb_root()}/studies/")[1:-1]
    prefix = f"{root}{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}/"
    text = row.metadata or "[]"
    query = token_query()
    if query:  # the query goes after each URI's path, so the one replace of the prefix cannot place it
        return _BULK_URI.sub(lambda match: f'"BulkDataURI":"{prefix}bulkdata/{match[1]}{query}"', text)
    return text.replace('"BulkDataURI":"bulkdata/', f'"BulkDataURI":"{prefix}bulkdata/')


def refuse_repeats(args: Any) -> None:
    """A parameter given twice is a 400, as QIDO's ``limit`` and a JSON body's key are: the first one alone was
    read, so ``study=A&study=B`` listed only A's rows, and an audit answered a question nobody asked."""
    repeated = sorted(name for name in set(args) if len(args.getlist(name)) > 1)
    if repeated:
        raise BadRequest(f"{repeated[0]} given more than once")


def check_params(args: Any, known: set[str] | frozenset[str]) -> None:
    """The admin listings' query: an unknown parameter is a 400 naming it (it was read by no one, and the answer
    was to another question), then one given twice (``refuse_repeats``)."""
    unknown = sorted(set(args) - known)
    if unknown:
        raise BadRequest(f"unknown parameters: {', '.join(unknown)}")
    refuse_repeats(args)
