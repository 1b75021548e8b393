"""The STOW-RS Store Instances Response (PS3.18 10.5.3 and Annex I) as DICOM JSON, with its HTTP status (as XML:
``gateway.dicomweb.xml``).

Status codes (PS3.18 Table 10.5.3-1): 200 when every instance was stored (or was already stored with the same
bytes) without warnings; 202 when some were stored and others failed or carry a warning; 409 when the request
was well formed but nothing could be stored (unsupported SOP class, study UID mismatch, a mixture of reasons);
400 when the body held no instance at all. 415 (media type) and 400/413 (malformed multipart, part too
large) are raised before ingest, from ``gateway.errors``, and never reach this module.

The human reason for a failure travels in a private block, because PS3.18 has no standard text attribute in
the response items and Error Comment (0000,0902) is a command element that a data set cannot carry:

- (0009,0010) LO Private Creator ``"DICOMGW"``
- (0009,1001) LT reason text (a fixed phrase from ingest; never a value taken from the file, so never PHI)
- (0009,1002) CS outcome: ``STORED``, ``DUPLICATE``, ``FAILED`` or ``QUARANTINED`` (lets a client tell
  "already stored" apart from "stored now"; both are successes in the standard sense)
- (0009,1003) UI the SOP Instance UID the instance was sent with, when a de-identifying policy stored it (or would
  have) under another (the uploader's own value, answered to the uploader only: it lets ``dicom-gateway upload``
  match the item, stored or failed, to its file)

Clients that do not know the block ignore it; the standard FailureReason (0008,1197) is always present.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.scope import Scope
from gateway.uids import InstanceId, check_uid, is_uid

MEDIA_TYPE = "application/dicom+json"

# Failure Reason (0008,1197) values: PS3.18 Table I.2-2, plus PS3.7 and implementation-specific ones (PS3.18
# allows "additional codes"; the implementation-specific ones sit in the Cxxx "cannot understand" range).
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4: same SOP Instance UID already stored with different content
SOP_CLASS_NOT_SUPPORTED = 0x0122
STUDY_UID_MISMATCH = 0xC409  # the instance's study is not the one in the URL (the code dcm4chee-arc uses)
QUARANTINED_BY_POLICY = 0xC4F0  # implementation-specific: the PHI / data-sovereignty policy quarantined it
# the study already holds another patient's instances: dcm4chee-arc's "conflicting Patient ID not accepted"
PATIENT_MISMATCH = 0xA778

# Warning Reason (0008,1196) values: PS3.18 Table I.2-3 (C-STORE warnings, PS3.4 Table B.2-1).
COERCION_OF_DATA_ELEMENTS = 0xB000
ELEMENTS_DISCARDED = 0xB006
DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007

REASON_NAMES: dict[int, str] = {
    OUT_OF_RESOURCES: "refused: out of resources",
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS: "data set does not match SOP class",
    CANNOT_UNDERSTAND: "cannot understand",
    TRANSFER_SYNTAX_NOT_SUPPORTED: "transfer syntax not supported",
    PROCESSING_FAILURE: "processing failure",
    DUPLICATE_SOP_INSTANCE: "SOP instance already stored with different content",
    SOP_CLASS_NOT_SUPPORTED: "SOP class not supported",
    STUDY_UID_MISMATCH: "study instance UID does not match the request",
    QUARANTINED_BY_POLICY: "quarantined by the data policy",
    PATIENT_MISMATCH: "the study holds another patient's instances",
    COERCION_OF_DATA_ELEMENTS: "data elements coerced",
    ELEMENTS_DISCARDED: "elements discarded",
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING: "data set does not match SOP class (stored)",
}

PRIVATE_CREATOR = "DICOMGW"
TAG_PRIVATE_CREATOR = "00090010"
TAG_REASON_TEXT = "00091001"
TAG_OUTCOME = "00091002"
TAG_SENT_SOP_UID = "00091003"

Status = Literal["stored", "duplicate", "failed", "quarantined"]
_SUCCESS: frozenset[str] = frozenset({"stored", "duplicate"})


def reason_name(code: int) -> str:
    """A short English name for a Failure/Warning Reason, by exact code then by range (A7xx, A9xx, Cxxx)."""
    if code in REASON_NAMES:
        return REASON_NAMES[code]
    for base in (OUT_OF_RESOURCES, DATA_SET_DOES_NOT_MATCH_SOP_CLASS):
        if code & 0xFF00 == base:
            return REASON_NAMES[base]
    if code & 0xF000 == CANNOT_UNDERSTAND:
        return REASON_NAMES[CANNOT_UNDERSTAND]
    return f"status 0x{code:04X}"


@dataclass(frozen=True)
class StowItem:
    """The outcome of one part of a STOW-RS request, as ingest decided it.

    ``duplicate`` is an identical re-upload (success). ``failed`` and ``quarantined`` go to the Failed SOP
    Sequence; ``failure_reason`` defaults to 0x0110 (processing failure) and, for ``quarantined``, to 0xC4F0.
    UIDs are validated here: a stored item must carry four valid UIDs; a failed item's UIDs are reported only
    if valid (a file that could not be parsed names those it holds: ``gateway.dicom.index.named_uids``).
    ``detail`` is a fixed phrase, never PHI.
    """

    status: Status
    sop_class_uid: str | None
    ids: InstanceId | None
    failure_reason: int | None
    detail: str
    warning_reason: int | None = None
    sent_sop_uid: str | None = None
    # stored in another region's destination by policy: not served here, so no RetrieveURL of ours names it
    routed: bool = False


@dataclass(frozen=True)
class StowResponse:
    status: int
    body: dict[str, Any]
    content_type: str = MEDIA_TYPE

    def to_bytes(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build_stow_response(
    items: Sequence[StowItem],
    root: str,
    *,
    study_uid: str | None = None,
    query: str = "",
    scope: Scope | None = None,
) -> StowResponse:
    """Build the response for ``items`` (in request order). ``root`` is the DICOMweb root the client used
    (``/t/{token}/dicomweb``, ``/dicomweb`` or an absolute URL); RetrieveURLs are built under it, each ending with
    ``query`` (``?token=...`` when the client's token travelled in the query).

    The top-level RetrieveURL names the one study that every stored instance belongs to (a de-identified upload's
    remapped study, whatever the request URL named), else ``study_uid`` (the study in the request URL); it is
    present but empty when there is neither, and when nothing was stored (a 409: PS3.18 Table 10.5.3-3 has it name
    where the stored study can be retrieved, and the URL's study received nothing, often is none at all), and when
    the client's token (``scope``) cannot retrieve the whole study (a series token), as QIDO leaves it out.
    """
    base = root.rstrip("/")
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    stored_studies: set[str] = set()
    warnings = False
    for item in items:
        if item.status in _SUCCESS:
            referenced.append(_referenced_item(item, base, query))
            if not item.routed:
                stored_studies.add(item.ids.study if item.ids else "")
            warnings = warnings or item.warning_reason is not None
        else:
            failed.append(_failed_item(item))

    # the one study the stored instances are in; under a de-identifying policy that is the remapped UID, not the one
    # in the request URL, which then names nothing stored (its RetrieveURL was a 404)
    study = next(iter(stored_studies)) if len(stored_studies) == 1 else study_uid
    if not referenced or not stored_studies:
        # nothing stored (the study in the URL got nothing: a mismatch named a study that is no one's), or every
        # stored instance went to another region's destination: nothing of it is served here
        study = None
    if study and scope is not None and not scope.allows_study(study):
        study = None  # a series token's study URL is its 403
    study_url = f"{base}/studies/{check_uid(study)}{query}" if study else None
    body: dict[str, Any] = {"00081190": _element("UR", study_url)}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}

    if not items:
        status = 400
    elif not referenced:
        status = 409
    elif failed or warnings:
        status = 202
    else:
        status = 200
    return StowResponse(status=status, body=body)


def _element(vr: str, value: str | int | None) -> dict[str, Any]:
    return {"vr": vr} if value is None or value == "" else {"vr": vr, "Value": [value]}


def _private(item: StowItem) -> dict[str, Any]:
    out = {TAG_PRIVATE_CREATOR: _element("LO", PRIVATE_CREATOR)}
    if item.detail:
        out[TAG_REASON_TEXT] = _element("LT", item.detail)
    out[TAG_OUTCOME] = _element("CS", item.status.upper())
    if item.sent_sop_uid is not None and is_uid(item.sent_sop_uid):
        out[TAG_SENT_SOP_UID] = _element("UI", item.sent_sop_uid)
    return out


def _referenced_item(item: StowItem, base: str, query: str) -> dict[str, Any]:
    sop_class = check_uid(item.sop_class_uid or "", "SOP Class UID")
    ids = item.ids or InstanceId("", "", "")
    sop = check_uid(ids.sop, "SOP Instance UID")
    study = check_uid(ids.study, "Study Instance UID")
    series = check_uid(ids.series, "Series Instance UID")
    url = None if item.routed else f"{base}/studies/{study}/series/{series}/instances/{sop}{query}"
    out: dict[str, Any] = {
        "00081150": _element("UI", sop_class),
        "00081155": _element("UI", sop),
        "00081190": _element("UR", url),
    }
    if item.warning_reason is not None:
        out["00081196"] = _element("US", item.warning_reason)
    out.update(_private(item))
    return out


def _failed_item(item: StowItem) -> dict[str, Any]:
    reason = item.failure_reason
    if reason is None:
        reason = QUARANTINED_BY_POLICY if item.status == "quarantined" else PROCESSING_FAILURE
    out: dict[str, Any] = {}
    if item.sop_class_uid and is_uid(item.sop_class_uid):
        out["00081150"] = _element("UI", item.sop_class_uid)
    if item.ids is not None and is_uid(item.ids.sop):
        out["00081155"] = _element("UI", item.ids.sop)
    out["00081197"] = _element("US", reason)
    out.update(_private(item))
    return out
