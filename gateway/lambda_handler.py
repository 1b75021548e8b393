"""The AWS Lambda entry points: direct-to-bucket uploads (terraform/lambda.tf: ``gateway.lambda_handler.handler``) and
the scheduled retention run (terraform/retention.tf: ``gateway.lambda_handler.retention``).

Thin on purpose: it reads the settings once per Lambda container (secrets from Secrets Manager), builds the
gateway's own ingest, and hands each S3 event to ``gateway.phi.s3event.handle_event``, the code
``dicom-gateway hooks run-incoming`` runs too (`docs/design.md` §7).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import boto3

from gateway.config import Settings
from gateway.phi.s3event import IngestorLike, handle_event, s3_client
from gateway.services import Services


def make_ingestor(settings: Settings) -> IngestorLike:
    """The gateway's own ingest (storage, catalog and the same hook chain as STOW-RS). One file at a time, in
    this process: no ingest process pool (Lambda has no shared memory for one, and one file gains nothing)."""
    return Services.build(settings.with_changes(ingest_processes=0)).ingestor


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
    return handle_event(event, settings, ingestor or make_ingestor(settings), s3 or s3_client())


def retention(event: Mapping[str, Any], context: Any = None, *, settings: Settings | None = None) -> dict[str, Any]:
    """EventBridge schedule entry point: ``dicom-gateway retention run`` once (``gateway.retention``)."""
    from gateway.retention import run

    return run(settings or _default_settings(), dry_run=False)


def derive_handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """SQS entry point of the derivative Lambda (terraform/derive.tf): each message names one instance whose
    lossless derivative ``gateway.derive`` makes; failed messages are reported back for SQS to retry."""
    from gateway.catalog import Catalog
    from gateway.derive import handle_sqs
    from gateway.storage import open_storage

    settings = _default_settings()
    return handle_sqs(event, open_storage(settings.storage_url), Catalog(settings.database_url))
