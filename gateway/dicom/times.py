"""DICOM TM and DA values (PS3.5 6.2) as the catalog keys them: ``time_key`` for stored values and QIDO bounds
alike, ``date_key`` for stored dates (``undotted`` for a date in a query, which may be partial).

Free of pydicom: QIDO's parser imports it, and a process that only parses uploads must not load pydicom's
dictionary (``gateway.catalog.records``).
"""

from __future__ import annotations

import datetime
import re

# PS3.5 6.2 TM: HH[MM[SS[.F{1,6}]]]; the colons of the form before DICOM 3.0 (10:15:00), which PS3.5 still
# recommends reading, are optional
_TM = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{0,6}))?)?)?")


def time_key(value: str, fill: str = "0") -> str | None:
    """A TM value as the catalog stores and QIDO compares it: ``HHMMSS.FFFFFF``, the components the value omits
    filled with ``fill`` ("0": the value's first instant, for a stored value and a lower bound; "9": its last, for
    an upper bound). Every key has one length, so string order is time order on every database, and ``1015``,
    ``101500`` and ``101500.000`` are one time (PS3.4 C.2.2.2.5). None when it is no time of day (hours past 23,
    minutes past 59, seconds past 60; 60 is a leap second). pydicom's TM gives a ``datetime.time``, which cannot hold
    that second and forgets which components were given (the upper bound needs them)."""
    found = _TM.fullmatch(value)
    if found is None:
        return None
    hours, minutes, seconds, fraction = found.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        return None
    whole = hours + (minutes or "") + (seconds or "")
    return whole.ljust(6, fill) + "." + (fraction or "").ljust(6, fill)


# PS3.5 6.2 DA: YYYYMMDD; the form before DICOM 3.0, yyyy.mm.dd, which PS3.5 still recommends reading
_DA_DOTTED = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")


def undotted(value: str) -> str:
    """A date of the form before DICOM 3.0 (``1993.03.04``) without its dots; any other value as it is."""
    found = _DA_DOTTED.fullmatch(value)
    return "".join(found.groups()) if found else value


def date_key(value: str) -> str | None:
    """A DA value as the catalog stores and QIDO compares it: ``YYYYMMDD`` (``1993.03.04`` without its dots: as
    text it sorted before ``19930101`` and matched no day). None when it names no calendar day (``00000000``, the
    placeholder some modalities write for an unknown date; a thirteenth month), as ``time_key`` has no time of day
    match: compared as text, ``00000000`` was a date before any other."""
    text = undotted(value)
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return text
