"""Issue 12, several nodes: two complete stacks (two NGINX + gunicorn pairs) on one PostgreSQL catalog and one
storage (a shared folder, or one bucket of the S3-compatible server), the way the gateway scales out.

An upload through node 1 is served by node 2; a revocation on node 1 holds on node 2 once the documented bound
(``DICOMGW_REVOCATION_REFRESH`` + ``DICOMGW_AUTH_CACHE_SECONDS``, + 1 s for NGINX's whole-second cache clock) has
passed, waited out explicitly (a poll could be answered by a worker that already reloaded while another still
serves its stale list); a delete on node 2 stops node 1 by the time it answers (the DELETE itself waits the bound,
``DICOMGW_DELETE_SETTLE``), including where node 1's NGINX cached the decision and the plan before."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.tools.stack import Stack, free_port
from tests.e2e.conftest import uids_of
from tests.e2e.harness import AWS_TEST_ENV, RunningStack
from tests.e2e.test_lifecycle import MULTIPART_DICOM, assert_gone, get_spec_study, make_study, reads
from tests.e2e.test_read_path import parse_multipart
from tests.fixtures.servers import MotoServer, create_bucket

REFRESH, AUTH_CACHE = 2, 2


@pytest.fixture(params=["file", "s3"])
def nodes(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> Iterator[tuple[RunningStack, RunningStack]]:
    shared = {
        "DICOMGW_DATABASE_URL": postgres_url,
        "DICOMGW_SIGNING_KEYS": "k" * 48,
        "DICOMGW_API_KEYS": "portal:" + "a" * 40,
        "DICOMGW_DEID_KEY": "d" * 48,
        "DICOMGW_REVOCATION_REFRESH": str(REFRESH),
        "DICOMGW_AUTH_CACHE_SECONDS": str(AUTH_CACHE),
        "DICOMGW_DELETE_SETTLE": str(REFRESH + AUTH_CACHE + 1),
        "DICOMGW_STORAGE_URL": f"file://{tmp_path / 'shared-objects'}",
    }
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto_server")
        bucket = f"dgw-nodes-{tmp_path.name.lower().replace('_', '-')}"[:60]
        create_bucket(moto.endpoint, bucket)
        shared.update(AWS_TEST_ENV, AWS_ENDPOINT_URL=moto.endpoint, DICOMGW_STORAGE_URL=f"s3://{bucket}/data")
    started: list[Stack] = []
    try:
        for name in ("node1", "node2"):
            stack = Stack(tmp_path / name, port=free_port(), extra_env=shared)
            started.append(stack)
            stack.start()
        yield RunningStack(started[0], request.param), RunningStack(started[1], request.param)
    finally:
        for stack in started:
            stack.stop()


def test_two_nodes_share_uploads_revocations_and_deletes(
    nodes: tuple[RunningStack, RunningStack], tmp_path: Path
) -> None:
    node1, node2 = nodes
    files = make_study(tmp_path / "data", 501)
    study = uids_of(files[0])[0]

    # an upload through node 1 is served by node 2, byte for byte
    assert node1.stow(files).status_code == 200
    token = node1.issue([study])["token"]
    whole = requests.get(f"{node2.root(token)}/studies/{study}", headers={"Accept": MULTIPART_DICOM}, timeout=60)
    assert whole.status_code == 200
    assert sorted(hashlib.sha256(body).hexdigest() for _, body in parse_multipart(whole)) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    )

    # a revocation on node 1 holds on node 2 within the bound, though node 2's NGINX cached the decision
    revoked = node1.issue([study])
    frame = reads(node2.root(revoked["token"]), files[0])["frame"]
    url, _, headers = frame
    assert requests.get(url, headers=headers, timeout=30).status_code == 200
    assert requests.get(url, headers=headers, timeout=30).status_code == 200
    answer = requests.post(f"{node1.url}/api/v1/tokens/{revoked['jti']}/revoke", headers=node1.api_headers, timeout=30)
    assert answer.status_code == 204
    time.sleep(REFRESH + AUTH_CACHE + 1)  # the documented bound, waited out
    refused = requests.get(url, headers=headers, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"] == "token_revoked"

    # a delete on node 2 stops node 1, where NGINX cached the decision and every plan before it
    specs = reads(node1.root(token), files[0])
    for spec in specs.values():
        url, params, headers = spec
        assert requests.get(url, params=params, headers=headers, timeout=60).status_code == 200
        assert requests.get(url, params=params, headers=headers, timeout=60).status_code == 200
    deleted = requests.delete(f"{node2.url}/dicomweb/studies/{study}", headers=node2.api_headers, timeout=120)
    assert deleted.status_code == 204
    for name, (url, params, headers) in specs.items():
        answer = requests.get(url, params=params, headers=headers, timeout=60)
        assert answer.status_code == 404, name
        assert_gone(answer)
    assert list(node1.storage().list(f"studies/{study}/")) == []
    audit = requests.get(
        f"{node1.url}/api/v1/admin/audit", params={"kind": "deletion"}, headers=node1.api_headers, timeout=30
    )
    assert [(r["study_uid"], r["sub"]) for r in audit.json()["items"]] == [(study, "portal")]

    # uploaded again through node 2: node 1 serves it again
    assert node2.stow(files).status_code == 200
    again = requests.get(get_spec_study(node1.root(token), study)[0], headers={"Accept": MULTIPART_DICOM}, timeout=60)
    assert again.status_code == 200 and len(parse_multipart(again)) == len(files)
    frame_again = specs["frame"]
    assert requests.get(frame_again[0], headers=frame_again[2], timeout=30).status_code == 200
