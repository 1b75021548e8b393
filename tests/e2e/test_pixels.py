"""Issue 17 through the real stack: burned-in names, IDs and dates in ultrasound and secondary-capture pixels,
uploaded by STOW-RS under a de-identifying policy.

- ``pixels = "clean"``: the stored file has none of the planted strings readable by OCR (the same OCR first
  reads every one of them in the input, so the test can fail), every changed pixel lies in a planted text box or
  the configured US band, the band is black even where OCR found nothing, the SOP Instance UID is new (neither
  the original nor what a de-identification without pixel cleaning gives), and the file re-scans clean.
- ``pixels = "review"``: quarantined; the admin API lists the text regions, covering every planted line.
- ``pixels = "refuse"``: today's 409 "still has PHI: burned-in-annotation", nothing stored.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytesseract
import pytest
import requests
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from gateway.phi.deidentify import remap_uid
from gateway.phi.pixels import ocr_image
from gateway.phi.policy import load_policy
from gateway.phi.scanner import scan_file
from gateway.tools.synth.burned import make_sc, make_us, planted, text_boxes
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_rendered_params import rle_of_zeros
from tests.requirements import require

BAND = 100  # rows of the configured US header band
SLACK = 12  # pixels a masked word box may reach beyond the planted line's box (margin, glyph overhang)

POLICY = f"""
version = "pixels-1"
[options]
on_deidentify_failure = "reject"

[destinations.main]
storage = "default"
region = "eu-west-1"
identifiable_allowed = false

# a file held for pixel review may still show a name: it is held only where identifiable data of the upload's
# region may be (docs/phi.md), here the same storage
[destinations.held]
storage = "default"
region = "eu-west-1"
identifiable_allowed = true

[[rules]]
id = "clean"
match = {{ tenant = "clean" }}
action = "deidentify"
destination = "main"
pixels = "clean"

[[rules]]
id = "review"
match = {{ tenant = "review" }}
action = "deidentify"
destination = "main"
pixels = "review"

[[rules]]
id = "refuse"
match = {{ tenant = "refuse" }}
action = "deidentify"
destination = "main"

[default]
action = "reject"

[deidentify]
dates = "shift"

[pixels]
margin = 4

[[pixels.bands]]
modality = "US"
top = 0
height = {BAND}
"""


def _normal(text: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def ocr(frame: np.ndarray) -> str:
    return _normal(pytesseract.image_to_string(Image.fromarray(frame)))


def frames_of(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    array = ds.pixel_array
    return array if int(ds.get("NumberOfFrames", 1) or 1) > 1 else array[np.newaxis]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    base = tmp_path_factory.mktemp("pixels")
    policy = base / "policy.toml"
    policy.write_text(POLICY)
    running = start_stack(base / "stack", "file", None, DICOMGW_PHI_POLICY=str(policy))
    running.uploaded["policy"] = policy
    yield running
    running.stack.stop()


def make(kind: str, directory: Path) -> tuple[Path, list[str]]:
    if kind == "us":
        return make_us(directory, frames=4, seed=2), planted(2)
    if kind == "us-jpeg":  # lossy colour frames: decoded, masked, re-encoded with the source's tables
        return make_us(directory, frames=3, seed=6, color=True, jpeg=True), planted(6)
    if kind == "sc-rle":  # a colour capture in RLE Lossless as DCMTK's dcmcrle writes it (PlanarConfiguration 0)
        require(shutil.which("dcmcrle") is not None, "DCMTK's dcmcrle is not installed")
        native = make_sc(directory / "native", seed=5)
        rle = directory / "sc-rle.dcm"
        subprocess.run(["dcmcrle", str(native), str(rle)], check=True, capture_output=True)
        return rle, planted(5)
    return make_sc(directory, seed=3), planted(3)


def stow(stack: RunningStack, path: Path, tenant: str) -> requests.Response:
    return stack.stow([path], **{"X-DICOMGW-Tenant": tenant, "X-DICOMGW-Region": "eu-west-1"})


def quarantine_items(stack: RunningStack) -> list[dict[str, Any]]:
    answer = requests.get(f"{stack.url}/api/v1/admin/quarantine", headers=stack.api_headers, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


@pytest.mark.parametrize("kind", ["us", "sc", "us-jpeg", "sc-rle"])
def test_clean_masks_burned_in_text(stack: RunningStack, tmp_path: Path, kind: str) -> None:
    path, strings = make(kind, tmp_path / "in")
    source = frames_of(path)
    read = ocr(source[0])
    assert all(_normal(s) in read for s in strings), f"OCR must read the planted text in the input: {read}"
    original_sop = uids_of(path)[2]

    answer = stow(stack, path, "clean")
    assert answer.status_code == 202, answer.text  # stored as masked, not as sent: Warning Reason 0xB000
    assert answer.json()["00081199"]["Value"][0]["00081196"] == {"vr": "US", "Value": [0xB000]}
    url = answer.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    study = url.split("/studies/")[1].split("/")[0]
    sop = url.rsplit("/instances/", 1)[1]
    token = stack.issue([study])["token"]
    body = requests.get(
        f"{stack.root(token)}/studies/{url.split('/studies/')[1]}",
        headers={"Accept": "application/dicom"},
        timeout=30,
    )
    assert body.status_code == 200
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(body.content)

    ds = pydicom.dcmread(stored)
    assert ds.SOPInstanceUID == sop
    uncleaned = remap_uid(original_sop, stack.stack.deid_key.encode())
    assert sop not in (original_sop, uncleaned)  # a new instance, not the header-only de-identification's UID
    assert ds.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    report = scan_file(stored, load_policy(stack.uploaded["policy"]))
    assert report.clean, report.to_json()

    output = frames_of(stored)
    assert output.shape == source.shape
    for index in range(output.shape[0]):
        text = ocr(output[index])
        assert not [s for s in strings if _normal(s) in text], f"frame {index} still reads: {text}"

    # every changed pixel lies in a planted line's box (plus slack) or in the US band; the band is black
    allowed = np.zeros(source.shape[1:3], dtype=bool)
    for left, top, right, bottom in text_boxes(source.shape[1], source.shape[2]):
        allowed[max(0, top - SLACK) : bottom + SLACK, max(0, left - SLACK) : right + SLACK] = True
    if kind.startswith("us"):
        allowed[:BAND] = True
    if kind == "us-jpeg":
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
        # one more lossy generation: outside the masked boxes (and the 16-pixel MCUs touching them) pixels
        # stay within a few levels of the source, and the band is black but for JPEG ringing
        near = np.zeros_like(allowed)
        for dy in (-16, 0, 16):
            for dx in (-16, 0, 16):
                near |= np.roll(allowed, (dy, dx), axis=(0, 1))
        outside = np.abs(output.astype(int) - source.astype(int))[:, ~near]
        print(f"lossy generation outside the masks: mean {outside.mean():.2f}, max {outside.max()}")
        assert outside.mean() < 1.0 and np.percentile(outside, 99.9) <= 8
        assert output[:, :BAND].mean() < 2
        return
    if kind == "us":
        assert not output[:, :BAND].any()
    if kind == "sc-rle":  # lossless stays lossless: every pixel outside the masks is the source's
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    changed = (output != source).reshape(source.shape[0], source.shape[1], source.shape[2], -1).any(axis=(0, 3))
    assert changed.any()
    assert not (changed & ~allowed).any(), "pixels outside the text regions changed"


def test_an_rgb_jpeg_capture_keeps_its_colours(stack: RunningStack, tmp_path: Path) -> None:
    """A JPEG Baseline capture whose components are R, G and B, stored without a colour transform as Photometric
    Interpretation RGB says (pydicom's `SC_jpeg_no_color_transform.dcm`, from a real device; no JFIF or Adobe marker):
    Pillow took its components for YCbCr, and the cleaned file re-encoded as YCbCr under the same RGB header, so every
    viewer showed it in false colours (its grey 244 became (255, 121, 254)). The frame is now read as stored and
    written back as RGB (an Adobe marker, no transform) with the source's tables: the colours are the source's."""
    source = Path(str(get_testdata_file("SC_jpeg_no_color_transform.dcm")))
    answer = stow(stack, source, "clean")
    assert answer.status_code == 202, answer.text
    url = answer.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    token = stack.issue([url.split("/studies/")[1].split("/")[0]])["token"]
    body = requests.get(
        f"{stack.root(token)}/studies/{url.split('/studies/')[1]}", headers={"Accept": "application/dicom"}, timeout=30
    )
    assert body.status_code == 200
    stored = pydicom.dcmread(io.BytesIO(body.content))
    assert stored.PhotometricInterpretation == "RGB" and stored.BurnedInAnnotation == "NO"
    [frame] = generate_frames(stored.PixelData, number_of_frames=1)
    with Image.open(io.BytesIO(frame)) as image:
        assert image.info.get("adobe_transform") == 0 and "jfif" not in image.info
    sent = pydicom.dcmread(source).pixel_array.astype(int)
    got = stored.pixel_array.astype(int)
    assert tuple(sent[128, 128]) == (244, 244, 244)
    assert np.abs(got[128, 128] - sent[128, 128]).max() <= 2, got[128, 128]
    assert np.abs(got - sent).mean() < 1.0


def test_review_quarantines_with_the_regions(stack: RunningStack, tmp_path: Path) -> None:
    path, _ = make("sc", tmp_path)
    sop = uids_of(path)[2]
    answer = stow(stack, path, "review")
    assert answer.status_code == 409, answer.text
    [entry] = [item for item in quarantine_items(stack) if item["sop_uid"] == sop]
    regions = entry["report"]["pixels"]["regions"]
    assert entry["reason"].startswith("pixels need review")
    assert entry["destination"] == "held"  # where identifiable data of eu-west-1 may be, never "main"
    # every planted line is covered by at least one region found by OCR
    for left, top, right, bottom in text_boxes(480, 640):
        assert any(
            r["source"] == "ocr"
            and r["left"] < right
            and r["left"] + r["width"] > left
            and r["top"] < bottom
            and r["top"] + r["height"] > top
            for r in regions
        ), (left, top)
    assert set(regions[0]) == {"left", "top", "width", "height", "source"}  # boxes, never the text read

    # the reviewer's preview: frame 1 as a PNG, the regions outlined in red
    preview = f"{stack.url}/api/v1/admin/quarantine/{entry['key']}/preview"
    answer = requests.get(preview, headers=stack.api_headers, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "image/png"
    assert answer.headers["Cache-Control"] == "no-store"
    image = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"))
    assert image.shape == (480, 640, 3)
    first = regions[0]
    assert tuple(image[first["top"], first["left"] + 1]) == (255, 0, 0)
    for query, status, code in (("frame=2", 404, "frame_not_found"), ("frame=x", 400, "bad_request")):
        answer = requests.get(f"{preview}?{query}", headers=stack.api_headers, timeout=30)
        assert answer.status_code == status
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json()["error"] == code
    assert requests.get(preview, timeout=30).status_code == 401  # API key required


@pytest.mark.parametrize(
    ("option", "syntax"),
    [("--j2k", "JPEG 2000 Image Compression (Lossless Only)"), ("--jpegls", "JPEG-LS Lossless Image Compression")],
)
def test_a_file_held_for_its_encoding_is_previewed(
    stack: RunningStack, tmp_path: Path, option: str, syntax: str
) -> None:
    """A capture in JPEG 2000 or JPEG-LS (as GDCM's gdcmconv writes it) cannot be re-encoded honestly, so it is held
    for review; the reviewer's preview of it was a JSON 406 "cannot render this file", so the very files sent to a
    human could not be looked at. It is now frame 1 decoded as the rendered endpoints decode it, as a PNG."""
    require(shutil.which("gdcmconv") is not None, "GDCM's gdcmconv is not installed")
    native = make_sc(tmp_path / "native", seed=8 if option == "--j2k" else 9)
    path = tmp_path / "encoded.dcm"
    subprocess.run(["gdcmconv", option, str(native), str(path)], check=True, capture_output=True)
    sop = uids_of(path)[2]
    answer = stow(stack, path, "clean")
    assert answer.status_code == 409, answer.text
    [entry] = [item for item in quarantine_items(stack) if item["sop_uid"] == sop]
    held = f"pixels need review: transfer syntax {syntax} cannot be re-encoded without changing its quality"
    assert entry["reason"] == held

    preview = f"{stack.url}/api/v1/admin/quarantine/{entry['key']}/preview"
    answer = requests.get(preview, headers=stack.api_headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "image/png"
    assert answer.headers["Cache-Control"] == "no-store"
    image = np.asarray(Image.open(io.BytesIO(answer.content)).convert("L"))
    expected = np.asarray(ocr_image(frames_of(native)[0], "RGB"))  # lossless: the capture as it was drawn
    assert image.shape == (480, 640)
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    answer = requests.get(f"{preview}?frame=2", headers=stack.api_headers, timeout=30)
    assert answer.status_code == 404 and answer.json()["error"] == "frame_not_found"


def test_refuse_keeps_the_409(stack: RunningStack, tmp_path: Path) -> None:
    path, _ = make("us", tmp_path)
    sop = uids_of(path)[2]
    answer = stow(stack, path, "refuse")
    assert answer.status_code == 409
    assert "burned-in-annotation" in answer.text
    assert not [item for item in quarantine_items(stack) if item["sop_uid"] == sop]
    deidentified = remap_uid(sop, stack.stack.deid_key.encode())
    assert not [key for key in stack.storage().list("") if sop in key or deidentified in key]


def test_a_frame_too_large_to_decode_is_held_for_review_undecoded(stack: RunningStack, tmp_path: Path) -> None:
    """A 4.5 MB RLE file declaring one 12000 x 12000 frame with burned-in text: decoding it for OCR would take
    1.5 GB of an ingest process, and a larger one would exhaust the machine. Above ``MAX_DECODED_PIXELS`` it is held
    for review without a decode, and the reviewer's preview is a JSON 406 instead of that decode."""
    path = rle_of_zeros(tmp_path / "huge.dcm", 12000)
    ds = pydicom.dcmread(path)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(path)
    sop = uids_of(path)[2]
    answer = stow(stack, path, "clean")
    assert answer.status_code == 409, answer.text
    [entry] = [item for item in quarantine_items(stack) if item["sop_uid"] == sop]
    detail = "a frame of 12000 x 12000 pixels, more than the 67108864 decoded here"
    assert entry["reason"] == f"pixels need review: {detail}"
    preview = requests.get(
        f"{stack.url}/api/v1/admin/quarantine/{entry['key']}/preview", headers=stack.api_headers, timeout=30
    )
    assert preview.status_code == 406
    assert preview.headers["Content-Type"] == "application/json"
    assert preview.json()["detail"] == f"cannot render this file: {detail}"
