"""B7: mobile delivery. The bundled viewer in Chromium (Playwright, the Debian browser) with a phone viewport and
DevTools network emulation at 9 Mbit/s / 60 ms and 1.6 Mbit/s / 150 ms opens a 60-slice synthetic CT; measured: time
to the first displayed image, time until every slice is displayed at full quality, and bytes over the wire.

The baseline, in the same run on the same series: a stack without derivatives (``DICOMGW_DERIVATIVES=0``), so the
viewer gets the stored frames as before. The other stack runs the derivative worker; the run waits until every
slice's HTJ2K derivative is published (and reports how fast the worker made them), then each network profile loads
the viewer once per side, in a fresh browser context (empty cache). The two moments are the viewer's own performance
marks ``dgw-first-image`` (the rendered JPEG of the first slice the viewer shows until Cornerstone draws, or
Cornerstone's first picture if that comes first; ``dgw-first-cornerstone-image`` is reported too) and
``dgw-all-full-quality`` (milliseconds since navigation); bytes are the DevTools
``encodedDataLength`` of every response of the page (application, metadata and frames) and of the frames alone.

Targets (issue 14): at 9 Mbit/s first image < 1.5 s and every slice at full quality < 12 s; frame bytes of the
derivative ≤ 40 % of the original (lossless: the e2e tests compare decoded pixels).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import BenchSkip, Report, ct_series, header, main, run_dir, running_stack, timed, uids

SLICES = 60
CHROMIUM = "/usr/bin/chromium"
PROFILES = [("9 Mbit/s, 60 ms", 9.0, 60), ("1.6 Mbit/s, 150 ms", 1.6, 150)]
DERIVATIVE = "1.2.840.10008.1.2.4.202"
WAIT_SECONDS = 600.0  # a bound on one page load at 1.6 Mbit/s (31 MB of raw frames take ~160 s)


def _load(browser: Any, url: str, mbit: float, rtt_ms: int) -> dict[str, float]:
    """One cold page load under emulation: the viewer's two moments and the bytes received."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    sizes: dict[str, tuple[str, float]] = {}
    urls: dict[str, str] = {}
    cdp.on("Network.requestWillBeSent", lambda e: urls.__setitem__(e["requestId"], e["request"]["url"]))
    cdp.on("Network.loadingFinished",
           lambda e: sizes.__setitem__(e["requestId"], (urls.get(e["requestId"], ""), e["encodedDataLength"])))
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False,
        "latency": rtt_ms,
        "downloadThroughput": mbit * 1e6 / 8,
        "uploadThroughput": mbit * 1e6 / 8 / 4,
    })
    page.set_default_timeout(WAIT_SECONDS * 1000)
    page.goto(url)
    page.wait_for_function("() => document.getElementById('viewport').dataset.fullQualityMs !== undefined",
                           polling=100)
    data = page.evaluate("() => ({...document.getElementById('viewport').dataset})")
    time.sleep(0.5)  # let the last loadingFinished events arrive (they follow the bodies)
    total = sum(size for _, size in sizes.values())
    frames = sum(size for u, size in sizes.values() if "/frames/" in u)
    context.close()
    return {
        "first": float(data["firstImageMs"]) / 1000,
        "full": float(data["fullQualityMs"]) / 1000,
        "first_cs": float(data["firstCornerstoneMs"]) / 1000,
        "bytes": total,
        "frame_bytes": frames,
        "progressive": 1.0 if data.get("progressive") == "true" else 0.0,
    }


def _wait_for_derivatives(base: str, root: str, files: list[Path]) -> float:
    """Seconds from now until every slice answers with its derivative (the worker started at the STOW ack)."""
    started = time.perf_counter()
    accept = f"image/jphc; transfer-syntax={DERIVATIVE}, application/octet-stream; transfer-syntax=*"
    pending = list(files)
    while pending:
        if time.perf_counter() - started > WAIT_SECONDS:
            raise AssertionError(f"{len(pending)} derivatives still missing after {WAIT_SECONDS:.0f} s")
        study, series, sop = uids(pending[0])
        url = f"{base}{root}/studies/{study}/series/{series}/instances/{sop}/frames/1"
        answer = requests.get(url, headers={"Accept": accept, "Range": "bytes=0-0"}, timeout=30)
        if DERIVATIVE in answer.headers.get("Content-Type", ""):
            pending.pop(0)
        else:
            time.sleep(0.1)
    return time.perf_counter() - started


def run() -> Report:
    if not Path(CHROMIUM).exists():
        raise BenchSkip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BenchSkip("playwright is not installed (pip install -e '.[dev]')") from None
    if not (Path(__file__).resolve().parent.parent / "viewer" / "dist" / "index.html").exists():
        raise BenchSkip("the viewer is not built (make viewer)")
    started = time.perf_counter()
    report = header("B7", f"mobile delivery: the viewer on a {SLICES}-slice CT over emulated phone networks")
    files = ct_series(seed=14, slices=SLICES)
    raw = sum(f.stat().st_size for f in files)
    with run_dir("b7") as var, \
            running_stack(var / "original", {"DICOMGW_DERIVATIVES": "0"}) as original, \
            running_stack(var / "derivative", derive_worker=True) as derived:
        study = uids(files[0])[0]
        original.stow(files)
        stow_seconds, _, _ = derived.stow(files)
        derive_seconds = stow_seconds + _wait_for_derivatives(derived.url, derived.root_path(derived.token([study])),
                                                              files)
        report.say(f"{SLICES} slices, {raw / 1e6:.1f} MB stored; STOW {stow_seconds:.1f} s; every derivative "
                   f"published {derive_seconds:.1f} s after the upload began ({SLICES / derive_seconds:.1f} "
                   f"slices/s, one worker)")
        links = {
            "original": requests.post(f"{original.url}/api/v1/tokens", json={"sub": "bench", "studies": [study]},
                                      headers=original.api_headers, timeout=30).json()["viewer_url"],
            "derivative": requests.post(f"{derived.url}/api/v1/tokens", json={"sub": "bench", "studies": [study]},
                                        headers=derived.api_headers, timeout=30).json()["viewer_url"],
        }
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            try:
                for label, mbit, rtt in PROFILES:
                    runs = {side: _load(browser, links[side], mbit, rtt) for side in ("original", "derivative")}
                    o, d = runs["original"], runs["derivative"]
                    if not d["progressive"] or o["progressive"]:
                        raise AssertionError("the derivative side did not load progressively, or the original did")
                    for side, r in runs.items():
                        report.say(f"{label}, {side}: first image {r['first']:.2f} s (drawn by Cornerstone "
                                   f"{r['first_cs']:.2f} s), every slice at full quality "
                                   f"{r['full']:.1f} s, {r['bytes'] / 1e6:.1f} MB over the wire "
                                   f"({r['frame_bytes'] / 1e6:.1f} MB of frames)")
                    report.say(f"{label}, derivative / original: first image {d['first'] / o['first']:.2f}, "
                               f"full quality {d['full'] / o['full']:.2f}, bytes {d['bytes'] / o['bytes']:.2f}, "
                               f"frame bytes {d['frame_bytes'] / o['frame_bytes']:.2f}")
                    if mbit == 9.0:
                        report.check("9 Mbit/s first image, derivative (s)", d["first"], "< 1.5 s", d["first"] < 1.5)
                        report.check("9 Mbit/s every slice at full quality, derivative (s)", d["full"], "< 12 s",
                                     d["full"] < 12)
                        ratio = d["frame_bytes"] / o["frame_bytes"]
                        report.check("frame bytes derivative / original", ratio, "<= 0.40", ratio <= 0.40)
            finally:
                browser.close()
    return timed(report, started)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(run)
