"""DICOM JSON metadata, BulkDataURI rebasing and QIDO attributes, checked against pydicom's own full read."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from gateway.dicom import metadata as metadata_module
from gateway.dicom import qido_attrs, valuememo
from gateway.dicom.index import index_file, read_instance
from gateway.dicom.metadata import join_metadata, metadata_text, rebase_bulkdata_text, rebase_bulkdata_uris
from gateway.dicom.qido_attrs import SEARCHABLE_KEYS
from gateway.dicom.times import date_key, time_key
from gateway.dicom.walker import quiet_validation
from gateway.errors import DicomError
from gateway.numbers import int32_or_none
from tests.unit import dicom_builders as b

PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def pydicom_json(path: Path) -> dict[str, Any]:
    """What pydicom makes of the whole file, bulk elements marked the way we mark them (Pixel Data always)."""
    ds = dcmread(path)
    out = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda elem: "BULK")
    out["7FE00010"] = {"vr": str(out["7FE00010"]["vr"]), "BulkDataURI": "BULK"}
    return out


def strip_bulk(node: Any) -> Any:
    """Replace every BulkDataURI with a marker so two JSON trees compare on values only."""
    if isinstance(node, dict):
        if "BulkDataURI" in node:
            return {"vr": node["vr"], "BulkDataURI": "BULK"}
        return {k: strip_bulk(v) for k, v in node.items()}
    if isinstance(node, list):
        return [strip_bulk(v) for v in node]
    return node


@pytest.mark.parametrize("ts", [b.ExplicitVRLittleEndian, b.ImplicitVRLittleEndian])
def test_metadata_matches_pydicom_full_read(tmp_path: Path, ts: str) -> None:
    ds, _ = b.nested_dataset()
    ds.SmallestImagePixelValue = 3  # "US or SS": resolved from Pixel Representation, also in implicit VR
    path = b.write(ds, tmp_path / "n.dcm", ts)
    metadata = index_file(path).metadata
    expected = strip_bulk(pydicom_json(path))
    assert strip_bulk(metadata) == expected
    assert metadata["00280106"] == {"vr": "US", "Value": [3]}


def test_bulkdata_uris_match_bulk_ranges(tmp_path: Path) -> None:
    ds, expected = b.nested_dataset()
    path = b.write(ds, tmp_path / "n.dcm")
    indexed = index_file(path)
    md = indexed.metadata
    assert md["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulkdata/7FE00010"}
    assert md["FFFCFFFC"] == {"vr": "OB", "BulkDataURI": "bulkdata/FFFCFFFC"}
    assert md["04000500"]["Value"][1]["04000520"] == {
        "vr": "OB",
        "BulkDataURI": "bulkdata/04000500/1/04000520",
    }
    inner = md["00400275"]["Value"][0]["04000500"]["Value"][0]["04000520"]
    assert inner["BulkDataURI"] == "bulkdata/00400275/0/04000500/0/04000520"
    uris = set()
    text = metadata_text(md)
    for chunk in text.split('"BulkDataURI":"')[1:]:
        uris.add(chunk.split('"')[0])
    assert uris == {f"bulkdata/{p}" for p in expected} == {f"bulkdata/{r.path}" for r in indexed.bulkdata}
    assert "InlineBinary" not in json.dumps(md["FFFCFFFC"])


def test_no_file_meta_and_person_names(tmp_path: Path) -> None:
    path, _ = _native(tmp_path)
    md = index_file(path).metadata
    assert not any(k.startswith("0002") for k in md)
    assert md["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}
    assert md["00200013"] == {"vr": "IS", "Value": [7]}


def test_a_name_list_with_an_empty_name_keeps_every_name(tmp_path: Path) -> None:
    """pydicom cannot write "A^B\\\\C" (an empty name among several) as JSON: the element was dropped from the
    metadata. Each name comes back, the empty one as null (PS3.18 F.2.5)."""
    names = "Doe^Jane\\\\Roe^Jo=ロー^ジョー"
    path = b.write(b.base(SpecificCharacterSet="ISO_IR 192", OtherPatientNames=names), tmp_path / "names.dcm")
    md = index_file(path).metadata
    assert md["00101001"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Doe^Jane"}, None, {"Alphabetic": "Roe^Jo", "Ideographic": "ロー^ジョー"}],
    }


def test_numbers_with_an_empty_value_keep_every_value(tmp_path: Path) -> None:
    """pydicom's JSON writer fails on "1\\\\0.5" in a DS or IS (an empty value among several): the element was
    dropped from the metadata. The values come back as numbers, the empty one as null (PS3.18 F.2.5)."""
    ds = b.base()
    ds.add_new(0x00200037, "DS", "1\\\\0.5\\0\\0\\1")  # ImageOrientationPatient with its second value empty
    ds.add_new(0x00201041, "IS", "4\\\\6")  # an IS list with an empty value
    md = index_file(b.write(ds, tmp_path / "numbers.dcm")).metadata
    assert md["00200037"] == {"vr": "DS", "Value": [1.0, None, 0.5, 0.0, 0.0, 1.0]}
    assert md["00201041"] == {"vr": "IS", "Value": [4, None, 6]}


def test_a_64_bit_value_beyond_a_double_is_a_string(tmp_path: Path) -> None:
    """PS3.18 Table F.2.3-1 allows a String for SV and UV; one beyond 2**53 - 1 is written as one (a JavaScript
    reader of the number lost its last digits), and one a double holds stays a number."""
    ds = b.base()
    ds.add_new(0x00720082, "SV", [-(2**63), -(2**53 - 1), 5, 2**53])
    ds.add_new(0x00720083, "UV", [2**64 - 1, 2**53 - 1])
    md = index_file(b.write(ds, tmp_path / "sv.dcm")).metadata
    assert md["00720082"] == {"vr": "SV", "Value": ["-9223372036854775808", -(2**53 - 1), 5, "9007199254740992"]}
    assert md["00720083"] == {"vr": "UV", "Value": ["18446744073709551615", 2**53 - 1]}


def test_an_empty_value_among_several_strings_is_null(tmp_path: Path) -> None:
    """PS3.18 F.2.5: "If a multi-valued attribute has one or more empty values these are represented as null array
    elements". pydicom writes them as "" (a CS, a UI, a DA); a lone empty value is still an element with no Value."""
    ds = b.base()
    ds.ImageType = "ORIGINAL\\\\AXIAL"
    ds.add_new(0x00081150, "UI", "1.2.3\\\\1.2.4")  # ReferencedSOPClassUID
    ds.add_new(0x00181012, "DA", "\\20200101")  # DateOfSecondaryCapture, first value empty
    ds.add_new(0x00081030, "LO", "")  # StudyDescription, empty
    md = index_file(b.write(ds, tmp_path / "strings.dcm")).metadata
    assert md["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}
    assert md["00081150"] == {"vr": "UI", "Value": ["1.2.3", None, "1.2.4"]}
    assert md["00181012"] == {"vr": "DA", "Value": [None, "20200101"]}
    assert md["00081030"] == {"vr": "LO"}


def _native(tmp_path: Path) -> tuple[Path, bytes]:
    ds = b.image(b.base(), 2, 2, 16, 1)
    ds.PixelData = b"\x01\x02" * 4
    return b.write(ds, tmp_path / "n.dcm"), ds.PixelData


def test_metadata_is_deterministic(tmp_path: Path) -> None:
    ds, _ = b.nested_dataset()
    first = b.write(ds, tmp_path / "a.dcm")
    text = metadata_text(index_file(first).metadata)
    assert metadata_text(index_file(first).metadata) == text
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_undecodable_value_is_dropped_without_logging_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = b.write(b.base(InstanceNumber=77777), tmp_path / "ok.dcm")
    data = path.read_bytes()
    assert data.count(b"77777 ") == 1
    path.write_bytes(data.replace(b"77777 ", b"SECRT "))  # an IS value that cannot be a number
    with caplog.at_level(logging.DEBUG):
        indexed = index_file(path)
    assert "00200013" not in indexed.metadata
    assert indexed.instance_number is None
    assert "SECRT" not in caplog.text
    assert "00200013" in caplog.text


def test_rebase_text_and_dict_agree(tmp_path: Path) -> None:
    ds, _ = b.nested_dataset()
    ds.StudyDescription = 'tricky "BulkDataURI":"bulkdata/ text'
    md = index_file(b.write(ds, tmp_path / "n.dcm")).metadata
    text = metadata_text(md)
    rebased = rebase_bulkdata_text(text, "instances/1.2.3/")
    assert json.loads(rebased) == rebase_bulkdata_uris(md, "instances/1.2.3/")
    assert json.loads(rebased)["00081030"]["Value"] == ['tricky "BulkDataURI":"bulkdata/ text']
    assert json.loads(rebased)["7FE00010"]["BulkDataURI"] == "instances/1.2.3/bulkdata/7FE00010"
    assert md["7FE00010"]["BulkDataURI"] == "bulkdata/7FE00010"  # the dict variant copies
    assert json.loads(join_metadata([rebased, rebased])) == [json.loads(rebased)] * 2
    for bad in ['x"', "a\\b", "a b"]:
        with pytest.raises(ValueError):
            rebase_bulkdata_text(text, bad)


def test_qido_attributes(tmp_path: Path) -> None:
    ds, _ = b.nested_dataset()
    ds.BodyPartExamined = "CHEST"
    request = ds.RequestAttributesSequence[0]
    request.ReasonForTheRequestedProcedure = "not for QIDO"
    indexed = index_file(b.write(ds, tmp_path / "n.dcm"))
    study, series, instance = indexed.study_attrs, indexed.series_attrs, indexed.instance_attrs
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}
    assert study["0020000D"]["Value"] == [b.STUDY]
    assert set(study) == {
        "00080005", "00080020", "00080030", "00080050", "00080090", "00081030", "00100010", "00100020",
        "00100030", "00100040", "0020000D", "00200010",
    }  # fmt: skip
    assert series["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert series["00180015"] == {"vr": "CS", "Value": ["CHEST"]}
    assert series["00200011"] == {"vr": "IS", "Value": [3]}
    assert series["00400275"] == {
        "vr": "SQ",
        "Value": [{"00400009": {"vr": "SH", "Value": ["SPS1"]}, "00401001": {"vr": "SH", "Value": ["RP1"]}}],
    }
    assert instance["00083002"] == {"vr": "UI", "Value": [b.ExplicitVRLittleEndian]}
    assert instance["00280008"] == {"vr": "IS", "Value": [1]}
    assert instance["00280010"] == {"vr": "US", "Value": [4]}
    assert instance["00080016"]["Value"] == [b.CT_IMAGE]
    assert "00100010" not in instance and "00100010" not in series


def test_searchable(tmp_path: Path) -> None:
    ds = b.base(PatientName="Doe^Jane=ドウ^ジェーン", SpecificCharacterSet=["ISO_IR 100", "ISO 2022 IR 87"])
    seq_item = Dataset()
    seq_item.CodeValue = "x"
    ds.ProcedureCodeSequence = Sequence([seq_item])
    indexed = index_file(b.write(ds, tmp_path / "s.dcm"))
    s = indexed.searchable
    assert set(s) == set(SEARCHABLE_KEYS)
    assert s["patient_name"] == "Doe^Jane"
    assert s["patient_id"] == "PID-7"
    assert s["study_date"] == "20240131"
    assert s["modality"] == "CT"
    assert s["series_number"] == 3
    assert s["instance_number"] == 7
    assert s["number_of_frames"] is None
    assert s["body_part_examined"] is None
    assert s["study_uid"] == b.STUDY
    assert indexed.metadata["00100010"]["Value"] == [
        {"Alphabetic": "Doe^Jane", "Ideographic": "ドウ^ジェーン"}
    ]
    assert indexed.number_of_frames == 0 and indexed.frame_index is None


# --- values converted once per process (metadata._ValueMemo) ------------------------------------------------------


@pytest.fixture
def empty_memo() -> Iterator[None]:
    metadata_module._memo.entries.clear()
    yield
    metadata_module._memo.entries.clear()


def test_pydicom_test_files_give_the_same_metadata_with_the_memo_full(empty_memo: None) -> None:
    """Every file of pydicom's own test data (other toolkits' files: many character sets, both byte orders,
    implicit VR, private elements) gives the same metadata whether the memo starts empty or holds what all the
    others left in it."""
    files = sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file())
    fresh: dict[Path, str] = {}
    for path in files:
        metadata_module._memo.entries.clear()
        try:
            fresh[path] = metadata_text(index_file(path).metadata)
        except DicomError:
            continue
    assert len(fresh) > 50
    for _ in range(2):  # the second pass meets every value the first one stored
        for path, text in fresh.items():
            assert metadata_text(index_file(path).metadata) == text, path.name
    assert metadata_module._memo.entries


def test_the_same_bytes_under_another_character_set_are_decoded_again(tmp_path: Path, empty_memo: None) -> None:
    utf8 = b.write(b.base(SpecificCharacterSet="ISO_IR 192"), tmp_path / "utf8.dcm")
    data = utf8.read_bytes()
    assert data.count(b"ISO_IR 192") == 1
    latin1 = tmp_path / "latin1.dcm"
    latin1.write_bytes(data.replace(b"ISO_IR 192", b"ISO_IR 100"))  # the name's bytes unchanged
    assert index_file(utf8).metadata["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}
    assert index_file(latin1).metadata["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "MÃ¼ller^JÃ¼rgen"}],
    }


@pytest.mark.parametrize(
    ("charset", "prefix"),
    [
        ("ISO_IR 203", b""),
        # with code extensions: the default repertoire first, Latin-9 designated to G1 by ESC 02/13 06/02
        ("ISO 2022 IR 6\\ISO 2022 IR 203", b"\x1b-b"),
    ],
)
def test_latin_alphabet_9_is_decoded_as_latin_9_fixed(
    tmp_path: Path, charset: str, prefix: bytes, empty_memo: None
) -> None:
    """ISO_IR 203 (PS3.3 Table C.12-2: ISO 8859-15, with the euro sign and Š, Ž, Œ) was unknown to pydicom and
    decoded as the default repertoire: Š (0xA6) became ¦, € (0xA4) ¤. The bytes are written as a modality in
    that character set writes them (pydicom would encode a str itself)."""
    name, description = "Šimková^Žofie", "Œsophage, coût 50 €"
    # each name component designates Latin-9 again: the default is active again at a "^" (PS3.5 6.1.2.5.3)
    encoded = [b"^".join(prefix + part.encode("iso8859_15") for part in t.split("^")) for t in (name, description)]
    written = {letter * len(value): value for letter, value in zip("QZ", encoded, strict=True)}
    placeholders = list(written)
    ds = b.base(SpecificCharacterSet=charset.split("\\"), PatientName=placeholders[0], StudyDescription=placeholders[1])
    path = b.write(ds, tmp_path / "latin9.dcm")
    data = path.read_bytes()
    for placeholder, encoded in written.items():
        assert data.count(placeholder.encode("ascii")) == 1
        data = data.replace(placeholder.encode("ascii"), encoded)
    path.write_bytes(data)
    metadata = index_file(path).metadata
    assert metadata["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": name}]}
    assert metadata["00081030"] == {"vr": "LO", "Value": [description]}


@pytest.mark.parametrize("ts", [b.ExplicitVRLittleEndian, b.ImplicitVRLittleEndian])
def test_a_value_read_through_pixel_representation_is_not_shared(
    tmp_path: Path, ts: str, empty_memo: None
) -> None:
    """(0028,0106) is "US or SS": in implicit VR the same two bytes are 65535 or -1 by Pixel Representation."""
    unsigned = b.image(b.base(), 2, 2, 16, 1)
    unsigned.SmallestImagePixelValue = 0xFFFF
    signed = b.image(b.base(), 2, 2, 16, 1)
    signed.PixelRepresentation = 1
    signed.SmallestImagePixelValue = -1
    for ds in (unsigned, signed):
        ds.PixelData = b"\x00" * 8
    first = b.write(unsigned, tmp_path / "u.dcm", ts)
    second = b.write(signed, tmp_path / "s.dcm", ts)
    assert index_file(first).metadata["00280106"] == {"vr": "US", "Value": [65535]}
    assert index_file(second).metadata["00280106"] == {"vr": "SS", "Value": [-1]}
    assert index_file(first).metadata["00280106"] == {"vr": "US", "Value": [65535]}


def test_the_memo_stays_bounded(tmp_path: Path, empty_memo: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(valuememo.ValueMemo, "SIZE", 5)
    for number in range(12):
        path = b.write(b.base(InstanceNumber=number + 1, StudyID=f"S{number}"), tmp_path / f"{number}.dcm")
        assert index_file(path).metadata["00200013"] == {"vr": "IS", "Value": [number + 1]}
        assert len(metadata_module._memo.entries) <= 5


def _pydicom_text(ds: Dataset, keyword: str) -> str | None:
    """A catalog column's value as pydicom reads the element: its first value as text (PN: alphabetic)."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - undecodable: not searchable
        return None
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
    if value is None:
        return None
    text = str(value.alphabetic) if hasattr(value, "alphabetic") else str(value)
    if hasattr(value, "alphabetic") and not text.strip("^ "):
        return None  # delimiters only ("^^^^"): no name component, an empty name (PS3.5 6.2)
    return text.strip() or None


def test_searchable_values_are_what_pydicom_reads_for_its_test_files() -> None:
    """The catalog's flat values come from the metadata JSON: for every file of pydicom's test data they are
    what pydicom itself reads from the elements."""
    compared = 0
    for path in sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file()):
        try:
            indexed, ds = read_instance(path)
        except DicomError:
            continue
        with quiet_validation():
            expected = {key: _pydicom_text(ds, keyword) for key, keyword in qido_attrs._TEXT_KEYS.items()}
            expected |= {
                key: int32_or_none(_pydicom_text(ds, keyword)) for key, keyword in qido_attrs._INT_KEYS.items()
            }
        for key in qido_attrs._TIME_KEYS:  # times are kept as the key QIDO compares (gateway.dicom.times)
            text = expected[key]
            expected[key] = time_key(text) if isinstance(text, str) else None
        for key in qido_attrs._DATE_KEYS & expected.keys():  # dates too (ExplVR_BigEnd.dcm's 1997.04.24)
            text = expected[key]
            expected[key] = date_key(text) if isinstance(text, str) else None
        assert indexed.searchable == expected, path.name
        compared += 1
    assert compared > 50


def test_stored_metadata_is_strict_json_even_for_a_ds_that_overflows(tmp_path: Path) -> None:
    """A DS of "1e999" is infinity to pydicom; the stored text must still parse with a strict parser (a browser's
    ``JSON.parse``): RFC 8259 has no Infinity, so the value is its text, as PS3.18 Table F.2.3-1 allows for a DS (it
    was null: the value lost)."""
    data = b.write(b.base(SliceThickness="12345"), tmp_path / "ok.dcm").read_bytes()
    assert data.count(b"12345 ") == 1
    path = tmp_path / "overflow.dcm"
    path.write_bytes(data.replace(b"12345 ", b"1e999 "))

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    indexed = index_file(path)
    stored = json.loads(indexed.metadata_json(), parse_constant=refuse)
    assert stored["00180050"] == {"vr": "DS", "Value": ["1e999"]}
    assert json.loads(indexed.attrs_json("instance"), parse_constant=refuse)
    assert stored["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}
    assert "Müller" in indexed.metadata_json()  # UTF-8 text, no \\u escapes


def test_a_character_set_written_out_of_order_still_keys_the_memo(tmp_path: Path, empty_memo: None) -> None:
    """pydicom keys a data set by tag, whatever the order of the file: a Specific Character Set written after the
    name it decodes still applies, and the memo must not hand out what the same bytes meant without it."""
    data = b.write(b.base(SpecificCharacterSet="ISO_IR 192"), tmp_path / "a.dcm").read_bytes()
    charset = struct.pack("<HH", 0x0008, 0x0005) + b"CS" + struct.pack("<H", 10) + b"ISO_IR 192"
    assert data.count(charset) == 1
    without = data.replace(charset, b"")
    name = without.index(struct.pack("<HH", 0x0010, 0x0010))
    after_name = name + 8 + struct.unpack_from("<H", without, name + 6)[0]
    (tmp_path / "none.dcm").write_bytes(without)  # the default character set: the bytes read as Latin-1
    (tmp_path / "late.dcm").write_bytes(without[:after_name] + charset + without[after_name:])
    assert index_file(tmp_path / "none.dcm").metadata["00100010"]["Value"] == [{"Alphabetic": "MÃ¼ller^JÃ¼rgen"}]
    assert str(dcmread(tmp_path / "late.dcm").PatientName) == "Müller^Jürgen"
    assert index_file(tmp_path / "late.dcm").metadata["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]


def test_a_tag_written_twice_is_refused_and_teaches_the_memo_nothing(tmp_path: Path, empty_memo: None) -> None:
    """A data set that names Patient's Name twice is one element to pydicom (the last) and another to DCMTK (the
    first): refused, before any value is converted. Its first bytes must not be remembered as meaning the second
    value either: the next upload with those bytes (any tenant's) would be given another patient's name."""
    data = b.write(b.base(PatientName="DOE^JOHN"), tmp_path / "plain.dcm").read_bytes()
    name = struct.pack("<HH", 0x0010, 0x0010) + b"PN" + struct.pack("<H", 8)
    assert data.count(name + b"DOE^JOHN") == 1
    (tmp_path / "twice.dcm").write_bytes(data.replace(name + b"DOE^JOHN", name + b"DOE^JOHN" + name + b"EVIL^EVE"))
    assert str(dcmread(tmp_path / "twice.dcm").PatientName) == "EVIL^EVE"
    with pytest.raises(DicomError, match=r"element \(0010,0010\) appears twice in one data set"):
        index_file(tmp_path / "twice.dcm")
    assert index_file(tmp_path / "plain.dcm").metadata["00100010"]["Value"] == [{"Alphabetic": "DOE^JOHN"}]
