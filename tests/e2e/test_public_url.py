"""Issue 11, defect 16: STOW-RS RetrieveURLs are absolute. On DICOMGW_PUBLIC_URL when it is set (the harness
stacks set it; tests/e2e/test_stow.py checks those); without it, on the scheme and host the client used, as NGINX
passes them to gunicorn (Host, X-Forwarded-Proto): a client cannot talk the gateway into another scheme."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import requests
import urllib3

from gateway.dicomweb.multipart import encode_multipart
from gateway.tools.stack import Stack, free_port
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of


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
