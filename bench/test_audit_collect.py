"""bench/audit_collect.py on a small synthetic log: both passes run and load the same rows (no timing asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.audit_collect import cpu_per_line, synthetic_log


def test_both_passes_load_every_dicomweb_line(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    synthetic_log(log, 2_000, per_second=500)
    figures = cpu_per_line(log, None, tmp_path)
    healthz = sum(b'"uri":"/healthz"' in line for line in log.read_bytes().splitlines())
    assert figures["lines"] == 2_000 and figures["rows"] == figures["previous_rows"] == 2_000 - healthz
    assert min(figures["previous"], figures["collect"], figures["parse"]) > 0
