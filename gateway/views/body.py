"""The request body as a stream that answers large reads in large pieces.

gunicorn's ``wsgi.input`` (``gunicorn.http.body.Body``) answers ``read(1 MiB)`` by asking its reader for 1 KiB at a
time, and every KiB goes through two ``BytesIO`` buffers and gives the rest of the socket's 8 KiB read back: a
STOW of a 0.5 MB CT slice cost the worker ~2.5 ms of CPU (a quarter of its time per slice, py-spy) in those
loops alone. Its reader (``LengthReader``, ``ChunkedReader``, ``EOFReader``) answers a large read from 8 KiB
socket reads, still collected in a ``BytesIO`` and copied twice more (~1 ms per slice).

So a body with a Content-Length (what STOW clients and NGINX send) is read here straight from the socket into a
buffer reused for the whole request (not a fresh 1 MiB allocation per read: that was what made raising gunicorn's
own read size slower), the multipart reader's own with ``read_into``. On a plain socket each read waits for all it
asks for (``MSG_WAITALL``, never past the body's end, which the Content-Length gives): a ``recv`` that took what
NGINX had sent so far returned every few dozen KB, and each return waits for the GIL, which the request's ingest
threads hold for up to the switch interval (5 ms) at a time; the body's reading thread paces a STOW (docs/bench.md,
session 34). What gunicorn had already read past the headers is taken from its buffer first, and its count of what
is left (``LengthReader.length``) is kept, so gunicorn drains the rest of the body after the response (keep-alive)
exactly as before. A chunked or unterminated body goes through gunicorn's reader; any other WSGI server's stream is
returned as it is. Only while the ``Body`` has buffered nothing (nothing read through it yet).
"""

from __future__ import annotations

import io
import os
import socket
from typing import Any

from gateway.errors import BadRequest

READ_SIZE = 256 * 1024  # bytes asked of the socket at most per read


class _LengthBody:
    """``read(size)`` of a Content-Length body from gunicorn's socket (see the module)."""

    def __init__(self, reader: Any, sock: socket.socket) -> None:
        self._reader = reader  # gunicorn's LengthReader: .length (bytes left) and .unreader (its buffer)
        self._sock = sock
        self._buffer = bytearray(READ_SIZE)
        # an ``ssl.SSLSocket`` (gunicorn serving TLS itself) refuses any flag: each read then returns a TLS record
        self._flags = socket.MSG_WAITALL if type(sock) is socket.socket else 0

    def read(self, size: int = -1, /) -> bytes:
        size = self._reader.length if size < 0 else size
        with memoryview(self._buffer) as view, view[: min(size, READ_SIZE)] as room:
            got = self.read_into(room)
            return bytes(room[:got])

    def read_into(self, into: memoryview, /) -> int:
        """``read`` into ``into`` (the multipart reader's own buffer: no copy, no allocation per read)."""
        reader = self._reader
        size = min(len(into), reader.length)
        if size <= 0:
            return 0
        pending = reader.unreader.buf
        pending.seek(0, os.SEEK_END)
        if pending.tell():  # bytes gunicorn read past the headers: they come first
            data = reader.unreader.read()
            if len(data) > size:
                reader.unreader.unread(data[size:])
                data = data[:size]
            got = len(data)
            into[:got] = data
        else:
            got = self._sock.recv_into(into, size, self._flags)
        reader.length -= got
        return got


class _BrokenBodyIsBadRequest:
    """A read that fails because the body broke is the client's doing, answered with a 400 that says so (never an
    unhandled error and its traceback): gunicorn raises ``NoMoreData`` (an ``OSError``) when the connection
    ends inside a chunk, as it does when a client goes away and NGINX closes the upstream connection; the socket
    may also be reset."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self.source.read(size)
        except OSError:
            raise _broken() from None
        return data

    def read_into(self, into: memoryview, /) -> int:
        try:
            if (read_into := getattr(self.source, "read_into", None)) is not None:
                got: int = read_into(into)
                return got
            data = self.source.read(len(into))
        except OSError:
            raise _broken() from None
        into[: len(data)] = data
        return len(data)


def _broken() -> BadRequest:
    return BadRequest("the request body ended before it was complete (the connection broke)")


def large_read_stream(stream: Any) -> Any:
    """A reader of the request body ``stream`` (see the module) whose broken reads are a 400."""
    return _BrokenBodyIsBadRequest(_large_reads(stream))


def _large_reads(stream: Any) -> Any:
    """``stream``, or a reader of the same bytes under gunicorn's ``Body`` (see the module)."""
    try:
        from gunicorn.http.body import Body, ChunkedReader, EOFReader, LengthReader
        from gunicorn.http.unreader import SocketUnreader
    except ImportError:  # not under gunicorn (the test client, the Lambda): nothing to bypass
        return stream
    if type(stream) is not Body:
        return stream
    reader: Any = getattr(stream, "reader", None)
    buffered = getattr(stream, "buf", None)
    if type(reader) not in (LengthReader, ChunkedReader, EOFReader):
        return stream
    if not isinstance(buffered, io.BytesIO) or buffered.tell() != 0:
        return stream
    unreader: Any = getattr(reader, "unreader", None)
    if (
        type(reader) is LengthReader
        and type(unreader) is SocketUnreader
        and isinstance(getattr(unreader, "buf", None), io.BytesIO)
        and isinstance(getattr(unreader, "sock", None), socket.socket)
        and isinstance(reader.length, int)
    ):
        return _LengthBody(reader, unreader.sock)
    return reader
