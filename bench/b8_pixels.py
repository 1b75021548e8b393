"""B8: the Clean Pixel Data option, in-process: cost per frame of finding and masking burned-in text in a
300-frame ultrasound cine (640x480, ``synth us``: name, ID and dates in every frame).

Each file goes through ``PhiHook`` as an upload does: de-identify the header, re-scan, then (``pixels =
"clean"``) OCR, mask every frame, re-encode and re-scan. The baseline, in the same run on the same file, is
the header-only de-identification (``deidentify_file``, what a ``pixels = "refuse"`` rule does before it
refuses the file). Variants: native MONOCHROME2 with OCR on every frame (``ocr_stride = 1``, the default) and
on every 10th frame; JPEG Baseline colour (YBR_FULL_422) with every 10th frame. Peak RSS of this process
during the run (sampled every 20 ms) is reported against the native cine's Pixel Data size (92 MB).

Targets (set with issue 17; docs/design.md names none): OCR on every frame < 1,000 ms per frame; stride 10 < 150 ms per
frame; peak RSS added < 1.5x the native Pixel Data (one copy of it, masked in place, plus working memory).
"""

from __future__ import annotations

import os
import time

from bench.common import Report, RssSampler, header, main, run_dir, timed

FRAMES = 300
POLICY = {
    "version": "bench-7",
    "destinations": {"main": {"storage": "default", "region": "bench", "identifiable_allowed": False}},
    "default": {"action": "deidentify", "destination": "main", "pixels": "clean"},
    "deidentify": {"dates": "shift"},
}
KEY = "bench-key-" + "k" * 32


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run() -> Report:
    from gateway.hooks import UploadContext
    from gateway.phi.deidentify import deidentify_file
    from gateway.phi.hook import PhiHook
    from gateway.phi.policy import parse_policy
    from gateway.tools.synth.burned import make_us

    started = time.perf_counter()
    report = header("B8", f"Clean Pixel Data on a {FRAMES}-frame ultrasound cine (Tesseract OCR, in-process)")
    with run_dir("b8") as var:
        native = make_us(var / "native", frames=FRAMES, seed=70)
        jpeg = make_us(var / "jpeg", frames=FRAMES, seed=71, color=True, jpeg=True)
        sizes = native.stat().st_size / 1e6, jpeg.stat().st_size / 1e6
        report.say(f"native MONOCHROME2 {sizes[0]:.0f} MB, JPEG YBR_FULL_422 {sizes[1]:.0f} MB")
        for label, path, stride in (
            ("native, OCR every frame", native, 1),
            ("native, OCR every 10th frame", native, 10),
            ("JPEG, OCR every 10th frame", jpeg, 10),
        ):
            t0 = time.perf_counter()
            baseline = deidentify_file(path, var / "header-only.dcm", KEY, parse_policy(POLICY))
            header_ms = (time.perf_counter() - t0) * 1000 / FRAMES
            (var / "header-only.dcm").unlink()
            hook = PhiHook(parse_policy({**POLICY, "pixels": {"ocr_stride": stride}}), KEY, tmp_dir=var)
            idle = _rss()
            with RssSampler(_rss) as rss:
                t0 = time.perf_counter()
                outcome = hook(path, UploadContext(source="cli"))
                clean_ms = (time.perf_counter() - t0) * 1000 / FRAMES
            if outcome.action != "accept" or outcome.path is None or not baseline.sop_uid:
                raise AssertionError(f"{label}: not cleaned ({outcome.reason})")
            outcome.path.unlink()
            added = (rss.peak - idle) / 1e6
            regions = len(outcome.report["pixels"]["regions"])
            report.say(
                f"{label}: header-only de-identification {header_ms:.2f} ms/frame; with Clean Pixel Data "
                f"{clean_ms:.0f} ms/frame ({clean_ms * FRAMES / 1000:.0f} s per cine, {regions} regions); "
                f"peak RSS +{added:.0f} MB"
            )
            if stride == 1:
                report.check(f"{label} (ms/frame)", clean_ms, "< 1000 ms", clean_ms < 1000)
            else:
                report.check(f"{label} (ms/frame)", clean_ms, "< 150 ms", clean_ms < 150)
            if path == native:
                size = FRAMES * 640 * 480 / 1e6
                report.check(f"{label}: peak RSS added (MB)", added, f"< {1.5 * size:.0f} MB", added < 1.5 * size)
    return timed(report, started)


if __name__ == "__main__":
    main(run)
