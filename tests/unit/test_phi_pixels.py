"""Clean Pixel Data (issue 17): policy keys, masking, the codecs (native, RLE Lossless, JPEG Baseline), the
identifiers-only mode, and failing closed without Tesseract. OCR is the real Tesseract."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytesseract
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.hooks import UploadContext
from gateway.phi.hook import PhiHook, load_checked_policy
from gateway.phi.pixelclean import process
from gateway.phi.pixelfile import CannotClean
from gateway.phi.pixels import Band, Box, PixelOptions, check_ocr, identifier_terms, mask
from gateway.phi.policy import parse_policy
from gateway.tools.synth.burned import make_sc, make_us, planted, text_boxes

KEY = b"k" * 32


def policy(action: str = "clean", **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "destinations": {"main": {"storage": "default", "region": "eu", "identifiable_allowed": False}},
        "default": {"action": "deidentify", "destination": "main", "pixels": action},
        "deidentify": {"dates": "shift"},
        **extra,
    }


def holding_policy(action: str = "clean", **extra: Any) -> dict[str, Any]:
    """`policy` with a place that may hold a file for review: a held file may still show a name, so it is held
    only where identifiable data of the upload's region may be (docs/phi.md); uploads declare region "eu"."""
    parsed = policy(action, **extra)
    held = {"storage": "default", "region": "eu", "identifiable_allowed": True}
    return {**parsed, "destinations": {**parsed["destinations"], "held": held}}


EU_UPLOAD = UploadContext(source="stow", region="eu")


# -- policy -----------------------------------------------------------------------------------------------------


def test_pixels_defaults_to_refuse_and_needs_no_ocr() -> None:
    parsed = parse_policy({**policy(), "default": {"action": "deidentify", "destination": "main"}})
    assert parsed.default.pixels == "refuse" and parsed.default.pixels_match == "all"
    assert not parsed.needs_ocr


def test_pixels_table_and_bands() -> None:
    parsed = parse_policy(
        policy(
            "review",
            pixels={
                "margin": 6,
                "ocr_stride": 5,
                "bands": [{"modality": "US", "manufacturer": "Acme*", "top": 0, "height": 0.1}],
            },
        )
    )
    assert parsed.needs_ocr and parsed.default.pixels == "review"
    assert parsed.pixels.margin == 6 and parsed.pixels.ocr_stride == 5
    [band] = parsed.pixels.bands
    assert band.box(480, 640) == Box(0, 0, 640, 48, "band")  # 0.1 of the height, the full width


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"default": {"action": "deidentify", "destination": "main", "pixels": "blur"}}, "default.pixels"),
        ({"default": {"action": "deidentify", "destination": "main", "pixels_match": "x"}}, "default.pixels_match"),
        ({"default": {"action": "reject", "pixels": "clean"}}, "default.pixels"),
        ({"pixels": {"bands": [{"top": 0}]}}, "pixels.bands[0].height"),
        ({"pixels": {"bands": [{"height": 1.5}]}}, "pixels.bands[0].height"),
        ({"pixels": {"bands": [{"height": 10, "colour": "red"}]}}, "pixels.bands[0].colour"),
        ({"pixels": {"ocr_stride": 0}}, "pixels.ocr_stride"),
        ({"pixels": {"speed": 1}}, "pixels.speed"),
    ],
)
def test_pixel_policy_errors_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_policy({**policy(), **change})
    assert key in str(error.value)


def test_band_matches_modality_and_manufacturer() -> None:
    ds = pydicom.Dataset()
    ds.Modality, ds.Manufacturer = "US", "Acme Medical"
    assert Band(modality="US", manufacturer="Acme*", height=10).applies(ds)
    assert not Band(modality="US", manufacturer="Other*", height=10).applies(ds)
    assert Band(top=470, height=40, left=600, width=100).box(480, 640) == Box(600, 470, 40, 10, "band")


# -- masking ----------------------------------------------------------------------------------------------------


def test_mask_fills_only_the_boxes() -> None:
    frame = np.full((20, 30), 7, dtype=np.uint16)
    mask(frame, [Box(2, 3, 4, 5, "ocr")], "MONOCHROME2")
    assert (frame[3:8, 2:6] == 7).all()  # min of the frame is 7: "black" for an all-7 frame
    frame[0, 0] = 1
    mask(frame, [Box(2, 3, 4, 5, "ocr")], "MONOCHROME2")
    assert (frame[3:8, 2:6] == 1).all() and frame[10, 10] == 7
    inverted = np.zeros((20, 30), dtype=np.uint8)
    inverted[0, 0] = 200
    mask(inverted, [Box(0, 10, 30, 2, "band")], "MONOCHROME1")
    assert (inverted[10:12] == 200).all() and not inverted[12:].any()  # MONOCHROME1: black is the maximum


def _ocr(frame: np.ndarray) -> str:
    return "".join(c for c in pytesseract.image_to_string(Image.fromarray(frame)).upper() if c.isalnum())


def _expected_changes(rows: int, columns: int, slack: int = 12) -> np.ndarray:
    allowed = np.zeros((rows, columns), dtype=bool)
    for left, top, right, bottom in text_boxes(rows, columns):
        allowed[max(0, top - slack) : bottom + slack, max(0, left - slack) : right + slack] = True
    return allowed


def test_native_every_frame_masked_and_marked(tmp_path: Path) -> None:
    src = make_us(tmp_path / "in", frames=3, seed=5)
    out = tmp_path / "out.dcm"
    result = process(src, out, PixelOptions(), None, KEY)
    assert result.frames == 3 and result.ocr_frames == 3 and result.sop_uid
    before, after = pydicom.dcmread(src).pixel_array, pydicom.dcmread(out).pixel_array
    changed = (before != after).any(axis=0)
    assert changed.any() and not (changed & ~_expected_changes(480, 640)).any()
    strings = ["".join(c for c in s if c.isalnum()) for s in planted(5)]
    for frame in after:
        text = _ocr(frame)
        assert not [s for s in strings if s in text], text
    ds = pydicom.dcmread(out, stop_before_pixels=True)
    assert ds.BurnedInAnnotation == "NO" and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_ocr_stride_reads_fewer_frames_and_masks_all(tmp_path: Path) -> None:
    src = make_us(tmp_path / "in", frames=5, seed=5)
    result = process(src, tmp_path / "out.dcm", PixelOptions(ocr_stride=3), None, KEY)
    assert result.ocr_frames == 3  # frames 0, 3 and the last
    after = pydicom.dcmread(tmp_path / "out.dcm").pixel_array
    assert not (after[1, 10:30, 10:60]).any()  # a frame never read by OCR is masked with the boxes of others


def test_rle_stays_lossless(tmp_path: Path) -> None:
    native = make_us(tmp_path / "in", frames=2, seed=6)
    rle = tmp_path / "rle.dcm"
    ds = pydicom.dcmread(native)
    ds.compress(RLELossless)
    ds.save_as(rle)
    process(native, tmp_path / "native-out.dcm", PixelOptions(), None, KEY)
    process(rle, tmp_path / "rle-out.dcm", PixelOptions(), None, KEY)
    out = pydicom.dcmread(tmp_path / "rle-out.dcm")
    assert out.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(out.pixel_array, pydicom.dcmread(tmp_path / "native-out.dcm").pixel_array)


def test_jpeg_baseline_keeps_its_quantisation(tmp_path: Path) -> None:
    src = make_sc(tmp_path / "in", seed=7, jpeg=True)
    out = tmp_path / "out.dcm"
    process(src, out, PixelOptions(), None, KEY)
    cleaned = pydicom.dcmread(out)
    assert cleaned.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert cleaned.LossyImageCompression == "01"

    def tables(path: Path) -> Any:
        [frame] = generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1)
        with Image.open(io.BytesIO(frame)) as image:
            return image.quantization, image.layer

    assert tables(out) == tables(src)  # same quantisation tables and subsampling: the source's quality
    text = _ocr(np.asarray(cleaned.pixel_array))
    assert not [s for s in planted(7) if "".join(c for c in s if c.isalnum()) in text], text


def test_unsupported_encoding_cannot_be_cleaned(tmp_path: Path) -> None:
    src = make_sc(tmp_path / "in", seed=7, jpeg=True)
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless  # no encoder installed: must not be re-encoded lossy
    ds.save_as(src)
    with pytest.raises(CannotClean, match="JPEG 2000"):
        process(src, tmp_path / "out.dcm", PixelOptions(), None, KEY)


def test_identifiers_mode_masks_only_the_patients_values(tmp_path: Path) -> None:
    src = make_sc(tmp_path / "in", seed=8)
    terms = identifier_terms(pydicom.dcmread(src, stop_before_pixels=True))
    matched = process(src, None, PixelOptions(), terms, KEY).regions
    everything = process(src, None, PixelOptions(), None, KEY).regions
    assert 0 < len(matched) < len(everything)  # "ID", "DOB", "STUDY" labels are left alone
    other = identifier_terms(pydicom.dcmread(make_sc(tmp_path / "other", seed=2), stop_before_pixels=True))
    assert len(process(src, None, PixelOptions(), other - terms, KEY).regions) < len(matched)


# -- failing closed ----------------------------------------------------------------------------------------------


def test_missing_tesseract_stops_start_up_and_refuses_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(tmp_path / "no-tesseract"))
    with pytest.raises(ConfigError, match="tesseract-ocr"):
        check_ocr()
    path = tmp_path / "policy.toml"
    path.write_text(
        'version = 1\n[destinations.main]\nstorage = "default"\nregion = "eu"\nidentifiable_allowed = false\n'
        '[default]\naction = "deidentify"\ndestination = "main"\npixels = "clean"\n'
    )
    settings = Settings.from_mapping(
        {
            "SIGNING_KEYS": "s" * 32,
            "API_KEYS": "api",
            "STORAGE_URL": "file:///tmp/objects",
            "DATABASE_URL": "sqlite:///tmp/c.db",
            "PHI_POLICY": str(path),
            "DEID_KEY": "k" * 32,
        }
    )
    with pytest.raises(ConfigError, match="tesseract"):
        load_checked_policy(settings)
    # at run time (binary removed after start-up): the file is refused, never stored uncleaned
    hook = PhiHook(parse_policy(policy()), KEY, tmp_dir=tmp_path)
    outcome = hook(make_sc(tmp_path / "in", seed=9), UploadContext(source="stow"))
    assert outcome.action == "reject" and outcome.path is None
    assert "cannot clean the pixels" in outcome.reason
    assert not list(tmp_path.glob("deid-*"))


def test_an_encoding_that_cannot_be_re_encoded_goes_to_review(tmp_path: Path) -> None:
    src = make_sc(tmp_path / "in", seed=7, jpeg=True)
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.save_as(src)
    hook = PhiHook(parse_policy(holding_policy("clean")), KEY, tmp_dir=tmp_path)
    outcome = hook(src, EU_UPLOAD)
    assert outcome.action == "quarantine" and outcome.path is not None
    assert outcome.reason.startswith("pixels need review") and "JPEG 2000" in outcome.reason
    quarantined = pydicom.dcmread(outcome.path, stop_before_pixels=True)
    assert quarantined.PatientIdentityRemoved == "YES"  # what waits for review has a de-identified header


def test_identifiers_rule_through_the_hook(tmp_path: Path) -> None:
    parsed = parse_policy(
        {
            **policy(),
            "default": {
                "action": "deidentify",
                "destination": "main",
                "pixels": "clean",
                "pixels_match": "identifiers",
            },
        }
    )
    outcome = PhiHook(parsed, KEY, tmp_dir=tmp_path)(make_sc(tmp_path / "in", seed=8), UploadContext(source="stow"))
    assert outcome.action == "accept" and outcome.path is not None
    text = _ocr(np.asarray(pydicom.dcmread(outcome.path).pixel_array))
    assert not [s for s in planted(8) if "".join(c for c in s if c.isalnum()) in text], text
    assert "DOB" in text  # a label, not an identifier: left readable


def test_native_output_keeps_elements_after_pixel_data(tmp_path: Path) -> None:
    src = make_sc(tmp_path / "in", seed=9)
    ds = pydicom.dcmread(src)
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 6)  # Data Set Trailing Padding, written after Pixel Data
    ds.save_as(src)
    process(src, tmp_path / "out.dcm", PixelOptions(), None, KEY)
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out[0xFFFCFFFC].value == b"\0" * 6
    assert out.pixel_array.shape == (480, 640, 3) and not out.pixel_array[10:30, 10:60].any()


def test_the_preview_decodes_a_deflated_file_held_for_review(tmp_path: Path) -> None:
    """A deflated file cannot be de-identified, so a policy with `on_deidentify_failure = "quarantine"` holds it
    whole; its preview was a JSON 406. Each frame is now read from the inflated data set, the second one too."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from gateway.quarantine import _other_encoding

    source = make_us(tmp_path / "us", frames=2, rows=240, columns=320, seed=4)
    ds = pydicom.dcmread(source)
    expected = ds.pixel_array
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = tmp_path / "deflated.dcm"
    ds.save_as(deflated, enforce_file_format=True)
    for frame in (1, 2):
        decoded = _other_encoding(deflated, frame)
        assert decoded is not None
        pixels, photometric = decoded
        assert photometric == "MONOCHROME2"
        assert np.array_equal(pixels, expected[frame - 1])
    assert _other_encoding(source, 1) is None  # the cleaner's own reader answers for a native file


def _rle_32(frame: np.ndarray) -> bytes:
    """One 32-bit grey frame as PS3.5 Annex G writes it: four segments, a byte plane each (most significant first),
    each a run of literal packets of at most 128 bytes."""
    planes = [(frame.astype(">u4").view(np.uint8).reshape(-1, 4)[:, index]).tobytes() for index in range(4)]
    segments = [
        b"".join(bytes([len(plane[i : i + 128]) - 1]) + plane[i : i + 128] for i in range(0, len(plane), 128))
        for plane in planes
    ]
    segments = [segment + b"\0" * (len(segment) % 2) for segment in segments]
    offsets, at = [], 64
    for segment in segments:
        offsets.append(at)
        at += len(segment)
    return np.array([4, *offsets] + [0] * 11, "<u4").tobytes() + b"".join(segments)


def test_a_32_bit_rle_file_goes_to_review(tmp_path: Path) -> None:
    """pydicom's RLE encoder writes 8- and 16-bit samples only: a 32-bit RLE frame could be read for OCR but not
    written back, and the file was refused "cannot clean the pixels: ValueError" through `on_deidentify_failure`
    (here reject) instead of going to review, as an encoding that cannot be re-encoded honestly does whatever the
    rule says."""
    src = make_sc(tmp_path / "in", seed=10, color=False)
    ds = pydicom.dcmread(src)
    values = ds.pixel_array.astype(np.uint32) * 0x01010101
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = encapsulate([_rle_32(values)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(src)
    assert np.array_equal(pydicom.dcmread(src).pixel_array, values)  # a valid RLE file, as pydicom decodes it
    parsed = parse_policy({**holding_policy("clean"), "options": {"on_deidentify_failure": "reject"}})
    outcome = PhiHook(parsed, KEY, tmp_dir=tmp_path)(src, EU_UPLOAD)
    assert outcome.action == "quarantine" and outcome.path is not None
    assert outcome.reason == "pixels need review: 32-bit RLE frames cannot be re-encoded here"
    assert pydicom.dcmread(outcome.path, stop_before_pixels=True).PatientIdentityRemoved == "YES"


def test_identifiers_mode_matches_a_name_with_accents() -> None:
    """`pixels_match = "identifiers"` matched OCR words to the patient's names with every letter outside A-Z dropped:
    `Müller` was the term MLLER, which OCR's English model, reading the burned-in MÜLLER as MULLER (or MÜLLER),
    never matched, so the family name stayed readable in the stored pixels (and `Ødegård` as DEGRD, `Åse` as
    nothing). Accents now fold to their base letter on both sides."""
    from gateway.phi.pixels import _matches

    ds = pydicom.Dataset()
    ds.PatientName = "Müller^Hans"
    ds.OtherPatientNames = ["Ødegård^Åse", "Straße^Œdipe"]
    terms = identifier_terms(ds)
    assert {"MULLER", "HANS", "ODEGARD", "ASE", "STRASSE", "OEDIPE"} <= terms
    for read in ("MULLER", "MÜLLER", "Müller,", "ODEGARD", "@degard", "Ase", "STRASSE"):
        assert _matches(read, terms), read
    assert not _matches("MILLER", terms)


def test_a_monochrome1_jpeg_is_masked_black_as_displayed(tmp_path: Path) -> None:
    """Masked pixels become black as displayed: the maximum for MONOCHROME1 (docs/phi.md). The JPEG Baseline path
    filled 0 whatever the photometric interpretation, so a MONOCHROME1 JPEG (a CR, a scanned film) was masked white."""
    from gateway.phi.pixelfile import PixelFile

    src = make_sc(tmp_path / "in", seed=7, jpeg=True, color=False)
    ds = pydicom.dcmread(src)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(src)
    box = Box(left=64, top=64, width=64, height=32, source="band")
    PixelFile.open(src, max_frames=10).write_masked([box], tmp_path / "out.dcm")
    masked = pydicom.dcmread(tmp_path / "out.dcm").pixel_array[64:96, 64:128]
    assert masked.min() >= 250, masked.min()  # 255, but for JPEG's rounding


def test_the_preview_of_a_held_file_it_cannot_read_is_a_406(tmp_path: Path) -> None:
    """A held JPEG 2000 file whose Number of Frames promises more frames than its fragments hold: the preview of a
    frame it lacks is the JSON 406 "cannot render this file", never a 500 (its decode raised a ValueError)."""
    import shutil
    from types import SimpleNamespace

    from gateway.errors import NotAcceptable
    from gateway.quarantine import preview

    src = make_sc(tmp_path / "in", seed=7, jpeg=True)
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless  # held for its encoding; its one fragment is no J2K
    ds.NumberOfFrames = 3
    ds.save_as(src)
    services = SimpleNamespace(
        catalog=SimpleNamespace(get_quarantine=lambda key: {"report": {}}),
        storage=SimpleNamespace(download=lambda key, local: shutil.copyfile(src, local)),
        spool_dir=tmp_path,
    )
    with pytest.raises(NotAcceptable, match="cannot render this file"):
        preview(services, "quarantine/held.dcm", 2)  # type: ignore[arg-type]


def test_identifiers_mode_matches_a_birth_date_written_with_a_month_name_or_without_zeros(tmp_path: Path) -> None:
    """Session 27, h12: `pixels_match = "identifiers"` matched a burned-in date only as digits with leading zeros
    (19610205, 05.02.1961, 02/05/1961): the patient's birth date written `05-Feb-1961` or `5/2/1961`, as devices
    and screens write it, stayed readable in the stored pixels. Both forms, and the others of `date_terms`, are now
    the patient's; through the hook, with Tesseract reading the output."""
    from PIL import ImageDraw, ImageFont

    from gateway.phi.pixels import _matches, date_terms

    src = make_sc(tmp_path / "in", seed=8)
    ds = pydicom.dcmread(src)
    ds.PatientBirthDate = "19610205"
    frame = np.array(ds.pixel_array)
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    boxes = text_boxes(frame.shape[0], frame.shape[1])
    font = ImageFont.load_default(size=22)
    for (left, top, right, bottom), line in zip(boxes[2:], ("DOB 05-Feb-1961", "BORN 5/2/1961"), strict=True):
        draw.rectangle((left, top, right, bottom), fill=(0, 0, 0))
        draw.text((left, top + 2), line, fill=(255, 255, 255), font=font)
    ds.PixelData = np.asarray(image).tobytes()
    ds.save_as(src)
    before = _ocr(np.asarray(pydicom.dcmread(src).pixel_array))
    assert "05FEB1961" in before and "521961" in before, before  # the dates really are readable

    terms = frozenset(date_terms("19610205"))
    for read in ("05-Feb-1961", "5/2/1961", "2/5/1961", "1961-FEB-05", "Feb-5-1961", "05FEBRUARY1961", "05.02.1961"):
        assert _matches(read, terms), read
    assert not _matches("06-Feb-1961", terms) and not _matches("5/3/1961", terms)

    rule = {"action": "deidentify", "destination": "main", "pixels": "clean", "pixels_match": "identifiers"}
    parsed = parse_policy({**policy(), "default": rule})
    outcome = PhiHook(parsed, KEY, tmp_dir=tmp_path)(src, UploadContext(source="stow"))
    assert outcome.action == "accept" and outcome.path is not None
    text = _ocr(np.asarray(pydicom.dcmread(outcome.path).pixel_array))
    assert "05FEB1961" not in text and "521961" not in text, text
    assert "DOB" in text and "BORN" in text  # labels, not identifiers: left readable
