"""The scanner: one test per hiding place, each asserting the exact findings (path, keyword, rule)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.phi import scanner as scanner_module
from gateway.phi.policy import BASIC, Policy, parse_policy
from gateway.phi.scanner import Finding, read_dataset, scan_file

try:
    from test_phi_files import ORG_ROOT, clean_dataset, write, write_big_native
except ImportError:  # collected as a package
    from tests.unit.test_phi_files import ORG_ROOT, clean_dataset, write, write_big_native

PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def scan(
    ds: Dataset, tmp_path: Path, policy: Policy | None = None, implicit: bool = False
) -> list[tuple[str, ...]]:
    report = scan_file(write(ds, tmp_path / "f.dcm", implicit=implicit), policy)
    assert report.readable, report.error
    return [(f.path, f.keyword, f.rule) for f in report.findings]


def policy(**deidentify: object) -> Policy:
    return parse_policy({"version": "t", "deidentify": deidentify})


def test_clean_file_passes(tmp_path: Path) -> None:
    report = scan_file(write(clean_dataset(), tmp_path / "clean.dcm"))
    assert report.clean and report.status == "clean" and report.exit_code == 0
    assert report.findings == []


def test_clean_implicit_vr_file_passes(tmp_path: Path) -> None:
    assert scan(clean_dataset(), tmp_path, implicit=True) == []


def test_top_level_names(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.PatientName = "DOE^JOHN"
    ds.ReferringPhysicianName = "WHO^DOCTOR"
    assert scan(ds, tmp_path) == [
        ("(0008,0090)", "ReferringPhysicianName", "e1-1:Z"),
        ("(0010,0010)", "PatientName", "e1-1:Z"),
    ]


def test_name_deep_in_sequences(tmp_path: Path) -> None:
    ds = clean_dataset()
    request = Dataset()
    request.RequestingPhysician = "SMITH^ANNA"
    ds.RequestAttributesSequence = Sequence([request])
    inner = Dataset()
    inner.PatientName = "DEEP^NAME"
    frame = Dataset()
    frame.FrameContentSequence = Sequence([inner])
    ds.SharedFunctionalGroupsSequence = Sequence([frame])
    assert scan(ds, tmp_path) == [
        ("(0040,0275)", "RequestAttributesSequence", "e1-1:X"),
        ("(0040,0275)[0]>(0032,1032)", "RequestingPhysician", "e1-1:X"),
        ("(5200,9229)[0]>(0020,9111)[0]>(0010,0010)", "PatientName", "e1-1:Z"),
    ]


def test_other_patient_ids_sequence(tmp_path: Path) -> None:
    ds = clean_dataset()
    second = Dataset()
    second.PatientID = "ALT-555"
    ds.OtherPatientIDsSequence = Sequence([Dataset(), second])
    assert scan(ds, tmp_path) == [
        ("(0010,1002)", "OtherPatientIDsSequence", "e1-1:X"),
        ("(0010,1002)[1]>(0010,0020)", "PatientID", "e1-1:Z/D"),
    ]


def test_private_tags_and_private_sequence(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", "anything")
    item = Dataset()
    item.PatientName = "HIDDEN^NAME"
    item.add_new(0x00290010, "LO", "ACME 1.0")
    item.add_new(0x00291005, "SH", "x")
    ds.add_new(0x00110010, "LO", "ACME SEQ")
    ds.add_new(0x00111001, "SQ", Sequence([item]))
    assert scan(ds, tmp_path) == [
        ("(0009,1001)", "", "private-tag"),
        ("(0011,1001)", "", "private-tag"),
        ("(0011,1001)[0]>(0010,0010)", "PatientName", "e1-1:Z"),
        ("(0011,1001)[0]>(0029,1005)", "", "private-tag"),
    ]


def test_private_element_without_creator_is_flagged(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.add_new(0x00131001, "LO", "orphan")
    assert scan(ds, tmp_path) == [("(0013,1001)", "", "private-tag")]


def test_whitelisted_private_element_not_flagged(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "DS", "2.5")  # whitelisted
    ds.add_new(0x00091002, "DS", "3.5")  # same creator, other element: not whitelisted
    ds.add_new(0x00190010, "LO", "OTHER")
    ds.add_new(0x00191001, "DS", "4.5")  # same element offset, other creator: not whitelisted
    safe = parse_policy(
        {"version": 1, "private": {"safe": [{"creator": "ACME 1.0", "element": "0009,xx01"}]}}
    )
    assert scan(ds, tmp_path, safe) == [
        ("(0009,1002)", "", "private-tag"),
        ("(0019,1001)", "", "private-tag"),
    ]
    assert scan(ds, tmp_path) == [
        ("(0009,1001)", "", "private-tag"),
        ("(0009,1002)", "", "private-tag"),
        ("(0019,1001)", "", "private-tag"),
    ]


def test_whitelisted_private_text_repeating_the_name_is_flagged(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.OtherPatientNames = "DOE^JOHN"
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", "scanned by john")
    safe = parse_policy(
        {"version": 1, "private": {"safe": [{"creator": "ACME 1.0", "element": "0009,xx01"}]}}
    )
    assert scan(ds, tmp_path, safe) == [
        ("(0009,1001)", "", "free-text-identifier"),
        ("(0010,1001)", "OtherPatientNames", "e1-1:X"),
    ]


def test_overlay_data(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60003000, "OW", b"\xff\x00" * 2)
    ds.add_new(0x60024000, "LT", "overlay note")
    assert scan(ds, tmp_path) == [
        ("(6000,3000)", "OverlayData", "e1-1:X"),
        ("(6002,4000)", "OverlayComments", "e1-1:X"),
    ]


def test_curve_data(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.add_new(0x50003000, "OW", b"\x01\x02\x03\x04")
    assert scan(ds, tmp_path) == [("(5000,3000)", "CurveData", "e1-1:X")]


def test_icon_image_sequence(tmp_path: Path) -> None:
    ds = clean_dataset()
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 2, 2, 8
    icon.add_new(0x7FE00010, "OB", b"\x00\x01\x02\x03")
    ds.IconImageSequence = Sequence([icon])
    assert scan(ds, tmp_path) == [("(0088,0200)", "IconImageSequence", "e1-1:X")]


def test_original_attributes_sequence(tmp_path: Path) -> None:
    ds = clean_dataset()
    modified = Dataset()
    modified.PatientName = "OLD^NAME"
    original = Dataset()
    original.ModifiedAttributesSequence = Sequence([modified])
    ds.OriginalAttributesSequence = Sequence([original])
    assert scan(ds, tmp_path) == [
        ("(0400,0561)", "OriginalAttributesSequence", "e1-1:X"),
        ("(0400,0561)[0]>(0400,0550)", "ModifiedAttributesSequence", "e1-1:X"),
        ("(0400,0561)[0]>(0400,0550)[0]>(0010,0010)", "PatientName", "e1-1:Z"),
    ]


def test_encapsulated_document(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.add_new(0x00420011, "OB", b"%PDF-1.4 fake\n")
    assert scan(ds, tmp_path) == [("(0042,0011)", "EncapsulatedDocument", "e1-1:D")]


def _sr_items() -> Sequence:
    text = Dataset()
    text.ValueType = "TEXT"
    text.TextValue = "Findings discussed with the patient."
    person = Dataset()
    person.ValueType = "PNAME"
    person.PersonName = "ROE^JANE"
    return Sequence([text, person])


def test_sr_text_and_pname_items(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.ContentSequence = _sr_items()
    assert scan(ds, tmp_path) == [
        ("(0040,A730)", "ContentSequence", "e1-1:D"),
        ("(0040,A730)[0]>(0040,A160)", "TextValue", "sr-text"),
        ("(0040,A730)[1]>(0040,A123)", "PersonName", "e1-1:D"),
    ]
    # Clean Structured Content: the sequence and plain text are acceptable, the person's name is not.
    assert scan(ds, tmp_path, policy(cleanStructContOpt=True)) == [
        ("(0040,A730)[1]>(0040,A123)", "PersonName", "e1-1:D"),
    ]


def test_burned_in_annotation_yes(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.BurnedInAnnotation = "YES"
    assert scan(ds, tmp_path) == [("(0028,0301)", "BurnedInAnnotation", "burned-in-annotation")]


def test_burned_in_annotation_missing_on_ultrasound(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.Modality = "US"
    del ds.BurnedInAnnotation
    assert scan(ds, tmp_path) == [("(0028,0301)", "BurnedInAnnotation", "burned-in-annotation")]
    ds.BurnedInAnnotation = "NO"
    assert scan(ds, tmp_path) == []
    ds.Modality = "CT"
    del ds.BurnedInAnnotation
    assert scan(ds, tmp_path) == []  # CT without the attribute: not a modality that burns text in


@pytest.mark.parametrize(
    ("sop_class", "modality", "flagged"),
    [
        ("1.2.840.10008.5.1.4.1.1.7", None, True),  # a Secondary Capture naming no modality (img2dcm's output)
        ("1.2.840.10008.5.1.4.1.1.7.4", "CT", True),  # a multi-frame true colour SC, whatever Modality says
        ("1.2.840.10008.5.1.4.1.1.2", None, True),  # an image naming no modality: nothing says what it is
        ("1.2.840.10008.5.1.4.1.1.2", "CT", False),
    ],
)
def test_burned_in_annotation_missing_on_captures_and_unknown_images(
    tmp_path: Path, sop_class: str, modality: str | None, flagged: bool
) -> None:
    ds = clean_dataset()
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    if modality is None:
        del ds.Modality
    else:
        ds.Modality = modality
    del ds.BurnedInAnnotation
    finding = [("(0028,0301)", "BurnedInAnnotation", "burned-in-annotation")]
    assert scan(ds, tmp_path) == (finding if flagged else [])
    ds.BurnedInAnnotation = "NO"
    assert scan(ds, tmp_path) == []


def test_a_compressed_capture_as_ingest_reads_it_is_flagged(tmp_path: Path) -> None:
    """Ingest scans the dataset its index read, which holds no Pixel Data when it is encapsulated: a JPEG Secondary
    Capture naming no modality (img2dcm's output, a screen capture with a name burned in) was clean there, where the
    same capture uncompressed, or the file read whole (`dicom-gateway scan`), was flagged."""
    from gateway.dicom.index import read_instance
    from gateway.phi.scanner import scan_with_values

    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")  # a JPEG Secondary Capture
    del ds.Modality
    path = tmp_path / "capture.dcm"
    ds.save_as(path)
    _, indexed = read_instance(path)
    assert "PixelData" not in indexed
    finding = ("(0028,0301)", "BurnedInAnnotation", "burned-in-annotation")
    for dataset in (indexed, None):
        report, _ = scan_with_values(path, dataset=dataset)
        assert finding in [(f.path, f.keyword, f.rule) for f in report.findings], dataset is None


def test_free_text_repeating_a_name_part(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.PatientName = "DOE^JOHN"
    ds.ManufacturerModelName = "John's scanner"
    assert scan(ds, tmp_path) == [
        ("(0008,1090)", "ManufacturerModelName", "free-text-identifier"),
        ("(0010,0010)", "PatientName", "e1-1:Z"),
    ]
    ds.ManufacturerModelName = "Johnson scanner"  # a word containing a name part is not the name
    assert scan(ds, tmp_path) == [("(0010,0010)", "PatientName", "e1-1:Z")]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("Παπαδόπουλος^Γιώργος", "ΠΑΠΑΔΟΠΟΥΛΟΣ"),  # Greek capitals are written without their accents
        ("Lefèvre^Hélène", "Mme LEFEVRE"),  # so are French ones, often
        ("LEFEVRE^HELENE", "Mme Lefèvre"),  # and a name sent in ASCII is the same name with them
    ],
)
def test_free_text_repeating_a_name_without_its_accents(tmp_path: Path, name: str, text: str) -> None:
    ds = clean_dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    ds.ManufacturerModelName = text
    assert ("(0008,1090)", "ManufacturerModelName", "free-text-identifier") in scan(ds, tmp_path)
    ds.PatientName = "カトウ^タロウ"
    ds.ManufacturerModelName = "カトウ"
    assert ("(0008,1090)", "ManufacturerModelName", "free-text-identifier") in scan(ds, tmp_path)
    ds.ManufacturerModelName = "ガトウ"  # other scripts keep their marks (a dakuten makes another sound)
    assert ("(0008,1090)", "ManufacturerModelName", "free-text-identifier") not in scan(ds, tmp_path)


def test_free_text_repeating_an_id_from_a_sequence(tmp_path: Path) -> None:
    ds = clean_dataset()
    other = Dataset()
    other.PatientID = "MRN-77881"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.Manufacturer = "ACME (mrn-77881)"
    assert scan(ds, tmp_path) == [
        ("(0008,0070)", "Manufacturer", "free-text-identifier"),
        ("(0010,1002)", "OtherPatientIDsSequence", "e1-1:X"),
        ("(0010,1002)[0]>(0010,0020)", "PatientID", "e1-1:Z/D"),
    ]


def test_descriptions_under_clean_descriptors_option(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.PatientID = "MRN12345"
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = "repeat for MRN12345"
    assert scan(ds, tmp_path) == [
        ("(0008,1030)", "StudyDescription", "e1-1:X"),
        ("(0008,103E)", "SeriesDescription", "e1-1:X"),
        ("(0010,0020)", "PatientID", "e1-1:Z/D"),
    ]
    assert scan(ds, tmp_path, policy(cleanDescOpt=True)) == [
        ("(0008,103E)", "SeriesDescription", "free-text-identifier"),
        ("(0010,0020)", "PatientID", "e1-1:Z/D"),
    ]


@pytest.mark.parametrize(
    "text", ["f/u 19950331", "seen 1995-03-31", "pt 31.03.1995", "31/3/1995 follow-up", "ref 03/31/1995"]
)
def test_free_text_repeating_the_birth_date(tmp_path: Path, text: str) -> None:
    """The patient's own birth date in free text, as DICOM writes it or as people do, is an identifier like the
    name or the ID: it passed as clean. A date that is not the birth date does not count."""
    ds = clean_dataset()
    ds.PatientBirthDate = "19950331"
    ds.SeriesDescription = text
    assert scan(ds, tmp_path, policy(cleanDescOpt=True)) == [
        ("(0008,103E)", "SeriesDescription", "free-text-identifier"),
        ("(0010,0030)", "PatientBirthDate", "e1-1:Z"),
    ]
    ds.SeriesDescription = "CT 19950330, 1995-03-311, 131.03.1995"
    assert scan(ds, tmp_path, policy(cleanDescOpt=True)) == [("(0010,0030)", "PatientBirthDate", "e1-1:Z")]


@pytest.mark.parametrize(
    "text",
    ["dob 19950331", "DOB: 31.03.1995", "D.O.B. 1995/03/31", "date of birth 3/31/1995", "born on 1995-03-31",
     "geb. 31.3.1995"],
)
def test_free_text_giving_a_birth_date(tmp_path: Path, text: str) -> None:
    """A birth date after its keyword is one whoever's it is (the file's own may be emptied already); a date or
    a word alone is not."""
    ds = clean_dataset()
    ds.SeriesDescription = text
    assert scan(ds, tmp_path, policy(cleanDescOpt=True)) == [
        ("(0008,103E)", "SeriesDescription", "free-text-birth-date")
    ]
    for harmless in ("CT 19950331", "dob", "reborn 1995-03-31", "born 1995"):
        ds.SeriesDescription = harmless
        assert scan(ds, tmp_path, policy(cleanDescOpt=True)) == [], harmless


def test_patient_age_over_89(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.PatientAge = "045Y"
    assert scan(ds, tmp_path) == [("(0010,1010)", "PatientAge", "e1-1:X")]
    characteristics = policy(rtnPatCharsOpt=True)
    assert scan(ds, tmp_path, characteristics) == []
    ds.PatientAge = "090Y"
    assert scan(ds, tmp_path, characteristics) == [("(0010,1010)", "PatientAge", "age-over-89")]
    ds.PatientAge = "999M"  # 83 years
    assert scan(ds, tmp_path, characteristics) == []


def test_dates_and_times(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.StudyDate = "20240315"
    ds.StudyTime = "101500"
    ds.AcquisitionDateTime = "20240315101501"
    ds.PatientBirthDate = "19500214"
    expected = [
        ("(0008,0020)", "StudyDate", "e1-1:Z"),
        ("(0008,002A)", "AcquisitionDateTime", "e1-1:X/Z/D"),
        ("(0008,0030)", "StudyTime", "e1-1:Z"),
        ("(0010,0030)", "PatientBirthDate", "e1-1:Z"),
    ]
    assert scan(ds, tmp_path) == expected
    # Modified Dates option: real dates still count until the file declares the shift (113107).
    shift = policy(dates="shift")
    assert scan(ds, tmp_path, shift) == [
        ("(0008,0020)", "StudyDate", "date-not-declared-modified"),
        ("(0008,002A)", "AcquisitionDateTime", "date-not-declared-modified"),
        ("(0008,0030)", "StudyTime", "date-not-declared-modified"),
        ("(0010,0030)", "PatientBirthDate", "e1-1:Z"),  # no option retains the birth date
    ]
    assert scan(ds, tmp_path, policy(dates="keep")) == [("(0010,0030)", "PatientBirthDate", "e1-1:Z")]


def test_element_after_pixel_data(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.add_new(0x7FE10010, "LO", "GEMS_TRAIL")
    ds.add_new(0x7FE11001, "LO", "DOE^JOHN")
    signature = Dataset()
    signature.add_new(0x04000105, "DT", "20240315101500")  # Digital Signature DateTime
    ds.DigitalSignaturesSequence = Sequence([signature])
    assert scan(ds, tmp_path) == [
        ("(7FE1,1001)", "", "private-tag"),
        ("(FFFA,FFFA)", "DigitalSignaturesSequence", "e1-1:X"),
        ("(FFFA,FFFA)[0]>(0400,0105)", "DigitalSignatureDateTime", "e1-1:D"),
    ]


def test_file_meta(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.file_meta.MediaStorageSOPInstanceUID = ORG_ROOT + ".9"
    ds.SOPInstanceUID = ORG_ROOT + ".9"
    ds.file_meta.PrivateInformationCreatorUID = ORG_ROOT + ".77"
    ds.file_meta.PrivateInformation = b"site=General Hospital\0"
    assert scan(ds, tmp_path) == [
        ("(0002,0003)", "MediaStorageSOPInstanceUID", "e1-1:U"),
        ("(0002,0100)", "PrivateInformationCreatorUID", "meta-private-information"),
        ("(0002,0102)", "PrivateInformation", "meta-private-information"),
        ("(0008,0018)", "SOPInstanceUID", "e1-1:U"),
    ]
    assert scan(ds, tmp_path, policy(rtnUIDsOpt=True)) == [
        ("(0002,0100)", "PrivateInformationCreatorUID", "meta-private-information"),
        ("(0002,0102)", "PrivateInformation", "meta-private-information"),
    ]


def test_claimed_identity_removed_is_scanned_all_the_same(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "trust me"
    ds.PatientName = "DOE^JOHN"
    assert scan(ds, tmp_path) == [("(0010,0010)", "PatientName", "e1-1:Z")]


def test_declared_modified_dates_are_accepted_only_with_the_option(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.StudyDate = "20231001"
    ds.PatientIdentityRemoved = "YES"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113107", "DCM", "Modified Dates"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    assert scan(ds, tmp_path, policy(dates="shift")) == []
    assert scan(ds, tmp_path) == [("(0008,0020)", "StudyDate", "e1-1:Z")]


def test_report_is_deterministic_json_without_values(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "MRN12345"
    ds.add_new(0x00091001, "LO", "SECRETVALUE")
    path = write(ds, tmp_path / "f.dcm")
    first, second = scan_file(path).to_json(), scan_file(path).to_json()
    assert first == second
    assert "DOE" not in first and "MRN12345" not in first and "SECRETVALUE" not in first
    data = json.loads(first)
    assert data["status"] == "phi" and data["readable"] is True and data["error"] is None
    assert [f["path"] for f in data["findings"]] == ["(0009,1001)", "(0010,0010)", "(0010,0020)"]


@pytest.mark.parametrize("content", [b"", b"not dicom at all" * 10, b"\0" * 128 + b"DICM" + b"\x02\x00"])
def test_malformed_files_are_unreadable_reports(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    report = scan_file(path)
    assert report.readable is False and report.status == "unreadable" and report.exit_code == 2
    assert report.error and report.findings == []
    assert json.loads(report.to_json())["status"] == "unreadable"


def test_truncated_pixel_data_is_unreadable(tmp_path: Path) -> None:
    path = write(clean_dataset(), tmp_path / "whole.dcm")
    big = tmp_path / "big.dcm"
    write_big_native(big, frames=4, trailing=False)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    report = scan_file(cut)
    assert report.readable is False and "truncated" in (report.error or "")
    assert scan_file(path).readable


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    report = scan_file(tmp_path / "nope.dcm")
    assert (
        report.readable is False and report.error is not None and report.error.startswith("FileNotFoundError")
    )


def test_one_gigabyte_multiframe_scans_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    length = write_big_native(path, frames=2048)  # 2048 x 512 x 512 x 2 bytes = 1 GiB, a sparse hole
    assert length == 1 << 30 and path.stat().st_size > length
    tracemalloc.start()
    try:
        report = scan_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak
    # the element stored after 1 GiB of pixel data is still seen
    assert [(f.path, f.rule) for f in report.findings] == [("(7FE1,1001)", "private-tag")]
    assert report.findings[0] == Finding("(7FE1,1001)", "", "private-tag")


def test_recognisable_dummy_values_for_d_codes(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.ContentDate = "19000101"  # Z/D
    ds.ContentTime = "000000"  # Z/D
    ds.DeviceSerialNumber = "0"  # X/Z/D
    ds.StudyDate = "19000101"  # Z only: a dummy is still a value
    ds.ContainerIdentifier = "ANONYMIZED"  # D
    assert scan(ds, tmp_path) == [("(0008,0020)", "StudyDate", "e1-1:Z")]
    ds.ContainerIdentifier = "SLIDE-7"
    assert scan(ds, tmp_path) == [
        ("(0008,0020)", "StudyDate", "e1-1:Z"),
        ("(0040,0512)", "ContainerIdentifier", "e1-1:D"),
    ]


# --- string values read once per process (gateway.dicom.valuememo) ------------------------------------------------


def test_pydicom_test_files_scan_the_same_with_the_memo_full() -> None:
    """Every file of pydicom's test data (other toolkits' files: character sets, byte orders, implicit VR,
    private elements) gets the same report whether the memo starts empty or holds what all the others left."""
    files = sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file())
    fresh = {}
    for path in files:
        scanner_module._texts_memo.entries.clear()
        fresh[path] = scan_file(path).to_dict()
    assert sum(report["status"] == "phi" for report in fresh.values()) > 20
    for _ in range(2):  # the second pass meets every value the first one stored
        for path, report in fresh.items():
            assert scan_file(path).to_dict() == report, path.name
    assert scanner_module._texts_memo.entries


def test_the_same_bytes_under_another_character_set_are_decoded_again(tmp_path: Path) -> None:
    """A value's text depends on the character set in force: bytes seen under one are decoded again under
    another (at the top level and in an item that inherits it)."""
    ds = clean_dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyDescription = "Müller"
    item = Dataset()
    item.CodeMeaning = "Müller"
    ds.ProcedureCodeSequence = Sequence([item])
    utf8 = write(ds, tmp_path / "utf8.dcm")
    data = utf8.read_bytes()
    assert data.count(b"ISO_IR 192") == 1
    latin1 = tmp_path / "latin1.dcm"
    latin1.write_bytes(data.replace(b"ISO_IR 192", b"ISO_IR 100"))
    seen = []
    for path in (utf8, latin1, utf8):
        dataset = read_dataset(path)
        scanner = scanner_module._Scanner(BASIC, False)
        scanner._context = (scanner_module._charset(dataset, b""), scanner._context[1])
        item_ds = dataset.ProcedureCodeSequence[0]
        seen.append(
            (
                scanner._texts(dataset, scanner_module._Element(dataset, 0x00081030)),
                scanner._texts(item_ds, scanner_module._Element(item_ds, 0x00080104)),
            )
        )
    assert seen == [(("Müller",), ("Müller",)), (("MÃ¼ller",), ("MÃ¼ller",)), (("Müller",), ("Müller",))]
