"""The suite's own promise (README, "Tests"): a test that hangs fails with its traceback after the configured
timeout and the rest of the suite goes on, so a hang names itself instead of running into CI's clock (session 23's
CI run was stopped at 99 % by a poll that never ended)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_configured_timeout_is_the_readmes_fifteen_minutes() -> None:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["timeout"] == 15 * 60
    assert "A test still running after 15\nminutes (pytest-timeout" in (ROOT / "README.md").read_text()


def test_the_readmes_one_test_line_selects_one_test() -> None:
    """README, "Tests": the line marked "one test, one backend" collects exactly one test, on S3 (it was ``-k "frames
    and s3"``, which collects ten)."""
    block = (ROOT / "README.md").read_text().split("\n## Tests\n", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = {line.split("#", 1)[1].strip(): shlex.split(line.split("#", 1)[0]) for line in block.splitlines()}
    command = lines["one test, one backend"]
    assert command[0] == ".venv/bin/pytest", command
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *command[1:]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    collected = [line for line in run.stdout.splitlines() if "::" in line]
    assert run.returncode == 0, run.stdout[-2000:]
    assert len(collected) == 1 and "[s3]" in collected[0], collected


def test_a_hanging_test_fails_with_its_traceback_and_the_others_still_run(tmp_path: Path) -> None:
    """The same plugin and the same xdist mode as `make test`, the timeout shortened to 2 s."""
    (tmp_path / "test_hang.py").write_text(
        "import time\n\ndef test_waits_forever():\n    while True:\n        time.sleep(0.1)\n"
    )
    (tmp_path / "test_other.py").write_text("def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the repository's settings when under its tree
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile",
         "-o", "timeout=2", "-rf", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout[-2000:]
    # the line it hung on, then the failure; the others ran
    traceback = ">           time.sleep(0.1)\nE           Failed: Timeout (>2.0s) from pytest-timeout.\n"
    assert traceback in run.stdout, run.stdout[-3000:]
    assert "FAILED test_hang.py::test_waits_forever - Failed: Timeout" in run.stdout, run.stdout[-3000:]
    assert "= 1 failed, 2 passed in " in run.stdout, run.stdout[-3000:]


def test_postgresql_tests_find_the_os_packages_server_whatever_its_version(tmp_path: Path) -> None:
    """README, "Tests": PostgreSQL tests run the OS's binaries. `make test` installs Debian's `postgresql` (15 on
    Debian 12, 16 on Ubuntu 24.04) and takes any version as installed, but the tests looked in 15's folder alone: on
    Ubuntu every PostgreSQL test failed under `make test` (skipped alone). The newest server folder is taken; one of
    a client package (psql, no initdb) is not a server."""
    from gateway.tools.postgres import os_pg_bin

    def install(version: str, server: bool = True) -> None:
        (tmp_path / version / "bin").mkdir(parents=True)
        (tmp_path / version / "bin" / ("initdb" if server else "psql")).touch()

    assert os_pg_bin(tmp_path) == tmp_path / "15" / "bin"  # none: the folder the skip message names
    install("16")
    assert os_pg_bin(tmp_path) == tmp_path / "16" / "bin"
    install("9")
    install("17", server=False)
    assert os_pg_bin(tmp_path) == tmp_path / "16" / "bin"
