"""Releasing a quarantined file: an administrator decided it may be stored; it goes through indexing and the
catalog like any upload (the hooks already judged it, the admin overrode them), and leaves quarantine only once
the released copy is durable and visible."""

from __future__ import annotations

import io
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import ImageDraw
from pydicom.uid import UID

from gateway.catalog.deletions import Target
from gateway.errors import Conflict, FrameNotFound, NotAcceptable, NotFound, UploadInProgress
from gateway.hooks import Hook, HookOutcome, UploadContext
from gateway.ingest import OUT_OF_RESOURCES, Ingestor, IngestResult
from gateway.services import Services
from gateway.spool import spool_folder, spool_unavailable
from gateway.storage import Storage, open_storage


def held_in(services: Services, record: dict[str, Any], *, removal: bool = False) -> Storage:
    """The storage holding a quarantined file: its record's destination (where the policy let identifiable data
    of the upload's region be), or the default storage (a record without one, as every record before 0015).
    A destination the policy no longer names is a Conflict (409) for a preview or a release, which would judge
    the file by a policy that no longer knows its place; a ``removal`` reaches the file in the storage its record
    names (migration 0019), which an administrator must be able to delete whatever the policy says now."""
    name = record.get("destination")
    if not name:
        return services.storage
    storage = services.ingestor.destinations.get(name)
    if storage is not None:
        return storage
    url = record.get("storage")
    if removal and url:
        return services.storage if url == services.storage.url else open_storage(url)
    raise Conflict(
        f"the file is held in destination {name!r}, which this gateway's policy no longer names"
        + ("" if removal else ": it can be deleted, not previewed or released")
        + (": name the destination in the policy again to delete it" if removal else "")
    )


def remove(services: Services, key: str) -> None:
    """Delete a quarantined file and its record (NotFound if there is none), wherever it is held."""
    record = services.catalog.get_quarantine(key)
    if record is None:
        raise NotFound("no such quarantined object")
    held_in(services, record, removal=True).delete(key)
    services.catalog.remove_quarantine(key)


def _copy_to_spool(storage: Storage, key: str, local: Path) -> None:
    """The held file copied into the upload spool; the spool full, gone or read-only is the JSON 503 an upload
    meets there (it was a 500 "unexpected server error"), the file still held."""
    try:
        storage.download(key, local)
    except OSError as exc:
        raise spool_unavailable(exc) from None


class _Approved:
    """The hook of a release: the decision ``PhiHook.approve`` made on the held file, handed to the ingest."""

    name = "release"

    def __init__(self, outcome: HookOutcome) -> None:
        self.outcome = outcome

    def __call__(self, path: Path, context: UploadContext, dataset: Any = None) -> HookOutcome:
        return self.outcome


SOURCES: dict[str, Literal["stow", "s3-event", "cli"]] = {"stow": "stow", "s3-event": "s3-event", "cli": "cli"}


def upload_context(record: dict[str, Any]) -> UploadContext:
    """The context of the upload a quarantine record holds (a record made before migration 0015 kept none: no
    tenant, no region, which a policy judges as such, fail closed)."""
    return UploadContext(
        source=SOURCES.get(record.get("source") or "", "cli"),
        sub=record.get("sub") or "api-key",
        tenant=record.get("tenant"),
        region=record.get("region"),
    )


def release(services: Services, key: str, *, sub: str) -> dict[str, Any]:
    """Store a held file as its upload would have been stored with the reviewer's approval: judged by the policy
    with the upload's context (``PhiHook.approve``), then ingested with that context (its tenant's retention) into
    the destination the policy allows. A policy refusal, or the ingest's failure, is a Conflict (409) naming why;
    another upload of the instance in flight is a 503 to retry; the file stays held until the released copy is
    stored (an outage raises, the client retries). A patient erasure or a delete (``sub``: the reviewer's label)
    that removed the held file while its copy was being stored wins: the copy is removed, a Conflict."""
    from gateway.phi.hook import PhiHook

    record = services.catalog.get_quarantine(key)
    if record is None:
        raise NotFound("no such quarantined object")
    storage = held_in(services, record)
    context = upload_context(record)
    policy = next((hook for hook in services.ingestor.hooks if isinstance(hook, PhiHook)), None)
    # named for this process: a worker killed mid-release leaves the held file's copy for the sweep (gateway.spool)
    with spool_folder(services.spool_dir, "release") as tmp:
        local = tmp / "released.dcm"
        _copy_to_spool(storage, key, local)
        hooks: list[Hook] = []
        destination = None
        if policy is not None:
            outcome = policy.approve(local, context)
            if outcome.action != "accept":
                # audited as the upload's decisions are: the file, the rule, the tag paths and why (README)
                services.catalog.add_audit(
                    source=context.source,
                    sub=context.sub,
                    sop_uid=record.get("sop_uid"),
                    study_uid=record.get("study_uid"),
                    decision="release-refused",
                    rule=outcome.audit.get("rule"),
                    destination=outcome.audit.get("destination"),
                    tags=outcome.audit.get("tags", []),
                    policy_version=outcome.audit.get("policy_version"),
                    reason=outcome.reason,
                )
                raise Conflict(f"the policy does not let this file be stored: {outcome.reason}")
            hooks = [_Approved(outcome)]
            destination = outcome.destination
        ingestor = Ingestor(
            services.settings,
            services.storage,
            services.catalog,
            hooks,
            spool_dir=services.spool_dir,
            destinations=services.ingestor.destinations,
        )
        result = ingestor.ingest(local, context)
    if not result.ok and result.failure_reason == OUT_OF_RESOURCES:
        # another upload of the instance held it past the wait: it ends within moments, so a retry goes through
        # (a 409 "retry shortly" told the reviewer the release itself was refused); the file is still held
        raise UploadInProgress(f"the file could not be stored yet: {result.detail}")
    if not result.ok:  # an upload's failure (different bytes under its SOP Instance UID...): still held
        raise Conflict(f"the file could not be stored: {result.detail}")
    storage.delete(key)
    if not services.catalog.remove_quarantine(key):
        _undo(services, result, destination, sub=sub)
        raise Conflict(
            "the held file was removed (a patient erasure or a delete) while it was being released: "
            "the copy stored is removed too"
        )
    return {"status": result.status, "sop_uid": result.sop_uid, "detail": result.detail}


def _undo(services: Services, result: IngestResult, destination: str | None, *, sub: str) -> None:
    """Remove what a release stored after its held file was removed meanwhile. An erasure that planned before the
    copy was registered, and read the held files before the release took its record, erases the held file and
    never sees the copy: left, the patient's data would be served again after their erasure answered. A duplicate
    stored nothing (the instance was there before: the erasure's own plan covers it)."""
    if result.status != "stored" or result.ids is None:
        return
    if result.routed and destination is not None and result.storage_key is not None:
        services.ingestor.destinations[destination].delete(result.storage_key)
        return
    ids = result.ids
    services.deleter().delete(
        [Target(ids.study, ids.series, ids.sop)], sub=sub, reason="released while its held file was removed"
    )


def _other_encoding(local: Path, frame: int) -> tuple[np.ndarray, str] | None:
    """Frame ``frame`` of a file in an encoding the pixel cleaner cannot re-encode (JPEG 2000, JPEG-LS, JPEG
    Lossless, deflated): what goes to review for its encoding, decoded as the rendered endpoints decode a frame,
    and the colour space it comes out in. None for any other file (the cleaner's own reader answers for those)."""
    import pydicom
    from pydicom.encaps import generate_frames
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from gateway.dicom.model import MAX_DECODED_PIXELS
    from gateway.phi.pixelfile import SUPPORTED
    from gateway.phi.scanner import DEFER_SIZE
    from gateway.render import _decode

    ds = pydicom.dcmread(str(local), defer_size=DEFER_SIZE)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax in SUPPORTED or "PixelData" not in ds:
        return None
    if not syntax.is_encapsulated and syntax != DeflatedExplicitVRLittleEndian:
        return None
    if int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) > MAX_DECODED_PIXELS:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise FrameNotFound(f"frame {frame} is outside 1..{frames}")
    if syntax.is_encapsulated:
        [data] = islice(generate_frames(ds.PixelData, number_of_frames=frames), frame - 1, frame)
    else:  # deflated: pydicom inflated the data set; this frame's bytes of its native Pixel Data
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) // 8
        data = bytes(ds.PixelData[(frame - 1) * size : frame * size])
        syntax = UID("1.2.840.10008.1.2.1")  # the inflated data set is Explicit VR Little Endian
    return _decode(data, ds, syntax, "PixelData")


def preview(services: Services, key: str, frame: int) -> bytes:
    """Frame ``frame`` (1-based) of a quarantined file as a PNG, the recorded text regions outlined in red."""
    from gateway.phi.pixelfile import CannotClean, PixelFile
    from gateway.phi.pixels import ocr_image

    record = services.catalog.get_quarantine(key)
    if record is None:
        raise NotFound("no such quarantined object")
    regions = ((record.get("report") or {}).get("pixels") or {}).get("regions") or []
    with spool_folder(services.spool_dir, "release") as tmp:
        local = tmp / "preview.dcm"
        _copy_to_spool(held_in(services, record), key, local)
        try:
            file = PixelFile.open(local, max_frames=1_000_000)
            if not 1 <= frame <= file.frames:
                raise FrameNotFound(f"frame {frame} is outside 1..{file.frames}")
            [pixels] = islice(file.read_frames(), frame - 1, frame)
            photometric = file.decoded_photometric
        except (CannotClean, ValueError) as exc:
            # the files held for their encoding are the ones a reviewer must look at: decoded as for rendering
            try:
                other = _other_encoding(local, frame)
            except (FrameNotFound, NotAcceptable):
                raise
            except Exception:  # noqa: BLE001 - a held file is anything that was uploaded: a 406, never a 500
                other = None
            if other is None:
                raise NotAcceptable(f"cannot render this file: {exc}") from None
            pixels, photometric = other
    image = ocr_image(pixels, photometric).convert("RGB")
    draw = ImageDraw.Draw(image)
    for box in regions:
        left, top = int(box["left"]), int(box["top"])
        draw.rectangle((left, top, left + int(box["width"]) - 1, top + int(box["height"]) - 1), outline=(255, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
