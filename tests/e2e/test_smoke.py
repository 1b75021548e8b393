"""The minimum every backend must do: client → NGINX → gunicorn → storage and back, with exact bytes."""

from __future__ import annotations

import hashlib
from typing import Any

import requests

from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack


def test_readyz_through_nginx(stack: RunningStack) -> None:
    answer = requests.get(f"{stack.url}/readyz", timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"checks": {"catalog": "ok", "storage": "ok"}, "status": "ok"}
    assert answer.headers["Referrer-Policy"] == "no-referrer"


def test_instance_round_trip_exact_bytes(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    path = synthetic["ct"][0]
    study, series, sop = uids_of(path)
    token = stack.issue([study])["token"]
    answer = requests.get(
        f"{stack.root(token)}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom"},
        timeout=30,
    )
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/dicom"
    assert hashlib.sha256(answer.content).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert answer.headers["ETag"].startswith('"')


def test_metrics_count_decisions_across_workers(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    study = uids_of(synthetic["ct"][0])[0]
    requests.get(f"{stack.url}/dicomweb/studies", timeout=10)  # no token: a 401 decision
    token = stack.issue([study])["token"]
    requests.get(f"{stack.root(token)}/studies", timeout=10)  # a 204 decision
    answer = requests.get(f"{stack.url}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert answer.headers["Referrer-Policy"] == "no-referrer"  # README: on every answer
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in answer.text.splitlines()
        if line.startswith("dicomgw_auth_decisions_total{")
    }
    assert samples['dicomgw_auth_decisions_total{outcome="204"}'] >= 1
    assert samples['dicomgw_auth_decisions_total{outcome="401"}'] >= 1
    assert any(line.startswith("dicomgw_ingested_instances_total{") for line in answer.text.splitlines())


def test_root_redirects_to_the_viewer_with_the_headers_of_every_answer(stack: RunningStack) -> None:
    answer = requests.get(f"{stack.url}/", allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    assert answer.headers["Location"] == "viewer/"  # relative: under a proxy's path prefix too
    # a redirect needs no body: NGINX's own was an HTML page ("302 Found", text/html) where JSON is the rule
    assert (answer.content, answer.headers.get("Content-Length")) == (b"", "0")
    assert "Content-Type" not in answer.headers
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "Strict-Transport-Security" not in answer.headers  # plain HTTP: HSTS is for TLS answers only


def test_nginxs_directory_redirect_in_the_viewer_has_no_body(stack: RunningStack) -> None:
    """``/viewer/assets`` (a folder of the viewer, asked without its slash): NGINX's 301 to ``/viewer/assets/`` came
    with its HTML page; it is now empty, with the headers of every answer."""
    answer = requests.get(f"{stack.url}/viewer/assets", allow_redirects=False, timeout=10)
    assert answer.status_code == 301 and answer.headers["Location"] == "/viewer/assets/"
    assert (answer.content, answer.headers.get("Content-Length")) == (b"", "0")
    assert "Content-Type" not in answer.headers
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    head = requests.head(f"{stack.url}/", allow_redirects=False, timeout=10)
    assert head.status_code == 302 and head.headers["Location"] == "viewer/"


def test_the_viewer_address_without_its_slash_redirects_to_the_viewer(stack: RunningStack) -> None:
    """``/viewer`` (the address as a user types it) was the JSON 404 of an unknown path: it is a 301 to ``/viewer/``
    with no body, its query string kept (a browser keeps the fragment, where the viewer's link holds its token).
    Only ``/viewer`` itself: the path-token form and any other path stay what they were."""
    for suffix, kept in [("", ""), ("?study=1.2.3&x=a%20b", "?study=1.2.3&x=a%20b")]:
        for method in ("GET", "HEAD"):
            answer = requests.request(method, f"{stack.url}/viewer{suffix}", allow_redirects=False, timeout=10)
            assert answer.status_code == 301, (method, suffix, answer.status_code, answer.text)
            assert answer.headers["Location"] == f"viewer/{kept}"
            assert (answer.content, answer.headers.get("Content-Length")) == (b"", "0")
            assert "Content-Type" not in answer.headers
            assert answer.headers["Referrer-Policy"] == "no-referrer"
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
    followed = requests.get(f"{stack.url}/viewer", timeout=10)
    assert followed.status_code == 200 and followed.url == f"{stack.url}/viewer/"
    assert followed.headers["Content-Type"].startswith("text/html")
    for path in ("/t/abc/viewer", "/viewers", "/viewer.html", "/dicomweb/viewer"):
        other = requests.get(f"{stack.url}{path}", allow_redirects=False, timeout=10)
        assert other.status_code in (401, 404) and "Location" not in other.headers, (path, other.status_code)
        assert other.headers["Content-Type"] == "application/json", path


def test_the_apis_root_is_a_json_404_and_the_redirecting_pages_refuse_other_methods(stack: RunningStack) -> None:
    """``/api/v1`` (the token API's root, as a user probing it types it) was NGINX's HTML 301 page to ``/api/v1/``,
    a POST alike, and ``/api/v1/`` the 404 "ask for it without the trailing '/'": it is now the JSON 404 itself.
    ``/`` and ``/viewer`` redirected every method (a PUT or DELETE to be sent again to ``/viewer/``, which refuses
    it): another method than GET and HEAD is now their JSON 405 with ``Allow: GET, HEAD``, as ``/viewer/``'s is
    (RFC 9110 15.5.6)."""
    for method in ("GET", "HEAD", "POST", "DELETE"):
        answer = requests.request(method, f"{stack.url}/api/v1", allow_redirects=False, timeout=10)
        assert (answer.status_code, answer.headers["Content-Type"]) == (404, "application/json"), method
        assert "Location" not in answer.headers, method
        if method != "HEAD":
            assert answer.json() == {"error": "not_found", "detail": "no such resource"}, method
    for path in ("/", "/viewer", "/viewer/"):
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            answer = requests.request(method, f"{stack.url}{path}", allow_redirects=False, timeout=10)
            seen = (answer.status_code, answer.headers.get("Allow"), answer.headers.get("Location"))
            assert seen == (405, "GET, HEAD", None), (path, method, seen)
            assert answer.json() == {"error": "method_not_allowed", "detail": "method not allowed here"}


def test_nginxs_redirects_behind_a_proxy_keep_the_address_the_browser_used(stack: RunningStack) -> None:
    """Behind the ALB (TLS ended there, NGINX listening on 8080: terraform/ecs.tf) a browser at https://host/ was sent
    to http://host:8080/viewer/ (NGINX's absolute Location names its own scheme and port), which nothing answers.
    The Location of each redirect NGINX makes is now relative: resolved against the URL the browser used."""
    behind = {"Host": "dicom.example.org", "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443"}
    for path, status, location in [
        ("/", 302, "viewer/"),
        ("/viewer?x=1", 301, "viewer/?x=1"),
        ("/viewer/assets", 301, "/viewer/assets/"),
    ]:
        answer = requests.get(f"{stack.url}{path}", headers=behind, allow_redirects=False, timeout=10)
        assert (answer.status_code, answer.headers["Location"]) == (status, location), path
