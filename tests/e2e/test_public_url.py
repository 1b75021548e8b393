"""Issue 11, defect 16: STOW-RS RetrieveURLs are absolute. On DICOMGW_PUBLIC_URL when it is set (the harness
stacks set it; tests/e2e/test_stow.py checks those); without it, on the scheme and host the client used, as NGINX
passes them to gunicorn (Host, X-Forwarded-Proto): a client cannot talk the gateway into another scheme."""

from __future__ import annotations

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
