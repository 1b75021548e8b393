"""Issue 13: no credential at rest, none in any log. A full workload through the real stack (token issue, reads
through all four transports, the WebView cookie exchange, STOW with the API key, revocation, refusals NGINX answers
itself, a storage object gone, a killed gunicorn), then every file under the stack's folder (cache, logs, catalog,
spool, rendered configuration) is searched for each credential used, raw and URL-encoded: none may be found.

The API key comes from the environment here (as in compose and ECS), so the stack writes no key file of its own:
the key store is the deployment's secret store, not the stack's folder."""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pydicom
import pytest
import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.fixtures.servers import MotoServer


@pytest.fixture(params=["file", "s3"])
def own_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStack]:
    moto: MotoServer | None = request.getfixturevalue("moto_server") if request.param == "s3" else None
    api_key = secrets.token_urlsafe(32)
    running = start_stack(
        tmp_path / "var", request.param, moto, DICOMGW_API_KEYS=f"portal:{api_key}", DICOMGW_AUTH_CACHE_SECONDS="2"
    )
    try:
        yield running
    finally:
        running.stack.stop()


def forms(credential: str) -> set[bytes]:
    """The credential as it could be written: raw, URL-encoded (query and form), and in a Bearer header."""
    return {credential.encode(), quote(credential, safe="").encode(), quote(credential).encode()}


def files_holding(root: Path, credentials: dict[str, str]) -> tuple[int, list[str]]:
    """(files searched, "name in path" for each credential found)."""
    found = []
    searched = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.is_socket():
            continue
        data = path.read_bytes()
        searched += 1
        for name, credential in credentials.items():
            if any(form in data for form in forms(credential)):
                found.append(f"{name} in {path.relative_to(root)}")
    return searched, found


def read_everything(stack: RunningStack, token: str, study: str, series: str, sop: str) -> None:
    """Reads through each transport: JSON (Flask), plans (NGINX cache) and frames (SSI), plus the cookie
    exchange. Every answer is checked, so the workload really ran."""
    rel = f"/studies/{study}/series/{series}/instances/{sop}"
    paths = [
        (f"{rel}/metadata", "application/dicom+json", 200),
        (f"{rel}/frames/1", "application/octet-stream", 200),
        (rel, "application/dicom", 200),
    ]
    for path, accept, status in paths:
        answers = [
            requests.get(f"{stack.root(token)}{path}", headers={"Accept": accept}, timeout=30),
            requests.get(
                f"{stack.url}/dicomweb{path}", params={"token": token}, headers={"Accept": accept}, timeout=30
            ),
            requests.get(
                f"{stack.url}/dicomweb{path}",
                headers={"Accept": accept, "Authorization": f"Bearer {token}"},
                timeout=30,
            ),
            requests.get(
                f"{stack.url}/dicomweb{path}", cookies={"dicomgw_token": token}, headers={"Accept": accept}, timeout=30
            ),
        ]
        for answer in answers:
            assert answer.status_code == status, (path, answer.status_code, answer.text[:200])
    exchanged = requests.get(
        f"{stack.url}/api/v1/session", params={"token": token, "next": "/viewer/"}, allow_redirects=False, timeout=10
    )
    assert exchanged.status_code == 303
    assert exchanged.cookies.get("dicomgw_token") == token  # the cookie carries it: searched for below too


def refusals(stack: RunningStack, token: str, study: str) -> None:
    """Answers NGINX gives itself (its error lines would quote the request line, token included)."""
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for url in (
        f"{stack.root(tampered)}/studies/{study}/series",
        f"{stack.url}/dicomweb/studies/{study}/series?token={tampered}",
    ):
        answer = requests.get(url, timeout=10)
        assert answer.status_code == 401, answer.text[:200]
        assert answer.headers["Content-Type"] == "application/json"
    noncanonical = requests.get(f"{stack.root(token)}/studies/{study}/%2e%2e/series", timeout=10)
    assert noncanonical.status_code == 400
    too_long = requests.get(f"{stack.root(token)}/studies/{study}/metadata?x={'a' * 9000}", timeout=10)
    assert too_long.status_code == 414
    missing = requests.get(f"{stack.root(token)}/studies/{study}/series/1.2.3/instances/4.5.6/frames/1", timeout=10)
    assert missing.status_code == 404


def test_no_credential_anywhere_under_the_stack(own_stack: RunningStack, tmp_path: Path) -> None:
    stack = own_stack
    files = make_series(tmp_path / "ct", modality="CT", slices=3, seed=1301 if stack.backend == "file" else 1302)
    study, series, sop = uids_of(files[0])
    stored = stack.stow(files)  # the API key in the Authorization header
    assert stored.status_code == 200, stored.text[:300]

    reader = stack.issue([study], sub="reader-1")
    read_everything(stack, reader["token"], study, series, sop)
    writer = stack.issue([study], actions=["read", "write"], sub="writer-1")
    again = stack.stow(files[:1], root=stack.root(writer["token"]))
    assert again.status_code == 200, again.text[:300]
    refusals(stack, reader["token"], study)

    # revocation: the refusal of a revoked token goes through the same logs
    revoked = stack.issue([study], sub="revoked-1")
    url = f"{stack.root(revoked['token'])}/studies/{study}/series"
    assert requests.get(url, timeout=10).status_code == 200
    answer = requests.post(f"{stack.url}/api/v1/tokens/{revoked['jti']}/revoke", headers=stack.api_headers, timeout=10)
    assert answer.status_code == 204
    env = stack.stack.extra_env
    time.sleep(float(env.get("DICOMGW_REVOCATION_REFRESH", "2")) + float(env["DICOMGW_AUTH_CACHE_SECONDS"]) + 0.5)
    assert requests.get(url, timeout=10).status_code == 401

    # storage failing under a read: the object is gone behind the catalog's back (NGINX's 404/abort paths)
    stack.storage().delete(stack_key(stack, sop))
    gone = requests.get(
        f"{stack.root(reader['token'])}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom"},
        timeout=30,
    )
    assert gone.status_code == 404, gone.text[:200]
    frame = f"{stack.root(reader['token'])}/studies/{study}/series/{series}/instances/{sop}/frames/1"
    if stack.backend == "file":  # the plan stats the object first (README): the whole object's JSON 404
        assert requests.get(frame, timeout=30).status_code == 404
    else:
        with pytest.raises(requests.ConnectionError):  # a composed body aborts rather than splice in an error
            requests.get(frame, timeout=30)

    # the gateway dies: every transport and the STOW now fail as 503, logged by NGINX without the request line
    stack.settle_access_log()
    stack.stack.kill("gunicorn")
    for headers, url in (
        ({}, f"{stack.root(reader['token'])}/studies/{study}/series"),
        ({}, f"{stack.url}/dicomweb/studies/{study}/series?token={reader['token']}"),
        ({"Authorization": f"Bearer {reader['token']}"}, f"{stack.url}/dicomweb/studies/{study}/series"),
        ({"Cookie": f"dicomgw_token={writer['token']}"}, f"{stack.url}/dicomweb/studies/{study}/series"),
    ):
        assert requests.get(url, headers=headers, timeout=10).status_code == 503
    assert stack.stow(files[:1]).status_code == 503
    issue = requests.post(f"{stack.url}/api/v1/tokens", json={"sub": "x"}, headers=stack.api_headers, timeout=10)
    assert issue.status_code == 503
    stack.settle_access_log()
    stack.stack.stop()  # every process flushed and gone: what is on disk now is all there is

    cache = stack.stack.nginx_dir / "cache" / "auth"
    cached = [p for p in cache.rglob("*") if p.is_file()]
    assert cached, "the workload never filled NGINX's auth cache: the search below would prove nothing"
    for path in cached:
        key_line = next(line for line in path.read_bytes().split(b"\n") if line.startswith(b"KEY: "))
        assert len(key_line) == len(b"KEY: ") + 64 and all(c in b"0123456789abcdef" for c in key_line[5:])
    log = stack.access_log()
    assert {"path", "query", "bearer", "cookie", "api-key"} <= {entry["via"] for entry in log}
    credentials = {
        "api key": stack.stack.api_key,
        "read token": reader["token"],
        "write token": writer["token"],
        "revoked token": revoked["token"],
    }
    searched, found = files_holding(stack.stack.var_dir, credentials)
    assert searched >= len(cached) + 5
    assert found == []


def stack_key(stack: RunningStack, sop: str) -> str:
    """The storage key of an instance, from the stack's catalog."""
    from gateway.catalog import Catalog

    catalog = Catalog(stack.stack.database_url)
    try:
        row: Any = catalog.get_instance(sop, with_metadata=False)
        assert row is not None
        return str(row.storage_key)
    finally:
        catalog.close()


def with_raw_value(ds: pydicom.Dataset, tag: int, vr: str, value: bytes) -> None:
    """``value`` as the file's bytes of element ``tag``, however invalid for ``vr`` (pydicom refuses to write it)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    value += b" " * (len(value) % 2)
    ds[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)  # type: ignore[assignment]


POLICY = """
version = "2026-12-06"
[destinations.local]
storage = "default"
region = "eu-west-1"
identifiable_allowed = true
[destinations.deid]
storage = "default"
region = "eu-west-1"
identifiable_allowed = false
[[rules]]
id = "research"
match = { tenant = "research" }
action = "deidentify"
destination = "deid"
[default]
action = "allow"
destination = "local"
"""


def test_no_value_of_a_hostile_file_in_any_log(tmp_path: Path) -> None:
    """A patient's name where the file's VR forbids it (a CS, an IS, as a broken modality or a hostile client
    writes one): pydicom's validation warning quoted it into the gateway's log (`UserWarning: Invalid value for VR
    CS: 'CANARY^HOSTILE'` when the image was rendered, `... VR IS: 'CANARY7'` when the PHI scanner read the file),
    and its warning about an unknown Specific Character Set quoted that (`Unknown encoding 'CANARY'`).
    The workload runs the PHI hooks (an allowed and a de-identified upload) and every read; then every file the
    stack wrote but the stored objects and the catalog (which hold the file as it was sent) is searched for it."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    running = start_stack(tmp_path / "var", "file", None, DICOMGW_DERIVATIVES="0", DICOMGW_PHI_POLICY=str(policy))
    try:
        (path,) = make_series(tmp_path / "ct", modality="CT", slices=1, rows=32, columns=32, seed=2701, clean=True)
        ds = pydicom.dcmread(path)
        with_raw_value(ds, 0x00281056, "CS", b"CANARY^HOSTILE")  # VOI LUT Function
        with_raw_value(ds, 0x00200013, "IS", b"CANARY7")  # Instance Number
        with_raw_value(ds, 0x00080005, "CS", b"CANARY")  # Specific Character Set: no term pydicom knows
        with warnings.catch_warnings():  # pydicom warns of that charset as it writes and reads the names
            warnings.simplefilter("ignore")
            ds.save_as(path)
            study, series, sop = uids_of(path)
        stored = running.stow([path])
        assert stored.status_code == 200, stored.text[:300]
        deidentified = running.stow([path], **{"X-DICOMGW-Tenant": "research", "X-DICOMGW-Region": "eu-west-1"})
        assert deidentified.status_code == 202, deidentified.text[:300]
        instance = f"{running.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        for suffix, accept in (
            ("/metadata", "application/dicom+json"),
            ("/rendered", "image/jpeg"),
            ("/frames/1/rendered", "image/png"),
            ("/thumbnail", "image/jpeg"),
            ("/frames/1", "application/octet-stream"),
        ):
            answer = requests.get(f"{instance}{suffix}", headers={"Accept": accept, **running.api_headers}, timeout=30)
            assert answer.status_code == 200, (suffix, answer.status_code, answer.text[:300])
        running.settle_access_log()
    finally:
        running.stack.stop()
    held = []
    for found in sorted(running.stack.var_dir.rglob("*")):
        relative = found.relative_to(running.stack.var_dir)
        the_store = relative.parts[0] == "objects" or found.name.startswith("catalog.db")
        if the_store or not found.is_file() or found.is_socket():
            continue
        data = found.read_bytes()
        held += [f"{word!r} in {relative}" for word in (b"CANARY", b"Canary") if word in data]
    assert held == [], held
