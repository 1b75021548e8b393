"""Storage backends behind one Protocol (``base.Storage``)."""

from __future__ import annotations

from gateway.storage.base import Storage, StoredObject

__all__ = ["Storage", "StoredObject", "open_storage"]


def open_storage(url: str, *, create: bool = False) -> Storage:
    """``file:///abs/dir`` or ``s3://bucket/prefix`` (endpoint from ``AWS_ENDPOINT_URL`` when set). ``create``: make
    a local folder that is missing (start-up only, ``gateway.startup``); a bucket is never created."""
    if url.startswith("file://"):
        from gateway.storage.local import LocalStorage

        return LocalStorage(url, create=create)
    if url.startswith("s3://"):
        from gateway.storage.s3 import S3Storage

        return S3Storage(url)
    raise ValueError(f"unsupported storage URL scheme: {url.split(':', 1)[0]}")
