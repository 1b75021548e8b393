"""The WSGI entry point: two hot routes answered without Flask, everything else handed to the Flask app.

- ``/_auth`` (NGINX ``auth_request``): the token decision, answered 204/401/403 with no body, so NGINX keeps the
  upstream connection alive and the hop stays cheap (`docs/design.md` §1: Flask costs ~40% more per request than a bare
  WSGI callable here).
- ``/_plan/...`` (NGINX's internal location, reached only by its byte-serving locations' rewrite): the read plan
  (``gateway.dicomweb.wado``) of the original path that follows the prefix.
- ``/_block3/...`` (proxied only by NGINX's internal ``/_frame`` location): the plan of a block of 100 frames
  (``Planner.block``), which NGINX caches and serves each of those frames from without a Python hop.
- ``/_conv/...`` (NGINX's internal location, reached only by a plan's X-Accel-Redirect): frames and bulkdata of
  big-endian and deflated instances, answered with their converted bytes (``Planner.plan(convert=True)``).
The ``/t/{token}`` path prefix is removed before Flask sees a path, so Flask routes are written once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.http import parse_etags

from gateway import nginx_contract as nginx
from gateway.auth import Authorizer, decision_lifetime
from gateway.dicomweb.paths import split_token
from gateway.dicomweb.wado import Planner
from gateway.errors import GatewayError, PreconditionFailed, to_auth_answer, to_response
from gateway.metrics import AUTH_DECISIONS, READ_PLANS

log = logging.getLogger("gateway.fastpath")
_PLAN_PREFIX = nginx.PLAN + "/"
_BLOCK_PREFIX = nginx.BLOCK + "/"
_CONVERTED_PREFIX = nginx.CONVERTED + "/"
_RANGE_KEY = nginx.environ_key(nginx.RANGE)
_AUTH_CACHE_KEY = nginx.environ_key(nginx.AUTH_CACHE)
DEFAULT_AUTH_CACHE = 2  # DICOMGW_AUTH_CACHE_SECONDS when NGINX does not say (the template always does)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_REASONS = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    406: "Not Acceptable",
    412: "Precondition Failed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _status(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Error')}"


def _precondition(environ: dict[str, Any]) -> GatewayError | int | None:
    """Composed and converted bytes (frames, bulkdata, multipart retrieves) carry no validator (no ETag, no
    Last-Modified), so (RFC 9110 13.1, 13.2.2): an If-Match tag fails (412), ``If-Match: *`` holds,
    ``If-None-Match: *`` is a 304, a tag never matches; the dates are ignored (13.1.3, 13.1.4: without a
    modification date)."""
    if_match = parse_etags(environ.get("HTTP_IF_MATCH"))
    if if_match and not if_match.star_tag:
        return PreconditionFailed("the representation does not match If-Match or If-Unmodified-Since")
    if parse_etags(environ.get("HTTP_IF_NONE_MATCH")).star_tag:
        return 304
    return None


# The preconditions NGINX's own check refuses (its not-modified filter, on a plan's 200 it caches): it answered an
# If-Match tag with a 412 and then closed the connection under "Connection: keep-alive" (a 412 from a response
# filter ends the request as an error), and If-Unmodified-Since with the same 412, without a date to compare. NGINX
# asks Python for these requests (proxy_cache_bypass, dgw-plan.conf), and a plan answered uncached is not checked.
_NGINX_REFUSES = ("HTTP_IF_MATCH", "HTTP_IF_UNMODIFIED_SINCE")
# an SSI include of a stored byte range, as the planner writes it (gateway.dicomweb.wado._include_text)
_RANGE_INCLUDE = re.compile(
    rb'<!--# include virtual="(?:%s|%s)/([0-9]+)-([0-9]+)/[^"]*" wait="yes" -->'
    % (nginx.SEGMENT.encode(), nginx.FILE_SEGMENT.encode())
)


def served_length(plan: bytes) -> int | None:
    """The length of the body NGINX's SSI makes of ``plan``: its text outside the includes plus each included
    range. None when an include names no range (a whole object, a block's frame): its length is not known here."""
    found = list(_RANGE_INCLUDE.finditer(plan))
    if plan.count(b"<!--#") != len(found):
        return None
    ranged = sum(int(m[2]) - int(m[1]) + 1 for m in found)
    return len(plan) - sum(m.end() - m.start() for m in found) + ranged


class FastPath:
    def __init__(self, flask_app: WSGIApp, authorizer: Authorizer, planner: Planner) -> None:
        self.flask_app = flask_app
        self.authorizer = authorizer
        self.planner = planner

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == nginx.AUTH:
            return self.auth(environ, start_response)
        if path.startswith(_PLAN_PREFIX):
            return self.plan(environ, start_response)
        if path.startswith(_BLOCK_PREFIX):
            return self.plan(environ, start_response, block=True)
        if path.startswith(_CONVERTED_PREFIX):
            return self.plan(environ, start_response, convert=True)
        if path.startswith("/t/"):
            token, rest = split_token(path)
            environ["dicomgw.path_token"] = token
            environ["PATH_INFO"] = rest
        return self.flask_app(environ, start_response)

    def auth(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("HTTP_X_ORIGINAL_METHOD", "GET")
        uri = environ.get("HTTP_X_ORIGINAL_URI", "")
        try:
            decision = self.authorizer.decide(
                method, uri, environ.get("HTTP_COOKIE", ""), environ.get("HTTP_AUTHORIZATION", "")
            )
            # inside the try: it reads the catalog's tombstones, and a catalog outage is an answer (NGINX's JSON
            # 503), never an exception gunicorn logs with its traceback
            generation = self.authorizer.generation(decision.study)
        except GatewayError as error:
            status, headers = to_auth_answer(error)
            AUTH_DECISIONS.labels(str(status)).inc()
            start_response(_status(status), headers)
            return [b""]
        except Exception:  # fail closed, never a 2xx on an unexpected error
            log.exception("auth decision failed")
            start_response(_status(500), [("Content-Length", "0")])
            return [b""]
        claims = decision.claims
        AUTH_DECISIONS.labels("204").inc()
        headers = [
            (nginx.SUB, claims.sub),
            (nginx.JTI, claims.jti),
            (nginx.STUDY, decision.study),
            (nginx.GENERATION, str(generation)),
            (nginx.VIA, decision.via),
        ]
        # a decision never outlives the credential it allows (NGINX would serve reads with it after the expiry)
        cached_for = environ.get(_AUTH_CACHE_KEY, "")
        lifetime = decision_lifetime(
            claims.expires_at, int(time.time()), int(cached_for) if cached_for.isdigit() else DEFAULT_AUTH_CACHE
        )
        if lifetime is not None:
            headers.append(("X-Accel-Expires", str(lifetime)))
        start_response(_status(204), headers)
        return [b""]

    def plan(
        self, environ: dict[str, Any], start_response: StartResponse, block: bool = False, convert: bool = False
    ) -> Iterable[bytes]:
        """A read plan (``/_plan/...``), a block plan (``/_block3/...``, always token-less: NGINX builds it) or
        converted bytes (``/_conv/...``, token-less: the plan's redirect)."""
        uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
        prefix = nginx.BLOCK if block else nginx.CONVERTED if convert else nginx.PLAN
        uri = uri[len(prefix) :] if uri.startswith(prefix + "/") else uri
        accept = environ.get("HTTP_ACCEPT", "")
        try:
            if block:
                response = self.planner.block(uri, accept)
            else:
                response = self.planner.plan(
                    environ.get("REQUEST_METHOD", "GET"),
                    uri,
                    accept,
                    environ.get(_RANGE_KEY, ""),
                    convert=convert,
                    if_none_match=environ.get("HTTP_IF_NONE_MATCH", ""),
                )
        except GatewayError as error:
            READ_PLANS.labels(str(error.status)).inc()
            return self._error(error, start_response)
        except Exception:
            log.exception("read plan failed")
            return self._error(GatewayError("the read plan could not be made"), start_response)
        READ_PLANS.labels(str(response.status)).inc()
        headers = response.headers
        # a whole object's redirect is judged by storage, on its own validators; converted bytes by their answer
        if response.status in (200, 206) and not any(name == "X-Accel-Redirect" for name, _ in headers):
            unmet = _precondition(environ)
            if block and (unmet is not None or any(environ.get(name) for name in _NGINX_REFUSES)):
                # NGINX answers a block's errors with its own pages: the frame's own plan answers, in Python's words
                start_response(_status(404), [("X-Accel-Expires", "0"), ("Content-Length", "0")])
                return [b""]
            if isinstance(unmet, GatewayError):
                return self._error(unmet, start_response)
            if unmet == 304:
                # never cached (an X-Accel-Expires of the plan would keep it for the requests without the header)
                dropped = ("content-type", "content-range", "x-accel-expires", nginx.ACCEPT_RANGES.lower())
                kept = [h for h in headers if h[0].lower() not in dropped]
                start_response(_status(304), [*kept, ("X-Accel-Expires", "0")])
                return [b""]
            if any(environ.get(name) for name in _NGINX_REFUSES):
                headers = [h for h in headers if h[0] != "X-Accel-Expires"] + [("X-Accel-Expires", "0")]
        if response.status in (200, 206):
            served = served_length(response.body)
            if served is not None:
                headers = [*headers, (nginx.LENGTH, str(served))]
        headers = [*headers, ("Content-Length", str(len(response.body)))]
        start_response(_status(response.status), headers)
        return [response.body]


    @staticmethod
    def _error(error: GatewayError, start_response: StartResponse) -> Iterable[bytes]:
        status, headers, body = to_response(error)
        start_response(_status(status), [*headers, ("Content-Length", str(len(body)))])
        return [body]
