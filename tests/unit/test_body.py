"""``large_read_stream``: under gunicorn, STOW reads the body through the reader under ``Body`` (large reads),
with gunicorn's own accounting intact; anything else is read as it is."""

from __future__ import annotations

import io
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.unreader import SocketUnreader

from gateway.errors import BadRequest
from gateway.tools.stack import self_signed_certificate
from gateway.views.body import large_read_stream


@pytest.fixture
def socket_with() -> Iterator[Callable[[bytes], socket.socket]]:
    """A socket that receives ``data`` and then end of stream (closed after the test)."""
    opened: list[socket.socket] = []
    senders: list[threading.Thread] = []

    def make(data: bytes) -> socket.socket:
        ours, theirs = socket.socketpair()
        opened.append(ours)

        def send() -> None:
            with theirs:
                theirs.sendall(data)

        senders.append(threading.Thread(target=send, daemon=True))
        senders[-1].start()
        return ours

    yield make
    for sender in senders:  # what a test did not read fits in the socket's buffer: every sender finishes
        sender.join(timeout=10)
    for sock in opened:
        sock.close()


def read_into(stream: Any, size: int) -> bytes:
    """One ``read_into`` (the multipart reader's way: into its own buffer) of up to ``size`` bytes."""
    room = bytearray(size)
    got = stream.read_into(memoryview(room))
    return bytes(room[:got])


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("read_size", [1 << 20, 1000])
def test_length_body_is_read_from_the_socket_with_gunicorns_count_kept(
    socket_with: Callable[[bytes], socket.socket], read_size: int, in_place: bool
) -> None:
    payload = os.urandom(700_000)
    after = b"GET /next HTTP/1.1\r\n"  # the next request on a keep-alive connection
    unreader = SocketUnreader(socket_with(payload[5000:] + after))
    unreader.unread(payload[:5000])  # what gunicorn read past the request headers
    body = Body(LengthReader(unreader, len(payload)))
    stream = large_read_stream(body)
    assert stream.source is not body and stream.source is not body.reader
    chunks = []
    while chunk := (read_into(stream, read_size) if in_place else stream.read(read_size)):
        assert len(chunk) <= read_size
        chunks.append(chunk)
    assert b"".join(chunks) == payload
    assert body.reader.length == 0
    assert body.read(8192) == b""  # what gunicorn's drain after the response sees: nothing left of this body
    assert unreader.read() == after  # and the next request's bytes are untouched


def test_a_read_waits_for_all_it_asks_for_and_a_body_cut_short_ends_it() -> None:
    """A read returns what it asked for, however the bytes trickle in (each return of a read waits for the GIL,
    which a STOW's ingest threads hold), and never waits past the body's end; a connection that ends early ends
    the body with what had come."""
    payload = os.urandom(300_000)
    ours, theirs = socket.socketpair()

    def trickle() -> None:
        with theirs:
            for at in range(0, 200_000, 10_000):
                theirs.sendall(payload[at : at + 10_000])
                time.sleep(0.005)  # each piece apart, as NGINX relays a client's body

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        stream = large_read_stream(Body(LengthReader(SocketUnreader(ours), len(payload))))
        assert read_into(stream, 150_000) == payload[:150_000]  # one read, though 15 pieces came apart
        assert read_into(stream, 1 << 20) == payload[150_000:200_000]  # the sender went away
        assert read_into(stream, 1 << 20) == b""
    finally:
        sender.join(10)
        ours.close()


@pytest.mark.parametrize("in_place", [False, True])
def test_a_body_over_tls_is_read_as_gunicorn_serving_tls_hands_it(tmp_path: Path, in_place: bool) -> None:
    """gunicorn given --certfile reads through an ``ssl.SSLSocket``, which refuses any flag of ``recv_into``
    (``MSG_WAITALL`` made every STOW with a Content-Length a 500 there)."""
    cert, key = self_signed_certificate(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    client_side = ssl.create_default_context(cafile=str(cert))
    payload = os.urandom(300_000)
    ours, theirs = socket.socketpair()

    def send() -> None:
        with client_side.wrap_socket(theirs, server_hostname="localhost") as tls:
            tls.sendall(payload)
            tls.recv(1)  # until the reader has it all and closes

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    with server_side.wrap_socket(ours, server_side=True) as tls:
        stream = large_read_stream(Body(LengthReader(SocketUnreader(tls), len(payload))))
        assert stream.source is not None and type(stream.source).__name__ == "_LengthBody"
        read = (lambda: read_into(stream, 1 << 20)) if in_place else (lambda: stream.read(1 << 20))
        assert b"".join(iter(read, b"")) == payload
    sender.join(10)


def test_length_body_buffered_beyond_its_end_leaves_the_rest_to_gunicorn(
    socket_with: Callable[[bytes], socket.socket],
) -> None:
    after = b"GET /next HTTP/1.1\r\n"
    unreader = SocketUnreader(socket_with(b""))
    unreader.unread(b"body" + after)  # a small body and the next request arrived in one socket read
    body = Body(LengthReader(unreader, 4))
    stream = large_read_stream(body)
    assert stream.read(1 << 20) == b"body"
    assert stream.read(1 << 20) == b""
    assert unreader.read() == after


def test_length_body_cut_short_ends_the_stream(socket_with: Callable[[bytes], socket.socket]) -> None:
    body = Body(LengthReader(SocketUnreader(socket_with(b"x" * 100)), 1000))
    stream = large_read_stream(body)
    assert b"".join(iter(lambda: stream.read(1 << 20), b"")) == b"x" * 100


def test_chunked_body_is_read_through_its_reader(socket_with: Callable[[bytes], socket.socket]) -> None:
    payload = os.urandom(50_000)
    wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (payload[:20_000], payload[20_000:])) + b"0\r\n\r\n"

    class Req:
        trailers: list[tuple[str, str]] = []

    body = Body(ChunkedReader(Req(), SocketUnreader(socket_with(wire))))
    stream = large_read_stream(body)
    assert stream.source is body.reader
    assert b"".join(iter(lambda: read_into(stream, 1 << 20), b"")) == payload  # read, then copied in place


@pytest.mark.parametrize("in_place", [False, True])
def test_a_chunked_body_cut_inside_a_chunk_is_a_bad_request(
    socket_with: Callable[[bytes], socket.socket], in_place: bool
) -> None:
    # a client that went away: NGINX closes the upstream connection inside a chunk, gunicorn raises NoMoreData
    wire = b"%x\r\n%s" % (50_000, b"x" * 20_000)

    class Req:
        trailers: list[tuple[str, str]] = []

    stream = large_read_stream(Body(ChunkedReader(Req(), SocketUnreader(socket_with(wire)))))
    with pytest.raises(BadRequest, match="ended before it was complete"):
        while read_into(stream, 1 << 20) if in_place else stream.read(1 << 20):
            pass


def test_a_body_already_read_from_and_other_streams_are_kept(
    socket_with: Callable[[bytes], socket.socket],
) -> None:
    payload = b"x" * 5000
    body = Body(LengthReader(SocketUnreader(socket_with(payload)), len(payload)))
    assert body.read(10) == b"x" * 10  # the Body buffers the rest of the reader's 1 KiB
    assert large_read_stream(body).source is body
    plain = io.BytesIO(b"abc")
    assert large_read_stream(plain).source is plain
