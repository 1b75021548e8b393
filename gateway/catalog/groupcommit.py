"""Group commit of registrations: the uploads that reach their commit point together share one transaction.

An upload still returns only once its own row is committed and flushed to disk (the durability promise of
``docs/design.md`` §5 is unchanged); what changes is that when several uploads of a STOW request (or of several
requests) wait at the same moment, one of them commits them all. The first to arrive leads: it takes every
registration waiting, commits them with ``Catalog.register_instances``, then hands the lead to a waiter whose
registration came in meanwhile. No thread waits on a timer, so a lone upload commits at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from gateway.catalog.catalog import Catalog, Registration
from gateway.errors import GatewayError

MAX_BATCH = 64  # registrations per transaction: bounds how long one commit holds SQLite's write lock


@dataclass
class _Waiting:
    registration: Registration
    outcome: bool | GatewayError | None = None
    failure: BaseException | None = None
    done: bool = False


class GroupCommit:
    def __init__(self, catalog: Catalog, max_batch: int = MAX_BATCH) -> None:
        self.catalog = catalog
        self.max_batch = max_batch
        self._changed = threading.Condition()
        self._queue: list[_Waiting] = []
        self._leading = False

    def register(self, registration: Registration) -> bool:
        """``Catalog.register_instance`` of one upload, committed together with whatever else is waiting."""
        mine = _Waiting(registration)
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
            self._commit(batch)  # ours is in it unless more than max_batch were queued before it
        if mine.failure is not None:
            raise mine.failure
        if isinstance(mine.outcome, GatewayError):
            raise mine.outcome
        assert mine.outcome is not None
        return mine.outcome

    def _commit(self, batch: list[_Waiting]) -> None:
        try:
            outcomes = self.catalog.register_instances([waiting.registration for waiting in batch])
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
