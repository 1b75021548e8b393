"""Configuration and the command line as operators bring them (session 22): values typed into an .env file or a
shell (a password with an @, a URL with user:pass@, a relative path, a folder that cannot be made), and
`dicom-gateway stack up` run twice on one --var or stopped while it starts. Every command runs for real (a
subprocess, the real NGINX, gunicorn, PostgreSQL); each refusal is one exact line that names the variable and never
repeats a credential."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
import requests

from gateway.dicomweb.multipart import encode_multipart
from gateway.tools.stack import free_port
from gateway.tools.synth import make_series
from tests.e2e.harness import AWS_TEST_ENV, ctrl_c_as_from_a_terminal
from tests.e2e.test_stack_cli import gateway_env, ipv6_loopback_port
from tests.fixtures.servers import MotoServer, PostgresServer, create_bucket, postgres_database
from tests.requirements import require

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateway.cli"]
SECRET = "hunter2-" + secrets.token_hex(4)  # what no output may show


def _run(argv: list[str], env: Mapping[str, str], cwd: Path) -> tuple[int, str, str]:
    done = subprocess.run([*CLI, *argv], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def _stack_up(var: Path | str, port: int, env: Mapping[str, str], cwd: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "stack", "up", "--no-seed", "--port", str(port), "--var", str(var), *flags],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ready(port: int) -> int | str:
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code
    except requests.RequestException as error:
        return type(error).__name__


def _wait_ready(port: int, process: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if _ready(port) == 200:
            return
        time.sleep(0.2)
    raise AssertionError("stack up did not become ready")


def _stop(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """What a `stack up` that should stop by itself (a refusal) exited with and printed; one that runs on instead is
    stopped (what it printed then fails the test)."""
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        return _stop(process)
    return process.returncode, out, err


def _processes_under(folder: Path) -> list[int]:
    """PIDs whose command line names ``folder`` or that run in it (what a stack up there started: its derivative
    worker and audit collector name no path, and run in --var)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(folder) in command or Path(os.readlink(proc / "cwd")).is_relative_to(folder):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(REPO / "gateway" / "catalog" / "migrations"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


# -- credentials in URLs -----------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_database_password_with_a_bare_at_is_refused_without_showing_it(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """A PostgreSQL password holding `@`, typed as it is: the URL was cut at the first `@` and the driver's
    "failed to resolve host 'ssword@127.0.0.1'" printed the rest of the password. Now one line says how to write
    it, and the same password percent-encoded (README: `postgresql://user:pass@host/db`) opens the catalog."""
    with postgres_database(postgres_server) as url:
        _, _, where = url.partition("://")
        user, _, host_and_db = where.partition("@")
        bare = f"postgresql://{user}:p@{SECRET}@{host_and_db}"
        code, out, err = _run(["db", "upgrade"], gateway_env(tmp_path, DICOMGW_DATABASE_URL=bare), tmp_path)
        assert (code, out, err) == (
            1,
            "",
            "Error: DICOMGW_DATABASE_URL: the user name or password holds an unencoded @: write it as %40\n",
        )
        assert "hunter2" not in out + err
        encoded = f"postgresql://{user}:p%40{SECRET}%2F%3F%23%3A@{host_and_db}"
        code, out, err = _run(["db", "upgrade"], gateway_env(tmp_path, DICOMGW_DATABASE_URL=encoded), tmp_path)
        assert (code, out, err) == (0, f"catalog schema at revision {_head_revision()}\n", "")


def test_audit_collect_against_a_catalog_it_cannot_open_is_one_line(tmp_path: Path) -> None:
    """`audit collect` (the collector service, cron) with the catalog down: a 40-line CatalogUnavailable traceback.
    With a password holding a bare `@`, `--follow` retried for ever, each pass "catalog unavailable", never why.
    Now the first is one line as `reconcile` says it, the second refused at once as the gateway refuses it."""
    log = tmp_path / "access.log"
    log.write_text("")
    env = gateway_env(tmp_path, DICOMGW_DATABASE_URL=f"postgresql://gw@127.0.0.1:{free_port()}/catalog")
    collect = ["audit", "collect", "--log", str(log)]
    unavailable = "Error: catalog_unavailable: catalog unavailable (OperationalError)\n"
    assert _run(collect, env, tmp_path) == (1, "", unavailable)
    env["DICOMGW_DATABASE_URL"] = f"postgresql://gw:p@{SECRET}@127.0.0.1:{free_port()}/catalog"
    follow = [*CLI, *collect, "--follow"]
    done = subprocess.run(follow, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "",
        "Error: DICOMGW_DATABASE_URL: the user name or password holds an unencoded @: write it as %40\n",
    )


@pytest.mark.parametrize("command", [["audit", "collect", "--log", "access.log"], ["retention", "run", "--dry-run"]])
def test_a_catalog_never_migrated_says_to_run_db_upgrade_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    """`audit collect` before any `db upgrade` (a catalog URL of a file not yet made) said `catalog unavailable
    (OperationalError)` and left an empty SQLite file where the catalog belongs; `retention run` named `db upgrade`
    but left the file too. Both now say what the gateway's workers say of a catalog behind them, and create nothing;
    an empty file already there is told the same, and after `db upgrade` the command runs. `retention run` said to
    run it "before starting the workers", which it does not start: "before running retention" now."""
    (tmp_path / "access.log").write_text("")
    catalog = tmp_path / "catalog.db"
    env = gateway_env(tmp_path, DICOMGW_DATABASE_URL=f"sqlite:///{catalog}")
    then = "before collecting" if command[0] == "audit" else "before running retention"
    behind = (
        f"Error: DICOMGW_DATABASE_URL: the catalog schema is at revision (none), this version needs "
        f"{_head_revision()}: run `dicom-gateway db upgrade` {then}\n"
    )
    assert _run(command, env, tmp_path) == (1, "", behind)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.log"]  # no catalog.db, -wal or -shm
    catalog.touch()  # an empty file (what the collector used to leave)
    assert _run(command, env, tmp_path) == (1, "", behind)
    assert catalog.stat().st_size == 0
    assert _run(["db", "upgrade"], env, tmp_path)[0] == 0
    code, out, err = _run(command, env, tmp_path)
    assert (code, err) == (0, "")
    assert out == "0 access rows added\n" if command[0] == "audit" else json.loads(out)["dry_run"] is True


def test_audit_collect_of_a_log_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """`audit collect --log /nonexistent/access.log` printed `0 access rows added`, exit 0: a mistyped path loaded
    nothing without a word. Once, a missing log is a usage error (one line, exit 2, nothing loaded); with --follow
    NGINX may write it later, so the collector says so once on stderr and keeps waiting."""
    env = gateway_env(tmp_path, DICOMGW_AUDIT_COLLECT_SECONDS="1")
    assert _run(["db", "upgrade"], env, tmp_path)[0] == 0
    missing = tmp_path / "nginx" / "access.log"
    assert _run(["audit", "collect", "--log", str(missing)], env, tmp_path) == (
        2,
        "",
        f"Error: Invalid value for --log: {missing}: no such file\n",
    )
    assert _run(["audit", "collect"], {**env, "DICOMGW_ACCESS_LOG": str(missing)}, tmp_path)[0] == 2
    follower = subprocess.Popen(
        [*CLI, "audit", "collect", "--follow", "--log", str(missing)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(4)  # three passes or more over a log that is not there
    finally:
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=30)
    assert (follower.returncode, out) == (0, "")
    assert err == (
        f"dicom-gateway audit collect: {missing} does not exist yet; its lines are loaded once NGINX writes it\n"
    )


def test_a_catalog_a_newer_version_migrated_is_one_line_that_says_so_everywhere(tmp_path: Path) -> None:
    """The image rolled back after a newer gateway migrated the catalog (its revision unknown here): `db upgrade`
    said `cannot migrate the catalog: Can't locate revision identified by '0099'` (Alembic's words), and the
    workers, `stack up`, `reconcile`, `retention run` and `audit collect` told the operator to run `db upgrade`,
    which cannot help. Each now says what happened and what to do, and the catalog is left as it is."""
    catalog = tmp_path / "catalog.db"
    env = gateway_env(tmp_path, DICOMGW_DATABASE_URL=f"sqlite:///{catalog}")
    assert _run(["db", "upgrade"], env, tmp_path)[0] == 0
    with sqlite3.connect(catalog) as db:
        db.execute("UPDATE alembic_version SET version_num = '0099'")
    db.close()
    (tmp_path / "access.log").write_text("")
    newer = (
        "Error: DICOMGW_DATABASE_URL: the catalog schema is at revision 0099, newer than this version's "
        f"{_head_revision()}: a newer dicom-gateway migrated it, and no version migrates a catalog back: run that "
        "version (or restore the catalog from before its upgrade)\n"
    )
    for command in (
        ["db", "upgrade"],
        ["reconcile"],
        ["retention", "run"],
        ["audit", "collect", "--log", "access.log"],
        ["stack", "up", "--no-seed", "--port", str(free_port()), "--var", "var"],
    ):
        assert _run(command, env, tmp_path) == (1, "", newer), command
    with sqlite3.connect(catalog) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0099",)]
    db.close()


def test_ctrl_c_between_two_retention_runs_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """`retention run --every S` spends its time waiting for the next run: a Ctrl-C there (an operator who started it
    in a terminal) was click's `Aborted!`, exit 1, the status of a failed run. It is one line and exit 130, as a
    Ctrl-C during a run is."""
    env = gateway_env(tmp_path, DICOMGW_DATABASE_URL=f"sqlite:///{tmp_path / 'catalog.db'}")
    assert _run(["db", "upgrade"], env, tmp_path)[0] == 0
    process = subprocess.Popen(
        [*CLI, "retention", "run", "--every", "3600"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_from_a_terminal,
    )
    assert process.stdout is not None
    first = [process.stdout.readline() for _ in range(5)]  # the first run's report, then the wait
    assert json.loads("".join(first)) == {"configured": False, "dry_run": False, "removed": []}
    time.sleep(1)  # well inside the hour's wait
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert (process.returncode, out, err) == (130, "", "stopped (Ctrl-C) between runs: nothing was under way\n")


@pytest.mark.parametrize("flag", ["--dry-run", "--repair"])
def test_reconcile_against_a_catalog_never_migrated_says_to_run_db_upgrade_and_creates_nothing(
    tmp_path: Path, flag: str
) -> None:
    """`reconcile` migrated the catalog it was given: with a misspelled `DICOMGW_DATABASE_URL` (`catlog.db`) it made
    and migrated a new SQLite file there, then called every stored instance an orphan (`--dry-run`: exit 1, the
    whole archive listed) or registered them all into that new file (`--repair`: exit 0). Like the gateway's workers,
    `retention run` and `audit collect`, it now refuses a catalog behind this version in one line naming `db
    upgrade`, creates nothing and touches no stored object; once the catalog is migrated it runs as before."""
    [ct] = make_series(tmp_path / "ct", modality="CT", slices=1, seed=75, clean=True)
    ds = pydicom.dcmread(ct, stop_before_pixels=True)
    key = f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}.dcm"
    stored = tmp_path / "objects" / key
    stored.parent.mkdir(parents=True)
    shutil.copyfile(ct, stored)
    misspelled = tmp_path / "catlog.db"
    env = gateway_env(tmp_path, DICOMGW_DATABASE_URL=f"sqlite:///{misspelled}")
    behind = (
        f"Error: DICOMGW_DATABASE_URL: the catalog schema is at revision (none), this version needs "
        f"{_head_revision()}: run `dicom-gateway db upgrade` before reconciling\n"
    )
    assert _run(["reconcile", flag], env, tmp_path) == (1, "", behind)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "objects"]  # no catlog.db, -wal or -shm
    objects = tmp_path / "objects"
    assert [p.relative_to(objects).as_posix() for p in objects.rglob("*") if p.is_file()] == [key]
    assert stored.read_bytes() == ct.read_bytes()
    assert _run(["db", "upgrade"], env, tmp_path)[0] == 0
    code, out, err = _run(["reconcile", flag], env, tmp_path)
    assert (code, err) == (1 if flag == "--dry-run" else 0, "")
    assert json.loads(out)["orphans"] == [key]


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "DICOMGW_PUBLIC_URL",
            f"https://viewer:{SECRET}@dicom.example.org",
            "Error: DICOMGW_PUBLIC_URL: must not hold a user name or password (user:pass@)\n",
        ),
        (
            "DICOMGW_PUBLIC_URL",
            f"https://viewer:{SECRET}@dicom.example.org/?x=1",
            "Error: DICOMGW_PUBLIC_URL: must not hold a user name or password (user:pass@)\n",
        ),
        (
            "DICOMGW_CORS_ORIGINS",
            f"https://portal.example.org,https://portal:{SECRET}@portal.example.org",
            "Error: DICOMGW_CORS_ORIGINS: each entry must be an origin such as https://portal.example.org\n",
        ),
    ],
    ids=["public-url", "public-url-with-query", "cors-origin"],
)
def test_a_url_setting_with_user_and_password_is_refused_without_showing_them(
    tmp_path: Path, variable: str, value: str, line: str
) -> None:
    """DICOMGW_PUBLIC_URL prefixes every viewer link, RetrieveURL and DICOMweb root handed to clients: a
    `user:pass@` in it was accepted and went out in every answer (and a refusal for another reason quoted it whole).
    An origin with one can never match what a browser sends, yet was accepted. Both are one line now, without it."""
    code, out, err = _run(["db", "upgrade"], gateway_env(tmp_path, **{variable: value}), tmp_path)
    assert (code, out, err) == (1, "", line)
    assert not (tmp_path / "catalog.db").exists()


def test_token_issue_never_prints_a_url_with_user_and_password(tmp_path: Path) -> None:
    """`token issue` prints viewer_url and dicomweb_root under --url, else DICOMGW_PUBLIC_URL: either with a
    `user:pass@` printed it into both URLs (pasted into tickets and chats). Now each is refused in one line."""
    env = gateway_env(tmp_path)
    issue = ["token", "issue", "--study", "1.2.3"]
    code, out, err = _run([*issue, "--url", f"https://viewer:{SECRET}@dicom.example.org"], env, tmp_path)
    assert (code, out, err) == (
        2,
        "",
        "Error: Invalid value for --url: must not hold a user name or password (user:pass@)\n",
    )
    env["DICOMGW_PUBLIC_URL"] = f"https://viewer:{SECRET}@dicom.example.org"
    code, out, err = _run(issue, env, tmp_path)
    refused = "Error: DICOMGW_PUBLIC_URL: must not hold a user name or password (user:pass@)\n"
    assert (code, out, err) == (1, "", refused)
    # a plain --url still wins over the variable, as README says
    code, out, err = _run([*issue, "--url", "https://dicom.example.org/"], env, tmp_path)
    assert (code, err) == (0, "")
    assert '"dicomweb_root": "https://dicom.example.org/t/' in out


@pytest.mark.parametrize("url", ["", " "], ids=["empty", "blank"])
def test_an_empty_url_is_a_usage_error_naming_the_flag(tmp_path: Path, url: str) -> None:
    """`token issue --url ""` printed links on the default URL (DICOMGW_PUBLIC_URL, else the running stack's, else
    http://127.0.0.1:8080), as if no --url had been given; `stack seed --url ""` wrote the synthetic studies, then
    failed with "seeding failed: MissingSchema: Invalid URL '/dicomweb/studies'", exit 1. Both are now the usage
    error naming --url, as an empty path is, before anything is made."""
    env = gateway_env(tmp_path)
    refused = (2, "", "Error: Invalid value for '--url': an empty URL names no gateway\n")
    assert _run(["token", "issue", "--study", "1.2.3", "--url", url], env, tmp_path) == refused
    assert _run(["stack", "seed", "--url", url, "--work-dir", str(tmp_path / "seed")], env, tmp_path) == refused
    assert not (tmp_path / "seed").exists()


def test_an_api_key_written_label_colon_blank_key_is_the_key(tmp_path: Path) -> None:
    """`DICOMGW_API_KEYS=ops: KEY`, the blank after the colon as YAML and most key lists are written: the key became
    " KEY", which no `Authorization: Bearer KEY` (read without blanks) matched. Start-up said nothing and every
    server-to-server call was a 401 (and `backup :KEY` was refused as a malformed label). The blanks around the label
    and the key are now no part of either."""
    key = secrets.token_urlsafe(48)
    env = gateway_env(tmp_path, DICOMGW_API_KEYS=f"ops: {key} , backup :{secrets.token_urlsafe(48)}")
    port = free_port()
    process = _stack_up(tmp_path / "var", port, env, tmp_path)
    try:
        _wait_ready(port, process)
        answer = requests.post(
            f"http://127.0.0.1:{port}/api/v1/tokens",
            json={"sub": "portal", "studies": ["1.2.3"]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert (answer.status_code, answer.headers["Content-Type"]) == (201, "application/json"), answer.text
        assert answer.json()["dicomweb_root"].startswith(f"http://127.0.0.1:{port}/t/")
    finally:
        code, _, err = _stop(process)
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    "endpoint",
    ["127.0.0.1:{port}", "htp://127.0.0.1:{port}", f"http://minio:{SECRET}@127.0.0.1:{{port}}", "http://127.0.0.1:x"],
    ids=["no-scheme", "scheme-typo", "user-and-password", "port-no-number"],
)
def test_an_s3_endpoint_that_is_no_url_is_one_line(tmp_path: Path, moto_server: MotoServer, endpoint: str) -> None:
    """`AWS_ENDPOINT_URL=127.0.0.1:9000` (what MinIO's console shows as its API address) with s3:// storage: start-up
    died in boto3's "ValueError: Invalid endpoint" traceback; a scheme typo passed start-up, and a `user:pass@` was
    written into NGINX's rendered configuration as the storage's Host. Each is one line now, without the value; the
    real endpoint, trailing slash and all, still starts."""
    port = moto_server.endpoint.rsplit(":", 1)[1]
    create_bucket(moto_server.endpoint, "operators")
    env = gateway_env(tmp_path, **AWS_TEST_ENV, DICOMGW_STORAGE_URL="s3://operators/data")
    env["AWS_ENDPOINT_URL"] = endpoint.format(port=port)
    code, out, err = _run(["db", "upgrade"], env, tmp_path)
    assert (code, out, err) == (
        1,
        "",
        "Error: AWS_ENDPOINT_URL: must be an http:// or https:// URL with a host, such as http://minio:9000\n",
    )
    process = _stack_up(tmp_path / "var", free_port(), env, tmp_path)
    assert _finish(process) == (
        1,
        "",
        "Error: AWS_ENDPOINT_URL: must be an http:// or https:// URL with a host, such as http://minio:9000\n",
    )
    assert not (tmp_path / "var" / "nginx" / "conf").exists()
    env["AWS_ENDPOINT_URL"] = moto_server.endpoint + "/"
    code, out, err = _run(["db", "upgrade"], env, tmp_path)
    assert (code, out, err) == (0, f"catalog schema at revision {_head_revision()}\n", "")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("notaurl", "must be an http:// or https:// URL with a host: 'notaurl'"),
        (f"https://admin:{SECRET}@dicom.example.org", "must not hold a user name or password (user:pass@)"),
    ],
    ids=["no-url", "user-and-password"],
)
def test_stack_seed_url_is_checked_before_anything_is_sent(tmp_path: Path, url: str, problem: str) -> None:
    """`stack seed --url` prefixes the links it prints, as DICOMGW_PUBLIC_URL does: `notaurl` ended in "seeding
    failed: MissingSchema: Invalid URL 'notaurl/dicomweb/studies'" after the synthetic studies were written, and a
    `user:pass@` went on to the uploads and into the printed links. Both are a usage error first (exit 2)."""
    env = gateway_env(tmp_path)
    code, out, err = _run(["stack", "seed", "--url", url, "--work-dir", str(tmp_path / "seed")], env, tmp_path)
    assert (code, out, err) == (2, "", f"Error: Invalid value for --url: {problem}\n")
    assert not (tmp_path / "seed").exists()


def test_blanks_around_values_are_no_part_of_them(tmp_path: Path) -> None:
    """`docker run --env-file`, Kubernetes literals and hand-edited files keep the blanks around a value: ` file:///x`
    was "must start with file:/// or s3://", `file:///x/objects ` made a folder named "objects " (NGINX served
    another), ` 1` was no flag, ` production` no mode. Every value is now read without them, by the gateway,
    NGINX and the CLI alike: what is stored is what NGINX serves."""
    [ct] = make_series(tmp_path / "ct", modality="CT", slices=1, seed=73, clean=True)
    ds = pydicom.dcmread(ct, stop_before_pixels=True)
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    env = gateway_env(
        tmp_path,
        DICOMGW_STORAGE_URL=f" file://{tmp_path / 'objects'} ",
        DICOMGW_DATABASE_URL=f"sqlite:///{tmp_path / 'catalog.db'}\t",
        DICOMGW_MODE=" production",
        DICOMGW_STOW_OVERWRITE="1 ",
        DICOMGW_TOKEN_MAX_TTL=" 7200 ",
    )
    key = env["DICOMGW_API_KEYS"]
    port = free_port()
    process = _stack_up(tmp_path / "var", port, env, tmp_path)
    try:
        _wait_ready(port, process)
        body = encode_multipart([ct])
        stored = requests.post(
            f"http://127.0.0.1:{port}/dicomweb/studies",
            data=body,
            headers={"Content-Type": body.content_type, "Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert stored.status_code == 200, stored.text
        assert [p.name for p in (tmp_path / "objects").rglob("*.dcm")] == [f"{sop}.dcm"]
        assert (tmp_path / "catalog.db").is_file()
        assert [p.name for p in tmp_path.iterdir() if p.name != p.name.strip()] == []  # no "objects ", "catalog.db\t"
        read = requests.get(
            f"http://127.0.0.1:{port}/dicomweb/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"', "Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert read.status_code == 200
        assert ct.read_bytes() in read.content
    finally:
        code, _, err = _stop(process)
    assert (code, err) == (0, "")


@pytest.mark.parametrize("variable", ["DICOMGW_STORAGE_URL", "DICOMGW_API_KEYS", "DICOMGW_TLS"])
@pytest.mark.parametrize("quote", ['"', "'"])
def test_a_value_written_in_quotes_is_refused_saying_so(tmp_path: Path, variable: str, quote: str) -> None:
    """`docker run --env-file` and systemd's `EnvironmentFile` keep the quotes of `DICOMGW_STORAGE_URL="file:///..."`
    as part of the value: `db upgrade` said "must start with file:/// or s3://" of a value that, in the file, does;
    a quoted API key was the key with its quotes (every client's `Bearer k` a 401, nothing said at start-up); a
    quoted flag was "expected 0 or 1". Each is now refused in one line that says what happened, without the value."""
    env = gateway_env(tmp_path, DICOMGW_TLS="1")
    env[variable] = f"{quote}{env[variable]}{quote}"
    line = (
        f"Error: {variable}: is written in quotes, which docker --env-file and systemd keep as part of the value: "
        "remove them\n"
    )
    assert _run(["db", "upgrade"], env, tmp_path) == (1, "", line)
    assert not (tmp_path / "catalog.db").exists()
    if variable == "DICOMGW_API_KEYS":  # the signing keys too, where `token issue` reads them (it was a traceback)
        env = gateway_env(tmp_path, DICOMGW_SIGNING_KEYS=f"{quote}{secrets.token_urlsafe(48)}{quote}")
        assert _run(["token", "issue", "--study", "1.2.3"], env, tmp_path) == (
            1,
            "",
            line.replace("DICOMGW_API_KEYS", "DICOMGW_SIGNING_KEYS"),
        )


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("DICOMGW_PHI_POLCY", "DICOMGW_PHI_POLICY"), ("DICOMGW_STOW_OVERWRITES", "DICOMGW_STOW_OVERWRITE")],
)
def test_a_misspelled_setting_is_refused_naming_the_one_meant(tmp_path: Path, typo: str, meant: str) -> None:
    """`DICOMGW_PHI_POLCY=/etc/dgw/policy.toml` (one letter short): the gateway started without its PHI policy
    (README: empty, "no PHI hooks run"), `db upgrade` said nothing, and identifiable uploads were stored unscanned; a
    misspelled flag was as silently off. A DICOMGW_ name one typo from a setting is now refused at start-up, in one
    line naming the setting meant, by `db upgrade` and `stack up` alike; nothing is made or started."""
    shutil.copy(REPO / "examples" / "phi-policy.toml", tmp_path / "policy.toml")
    env = gateway_env(tmp_path, **{typo: str(tmp_path / "policy.toml") if "POLICY" in meant else "1"})
    env["DICOMGW_DEID_KEY"] = secrets.token_urlsafe(48)  # the example policy de-identifies
    line = f"Error: {typo}: no setting of this name: did you mean {meant}? (rename it, or remove it)\n"
    assert _run(["db", "upgrade"], env, tmp_path) == (1, "", line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.toml"]  # no catalog, no storage folder
    code, out, err = _finish(_stack_up(tmp_path / "var", free_port(), env, tmp_path))
    assert (code, out, err) == (1, "", line)
    assert not _processes_under(tmp_path / "var")
    env[meant] = env.pop(typo)
    assert _run(["db", "upgrade"], env, tmp_path)[0] == 0


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        (
            {"DICOMGW_SIGNING_KEYS": "short"},
            "dicom-gateway: DICOMGW_SIGNING_KEYS: every key must be at least 32 characters",
        ),
        (
            {},
            "dicom-gateway: DICOMGW_DATABASE_URL: the catalog schema is at revision (none), this version needs "
            "{head}: run `dicom-gateway db upgrade` before starting the workers",
        ),
        (
            {"DICOMGW_DATABASE_URL": "postgresql://gw@127.0.0.1:{port}/catalog"},
            "dicom-gateway: catalog_unavailable: catalog unavailable (OperationalError)",
        ),
    ],
    ids=["bad-setting", "catalog-not-migrated", "catalog-down"],
)
def test_the_derivative_worker_refuses_in_one_line(tmp_path: Path, changes: dict[str, str], line: str) -> None:
    """`python -m gateway.derive`, compose's derive service: a bad setting, a catalog not yet migrated or down ended
    in a 20-line traceback (and `stack up` quoted its last line, "gateway.errors.ConfigError: ..."). Now it is one
    line, in the form gunicorn's master uses."""
    port = free_port()
    env = gateway_env(tmp_path, **{k: v.format(port=port) for k, v in changes.items()})
    done = subprocess.run(
        [sys.executable, "-m", "gateway.derive"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == line.format(head=_head_revision())


def test_development_mode_where_its_folder_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """README: `DICOMGW_MODE=development` fills what is missing under ./var. Run where ./var cannot be made (a file
    of that name, a read-only folder), `db upgrade` (and the image's gunicorn) died in pathlib's traceback. Now one
    line names the variable and the folder; where it can be made, the keys are made there, 0600."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMGW_")}
    env["DICOMGW_MODE"] = "development"
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "var").write_text("not a folder")
    assert _run(["db", "upgrade"], env, blocked) == (
        1,
        "",
        f"Error: DICOMGW_MODE: development keeps its keys and catalog in {blocked / 'var'}, which is not a writable "
        "folder (File exists)\n",
    )
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert _run(["db", "upgrade"], env, fresh) == (0, f"catalog schema at revision {_head_revision()}\n", "")
    assert oct((fresh / "var" / "signing.key").stat().st_mode & 0o777) == "0o600"


def test_token_issue_refuses_a_signing_key_the_gateway_refuses(tmp_path: Path) -> None:
    """`token issue` signed with any DICOMGW_SIGNING_KEYS, `short` included: a token under a key no gateway could have
    started with (they refuse keys under 32 characters), and a weak one. It is refused as the gateway refuses it."""
    env = gateway_env(tmp_path, DICOMGW_SIGNING_KEYS="short")
    assert _run(["token", "issue", "--study", "1.2.3"], env, tmp_path) == (
        1,
        "",
        "Error: DICOMGW_SIGNING_KEYS: every key must be at least 32 characters\n",
    )


@pytest.mark.parametrize(
    ("flags", "flag", "problem"),
    [
        (["--ttl", "0"], "'--ttl'", "ttl must be a positive integer number of seconds"),
        (["--ttl", "86400"], "'--ttl'", "ttl exceeds the maximum of 3600 seconds"),
        (["--study", "1.2.840.x"], "'--study'", "studies: every entry must be a valid DICOM UID"),
        (["--series", "1.2.3.4.5", "--study", "1.2.3.9"], "'--series'", "a series-scoped token names exactly one study"),  # noqa: E501
        (["--series", "1.2.3.4;5"], "'--series'", "series: every entry must be a valid DICOM UID (at most 100)"),
        (["--sub", "Dr Who"], "'--sub'", "sub must be 1-128 printable ASCII characters without spaces"),
    ],
    ids=["ttl-zero", "ttl-over-max", "study", "series-two-studies", "series", "sub"],
)
def test_token_issue_with_a_flag_the_token_rules_refuse_is_a_usage_error_naming_it(
    tmp_path: Path, flags: list[str], flag: str, problem: str
) -> None:
    """A value of `token issue` refused by the token rules was exit 1, the status of a failure to sign, in the API's
    words (`Error: ttl must be ...`, `Error: studies: ...`), while click's own checks of the same command (`--ttl
    abc`, `--action delete`) are exit 2 naming the flag: every one is now a usage error naming the flag."""
    env = gateway_env(tmp_path)
    argv = ["token", "issue", "--study", "1.2.3", *flags]
    assert _run(argv, env, tmp_path) == (2, "", f"Error: Invalid value for {flag}: {problem}\n")


@pytest.mark.parametrize(
    "command",
    [
        ["retention", "run"],
        ["retention", "run", "--every", "86400"],
        ["audit", "collect", "--follow", "--log", "{tmp}/access.log"],
    ],
    ids=["retention-once", "retention-every", "collector"],
)
def test_a_heartbeat_in_a_folder_that_does_not_exist_is_a_usage_error_before_any_run(
    tmp_path: Path, command: list[str]
) -> None:
    """`--heartbeat FILE` (compose's health checks read it) in a folder that does not exist: `retention run` ran,
    removed what had expired, then died in a traceback touching it (`FileNotFoundError`, exit 1; with `--every`,
    compose restarted it into the same end, never healthy). It is refused before anything runs, naming the flag."""
    env = gateway_env(tmp_path)
    assert _run(["db", "upgrade"], env, tmp_path)[0] == 0
    (tmp_path / "access.log").write_text("")
    heartbeat = tmp_path / "not-mounted" / "alive"
    argv = [part.replace("{tmp}", str(tmp_path)) for part in command] + ["--heartbeat", str(heartbeat)]
    assert _run(argv, env, tmp_path) == (
        2,
        "",
        f"Error: Invalid value for '--heartbeat': {heartbeat}: the folder {heartbeat.parent} does not exist\n",
    )


# -- folders and paths -------------------------------------------------------------------------------------------


def test_a_var_folder_on_a_read_only_mount_is_one_line_naming_var(tmp_path: Path) -> None:
    """`stack up --var DIR` where DIR cannot be written (a read-only mount here; another user's folder for a
    non-root user): the line was Python's bare `Error: [Errno 30] Read-only file system: 'DIR'`, naming neither the
    flag nor what to do. It names `--var` and the fix, exit 1, nothing started, for a folder to make under the mount
    and for the mount itself (which exists: the first write is refused, not its making)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
        done, reason = mounted.returncode == 0, mounted.stderr.decode(errors="replace").strip()
    except OSError as error:  # no mount(8) at all
        done, reason = False, str(error)
    require(done, f"cannot mount a read-only tmpfs (this test needs root): {reason}")
    try:
        for var in (mount / "var", mount):
            process = _stack_up(var, free_port(), gateway_env(tmp_path), tmp_path)
            assert _finish(process) == (
                1,
                "",
                f"Error: --var {var}: cannot write there (Read-only file system): choose a folder this user can "
                "write\n",
            )
            assert not _processes_under(var)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_storage_folder_that_cannot_be_made_stops_start_up_in_one_line(tmp_path: Path) -> None:
    """`file:///...` under a path that is a file (a mount point not mounted, a typo): start-up said all was well
    (`db upgrade` printed the revision and exited 0; `stack up` waited its 30 s for a readiness that never came),
    and every upload would have been a 503. Now start-up stops at once, naming the variable, the folder and the
    file in its way (it said `Not a directory`); `stack up --storage` names its flag (session 34)."""
    blocker = tmp_path / "data"
    blocker.write_text("a file where the folder should be")
    storage = f"file://{blocker / 'objects'}"
    problem = f"cannot make the folder {blocker / 'objects'}: {blocker} is not a folder"
    code, out, err = _run(["db", "upgrade"], gateway_env(tmp_path, DICOMGW_STORAGE_URL=storage), tmp_path)
    assert (code, out, err) == (1, "", f"Error: DICOMGW_STORAGE_URL: {problem}\n")
    started = time.monotonic()
    process = _stack_up(tmp_path / "var", free_port(), gateway_env(tmp_path), tmp_path, "--storage", storage)
    assert _finish(process) == (2, "", f"Error: Invalid value for '--storage': {problem}\n")
    assert time.monotonic() - started < 25
    assert not _processes_under(tmp_path / "var")
    assert blocker.read_text() == "a file where the folder should be"


def test_a_storage_url_naming_a_file_says_it_is_not_a_folder(tmp_path: Path) -> None:
    """`stack up --storage file:///path/to/a-file`: start-up said `DICOMGW_STORAGE_URL: cannot make the folder
    PATH: File exists`, naming a variable the user had not set and no reason a user could act on. The flag is now a
    usage error saying the path is not a folder, before anything starts; the variable (`db upgrade`, the workers'
    start-up) says the same of itself."""
    afile = tmp_path / "objects.tar"
    afile.write_text("a file, not a folder")
    storage = f"file://{afile}"
    process = _stack_up(tmp_path / "var", free_port(), gateway_env(tmp_path), tmp_path, "--storage", storage)
    assert _finish(process) == (2, "", f"Error: Invalid value for '--storage': {afile} is not a folder\n")
    assert not (tmp_path / "var").exists()
    code, out, err = _run(["db", "upgrade"], gateway_env(tmp_path, DICOMGW_STORAGE_URL=storage), tmp_path)
    assert (code, out, err) == (1, "", f"Error: DICOMGW_STORAGE_URL: {afile} is not a folder\n")
    assert afile.read_text() == "a file, not a folder"


def test_an_upload_spool_that_does_not_exist_stops_start_up_in_one_line(tmp_path: Path) -> None:
    """DICOMGW_TMP_DIR naming no folder (a typo, a volume not mounted): the gateway started, /readyz said 200, and
    every upload was a 503 `upload spool write failed (ENOENT)`. Now `stack up` and the image's gunicorn stop at
    start-up, in one line naming the variable."""
    missing = tmp_path / "no-such-spool"
    env = gateway_env(tmp_path, DICOMGW_TMP_DIR=str(missing))
    process = _stack_up(tmp_path / "var", free_port(), env, tmp_path)
    assert _finish(process) == (1, "", f"Error: DICOMGW_TMP_DIR: no such folder: {missing}\n")
    assert not _processes_under(tmp_path / "var")
    gunicorn = [str(Path(sys.executable).with_name("gunicorn")), "--config", str(REPO / "docker" / "gunicorn.conf.py")]
    env.update(GUNICORN_BIND=f"127.0.0.1:{free_port()}", WEB_CONCURRENCY="1")
    done = subprocess.run(
        [*gunicorn, "gateway.wsgi:application"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"dicom-gateway: DICOMGW_TMP_DIR: no such folder: {missing}"
    assert "Traceback" not in done.stderr and "Booting worker" not in done.stderr
    assert not missing.exists()


def test_a_phi_policy_saved_by_a_windows_editor_starts_or_is_one_line(tmp_path: Path) -> None:
    """The example policy as Windows editors save it: Notepad's "UTF-8 with BOM" was refused as "not valid TOML:
    Invalid statement (at line 1, column 1)"; saved as Latin-1 (a site name with an accent in a comment) start-up
    died in a UnicodeDecodeError traceback. The first now starts; the second is one line naming the variable."""
    text = (REPO / "examples" / "phi-policy.toml").read_text(encoding="utf-8")
    env = gateway_env(tmp_path, DICOMGW_DEID_KEY=secrets.token_urlsafe(48))  # the example de-identifies
    with_bom = tmp_path / "bom.toml"
    with_bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    code, out, err = _run(["db", "upgrade"], {**env, "DICOMGW_PHI_POLICY": str(with_bom)}, tmp_path)
    assert (code, out, err) == (0, f"catalog schema at revision {_head_revision()}\n", "")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(("# Hôpital Saint-Éloi\n" + text).encode("latin-1"))
    code, out, err = _run(["db", "upgrade"], {**env, "DICOMGW_PHI_POLICY": str(latin1)}, tmp_path)
    refused = f"Error: DICOMGW_PHI_POLICY: {latin1} is not UTF-8 text (byte 3): save it as UTF-8\n"
    assert (code, out, err) == (1, "", refused)


def test_relative_paths_mean_the_folder_stack_up_was_started_in(tmp_path: Path) -> None:
    """`stack up --database sqlite:///catalog.db` (README's `sqlite:///path.db`) with `DICOMGW_PHI_POLICY=policy.toml`:
    the catalog was migrated in the operator's folder, but gunicorn and its helpers run in --var, where they found
    no policy and an empty catalog ("derive exited at start-up: ... run `dicom-gateway db upgrade`"). Every process
    now reads the paths the operator meant."""
    shutil.copy(REPO / "examples" / "phi-policy.toml", tmp_path / "policy.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMGW_")}
    env.update(DICOMGW_PHI_POLICY="policy.toml", DICOMGW_TMP_DIR="spool")
    (tmp_path / "spool").mkdir()
    port = free_port()
    process = _stack_up("var", port, env, tmp_path, "--database", "sqlite:///catalog.db")
    try:
        _wait_ready(port, process)
        assert not (tmp_path / "var" / "catalog.db").exists()
        with sqlite3.connect(tmp_path / "catalog.db") as catalog:
            assert catalog.execute("SELECT version_num FROM alembic_version").fetchall() == [(_head_revision(),)]
    finally:
        code, out, err = _stop(process)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "stopped."


def test_stack_up_in_a_folder_whose_path_has_spaces_and_accents(tmp_path: Path) -> None:
    """`stack up --var "/home/ana/my docs/dgw"` (a home folder on macOS or a synced drive): NGINX did not start,
    "Error: nginx exited at start-up: ... invalid parameter "docs/dgw/run/gunicorn.sock;" in .../dicomgw.conf:7": the
    rendered configuration wrote each path unquoted. Every path is now one NGINX parameter: the stack starts, stores,
    serves the stored bytes and a frame, writes its access log and stops cleanly."""
    [ct] = make_series(tmp_path / "ct", modality="CT", slices=1, seed=74, clean=True)
    ds = pydicom.dcmread(ct, stop_before_pixels=True)
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    env = gateway_env(tmp_path)
    for name in ("DICOMGW_STORAGE_URL", "DICOMGW_DATABASE_URL"):  # objects/ and catalog.db under --var
        del env[name]
    key = env["DICOMGW_API_KEYS"]
    var, port = tmp_path / "my docs é", free_port()  # short: a socket path holds at most 107 bytes
    process = _stack_up(var, port, env, tmp_path)
    try:
        _wait_ready(port, process)
        body = encode_multipart([ct])
        stored = requests.post(
            f"http://127.0.0.1:{port}/dicomweb/studies",
            data=body,
            headers={"Content-Type": body.content_type, "Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert stored.status_code == 200, stored.text
        assert [p.name for p in (var / "objects").rglob("*.dcm")] == [f"{sop}.dcm"]
        instance = f"http://127.0.0.1:{port}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        whole = requests.get(
            instance, headers={"Accept": "application/dicom", "Authorization": f"Bearer {key}"}, timeout=60
        )
        assert (whole.status_code, whole.headers["Content-Type"]) == (200, "application/dicom")
        assert whole.content == ct.read_bytes()
        frame = requests.get(
            f"{instance}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"', "Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert frame.status_code == 200 and ds.Rows * ds.Columns * 2 <= len(frame.content)
        logged = [json.loads(line) for line in (var / "nginx" / "logs" / "access.log").read_text().splitlines()]
        assert [(e["method"], e["status"]) for e in logged if e["uri"].startswith("/dicomweb/")] == [
            ("POST", 200),
            ("GET", 200),
            ("GET", 200),
        ]
    finally:
        code, out, err = _stop(process)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "stopped."
    assert not _processes_under(var)


def test_a_var_folder_too_deep_for_a_unix_socket_is_one_line_that_says_so(tmp_path: Path) -> None:
    """The stack's processes talk over Unix sockets in --var/run, and a socket's path holds at most 107 bytes. A
    deeper --var (`/srv/hospital/deployments/dicom-gateway-production/...`) was "Error: gunicorn exited at start-up:
    ... [ERROR] Can't connect to .../run/gunicorn.sock", which reads as a gunicorn or network fault. It is now
    refused before anything starts, in one line naming the limit and what to do; a shorter --var then starts."""
    env = gateway_env(tmp_path)
    for name in ("DICOMGW_STORAGE_URL", "DICOMGW_DATABASE_URL"):
        del env[name]
    var = tmp_path / "deployments" / ("dicom-gateway-production-" + "x" * 80) / "var"
    socket_path = var / "run" / "gunicorn.sock"
    assert len(bytes(socket_path)) > 107
    port = free_port()
    code, out, err = _finish(_stack_up(var, port, env, tmp_path))
    assert (code, out) == (1, "")
    assert err == (
        f"Error: --var {var} is too deep: the stack's socket {socket_path} would be {len(bytes(socket_path))} bytes, "
        "and a Unix socket's path holds at most 107: choose a shorter --var\n"
    )
    assert not _processes_under(var) and _ready(port) == "ConnectionError"
    shorter = _stack_up(tmp_path / "var", port, env, tmp_path)
    _wait_ready(port, shorter)
    assert _stop(shorter)[0] == 0


# -- stack up: one per folder, stopped while it starts ------------------------------------------------------------


def test_stack_up_on_an_ipv6_address_written_in_brackets(tmp_path: Path) -> None:
    """`--host [::1]`, as URLs, NGINX's listen and `docker run -p` write an IPv6 address: refused as "cannot listen
    on '[::1]': not an address or a name that resolves". It is the address inside the brackets now."""
    port = ipv6_loopback_port()
    env = gateway_env(tmp_path)
    for name in ("DICOMGW_STORAGE_URL", "DICOMGW_DATABASE_URL"):
        del env[name]
    process = _stack_up(tmp_path / "var", port, env, tmp_path, "--host", "[::1]")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://[::1]:{port}/readyz", timeout=10).status_code == 200:
                    break
            time.sleep(0.2)
        answer = requests.get(f"http://[::1]:{port}/healthz", timeout=10)
        assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    finally:
        code, out, err = _stop(process)
    assert (code, err) == (0, "")
    assert out.startswith(f"gateway:  http://[::1]:{port}  (ready: http://[::1]:{port}/readyz)\n")


def test_a_second_stack_up_on_the_same_var_is_refused_and_the_first_keeps_serving(tmp_path: Path) -> None:
    """Two terminals, one --var, two ports: the second `stack up` started, unlinked the first's gunicorn socket and
    metrics, and once stopped left the first answering 503 to new connections. Now it is refused in one line and
    the first is untouched; after the first stops (even killed), the folder is free again: no stale lock."""
    env = gateway_env(tmp_path)
    for name in ("DICOMGW_STORAGE_URL", "DICOMGW_DATABASE_URL"):
        del env[name]
    var, first_port, second_port = tmp_path / "var", free_port(), free_port()
    first = _stack_up(var, first_port, env, tmp_path)
    try:
        _wait_ready(first_port, first)
        second = _stack_up(var, second_port, env, tmp_path)
        assert _finish(second) == (
            1,
            "",
            f"Error: another stack is running with --var {var}: stop it first (dicom-gateway stack down --var "
            f"{var}), or choose another --var\n",
        )
        assert (var / "run" / "gunicorn.sock").exists()
        with ThreadPoolExecutor(16) as pool:  # new connections to gunicorn, not only NGINX's kept-alive ones
            assert set(pool.map(lambda _: _ready(first_port), range(64))) == {200}
    finally:
        code, _, err = _stop(first)
    assert (code, err) == (0, "")
    again = _stack_up(var, second_port, env, tmp_path)
    _wait_ready(second_port, again)
    assert _stop(again)[0] == 0


def test_stack_up_killed_leaves_nothing_that_blocks_the_next_start(tmp_path: Path) -> None:
    """`stack up` killed outright (kill -9, the OOM killer): NGINX and gunicorn, in sessions of their own, ran on
    without it, and the next `stack up` was "port ... is already in use" until someone found and killed them. Its
    processes now end with it, and the next start on the same folder and port runs."""
    env = gateway_env(tmp_path)
    for name in ("DICOMGW_STORAGE_URL", "DICOMGW_DATABASE_URL"):
        del env[name]
    var, port = tmp_path / "var", free_port()
    first = _stack_up(var, port, env, tmp_path)
    try:
        _wait_ready(port, first)
        first.kill()
        first.communicate(timeout=30)
        deadline = time.monotonic() + 30  # gunicorn's graceful stop takes up to 5 s
        while _processes_under(var) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_under(var) == []
    finally:
        for pid in _processes_under(var):  # what this test's stack left, if it did (NGINX's workers: its group)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
    again = _stack_up(var, port, env, tmp_path)
    _wait_ready(port, again)
    code, out, err = _stop(again)
    assert (code, err) == (0, "")
    assert out.startswith(f"gateway:  http://127.0.0.1:{port}  (ready: http://127.0.0.1:{port}/readyz)\n")


def test_ctrl_c_while_stack_up_starts_prints_no_links_and_the_next_start_runs(tmp_path: Path) -> None:
    """Ctrl-C (or a service manager's SIGTERM) while `stack up` was starting: it went on waiting for readiness,
    printed the links of a stack it then stopped (and seeded it first, without --no-seed). Now the start ends
    there: only `stopped.`, no process left, and the next `stack up` on the same folder and port starts."""
    env = gateway_env(tmp_path)
    for name in ("DICOMGW_STORAGE_URL", "DICOMGW_DATABASE_URL"):
        del env[name]
    var, port = tmp_path / "var", free_port()
    for signum in (signal.SIGINT, signal.SIGTERM):
        process = _stack_up(var, port, env, tmp_path)
        deadline = time.monotonic() + 60
        while not (var / "logs" / "gunicorn.out").exists():  # it is starting: gunicorn has been spawned
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
        process.send_signal(signum)
        out, err = process.communicate(timeout=90)
        assert (process.returncode, out, err) == (0, "stopped.\n", "")
        time.sleep(0.5)
        assert not _processes_under(var)
        (var / "logs" / "gunicorn.out").unlink()
    again = _stack_up(var, port, env, tmp_path)
    _wait_ready(port, again)
    code, out, err = _stop(again)
    assert (code, err) == (0, "")
    assert out.startswith(f"gateway:  http://127.0.0.1:{port}  (ready: http://127.0.0.1:{port}/readyz)\n")


def _handles_sigterm(pid: int) -> bool:
    """Whether the process catches SIGTERM (its SigCgt mask): the first step of the installed command."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def test_a_signal_while_the_command_loads_ends_it_as_one_a_moment_later_does(tmp_path: Path) -> None:
    """The installed `dicom-gateway` takes about half a second to load its commands (pydicom, SQLAlchemy, Flask).
    A Ctrl-C then was a 40-line Python traceback (KeyboardInterrupt inside an import) and a SIGTERM an exit by the
    signal, where `stack up` says `stopped.` for either a moment later. Now `stack up` stops so, and any other
    command ends in silence with the shell's status for the signal."""
    env = gateway_env(tmp_path)
    command = str(Path(sys.executable).with_name("dicom-gateway"))
    var, port = tmp_path / "var", free_port()
    for signum in (signal.SIGINT, signal.SIGTERM):
        for argv, expected in (
            ([command, "stack", "up", "--no-seed", "--port", str(port), "--var", str(var)], (0, "stopped.\n", "")),
            ([command, "retention", "run", "--dry-run"], (128 + signum, "", "")),
        ):
            process = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
            deadline = time.monotonic() + 30
            while not _handles_sigterm(process.pid):  # loading its commands: gateway.cli is imported next
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.001)
            process.send_signal(signum)
            out, err = process.communicate(timeout=90)
            assert (process.returncode, out, err) == expected, (argv[1:3], signum)
            assert not _processes_under(var)
    again = _stack_up(var, port, env, tmp_path)  # nothing left that blocks the next start
    _wait_ready(port, again)
    assert _stop(again)[0] == 0


def test_the_operator_mistakes_a_trial_met_are_one_line_each(tmp_path: Path) -> None:
    """Met trying every command as an operator (session 33). An empty path was read as the current folder
    (`stack up --var ""` made a stack there, `synth ct --out ""` wrote into it); `retention run --every` past what
    a sleep takes, `stack seed --work-dir` naming a file and `upload --tenant` with bytes that are no UTF-8 were
    tracebacks; `keys generate --count 100000000000` ran for ever; `sqlite:///` (SQLite's in-memory database) was
    migrated by `db upgrade`, "successfully", and the stack's workers then told to run `db upgrade`. Each is now one
    line, exit 2 for a flag and 1 for a variable, and nothing is made in the current folder."""
    env = gateway_env(tmp_path)
    work = tmp_path / "here"
    work.mkdir()
    afile = tmp_path / "a-file"
    afile.write_text("x")
    empty = "an empty path names no file or folder"
    for argv, line in (
        (["stack", "up", "--no-seed", "--var", ""], f"Error: Invalid value for '--var': {empty}"),
        (["stack", "status", "--var", ""], f"Error: Invalid value for '--var': {empty}"),
        (["synth", "ct", "--out", ""], f"Error: Invalid value for '--out': {empty}"),
        (["scan", ""], f"Error: Invalid value for 'PATHS...': {empty}"),
        (["audit", "collect", "--log", ""], f"Error: Invalid value for '--log': {empty}"),
        (
            ["retention", "run", "--every", "99999999999"],
            "Error: Invalid value for '--every': 99999999999 is not in the range 0<=x<=2147483647.",
        ),
        (
            ["keys", "generate", "--count", "100000000000"],
            "Error: Invalid value for '--count': 100000000000 is not in the range 1<=x<=1000.",
        ),
        (
            ["stack", "seed", "--url", "http://127.0.0.1:9", "--work-dir", str(afile)],
            f"Error: Invalid value for '--work-dir': Directory '{afile}' is a file.",
        ),
        (
            ["upload", str(afile), "--url", "http://127.0.0.1:9/dicomweb", "--api-key", "k", "--tenant", "t\udcff"],
            "Error: Invalid value for '--tenant': must be UTF-8 text",
        ),
    ):
        code, out, err = _run(argv, env, work)
        assert (code, out, err.strip().splitlines()[-1]) == (2, "", line), (argv, err)
        assert "Traceback" not in err
    code, out, err = _run(["db", "upgrade"], {**env, "DICOMGW_DATABASE_URL": "sqlite:///"}, work)
    assert (code, out, err) == (
        1,
        "",
        "Error: DICOMGW_DATABASE_URL: names no file: write sqlite:///catalog.db (relative to the folder it is run in) "
        "or sqlite:////path/catalog.db\n",
    )
    assert list(work.iterdir()) == []  # nothing was made where the commands ran


def test_audit_collect_once_touches_its_heartbeat(tmp_path: Path) -> None:
    """`--heartbeat` says "after each successful pass", and `retention run` touches its file on a single run, but
    `audit collect` without --follow never made it: a health check reading its age saw a collector that never ran."""
    env = gateway_env(tmp_path)
    assert _run(["db", "upgrade"], env, tmp_path)[0] == 0
    log = tmp_path / "access.log"
    log.write_text("")
    beat = tmp_path / "beat"
    assert _run(["audit", "collect", "--log", str(log), "--heartbeat", str(beat)], env, tmp_path) == (
        0, "0 access rows added\n", ""
    )
    assert beat.exists()
