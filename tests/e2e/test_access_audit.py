"""Issue 13: the access audit trail through the real stack. Reads through each transport (path, query, Authorization,
cookie) and a STOW with the API key, then ``GET /api/v1/admin/access`` (JSON and CSV) answers who read the study,
how, when and with which outcome; reads NGINX answered from its decision cache count as well (the trail comes from
NGINX's access log, loaded by the collector ``stack up`` runs)."""

from __future__ import annotations

import csv
import http.client
import io
import itertools
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from gateway.config import parse_api_keys
from gateway.dicomweb.multipart import encode_multipart
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack

COLLECT_BOUND = 30.0  # seconds: several collector passes (DICOMGW_AUDIT_COLLECT_SECONDS, 5 by default)
_SEEDS = itertools.count(1350)


def access(stack: RunningStack, **params: str) -> requests.Response:
    return requests.get(f"{stack.url}/api/v1/admin/access", params=params, headers=stack.api_headers, timeout=10)


def wait_for_rows(stack: RunningStack, count: int, **params: str) -> list[dict[str, Any]]:
    """Poll the API until it lists ``count`` rows for ``params`` (the collector runs every few seconds)."""
    deadline = time.monotonic() + COLLECT_BOUND
    while True:
        answer = access(stack, **params)
        assert answer.status_code == 200, answer.text[:300]
        items: list[dict[str, Any]] = answer.json()["items"]
        if len(items) >= count or time.monotonic() > deadline:
            assert len(items) == count, (params, items)
            return items
        time.sleep(0.5)


def test_audit_answers_who_read_a_study_by_each_transport(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    study, series, sop = uids_of(synthetic["ct"][0])
    subject = f"reader-{uuid.uuid4().hex[:8]}"
    issued = stack.issue([study], sub=subject)
    token = issued["token"]
    frame = f"/studies/{study}/series/{series}/instances/{sop}/frames/1"
    octet = {"Accept": "application/octet-stream"}
    reads = [
        requests.get(f"{stack.root(token)}{frame}", headers=octet, timeout=30),
        requests.get(f"{stack.root(token)}{frame}", headers=octet, timeout=30),  # decision and plan from cache
        requests.get(f"{stack.url}/dicomweb/studies/{study}/series/{series}/metadata?token={token}", timeout=30),
        requests.get(
            f"{stack.url}/dicomweb/studies/{study}/series",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ),
        requests.get(f"{stack.url}/dicomweb{frame}", cookies={"dicomgw_token": token}, headers=octet, timeout=30),
    ]
    assert [answer.status_code for answer in reads] == [200] * 5

    items = wait_for_rows(stack, 5, subject=subject)
    answer = access(stack, subject=subject)
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    by_via = sorted((item["via"], item["action"]) for item in items)
    assert by_via == [
        ("bearer", "search"),
        ("cookie", "frames"),
        ("path", "frames"),
        ("path", "frames"),
        ("query", "metadata"),
    ]
    for item in items:
        assert item["sub"] == subject
        assert item["jti"] == issued["jti"]
        assert item["study_uid"] == study
        assert item["status"] == 200
        assert item["method"] == "GET"
        assert item["remote"] == "127.0.0.1"
        assert time.strptime(item["time"], "%Y-%m-%dT%H:%M:%SZ")
        assert token not in str(item)
    frames = [item for item in items if item["action"] == "frames"]
    assert {(item["series_uid"], item["sop_uid"]) for item in frames} == {(series, sop)}

    # per study, with a time range; paging by cursor
    now = int(time.time())
    in_range = access(stack, study=study, subject=subject, **{"from": str(now - 600), "to": str(now + 60)})
    assert {item["id"] for item in in_range.json()["items"]} == {item["id"] for item in items}
    assert (
        access(stack, subject=subject, **{"from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 60))}).json()[
            "items"
        ]
        == []
    )
    page = access(stack, subject=subject, limit="2").json()
    assert len(page["items"]) == 2 and page["next_cursor"] == str(page["items"][-1]["id"])
    rest = access(stack, subject=subject, cursor=page["next_cursor"]).json()
    assert [item["id"] for item in page["items"] + rest["items"]] == [item["id"] for item in items]
    assert rest["next_cursor"] is None

    # CSV: the same rows, by parameter or by Accept
    for exported in (
        access(stack, subject=subject, format="csv"),
        requests.get(
            f"{stack.url}/api/v1/admin/access",
            params={"subject": subject},
            headers={**stack.api_headers, "Accept": "text/csv"},
            timeout=10,
        ),
    ):
        assert exported.status_code == 200
        assert exported.headers["Content-Type"] == "text/csv; charset=utf-8"
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [int(row["id"]) for row in rows] == [item["id"] for item in items]
        assert {row["via"] for row in rows} == {"path", "query", "bearer", "cookie"}
        assert all(row["sub"] == subject and row["study_uid"] == study for row in rows)


def test_a_refusal_is_on_record_with_the_token_it_refused(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    """A token holder probing what its token does not reach is on record as who it is: a refusal of a token of ours
    names its subject, jti and transport, as an allowed read does, under the study the request named (PS3.15 A.5.3:
    a failed query or retrieve is audited with its user; IHE ATNA, dcm4chee's audit messages). Every refusal was a
    row without a subject, so the trail could not tell which token had tried to reach another patient's study. A
    value no key of ours signed still names nobody. A refused WADO-URI is on record under the study it asked for
    even where the logged query hides it (``%73tudyUID=``), as an allowed one is."""
    study, series, _ = uids_of(synthetic["ct"][0])
    mr, mr_series, mr_sop = uids_of(synthetic["mr"][0])
    subject = f"prober-{uuid.uuid4().hex[:8]}"
    reader = stack.issue([study], sub=subject)
    writer = stack.issue([study], sub=subject, actions=["write"])
    unknown_series = f"2.25.{uuid.uuid4().int}"
    head, _, signature = reader["token"].rpartition(".")
    forged = f"{head}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"
    answers = [
        requests.get(f"{stack.root(reader['token'])}/studies/{mr}/series", timeout=10),
        requests.get(
            f"{stack.url}/dicomweb/studies/{study}/series/{series}/metadata?token={writer['token']}",
            timeout=10,
        ),
        requests.get(f"{stack.root(forged)}/studies/{mr}/series/{unknown_series}/metadata", timeout=10),
    ]
    # WADO-URI with an encoded key (sent raw: requests would decode it), which the logged query does not show
    parsed = urlparse(stack.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    connection.request(
        "GET",
        f"/t/{reader['token']}/dicomweb/wado?requestType=WADO&%73tudyUID={mr}&seriesUID={mr_series}"
        f"&objectUID={mr_sop}",
    )
    wado = connection.getresponse()
    assert (wado.status, json.loads(wado.read())["error"]) == (403, "out_of_scope")
    connection.close()
    assert [(a.status_code, a.json()["error"]) for a in answers] == [
        (403, "out_of_scope"),
        (403, "insufficient_scope"),
        (401, "token_invalid"),
    ]
    rows = wait_for_rows(stack, 3, subject=subject)
    assert sorted((r["status"], r["action"], r["study_uid"], r["jti"], r["via"], r["sub"]) for r in rows) == [
        (403, "metadata", study, writer["jti"], "query", subject),
        (403, "search", mr, reader["jti"], "path", subject),
        (403, "wado-uri", mr, reader["jti"], "path", subject),
    ]
    [invalid] = wait_until(stack, lambda items: [i for i in items if i["series_uid"] == unknown_series], study=mr)
    assert (invalid["status"], invalid["sub"], invalid["jti"], invalid["via"]) == (401, "", "", "")


def test_audit_names_the_api_key_by_its_label(stack: RunningStack, tmp_path: Path) -> None:
    files = make_series(tmp_path, modality="CT", slices=1, seed=next(_SEEDS) + (0 if stack.backend == "file" else 50))
    study = uids_of(files[0])[0]
    # STOW to the study's own URL: the path names the study written (a STOW to /studies is on record with its
    # subject and outcome, its studies in the ingest audit, /api/v1/admin/audit)
    body = encode_multipart(files)
    stored = requests.post(
        f"{stack.url}/dicomweb/studies/{study}",
        data=body,
        headers={**stack.api_headers, "Content-Type": body.content_type, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert stored.status_code == 200, stored.text[:300]
    label = parse_api_keys(stack.stack.api_keys[0])[0].label
    (item,) = wait_for_rows(stack, 1, study=study)
    assert (item["sub"], item["jti"], item["via"], item["action"], item["method"]) == (
        label,
        "api-key",
        "api-key",
        "store",
        "POST",
    )
    assert item["status"] == 200
    assert stack.stack.api_key not in str(item)
    # the DELETE of the study is on record as one (it was a "retrieve"), newest first
    removed = requests.delete(f"{stack.url}/dicomweb/studies/{study}", headers=stack.api_headers, timeout=60)
    assert removed.status_code == 204, removed.text[:300]
    latest, _ = wait_for_rows(stack, 2, study=study)
    assert (latest["sub"], latest["via"], latest["action"], latest["method"], latest["status"]) == (
        label,
        "api-key",
        "delete",
        "DELETE",
        204,
    )


def test_requests_nginx_answers_itself_are_on_record_as_sent(stack: RunningStack, tmp_path: Path) -> None:
    """A client gone before any answer was logged with "status":000, no JSON number, and the collector skipped the
    line: those requests were missing from the audit. A POST NGINX refused itself (an error page is an internal
    redirect) was on record as a GET. Now: status 499, and the method the client sent."""
    files = make_series(tmp_path, modality="CT", slices=1, seed=next(_SEEDS) + (0 if stack.backend == "file" else 50))
    study = uids_of(files[0])[0]
    assert stack.stow(files).status_code == 200
    token = stack.issue([study])["token"]

    def gone_client() -> None:  # sent, then the client shuts its side at once: no answer is ever read
        with socket.create_connection(("127.0.0.1", stack.stack.port), timeout=10) as sock:
            sock.sendall(f"GET /t/{token}/dicomweb/studies/{study}/series HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.shutdown(socket.SHUT_WR)

    gone = 3
    for _ in range(gone):
        gone_client()
    refused = requests.post(
        f"{stack.url}/dicomweb/studies/{study}",
        data=b"x",
        headers={**stack.api_headers, "Content-Type": "application/dicom", "Transfer-Encoding": "gzip"},
        timeout=10,
    )
    assert refused.status_code == 501
    rows = wait_for_rows(stack, 1 + gone, study=study)  # the STOW to /studies names no study in its path
    assert [(row["method"], row["status"]) for row in rows if row["method"] != "GET"] == [("POST", 501)]
    # Each gone client is on record. NGINX notices a client that half-closed with its request only while it waits on
    # the gateway, so on a loaded machine it may answer first (200; all three did in a two-process suite, while it was
    # 499 in every quiet run): then more gone clients, one at a time, until NGINX meets one while it waits.
    gets = sorted(row["status"] for row in rows if row["method"] == "GET")
    while 499 not in gets and gone < 20:
        gone_client()
        gone += 1
        gets = sorted(row["status"] for row in wait_for_rows(stack, 1 + gone, study=study) if row["method"] == "GET")
    assert len(gets) == gone and set(gets) <= {200, 499} and 499 in gets, gets
    for line in stack.stack.access_log.read_text().splitlines():
        json.loads(line)  # every line is JSON


def test_audit_api_refusals_are_json(stack: RunningStack) -> None:
    cases = [
        ({}, {}, 401, "unauthorized"),
        (stack.api_headers, {"study": "not-a-uid"}, 400, "invalid_uid"),
        (stack.api_headers, {"since": "1"}, 400, "bad_request"),
        (stack.api_headers, {"format": "xml"}, 400, "bad_request"),
        (stack.api_headers, {"from": "yesterday"}, 400, "bad_request"),
        (stack.api_headers, {"limit": "0"}, 400, "bad_request"),
        (stack.api_headers, {"limit": "1001"}, 400, "bad_request"),
    ]
    for headers, params, status, code in cases:
        answer = requests.get(f"{stack.url}/api/v1/admin/access", params=params, headers=headers, timeout=10)
        assert answer.status_code == status, (params, answer.text[:200])
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json()["error"] == code, answer.text


def synthetic_study(synthetic: dict[str, Any], name: str) -> str:
    return uids_of(synthetic[name][0])[0]


def wait_until(
    stack: RunningStack, pick: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], **params: str
) -> list[dict[str, Any]]:
    """Poll until ``pick`` finds rows among those listed for ``params``; return them."""
    deadline = time.monotonic() + COLLECT_BOUND
    while True:
        picked = pick(access(stack, **params).json()["items"])
        if picked or time.monotonic() > deadline:
            assert picked, params
            return picked
        time.sleep(0.5)


def test_no_request_stops_the_audit_trail_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """Anyone, without a token, can ask for a path whose "UIDs" are longer than any UID (refused, and logged). The
    collector used to store them as they came, PostgreSQL refused them in its UID columns, and every later pass
    failed at that line: no request after it was ever on record. Now the over-long levels are left out."""
    running = start_stack(tmp_path / "var", "file", None, DICOMGW_DATABASE_URL=postgres_url)
    try:
        long = "1" * 70
        probe = requests.get(f"{running.url}/dicomweb/studies/{long}/series/{long}", timeout=10)
        assert (probe.status_code, probe.json()["error"]) == (400, "invalid_path")
        files = make_series(tmp_path / "ct", modality="CT", slices=1, seed=next(_SEEDS))
        study = uids_of(files[0])[0]
        assert running.stow(files).status_code == 200
        token = running.issue([study], sub="after-the-probe")["token"]
        read = requests.get(f"{running.root(token)}/studies/{study}/series", timeout=10)
        assert read.status_code == 200
        (item,) = wait_for_rows(running, 1, subject="after-the-probe")
        assert (item["study_uid"], item["action"], item["status"]) == (study, "search", 200)
    finally:
        running.stack.stop()


def test_a_rotated_access_log_loses_no_line(tmp_path: Path) -> None:
    """logrotate's way through the real stack: the log renamed, NGINX told to reopen it (SIGUSR1). A read made just
    before the rotation is in the old file only, written after the collector's last pass; it is on record with the
    read made after it (the collector keeps the old file open and loads its last lines first)."""
    running = start_stack(tmp_path / "var", "file", None, DICOMGW_AUDIT_COLLECT_SECONDS="2")
    try:
        files = make_series(tmp_path / "ct", modality="CT", slices=1, seed=next(_SEEDS))
        study = uids_of(files[0])[0]
        assert running.stow(files).status_code == 200
        root = running.root(running.issue([study], sub="around-the-rotation")["token"])
        settle = running.root(running.issue([study], sub="settle")["token"])
        assert requests.get(f"{settle}/studies/{study}/series", timeout=10).status_code == 200
        wait_for_rows(running, 1, subject="settle")  # the collector has just passed over the log
        log = running.stack.access_log
        before = requests.get(f"{root}/studies/{study}/series", timeout=10)
        assert before.status_code == 200
        log.rename(log.with_name("access.log.1"))
        os.kill(running.stack.processes["nginx"].pid, signal.SIGUSR1)
        deadline = time.monotonic() + COLLECT_BOUND
        while not log.exists():  # NGINX reopens its logs in each worker, asynchronously
            assert time.monotonic() < deadline, "NGINX did not reopen its access log"
            time.sleep(0.05)
        after = requests.get(f"{root}/studies/{study}", timeout=10)
        assert after.status_code == 200
        items = wait_for_rows(running, 2, subject="around-the-rotation")
        assert sorted(item["action"] for item in items) == ["retrieve", "search"]
    finally:
        running.stack.stop()
