"""Accountability of the admin API through the real stack: what a release of a held file answers when it cannot
go through now, and what the audit records of it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack

POLICY = """
version = "accountability-1"

[destinations.main]
storage = "default"
region = "eu-west-1"
identifiable_allowed = true

[[rules]]
id = "ultrasound-review"
match = {{ "tags.Modality" = "US" }}
action = "quarantine"
reason = "ultrasound: held for review"

[[rules]]
id = "clinic"
match = {{ tenant = "clinic" }}
action = "route"
destination = "main"

[default]
action = "reject"
reason = "no policy rule covers this upload"
"""


@pytest.fixture(scope="module")
def held_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    base = tmp_path_factory.mktemp("accountability")
    policy = base / "policy.toml"
    policy.write_text(POLICY.format())
    running = start_stack(base / "stack", "local", None, DICOMGW_PHI_POLICY=str(policy))
    yield running
    running.stack.stop()


def ultrasound(directory: Path, seed: int) -> Path:
    [path] = make_series(directory, modality="CT", slices=1, seed=seed)
    ds = pydicom.dcmread(path)
    ds.Modality = "US"
    ds.save_as(path)
    return path


def hold(stack: RunningStack, path: Path, tenant: str) -> dict[str, Any]:
    answer = stack.stow([path], **{"X-DICOMGW-Tenant": tenant, "X-DICOMGW-Region": "eu-west-1"})
    assert answer.status_code == 409, answer.text
    items = requests.get(f"{stack.url}/api/v1/admin/quarantine", headers=stack.api_headers, timeout=10).json()
    [item] = [i for i in items["items"] if i["sop_uid"] == uids_of(path)[2]]
    return item


def release(stack: RunningStack, key: str) -> requests.Response:
    return requests.post(f"{stack.url}/api/v1/admin/quarantine/{key}/release", headers=stack.api_headers, timeout=60)


def test_a_release_meeting_an_upload_of_its_instance_in_flight_is_a_503_to_retry(
    held_stack: RunningStack, tmp_path: Path
) -> None:
    """Another upload holding the instance's reservation past the wait: the release was a JSON 409 "retry shortly",
    a refusal to a reviewer; it is the 503 ``upload_in_progress`` with ``Retry-After: 5``, as STOW's 0xA700 says,
    the file still held, and the retry once that upload is over stores it."""
    path = ultrasound(tmp_path, 91)
    study, series, sop = uids_of(path)
    item = hold(held_stack, path, "clinic")
    db = sqlite3.connect(held_stack.stack.var_dir / "catalog.db", timeout=30)
    with db:  # an upload of the instance on another host, its lease running
        db.execute(
            "INSERT INTO reservations (sop_uid, created_at, owner_host, owner_pid, owner_started, nonce, expires_at)"
            " VALUES (?, ?, '', 0, 0, 'elsewhere', ?)",
            (sop, int(time.time()), int(time.time()) + 60),
        )
    try:
        busy = release(held_stack, item["key"])
    finally:
        with db:
            db.execute("DELETE FROM reservations WHERE sop_uid = ?", (sop,))
        db.close()
    assert busy.status_code == 503, busy.text
    assert busy.headers["Content-Type"] == "application/json"
    assert busy.headers["Retry-After"] == "5"
    assert busy.json() == {
        "error": "upload_in_progress",
        "detail": "the file could not be stored yet: another upload of this instance is in progress; retry shortly",
    }
    items = requests.get(f"{held_stack.url}/api/v1/admin/quarantine", headers=held_stack.api_headers, timeout=10)
    assert [i["key"] for i in items.json()["items"] if i["sop_uid"] == sop] == [item["key"]]  # still held
    again = release(held_stack, item["key"])
    assert again.status_code == 200, again.text
    assert again.json() == {"status": "stored", "sop_uid": sop, "detail": ""}
    token = held_stack.issue([study])["token"]
    stored = requests.get(
        f"{held_stack.root(token)}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom"},
        timeout=30,
    )
    assert stored.status_code == 200 and stored.content == path.read_bytes()
