"""B3: whole-study multipart retrieve of the 200-slice CT, and of the 32,000-frame WSI instance, MB/s vs NGINX
serving the same bytes as one static file, plus the gateway's RSS while it happens.

``GET {root}/studies/{study}`` (and ``.../instances/{sop}`` for the WSI) with
``Accept: multipart/related; type="application/dicom"``: Python answers with an SSI plan of whole-object
includes and NGINX streams the objects from storage. The baseline is a second NGINX (bench/common.py) serving
one file holding the concatenated objects (for the WSI: the object itself). Both are read by the same client,
``wrk -t1 -c1`` (one viewer downloading), for a fixed time, alternating static and gateway in three rounds; MB/s
is bytes received over the run's duration (parts' headers included, a few hundred bytes per instance), and the
check uses the median of the per-round ratios. The body of one
gateway answer is checked part by part against the source files first (that is also the cold-plan request,
timed on its own). RSS is the sum over gunicorn's master and workers, sampled every 20 ms; the target is
growth of the peak over the idle figure before the runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time

import requests

from bench.common import (
    Report,
    RssSampler,
    cpu_seconds,
    ct_series,
    header,
    main,
    median,
    require_wrk,
    run_dir,
    run_wrk,
    running_stack,
    static_server,
    timed,
    uids,
    wsi,
)

ACCEPT = 'multipart/related; type="application/dicom"'
DURATION = 4.0
ROUNDS = 3


def _parts(body: bytes, content_type: str) -> list[bytes]:
    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"').encode()
    chunks = body.split(b"--" + boundary)
    out = []
    for chunk in chunks[1:-1]:
        _, _, payload = chunk.partition(b"\r\n\r\n")
        out.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return out


def _link_or_copy(source: os.PathLike[str], target: os.PathLike[str]) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def run() -> Report:
    started = time.perf_counter()
    report = header("B3", "whole-study multipart retrieve vs static NGINX, gateway RSS")
    require_wrk()
    ct = ct_series()
    slide = wsi()
    ct_study, _, _ = uids(ct[0])
    wsi_study, wsi_series, wsi_sop = uids(slide)
    with run_dir("b3") as var:
        static_root = var / "static"
        static_root.mkdir()
        with (static_root / "ct-study.bin").open("wb") as out:
            for path in ct:
                with path.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        _link_or_copy(slide, static_root / "wsi.dcm")
        with running_stack(var / "stack") as stack, static_server(static_root, var / "nginx-static") as static:
            for files in (ct, [slide]):
                seconds, size, _ = stack.stow(files)
                report.say(f"stored {len(files)} instance(s), {size / 1e6:.0f} MB, in {seconds:.1f} s")
            root = stack.root_path(stack.token([ct_study, wsi_study]))
            cases = [
                ("CT study, 200 instances", f"{root}/studies/{ct_study}", "/ct-study.bin", ct),
                ("WSI instance, 32,000 frames", f"{root}/studies/{wsi_study}/series/{wsi_series}/instances/{wsi_sop}",
                 "/wsi.dcm", [slide]),
            ]
            for label, gateway_path, static_path, files in cases:
                # the first (cold plan) request, checked part by part against the source files
                t0 = time.perf_counter()
                answer = requests.get(stack.url + gateway_path, headers={"Accept": ACCEPT}, timeout=300)
                first_s = time.perf_counter() - t0
                if answer.status_code != 200:
                    raise AssertionError(f"{label}: {answer.status_code} {answer.text[:200]}")
                got = sorted(hashlib.sha256(p).hexdigest() for p in _parts(answer.content,
                                                                             answer.headers["Content-Type"]))
                want = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in files)
                if got != want:
                    raise AssertionError(f"{label}: the multipart parts are not the stored objects")
                size = sum(p.stat().st_size for p in files)
                report.say(f"{label}: {size / 1e6:.1f} MB of objects; first (cold plan) retrieve "
                           f"{first_s * 1000:.0f} ms = {size / 1e6 / first_s:.0f} MB/s (Python client, parts verified)")
                del answer

                spilled = stack.error_log_count("buffered to a temporary file")
                cpu_before = cpu_seconds(stack.nginx_pids())
                rss = stack.rss_probe()
                idle = rss()
                gw_rates, st_rates, ratios = [], [], []
                with RssSampler(rss) as sampler:
                    for _ in range(ROUNDS):
                        st = run_wrk(static, [static_path], duration=DURATION, connections=1, threads=1)
                        gw = run_wrk(stack.url, [gateway_path], headers={"Accept": ACCEPT}, duration=DURATION,
                                     connections=1, threads=1)
                        if st.errors or gw.errors:
                            raise AssertionError(f"{label}: errors (static {st.errors}, gateway {gw.errors})")
                        st_rates.append(st.mb_per_s)
                        gw_rates.append(gw.mb_per_s)
                        ratios.append(gw.mb_per_s / st.mb_per_s)
                        report.say(f"  static {st.summary()}")
                        report.say(f"  gateway {gw.summary()}")
                after = rss()
                nginx_cpu = cpu_seconds(stack.nginx_pids()) - cpu_before
                spilled = stack.error_log_count("buffered to a temporary file") - spilled
                report.say(f"{label}: the stack's NGINX used {nginx_cpu:.1f} s CPU during the gateway runs; "
                           f"its error log has {spilled} 'buffered to a temporary file' warnings")
                ratio = median(ratios)
                growth = (sampler.peak - idle) / 1e6
                report.say(f"{label}: gateway {median(gw_rates):,.0f} MB/s vs static {median(st_rates):,.0f} MB/s "
                           f"(medians of {ROUNDS}; ratios per round "
                           f"{', '.join(f'{x:.2f}' for x in ratios)}); gunicorn RSS idle {idle / 1e6:.0f} MB, peak "
                           f"{sampler.peak / 1e6:.0f} MB, after {after / 1e6:.0f} MB")
                report.check(f"{label}: MB/s gateway / static", ratio, ">= 0.8", ratio >= 0.8)
                report.check(f"{label}: gunicorn RSS growth (MB)", growth, "< 50 MB", growth < 50)
    return timed(report, started)


if __name__ == "__main__":
    main(run)
