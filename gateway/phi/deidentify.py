"""De-identification: the PS3.15 Basic Profile plus the policy's options, written to a new file.

``deidentify_file(src, dst, key, policy)`` never touches ``src``. Choices where the standard leaves room:

- D writes a dummy value of the element's VR (``DUMMY``: ANONYMIZED, 19000101, 000000, 0), as PS3.15 E.3.1
  requires of D ("a non-zero length value"): an empty one broke Type 1 attributes (Container and Specimen
  Identifier of a slide). The compound codes with D (X/D, Z/D, X/Z/D) choose by the attribute's Type in the
  IOD, which the de-identifier does not know: an element holding a value gets the dummy (conformant whatever
  its Type: Content Date, Acquisition DateTime and Device Serial Number are Type 1 in enhanced multi-frame
  images), one without stays empty; Patient ID, Type 2 in every IOD, stays empty (``ALWAYS_TYPE_2``). Other
  compound codes (X/Z) become an empty value, which keeps Type 2
  attributes present; plain X removes the element. Sequences and values of other VRs are emptied.
- UIDs (U, or D on a UI element) become ``2.25.<int>`` where the integer is 128 bits of HMAC-SHA256(key, UID):
  the same study uploaded twice, or its series uploaded separately, map to the same new UIDs under the same
  key; a different key gives unrelated UIDs. References (ReferencedSOPInstanceUID...) follow, since they are U
  too.
- Dates: ``remove`` empties them (basic profile); ``shift`` (Modified Dates option) moves every DA and the
  date part of every DT back by a per-patient number of days (1..max_shift_days) derived from HMAC(key,
  PatientID, falling back to PatientName, then StudyInstanceUID), so intervals within a patient are kept;
  times are kept.
- C (clean) on text: the value is kept unless it repeats the patient's name, an ID or the birth date, or gives a
  birth date after its keyword ("DOB 19950331"), then it is emptied.
- Overlays (60xx) and curves (50xx) are removed as whole groups; private elements are removed unless
  ``[private].safe`` lists them; private creators go when their block is empty.
- An Encapsulated Document cannot be cleaned (a PDF may say anything): such a file is refused.
- Under the Patient Characteristics option, ages above 89 are emptied (kept otherwise).
- Burned-in pixel text is not touched: a file flagged for it does not re-scan clean and the hook refuses it.

Streaming: the file is read with ``defer_size`` and top-level values that stayed on disk (Pixel Data, and
anything large after it) are copied byte for byte from the source, never decoded nor held in memory.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from gateway.errors import DeidentificationFailed
from gateway.phi.policy import BASIC, Policy
from gateway.phi.profile import (
    BASIC_PROFILE_CODE,
    OPTION_CODES,
    effective_action,
    is_date_clean,
    table,
    tag_text,
)
from gateway.phi.scanner import BINARY_VRS, MAX_TEXT, read_dataset
from gateway.phi.textrules import (
    FREE_TEXT_VRS,
    IDENTIFIER_KEYWORDS,
    MAX_AGE_YEARS,
    Identifiers,
    age_years,
    deferred,
    gives_birth_date,
    text_values,
    value_length,
    vr_of,
)

METHOD = "dicom-gateway PS3.15 E.1-1"
UNDEFINED_LENGTH = 0xFFFFFFFF
ENCAPSULATED_DOCUMENT = 0x00420011
TEXT_VALUE = 0x0040A160
PATIENT_AGE = 0x00101010
# File meta elements naming the sending and receiving systems (not in Table E.1-1, but they locate the source)
META_DROP = (0x00020017, 0x00020018, 0x00020026, 0x00020027, 0x00020028, 0x00020100, 0x00020102)
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
CHUNK = 1024 * 1024
# D's dummy per VR, each one the scanner takes for a dummy (textrules.is_dummy; PS3.15 E.3.1: "consistent with
# the VR"); a name is a family name alone, as dciodvfy wants a PN ("ANONYMIZED" is the retired one-word form)
DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0", "PN": "ANONYMIZED^"}
DUMMY |= dict.fromkeys(("AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT"), "ANONYMIZED")
# Patient ID is Type 2 in the Patient Module of every IOD (PS3.3 C.7.1.1), so its Z/D is always Z, an empty value: a
# dummy shared by every de-identified upload would make them one patient (a viewer groups them so, an erasure of that
# Patient ID takes them all).
ALWAYS_TYPE_2 = frozenset({0x00100020})


@dataclass(frozen=True)
class DeidResult:
    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    shift_days: int | None  # None unless dates were shifted


def remap_uid(uid: str, key: bytes) -> str:
    """``2.25.<int>`` from 128 bits of HMAC-SHA256(key, uid): stable per key, at most 44 characters."""
    digest = hmac.new(key, b"dicomgw-uid\0" + uid.strip(" \0").encode("ascii", "replace"), hashlib.sha256)
    return "2.25." + str(int.from_bytes(digest.digest()[:16], "big"))


def identifier_digest(value: str, key: str | bytes) -> str:
    """A keyed digest (hex HMAC-SHA256) of an identifier a record must be found by without holding it, such as the
    Patient ID of a quarantined file; "" (the file names none) stays "". Stable per key: erasure digests the ID it is
    given the same way."""
    value = value.strip()
    if not value:
        return ""
    secret = key.encode("utf-8") if isinstance(key, str) else key
    return hmac.new(secret, b"dicomgw-identifier\0" + value.encode("utf-8"), hashlib.sha256).hexdigest()


def shift_days(patient: str, key: bytes, max_days: int) -> int:
    digest = hmac.new(key, b"dicomgw-date\0" + patient.encode("utf-8"), hashlib.sha256).digest()
    return 1 + int.from_bytes(digest[:8], "big") % max_days


def _shift_da(value: str, days: int) -> str:
    value = value.strip(" \0")
    if len(value) != 8 or not value.isdigit():
        return ""  # not a plain date (a range, a partial date): drop it rather than keep it unshifted
    try:
        day = date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return ""
    shifted = day - timedelta(days=days)
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}" if shifted.year >= 1 else ""


def _shift_dt(value: str, days: int) -> str:
    value = value.strip(" \0")
    head = _shift_da(value[:8], days) if len(value) >= 8 else ""
    return head + value[8:] if head else ""


class _Deidentifier:
    def __init__(self, policy: Policy, key: bytes, identifiers: Identifiers, days: int | None) -> None:
        self.policy = policy
        self.options = policy.deidentify.options
        self.key = key
        self.identifiers = identifiers
        self.days = days
        self.table = table()

    def clean(self, dataset: Dataset) -> None:
        for tag in sorted(dataset.keys()):
            group, element = tag >> 16, tag & 0xFFFF
            vr = vr_of(dataset, tag)
            if group % 2:
                self._private(dataset, tag, vr)
            elif (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E) and group % 2 == 0:
                del dataset[tag]  # curves and overlays: whole groups
            elif element != 0:
                self._public(dataset, tag, vr)
        self._drop_empty_private_blocks(dataset)

    def _recurse(self, dataset: Dataset, tag: int) -> None:
        if tag in dataset and vr_of(dataset, tag) == "SQ":
            for item in dataset[tag].value:
                self.clean(item)

    def _public(self, dataset: Dataset, tag: int, vr: str) -> None:
        row = self.table.lookup(tag)
        if tag == TEXT_VALUE and str(dataset.get("ValueType", "")).upper() == "TEXT":
            if "cleanStructContOpt" in self.options:
                self._clean_text(dataset, tag, vr)
            else:
                self._empty(dataset, tag, vr)
            return
        if row is None:
            if vr == "PN":  # a person's name the table does not list: emptied, as the scanner flags it
                self._empty(dataset, tag, vr)
                return
            self._clean_text(dataset, tag, vr)
            self._recurse(dataset, tag)
            return
        action = effective_action(row, self.options)
        if action == "K":
            if tag == PATIENT_AGE:
                self._cap_age(dataset, tag)
            self._recurse(dataset, tag)
            return
        if action == "C":
            if is_date_clean(row, self.options):
                self._shift(dataset, tag, vr)
            else:
                self._clean_text(dataset, tag, vr)
                self._recurse(dataset, tag)
            return
        if (
            tag == ENCAPSULATED_DOCUMENT
            and dataset.get_item(tag, keep_deferred=True) is not None
            and self._length(dataset, tag)
        ):
            raise DeidentificationFailed("an Encapsulated Document cannot be de-identified")
        if vr == "SQ" and "U" in action:
            self._recurse(dataset, tag)  # X/Z/U*: keep the references, their UIDs are remapped inside
            return
        if vr == "UI" and ("U" in action or "D" in action):
            values = [
                remap_uid(value, self.key) for value in text_values(dataset[tag].value) if value.strip()
            ]
            dataset[tag].value = values if len(values) != 1 else values[0]
            return
        held = action != "D" and tag not in ALWAYS_TYPE_2 and self._length(dataset, tag)
        if "D" in action and vr in DUMMY and (action == "D" or held):
            dataset.add_new(tag, vr, DUMMY[vr])
            return
        if action == "X":
            del dataset[tag]
            return
        self._empty(dataset, tag, vr)

    def _private(self, dataset: Dataset, tag: int, vr: str) -> None:
        element = tag & 0xFFFF
        if 0x10 <= element <= 0xFF:
            # creators: kept while their block holds whitelisted elements (see _drop_empty_private_blocks)
            return
        creator = None
        if element >= 0x1000 and ((tag >> 16) << 16 | element >> 8) in dataset:
            creator = str(dataset[(tag >> 16) << 16 | element >> 8].value or "").strip(" \0")
        if (
            "rtnSafePrivOpt" in self.options
            and creator is not None
            and self.policy.is_private_safe(creator, tag)
        ):
            self._clean_text(dataset, tag, vr)
            self._recurse(dataset, tag)
        else:
            del dataset[tag]

    @staticmethod
    def _drop_empty_private_blocks(dataset: Dataset) -> None:
        keys = set(dataset.keys())
        for tag in sorted(keys):
            group, element = tag >> 16, tag & 0xFFFF
            if group % 2 and 0x10 <= element <= 0xFF:
                block = range((group << 16) | (element << 8), (group << 16) | (element << 8) | 0x100)
                if not any(other in keys for other in block):
                    del dataset[tag]

    @staticmethod
    def _length(dataset: Dataset, tag: int) -> int:
        return value_length(dataset, tag)

    def _empty(self, dataset: Dataset, tag: int, vr: str) -> None:
        if vr == "SQ":
            dataset.add_new(tag, "SQ", [])
        elif vr in BINARY_VRS:
            dataset.add_new(tag, vr, b"")
        else:
            dataset.add_new(tag, vr, None)

    def _clean_text(self, dataset: Dataset, tag: int, vr: str) -> None:
        if vr not in FREE_TEXT_VRS or dataset.get_item(tag, keep_deferred=True) is None:
            return
        if keyword_for_tag(tag) in IDENTIFIER_KEYWORDS:
            return
        if self._length(dataset, tag) > MAX_TEXT:
            self._empty(dataset, tag, vr)
            return
        texts = text_values(dataset[tag].value)
        if self.identifiers.repeated_in(texts) or gives_birth_date(texts):  # what the scanner flags in text
            self._empty(dataset, tag, vr)

    def _cap_age(self, dataset: Dataset, tag: int) -> None:
        # Ages above 89 (or unparseable ones) are emptied: any "090Y"-style cap would itself be over 089Y.
        values = text_values(dataset[tag].value)
        if any((age_years(value) or MAX_AGE_YEARS + 1) > MAX_AGE_YEARS for value in values if value.strip()):
            self._empty(dataset, tag, "AS")

    def _shift(self, dataset: Dataset, tag: int, vr: str) -> None:
        if self.days is None:
            self._empty(dataset, tag, vr)
            return
        if vr == "TM":
            return  # a whole-day shift keeps times
        if vr not in ("DA", "DT"):
            self._empty(dataset, tag, vr)
            return
        shift = _shift_da if vr == "DA" else _shift_dt
        values = [shift(value, self.days) for value in text_values(dataset[tag].value)]
        values = [value for value in values if value]
        if not values:
            self._empty(dataset, tag, vr)
        else:
            dataset[tag].value = values if len(values) > 1 else values[0]


def _patient_key(dataset: Dataset) -> str:
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
        value = str(dataset.get(keyword, "") or "").strip(" \0")
        if value:
            return f"{keyword}:{value}"
    return ""


def earlier_methods(dataset: Dataset) -> list[str]:
    """The De-identification Method values a file already holds (a file an earlier step de-identified)."""
    value = dataset.get("DeidentificationMethod")
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [] if value is None else [value]
    return [str(method) for method in values if str(method).strip(" \0")]


def _mark(dataset: Dataset, policy: Policy) -> None:
    """PatientIdentityRemoved, DeidentificationMethod and its CID 7050 codes, per the options used. A file an
    earlier step de-identified (Orthanc's /anonymize, a PACS export) keeps that step's method values and codes
    before this one's: PS3.3 C.7.1.1 has both hold every successive step (the method was overwritten, so the
    record of the first step was lost)."""
    dataset.PatientIdentityRemoved = "YES"
    options = sorted(policy.deidentify.options, key=lambda name: OPTION_CODES[name][0])
    earlier = earlier_methods(dataset)
    dataset.DeidentificationMethod = [*earlier, METHOD] if earlier else METHOD
    codes = Sequence(list(dataset.get("DeidentificationMethodCodeSequence") or []))
    had = {(str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", ""))) for item in codes}
    for value, meaning in [BASIC_PROFILE_CODE] + [OPTION_CODES[name] for name in options]:
        if (value, "DCM") in had:
            continue
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        codes.append(item)
    dataset.DeidentificationMethodCodeSequence = codes
    dataset.LongitudinalTemporalInformationModified = {
        "shift": "MODIFIED",
        "keep": "UNMODIFIED",
        "remove": "REMOVED",
    }[policy.deidentify.dates]


def _copy(src: BinaryIO, dst: BinaryIO, start: int, length: int) -> None:
    src.seek(start)
    while length:
        chunk = src.read(min(CHUNK, length))
        if not chunk:
            raise DeidentificationFailed("source file is truncated")
        dst.write(chunk)
        length -= len(chunk)


def _undefined_end(src: BinaryIO, start: int, little: bool) -> int:
    """Offset just past the Sequence Delimitation Item of an undefined-length value (encapsulated pixels)."""
    header = struct.Struct("<HHL" if little else ">HHL")
    position = start
    while True:
        src.seek(position)
        data = src.read(8)
        if len(data) != 8:
            raise DeidentificationFailed("undefined-length value without a delimiter")
        group, element, length = header.unpack(data)
        position += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            return position
        if (group, element) != (0xFFFE, 0xE000) or length == UNDEFINED_LENGTH:
            raise DeidentificationFailed("malformed encapsulated value")
        position += length


def _write(dataset: Dataset, meta: FileMetaDataset, src: Path, dst: Path) -> None:
    syntax = UID(meta.TransferSyntaxUID)
    if syntax == DeflatedExplicitVRLittleEndian:
        raise DeidentificationFailed("deflated transfer syntax is not supported")
    little, implicit = syntax.is_little_endian, syntax.is_implicit_VR
    encoding = dataset.get("SpecificCharacterSet", "iso8859")
    with dst.open("wb") as raw_out, src.open("rb") as raw_in:
        out = DicomFileLike(raw_out)
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)
        out.is_little_endian, out.is_implicit_VR = little, implicit
        end = "<" if little else ">"
        for tag in sorted(dataset.keys()):
            if tag & 0xFFFF == 0 and tag >> 16 > 6:
                continue  # retired group lengths, as pydicom's writer does
            raw = deferred(dataset, tag)
            if raw is not None:
                # a deferred value: copy its bytes from the source instead of loading it
                length = int(raw.length)
                header = struct.pack(end + "HH", tag >> 16, tag & 0xFFFF)
                if implicit:
                    header += struct.pack(end + "L", length)
                else:
                    vr = str(raw.VR)
                    if vr not in LONG_VRS:
                        raise DeidentificationFailed(f"{tag_text(tag)}: cannot copy a large {vr} value")
                    header += vr.encode("ascii") + b"\0\0" + struct.pack(end + "L", length)
                out.write(header)
                if length == UNDEFINED_LENGTH:
                    stop = _undefined_end(raw_in, raw.value_tell, little)
                    _copy(raw_in, raw_out, raw.value_tell, stop - raw.value_tell)
                else:
                    _copy(raw_in, raw_out, raw.value_tell, length)
                continue
            element = correct_ambiguous_vr_element(dataset[tag], dataset, little)
            write_data_element(out, element, encoding)


def deidentify_file(
    src: Path | str, dst: Path | str, key: bytes | str, policy: Policy | None = None
) -> DeidResult:
    """De-identify ``src`` into a new file ``dst`` (``src`` is never modified).

    Raises ``DeidentificationFailed`` for files that cannot be de-identified safely (unreadable, an
    Encapsulated Document, deflated transfer syntax) or without a key; ``dst`` is removed on any failure.
    """
    policy = policy or BASIC
    key_bytes = key.encode("utf-8") if isinstance(key, str) else key
    if not key_bytes:
        raise DeidentificationFailed("no de-identification key (DICOMGW_DEID_KEY)")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise DeidentificationFailed("refusing to de-identify a file in place")
    try:
        dataset = read_dataset(src)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not de-identifiable"
        raise DeidentificationFailed(f"unreadable DICOM ({type(exc).__name__})") from None
    days = None
    if policy.deidentify.dates == "shift":
        days = shift_days(_patient_key(dataset), key_bytes, policy.deidentify.max_shift_days)
    identifiers = Identifiers.collect(dataset)
    _Deidentifier(policy, key_bytes, identifiers, days).clean(dataset)
    _mark(dataset, policy)
    meta = copy.deepcopy(dataset.file_meta)
    for tag in META_DROP:
        if tag in meta:
            del meta[tag]
    sop = str(dataset.get("SOPInstanceUID", "") or "")
    if not sop:
        raise DeidentificationFailed("no SOP Instance UID")
    meta.MediaStorageSOPInstanceUID = UID(sop)
    try:
        _write(dataset, meta, src, dst)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return DeidResult(
        path=dst,
        study_uid=str(dataset.get("StudyInstanceUID", "")),
        series_uid=str(dataset.get("SeriesInstanceUID", "")),
        sop_uid=sop,
        shift_days=days,
    )
