"""Property-based fuzzing (hypothesis) of the parsers that read what clients send (issue 11): the multipart
parser, the DICOM walker and index (real synthetic files, mutated), Accept, Range and QIDO parameters.

Each property: only the documented error is raised, never another exception, and never a hang (a per-example
alarm). Runs are reproducible: derandomized (a fixed seed), no example database, bounded ``max_examples``; a
failure prints hypothesis's falsifying example. Run alone: ``.venv/bin/pytest tests/unit/test_fuzz.py``.
"""

from __future__ import annotations

import io
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.catalog import Catalog
from gateway.dicom.frames import FrameIndex
from gateway.dicom.index import index_file
from gateway.dicomweb.accept import Offer, negotiate
from gateway.dicomweb.multipart import MultipartBody, iter_parts
from gateway.dicomweb.qido import BY_KEYWORD, parse_qido
from gateway.dicomweb.wado import parse_range
from gateway.errors import (
    BadRequest,
    DicomError,
    MalformedMultipart,
    NotAcceptable,
    PayloadTooLarge,
    RangeNotSatisfiable,
)
from gateway.tools.synth import make_series, make_wsi
from tests.fixtures.catalog_data import make_instance, record
from tests.fixtures.servers import PostgresServer

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,  # the alarm below bounds each example; hypothesis's deadline would flake on a busy machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    print_blob=True,
)
EXAMPLE_SECONDS = 10


@contextmanager
def no_hang(seconds: float = EXAMPLE_SECONDS) -> Iterator[None]:
    def timeout(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"one example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- multipart -----------------------------------------------------------------------------------------------

BOUNDARY = "dgw-fuzz-boundary"
payloads = st.lists(st.binary(max_size=300), min_size=0, max_size=4)


def encoded(parts: list[bytes]) -> bytes:
    chunks = []
    for index, payload in enumerate(parts):
        chunks.append((b"\r\n" if index else b"") + f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(payload)
    chunks.append((b"\r\n" if parts else b"") + f"--{BOUNDARY}--\r\n".encode())
    return b"".join(chunks)


class Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read (short reads, as sockets give)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def read(self, size: int = -1, /) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


def parse_all(body: bytes, tmp: Path, step: int, chunk: int) -> list[bytes]:
    out = []
    for part in iter_parts(Trickle(body, step), BOUNDARY, tmp, max_part_bytes=4096, chunk_size=chunk):
        out.append(part.path.read_bytes())
        part.path.unlink()
    return out


@settings(FUZZ, max_examples=150)
@given(parts=payloads, step=st.integers(1, 64), chunk=st.integers(1, 128))
def test_multipart_round_trips_whatever_the_chunking(tmp_path: Path, parts: list[bytes], step: int, chunk: int) -> None:
    if any(f"\r\n--{BOUNDARY}".encode() in p for p in parts):
        return  # the sender chose a boundary that occurs in its data: ambiguous by construction
    with no_hang():
        assert parse_all(encoded(parts), tmp_path, step, chunk) == parts
    assert list(tmp_path.iterdir()) == []


@settings(FUZZ, max_examples=800)
@given(
    parts=payloads,
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=8), st.integers(0, 8)), max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
    step=st.integers(1, 64),
)
def test_multipart_mutated_bodies_fail_only_as_documented(
    tmp_path: Path, parts: list[bytes], edits: list[tuple[int, bytes, int]], cut: int | None, step: int
) -> None:
    body = bytearray(encoded(parts))
    for at, insert, remove in edits:  # splice bytes in and out anywhere, headers and delimiters included
        at %= len(body) + 1
        body[at : at + remove] = insert
    if cut is not None:
        del body[cut % (len(body) + 1) :]
    with no_hang():
        try:
            parse_all(bytes(body), tmp_path, step, 32)
        except (MalformedMultipart, PayloadTooLarge):
            pass
    assert list(tmp_path.iterdir()) == [], "a spool file outlived the parse"


def test_multipart_encoder_and_parser_agree(tmp_path: Path) -> None:
    files = []
    for index, size in enumerate((0, 1, 4000)):
        path = tmp_path / f"f{index}"
        path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        files.append(path)
    body = MultipartBody(files, boundary=BOUNDARY)
    spool = tmp_path / "spool"
    spool.mkdir()
    assert parse_all(b"".join(body), spool, 7, 13) == [p.read_bytes() for p in files]


# --- DICOM walker and index ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real synthetic files: a native CT slice, an encapsulated whole-slide image with a BOT, one with an
    Extended Offset Table and several fragments per frame, a native multi-frame one."""
    base = tmp_path_factory.mktemp("fuzz-dicom")
    paths = [
        make_series(base / "ct", slices=1, rows=32, columns=32, seed=1, clean=True)[0],
        make_wsi(base / "bot", frames=4, tile=16, offsets="bot", seed=2, clean=True),
        make_wsi(base / "eot", frames=3, tile=16, offsets="eot", seed=3, clean=True),
        make_wsi(base / "frag", frames=2, tile=16, offsets="empty", fragments_per_frame=3, seed=5, clean=True),
        make_wsi(base / "native", frames=2, tile=16, native=True, seed=4, clean=True),
    ]
    return paths  # paths, not bytes: hypothesis prints the arguments of a failing example


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(b"")),
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=4)),
    # a huge or odd length where a 4-byte or 2-byte length might be
    st.tuples(
        st.just("length"),
        st.integers(0, 1 << 20),
        st.sampled_from([b"\xff\xff\xff\xff", b"\xf0\xff\xff\xff", b"\xff\xff", b"\x00\x00\x00\x80", b"\x01\x00"]),
    ),
    # an odd VR where a VR might be
    st.tuples(
        st.just("vr"),
        st.integers(0, 1 << 20),
        st.sampled_from([b"UA", b"SQ", b"UN", b"OB", b"XX", b"\x00\x00", b"ss", b"UT", b"OV"]),
    ),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
)


def mutate(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, at, value in edits:
        at %= len(out) + 1
        if kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = value
        else:
            out[at : at + len(value)] = value
    return bytes(out)


@settings(FUZZ, max_examples=1000)
@given(which=st.integers(0, 4), edits=st.lists(mutation, min_size=1, max_size=3))
def test_index_of_mutated_files_fails_only_with_dicom_error(
    tmp_path: Path, dicom_files: list[Path], which: int, edits: list[tuple[str, int, bytes]]
) -> None:
    data = mutate(dicom_files[which].read_bytes(), edits)
    path = tmp_path / "mutated.dcm"
    path.write_bytes(data)
    with no_hang(), warnings.catch_warnings():
        # pydicom warns about garbage values (the suite turns warnings into errors); in service they are logged
        warnings.simplefilter("ignore", UserWarning)
        try:
            indexed = index_file(path, bulkdata_threshold=64)
        except DicomError:
            return
    # Indexed: everything the read path will serve lies inside the file.
    for bulk in indexed.bulkdata:
        assert 0 <= bulk.offset and bulk.offset + bulk.length <= len(data), bulk
    if indexed.frame_index is not None:
        frames = FrameIndex.unpack(indexed.frame_index)
        for n in range(1, min(frames.count, 8) + 1):
            for start, length in frames.ranges(n):
                assert 0 <= start and start + length <= len(data), (n, start, length)
    record(indexed)  # the catalog record can be built


def test_a_nul_in_the_specific_character_set_is_a_dicom_error(tmp_path: Path, dicom_files: list[Path]) -> None:
    """Found by the fuzzing above: pydicom's codec lookup raised ValueError ("embedded null character"), which
    ingest reported as an unexpected error with a traceback."""
    data = dicom_files[0].read_bytes()
    assert data.count(b"ISO_IR 192") == 1
    path = tmp_path / "nul.dcm"
    path.write_bytes(data.replace(b"ISO_IR 192", b"\x00SO_IR 192"))
    with pytest.raises(DicomError, match="Specific Character Set"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        index_file(path)


# --- Accept and Range ---------------------------------------------------------------------------------------

OFFERS = [
    Offer("application/dicom", "1.2.840.10008.1.2.1", True),
    Offer("application/dicom", "1.2.840.10008.1.2.1", False),
    Offer("image/jpeg", "1.2.840.10008.1.2.4.50", False),
]
accept_text = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            ["multipart/related", "application/dicom", "*/*", "image/*", ";", ",", "type=", '"', "q=", "0.5",
             "nan", "1e999", "transfer-syntax=", "*", "1.2.840.10008.1.2.1", " ", "\t", "=", "\\"]
        ),
        max_size=30,
    ).map("".join),
)  # fmt: skip


@settings(FUZZ, max_examples=500)
@given(accept=accept_text)
def test_accept_negotiation_answers_an_offer_or_406(accept: str) -> None:
    with no_hang():
        try:
            assert negotiate(accept, OFFERS) in OFFERS
        except NotAcceptable:
            pass


range_text = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.sampled_from(["bytes=", "-", ",", "0", "1", "9" * 30, " ", "99", "5", "=", "bytes", "+", "\t"]), max_size=12
    ).map("".join),
)


@settings(FUZZ, max_examples=500)
@given(header=range_text, length=st.integers(0, 1 << 40))
def test_range_parsing_is_a_valid_range_none_or_416(header: str, length: int) -> None:
    with no_hang():
        try:
            got = parse_range(header, length)
        except RangeNotSatisfiable:
            return
    if got is not None:
        first, last = got
        assert 0 <= first <= last < length


# --- QIDO parameters, parsed and run on a real catalog -------------------------------------------------------


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    catalog = Catalog(f"sqlite:///{tmp_path_factory.mktemp('fuzz-qido') / 'c.db'}")
    yield from filled(catalog)


@pytest.fixture(scope="module")
def small_pg_catalog(postgres_server: PostgresServer) -> Iterator[Catalog]:
    import psycopg

    admin = f"host={postgres_server.host} port={postgres_server.port} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "fuzz_qido" WITH (FORCE)')
        conn.execute('CREATE DATABASE "fuzz_qido"')
    yield from filled(Catalog(postgres_server.url("fuzz_qido")))


def filled(catalog: Catalog) -> Iterator[Catalog]:
    catalog.migrate()
    for n in range(3):
        catalog.register_instance(record(make_instance("1.2.3", f"1.2.3.{n}", f"1.2.3.{n}.1", instance_number=n)))
    yield catalog
    catalog.close()


NUMERIC = ["limit", "offset", "SeriesNumber", "InstanceNumber", "00200011", "00200013"]
NAMES = [*BY_KEYWORD, *NUMERIC, "includefield", "fuzzymatching", "00100010", "Bogus", "a.b"]
INTEGERS = st.one_of(
    st.integers(-(2**100), 2**100).map(str),  # well past 32 and 64 bits: what the databases cannot take
    st.sampled_from([str(2**31 - 1), str(2**31), str(-(2**31)), str(-(2**31) - 1), str(2**63), "0", "+1", " 7"]),
)
VALUES = st.one_of(
    st.text(max_size=40),
    INTEGERS,
    st.sampled_from(["9" * 30, "-" + "9" * 30, "2147483648", "*", "?", "1.2.3", "20200101-", "-20201231", "1_0",
                     "\u0665", "all", "CT,MR", "1.2\\1.3", "%", "_", "\\", "\x00", "1e5", " 1"]),
)  # fmt: skip


@settings(FUZZ, max_examples=400)
@given(
    level=st.sampled_from(["studies", "series", "instances"]),
    args=st.dictionaries(st.sampled_from(NAMES), st.lists(VALUES, min_size=1, max_size=2), max_size=4),
)
def test_qido_parameters_are_a_query_or_400(
    small_catalog: Catalog, level: str, args: dict[str, list[str]]
) -> None:
    with no_hang():
        try:
            query = parse_qido(level, args)  # type: ignore[arg-type]
        except BadRequest:
            return
        results = small_catalog.search(query, None)  # and the database accepts what the parser let through
    assert len(results) <= query.limit


@settings(FUZZ, max_examples=300)
@given(
    level=st.sampled_from(["series", "instances"]),
    args=st.dictionaries(st.sampled_from(NUMERIC), st.lists(INTEGERS, min_size=1, max_size=1), min_size=1, max_size=3),
)
def test_qido_integers_are_a_query_or_400(small_catalog: Catalog, level: str, args: dict[str, list[str]]) -> None:
    """Only integer parameters, so no other parameter's 400 hides what the database would do with them."""
    integers_are_a_query_or_400(small_catalog, level, args)


@pytest.mark.postgres
@settings(FUZZ, max_examples=150)
@given(
    level=st.sampled_from(["series", "instances"]),
    args=st.dictionaries(st.sampled_from(NUMERIC), st.lists(INTEGERS, min_size=1, max_size=1), min_size=1, max_size=3),
)
def test_qido_integers_on_postgresql(small_pg_catalog: Catalog, level: str, args: dict[str, list[str]]) -> None:
    integers_are_a_query_or_400(small_pg_catalog, level, args)


def integers_are_a_query_or_400(catalog: Catalog, level: str, args: dict[str, list[str]]) -> None:
    if level == "series":
        args = {name: value for name, value in args.items() if name not in ("InstanceNumber", "00200013")}
    with no_hang():
        try:
            query = parse_qido(level, args)  # type: ignore[arg-type]
        except BadRequest:
            return
        catalog.search(query, None)
