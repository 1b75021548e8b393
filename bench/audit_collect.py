"""Measure the access audit collector's CPU per log line (gateway/accesslog.py; README "Access audit"). Not a
benchmark with a target: the collector runs beside NGINX and takes CPU from it, so its cost per line is the figure
(docs/bench.md, "Audit collector").

``python -m bench.audit_collect`` loads 200,000 lines of NGINX's ``dgw_json`` format into a fresh SQLite catalog
with ``collect()`` (one pass, as ``audit collect --follow`` does after a busy interval) and prints the CPU time per
line: the whole pass (read, parse, insert, commit) and its parsing alone. The baseline of the same run is the
collector as it was before issue 15's fast path, into a second fresh catalog: every line through ``access_row`` (the
standard library's JSON; it still reads the lines the fast path does not take), 1,000 lines per transaction, rows
as dicts through SQLAlchemy's executemany. ``--log FILE`` reads a real access log instead of the synthetic
one (B2-like: cached frame reads of one instance, the lines of one second sharing their time, 1 % other requests);
``--database URL`` loads into that catalog instead (migrated here; its access rows are deleted before each pass),
e.g. a PostgreSQL database.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from gateway.accesslog import _row, access_row, collect
from gateway.catalog import Catalog
from gateway.catalog.access import ACCESS_FIELDS
from gateway.catalog.schema import access, access_cursor

ST = "2.25.44373845550713167418202007337371354766"
SE = "2.25.124316646398298092288964008202905819582"
IN = "2.25.16919105130305721201181962911971750061"


def synthetic_log(path: Path, lines: int, per_second: int = 20_000) -> None:
    """B2-like lines: cached frame reads (``/t/***/...``), now and then metadata, a search, a health check."""
    rnd = random.Random(15)
    base = 1_796_369_657  # 2026-12-04T07:34:17Z
    frames = f"/t/***/dicomweb/studies/{ST}/series/{SE}/instances/{IN}/frames/"
    others = [f"/dicomweb/studies/{ST}/series/{SE}/metadata", "/dicomweb/studies?PatientID=***&limit=10", "/healthz"]
    with path.open("w") as out:
        for n in range(lines):
            moment = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(base + n // per_second))
            uri = rnd.choice(others) if rnd.random() < 0.01 else frames + str(rnd.randrange(1, 32_000))
            entry = {"time": moment, "remote": "127.0.0.1", "method": "GET", "uri": uri, "status": 200,
                     "bytes": rnd.randrange(8_000, 20_000), "request_time": 0.000, "sub": "bench",
                     "jti": "4erwDL7DzsxD", "via": "path", "study": ST, "upstream_status": "", "upstream_time": "",
                     "cache": "HIT", "protocol": "HTTP/1.1", "user_agent": ""}  # fmt: skip
            out.write(json.dumps(entry, separators=(",", ":")) + "\n")


def previous_collect(catalog: Catalog, raw: list[bytes]) -> int:
    """The collector's pass before the fast path (commit b211d7c's gateway/accesslog.py and add_access), inlined."""
    added = 0
    for start in range(0, len(raw), 1000):
        rows = [access_row(line.decode("utf-8", errors="replace")) for line in raw[start : start + 1000]]
        found = [row for row in rows if row is not None]
        values = {"file_id": "bench", "position": start}
        upsert = catalog._insert(access_cursor).values(source="bench", **values)
        upsert = upsert.on_conflict_do_update(index_elements=["source"], set_=values)
        with catalog._write() as conn:
            if found:
                conn.execute(access.insert(), [{name: row[name] for name in ACCESS_FIELDS} for row in found])
            conn.execute(upsert)
        added += len(found)
    return added


def cpu_per_line(log: Path, database: str | None, tmp: Path) -> dict[str, float]:
    raw = log.read_bytes().split(b"\n")
    raw.pop()
    figures: dict[str, float] = {"lines": len(raw)}
    for name in ("previous", "collect"):
        catalog = Catalog(database or f"sqlite:///{tmp / name}.db")
        try:
            catalog.migrate()
            with catalog._write() as conn:  # one --database for both passes: each starts from empty tables
                conn.execute(access.delete())
                conn.execute(access_cursor.delete())
            started = time.process_time()
            rows = previous_collect(catalog, raw) if name == "previous" else collect(catalog, log, 36500)
            figures[name] = (time.process_time() - started) * 1e6 / len(raw)
            figures["rows" if name == "collect" else "previous_rows"] = rows
        finally:
            catalog.close()
    started = time.process_time()
    for line in raw:
        _row(line)
    figures["parse"] = (time.process_time() - started) * 1e6 / len(raw)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, help="a real NGINX access log (dgw_json) instead of synthetic lines")
    parser.add_argument("--lines", type=int, default=200_000, help="synthetic lines (default 200,000)")
    parser.add_argument("--database", help="an empty catalog URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = args.log
        if log is None:
            log = Path(tmp) / "access.log"
            synthetic_log(log, args.lines)
        figures = cpu_per_line(log, args.database, Path(tmp))
    backend = "PostgreSQL" if args.database and args.database.startswith("postgres") else "SQLite"
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"audit collector, {figures['lines']:,} lines ({args.log or 'synthetic'}), {figures['rows']:,} rows, "
          f"{backend}, load average {load}")  # fmt: skip
    if "previous" in figures:
        print(f"  previous collector (baseline):         {figures['previous']:5.1f} us CPU per line")
    print(f"  collect (read, parse, insert, commit): {figures['collect']:5.1f} us CPU per line")
    print(f"    of which parsing (fast path):        {figures['parse']:5.1f} us")


if __name__ == "__main__":
    main()
