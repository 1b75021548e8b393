"""The access audit trail in the catalog: rows the collector loads from NGINX's access log (``gateway.accesslog``),
its position in each log, retention, and the admin query (per study or subject over a time range, newest first,
paged by id)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from gateway.catalog.engine import CatalogBase
from gateway.catalog.schema import access, access_cursor

ACCESS_FIELDS = tuple(c.name for c in access.c if c.name != "id")


ROWS_PER_INSERT = 80  # on SQLite; 960 parameters: under its oldest limit (999)
_COPY = f"COPY access ({', '.join(ACCESS_FIELDS)}) FROM STDIN"  # PostgreSQL


@cache
def _insert_sql(dialect: Dialect, count: int) -> str:
    """SQLite's ``access`` INSERT as SQLAlchemy compiles it, with ``count`` rows of positional placeholders in
    ``ACCESS_FIELDS`` order: the collector's rows go to the driver as one flat tuple per statement, without
    SQLAlchemy's per-row parameter processing (none of these column types has a bind processor)."""
    compiled = access.insert().inline().compile(dialect=dialect, column_keys=list(ACCESS_FIELDS))
    assert compiled.positional and tuple(compiled.positiontup or ()) == ACCESS_FIELDS
    head, values = compiled.string.split(" VALUES ")
    return f"{head} VALUES {', '.join([values] * count)}"


class AccessRecords(CatalogBase):
    """``Catalog`` inherits these methods."""

    def access_position(self, source: str) -> tuple[str, int] | None:
        """``(file_id, position)`` where the collector stopped in ``source``, or None."""
        with self._read() as conn:
            row = conn.execute(sa.select(access_cursor).where(access_cursor.c.source == source)).first()
        return None if row is None else (row.file_id, int(row.position))

    def add_access(self, rows: Sequence[tuple[Any, ...]], source: str, file_id: str, position: int) -> None:
        """Append ``rows`` (tuples of ``ACCESS_FIELDS``) and move the position in ``source`` in one transaction: a
        crash between the two can neither lose nor repeat a line."""
        values = {"file_id": file_id, "position": position}
        upsert = self._insert(access_cursor).values(source=source, **values)
        upsert = upsert.on_conflict_do_update(index_elements=["source"], set_=values)
        with self._write() as conn:
            if rows and self.dialect == "postgresql":
                # COPY: psycopg writes the rows in C, the server reads them in bulk (~1.5 us of client CPU per row
                # here, ~10 for an executemany of INSERTs); same values, same order, same column checks
                psycopg = conn.connection.driver_connection
                assert psycopg is not None
                with psycopg.cursor() as cursor, cursor.copy(_COPY) as copy:
                    for row in rows:
                        copy.write_row(row)
            elif rows:  # SQLite: one statement per ROWS_PER_INSERT rows (pysqlite's executemany steps row by row)
                for start in range(0, len(rows), ROWS_PER_INSERT):
                    page = rows[start : start + ROWS_PER_INSERT]
                    conn.exec_driver_sql(_insert_sql(self.engine.dialect, len(page)), tuple(chain.from_iterable(page)))
            conn.execute(upsert)

    def prune_access(self, before: int) -> int:
        """Delete rows older than ``before`` (epoch seconds): the retention. Returns how many went."""
        with self._write() as conn:
            return int(conn.execute(access.delete().where(access.c.at < before)).rowcount or 0)

    def access_records(
        self,
        *,
        study_uid: str | None = None,
        sub: str | None = None,
        since: int | None = None,
        until: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first; ``before_id`` continues a page (the last ``id`` of the previous one). ``sub`` matches a
        subject among several (a request with two credentials names both, space-separated)."""
        stmt = sa.select(access).order_by(access.c.id.desc()).limit(limit)
        if study_uid is not None:
            stmt = stmt.where(access.c.study_uid == study_uid)
        if sub is not None:
            stmt = stmt.where(
                sa.or_(
                    access.c.sub == sub,
                    sa.func.instr(" " + access.c.sub + " ", " " + sub + " ") > 0
                    if self.dialect == "sqlite"
                    else sa.func.strpos(" " + access.c.sub + " ", " " + sub + " ") > 0,
                )
            )
        if since is not None:
            stmt = stmt.where(access.c.at >= since)
        if until is not None:
            stmt = stmt.where(access.c.at < until)
        if before_id is not None:
            stmt = stmt.where(access.c.id < before_id)
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(stmt)]
