"""PS3.15 Annex E, Table E.1-1 (the Basic Application Confidentiality Profile), as lookups.

The table is vendored in ``gateway/data/ps3.15-table-e1-1.json`` (see the NOTICE next to it) and read once
with ``importlib.resources``. ``effective_action(row, options)`` answers "what does the profile, with these
options enabled, say about this element": a basic-profile code (D, Z, X, U or a combination) or an option code
(K, C).

The scanner and the de-identifier both go through this module so that "what counts as PHI" and "what the
de-identifier removes" can never drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

# PS3.15 option columns of the table that this gateway implements. cleanGraphOpt, cleanPixOpt and
# cleanRecogOpt need pixel or overlay analysis, which we do not do: a policy asking for them is refused.
SUPPORTED_OPTIONS = (
    "rtnLongFullDatesOpt",
    "rtnLongModifDatesOpt",
    "rtnPatCharsOpt",
    "rtnDevIdOpt",
    "rtnUIDsOpt",
    "rtnSafePrivOpt",
    "rtnInstIdOpt",
    "cleanDescOpt",
    "cleanStructContOpt",
)
UNSUPPORTED_OPTIONS = ("cleanGraphOpt", "cleanPixOpt", "cleanRecogOpt")

# CID 7050 "De-identification Method" codes (coding scheme DCM), written into the
# DeidentificationMethodCodeSequence of every file the gateway de-identifies.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES: dict[str, tuple[str, str]] = {
    "cleanStructContOpt": ("113104", "Clean Structured Content Option"),
    "cleanDescOpt": ("113105", "Clean Descriptors Option"),
    "rtnLongFullDatesOpt": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "rtnLongModifDatesOpt": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "rtnPatCharsOpt": ("113108", "Retain Patient Characteristics Option"),
    "rtnDevIdOpt": ("113109", "Retain Device Identity Option"),
    "rtnUIDsOpt": ("113110", "Retain UIDs Option"),
    "rtnSafePrivOpt": ("113111", "Retain Safe Private Option"),
    "rtnInstIdOpt": ("113112", "Retain Institution Identity Option"),
}
MODIFIED_DATES_CODE = OPTION_CODES["rtnLongModifDatesOpt"][0]

_TABLE = "ps3.15-table-e1-1.json"


@dataclass(frozen=True)
class Row:
    tag: str  # as in the standard: "(0010,0010)", "(60XX,3000)"
    name: str
    basic: str  # basic-profile code, "*" stripped: "Z", "X/Z/D", "U"...
    options: tuple[tuple[str, str], ...]  # (option column, "K" | "C")


@dataclass(frozen=True)
class _Wildcard:
    mask: int
    value: int
    row: Row


@dataclass(frozen=True)
class Table:
    exact: dict[int, Row]
    wildcards: tuple[_Wildcard, ...]
    private: Row  # the "(GGGG,EEEE) where GGGG is odd" row

    def lookup(self, tag: int) -> Row | None:
        """The row for a public element, or None. Private (odd group) elements are handled by the caller."""
        row = self.exact.get(tag)
        if row is not None:
            return row
        group = tag >> 16
        if group % 2 == 0:
            for card in self.wildcards:
                if tag & card.mask == card.value:
                    return card.row
        return None


def _parse_row(raw: dict[str, str]) -> Row:
    options = tuple(
        (column, raw[column]) for column in SUPPORTED_OPTIONS + UNSUPPORTED_OPTIONS if column in raw
    )
    name = raw["name"].split("\n", 1)[0].strip()  # "Icon Image Sequence\n\n(see Note 11)"
    return Row(tag=raw["tag"].upper(), name=name, basic=raw["basicProfile"].replace("*", ""), options=options)


@lru_cache(maxsize=1)
def table() -> Table:
    """Load Table E.1-1 from the package data (once per process)."""
    rows = json.loads((files("gateway") / "data" / _TABLE).read_text(encoding="utf-8"))
    exact: dict[int, Row] = {}
    wildcards: list[_Wildcard] = []
    private: Row | None = None
    for raw in rows:
        row = _parse_row(raw)
        text = row.tag
        if "WHERE GGGG IS ODD" in text:
            private = row
            continue
        hexdigits = text[1:5] + text[6:10]
        if "X" in hexdigits:
            # "(60XX,3000)": X digits are free, the others must match.
            mask = int("".join("0" if c == "X" else "F" for c in hexdigits), 16)
            value = int(hexdigits.replace("X", "0"), 16)
            wildcards.append(_Wildcard(mask, value, row))
        else:
            exact[int(hexdigits, 16)] = row
    if private is None:
        raise RuntimeError(f"{_TABLE}: no private attributes row")
    return Table(exact=exact, wildcards=tuple(wildcards), private=private)


def effective_action(row: Row, options: frozenset[str]) -> str:
    """The action for ``row`` with ``options`` enabled: an option's K (keep) wins over its C (clean), and any
    enabled option's code wins over the basic-profile code."""
    codes = {code for column, code in row.options if column in options}
    if "K" in codes:
        return "K"
    if "C" in codes:
        return "C"
    return row.basic


def is_date_clean(row: Row, options: frozenset[str]) -> bool:
    """True when ``row`` is C only because of the modified-dates option (a date or time to shift)."""
    return any(column == "rtnLongModifDatesOpt" and code == "C" for column, code in row.options) and not any(
        code == "K" for column, code in row.options if column in options
    )


def tag_text(tag: int) -> str:
    """``(0010,0010)``: the form used in every report path."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
