"""Releasing a quarantined file: an administrator decided it may be stored; it goes through indexing and the
catalog like any upload (the hooks already judged it, the admin overrode them), and leaves quarantine only once
the released copy is durable and visible."""

from __future__ import annotations

import io
import tempfile
from itertools import islice
from pathlib import Path
from typing import Any

from PIL import ImageDraw

from gateway.errors import FrameNotFound, NotAcceptable, NotFound
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


def preview(services: Services, key: str, frame: int) -> bytes:
    """Frame ``frame`` (1-based) of a quarantined file as a PNG, the recorded text regions outlined in red."""
    from gateway.phi.pixelfile import CannotClean, PixelFile
    from gateway.phi.pixels import ocr_image

    record = services.catalog.get_quarantine(key)
    if record is None:
        raise NotFound("no such quarantined object")
    regions = ((record.get("report") or {}).get("pixels") or {}).get("regions") or []
    with tempfile.TemporaryDirectory(dir=services.spool_dir) as tmp:
        local = Path(tmp) / "preview.dcm"
        services.storage.download(key, local)
        try:
            file = PixelFile.open(local, max_frames=1_000_000)
            if not 1 <= frame <= file.frames:
                raise FrameNotFound(f"frame {frame} is outside 1..{file.frames}")
            [pixels] = islice(file.read_frames(), frame - 1, frame)
        except (CannotClean, ValueError) as exc:
            raise NotAcceptable(f"cannot render this file: {exc}") from None
    image = ocr_image(pixels, file.decoded_photometric).convert("RGB")
    draw = ImageDraw.Draw(image)
    for box in regions:
        left, top = int(box["left"]), int(box["top"])
        draw.rectangle((left, top, left + int(box["width"]) - 1, top + int(box["height"]) - 1), outline=(255, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
