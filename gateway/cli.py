"""``dicom-gateway``: the command line (stack, tokens, keys, synthetic data, scanning, upload, reconcile)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from gateway import __version__
from gateway.config import (
    check_database_url,
    check_keys,
    check_public_url,
    development_database_url,
    env_int,
    env_list,
    env_value,
    parse_api_keys,
)
from gateway.errors import ConfigError, GatewayError
from gateway.names import shown_path
from gateway.numbers import INT32_MAX
from gateway.tools.cliparams import GivenPath, GivenURL

# click 8.2+ shows a bare group's help by raising this usage error; 8.1 (allowed by pyproject) has no such class
_BARE_GROUP_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _UsageInOneLine(click.ClickException):
    exit_code = 2  # click's code for a usage error


class _Commands(click.Group):
    """A bad option value or a missing argument is one line (``Error: ...``, exit 2), as every start-up failure is:
    click's usage block around it put the message on the last of four lines."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _BARE_GROUP_HELP:
            raise  # a bare group asks for its help: shown as click shows it
        except click.UsageError as error:
            raise _UsageInOneLine(error.format_message()) from None


@click.group(cls=_Commands)
# which version is installed, before `db upgrade` or in a bug report (it was "No such option '--version'")
@click.version_option(__version__, prog_name="dicom-gateway", message="%(prog)s %(version)s")
def main() -> None:
    """dicom-gateway: DICOM in object storage, served over DICOMweb behind time-limited tokens."""


# -- stack -----------------------------------------------------------------------------------------------------


@main.group()
def stack() -> None:
    """Run NGINX + gunicorn on this machine (what `make demo` does)."""


def _storage_folder(url: str) -> str:
    """``--storage file:///PATH``: a file there (or above it) is a usage error naming the flag; it was start-up's
    "DICOMGW_STORAGE_URL: cannot make the folder PATH: File exists", naming a variable the user had not set. What
    else is wrong with a URL, start-up says (``DICOMGW_STORAGE_URL: must start with file:/// or s3://``)."""
    from gateway.startup import not_a_folder
    from gateway.storage.local import LocalStorage

    if url.strip().startswith("file://"):
        try:
            root = LocalStorage(url.strip()).root
        except ValueError:
            return url
        problem = not_a_folder(root)
        if problem:
            raise click.BadParameter(problem)
    return url


@stack.command("up")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port NGINX listens on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address NGINX listens on.")
@click.option(
    "--storage",
    "storage_url",
    default="",
    callback=lambda _ctx, _param, value: _storage_folder(value),
    help="Storage URL (default DICOMGW_STORAGE_URL, else the --var folder's objects/).",
)
@click.option(
    "--database",
    "database_url",
    default="",
    help="Catalog URL (default DICOMGW_DATABASE_URL, else sqlite:/// of the --var folder's catalog.db).",
)
@click.option(
    "--var", "var_dir", default="var", show_default=True, type=GivenPath(file_okay=False, path_type=Path)
)
@click.option("--no-seed", is_flag=True, help="Do not load the synthetic studies.")
@click.option("--tls", is_flag=True, help="Serve HTTPS with HTTP/2 on a generated self-signed certificate.")
@click.option(
    "--wait",
    default=30,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="Seconds to wait for gunicorn to start, then for /readyz, before giving up.",
)
def stack_up(
    port: int, host: str, storage_url: str, database_url: str, var_dir: Path, no_seed: bool, tls: bool, wait: int
) -> None:
    """Start the stack, seed synthetic studies, print the URLs, and run until Ctrl-C."""
    from gateway.console import interrupted
    from gateway.tools.seed import seed_demo
    from gateway.tools.stack import PRIVATE_UMASK, Stack, StackError, StartInterrupted

    os.umask(PRIVATE_UMASK)  # README, "Private at rest": the --var folder and all in it (the seed too) are the user's

    passthrough = {k: v for k, v in os.environ.items() if k.startswith("DICOMGW_") or k == "AWS_ENDPOINT_URL"}
    stop = threading.Event()
    crashed = False

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if interrupted.is_set():  # one that came while the commands loaded (gateway/console.py)
        stop.set()
    try:
        the_stack = Stack(
            var_dir,
            port=port,
            host=host,
            storage_url=storage_url,
            database_url=database_url,
            tls=tls,
            extra_env=passthrough,
            interrupt=stop,
            die_with_parent=True,
        )
        the_stack.start(timeout=wait)
    except StartInterrupted:  # Ctrl-C or SIGTERM before it was ready: everything it started is stopped
        click.echo("stopped.")
        return
    except (StackError, OSError) as error:  # one line: a port in use, a bad setting, an unwritable --var
        raise click.ClickException(str(error)) from None
    try:
        click.echo(f"gateway:  {the_stack.url}  (ready: {the_stack.url}/readyz)")
        if not no_seed and not stop.is_set():  # seeding a stack told to stop took seconds more
            try:
                urls = seed_demo(the_stack)
            except StackError as error:
                raise click.ClickException(str(error)) from None
            # a link that answers 404 is worse than none: say what builds the viewer instead
            built = (the_stack.viewer_root / "index.html").is_file()
            if built:
                click.echo(f"viewer:   {urls['viewer_url']}")
            else:
                click.echo(f"viewer:   not built: {the_stack.viewer_root} has no index.html (make viewer; needs npm)")
            click.echo(f"dicomweb: {urls['dicomweb_root']}")
            if built:
                click.echo(f"slide:    {urls['wsi_viewer_url']}")
        api_key = (
            "the first of DICOMGW_API_KEYS"
            if the_stack.keys_from_environment("DICOMGW_API_KEYS")
            else str(the_stack.var_dir / "api.key")
        )
        click.echo(f"api key:  {api_key}  (logs: {the_stack.var_dir / 'logs'})")
        click.echo("Ctrl-C stops everything.")
        while not stop.is_set():
            restarted, dead = the_stack.supervise()
            for name in restarted:
                click.echo(f"{name} exited unexpectedly; started it again.", err=True)
            for name in dead:
                click.echo(f"{name} exited unexpectedly; stopping.", err=True)
                crashed = True
                stop.set()
            stop.wait(1.0)
    finally:
        the_stack.stop()
        click.echo("stopped.")
    if crashed:  # a failure, not Ctrl-C: a service manager's on-failure restart (systemd, compose) must see it
        raise SystemExit(1)


@stack.command("down")
@click.option(
    "--var", "var_dir", default="var", show_default=True, type=GivenPath(file_okay=False, path_type=Path)
)
@click.option("--wait", default=60, show_default=True, type=click.IntRange(1, 3600), help="Seconds to wait for it.")
def stack_down(var_dir: Path, wait: int) -> None:
    """Stop the stack `stack up --var DIR` runs (from another terminal or a script), as Ctrl-C in its own does."""
    from gateway.tools.stack import StackError, stop_running

    try:
        stopped = stop_running(var_dir, timeout=wait)
    except StackError as error:
        raise click.ClickException(str(error)) from None
    if stopped is None:
        click.echo(f"no stack is running with --var {var_dir}: nothing to stop")
    else:
        click.echo(f"stopped the stack with --var {var_dir} (pid {stopped['pid']}, {stopped['url']})")


@stack.command("status")
@click.option(
    "--var", "var_dir", default="var", show_default=True, type=GivenPath(file_okay=False, path_type=Path)
)
def stack_status(var_dir: Path) -> None:
    """Whether a stack runs with --var DIR: exit 0 and its pid and URL, or exit 3 (not running, as LSB's status)."""
    from gateway.tools.stack import running

    found = running(var_dir)
    if found is None:
        click.echo(f"not running: no stack runs with --var {var_dir}")
        sys.exit(3)
    if not found:
        click.echo(f"running with --var {var_dir} (an older version: its process is not recorded)")
    else:
        click.echo(f"running with --var {var_dir}: pid {found['pid']}, {found['url']}")


@stack.command("seed")
@click.option("--url", "url", required=True, type=GivenURL(), help="The gateway's public URL (through NGINX).")
@click.option("--work-dir", default="var", show_default=True, type=GivenPath(file_okay=False, path_type=Path))
def stack_seed(url: str, work_dir: Path) -> None:
    """Seed a running gateway (docker compose) with the synthetic studies; print the URLs. API key from
    DICOMGW_API_KEYS (the first one)."""
    from gateway.tools.seed import Target, seed_demo
    from gateway.tools.stack import StackError

    try:  # the printed links start with it, as with DICOMGW_PUBLIC_URL (`notaurl` was a requests traceback's text)
        url = check_public_url(url)
    except ConfigError as error:
        raise click.BadParameter(error.problem, param_hint="--url") from None
    try:
        keys = parse_api_keys(",".join(env_list("API_KEYS")))
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if not keys:
        raise click.ClickException("DICOMGW_API_KEYS is not set")
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        urls = seed_demo(Target(url, keys[0].secret, work_dir))
    except StackError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"gateway:  {url}")
    click.echo(f"viewer:   {urls['viewer_url']}")
    click.echo(f"dicomweb: {urls['dicomweb_root']}")
    click.echo(f"slide:    {urls['wsi_viewer_url']}")


# -- tokens and keys -------------------------------------------------------------------------------------------


def _signing_keys(var_dir: Path) -> tuple[str, ...]:
    """DICOMGW_SIGNING_KEYS, else the key `stack up --var DIR` generated in DIR (the same default, ./var)."""
    stored = var_dir / "signing.key"
    try:  # a value in quotes is refused here as the gateway refuses it (it was a traceback)
        keys = env_list("SIGNING_KEYS")
        if not keys and stored.exists():
            keys = env_list("SIGNING_KEYS", {"DICOMGW_SIGNING_KEYS": stored.read_text().strip()})
        if not keys:
            raise click.ClickException(f"DICOMGW_SIGNING_KEYS is not set (and no {stored})")
        # as the gateway checks them: a 5-character key signed tokens no gateway could have been started with
        return check_keys("SIGNING_KEYS", keys)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


@main.group()
def token() -> None:
    """Tokens for viewers and uploaders."""


@token.command("issue")
@click.option("--study", "studies", multiple=True, required=True, help="Study Instance UID (repeatable).")
@click.option("--series", "series", multiple=True, help="Series Instance UID (repeatable; one study only).")
@click.option("--action", "action", type=click.Choice(["read", "write"]), default="read", show_default=True)
@click.option(
    "--ttl", type=int, default=None, help="Lifetime in seconds (at most DICOMGW_TOKEN_MAX_TTL; a longer one: refused)."
)
@click.option("--sub", default="cli", show_default=True, help="Who the token is for (audit log).")
@click.option(
    "--url",
    "base_url",
    default=None,
    type=GivenURL(),
    help="Public base URL (default DICOMGW_PUBLIC_URL, else the URL of the stack running with --var, else "
    "http://127.0.0.1:8080).",
)
@click.option(
    "--var",
    "var_dir",
    default="var",
    show_default=True,
    type=GivenPath(path_type=Path),
    help="The folder `stack up --var` uses: its signing.key signs when DICOMGW_SIGNING_KEYS is unset, and the "
    "URLs are on the stack running there when neither --url nor DICOMGW_PUBLIC_URL is given.",
)
def token_issue(
    studies: tuple[str, ...],
    series: tuple[str, ...],
    action: str,
    ttl: int | None,
    sub: str,
    base_url: str | None,
    var_dir: Path,
) -> None:
    """Print JSON: token, expires_at, jti, dicomweb_root, viewer_url."""
    from gateway.tokens import TokenService
    from gateway.tools.stack import running
    from gateway.views.api import iso, token_urls

    try:
        max_ttl, default_ttl = env_int("TOKEN_MAX_TTL"), env_int("TOKEN_DEFAULT_TTL")
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    service = TokenService(_signing_keys(var_dir), max_ttl, min(default_ttl, max_ttl))
    actions = ["read"] if action == "read" else ["read", "write"]
    try:
        issued = service.issue(
            sub=sub, studies=list(studies), series=list(series) or None, actions=actions, ttl=ttl
        )
    except GatewayError as error:
        # every value the token rules judge came from a flag: a usage error naming it (exit 2), as click's own
        # checks of --action and a --ttl that is no number are (it was exit 1, naming the API's field: "ttl ...")
        raise click.BadParameter(error.detail, param_hint=_token_flags(error.detail)) from None
    try:  # --url prefixes the printed URLs as DICOMGW_PUBLIC_URL does, so it is checked as that is
        given = check_public_url(base_url or "")
    except ConfigError as error:
        raise click.BadParameter(error.problem, param_hint="--url") from None
    try:  # and so is the variable itself (a user:pass@ in it went into every printed URL)
        base = given or check_public_url(env_value("PUBLIC_URL"))
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    # the stack whose key signs is where the token works (`stack up --port 9000` got links on :8080 that failed)
    base = base or (running(var_dir) or {}).get("url") or "http://127.0.0.1:8080"
    payload = {
        "token": issued.token,
        "expires_at": iso(issued.claims.expires_at),
        "jti": issued.claims.jti,
        **token_urls(issued.token, studies[0], base),
    }
    click.echo(json.dumps(payload, indent=2))


# The token rules' refusals name the API's field first (gateway/tokens.py): the flag of `token issue` that gave it.
_TOKEN_FIELDS = (
    ("sub ", ["--sub"]),
    ("studies", ["--study"]),
    ("at most 100 studies", ["--study"]),
    ("series", ["--series"]),
    ("a series-scoped", ["--series"]),
    ("ttl ", ["--ttl"]),
)


def _token_flags(detail: str) -> list[str]:
    return next((flags for start, flags in _TOKEN_FIELDS if detail.startswith(start)), ["--study", "--series"])


@main.group()
def keys() -> None:
    """Signing and API keys."""


@keys.command("generate")
@click.option(
    "--count", default=1, show_default=True, type=click.IntRange(1, 1000), help="How many keys to print (1-1,000)."
)
def keys_generate(count: int) -> None:
    """Print new random keys (64 URL-safe characters), one per line, for DICOMGW_SIGNING_KEYS or _API_KEYS."""
    for _ in range(count):
        click.echo(secrets.token_urlsafe(48))


# -- operations -------------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """The catalog database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Validate the settings, migrate the catalog to this version and make a missing local storage folder, once,
    before the workers start (what `stack up` and the container's gunicorn do themselves)."""
    from gateway.startup import StartupError, check_settings, create_storage, migrate

    try:
        settings = check_settings()
        revision = migrate(settings)
        create_storage(settings)
    except StartupError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"catalog schema at revision {revision}")


def _writable_heartbeat(path: Path | None) -> Path | None:
    """``--heartbeat``'s folder, checked before the first run: a folder that does not exist (a volume not mounted)
    was a traceback once a run had succeeded (a retention run after removing studies), and compose restarted it into
    the same end, never healthy."""
    if path is not None:
        folder = path.parent
        if not folder.is_dir():
            raise click.BadParameter(f"{path}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise click.BadParameter(f"{path}: this user cannot write in {folder}")
    return path


@main.group()
def audit() -> None:
    """The access audit trail (README, "Access audit")."""


@audit.command("collect")
@click.option(
    "--log",
    "log_path",
    envvar="DICOMGW_ACCESS_LOG",
    required=True,
    type=GivenPath(path_type=Path, dir_okay=False),
    help="NGINX's JSON access log (the template's DICOMGW_ACCESS_LOG).",
)
@click.option("--follow", is_flag=True, help="Keep collecting every DICOMGW_AUDIT_COLLECT_SECONDS until stopped.")
@click.option("--echo", is_flag=True, help="Also copy each line read to stdout (the container's log driver).")
@click.option(
    "--heartbeat",
    type=GivenPath(path_type=Path, dir_okay=False),
    default=None,
    callback=lambda _ctx, _param, value: _writable_heartbeat(value),
    help="Touch this file after each successful pass (a container health check reads its age).",
)
def audit_collect(log_path: Path, follow: bool, echo: bool, heartbeat: Path | None) -> None:
    """Load new lines of NGINX's access log into the catalog's audit trail and apply the retention."""
    from gateway.accesslog import Tally, collect, follow_log, unreadable_note
    from gateway.catalog import Catalog

    try:
        database = env_value("DATABASE_URL")
        if not database and env_value("MODE") == "development":
            database = development_database_url()  # README, DICOMGW_MODE: as every other command finds it
        if not database:
            raise click.ClickException("DICOMGW_DATABASE_URL: is required but not set")
        check_database_url(database)  # as the gateway checks it: --follow retried a URL that can never open
        retention = env_int("AUDIT_RETENTION_DAYS")
        interval = env_int("AUDIT_COLLECT_SECONDS")
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    shown = shown_path(log_path)  # a byte of its name that is no UTF-8 as \xff
    if not follow and not log_path.exists():
        # a mistyped path loaded nothing and said "0 access rows added", exit 0; --follow waits for the file
        raise click.BadParameter(f"{shown}: no such file", param_hint="--log")
    catalog = Catalog(database)
    try:
        if not follow:
            try:
                # a catalog never migrated is told to run `db upgrade` as the workers tell it, and no SQLite file
                # is made (the first write made an empty one and said "catalog unavailable (OperationalError)")
                catalog.require_current_schema(then="before collecting")
                tally = Tally()
                added = collect(catalog, log_path, retention, echo=echo, tally=tally)
            except ConfigError as error:
                raise click.ClickException(str(error)) from None
            except GatewayError as error:  # the catalog unreachable: one line, as reconcile says it (was a traceback)
                raise click.ClickException(f"{error.code}: {error.detail}") from None
            except OSError as error:  # the log unreadable (permissions): one line, not a traceback
                raise click.ClickException(f"{shown}: {error.strerror or type(error).__name__}") from None
            # a file that is no access log of the gateway (a text file, NGINX's default format) loaded 0 rows without
            # a word: the unreadable lines are counted (never shown), and a pass that read no other line fails
            if tally.unreadable and tally.unreadable == tally.lines:
                raise click.ClickException(
                    f"--log {shown}: {unreadable_note(tally)}: is it the gateway's NGINX access log?"
                )
            if tally.unreadable:
                click.echo(f"dicom-gateway audit collect: {unreadable_note(tally)}", err=True)
            if heartbeat is not None:  # a pass succeeded, as with --follow (it was never touched without it)
                heartbeat.touch()
            click.echo(f"{added} access rows added", err=echo)
            return
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        follow_log(catalog, log_path, retention, interval, stop, echo=echo, heartbeat=heartbeat)
    finally:
        catalog.close()


@main.command()
@click.option("--dry-run", is_flag=True, help="Only report, exit 1 if anything is found (the default).")
@click.option("--repair", is_flag=True, help="Finish interrupted deletions, register or delete orphans.")
def reconcile(dry_run: bool, repair: bool) -> None:
    """Find stored objects without a catalog row (a crash between store and commit), upload reservations left
    by a crashed worker and deletions a crash interrupted, and repair them."""
    from gateway.config import Settings
    from gateway.reconcile import reconcile as run

    if dry_run and repair:  # one option --repair/--dry-run let the last one win, silently
        raise click.UsageError("--dry-run and --repair cannot be used together")
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    try:
        report = run(settings, repair=repair)
    except ConfigError as error:  # a catalog behind this version: `db upgrade` first
        raise click.ClickException(str(error)) from None
    except GatewayError as error:  # the catalog or storage unreachable: one line, as retention says it
        raise click.ClickException(f"{error.code}: {error.detail}") from None
    click.echo(json.dumps(report, indent=2))
    unrepaired = report["orphans"] or report["stale_reservations"] or report["unfinished_deletions"]
    sys.exit(0 if repair or not unrepaired else 1)


@main.group()
def retention() -> None:
    """Retention: remove instances older than the policy file's [retention] section allows."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option(
    "--every",
    type=click.IntRange(0, INT32_MAX),  # as every other count: a longer sleep was an OverflowError traceback
    default=0,
    help="Run again every this many seconds, for ever (docker-compose's retention service); 0: once.",
)
@click.option(
    "--heartbeat",
    type=GivenPath(dir_okay=False, path_type=Path),
    callback=lambda _ctx, _param, value: _writable_heartbeat(value),
    help="Touched after each good run.",
)
def retention_run(dry_run: bool, every: int, heartbeat: Path | None) -> None:
    """Apply [retention] (docker-compose and the Terraform schedule run this regularly)."""
    import time

    from gateway.config import Settings
    from gateway.errors import GatewayError
    from gateway.retention import run

    under_way = False
    try:
        while True:
            under_way = True
            try:
                report = run(Settings.from_env(), dry_run=dry_run)
            except ConfigError as error:
                raise click.ClickException(str(error)) from None
            except GatewayError as error:  # catalog or storage unreachable: the next round retries
                if not every:
                    raise click.ClickException(f"{error.code}: {error.detail}") from None
                click.echo(json.dumps({"error": error.code, "detail": error.detail}), err=True)
            else:
                click.echo(json.dumps(report, indent=2))
                if heartbeat is not None:
                    heartbeat.touch()
            under_way = False
            if not every:
                return
            time.sleep(every)
    except KeyboardInterrupt:  # was click's "Aborted!", exit 1: in a run, with studies hidden and their objects there
        if under_way:
            click.echo("stopped (Ctrl-C): the next `retention run` finishes the deletions this one began", err=True)
        else:  # between two runs, most of --every's time
            click.echo("stopped (Ctrl-C) between runs: nothing was under way", err=True)
        sys.exit(130)


def _add_optional_commands() -> None:
    """Commands that live next to their feature's code."""
    from gateway.phi.cli import hooks, scan
    from gateway.tools.synth import synth
    from gateway.tools.upload import upload

    main.add_command(synth)
    main.add_command(scan)
    main.add_command(hooks)
    main.add_command(upload)


_add_optional_commands()
if __name__ == "__main__":
    main()
