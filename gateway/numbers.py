"""Integers read from requests and from files, kept inside what the catalog can store.

Python's ``int()`` has no upper bound and accepts ``" 5"``, ``"1_000"`` and non-ASCII digits, while SQLite stores
signed 64-bit integers (a larger parameter raises ``OverflowError``: a 500) and PostgreSQL ``INTEGER`` columns
32-bit ones. Every integer taken from a query string or a path goes through ``parse_int``: plain ASCII decimal
digits within a stated range, or a 400 that names the parameter.
"""

from __future__ import annotations

import math
import re

from gateway.errors import BadRequest

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1  # the range of DICOM IS (PS3.5 6.2) and of the catalog's INTEGER columns
_UNSIGNED = re.compile(r"[0-9]{1,32}")
_SIGNED = re.compile(r"[+-]?[0-9]{1,32}")
# A decimal number as a query writes one: Python's float() also takes "1_0" (10), " 1", fullwidth digits, "inf"
# and "nan", none of which a client means as a window or a region
_DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,32}(?:\.[0-9]{0,32})?|\.[0-9]{1,32})(?:[eE][+-]?[0-9]{1,3})?")


def parse_int(text: str, name: str, *, low: int = 0, high: int = INT32_MAX, signed: bool = False) -> int:
    """``text`` as an integer in ``low..high``; ``BadRequest`` naming ``name`` otherwise. ``signed`` allows a
    leading ``+`` or ``-`` (DICOM IS values)."""
    if (_SIGNED if signed else _UNSIGNED).fullmatch(text) is None or not low <= int(text) <= high:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}")
    return int(text)


def parse_is(text: str, name: str, *, low: int = 0, high: int = INT32_MAX) -> int:
    """A query parameter PS3.18 encodes as a DICOM IS (WADO-URI's ``rows``, ``columns``, ``frameNumber``,
    ``imageQuality``): PS3.5 6.2 allows a leading ``+`` or ``-`` and pads with leading or trailing spaces (``+5``,
    `` 5``, and ``+5`` unencoded in a query, which reads as `` 5``), never inside the digits."""
    return parse_int(text.strip(" "), name, low=low, high=high, signed=True)


def int32_or_none(value: object) -> int | None:
    """A stored file's integer value for a catalog column: None when it is not an integer that fits (a file
    with an out-of-range Series Number is still stored; it is just not searchable by that number)."""
    try:
        number = int(str(value).strip()) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and INT32_MIN <= number <= INT32_MAX else None


def parse_decimal(text: str) -> float:
    """``text`` as a number written in plain ASCII decimal (``-12.5``, ``1e3``); ``ValueError`` otherwise, for the
    caller to answer the 400 that names its parameter."""
    if _DECIMAL.fullmatch(text) is None:
        raise ValueError(text)
    return float(text)


def json_integer(value: object) -> int | None:
    """An integer field of a JSON body: an int, or a float with no fraction (``900.0``: what Python's ``json.dumps``
    of a float, Gson and PHP send for 900; ``9e2``), as that int. None for anything else (``900.5``, ``true``, a
    string, and ``NaN`` / ``Infinity`` / ``1e400``, which Python's decoder reads as non-finite floats), for the caller
    to answer the 400 that names its field. JSON has one number type (RFC 8259 6): ``900.0`` is the number 900."""
    if type(value) is int:
        return value
    if type(value) is float and math.isfinite(value) and value.is_integer():
        return int(value)
    return None
