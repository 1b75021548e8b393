"""B6: the token decision made inside the auth endpoint, in-process (no HTTP, no NGINX).

``gateway.auth.Authorizer.decide("GET", uri, ...)`` with a real ``TokenService`` (itsdangerous, HMAC-SHA256, two
signing keys as during a rotation) and the revocation list of a real SQLite catalog (reloaded every 2 s, as
configured by default). The URI is a frame URL carrying the token in the path prefix, the viewer's form; the
frame number changes every call.

- **cold**: a different, never-seen token every call, so ``TokenService``'s per-token verification cache misses
  and the signature is checked (5,000 tokens issued beforehand, outside the timing);
- **warm**: the same token every call (what NGINX asks while a viewer pages through a slide, once its own
  2-second decision cache expires).

Each call is timed alone with ``perf_counter_ns``. For context, the same run also times the in-process read plan
of one frame (``Planner.plan``, instance cached), the other Python step on a frame's first request.
Target: p50 < 100 us, cold and warm.
"""

from __future__ import annotations

import gc
import time

from bench.common import Report, header, main, percentile, run_dir, timed

COLD = 5_000
WARM = 20_000
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.2"
SOP = "1.2.826.0.1.3680043.8.498.1.2.3"


def _stats(values_ns: list[int]) -> tuple[float, float, float]:
    micro = [v / 1000 for v in values_ns]
    return percentile(micro, 50), percentile(micro, 95), percentile(micro, 99)


def run() -> Report:
    from gateway.auth import Authorizer
    from gateway.catalog import Catalog
    from gateway.config import parse_api_keys
    from gateway.tokens import TokenService

    started = time.perf_counter()
    report = header("B6", "token decision in-process (Authorizer.decide)")
    with run_dir("b6") as var:
        catalog = Catalog(f"sqlite:///{var / 'catalog.db'}")
        catalog.migrate()
        now = int(time.time())
        for i in range(100):  # a realistic, non-empty revocation list
            catalog.revoke(f"revoked-{i}", now + 3600)
        tokens = TokenService(("old-key-" + "a" * 40, "new-key-" + "b" * 40), max_ttl=3600)
        authorizer = Authorizer(tokens, parse_api_keys("api-key-" + "c" * 40), catalog.revoked_jtis, refresh=2.0)
        base = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/"
        issued = [tokens.issue(sub=f"user-{i}", studies=[STUDY], ttl=900).token for i in range(COLD)]
        report.say(f"token length {len(issued[0])} characters; {COLD:,} cold and {WARM:,} warm decisions")

        def decide(token: str, frame: int) -> None:
            decision = authorizer.decide("GET", f"/t/{token}{base}{frame}")
            if decision.study != STUDY:
                raise AssertionError("wrong decision")

        decide(issued[0], 1)  # loads the revocation list once, outside the timing
        gc.collect()
        cold: list[int] = []
        for i, token in enumerate(issued[1:], start=1):
            t0 = time.perf_counter_ns()
            decide(token, i)
            cold.append(time.perf_counter_ns() - t0)
        warm: list[int] = []
        token = issued[0]
        for i in range(WARM):
            t0 = time.perf_counter_ns()
            decide(token, i % 32_000 + 1)
            warm.append(time.perf_counter_ns() - t0)
        plan_line = _plan_timing()
        catalog.close()

    for name, values in (("cold (new token each call)", cold), ("warm (same token)", warm)):
        p50, p95, p99 = _stats(values)
        report.say(f"{name}: p50 {p50:.1f} us, p95 {p95:.1f} us, p99 {p99:.1f} us")
        report.check(f"{name}: p50 (us)", p50, "< 100 us", p50 < 100.0)
    if plan_line:
        report.say(plan_line)
    return timed(report, started)


def _plan_timing() -> str:
    """The read plan for one frame of an indexed 32,000-frame WSI, instance already cached (context only)."""
    from types import SimpleNamespace

    from bench.common import wsi
    from gateway.dicom.index import index_file
    from gateway.dicomweb.wado import Planner

    try:
        path = wsi()
        indexed = index_file(path)
        row = SimpleNamespace(
            study_uid=indexed.ids.study, series_uid=indexed.ids.series, sop_uid=indexed.ids.sop,
            transfer_syntax_uid=indexed.transfer_syntax_uid, storage_key="studies/x/instances/y.dcm",
            size=path.stat().st_size, etag='"e"', frame_media_type=indexed.frame_media_type,
            frame_index=indexed.frame_index, bulkdata="[]",
        )
        planner = Planner(lambda sop: row, lambda study, series: [row], lambda key: f"/{key}")
        uri = (f"/t/token/dicomweb/studies/{indexed.ids.study}/series/{indexed.ids.series}/instances/"
               f"{indexed.ids.sop}/frames/")
        accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
        planner.plan("GET", uri + "1", accept, "")
        times = []
        for n in range(1, 5_001):
            t0 = time.perf_counter_ns()
            planner.plan("GET", uri + str(n * 6 % 32_000 + 1), accept, "")
            times.append(time.perf_counter_ns() - t0)
        p50, p95, _ = _stats(times)
        return f"context: Planner.plan for one frame, in-process: p50 {p50:.1f} us, p95 {p95:.1f} us"
    except Exception as error:  # context only: never fail B6 because of it
        return f"context: Planner.plan not timed ({type(error).__name__}: {error})"


if __name__ == "__main__":
    main(run)
