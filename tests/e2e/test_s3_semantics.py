"""S3 as real S3-compatible servers behave (session 22), through the real stack: moto's server behind
``PresignCheckingS3``, which checks each presigned request's SigV4 signature against the path as it arrives, as S3
does (moto checks none).

A bucket's key prefix is the operator's: ``s3://scans/radiology 2024`` or ``s3://scans/données`` are valid S3 keys
(S3 takes any UTF-8), and both read paths must serve every object under them: NGINX's (an instance by
X-Accel-Redirect, frames and retrieves composed by SSI) and Python's (renderings).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import boto3
import pydicom
import pytest
import requests
from pydicom.encaps import generate_frames

from gateway.dicomweb.multipart import multipart_boundary
from gateway.storage.s3 import S3Storage
from gateway.tools.stack import Stack, free_port
from gateway.tools.synth import make_series, make_wsi
from tests.e2e.conftest import uids_of
from tests.e2e.harness import AWS_TEST_ENV, RunningStack, start_stack
from tests.fixtures.servers import MotoServer, PresignCheckingS3, create_bucket


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("s3-semantics-data")
    ct = make_series(base / "ct", modality="CT", slices=1, seed=41, clean=True, rows=64, columns=64)
    return {"ct": ct[0], "wsi": make_wsi(base / "wsi", frames=3, offsets="bot", seed=42, clean=True)}


@pytest.fixture(scope="module")
def strict(moto_server: MotoServer) -> Iterator[PresignCheckingS3]:
    checker = PresignCheckingS3(moto_server.endpoint)
    yield checker
    checker.close()


def parts_of(answer: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related answer, in order."""
    boundary = multipart_boundary(answer.headers["Content-Type"]).encode()
    chunks = answer.content.split(b"--" + boundary)[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for chunk in chunks]


@pytest.mark.parametrize("prefix", ["radiology 2024", "données", "a%41b"], ids=["space", "utf-8", "percent"])
def test_a_prefix_that_needs_percent_encoding_is_served_on_both_read_paths(
    tmp_path: Path, moto_server: MotoServer, strict: PresignCheckingS3, files: dict[str, Path], prefix: str
) -> None:
    """With a key prefix holding a space, a non-ASCII letter or a ``%`` (``s3://bucket/radiology 2024``), STOW stored
    every instance and Python's renderings were served, but every read NGINX serves from S3 failed: a single-part
    instance or thumbnail was a JSON 503 (space: NGINX sent the decoded path raw, an invalid request line) or a
    JSON 404 "missing from storage" (``données`` sent as raw bytes, ``a%41b`` read as ``aAb``), and every frame and
    retrieve was a dropped connection. NGINX decodes the X-Accel-Redirect and SSI paths once and proxies the decoded
    path as it is, so the presigned path now reaches it encoded once more: S3 gets exactly the path that was
    signed."""
    bucket = f"dgw-prefix-{free_port()}"
    create_bucket(moto_server.endpoint, bucket)
    env = {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": strict.endpoint, "DICOMGW_CORS_ORIGINS": "https://portal.example"}
    stack = Stack(tmp_path / "var", port=free_port(), storage_url=f"s3://{bucket}/{prefix}", extra_env=env)
    stack.start()
    try:
        running = RunningStack(stack, "s3")
        stored = running.stow([files["ct"], files["wsi"]])
        assert stored.status_code == 200, stored.text
        # the objects really are under the literal prefix
        s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]]
        assert len(keys) >= 2 and all(key.startswith(prefix + "/") for key in keys), keys

        study, series, sop = uids_of(files["ct"])
        wsi_study, wsi_series, wsi_sop = uids_of(files["wsi"])
        root = running.root(running.issue([study, wsi_study])["token"])
        ct = f"{root}/studies/{study}/series/{series}/instances/{sop}"
        slide = f"{root}/studies/{wsi_study}/series/{wsi_series}/instances/{wsi_sop}"
        ct_bytes = files["ct"].read_bytes()
        dataset = pydicom.dcmread(files["wsi"])
        frames = list(generate_frames(dataset.PixelData, number_of_frames=3))
        strict.methods.clear()

        # NGINX, X-Accel-Redirect: the whole object, and a range of it
        instance = requests.get(ct, headers={"Accept": "application/dicom"}, timeout=30)
        assert (instance.status_code, instance.headers["Content-Type"]) == (200, "application/dicom")
        assert instance.content == ct_bytes
        part = requests.get(ct, headers={"Accept": "application/dicom", "Range": "bytes=128-131"}, timeout=30)
        assert (part.status_code, part.content) == (206, b"DICM")
        thumbnail = requests.get(f"{ct}/thumbnail", timeout=30)
        assert (thumbnail.status_code, thumbnail.headers["Content-Type"]) == (200, "image/jpeg")
        assert thumbnail.content.startswith(b"\xff\xd8")

        # NGINX, SSI: a whole object as a part, and frames as byte ranges of one
        retrieve = requests.get(f"{root}/studies/{study}/series/{series}", timeout=30)
        assert retrieve.status_code == 200
        assert parts_of(retrieve) == [ct_bytes]
        frame = requests.get(f"{slide}/frames/2,3", timeout=30)
        assert frame.status_code == 200
        assert frame.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"')
        assert parts_of(frame) == frames[1:]

        # Python: a rendering reads the object through boto3
        rendered = requests.get(f"{ct}/rendered", headers={"Accept": "image/png"}, timeout=30)
        assert (rendered.status_code, rendered.headers["Content-Type"]) == (200, "image/png")

        # every object NGINX read was a GET whose signature held (a 403 would have been the JSON 503 above)
        assert strict.methods and set(strict.methods) == {"GET"}
    finally:
        stack.stop()


def test_a_vanished_bucket_is_an_outage_on_both_read_paths_not_a_missing_object(
    tmp_path: Path, moto_server: MotoServer, files: dict[str, Path]
) -> None:
    """S3 answers 404 for a bucket that is gone (``NoSuchBucket``) as for a key that is (``NoSuchKey``), told apart only
    in the body NGINX drops. With the bucket deleted (or the wrong one configured), a single-part instance and a
    WADO-URI object were a JSON 404 "the object is missing from storage", while the thumbnail and renderings
    (Python) and /readyz said ``storage_unavailable``: a viewer or PACS took the study for deleted. NGINX now asks
    storage's probe on such a 404: an object deleted behind the gateway's back is still the JSON 404, a vanished
    bucket the JSON 503 with Retry-After, on both read paths."""
    origin = "https://portal.example"
    running = start_stack(tmp_path / "var", "s3", moto_server)
    try:
        ct = make_series(tmp_path / "two", modality="CT", slices=2, seed=43, clean=True, rows=64, columns=64)
        assert running.stow(ct).status_code == 200
        bucket = running.stack.storage_url.split("/")[2]
        s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        study, series, gone = uids_of(ct[0])
        kept = uids_of(ct[1])[2]
        root = running.root(running.issue([study])["token"])

        def reads(sop: str) -> dict[str, requests.Response]:
            instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
            wado = f"{root}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
            asked = {
                "instance": (instance, {"Accept": "application/dicom"}),
                "wado-uri": (f"{wado}&contentType=application/dicom", {}),
                "thumbnail": (f"{instance}/thumbnail", {}),
            }
            return {
                name: requests.get(url, headers={"Origin": origin, **headers}, timeout=30)
                for name, (url, headers) in asked.items()
            }

        # an object deleted behind the gateway's back: missing, on both paths
        for item in s3.list_objects_v2(Bucket=bucket)["Contents"]:
            if gone in item["Key"]:
                s3.delete_object(Bucket=bucket, Key=item["Key"])
        for name, answer in reads(gone).items():
            assert (answer.status_code, answer.headers["Content-Type"]) == (404, "application/json"), name
            assert answer.headers["Access-Control-Allow-Origin"] == origin, name
            assert answer.json()["error"] == "not_found", name
        # the bucket gone: an outage, on both paths, for the object still catalogued
        for item in s3.list_objects_v2(Bucket=bucket)["Contents"]:
            s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)
        for name, answer in reads(kept).items():
            assert (answer.status_code, answer.headers["Content-Type"]) == (503, "application/json"), name
            assert answer.headers["Retry-After"] == "5", name
            assert answer.headers["Access-Control-Allow-Origin"] == origin, name
            assert answer.json()["error"] == "storage_unavailable", name
    finally:
        running.stack.stop()


def test_the_host_nginx_sends_s3_on_ecs_is_the_host_the_gateway_signs_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Terraform deployment (terraform/ecs.tf) had NGINX send S3 the virtual-hosted
    ``Host: BUCKET.s3.REGION.amazonaws.com``, while the gateway presigns path-style (``/BUCKET/key``, README) for
    ``s3.REGION.amazonaws.com`` (and for ``us-east-1`` where the platform sets no ``AWS_DEFAULT_REGION``: Terraform
    set ``AWS_REGION``, which botocore does not read). S3 takes the Host into the signature (the checking S3 above
    does too) and reads ``/BUCKET/key`` on a bucket's own host as the key ``BUCKET/key``: every instance, frame and
    thumbnail NGINX reads would be a JSON 503. Terraform now sends the host the gateway signs for, in the region it
    deploys to."""
    from tests.unit.test_deploy import tf_locals

    region, bucket = "eu-central-1", "dicom-gw-data-123456789012-eu-central-1"
    tf = tf_locals()

    def resolve(value: str) -> str:
        value = value.replace("${local.s3_host}", tf["s3_host"])
        return value.replace("${local.data_bucket_name}", bucket).replace("${var.region}", region)

    nginx = {key: resolve(value) for key, value in tf["nginx_environment"].items() if "STORAGE" in key}
    gateway = tf["gateway_environment"]  # a merge(...) expression: its literal AWS_* settings
    aws = re.findall(r"\b(AWS_[A-Z_]+) = var\.region\b", gateway)
    assert 'DICOMGW_STORAGE_URL = "s3://${local.data_bucket_name}"' in gateway
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name in aws:
        monkeypatch.setenv(name, region)
    # the task role's credentials, as ECS hands them to botocore; no shared files in the image
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "task-role")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "task-role")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")

    storage = S3Storage(f"s3://{bucket}")
    signed = urllib.parse.urlsplit(storage.origin)
    path, _, query = storage.origin_path("studies/1.2/series/3.4/instances/5.6.dcm").partition("?")
    assert path == f"/{bucket}/studies/1.2/series/3.4/instances/5.6.dcm"
    assert f"%2F{region}%2Fs3%2Faws4_request" in query  # signed for the deployment's region
    assert (nginx["DICOMGW_STORAGE_SCHEME"], nginx["DICOMGW_STORAGE_HOST"], nginx["DICOMGW_STORAGE_UPSTREAM"]) == (
        signed.scheme,
        signed.netloc,
        f"{signed.netloc}:443",
    )
    assert signed.netloc == f"s3.{region}.amazonaws.com"
