"""The ingest pipeline: one spooled file in, one durable, indexed, visible instance out (or a clear failure).

Order matters (`docs/design.md` §3-§5): read the UIDs; run the hook chain (PHI scan and policy: it may reject,
quarantine, de-identify or route); index the final file (frame and bulkdata ranges, metadata, QIDO attributes);
store it durably; only then commit the catalog row that makes it visible. A crash between store and commit
leaves an invisible object that ``dicom-gateway reconcile`` registers or removes. The same bytes again are a
success without a duplicate; different bytes under a known SOP Instance UID fail unless overwrite is enabled.

Two halves: ``analyse`` is the CPU work on the spooled file (index, checks, hooks, digest; no catalog, no
storage), run in a pool of processes (``DICOMGW_INGEST_PROCESSES``) so one request's files use every core (the
GIL caps threads); ``Ingestor._store``/``_commit`` then store and register in the request's process. The commit
point, the one place an instance becomes visible, is the group commit (``gateway.catalog.groupcommit``) in
``Ingestor._commit``: uploads that reach it together share one catalog transaction.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gateway.catalog import Catalog
from gateway.catalog.admin import Reservation
from gateway.catalog.catalog import OTHER_PATIENT, Registration
from gateway.catalog.groupcommit import GroupCommit, describe, is_outage
from gateway.catalog.records import InstanceRecord
from gateway.config import Settings
from gateway.dicom.index import index_file, named_uids, read_instance
from gateway.dicom.model import IndexedInstance
from gateway.errors import (
    CatalogUnavailable,
    Conflict,
    DicomError,
    PatientMismatch,
    ReservationLost,
    SeriesInOtherStudy,
    StorageUnavailable,
)
from gateway.hooks import Hook, HookOutcome, UploadContext
from gateway.metrics import INGESTED
from gateway.phi.deidentify import identifier_digest
from gateway.processpool import PoolBroken, ProcessPool
from gateway.scope import Scope
from gateway.spool import sweep_spool
from gateway.storage import Storage
from gateway.uids import InstanceId

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from gateway.derive import Offering

log = logging.getLogger("gateway.ingest")

# PS3.4 Table GG.4-1 / PS3.18 10.5.3 failure reasons
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
STUDY_MISMATCH = 0xC409  # Referenced Study Instance UID does not match the target resource
DUPLICATE_DIFFERENT = 0x0111  # Duplicate SOP Instance (with different content)
QUARANTINED = 0xC4F0  # implementation-specific (gateway.dicomweb.stow_response): held by the data policy
PATIENT_MISMATCH = 0xA778  # the study holds another patient's instances (the code dcm4chee-arc uses)
COERCED = 0xB000  # Warning: Coercion of Data Elements (PS3.4 Table B.2-1): a hook rewrote the file (de-identified)
# The ingest audit's decision for an instance refused as outside the uploading token's scope (README, HTTP API)
OUT_OF_SCOPE = "out-of-scope"

# How long an upload waits for another upload of the same instance to end before it answers 0xA700 (see
# ``Ingestor._reserve``): a commit takes milliseconds; a killed holder's reservation is taken over at once.
RESERVATION_WAIT_SECONDS = 10.0

Status = Literal["stored", "duplicate", "failed", "quarantined"]


@dataclass
class IngestResult:
    status: Status
    ids: InstanceId | None = None  # of a file that could not be read: what it names (``refused``), or None
    sop_class_uid: str | None = None
    failure_reason: int | None = None
    warning_reason: int | None = None
    sent_sop_uid: str | None = None  # the SOP Instance UID as uploaded, when a hook stored it under another
    detail: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    storage_key: str | None = None
    routed: bool = False  # stored in another destination by policy: that region's gateway serves it, not this one
    out_of_scope: bool = False  # refused as outside the uploading token's scope (an audit record: ``_ingest``)

    @property
    def sop_uid(self) -> str | None:
        return self.ids.sop if self.ids is not None else None

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "duplicate")

    @classmethod
    def refused(cls, path: Path, detail: str) -> IngestResult:
        """A file that could not be read as DICOM (0xC000), naming the instance it claims to be where its UIDs
        can be read (``named_uids``), so the client can tell which of its files failed."""
        ids, sop_class_uid = named_uids(path)
        return cls("failed", ids=ids, sop_class_uid=sop_class_uid, failure_reason=CANNOT_UNDERSTAND, detail=detail)

    @classmethod
    def out_of_resources(cls, path: Path, detail: str) -> IngestResult:
        """A file not stored for an outage (0xA700: storage or catalog full or down), naming the instance the
        file says it is, so the client knows which of its files to send again."""
        ids, sop_class_uid = named_uids(path)
        return cls("failed", ids=ids, sop_class_uid=sop_class_uid, failure_reason=OUT_OF_RESOURCES, detail=detail)

    @classmethod
    def about(cls, header: Header, status: Status, **fields: Any) -> IngestResult:
        """A result naming the instance ``header`` describes."""
        return cls(status, ids=header.ids, sop_class_uid=header.sop_class_uid, **fields)


@dataclass(frozen=True)
class Header:
    ids: InstanceId
    sop_class_uid: str
    # the patient the file names as uploaded (Patient ID, Issuer of Patient ID; "" when none): a quarantine record
    # keeps them, so a patient erasure finds held files without a stored study. Out of repr: PHI stays out of logs
    patient: tuple[str, str] = field(default=("", ""), repr=False)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Analysis:
    """What ``analyse`` found in a file the hooks accepted, rejected or quarantined (picklable: it may come
    from a pool process). When accepted, ``indexed`` and ``digest`` describe ``path`` (the hooks' output)."""

    header: Header
    outcome: HookOutcome
    path: Path
    indexed: IndexedInstance | None = None
    digest: str = ""


def run_hooks(
    hooks: list[Hook], path: Path, context: UploadContext, dataset: Dataset | None = None
) -> tuple[HookOutcome, Path]:
    """The chain on ``path``; ``dataset`` (pydicom's reading of ``path``) goes to each hook until one rewrites
    the file."""
    current = path
    merged = HookOutcome(path=path)
    for hook in hooks:
        outcome = hook(current, context, dataset if current == path else None)
        if outcome.path is not None and outcome.path != current:
            if current != path:
                current.unlink(missing_ok=True)
            current = outcome.path
        merged.audit.update(outcome.audit)
        merged.report.update(outcome.report)
        merged.destination = outcome.destination or merged.destination
        if outcome.action != "accept":
            merged.action = outcome.action
            merged.reason = outcome.reason
            break
    merged.path = current
    return merged, current


def analyse(
    path: Path,
    context: UploadContext,
    expected_study: str | None,
    scope: Scope | None,
    hooks: list[Hook],
    bulkdata_threshold: int,
    digest: str = "",
) -> IngestResult | Analysis:
    """The CPU half of ingest: a final failure, or what to store. Index first: it validates the file and its
    UIDs in one pass, and its pydicom dataset is what the hooks scan (one parse per file); the index is reused
    unless a hook rewrites the file (de-identification), which is then indexed again. A file a hook wrote is
    deleted here when the answer is a failure, else by the caller."""
    try:
        indexed, dataset = read_instance(path, bulkdata_threshold=bulkdata_threshold)
    except DicomError as error:
        return IngestResult.refused(path, detail=error.detail)
    named = indexed.searchable
    patient = (str(named.get("patient_id") or ""), str(named.get("issuer_of_patient_id") or ""))
    header = Header(indexed.ids, indexed.sop_class_uid, patient)
    if expected_study is not None and header.ids.study != expected_study:
        return IngestResult.about(
            header,
            "failed",
            failure_reason=STUDY_MISMATCH,
            detail="StudyInstanceUID does not match the study in the request URL",
        )
    if scope is not None and not scope.allows_series(header.ids.study, header.ids.series):
        return IngestResult.about(
            header,
            "failed",
            failure_reason=PROCESSING_FAILURE,
            detail="the instance's study or series is outside the token's scope",
            out_of_scope=True,
        )
    outcome, final_path = run_hooks(hooks, path, context, dataset)
    analysis = Analysis(header, outcome, final_path)
    if outcome.action != "accept":
        return analysis
    try:
        analysis.indexed = (
            indexed if final_path == path else index_file(final_path, bulkdata_threshold=bulkdata_threshold)
        )
    except DicomError as error:
        if final_path != path:
            final_path.unlink(missing_ok=True)
        return IngestResult.about(header, "failed", failure_reason=CANNOT_UNDERSTAND, detail=error.detail)
    # the spooler hashed the upload as it wrote it; a file a hook wrote is hashed here
    analysis.digest = digest if digest and final_path == path else sha256_of(final_path)
    # serialised here, in the pool process, rather than at registration: the pool sends the texts, not the dicts
    # (IndexedInstance.__getstate__); the flat search values were made with the metadata (``searchable``)
    analysis.indexed.metadata_json()
    for level in ("study", "series", "instance"):
        analysis.indexed.attrs_json(level)
    return analysis


# In a pool process: the hook chain, built once from the settings (``_start_analyser``).
_pool_hooks: list[Hook] = []


# what every ingest process needs, imported once by the pool's fork server (gateway.processpool)
_POOL_PRELOAD = ("gateway.ingest", "gateway.services", "gateway.storage.local", "gateway.storage.s3")


def _start_analyser(settings: Settings) -> None:
    from gateway.services import build_policy_hooks
    from gateway.storage import open_storage

    _pool_hooks[:] = build_policy_hooks(settings, open_storage(settings.storage_url))[0]


def _analyse_in_pool(
    path: Path,
    context: UploadContext,
    expected_study: str | None,
    scope: Scope | None,
    bulkdata_threshold: int,
    digest: str,
) -> IngestResult | Analysis:
    return analyse(path, context, expected_study, scope, _pool_hooks, bulkdata_threshold, digest)


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        catalog: Catalog,
        hooks: list[Hook],
        *,
        spool_dir: Path,
        destinations: dict[str, Storage] | None = None,
        derivatives: Offering | None = None,
        processes: int = 0,
    ) -> None:
        """``processes`` > 0: ``analyse`` runs in a pool of that many processes, started on the first upload,
        whose hooks are built from ``settings`` the way ``gateway.services.build_policy_hooks`` built ``hooks``
        (pass 0 with hooks made any other way)."""
        self.settings = settings
        self.derivatives = derivatives
        self.storage = storage
        self.catalog = catalog
        # catalog writes of uploads that arrive together share a transaction (gateway.catalog.groupcommit)
        self.reservations: GroupCommit[str, Reservation | None] = GroupCommit(catalog.reserve_many)
        self.registrations: GroupCommit[Registration, bool] = GroupCommit(catalog.register_instances)
        self.hooks = hooks
        self.spool_dir = spool_dir
        self.destinations = destinations or {}
        self.processes = processes
        self._pool: ProcessPool | None = None
        self._pool_lock = threading.Lock()

    def _analyse(
        self, path: Path, context: UploadContext, expected_study: str | None, scope: Scope | None, digest: str
    ) -> IngestResult | Analysis:
        threshold = self.settings.bulkdata_threshold
        if self.processes > 0:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ProcessPool(self.processes, _start_analyser, (self.settings,), preload=_POOL_PRELOAD)
                pool = self._pool
            try:
                answer: IngestResult | Analysis = pool.run(
                    _analyse_in_pool, path, context, expected_study, scope, threshold, digest
                )
                return answer
            except PoolBroken:
                # a pool process died (killed, out of memory) and was replaced; this file is analysed here, and
                # what the dead process was writing (a de-identified copy) is removed
                log.warning("an ingest process died; this file is analysed in the request's process")
                sweep_spool(self.spool_dir)
        return analyse(path, context, expected_study, scope, self.hooks, threshold, digest)

    def close(self) -> None:
        """Stop the pool's processes (if one was started)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def ingest(
        self,
        path: Path,
        context: UploadContext,
        expected_study: str | None = None,
        scope: Scope | None = None,
        *,
        digest: str = "",
    ) -> IngestResult:
        """``digest``: the sha256 of ``path`` when the caller hashed it while writing it (else computed here)."""
        try:
            result = self._ingest(path, context, expected_study, scope, digest)
        except (StorageUnavailable, CatalogUnavailable):
            raise  # an outage: the caller answers 503 and the client retries
        except Exception as error:  # a file no parser foresaw: one failed part, never a 500 for the request
            log.exception("ingest failed on an unexpected error (%s)", type(error).__name__)
            result = IngestResult.refused(path, detail="the file could not be processed")
        INGESTED.labels(result.status).inc()
        return result

    def _ingest(
        self, path: Path, context: UploadContext, expected_study: str | None, scope: Scope | None, digest: str
    ) -> IngestResult:
        """Never raises for a bad file; raises StorageUnavailable / CatalogUnavailable for outages so the caller
        can tell the client to retry (nothing was made visible)."""
        with self.reservations.expect():  # a reservation batch may wait for this file's analysis
            analysis = self._analyse(path, context, expected_study, scope, digest)
        if isinstance(analysis, IngestResult):
            if analysis.out_of_scope and analysis.ids is not None:
                # who tried to store into a study its token does not reach, and which: the access trail names the
                # STOW and its outcome only, not the studies its body held
                self.catalog.add_audit(
                    source=context.source,
                    sub=context.sub,
                    sop_uid=analysis.ids.sop,
                    study_uid=analysis.ids.study,
                    decision=OUT_OF_SCOPE,
                )
            return analysis
        header, outcome, final_path = analysis.header, analysis.outcome, analysis.path
        try:
            if outcome.action == "reject":
                result = IngestResult.about(header, "failed", failure_reason=PROCESSING_FAILURE, report=outcome.report)
                result.detail = outcome.reason or "rejected by upload policy"
                self._audit(context, header, outcome)
                return result
            if outcome.action == "quarantine":
                return self._quarantine(final_path, context, header, outcome)
            assert analysis.indexed is not None
            result = self._store(final_path, context, header, outcome, analysis.indexed, analysis.digest)
            if result.ok and final_path != path:
                # stored as a hook rewrote it, not as sent: PS3.18 I.2 has the client told (202, Warning Reason)
                result.warning_reason = COERCED
                result.detail = result.detail or "de-identified on upload: data elements coerced"
            if result.ids is not None and result.ids.sop != header.ids.sop:
                result.sent_sop_uid = header.ids.sop  # lets the uploader tell which of its files this is
            return result
        finally:
            if final_path != path:
                final_path.unlink(missing_ok=True)

    @staticmethod
    def _audit_fields(context: UploadContext, header: Header, outcome: HookOutcome) -> dict[str, Any] | None:
        """The audit record of a hook decision (tag paths, never values); None when no hook judged the file."""
        if not outcome.audit:
            return None
        return {
            "source": context.source,
            "sub": context.sub,
            "sop_uid": header.ids.sop,
            "study_uid": header.ids.study,
            "decision": outcome.audit.get("decision", outcome.action),
            "rule": outcome.audit.get("rule"),
            "destination": outcome.audit.get("destination"),
            "tags": outcome.audit.get("tags", []),
            "policy_version": outcome.audit.get("policy_version"),
        }

    def _audit(self, context: UploadContext, header: Header, outcome: HookOutcome) -> None:
        fields = self._audit_fields(context, header, outcome)
        if fields is not None:
            self.catalog.add_audit(**fields)

    def _quarantine(self, path: Path, context: UploadContext, header: Header, outcome: HookOutcome) -> IngestResult:
        # One key per quarantined file, not per SOP Instance UID: a later upload of the instance under another rule
        # (the identifiable original after a de-identified copy held for pixel review) replaced the held file and
        # its record, and a release then stored what the first rule had kept back. The same bytes again share one.
        key = f"quarantine/{header.ids.key.removesuffix('.dcm')}.{sha256_of(path)[:16]}.dcm"
        # held where the policy lets identifiable data of the upload's region be (gateway.phi.hook: PhiHook._hold)
        storage = self.destinations.get(outcome.destination) if outcome.destination else self.storage
        if storage is None:  # fail closed: never fall back to another place
            self._audit(context, header, outcome)
            return IngestResult.about(
                header,
                "failed",
                failure_reason=PROCESSING_FAILURE,
                detail="the policy named a destination this gateway cannot write to",
                report=outcome.report,
            )
        storage.put_file(key, path)
        self.catalog.add_quarantine(
            key=key,
            sop_uid=header.ids.sop,
            study_uid=header.ids.study,
            series_uid=header.ids.series,
            # keyed digests, never the identifiers: the held file may be a de-identified copy (pixel review), whose
            # record must not link it back to the patient in clear
            patient=(
                identifier_digest(header.patient[0], self.settings.deid_key),
                identifier_digest(header.patient[1], self.settings.deid_key),
            ),
            reason=outcome.reason,
            report=outcome.report,
            destination=outcome.destination,
            context=context,
            storage_url=storage.url,
        )
        self._audit(context, header, outcome)
        return IngestResult.about(
            header,
            "quarantined",
            failure_reason=QUARANTINED,
            detail=outcome.reason or "quarantined for review",
            report=outcome.report,
            storage_key=key,
        )

    def _store(
        self,
        path: Path,
        context: UploadContext,
        original: Header,
        outcome: HookOutcome,
        indexed: IndexedInstance,
        digest: str,
    ) -> IngestResult:
        final = Header(indexed.ids, indexed.sop_class_uid)
        result = IngestResult.about(final, "stored", report=outcome.report)
        key = indexed.ids.key
        result.storage_key = key
        if outcome.destination:
            destination = self.destinations.get(outcome.destination)
            if destination is None:  # fail closed: never fall back to another place
                result.status = "failed"
                result.failure_reason = PROCESSING_FAILURE
                result.detail = "the policy named a destination this gateway cannot write to"
                return result
            if destination is not self.storage:
                # Routed elsewhere (another region): durable there and audited here; the gateway of that
                # destination serves it, so it is not registered in this catalog.
                destination.put_file(key, path)
                self._audit(context, original, outcome)
                result.detail = "stored in another destination by policy"
                result.routed = True
                return result
        # One upload of an instance at a time: without this, two concurrent uploads of a new SOP Instance UID
        # could each write the object and the loser's bytes would sit under the winner's catalog row.
        # A crashed upload's reservation is taken over at once (its process is gone) or after a short lease: see
        # gateway.catalog.admin and README "Ingest".
        try:
            reservation = self._reserve(indexed.ids.sop)
        except Exception as error:
            if is_outage(error):
                raise
            return self._catalog_refused(result, error, "upload reservation")  # nothing stored, nothing held
        if reservation is None:
            return self._in_flight(result)
        committed = False
        try:
            with self.catalog.holding(reservation):
                result, committed = self._commit(
                    path, context, original, outcome, indexed, key, digest, result, reservation
                )
            return result
        finally:
            if not committed:  # a successful commit ended the reservation in the same transaction
                self.catalog.release(reservation)

    def _reserve(self, sop_uid: str) -> Reservation | None:
        """The instance's reservation, waiting while another upload of it holds it: another part of the same
        request (a client that sends one file twice) or a concurrent client. That upload ends within moments, and
        this one is then a duplicate (same bytes: a success) or a conflict (0x0111), which is the answer the client
        can act on, never a "retry shortly" that a retry meets again. None after ``RESERVATION_WAIT_SECONDS``."""
        deadline = time.monotonic() + RESERVATION_WAIT_SECONDS
        pause = 0.005
        while (reservation := self.reservations.submit(sop_uid)) is None and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
        return reservation

    def _commit(
        self,
        path: Path,
        context: UploadContext,
        original: Header,
        outcome: HookOutcome,
        indexed: IndexedInstance,
        key: str,
        digest: str,
        result: IngestResult,
        reservation: Reservation,
    ) -> tuple[IngestResult, bool]:
        """Store and register, holding the instance's reservation; the flag says whether the catalog commit
        (which also ends the reservation) happened."""
        existing = reservation.stored  # the stored object's sha256, read when the reservation was won
        if existing == digest:
            result.status = "duplicate"
            if self.storage.head(key) is None:
                # the catalog has it, storage lost it (removed behind the gateway's back, a restore from an older
                # backup): the same bytes again put it back, under the reservation, instead of a "duplicate"
                # that leaves every read of it a 404
                self.storage.put_file(key, path)
                log.warning("restored a stored object that storage had lost", extra={"sop_uid": indexed.ids.sop})
            return result, False
        if existing is not None and not self.settings.stow_overwrite:
            return self._different_bytes(result), False
        if existing is not None and self.catalog.patient_differs(
            InstanceRecord.from_indexed(indexed, storage_key=key, size=0, sha256=digest, etag="")
        ):
            # checked before the put, which would replace the stored bytes the catalog then keeps describing
            result.status, result.failure_reason = "failed", PATIENT_MISMATCH
            result.detail = OTHER_PATIENT
            return result, False
        with self.registrations.expect():  # a registration batch may wait for this store
            stored = self.storage.put_file(key, path)
        record = InstanceRecord.from_indexed(
            indexed,
            storage_key=key,
            size=stored.size,
            sha256=digest,
            etag=stored.etag,
            replace=existing is not None,
            tenant=context.tenant,
            destination=outcome.destination,
        )
        offering = self.derivatives
        in_catalog = offering is not None and offering.in_catalog and offering.wants(indexed)
        try:  # the group commit alone: an error here is the catalog's, about this upload (caught below)
            created = self.registrations.submit(
                Registration(record, self._audit_fields(context, original, outcome), reservation, derive=in_catalog)
            )
        except ReservationLost:
            return self._in_flight(result), False
        except SeriesInOtherStudy:
            self.storage.delete(key)  # this key is new (its study path is unknown to the catalog): no orphan
            result.status = "failed"
            result.failure_reason = PROCESSING_FAILURE
            result.detail = "the Series Instance UID already belongs to another study"
            return result, False
        except PatientMismatch as refused:
            if existing is None:  # a new key, ours under the reservation (a replaced one holds the new bytes)
                self.storage.delete(key)
            result.status = "failed"
            result.failure_reason = PATIENT_MISMATCH
            result.detail = refused.detail
            return result, False
        except Conflict:
            return self._different_bytes(result), False
        except Exception as error:
            # the database refused this upload's rows, not the others' of its batch (gateway.catalog.groupcommit)
            if is_outage(error):
                raise
            if existing is None:  # a new key, ours under the reservation (a replaced one holds the new bytes)
                self.storage.delete(key)
            return self._catalog_refused(result, error, "record"), False
        if not created:
            result.status = "duplicate"
        elif offering is not None and not offering.in_catalog:
            offering.offer(indexed)  # made after the answer, by the derivative worker (gateway.derive)
        log.info("stored instance", extra={"sop_uid": indexed.ids.sop, "bytes": stored.size})
        return result, True

    @staticmethod
    def _in_flight(result: IngestResult) -> IngestResult:
        result.status = "failed"
        result.failure_reason = OUT_OF_RESOURCES
        result.detail = "another upload of this instance is in progress; retry shortly"
        return result

    @staticmethod
    def _catalog_refused(result: IngestResult, error: Exception, what: str) -> IngestResult:
        """A failure of this instance alone that is not an outage: a constraint or trigger of the database, a value
        it cannot take, a bug. Retrying will not help until that changes: 0x0110, never 0xA700. The error's class
        and code only, in the answer and the log: its message quotes the row's values."""
        log.warning(
            "the catalog refused an instance's %s (%s)", what, describe(error), extra={"sop_uid": result.sop_uid}
        )
        result.status = "failed"
        result.failure_reason = PROCESSING_FAILURE
        result.detail = f"the catalog refused this instance's {what} ({describe(error)}); it was not stored"
        return result

    @staticmethod
    def _different_bytes(result: IngestResult) -> IngestResult:
        result.status = "failed"
        result.failure_reason = DUPLICATE_DIFFERENT
        result.detail = "an instance with this SOP Instance UID and different content is already stored"
        return result
