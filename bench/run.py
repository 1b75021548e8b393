"""``make bench``: run B1-B8 one after the other and print a summary table.

``python -m bench.run`` runs all; ``python -m bench.run b1 b5`` runs some; ``--quick`` asks the benchmarks that
have a short form (B2, B4, B5) for it. A benchmark that cannot run (no wrk, no
nginx) is listed as SKIPPED with the reason; one that crashes is listed as ERROR and the others still run. Exit
status: 0 when everything ran (a MISS is a finding to report, not a crash), 1 when a benchmark crashed or was
skipped, so CI-style callers notice a benchmark that no longer works.
"""

from __future__ import annotations

import inspect
import sys
import time
import traceback
from collections.abc import Callable

from bench import b1_frames, b2_throughput, b3_retrieve, b4_ingest, b5_qido, b6_token, b7_mobile, b8_pixels
from bench.common import BenchSkip, Report

BENCHES: dict[str, Callable[..., Report]] = {
    "b6": b6_token.run,
    "b4": b4_ingest.run,
    "b1": b1_frames.run,
    "b2": b2_throughput.run,
    "b3": b3_retrieve.run,
    "b5": b5_qido.run,
    "b7": b7_mobile.run,
    "b8": b8_pixels.run,
}


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    wanted = [a.lower() for a in argv if a != "--quick"] or list(BENCHES)
    unknown = [a for a in wanted if a not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(sorted(BENCHES))}")
        return 2
    started = time.perf_counter()
    rows: list[tuple[str, str, str, str, str]] = []
    broken = False
    for name in sorted(wanted, key=list(BENCHES).index):
        try:
            run = BENCHES[name]
            report = run(quick=True) if quick and "quick" in inspect.signature(run).parameters else run()
        except BenchSkip as skip:
            print(f"{name.upper()} SKIPPED: {skip}", flush=True)
            rows.append((name.upper(), "-", "-", "-", f"SKIPPED: {skip}"))
            broken = True
            continue
        except Exception as error:
            traceback.print_exc()
            rows.append((name.upper(), "-", "-", "-", f"ERROR: {type(error).__name__}: {error}"[:200]))
            broken = True
            continue
        for check in report.checks:
            value = "not measured" if check.ok is None else f"{check.value:.3g}"
            verdict = check.verdict + (f" ({check.detail})" if check.ok is None and check.detail else "")
            rows.append((report.bench, check.name, value, check.target, verdict))

    print(f"\n== Summary ({time.perf_counter() - started:.0f} s)")
    headers = ("bench", "measure", "value", "target", "result")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(4)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
