"""Direct-to-bucket uploads: S3 ObjectCreated events on ``incoming/`` run the same hooks and ingest as STOW.

``handler(event, context)`` is the Lambda entry point (or anything that receives S3 event notifications); for
each record it downloads the object to a temp file (streamed), builds an ``UploadContext`` from the object's
metadata (``x-amz-meta-dicomgw-tenant``, ``-region``, ``-sub``), and calls ``Ingestor.ingest(path, context)``,
which runs the hook chain (``Services.build``) and stores the result. The ``incoming/`` object is deleted only
after the ingest reports ``stored``, ``duplicate`` or ``quarantined``, and only if it was not replaced
meanwhile (same ETag); after any failure (including a rejection by the policy) it stays where it is, so
nothing is ever lost.

``run_incoming(settings)`` lists ``incoming/`` and feeds each object to the handler: ``dicom-gateway hooks
run-incoming`` (for deployments without event notifications, and to retry).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
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
    sop_uid: str | None
    detail: str


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


def make_ingestor(settings: Settings) -> IngestorLike:
    """The gateway's own ingest (storage, catalog and the same hook chain as STOW-RS)."""
    from gateway.services import Services

    return Services.build(settings).ingestor


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


_SETTINGS: Settings | None = None


def _resolve_secret_arns(env: Mapping[str, str]) -> dict[str, str]:
    """In Lambda the secrets arrive as ``DICOMGW_<NAME>_SECRET_ARN``: fetch each from Secrets Manager once, so the
    values never sit in the function's configuration."""
    resolved = dict(env)
    arns = {
        k[: -len("_SECRET_ARN")]: v for k, v in env.items() if k.startswith("DICOMGW_") and k.endswith("_SECRET_ARN")
    }
    if arns:
        client = boto3.client("secretsmanager")
        for name, arn in arns.items():
            if not resolved.get(name):
                resolved[name] = client.get_secret_value(SecretId=arn)["SecretString"]
    return resolved


def _default_settings() -> Settings:
    global _SETTINGS  # read once per process (a Lambda container), as gunicorn does at start-up
    if _SETTINGS is None:
        _SETTINGS = Settings.from_env(_resolve_secret_arns(os.environ))
    return _SETTINGS


def s3_client() -> Any:
    """A client for the storage endpoint (``AWS_ENDPOINT_URL`` is honoured by boto3 itself)."""
    return boto3.client("s3")


def handler(
    event: Mapping[str, Any],
    context: Any = None,
    *,
    settings: Settings | None = None,
    ingestor: IngestorLike | None = None,
    s3: Any = None,
) -> dict[str, Any]:
    """S3 event entry point. Returns ``{"results": [IncomingResult as dict, ...]}``; never raises per
    object."""
    settings = settings or _default_settings()
    ingestor = ingestor or make_ingestor(settings)
    s3 = s3 or s3_client()
    results = [process_object(s3, bucket, key, settings, ingestor) for bucket, key in _records(event)]
    return {"results": [result.to_dict() for result in results]}


def run_incoming(settings: Settings, *, ingestor: IngestorLike | None = None, s3: Any = None) -> list[IncomingResult]:
    """List ``incoming/`` under the storage prefix and hand each object to ``handler``, oldest key order."""
    bucket, prefix = _split_storage(settings.storage_url)
    ingestor = ingestor or make_ingestor(settings)
    s3 = s3 or s3_client()
    results: list[IncomingResult] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + INCOMING):
        for entry in page.get("Contents", []):
            key = quote_plus(entry["Key"], safe="/")  # encoded as S3 encodes keys in event notifications
            event = {"Records": [{"s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}
            for result in handler(event, None, settings=settings, ingestor=ingestor, s3=s3)["results"]:
                results.append(IncomingResult(**result))
    return results
