"""README, "The two commands": `make demo` and `make test` install what they need. Run with the real make on the
repository's Makefile, the OS met through shims on PATH (python3, apt-get, id), the virtualenv in a temporary folder
and pip replaced by `true`, so nothing is installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Debian's and Ubuntu's python3 without the python3-venv package: venv fails after making the folder, in a paragraph
PYTHON3 = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  if [ -e "$SHIMS/python3-venv" ]; then printf '#!/bin/sh\\n' > "$3/bin/python"; chmod +x "$3/bin/python"; exit 0; fi
  echo "The virtual environment was not created successfully because ensurepip is not" >&2
  echo "available.  On Debian/Ubuntu systems, you need to install the python3-venv" >&2
  exit 1
fi
exit 2
"""
APT_GET = """#!/bin/sh
echo "$*" >> "$SHIMS/apt-get.log"
case "$*" in *"install"*"python3-venv"*) touch "$SHIMS/python3-venv";; esac
"""
ID = '#!/bin/sh\necho "$FAKE_UID"\n'


def make_venv(tmp_path: Path, uid: int, venv_installed: bool = False) -> tuple[subprocess.CompletedProcess[str], Path]:
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, text in (("python3", PYTHON3), ("apt-get", APT_GET), ("id", ID)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    if venv_installed:
        (shims / "python3-venv").touch()
    venv = tmp_path / "venv"
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "SHIMS": str(shims), "FAKE_UID": str(uid)}
    run = subprocess.run(
        ["make", "-s", "-C", str(ROOT), f"VENV={venv}", "PIP=true", "venv"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    return run, venv


def test_make_installs_python3_venv_as_root_when_debian_lacks_it(tmp_path: Path) -> None:
    """A fresh Debian 12 or Ubuntu has python3 but not python3-venv: `make demo` stopped at `python3 -m venv` with
    its paragraph (make: *** Error 1), though it installs NGINX and Node itself. As root it installs the package, as
    it does NGINX, and makes the virtualenv."""
    run, venv = make_venv(tmp_path, uid=0)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == "installing OS packages: python3-venv\n"
    assert "install -y -qq python3-venv" in (tmp_path / "shims" / "apt-get.log").read_text()
    assert (venv / ".installed").exists() and (venv / "bin" / "python").exists()


def test_make_names_python3_venv_in_one_line_without_root(tmp_path: Path) -> None:
    run, venv = make_venv(tmp_path, uid=1000)
    assert run.returncode != 0
    assert run.stdout == "missing OS package: python3-venv (install it with: sudo apt-get install python3-venv)\n"
    assert "ensurepip" not in run.stderr and not venv.exists()  # no half-made virtualenv left to trip the next run
    assert not (tmp_path / "shims" / "apt-get.log").exists()


def test_make_installs_nothing_when_venv_works(tmp_path: Path) -> None:
    run, venv = make_venv(tmp_path, uid=0, venv_installed=True)
    assert (run.returncode, run.stdout) == (0, ""), run.stderr
    assert not (tmp_path / "shims" / "apt-get.log").exists()
    assert (venv / ".installed").exists()
