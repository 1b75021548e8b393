"""Click commands of the PHI area: ``scan`` and the ``hooks`` group (added to ``dicom-gateway``)."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from gateway.dicom.index import read_instance
from gateway.errors import ConfigError, DicomError, StorageUnavailable
from gateway.names import shown_path
from gateway.phi.policy import BASIC, Policy, load_policy
from gateway.phi.scanner import ScanReport, scan_with_values
from gateway.tools.cliparams import GivenPath
from gateway.tools.media_files import files_under
from gateway.tools.upload import collect, skip_repeated


def _files(paths: tuple[Path, ...]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            files = sorted(files_under(path))  # linked folders too, as `upload` walks them
            if not files:  # said, not silent: no output and exit 0 read as "every file clean"
                click.echo(f"no file found under {shown_path(path)}: nothing was scanned", err=True)
            yield from files
        else:
            yield path  # a missing file gives an "unreadable" report, not a usage error


def scan_as_ingest(path: Path, policy: Policy | None) -> ScanReport:
    """The report the upload hooks would make of ``path``: a file ingest refuses as unreadable (truncated, a
    missing UID, a structure pydicom only guesses at) is unreadable here too, with ingest's reason, not a
    report of its PHI (the two disagreed on such files)."""
    try:
        _, dataset = read_instance(path)
    except (DicomError, OSError) as error:
        detail = error.detail if isinstance(error, DicomError) else f"{type(error).__name__}: {error.strerror}"
        return ScanReport(file=shown_path(path), readable=False, error=detail, policy_version=(policy or BASIC).version)
    return scan_with_values(path, policy, (), dataset)[0]


def scan_as_upload(paths: tuple[Path, ...], policy: Policy | None) -> Iterator[ScanReport]:
    """The report of each file as ``upload`` would send it, read by upload's own reader (``collect``): a data set
    without the PS3.10 preamble or File Meta is scanned wrapped, as it is sent; what upload skips (a DICOMDIR, a
    file that is no DICOM, an archive, a second file of an instance) is reported ``skipped`` with upload's reason;
    what upload cannot read is unreadable, with ingest's reason where ingest gives one."""
    version = (policy or BASIC).version
    seen: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="dicomgw-scan-") as wrap_dir:
        for path in _files(paths):
            entry = collect(path, Path(wrap_dir))
            skip_repeated(entry, seen)
            if entry.outcome == "skipped":
                yield ScanReport(file=shown_path(path), skipped=entry.reason, policy_version=version)
                continue
            report = scan_as_ingest(entry.body_path, policy)
            if entry.sent_path is not None:
                entry.sent_path.unlink(missing_ok=True)
                note = "wrapped into a PS3.10 file as upload sends it (the data set had no File Meta or preamble)"
                click.echo(f"{note}: {shown_path(path)}", err=True)
            report.file = shown_path(path)
            if entry.outcome == "failed" and report.readable:  # upload would not send it: never "clean"
                report = ScanReport(file=shown_path(path), readable=False, error=entry.reason, policy_version=version)
            yield report


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=GivenPath(path_type=Path))
@click.option(
    "--policy",
    "policy_file",
    type=GivenPath(exists=True, dir_okay=False, path_type=Path),
    help="PHI policy (TOML): its [deidentify] options and [private] whitelist change what counts as PHI.",
)
@click.pass_context
def scan(ctx: click.Context, paths: tuple[Path, ...], policy_file: Path | None) -> None:
    """Scan DICOM files (folders recurse) for PHI, each as `upload` would send it; print one JSON report per file,
    one per line.

    A data set without its PS3.10 preamble or File Meta is scanned as upload sends it, wrapped (said on stderr);
    what upload skips (a DICOMDIR, a file that is no DICOM, an archive, a second file of an instance) is reported
    with status "skipped" and upload's reason. Exit status: 0 all clean or skipped, 1 PHI found, 2 a file was
    unreadable (the highest wins). A folder holding no file
    is said so on stderr (nothing scanned there: 0 unless another path says otherwise).
    """
    policy: Policy | None = None
    if policy_file is not None:
        try:
            policy = load_policy(policy_file)
        except ConfigError as error:
            raise click.BadParameter(str(error), param_hint="--policy") from None
    worst, scanned = 0, 0
    try:
        for report in scan_as_upload(paths, policy):
            worst, scanned = max(worst, report.exit_code), scanned + 1
            click.echo(report.to_json())
    except KeyboardInterrupt:
        # was click's "Aborted!", exit 1: this command's "PHI found", for files never scanned
        click.echo(f"stopped (Ctrl-C) after {scanned} files: the rest were not scanned, so no verdict", err=True)
        sys.exit(130)
    ctx.exit(worst)


@click.group("hooks")
def hooks() -> None:
    """Upload hooks outside a request: direct-to-bucket uploads under incoming/."""


@hooks.command("run-incoming")
@click.pass_context
def run_incoming_command(ctx: click.Context) -> None:
    """Process every object under incoming/ (PHI hooks, then ingest); print one JSON result per object.

    Exit status 1 if any object failed (it stays under incoming/ for a retry), if storage could not be listed, or
    if an outage stopped the run (storage or the catalog failing for one object: the others stay for the next run).
    Each result is printed as it is made: a run stopped half-way has said what it did.
    """
    from gateway.config import Settings
    from gateway.lambda_handler import make_ingestor
    from gateway.phi.s3event import iter_incoming

    failed = False
    try:
        settings = Settings.from_env()
        for result in iter_incoming(settings, make_ingestor=make_ingestor):
            click.echo(json.dumps(result.to_dict(), sort_keys=True))
            failed = failed or result.status == "failed"
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    except StorageUnavailable as error:  # incoming/ not listed, or an outage stopped the run: one line, no traceback
        raise click.ClickException(error.detail) from None
    ctx.exit(1 if failed else 0)
