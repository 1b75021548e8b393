"""The bundled viewer with images nobody here wrote: pydicom's test files (other toolkits' encoders: dcmtk, GDCM,
CharLS, OpenJPEG...) stored through STOW-RS into the real stack and each opened from a signed viewer link in Chromium.

Each file in SHOWN must render as pydicom decodes it: the image area of a screenshot, downsampled to grey, correlates
with pydicom's frame 1 (coarse on purpose: Cornerstone's window and interpolation differ from pydicom's), with no
page error and no failed request but the gateway's documented 406 for a preview it cannot render. Each file in
UNSHOWABLE cannot be drawn right (the reason is listed with it) and must give the viewer's plain error screen, never
a black or wrong picture: Cornerstone 5.14 draws some of them wrongly without any error, so the viewer refuses those
from the instance's metadata and the frame bytes before Cornerstone decodes them (viewer/src/frames.js).

Big-endian and deflated files are in too: the gateway serves their frames converted (little-endian, inflated).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.data
import pytest
import requests
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_real_files import display_values
from tests.e2e.test_viewer import (  # noqa: F401 - browser is a fixture
    HIDE_OVERLAYS,
    NetworkLog,
    assert_not_blank,
    browser,
    open_page,
    settle,
    snap,
)

pytestmark = pytest.mark.browser

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"

# file -> the file pydicom decodes as its reference: itself, or the same pixels stored in a syntax pydicom decodes
# with its own plugins (JPEG-LS and lossless JPEG are decoded by the gateway's imagecodecs plugin, which
# test_real_files registers: a twin keeps the reference independent of it).
SHOWN: dict[str, str] = {
    "CT_small.dcm": "CT_small.dcm",  # signed 16-bit, rescale, the file's window
    "MR_small_RLE.dcm": "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm": "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm": "MR_small.dcm",
    "JPEG2000.dcm": "JPEG2000.dcm",  # lossy JPEG 2000, 16-bit signed
    "SC_rgb_jpeg_gdcm.dcm": "SC_rgb_rle.dcm",  # lossless JPEG (process 14), RGB
    "SC_rgb_jpeg_dcmtk.dcm": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "SC_rgb_dcmtk_+eb+cy+np.dcm": "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
    "SC_rgb_jls_lossy_line.dcm": "SC_rgb_rle.dcm",  # near-lossless JPEG-LS; no Modality (real secondary captures')
    "GDCMJ2K_TextGBR.dcm": "",  # no Modality, YBR_RCT; "" = pydicom cannot decode it here: not blank is checked
    "examples_jpeg2k.dcm": "examples_jpeg2k.dcm",  # JPEG 2000 lossless, YBR_RCT
    "examples_ybr_color.dcm": "examples_ybr_color.dcm",  # 30 JPEG frames, YBR_FULL_422
    "SC_rgb_rle_2frame.dcm": "SC_rgb_rle_2frame.dcm",
    "examples_rgb_color.dcm": "examples_rgb_color.dcm",
    "rtdose.dcm": "rtdose.dcm",  # 32-bit, 15 frames
    "ExplVR_LitEnd_planar.dcm": "ExplVR_BigEnd.dcm",  # RGB, planar configuration 1 (see LITTLE_ENDIAN_COPIES)
    "MR_small_bigendian.dcm": "MR_small_bigendian.dcm",  # big-endian: the gateway serves its frames little-endian
    "ExplVR_BigEnd.dcm": "ExplVR_BigEnd.dcm",  # big-endian RGB, planar configuration 1
    "image_dfl.dcm": "image_dfl.dcm",  # deflated data set: the gateway inflates it
    # native YBR_FULL_422 (Cornerstone expects 1.5 bytes a pixel and drew a black stage): the viewer converts it
    "SC_ybr_full_422_uncompressed.dcm": "SC_ybr_full_422_uncompressed.dcm",
}
# RGB with planar configuration 1 ships in pydicom only as big-endian (shown above, converted): the same dataset,
# written little-endian by pydicom (8-bit OB pixels: the same bytes), under its own name.
LITTLE_ENDIAN_COPIES = {"ExplVR_LitEnd_planar.dcm": "ExplVR_BigEnd.dcm"}
UNSHOWABLE: dict[str, str] = {
    "SC_rgb_rle_32bit.dcm": "32-bit RLE: Cornerstone's RLE decoder takes 8 and 16 bits only",
    "liver_1frame.dcm": "Bits Allocated 1: the gateway serves its frame (packed from a byte boundary), but Cornerstone "
    "draws it black without an error, so the viewer refuses 1-bit pixels from the metadata",
    "SC_rgb_rle_16bit.dcm": "16-bit colour: Cornerstone draws it as if it were 8-bit (white bands), so the viewer "
    "refuses colour of more than 8 bits from the metadata",
    "JPEG2000-embedded-sequence-delimiter.dcm": "an undecodable codestream (pydicom's test of parsing around it; "
    "its SIZ says 3,722,445,056 columns): OpenJPEG fails in the worker, yet Cornerstone reported it loaded and drew "
    "it black, so the viewer refuses a codestream whose size is not the image's",
}
# An RGB JPEG baseline without an Adobe marker, nearly uniform white (pydicom: (244, 244, 244) on average): too flat
# to correlate, so its colour is compared. Decoded as YCbCr it was magenta; the viewer adds an Adobe marker saying RGB.
NO_ADOBE_MARKER = "SC_jpeg_no_color_transform.dcm"
# The placeholder preview and the series thumbnail are the gateway's rendering: a JSON 406 where the gateway's
# decoders cannot read the file (README, Rendered), which the viewer outlives.
PREVIEWS = ("/rendered", "/thumbnail")
# PALETTE COLOR, its LUTs 256 16-bit entries (512 bytes): InlineBinary in the metadata at the default bulk data
# threshold, BulkDataURIs at this stack's lower one; the image loader takes neither, the viewer resolves both.
PALETTE = "examples_palette.dcm"
LOW_THRESHOLD = "256"


def fresh_copy(name: str, folder: Path) -> Path:
    """The file with its own study, series and instance UIDs: pydicom's files share them (derived images), while a
    patient's upload is one study each; the pixels and their encoding are untouched."""
    ds = pydicom.dcmread(TEST_FILES / LITTLE_ENDIAN_COPIES.get(name, name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / name
    if name in LITTLE_ENDIAN_COPIES:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True)
    else:
        ds.save_as(path, enforce_file_format=False)
    return path


def stack_with(folder: Path, names: list[str], **env: str) -> RunningStack:
    running = start_stack(folder / "stack", "file", None, **env)
    try:
        files = [fresh_copy(name, folder) for name in names]
        answer = running.stow(files)
        assert answer.status_code == 200, answer.text
    except BaseException:
        running.stack.stop()
        raise
    running.uploaded = {path.name: path for path in files}
    return running


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    names = [*SHOWN, *UNSHOWABLE, NO_ADOBE_MARKER, PALETTE]
    running = stack_with(tmp_path_factory.mktemp("viewer-real"), names, DICOMGW_BULKDATA_THRESHOLD=LOW_THRESHOLD)
    try:
        yield running
    finally:
        running.stack.stop()


def study_of(running: RunningStack, name: str) -> pydicom.Dataset:
    return pydicom.dcmread(running.uploaded[name], stop_before_pixels=True)


def open_file(
    running: RunningStack, chromium: Any, name: str, *, error: bool = False
) -> tuple[Any, NetworkLog, list[tuple[int, str]]]:
    """Open the file's study from a signed link; wait for the first image and the prefetch, or the error screen."""
    study = str(study_of(running, name).StudyInstanceUID)
    issued = running.issue([study], ttl=600)
    log = NetworkLog()
    page = open_page(chromium, log, viewport={"width": 600, "height": 500})
    failed: list[tuple[int, str]] = []
    page.on("response", lambda r: r.status >= 400 and failed.append((r.status, r.url.split("?")[0])))
    page.goto(issued["viewer_url"])
    if error:
        page.wait_for_selector("#error:not([hidden])")
    else:
        page.wait_for_function(
            "() => !document.getElementById('error').hidden || (document.getElementById('viewport').dataset.state"
            " === 'ready' && document.getElementById('progress').hidden)"
        )
    settle(page)
    return page, log, failed


def image_area(page: Any, rows: int, columns: int, mode: str = "L") -> np.ndarray:
    """The part of the stage the image fills (Cornerstone fits it whole, centred), as grey levels (or `mode`)."""
    style = page.add_style_tag(content=HIDE_OVERLAYS)
    settle(page)
    shot = Image.open(io.BytesIO(page.locator("#viewport").screenshot())).convert(mode)
    style.evaluate("node => node.remove()")
    scale = min(shot.width / columns, shot.height / rows)
    w, h = columns * scale, rows * scale
    left, top = (shot.width - w) / 2, (shot.height - h) / 2
    return np.asarray(shot.crop((round(left), round(top), round(left + w), round(top + h))), dtype=np.float64)


def coarse(values: np.ndarray) -> np.ndarray:
    grey = values @ [0.299, 0.587, 0.114] if values.ndim == 3 else values
    return np.asarray(Image.fromarray(grey.astype(np.float32)).resize((32, 32), Image.BILINEAR), dtype=np.float64)


def assert_shows(running: RunningStack, chromium: Any, name: str, reference: str) -> None:
    page, log, failed = open_file(running, chromium, name)
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    assert page.inner_text("#status") == ""  # not "Some images could not be loaded."
    ds = study_of(running, name)
    shown = image_area(page, int(ds.Rows), int(ds.Columns))
    assert shown.std() > 5, f"{name}: the image area is blank"
    if reference:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            expected = coarse(display_values(pydicom.dcmread(TEST_FILES / reference)))
        correlation = float(np.corrcoef(coarse(shown).ravel(), expected.ravel())[0, 1])
        assert correlation > 0.9, f"{name}: the picture does not follow pydicom's ({correlation:.2f})"
    # The viewer's own requests all succeed; only the gateway's preview of a file its decoders cannot read may not.
    assert [(s, url) for s, url in failed if not (s == 406 and url.endswith(PREVIEWS))] == []
    if reference in (name, LITTLE_ENDIAN_COPIES.get(name)):
        assert failed == []
    assert [m for m in log.console if m.startswith("pageerror") or "Content Security Policy" in m] == []
    page.context.close()


@pytest.mark.parametrize("name", list(SHOWN))
def test_real_file_renders_as_pydicom_decodes_it(
    real_stack: RunningStack, browser: Any, name: str  # noqa: F811 - the fixture from test_viewer
) -> None:
    assert_shows(real_stack, browser, name, SHOWN[name])


def test_rgb_jpeg_without_adobe_marker_keeps_its_colours(real_stack: RunningStack, browser: Any) -> None:  # noqa: F811
    page, log, failed = open_file(real_stack, browser, NO_ADOBE_MARKER)
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    assert page.inner_text("#status") == ""
    ds = study_of(real_stack, NO_ADOBE_MARKER)
    shown = image_area(page, int(ds.Rows), int(ds.Columns), "RGB").reshape(-1, 3).mean(axis=0)
    expected = pydicom.dcmread(TEST_FILES / NO_ADOBE_MARKER).pixel_array.reshape(-1, 3).mean(axis=0)
    assert np.abs(shown - expected).max() < 4, f"shown {shown.round()}, pydicom {expected.round()}"
    assert failed == []
    assert [m for m in log.console if m.startswith("pageerror") or "Content Security Policy" in m] == []
    page.context.close()


@pytest.mark.parametrize("name", list(UNSHOWABLE))
def test_real_file_the_browser_cannot_show_gets_the_error_screen(
    real_stack: RunningStack, browser: Any, name: str  # noqa: F811
) -> None:
    page, _, _ = open_file(real_stack, browser, name, error=True)
    assert page.locator("#error").is_visible(), f"{name} ({UNSHOWABLE[name]}): no error screen"
    assert page.get_attribute("#error", "data-kind") == "unsupported"
    assert "cannot be shown" in page.inner_text("#error-title")
    assert page.locator("#app").is_hidden()
    page.context.close()


def palette_lut(running: RunningStack) -> dict[str, Any]:
    ds = study_of(running, PALETTE)
    url = f"{running.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"
    answer = requests.get(url, headers={**running.api_headers, "Accept": "application/dicom+json"}, timeout=30)
    assert answer.status_code == 200
    element: dict[str, Any] = answer.json()[0]["00281201"]
    return element


def test_palette_lookup_tables_from_bulkdata(real_stack: RunningStack, browser: Any) -> None:  # noqa: F811
    """The palette's LUTs as BulkDataURIs: the viewer fetches them (one CORS-simple GET each) before the image."""
    assert set(palette_lut(real_stack)) == {"vr", "BulkDataURI"}
    assert_shows(real_stack, browser, PALETTE, PALETTE)


def test_palette_with_inline_lookup_tables(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    """At the default bulk data threshold the palette's LUTs arrive inline (InlineBinary) in the metadata."""
    running = stack_with(tmp_path, [PALETTE])
    try:
        assert set(palette_lut(running)) == {"vr", "InlineBinary"}
        assert_shows(running, browser, PALETTE, PALETTE)
    finally:
        running.stack.stop()


# Window Center and Width as files carry them and the viewer cannot use them as they are (center bytes, width bytes),
# and the pair it must use instead: None, none (the image's own range, as for CT_small.dcm, which has no window).
# The gateway's metadata holds an empty value as null and a DS beyond a double as null too; the image loader read
# both with parseFloat (NaN: a red stage, "W NaN  L NaN"), and took a width under 1 as it was (a thresholded or
# inverted picture): PS3.3 C.11.2.1.2.1 has the width at least 1.
UNUSABLE_WINDOWS: dict[str, tuple[bytes, bytes, tuple[int, int] | None]] = {
    "first_value_empty": (b"\\40", b"\\400", (40, 400)),  # the second pair is the one to use
    "width_0": (b"40", b"0", None),
    "width_negative": (b"40", b"-400", None),
    "beyond_a_double": (b"1e400", b"1e400", None),
    "not_a_number": (b"NaN", b"NaN", None),
    "center_without_width": (b"40", b"", None),
}


def with_window(folder: Path, name: str, center: bytes, width: bytes) -> Path:
    """CT_small.dcm in a study of its own with these Window Center and Width bytes, written as they are."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for number, value in ((0x00281050, center), (0x00281051, width)):
        value += b" " * (len(value) % 2)
        ds[number] = RawDataElement(Tag(number), "DS", len(value), value, 0, False, True)
    path = folder / f"window_{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def window_overlay(page: Any) -> str:
    return str(page.inner_text("#overlay-br")).splitlines()[-1]


def test_a_window_the_viewer_cannot_use_is_not_drawn(
    real_stack: RunningStack, browser: Any, tmp_path: Path  # noqa: F811
) -> None:
    """A file's window with an empty value, a width under 1 or a value beyond a double: the viewer uses the first
    usable pair, else the image's own range, and the picture is the CT as pydicom shows it with that window (a red
    stage, or a black and white threshold, before)."""
    files = {name: with_window(tmp_path, name, c, w) for name, (c, w, _) in UNUSABLE_WINDOWS.items()}
    reference = tmp_path / "window_40_400.dcm"
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(reference, enforce_file_format=True)
    answer = real_stack.stow([*files.values(), reference])
    assert answer.status_code == 200, answer.text
    real_stack.uploaded.update({path.name: path for path in [*files.values(), reference]})

    def shown(name: str) -> tuple[str, np.ndarray]:
        page, log, failed = open_file(real_stack, browser, name)
        assert page.locator("#error").is_hidden(), page.inner_text("#error")
        overlay, picture = window_overlay(page), image_area(page, 128, 128, "RGB")
        assert failed == []
        assert [m for m in log.console if m.startswith("pageerror")] == []
        page.context.close()
        return overlay, picture

    overlays = {"none": shown("CT_small.dcm")[0], "40/400": shown(reference.name)[0]}
    assert overlays == {"none": "W 2063  L 136", "40/400": "W 399  L 40"}
    for name, (_, _, used) in UNUSABLE_WINDOWS.items():
        overlay, picture = shown(files[name].name)
        assert overlay == overlays["40/400" if used else "none"], name
        # grey, not the red of a NaN window
        assert np.abs(picture[..., 0] - picture[..., 1]).max() < 2, name
        expected = coarse(display_values(pydicom.dcmread(reference if used else TEST_FILES / "CT_small.dcm")))
        correlation = float(np.corrcoef(coarse(picture).ravel(), expected.ravel())[0, 1])
        assert correlation > 0.9, f"{name}: the picture does not follow pydicom's ({correlation:.2f})"



def document_series(study: str, sop_class: str, modality: str, number: int, **values: Any) -> pydicom.Dataset:
    """An instance without pixel data in a series of its own, of the patient of pydicom's CT_small.dcm."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, number, 1
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_a_study_with_a_report_a_pdf_and_key_objects_beside_its_images_opens_the_images(
    real_stack: RunningStack, browser: Any, tmp_path: Path  # noqa: F811
) -> None:
    """A structured report (series 1), an encapsulated PDF (2) and a key object selection (3) beside a CT (4): the
    viewer opens the CT, asks for no frame of the others, and their buttons say they hold no images (it opened the
    report and showed "These images cannot be shown here" over the whole page, the CT out of reach). A study of a
    report alone says it has no images to show."""
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    patient = {"PatientName": ct.PatientName, "PatientID": ct.PatientID}
    study, ct_series = generate_uid(), generate_uid()
    report = pydicom.dcmread(TEST_FILES / "test-SR.dcm")
    report.StudyInstanceUID, report.SeriesInstanceUID, report.SeriesNumber = study, generate_uid(), 1
    report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("PatientBirthDate", "PatientSex"):
        report.pop(keyword, None)
    report.update(patient)
    pdf = document_series(study, "1.2.840.10008.5.1.4.1.1.104.1", "DOC", 2, SeriesDescription="Report PDF",
                          MIMETypeOfEncapsulatedDocument="application/pdf", EncapsulatedDocument=b"%PDF-1.4\n%%EOF\n",
                          **patient)
    key_objects = document_series(study, "1.2.840.10008.5.1.4.1.1.88.59", "KO", 3, **patient)
    datasets = [report, pdf, key_objects]
    for number in range(3):
        image = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
        image.StudyInstanceUID, image.SeriesInstanceUID = study, ct_series
        image.SOPInstanceUID = image.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        image.SeriesNumber, image.InstanceNumber, image.SeriesDescription = 4, number + 1, "CT axial"
        datasets.append(image)
    alone = pydicom.dcmread(TEST_FILES / "test-SR.dcm")
    alone.StudyInstanceUID, alone.SeriesInstanceUID = generate_uid(), generate_uid()
    alone.SOPInstanceUID = alone.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    paths = []
    for number, ds in enumerate([*datasets, alone]):
        paths.append(tmp_path / f"mixed_{number}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    answer = real_stack.stow(paths)
    assert answer.status_code == 200, answer.text
    real_stack.uploaded.update({"mixed.dcm": paths[-2], "report_alone.dcm": paths[-1]})

    page, log, failed = open_file(real_stack, browser, "mixed.dcm")
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    assert page.get_attribute("#viewport", "data-series") == ct_series
    assert page.get_attribute("#viewport", "data-count") == "3"
    assert page.inner_text("#overlay-tl") == "CT CT axial"
    assert_not_blank(snap(page, "mixed-study"))
    buttons = page.locator("#series button")
    assert [buttons.nth(i).inner_text() for i in range(4)] == [
        "SR Demonstration of SR Features · 1 · no images",
        "DOC Report PDF · 1 · no images",
        "KO · 1 · no images",
        "CT CT axial · 3",
    ]
    assert [buttons.nth(i).is_disabled() for i in range(4)] == [True, True, True, False]
    assert buttons.nth(3).get_attribute("aria-current") == "true"
    others = {str(ds.SeriesInstanceUID) for ds in datasets[:3]}
    assert [r.url for r in log.requests if "/frames/" in r.url and any(uid in r.url for uid in others)] == []
    # only the thumbnails of the series without images, which the gateway cannot render (its documented 406)
    assert [(s, url) for s, url in failed if not (s == 406 and url.endswith("/thumbnail"))] == []
    assert [m for m in log.console if m.startswith("pageerror")] == []
    page.context.close()

    page, _, _ = open_file(real_stack, browser, "report_alone.dcm", error=True)
    assert page.get_attribute("#error", "data-kind") == "noimages"
    assert page.inner_text("#error-title") == "This study has no images to show"
    page.context.close()


def test_a_series_with_one_undecodable_instance_says_which_slice_cannot_be_shown(
    real_stack: RunningStack, browser: Any, tmp_path: Path  # noqa: F811
) -> None:
    """Five JPEG baseline slices (Pillow's encoder), the third's frame made undecodable (its SOF0 marker turned
    into SOF9, arithmetic coding, which no decoder here takes): the viewer shows the others, and on the third a
    black stage saying "This image cannot be shown." with the overlay "Image 3 / 5 · cannot be shown". Before,
    moving to it kept the second slice on screen, or (a series with the lossless derivative) drew a grey stage
    saying "preview, loading full quality" for good."""
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    grey = ct.pixel_array.astype(np.float64)
    grey = np.round(255 * (grey - grey.min()) / np.ptp(grey)).astype(np.uint8)
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(5):
        jpeg = io.BytesIO()
        Image.fromarray(np.roll(grey, 20 * number, axis=1)).save(jpeg, format="JPEG", quality=95)
        frame = jpeg.getvalue()
        if number == 2:
            sof = frame.index(b"\xff\xc0")
            frame = frame[: sof + 1] + b"\xc9" + frame[sof + 2 :]
        ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, number + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.LossyImageCompression = "01"
        ds.PixelData = pydicom.encaps.encapsulate([frame])
        ds["PixelData"].VR = "OB"
        paths.append(tmp_path / f"one_broken_{number}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    answer = real_stack.stow(paths)
    assert answer.status_code == 200, answer.text
    real_stack.uploaded["one_broken.dcm"] = paths[0]

    page, log, _ = open_file(real_stack, browser, "one_broken.dcm")
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    assert page.inner_text("#status") == "Some images could not be loaded."
    assert page.locator("#unshown").is_hidden()
    page.locator("#viewport").focus()
    for index, label in ((1, "Image 2 / 5\nW"), (2, "Image 3 / 5 · cannot be shown"), (3, "Image 4 / 5\nW")):
        page.keyboard.press("ArrowDown")
        page.wait_for_function(f"() => document.getElementById('viewport').dataset.index === '{index}'")
        settle(page)
        assert page.inner_text("#overlay-br").startswith(label), index
        if index == 2:
            assert page.locator("#unshown").is_visible()
            assert page.inner_text("#unshown") == "This image cannot be shown."
            assert image_area(page, 128, 128).mean() < 10  # black, but for the sentence
        else:
            assert page.locator("#unshown").is_hidden()
            assert image_area(page, 128, 128).std() > 5
    # the failed decode is the viewer's to handle: nothing unhandled reaches a portal's error monitoring (Cornerstone
    # left the decoder's exception, "pageerror: 88496", unhandled)
    assert [m for m in log.console if m.startswith("pageerror")] == []
    assert "viewer: image not decoded" in log.console
    page.context.close()


def test_an_rle_frame_whose_header_counts_other_segments_is_refused(
    real_stack: RunningStack, browser: Any, tmp_path: Path  # noqa: F811
) -> None:
    """pydicom's MR_small_RLE.dcm with its frame's RLE header counting 7 segments where 16-bit pixels have 2 (PS3.5
    G.2): pydicom refuses to decode it, the gateway makes no derivative, and Cornerstone drew a posterized picture
    without an error. The viewer now gives its "cannot be shown" screen."""
    ds = pydicom.dcmread(TEST_FILES / "MR_small_RLE.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    frame = bytearray(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
    assert frame[:4] == b"\x02\0\0\0"
    frame[0] = 7
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    path = tmp_path / "rle_seven_segments.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(RuntimeError, match="number of RLE segments"):
        pydicom.dcmread(path).pixel_array  # noqa: B018 - pydicom's verdict on the frame
    answer = real_stack.stow([path])
    assert answer.status_code == 200, answer.text
    real_stack.uploaded[path.name] = path
    page, log, _ = open_file(real_stack, browser, path.name, error=True)
    assert page.get_attribute("#error", "data-kind") == "unsupported"
    assert "viewer: image not shown: RLE frame of another number of segments" in log.console
    page.context.close()


def with_voi_function(folder: Path, function: str, photometric: str) -> Path:
    """CT_small.dcm in a study of its own with Window Center 100, Width 800 and this VOI LUT Function, and this
    Photometric Interpretation (MONOCHROME1: the same values shown inverted)."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 100, 800, function
    if photometric == "MONOCHROME1":
        ds.PhotometricInterpretation = "MONOCHROME1"
    path = folder / f"voi_{function}_{photometric}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def voi_function_expected(function: str, photometric: str) -> np.ndarray:
    """PS3.3 C.11.2.1.3: the grey levels (0..255) the VOI LUT Function gives CT_small.dcm's values at 100/800."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    x = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = 100.0, 800.0
    if function == "SIGMOID":
        y = 255 / (1 + np.exp(-4 * (x - c) / w))
    elif function == "LINEAR_EXACT":
        y = np.clip(((x - c) / w + 0.5) * 255, 0, 255)
    else:
        y = np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255)
    return 255 - y if photometric == "MONOCHROME1" else y


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("function", ["SIGMOID", "LINEAR_EXACT"])
def test_a_voi_lut_function_is_applied(
    real_stack: RunningStack, browser: Any, tmp_path: Path, function: str, photometric: str  # noqa: F811
) -> None:
    """VOI LUT Function SIGMOID (PS3.3 C.11.2.1.3.1, common on mammography) and LINEAR_EXACT (C.11.2.1.3.2), with
    MONOCHROME1 too, on CT_small.dcm at 100/800: the image is drawn with its window, never the black "This image
    cannot be shown." stage it was (the image loader passed the function's first letter, which Cornerstone refused).
    The grey levels are the function's: a sigmoid's, not a linear window's. The overlay reads the window as the
    viewer's others do (LINEAR and SIGMOID: the width less one, C.11.2.1.2.1)."""
    path = with_voi_function(tmp_path, function, photometric)
    answer = real_stack.stow([path])
    assert answer.status_code == 200, answer.text
    real_stack.uploaded[path.name] = path
    page, log, failed = open_file(real_stack, browser, path.name)
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    assert page.locator("#unshown").is_hidden()
    assert page.inner_text("#status") == ""
    width = 799 if function == "SIGMOID" else 800
    assert window_overlay(page) == f"W {width}  L 100"
    shown = coarse(image_area(page, 128, 128))
    expected = coarse(voi_function_expected(function, photometric))
    linear = coarse(voi_function_expected("LINEAR", photometric))
    other = coarse(voi_function_expected(function, "MONOCHROME1" if photometric == "MONOCHROME2" else "MONOCHROME2"))
    error = float(np.abs(shown - expected).mean())
    assert error < 1, f"{function} {photometric}: {error:.1f} grey levels off the formula"
    if function == "SIGMOID":  # the sigmoid, not a linear window (2.7 grey levels off it on average)
        assert float(np.abs(shown - linear).mean()) > 4 * error
    assert float(np.abs(shown - other).mean()) > 40  # not the other photometric interpretation's picture
    assert failed == []
    assert [m for m in log.console if m.startswith("pageerror")] == []
    page.context.close()


def white_extent(page: Any) -> tuple[float, float]:
    """The white image's height and width as fractions of the stage's (overlays hidden)."""
    style = page.add_style_tag(content=HIDE_OVERLAYS)
    settle(page)
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#viewport").screenshot())).convert("L"))
    style.evaluate("node => node.remove()")
    rows, columns = np.nonzero(shot > 128)
    return (np.ptp(rows) + 1) / shot.shape[0], (np.ptp(columns) + 1) / shot.shape[1]


def test_a_rotated_phone_refits_the_image_unless_the_user_zoomed_it(
    real_stack: RunningStack, browser: Any, tmp_path: Path  # noqa: F811
) -> None:
    """A square image (CT_small.dcm's 128 x 128, every pixel white under its window) on an iPhone-sized screen turned
    from portrait to landscape fills the stage's height, as Reset makes it (it kept the portrait zoom: ~69% of the
    height until Reset). Zoomed by the user before the turn, the user's zoom is kept (the image as large as it was)."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = np.full((128, 128), 3000, dtype=np.int16).tobytes()
    ds.WindowCenter, ds.WindowWidth = 0, 100
    path = tmp_path / "white_square.dcm"
    ds.save_as(path, enforce_file_format=True)
    answer = real_stack.stow([path])
    assert answer.status_code == 200, answer.text
    issued = real_stack.issue([str(ds.StudyInstanceUID)], ttl=600)

    def opened(**context: Any) -> tuple[Any, NetworkLog]:
        log = NetworkLog()
        page = open_page(browser, log, **context)
        page.goto(issued["viewer_url"])
        page.wait_for_function(
            "() => document.getElementById('viewport').dataset.state === 'ready'"
            " && document.getElementById('progress').hidden"
        )
        settle(page)
        return page, log

    phone = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True, "device_scale_factor": 3}
    page, log = opened(**phone)
    height, width = white_extent(page)
    assert width > 0.97, (height, width)  # portrait: fitted to the width
    page.set_viewport_size({"width": 844, "height": 390})
    page.wait_for_timeout(300)
    height, width = white_extent(page)
    assert height > 0.97, (height, width)  # landscape: fitted to the height
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert white_extent(page)[1] > 0.97  # and back
    assert [m for m in log.console if m.startswith("pageerror")] == []
    page.context.close()

    # zoomed out by the user (a right-button drag up): a resize keeps the zoom, the image as high on the stage
    page, _ = opened(viewport={"width": 800, "height": 600})
    assert white_extent(page)[0] > 0.97
    box = page.locator("#viewport").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    page.mouse.move(x, y - 60, steps=6)
    page.mouse.up(button="right")
    settle(page)
    zoomed = white_extent(page)[0]
    assert zoomed < 0.9, zoomed
    page.set_viewport_size({"width": 900, "height": 500})
    page.wait_for_timeout(300)
    assert abs(white_extent(page)[0] - zoomed) < 0.03, (white_extent(page), zoomed)
    page.context.close()
