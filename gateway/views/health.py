"""Liveness, readiness and metrics."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import metrics as gateway_metrics
from gateway.errors import GatewayError
from gateway.views.common import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    checks: dict[str, str] = {}
    ok = True
    for name, check in (("storage", services().storage.check), ("catalog", services().catalog.check)):
        try:
            check()
            checks[name] = "ok"
        except GatewayError as error:
            checks[name] = error.code
            ok = False
    return jsonify(status="ok" if ok else "unavailable", checks=checks), 200 if ok else 503


@bp.get("/metrics")
def metrics() -> Response:
    return Response(gateway_metrics.render(), content_type=CONTENT_TYPE_LATEST)  # mimetype= added a 2nd charset
