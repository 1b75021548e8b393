"""The request body as a stream that answers large reads in large pieces.

gunicorn's ``wsgi.input`` (``gunicorn.http.body.Body``) answers ``read(1 MiB)`` by asking its reader for 1 KiB at a
time, and every KiB goes through two ``BytesIO`` buffers and gives the rest of the socket's 8 KiB read back: a
STOW of a 0.5 MB CT slice cost the worker ~2.5 ms of CPU (a quarter of its time per slice, py-spy) in those
loops alone. The reader underneath (``LengthReader``, ``ChunkedReader`` or ``EOFReader``) answers one large read
from whole socket reads and keeps gunicorn's own count of what is left, so gunicorn still drains the rest of a
body after the response (keep-alive) exactly as before. It is used only while the ``Body`` has buffered nothing
(nothing read through it yet); any other WSGI server's stream is returned as it is.
"""

from __future__ import annotations

import io
from typing import Any


def large_read_stream(stream: Any) -> Any:
    """``stream``, or the reader under gunicorn's ``Body`` when that is equivalent (see the module)."""
    try:
        from gunicorn.http.body import Body, ChunkedReader, EOFReader, LengthReader
    except ImportError:  # not under gunicorn (the test client, the Lambda): nothing to bypass
        return stream
    if type(stream) is not Body:
        return stream
    reader, buffered = getattr(stream, "reader", None), getattr(stream, "buf", None)
    if type(reader) not in (LengthReader, ChunkedReader, EOFReader):
        return stream
    if not isinstance(buffered, io.BytesIO) or buffered.tell() != 0:
        return stream
    return reader
