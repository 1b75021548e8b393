"""Prometheus metrics. gunicorn runs several worker processes, so counters use prometheus_client's multiprocess
mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (``stack up`` sets it); ``/metrics`` then sums every worker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.config import env_value

AUTH_DECISIONS = Counter("dicomgw_auth_decisions_total", "auth_request answers by outcome", ["outcome"])
READ_PLANS = Counter("dicomgw_read_plans_total", "read plans made by status", ["status"])
INGESTED = Counter("dicomgw_ingested_instances_total", "instances through the ingest pipeline", ["status"])


def render() -> bytes:
    if env_value("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
