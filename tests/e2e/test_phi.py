"""Issue 5 through the real stack (S3 storage on moto): the policy decides, through STOW-RS and through the
S3-event path, and identifiable data never lands where the policy forbids it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pydicom
import pytest
import requests

from gateway.phi.policy import load_policy
from gateway.phi.scanner import scan_file
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.fixtures.servers import MotoServer

# Findings the synthetic PHI file must produce, one per hiding place (tag paths, never values).
HIDING_PLACES = {
    "(0010,0010)": "patient name at the top level",
    "(0040,0275)[0]>(0040,0008)[0]>(0040,0440)[0]>(0040,A123)": "a name three sequences deep",
    "(0010,1002)[0]>(0010,0020)": "OtherPatientIDsSequence",
    "(0009,1002)[0]>(0010,0010)": "a name inside a private sequence",
    "(7FE1,1001)": "an element stored after Pixel Data",
    "(0008,1030)": "a free-text description repeating the name",
    "(0008,0020)": "dates",
    "(0008,0080)": "institution",
    "(0018,1000)": "device serial number",
}

POLICY = """
version = "e2e-1"
[options]
on_unreadable = "reject"
on_deidentify_failure = "quarantine"

[destinations.main]
storage = "default"
region = "eu-west-1"
identifiable_allowed = false

[destinations.vault]
storage = "file://{vault}"
region = "eu-west-1"
identifiable_allowed = true

[destinations.us]
storage = "file://{us}"
region = "us-east-1"
identifiable_allowed = true

[[rules]]
id = "blocked-tenant"
match = {{ tenant = "blocked" }}
action = "reject"
reason = "this tenant may not upload"

[[rules]]
id = "ultrasound-review"
match = {{ "tags.Modality" = "US", phi = true }}
action = "quarantine"
reason = "ultrasound with PHI: held for review"

[[rules]]
id = "research"
match = {{ tenant = "research" }}
action = "deidentify"
destination = "main"

[[rules]]
id = "clinical-vault"
match = {{ tenant = "clinical" }}
action = "route"
destination = "vault"

[[rules]]
id = "us-clinical"
match = {{ tenant = "us-clinical" }}
action = "route"
destination = "us"

[[rules]]
id = "clean"
match = {{ phi = false }}
action = "route"
destination = "main"

[default]
action = "reject"
reason = "no policy rule covers this upload"

[deidentify]
dates = "shift"
max_shift_days = 365
"""


@pytest.fixture(scope="module")
def phi_stack(tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer) -> Iterator[RunningStack]:
    base = tmp_path_factory.mktemp("phi")
    (base / "vault").mkdir()
    (base / "us").mkdir()
    policy = base / "policy.toml"
    policy.write_text(POLICY.format(vault=base / "vault", us=base / "us"))
    running = start_stack(base / "stack", "s3", moto_server, DICOMGW_PHI_POLICY=str(policy))
    running.uploaded["base"] = base
    yield running
    running.stack.stop()


@pytest.fixture(scope="module")
def phi_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    base = tmp_path_factory.mktemp("phi-files")
    return {
        "ct": make_series(base / "ct", modality="CT", slices=3, seed=41),
        "ct2": make_series(base / "ct2", modality="CT", slices=2, seed=42),
        "clean": make_series(base / "clean", modality="CT", slices=2, seed=43, clean=True),
    }


def stow(stack: RunningStack, files: list[Path], tenant: str, region: str = "eu-west-1") -> requests.Response:
    return stack.stow(files, **{"X-DICOMGW-Tenant": tenant, "X-DICOMGW-Region": region})


def audit(stack: RunningStack, sop: str) -> list[dict[str, Any]]:
    answer = requests.get(
        f"{stack.url}/api/v1/admin/audit", params={"sop_uid": sop}, headers=stack.api_headers, timeout=10
    )
    assert answer.status_code == 200
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def visible(stack: RunningStack, sop: str) -> bool:
    answer = requests.get(
        f"{stack.url}/dicomweb/instances", params={"SOPInstanceUID": sop}, headers=stack.api_headers, timeout=10
    )
    assert answer.status_code == 200
    return bool(answer.json())


def stored_keys(stack: RunningStack) -> list[str]:
    return list(stack.storage().list(""))


def failures(answer: requests.Response) -> list[dict[str, Any]]:
    failed: list[dict[str, Any]] = answer.json().get("00081198", {}).get("Value", [])
    return failed


def test_reject_names_every_hiding_place_and_stores_nothing(
    phi_stack: RunningStack, phi_files: dict[str, list[Path]]
) -> None:
    path = phi_files["ct"][0]
    _, _, sop = uids_of(path)
    answer = stow(phi_stack, [path], tenant="blocked")
    assert answer.status_code == 409
    [failed] = failures(answer)
    assert failed["00081197"]["Value"] == [0x0110]
    assert not visible(phi_stack, sop)
    assert not [k for k in stored_keys(phi_stack) if sop in k]
    [record] = audit(phi_stack, sop)
    assert record["decision"] == "reject" and record["rule"] == "blocked-tenant"
    assert record["policy_version"] == "e2e-1"
    for tag_path, place in HIDING_PLACES.items():
        assert tag_path in record["tags"], place
    text = json.dumps(record)
    name = str(pydicom.dcmread(path, stop_before_pixels=True).PatientName)
    assert name.split("^")[0] not in text  # the audit names tags, never values


def test_deidentify_rescans_clean_and_keeps_studies_consistent(
    phi_stack: RunningStack, phi_files: dict[str, list[Path]], tmp_path: Path
) -> None:
    first, second = phi_files["ct"][1], phi_files["ct"][2]
    original_study = uids_of(first)[0]
    answers = [stow(phi_stack, [first], tenant="research"), stow(phi_stack, [second], tenant="research")]
    # stored as the policy rewrote them, not as sent: PS3.18 I.2's 202 with Warning Reason 0xB000 (coercion)
    assert [a.status_code for a in answers] == [202, 202]
    for a in answers:
        [item] = a.json()["00081199"]["Value"]
        assert item["00081196"] == {"vr": "US", "Value": [0xB000]}
        assert item["00091002"] == {"vr": "CS", "Value": ["STORED"]}
        assert "00081198" not in a.json()
    studies = {
        a.json()["00081199"]["Value"][0]["00081190"]["Value"][0].split("/studies/")[1].split("/")[0] for a in answers
    }
    assert len(studies) == 1  # two separate uploads of one study land in the same new study
    (new_study,) = studies
    assert new_study != original_study
    token = phi_stack.issue([new_study])["token"]
    listed = requests.get(f"{phi_stack.root(token)}/studies/{new_study}/instances", timeout=10).json()
    assert len(listed) == 2
    for item in listed:
        series, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
        body = requests.get(
            f"{phi_stack.root(token)}/studies/{new_study}/series/{series}/instances/{sop}",
            headers={"Accept": "application/dicom"},
            timeout=30,
        )
        assert body.status_code == 200
        stored = tmp_path / f"{sop}.dcm"
        stored.write_bytes(body.content)
        # the policy keeps dates shifted by a keyed offset (Retain Longitudinal ... Modified Dates)
        report = scan_file(stored, load_policy(phi_stack.uploaded["base"] / "policy.toml"))
        assert report.clean, report.to_json()
        ds = pydicom.dcmread(stored, stop_before_pixels=True)
        assert ds.PatientIdentityRemoved == "YES"
        assert "113100" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]


def test_identifiable_data_never_reaches_a_forbidden_region(
    phi_stack: RunningStack, phi_files: dict[str, list[Path]]
) -> None:
    path = phi_files["ct2"][0]
    answer = stow(phi_stack, [path], tenant="us-clinical", region="eu-west-1")
    assert answer.status_code == 409
    us_dir = phi_stack.uploaded["base"] / "us"
    assert not any(p.is_file() for p in us_dir.rglob("*"))
    assert not visible(phi_stack, uids_of(path)[2])


def test_route_to_a_destination_that_allows_identifiable_data(
    phi_stack: RunningStack, phi_files: dict[str, list[Path]]
) -> None:
    path = phi_files["ct2"][1]
    study, series, sop = uids_of(path)
    answer = stow(phi_stack, [path], tenant="clinical", region="eu-west-1")
    assert answer.status_code == 200, answer.text
    vault_copy = phi_stack.uploaded["base"] / "vault" / f"studies/{study}/series/{series}/instances/{sop}.dcm"
    assert vault_copy.read_bytes() == path.read_bytes()
    assert not [k for k in stored_keys(phi_stack) if sop in k]  # not in the default (de-identified) bucket



def test_a_routed_upload_names_no_retrieve_url_of_this_gateway(
    phi_stack: RunningStack, phi_files: dict[str, list[Path]]
) -> None:
    """A file routed to another region's destination is served by that region's gateway, never this one: the STOW
    answer's RetrieveURLs (top level and instance) named this gateway, where they answered 404."""
    path = phi_files["ct2"][0]
    study, series, sop = uids_of(path)
    answer = stow(phi_stack, [path], tenant="clinical", region="eu-west-1")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    (item,) = body["00081199"]["Value"]
    assert item["00081155"]["Value"] == [sop]
    assert "Value" not in item["00081190"] and "Value" not in body["00081190"], answer.text
    root = phi_stack.root(phi_stack.issue([study])["token"])
    assert requests.get(f"{root}/studies/{study}/series/{series}/instances/{sop}", timeout=30).status_code == 404

def test_clean_file_is_accepted_unchanged(phi_stack: RunningStack, phi_files: dict[str, list[Path]]) -> None:
    path = phi_files["clean"][0]
    study, series, sop = uids_of(path)
    answer = stow(phi_stack, [path], tenant="anyone")
    assert answer.status_code == 200, answer.text
    token = phi_stack.issue([study])["token"]
    body = requests.get(
        f"{phi_stack.root(token)}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom"},
        timeout=30,
    )
    assert body.content == path.read_bytes()


def test_quarantine_is_never_served_and_can_be_released(phi_stack: RunningStack, tmp_path: Path) -> None:
    [path] = make_series(tmp_path, modality="CT", slices=1, seed=44)
    ds = pydicom.dcmread(path)
    ds.Modality = "US"
    ds.save_as(path)
    study, series, sop = uids_of(path)
    answer = stow(phi_stack, [path], tenant="anyone")
    assert answer.status_code == 409
    [failure] = answer.json()["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [0xC4F0]  # README: 0xC4F0 quarantined (it said 0x0110)
    assert failure["00091002"]["Value"] == ["QUARANTINED"]
    assert not visible(phi_stack, sop)
    # another file of the same SOP Instance UID is held beside it, never in its place (one key per file)
    ds.InstanceNumber = 2
    other = tmp_path / "other.dcm"
    ds.save_as(other)
    assert stow(phi_stack, [other], tenant="anyone").status_code == 409
    assert stow(phi_stack, [path], tenant="anyone").status_code == 409  # the same bytes again: the same item
    items = requests.get(f"{phi_stack.url}/api/v1/admin/quarantine", headers=phi_stack.api_headers, timeout=10)
    held = [i for i in items.json()["items"] if i["sop_uid"] == sop]
    assert len(held) == 2 and len({i["key"] for i in held}) == 2
    # held in "vault", the destination that may hold identifiable data from eu-west-1 (the default storage may not)
    assert {i["destination"] for i in held} == {"vault"}

    def held_bytes(key: str) -> bytes:
        return (phi_stack.uploaded["base"] / "vault" / key).read_bytes()

    assert sorted(held_bytes(i["key"]) for i in held) == sorted([path.read_bytes(), other.read_bytes()])
    [entry] = [i for i in held if held_bytes(i["key"]) == path.read_bytes()]
    token = phi_stack.issue([study])["token"]
    url = f"{phi_stack.root(token)}/studies/{study}/series/{series}/instances/{sop}"
    assert requests.get(url, headers={"Accept": "application/dicom"}, timeout=10).status_code == 404
    # no rule but the quarantine covers tenant "anyone": a release is refused, never stored in "main" (which takes
    # no identifiable data); a release the policy allows is test_a_release_is_judged_by_the_policy_...
    assert release(phi_stack, entry["key"]).status_code == 409
    assert requests.get(url, headers={"Accept": "application/dicom"}, timeout=10).status_code == 404


def _ultrasound(directory: Path, seed: int) -> Path:
    [path] = make_series(directory, modality="CT", slices=1, seed=seed)
    ds = pydicom.dcmread(path)
    ds.Modality = "US"
    ds.save_as(path)
    return path


def held_items(stack: RunningStack, sop: str) -> list[dict[str, Any]]:
    items = requests.get(f"{stack.url}/api/v1/admin/quarantine", headers=stack.api_headers, timeout=10)
    assert items.status_code == 200
    return [i for i in items.json()["items"] if i["sop_uid"] == sop]


def test_a_held_file_stays_where_identifiable_data_of_its_region_may_be(
    phi_stack: RunningStack, tmp_path: Path
) -> None:
    """A held file carries PHI nobody has cleared: it went to the default storage ("main", identifiable_allowed =
    false) whatever the upload's region. It is held in the destination that may hold identifiable data of that
    region, or refused as a reject when the policy names none."""
    base = phi_stack.uploaded["base"]
    eu = _ultrasound(tmp_path / "eu", 61)
    us = _ultrasound(tmp_path / "us", 62)
    answer = stow(phi_stack, [eu], tenant="anyone", region="eu-west-1")
    assert answer.status_code == 409
    assert failures(answer)[0]["00081197"]["Value"] == [0xC4F0]
    answer = stow(phi_stack, [us], tenant="anyone", region="us-east-1")
    assert answer.status_code == 409
    assert failures(answer)[0]["00081197"]["Value"] == [0xC4F0]
    for path, place, region in ((eu, "vault", "eu-west-1"), (us, "us", "us-east-1")):
        sop = uids_of(path)[2]
        [item] = held_items(phi_stack, sop)
        assert (item["destination"], item["tenant"], item["region"], item["source"]) == (
            place, "anyone", region, "stow"
        )
        assert item["sub"] == audit(phi_stack, sop)[0]["sub"]  # who uploaded it, as the audit names them
        assert (base / place / item["key"]).read_bytes() == path.read_bytes()
        assert not [k for k in stored_keys(phi_stack) if sop in k]  # nothing in the default storage
        # the reviewer's preview and the deletion find it where it is held
        preview = requests.get(
            f"{phi_stack.url}/api/v1/admin/quarantine/{item['key']}/preview", headers=phi_stack.api_headers, timeout=30
        )
        assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
    [item] = held_items(phi_stack, uids_of(us)[2])
    gone = requests.delete(
        f"{phi_stack.url}/api/v1/admin/quarantine/{item['key']}", headers=phi_stack.api_headers, timeout=10
    )
    assert gone.status_code == 204
    assert not (base / "us" / item["key"]).exists() and not held_items(phi_stack, uids_of(us)[2])
    # a patient erasure removes the patient's held file where it is held
    [item] = held_items(phi_stack, uids_of(eu)[2])
    erased = requests.post(
        f"{phi_stack.url}/api/v1/admin/erasure",
        json={"patient_id": str(pydicom.dcmread(eu).PatientID)},
        headers=phi_stack.api_headers,
        timeout=60,
    )
    assert erased.status_code == 200, erased.text
    assert erased.json()["quarantined"] == 1
    assert not (base / "vault" / item["key"]).exists() and not held_items(phi_stack, uids_of(eu)[2])
    # a region no destination may hold identifiable data of, and no region at all: refused, held nowhere
    for region, where in (("ap-south-1", "region 'ap-south-1'"), (None, "an upload that declares no region")):
        path = _ultrasound(tmp_path / str(region), 63 if region else 64)
        headers = {"X-DICOMGW-Tenant": "anyone", **({"X-DICOMGW-Region": region} if region else {})}
        answer = phi_stack.stow([path], **headers)
        assert answer.status_code == 409
        [failed] = failures(answer)
        assert failed["00081197"]["Value"] == [0x0110]
        assert failed["00091002"]["Value"] == ["FAILED"]
        assert failed["00091001"]["Value"] == [
            f"ultrasound with PHI: held for review; but no destination may hold identifiable data from {where}"
        ]
        sop = uids_of(path)[2]
        assert not held_items(phi_stack, sop)
        assert not [k for k in stored_keys(phi_stack) if sop in k]
        assert not [p for d in ("vault", "us") for p in (base / d).rglob(f"*{sop}*")]
        assert audit(phi_stack, sop)[0]["decision"] == "reject"


def test_an_original_held_on_a_deidentify_failure_stays_in_its_region(
    phi_stack: RunningStack, tmp_path: Path
) -> None:
    """on_deidentify_failure = "quarantine" holds the identifiable original: never in "main", the de-identified
    destination of the rule."""
    [path] = make_series(tmp_path, modality="CT", slices=1, seed=65)
    ds = pydicom.dcmread(path)
    ds.BurnedInAnnotation = "YES"  # the rule's pixels = "refuse" (default): the de-identification fails
    ds.save_as(path)
    sop = uids_of(path)[2]
    answer = stow(phi_stack, [path], tenant="research", region="eu-west-1")
    assert answer.status_code == 409
    assert failures(answer)[0]["00081197"]["Value"] == [0xC4F0]
    [item] = held_items(phi_stack, sop)
    assert item["destination"] == "vault" and item["tenant"] == "research"
    assert (phi_stack.uploaded["base"] / "vault" / item["key"]).read_bytes() == path.read_bytes()
    assert not [k for k in stored_keys(phi_stack) if sop in k]


def release(stack: RunningStack, key: str) -> requests.Response:
    return requests.post(f"{stack.url}/api/v1/admin/quarantine/{key}/release", headers=stack.api_headers, timeout=60)


def test_a_release_is_judged_by_the_policy_with_the_uploads_context(phi_stack: RunningStack, tmp_path: Path) -> None:
    """A release stored the held file in the default storage ("main", identifiable_allowed = false) whatever the
    policy said: it is judged as its upload would have been with the reviewer's approval (the quarantine rule passed
    over), with the tenant and region it was uploaded with; a refusal is a JSON 409 naming why, the file still held."""
    base = phi_stack.uploaded["base"]
    # a tenant no rule but the quarantine covers: the default rejects it
    nobody = _ultrasound(tmp_path / "nobody", 71)
    assert stow(phi_stack, [nobody], tenant="anyone").status_code == 409
    [item] = held_items(phi_stack, uids_of(nobody)[2])
    refused = release(phi_stack, item["key"])
    assert refused.status_code == 409
    assert refused.headers["Content-Type"] == "application/json"
    assert refused.json() == {
        "error": "conflict",
        "detail": "the policy does not let this file be stored: no policy rule covers this upload",
    }
    assert held_items(phi_stack, uids_of(nobody)[2]) == [item]  # still held, where it was
    assert (base / "vault" / item["key"]).read_bytes() == nobody.read_bytes()
    assert not [k for k in stored_keys(phi_stack) if uids_of(nobody)[2] in k]
    # the identifiable original a de-identification could not clean: its rule's destination takes no PHI
    [original] = make_series(tmp_path / "original", modality="CT", slices=1, seed=72)
    ds = pydicom.dcmread(original)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(original)
    assert stow(phi_stack, [original], tenant="research").status_code == 409
    [item] = held_items(phi_stack, uids_of(original)[2])
    refused = release(phi_stack, item["key"])
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "the policy does not let this file be stored: identifiable data may not go to destination 'main'"
    )
    assert held_items(phi_stack, uids_of(original)[2]) == [item]
    assert not [k for k in stored_keys(phi_stack) if uids_of(original)[2] in k]
    # a tenant whose rule routes identifiable data of eu-west-1 to "vault": released there, as its upload would be
    clinical = _ultrasound(tmp_path / "clinical", 73)
    study, series, sop = uids_of(clinical)
    assert stow(phi_stack, [clinical], tenant="clinical").status_code == 409  # ultrasound-review comes first
    [item] = held_items(phi_stack, sop)
    released = release(phi_stack, item["key"])
    assert released.status_code == 200, released.text
    assert released.headers["Cache-Control"] == "no-store"
    assert released.json() == {"status": "stored", "sop_uid": sop, "detail": "stored in another destination by policy"}
    stored = base / "vault" / f"studies/{study}/series/{series}/instances/{sop}.dcm"
    assert stored.read_bytes() == clinical.read_bytes()
    assert not held_items(phi_stack, sop) and not (base / "vault" / item["key"]).exists()
    assert not [k for k in stored_keys(phi_stack) if sop in k]  # never in the default storage
    assert audit(phi_stack, sop)[0]["decision"] == "release"
    assert audit(phi_stack, sop)[0]["destination"] == "vault"


def test_s3_event_path_runs_the_same_hooks(
    phi_stack: RunningStack, phi_files: dict[str, list[Path]], tmp_path: Path
) -> None:
    settings_env = {**os.environ, **phi_stack.stack.gateway_env(), **phi_stack.stack.extra_env}
    bucket, prefix = phi_stack.stack.storage_url[len("s3://") :].split("/", 1)
    s3 = boto3.client(
        "s3",
        endpoint_url=phi_stack.stack.extra_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    phi_path = phi_files["ct"][0]
    clean_path = phi_files["clean"][1]
    s3.upload_file(
        str(phi_path), bucket, f"{prefix}/incoming/phi.dcm", ExtraArgs={"Metadata": {"dicomgw-tenant": "blocked"}}
    )
    s3.upload_file(
        str(clean_path),
        bucket,
        f"{prefix}/incoming/clean one+.dcm",
        ExtraArgs={"Metadata": {"dicomgw-tenant": "anyone"}},
    )
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "hooks", "run-incoming"],
        env=settings_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode in (0, 1), run.stderr
    remaining = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/incoming/").get("Contents", [])]
    assert remaining == [f"{prefix}/incoming/phi.dcm"]  # rejected: kept where it was, never made visible
    assert visible(phi_stack, uids_of(clean_path)[2])
    records = audit(phi_stack, uids_of(phi_path)[2])
    s3_record = [r for r in records if r["source"] == "s3-event"]
    assert s3_record and s3_record[0]["decision"] == "reject"
    for tag_path in HIDING_PLACES:
        assert tag_path in s3_record[0]["tags"]


# -- every hiding place, one case each, through STOW and through the S3-event path ------------------------------


def _hiding_places() -> dict[str, tuple[Any, str]]:
    """name -> (function making a PHI dataset from a clean one, a tag path the report must name)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def overlay(ds: Dataset) -> None:
        ds.add_new(0x60000010, "US", 4)
        ds.add_new(0x60000011, "US", 4)
        ds.add_new(0x60003000, "OW", b"\xff\x00" * 2)

    def curve(ds: Dataset) -> None:
        ds.add_new(0x50003000, "OW", b"\x01\x02\x03\x04")

    def icon(ds: Dataset) -> None:
        item = Dataset()
        item.Rows, item.Columns, item.BitsAllocated = 2, 2, 8
        item.add_new(0x7FE00010, "OB", b"\x00\x01\x02\x03")
        ds.IconImageSequence = Sequence([item])

    def original_attributes(ds: Dataset) -> None:
        modified = Dataset()
        modified.PatientName = "OLD^NAME"
        original = Dataset()
        original.ModifiedAttributesSequence = Sequence([modified])
        ds.OriginalAttributesSequence = Sequence([original])

    def encapsulated_document(ds: Dataset) -> None:
        ds.add_new(0x00420011, "OB", b"%PDF-1.4 fake\n")

    def sr_pname(ds: Dataset) -> None:
        person = Dataset()
        person.ValueType = "PNAME"
        person.PersonName = "ROE^JANE"
        ds.ContentSequence = Sequence([person])

    def burned_in(ds: Dataset) -> None:
        ds.BurnedInAnnotation = "YES"

    def ultrasound_without_burned_in(ds: Dataset) -> None:
        ds.Modality = "SC"
        del ds.BurnedInAnnotation

    def free_text(ds: Dataset) -> None:
        ds.PatientName = "DOE^JOHN"
        ds.ManufacturerModelName = "John's scanner"

    def age(ds: Dataset) -> None:
        ds.PatientAge = "090Y"

    def dates(ds: Dataset) -> None:
        ds.StudyDate = "20240315"

    def after_pixel_data(ds: Dataset) -> None:
        ds.add_new(0x7FE10010, "LO", "TRAILER")
        ds.add_new(0x7FE11001, "LO", "DOE^JOHN")

    def private_sequence(ds: Dataset) -> None:
        ds.add_new(0x00090010, "LO", "ACME PRIVATE")
        inner = Dataset()
        inner.PatientName = "DOE^JOHN"
        ds.add_new(0x00091001, "SQ", Sequence([inner]))

    def file_meta(ds: Dataset) -> None:
        ds.file_meta.PrivateInformationCreatorUID = "1.2.826.0.1.3680043.8.498.77"
        ds.file_meta.PrivateInformation = b"site=General Hospital\0"

    def claims_removed(ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        ds.PatientName = "DOE^JOHN"

    return {
        "overlay": (overlay, "(6000,3000)"),
        "curve": (curve, "(5000,3000)"),
        "icon-image": (icon, "(0088,0200)"),
        "original-attributes": (original_attributes, "(0400,0561)[0]>(0400,0550)[0]>(0010,0010)"),
        "encapsulated-document": (encapsulated_document, "(0042,0011)"),
        "sr-pname": (sr_pname, "(0040,A730)[0]>(0040,A123)"),
        "burned-in-yes": (burned_in, "(0028,0301)"),
        "burned-in-missing-sc": (ultrasound_without_burned_in, "(0028,0301)"),
        "free-text-repeats-name": (free_text, "(0008,1090)"),
        "age-over-89": (age, "(0010,1010)"),
        "dates": (dates, "(0008,0020)"),
        "after-pixel-data": (after_pixel_data, "(7FE1,1001)"),
        "private-sequence": (private_sequence, "(0009,1001)[0]>(0010,0010)"),
        "file-meta": (file_meta, "(0002,0102)"),
        "claims-identity-removed": (claims_removed, "(0010,0010)"),
    }


HIDING = _hiding_places()


def _hiding_file(directory: Path, name: str, index: int) -> Path:
    from tests.unit.test_phi_files import clean_dataset, write

    sop = f"2.25.7700{index}"
    ds = clean_dataset(sop=sop, study=f"2.25.77{index}", series=f"2.25.770{index}")
    HIDING[name][0](ds)
    return write(ds, directory / f"{name}.dcm")


@pytest.fixture(scope="module")
def incoming_run(phi_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every hiding-place file dropped under incoming/ at once, then one run of the S3-event handler."""
    directory = tmp_path_factory.mktemp("incoming")
    bucket, prefix = phi_stack.stack.storage_url[len("s3://") :].split("/", 1)
    s3 = boto3.client(
        "s3",
        endpoint_url=phi_stack.stack.extra_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    for index, name in enumerate(HIDING):
        path = _hiding_file(directory, name, 50 + index)
        s3.upload_file(
            str(path), bucket, f"{prefix}/incoming/{name}.dcm", ExtraArgs={"Metadata": {"dicomgw-tenant": "anyone"}}
        )
    env = {**os.environ, **phi_stack.stack.gateway_env(), **phi_stack.stack.extra_env}
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "hooks", "run-incoming"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    remaining = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/incoming/").get("Contents", [])}
    return {"remaining": remaining, "prefix": prefix, "stderr": run.stderr}


@pytest.mark.parametrize("name", list(HIDING))
def test_hiding_place_through_stow(phi_stack: RunningStack, tmp_path: Path, name: str) -> None:
    index = list(HIDING).index(name)
    path = _hiding_file(tmp_path, name, index)
    answer = stow(phi_stack, [path], tenant="anyone")
    assert answer.status_code == 409, answer.text
    sop = f"2.25.7700{index}"
    assert not visible(phi_stack, sop)
    [record] = [r for r in audit(phi_stack, sop) if r["source"] == "stow"]
    assert HIDING[name][1] in record["tags"]


@pytest.mark.parametrize("name", list(HIDING))
def test_hiding_place_through_the_s3_event_path(
    phi_stack: RunningStack, incoming_run: dict[str, Any], name: str
) -> None:
    index = 50 + list(HIDING).index(name)
    assert f"{incoming_run['prefix']}/incoming/{name}.dcm" in incoming_run["remaining"], incoming_run["stderr"]
    sop = f"2.25.7700{index}"
    assert not visible(phi_stack, sop)
    [record] = [r for r in audit(phi_stack, sop) if r["source"] == "s3-event"]
    assert HIDING[name][1] in record["tags"]


def test_a_policy_header_sent_twice_is_refused(phi_stack: RunningStack, tmp_path: Path) -> None:
    """Two X-DICOMGW-Tenant headers were joined by the WSGI server ("research,clinical") and the policy matched the
    joined text against its globs: now a JSON 400, and nothing stored."""
    import http.client
    from urllib.parse import urlparse

    from gateway.dicomweb.multipart import encode_multipart

    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=197)
    body = encode_multipart([path])
    parsed = urlparse(phi_stack.url)
    for headers in (
        [("X-DICOMGW-Tenant", "research"), ("X-DICOMGW-Tenant", "clinical")],
        [("X-DICOMGW-Tenant", "clinical"), ("X-DICOMGW-Region", "eu-west-1"), ("X-DICOMGW-Region", "us-east-1")],
        [("X-DICOMGW-Tenant", "research,clinical")],
    ):
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
        connection.putrequest("POST", "/dicomweb/studies")
        for name, value in [*headers, ("Content-Type", body.content_type), *phi_stack.api_headers.items()]:
            connection.putheader(name, value)
        data = b"".join(body)
        connection.putheader("Content-Length", str(len(data)))
        connection.endheaders(data)
        answer = connection.getresponse()
        document = json.loads(answer.read())
        connection.close()
        assert answer.status == 400, (headers, document)
        assert document["error"] == "bad_request" and "must be sent once, with one value" in document["detail"]
    assert not visible(phi_stack, uids_of(path)[2])


def test_a_deidentified_upload_to_a_study_url_names_the_stored_study(
    phi_stack: RunningStack, tmp_path: Path
) -> None:
    """STOW to /studies/{original study} under a de-identifying rule stores the instance under a remapped study: the
    top-level RetrieveURL names that study (it named the original, a 404), and it retrieves."""
    from gateway.dicomweb.multipart import encode_multipart

    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=199)
    original = uids_of(path)[0]
    body = encode_multipart([path])
    headers = {
        **phi_stack.api_headers,
        "Content-Type": body.content_type,
        "X-DICOMGW-Tenant": "research",
        "X-DICOMGW-Region": "eu-west-1",
    }
    answer = requests.post(f"{phi_stack.url}/dicomweb/studies/{original}", data=body, headers=headers, timeout=60)
    assert answer.status_code == 202, answer.text  # de-identified: stored with Warning Reason 0xB000
    [item] = answer.json()["00081199"]["Value"]
    stored_study = item["00081190"]["Value"][0].split("/studies/")[1].split("/")[0]
    assert stored_study != original and stored_study.startswith("2.25.")
    study_url = answer.json()["00081190"]["Value"][0]
    assert study_url == f"{phi_stack.url}/dicomweb/studies/{stored_study}"
    p10 = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    retrieved = requests.get(study_url, headers={**phi_stack.api_headers, "Accept": p10}, timeout=60)
    assert retrieved.status_code == 200


def test_a_deidentified_file_that_fails_names_the_uid_it_was_sent_with(phi_stack: RunningStack, tmp_path: Path) -> None:
    """De-identified, a file has a new SOP Instance UID; when it then fails (here: other bytes under that UID) the
    failed item names the UID it was sent with in (0009,1003), as a stored one does, so ``dicom-gateway upload``
    reports that file's reason instead of "not acknowledged"."""
    [path] = make_series(tmp_path / "first", modality="CT", slices=1, rows=16, columns=16, seed=211)
    sent = uids_of(path)[2]
    assert stow(phi_stack, [path], tenant="research").status_code == 202
    ds = pydicom.dcmread(path)
    ds.InstanceNumber = 7  # other bytes, the same instance
    ds.save_as(path)
    answer = stow(phi_stack, [path], tenant="research")
    assert answer.status_code == 409, answer.text
    [item] = failures(answer)
    assert item["00081197"] == {"vr": "US", "Value": [0x0111]}
    assert item["00081155"]["Value"][0] != sent
    assert item["00091003"] == {"vr": "UI", "Value": [sent]}


def test_a_birth_date_in_free_text_is_phi(phi_stack: RunningStack, tmp_path: Path) -> None:
    """A birth date written in text passed the hook as clean: "DOB 19950331" in an element the profile keeps was
    routed as a clean file and stored, and a de-identified file kept the patient's own birth date written
    31.03.1995 there. The first is refused by the policy's default rule now (PHI found, no rule allows it); the
    second is stored with that text emptied."""
    [given] = make_series(tmp_path / "given", modality="CT", slices=1, rows=16, columns=16, seed=221, clean=True)
    ds = pydicom.dcmread(given)
    ds.ManufacturerModelName = "DOB 19950331"
    ds.save_as(given)
    sop = uids_of(given)[2]
    answer = stow(phi_stack, [given], tenant="anyone")
    assert answer.status_code == 409, answer.text
    assert failures(answer)[0]["00081197"] == {"vr": "US", "Value": [0x0110]}
    assert not visible(phi_stack, sop)
    [record] = audit(phi_stack, sop)
    assert (record["decision"], record["tags"]) == ("reject", ["(0008,1090)"])

    [own] = make_series(tmp_path / "own", modality="CT", slices=1, rows=16, columns=16, seed=222)
    ds = pydicom.dcmread(own)
    ds.PatientBirthDate = "19950331"
    ds.ManufacturerModelName = "pt 31.03.1995"
    ds.save_as(own)
    answer = stow(phi_stack, [own], tenant="research")
    assert answer.status_code == 202, answer.text
    [item] = answer.json()["00081199"]["Value"]
    url = item["00081190"]["Value"][0]
    stored = requests.get(url, headers={**phi_stack.api_headers, "Accept": "application/dicom"}, timeout=30)
    assert stored.status_code == 200
    kept = pydicom.dcmread(io.BytesIO(stored.content))
    assert (kept.ManufacturerModelName, kept.PatientBirthDate) == ("", "")


def test_a_person_name_the_table_does_not_list_is_phi(phi_stack: RunningStack, tmp_path: Path) -> None:
    """Session 27, h12: PS3.15 Table E.1-1 does not list every element whose VR is PN. Secondary Reviewer Name
    (0014,0104) and Evaluator Name (0014,2006, inside a sequence) passed the hook as clean and were stored, and a
    de-identified file kept them. Any PN with a value is a person's name (`person-name`) and is emptied now; a
    private creator that repeats the patient's name is a free-text finding."""
    [named] = make_series(tmp_path / "named", modality="CT", slices=1, rows=16, columns=16, seed=231, clean=True)
    ds = pydicom.dcmread(named)
    ds.add_new(0x00140104, "PN", "Reviewer^Jane")
    item = pydicom.Dataset()
    item.add_new(0x00142006, "PN", "Evaluator^Bob")
    ds.add_new(0x00142002, "SQ", [item])  # Evaluator Sequence
    ds.save_as(named)
    sop = uids_of(named)[2]
    answer = stow(phi_stack, [named], tenant="anyone")
    assert answer.status_code == 409, answer.text
    assert failures(answer)[0]["00081197"] == {"vr": "US", "Value": [0x0110]}
    assert not visible(phi_stack, sop)
    [record] = audit(phi_stack, sop)
    assert (record["decision"], record["tags"]) == ("reject", ["(0014,0104)", "(0014,2002)[0]>(0014,2006)"])

    [kept] = make_series(tmp_path / "kept", modality="CT", slices=1, rows=16, columns=16, seed=232)
    ds = pydicom.dcmread(kept)
    ds.add_new(0x00140104, "PN", "Reviewer^Jane")
    ds.add_new(0x00142002, "SQ", [item])
    ds.save_as(kept)
    answer = stow(phi_stack, [kept], tenant="research")
    assert answer.status_code == 202, answer.text
    [stored_item] = answer.json()["00081199"]["Value"]
    url = stored_item["00081190"]["Value"][0]
    stored = requests.get(url, headers={**phi_stack.api_headers, "Accept": "application/dicom"}, timeout=30)
    assert stored.status_code == 200
    result = pydicom.dcmread(io.BytesIO(stored.content))
    assert result[0x00140104].value in ("", None)
    assert result[0x00142002][0][0x00142006].value in ("", None)
    assert b"Reviewer" not in stored.content and b"Evaluator" not in stored.content

    [creator] = make_series(tmp_path / "creator", modality="CT", slices=1, rows=16, columns=16, seed=233, clean=True)
    ds = pydicom.dcmread(creator)
    ds.PatientName = "Quist^Marta"  # Z: a finding itself; the creator repeating it is a second one
    ds.add_new(0x00090010, "LO", "MARTA QUIST")
    ds.save_as(creator)
    scan = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", str(creator)], capture_output=True, text=True, timeout=120
    )
    assert scan.returncode == 1, scan.stderr
    findings = json.loads(scan.stdout)["findings"]
    assert {"path": "(0009,0010)", "keyword": "", "rule": "free-text-identifier"} in findings


def test_scan_judges_a_cd_export_as_upload_sends_it(phi_stack: RunningStack, tmp_path: Path) -> None:
    """Session 27, h12: `scan` called a data set without preamble or File Meta (`dcmconv -F`, as old exports write
    it) and the export's DICOMDIR "unreadable" (exit 2), while `upload` sends the first wrapped and skips the
    second: pre-scanning a CD always exited 2. `scan` reads each file with upload's reader now: the bare data set
    is judged as it is sent (its findings are the hook's), and what upload skips is `skipped`, with its reason."""
    [first] = make_series(tmp_path / "src1", modality="CT", slices=1, rows=16, columns=16, seed=241, clean=True)
    [second] = make_series(tmp_path / "src2", modality="CT", slices=1, rows=16, columns=16, seed=242, clean=True)
    [named] = make_series(tmp_path / "src3", modality="CT", slices=1, rows=16, columns=16, seed=243, clean=True)
    ds = pydicom.dcmread(named)
    ds.PatientName = "Quist^Marta"
    ds.save_as(named)
    cd = tmp_path / "cd"
    (cd / "DICOM").mkdir(parents=True)
    (cd / "DICOM" / "IM000001").write_bytes(first.read_bytes())
    for source, target in ((second, "IM000002"), (named, "IM000003")):
        target_path = cd / "DICOM" / target
        made = subprocess.run(["dcmconv", "-F", str(source), str(target_path)], capture_output=True, check=False)
        assert made.returncode == 0, made.stderr
        assert (cd / "DICOM" / target).read_bytes()[:2] == b"\x08\x00"  # no preamble, no File Meta
    made = subprocess.run(["dcmmkdir", "+I", "DICOM/IM000001"], cwd=cd, capture_output=True, check=False)
    assert made.returncode == 0 and (cd / "DICOMDIR").is_file(), made.stderr
    (cd / "README.TXT").write_text("Open VIEWER.EXE\n")

    scan = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", str(cd)], capture_output=True, text=True, timeout=120
    )
    assert scan.returncode == 1, scan.stdout + scan.stderr
    reports = {Path(line["file"]).name: line for line in map(json.loads, scan.stdout.splitlines())}
    assert {name: report["status"] for name, report in reports.items()} == {
        "IM000001": "clean",
        "IM000002": "clean",
        "IM000003": "phi",
        "DICOMDIR": "skipped",
        "README.TXT": "skipped",
    }
    assert reports["DICOMDIR"]["skipped"] == "a DICOMDIR, the index of the media, not an instance"
    assert reports["README.TXT"]["skipped"] == "not a DICOM file"
    assert [f["path"] for f in reports["IM000003"]["findings"]] == ["(0010,0010)"]
    note = "wrapped into a PS3.10 file as upload sends it (the data set had no File Meta or preamble): "
    assert note + str(cd / "DICOM" / "IM000002") in scan.stderr and note + str(cd / "DICOM" / "IM000003") in scan.stderr

    sent = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "upload", str(cd), "--url", f"{phi_stack.url}/dicomweb"]
        + ["--tenant", "anyone", "--region", "eu-west-1"],
        env={**os.environ, "DICOMGW_API_KEY": phi_stack.stack.api_key, "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert sent.returncode == 1, sent.stdout + sent.stderr
    assert [visible(phi_stack, uids_of(path)[2]) for path in (first, second, named)] == [True, True, False]
    [record] = audit(phi_stack, uids_of(named)[2])
    assert (record["decision"], record["tags"]) == ("reject", [f["path"] for f in reports["IM000003"]["findings"]])
