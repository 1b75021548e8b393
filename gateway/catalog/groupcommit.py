"""Group commit: catalog writes that arrive together share one transaction.

SQLite has one writer at a time, and every durable commit waits for a flush to disk, so an upload that wrote its
reservation and its registration in transactions of its own would queue behind every other upload's. Here the
first caller to arrive leads: it takes every item waiting, runs them through one batch function (one
transaction), then hands the lead to a waiter whose item came in meanwhile. Each caller still returns only once
its own item is committed (for registrations: flushed to disk, the durability promise of `docs/design.md` §5),
and no caller waits on a timer, so a lone upload commits at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.errors import GatewayError

MAX_BATCH = 64  # items per transaction: bounds how long one commit holds SQLite's write lock

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
        self, batch: Callable[[Sequence[Item]], Sequence[Outcome | GatewayError]], max_batch: int = MAX_BATCH
    ) -> None:
        self.batch = batch
        self.max_batch = max_batch
        self._changed = threading.Condition()
        self._queue: list[_Waiting[Item, Outcome]] = []
        self._leading = False

    def submit(self, item: Item) -> Outcome:
        mine: _Waiting[Item, Outcome] = _Waiting(item)
        with self._changed:
            self._queue.append(mine)
        while True:
            with self._changed:
                while self._leading and not mine.done:
                    self._changed.wait()
                if mine.done:
                    break
                self._leading = True
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
