"""The exact rows the access audit collector stores (gateway/accesslog.py), on SQLite and PostgreSQL, for a varied set
of log lines: NGINX's own and hostile ones (no JSON, other types, huge numbers, escapes, invalid UTF-8). ``EXPECTED``
was written by the collector before its fast path (orjson, tuples through one compiled INSERT; issue 15): both store
the same rows, and skip the same lines."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import accesslog
from gateway.accesslog import collect
from gateway.catalog import Catalog
from gateway.catalog.access import ACCESS_FIELDS, ROWS_PER_INSERT
from gateway.catalog.schema import access

ST = "2.25.44373845550713167418202007337371354766"
SE = "2.25.124316646398298092288964008202905819582"
IN = "2.25.16919105130305721201181962911971750061"
FRAMES = f"/t/***/dicomweb/studies/{ST}/series/{SE}/instances/{IN}/frames"


def nginx(uri: Any, **fields: Any) -> bytes:
    """A line in NGINX's ``dgw_json`` format (nginx/templates/dicomgw.conf.template), fields replaced as given."""
    entry = {"time": "2026-12-04T07:34:17+00:00", "remote": "127.0.0.1", "method": "GET", "uri": uri, "status": 200,
             "bytes": 17411, "request_time": 0.000, "sub": "bench", "jti": "4erwDL7DzsxD", "via": "path",
             "study": ST, "upstream_status": "", "upstream_time": "", "cache": "HIT",
             "protocol": "HTTP/1.1", "user_agent": ""}  # fmt: skip
    entry.update(fields)
    return json.dumps(entry, separators=(",", ":")).encode()


LINES: list[bytes] = [
    # NGINX's own lines
    nginx(f"{FRAMES}/12888"),
    nginx(f"{FRAMES}/1,2,3", time="2026-12-04T07:34:18+00:00", cache="MISS", bytes=1048576),
    nginx(f"/dicomweb/studies/{ST}/series/{SE}/metadata", via="bearer", sub="alice bob"),
    nginx(f"/dicomweb/studies/{ST}/series/{SE}/instances/{IN}/rendered", method="HEAD", bytes=0),
    nginx(f"/dicomweb/studies/{ST}/thumbnail?viewport=64,64", via="cookie"),
    nginx(f"/dicomweb/studies/{ST}/bulkdata/7fe00010", via="query"),
    nginx(f"/t/***/dicomweb/studies/{ST}?token=***", time="2026-12-04T08:34:17+01:00"),
    nginx(f"/dicomweb/studies/{ST}/", status=304),
    nginx(f"/dicomweb/studies/{ST}/series/{SE}/instances/{IN}/", method="DELETE", status=204, via="api-key"),
    nginx(f"/dicomweb/studies/{ST}/series/{SE}/bogus/x", status=404),
    nginx(f"/dicomweb/studies/{ST}/series/{SE}/instances"),
    nginx("/dicomweb/studies?PatientName=DOE^JOHN&limit=10", study=""),
    nginx("/t/***/dicomweb/studies", status=401, sub="", jti="", via=""),
    nginx("/dicomweb/series/", study="not-a-uid"),
    nginx(f"/dicomweb/studies/{ST}", method="POST", bytes=120),
    nginx("/dicomweb/studies", method="POST", study=""),
    nginx(f"/dicomweb/wado?requestType=WADO&studyUID={ST}&seriesUID={SE}&objectUID={IN}&token=***"),
    nginx("/dicomweb/wado?requestType=WADO&studyUID=DOE^JOHN&objectUID=1..2", study=""),
    nginx("/dicomweb/other", status=404),
    # lines that are no DICOMweb request, or no line of the format: skipped
    nginx(f"/dicomweb/studies/{ST}", method="OPTIONS", status=204),
    nginx("/healthz"),
    nginx("/api/v1/tokens", method="POST"),
    nginx("/***"),
    nginx(f"/dicomweb/studies/{ST}", time="yesterday"),
    nginx(f"/dicomweb/studies/{ST}", status="ok"),
    nginx(f"/dicomweb/studies/{ST}", status=None),
    nginx(f"/dicomweb/studies/{ST}") + b" trailing",
    b"[" + nginx(f"/dicomweb/studies/{ST}") + b"]",
    b"\xef\xbb\xbf" + nginx(f"/dicomweb/studies/{ST}"),
    b"not json",
    b"",
    b'{"time": "2026-12-04T07:34:17+00:00", "uri": "/dicomweb/studies"}',
    # other types than NGINX writes, huge numbers, escapes, invalid UTF-8: stored as before
    nginx(f"/dicomweb/studies/{ST}", status="200", bytes="12"),
    nginx(f"/dicomweb/studies/{ST}", status=200.7, bytes=1.9),
    nginx(f"/dicomweb/studies/{ST}", status=True, bytes=None),
    nginx(f"/dicomweb/studies/{ST}", bytes=2**63 - 1, request_time=2**80, upstream_time=-(2**70)),
    nginx(f"/dicomweb/studies/{ST}", sub=None, jti=12345678901234567890123, via=["path"], remote={"a": 1}),
    nginx(f"/dicomweb/studies/{ST}", sub=1.5, jti=2**64, via=True, method="get"),
    nginx(f"/dicomweb/studies/{ST}", sub="é" * 300, remote="r" * 100, jti="j" * 300, via="v" * 100),
    nginx(f"/dicomweb/studies/{ST}", method="POSTPOSTPOSTPOSTPOST"),
    nginx(f"/dicomweb/studies/{ST}", time="2026-12-04T07:34:17Z"),
    nginx(f"/dicomweb/studies/{ST}/series/{SE}\n"),
    nginx(f"/dicomweb/studies/{ST}/x\ny/metadata"),
    nginx(f"/dicomweb/studies/{ST}/series/{SE}/instances/{IN}/frames/1\r"),
    nginx(f"/dicomweb/studies/{ST}").replace(b"/dicomweb", b"\\/dicomweb"),
    nginx(f"/dicomweb/studies/{ST}", request_time=float("nan"), user_agent="S").replace(b'"S"', b'"\\ud800"'),
    nginx(f"/dicomweb/studies/{ST}", sub="alXce").replace(b"alXce", b"al\xffce"),
    nginx(f"/dicomweb/studies/{ST}", status=404).replace(b'"status":404', b'"status":404,"status":403'),
    nginx(f"/dicomweb/studies?StudyInstanceUID={ST}", study="1.2.3"),
    nginx(f"/dicomweb/studies/{ST}") + b"\r",
]

AT = 1796369657  # 2026-12-04T07:34:17+00:00


def row(action: str, study: str | None = ST, series: str | None = None, sop: str | None = None, *, at: int = AT,
        remote: str = "127.0.0.1", method: str = "GET", sub: str = "bench", jti: str = "4erwDL7DzsxD",
        via: str = "path", status: int = 200, size: int = 17411) -> tuple[Any, ...]:  # fmt: skip
    return (at, remote, method, action, study, series, sop, sub, jti, via, status, size)


# In the order of LINES, skipped lines left out.
EXPECTED: list[tuple[Any, ...]] = [
    row("frames", ST, SE, IN),
    row("frames", ST, SE, IN, at=1796369658, size=1048576),
    row("metadata", ST, SE, sub="alice bob", via="bearer"),
    row("rendered", ST, SE, IN, method="HEAD", size=0),
    row("thumbnail", via="cookie"),
    row("bulkdata", via="query"),
    row("retrieve"),
    row("retrieve", status=304),
    row("delete", ST, SE, IN, method="DELETE", via="api-key", status=204),
    row("other", ST, SE, status=404),
    row("search", ST, SE),
    row("search", None),
    row("search", sub="", jti="", via="", status=401),
    row("search", None),
    row("store", method="POST", size=120),
    row("store", None, method="POST"),
    row("wado-uri", ST, SE, IN),
    row("wado-uri", None),
    row("other", status=404),
    row("retrieve", size=12),
    row("retrieve", size=1),
    row("retrieve", status=1, size=0),
    row("retrieve", size=9223372036854775807),
    row("retrieve", remote="{'a': 1}", sub="None", jti="12345678901234567890123", via="['path']"),
    row("retrieve", method="get", sub="1.5", jti="18446744073709551616", via="True"),
    row("retrieve", remote="r" * 64, sub="é" * 256, jti="j" * 256, via="v" * 64),
    row("retrieve", method="POSTPOSTPOSTPOST"),
    row("retrieve"),
    row("retrieve", ST, SE),
    row("other"),
    row("frames", ST, SE, IN),
    row("retrieve"),
    row("retrieve"),
    row("retrieve", sub="al\ufffdce"),
    row("retrieve", status=403),
    row("search", "1.2.3"),
    row("retrieve"),
]


def stored(catalog: Catalog) -> list[tuple[Any, ...]]:
    with catalog.engine.connect() as conn:
        select = sa.select(*(access.c[name] for name in ACCESS_FIELDS)).order_by(access.c.id)
        return [tuple(row) for row in conn.execute(select)]


def test_the_collector_stores_exactly_these_rows(catalog: Catalog, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"\n".join(LINES) + b"\n" + nginx(f"{FRAMES}/1")[:100])  # the last line still being written
    assert collect(catalog, log, 36500, now=1_800_000_000) == len(EXPECTED)
    assert stored(catalog) == EXPECTED
    assert collect(catalog, log, 36500, now=1_800_000_000) == 0  # read once


@pytest.mark.parametrize("batch", [7, 1000, accesslog.BATCH_BYTES])
def test_batches_of_any_size_store_the_same_rows_and_echo_the_same_bytes(
    catalog: Catalog, tmp_path: Path, batch: int, monkeypatch: pytest.MonkeyPatch, capsysbinary: Any
) -> None:
    """A batch boundary inside a line, or a line longer than a batch, changes neither rows nor position; ``--echo``
    copies every complete line once, the one still being written not yet. Three copies of LINES: a batch of more
    rows than one INSERT takes (``ROWS_PER_INSERT``)."""
    monkeypatch.setattr(accesslog, "BATCH_BYTES", batch)
    log = tmp_path / "access.log"
    complete = (b"\n".join(LINES) + b"\n") * 3
    assert len(EXPECTED) * 3 > ROWS_PER_INSERT
    log.write_bytes(complete + nginx(f"{FRAMES}/1")[:100])
    assert collect(catalog, log, 36500, now=1_800_000_000, echo=True) == len(EXPECTED) * 3
    assert stored(catalog) == EXPECTED * 3
    assert capsysbinary.readouterr().out == complete
    stat = log.stat()
    position = catalog.access_position(f"{socket.gethostname()}:{log.resolve()}")
    assert position == (f"{stat.st_dev}:{stat.st_ino}", len(complete))


def test_no_line_stops_the_audit_trail(catalog: Catalog, tmp_path: Path) -> None:
    """Anyone can ask for a path whose "UIDs" are longer than any UID (PostgreSQL refuses them in a UID column), and
    a damaged line can hold numbers beyond their columns, a lone surrogate (no UTF-8), a NUL (no PostgreSQL text)
    or JSON nested deeper than Python reads: a batch holding one used to fail, and every later pass failed at the
    same line, so nothing after it was ever audited. Such levels are left out, such lines skipped (a NUL replaced);
    the lines around them are stored and the position moves on."""
    log = tmp_path / "access.log"
    long = "1" * 70
    lines = [
        nginx(f"{FRAMES}/1"),
        nginx(f"/dicomweb/studies/{long}/series/{SE}/instances/{long}.1/frames/1", status=401, sub="", jti="", via=""),
        nginx(f"/dicomweb/studies/{ST}/series/{long}", method="POST", status=400),
        nginx(f"{FRAMES}/2", bytes=2**64),
        nginx(f"{FRAMES}/3", status=-(2**63) - 1),
        nginx(f"{FRAMES}/4", bytes="1" * 30),
        nginx(f"{FRAMES}/5", status=float("inf")).replace(b"Infinity", b"1e999"),
        nginx(f"{FRAMES}/6", sub="S").replace(b'"S"', b'"\\udc80x"'),
        nginx(f"{FRAMES}/7"),
        nginx(f"{FRAMES}/8", status=2**31),  # beyond the INTEGER column
        nginx(f"{FRAMES}/9", sub="S").replace(b'"S"', b'"a\\u0000b"'),  # NUL: no PostgreSQL text
        b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's JSON reader goes
    ]
    log.write_bytes(b"\n".join(lines) + b"\n")
    assert collect(catalog, log, 36500, now=1_800_000_000) == 6
    assert stored(catalog) == [
        row("frames", ST, SE, IN),
        row("frames", None, SE, None, sub="", jti="", via="", status=401),
        row("store", ST, method="POST", status=400),
        row("frames", ST, SE, IN, sub="?x"),
        row("frames", ST, SE, IN),
        row("frames", ST, SE, IN, sub="a\ufffdb"),
    ]
    assert catalog.access_position(f"{socket.gethostname()}:{log.resolve()}") == (
        accesslog._file_id(log.stat()),
        log.stat().st_size,
    )


# -- the fast path against the reference reader, under hypothesis ------------------------------------------------
_PIECES = ["/studies/", "/series/", "/instances/", "1.2", "3", ".", "/", "//", "?", "=", "&", "\n", "\r", "é", "x",
           "frames", "metadata", "rendered", "thumbnail", "bulkdata", "series", "instances", "wado", "studyUID=1.2",
           "/t/***", "/dicomweb"]  # fmt: skip
_uris = st.builds(
    lambda head, pieces: head + "".join(pieces),
    st.sampled_from(["", "/dicomweb", "/t/***/dicomweb", f"/dicomweb/studies/{ST}", f"{FRAMES}/"]),
    st.lists(st.sampled_from(_PIECES), max_size=10),
)
_odd = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text())
_NAMES = ["time", "method", "uri", "status", "bytes", "study", "sub"]
_fields = st.fixed_dictionaries(  # a line as NGINX writes it ...
    {
        "time": st.sampled_from(["2026-12-04T07:34:17+00:00", "2026-12-04T07:34:17", "2026-12-04", "bad"]),
        "method": st.sampled_from(["GET", "HEAD", "POST", "DELETE", "OPTIONS"]),
        "uri": _uris,
        "status": st.sampled_from([200, 404]),
        "bytes": st.integers(min_value=0, max_value=2**63 - 1),
        "study": st.sampled_from(["", ST, "x"]),
        "sub": st.text(max_size=300),
    }
)


@settings(max_examples=2500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(  # ... with a few fields of another type, or missing
    fields=_fields,
    spoil=st.dictionaries(st.sampled_from(_NAMES), _odd, max_size=2),
    drop=st.sets(st.sampled_from(_NAMES), max_size=2),
)
def test_the_fast_path_reads_every_line_as_access_row_does(
    fields: dict[str, Any], spoil: dict[str, Any], drop: set[str]
) -> None:
    """Whatever a line holds, the collector's reading (``_row``: the fast path, or ``access_row`` for lines it does
    not take) is ``access_row``'s: the same row, or the same skip, or the same error."""
    fields.update(spoil)
    raw = nginx(fields.pop("uri"), **fields)
    entry = json.loads(raw)
    for name in drop:
        del entry[name]
    raw = json.dumps(entry).encode()

    def outcome(read: Any) -> Any:
        try:
            return read()
        except Exception as error:
            return type(error)

    reference = outcome(lambda: accesslog._reference_row(raw.decode("utf-8", errors="replace")))
    if isinstance(reference, dict):  # both then go through the same check of what every backend stores
        stored = accesslog._storable(tuple(reference[name] for name in ACCESS_FIELDS))
        reference = False if stored is None else stored  # a damaged line: unreadable
    # the same row, or the same skip (None: a line of the log, not audited; False: unreadable), or the same error
    assert outcome(lambda: accesslog._read(raw)) == reference
    assert outcome(lambda: accesslog._row(raw)) == (reference or None)
