"""JSON on the QIDO path with orjson (C, ~10x the standard library's speed on DICOM JSON): parsing the stored
attributes and encoding the answer were most of a 100-row QIDO answer's Python time (docs/bench.md, B5).

Both fall back to the standard library for what orjson refuses, so nothing that worked before fails: ``NaN`` or
``Infinity`` in stored text (``json.dumps`` writes them for a float DS that overflowed) and, when encoding,
integers beyond 64 bits. (orjson reads an integer beyond 64 bits as a float; no valid VR holds one.) The output is
compact UTF-8 (no ``\\uXXXX`` escapes), as RFC 8259 prefers.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson


def loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits
        # orjson writes a non-finite float (a DS that overflowed) as null; json.dumps would write Infinity, which
        # no JSON parser takes (a browser's JSON.parse refused the whole metadata), so the fallback does as orjson
        return json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None, as orjson writes them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
