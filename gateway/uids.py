"""DICOM UID validation: done before a UID touches a storage key, a URL or a SQL query."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import InvalidUID

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # fullmatch: "$" would accept a trailing newline


def is_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, at most 64 characters. Leading zeros are tolerated (seen in the wild)."""
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def check_uid(value: str, what: str = "UID") -> str:
    if not is_uid(value):
        raise InvalidUID(f"{what} is not a valid DICOM UID")
    return value


@dataclass(frozen=True, slots=True)
class InstanceId:
    """Who an instance is: its Study, Series and SOP Instance UIDs. The SOP Class UID is not part of it (it says
    what the instance is, not which one)."""

    study: str
    series: str
    sop: str

    @property
    def key(self) -> str:
        """Storage key of the stored instance (README, Storage layout: the layout is part of the contract)."""
        return f"studies/{check_uid(self.study)}/series/{check_uid(self.series)}/instances/{check_uid(self.sop)}.dcm"
