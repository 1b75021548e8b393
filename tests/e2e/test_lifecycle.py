"""Issue 12 through the real NGINX on both storage backends: DELETE at study, series and instance level, no byte
served after the answer (with a decision and a read plan cached by NGINX before the delete), the objects and their
derivatives gone from storage, the deletion audit, patient erasure, and a deleted study uploaded and served again.

Every DELETE waits ``DICOMGW_DELETE_SETTLE`` (the documented bound) before it answers, so the checks right after
the answer are the guarantee itself, not a race."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from gateway.catalog.catalog import OTHER_PATIENT
from gateway.tools.synth import make_series
from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import RunningStack, ctrl_c_as_from_a_terminal, nginx_alarms, require_strace, start_stack
from tests.e2e.test_faults import parent_of
from tests.e2e.test_read_path import parse_multipart
from tests.fixtures.servers import MotoServer

MULTIPART_DICOM = "multipart/related; type=application/dicom"


# The documented bound (DICOMGW_DELETE_SETTLE >= REVOCATION_REFRESH + AUTH_CACHE_SECONDS + 1) for a node whose
# decisions live 1 s and whose revocation list reloads every second: this file's stacks wait 3 s per deletion
# instead of the default 5, with every cache still in play.
SHORT_SETTLE = {"DICOMGW_REVOCATION_REFRESH": "1", "DICOMGW_AUTH_CACHE_SECONDS": "1", "DICOMGW_DELETE_SETTLE": "3"}


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """This file's stack on each storage backend, settling a deletion in ``SHORT_SETTLE``'s 3 s: its tests delete
    many times each. Every test stores a study of its own (``make_study``), so no shared data is needed."""
    moto: MotoServer | None = request.getfixturevalue("moto_server") if request.param == "s3" else None
    running = start_stack(tmp_path_factory.mktemp(f"lifecycle-{request.param}"), request.param, moto, **SHORT_SETTLE)
    try:
        yield running
    finally:
        running.stack.stop()
    assert not nginx_alarms(running), nginx_alarms(running)  # as the shared stacks are checked


def assert_gone(answer: requests.Response) -> None:
    assert answer.status_code == 404, (answer.url, answer.status_code, answer.text[:200])
    assert answer.headers["Content-Type"] == "application/json", answer.url
    assert answer.json()["error"] == "not_found"


def make_study(base: Path, seed: int, *, series: int = 2, patient: str | None = None) -> list[Path]:
    """A small study of its own (``series`` CT series of 3 slices), so deleting it disturbs no other test."""
    first = make_series(base / f"s{seed}-0", slices=3, rows=64, columns=64, seed=seed, clean=True, patient=patient)
    study = uids_of(first[0])[0]
    files = list(first)
    for n in range(1, series):
        files += make_series(
            base / f"s{seed}-{n}", slices=3, rows=64, columns=64, seed=seed + n, clean=True, study_uid=study
        )
    return files


def reads(root: str, path: Path) -> dict[str, tuple[str, dict[str, str], dict[str, str]]]:
    """Every kind of read of one instance: name -> (url, params, headers)."""
    study, series, sop = uids_of(path)
    inst = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    wado = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    octet = {"Accept": "application/octet-stream"}
    return {
        "qido": (f"{root}/studies/{study}/series/{series}/instances", {}, {}),
        "study_metadata": (f"{root}/studies/{study}/metadata", {}, {}),
        "instance_metadata": (f"{inst}/metadata", {}, {}),
        "study_retrieve": (f"{root}/studies/{study}", {}, {"Accept": MULTIPART_DICOM}),
        "series_retrieve": (f"{root}/studies/{study}/series/{series}", {}, {"Accept": MULTIPART_DICOM}),
        "instance_retrieve": (inst, {}, {"Accept": "application/dicom"}),
        "frame": (f"{inst}/frames/1", {}, octet),
        "bulkdata": (f"{inst}/bulkdata/7FE00010", {}, octet),
        "rendered": (f"{inst}/rendered", {}, {"Accept": "image/png"}),
        "thumbnail": (f"{inst}/thumbnail", {}, {}),
        "wado_dicom": (f"{root}/wado", {**wado, "contentType": "application/dicom"}, {}),
        "wado_jpeg": (f"{root}/wado", wado, {}),
    }


def get(spec: tuple[str, dict[str, str], dict[str, str]]) -> requests.Response:
    url, params, headers = spec
    return requests.get(url, params=params, headers=headers, timeout=60)


def delete(stack: RunningStack, path: str, reason: str = "") -> requests.Response:
    headers = {**stack.api_headers, "X-DICOMGW-Reason": reason} if reason else stack.api_headers
    return requests.delete(f"{stack.url}/dicomweb/{path}", headers=headers, timeout=120)


def stored_keys(stack: RunningStack, study: str) -> list[str]:
    return list(stack.storage().list(f"studies/{study}/"))


def is_derivative(key: str) -> bool:
    """The HTJ2K copy the stack's derivative worker stores under an instance's name (gateway.derive)."""
    return "/htj2k-" in key


def wait_for_derivatives(stack: RunningStack, study: str, count: int) -> None:
    """The worker makes them after the STOW answer: poll storage, bounded, until each instance has one."""
    deadline = time.monotonic() + 120
    while sum(map(is_derivative, stored_keys(stack, study))) < count:
        assert time.monotonic() < deadline, "the derivative worker did not finish within 120 s"
        time.sleep(0.2)


def plan_was_cached(stack: RunningStack, url_path: str) -> bool:
    stack.settle_access_log()
    return any(line["uri"].endswith(url_path) and line["cache"] == "HIT" for line in stack.access_log())


def test_delete_study_after_cached_plans_then_upload_it_again(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = make_study(tmp_path_factory.mktemp("del-study"), 401)
    assert stack.stow(files).status_code == 200
    study = uids_of(files[0])[0]
    root = stack.root(stack.issue([study])["token"])
    specs = reads(root, files[0])
    before: dict[str, bytes] = {}
    for name, spec in specs.items():
        first, second = get(spec), get(spec)  # the second is served from NGINX's cached decision and plan
        assert first.status_code == second.status_code == 200, (name, first.text[:200])
        before[name] = second.content
    # a single frame's plan is cached on its second request (proxy_cache_min_uses 2): the third is served from it
    assert get(specs["frame"]).content == before["frame"]
    assert plan_was_cached(stack, f"{uids_of(files[0])[2]}/frames/1")  # this instance's, not another test's
    wait_for_derivatives(stack, study, len(files))  # so the delete is shown to remove them too
    originals = [key for key in stored_keys(stack, study) if not is_derivative(key)]
    assert len(originals) == len(files) + 1  # the instances and the thumbnail rendered above

    answer = delete(stack, f"studies/{study}", reason="portal withdrew the study")
    assert (answer.status_code, answer.content) == (204, b"")
    for name, spec in specs.items():
        assert_gone(get(spec)), name  # type: ignore[func-returns-value]
    assert stored_keys(stack, study) == []
    if stack.backend == "local":  # no empty folders left behind (S3 has none)
        assert not (stack.storage().root / "studies" / study).exists()
    assert_gone(delete(stack, f"studies/{study}"))  # idempotent: nothing there any more
    audit = requests.get(
        f"{stack.url}/api/v1/admin/audit",
        params={"kind": "deletion", "study_uid": study},
        headers=stack.api_headers,
        timeout=30,
    )
    assert audit.status_code == 200
    (record,) = audit.json()["items"]
    assert record["level"] == "study" and record["instances"] == len(files)
    assert record["reason"] == "portal withdrew the study" and record["finished_at"] >= record["created_at"]
    assert record["sub"].startswith("key-") and stack.stack.api_key not in audit.text

    assert stack.stow(files).status_code == 200  # uploaded again: served again, the same bytes
    for name, spec in specs.items():
        again = get(spec)
        assert again.status_code == 200, (name, again.text[:200])
        if name not in ("study_retrieve", "series_retrieve", "qido", "study_metadata", "instance_metadata"):
            assert again.content == before[name], name  # multipart boundaries and JSON order aside
    whole = get(specs["study_retrieve"])
    assert sorted(hashlib.sha256(b).hexdigest() for _, b in parse_multipart(whole)) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    )


def test_delete_instance_then_series_leaves_the_rest_served(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = make_study(tmp_path_factory.mktemp("del-parts"), 411)
    assert stack.stow(files).status_code == 200
    study, series_a, sop = uids_of(files[0])
    series_b = uids_of(files[3])[1]
    root = stack.root(stack.issue([study])["token"])
    victim, neighbour = reads(root, files[0]), reads(root, files[1])
    for spec in (*victim.values(), neighbour["frame"], get_spec_study(root, study)):
        assert get(spec).status_code == 200 and get(spec).status_code == 200

    removed = delete(stack, f"studies/{study}/series/{series_a}/instances/{sop}")
    assert removed.status_code == 204
    assert "Content-Type" not in removed.headers and removed.content == b""  # it said text/html
    for name in ("instance_metadata", "instance_retrieve", "frame", "bulkdata", "rendered", "thumbnail", "wado_dicom"):
        assert_gone(get(victim[name]))
    assert get(neighbour["frame"]).status_code == 200
    whole = get(get_spec_study(root, study))  # the study's plan was cached with the deleted instance in it
    assert whole.status_code == 200 and len(parse_multipart(whole)) == len(files) - 1
    assert not any(sop in key for key in stored_keys(stack, study))

    assert delete(stack, f"studies/{study}/series/{series_a}").status_code == 204
    assert_gone(get(neighbour["frame"]))
    assert_gone(get(neighbour["series_retrieve"]))
    assert_gone(get(neighbour["qido"]))
    remaining = get(get_spec_study(root, study))
    assert remaining.status_code == 200 and len(parse_multipart(remaining)) == 3
    assert all(f"/series/{series_b}/" in key for key in stored_keys(stack, study))
    assert_gone(delete(stack, f"studies/{study}/series/{series_a}"))
    assert delete(stack, f"studies/{study}/series/{series_b}").status_code == 204  # the last series: study gone
    assert_gone(get(get_spec_study(root, study)))
    assert stored_keys(stack, study) == []


def get_spec_study(root: str, study: str) -> tuple[str, dict[str, str], dict[str, str]]:
    return (f"{root}/studies/{study}", {}, {"Accept": MULTIPART_DICOM})


def test_delete_refusals_are_json(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> None:
    files = make_study(tmp_path_factory.mktemp("del-refuse"), 421, series=1)
    assert stack.stow(files).status_code == 200
    study = uids_of(files[0])[0]
    writer = stack.issue([study], actions=["read", "write"])["token"]
    for how, headers, status in (
        ("path token", {}, 403),
        ("bearer token", {"Authorization": f"Bearer {writer}"}, 403),
        ("nothing", {}, 401),
        ("wrong key", {"Authorization": "Bearer not-a-key"}, 401),
    ):
        url = (
            f"{stack.root(writer)}/studies/{study}" if how == "path token" else f"{stack.url}/dicomweb/studies/{study}"
        )
        answer = requests.delete(url, headers=headers, timeout=30)
        assert answer.status_code == status, (how, answer.text)
        assert answer.headers["Content-Type"] == "application/json", how
    malformed = requests.delete(f"{stack.url}/dicomweb/studies/1.2.x", headers=stack.api_headers, timeout=30)
    assert malformed.status_code in (400, 403) and malformed.headers["Content-Type"] == "application/json"
    assert_gone(delete(stack, "studies/1.2.3.999999"))
    long_reason = delete(stack, f"studies/{study}", reason="x" * 501)
    assert long_reason.status_code == 400 and long_reason.json()["error"] == "bad_request"
    assert get(get_spec_study(stack.root(writer), study)).status_code == 200  # refused deletes changed nothing


def test_a_delete_reason_outside_ascii_is_kept_as_written(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Session 25: ``X-DICOMGW-Reason`` as curl, a shell script or a browser's fetch sends it, UTF-8 bytes, was
    kept in the deletion audit read as ISO-8859-1 (PEP 3333's reading of every header): ``Lösung`` was listed as
    ``LÃ¶sung``. UTF-8 is read as UTF-8; bytes that are not UTF-8 keep their ISO-8859-1 reading (what requests sends
    for a ``str`` header); a reason that is not printable once decoded is the JSON 400 it always was."""
    files = make_study(tmp_path_factory.mktemp("del-reason"), 8251, series=1)
    assert stack.stow(files).status_code == 200
    study = uids_of(files[0])[0]
    sent = {
        files[0]: ("Lösung – 検査 withdrawn".encode(), "Lösung – 検査 withdrawn"),
        files[1]: ("Lösung".encode("latin-1"), "Lösung"),
    }
    for path, (raw, _) in sent.items():
        _, series, sop = uids_of(path)
        url = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        answer = requests.delete(url, headers={**stack.api_headers, "X-DICOMGW-Reason": raw}, timeout=120)
        assert answer.status_code == 204, answer.text
    audit = requests.get(
        f"{stack.url}/api/v1/admin/audit",
        params={"kind": "deletion", "study_uid": study},
        headers=stack.api_headers,
        timeout=10,
    ).json()["items"]
    kept = {item["sop_uid"]: item["reason"] for item in audit}
    assert kept == {uids_of(path)[2]: reason for path, (_, reason) in sent.items()}
    _, series, sop = uids_of(files[2])
    control = requests.delete(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers={**stack.api_headers, "X-DICOMGW-Reason": "a\u0085b".encode()},  # NEL, a C1 control, in UTF-8
        timeout=120,
    )
    assert (control.status_code, control.json()["error"]) == (400, "bad_request")


def test_patient_erasure_removes_every_study_of_the_patient(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("erasure")
    patient = f"ERASE-{stack.backend}"
    first, second = make_study(base, 431, series=1, patient=patient), make_study(base, 441, series=1, patient=patient)
    other = make_study(base, 451, series=1, patient=f"KEEP-{stack.backend}")
    assert stack.stow([*first, *second, *other]).status_code == 200
    studies = sorted(uids_of(f[0])[0] for f in (first, second))
    root = stack.root(stack.issue([*studies, uids_of(other[0])[0]])["token"])
    for study in studies:
        assert get(get_spec_study(root, study)).status_code == 200

    url = f"{stack.url}/api/v1/admin/erasure"
    answer = requests.post(
        url, json={"patient_id": patient, "reason": "GDPR art. 17"}, headers=stack.api_headers, timeout=120
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"  # a patient's study UIDs, as the audit lists them
    result: dict[str, Any] = answer.json()
    assert result["studies"] == studies and result["instances"] == 6 and result["series"] == 2
    assert {d["level"] for d in result["deletions"]} == {"study"} and result["quarantined"] == 0
    assert patient not in answer.text  # what was removed is named by UID, never by the patient's values
    for study in studies:
        assert_gone(get(get_spec_study(root, study)))
        assert stored_keys(stack, study) == []
    assert get(get_spec_study(root, uids_of(other[0])[0])).status_code == 200
    again = requests.post(url, json={"patient_id": patient}, headers=stack.api_headers, timeout=60)
    assert_gone(again)
    refused = requests.post(url, json={"patient_id": patient}, timeout=60)
    assert refused.status_code == 401 and refused.headers["Content-Type"] == "application/json"
    bad = requests.post(url, json={"patient": patient}, headers=stack.api_headers, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
    audit = requests.get(
        f"{stack.url}/api/v1/admin/audit", params={"kind": "deletion"}, headers=stack.api_headers, timeout=30
    ).json()["items"]
    erased = [r for r in audit if r["study_uid"] in studies]
    assert len(erased) == 2 and {r["reason"] for r in erased} == {"GDPR art. 17"}
    assert len({r["request_id"] for r in erased}) == 1



def test_patient_erasure_finds_a_patient_id_given_with_its_padding(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """DICOM does not count an LO value's leading and trailing spaces and the catalog stores the Patient ID
    stripped: the Patient ID (and issuer) exactly as the file holds it, padding and all, finds the patient."""
    import pydicom

    base = tmp_path_factory.mktemp("erasure-padded")
    patient = f"PAD-7720-{stack.backend}"
    files = make_study(base, 7720, series=1, patient=patient)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.IssuerOfPatientID = f" {patient}", " HOSP-7720"
        ds.save_as(path)
    assert stack.stow(files).status_code == 200
    study = uids_of(files[0])[0]
    answer = requests.post(
        f"{stack.url}/api/v1/admin/erasure",
        json={"patient_id": f" {patient} ", "issuer": " HOSP-7720"},
        headers=stack.api_headers,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["studies"] == [study] and answer.json()["instances"] == 3
    assert stored_keys(stack, study) == []
    other_issuer = requests.post(
        f"{stack.url}/api/v1/admin/erasure", json={"patient_id": patient, "issuer": ""}, headers=stack.api_headers,
        timeout=60,
    )
    assert_gone(other_issuer)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStack]:
    """A stack of its own on each catalog (a local folder for storage), replacing an instance allowed."""
    env = {"DICOMGW_STOW_OVERWRITE": "1", **SHORT_SETTLE}
    if request.param == "postgres":
        env["DICOMGW_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    running = start_stack(tmp_path / "var", "file", None, **env)
    try:
        yield running
    finally:
        running.stack.stop()


def one_slice(base: Path, seed: int, patient: str, study: str | None = None) -> list[Path]:
    return make_series(base, slices=1, rows=64, columns=64, seed=seed, clean=True, patient=patient, study_uid=study)


def erase(stack: RunningStack, patient: str) -> requests.Response:
    return requests.post(
        f"{stack.url}/api/v1/admin/erasure", json={"patient_id": patient}, headers=stack.api_headers, timeout=120
    )


def test_an_instance_of_another_patient_is_refused_so_erasure_misses_nothing(
    catalog_stack: RunningStack, tmp_path: Path
) -> None:
    """The catalog keeps one Patient ID per study, the one erasure finds a patient by. An instance of patient B sent
    into patient A's study was stored, and erasing B found nothing while B's instance stayed served. It is refused
    now (0xA778, what dcm4chee-arc answers), alone: the rest of the request is stored; two uploads racing into a new
    study for two patients store one and refuse the other."""
    stack = catalog_stack
    mine = make_study(tmp_path / "a", 7801, series=1, patient="PAT-A")
    study = uids_of(mine[0])[0]
    assert stack.stow(mine).status_code == 200
    intruder = one_slice(tmp_path / "b", 7802, "PAT-B", study)
    more = one_slice(tmp_path / "a2", 7803, "PAT-A", study)
    answer = stack.stow([*intruder, *more])
    assert answer.status_code == 202, answer.text
    body = answer.json()
    (failed,) = body["00081198"]["Value"]
    assert failed["00081155"] == {"vr": "UI", "Value": [uids_of(intruder[0])[2]]}
    assert failed["00081197"] == {"vr": "US", "Value": [0xA778]}
    assert failed["00091001"] == {"vr": "LT", "Value": [OTHER_PATIENT]}
    assert [item["00081155"]["Value"] for item in body["00081199"]["Value"]] == [[uids_of(more[0])[2]]]
    assert not any(uids_of(intruder[0])[2] in key for key in stored_keys(stack, study))
    # nor may another patient's file replace one of A's instances (its bytes stay the ones the catalog describes)
    import pydicom

    ds = pydicom.dcmread(mine[0])
    ds.PatientID = "PAT-B"
    ds.save_as(tmp_path / "replacement.dcm")
    replaced = stack.stow([tmp_path / "replacement.dcm"])
    assert replaced.status_code == 409, replaced.text
    assert replaced.json()["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [0xA778]}
    token = stack.issue([study])["token"]
    _, series_uid, sop = uids_of(mine[0])
    kept = requests.get(
        f"{stack.root(token)}/studies/{study}/series/{series_uid}/instances/{sop}",
        headers={"Accept": "application/dicom"},
        timeout=30,
    )
    assert kept.status_code == 200 and kept.content == mine[0].read_bytes()
    assert_gone(erase(stack, "PAT-B"))  # nothing of B is stored, so nothing of B stays served
    erased = erase(stack, "PAT-A")
    assert erased.status_code == 200 and erased.json()["instances"] == 4
    assert stored_keys(stack, study) == []

    # two uploads at once into a study neither has stored yet
    first = one_slice(tmp_path / "c", 7804, "PAT-C")
    new_study = uids_of(first[0])[0]
    second = one_slice(tmp_path / "d", 7805, "PAT-D", new_study)
    answers: dict[str, requests.Response] = {}
    start = threading.Barrier(2)

    def upload(name: str, files: list[Path]) -> None:
        start.wait()
        answers[name] = stack.stow(files)

    threads = [threading.Thread(target=upload, args=item) for item in (("PAT-C", first), ("PAT-D", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers.values()) == [200, 409], {k: a.text for k, a in answers.items()}
    (winner,) = [name for name, a in answers.items() if a.status_code == 200]
    (loser,) = [name for name, a in answers.items() if a.status_code == 409]
    assert answers[loser].json()["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [0xA778]}
    assert_gone(erase(stack, loser))
    assert erase(stack, winner).json()["studies"] == [new_study]
    assert stored_keys(stack, new_study) == []


def store_as_an_older_catalog_did(
    stack: RunningStack, study: str, files: list[Path], *, keep_study_patient: bool = True
) -> None:
    """Store another patient's ``files`` in ``study`` as a catalog from before STOW refused that (0xA778) did: the
    study's patient did not stop them (as with an empty Patient ID now) and the study row kept its patient's
    Patient ID and attributes (its other columns took the later values, as the merge did); or, with
    ``keep_study_patient`` false, the row took the later patient's values as the merge did with every other
    column, so the study is ``files``' patient's and the instances stored before are another patient's. Then the
    gateway is upgraded over that catalog: stopped, the catalog taken back to revision 0012, started (migration
    0013 runs)."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from gateway.catalog import Catalog
    from gateway.catalog.catalog import engine_url
    from gateway.catalog.engine import MIGRATIONS

    engine = sa.create_engine(engine_url(stack.stack.database_url))
    try:
        with engine.begin() as conn:
            kept = conn.execute(
                sa.text("SELECT patient_id, attrs FROM studies WHERE study_uid = :s"), {"s": study}
            ).one()
            conn.execute(sa.text("UPDATE studies SET patient_id = NULL WHERE study_uid = :s"), {"s": study})
        assert stack.stow(files).status_code == 200
        if keep_study_patient:
            with engine.begin() as conn:
                conn.execute(
                    sa.text("UPDATE studies SET patient_id = :p, attrs = :a WHERE study_uid = :s"),
                    {"p": kept.patient_id, "a": kept.attrs, "s": study},
                )
    finally:
        engine.dispose()
    stack.stack.stop()
    older = Catalog(stack.stack.database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with older.engine.begin() as conn, warnings.catch_warnings():
            # SQLite's batch mode reflects the tables; it cannot reflect the expression index (lower(patient_name))
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
            config.attributes["connection"] = conn
            command.downgrade(config, "0012")
    finally:
        older.close()
    stack.stack.start()  # migrates the catalog to this version


def test_erasure_removes_the_patients_instances_an_older_catalog_stored_in_another_patients_study(
    catalog_stack: RunningStack, tmp_path: Path
) -> None:
    """Before STOW refused it (0xA778), an instance of patient B could be stored in patient A's study: the catalog kept
    A's Patient ID for the study, and erasing B left that instance served. Migration 0013 finds it in the catalog's
    metadata when the gateway is upgraded over such a catalog, and erasing B now removes it (alone: A's study stays)."""
    stack = catalog_stack
    theirs = one_slice(tmp_path / "a", 7921, "OLD-A")
    study = uids_of(theirs[0])[0]
    own = one_slice(tmp_path / "b", 7922, "OLD-B")
    assert stack.stow([*theirs, *own]).status_code == 200
    stray = one_slice(tmp_path / "b2", 7923, "OLD-B", study)
    store_as_an_older_catalog_did(stack, study, stray)

    token = stack.issue([study])["token"]
    _, series_uid, sop = uids_of(stray[0])
    stray_url = f"{stack.root(token)}/studies/{study}/series/{series_uid}/instances/{sop}"
    assert requests.get(stray_url, headers={"Accept": "application/dicom"}, timeout=30).status_code == 200
    erased = erase(stack, "OLD-B")
    assert erased.status_code == 200, erased.text
    result = erased.json()
    assert result["instances"] == 2 and result["quarantined"] == 0
    assert result["kept"] == {"studies": [], "instances": 0}
    assert sorted((d["level"], d["study_uid"], d["sop_uid"]) for d in result["deletions"]) == sorted(
        [("study", uids_of(own[0])[0], None), ("instance", study, sop)]
    )
    assert_gone(requests.get(stray_url, headers={"Accept": "application/dicom"}, timeout=30))
    assert not any(sop in key for key in stored_keys(stack, study))
    assert stored_keys(stack, uids_of(own[0])[0]) == []
    _, a_series, a_sop = uids_of(theirs[0])
    a_url = f"{stack.root(token)}/studies/{study}/series/{a_series}/instances/{a_sop}"
    answer = requests.get(a_url, headers={"Accept": "application/dicom"}, timeout=30)
    assert answer.status_code == 200 and answer.content == theirs[0].read_bytes()
    assert_gone(erase(stack, "OLD-B"))
    assert erase(stack, "OLD-A").json()["studies"] == [study]
    assert stored_keys(stack, study) == []


def test_erasure_keeps_another_patients_instance_an_older_catalog_stored_in_the_patients_study(
    catalog_stack: RunningStack, tmp_path: Path
) -> None:
    """Erasing patient A removed A's study whole, and with it patient B's instance an older catalog had stored in it
    (before 0xA778): B's data lost, though nobody asked to erase B. Now A's series and instances go and B's instance
    stays, served byte for byte, under its study, whose patient and study values are then B's own (from B's
    instance): no value of A stays in the catalog, storage or cached plans. Erasing B then removes the study."""
    import pydicom
    import sqlalchemy as sa

    from gateway.catalog.catalog import engine_url

    stack = catalog_stack
    mine = make_study(tmp_path / "a", 7931, series=2, patient="ERASE-A")
    study = uids_of(mine[0])[0]
    shared_series = uids_of(mine[0])[1]
    a_values = {"PatientName": "Erased^Alice", "PatientBirthDate": "19010203", "StudyDescription": "ALICE-STUDY"}
    for path in mine:
        ds = pydicom.dcmread(path)
        for name, value in a_values.items():
            setattr(ds, name, value)
        ds.save_as(path)
    assert stack.stow(mine).status_code == 200
    (theirs,) = one_slice(tmp_path / "b", 7939, "KEEP-B", study)
    ds = pydicom.dcmread(theirs)
    ds.SeriesInstanceUID = shared_series  # in one of A's series: that series stays, A's instances in it go
    ds.PatientName, ds.PatientBirthDate = "Kept^Bob", "19020304"
    ds.save_as(theirs)
    sop = uids_of(theirs)[2]
    store_as_an_older_catalog_did(stack, study, [theirs])

    token = stack.issue([study])["token"]
    root = stack.root(token)
    url = f"{root}/studies/{study}/series/{shared_series}/instances/{sop}"
    before = requests.get(f"{url}/metadata", timeout=30)
    assert before.status_code == 200
    for path in mine:  # cached by NGINX (from the second read) before the erasure: none may be used after it
        assert [get(reads(root, path)["frame"]).status_code for _ in range(2)] == [200, 200]

    erased = erase(stack, "ERASE-A")
    assert erased.status_code == 200, erased.text
    result = erased.json()
    other_series = uids_of(mine[3])[1]
    assert (result["studies"], result["series"], result["instances"], result["quarantined"]) == ([study], 2, 6, 0)
    assert result["kept"] == {"studies": [study], "instances": 1}
    assert sorted((d["level"], d["series_uid"], d["sop_uid"], d["instances"]) for d in result["deletions"]) == sorted(
        [("series", other_series, None, 3)]
        + [("instance", shared_series, uids_of(path)[2], 1) for path in mine if uids_of(path)[1] == shared_series]
    )
    for path in mine:
        for name in ("instance_retrieve", "instance_metadata", "frame", "thumbnail"):
            assert_gone(get(reads(root, path)[name]))
    # B's instance: the same bytes, the same metadata, found by B's Patient ID with B's values
    answer = requests.get(url, headers={"Accept": "application/dicom"}, timeout=30)
    assert answer.status_code == 200 and answer.content == theirs.read_bytes()
    metadata = requests.get(f"{url}/metadata", timeout=30)
    assert metadata.status_code == 200 and metadata.json() == before.json()
    study_metadata = requests.get(f"{root}/studies/{study}/metadata", timeout=30)
    assert study_metadata.status_code == 200 and study_metadata.json() == before.json()
    assert requests.get(f"{root}/studies", params={"PatientID": "ERASE-A"}, timeout=30).json() == []
    (found,) = requests.get(
        f"{root}/studies", params={"PatientID": "KEEP-B", "includefield": "PatientBirthDate"}, timeout=30
    ).json()
    assert found["0020000D"]["Value"] == [study]
    assert found["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Kept^Bob"}]}
    assert found["00100030"] == {"vr": "DA", "Value": ["19020304"]}
    assert found["00201208"] == {"vr": "IS", "Value": [1]} and found["00201206"] == {"vr": "IS", "Value": [1]}
    assert "Value" not in found.get("00081030", {})  # A's Study Description went with A's instances
    assert requests.get(f"{root}/studies", params={"StudyDescription": "ALICE*"}, timeout=30).json() == []
    (series_found,) = requests.get(f"{root}/studies/{study}/series", timeout=30).json()
    assert series_found["0020000E"]["Value"] == [shared_series]
    assert stored_keys(stack, study) and all(sop in key for key in stored_keys(stack, study))
    engine = sa.create_engine(engine_url(stack.stack.database_url))
    try:
        with engine.connect() as conn:
            rows = [
                str(tuple(row))
                for table in ("studies", "series", "instances")
                for row in conn.execute(sa.text(f"SELECT * FROM {table}"))  # noqa: S608 - constants
            ]
    finally:
        engine.dispose()
    for value in ["ERASE-A", *a_values.values()]:
        assert not any(value in row for row in rows), value

    again = erase(stack, "KEEP-B")
    assert again.status_code == 200, again.text
    assert (again.json()["studies"], again.json()["instances"], again.json()["kept"]) == (
        [study],
        1,
        {"studies": [], "instances": 0},
    )
    assert [d["level"] for d in again.json()["deletions"]] == ["study"]
    assert_gone(requests.get(url, headers={"Accept": "application/dicom"}, timeout=30))
    assert stored_keys(stack, study) == []


HOLD_POLICY = """
version = "e2e-erasure"

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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def holding_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStack]:
    """A stack of its own on each catalog whose policy quarantines the uploads of tenant ``hold`` and stores the
    rest."""
    policy = tmp_path / "policy.toml"
    policy.write_text(HOLD_POLICY)
    env = {"DICOMGW_PHI_POLICY": str(policy), **SHORT_SETTLE}
    if request.param == "postgres":
        env["DICOMGW_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    running = start_stack(tmp_path / "var", "file", None, **env)
    try:
        yield running
    finally:
        running.stack.stop()


def upload(stack: RunningStack, files: list[Path], tenant: str) -> requests.Response:
    return stack.stow(files, **{"X-DICOMGW-Tenant": tenant, "X-DICOMGW-Region": "eu-west-1"})


def held(stack: RunningStack) -> dict[str, str]:
    """Quarantined file -> its SOP Instance UID, as the review list has them."""
    answer = requests.get(f"{stack.url}/api/v1/admin/quarantine", headers=stack.api_headers, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"  # who uploaded what, and why it is held: never cached
    return {item["key"]: item["sop_uid"] for item in answer.json()["items"]}


def test_erasure_removes_the_quarantined_files_of_a_patient_with_no_stored_study(
    holding_stack: RunningStack, tmp_path: Path
) -> None:
    """Erasure found held files only through the patient's stored studies: a patient whose every file was quarantined
    kept them all, and the erasure answered 404. The quarantine record keeps the file's Patient ID and issuer."""
    import pydicom

    stack = holding_stack
    mine = [*one_slice(tmp_path / "a", 7901, "HELD-A"), *one_slice(tmp_path / "a2", 7902, "HELD-A")]
    theirs = one_slice(tmp_path / "b", 7903, "HELD-B")
    for path in mine:
        ds = pydicom.dcmread(path)
        ds.IssuerOfPatientID = "HOSP-79"
        ds.save_as(path)
    answer = upload(stack, [*mine, *theirs], "hold")
    assert answer.status_code == 409, answer.text
    assert {item["00081197"]["Value"][0] for item in answer.json()["00081198"]["Value"]} == {0xC4F0}
    before = held(stack)
    assert sorted(before.values()) == sorted(uids_of(path)[2] for path in [*mine, *theirs])
    storage = stack.storage()
    assert sorted(storage.list("quarantine/")) == sorted(before)

    url = f"{stack.url}/api/v1/admin/erasure"
    other_issuer = requests.post(
        url, json={"patient_id": "HELD-A", "issuer": "HOSP-80"}, headers=stack.api_headers, timeout=120
    )
    assert_gone(other_issuer)
    assert held(stack) == before
    erased = requests.post(
        url, json={"patient_id": " HELD-A ", "issuer": "HOSP-79"}, headers=stack.api_headers, timeout=120
    )
    assert erased.status_code == 200, erased.text
    assert erased.headers["Content-Type"] == "application/json"
    assert erased.json() == {
        "studies": [],
        "series": 0,
        "instances": 0,
        "deletions": [],
        "kept": {"studies": [], "instances": 0},
        "quarantined": 2,
    }
    kept = {key: sop for key, sop in before.items() if sop == uids_of(theirs[0])[2]}
    assert held(stack) == kept and sorted(storage.list("quarantine/")) == sorted(kept)
    assert_gone(erase(stack, "HELD-A"))
    assert erase(stack, "HELD-B").json()["quarantined"] == 1
    assert list(storage.list("quarantine/")) == []


def test_a_released_file_keeps_its_uploads_tenant_for_retention(holding_stack: RunningStack, tmp_path: Path) -> None:
    """A release ingested the held file as the admin's own upload (no tenant): the policy's retention for the
    upload's tenant never applied to it (kept 3650 days, not 30). The quarantine record keeps the upload's context
    (migration 0015) and the release stores the file with it, where the policy lets the upload's data go."""
    import sqlalchemy as sa

    from gateway.catalog.catalog import engine_url

    stack = holding_stack
    [path] = make_series(tmp_path / "held", slices=1, rows=64, columns=64, seed=7931)  # with PHI
    study, series, sop = uids_of(path)
    assert upload(stack, [path], "hold").status_code == 409
    [key] = [key for key, held_sop in held(stack).items() if held_sop == sop]
    released = requests.post(
        f"{stack.url}/api/v1/admin/quarantine/{key}/release", headers=stack.api_headers, timeout=60
    )
    assert released.status_code == 200, released.text
    assert released.json() == {"status": "stored", "sop_uid": sop, "detail": ""}
    assert held(stack) == {} and list(stack.storage().list("quarantine/")) == []
    url = f"{stack.root(stack.issue([study])['token'])}/studies/{study}/series/{series}/instances/{sop}"
    assert requests.get(url, headers={"Accept": "application/dicom"}, timeout=30).content == path.read_bytes()
    engine = sa.create_engine(engine_url(stack.stack.database_url))
    try:
        with engine.begin() as conn:  # 40 days ago (a retention measured in days cannot be waited out)
            conn.execute(
                sa.text("UPDATE instances SET created_at = created_at - 40 * 86400 WHERE study_uid = :study"),
                {"study": study},
            )
    finally:
        engine.dispose()
    policy = tmp_path / "retention.toml"
    policy.write_text(HOLD_POLICY + "\n[retention]\ndays = 3650\ntenants = { hold = 30 }\n")
    env = {**os.environ, **stack.stack.gateway_env(), "DICOMGW_PHI_POLICY": str(policy)}
    dry = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "retention", "run", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert [(i["study_uid"], i["sop_uid"]) for i in json.loads(dry.stdout)["would_remove"]] == [(study, None)]


def test_a_release_the_ingest_refuses_is_a_409_and_the_file_stays_held(
    holding_stack: RunningStack, tmp_path: Path
) -> None:
    """A release whose ingest failed (another file stored under the same SOP Instance UID) answered 200
    {"status": "failed", ...}: a success status for a file that was not stored. It is the JSON 409 naming why,
    the file still held."""
    import pydicom

    stack = holding_stack
    [stored] = make_series(tmp_path / "stored", slices=1, rows=64, columns=64, seed=7941)
    assert upload(stack, [stored], "store").status_code == 200
    ds = pydicom.dcmread(stored)
    ds.InstanceNumber = 99  # the same instance, other bytes
    other = tmp_path / "other.dcm"
    ds.save_as(other)
    assert upload(stack, [other], "hold").status_code == 409
    before = held(stack)
    [key] = list(before)
    refused = requests.post(
        f"{stack.url}/api/v1/admin/quarantine/{key}/release", headers=stack.api_headers, timeout=60
    )
    assert refused.status_code == 409
    assert refused.headers["Content-Type"] == "application/json"
    assert refused.json() == {
        "error": "conflict",
        "detail": "the file could not be stored: an instance with this SOP Instance UID and different content is "
        "already stored",
    }
    assert held(stack) == before and list(stack.storage().list("quarantine/")) == [key]


def test_erasure_leaves_another_patients_file_held_under_the_same_study(
    holding_stack: RunningStack, tmp_path: Path
) -> None:
    """Erasing a patient removed every file held under their studies' UIDs, another patient's among them. Only the
    patient's go now; a record quarantined before the patient was recorded (migration 0012) still goes with its
    study."""
    import sqlalchemy as sa

    from gateway.catalog.catalog import engine_url

    stack = holding_stack
    stored = one_slice(tmp_path / "a", 7911, "OWN-A")
    study = uids_of(stored[0])[0]
    assert upload(stack, stored, "store").status_code == 200
    mine = one_slice(tmp_path / "a2", 7912, "OWN-A", study)
    theirs = one_slice(tmp_path / "b", 7913, "OWN-B", study)
    legacy = one_slice(tmp_path / "c", 7914, "OWN-C", study)
    answer = upload(stack, [*mine, *theirs, *legacy], "hold")
    assert answer.status_code == 409, answer.text
    sops = {name: uids_of(files[0])[2] for name, files in (("mine", mine), ("theirs", theirs), ("legacy", legacy))}
    keys = {sop: key for key, sop in held(stack).items()}
    assert sorted(keys) == sorted(sops.values())
    engine = sa.create_engine(engine_url(stack.stack.database_url))
    try:
        with engine.begin() as conn:  # as a row quarantined before migration 0012 is
            conn.execute(
                sa.text("UPDATE quarantine SET patient_id = NULL, issuer_of_patient_id = NULL WHERE key = :key"),
                {"key": keys[sops["legacy"]]},
            )
    finally:
        engine.dispose()

    erased = erase(stack, "OWN-A")
    assert erased.status_code == 200, erased.text
    assert (erased.json()["studies"], erased.json()["instances"], erased.json()["quarantined"]) == ([study], 1, 2)
    assert held(stack) == {keys[sops["theirs"]]: sops["theirs"]}
    assert list(stack.storage().list("quarantine/")) == [keys[sops["theirs"]]]
    assert stored_keys(stack, study) == []
    again = erase(stack, "OWN-B")
    assert again.status_code == 200, again.text
    assert again.json() == {
        "studies": [],
        "series": 0,
        "instances": 0,
        "deletions": [],
        "kept": {"studies": [], "instances": 0},
        "quarantined": 1,
    }
    assert held(stack) == {} and list(stack.storage().list("quarantine/")) == []


def test_erasure_records_hold_no_identifier_in_clear_and_a_blank_patient_id_is_refused(
    holding_stack: RunningStack, tmp_path: Path
) -> None:
    """A quarantine record keeps keyed digests of the held file's Patient ID and issuer, never the values (the held
    file may be a de-identified copy). A blank Patient ID is no patient: it matched every held file naming none, and
    the erasure deleted them all."""
    import sqlalchemy as sa

    from gateway.catalog.catalog import engine_url

    stack = holding_stack
    named, unnamed = one_slice(tmp_path / "a", 7921, "CLEAR-A"), one_slice(tmp_path / "b", 7922, "")
    assert upload(stack, [*named, *unnamed], "hold").status_code == 409
    before = held(stack)
    assert len(before) == 2
    engine = sa.create_engine(engine_url(stack.stack.database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT patient_id, issuer_of_patient_id FROM quarantine")).all()
    finally:
        engine.dispose()
    recorded = sorted(row[0] for row in rows)
    assert recorded[0] == "" and re.fullmatch(r"[0-9a-f]{64}", recorded[1]), recorded
    assert [row[1] for row in rows] == ["", ""]
    for blank in ("", "   "):
        refused = erase(stack, blank)
        assert refused.status_code == 400, refused.text
        assert refused.json() == {
            "error": "bad_request",
            "detail": "patient_id must be a non-empty string of at most 64 characters",
        }
    assert held(stack) == before
    assert erase(stack, " CLEAR-A ").json()["quarantined"] == 1
    assert list(held(stack).values()) == [uids_of(unnamed[0])[2]]


def audit_page(stack: RunningStack, **params: str) -> requests.Response:
    return requests.get(f"{stack.url}/api/v1/admin/audit", params=params, headers=stack.api_headers, timeout=30)


def every_page(stack: RunningStack, **params: str) -> list[list[dict[str, Any]]]:
    """The pages a client gets following ``next_cursor`` until it is null."""
    pages: list[list[dict[str, Any]]] = []
    cursor: dict[str, str] = {}
    while True:
        answer = audit_page(stack, **params, **cursor)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Cache-Control"] == "no-store"
        pages.append(answer.json()["items"])
        if answer.json()["next_cursor"] is None:
            return pages
        assert len(pages) < 50
        cursor = {"cursor": answer.json()["next_cursor"]}


def test_the_audit_pages_to_its_end_and_refuses_a_malformed_filter(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The audit answered the newest 1,000 records and no way past them, and took any study_uid. A client now follows
    ``next_cursor`` to the oldest record; a malformed UID, cursor or parameter is a JSON 400."""
    from gateway.catalog import Catalog

    base = tmp_path_factory.mktemp("audit-pages")
    patient = f"PAGES-{stack.backend}"
    studies = [make_study(base, 7900 + 10 * n, series=1, patient=patient) for n in range(3)]
    assert stack.stow([f for files in studies for f in files]).status_code == 200
    assert erase(stack, patient).status_code == 200  # one deletion record per study
    # five hook decisions, written the way ingest writes them
    study = uids_of(studies[0][0])[0]
    catalog = Catalog(stack.stack.database_url)
    try:
        for n in range(5):
            catalog.add_audit(source="stow", sub="e2e", sop_uid=f"{study}.{n}", study_uid=study, decision="accept")
    finally:
        catalog.close()

    hook = every_page(stack, study_uid=study, limit="2")
    assert [len(page) for page in hook] == [2, 2, 1]
    assert [r["sop_uid"] for page in hook for r in page] == [f"{study}.{n}" for n in (4, 3, 2, 1, 0)]
    everything = audit_page(stack, kind="deletion", limit="1000").json()["items"]
    deletions = every_page(stack, kind="deletion", limit="2")
    assert [r["id"] for page in deletions for r in page] == [r["id"] for r in everything]
    assert {uids_of(files[0])[0] for files in studies} <= {r["study_uid"] for r in everything}
    single = audit_page(stack, kind="deletion", study_uid=study).json()
    assert [r["study_uid"] for r in single["items"]] == [study] and single["next_cursor"] is None

    refusals = {
        "study_uid": ({"study_uid": "1.2.abc"}, "invalid_uid", "study_uid is not a valid DICOM UID"),
        "sop_uid": ({"sop_uid": "x" * 70}, "invalid_uid", "sop_uid is not a valid DICOM UID"),
        "cursor": ({"cursor": "next"}, "bad_request", "cursor: expected an integer from 1 to 4611686018427387904"),
        "zero cursor": ({"cursor": "0"}, "bad_request", "cursor: expected an integer from 1 to 4611686018427387904"),
        "unknown": ({"studyUID": study}, "bad_request", "unknown parameters: studyUID"),
        "kind": ({"kind": "access"}, "bad_request", "kind must be hook, deletion or token"),
        "sop of a deletion": (
            {"kind": "deletion", "sop_uid": study}, "bad_request", "sop_uid filters kind=hook only"
        ),
    }
    for name, (params, code, detail) in refusals.items():
        answer = audit_page(stack, **params)
        assert answer.status_code == 400, name
        assert answer.headers["Content-Type"] == "application/json", name
        assert answer.json() == {"error": code, "detail": detail}, name


def workers_of(stack: RunningStack) -> list[int]:
    master = stack.stack.processes["gunicorn"].pid
    return [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and parent_of(int(pid)) == master]


def test_a_crash_mid_delete_leaves_nothing_visible_and_reconcile_finishes_it(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The workers are killed (SIGKILL) while the DELETE waits between hiding and removing: aimed, not timed, by
    watching the catalog for the unfinished deletion record."""
    files = make_study(tmp_path_factory.mktemp("del-crash"), 461, series=1)
    assert stack.stow(files).status_code == 200
    study = uids_of(files[0])[0]
    specs = reads(stack.root(stack.issue([study])["token"]), files[0])
    assert get(specs["frame"]).status_code == 200 and get(specs["frame"]).status_code == 200  # plan cached

    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(_delete_or_error(stack, f"studies/{study}")))
    thread.start()
    db = sqlite3.connect(f"file:{stack.stack.var_dir / 'catalog.db'}?mode=ro", uri=True, timeout=30)
    deadline = time.monotonic() + 60
    try:
        while (
            db.execute("SELECT 1 FROM deletions WHERE study_uid = ? AND finished_at IS NULL", (study,)).fetchone()
            is None
        ):
            assert time.monotonic() < deadline, "the DELETE never hid the study"
            time.sleep(0.005)
        for pid in workers_of(stack):
            os.kill(pid, signal.SIGKILL)
        (created_at,) = db.execute("SELECT created_at FROM deletions WHERE study_uid = ?", (study,)).fetchone()
    finally:
        db.close()
    thread.join()
    first = outcome[0]
    env = {**os.environ, **stack.stack.gateway_env()}
    command = [sys.executable, "-m", "gateway.cli", "reconcile"]
    if isinstance(first, requests.Response) and first.status_code == 204:
        # NGINX resent the DELETE (an idempotent method whose keep-alive connection broke) to a restarted worker,
        # which found the deletion interrupted and finished it
        assert stored_keys(stack, study) == []
    else:
        # hidden, though its objects are still stored: what reads the catalog is a 404 at once; a plan NGINX
        # cached may serve the old bytes, whole, until the bound has passed (the crashed DELETE never waited)
        assert len([key for key in stored_keys(stack, study) if not is_derivative(key)]) == len(files)
        for name in ("qido", "study_metadata", "instance_metadata", "rendered", "thumbnail", "wado_jpeg"):
            assert_gone(get(specs[name])), name  # type: ignore[func-returns-value]
        settle = float(stack.stack.extra_env.get("DICOMGW_DELETE_SETTLE", "5"))
        time.sleep(max(0.0, created_at + settle + 1 - time.time()))  # the documented bound, waited out
        for name, spec in specs.items():
            assert_gone(get(spec)), name  # type: ignore[func-returns-value]
        dry = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert dry.returncode == 1, dry.stderr
        report = json.loads(dry.stdout)
        assert [d["study_uid"] for d in report["unfinished_deletions"]] == [study]
        assert not any(study in key for key in report["orphans"])  # never taken for orphans to register again
        # the client's retry finishes the deletion (it answered 404 "nothing stored there" and left the objects
        # to reconcile --repair)
        retried = delete(stack, f"studies/{study}")
        assert retried.status_code == 204, retried.text
        assert stored_keys(stack, study) == []
    for name, spec in specs.items():
        assert_gone(get(spec)), name  # type: ignore[func-returns-value]
    clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert clean.returncode == 0 and json.loads(clean.stdout)["unfinished_deletions"] == [], clean.stdout
    assert_gone(delete(stack, f"studies/{study}"))
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200


def _delete_or_error(stack: RunningStack, path: str) -> requests.Response | Exception:
    try:
        return delete(stack, path)
    except requests.RequestException as error:  # the connection died with the worker
        return error


def _erase_or_error(stack: RunningStack, body: dict[str, str]) -> requests.Response | Exception:
    try:
        return requests.post(f"{stack.url}/api/v1/admin/erasure", json=body, headers=stack.api_headers, timeout=120)
    except requests.RequestException as error:  # the connection died with the worker
        return error


def test_an_erasure_sent_again_after_a_crash_finishes_the_one_the_crash_interrupted(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The workers are killed (SIGKILL) while an erasure waits between hiding the patient's studies and removing
    their objects. The same erasure sent again answered 404 "no study or quarantined file of this patient is
    stored" (nothing visible is the patient's any more) and left the objects in storage for `reconcile --repair`:
    the operator could not tell whether the erasure had been done. It now finishes the interrupted one and says
    what it removed; sent once more, there is nothing left: the 404."""
    base = tmp_path_factory.mktemp("erasure-crash")
    patient = f"ERASE-CRASH-{stack.backend}"
    first, second = make_study(base, 9471, series=1, patient=patient), make_study(base, 9481, series=1, patient=patient)
    assert stack.stow([*first, *second]).status_code == 200
    studies = sorted(uids_of(f[0])[0] for f in (first, second))
    body = {"patient_id": patient, "reason": "GDPR art. 17"}

    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(_erase_or_error(stack, body)))
    thread.start()
    db = sqlite3.connect(f"file:{stack.stack.var_dir / 'catalog.db'}?mode=ro", uri=True, timeout=30)
    marks = ",".join("?" * len(studies))
    deadline = time.monotonic() + 60
    try:
        while db.execute(
            f"SELECT count(*) FROM deletions WHERE study_uid IN ({marks}) AND finished_at IS NULL", studies
        ).fetchone() != (2,):
            assert time.monotonic() < deadline, "the erasure never hid the studies"
            time.sleep(0.005)
        for pid in workers_of(stack):
            os.kill(pid, signal.SIGKILL)
    finally:
        db.close()
    thread.join()
    crashed = outcome[0]
    assert not isinstance(crashed, requests.Response) or crashed.status_code >= 500  # POST is never resent
    assert len([key for key in stored_keys(stack, studies[0]) if not is_derivative(key)]) == len(first)

    answer = _erase_or_error(stack, body)
    assert isinstance(answer, requests.Response) and answer.status_code == 200, answer
    result = answer.json()
    assert (result["studies"], result["series"], result["instances"]) == (studies, 2, 6)
    assert sorted((d["level"], d["study_uid"], d["instances"]) for d in result["deletions"]) == [
        ("study", study, 3) for study in studies
    ]
    assert result["kept"] == {"studies": [], "instances": 0} and result["quarantined"] == 0
    assert patient not in answer.text
    for study in studies:
        assert stored_keys(stack, study) == []
    env = {**os.environ, **stack.stack.gateway_env()}
    command = [sys.executable, "-m", "gateway.cli", "reconcile"]
    clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert clean.returncode == 0 and json.loads(clean.stdout)["unfinished_deletions"] == [], clean.stdout
    assert_gone(_erase_or_error(stack, body))  # type: ignore[arg-type]
    # the records keep the patient's digests for the retry alone: the audit lists what and why, as before
    audit = requests.get(
        f"{stack.url}/api/v1/admin/audit", params={"kind": "deletion"}, headers=stack.api_headers, timeout=30
    ).json()["items"]
    erased = [r for r in audit if r["study_uid"] in studies]
    assert len(erased) == 2 and all(r["finished_at"] for r in erased)
    assert not any("patient_id" in r or "issuer_of_patient_id" in r for r in erased)


def test_retention_run_removes_what_the_policy_expired(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Time is moved by backdating the catalog rows (a retention measured in days cannot be waited out); the
    rest is the real command against the real stack."""
    base = tmp_path_factory.mktemp("retention")
    trial, kept = make_study(base, 471, series=1), make_study(base, 481, series=1)
    assert stack.stow(trial, **{"X-DICOMGW-Tenant": "trial"}).status_code == 200
    assert stack.stow(kept).status_code == 200
    studies = [uids_of(files[0])[0] for files in (trial, kept)]
    root = stack.root(stack.issue(studies)["token"])
    frame = reads(root, trial[0])["frame"]
    assert get(frame).status_code == 200 and get(frame).status_code == 200  # plan cached
    db = sqlite3.connect(stack.stack.var_dir / "catalog.db", timeout=30)
    with db:
        db.executemany(
            "UPDATE instances SET created_at = created_at - 40 * 86400 WHERE study_uid = ?", [(s,) for s in studies]
        )
    db.close()
    policy = base / "policy.toml"
    policy.write_text("version = 1\n[retention]\ndays = 3650\ntenants = { trial = 30 }\n")
    env = {**os.environ, **stack.stack.gateway_env(), "DICOMGW_PHI_POLICY": str(policy)}
    command = [sys.executable, "-m", "gateway.cli", "retention", "run"]

    dry = subprocess.run([*command, "--dry-run"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert dry.returncode == 0, dry.stderr
    assert [(i["study_uid"], i["sop_uid"]) for i in json.loads(dry.stdout)["would_remove"]] == [(studies[0], None)]
    assert get(frame).status_code == 200  # a dry run removes nothing

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["studies"] == [studies[0]]
    assert_gone(get(frame))
    assert stored_keys(stack, studies[0]) == []
    assert get(get_spec_study(root, studies[1])).status_code == 200
    audit = requests.get(
        f"{stack.url}/api/v1/admin/audit",
        params={"kind": "deletion", "study_uid": studies[0]},
        headers=stack.api_headers,
        timeout=30,
    ).json()["items"]
    assert [(r["sub"], r["reason"]) for r in audit] == [("retention", "retention: older than 30 days")]


def test_a_tenant_outside_ascii_is_the_policys_tenant(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Session 25: ``X-DICOMGW-Tenant: Zürich`` as curl sends it (UTF-8) was recorded as ``ZÃ¼rich`` (WSGI reads
    headers as ISO-8859-1), so the policy's ``tenants = { "Zürich" = 30 }`` (and a rule matching that tenant)
    never applied to its uploads: retention kept them for good. UTF-8 is read as UTF-8, as a DELETE's reason is."""
    base = tmp_path_factory.mktemp("tenant-utf8")
    files = make_study(base, 8261, series=1)
    assert stack.stow(files, **{"X-DICOMGW-Tenant": "Zürich".encode()}).status_code == 200  # type: ignore[arg-type]
    study = uids_of(files[0])[0]
    db = sqlite3.connect(stack.stack.var_dir / "catalog.db", timeout=30)
    with db:
        db.execute("UPDATE instances SET created_at = created_at - 40 * 86400 WHERE study_uid = ?", (study,))
    db.close()
    policy = base / "policy.toml"
    policy.write_text('version = 1\n[retention]\ntenants = { "Zürich" = 30 }\n', encoding="utf-8")
    env = {**os.environ, **stack.stack.gateway_env(), "DICOMGW_PHI_POLICY": str(policy)}
    dry = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "retention", "run", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert [item["study_uid"] for item in json.loads(dry.stdout)["would_remove"]] == [study]


def test_retention_leaves_an_instance_uploaded_into_its_study_during_the_run(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A run removes one reason after another, each after its settle: a study it chose as wholly expired may get a
    new instance meanwhile (here during the first reason's settle), which is not the run's to remove."""
    base = tmp_path_factory.mktemp("retention-race")
    trial, old = make_study(base, 7740, series=1), make_study(base, 7742, series=1)
    assert stack.stow(trial, **{"X-DICOMGW-Tenant": "trial"}).status_code == 200
    assert stack.stow(old).status_code == 200
    studies = [uids_of(files[0])[0] for files in (trial, old)]
    db = sqlite3.connect(stack.stack.var_dir / "catalog.db", timeout=30)
    with db:
        db.execute("UPDATE instances SET created_at = created_at - 40 * 86400 WHERE study_uid = ?", (studies[0],))
        db.execute("UPDATE instances SET created_at = created_at - 60 * 86400 WHERE study_uid = ?", (studies[1],))
    db.close()
    policy = base / "policy.toml"
    policy.write_text("version = 1\n[retention]\ndays = 50\ntenants = { trial = 30 }\n")
    env = {**os.environ, **stack.stack.gateway_env(), "DICOMGW_PHI_POLICY": str(policy)}
    run = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "retention", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # "older than 30 days" goes first: once its study is hidden the run waits its settle
        qido = f"{stack.url}/dicomweb/studies/{studies[0]}/series"
        deadline = time.monotonic() + 60
        while requests.get(qido, headers=stack.api_headers, timeout=30).status_code != 404:
            assert time.monotonic() < deadline and run.poll() is None, "the run never hid the first study"
            time.sleep(0.05)
        new = make_series(base / "new", slices=1, rows=64, columns=64, seed=7744, clean=True, study_uid=studies[1])
        assert stack.stow(new).status_code == 200
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert json.loads(out)["studies"] == sorted(studies)
    root = stack.root(stack.issue([studies[1]])["token"])
    kept = requests.get(f"{root}/studies/{studies[1]}/instances", timeout=30)
    assert kept.status_code == 200, kept.text
    assert [item["00080018"]["Value"][0] for item in kept.json()] == [uids_of(new[0])[2]]
    assert get(reads(root, new[0])["instance_retrieve"]).status_code == 200
    objects = [key.rsplit("/", 1)[1] for key in stored_keys(stack, studies[1]) if key.endswith(".dcm")]
    assert objects == [f"{uids_of(new[0])[2]}.dcm"]  # the expired ones gone, the new one kept


def stored_expired(stack: RunningStack, base: Path, *, seed: int, tenant: str) -> tuple[Path, dict[str, str]]:
    """One instance stored for ``tenant`` 40 days ago (its ``created_at`` set back), and the environment of a
    `retention run` whose policy keeps that tenant's studies 30 days: only this study expires (the stack holds other
    tests' backdated studies)."""
    (path,) = make_series(base / "s", slices=1, rows=64, columns=64, seed=seed, clean=True)
    study = uids_of(path)[0]
    assert stack.stow([path], **{"X-DICOMGW-Tenant": tenant}).status_code == 200
    db = sqlite3.connect(stack.stack.var_dir / "catalog.db", timeout=30)
    with db:
        db.execute("UPDATE instances SET created_at = created_at - 40 * 86400 WHERE study_uid = ?", (study,))
    db.close()
    policy = base / "policy.toml"
    policy.write_text(f"version = 1\n[retention]\ntenants = {{ {tenant} = 30 }}\n")
    return path, {**os.environ, **stack.stack.gateway_env(), "DICOMGW_PHI_POLICY": str(policy)}


@pytest.mark.parametrize("stack", ["file"], indirect=True)  # the pause is strace's on the run's folder listing
def test_an_instance_sent_again_while_retention_removes_it_is_stored_and_served(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Session 29: a PACS sends an instance again while a retention run (or a DELETE, an erasure, `reconcile
    --repair`: one removal) takes its expired copy away. The run checked which instances were stored again, then
    listed and removed their objects; an upload stored in between was answered 200, listed by QIDO, and its object
    was gone: every read of it failed, for good. The interleaving is made certain by strace, which stops the run
    (SIGSTOP) as it opens the series folder to list it, and the upload is sent and answered meanwhile. The removal
    now holds each instance's upload reservation while it removes its objects, and its claim sees what was stored
    again: the upload is stored and served whole."""
    require_strace()
    base = tmp_path_factory.mktemp("retention-resent")
    path, env = stored_expired(stack, base, seed=7760, tenant="resent-during-removal")
    study, series, sop = uids_of(path)
    folder = stack.storage().root / "studies" / study / "series" / series / "instances"
    trace = base / "trace"
    run = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", str(trace), "-P", str(folder), "-e", "trace=openat",
         "-e", "inject=openat:signal=SIGSTOP:when=1",
         sys.executable, "-m", "gateway.cli", "retention", "run"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    resent: list[requests.Response] = []
    sender = threading.Thread(target=lambda: resent.append(stack.stow([path])))
    try:
        deadline = time.monotonic() + 120
        while "stopped by SIGSTOP" not in (trace.read_text() if trace.exists() else ""):
            assert time.monotonic() < deadline and run.poll() is None, ("the run never listed the folder", trace)
            time.sleep(0.02)
        # stopped after it decided what to remove, before it removed it: the instance is hidden, its object there
        assert (folder / f"{sop}.dcm").exists()
        sender.start()
        sender.join(timeout=120)  # stored while the run is stopped: it claims its instances after the listing
        tracee = int(re.findall(r"^(\d+) ", trace.read_text(), re.M)[-1])
        os.kill(tracee, signal.SIGCONT)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert json.loads(out)["studies"] == [study]
    [answer] = resent
    assert answer.status_code == 200, answer.text[:2000]
    root = stack.root(stack.issue([study])["token"])
    listed = requests.get(f"{root}/studies/{study}/instances", timeout=30)
    assert listed.status_code == 200 and [i["00080018"]["Value"][0] for i in listed.json()] == [sop]
    retrieved = get(reads(root, path)["instance_retrieve"])
    assert (retrieved.status_code, retrieved.content) == (200, path.read_bytes())
    assert [key.rsplit("/", 1)[1] for key in stored_keys(stack, study) if key.endswith(".dcm")] == [f"{sop}.dcm"]


@pytest.mark.parametrize("stack", ["file"], indirect=True)  # strace's pauses are on the local folder's paths
def test_a_duplicate_upload_under_way_as_retention_removes_its_instance_leaves_no_object(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Session 29: the same file sent again (a duplicate: nothing to register) while a retention run (or a DELETE)
    removes its instance. The removal met the upload's reservation and kept every object of the instance, for an
    upload that stored nothing: after the answer the object stayed in storage for good, and `reconcile --repair`
    took it for an orphan and registered the removed instance again. The removal now waits for such an upload (as
    long as an upload waits for another) and then judges by what it stored. Made certain by strace: the upload's
    worker stops holding the reservation (at its check that storage still has the object), and the run stops in
    its first wait after its settle."""
    require_strace()
    base = tmp_path_factory.mktemp("retention-duplicate")
    path, env = stored_expired(stack, base, seed=7770, tenant="duplicate-during-removal")
    study, series, sop = uids_of(path)
    target = stack.storage().root / f"studies/{study}/series/{series}/instances/{sop}.dcm"
    workers = workers_of(stack)
    stats = "stat,lstat,newfstatat,statx"
    upload_trace, run_trace, attached = base / "upload", base / "run", base / "attached"
    with attached.open("w") as log:
        paused = subprocess.Popen(
            ["strace", "-f", "-o", str(upload_trace), "-P", str(target), "-e", f"trace={stats}",
             "-e", f"inject={stats}:signal=SIGSTOP:when=1", *(f"-p{pid}" for pid in workers)],
            stderr=log,
        )  # fmt: skip
    answer: list[requests.Response] = []
    upload = threading.Thread(target=lambda: answer.append(stack.stow([path])))
    run: subprocess.Popen[str] | None = None
    stopped = 0
    try:
        deadline = time.monotonic() + 120
        while attached.read_text().count("attached") < len(workers):
            assert time.monotonic() < deadline and paused.poll() is None, attached.read_text()
            time.sleep(0.01)
        upload.start()
        while "stopped by SIGSTOP" not in (text := upload_trace.read_text() if upload_trace.exists() else ""):
            assert time.monotonic() < deadline and upload.is_alive(), "the upload never checked its object"
            time.sleep(0.01)
        stopped = int(re.findall(r"^(\d+) .*stopped by SIGSTOP", text, re.M)[0])
        # the run's first sleep is its settle; the second, if any, waits for the upload
        run = subprocess.Popen(
            ["strace", "-f", "-o", str(run_trace), "-e", "trace=clock_nanosleep",
             "-e", "inject=clock_nanosleep:signal=SIGSTOP:when=2",
             sys.executable, "-m", "gateway.cli", "retention", "run"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while "stopped by SIGSTOP" not in (text := run_trace.read_text() if run_trace.exists() else ""):
            assert time.monotonic() < deadline, "the run neither waited nor ended"
            if run.poll() is not None:
                break  # it did not wait for the upload
            time.sleep(0.01)
        paused.terminate()
        paused.wait(timeout=30)
        os.kill(stopped, signal.SIGCONT)
        upload.join(timeout=120)
        [duplicate] = answer
        assert duplicate.status_code == 200, duplicate.text[:2000]
        if run.poll() is None:
            os.kill(int(re.findall(r"^(\d+) .*stopped by SIGSTOP", text, re.M)[0]), signal.SIGCONT)
        out, err = run.communicate(timeout=120)
    finally:
        if paused.poll() is None:
            paused.terminate()
        if stopped:
            with contextlib.suppress(ProcessLookupError):  # its request's thread has ended
                os.kill(stopped, signal.SIGCONT)
        if run is not None and run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert json.loads(out)["studies"] == [study]
    assert stored_keys(stack, study) == []  # nothing of the removed instance left for reconcile to register again


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_a_retention_run_stopped_in_its_settle_wait_is_finished_by_the_next_run(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory, signum: signal.Signals
) -> None:
    """Ctrl-C (or a kill: `docker compose restart`, a Lambda's timeout) while a run waits out its settle: the study
    is hidden, its objects not yet removed. The run said click's "Aborted!" (exit 1) and the next run found nothing
    expired (`"removed": []`: what is hidden is no longer listed), so the objects stayed in storage until someone
    ran `reconcile --repair`. Ctrl-C now says so in one line (exit 130), and the next run finishes the deletions a
    stopped run left, reported under `finished_deletions`; nothing is left for reconcile."""
    base = tmp_path_factory.mktemp(f"retention-stopped-{signum.name}")
    files = make_study(base, 7750 + signum, series=1)
    tenant = f"stopped-{signum.name}"  # only this study expires: the stack holds other tests' backdated studies
    assert stack.stow(files, **{"X-DICOMGW-Tenant": tenant}).status_code == 200
    study = uids_of(files[0])[0]
    db = sqlite3.connect(stack.stack.var_dir / "catalog.db", timeout=30)
    with db:
        db.execute("UPDATE instances SET created_at = created_at - 40 * 86400 WHERE study_uid = ?", (study,))
    db.close()
    wait_for_derivatives(stack, study, 3)  # the worker's copies are stored too, and go with their instances
    keys = stored_keys(stack, study)
    assert len([key for key in keys if key.endswith(".dcm")]) == 3
    policy = base / "policy.toml"
    policy.write_text(f"version = 1\n[retention]\ntenants = {{ {tenant} = 30 }}\n")
    env = {**os.environ, **stack.stack.gateway_env(), "DICOMGW_PHI_POLICY": str(policy)}
    command = [sys.executable, "-m", "gateway.cli", "retention", "run"]
    run = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_from_a_terminal,
    )
    try:
        qido = f"{stack.url}/dicomweb/studies/{study}/series"
        deadline = time.monotonic() + 60
        while requests.get(qido, headers=stack.api_headers, timeout=30).status_code != 404:
            assert time.monotonic() < deadline and run.poll() is None, "the run never hid the study"
            time.sleep(0.05)
        run.send_signal(signum)  # hidden, in its settle wait (DICOMGW_DELETE_SETTLE: seconds)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    if signum == signal.SIGINT:
        assert (run.returncode, out) == (130, "")
        assert err == "stopped (Ctrl-C): the next `retention run` finishes the deletions this one began\n"
    assert stored_keys(stack, study) == keys  # hidden, not yet removed

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["removed"] == []
    assert [(d["study_uid"], d["removed"]) for d in report["finished_deletions"]] == [(study, len(keys))]
    assert stored_keys(stack, study) == []
    audit = requests.get(
        f"{stack.url}/api/v1/admin/audit",
        params={"kind": "deletion", "study_uid": study},
        headers=stack.api_headers,
        timeout=30,
    ).json()["items"]
    assert [(r["sub"], r["reason"]) for r in audit] == [("retention", "retention: older than 30 days")]
    left = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "reconcile", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert json.loads(left.stdout)["unfinished_deletions"] == [], left.stdout


def test_an_instance_sent_again_corrected_during_the_delete_keeps_no_derivative_of_the_deleted_one(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Session 26: a portal deletes a study and sends the corrected instance (same UIDs, other pixels) while the
    DELETE waits its settle. The DELETE skips an instance stored again, and so skipped everything under its name:
    after the 204 the HTJ2K derivative of the deleted pixels (``{sop}/htj2k-{old sha256[:16]}.j2c``) stayed in
    storage for good, referenced by nothing (`reconcile` does not see it). It goes; the new instance, its own
    derivative, and the frames it is served with are the new ones."""
    import numpy as np
    import pydicom

    base = tmp_path_factory.mktemp("resent-corrected")
    (first,) = make_series(base / "v1", slices=1, rows=128, columns=128, seed=7780, clean=True)
    study, _, sop = uids_of(first)
    corrected = pydicom.dcmread(first)
    corrected.PixelData = (np.arange(128 * 128, dtype=np.uint16) % 997).tobytes()
    second = base / "v2.dcm"
    corrected.save_as(second, enforce_file_format=True)
    assert stack.stow([first]).status_code == 200
    wait_for_derivatives(stack, study, 1)
    (deleted,) = [key for key in stored_keys(stack, study) if is_derivative(key)]

    answer: dict[str, requests.Response] = {}
    deleting = threading.Thread(target=lambda: answer.update(d=delete(stack, f"studies/{study}")))
    deleting.start()
    qido = f"{stack.url}/dicomweb/studies/{study}/series"
    deadline = time.monotonic() + 30
    while requests.get(qido, headers=stack.api_headers, timeout=30).status_code != 404:  # hidden: in its settle
        assert time.monotonic() < deadline and deleting.is_alive(), "the DELETE never hid the study"
        time.sleep(0.05)
    assert stack.stow([second]).status_code == 200
    deleting.join(timeout=120)
    assert answer["d"].status_code == 204

    assert deleted not in stored_keys(stack, study)
    assert [key.rsplit("/", 1)[1] for key in stored_keys(stack, study) if key.endswith(".dcm")] == [f"{sop}.dcm"]
    root = stack.root(stack.issue([study])["token"])
    assert get(reads(root, second)["frame"]).content == corrected.PixelData
    wait_for_derivatives(stack, study, 1)  # the corrected instance's own
    (made,) = [key for key in stored_keys(stack, study) if is_derivative(key)]
    assert made != deleted


def test_a_thumbnail_rendered_while_its_instance_is_deleted_and_sent_again_is_not_the_new_ones(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Session 26: a viewer's thumbnail of a large slice is being rendered when the portal deletes the study and sends
    the corrected instance again (same UIDs, other pixels). The render finished after the new instance was stored
    and recorded its file for it: from then on the new instance's thumbnail was the deleted one's image (128x128 of
    the 4096x4096 slice, for a 64x64 one), for good. A thumbnail is named by its original's digest and recorded only
    for the bytes it was rendered from."""
    import io

    import numpy as np
    import pydicom
    from PIL import Image

    base = tmp_path_factory.mktemp("thumb-resent")
    (first,) = make_series(base / "v1", slices=1, rows=4096, columns=4096, seed=7790, clean=True)
    study, series, sop = uids_of(first)
    corrected = pydicom.dcmread(first)
    corrected.Rows = corrected.Columns = 64
    corrected.PixelData = (np.arange(64 * 64, dtype=np.uint16) * 16 % 4000).astype(np.uint16).tobytes()
    second = base / "v2.dcm"
    corrected.save_as(second, enforce_file_format=True)
    assert stack.stow([first]).status_code == 200
    root = stack.root(stack.issue([study])["token"])
    thumbnail = f"{root}/studies/{study}/series/{series}/instances/{sop}/thumbnail"

    answers: dict[str, requests.Response] = {}
    rendering = threading.Thread(target=lambda: answers.update(t=requests.get(thumbnail, timeout=60)))
    rendering.start()
    time.sleep(0.2)  # the render under way (the 4096x4096 slice takes a good part of a second)
    deleting = threading.Thread(target=lambda: answers.update(d=delete(stack, f"studies/{study}")))
    deleting.start()
    qido = f"{stack.url}/dicomweb/studies/{study}/series"
    while requests.get(qido, headers=stack.api_headers, timeout=30).status_code != 404:
        assert deleting.is_alive(), "the DELETE never hid the study"
        time.sleep(0.01)
    assert stack.stow([second]).status_code == 200
    rendering.join(60)
    deleting.join(120)
    assert answers["d"].status_code == 204
    assert answers["t"].status_code in (200, 404), answers["t"].text[:200]  # the deleted one's, or gone

    served = requests.get(thumbnail, timeout=30)
    assert served.status_code == 200
    assert Image.open(io.BytesIO(served.content)).size == (64, 64)  # the corrected instance's, not 128x128
    thumbs = [key for key in stored_keys(stack, study) if ".thumb" in key]
    assert len(thumbs) == 1, thumbs  # nothing of the deleted one's left beside it


def test_a_deleted_patient_is_gone_from_the_sqlite_catalogs_files_at_the_answer(tmp_path: Path) -> None:
    """README: the catalog is "gone at the answer" (SQLite overwrites deleted rows with secure_delete). In WAL mode
    the zeroed page went to the write-ahead log, while the main file kept the page as it was at the last checkpoint
    and the log its earlier versions: minutes after an erasure's 200 and a DELETE's 204, `catalog.db` and
    `catalog.db-wal` still held the patient's name, ID and metadata. Each deletion now ends with a TRUNCATE
    checkpoint; the bytes of the catalog's files are searched right after each answer (the stack still running)."""
    running = start_stack(tmp_path / "var", "file", None, DICOMGW_DERIVATIVES="0", **SHORT_SETTLE)
    try:
        studies = {}
        for seed, patient in ((8101, "ERASED-CANARY"), (8102, "DELETED-CANARY"), (8103, "KEPT-PATIENT")):
            files = one_slice(tmp_path / patient, seed, patient)
            ds = pydicom.dcmread(files[0])
            ds.PatientName = f"{patient}^NAME"
            ds.save_as(files[0])
            assert running.stow(files).status_code == 200
            studies[patient] = uids_of(files[0])[0]
        catalog = Path(running.stack.database_url.removeprefix("sqlite:///"))

        def catalog_bytes() -> bytes:
            return b"".join(path.read_bytes() for path in catalog.parent.glob(catalog.name + "*"))

        assert b"ERASED-CANARY" in catalog_bytes() and b"DELETED-CANARY" in catalog_bytes()
        answer = erase(running, "ERASED-CANARY")
        assert answer.status_code == 200 and answer.json()["studies"] == [studies["ERASED-CANARY"]], answer.text
        assert b"ERASED-CANARY" not in catalog_bytes()
        assert delete(running, f"studies/{studies['DELETED-CANARY']}").status_code == 204
        held = catalog_bytes()
        assert b"DELETED-CANARY" not in held
        assert b"KEPT-PATIENT^NAME" in held  # the search reads the files a stored patient is in
    finally:
        running.stack.stop()


def test_a_release_killed_with_the_held_file_on_disk_leaves_no_copy_and_the_retry_stores_it(
    holding_stack: RunningStack, tmp_path: Path
) -> None:
    """The workers are killed (SIGKILL) while a release has the held file's copy in the upload spool: aimed, not
    timed, by watching the spool for it. That copy, a file held for its PHI, sat in an anonymous ``tmpXXXX/``
    folder for good, where no DELETE, erasure or sweep reached it. It names the worker now and the workers that
    replace it remove it; the release sent again stores the file and lets it go from quarantine."""
    stack = holding_stack
    [path] = make_series(tmp_path / "held", slices=1, rows=1024, columns=1024, seed=7941)  # with PHI
    study, series, sop = uids_of(path)
    assert upload(stack, [path], "hold").status_code == 409
    [key] = [key for key, held_sop in held(stack).items() if held_sop == sop]
    spool = stack.stack.var_dir / "spool"

    def copies() -> list[Path]:
        return [folder for folder in spool.iterdir() if (folder / "released.dcm").exists()]

    url = f"{stack.url}/api/v1/admin/quarantine/{key}/release"
    outcome: list[Any] = []

    def release() -> None:
        try:
            outcome.append(requests.post(url, headers=stack.api_headers, timeout=120))
        except requests.RequestException as error:  # the connection died with the worker
            outcome.append(error)

    thread = threading.Thread(target=release)
    thread.start()
    deadline = time.monotonic() + 60
    try:
        while not copies():
            assert thread.is_alive() and time.monotonic() < deadline, f"the release ended first: {outcome}"
        for pid in workers_of(stack):
            os.kill(pid, signal.SIGKILL)
    finally:
        thread.join()
    assert not isinstance(outcome[0], requests.Response) or outcome[0].status_code >= 500, outcome[0]
    again = requests.post(url, headers=stack.api_headers, timeout=120)
    assert again.status_code == 200, again.text
    assert again.json()["status"] in ("stored", "duplicate") and again.json()["sop_uid"] == sop, again.text
    assert copies() == []
    assert [name for name in os.listdir(spool) if not name.startswith("derive-")] == []
    assert held(stack) == {} and list(stack.storage().list("quarantine/")) == []
    instance = f"{stack.root(stack.issue([study])['token'])}/studies/{study}/series/{series}/instances/{sop}"
    assert requests.get(instance, headers={"Accept": "application/dicom"}, timeout=30).content == path.read_bytes()


def test_a_delete_outliving_its_workers_graceful_time_still_removes_everything_before_its_answer(
    tmp_path: Path,
) -> None:
    """SIGTERM to the gunicorn workers (a reload, a scale-in, a worker's own ``max_requests``) while a DELETE waits
    out its settle time, longer than gunicorn's graceful time (5 s under ``stack up``): the removal then met
    Python's interpreter shutdown ("cannot schedule new futures after interpreter shutdown"), a JSON 500 with the
    study hidden and its objects left in storage until `reconcile --repair`. The objects are now removed one at a
    time in the request's own thread: the answer is the 204 and nothing of the study is left."""
    running = start_stack(tmp_path / "var", "file", None, DICOMGW_DELETE_SETTLE="8", DICOMGW_DERIVATIVES="0")
    try:
        files = make_study(tmp_path / "study", 471, series=1)
        assert running.stow(files).status_code == 200
        study = uids_of(files[0])[0]
        outcome: list[Any] = []
        thread = threading.Thread(target=lambda: outcome.append(_delete_or_error(running, f"studies/{study}")))
        thread.start()
        db = sqlite3.connect(f"file:{running.stack.var_dir / 'catalog.db'}?mode=ro", uri=True, timeout=30)
        deadline = time.monotonic() + 60
        try:
            while db.execute("SELECT 1 FROM deletions WHERE study_uid = ?", (study,)).fetchone() is None:
                assert time.monotonic() < deadline, "the DELETE never hid the study"
                time.sleep(0.005)
            for pid in workers_of(running):
                os.kill(pid, signal.SIGTERM)
        finally:
            db.close()
        thread.join()
        [answer] = outcome
        assert isinstance(answer, requests.Response) and answer.status_code == 204, answer
        assert stored_keys(running, study) == []
        env = {**os.environ, **running.stack.gateway_env()}
        command = [sys.executable, "-m", "gateway.cli", "reconcile"]
        clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert clean.returncode == 0 and json.loads(clean.stdout)["unfinished_deletions"] == [], clean.stdout
    finally:
        running.stack.stop()
