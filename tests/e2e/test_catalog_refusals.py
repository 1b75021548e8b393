"""One upload the catalog's database refuses, not for an outage (session 21): a trigger the test adds to the
stack's own database (SQLite; on PostgreSQL a CHECK constraint, whose error quotes the row) refuses the row of one
SOP Instance UID, another trigger the reservation of another. Uploads that reach the catalog together share one
transaction (the group commit), so such a refusal failed every upload of its batch, other clients' files in other
requests included (each a 0xC000 "could not be processed", its object left in storage). Now the batch is run again
one upload per transaction: only the refused one fails, with 0x0110, its object removed; the others are stored and
read back."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.fixtures.catalog_data import allow, refuse
from tests.fixtures.servers import postgres_database

REFERENCED, FAILED = "00081199", "00081198"
FAILURE_REASON, SOP_UID, REASON_TEXT = "00081197", "00081155", "00091001"
PROCESSING_FAILURE = 0x0110


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def refusing_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStack]:
    with contextlib.ExitStack() as cleanup:
        env: dict[str, str] = {}
        if request.param == "postgres":
            server = request.getfixturevalue("postgres_server")
            env["DICOMGW_DATABASE_URL"] = cleanup.enter_context(postgres_database(server))
        # no derivative worker: its own catalog writes are not under test
        running = start_stack(tmp_path / f"refusals-{request.param}", "file", None, DICOMGW_DERIVATIVES="0", **env)
        cleanup.callback(running.stack.stop)
        yield running


def by_sop(answer: requests.Response, tag: str) -> dict[str, dict[str, Any]]:
    return {item[SOP_UID]["Value"][0]: item for item in answer.json().get(tag, {}).get("Value", [])}


def server_logs(running: RunningStack) -> str:
    logs = [running.stack.gunicorn_log, running.stack.var_dir / "logs" / "gunicorn.out"]
    return "\n".join(path.read_text(errors="replace") for path in logs if path.exists())


def test_the_one_upload_the_catalog_refuses_fails_alone(refusing_stack: RunningStack, tmp_path: Path) -> None:
    running = refusing_stack
    url = running.stack.database_url
    mine = make_series(tmp_path / "mine", modality="CT", slices=8, rows=64, columns=64, seed=81, clean=True)
    others = [
        make_series(tmp_path / f"other-{n}", modality="MR", slices=6, rows=64, columns=64, seed=82 + n, clean=True)
        for n in range(2)
    ]
    # the registration of one file refused, the reservation of another: both after some of the request's files,
    # so each meets the others of its request (and of the concurrent ones) in a batch
    registered, reserved = uids_of(mine[5])[2], uids_of(mine[6])[2]
    for path in mine:  # values that must appear in no answer and no log line
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = "Canary^Refused", "CANARY-5521"
        ds.save_as(path)
    # on PostgreSQL a CHECK constraint: its error quotes the refused row, the file's values with it
    refuse(url, "instances", registered, check=running.stack.database_url.startswith("postgresql"))
    refuse(url, "reservations", reserved)
    answers: dict[int, requests.Response] = {}
    requests_ = [mine, *others]

    def send(n: int) -> None:
        answers[n] = running.stow(requests_[n])

    threads = [threading.Thread(target=send, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    answer = answers[0]
    assert answer.status_code == 202, answer.text[:2000]
    failed = by_sop(answer, FAILED)
    assert sorted(failed) == sorted([registered, reserved])
    assert {item[FAILURE_REASON]["Value"][0] for item in failed.values()} == {PROCESSING_FAILURE}
    assert failed[registered][REASON_TEXT]["Value"][0].startswith("the catalog refused this instance's record (")
    assert failed[reserved][REASON_TEXT]["Value"][0].startswith(
        "the catalog refused this instance's upload reservation ("
    )
    stored = [path for path in mine if uids_of(path)[2] not in failed]
    assert sorted(by_sop(answer, REFERENCED)) == sorted(uids_of(path)[2] for path in stored)
    for n in (1, 2):  # the other clients' requests: every file stored
        assert answers[n].status_code == 200, answers[n].text[:2000]
        assert len(by_sop(answers[n], REFERENCED)) == 6

    # neither the database's message nor a value of the file in the answer or the logs
    logs = server_logs(running)
    for text in (answer.text, logs):
        assert "refused by the test" not in text and "Failing row" not in text
        assert "Canary" not in text and "CANARY-5521" not in text
    # the refusal met other uploads in one transaction at least once, and that batch was run again one by one
    assert any(
        int(line.split("a catalog batch of ")[1].split()[0]) > 1
        for line in logs.splitlines()
        if "a catalog batch of " in line
    ), logs[-3000:]

    # what was stored is listed and read back whole; the refused ones are nowhere, in the catalog or storage
    study = uids_of(mine[0])[0]
    accept = {"Accept": "application/dicom+json", **running.api_headers}
    listed = requests.get(f"{running.url}/dicomweb/studies/{study}/instances", headers=accept, timeout=30)
    assert listed.status_code == 200
    assert sorted(item[SOP_UID.replace("1155", "0018")]["Value"][0] for item in listed.json()) == sorted(
        uids_of(path)[2] for path in stored
    )
    for path in [*stored, *others[0], *others[1]]:
        study_uid, series_uid, sop = uids_of(path)
        got = requests.get(
            f"{running.url}/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"', **running.api_headers},
            timeout=30,
        )
        assert got.status_code == 200 and path.read_bytes() in got.content
    keys = list(running.storage().list("studies/"))
    assert not [key for key in keys if registered in key or reserved in key], keys
    assert len([key for key in keys if key.endswith(".dcm")]) == len(stored) + 12
    env = {**os.environ, **running.stack.gateway_env()}
    report = subprocess.run(
        [str(Path(sys.executable).with_name("dicom-gateway")), "reconcile", "--dry-run"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stdout + report.stderr

    # once the database takes them, the same files sent again are stored
    allow(url, "instances")
    allow(url, "reservations")
    again = running.stow([mine[5], mine[6]])
    assert again.status_code == 200, again.text[:2000]
    listed = requests.get(f"{running.url}/dicomweb/studies/{study}/instances", headers=accept, timeout=30)
    assert len(listed.json()) == 8


def deployed_postgres_logging() -> dict[str, str]:
    """The server log settings the deployments give PostgreSQL: Terraform's RDS parameter group (its ``log_*``
    parameters) and the compose profile's ``postgres -c`` options, which must agree where both set one."""
    import hcl2
    import yaml

    repo = Path(__file__).resolve().parents[2]
    settings: dict[str, str] = {}
    with (repo / "terraform" / "rds.tf").open() as handle:
        parsed = hcl2.load(handle)
    for entry in parsed["resource"]:
        for group in entry.get("aws_db_parameter_group", {}).values():
            for parameter in group["parameter"]:
                name, value = (str(parameter[key]).strip('"') for key in ("name", "value"))
                if name.startswith("log_"):
                    settings[name] = value
    command = yaml.safe_load((repo / "docker-compose.yml").read_text())["services"]["postgres"].get("command", [])
    for name, _, value in (option.partition("=") for option in command[2::2]):
        assert settings.get(name, value) == value, (name, settings[name], value)
        settings[name] = value
    return settings


@pytest.mark.postgres
def test_the_deployed_postgresql_logs_no_value_of_a_refused_row(tmp_path: Path) -> None:
    """PostgreSQL's own log, as Terraform and compose configure it: a CHECK constraint refusing an upload's row
    wrote the row into the server log ("DETAIL: Failing row contains (..., Canary^Refused, CANARY-5521, ...)", to
    CloudWatch on AWS) although the gateway's answer and logs held no value of it. The error is still logged, its
    DETAIL line is not (log_error_verbosity=terse)."""
    import sqlalchemy as sa

    from gateway.catalog.engine import engine_url
    from gateway.tools.postgres import available, private_postgres
    from tests.requirements import require

    require(available(), "SKIPPING: no PostgreSQL binaries (apt-get install postgresql)")
    settings = deployed_postgres_logging()
    files = make_series(tmp_path / "ct", modality="CT", slices=2, rows=16, columns=16, seed=91, clean=True)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.StudyDescription = "Canary^Refused", "CANARY-5521", "Canary biopsy"
        ds.save_as(path)
    with contextlib.ExitStack() as cleanup:
        server = cleanup.enter_context(
            private_postgres({**settings, "logging_collector": "on", "log_directory": "pglog"})
        )
        url = cleanup.enter_context(postgres_database(server))
        running = start_stack(tmp_path / "var", "file", None, DICOMGW_DERIVATIVES="0", DICOMGW_DATABASE_URL=url)
        cleanup.callback(running.stack.stop)
        # the study's row refused, as a constraint of a real deployment can (its text names no value: DDL is logged)
        engine = sa.create_engine(engine_url(url))
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE studies ADD CONSTRAINT refuse_studies CHECK (length(patient_id) <> 11)")
        engine.dispose()
        answer = running.stow(files)
        assert answer.status_code == 409, answer.text[:2000]
        assert sorted(by_sop(answer, FAILED)) == sorted(uids_of(path)[2] for path in files)
        running.stack.stop()  # every connection closed: its lines are in the log
        assert server.data is not None
        log = "\n".join(path.read_text(errors="replace") for path in (server.data / "pglog").iterdir())
    assert 'violates check constraint "refuse_studies"' in log  # the refusal is logged, so the search means much
    assert "STATEMENT:" in log and "$1" in log
    for value in ("Canary", "CANARY-5521", "Failing row", "DETAIL:"):
        assert value not in log, (value, log[-3000:])
    assert settings["log_error_verbosity"] == "terse"
