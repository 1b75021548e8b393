"""One STOW-RS request's parts, ingested on a few threads while the body is still being read.

Reading the body is I/O, each file's CPU work runs in the ingest process pool (``gateway.ingest.analyse``), and
the commit waits on fsync (storage and catalog), so overlapping them uses every core. Results keep the order of
the parts; at most ``in_flight`` spooled parts wait on disk at any time, so a 2,000-instance request never fills
the spool folder. The first storage or catalog outage stops the batch: later parts fail fast with "out of
resources" and nothing else is written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from gateway.errors import CatalogUnavailable, GatewayError, ShuttingDown, StorageUnavailable
from gateway.ingest import IngestResult

log = logging.getLogger("gateway.stow")


class StowBatch:
    def __init__(self, ingest: Callable[[Path, str], IngestResult], workers: int = 3, in_flight: int = 6) -> None:
        self._ingest = ingest
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stow")
        self._slots = threading.BoundedSemaphore(in_flight)
        self._results: list[Future[IngestResult] | IngestResult] = []
        self.outage: GatewayError | None = None

    def add(self, path: Path, digest: str = "") -> None:
        """Ingest ``path`` (a spooled part this batch now owns and deletes; ``digest``: its sha256 if known)."""
        self._slots.acquire()
        try:
            future = self._pool.submit(self._run, path, digest)
        except RuntimeError:
            # "cannot schedule new futures after interpreter shutdown": the worker outlived its graceful time with
            # this body still arriving. The parts already stored stay so; this one and the rest are 0xA700 with
            # Retry-After, for another worker, as after an outage (it was a 500 that named none of them)
            self._slots.release()
            self.outage = self.outage or ShuttingDown(
                "this gateway process is stopping; send the instances it did not store again"
            )
            try:
                self._results.append(IngestResult.out_of_resources(path, self.outage.detail))
            finally:
                path.unlink(missing_ok=True)
            return
        self._results.append(future)

    def add_result(self, result: IngestResult) -> None:
        """A part refused before ingest (wrong media type), kept in its place in the answer."""
        self._results.append(result)

    def _run(self, path: Path, digest: str) -> IngestResult:
        try:
            if self.outage is not None:
                return IngestResult.out_of_resources(path, self.outage.detail)
            try:
                return self._ingest(path, digest)
            except (StorageUnavailable, CatalogUnavailable) as error:
                self.outage = error
                return IngestResult.out_of_resources(path, error.detail)
        finally:
            path.unlink(missing_ok=True)
            self._slots.release()

    def finish(self) -> list[IngestResult]:
        """Wait for every part; the results in part order."""
        try:
            return [item.result() if isinstance(item, Future) else item for item in self._results]
        finally:
            self._pool.shutdown(wait=True)
