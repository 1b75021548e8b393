"""The Flask app factory. Errors from ``gateway.errors`` become JSON here, and only here."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import NotFound as NoRoute

from gateway.config import Settings
from gateway.dicomweb.paths import unknown_resource_detail
from gateway.errors import ERROR_CACHE_CONTROL, BadRequest, GatewayError, NotFound, error_body, to_response
from gateway.services import Services

log = logging.getLogger("gateway")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class _JSONProvider(DefaultJSONProvider):
    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            # a body nested deeper than the decoder's stack is malformed JSON like any other (get_json then
            # answers 400), never an unexpected error: a 500 for a client's mistake, on unauthenticated routes too
            raise ValueError("JSON nested too deeply") from None


class _Flask(Flask):
    def make_default_options_response(self) -> Response:
        """An OPTIONS on a route of the API (``/api/v1/tokens``, a revoke, the cookie exchange, the admin calls,
        ``/healthz``): a 204 with ``Allow`` and no body, as NGINX answers it for DICOMweb and the renewal. Flask's
        was a 200 declaring ``text/html; charset=utf-8`` for no body (HTML where JSON or nothing is due)."""
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def create_app(
    config: Settings | Mapping[str, Any] | None = None, services: Services | None = None, *, migrate: bool = True
) -> Flask:
    """``config`` is Settings, a mapping of ``DICOMGW_*`` names without the prefix, or None (environment).
    ``migrate=False``: the catalog must already be current (gunicorn workers, see ``gateway.startup``)."""
    if services is None:
        if config is None:
            settings = Settings.from_env()
        elif isinstance(config, Settings):
            settings = config
        else:
            settings = Settings.from_mapping(config)
        services = Services.build(settings, migrate=migrate)
    app = _Flask(__name__)
    app.json = _JSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = None  # STOW streams; NGINX enforces the body limit
    app.extensions["dicomgw"] = services

    from gateway.views import access, api, dicomweb, health

    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(access.bp)
    app.register_blueprint(dicomweb.bp)

    @app.before_request
    def query_is_utf8() -> None:
        # werkzeug decodes the raw query string as strict UTF-8 when a view first reads request.args: a raw byte
        # that is not UTF-8 (RFC 3986 allows none) raised there, a 500; percent-encoded ones it decodes leniently
        try:
            query = request.query_string.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the query string is not valid UTF-8 (percent-encode its bytes)") from None
        _percent_decoded_utf8(query)
        # no DICOM value or identifier holds a NUL, and PostgreSQL's text takes none: a %00 in a search was a 500
        for name, value in request.args.items(multi=True):
            if "\0" in name or "\0" in value:
                raise BadRequest(f"{name.replace(chr(0), '%00')[:64]} holds a NUL character (%00)")

    @app.errorhandler(GatewayError)
    def gateway_error(error: GatewayError) -> Response:
        status, headers, body = to_response(error)
        return Response(body, status, headers)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if isinstance(error, NoRoute):  # no route: our 404, saying what is wrong with the path
            return gateway_error(NotFound(unknown_resource_detail(request.path)))
        code = (error.name or "error").lower().replace(" ", "_")
        response = Response(error_body(code, error.description or code), error.code or 500, mimetype="application/json")
        response.headers["Cache-Control"] = ERROR_CACHE_CONTROL
        # a 405 must say what the resource takes (RFC 9110 15.5.6); werkzeug's own answer has it, ours kept it out
        response.headers.extend((k, v) for k, v in error.get_headers() if k.lower() == "allow")
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        # The trace goes to the server log (no PHI or tokens in exception text we raise); never to the client.
        log.exception("unhandled error")
        return gateway_error(GatewayError("unexpected server error"))

    return app


def _percent_decoded_utf8(query: str) -> None:
    """``BadRequest`` naming the parameter when a name or value is not UTF-8 once its %XX escapes are decoded
    (PS3.18 8.3.1, RFC 3986 3.4): werkzeug reads such bytes as U+FFFD, so ``PatientName=M%FCller*`` (ISO-8859-1
    percent-encoded) searched for a name nobody has, and answered an empty 200 as if no such patient were stored."""
    for field in query.split("&"):
        raw_name, _, raw_value = field.partition("=")
        name = _utf8(raw_name)
        if name is None or _utf8(raw_value) is None:
            # the parameter's name, never its value (it may be PHI), and a plain name only
            if name is None:
                subject = "a query parameter's name"
            else:
                subject = name if _PLAIN_NAME.fullmatch(name) else "a query parameter"
            raise BadRequest(
                f"{subject} is not UTF-8 once its %XX escapes are decoded (percent-encode the value's UTF-8 bytes)"
            )


def _utf8(part: str) -> str | None:
    try:
        return unquote_to_bytes(part.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        return None


def create_wsgi(config: Settings | Mapping[str, Any] | None = None, *, migrate: bool = True) -> Any:
    """The full WSGI callable: the fast paths (auth decision, read plans) in front of Flask."""
    from gateway.fastpath import FastPath

    app = create_app(config, migrate=migrate)
    services = app.extensions["dicomgw"]
    return FastPath(app.wsgi_app, services.authorizer, services.planner)
