"""The rendered resources' query parameters (PS3.18 8.3.5.1: ``window``, ``viewport``, ``quality``, ``annotation``,
``iccprofile``) and WADO-URI's (PS3.18 9: ``contentType``, ``frameNumber``, ``region``, ``windowCenter``...) as
viewers send them and as hostile clients do, against the real stack on both storage backends, on real images:
pydicom's signed 16-bit MR, a 30-frame YBR_FULL_422 JPEG, palette colour, a MONOCHROME1 image and a waveform.

The pixels are compared with what pydicom and numpy make of the same file (``apply_modality_lut``, PS3.3
C.11.2.1.2's sigmoid, ``numpy.flip``), exactly for PNG. Every refusal is a JSON 400 or 406 with its exact body."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_modality_lut
from pydicom.uid import RLELossless, generate_uid

from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import RunningStack, gunicorn_peak_growth_mb, module_stack
from tests.e2e.test_compressed_render import fresh_copy

NAMES = {
    "mr": "MR_small.dcm",  # signed 16-bit, a window in the file
    "ybr": "examples_ybr_color.dcm",  # 30 frames, YBR_FULL_422 JPEG Baseline
    "palette": "examples_palette.dcm",
    "ecg": "waveform_ecg.dcm",  # no rendered media type: its WADO-URI default is the object
}
FRAME_ERROR = {"error": "bad_request", "detail": "frame number: expected an integer from 1 to 2147483647"}


def monochrome1(target: Path) -> Path:
    """pydicom's CT (signed 16-bit, rescaled to HU, no window) as MONOCHROME1: the frame's range, inverted."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target)
    return target


def rle_of_zeros(target: Path, side: int) -> Path:
    """pydicom's MR as one ``side`` x ``side`` 16-bit frame of zeros in RLE (PS3.5 G): two segments of 128-byte
    runs, 1/64 of the decoded size (a 12000 x 12000 frame is a 4.5 MB file)."""
    return _rle_frame(target, side, ramp=False)


def rle_ramp(target: Path, side: int) -> Path:
    """pydicom's MR, no window, as one ``side`` x ``side`` 16-bit RLE frame whose first 128 pixels are 0..127 and
    the rest 0: a frame of ``2 * side**2`` bytes decoded from a file of ``side**2 / 64`` (as ``rle_of_zeros``)."""
    return _rle_frame(target, side, ramp=True)


def _rle_frame(target: Path, side: int, *, ramp: bool) -> Path:
    """``rle_of_zeros``, or with ``ramp`` ``rle_ramp``: the high bytes' segment all runs of zeros, the low bytes'
    the same or a literal run of 0..127 first (and the file's window removed, so the frame's range is shown)."""
    ds = pydicom.dcmread(str(get_testdata_file("MR_small.dcm")))
    high = b"\x81\x00" * (side * side // 128)  # -127 + 1 = 128 copies of the byte 0
    low = b"\x7f" + bytes(range(128)) + high[2:] if ramp else high  # a literal run of 128 bytes, then zeros
    if ramp:
        del ds.WindowCenter, ds.WindowWidth
    header = np.zeros(16, "<u4")
    header[:3] = 2, 64, 64 + len(high)
    ds.PixelData = encapsulate([header.tobytes() + high + low])
    ds["PixelData"].VR = "OB"
    ds.Rows = ds.Columns = side
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target)
    return target


# Float Pixel Data of a parametric map: a gradient from -1.5 to 2.5 with NaN ("no value"), +inf and -inf in row 0
FLOATS = np.linspace(-1.5, 2.5, 64, dtype=np.float32).reshape(8, 8)
FLOATS[0, :3] = np.nan, np.inf, -np.inf


def float_map(target: Path) -> Path:
    """pydicom's CT header on an 8 x 8 Parametric Map of ``FLOATS`` (32-bit Float Pixel Data, no rescale)."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    del ds.PixelData, ds.RescaleSlope, ds.RescaleIntercept, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.30"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.NumberOfFrames = 32, 1
    ds.FloatPixelData = FLOATS.tobytes()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target)
    return target


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rendered-params")
    made = {key: fresh_copy(Path(str(get_testdata_file(name))), folder / name) for key, name in NAMES.items()}
    return {
        **made,
        "mono1": monochrome1(folder / "mono1.dcm"),
        "huge": rle_of_zeros(folder / "huge.dcm", 12000),
        "large": rle_ramp(folder / "large.dcm", 4096),
        "float": float_map(folder / "float.dcm"),
    }


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> Iterator[RunningStack]:
    yield from module_stack(request, tmp_path_factory, "rendered-params", list(files.values()))


def instance(stack: RunningStack, path: Path) -> str:
    study, series, sop = uids_of(path)
    return f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def wado(stack: RunningStack, path: Path, query: str = "") -> str:
    study, series, sop = uids_of(path)
    return f"{stack.url}/dicomweb/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}{query}"


def get(stack: RunningStack, url: str, accept: str = "") -> requests.Response:
    """``url`` as written (its percent-encoding kept), with the API key."""
    return requests.get(url, headers={**stack.api_headers, **({"Accept": accept} if accept else {})}, timeout=60)


def assert_error(answer: requests.Response, status: int, body: dict[str, str]) -> None:
    assert (answer.status_code, answer.headers["Content-Type"]) == (status, "application/json"), answer.text[:300]
    assert answer.json() == body


def image(answer: requests.Response, media_type: str) -> bytes:
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, media_type), answer.text[:300]
    return answer.content


def pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def test_a_frame_list_on_rendered_is_checked_as_the_frames_resource_checks_it(
    stack: RunningStack, files: dict[str, Path]
) -> None:
    """PS3.18 10.4.1.1.3 names ``frames/{framelist}/rendered``. Frame 0, -1 or a 21-digit number was a 404 (the
    frames resource answers them a 400), and a list the 404 of an unknown path, which told a client the resource
    did not exist. Now: the frames resource's 400; one frame named twice is that frame (several frames are one
    animated GIF: tests/e2e/test_outside_clients_2.py), which no single-frame type holds."""
    ybr = instance(stack, files["ybr"])
    for frames in ("0", "-1", "99999999999999999999", "1,x", "1,,2", "+1", "1,0"):
        assert_error(get(stack, f"{ybr}/frames/{frames}/rendered"), 400, FRAME_ERROR)
    several = {
        "error": "not_acceptable",
        "detail": "several frames are rendered as one animated image/gif only (PS3.18 Table 8.7.4-1): accept "
        "image/gif, or ask for each frame's /frames/{n}/rendered",
    }
    assert_error(get(stack, f"{ybr}/frames/1,30/rendered", "image/png"), 406, several)
    second = image(get(stack, f"{ybr}/frames/2/rendered", "image/png"), "image/png")
    assert image(get(stack, f"{ybr}/frames/2,2/rendered", "image/png"), "image/png") == second
    # PS3.18 8.3.1: "a comma or %2C separated list", as /frames/ takes it (it was NGINX's 400 "not canonical")
    assert image(get(stack, f"{ybr}/frames/2%2C2/rendered", "image/png"), "image/png") == second
    assert_error(get(stack, f"{ybr}/frames/1%2c30/rendered", "image/png"), 406, several)
    assert_error(get(stack, f"{ybr}/frames/1%2C0/thumbnail"), 400, FRAME_ERROR)
    thumb = image(get(stack, f"{ybr}/frames/2/thumbnail", "image/png"), "image/png")
    assert image(get(stack, f"{ybr}/frames/2%2C2/thumbnail", "image/png"), "image/png") == thumb
    assert_error(
        get(stack, f"{ybr}/frames/31/rendered"),
        404,
        {"error": "frame_not_found", "detail": "frame 31 does not exist; the instance has 30 frame(s)"},
    )
    # the last frame is the file's last frame, as pydicom decodes it (its YBR as RGB)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = pydicom.dcmread(files["ybr"]).pixel_array[29]
    assert np.array_equal(pixels(image(get(stack, f"{ybr}/frames/30/rendered", "image/png"), "image/png")), expected)


def test_a_rendering_parameter_given_twice_or_empty_is_a_400(stack: RunningStack, files: dict[str, Path]) -> None:
    """``window=1,2&window=600,1600`` rendered with the first and ``viewport=32,32&viewport=512,512`` with the first,
    in silence, and ``window=`` or ``viewport=`` as if absent (WADO-URI answers both a 400; ``quality=`` was one
    already). On the instance, its frames, its thumbnail and the series' thumbnail alike."""
    mr = instance(stack, files["mr"])
    series = mr.rsplit("/instances/", 1)[0]
    for resource in (f"{mr}/rendered", f"{mr}/frames/1/rendered", f"{mr}/thumbnail", f"{series}/thumbnail"):
        for query, name in (
            ("window=1,2&window=600,1600", "window"),
            ("viewport=32,32&viewport=512,512", "viewport"),
            ("quality=50&quality=90", "quality"),
            ("iccprofile=no&iccprofile=no", "iccprofile"),
        ):
            detail = f"rendered takes one {name}"
            assert_error(get(stack, f"{resource}?{query}"), 400, {"error": "bad_request", "detail": detail})
        for name in ("window", "viewport"):
            empty = {"error": "bad_request", "detail": f"{name} is empty"}
            assert_error(get(stack, f"{resource}?{name}="), 400, empty)
        assert image(get(stack, f"{resource}?viewport=32,32", "image/png"), "image/png")


def test_annotation_and_an_icc_profile_are_refused_not_dropped(stack: RunningStack, files: dict[str, Path]) -> None:
    """PS3.18 8.3.5.1.1: ``annotation=patient`` asks for the patient's name burned in; 8.3.5.1.5: ``iccprofile=yes``
    (or ``srgb``...) asks for a profile in the image. Both were ignored, a 200 with an image that was not the one
    asked for (WADO-URI's ``annotation`` is a 400 already). ``iccprofile=no`` is what is served."""
    mr = instance(stack, files["mr"])
    plain = image(get(stack, f"{mr}/rendered", "image/png"), "image/png")
    assert image(get(stack, f"{mr}/rendered?iccprofile=no", "image/png"), "image/png") == plain
    assert image(get(stack, f"{mr}/rendered?iccprofile=NO", "image/png"), "image/png") == plain
    annotation = {
        "error": "bad_request",
        "detail": "annotation is not supported: nothing is burned into rendered images",
    }
    icc = {"error": "bad_request", "detail": "iccprofile: only no is supported: rendered images carry no ICC profile"}
    for resource in (f"{mr}/rendered", f"{mr}/frames/1/rendered", f"{mr}/thumbnail"):
        for query in ("annotation=patient", "annotation=patient,technique", "annotation="):
            assert_error(get(stack, f"{resource}?{query}"), 400, annotation)
        for query in ("iccprofile=yes", "iccprofile=srgb", "iccprofile=adobergb", "iccprofile="):
            assert_error(get(stack, f"{resource}?{query}"), 400, icc)


def test_window_and_region_take_plain_decimals_only(stack: RunningStack, files: dict[str, Path]) -> None:
    """Python's ``float()`` read ``1_0`` as 10, fullwidth digits and a leading space as numbers: a typo rendered
    another window with a 200. Decimals as a query writes them (``600``, ``-2.5``, ``6e2``, ``.5``) still render."""
    mr = instance(stack, files["mr"])
    reference = image(get(stack, f"{mr}/rendered?window=600,1600", "image/png"), "image/png")
    for window in ("6e2,1.6e3", "600.0,1600.", "%2B600,1600", "600,16E2,linear"):
        assert image(get(stack, f"{mr}/rendered?window={window}", "image/png"), "image/png") == reference, window
    bad_window = {"error": "bad_request", "detail": "window must be center,width[,function]"}
    for window in ("6_00,1600", "%EF%BC%96%EF%BC%90%EF%BC%90,1600", "%20600,1600", "600,1600%20", "0x10,1", "nan,1"):
        assert_error(get(stack, f"{mr}/rendered?window={window}"), 400, bad_window)
    bad_pair = {"error": "bad_request", "detail": "windowCenter and windowWidth: center and width must be numbers"}
    assert_error(get(stack, wado(stack, files["mr"], "&windowCenter=6_00&windowWidth=1600")), 400, bad_pair)
    wado_reference = image(get(stack, wado(stack, files["mr"], "&windowCenter=6e2&windowWidth=1600")), "image/jpeg")
    assert image(get(stack, wado(stack, files["mr"], "&windowCenter=600&windowWidth=1600")), "image/jpeg") == (
        wado_reference
    )
    bad_region = {"error": "bad_request", "detail": "region must be 4 finite numbers separated by commas"}
    for region in ("0,0,1_0,1", "0,0,%EF%BC%91,1", "0,0,inf,1"):
        assert_error(get(stack, wado(stack, files["mr"], f"&region={region}")), 400, bad_region)
    half = image(get(stack, wado(stack, files["mr"], "&region=0,0,.5,1&contentType=image/png")), "image/png")
    assert pixels(half).shape == (64, 32)


def test_wado_uri_integer_and_decimal_parameters_read_as_dicom_is_and_ds(
    stack: RunningStack, files: dict[str, Path]
) -> None:
    """PS3.18 encodes ``rows``, ``columns``, ``frameNumber`` and ``imageQuality`` as DICOM IS, ``windowCenter`` and
    ``windowWidth`` as DS, and PS3.5 6.2 lets either carry a ``+`` and pad with spaces: a file's Window Center
    ``40 `` (padded to an even length) copied into a link, or ``+40`` unencoded (a query reads it `` 40``), was a
    JSON 400. They now render as the bare numbers do; a space inside, a fraction or an exponent in an IS, ``1_0``
    and the sign of a count stay a 400."""
    mr, ybr = files["mr"], files["ybr"]
    plain = image(get(stack, wado(stack, mr, "&windowCenter=600&windowWidth=1600&rows=32&contentType=image/png")),
                  "image/png")  # fmt: skip
    for query in (
        "&windowCenter=%2B600&windowWidth=1600%20&rows=%2B32",
        "&windowCenter=+600&windowWidth=%201600&rows=32%20%20",
        "&windowCenter=%20%206e2%20&windowWidth=+1.6E3&rows=+32&columns=%2064",
    ):
        answer = get(stack, wado(stack, mr, f"{query}&contentType=image/png"))
        assert image(answer, "image/png") == plain, query
    frame_30 = image(get(stack, wado(stack, ybr, "&frameNumber=30&contentType=image/png")), "image/png")
    for number in ("%2B30", "+30", "30%20", "%20%2030"):
        assert image(get(stack, wado(stack, ybr, f"&frameNumber={number}&contentType=image/png")), "image/png") == (
            frame_30
        ), number
    quality = image(get(stack, wado(stack, ybr, "&frameNumber=2&imageQuality=40")), "image/jpeg")
    assert image(get(stack, wado(stack, ybr, "&frameNumber=2&imageQuality=%2B40%20")), "image/jpeg") == quality
    for name, query, low, high in (
        ("rows", "&rows=3%202", 1, 2147483647),
        ("rows", "&rows=1e3", 1, 2147483647),
        ("columns", "&columns=32.0", 1, 2147483647),
        ("columns", "&columns=-32", 1, 2147483647),
        ("frameNumber", "&frameNumber=%20", 1, 2147483647),
        ("frameNumber", "&frameNumber=3_0", 1, 2147483647),
        ("imageQuality", "&imageQuality=%2B%2B40", 1, 100),
    ):
        detail = f"{name}: expected an integer from {low} to {high}"
        assert_error(get(stack, wado(stack, ybr, query)), 400, {"error": "bad_request", "detail": detail})
    bad_pair = {"error": "bad_request", "detail": "windowCenter and windowWidth: center and width must be numbers"}
    for query in ("&windowCenter=6%2000&windowWidth=1600", "&windowCenter=600&windowWidth=%20%20"):
        assert_error(get(stack, wado(stack, mr, query)), 400, bad_pair)


def test_a_float_image_holding_nan_or_infinities_renders_its_finite_values(
    stack: RunningStack, files: dict[str, Path]
) -> None:
    """One NaN in Float Pixel Data (a parametric map's "no value") made the frame's range NaN and the whole rendering
    black, by ``rendered``, WADO-URI and the thumbnail alike. The range is now that of the finite values; NaN and
    -inf show as the lowest value, +inf as the highest, in the range and in a window asked for."""
    url = instance(stack, files["float"])
    finite = FLOATS[np.isfinite(FLOATS)].astype(np.float64)
    low, high = finite.min(), finite.max()
    expected = np.clip(np.rint((FLOATS.astype(np.float64) - low) / (high - low) * 255.0), 0, 255)
    expected[0, :3] = 0, 255, 0
    shown = pixels(image(get(stack, f"{url}/rendered", "image/png"), "image/png"))
    assert shown.tolist() == expected.astype(np.uint8).tolist()
    by_uri = pixels(image(get(stack, wado(stack, files["float"], "&contentType=image/png")), "image/png"))
    assert by_uri.tolist() == shown.tolist()
    windowed = pixels(image(get(stack, f"{url}/rendered?window=0,2", "image/png"), "image/png"))
    assert windowed[0, :3].tolist() == [0, 255, 0]
    assert windowed[7, 7] == 255 and windowed[0, 3] == 0  # 2.5 above the window, -1.31 below it
    thumbnail = pixels(image(get(stack, f"{url}/thumbnail", "image/jpeg"), "image/jpeg"))
    assert thumbnail.max() > 200  # it was black


def test_wado_uri_empty_frame_number_or_region_is_a_400(stack: RunningStack, files: dict[str, Path]) -> None:
    """``frameNumber=`` rendered frame 1 and ``region=`` the whole frame, as if neither were asked for;
    ``frameNumber=0`` and ``region=0,0,0,0`` are a 400 already (PS3.18 9.5.2.1)."""
    assert_error(
        get(stack, wado(stack, files["ybr"], "&frameNumber=")),
        400,
        {"error": "bad_request", "detail": "frameNumber: expected an integer from 1 to 2147483647"},
    )
    assert_error(
        get(stack, wado(stack, files["ybr"], "&region=")), 400, {"error": "bad_request", "detail": "region is empty"}
    )
    frame_30 = image(get(stack, f"{instance(stack, files['ybr'])}/frames/30/rendered", "image/png"), "image/png")
    by_uri = get(stack, wado(stack, files["ybr"], "&frameNumber=30&contentType=image/png"))
    assert image(by_uri, "image/png") == frame_30


def test_wado_uri_any_type_is_the_instance_default(stack: RunningStack, files: dict[str, Path]) -> None:
    """``contentType=*/*`` (any type) of a waveform, whose one type is ``application/dicom``, was a 406 "no pixel
    data"; without ``contentType``, or with ``Accept: */*``, it is the object. Now ``*/*`` first is the default of
    the instance's category, as PS3.18 Table 8.7.4-1 gives it; a type before it still decides."""
    ecg = files["ecg"]
    for query in ("&contentType=*/*", "&contentType=*%2F*", "&contentType=*/*;q=0.9", ""):
        answer = get(stack, wado(stack, ecg, query))
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/dicom"), query
        assert answer.content == ecg.read_bytes()
    mr = files["mr"]
    default = image(get(stack, wado(stack, mr)), "image/jpeg")
    assert image(get(stack, wado(stack, mr, "&contentType=*/*")), "image/jpeg") == default
    assert image(get(stack, wado(stack, mr, "&contentType=image/png,*/*;q=0.5")), "image/png")
    assert_error(
        get(stack, wado(stack, ecg, "&contentType=image/*")),
        406,
        {"error": "not_acceptable", "detail": "this instance has no pixel data: it is no image to render"},
    )


def sigmoid(real: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1 onto 0..255."""
    return np.clip(np.rint(255.0 / (1.0 + np.exp(-4.0 * (real - center) / width))), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("key", ["mr", "mono1"])
def test_a_sigmoid_window_and_a_flipped_viewport_render_as_numpy_computes_them(
    stack: RunningStack, files: dict[str, Path], key: str
) -> None:
    """The request's ``window=c,w,sigmoid`` over the modality LUT (signed MR, rescaled CT as MONOCHROME1, inverted
    after the window) and ``viewport`` with a negative ``sw`` and ``sh`` (the region left of and above ``sx,sy``,
    flipped), byte for byte in PNG."""
    ds = pydicom.dcmread(files[key])
    real = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = sigmoid(real, 40.0, 400.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        expected = 255 - expected
    address = f"{instance(stack, files[key])}/rendered"
    got = pixels(image(get(stack, f"{address}?window=40,400,sigmoid", "image/png"), "image/png"))
    assert np.array_equal(got, expected)
    rows, columns = real.shape
    flipped = f"{address}?window=40,400,SIGMOID&viewport={columns},{rows},{columns},{rows},-{columns},-{rows}"
    assert np.array_equal(pixels(image(get(stack, flipped, "image/png"), "image/png")), np.flip(expected))
    left = f"{address}?window=40,400,sigmoid&viewport=16,{rows},16,0,-16,0"
    assert np.array_equal(pixels(image(get(stack, left, "image/png"), "image/png")), np.flip(expected[:, :16], 1))
    # a viewport larger than the frame is bounded by the frame: never enlarged, whatever its size
    huge = f"{address}?viewport=2147483647,2147483647"
    assert Image.open(io.BytesIO(image(get(stack, huge, "image/png"), "image/png"))).size == (columns, rows)


def test_a_frame_too_large_to_render_is_a_406_not_gigabytes_of_a_worker(
    stack: RunningStack, files: dict[str, Path]
) -> None:
    """A 4.5 MB RLE file declaring one 12000 x 12000 frame (144 megapixels of zeros) rendered as a 1.7 MB JPEG after
    holding 1.5 GB of the worker for each request (measured); a 40000 x 40000 one, 50 MB, would need 16 GB. A
    frame above 8192 x 8192 pixels is now a JSON 406 before anything is read or decoded, on every route that
    renders; its frame is still served as stored."""
    huge = instance(stack, files["huge"])
    refused = {
        "error": "not_acceptable",
        "detail": "this frame (12000 x 12000) is larger than the 67108864 pixels rendered here: retrieve its frames "
        "instead",
    }
    for url in (f"{huge}/rendered", f"{huge}/frames/1/rendered", f"{huge}/thumbnail", wado(stack, files["huge"])):
        assert_error(get(stack, url), 406, refused)
    frame = get(stack, f"{huge}/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=*')
    [stored] = generate_frames(pydicom.dcmread(files["huge"]).PixelData, number_of_frames=1)
    boundary = frame.headers["Content-Type"].split("boundary=")[1]
    head, _, rest = frame.content.partition(b"\r\n\r\n")
    assert frame.status_code == 200 and head.startswith(f"--{boundary}\r\n".encode())
    assert rest == stored + f"\r\n--{boundary}--\r\n".encode()


def test_a_large_frame_renders_without_its_size_in_float_temporaries(
    stack: RunningStack, files: dict[str, Path]
) -> None:
    """A 4096 x 4096 16-bit frame (32 MB decoded) took 600 MB of its worker to render, 36 bytes a pixel: the modality
    LUT and the window made float64 copies of the whole frame, several at once (one at the 8192 x 8192 bound took
    2.4 GB, 3.9 GB in RGB; the default ECS task has 2 GB for every worker). Display values are now computed a band of
    rows at a time: the decoded frame, its 8-bit image and a band's temporaries. The image is the one the whole
    frame gave: the frame's range (0..127 here) drawn over 0..255."""
    large = instance(stack, files["large"])
    growth, answer = gunicorn_peak_growth_mb(stack, lambda: get(stack, f"{large}/rendered", "image/png"))
    expected = np.zeros((4096, 4096), np.uint8)
    expected[0, :128] = np.rint(np.arange(128) * 255 / 127)
    assert np.array_equal(pixels(image(answer, "image/png")), expected)
    assert growth < 200, f"rendering grew gunicorn by {growth:.0f} MB"


def test_a_thumbnail_takes_its_window_and_quality_with_or_without_a_viewport(
    stack: RunningStack, files: dict[str, Path]
) -> None:
    """``thumbnail?window=40,400`` was the stored thumbnail (the file's window), while the same with
    ``&viewport=128,128`` was windowed as asked; ``thumbnail?quality=0`` and ``?window=nan,1`` were a 200 without a
    viewport and a 400 with one. A window or a quality now renders the thumbnail for the request either way."""
    for key in ("mr", "mono1"):
        address = instance(stack, files[key])
        plain = image(get(stack, f"{address}/thumbnail"), "image/jpeg")
        windowed = image(get(stack, f"{address}/thumbnail?window=40,400,sigmoid&viewport=128,128"), "image/jpeg")
        assert windowed != plain
        assert image(get(stack, f"{address}/thumbnail?window=40,400,sigmoid"), "image/jpeg") == windowed
        low = image(get(stack, f"{address}/thumbnail?quality=5&viewport=128,128"), "image/jpeg")
        assert image(get(stack, f"{address}/thumbnail?quality=5"), "image/jpeg") == low
        quality = {"error": "bad_request", "detail": "quality: expected an integer from 1 to 100"}
        assert_error(get(stack, f"{address}/thumbnail?quality=0"), 400, quality)
        window = {"error": "bad_request", "detail": "window must be center,width[,function]"}
        assert_error(get(stack, f"{address}/thumbnail?window=nan,1"), 400, window)
        assert image(get(stack, f"{address}/thumbnail"), "image/jpeg") == plain  # the stored one is unchanged
