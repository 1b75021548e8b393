"""Property-based fuzzing of raw requests through the real NGINX on both backends (issue 11): hypothesis-generated
request paths under ``/dicomweb`` and ``/t/{token}/dicomweb``, query strings, methods, and ``Accept``, ``Range``,
``Authorization`` and ``Cookie`` values, written byte for byte on a socket (no client library normalises them).

Every answer must come within the socket timeout (never a hang), never be a 5xx (storage is up: the documented 503
does not apply), and an error must be JSON (``Content-Type: application/json``). Afterwards ``/readyz`` is 200 and
a good upload works. Derandomized (fixed seed), no example database, bounded ``max_examples``; a failure prints
the falsifying example (the exact request bytes). Run alone: ``.venv/bin/pytest tests/e2e/test_fuzz_http.py``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,  # the socket timeout bounds each request
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    print_blob=True,
)
SOCKET_TIMEOUT = 20.0


class Answer:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")

    def __repr__(self) -> str:
        return f"<{self.status} {self.headers.get('content-type')} {self.body[:120]!r}>"


def send(stack: RunningStack, request: bytes) -> Answer:
    """One request on a fresh connection, read until NGINX closes it; a timeout is a hang and fails the test."""
    with socket.create_connection(("127.0.0.1", stack.stack.port), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while data := sock.recv(1 << 16):
                chunks.append(data)
        except ConnectionResetError:
            pass  # NGINX may reset after answering a request it could not parse fully
        except TimeoutError:
            pytest.fail(f"no complete answer within {SOCKET_TIMEOUT} s (a hang) to {request[:300]!r}")
    return Answer(b"".join(chunks))


def check(stack: RunningStack, request: bytes) -> Answer:
    answer = send(stack, request)
    # Every request the fuzzing sends is complete, so NGINX owes it an answer: a bare close or reset is a failure.
    # A bare LF in the path ends the request line early, making it an HTTP/0.9 request, which has no status line or
    # headers: NGINX closes it without a byte.
    if answer.status == 0 and b" HTTP/" not in request.split(b"\n", 1)[0]:
        assert answer.raw == b"", f"{answer.raw[:300]!r} for {request[:300]!r}"
        return answer
    assert answer.status != 0, f"no HTTP answer to {request[:300]!r}: {answer!r}"
    assert answer.status < 500, f"{answer!r} for {request[:500]!r}"
    if answer.status >= 400:
        assert answer.headers.get("content-type") == "application/json", f"{answer!r} for {request[:500]!r}"
    return answer


def request_bytes(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.fixture(scope="module")
def target(stack: RunningStack, synthetic: dict[str, Any]) -> dict[str, str]:
    """The UIDs of a CT slice and a read token for its study (small objects: answers stay quick)."""
    study, series, sop = uids_of(synthetic["ct"][0])
    return {"study": study, "series": series, "sop": sop, "token": stack.issue([study])["token"]}


def segments(target: dict[str, str]) -> st.SearchStrategy[bytes]:
    known = [
        "studies", "series", "instances", "frames", "metadata", "rendered", "thumbnail", "bulkdata", "wado",
        "7FE00010", "1", "1,2", "0", "9" * 30, target["study"], target["series"], target["sop"], "..", ".", "",
        "%00", "%2F", "%2e%2e", "%25", "\\", "t", "dicomweb", "x" * 300, "1.2.3", "%", "~", ";", "*",
    ]  # fmt: skip
    return st.one_of(
        st.sampled_from(known).map(str.encode),
        st.text(max_size=20).map(str.encode),
        st.binary(max_size=12),
    )


def paths(target: dict[str, str]) -> st.SearchStrategy[bytes]:
    token = target["token"].encode()
    prefixes = st.sampled_from(
        [b"/dicomweb", b"/t/" + token + b"/dicomweb", b"/t/" + token[:-3] + b"abc/dicomweb", b"/t//dicomweb",
         b"/t/x/../t/" + token + b"/dicomweb", b"/dicomweb/studies/" + target["study"].encode(),
         b"/t/" + token + b"/dicomweb/studies/" + target["study"].encode() + b"/series/" + target["series"].encode()
         + b"/instances/" + target["sop"].encode()]
    )  # fmt: skip
    return st.tuples(prefixes, st.lists(segments(target), max_size=6)).map(
        lambda pair: pair[0] + b"".join(b"/" + s for s in pair[1])
    )


def query_strings() -> st.SearchStrategy[bytes]:
    names = st.sampled_from(
        ["limit", "offset", "PatientID", "PatientName", "StudyDate", "SeriesNumber", "InstanceNumber", "includefield",
         "00100020", "accept", "token", "requestType", "studyUID", "frameNumber", "quality", "viewport", "window",
         "fuzzymatching", "ModalitiesInStudy", "StudyInstanceUID", "x", ""]
    )  # fmt: skip
    values = st.one_of(
        st.sampled_from(["9" * 30, "-1", "0", "*", "?", "20200101-20201231", "all", "CT", "1.2.3", "%00", "%ZZ", "a=b",
                         "nan", "1e999", "application/dicom", "WADO", "1_0", "%E2%82%AC", ""]),
        st.text(max_size=20).map(lambda t: quote(t, safe="")),
        st.binary(max_size=8).map(lambda b: quote_from_bytes(b, safe="")),
    )  # fmt: skip
    pair = st.tuples(names, values).map(lambda nv: f"{nv[0]}={nv[1]}".encode("utf-8", "surrogateescape"))
    return st.lists(pair, max_size=5).map(lambda items: b"&".join(items))


header_values = st.one_of(
    st.sampled_from(
        [b"multipart/related; type=application/dicom", b"multipart/related; type=\"application/octet-stream\"",
         b"application/dicom+json", b"image/jpeg", b"*/*", b"bytes=0-1,5-6", b"bytes=-0", b"bytes=0-", b"bytes=9-1",
         b"bytes=" + b"9" * 30 + b"-", b"Bearer None", b"Bearer ", b"Bearer x.y.z", b"Basic Zm9vOmJhcg==",
         b"dicomgw_token=x", b"dicomgw_token=", b"a=b; dicomgw_token=%00", b"q=nan", b";;;", b"\"", b"\x7f",
         b"\xff\xfe"]
    ),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.text(max_size=40).map(lambda t: t.encode()).filter(lambda b: b"\r" not in b and b"\n" not in b),
)  # fmt: skip


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzzed_query_strings(stack: RunningStack, target: dict[str, str], data: st.DataObject) -> None:
    """QIDO, WADO-URI, rendered and frames with hypothesis-generated query strings (valid paths; every byte of a
    value percent-encoded, so the request line is well formed and the query reaches the gateway)."""
    root = f"/t/{target['token']}/dicomweb"
    instance = f"{root}/studies/{target['study']}/series/{target['series']}/instances/{target['sop']}"
    where = data.draw(
        st.sampled_from(
            [f"{root}/studies", f"{root}/series", f"{root}/instances", f"{root}/studies/{target['study']}/series",
             f"{root}/studies/{target['study']}/instances", f"{root}/wado", f"{instance}/rendered",
             f"{instance}/frames/1", f"{instance}/metadata", "/dicomweb/studies"]
        ),
        label="url",
    )  # fmt: skip
    query = data.draw(query_strings(), label="query")
    check(stack, request_bytes(b"GET", where.encode() + b"?" + query, []))


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzzed_paths(stack: RunningStack, target: dict[str, str], data: st.DataObject) -> None:
    """Raw request targets: any bytes in the path and the query, percent escapes, dot segments, odd token
    prefixes."""
    path = data.draw(paths(target), label="path")
    query = data.draw(st.one_of(st.just(b""), st.binary(max_size=12), query_strings()), label="query")
    check(stack, request_bytes(b"GET", path + (b"?" + query if query else b""), []))


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzzed_headers_on_real_resources(stack: RunningStack, target: dict[str, str], data: st.DataObject) -> None:
    root = f"/t/{target['token']}/dicomweb"
    instance = f"{root}/studies/{target['study']}/series/{target['series']}/instances/{target['sop']}"
    where = data.draw(
        st.sampled_from(
            [f"{root}/studies", f"{instance}", f"{instance}/frames/1", f"{instance}/metadata", f"{instance}/rendered",
             f"{root}/studies/{target['study']}", f"{instance}/bulkdata/7FE00010", "/dicomweb/studies",
             f"{root}/wado?requestType=WADO&studyUID={target['study']}&seriesUID={target['series']}"
             f"&objectUID={target['sop']}&contentType=application/dicom"]
        ),
        label="url",
    )  # fmt: skip
    names = st.sampled_from([b"Accept", b"Range", b"Authorization", b"Cookie", b"If-None-Match", b"Origin"])
    headers = data.draw(st.lists(st.tuples(names, header_values), max_size=4), label="headers")
    check(stack, request_bytes(b"GET", where.encode(), headers))


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_fuzzed_methods(stack: RunningStack, target: dict[str, str], data: st.DataObject) -> None:
    method = data.draw(
        st.one_of(
            st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"get",
                             b"PROPFIND", b"CONNECT", b"G\x00T"]),
            st.from_regex(rb"\A[A-Z]{1,12}\Z"),
        ),
        label="method",
    )  # fmt: skip
    path = data.draw(paths(target), label="path")
    check(stack, request_bytes(method, path, [(b"Content-Length", b"0")]))


def test_after_the_fuzzing_the_gateway_is_ready_and_stores(stack: RunningStack, tmp_path: Path) -> None:
    """Runs after the fuzzing tests above (file order): nothing they sent broke the stack."""
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200
    files = make_series(tmp_path / "after", modality="MR", slices=2, seed=81 if stack.backend == "file" else 82)
    answer = stack.stow(files)
    assert answer.status_code == 200, answer.text
    study, series, sop = uids_of(files[0])
    root = stack.root(stack.issue([study])["token"])
    got = requests.get(
        f"{root}/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": "application/dicom"}, timeout=30
    )
    assert got.status_code == 200 and got.content == files[0].read_bytes()
    # and the access log is still valid UTF-8 JSON, one object per line, after every byte the fuzzing sent
    assert all(isinstance(entry, dict) for entry in stack.access_log())
