"""The access audit collector: NGINX's JSON access log (``log_format dgw_json``) into the catalog's ``access`` table.

Why NGINX's log and not Python: NGINX caches auth decisions and read plans, so many authorised reads never reach
Python, while NGINX logs every request it answers, with the decision's ``sub``, ``jti`` and transport (``via``) and
the path already masked. The collector reads complete lines from where it stopped (the position is committed with
the rows, so a restart neither loses nor repeats a line), keeps DICOMweb requests only, stores what they name
(study, series, instance, action; never the query, whose matching values can be PHI), and deletes rows older than
the retention. ``dicom-gateway audit collect`` runs it: beside NGINX in ``stack up``, as a compose service and as a
sidecar of the ECS task, each sharing the log file with NGINX (docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

import orjson

from gateway.catalog import Catalog
from gateway.catalog.access import ACCESS_FIELDS
from gateway.names import shown_path
from gateway.uids import is_uid

# One transaction per batch of complete lines read at once (~1,700 lines of NGINX's format per MiB): a busy log is
# loaded in few commits, and a batch holds SQLite's write lock for a few milliseconds only.
BATCH_BYTES = 1 << 20
_DICOMWEB = re.compile(r"^(?:/t/\*\*\*)?/dicomweb(?P<path>/[^?]*)?(?:\?(?P<query>.*))?$")
_LEVELS = re.compile(
    r"^/studies/(?P<study>[0-9.]+)(?:/series/(?P<series>[0-9.]+)(?:/instances/(?P<sop>[0-9.]+))?)?(?:/(?P<tail>.*))?$"
)
# A GET/HEAD/DELETE below a study (a URI without a newline, so "." and "$" of the two above need no care): the
# levels and the first segment after them, as _DICOMWEB then _LEVELS find them.
_BELOW_STUDY = re.compile(
    r"(?:/t/\*\*\*)?/dicomweb/studies/([0-9.]+)(?:/series/([0-9.]+)(?:/instances/([0-9.]+))?)?(?:/([^?/]*)[^?]*)?(?:\?.*)?"
)
# the last named resource of a path → the action recorded ("retrieve" when the path names a study, series or
# instance and nothing after it)
_TAILS = {"metadata": "metadata", "rendered": "rendered", "thumbnail": "thumbnail", "series": "search",
          "instances": "search", "frames": "frames", "bulkdata": "bulkdata"}  # fmt: skip


def access_row(line: str) -> dict[str, Any] | None:
    """One log line → one audit row, or None for lines that are no DICOMweb request (or no JSON). The reference
    reading: the collector takes NGINX's own lines by ``_fast_row``, which must agree with it, and every other line
    by this."""
    return _reference_row(line) or None


def _reference_row(line: str) -> dict[str, Any] | Literal[False] | None:
    """``access_row``, telling the lines it skips apart: None for a line of the log that is no DICOMweb request (or a
    blank one), False for an unreadable one, which is no line of the gateway's access log (not a JSON object naming a
    ``uri``; a DICOMweb request's line whose time, status or size does not read: a damaged line)."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python reads
        return None if not line.strip() else False
    if not isinstance(entry, dict) or "uri" not in entry:
        return False
    if entry.get("method") == "OPTIONS":
        return None
    found = _DICOMWEB.match(str(entry.get("uri", "")))
    if found is None:
        return None
    action, study, series, sop = _what(entry.get("method", ""), found.group("path") or "/", found.group("query"))
    if study is None and is_uid(str(entry.get("study", ""))):
        study = str(entry["study"])
    try:
        at = int(datetime.fromisoformat(str(entry["time"])).timestamp())
        status = int(entry["status"])
        size = int(entry.get("bytes") or 0)
    except (KeyError, ValueError, TypeError, OverflowError):
        return False
    return {
        "at": at,
        "remote": _text(entry.get("remote", ""), 64),
        "method": _text(entry.get("method", ""), 16),
        "action": action,
        "study_uid": study,
        "series_uid": series,
        "sop_uid": sop,
        "sub": _text(entry.get("sub", ""), 256),
        "jti": _text(entry.get("jti", ""), 256),
        "via": _text(entry.get("via", ""), 64),
        "status": status,
        "bytes": size,
    }


def _text(value: Any, limit: int) -> str:
    """A field as stored text: a JSON escape of a lone surrogate (a damaged line) is no UTF-8 PostgreSQL would take."""
    text = str(value)[:limit]
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


class _Unusual(Exception):
    """A line the fast path does not read (not orjson's JSON, or a field of another type than NGINX writes)."""


# the fields a row takes, and their types in NGINX's lines
_FIELDS = operator.itemgetter("method", "uri", "time", "status", "remote", "sub", "jti", "via", "study", "bytes")
_TYPES = (str, str, str, int, str, str, str, str, str, int)
_TIMES: dict[str, int] = {}  # $time_iso8601 → epoch seconds: the lines of one second share their time


def _fast_row(raw: bytes) -> tuple[Any, ...] | Literal[False] | None:
    """``_reference_row`` for a line as NGINX writes it (every field read present, a string, ``status`` and ``bytes``
    integers, no newline in ``uri``), as a tuple of ``ACCESS_FIELDS``: parsed with orjson, the fields taken and
    type-checked at once, the time parsed once per second, one regular expression for a read below a study.
    Raises ``_Unusual`` for any other line, which ``_reference_row`` then reads: the standard library's JSON (orjson
    refuses ``NaN``, lone surrogates and invalid UTF-8, and reads an integer beyond 64 bits as a float: such a value
    is no ``int`` here) and its conversions, so both store the same row (tests/unit/test_accesslog_rows.py pins
    them)."""
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Unusual from None
    if type(entry) is not dict:
        return False  # the standard library reads no object either
    try:
        fields = _FIELDS(entry)
    except KeyError:
        raise _Unusual from None
    if tuple(map(type, fields)) != _TYPES:
        raise _Unusual
    method, uri, moment, status, remote, sub, jti, via, study, size = fields
    if "\n" in uri:
        raise _Unusual
    if method == "OPTIONS":
        return None
    below = _BELOW_STUDY.fullmatch(uri) if method != "POST" else None
    if below is not None:  # what _what finds for these, without its second match
        study_uid, series, sop, tail = below.groups()
        action = _TAILS.get(tail, "other") if tail else _whole(method)
    else:
        found = _DICOMWEB.match(uri)
        if found is None:
            return None
        action, study_uid, series, sop = _what(method, found.group("path") or "/", found.group("query"))
        if study_uid is None and is_uid(study):
            study_uid = study
    at = _TIMES.get(moment)
    if at is None:
        try:
            at = int(datetime.fromisoformat(moment).timestamp())
        except ValueError:
            return False
        if len(_TIMES) >= 4096:
            _TIMES.clear()
        _TIMES[moment] = at
    return (at, remote[:64], method[:16], action, study_uid, series, sop, sub[:256], jti[:256], via[:64], status,
            size)  # fmt: skip


def _row(raw: bytes) -> tuple[Any, ...] | None:
    """One complete line (without its newline) → the row the collector stores, a tuple of ``ACCESS_FIELDS``."""
    return _read(raw) or None


def _read(raw: bytes) -> tuple[Any, ...] | Literal[False] | None:
    """``_row``, telling the lines it skips apart as ``_reference_row`` does (False: unreadable)."""
    try:
        row = _fast_row(raw)
    except _Unusual:
        found = _reference_row(raw.decode("utf-8", errors="replace"))
        if found is None or found is False:
            return found
        row = tuple(found[name] for name in ACCESS_FIELDS)
    if row is None or row is False:
        return row
    stored = _storable(row)
    return False if stored is None else stored  # a number beyond its column: a damaged line


_INT32 = 1 << 31  # access.status is an INTEGER column
_INT64 = 1 << 63
_UID_MAX = 64  # PS3.5 9.1, the width of the catalog's UID columns


def _storable(row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The row as every backend stores it. A path level longer than a UID (anyone can ask for
    ``/studies/<70 digits>``) is not one, so it is left out (PostgreSQL refuses it in a UID column, and the refused
    batch would stop the collector at that line for good); a number beyond its column (a damaged line: NGINX never
    writes one) drops the line; a NUL character, which PostgreSQL's text refuses, becomes U+FFFD. The position
    still moves past it: no line can stop the audit trail."""
    at, remote, method, action, study, series, sop, sub, jti, via, status, size = row
    if not (-_INT32 <= status < _INT32 and -_INT64 <= size < _INT64):
        return None
    if "\x00" in remote or "\x00" in method or "\x00" in sub or "\x00" in jti or "\x00" in via:
        remote, method, sub, jti, via = (text.replace("\x00", "\ufffd") for text in (remote, method, sub, jti, via))
        row = (at, remote, method, action, study, series, sop, sub, jti, via, status, size)
    if (study and len(study) > _UID_MAX) or (series and len(series) > _UID_MAX) or (sop and len(sop) > _UID_MAX):
        study, series, sop = (uid if uid and len(uid) <= _UID_MAX else None for uid in (study, series, sop))
        return (at, remote, method, action, study, series, sop, sub, jti, via, status, size)
    return row


def _what(method: str, path: str, query: str | None) -> tuple[str, str | None, str | None, str | None]:
    if method == "POST":
        levels = _LEVELS.match(path)
        return "store", levels.group("study") if levels else None, None, None
    if path.rstrip("/") in ("", "/studies", "/series", "/instances"):
        return "search", None, None, None
    if path == "/wado":
        params = parse_qs(query or "")
        uids = [(params.get(name) or [""])[0] for name in ("studyUID", "seriesUID", "objectUID")]
        study, series, sop = (uid if is_uid(uid) else None for uid in uids)
        return "wado-uri", study, series, sop
    levels = _LEVELS.match(path)
    if levels is None:
        return "other", None, None, None
    tail = (levels.group("tail") or "").split("/")[0]
    return _TAILS.get(tail, _whole(method) if not tail else "other"), levels["study"], levels["series"], levels["sop"]


def _whole(method: str) -> str:
    """The action on a study, series or instance itself: a DELETE removes it, anything else retrieves it."""
    return "delete" if method == "DELETE" else "retrieve"


def _file_id(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}"


@dataclass
class Tally:
    """What passes read: complete lines, and how many of them were unreadable (no line of the gateway's JSON access
    log: ``_reference_row``). Counted only: a line is never shown, since it may hold PHI or a token."""

    lines: int = 0
    unreadable: int = 0


def _batches(
    handle: Any, position: int, echo: bool, tally: Tally | None = None
) -> Iterator[tuple[list[tuple[Any, ...]], int]]:
    """(rows, position after them) per batch of complete lines; a line still being written waits for next time.
    ``echo``: each line also goes to stdout, so the log file on a shared volume does not take the access log away
    from the container's log driver (compose, CloudWatch). ``tally`` counts the lines read and the unreadable."""
    handle.seek(position)
    start: list[bytes] = []  # the start of a line longer than a batch
    while chunk := handle.read(BATCH_BYTES):
        end = chunk.rfind(b"\n") + 1
        if not end:
            start.append(chunk)
            continue
        complete = b"".join((*start, chunk[:end])) if start else chunk[:end]
        start = [chunk[end:]] if end < len(chunk) else []
        if echo:
            sys.stdout.buffer.write(complete)
            sys.stdout.flush()
        lines = complete.split(b"\n")
        lines.pop()  # the empty text after the last newline
        position += len(complete)
        read = list(map(_read, lines))
        if tally is not None:
            tally.lines += len(read)
            tally.unreadable += read.count(False)  # a row is a tuple or None: only an unreadable line is False
        yield [row for row in read if row], position


# How long a rotated log is still read after it last grew: NGINX's workers write to the old file until each has
# reopened the log (its master creates the new file first; logrotate's ``create`` even before NGINX is told).
ROTATED_GRACE_SECONDS = 30.0


class Held:
    """The log file a following collector keeps open between passes. When the log is rotated (renamed away, a new
    file under its name), this handle still reads the old file: the lines NGINX wrote to it after the last pass are
    loaded before the new file's, and the old file stays open and is read on every pass until it has not grown for
    ``ROTATED_GRACE_SECONDS``, for the lines NGINX's workers write to it before they reopen the log."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.rotated: Any = None  # the old file after a rotation, read from ``rotated_position``
        self.rotated_position = 0
        self.rotated_grew = 0.0  # time.monotonic() when it last gave a line

    def take(self, handle: Any) -> None:
        if self.handle is not None and self.handle is not handle:
            self.handle.close()
        self.handle = handle

    def rotate(self, position: int) -> None:
        """The held file was renamed away, and read up to ``position``: keep reading it for a while."""
        self.drop_rotated()
        self.rotated, self.rotated_position, self.rotated_grew = self.handle, position, time.monotonic()
        self.handle = None

    def drop_rotated(self) -> None:
        if self.rotated is not None:
            self.rotated.close()
        self.rotated = None

    def close(self) -> None:
        self.take(None)
        self.drop_rotated()


def collect(
    catalog: Catalog,
    log: Path,
    retention_days: int,
    now: float | None = None,
    echo: bool = False,
    held: Held | None = None,
    tally: Tally | None = None,
) -> int:
    """One pass: load the new complete lines of ``log``, then apply the retention. Returns the rows added. The
    position is kept per host and path: every ECS task's sidecar reads its own NGINX's log into one catalog.
    ``held`` (``follow_log``): the file stays open between passes, so a rotated log's last lines are loaded.
    ``tally``: the lines read and those skipped as unreadable are added to it."""
    source = f"{socket.gethostname()}:{shown_path(log.resolve())}"
    added = 0
    try:
        handle = log.open("rb")
    except FileNotFoundError:
        handle = None  # NGINX has not answered anything yet (or the log was renamed away this instant)
    try:
        stored = catalog.access_position(source)
    except BaseException:  # the catalog out: this pass ends here, the log closed (it was left to the collector)
        if handle is not None:
            handle.close()
        raise
    if held is not None and held.rotated is not None:
        added += _drain_rotated(catalog, source, stored, held, echo, tally)
    if held is not None and held.handle is not None:
        old = _file_id(os.fstat(held.handle.fileno()))
        if handle is None or _file_id(os.fstat(handle.fileno())) != old:
            # rotated: the old file's tail (from its start if no line of it was stored yet), then keep it open
            read_to = stored[1] if stored is not None and stored[0] == old else 0
            for rows, end in _batches(held.handle, read_to, echo, tally):
                catalog.add_access(rows, source, old, end)
                added += len(rows)
                read_to = end
            held.rotate(read_to)
            stored = catalog.access_position(source)
    if handle is not None:
        try:
            stat = os.fstat(handle.fileno())
            # a new file (rotated) or a shorter one (truncated): start at its beginning
            start = stored[1] if stored and stored[0] == _file_id(stat) and stored[1] <= stat.st_size else 0
            for rows, position in _batches(handle, start, echo, tally):
                catalog.add_access(rows, source, _file_id(stat), position)
                added += len(rows)
        finally:
            if held is None:
                handle.close()
            else:
                held.take(handle)
    catalog.prune_access(int((time.time() if now is None else now) - retention_days * 86400))
    return added


def _drain_rotated(
    catalog: Catalog, source: str, stored: tuple[str, int] | None, held: Held, echo: bool, tally: Tally | None
) -> int:
    """Load what NGINX wrote to a rotated log since the last pass (its position is kept in ``held``; the catalog's
    is the current file's and stays as it is). The old file is closed once it has been quiet for the grace time."""
    added = 0
    start = held.rotated_position
    for rows, position in _batches(held.rotated, start, echo, tally):
        file_id, at = stored if stored is not None else (_file_id(os.fstat(held.rotated.fileno())), position)
        catalog.add_access(rows, source, file_id, at)
        held.rotated_position = position
        added += len(rows)
    now = time.monotonic()
    if held.rotated_position != start:
        held.rotated_grew = now
    elif now - held.rotated_grew > ROTATED_GRACE_SECONDS:
        held.drop_rotated()
    return added


def unreadable_note(tally: Tally) -> str:
    """What ``audit collect`` says of the lines it skipped as unreadable: how many, never what they hold."""
    return (
        f"{tally.unreadable} of {tally.lines} line{'s' if tally.lines != 1 else ''} read skipped as unreadable: no "
        "line of the gateway's JSON access log (not shown: a line may hold PHI or a token)"
    )


def follow_log(
    catalog: Catalog,
    log: Path,
    retention_days: int,
    interval: float,
    stop: threading.Event,
    echo: bool = False,
    heartbeat: Path | None = None,
) -> None:
    """Collect every ``interval`` seconds until ``stop`` is set (a signal), and once more before returning. A
    catalog that is briefly out (or not yet migrated) is retried on the next pass: the position is not lost. The
    log stays open between passes (``Held``), so the lines of a rotated log written after a pass are loaded too."""
    held = Held()

    def say(text: str) -> None:
        # stderr may sit on the very disk that is full: a failed print must not end the collector (stack up stopped
        # the whole gateway when it did)
        with contextlib.suppress(OSError):
            print(f"dicom-gateway audit collect: {text}", file=sys.stderr, flush=True)

    if not log.exists():  # a mistyped path would wait for ever without a word: said once, then it is waited for
        say(f"{shown_path(log)} does not exist yet; its lines are loaded once NGINX writes it")
    try:
        while True:
            tally = Tally()
            try:
                collect(catalog, log, retention_days, echo=echo, held=held, tally=tally)
                if heartbeat is not None:
                    heartbeat.touch()
            except Exception as error:  # noqa: BLE001 - the collector outlives a database blip; one line, no trace
                say(f"{type(error).__name__}: {' '.join(str(error).split())[:300]}")
            if tally.unreadable:  # a file that is not the access log loaded nothing without a word
                say(unreadable_note(tally))
            if stop.wait(interval):
                tally = Tally()
                with contextlib.suppress(Exception):
                    collect(catalog, log, retention_days, echo=echo, held=held, tally=tally)
                if tally.unreadable:
                    say(unreadable_note(tally))
                return
    finally:
        held.close()
