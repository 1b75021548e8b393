"""DICOM JSON (PS3.18 F.2) of one instance, computed at ingest, with relative BulkDataURIs.

Every bulk element (OB/OW/OF/OD/OL/OV/UN longer than the threshold, at any depth, and Pixel Data always) is
``{"vr": ..., "BulkDataURI": "bulkdata/<path>"}`` with the same ``<path>`` as ``BulkRange.path``; the URI is
relative to the instance URL (``.../instances/{sop}/``). Smaller binary values are ``InlineBinary``. File meta
(group 0002) is not part of the metadata (PS3.18: metadata describes the data set). Keys are sorted at every
level and ``metadata_text`` is canonical, so the same file always gives the same bytes.

Series- and study-level metadata reuse the stored text: ``rebase_bulkdata_text(text, "instances/{sop}/")`` is
a plain ``str.replace``, safe because in canonical JSON the sequence ``"BulkDataURI":"`` can only be a key
followed by its value (a quote inside a string value is always escaped).

The JSON of a value that repeats (the slices of a series share most of theirs) is made once per process
(``gateway.dicom.valuememo``): entries are shared between the metadata of different instances, which callers
read and never change.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.dataset import Dataset

from gateway.dicom.valuememo import SPECIFIC_CHARACTER_SET, ValueMemo, is_memoisable, validation_mode
from gateway.dicom.walker import WORD_BYTES, Element, little_endian_words, tag_hex

log = logging.getLogger(__name__)

_URI_MARK = '"BulkDataURI":"bulkdata/'
_INTEGER = re.compile(r"[+-]?[0-9]+")
# leading and trailing spaces of their values are padding (PS3.5 Table 6.2-1); pydicom keeps leading ones, and
# trailing ones of every value but the last (" DERIVED \\SECONDARY" gave " DERIVED ")
_PADDED_BOTH_ENDS = frozenset({"AE", "CS", "LO", "SH"})
_SAFE_PREFIX = re.compile(r"^[A-Za-z0-9._~/:%@!$&'()*+,;=-]*$")
# the integers every JSON reader holds exactly (RFC 8259 6: an IEEE 754 double's), JavaScript's Number.MAX_SAFE_INTEGER
_SAFE_INTEGER = 2**53 - 1


_memo: ValueMemo[dict[str, Any]] = ValueMemo()


def build_metadata(ds: Dataset, elements: list[Element], *, little_endian: bool = True) -> dict[str, Any]:
    """DICOM JSON of the walked ``elements``; ``ds`` is pydicom's reading of the same file (the same elements at
    every level, checked by ``index.read_instance``) and decodes the non-bulk values. A value pydicom cannot
    decode is left out (logged by tag) rather than failing the ingest. Call inside
    ``walker.quiet_validation()`` so pydicom logs no values. Big-endian and deflated files name BulkDataURIs too:
    the read path answers them with the converted value (``gateway.dicom.converted``)."""
    context = (little_endian, _charset(elements, b""), validation_mode())
    return _dataset_json(ds, elements, "", context)


def _charset(elements: list[Element], inherited: bytes | str) -> bytes | str:
    """The raw Specific Character Set of a data set (an item without one inherits its parent's, as in pydicom),
    wherever the file puts it: pydicom keys a data set by tag, whatever the order of the file."""
    for el in elements:
        if el.tag == SPECIFIC_CHARACTER_SET:
            return el.value if el.value is not None else "a bulk value"  # not bytes: never equal to a read value
    return inherited


def _dataset_json(
    ds: Dataset, elements: list[Element], prefix: str, context: tuple[bool, bytes | str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # pydicom finds its own tag objects by identity; a plain int key costs a new tag object and Python-level
    # comparisons in every one of the several lookups a first read of a value makes
    own = {int(tag): tag for tag in ds.keys()}
    for el in elements:
        if not el.tag & 0xFFFF:
            continue  # group lengths "shall not be included" (PS3.18 F.2.2): they count bytes of the file's encoding
        key = tag_hex(el.tag)
        tag = own.get(el.tag, el.tag)
        if el.items is not None:
            item_datasets = ds[tag].value
            items = [
                _dataset_json(
                    item_ds, item, f"{prefix}{key}/{i}/", (context[0], _charset(item, context[1]), context[2])
                )
                for i, (item_ds, item) in enumerate(zip(item_datasets, el.items, strict=True))
            ]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif el.bulk:
            out[key] = {"vr": el.vr, "BulkDataURI": f"bulkdata/{prefix}{key}"}
        else:
            memo_key = (
                (el.tag, el.vr, el.implicit, el.value, context)
                if is_memoisable(el.tag, el.vr, el.implicit, el.value)
                else None
            )
            if memo_key is not None and (known := _memo.get(memo_key)) is not None:
                out[key] = known
                continue
            try:
                # the threshold is irrelevant here: every element reaching this line is small or not binary
                element = ds[tag]
                value = _exact_ds(el.vr, el.value, element.to_json_dict(None, 1 << 62))
                value = _exact_64bit(value) if el.vr in ("SV", "UV") else value
                value = _finite_floats(value) if el.vr in ("FL", "FD") else value
                value = _name_groups(value) if el.vr == "PN" else _unpadded(value)
                if not context[0] and not el.implicit and el.vr in WORD_BYTES and el.value and "InlineBinary" in value:
                    # a big-endian file's words, little-endian as its bulk values are (gateway.dicom.converted): the
                    # same element read inline or by BulkDataURI is the same value, whatever the threshold
                    swapped = little_endian_words(el.value, WORD_BYTES[el.vr])
                    value = {"vr": el.vr, "InlineBinary": base64.b64encode(swapped).decode("ascii")}
                out[key] = value = _empty_as_null(value)
            except Exception:  # noqa: BLE001 - pydicom raises many types for garbage values
                rebuilt = _with_empty_values(ds, tag)
                if rebuilt is None and el.vr == "UN" and el.value is not None:
                    # written as UN, its bytes are its value (as dcm2json writes it), whatever pydicom failed to make
                    # of them by the dictionary's VR (a known sequence's tag whose bytes are no item): it was dropped
                    rebuilt = {"vr": "UN", "InlineBinary": base64.b64encode(el.value).decode("ascii")}
                if rebuilt is None:
                    log.warning("metadata: dropped element %s%s, its value cannot be decoded", prefix, key)
                    continue
                out[key] = value = rebuilt
            if memo_key is not None:  # pydicom converted these very bytes: read_instance refuses a tag written twice
                _memo.store(memo_key, value)
    return {k: out[k] for k in sorted(out)}


def _ds_number(text: str) -> int | float:
    """A DS value as a JSON number: an integer stays an integer (a float holds 15 digits, a DS 16:
    9999999999999999 read as a float was written 1e+16, another number); any other as pydicom reads it."""
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else float(text)


def _is_number(text: str) -> int | float:
    """An IS value as a JSON number: a fraction a writer put in one (``1.5``, which PS3.5 does not allow) is kept, as
    pydicom reads it (pydicom's JSON writer, and so the metadata, said 1); an integral one is an integer."""
    number = _ds_number(text)
    return int(number) if isinstance(number, float) and number.is_integer() else number


def _exact_ds(vr: str, raw: bytes | None, value: dict[str, Any]) -> dict[str, Any]:
    """DS and IS values from the file's own text (pydicom reads an IS through a float: 99999999999999999999 was
    written 100000000000000000000). A value JSON holds no number for, or none a double holds exactly (``NaN``,
    ``1e400``, ``-inf``, an integer beyond 2^53 - 1), is its text, as PS3.18 Table F.2.3-1 allows for DS and IS
    (CP-1861) and dcm4che's dcm2json writes them: as a number it was ``NaN`` or ``Infinity``, which is no JSON
    (RFC 8259 6), and a viewer's ``JSON.parse`` refused the whole metadata."""
    if vr not in ("DS", "IS") or "Value" not in value or raw is None:
        return value
    number = _ds_number if vr == "DS" else _is_number
    value["Value"] = [_json_number(text, number) for text in raw.decode("ascii").rstrip("\0").split("\\")]
    return value


def _json_number(text: str, number: Callable[[str], int | float]) -> int | float | str | None:
    text = text.strip()
    if not text:
        return None
    parsed = number(text)
    exact = math.isfinite(parsed) and (isinstance(parsed, float) or abs(parsed) <= _SAFE_INTEGER)
    return parsed if exact else text


def _finite_floats(value: dict[str, Any]) -> dict[str, Any]:
    """FL and FD values JSON holds no number for as the strings fo-dicom and Azure's DICOM service write
    (``NaN``, ``Infinity``, ``-Infinity``): as numbers they made the whole metadata no JSON (RFC 8259 6)."""
    if "Value" in value:
        value["Value"] = [_finite_float(v) if isinstance(v, float) else v for v in value["Value"]]
    return value


def _exact_64bit(value: dict[str, Any]) -> dict[str, Any]:
    """An SV or UV value beyond what a double holds as its decimal string (PS3.18 Table F.2.3-1 allows a String for
    SV and UV "to avoid losing precision"; DCMTK's dcm2json and dcm4che write them so): as a JSON number, a
    JavaScript viewer read 18446744073709551615 as 18446744073709551616, another value."""
    if "Value" in value:
        value["Value"] = [str(v) if isinstance(v, int) and abs(v) > _SAFE_INTEGER else v for v in value["Value"]]
    return value


def _finite_float(v: float) -> float | str:
    return v if math.isfinite(v) else "NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity"


def _groups(name: dict[str, str]) -> dict[str, str] | None:
    """The groups that hold a name component: PS3.18 F.2.2 encodes the non-empty ones only, and pydicom writes an
    empty Alphabetic group ("^^" has no component either, PS3.5 6.2). None when no group is left."""
    return {group: text for group, text in name.items() if text.strip("^ ")} or None


def _name_groups(value: dict[str, Any]) -> dict[str, Any]:
    names = [_groups(name) if isinstance(name, dict) else name for name in value.get("Value", [])]
    if names == [None]:  # one name without any component: an empty value, which has no "Value"
        return {"vr": value["vr"]}
    if names:
        value["Value"] = names
    return value


def _unpadded(value: dict[str, Any]) -> dict[str, Any]:
    if value["vr"] not in _PADDED_BOTH_ENDS or "Value" not in value:
        return value
    values = [v.strip(" ") if isinstance(v, str) else v for v in value["Value"]]
    if values == [""]:  # spaces only: an empty value, which has no "Value"
        return {"vr": value["vr"]}
    value["Value"] = values
    return value


def _empty_as_null(value: dict[str, Any]) -> dict[str, Any]:
    """An empty value among several is null, not "" (PS3.18 F.2.5): pydicom writes ``A\\\\C`` in a CS as
    ``["A", "", "C"]``. A lone empty value is already an element with no "Value"."""
    values = value.get("Value")
    if values is not None and len(values) > 1 and "" in values:
        value["Value"] = [None if v == "" else v for v in values]
    return value


def _with_empty_values(ds: Dataset, tag: Any) -> dict[str, Any] | None:
    """An element pydicom's JSON writer fails on because one of its values is empty ("A^B\\\\C" in a PN, "1\\\\0"
    in a DS or IS): every value, an empty one as null (PS3.18 F.2.5), names as their component groups, numbers as
    numbers. None when a value cannot be read at all (the element is then dropped, as before)."""
    out: list[Any] = []
    try:
        element = ds[tag]  # pydicom converts the value here, and garbage raises as it did for the writer
        if element.VR not in ("PN", "DS", "IS") or element.VM < 2:
            return None
        for item in element.value:
            if element.VR == "PN":
                groups = zip(("Alphabetic", "Ideographic", "Phonetic"), getattr(item, "components", ()), strict=False)
                out.append(_groups({group: str(text) for group, text in groups}))
            elif str(item).strip() == "":
                out.append(None)
            else:
                out.append(_is_number(str(item)) if element.VR == "IS" else _ds_number(str(item)))
    except Exception:  # noqa: BLE001 - the same garbage values as the writer's
        return None
    return {"vr": element.VR, "Value": out}


def metadata_text(metadata: dict[str, Any]) -> str:
    """Canonical JSON text of one instance's metadata (what the catalog should store)."""
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _check_prefix(prefix: str) -> None:
    if not _SAFE_PREFIX.match(prefix):
        raise ValueError("BulkDataURI prefix must be a plain relative URI path")


def rebase_bulkdata_text(text: str, prefix: str) -> str:
    """``bulkdata/...`` → ``{prefix}bulkdata/...`` in canonical metadata text (``metadata_text``); e.g. prefix
    ``"instances/1.2.3/"`` at series level, ``"series/4.5/instances/1.2.3/"`` at study level."""
    _check_prefix(prefix)
    return text.replace(_URI_MARK, f'"BulkDataURI":"{prefix}bulkdata/')


def rebase_bulkdata_uris(metadata: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The same as ``rebase_bulkdata_text`` on a dict; returns a rewritten deep copy."""
    _check_prefix(prefix)
    out = copy.deepcopy(metadata)
    stack: list[dict[str, Any]] = [out]
    while stack:
        ds = stack.pop()
        for entry in ds.values():
            uri = entry.get("BulkDataURI")
            if isinstance(uri, str) and uri.startswith("bulkdata/"):
                entry["BulkDataURI"] = prefix + uri
            if entry.get("vr") == "SQ":
                stack.extend(item for item in entry.get("Value", []) if isinstance(item, dict))
    return out


def join_metadata(texts: Iterable[str]) -> str:
    """A JSON array of instance metadata texts: the body of a series or study metadata response."""
    return "[" + ",".join(texts) + "]"
