"""DICOMweb endpoints answered by Python: QIDO-RS, metadata, STOW-RS, rendered frames and thumbnails.

Bytes of stored objects are never sent from here (``gateway.dicomweb.wado`` and NGINX do that); rendering is the
exception that has to decode pixels, and its results (thumbnails) are stored and then served by NGINX.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request

from gateway import fastjson
from gateway.catalog.deletions import Target
from gateway.dicomweb import xml
from gateway.dicomweb.accept import MediaRange, Offer, answered_as, negotiate, parse_accept
from gateway.dicomweb.multipart import iter_parts, parse_content_type
from gateway.dicomweb.paths import check_wado_request_type, wado_object
from gateway.dicomweb.qido import parse_qido
from gateway.dicomweb.stow import StowBatch
from gateway.dicomweb.stow_response import StowItem, build_stow_response
from gateway.dicomweb.wado import NATIVE_TS, CachedInstance, Planner
from gateway.errors import (
    BadRequest,
    FrameNotFound,
    GatewayError,
    MalformedMultipart,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    UnsupportedContentEncoding,
    UnsupportedMediaType,
)
from gateway.hooks import UploadContext
from gateway.ingest import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, IngestResult
from gateway.lifecycle import check_reason
from gateway.numbers import INT32_MAX, parse_int, parse_is
from gateway.render import parse_window, render_frames, render_instance, rendering_query, text_rendering
from gateway.scope import Scope
from gateway.spool import spool_file
from gateway.uids import check_uid
from gateway.views.body import large_read_stream
from gateway.views.common import (
    decision,
    dicomweb_root,
    make_conditional,
    metadata_text,
    no_content,
    public_base,
    services,
    token_query,
)

log = logging.getLogger("gateway.dicomweb")
bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")

DICOM_JSON = "application/dicom+json"
DICOM_XML = xml.MEDIA_TYPE
MAX_PART_BYTES = 8 << 30
# Parts in one STOW request. Each part's result is held until the answer is written (~3.5 KB of a worker's memory
# for a part of one byte): without a bound, 660 KB of 60,000 one-byte parts took a worker to 350 MB for a minute,
# and DICOMGW_MAX_BODY of them would take every worker's memory. 20 times the batch `dicom-gateway upload` sends.
MAX_PARTS = 10_000


# The transfer syntax of DICOM JSON and XML is that of their base64 values (InlineBinary; PS3.18 8.7.3.5: these
# types "may have a Transfer Syntax parameter in order to specify the encoding of base64 data"): Explicit VR Little
# Endian whatever the stored syntax (a big-endian file's values are swapped, gateway.dicom.walker), so an Accept
# naming it is answered (`application/dicom+json; transfer-syntax=1.2.840.10008.1.2.1` was a 406), another one not
METADATA_TS = NATIVE_TS
JSON_OFFERS = [Offer(DICOM_JSON, METADATA_TS, False), Offer("application/json", METADATA_TS, False)]
# PS3.18 Tables 10.4.4-1 (metadata) and 10.6.4-1 (search): DICOM JSON is the default and multipart/related;
# type="application/dicom+xml" Required, one NativeDicomModel part per data set. The single-part XML type is for a
# resource that is a single response item only (Table 10.4.4-1 Note 3): instance metadata and the STOW response.
XML_PARTS = Offer(DICOM_XML, METADATA_TS, True)
LIST_OFFERS = [*JSON_OFFERS, XML_PARTS]
ONE_OFFERS = [*LIST_OFFERS, Offer(DICOM_XML, METADATA_TS, False)]
STOW_OFFERS = [*JSON_OFFERS, Offer(DICOM_XML, METADATA_TS, False), XML_PARTS]


def dicom_json(payload: bytes, answer_as: Offer, status: int = 200) -> Response:
    """DICOM JSON under the media type negotiated: ``application/json`` to a client that asked for that (PS3.18
    defines only application/dicom+json, Tables 10.4.4-1 and 10.6.4-1; the alias is the gateway's courtesy to
    generic clients), so a client refusing dicom+json with q=0 is never sent it (RFC 9110 12.5.1)."""
    return Response(payload, status=status, mimetype=answer_as.part_type)


def accepted(offers: list[Offer]) -> Offer:
    """PS3.18 8.7: which of ``offers`` the client takes; one that takes none gets 406 rather than a representation
    it did not ask for, naming those it can have. The ``accept`` query parameter wins over the header."""
    try:
        return negotiate(request.args.get("accept") or request.headers.get("Accept", ""), offers)
    except NotAcceptable:
        raise NotAcceptable(not_acceptable_detail(offers)) from None


def not_acceptable_detail(offers: list[Offer]) -> str:
    """The 406's detail: the representations the resource has (NGINX answers a STOW's 406 from the request's head
    in these words for ``STOW_OFFERS``, dicomgw.conf's $dgw_error_detail)."""
    return answered_as(offers)


def dicom_xml(datasets: list[dict[str, Any]], multipart: bool) -> Response:
    """``datasets`` as Native DICOM Model XML (``gateway.dicomweb.xml``): one document, or one part each."""
    if not multipart:
        return Response(xml.to_xml(datasets[0]), mimetype=DICOM_XML)
    body, content_type = xml.multipart(xml.to_xml(dataset) for dataset in datasets)
    response = Response(body)
    response.headers["Content-Type"] = content_type
    return response


# -- QIDO-RS ----------------------------------------------------------------------------------------------------


def _search(level: str, study: str | None = None, series: str | None = None) -> Response:
    scope = decision().claims.scope
    answer_as = accepted(LIST_OFFERS)
    args = {key: request.args.getlist(key) for key in request.args if key not in ("token", "accept")}
    query = parse_qido(
        level,  # type: ignore[arg-type]
        args,
        study_uid=check_uid(study) if study else None,
        series_uid=check_uid(series) if series else None,
    )
    catalog = services().catalog
    results = catalog.search(query, scope)
    if not results and study and not catalog.exists(study, series):
        raise NotFound("no such study" if series is None else "no such series")  # e.g. deleted
    matches = _with_retrieve_urls(results, level, scope)
    if answer_as.part_type == DICOM_XML and not matches:
        # PS3.18 8.3.4.4.1: no match is a 204 with no payload. A multipart body holds at least one part (RFC 2046
        # 5.1.1), so the empty 200 it was is no multipart a parser reads (StartBoundaryNotFoundDefect); JSON's
        # `[]` is a whole answer and stays a 200, as clients expect
        response = Response(status=204)
        del response.headers["Content-Type"]
    elif answer_as.part_type == DICOM_XML:
        response = dicom_xml(matches, True)
    else:
        response = dicom_json(fastjson.dumps(matches), answer_as)
    response.headers["Cache-Control"] = "private, no-cache"  # a search answers for now: the catalog changes
    if response.status_code == 200:
        # a viewer's study list asked again is revalidated (304) rather than sent again, and its preconditions are
        # judged as the metadata's are: If-None-Match: * was a 200 with every match, If-Match: "x" too
        _validated(response, answer_as)
    for text in query.warnings:  # PS3.18 8.3.4.2/5/6: a matching option we ignored is owned up to, in these words
        response.headers.add("Warning", _warning(text))
    if query.server_limit and len(results) == query.limit:
        # PS3.18 8.3.4.4: a page cut by our maximum, not by the client's limit, says how much is left (counted only
        # then: a client that pages with its own limit knows to ask for the next page)
        remaining = catalog.count(query, scope) - query.offset - len(results)
        if remaining > 0:
            response.headers.add("Warning", _warning(f"There are {remaining} additional results that can be requested"))
    return response


def _warning(text: str) -> str:
    """A Warning header value as PS3.18 8.3.4 writes them: ``299 {+SERVICE}: "text"`` (RFC 7234 5.5: the text is
    a quoted-string, so a quote or backslash in it is escaped)."""
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 {public_base()}/dicomweb: "{quoted}"'


def _with_retrieve_urls(results: list[dict[str, Any]], level: str, scope: Scope | None) -> list[dict[str, Any]]:
    """PS3.18 Tables 10.6.3-3/4/5: each match carries its Retrieve URL (0008,1190) when the Retrieve transaction can
    fetch it, under the root the client used (a path token stays in it, as in STOW's answer; QIDO answers are never
    cached by NGINX), and so does a query token (``token_query``). A series token cannot retrieve a whole study:
    its study matches carry none. Attributes stay in tag order."""
    base = public_base() + dicomweb_root()
    query = token_query()
    out = []
    for result in results:
        study = result["0020000D"]["Value"][0]
        url = f"{base}/studies/{study}"
        if level == "studies":
            retrievable = scope is None or scope.allows_study(study)
        else:
            series = result["0020000E"]["Value"][0]
            url += f"/series/{series}"
            retrievable = scope is None or scope.allows_series(study, series)
            if level == "instances":
                url += f"/instances/{result['00080018']['Value'][0]}"
        if retrievable:
            result = dict(sorted({**result, "00081190": {"vr": "UR", "Value": [url + query]}}.items()))
        out.append(result)
    return out


@bp.get("/studies")
def search_studies() -> Response:
    return _search("studies")


@bp.get("/series")
def search_all_series() -> Response:
    return _search("series")


@bp.get("/instances")
def search_all_instances() -> Response:
    return _search("instances")


@bp.get("/studies/<study>/series")
def search_series(study: str) -> Response:
    return _search("series", study)


@bp.get("/studies/<study>/instances")
def search_study_instances(study: str) -> Response:
    return _search("instances", study)


@bp.get("/studies/<study>/series/<series>/instances")
def search_instances(study: str, series: str) -> Response:
    return _search("instances", study, series)


# -- metadata -----------------------------------------------------------------------------------------------------


def _metadata(study: str, series: str | None = None, instance: str | None = None) -> Response:
    decision()
    answer_as = accepted(ONE_OFFERS if instance is not None else LIST_OFFERS)
    catalog = services().catalog
    check_uid(study)
    if instance is not None:
        row = catalog.get_instance(check_uid(instance))
        if row is None or row.study_uid != study or row.series_uid != series:
            raise NotFound("no such instance")
        rows = [row]
    else:
        rows = catalog.instances_of(study, check_uid(series) if series else None)
    if not rows:
        raise NotFound("no instances")
    parts = [metadata_text(row) for row in rows]  # BulkDataURIs stored relative, answered absolute
    if answer_as.part_type == DICOM_XML:
        # XML is made from the very JSON text a JSON client gets, so both say the same
        response = dicom_xml([json.loads(part) or {} for part in parts], answer_as.multipart)
    else:
        response = dicom_json(("[" + ",".join(parts) + "]").encode(), answer_as)
    response.headers["Cache-Control"] = "private, no-cache"
    return _validated(response, answer_as)


def _validated(response: Response, answer_as: Offer) -> Response:
    """``response`` (DICOM JSON or XML, metadata or a search) with an ETag of its body, then the request's
    preconditions judged against it (RFC 9110 13.2): a 304, a JSON 412 or ``response``. Weak: NGINX gzips the 200
    and then weakens its ETag itself, but never a 304's, which must name the ETag the 200 would (RFC 9110 15.4.5): a
    weak one in every answer is the same in all of them."""
    digest = hashlib.sha256(response.get_data())
    if answer_as.part_type == "application/json":  # the same bytes as another representation: its own validator
        digest.update(b"application/json")
    response.set_etag(digest.hexdigest()[:32], weak=True)
    make_conditional(response)
    if response.status_code == 304:
        # RFC 9110 15.4.5: a 304 carries the Vary its 200 would; NGINX's gzip_vary adds it only to bodies it gzips
        response.headers["Vary"] = "Accept-Encoding"
    return response


@bp.get("/studies/<study>/metadata")
def study_metadata(study: str) -> Response:
    return _metadata(study)


@bp.get("/studies/<study>/series/<series>/metadata")
def series_metadata(study: str, series: str) -> Response:
    return _metadata(study, series)


@bp.get("/studies/<study>/series/<series>/instances/<instance>/metadata")
def instance_metadata(study: str, series: str, instance: str) -> Response:
    return _metadata(study, series, instance)


# -- STOW-RS ------------------------------------------------------------------------------------------------------


def _to_item(result: IngestResult) -> StowItem:
    return StowItem(
        status=result.status,
        sop_class_uid=result.sop_class_uid,
        ids=result.ids,
        failure_reason=result.failure_reason,
        detail=result.detail,
        warning_reason=result.warning_reason,
        sent_sop_uid=result.sent_sop_uid,
        routed=result.routed,
    )


@bp.post("/studies")
def stow_all() -> Response:
    return _stow(None)


@bp.post("/studies/<study>")
def stow_study(study: str) -> Response:
    return _stow(check_uid(study))


def _one_header(name: str) -> str | None:
    """A policy header sent at most once. Twice, the WSGI server joins the values with a comma, and the policy
    matched the joined text ("research-a,allow" against ``research-*``): refused, as is a comma in one value."""
    values = request.headers.getlist(name)
    if len(values) > 1 or any("," in value for value in values):
        raise BadRequest(f"{name} must be sent once, with one value")
    return header_text(values[0]) if values else None  # the policy's names are Unicode: "Zürich", not "ZÃ¼rich"


def _stow(study: str | None) -> Response:
    claims = decision().claims
    # PS3.18 10.5.3: the Store Instances Response as DICOM JSON or XML (dcm4che's stowrs asks for XML); a client
    # that accepts neither gets its 406 before any of its body is stored
    answer_as = accepted(STOW_OFFERS)
    srv = services()
    media_type, params = parse_content_type(request.headers.get("Content-Type", ""))
    coding = request.headers.get("Content-Encoding", "").strip()
    if coding.lower() not in ("", "identity"):
        # read as DICOM, a gzip body was a 409 "not a DICOM Part 10 file" per part, or a 400 "no boundary"
        raise UnsupportedContentEncoding(_coding_refusal(coding))
    context = UploadContext(
        source="stow",
        sub=claims.sub,
        tenant=_one_header("X-DICOMGW-Tenant"),
        region=_one_header("X-DICOMGW-Region"),
    )
    # a thread per pool process, plus those whose files wait in a group commit's batch (gateway.catalog.groupcommit)
    # or are being stored, so the pool is never idle while a batch gathers
    batch = StowBatch(
        lambda path, digest: srv.ingestor.ingest(path, context, study, claims.scope, digest=digest),
        workers=max(10, srv.ingestor.processes + 8),
        in_flight=max(16, 2 * srv.ingestor.processes + 12),
    )
    stream = large_read_stream(request.environ["wsgi.input"])
    try:
        if media_type == "application/dicom":
            batch.add(*_spool_single(stream, srv.spool_dir, request.content_length))
        elif media_type == "multipart/related":
            part_type = params.get("type", "application/dicom").lower()
            if part_type != "application/dicom":
                raise UnsupportedMediaType(_stow_refusal(part_type))
            boundary = params.get("boundary", "")
            # a part without a Content-Type is read as the body's type (some hand-made clients send none)
            parts = iter_parts(
                stream, boundary, srv.spool_dir, max_part_bytes=MAX_PART_BYTES, default_content_type=part_type
            )
            for number, part in enumerate(parts, 1):
                if number > MAX_PARTS:
                    part.path.unlink(missing_ok=True)
                    raise PayloadTooLarge(
                        f"more than {MAX_PARTS} parts in one request: send the parts from {number} on in another"
                    )
                got = part.content_type.split(";")[0].strip().lower()
                if got == "application/dicom":
                    batch.add(part.path, part.sha256)
                else:
                    # what curl -F sends (application/octet-stream) was 0x0122 "SOP class not supported": the
                    # part's media type, not its SOP class, is what the gateway does not take; the item names the
                    # instance the part holds, where it can be read, as any refused file's does
                    refused = IngestResult.refused(part.path, _part_refusal(got))
                    part.path.unlink(missing_ok=True)
                    batch.add_result(refused)
        else:
            raise UnsupportedMediaType(_stow_refusal(media_type))
    except GatewayError as error:
        # the parts received whole before the body broke are ingested as usual (a retry of the whole request is
        # idempotent); PS3.18 Table 10.5.3-1 keeps 400 for "nothing stored", so once one is, the answer lists them
        results = batch.finish()
        if not any(r.ok for r in results):
            raise
        reason = OUT_OF_RESOURCES if error.status in (413, 503, 507) else CANNOT_UNDERSTAND
        results.append(IngestResult("failed", failure_reason=reason, detail=f"the rest of the body: {error.detail}"))
        broken: str | None = error.detail
    else:
        results = batch.finish()
        broken = None
    if not results:  # nothing to answer per instance: say what is wrong with the body, like any other 400
        raise MalformedMultipart("the multipart body holds no part")
    outage = batch.outage
    if outage is not None and not any(r.ok for r in results):
        raise outage
    answer = build_stow_response(
        [_to_item(r) for r in results],
        root=public_base() + dicomweb_root(),
        study_uid=study,
        query=token_query(),
        scope=claims.scope,
    )
    if answer_as.part_type != DICOM_XML:
        response = dicom_json(json.dumps(answer.body, separators=(",", ":")).encode(), answer_as, answer.status)
    else:  # single part, or the one part of multipart/related; type="application/dicom+xml"
        response = dicom_xml([answer.body], answer_as.multipart)
        response.status_code = answer.status
    if broken is not None:
        response.headers["Warning"] = _warning(f"the body broke after {sum(r.ok for r in results)} stored: {broken}")
    if outage is not None:  # the instances an outage failed (0xA700) can be sent again once it is over: say when
        response.headers.extend(outage.headers())
    return response


# PS3.18 10.5.2's other request form, DICOM JSON or XML metadata with bulk data parts: not supported (each
# instance is stored as the Part 10 file it was sent as, byte for byte)
_METADATA_TYPES = ("application/dicom+json", "application/json", "application/dicom+xml")
_STOW_TYPES = 'multipart/related; type="application/dicom" (one DICOM Part 10 file per part) or application/dicom'


def _stow_refusal(media_type: str) -> str:
    """The 415's detail: what STOW-RS takes, and for the metadata and bulk data form that it is not supported (it
    said "accepts multipart/related; type=application/dicom" alone, and "must be" that for a single
    application/dicom+json body, which named neither the form refused nor the single application/dicom body)."""
    if media_type in _METADATA_TYPES:
        return (
            f"STOW-RS of metadata and bulk data ({media_type}, PS3.18 10.5.2) is not supported: send each instance "
            f"as its DICOM Part 10 file, {_STOW_TYPES}"
        )
    return f"STOW-RS takes {_STOW_TYPES}"


_CODINGS = re.compile(r"[A-Za-z0-9._+-]+(?:[ \t]*,[ \t]*[A-Za-z0-9._+-]+)*")


def _coding_refusal(coding: str) -> str:
    """The 415's detail for a compressed body (NGINX answers it from the request's head in these words,
    $dgw_stow_refusal): the coding as sent when it is a list of tokens of at most 40 characters."""
    named = coding if len(coding) <= 40 and _CODINGS.fullmatch(coding) else "of this request"
    return f"Content-Encoding {named} is not supported: send the body uncompressed"


def _part_refusal(media_type: str) -> str:
    """A multipart part that is no ``application/dicom``: its type (a validated token/token, lower-cased) and what a
    part must be."""
    return (
        f"part is {media_type}, not application/dicom: each part is one DICOM Part 10 file, "
        "Content-Type: application/dicom"
    )


def _spool_single(stream: object, spool_dir: Path, length: int | None) -> tuple[Path, str]:
    """The body into a new file: its path and sha256 (hashed on the way). ``length``: the Content-Length."""
    digest = hashlib.sha256()
    total = 0
    with spool_file(spool_dir, "stow", ".dcm") as (path, write):
        while chunk := stream.read(1 << 20):  # type: ignore[attr-defined]
            total += len(chunk)
            if total > MAX_PART_BYTES:
                raise PayloadTooLarge("the instance is larger than this gateway accepts")
            write(chunk)
            digest.update(chunk)
        # A client that went away mid-body leaves a short read, not an error (NGINX closes, gunicorn reads EOF):
        # cut at an element boundary, the file still parses, and storing it would refuse the client's retry of
        # the whole file (0x0111). A multipart body has its close delimiter for this; a single part only this.
        if total == 0:
            raise BadRequest("the body is empty: send one DICOM Part 10 file")
        if length is not None and total != length:
            raise BadRequest(f"the body ended after {total} of its {length} bytes (Content-Length)")
    return path, digest.hexdigest()


# -- DELETE (API key only; gateway.lifecycle) -------------------------------------------------------------------


def header_text(value: str) -> str:
    """A header's text as its sender wrote it. WSGI (PEP 3333) hands every header over read as ISO-8859-1, so
    the UTF-8 that curl, scripts and a browser's fetch send came out as mojibake (``Lösung`` as ``LÃ¶sung``): UTF-8
    bytes are read as UTF-8, any other bytes keep the ISO-8859-1 reading (what requests sends for a ``str``)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _delete(target: Target) -> Response:
    decision()  # refuses anything but the API key
    srv = services()
    label = srv.authorizer.api_key_label(request.headers.get("Authorization", "")) or "api-key"
    reason = check_reason(header_text(request.headers.get("X-DICOMGW-Reason", "")))
    if not srv.deleter().delete([target], sub=label, reason=reason):
        raise NotFound("nothing stored there")
    return no_content()


@bp.delete("/studies/<study>")
def delete_study(study: str) -> Response:
    return _delete(Target(check_uid(study)))


@bp.delete("/studies/<study>/series/<series>")
def delete_series(study: str, series: str) -> Response:
    return _delete(Target(check_uid(study), check_uid(series)))


@bp.delete("/studies/<study>/series/<series>/instances/<instance>")
def delete_instance(study: str, series: str, instance: str) -> Response:
    return _delete(Target(check_uid(study), check_uid(series), check_uid(instance)))


# -- rendered and thumbnails ---------------------------------------------------------------------------------


@bp.get("/studies/<study>/series/<series>/instances/<instance>/rendered")
def rendered_instance(study: str, series: str, instance: str) -> Response:
    decision()
    query = rendering_query(request.args)
    return render_instance(services(), study, series, instance, 1, query, request.headers.get("Accept", ""), whole=True)


@bp.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>/rendered")
def rendered_frame(study: str, series: str, instance: str, frames: str) -> Response:
    decision()
    # PS3.18 10.4.1.1.3 names a frame list here, checked as the frames resource checks it (0, -1 or a 21-digit
    # number was a 404, a list the 404 of an unknown path); a list is one animated GIF (``render_frames``)
    numbers = [parse_int(n, "frame number", low=1) for n in frames.split(",")]
    query = rendering_query(request.args)
    accept = request.headers.get("Accept", "")
    if len(numbers) == 1:
        return render_instance(services(), study, series, instance, numbers[0], query, accept)
    return render_frames(services(), study, series, instance, numbers, query, accept)


@bp.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>/thumbnail")
def thumbnail_frame(study: str, series: str, instance: str, frames: str) -> Response:
    """A frame's thumbnail (PS3.18 10.4.1.1.4; OHIF's dicomweb-client ``retrieveInstanceFramesThumbnail``) is its
    rendering fitted to the thumbnail's size unless the request names another viewport: rendered for the request,
    as the instance's thumbnail is when asked for other than its stored JPEG."""
    from gateway.render import THUMBNAIL_SIZE

    decision()
    numbers = [parse_int(n, "frame number", low=1) for n in frames.split(",")]
    query = {"viewport": f"{THUMBNAIL_SIZE},{THUMBNAIL_SIZE}", **rendering_query(request.args)}
    accept = request.headers.get("Accept", "")
    if len(numbers) == 1:
        return render_instance(services(), study, series, instance, numbers[0], query, accept)
    return render_frames(services(), study, series, instance, numbers, query, accept)


@bp.get("/studies/<study>/series/<series>/instances/<instance>/thumbnail")
def thumbnail_instance(study: str, series: str, instance: str) -> Response:
    decision()
    from gateway.render import thumbnail

    query = rendering_query(request.args)
    headers = request.headers
    return thumbnail(
        services(),
        study,
        series,
        instance,
        query,
        headers.get("Accept", ""),
        headers.get("If-None-Match", ""),
        ranged="Range" in headers,
    )


def _representative(study: str, series: str | None = None) -> Any:
    """The instance (its catalog row) that stands for a series, or a study, where PS3.18 names a rendering or a
    thumbnail of the whole (10.4.1.1.4, 10.4.3.3.4): the series' middle image, so a series holding a report or a
    PDF beside its images is shown by an image (the report itself only when the series holds no image at all); a
    study's is that of its first series holding an image (Series Number order, as every level lists them). Orthanc's
    plugin likewise answers with one instance's rendering."""
    rows = services().catalog.instances_of(check_uid(study), check_uid(series) if series else None, with_metadata=False)
    if not rows:
        raise NotFound("no instances")
    images = [row for row in rows if row.number_of_frames > 0]
    chosen = [row for row in images or rows if row.series_uid == (images or rows)[0].series_uid]
    return chosen[len(chosen) // 2]


@bp.get("/studies/<study>/rendered")
@bp.get("/studies/<study>/series/<series>/rendered")
def rendered_whole(study: str, series: str | None = None) -> Response:
    """A study's or series' rendering is its representative instance's (``_representative``), as that instance's
    ``/rendered`` answers it: dicomweb-client's ``retrieve_series_rendered`` and Orthanc's client ask for it."""
    decision()
    row = _representative(study, series)
    query = rendering_query(request.args)
    accept = request.headers.get("Accept", "")
    return render_instance(services(), study, row.series_uid, row.sop_uid, 1, query, accept, whole=True)


@bp.get("/studies/<study>/thumbnail")
@bp.get("/studies/<study>/series/<series>/thumbnail")
def thumbnail_whole(study: str, series: str | None = None) -> Response:
    decision()
    from gateway.render import thumbnail

    row = _representative(study, series)
    query = rendering_query(request.args)
    headers = request.headers
    return thumbnail(
        services(),
        study,
        row.series_uid,
        row.sop_uid,
        query,
        headers.get("Accept", ""),
        headers.get("If-None-Match", ""),
        ranged="Range" in headers,
    )


@bp.get("/wado")
def wado() -> Response:
    """WADO-URI (PS3.18 9): ``application/dicom`` is handed to NGINX (X-Accel-Redirect, Range honoured by
    storage); the rendered media types are rendered. Without ``contentType`` the default is that of the
    instance's resource category (PS3.18 Table 8.7.4-1): ``image/jpeg`` for an image, ``text/html`` for a
    structured report (an Encapsulated PDF: the PDF, the one rendering made of a document), and the object
    (``application/dicom``) for the rest (a waveform, an RT plan, a video whose frames cannot be served), which has
    no rendered media type: a 406 left such an instance unreachable by a plain WADO-URI link."""
    decision()
    args = request.args
    anonymize = [value.strip().lower() for value in args.getlist("anonymize")]
    if anonymize == ["yes"]:
        # nothing is de-identified on the way out: ignoring the request would send identified data to a client
        # that asked for none (fail closed)
        raise BadRequest("anonymize=yes is not supported: objects are served as stored")
    if anonymize and anonymize != ["no"]:
        # PS3.18 9.4.1.2.1 defines the one value yes, and 8.3 makes another a 400: `anonymize=true` was ignored, so
        # a client that meant yes was sent identified data. An explicit no asks for what is served.
        raise BadRequest("anonymize takes the one value yes, which is not supported: objects are served as stored")
    params = {key: args.getlist(key) for key in args}
    check_wado_request_type(params)
    planner = services().planner
    instance = planner.named_instance(wado_object(params))
    # PS3.18 9: each parameter it defines holds one value (contentType's list is one value, comma-separated); of
    # two, the first was used in silence (contentType=image/png&contentType=image/jpeg, rows=64&rows=512), while a
    # repeated UID was already a 400 (PS3.18 9.5.2.1 makes a second frameNumber one). A client's own are not read.
    repeated = sorted(name for name in _WADO_PARAMETERS if len(params.get(name, ())) > 1)
    if repeated:
        raise BadRequest(f"WADO-URI takes one {repeated[0]}")
    # The query names the instance it locates, so a plan or a rendering made below never looks it up again by a
    # study or series left out (Weasis's requireOnlySOPInstanceUID sends both empty)
    params["studyUID"], params["seriesUID"] = [instance.ids.study], [instance.ids.series]
    # PS3.18 9 (URI service): contentType takes Accept's syntax, a list with q-values; the most preferred type
    # decides between the object and a rendering (the first type alone, parameters and all, was read before).
    # Without it the Accept header selects (PS3.18 9.3): `Accept: application/dicom` was sent a JPEG.
    if "contentType" in args:
        listed = [r for r in parse_accept(args["contentType"]) if r.q > 0]
        accept = args["contentType"]
    else:
        listed = _wado_choice(request.headers.get("Accept", ""))
        accept = request.headers.get("Accept", "") if listed else ""
    if len(listed) > 1:
        # PS3.18 8.7.8.1: the most preferred type the instance's category is answered as, so a type it has none
        # of does not hide the next (`image/jpeg,application/dicom;q=0.5` of a waveform or a report was a 406)
        answered = _wado_types(planner, instance)
        listed = [r for r in listed if _answers(r, answered)] or listed
    if listed and listed[0].media_type == "*/*":
        # any type at all is the category's default, as without contentType: `*/*` of a waveform or an RT
        # plan was a 406 "no pixel data" where the object is what it has
        listed = []
    if listed and listed[0].media_type == "application/*":
        # the object is an application/ type an instance always has (an Encapsulated PDF's default, the PDF, is
        # one too): it was a 406 "none of the accepted media types", or from the header a JPEG it did not accept
        listed = [] if text_rendering(services(), instance.ids.sop) == "application/pdf" else [
            MediaRange("application/dicom", listed[0].params, listed[0].q)
        ]
        accept = accept if listed else ""
    content_type = listed[0].media_type if listed else ""
    if not content_type and "transferSyntax" in args:
        content_type = "application/dicom"  # a client naming a transfer syntax asks for the object, not an image
    if not content_type or content_type == "application/dicom":
        named = listed[0].params.get("transfer-syntax") if listed else None
        if named is not None:  # contentType=application/dicom;transfer-syntax=... asks as transferSyntax does
            if params.setdefault("transferSyntax", [named]) != [named]:
                raise BadRequest("contentType's transfer-syntax and transferSyntax differ")
        plan = planner.wado(
            params, render_default=not content_type, if_none_match=request.headers.get("If-None-Match", "")
        )
        if plan is not None and not content_type:
            content_type = text_rendering(services(), instance.ids.sop)  # PS3.18 Table 8.7.4-1, Text: text/html
        if plan is not None and content_type in ("", "application/dicom"):
            response = Response(status=plan.status)
            for name, value in plan.headers:
                response.headers[name] = value
            return response
        content_type = content_type or "image/jpeg"
    frame = parse_is(args.get("frameNumber", "1"), "frameNumber", low=1)  # an empty one is no frame: a 400
    accept = accept or content_type
    rendering = _rendering_of(args)
    try:
        return render_instance(
            services(),
            instance.ids.study,
            instance.ids.series,
            instance.ids.sop,
            frame,
            rendering,
            accept,
            whole="frameNumber" not in args,
        )
    except FrameNotFound as error:
        # PS3.18 9.5.2.1: a frameNumber past the instance's frames is a 400 here (WADO-RS's frames resource: 404)
        raise BadRequest(error.detail) from None


# The parameters PS3.18 9 defines for WADO-URI (9.1.2 and Table 9.1-1, 9.4, 9.5).
_WADO_PARAMETERS = (
    "requestType", "studyUID", "seriesUID", "objectUID", "contentType", "charset", "anonymize", "annotation", "rows",
    "columns", "region", "windowCenter", "windowWidth", "frameNumber", "imageQuality", "presentationUID",
    "presentationSeriesUID", "transferSyntax",
)

# What WADO-URI answers (PS3.18 9.3-9.5): the object, or a rendering of an image, an Encapsulated PDF or a report.
# text/html is not among them: a browser's page Accept names it first, and an image must still come as a JPEG.
_WADO_TYPES = ("application/dicom", "image/jpeg", "image/png", "image/gif", "application/pdf", "text/plain", "text/xml")


def _wado_choice(header: str) -> list[MediaRange]:
    """The Accept header's choice between the object and a rendering, when there is no ``contentType``: its ranges
    naming one of those types (or ``application/*``, the object), most preferred first, up to a wildcard or a
    refusal; none (the defaults) when a wildcard comes first or nothing fits. A browser's `<img>` or page Accept
    (image/avif, text/html... then `*/*`) keeps the defaults."""
    chosen: list[MediaRange] = []
    for media_range in parse_accept(header):
        if media_range.q == 0:
            break
        if media_range.media_type == "application/*":  # the object (an Encapsulated PDF: the PDF, its default)
            chosen.append(media_range)
        elif media_range.media_type.endswith("/*"):
            break
        elif media_range.media_type in _WADO_TYPES:
            chosen.append(media_range)
    return chosen


def _wado_types(planner: Planner, instance: CachedInstance) -> tuple[str, ...]:
    """The types WADO-URI answers this instance as (PS3.18 Table 8.7.4-1 by its resource category): the object
    always; a report's text, a PDF, or an image's renderings when its frames can be served."""
    kind = text_rendering(services(), instance.ids.sop)
    if kind == "text/html":
        return ("application/dicom", "text/html", "text/plain", "text/xml")
    if kind:
        return ("application/dicom", kind)
    if planner.renders(instance):
        return ("application/dicom", "image/jpeg", "image/png", "image/gif")
    return ("application/dicom",)


def _answers(media_range: MediaRange, answered: tuple[str, ...]) -> bool:
    if media_range.media_type == "*/*":
        return True
    if media_range.media_type.endswith("/*"):
        return any(media.startswith(media_range.media_type[:-1]) for media in answered)
    return media_range.media_type in answered


def _rendering_of(args: Mapping[str, str]) -> dict[str, str]:
    """WADO-URI's image parameters (PS3.18 9) as the rendering's: ``windowCenter`` and ``windowWidth`` (both or
    neither), ``imageQuality``, ``rows`` and ``columns`` (the most the image may have, aspect ratio kept) and
    ``region``. They were ignored: a viewer got another window, size or crop than it asked for, with a 200. What
    the gateway cannot do (a presentation state, burned-in annotation) is a 400 rather than an image that
    silently differs from the one asked for."""
    for name in ("annotation", "presentationUID", "presentationSeriesUID"):
        if name in args:
            raise BadRequest(f"{name} is not supported: frames are rendered without annotation or presentation state")
    if args.get("region") == "":
        raise BadRequest("region is empty")  # it rendered the whole frame, as if none were asked for
    params = {"region": args.get("region", "")}
    center, width = args.get("windowCenter"), args.get("windowWidth")
    if (center is None) != (width is None):
        raise BadRequest("windowCenter and windowWidth must be given together")
    # checked here, so an error names the parameters the client sent (it named the WADO-RS ones: window, quality)
    if center is not None and width is not None:
        # each a DICOM DS (PS3.18): PS3.5 pads one with leading or trailing spaces, as a file's Window Center
        # copied into a link is (`40 `), and `+40` unencoded reads ` 40`; they were a 400
        center, width = center.strip(" "), width.strip(" ")
        params["window"] = f"{center},{width}"
        try:
            if "," in center + width:  # one number each (a comma passed a window function on)
                raise BadRequest("not numbers")
            parse_window(params["window"])
        except BadRequest as error:
            reason = error.detail.removeprefix("window: ")
            if reason == error.detail:  # not two numbers at all
                reason = "center and width must be numbers"
            raise BadRequest(f"windowCenter and windowWidth: {reason}") from None
    if "imageQuality" in args:
        params["quality"] = str(parse_is(args["imageQuality"], "imageQuality", low=1, high=100))
    rows, columns = (parse_is(args[name], name, low=1) if name in args else INT32_MAX for name in ("rows", "columns"))
    if "rows" in args or "columns" in args:
        params["viewport"] = f"{columns},{rows}"
    return params
