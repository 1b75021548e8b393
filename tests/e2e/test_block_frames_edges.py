"""Hostile and edge requests on frames NGINX serves from block plans (frames from 100 on; tests/e2e/test_frame_blocks.py
has the plain ones), through the real stack on both storage backends: every spelling of a frame number, methods,
preconditions, Range, every token transport and a refused credential on a frame whose block is cached, Accept
variants, a re-upload after a delete, an object cut short behind the gateway's back and S3 going away. Each answer
is compared with Python's per-frame plan for the same request (the ``accept`` query parameter sends a request
there, as tests/e2e/test_frame_blocks.py does); where storage no longer holds the frame a client gets a JSON error
or an aborted transfer, never another frame's bytes, never a 200 with a short body."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from gateway.dicomweb.multipart import multipart_boundary
from gateway.tools.synth import make_series, make_wsi, wsi_tile
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_derivatives import HT, HT_OR_ORIGINAL, ORIGINAL_TYPE, run_worker_until
from tests.e2e.test_hostile import raw
from tests.e2e.test_lifecycle import delete
from tests.e2e.test_storage_outages import Answer, assert_json_503, fetch
from tests.fixtures.servers import MotoServer, StorageFaults, start_moto

FRAMES = 250  # blocks 1 (frames 100-199, made) and 2 (200-250, partial: each frame its own plan)
OCTETS = {"Accept": "application/octet-stream"}


def slide(stack: RunningStack, folder: Path, seed: int) -> tuple[Path, str]:
    """A stored 250-frame slide of this test's own (so its blocks are made here) and its token's path."""
    path = make_wsi(folder, frames=FRAMES, seed=seed, clean=True)
    assert stack.stow([path]).status_code == 200
    study, series, sop = uids_of(path)
    token = stack.issue([study])["token"]
    return path, f"/t/{token}/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def through_python(path: str, accept: str) -> str:
    """The same request through Python's per-frame plan: the ``accept`` parameter keeps it off the block path."""
    return f"{path}{'&' if '?' in path else '?'}accept={urllib.parse.quote(accept)}"


def what(answer: Answer) -> tuple[bool, int, str, bytes]:
    """What a client can compare: complete or not, status, Content-Type, body (a multipart boundary, new for each
    plan Python makes, replaced by a constant)."""
    content_type = (answer.headers or {}).get("content-type", "")
    body = answer.payload()
    if content_type.startswith("multipart/"):
        content_type = content_type.replace(multipart_boundary(content_type), "BOUNDARY")
    return answer.complete, answer.status, content_type, body


def test_every_spelling_of_a_frame_number_is_answered_as_pythons_plan(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Leading zeros, ten digits and more, signs, exponents, decimals, a trailing slash, percent-encoded digits and
    lists across the block boundary: only the plain spelling of 100-999,999,999 takes the block path; every other
    one gets exactly Python's answer (the frame, or its JSON 400/404/406)."""
    _, url = slide(stack, tmp_path_factory.mktemp("edges-spellings"), 201)
    for number in (150, 250):  # block 1 made and cached; block 2 refused and cached
        assert fetch(stack, f"{url}/frames/{number}", OCTETS).status == 200
    tile = wsi_tile(201, 150, frames=FRAMES)
    served = {"150", "0150", "0000000150", "150?", "150?&"}
    spellings = {
        **dict.fromkeys(served, 200),
        "150/": 404,  # a trailing slash names no resource (README, "Unknown paths")
        "1000000000": 404,  # ten digits: past the instance
        "999999999": 404,
        "%31%35%30": 400,  # an unreserved character percent-encoded: a path that is not canonical
        "15%30": 400,
        "+150": 400,
        "1e2": 400,
        "150.0": 400,
        "150;x": 400,
        "2147483798": 400,  # past the largest frame number the gateway reads
        "150%2C250": 406,  # a list is multipart only
        "1,150": 406,
        "150,250": 406,
    }
    for spelling, status in spellings.items():
        answer = fetch(stack, f"{url}/frames/{spelling}", OCTETS)
        assert answer.status == status, (spelling, answer)
        if status == 200:
            assert answer.body == tile, spelling
        else:
            assert answer.headers is not None and answer.headers["content-type"] == "application/json", spelling
        assert what(answer) == what(fetch(stack, through_python(f"{url}/frames/{spelling}", OCTETS["Accept"]), OCTETS))
    # the same lists as multipart: each frame from whichever plan serves it
    multipart = 'multipart/related; type="application/octet-stream"'
    for spelling in ("99,150,250", "150%2C151", "150%2c99"):
        answer = fetch(stack, f"{url}/frames/{spelling}", {"Accept": multipart})
        assert answer.status == 200, (spelling, answer)
        reference = fetch(stack, through_python(f"{url}/frames/{spelling}", multipart), {"Accept": multipart})
        assert what(answer) == what(reference), spelling


def test_methods_preconditions_and_ranges_on_a_block_frame_are_pythons(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """HEAD, a CORS preflight (allowed and foreign origin), every precondition and Range, and Accept variants on a
    frame whose block is cached: the same status, headers and bytes as Python's per-frame plan."""
    _, url = slide(stack, tmp_path_factory.mktemp("edges-methods"), 202)
    frame = f"{url}/frames/160"
    assert fetch(stack, f"{url}/frames/150", OCTETS).status == 200  # block 1 cached
    tile = wsi_tile(202, 160, frames=FRAMES)
    cases: list[dict[str, str]] = [
        {"If-None-Match": "*"},
        {"If-None-Match": '"x"'},
        {"If-Match": '"x"'},
        {"If-Match": "*"},
        {"If-Modified-Since": "Thu, 01 Jan 2099 00:00:00 GMT"},
        {"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
        {"Range": "bytes=0-9"},
        {"Range": "bytes=-10"},
        {"Range": "bytes=0-9,20-29"},
        {"Range": "bytes=99999-"},
        {"Range": "bytes=abc"},
        {"Range": "bytes=0-9", "If-Range": '"x"'},
    ]
    for extra in cases:
        answer = fetch(stack, frame, {**OCTETS, **extra})
        reference = fetch(stack, through_python(frame, OCTETS["Accept"]), {**OCTETS, **extra})
        assert what(answer) == what(reference), (extra, answer)
        assert answer.status in (200, 206, 304, 412, 416), (extra, answer)
        if answer.status == 200:
            assert answer.body == tile, extra
        if answer.status == 206:
            assert answer.body in (tile[:10], tile[-10:]), extra
    suffix = what(fetch(stack, frame, {**OCTETS, "Range": "bytes=-10"}))
    assert suffix == (True, 206, "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50", tile[-10:])
    accepts = (
        "*/*",
        "",
        "garbage;;;",
        "image/jpeg, application/octet-stream",
        "application/octet-stream;q=0",
        "image/png",
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",  # a syntax the file does not have
        "image/jphc",
    )
    for accept in accepts:
        headers = {"Accept": accept} if accept else {}
        answer = fetch(stack, frame, headers)
        assert what(answer) == what(fetch(stack, through_python(frame, accept or "*/*"), headers)), accept
    for method in ("HEAD", "OPTIONS"):
        for origin in ("https://portal.example", "https://evil.example"):
            headers = {**OCTETS, "Origin": origin, "Access-Control-Request-Method": "GET"}
            python = f"{stack.url}{through_python(frame, OCTETS['Accept'])}"
            ours = requests.request(method, f"{stack.url}{frame}", headers=headers, timeout=30)
            theirs = requests.request(method, python, headers=headers, timeout=30)
            assert ours.status_code == theirs.status_code == (200 if method == "HEAD" else 204)
            drop = {"date"}
            assert {k: v for k, v in ours.headers.items() if k.lower() not in drop} == {
                k: v for k, v in theirs.headers.items() if k.lower() not in drop
            }
            allowed = ours.headers.get("Access-Control-Allow-Origin")
            assert allowed == (origin if origin == "https://portal.example" else None)
            assert ours.content == b""


def test_every_credential_is_judged_on_a_frame_whose_block_is_cached(
    stack: RunningStack, synthetic: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The block is the same for every token: the auth step still runs for each request, whatever the transport,
    and an expired, revoked, foreign or missing credential gets its JSON 401/403, never the cached block's frame."""
    path, url = slide(stack, tmp_path_factory.mktemp("edges-tokens"), 203)
    study, series, sop = uids_of(path)
    bare = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames"
    tile = wsi_tile(203, 170, frames=FRAMES)
    assert fetch(stack, f"{url}/frames/150", OCTETS).status == 200  # block 1 cached
    token = stack.issue([study])["token"]
    for transport, target, headers in (
        ("path", f"/t/{token}{bare}/170", {}),
        ("query", f"{bare}/170?token={token}", {}),
        ("cookie", f"{bare}/170", {"Cookie": f"dicomgw_token={token}"}),
        ("bearer", f"{bare}/170", {"Authorization": f"Bearer {token}"}),
    ):
        answer = fetch(stack, target, {**OCTETS, **headers})
        assert (answer.status, answer.body) == (200, tile), transport

    def refused(target: str, status: int, code: str) -> None:
        answer = fetch(stack, target, OCTETS)
        assert answer.complete and answer.status == status, (target, answer)
        assert answer.headers is not None and answer.headers["content-type"] == "application/json"
        assert json.loads(answer.body)["error"] == code, answer.body

    refused(f"{bare}/170", 401, "token_missing")
    refused(f"/t/not-a-token{bare}/170", 401, "token_invalid")
    foreign = stack.issue([uids_of(synthetic["ct"][0])[0]])["token"]
    refused(f"/t/{foreign}{bare}/170", 403, "out_of_scope")
    # a lifetime counts in whole seconds from the second it was issued in: ttl=1 may leave a few milliseconds
    # (a 401 token_expired met on a loaded clean-clone run); 3 leaves at least 2 s to fetch it
    short = stack.issue([study], ttl=3)["token"]
    assert fetch(stack, f"/t/{short}{bare}/171", OCTETS).status == 200
    time.sleep(4.5)  # expired, and NGINX's decision kept to the end of its last second over
    refused(f"/t/{short}{bare}/171", 401, "token_expired")
    issued = stack.issue([study])
    assert fetch(stack, f"/t/{issued['token']}{bare}/172", OCTETS).status == 200
    revoke = requests.post(f"{stack.url}/api/v1/tokens/{issued['jti']}/revoke", headers=stack.api_headers, timeout=10)
    assert revoke.status_code == 204
    time.sleep(5)  # README: revocation refresh (2 s) + decision cache (2 s) + NGINX's whole seconds
    refused(f"/t/{issued['token']}{bare}/172", 401, "token_revoked")


def test_a_slide_stored_again_after_its_delete_is_served_its_new_frames(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same SOP Instance UID stored again with other pixels (after a DELETE: overwrite is off by default): its
    frames come from new blocks, never the deleted one's byte ranges applied to the new object."""
    folder = tmp_path_factory.mktemp("edges-restore")
    path, url = slide(stack, folder / "old", 204)
    study, series, sop = uids_of(path)
    for number in (150, 160):
        assert fetch(stack, f"{url}/frames/{number}", OCTETS).body == wsi_tile(204, number, frames=FRAMES)
    assert delete(stack, f"studies/{study}/series/{series}/instances/{sop}").status_code == 204
    other = make_wsi(folder / "new", frames=FRAMES, seed=205, clean=True, study_uid=study)
    ds = pydicom.dcmread(other)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.save_as(other)
    assert stack.stow([other]).status_code == 200
    for number in (150, 160, 199, 50):
        answer = fetch(stack, f"{url}/frames/{number}", OCTETS)
        assert (answer.status, answer.body) == (200, wsi_tile(205, number, frames=FRAMES)), number


def test_an_object_cut_short_behind_the_gateways_back_is_an_aborted_transfer(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The stored object truncated in the middle of frame 150 (a botched copy, a lifecycle rule): S3 answers a range
    reaching past the new end with the bytes it has (a shorter 206), which went out as a complete 200 holding the
    frame's first 100 bytes, from its block's plan and from its own alike. Now both are an aborted transfer; frames
    before the cut are still served whole, and a frame past it never gets another frame's bytes."""
    folder = tmp_path_factory.mktemp("edges-cut")
    path, url = slide(stack, folder, 206)
    study, series, sop = uids_of(path)
    for number in (50, 150, 160):  # frame 50's plan and block 1 cached
        assert fetch(stack, f"{url}/frames/{number}", OCTETS).body == wsi_tile(206, number, frames=FRAMES)
    key = f"studies/{study}/series/{series}/instances/{sop}.dcm"
    stored = folder / "stored.dcm"
    stack.storage().download(key, stored)
    data = stored.read_bytes()
    (folder / "cut.dcm").write_bytes(data[: data.index(wsi_tile(206, 150, frames=FRAMES)) + 100])
    stack.storage().put_file(key, folder / "cut.dcm")
    for target in ("150", through_python("150", OCTETS["Accept"]), "151", "160", through_python("160", "*/*")):
        answer = fetch(stack, f"{url}/frames/{target}", OCTETS)
        assert not answer.complete, (target, answer.status, answer.headers, answer.body[:100])
    answer = fetch(stack, f"{url}/frames/50", OCTETS)
    assert (answer.status, answer.body) == (200, wsi_tile(206, 50, frames=FRAMES))


class RangeBlindS3(StorageFaults):
    """The relay of tests/e2e/test_storage_outages.py, which can also play an S3-compatible server that ignores
    ``Range`` on presigned reads (the header renamed on its way, same length): it answers the whole object, 200."""

    ignore_range = False

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        with self._lock:
            self._open.append(upstream)

        def pump(source: socket.socket, sink: socket.socket, outward: bool) -> None:
            try:
                while data := source.recv(65536):
                    if outward and self.ignore_range and b"X-Amz-Signature=" in data:
                        data = data.replace(b"\r\nRange: bytes=", b"\r\nX-Rng: bytes=")
                    sink.sendall(data)
            except OSError:
                pass
            self._close(source)
            self._close(sink)

        back = threading.Thread(target=pump, args=(upstream, client, False), daemon=True)
        back.start()
        pump(client, upstream, True)
        back.join()


@pytest.fixture(scope="module")
def s3_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningStack, RangeBlindS3]]:
    """A stack whose S3 a test can take away or make ignore Range (a relay in front of moto)."""
    moto = start_moto()
    faults = RangeBlindS3(moto.endpoint)
    base = tmp_path_factory.mktemp("edges-outage")
    running = start_stack(base / "var", "s3", MotoServer(moto.process, faults.endpoint))
    try:
        yield running, faults
    finally:
        running.stack.stop()
        faults.close()
        moto.stop()


def test_s3_gone_while_blocks_are_cached_is_an_abort_then_the_json_503(
    s3_relay: tuple[RunningStack, RangeBlindS3], tmp_path_factory: pytest.TempPathFactory
) -> None:
    stack, faults = s3_relay
    _, url = slide(stack, tmp_path_factory.mktemp("edges-s3-gone"), 207)
    for number in (50, 150):
        assert fetch(stack, f"{url}/frames/{number}", OCTETS).status == 200
    faults.set("refused")
    try:
        first = fetch(stack, f"{url}/frames/160", OCTETS)  # block 1 cached: the segment meets the outage
        if first.complete:
            assert_json_503("first", first)
        for number in (161, 199, 50, 250):
            assert_json_503(str(number), fetch(stack, f"{url}/frames/{number}", OCTETS))
    finally:
        faults.set("up")
    deadline = time.monotonic() + 10
    while fetch(stack, f"{url}/frames/162", OCTETS).status != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    answer = fetch(stack, f"{url}/frames/163", OCTETS)
    assert (answer.status, answer.body) == (200, wsi_tile(207, 163, frames=FRAMES))


def test_ranges_storage_answers_whole_are_still_served(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The other side of the check above: frames over 1 MB go through /_seg on the local folder too (its origin
    server's 206), single part, ranged and multipart, and are served byte for byte."""
    tile = 640  # 640 x 640 RGB: 1.2 MB a frame, past FILE_SEGMENT_MAX
    path = make_wsi(tmp_path_factory.mktemp("edges-big"), frames=3, native=True, tile=tile, seed=208, clean=True)
    assert stack.stow([path]).status_code == 200
    study, series, sop = uids_of(path)
    url = f"/t/{stack.issue([study])['token']}/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames"
    frames = [wsi_tile(208, n, frames=3, native=True, tile=tile) for n in (1, 2, 3)]
    assert len(frames[1]) > 1024 * 1024
    answer = fetch(stack, f"{url}/2", OCTETS)
    assert (answer.complete, answer.status, answer.body) == (True, 200, frames[1])
    part = fetch(stack, f"{url}/3", {**OCTETS, "Range": "bytes=1048500-1048699"})
    assert (part.complete, part.status, part.body) == (True, 206, frames[2][1048500:1048700])
    multipart = 'multipart/related; type="application/octet-stream"'
    both = fetch(stack, f"{url}/1,3", {"Accept": multipart})
    assert both.complete and both.status == 200
    assert frames[0] in both.body and frames[2] in both.body


def test_a_storage_that_ignores_range_never_gives_a_frame_the_whole_object(
    s3_relay: tuple[RunningStack, RangeBlindS3], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An S3-compatible server that answers a ranged read with the whole object (200): a frame was a 200 holding the
    whole stored instance (its header, every other frame). Now an aborted transfer, from a block's plan and a
    frame's own; served again once storage honours Range."""
    stack, relay = s3_relay
    _, url = slide(stack, tmp_path_factory.mktemp("edges-range-blind"), 209)
    for number in (50, 150):  # frame 50's plan and block 1 cached
        assert fetch(stack, f"{url}/frames/{number}", OCTETS).body == wsi_tile(209, number, frames=FRAMES)
    relay.ignore_range = True
    relay.set("up")  # closes the kept-alive connections: every read from here goes through the blind relay
    try:
        for target in ("150", "160", "50", through_python("170", OCTETS["Accept"])):
            answer = fetch(stack, f"{url}/frames/{target}", OCTETS)
            assert not answer.complete, (target, answer.status, answer.headers, len(answer.body))
    finally:
        relay.ignore_range = False
        relay.set("up")
    answer = fetch(stack, f"{url}/frames/160", OCTETS)
    assert (answer.status, answer.body) == (200, wsi_tile(209, 160, frames=FRAMES))


def cine(folder: Path, frames: int) -> tuple[Path, bytes]:
    """A monochrome 16-bit multi-frame instance of ``frames`` 32 x 32 frames (a derivative is made for it), and its
    pixel words."""
    slice_ = make_series(folder / "ct", modality="CT", slices=1, rows=32, columns=32, seed=210, clean=True)[0]
    ds = pydicom.dcmread(slice_)
    words = np.random.default_rng(210).integers(0, 4000, size=(frames, 32, 32), dtype=np.uint16).tobytes()
    ds.PixelRepresentation, ds.NumberOfFrames, ds.PixelData = 0, frames, words
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "cine.dcm")
    return folder / "cine.dcm", words


def test_the_derivative_on_block_frames_before_and_after_it_is_published(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """README "Mobile delivery": until the HTJ2K derivative exists, an Accept naming it with the stored syntax as a
    fallback gets the original (uncached, so the derivative is served once published) and naming it alone is a
    406; after, the derivative. Frames from 100 on answer exactly as their own plans, before and after."""
    running = start_stack(tmp_path_factory.mktemp("edges-derivative"), "file", None)
    running.stack.kill("derive")  # the derivative is made when this test says
    try:
        path, words = cine(tmp_path_factory.mktemp("edges-cine"), FRAMES)
        assert running.stow([path]).status_code == 200
        study, series, sop = uids_of(path)
        token = running.issue([study])["token"]
        url = f"/t/{token}/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames"
        size = 32 * 32 * 2
        for number in (150, 151, 50):
            before = fetch(running, f"{url}/{number}", {"Accept": HT_OR_ORIGINAL})
            assert (before.status, before.body) == (200, words[(number - 1) * size : number * size])
            assert before.headers is not None and before.headers["content-type"] == ORIGINAL_TYPE
            only = fetch(running, f"{url}/{number}", {"Accept": HT})
            assert (only.status, (only.headers or {}).get("content-type")) == (406, "application/json")

        def published() -> bool:
            answer = fetch(running, through_python(f"{url}/50", HT_OR_ORIGINAL), {"Accept": HT_OR_ORIGINAL})
            return (answer.headers or {}).get("content-type") == HT

        run_worker_until(running, published)
        for number in (150, 152, 199, 250):
            for accept in (HT_OR_ORIGINAL, HT):
                answer = fetch(running, f"{url}/{number}", {"Accept": accept})
                assert answer.status == 200 and (answer.headers or {}).get("content-type") == HT, (number, accept)
                reference = fetch(running, through_python(f"{url}/{number}", accept), {"Accept": accept})
                assert what(answer) == what(reference), (number, accept)
    finally:
        running.stack.stop()


@pytest.mark.parametrize("accept", ["application/octet-stream", 'multipart/related; type="application/octet-stream"'])
def test_an_http_1_0_client_is_told_the_length_of_a_frame_from_its_block(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory, accept: str
) -> None:
    """SSI drops Content-Length, and HTTP/1.0 has no chunks to mark a body's end: a frame's own plan sent its length
    (X-Dgw-Length), but a frame from 100 on, served from its block's plan, had none, so an HTTP/1.0 client could not
    tell it from a body a storage failure cut. The block's table of lengths gives each frame its own: the block's
    first request (made) and the next (cached) alike, the bytes HTTP/1.1 gets chunked; HTTP/1.1 gets no
    Content-Length beside its chunks (RFC 9112 6.2)."""
    _, url = slide(stack, tmp_path_factory.mktemp("edges-http10"), 3210)  # a slide no other test stores
    tile = wsi_tile(3210, 150, frames=FRAMES)
    for number in (150, 151, 199):  # 150 makes block 1 (or meets it made), the others read it from the cache
        request = f"GET {url}/frames/{number} HTTP/1.0\r\nHost: gw\r\nAccept: {accept}\r\n\r\n"
        status, headers, body = raw(stack, request.encode())
        assert (status, "transfer-encoding" in headers) == (200, False), (number, headers)
        assert headers["content-length"] == str(len(body)), (number, headers)
        chunked = requests.get(f"{stack.url}{url}/frames/{number}", headers={"Accept": accept}, timeout=30)
        assert chunked.status_code == 200 and "Content-Length" not in chunked.headers, number
        assert chunked.headers["Transfer-Encoding"] == "chunked", number
        assert len(body) == len(chunked.content), number
        if "multipart" not in accept:  # a multipart body's boundary is the block plan's, the same for both
            assert body == chunked.content, number
        if number == 150 and "multipart" not in accept:
            assert body == tile
        else:
            assert body.count(wsi_tile(3210, number, frames=FRAMES)) == 1, number
