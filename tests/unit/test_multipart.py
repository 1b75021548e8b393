"""The streaming multipart/related parser and encoder (gateway/dicomweb/multipart.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.dicomweb.multipart import (
    MAX_HEADER_BYTES,
    MultipartBody,
    Part,
    encode_multipart,
    iter_parts,
    multipart_boundary,
    parse_content_type,
)
from gateway.errors import MalformedMultipart, PayloadTooLarge, StorageUnavailable, UnsupportedMediaType
from gateway.spool import spool_file, spool_prefix, sweep_spool

REPO = Path(__file__).resolve().parents[2]
BIG = 1 << 40
# What Orthanc 1.10's HTTP client sends: two UUIDs joined by a dash, 73 characters (RFC 2046 allows 70).
ORTHANC_BOUNDARY = "0f8c1b0e-8d3a-4a4e-9a57-3c1f2e6b7d90-5e2d9c41-7b6a-4f08-8c3e-1a2b3c4d5e6f"


class Dribble(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, like a slow socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        take = self._step if n < 0 else min(n, self._step)
        out = bytes(self._data[self._pos : self._pos + take])
        self._pos += len(out)
        return out


class DribbleInto(Dribble):
    """``Dribble`` read in place, as the request body under gunicorn is (``gateway.views.body``): the reader's
    buffer is reused from read to read, so a part must never be fed bytes a later read overwrote."""

    def read_into(self, into: memoryview) -> int:
        out = self.read(len(into))
        into[: len(out)] = out
        return len(out)


class Generated(io.RawIOBase):
    """A stream over a generator of chunks: the body never exists in memory as a whole."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._chunks, b"")
        out, self._pending = self._pending[:n], self._pending[n:]
        return out


def body(*parts: bytes, boundary: str = "abc", preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    b = boundary.encode()
    out = preamble + (b"\r\n" if preamble else b"")
    for i, part in enumerate(parts):
        out += (b"\r\n" if i else b"") + b"--" + b + b"\r\nContent-Type: application/dicom\r\n\r\n" + part
    out += (b"\r\n" if parts else b"") + b"--" + b + b"--" + epilogue
    return out


def parse(data: bytes, tmp_path: Path, **kwargs: object) -> list[tuple[Part, bytes]]:
    stream = kwargs.pop("stream", None) or io.BytesIO(data)
    boundary = str(kwargs.pop("boundary", "abc"))
    kwargs.setdefault("max_part_bytes", BIG)
    out = []
    for part in iter_parts(stream, boundary, tmp_path, **kwargs):  # type: ignore[arg-type]
        out.append((part, part.path.read_bytes()))
        part.path.unlink()
    return out


# ---------------------------------------------------------------------------------------- Content-Type


def test_parse_content_type_quoted_and_unquoted() -> None:
    assert parse_content_type('Multipart/Related; type="application/dicom"; boundary=abc') == (
        "multipart/related",
        {"type": "application/dicom", "boundary": "abc"},
    )
    assert parse_content_type("multipart/related;type=application/dicom;BOUNDARY=AbC") == (
        "multipart/related",
        {"type": "application/dicom", "boundary": "AbC"},
    )
    assert parse_content_type('multipart/related ; boundary="a b\\"c" ;; charset=utf-8 ') == (
        "multipart/related",
        {"boundary": 'a b"c', "charset": "utf-8"},
    )
    assert parse_content_type("application/dicom") == ("application/dicom", {})
    # a parameter given twice: the same value is harmless, two values are two readings of one body (RFC 6838 4.3)
    assert parse_content_type("a/b; x=1; X=1")[1] == {"x": "1"}
    with pytest.raises(UnsupportedMediaType, match="parameter boundary given twice"):
        parse_content_type("multipart/related; boundary=a; boundary=b")


@pytest.mark.parametrize(
    "value",
    ["", "multipart", "/related", "multipart/related boundary=abc", 'a/b; x="open', "a/b; =x", "a/b; x="],
)
def test_parse_content_type_rejects(value: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_content_type(value)


def test_multipart_boundary() -> None:
    assert multipart_boundary('multipart/related; type="application/dicom"; boundary="x-1"') == "x-1"
    with pytest.raises(MalformedMultipart, match="without a boundary"):
        multipart_boundary('multipart/related; type="application/dicom"')
    # Longer than RFC 2046's 70 (Orthanc 1.10 sends 73) up to our bound of 200; past it, a clear refusal.
    assert multipart_boundary("multipart/related; boundary=" + ORTHANC_BOUNDARY) == ORTHANC_BOUNDARY
    assert multipart_boundary("multipart/related; boundary=" + "x" * 200) == "x" * 200
    with pytest.raises(MalformedMultipart, match="1-200 printable"):
        multipart_boundary("multipart/related; boundary=" + "x" * 201)
    with pytest.raises(MalformedMultipart, match="1-200 printable"):
        multipart_boundary('multipart/related; boundary="ends in a space "')
    with pytest.raises(MalformedMultipart, match="1-200 printable"):
        multipart_boundary('multipart/related; boundary="tab\there"')
    with pytest.raises(UnsupportedMediaType):
        multipart_boundary("application/dicom; boundary=abc")


# ---------------------------------------------------------------------------------------- parsing


def test_single_part(tmp_path: Path) -> None:
    data = b"--abc\r\nContent-Type: Application/DICOM; transfer-syntax=1.2.840.10008.1.2.1\r\n" + (
        b"X-Extra: one\r\n\r\nhello\r\nworld\r\n--abc--\r\n"
    )
    [(part, content)] = parse(data, tmp_path)
    assert content == b"hello\r\nworld"
    assert part.size == 12
    assert part.content_type == "application/dicom"
    assert part.headers == {
        "content-type": "Application/DICOM; transfer-syntax=1.2.840.10008.1.2.1",
        "x-extra": "one",
    }
    assert part.path.parent == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_many_parts_and_empty_part(tmp_path: Path) -> None:
    payloads = [os.urandom(n) for n in (0, 1, 2, 100, 5000)]
    got = parse(body(*payloads), tmp_path, chunk_size=64)
    assert [c for _, c in got] == payloads
    assert [p.size for p, _ in got] == [len(p) for p in payloads]
    # hashed while spooled, across chunk boundaries: ingest reuses the digest instead of reading the file again
    assert [p.sha256 for p, _ in got] == [hashlib.sha256(p).hexdigest() for p in payloads]


def test_zero_parts(tmp_path: Path) -> None:
    assert parse(b"--abc--\r\n", tmp_path) == []


def test_preamble_epilogue_padding_and_no_headers(tmp_path: Path) -> None:
    data = (
        b"This is a preamble.\r\n--abc \t\r\n\r\nfirst\r\n--abc\r\nContent-Type: text/plain\r\n\r\nsecond"
        b"\r\n--abc--  \r\nthe epilogue, ignored\r\n--abc\r\n"
    )
    got = parse(data, tmp_path, default_content_type="application/dicom")
    assert [(p.content_type, p.headers, c) for p, c in got] == [
        ("application/dicom", {}, b"first"),
        ("text/plain", {"content-type": "text/plain"}, b"second"),
    ]


def test_folded_and_repeated_headers(tmp_path: Path) -> None:
    data = b"--abc\r\nX-A: one\r\n  two\r\nX-B: 1\r\nx-b: 2\r\n\r\nz\r\n--abc--"
    [(part, _)] = parse(data, tmp_path)
    assert part.headers == {"x-a": "one two", "x-b": "1, 2"}
    assert part.content_type == ""


def test_header_bytes_past_ascii_are_opaque_text(tmp_path: Path) -> None:
    """RFC 9110 5.5: a part header's octets past ASCII are opaque data. UTF-8 is read as such, anything else as
    ISO-8859-1 (a file name Java's HttpClient wrote in that charset was a 400 "header is not UTF-8")."""
    data = (
        b"--abc\r\nContent-Type: application/dicom\r\nContent-Disposition: attachment; filename=\"M\xfcller\"\r\n"
        b"X-U: Gr\xc3\xbc\xc3\x9fe\r\n\r\nz\r\n--abc--"
    )
    [(part, body)] = parse(data, tmp_path)
    assert part.headers["content-disposition"] == 'attachment; filename="Müller"'
    assert part.headers["x-u"] == "Grüße"
    assert (part.content_type, body) == ("application/dicom", b"z")


TRICKY = [
    b"--abc at the start of the data, no CRLF before it",
    b"ends with a partial delimiter \r\n--ab",
    b"\r\n-- abc\r\n--ab\r\n-abc\r\n\r\n--",
    b"bare LF is data: \n--abc\n and \r--abc",
    b"\r\n" * 50,
    bytes(range(256)) * 4,
]


@pytest.mark.parametrize("chunk_size", [*range(1, 24), 31, 64, 127, 1 << 20])
def test_delimiter_split_across_reads(tmp_path: Path, chunk_size: int) -> None:
    data = body(*TRICKY, preamble=b"pre--abc amble", epilogue=b"\r\nepi")
    assert [c for _, c in parse(data, tmp_path, chunk_size=chunk_size)] == TRICKY


@pytest.mark.parametrize("step", [1, 3, 7, 13])
def test_short_reads(tmp_path: Path, step: int) -> None:
    data = body(*TRICKY)
    assert [c for _, c in parse(data, tmp_path, stream=Dribble(data, step), chunk_size=1 << 16)] == TRICKY


@pytest.mark.parametrize("chunk_size", [*range(1, 24), 31, 64, 127, 1 << 20])
def test_reads_in_place_split_anywhere(tmp_path: Path, chunk_size: int) -> None:
    data = body(*TRICKY, preamble=b"pre--abc amble", epilogue=b"\r\nepi")
    for step in (1, 5, 1 << 20):
        got = parse(data, tmp_path, stream=DribbleInto(data, step), chunk_size=chunk_size)
        assert [c for _, c in got] == TRICKY
    headers = b"Content-Type: application/dicom\r\nX-Long: " + b"h" * 5000 + b"\r\n\r\n"
    long_line = b"--abc\r\n" + headers + b"z\r\n--abc--"  # a header line longer than the reads: the buffer grows
    [(part, content)] = parse(long_line, tmp_path, stream=DribbleInto(long_line, 7), chunk_size=chunk_size)
    assert (part.headers["x-long"], content) == ("h" * 5000, b"z")


@pytest.mark.parametrize("boundary", ["b" * 70, ORTHANC_BOUNDARY, "b" * 200])
def test_long_boundary(tmp_path: Path, boundary: str) -> None:
    # The data holds the boundary itself minus its last character, and the delimiter without its CRLF: neither
    # may end a part.
    tricky = b"x" * 1000 + b"\r\n--" + boundary[:-1].encode() + b"--" + boundary.encode() + b"\r\n"
    data = body(tricky, b"y", boundary=boundary)
    for chunk in (5, 71, 73, 203, 1000):
        got = parse(data, tmp_path, boundary=boundary, chunk_size=chunk)
        assert [c for _, c in got] == [tricky, b"y"]


# ---------------------------------------------------------------------------------------- errors


def test_missing_boundary(tmp_path: Path) -> None:
    with pytest.raises(MalformedMultipart, match="without a boundary"):
        list(iter_parts(io.BytesIO(body(b"x")), "", tmp_path, max_part_bytes=BIG))


def test_no_opening_delimiter(tmp_path: Path) -> None:
    with pytest.raises(MalformedMultipart, match="no opening boundary delimiter"):
        parse(b"just some bytes\r\n--abd\r\n\r\nx\r\n--abd--", tmp_path)
    with pytest.raises(MalformedMultipart, match="no opening boundary delimiter"):
        parse(b"", tmp_path)


@pytest.mark.parametrize(
    "data",
    [
        b"--abc\r\nContent-Type: application/dicom\r\n\r\npart one never ends",
        b"--abc\r\nContent-Type: application/dicom\r\n\r\npart one ends in a partial \r\n--ab",
        b"--abc\r\nContent-Type: application/dicom\r\n",
        b"--abc",
        b"--abc\r\n\r\none\r\n--abc",
    ],
)
def test_truncated(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(MalformedMultipart, match="body ended inside part 1"):
        parse(data, tmp_path, chunk_size=5)
    assert list(tmp_path.iterdir()) == []  # the half-written spool file is gone


def test_truncated_second_part_after_first_was_yielded(tmp_path: Path) -> None:
    data = b"--abc\r\n\r\none\r\n--abc\r\n\r\ntwo without end"
    parts = iter_parts(io.BytesIO(data), "abc", tmp_path, max_part_bytes=BIG)
    first = next(parts)
    assert first.path.read_bytes() == b"one"
    with pytest.raises(MalformedMultipart, match="body ended inside part 2"):
        next(parts)
    assert list(tmp_path.iterdir()) == [first.path]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"--abc\r\nNo colon here\r\n\r\nx\r\n--abc--", "part 1: malformed header line"),
        (b"--abc\r\nBad Name: x\r\n\r\nx\r\n--abc--", "part 1: malformed header line"),
        (b"--abc\r\n continued: x\r\n\r\nx\r\n--abc--", "starts with a continuation"),
        (b"--abc\r\nContent-Type: application/dic\xf6m\r\n\r\nx\r\n--abc--", "part 1: Content-Type application/dic"),
        (b"--abc\r\nContent-Type: dicom\r\n\r\nx\r\n--abc--", "part 1: Content-Type is not a media type"),
        (b"--abc\r\n\r\nx\r\n--abcd\r\n\r\ny\r\n--abc--", "unexpected bytes after a boundary delimiter"),
        (b"--abc\r\nX: " + b"y" * MAX_HEADER_BYTES + b"\r\n\r\nx\r\n--abc--", "longer than"),
        (b"--abc\r\n" + b"X: y\r\n" * (MAX_HEADER_BYTES // 6 + 1) + b"\r\nx\r\n--abc--", "headers larger"),
    ],
)
def test_bad_headers(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(MalformedMultipart, match=message):
        parse(data, tmp_path, chunk_size=1000)
    assert list(tmp_path.iterdir()) == []


def test_oversize_part(tmp_path: Path) -> None:
    data = body(b"a" * 100, b"b" * 101)
    with pytest.raises(PayloadTooLarge, match="part 2 is larger than 100 bytes"):
        parse(data, tmp_path, max_part_bytes=100, chunk_size=16)
    assert list(tmp_path.iterdir()) == []
    assert [c for _, c in parse(data, tmp_path, max_part_bytes=101)] == [b"a" * 100, b"b" * 101]


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail in the kernel (EFBIG; Python ignores SIGXFSZ), as on a full spool disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize("size", [3000, 3 << 20])  # left in the write buffer, or written in large reads
def test_spool_full_is_503_and_leaves_no_file(tmp_path: Path, size: int) -> None:
    """A spool write that fails (disk full) is the gateway's fault: StorageUnavailable, a 503 the client may
    retry, never an OSError (a 500); and the half-written files are removed, or they would keep the spool full.
    Both the multipart parser and the single application/dicom body."""
    from gateway.views.dicomweb import _spool_single

    data = body(b"a" * 100, b"b" * size)
    with file_size_limit(1024), pytest.raises(StorageUnavailable, match=r"upload spool write failed \(EFBIG\)"):
        parse(data, tmp_path, chunk_size=512)
    assert list(tmp_path.iterdir()) == []
    with file_size_limit(1024), pytest.raises(StorageUnavailable, match=r"upload spool write failed \(EFBIG\)"):
        _spool_single(io.BytesIO(b"c" * size), tmp_path, size)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StorageUnavailable, match=r"\(ENOENT\)"):  # the spool folder is gone
        parse(data, tmp_path / "gone")
    path, digest = _spool_single(io.BytesIO(b"c" * size), tmp_path, size)  # room again: stored whole
    assert path.read_bytes() == b"c" * size and digest == hashlib.sha256(b"c" * size).hexdigest()


def test_sweep_removes_only_what_a_process_gone_left(tmp_path: Path) -> None:
    """A spool file names its writer (host, pid, start time): the sweep a new worker runs removes the files of a
    process of this host that is gone (killed mid-upload), never a live one's, another host's or anything else."""
    from gateway.catalog.owner import this_process

    with spool_file(tmp_path, "part", ".spool") as (live, write):
        write(b"mine")
    child, child_deid, child_derive = subprocess.run(  # a process that ran here and exited: a killed worker's
        [
            sys.executable,
            "-c",
            "from gateway.spool import spool_prefix as p; print(p('stow')); print(p('deid')); print(p('derive'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.split()
    dead = tmp_path / f"{child}abc.dcm"
    dead_deid = tmp_path / f"{child_deid}abc.dcm"  # a de-identified copy an ingest pool process was writing
    me = this_process()
    tag = live.name.split("-")[1]
    other_host = tmp_path / f"part-{'0' * 8 if tag != '0' * 8 else '1' * 8}-{child.split('-')[2]}-1-x.spool"
    unrelated = tmp_path / "part-notours.spool"
    for path in (dead, dead_deid, other_host, unrelated):
        path.write_bytes(b"x")
    dead_derive = tmp_path / f"{child_derive}abc"  # a killed derivative worker's folder (gateway.derive)
    live_derive = tmp_path / f"{spool_prefix('derive')}abc"
    for folder in (dead_derive, live_derive):
        folder.mkdir()
        (folder / "source.dcm").write_bytes(b"x")
    assert live.name.startswith(f"part-{tag}-{me.pid}-{me.started}-")
    assert sweep_spool(tmp_path) == 3
    kept = (live, other_host, unrelated, live_derive)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
    assert sweep_spool(tmp_path / "gone") == 0


def test_closing_the_generator_removes_nothing_yielded(tmp_path: Path) -> None:
    parts = iter_parts(io.BytesIO(body(b"1", b"2")), "abc", tmp_path, max_part_bytes=BIG)
    first = next(parts)
    parts.close()
    assert list(tmp_path.iterdir()) == [first.path]


# ---------------------------------------------------------------------------------------- encoder


def test_encoder_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    contents = [b"", b"\r\n--x", os.urandom(300_000)]
    paths = []
    for i, content in enumerate(contents):
        paths.append(src / f"{i}.dcm")
        paths[-1].write_bytes(content)
    seen: list[int] = []
    encoded = MultipartBody(paths=paths, chunk_size=4096, on_bytes=seen.append)
    raw = b"".join(encoded)
    assert len(raw) == len(encoded)
    assert sum(seen) == sum(len(c) for c in contents)
    assert b"".join(encoded) == raw  # iterating again gives the same body (retries)
    spool = tmp_path / "spool"
    spool.mkdir()
    boundary = multipart_boundary(encoded.content_type)
    assert boundary == encoded.boundary and boundary.startswith("dicomgw-")
    got = parse(raw, spool, boundary=boundary)
    assert [c for _, c in got] == contents
    assert {p.content_type for p, _ in got} == {"application/dicom"}


def test_encoder_exact_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"AA")
    (tmp_path / "b").write_bytes(b"B")
    encoded = encode_multipart([tmp_path / "a", tmp_path / "b"], boundary="xyz")
    assert encoded.content_type == 'multipart/related; type="application/dicom"; boundary=xyz'
    assert b"".join(encoded) == (
        b"--xyz\r\nContent-Type: application/dicom\r\n\r\nAA"
        b"\r\n--xyz\r\nContent-Type: application/dicom\r\n\r\nB\r\n--xyz--\r\n"
    )
    assert b"".join(encode_multipart([], boundary="xyz")) == b"--xyz--\r\n"


def test_encoder_detects_a_file_that_changed(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"AAAA")
    encoded = encode_multipart([tmp_path / "a"])
    (tmp_path / "a").write_bytes(b"AA")
    with pytest.raises(OSError, match="shrank"):
        b"".join(encoded)


# ---------------------------------------------------------------------------------------- memory and speed


PARTS_CHILD = """
import io, os, sys, tracemalloc
from pathlib import Path
from gateway.dicomweb.multipart import iter_parts
# pathlib interns each path's parts: 2,000 spool names grow the interpreter's table of interned strings, a single
# allocation of ~2 MB once its size crosses a power of two (where it lies depends on what was imported before); grown
# here first, so what is measured is the parse (the table keeps its size when the warm-up's strings go)
warm = [sys.intern(f"warm-up-{n}") for n in range(100_000)]
del warm
payload = os.urandom(1000)
data = b"".join(b"--abc\\r\\nContent-Type: application/dicom\\r\\n\\r\\n" + payload + b"\\r\\n" for _ in range(2000))
stream = io.BytesIO(data + b"--abc--\\r\\n")
tracemalloc.start()
count = 0
for part in iter_parts(stream, "abc", Path(sys.argv[1]), max_part_bytes=1 << 40, chunk_size=64 * 1024):
    assert part.size == 1000, part.size
    part.path.unlink()
    count += 1
print(count, tracemalloc.get_traced_memory()[1])
"""


def test_memory_flat_for_2000_parts(tmp_path: Path) -> None:
    # In a child process: tracemalloc's peak counts every thread's allocations, and threads other tests leave
    # behind (servers, lease renewals) would be measured too.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", PARTS_CHILD, str(tmp_path)], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    count, peak = int(out[0]), int(out[1])
    assert count == 2000
    assert peak < 600 * 1024, peak  # a few chunks, not the 2 MB body


def test_parse_speed_large_part(tmp_path: Path) -> None:
    block = os.urandom(1 << 20)
    size_mb = 256
    head = b"--abc\r\nContent-Type: application/dicom\r\n\r\n"
    stream = Generated(iter([head, *([block] * size_mb), b"\r\n--abc--\r\n"]))
    start = time.perf_counter()
    [part] = list(iter_parts(stream, "abc", tmp_path, max_part_bytes=BIG))
    seconds = time.perf_counter() - start
    assert part.size == size_mb << 20
    with open(part.path, "rb") as f:
        f.seek(-(1 << 20), os.SEEK_END)
        assert f.read() == block
    part.path.unlink()
    print(f"\nmultipart parse + spool: {size_mb / seconds:.0f} MiB/s")


CHILD = """
import json, sys, time
from pathlib import Path
from gateway.dicomweb.multipart import iter_parts
def kb(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])
imported = kb("VmRSS")  # the interpreter and the gateway's modules, before a byte is read
start = time.perf_counter()
parts = []
for part in iter_parts(sys.stdin.buffer, "abc", Path(sys.argv[1]), max_part_bytes=1 << 40):
    with open(part.path, "rb") as f:
        f.seek(-16, 2)
        tail = f.read().hex()
    parts.append([part.size, tail])
    part.path.unlink()
seconds = time.perf_counter() - start
# VmHWM, not getrusage(): Linux carries ru_maxrss over from the forking parent across execve
print(json.dumps({"parts": parts, "maxrss_kb": kb("VmHWM"), "imported_kb": imported, "seconds": seconds}))
"""


@pytest.mark.slow
def test_memory_flat_for_a_2gb_part_on_a_pipe(tmp_path: Path) -> None:
    """2 GiB through a real pipe into a child process; its peak RSS must stay near what it held once its modules
    were imported (an absolute bound, 64 MiB, failed as the gateway's imports grew, with the parse unchanged)."""
    block = bytes(range(256)) * 4096  # 1 MiB
    count = 2048
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", CHILD, str(tmp_path)]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) as child:
        assert child.stdin is not None and child.stdout is not None
        start = time.perf_counter()
        child.stdin.write(b"--abc\r\nContent-Type: application/dicom\r\n\r\n")
        for _ in range(count):
            child.stdin.write(block)
        child.stdin.write(b"\r\n--abc--\r\n")
        child.stdin.close()
        result = json.loads(child.stdout.read())
        assert child.wait(timeout=60) == 0
    total = time.perf_counter() - start
    assert result["parts"] == [[count << 20, block[-16:].hex()]]
    print(
        f"\n2 GiB part over a pipe: {2048 / total:.0f} MiB/s end to end, "
        f"child peak RSS {result['maxrss_kb'] // 1024} MiB, {result['imported_kb'] // 1024} MiB once imported"
    )
    assert result["maxrss_kb"] - result["imported_kb"] < 16 * 1024
