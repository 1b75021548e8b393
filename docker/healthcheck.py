"""Container health check: ``python healthcheck.py URL`` exits 0 when URL answers 200 in time, else 1.

The gateway image is python:3.11-slim, which has no curl or wget; this needs only the standard library. Used
by the gateway image's HEALTHCHECK, the compose file and the ECS task definition. Redirects are not followed
(a redirect is not health), and nothing from the answer is printed but the status, so no header or token can
end up in ``docker inspect`` output.
"""

from __future__ import annotations

import http.client
import sys
import urllib.parse

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def check(url: str = DEFAULT_URL, timeout: float = 3.0) -> int:
    """0 if ``GET url`` answers 200, 1 otherwise (refused, timeout, other status). Only http:// URLs."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        print(f"unsupported health check URL: {url}", file=sys.stderr)
        return 1
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/", headers={"User-Agent": "dicomgw-healthcheck"})
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        print(f"unhealthy: {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    if status != 200:
        print(f"unhealthy: HTTP {status}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else DEFAULT_URL
    return check(url)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
