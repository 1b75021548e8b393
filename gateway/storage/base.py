"""The storage Protocol: a small surface with two real implementations (local folder, S3).

Python uses storage to *write* (ingest, hooks, reconcile) and for the few reads that need Python (rendering a
frame, hooks on direct uploads). Serving reads is NGINX's job: ``origin_path`` tells NGINX where an object lives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    etag: str  # as the origin reports it (quoted), so NGINX can send If-Match


class Storage(Protocol):
    url: str

    def put_file(self, key: str, path: Path) -> StoredObject:
        """Store ``path`` under ``key`` durably and atomically: readers see the old object or the whole new one."""

    def head(self, key: str) -> StoredObject | None:
        """Size and ETag, or None when absent."""

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (small reads only: rendering, index checks)."""

    def download(self, key: str, path: Path) -> None:
        """Copy the whole object to a local file (streamed, bounded memory)."""

    def delete(self, key: str) -> None:
        """Remove; absent is not an error."""

    def move(self, src: str, dst: str) -> StoredObject:
        """Copy then delete, so a crash leaves the source in place (never a loss)."""

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``."""

    def check(self) -> None:
        """Raise ``StorageUnavailable`` if the backend cannot be reached (``/readyz``)."""

    def origin_path(self, key: str) -> str:
        """Path (and query) under the NGINX storage origin that serves ``key``: a folder path for the local
        backend, a presigned path-style URL path + query for S3."""
