"""Issue 2 as a user meets it: `dicom-gateway stack up` starts, answers /readyz through NGINX, stops on Ctrl-C with
no orphans, reuses ./var, refuses a busy port clearly; `--tls` serves HTTPS with HTTP/2 and Secure cookies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import urllib3

from gateway.stack import Stack, free_port


def _start(var: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "stack",
            "up",
            "--no-seed",
            "--port",
            str(port),
            "--var",
            str(var),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(url: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("stack did not become ready")


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions ``text``, and all their descendants (NGINX workers do not repeat the
    master's arguments)."""
    found: set[int] = set()
    parents: dict[int, int] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.add(int(proc.name))
            status = (proc / "status").read_text()
        except OSError:
            continue
        ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "0")
        parents[int(proc.name)] = int(ppid)
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        grew = bool(children)
        found |= children
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


def test_stack_up_ready_then_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    process = _start(tmp_path / "var", port)
    _wait_ready(f"http://127.0.0.1:{port}", process)
    nginx_pid = int((tmp_path / "var" / "nginx" / "nginx.pid").read_text())
    children = _processes_mentioning(str(tmp_path / "var"))
    assert nginx_pid in children
    assert len(children) >= 5  # nginx master + workers, gunicorn master + workers
    key = (tmp_path / "var" / "signing.key").read_text()
    assert oct((tmp_path / "var" / "signing.key").stat().st_mode & 0o777) == "0o600"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped." in out
    assert "Traceback" not in err
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)]
    # a second run reuses ./var: same keys
    again = _start(tmp_path / "var", port)
    _wait_ready(f"http://127.0.0.1:{port}", again)
    again.send_signal(signal.SIGTERM)
    again.communicate(timeout=30)
    assert again.returncode == 0
    assert (tmp_path / "var" / "signing.key").read_text() == key


def test_busy_port_is_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = _start(tmp_path / "var", port)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert "Traceback" not in err


def test_tls_http2_and_secure_cookie(tmp_path: Path) -> None:
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    stack = Stack(tmp_path / "var", port=free_port(), tls=True)
    stack.start()
    try:
        assert requests.get(f"{stack.url}/readyz", verify=False, timeout=10).status_code == 200  # noqa: S501
        alpn = subprocess.run(
            ["openssl", "s_client", "-alpn", "h2", "-connect", f"127.0.0.1:{stack.port}", "-servername", "localhost"],
            input=b"",
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert b"ALPN protocol: h2" in alpn.stdout
        from gateway.tokens import TokenService

        token = TokenService((stack.signing_key,), 3600).issue(sub="tls", studies=["1.2.3"]).token
        answer = requests.get(
            f"{stack.url}/api/v1/session",
            params={"token": token, "next": "/viewer/"},
            allow_redirects=False,
            verify=False,
            timeout=10,
        )  # noqa: S501
        cookie = answer.headers["Set-Cookie"]
        assert cookie.startswith("__Host-dicomgw_token=")
        assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/" in cookie and "Domain" not in cookie
    finally:
        stack.stop()


def test_demo_prints_working_signed_urls(tmp_path: Path) -> None:
    """What `make demo` shows a new user: the signed DICOMweb root reaches the seeded CT, the same root with a
    tampered token answers 401, and the viewer URL names the study with a token in the fragment."""
    port = free_port()
    seeded = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "stack", "up", "--port", str(port), "--var", str(tmp_path / "var")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: dict[str, str] = {}
    try:
        assert seeded.stdout is not None
        deadline = time.monotonic() + 180
        while "slide" not in lines and time.monotonic() < deadline:
            line = seeded.stdout.readline()
            if not line:
                break
            name, _, value = line.partition(":")
            lines[name.strip()] = value.strip()
        root = lines["dicomweb"]
        studies = requests.get(f"{root}/studies", timeout=10)
        assert studies.status_code == 200
        [study] = studies.json()
        assert study["00080061"]["Value"] == ["CT"]
        token = root.split("/t/")[1].split("/dicomweb")[0]
        middle = len(token) // 2
        tampered = root.replace(token, token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :])
        assert requests.get(f"{tampered}/studies", timeout=10).status_code == 401
        viewer = lines["viewer"]
        assert viewer.startswith(f"http://127.0.0.1:{port}/viewer/#study={study['0020000D']['Value'][0]}&token=")
        assert requests.get(viewer.split("#")[0], timeout=10).status_code == 200
    finally:
        seeded.send_signal(signal.SIGINT)
        seeded.communicate(timeout=60)
    assert seeded.returncode == 0
