"""Direct-to-bucket uploads: S3 ObjectCreated events on ``incoming/`` run the same hooks and ingest as STOW.

``handle_event(event, settings, ingestor, s3)`` serves the Lambda entry point (``gateway.lambda_handler``) or
anything that receives S3 event notifications: for each record it downloads the object to a temp file
(streamed), builds an ``UploadContext`` from the object's metadata (``x-amz-meta-dicomgw-tenant``, ``-region``,
``-sub``), and calls ``Ingestor.ingest(path, context)``, which runs the hook chain (``Services.build``) and
stores the result. The ``incoming/`` object is deleted only after the ingest reports ``stored``, ``duplicate`` or
``quarantined``, and only if it was not replaced meanwhile (same ETag); after any failure (including a rejection
by the policy) it stays where it is, so nothing is ever lost.

``run_incoming(settings, make_ingestor=...)`` lists ``incoming/`` and feeds each object to ``handle_event``:
``dicom-gateway hooks run-incoming`` (for deployments without event notifications, and to retry).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote_plus, unquote_plus, urlparse

import boto3

from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.hooks import UploadContext

INCOMING = "incoming/"
DONE = ("stored", "duplicate", "quarantined")
META_PREFIX = "dicomgw-"


class IngestResultLike(Protocol):
    status: str  # "stored" | "duplicate" | "failed" | "quarantined"
    detail: str

    @property
    def sop_uid(self) -> str | None: ...


class IngestorLike(Protocol):
    def ingest(self, path: Path, context: UploadContext, expected_study: str | None = None) -> Any: ...


@dataclass(frozen=True)
class IncomingResult:
    bucket: str
    key: str
    status: str  # an ingest status, or "skipped" (not under incoming/) / "failed"
    sop_uid: str | None = None
    detail: str = ""
    deleted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split_storage(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise ConfigError("DICOMGW_STORAGE_URL", "direct uploads (incoming/) need s3:// storage")
    parsed = urlparse(url)
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


def _records(event: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for record in event.get("Records", []):
        s3 = record.get("s3", {})
        bucket = s3.get("bucket", {}).get("name", "")
        key = unquote_plus(s3.get("object", {}).get("key", ""))  # event keys are URL-encoded, "+" = space
        if bucket and key:
            yield bucket, key


def _context(metadata: Mapping[str, str]) -> UploadContext:
    def value(name: str) -> str | None:
        return metadata.get(META_PREFIX + name) or None

    return UploadContext(source="s3-event", sub=value("sub"), tenant=value("tenant"), region=value("region"))


def process_object(s3: Any, bucket: str, key: str, settings: Settings, ingestor: IngestorLike) -> IncomingResult:
    """One ``incoming/`` object: download, ingest (hooks included), delete the source only after success."""
    storage_bucket, prefix = _split_storage(settings.storage_url)
    if bucket != storage_bucket or not key.startswith(prefix + INCOMING) or key.endswith("/"):
        return IncomingResult(bucket, key, "skipped", detail="not an incoming/ object of this gateway")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as exc:
        return IncomingResult(bucket, key, "failed", detail=f"head: {exc.response['Error'].get('Code', '')}")
    handle, name = tempfile.mkstemp(prefix="incoming-", suffix=".dcm", dir=settings.tmp_dir or None)
    os.close(handle)
    path = Path(name)
    try:
        s3.download_file(bucket, key, str(path))
        try:
            result = ingestor.ingest(path, _context(head.get("Metadata", {})))
        except Exception as exc:  # noqa: BLE001 - one bad object must not stop the others; the source stays
            return IncomingResult(bucket, key, "failed", detail=f"ingest: {type(exc).__name__}")
        status = str(result.status)
        outcome = IncomingResult(bucket, key, status, getattr(result, "sop_uid", None), str(result.detail or ""))
        if status not in DONE:
            return outcome
        # Delete only the object we ingested: one replaced meanwhile waits for its own event.
        current = s3.head_object(Bucket=bucket, Key=key)
        if current["ETag"] != head["ETag"]:
            return IncomingResult(bucket, key, status, outcome.sop_uid, "source replaced meanwhile; kept")
        s3.delete_object(Bucket=bucket, Key=key)
        return IncomingResult(bucket, key, status, outcome.sop_uid, outcome.detail, deleted=True)
    except s3.exceptions.ClientError as exc:
        return IncomingResult(bucket, key, "failed", detail=f"s3: {exc.response['Error'].get('Code', '')}")
    finally:
        path.unlink(missing_ok=True)


def s3_client() -> Any:
    """A client for the storage endpoint (``AWS_ENDPOINT_URL`` is honoured by boto3 itself)."""
    return boto3.client("s3")


def handle_event(event: Mapping[str, Any], settings: Settings, ingestor: IngestorLike, s3: Any) -> dict[str, Any]:
    """One S3 event (``gateway.lambda_handler`` is the Lambda entry point). Returns ``{"results": [IncomingResult as
    dict, ...]}``; never raises per object."""
    results = [process_object(s3, bucket, key, settings, ingestor) for bucket, key in _records(event)]
    return {"results": [result.to_dict() for result in results]}


def run_incoming(
    settings: Settings, *, make_ingestor: Callable[[Settings], IngestorLike], s3: Any = None
) -> list[IncomingResult]:
    """List ``incoming/`` under the storage prefix and hand each object to ``handle_event``, oldest key order.
    The ingestor is built (``make_ingestor``) only once the storage is known to be S3."""
    bucket, prefix = _split_storage(settings.storage_url)
    ingestor = make_ingestor(settings)
    s3 = s3 or s3_client()
    results: list[IncomingResult] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + INCOMING):
        for entry in page.get("Contents", []):
            key = quote_plus(entry["Key"], safe="/")  # encoded as S3 encodes keys in event notifications
            event = {"Records": [{"s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}
            for result in handle_event(event, settings, ingestor, s3)["results"]:
                results.append(IncomingResult(**result))
    return results
