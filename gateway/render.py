"""Rendered frames and thumbnails: the one place Python decodes pixels.

A frame's stored bytes are read by range from storage (never the whole object), decoded (native with numpy,
JPEG with Pillow), windowed with the file's window/level (or the request's), and encoded as JPEG or PNG.
Thumbnails are rendered once, stored next to the instance, and from then on served by NGINX from storage.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flask import Response
from PIL import Image

from gateway import nginx_contract as nginx
from gateway.dicomweb.accept import Offer, negotiate
from gateway.errors import BadRequest, NotAcceptable, NotFound
from gateway.numbers import parse_int
from gateway.services import Services
from gateway.uids import check_uid

THUMBNAIL_SIZE = 128
_MAX_WINDOW = 1e9  # far beyond any stored value (32-bit pixels times a rescale slope)


def _value(metadata: Mapping[str, Any], tag: str, default: Any = None) -> Any:
    element = metadata.get(tag)
    if not element or "Value" not in element or not element["Value"]:
        return default
    return element["Value"][0]


def _frame_bytes(services: Services, row: Any, frame: int) -> bytes:
    from gateway.dicomweb.wado import to_cached

    cached = to_cached(row)
    if cached.frames is None:
        raise NotAcceptable("this instance's frames cannot be rendered (not range-servable)")
    return b"".join(
        services.storage.read_range(row.storage_key, start, length)
        for start, length in cached.frames.ranges(frame)
    )


def _to_image(data: bytes, metadata: Mapping[str, Any], params: Mapping[str, str], media: str) -> Image.Image:
    rows = int(_value(metadata, "00280010", 0))
    columns = int(_value(metadata, "00280011", 0))
    samples = int(_value(metadata, "00280002", 1))
    if media != "application/octet-stream":
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError):  # a codestream PIL refuses is no server fault
            raise NotAcceptable("this frame's compression cannot be rendered here") from None
        return image.convert("RGB" if samples == 3 else "L")
    bits = int(_value(metadata, "00280100", 16))
    signed = int(_value(metadata, "00280103", 0)) == 1
    if len(data) < rows * columns * samples * max(bits // 8, 1):  # e.g. YBR_FULL_422: two samples per pixel
        raise NotAcceptable("this frame's pixel layout cannot be rendered here")
    if samples == 3:
        pixels = np.frombuffer(data, dtype=np.uint8)[: rows * columns * 3]
        planar = int(_value(metadata, "00280006", 0)) == 1
        shaped = (
            pixels.reshape(3, rows, columns).transpose(1, 2, 0)
            if planar
            else pixels.reshape(rows, columns, 3)
        )
        return Image.fromarray(np.ascontiguousarray(shaped), "RGB")
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}.get(bits)
    if dtype is None:
        raise NotAcceptable("unsupported Bits Allocated for rendering")
    values = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))[: rows * columns]
    if signed:
        values = values.view(np.dtype(dtype).newbyteorder("<").str.replace("u", "i"))
    slope = float(_value(metadata, "00281053", 1) or 1)
    intercept = float(_value(metadata, "00281052", 0) or 0)
    real = values.astype(np.float32) * slope + intercept
    window = params.get("window")
    if window:
        center, width = _window(window)
    else:
        center = _value(metadata, "00281050")
        width = _value(metadata, "00281051")
        if center is None or width is None:
            low, high = float(real.min()), float(real.max())
            center, width = (low + high) / 2, max(high - low, 1.0)
    center, width = float(center), max(float(width), 1.0)
    scaled = np.clip((real - (center - width / 2)) / width * 255.0, 0, 255).astype(np.uint8)
    if _value(metadata, "00280004", "MONOCHROME2") == "MONOCHROME1":
        scaled = 255 - scaled
    return Image.fromarray(scaled.reshape(rows, columns), "L")


def _window(text: str) -> tuple[float, float]:
    """``window=center,width[,function]``: finite numbers (``nan`` or ``1e999`` would render garbage)."""
    try:
        center, width = (float(v) for v in text.split(",")[:2])
    except ValueError:
        raise BadRequest("window must be center,width[,function]") from None
    if not all(math.isfinite(v) and abs(v) <= _MAX_WINDOW for v in (center, width)):
        raise BadRequest(f"window: center and width must be numbers within ±{_MAX_WINDOW:g}")
    return center, width


def _encode(image: Image.Image, media: str, quality: int) -> bytes:
    out = io.BytesIO()
    if media == "image/png":
        image.save(out, "PNG")
    else:
        image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _load(services: Services, study: str, series: str, sop: str) -> Any:
    row = services.catalog.get_instance(check_uid(sop))
    if row is None or row.study_uid != check_uid(study) or row.series_uid != check_uid(series):
        raise NotFound("no such instance")
    return row


def render_instance(
    services: Services, study: str, series: str, sop: str, frame: int, params: Mapping[str, str], accept: str
) -> Response:
    row = _load(services, study, series, sop)
    offer = negotiate(
        params.get("accept", accept), [Offer("image/jpeg", "*", False), Offer("image/png", "*", False)]
    )
    quality = parse_int(params.get("quality", "90"), "quality", low=1, high=100)
    metadata = json.loads(row.metadata)
    image = _to_image(_frame_bytes(services, row, frame), metadata, params, row.frame_media_type)
    viewport = params.get("viewport")
    if viewport:
        sizes = viewport.split(",")
        if len(sizes) < 2:
            raise BadRequest("viewport must be width,height")
        width, height = (parse_int(v, "viewport", low=1) for v in sizes[:2])
        image.thumbnail((width, height))
    body = _encode(image, offer.part_type, quality)
    return Response(body, mimetype=offer.part_type, headers={"Cache-Control": "private, max-age=3600"})


def thumbnail(services: Services, study: str, series: str, sop: str) -> Response:
    """Render once, store next to the instance (inside the prefixes deployments grant the gateway), and let NGINX
    serve the stored file from then on."""
    row = _load(services, study, series, sop)
    key = row.thumbnail_key
    if not key:
        metadata = json.loads(row.metadata)
        image = _to_image(_frame_bytes(services, row, 1), metadata, {}, row.frame_media_type)
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        key = row.storage_key.removesuffix(".dcm") + ".thumb.jpg"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "thumb.jpg"
            path.write_bytes(_encode(image, "image/jpeg", 85))
            services.storage.put_file(key, path)
        services.catalog.set_thumbnail(row.sop_uid, key)
    response = Response(status=200, mimetype="image/jpeg")
    response.headers["X-Accel-Redirect"] = f"{nginx.OBJECT}{services.storage.origin_path(key)}"
    return response
