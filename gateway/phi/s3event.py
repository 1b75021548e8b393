"""Direct-to-bucket uploads: S3 ObjectCreated events on ``incoming/`` run the same hooks and ingest as STOW.

``handle_event(event, settings, ingestor, s3)`` serves the Lambda entry point (``gateway.lambda_handler``) or
anything that receives S3 event notifications: for each record it downloads the object to a temp file
(streamed), builds an ``UploadContext`` from the object's metadata (``x-amz-meta-dicomgw-tenant``, ``-region``,
``-sub``), and calls ``Ingestor.ingest(path, context)``, which runs the hook chain (``Services.build``) and
stores the result. The ``incoming/`` object is deleted only after the ingest reports ``stored``, ``duplicate`` or
``quarantined``, and only if it was not replaced meanwhile (same ETag); after any failure (including a rejection
by the policy) it stays where it is, so nothing is ever lost. Storage failing at any step (reading the source,
storing, deleting the source) is that object's result, with the step and the error's code, never an exception:
one Lambda event or one run answers for every object in it.

``iter_incoming(settings, make_ingestor=...)`` lists ``incoming/`` and feeds each object to ``handle_event``,
yielding each result as it is made: ``dicom-gateway hooks run-incoming`` (for deployments without event
notifications, and to retry) prints each at once, so a run killed half-way has said what it did.
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
import boto3.exceptions
import botocore.exceptions
from botocore.config import Config

from gateway.config import Settings
from gateway.errors import CatalogUnavailable, ConfigError, StorageUnavailable
from gateway.hooks import UploadContext
from gateway.spool import spool_prefix
from gateway.storage.s3 import READ_TIMEOUT

INCOMING = "incoming/"
DONE = ("stored", "duplicate", "quarantined")
META_PREFIX = "dicomgw-"
# What a call to S3 raises: refused or closed connections and timeouts, error answers (SlowDown, AccessDenied, 404),
# and the transfer manager's own (a download whose retries ran out).
S3_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, boto3.exceptions.Boto3Error)
_MISSING = ("404", "NoSuchKey", "NotFound")
GONE = "no longer under incoming/ (already processed, or removed)"
KEPT = "kept for a retry"


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
    outage: bool = False  # storage (or the catalog, or the temporary folder) failed: the next objects would too

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


def _failed(step: str, error: Exception) -> str:
    """``storage: head failed (EndpointConnectionError)``: the step and the error's code or class, never its message
    (botocore's names the endpoint, the bucket and the key)."""
    if isinstance(error, botocore.exceptions.ClientError):
        answer = error.response.get("Error", {}).get("Code") or error.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", ""
        )
        return f"storage: {step} failed ({answer})"
    return f"storage: {step} failed ({type(error).__name__})"


def _missing(error: Exception) -> bool:
    return isinstance(error, botocore.exceptions.ClientError) and (
        str(error.response.get("Error", {}).get("Code", "")) in _MISSING
    )


def process_object(s3: Any, bucket: str, key: str, settings: Settings, ingestor: IngestorLike) -> IncomingResult:
    """One ``incoming/`` object: download, ingest (hooks included), delete the source only after success. Never
    raises for storage: a failure is the object's result, the source kept (or already gone: ``skipped``)."""
    storage_bucket, prefix = _split_storage(settings.storage_url)
    if bucket != storage_bucket or not key.startswith(prefix + INCOMING):
        return IncomingResult(bucket, key, "skipped", detail="not an incoming/ object of this gateway")
    if key.endswith("/"):  # what a console's "Create folder" leaves: no file to ingest, nothing to delete
        return IncomingResult(bucket, key, "skipped", detail="a folder marker (a key ending in /), not a file")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except S3_ERRORS as exc:
        if _missing(exc):  # S3 delivers an event at least once: a second delivery finds the source gone
            return IncomingResult(bucket, key, "skipped", detail=GONE)
        return IncomingResult(bucket, key, "failed", detail=f"{_failed('head', exc)}; {KEPT}", outage=True)
    # named for this process: a run killed here (SIGKILL, SIGTERM, a Lambda's timeout) leaves its copy of the
    # upload for the next run's sweep (gateway.spool), never in the folder for good
    handle, name = tempfile.mkstemp(prefix=spool_prefix("incoming"), suffix=".dcm", dir=settings.tmp_dir or None)
    os.close(handle)
    path = Path(name)
    try:
        try:
            s3.download_file(bucket, key, str(path))
        except S3_ERRORS as exc:
            if _missing(exc):
                return IncomingResult(bucket, key, "skipped", detail=GONE)
            detail = f"{_failed('download', exc)}; {KEPT}"
            return IncomingResult(bucket, key, "failed", detail=detail, outage=True)
        except OSError as exc:  # the temporary folder full or gone
            detail = f"download: {type(exc).__name__}; {KEPT}"
            return IncomingResult(bucket, key, "failed", detail=detail, outage=True)
        try:
            result = ingestor.ingest(path, _context(head.get("Metadata", {})))
        except (StorageUnavailable, CatalogUnavailable) as exc:  # an outage: its detail names no key nor value
            return IncomingResult(bucket, key, "failed", detail=f"ingest: {exc.detail}; {KEPT}", outage=True)
        except Exception as exc:  # noqa: BLE001 - one bad object must not stop the others; the source stays
            return IncomingResult(bucket, key, "failed", detail=f"ingest: {type(exc).__name__}")
        status = str(result.status)
        outcome = IncomingResult(bucket, key, status, getattr(result, "sop_uid", None), str(result.detail or ""))
        if status not in DONE:
            return outcome
        # Delete only the object we ingested: one replaced meanwhile waits for its own event.
        step = "head"
        try:
            current = s3.head_object(Bucket=bucket, Key=key)
            if current["ETag"] != head["ETag"]:
                return IncomingResult(bucket, key, status, outcome.sop_uid, "source replaced meanwhile; kept")
            step = "delete"
            s3.delete_object(Bucket=bucket, Key=key)
        except S3_ERRORS as exc:
            if _missing(exc):  # removed meanwhile (another delivery of its event stored and removed it too)
                return IncomingResult(bucket, key, status, outcome.sop_uid, "the source was removed meanwhile")
            # stored (or held): the next run or event finds the same bytes done and removes the source then
            detail = f"the source could not be removed ({_failed(step, exc)}); the next run removes it"
            return IncomingResult(bucket, key, status, outcome.sop_uid, detail, outage=True)
        return IncomingResult(bucket, key, status, outcome.sop_uid, outcome.detail, deleted=True)
    finally:
        path.unlink(missing_ok=True)


def s3_client() -> Any:
    """A client for the storage endpoint (``AWS_ENDPOINT_URL`` is honoured by boto3 itself), with the storage's
    bounds: boto3's defaults (60 s timeouts, 5 attempts) held a run on a storage that did not answer for minutes
    per call."""
    config = Config(connect_timeout=5, read_timeout=READ_TIMEOUT, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", config=config)


def handle_event(event: Mapping[str, Any], settings: Settings, ingestor: IngestorLike, s3: Any) -> dict[str, Any]:
    """One S3 event (``gateway.lambda_handler`` is the Lambda entry point). Returns ``{"results": [IncomingResult as
    dict, ...]}``; never raises per object."""
    results = [process_object(s3, bucket, key, settings, ingestor) for bucket, key in _records(event)]
    return {"results": [result.to_dict() for result in results]}


def iter_incoming(
    settings: Settings, *, make_ingestor: Callable[[Settings], IngestorLike], s3: Any = None
) -> Iterator[IncomingResult]:
    """List ``incoming/`` under the storage prefix and hand each object to ``handle_event``, in key order, yielding
    each result as it is made. The ingestor is built (``make_ingestor``) only once the storage is known to be S3.
    Raises ``StorageUnavailable`` when ``incoming/`` cannot be listed (every object then stays where it is), and
    after the first result that met an outage: each object after it would wait out the same timeouts (~30 s each
    on a storage that hangs), and stays where it is for the next run instead."""
    bucket, prefix = _split_storage(settings.storage_url)
    ingestor = make_ingestor(settings)
    s3 = s3 or s3_client()
    pages = iter(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + INCOMING))
    while True:
        try:
            page = next(pages, None)
        except S3_ERRORS as exc:
            detail = f"cannot list incoming/ ({_failed('list', exc)})"
            raise StorageUnavailable(f"{detail}; everything under incoming/ stays there for the next run") from None
        if page is None:
            return
        for entry in page.get("Contents", []):
            key = quote_plus(entry["Key"], safe="/")  # encoded as S3 encodes keys in event notifications
            event = {"Records": [{"s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}
            for result in handle_event(event, settings, ingestor, s3)["results"]:
                yield IncomingResult(**result)
                if result["outage"]:
                    raise StorageUnavailable(
                        "the run stopped at an outage (its last result says which); what is left under incoming/ "
                        "stays there for the next run"
                    )


def run_incoming(
    settings: Settings, *, make_ingestor: Callable[[Settings], IngestorLike], s3: Any = None
) -> list[IncomingResult]:
    """``iter_incoming``'s results, all of them."""
    return list(iter_incoming(settings, make_ingestor=make_ingestor, s3=s3))
