"""Real files: every file shipped in the installed pydicom's ``data/test_files`` (subfolders included) through
STOW-RS on the real stack, on both backends, then again under a de-identifying PHI policy.

Each file is either stored, and then served exactly as pydicom reads it (instance bytes by WADO-RS, WADO-URI
and whole-study multipart; every frame; the whole DICOM JSON at every depth, bulk values through the bytes every
advertised BulkDataURI answers; QIDO attributes; ``rendered`` an image, or a JSON 406 for what holds no pixel
data and the few images listed in NOT_RENDERED), or refused with a reason listed below with its justification.
A file refused that is not listed, or a listed file that is stored, fails the suite. Files sharing a SOP Instance
UID get the documented conflict answer (0x0111 for other bytes, success for the same bytes) and never replace the
first one stored. Expected outcomes come from pydicom's own reading.
Under the de-identifying policy every stored output must also re-scan clean.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.data
import pytest
import requests
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import BytesLengthException
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import get_expected_length, pack_bits

import gateway.render  # noqa: F401 - pydicom decodes with the plugins the gateway registers (gateway.dicom.codecs)
from gateway.dicom.index import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    NATIVE_SYNTAXES,
    frame_media_type,
    named_uids,
)
from gateway.dicom.walker import quiet_validation
from gateway.dicomweb.multipart import encode_multipart
from gateway.phi.deidentify import remap_uid
from gateway.phi.policy import load_policy
from gateway.phi.scanner import scan_file
from tests.e2e.harness import RunningStack, start_stack
from tests.fixtures.servers import MotoServer

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
BATCH = 40  # parts per STOW request
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
DUPLICATE_DIFFERENT = 0x0111

_NOT_DICOM = "not a DICOM Part 10 file (no DICM prefix): pydicom needs force=True to read it"
_NO_STUDY = "no Study Instance UID: the gateway files every instance under its study and series"
# Refused whatever the policy: file name (relative to test_files) -> (Failure Reason, justification).
REFUSED: dict[str, tuple[int, str]] = {
    "README.txt": (CANNOT_UNDERSTAND, "text describing the folder"),
    "dicomdirtests/README.txt": (CANNOT_UNDERSTAND, "text describing the folder"),
    "dicomdirtests/TINY_ALPHA/README": (CANNOT_UNDERSTAND, "text describing the folder"),
    "crayons.icc": (CANNOT_UNDERSTAND, "an ICC colour profile, not DICOM"),
    "test1.json": (CANNOT_UNDERSTAND, "DICOM JSON, not Part 10"),
    "test_PN.json": (CANNOT_UNDERSTAND, "DICOM JSON, not Part 10"),
    "rtplan.dump": (CANNOT_UNDERSTAND, "a text dump of rtplan.dcm"),
    "rtstruct.dump": (CANNOT_UNDERSTAND, "a text dump of rtstruct.dcm"),
    "zipMR.gz": (CANNOT_UNDERSTAND, "gzip-compressed; STOW-RS parts are application/dicom"),
    "no_meta.dcm": (CANNOT_UNDERSTAND, _NOT_DICOM),
    "rtstruct.dcm": (CANNOT_UNDERSTAND, _NOT_DICOM),
    "ExplVR_BigEndNoMeta.dcm": (CANNOT_UNDERSTAND, _NOT_DICOM),
    "ExplVR_LitEndNoMeta.dcm": (CANNOT_UNDERSTAND, _NOT_DICOM),
    "meta_missing_tsyntax.dcm": (CANNOT_UNDERSTAND, "file meta without Transfer Syntax UID: encoding unknown"),
    "MR_truncated.dcm": (CANNOT_UNDERSTAND, "Pixel Data truncated (deliberately broken)"),
    "rtplan_truncated.dcm": (CANNOT_UNDERSTAND, "truncated inside a sequence (deliberately broken)"),
    "badVR.dcm": (CANNOT_UNDERSTAND, "Number of Frames is '1A' (deliberately broken): frames cannot be counted"),
    "SC_rgb_jpeg.dcm": (
        CANNOT_UNDERSTAND,
        "data set written in implicit VR under an explicit VR transfer syntax (JPEG Baseline); pydicom only "
        "reads it by guessing, a conformant reader cannot",
    ),
    "JPEGLSNearLossless_08.dcm": (CANNOT_UNDERSTAND, _NO_STUDY),
    "JPEGLSNearLossless_16.dcm": (CANNOT_UNDERSTAND, _NO_STUDY),
    "SC_rgb_jls_lossy_line.dcm": (CANNOT_UNDERSTAND, _NO_STUDY),
    "SC_rgb_jls_lossy_sample.dcm": (CANNOT_UNDERSTAND, _NO_STUDY),
    "UN_sequence.dcm": (CANNOT_UNDERSTAND, _NO_STUDY + " (one private UN sequence only)"),
    "empty_charset_LEI.dcm": (CANNOT_UNDERSTAND, _NO_STUDY),
    "nested_priv_SQ.dcm": (CANNOT_UNDERSTAND, _NO_STUDY + " (a private sequence only)"),
    "priv_SQ.dcm": (CANNOT_UNDERSTAND, _NO_STUDY + " (a private sequence only)"),
    "no_meta_group_length.dcm": (CANNOT_UNDERSTAND, _NO_STUDY),
    **{
        f"dicomdirtests/{name}": (CANNOT_UNDERSTAND, "a DICOMDIR (Media Storage Directory), no instance: " + _NO_STUDY)
        for name in (
            "DICOMDIR",
            "DICOMDIR-bigEnd",
            "DICOMDIR-empty.dcm",
            "DICOMDIR-implicit",
            "DICOMDIR-nooffset",
            "DICOMDIR-nopatient",
            "DICOMDIR-reordered",
            "TINY_ALPHA/DICOMDIR",
        )
    },
}

# Stored images whose ``rendered`` is a JSON 406, with the reason; every other stored image renders (an instance
# without pixel data is a 406: no image). JPEG Lossless, JPEG-LS, 12-bit JPEG and GDCM's YBR_RCT JPEG 2000 were
# 406s before imagecodecs decoded them (gateway.dicom.codecs).
NOT_RENDERED: dict[str, str] = {
    "JPEG2000-embedded-sequence-delimiter.dcm": "an undecodable codestream (its SIZ says 3,722,445,056 columns)",
}

_BURNED_IN = (
    "secondary capture / colour example without Burned In Annotation = NO: its pixels may carry text, so the "
    "de-identified output does not re-scan clean (docs/phi.md)"
)
# Refused only under the de-identifying policy below (on top of REFUSED).
DEID_REFUSED: dict[str, tuple[int, str]] = {
    "image_dfl.dcm": (PROCESSING_FAILURE, "deflated data set: the de-identifier does not rewrite deflated files"),
    **{
        name: (PROCESSING_FAILURE, _BURNED_IN)
        for name in (
            "ExplVR_BigEnd.dcm",
            # Secondary Captures that name no modality, or one of the modalities the list does not hold (NM): a
            # capture is held as likely to carry text whatever Modality says (docs/phi.md, burned-in text)
            "GDCMJ2K_TextGBR.dcm",
            "JPEG-lossy.dcm",
            "JPEG2000-embedded-sequence-delimiter.dcm",
            "JPEG2000.dcm",
            "JPGExtended.dcm",
            "SC_jpeg_no_color_transform.dcm",
            "SC_jpeg_no_color_transform_2.dcm",
            "SC_rgb_jpeg_app14_dcmd.dcm",
            "SC_rgb_dcmtk_+eb+cr.dcm",
            "SC_rgb_dcmtk_+eb+cy+n1.dcm",
            "SC_rgb_dcmtk_+eb+cy+n2.dcm",
            "SC_rgb_dcmtk_+eb+cy+np.dcm",
            "SC_rgb_dcmtk_+eb+cy+s2.dcm",
            "SC_rgb_dcmtk_+eb+cy+s4.dcm",
            "SC_rgb_gdcm_KY.dcm",
            "SC_rgb_jpeg_dcmd.dcm",
            "SC_rgb_jpeg_dcmtk.dcm",
            "SC_rgb_jpeg_gdcm.dcm",
            "SC_rgb_jpeg_lossy_gdcm.dcm",
            "SC_rgb_rle.dcm",
            "SC_rgb_rle_16bit.dcm",
            "SC_rgb_rle_16bit_2frame.dcm",
            "SC_rgb_rle_2frame.dcm",
            "SC_rgb_rle_32bit.dcm",
            "SC_rgb_rle_32bit_2frame.dcm",
            "SC_rgb_small_odd.dcm",
            "SC_rgb_small_odd_big_endian.dcm",
            "SC_rgb_small_odd_jpeg.dcm",
            "SC_ybr_full_422_uncompressed.dcm",
            "examples_jpeg2k.dcm",
            "examples_palette.dcm",
            "examples_rgb_color.dcm",
            "examples_ybr_color.dcm",
        )
    },
}

DEID_POLICY = """
version = "real-files"
[options]
on_unreadable = "reject"
on_deidentify_failure = "reject"

[destinations.main]
storage = "default"
region = "eu-west-1"
identifiable_allowed = false

[default]
action = "deidentify"
destination = "main"

[deidentify]
dates = "shift"
max_shift_days = 365
"""

PIXEL_TAGS = ("7FE00008", "7FE00009", "7FE00010")


@dataclass
class RealFile:
    name: str  # relative to test_files
    path: Path
    sop: str | None  # as pydicom reads it (None: pydicom cannot read it without force, or it has none)


def real_files() -> list[RealFile]:
    out = []
    for path in sorted(p for p in TEST_FILES.rglob("*") if p.is_file()):
        # the SOP Instance UID the gateway names the file by, in a success or a failure item alike (even for a
        # file it refuses, as far as its UIDs can be read): a batch never holds two files naming one UID
        ids, _ = named_uids(path)
        out.append(RealFile(str(path.relative_to(TEST_FILES)), path, ids.sop if ids else None))
    return out


FILES = real_files()


def batches(files: list[RealFile]) -> list[list[RealFile]]:
    """Request-ordered batches in which no SOP Instance UID repeats, so each response item maps to its file; a
    later file of a SOP Instance UID always goes in a later batch than the earlier ones."""
    out: list[list[RealFile]] = []
    last: dict[str, int] = {}
    for item in files:
        start = last[item.sop] + 1 if item.sop in last else 0
        index = next((i for i in range(start, len(out)) if len(out[i]) < BATCH), len(out))
        if index == len(out):
            out.append([])
        out[index].append(item)
        if item.sop:
            last[item.sop] = index
    return out


@dataclass
class Outcome:
    stored: bool  # stored now or already (same bytes)
    reason: int | None
    detail: str
    sop: str | None  # as the gateway answered (remapped under de-identification)
    url: str | None  # RetrieveURL
    status: str  # the gateway's outcome (0009,1002): STORED, DUPLICATE, FAILED, QUARANTINED


def stow_all(stack: RunningStack, files: list[RealFile], key: bytes | None, **headers: str) -> dict[str, Outcome]:
    """STOW every file in batches; each file's outcome, mapped through the SOP Instance UIDs of the answer."""
    outcomes: dict[str, Outcome] = {}
    for batch in batches(files):
        body = encode_multipart([f.path for f in batch])
        answer = requests.post(
            f"{stack.url}/dicomweb/studies",
            data=body,
            headers={
                "Content-Type": body.content_type,
                "Accept": "application/dicom+json",
                **stack.api_headers,
                **headers,
            },
            timeout=300,
        )
        assert answer.status_code in (200, 202, 409), answer.text
        assert answer.headers["Content-Type"] == "application/dicom+json"
        by_sop = {f.sop: f for f in batch if f.sop}
        if key is not None:
            by_sop |= {remap_uid(f.sop, key): f for f in batch if f.sop}
        pending = list(batch)
        unnamed = []
        items = [(i, True) for i in answer.json().get("00081199", {}).get("Value", [])]
        items += [(i, False) for i in answer.json().get("00081198", {}).get("Value", [])]
        for item, stored in items:
            sop = item.get("00081155", {}).get("Value", [None])[0]
            outcome = Outcome(
                stored,
                item.get("00081197", {}).get("Value", [None])[0],
                item.get("00091001", {}).get("Value", [""])[0],
                sop,
                item.get("00081190", {}).get("Value", [None])[0],
                item["00091002"]["Value"][0],
            )
            if sop in by_sop:
                owner = by_sop[sop]
                assert owner.name not in outcomes, f"two answers for {owner.name}"
                outcomes[owner.name] = outcome
                pending.remove(owner)
            else:
                assert not stored, f"stored an instance no file in the batch names: {sop}"
                unnamed.append(outcome)
        # failures naming no known UID (not DICOM, no UIDs) come in request order, as do the files left
        assert len(unnamed) == len(pending), (len(unnamed), [f.name for f in pending])
        outcomes.update({f.name: o for f, o in zip(pending, unnamed, strict=True)})
    return outcomes


def expectations(
    files: list[RealFile], refused: dict[str, tuple[int, str]]
) -> tuple[dict[str, int | None], dict[str, str]]:
    """Expected Failure Reason per file (None: stored), and for each SOP Instance UID the file whose bytes
    must be served (the first one stored)."""
    expected: dict[str, int | None] = {}
    first: dict[str, RealFile] = {}
    for group in batches(files):  # the order the files are sent in
        for item in group:
            if item.name in refused:
                expected[item.name] = refused[item.name][0]
            elif item.sop in first:
                same = first[item.sop].path.read_bytes() == item.path.read_bytes()
                expected[item.name] = None if same else DUPLICATE_DIFFERENT
            else:
                expected[item.name] = None
                if item.sop:
                    first[item.sop] = item
    return expected, {sop: item.name for sop, item in first.items()}


def check_outcomes(
    files: list[RealFile], outcomes: dict[str, Outcome], refused: dict[str, tuple[int, str]]
) -> dict[str, str]:
    expected, winners = expectations(files, refused)
    assert set(outcomes) == {f.name for f in FILES}
    wrong = {
        name: (expected[name], outcome.reason, outcome.detail)
        for name, outcome in outcomes.items()
        if (None if outcome.stored else outcome.reason) != expected[name]
    }
    assert not wrong, wrong
    return winners


def multipart_parts(response: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part, parsed with the standard library's MIME parser."""
    header = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(header + response.content)
    assert message.is_multipart()
    return [(str(part["Content-Type"]).split(";")[0], part.get_payload(decode=True)) for part in message.get_payload()]


def stored_url(stack: RunningStack, retrieve_url: str) -> str:
    """The RetrieveURL under the API-key root (RetrieveURLs may be paths or absolute URLs)."""
    return f"{stack.url}/dicomweb/studies/" + retrieve_url.split("/studies/", 1)[1]


def get(stack: RunningStack, url: str, accept: str) -> requests.Response:
    return requests.get(url, headers={"Accept": accept, **stack.api_headers}, timeout=60)


def display_values(ds: Dataset) -> np.ndarray:
    """Frame 1 as a viewer shows it, through pydicom's own dataset functions (the whole file read, not the
    gateway's frame ranges and metadata): RGB, or the monochrome values after the modality and VOI transforms."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's notes on padding and odd lengths: not our subject
        pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames") or 1) > 1:
        pixels = pixels[0]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        return np.asarray(apply_color_lut(pixels, ds), dtype=np.float64)
    if pixels.ndim == 3:
        return pixels.astype(np.float64)
    shown = np.asarray(apply_voi_lut(apply_modality_lut(pixels, ds), ds), dtype=np.float64)
    return -shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


def assert_renders_as_pydicom_decodes(ds: Dataset, png: bytes) -> None:
    """The rendered PNG shows frame 1: colours within a few levels of pydicom's (scaled to 8 bits), grey levels in
    step with pydicom's display values (windows clip, so grey levels are compared by correlation where they vary)."""
    image = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float64)
    expected = display_values(ds)
    assert image.shape == expected.shape, (image.shape, expected.shape)
    if expected.ndim == 3:
        scale = 255.0 / max(float(expected.max()), 255.0) if expected.max() > 255 else 1.0
        if ds.PhotometricInterpretation != "PALETTE COLOR" and int(ds.BitsStored) > 8:
            scale = 255.0 / (2 ** int(ds.BitsStored) - 1)
        elif ds.PhotometricInterpretation == "PALETTE COLOR" and int(ds.RedPaletteColorLookupTableDescriptor[2]) > 8:
            scale = 255.0 / 65535
        assert float(np.abs(image - expected * scale).mean()) <= 3.0
        return
    if np.ptp(expected) == 0:  # one value everywhere: one grey level
        assert np.ptp(image) == 0
        return
    assert np.ptp(image) > 0, "a uniform picture of varying values"
    inside = (image > 0) & (image < 255)  # where the window did not clip
    if inside.sum() > 16 and np.ptp(expected[inside]) > 0 and np.ptp(image[inside]) > 0:
        assert float(np.corrcoef(image[inside], expected[inside])[0, 1]) >= 0.98
    else:  # clipped almost everywhere: what is brighter must still be brighter
        assert float(np.corrcoef(image.ravel(), expected.ravel())[0, 1]) >= 0.9


def expected_frames(ds: Dataset) -> list[bytes] | None:
    """What frames/N must answer, from pydicom; None when the frames are documented as not servable. Big-endian
    frames are little endian (PS3.18 8.7.3); pydicom has inflated a deflated file's already. A 1-bit frame is the
    pixels pydicom decodes, packed from a byte boundary (README, frames)."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    count = int(ds.get("NumberOfFrames") or 1)
    if ts in NATIVE_SYNTAXES:
        if ds.BitsAllocated == 1:
            return [pack_bits(frame.ravel(), pad=False) for frame in ds.pixel_array.reshape(count, -1)]
        size = get_expected_length(ds, "bytes") // count
        pixels = little_endian(ds, ds["PixelData"], pixel_data=True)
        return [pixels[n * size : (n + 1) * size] for n in range(count)]
    return list(generate_frames(ds.PixelData, number_of_frames=count))


_WORD = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def little_endian(ds: Dataset, element: Any, *, pixel_data: bool = False) -> bytes:
    """A binary value as a client is sent it: a big-endian file's words swapped, Pixel Data's by Bits Allocated
    (PS3.5 8.1.1: an 8-bit OW value is stored in swapped words), other values' by their VR."""
    value: bytes = element.value
    if str(ds.file_meta.TransferSyntaxUID) != EXPLICIT_VR_BE:
        return value
    bits = int(ds.BitsAllocated) if pixel_data else 0
    word = bits // 8 if bits >= 16 else _WORD.get(str(element.VR), 1)
    return value if word == 1 else np.frombuffer(value, f">u{word}").astype(f"<u{word}").tobytes()


def little_endian_at(ds: Dataset, path: str) -> bytes:
    """``value_at`` as served: in little endian."""
    parts = path.split("/")
    top = ds
    for tag, index in zip(parts[:-1:2], parts[1::2], strict=True):
        ds = ds[int(tag, 16)].value[int(index)]
    return little_endian(top, ds.get_item(int(parts[-1], 16)), pixel_data=path in PIXEL_TAGS)


def value_at(ds: Dataset, path: str) -> bytes:
    """pydicom's value bytes of the element a BulkDataURI path names (``00880200/0/7FE00010``)."""
    parts = path.split("/")
    for tag, index in zip(parts[:-1:2], parts[1::2], strict=True):
        ds = ds[int(tag, 16)].value[int(index)]
    element = ds.get_item(int(parts[-1], 16))
    assert element is not None
    value = element.value
    assert isinstance(value, bytes)
    return value


def bulkdata_uris(dataset: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, entry in dataset.items():
        if "BulkDataURI" in entry:
            yield prefix + key, entry["BulkDataURI"]
        for index, item in enumerate(entry.get("Value", []) if entry.get("vr") == "SQ" else []):
            yield from bulkdata_uris(item, f"{prefix}{key}/{index}/")


def pydicom_json(dataset: dict[str, Any]) -> dict[str, Any]:
    """pydicom's DICOM JSON in the gateway's documented form: an empty sequence has no Value, an empty value among
    several is null (PS3.18 F.2.5; pydicom writes ""), a name holds only its groups with a component (pydicom
    writes an empty Alphabetic group; a name of delimiters only is an empty value), no group length, no padding
    around AE, CS, LO and SH values."""
    out = {}
    for key, entry in dataset.items():
        if key.endswith("0000"):
            continue
        entry = dict(entry)
        if entry.get("vr") == "PN" and "Value" in entry:
            names = [{g: t for g, t in name.items() if t.strip("^ ")} or "" for name in entry["Value"]]
            entry["Value"] = names
            if names == [""]:
                del entry["Value"]
        if entry.get("vr") in ("AE", "CS", "LO", "SH") and "Value" in entry:  # spaces around each value are padding
            entry["Value"] = [v.strip(" ") if isinstance(v, str) else v for v in entry["Value"]]
            if entry["Value"] == [""]:
                del entry["Value"]
        values = entry.get("Value")
        if entry.get("vr") != "SQ" and isinstance(values, list) and len(values) > 1:
            entry["Value"] = [None if value == "" else value for value in values]
        if entry.get("vr") == "SQ":
            items = [pydicom_json(item) for item in entry.pop("Value", [])]
            if items:
                entry["Value"] = items
        out[key] = entry
    return out


def inline(dataset: dict[str, Any], fetched: dict[str, bytes], prefix: str = "") -> dict[str, Any]:
    """The gateway's DICOM JSON with each BulkDataURI replaced by the bytes it answered, as InlineBinary."""
    out = {}
    for key, entry in dataset.items():
        entry = dict(entry)
        if "BulkDataURI" in entry:
            del entry["BulkDataURI"]
            entry["InlineBinary"] = base64.b64encode(fetched[prefix + key]).decode("ascii")
        elif entry.get("vr") == "SQ" and "Value" in entry:
            entry["Value"] = [inline(item, fetched, f"{prefix}{key}/{n}/") for n, item in enumerate(entry["Value"])]
        out[key] = entry
    return out


def check_served(stack: RunningStack, item: RealFile, url: str) -> tuple[int, int]:
    """Compare everything served for one stored file with pydicom; returns (frames, BulkDataURIs) compared."""
    data = item.path.read_bytes()
    ds = pydicom.dcmread(item.path)
    ts = str(ds.file_meta.TransferSyntaxUID)
    whole = get(stack, url, "application/dicom")
    assert whole.status_code == 200, whole.text
    # no parameter means Explicit VR Little Endian (PS3.18 8.7.3.5.2): any other stored syntax is named
    labelled = "application/dicom" if ts == EXPLICIT_VR_LE else f"application/dicom; transfer-syntax={ts}"
    assert whole.headers["Content-Type"] == labelled
    assert whole.content == data
    study, series, sop = url.split("/studies/", 1)[1].replace("/series/", "/").replace("/instances/", "/").split("/")
    wado = requests.get(
        f"{stack.url}/dicomweb/wado",
        params={
            "requestType": "WADO",
            "studyUID": study,
            "seriesUID": series,
            "objectUID": sop,
            "contentType": "application/dicom",
        },
        headers=stack.api_headers,
        timeout=60,
    )
    assert wado.status_code == 200 and wado.content == data, wado.text[:200]
    assert wado.headers["Content-Type"] == labelled
    # rendered: an image showing what pydicom decodes, or a JSON 406 for no image or one listed in NOT_RENDERED;
    # never a 5xx, never a picture of the wrong values
    rendered = get(stack, f"{url}/rendered", "image/png")
    image = any(keyword in ds for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    refused = not image or item.name in NOT_RENDERED
    assert (rendered.status_code, rendered.headers["Content-Type"]) == (
        (406, "application/json") if refused else (200, "image/png")
    ), (item.name, rendered.status_code, rendered.text[:200])
    if rendered.status_code == 200:
        try:
            assert_renders_as_pydicom_decodes(ds, rendered.content)
        except AssertionError as failure:
            raise AssertionError(f"{item.name}: rendered is not what pydicom decodes: {failure}") from None

    answer = get(stack, f"{url}/metadata", "application/dicom+json")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/dicom+json"
    [metadata] = answer.json()
    uris = dict(bulkdata_uris(metadata))
    fetched = {}
    for path, uri in uris.items():
        assert uri == f"{url}/bulkdata/{path}"
        if path == "7FE00010" and ts not in NATIVE_SYNTAXES:
            # encapsulated Pixel Data: its bulkdata is its frames, the bytes of the frames resource (PS3.18 8.7.3.3)
            answer = get(stack, uri, 'multipart/related; type="application/octet-stream"; transfer-syntax=*')
            wanted = expected_frames(ds)
            if wanted is None:
                assert (answer.status_code, answer.json()["error"]) == (406, "frames_not_servable"), path
            else:
                assert answer.status_code == 200, (path, answer.text[:200])
                assert [body for _, body in multipart_parts(answer)] == wanted, path
            fetched[path] = value_at(ds, path)  # what the metadata's own comparison below expects inline
            continue
        answer = get(stack, uri, "application/octet-stream")
        assert answer.status_code == 200, (path, answer.text)
        assert answer.headers["Content-Type"].split(";")[0] == "application/octet-stream"
        assert answer.content == little_endian_at(ds, path), path
        fetched[path] = value_at(ds, path)  # as pydicom inlines it below (a big-endian file's in big endian)
    # The whole data set, at every depth, is what pydicom makes of it (binary values inline on both sides).
    with quiet_validation():  # as the gateway decodes: pydicom's validation warnings are not errors here
        expected = pydicom_json(ds.to_json_dict())
    assert inline(metadata, fetched) == expected
    # QIDO's instance-level attributes are the metadata's (sequences hold the subset PS3.18 Table 10.6.1-5 names)
    found = get(stack, f"{url.rsplit('/', 1)[0]}?SOPInstanceUID={sop}&includefield=all", "application/dicom+json")
    assert found.status_code == 200, found.text[:200]
    [attrs] = found.json()
    for key, value in attrs.items():
        if key in metadata and value.get("vr") != "SQ":
            assert value == metadata[key], key

    if "PixelData" not in ds:
        return 0, len(uris)
    frames = expected_frames(ds)
    if frames is None:
        answer = get(stack, f"{url}/frames/1", "application/octet-stream")
        assert answer.status_code == 406, answer.text
        assert answer.headers["Content-Type"] == "application/json"
        return 0, len(uris)
    native = ts in NATIVE_SYNTAXES
    accept = "application/octet-stream" if native else f"{frame_media_type(ts)}; transfer-syntax={ts}"
    for number, frame in enumerate(frames, 1):
        answer = get(stack, f"{url}/frames/{number}", accept)
        assert answer.status_code == 200, (number, answer.text)
        assert answer.headers["Content-Type"].split(";")[0] == accept.split(";")[0]
        assert answer.content == frame, f"frame {number}"
    # OHIF's request: multipart, any transfer syntax; the frame as stored
    ohif = get(stack, f"{url}/frames/1", "multipart/related; type=application/octet-stream; transfer-syntax=*")
    assert ohif.status_code == 200, ohif.text[:200]
    [(_, body)] = multipart_parts(ohif)
    assert body == frames[0]
    return len(frames), len(uris)


def test_every_pydicom_file_is_stored_and_served_as_pydicom_reads_it_or_refused_as_listed(
    stack: RunningStack,
) -> None:
    assert len(FILES) > 100  # the suite really sees pydicom's files
    # Reversed on S3: another file of each shared SOP Instance UID is the one stored (big-endian variants...)
    files = FILES if stack.backend == "file" else FILES[::-1]
    outcomes = stow_all(stack, files, None)
    winners = check_outcomes(files, outcomes, REFUSED)
    by_name = {f.name: f for f in FILES}
    compared = [0, 0]
    for sop, name in winners.items():
        url = outcomes[name].url
        assert url is not None and sop in url
        frames, uris = check_served(stack, by_name[name], stored_url(stack, url))
        compared = [compared[0] + frames, compared[1] + uris]
    assert len(winners) > 80 and compared[0] > 50 and compared[1] > 30, (len(winners), compared)
    # Each study retrieved whole (multipart, the way viewers prefetch) holds exactly its stored files' bytes.
    studies: dict[str, list[bytes]] = {}
    for name in winners.values():
        study = (outcomes[name].url or "").split("/studies/", 1)[1].split("/")[0]
        studies.setdefault(study, []).append(by_name[name].path.read_bytes())
    for study, expected in studies.items():
        answer = get(stack, f"{stack.url}/dicomweb/studies/{study}", 'multipart/related; type="application/dicom"')
        assert answer.status_code == 200, answer.text[:200]
        parts = multipart_parts(answer)
        assert {ct for ct, _ in parts} == {"application/dicom"}, study
        assert sorted(body for _, body in parts) == sorted(expected), study
    # A second round changes nothing: the same answers (successes now DUPLICATE), still one instance and the
    # first file's bytes under each SOP Instance UID.
    again = stow_all(stack, files, None)
    assert {n: (o.stored, o.reason) for n, o in again.items()} == {
        n: (o.stored, o.reason) for n, o in outcomes.items()
    }
    assert {o.status for o in again.values() if o.stored} == {"DUPLICATE"}
    for sop, name in winners.items():
        url = stored_url(stack, outcomes[name].url or "")
        assert get(stack, url, "application/dicom").content == by_name[name].path.read_bytes(), name
        found = requests.get(
            f"{stack.url}/dicomweb/instances", params={"SOPInstanceUID": sop}, headers=stack.api_headers, timeout=10
        )
        assert found.status_code == 200 and len(found.json()) == 1, name


@pytest.fixture(scope="module", params=["file", "s3"])
def deid_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer
) -> Iterator[RunningStack]:
    base = tmp_path_factory.mktemp("real-deid")
    policy = base / "policy.toml"
    policy.write_text(DEID_POLICY)
    running = start_stack(base / "stack", request.param, moto_server, DICOMGW_PHI_POLICY=str(policy))
    running.uploaded["policy"] = policy
    yield running
    running.stack.stop()


def test_every_pydicom_file_under_a_deidentifying_policy_rescans_clean_or_is_refused_as_listed(
    deid_stack: RunningStack,
) -> None:
    key = deid_stack.stack.deid_key.encode()
    refused = {**REFUSED, **DEID_REFUSED}
    files = FILES if deid_stack.backend == "file" else FILES[::-1]
    outcomes = stow_all(deid_stack, files, key, **{"X-DICOMGW-Tenant": "t", "X-DICOMGW-Region": "eu-west-1"})
    winners = check_outcomes(files, outcomes, refused)
    assert len(winners) > 60, len(winners)  # the policy really stores most files
    policy = load_policy(deid_stack.uploaded["policy"])
    with tempfile.TemporaryDirectory() as folder:
        for sop, name in winners.items():
            outcome = outcomes[name]
            assert outcome.sop == remap_uid(sop, key), name
            answer = get(deid_stack, stored_url(deid_stack, outcome.url or ""), "application/dicom")
            assert answer.status_code == 200
            copy = Path(folder) / "out.dcm"
            copy.write_bytes(answer.content)
            report = scan_file(copy, policy)
            assert report.clean, (name, report.to_dict())
            out = pydicom.dcmread(copy)
            assert out.SOPInstanceUID == outcome.sop and out.PatientIdentityRemoved == "YES"
            # and the de-identified instance is served as pydicom reads it, like any other
            check_served(deid_stack, RealFile(name, copy, outcome.sop), stored_url(deid_stack, outcome.url or ""))


@pytest.mark.parametrize(
    ("vr", "detail"),
    [
        (b"UA", "file meta element (0002,0013) has an invalid VR"),
        (b"FD", "file meta element (0002,0013) cannot be decoded by pydicom"),
    ],
)
def test_a_file_pydicom_cannot_read_is_refused_and_never_served(
    stack: RunningStack, tmp_path: Path, vr: bytes, detail: str
) -> None:
    source = TEST_FILES / "CT_small.dcm"
    data = source.read_bytes()
    at = data.index(b"\x02\x00\x13\x00SH")  # Implementation Version Name, 10 bytes (not a multiple of 8)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(data[: at + 4] + vr + data[at + 6 :])
    sop = str(pydicom.dcmread(source).SOPInstanceUID)
    with pytest.raises((NotImplementedError, BytesLengthException)):
        pydicom.dcmread(broken).file_meta[0x00020013].value  # noqa: B018 - what a pydicom client would hit
    answer = stack.stow([broken])
    assert answer.status_code == 409
    assert answer.headers["Content-Type"] == "application/dicom+json"
    [failed] = answer.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [CANNOT_UNDERSTAND]
    assert failed["00091001"]["Value"] == [detail]
    found = requests.get(
        f"{stack.url}/dicomweb/instances", params={"SOPInstanceUID": sop}, headers=stack.api_headers, timeout=10
    )
    assert found.status_code == 200
    # CT_small itself may be stored by the suite above: then it is still its own bytes, never the broken copy
    for item in found.json():
        study, series = item["0020000D"]["Value"][0], item["0020000E"]["Value"][0]
        url = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        assert get(stack, url, "application/dicom").content == data


def test_upload_cli_under_a_deidentifying_policy_reports_each_file_stored(
    deid_stack: RunningStack, tmp_path: Path
) -> None:
    """``dicom-gateway upload`` matched the answer's items to its files by SOP Instance UID, and a de-identified
    instance is stored under a new one: every file was reported "not acknowledged in the server's response" (exit
    1) although stored. Each item now names the UID its file was sent with (private (0009,1003)); the answer stays
    a 202 with Warning Reason 0xB000 (coerced), and a second run finds them all stored already."""
    import os
    import subprocess
    import sys

    from gateway.tools.synth import make_series

    seed = 181 if deid_stack.backend == "file" else 182
    files = make_series(tmp_path / "deid-cli", modality="CT", slices=3, rows=16, columns=16, seed=seed)
    command = [sys.executable, "-m", "gateway.cli", "upload", str(tmp_path / "deid-cli"), "--url"]
    command.append(f"{deid_stack.url}/dicomweb")
    env = {**os.environ, "DICOMGW_API_KEY": deid_stack.stack.api_key, "COLUMNS": "400"}
    first = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "not acknowledged" not in first.stdout
    key = deid_stack.stack.deid_key.encode()
    for path in files:
        stored_sop = remap_uid(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID, key)
        found = requests.get(
            f"{deid_stack.url}/dicomweb/instances",
            params={"SOPInstanceUID": stored_sop},
            headers=deid_stack.api_headers,
            timeout=10,
        )
        assert found.status_code == 200 and len(found.json()) == 1, path.name
    second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already" in second.stdout.lower()
