"""Direct-to-bucket uploads met as the outside world meets them (README "Direct uploads ... under `incoming/`"):
objects put under ``incoming/`` of a real S3 server (moto, a boto3 client like a user's), then ``dicom-gateway hooks
run-incoming`` and the Lambda handler (an S3 event as AWS sends it, keys URL-encoded) against a real stack on S3.

The reference is STOW-RS: a second stack, with the same policy, is sent the same files through STOW, and each object
is either stored and served exactly as that stack serves it (instance bytes, frames, metadata, QIDO), or left where
it was (or quarantined) with the reason STOW gives for the same bytes. Storage going away (before, during, after an
object) and a run killed half-way never lose a source that was not stored, never make half an instance visible, and
never end a run with a traceback as its only message; the next run completes what is left.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import pydicom
import pydicom.data
import pytest
import requests

from gateway.dicomweb.multipart import encode_multipart
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.fixtures.servers import MotoServer, StorageFaults
from tests.unit.test_phi_files import phi_dataset, write

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"

# Files other toolkits wrote, one of each kind: name -> frames to read (0: no pixel data)
OUTSIDE = {
    "CT_small.dcm": 1,  # explicit VR little endian, native
    "MR_small_bigendian.dcm": 1,  # explicit VR big endian
    "image_dfl.dcm": 1,  # deflated explicit VR little endian
    "JPEG2000.dcm": 1,  # JPEG 2000
    "SC_rgb_rle_2frame.dcm": 2,  # RLE, two frames
    "test-SR.dcm": 0,  # a Structured Report: no pixel data
}

# The region of the policy's destination: identifiable data is stored only by an upload that declares it, through
# STOW (X-DICOMGW-Region) and through incoming/ (x-amz-meta-dicomgw-region) alike.
REGION = "eu-west-1"
POLICY = f"""
version = "incoming-outside"

[destinations.main]
storage = "default"
region = "{REGION}"
identifiable_allowed = true

[[rules]]
id = "hold"
match = {{ tenant = "hold" }}
action = "quarantine"
reason = "held for review"

[[rules]]
id = "blocked"
match = {{ tenant = "blocked" }}
action = "reject"
reason = "this tenant may not upload"

[default]
action = "route"
destination = "main"
"""

NOT_P10 = "not a DICOM Part 10 file (no 'DICM' prefix after the 128-byte preamble)"
DIFFERENT_BYTES = "an instance with this SOP Instance UID and different content is already stored"


@dataclass
class Stacks:
    """The stack taking direct uploads (its storage reached through ``faults``, which a test can take away) and
    the STOW reference stack, both on the session's moto server; ``s3`` is a user's client of that server."""

    incoming: RunningStack
    reference: RunningStack
    faults: StorageFaults
    s3: Any
    bucket: str
    prefix: str
    work: Path

    def key(self, name: str) -> str:
        return f"{self.prefix}/incoming/{name}"

    def put(self, name: str, body: bytes, tenant: str | None = None) -> str:
        metadata = {"dicomgw-region": REGION, **({"dicomgw-tenant": tenant} if tenant else {})}
        self.s3.put_object(Bucket=self.bucket, Key=self.key(name), Body=body, Metadata=metadata)
        return self.key(name)

    def incoming_keys(self) -> list[str]:
        found: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/incoming/"
        ):
            found += [entry["Key"] for entry in page.get("Contents", [])]
        return sorted(found)

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.incoming.stack.gateway_env(), **self.incoming.stack.extra_env}

    RUN_INCOMING = (sys.executable, "-m", "gateway.cli", "hooks", "run-incoming")

    def start_run_incoming(self) -> subprocess.Popen[str]:
        """``dicom-gateway hooks run-incoming`` under way, for a test to act on while it runs."""
        return subprocess.Popen(
            self.RUN_INCOMING, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run_incoming(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.RUN_INCOMING,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def lambda_event(self, keys: list[str]) -> dict[str, Any]:
        """The Lambda handler run as Lambda runs it (its settings from the environment) on an S3 event shaped as
        AWS sends it: one record per object, keys URL-encoded ("+" for a space)."""
        records = [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": self.bucket}, "object": {"key": quote_plus(key, safe="/"), "size": 1}},
            }
            for key in keys
        ]
        code = (
            "import json, sys\nfrom gateway.lambda_handler import handler\n"
            "print(json.dumps(handler(json.load(sys.stdin))))"
        )
        run = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps({"Records": records}),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        answer: dict[str, Any] = json.loads(run.stdout)
        return answer


def results_of(run: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    """run-incoming's output: one JSON result per line, by key."""
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return {line["key"]: line for line in lines}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer) -> Iterator[Stacks]:
    base = tmp_path_factory.mktemp("incoming-outside")
    policy = base / "policy.toml"
    policy.write_text(POLICY)
    faults = StorageFaults(moto_server.endpoint)
    incoming = start_stack(
        base / "incoming", "s3", MotoServer(moto_server.process, faults.endpoint), DICOMGW_PHI_POLICY=str(policy)
    )
    try:
        reference = start_stack(base / "reference", "s3", moto_server, DICOMGW_PHI_POLICY=str(policy))
        try:
            bucket, prefix = incoming.stack.storage_url[len("s3://") :].split("/", 1)
            s3 = boto3.client(
                "s3",
                endpoint_url=moto_server.endpoint,
                region_name="us-east-1",
                aws_access_key_id="test",
                aws_secret_access_key="test",
            )
            yield Stacks(incoming, reference, faults, s3, bucket, prefix, base)
        finally:
            reference.stack.stop()
    finally:
        incoming.stack.stop()
        faults.close()


def stow(stack: RunningStack, body: bytes, name: str, tenant: str | None = None) -> dict[str, Any]:
    """One file through STOW-RS, declaring the region (and tenant) as a direct upload's metadata does: the answer's
    item."""
    path = stack.stack.var_dir / f"stow-{hashlib.sha256(name.encode()).hexdigest()[:16]}.dcm"
    path.write_bytes(body)
    encoded = encode_multipart([path])
    answer = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=encoded,
        headers={
            "Content-Type": encoded.content_type,
            "Accept": "application/dicom+json",
            "X-DICOMGW-Region": REGION,
            **({"X-DICOMGW-Tenant": tenant} if tenant else {}),
            **stack.api_headers,
        },
        timeout=120,
    )
    assert answer.status_code in (200, 202, 409), answer.text
    body_json = answer.json()
    items = body_json.get("00081199", {}).get("Value", []) + body_json.get("00081198", {}).get("Value", [])
    [item] = items
    return dict(item)


def outcome_of(item: dict[str, Any]) -> tuple[str, str]:
    """A STOW item's outcome and reason text (gateway.dicomweb.stow_response's private tags)."""
    outcome = item["00091002"]["Value"][0].lower()
    reason = item.get("00091001", {}).get("Value", [""])[0]
    return outcome, reason


def served(stack: RunningStack, path: Path, frames: int) -> dict[str, Any]:
    """What DICOMweb serves of the instance ``path`` names: its bytes, each frame, its metadata and its QIDO
    attributes (the stack's own address taken out, so two stacks compare)."""
    study, series, sop = uids_of(path)
    token = stack.issue([study])["token"]
    root = stack.root(token)
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"

    def get(url: str, accept: str, **params: str) -> requests.Response:
        answer = requests.get(url, headers={"Accept": accept}, params=params, timeout=60)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
        return answer

    def local(text: str) -> Any:
        return json.loads(text.replace(root, "ROOT").replace(stack.url, "BASE"))

    out: dict[str, Any] = {
        "bytes": get(instance, "application/dicom").content,
        "metadata": local(get(f"{instance}/metadata", "application/dicom+json").text),
        "qido": local(
            get(f"{root}/studies/{study}/instances", "application/dicom+json", includefield="all").text
        ),
    }
    for frame in range(1, frames + 1):
        any_syntax = "multipart/related; type=application/octet-stream; transfer-syntax=*"
        out[f"frame {frame}"] = one_part(get(f"{instance}/frames/{frame}", any_syntax))
    return out


def one_part(answer: requests.Response) -> tuple[str, str, bytes]:
    """A one-part multipart answer: its media type, its part's headers and its part's bytes (the boundary out)."""
    media_type, _, boundary = answer.headers["Content-Type"].partition("boundary=")
    delimiter = b"--" + boundary.strip('"').encode()
    [_, part, end] = answer.content.split(delimiter)
    assert end.startswith(b"--"), end[:20]
    headers, _, body = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
    return media_type, headers.decode(), body.removesuffix(b"\r\n")


@pytest.fixture(scope="module")
def outside_run(stacks: Stacks) -> dict[str, Any]:
    """The outside files dropped under incoming/ and run once; the same files sent to the reference stack by STOW."""
    for name in OUTSIDE:
        stacks.put(f"outside/{name}", (TEST_FILES / name).read_bytes())
        item = stow(stacks.reference, (TEST_FILES / name).read_bytes(), name)
        assert outcome_of(item)[0] == "stored", (name, item)
    run = stacks.run_incoming()
    return {"run": run, "results": results_of(run)}


def test_outside_files_dropped_in_incoming_are_stored_and_their_sources_removed(
    stacks: Stacks, outside_run: dict[str, Any]
) -> None:
    run, results = outside_run["run"], outside_run["results"]
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr == ""
    assert {key: (r["status"], r["deleted"], r["detail"]) for key, r in results.items()} == {
        stacks.key(f"outside/{name}"): ("stored", True, "") for name in OUTSIDE
    }
    for name in OUTSIDE:
        assert results[stacks.key(f"outside/{name}")]["sop_uid"] == uids_of(TEST_FILES / name)[2]
    assert stacks.incoming_keys() == []


@pytest.mark.parametrize("name", list(OUTSIDE))
def test_outside_files_are_served_as_stow_serves_them(stacks: Stacks, outside_run: dict[str, Any], name: str) -> None:
    path = TEST_FILES / name
    through_incoming = served(stacks.incoming, path, OUTSIDE[name])
    through_stow = served(stacks.reference, path, OUTSIDE[name])
    assert through_incoming["bytes"] == path.read_bytes()
    assert through_incoming.keys() == through_stow.keys()
    for part in through_incoming:
        assert through_incoming[part] == through_stow[part], part


# -- hostile and bad objects -------------------------------------------------------------------------------------


def _conflicting() -> bytes:
    """CT_small.dcm (stored by ``outside_run``) with another Instance Number: other bytes, the same SOP Instance."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.InstanceNumber = 99
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _synthetic(directory: Path, seed: int) -> bytes:
    [path] = make_series(directory / str(seed), modality="CT", slices=1, rows=32, columns=32, seed=seed, clean=True)
    return path.read_bytes()


PHI_NAME, PHI_ID = "ROE^HOSTILE", "MRN12345"


@pytest.fixture(scope="module")
def hostile_run(stacks: Stacks, outside_run: dict[str, Any]) -> dict[str, Any]:
    """Bad and hostile objects dropped under incoming/ next to good ones, one run; each also sent by STOW to the
    reference stack (which holds the outside files too), whose answer is the expected one."""
    mr = (TEST_FILES / "MR_small.dcm").read_bytes()
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    phi = write(phi_dataset(sop="2.25.880001", name=PHI_NAME), stacks.work / "phi.dcm").read_bytes()
    blocked = write(phi_dataset(sop="2.25.880002", name=PHI_NAME), stacks.work / "blocked.dcm").read_bytes()
    objects: dict[str, tuple[bytes, str | None]] = {
        "zero.dcm": (b"", None),
        "notes.txt": (b"patient list, not DICOM\n", None),
        "no_meta.dcm": ((TEST_FILES / "no_meta.dcm").read_bytes(), None),
        "cut/in the header.dcm": (mr[:300], None),
        "cut/in the pixels.dcm": (mr[:-2000], None),
        "again/CT_small.dcm": (ct, None),  # the same bytes as a stored instance: a duplicate
        "conflict.dcm": (_conflicting(), None),
        "batch 1/a+b%20c ü 日本.dcm": (_synthetic(stacks.work, 31), None),
        "long/" + "x" * 900 + ".dcm": (_synthetic(stacks.work, 32), None),
        "held.dcm": (phi, "hold"),
        "blocked.dcm": (blocked, "blocked"),
    }
    expected: dict[str, tuple[str, str]] = {}
    for name, (body, tenant) in objects.items():
        stacks.put(name, body, tenant)
        if body:
            expected[stacks.key(name)] = outcome_of(stow(stacks.reference, body, name, tenant))
    stacks.put("folder/", b"")  # what a console's "Create folder" leaves
    run = stacks.run_incoming()
    return {"run": run, "results": results_of(run), "objects": objects, "stow": expected}


def test_hostile_objects_are_each_stored_or_kept_with_the_reason_stow_gives(
    stacks: Stacks, hostile_run: dict[str, Any]
) -> None:
    run, results = hostile_run["run"], hostile_run["results"]
    assert run.returncode == 1, run.stdout + run.stderr  # some failed: they stay for a retry or a human
    assert "Traceback" not in run.stdout + run.stderr
    outcome = {key: (r["status"], r["deleted"], r["detail"]) for key, r in results.items()}
    key = stacks.key
    assert outcome == {
        key("zero.dcm"): ("failed", False, "not a DICOM Part 10 file (it is empty: 0 bytes)"),
        key("notes.txt"): ("failed", False, NOT_P10),
        key("no_meta.dcm"): ("failed", False, NOT_P10),
        key("cut/in the header.dcm"): (
            "failed",
            False,
            "the File Meta Information Group Length (0002,0000) is 190 bytes, but the file meta elements after it "
            "take 156",
        ),
        key("cut/in the pixels.dcm"): ("failed", False, "file is truncated inside (7FE0,0010)"),
        key("again/CT_small.dcm"): ("duplicate", True, ""),
        key("conflict.dcm"): ("failed", False, DIFFERENT_BYTES),
        key("batch 1/a+b%20c ü 日本.dcm"): ("stored", True, ""),
        key("long/" + "x" * 900 + ".dcm"): ("stored", True, ""),
        key("held.dcm"): ("quarantined", True, "held for review"),
        key("blocked.dcm"): ("failed", False, "this tenant may not upload"),
        key("folder/"): ("skipped", False, "a folder marker (a key ending in /), not a file"),
    }
    # what STOW answers for the same bytes (the empty body excepted: STOW has no empty part to answer for)
    for name, (status, reason) in hostile_run["stow"].items():
        assert (outcome[name][0], outcome[name][2]) == (status, reason), name
    assert stacks.incoming_keys() == sorted(
        key(name)
        for name in ("zero.dcm", "notes.txt", "no_meta.dcm", "cut/in the header.dcm", "cut/in the pixels.dcm")
        + ("conflict.dcm", "blocked.dcm", "folder/")
    )


def test_hostile_objects_leave_the_stored_instances_as_they_were(stacks: Stacks, hostile_run: dict[str, Any]) -> None:
    """The conflict and the cut copies of stored instances changed nothing that is served; the quarantined and the
    refused PHI files are not served; the objects under odd keys are."""
    ct = TEST_FILES / "CT_small.dcm"
    assert served(stacks.incoming, ct, 1)["bytes"] == ct.read_bytes()
    for sop in ("2.25.880001", "2.25.880002"):
        query = requests.get(
            f"{stacks.incoming.url}/dicomweb/instances",
            params={"SOPInstanceUID": sop},
            headers=stacks.incoming.api_headers,
            timeout=10,
        )
        assert query.status_code in (200, 204) and (query.status_code == 204 or query.json() == []), query.text
    for name in ("batch 1/a+b%20c ü 日本.dcm", "long/" + "x" * 900 + ".dcm"):
        body = hostile_run["objects"][name][0]
        path = stacks.work / "odd.dcm"
        path.write_bytes(body)
        assert served(stacks.incoming, path, 1)["bytes"] == body


def test_no_phi_value_in_the_run_output_or_the_stack_logs(stacks: Stacks, hostile_run: dict[str, Any]) -> None:
    run = hostile_run["run"]
    logs = run.stdout + run.stderr + stacks.incoming.logs()
    for value in (PHI_NAME, PHI_NAME.replace("^", " "), PHI_ID, "HOSTILE"):
        assert value not in logs, value
    for secret in (stacks.incoming.stack.api_key, stacks.incoming.stack.signing_key, stacks.incoming.stack.deid_key):
        assert secret not in logs


def test_the_lambda_handler_takes_keys_as_aws_encodes_them(stacks: Stacks, tmp_path: Path) -> None:
    """An S3 event's keys are URL-encoded ("+" a space, "%2B" a plus, UTF-8 percent-encoded): each object is found
    under its real key; a key outside incoming/ and a folder marker are passed by, each saying why."""
    odd = "ev ent/100%+ü 日本 (1).dcm"
    body = _synthetic(tmp_path, 41)
    stacks.put(odd, body)
    stacks.put("event-folder/", b"")
    outside = f"{stacks.prefix}/elsewhere/x.dcm"
    stacks.s3.put_object(Bucket=stacks.bucket, Key=outside, Body=body)
    answer = stacks.lambda_event([stacks.key(odd), stacks.key("event-folder/"), outside])
    assert [(r["key"], r["status"], r["deleted"], r["detail"]) for r in answer["results"]] == [
        (stacks.key(odd), "stored", True, ""),
        (stacks.key("event-folder/"), "skipped", False, "a folder marker (a key ending in /), not a file"),
        (outside, "skipped", False, "not an incoming/ object of this gateway"),
    ]
    path = tmp_path / "odd.dcm"
    path.write_bytes(body)
    assert served(stacks.incoming, path, 1)["bytes"] == body
    # the same event delivered again (S3 delivers at least once): the object is gone, nothing fails
    [again, _, _] = stacks.lambda_event([stacks.key(odd), stacks.key("event-folder/"), outside])["results"]
    assert (again["status"], again["deleted"]) == ("skipped", False)
    assert again["detail"] == "no longer under incoming/ (already processed, or removed)"
    stacks.s3.delete_object(Bucket=stacks.bucket, Key=stacks.key("event-folder/"))
    stacks.s3.delete_object(Bucket=stacks.bucket, Key=outside)


# -- storage going away, a run killed half-way -------------------------------------------------------------------


@pytest.fixture
def cleared(stacks: Stacks, hostile_run: dict[str, Any]) -> Stacks:
    """incoming/ emptied of what the tests before left there (run-incoming takes all of it)."""
    for name in stacks.incoming_keys():
        stacks.s3.delete_object(Bucket=stacks.bucket, Key=name)
    return stacks


def listed(stack: RunningStack, study: str) -> int:
    """How many instances of ``study`` QIDO lists."""
    answer = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/instances", headers=stack.api_headers, timeout=10
    )
    assert answer.status_code in (200, 404), answer.text  # 404: no such study
    return len(answer.json()) if answer.status_code == 200 else 0


@pytest.mark.parametrize("failure", ["refused", "slowdown"])
def test_a_run_while_storage_is_away_says_so_in_one_line_and_the_next_run_completes(
    cleared: Stacks, tmp_path: Path, failure: str
) -> None:
    """It was a botocore traceback (EndpointConnectionError, or ClientError SlowDown from ListObjectsV2)."""
    stacks = cleared
    body = _synthetic(tmp_path, {"refused": 51, "slowdown": 52}[failure])
    key = stacks.put(f"outage-{failure}.dcm", body)
    stacks.faults.set(failure)
    try:
        started = time.monotonic()
        run = stacks.run_incoming()
        took = time.monotonic() - started
    finally:
        stacks.faults.set("up")
    assert run.returncode == 1 and run.stdout == "", run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    [line] = run.stderr.splitlines()
    assert line.startswith("Error: cannot list incoming/ (storage: list failed ("), line
    assert line.endswith("); everything under incoming/ stays there for the next run"), line
    assert took < 30
    assert stacks.incoming_keys() == [key]
    again = stacks.run_incoming()
    assert again.returncode == 0, again.stdout + again.stderr
    assert [(r["status"], r["deleted"]) for r in results_of(again).values()] == [("stored", True)]
    assert stacks.incoming_keys() == []


def test_an_outage_half_way_stops_the_run_at_once_and_the_next_run_completes(cleared: Stacks, tmp_path: Path) -> None:
    """Storage refused once the run is under way: the object it met says so (``outage``), the run stops there in one
    line and exit 1, and the objects after it are not tried (each would wait out the same timeouts, ~30 s apiece on
    a storage that hangs): they stay under incoming/ for the next run, which stores them all."""
    stacks = cleared
    bodies = {}
    for n in range(6):
        body = _synthetic(tmp_path, 80 + n)
        bodies[stacks.put(f"halfway/{n}.dcm", body)] = body
    keys = sorted(bodies)
    process = stacks.start_run_incoming()
    try:
        deadline = time.monotonic() + 60
        while stacks.incoming_keys() == keys:  # until the first object is stored and its source removed
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before the outage"
            time.sleep(0.005)
        process.send_signal(signal.SIGSTOP)  # held while storage goes away: the outage meets the next object
        stacks.faults.set("refused")
        process.send_signal(signal.SIGCONT)
        stdout, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
        stacks.faults.set("up")
    assert process.returncode == 1, stdout + stderr
    printed = [json.loads(line) for line in stdout.splitlines()]
    *done, last = printed
    assert done and all((r["status"], r["deleted"], r["outage"]) == ("stored", True, False) for r in done), printed
    assert last["outage"] is True and last["deleted"] is False, last
    assert [r["key"] for r in printed] == keys[: len(printed)]  # in key order, none after the outage
    assert len(printed) < len(keys)
    assert stderr.splitlines() == [
        "Error: the run stopped at an outage (its last result says which); what is left under incoming/ stays there "
        "for the next run"
    ]
    assert stacks.incoming_keys() == keys[len(done) :]
    again = stacks.run_incoming()
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(results_of(again)) == set(keys[len(done) :])
    assert stacks.incoming_keys() == []
    for key in (keys[0], keys[-1]):
        path = tmp_path / "sent.dcm"
        path.write_bytes(bodies[key])
        assert served(stacks.incoming, path, 1)["bytes"] == bodies[key]


class StorageGoesAway:
    """The gateway's ingest, with storage taken away just before it (``when="before"``) or just after it
    (``"after"``: stored, then the source cannot be deleted)."""

    def __init__(self, faults: StorageFaults, when: str) -> None:
        from gateway.config import Settings
        from gateway.lambda_handler import make_ingestor

        self.faults, self.when = faults, when
        self.inner = make_ingestor(Settings.from_env())

    def ingest(self, path: Path, context: Any, expected_study: str | None = None) -> Any:
        if self.when == "before":
            self.faults.set("refused")
        result = self.inner.ingest(path, context, expected_study)
        if self.when == "after":
            self.faults.set("refused")
        return result


@pytest.mark.parametrize(
    ("when", "status", "detail"),
    [
        ("event", "failed", "storage: head failed (EndpointConnectionError); kept for a retry"),
        ("before", "failed", "ingest: storage write failed (EndpointConnectionError); kept for a retry"),
        (
            "after",
            "stored",
            "the source could not be removed (storage: head failed (EndpointConnectionError)); the next run removes it",
        ),
    ],
)
def test_storage_going_away_around_an_object_keeps_its_source_until_it_is_stored(
    cleared: Stacks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, status: str, detail: str
) -> None:
    """The Lambda handler, in this process, with the gateway's storage taken away when the event arrives, during
    the ingest, or once the object is stored: the handler answers for the object (it raised botocore's error when
    the storage could not be reached for the source, which lost the answer for every object of the event)."""
    from gateway.lambda_handler import handler

    stacks = cleared
    for name, value in stacks.env().items():
        monkeypatch.setenv(name, value)
    body = _synthetic(tmp_path, {"event": 61, "before": 62, "after": 63}[when])
    path = tmp_path / "sent.dcm"
    path.write_bytes(body)
    study = uids_of(path)[0]
    key = stacks.put(f"away-{when}.dcm", body)
    ingestor = StorageGoesAway(stacks.faults, when)
    event = {"Records": [{"s3": {"bucket": {"name": stacks.bucket}, "object": {"key": quote_plus(key, safe="/")}}}]}
    if when == "event":
        stacks.faults.set("refused")
    try:
        from gateway.config import Settings

        [result] = handler(event, None, settings=Settings.from_env(), ingestor=ingestor)["results"]
    finally:
        stacks.faults.set("up")
    assert (result["status"], result["deleted"], result["detail"]) == (status, False, detail)
    assert stacks.incoming_keys() == [key]
    assert listed(stacks.incoming, study) == (1 if status == "stored" else 0)
    again = stacks.run_incoming()
    assert again.returncode == 0, again.stdout + again.stderr
    [(again_status, deleted)] = [(r["status"], r["deleted"]) for r in results_of(again).values()]
    assert (again_status, deleted) == ("duplicate" if status == "stored" else "stored", True)
    assert stacks.incoming_keys() == []
    assert served(stacks.incoming, path, 1)["bytes"] == body


def test_a_run_killed_half_way_loses_nothing_and_the_next_run_completes(cleared: Stacks, tmp_path: Path) -> None:
    """SIGKILL in the middle of a run: each object is either still under incoming/ or stored and served whole (never
    both missing, never listed without its bytes); what the killed run printed is true; a second run stores the
    rest."""
    stacks = cleared
    files = make_series(tmp_path / "killed", modality="CT", slices=24, rows=128, columns=128, seed=70, clean=True)
    study = uids_of(files[0])[0]
    keys = {stacks.put(f"killed/{path.name}", path.read_bytes()): path for path in files}
    process = stacks.start_run_incoming()
    try:
        deadline = time.monotonic() + 60
        while len(stacks.incoming_keys()) > len(files) - 4:
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        stdout, _ = process.communicate(timeout=30)
    left = set(stacks.incoming_keys())
    assert 0 < len(left) < len(files)
    printed = [json.loads(line) for line in stdout.splitlines()]
    assert printed, "a killed run printed nothing of what it had done"
    for line in printed:
        assert (line["status"], line["deleted"]) == ("stored", True) and line["key"] not in left, line
    listed_before = listed(stacks.incoming, study)
    assert len(files) - len(left) <= listed_before <= len(files) - len(left) + 1  # + the one under way at the kill
    again = stacks.run_incoming()
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(results_of(again)) == left
    assert stacks.incoming_keys() == []
    assert listed(stacks.incoming, study) == len(files)
    for path in (files[0], files[-1], keys[sorted(left)[0]]):
        assert served(stacks.incoming, path, 1)["bytes"] == path.read_bytes()


def test_a_run_killed_with_a_download_on_disk_leaves_no_copy_once_run_again(stacks: Stacks, tmp_path: Path) -> None:
    """SIGKILL (as a SIGTERM, a Lambda's timeout or the OOM killer ends Python: no ``finally`` runs) while an
    object's download sits in the temporary folder: that copy of the upload, named ``incoming-XXXX.dcm``, was left
    there for good, a file of uploaded DICOM (PHI included) no DELETE or erasure reaches, one per killed run. It
    names the run's process now, and the next run (or the gateway's next worker) removes it once that process is
    gone; the next run also stores every object left under incoming/."""
    for name in stacks.incoming_keys():
        stacks.s3.delete_object(Bucket=stacks.bucket, Key=name)
    files = make_series(tmp_path / "copies", modality="CT", slices=12, rows=256, columns=256, seed=90, clean=True)
    study = uids_of(files[0])[0]
    for path in files:
        stacks.put(f"copies/{path.name}", path.read_bytes())
    spool = stacks.incoming.stack.var_dir / "spool"

    def copies() -> list[str]:
        return sorted(name for name in os.listdir(spool) if name.startswith("incoming-"))

    assert copies() == []
    process = stacks.start_run_incoming()
    try:
        deadline = time.monotonic() + 60
        while not copies():  # aimed, not timed: an object is on disk, between its download and its removal
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert len(copies()) == 1
    again = stacks.run_incoming()
    assert again.returncode == 0, again.stdout + again.stderr
    assert copies() == []
    assert stacks.incoming_keys() == []
    assert listed(stacks.incoming, study) == len(files)
