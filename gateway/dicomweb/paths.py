"""The DICOMweb URL grammar (PS3.18 10.4-10.6 resource paths): what a request path names, parsed once.

``split_token`` removes the ``/t/{token}`` path prefix (a credential transport of this gateway); ``parse_target``
normalises a path below ``/dicomweb`` into a ``Target`` (study, series, instance and what follows). Any doubt
about the path is a refusal: decode once; reject ``..``, ``//``, encoded slashes, backslashes, and UID segments
that are not ``[0-9.]{1,64}``. The auth decision (``gateway.auth``) and the read plans (``gateway.dicomweb.wado``)
both start here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.errors import BadRequest, InvalidPath
from gateway.uids import check_uid, is_uid


@dataclass(frozen=True)
class Target:
    """What a DICOMweb path names. ``study``/``series``/``instance`` are None above their level; ``rest`` is what
    follows the deepest UID (``""``, ``metadata``, ``frames/1,2``, ``bulkdata/7FE00010``, ``series``, ...)."""

    path: str  # below the DICOMweb root, e.g. /studies/1.2/series/3.4/metadata
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    rest: str = ""
    query: str = ""


def split_token(raw_uri: str) -> tuple[str | None, str]:
    """``/t/{token}/dicomweb/...`` → (token, ``/dicomweb/...``); other URIs unchanged."""
    if raw_uri.startswith("/t/"):
        end = raw_uri.find("/", 3)
        if end == -1:
            raise InvalidPath("token path prefix without a path")
        return raw_uri[3:end], raw_uri[end:]
    return None, raw_uri


def parse_target(path: str, query: str = "") -> Target:
    """Normalise and parse a path starting at ``/dicomweb``. Raises InvalidPath on anything ambiguous."""
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in path:
        raise InvalidPath("encoded slashes and backslashes are not allowed")
    decoded = unquote(path)
    if "%" in decoded or "\\" in decoded:
        raise InvalidPath("double-encoded paths are not allowed")
    if "//" in decoded or "/./" in decoded or decoded.endswith("/.") or ".." in decoded.split("/"):
        raise InvalidPath("path is not canonical")
    if not decoded.startswith("/dicomweb"):
        raise InvalidPath("not a DICOMweb path")
    below = decoded[len("/dicomweb") :]
    if below and not below.startswith("/"):
        raise InvalidPath("not a DICOMweb path")
    parts = [p for p in below.split("/") if p][:]
    study = series = instance = None
    i = 0
    if len(parts) >= 2 and parts[0] == "studies":
        study = _uid(parts[1])
        i = 2
        if len(parts) >= i + 2 and parts[i] == "series":
            series = _uid(parts[i + 1])
            i += 2
            if len(parts) >= i + 2 and parts[i] == "instances":
                instance = _uid(parts[i + 1])
                i += 2
    rest = "/".join(parts[i:])
    return Target(below or "/", study, series, instance, rest, query)


@dataclass(frozen=True)
class WadoObject:
    """The instance a WADO-URI query names (PS3.18 9.1.2.1). ``study`` and ``series`` are None when the query
    leaves them out or empty: the instance is then the one its SOP Instance UID names."""

    study: str | None
    series: str | None
    sop: str | None  # None: no objectUID (a 400 once the scope is checked)

    def required_sop(self) -> str:
        if self.sop is None:
            raise BadRequest("WADO-URI needs exactly one objectUID")
        return self.sop


def check_wado_request_type(params: Mapping[str, Sequence[str]]) -> None:
    """PS3.18 9.1.2.1.1: ``requestType`` is ``WADO``; the value is an ABNF quoted string, so case-insensitive
    (``wado`` from a hand-written portal link is the same request), any other a 400."""
    values = params.get("requestType") or []
    if len(values) != 1:
        raise BadRequest("WADO-URI needs exactly one requestType")
    if values[0].upper() != "WADO":
        raise BadRequest("requestType must be WADO")


def wado_object(params: Mapping[str, Sequence[str]]) -> WadoObject:
    """The UIDs of a WADO-URI query (its values decoded, blank ones kept or not). ``objectUID`` is required
    (``WadoObject.required_sop``); ``studyUID`` and ``seriesUID`` may be empty or left out, as Weasis sends them
    with its ``requireOnlySOPInstanceUID`` option: a SOP Instance UID is globally unique (PS3.18 9.1.2.1, the
    note to Table 9.1.2-1), the two others are there for archives that can only retrieve down a hierarchy.
    Raises BadRequest (InvalidUID for a value that is no UID)."""

    def named(name: str) -> str | None:
        values = [value for value in params.get(name, ()) if value]
        if len(values) > 1:
            raise BadRequest(f"WADO-URI needs exactly one {name}")
        return check_uid(values[0], name) if values else None

    return WadoObject(named("studyUID"), named("seriesUID"), named("objectUID"))


def _uid(segment: str) -> str:
    if not is_uid(segment):
        raise InvalidPath("a UID path segment is not a valid DICOM UID")
    return segment




def unknown_resource_detail(path: str) -> str:
    """What to tell a client whose path names no resource (a JSON 404; werkzeug's sentence said nothing useful).
    The path itself is never echoed: a client may have put a patient's name in it."""
    if len(path) > 1 and path.endswith("/"):
        # PS3.18 names every resource without one; /studies/ and /studies are distinct URIs (RFC 3986 6.2.4)
        return "no such resource: ask for it without the trailing '/' (.../studies, not .../studies/)"
    if path == "/dicomweb" or path.startswith("/dicomweb/"):
        return (
            "no such DICOMweb resource: the paths are /studies, /series, /instances and "
            "/studies/{study}[/series/{series}[/instances/{instance}]], with /metadata (each level), "
            "/frames/{n}, /bulkdata/{path}, /rendered and /thumbnail below them (PS3.18 10.4-10.6)"
        )
    return "no such resource"
