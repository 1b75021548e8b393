"""Checks of the benchmark helpers themselves (not timings): ``pytest bench/test_common.py``.

They use the real tools the benchmarks use: NGINX for the static baseline, wrk with bench/paths.lua.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from bench.common import (
    WRK,
    Check,
    RssSampler,
    children_of,
    cpu_seconds,
    descendants_of,
    nginx_workers,
    percentile,
    rss_of,
    run_wrk,
    static_server,
)
from gateway.tools.stack import NGINX


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 25) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([], 50) != percentile([], 50)  # NaN


def test_check_verdicts() -> None:
    assert Check("a", 1.0, "< 2", True).verdict == "PASS"
    assert Check("a", 3.0, "< 2", False).verdict == "MISS"
    assert Check("a", float("nan"), "< 2", None).verdict == "N/A"


def test_static_baseline_uses_the_stacks_worker_setting() -> None:
    assert nginx_workers() == "auto"


def test_process_figures_of_this_process() -> None:
    assert rss_of(os.getpid()) > 10 * 1024 * 1024
    assert rss_of(2**22 + 12345) == 0  # no such process
    before = cpu_seconds([os.getpid()])
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert cpu_seconds([os.getpid()]) >= before
    with RssSampler(lambda: rss_of(os.getpid()), interval=0.001) as sampler:
        time.sleep(0.02)
    assert sampler.peak >= min(sampler.samples) > 0
    assert children_of(os.getpid()) == []


def test_descendants_reach_the_processes_a_child_started() -> None:
    """A gunicorn worker's ingest processes are its fork server's children: B4 counts their CPU through this."""
    with subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True) as shell:
        assert shell.stdout is not None
        grandchild = int(shell.stdout.readline())
        try:
            assert children_of(os.getpid()) == [shell.pid]
            assert sorted(descendants_of(os.getpid())) == sorted([shell.pid, grandchild])
            assert descendants_of(shell.pid) == [grandchild]
        finally:
            os.kill(grandchild, signal.SIGKILL)
            shell.kill()


@pytest.mark.skipif(not (Path(WRK).exists() and Path(NGINX).exists()), reason="needs wrk and nginx")
def test_wrk_fetches_distinct_paths_round_robin(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for n in range(4):
        (root / str(n)).write_bytes(bytes([n]) * (1000 + n))
    with static_server(root, tmp_path / "nginx") as url:
        assert requests.get(f"{url}/3", timeout=5).content == b"\x03" * 1003
        result = run_wrk(url, [f"/{n}" for n in range(4)], duration=1, connections=2, threads=2)
        missing = run_wrk(url, ["/nope"], duration=1, connections=1, threads=1)
    assert result.requests > 8 and result.errors == 0
    assert result.wraps > 0  # 4 paths over 2 threads: each thread starts over many times in a second
    assert result.bytes > result.requests * 1000
    assert missing.errors == missing.requests > 0  # 404s are counted as errors
    served = [line.split('"')[1].split()[1] for line in (tmp_path / "nginx" / "access.log").read_text().splitlines()]
    assert {"/0", "/1", "/2", "/3"} <= set(served)
