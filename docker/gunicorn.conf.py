"""Gunicorn settings for the gateway container (``gunicorn --config /etc/dicomgw/gunicorn.conf.py``).

gthread workers, as in ``dicom-gateway stack up``: the auth hop is many tiny requests over keepalive
connections from NGINX (`docs/design.md`, NGINX lessons: the hop is the cost), and threads keep those
connections cheap. Each value can be overridden by an environment variable, so compose and ECS tune them
without a new image:

- ``GUNICORN_BIND`` (``0.0.0.0:8000``), ``WEB_CONCURRENCY`` (workers: 2 x CPUs + 1, at most 9),
  ``GUNICORN_THREADS`` (8), ``GUNICORN_TIMEOUT`` (300 s: a STOW of a large whole-slide image streams for
  minutes), ``GUNICORN_KEEPALIVE`` (75 s, longer than NGINX keeps an idle upstream connection, so NGINX always
  closes first and never reuses a socket gunicorn has just closed).

The master validates the settings and migrates the catalog once in ``on_starting``, before any worker exists
(workers only check the schema), and a bad setting stops it with one line instead of a traceback per worker.

The access log stays off: URLs carry tokens (``/t/{token}/...``, ``?token=``); NGINX writes the masked log.
"""

from __future__ import annotations

import os


def _cpus() -> int:
    # sched_getaffinity honours the CPU set a container is pinned to; cpu_count() reports the whole host.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise SystemExit(f"{name} must be at least 1, got {value}")
    return value


bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
worker_class = "gateway.gunicorn_worker.WokenThreadWorker"  # gthread, woken by the signal that stops it
workers = _env_int("WEB_CONCURRENCY", min(2 * _cpus() + 1, 9))
threads = _env_int("GUNICORN_THREADS", 8)
timeout = _env_int("GUNICORN_TIMEOUT", 300)
graceful_timeout = 30
keepalive = _env_int("GUNICORN_KEEPALIVE", 75)
# A worker's heartbeat file on tmpfs: a container's overlay filesystem can stall it and get workers killed.
worker_tmp_dir = "/dev/shm"
# Recycle workers now and then so a slow leak never takes a task down; jitter spreads the restarts.
max_requests = 20000
max_requests_jitter = 2000
# NGINX bounds requests (8 KB request lines, 32 KB for a QIDO search; 32 KB header lines, 128 KB of headers) and
# answers JSON; gunicorn must never refuse what NGINX let through with its own plain page (gunicorn's defaults,
# 4094-byte lines, 100 headers and 8190-byte header lines, are lower; 8190 is its largest request line but 0, none).
# Over HTTP/2 NGINX bounds only the whole header list (128 KB of names and values) and each field as HPACK encodes
# it: one line may take all of it (a browser's cookie crumbs, joined into one Cookie line), so a line may be 128 KB
# + ": " + CRLF.
limit_request_line = 0
limit_request_fields = 32768
limit_request_field_size = 131076
accesslog = None
# every record masked (a URI gunicorn quotes may carry a token): gateway/logmask.py
logger_class = "gateway.logmask.GunicornLogger"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# NGINX is the only client and sets X-Forwarded-*; it runs in the same task (ECS) or compose network.
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
proxy_allow_ips = forwarded_allow_ips


def on_starting(server: object) -> None:
    from gateway.startup import StartupError, prepare

    try:
        prepare()
    except StartupError as error:
        raise SystemExit(f"dicom-gateway: {error}") from None


def on_exit(server: object) -> None:
    from gateway.gunicorn_worker import on_exit as skip_last_collection

    skip_last_collection(server)
