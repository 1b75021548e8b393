"""Accountability of the admin API through the real stack: what a release of a held file answers when it cannot
go through now, and what the audit records of it."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


def token_audit(stack: RunningStack, **params: str) -> requests.Response:
    return requests.get(
        f"{stack.url}/api/v1/admin/audit", params={"kind": "token", **params}, headers=stack.api_headers, timeout=10
    )


def test_every_token_issued_and_revoked_is_in_the_token_audit(held_stack: RunningStack) -> None:
    """No record said which API key issued the token that read a study: ``kind=token`` lists each issuance (the
    key's label, jti, subject, scope, issue and expiry times, session) and each revocation, newest first, paged,
    never the token; a bad parameter is a JSON 400."""
    study, other = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102"
    series = "1.2.826.0.1.3680043.8.498.103"
    first = held_stack.issue([study], sub="portal-user-7", ttl=600)
    second = held_stack.issue([other], sub="portal-user-8", series=[series], actions=["read"], session_max=3600)
    revoked = requests.post(
        f"{held_stack.url}/api/v1/tokens/{first['jti']}/revoke", headers=held_stack.api_headers, timeout=10
    )
    assert revoked.status_code == 204
    answer = token_audit(held_stack, limit="3")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    items = answer.json()["items"]
    label = "key-" + hashlib.sha256(held_stack.stack.api_key.encode()).hexdigest()[:8]  # README: the default label
    assert [(i["event"], i["jti"]) for i in items] == [
        ("revoked", first["jti"]), ("issued", second["jti"]), ("issued", first["jti"])
    ]
    assert {i["api_key"] for i in items} == {label}  # the key's label, never the key
    issued_first, issued_second = items[2], items[1]
    assert (issued_first["sub"], issued_first["studies"], issued_first["series"], issued_first["actions"]) == (
        "portal-user-7", [study], None, ["read"]
    )
    assert issued_first["expires_at"] - issued_first["created_at"] == 600
    assert issued_first["session"] is None and issued_first["session_expires_at"] is None
    assert (issued_second["studies"], issued_second["series"], issued_second["session"]) == (
        [other], [series], second["jti"]
    )
    assert issued_second["session_expires_at"] - issued_second["created_at"] == 3600
    assert items[0]["sub"] is None and items[0]["expires_at"] > items[0]["created_at"]
    text = answer.text
    assert first["token"] not in text and second["token"] not in text
    assert held_stack.stack.api_key not in text
    # "who could read this study": filtered by the study the scope names, and by a token's jti (or its session's)
    by_study = token_audit(held_stack, study_uid=other).json()["items"]
    assert [(i["event"], i["jti"]) for i in by_study] == [("issued", second["jti"])]
    by_jti = token_audit(held_stack, jti=first["jti"]).json()["items"]
    assert [i["event"] for i in by_jti] == ["revoked", "issued"]
    # paged: the next page continues after the cursor
    page = token_audit(held_stack, limit="1").json()
    assert page["next_cursor"] == str(items[0]["id"])
    following = token_audit(held_stack, limit="1", cursor=page["next_cursor"]).json()["items"]
    assert [i["id"] for i in following] == [items[1]["id"]]
    for params, detail in (
        ({"kind": "tokens"}, "kind must be hook, deletion or token"),
        ({"sop_uid": "1.2.3"}, "sop_uid filters kind=hook only"),
        ({"jti": "x y"}, "malformed jti"),
        ({"study_uid": "1.2.x"}, None),
        ({"limit": "1001"}, None),
    ):
        bad = requests.get(
            f"{held_stack.url}/api/v1/admin/audit",
            params={"kind": "token", **params},
            headers=held_stack.api_headers,
            timeout=10,
        )
        assert bad.status_code == 400, (params, bad.text)
        assert bad.headers["Content-Type"] == "application/json"
        if detail:
            assert bad.json() == {"error": "bad_request", "detail": detail}
    assert token_audit(held_stack, jti="abc", kind="hook").status_code == 400


def test_a_release_the_policy_refuses_is_audited_with_its_reason(held_stack: RunningStack, tmp_path: Path) -> None:
    """A release the policy refused (a JSON 409) left no audit record: the upload's hold was the last word on the
    file. It is the decision ``release-refused``, its rule, tag paths, policy version and reason."""
    path = ultrasound(tmp_path, 93)
    study, _, sop = uids_of(path)
    item = hold(held_stack, path, "walk-in")  # no rule but the quarantine covers this tenant
    refused = release(held_stack, item["key"])
    assert refused.status_code == 409
    assert refused.json() == {
        "error": "conflict",
        "detail": "the policy does not let this file be stored: no policy rule covers this upload",
    }
    answer = requests.get(
        f"{held_stack.url}/api/v1/admin/audit", params={"sop_uid": sop}, headers=held_stack.api_headers, timeout=10
    )
    assert answer.status_code == 200
    newest, held = answer.json()["items"][:2]
    assert held["decision"] == "quarantine" and held["reason"] is None
    assert (newest["decision"], newest["rule"], newest["reason"], newest["study_uid"]) == (
        "release-refused", "default", "no policy rule covers this upload", study
    )
    assert (newest["source"], newest["sub"], newest["policy_version"]) == ("stow", held["sub"], "accountability-1")
    assert newest["tags"] == held["tags"] and newest["tags"]  # tag paths, never values
    assert len(answer.json()["items"]) == 2


ANNEX = """
[destinations.annex]
storage = "file://{annex}"
region = "us-east-1"
identifiable_allowed = true
"""


def test_a_file_held_in_a_destination_the_policy_no_longer_names_can_be_deleted(tmp_path: Path) -> None:
    """A file held in "annex", then "annex" removed from the policy: its preview and release are a JSON 409 naming
    the destination (the policy no longer knows its place), and its deletion, which was the same 409, removes it
    from that storage and the list (an administrator must be able to remove a held file whatever the policy says)."""
    annex = tmp_path / "annex"
    annex.mkdir()
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format() + ANNEX.format(annex=annex))
    running = start_stack(tmp_path / "stack", "local", None, DICOMGW_PHI_POLICY=str(policy))
    try:
        paths = [ultrasound(tmp_path / f"us{n}", 95 + n) for n in range(2)]
        items = []
        for path in paths:
            answer = running.stow([path], **{"X-DICOMGW-Tenant": "clinic", "X-DICOMGW-Region": "us-east-1"})
            assert answer.status_code == 409, answer.text
            listed = requests.get(f"{running.url}/api/v1/admin/quarantine", headers=running.api_headers, timeout=10)
            [item] = [i for i in listed.json()["items"] if i["sop_uid"] == uids_of(path)[2]]
            assert item["destination"] == "annex" and (annex / item["key"]).read_bytes() == path.read_bytes()
            assert "storage" not in item
            items.append(item)
        running.stack.stop()
        policy.write_text(POLICY.format())  # "annex" is no longer named
        running.stack.start()
        admin = f"{running.url}/api/v1/admin/quarantine"
        detail = (
            "the file is held in destination 'annex', which this gateway's policy no longer names: it can be deleted,"
            " not previewed or released"
        )
        for answer in (
            requests.get(f"{admin}/{items[0]['key']}/preview", headers=running.api_headers, timeout=30),
            requests.post(f"{admin}/{items[0]['key']}/release", headers=running.api_headers, timeout=30),
        ):
            assert answer.status_code == 409, answer.text
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.json() == {"error": "conflict", "detail": detail}
        assert (annex / items[0]["key"]).exists()
        gone = requests.delete(f"{admin}/{items[0]['key']}", headers=running.api_headers, timeout=30)
        assert gone.status_code == 204, gone.text
        assert not (annex / items[0]["key"]).exists()
        left = requests.get(admin, headers=running.api_headers, timeout=10).json()["items"]
        assert [i["key"] for i in left] == [items[1]["key"]]
        assert requests.delete(f"{admin}/{items[0]['key']}", headers=running.api_headers, timeout=30).status_code == 404
        # a patient erasure reaches it there too (it stopped at the 409, after removing the patient's studies)
        erased = requests.post(
            f"{running.url}/api/v1/admin/erasure",
            json={"patient_id": str(pydicom.dcmread(paths[1]).PatientID)},
            headers=running.api_headers,
            timeout=60,
        )
        assert erased.status_code == 200, erased.text
        assert erased.json()["quarantined"] == 1
        assert not (annex / items[1]["key"]).exists()
    finally:
        running.stack.stop()


def hold_reservation(stack: RunningStack, sop: str) -> sqlite3.Connection:
    """An upload of ``sop`` on another host, its lease running: a release of it waits at its reservation."""
    db = sqlite3.connect(stack.stack.var_dir / "catalog.db", timeout=30)
    with db:
        db.execute(
            "INSERT INTO reservations (sop_uid, created_at, owner_host, owner_pid, owner_started, nonce, expires_at)"
            " VALUES (?, ?, '', 0, 0, 'elsewhere', ?)",
            (sop, int(time.time()), int(time.time()) + 60),
        )
    return db


def end_reservation(db: sqlite3.Connection, sop: str) -> None:
    with db:
        db.execute("DELETE FROM reservations WHERE sop_uid = ?", (sop,))
    db.close()


def wait_for_the_release_copy(stack: RunningStack) -> None:
    """The release has read the held file's record and copied the file into its spool folder (gateway.quarantine)."""
    deadline = time.monotonic() + 30
    while not list((stack.stack.var_dir / "spool").glob("*/released.dcm")):
        assert time.monotonic() < deadline, "the release never copied the held file"
        time.sleep(0.02)


def of_patient(path: Path, patient: str) -> Path:
    ds = pydicom.dcmread(path)
    ds.PatientID = patient
    ds.save_as(path)
    return path


def erase(stack: RunningStack, patient: str) -> requests.Response:
    return requests.post(
        f"{stack.url}/api/v1/admin/erasure",
        json={"patient_id": patient, "reason": "art. 17"},
        headers=stack.api_headers,
        timeout=120,
    )


def served(stack: RunningStack, path: Path) -> int:
    study, series, sop = uids_of(path)
    answer = requests.get(
        f"{stack.root(stack.issue([study])['token'])}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom"},
        timeout=30,
    )
    return answer.status_code


def test_a_patient_erased_while_their_held_file_is_released_keeps_nothing_of_it(
    held_stack: RunningStack, tmp_path: Path
) -> None:
    """The erasure removes the held file and its record while the release, which had copied it, stores its copy:
    the release answered 200 and the erased patient's image was served after the erasure answered. The release now
    finds its record gone, removes what it stored (a deletion record says why) and answers a JSON 409."""
    path = of_patient(ultrasound(tmp_path, 97), "RACE-ERASED-1")
    study, series, sop = uids_of(path)
    item = hold(held_stack, path, "clinic")
    db = hold_reservation(held_stack, sop)
    with ThreadPoolExecutor(1) as pool:
        try:
            releasing = pool.submit(release, held_stack, item["key"])
            wait_for_the_release_copy(held_stack)
            erased = erase(held_stack, "RACE-ERASED-1")
        finally:
            end_reservation(db, sop)
        released = releasing.result()
    assert erased.status_code == 200, erased.text
    assert (erased.json()["quarantined"], erased.json()["studies"]) == (1, [])
    assert released.status_code == 409, released.text
    assert released.headers["Content-Type"] == "application/json"
    assert released.json() == {
        "error": "conflict",
        "detail": "the held file was removed (a patient erasure or a delete) while it was being released: the copy "
        "stored is removed too",
    }
    assert served(held_stack, path) == 404
    assert list(held_stack.storage().list(f"studies/{study}/")) == []
    listed = requests.get(f"{held_stack.url}/api/v1/admin/quarantine", headers=held_stack.api_headers, timeout=10)
    assert [i for i in listed.json()["items"] if i["sop_uid"] == sop] == []
    audit = requests.get(
        f"{held_stack.url}/api/v1/admin/audit",
        params={"kind": "deletion", "study_uid": study},
        headers=held_stack.api_headers,
        timeout=10,
    ).json()["items"]
    assert [(r["sop_uid"], r["series_uid"], r["reason"]) for r in audit] == [
        (sop, series, "released while its held file was removed")
    ]


def test_a_release_ending_while_the_patients_erasure_runs_is_erased_too(
    held_stack: RunningStack, tmp_path: Path
) -> None:
    """The erasure planned before the release stored its copy, and read the held files after the release took its
    record: it erased the patient's stored study, found no held file, and left the released image served. It now
    plans again after the held files, and removes the released study too."""
    patient = "RACE-ERASED-2"
    [stored] = make_series(tmp_path / "ct", modality="CT", slices=1, seed=98)
    stored = of_patient(stored, patient)
    answer = held_stack.stow([stored], **{"X-DICOMGW-Tenant": "clinic", "X-DICOMGW-Region": "eu-west-1"})
    assert answer.status_code == 200, answer.text
    path = of_patient(ultrasound(tmp_path / "us", 99), patient)
    study, _, sop = uids_of(path)
    item = hold(held_stack, path, "clinic")
    token = held_stack.issue([uids_of(stored)[0]])["token"]
    listed = f"{held_stack.root(token)}/studies?StudyInstanceUID={uids_of(stored)[0]}"
    db = hold_reservation(held_stack, sop)
    with ThreadPoolExecutor(2) as pool:
        try:
            releasing = pool.submit(release, held_stack, item["key"])
            wait_for_the_release_copy(held_stack)
            erasing = pool.submit(erase, held_stack, patient)
            deadline = time.monotonic() + 30
            # the erasure has planned and hidden the stored study; it waits out the caches (DICOMGW_DELETE_SETTLE)
            while requests.get(listed, timeout=10).json():
                assert time.monotonic() < deadline, "the erasure never hid the patient's study"
                time.sleep(0.02)
        finally:
            end_reservation(db, sop)
        released = releasing.result()
        erased = erasing.result()
    assert released.status_code == 200, released.text  # within the settle: before the erasure reads the held files
    assert erased.status_code == 200, erased.text
    assert (erased.json()["studies"], erased.json()["quarantined"]) == (sorted([uids_of(stored)[0], study]), 0)
    assert served(held_stack, path) == 404 and served(held_stack, stored) == 404
    assert list(held_stack.storage().list(f"studies/{study}/")) == []


def test_a_renewed_token_is_in_the_token_audit_under_its_session(held_stack: RunningStack) -> None:
    """A renewal makes a token with a jti of its own, which the access trail names for every read made with it; the
    token audit had no row for it, so that jti led nowhere. Each renewal is now a ``renewed`` row (no API key: the
    token's holder asked), listed with its session's issuance."""
    first = held_stack.issue(["1.2.826.0.1.3680043.8.498.111"], sub="viewer-9", ttl=300, session_max=3600)
    renewed = requests.post(f"{held_stack.url}/api/v1/tokens/renew", json={"token": first["token"]}, timeout=10)
    assert renewed.status_code == 200, renewed.text
    jti = renewed.json()["jti"]
    assert jti != first["jti"]
    [row] = token_audit(held_stack, jti=jti).json()["items"]
    assert (row["event"], row["api_key"], row["jti"], row["sub"], row["session"], row["studies"]) == (
        "renewed", "", jti, "viewer-9", first["jti"], ["1.2.826.0.1.3680043.8.498.111"]
    )
    assert row["expires_at"] > row["created_at"]
    assert renewed.json()["token"] not in token_audit(held_stack, jti=jti).text
    session = token_audit(held_stack, jti=first["jti"]).json()["items"]
    assert [(r["event"], r["jti"]) for r in session] == [("renewed", jti), ("issued", first["jti"])]
