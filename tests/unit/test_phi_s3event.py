"""Direct uploads under incoming/: the S3 event handler against a real moto S3 server and the real ingest
(SQLite catalog), with the same PHI hook chain as STOW."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import pydicom
import pytest

from gateway.config import Settings
from gateway.hooks import UploadContext
from gateway.lambda_handler import handler, make_ingestor
from gateway.phi.s3event import run_incoming
from gateway.phi.scanner import scan_file

try:
    from test_phi_files import ORG_ROOT, phi_dataset, write
except ImportError:  # collected as a package
    from tests.unit.test_phi_files import ORG_ROOT, phi_dataset, write

POLICY = """
version = "s3-test"
[destinations.main]
storage = "default"
region = "eu-west-1"
identifiable_allowed = true

[[rules]]
id = "blocked"
match = { tenant = "blocked" }
action = "reject"

[[rules]]
id = "hold"
match = { tenant = "hold" }
action = "quarantine"

[[rules]]
id = "deid"
match = { tenant = "research" }
action = "deidentify"
destination = "main"

[default]
action = "reject"
"""
KEY = "d" * 40


@pytest.fixture
def setup(s3_bucket: str, tmp_path: Path) -> tuple[Settings, Any, str]:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    spool = tmp_path / "spool"
    spool.mkdir()
    settings = Settings.from_mapping(
        {
            "SIGNING_KEYS": "s" * 32,
            "API_KEYS": "api-key",
            "STORAGE_URL": f"s3://{s3_bucket}/gw",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
            "PHI_POLICY": str(policy),
            "DEID_KEY": KEY,
            "TMP_DIR": str(spool),
        }
    )
    return settings, boto3.client("s3"), s3_bucket


def put(s3: Any, bucket: str, key: str, path: Path, tenant: str) -> None:
    s3.upload_file(
        str(path),
        bucket,
        key,
        ExtraArgs={"Metadata": {"dicomgw-tenant": tenant, "dicomgw-region": "eu-west-1"}},
    )


def event(bucket: str, *keys: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(k)}},
            }
            for k in keys
        ]
    }


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_deidentified_store_then_source_deleted(setup: tuple[Settings, Any, str], tmp_path: Path) -> None:
    settings, s3, bucket = setup
    source = write(phi_dataset(), tmp_path / "phi.dcm")
    key = "gw/incoming/batch 1/a+b.dcm"  # a space and a plus: S3 events URL-encode keys
    put(s3, bucket, key, source, "research")
    answer = handler(event(bucket, key), None, settings=settings, s3=s3)
    [result] = answer["results"]
    assert result["status"] == "stored" and result["deleted"] is True and result["key"] == key
    stored = [k for k in keys(s3, bucket) if k.startswith("gw/studies/")]
    assert keys(s3, bucket) == stored and len(stored) == 1
    assert result["sop_uid"] and stored[0].endswith(f"/instances/{result['sop_uid']}.dcm")
    assert result["sop_uid"].startswith("2.25.")
    local = tmp_path / "stored.dcm"
    s3.download_file(bucket, stored[0], str(local))
    assert scan_file(local).readable and pydicom.dcmread(local).PatientName == ""
    assert list((tmp_path / "spool").iterdir()) == []  # temp files cleaned up


def test_rejected_upload_stays_in_incoming(setup: tuple[Settings, Any, str], tmp_path: Path) -> None:
    settings, s3, bucket = setup
    source = write(phi_dataset(), tmp_path / "phi.dcm")
    put(s3, bucket, "gw/incoming/x.dcm", source, "blocked")
    [result] = handler(event(bucket, "gw/incoming/x.dcm"), None, settings=settings, s3=s3)["results"]
    assert result["status"] == "failed" and result["deleted"] is False
    assert keys(s3, bucket) == ["gw/incoming/x.dcm"]
    body = s3.get_object(Bucket=bucket, Key="gw/incoming/x.dcm")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(source.read_bytes()).digest()


def test_quarantined_upload_moves_to_quarantine(setup: tuple[Settings, Any, str], tmp_path: Path) -> None:
    settings, s3, bucket = setup
    put(s3, bucket, "gw/incoming/q.dcm", write(phi_dataset(), tmp_path / "phi.dcm"), "hold")
    [result] = handler(event(bucket, "gw/incoming/q.dcm"), None, settings=settings, s3=s3)["results"]
    assert result["status"] == "quarantined" and result["deleted"] is True
    [only] = keys(s3, bucket)
    # one key per quarantined file: the instance's key with the file's digest (16 hex digits) before ".dcm"
    assert only.startswith("gw/quarantine/studies/")
    assert re.fullmatch(rf".*/instances/{re.escape(ORG_ROOT)}\.3\.1\.[0-9a-f]{{16}}\.dcm", only), only


def test_other_keys_are_skipped(setup: tuple[Settings, Any, str], tmp_path: Path) -> None:
    settings, s3, bucket = setup
    put(s3, bucket, "gw/studies/x.dcm", write(phi_dataset(), tmp_path / "phi.dcm"), "research")
    [result] = handler(event(bucket, "gw/studies/x.dcm"), None, settings=settings, s3=s3)["results"]
    assert result["status"] == "skipped" and keys(s3, bucket) == ["gw/studies/x.dcm"]


class Exploding:
    def ingest(self, path: Path, context: UploadContext, expected_study: str | None = None) -> Any:
        raise RuntimeError("storage fell over")


def test_ingest_exception_keeps_the_source(setup: tuple[Settings, Any, str], tmp_path: Path) -> None:
    settings, s3, bucket = setup
    put(s3, bucket, "gw/incoming/e.dcm", write(phi_dataset(), tmp_path / "phi.dcm"), "research")
    answer = handler(event(bucket, "gw/incoming/e.dcm"), None, settings=settings, ingestor=Exploding(), s3=s3)
    assert (
        answer["results"][0]["status"] == "failed"
        and answer["results"][0]["detail"] == "ingest: RuntimeError"
    )
    assert keys(s3, bucket) == ["gw/incoming/e.dcm"]


def test_run_incoming_processes_every_object(setup: tuple[Settings, Any, str], tmp_path: Path) -> None:
    settings, s3, bucket = setup
    for index, tenant in enumerate(["research", "blocked", "research"]):
        ds = phi_dataset(sop=f"{ORG_ROOT}.3.{index}")
        put(s3, bucket, f"gw/incoming/{index} +.dcm", write(ds, tmp_path / f"{index}.dcm"), tenant)
    results = run_incoming(settings, make_ingestor=make_ingestor, s3=s3)
    assert [(r.key, r.status, r.deleted) for r in results] == [
        ("gw/incoming/0 +.dcm", "stored", True),
        ("gw/incoming/1 +.dcm", "failed", False),
        ("gw/incoming/2 +.dcm", "stored", True),
    ]
    remaining = keys(s3, bucket)
    assert [k for k in remaining if k.startswith("gw/incoming/")] == ["gw/incoming/1 +.dcm"]
    # both de-identified instances of the same study landed under one new study UID
    studies = {k.split("/")[2] for k in remaining if k.startswith("gw/studies/")}
    assert len(studies) == 1
