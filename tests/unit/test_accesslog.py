"""The access audit collector (gateway/accesslog.py) on a real SQLite catalog: what a log line becomes, the position
kept across passes, a truncated log, the retention; and the log masking of gunicorn's records (gateway/logmask.py)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway import accesslog
from gateway.accesslog import access_row, collect
from gateway.catalog import Catalog
from gateway.logmask import MaskingFilter, mask

ST, SE, IN = "1.2.826.0.1.1", "1.2.826.0.1.1.2", "1.2.826.0.1.1.2.3"
NOW = int(datetime(2027, 1, 16, tzinfo=UTC).timestamp())


def line(
    uri: str, *, method: str = "GET", status: int = 200, at: str = "2027-01-15T08:00:00+00:00", **extra: Any
) -> str:
    entry = {"time": at, "remote": "10.0.0.7", "method": method, "uri": uri, "status": status, "bytes": 512,
             "sub": "alice", "jti": "j1", "via": "path", "study": extra.pop("study", ""), **extra}  # fmt: skip
    return json.dumps(entry) + "\n"


@pytest.fixture
def catalog(tmp_path: Path) -> Any:
    db = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    db.migrate()
    yield db
    db.close()


@pytest.mark.parametrize(
    ("uri", "method", "expected"),
    [
        (f"/t/***/dicomweb/studies/{ST}/series/{SE}/instances/{IN}/frames/1", "GET", ("frames", ST, SE, IN)),
        (f"/dicomweb/studies/{ST}/series/{SE}/metadata", "GET", ("metadata", ST, SE, None)),
        (f"/dicomweb/studies/{ST}?token=***", "GET", ("retrieve", ST, None, None)),
        (f"/dicomweb/studies/{ST}/series", "GET", ("search", ST, None, None)),
        ("/dicomweb/studies?PatientName=DOE^JOHN", "GET", ("search", None, None, None)),
        (f"/dicomweb/studies/{ST}", "POST", ("store", ST, None, None)),
        (
            f"/dicomweb/wado?requestType=WADO&studyUID={ST}&seriesUID={SE}&objectUID={IN}",
            "GET",
            ("wado-uri", ST, SE, IN),
        ),  # fmt: skip
        (f"/dicomweb/studies/{ST}/series/{SE}/instances/{IN}/rendered", "HEAD", ("rendered", ST, SE, IN)),
    ],
)
def test_a_line_names_what_was_read_never_the_query(uri: str, method: str, expected: tuple[Any, ...]) -> None:
    row = access_row(line(uri, method=method))
    assert row is not None
    assert (row["action"], row["study_uid"], row["series_uid"], row["sop_uid"]) == expected
    assert row["sub"] == "alice" and row["via"] == "path" and row["status"] == 200 and row["remote"] == "10.0.0.7"
    assert row["at"] == int(datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp())
    assert "DOE" not in json.dumps(row)  # QIDO matching values (PHI) never reach a row


def test_lines_that_are_no_dicomweb_request_are_skipped() -> None:
    assert access_row(line("/healthz")) is None
    assert access_row(line("/api/v1/tokens", method="POST")) is None
    assert access_row(line(f"/dicomweb/studies/{ST}", method="OPTIONS")) is None
    assert access_row("not json\n") is None
    assert access_row(json.dumps({"uri": "/dicomweb/studies", "method": "GET"})) is None  # no time or status


def test_a_refusal_takes_its_study_from_the_path_or_the_decision() -> None:
    refused = access_row(line(f"/t/***/dicomweb/studies/{ST}/series", status=401, sub="", jti="", via=""))
    assert refused is not None and refused["study_uid"] == ST and refused["status"] == 401 and refused["sub"] == ""
    odd = access_row(line("/***", study=ST))
    assert odd is None  # a masked, non-canonical path is no DICOMweb request we can name


def test_collect_keeps_its_position_and_never_repeats(catalog: Catalog, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(line(f"/dicomweb/studies/{ST}") + line("/healthz"))
    assert collect(catalog, log, 365, now=NOW) == 1
    assert collect(catalog, log, 365, now=NOW) == 0
    with log.open("a") as handle:
        handle.write(line(f"/dicomweb/studies/{ST}/series/{SE}/metadata"))
        handle.write('{"time": "2027-01-15T08:00:01+00:00", "uri": "/dicomweb/stu')  # NGINX still writing it
    assert collect(catalog, log, 365, now=NOW) == 1
    with log.open("a") as handle:
        handle.write('dies", "method": "GET", "status": 200}\n')
    assert collect(catalog, log, 365, now=NOW) == 1  # the rest of the line arrived: loaded once, whole
    rows = catalog.access_records(study_uid=ST)
    assert [row["action"] for row in rows] == ["metadata", "retrieve"]


def test_a_truncated_or_replaced_log_is_read_from_its_start(catalog: Catalog, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(line(f"/dicomweb/studies/{ST}") * 3)
    assert collect(catalog, log, 365, now=NOW) == 3
    log.write_text(line(f"/dicomweb/studies/{ST}/series"))  # copytruncate: same file, shorter
    assert collect(catalog, log, 365, now=NOW) == 1
    rotated = tmp_path / "new.log"
    rotated.write_text(line(f"/dicomweb/studies/{ST}") * 5)
    rotated.replace(log)  # a new file under the old name
    assert collect(catalog, log, 365, now=NOW) == 5


def test_a_rotated_logs_last_lines_are_loaded_before_the_new_files(catalog: Catalog, tmp_path: Path) -> None:
    """logrotate renames the log and NGINX reopens a new one under its name: the lines NGINX wrote to the old file
    after the last pass are loaded from the file the following collector still holds (``Held``), then the new
    file's. Without it those lines were lost: the next pass read only the new file, from its start."""
    log = tmp_path / "access.log"
    log.write_text(line(f"/dicomweb/studies/{ST}") * 2)
    held = accesslog.Held()
    try:
        assert collect(catalog, log, 365, now=NOW, held=held) == 2
        with log.open("a") as handle:  # written after the pass ...
            handle.write(line(f"/dicomweb/studies/{ST}/series/{SE}/metadata") * 3)
        log.rename(tmp_path / "access.log.1")  # ... then rotated
        assert collect(catalog, log, 365, now=NOW, held=held) == 3  # no new file yet: the old one's tail
        log.write_text(line(f"/dicomweb/studies/{ST}/series") * 4)
        with (tmp_path / "access.log.1").open("a") as handle:  # a last line NGINX wrote before it reopened
            handle.write(line(f"/dicomweb/studies/{ST}/thumbnail"))
        assert collect(catalog, log, 365, now=NOW, held=held) == 5
        assert collect(catalog, log, 365, now=NOW, held=held) == 0
    finally:
        held.close()
    actions = [row["action"] for row in catalog.access_records(study_uid=ST, limit=1000)]
    assert sorted(actions) == sorted(["retrieve"] * 2 + ["metadata"] * 3 + ["thumbnail"] + ["search"] * 4)


def test_lines_written_to_a_rotated_log_after_the_new_one_appeared_are_loaded(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NGINX's master creates the new log before its workers reopen it (logrotate's ``create``, before NGINX is even
    told): a worker can still write to the renamed file after a pass has already moved on to the new one. The old
    file stays open and is read on every pass until it has been quiet for the grace time; its lines were lost."""
    log, old = tmp_path / "access.log", tmp_path / "access.log.1"
    held = accesslog.Held()
    try:
        log.write_text(line(f"/dicomweb/studies/{ST}"))
        assert collect(catalog, log, 365, now=NOW, held=held) == 1
        log.rename(old)
        log.write_text("")  # the new file, created first
        assert collect(catalog, log, 365, now=NOW, held=held) == 0
        with old.open("a") as handle:  # a worker that has not reopened the log yet
            handle.write(line(f"/dicomweb/studies/{ST}/series/{SE}/metadata") * 2)
        with log.open("a") as handle:
            handle.write(line(f"/dicomweb/studies/{ST}/series"))
        assert collect(catalog, log, 365, now=NOW, held=held) == 3
        assert held.rotated is not None
        monkeypatch.setattr(accesslog, "ROTATED_GRACE_SECONDS", 0.0)
        assert collect(catalog, log, 365, now=NOW, held=held) == 0
        assert held.rotated is None  # quiet past the grace time: closed
    finally:
        held.close()
    actions = [row["action"] for row in catalog.access_records(study_uid=ST, limit=1000)]
    assert sorted(actions) == sorted(["retrieve", "metadata", "metadata", "search"])


def test_a_held_log_rotated_before_any_of_its_lines_was_stored_is_read_from_its_start(
    catalog: Catalog, tmp_path: Path
) -> None:
    """The file the collector held was empty at its last pass (no position stored for it): lines written to it
    before the rotation are read from its start, not skipped."""
    log = tmp_path / "access.log"
    held = accesslog.Held()
    try:
        log.write_text("")
        assert collect(catalog, log, 365, now=NOW, held=held) == 0
        with log.open("a") as handle:
            handle.write(line(f"/dicomweb/studies/{ST}/thumbnail") * 2)
        log.rename(tmp_path / "access.log.1")
        log.write_text(line(f"/dicomweb/studies/{ST}"))
        assert collect(catalog, log, 365, now=NOW, held=held) == 3
    finally:
        held.close()


def test_retention_deletes_older_rows(catalog: Catalog, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    old = "2026-01-01T00:00:00+00:00"
    log.write_text(line(f"/dicomweb/studies/{ST}", at=old) + line(f"/dicomweb/studies/{ST}/series"))
    collect(catalog, log, 30, now=NOW)  # 2027-01-16: the 2026-01-01 row is past 30 days
    assert [row["action"] for row in catalog.access_records()] == ["search"]


def test_no_log_yet_is_no_error(catalog: Catalog, tmp_path: Path) -> None:
    assert collect(catalog, tmp_path / "missing.log", 365, now=NOW) == 0


def test_filters_subject_among_several_and_time_range(catalog: Catalog, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(
        line(f"/dicomweb/studies/{ST}", sub="alice bob", at="2027-01-15T08:00:00+00:00")
        + line(f"/dicomweb/studies/{ST}", sub="bobby", at="2027-01-15T09:00:00+00:00")
    )
    collect(catalog, log, 365, now=NOW)
    assert [row["sub"] for row in catalog.access_records(sub="bob")] == ["alice bob"]
    eight = int(datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp())
    assert [row["sub"] for row in catalog.access_records(since=eight + 1)] == ["bobby"]
    assert [row["sub"] for row in catalog.access_records(until=eight + 1)] == ["alice bob"]
    first = catalog.access_records(limit=1)
    assert [row["sub"] for row in catalog.access_records(before_id=first[0]["id"])] == ["alice bob"]


@pytest.mark.parametrize(
    "text",
    [
        "Error handling request /t/SECRET.tok-en_1/dicomweb/studies",
        "Error handling request /dicomweb/studies?limit=1&token=SECRET.tok-en_1&x=2",
        "header Authorization: Bearer SECRET.tok-en_1",
        "Cookie: dicomgw_token=SECRET.tok-en_1; other=1",
    ],
)
def test_mask_removes_every_credential_shape(text: str) -> None:
    assert "SECRET" not in mask(text)


def test_masking_filter_rewrites_message_args_and_traceback() -> None:
    record = logging.LogRecord(
        "gunicorn.error", logging.ERROR, __file__, 1, "Error handling request %s", ("/t/SECRET1/x",), None
    )
    try:
        raise ValueError("bad /t/SECRET2/dicomweb")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert MaskingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert "SECRET" not in formatted
    assert "/t/***/x" in formatted


@pytest.mark.postgres
def test_a_database_error_logged_keeps_no_value_of_the_row_it_refused(postgres_url: str) -> None:
    """PostgreSQL quotes the row it refused in its error's DETAIL line (a file's patient's name, in clear), which
    the catalog engine's ``hide_parameters`` does not reach: ingest's catch-all logged it with the traceback when an
    audit or quarantine record was refused. The masking filter takes the line out of the message and traceback."""
    import sqlalchemy as sa

    name = "Doe^" + "Jane"  # built here, so that the traceback's source lines do not hold it
    catalog = Catalog(postgres_url)  # its engine, hide_parameters and all
    with catalog.engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE refusing (name text CHECK (name <> '{name}'))")
    record = logging.LogRecord(
        "gateway.ingest", logging.ERROR, __file__, 1, "ingest failed on an unexpected error (%s)", ("X",), None
    )
    try:
        with catalog.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO refusing VALUES (:name)"), {"name": name})
    except sa.exc.IntegrityError:
        record.exc_info = sys.exc_info()
    assert record.exc_info is not None
    assert name in logging.Formatter().formatException(record.exc_info)  # what the log held before
    assert MaskingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert name not in formatted
    assert "DETAIL:  ***" in formatted and "violates check constraint" in formatted  # the rest stays to debug by
    catalog.engine.dispose()


def test_the_collector_outlives_a_stderr_it_cannot_write(tmp_path: Path) -> None:
    """A full disk holds the collector's stderr file as well as the catalog: the line saying the catalog is out
    failed to print, the collector exited, and ``stack up`` stopped the whole gateway with it. The real command,
    its stderr on /dev/full (every write ENOSPC) and its catalog unreachable, keeps collecting until stopped."""
    import os
    import subprocess

    log = tmp_path / "access.log"
    log.write_text(line(f"/dicomweb/studies/{ST}"))
    env = {
        **os.environ,
        "DICOMGW_MODE": "development",
        "DICOMGW_DATABASE_URL": "postgresql://u:p@127.0.0.1:9/nothing",  # refused at once: CatalogUnavailable
        "DICOMGW_AUDIT_COLLECT_SECONDS": "1",
    }
    command = [sys.executable, "-m", "gateway.cli", "audit", "collect", "--follow", "--log", str(log)]
    with open("/dev/full", "w") as full:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=full)
        try:
            with pytest.raises(subprocess.TimeoutExpired):  # several failed passes, each with its failed print
                process.wait(timeout=4)
        finally:
            process.terminate()
            process.wait(timeout=10)
    assert process.returncode in (0, -15), process.returncode


def test_collect_in_development_mode_reads_the_catalog_under_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, DICOMGW_MODE: "development: missing ones default to ./var". `reconcile`, `retention run` and
    `db upgrade` found ./var/catalog.db so; `audit collect` alone said "DICOMGW_DATABASE_URL is required". It now
    loads into the catalog development mode names, and without development mode says what is missing as the other
    commands say it."""
    from click.testing import CliRunner

    from gateway.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    db = Catalog(f"sqlite:///{tmp_path / 'var' / 'catalog.db'}")
    db.migrate()
    log = tmp_path / "access.log"
    log.write_text(line(f"/dicomweb/studies/{ST}", study=ST))
    monkeypatch.delenv("DICOMGW_DATABASE_URL", raising=False)
    monkeypatch.setenv("DICOMGW_MODE", "production")
    refused = CliRunner().invoke(main, ["audit", "collect", "--log", str(log)])
    assert (refused.exit_code, refused.output) == (1, "Error: DICOMGW_DATABASE_URL: is required but not set\n")
    monkeypatch.setenv("DICOMGW_MODE", "development")
    done = CliRunner().invoke(main, ["audit", "collect", "--log", str(log)])
    assert (done.exit_code, done.output) == (0, "1 access rows added\n")
    try:
        assert [row["study_uid"] for row in db.access_records(limit=10)] == [ST]
    finally:
        db.close()


# Lines that are no line of the gateway's access log, one of each kind (the second holds what must never be shown)
UNREADABLE = [
    "hello world",
    "GET /dicomweb/studies HTTP/1.1 Authorization: Bearer eyJ.SECRET-TOKEN",  # NGINX's default format, say
    "[1, 2]",  # JSON, no object
    json.dumps({"not": "ours"}),  # an object naming no uri
    json.dumps({"uri": f"/dicomweb/studies/{ST}", "method": "GET"}),  # a DICOMweb request without time or status
    line(f"/dicomweb/studies/{ST}", at="yesterday").strip(),  # a time that does not read
    line(f"/dicomweb/studies/{ST}", status=2**31).strip(),  # beyond its column: a damaged line
]


def test_unreadable_lines_are_counted_and_never_shown(catalog: Catalog, tmp_path: Path) -> None:
    """A file that is no access log of the gateway loaded 0 rows without a word. Each pass counts the lines it read
    and those it skipped as unreadable (``Tally``); a blank line, another request's line (`/healthz`) or an OPTIONS
    is a line of the log, only not audited. The note says how many, never what a line holds."""
    log = tmp_path / "access.log"
    readable = [line(f"/dicomweb/studies/{ST}"), line("/healthz"), line(f"/dicomweb/studies/{ST}", method="OPTIONS")]
    log.write_text("".join(readable) + "\n" + "\n".join(UNREADABLE) + "\n")
    tally = accesslog.Tally()
    assert collect(catalog, log, 365, now=NOW, tally=tally) == 1
    assert (tally.lines, tally.unreadable) == (4 + len(UNREADABLE), len(UNREADABLE))
    assert accesslog.unreadable_note(tally) == (
        "7 of 11 lines read skipped as unreadable: no line of the gateway's JSON access log (not shown: a line may "
        "hold PHI or a token)"
    )
    again = accesslog.Tally()
    assert collect(catalog, log, 365, now=NOW, tally=again) == 0  # read once: skipped once
    assert (again.lines, again.unreadable) == (0, 0)


def test_audit_collect_says_how_many_lines_it_could_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit collect --log notes.txt` (any file that is no access log of the gateway) said `0 access rows added`,
    exit 0. A pass that read no line of the log is now exit 1, naming --log; one that read some says on stderr how
    many it skipped, and loads the rest. `--follow` says it after each such pass. No line is ever printed (one may
    hold PHI or a token)."""
    import threading

    from click.testing import CliRunner

    from gateway.cli import main

    db = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    db.migrate()
    monkeypatch.setenv("DICOMGW_DATABASE_URL", f"sqlite:///{tmp_path / 'catalog.db'}")
    note = "of the gateway's JSON access log (not shown: a line may hold PHI or a token)"
    junk = tmp_path / "notes.txt"
    junk.write_text("\n".join(UNREADABLE) + "\n")
    refused = CliRunner().invoke(main, ["audit", "collect", "--log", str(junk)])
    assert (refused.exit_code, refused.stdout, refused.stderr) == (
        1,
        "",
        f"Error: --log {junk}: 7 of 7 lines read skipped as unreadable: no line {note}: is it the gateway's NGINX "
        "access log?\n",
    )
    mixed = tmp_path / "access.log"
    mixed.write_text(line(f"/dicomweb/studies/{ST}") + UNREADABLE[1] + "\n")
    done = CliRunner().invoke(main, ["audit", "collect", "--log", str(mixed)])
    assert (done.exit_code, done.stdout, done.stderr) == (
        0,
        "1 access rows added\n",
        f"dicom-gateway audit collect: 1 of 2 lines read skipped as unreadable: no line {note}\n",
    )
    with mixed.open("a") as handle:
        handle.write(UNREADABLE[0] + "\n" + line(f"/dicomweb/studies/{ST}/series"))
    stop = threading.Event()
    stop.set()  # one pass, then the last one: nothing new for it
    capsys.readouterr()
    try:
        accesslog.follow_log(db, mixed, 365, 1.0, stop)
        assert [row["action"] for row in db.access_records(limit=10)] == ["search", "retrieve"]
    finally:
        db.close()
    followed = capsys.readouterr()
    assert (followed.out, followed.err) == (
        "",
        f"dicom-gateway audit collect: 1 of 2 lines read skipped as unreadable: no line {note}\n",
    )
    assert "SECRET" not in refused.output + done.output + followed.err
