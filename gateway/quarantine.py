"""Releasing a quarantined file: an administrator decided it may be stored; it goes through indexing and the
catalog like any upload (the hooks already judged it, the admin overrode them), and leaves quarantine only once
the released copy is durable and visible."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from gateway.errors import NotFound
from gateway.hooks import UploadContext
from gateway.ingest import Ingestor
from gateway.services import Services


def release(services: Services, key: str) -> dict[str, Any]:
    if services.catalog.get_quarantine(key) is None:
        raise NotFound("no such quarantined object")
    ingestor = Ingestor(
        services.settings, services.storage, services.catalog, [], spool_dir=services.spool_dir
    )
    with tempfile.TemporaryDirectory(dir=services.spool_dir) as tmp:
        local = Path(tmp) / "released.dcm"
        services.storage.download(key, local)
        result = ingestor.ingest(local, UploadContext(source="cli", sub="api-key"))
    if result.ok:
        services.storage.delete(key)
        services.catalog.remove_quarantine(key)
    return {"status": result.status, "sop_uid": result.sop_uid, "detail": result.detail}
