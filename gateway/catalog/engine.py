"""The catalog's connection to its database: engine set-up, transactions, migrations.

SQLite (default; WAL, foreign keys, busy timeout, ``synchronous=FULL`` so a committed row survives a power
cut) or PostgreSQL (``postgresql://`` uses the psycopg 3 driver). Writes that read-then-write take the write
lock up front: ``BEGIN IMMEDIATE`` on SQLite (set here); on PostgreSQL the writers lock rows themselves.
``CatalogBase`` holds this plumbing; the record groups (``AdminRecords``, ``Catalog``) build on it.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from gateway.catalog.schema import revocations
from gateway.errors import CatalogUnavailable, ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"
# An arbitrary constant: the PostgreSQL advisory lock that serialises migrations between starting workers.
_MIGRATION_LOCK = 0x6463_6D67
BUSY_TIMEOUT = 30  # seconds a SQLite writer waits for the write lock before the catalog counts as unavailable


def engine_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 (SQLAlchemy would otherwise pick psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def unavailable(exc: sa.exc.DBAPIError) -> CatalogUnavailable:
    """The outage a database error means; a full disk says so (SQLite's SQLITE_FULL, PostgreSQL's disk_full), as
    storage's ENOSPC does, so an operator reading the 503 knows what to free."""
    orig = exc.orig
    if getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or getattr(orig, "sqlstate", None) == "53100":
        return CatalogUnavailable("catalog unavailable (disk full)")
    return CatalogUnavailable(f"catalog unavailable ({type(orig).__name__})")


# SQLite's "file is not a database" and "database disk image is malformed" (primary codes; Python gives the extended)
_DAMAGED = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


def damaged(exc: sa.exc.DatabaseError) -> CatalogUnavailable | None:
    """The outage a SQLite file that is no database, or a damaged one, means (/readyz says ``catalog_unavailable``
    of it): a read or a write was a 500 and the commands' traceback. None for any other database error."""
    if getattr(exc.orig, "sqlite_errorcode", -1) & 0xFF not in _DAMAGED:
        return None
    return CatalogUnavailable("catalog unavailable (the SQLite file is not a database, or is damaged)")


# PostgreSQL errors that fail every request alike until the database changes: an outage of the catalog, never
# one upload's own fault (a 409 of 0x0110 items, no Retry-After: a client gives up) nor a 500 with a traceback.
# read_only_sql_transaction: the host became a replica (a failover, or ``default_transaction_read_only``);
# undefined_table: the database was dropped and made again, empty (``db upgrade`` makes the tables).
_REFUSING = {
    "25006": "catalog unavailable (read-only)",
    "42P01": "catalog unavailable (its tables are missing: run `dicom-gateway db upgrade`)",
}


def refusing(exc: sa.exc.DatabaseError) -> CatalogUnavailable | None:
    """The outage a PostgreSQL error of ``_REFUSING`` means; None for any other database error."""
    detail = _REFUSING.get(getattr(exc.orig, "sqlstate", None) or "")
    return CatalogUnavailable(detail) if detail else None


def unicode_fold(text: str) -> str:
    """Lower case as PostgreSQL's lower() gives it, for a PN match: `İ` (Turkish capital dotted I) is `i`, where
    Python's lower() writes `i̇` (i and a combining dot above). A Greek small sigma ending a word differs too (ς
    from Python, σ from PostgreSQL): the query's spellings cover both (``search.final_sigmas``)."""
    return text.replace("\u0130", "i").lower()


def _unicode_lower(value: Any) -> Any:
    return unicode_fold(value) if isinstance(value, str) else value


def _sqlite_engine(url: str) -> Engine:
    # hide_parameters: a database error's text quotes every bound value otherwise (a file's Patient's Name and
    # ID, in clear), and the logs take that text
    engine = sa.create_engine(
        url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT}, hide_parameters=True
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (not pysqlite) decide when transactions begin, so writes can say BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "foreign_keys=ON",
            f"busy_timeout={BUSY_TIMEOUT * 1000}",
            "synchronous=FULL",
            # Case-sensitive LIKE (DICOM matching is case-sensitive except PN, which lower()s both sides);
            # it also lets a prefix pattern such as 'ABC%' use the ordinary index.
            "case_sensitive_like=ON",
            # deleted rows (a DELETE, an erasure) are overwritten with zeros, not left in free pages of the file
            "secure_delete=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()
        # SQLite's built-in lower() folds ASCII only; PN matching with a non-ASCII pattern must fold "MÜLLER"
        # like PostgreSQL does (gateway.dicomweb.qido.unicode_lower compiles to this on SQLite).
        dbapi_connection.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Write transactions take the lock up front: a deferred transaction that reads, then writes, fails
        # with SQLITE_BUSY (no waiting) when another writer committed in between.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


# libpq's bounds on a database that stops answering (an RDS failover moves the primary and drops the old one's
# packets): without them a connect waited for TCP's SYN retries (over two minutes) and a query on a pooled
# connection until TCP gave up (about fifteen minutes), each holding a gunicorn thread. Seconds to connect; then
# unacknowledged data aborts the connection after TCP_USER_TIMEOUT ms, and an idle one is probed by keepalives. A
# parameter the URL sets itself wins (?connect_timeout=...).
PG_NETWORK_BOUNDS = {
    "connect_timeout": 5,
    "tcp_user_timeout": 15_000,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def _network_bounds(url: str) -> dict[str, int]:
    given = sa.engine.make_url(url).query
    return {name: value for name, value in PG_NETWORK_BOUNDS.items() if name not in given}


# Seconds the database may stay silent during a statement (or the pool's check of a pooled connection). A database
# frozen while its host's kernel still acknowledges every packet (the postmaster stopped, its disk hung) trips none
# of libpq's bounds: each request waited until it woke, holding its gunicorn thread, and the next ones took the
# rest (/readyz's 503 aside). The connection is then closed (its protocol state is unknown), and the request is the
# JSON 503. Silence, not length: a large answer still arriving is no outage. Migrations are exempt (``migrate``).
STATEMENT_WAIT = 15


def _bounded_connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    """A psycopg connection whose every wait for the server ends after ``STATEMENT_WAIT`` seconds of silence."""
    return _bounded_connection().connect(*cargs, **cparams)


@functools.cache
def _bounded_connection() -> Any:
    import psycopg  # only with a PostgreSQL catalog (the optional extra)

    class NoAnswer(psycopg.OperationalError):
        """The database answered nothing in time (its class name is the 503's detail)."""

    class BoundedConnection(psycopg.Connection):
        wait_bound: float | None = STATEMENT_WAIT

        def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
            if self.wait_bound is None:
                return super().wait(gen, *args, **kwargs)
            try:
                # psycopg resumes the generator every 0.1 s while the socket is idle (to see a Ctrl-C): the check
                return super().wait(_until_silent_for(gen, self.wait_bound, NoAnswer), *args, **kwargs)
            except NoAnswer:
                self.pgconn.finish()  # mid-protocol: never reused (SQLAlchemy sees it closed and discards it)
                raise

    return BoundedConnection


def _until_silent_for(gen: Any, bound: float, error: type[Exception]) -> Any:
    """``gen`` (a psycopg protocol generator) passed through, raising ``error`` once the socket has been idle for
    ``bound`` seconds (psycopg sends a falsy ready state when its wait timed out, the socket's state otherwise)."""
    deadline = time.monotonic() + bound
    try:
        state = next(gen)
        while True:
            ready = yield state
            if ready:
                deadline = time.monotonic() + bound
            elif time.monotonic() > deadline:
                raise error(f"no answer from the database in {STATEMENT_WAIT} s")
            state = gen.send(ready)
    except StopIteration as done:
        return done.value


class CatalogBase:
    """The engine and the transaction helpers every group of catalog records uses: ``_read()`` (a connection),
    ``_write()`` (a write transaction, lock taken up front), ``_insert(table)`` (the dialect's INSERT, which
    has ``on_conflict_*``). Database errors that mean "unreachable" become ``CatalogUnavailable``."""

    def __init__(self, url: str) -> None:
        self.url = url
        full = engine_url(url)
        if full.startswith("sqlite"):
            self.engine = _sqlite_engine(full)
        elif full.startswith("postgresql+psycopg"):
            self.engine = sa.create_engine(
                full,
                pool_pre_ping=True,
                pool_size=10,
                max_overflow=20,
                connect_args=_network_bounds(full),
                hide_parameters=True,  # as for SQLite: no value of a file in an error's text
            )
            event.listen(self.engine, "do_connect", _bounded_connect)
        else:
            raise ValueError("catalog URL must be sqlite:///... or postgresql://...")
        self.dialect = self.engine.dialect.name
        # SQLite has one writer: a thread that finds the write lock taken sleeps in SQLite's busy handler (1, 2,
        # 5, 10 ms ...) however soon the lock is free, which stalled the reservation and registration group
        # commits of one upload behind each other's. This process's writers queue here instead, woken as soon
        # as the one before commits; other processes still meet at SQLite's lock. (RLock: a write opened
        # inside another in one thread waits at SQLite's lock, as it would without this one.)
        self._writers: threading.RLock | None = threading.RLock() if self.dialect == "sqlite" else None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise unavailable(exc) from None
        except sa.exc.DatabaseError as exc:
            if (outage := damaged(exc) or refusing(exc)) is None:
                raise
            raise outage from None

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[Connection]:
        """A write transaction. ``durable=False`` for rows that need not survive a power cut (an upload
        reservation: its owner process dies with the machine, and a lost row only means no reservation): the
        commit skips the flush to disk (SQLite WAL with synchronous=NORMAL, PostgreSQL synchronous_commit off).
        The next durable commit flushes it too, so commits still reach disk in order."""
        try:
            with self._one_writer(), self.engine.connect() as conn:
                conn.execution_options(write=True)
                sqlite = None if durable or self.dialect != "sqlite" else conn.connection.driver_connection
                if sqlite is not None:
                    sqlite.execute("PRAGMA synchronous=NORMAL")  # outside a transaction: it applies to the next
                try:
                    with conn.begin():
                        if not durable and self.dialect == "postgresql":
                            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                        yield conn
                finally:
                    if sqlite is not None:
                        sqlite.execute("PRAGMA synchronous=FULL")
        except sa.exc.OperationalError as exc:
            raise unavailable(exc) from None
        except sa.exc.DatabaseError as exc:
            if (outage := damaged(exc) or refusing(exc)) is None:
                raise
            raise outage from None

    @contextmanager
    def _one_writer(self) -> Iterator[None]:
        """This process's turn to write (SQLite), waited for at most SQLite's busy timeout; the transaction then
        waits for other processes' writers in SQLite's busy handler, so a write can wait twice that in all."""
        if self._writers is None:
            yield
            return
        if not self._writers.acquire(timeout=BUSY_TIMEOUT):
            raise CatalogUnavailable("catalog unavailable (OperationalError)")  # as SQLite's own timeout says
        try:
            yield
        finally:
            self._writers.release()

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision. Safe to call from several workers at once."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._write() as conn, self._unbounded(conn):
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @staticmethod
    @contextmanager
    def _unbounded(conn: Connection) -> Iterator[None]:
        """No ``STATEMENT_WAIT`` on ``conn`` for the block: a long migration, or one waiting for another's lock."""
        driver: Any = conn.connection.driver_connection
        if getattr(driver, "wait_bound", None) is None:
            yield
            return
        driver.wait_bound = None
        try:
            yield
        finally:
            del driver.wait_bound  # the class's bound again

    def schema_revision(self) -> str:
        """The Alembic revision the database is at ("" for an empty catalog). A SQLite file not made yet, or empty,
        is not opened: a connection made the file (and its WAL header), and a command that only asked left an empty
        database where the catalog belongs."""
        from alembic.runtime.migration import MigrationContext

        if self._sqlite_file_empty():
            return ""
        with self._read() as conn:
            return MigrationContext.configure(conn).get_current_revision() or ""

    def _sqlite_file_empty(self) -> bool:
        """A SQLite catalog whose file is missing or of 0 bytes (SQLite's empty database)."""
        database = self.engine.url.database if self.dialect == "sqlite" else None
        if not database or database == ":memory:" or database.startswith("file:"):
            return False  # PostgreSQL, an in-memory database, or a URI filename SQLite itself interprets
        try:
            return Path(database).stat().st_size == 0
        except FileNotFoundError:
            return True
        except OSError:
            return False  # not reachable (a file as a folder, no permission): the connection says so, as before

    def require_current_schema(self, then: str = "before starting the workers") -> None:
        """Raise ``ConfigError`` unless the schema is exactly this version's: workers check, they never migrate
        (``gateway.startup.prepare`` did, once, before they started). ``then`` ends the advice to run ``db upgrade``
        (a command says when it needs it). A SQLite catalog not made yet is left unmade."""
        from alembic.script import ScriptDirectory

        head = ScriptDirectory(str(MIGRATIONS)).get_current_head() or ""
        current = self.schema_revision()
        self.require_not_newer(current)
        if current != head:
            raise ConfigError(
                "DICOMGW_DATABASE_URL",
                f"the catalog schema is at revision {current or '(none)'}, this version needs {head}: "
                f"run `dicom-gateway db upgrade` {then}",
            )

    def require_not_newer(self, current: str | None = None) -> None:
        """Raise ``ConfigError`` when a newer gateway migrated the catalog (a revision this version's migrations do
        not hold: the image rolled back after an upgrade). `db upgrade` cannot help (it said "Can't locate revision
        identified by '0016'", and the workers, to run it), and no version migrates a catalog back."""
        from alembic.script import ScriptDirectory

        scripts = ScriptDirectory(str(MIGRATIONS))
        current = self.schema_revision() if current is None else current
        if current and current not in {script.revision for script in scripts.walk_revisions()}:
            raise ConfigError(
                "DICOMGW_DATABASE_URL",
                f"the catalog schema is at revision {current}, newer than this version's {scripts.get_current_head()}"
                ": a newer dicom-gateway migrated it, and no version migrates a catalog back: run that version "
                "(or restore the catalog from before its upgrade)",
            )

    def check(self) -> None:
        """Raise ``CatalogUnavailable`` unless the database answers and the schema is in place."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(sa.func.count()).select_from(revocations).where(sa.false()))
        except sa.exc.SQLAlchemyError as exc:
            raise CatalogUnavailable(f"catalog unavailable ({type(exc).__name__})") from None

    def scrub(self) -> bool:
        """After a deletion: no copy of the deleted rows left in the database's files. SQLite zeroes a deleted
        row (``secure_delete``) in the page version it appends to the write-ahead log, while the main file keeps
        the old version until a checkpoint copies the new one over it, and the log's earlier frames keep theirs
        until overwritten: a patient's name and ID stayed in ``catalog.db`` and ``catalog.db-wal`` after the
        answer. A TRUNCATE checkpoint writes every frame into the main file and empties the log (it waits, in the
        busy handler, for readers of older snapshots). False when a reader held it longer than that (the next
        deletion's, or SQLite's own checkpoints, finish it). PostgreSQL: dead rows go at its next vacuum."""
        if self.dialect != "sqlite":
            return True
        try:
            with self._one_writer(), self.engine.connect() as conn:
                # on the DB-API connection: outside any transaction, which a checkpoint cannot run in
                driver: Any = conn.connection.driver_connection
                (busy, _, _) = driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sa.exc.OperationalError as exc:
            raise unavailable(exc) from None
        return not busy

    def close(self) -> None:
        self.engine.dispose()
