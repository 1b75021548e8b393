"""Element values converted once per process, reused when the same bytes come again.

The slices of a series carry the same patient, study, series and equipment elements, and pydicom's conversion of
those values (character sets, PN, DS, ...) was most of ingest's CPU per slice (docs/bench.md, B4, session 9). What
pydicom makes of a value depends only on its tag, VR, bytes, byte order, the character set in force and pydicom's
validation mode, which every key holds, except where it reads other elements: private elements (their VR may
come from their creator) and elements read by an ambiguous dictionary VR ("US or SS", resolved from Pixel
Representation: implicit VR, or sent as UN) are never memoised.

Entries are shared between instances: callers read what they get, never change it. The memo lives in process
memory only (like the values it was made from) and is emptied when full, so memory stays flat.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR

SPECIFIC_CHARACTER_SET = 0x00080005
MAX_VALUE = 256  # bytes: longer values are converted every time (rare, and they would make the memo large)

Value = TypeVar("Value")

_ambiguous: dict[int, bool] = {}


def is_memoisable(tag: int, vr: str | None, implicit: bool, value: bytes | None) -> bool:
    """Whether the conversion of this element's ``value`` depends on nothing but the memo key."""
    if value is None or len(value) > MAX_VALUE or (tag >> 16) & 1:
        return False
    if implicit or vr is None or vr == "UN":  # pydicom reads these by the dictionary VR
        known = _ambiguous.get(tag)
        if known is None:
            try:
                known = " or " in dictionary_VR(tag)
            except KeyError:  # unknown public tag, read as UN: not kept (the dictionary bounds this map)
                return False
            _ambiguous[tag] = known
        return not known
    return True


def validation_mode() -> Any:
    """pydicom's reading validation mode: part of every key (it decides whether a bad value warns or raises)."""
    return pydicom_config.settings.reading_validation_mode


class ValueMemo(Generic[Value]):
    """A bounded map from a memo key to what was made of that value."""

    SIZE = 8192

    def __init__(self) -> None:
        self.entries: dict[Hashable, Value] = {}

    def get(self, key: Hashable) -> Value | None:
        return self.entries.get(key)

    def store(self, key: Hashable, value: Value) -> None:
        if len(self.entries) >= self.SIZE:
            self.entries.clear()
        self.entries[key] = value
