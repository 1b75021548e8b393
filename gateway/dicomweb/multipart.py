"""``multipart/related`` (RFC 2046 5.1, RFC 2387) for STOW-RS: a streaming parser and a streaming encoder.

The parser never holds a part in memory: it reads the body in chunks, looks for the delimiter with
``bytes.find`` on a rolling buffer that keeps only ``len(delimiter) - 1`` bytes of overlap between reads, and
writes everything before that overlap straight to a spool file. Memory stays flat whatever the part size or
part count.

Strictness, where the RFCs leave room:
- Delimiters must be ``CRLF--boundary`` (the CRLF belongs to the delimiter); a bare LF is data, never a
  delimiter.
  The opening delimiter may be the very first bytes of the body (no CRLF) or follow a preamble (discarded).
- A delimiter may be followed by transport padding (spaces/tabs) then CRLF, or by ``--`` (close delimiter).
  Anything else after a delimiter is an error rather than data: the sender chose a boundary that occurs in its
  data, and guessing would risk storing a corrupt object.
- The epilogue after the close delimiter is read and discarded (so a WSGI server can reuse the connection).
- Part headers: ``Name: value`` lines (names lower-cased in ``Part.headers``), obsolete line folding unfolded,
  at most 64 KiB of headers per part, UTF-8 or else read as ISO-8859-1. ``Content-Transfer-Encoding`` is not
  interpreted (HTTP is 8-bit clean; PS3.18 sends binary parts).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.errors import MalformedMultipart, PayloadTooLarge, UnsupportedMediaType
from gateway.spool import spool_file

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105 (RFC 9110 token, not a password)
_MEDIA_TYPE = re.compile(rf"({_TOKEN})/({_TOKEN})")
_PARAM_SEP = re.compile(r"[ \t]*;[ \t]*")
_PARAM_NAME = re.compile(rf"({_TOKEN})=")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
# RFC 9110 only allows a token here, but `type=application/dicom` (with a "/") is common; `docs/design.md` §6 asks us to
# accept `type=` quoted or unquoted, so an unquoted value runs to the next ";" or whitespace.
_UNQUOTED = re.compile(r'[^\s;"]+')
_QUOTED_PAIR = re.compile(r"\\(.)")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

MAX_HEADER_BYTES = 64 * 1024
MAX_PREAMBLE_BYTES = 1 << 20
_MAX_PADDING = 1024


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into the lower-cased media type and its parameters (RFC 9110 8.3.1, 5.6.6).

    Parameter names are lower-cased; values keep their case (a boundary is case-sensitive) with quoted-pair
    escapes removed. Raises ``UnsupportedMediaType`` when the value is not a media type, or when it gives one
    parameter twice with different values (RFC 6838 4.3: a name must not occur twice; two boundaries are two
    readings of one body, and the first one silently won).
    """
    text = value.strip()
    match = _MEDIA_TYPE.match(text)
    if match is None:
        raise UnsupportedMediaType("Content-Type is not a media type")
    media_type = match.group(0).lower()
    params: dict[str, str] = {}
    pos = match.end()
    while pos < len(text):
        sep = _PARAM_SEP.match(text, pos)
        if sep is None:
            raise UnsupportedMediaType(f"Content-Type {media_type}: expected ';' at offset {pos}")
        pos = sep.end()
        if pos >= len(text) or text[pos] == ";":
            continue  # empty parameter, allowed by the grammar
        name = _PARAM_NAME.match(text, pos)
        if name is None:
            raise UnsupportedMediaType(f"Content-Type {media_type}: malformed parameter at offset {pos}")
        pos = name.end()
        if text.startswith('"', pos):
            quoted = _QUOTED.match(text, pos)
            if quoted is None:
                raise UnsupportedMediaType(f"Content-Type {media_type}: unterminated quoted string")
            param_value = _QUOTED_PAIR.sub(r"\1", quoted.group(1))
            pos = quoted.end()
        else:
            unquoted = _UNQUOTED.match(text, pos)
            if unquoted is None:
                raise UnsupportedMediaType(f"Content-Type {media_type}: empty parameter value")
            param_value = unquoted.group(0)
            pos = unquoted.end()
        key = name.group(1).lower()
        if params.setdefault(key, param_value) != param_value:
            raise UnsupportedMediaType(f"Content-Type {media_type}: parameter {key} given twice")
    return media_type, params


MAX_BOUNDARY = 200


def check_boundary(boundary: str) -> str:
    """A boundary we can find without ambiguity: 1-200 printable ASCII characters, not ending in a space.

    RFC 2046 5.1.1 says 1-70, but real senders exceed it (Orthanc 1.10 sends two UUIDs, 73 characters), and the
    delimiter search does not care about the length. What keeps the body unambiguous is kept: no control
    characters (a CR or LF would split the delimiter line), no trailing space (it would read as transport
    padding). Any printable ASCII is accepted (a little wider than ``bchars``: real clients stray). The upper
    bound keeps the delimiter search's overlap buffer and the error message small."""
    if not boundary:
        raise MalformedMultipart("multipart body without a boundary parameter")
    if len(boundary) > MAX_BOUNDARY or boundary.endswith(" ") or not all(" " <= c <= "~" for c in boundary):
        raise MalformedMultipart(
            f"boundary parameter is not 1-{MAX_BOUNDARY} printable ASCII characters (not ending in a space)"
        )
    return boundary


def multipart_boundary(content_type: str, media_type: str = "multipart/related") -> str:
    """The boundary of a request whose Content-Type must be ``media_type``.

    Raises ``UnsupportedMediaType`` for another type and ``MalformedMultipart`` when the boundary parameter is
    missing or invalid."""
    got, params = parse_content_type(content_type)
    if got != media_type:
        raise UnsupportedMediaType(f"expected {media_type}, got {got}")
    return check_boundary(params.get("boundary", ""))


class Readable(Protocol):
    """What the parser reads from: a binary file, ``wsgi.input``, a socket file. Short reads are fine."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Part:
    """One complete part, spooled to ``path`` (the caller owns the file and deletes it).

    ``content_type`` is the part's media type, lower-cased and without parameters (the full value stays in
    ``headers["content-type"]``), or ``default_content_type`` of ``iter_parts`` when the part has none.
    """

    path: Path
    headers: dict[str, str]
    content_type: str
    size: int
    sha256: str = ""  # hex digest of the spooled bytes, computed while they were written


class _Eof(Exception):
    """The body ended where more was required."""


class _TooLarge(Exception):
    pass


class _Reader:
    """A rolling buffer over ``stream``: ``buf[pos:end]`` is read but not yet consumed.

    One ``bytearray`` serves the whole body: what is left unconsumed (a delimiter's first bytes, a header line's)
    moves to its start, and the next read lands after it, in place where the stream has ``read_into`` (the request
    body under gunicorn, ``gateway.views.body``; not ``readinto``, which a stream made from ``io.RawIOBase`` with
    only ``read`` has and refuses). A fresh ``bytes`` of each read, joined to the leftover, was two copies and an
    allocation, page faults included, per 256 KB read of a STOW body (docs/bench.md, session 34)."""

    def __init__(self, stream: Readable, chunk_size: int, initial: bytes) -> None:
        self._stream = stream
        self._chunk_size = chunk_size
        self._read_into: Callable[[memoryview], int] | None = getattr(stream, "read_into", None)
        self.buf = bytearray(initial)
        self.pos = 0
        self.end = len(initial)
        self.eof = False

    def fill(self) -> bool:
        """Append one read to the unconsumed bytes; False at end of stream."""
        if self.eof:
            return False
        left = self.end - self.pos
        if len(self.buf) < left + self._chunk_size:  # once per body, or when a header line is long
            grown = bytearray(left + self._chunk_size)
            grown[:left] = self.buf[self.pos : self.end]
            self.buf = grown
        elif left:
            self.buf[:left] = self.buf[self.pos : self.end]
        self.pos, self.end = 0, left
        with memoryview(self.buf) as view, view[left : left + self._chunk_size] as room:
            if self._read_into is not None:
                got = self._read_into(room)
            else:
                data = self._stream.read(self._chunk_size)
                got = len(data)
                room[:got] = data
        if not got:
            self.eof = True
            return False
        self.end = left + got
        return True

    def scan_to(self, delimiter: bytes, sink: Callable[[memoryview], object], limit: int) -> int:
        """Feed ``sink`` everything before the next ``delimiter`` and consume the delimiter; returns the byte
        count. Raises ``_Eof`` if the stream ends first and ``_TooLarge`` past ``limit`` bytes. ``sink`` must not
        keep the view it is given (the buffer is reused)."""
        total = 0
        keep = len(delimiter) - 1
        while True:
            idx = self.buf.find(delimiter, self.pos, self.end)
            end = idx if idx >= 0 else self.end - keep
            if end > self.pos:
                total += end - self.pos
                if total > limit:
                    raise _TooLarge
                with memoryview(self.buf) as view, view[self.pos : end] as piece:
                    sink(piece)
                self.pos = end
            if idx >= 0:
                self.pos = idx + len(delimiter)
                return total
            if not self.fill():
                raise _Eof

    def read_line(self, limit: int) -> bytes:
        """One CRLF-terminated line without its CRLF; ``MalformedMultipart`` when longer than ``limit``."""
        scanned = 0  # bytes after pos already known to hold no CRLF start
        while True:
            idx = self.buf.find(b"\r\n", self.pos + scanned, self.end)
            if idx >= 0 and idx - self.pos <= limit:
                line = bytes(self.buf[self.pos : idx])
                self.pos = idx + 2
                return line
            if self.end - self.pos > limit + 1:
                raise MalformedMultipart(f"header line longer than {limit} bytes")
            scanned = max(self.end - self.pos - 1, 0)
            if not self.fill():
                raise _Eof

    def peek(self, n: int) -> bytes:
        while self.end - self.pos < n and self.fill():
            pass
        return bytes(self.buf[self.pos : min(self.pos + n, self.end)])

    def drain(self) -> None:
        while self._stream.read(self._chunk_size):
            pass


def iter_parts(
    stream: Readable,
    boundary: str,
    spool_dir: Path,
    *,
    max_part_bytes: int,
    chunk_size: int = 1 << 20,
    default_content_type: str = "",
) -> Generator[Part, None, None]:
    """Stream a ``multipart/related`` body part by part into files in ``spool_dir``.

    Each ``Part`` is yielded only once its closing delimiter has been seen, so a yielded part is complete. An
    error (``MalformedMultipart``, ``PayloadTooLarge``; ``StorageUnavailable`` when the spool folder fails) is
    raised at the part where the body goes wrong; parts already yielded are the caller's to keep or delete. The
    file of a part being written when an error occurs or the generator is closed is removed here.
    """
    check_boundary(boundary)
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    # Pretend the body starts with CRLF so an opening delimiter on the first line needs no special case.
    reader = _Reader(stream, chunk_size, b"\r\n")
    try:
        reader.scan_to(delimiter, lambda _: None, MAX_PREAMBLE_BYTES)
    except (_Eof, _TooLarge):
        raise MalformedMultipart("no opening boundary delimiter in the body") from None
    number = 0
    try:
        closed = _after_delimiter(reader)
        while not closed:
            number += 1
            headers = _read_headers(reader, number)
            content_type = default_content_type
            if "content-type" in headers:
                try:
                    content_type = parse_content_type(headers["content-type"])[0]
                except UnsupportedMediaType as exc:
                    raise MalformedMultipart(f"part {number}: {exc.detail}") from None
            path, size, digest = _spool_body(reader, delimiter, spool_dir, max_part_bytes, number)
            try:
                closed = _after_delimiter(reader)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            yield Part(path=path, headers=headers, content_type=content_type, size=size, sha256=digest)
    except _Eof:
        raise MalformedMultipart(
            f"body ended inside part {max(number, 1)} before its closing boundary delimiter"
        ) from None
    reader.drain()


def _after_delimiter(reader: _Reader) -> bool:
    """Consume what follows a delimiter; True for the close delimiter (``--``)."""
    if reader.peek(2) == b"--":
        reader.pos += 2
        return True
    if reader.peek(_MAX_PADDING + 2).lstrip(b" \t").startswith(b"\n"):
        # a body written with LF line ends (a hand-made client): say so, not "line too long" or "bytes after"
        raise MalformedMultipart("a boundary delimiter line ends in a bare LF: multipart lines end in CRLF")
    line = reader.read_line(_MAX_PADDING)
    if line.strip(b" \t"):
        raise MalformedMultipart("unexpected bytes after a boundary delimiter (boundary occurs in the data?)")
    return False


def _header_text(raw: bytes) -> str:
    """A part header's bytes as text: UTF-8, else ISO-8859-1. Bytes past ASCII are opaque data to a recipient (RFC
    9110 5.5); a file name in ISO-8859-1 (Java's HttpClient in its browser-compatible mode) made the whole body a
    400 for a header nothing reads. A Content-Type holding one is still no media type."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_headers(reader: _Reader, number: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    total = 0
    last: str | None = None
    while True:
        line = reader.read_line(MAX_HEADER_BYTES)
        total += len(line) + 2
        if total > MAX_HEADER_BYTES:
            raise MalformedMultipart(f"part {number}: headers larger than {MAX_HEADER_BYTES} bytes")
        if not line:
            return headers
        text = _header_text(line)
        if line[:1] in (b" ", b"\t"):  # obsolete line folding (RFC 5322 2.2.3)
            if last is None:
                raise MalformedMultipart(f"part {number}: header block starts with a continuation line")
            headers[last] = f"{headers[last]} {text.strip()}"
            continue
        name, sep, value = line.partition(b":")
        if not sep or _HEADER_NAME.fullmatch(name) is None:
            raise MalformedMultipart(f"part {number}: malformed header line")
        last = name.decode("ascii").lower()
        value_text = _header_text(value).strip(" \t")
        headers[last] = f"{headers[last]}, {value_text}" if last in headers else value_text


def _spool_body(
    reader: _Reader, delimiter: bytes, spool_dir: Path, max_part_bytes: int, number: int
) -> tuple[Path, int, str]:
    """The part's body into a new file: its path, size and sha256 (hashed on the way, so ingest need not read
    the file again for its digest)."""
    digest = hashlib.sha256()
    try:
        with spool_file(spool_dir, "part", ".spool") as (path, write_file):

            def write(chunk: memoryview) -> None:
                write_file(chunk)
                digest.update(chunk)

            size = reader.scan_to(delimiter, write, max_part_bytes)
    except _TooLarge:
        raise PayloadTooLarge(f"part {number} is larger than {max_part_bytes} bytes") from None
    return path, size, digest.hexdigest()


# ---------------------------------------------------------------------------------------------- client side


def new_boundary() -> str:
    """A random boundary: 128 bits make a collision with file content practically impossible."""
    return f"dicomgw-{secrets.token_hex(16)}"


@dataclass
class MultipartBody:
    """A ``multipart/related`` request body streamed from files, one part per file.

    Iterate it to get the body in chunks (each iteration starts over, so a retry can reuse it); ``len()`` is
    the exact byte count, so ``requests`` sends ``Content-Length`` rather than chunked encoding. ``on_bytes``
    is called with the number of file bytes in each chunk (for progress bars). File sizes are taken at
    construction; a file that changes size while being sent raises ``OSError``.
    """

    paths: Sequence[Path]
    part_type: str = "application/dicom"
    boundary: str = field(default_factory=new_boundary)
    chunk_size: int = 1 << 20
    on_bytes: Callable[[int], object] | None = None
    sizes: list[int] = field(init=False)

    def __post_init__(self) -> None:
        check_boundary(self.boundary)
        self.sizes = [Path(p).stat().st_size for p in self.paths]

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def _head(self, index: int) -> bytes:
        lead = b"\r\n" if index else b""
        return lead + f"--{self.boundary}\r\nContent-Type: {self.part_type}\r\n\r\n".encode("ascii")

    def _tail(self) -> bytes:
        lead = b"\r\n" if self.paths else b""
        return lead + f"--{self.boundary}--\r\n".encode("ascii")

    def __len__(self) -> int:
        return sum(len(self._head(i)) + size for i, size in enumerate(self.sizes)) + len(self._tail())

    def __iter__(self) -> Iterator[bytes]:
        for index, (path, size) in enumerate(zip(self.paths, self.sizes, strict=True)):
            yield self._head(index)
            remaining = size
            with open(path, "rb") as src:
                while remaining:
                    chunk = src.read(min(self.chunk_size, remaining))
                    if not chunk:
                        raise OSError(f"{path} shrank while being sent")
                    remaining -= len(chunk)
                    if self.on_bytes is not None:
                        self.on_bytes(len(chunk))
                    yield chunk
                if src.read(1):
                    raise OSError(f"{path} grew while being sent")
        yield self._tail()


def encode_multipart(
    paths: Sequence[Path], *, part_type: str = "application/dicom", boundary: str | None = None
) -> MultipartBody:
    """Convenience constructor for ``MultipartBody`` (random boundary unless given)."""
    return MultipartBody(paths=list(paths), part_type=part_type, boundary=boundary or new_boundary())
