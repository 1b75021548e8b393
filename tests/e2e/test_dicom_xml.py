"""DICOM XML (PS3.19 Native DICOM Model) answers through the real stack: PS3.18 makes multipart/related;
type="application/dicom+xml" Required of metadata (Table 10.4.4-1) and search (Table 10.6.4-1) answers, one
NativeDicomModel document per data set. They were a JSON 406 whose detail talked about transcoding.

The oracle is DCMTK: ``dcm2xml --native-format`` of the stored file must say what the gateway's metadata XML says
for every attribute both hold (bulk data by URI where DCMTK inlines it, numbers compared as numbers). DCMTK
3.6.7's ``xml2dcm`` reads only DCMTK's own XML format, not the Native DICOM Model (it refuses dcm2xml's own native
output: "document of the wrong type, was 'NativeDicomModel', 'data-set' expected"), so it is no oracle here.
The files: pydicom's test files with person name groups, Latin, Greek, Cyrillic and UTF-8 text, ISO 2022
Japanese (which Debian's iconv cannot convert for DCMTK: compared with the names pydicom's FileInfo.txt gives),
private blocks, sequences, and the synthetic CT and slide."""

from __future__ import annotations

import base64
import email
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import pydicom
import pytest
import requests
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.tools.synth import make_series, make_wsi
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, stack_holding

NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
XML_PARTS = 'multipart/related; type="application/dicom+xml"'
# person names, text in several character sets, private blocks and InlineBinary, sequences
PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "reportsi.dcm"]
CHARSET_FILES = [
    *("chrX1.dcm", "chrFrenMulti.dcm", "chrGreek.dcm", "chrRuss.dcm", "chrGerm.dcm", "chrH31.dcm", "chrH32.dcm")
]
# DCMTK here converts no ISO 2022 IR 87 (glibc's iconv): the names pydicom's charset_files/FileInfo.txt gives
JAPANESE = {
    "chrH31.dcm": {"Alphabetic": ["Yamada", "Tarou"],
        "Ideographic": ["山田", "太郎"], "Phonetic": ["やまだ", "たろう"]},
    "chrH32.dcm": {"Alphabetic": ["ﾔﾏﾀﾞ", "ﾀﾛｳ"],
        "Ideographic": ["山田", "太郎"], "Phonetic": ["やまだ", "たろう"]},
}
# a carriage return a parser would turn into a line feed, and a character XML 1.0 cannot carry at all
TEXT_WITH_CONTROLS = "first line\r\nsecond\x0bthird <&>"
# Private Creator values of more than one value (LO's backslash): the block's creator is the whole value, as
# DCMTK's dcm2xml names it, the first one empty included (that one made the XML answer a 500)
CREATORS = {0x0029: "\\ACME", 0x0031: "ONE\\TWO"}
NUMBERS = {"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"}


def _source(name: str) -> Path:
    found = get_testdata_file(name) or next(iter(get_charset_files(name)), None)
    assert found is not None, name
    return Path(found)


def fresh_copy(source: Path, target: Path) -> Path:
    """The file as its own instance in its own study (pydicom's files share UIDs), as a Part 10 file (the charset
    files have no file meta); values are written back as read, in their own character set."""
    ds = pydicom.dcmread(source, force=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    if "SOPClassUID" not in ds:  # Secondary Capture, or Raw Data for the charset files, which have no pixels
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7" if "PixelData" in ds else "1.2.840.10008.5.1.4.1.1.66"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    pydicom.dcmwrite(target, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("xml-files")
    made = {name: fresh_copy(_source(name), folder / name) for name in PYDICOM_FILES + CHARSET_FILES}
    made["ct"] = make_series(folder / "ct", modality="CT", slices=2, seed=1901, clean=True)[0]
    made["wsi"] = make_wsi(folder / "wsi", frames=6, offsets="bot", seed=1902, clean=True)
    made["text"] = make_series(folder / "text", modality="CT", slices=1, seed=1903, clean=True)[0]
    ds = pydicom.dcmread(made["text"])
    ds.ImageComments = TEXT_WITH_CONTROLS
    ds.save_as(made["text"])
    made["creators"] = make_series(folder / "creators", modality="CT", slices=1, seed=1904, clean=True)[0]
    ds = pydicom.dcmread(made["creators"])
    for group, creator in CREATORS.items():
        ds.add_new((group << 16) | 0x0010, "LO", creator)
        ds.add_new((group << 16) | 0x1001, "LO", f"in the block of {group:04X}")
    ds.save_as(made["creators"])
    return made


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> Iterator[RunningStack]:
    """Metadata and search answers come from the catalog, never from storage: one backend is enough."""
    with stack_holding(tmp_path_factory.mktemp("xml-stack"), "file", None, list(files.values())) as running:
        yield running


def instance_url(stack: RunningStack, path: Path) -> str:
    study, series, sop = uids_of(path)
    return f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def get(stack: RunningStack, url: str, accept: str, **headers: str) -> requests.Response:
    return requests.get(url, headers={**stack.api_headers, "Accept": accept, **headers}, timeout=60)


def xml_parts(answer: requests.Response) -> list[ET.Element]:
    """The NativeDicomModel documents of a multipart/related answer, each part checked to be application/dicom+xml."""
    content_type = answer.headers["Content-Type"]
    assert content_type.startswith(XML_PARTS + "; boundary="), content_type
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + answer.content)
    assert message.is_multipart() and not message.defects, message.defects
    parts = []
    for part in message.get_payload():
        assert part["Content-Type"] == "application/dicom+xml"
        parts.append(ET.fromstring(part.get_payload(decode=True)))
    return parts


# -- reading either side's XML as attribute paths -----------------------------------------------------------------


def flatten(element: ET.Element, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Every DicomAttribute under ``element`` by its tag path (``00081199/1/00081150``): its VR and its value,
    read from whatever namespace the document uses."""
    out: dict[str, tuple[str, Any]] = {}
    for attribute in element:
        if attribute.tag.removeprefix(NS) != "DicomAttribute":
            continue
        path = prefix + attribute.attrib["tag"]
        vr = attribute.attrib["vr"]
        children = {child.tag.removeprefix(NS) for child in attribute}
        value: Any
        if vr == "SQ":
            items = [child for child in attribute if child.tag.removeprefix(NS) == "Item"]
            assert [item.attrib["number"] for item in items] == [str(n) for n in range(1, len(items) + 1)]
            value = len(items)
            for number, item in enumerate(items, start=1):
                out.update(flatten(item, f"{path}/{number}/"))
        elif "BulkData" in children:
            value = ("bulk", attribute.find("{*}BulkData").attrib)  # type: ignore[union-attr]
        elif "InlineBinary" in children:
            value = ("inline", base64.b64decode(attribute.findtext("{*}InlineBinary") or ""))
        elif "PersonName" in children:
            value = [_name(name) for name in attribute.findall("{*}PersonName")]
        else:
            values = attribute.findall("{*}Value")
            assert [v.attrib["number"] for v in values] == [str(n) for n in range(1, len(values) + 1)]
            value = [v.text or "" for v in values]
        out[path] = (vr, value)
    return out


def _name(node: ET.Element) -> dict[str, list[str]]:
    return {group.tag.removeprefix(NS): [c.text or "" for c in group] for group in node}


def dcmtk_document(path: Path) -> ET.Element:
    """DCMTK's reading of a stored file, in UTF-8, binary values inline."""
    text = subprocess.run(
        ["dcm2xml", "--native-format", "--convert-to-utf8", "--encode-base64", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return ET.fromstring(text)


def private_creators(document: ET.Element) -> set[tuple[str, str]]:
    """(tag, privateCreator) of every private element named by its creator, at any depth."""
    return {
        (attribute.attrib["tag"], attribute.attrib["privateCreator"])
        for attribute in document.iter()
        if attribute.tag.removeprefix(NS) == "DicomAttribute" and "privateCreator" in attribute.attrib
    }


def same_value(vr: str, ours: Any, theirs: Any, bulk_uri: str) -> bool:
    if isinstance(ours, tuple) and ours[0] == "bulk":
        # the documented difference: bulk data goes by URI (PS3.19 A.1.5), the one WADO-RS serves it at (under the
        # element's own tag: a private one's block number, which the XML tag leaves out, is in it)
        uri = ours[1].get("uri", "")
        return (
            set(ours[1]) == {"uri"}
            and uri.startswith(bulk_uri.split("/bulkdata/")[0] + "/bulkdata/")
            and _block_free(uri.split("/bulkdata/")[1]) == bulk_uri.split("/bulkdata/")[1]
            and isinstance(theirs, tuple)
        )
    if vr in NUMBERS and isinstance(ours, list):
        # DCMTK writes a float32 with 9 digits, JSON (and so the XML) the shortest text of the same double
        number = (lambda text: float(numpy.float32(text))) if vr == "FL" else float
        return len(ours) == len(theirs) and all(
            (a == b == "") or (a != "" and b != "" and number(a) == number(b))
            for a, b in zip(ours, theirs, strict=True)
        )
    if vr == "PN":
        return [_groups(n) for n in ours] == [_dcmtk_groups(n) for n in theirs]
    return bool(ours == theirs)


def _block_free(path: str) -> str:
    """A tag path (``00431029``, ``00081199/1/00091001``) with each private element's block number as "00"."""
    return "/".join(
        part[:4] + "00" + part[6:] if len(part) == 8 and int(part[:4], 16) % 2 and part[4:6] != "00" else part
        for part in path.split("/")
    )


def _groups(name: dict[str, list[str]]) -> dict[str, list[str]]:
    """A name's groups, each without its trailing empty components (neither side need write them)."""
    out = {}
    for group, components in name.items():
        while components and not components[-1]:
            components = components[:-1]
        out[group] = components
    return out


def _dcmtk_groups(name: dict[str, list[str]]) -> dict[str, list[str]]:
    """DCMTK 3.6.7 writes an empty Phonetic group as a copy of the Ideographic one (chrX1.dcm: "Wang^XiaoDong=
    王^小東=" read with three groups): the copy is left out."""
    groups = _groups(name)
    if "Ideographic" in groups and groups.get("Phonetic") == groups["Ideographic"]:
        del groups["Phonetic"]
    return groups


def assert_as_dcmtk_reads(document: ET.Element, stored: Path, url: str) -> None:
    """``document`` (the gateway's XML of the instance at ``url``) says what ``dcm2xml --native-format`` reads of
    the ``stored`` file for every attribute both hold: bulk data by URI where DCMTK inlines it, numbers compared as
    numbers, the group lengths metadata leaves out (PS3.18 F.2.2) the only attributes missing."""
    ours = flatten(document)
    dcmtk = dcmtk_document(stored)
    theirs = flatten(dcmtk)
    # DCMTK names the character set it converted to (adding it where the file has none); the XML keeps the file's
    assert theirs.pop("00080005", ("CS", ["ISO_IR 192"])) == ("CS", ["ISO_IR 192"])
    if "00080005" in ours:
        charset = pydicom.dcmread(stored)["SpecificCharacterSet"].value
        assert ours.pop("00080005") == ("CS", charset if isinstance(charset, list) else [charset])
    # what the metadata leaves out of DCMTK's reading: group lengths (PS3.18 F.2.2) and nothing else
    assert {p for p in theirs if p not in ours} == {p for p in theirs if p.endswith("0000") and p not in ours}
    assert set(ours) <= set(theirs), set(ours) - set(theirs)
    differing = {}
    for path, (vr, value) in ours.items():
        their_vr, their_value = theirs[path]
        if vr != their_vr or not same_value(vr, value, their_value, f"{url}/bulkdata/{path}"):
            differing[path] = ((vr, value), (their_vr, their_value))
    assert not differing, differing
    # each private block named by its creator's whole value, as DCMTK names it
    assert private_creators(document) == private_creators(dcmtk)
    # keywords and private creators as DCMTK names them
    for attribute in document.iter(f"{NS}DicomAttribute"):
        assert "keyword" in attribute.attrib or "privateCreator" in attribute.attrib or attribute.attrib["tag"][
            3
        ] in "13579BDF"


# -- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*PYDICOM_FILES, *CHARSET_FILES, "ct", "wsi", "creators"])
def test_metadata_xml_says_what_dcmtk_reads_of_the_stored_file(
    stack: RunningStack, files: dict[str, Path], tmp_path: Path, name: str
) -> None:
    url = instance_url(stack, files[name])
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(get(stack, url, "application/dicom").content)
    answer = get(stack, f"{url}/metadata", XML_PARTS)
    assert answer.status_code == 200, answer.text[:300]
    [document] = xml_parts(answer)
    assert document.tag == f"{NS}NativeDicomModel"
    ours = flatten(document)
    if name in JAPANESE:  # ISO 2022 Japanese: not converted by DCMTK here
        assert ours["00100010"] == ("PN", [JAPANESE[name]])
        return
    assert_as_dcmtk_reads(document, stored, url)


def test_search_answers_one_part_per_match_saying_what_json_says(stack: RunningStack, files: dict[str, Path]) -> None:
    for query in ("studies", "series?Modality=CT", f"studies/{uids_of(files['rtplan.dcm'])[0]}/instances"):
        url = f"{stack.url}/dicomweb/{query}"
        as_json = get(stack, url, "application/dicom+json")
        as_xml = get(stack, url, XML_PARTS)
        assert (as_json.status_code, as_xml.status_code) == (200, 200), as_xml.text[:300]
        assert as_xml.headers["Cache-Control"] == "private, no-cache"
        documents = xml_parts(as_xml)
        assert len(documents) == len(as_json.json()) > 0
        for document, match in zip(documents, as_json.json(), strict=True):
            ours = flatten(document)
            assert sorted(ours) == sorted(match)
            for tag, element in match.items():
                vr, value = ours[tag]
                assert vr == element["vr"]
                if vr == "PN":
                    expected = [{g: t.split("^") for g, t in n.items()} for n in element.get("Value", [])]
                    assert same_value("PN", value, expected, "")
                else:
                    expected = ["" if v is None else str(v) for v in element.get("Value", [])]
                    assert same_value(vr, value, expected, ""), (tag, value, expected)


def test_a_search_without_a_match_in_xml_is_a_204_with_no_body(stack: RunningStack) -> None:
    """PS3.18 8.3.4.4.1; a multipart body of no part is none (RFC 2046 5.1.1): the empty 200 was unreadable to a
    multipart parser (email: StartBoundaryNotFoundDefect). JSON's empty list stays a 200."""
    answer = get(stack, f"{stack.url}/dicomweb/studies?PatientID=nobody-has-this", XML_PARTS)
    assert answer.status_code == 204
    assert answer.content == b"" and "Content-Type" not in answer.headers
    assert answer.headers["Cache-Control"] == "private, no-cache"
    series = get(stack, f"{stack.url}/dicomweb/series?Modality=XX", XML_PARTS)
    assert series.status_code == 204 and series.content == b""
    as_json = get(stack, f"{stack.url}/dicomweb/studies?PatientID=nobody-has-this", "application/dicom+json")
    assert as_json.status_code == 200 and as_json.json() == []


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (f'application/dicom+json;q=0.5, {XML_PARTS}', "xml"),
        (f'{XML_PARTS};q=0.5, application/dicom+json', "application/dicom+json"),
        (f'application/dicom+json;q=0, {XML_PARTS};q=0.1', "xml"),
        ("multipart/related; type=application/*", "xml"),
        ("*/*", "application/dicom+json"),
        ("application/*", "application/dicom+json"),
        # application/json is the gateway's alias for generic clients, answered as what was asked for: a client
        # refusing application/dicom+json is never sent it (it was, under Content-Type: application/dicom+json)
        ("application/json", "application/json"),
        ("application/dicom+json;q=0, application/json", "application/json"),
        ("application/dicom+json;q=0.5, application/json", "application/json"),
        ("application/json;q=0.5, application/dicom+json", "application/dicom+json"),
        ("application/dicom+xml", 406),  # single part: a search has many response items (Table 10.4.4-1 Note 3)
        (f"{XML_PARTS}; transfer-syntax=1.2.840.10008.1.2.4.50", 406),
        # the transfer syntax of these types is their base64 values' (PS3.18 8.7.3.5): Explicit VR Little Endian,
        # which was a 406 too when named
        (f"{XML_PARTS}; transfer-syntax=1.2.840.10008.1.2.1", "xml"),
        ("application/dicom+json; transfer-syntax=1.2.840.10008.1.2.1", "application/dicom+json"),
        ('application/json; transfer-syntax="1.2.840.10008.1.2.1"', "application/json"),
        ("application/dicom+json; transfer-syntax=1.2.840.10008.1.2.2", 406),
    ],
)
def test_search_and_study_metadata_negotiate_xml_with_json(
    stack: RunningStack, files: dict[str, Path], accept: str, expected: str | int
) -> None:
    study = uids_of(files["ct"])[0]
    for url in (f"{stack.url}/dicomweb/studies?StudyInstanceUID={study}", f"{stack.url}/dicomweb/studies/{study}/"):
        url += "metadata" if url.endswith("/") else ""
        answer = get(stack, url, accept)
        if expected == 406:
            assert (answer.status_code, answer.headers["Content-Type"]) == (406, "application/json")
            assert answer.json() == {
                "error": "not_acceptable",
                "detail": 'this resource is answered as application/dicom+json, application/json or '
                'multipart/related; type="application/dicom+xml"',
            }
        elif expected != "xml":
            assert (answer.status_code, answer.headers["Content-Type"]) == (200, expected)
            as_dicom_json = get(stack, url, "application/dicom+json")
            assert answer.json() == as_dicom_json.json() != []  # the same DICOM JSON under either name
            if url.endswith("metadata"):  # each its own validator: a 304 never stands for the other
                same = answer.headers["ETag"] == as_dicom_json.headers["ETag"]
                assert same == (expected == "application/dicom+json")
                revalidated = get(stack, url, accept, **{"If-None-Match": as_dicom_json.headers["ETag"]})
                assert revalidated.status_code == (304 if same else 200)
        else:
            assert answer.status_code == 200 and len(xml_parts(answer)) == 1


def test_instance_metadata_is_a_single_xml_document_too(stack: RunningStack, files: dict[str, Path]) -> None:
    """An instance is a single response item: the single-part application/dicom+xml is permitted for it (PS3.18
    Table 10.4.4-1 Note 3), also through the ``accept`` query parameter; its ETag is the same from one answer to
    the next, so If-None-Match is a 304."""
    url = f"{instance_url(stack, files['chrX1.dcm'])}/metadata"
    answer = get(stack, url, "application/dicom+xml")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/dicom+xml; charset=utf-8"
    name = flatten(ET.fromstring(answer.content))["00100010"]
    assert name == ("PN", [{"Alphabetic": ["Wang", "XiaoDong"], "Ideographic": ["王", "小東"]}])
    by_query = requests.get(url, params={"accept": "application/dicom+xml"}, headers=stack.api_headers, timeout=30)
    assert by_query.content == answer.content
    parts = get(stack, url, XML_PARTS)
    again = get(stack, url, XML_PARTS)
    assert parts.headers["ETag"] == again.headers["ETag"] != answer.headers["ETag"]
    assert parts.content == again.content
    unchanged = get(stack, url, XML_PARTS, **{"If-None-Match": parts.headers["ETag"]})
    assert unchanged.status_code == 304
    study, series, _ = uids_of(files["ct"])
    series_url = f"{stack.url}/dicomweb/studies/{study}/series/{series}/metadata"
    assert get(stack, series_url, "application/dicom+xml").status_code == 406


def test_text_keeps_its_carriage_returns_and_stays_well_formed(stack: RunningStack, files: dict[str, Path]) -> None:
    """A carriage return in a value is written as a character reference (XML 1.0 2.11 turns a literal one into a
    line feed); a control character XML 1.0 cannot carry (2.2: here a vertical tab) is U+FFFD, where writing it made
    the whole answer unreadable. JSON keeps the value as stored."""
    url = f"{instance_url(stack, files['text'])}/metadata"
    [document] = xml_parts(get(stack, url, XML_PARTS))
    assert flatten(document)["00204000"] == ("LT", ["first line\r\nsecond\ufffdthird <&>"])
    assert get(stack, url, "application/dicom+json").json()[0]["00204000"]["Value"] == [TEXT_WITH_CONTROLS]
