"""README, "The two commands": `make demo` and `make test` install what they need. Run with the real make on the
repository's Makefile, the OS met through shims on PATH (python3, apt-get, id, node, npm), the virtualenv in a
temporary folder and pip replaced by `true`, so nothing is installed or built."""

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


NPM = '#!/bin/sh\necho "$*" >> "$SHIMS/npm.log"\n'


def build_viewer(tmp_path: Path, version: str) -> subprocess.CompletedProcess[str]:
    """`make viewer` forced to build (-B), node reporting ``version``, npm a shim that only logs."""
    import shutil

    shims = tmp_path / "shims"
    shims.mkdir(parents=True)
    real = shutil.which("node")
    assert real is not None
    # the shim's `node -e` runs the real node under the version's name: process.versions says what it is
    (shims / "node").write_text(
        f'#!/bin/sh\nif [ "$1" = "-e" ]; then exec "{real}" -e "Object.defineProperty(process.versions, \'node\', '
        f'{{value: \'{version}\'}}); $2"; fi\nif [ "$1" = "-v" ]; then echo "v{version}"; exit 0; fi\nexit 2\n'
    )
    (shims / "npm").write_text(NPM)
    for name in ("node", "npm"):
        (shims / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "SHIMS": str(shims)}
    return subprocess.run(
        ["make", "-s", "-B", "-C", str(ROOT), "viewer/dist/index.html"],
        env=env, capture_output=True, text=True, timeout=60,
    )


def test_the_viewer_build_names_a_node_too_old_for_vite_in_one_line(tmp_path: Path) -> None:
    """README: Debian 12's own nodejs (18) is too old for the Vite 7 build. Vite only warned and the build died in a
    stack trace; the Makefile now says so in one line before npm runs."""
    run = build_viewer(tmp_path, "18.19.0")
    assert run.returncode != 0
    assert run.stdout == (
        "the viewer build needs Node.js 20.19+ or 22.12+ (Vite 7), this machine has v18.19.0: install one from "
        "NodeSource or your distribution (Debian 12's nodejs is 18)\n"
    )
    assert not (tmp_path / "shims" / "npm.log").exists()


def test_the_viewer_build_runs_npm_on_a_node_vite_takes(tmp_path: Path) -> None:
    for version in ("20.19.0", "22.12.0", "24.1.0"):
        run = build_viewer(tmp_path / version, version)
        assert run.returncode == 0, run.stdout + run.stderr
        assert (tmp_path / version / "shims" / "npm.log").read_text() == (
            "ci --no-audit --no-fund --loglevel=error\nrun build\n"
        )
