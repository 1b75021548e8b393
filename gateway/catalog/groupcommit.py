"""Group commit: catalog writes that arrive together share one transaction.

SQLite has one writer at a time, and every durable commit waits for a flush to disk, so an upload that wrote its
reservation and its registration in transactions of its own would queue behind every other upload's. Here the
first caller to arrive leads: it takes every item waiting, runs them through one batch function (one
transaction), then hands the lead to a waiter whose item came in meanwhile. Each caller still returns only once
its own item is committed (for registrations: flushed to disk, the durability promise of `docs/design.md` §5).

A batch's statements cost about the same for one item as for four, and the items of one multi-part STOW reach a
commit ~5 ms apart (each has its file analysed first): without waiting, seven batches in ten held one item, and
the statements were a quarter of the STOW worker's CPU. A caller whose item is on its way says so (``expect()``);
the leader then lingers up to ``linger`` seconds while such items are still coming. A lone upload, with nothing
on its way, commits at once.

A batch that fails for a reason that is not an outage (the database refused one item's row: a constraint, a
trigger, a value it cannot take; or a bug that one item's values meet) is run again one item at a time, each in
a transaction of its own: only the item at fault fails, and other clients' uploads that happened to share its
transaction are stored. An outage (``is_outage``) still fails the whole batch at once: each item alone would only
meet it again, one connect timeout each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.errors import GatewayError

log = logging.getLogger("gateway.catalog")

MAX_BATCH = 64  # items per transaction: bounds how long one commit holds SQLite's write lock
LINGER_SECONDS = 0.02  # the longest a batch waits for items on their way (docs/bench.md, B4)

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` fails every item of a batch alike: the catalog unreachable, its disk full or its lock not
    won in time (``CatalogUnavailable``, which ``gateway.catalog.engine`` makes of every ``OperationalError``), a
    connection SQLAlchemy found broken, or the process exiting (not an ``Exception``)."""
    if not isinstance(error, Exception) or getattr(error, "connection_invalidated", False):
        return True
    return isinstance(error, GatewayError) and error.status >= 500


def describe(error: BaseException) -> str:
    """What a log line or an answer may say of a database error: its class and SQLSTATE (PostgreSQL) or SQLite
    error name, never its message, which quotes values (PostgreSQL's "Failing row contains (...)" holds the whole
    row: a patient's name and ID)."""
    orig = getattr(error, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    name = type(orig if orig is not None else error).__name__
    return f"{name} {code}" if code else name


@dataclass
class _Waiting(Generic[Item, Outcome]):
    item: Item
    outcome: Outcome | GatewayError | None = None
    failure: BaseException | None = None
    done: bool = False


class GroupCommit(Generic[Item, Outcome]):
    """``submit(item)`` runs ``batch([item, ...])`` together with whatever else is waiting. ``batch`` returns one
    outcome per item, in order; a ``GatewayError`` outcome is raised to that item's caller alone. An exception of
    ``batch`` itself is an outage (``is_outage``), raised to every caller of that batch, or else the fault of
    some item: each item then runs alone (``batch([item])``), and the exception of an item alone is raised to its
    caller."""

    def __init__(
        self,
        batch: Callable[[Sequence[Item]], Sequence[Outcome | GatewayError]],
        max_batch: int = MAX_BATCH,
        linger: float = LINGER_SECONDS,
    ) -> None:
        self.batch = batch
        self.max_batch = max_batch
        self.linger = linger
        lock = threading.Lock()
        self._changed = threading.Condition(lock)  # a batch ended: its callers return, a waiter may lead
        self._arrived = threading.Condition(lock)  # an item was queued, or one expected will not come
        self._queue: list[_Waiting[Item, Outcome]] = []
        self._expected = 0
        self._leading = False

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Around the work that precedes a ``submit`` from this thread: while it runs, a leader may wait for it."""
        with self._changed:
            self._expected += 1
        try:
            yield
        finally:
            with self._changed:
                self._expected -= 1
                self._arrived.notify()

    def submit(self, item: Item) -> Outcome:
        mine: _Waiting[Item, Outcome] = _Waiting(item)
        with self._changed:
            self._queue.append(mine)
            self._arrived.notify()
        while True:
            with self._changed:
                while self._leading and not mine.done:
                    self._changed.wait()
                if mine.done:
                    break
                self._leading = True
                deadline = time.monotonic() + self.linger
                while self._expected and len(self._queue) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._arrived.wait(left):
                        break
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            self._run(batch)  # ours is in it unless more than max_batch were queued before it
        if mine.failure is not None:
            raise mine.failure
        if isinstance(mine.outcome, GatewayError):
            raise mine.outcome
        return mine.outcome  # type: ignore[return-value]

    def _run(self, batch: list[_Waiting[Item, Outcome]]) -> None:
        try:
            try:
                outcomes = self.batch([waiting.item for waiting in batch])
            except Exception as error:
                if len(batch) == 1 or is_outage(error):
                    raise
                what = describe(error)
                log.warning("a catalog batch of %d failed (%s): each of its items is committed alone", len(batch), what)
                self._alone(batch)
                return
            # outside the retry: outcomes that do not match the batch come after its commit, never run it twice
            for waiting, outcome in zip(batch, outcomes, strict=True):
                waiting.outcome = outcome
        except BaseException as error:  # noqa: BLE001 - an outage fails the whole batch, none half-done
            for waiting in batch:
                waiting.failure = error
        finally:
            with self._changed:
                for waiting in batch:
                    waiting.done = True
                self._leading = False
                self._changed.notify_all()

    def _alone(self, batch: list[_Waiting[Item, Outcome]]) -> None:
        """Each item of a failed batch in a batch of its own (the failed one changed nothing: its transaction rolled
        back), until one meets an outage, which the items not run yet share."""
        for number, waiting in enumerate(batch):
            try:
                waiting.outcome = self.batch([waiting.item])[0]
            except BaseException as error:  # noqa: BLE001 - this item's own failure, or an outage for the rest
                waiting.failure = error
                if is_outage(error):
                    for rest in batch[number + 1 :]:
                        rest.failure = error
                    return
