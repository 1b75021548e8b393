"""De-identification: output re-scans clean, UIDs and dates are keyed and consistent, pixels are copied."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit

from gateway.errors import DeidentificationFailed
from gateway.phi.deidentify import deidentify_file, remap_uid
from gateway.phi.policy import Policy, parse_policy
from gateway.phi.scanner import scan_file

try:
    from test_phi_files import ORG_ROOT, clean_dataset, phi_dataset, write, write_big_native
except ImportError:  # collected as a package
    from tests.unit.test_phi_files import ORG_ROOT, clean_dataset, phi_dataset, write, write_big_native

KEY = "k" * 40
OTHER_KEY = "z" * 40


def options_policy() -> Policy:
    return parse_policy(
        {
            "version": "t",
            "deidentify": {
                "dates": "shift",
                "max_shift_days": 30,
                "cleanDescOpt": True,
                "rtnPatCharsOpt": True,
            },
            "private": {"safe": [{"creator": "ACME SAFE", "element": "0009,xx01"}]},
        }
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_basic_profile_output_rescans_clean_and_source_is_untouched(tmp_path: Path) -> None:
    src = write(phi_dataset(), tmp_path / "src.dcm")
    before = sha(src)
    assert not scan_file(src).clean
    result = deidentify_file(src, tmp_path / "out.dcm", KEY)
    assert sha(src) == before
    report = scan_file(result.path)
    assert report.clean, report.findings
    out = pydicom.dcmread(result.path)
    assert out.PatientName == "" and out.StudyDate == ""  # Z
    assert out.PatientID == ""  # Z/D: Type 2 in every IOD's Patient Module, so Z (one dummy would make all one patient)
    assert (
        "PatientAge" not in out
        and "OtherPatientIDsSequence" not in out
        and "RequestAttributesSequence" not in out
    )
    assert out.InstitutionName == out.DeviceSerialNumber == "ANONYMIZED"  # X/Z/D with a value: the dummy
    assert 0x00091001 not in out and 0x00090010 not in out and 0x00111001 not in out and 0x00110010 not in out
    assert out.PatientIdentityRemoved == "YES"
    assert [item.CodeValue for item in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.PixelData == bytes(range(32))
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == result.sop_uid
    assert out.SOPInstanceUID == remap_uid(ORG_ROOT + ".3.1", KEY.encode())


def test_options_output_rescans_clean_with_the_policy(tmp_path: Path) -> None:
    src = write(phi_dataset(), tmp_path / "src.dcm")
    policy = options_policy()
    result = deidentify_file(src, tmp_path / "out.dcm", KEY, policy)
    report = scan_file(result.path, policy)
    assert report.clean, report.findings
    out = pydicom.dcmread(result.path)
    assert [item.CodeValue for item in out.DeidentificationMethodCodeSequence] == [
        "113100",
        "113105",
        "113107",
        "113108",
        "113111",
    ]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert result.shift_days is not None and 1 <= result.shift_days <= 30
    assert out.StudyTime == "101500"  # whole-day shift keeps times
    assert out.PatientAge == "074Y" and out.PatientSex == "M"  # patient characteristics retained
    assert out.StudyDescription == "CT CHEST"  # clean description kept
    assert out.SeriesDescription == ""  # it repeated the patient's name
    assert out[0x00091001].value == "1.5"  # whitelisted private element kept, with its creator
    assert out[0x00090010].value == "ACME SAFE"
    assert 0x00091002 not in out and 0x00111001 not in out and 0x00110010 not in out
    assert out.PatientBirthDate == ""  # no option retains it


def test_descriptions_giving_the_birth_date_are_emptied(tmp_path: Path) -> None:
    """The clean-descriptors option keeps a description unless it says who the patient is: the birth date (the
    patient's own in any written form, or any after its keyword) now counts, as the scanner counts it, so the
    output re-scans clean instead of being refused."""
    policy = options_policy()
    ds = clean_dataset()
    ds.PatientBirthDate = "19950331"
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = "pt born 31.03.1995"
    ds.ProtocolName = "DOB 19800101 (mother)"
    src = write(ds, tmp_path / "src.dcm")
    result = deidentify_file(src, tmp_path / "out.dcm", KEY, policy)
    report = scan_file(result.path, policy)
    assert report.clean, report.findings
    out = pydicom.dcmread(result.path)
    assert (out.StudyDescription, out.SeriesDescription, out.ProtocolName) == ("CT CHEST", "", "")


def test_dates_shift_by_the_same_keyed_offset_per_patient(tmp_path: Path) -> None:
    policy = options_policy()
    first = write(phi_dataset(sop=ORG_ROOT + ".3.1"), tmp_path / "a.dcm")
    second_ds = phi_dataset(sop=ORG_ROOT + ".3.2")
    second_ds.StudyDate = "20240320"
    second = write(second_ds, tmp_path / "b.dcm")
    one = deidentify_file(first, tmp_path / "a-out.dcm", KEY, policy)
    two = deidentify_file(second, tmp_path / "b-out.dcm", KEY, policy)
    assert one.shift_days == two.shift_days
    from datetime import date, timedelta

    days = one.shift_days or 0
    expected = date(2024, 3, 15) - timedelta(days=days)
    out_one, out_two = pydicom.dcmread(one.path), pydicom.dcmread(two.path)
    assert out_one.StudyDate == expected.strftime("%Y%m%d")
    assert out_two.StudyDate == (date(2024, 3, 20) - timedelta(days=days)).strftime("%Y%m%d")
    assert out_one.AcquisitionDateTime == expected.strftime("%Y%m%d") + "101501.123456"


def test_same_study_uploaded_separately_maps_to_the_same_uids(tmp_path: Path) -> None:
    first = write(phi_dataset(sop=ORG_ROOT + ".3.0"), tmp_path / "a.dcm")
    second_ds = phi_dataset(sop=ORG_ROOT + ".3.1")  # references ORG_ROOT.3.0 in ReferencedImageSequence
    second = write(second_ds, tmp_path / "b.dcm")
    one = deidentify_file(first, tmp_path / "a-out.dcm", KEY)
    two = deidentify_file(second, tmp_path / "b-out.dcm", KEY)
    again = deidentify_file(first, tmp_path / "a-again.dcm", KEY)
    assert one.study_uid == two.study_uid == again.study_uid
    assert one.series_uid == two.series_uid
    assert one.sop_uid == again.sop_uid != two.sop_uid
    assert one.study_uid.startswith("2.25.") and len(one.study_uid) <= 64
    out_two = pydicom.dcmread(two.path)
    assert out_two.ReferencedImageSequence[0].ReferencedSOPInstanceUID == one.sop_uid
    assert out_two.FrameOfReferenceUID == pydicom.dcmread(one.path).FrameOfReferenceUID
    other = deidentify_file(first, tmp_path / "a-other.dcm", OTHER_KEY)
    assert other.study_uid != one.study_uid and other.sop_uid != one.sop_uid


def test_sr_content_is_cleaned(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.PatientName = "DOE^JOHN"
    text, person, plain = Dataset(), Dataset(), Dataset()
    text.ValueType, text.TextValue = "TEXT", "Discussed with John Doe."
    person.ValueType, person.PersonName = "PNAME", "ROE^JANE"
    plain.ValueType, plain.TextValue = "TEXT", "No acute findings."
    ds.ContentSequence = Sequence([text, person, plain])
    src = write(ds, tmp_path / "sr.dcm")
    policy = parse_policy({"version": 1, "deidentify": {"cleanStructContOpt": True}})
    result = deidentify_file(src, tmp_path / "out.dcm", KEY, policy)
    assert scan_file(result.path, policy).clean
    items = pydicom.dcmread(result.path).ContentSequence
    assert [item.get("TextValue") for item in items] == ["", None, "No acute findings."]
    assert items[1].PersonName == "ANONYMIZED^"  # D: a dummy (Type 1 in a PNAME item)
    basic = deidentify_file(src, tmp_path / "basic.dcm", KEY)
    assert scan_file(basic.path).clean
    assert len(pydicom.dcmread(basic.path).ContentSequence) == 0


def test_overlays_curves_icons_and_trailing_elements_are_removed(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60003000, "OW", b"\xff\x00" * 2)
    ds.add_new(0x50003000, "OW", b"\x01\x02\x03\x04")
    icon = Dataset()
    icon.Rows = 2
    ds.IconImageSequence = Sequence([icon])
    ds.add_new(0x7FE10010, "LO", "GEMS_TRAIL")
    ds.add_new(0x7FE11001, "LO", "DOE^JOHN")
    src = write(ds, tmp_path / "src.dcm")
    result = deidentify_file(src, tmp_path / "out.dcm", KEY)
    assert scan_file(result.path).clean
    out = pydicom.dcmread(result.path)
    assert [tag for tag in out.keys() if tag >> 16 in (0x5000, 0x6000, 0x7FE1)] == []
    assert "IconImageSequence" not in out


def test_age_over_89_is_emptied(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.PatientAge = "095Y"
    policy = parse_policy({"version": 1, "deidentify": {"rtnPatCharsOpt": True}})
    result = deidentify_file(write(ds, tmp_path / "src.dcm"), tmp_path / "out.dcm", KEY, policy)
    assert pydicom.dcmread(result.path).PatientAge == ""
    assert scan_file(result.path, policy).clean


def test_encapsulated_document_is_refused(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.add_new(0x00420011, "OB", b"%PDF-1.4 fake\n")
    with pytest.raises(DeidentificationFailed, match="Encapsulated Document"):
        deidentify_file(write(ds, tmp_path / "src.dcm"), tmp_path / "out.dcm", KEY)
    assert not (tmp_path / "out.dcm").exists()


def test_refuses_in_place_and_without_key(tmp_path: Path) -> None:
    src = write(phi_dataset(), tmp_path / "src.dcm")
    with pytest.raises(DeidentificationFailed, match="in place"):
        deidentify_file(src, src, KEY)
    with pytest.raises(DeidentificationFailed, match="key"):
        deidentify_file(src, tmp_path / "out.dcm", "")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"nope")
    with pytest.raises(DeidentificationFailed, match="unreadable"):
        deidentify_file(bad, tmp_path / "out.dcm", KEY)


def test_implicit_vr_file(tmp_path: Path) -> None:
    src = write(phi_dataset(), tmp_path / "src.dcm", implicit=True)
    result = deidentify_file(src, tmp_path / "out.dcm", KEY)
    assert scan_file(result.path).clean
    out = pydicom.dcmread(result.path)
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2" and out.PixelData == bytes(range(32))


def test_encapsulated_pixel_data_larger_than_the_defer_size_is_copied_byte_for_byte(tmp_path: Path) -> None:
    ds = phi_dataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    fragments = [bytes([n]) * 300_001 + b"\xd9" for n in range(3)]  # each fragment > 256 KiB, odd -> padded
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.NumberOfFrames = 3
    ds.add_new(0x7FE10010, "LO", "AFTER")
    ds.add_new(0x7FE11001, "LO", "DOE^JOHN")
    src = tmp_path / "src.dcm"
    ds.save_as(src, enforce_file_format=True)
    result = deidentify_file(src, tmp_path / "out.dcm", KEY)
    assert scan_file(result.path).clean
    out = pydicom.dcmread(result.path)
    assert out.PixelData == pydicom.dcmread(src).PixelData
    assert 0x7FE11001 not in out


def test_large_native_file_is_streamed(tmp_path: Path) -> None:
    src = tmp_path / "big.dcm"
    length = write_big_native(src, frames=64)  # 32 MiB of pixel data
    tracemalloc.start()
    try:
        result = deidentify_file(src, tmp_path / "out.dcm", KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * 1024 * 1024, peak
    assert scan_file(result.path).clean
    out = pydicom.dcmread(result.path, defer_size=1024)
    assert out["PixelData"].value is not None and len(out.PixelData) == length


@pytest.mark.parametrize("implicit", [False, True])
def test_empty_numeric_elements_the_profile_keeps_are_written_empty(tmp_path: Path, implicit: bool) -> None:
    # pydicom reads a zero-length DS, IS or UL as None, like a value left on disk: it must not be taken for one
    ds = phi_dataset()
    ds.add_new(0x00180060, "DS", None)  # KVP
    ds.add_new(0x00200011, "IS", None)  # Series Number
    ds.add_new(0x00081161, "UL", None)  # Simple Frame List
    src = write(ds, tmp_path / "src.dcm", implicit=implicit)
    result = deidentify_file(src, tmp_path / "out.dcm", KEY)
    assert scan_file(result.path).clean
    out = pydicom.dcmread(result.path)
    for tag in (0x00180060, 0x00200011, 0x00081161):
        assert tag in out and out[tag].is_empty


def test_uid_sent_as_un_is_remapped_not_emptied(tmp_path: Path) -> None:
    # gdcmconv writes public elements of an implicit file as UN: the SOP Instance UID must still be remapped
    ds = phi_dataset()
    src = write(ds, tmp_path / "src.dcm")
    raw = src.read_bytes()
    sop = str(ds.SOPInstanceUID).encode() + (b"\0" if len(str(ds.SOPInstanceUID)) % 2 else b"")
    header = b"\x08\x00\x18\x00UI" + len(sop).to_bytes(2, "little")
    assert raw.count(header + sop) == 1
    src.write_bytes(raw.replace(header + sop, b"\x08\x00\x18\x00UN\0\0" + len(sop).to_bytes(4, "little") + sop))
    result = deidentify_file(src, tmp_path / "out.dcm", KEY)
    assert result.sop_uid == remap_uid(str(ds.SOPInstanceUID), KEY.encode())
    assert scan_file(result.path).clean
    assert pydicom.dcmread(result.path).SOPInstanceUID == result.sop_uid
