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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.errors import GatewayError

MAX_BATCH = 64  # items per transaction: bounds how long one commit holds SQLite's write lock
LINGER_SECONDS = 0.02  # the longest a batch waits for items on their way (docs/bench.md, B4)

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


@dataclass
class _Waiting(Generic[Item, Outcome]):
    item: Item
    outcome: Outcome | GatewayError | None = None
    failure: BaseException | None = None
    done: bool = False


class GroupCommit(Generic[Item, Outcome]):
    """``submit(item)`` runs ``batch([item, ...])`` together with whatever else is waiting. ``batch`` returns one
    outcome per item, in order; a ``GatewayError`` outcome is raised to that item's caller alone, an exception
    of ``batch`` itself (an outage) to every caller of that batch."""

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
            outcomes = self.batch([waiting.item for waiting in batch])
            for waiting, outcome in zip(batch, outcomes, strict=True):
                waiting.outcome = outcome
        except BaseException as error:  # noqa: BLE001 - an outage (or a bug) fails the whole batch, none half-done
            for waiting in batch:
                waiting.failure = error
        finally:
            with self._changed:
                for waiting in batch:
                    waiting.done = True
                self._leading = False
                self._changed.notify_all()
