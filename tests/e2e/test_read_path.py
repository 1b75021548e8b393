"""Issue 6 through the real NGINX on both storage backends: exact bytes for every frame-index variant,
bulkdata with and without Range, retrieve, metadata, WADO-URI, negotiation, and failure without corruption."""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import hashlib
import io
import json
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image

from gateway.render import THUMBNAIL_SIZE
from gateway.tools.synth import make_series, wsi_tile
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack

WSI_VARIANTS = {  # fixture key -> (seed, frames, native)
    "wsi_bot": (13, 300, False),
    "wsi_empty": (14, 300, False),
    "wsi_eot": (15, 300, False),
    "wsi_frag": (16, 200, False),
    "wsi_empty_frag": (17, 200, False),
    "wsi_native": (18, 12, True),
}


def parse_multipart(response: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type exactly as sent, body) of each part, parsed with the standard library's MIME parser."""
    header = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(header + response.content)
    assert message.is_multipart()
    return [(str(part["Content-Type"]), part.get_payload(decode=True)) for part in message.get_payload()]


@pytest.fixture(scope="module")
def roots(stack: RunningStack, synthetic: dict[str, Any]) -> dict[str, str]:
    """A token root per study used below."""
    studies = {uids_of(p)[0] for p in [synthetic["ct"][0], synthetic["mr"][0]]}
    studies |= {uids_of(synthetic[k])[0] for k in WSI_VARIANTS}
    return {study: stack.root(stack.issue([study])["token"]) for study in studies}


def instance_url(roots: dict[str, str], path: Path) -> str:
    study, series, sop = uids_of(path)
    return f"{roots[study]}/studies/{study}/series/{series}/instances/{sop}"


@pytest.mark.parametrize("variant", list(WSI_VARIANTS))
def test_frames_exact_bytes_for_every_index_variant(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str], variant: str
) -> None:
    seed, frames, native = WSI_VARIANTS[variant]
    url = instance_url(roots, synthetic[variant])
    accept = "application/octet-stream" if native else "image/jpeg"
    for number in (1, frames // 2, frames):
        answer = requests.get(f"{url}/frames/{number}", headers={"Accept": accept}, timeout=30)
        assert answer.status_code == 200, answer.text
        expected = wsi_tile(seed, number, frames=frames, native=native)
        assert answer.content == expected, f"frame {number}"
        assert answer.headers["Content-Type"].split(";")[0] == accept
    missing = requests.get(f"{url}/frames/{frames + 1}", headers={"Accept": accept}, timeout=30)
    assert missing.status_code == 404


def test_frame_list_is_multipart_in_order(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    url = instance_url(roots, synthetic["wsi_frag"])
    answer = requests.get(f"{url}/frames/5,1,200", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"; boundary=')
    parts = parse_multipart(answer)
    assert [body for _, body in parts] == [wsi_tile(16, n, frames=200) for n in (5, 1, 200)]
    assert all(ct == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50" for ct, _ in parts)


@pytest.mark.parametrize("separator", ["%2C", "%2c"])
def test_a_frame_list_separated_by_an_encoded_comma(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str], separator: str
) -> None:
    """PS3.18 8.3.1: {frameList} is "a comma or %2C separated list". Any other percent-encoding in a path stays a
    400 (README: NGINX and Python can never read a path differently)."""
    url = instance_url(roots, synthetic["wsi_frag"])
    answer = requests.get(f"{url}/frames/5{separator}1{separator}200", timeout=30)
    assert answer.status_code == 200, answer.text[:200]
    assert [body for _, body in parse_multipart(answer)] == [wsi_tile(16, n, frames=200) for n in (5, 1, 200)]
    hostile = [f"frames/5{separator}", f"frames/5{separator}{separator}1", "frames/5%252C1"]
    for path in [*hostile, f"bulkdata/7FE00010{separator}1"]:
        refused = requests.get(f"{url}/{path}", timeout=30)
        assert (refused.status_code, refused.headers["Content-Type"]) == (400, "application/json"), path
        assert refused.json() == {"error": "bad_request", "detail": "the request path is not canonical"}


def test_ct_frame_matches_pixel_data(stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]) -> None:
    path = synthetic["ct"][2]
    ds = pydicom.dcmread(path)
    ohif = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    answer = requests.get(f"{instance_url(roots, path)}/frames/1", headers={"Accept": ohif}, timeout=30)
    assert answer.status_code == 200
    [(content_type, body)] = parse_multipart(answer)
    assert content_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert body == ds.PixelData


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ('multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1', 200),
        ("multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50", 406),
        ("image/png", 406),
        ("text/html, application/octet-stream;q=0.5", 200),
        # q=0 is "not acceptable" (RFC 9110 12.4.2): refusals only are a 406, not the default representation
        ("*/*;q=0", 406),
        ("multipart/related;q=0, application/octet-stream;q=0", 406),
    ],
)
def test_frame_accept_negotiation(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str], accept: str, status: int
) -> None:
    answer = requests.get(f"{instance_url(roots, synthetic['ct'][0])}/frames/1", headers={"Accept": accept}, timeout=30)
    assert answer.status_code == status


def test_json_refused_with_q_zero_is_a_406(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """QIDO and metadata answer only DICOM JSON: a client refusing it (q=0) gets a 406, not JSON."""
    url = instance_url(roots, synthetic["ct"][0])
    for target in (f"{url}/metadata", url.rsplit("/instances/", 1)[0] + "/instances"):
        answer = requests.get(target, headers={"Accept": "application/dicom+json;q=0"}, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (406, "application/json"), target


def test_a_q_value_outside_rfc_9110s_grammar_is_refused_as_q_abc_is(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """RFC 9110 12.4.2's qvalue is 0 to 1 with at most three decimals: `q=abc` was a 406, `q=2`, `q=1.5` and
    `q=0.5555` a 200 (weighed 1 or as written). Every q outside the grammar is now what `q=abc` is."""
    search = instance_url(roots, synthetic["ct"][0]).rsplit("/instances/", 1)[0] + "/instances"
    refused = {
        "error": "not_acceptable",
        "detail": 'this resource is answered as application/dicom+json, application/json or multipart/related; '
        'type="application/dicom+xml"',
    }
    for q in ("abc", "2", "1.5", "-1", "0.5555"):
        answer = requests.get(search, headers={"Accept": f"application/dicom+json;q={q}"}, timeout=30)
        assert (answer.status_code, answer.json()) == (406, refused), q
    for q in ("1", "0.555", "1.000", ".2"):
        answer = requests.get(search, headers={"Accept": f"application/dicom+json;q={q}"}, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/dicom+json"), q


def test_accept_query_parameter_wins(stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]) -> None:
    url = f"{instance_url(roots, synthetic['ct'][0])}/frames/1"
    answer = requests.get(
        url, params={"accept": "application/octet-stream"}, headers={"Accept": "image/png"}, timeout=30
    )
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"


def test_accept_query_parameter_with_a_literal_plus(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """A hyperlink written as `?accept=application/dicom+json` keeps its "+" (RFC 3986; PS3.18 8.3 expands query
    parameters per RFC 6570, which never writes a space as "+"); it was read as a form, as "application/dicom json",
    and answered 406 by QIDO, metadata and the read plans."""
    study, series, sop = uids_of(synthetic["ct"][0])
    root = roots[study]
    instance = instance_url(roots, synthetic["ct"][0])
    for url in (f"{root}/studies?accept=application/dicom+json", f"{instance}/metadata?accept=application/dicom+json"):
        answer = requests.get(url, timeout=30)
        assert answer.status_code == 200, (url, answer.text[:200])
        assert answer.headers["Content-Type"] == "application/dicom+json"
    xml = requests.get(f"{root}/studies?accept=multipart/related;type=%22application/dicom+xml%22", timeout=30)
    assert xml.status_code == 200  # the "+" of XML's type too (PS3.18 Table 10.6.4-1 requires it of QIDO)
    assert xml.headers["Content-Type"].startswith('multipart/related; type="application/dicom+xml"; boundary=')
    frames = requests.get(f"{instance}/frames/1?accept=multipart/related;type=application/octet-stream", timeout=30)
    assert frames.status_code == 200 and frames.headers["Content-Type"].startswith("multipart/related")


def test_bulkdata_ranges(stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]) -> None:
    path = synthetic["ct"][1]
    pixels = pydicom.dcmread(path).PixelData
    url = f"{instance_url(roots, path)}/bulkdata/7FE00010"
    whole = requests.get(url, headers={"Accept": "application/octet-stream"}, timeout=30)
    assert whole.status_code == 200
    assert whole.content == pixels
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["Cache-Control"] == "private, no-cache"
    frame = requests.get(f"{instance_url(roots, path)}/frames/1", timeout=30)
    assert frame.status_code == 200 and frame.headers["Cache-Control"] == "private, no-cache"
    # bulkdata has no validator for an If-Range to match: the whole value, never a part of something unchecked
    for validator in ('"d41d8cd98f00b204"', "Sat, 05 Dec 2026 00:00:00 GMT"):
        headers = {"Accept": "application/octet-stream", "Range": "bytes=100-1099", "If-Range": validator}
        resumed = requests.get(url, headers=headers, timeout=30)
        assert resumed.status_code == 200, validator
        assert resumed.content == pixels and "Content-Range" not in resumed.headers
    part = requests.get(url, headers={"Accept": "application/octet-stream", "Range": "bytes=100-1099"}, timeout=30)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(pixels)}"
    assert part.content == pixels[100:1100]
    upper = requests.get(url, headers={"Accept": "application/octet-stream", "Range": "BYTES=100-1099"}, timeout=30)
    assert (upper.status_code, upper.content) == (206, pixels[100:1100])  # RFC 9110 14.1: any case
    tail = requests.get(url, headers={"Range": "bytes=-10"}, timeout=30)
    assert tail.status_code == 206
    assert tail.content == pixels[-10:]
    beyond = requests.get(url, headers={"Range": f"bytes={len(pixels)}-"}, timeout=30)
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(pixels)}"
    multi = requests.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'}, timeout=30)
    assert multi.status_code == 200
    assert [body for _, body in parse_multipart(multi)] == [pixels]
    multi_range = {"Accept": 'multipart/related; type="application/octet-stream"', "Range": "bytes=100-1099"}
    ranged = requests.get(url, headers=multi_range, timeout=30)
    assert ranged.status_code == 206 and "Content-Range" not in ranged.headers
    assert ranged.headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"; boundary=')
    header = f"Content-Type: {ranged.headers['Content-Type']}\r\n\r\n".encode()
    [one] = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(header + ranged.content).get_payload()
    assert one["Content-Range"] == f"bytes 100-1099/{len(pixels)}"
    assert one["Content-Type"] == "application/octet-stream" and one.get_payload(decode=True) == pixels[100:1100]


def test_retrieve_instance_single_part_with_range(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    path = synthetic["mr"][0]
    data = path.read_bytes()
    url = instance_url(roots, path)
    answer = requests.get(url, headers={"Accept": "application/dicom"}, timeout=30)
    assert answer.status_code == 200
    assert answer.content == data
    assert answer.headers["Content-Length"] == str(len(data))
    # revalidated, never kept: the same URL may name other bytes after a DELETE and a new upload
    assert answer.headers["Cache-Control"] == "private, no-cache"
    etag = answer.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    ranged = requests.get(url, headers={"Accept": "application/dicom", "Range": "bytes=128-131"}, timeout=30)
    assert ranged.status_code == 206
    assert ranged.content == b"DICM"
    # the range unit is case-insensitive (RFC 9110 14.1): "BYTES=" was ignored, the whole object sent
    for unit in ("BYTES", "Bytes"):
        upper = requests.get(url, headers={"Accept": "application/dicom", "Range": f"{unit}=128-131"}, timeout=30)
        assert (upper.status_code, upper.content) == (206, b"DICM"), unit
    again = requests.get(url, headers={"Accept": "application/dicom", "If-None-Match": etag}, timeout=30)
    assert again.status_code == 304
    # with If-Range, the whole object (S3 has no If-Range: a range of a replaced object was sent before), and a
    # malformed or unsatisfiable Range next to it never turns into an error body
    for validator in (etag, '"other"'):
        for wanted in ("bytes=128-131", "bytes=abc", f"bytes={len(data)}-", "bytes=0-9,x"):
            headers = {"Accept": "application/dicom", "Range": wanted, "If-Range": validator}
            resumed = requests.get(url, headers=headers, timeout=30)
            assert (resumed.status_code, resumed.content) == (200, data), (validator, wanted)
            assert resumed.headers["ETag"] == etag and "Content-Range" not in resumed.headers
    for malformed in ("bytes=abc", "bytes=-", "bytes=0-9,x", "bytes=1-2x"):
        whole = requests.get(url, headers={"Accept": "application/dicom", "Range": malformed}, timeout=30)
        assert (whole.status_code, whole.content) == (200, data), malformed


def test_a_whole_objects_if_none_match_is_compared_weakly_on_every_backend(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """If-None-Match compares weakly (RFC 9110 13.1.2, 13.2.1): a browser or a cache that holds the instance under
    ``W/"<etag>"`` (a CDN weakens ETags it compresses), or lists several tags, is answered a 304. On S3 (moto) a
    WADO-RS instance and a WADO-URI object answered 200 and every byte again for both (storage compared them
    strongly and as one tag), and so did a thumbnail; the local folder's origin gave the 304."""
    path = synthetic["mr"][1]
    study, series, sop = uids_of(path)
    wado = f"{roots[study]}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    for target, accept in (
        (instance_url(roots, path), {"Accept": "application/dicom"}),
        (f"{wado}&contentType=application/dicom", {}),
        (f"{roots[study]}/studies/{study}/series/{series}/thumbnail", {}),
    ):
        first = requests.get(target, headers=accept, timeout=30)
        assert first.status_code == 200, target
        etag = first.headers["ETag"]
        assert etag.startswith('"')
        cases = [
            (f"W/{etag}", 304),
            (f'"a", {etag}', 304),
            (f'"a",W/{etag} , "b"', 304),
            (f"{etag}, W/{etag}", 304),
            ('W/"other"', 200),
            ('"a", "b"', 200),
            (f"W/{etag[:-1]}x\"", 200),
        ]
        for condition, status in cases:
            for method in ("GET", "HEAD"):
                answer = requests.request(method, target, headers={**accept, "If-None-Match": condition}, timeout=30)
                assert answer.status_code == status, (target, method, condition, answer.content[:200])
                assert answer.headers["ETag"] == etag
                if status == 304:
                    assert answer.content == b""
                elif method == "GET":
                    assert answer.content == first.content


def test_whole_object_preconditions_are_evaluated(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """A whole stored object (single-part instance, WADO-URI, thumbnail) carries ETag and Last-Modified, so every
    precondition on them is evaluated (RFC 9110 13.1, 13.2.1): If-Match and If-Unmodified-Since were dropped on
    the way to storage (a 200 where 412 is due; metadata, from Python, gave the 412), If-Modified-Since too (a
    200 where a cache asked for a 304). Beside If-None-Match, If-Modified-Since is not evaluated (13.2.2)."""
    path = synthetic["mr"][1]
    study, series, sop = uids_of(path)
    url = instance_url(roots, path)
    wado = f"{roots[study]}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    targets = [
        (url, {"Accept": "application/dicom"}),
        (f"{wado}&contentType=application/dicom", {}),
        (f"{roots[study]}/studies/{study}/series/{series}/thumbnail", {}),
    ]
    for target, accept in targets:
        first = requests.get(target, headers=accept, timeout=30)
        assert first.status_code == 200, target
        etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
        later = first.headers["Date"]  # after the object was stored, and not in the future
        if parsedate_to_datetime(later) <= parsedate_to_datetime(modified):
            time.sleep(1.1)
            later = requests.head(target, headers=accept, timeout=30).headers["Date"]
        cases = [
            ({"If-Modified-Since": modified}, 304),
            # not modified since a later date either (RFC 9110 13.1.3): the local origin gave a 200 and the object
            ({"If-Modified-Since": later}, 304),
            ({"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 200),
            ({"If-Match": etag}, 200),
            ({"If-Match": '"other"'}, 412),
            ({"If-Match": "*"}, 200),
            ({"If-Unmodified-Since": modified}, 200),
            ({"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 412),
            # not an HTTP-date: ignored (RFC 9110 13.1.3, 13.1.4)
            ({"If-Modified-Since": "garbage"}, 200),
            ({"If-Unmodified-Since": "garbage"}, 200),
            # If-Modified-Since is not evaluated beside If-None-Match (RFC 9110 13.2.2), as a browser revalidating
            # sends both: S3 (and moto) answered a 304 for another ETag, the local origin a 200 for this one
            ({"If-None-Match": '"other"', "If-Modified-Since": modified}, 200),
            ({"If-None-Match": etag, "If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 304),
        ]
        for condition, status in cases:
            for method in ("GET", "HEAD"):
                answer = requests.request(method, target, headers={**accept, **condition}, timeout=30)
                assert answer.status_code == status, (target, method, condition, answer.content[:200])
                if status == 304:
                    assert answer.headers["ETag"] == etag and answer.content == b""
                elif status == 412 and method == "GET":
                    assert answer.headers["Content-Type"] == "application/json"
                    assert answer.json()["error"] == "precondition_failed"
                elif method == "GET":
                    assert answer.content == first.content
    # what Python answers with an ETag (metadata, rendered): a failed If-Match is our JSON 412, not the whole
    # metadata or image under a 412 status. Metadata's ETag is weak, which If-Match never matches (RFC 9110 13.1.1).
    metadata = (f"{url}/metadata", f"{roots[study]}/studies/{study}/series/{series}/metadata")
    for target in (*metadata, f"{url}/rendered"):
        etag = requests.get(target, timeout=30).headers["ETag"]
        if target in metadata:
            assert etag.startswith('W/"')
        else:
            assert requests.get(target, headers={"If-Match": etag}, timeout=30).status_code == 200
        for refused_tag in ('"other"', etag) if target in metadata else ('"other"',):
            refused = requests.get(target, headers={"If-Match": refused_tag}, timeout=30)
            assert refused.status_code == 412, target
            assert refused.headers["Content-Type"] == "application/json", target
            assert refused.json()["error"] == "precondition_failed"


def test_retrieve_series_and_study_multipart(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    files = sorted(synthetic["ct"], key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    study, series, _ = uids_of(files[0])
    answer = requests.get(f"{roots[study]}/studies/{study}/series/{series}", timeout=60)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    parts = parse_multipart(answer)
    assert [hashlib.sha256(body).hexdigest() for _, body in parts] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    ]
    assert {ct for ct, _ in parts} == {"application/dicom; transfer-syntax=1.2.840.10008.1.2.1"}
    whole = requests.get(
        f"{roots[study]}/studies/{study}",
        headers={"Accept": "multipart/related; type=application/dicom"},
        timeout=60,
    )
    assert whole.status_code == 200
    assert len(parse_multipart(whole)) == len(synthetic["ct"]) + len(synthetic["ct_b"])
    refused = requests.get(
        f"{roots[study]}/studies/{study}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'},
        timeout=60,
    )
    assert refused.status_code == 406


def test_retrieve_of_a_study_in_two_syntaxes_takes_an_accept_naming_both(stack: RunningStack, tmp_path: Path) -> None:
    """PS3.18 8.7.8.2: each part of a retrieve has its own Selected Transfer Syntax. A study holding Explicit VR
    Little Endian and JPEG Baseline instances is served as stored to an Accept that names both syntaxes (a 406
    before: only `transfer-syntax=*` or none matched a mixed study); naming one of them only is still a 406."""
    from pydicom.data import get_testdata_file

    [native] = make_series(tmp_path, modality="CT", slices=1, rows=64, columns=64, seed=165, clean=True)
    dataset = pydicom.dcmread(native)
    jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    # new series and instance UIDs: the test file's own belong to it in test_real_files
    jpeg.StudyInstanceUID = dataset.StudyInstanceUID
    jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    jpeg.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    assert stack.stow([native, tmp_path / "jpeg.dcm"]).status_code == 200
    url = f"{stack.url}/dicomweb/studies/{dataset.StudyInstanceUID}"
    syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"]
    ranges = [f'multipart/related; type="application/dicom"; transfer-syntax={ts}' for ts in syntaxes]
    both = requests.get(url, headers={**stack.api_headers, "Accept": ", ".join(ranges)}, timeout=60)
    assert both.status_code == 200, both.text[:200]
    parts = parse_multipart(both)
    assert sorted(kind for kind, _ in parts) == [f"application/dicom; transfer-syntax={ts}" for ts in syntaxes]
    assert sorted(body for _, body in parts) == sorted([native.read_bytes(), (tmp_path / "jpeg.dcm").read_bytes()])
    for one in ranges:
        assert requests.get(url, headers={**stack.api_headers, "Accept": one}, timeout=60).status_code == 406


def test_a_406_names_the_representations_there_are(stack: RunningStack, tmp_path: Path) -> None:
    """RFC 9110 15.5.7: a 406 lists the representations the resource has, so the client can choose. A study asked
    for as `application/dicom` (curl's and many scripts' first try: a study is multipart only), a JPEG frame as
    `image/jp2` and a mixed study naming one of its syntaxes were all a 406 "none of the accepted media types can
    be produced from the stored data (no transcoding)", which named nothing to ask for instead; now the detail
    names each representation as a client writes it in an Accept, and the first one named is served."""
    from pydicom.data import get_testdata_file

    [native] = make_series(tmp_path, modality="CT", slices=1, rows=64, columns=64, seed=166, clean=True)
    dataset = pydicom.dcmread(native)
    jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    jpeg.StudyInstanceUID = dataset.StudyInstanceUID
    jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    jpeg.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    assert stack.stow([native]).status_code == 200
    study = f"{stack.url}/dicomweb/studies/{dataset.StudyInstanceUID}"
    headers = stack.api_headers
    refused = "none of the accepted media types can be produced from the stored data (no transcoding): "

    def refusal(url: str, accept: str) -> str:
        answer = requests.get(url, headers={**headers, "Accept": accept}, timeout=60)
        assert (answer.status_code, answer.headers["Content-Type"]) == (406, "application/json"), answer.text[:300]
        assert answer.json()["error"] == "not_acceptable"
        detail: str = answer.json()["detail"]
        assert detail.startswith(refused), detail
        return detail[len(refused) :]

    native_retrieve = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    assert refusal(study, "application/dicom") == f"this resource is answered as {native_retrieve}"
    assert requests.get(study, headers={**headers, "Accept": native_retrieve}, timeout=60).status_code == 200

    assert stack.stow([tmp_path / "jpeg.dcm"]).status_code == 200
    frame = f"{study}/series/{jpeg.SeriesInstanceUID}/instances/{jpeg.SOPInstanceUID}/frames/1"
    baseline = "transfer-syntax=1.2.840.10008.1.2.4.50"
    assert refusal(frame, "image/jp2") == (
        f'this resource is answered as multipart/related; type="image/jpeg"; {baseline}, '
        f'multipart/related; type="application/octet-stream"; {baseline}, image/jpeg; {baseline} '
        f"or application/octet-stream; {baseline}"
    )
    served = requests.get(frame, headers={**headers, "Accept": f'multipart/related; type="image/jpeg"; {baseline}'})
    assert served.status_code == 200
    assert [kind for kind, _ in parse_multipart(served)] == [f"image/jpeg; {baseline}"]

    # a study of two syntaxes needs both named: the 406 of one named the other alone
    mixed = refusal(study, native_retrieve)
    assert mixed == (
        'this study is answered as multipart/related; type="application/dicom", each part in its instance\'s '
        "transfer syntax (PS3.18 8.7.8.2): accept each of 1.2.840.10008.1.2.1, 1.2.840.10008.1.2.4.50, "
        "or transfer-syntax=*"
    )


def test_encapsulated_uncompressed_frames_are_explicit_little_endian_without_their_pad(
    stack: RunningStack, tmp_path: Path
) -> None:
    """Encapsulated Uncompressed Explicit VR Little Endian (1.2.840.10008.1.2.1.98, PS3.5 A.4.11) holds each frame's
    native pixels in one fragment, a frame of odd length followed by a pad byte. Its 15-byte frames (3 x 5, 8 bits)
    were served as the 16-byte fragments, pad included, and named by the file's syntax, so `transfer-syntax=
    1.2.840.10008.1.2.1` (which Orthanc answers, naming its frames so) was a 406, and Cornerstone's older image
    loaders had no decoder for the name. They are now the frames' 15 bytes, named Explicit VR Little Endian, as
    rendering already read them."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate

    frames = [bytes(range(1 + 20 * n, 16 + 20 * n)) for n in range(2)]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.98"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.Modality, ds.PatientID = "OT", "ENCAPSULATED-UNCOMPRESSED"
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.SamplesPerPixel = 3, 5, 2, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "encapsulated.dcm", enforce_file_format=True)
    assert stack.stow([tmp_path / "encapsulated.dcm"]).status_code == 200
    url = f"{stack.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    url += f"/instances/{ds.SOPInstanceUID}/frames"
    explicit = "transfer-syntax=1.2.840.10008.1.2.1"

    one = requests.get(f"{url}/1", headers={**stack.api_headers, "Accept": "application/octet-stream"}, timeout=30)
    assert (one.status_code, one.headers["Content-Type"]) == (200, f"application/octet-stream; {explicit}")
    assert one.content == frames[0]
    tail = requests.get(
        f"{url}/2", headers={**stack.api_headers, "Accept": "application/octet-stream", "Range": "bytes=-2"}, timeout=30
    )
    assert (tail.status_code, tail.headers["Content-Range"], tail.content) == (206, "bytes 13-14/15", frames[1][-2:])
    named = requests.get(
        f"{url}/2,1",
        headers={**stack.api_headers, "Accept": f'multipart/related; type="application/octet-stream"; {explicit}'},
        timeout=30,
    )
    assert named.status_code == 200, named.text[:300]
    assert parse_multipart(named) == [(f"application/octet-stream; {explicit}", f) for f in (frames[1], frames[0])]


def test_a_compressed_files_other_bulk_values_are_explicit_little_endian(stack: RunningStack, tmp_path: Path) -> None:
    """A value other than Pixel Data of a JPEG file (its ICC Profile, 2 KiB) is uncompressed little-endian bytes:
    a compressed syntax encodes the data set as Explicit VR Little Endian (PS3.5 A.4), and PS3.18 Table 8.7.3-4
    names uncompressed bulk data `application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1`. Asked for so,
    single part or multipart, it was a 406 (only the JPEG syntax's name was taken, which still is)."""
    from pydicom.data import get_testdata_file

    jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    jpeg.StudyInstanceUID, jpeg.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    jpeg.SOPInstanceUID = jpeg.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    profile = bytes(range(256)) * 8
    jpeg.ICCProfile = profile
    jpeg.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    assert stack.stow([tmp_path / "jpeg.dcm"]).status_code == 200
    url = f"{stack.url}/dicomweb/studies/{jpeg.StudyInstanceUID}/series/{jpeg.SeriesInstanceUID}"
    url += f"/instances/{jpeg.SOPInstanceUID}"
    [metadata] = requests.get(f"{url}/metadata", headers=stack.api_headers, timeout=30).json()
    assert metadata["00282000"]["BulkDataURI"] == f"{url}/bulkdata/00282000"
    explicit, baseline = "transfer-syntax=1.2.840.10008.1.2.1", "transfer-syntax=1.2.840.10008.1.2.4.50"

    def get(accept: str, **headers: str) -> requests.Response:
        return requests.get(
            f"{url}/bulkdata/00282000", headers={**stack.api_headers, "Accept": accept, **headers}, timeout=30
        )

    for syntax in (explicit, baseline):
        single = get(f"application/octet-stream; {syntax}")
        assert (single.status_code, single.headers["Content-Type"], single.content) == (
            200,
            "application/octet-stream",
            profile,
        ), single.text[:300]
        ranged = get(f"application/octet-stream; {syntax}", Range="bytes=256-511")
        assert (ranged.status_code, ranged.headers["Content-Range"], ranged.content) == (
            206,
            "bytes 256-511/2048",
            profile[256:512],
        )
        multi = get(f'multipart/related; type="application/octet-stream"; {syntax}')
        assert multi.status_code == 200, multi.text[:300]
        assert parse_multipart(multi) == [("application/octet-stream", profile)]


def test_metadata_levels_relative_bulkdata_etag_gzip(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    path = synthetic["ct"][0]
    study, series, sop = uids_of(path)
    root = roots[study]
    instance = requests.get(f"{root}/studies/{study}/series/{series}/instances/{sop}/metadata", timeout=30)
    assert instance.status_code == 200
    assert instance.headers["Content-Type"] == "application/dicom+json"
    [dataset] = instance.json()
    # absolute, under the root the client used (its token prefix kept), at every level
    bulk = f"{root}/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010"
    assert root.startswith("http://") and "/t/" in root
    assert dataset["7FE00010"] == {"vr": "OW", "BulkDataURI": bulk}
    assert dataset["00080018"]["Value"] == [sop]
    series_md = requests.get(f"{root}/studies/{study}/series/{series}/metadata", timeout=30)
    assert bulk in {d["7FE00010"]["BulkDataURI"] for d in series_md.json()}
    assert (
        requests.get(bulk, headers={"Accept": "application/octet-stream"}, timeout=30).content
        == pydicom.dcmread(path).PixelData
    )
    study_md = requests.get(f"{root}/studies/{study}/metadata", timeout=30)
    assert len(study_md.json()) == len(synthetic["ct"]) + len(synthetic["ct_b"])
    etag = series_md.headers["ETag"]
    cached = requests.get(
        f"{root}/studies/{study}/series/{series}/metadata", headers={"If-None-Match": etag}, timeout=30
    )
    assert cached.status_code == 304
    # RFC 9110 15.4.5: the 304 varies as its 200 does (the gzip Vary was missing), and names the ETag its 200 would
    # (gzipped by NGINX, whose ETag NGINX made weak: the 304 had the strong one), with or without gzip
    assert series_md.headers["Vary"] == cached.headers["Vary"] == "Accept-Encoding, Origin, Accept"
    assert etag.startswith('W/"') and cached.headers["ETag"] == etag
    plain = requests.get(
        f"{root}/studies/{study}/series/{series}/metadata", headers={"Accept-Encoding": "identity"}, timeout=30
    )
    assert plain.headers["ETag"] == etag and "Content-Encoding" not in plain.headers
    raw = requests.get(
        f"{root}/studies/{study}/series/{series}/metadata",
        headers={"Accept-Encoding": "gzip"},
        timeout=30,
        stream=True,
    )
    assert raw.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw.raw.read())) == series_md.json()


def test_wado_uri(stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]) -> None:
    path = synthetic["ct"][0]
    study, series, sop = uids_of(path)
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    dicom = requests.get(f"{roots[study]}/wado", params={**params, "contentType": "application/dicom"}, timeout=30)
    assert dicom.status_code == 200
    assert dicom.content == path.read_bytes()
    ranged = requests.get(
        f"{roots[study]}/wado",
        params={**params, "contentType": "application/dicom"},
        headers={"Range": "bytes=0-127"},
        timeout=30,
    )
    assert ranged.status_code == 206
    assert len(ranged.content) == 128
    jpeg = requests.get(f"{roots[study]}/wado", params=params, timeout=30)
    assert jpeg.status_code == 200
    assert jpeg.headers["Content-Type"] == "image/jpeg"
    assert jpeg.content[:2] == b"\xff\xd8"
    other = uids_of(synthetic["mr"][0])
    denied = requests.get(
        f"{roots[study]}/wado", params={**params, "studyUID": other[0], "seriesUID": other[1]}, timeout=30
    )
    assert denied.status_code == 403
    for content_type in ("application/dicom", "image/jpeg"):  # never identified data to a client that asked for none
        refused = requests.get(
            f"{roots[study]}/wado", params={**params, "contentType": content_type, "anonymize": "yes"}, timeout=30
        )
        assert refused.status_code == 400
        assert refused.json() == {
            "error": "bad_request",
            "detail": "anonymize=yes is not supported: objects are served as stored",
        }


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/dicom,image/jpeg", "application/dicom"),
        ("image/jpeg;q=0.5,application/dicom", "application/dicom"),
        ("image/jpeg;q=0.5,image/png", "image/png"),
        ("image/png;q=0.4, image/jpeg;q=0.6", "image/jpeg"),
        ("application/dicom;q=0.1, image/png", "image/png"),
    ],
)
def test_wado_uri_content_type_is_a_list_with_q_values(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str], content_type: str, expected: str
) -> None:
    """PS3.18 9 (URI service): contentType has Accept's syntax. Only the first type, cut at its first ";", was read:
    a list whose first entry was DICOM was rendered, and q-values were ignored."""
    path = synthetic["ct"][0]
    study, series, sop = uids_of(path)
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    answer = requests.get(f"{roots[study]}/wado", params={**params, "contentType": content_type}, timeout=30)
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, expected)
    if expected == "application/dicom":
        assert answer.content == path.read_bytes()
    else:
        assert answer.content.startswith(b"\x89PNG" if expected == "image/png" else b"\xff\xd8")


def pixels(answer: requests.Response) -> np.ndarray:
    assert answer.status_code == 200, answer.text[:200]
    return np.asarray(Image.open(io.BytesIO(answer.content)))


def test_wado_uri_image_parameters_shape_the_rendering(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """PS3.18 9 (URI service): windowCenter/windowWidth, imageQuality, rows/columns and region were ignored (every
    variant was the same 200 image). Each now gives what the same rendering asked for through WADO-RS gives;
    what cannot be honoured (a presentation state, annotation, half a window) is a JSON 400."""
    path = synthetic["ct"][0]
    study, series, sop = uids_of(path)
    url = f"{roots[study]}/wado"
    rendered = f"{instance_url(roots, path)}/rendered"
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    png = {**params, "contentType": "image/png"}
    as_png = {"Accept": "image/png"}
    full = pixels(requests.get(url, params=png, timeout=30))
    height, width = full.shape[:2]
    windowed = requests.get(url, params={**png, "windowCenter": "40", "windowWidth": "80"}, timeout=30)
    same = requests.get(rendered, params={"window": "40,80"}, headers=as_png, timeout=30)
    assert pixels(windowed).tolist() == pixels(same).tolist()
    assert pixels(windowed).tolist() != full.tolist()
    small = pixels(requests.get(url, params={**png, "rows": "32"}, timeout=30))
    assert small.shape[:2] == (32, round(32 * width / height))
    narrow = pixels(requests.get(url, params={**png, "columns": "16", "rows": "64"}, timeout=30))
    assert narrow.shape[1] == 16
    quarter = pixels(requests.get(url, params={**png, "region": "0,0,0.5,0.5"}, timeout=30))
    assert quarter.tolist() == full[: height // 2, : width // 2].tolist()
    jpeg = requests.get(url, params={**params, "imageQuality": "5"}, timeout=30)
    assert jpeg.content == requests.get(rendered, params={"quality": "5"}, timeout=30).content
    assert jpeg.content != requests.get(url, params=params, timeout=30).content
    unsupported = "is not supported: frames are rendered without annotation or presentation state"
    bad_region = "region must be x1,y1,x2,y2 with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1"
    for extra, detail in (
        ({"windowCenter": "40"}, "windowCenter and windowWidth must be given together"),
        ({"annotation": "patient"}, f"annotation {unsupported}"),
        ({"presentationUID": "1.2.3", "presentationSeriesUID": "1.2.3"}, f"presentationUID {unsupported}"),
        ({"region": "0,0,1.5,1"}, bad_region),
        ({"region": "0.5,0,0.5,1"}, bad_region),
        ({"region": "0,0,nan,1"}, "region must be 4 finite numbers separated by commas"),
        ({"rows": "0"}, "rows: expected an integer from 1 to 2147483647"),
        # named as the client sent them (they were named "quality" and "window", WADO-RS's parameters)
        ({"imageQuality": "101"}, "imageQuality: expected an integer from 1 to 100"),
        ({"windowCenter": "abc", "windowWidth": "1"}, "windowCenter and windowWidth: center and width must be numbers"),
        ({"windowCenter": "40", "windowWidth": "0"}, "windowCenter and windowWidth: the width must be above 0"),
        ({"windowCenter": "1,2", "windowWidth": "1"}, "windowCenter and windowWidth: center and width must be numbers"),
    ):
        refused = requests.get(url, params={**png, **extra}, timeout=30)
        assert (refused.status_code, refused.headers["Content-Type"]) == (400, "application/json"), extra
        assert refused.json() == {"error": "bad_request", "detail": detail}


def test_rendered_viewport_takes_a_source_region(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """PS3.18 8.3.5.1.3: viewport=vw,vh,sx,sy,sw,sh renders the region (sx,sy,sw,sh) of the frame, a negative sw or
    sh flipping it; only vw,vh were read, so the whole frame came back."""
    rendered = f"{instance_url(roots, synthetic['ct'][0])}/rendered"
    as_png = {"Accept": "image/png"}
    full = pixels(requests.get(rendered, headers=as_png, timeout=30))
    region = pixels(requests.get(rendered, params={"viewport": "1000,1000,10,20,30,40"}, headers=as_png, timeout=30))
    assert region.tolist() == full[20:60, 10:40].tolist()
    flipped = pixels(requests.get(rendered, params={"viewport": "1000,1000,40,20,-30,40"}, headers=as_png, timeout=30))
    assert flipped.tolist() == full[20:60, 10:40][:, ::-1].tolist()
    for viewport in ("64,64,0,0,100000,10", "64,64,1,2", "64,64,0,0,-5,10"):
        refused = requests.get(rendered, params={"viewport": viewport}, timeout=30)
        assert (refused.status_code, refused.headers["Content-Type"]) == (400, "application/json"), viewport


def test_wado_uri_content_type_may_name_the_transfer_syntax(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """contentType takes Accept's syntax (PS3.18 9), so application/dicom;transfer-syntax=... asks as transferSyntax
    does: the stored syntax gets the object, another one a 406 (it was ignored: the object came back regardless)."""
    path = synthetic["ct"][0]
    study, series, sop = uids_of(path)
    stored = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    url = f"{roots[study]}/wado"
    named = {"contentType": f"application/dicom;transfer-syntax={stored}"}
    same = requests.get(url, params={**params, **named}, timeout=30)
    assert (same.status_code, same.content) == (200, path.read_bytes())
    other = {"contentType": "application/dicom; transfer-syntax=1.2.840.10008.1.2"}
    assert requests.get(url, params={**params, **other}, timeout=30).status_code == 406
    both = {**other, "transferSyntax": stored}
    refused = requests.get(url, params={**params, **both}, timeout=30)
    assert refused.status_code == 400
    detail = "contentType's transfer-syntax and transferSyntax differ"
    assert refused.json() == {"error": "bad_request", "detail": detail}


def test_wado_uri_transfer_syntax_names_the_stored_one_or_is_refused(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """PS3.18 9 (WADO-URI) ``transferSyntax``: objects are served as stored, so naming the stored syntax (or ``*``)
    gets the object, with or without ``contentType``; another syntax is a JSON 406 naming the stored one (it was
    ignored: a 200 with other bytes than asked for); a value that is no UID is a JSON 400."""
    path = synthetic["ct"][0]
    study, series, sop = uids_of(path)
    stored = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    url = f"{roots[study]}/wado"
    for extra in ({"transferSyntax": stored}, {"transferSyntax": "*", "contentType": "application/dicom"}):
        same = requests.get(url, params={**params, **extra}, timeout=30)
        assert (same.status_code, same.headers["Content-Type"]) == (200, "application/dicom")
        assert same.content == path.read_bytes()
    jpeg_syntax = {"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2.4.50"}
    other = requests.get(url, params={**params, **jpeg_syntax}, timeout=30)
    assert other.status_code == 406
    assert other.json() == {
        "error": "not_acceptable",
        "detail": f"the object is stored as {stored} and served as stored (no transcoding): "
        "ask for that transferSyntax or none",
    }
    bad = requests.get(url, params={**params, "contentType": "application/dicom", "transferSyntax": "abc"}, timeout=30)
    assert bad.status_code == 400
    assert bad.json() == {"error": "bad_request", "detail": "transferSyntax must be a transfer syntax UID"}


def test_wado_uri_without_content_type_sends_an_instance_without_pixels_as_dicom(
    stack: RunningStack, tmp_path: Path
) -> None:
    """PS3.18 Table 8.7.4-1 (URI column): image/jpeg is the default of images and text/html that of the Text
    category (a report); an instance of neither (an RT plan, a waveform) has no rendered media type and defaults to
    application/dicom. It was a 406 ("frames cannot be rendered"), so a plain WADO-URI link to such an instance
    never worked; a report came as the object too. An explicit image/jpeg for either is still a 406."""
    from pydicom.data import get_testdata_file

    paths = {}
    for kind in ("sr", "plan"):
        ds = pydicom.dcmread(get_testdata_file("reportsi.dcm"))
        uids = [pydicom.uid.generate_uid() for _ in range(3)]  # its own: test_real_files stores the file as it is
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uids
        ds.file_meta.MediaStorageSOPInstanceUID = uids[2]
        if kind == "plan":  # no SR content: an RT Plan (no pixels, no text)
            for keyword in ("ValueType", "ContentSequence", "ConceptNameCodeSequence"):
                delattr(ds, keyword)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
            ds.Modality = "RTPLAN"
        paths[kind] = tmp_path / f"{kind}.dcm"
        ds.save_as(paths[kind], enforce_file_format=True)
    assert stack.stow(list(paths.values())).status_code == 200
    url = f"{stack.url}/dicomweb/wado"
    for kind, path in paths.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        params = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
                  "objectUID": ds.SOPInstanceUID}  # fmt: skip
        default = requests.get(url, params=params, headers=stack.api_headers, timeout=30)
        if kind == "plan":
            assert (default.status_code, default.headers["Content-Type"]) == (200, "application/dicom"), default.text
            assert default.content == path.read_bytes()
        else:
            assert (default.status_code, default.headers["Content-Type"]) == (200, "text/html; charset=utf-8")
        jpeg = requests.get(url, params={**params, "contentType": "image/jpeg"}, headers=stack.api_headers, timeout=30)
        assert jpeg.status_code == 406 and jpeg.headers["Content-Type"] == "application/json"
        missing = requests.get(url, params={**params, "objectUID": "1.2.3"}, headers=stack.api_headers, timeout=30)
        assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("lut", ["ModalityLUTSequence", "VOILUTSequence"])
def test_rendering_applies_a_lookup_table_of_an_implicit_vr_file(stack: RunningStack, tmp_path: Path, lut: str) -> None:
    """An implicit VR file's LUT Data is OW in the metadata; pydicom's LUT functions need the data set's byte order,
    which a data set made from DICOM JSON does not carry: such instances were a 406. The PNG follows the table."""
    import numpy as np
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    from pydicom.uid import ImplicitVRLittleEndian

    seed = 176 if lut == "ModalityLUTSequence" else 177
    [path] = make_series(tmp_path / "lut", modality="CT", slices=1, rows=16, columns=16, seed=seed, clean=True)
    ds = pydicom.dcmread(path)
    ds.PixelData = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 8).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for name in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        ds.pop(name, None)
    table = Dataset()
    table.LUTDescriptor = [4096, 0, 8]
    table.LUTData = (255 - (np.arange(4096) * 255 // 4095)).astype(np.uint16).tobytes()  # an inverting ramp
    if lut == "ModalityLUTSequence":
        table.ModalityLUTType = "HU"
    setattr(ds, lut, [table])
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    assert stack.stow([path]).status_code == 200
    study, series, sop = uids_of(path)
    url = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered"
    answer = requests.get(url, headers={**stack.api_headers, "Accept": "image/png"}, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    image = np.asarray(Image.open(io.BytesIO(answer.content)), dtype=np.float64)
    read = pydicom.dcmread(path)
    expected = np.asarray(apply_voi_lut(apply_modality_lut(read.pixel_array, read), read), dtype=np.float64)
    assert image.shape == expected.shape
    assert float(np.corrcoef(image.ravel(), expected.ravel())[0, 1]) >= 0.98  # the inverting table, applied
    assert image[0, 0] > image[15, 15]


def test_rendering_an_enhanced_multi_frame_image_applies_its_functional_groups(
    stack: RunningStack, tmp_path: Path
) -> None:
    """An enhanced multi-frame image (PS3.3 C.7.6.16) keeps its rescale in the Shared Functional Groups and each
    frame's window in its Per-Frame item: rendering read only top-level attributes, so every frame was shown
    stretched over its own range, whatever window the file gave it. Each frame is now windowed as the file says."""
    from pydicom.dataset import Dataset

    [path] = make_series(tmp_path / "enhanced", modality="CT", slices=1, rows=16, columns=16, seed=7611, clean=True)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    stored = np.stack([np.arange(256, dtype=np.uint16).reshape(16, 16) * 16] * 2)  # 0..4080, both frames
    ds.NumberOfFrames, ds.PixelData = 2, stored.tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for name in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth"):
        ds.pop(name, None)
    rescale = Dataset()
    rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = -1024, 1, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    windows = [(40.0, 400.0), (1000.0, 2000.0)]  # a soft-tissue and a bone window (HU)
    frames = []
    for center, width in windows:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item = Dataset()
        item.FrameVOILUTSequence = [voi]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.save_as(path, enforce_file_format=True)
    assert stack.stow([path]).status_code == 200
    study, series, sop = uids_of(path)
    url = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    for number, (center, width) in enumerate(windows, 1):
        answer = requests.get(
            f"{url}/frames/{number}/rendered", headers={**stack.api_headers, "Accept": "image/png"}, timeout=30
        )
        assert answer.status_code == 200, answer.text[:300]
        image = np.asarray(Image.open(io.BytesIO(answer.content)), dtype=np.float64)
        hu = stored[number - 1].astype(np.float64) - 1024  # PS3.3 C.11.2.1.2.1, LINEAR
        expected = np.clip(np.rint(((hu - (center - 0.5)) / (width - 1) + 0.5) * 255), 0, 255)
        assert np.abs(image - expected).max() <= 1, (number, np.abs(image - expected).max())


def test_rendered_and_thumbnail(stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]) -> None:
    url = instance_url(roots, synthetic["ct"][0])
    rendered = requests.get(
        f"{url}/rendered", headers={"Accept": "image/png"}, params={"viewport": "64,64"}, timeout=30
    )
    assert rendered.status_code == 200
    assert rendered.headers["Content-Type"] == "image/png"
    assert rendered.content[:8] == b"\x89PNG\r\n\x1a\n"
    # revalidated, never kept (a deleted instance must not show again): the same rendering again is a 304
    assert rendered.headers["Cache-Control"] == "private, no-cache"
    again = requests.get(
        f"{url}/rendered",
        headers={"Accept": "image/png", "If-None-Match": rendered.headers["ETag"]},
        params={"viewport": "64,64"},
        timeout=30,
    )
    assert again.status_code == 304 and again.content == b""
    first = requests.get(f"{url}/thumbnail", timeout=30)
    second = requests.get(f"{url}/thumbnail", timeout=30)
    assert first.status_code == second.status_code == 200
    assert first.headers["Content-Type"] == "image/jpeg"
    assert first.content == second.content and first.content[:2] == b"\xff\xd8"
    assert second.headers["ETag"]  # served from storage by NGINX
    tile = requests.get(f"{instance_url(roots, synthetic['wsi_bot'])}/frames/7/rendered", timeout=30)
    assert tile.status_code == 200 and tile.content[:2] == b"\xff\xd8"
    # a thumbnail honours Accept and viewport (PS3.18 8.3.5.1) like rendered does
    png = requests.get(f"{url}/thumbnail", headers={"Accept": "image/png"}, timeout=30)
    assert (png.status_code, png.headers["Content-Type"]) == (200, "image/png")
    assert max(Image.open(io.BytesIO(png.content)).size) == THUMBNAIL_SIZE
    small = requests.get(f"{url}/thumbnail", params={"viewport": "32,32"}, timeout=30)
    assert (small.status_code, small.headers["Content-Type"]) == (200, "image/jpeg")
    assert max(Image.open(io.BytesIO(small.content)).size) == 32
    refused = requests.get(f"{url}/thumbnail", headers={"Accept": "application/json"}, timeout=30)
    assert (refused.status_code, refused.headers["Content-Type"]) == (406, "application/json")
    # window=center,width[,function]: the functions of PS3.3 C.11.2.1.3; anything else is a JSON 400
    for window in ("40,400", "40,400,linear", "40,400,LINEAR_EXACT", "40,400,sigmoid"):
        answer = requests.get(f"{url}/rendered", params={"window": window}, timeout=30)
        assert (answer.status_code, answer.content[:2]) == (200, b"\xff\xd8"), window
    for window in ("40,0", "40,400,cubic", "40", "40,400,linear,x"):
        answer = requests.get(f"{url}/rendered", params={"window": window}, timeout=30)
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_request"), window


def test_qido_is_scoped_to_the_token(stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]) -> None:
    study = uids_of(synthetic["ct"][0])[0]
    root = roots[study]
    for level in ("studies", "series", "instances"):
        answer = requests.get(f"{root}/{level}", timeout=30)
        assert answer.status_code == 200
        assert {item["0020000D"]["Value"][0] for item in answer.json()} == {study}, level
    assert requests.get(f"{root}/studies", params={"PatientID": "nobody"}, timeout=30).json() == []


def test_qido_answer_is_compact_utf8_dicom_json(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """QIDO answers are encoded by orjson (issue 15): compact UTF-8 DICOM JSON, attributes in tag order, the same
    document the standard library would write; ModalitiesInStudy matches whole codes of the study's list."""
    study = uids_of(synthetic["ct"][0])[0]
    root = roots[study]
    answer = requests.get(f"{root}/studies", params={"ModalitiesInStudy": "CT"}, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/dicom+json"
    (found,) = answer.json()
    assert list(found) == sorted(found) and found["0020000D"] == {"vr": "UI", "Value": [study]}
    assert found["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert answer.content == json.dumps([found], separators=(",", ":"), ensure_ascii=False).encode()
    for other in ("C", "MR", "T"):
        assert requests.get(f"{root}/studies", params={"ModalitiesInStudy": other}, timeout=30).json() == [], other


def test_qido_unsupported_matching_options_are_ignored_with_the_warning_ps3_18_requires(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """PS3.18 8.3.4.2, 8.3.4.5, 8.3.4.6: a server without fuzzy, empty value or multiple value matching searches
    without it and, when asked for it, answers with a `Warning: 299 <service>: ...` in the standard's words. The
    fuzzymatching Warning was missing; emptyvaluematching and multiplevaluematching were a 400."""
    study = uids_of(synthetic["ct"][0])[0]
    root = roots[study]
    service = f"299 {stack.url}/dicomweb: "
    texts = {
        "fuzzymatching": "The fuzzymatching parameter is not supported. Only literal matching has been performed.",
        "emptyvaluematching": (
            "The emptyvaluematching parameter is not supported. Empty Value Matching has not been performed."
        ),
        "multiplevaluematching": (
            "The multiplevaluematching parameter is not supported. Multiple Value Matching has not been performed."
        ),
    }
    literal = requests.get(f"{root}/studies", timeout=30)
    for name, text in texts.items():
        for params in ({name: "true"}, {name: "true", "PatientName": "*"}):
            answer = requests.get(f"{root}/studies", params=params, timeout=30)
            assert answer.status_code == 200 and answer.json() == literal.json(), (name, answer.text[:200])
            assert answer.headers["Warning"] == f'{service}"{text}"'  # RFC 7234 5.5: the text is a quoted-string
            series = requests.get(f"{root}/studies/{study}/series", params=params, timeout=30)
            assert series.status_code == 200 and series.headers["Warning"] == f'{service}"{text}"'
        assert "Warning" not in requests.get(f"{root}/studies", params={name: "false"}, timeout=30).headers
        # each is a boolean (PS3.18 8.3.4): another value was ignored without a word, and is the JSON 400 naming it
        for value in ("maybe", "1"):
            bad = requests.get(f"{root}/studies", params={name: value}, timeout=30)
            assert (bad.status_code, bad.json()) == (
                400,
                {"error": "bad_request", "detail": f"{name}: expected true or false"},
            ), value
    two = {"fuzzymatching": "true", "emptyvaluematching": "true"}
    both = requests.get(f"{root}/studies", params=two, timeout=30)
    assert both.raw.headers.getlist("Warning") == [f'{service}"{texts[name]}"' for name in two]
    assert "Warning" not in literal.headers


def test_qido_page_cut_by_the_server_says_how_many_are_left(stack: RunningStack, tmp_path: Path) -> None:
    """PS3.18 8.3.4.4: without a limit the answer stops at 100 matches, and a page cut by the server's maximum
    carries ``Warning: 299 {service}: "There are N additional results that can be requested"`` (a client such as
    dicomweb-client searching without a limit saw 100 of 103 and could not tell). A client's own limit is its
    choice: no warning, as when everything fits."""
    files = make_series(tmp_path / "many", modality="CT", slices=103, rows=16, columns=16, seed=172, clean=True)
    assert stack.stow(files).status_code == 200
    study, series, _ = uids_of(files[0])
    url = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances"
    service = f"299 {stack.url}/dicomweb: "

    def search(**params: str) -> requests.Response:
        answer = requests.get(url, params=params, headers=stack.api_headers, timeout=30)
        assert answer.status_code == 200, answer.text[:200]
        return answer

    first = search()
    assert len(first.json()) == 100
    assert first.headers["Cache-Control"] == "private, no-cache"
    assert first.headers["Warning"] == service + '"There are 3 additional results that can be requested"'
    shifted = search(offset="1")
    assert len(shifted.json()) == 100
    assert shifted.headers["Warning"] == service + '"There are 2 additional results that can be requested"'
    rest = search(offset="100")
    assert len(rest.json()) == 3 and "Warning" not in rest.headers
    mine = search(limit="50")
    assert len(mine.json()) == 50 and "Warning" not in mine.headers
    zero = search(limit="0")  # no limit asked: the server's page, as without one (README: QIDO `limit`)
    assert zero.json() == first.json() and zero.headers["Warning"] == first.headers["Warning"]
    everything = search(limit="1000")
    assert len(everything.json()) == 103 and "Warning" not in everything.headers
    sops = [item["00080018"]["Value"][0] for item in first.json() + rest.json()]
    assert sorted(sops) == sorted(uids_of(f)[2] for f in files)


def test_qido_series_match_the_performed_procedure_step_start(stack: RunningStack, tmp_path: Path) -> None:
    """PS3.18 Table 10.6.1-5: a series query matches PerformedProcedureStepStartDate and -Time (a 400 before)."""
    files = make_series(tmp_path / "pps", modality="CT", slices=2, seed=175, clean=True)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20230405", "101500"
        ds.save_as(path)
    assert stack.stow(files).status_code == 200
    study, series, _ = uids_of(files[0])
    url = f"{stack.url}/dicomweb/studies/{study}/series"

    def found(**params: str) -> list[str]:
        answer = requests.get(url, params=params, headers=stack.api_headers, timeout=30)
        assert answer.status_code == 200, answer.text[:200]
        return [item["0020000E"]["Value"][0] for item in answer.json()]

    assert found(PerformedProcedureStepStartDate="20230401-20230430") == [series]
    assert found(PerformedProcedureStepStartDate="20230405", PerformedProcedureStepStartTime="1000-1030") == [series]
    assert found(PerformedProcedureStepStartDate="20230501-") == []
    assert found(PerformedProcedureStepStartTime="1100-") == []
    [item] = requests.get(url, headers=stack.api_headers, timeout=30).json()
    assert item["00400244"] == {"vr": "DA", "Value": ["20230405"]}
    assert item["00400245"] == {"vr": "TM", "Value": ["101500"]}


def test_an_unknown_dicomweb_path_is_our_json_404_saying_what_is_wrong(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str]
) -> None:
    """``/dicomweb/studies/`` and ``.../metadata/`` answered werkzeug's sentence ("The requested URL was not found
    on the server. If you entered the URL manually please check your spelling and try again."). PS3.18 names no
    resource with a trailing slash, and ``/studies/`` is another URI than ``/studies`` (RFC 3986 6.2.4): the 404
    stays, now from the error map and saying what to change; any other unknown DICOMweb path lists the resources.
    A frame list or bulkdata path ending in "/" was served as without it, where every other resource's is this 404."""
    study, series, sop = uids_of(synthetic["ct"][0])
    slash = "no such resource: ask for it without the trailing '/' (.../studies, not .../studies/)"
    unknown = (
        "no such DICOMweb resource: the paths are /studies, /series, /instances and "
        "/studies/{study}[/series/{series}[/instances/{instance}]], with /metadata (each level), "
        "/frames/{n}, /bulkdata/{path}, /rendered and /thumbnail below them (PS3.18 10.4-10.6)"
    )
    instance = f"studies/{study}/series/{series}/instances/{sop}"
    for root, headers in ((roots[study], {}), (f"{stack.url}/dicomweb", stack.api_headers)):
        for path, detail in (
            ("/studies/", slash),
            ("/series/", slash),
            ("/instances/", slash),
            (f"/studies/{study}/metadata/", slash),
            (f"/studies/{study}/series/", slash),
            (f"/studies/{study}/series/{series}/metadata/", slash),
            (f"/{instance}/metadata/", slash),
            (f"/{instance}/frames/", slash),
            # served as frame 1 and the Pixel Data value (NGINX's plan location took the "/" too)
            (f"/{instance}/frames/1/", slash),
            (f"/{instance}/bulkdata/7FE00010/", slash),
            (f"/{instance}/rendered/", slash),
            (f"/{instance}/frames/1/rendered/", slash),
            ("/", slash),
            ("", unknown),
            (f"/studies/{study}/reports", unknown),
            *([("/patients", unknown)] if headers else []),  # a study token is refused there first (403)
        ):
            answer = requests.get(f"{root}{path}", headers=headers, timeout=30)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.headers["Content-Type"] == "application/json", path
            assert answer.json() == {"error": "not_found", "detail": detail}, path


def test_qido_times_match_as_times(stack: RunningStack, tmp_path: Path) -> None:
    """PS3.4 C.2.2.2: a TM value may omit trailing components and carry a fraction. Matched as texts,
    ``StudyTime=101500.000`` missed a study stored at ``101500`` and ``101500`` one stored at ``1015``; now each
    names the time it is, single values and ranges, at study and series level."""
    studies = {}
    for seed, stored in ((1761, "101500"), (1762, "1015"), (1763, "101500.5")):
        [path] = make_series(tmp_path / stored, modality="CT", slices=1, rows=32, columns=32, seed=seed, clean=True)
        ds = pydicom.dcmread(path)
        ds.StudyTime = ds.PerformedProcedureStepStartTime = stored
        ds.save_as(path)
        assert stack.stow([path]).status_code == 200
        studies[stored] = ds.StudyInstanceUID

    def found(level: str = "studies", **params: str) -> set[str]:
        answer = requests.get(
            f"{stack.url}/dicomweb/{level}",
            params={"StudyInstanceUID": ",".join(studies.values()), **params},
            headers=stack.api_headers,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text[:200]
        times = {"studies": "00080030", "series": "00400245"}[level]
        return {item[times]["Value"][0] for item in answer.json()}

    assert found(StudyTime="101500.000") == {"101500", "1015"}
    assert found(StudyTime="101500") == {"101500", "1015", "101500.5"}
    assert found(StudyTime="101500.5") == {"101500.5"}
    assert found(StudyTime="1015") == found(StudyTime="1000-1015") == {"101500", "1015", "101500.5"}
    assert found(StudyTime="101500.1-") == {"101500.5"}
    assert found(StudyTime="101501") == set()
    assert found("series", PerformedProcedureStepStartTime="101500.000") == {"101500", "1015"}


@pytest.mark.parametrize("together", [False, True], ids=["one_request_each", "one_request"])
def test_an_instance_leaving_study_attributes_empty_keeps_the_studys(
    stack: RunningStack, tmp_path: Path, together: bool
) -> None:
    """Instances of one study need not repeat its attributes: a report or key object made by another system often
    leaves Study Date, Accession Number or Study Description empty. The last instance stored set the study's row,
    empties included: the study's QIDO answer lost its date, and a date search (a viewer's study list) its
    study; a series' likewise. An empty value never replaces a stored one; a later value that is not empty
    still does."""
    seed = 8101 if together else 8102
    first, sibling = make_series(tmp_path / "first", modality="CT", slices=2, seed=seed, clean=True)
    ds = pydicom.dcmread(first)
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyDescription = "20230405", "101500", "ACC9", "CT chest"
    ds.SeriesDescription = "Axial 2mm"
    ds.save_as(first)
    blank = pydicom.dcmread(sibling)  # the same series, its description left empty
    blank.StudyDate, blank.StudyTime, blank.AccessionNumber, blank.StudyDescription = ds.StudyDate, "", "", ""
    blank.SeriesDescription = ""
    blank.save_as(sibling)
    second = make_series(tmp_path / "second", modality="MR", slices=1, seed=seed + 100, clean=True)[0]
    other = pydicom.dcmread(second)
    other.StudyInstanceUID = ds.StudyInstanceUID
    other.StudyDate = other.StudyTime = other.AccessionNumber = ""
    if "StudyDescription" in other:
        del other.StudyDescription
    other.save_as(second)
    if together:
        assert stack.stow([first, sibling, second]).status_code == 200
    else:
        for path in (first, sibling, second):
            assert stack.stow([path]).status_code == 200
    study = ds.StudyInstanceUID
    url = f"{stack.url}/dicomweb/studies"

    def found(**params: str) -> list[dict[str, Any]]:
        answer = requests.get(url, params={"StudyInstanceUID": study, **params}, headers=stack.api_headers, timeout=30)
        assert answer.status_code == 200, answer.text[:200]
        result: list[dict[str, Any]] = answer.json()
        return result

    [item] = found(StudyDate="20230401-20230430", AccessionNumber="ACC9")
    assert item["00080020"] == {"vr": "DA", "Value": ["20230405"]}
    assert item["00080030"] == {"vr": "TM", "Value": ["101500"]}
    assert item["00081030"] == {"vr": "LO", "Value": ["CT chest"]}
    assert item["00201208"] == {"vr": "IS", "Value": [3]}
    assert sorted(item["00080061"]["Value"]) == ["CT", "MR"]
    series_url = f"{url}/{study}/series"
    [found_series] = requests.get(
        series_url, params={"SeriesDescription": "Axial*"}, headers=stack.api_headers, timeout=30
    ).json()
    assert found_series["0008103E"] == {"vr": "LO", "Value": ["Axial 2mm"]}
    # a later value that is not empty replaces the stored one
    third = make_series(tmp_path / "third", modality="MR", slices=1, seed=seed + 200, clean=True)[0]
    later = pydicom.dcmread(third)
    later.StudyInstanceUID, later.StudyDescription = study, "CT chest, revised"
    later.save_as(third)
    assert stack.stow([third]).status_code == 200
    [item] = found(StudyDate="20230405")
    assert item["00081030"] == {"vr": "LO", "Value": ["CT chest, revised"]}


def test_qido_matches_carry_their_retrieve_url(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    """PS3.18 Tables 10.6.3-3/4/5: each match names its Retrieve URL (0008,1190) when the Retrieve transaction can
    fetch it (there was none at any level). Under the root the client used, as STOW's RetrieveURLs: a path token
    stays in it, so the URL works as given; a series token cannot retrieve the whole study, so its study has none."""
    path = synthetic["ct"][0]
    study, series, sop = uids_of(path)
    token_root = stack.root(stack.issue([study])["token"])
    series_root = stack.root(stack.issue([study], series=[series])["token"])
    for root, headers in ((token_root, {}), (f"{stack.url}/dicomweb", stack.api_headers)):
        found = [
            requests.get(f"{root}/{where}", headers=headers, timeout=30).json()
            for where in (
                f"studies?StudyInstanceUID={study}",
                f"studies/{study}/series?SeriesInstanceUID={series}",
                f"series?SeriesInstanceUID={series}",
                f"studies/{study}/series/{series}/instances?SOPInstanceUID={sop}",
                f"instances?SOPInstanceUID={sop}",
            )
        ]
        urls = [match["00081190"] for [match] in found]
        assert all(list(match) == sorted(match) for [match] in found)
        study_url = f"{root}/studies/{study}"
        series_url = f"{study_url}/series/{series}"
        instance_url = f"{series_url}/instances/{sop}"
        assert urls == [{"vr": "UR", "Value": [url]} for url in (study_url, *[series_url] * 2, *[instance_url] * 2)]
        instance = requests.get(instance_url, headers={**headers, "Accept": "application/dicom"}, timeout=30)
        assert instance.status_code == 200 and instance.content == path.read_bytes()
        for url in (study_url, series_url):
            accept = 'multipart/related; type="application/dicom"'
            assert requests.get(url, headers={**headers, "Accept": accept}, timeout=60).status_code == 200, url
    [only_series] = requests.get(f"{series_root}/studies", timeout=30).json()
    assert "00081190" not in only_series  # the study is not the series token's to retrieve
    [listed] = requests.get(f"{series_root}/studies/{study}/series", timeout=30).json()
    assert listed["00081190"]["Value"] == [f"{series_root}/studies/{study}/series/{series}"]


def test_storage_error_aborts_instead_of_corrupting(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str], tmp_path: Path
) -> None:
    """A missing object mid-plan must end in a failed transfer, never a 200 body with an error page inside."""
    path = synthetic["wsi_native"]
    study, series, sop = uids_of(path)
    key = f"studies/{study}/series/{series}/instances/{sop}.dcm"
    url = f"{instance_url(roots, path)}/frames/1,2"
    assert requests.get(url, timeout=30).status_code == 200
    storage = stack.storage()
    saved = tmp_path / "saved.dcm"
    storage.download(key, saved)
    storage.delete(key)
    try:
        # NGINX closes the connection: before the headers or in the middle of the chunked body
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
            answer = requests.get(url, timeout=30)
            assert b"<html" not in answer.content.lower()  # reached only if the transfer did not fail
    finally:
        storage.put_file(key, saved)
    assert requests.get(url, timeout=30).status_code == 200


def test_uploaded_pixels_cannot_smuggle_server_side_includes(
    stack: RunningStack, synthetic: dict[str, Any], tmp_path: Path
) -> None:
    """Rendered output carries uploaded pixel data; it must never pass through NGINX's SSI (which would let a
    crafted image include any stored object)."""
    import io

    from PIL import Image

    from gateway.tools.synth import make_series

    other = uids_of(synthetic["mr"][0])
    directive = (
        f'<!--# include virtual="/_seg/all/studies/{other[0]}/series/{other[1]}/instances/{other[2]}.dcm" '
        'wait="yes" -->'
    ).encode()
    row = (directive * (12288 // len(directive) + 1))[:12288]
    [path] = make_series(tmp_path, modality="CT", slices=1, seed=60, clean=True)  # a study of its own
    ds = pydicom.dcmread(path)
    study = str(ds.StudyInstanceUID)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.6060"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.Rows, ds.Columns = 1, 4096
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = row
    ds.save_as(path, enforce_file_format=True)
    assert stack.stow([path]).status_code == 200
    token = stack.issue([study])["token"]
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": ds.SeriesInstanceUID, "objectUID": "2.25.6060"}
    for url, query in (
        (f"{stack.root(token)}/wado", {**params, "contentType": "image/png"}),
        (
            f"{stack.root(token)}/studies/{study}/series/{ds.SeriesInstanceUID}/instances/2.25.6060/rendered",
            {"accept": "image/png"},
        ),
    ):
        answer = requests.get(url, params=query, timeout=30)
        assert answer.status_code == 200
        assert b"DICM" not in answer.content
        image = Image.open(io.BytesIO(answer.content))
        assert image.size == (4096, 1)
        assert image.tobytes() == row


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/dicom+json", 200),
        ("application/json", 200),
        ("*/*", 200),
        ("", 200),
        ("application/dicom+xml", 406),  # single part: neither answer is a single item (PS3.18 Table 10.4.4-1)
        ('multipart/related; type="application/dicom+xml"', 200),
    ],
)
def test_json_endpoints_negotiate(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str], accept: str, status: int
) -> None:
    study, series, _ = uids_of(synthetic["ct"][0])
    headers = {"Accept": accept} if accept else {}
    for url in (f"{roots[study]}/studies", f"{roots[study]}/studies/{study}/series/{series}/metadata"):
        answer = requests.get(url, headers=headers, timeout=30)
        assert answer.status_code == status, url
        if status == 200 and "xml" in accept:
            assert answer.headers["Content-Type"].startswith("multipart/related")
        elif status == 200:  # application/json answered as what was asked for (it said application/dicom+json)
            expected = "application/json" if accept == "application/json" else "application/dicom+json"
            assert answer.headers["Content-Type"] == expected


def test_frames_that_cannot_be_told_apart_are_a_406_saying_why(stack: RunningStack, tmp_path: Path) -> None:
    """An RLE instance of 3 frames in 2 fragments each, with an empty Basic Offset Table: nothing says where a frame
    starts (RLE fragments carry no start marker), so its frames are not served as ranges. The 406 says that, not
    "deflated, big-endian or 1-bit data" (what every such instance was told before); the instance itself is served."""
    from pydicom.encaps import encapsulate

    [native] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=195, clean=True)
    ds = pydicom.dcmread(native)
    frames = [bytes([n]) * 64 for n in range(6)]
    ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=False)
    ds.NumberOfFrames = 3
    ds.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    assert stack.stow([tmp_path / "rle.dcm"]).status_code == 200
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    url = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    answer = requests.get(f"{url}/frames/1", headers={**stack.api_headers, "Accept": "*/*"}, timeout=30)
    assert answer.status_code == 406
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {
        "error": "frames_not_servable",
        "detail": "frames of this instance cannot be served as stored byte ranges (its compressed frames cannot be "
        "told apart: no offset table with an entry for each frame, and fragments that do not each start one); "
        "retrieve the instance instead",
    }
    p10 = {**stack.api_headers, "Accept": "application/dicom; transfer-syntax=*"}
    whole = requests.get(url, headers=p10, timeout=30)
    assert (whole.status_code, whole.content) == (200, (tmp_path / "rle.dcm").read_bytes())


@pytest.mark.parametrize("variant", ["wsi_bot", "wsi_frag"])
def test_encapsulated_pixel_data_bulkdata_is_its_frames(
    stack: RunningStack, synthetic: dict[str, Any], roots: dict[str, str], variant: str
) -> None:
    """The BulkDataURI of encapsulated Pixel Data answered the raw item stream (offset table, item headers)
    labelled application/octet-stream. It answers the frames now, each in its compressed media type and syntax
    (PS3.18 8.7.3.3), the same bytes as the frames resource."""
    _, frames, _ = WSI_VARIANTS[variant]
    url = instance_url(roots, synthetic[variant])
    [metadata] = requests.get(f"{url}/metadata", timeout=30).json()
    bulk = metadata["7FE00010"]["BulkDataURI"]
    assert bulk == f"{url}/bulkdata/7FE00010"
    answer = requests.get(bulk, timeout=60)  # no Accept: the default, multipart of the stored frame type
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"')
    parts = parse_multipart(answer)
    listed = requests.get(
        f"{url}/frames/{','.join(str(n) for n in range(1, frames + 1))}",
        headers={"Accept": 'multipart/related; type="image/jpeg"'},
        timeout=60,
    )
    assert parts == parse_multipart(listed) and len(parts) == frames
    assert {kind for kind, _ in parts} == {"image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"}
    assert all(body.startswith(b"\xff\xd8") for _, body in parts)


def test_an_encapsulated_pdf_renders_as_itself_and_its_document_is_its_bulkdata(
    stack: RunningStack, tmp_path: Path
) -> None:
    """An Encapsulated PDF (PS3.3 A.45.1) has no pixel data. Its rendering is the PDF itself (PS3.18 8.7.4: the
    rendered media types of text include application/pdf; OHIF's PDF viewport opens /rendered), by WADO-RS and
    WADO-URI; an image of it is a JSON 406 that says what it renders as (it said "frames ... not range-servable",
    which sent users looking for a broken file). The document is also its Encapsulated Document (0042,0011)
    bulkdata, byte for byte."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    document = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["pdf-15101"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["pdf-15101-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["pdf-15101-series"])
    ds.Modality, ds.PatientID, ds.MIMETypeOfEncapsulatedDocument = "DOC", "PDF-15101", "application/pdf"
    ds.EncapsulatedDocument = document
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert stack.stow([path]).status_code == 200
    root = stack.root(stack.issue([ds.StudyInstanceUID])["token"])
    instance = f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    wado = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
            "objectUID": ds.SOPInstanceUID}  # fmt: skip
    for answer in (
        requests.get(f"{instance}/rendered", timeout=30),  # a browser's iframe: Accept */* at most
        requests.get(f"{instance}/rendered", headers={"Accept": "application/pdf"}, timeout=30),
        requests.get(f"{root}/wado", params={**wado, "contentType": "application/pdf"}, timeout=30),
    ):
        assert (answer.status_code, answer.headers["Content-Type"], answer.content) == (
            200,
            "application/pdf",
            document,
        )
    for answer in (
        requests.get(f"{instance}/rendered", headers={"Accept": "image/png"}, timeout=30),
        requests.get(f"{root}/wado", params={**wado, "contentType": "image/jpeg"}, timeout=30),
    ):
        assert (answer.status_code, answer.headers["Content-Type"]) == (406, "application/json"), answer.text
        detail = "this instance is an encapsulated document: it is rendered as application/pdf only"
        assert answer.json()["detail"] == detail
    no_pixels = "this instance has no pixel data: it is no image to render"
    frame = requests.get(f"{instance}/frames/1/rendered", timeout=30)
    assert (frame.status_code, frame.json()["detail"]) == (406, no_pixels)
    # its frames: it said "cannot be served as stored byte ranges (it has no pixel data, or 1-bit frames that do
    # not start on a byte boundary)", a fault of the file it does not have
    frames = requests.get(f"{instance}/frames/1", timeout=30)
    assert (frames.status_code, frames.headers["Content-Type"], frames.json()) == (
        406,
        "application/json",
        {
            "error": "frames_not_servable",
            "detail": "this instance has no pixel data, so no frames: retrieve the instance instead",
        },
    )
    [metadata] = requests.get(f"{instance}/metadata", timeout=30).json()
    uri = metadata["00420011"]["BulkDataURI"]
    bulk = requests.get(uri, headers={"Accept": "application/octet-stream"}, timeout=30)
    assert (bulk.status_code, bulk.content) == (200, document)
    # a "document" of another type is never served as itself from the gateway's origin: an uploaded text/html
    # would run its scripts there
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["html-15101"])
    ds.MIMETypeOfEncapsulatedDocument, ds.EncapsulatedDocument = "text/html", b"<script>alert(1)</script>" * 50
    ds.save_as(path, enforce_file_format=True)
    assert stack.stow([path]).status_code == 200
    page = f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    for answer in (
        requests.get(f"{page}/rendered", headers={"Accept": "text/html"}, timeout=30),
        requests.get(f"{root}/wado", params={**wado, "objectUID": ds.SOPInstanceUID, "contentType": "text/html"},
                     timeout=30),  # fmt: skip
    ):
        assert (answer.status_code, answer.headers["Content-Type"]) == (406, "application/json"), answer.text
        assert b"<script>" not in answer.content
