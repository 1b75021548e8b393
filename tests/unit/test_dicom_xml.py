"""The DICOM JSON to PS3.19 XML converter (``gateway.dicomweb.xml``) on the shapes the stored metadata can take but
the end-to-end files do not all hold: empty values among several, an empty name, a private element without its
creator, AT values, and the multipart framing. What DCMTK says of real files: ``tests/e2e/test_dicom_xml.py``."""

from __future__ import annotations

import email
from xml.etree import ElementTree

from gateway.dicomweb import xml

NS = {"d": xml.NATIVE_DICOM_NS}


def attribute(document: bytes, tag: str) -> ElementTree.Element:
    found = ElementTree.fromstring(document).find(f"d:DicomAttribute[@tag='{tag}']", NS)
    assert found is not None, tag
    return found


def test_empty_values_keep_their_place_and_an_empty_element_has_no_value() -> None:
    document = xml.to_xml(
        {
            "00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]},
            "00081030": {"vr": "LO"},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane^^Dr"}, None]},
        }
    )
    values = attribute(document, "00080008").findall("d:Value", NS)
    assert [(v.get("number"), v.text) for v in values] == [("1", "ORIGINAL"), ("2", None), ("3", "AXIAL")]
    assert list(attribute(document, "00081030")) == []
    first, second = attribute(document, "00100010").findall("d:PersonName", NS)
    alphabetic = first.find("d:Alphabetic", NS)
    assert alphabetic is not None and first.find("d:Ideographic", NS) is None
    assert [(c.tag.split("}")[1], c.text) for c in alphabetic] == [
        ("FamilyName", "Doe"),
        ("GivenName", "Jane"),
        ("NamePrefix", "Dr"),
    ]
    assert second.get("number") == "2" and list(second) == []


def test_private_elements_are_named_by_their_creator_when_it_is_known() -> None:
    document = xml.to_xml(
        {
            "00290010": {"vr": "LO", "Value": ["ACME 1"]},
            "00291005": {"vr": "LO", "Value": ["with creator"]},
            "00291105": {"vr": "LO", "Value": ["no creator for block 11"]},
        }
    )
    tags = [(a.get("tag"), a.get("privateCreator")) for a in ElementTree.fromstring(document)]
    assert tags == [("00290010", None), ("00290005", "ACME 1"), ("00291105", None)]


def test_a_creator_of_several_values_names_its_block_by_the_whole_value() -> None:
    """LO's backslash makes a Private Creator several values in JSON, an empty one null: the block is named by the
    value as the file holds it, as dcm2xml names it (the null first value was a TypeError, the answer a 500)."""
    document = xml.to_xml(
        {
            "00290010": {"vr": "LO", "Value": [None, "ACME"]},
            "00291001": {"vr": "LO", "Value": ["a"]},
            "00310010": {"vr": "LO", "Value": ["ONE", "TWO"]},
            "00311001": {"vr": "LO", "Value": ["b"]},
        }
    )
    tags = [(a.get("tag"), a.get("privateCreator")) for a in ElementTree.fromstring(document)]
    assert tags == [("00290010", None), ("00290001", "\\ACME"), ("00310010", None), ("00310001", "ONE\\TWO")]


def test_at_values_bulk_data_and_inline_binary() -> None:
    document = xml.to_xml(
        {
            "00209165": {"vr": "AT", "Value": ["00209056", "00209057"]},
            "7FE00010": {"vr": "OW", "BulkDataURI": "https://x/bulkdata/7FE00010?token=a&b"},
            "00283006": {"vr": "US", "InlineBinary": "AAEC"},
        }
    )
    assert [v.text for v in attribute(document, "00209165").findall("d:Value", NS)] == ["00209056", "00209057"]
    bulk = attribute(document, "7FE00010").find("d:BulkData", NS)
    assert bulk is not None and bulk.attrib == {"uri": "https://x/bulkdata/7FE00010?token=a&b"}
    assert attribute(document, "00283006").findtext("d:InlineBinary", namespaces=NS) == "AAEC"


def test_multipart_framing_and_a_stable_boundary() -> None:
    documents = [xml.to_xml({"00080018": {"vr": "UI", "Value": [uid]}}) for uid in ("1.2", "1.3")]
    body, content_type = xml.multipart(documents)
    assert (body, content_type) == xml.multipart(documents)  # the same documents, the same bytes (ETag)
    assert content_type.startswith('multipart/related; type="application/dicom+xml"; boundary=')
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = message.get_payload()
    assert [p["Content-Type"] for p in parts] == ["application/dicom+xml"] * 2
    assert [p.get_payload(decode=True) for p in parts] == documents
    assert xml.multipart([])[0] == b""
