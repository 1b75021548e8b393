"""Lossless per-frame derivatives for slow networks, made after the STOW answer (`docs/design.md` §3).

Each frame of a monochrome instance (8 or 16 bits allocated) is encoded to HTJ2K Lossless RPCL
(1.2.840.10008.1.2.4.202: reversible 5/3 wavelet, RPCL progression, TLM markers, one tile-part per resolution),
which a progressive decoder paints from its first bytes. The codestreams are stored back to back as one object
under the instance's storage prefix, with their own frame index; only once it is wholly stored is it published, in
one catalog UPDATE guarded by the original's sha256 (a replaced instance never gets a stale derivative). Every
frame is decoded again and compared with the stored words before anything is stored: a derivative that would not
give back the exact pixels is never written.

Native little-endian frames are read as stored words. Frames in a lossless compressed syntax (JPEG Lossless, JPEG-LS
lossless, RLE, JPEG 2000 lossless), big-endian or deflated are decoded by pydicom (with ``gateway.dicom.codecs``),
so the derivative holds pydicom's pixel values. Lossy sources get none: their pixels re-encoded losslessly come
out larger than the source. A source that does not decode is skipped at once (a log line, no retry).

The encoder is OpenJPH through imagecodecs (a maintained binary wheel; see README "Mobile delivery").

Jobs come from a queue: the catalog's job table, polled by ``python -m gateway.derive`` (the stack and
docker-compose run it), or SQS feeding ``gateway.lambda_handler.derive_handler`` on AWS. A failed attempt is
retried with back-off up to ``MAX_ATTEMPTS``; an attempt that crashed is retried once its lease ends.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import signal
import tempfile
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import urlsplit

import imagecodecs
import numpy as np
import pydicom
from pydicom import uid
from pydicom.encaps import encapsulate
from pydicom.pixels import iter_pixels, pixel_array

from gateway.catalog import Catalog
from gateway.catalog.derivatives import DeriveJob
from gateway.config import Settings
from gateway.dicom import codecs
from gateway.dicom.converted import CONVERTED_SYNTAXES
from gateway.dicom.frames import FrameIndex
from gateway.dicom.index import DEFLATED_LE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from gateway.dicom.model import MAX_DECODED_PIXELS, IndexedInstance, PixelFormat
from gateway.dicomweb.wado import DERIVATIVE_TS
from gateway.errors import CatalogUnavailable, ConfigError, DicomError, GatewayError
from gateway.spool import spool_prefix, sweep_spool
from gateway.storage import Storage, open_storage

log = logging.getLogger(__name__)
codecs.register()  # pydicom decodes JPEG Lossless and JPEG-LS through imagecodecs here

MAX_ATTEMPTS = 3
LEASE_SECONDS = 300  # an encode that has not finished by then is taken to have crashed
POLL_SECONDS = 0.5
_NATIVE_SYNTAXES = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
# Frames that decode to exactly the values they were made from. Not JPEG Baseline/Extended, JPEG 2000 (.91),
# JPEG-LS near-lossless: lossy; nor HTJ2K: already what the derivative is (and .203 may be lossy).
_LOSSLESS_SYNTAXES = frozenset(
    {uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.RLELossless, uid.JPEG2000Lossless}
)
_DTYPES: dict[tuple[int, int], np.dtype[Any]] = {
    (8, 0): np.dtype("u1"),
    (16, 0): np.dtype("<u2"),
    (16, 1): np.dtype("<i2"),
}


class DeriveQueue(Protocol):
    def enqueue(self, sop_uid: str) -> None:
        """Ask for the derivative of a committed instance; never raises (the original stays servable)."""


class CatalogQueue:
    """The local queue: a row in the catalog's job table."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def enqueue(self, sop_uid: str) -> None:
        try:
            self.catalog.enqueue_derivative(sop_uid)
        except CatalogUnavailable:
            log.warning("derivative not queued: catalog unavailable", extra={"sop_uid": sop_uid})


class SqsQueue:
    """The AWS queue: one SQS message per instance (terraform/derive.tf)."""

    def __init__(self, url: str, client: Any = None) -> None:
        import boto3
        from botocore.config import Config

        self.url = url
        # Sent inside the STOW request: an SQS outage must cost seconds, not botocore's default minutes.
        quick = Config(connect_timeout=2, read_timeout=2, retries={"max_attempts": 2, "mode": "standard"})
        self.client = client or boto3.client("sqs", config=quick, **sqs_endpoint(url))

    def enqueue(self, sop_uid: str) -> None:
        try:
            self.client.send_message(QueueUrl=self.url, MessageBody=json.dumps({"sop_uid": sop_uid}))
        except Exception:  # noqa: BLE001 - any AWS failure: the upload stands, only its derivative is missing
            log.warning("derivative not queued: SQS unavailable", extra={"sop_uid": sop_uid})


def sqs_endpoint(url: str) -> dict[str, str]:
    """The endpoint and region a queue URL names (``https://sqs.eu-central-1.amazonaws.com/ACCOUNT/NAME``), so the
    client needs neither AWS_REGION nor AWS_DEFAULT_REGION (without one, every gunicorn worker died at start-up in
    botocore's NoRegionError) and never follows AWS_ENDPOINT_URL, which names the S3-compatible storage. Another
    SQS-compatible server (ElasticMQ, moto) takes any region: boto3's own (AWS_DEFAULT_REGION, a profile's), else
    us-east-1."""
    parts = urlsplit(url)
    named = _AWS_SQS_HOST.fullmatch(parts.hostname or "")
    if named:
        region = named.group(1) or named.group(2) or "us-east-1"
    else:
        import boto3

        region = boto3.session.Session().region_name or "us-east-1"  # the environment's, as boto3 reads it
    return {"endpoint_url": f"{parts.scheme}://{parts.netloc}", "region_name": region}


# sqs.REGION.amazonaws.com[.cn], and the legacy REGION.queue.amazonaws.com (queue.amazonaws.com: us-east-1)
_AWS_SQS_HOST = re.compile(r"(?:sqs\.([a-z0-9-]+)|([a-z0-9-]+)\.queue|queue)\.amazonaws\.com(?:\.cn)?")


class Offering:
    """What ingest asks once per committed upload: queue the instance if it can have a derivative. With the local
    queue, ingest writes the job in the registration's own transaction (``in_catalog``); otherwise it calls
    ``offer`` after the commit."""

    def __init__(self, queue: DeriveQueue) -> None:
        self.queue = queue
        self.in_catalog = isinstance(queue, CatalogQueue)

    @staticmethod
    def wants(indexed: IndexedInstance) -> bool:
        """Whether the instance's frames are served one by one in a syntax we derive from, and its pixels are
        monochrome 8 or 16-bit words as far as ingest read them (the worker checks the file again)."""
        pixels = indexed.pixel_format
        if pixels is not None and _word_type(pixels) is None:
            return False  # colour, 32-bit...: the worker would read the whole object only to skip it
        syntax, index = indexed.transfer_syntax_uid, indexed.frame_index
        if syntax in _NATIVE_SYNTAXES:
            return index is not None and index[:1] == b"\x00"  # native frames as byte ranges
        if syntax in CONVERTED_SYNTAXES:
            return indexed.number_of_frames > 0  # frames converted on request
        return syntax in _LOSSLESS_SYNTAXES and index is not None

    def offer(self, indexed: IndexedInstance) -> None:
        if self.wants(indexed):
            self.queue.enqueue(indexed.ids.sop)


def open_offering(settings: Settings, catalog: Catalog) -> Offering | None:
    if not settings.derivatives:
        return None
    if settings.derive_queue_url:
        return Offering(SqsQueue(settings.derive_queue_url))
    return Offering(CatalogQueue(catalog))


def derivative_key(storage_key: str, sha256: str) -> str:
    """Under the instance's own prefix (``.../instances/{sop}/``), so deleting the instance's prefix removes it;
    named by the original's digest, so a retry rewrites the same object and a replaced instance gets another."""
    stem = storage_key[: -len(".dcm")] if storage_key.endswith(".dcm") else storage_key
    return f"{stem}/htj2k-{sha256[:16]}.j2c"


class Undecodable(Exception):
    """pydicom could not decode the source's pixel data: retrying gives the same answer."""


def _word_type(pixels: PixelFormat) -> np.dtype[Any] | None:
    """The stored word type of a monochrome sample we encode; None for colour, 32-bit, signed 8-bit..."""
    if pixels.samples_per_pixel != 1 or pixels.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    return _DTYPES.get((pixels.bits_allocated, pixels.pixel_representation))


def _pixel_layout(ds: pydicom.Dataset) -> tuple[int, int, np.dtype[Any]] | None:
    """(rows, columns, stored word type) of a monochrome frame we can encode (``MAX_DECODED_PIXELS`` at most),
    else None."""
    dtype = _word_type(
        PixelFormat(
            int(ds.get("SamplesPerPixel", 1)),
            str(ds.get("PhotometricInterpretation", "")),
            int(ds.get("BitsAllocated", 0)),
            int(ds.get("PixelRepresentation", 0)),
        )
    )
    rows, columns = int(ds.Rows), int(ds.Columns)
    if dtype is None or rows * columns > MAX_DECODED_PIXELS:  # a compressed frame of that size: a memory bomb
        return None
    return rows, columns, dtype


def encode_frame(words: np.ndarray[Any, Any]) -> bytes:
    """One frame's HTJ2K Lossless RPCL codestream; raises if decoding it does not give back ``words`` exactly."""
    code = bytes(imagecodecs.htj2k_encode(words, reversible=True, tlm=True, tilepart=True))
    back = imagecodecs.htj2k_decode(code)
    if back.dtype != words.dtype or back.shape != words.shape or not np.array_equal(back, words):
        raise DicomError("the HTJ2K round trip changed the pixels")
    return code


def encode_instance(source: Path, frames: FrameIndex, target: Path) -> FrameIndex | None:
    """Write every frame of ``source`` as HTJ2K codestreams to ``target``; their index, or None when the instance
    is not one we derive (colour, 32-bit, signed 8-bit...)."""
    layout = _pixel_layout(pydicom.dcmread(source, stop_before_pixels=True))
    if layout is None:
        return None
    rows, columns, dtype = layout
    if frames.total_length(1) != rows * columns * dtype.itemsize:
        return None
    fragments: list[tuple[int, int]] = []
    with source.open("rb") as src, target.open("wb") as out:
        for n in range(1, frames.count + 1):
            ((offset, length),) = frames.ranges(n)
            src.seek(offset)
            raw = src.read(length)
            if len(raw) != length:
                raise DicomError("the stored object is shorter than its frame index")
            code = encode_frame(np.frombuffer(raw, dtype=dtype).reshape(rows, columns))
            fragments.append((out.tell(), len(code)))
            out.write(code)
    return FrameIndex.encapsulated(fragments, range(len(fragments)))


def _read_frame(src: BinaryIO, frames: FrameIndex, n: int) -> bytes:
    """Frame ``n``'s codestream: its fragments' values, where the frame index made at ingest has them."""
    parts = []
    for offset, length in frames.ranges(n):
        src.seek(offset)
        parts.append(src.read(length))
        if len(parts[-1]) != length:
            raise DicomError("the stored object is shorter than its frame index")
    return b"".join(parts)


def _decoded_frames(source: Path, header: pydicom.Dataset, frames: FrameIndex | None) -> Iterator[np.ndarray[Any, Any]]:
    """Each frame of ``source`` as pydicom decodes it, in one pass over the file: frame n is never looked for
    again from the first fragment (``pixel_array(path, index=n)`` did: quadratic in the frames). A compressed
    source's frames are read by the frame index and each is decoded as a one-frame data set (pydicom 3.0.2's
    ``iter_pixels`` fails on a JPEG 2000 frame it must sign-correct: a read-only array); pydicom finds the frames
    of a big-endian one itself, and reads a deflated one only whole."""
    if frames is None:
        yield from iter_pixels(pydicom.dcmread(source) if header.file_meta.TransferSyntaxUID == DEFLATED_LE else source)
        return
    one = header  # the header without its pixels: each frame goes in as its only frame
    for tag in (0x7FE00001, 0x7FE00002, 0x00280008):  # Extended Offset Table (and lengths), Number of Frames
        one.pop(tag, None)
    with source.open("rb") as src:
        for n in range(1, frames.count + 1):
            one.add_new(0x7FE00010, "OB", encapsulate([_read_frame(src, frames, n)]))
            yield pixel_array(one)


def encode_decoded(source: Path, count: int, target: Path, frames: FrameIndex | None = None) -> FrameIndex | None:
    """As ``encode_instance``, for a source whose frames pydicom decodes (compressed, big-endian, deflated): each
    of its ``count`` frames as pydicom's pixel array, in the stored word type; ``frames``, a compressed source's
    frame index. None when the instance is not one we derive; raises ``Undecodable`` when pydicom cannot decode
    it."""
    try:
        header = pydicom.dcmread(source, stop_before_pixels=True)
        layout = _pixel_layout(header)
        if layout is None or int(header.get("NumberOfFrames") or 1) != count:
            return None
    except Exception as error:  # noqa: BLE001 - ingest read it: whatever fails here fails again
        raise Undecodable(type(error).__name__) from error
    rows, columns, dtype = layout
    fragments: list[tuple[int, int]] = []
    # a generator (typed as an Iterator): closing it closes the file it opened, also when it has frames past count
    decoded = cast("Generator[np.ndarray[Any, Any], None, None]", _decoded_frames(source, header, frames))
    with closing(decoded), target.open("wb") as out:
        for _ in range(count):
            try:
                frame = next(decoded)
            except Exception as error:  # noqa: BLE001 - a codestream its decoder refuses, a missing decoder...
                raise Undecodable(type(error).__name__) from error
            # big-endian words, or 8-bit samples in 16 bits allocated, become the stored type; never a narrowing
            if frame.shape != (rows, columns) or not np.can_cast(frame.dtype, dtype, casting="safe"):
                return None
            code = encode_frame(np.ascontiguousarray(frame, dtype=dtype))
            fragments.append((out.tell(), len(code)))
            out.write(code)
    return FrameIndex.encapsulated(fragments, range(len(fragments)))


def _frame_count(row: Any) -> int | None:
    """How many frames the instance serves, if it is one we derive from; else None."""
    syntax = row.transfer_syntax_uid
    if syntax in CONVERTED_SYNTAXES:
        return int(row.number_of_frames) or None
    if not row.frame_index or syntax not in (*_NATIVE_SYNTAXES, *_LOSSLESS_SYNTAXES):
        return None
    frames = FrameIndex.unpack(row.frame_index)
    if (frames.kind == 0) != (syntax in _NATIVE_SYNTAXES):
        return None
    return frames.count


def derive(sop_uid: str, storage: Storage, catalog: Catalog, tmp_dir: str | None = None) -> str:
    """Make and publish one instance's derivative; returns what happened (``published``, ``not_eligible``,
    ``undecodable``, ``gone``, ``replaced``, ``exists``). Raises on failure (the caller retries)."""
    row = catalog.get_instance(sop_uid)
    if row is None:
        return "gone"
    if row.derivative_key:
        return "exists"
    count = _frame_count(row)
    # the catalog's metadata says colour or 32-bit without a storage read (a job an older version queued);
    # the stored file's own header decides the rest
    pixels = PixelFormat.of(row.metadata_json())
    if count is None or (pixels is not None and _word_type(pixels) is None):
        return "not_eligible"
    # named for this process, so that what a worker killed mid-encode left (a copy of the instance) is swept
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix=spool_prefix("derive")) as work:
        source, target = Path(work) / "source.dcm", Path(work) / "derived.j2c"
        storage.download(row.storage_key, source)
        try:
            frames = FrameIndex.unpack(row.frame_index) if row.frame_index else None  # (_frame_count checked it)
            if row.transfer_syntax_uid in _NATIVE_SYNTAXES and frames is not None:
                index = encode_instance(source, frames, target)
            else:
                index = encode_decoded(source, count, target, frames)
        except Undecodable as error:
            # the exception's type only: a message may quote the data set's values
            log.warning(
                "derivative skipped: pydicom cannot decode the pixel data (%s); the original is served",
                error,
                extra={"sop_uid": sop_uid},
            )
            return "undecodable"
        if index is None:
            return "not_eligible"
        key = derivative_key(row.storage_key, row.sha256)
        storage.put_file(key, target)
    if not catalog.publish_derivative(sop_uid, row.sha256, syntax=DERIVATIVE_TS, key=key, frame_index=index.pack()):
        storage.delete(key)  # the instance was deleted or replaced meanwhile
        return "replaced"
    return "published"


def run_job(job: DeriveJob, storage: Storage, catalog: Catalog, tmp_dir: str | None = None) -> str:
    try:
        outcome = derive(job.sop_uid, storage, catalog, tmp_dir)
    except Exception as error:  # noqa: BLE001 - any failure of one encode: record, back off, retry
        detail = f"{type(error).__name__}: {error}"[:300]
        retry_at = int(time.time()) + 2**job.attempts
        catalog.fail_derivative(job, detail, retry_at)
        final = " (giving up; the original is served)" if job.attempts >= MAX_ATTEMPTS else ""
        log.warning("derivative attempt %d failed%s", job.attempts, final, extra={"sop_uid": job.sop_uid})
        return "failed"
    catalog.finish_derivative(job)
    log.info("derivative %s", outcome, extra={"sop_uid": job.sop_uid})
    return outcome


def work(settings: Settings, stop: threading.Event, *, once: bool = False) -> int:
    """Poll the job table until ``stop`` (or, with ``once``, until nothing is due); returns the jobs run."""
    storage = open_storage(settings.storage_url)
    catalog = Catalog(settings.database_url)
    catalog.require_current_schema()
    sweep_spool(Path(settings.tmp_dir or tempfile.gettempdir()))  # what a worker killed before this one left
    done = 0
    while not stop.is_set():
        try:
            job = catalog.claim_derivative(lease=LEASE_SECONDS, max_attempts=MAX_ATTEMPTS)
        except CatalogUnavailable:
            job = None
        if job is None:
            if once:
                break
            stop.wait(POLL_SECONDS)
            continue
        try:
            run_job(job, storage, catalog, settings.tmp_dir or None)
        except CatalogUnavailable:
            # The outcome could not be recorded: the job's lease brings it back; a database blip never ends the
            # worker (under `stack up` that stopped every process).
            log.warning("catalog unavailable; the job is retried when its lease ends", extra={"sop_uid": job.sop_uid})
            stop.wait(POLL_SECONDS)
        done += 1
    return done


def handle_sqs(event: Mapping[str, Any], storage: Storage, catalog: Catalog) -> dict[str, Any]:
    """An SQS batch (Lambda event source with ReportBatchItemFailures): failed messages go back to the queue,
    which retries them and moves them to its dead-letter queue after ``maxReceiveCount``."""
    failures = []
    for record in event.get("Records", []):
        try:
            derive(str(json.loads(record["body"])["sop_uid"]), storage, catalog)
        except Exception:  # noqa: BLE001 - this message only
            log.warning("derivative attempt failed", exc_info=True)
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


def main() -> None:
    """``python -m gateway.derive``: the local worker (the stack starts it; docker-compose runs it)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s derive %(levelname)s %(message)s")
    # pydicom logs each decoder plugin that fails as an ERROR with its traceback, even when the next one decodes;
    # here the job's own line says what happened to the instance
    logging.getLogger("pydicom.pixels.decoders.base").addFilter(lambda record: record.exc_info is None)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        work(Settings.from_env(), stop)
    except ConfigError as error:  # a bad setting, a catalog not migrated: one line, as gunicorn's (was a traceback)
        raise SystemExit(f"dicom-gateway: {error}") from None
    except GatewayError as error:  # the catalog unreachable at start: compose (or stack up) starts it again
        raise SystemExit(f"dicom-gateway: {error.code}: {error.detail}") from None
    finally:
        gc.freeze()  # no last collection of the whole heap at exit (0.3 s: gateway/gunicorn_worker.py says why)


if __name__ == "__main__":
    main()
