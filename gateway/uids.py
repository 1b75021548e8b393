"""DICOM UID validation: done before a UID touches a storage key, a URL or a SQL query."""

from __future__ import annotations

import re

from gateway.errors import InvalidUID

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # fullmatch: "$" would accept a trailing newline


def is_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, at most 64 characters. Leading zeros are tolerated (seen in the wild)."""
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def check_uid(value: str, what: str = "UID") -> str:
    if not is_uid(value):
        raise InvalidUID(f"{what} is not a valid DICOM UID")
    return value


def instance_key(study: str, series: str, sop: str) -> str:
    """Storage key of a stored instance (README, Storage layout: the layout is part of the contract)."""
    return f"studies/{check_uid(study)}/series/{check_uid(series)}/instances/{check_uid(sop)}.dcm"
