"""Batched registration (``Catalog.register_instances``) and the group commit that feeds it, on SQLite and on a
real PostgreSQL: each registration of a batch stands alone, counts come out right, an outage loses nothing half
way, and uploads that wait together share one transaction."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.catalog import Catalog
from gateway.catalog.catalog import Registration
from gateway.catalog.groupcommit import GroupCommit
from gateway.catalog.schema import derive_jobs, reservations
from gateway.dicomweb.qido import parse_qido
from gateway.errors import CatalogUnavailable, Conflict, GatewayError, ReservationLost, SeriesInOtherStudy
from tests.fixtures.catalog_data import allow, make_instance, record, refuse

ST, ST2 = "1.2.3.1", "1.2.3.2"
SE1, SE2 = "1.2.3.1.1", "1.2.3.1.2"


def study_counts(catalog: Catalog, study: str) -> tuple[int, int, list[str]] | None:
    rows = catalog.search(parse_qido("studies", {"StudyInstanceUID": [study]}), None)
    if not rows:
        return None
    row: dict[str, Any] = rows[0]
    return (row["00201206"]["Value"][0], row["00201208"]["Value"][0], row["00080061"].get("Value", []))


def test_a_batch_gives_each_registration_its_own_outcome(catalog: Catalog) -> None:
    catalog.register_instance(record(make_instance(ST, SE1, "1.2.3.1.1.1")))  # stored before, bytes v1
    catalog.register_instance(record(make_instance(ST2, "1.2.3.2.1", "1.2.3.2.1.1")))
    lost = catalog.reserve("1.2.3.1.1.9")
    assert lost is not None
    catalog.release(lost)  # the reservation this upload thinks it holds is gone
    batch = [
        Registration(record(make_instance(ST, SE1, "1.2.3.1.1.2", instance_number=2))),  # new
        Registration(record(make_instance(ST, SE1, "1.2.3.1.1.1"))),  # same bytes again
        Registration(record(make_instance(ST, SE1, "1.2.3.1.1.1"), b"v2")),  # other bytes
        Registration(record(make_instance(ST, "1.2.3.2.1", "1.2.3.1.9.1"))),  # series of another study
        Registration(record(make_instance(ST, SE1, "1.2.3.1.1.9")), reservation=lost),
        Registration(record(make_instance(ST, SE2, "1.2.3.1.2.1", modality="MR", series_number=2))),  # new
    ]
    outcomes = catalog.register_instances(batch)
    assert outcomes[0] is True and outcomes[1] is False and outcomes[5] is True
    assert isinstance(outcomes[2], Conflict)
    assert isinstance(outcomes[3], SeriesInOtherStudy)
    assert isinstance(outcomes[4], ReservationLost)
    # the refused ones changed nothing; the counts were recomputed for both new series
    assert catalog.get_instance("1.2.3.1.9.1") is None and catalog.get_instance("1.2.3.1.1.9") is None
    assert catalog.get_instance("1.2.3.1.1.1").sha256 == batch[1].record.sha256  # type: ignore[union-attr]
    assert study_counts(catalog, ST) == (2, 3, ["CT", "MR"])
    assert study_counts(catalog, ST2) == (1, 1, ["CT"])


def test_derivative_jobs_are_queued_in_the_registration_transaction(catalog: Catalog) -> None:
    catalog.register_instance(record(make_instance(ST, SE1, "1.2.3.1.1.1")))
    batch = [
        Registration(record(make_instance(ST, SE1, "1.2.3.1.1.2")), derive=True),  # new: queued
        Registration(record(make_instance(ST, SE1, "1.2.3.1.1.3"))),  # new, nothing asked
        Registration(record(make_instance(ST, SE1, "1.2.3.1.1.1"), b"v2"), derive=True),  # refused: nothing
        Registration(record(make_instance(ST, SE1, "1.2.3.1.1.1")), derive=True),  # duplicate: nothing
    ]
    outcomes = catalog.register_instances(batch)
    assert outcomes[:2] == [True, True] and isinstance(outcomes[2], Conflict) and outcomes[3] is False
    with catalog.engine.connect() as conn:
        jobs = conn.execute(sa.select(derive_jobs.c.sop_uid, derive_jobs.c.attempts)).all()
    assert [tuple(job) for job in jobs] == [("1.2.3.1.1.2", 0)]
    # a replaced instance (one by one, under its savepoint) queues its job again
    replaced = record(make_instance(ST, SE1, "1.2.3.1.1.3"), b"v2", replace=True)
    assert catalog.register_instances([Registration(replaced, derive=True)]) == [True]
    with catalog.engine.connect() as conn:
        queued = set(conn.execute(sa.select(derive_jobs.c.sop_uid)).scalars())
    assert queued == {"1.2.3.1.1.2", "1.2.3.1.1.3"}


def test_register_instance_still_raises_its_refusal(catalog: Catalog) -> None:
    catalog.register_instance(record(make_instance(ST, SE1, "1.2.3.1.1.1")))
    with pytest.raises(Conflict):
        catalog.register_instance(record(make_instance(ST, SE1, "1.2.3.1.1.1"), b"v2"))


class CountingCatalog:
    """The real catalog, counting the transactions ``register_instances`` opens; the first one waits until
    ``release`` so the others queue up behind it, as they do behind a slow flush to disk."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.batches: list[int] = []
        self.release = threading.Event()
        self.fail = False

    def register_instances(self, batch: Sequence[Registration]) -> list[bool | GatewayError]:
        if not self.batches:
            self.release.wait(10)
        self.batches.append(len(batch))
        if self.fail:
            raise CatalogUnavailable("catalog unavailable (OperationalError)")
        return self.catalog.register_instances(batch)


def submit_concurrently(
    group: GroupCommit[Any, Any], items: Sequence[Any], *, as_one_batch: bool = False
) -> list[Any]:
    """Each item submitted from a thread of its own: the outcomes (or errors) in order. ``as_one_batch``: the lead is
    held until every item is queued, so that they run as one batch."""
    results: list[Any] = [None] * len(items)

    def run(i: int) -> None:
        try:
            results[i] = group.submit(items[i])
        except Exception as error:  # noqa: BLE001 - the outcome under test
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(items))]
    if as_one_batch:
        group._leading = True  # hold the lead: every item queues up, then they run as one batch
    for thread in threads:
        thread.start()
    if as_one_batch:
        wait_until_queued(group, len(items))
        with group._changed:
            group._leading = False
            group._changed.notify_all()
    for thread in threads:
        thread.join(30)
    return results


def wait_until_queued(group: GroupCommit[Any, Any], n: int) -> None:
    for _ in range(1000):
        if len(group._queue) >= n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{n} registrations never queued")


def test_uploads_waiting_together_share_one_transaction(catalog: Catalog) -> None:
    counting = CountingCatalog(catalog)
    group: GroupCommit[Registration, bool] = GroupCommit(counting.register_instances)
    registrations = [
        Registration(record(make_instance(ST, SE1, f"1.2.3.1.1.{n}", instance_number=n))) for n in range(1, 21)
    ]
    threading.Thread(target=lambda: (wait_until_queued(group, 19), counting.release.set()), daemon=True).start()
    results = submit_concurrently(group, registrations)
    assert results == [True] * 20
    # the first commit ran alone while the 19 others queued; they then committed together
    assert counting.batches == [1, 19]
    assert study_counts(catalog, ST) == (1, 20, ["CT"])


def test_a_lone_upload_commits_at_once_and_a_refusal_stays_its_own(catalog: Catalog) -> None:
    group: GroupCommit[Registration, bool] = GroupCommit(catalog.register_instances)
    assert group.submit(Registration(record(make_instance(ST, SE1, "1.2.3.1.1.1")))) is True
    assert group.submit(Registration(record(make_instance(ST, SE1, "1.2.3.1.1.1")))) is False
    with pytest.raises(Conflict):
        group.submit(Registration(record(make_instance(ST, SE1, "1.2.3.1.1.1"), b"v2")))


def test_an_outage_fails_every_upload_of_the_batch_and_stores_none(catalog: Catalog) -> None:
    counting = CountingCatalog(catalog)
    counting.fail = True
    group: GroupCommit[Registration, bool] = GroupCommit(counting.register_instances)
    registrations = [Registration(record(make_instance(ST, SE1, f"1.2.3.1.1.{n}"))) for n in range(1, 6)]
    threading.Thread(target=lambda: (wait_until_queued(group, 4), counting.release.set()), daemon=True).start()
    results = submit_concurrently(group, registrations)
    assert all(isinstance(result, CatalogUnavailable) for result in results)
    assert counting.batches == [1, 4]  # an outage is never retried item by item: each would meet it again
    assert study_counts(catalog, ST) is None


def test_a_batch_one_registration_fails_is_committed_one_by_one(catalog: Catalog) -> None:
    """The database refuses one registration's row (a trigger, not an outage): the batch it shared with four
    others is run again one registration per transaction, and only that one fails, with the database's error."""
    refuse(catalog.url, "instances", "1.2.3.1.1.3")
    counting = CountingCatalog(catalog)
    group: GroupCommit[Registration, bool] = GroupCommit(counting.register_instances)
    registrations = [
        Registration(record(make_instance(ST, SE1, f"1.2.3.1.1.{n}", instance_number=n))) for n in range(1, 7)
    ]
    threading.Thread(target=lambda: (wait_until_queued(group, 5), counting.release.set()), daemon=True).start()
    results = submit_concurrently(group, registrations)
    [refused] = [i for i, result in enumerate(results) if result is not True]
    assert registrations[refused].record.instance.ids.sop == "1.2.3.1.1.3"
    assert isinstance(results[refused], sa.exc.DBAPIError) and not isinstance(results[refused], sa.exc.OperationalError)
    assert counting.batches == [1, 5, 1, 1, 1, 1, 1]  # the failed batch of five, then each of them alone
    assert catalog.get_instance("1.2.3.1.1.3") is None
    assert study_counts(catalog, ST) == (1, 5, ["CT"])
    allow(catalog.url, "instances")
    assert group.submit(registrations[refused]) is True


def test_a_batch_one_reservation_fails_is_claimed_one_by_one(catalog: Catalog) -> None:
    refuse(catalog.url, "reservations", "1.2.3.1.1.2")
    batches: list[int] = []

    def reserve_many(sops: Sequence[str]) -> list[Any]:
        batches.append(len(sops))
        return catalog.reserve_many(sops)

    group: GroupCommit[str, Any] = GroupCommit(reserve_many)
    sops = [f"1.2.3.1.1.{n}" for n in range(1, 5)]
    results = submit_concurrently(group, sops, as_one_batch=True)
    assert batches == [4, 1, 1, 1, 1]
    assert isinstance(results[1], sa.exc.DBAPIError)
    assert [claim.sop_uid for claim in (results[0], results[2], results[3])] == [sops[0], sops[2], sops[3]]
    with catalog.engine.connect() as conn:
        held = set(conn.execute(sa.select(reservations.c.sop_uid)).scalars())
    assert held == {sops[0], sops[2], sops[3]}


def test_a_batch_larger_than_the_limit_is_split(catalog: Catalog) -> None:
    counting = CountingCatalog(catalog)
    group: GroupCommit[Registration, bool] = GroupCommit(counting.register_instances, max_batch=4)
    registrations = [Registration(record(make_instance(ST, SE1, f"1.2.3.1.1.{n}"))) for n in range(1, 11)]
    threading.Thread(target=lambda: (wait_until_queued(group, 9), counting.release.set()), daemon=True).start()
    results = submit_concurrently(group, registrations)
    assert results == [True] * 10
    assert counting.batches[0] == 1 and max(counting.batches) == 4 and sum(counting.batches) == 10
    assert study_counts(catalog, ST) == (1, 10, ["CT"])


def lingering(catalog: Catalog, linger: float) -> tuple[CountingCatalog, GroupCommit[Registration, bool]]:
    """A group commit over the real catalog that counts its batches (none held back) and waits up to ``linger``."""
    counting = CountingCatalog(catalog)
    counting.release.set()
    return counting, GroupCommit(counting.register_instances, linger=linger)


def test_a_batch_waits_for_an_upload_on_its_way_and_takes_it_along(catalog: Catalog) -> None:
    # One STOW's files reach the commit a few ms apart: a leader that knows another is coming waits for it.
    counting, group = lingering(catalog, 30)
    first, second = (Registration(record(make_instance(ST, SE1, f"1.2.3.1.1.{n}", instance_number=n))) for n in (1, 2))
    analysing, outcome = threading.Event(), []

    def on_its_way() -> None:
        with group.expect():  # e.g. its file is in analysis
            analysing.set()
            wait_until_queued(group, 1)
        outcome.append(group.submit(second))

    thread = threading.Thread(target=on_its_way)
    thread.start()
    analysing.wait(10)
    assert group.submit(first) is True  # returned with the second, long before the 30 s linger
    thread.join(10)
    assert outcome == [True]
    assert counting.batches == [2]
    assert study_counts(catalog, ST) == (1, 2, ["CT"])


def test_a_batch_stops_waiting_for_an_upload_that_will_not_come(catalog: Catalog) -> None:
    counting, group = lingering(catalog, 30)
    analysing = threading.Event()

    def fails_before_submitting() -> None:
        with group.expect():  # its file turns out not to be DICOM: no registration follows
            analysing.set()
            wait_until_queued(group, 1)

    thread = threading.Thread(target=fails_before_submitting)
    thread.start()
    analysing.wait(10)
    assert group.submit(Registration(record(make_instance(ST, SE1, "1.2.3.1.1.1")))) is True
    thread.join(10)
    assert counting.batches == [1]


def test_a_batch_waits_no_longer_than_its_linger(catalog: Catalog) -> None:
    counting, group = lingering(catalog, 0.05)
    slow_file_done = threading.Event()

    def slow_analysis() -> None:
        with group.expect():
            slow_file_done.wait(30)

    thread = threading.Thread(target=slow_analysis)
    thread.start()
    try:
        # committed while the other upload is still being analysed (it waits for this test, up to 30 s)
        assert group.submit(Registration(record(make_instance(ST, SE1, "1.2.3.1.1.1")))) is True
        assert not slow_file_done.is_set() and counting.batches == [1]
    finally:
        slow_file_done.set()
        thread.join(10)


def _no_busy_wait(catalog: Catalog) -> None:
    """From now on SQLite refuses a writer that finds the write lock taken at once ("database is locked")
    instead of sleeping in its busy handler: only a wait outside SQLite can keep two writers apart."""
    catalog.engine.dispose()
    sa.event.listen(catalog.engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA busy_timeout=0"))


def test_sqlite_writers_of_one_process_queue_outside_sqlite(tmp_path: Any) -> None:
    # Reservations and registrations are two group commits: their transactions meet at SQLite's one write
    # lock, where a waiter sleeps 1, 2, 5 ms... however soon the lock is free. Writers of one catalog take
    # turns before SQLite instead.
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.migrate()
    try:
        _no_busy_wait(catalog)
        failures: list[BaseException] = []

        def reserve(prefix: str) -> None:
            try:
                for n in range(40):
                    claim = catalog.reserve(f"{prefix}.{n}")
                    assert claim is not None
                    catalog.release(claim)
            except BaseException as error:  # noqa: BLE001 - reported by the assertion below
                failures.append(error)

        threads = [threading.Thread(target=reserve, args=(f"1.2.3.{t}",)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
    finally:
        catalog.close()


def test_a_sqlite_writer_waits_its_turn_only_as_long_as_the_busy_timeout(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.catalog import engine

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.migrate()
    monkeypatch.setattr(engine, "BUSY_TIMEOUT", 0.05)  # the documented bound, shortened for the test
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with catalog._write():
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        with pytest.raises(CatalogUnavailable), catalog._write():
            pass
    finally:
        done.set()
        holder.join()
    with catalog._write() as conn:  # the turn comes back once the other writer committed
        conn.exec_driver_sql("SELECT 1")
    catalog.close()


def test_outcomes_that_do_not_match_a_committed_batch_never_run_it_again() -> None:
    """A batch that committed and then answered the wrong number of outcomes (a bug after the commit): every caller
    gets the error, and no item runs a second time (a reservation claimed twice would wait for itself)."""
    calls: list[int] = []

    def batch(items: Sequence[int]) -> list[int]:
        calls.append(len(items))
        return []

    group: GroupCommit[int, int] = GroupCommit(batch)
    results = submit_concurrently(group, [0, 1, 2], as_one_batch=True)
    assert calls == [3]
    assert all(isinstance(result, ValueError) for result in results)
