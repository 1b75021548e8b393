"""Rules beyond Table E.1-1 that the scanner and the de-identifier share.

- Free text (LO, LT, ST, UT, SH, UC) that repeats a part of the patient's name, one of the patient's IDs or the
  patient's birth date (as DICOM writes it or as people do: ``date_forms``) found anywhere in the same file (any
  sequence depth, Original Attributes Sequence included).
- Free text that gives a birth date, whoever's: a keyword (DOB, date of birth, born...) followed by a date.
- Ages above 89 years (HIPAA Safe Harbor groups them as "90 or older").
- Modalities whose pixel data often carries burned-in text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import date

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

FREE_TEXT_VRS = frozenset({"LO", "LT", "ST", "UT", "SH", "UC"})
NAME_KEYWORDS = frozenset({"PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"})
ID_KEYWORDS = frozenset({"PatientID", "OtherPatientIDs", "AccessionNumber"})
IDENTIFIER_KEYWORDS = NAME_KEYWORDS | ID_KEYWORDS | {"PatientBirthDate"}
_IDENTIFIER_TAGS = tuple((keyword, int(tag_for_keyword(keyword) or 0)) for keyword in IDENTIFIER_KEYWORDS)
IDENTIFIER_TAGS = frozenset(number for _, number in _IDENTIFIER_TAGS)
_NAME_TAGS = frozenset(number for keyword, number in _IDENTIFIER_TAGS if keyword in NAME_KEYWORDS)
_BIRTH_DATE_TAG = int(tag_for_keyword("PatientBirthDate") or 0)
# Modalities whose images are often screen captures or carry operator annotations in the pixels: for these a
# missing Burned In Annotation is treated like YES.
BURNED_IN_MODALITIES = frozenset({"US", "IVUS", "SC", "XC", "ES", "GM", "OT", "XA", "RF", "OP", "DOC"})
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
# Secondary Capture SOP classes (PS3.4 B.5): screen captures whatever their Modality says, or when they say none
# (img2dcm writes no Modality: a capture with a name burned into it passed as clean).
SECONDARY_CAPTURE_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.7", *(f"1.2.840.10008.5.1.4.1.1.7.{n}" for n in range(1, 5))}
)
# Dummy values PS3.15 "D" allows ("replace with a non-zero length dummy value"): an element coded with D
# and whose every value is one of these is not a finding. Kept short and obviously fake on purpose.
DUMMY_VALUES = frozenset({"ANONYMIZED", "ANONYMOUS", "19000101", "19000101000000", "000000", "0"})
MIN_NAME_PART = 2
MIN_ID = 3
MAX_AGE_YEARS = 89

_SPLIT_NAME = re.compile(r"[\^=\s,]+")
# The letters of a word in the alphabets that write words apart and have letter case: Latin (accented, and the
# combining accents of decomposed text), Greek, Cyrillic. A name part next to one is inside a longer word ("Ли" in
# "Поликлиника", as "LI" in "CLINIC"). Other scripts join honorifics, particles and prefixes to a name (山田太郎様,
# 김희중님, לשרון): there a name part is found inside a longer run of letters too.
_WORD_CHARACTER = (
    "0-9A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u0300-\u036f\u0370-\u037d\u037f-\u0386\u0388-\u03ff"
    "\u0400-\u052f\u1e00-\u1fff"
)
# Cyrillic and Greek decline names by adding a case ending (Иванов, Иванова, Иванову): a name part of at least
# MIN_DECLINED_NAME_PART letters in those alphabets is also found at the start of a longer word (fail closed; a
# shorter one, "Ли", would start too many ordinary words). Latin text is matched whole-word ("Müllers" is missed).
_DECLINING = re.compile("[\u0370-\u03ff\u1f00-\u1fff\u0400-\u052f\u0300-\u036f]+")
MIN_DECLINED_NAME_PART = 4
_DA = re.compile(r"\d{8}")
# A birth date given in words: DOB / D.O.B. / date of birth / birth date / born (on) / geb. (German), then a date
# as DICOM or people write it. Only with its keyword: a bare date in text is usually the study's.
_GIVEN_BIRTH_DATE = re.compile(
    r"(?<![0-9A-Za-z])(?:d\.?o\.?b|date\s+of\s+birth|birth\s*date|born(?:\s+on)?|geb(?:oren|\.)?)\.?\s*[:=#-]?\s*"
    r"(?:\d{8}|\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})(?![0-9])",
    re.IGNORECASE,
)
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_DIVISOR = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}


def vr_of(dataset: Dataset, tag: int) -> str:
    """The VR of an element without converting it (implicit-VR raw elements carry none: use the dictionary;
    unknown and private ones count as UN; ambiguous ones such as "US or SS" take the first)."""
    return element_vr(dataset.get_item(tag, keep_deferred=True), tag)


def element_vr(element: object, tag: int) -> str:
    """``vr_of`` of an element already looked up (``Dataset.get_item``; None when absent)."""
    vr = getattr(element, "VR", None)
    if vr is None or (vr == "UN" and not (tag >> 16) % 2):
        # a public element sent as UN (e.g. after a VR-losing conversion) is what pydicom decodes it as: its
        # dictionary VR (config.replace_un_with_known_vr), so a UID in it is remapped, not emptied
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    return str(vr).split(" or ")[0]


def deferred(dataset: Dataset, tag: int) -> RawDataElement | None:
    """The raw element when its value was left on disk by ``defer_size`` (None otherwise). pydicom also reads
    an empty value of some VRs (DS, IS, UL...) as ``None``: with length 0, nothing is left on disk."""
    element = dataset.get_item(tag, keep_deferred=True)
    if isinstance(element, RawDataElement) and element.value is None and element.length != 0:
        return element
    return None


def value_length(dataset: Dataset, tag: int) -> int:
    """Length of an element's value without loading it (items for a sequence; 0xFFFFFFFF = undefined)."""
    return element_length(dataset.get_item(tag, keep_deferred=True))


def element_length(element: object) -> int:
    """``value_length`` of an element already looked up (``Dataset.get_item``; None when absent)."""
    if element is None:
        return 0
    if isinstance(element, RawDataElement):
        return int(element.length)
    value = getattr(element, "value", None)
    if isinstance(value, bytes | str | list | Sequence):
        return len(value)
    return int(value is not None)


def text_values(value: object) -> list[str]:
    """The string values of an element value (multi-valued or not); non-strings become ``str``."""
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(item) for item in value if item is not None]
    if isinstance(value, bytes):
        return []
    return [str(value)]


def is_empty_text(values: Iterable[str]) -> bool:
    return all(not value.strip(" \0") for value in values)


def date_forms(value: str) -> list[str]:
    """A DA value as text writes it: 19950331, 1995-03-31 (and / .), 31.03.1995, 31/03/1995, 31-03-1995, US order
    03/31/1995, and without leading zeros (31.3.1995, 3/31/1995). Nothing for a value that is no valid date."""
    text = value.strip(" \0")
    if _DA.fullmatch(text) is None:
        return []
    year, month, day = text[:4], text[4:6], text[6:]
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return []
    forms = {text}
    for sep in "-/.":
        forms.add(f"{year}{sep}{month}{sep}{day}")
        for m, d in ((month, day), (month.lstrip("0"), day.lstrip("0"))):
            forms.update((f"{d}{sep}{m}{sep}{year}", f"{m}{sep}{d}{sep}{year}"))
    return sorted(forms)


def gives_birth_date(values: Iterable[str]) -> bool:
    """Whether text gives a birth date with its keyword ("dob 19950331", "Date of birth: 31.03.1995")."""
    return any(_GIVEN_BIRTH_DATE.search(value) for value in values)


def _name_parts(value: str) -> Iterator[str]:
    # PN: up to three groups (alphabetic=ideographic=phonetic), each family^given^middle^prefix^suffix.
    # Prefixes and suffixes ("DR", "JR") are too common in ordinary text to count as identifying.
    for group in value.split("="):
        components = group.split("^")
        for component in components[:3]:
            for part in _SPLIT_NAME.split(component):
                part = part.strip(" \0")
                if len(part) >= MIN_NAME_PART:
                    yield part
        # family and given name written as one, as Chinese, Japanese and Korean text writes a name: "王伟" for
        # 王^伟, whose one-character components are each too common to count alone
        whole = "".join(component.strip(" \0") for component in components[:2])
        if len(components) > 1 and len(whole) >= MIN_NAME_PART:
            yield whole


class Identifiers:
    """The patient's name parts and IDs found in one file, and a matcher for text that repeats them."""

    def __init__(self, names: Iterable[str], ids: Iterable[str]) -> None:
        names, ids = list(map(_compatible, names)), map(_compatible, ids)
        tokens = sorted({t for t in names if len(t) >= MIN_NAME_PART} | {t for t in ids if len(t) >= MIN_ID})
        declined = sorted({t for t in names if len(t) >= MIN_DECLINED_NAME_PART and _DECLINING.fullmatch(t)})
        # longest first so that "SMITH-JONES" wins over "SMITH"; boundaries so "LI" does not match "CLINIC"
        tokens.sort(key=len, reverse=True)
        declined.sort(key=len, reverse=True)
        alternatives = [f"(?:{_alternation(tokens)})(?![{_WORD_CHARACTER}])"] if tokens else []
        if declined:  # a case ending after the whole name: no right boundary
            alternatives.append(f"(?:{_alternation(declined)})")
        self._pattern = (
            re.compile(f"(?<![{_WORD_CHARACTER}])(?:{'|'.join(alternatives)})", re.IGNORECASE) if tokens else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def repeated_in(self, values: Iterable[str]) -> bool:
        return self._pattern is not None and any(self._pattern.search(_compatible(value)) for value in values)

    @classmethod
    def collect(cls, dataset: Dataset) -> Identifiers:
        return cls(*identifier_values(dataset))


def _alternation(tokens: list[str]) -> str:
    return "|".join(re.escape(t) for t in tokens)


def _compatible(text: str) -> str:
    """``text`` with one form for the letters Unicode counts as the same (NFKC): Japanese writes a name in
    half-width katakana (ﾔﾏﾀﾞ, JIS X 0201) or full-width (ヤマダ), in full-width Latin (ＹＡＭＡＤＡ) or not. And
    Latin, Greek and Cyrillic letters without their accents: Greek capitals are written without them
    (Παπαδόπουλος, ΠΑΠΑΔΟΠΟΥΛΟΣ), and so are French ones often (Lefèvre, LEFEVRE). Other scripts keep their
    marks (a Japanese dakuten makes another sound, not an accented letter)."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
    kept: list[str] = []
    base = ""
    for char in decomposed:
        if unicodedata.combining(char):
            if base < _FOLDED_SCRIPTS_END:
                continue
        else:
            base = char
        kept.append(char)
    return unicodedata.normalize("NFC", "".join(kept))


_FOLDED_SCRIPTS_END = "\u0530"  # Latin, Greek and Cyrillic (with their supplements) end before Armenian


def identifier_values(dataset: Dataset) -> tuple[list[str], list[str]]:
    """The patient's name parts and IDs found anywhere in ``dataset`` (what ``Identifiers`` matches text against)."""
    names: list[str] = []
    ids: list[str] = []
    _collect(dataset, names, ids)
    return names, ids


def add_identifier(tag: int, values: Iterable[str], names: list[str], ids: list[str]) -> None:
    """What the values of an ``IDENTIFIER_TAGS`` element add to the patient's name parts or IDs (a birth date counts
    as an ID, in each of the forms text writes it). A dummy (what de-identification writes for D) identifies
    nobody: were it an ID, every other dummy in the file would repeat it."""
    values = [value for value in values if not is_dummy(value)]
    if tag in _NAME_TAGS:
        for value in values:
            names.extend(_name_parts(value))
    elif tag == _BIRTH_DATE_TAG:
        for value in values:
            ids.extend(date_forms(value))
    else:
        ids.extend(value.strip(" \0") for value in values)


def _collect(dataset: Dataset, names: list[str], ids: list[str]) -> None:
    # looked up by plain int among the dataset's own tag objects: a keyword lookup (``keyword in dataset``) made
    # a new tag object and compared tags in Python, 7 times per item of every sequence
    own = {int(tag): tag for tag in dataset.keys()}
    for _, number in _IDENTIFIER_TAGS:
        tag = own.get(number)
        if tag is not None:
            add_identifier(number, text_values(dataset[tag].value), names, ids)
    for tag in own.values():
        if vr_of(dataset, tag) == "SQ":
            for item in dataset[tag].value:
                _collect(item, names, ids)


def is_dummy(value: str) -> bool:
    """One of ``DUMMY_VALUES``, as a person name too ("ANONYMIZED^": a family name alone, PS3.5 6.2)."""
    return value.strip(" \0").rstrip("^").upper() in DUMMY_VALUES


def age_years(value: str) -> float | None:
    """Years from an AS value ("045Y", "018M"), or None when it is not a valid AS."""
    match = _AGE.match(value.strip(" \0"))
    if match is None:
        return None
    return int(match.group(1)) / _AGE_DIVISOR[match.group(2)]
