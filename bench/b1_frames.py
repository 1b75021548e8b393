"""B1: frame latency on the 32,000-frame JPEG whole-slide image, through NGINX + auth_request.

Frames 1, 16,000 and 32,000 (`docs/design.md` §3: frame 32,000 costs what frame 1 costs). One keep-alive
client, requests interleaved across the three positions so machine noise hits them alike. Two regimes:

- **cold plan cache**: each request is a frame never asked for before (the 200 frames starting at 1, at 16,000,
  and the 200 ending at 32,000): Python makes the read plan of each of frames 1-99 and of 32,000 (the last block,
  partial, is not made: README "Distinct frames without Python"), and of one block of 100 frames for the others,
  each a plan-cache MISS for its first frame asked for and a HIT for the rest;
- **warm plan cache**: the same three frames again and again, so the plan comes from NGINX's cache (it is keyed
  without the token).

In both, the auth decision is cached per token and series for DICOMGW_AUTH_CACHE_SECONDS (2 s), as it is for a
viewer. Before timing, a few other frames warm the per-process instance cache of every gunicorn worker; the
access log's cache field confirms which regime each timed request was in. The Accept header is the one
Cornerstone/OHIF send. Target: p50(last)/p50(first) <= 1.2 and p50 < 10 ms.
"""

from __future__ import annotations

import time
from collections import Counter

from bench.common import Client, Report, header, main, percentile, run_dir, running_stack, timed, uids, wsi

FRAMES = 32_000
SEED = 7
SAMPLES = 200
ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
POSITIONS = {"first": 1, "middle": 16_000, "last": FRAMES}


def _cold_frames(position: str) -> list[int]:
    """SAMPLES distinct frames at a position: starting at 1 / 16,000, ending at 32,000."""
    if position == "first":
        return list(range(1, SAMPLES + 1))
    if position == "middle":
        return list(range(16_000, 16_000 + SAMPLES))
    return list(range(FRAMES - SAMPLES + 1, FRAMES + 1))


def run() -> Report:
    from gateway.tools.synth import wsi_tile

    started = time.perf_counter()
    report = header("B1", "frame latency, 32,000-frame JPEG WSI, through NGINX + auth")
    path = wsi(seed=SEED, frames=FRAMES)
    study, series, sop = uids(path)
    with run_dir("b1") as var, running_stack(var) as stack:
        seconds, size, _ = stack.stow([path])
        report.say(f"WSI {size / 1e6:.0f} MB stored in {seconds:.1f} s")
        base = f"{stack.root_path(stack.token([study]))}/studies/{study}/series/{series}/instances/{sop}/frames/"
        client = Client(stack.url)
        try:
            # Exact bytes first (single part), then warm every worker's instance cache on frames not timed below.
            for n in POSITIONS.values():
                status, body, _ = client.get(f"{base}{n}", {"Accept": "application/octet-stream"})
                if status != 200 or body != wsi_tile(SEED, n, frames=FRAMES):
                    raise AssertionError(f"frame {n}: status {status}, {len(body)} bytes, not the stored frame")
            for n in range(5_000, 5_040):
                client.get(f"{base}{n}", {"Accept": ACCEPT})

            timings: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
            lists = {p: _cold_frames(p) for p in POSITIONS}
            log_mark = len(stack.access_log())
            for i in range(SAMPLES):
                for position in POSITIONS:
                    n = lists[position][i]
                    status, body, took = client.get(f"{base}{n}", {"Accept": ACCEPT})
                    if status != 200 or wsi_tile(SEED, n, frames=FRAMES) not in body:
                        raise AssertionError(f"frame {n}: status {status}")
                    timings["cold"].setdefault(position, []).append(took)
            cold_log = stack.access_log()[log_mark:]
            expected = {n: wsi_tile(SEED, n, frames=FRAMES) for n in POSITIONS.values()}
            for n in POSITIONS.values():  # the warm frames' plans are cached by now (asked above)
                client.get(f"{base}{n}", {"Accept": ACCEPT})
            log_mark = len(stack.access_log())
            for _ in range(SAMPLES):
                for position, n in POSITIONS.items():
                    status, body, took = client.get(f"{base}{n}", {"Accept": ACCEPT})
                    if status != 200 or expected[n] not in body:
                        raise AssertionError(f"frame {n}: status {status}")
                    timings["warm"].setdefault(position, []).append(took)
            warm_log = stack.access_log()[log_mark:]
            report.say(f"every timed body was checked to hold the stored frame's bytes ({len(body)} bytes for the "
                       f"last one, multipart)")
        finally:
            client.close()

    cache = {"cold": Counter(e.get("cache") or "-" for e in cold_log),
             "warm": Counter(e.get("cache") or "-" for e in warm_log)}
    for regime in ("cold", "warm"):
        p50 = {p: percentile(v, 50) * 1000 for p, v in timings[regime].items()}
        p95 = {p: percentile(v, 95) * 1000 for p, v in timings[regime].items()}
        cells = ", ".join(f"{p} p50 {p50[p]:.2f} ms / p95 {p95[p]:.2f} ms" for p in POSITIONS)
        report.say(f"{regime} plan cache ({SAMPLES} requests each; NGINX plan cache {dict(cache[regime])}): {cells}")
        ratio = p50["last"] / p50["first"]
        report.check(f"{regime}: p50(32,000)/p50(1)", ratio, "<= 1.2", ratio <= 1.2)
        worst = max(p50.values())
        report.check(f"{regime}: worst p50 (ms)", worst, "< 10 ms", worst < 10.0)
    return timed(report, started)


if __name__ == "__main__":
    main(run)
