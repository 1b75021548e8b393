"""Issue 11, defects 3 and 11, through the real NGINX: the Authorization header as a fourth token transport, the
rule for a request carrying several credentials (README, Tokens, "Transports"), the unmodified dicomweb_client
command-line tool (which always sends ``Authorization: Bearer None``) on a token root, Orthanc-style STOW with a
bearer write token to the plain root, and correctly signed tokens with odd claims (401, never 503)."""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from gateway.tokens import MAX_TOKEN_LENGTH, SALTS, TokenService, _TimestampSerializer
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack

CLI = Path(sys.executable).parent / "dicomweb_client"
_SEEDS = itertools.count(1100)  # one synthetic study per test, unique within the session


def assert_refused(answer: requests.Response, status: int, code: str) -> None:
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    # the auth step's refusal, as Python writes it: the error's own code and its detail
    body = answer.json()
    assert (body["error"], set(body), type(body["detail"])) == (code, {"error", "detail"}, str), body


def study_uids(answer: requests.Response) -> set[str]:
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["Content-Type"] == "application/dicom+json"
    return {item["0020000D"]["Value"][0] for item in answer.json()}


@pytest.fixture(scope="module")
def ct(synthetic: dict[str, Any]) -> tuple[str, str, str]:
    return uids_of(synthetic["ct"][0])


@pytest.fixture(scope="module")
def mr(synthetic: dict[str, Any]) -> tuple[str, str, str]:
    return uids_of(synthetic["mr"][0])


# -- the Authorization header as a transport -------------------------------------------------------------------------


def test_bearer_none_next_to_each_token_transport(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    """What dicomweb_client sends; and a portal's own JWT, and Basic: not ours, ignored next to a token."""
    study, series, _ = ct
    token = stack.issue([study])["token"]
    path = f"/dicomweb/studies/{study}/series/{series}/instances"
    for foreign in ("Bearer None", "Basic dXNlcjpwYXNz", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"):
        headers = {"Authorization": foreign}
        answers = [
            requests.get(f"{stack.root(token)}{path[len('/dicomweb') :]}", headers=headers, timeout=10),
            requests.get(f"{stack.url}{path}", params={"token": token}, headers=headers, timeout=10),
            requests.get(f"{stack.url}{path}", cookies={"dicomgw_token": token}, headers=headers, timeout=10),
        ]
        for answer in answers:
            assert answer.status_code == 200, (foreign, answer.text[:300])
            assert answer.headers["Content-Type"] == "application/dicom+json"
            assert len(answer.json()) == 6
        # alone it is no credential: 401, as before
        assert_refused(requests.get(f"{stack.url}{path}", headers=headers, timeout=10), 401, "token_invalid")


def test_bearer_token_alone_reads_and_scopes_qido(
    stack: RunningStack, synthetic: dict[str, Any], ct: tuple[str, str, str]
) -> None:
    study, series, sop = ct
    _, series_b, _ = uids_of(synthetic["ct_b"][0])
    bearer = {"Authorization": f"Bearer {stack.issue([study])['token']}"}
    assert study_uids(requests.get(f"{stack.url}/dicomweb/studies", headers=bearer, timeout=10)) == {study}
    frame = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1",
        headers={**bearer, "Accept": "application/octet-stream"},
        timeout=10,
    )
    assert frame.status_code == 200
    assert frame.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert frame.content == pydicom.dcmread(synthetic["ct"][0]).PixelData
    # a series token in the header: QIDO inside the study lists only its series
    narrow = {"Authorization": f"Bearer {stack.issue([study], series=[series])['token']}"}
    listed = requests.get(f"{stack.url}/dicomweb/studies/{study}/series", headers=narrow, timeout=10)
    assert listed.status_code == 200
    assert [s["0020000E"]["Value"][0] for s in listed.json()] == [series]
    assert_refused(
        requests.get(f"{stack.url}/dicomweb/studies/{study}/series/{series_b}/instances", headers=narrow, timeout=10),
        403,
        "out_of_scope",
    )


def test_two_tokens_get_what_both_allow(
    stack: RunningStack, synthetic: dict[str, Any], ct: tuple[str, str, str], mr: tuple[str, str, str]
) -> None:
    """Path token for CT and MR, bearer token for CT only: QIDO (Flask) lists CT only, MR paths are 403."""
    study, series, _ = ct
    both = stack.issue([study, mr[0]])["token"]
    ct_only = {"Authorization": f"Bearer {stack.issue([study])['token']}"}
    assert study_uids(requests.get(f"{stack.root(both)}/studies", timeout=10)) == {study, mr[0]}
    assert study_uids(requests.get(f"{stack.root(both)}/studies", headers=ct_only, timeout=10)) == {study}
    assert_refused(
        requests.get(f"{stack.root(both)}/studies/{mr[0]}/series/{mr[1]}/instances", headers=ct_only, timeout=10),
        403,
        "out_of_scope",
    )


# -- writes: Orthanc's DICOMweb plugin STOWs to the plain root with HttpHeaders {Authorization: Bearer <token>} ---


@pytest.fixture
def fresh_study(tmp_path: Path) -> list[Path]:
    return make_series(tmp_path, modality="CT", slices=2, seed=next(_SEEDS), clean=True)


def test_stow_with_a_bearer_write_token_to_the_plain_root(stack: RunningStack, fresh_study: list[Path]) -> None:
    study = uids_of(fresh_study[0])[0]
    root = f"{stack.url}/dicomweb"
    read_only = stack.issue([study])["token"]
    refused = stack.stow(fresh_study, root=root, Authorization=f"Bearer {read_only}")
    assert_refused(refused, 403, "insufficient_scope")  # RFC 6750 3.1: the token is good, its actions are not enough
    in_path = stack.stow(fresh_study, root=stack.root(read_only))
    assert_refused(in_path, 403, "insufficient_scope")
    writer = stack.issue([study], actions=["write"])["token"]
    stored = stack.stow(fresh_study, root=root, Authorization=f"Bearer {writer}")
    assert stored.status_code == 200, stored.text[:300]
    assert stored.headers["Content-Type"] == "application/dicom+json"
    assert len(stored.json()["00081199"]["Value"]) == 2
    reader = {"Authorization": f"Bearer {read_only}"}
    listed = requests.get(f"{root}/studies", params={"StudyInstanceUID": study}, headers=reader, timeout=10)
    assert study_uids(listed) == {study}


def test_stow_with_two_write_tokens_stores_only_what_both_allow(stack: RunningStack, fresh_study: list[Path]) -> None:
    study = uids_of(fresh_study[0])[0]
    writer = stack.issue([study], actions=["read", "write"])["token"]
    other_writer = stack.issue(["1.2.3.4.5.6"], actions=["write"])["token"]
    # POST /studies names no study, so both pass NGINX's check; the Python side stores within the intersection
    mixed = stack.stow(fresh_study, root=stack.root(writer), Authorization=f"Bearer {other_writer}")
    assert mixed.status_code == 409, mixed.text[:300]
    assert mixed.headers["Content-Type"] == "application/dicom+json"
    assert len(mixed.json()["00081198"]["Value"]) == 2
    listed = requests.get(f"{stack.root(writer)}/studies", params={"StudyInstanceUID": study}, timeout=10)
    assert study_uids(listed) == set()
    # dicomweb_client's "Bearer None" next to the write path token: the path token alone decides
    stored = stack.stow(fresh_study, root=stack.root(writer), Authorization="Bearer None")
    assert stored.status_code == 200, stored.text[:300]
    listed = requests.get(f"{stack.root(writer)}/studies", params={"StudyInstanceUID": study}, timeout=10)
    assert study_uids(listed) == {study}


def test_dicomweb_client_api_with_a_bearer_header_on_the_plain_root(
    stack: RunningStack, fresh_study: list[Path]
) -> None:
    """dicomweb-client's own configuration (and Orthanc's HttpHeaders): the token in the header, no token root."""
    dataset = pydicom.dcmread(fresh_study[0])
    token = stack.issue([dataset.StudyInstanceUID], actions=["read", "write"])["token"]
    client = DICOMwebClient(url=f"{stack.url}/dicomweb", headers={"Authorization": f"Bearer {token}"})
    response = client.store_instances([dataset])
    assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dataset.SOPInstanceUID
    assert "FailedSOPSequence" not in response
    second = pydicom.dcmread(fresh_study[1])  # to /studies/{study}: the location that hands POSTs to Python
    response = client.store_instances([second], study_instance_uid=second.StudyInstanceUID)
    assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == second.SOPInstanceUID
    [found] = client.search_for_studies()
    assert found["0020000D"]["Value"] == [dataset.StudyInstanceUID]
    assert len(client.search_for_instances(dataset.StudyInstanceUID)) == 2
    got = client.retrieve_instance(dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID)
    assert got.PixelData == dataset.PixelData


# -- the dicomweb_client command-line tool, unmodified, on a token root -------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120, check=False)


def test_dicomweb_client_cli_on_a_token_root(
    stack: RunningStack, synthetic: dict[str, Any], ct: tuple[str, str, str], tmp_path: Path
) -> None:
    """It sends "Authorization: Bearer None" with every request (no --bearer-token given): once always 401."""
    study, series, sop = ct
    root = stack.root(stack.issue([study])["token"])
    found = run_cli("--url", root, "search", "studies")
    assert found.returncode == 0, found.stderr[-2000:]
    assert [item["0020000D"]["Value"][0] for item in json.loads(found.stdout)] == [study]
    metadata = run_cli(
        "--url", root, "retrieve", "instances", "--study", study, "--series", series, "--instance", sop, "metadata"
    )
    assert metadata.returncode == 0, metadata.stderr[-2000:]
    assert json.loads(metadata.stdout)["00080018"]["Value"] == [sop]
    saved = run_cli(
        "--url",
        root,
        "retrieve",
        "instances",
        "--study",
        study,
        "--series",
        series,
        "--instance",
        sop,
        "full",
        "--save",
        "--output-dir",
        str(tmp_path),
    )
    assert saved.returncode == 0, saved.stderr[-2000:]
    [written] = list(tmp_path.iterdir())
    assert pydicom.dcmread(written).PixelData == pydicom.dcmread(synthetic["ct"][0]).PixelData
    # and its --bearer-token option, on the plain root
    bearer = run_cli(
        "--url",
        f"{stack.url}/dicomweb",
        "--bearer-token",
        stack.issue([study])["token"],
        "search",
        "series",
        "--study",
        study,
    )
    assert bearer.returncode == 0, bearer.stderr[-2000:]
    assert series in {item["0020000E"]["Value"][0] for item in json.loads(bearer.stdout)}


# -- the rule for several credentials, pairwise over the transports, through NGINX ----------------------------------

STATES = ("in", "out", "expired", "revoked", "tampered")
AUTH_STATES = (*STATES, "foreign", "apikey")
TRANSPORTS = ("path", "query", "auth", "cookie")
FAILING = {"expired": "token_expired", "revoked": "token_revoked", "tampered": "token_invalid"}


@dataclass
class Credentials:
    values: dict[str, str]
    ct_study: str
    mr_study: str
    every_study: set[str]


@pytest.fixture(scope="module")
def credentials(stack: RunningStack, ct: tuple[str, str, str], mr: tuple[str, str, str]) -> Iterator[Credentials]:
    signer = TokenService((stack.stack.signing_key,), 3600)
    good = stack.issue([ct[0]], sub="matrix-in")["token"]
    revoked = stack.issue([ct[0]], sub="matrix-revoked")
    values = {
        "in": good,
        "out": stack.issue([mr[0]], sub="matrix-out")["token"],
        "expired": signer.issue(sub="matrix-expired", studies=[ct[0]], ttl=60, now=int(time.time()) - 600).token,
        "revoked": revoked["token"],
        # a signature character flipped (a middle one: the last also carries padding bits)
        "tampered": good[:-10] + ("A" if good[-10] != "A" else "B") + good[-9:],
        "foreign": "None",
        "apikey": stack.stack.api_key,
    }
    answer = requests.post(f"{stack.url}/api/v1/tokens/{revoked['jti']}/revoke", headers=stack.api_headers, timeout=10)
    assert answer.status_code == 204
    revoked_at = time.monotonic()
    url = f"{stack.url}/dicomweb/studies/{ct[0]}/series/{ct[1]}/instances"
    probe = {"Authorization": f"Bearer {revoked['token']}", "X-Probe": "1"}
    deadline = revoked_at + 15
    while requests.get(url, headers=probe, timeout=10).status_code != 401:
        assert time.monotonic() < deadline, "the revocation did not take effect"
        time.sleep(0.2)
    # the README's bound: every gunicorn worker reloads the list within DICOMGW_REVOCATION_REFRESH (2 s), and a
    # decision a stale worker gave just before that lives on in NGINX's cache for DICOMGW_AUTH_CACHE_SECONDS (2 s)
    time.sleep(max(0.0, revoked_at + 4.5 - time.monotonic()))
    every = study_uids(requests.get(f"{stack.url}/dicomweb/studies", headers=stack.api_headers, timeout=10))
    yield Credentials(values, ct[0], mr[0], every)


def combinations() -> Iterator[dict[str, str]]:
    """No credential; each transport alone in each state; every pair of transports in every pair of states."""
    yield {}
    for transport in TRANSPORTS:
        for state in AUTH_STATES if transport == "auth" else STATES:
            yield {transport: state}
    for first, second in itertools.combinations(TRANSPORTS, 2):
        for one in AUTH_STATES if first == "auth" else STATES:
            for two in AUTH_STATES if second == "auth" else STATES:
                yield {first: one, second: two}


def expected(states: dict[str, str], target: str, creds: Credentials) -> tuple[int, str | set[str]]:
    """The README's rule, written out independently of gateway.auth."""
    explicit = [
        t
        for t in ("path", "query", "auth")
        if t in states and not (t == "auth" and states[t] in ("foreign", "tampered"))
    ]
    counted = explicit or (["cookie"] if "cookie" in states else [])
    if not counted:
        return 401, "token_invalid" if "auth" in states else "token_missing"
    visible = set(creds.every_study)
    for transport in counted:  # transport order: the first refusal answers
        state = states[transport]
        if state in FAILING:
            return 401, FAILING[state]
        if state == "out" and target == "series":
            return 403, "out_of_scope"
        if state in ("in", "out"):
            visible &= {creds.ct_study if state == "in" else creds.mr_study}
    return 200, visible


def send(stack: RunningStack, states: dict[str, str], values: dict[str, str], path: str) -> requests.Response:
    url = f"{stack.url}/t/{values[states['path']]}{path}" if "path" in states else f"{stack.url}{path}"
    params = {"token": values[states["query"]]} if "query" in states else None
    headers = {"Authorization": f"Bearer {values[states['auth']]}"} if "auth" in states else {}
    if "cookie" in states:
        headers["Cookie"] = f"dicomgw_token={values[states['cookie']]}"
    return requests.get(url, params=params, headers=headers, timeout=10)


@pytest.mark.parametrize("target", ["series", "search"])
def test_credential_matrix(
    stack: RunningStack, credentials: Credentials, ct: tuple[str, str, str], target: str
) -> None:
    """Every answer is exactly the rule's, and an allowed one never shows more than each counted credential alone:
    for the QIDO search, the studies listed are the intersection of what each one alone lists."""
    path = "/dicomweb/studies" if target == "search" else f"/dicomweb/studies/{ct[0]}/series/{ct[1]}/instances"
    checked = 0
    for states in combinations():
        status, outcome = expected(states, target, credentials)
        answer = send(stack, states, credentials.values, path)
        if status != 200:
            assert isinstance(outcome, str)
            assert answer.status_code == status, (states, answer.status_code, answer.text[:200])
            assert_refused(answer, status, outcome)
        elif target == "search":
            assert study_uids(answer) == outcome, states
        else:
            assert answer.status_code == 200, (states, answer.text[:200])
            assert answer.headers["Content-Type"] == "application/dicom+json"
            assert len(answer.json()) == 6
        checked += 1
    assert checked == 1 + 5 * 3 + 7 + 3 * 25 + 3 * 35


# -- no log line holds an Authorization value ---------------------------------------------------------------------


def test_bearer_token_never_in_any_log(stack: RunningStack, ct: tuple[str, str, str], mr: tuple[str, str, str]) -> None:
    study, series, sop = ct
    token = stack.issue([study], sub="bearer-audit")["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    base = f"{stack.url}/dicomweb/studies/{study}/series/{series}"
    assert requests.get(f"{base}/instances", headers=bearer, timeout=10).status_code == 200
    assert requests.get(f"{base}/instances/{sop}/frames/1", headers=bearer, timeout=10).status_code == 200
    assert requests.get(f"{stack.url}/dicomweb/studies/{mr[0]}", headers=bearer, timeout=10).status_code == 403
    assert requests.get(f"{stack.url}/api/v1/admin/quarantine", headers=bearer, timeout=10).status_code == 403
    tampered = {"Authorization": f"Bearer {token[:-10]}{'A' if token[-10] != 'A' else 'B'}{token[-9:]}"}
    assert requests.get(f"{base}/instances", headers=tampered, timeout=10).status_code == 401
    stack.settle_access_log()
    logs = [stack.stack.access_log, stack.stack.error_log, *sorted((stack.stack.var_dir / "logs").iterdir())]
    for log in logs:
        text = log.read_text(errors="replace")
        assert token not in text, log
        assert token.split(".")[-1] not in text, log  # not even the signature
        assert stack.stack.api_key not in text, log
    entries = [e for e in stack.access_log() if e["sub"] == "bearer-audit"]
    # the out-of-scope refusal names the token it refused (the audit's who); the tampered one names nobody
    assert [e["status"] for e in entries] == [200, 200, 403]
    assert all(e["uri"].startswith("/dicomweb/") for e in entries)


# -- Issue 11, defect 11: correctly signed tokens with odd claims are 401, never 503 -------------------------------


def _signed(stack: RunningStack, payload: Any, purpose: str = "read", stamp: int | None = None) -> str:
    serializer = _TimestampSerializer(
        [stack.stack.signing_key],
        salt=SALTS[purpose],
        signer_kwargs={"digest_method": hashlib.sha256},
        now=int(time.time()) if stamp is None else stamp,
    )
    token = serializer.dumps(payload)
    assert isinstance(token, str) and len(token) <= MAX_TOKEN_LENGTH
    return token


def odd_payloads(study: str) -> list[Any]:
    good = {"v": 1, "s": "odd", "st": [study], "a": "rw", "t": 600, "j": "odd-jti"}
    return [
        {**good, "t": float("inf")},
        {**good, "t": float("nan")},
        {**good, "t": -(10**30)},
        {**good, "t": 6.0e2},
        {**good, "s": "odd\r\nX-Injected: 1"},
        {**good, "s": "odd\n"},
        {**good, "s": {"nested": {"deeper": [1, 2]}}},
        {**good, "s": 10**40},
        {**good, "j": "a\r\nb"},
        {**good, "j": ["x"]},
        {**good, "st": study},
        {**good, "st": [study + "\n"]},
        {**good, "st": [[study]]},
        {**good, "st": [{"uid": study}]},
        {**good, "a": ["r", "w"]},
        {**good, "v": True},
        {**good, "v": 10**100},
        {**good, "extra": {"a": [1, {"b": None}]}},
        [good],
        "odd",
        None,
    ]


def test_signed_odd_claims_are_401_never_503(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    study, series, _ = ct
    rel = f"/studies/{study}/series/{series}/instances"
    path = f"/dicomweb{rel}"
    tokens = [_signed(stack, payload) for payload in odd_payloads(study)]
    tokens += [_signed(stack, payload, "write") for payload in odd_payloads(study)[:6]]
    good = {"v": 1, "s": "odd", "st": [study], "a": "r", "t": 600, "j": "odd-jti"}
    tokens += [_signed(stack, good, stamp=2**40), _signed(stack, good, stamp=2**64 - 1)]  # signed times past 9999
    assert requests.get(f"{stack.root(_signed(stack, good))}{rel}", timeout=10).status_code == 200  # the base
    for token in tokens:
        for answer in (
            requests.get(f"{stack.root(token)}{rel}", timeout=10),
            requests.get(f"{stack.url}{path}", params={"token": token}, timeout=10),
            requests.get(f"{stack.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10),
            requests.get(f"{stack.url}{path}", cookies={"dicomgw_token": token}, timeout=10),
            requests.post(
                f"{stack.url}/dicomweb/studies",
                data=b"x",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/dicom"},
                timeout=10,
            ),
        ):
            assert_refused(answer, 401, "token_invalid")
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200


# -- the query token is read raw, as NGINX keys its decision cache ------------------------------------------------


def raw_get(stack: RunningStack, path: str) -> tuple[int, str, bytes]:
    """A GET with the URI exactly as given (requests would decode ``%74`` into ``t``)."""
    parsed = urlparse(stack.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def test_an_encoded_token_parameter_is_no_token(stack: RunningStack, ct: tuple[str, str, str]) -> None:
    """``%74oken=`` was decoded by Python (allowed) while NGINX's cache key saw no token: for the next seconds a
    request without any credential got that cached 204."""
    study, series, _ = ct
    token = stack.issue([study])["token"]
    path = f"/dicomweb/studies/{study}/series/{series}/instances"
    missing = {"error": "token_missing", "detail": "no token in the path, the query, the Authorization header"
               " or the cookie"}
    for uri in (f"{path}?%74oken={token}", f"{path}?tok%65n={token}", path):
        status, content_type, body = raw_get(stack, uri)
        assert (status, content_type, json.loads(body)) == (401, "application/json", missing), uri


def test_cors_preflight_allows_the_authorization_header(stack: RunningStack) -> None:
    """A browser viewer (OHIF with a bearer token) must be allowed to send it cross-origin."""
    preflight = requests.options(
        f"{stack.url}/dicomweb/studies",
        headers={
            "Origin": "https://portal.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://portal.example"
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert "authorization" in allowed
