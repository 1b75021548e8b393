"""QIDO-RS (PS3.18 8.3.4, 10.6): parse query parameters into a ``QidoQuery``; ``gateway.catalog.search`` turns it
into SQL and shapes the rows into DICOM JSON.

Matching supported: single value (exact; case-sensitive except PN, which PS3.4 C.2.2.2.1 allows to match
case-insensitively and we do, on every backend), wildcards ``*`` and ``?`` (SQL LIKE, with ``%``, ``_`` and ``\\``
escaped), UID lists (comma or backslash separated), date and time ranges (``a-b``, ``-b``, ``a-``; a partial date
such as ``2020`` or ``202003`` matches the whole year or month; a date range and a time range of one form are one
span, PS3.4 C.2.2.2.5.4), ``ModalitiesInStudy`` (any of the listed values; ``Modality`` and ``PatientSex`` lists
likewise, plain codes only; a UID key or one of these repeated is the list of its values), integer attributes
(``SeriesNumber``, ``InstanceNumber``), and the one sequence PS3.18 Table 10.6.1-5 has a series query match,
``RequestAttributesSequence`` by its ``ScheduledProcedureStepID`` and ``RequestedProcedureID``
(``RequestAttributesSequence.RequestedProcedureID=RP1`` or ``00400275.00401001=RP1``: a series matches when one
item matches every such key, PS3.4 C.2.2.2.6). Attributes may be given by keyword or by tag (``PatientID`` or
``00100020``); attributes of the query level and of the levels above it can be matched. An empty
value of any other attribute is universal matching, a return key (as ``includefield``).

What the gateway does not support is ignored, as PS3.18 8.3 has an origin server do with a query parameter or value
it does not support (the request is processed as if it were absent), and owned up to in a ``Warning`` (``warnings``):
a parameter that names no attribute (``foo``, vendor parameters), an attribute key the catalog does not match (a
value of ``ImageType``, a sequence key other than the two above) and an ``includefield`` value that names no
attribute. ``fuzzymatching``, ``emptyvaluematching`` and ``multiplevaluematching`` are ignored in the words of
PS3.18 8.3.4.2, 8.3.4.5, 8.3.4.6 (each is a boolean: any value but ``true`` or ``false`` is a 400). A bad value
of what is supported (a date, a UID, ``limit``), a key the catalog matches of a lower level than the query's
(``Modality=CT`` in a studies query; ``Modality=`` is a return key; ``Rows`` there is ignored as above) or one other
attribute given twice stays a 400 that names the parameter. The
transport parameters ``token``, ``accept``, ``charset`` and ``_`` (jQuery's cache buster) are ignored silently (the
DICOMweb layer handles the first three).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.dicom.times import time_key, undotted
from gateway.errors import BadRequest
from gateway.numbers import INT32_MIN, parse_int
from gateway.uids import check_uid, is_uid

Level = Literal["studies", "series", "instances"]
LEVELS: dict[str, int] = {"studies": 0, "series": 1, "instances": 2}
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# The most codes a ModalitiesInStudy list takes: each is a test of its own on every study read (a LIKE in the SQL),
# and PS3.3 C.7.3.1.1.1 defines fewer than 128 modalities, retired ones included. A few hundred distinct codes
# passed SQLite's expression depth (1,000) and the search was a 503 "catalog unavailable" with Retry-After.
MAX_MODALITY_CODES = 128
_CONTROL = {"limit", "offset", "fuzzymatching", "includefield"}
# Matching options PS3.18 defines and we do not support: the search is made without them and, for a ``true``, the
# response carries a Warning with these words (8.3.4.2, 8.3.4.5, 8.3.4.6).
UNSUPPORTED_OPTIONS = {
    "fuzzymatching": "The fuzzymatching parameter is not supported. Only literal matching has been performed.",
    "emptyvaluematching": (
        "The emptyvaluematching parameter is not supported. Empty Value Matching has not been performed."
    ),
    "multiplevaluematching": (
        "The multiplevaluematching parameter is not supported. Multiple Value Matching has not been performed."
    ),
}
_TRANSPORT = {"token", "accept", "charset", "_"}
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
# What was ignored, named in the Warning texts (our words: PS3.18 8.3 asks only that it be ignored). Names are
# shown only when they are plain (a header holds no CR LF; a client's text is never echoed raw), at most a few.
IGNORED_TEXTS = {
    "parameter": "The following query parameters are not supported and were ignored: ",
    "key": "The following attributes are not supported as query keys and were not matched: ",
    "include": "The following includefield values name no attribute and were ignored: ",
}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NAMED_MAX = 10


@dataclass(frozen=True)
class Attr:
    keyword: str
    tag: str  # 8 upper-case hex digits, as DICOM JSON keys are written
    vr: str
    level: int  # 0 study, 1 series, 2 instance
    column: str | None  # column of that level's table; None: computed (counts, modalities) or attrs only
    kind: str  # uid | str | pn | date | time | int | modalities | request | none (return only, not matchable)


_ATTRS = [
    Attr("SpecificCharacterSet", "00080005", "CS", 0, None, "none"),
    Attr("StudyDate", "00080020", "DA", 0, "study_date", "date"),
    Attr("StudyTime", "00080030", "TM", 0, "study_time", "time"),
    Attr("AccessionNumber", "00080050", "SH", 0, "accession_number", "str"),
    Attr("InstanceAvailability", "00080056", "CS", 0, None, "none"),
    Attr("ModalitiesInStudy", "00080061", "CS", 0, None, "modalities"),
    Attr("ReferringPhysicianName", "00080090", "PN", 0, "referring_physician_name", "pn"),
    Attr("TimezoneOffsetFromUTC", "00080201", "SH", 0, None, "none"),
    Attr("StudyDescription", "00081030", "LO", 0, "study_description", "str"),
    Attr("PatientName", "00100010", "PN", 0, "patient_name", "pn"),
    Attr("PatientID", "00100020", "LO", 0, "patient_id", "str"),
    Attr("PatientBirthDate", "00100030", "DA", 0, "patient_birth_date", "date"),
    Attr("PatientSex", "00100040", "CS", 0, "patient_sex", "str"),
    Attr("StudyInstanceUID", "0020000D", "UI", 0, "study_uid", "uid"),
    Attr("StudyID", "00200010", "SH", 0, "study_id", "str"),
    Attr("NumberOfStudyRelatedSeries", "00201206", "IS", 0, "num_series", "none"),
    Attr("NumberOfStudyRelatedInstances", "00201208", "IS", 0, "num_instances", "none"),
    Attr("Modality", "00080060", "CS", 1, "modality", "str"),
    Attr("SeriesDescription", "0008103E", "LO", 1, "series_description", "str"),
    Attr("SeriesInstanceUID", "0020000E", "UI", 1, "series_uid", "uid"),
    Attr("SeriesNumber", "00200011", "IS", 1, "series_number", "int"),
    Attr("NumberOfSeriesRelatedInstances", "00201209", "IS", 1, "num_instances", "none"),
    Attr("PerformedProcedureStepStartDate", "00400244", "DA", 1, "performed_procedure_step_start_date", "date"),
    Attr("PerformedProcedureStepStartTime", "00400245", "TM", 1, "performed_procedure_step_start_time", "time"),
    Attr("SOPClassUID", "00080016", "UI", 2, "sop_class_uid", "uid"),
    Attr("SOPInstanceUID", "00080018", "UI", 2, "sop_uid", "uid"),
    Attr("InstanceNumber", "00200013", "IS", 2, "instance_number", "int"),
    Attr("NumberOfFrames", "00280008", "IS", 2, "number_of_frames", "none"),
    Attr("Rows", "00280010", "US", 2, None, "none"),
    Attr("Columns", "00280011", "US", 2, None, "none"),
    Attr("BitsAllocated", "00280100", "US", 2, None, "none"),
]
# Sequence matching (PS3.4 C.2.2.2.6) on the one sequence PS3.18 Table 10.6.1-5 asks a series query to match, by
# the two item attributes it names; the items are those the series' stored attributes hold, which QIDO returns.
REQUEST_ATTRIBUTES = Attr("RequestAttributesSequence", "00400275", "SQ", 1, None, "request")
_REQUEST_ITEM_TAGS = frozenset({"00400009", "00401001"})  # ScheduledProcedureStepID, RequestedProcedureID
BY_KEYWORD = {a.keyword: a for a in _ATTRS}
# Date and time pairs matched as one DT when both are ranges of the same form (PS3.18 8.3.4.1.1, PS3.4 C.2.2.2.5.4)
_DATE_TIME_PAIRS = (("00080020", "00080030"), ("00400244", "00400245"))
BY_TAG = {a.tag: a for a in _ATTRS}
# Return attributes per level: every attribute of that level (PS3.18 tables 10.6.3-3/4/5, plus
# StudyDescription). Parent levels are added when the query is not scoped to a parent by the path.
RETURN_ATTRS = {level: [a for a in _ATTRS if a.level == level] for level in (0, 1, 2)}


@dataclass(frozen=True)
class Match:
    attr: Attr
    op: Literal["in", "eq", "like", "range", "item", "datetime"]
    # for "item": (item attribute tag, "eq" or "like", value) for each key of one item; for "datetime" (on the
    # date attribute): (time attribute, low date, low time, high date, high time), a missing end None
    values: tuple[Any, ...]


@dataclass(frozen=True)
class QidoQuery:
    level: Level
    matches: tuple[Match, ...] = ()
    include: frozenset[str] = frozenset()  # extra tags (8 hex digits) to return
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    study_uid: str | None = None  # from the path
    series_uid: str | None = None  # from the path
    warnings: tuple[str, ...] = ()  # texts of the Warning headers the answer carries (UNSUPPORTED_OPTIONS)
    server_limit: bool = False  # the page size is ours (no limit asked, or more than MAX_LIMIT), not the client's


def _resolve(name: str) -> tuple[str, Attr | None]:
    """(tag, known attribute or None) for a keyword or 8-hex tag; BadRequest when it is neither."""
    found = _lookup(name)
    if found is None:
        raise BadRequest(f"unknown attribute {name!r}")
    return found


def _lookup(name: str) -> tuple[str, Attr | None] | None:
    """(tag, known attribute or None) for a keyword or 8-hex tag; None when it is neither."""
    if _TAG.match(name):
        tag = name.upper()
        return tag, BY_TAG.get(tag)
    if name in BY_KEYWORD:
        attr = BY_KEYWORD[name]
        return attr.tag, attr
    from pydicom.datadict import tag_for_keyword

    number = tag_for_keyword(name)
    return None if number is None else (f"{number:08X}", None)


def _ignored_warnings(ignored: dict[str, list[str]]) -> tuple[str, ...]:
    """The Warning texts for what was ignored, by kind (``IGNORED_TEXTS``): the plain names, in the order given."""
    texts = []
    for kind, names in ignored.items():
        if not names:
            continue
        plain = list(dict.fromkeys(name for name in names if _PLAIN_NAME.fullmatch(name)))
        shown = ", ".join(plain[:_NAMED_MAX])
        others = len(set(names)) - min(len(plain), _NAMED_MAX)
        if others:
            shown += f"{', ' if shown else ''}{others} other{'s' if others > 1 else ''}"
        texts.append(IGNORED_TEXTS[kind] + shown)
    return tuple(texts)


def like_pattern(value: str) -> str:
    """A DICOM wildcard value (``*``, ``?``) as a LIKE pattern whose escape character is a backslash."""
    out = []
    for char in value:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,\\]", value) if part.strip()]


def _is_calendar_date(part: str) -> bool:
    """YYYY, YYYYMM or YYYYMMDD naming a real month and day (20231301 or 99999999 matched nothing, silently)."""
    try:
        datetime.date(int(part[:4]), int(part[4:6] or 1), int(part[6:8] or 1))
    except ValueError:
        return False
    return True


def _date_bounds(name: str, value: str) -> tuple[str | None, str | None]:
    def check(part: str) -> str:
        part = undotted(part)  # 1993.03.04, the form before DICOM 3.0 (an answer shows a file's value so)
        if not re.fullmatch(r"\d{4}(\d{2}(\d{2})?)?", part) or not _is_calendar_date(part):
            raise BadRequest(f"{name}: expected a date YYYYMMDD (or YYYY, YYYYMM) or a range of them")
        return part

    if "-" in value:
        low, _, high = value.partition("-")
        if not low and not high:
            raise BadRequest(f"{name}: empty date range")
        return (check(low).ljust(8, "0") if low else None, check(high).ljust(8, "9") if high else None)
    value = check(value)
    return value.ljust(8, "0"), value.ljust(8, "9")


def _time_bounds(name: str, value: str) -> tuple[str | None, str | None]:
    """The first and last instant a time or time range covers, as the catalog stores times (``time_key``): a
    single value is the range of what it names, so ``101500.000`` finds a stored ``101500`` and ``1015`` finds
    ``101530`` (PS3.4 C.2.2.2); an upper bound ``1200`` includes 12:00:59.999999."""

    def key(part: str, fill: str) -> str:
        found = time_key(part, fill)
        if found is None:
            raise BadRequest(f"{name}: expected a time HH[MM[SS[.FFFFFF]]] or a range of them")
        return found

    if "-" in value:
        low, _, high = value.partition("-")
        if not low and not high:
            raise BadRequest(f"{name}: empty time range")
        return (key(low, "0") if low else None, key(high, "9") if high else None)
    return key(value, "0"), key(value, "9")


def _match(name: str, attr: Attr, values: list[str]) -> Match | None:
    if attr.kind in ("uid", "modalities"):
        items = [item for value in values for item in _split_list(value)]
        if not items:
            if any(value.strip() for value in values):  # "," or "\\": separators, no item
                raise BadRequest(f"{name}: an empty list")
            return None
        if attr.kind == "uid":
            for item in items:
                if not is_uid(item):
                    raise BadRequest(
                        f"{name}: {item!r} is not a valid UID (wildcards are not allowed on UIDs)"
                    )
        elif any(not re.fullmatch(_CODE, item) for item in items):
            raise BadRequest(
                f"{name}: expected modality codes such as CT,MR, in upper case (wildcards * and ? allowed)"
            )
        elif any(item.strip("*") == "" for item in items):
            return None  # "*" matches every study, even one with no modality (universal matching)
        codes = tuple(dict.fromkeys(items))
        if attr.kind == "modalities" and len(codes) > MAX_MODALITY_CODES:
            raise BadRequest(f"{name}: a list of at most {MAX_MODALITY_CODES} codes ({len(codes)} given)")
        return Match(attr, "in", codes)
    if attr.vr == "CS" and len(values) > 1:
        # The key repeated is the list of codes, as a comma joins them: dicomweb-client sends a list so
        # (`search_filters={"Modality": ["CT", "MR"]}` is `Modality=CT&Modality=MR`), as UID keys repeated are a list
        present = [value for value in values if value.strip()]
        return _code_list(name, attr, ",".join(present)) if present else None
    if len(values) > 1:
        raise BadRequest(f"{name} given more than once")
    value = values[0]
    if attr.kind in ("str", "pn", "date", "time"):
        # leading and trailing spaces are padding (PS3.5 6.2), not part of the value, and the catalog holds values
        # without them: `PatientID=ID1%20`, as a value copied from a file is padded, matched nothing, and a date
        # range padded to an even length (`20240101-20240131%20`) was a 400 (dcm4che and DCMTK trim them too)
        value = value.strip(" ")
    if attr.vr == "CS" and ("," in value or "\\" in value):
        return _code_list(name, attr, value)
    if attr.kind == "pn" and "=" in value:
        # The catalog keeps a name's alphabetic component group only (PS3.5 6.2: groups are split by "="), so a
        # name given with its ideographic or phonetic groups, as a client copies it from a file or an answer, is
        # matched on that group. A name that asks for nothing but those groups (`=山田*`, `*=山田*`) cannot be
        # answered, which a 400 says: an empty answer, or every study, would both be wrong.
        value, _, others = value.partition("=")
        if value.strip("*^ ") == "" and others.strip("=*^ "):
            raise BadRequest(f"{name}: only the alphabetic component group (before the first '=') is matched")
    if value == "" or value.strip("*") == "" and value:
        return None  # universal matching
    if attr.kind == "pn" and value.strip("*^ ") == "":
        # only component delimiters (and "*"): every component empty or any, and trailing empty components are no
        # part of a name (PS3.5 6.2), so `^` is the zero-length value and `*^*` the "*" of PS3.4 C.2.2.2.4, both
        # universal matching (C.2.2.2.3); `^` matched nothing, `*^*` no name without a "^"
        return None
    if attr.vr == "CS" and attr.kind == "str" and not re.fullmatch(_CODE, value):
        # a code string is upper-case letters, digits, space and underscore (PS3.5 6.2): `Modality=mr` can match no
        # stored value, so it is the 400 that `Modality=CT,mr` and `ModalitiesInStudy=mr` are (it was `200 []`)
        raise BadRequest(f"{name}: expected a code in upper case, such as {_CODE_EXAMPLES.get(name, 'CT')} "
                         "(letters A-Z, digits, space and underscore; wildcards * and ? allowed)")
    if attr.kind == "date":
        return Match(attr, "range", _date_bounds(name, value))
    if attr.kind == "time":
        return Match(attr, "range", _time_bounds(name, value))
    if attr.kind == "int":  # IS: a 32-bit signed integer, optionally space-padded (PS3.5 6.2)
        return Match(attr, "eq", (parse_int(value.strip(" "), name, low=INT32_MIN, signed=True),))
    if "*" in value or "?" in value:
        return Match(attr, "like", (like_pattern(value),))
    return Match(attr, "eq", (value,))


# a CS value (PS3.5 6.2: 16 characters at most) or a wildcard pattern of one
_CODE = r"[A-Z0-9_ *?]{1,16}"
_CODE_EXAMPLES = {"PatientSex": "F", "00100040": "F"}


def _code_list(name: str, attr: Attr, value: str) -> Match:
    """``Modality=CT,MR`` (or ``CT\\MR``): any of the codes, as for ModalitiesInStudy. A code string holds no
    comma or backslash (PS3.5 6.2), so the list cannot be read as one value, which matched nothing in silence;
    Orthanc and dcm4chee answer it the same way (PS3.18 defines lists for UIDs only)."""
    items = _split_list(value)
    if not items or any(not re.fullmatch(r"[A-Z0-9_ ]{1,16}", item) for item in items):
        raise BadRequest(f"{name}: a list takes plain codes such as CT,MR (no wildcards)")
    return Match(attr, "in", tuple(dict.fromkeys(items)))


def _combined_date_times(matches: list[Match], ranges: dict[str, Match]) -> list[Match]:
    """A date range and a time range of the same form (both ``a-b``, both ``-b`` or both ``a-``) are one span, from
    the first date's time to the last date's (PS3.18 8.3.4.1.1 requires combined date-time matching, PS3.4
    C.2.2.2.5.4): ``StudyDate=20240101-20240102&StudyTime=1400-1400`` is the 24 hours from 14:00, not 14:00 on
    each day, which found nothing a client asking "since yesterday 14:00" wanted."""
    for date_tag, time_tag in _DATE_TIME_PAIRS:
        day, time = ranges.get(date_tag), ranges.get(time_tag)
        if day is None or time is None:
            continue
        if (day.values[0] is None, day.values[1] is None) != (time.values[0] is None, time.values[1] is None):
            continue  # not the same form: each matched on its own
        span = (time.attr, day.values[0], time.values[0], day.values[1], time.values[1])
        combined = Match(day.attr, "datetime", span)
        matches = [combined if m is day else m for m in matches if m is not time]
    return matches


def _request_item_key(
    name: str, values: list[str], level: str
) -> tuple[str, tuple[str, str, str] | None] | None:
    """A sequence key ``{sequence}.{attribute}`` (keywords or tags): its path of tags, and its test on one item
    (None for universal matching). Only RequestAttributesSequence's two keys of PS3.18 Table 10.6.1-5 are matched;
    None for any other path (the caller ignores it, with a Warning)."""
    sequence, _, item = name.partition(".")
    path = (_resolve(sequence)[0], _resolve(item)[0] if "." not in item else "")
    if path[0] != REQUEST_ATTRIBUTES.tag or path[1] not in _REQUEST_ITEM_TAGS:
        return None
    if LEVELS[level] < REQUEST_ATTRIBUTES.level:
        raise BadRequest(f"{name}: cannot match an attribute of a lower level in a {level} query")
    if len(values) > 1:
        raise BadRequest(f"{name} given more than once")
    value = values[0].strip(" ")  # SH: leading and trailing spaces are not significant (PS3.5 6.2)
    key = ".".join(path)
    if value.strip("*") == "":
        return key, None  # universal matching
    if "*" in value or "?" in value:
        return key, (path[1], "like", like_pattern(value))
    return key, (path[1], "eq", value)


def _int_param(name: str, values: list[str], default: int) -> int:
    if len(values) > 1:  # the last one silently won
        raise BadRequest(f"{name} given more than once")
    if not values or values[-1] == "":
        return default
    return parse_int(values[-1], name)


def parse_qido(
    level: Level,
    args: Mapping[str, list[str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> QidoQuery:
    """Parse QIDO query parameters (``args`` maps each name to all its values, like
    ``request.args.to_dict(flat= False)``). ``study_uid``/``series_uid`` come from the path and are validated
    here."""
    if level not in LEVELS:
        raise BadRequest(f"unknown QIDO level {level!r}")
    depth = LEVELS[level]
    if study_uid is not None:
        check_uid(study_uid, "StudyInstanceUID")
    if series_uid is not None:
        check_uid(series_uid, "SeriesInstanceUID")
    matches: list[Match] = []
    include: set[str] = set()
    include_all = False
    matched: dict[str, str] = {}  # attribute tag -> the name it was given under
    item_keys: list[tuple[str, str, str]] = []  # RequestAttributesSequence item keys: all match in one item
    ignored: dict[str, list[str]] = {kind: [] for kind in IGNORED_TEXTS}  # PS3.18 8.3: ignored, with a Warning
    ranges: dict[str, Match] = {}  # date and time range matches (a "-" in the value), by tag
    for name, values in args.items():
        if name in _TRANSPORT or name in UNSUPPORTED_OPTIONS:
            continue
        if name == "includefield":
            for item in (part.strip() for value in values for part in value.split(",")):
                if item == "all":
                    include_all = True
                elif item and (found := _lookup(item)) is not None:
                    include.add(found[0])
                elif item and "." in item and all(_lookup(part) for part in item.split(".")):
                    # a path into a sequence is an attribute too (PS3.18 8.3.4.1, 8.3.4.3): its sequence is
                    # returned whole, as naming the sequence returns it (it was ignored as naming no attribute)
                    include.add(_resolve(item.split(".")[0])[0])
                elif item:
                    ignored["include"].append(item)
            continue
        if name in ("limit", "offset"):
            continue
        if "." in name:
            if any(_lookup(part) is None for part in name.split(".")):
                ignored["parameter"].append(name)  # names no attribute: a vendor's parameter
                continue
            item_key = _request_item_key(name, list(values), level)
            if item_key is None:
                ignored["key"].append(name)
                continue
            if item_key[0] in matched:
                raise BadRequest(f"{name}: the same attribute as {matched[item_key[0]]}, given twice")
            matched[item_key[0]] = name
            if item_key[1] is not None:
                item_keys.append(item_key[1])
            continue
        found = _lookup(name)
        if found is None:  # names no attribute: a cache buster, a vendor's or a misspelt parameter
            ignored["parameter"].append(name)
            continue
        tag, attr = found
        if attr is None or attr.kind == "none":
            # Universal matching (an empty value, PS3.4 C.2.2.2.3) asks for no match, only the attribute returned:
            # a return key as includefield names one. C-FIND-style clients send them (`00101010=`). A value the
            # catalog cannot match is ignored (PS3.18 8.3), the attribute still returned; both were a 400.
            include.add(tag)
            if any(values):
                ignored["key"].append(name)
            continue
        if tag in matched:  # by keyword and by tag: two keys of one attribute were ANDed (0 results, no error)
            raise BadRequest(f"{name}: the same attribute as {matched[tag]}, given twice")
        matched[tag] = name
        if attr.level > depth:
            if not any(values):  # an empty value asks no match (PS3.4 C.2.2.2.3): a return key, as above
                include.add(tag)
                continue
            raise BadRequest(f"{name}: cannot match an attribute of a lower level in a {level} query")
        match = _match(name, attr, list(values))
        if match is not None:
            matches.append(match)
            if match.op == "range" and "-" in values[0]:
                ranges[tag] = match
    matches = _combined_date_times(matches, ranges)
    if item_keys:
        matches.append(Match(REQUEST_ATTRIBUTES, "item", tuple(item_keys)))
    asked = _int_param("limit", list(args.get("limit", [])), 0)
    limit = asked or DEFAULT_LIMIT
    return QidoQuery(
        level=level,
        matches=tuple(matches),
        include=frozenset(include),
        include_all=include_all,
        limit=min(limit, MAX_LIMIT),
        offset=_int_param("offset", list(args.get("offset", [])), 0),
        study_uid=study_uid,
        series_uid=series_uid,
        server_limit=asked == 0 or asked > MAX_LIMIT,
        warnings=tuple(text for name, text in UNSUPPORTED_OPTIONS.items() if _switch(name, args.get(name, [])))
        + _ignored_warnings(ignored),
    )


def _switch(name: str, values: list[str]) -> bool:
    """A matching option (PS3.18 8.3.4: a boolean): ``true`` or ``false``, in any case and with blanks around it; an
    empty value is the option not given. Any other value (``fuzzymatching=maybe``) is a 400 naming it, as a bad
    ``limit`` is: it was ignored, and a client that meant ``true`` was never told its matching was literal."""
    words = [value.strip().lower() for value in values]
    if any(word not in ("true", "false", "") for word in words):
        raise BadRequest(f"{name}: expected true or false")
    return "true" in words
