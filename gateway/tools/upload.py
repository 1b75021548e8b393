"""``dicom-gateway upload``: a STOW-RS client that streams files, resumes, retries and says what happened.

Flow: collect files (folders recurse; what is no DICOM, archives and DICOMDIRs are skipped with a note; a data set
without the PS3.10 wrapping is wrapped, ``media_files``) → read
each header's UIDs (pydicom, ``stop_before_pixels`` + ``specific_tags``: the pixels are never read) → ask QIDO
which instances the server already has and drop them (so a re-run after a failure sends only what is
missing) → send the rest in ``multipart/related`` batches of about ``--batch-bytes``, ``--concurrency``
requests at a time, streamed from disk with ``Content-Length`` → read the Store Instances Response per
instance.

The resume query is ``GET {root}/studies/{st}/series/{se}/instances?SOPInstanceUID=a,b,...`` (UID list
matching, PS3.18 8.3.4.1), per series: a study-scoped token may read its own series but not the root
``/instances`` listing. If the query fails the files are sent anyway: the server treats an identical
re-upload as a success.

Connection errors and 429/502/503/504 are retried with exponential backoff (``Retry-After`` honoured up to
30 s). Exit code: 0 everything is on the server, 1 some files failed, 2 nothing could be sent (no DICOM found,
or no request got a STOW response), 130 stopped by Ctrl-C. URLs are never printed: they may carry the token.

Over 400 lines on purpose: collect, resume query, batching, retries and the report are one pipeline over the
same per-file records, read top to bottom; a developer tool, not on the service's path.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
import pydicom
import requests
from pydicom.tag import BaseTag, Tag
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from gateway.dicom.index import past_naming_uids
from gateway.dicomweb.multipart import MultipartBody
from gateway.dicomweb.stow_response import (
    PRIVATE_CREATOR,
    TAG_OUTCOME,
    TAG_PRIVATE_CREATOR,
    TAG_REASON_TEXT,
    TAG_SENT_SOP_UID,
    reason_name,
)
from gateway.names import shown_path
from gateway.tools.cliparams import GivenPath
from gateway.tools.media_files import (
    ARCHIVE_NOTES,
    MEDIA_DIRECTORY_SOP_CLASS,
    PREAMBLE,
    files_under,
    kind_of,
    read_bare,
    wrap_part10,
)
from gateway.uids import is_uid

Outcome = Literal["pending", "stored", "present", "failed", "skipped"]
RETRY_STATUSES = frozenset({429, 502, 503, 504})
STOW_STATUSES = frozenset({200, 202, 409})
QIDO_BATCH = 40  # UIDs per QIDO request: ~2.6 KB of query, well inside NGINX's 8 KB request line
MAX_FILES_PER_BATCH = 500
MAX_RETRY_AFTER = 30.0
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
SAME_INSTANCE = "same SOP Instance UID as "  # a repeat's reason, naming the file sent for its instance


@dataclass
class FileEntry:
    path: Path
    size: int
    sop_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    outcome: Outcome = "pending"
    reason: str = ""
    sent_path: Path | None = None  # the PS3.10 file sent in place of ``path`` (a bare data set wrapped)
    has_file_meta: bool = True  # False: ``DICM`` but no group 0002 after it, a data set to wrap

    @property
    def body_path(self) -> Path:
        return self.sent_path or self.path


@dataclass
class UploadOptions:
    root: str
    concurrency: int = 4
    batch_bytes: int = 64 << 20
    token: str | None = None
    api_key: str | None = None
    retries: int = 5
    backoff: float = 0.5
    timeout: float = 600.0
    resume: bool = True
    # the upload context the gateway's PHI policy matches on (README, PHI scanning and data sovereignty): sent as
    # X-DICOMGW-Tenant and X-DICOMGW-Region with every STOW request
    tenant: str | None = None
    region: str | None = None

    def context_headers(self) -> dict[str, bytes]:
        """The policy headers, as UTF-8 (the gateway reads UTF-8, so ``Zürich`` matches the policy's ``Zürich``;
        ``requests`` would send a str as ISO-8859-1 and fail on any other letter)."""
        named = (("X-DICOMGW-Tenant", self.tenant), ("X-DICOMGW-Region", self.region))
        return {name: value.encode() for name, value in named if value is not None}


@dataclass
class UploadReport:
    files: list[FileEntry] = field(default_factory=list)
    responses: int = 0  # requests that got a STOW response (200/202/409)
    interrupted: bool = False  # Ctrl-C: batches not yet started were not sent

    def count(self, outcome: Outcome) -> int:
        return sum(1 for f in self.files if f.outcome == outcome)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        to_send = [f for f in self.files if f.outcome != "skipped"]
        if not to_send:
            return 2
        if any(f.outcome in ("failed", "pending") for f in to_send):
            nothing_went = self.responses == 0 and not any(f.outcome == "present" for f in to_send)
            return 2 if nothing_went else 1
        return 0


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under ``paths`` in a stable order (directories recurse, sorted)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(files_under(path))
        elif path.is_file():
            yield path


def collect(path: Path, wrap_dir: Path) -> FileEntry:
    """What to do with one file of an export: a PS3.10 file is read as it is; a data set without its preamble or
    File Meta is wrapped into a PS3.10 file in ``wrap_dir`` (``media_files``); an archive or anything else is
    skipped; a file that cannot be read has failed (it may be an instance of the export)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(PREAMBLE + 4)
    except OSError as exc:
        return FileEntry(path=path, size=0, outcome="failed", reason=f"cannot read the file ({type(exc).__name__})")
    kind = kind_of(head)
    if kind in ARCHIVE_NOTES:
        return FileEntry(path=path, size=size, outcome="skipped", reason=ARCHIVE_NOTES[kind])
    if kind == "part10":
        entry = read_entry(path)
        if entry.outcome != "pending" or entry.has_file_meta:
            return entry
    bare = read_bare(path)
    if bare is None:
        if kind == "part10":
            return FileEntry(path=path, size=size, outcome="failed", reason="no File Meta and no readable data set")
        return FileEntry(path=path, size=size, outcome="skipped", reason="not a DICOM file")
    handle, name = tempfile.mkstemp(dir=wrap_dir, suffix=".dcm")
    os.close(handle)
    target = Path(name)
    wrap_part10(path, bare, target)
    entry = read_entry(target)
    entry.path, entry.sent_path = path, target
    return entry


NAMING_TAGS: list[BaseTag | int] = [
    Tag(keyword) for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
]


def read_entry(path: Path) -> FileEntry:
    """A ``FileEntry`` with the UIDs from the header; ``outcome="failed"`` if the header is unusable."""
    entry = FileEntry(path=path, size=path.stat().st_size)
    try:
        with open(path, "rb") as fp:
            # up to the UIDs only: sequences nested thousands deep after them raised pydicom's RecursionError, and a
            # file of zero bytes was parsed as millions of elements
            ds = pydicom.filereader.read_partial(fp, stop_when=past_naming_uids, specific_tags=NAMING_TAGS)
    except Exception as exc:  # noqa: BLE001 - a broken file breaks pydicom in any way (zlib.error, RecursionError...):
        # that file has failed; a traceback ended the whole upload before any file was sent
        entry.outcome, entry.reason = "failed", f"unreadable DICOM header ({type(exc).__name__})"
        return entry
    meta_class = ds.file_meta.get("MediaStorageSOPClassUID", "") if ds.file_meta else ""
    if MEDIA_DIRECTORY_SOP_CLASS in (str(meta_class).strip(), str(ds.get("SOPClassUID", "")).strip()):
        entry.outcome, entry.reason = "skipped", "a DICOMDIR, the index of the media, not an instance"
        return entry
    entry.has_file_meta = bool(ds.file_meta)  # one that is there but wrong is the server's to judge, with a reason
    meta_sop = ds.file_meta.get("MediaStorageSOPInstanceUID", "") if ds.file_meta else ""
    entry.sop_uid = str(ds.get("SOPInstanceUID", "") or meta_sop).strip() or None
    entry.study_uid = str(ds.get("StudyInstanceUID", "")).strip() or None
    entry.series_uid = str(ds.get("SeriesInstanceUID", "")).strip() or None
    if not (entry.sop_uid and is_uid(entry.sop_uid)):
        entry.outcome, entry.reason = "failed", "no valid SOP Instance UID in the header"
    return entry


def make_batches(entries: list[FileEntry], batch_bytes: int) -> list[list[FileEntry]]:
    """Consecutive groups of about ``batch_bytes`` (a larger file travels alone)."""
    batches: list[list[FileEntry]] = []
    current: list[FileEntry] = []
    size = 0
    for entry in entries:
        if current and (size + entry.size > batch_bytes or len(current) >= MAX_FILES_PER_BATCH):
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.size
    if current:
        batches.append(current)
    return batches


class StowClient:
    """HTTP side: one ``requests.Session`` per thread, retries, QIDO resume check, STOW batches."""

    def __init__(self, options: UploadOptions, sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.root = options.root.rstrip("/")
        self._local = threading.local()
        self._sleep = sleep

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Accept"] = "application/dicom+json"
            if self.options.api_key:
                session.headers["Authorization"] = f"Bearer {self.options.api_key}"
            if self.options.token:
                session.params = {"token": self.options.token}
            self._local.session = session
        return session

    def request(
        self, method: str, url: str, on_retry: Callable[[], None] | None = None, **kwargs: Any
    ) -> requests.Response:
        """Send with retries on connection errors and 429/502/503/504; the last response or error wins."""
        attempt = 0
        while True:
            try:
                response = self._session().request(method, url, timeout=self.options.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.options.retries or certificate_refusal(exc):  # no retry makes it trusted
                    raise
                delay = self.options.backoff * 2**attempt
            else:
                if response.status_code not in RETRY_STATUSES or attempt >= self.options.retries:
                    return response
                delay = self.options.backoff * 2**attempt
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
                response.close()
            attempt += 1
            if on_retry is not None:
                on_retry()
            self._sleep(delay)

    def already_stored(self, entries: list[FileEntry]) -> set[str]:
        """SOP Instance UIDs among ``entries`` that QIDO says the server has; empty when it cannot tell."""
        by_series: dict[tuple[str, str], list[str]] = {}
        for e in entries:
            if e.sop_uid and e.study_uid and e.series_uid and is_uid(e.study_uid) and is_uid(e.series_uid):
                by_series.setdefault((e.study_uid, e.series_uid), []).append(e.sop_uid)
        found: set[str] = set()
        for (study, series), uids in by_series.items():
            url = f"{self.root}/studies/{study}/series/{series}/instances"
            for start in range(0, len(uids), QIDO_BATCH):
                asked = uids[start : start + QIDO_BATCH]
                try:
                    response = self.request("GET", url, params={"SOPInstanceUID": ",".join(asked)})
                except requests.RequestException:
                    return found
                if response.status_code != 200:
                    continue
                try:
                    datasets = response.json()
                except ValueError:
                    continue
                found.update(uid for uid in _values(datasets, "00080018") if uid in asked)
        return found

    def send_batch(self, batch: list[FileEntry], on_bytes: Callable[[int], None]) -> bool:
        """POST one batch and set each entry's outcome; True if the server answered with a STOW response."""
        sent = 0

        def count(n: int) -> None:
            nonlocal sent
            sent += n
            on_bytes(n)

        def rewind() -> None:  # a retry re-sends the files: take their bytes off the progress bar
            nonlocal sent
            on_bytes(-sent)
            sent = 0

        body = MultipartBody(paths=[e.body_path for e in batch], on_bytes=count)
        try:
            response = self.request(
                "POST",
                f"{self.root}/studies",
                on_retry=rewind,
                data=body,
                headers={"Content-Type": body.content_type, **self.options.context_headers()},
            )
        except requests.RequestException as exc:
            _fail_all(batch, certificate_refusal(exc) or f"connection failed ({type(exc).__name__})")
            return False
        except OSError as exc:
            _fail_all(batch, f"file changed while sending ({type(exc).__name__})")
            return False
        with response:
            if response.status_code not in STOW_STATUSES:
                # a root without its DICOMweb path (`--url http://host:8080`): the server has no such resource
                hint = NOT_A_DICOMWEB_ROOT if response.status_code in (404, 405) else ""
                _fail_all(batch, f"HTTP {response.status_code}{_error_detail(response)}{hint}")
                return False
            try:
                payload = response.json()
            except ValueError:
                _fail_all(batch, f"HTTP {response.status_code} without a DICOM JSON body")
                return False
        apply_stow_response(batch, payload)
        return True


def apply_stow_response(batch: list[FileEntry], payload: Any) -> None:
    """Match the response's Referenced/Failed SOP Sequence items to files by SOP Instance UID."""
    results: dict[str, tuple[Outcome, str]] = {}
    unattributed: list[str] = []
    if isinstance(payload, dict):
        for item in _items(payload, "00081199"):
            # a de-identified instance is stored under a new UID: the item names the one its file was sent with
            uid = _private(item, TAG_SENT_SOP_UID) or _first(item, "00081155")
            if uid:
                duplicate = _private(item, TAG_OUTCOME) == "DUPLICATE"
                results[uid] = ("present" if duplicate else "stored", "")
        for item in _items(payload, "00081198"):
            code = _first(item, "00081197")
            text = _private(item, TAG_REASON_TEXT) or ""
            reason = text or (reason_name(code) if isinstance(code, int) else "no reason given")
            if isinstance(code, int):
                reason = f"{reason} (0x{code:04X})"
            uid = _private(item, TAG_SENT_SOP_UID) or _first(item, "00081155")
            if uid:
                results[uid] = ("failed", reason)
            else:
                unattributed.append(reason)
    for entry in batch:
        if entry.sop_uid in results:
            entry.outcome, entry.reason = results[entry.sop_uid]
        else:
            extra = f"; server reported: {'; '.join(sorted(set(unattributed)))}" if unattributed else ""
            entry.outcome, entry.reason = "failed", f"not acknowledged in the server's response{extra}"


def _items(payload: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    value = payload.get(tag, {}).get("Value", []) if isinstance(payload.get(tag), dict) else []
    return [v for v in value if isinstance(v, dict)]


def _first(dataset: dict[str, Any], tag: str) -> Any:
    element = dataset.get(tag)
    if isinstance(element, dict) and isinstance(element.get("Value"), list) and element["Value"]:
        return element["Value"][0]
    return None


def _private(dataset: dict[str, Any], tag: str) -> str | None:
    if _first(dataset, TAG_PRIVATE_CREATOR) != PRIVATE_CREATOR:
        return None
    value = _first(dataset, tag)
    return value if isinstance(value, str) else None


def _values(datasets: Any, tag: str) -> Iterator[str]:
    if isinstance(datasets, list):
        for ds in datasets:
            if isinstance(ds, dict) and isinstance(value := _first(ds, tag), str):
                yield value


NOT_A_DICOMWEB_ROOT = (
    " (is --url the DICOMweb root? STOW-RS posts to its /studies: this gateway's root ends in /dicomweb,"
    " http://HOST:PORT/dicomweb, a token's in /t/TOKEN/dicomweb)"
)


def _error_detail(response: requests.Response) -> str:
    """``: detail`` from the gateway's ``{"error", "detail"}`` body, if any.

    Never the URL or the exception text of ``requests``: they may hold the token."""
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") or body.get("error") if isinstance(body, dict) else None
    return f": {str(detail)[:200]}" if detail else ""


UNTRUSTED_CERTIFICATE = (
    "the server's TLS certificate is not trusted here: name its CA file in REQUESTS_CA_BUNDLE "
    "(a `stack up --tls` stack's own: VAR/tls/tls.crt)"
)


HOSTNAME_MISMATCH = 62  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, ssl.SSLCertVerificationError.verify_code


def certificate_refusal(exc: BaseException) -> str:
    """What to do when a request failed because this machine does not trust the server's certificate (a
    self-signed one, as `stack up --tls` makes) or the certificate names another host: no retry changes either.
    ``""`` for every other failure."""
    pending: list[object] = [exc]  # requests wraps urllib3's error, which wraps ssl's, as an argument or a reason
    for _ in range(50):
        if not pending:
            return ""
        seen = pending.pop()
        if isinstance(seen, ssl.SSLCertVerificationError):
            if seen.verify_code == HOSTNAME_MISMATCH:  # a CA file would not help: the name in --url is the fault
                why = seen.verify_message
                return f"the server's TLS certificate is for another name ({why}): use its name in --url"
            return UNTRUSTED_CERTIFICATE
        if isinstance(seen, BaseException):
            pending.extend([seen.__cause__, getattr(seen, "reason", None), *seen.args])
    return ""


def _fail_all(batch: list[FileEntry], reason: str) -> None:
    for entry in batch:
        entry.outcome, entry.reason = "failed", reason


def run_upload(
    paths: Iterable[Path],
    options: UploadOptions,
    console: Console | None = None,
    err_console: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> UploadReport:
    """Everything but the exit: collect, resume check, send. Notes and the progress bar go to ``err_console``
    (stderr), the summary tables to ``console`` (stdout)."""
    console = console or Console()
    err_console = err_console or Console(stderr=True)
    report = UploadReport()
    with tempfile.TemporaryDirectory(prefix="dicomgw-upload-") as wrap_dir:
        try:
            collect_all(paths, Path(wrap_dir), report, err_console)
            client = StowClient(options, sleep=sleep)
            send_all(report, client, options, err_console)
            while not report.interrupted and stand_ins(report, err_console):
                send_all(report, client, options, err_console)
        except KeyboardInterrupt:  # reading the files or asking what the server has: no batch had gone out
            report.interrupted = True  # it was click's "Aborted!", exit 1 (some failed), and no summary
            if not report.responses:
                err_console.print("stopped (Ctrl-C) before any file was sent", highlight=False, markup=False)
    if report.interrupted:
        for entry in report.files:
            if entry.outcome == "pending":
                entry.reason = "not sent: the upload was interrupted (Ctrl-C)"
    print_summary(report, console)
    return report


def skip_repeated(entry: FileEntry, seen: dict[str, Path]) -> None:
    """A second file of an instance ``seen`` already holds is skipped, its reason naming the first (``upload``
    sends one file an instance, and ``scan`` judges what ``upload`` sends)."""
    if entry.sop_uid and entry.outcome == "pending":
        if entry.sop_uid in seen:
            entry.outcome, entry.reason = "skipped", f"{SAME_INSTANCE}{shown_path(seen[entry.sop_uid])}"
        else:
            seen[entry.sop_uid] = entry.path


def stand_ins(report: UploadReport, err_console: Console) -> list[FileEntry]:
    """For each instance whose sent file failed (pydicom's ``badVR.dcm`` and ``rtdose.dcm`` share a SOP Instance
    UID), the next file of it that was skipped as a repeat is made pending, to be sent in its place: the instance was
    left unsent, each of those files "skipped" as if it were on the server. Returns them (empty: nothing to send)."""
    files: dict[str, list[FileEntry]] = {}
    for entry in report.files:
        if entry.sop_uid:
            files.setdefault(entry.sop_uid, []).append(entry)
    chosen = []
    for entries in files.values():
        if any(entry.outcome in ("stored", "present", "pending") for entry in entries):
            continue
        failed = [entry for entry in entries if entry.outcome == "failed"]
        waiting = [entry for entry in entries if entry.outcome == "skipped" and entry.reason.startswith(SAME_INSTANCE)]
        if failed and waiting:
            first, *rest = waiting
            first.outcome, first.reason = "pending", ""
            for entry in rest:
                entry.reason = SAME_INSTANCE + shown_path(first.path)
            sent, instead = shown_path(first.path), shown_path(failed[-1].path)
            note = f"sending {sent} in place of {instead}, which failed (same SOP Instance UID)"
            err_console.print(note, style="dim", highlight=False, markup=False, soft_wrap=True)
            chosen.append(first)
    return chosen


def collect_all(paths: Iterable[Path], wrap_dir: Path, report: UploadReport, err_console: Console) -> None:
    seen: dict[str, Path] = {}
    for path in iter_files(paths):
        entry = collect(path, wrap_dir)
        skip_repeated(entry, seen)  # decided before the notes: it was counted as skipped without one
        report.files.append(entry)  # before its note: a Ctrl-C during the note still counts it
        if entry.outcome == "skipped":
            note = f"skipped ({entry.reason}): {shown_path(path)}"
            err_console.print(note, style="dim", highlight=False, markup=False, soft_wrap=True)
        elif entry.sent_path is not None and entry.outcome == "pending":
            note = f"wrapped into a PS3.10 file (the data set had no File Meta or preamble): {shown_path(path)}"
            err_console.print(note, style="dim", highlight=False, markup=False, soft_wrap=True)


class _AmountColumn(ProgressColumn):
    """How far each task of the progress bar is, in its own unit: ``2/3 files`` and ``1.2/3.4 MB``. One column of each
    for both tasks printed the file count as bytes (``1/3 bytes``, ``0.3 bytes/s``) and the bytes as a bare count."""

    def __init__(self) -> None:
        super().__init__()
        self.files, self.bytes = MofNCompleteColumn(), DownloadColumn()

    def render(self, task: Task) -> Text:
        if task.description == "bytes":
            return self.bytes.render(task)
        return self.files.render(task).append(" files")


class _OnlyFor(ProgressColumn):
    """``column`` on the task named ``description`` only (a transfer speed is a speed of bytes, not of files)."""

    def __init__(self, description: str, column: ProgressColumn) -> None:
        super().__init__()
        self.description, self.column = description, column

    def render(self, task: Task) -> RenderableType:
        return self.column.render(task) if task.description == self.description else Text("")


def send_all(report: UploadReport, client: StowClient, options: UploadOptions, err_console: Console) -> None:
    """Resume check, then the batches. Ctrl-C sends no further batch: the ones in flight finish (their answer says
    what is stored, so a re-run sends only the rest) and the summary is printed with exit code 130."""
    pending = [f for f in report.files if f.outcome == "pending"]
    if pending and options.resume:
        present = client.already_stored(pending)
        for entry in pending:
            if entry.sop_uid in present:
                entry.outcome, entry.reason = "present", "already on the server (not re-sent)"
        pending = [f for f in pending if f.outcome == "pending"]
    if not pending:
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        _AmountColumn(),
        _OnlyFor("bytes", TransferSpeedColumn()),
        TimeRemainingColumn(),
    )
    stop = threading.Event()
    with Progress(*columns, console=err_console) as progress:
        files_task = progress.add_task("files", total=len(pending))
        bytes_task = progress.add_task("bytes", total=sum(f.size for f in pending))
        lock = threading.Lock()

        def send(batch: list[FileEntry]) -> None:
            if stop.is_set():
                return
            answered = client.send_batch(batch, lambda n: progress.advance(bytes_task, n))
            with lock:
                report.responses += int(answered)
            progress.advance(files_task, len(batch))

        pool = ThreadPoolExecutor(max_workers=options.concurrency)
        try:
            list(pool.map(send, make_batches(pending, options.batch_bytes)))
        except KeyboardInterrupt:
            stop.set()
            report.interrupted = True  # a second Ctrl-C while the batches in flight finish stops at once
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def print_summary(report: UploadReport, console: Console) -> None:
    table = Table(title="Upload summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    table.add_column("bytes", justify="right")
    for outcome, label in (
        ("stored", "stored"),
        ("present", "already present"),
        ("failed", "failed"),
        ("skipped", "skipped"),
        ("pending", "not sent"),
    ):
        files = [f for f in report.files if f.outcome == outcome]
        if outcome == "pending" and not files:
            continue
        table.add_row(label, str(len(files)), str(sum(f.size for f in files)))
    console.print(table)
    problems = [f for f in report.files if f.outcome in ("failed", "pending")]
    if problems:
        failures = Table(title="Failed files")
        failures.add_column("file", overflow="fold")
        failures.add_column("reason", overflow="fold")
        for f in problems[:100]:
            failures.add_row(shown_path(f.path), f.reason or "not sent")
        if len(problems) > 100:
            failures.add_row(f"... and {len(problems) - 100} more", "")
        console.print(failures)


URL_HINT = "'--url'"


def split_root(root: str, token: str | None) -> tuple[str, str | None]:
    """``--url`` as a DICOMweb root: http(s) with a host. A root that ends in ``?token=T`` (README, Tokens: the query
    transport works on every DICOMweb path) sends ``T`` as ``--token`` does; it was kept in the root, so each
    request went to ``{root}?token=T/studies`` and every file failed (a 405). Any other query or a fragment is no
    root: a usage error. The messages never quote the URL, which may carry the token."""
    parts = urllib.parse.urlsplit(root)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(
            "expected an http:// or https:// DICOMweb root, e.g. https://host/t/TOKEN/dicomweb", param_hint=URL_HINT
        )
    if parts.fragment or root.endswith("#"):
        raise click.BadParameter("a DICOMweb root holds no fragment (#)", param_hint=URL_HINT)
    if parts.query or root.endswith("?"):
        # read raw, as the gateway reads the query token (README, Tokens: `%74oken=` is no token)
        name, _, value = parts.query.partition("=")
        if name != "token" or not value or "&" in value:
            raise click.BadParameter("a DICOMweb root holds no query but ?token=...", param_hint=URL_HINT)
        if token and token != value:
            raise click.BadParameter("its ?token= and --token (or DICOMGW_TOKEN) differ", param_hint=URL_HINT)
        token = value
    return urllib.parse.urlunsplit(parts._replace(query="", fragment="")), token


def context_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--tenant`` / ``--region``: one value the gateway takes as a policy header. A comma is refused there
    (a header sent twice arrives joined by one), a control character is no header text, and an empty value names
    nothing: each is a usage error here rather than a refusal of every file."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("must not be empty", ctx=ctx, param=param)
    if "," in value:
        raise click.BadParameter("one value: no comma", ctx=ctx, param=param)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise click.BadParameter("no control character", ctx=ctx, param=param)
    if any("\udc80" <= c <= "\udcff" for c in value):
        # bytes the shell passed that are no UTF-8 (Python keeps them as surrogates): no header text, and encoding
        # the header failed with a traceback
        raise click.BadParameter("must be UTF-8 text", ctx=ctx, param=param)
    return value.strip()


def check_ca_bundle(root: str) -> None:
    """The CA file an https root is checked against, as requests finds it: one that is not there was an OSError
    raised from inside the first request, a traceback (a relative `REQUESTS_CA_BUNDLE=var/tls/tls.crt` run from
    another folder)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        bundle = os.environ.get(name)
        if bundle:
            if root.startswith("https://") and not os.path.exists(bundle):
                problem = "no such file (the CA file the server's certificate is checked against)"
                raise click.UsageError(f"{name}: {bundle}: {problem}")
            return


@click.command("upload")
@click.argument("paths", nargs=-1, required=True, type=GivenPath(exists=True, path_type=Path))
@click.option("--url", "root", required=True, help="DICOMweb root, e.g. https://host/t/TOKEN/dicomweb.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--batch-bytes", default=64 << 20, show_default=True, type=click.IntRange(1), help="Bytes per request."
)
@click.option("--token", envvar="DICOMGW_TOKEN", help="Token sent as ?token= (env DICOMGW_TOKEN).")
@click.option("--api-key", envvar="DICOMGW_API_KEY", help="Sent as a Bearer token (env DICOMGW_API_KEY).")
@click.option(
    "--tenant",
    callback=context_value,
    help="Sent as X-DICOMGW-Tenant with every upload: the tenant the gateway's PHI policy rules match on.",
)
@click.option(
    "--region",
    callback=context_value,
    help="Sent as X-DICOMGW-Region: the region the files come from (identifiable data goes only to a "
    "destination in it).",
)
@click.option("--retries", default=5, show_default=True, type=click.IntRange(0), help="Retries per request.")
@click.option("--backoff", default=0.5, show_default=True, type=click.FloatRange(0.0), help="First delay, s.")
@click.option(
    "--no-resume",
    is_flag=True,
    help="Send every file: do not ask which instances the server has (resume compares UIDs, not contents).",
)
def upload(
    paths: tuple[Path, ...],
    root: str,
    concurrency: int,
    batch_bytes: int,
    token: str | None,
    api_key: str | None,
    tenant: str | None,
    region: str | None,
    retries: int,
    backoff: float,
    no_resume: bool,
) -> None:
    """Send DICOM files (folders recurse) to a DICOMweb server with STOW-RS.

    Exit code 0 when every DICOM file is on the server, 1 when some failed, 2 when nothing could be sent, 130 when
    Ctrl-C stopped it (the batches in flight finish; a re-run sends the rest)."""
    root, token = split_root(root, token)
    check_ca_bundle(root)
    options = UploadOptions(
        root=root,
        concurrency=concurrency,
        batch_bytes=batch_bytes,
        token=token,
        api_key=api_key,
        tenant=tenant,
        region=region,
        retries=retries,
        backoff=backoff,
        resume=not no_resume,
    )
    report = run_upload(paths, options, console=Console(), err_console=Console(stderr=True))
    raise SystemExit(report.exit_code)
