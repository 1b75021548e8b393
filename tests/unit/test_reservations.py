"""Upload reservations (issue 11 defect 7) on SQLite and on a real PostgreSQL: a crashed owner's reservation is
taken over at once, a live one never, and concurrent newcomers never both win."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.catalog import Catalog
from gateway.catalog.admin import LEASE_SECONDS, Reservation
from gateway.catalog.owner import host_identity, this_process
from gateway.catalog.schema import reservations
from gateway.errors import CatalogUnavailable, ReservationLost
from tests.fixtures.catalog_data import make_instance, record

SOP = "1.2.3.4.5.6"
CHILD = """
import sys, time
from gateway.catalog import Catalog
print(Catalog(sys.argv[1]).reserve(sys.argv[2], int(time.time())) is not None, flush=True)
time.sleep(600)
"""


@contextmanager
def reserved_by_a_killed_process(url: str, sop: str, *, reap: bool = True) -> Iterator[None]:
    """A real process takes the reservation through the catalog code and is killed with SIGKILL, as a gunicorn
    worker is; ``reap=False`` leaves it a zombie (killed, not yet waited for by its parent) inside the block."""
    with subprocess.Popen([sys.executable, "-c", CHILD, url, sop], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "True"
        finally:
            os.kill(child.pid, signal.SIGKILL)
        if reap:
            child.wait(10)
        else:
            deadline = time.monotonic() + 10
            while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                assert time.monotonic() < deadline
                time.sleep(0.01)
        yield


def test_a_live_reservation_excludes_others_until_released(catalog: Catalog) -> None:
    now = int(time.time())
    first = catalog.reserve(SOP, now)
    assert first is not None
    assert catalog.reserve(SOP, now) is None
    assert catalog.stale_reservations(now) == []
    catalog.release(first)
    assert catalog.reserve(SOP, now) is not None


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_a_killed_owners_reservation_is_taken_over_at_once(catalog: Catalog, catalog_url: str, reap: bool) -> None:
    with reserved_by_a_killed_process(catalog_url, SOP, reap=reap):
        now = int(time.time())
        assert catalog.stale_reservations(now) == [SOP]
        assert catalog.reserve(SOP, now) is not None  # was None for an hour before the fix
        assert catalog.reserve(SOP, now) is None  # and now it is ours, alive


def test_reconcile_query_clears_only_stale_reservations(catalog: Catalog, catalog_url: str) -> None:
    with reserved_by_a_killed_process(catalog_url, "1.2.3.1"):
        pass
    live = catalog.reserve("1.2.3.2", int(time.time()))
    assert live is not None
    assert catalog.stale_reservations(int(time.time()), clear=True) == ["1.2.3.1"]
    assert catalog.stale_reservations(int(time.time())) == []
    with catalog.engine.connect() as conn:
        assert list(conn.execute(sa.select(reservations.c.sop_uid)).scalars()) == ["1.2.3.2"]


def put_row(catalog: Catalog, *, host: str, pid: int, expires_at: int | None, created_at: int) -> None:
    with catalog.engine.begin() as conn:
        conn.execute(
            reservations.insert().values(
                sop_uid=SOP,
                created_at=created_at,
                owner_host=host,
                owner_pid=pid,
                owner_started=1,
                nonce="n" * 32,
                expires_at=expires_at,
            )
        )


def test_another_hosts_reservation_is_taken_over_only_after_its_lease(catalog: Catalog) -> None:
    now = int(time.time())
    put_row(catalog, host="elsewhere|boot|pid:[1]", pid=1, expires_at=now + 5, created_at=now)
    assert catalog.reserve(SOP, now) is None
    assert catalog.reserve(SOP, now + 6) is not None


def test_leases_are_judged_by_the_database_clock(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose own clock runs two minutes fast must not take over another host's live upload."""
    now = int(time.time())
    put_row(catalog, host="elsewhere|boot|pid:[1]", pid=1, expires_at=now + 30, created_at=now)
    monkeypatch.setattr(time, "time", lambda: now + 120.0)
    assert catalog.reserve(SOP) is None
    assert catalog.stale_reservations() == []
    assert catalog.reserve(SOP, now + 31) is not None  # by the clock the lease is judged on, it did run out


def test_rows_from_before_the_owner_columns_keep_the_one_hour_rule(catalog: Catalog) -> None:
    now = int(time.time())
    put_row(catalog, host="", pid=0, expires_at=None, created_at=now)
    assert catalog.reserve(SOP, now + 60) is None
    assert catalog.reserve(SOP, now + 3601) is not None


def test_a_pid_reused_by_another_process_counts_as_gone(catalog: Catalog) -> None:
    now = int(time.time())
    me = this_process()
    put_row(catalog, host=host_identity(), pid=me.pid, expires_at=now + LEASE_SECONDS, created_at=now)
    with catalog.engine.begin() as conn:  # our pid, but a process started at another time
        conn.execute(reservations.update().values(owner_started=me.started + 1))
    assert catalog.reserve(SOP, now) is not None


def test_concurrent_newcomers_never_both_win(catalog: Catalog, catalog_url: str) -> None:
    for attempt in range(3):
        sop = f"1.2.3.9.{attempt}"
        with reserved_by_a_killed_process(catalog_url, sop):
            pass
        barrier = threading.Barrier(6)
        won: list[Reservation | None] = []

        def race(sop: str = sop, barrier: threading.Barrier = barrier, won: list[Reservation | None] = won) -> None:
            barrier.wait()
            won.append(catalog.reserve(sop, int(time.time())))

        threads = [threading.Thread(target=race) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(r is not None for r in won) == 1


def test_a_taken_over_reservation_cannot_commit_or_beat(catalog: Catalog) -> None:
    now = int(time.time())
    inst = make_instance("1.2.3.1", "1.2.3.1.1", SOP)
    old = catalog.reserve(SOP, now)
    assert old is not None
    newer = catalog.reserve(SOP, now + LEASE_SECONDS + 1)  # the old owner stopped beating: its lease ran out
    assert newer is not None and newer != old
    assert catalog.heartbeat(old, now) is False
    with pytest.raises(ReservationLost):
        catalog.register_instance(record(inst), reservation=old)
    assert catalog.get_instance(SOP) is None
    assert catalog.register_instance(record(inst), reservation=newer) is True
    assert catalog.stale_reservations(now + 10_000) == []  # the commit ended the reservation


def test_holding_refreshes_the_lease(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.catalog.admin.HEARTBEAT_SECONDS", 0.05)
    reservation = catalog.reserve(SOP, 0)  # a lease that ran out long ago ...
    assert reservation is not None
    with catalog.holding(reservation):
        deadline = time.monotonic() + 10
        while catalog.stale_reservations(int(time.time())):  # ... until the first beat renews it
            assert time.monotonic() < deadline
            time.sleep(0.02)
    catalog.release(reservation)


def test_one_thread_keeps_every_held_lease_and_stops_when_none_is_held(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.catalog.admin.HEARTBEAT_SECONDS", 0.05)
    first, second = catalog.reserve(SOP, 0), catalog.reserve(SOP + ".2", 0)  # leases that ran out long ago
    assert first is not None and second is not None
    with catalog.holding(first):
        keeper = catalog._keeper
        with catalog.holding(second):
            assert catalog._keeper is keeper is not None  # no thread of its own per upload
            deadline = time.monotonic() + 10
            while catalog.stale_reservations(int(time.time())):  # both renewed by the one keeper
                assert time.monotonic() < deadline
                time.sleep(0.02)
    deadline = time.monotonic() + 10
    while catalog._keeper is not None:  # idle for a heartbeat interval: the thread ends
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert keeper is not None
    keeper.join(10)
    assert not keeper.is_alive()
    catalog.release(first)
    catalog.release(second)


def test_close_waits_for_the_beat_in_progress_and_stops_the_keeper(
    catalog: Catalog, catalog_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A beat that ended after ``close`` had disposed of the engine returned its connection to a pool nobody
    closed: the connection stayed open until the garbage collector found it, and its ResourceWarning failed
    whichever test then ran (a reconcile's catalog closes while its keeper may still be beating)."""
    monkeypatch.setattr("gateway.catalog.admin.HEARTBEAT_SECONDS", 0.05)
    beating, beats_ended = threading.Event(), []
    heartbeat = Catalog.heartbeat

    def slow_heartbeat(self: Catalog, reservation: Reservation, now: int | None = None) -> bool:
        beating.set()
        time.sleep(0.5)
        renewed = heartbeat(self, reservation) if now is None else heartbeat(self, reservation, now)
        beats_ended.append(time.monotonic())
        return renewed

    monkeypatch.setattr(Catalog, "heartbeat", slow_heartbeat)
    closing = Catalog(catalog_url)  # ``catalog`` made the tables
    reservation = closing.reserve(SOP, 0)
    assert reservation is not None
    with closing.holding(reservation):
        assert beating.wait(10)
    keeper = closing._keeper
    closing.close()
    closed = time.monotonic()
    assert beats_ended and beats_ended[-1] <= closed  # the beat ended before the engine went
    assert keeper is None or not keeper.is_alive()
    with closing._leases:
        closing._held[reservation] = 0.0
        closing._start_keeper()  # a closed catalog starts no keeper again
    assert closing._keeper is None
    catalog.release(reservation)


def test_close_waits_for_one_beat_not_the_rest_of_the_round(
    catalog: Catalog, catalog_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In an outage each beat waits out the catalog's timeout (5 s to connect to PostgreSQL, SQLite's busy wait): a
    close that waited for the keeper's whole round kept a deletion's process (256 claims held) from ending for
    twenty minutes. It waits for the beat in progress alone."""
    monkeypatch.setattr("gateway.catalog.admin.HEARTBEAT_SECONDS", 0.05)
    started: list[str] = []
    beating = threading.Event()

    def stalled_heartbeat(self: Catalog, reservation: Reservation, now: int | None = None) -> bool:
        started.append(reservation.sop_uid)
        beating.set()
        time.sleep(0.3)  # a beat waiting on a catalog that does not answer
        raise CatalogUnavailable("catalog unavailable (OperationalError)")

    monkeypatch.setattr(Catalog, "heartbeat", stalled_heartbeat)
    closing = Catalog(catalog_url)
    claims = [closing.reserve(f"{SOP}.{n}", 0) for n in range(10)]
    with contextlib.ExitStack() as held:
        for claim in claims:
            assert claim is not None
            held.enter_context(closing.holding(claim))
        assert beating.wait(10)
        closing.close()
    assert len(started) == 1  # the beat in progress, none of the nine others due with it
    for claim in claims:
        assert claim is not None
        catalog.release(claim)


def test_a_keeper_that_could_not_start_is_started_by_the_next_upload(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Thread.start`` can fail (no threads left): that upload fails and holds nothing, and the next one starts
    the keeper. Before, the thread that never started passed for running, and no lease of the process was beaten
    again: other processes took over uploads still in progress once their leases ran out."""
    monkeypatch.setattr("gateway.catalog.admin.HEARTBEAT_SECONDS", 0.05)
    first, second = catalog.reserve(SOP, 0), catalog.reserve(SOP + ".2", 0)  # leases that ran out long ago
    assert first is not None and second is not None
    start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with pytest.raises(RuntimeError), catalog.holding(first):
        pass
    assert catalog._keeper is None and not catalog._held
    monkeypatch.setattr(threading.Thread, "start", start)
    with catalog.holding(second):
        deadline = time.monotonic() + 10
        while SOP + ".2" in catalog.stale_reservations(int(time.time())):  # beaten by a keeper that runs
            assert time.monotonic() < deadline
            time.sleep(0.02)
    catalog.release(first)
    catalog.release(second)


def test_reserve_many_says_what_is_stored_under_each_uid_it_claims(catalog: Catalog) -> None:
    """Ingest's duplicate check reads the stored sha256 in the claim's own transaction."""
    stored = make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1")
    catalog.register_instance(record(stored, b"v1"))
    held = catalog.reserve("1.2.3.1.3")
    new, again, same_uid_twice, in_flight = catalog.reserve_many(["1.2.3.1.2", "1.2.3.1.1", "1.2.3.1.2", "1.2.3.1.3"])
    assert new is not None and new.stored is None
    assert again is not None and again.stored == record(stored, b"v1").sha256
    assert same_uid_twice is None and in_flight is None and held is not None
    assert again == Reservation(again.sop_uid, again.nonce)  # the stored digest is no part of the claim's identity


def test_reserve_many_claims_the_free_takes_over_the_dead_and_leaves_the_live(
    catalog: Catalog, catalog_url: str
) -> None:
    """One batch: free UIDs are claimed in one statement, a killed upload's reservation is taken over, another
    host's live one is left alone, and a UID named twice is claimed once."""
    dead, free, live = "1.2.3.7.1", "1.2.3.7.2", SOP
    with reserved_by_a_killed_process(catalog_url, dead):
        pass
    now = int(time.time())
    put_row(catalog, host="elsewhere|boot|pid:[1]", pid=1, expires_at=now + 60, created_at=now)  # holds SOP
    claims = catalog.reserve_many([free, dead, live, free])
    assert [claim is not None for claim in claims] == [True, True, False, False]
    assert [claim.sop_uid for claim in claims if claim is not None] == [free, dead]
    assert len({claim.nonce for claim in claims if claim is not None}) == 2
    assert catalog.reserve(dead, now) is None and catalog.reserve(free, now) is None  # now ours, and live
    assert sorted(catalog.stale_reservations(now + 10 * LEASE_SECONDS)) == sorted([dead, free, live])



def test_in_flight_names_the_live_claims_and_release_many_ends_only_its_own(catalog: Catalog, catalog_url: str) -> None:
    """A deletion's and reconcile's view of the reservations: ``in_flight`` names the UIDs a live owner holds (not a
    killed upload's), and ``release_many`` ends its claims in one transaction, leaving a claim taken over since."""
    dead, mine, taken = "1.2.3.8.1", "1.2.3.8.2", "1.2.3.8.3"
    with reserved_by_a_killed_process(catalog_url, dead):
        pass
    claims = catalog.reserve_many([mine, taken])
    assert all(claims) and catalog.in_flight([dead, mine, taken, "1.2.3.8.4"]) == {mine, taken}
    catalog.release_many([claim for claim in claims if claim is not None] + [Reservation(taken, "not-its-nonce")])
    assert catalog.in_flight([mine, taken]) == set()
    again = catalog.reserve(taken)
    assert again is not None
    catalog.release_many([Reservation(taken, claims[1].nonce if claims[1] else "")])  # an old claim: not this one
    assert catalog.in_flight([taken]) == {taken}
    catalog.release(again)

def test_this_process_reads_proc_once_and_names_its_own_start_time() -> None:
    from gateway.catalog.owner import _stat

    me = this_process()
    assert this_process() is me  # read once per pid: each reservation used to read /proc again
    stat = _stat(os.getpid())
    assert stat is not None and me.started == stat[1] and me.pid == os.getpid()


@pytest.mark.postgres
def test_a_release_the_catalog_missed_is_made_once_it_answers() -> None:
    """A release that meets a catalog outage (PostgreSQL stopped) is made by this process within seconds of the
    database answering again, even while the lease keeper sleeps until a later beat (another upload held). Before,
    the row stayed until its lease ran out (this process lives on), and an upload of the instance sent again once
    the database was back met "in progress" for a minute; then the keeper slept through the owed release for up
    to HEARTBEAT_SECONDS."""
    from gateway.errors import CatalogUnavailable
    from gateway.tools.postgres import PG_BIN, available, private_postgres
    from tests.requirements import require

    require(available(), f"SKIPPING: no initdb/postgres in {PG_BIN} (apt-get install postgresql)")
    with private_postgres() as server:
        catalog = Catalog(server.url("postgres"))
        catalog.migrate()
        try:
            other, missed = catalog.reserve("1.2.3.1"), catalog.reserve("1.2.3.2")
            assert other is not None and missed is not None
            with catalog.holding(other):  # the keeper now sleeps until other's first beat, 15 s away
                server.stop()
                with pytest.raises(CatalogUnavailable):
                    catalog.release(missed)
                server.start()
                deadline = time.monotonic() + 5
                while catalog.reserve("1.2.3.2") is None:
                    assert time.monotonic() < deadline, "the missed release was not made"
                    time.sleep(0.1)
        finally:
            catalog.close()
