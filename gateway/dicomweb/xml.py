"""DICOM JSON (PS3.18 F.2) as PS3.19 Native DICOM Model XML (``application/dicom+xml``), for the clients that ask
for XML: QIDO-RS and metadata answer multipart/related with one NativeDicomModel document per data set (PS3.18
Tables 10.4.4-1 and 10.6.4-1 make that media type Required), STOW-RS its response module.

Made from the JSON the gateway already answers, so both say the same: ``DicomAttribute`` with ``tag``, ``vr`` and
``keyword`` (``privateCreator`` for a private element), ``Value number=``, ``PersonName`` with its
Alphabetic/Ideographic/Phonetic groups split into their five components, ``BulkData uri=``, ``InlineBinary`` and
sequences as ``Item number=`` (PS3.19 A.1). The JSON path never comes here: a JSON answer costs nothing more.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any
from xml.etree import ElementTree

from pydicom.datadict import keyword_for_tag

MEDIA_TYPE = "application/dicom+xml"
NATIVE_DICOM_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
MULTIPART_TYPE = f'multipart/related; type="{MEDIA_TYPE}"'

_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_NAME_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
# characters XML 1.0 cannot carry at all (2.2 Char): a value holding one would make the whole answer unreadable
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def to_xml(dataset: Mapping[str, Any]) -> bytes:
    """One data set (a DICOM JSON object) as a NativeDicomModel document in UTF-8."""
    root = ElementTree.Element("NativeDicomModel", {"xmlns": NATIVE_DICOM_NS, "xml:space": "preserve"})
    _attributes(root, dataset)
    text = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    # a parser turns a carriage return in text into a line feed (XML 1.0 2.11): written as a character reference
    # it stays one. ElementTree escapes it in attribute values already, so any left is a value's own.
    return text.replace(b"\r", b"&#13;")


def multipart(documents: Iterable[bytes]) -> tuple[bytes, str]:
    """``documents`` as the parts of a multipart/related body (PS3.18 8.6.1.2): the body and its Content-Type.
    The boundary is a digest of the documents, which they cannot hold, and the same for the same documents (a
    metadata answer's ETag stays the same while its instances do). No document, no part: the body is empty (a search
    without a match is a 204 instead, ``gateway/views/dicomweb.py``)."""
    documents = list(documents)
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(hashlib.sha256(doc).digest())
    boundary = digest.hexdigest()[:40]
    parts = [f"--{boundary}\r\nContent-Type: {MEDIA_TYPE}\r\n\r\n".encode() + doc + b"\r\n" for doc in documents]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode() if parts else b""
    return body, f"{MULTIPART_TYPE}; boundary={boundary}"


def _attributes(parent: ElementTree.Element, dataset: Mapping[str, Any]) -> None:
    # a private block (gggg,xx00-xxFF) by group and xx, from its creator element (gggg,00xx): its whole value, as
    # PS3.19 A.1.5 names it ("the value of the Private Creator Data Element") and dcm2xml writes it, also when a
    # backslash made it several values in JSON (an empty one among them is null there)
    creators = {
        tag[:4] + tag[6:8]: "\\".join("" if value is None else str(value) for value in el["Value"])
        for tag, el in dataset.items()
        if _is_creator(tag, el)
    }
    for tag, element in sorted(dataset.items()):
        vr = element["vr"]
        attrs = {"tag": tag, "vr": vr}
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            attrs["keyword"] = keyword
        elif int(tag[:4], 16) % 2 and tag[:4] + tag[4:6] in creators:
            # a private element is named by its creator and its number in the block, not by the block the file
            # happened to reserve: "gggg00ee" (as DCMTK's dcm2xml and dcm4che write and read it)
            attrs["tag"] = tag[:4] + "00" + tag[6:8]
            attrs["privateCreator"] = _text(creators[tag[:4] + tag[4:6]])
        node = ElementTree.SubElement(parent, "DicomAttribute", attrs)
        if "BulkDataURI" in element:
            ElementTree.SubElement(node, "BulkData", {"uri": element["BulkDataURI"]})
        elif "InlineBinary" in element:
            ElementTree.SubElement(node, "InlineBinary").text = element["InlineBinary"]
        for number, value in enumerate(element.get("Value", []), start=1):
            if vr == "SQ":
                _attributes(ElementTree.SubElement(node, "Item", {"number": str(number)}), value or {})
            elif vr == "PN":
                _person_name(ElementTree.SubElement(node, "PersonName", {"number": str(number)}), value)
            else:
                # an empty value among several keeps its place (PS3.18 F.2.5 writes it null)
                ElementTree.SubElement(node, "Value", {"number": str(number)}).text = (
                    None if value is None else _text(_value_text(value))
                )


def _person_name(node: ElementTree.Element, name: Mapping[str, str] | None) -> None:
    """PS3.19 A.1.1: each group of the name with its components; PS3.5 6.2 separates them with "^"."""
    for group in _NAME_GROUPS:
        if not (name and name.get(group)):
            continue
        group_node = ElementTree.SubElement(node, group)
        for component, text in zip(_NAME_COMPONENTS, name[group].split("^"), strict=False):
            if text:
                ElementTree.SubElement(group_node, component).text = _text(text)


def _value_text(value: Any) -> str:
    if isinstance(value, bool):  # not a DICOM value, but never "True"
        return str(int(value))
    return str(value)  # a float's shortest repr reads back as the same number (DS, FL, FD)


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def _is_creator(tag: str, element: Mapping[str, Any]) -> bool:
    """A Private Creator element, (gggg,0010-00FF) in an odd group, holding the block's creator name."""
    return int(tag[:4], 16) % 2 == 1 and tag[4:6] == "00" and 0x10 <= int(tag[6:8], 16) and bool(element.get("Value"))
