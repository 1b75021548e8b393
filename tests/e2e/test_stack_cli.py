"""Issue 2 as a user meets it: `dicom-gateway stack up` starts, answers /readyz through NGINX, stops on Ctrl-C with
no orphans, reuses ./var, refuses a busy port clearly; `--tls` serves HTTPS with HTTP/2 and Secure cookies.
Issue 11: every setting has one value whichever way it is given (flag, environment, generated under --var), used
alike by gunicorn, NGINX and seeding; the catalog is migrated once before the workers start; a start-up failure is
one readable line."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urljoin

import pydicom
import pytest
import requests

from gateway.dicomweb.multipart import encode_multipart
from gateway.tokens import TokenService
from gateway.tools.stack import Stack, free_port
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import AWS_TEST_ENV, lines_until
from tests.fixtures.servers import MotoServer, create_bucket

REPO = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")
STARTING = 180  # seconds stack up may take to print its links (migrating, seeding, on a loaded machine)


# every `stack up` a test started: one still running when its test ends (an assertion failed before the test
# stopped it) is stopped as a service manager stops it, and holds no port, process or folder past its test
_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_stack_left_running() -> Iterator[None]:
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()  # stack up takes its processes with it (PR_SET_PDEATHSIG)
                process.communicate()


def _start(
    var: Path, port: int, *extra: str, env: Mapping[str, str] | None = None, seed: bool = False
) -> subprocess.Popen[str]:
    """``dicom-gateway stack up`` as a user types it, with ``env`` added to this environment."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "stack",
            "up",
            *([] if seed else ["--no-seed"]),
            "--port",
            str(port),
            "--var",
            str(var),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_clean_environment(), **(env or {})},
    )
    _STARTED.append(process)
    return process


def _clean_environment() -> dict[str, str]:
    """This environment without DICOMGW_* settings, so each test says exactly which ones it gives."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DICOMGW_")}


def _printed(process: subprocess.Popen[str], last: str = "Ctrl-C stops everything.") -> dict[str, str]:
    """The ``name: value`` lines stack up prints, up to ``last``."""
    lines = lines_until(process, lambda line: line.strip() == last, f"stack up line {last!r}", STARTING)
    assert lines and lines[-1].strip() == last, f"stack up ended early: {process.communicate(timeout=30)}"
    return _fields(lines[:-1])


def _printed_through(process: subprocess.Popen[str], name: str) -> dict[str, str]:
    """The ``name: value`` lines stack up prints, up to the one named ``name`` (or the end of its output)."""
    lines = lines_until(
        process, lambda line: line.partition(":")[0].strip() == name, f"stack up line {name!r}", STARTING
    )
    return _fields(lines)


def _fields(lines: list[str]) -> dict[str, str]:
    return {name.strip(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


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


def _children(pid: int) -> list[int]:
    """The live children of ``pid`` (from /proc: a process that exits meanwhile is skipped)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in status:
            found.append(int(proc.name))
    return found


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
    # gunicorn's master imported the gateway's modules before it forked its workers (gateway/gunicorn_master.py):
    # numpy's core, which pydicom loads, is mapped in the master itself, and its two children are the workers
    [master] = [pid for pid in _children(process.pid) if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(_children(master)) == 2
    assert "_multiarray_umath" in Path(f"/proc/{master}/maps").read_text()
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


def _cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**_clean_environment(), "PYTHONPATH": str(REPO)},
    )
    return done.returncode, done.stdout, done.stderr


def test_stack_down_and_status_from_another_terminal(tmp_path: Path) -> None:
    """A stack started in the background (`nohup`, a script, another terminal) could be stopped only by finding and
    killing its process: `stack down` and `stack status` were `Error: No such command 'down'.` (exit 2). `down`
    stops it as Ctrl-C does (every process gone, the folder free for the next start); nothing running is said and
    is no error; `status` exits 0 or 3 (LSB's "not running"). Neither makes a folder for a mistyped --var."""
    var, port = tmp_path / "var", free_port()
    assert _cli("stack", "status", "--var", "var", cwd=tmp_path) == (
        3, "not running: no stack runs with --var var\n", ""
    )
    assert _cli("stack", "down", "--var", "var", cwd=tmp_path) == (
        0, "no stack is running with --var var: nothing to stop\n", ""
    )
    assert not var.exists()
    process = _start(var, port)
    _printed(process)
    _wait_ready(f"http://127.0.0.1:{port}", process)
    children = _processes_mentioning(str(var))
    assert len(children) >= 5  # nginx master + workers, gunicorn master + workers
    assert _cli("stack", "status", "--var", str(var), cwd=tmp_path) == (
        0, f"running with --var {var}: pid {process.pid}, http://127.0.0.1:{port}\n", ""
    )
    second = _start(var, free_port())
    _, err = second.communicate(timeout=60)
    assert (second.returncode, err) == (
        1,
        f"Error: another stack is running with --var {var}: stop it first (dicom-gateway stack down --var {var}), "
        "or choose another --var\n",
    )
    assert _cli("stack", "down", "--var", str(var), cwd=tmp_path) == (
        0, f"stopped the stack with --var {var} (pid {process.pid}, http://127.0.0.1:{port})\n", ""
    )
    out, err = process.communicate(timeout=30)  # its folder let go: it is ending, as after a Ctrl-C
    assert (process.returncode, out) == (0, "stopped.\n") and "Traceback" not in err
    assert not [pid for pid in children if _alive(pid)]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert _cli("stack", "status", "--var", str(var), cwd=tmp_path)[0] == 3
    assert _cli("stack", "down", "--var", str(var), cwd=tmp_path) == (
        0, f"no stack is running with --var {var}: nothing to stop\n", ""
    )
    again = _start(var, port)  # nothing blocks the next start
    _wait_ready(f"http://127.0.0.1:{port}", again)
    _stop(again)


def test_stack_up_without_a_built_viewer_prints_no_dead_link(tmp_path: Path) -> None:
    """A clone where `make viewer` has not run (no npm): the viewer and slide links would answer 404, so stack up
    says what is missing instead, and the DICOMweb root still works."""
    port = free_port()
    empty = tmp_path / "viewer" / "dist"  # as in a fresh clone: never built
    process = _start(tmp_path / "var", port, env={"DICOMGW_VIEWER_ROOT": str(empty)}, seed=True)
    try:
        lines = _printed_through(process, "api key")
        assert lines["viewer"] == f"not built: {empty} has no index.html (make viewer; needs npm)"
        assert "slide" not in lines
        assert requests.get(f"{lines['dicomweb']}/studies", timeout=10).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/viewer/", timeout=10).status_code == 404
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 0


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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--port", "99999"), "Invalid value for '--port': 99999 is not in the range 1<=x<=65535."),
        (("--port", "-1"), "Invalid value for '--port': -1 is not in the range 1<=x<=65535."),
        (("--host", "999.1.1.1"), "Error: cannot listen on '999.1.1.1': not an address or a name that resolves"),
        (("--host", "192.0.2.7"), "Error: cannot listen on 192.0.2.7 port {port}: Cannot assign requested address"),
        (("--wait", "0"), "Invalid value for '--wait': 0 is not in the range 1<=x<=3600."),
    ],
    ids=["port-too-large", "port-negative", "host-no-address", "host-not-ours", "wait-zero"],
)
def test_a_bad_port_or_host_is_one_clear_line(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    """A port out of range was a traceback and a host that is not this machine's a false "port in use"."""
    port = free_port()
    process = _start(tmp_path / "var", port, *flags)
    out, err = process.communicate(timeout=60)
    assert process.returncode in (1, 2), err
    assert message.format(port=port) in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err  # README: one line (click's usage block made it four)
    assert not _processes_mentioning(str(tmp_path / "var"))


def test_a_var_that_is_a_file_is_one_clear_line(tmp_path: Path) -> None:
    """`--var DIR` names a folder: a file there was `Error: [Errno 17] File exists: '...'` (session 20)."""
    var = tmp_path / "var"
    var.write_text("not a folder")
    process = _start(var, free_port())
    out, err = process.communicate(timeout=60)
    expected = (2, "", f"Error: Invalid value for '--var': Directory '{var}' is a file.\n")
    assert (process.returncode, out, err) == expected
    assert var.read_text() == "not a folder"


def ipv6_loopback_port() -> int:
    """A free port on ::1, or the test is skipped on a machine without an IPv6 loopback."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            return int(probe.getsockname()[1])
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")


def test_stack_up_on_ipv6_loopback(tmp_path: Path) -> None:
    """``--host ::1`` was refused as "port in use" (the probe spoke IPv4 only); NGINX needs it in brackets."""
    port = ipv6_loopback_port()
    process = _start(tmp_path / "var", port, "--host", "::1")
    try:
        _wait_ready(f"http://[::1]:{port}", process)
        assert requests.get(f"http://[::1]:{port}/healthz", timeout=10).json() == {"status": "ok"}
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"http://[::1]:{port}" in out


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_stack_up_on_every_address_prints_links_that_open_and_answers_each_client_on_its_own_name(
    tmp_path: Path, host: str
) -> None:
    """``--host 0.0.0.0`` printed ``http://0.0.0.0:port`` links, and RetrieveURLs pointed there too
    (DICOMGW_PUBLIC_URL was that address), unusable from any other machine; ``--host ::`` listened on IPv6 only."""
    if ":" in host and not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    port = free_port()
    [ct] = make_series(tmp_path / "ct", modality="CT", slices=1, seed=74, clean=True)
    process = _start(tmp_path / "var", port, "--host", host)
    try:
        printed = _printed(process)
        loopback = f"http://{'[::1]' if ':' in host else '127.0.0.1'}:{port}"
        assert printed["gateway"] == f"{loopback}  (ready: {loopback}/readyz)"
        _wait_ready(loopback, process)
        api_key = (tmp_path / "var" / "api.key").read_text().strip()
        # IPv4 reaches "::" too; each client's RetrieveURL is on the name it used for the gateway
        for client_url in dict.fromkeys([f"http://127.0.0.1:{port}", loopback]):
            stored = _stow(client_url, api_key, [ct])
            assert stored.status_code == 200, stored.text
            retrieve = stored.json()["00081190"]["Value"][0]
            assert retrieve == f"{client_url}/dicomweb/studies/{uids_of(ct)[0]}"
            assert requests.get(retrieve, headers={"Authorization": f"Bearer {api_key}"}, timeout=30).ok
    finally:
        _stop(process)


def test_tls_http2_and_secure_cookie(tmp_path: Path) -> None:
    """Also: starting prints no urllib3 InsecureRequestWarning (its requests to its own certificate warned, an
    error here, where warnings are errors); this test's clients check that certificate."""
    stack = Stack(tmp_path / "var", port=free_port(), tls=True)
    stack.start()
    cert = str(stack.var_dir / "tls" / "tls.crt")
    try:
        ready = requests.get(f"{stack.url}/readyz", verify=cert, timeout=10)
        assert ready.status_code == 200
        hsts = "max-age=63072000"
        assert ready.headers["Strict-Transport-Security"] == hsts
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
            verify=cert,
            timeout=10,
        )
        cookie = answer.headers["Set-Cookie"]
        assert answer.headers["Strict-Transport-Security"] == hsts
        assert cookie.startswith("__Host-dicomgw_token=")
        assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/" in cookie and "Domain" not in cookie
        # over TLS only the __Host- cookie counts: a plain one may come from a sibling subdomain or plain HTTP
        studies = f"{stack.url}/dicomweb/studies"
        for name, status in (("__Host-dicomgw_token", 200), ("dicomgw_token", 401)):
            read = requests.get(studies, headers={"Cookie": f"{name}={token}"}, verify=cert, timeout=10)
            assert read.status_code == status, (name, read.text)
            assert read.headers["Strict-Transport-Security"] == hsts  # on a JSON error and on a DICOMweb answer
        viewer = requests.get(f"{stack.url}/viewer/", verify=cert, timeout=10)
        assert (viewer.status_code, viewer.headers["Strict-Transport-Security"]) == (200, hsts)
        _upload_to_the_tls_stack(tmp_path, stack.url, stack.api_key, cert)
    finally:
        stack.stop()


def _upload_to_the_tls_stack(tmp_path: Path, url: str, api_key: str, cert: str) -> None:
    """`dicom-gateway upload` to `stack up --tls`, whose certificate this machine does not trust: each file's reason
    says to name the CA in REQUESTS_CA_BUNDLE, the stack's own in VAR/tls/tls.crt, at once (it was "connection failed
    (SSLError)" after five retries, ~15 s of waiting for what no retry changes); with it named, the files are stored."""
    files = make_series(tmp_path / "up", modality="CT", slices=2, rows=32, columns=32, seed=75, clean=True)
    command = [sys.executable, "-m", "gateway.cli", "upload", *map(str, files), "--url", f"{url}/dicomweb"]
    env = {**_clean_environment(), "DICOMGW_API_KEY": api_key, "COLUMNS": "300"}
    env.pop("REQUESTS_CA_BUNDLE", None)
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    reason = (
        "the server's TLS certificate is not trusted here: name its CA file in REQUESTS_CA_BUNDLE (a `stack up "
        "--tls` stack's own: VAR/tls/tls.crt)"
    )
    assert (refused.returncode, refused.stdout.count(reason)) == (2, 2), refused.stdout
    assert "SSLError" not in refused.stdout + refused.stderr
    # README's relative path, from a folder that has no var/: one line, exit 2 (requests' OSError was a traceback)
    relative = {**env, "REQUESTS_CA_BUNDLE": "var/tls/tls.crt"}
    missing = subprocess.run(command, env=relative, cwd=files[0].parent, capture_output=True, text=True)
    assert (missing.returncode, missing.stdout, missing.stderr) == (
        2,
        "",
        "Error: REQUESTS_CA_BUNDLE: var/tls/tls.crt: no such file (the CA file the server's certificate is checked "
        "against)\n",
    )
    trusted = {**env, "REQUESTS_CA_BUNDLE": cert}
    stored = subprocess.run(command, env=trusted, capture_output=True, text=True, timeout=120)
    assert stored.returncode == 0, stored.stdout
    assert re.search(r"stored\s*│\s*2\s*│", stored.stdout), stored.stdout


def test_demo_prints_working_signed_urls(tmp_path: Path) -> None:
    """What `make demo` shows a new user: the signed DICOMweb root reaches the seeded CT, the same root with a
    tampered token answers 401, and the viewer URL names the study with a token in the fragment. With
    DICOMGW_TOKEN_MAX_TTL below the demo's hour, its tokens live that long (seeding asked for an hour: the stack
    stopped, "seeding failed: issuing a token answered 400: ... ttl exceeds the maximum of 600 seconds")."""
    port = free_port()
    seeded = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "stack", "up", "--port", str(port), "--var", str(tmp_path / "var")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_clean_environment(), "DICOMGW_TOKEN_MAX_TTL": "600"},
    )
    try:
        lines = _printed_through(seeded, "slide")
        root = lines["dicomweb"]
        signing_key = (tmp_path / "var" / "signing.key").read_text().strip()
        claims = TokenService((signing_key,), 600).verify(root.split("/t/")[1].split("/dicomweb")[0], "read")
        assert claims.expires_at - claims.issued_at == 600
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


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    return out, err


def _stow(url: str, api_key: str, files: list[Path]) -> requests.Response:
    body = encode_multipart(files)
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": body.content_type,
        "Accept": "application/dicom+json",
    }
    return requests.post(f"{url}/dicomweb/studies", data=body, headers=headers, timeout=120)


def _read_through_nginx(url: str, api_key: str, ct: Path) -> None:
    """Every way NGINX reads a stored object: whole (X-Accel-Redirect), in a multipart study, a frame and a
    bulkdata range (storage byte ranges). Each must answer exactly the file's bytes."""
    study, series, sop = uids_of(ct)
    issued = requests.post(
        f"{url}/api/v1/tokens",
        json={"sub": "t", "studies": [study]},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    )
    instance = f"{url}/t/{issued.json()['token']}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    whole = requests.get(instance, headers={"Accept": "application/dicom"}, timeout=30)
    assert (whole.status_code, whole.headers["Content-Type"]) == (200, "application/dicom")
    assert whole.content == ct.read_bytes()
    retrieved = requests.get(instance.split("/series/")[0], timeout=30)
    assert retrieved.status_code == 200
    assert retrieved.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert ct.read_bytes() in retrieved.content
    pixels = pydicom.dcmread(ct).PixelData
    frame = requests.get(f"{instance}/frames/1", headers={"Accept": "application/octet-stream"}, timeout=30)
    assert frame.status_code == 200
    assert frame.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert frame.content == pixels
    [metadata] = requests.get(f"{instance}/metadata", timeout=30).json()
    bulkdata = urljoin(f"{instance}/metadata", metadata["7FE00010"]["BulkDataURI"])
    part = requests.get(bulkdata, headers={"Range": "bytes=100-199"}, timeout=30)
    assert (part.status_code, part.headers["Content-Type"]) == (206, "application/octet-stream")
    assert part.content == pixels[100:200]


@pytest.mark.parametrize("given_by", ["flags", "environment"])
def test_storage_and_database_given_elsewhere_are_where_nginx_reads(tmp_path: Path, given_by: str) -> None:
    """Defect 1: objects stored in the folder of --storage / DICOMGW_STORAGE_URL are the ones NGINX serves
    (whole instance, multipart study, frame, bulkdata range), and the catalog is the one named. A flag beats the
    variable: with both given, nothing lands where the variable points."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    storage_url, database_url = f"file://{elsewhere / 'objects'}", f"sqlite:///{elsewhere / 'catalog.db'}"
    decoy = tmp_path / "decoy"
    if given_by == "flags":
        extra = ("--storage", storage_url, "--database", database_url)
        env = {"DICOMGW_STORAGE_URL": f"file://{decoy / 'objects'}", "DICOMGW_DATABASE_URL": f"sqlite:///{decoy}.db"}
    else:
        extra, env = (), {"DICOMGW_STORAGE_URL": storage_url, "DICOMGW_DATABASE_URL": database_url}
    var, port = tmp_path / "var", free_port()
    url = f"http://127.0.0.1:{port}"
    [ct] = make_series(tmp_path / "ct", modality="CT", slices=1, seed=71, clean=True)
    sop = uids_of(ct)[2]
    process = _start(var, port, *extra, env=env)
    try:
        _wait_ready(url, process)
        api_key = (var / "api.key").read_text().strip()
        assert _stow(url, api_key, [ct]).status_code == 200
        assert [p.name for p in (elsewhere / "objects").rglob("*.dcm")] == [f"{sop}.dcm"]
        assert not list(var.rglob("*.dcm")) and not (var / "catalog.db").exists()
        assert not decoy.exists() and not Path(f"{decoy}.db").exists()
        with sqlite3.connect(elsewhere / "catalog.db") as catalog:
            assert catalog.execute("SELECT sop_uid FROM instances").fetchall() == [(sop,)]
        _read_through_nginx(url, api_key, ct)
        if given_by == "flags":
            _token_issue_signs_with_the_stacks_key(tmp_path, var, url, uids_of(ct))
    finally:
        _stop(process)


HOLD_POLICY = """
version = "private-at-rest"

[destinations.main]
storage = "default"
region = "eu-west-1"
identifiable_allowed = true

[[rules]]
id = "hold"
match = { tenant = "hold" }
action = "quarantine"
reason = "held for review"

[default]
action = "allow"
destination = "main"
"""


def test_stack_up_leaves_no_file_another_user_can_read(tmp_path: Path) -> None:
    """README, "Private at rest": the catalog (patients' names and IDs) and its -wal/-shm, the logs (subjects,
    client addresses), the spools, the quarantine and NGINX's files were 0644 in 0755 folders under a `stack up`
    var folder. After a workload (STOW, a file held for review, reads through NGINX, a search, the collector's
    passes) no file or folder is open to group or others, but stored objects (0644 for an NGINX of another user),
    in folders only the stack's user opens; the held file is 0600."""
    policy = tmp_path / "policy.toml"
    policy.write_text(HOLD_POLICY)
    var, port = tmp_path / "var", free_port()
    url = f"http://127.0.0.1:{port}"
    [ct] = make_series(tmp_path / "ct", modality="CT", slices=1, seed=73, clean=True)
    [held] = make_series(tmp_path / "held", modality="CT", slices=1, seed=74)
    process = _start(var, port, env={"DICOMGW_PHI_POLICY": str(policy)})
    try:
        _wait_ready(url, process)
        api_key = (var / "api.key").read_text().strip()
        assert _stow(url, api_key, [ct]).status_code == 200
        body = encode_multipart([held])
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": body.content_type,
            "Accept": "application/dicom+json",
            "X-DICOMGW-Tenant": "hold",
            "X-DICOMGW-Region": "eu-west-1",
        }
        assert requests.post(f"{url}/dicomweb/studies", data=body, headers=headers, timeout=120).status_code == 409
        _read_through_nginx(url, api_key, ct)
        found = requests.get(f"{url}/dicomweb/studies", headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
        assert found.status_code == 200
        time.sleep(6)  # the collector's passes over the access log, the derivative worker's
    finally:
        _stop(process)
    open_to_others = []
    for path in [var, *var.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        served = stat.S_ISREG(mode) and path.is_relative_to(var / "objects" / "studies")
        if (mode & 0o777) != (0o644 if served else mode & 0o700):
            open_to_others.append(f"{oct(mode & 0o777)} {path.relative_to(var)}")
    assert open_to_others == []
    assert stat.S_IMODE((var / "catalog.db").stat().st_mode) == 0o600
    [quarantined] = (var / "objects" / "quarantine").rglob("*.dcm")
    assert stat.S_IMODE(quarantined.stat().st_mode) == 0o600
    assert [stat.S_IMODE(p.stat().st_mode) for p in (var / "objects" / "studies").rglob("*.dcm")] == [0o644]


def _token_issue_signs_with_the_stacks_key(tmp_path: Path, var: Path, url: str, uids: tuple[str, str, str]) -> None:
    """`token issue --var DIR`, run from another folder, signs with the key `stack up --var DIR` made: the gateway
    accepts it, and without --url its URLs are that stack's (on its port; they were on :8080, where no stack ran).
    Without --var it looks in ./var, finds nothing there, and says so in one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMGW_")}
    command = [sys.executable, "-m", "gateway.cli", "token", "issue", "--study", uids[0], "--url", url]
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    issued = subprocess.run([*command[:-2], "--var", str(var)], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert issued.returncode == 0, issued.stderr
    printed = json.loads(issued.stdout)
    assert printed["viewer_url"].startswith(f"{url}/viewer/#study={uids[0]}&token="), printed
    root = printed["dicomweb_root"]
    assert root == f"{url}/t/{printed['token']}/dicomweb"
    assert requests.get(f"{root}/studies/{uids[0]}/series/{uids[1]}/instances", timeout=30).status_code == 200
    missing = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == "Error: DICOMGW_SIGNING_KEYS is not set (and no var/signing.key)"
    # --url prefixes the printed URLs, as DICOMGW_PUBLIC_URL does, and is checked as that is (it was printed as given)
    bad_url = [*command[:-1], "javascript:alert(1)", "--var", str(var)]
    refused = subprocess.run(bad_url, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.strip() == (
        "Error: Invalid value for --url: must be an http:// or https:// URL with a host: 'javascript:alert(1)'"
    )


def test_s3_storage_from_the_environment_is_what_nginx_reads(tmp_path: Path, moto_server: MotoServer) -> None:
    """Defect 1 on S3: DICOMGW_STORAGE_URL=s3://... in the environment makes NGINX read from that bucket through
    the S3 endpoint (not from a local folder), like the gateway writes to it."""
    bucket = f"dgw-cli-{secrets.token_hex(4)}"
    create_bucket(moto_server.endpoint, bucket)
    env = {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": moto_server.endpoint, "DICOMGW_STORAGE_URL": f"s3://{bucket}/data"}
    var, port = tmp_path / "var", free_port()
    url = f"http://127.0.0.1:{port}"
    [ct] = make_series(tmp_path / "ct", modality="CT", slices=1, seed=73, clean=True)
    process = _start(var, port, env=env)
    try:
        _wait_ready(url, process)
        api_key = (var / "api.key").read_text().strip()
        assert _stow(url, api_key, [ct]).status_code == 200
        assert not list(var.rglob("*.dcm"))
        _read_through_nginx(url, api_key, ct)
    finally:
        _stop(process)


def test_s3_storage_that_cannot_answer_says_why_the_stack_did_not_start(
    tmp_path: Path, moto_server: MotoServer
) -> None:
    """`stack up` with a bucket that does not exist (a typo, one never made) or an S3 endpoint that is down waited
    its 30 s and then said `the stack did not become ready within 30 s: {"checks":{"catalog":"ok","storage":
    "storage_unavailable"},"status":"unavailable"}` for both, which says neither what is wrong nor what to do.
    The line now says it, from storage's own probe; nothing is left running."""
    bucket = f"dgw-cli-missing-{secrets.token_hex(4)}"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}"  # nothing listens there once closed
    cases = [
        (moto_server.endpoint, "the bucket does not exist: create it, or fix --storage (DICOMGW_STORAGE_URL)"),
        (
            down,
            "storage check failed (EndpointConnectionError): check that it runs and that --storage "
            "(DICOMGW_STORAGE_URL), AWS_ENDPOINT_URL and the credentials are right",
        ),
    ]
    for endpoint, why in cases:
        env = {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": endpoint, "DICOMGW_STORAGE_URL": f"s3://{bucket}/data"}
        var = tmp_path / f"var-{len(why)}"
        process = _start(var, free_port(), "--wait", "8", env=env)  # README: `--wait` (30 s by default)
        out, err = process.communicate(timeout=STARTING)
        assert (process.returncode, out) == (1, "")
        assert err == (
            f"Error: the stack did not become ready within 8 s: storage s3://{bucket}/data at {endpoint}: {why} "
            f"(logs: {var.resolve() / 'logs'})\n"
        )
        assert not _processes_mentioning(str(var))


def test_a_derivative_queue_url_is_where_jobs_go_without_a_region_set(
    tmp_path: Path, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's table: `DICOMGW_DERIVE_QUEUE_URL` an SQS queue URL, jobs sent there. Without AWS_REGION or
    AWS_DEFAULT_REGION (a machine or container that names none: the URL does), every gunicorn worker died at
    start-up in botocore's NoRegionError, and `stack up` said only `gunicorn exited at start-up: ... Worker ...
    exited with code 3`. The client now takes the endpoint and region the queue URL names: the stack starts and a
    STOW's instance is sent to that queue (moto's SQS server here)."""
    import boto3

    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    sqs = boto3.client(
        "sqs", endpoint_url=moto_server.endpoint, region_name="us-east-1", aws_access_key_id="test",
        aws_secret_access_key="test",
    )  # fmt: skip
    queue = sqs.create_queue(QueueName=f"derive-{secrets.token_hex(4)}")["QueueUrl"]
    [ct] = make_series(tmp_path / "ct", modality="CT", slices=1, seed=75, clean=True)
    credentials = {name: AWS_TEST_ENV[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    port = free_port()
    process = _start(tmp_path / "var", port, env={**credentials, "DICOMGW_DERIVE_QUEUE_URL": queue})
    try:
        _printed(process)
        api_key = (tmp_path / "var" / "api.key").read_text().strip()
        stored = _stow(f"http://127.0.0.1:{port}", api_key, [ct])
        assert stored.status_code == 200, stored.text
        [message] = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5)["Messages"]
        assert json.loads(message["Body"]) == {"sop_uid": uids_of(ct)[2]}
    finally:
        _stop(process)


def _small_seed(var: Path, files: list[Path], study: str) -> None:
    """A seed already generated into ``var/seed`` (what a second `make demo` finds), small enough to be quick."""
    manifest = {"ct_study": study, "wsi_study": study, "files": [str(f) for f in files]}
    (var / "seed").mkdir(parents=True)
    (var / "seed" / "seed.json").write_text(json.dumps(manifest))


def test_keys_from_the_environment_are_the_only_keys(tmp_path: Path) -> None:
    """Defect 17: with DICOMGW_API_KEYS and DICOMGW_SIGNING_KEYS in the environment, seeding uses those keys, the
    printed URLs are signed with the newest signing key, and no second key is generated into --var."""
    var, port = tmp_path / "var", free_port()
    files = make_series(tmp_path / "ct", modality="CT", slices=2, seed=72, clean=True)
    study = uids_of(files[0])[0]
    _small_seed(var, files, study)
    old_key, new_key, api_key, other_api_key = (secrets.token_urlsafe(48) for _ in range(4))
    env = {"DICOMGW_SIGNING_KEYS": f"{old_key},{new_key}", "DICOMGW_API_KEYS": f"{api_key},{other_api_key}"}
    process = _start(var, port, env=env, seed=True)
    try:
        printed = _printed(process)
        assert printed["api key"].startswith("the first of DICOMGW_API_KEYS")
        root = printed["dicomweb"]
        token = root.split("/t/")[1].split("/dicomweb")[0]
        scope = TokenService((new_key,), 3600).verify(token, "read").scope
        assert scope is not None and scope.studies == {study}
        studies = requests.get(f"{root}/studies", timeout=30)
        assert studies.status_code == 200
        assert [s["0020000D"]["Value"][0] for s in studies.json()] == [study]
        assert printed["viewer"] == f"http://127.0.0.1:{port}/viewer/#study={study}&token={token}"
        assert not (var / "signing.key").exists() and not (var / "api.key").exists()
        # the second API key works too: the gateway has exactly the list from the environment
        answer = requests.post(
            f"http://127.0.0.1:{port}/api/v1/tokens",
            json={"sub": "t", "studies": [study]},
            headers={"Authorization": f"Bearer {other_api_key}"},
            timeout=30,
        )
        assert answer.status_code == 201
    finally:
        _stop(process)


def test_stack_resolves_each_setting_once(tmp_path: Path) -> None:
    """The Stack object the CLI builds: environment over generated files, flags over the environment."""
    var = tmp_path / "var"
    keys = ",".join(secrets.token_urlsafe(48) for _ in range(2))
    stack = Stack(
        var,
        storage_url="file:///srv/flag",
        extra_env={
            "DICOMGW_SIGNING_KEYS": keys,
            "DICOMGW_API_KEYS": "k" * 40,
            "DICOMGW_STORAGE_URL": "file:///srv/env",
            "DICOMGW_DATABASE_URL": "sqlite:////srv/env.db",
        },
    )
    env = stack.gateway_env()
    assert (stack.signing_key, env["DICOMGW_SIGNING_KEYS"]) == (keys.split(",")[1], keys)
    assert (stack.api_key, env["DICOMGW_API_KEYS"]) == ("k" * 40, "k" * 40)
    assert (stack.storage_url, env["DICOMGW_STORAGE_URL"]) == ("file:///srv/flag", "file:///srv/flag")
    assert (stack.database_url, env["DICOMGW_DATABASE_URL"]) == ("sqlite:////srv/env.db", "sqlite:////srv/env.db")
    assert sorted(p.name for p in var.iterdir()) == ["deid.key"]  # no key file that nothing would use


# -- defect 14: migrate once before the workers; every start-up failure is one line ------------------------------


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    from gateway.catalog.engine import MIGRATIONS

    return ScriptDirectory(str(MIGRATIONS)).get_current_head() or ""


def gateway_env(tmp_path: Path, **changes: str) -> dict[str, str]:
    """A complete production configuration under ``tmp_path`` (no DICOMGW_* of this shell), with ``changes``."""
    return {
        **_clean_environment(),
        "DICOMGW_SIGNING_KEYS": secrets.token_urlsafe(48),
        "DICOMGW_API_KEYS": secrets.token_urlsafe(48),
        "DICOMGW_STORAGE_URL": f"file://{tmp_path / 'objects'}",
        "DICOMGW_DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        **changes,
    }


def _serve_until_ready(argv: list[str], env: Mapping[str, str], port: int, cwd: Path) -> None:
    """Run gunicorn until /readyz answers 200, then stop it (TERM to the process this test started)."""
    server = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", server)
    except AssertionError:
        server.kill()  # the master: its workers follow
        raise
    server.terminate()
    _, err = server.communicate(timeout=60)
    assert "Traceback" not in err


def test_workers_never_migrate_and_db_upgrade_does_it_once(tmp_path: Path) -> None:
    """Workers on an empty catalog refuse with one line (so two of them can never race on a migration);
    `dicom-gateway db upgrade` migrates, after which the same workers start."""
    env = gateway_env(tmp_path)
    port = free_port()
    argv = [str(GUNICORN), "gateway.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    # One worker for the refusal: when two fail at the same moment, gunicorn's master may raise its own HaltServer
    # a second time while halting (a traceback and exit 1, from gunicorn itself); it stops either way.
    one_worker = [*argv[:-1], "1"]
    refused = subprocess.run(one_worker, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 4  # gunicorn's "App failed to load": the master stops, no respawn loop
    ours = {line for line in refused.stderr.splitlines() if line.startswith("dicom-gateway: ")}
    assert ours == {
        f"dicom-gateway: DICOMGW_DATABASE_URL: the catalog schema is at revision (none), this version needs "
        f"{_head_revision()}: run `dicom-gateway db upgrade` before starting the workers"
    }
    assert "Traceback" not in refused.stderr
    upgrade = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
    )
    assert (upgrade.returncode, upgrade.stdout, upgrade.stderr) == (
        0,
        f"catalog schema at revision {_head_revision()}\n",
        "",
    )
    _serve_until_ready(argv, env, port, tmp_path)


@pytest.mark.parametrize("storage", ["s3://", "s3:///data", "s3://dicom/data/../x"])
def test_db_upgrade_with_a_malformed_s3_url_is_one_line(tmp_path: Path, storage: str) -> None:
    """README, Command line: `db upgrade` validates the settings; Configuration: a bad value stops start-up with a
    message naming it. An S3 URL without a bucket or with a `..` prefix was a traceback (session 20)."""
    upgrade = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "db", "upgrade"],
        env=gateway_env(tmp_path, DICOMGW_STORAGE_URL=storage),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (upgrade.returncode, upgrade.stdout, upgrade.stderr) == (
        1,
        "",
        "Error: DICOMGW_STORAGE_URL: must be s3://bucket or s3://bucket/prefix\n",
    )
    assert not (tmp_path / "catalog.db").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DICOMGW_SIGNING_KEYS", ","), ("DICOMGW_SIGNING_KEYS", " , "), ("DICOMGW_API_KEYS", ",")],
)
def test_db_upgrade_with_a_key_list_that_holds_no_key_is_one_line(tmp_path: Path, variable: str, value: str) -> None:
    """README, Configuration: a missing required value stops start-up with a message naming it. A list of only
    commas left no key at all (nothing to sign or call with), yet passed for set (session 20)."""
    upgrade = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "db", "upgrade"],
        env=gateway_env(tmp_path, **{variable: value}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected = (1, "", f"Error: {variable}: is required but not set\n")
    assert (upgrade.returncode, upgrade.stdout, upgrade.stderr) == expected
    assert not (tmp_path / "catalog.db").exists()


@pytest.mark.parametrize("variable", ["DICOMGW_TOKEN_MAX_TTL", "DICOMGW_SESSION_MAX", "DICOMGW_DELETE_SETTLE"])
def test_an_integer_setting_past_32_bits_is_one_line(tmp_path: Path, variable: str) -> None:
    """An integer setting is bounded as a request's integers are: DICOMGW_TOKEN_MAX_TTL=10**20 passed, and then
    `token issue --ttl` of a large number died in a traceback formatting the expiry (session 20)."""
    env = gateway_env(tmp_path, **{variable: str(10**20)})
    upgrade = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "db", "upgrade"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert (upgrade.returncode, upgrade.stdout, upgrade.stderr) == (
        1,
        "",
        f"Error: {variable}: must be at most 2147483647\n",
    )
    if variable == "DICOMGW_TOKEN_MAX_TTL":
        issue = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "token", "issue", "--study", "1.2.3", "--ttl", str(10**17)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert (issue.returncode, issue.stdout, issue.stderr) == (
            1,
            "",
            "Error: DICOMGW_TOKEN_MAX_TTL: must be at most 2147483647\n",
        )


def test_container_gunicorn_migrates_once_in_the_master(tmp_path: Path) -> None:
    """The image's command (gunicorn with docker/gunicorn.conf.py) on an empty catalog: on_starting migrates
    before any worker exists (workers cannot migrate, see above), so the first start always boots."""
    port = free_port()
    env = gateway_env(tmp_path, GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="2", GUNICORN_THREADS="2")
    argv = [str(GUNICORN), "--config", str(REPO / "docker" / "gunicorn.conf.py"), "gateway.wsgi:application"]
    _serve_until_ready(argv, env, port, tmp_path)
    with sqlite3.connect(tmp_path / "catalog.db") as catalog:
        assert catalog.execute("SELECT version_num FROM alembic_version").fetchall() == [(_head_revision(),)]
    # a bad setting stops the master before any worker: one line, no traceback
    bad = subprocess.run(
        argv, env={**env, "DICOMGW_SIGNING_KEYS": "short"}, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1
    assert bad.stderr.splitlines()[-1] == (
        "dicom-gateway: DICOMGW_SIGNING_KEYS: every key must be at least 32 characters"
    )
    assert "Traceback" not in bad.stderr and "Booting worker" not in bad.stderr


def test_container_gunicorn_refuses_a_metrics_folder_that_does_not_exist(tmp_path: Path) -> None:
    """README's table: PROMETHEUS_MULTIPROC_DIR is where the workers keep their counters. Set to a folder that does
    not exist (a volume not mounted), the image's gunicorn started and was ready, then every token decision was a
    500 and a STOW answered 500 after storing its instance (prometheus_client's FileNotFoundError): now the master
    stops before any worker, in one line naming the variable; with the folder made, the same command serves."""
    port = free_port()
    metrics = tmp_path / "metrics"
    env = gateway_env(
        tmp_path,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        GUNICORN_THREADS="2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
        PYTHONPATH=str(REPO),  # this checkout's gateway, whichever one the virtualenv installed
    )
    argv = [str(GUNICORN), "--config", str(REPO / "docker" / "gunicorn.conf.py"), "gateway.wsgi:application"]
    refused = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == f"dicom-gateway: PROMETHEUS_MULTIPROC_DIR: no such folder: {metrics}"
    assert "Traceback" not in refused.stderr and "Booting worker" not in refused.stderr
    metrics.mkdir()
    _serve_until_ready(argv, env, port, tmp_path)


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ((), {"DICOMGW_SIGNING_KEYS": "short"}, "DICOMGW_SIGNING_KEYS: every key must be at least 32 characters"),
        (
            (),
            {"DICOMGW_PHI_POLICY": "/nonexistent/policy.toml"},
            "DICOMGW_PHI_POLICY: no such file: /nonexistent/policy.toml",
        ),
        (("--storage", "file://objects"), {}, "DICOMGW_STORAGE_URL: must start with file:/// or s3://"),
        # session 20: an S3 URL without a bucket, or with a prefix no key can be under, was a traceback from the
        # storage module (ValueError, InvalidPath) after the settings had been called valid
        (("--storage", "s3://"), {}, "DICOMGW_STORAGE_URL: must be s3://bucket or s3://bucket/prefix"),
        ((), {"DICOMGW_STORAGE_URL": "s3://dicom/../x"}, "DICOMGW_STORAGE_URL: must be s3://bucket or s3://bucket/prefix"),
        (
            ("--database", "sqlite:///{tmp}/missing/catalog.db"),
            {},
            "DICOMGW_DATABASE_URL: cannot open the catalog: unable to open database file",
        ),
        (
            (),
            {"DICOMGW_CORS_ORIGINS": "*"},
            "DICOMGW_CORS_ORIGINS: each entry must be an origin such as https://portal.example.org: '*'",
        ),
        # session 28: NGINX matches Origin exactly, so an entry written otherwise than browsers send it (RFC 6454
        # 6.2: host in lower case and ASCII, no default port) started a gateway that never allowed that portal
        (
            (),
            {"DICOMGW_CORS_ORIGINS": "https://portal.example.org,https://Viewer.Example.org"},
            "DICOMGW_CORS_ORIGINS: 'https://Viewer.Example.org' never matches: browsers send this origin as "
            "'https://viewer.example.org' (host in lower case and ASCII, no default port): write that",
        ),
        (
            (),
            {"DICOMGW_CORS_ORIGINS": "https://portal.example.org:443"},
            "DICOMGW_CORS_ORIGINS: 'https://portal.example.org:443' never matches: browsers send this origin as "
            "'https://portal.example.org' (host in lower case and ASCII, no default port): write that",
        ),
        (
            (),
            {"DICOMGW_CORS_ORIGINS": "https://klinik-müller.example"},
            "DICOMGW_CORS_ORIGINS: 'https://klinik-müller.example' never matches: browsers send this origin as "
            "'https://xn--klinik-mller-klb.example' (host in lower case and ASCII, no default port): write that",
        ),
        # session 28: a queue's name or ARN was taken, and every upload logged "SQS unavailable", no derivative made
        (
            (),
            {"DICOMGW_DERIVE_QUEUE_URL": "arn:aws:sqs:eu-central-1:123456789012:derive"},
            "DICOMGW_DERIVE_QUEUE_URL: must be an SQS queue URL such as https://sqs.eu-central-1.amazonaws.com/"
            "123456789012/derive: 'arn:aws:sqs:eu-central-1:123456789012:derive'",
        ),
        (
            (),
            {"DICOMGW_PUBLIC_URL": "notaurl"},
            "DICOMGW_PUBLIC_URL: must be an http:// or https:// URL with a host: 'notaurl'",
        ),
        (
            (),
            {"DICOMGW_DELETE_SETTLE": "0"},
            "DICOMGW_DELETE_SETTLE: must be at least 5 (DICOMGW_REVOCATION_REFRESH + DICOMGW_AUTH_CACHE_SECONDS + 1): "
            "a node could still serve what a DELETE removed from a decision cached before it",
        ),
        # session 31: the settings only NGINX reads went into its configuration unchecked. A frame-ancestors list
        # separated by commas (as DICOMGW_CORS_ORIGINS is) was served, and browsers ignore it: no portal could frame
        # the viewer; a `"` ended the CSP header and began a directive of its own; MAX_UPLOADS=0 was no limit at all.
        (
            (),
            {"DICOMGW_FRAME_ANCESTORS": "'self' https://portal.example.org,https://other.example.org"},
            "DICOMGW_FRAME_ANCESTORS: 'https://portal.example.org,https://other.example.org': separate the sources "
            "with spaces, not commas, as CSP writes them",
        ),
        (
            (),
            {"DICOMGW_FRAME_ANCESTORS": 'https://portal.example.org" always; add_header X-Injected "1'},
            "DICOMGW_FRAME_ANCESTORS: 'https://portal.example.org\"' is not a CSP source: write 'self', 'none', a "
            "scheme such as https:, or an origin such as https://portal.example.org",
        ),
        (
            (),
            {"DICOMGW_FRAME_ANCESTORS": "self https://portal.example.org"},
            "DICOMGW_FRAME_ANCESTORS: 'self' is read as a host name: write 'self' with its single quotes",
        ),
        (
            (),
            {"DICOMGW_MAX_UPLOADS": "0"},
            "DICOMGW_MAX_UPLOADS: expected a whole number from 1 to 999999, got '0'",
        ),
    ],
    ids=[
        "short-signing-key",
        "missing-policy",
        "relative-storage",
        "s3-without-bucket",
        "s3-prefix-dot-dot",
        "catalog-cannot-open",
        "cors-star",
        "cors-upper-case-host",
        "cors-default-port",
        "cors-unicode-host",
        "derive-queue-arn",
        "public-url",
        "delete-settle-below-bound",
        "frame-ancestors-commas",
        "frame-ancestors-quote",
        "frame-ancestors-self-unquoted",
        "max-uploads-zero",
    ],
)
def test_start_up_failure_is_one_line(
    tmp_path: Path, flags: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    flags = tuple(flag.replace("{tmp}", str(tmp_path)) for flag in flags)
    process = _start(tmp_path / "var", free_port(), *flags, env=env)
    out, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (1, f"Error: {message}\n")
    assert out == ""
    assert not _processes_mentioning(str(tmp_path / "var"))


def test_seeding_failure_is_one_line_and_stops_everything(tmp_path: Path) -> None:
    """What `make demo` shows when seeding is refused (here: a seed file that is not DICOM, so STOW answers 409): the
    first file's reason and the way to start anyway (the line was the STOW answer's JSON cut at 300 characters,
    which reached no reason: a PHI policy refusing the demo's fake PHI said nothing a user could act on)."""
    var, port = tmp_path / "var", free_port()
    not_dicom = tmp_path / "not-dicom.dcm"
    not_dicom.write_bytes(b"not DICOM at all")
    _small_seed(var, [not_dicom], "1.2.3")
    process = _start(var, port, seed=True)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    [line] = err.splitlines()
    assert line == (
        "Error: seeding failed: the STOW-RS upload answered 409: 1 of 1 demo files not stored, the first 0xC000 not a "
        "DICOM Part 10 file (no 'DICM' prefix after the 128-byte preamble); `stack up --no-seed` starts without them"
    )
    assert out.splitlines()[-1] == "stopped."
    assert not _processes_mentioning(str(var))


def test_keys_generate_prints_count_distinct_keys() -> None:
    """README: `keys generate [--count N]` prints random keys, one per line. A count below 1 printed nothing and
    exited 0 (a script reading its output got no key and no error); it is a usage error now."""
    command = [sys.executable, "-m", "gateway.cli", "keys", "generate"]
    done = subprocess.run([*command, "--count", "3"], capture_output=True, text=True, check=True)
    keys = done.stdout.splitlines()
    assert len(set(keys)) == 3 and all(re.fullmatch(r"[A-Za-z0-9_-]{64}", key) for key in keys)
    for count in ("0", "-1"):
        refused = subprocess.run([*command, "--count", count], capture_output=True, text=True)
        assert (refused.returncode, refused.stdout) == (2, "")
        assert refused.stderr.strip() == f"Error: Invalid value for '--count': {count} is not in the range 1<=x<=1000."


def test_version_prints_the_installed_version() -> None:
    """`dicom-gateway --version`, what an operator runs before `db upgrade` or a bug report: it was "Error: No such
    option '--version'", exit 2, and nothing else said which version is installed. It prints the version the
    package declares (pyproject.toml), exit 0."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "--version"], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"dicom-gateway {declared}\n", "")
