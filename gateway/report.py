"""Structured reports rendered as text (PS3.18 Table 8.7.4-1, the Text category: text/html the default, text/plain
required; its text/xml is the data set's Native DICOM Model XML, made in ``gateway.render``): the document's
header, its title (the root's Concept Name) and its content tree (PS3.3 C.17.3), one
content item a line, nested by indentation (text) or by lists (HTML).

pydicom reads the stored object and decodes its values in the file's Specific Character Set; neither pydicom nor
highdicom renders a content tree as text, so the walk below is the gateway's. Every value in the HTML is escaped,
and the page is sent with a sandboxing Content-Security-Policy (``gateway.render``): an uploaded report whose text
holds markup shows it as text, and no script of it runs on the gateway's origin.
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM

from gateway.dicom.walker import quiet_validation
from gateway.errors import NotAcceptable

# Deeper content trees are cut there (a line says so): the renderings recurse once per level
MAX_DEPTH = 64
# A report is read whole to be rendered; one beyond this is no report a page can show
MAX_BYTES = 32 * 1024 * 1024


@dataclass
class Item:
    """One content item as it is shown: its relationship to its parent, value type, concept name and value."""

    relationship: str
    value_type: str
    name: str
    value: str
    children: list[Item] = field(default_factory=list)


@dataclass
class Report:
    title: str
    header: list[tuple[str, str]]
    root: Item


def is_report(metadata: Mapping[str, Any]) -> bool:
    """An SR document (any SR IOD, Key Object Selection included): a root content item that is a CONTAINER at the
    top level of the data set (PS3.3 C.17.3, SR Document Content Module)."""
    element = metadata.get("0040A040")
    values = element.get("Value") if isinstance(element, Mapping) else None
    return isinstance(values, list) and values[:1] == ["CONTAINER"]


def read(data: bytes) -> Report:
    """The stored object's report; a file pydicom cannot read is a 406, never a 500."""
    try:
        with quiet_validation():  # pydicom's warnings quote values (PHI) into the log
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            return _report(ds)
    except NotAcceptable:
        raise
    except Exception:  # noqa: BLE001 - an uploaded file that does not parse is "cannot render", never a server fault
        raise NotAcceptable("this report cannot be read for rendering") from None


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _code(item: Dataset, keyword: str) -> str:
    """A code sequence's first code as "meaning (value, scheme)", or ""."""
    sequence = item.get(keyword)
    if not sequence:
        return ""
    code = sequence[0]
    value = next((_text(code.get(k)) for k in ("CodeValue", "LongCodeValue", "URNCodeValue") if code.get(k)), "")
    meaning = _text(code.get("CodeMeaning"))
    scheme = _text(code.get("CodingSchemeDesignator"))
    identity = ", ".join(part for part in (value, scheme) if part)
    return f"{meaning} ({identity})" if identity else meaning


def _meaning(item: Dataset) -> str:
    sequence = item.get("ConceptNameCodeSequence")
    return _text(sequence[0].get("CodeMeaning")) if sequence else ""


def _when(value: Any, kind: type) -> str:
    """A DA, TM or DT value in ISO 8601 (pydicom reads it), or as stored when it is no valid one."""
    text = _text(value)
    try:
        return kind(text).isoformat() if text else ""
    except (ValueError, TypeError):
        return text


def _many(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]


def _reference(item: Dataset) -> str:
    sequence = item.get("ReferencedSOPSequence")
    if not sequence:
        return ""
    ref = sequence[0]
    uid = ref.get("ReferencedSOPClassUID")
    kind = getattr(uid, "name", "") or _text(uid)
    text = f"{kind} {_text(ref.get('ReferencedSOPInstanceUID'))}".strip()
    frames = ref.get("ReferencedFrameNumber")
    if frames is not None and frames != "":
        text += " frames " + ",".join(str(f) for f in _many(frames))
    return text


def _value(item: Dataset, value_type: str) -> str:
    """The value of a content item of ``value_type`` (PS3.3 C.17.3.2.1, Table C.17-5) as text."""
    if value_type == "TEXT":
        return _text(item.get("TextValue"))
    if value_type == "CODE":
        return _code(item, "ConceptCodeSequence")
    if value_type == "NUM":
        measured = item.get("MeasuredValueSequence")
        if not measured:
            return _code(item, "NumericValueQualifierCodeSequence") or "(no value)"
        units = measured[0].get("MeasurementUnitsCodeSequence")
        unit = _text(units[0].get("CodeValue")) if units else ""
        return " ".join(part for part in (_text(measured[0].get("NumericValue")), unit) if part)
    if value_type == "DATETIME":
        return _when(item.get("DateTime"), DT)
    if value_type == "DATE":
        return _when(item.get("Date"), DA)
    if value_type == "TIME":
        return _when(item.get("Time"), TM)
    if value_type == "PNAME":
        return _text(item.get("PersonName"))
    if value_type == "UIDREF":
        return _text(item.get("UID"))
    if value_type in ("COMPOSITE", "IMAGE", "WAVEFORM"):
        return _reference(item)
    if value_type == "CONTAINER":
        return ""
    if value_type in ("SCOORD", "SCOORD3D", "TCOORD"):
        return _text(item.get("GraphicType") or item.get("TemporalRangeType"))
    return ""


def _one_line(text: str) -> str:
    """Only a TEXT value may span lines: a line break in a name or a header value (none is allowed there, an upload
    may hold one anyway) would print a line of its own choosing, such as a forged "Verification Flag: VERIFIED"."""
    return " ".join(_lines(text))


def _item(ds: Dataset, relationship: str) -> Item:
    reference = ds.get("ReferencedContentItemIdentifier")
    if reference is not None and "ValueType" not in ds:  # by-reference relationship (PS3.3 C.17.3.2.5)
        path = ".".join(str(n) for n in _many(reference))
        return Item(relationship, "", "", f"see content item {path}")
    value_type = _one_line(_text(ds.get("ValueType")).upper())
    value = _value(ds, value_type)
    return Item(relationship, value_type, _one_line(_meaning(ds)), value if value_type == "TEXT" else _one_line(value))


def _report(ds: Dataset) -> Report:
    root = _item(ds, "")
    # the content tree, walked without recursion: a deep upload must not exhaust Python's stack
    pending: list[tuple[Dataset, Item, int]] = [(ds, root, 0)]
    while pending:
        node, shown, depth = pending.pop()
        for child in node.get("ContentSequence") or []:
            item = _item(child, _one_line(_text(child.get("RelationshipType")).lower()))
            shown.children.append(item)
            if depth + 1 >= MAX_DEPTH:
                if child.get("ContentSequence"):
                    item.children.append(Item("", "", "", f"(content deeper than {MAX_DEPTH} levels is not shown)"))
                continue
            pending.append((child, item, depth + 1))
    return Report(root.name or "Structured report", _header(ds), root)


def _header(ds: Dataset) -> list[tuple[str, str]]:
    """What dsrdump shows above the tree: document type, patient, study, completion, verification, content time."""
    sop = ds.get("SOPClassUID")
    header = [("Document", getattr(sop, "name", "") or _text(sop))]
    patient = _text(ds.get("PatientName"))
    if ds.get("PatientID"):
        patient = f"{patient} ({_text(ds.get('PatientID'))})".strip()
    header += [("Patient", patient), ("Study", _text(ds.get("StudyDescription")))]
    header.append(("Series", _text(ds.get("SeriesDescription"))))
    completion = _text(ds.get("CompletionFlag"))
    if ds.get("CompletionFlagDescription"):
        completion += f" ({_text(ds.get('CompletionFlagDescription'))})"
    header += [("Completion Flag", completion), ("Verification Flag", _text(ds.get("VerificationFlag")))]
    for observer in ds.get("VerifyingObserverSequence") or []:
        parts = (observer.get("VerifyingObserverName"), observer.get("VerifyingOrganization"))
        who = ", ".join(_text(p) for p in parts if _text(p))
        header.append(("Verifying Observer", f"{who} {_when(observer.get('VerificationDateTime'), DT)}".strip()))
    moment = " ".join(p for p in (_when(ds.get("ContentDate"), DA), _when(ds.get("ContentTime"), TM)) if p)
    header.append(("Content Date/Time", moment))
    return [(name, _one_line(value)) for name, value in header if value]


def _lines(value: str) -> list[str]:
    return value.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _label(item: Item) -> str:
    """``relationship VALUE-TYPE: name``, the parts an item has."""
    head = " ".join(part for part in (item.relationship, item.value_type) if part)
    return f"{head}: {item.name}" if head and item.name else head or item.name


def as_text(report: Report) -> str:
    """The title, the header, then the tree below the root (the title is the root's name): one item a line,
    indented two spaces a level; a multi-line value's further lines are aligned under its first."""
    width = max((len(name) for name, _ in report.header), default=0)
    out = [report.title, ""] + [f"{name + ':':<{width + 1}} {value}" for name, value in report.header] + [""]

    def walk(item: Item, depth: int) -> Iterator[str]:
        label, value = _label(item), _lines(item.value)
        first = f"{'  ' * depth}{label} = " if label and value[0] else f"{'  ' * depth}{label}"
        yield (first + value[0]).rstrip()
        yield from ((" " * len(first) + line).rstrip() for line in value[1:])
        for child in item.children:
            yield from walk(child, depth + 1)

    for item in report.root.children:
        out += walk(item, 0)
    return "\n".join(out) + "\n"


def as_html(report: Report) -> str:
    escape = html.escape  # quote=True: also safe inside attribute values, though none is written

    def value(text: str) -> str:
        return "<br>".join(escape(line) for line in _lines(text))

    def walk(item: Item) -> Iterator[str]:
        yield "<li>"
        head = " ".join(part for part in (item.relationship, item.value_type) if part)
        if head:
            yield f"<i>{escape(head)}</i> "
        if item.name:
            yield f"<b>{escape(item.name)}</b>"
        if item.value:
            yield f" = {value(item.value)}" if item.name or head else value(item.value)
        if item.children:
            yield "<ul>"
            for child in item.children:
                yield from walk(child)
            yield "</ul>"
        yield "</li>"

    rows = "".join(f"<dt>{escape(name)}</dt><dd>{value(text)}</dd>" for name, text in report.header)
    tree = "".join(child for item in report.root.children for child in walk(item))
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f"{escape(report.title)}</title></head><body>\n<h1>{escape(report.title)}</h1>\n<dl>{rows}</dl>\n"
        f"<ul>{tree}</ul>\n</body></html>\n"
    )
