"""PHI scanner: ``scan_file(path, policy=None) -> ScanReport``.

What counts as a finding (docs/phi.md has the full table). For every element, at every sequence depth, the
file meta group and elements stored after Pixel Data included, the Table E.1-1 code is resolved with the
policy's ``[deidentify]`` options (an enabled option's K/C replaces the basic-profile code):

- D, Z, X, U and combinations: a finding when the element is present and non-empty (an empty Type 2 value or
  an empty sequence is what a clean file carries). UIDs under the ``2.25`` root (UUID-derived, what the
  de-identifier produces and what PS3.15 recommends) are not findings: a scanner cannot tell a remapped UID
  from an original one, and an organisation's own root is what links a UID back to its source.
- Any code with D: not a finding when every value is a recognisable dummy (``DUMMY_VALUES``: ANONYMIZED,
  ANONYMOUS, 19000101, 19000101000000, 000000, 0), which PS3.15 allows for D.
- X/Z/U* on a sequence (Referenced / Source Image Sequence): not a finding itself; its UIDs are checked.
- K: never a finding.
- An element the table does not list whose VR is PN (SecondaryReviewerName, EvaluatorName, an element newer
  than the table read with an explicit PN): ``person-name`` when non-empty; the de-identifier empties it.
- C for dates and times (Modified Dates option): a finding unless the file declares that its dates were
  shifted (PatientIdentityRemoved YES and code 113107 in DeidentificationMethodCodeSequence): a shifted date
  cannot be told from a real one. Any other C: a finding only under the free-text rule.
- Private elements: a finding unless ``[private].safe`` whitelists (creator, element); private creators are
  not, unless their text repeats an identifier (the free-text rule).
- Beyond the table: SR TEXT items (``sr-text``), free text repeating the patient's name, IDs or birth date
  (``free-text-identifier``), free text giving a birth date after its keyword (``free-text-birth-date``),
  PatientAge above 89 years (``age-over-89``), Burned In Annotation YES or missing on modalities that burn text
  in (``burned-in-annotation``), private information in the file meta (``meta-private-information``), text too
  large to check (``oversized-text``).

A file that claims PatientIdentityRemoved=YES is scanned like any other. Findings carry the tag path, keyword
and rule id, never the value; the order is the file's tag order, so a file always gives the same report.

Memory: the file is read with ``defer_size``, so Pixel Data and other large values are never loaded (their
length is all the scanner needs); nothing is read with ``stop_before_pixels``, which would hide trailing
elements.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from gateway.dicom.valuememo import SPECIFIC_CHARACTER_SET, ValueMemo, is_memoisable, validation_mode
from gateway.phi.policy import BASIC, Policy
from gateway.phi.profile import MODIFIED_DATES_CODE, effective_action, is_date_clean, table, tag_text
from gateway.phi.textrules import (
    BURNED_IN_MODALITIES,
    FREE_TEXT_VRS,
    IDENTIFIER_TAGS,
    MAX_AGE_YEARS,
    PIXEL_DATA_TAGS,
    SECONDARY_CAPTURE_CLASSES,
    Identifiers,
    add_identifier,
    age_years,
    deferred,
    element_length,
    element_vr,
    gives_birth_date,
    is_dummy,
    is_empty_text,
    text_values,
)

DEFER_SIZE = 256 * 1024  # values larger than this stay on disk (Pixel Data, big private blobs)
MAX_TEXT = 1024 * 1024  # text larger than this is not read; it is reported as `oversized-text`
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
UNDEFINED_LENGTH = 0xFFFFFFFF
META_PRIVATE = (0x00020100, 0x00020102)  # Private Information Creator UID, Private Information
TEXT_VALUE = 0x0040A160
PATIENT_AGE = 0x00101010
BURNED_IN = 0x00280301


@dataclass(frozen=True, order=True)
class Finding:
    path: str  # "(0040,0275)[0]>(0032,1032)"
    keyword: str  # "" for private and unknown elements
    rule: str  # "e1-1:Z", "private-tag", "free-text-identifier"...

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "keyword": self.keyword, "rule": self.rule}


@dataclass
class ScanReport:
    file: str
    readable: bool = True
    error: str | None = None
    findings: list[Finding] = field(default_factory=list)
    policy_version: str = BASIC.version
    skipped: str | None = None  # `scan`: why `upload` would not send the file (a DICOMDIR, not DICOM...)

    @property
    def clean(self) -> bool:
        return self.readable and not self.findings and self.skipped is None

    @property
    def status(self) -> str:
        if self.skipped is not None:
            return "skipped"
        return "unreadable" if not self.readable else "phi" if self.findings else "clean"

    @property
    def exit_code(self) -> int:
        """CLI convention: 0 clean (or skipped: nothing that would be sent), 1 PHI found, 2 unreadable."""
        return {"clean": 0, "skipped": 0, "phi": 1, "unreadable": 2}[self.status]

    @property
    def paths(self) -> list[str]:
        return [finding.path for finding in self.findings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "status": self.status,
            "readable": self.readable,
            "error": self.error,
            "policy_version": self.policy_version,
            "findings": [finding.to_dict() for finding in self.findings],
        } | ({"skipped": self.skipped} if self.skipped is not None else {})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


class Unreadable(Exception):
    """The file is not usable DICOM; the message names the problem, never a value."""


def read_dataset(path: Path) -> Dataset:
    """Read a Part 10 file lazily (large values deferred) and check deferred values lie inside the file."""
    dataset = pydicom.dcmread(str(path), defer_size=DEFER_SIZE)
    # pydicom accepts a bare "DICM" with nothing after it: a file that cannot name itself is no instance
    if "TransferSyntaxUID" not in getattr(dataset, "file_meta", {}) or "SOPInstanceUID" not in dataset:
        raise Unreadable("no Transfer Syntax UID or no SOP Instance UID")
    size = os.path.getsize(path)
    for tag in dataset.keys():
        raw = deferred(dataset, tag)
        if raw is not None and raw.length != UNDEFINED_LENGTH:
            if raw.value_tell + raw.length > size:
                raise Unreadable(f"{tag_text(tag)} runs past the end of the file (truncated)")
    return dataset


def _declares_modified_dates(dataset: Dataset) -> bool:
    if str(dataset.get("PatientIdentityRemoved", "")).upper() != "YES":
        return False
    codes = dataset.get("DeidentificationMethodCodeSequence") or []
    return any(str(item.get("CodeValue", "")) == MODIFIED_DATES_CODE for item in codes)


def _private_creator(dataset: Dataset, tag: int) -> str | None:
    element = tag & 0xFFFF
    if element < 0x1000:
        return None
    creator = dataset.get_item(((tag >> 16) << 16) | (element >> 8))
    if creator is None:
        return None
    value = dataset[((tag >> 16) << 16) | (element >> 8)].value
    return str(value).strip(" \0") if value is not None else None


# the string values of element values seen before (gateway.dicom.valuememo): the scanner reads most values of
# every file, and a series repeats most of them
_texts_memo: ValueMemo[tuple[str, ...]] = ValueMemo()


def _charset(dataset: Dataset, inherited: object) -> object:
    """The Specific Character Set of ``dataset`` as read (raw bytes, or the repr of the value once pydicom has
    converted it: never equal to bytes); an item without one inherits its parent's, as in pydicom."""
    element = dataset.get_item(SPECIFIC_CHARACTER_SET, keep_deferred=True)
    if element is None:
        return inherited
    value = element.value
    return value if isinstance(value, bytes) else repr(value)


def _finding(path: str, tag: int, rule: str) -> Finding:
    return Finding(path, "" if (tag >> 16) % 2 else keyword_for_tag(tag), rule)


class _Element:
    """One element of the data set being walked, looked up once (``Dataset.get_item``: no conversion): its VR,
    the length of its value, and its string values, read at most once and only when a rule needs them."""

    __slots__ = ("_texts", "length", "number", "raw", "tag", "vr")

    def __init__(self, dataset: Dataset, tag: int) -> None:
        self.tag = tag  # the dataset's own key (found by identity when looked up again)
        self.number = int(tag)  # the same tag as a plain int: pydicom's tag type compares in Python
        self.raw = dataset.get_item(tag, keep_deferred=True)
        self.vr = element_vr(self.raw, self.number)
        self.length = element_length(self.raw)
        self._texts: tuple[str, ...] | None = None


class _Scanner:
    """One walk of a data set. The free-text rule needs the patient's name parts and IDs found anywhere in the
    file, so its candidates wait, in their place among the findings, until the walk has collected them all
    (``finish``): one walk instead of a second one for the identifiers."""

    def __init__(
        self, policy: Policy, declared_dates: bool, known: tuple[Iterable[str], Iterable[str]] = ((), ())
    ) -> None:
        self.policy = policy
        self.options = policy.deidentify.options
        self.declared_dates = declared_dates
        self.table = table()
        self.findings: list[Finding | None] = []
        self._context: tuple[object, object] = (b"", validation_mode())  # of the data set being walked
        self._names: list[str] = list(known[0])  # ``known``: identifiers from elsewhere (the original file)
        self._ids: list[str] = list(known[1])
        # free text to match against the identifiers: (its place in ``findings``, path, tag, its values)
        self._pending_text: list[tuple[int, str, int, tuple[str, ...]]] = []

    # -- element values, read only when small
    def _texts(self, dataset: Dataset, element: _Element) -> tuple[str, ...] | None:
        """String values, or None when the value is too large to read."""
        if element.length > MAX_TEXT:
            return None
        return self._text_values(dataset, element)

    def _text_values(self, dataset: Dataset, element: _Element) -> tuple[str, ...]:
        known = element._texts
        if known is not None:
            return known
        raw = element.raw
        if not isinstance(raw, RawDataElement) or not is_memoisable(
            element.number, raw.VR, raw.is_implicit_VR, raw.value
        ):
            known = tuple(text_values(dataset[element.tag].value))
        else:
            key = (element.number, raw.VR, raw.is_implicit_VR, raw.is_little_endian, raw.value, self._context)
            known = _texts_memo.get(key)
            if known is None:
                known = tuple(text_values(dataset[element.tag].value))
                _texts_memo.store(key, known)
        element._texts = known
        return known

    def _empty(self, dataset: Dataset, element: _Element) -> bool:
        if element.vr == "SQ":
            return len(dataset[element.tag].value) == 0
        if element.length == 0:
            return True
        if element.vr in STRING_VRS and element.length <= MAX_TEXT:
            return is_empty_text(self._text_values(dataset, element))
        return False

    # -- the walk
    def add(self, path: str, tag: int, rule: str) -> None:
        self.findings.append(_finding(path, tag, rule))

    def finish(self) -> list[Finding]:
        """The findings in the file's tag order, free text that repeats an identifier included."""
        identifiers = Identifiers(self._names, self._ids)
        for place, path, tag, texts in self._pending_text:
            if identifiers.repeated_in(texts):
                self.findings[place] = _finding(path, tag, "free-text-identifier")
            elif gives_birth_date(texts):
                self.findings[place] = _finding(path, tag, "free-text-birth-date")
        return [finding for finding in self.findings if finding is not None]

    def walk(self, dataset: Dataset, prefix: str = "", meta: bool = False) -> None:
        outer = self._context
        self._context = ("file meta" if meta else _charset(dataset, outer[0]), outer[1])  # meta: ASCII
        try:
            self._walk(dataset, prefix, meta)
        finally:
            self._context = outer

    def _walk(self, dataset: Dataset, prefix: str, meta: bool) -> None:
        for tag in sorted(dataset.keys()):
            element = _Element(dataset, tag)
            number = element.number
            if number & 0xFFFF == 0:  # group lengths
                continue
            path = prefix + tag_text(number)
            if (number >> 16) % 2:
                self._private(dataset, element, path)
            else:
                if number in IDENTIFIER_TAGS and not meta:
                    add_identifier(number, self._text_values(dataset, element), self._names, self._ids)
                rule = self._public_rule(dataset, element, meta)
                if rule is not None:
                    self.add(path, number, rule)
                else:
                    self._free_text(dataset, element, path)
            if element.vr == "SQ":
                for index, item in enumerate(dataset[tag].value):
                    self.walk(item, f"{path}[{index}]>")

    def _private(self, dataset: Dataset, element: _Element, path: str) -> None:
        number = element.number
        if 0x10 <= number & 0xFFFF <= 0xFF:
            # private creator: an organisation's label (PS3.5 7.8.1), not PHI itself, but text like any other:
            # one that repeats the patient's name or IDs is a free-text finding
            self._free_text(dataset, element, path)
            return
        if self._empty(dataset, element):
            return
        creator = _private_creator(dataset, number)
        safe = (
            "rtnSafePrivOpt" in self.options
            and creator is not None
            and self.policy.is_private_safe(creator, number)
        )
        if not safe:
            self.add(path, number, "private-tag")
            return
        self._free_text(dataset, element, path)

    def _public_rule(self, dataset: Dataset, element: _Element, meta: bool) -> str | None:
        number, vr = element.number, element.vr
        if meta and number in META_PRIVATE:
            return None if self._empty(dataset, element) else "meta-private-information"
        if number == TEXT_VALUE and str(dataset.get("ValueType", "")).upper() == "TEXT":
            if "cleanStructContOpt" not in self.options and not self._empty(dataset, element):
                return "sr-text"
            return None
        if number == BURNED_IN:
            return None  # judged once, at the top level (see burned_in)
        row = self.table.lookup(number)
        if row is None:
            # a person's name the table does not list (SecondaryReviewerName, EvaluatorName, a newer or unknown
            # element read with an explicit PN): a name whatever the table says (fail closed)
            return "person-name" if vr == "PN" and not self._empty(dataset, element) else None
        if self._empty(dataset, element):
            return None
        action = effective_action(row, self.options)
        if action == "K":
            if number == PATIENT_AGE:
                return self._age_rule(dataset, element)
            return None
        if action == "C":
            if is_date_clean(row, self.options) and not self.declared_dates:
                return "date-not-declared-modified"
            return None
        if vr == "SQ" and "U" in action:
            return (
                None  # X/Z/U* (Referenced/Source Image Sequence): keep, remap the UIDs inside (checked there)
            )
        if "D" in action and vr != "UI" and vr != "SQ":
            values = self._texts(dataset, element) or ()
            if values and all(is_dummy(value) for value in values):
                return None
        if vr == "UI" and ("U" in action or "D" in action):
            values = self._texts(dataset, element) or ()
            if all(value.strip(" \0").startswith("2.25.") for value in values if value.strip(" \0")):
                return None
        return "e1-1:" + action

    def _age_rule(self, dataset: Dataset, element: _Element) -> str | None:
        for value in self._texts(dataset, element) or ():
            years = age_years(value)
            if years is None or years > MAX_AGE_YEARS:
                return "age-over-89"
        return None

    def _free_text(self, dataset: Dataset, element: _Element, path: str) -> None:
        """Text too large to check is a finding now; other free text is matched against the identifiers once
        the walk has found them all (``finish``)."""
        if element.vr not in FREE_TEXT_VRS or element.number in IDENTIFIER_TAGS:
            return
        if self._empty(dataset, element):
            return
        texts = self._texts(dataset, element)
        if texts is None:
            self.add(path, element.number, "oversized-text")
            return
        self._pending_text.append((len(self.findings), path, element.number, texts))
        self.findings.append(None)

    def burned_in(self, dataset: Dataset) -> None:
        """Burned In Annotation YES, or not NO on an image that is likely to carry text in its pixels: a modality
        of screen captures and annotated images, a Secondary Capture, or an image naming no modality (fail
        closed: nothing says what it is)."""
        burned = str(dataset.get("BurnedInAnnotation", "") or "").strip().upper()
        if burned == "NO":
            return
        modality = str(dataset.get("Modality", "") or "").strip().upper()
        sop_class = str(dataset.get("SOPClassUID", "") or "").strip()
        # an image: its pixel data, or the Rows and Columns every image has (ingest's index reads an encapsulated
        # file without its Pixel Data, and a compressed capture with a name burned in was scanned as clean)
        image = any(tag in dataset for tag in PIXEL_DATA_TAGS) or ("Rows" in dataset and "Columns" in dataset)
        if (
            burned == "YES"
            or modality in BURNED_IN_MODALITIES
            or (image and (sop_class in SECONDARY_CAPTURE_CLASSES or not modality))
        ):
            self.add(tag_text(BURNED_IN), BURNED_IN, "burned-in-annotation")


def scan_dataset(
    dataset: Dataset,
    policy: Policy | None = None,
    file: str = "",
    known: tuple[Iterable[str], Iterable[str]] = ((), ()),
) -> ScanReport:
    """Scan an already-read dataset (read it with ``read_dataset`` so big values stay on disk). ``known``: name
    parts and IDs from elsewhere that free text must not repeat either (a de-identified file is re-scanned with
    the original's: its own are emptied, so an element the profile keeps could still repeat them unseen)."""
    policy = policy or BASIC
    scanner = _Scanner(policy, _declares_modified_dates(dataset), known)
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        scanner.walk(meta, meta=True)
    scanner.walk(dataset)
    scanner.burned_in(dataset)
    return ScanReport(file=file, findings=scanner.finish(), policy_version=policy.version)


def top_level_values(dataset: Dataset, keywords: Iterable[str]) -> dict[str, str]:
    """Values the policy rules match on (``tags.<Keyword>``); multiple values joined with a backslash."""
    values: dict[str, str] = {}
    for keyword in keywords:
        element = dataset.get(keyword)
        values[keyword] = "" if element is None else "\\".join(text_values(element)).strip(" \0")
    return values


def scan_with_values(
    path: Path | str,
    policy: Policy | None = None,
    keywords: Iterable[str] = (),
    dataset: Dataset | None = None,
    known: tuple[Iterable[str], Iterable[str]] = ((), ()),
) -> tuple[ScanReport, dict[str, str]]:
    """``scan_file`` plus the top-level values of ``keywords`` (for policy matching; never put in a
    report). ``dataset``: the file as ingest's index already read and checked it (``index.read_instance``),
    scanned instead of reading the file again; ``known`` as for ``scan_dataset``."""
    policy = policy or BASIC
    table()  # a broken installation must fail loudly, not make every file look "unreadable"
    try:
        if dataset is None:
            dataset = read_dataset(Path(path))
        report = scan_dataset(dataset, policy, str(path), known)
        return report, top_level_values(dataset, keywords)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a report, never an exception
        return ScanReport(
            file=str(path), readable=False, error=_describe(exc), policy_version=policy.version
        ), {}


def scan_file(
    path: Path | str, policy: Policy | None = None, known: tuple[Iterable[str], Iterable[str]] = ((), ())
) -> ScanReport:
    """Scan one Part 10 file (``known`` as for ``scan_dataset``). Never raises: an unreadable file gives
    ``ScanReport(readable=False, error=...)``."""
    return scan_with_values(path, policy, known=known)[0]


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|b'[^']*'")


def _describe(exc: BaseException) -> str:
    # pydicom's messages name tags and offsets, but a validation message may quote a value: quoted text is
    # masked so an error line can never carry PHI. One short line.
    text = _QUOTED.sub("'…'", " ".join(str(exc).split()))[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
