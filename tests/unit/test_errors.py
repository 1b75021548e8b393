"""gateway.errors: the one error map (``to_response``, ``to_auth_answer``), and NGINX's own JSON error bodies
speaking the same codes as Python for the same situation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway import errors
from gateway.errors import (
    BadRequest,
    CatalogUnavailable,
    GatewayError,
    InvalidPath,
    NotAcceptable,
    OutOfScope,
    RangeNotSatisfiable,
    TokenExpired,
    all_codes,
    to_auth_answer,
    to_response,
)
from gateway.tools.nginxconf import render
from gateway.tools.stack import Stack, free_port


def test_to_response_is_status_json_and_typed_headers() -> None:
    # no error is kept by a cache in front for another credential (a 404 is heuristically cacheable)
    typed = [("Content-Type", "application/json"), ("Cache-Control", "private, no-cache")]
    status, headers, body = to_response(NotAcceptable("nothing fits"))
    assert (status, headers) == (406, typed)
    assert json.loads(body) == {"error": "not_acceptable", "detail": "nothing fits"}
    status, headers, _ = to_response(RangeNotSatisfiable("beyond the end", length=1000))
    assert (status, headers) == (416, [*typed, ("Content-Range", "bytes */1000")])
    status, headers, _ = to_response(CatalogUnavailable("down"))
    assert (status, headers) == (503, [*typed, ("Retry-After", "5")])
    status, _, body = to_response(GatewayError())
    assert status == 500 and json.loads(body) == {"error": "internal_error", "detail": "internal_error"}


@pytest.mark.parametrize(
    ("error", "status"),
    [(TokenExpired("x"), 401), (OutOfScope("x"), 403), (CatalogUnavailable("x"), 500)],
)
def test_to_auth_answer(error: GatewayError, status: int) -> None:
    assert to_auth_answer(error) == (
        status,
        [("X-Dgw-Error", error.code), ("X-Dgw-Error-Detail", "x"), ("Content-Length", "0")],
    )


def test_the_auth_answer_names_the_detail_nginx_writes_as_python_does() -> None:
    """NGINX writes the auth step's 401 and 403 as ``{"error":"<code>","detail":"<detail>"}``, the detail as the auth
    answer gives it: JSON-escaped ASCII, so the body is the JSON Python writes for the same error (to_response)."""
    error = OutOfScope('a "quoted" \\ path\nover two lines, caf\u00e9')
    _, headers = to_auth_answer(error)
    detail = dict(headers)["X-Dgw-Error-Detail"]
    assert detail.isascii() and "\n" not in detail
    nginx_body = f'{{"error":"{dict(headers)["X-Dgw-Error"]}","detail":"{detail}"}}'
    assert json.loads(nginx_body) == json.loads(to_response(error)[2])


def test_a_refused_path_is_no_decision_nginx_keeps() -> None:
    """NGINX keys decisions by series: the refusal of one path's shape below it is not kept for the series; and it is
    the client's mistake, which NGINX answers as Python's 400 (X-Dgw-Error-Status), not as a refusal."""
    for error, code in ((InvalidPath("x"), "invalid_path"), (BadRequest("x"), "bad_request")):
        assert to_auth_answer(error) == (
            403,
            [
                ("X-Dgw-Error", code),
                ("X-Dgw-Error-Detail", "x"),
                ("Content-Length", "0"),
                ("X-Dgw-Error-Status", "400"),
                ("X-Accel-Expires", "0"),
            ],
        )


def test_codes_are_unique_per_class_and_not_nginx_only() -> None:
    assert {"bad_request", "unauthorized", "forbidden", "not_found", "storage_unavailable"} <= all_codes()
    assert not all_codes() & set(errors.NGINX_ONLY_CODES)


def nginx_error_codes(conf_d: Path) -> set[str]:
    """Every code NGINX writes into an ``{"error": ...}`` body: the literal ones and the ``$dgw_error_code`` map."""
    codes: set[str] = set()
    for path in conf_d.rglob("*.conf"):
        text = path.read_text()
        codes.update(re.findall(r"""'\{"error":"([a-z_]+)\"""", text))
        for block in re.findall(r"map \$status \$dgw_error_code \{(.*?)\}", text, re.S):
            codes.update(re.findall(r"^\s*(?:default|\d{3})\s+([a-z_]+);", block, re.M))
    return codes


def test_every_nginx_error_code_is_known_to_python_or_documented(tmp_path: Path) -> None:
    render(tmp_path / "conf", Stack(tmp_path / "var", port=free_port()).nginx_values())
    codes = nginx_error_codes(tmp_path / "conf" / "conf.d")
    assert {"gateway_unavailable", "storage_unavailable", "bad_request", "forbidden"} <= codes
    unknown = codes - all_codes() - set(errors.NGINX_ONLY_CODES)
    assert unknown == set(), f"NGINX answers codes Python does not know: {sorted(unknown)}"
    stale = set(errors.NGINX_ONLY_CODES) - codes
    assert stale == set(), f"documented as NGINX-only but not in the template: {sorted(stale)}"
