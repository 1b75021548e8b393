"""gateway.dicomweb.wado: Range parsing and the read plans (exact SSI include text, CRLF multipart framing, headers)
built from in-memory catalog rows with real ``FrameIndex`` objects."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, quote

import pytest

from gateway import nginx_contract as nginx
from gateway.dicom.frames import FrameIndex
from gateway.dicomweb.wado import (
    DERIVATIVE_TS,
    STABLE_PLAN_SECONDS,
    Planner,
    PlanResponse,
    parse_range,
    slice_ranges,
    to_cached,
)
from gateway.errors import (
    BadRequest,
    FrameNotFound,
    FramesNotServable,
    InvalidPath,
    InvalidUID,
    NotAcceptable,
    NotFound,
    RangeNotSatisfiable,
)
from gateway.fastpath import served_length

EXPLICIT = "1.2.840.10008.1.2.1"
JPEG = "1.2.840.10008.1.2.4.50"
ST = "1.2.3"
SE = "1.2.3.4"
SE2 = "1.2.3.5"
CT1 = "1.2.3.4.1"  # native, 3 frames of 512 bytes at 1000
CT2 = "1.2.3.4.2"  # same series, 1 frame, JPEG
WSI = "1.2.3.5.1"  # encapsulated JPEG, 2 frames (3 fragments), other series
OLD = "1.2.3.5.2"  # no frame index (e.g. deflated)


@dataclass
class Row:
    """The attributes ``to_cached`` reads from a catalog ``InstanceRow``."""

    study_uid: str
    series_uid: str
    sop_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int
    etag: str | None
    frame_media_type: str | None
    frame_index: bytes | None
    bulkdata: str
    number_of_frames: int = 1  # 0: no pixel data


def key(series: str, sop: str, study: str = ST) -> str:
    return f"studies/{study}/series/{series}/instances/{sop}.dcm"


def origin(storage_key: str) -> str:
    return "/objects/" + storage_key


def bulk(*items: tuple[str, str, int, int]) -> str:
    return json.dumps([list(item) for item in items])


ROWS = {
    CT1: Row(
        ST, SE, CT1, EXPLICIT, key(SE, CT1), 3000, '"e1"', "application/octet-stream",
        FrameIndex.native(1000, 512, 3).pack(),
        bulk(("7FE00010", "OW", 1000, 1536), ("00420011", "OB", 300, 1000), ("00091010", "OB", 2900, 0),
             ("00540016/0/00181072", "OB", 200, 16)),
    ),
    CT2: Row(
        ST, SE, CT2, JPEG, key(SE, CT2), 5000, '"e2"', "image/jpeg",
        FrameIndex.encapsulated([(4000, 900)], [0]).pack(), bulk(),
    ),
    WSI: Row(
        ST, SE2, WSI, JPEG, key(SE2, WSI), 9000, None, "image/jpeg",
        FrameIndex.encapsulated([(2000, 100), (2108, 50), (2166, 80)], [0, 2]).pack(), "[]",
    ),
    OLD: Row(ST, SE2, OLD, "1.2.840.10008.1.2.1.99", key(SE2, OLD), 700, "", None, None, ""),
}  # fmt: skip


class Catalog:
    """In-memory stand-in for the catalog calls the planner makes; counts loads."""

    def __init__(self, rows: dict[str, Row]) -> None:
        self.rows = rows
        self.loads: list[str] = []
        self.lists: list[tuple[str, str | None]] = []

    def load(self, sop: str) -> Row | None:
        self.loads.append(sop)
        return self.rows.get(sop)

    def list(self, study: str, series: str | None) -> Sequence[Row]:
        self.lists.append((study, series))
        return [r for r in self.rows.values() if r.study_uid == study and series in (None, r.series_uid)]


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(dict(ROWS))


@pytest.fixture
def planner(catalog: Catalog) -> Planner:
    return Planner(catalog.load, catalog.list, origin)


def inc(sop: str, first: int | None = None, last: int | None = None) -> bytes:
    row = ROWS[sop]
    where = "all" if first is None else f"{first}-{last}"
    return f'<!--# include virtual="/_seg/{where}/objects/{row.storage_key}" wait="yes" -->'.encode()


def boundary_of(response: PlanResponse, part_type: str) -> str:
    content_type = dict(response.headers)["Content-Type"]
    match = re.fullmatch(rf'multipart/related; type="{re.escape(part_type)}"; boundary=([0-9a-f]{{32}})', content_type)
    assert match, content_type
    return match.group(1)


def multipart_body(boundary: str, parts: list[tuple[str, bytes]]) -> bytes:
    body = b""
    for content_type, payload in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + payload + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def instance_uri(series: str, sop: str, rest: str = "") -> str:
    return f"/dicomweb/studies/{ST}/series/{series}/instances/{sop}{rest}"


# -- parse_range -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", (0, 99)),
        ("bytes=10-10", (10, 10)),
        ("bytes=900-", (900, 999)),
        ("bytes=500-5000", (500, 999)),
        ("bytes=-100", (900, 999)),
        ("bytes=-5000", (0, 999)),
        ("  bytes=0-0  ", (0, 0)),
        ("bytes=999-999", (999, 999)),
        ("", None),
        ("bytes=0-1,5-6", None),
        ("bytes=0-1, 5-6", None),
        ("items=0-5", None),
        ("bytes=a-b", None),
        ("bytes=5", None),
        ("bytes=-", None),
        ("bytes=10-5", None),
        ("bytes=2000-5", None),  # invalid (last below first) is ignored, not a 416 for starting past the end
        ("bytes=1-2-3", None),
        ("bytes=--5", None),
        # whitespace inside: not a range-spec, ignored as NGINX ignores it for a whole object
        ("bytes= 0-99", None),
        ("bytes=\t0-99", None),
        ("bytes=0 -99", None),
        ("bytes=-\t5", None),
    ],
)
def test_parse_range(header: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize(
    ("header", "length", "detail"),
    [
        ("bytes=1000-", 1000, "range starts beyond the end"),
        ("bytes=1000-2000", 1000, "range starts beyond the end"),
        ("bytes=0-", 0, "range starts beyond the end"),
        ("bytes=-0", 1000, "empty suffix range"),
    ],
)
def test_parse_range_not_satisfiable(header: str, length: int, detail: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, length)
    assert caught.value.detail == detail
    assert caught.value.length == length
    assert caught.value.status == 416


# -- to_cached -------------------------------------------------------------------------------------------------


def test_to_cached_decodes_a_row() -> None:
    cached = to_cached(ROWS[CT1])
    assert (cached.ids.study, cached.ids.series, cached.ids.sop) == (ST, SE, CT1)
    assert (cached.transfer_syntax_uid, cached.storage_key, cached.size, cached.etag) == (
        EXPLICIT, key(SE, CT1), 3000, '"e1"'
    )  # fmt: skip
    assert cached.frames == FrameIndex.native(1000, 512, 3)
    assert cached.bulkdata == {
        "7FE00010": (1000, 1536),
        "00420011": (300, 1000),
        "00091010": (2900, 0),
        "00540016/0/00181072": (200, 16),
    }
    old = to_cached(ROWS[OLD])
    assert (old.frames, old.etag, old.frame_media_type, old.bulkdata) == (None, "", "application/octet-stream", {})


def test_to_cached_accepts_dict_bulkdata() -> None:
    row = Row(ST, SE, CT1, EXPLICIT, "k", 1, "", None, None, json.dumps([{"path": "p", "offset": 5, "length": 6}]))
    assert to_cached(row).bulkdata == {"p": (5, 6)}


# -- frames --------------------------------------------------------------------------------------------------------


def test_single_native_frame(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE, CT1, "/frames/2"), "application/octet-stream", "")
    assert response == PlanResponse(
        200,
        [
            ("Content-Type", f"application/octet-stream; transfer-syntax={EXPLICIT}"),
            ("X-Accel-Expires", str(STABLE_PLAN_SECONDS)),
            ("X-Dgw-Accept-Ranges", "bytes"),
        ],
        inc(CT1, 1512, 2023),
    )
    assert STABLE_PLAN_SECONDS == 600


def test_single_encapsulated_frame_spanning_two_fragments(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE2, WSI, "/frames/1"), "image/jpeg", "")
    assert response.status == 200
    assert response.headers == [
        ("Content-Type", f"image/jpeg; transfer-syntax={JPEG}"),
        ("X-Accel-Expires", "600"),
        ("X-Dgw-Accept-Ranges", "bytes"),
    ]
    assert response.body == inc(WSI, 2000, 2099) + inc(WSI, 2108, 2157)


def test_frames_multipart_default_for_jpeg(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE2, WSI, "/frames/2,1"), "", "")
    boundary = boundary_of(response, "image/jpeg")
    part = f"image/jpeg; transfer-syntax={JPEG}"
    assert response.status == 200
    assert response.headers[1] == ("X-Accel-Expires", "600")
    assert len(response.headers) == 2
    assert response.body == multipart_body(
        boundary, [(part, inc(WSI, 2166, 2245)), (part, inc(WSI, 2000, 2099) + inc(WSI, 2108, 2157))]
    )


def test_frames_multipart_octet_stream(planner: Planner) -> None:
    accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    response = planner.plan("GET", instance_uri(SE, CT1, "/frames/1,3"), accept, "")
    boundary = boundary_of(response, "application/octet-stream")
    part = f"application/octet-stream; transfer-syntax={EXPLICIT}"
    assert response.body == multipart_body(boundary, [(part, inc(CT1, 1000, 1511)), (part, inc(CT1, 2024, 2535))])


def test_boundaries_are_fresh(planner: Planner) -> None:
    uri = instance_uri(SE, CT1, "/frames/1")
    first = boundary_of(planner.plan("GET", uri, "", ""), "application/octet-stream")
    assert first != boundary_of(planner.plan("GET", uri, "", ""), "application/octet-stream")


def test_a_list_of_frames_cannot_be_single_part(planner: Planner) -> None:
    with pytest.raises(NotAcceptable):
        planner.plan("GET", instance_uri(SE, CT1, "/frames/1,2"), "application/octet-stream", "")


def test_frames_without_an_index_are_not_acceptable(planner: Planner) -> None:
    with pytest.raises(NotAcceptable) as caught:
        planner.plan("GET", instance_uri(SE2, OLD, "/frames/1"), "", "")
    assert caught.value.detail == (
        "frames of this instance cannot be served as stored byte ranges "
        "(its data set is deflated); retrieve the instance instead"
    )


@pytest.mark.parametrize(
    ("syntax", "why"),
    [
        ("1.2.840.10008.1.2.1.99", "its data set is deflated"),
        ("1.2.840.10008.1.2.2", "it is big-endian"),
        (
            "1.2.840.10008.1.2.4.102",
            "it is a video stream, whose frames cannot be separated: its Pixel Data bulkdata is the stream",
        ),
        (
            "1.2.840.10008.1.2.5",
            "its compressed frames cannot be told apart: no offset table with an entry for each frame, and fragments "
            "that do not each start one",
        ),
        ("1.2.840.10008.1.2", "its 1-bit frames do not start on a byte boundary"),
        ("1.2.840.10008.1.2.1", "its 1-bit frames do not start on a byte boundary"),
    ],
)
def test_the_406_for_frames_without_an_index_says_why(syntax: str, why: str) -> None:
    from dataclasses import replace

    from gateway.dicomweb.wado import _why_no_frames

    assert _why_no_frames(replace(to_cached(ROWS[OLD]), transfer_syntax_uid=syntax)) == why


def test_frame_out_of_range_is_404(planner: Planner) -> None:
    with pytest.raises(FrameNotFound) as caught:
        planner.plan("GET", instance_uri(SE, CT1, "/frames/1,4"), "", "")
    assert caught.value.status == 404
    assert caught.value.detail == "frame 4 does not exist; the instance has 3 frame(s)"


def test_a_frame_list_is_never_longer_than_the_instance(planner: Planner) -> None:
    """Repeats are served (PS3.18 sets no rule), but never more frames than the instance holds: one URI asking for a
    large frame 1,000 times was 1,000 storage reads and a GB sent."""
    response = planner.plan("GET", instance_uri(SE, CT1, "/frames/1,1,3"), "", "")  # CT1 has 3 frames
    assert response.status == 200
    with pytest.raises(BadRequest) as caught:
        planner.plan("GET", instance_uri(SE, CT1, "/frames/1,1,1,1"), "", "")
    assert caught.value.detail == "the frame list is longer than the instance's 3 frame(s)"


@pytest.mark.parametrize(
    "spec", ["0", "1,0", "a", "1,", "-1", ",".join(["1"] * 1001), "9" * 30, "2147483648", "1_0", "+1", "9" * 5000]
)
def test_bad_frame_lists(planner: Planner, spec: str) -> None:
    with pytest.raises(BadRequest):
        planner.plan("GET", instance_uri(SE, CT1, f"/frames/{spec}"), "", "")


def test_transfer_syntax_mismatch_is_406(planner: Planner) -> None:
    accept = f"multipart/related; type=application/octet-stream; transfer-syntax={JPEG}"
    with pytest.raises(NotAcceptable):
        planner.plan("GET", instance_uri(SE, CT1, "/frames/1"), accept, "")


def test_accept_query_parameter_wins_over_the_header(planner: Planner) -> None:
    wanted = quote('multipart/related; type="application/octet-stream"')
    uri = instance_uri(SE, CT1, f"/frames/1?accept={wanted}")
    response = planner.plan("GET", uri, "application/octet-stream", "")
    boundary = boundary_of(response, "application/octet-stream")
    part = f"application/octet-stream; transfer-syntax={EXPLICIT}"
    assert response.body == multipart_body(boundary, [(part, inc(CT1, 1000, 1511))])
    with pytest.raises(NotAcceptable):
        planner.plan("GET", instance_uri(SE, CT1, "/frames/1?accept=image/png"), "*/*", "")


def test_token_prefix_and_query_token_do_not_change_the_plan(planner: Planner) -> None:
    plain = planner.plan("GET", instance_uri(SE, CT1, "/frames/3"), "application/octet-stream", "")
    prefixed = planner.plan(
        "GET", "/t/abc" + instance_uri(SE, CT1, "/frames/3?token=x"), "application/octet-stream", ""
    )
    assert plain == prefixed


# -- instance lookup -----------------------------------------------------------------------------------------------


def test_instance_in_another_series_or_study_is_not_found(planner: Planner) -> None:
    with pytest.raises(NotFound) as caught:
        planner.plan("GET", instance_uri(SE2, CT1, "/frames/1"), "", "")
    assert caught.value.detail == "no such instance"
    with pytest.raises(NotFound) as caught:
        planner.plan("GET", f"/dicomweb/studies/9.9/series/{SE}/instances/{CT1}/frames/1", "", "")
    assert caught.value.detail == "no such instance"
    with pytest.raises(NotFound) as caught:
        planner.plan("GET", instance_uri(SE, "7.7.7", "/frames/1"), "", "")
    assert caught.value.detail == "no such instance"


@pytest.mark.parametrize(
    "rest", [f"/series/{SE}/instances/{CT1}/metadata", f"/series/{SE}/metadata", "/metadata", "/series"]
)
def test_non_retrieve_paths_are_not_planned(planner: Planner, rest: str) -> None:
    with pytest.raises(NotFound) as caught:
        planner.plan("GET", f"/dicomweb/studies/{ST}{rest}", "", "")
    assert caught.value.detail == "not a retrieve path"


def test_paths_are_validated(planner: Planner) -> None:
    with pytest.raises(InvalidPath):
        planner.plan("GET", f"/dicomweb/studies/{ST}/series/{SE}/instances/../frames/1", "", "")
    with pytest.raises(NotFound):
        planner.plan("GET", "/dicomweb/studies", "", "")


def test_lru_cache(catalog: Catalog) -> None:
    planner = Planner(catalog.load, catalog.list, origin, cache_size=2)
    uri = instance_uri(SE, CT1, "/frames/1")
    planner.plan("GET", uri, "", "")
    planner.plan("GET", instance_uri(SE, CT1, "/frames/2"), "", "")
    assert catalog.loads == [CT1]
    planner.forget(CT1)
    planner.forget("never-loaded")  # harmless
    planner.plan("GET", uri, "", "")
    assert catalog.loads == [CT1, CT1]
    # bounded, least recently used goes first: CT1, CT2, CT1 (refreshed), WSI evicts CT2
    planner.plan("GET", instance_uri(SE, CT2, "/frames/1"), "", "")
    planner.plan("GET", uri, "", "")
    planner.plan("GET", instance_uri(SE2, WSI, "/frames/1"), "", "")
    assert catalog.loads == [CT1, CT1, CT2, WSI]
    planner.plan("GET", uri, "", "")
    planner.plan("GET", instance_uri(SE, CT2, "/frames/1"), "", "")
    assert catalog.loads == [CT1, CT1, CT2, WSI, CT2]


def test_a_cached_instance_is_still_checked_against_the_path(planner: Planner) -> None:
    planner.plan("GET", instance_uri(SE, CT1, "/frames/1"), "", "")
    with pytest.raises(NotFound):
        planner.plan("GET", instance_uri(SE2, CT1, "/frames/1"), "", "")


# -- bulkdata ------------------------------------------------------------------------------------------------------


def test_bulkdata_single_part_200(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE, CT1, "/bulkdata/00420011"), "application/octet-stream", "")
    assert response == PlanResponse(
        200,
        [
            ("Content-Type", "application/octet-stream"),
            ("X-Dgw-Accept-Ranges", "bytes"),
            ("X-Accel-Expires", "600"),
        ],
        inc(CT1, 300, 1299),
    )


def test_bulkdata_nested_path(planner: Planner) -> None:
    response = planner.plan(
        "GET", instance_uri(SE, CT1, "/bulkdata/00540016/0/00181072"), "application/octet-stream", ""
    )
    assert response.body == inc(CT1, 200, 215)


def test_bulkdata_range_206(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE, CT1, "/bulkdata/00420011"), "", "bytes=100-199")
    assert response == PlanResponse(
        206,
        [
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", "bytes 100-199/1000"),
            ("X-Accel-Expires", "600"),
        ],
        inc(CT1, 400, 499),
    )
    suffix = planner.plan("GET", instance_uri(SE, CT1, "/bulkdata/00420011"), "*/*", "bytes=-10")
    assert dict(suffix.headers)["Content-Range"] == "bytes 990-999/1000"
    assert suffix.body == inc(CT1, 1290, 1299)


def test_bulkdata_range_416(planner: Planner) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        planner.plan("GET", instance_uri(SE, CT1, "/bulkdata/00420011"), "", "bytes=1000-")
    assert caught.value.length == 1000


def test_bulkdata_ignored_range_is_a_full_200(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE, CT1, "/bulkdata/00420011"), "", "bytes=0-1,5-9")
    assert response.status == 200
    assert ("X-Dgw-Accept-Ranges", "bytes") in response.headers
    assert response.body == inc(CT1, 300, 1299)


def test_bulkdata_multipart_by_default(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE, CT1, "/bulkdata/7FE00010"), "", "")
    boundary = boundary_of(response, "application/octet-stream")
    assert response.headers[1] == ("X-Accel-Expires", "600")
    assert response.body == multipart_body(boundary, [("application/octet-stream", inc(CT1, 1000, 2535))])


def test_empty_bulkdata(planner: Planner) -> None:
    single = planner.plan("GET", instance_uri(SE, CT1, "/bulkdata/00091010"), "application/octet-stream", "")
    assert (single.status, single.body) == (200, b"")
    multi = planner.plan("GET", instance_uri(SE, CT1, "/bulkdata/00091010"), "", "")
    assert multi.body == multipart_body(
        boundary_of(multi, "application/octet-stream"), [("application/octet-stream", b"")]
    )


def test_unknown_bulkdata(planner: Planner) -> None:
    with pytest.raises(NotFound) as caught:
        planner.plan("GET", instance_uri(SE, CT1, "/bulkdata/00100010"), "", "")
    assert caught.value.detail == "no such bulkdata element"


# -- retrieve ------------------------------------------------------------------------------------------------------


def test_retrieve_instance_single_part_is_a_redirect(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE, CT1), "application/dicom", "bytes=0-10")
    assert response == PlanResponse(
        200,
        [
            ("X-Accel-Redirect", f"/_obj/objects/{key(SE, CT1)}"),
            ("X-Accel-Expires", "0"),
            ("Content-Type", "application/dicom"),
            ("X-Dgw-Size", "3000"),  # named in a 416 storage sends without a Content-Range (S3)
        ],
        b"",
    )


def test_retrieve_instance_multipart(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE, CT2), "", "")
    boundary = boundary_of(response, "application/dicom")
    assert response.headers[1] == ("X-Accel-Expires", "600")
    assert response.body == multipart_body(boundary, [(f"application/dicom; transfer-syntax={JPEG}", inc(CT2))])


def test_retrieve_series_multipart(planner: Planner, catalog: Catalog) -> None:
    response = planner.plan(
        "GET", f"/dicomweb/studies/{ST}/series/{SE}", "multipart/related; type=application/dicom", ""
    )
    boundary = boundary_of(response, "application/dicom")
    assert response.headers[1] == ("X-Accel-Expires", "0")  # a series grows with uploads
    assert response.body == multipart_body(
        boundary,
        [
            (f"application/dicom; transfer-syntax={EXPLICIT}", inc(CT1)),
            (f"application/dicom; transfer-syntax={JPEG}", inc(CT2)),
        ],
    )
    assert catalog.lists == [(ST, SE)]
    assert catalog.loads == []


def test_retrieve_study_with_mixed_transfer_syntaxes(planner: Planner, catalog: Catalog) -> None:
    response = planner.plan(
        "GET", f"/dicomweb/studies/{ST}", "multipart/related; type=application/dicom; transfer-syntax=*", ""
    )
    boundary = boundary_of(response, "application/dicom")
    assert response.body == multipart_body(
        boundary,
        [
            (f"application/dicom; transfer-syntax={ROWS[sop].transfer_syntax_uid}", inc(sop))
            for sop in (CT1, CT2, WSI, OLD)
        ],
    )
    assert catalog.lists == [(ST, None)]
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}'
    with pytest.raises(NotAcceptable):
        planner.plan("GET", f"/dicomweb/studies/{ST}", accept, "")
    # PS3.18 8.7.8.2: each part has its own Selected Transfer Syntax, so listing every stored syntax is enough (this
    # was a 406); leaving one out is still a 406 (no transcoding), whatever q the others have.
    stored = sorted({ROWS[sop].transfer_syntax_uid for sop in (CT1, CT2, WSI, OLD)})
    ranges = [
        f'multipart/related; type="application/dicom"; transfer-syntax={ts}; q=0.{9 - n}' for n, ts in enumerate(stored)
    ]
    listed = planner.plan("GET", f"/dicomweb/studies/{ST}", ", ".join(reversed(ranges)), "")
    assert listed.body == multipart_body(
        boundary_of(listed, "application/dicom"),
        [
            (f"application/dicom; transfer-syntax={ROWS[sop].transfer_syntax_uid}", inc(sop))
            for sop in (CT1, CT2, WSI, OLD)
        ],
    )
    with pytest.raises(NotAcceptable):
        planner.plan("GET", f"/dicomweb/studies/{ST}", ", ".join(ranges[1:]), "")


def test_retrieve_series_with_one_transfer_syntax_honours_it(catalog: Catalog) -> None:
    planner = Planner(catalog.load, catalog.list, origin)
    accept = f"multipart/related; type=application/dicom; transfer-syntax={JPEG}"
    del catalog.rows[CT1]
    assert planner.plan("GET", f"/dicomweb/studies/{ST}/series/{SE}", accept, "").status == 200
    with pytest.raises(NotAcceptable):
        planner.plan("GET", f"/dicomweb/studies/{ST}/series/{SE}", "application/dicom", "")


def test_retrieve_empty_series_is_404(planner: Planner) -> None:
    with pytest.raises(NotFound) as caught:
        planner.plan("GET", f"/dicomweb/studies/{ST}/series/9.9.9", "", "")
    assert caught.value.detail == "no instances"


# -- WADO-URI ------------------------------------------------------------------------------------------------------


def wado(**params: str) -> str:
    return "/dicomweb/wado?" + "&".join(f"{name}={value}" for name, value in params.items())


def test_wado_uri_redirects_to_the_object(planner: Planner) -> None:
    uri = wado(requestType="WADO", studyUID=ST, seriesUID=SE, objectUID=CT1, contentType="application/dicom")
    assert planner.wado(parse_qs(uri.partition("?")[2])) == PlanResponse(
        200,
        [
            ("X-Accel-Redirect", f"/_obj/objects/{key(SE, CT1)}"),
            ("X-Accel-Expires", "0"),
            ("Content-Type", "application/dicom"),
            ("X-Dgw-Size", "3000"),  # named in a 416 storage sends without a Content-Range (S3)
        ],
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"studyUID": "", "seriesUID": ""},  # Weasis's requireOnlySOPInstanceUID
        {"studyUID": None, "seriesUID": None},
        {"seriesUID": ""},
        {"studyUID": None},
        {"requestType": "wado"},  # PS3.18 9.1.2.1.1: an ABNF quoted string, case-insensitive
    ],
)
def test_wado_uri_finds_an_object_named_by_its_sop_instance_uid(
    planner: Planner, changes: dict[str, str | None]
) -> None:
    uri = wado_with(**changes, contentType="application/dicom")
    answer = planner.wado(parse_qs(uri.partition("?")[2], keep_blank_values=True))
    assert answer is not None
    assert ("X-Accel-Redirect", f"/_obj/objects/{key(SE, CT1)}") in answer.headers


GOOD_WADO = {"requestType": "WADO", "studyUID": ST, "seriesUID": SE, "objectUID": CT1}


def wado_with(**changes: str | None) -> str:
    """A valid WADO-URI query with some parameters changed (None: left out)."""
    merged = {**GOOD_WADO, **changes}
    return wado(**{name: value for name, value in merged.items() if value is not None})


@pytest.mark.parametrize(
    ("uri", "error", "detail"),
    [
        (wado_with(requestType=None), BadRequest, "WADO-URI needs exactly one requestType"),
        (wado_with(requestType="RS"), BadRequest, "requestType must be WADO"),
        (wado_with() + f"&studyUID={ST}", BadRequest, "WADO-URI needs exactly one studyUID"),
        (wado_with(requestType="WADO&requestType=WADO"), BadRequest, "WADO-URI needs exactly one requestType"),
        (wado_with(objectUID=None), BadRequest, "WADO-URI needs exactly one objectUID"),
        (wado_with() + f"&objectUID={CT2}", BadRequest, "WADO-URI needs exactly one objectUID"),
        (wado_with(studyUID="x"), InvalidUID, "studyUID is not a valid DICOM UID"),
        (wado_with(seriesUID="1..2"), InvalidUID, "seriesUID is not a valid DICOM UID"),
        (wado_with(objectUID="a"), InvalidUID, "objectUID is not a valid DICOM UID"),
        (wado_with(seriesUID=SE2), NotFound, "no such instance"),
        (wado_with(studyUID=None, seriesUID=SE2), NotFound, "no such instance"),
        (wado_with(studyUID="", seriesUID="", objectUID="1.2.3.9"), NotFound, "no such instance"),
    ],
)
def test_wado_uri_validation(planner: Planner, uri: str, error: type[Exception], detail: str) -> None:
    with pytest.raises(error) as caught:
        planner.wado(parse_qs(uri.partition("?")[2]))
    assert type(caught.value) is error
    assert getattr(caught.value, "detail", None) == detail


def test_study_and_series_lists_are_reused_while_the_study_version_holds(catalog: Catalog) -> None:
    version = {"value": (3, 1, 100)}
    planner = Planner(catalog.load, catalog.list, origin, study_version=lambda study: version["value"])
    first = planner.plan("GET", f"/dicomweb/studies/{ST}/series/{SE}", "", "")
    again = planner.plan("GET", f"/dicomweb/studies/{ST}/series/{SE}", "", "")
    assert catalog.lists == [(ST, SE)]  # the second plan read only the version
    assert first.body.count(b"<!--# include") == again.body.count(b"<!--# include")
    version["value"] = (4, 1, 101)  # an upload changed the study
    planner.plan("GET", f"/dicomweb/studies/{ST}/series/{SE}", "", "")
    assert catalog.lists == [(ST, SE), (ST, SE)]


def test_without_a_version_lists_are_read_every_time(planner: Planner, catalog: Catalog) -> None:
    planner.plan("GET", f"/dicomweb/studies/{ST}", "", "")
    planner.plan("GET", f"/dicomweb/studies/{ST}", "", "")
    assert catalog.lists == [(ST, None), (ST, None)]


# -- frame Range and derivatives ------------------------------------------------------------------------------------


def test_slice_ranges() -> None:
    ranges = [(2000, 100), (2108, 50)]
    assert slice_ranges(ranges, 0, 149) == ranges
    assert slice_ranges(ranges, 90, 109) == [(2090, 10), (2108, 10)]
    assert slice_ranges(ranges, 100, 100) == [(2108, 1)]
    assert slice_ranges(ranges, 0, 9) == [(2000, 10)]


def test_single_frame_range_206_across_fragments(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE2, WSI, "/frames/1"), "image/jpeg", "bytes=90-109")
    assert response.status == 206
    assert dict(response.headers)["Content-Range"] == "bytes 90-109/150"
    assert response.body == inc(WSI, 2090, 2099) + inc(WSI, 2108, 2117)


def test_single_frame_range_416(planner: Planner) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        planner.plan("GET", instance_uri(SE, CT1, "/frames/1"), "application/octet-stream", "bytes=512-")
    assert caught.value.length == 512


def test_multipart_frames_ignore_range(planner: Planner) -> None:
    response = planner.plan("GET", instance_uri(SE, CT1, "/frames/1"), "", "bytes=0-9")
    assert response.status == 200
    assert dict(response.headers)["Content-Type"].startswith("multipart/related")


DKEY = "studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.1/htj2k-abc.j2c"
HT_ACCEPT = f"image/jphc; transfer-syntax={DERIVATIVE_TS}, application/octet-stream; transfer-syntax=*"


@dataclass
class DerivedRow(Row):
    derivative_syntax: str | None = None
    derivative_key: str | None = None
    derivative_index: bytes | None = None


def derived(catalog: Catalog) -> None:
    base = ROWS[CT1]
    catalog.rows[CT1] = DerivedRow(
        **base.__dict__,
        derivative_syntax=DERIVATIVE_TS,
        derivative_key=DKEY,
        derivative_index=FrameIndex.encapsulated([(0, 300), (300, 200), (500, 100)], [0, 1, 2]).pack(),
    )


def dinc(first: int, last: int) -> bytes:
    return f'<!--# include virtual="/_seg/{first}-{last}/objects/{DKEY}" wait="yes" -->'.encode()


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "*/*",
        "application/octet-stream",
        "application/octet-stream; transfer-syntax=*",
    ],
)
def test_derivative_not_served_unless_named(catalog: Catalog, planner: Planner, accept: str) -> None:
    derived(catalog)
    response = planner.plan("GET", instance_uri(SE, CT1, "/frames/2"), accept, "")
    assert DKEY.encode() not in response.body


def test_derivative_served_when_named_with_range(catalog: Catalog, planner: Planner) -> None:
    derived(catalog)
    response = planner.plan("GET", instance_uri(SE, CT1, "/frames/2"), HT_ACCEPT, "")
    assert response.status == 200
    assert response.headers[0] == ("Content-Type", f"image/jphc; transfer-syntax={DERIVATIVE_TS}")
    assert response.body == dinc(300, 499)
    partial = planner.plan("GET", instance_uri(SE, CT1, "/frames/2"), HT_ACCEPT, "bytes=0-49")
    assert partial.status == 206
    assert dict(partial.headers)["Content-Range"] == "bytes 0-49/200"
    assert partial.body == dinc(300, 349)
    multi = planner.plan(
        "GET",
        instance_uri(SE, CT1, "/frames/3"),
        f'multipart/related; type="application/octet-stream"; transfer-syntax={DERIVATIVE_TS}',
        "",
    )
    assert dinc(500, 599) in multi.body
    assert f"Content-Type: application/octet-stream; transfer-syntax={DERIVATIVE_TS}".encode() in multi.body


def test_original_until_derivative_published_then_derivative(catalog: Catalog, planner: Planner) -> None:
    first = planner.plan("GET", instance_uri(SE, CT1, "/frames/1"), HT_ACCEPT, "")
    assert first.body == inc(CT1, 1000, 1511)
    assert ("X-Accel-Expires", "0") in first.headers  # not cached: the derivative may come any moment
    derived(catalog)
    second = planner.plan("GET", instance_uri(SE, CT1, "/frames/1"), HT_ACCEPT, "")
    assert second.body == dinc(0, 299)
    assert ("X-Accel-Expires", "600") in second.headers


def test_derivative_for_star_only_behind_setting(catalog: Catalog) -> None:
    derived(catalog)
    planner = Planner(catalog.load, catalog.list, origin, derivatives_for_any=True)
    star = planner.plan("GET", instance_uri(SE, CT1, "/frames/1"), "application/octet-stream; transfer-syntax=*", "")
    assert star.body == dinc(0, 299)
    plain = planner.plan("GET", instance_uri(SE, CT1, "/frames/1"), "application/octet-stream", "")
    assert plain.body == inc(CT1, 1000, 1511)


def test_only_derivative_named_without_it_is_406(planner: Planner) -> None:
    with pytest.raises(NotAcceptable):
        planner.plan("GET", instance_uri(SE, CT1, "/frames/1"), f"image/jphc; transfer-syntax={DERIVATIVE_TS}", "")


# -- block plans ---------------------------------------------------------------------------------------------------

BLOCK = nginx.FRAMES_PER_BLOCK


def frame_from_block(response: PlanResponse, n: int) -> PlanResponse:
    """Frame ``n``'s plan as NGINX makes it from its block's plan (the template's ``$dgw_frame_segment`` map): the
    segment location the table names and the range it gives the frame's place (the last two digits of ``n``), or
    the abort location for a place it does not list, where the body names ``$dgw_frame_segment``; the table header
    is not sent."""
    table = dict(response.headers)[nginx.FRAME_RANGES]
    found = re.fullmatch(rf"(/_f?seg);(?:[^;]*;)*?{n % 100:02d}:([0-9]+-[0-9]+);.*", table)
    segment = f"{found.group(1)}/{found.group(2)}" if found else nginx.ABORT
    kept = [(k, v) for k, v in response.headers if k not in (nginx.FRAME_RANGES, nginx.FRAME_AROUND)]
    return PlanResponse(response.status, kept, response.body.replace(b"$dgw_frame_segment", segment.encode()))


def same_but_boundary(one: PlanResponse, other: PlanResponse) -> bool:
    """Equal but for the multipart boundary (fresh in every multipart plan)."""

    def masked(plan: PlanResponse) -> PlanResponse:
        match = re.search(r"boundary=([0-9a-f]{32})", dict(plan.headers)["Content-Type"])
        if match is None:
            return plan
        b = match.group(1)
        return PlanResponse(
            plan.status, [(k, v.replace(b, "B")) for k, v in plan.headers], plan.body.replace(b.encode(), b"B")
        )

    return masked(one) == masked(other)


def unserved(response: PlanResponse, seconds: int = STABLE_PLAN_SECONDS) -> bool:
    """The answer for a block NGINX is not to serve frames from: a 404 it keeps like a block."""
    return (response.status, response.headers, response.body) == (404, [("X-Accel-Expires", str(seconds))], b"")


def add_instance(catalog: Catalog, sop: str, index: FrameIndex, size: int = 99_999) -> None:
    catalog.rows[sop] = Row(ST, SE, sop, EXPLICIT, key(SE, sop), size, "", "application/octet-stream", index.pack(), "")


@pytest.mark.parametrize("fragmented", [False, True])
def test_block_frames_are_the_per_frame_plans(planner: Planner, catalog: Catalog, fragmented: bool) -> None:
    big = "1.2.3.4.9"
    frames = 3 * BLOCK + 50  # blocks 1 and 2 whole, block 3 partial
    index = FrameIndex.native(1000, 10, frames)
    if fragmented:  # one fragment per frame but frame 250's two
        fragments = [(1000 + 40 * i, 12 + i % 5) for i in range(frames + 1)]
        index = FrameIndex.encapsulated(fragments, [*range(250), *range(251, frames + 1)])
    add_instance(catalog, big, index)
    for accept in ("application/octet-stream", "multipart/related; type=application/octet-stream"):
        response = planner.block(instance_uri(SE, big, "/frames/1"), accept)
        assert response.status == 200 and response.body.count(b"<!--# include") == 1
        table = dict(response.headers)[nginx.FRAME_RANGES]
        assert re.fullmatch(rf"/_seg(;[0-9]{{2}}:[0-9]+-[0-9]+){{{BLOCK}}};", table), table
        around = int(dict(response.headers)[nginx.FRAME_AROUND])
        for n in range(BLOCK, 2 * BLOCK):
            plan = planner.plan("GET", instance_uri(SE, big, f"/frames/{n}"), accept, "")
            assert same_but_boundary(frame_from_block(response, n), plan), n
            # the length HTTP/1.0 is sent (njs's frameLength: the frame's range and the bytes around it): its own plan's
            found = re.search(rf";{n % 100:02d}:([0-9]+)-([0-9]+);", table)
            assert found is not None and int(found[2]) - int(found[1]) + 1 + around == served_length(plan.body), n
        second = planner.block(instance_uri(SE, big, "/frames/2"), accept)
        if fragmented:
            assert unserved(second)  # a frame of the block is read in two ranges
        else:
            plan = planner.plan("GET", instance_uri(SE, big, "/frames/250"), accept, "")
            assert same_but_boundary(frame_from_block(second, 250), plan)
        assert unserved(planner.block(instance_uri(SE, big, "/frames/3"), accept))  # frames 300-349 of 300-399


def test_a_place_the_table_does_not_list_is_read_from_the_abort_location(planner: Planner, catalog: Catalog) -> None:
    """What NGINX includes for a frame whose place has no range (never asked: a block lists all of its frames) is
    under /_dgw/abort, which aborts the transfer: never another frame's bytes."""
    big = "1.2.3.4.9"
    add_instance(catalog, big, FrameIndex.native(1000, 10, 2 * BLOCK))
    response = planner.block(instance_uri(SE, big, "/frames/1"), "application/octet-stream")
    headers = dict(response.headers)
    headers[nginx.FRAME_RANGES] = headers[nginx.FRAME_RANGES].replace(";42:", ";4:")
    plan = frame_from_block(PlanResponse(200, list(headers.items()), response.body), 142)
    assert plan.body == f'<!--# include virtual="{nginx.ABORT}/objects/{key(SE, big)}" wait="yes" -->'.encode()


def test_block_refusals(planner: Planner, catalog: Catalog) -> None:
    octet = "application/octet-stream"
    for path in ("/frames/0", "/frames/01", "/frames/1?accept=x", "/frames/1,2", "/frames/", "/bulkdata/7FE00010"):
        with pytest.raises(NotFound):
            planner.block(instance_uri(SE, CT1, path), octet)
    with pytest.raises(FrameNotFound):  # the error its first frame gets: frame 100 of 3
        planner.block(instance_uri(SE, CT1, "/frames/1"), octet)
    big = "1.2.3.4.9"
    add_instance(catalog, big, FrameIndex.native(1000, 10, 2 * BLOCK))
    with pytest.raises(NotAcceptable):
        planner.block(instance_uri(SE, big, "/frames/1"), "image/png")
    with pytest.raises(FramesNotServable):
        planner.block(instance_uri(SE2, OLD, "/frames/1"), octet)


def test_local_folder_blocks_hold_ranges_njs_reads(catalog: Catalog) -> None:
    """With ``range_prefix=/_fseg`` (local-folder storage) a block names /_fseg for all of its frames, so it is made
    only when njs can hold each of them in memory; through /_seg (S3) any size is served from a block."""
    octet = "application/octet-stream"
    big = "1.2.3.4.10"
    limit = nginx.FILE_SEGMENT_MAX
    frames = [(1000 + (limit + 8) * i, limit + (i == 149)) for i in range(2 * BLOCK)]  # frame 150: one byte more
    add_instance(catalog, big, FrameIndex.encapsulated(frames, list(range(2 * BLOCK))), 300 * limit)
    local = Planner(catalog.load, catalog.list, origin, range_prefix=nginx.FILE_SEGMENT)
    assert unserved(local.block(instance_uri(SE, big, "/frames/1"), octet))
    s3 = Planner(catalog.load, catalog.list, origin)
    response = s3.block(instance_uri(SE, big, "/frames/1"), octet)
    assert frame_from_block(response, 150) == s3.plan("GET", instance_uri(SE, big, "/frames/150"), octet, "")
    frames[149] = (frames[149][0], limit)
    add_instance(catalog, big, FrameIndex.encapsulated(frames, list(range(2 * BLOCK))), 300 * limit)
    local.forget(big)
    response = local.block(instance_uri(SE, big, "/frames/1"), octet)
    include = f'<!--# include virtual="$dgw_frame_segment/objects/{key(SE, big)}" wait="yes" -->'
    assert response.body == include.encode() and dict(response.headers)[nginx.FRAME_RANGES].startswith("/_fseg;00:")
    assert frame_from_block(response, 150) == local.plan("GET", instance_uri(SE, big, "/frames/150"), octet, "")


def test_local_folder_ranges_up_to_the_limit_are_read_by_njs(catalog: Catalog) -> None:
    """With ``range_prefix=/_fseg`` (local-folder storage) a range njs can hold in memory is named for it, in plans;
    a larger one still streams through ``/_seg``."""
    planner = Planner(catalog.load, catalog.list, origin, range_prefix=nginx.FILE_SEGMENT)
    octet = "application/octet-stream"
    big = "1.2.3.4.10"
    limit = nginx.FILE_SEGMENT_MAX
    index = FrameIndex.encapsulated([(1000, limit), (1000 + limit, limit + 1)], [0, 1])
    catalog.rows[big] = Row(ST, SE, big, EXPLICIT, key(SE, big), 3 * limit, "", octet, index.pack(), "")
    path = f'{origin(key(SE, big))}" wait="yes" -->'.encode()
    first = planner.plan("GET", instance_uri(SE, big, "/frames/1"), octet, "")
    assert first.body == f'<!--# include virtual="/_fseg/1000-{999 + limit}'.encode() + path
    second = planner.plan("GET", instance_uri(SE, big, "/frames/2"), octet, "")
    assert second.body == f'<!--# include virtual="/_seg/{1000 + limit}-{1000 + 2 * limit}'.encode() + path
    ranged = planner.plan("GET", instance_uri(SE, CT1, "/frames/1"), octet, "bytes=0-9")
    assert ranged.status == 206 and b'virtual="/_fseg/1000-1009/objects/' in ranged.body


def test_the_tag_a_whole_objects_if_none_match_sends_storage() -> None:
    """RFC 9110 13.1.2's weak comparison, done here for storage (S3 compares W/ tags and lists strongly)."""
    from gateway.dicomweb.wado import storage_tag

    etag = '"0123abcd"'
    for header in ('W/"0123abcd"', '"a", "0123abcd"', '"a",W/"0123abcd" , "b"', '"0123abcd"'):
        assert storage_tag(header, etag) == etag, header
    for header in ("", "*", 'W/"other"', '"a", "b"', '"0123abc"', 'W/"0123abcd', '"0123abcd" x', 'w/"0123abcd"'):
        assert storage_tag(header, etag) == "", header
    assert storage_tag('W/"0123abcd"', "") == ""
    assert storage_tag("0123abcd", etag) == ""  # no entity-tag: the header goes as the client wrote it
