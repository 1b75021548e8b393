"""Issue 11, defect 16: STOW-RS RetrieveURLs are absolute. On DICOMGW_PUBLIC_URL when it is set (the harness
stacks set it; tests/e2e/test_stow.py checks those); without it, on the scheme and host the client used, as NGINX
passes them to gunicorn (Host, X-Forwarded-Proto): a client cannot talk the gateway into another scheme."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import requests
import urllib3
from dicomweb_client.api import DICOMwebClient

from gateway.dicomweb.multipart import encode_multipart
from gateway.tools.stack import NGINX, Stack, free_port
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.test_viewer import NetworkLog, browser, open_page, wait_ready  # noqa: F401 - browser is a fixture


def test_retrieve_urls_without_a_public_url_follow_the_request(tmp_path: Path) -> None:
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    files = make_series(tmp_path / "ct", modality="CT", slices=2, seed=81, clean=True)
    study, series, _ = uids_of(files[0])
    stack = Stack(tmp_path / "var", port=free_port(), tls=True, extra_env={"DICOMGW_PUBLIC_URL": ""})
    stack.start()
    try:
        issued = requests.post(
            f"{stack.url}/api/v1/tokens",
            json={"sub": "stow", "studies": [study], "actions": ["read", "write"]},
            headers={"Authorization": f"Bearer {stack.api_key}"},
            verify=False,  # noqa: S501 - the stack's own self-signed certificate
            timeout=30,
        )
        assert issued.status_code == 201
        token = issued.json()["token"]
        for host, forged in (("localhost", {}), ("127.0.0.1", {"X-Forwarded-Proto": "http"})):
            body = encode_multipart(files)
            answer = requests.post(
                f"https://{host}:{stack.port}/t/{token}/dicomweb/studies",
                data=body,
                headers={"Content-Type": body.content_type, "Accept": "application/dicom+json", **forged},
                verify=False,  # noqa: S501
                timeout=60,
            )
            assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/dicom+json")
            root = f"https://{host}:{stack.port}/t/{token}/dicomweb"
            assert answer.json()["00081190"]["Value"] == [f"{root}/studies/{study}"]
            urls = sorted(item["00081190"]["Value"][0] for item in answer.json()["00081199"]["Value"])
            expected = sorted(f"{root}/studies/{study}/series/{series}/instances/{uids_of(f)[2]}" for f in files)
            assert urls == expected
            # and the URL works as it stands
            first = requests.get(urls[0], headers={"Accept": "application/dicom"}, verify=False, timeout=30)  # noqa: S501
            assert (first.status_code, first.headers["Content-Type"]) == (200, "application/dicom")
            assert first.content in {f.read_bytes() for f in files}
    finally:
        stack.stop()


def _raw(port: int, request: str) -> tuple[str, bytes]:
    """The status line and body of the answer to ``request``, sent as written (no client library adds a Host)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request.encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\ncontent-length: " in head.lower(), head  # the whole body, not chunked
    return head.decode("latin-1").split("\r\n")[0], body


def test_urls_without_a_public_url_name_the_authority_the_client_addressed(tmp_path: Path) -> None:
    """Without DICOMGW_PUBLIC_URL, an HTTP/1.0 client that sends no Host got RetrieveURLs and a token's roots with
    no authority at all (``http:/dicomweb/studies/...``), and a request in absolute form (``GET
    http://gw.example:8080/dicomweb/studies``, what a client that takes the gateway for a proxy sends) got the Host
    header's, which RFC 9112 3.2.2 has the server ignore then. They name the request target's authority, else the
    Host header's, else the address and port the connection came in on."""
    [path] = make_series(tmp_path / "ct", modality="CT", slices=1, rows=16, columns=16, seed=2612, clean=True)
    study = uids_of(path)[0]
    stack = Stack(tmp_path / "var", port=free_port(), extra_env={"DICOMGW_PUBLIC_URL": ""})
    stack.start()
    try:
        key = f"Authorization: Bearer {stack.api_key}\r\n"
        body = path.read_bytes()
        stored = requests.post(
            f"{stack.url}/dicomweb/studies",
            data=body,
            headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/dicom"},
            timeout=30,
        )
        assert stored.status_code == 200, stored.text
        search = f"/dicomweb/studies?StudyInstanceUID={study}"
        for request, authority in (
            (f"GET {search} HTTP/1.0\r\n{key}\r\n", f"127.0.0.1:{stack.port}"),
            (f"GET http://gw.example:8080{search} HTTP/1.1\r\nHost: other\r\n{key}Connection: close\r\n\r\n",
             "gw.example:8080"),
            (f"GET {search} HTTP/1.1\r\nHost: gw.example:8080\r\n{key}Connection: close\r\n\r\n", "gw.example:8080"),
        ):
            status, answer = _raw(stack.port, request)
            assert status == "HTTP/1.1 200 OK", (status, answer[:200])
            [match] = json.loads(answer)
            assert match["00081190"]["Value"] == [f"http://{authority}/dicomweb/studies/{study}"], request
        issue = json.dumps({"sub": "raw", "studies": [study]})
        status, answer = _raw(
            stack.port,
            f"POST /api/v1/tokens HTTP/1.0\r\n{key}Content-Type: application/json\r\nContent-Length: {len(issue)}\r\n"
            f"\r\n{issue}",
        )
        assert status.startswith("HTTP/1.1 201 "), (status, answer)
        issued = json.loads(answer)
        assert issued["dicomweb_root"] == f"http://127.0.0.1:{stack.port}/t/{issued['token']}/dicomweb"
    finally:
        stack.stop()


PROXY_CONF = """
pid "{base}/proxy.pid";
error_log "{base}/proxy.err" warn;
daemon off;
{user}
events {{}}
http {{
    access_log off;
    client_body_temp_path "{base}/tmp";
    proxy_temp_path "{base}/tmp";
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location /pacs/ {{
            proxy_pass http://127.0.0.1:{upstream}/;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_buffering off;
        }}
    }}
}}
"""


@contextlib.contextmanager
def path_prefix_proxy(base: Path, upstream: int) -> Iterator[str]:
    """A portal's NGINX publishing the gateway at ``/pacs/`` of its own host (the prefix taken off on the way in):
    yields ``http://127.0.0.1:PORT/pacs``."""
    port = free_port()
    (base / "tmp").mkdir(parents=True)
    conf = base / "proxy.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(PROXY_CONF.format(base=base, user=user, port=port, upstream=upstream))
    proxy = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(base)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proxy.poll() is None and time.monotonic() < deadline, "the portal's proxy did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/pacs"
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_a_gateway_published_under_a_path_works_through_the_portals_proxy(
    tmp_path: Path, browser: Any  # noqa: F811
) -> None:
    """DICOMGW_PUBLIC_URL with a path (the portal's NGINX publishes the gateway at https://portal.example/pacs/) was
    accepted, and its DICOMweb URLs worked, but the viewer loaded /viewer/assets/... and called /t/.../dicomweb and
    /api/v1/tokens/renew at the host's root, the portal's: a blank page. Its assets are now relative to the page,
    the viewer calls the gateway under the prefix its page was served at, and the redirects (/, /viewer, a session
    without next) land under the prefix too."""
    files = make_series(tmp_path / "ct", slices=3, rows=64, columns=64, seed=7301, clean=True)
    study, series, sop = uids_of(files[0])
    upstream = free_port()
    with path_prefix_proxy(tmp_path / "proxy", upstream) as public:
        stack = Stack(tmp_path / "var", port=upstream, extra_env={"DICOMGW_PUBLIC_URL": public})
        stack.start()
        try:
            api = {"Authorization": f"Bearer {stack.api_key}"}
            body = encode_multipart(files)
            stored = requests.post(
                f"{public}/dicomweb/studies",
                data=body,
                headers={**api, "Content-Type": body.content_type, "Accept": "application/dicom+json"},
                timeout=60,
            )
            assert stored.status_code == 200, stored.text
            assert stored.json()["00081190"]["Value"] == [f"{public}/dicomweb/studies/{study}"]
            answer = requests.post(
                f"{public}/api/v1/tokens",
                json={"sub": "portal-user", "studies": [study], "ttl": 120, "session_max": 600},
                headers=api,
                timeout=10,
            )
            assert answer.status_code == 201, answer.text
            issued = answer.json()
            assert issued["dicomweb_root"] == f"{public}/t/{issued['token']}/dicomweb"
            assert issued["viewer_url"].startswith(f"{public}/viewer/#study={study}&token=")
            # the unmodified client, on the root the token's answer names
            client = DICOMwebClient(url=issued["dicomweb_root"])
            assert [s["0020000E"]["Value"] for s in client.search_for_series(study)] == [[series]]
            [frame] = client.retrieve_instance_frames(
                study, series, sop, [1], media_types=("application/octet-stream",)
            )
            assert frame == pydicom.dcmread(files[0]).PixelData
            # NGINX's redirects and the session's default target, under the prefix
            for path, status, lands in (("/", 302, "/pacs/viewer/"), ("/viewer", 301, "/pacs/viewer/")):
                answer = requests.get(f"{public}{path}", timeout=10)
                assert [r.status_code for r in answer.history] == [status], path
                assert (answer.status_code, urlsplit(answer.url).path) == (200, lands), path
            session = requests.get(
                f"{public}/api/v1/session", params={"token": issued["token"]}, allow_redirects=False, timeout=10
            )
            assert (session.status_code, session.headers["Location"]) == (303, "/pacs/viewer/")
            # the viewer: its page, assets, DICOMweb calls and renewal all under /pacs/, every answer a success
            log = NetworkLog()
            page = open_page(browser, log)
            page.goto(issued["viewer_url"])
            wait_ready(page)
            page.wait_for_function("() => document.getElementById('viewport').dataset.loaded === '3'")
            urls = [request.url for request in log.requests if not request.url.startswith("blob:")]  # a worker's
            assert urls and [url for url in urls if not url.startswith(f"{public}/")] == []
            failed = [(r.url, r.response().status) for r in log.requests if r.response() and r.response().status >= 400]
            assert failed == []
            assert any(url == f"{public}/api/v1/tokens/renew" for url in urls)  # its session renews under the prefix
            assert any("/frames/" in url for url in urls)
            page.context.close()
        finally:
            stack.stop()
