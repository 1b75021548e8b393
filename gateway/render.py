"""Rendered frames and thumbnails: the one place Python decodes pixels.

A frame's stored bytes are read by range from storage (never the whole object), decoded by pydicom's decoders
(native, RLE, JPEG and JPEG 2000 through Pillow, and through imagecodecs what Pillow does not read: JPEG Lossless,
JPEG-LS, 12-bit JPEG, HTJ2K; ``gateway.dicom.codecs``), turned into display values as PS3.3 C.11 says (modality LUT,
the request's or the file's window or VOI LUT, MONOCHROME1 inverted, palette colour, YBR to RGB), and encoded as
JPEG or PNG.
Thumbnails are rendered once, stored next to the instance, and from then on served by NGINX from storage.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flask import Response
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space
from pydicom.uid import UID, ExplicitVRLittleEndian
from werkzeug.datastructures import MultiDict

from gateway import nginx_contract as nginx
from gateway import report
from gateway.dicom import codecs
from gateway.dicom.converted import ConvertedReader, frames_converted, is_converted
from gateway.dicom.index import ENCAPSULATED_UNCOMPRESSED_LE
from gateway.dicom.model import MAX_DECODED_PIXELS
from gateway.dicomweb import xml
from gateway.dicomweb.accept import Offer, negotiate
from gateway.dicomweb.wado import storage_tag
from gateway.errors import BadRequest, FrameNotFound, NotAcceptable, NotFound
from gateway.numbers import INT32_MAX, parse_decimal, parse_int
from gateway.services import Services
from gateway.uids import check_uid
from gateway.views.common import make_conditional, metadata_text

codecs.register()  # every process that renders imports this module before it decodes a frame

THUMBNAIL_SIZE = 128
_MAX_WINDOW = 1e9  # far beyond any stored value (32-bit pixels times a rescale slope)


def _value(metadata: Mapping[str, Any], tag: str, default: Any = None) -> Any:
    element = metadata.get(tag)
    if not element or "Value" not in element or not element["Value"]:
        return default
    return element["Value"][0]


# What rendering reads of an instance's metadata: the Image Pixel module, the modality and VOI transforms and the
# palette. Only these become a pydicom Dataset (its LUT functions take one); bulk LUT data are read by range.
_RENDER_TAGS = (
    "00280002 00280004 00280006 00280008 00280010 00280011 00280100 00280101 00280103 00281050 00281051 "
    "00281052 00281053 00281054 00281056 00283000 00283010 00281101 00281102 00281103 00281201 00281202 "
    "00281203 00281221 00281222 00281223"
).split()
# The pixel data elements (PS3.3 C.7.6.3), by their bulkdata path: integer, float and double float pixels.
_PIXEL_KEYWORDS = {"7FE00010": "PixelData", "7FE00008": "FloatPixelData", "7FE00009": "DoubleFloatPixelData"}
# An enhanced multi-frame image (PS3.3 C.7.6.16) keeps its rescale and window not at the top level but in the
# Pixel Value Transformation (0028,9145) and Frame VOI LUT (0028,9132) macros of its Shared (5200,9229) or
# Per-Frame (5200,9230) Functional Groups: the frame's own item wins over the shared one.
_FRAME_MACROS = ("00289145", "00289132")
# PS3.18 Table 8.7.4-1: a single-frame image's rendered media types; JPEG the default, PNG and GIF required of
# WADO-RS (GIF was a 406)
_IMAGE_OFFERS = [Offer("image/jpeg", "*", False), Offer("image/png", "*", False), Offer("image/gif", "*", False)]
# PS3.18 Table 8.7.4-1: a multi-frame image's one rendered media type, GIF (animated): a frame list's rendering
_FRAMES_OFFERS = [Offer("image/gif", "*", False)]
# A frame list's frames are held decoded until the GIF is written: at most this many 8-bit samples in all (a
# 100-frame 512x512 CT is 26 MB, a 30-frame 640x480 colour cine 28 MB)
MAX_RENDERED_SAMPLES = 64 << 20
_BAND_SAMPLES = 1 << 20  # samples turned into display values at once (_in_bands)
_DEFAULT_FRAME_MS = 100  # a frame list of an image without Frame Time (0018,1063): ten frames a second
# PS3.18 Table 8.7.4-1, the Text category (structured reports): text/html the default, text/plain and text/xml
# required of the RESTful rendered resource (text/xml optional for WADO-URI, served there too)
_TEXT_OFFERS = [Offer("text/html", "*", False), Offer("text/plain", "*", False), Offer("text/xml", "*", False)]
# The rendered HTML of a report is inert: nothing may load or run (a <script> in a TEXT value is escaped; sandbox
# makes the page an opaque origin even if one were not), and it cannot submit or be re-based.
REPORT_CSP = "default-src 'none'; sandbox; base-uri 'none'; form-action 'none'"
_FUNCTIONS = {"LINEAR": "LINEAR", "LINEAR_EXACT": "LINEAR_EXACT", "SIGMOID": "SIGMOID"}


def _frame_bytes(services: Services, cached: Any, frame: int, metadata: Mapping[str, Any]) -> tuple[bytes, str]:
    """Frame ``frame``'s bytes and the transfer syntax they are in: a big-endian or deflated file's frame is
    converted to little endian, a 1-bit frame starting inside a byte re-packed (``gateway.dicom.converted``), and
    decoded so then."""
    count = cached.number_of_frames
    if frames_converted(cached.transfer_syntax_uid, cached.frames is not None, count):
        if not 1 <= frame <= count:
            raise FrameNotFound(f"frame {frame} does not exist; the instance has {count} frame(s)")
        reader = ConvertedReader(services.storage, services.settings.bulkdata_threshold)
        pixel_range = cached.bulkdata.get("7FE00010")  # a little-endian file's (others have no ranges)
        [data] = reader.frames(cached.storage_key, cached.size, metadata, count, [frame], pixel_range=pixel_range)
        return data, ExplicitVRLittleEndian
    if cached.frames is None:
        raise NotAcceptable("this instance's frames cannot be rendered (not range-servable)")
    data = b"".join(
        services.storage.read_range(cached.storage_key, start, length)
        for start, length in cached.frames.ranges(frame)
    )
    # each item of Encapsulated Uncompressed Explicit VR Little Endian holds one frame's native pixels (PS3.5
    # A.4.11), which pydicom has no decoder for under that name: a 406 for an image any viewer shows
    syntax = cached.transfer_syntax_uid
    return data, ExplicitVRLittleEndian if syntax == ENCAPSULATED_UNCOMPRESSED_LE else syntax


def _first_item(element: Any, index: int = 0) -> Mapping[str, Any]:
    items = element.get("Value") if isinstance(element, Mapping) else None
    item = items[index] if isinstance(items, list) and 0 <= index < len(items) else None
    return item if isinstance(item, Mapping) else {}


def _frame_attributes(metadata: Mapping[str, Any], frame: int) -> dict[str, Any]:
    """The rendering attributes an enhanced multi-frame image gives frame ``frame`` in its functional groups."""
    found: dict[str, Any] = {}
    for group in (_first_item(metadata.get("52009229")), _first_item(metadata.get("52009230"), frame - 1)):
        for macro in _FRAME_MACROS:
            found.update((tag, value) for tag, value in _first_item(group.get(macro)).items() if tag in _RENDER_TAGS)
    return found


def _bulk_bytes(services: Services, cached: Any, uri: str) -> bytes | None:
    """A value the stored metadata names by its (relative) BulkDataURI, read from storage by its range."""
    found = cached.bulkdata.get(uri.removeprefix("bulkdata/"))
    if found is None:
        return None
    offset, length = found
    return services.storage.read_range(cached.storage_key, offset, length)


def _pixel_dataset(services: Services, cached: Any, metadata: Mapping[str, Any], frame: int) -> Dataset:
    """Frame ``frame``'s rendering attributes as a Dataset; a LUT stored as bulkdata is read from storage by its
    range."""

    def bulk(tag: str, vr: str, uri: str) -> bytes:
        if is_converted(cached.transfer_syntax_uid):
            # a big-endian or deflated file's value has no stored byte range: read little endian, as it is served
            reader = ConvertedReader(services.storage, services.settings.bulkdata_threshold)
            return reader.bulk(cached.storage_key, cached.size, metadata, uri.removeprefix("bulkdata/"))
        found = _bulk_bytes(services, cached, uri)
        if found is None:
            raise NotAcceptable("this instance's lookup tables cannot be read for rendering")
        return found

    subset = {tag: metadata[tag] for tag in _RENDER_TAGS if tag in metadata} | _frame_attributes(metadata, frame)
    try:
        ds = Dataset.from_json(subset, bulk_data_uri_handler=bulk)
    except (ValueError, TypeError, KeyError) as error:  # uploaded values pydicom cannot take are no server fault
        raise NotAcceptable(f"this instance's pixel description cannot be rendered ({type(error).__name__})") from None
    # pydicom reads OW lookup tables in the byte order named here (DICOM JSON carries none: without it every LUT of
    # an implicit VR file was a 406). Every binary value above is little endian: a big-endian file's InlineBinary
    # is swapped at ingest (gateway.dicom.metadata), its bulk values by the reader
    ds.set_original_encoding(False, True)
    return ds


def _decode(data: bytes, ds: Dataset, syntax: str, keyword: str) -> tuple[np.ndarray, str]:
    """One frame's pixels, decoded by pydicom's decoders (native, RLE, JPEG and JPEG 2000 through Pillow, the rest
    through imagecodecs; what no installed plugin decodes is a 406), and the photometric interpretation they are in
    (YBR comes back as RGB)."""
    uid = UID(syntax)
    try:
        decoder = codecs.decoder(uid)
    except NotImplementedError:
        raise NotAcceptable(f"frames in {uid.name or syntax} cannot be rendered here") from None
    if not decoder.is_available:
        raise NotAcceptable(f"no decoder for {uid.name} is installed here: its frames cannot be rendered")
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 0)
    options: dict[str, Any] = {
        "rows": int(ds.get("Rows") or 0),
        "columns": int(ds.get("Columns") or 0),
        "samples_per_pixel": samples,
        "bits_allocated": bits,
        "bits_stored": int(ds.get("BitsStored") or bits),
        "pixel_representation": int(ds.get("PixelRepresentation") or 0),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation") or "MONOCHROME2"),
        "number_of_frames": 1,
        "pixel_keyword": keyword,
        "transfer_syntax_uid": uid,
    }
    if samples > 1:
        options["planar_configuration"] = int(ds.get("PlanarConfiguration") or 0)
    try:
        pixels, meta = decoder.as_array(encapsulate([data]) if uid.is_encapsulated else data, **options)
    except Exception:  # noqa: BLE001 - any decoder failure on uploaded bytes is "cannot render", never a 500
        raise NotAcceptable("this frame cannot be decoded for rendering") from None
    return pixels, str(meta.get("photometric_interpretation") or options["photometric_interpretation"])


def _to_eight_bits(values: np.ndarray, bits: int) -> np.ndarray:
    if bits <= 8:
        return values.astype(np.uint8)
    return _in_bands(
        values, lambda band: np.clip(np.rint(band.astype(np.float64) * (255.0 / (2**bits - 1))), 0, 255)
    )


def _in_bands(values: np.ndarray, convert: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``convert`` (element by element, to display values 0..255) of ``values``, a band of rows at a time, as
    uint8. Its float64 temporaries are a band's, not the frame's: converted whole, a 8192 x 8192 16-bit frame held
    2.4 GB of a worker (3.9 GB in RGB), more than the default ECS task has for all of them."""
    out = np.empty(values.shape, dtype=np.uint8)
    rows = max(1, _BAND_SAMPLES // max(1, values[0].size)) if len(values) else 1
    for top in range(0, len(values), rows):
        out[top : top + rows] = convert(values[top : top + rows])
    return out


def _windowed(real: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 onto 0..255: LINEAR (the default), LINEAR_EXACT and SIGMOID."""
    if function == "SIGMOID":
        scaled = 255.0 / (1.0 + np.exp(-4.0 * (real - center) / width))
    elif function == "LINEAR_EXACT":
        scaled = ((real - center) / width + 0.5) * 255.0
    elif width <= 1.0:
        scaled = np.where(real > center - 0.5, 255.0, 0.0)
    else:
        scaled = ((real - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _monochrome(pixels: np.ndarray, ds: Dataset, params: Mapping[str, str]) -> np.ndarray:
    """Modality LUT or rescale, then the request's window, the file's window, its VOI LUT, or the frame's range
    (each a band of rows at a time: ``_in_bands``)."""

    def real(band: np.ndarray) -> np.ndarray:
        try:
            values = np.asarray(apply_modality_lut(band, ds), dtype=np.float64)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            raise NotAcceptable("this instance's modality transform cannot be rendered") from None
        # Float Pixel Data may hold NaN (a parametric map's "no value") and infinities: NaN is shown as the
        # lowest value, and the frame's range is that of its finite values (one NaN made the whole frame black)
        return np.where(np.isnan(values), -np.inf, values)

    window = params.get("window")
    if window:
        center, width, function = parse_window(window)
        return _in_bands(pixels, lambda band: _windowed(real(band), center, width, function))
    file_center, file_width = _number_of(ds, "WindowCenter"), _number_of(ds, "WindowWidth")
    # a DS no number holds (NaN, 1e400: the metadata keeps its text) is no window: the frame's range is used instead
    if file_center is not None and file_width is not None and math.isfinite(file_center) and 0 < file_width < math.inf:
        function = _FUNCTIONS.get(str(ds.get("VOILUTFunction") or "LINEAR").upper(), "LINEAR")
        return _in_bands(pixels, lambda band: _windowed(real(band), file_center, file_width, function))
    if "VOILUTSequence" in ds:
        try:
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            return _in_bands(
                pixels, lambda band: _to_eight_bits(np.asarray(apply_voi_lut(real(band), ds, prefer_lut=True)), bits)
            )
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            raise NotAcceptable("this instance's VOI LUT cannot be rendered") from None
    low, high = math.inf, -math.inf
    for band in np.array_split(pixels, max(1, pixels.size // _BAND_SAMPLES)):
        values = real(band)
        values = values[np.isfinite(values)]
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    if low > high:  # nothing finite: nothing to show
        return np.zeros(pixels.shape, dtype=np.uint8)
    if high <= low:  # one value: black (and +inf beside it white)
        return _in_bands(pixels, lambda band: np.where(real(band) > low, 255, 0))
    return _in_bands(pixels, lambda band: _windowed(real(band), (low + high) / 2, high - low, "LINEAR_EXACT"))


def _number_of(ds: Dataset, keyword: str) -> float | None:
    """The first value of a multi-valued element (the window to use when several are offered) as a number, or None:
    also for one written with another VR than DS (a PN after a byte flip: ``float()`` of it was a 500)."""
    element = ds.get(keyword)
    if element is None or element == "":
        return None
    try:
        return float(element[0] if isinstance(element, MultiValue) else element)
    except (TypeError, ValueError):
        return None


def _unpad_palette(ds: Dataset) -> None:
    """Drop the padding byte of 8-bit palette entries of an odd count (PS3.3 C.7.6.3.1.6: one byte an entry; PS3.5
    7.1: a value is of even length), as highdicom writes a LABELMAP segmentation's palette of 3 colours. pydicom's
    ``apply_color_lut`` takes the entry size from the data's length and fails on 4 bytes for 3 entries."""
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    if not isinstance(descriptor, MultiValue) or len(descriptor) != 3 or descriptor[2] != 8:
        return
    entries = int(descriptor[0]) or 65536
    for colour in ("Red", "Green", "Blue", "Alpha"):
        keyword = f"{colour}PaletteColorLookupTableData"
        data = ds.get(keyword)
        if entries % 2 and isinstance(data, bytes) and len(data) == entries + 1:
            ds[keyword].value = data[:entries]


def _to_image(services: Services, row: Any, frame: int, params: Mapping[str, str]) -> Image.Image:
    from gateway.dicomweb.wado import to_cached

    return _image_of(services, to_cached(row), json.loads(row.metadata), frame, params)


def _image_of(
    services: Services, cached: Any, metadata: Mapping[str, Any], frame: int, params: Mapping[str, str]
) -> Image.Image:
    """Frame ``frame`` of the instance ``cached`` (its parsed ``metadata``) as a display image."""
    keyword = next((name for tag, name in _PIXEL_KEYWORDS.items() if tag in metadata), None)
    if keyword is None:  # an Encapsulated PDF, a structured report: no image to render
        raise NotAcceptable("this instance has no pixel data: it is no image to render")
    ds = _pixel_dataset(services, cached, metadata, frame)
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows * columns > MAX_DECODED_PIXELS:
        raise NotAcceptable(
            f"this frame ({columns} x {rows}) is larger than the {MAX_DECODED_PIXELS} pixels rendered here: "
            "retrieve its frames instead"
        )
    data, syntax = _frame_bytes(services, cached, frame, metadata)
    pixels, photometric = _decode(data, ds, syntax, keyword)
    del data  # a big frame's stored bytes, no longer needed beside its pixels
    if photometric == "PALETTE COLOR":
        _unpad_palette(ds)
        try:
            colours = np.asarray(apply_color_lut(pixels, ds))
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            raise NotAcceptable("this instance's palette cannot be rendered") from None
        return Image.fromarray(_to_eight_bits(colours, 16 if bits > 8 else 8), "RGB")
    if pixels.ndim == 3:
        if photometric.startswith("YBR"):
            pixels = convert_color_space(pixels, photometric, "RGB")
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        return Image.fromarray(np.ascontiguousarray(_to_eight_bits(pixels, bits)), "RGB")
    scaled = _monochrome(pixels, ds, params)
    if photometric == "MONOCHROME1":
        scaled = 255 - scaled
    return Image.fromarray(np.ascontiguousarray(scaled), "L")


def parse_window(text: str) -> tuple[float, float, str]:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.3): finite numbers (``nan`` or ``1e999`` would render
    garbage), a width above 0, and a function of PS3.3 C.11.2.1.3 (``linear``, the default, ``linear-exact`` or
    ``sigmoid``)."""
    parts = text.split(",")
    try:
        center, width = (parse_decimal(v) for v in parts[:2])
    except ValueError:
        raise BadRequest("window must be center,width[,function]") from None
    if not all(math.isfinite(v) and abs(v) <= _MAX_WINDOW for v in (center, width)):
        raise BadRequest(f"window: center and width must be numbers within ±{_MAX_WINDOW:g}")
    if width <= 0:
        raise BadRequest("window: the width must be above 0")
    function = parts[2].strip().upper().replace("-", "_") if len(parts) > 2 else "LINEAR"
    if function not in _FUNCTIONS or len(parts) > 3:
        raise BadRequest("window: the function must be linear, linear-exact or sigmoid")
    return center, width, function


# PS3.18 8.3.5.1's rendering parameters, one value each (accept and charset are read as on every resource)
_RENDERING_PARAMETERS = ("annotation", "iccprofile", "quality", "viewport", "window")


def rendering_query(args: MultiDict[str, str]) -> dict[str, str]:
    """The query of a WADO-RS rendered or thumbnail request (a werkzeug MultiDict), checked as WADO-URI's is: a
    parameter given twice (``window=...&window=...``) or empty (``window=``, ``viewport=``) is a 400, it rendered
    with the first or with none in silence. ``annotation`` (PS3.18 8.3.5.1.1: patient or technique text burned in)
    and an ``iccprofile`` other than ``no`` (8.3.5.1.5: the profile shall be present) are a 400 too: the image
    carries neither, and one that silently differs from the one asked for is worse on a clinical display than a
    refusal."""
    repeated = sorted(name for name in _RENDERING_PARAMETERS if len(args.getlist(name)) > 1)
    if repeated:
        raise BadRequest(f"rendered takes one {repeated[0]}")
    if "annotation" in args:
        raise BadRequest("annotation is not supported: nothing is burned into rendered images")
    if args.get("iccprofile", "no").strip().lower() != "no":
        raise BadRequest("iccprofile: only no is supported: rendered images carry no ICC profile")
    for name in ("window", "viewport"):
        if args.get(name) == "":
            raise BadRequest(f"{name} is empty")
    return {key: args[key] for key in args}


def _sized(image: Image.Image, params: Mapping[str, str]) -> Image.Image:
    """The part of the frame asked for, scaled down to fit: WADO-URI's ``region=x1,y1,x2,y2`` (fractions of the
    frame, PS3.18 9), then ``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3: the source region in pixels, a
    negative width or height flipping it), aspect ratio kept. A region that leaves the frame is a 400."""
    if params.get("region"):
        x1, y1, x2, y2 = _numbers(params["region"], "region", 4)
        if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
            raise BadRequest("region must be x1,y1,x2,y2 with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
        w, h = image.size
        left, top = math.floor(x1 * w), math.floor(y1 * h)
        image = image.crop((left, top, max(math.ceil(x2 * w), left + 1), max(math.ceil(y2 * h), top + 1)))
    if not params.get("viewport"):
        return image
    sizes = params["viewport"].split(",")
    if len(sizes) not in (2, 6):
        raise BadRequest("viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
    width, height = (parse_int(v, "viewport", low=1) for v in sizes[:2])
    if len(sizes) == 6:
        sx, sy = (parse_int(v or "0", "viewport", low=0) for v in sizes[2:4])
        sw, sh = (parse_int(v or "0", "viewport", low=-INT32_MAX, signed=True) for v in sizes[4:6])
        sw, sh = sw or image.width - sx, sh or image.height - sy  # omitted or 0: to the frame's edge
        if sw < 0:  # a negative width takes the columns left of sx, flipped (PS3.18 8.3.5.1.3)
            left, right = sx + sw, sx
        else:
            left, right = sx, sx + sw
        top, bottom = (sy + sh, sy) if sh < 0 else (sy, sy + sh)
        if left < 0 or top < 0 or left >= right or top >= bottom or right > image.width or bottom > image.height:
            raise BadRequest(f"viewport: the source region leaves the {image.width}x{image.height} frame")
        image = image.crop((left, top, right, bottom))
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    image.thumbnail((width, height))
    return image


def _numbers(text: str, name: str, count: int) -> list[float]:
    """``count`` finite numbers separated by commas, or a 400 naming ``name``."""
    try:
        values = [parse_decimal(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise BadRequest(f"{name} must be {count} finite numbers separated by commas")
    return values


def _encode(image: Image.Image, media: str, quality: int) -> bytes:
    out = io.BytesIO()
    if media == "image/png":
        image.save(out, "PNG")
    elif media == "image/gif":
        image.save(out, "GIF")  # 8-bit grey is exact in its palette; colour is reduced to 256 colours by Pillow
    else:
        image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _load(services: Services, study: str, series: str, sop: str) -> Any:
    row = services.catalog.get_instance(check_uid(sop))
    if row is None or row.study_uid != check_uid(study) or row.series_uid != check_uid(series):
        raise NotFound("no such instance")
    return row


def _document(services: Services, row: Any) -> tuple[str, bytes] | None:
    """An Encapsulated PDF's MIME type and bytes (PS3.3 A.45.1, C.24.2), else None."""
    from gateway.dicomweb.wado import to_cached

    if '"00420011"' not in row.metadata:  # no Encapsulated Document: the images' case, without a second parse
        return None
    metadata = json.loads(row.metadata)
    element, mime = metadata.get("00420011"), _value(metadata, "00420012")
    # PDF only: served from the gateway's own origin, an uploaded text/html or XML "document" would run its
    # scripts there (a CDA stays reachable as bulkdata, as application/octet-stream)
    if not isinstance(element, Mapping) or mime != "application/pdf":
        return None
    if isinstance(element.get("InlineBinary"), str):
        return mime, base64.b64decode(element["InlineBinary"])
    uri = element.get("BulkDataURI")
    if not isinstance(uri, str):
        return None
    cached = to_cached(row)
    if is_converted(cached.transfer_syntax_uid):
        # a deflated or big-endian file's values have no stored byte range (they were none: the PDF was a 406 "no
        # pixel data"); read as its bulkdata is served
        reader = ConvertedReader(services.storage, services.settings.bulkdata_threshold)
        return mime, reader.bulk(cached.storage_key, cached.size, metadata, uri.removeprefix("bulkdata/"))
    document = _bulk_bytes(services, cached, uri)
    return None if document is None else (mime, document)


def text_rendering(services: Services, sop: str) -> str:
    """The default rendered media type of an instance of the Text resource category (PS3.18 Table 8.7.4-1):
    ``text/html`` for a structured report; for an Encapsulated PDF ``application/pdf``, the one rendering made of
    a document. ``""`` for an instance outside that category."""
    row = services.catalog.get_instance(check_uid(sop))
    if row is None or row.metadata is None:
        return ""
    if '"0040A040"' in row.metadata and report.is_report(json.loads(row.metadata)):
        return "text/html"
    if '"00420011"' in row.metadata and _value(json.loads(row.metadata), "00420012") == "application/pdf":
        return "application/pdf"
    return ""


def render_instance(
    services: Services,
    study: str,
    series: str,
    sop: str,
    frame: int,
    params: Mapping[str, str],
    accept: str,
    whole: bool = False,
) -> Response:
    """Frame ``frame`` as an image; ``whole``: the instance was asked for, not a frame of it (an Encapsulated PDF
    is then the PDF, and a structured report its text)."""
    row = _load(services, study, series, sop)
    document = _document(services, row) if whole else None
    if document is not None:
        # An Encapsulated PDF is rendered as itself (PS3.18 8.7.4: application/pdf is a rendered media type of
        # documents); no image is made of it
        mime, body = document
        try:
            offer = negotiate(params.get("accept", accept), [Offer(mime, "*", False)])
        except NotAcceptable:
            raise NotAcceptable(f"this instance is an encapsulated document: it is rendered as {mime} only") from None
        return _revalidated(body, offer.part_type)
    if whole and '"0040A040"' in row.metadata and report.is_report(json.loads(row.metadata)):
        return _report(services, row, params.get("accept", accept))
    offer = _image_offer(params.get("accept", accept))
    quality = parse_int(params.get("quality", "90"), "quality", low=1, high=100)
    image = _sized(_to_image(services, row, frame, params), params)
    return _revalidated(_encode(image, offer.part_type, quality), offer.part_type)


def _image_offer(accept: str) -> Offer:
    """JPEG (the default, also on a tie: ``negotiate``), PNG or GIF; a 406 naming them otherwise (it said "none of
    the accepted media types can be produced from the stored data (no transcoding)", about a resource that is made
    for the request, and named no type a client could ask for instead)."""
    try:
        return negotiate(accept, _IMAGE_OFFERS, default_on_tie=True)
    except NotAcceptable:
        raise NotAcceptable("an image is rendered as image/jpeg, image/png or image/gif only") from None


def render_frames(
    services: Services, study: str, series: str, sop: str, numbers: list[int], params: Mapping[str, str], accept: str
) -> Response:
    """The frames of a frame list (``frames/1,5,9/rendered``, PS3.18 10.4.1.1.4) as one animated GIF, each frame
    rendered as ``render_instance`` renders one, shown for the image's Frame Time. PS3.18 Table 8.7.4-1 gives a
    multi-frame rendering no other media type; JPEG and PNG hold one frame (a 406 that says so)."""
    row = _load(services, study, series, sop)
    count = int(row.number_of_frames)
    if count < 1:
        raise NotAcceptable("this instance has no pixel data: it is no image to render")
    if len(numbers) > count:  # as the frames resource: never more renderings than the instance has frames
        raise BadRequest(f"the frame list is longer than the instance's {count} frame(s)")
    for n in numbers:
        if n > count:
            raise FrameNotFound(f"frame {n} does not exist; the instance has {count} frame(s)")
    if len(set(numbers)) == 1:  # one frame named more than once is that frame, in any type one frame takes
        return render_instance(services, study, series, sop, numbers[0], params, accept)
    try:
        offer = negotiate(params.get("accept", accept), _FRAMES_OFFERS)
    except NotAcceptable:
        raise NotAcceptable(
            "several frames are rendered as one animated image/gif only (PS3.18 Table 8.7.4-1): accept image/gif, "
            "or ask for each frame's /frames/{n}/rendered"
        ) from None
    from gateway.dicomweb.wado import to_cached

    # parsed once for all the frames: an enhanced image's metadata (per-frame functional groups) can be megabytes
    cached, metadata = to_cached(row), json.loads(row.metadata)
    samples = int(_value(metadata, "00280010", 0) or 0) * int(_value(metadata, "00280011", 0) or 0)
    samples *= int(_value(metadata, "00280002", 1) or 1) * len(numbers)
    if samples > MAX_RENDERED_SAMPLES:
        raise BadRequest(
            f"the frames asked for hold more than {MAX_RENDERED_SAMPLES >> 20} MB of pixels: render fewer at once"
        )
    images = [_sized(_image_of(services, cached, metadata, n, params), params) for n in numbers]
    try:
        frame_ms = float(_value(metadata, "00181063", _DEFAULT_FRAME_MS))
    except (TypeError, ValueError):
        frame_ms = _DEFAULT_FRAME_MS
    duration = round(frame_ms) if math.isfinite(frame_ms) and 10 <= frame_ms <= 60_000 else _DEFAULT_FRAME_MS
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return _revalidated(out.getvalue(), offer.part_type)


def _report(services: Services, row: Any, accept: str) -> Response:
    """A structured report as HTML (the default), plain text or XML, in UTF-8 whatever the file's character set.
    The XML is the report's data set as a PS3.19 Native DICOM Model document, content tree and all, made from its
    metadata as instance metadata's XML is (bulk data by BulkData URI): no other XML schema for reports is
    standard, and the stored object need not be read."""
    try:
        offer = negotiate(accept, _TEXT_OFFERS)
    except NotAcceptable:
        raise NotAcceptable(
            "this instance is a structured report: it is rendered as text/html, text/plain or text/xml"
        ) from None
    if offer.part_type == "text/xml":
        response = _revalidated(xml.to_xml(json.loads(metadata_text(row)) or {}), "text/xml")
        response.headers["Content-Security-Policy"] = REPORT_CSP  # a browser opening it runs nothing either
        return response
    size = int(row.size)
    if size > report.MAX_BYTES:
        raise NotAcceptable(f"this report is larger than {report.MAX_BYTES} bytes: it is not rendered")
    document = report.read(services.storage.read_range(row.storage_key, 0, size))
    if offer.part_type == "text/plain":
        return _revalidated(report.as_text(document).encode(), "text/plain")
    response = _revalidated(report.as_html(document).encode(), "text/html")
    response.headers["Content-Security-Policy"] = REPORT_CSP
    return response


def _revalidated(body: bytes, media_type: str) -> Response:
    """A rendering, revalidated like every read (a deleted or replaced instance must not be shown again from a
    browser cache); its ETag spares sending it again while it has not changed."""
    response = Response(body, mimetype=media_type, headers={"Cache-Control": "private, no-cache"})
    response.set_etag(hashlib.sha256(body).hexdigest()[:32])
    return make_conditional(response)


def _has_pixels(row: Any) -> bool:
    """Whether the instance holds an image (a top-level pixel data element; an SR's icon image does not count)."""
    if '"7FE000' not in row.metadata:  # no pixel data element at any level: no parse
        return False
    return any(tag in json.loads(row.metadata) for tag in _PIXEL_KEYWORDS)


@functools.lru_cache(maxsize=len(_IMAGE_OFFERS))
def _document_icon(media: str) -> bytes:
    """A page of text, drawn once per media type: the thumbnail of an instance that is no image (PS3.18
    10.4.3.3.4 leaves the representation to the origin server; Supplement 203 names "a generic graphical
    representation of a page of text" for a structured report). It shows nothing of the instance, so no PHI."""
    image = Image.new("L", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), 224)
    draw = ImageDraw.Draw(image)
    draw.polygon([(28, 12), (84, 12), (100, 28), (100, 116), (28, 116)], fill=255, outline=96)
    draw.line([(84, 12), (84, 28), (100, 28)], fill=96)
    for top in range(40, 108, 10):
        draw.line([(38, top), (90 if top % 20 else 74, top)], fill=150, width=3)
    return _encode(image, media, 85)


def thumbnail(
    services: Services,
    study: str,
    series: str,
    sop: str,
    params: Mapping[str, str],
    accept: str,
    if_none_match: str = "",
    *,
    ranged: bool = False,
) -> Response:
    """Render once, store next to the instance (inside the prefixes deployments grant the gateway), and let NGINX
    serve the stored file from then on. A thumbnail asked for as PNG or at another ``viewport`` is rendered for
    the request (PS3.18 8.3.5.1: Accept and viewport apply to thumbnails too), and so is one asked for as GIF; an
    Accept naming none of them is a 406. An instance that is no image (a report, a PDF, a waveform) has the
    drawing of a page as its thumbnail (it was a 406). The stored thumbnail's size goes to NGINX (``X-Dgw-Size``)
    for the ``Content-Range: bytes */N`` of a 416, which S3 does not send: known once rendered, else asked of
    storage for a request with a ``Range`` only (``ranged``), the one that can be a 416."""
    offer = _image_offer(params.get("accept", accept))
    row = _load(services, study, series, sop)
    if not _has_pixels(row):
        if params.get("viewport"):
            icon = Image.open(io.BytesIO(_document_icon("image/png")))
            return _revalidated(_encode(_sized(icon, params), offer.part_type, 85), offer.part_type)
        return _revalidated(_document_icon(offer.part_type), offer.part_type)
    # a window or a quality is rendered for the request as a viewport is: the stored thumbnail ignored them unless
    # a viewport came too (and took `quality=0` or `window=nan,1` without the 400 they are with one)
    if offer.part_type != "image/jpeg" or any(name in params for name in ("viewport", "window", "quality")):
        sized = {"viewport": f"{THUMBNAIL_SIZE},{THUMBNAIL_SIZE}", **params}
        return render_instance(services, study, series, sop, 1, sized, accept)
    key = row.thumbnail_key
    size: int | None = None
    if not key:
        image = _to_image(services, row, 1, {})
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        # named by the original's digest, as a derivative is: a render of an instance deleted (or replaced) while
        # it ran never overwrites the thumbnail of the one stored again under the same UIDs, nor is recorded for it
        key = f"{row.storage_key.removesuffix('.dcm')}.thumb-{row.sha256[:16]}.jpg"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "thumb.jpg"
            path.write_bytes(_encode(image, "image/jpeg", 85))
            size = services.storage.put_file(key, path).size
        if not services.catalog.set_thumbnail(row.sop_uid, key, row.sha256):
            services.storage.delete(key)
            raise NotFound("no such instance")
    response = Response(status=200, mimetype="image/jpeg")
    response.headers["X-Accel-Redirect"] = f"{nginx.OBJECT}{services.storage.origin_path(key)}"
    # what NGINX cannot learn from every storage, asked of it only for a request that needs it: the stored ETag an
    # If-None-Match matches weakly (wado.storage_tag) and the size a Range's 416 names
    stored = services.storage.head(key) if if_none_match or (size is None and ranged) else None
    if if_none_match and stored is not None:
        matched = storage_tag(if_none_match, stored.etag)
        if matched:
            response.headers[nginx.IF_NONE_MATCH] = matched
    if size is None and stored is not None:
        size = stored.size
    if size is not None:
        response.headers[nginx.SIZE] = str(size)
    return response
