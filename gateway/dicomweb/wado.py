"""Read plans: which stored bytes answer a WADO request, written as a small SSI body that NGINX executes.

`docs/design.md` §1: no pixel data, P10 file or bulkdata byte passes through Python on the read path. For a
frame, a bulkdata element or a multipart retrieve, Python answers with the final status and headers and a body of
SSI ``include`` commands, each naming a byte range of a stored object (``/_seg/{first}-{last}{origin path}``);
NGINX fetches those ranges from storage and splices them, so a request without Range gets a 200 with exactly the
bytes. A single whole object (``application/dicom``) is handed over with ``X-Accel-Redirect`` so storage answers
Range itself (200/206/416) with its strong ETag. Plans do not depend on the token, so NGINX caches them.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs

from gateway import nginx_contract as nginx
from gateway.dicom.converted import ConvertedReader, frames_converted, is_converted
from gateway.dicom.frames import FrameIndex
from gateway.dicom.index import (
    DEFLATED_LE,
    ENCAPSULATED_UNCOMPRESSED_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    NATIVE_SYNTAXES,
    is_video,
)
from gateway.dicomweb.accept import NO_MATCH, Offer, negotiate
from gateway.dicomweb.paths import Target, WadoObject, check_wado_request_type, parse_target, split_token, wado_object
from gateway.errors import (
    BadRequest,
    FrameNotFound,
    FramesNotServable,
    NotAcceptable,
    NotFound,
    RangeNotSatisfiable,
)
from gateway.numbers import parse_int
from gateway.uids import InstanceId, is_uid

NATIVE_TS = "1.2.840.10008.1.2.1"
IMPLICIT_TS = "1.2.840.10008.1.2"
# The lossless derivative's transfer syntax (gateway.derive): HTJ2K Lossless with RPCL progression, PS3.5 A.4.13.
DERIVATIVE_TS = "1.2.840.10008.1.2.4.202"
DERIVATIVE_MEDIA_TYPE = "image/jphc"
# Plans of single instances never change (an overwrite is opt-in); study/series lists grow with uploads.
STABLE_PLAN_SECONDS = 600


@dataclass
class PlanResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


@dataclass(frozen=True)
class Derivative:
    """A published derivative: another stored object with its own frame index (one codestream per frame)."""

    transfer_syntax_uid: str
    storage_key: str
    frames: FrameIndex


@dataclass(frozen=True)
class _FrameChoice:
    """The answer to "which object and media type serve frames of this instance for this Accept"."""

    instance: CachedInstance
    offer: Offer
    key: str
    index: FrameIndex
    expires: int


@dataclass
class CachedInstance:
    """The slice of a catalog row the read path needs, decoded once and kept in a bounded LRU."""

    ids: InstanceId
    transfer_syntax_uid: str
    storage_key: str
    size: int
    etag: str
    frame_media_type: str
    frames: FrameIndex | None
    bulkdata: dict[str, tuple[int, int]] = field(default_factory=dict)
    derivative: Derivative | None = None
    number_of_frames: int = 0
    stream: FrameIndex | None = None  # a video's fragments, its one stream (served as its Pixel Data bulkdata)


def bulk_syntax(stored: str) -> str:
    """The transfer syntax that labels (and that a client names for) an instance's frames and bulkdata. PS3.18
    8.7.3.3.1 (Table 8.7.3-4): uncompressed bulkdata is little-endian bytes named Explicit VR Little Endian; an
    implicit VR file holds exactly those bytes (VR encoding only changes element headers), so they are served as
    such, never under the file's own syntax, which made ``transfer-syntax=1.2.840.10008.1.2.1`` a 406 and which
    PS3.18 8.7.3 says "shall not be used with Web Services". Big-endian and deflated files' values are converted
    to those bytes (``gateway.dicom.converted``). Encapsulated Uncompressed's frames are those bytes too, one a
    fragment (PS3.5 A.4.11; their pad cut at ingest): named by their own syntax, a client asking Explicit VR
    Little Endian had a 406 (Orthanc names them so), and older Cornerstone image loaders know no decoder by that
    name. Retrieve (P10) still names the file's syntax (we never transcode)."""
    if stored in (IMPLICIT_TS, ENCAPSULATED_UNCOMPRESSED_LE) or is_converted(stored):
        return NATIVE_TS
    return stored


PIXEL_DATA_PATH = "7FE00010"  # the bulkdata path of the top-level Pixel Data
DOCUMENT_PATH = "00420011"  # the bulkdata path of an Encapsulated Document (PS3.3 C.24.2)
# Encapsulated Documents served in their own media type: PDF only, the type `/rendered` already serves from this
# origin (an uploaded text/html or XML "document" would run its scripts here: those stay application/octet-stream)
DOCUMENT_MEDIA_TYPES = frozenset({"application/pdf"})


def _check_wado_transfer_syntax(asked: str, stored: str) -> None:
    """WADO-URI's ``transferSyntax`` (PS3.18 9): objects are served as stored (we never transcode), so it must
    name the stored syntax (or ``*``); another syntax is a 406 that names the stored one, a value that is no UID a
    400. It was ignored before: a client asking for Explicit VR Little Endian got JPEG bytes with a 200."""
    if asked == "*" or asked == stored:
        return
    if not is_uid(asked):
        raise BadRequest("transferSyntax must be a transfer syntax UID")
    raise NotAcceptable(
        f"the object is stored as {stored} and served as stored (no transcoding): ask for that transferSyntax or none"
    )


def _why_no_frames(instance: CachedInstance) -> str:
    """Why ingest found no frame ranges in ``instance`` (``docs/index.md``, "Instances whose frames are not served
    as ranges"), as far as its transfer syntax tells."""
    ts = instance.transfer_syntax_uid
    if ts == DEFLATED_LE:
        return "its data set is deflated"
    if ts == EXPLICIT_VR_BE:
        return "it is big-endian"
    if ts not in NATIVE_SYNTAXES:
        if is_video(ts):
            return "it is a video stream, whose frames cannot be separated: its Pixel Data bulkdata is the stream"
        # "no offset table" alone misled when there is one whose entries do not count the frames
        return (
            "its compressed frames cannot be told apart: no offset table with an entry for each frame, and fragments "
            "that do not each start one"
        )
    return "its 1-bit frames do not start on a byte boundary"


def _decode_bulkdata(value: Any) -> dict[str, tuple[int, int]]:
    if not value:
        return {}
    items = json.loads(value) if isinstance(value, str | bytes) else value
    result: dict[str, tuple[int, int]] = {}
    for item in items:
        if isinstance(item, dict):
            result[item["path"]] = (int(item["offset"]), int(item["length"]))
        elif isinstance(item, list | tuple):
            result[str(item[0])] = (int(item[2]), int(item[3]))
        else:
            result[item.path] = (item.offset, item.length)
    return result


def to_cached(row: Any) -> CachedInstance:
    index = FrameIndex.unpack(row.frame_index) if row.frame_index else None
    video = is_video(row.transfer_syntax_uid)  # a video's index is its stream, never frames
    return CachedInstance(
        ids=InstanceId(row.study_uid, row.series_uid, row.sop_uid),
        transfer_syntax_uid=row.transfer_syntax_uid,
        storage_key=row.storage_key,
        size=int(row.size),
        etag=row.etag or "",
        frame_media_type=row.frame_media_type or "application/octet-stream",
        frames=None if video else index,
        bulkdata=_decode_bulkdata(row.bulkdata),
        derivative=_derivative(row),
        number_of_frames=int(getattr(row, "number_of_frames", 0) or 0),
        stream=index if video else None,
    )


def _derivative(row: Any) -> Derivative | None:
    syntax, key, index = (getattr(row, n, None) for n in ("derivative_syntax", "derivative_key", "derivative_index"))
    if not (syntax and key and index):
        return None
    return Derivative(syntax, key, FrameIndex.unpack(index))


def _block_unserved(expires: int) -> PlanResponse:
    """A block NGINX cannot serve its frames from (``Planner.block``): a 404 it keeps for ``expires`` seconds like a
    block, asking each frame's own plan meanwhile. Never a client's answer: NGINX intercepts it."""
    return PlanResponse(404, [("X-Accel-Expires", str(expires))], b"")


def _include_text(where: str, origin: str) -> str:
    """The SSI include of ``where`` (a segment or whole-object location) of the object at ``origin``."""
    return f'<!--# include virtual="{where}{origin}" wait="yes" -->'


def _frame_headers(offer: Offer, expires: int) -> list[tuple[str, str]]:
    """The headers every single-part frame plan starts with."""
    return [("Content-Type", offer.part_content_type), ("X-Accel-Expires", str(expires))]


def slice_ranges(ranges: list[tuple[int, int]], first: int, last: int) -> list[tuple[int, int]]:
    """The stored (offset, length) ranges holding bytes ``first..last`` (inclusive) of their concatenation."""
    result: list[tuple[int, int]] = []
    position = 0
    for offset, length in ranges:
        start, end = max(first, position), min(last, position + length - 1)
        if start <= end:
            result.append((offset + start - position, end - start + 1))
        position += length
    return result


def parse_range(header: str, length: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as (first, last) inclusive; None when absent or not a single byte range (ignored, as
    RFC 9110 allows). Raises RangeNotSatisfiable when it cannot be met."""
    # RFC 9110 14.1: no whitespace inside a range-spec (its list rule allows OWS around a comma only), as NGINX reads
    # a whole object's Range (dicomgw.conf, $dgw_range): "bytes= 0-1" was a 206 for a frame, a 200 for its instance
    match = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", header.strip(" \t"), re.IGNORECASE)
    if match is None or match.group(1) == match.group(2) == "":
        return None  # not a single well-formed byte range: ignored, as RFC 9110 allows
    first_s, last_s = match.groups()
    try:
        if first_s == "":
            suffix = int(last_s)
            if suffix <= 0:
                raise RangeNotSatisfiable("empty suffix range", length=length)
            return max(0, length - suffix), length - 1
        first = int(first_s)
        last = int(last_s) if last_s else None
    except ValueError:
        return None
    if last is not None and last < first:
        return None  # RFC 9110 14.1.1: invalid, so ignored, whatever the length (a 416 when first was past the end)
    if first >= length:
        raise RangeNotSatisfiable("range starts beyond the end", length=length)
    return first, length - 1 if last is None else min(last, length - 1)


class Planner:
    def __init__(
        self,
        load_instance: Callable[[str], Any],
        list_instances: Callable[[str, str | None], Sequence[Any]],
        origin_path: Callable[[str], str],
        cache_size: int = 20000,
        whole_object_prefix: str = nginx.WHOLE_SEGMENT,
        range_prefix: str = nginx.SEGMENT,
        study_version: Callable[[str], Any] | None = None,
        generation: Callable[[str], int] | None = None,
        plan_seconds: int = STABLE_PLAN_SECONDS,
        derivatives_for_any: bool = False,
        converted: ConvertedReader | None = None,
        load_metadata: Callable[[str], Mapping[str, Any]] | None = None,
        present: Callable[[str], bool] | None = None,
    ) -> None:
        """``whole_object_prefix`` is where SSI fetches a whole object: ``/_seg/all`` proxies to storage,
        ``/_file`` (local-folder storage) lets NGINX read the file itself. ``range_prefix`` is where it fetches a byte
        range: ``/_seg`` proxies to storage; ``/_fseg`` (local-folder storage) has njs read it from disk, for ranges
        up to ``nginx.FILE_SEGMENT_MAX`` (larger ones still go through ``/_seg``). ``generation(study)`` changes when
        something of the study is deleted (``Authorizer.generation``): what is cached under an older one is
        reloaded. ``derivatives_for_any``: a frame's derivative also answers ``transfer-syntax=*``. ``converted``
        reads frames and bulk values of big-endian and deflated instances, whose metadata (Image Pixel module)
        ``load_metadata(sop)`` gives; without them those answer 406 as before. ``present(key)``: whether storage
        holds the object, checked before a plan of its frames or bulkdata (none: not checked)."""
        self._present = present
        self._converted = converted
        self._load_metadata = load_metadata
        self._derivatives_for_any = derivatives_for_any
        self._load_instance = load_instance
        self._list_instances = list_instances
        self._origin_path = origin_path
        self._whole_prefix = whole_object_prefix
        self._range_prefix = range_prefix
        self._study_version = study_version
        self._generation = generation or (lambda study: 0)
        self._plan_seconds = plan_seconds  # how long NGINX may cache a stable plan (X-Accel-Expires)
        self._lists: OrderedDict[tuple[str, str | None], tuple[Any, list[CachedInstance]]] = OrderedDict()
        self._cache: OrderedDict[str, tuple[int, CachedInstance]] = OrderedDict()
        self._cache_size = cache_size

    # -- catalog access ----------------------------------------------------------------------------------------
    def instance(self, study: str, series: str, sop: str) -> CachedInstance:
        generation = self._generation(study)
        hit = self._cache.get(sop)
        # A hit of another study or series is looked up again: the instance may have been deleted there and stored
        # here since (only the generation of the study asked for is checked), and a miss is a lookup anyway, so
        # one stored elsewhere takes as long to refuse as one stored nowhere.
        if hit is None or hit[0] != generation or (hit[1].ids.study, hit[1].ids.series) != (study, series):
            row = self._load_instance(sop)
            if row is None:
                self._cache.pop(sop, None)
                raise NotFound("no such instance")
            cached = to_cached(row)
            self._cache[sop] = (generation, cached)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            cached = hit[1]
            self._cache.move_to_end(sop)
        if cached.ids.study != study or cached.ids.series != series:
            # the answer of a UID stored nowhere: a token may name its own study and series beside any objectUID,
            # and "in this study and series" told it the UID is stored in another study it cannot read
            raise NotFound("no such instance")
        return cached

    def forget(self, sop: str) -> None:
        self._cache.pop(sop, None)

    def _require_present(self, key: str) -> None:
        """A JSON 404 for a plan of an object storage no longer holds, as its whole-object GET answers: a plan of
        its byte ranges answered 200 and then aborted the transfer (444, no answer at all) at the first include."""
        if self._present is not None and not self._present(key):
            raise NotFound("the object is missing from storage")

    # -- entry point ---------------------------------------------------------------------------------------------
    def plan(
        self,
        method: str,
        raw_uri: str,
        accept: str,
        range_header: str,
        convert: bool = False,
        if_none_match: str = "",
    ) -> PlanResponse:
        """The read plan of ``raw_uri``. Frames and bulkdata of big-endian and deflated instances are no stored
        byte ranges: their plan hands the request to ``nginx.CONVERTED`` (X-Accel-Redirect), whence NGINX asks
        again with ``convert``, and then the answer holds the converted bytes themselves (no SSI there).
        ``if_none_match``: the client's header, for a whole object's redirect (``redirect_object``)."""
        _, rest = split_token(raw_uri)
        path, _, query = rest.partition("?")
        target = parse_target(path, query)
        params = parse_qs(query)
        accept = (params.get("accept") or [accept])[0]  # PS3.18 8.7: the query parameter wins
        if target.study is None:
            raise NotFound("not a retrieve path")
        if target.rest == "":
            return self._retrieve(target, accept, if_none_match)
        if target.instance is None:
            raise NotFound("not a retrieve path")
        instance = self.instance(target.study, target.series or "", target.instance)
        # the redirect names the token-less path (a frame list's %2C as a comma: NGINX decodes the redirect's URI)
        redirect = None if convert else nginx.CONVERTED + re.sub("%2[cC]", ",", rest)
        if target.rest.startswith("frames/"):
            return self._frames(instance, target.rest[len("frames/") :], accept, range_header, redirect)
        if target.rest.startswith("bulkdata/"):
            return self._bulkdata(instance, target.rest[len("bulkdata/") :], accept, range_header, redirect)
        raise NotFound("not a retrieve path")

    def block(self, raw_uri: str, accept: str) -> PlanResponse:
        """The plan of a block of ``nginx.FRAMES_PER_BLOCK`` consecutive frames for one Accept, which NGINX caches
        once and serves each of the block's frames from, with no Python hop and no njs (docs/bench.md B2).
        ``raw_uri`` is ``{instance path}/frames/{block}``: block ``b`` (b >= 1) holds frames ``b * 100`` to
        ``b * 100 + 99``, so NGINX finds a frame's block and its place in it from the digits of its number (the
        captures of the template's /_frame location). The status and headers are those of each frame's own plan
        (``plan``), with one more, ``nginx.FRAME_RANGES``: the segment location NGINX reads frames from, then the byte
        range of the frame at each place, ``{location};{place}:{first}-{last};...;`` (place: two digits), from which
        NGINX picks the frame's (``$dgw_frame_segment``: location and range). The body is the SSI include of that
        segment of the object (between a multipart part's head and tail).

        A block is made only when every one of its frames exists and is read in one range; otherwise the answer is
        ``_block_unserved`` (a 404 NGINX keeps like a block), and NGINX asks each frame's own plan, as it does for
        any error: every decision stays Python's, and a frame past the last gets the JSON 404 it always got, never a
        200 that the block could not fill."""
        path, _, query = raw_uri.partition("?")
        target = parse_target(path, query)
        number = target.rest[len("frames/") :] if target.rest.startswith("frames/") else ""
        if query or target.study is None or target.instance is None or not re.fullmatch("[1-9][0-9]{0,6}", number):
            raise NotFound("not a block path")
        first = int(number) * nginx.FRAMES_PER_BLOCK
        numbers = range(first, first + nginx.FRAMES_PER_BLOCK)
        instance = self.instance(target.study, target.series or "", target.instance)
        if self._converts_frames(instance):  # no byte ranges to list: each frame's plan redirects
            return _block_unserved(self._plan_seconds)
        # the error the block's first frame gets, if any (a lost object's 404 included)
        self._frames(instance, str(first), accept)
        choice = self._frame_choice(instance, accept, single=True)
        ranges = choice.index.single_ranges(first, numbers[-1]) if numbers[-1] <= choice.index.count else None
        # njs reads local-folder ranges up to FILE_SEGMENT_MAX (_segment); a block names one location for all
        if ranges is None or (
            self._range_prefix == nginx.FILE_SEGMENT and max(n for _, n in ranges) > nginx.FILE_SEGMENT_MAX
        ):
            return _block_unserved(choice.expires)
        # where NGINX reads the frames, then each frame's place in the block (two digits) and its byte range
        table = "".join(f";{place:02d}:{start}-{start + length - 1}" for place, (start, length) in enumerate(ranges))
        if choice.offer.multipart:
            part = self._multipart([(choice.offer.part_content_type, [b"\0"])], choice.offer.part_type, choice.expires)
            before, after = part.body.decode().split("\0")
            headers = part.headers
        else:
            before = after = ""
            headers = [*_frame_headers(choice.offer, choice.expires), (nginx.ACCEPT_RANGES, "bytes")]
        body = f"{before}{_include_text('$dgw_frame_segment', self._origin_path(choice.key))}{after}"
        # the body's bytes around the frame's range: with the range, the body length HTTP/1.0 is sent, as a frame's
        # own plan gives it (gateway.fastpath.served_length; SSI drops Content-Length)
        around = str(len(before.encode()) + len(after.encode()))
        tables = [(nginx.FRAME_RANGES, f"{self._range_prefix}{table};"), (nginx.FRAME_AROUND, around)]
        return PlanResponse(200, [*headers, *tables], body.encode())

    # -- pieces ---------------------------------------------------------------------------------------------------
    def _include(
        self, instance: CachedInstance, first: int | None = None, length: int = 0, key: str | None = None
    ) -> bytes:
        origin = self._origin_path(key or instance.storage_key)
        return _include_text(self._whole_prefix if first is None else self._segment(first, length), origin).encode()

    def _segment(self, first: int, length: int) -> str:
        """Where SSI fetches ``length`` bytes from ``first``: njs holds a local-folder range in memory, so only a
        small one is read by it (no hop to the origin server); a larger one streams through the proxy."""
        prefix = self._range_prefix if length <= nginx.FILE_SEGMENT_MAX else nginx.SEGMENT
        return f"{prefix}/{first}-{first + length - 1}"

    @staticmethod
    def _multipart(
        parts: list[tuple[str, list[bytes]]], part_type: str, expires: int, part_headers: str = ""
    ) -> PlanResponse:
        """``part_headers``: header lines (each ending in CRLF) every part carries after its Content-Type."""
        boundary = secrets.token_hex(16)
        body = bytearray()
        for content_type, includes in parts:
            body += f"--{boundary}\r\nContent-Type: {content_type}\r\n{part_headers}\r\n".encode()
            for include in includes:
                body += include
            body += b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        content_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
        return PlanResponse(200, [("Content-Type", content_type), ("X-Accel-Expires", str(expires))], bytes(body))

    def _listed(self, study: str, series: str | None) -> list[CachedInstance]:
        """A study's or series' instances, reused while the study's version (instance count, last change) holds:
        one indexed row read instead of hundreds (uploads and deletes change the version)."""
        current = self._study_version(study) if self._study_version else None
        version = None if current is None else (current, self._generation(study))
        cached = self._lists.get((study, series))
        if version is not None and cached is not None and cached[0] == version:
            return cached[1]
        instances = [to_cached(row) for row in self._list_instances(study, series)]
        if version is not None:
            self._lists[(study, series)] = (version, instances)
            if len(self._lists) > 256:
                self._lists.popitem(last=False)
        return instances

    def _retrieve(self, target: Target, accept: str, if_none_match: str = "") -> PlanResponse:
        if target.instance is not None:
            instances = [self.instance(target.study or "", target.series or "", target.instance)]
        else:
            instances = self._listed(target.study or "", target.series)
        if not instances:
            raise NotFound("no instances")
        # PS3.18 8.7.8.2: each part has its own Selected Transfer Syntax, so a study or series is acceptable when
        # every syntax it holds is (named in the Accept, or `*`); a syntax nobody accepts is a 406 (no transcoding).
        # Only one instance can be a single part.
        syntaxes = sorted({i.transfer_syntax_uid for i in instances})
        single = [Offer("application/dicom", syntaxes[0], False)] if target.instance is not None else []
        try:
            offers = [negotiate(accept, [Offer("application/dicom", syntax, True), *single]) for syntax in syntaxes]
        except NotAcceptable:
            if len(syntaxes) == 1:
                raise
            # the 406 of the one syntax refused named that syntax alone, as if the others were not needed too
            level = "series" if target.series is not None else "study"
            raise NotAcceptable(
                f'{NO_MATCH}: this {level} is answered as multipart/related; type="application/dicom", each part in '
                f"its instance's transfer syntax (PS3.18 8.7.8.2): accept each of {', '.join(syntaxes)}, or "
                "transfer-syntax=*"
            ) from None
        if not offers[0].multipart:
            return self.redirect_object(instances[0], if_none_match)
        parts = [(f"application/dicom; transfer-syntax={i.transfer_syntax_uid}", [self._include(i)]) for i in instances]
        expires = self._plan_seconds if target.instance is not None else 0
        return self._multipart(parts, "application/dicom", expires)

    def redirect_object(self, instance: CachedInstance, if_none_match: str = "") -> PlanResponse:
        """The stored object, served by NGINX from storage as ``application/dicom`` naming its transfer syntax
        unless it is Explicit VR Little Endian, which a missing parameter means (PS3.18 8.7.3.5.2: a JPEG file
        labelled plain ``application/dicom`` claimed to be that). Storage judges the client's preconditions on
        its own validators; ``if_none_match`` (the client's) goes to it as one tag it compares (``storage_tag``)."""
        origin = self._origin_path(instance.storage_key)
        ts = instance.transfer_syntax_uid
        media_type = "application/dicom" if ts == EXPLICIT_VR_LE else f"application/dicom; transfer-syntax={ts}"
        headers = [
            ("X-Accel-Redirect", f"{nginx.OBJECT}{origin}"),
            ("X-Accel-Expires", "0"),
            ("Content-Type", media_type),
            (nginx.SIZE, str(instance.size)),
        ]
        matched = storage_tag(if_none_match, instance.etag)
        if matched:
            headers.append((nginx.IF_NONE_MATCH, matched))
        return PlanResponse(200, headers)

    def _frame_offers(self, instance: CachedInstance, single_allowed: bool) -> list[Offer]:
        ts = bulk_syntax(instance.transfer_syntax_uid)
        media = instance.frame_media_type
        offers = []
        if media != "application/octet-stream":
            offers.append(Offer(media, ts, True))
        offers.append(Offer("application/octet-stream", ts, True))
        if single_allowed:
            if media != "application/octet-stream":
                offers.append(Offer(media, ts, False))
            offers.append(Offer("application/octet-stream", ts, False))
        derivative = instance.derivative
        if derivative is not None:
            # Before the stored syntax's offers: a client naming both syntaxes gets the derivative where it exists.
            dts, star = derivative.transfer_syntax_uid, self._derivatives_for_any
            kinds = [(DERIVATIVE_MEDIA_TYPE, True), ("application/octet-stream", True)]
            if single_allowed:
                kinds += [(DERIVATIVE_MEDIA_TYPE, False), ("application/octet-stream", False)]
            offers[:0] = [Offer(m, dts, multi, explicit_only=True, star_too=star) for m, multi in kinds]
        return offers

    def _wants_derivative(self, accept: str) -> bool:
        return DERIVATIVE_TS in accept or (self._derivatives_for_any and "transfer-syntax=*" in accept.replace(" ", ""))

    def _converts(self, instance: CachedInstance) -> bool:
        """Whether this instance's frames and bulk values are converted (big-endian, deflated), not byte ranges."""
        return self._converted is not None and instance.frames is None and is_converted(instance.transfer_syntax_uid)

    def _converts_frames(self, instance: CachedInstance) -> bool:
        """Whether this instance's frames are converted (``frames_converted``: big-endian, deflated, or 1-bit frames
        that do not start on a byte boundary), not byte ranges."""
        return self._converted is not None and frames_converted(
            instance.transfer_syntax_uid, instance.frames is not None, instance.number_of_frames
        )

    def renders(self, instance: CachedInstance) -> bool:
        """Whether WADO-URI renders this instance by default (an image whose frames can be served)."""
        return self._has_frames(instance)

    def _has_frames(self, instance: CachedInstance) -> bool:
        """Whether frames of this instance can be served: stored byte ranges, or converted ones."""
        return instance.frames is not None or self._converts_frames(instance)

    def _frames(
        self, instance: CachedInstance, spec: str, accept: str, range_header: str = "", redirect: str | None = None
    ) -> PlanResponse:
        items = spec.split(",")
        if len(items) > 1000:
            raise BadRequest("at most 1000 frame numbers per request")
        numbers = [parse_int(n, "frame number", low=1) for n in items]
        converted = self._converts_frames(instance)
        if instance.number_of_frames == 0 and instance.frames is None:
            # a report's, a PDF's, a waveform's: it said "cannot be served as stored byte ranges (it has no pixel
            # data, or 1-bit frames that do not start on a byte boundary)", sending users looking for a broken file
            raise FramesNotServable("this instance has no pixel data, so no frames: retrieve the instance instead")
        if not self._has_frames(instance):
            why = _why_no_frames(instance)
            raise FramesNotServable(
                f"frames of this instance cannot be served as stored byte ranges ({why}); retrieve the instance instead"
            )
        count = instance.number_of_frames if instance.frames is None else instance.frames.count
        if len(numbers) > count:
            # a list may repeat frames, but one request never asks for more frames than the instance holds: a single
            # 8 KB URI could otherwise ask for the same large frame 1,000 times (1,000 storage reads, a GB out)
            raise BadRequest(f"the frame list is longer than the instance's {count} frame(s)")
        for n in numbers:  # FrameNotFound before negotiation, whichever object answers
            if not 1 <= n <= count:
                raise FrameNotFound(f"frame {n} does not exist; the instance has {count} frame(s)")
        if converted:
            return self._converted_frames(instance, numbers, accept, range_header, redirect)
        return self._frames_of(self._frame_choice(instance, accept, len(numbers) == 1), numbers, range_header)

    def _to_converter(self, redirect: str) -> PlanResponse:
        """The plan of converted bytes: NGINX asks again at ``redirect`` (``nginx.CONVERTED``), where Python answers
        with the bytes. Not cached (X-Accel-Expires 0), as no other redirect is."""
        return PlanResponse(200, [("X-Accel-Redirect", redirect), ("X-Accel-Expires", "0")])

    def _metadata(self, instance: CachedInstance) -> Mapping[str, Any]:
        assert self._load_metadata is not None  # _converts(_frames): configured together
        return self._load_metadata(instance.ids.sop)

    def _converted_frames(
        self, instance: CachedInstance, numbers: list[int], accept: str, range_header: str, redirect: str | None
    ) -> PlanResponse:
        """Frames of a big-endian or deflated instance as little-endian bytes (PS3.18 8.7.3), and 1-bit frames that
        start inside a byte from a byte boundary (``gateway.dicom.converted``), negotiated as native
        frames are (``application/octet-stream``, Explicit VR Little Endian); a single part honours one Range. Its
        derivative, where the Accept names it, is stored codestreams as any other instance's."""
        if redirect is None:
            # the converter's own request: its answer is bytes, never SSI includes, so never the derivative (one
            # published since this request's plan chose the original is served from the next request on)
            offer = negotiate(accept, self._frame_offers(replace(instance, derivative=None), len(numbers) == 1))
        else:
            derived = self._derived(*self._negotiate_frames(instance, accept, len(numbers) == 1))
            if derived is not None:
                return self._frames_of(derived, numbers, range_header)
            return self._to_converter(redirect)
        assert self._converted is not None
        frames = self._converted.frames(
            instance.storage_key,
            instance.size,
            self._metadata(instance),
            instance.number_of_frames,
            numbers,
            pixel_range=instance.bulkdata.get(PIXEL_DATA_PATH),  # a little-endian file's (others have no ranges)
        )
        if offer.multipart:
            return self._multipart([(offer.part_content_type, [f]) for f in frames], offer.part_type, 0)
        [frame] = frames
        return self._single_frame(instance, "", [(0, len(frame))], offer, range_header, 0, frame)

    def _frame_choice(self, instance: CachedInstance, accept: str, single: bool) -> _FrameChoice:
        """What answers frames of this instance for this Accept (it depends on no frame number)."""
        instance, offer, expires = self._negotiate_frames(instance, accept, single)
        derived = self._derived(instance, offer, expires)
        if derived is not None:
            return derived
        assert instance.frames is not None  # _frames refused an instance without a frame index
        return _FrameChoice(instance, offer, instance.storage_key, instance.frames, expires)

    @staticmethod
    def _derived(instance: CachedInstance, offer: Offer, expires: int) -> _FrameChoice | None:
        """The derivative's frames, when the offer is its transfer syntax and the instance has one."""
        derivative = instance.derivative
        if not offer.explicit_only or derivative is None:
            return None
        return _FrameChoice(instance, offer, derivative.storage_key, derivative.frames, expires)

    def _negotiate_frames(
        self, instance: CachedInstance, accept: str, single: bool
    ) -> tuple[CachedInstance, Offer, int]:
        """The instance as it now is, the offer that answers its frames for this Accept, and the plan's seconds."""
        expires = self._plan_seconds
        if instance.derivative is None and self._wants_derivative(accept):
            # The derivative may have been published since this process cached the row: look again, and keep the
            # answer (the original) out of NGINX's plan cache so the derivative is served as soon as it exists.
            self.forget(instance.ids.sop)
            instance = self.instance(instance.ids.study, instance.ids.series, instance.ids.sop)
            expires = 0 if instance.derivative is None else expires
        return instance, self._frame_offer(instance, accept, single), expires

    def _frame_offer(self, instance: CachedInstance, accept: str, single: bool) -> Offer:
        """The offer that answers frames for this Accept. Several frames asked for in a single-part type only
        (`image/jpeg`, `application/octet-stream`) is a 406 that says multipart is needed: the generic "cannot be
        produced (no transcoding)" sent a client asking JPEG frames of a JPEG image after the wrong fault."""
        try:
            return negotiate(accept, self._frame_offers(instance, single))
        except NotAcceptable as refused:
            if single:
                raise
            try:
                alone = negotiate(accept, self._frame_offers(instance, True))
            except NotAcceptable:
                raise refused from None  # no part type fits either: the 406 naming the multipart answers there are
            raise NotAcceptable(
                "several frames are sent as multipart/related only, one part per frame: accept "
                f'multipart/related; type="{alone.part_type}"'
            ) from None

    def _frames_of(self, choice: _FrameChoice, numbers: list[int], range_header: str) -> PlanResponse:
        instance, offer, key = choice.instance, choice.offer, choice.key
        ranges = [choice.index.ranges(n) for n in numbers]
        self._require_present(key)
        if not offer.multipart:
            return self._single_frame(instance, key, ranges[0], offer, range_header, choice.expires)
        includes = [[self._include(instance, start, length, key) for start, length in frame] for frame in ranges]
        return self._multipart([(offer.part_content_type, inc) for inc in includes], offer.part_type, choice.expires)

    def _single_frame(
        self,
        instance: CachedInstance,
        key: str,
        ranges: list[tuple[int, int]],
        offer: Offer,
        range_header: str,
        expires: int,
        converted: bytes | None = None,
    ) -> PlanResponse:
        """One frame as a single part, honouring one byte range (206 / 416), so a progressive decoder can start
        from the first bytes of a codestream. ``converted``: the frame's bytes themselves (``ranges`` are in it)."""
        total = sum(length for _, length in ranges)
        headers = _frame_headers(offer, expires)
        wanted = parse_range(range_header, total) if range_header else None
        if wanted is not None:
            first, last = wanted
            ranges = slice_ranges(ranges, first, last)
            headers.append(("Content-Range", f"bytes {first}-{last}/{total}"))
        else:
            headers.append((nginx.ACCEPT_RANGES, "bytes"))
        if converted is not None:
            body = b"".join(converted[start : start + length] for start, length in ranges)
        else:
            body = b"".join(self._include(instance, start, length, key) for start, length in ranges)
        return PlanResponse(206 if wanted is not None else 200, headers, body)

    def _bulkdata(
        self, instance: CachedInstance, path: str, accept: str, range_header: str, redirect: str | None = None
    ) -> PlanResponse:
        if self._converts(instance):
            return self._converted_bulkdata(instance, path, accept, range_header, redirect)
        found = instance.bulkdata.get(path)
        if found is None:
            raise NotFound("no such bulkdata element")
        if path == PIXEL_DATA_PATH and instance.transfer_syntax_uid not in NATIVE_SYNTAXES:
            # Encapsulated Pixel Data: its frames, each in its compressed media type and syntax (PS3.18 8.7.3.3),
            # not the raw item stream (offset table and item headers) under application/octet-stream
            if is_video(instance.transfer_syntax_uid):
                return self._video_stream(instance, accept, range_header)
            if instance.frames is None:
                raise FramesNotServable(
                    f"the pixel data of this instance cannot be served in frames ({_why_no_frames(instance)}); "
                    "retrieve the instance instead"
                )
            count = instance.frames.count
            choice = self._frame_choice(instance, accept, count == 1)
            return self._frames_of(choice, list(range(1, count + 1)), range_header)
        offset, length = found
        self._require_present(instance.storage_key)
        return self._bulk_answer(
            instance,
            offset,
            length,
            accept,
            range_header,
            lambda first, n: self._include(instance, first, n),
            media_type=self._document_type(instance, path),
        )

    def _document_type(self, instance: CachedInstance, path: str) -> str:
        """The media type an Encapsulated Document's bulkdata is also served as: its MIME Type of Encapsulated
        Document (0042,0012) when that is one of DOCUMENT_MEDIA_TYPES (a client asks for the document as what it
        is: OHIF's `?accept=application/pdf`; Orthanc's /tools/create-dicom and PDF-to-DICOM tools write one), else
        ""."""
        if path != DOCUMENT_PATH or self._load_metadata is None:
            return ""
        element = self._load_metadata(instance.ids.sop).get("00420012")
        values = element.get("Value") if isinstance(element, Mapping) else None
        mime = values[0] if isinstance(values, list) and len(values) == 1 else None
        return mime if isinstance(mime, str) and mime in DOCUMENT_MEDIA_TYPES else ""

    def _video_stream(self, instance: CachedInstance, accept: str, range_header: str) -> PlanResponse:
        """A video's Pixel Data: the whole stream in its video media type and syntax, as one part (PS3.18
        8.7.3.3.2, note 5), from its fragments' byte ranges; a Range is honoured as for a frame (a player seeks)."""
        if instance.stream is None:  # stored before ingest indexed video streams
            raise FramesNotServable(
                "this video was stored before its stream was indexed; retrieve the instance instead"
            )
        offer = negotiate(accept, self._frame_offers(instance, True))
        choice = _FrameChoice(instance, offer, instance.storage_key, instance.stream, self._plan_seconds)
        return self._frames_of(choice, [1], range_header)

    def _converted_bulkdata(
        self, instance: CachedInstance, path: str, accept: str, range_header: str, redirect: str | None
    ) -> PlanResponse:
        """A bulk value of a big-endian or deflated instance in little endian (PS3.18 8.7.3), answered as any
        other bulk value is."""
        if redirect is not None:
            # a 406 is the plan's own answer
            self._bulk_offer(instance, accept, range_header, self._document_type(instance, path))
            return self._to_converter(redirect)
        assert self._converted is not None
        value = self._converted.bulk(instance.storage_key, instance.size, self._metadata(instance), path)
        return self._bulk_answer(
            instance,
            0,
            len(value),
            accept,
            range_header,
            lambda first, n: value[first : first + n],
            expires=0,
            media_type=self._document_type(instance, path),
        )

    @staticmethod
    def _bulk_offer(instance: CachedInstance, accept: str, range_header: str, media_type: str = "") -> Offer:
        """``media_type``: a document's own type, offered first (its default), application/octet-stream after.
        A value other than encapsulated Pixel Data (which is answered as frames) is uncompressed little-endian bytes
        whatever the file's syntax (PS3.5 A.4: a compressed syntax encodes the data set as Explicit VR Little
        Endian), so it is offered as Explicit VR Little Endian, PS3.18 Table 8.7.3-4's uncompressed bulk data, and
        under the stored syntax's name as before: a JPEG file's ICC profile or overlay asked for as
        ``application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1`` was a 406."""
        syntaxes = dict.fromkeys([NATIVE_TS, bulk_syntax(instance.transfer_syntax_uid)])
        offers: list[Offer] = []
        for part_type in (media_type, "application/octet-stream") if media_type else ("application/octet-stream",):
            for ts in syntaxes:
                single, multi = Offer(part_type, ts, False), Offer(part_type, ts, True)
                offers += [single, multi] if range_header else [multi, single]
        return negotiate(accept, offers)

    def _bulk_answer(
        self,
        instance: CachedInstance,
        offset: int,
        length: int,
        accept: str,
        range_header: str,
        piece: Callable[[int, int], bytes],
        expires: int | None = None,
        media_type: str = "",
    ) -> PlanResponse:
        """The answer for a bulk value of ``length`` bytes at ``offset``, whose bytes ``piece(start, length)``
        gives (an SSI include of a stored range, or converted bytes themselves); ``media_type`` as _bulk_offer's."""
        offer = self._bulk_offer(instance, accept, range_header, media_type)
        part_type = offer.part_type
        seconds = self._plan_seconds if expires is None else expires
        expires_header = ("X-Accel-Expires", str(seconds))
        wanted = parse_range(range_header, length) if range_header else None
        if offer.multipart and wanted is not None:
            # a client that takes only multipart and sends a Range (dicomweb-client's retrieve_bulkdata with a
            # byte_range) gets the range in its one part, which says which bytes it holds; the whole value before
            first, last = wanted
            ranged = self._multipart(
                [(part_type, [piece(offset + first, last - first + 1)])],
                part_type,
                seconds,
                part_headers=f"Content-Range: bytes {first}-{last}/{length}\r\n",
            )
            return PlanResponse(206, ranged.headers, ranged.body)
        if not offer.multipart:
            if wanted is not None:
                first, last = wanted
                return PlanResponse(
                    206,
                    [
                        ("Content-Type", part_type),
                        ("Content-Range", f"bytes {first}-{last}/{length}"),
                        expires_header,
                    ],
                    piece(offset + first, last - first + 1),
                )
            headers = [
                ("Content-Type", part_type),
                (nginx.ACCEPT_RANGES, "bytes"),
                expires_header,
            ]
            return PlanResponse(200, headers, piece(offset, length) if length else b"")
        include = [piece(offset, length)] if length else []
        return self._multipart([(part_type, include)], part_type, seconds)

    def wado(
        self, params: Mapping[str, Sequence[str]], render_default: bool = False, if_none_match: str = ""
    ) -> PlanResponse | None:
        """WADO-URI (PS3.18 9) for ``application/dicom``: the object itself, by X-Accel-Redirect. With
        ``render_default`` (no ``contentType``) only for an instance without frames to render; None for an image,
        which the caller renders."""
        check_wado_request_type(params)
        instance = self.named_instance(wado_object(params))
        if "transferSyntax" in params:
            values = params["transferSyntax"]
            if len(values) != 1:
                raise BadRequest("WADO-URI needs exactly one transferSyntax")
            _check_wado_transfer_syntax(values[0].strip(), instance.transfer_syntax_uid)
        elif render_default and self._has_frames(instance):
            return None
        return self.redirect_object(instance, if_none_match)

    def named_instance(self, named: WadoObject) -> CachedInstance:
        """The instance a WADO-URI query names; by its SOP Instance UID alone when the study or series is left
        out (``paths.wado_object``), and then a study or series it does name must be the instance's."""
        sop = named.required_sop()
        if named.study is not None and named.series is not None:
            return self.instance(named.study, named.series, sop)
        row = self._load_instance(sop)
        if row is None:
            raise NotFound("no such instance")
        if named.study not in (None, row.study_uid) or named.series not in (None, row.series_uid):
            raise NotFound("no such instance")  # as one stored nowhere (``instance``)
        return self.instance(row.study_uid, row.series_uid, sop)


def storage_tag(if_none_match: str, etag: str) -> str:
    """The one tag of a client's ``If-None-Match`` that matches a stored object's ETag (``etag``, quoted, as storage
    sends it) by RFC 9110 13.1.2's weak comparison, which If-None-Match uses: that ETag, for storage to compare
    itself (the object may have changed since the catalog recorded it). ``""`` when none matches or the header is
    ``*``: NGINX then sends the header as the client wrote it. S3 (moto) compared a weak ``W/"<etag>"`` or a list
    ``"a", "<etag>"`` strongly and as one tag: a 200 where the local origin, and RFC 9110, give a 304."""
    if not etag or _ETAG_LIST.fullmatch(if_none_match) is None:  # "*", or no list of entity-tags (13.1.2)
        return ""
    opaque = etag.removeprefix("W/")
    return etag if any(tag == opaque for tag in _ENTITY_TAG.findall(if_none_match)) else ""


# RFC 9110 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; If-None-Match = "*" / #entity-tag (a list, 5.6.1)
_TAG = r'(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")'
_ENTITY_TAG = re.compile(_TAG)
_ETAG_LIST = re.compile(rf"[ \t,]*{_TAG}(?:[ \t]*,[ \t,]*{_TAG})*[ \t,]*")
