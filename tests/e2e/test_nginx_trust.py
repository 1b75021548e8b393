"""Issue 13, "tighten what NGINX trusts", through the real stack: read plans only behind NGINX's internal location
(no header makes one), and storage errors a browser viewer can read (CORS on every storage failure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack

ORIGIN = "https://portal.example"  # allowed by the e2e stacks (DICOMGW_CORS_ORIGINS)


def test_the_plan_location_is_internal(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    study, series, sop = uids_of(synthetic["ct"][0])
    token = stack.issue([study])["token"]
    path = f"/t/{token}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    for url in (f"{stack.url}/_plan{path}", f"{stack.url}/_plan/dicomweb/studies/{study}"):
        answer = requests.get(url, headers={"Accept": "application/dicom"}, timeout=10)
        assert answer.status_code == 404, answer.text[:200]
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json() == {"error": "not_found", "detail": "no such resource"}
    # the header that used to mark a plan request is nobody's business now: JSON comes from Flask as JSON
    metadata = requests.get(
        f"{stack.url}{path}/metadata", headers={"X-Dgw-Route": "plan", "X-Dgw-Plan": "1"}, timeout=10
    )
    assert metadata.status_code == 200
    assert metadata.headers["Content-Type"] == "application/dicom+json"
    assert b"<!--#" not in metadata.content
    # and the plan itself still serves the bytes
    whole = requests.get(f"{stack.url}{path}", headers={"Accept": "application/dicom"}, timeout=30)
    assert whole.status_code == 200
    assert whole.content == synthetic["ct"][0].read_bytes()


def test_storage_errors_carry_cors(stack: RunningStack, tmp_path: Path) -> None:
    # an instance of its own: its object is deleted below, which no other test may see
    files = make_series(tmp_path, modality="CT", slices=1, seed=1380 if stack.backend == "file" else 1381, clean=True)
    assert stack.stow(files).status_code == 200
    study, series, sop = uids_of(files[0])
    token = stack.issue([study])["token"]
    url = f"{stack.root(token)}/studies/{study}/series/{series}/instances/{sop}"
    beyond = requests.get(
        url, headers={"Accept": "application/dicom", "Range": "bytes=99999999-", "Origin": ORIGIN}, timeout=10
    )
    assert beyond.status_code == 416
    assert beyond.headers["Content-Type"] == "application/json"
    assert beyond.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert beyond.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Content-Range" in beyond.headers["Access-Control-Expose-Headers"]
    # the object gone behind the catalog's back: storage's 404, as JSON a cross-origin viewer can read
    from tests.e2e.test_no_credential_at_rest import stack_key

    stack.storage().delete(stack_key(stack, sop))
    gone = requests.get(url, headers={"Accept": "application/dicom", "Origin": ORIGIN}, timeout=10)
    assert gone.status_code == 404
    assert gone.json() == {"error": "not_found", "detail": "the object is missing from storage"}
    assert gone.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert gone.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Retry-After" in gone.headers["Access-Control-Expose-Headers"]
    # a foreign origin learns nothing
    foreign = requests.get(url, headers={"Accept": "application/dicom", "Origin": "https://evil.example"}, timeout=10)
    assert foreign.status_code == 404
    assert "Access-Control-Allow-Origin" not in foreign.headers or foreign.headers["Access-Control-Allow-Origin"] == ""


def test_a_scheme_header_from_the_client_is_not_a_contradiction(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    """``X-Forwarded-Ssl: on`` (what Apache and Rack-era proxies add) or ``X-Forwarded-Protocol: ssl`` from a client
    or a proxy in front reached gunicorn beside NGINX's own ``X-Forwarded-Proto: http``: gunicorn reads all three
    (its secure_scheme_headers) and answered everything Python answers (QIDO, metadata, the token API, /readyz)
    with its HTML 400 "Contradictory scheme headers". NGINX names the scheme alone now; the URLs Python writes
    keep the gateway's own."""
    study, series, sop = uids_of(synthetic["ct"][0])
    token = stack.issue([study])["token"]
    instance = f"{stack.root(token)}/studies/{study}/series/{series}/instances/{sop}"
    for spoofed in ({"X-Forwarded-Ssl": "on"}, {"X-Forwarded-Protocol": "ssl"}, {"X-Forwarded-Ssl": "off"}):
        for url, accept in (
            (f"{stack.root(token)}/studies/{study}/series", "application/dicom+json"),
            (f"{instance}/metadata", "application/dicom+json"),
            (f"{stack.url}/readyz", "application/json"),
        ):
            answer = requests.get(url, headers={**spoofed, "Accept": accept}, timeout=30)
            assert (answer.status_code, answer.headers["Content-Type"]) == (200, accept), (spoofed, answer.text[:200])
        issued = requests.post(
            f"{stack.url}/api/v1/tokens",
            json={"sub": "scheme", "studies": [study]},
            headers={**stack.api_headers, **spoofed},
            timeout=30,
        )
        assert issued.status_code == 201, (spoofed, issued.text[:200])
        assert issued.json()["dicomweb_root"].startswith(f"{stack.url}/t/"), issued.json()["dicomweb_root"]
