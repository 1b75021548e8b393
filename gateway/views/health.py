"""Liveness, readiness and metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import metrics as gateway_metrics
from gateway.errors import CatalogUnavailable, GatewayError, StorageUnavailable
from gateway.views.common import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


# How long /readyz waits for its dependencies (probed side by side). A database or storage that stops answering
# holds its probe (and, without this bound, the probe's caller: a load balancer's health check, a gunicorn thread)
# until the network gives up; the answer is then a 503 naming it, in seconds.
READY_WAIT = 3.0


class _Probe:
    """One dependency check running in a thread of its own. While it is still running (a stalled dependency),
    later /readyz calls wait for that same probe instead of starting another: a stall holds one thread per process
    and dependency, never one per call."""

    def __init__(self, check: Callable[[], None]) -> None:
        self.done = threading.Event()
        self.error: GatewayError | None = None
        threading.Thread(target=self._run, args=(check,), name="readyz-probe", daemon=True).start()

    def _run(self, check: Callable[[], None]) -> None:
        try:
            check()
        except GatewayError as error:
            self.error = error
        except Exception as error:  # noqa: BLE001 - any other failure still means "not ready", never a 500
            self.error = GatewayError(type(error).__name__)
        finally:
            self.done.set()


_probes: dict[Callable[[], None], _Probe] = {}  # per check (a bound method of this process's services)
_probes_lock = threading.Lock()


def _started(check: Callable[[], None]) -> _Probe:
    """The probe of ``check`` still running, else a new one."""
    with _probes_lock:
        probe = _probes.get(check)
        if probe is None or probe.done.is_set():
            probe = _probes[check] = _Probe(check)
        return probe


def _outcome(probe: _Probe, stalled: type[GatewayError], deadline: float) -> str:
    """"ok", or the error code of the probe's check (``stalled``'s when it has not answered by ``deadline``)."""
    if not probe.done.wait(max(0.0, deadline - time.monotonic())):
        return stalled.code
    return "ok" if probe.error is None else probe.error.code


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    deadline = time.monotonic() + READY_WAIT
    storage, catalog = _started(services().storage.check), _started(services().catalog.check)
    checks = {
        "storage": _outcome(storage, StorageUnavailable, deadline),
        "catalog": _outcome(catalog, CatalogUnavailable, deadline),
    }
    ok = all(outcome == "ok" for outcome in checks.values())
    return jsonify(status="ok" if ok else "unavailable", checks=checks), 200 if ok else 503


@bp.get("/metrics")
def metrics() -> Response:
    return Response(gateway_metrics.render(), content_type=CONTENT_TYPE_LATEST)  # mimetype= added a 2nd charset
