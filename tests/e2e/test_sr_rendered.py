"""Rendered structured reports through the real stack (PS3.18 Table 8.7.4-1, the Text category: text/html the
default, text/plain and text/xml required, by WADO-RS and WADO-URI). They were a JSON 406 ("no pixel data"; text/xml
until session 19, now the report's Native DICOM Model XML, compared with DCMTK's dcm2xml). And the thumbnail
of an instance that is no image (a report, a PDF): a drawing of a page (PS3.18 10.4.3.3.4 leaves the meaningful
representation to the origin server); a series holding images beside it is shown by an image. Both were a 406.

The files: pydicom's two SR test files (a Basic Text SR in ISO_IR 100 and DCMTK's Comprehensive SR test document,
every value type, a multi-line TEXT, a Latin-1 name) and a Comprehensive SR built here whose values hold markup and
UTF-8 (ISO_IR 192). The text is compared with what DCMTK's dsr2xml reads of the same file: every content item's
nesting, relationship, value type, concept name and value."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import RunningStack, module_stack
from tests.e2e.test_dicom_xml import NS, assert_as_dcmtk_reads, flatten

CSP = "default-src 'none'; sandbox; base-uri 'none'; form-action 'none'"
REPORT_406 = "this instance is a structured report: it is rendered as text/html, text/plain or text/xml"
HOSTILE_TEXT = "<script>alert(document.cookie)</script>\r\n<img src=x onerror=alert(1)> Größe: 3 cm"


def _code(value: str, scheme: str, meaning: str) -> Sequence:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return Sequence([code])


def _item(relationship: str, value_type: str, name: tuple[str, str, str], **values: Any) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType, item.ConceptNameCodeSequence = relationship, value_type, _code(*name)
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def hostile_report(path: Path) -> Path:
    """A Comprehensive SR in UTF-8 whose title, study description and TEXT value hold markup."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sr-rendered-hostile"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["sr-rendered-hostile-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["sr-rendered-hostile-series"])
    ds.Modality, ds.PatientName, ds.PatientID = "SR", "Müller^Zoë", "SR-HOSTILE"
    ds.StudyDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.ContentTime = "101500"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.StudyDescription = "<b>study</b>\nVerification Flag: VERIFIED"  # a forged line, if printed as one
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = _code("18748-4", "LN", "Imaging Report <script>alert('title')</script>")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    measured = Dataset()
    measured.NumericValue, measured.MeasurementUnitsCodeSequence = "12.5", _code("mm", "UCUM", "millimeter")
    nodule = _code("M-03010", "SRT", "Nodule")
    findings = _item("CONTAINS", "CONTAINER", ("121070", "DCM", "Findings"), ContinuityOfContent="SEPARATE")
    findings.ContentSequence = Sequence(
        [
            _item("CONTAINS", "TEXT", ("121071", "DCM", "Finding"), TextValue=HOSTILE_TEXT),
            _item("CONTAINS", "CODE", ("121071", "DCM", "Finding"), ConceptCodeSequence=nodule),
            _item("CONTAINS", "NUM", ("G-D7FE", "SRT", "Diameter"), MeasuredValueSequence=Sequence([measured])),
            _item("CONTAINS", "DATE", ("111060", "DCM", "Study Date"), Date="20240102"),
            _item("CONTAINS", "PNAME", ("121008", "DCM", "Person Observer Name"), PersonName="Müller^Zoë"),
        ]
    )
    ds.ContentSequence = Sequence(
        [
            _item("HAS OBS CONTEXT", "PNAME", ("121008", "DCM", "Person Observer Name"), PersonName="Observer^Ann"),
            _item("HAS OBS CONTEXT", "UIDREF", ("121018", "DCM", "Procedure Study Instance UID"), UID="1.2.3.4.5"),
            findings,
        ]
    )
    ds.save_as(path, enforce_file_format=True)
    return path


def report_beside(path: Path, image: Path) -> Path:
    """pydicom's Basic Text SR moved into ``image``'s series (its patient's), numbered after it."""
    ds = pydicom.dcmread(get_testdata_file("reportsi.dcm"))
    beside = pydicom.dcmread(image, stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = beside.StudyInstanceUID, beside.SeriesInstanceUID
    ds.PatientID, ds.PatientName = beside.PatientID, beside.PatientName
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sr-rendered-beside"])
    ds.InstanceNumber = int(beside.InstanceNumber) + 1
    ds.save_as(path, enforce_file_format=True)
    return path


def encapsulated_pdf(path: Path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sr-rendered-pdf"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["sr-rendered-pdf-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["sr-rendered-pdf-series"])
    ds.Modality, ds.PatientID, ds.MIMETypeOfEncapsulatedDocument = "DOC", "SR-PDF", "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    names = {"basic": "reportsi.dcm", "dcmtk": "test-SR.dcm", "ct": "CT_small.dcm"}
    found = {key: Path(str(get_testdata_file(name))) for key, name in names.items()}
    folder = tmp_path_factory.mktemp("sr")
    return {
        **found,
        "hostile": hostile_report(folder / "hostile.dcm"),
        "beside": report_beside(folder / "beside.dcm", found["ct"]),
        "pdf": encapsulated_pdf(folder / "pdf.dcm"),
    }


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> Iterator[RunningStack]:
    yield from module_stack(request, tmp_path_factory, "sr", list(files.values()))


@pytest.fixture(scope="module")
def root(stack: RunningStack, files: dict[str, Path]) -> str:
    return stack.root(stack.issue(sorted({uids_of(path)[0] for path in files.values()}))["token"])


def instance(root: str, path: Path) -> str:
    study, series, sop = uids_of(path)
    return f"{root}/studies/{study}/series/{series}/instances/{sop}"


def wado(root: str, path: Path) -> tuple[str, dict[str, str]]:
    study, series, sop = uids_of(path)
    return f"{root}/wado", {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}


def assert_text(answer: requests.Response) -> str:
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    return answer.content.decode("utf-8")


def assert_html(answer: requests.Response) -> str:
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    return answer.content.decode("utf-8")


def assert_xml(answer: requests.Response) -> ET.Element:
    """A NativeDicomModel document, served as text/xml in UTF-8 with the sandboxing CSP of the HTML."""
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.content.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<NativeDicomModel ")
    document = ET.fromstring(answer.content)
    assert document.tag == f"{NS}NativeDicomModel"
    return document


def assert_406(answer: requests.Response, detail: str) -> None:
    assert (answer.status_code, answer.headers["Content-Type"]) == (406, "application/json"), answer.text[:300]
    assert answer.json() == {"error": "not_acceptable", "detail": detail}


# -- DCMTK's reading of a report, in the text rendering's line format --------------------------------------------

_ITEMS = {"container", "text", "code", "num", "uidref", "pname", "date", "time", "datetime", "image", "composite",
          "waveform", "scoord", "scoord3d", "tcoord", "reference"}  # fmt: skip
_RELATIONSHIPS = "has obs context|has concept mod|has properties|has acq context|contains|inferred from|selected from"
_LINE = re.compile(rf"^( *)({_RELATIONSHIPS})(?: ([A-Z0-9]+))?(?:: (.*?))?(?: = (.*))?$")


def _dcmtk_value(element: ET.Element) -> str | None:
    """The value dsr2xml gives a content item, in the rendering's form; None where only the item is compared."""
    tag = element.tag
    if tag in ("text", "uidref", "date", "time", "datetime"):
        return (element.findtext("value") or "").replace("\r\n", "\n").replace("\r", "\n").strip()
    if tag == "code":
        return f"{element.findtext('meaning')} ({element.findtext('value')}, {element.findtext('scheme/designator')})"
    if tag == "num":
        return f"{element.findtext('value')} {element.findtext('unit/value')}"
    if tag == "container":
        return ""
    return None


def dcmtk_items(path: Path) -> list[tuple[int, str, str, str, str | None]]:
    """(depth, relationship, value type, concept name, value) of every content item below the root, as dsr2xml
    reads the file."""
    xml = subprocess.run(["dsr2xml", str(path)], capture_output=True, check=True, timeout=60).stdout
    root = ET.fromstring(xml).find("document/content/container")  # the root (its date and time are the header's)
    assert root is not None
    found: list[tuple[int, str, str, str, str | None]] = []

    def walk(element: ET.Element, depth: int) -> None:
        for child in element:
            if child.tag not in _ITEMS:
                continue
            relationship = (child.findtext("relationship") or "").lower()
            kind = "" if child.tag == "reference" else child.tag.upper()
            found.append((depth, relationship, kind, child.findtext("concept/meaning") or "", _dcmtk_value(child)))
            walk(child, depth + 1)

    walk(root, 0)
    return found


def rendered_items(text: str) -> list[tuple[int, str, str, str, str]]:
    """The same of the text rendering: its tree (after the header), a value's further lines joined to it."""
    tree = text.split("\n\n", 2)[2]
    items: list[tuple[int, str, str, str, str]] = []
    for line in tree.rstrip("\n").split("\n"):
        match = _LINE.match(line)
        if match is None:  # a multi-line value's further line
            depth, relationship, kind, name, value = items[-1]
            items[-1] = (depth, relationship, kind, name, f"{value}\n{line.strip()}")
            continue
        indent, relationship, kind, name, value = match.groups()
        items.append((len(indent) // 2, relationship, kind or "", name or "", value or ""))
    return items


@pytest.mark.skipif(shutil.which("dsr2xml") is None, reason="DCMTK is installed by make test")
@pytest.mark.parametrize("name", ["dcmtk", "hostile"])
def test_plain_text_holds_every_content_item_dcmtk_reads(root: str, files: dict[str, Path], name: str) -> None:
    url = f"{instance(root, files[name])}/rendered"
    text = assert_text(requests.get(url, params={"accept": "text/plain"}, timeout=30))
    expected = dcmtk_items(files[name])
    got = rendered_items(text)
    assert [item[:4] for item in got] == [item[:4] for item in expected]
    for (depth, relationship, kind, concept, value), mine in zip(expected, got, strict=True):
        if value is not None:
            assert mine[4] == value, (depth, relationship, kind, concept)


def test_plain_text_is_utf8_of_the_files_character_set(root: str, files: dict[str, Path]) -> None:
    """test-SR.dcm is ISO_IR 100 (Latin-1: "Jörg" is the byte F6), the hostile one ISO_IR 192."""
    text = assert_text(requests.get(f"{instance(root, files['dcmtk'])}/rendered", headers={"Accept": "text/plain"},
                                    timeout=30))  # fmt: skip
    assert text.startswith("Diagnosis\n\nDocument:           Comprehensive SR Storage\nPatient:            Test^S R\n")
    assert "Verifying Observer: Riesmeier^Jörg, OFFIS e.V. 2001-02-13T18:47:46\n" in text
    assert "contains TEXT: Code = Sample Text\n                      A\n                      B\n" in text
    text = assert_text(requests.get(f"{instance(root, files['hostile'])}/rendered", headers={"Accept": "text/plain"},
                                    timeout=30))  # fmt: skip
    assert "Patient:           Müller^Zoë (SR-HOSTILE)\n" in text
    assert "  contains TEXT: Finding = <script>alert(document.cookie)</script>\n" in text  # plain text is not markup
    # a line break in a header value or a name is a space: only a TEXT value spans lines
    assert "Study:             <b>study</b> Verification Flag: VERIFIED\n" in text
    assert [line for line in text.split("\n") if line.startswith("Verification")] == ["Verification Flag: UNVERIFIED"]
    text = assert_text(requests.get(f"{instance(root, files['basic'])}/rendered", headers={"Accept": "text/plain"},
                                    timeout=30))  # fmt: skip
    assert text.startswith("Document Title\n\nDocument:          Basic Text SR Storage\n")
    assert "contains CONTAINER: Section Heading\n  contains TEXT: Report Text = Enter text\n" in text


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_the_default_and_markup_in_values_comes_out_inert(root: str, files: dict[str, Path]) -> None:
    """text/html is the Text category's default: no Accept, `*/*`, `text/*` and a browser's page Accept get it. A
    TEXT value, title or study description holding `<script>` or `<img onerror>` is shown as text: every value is
    escaped (the only elements are the page's own, with no attribute but its charset), and the sandboxing CSP
    would keep any script from running on the gateway's origin even if one were not."""
    url = f"{instance(root, files['hostile'])}/rendered"
    page_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
    pages = [
        assert_html(requests.get(url, headers=headers, timeout=30))
        for headers in ({}, {"Accept": "*/*"}, {"Accept": "text/*"}, {"Accept": page_accept})
    ]
    assert len(set(pages)) == 1
    parser = _Tags()
    parser.feed(pages[0])
    assert {tag for tag, _ in parser.tags} <= {"html", "head", "meta", "title", "body", "h1", "dl", "dt", "dd", "ul",
                                               "li", "i", "b", "br"}  # fmt: skip
    assert [attrs for _, attrs in parser.tags if attrs] == [[("charset", "utf-8")]]
    shown = "".join(parser.text)
    assert "<script>alert(document.cookie)</script>" in shown and "<img src=x onerror=alert(1)> Größe: 3 cm" in shown
    assert "Imaging Report <script>alert('title')</script>" in shown and "<b>study</b>" in shown
    assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;<br>&lt;img src=x onerror=alert(1)&gt;" in pages[0]


def test_accept_negotiation_chooses_between_html_and_plain_text(root: str, files: dict[str, Path]) -> None:
    url = f"{instance(root, files['basic'])}/rendered"
    plain = ("text/plain", "text/html;q=0.5, text/plain", "image/png;q=0.9, text/plain;q=0.8", "text/html;q=0, */*")
    for accept in plain:
        assert_text(requests.get(url, headers={"Accept": accept}, timeout=30))
    # the accept query parameter wins over the header
    assert_text(requests.get(url, params={"accept": "text/plain"}, headers={"Accept": "text/html"}, timeout=30))
    assert_html(requests.get(url, params={"accept": "text/html"}, headers={"Accept": "text/plain"}, timeout=30))
    for accept in ("text/xml", "text/html;q=0.5, text/xml", "text/plain;q=0.2, text/xml;q=0.3",
                   "text/html;q=0, text/plain;q=0, */*"):  # fmt: skip
        assert_xml(requests.get(url, headers={"Accept": accept}, timeout=30))
    assert_html(requests.get(url, headers={"Accept": "text/xml;q=0, text/*"}, timeout=30))
    assert_xml(requests.get(url, params={"accept": "text/xml"}, headers={"Accept": "text/html"}, timeout=30))
    for accept in ("image/png", "image/jpeg", "application/pdf", "application/xml", "text/*;q=0"):
        assert_406(requests.get(url, headers={"Accept": accept}, timeout=30), REPORT_406)
    # a frame of a report is no image either
    assert_406(requests.get(f"{instance(root, files['basic'])}/frames/1/rendered", timeout=30),
               "this instance has no pixel data: it is no image to render")  # fmt: skip


def test_wado_uri_renders_a_report_as_text_or_html(root: str, files: dict[str, Path]) -> None:
    url, params = wado(root, files["hostile"])
    plain = assert_text(requests.get(url, params={**params, "contentType": "text/plain"}, timeout=30))
    html = assert_html(requests.get(url, params={**params, "contentType": "text/html"}, timeout=30))
    via_rs = f"{instance(root, files['hostile'])}/rendered"
    assert plain == assert_text(requests.get(via_rs, headers={"Accept": "text/plain"}, timeout=30))
    assert html == assert_html(requests.get(via_rs, timeout=30))
    # without contentType, an Accept naming text/plain selects it (PS3.18 9.3); a browser's gets the Text
    # category's default, text/html (Table 8.7.4-1; it was the object)
    assert assert_text(requests.get(url, params=params, headers={"Accept": "text/plain"}, timeout=30)) == plain
    answer = requests.get(url, params=params, headers={"Accept": "text/html,*/*;q=0.8"}, timeout=30)
    assert assert_html(answer) == html
    assert_406(requests.get(url, params={**params, "contentType": "image/jpeg"}, timeout=30), REPORT_406)


@pytest.mark.parametrize("name", ["basic", "dcmtk", "hostile"])
def test_xml_is_the_report_data_set_as_dcmtk_reads_the_stored_file(
    root: str, files: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """text/xml (PS3.18 Table 8.7.4-1: Required of the rendered resource for the Text category) is the report's
    data set as a PS3.19 Native DICOM Model document: every attribute, the content tree's items with their concept
    names and values among them, says what DCMTK's ``dcm2xml --native-format`` reads of the stored file. It was a
    JSON 406. WADO-URI serves the same document for ``contentType=text/xml`` and for an Accept naming it first."""
    url = instance(root, files[name])
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(requests.get(url, headers={"Accept": "application/dicom"}, timeout=30).content)
    answer = requests.get(f"{url}/rendered", headers={"Accept": "text/xml"}, timeout=30)
    document = assert_xml(answer)
    assert_as_dcmtk_reads(document, stored, url)
    # the content tree is there: the root's concept name and each first-level item's relationship and value type
    ours, ds = flatten(document), pydicom.dcmread(stored)
    assert ours["0040A043/1/00080104"] == ("LO", [ds.ConceptNameCodeSequence[0].CodeMeaning])
    items = [key for key in ours if re.fullmatch(r"0040A730/\d+/0040A040", key)]
    assert [ours[key][1] for key in items] == [[item.ValueType] for item in ds.ContentSequence]
    again = requests.get(f"{url}/rendered", headers={"Accept": "text/xml", "If-None-Match": answer.headers["ETag"]},
                         timeout=30)  # fmt: skip
    assert again.status_code == 304
    wado_url, params = wado(root, files[name])
    by_uri = requests.get(wado_url, params={**params, "contentType": "text/xml"}, timeout=30)
    assert_xml(by_uri)
    assert by_uri.content == answer.content
    by_accept = requests.get(wado_url, params=params, headers={"Accept": "text/xml"}, timeout=30)
    assert (by_accept.headers["Content-Type"], by_accept.content) == ("text/xml; charset=utf-8", answer.content)


def test_xml_of_a_report_keeps_its_markup_as_text(root: str, files: dict[str, Path]) -> None:
    """The hostile report's TEXT value is character data of the XML (escaped, its carriage return kept as a
    reference), never an element a browser would build: the document's only elements are the Native DICOM Model's."""
    answer = requests.get(f"{instance(root, files['hostile'])}/rendered", headers={"Accept": "text/xml"}, timeout=30)
    document = assert_xml(answer)
    names = {element.tag.removeprefix(NS) for element in document.iter()}
    assert names <= {"NativeDicomModel", "DicomAttribute", "Value", "Item", "PersonName", "Alphabetic",
                     "FamilyName", "GivenName"}  # fmt: skip
    text = flatten(document)["0040A730/3/0040A730/1/0040A160"]
    assert text == ("UT", [HOSTILE_TEXT])
    assert b"&lt;script&gt;alert(document.cookie)&lt;/script&gt;&#13;\n&lt;img src=x" in answer.content


def test_thumbnail_of_a_report_or_a_pdf_is_the_drawing_of_a_page(root: str, files: dict[str, Path]) -> None:
    """One drawing for every instance that is no image, at instance and series level, in the Accept's image type
    and viewport; nothing of the instance is in it (PS3.18 10.4.3.3.4: no patient information)."""
    drawings = set()
    for key in ("hostile", "pdf", "dcmtk"):
        url = instance(root, files[key])
        for thumbnail in (f"{url}/thumbnail", f"{url.rsplit('/instances/', 1)[0]}/thumbnail"):
            answer = requests.get(thumbnail, timeout=30)
            assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/jpeg"), answer.text[:300]
            image = Image.open(BytesIO(answer.content))
            assert (image.format, image.size) == ("JPEG", (128, 128))
            drawings.add(answer.content)
            again = requests.get(thumbnail, headers={"If-None-Match": answer.headers["ETag"]}, timeout=30)
            assert again.status_code == 304
    assert len(drawings) == 1
    url = f"{instance(root, files['hostile'])}/thumbnail"
    for media, kind in (("image/png", "PNG"), ("image/gif", "GIF")):
        answer = requests.get(url, headers={"Accept": media}, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, media)
        drawn = Image.open(BytesIO(answer.content))
        assert (drawn.format, drawn.size) == (kind, (128, 128))
    answer = requests.get(url, params={"viewport": "64,64"}, headers={"Accept": "image/png"}, timeout=30)
    assert (answer.status_code, Image.open(BytesIO(answer.content)).size) == (200, (64, 64))
    answer = requests.get(url, headers={"Accept": "text/html"}, timeout=30)
    assert_406(answer, "an image is rendered as image/jpeg, image/png or image/gif only")


def test_series_thumbnail_is_of_its_image_when_a_report_is_its_middle_instance(
    root: str, files: dict[str, Path]
) -> None:
    """CT_small's series holds the CT and, numbered after it, a report: the middle instance, which made the series
    thumbnail a 406. The series is shown by its image."""
    image = instance(root, files["ct"])
    series = requests.get(f"{image.rsplit('/instances/', 1)[0]}/thumbnail", timeout=30)
    assert (series.status_code, series.headers["Content-Type"]) == (200, "image/jpeg"), series.text[:300]
    own = requests.get(f"{image}/thumbnail", timeout=30)
    assert own.status_code == 200 and series.content == own.content
    assert requests.get(f"{instance(root, files['beside'])}/thumbnail", timeout=30).content != own.content


@pytest.mark.browser
def test_chromium_shows_the_markup_of_a_report_as_text_and_runs_none_of_it(root: str, files: dict[str, Path]) -> None:
    """The rendered HTML opened in Chromium, as a user following a link would: the `<script>` and `<img onerror>`
    of the report's values appear as text, no dialog opens, and the page asks for nothing but itself."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Chromium is installed by make test")
    url = f"{instance(root, files['hostile'])}/rendered"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            requested: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.on("request", lambda request: requested.append(request.url))
            answer = page.goto(url)
            assert answer is not None and answer.status == 200
            page.wait_for_load_state("load")
            shown = page.inner_text("body")
            assert "<script>alert(document.cookie)</script>" in shown
            assert "<img src=x onerror=alert(1)> Größe: 3 cm" in shown
            assert page.locator("script").count() == 0 and page.locator("img").count() == 0
            assert dialogs == [] and requested == [url]
        finally:
            browser.close()
