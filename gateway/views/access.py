"""``GET /api/v1/admin/access`` (API key): the access audit trail, per study or subject over a time range, as JSON
or CSV (``format=csv`` or ``Accept: text/csv``). Rows come from NGINX's access log (``gateway.accesslog``)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from gateway.errors import BadRequest
from gateway.numbers import parse_int
from gateway.uids import check_uid
from gateway.views.common import check_params, require_api_key, services

bp = Blueprint("access", __name__, url_prefix="/api/v1/admin")

COLUMNS = ("id", "time", "sub", "jti", "via", "action", "method", "study_uid", "series_uid", "sop_uid", "status",
           "remote", "bytes")  # fmt: skip
PARAMS = {"study", "subject", "from", "to", "limit", "cursor", "format"}
MAX_JSON, MAX_CSV = 1000, 100_000
EPOCH_MAX = 2**40  # far beyond any date a log holds, and within the catalog's 64-bit integers


def instant(text: str, name: str) -> int:
    """Epoch seconds, or an ISO 8601 date-time (``2026-12-03T10:00:00Z``; without a zone: UTC)."""
    if text.isdigit():
        return parse_int(text, name, high=EPOCH_MAX)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name}: expected epoch seconds or an ISO 8601 date-time") from None
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())


def _wants_csv() -> bool:
    chosen = request.args.get("format", "")
    if chosen not in ("", "json", "csv"):
        raise BadRequest("format: expected json or csv")
    if chosen:
        return chosen == "csv"
    return request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"


def _cell(value: object) -> object:
    # a spreadsheet runs a cell starting with = + - @ as a formula: a subject is free text from the portal
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@bp.get("/access")
def access() -> Response:
    require_api_key()
    args = request.args
    check_params(args, PARAMS)
    as_csv = _wants_csv()
    ceiling = MAX_CSV if as_csv else MAX_JSON
    limit = parse_int(args.get("limit") or str(min(ceiling, 1000 if as_csv else 100)), "limit", low=1, high=ceiling)
    rows = services().catalog.access_records(
        study_uid=check_uid(args["study"], "study") if "study" in args else None,
        sub=args.get("subject") or None,
        since=instant(args["from"], "from") if "from" in args else None,
        until=instant(args["to"], "to") if "to" in args else None,
        before_id=parse_int(args["cursor"], "cursor", high=2**62) if "cursor" in args else None,
        limit=limit,
    )
    items: list[dict[str, Any]] = []
    for row in rows:
        item = {name: row.get(name) for name in COLUMNS}
        item["time"] = datetime.fromtimestamp(row["at"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        items.append(item)
    next_cursor = str(items[-1]["id"]) if len(items) == limit else None
    if not as_csv:
        response = jsonify(items=items, next_cursor=next_cursor)
    else:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        for item in items:
            writer.writerow([_cell(item[name]) for name in COLUMNS])
        response = Response(out.getvalue(), mimetype="text/csv")
        response.headers["Content-Type"] = "text/csv; charset=utf-8"
        response.headers["Content-Disposition"] = 'attachment; filename="access.csv"'
    response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = "Accept"
    return response
