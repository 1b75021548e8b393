"""gateway.derive and its catalog records on SQLite and PostgreSQL: the job lease (a crashed encode is retried),
back-off and the attempt limit, the sha256-guarded publish, and the exact lossless round trip of the encoder."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest

import gateway.derive as derive_module
from gateway.catalog import Catalog
from gateway.derive import MAX_ATTEMPTS, derivative_key, encode_instance, handle_sqs
from gateway.dicom.frames import FrameIndex
from gateway.dicom.index import index_file
from gateway.errors import CatalogUnavailable
from gateway.storage import open_storage
from gateway.tools.synth import make_series, make_wsi
from tests.fixtures.catalog_data import make_instance, record
from tests.fixtures.servers import MotoServer, start_moto

SOP = "1.2.3.4.5.6"


def test_claim_lease_retry_and_limit(catalog: Catalog) -> None:
    catalog.enqueue_derivative(SOP)
    job = catalog.claim_derivative(lease=300, max_attempts=MAX_ATTEMPTS, now=1000)
    assert job is not None and job.attempts == 1
    assert catalog.claim_derivative(lease=300, max_attempts=MAX_ATTEMPTS, now=1299) is None  # leased
    crashed = catalog.claim_derivative(lease=300, max_attempts=MAX_ATTEMPTS, now=1300)  # the lease ran out
    assert crashed is not None and crashed.attempts == 2
    catalog.finish_derivative(job)  # a stale worker's finish does not drop the retried job
    assert catalog.derivative_job(SOP) is not None
    catalog.fail_derivative(crashed, "OSError: disk", retry_at=1400)
    assert catalog.claim_derivative(lease=300, max_attempts=MAX_ATTEMPTS, now=1399) is None  # backing off
    last = catalog.claim_derivative(lease=300, max_attempts=MAX_ATTEMPTS, now=1400)
    assert last is not None and last.attempts == MAX_ATTEMPTS
    catalog.fail_derivative(last, "OSError: disk", retry_at=1500)
    assert catalog.claim_derivative(lease=300, max_attempts=MAX_ATTEMPTS, now=10**9) is None  # given up
    failed = catalog.derivative_job(SOP)
    assert failed is not None and failed.attempts == MAX_ATTEMPTS and failed.last_error == "OSError: disk"
    catalog.enqueue_derivative(SOP)  # a new upload of the instance starts over
    again = catalog.claim_derivative(lease=300, max_attempts=MAX_ATTEMPTS, now=2000)
    assert again is not None and again.attempts == 1
    catalog.finish_derivative(again)
    assert catalog.derivative_job(SOP) is None


def test_publish_only_for_the_bytes_it_was_made_from(catalog: Catalog) -> None:
    inst = make_instance("1.2.3", "1.2.3.4", SOP)
    catalog.register_instance(record(inst))
    row = catalog.get_instance(SOP, with_metadata=False)
    assert row is not None and row.derivative_key is None
    index = FrameIndex.encapsulated([(0, 10)], [0]).pack()
    assert not catalog.publish_derivative(SOP, "0" * 64, syntax="1.2.840.10008.1.2.4.202", key="k", frame_index=index)
    assert catalog.publish_derivative(SOP, row.sha256, syntax="1.2.840.10008.1.2.4.202", key="k", frame_index=index)
    published = catalog.get_instance(SOP, with_metadata=False)
    assert published is not None and (published.derivative_key, published.derivative_index) == ("k", index)


@pytest.mark.parametrize("kind", ["ct", "mr", "native-multiframe"])
def test_encode_instance_is_exactly_lossless(tmp_path: Path, kind: str) -> None:
    if kind == "native-multiframe":
        source = make_wsi(tmp_path / "wsi", frames=4, native=True, seed=3, clean=True)
    else:
        source = make_series(tmp_path / kind, modality=kind.upper(), slices=1, seed=5, clean=True)[0]
    indexed = index_file(source)
    assert indexed.frame_index is not None
    frames = FrameIndex.unpack(indexed.frame_index)
    target = tmp_path / "derived.j2c"
    derived = encode_instance(source, frames, target)
    ds = pydicom.dcmread(source)
    if int(ds.SamplesPerPixel) != 1:  # colour: not derived, served as stored
        assert derived is None
        return
    assert derived is not None and derived.count == frames.count
    data = target.read_bytes()
    dtype = "<i2" if int(ds.PixelRepresentation) else "<u2"
    words = np.frombuffer(ds.PixelData, dtype=dtype).reshape(frames.count, int(ds.Rows), int(ds.Columns))
    for n in range(1, frames.count + 1):
        ((offset, length),) = derived.ranges(n)
        code = data[offset : offset + length]
        assert code[:2] == b"\xff\x4f"
        assert np.array_equal(imagecodecs.htj2k_decode(code), words[n - 1])


def test_derivative_key_sits_under_the_instance_prefix() -> None:
    key = derivative_key("studies/1/series/2/instances/3.dcm", "ab" * 32)
    assert key == "studies/1/series/2/instances/3/htj2k-abababababababab.j2c"


def test_sqs_handler_reports_only_failed_messages(catalog: Catalog, tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}")
    event = {
        "Records": [
            {"messageId": "a", "body": '{"sop_uid": "9.9.9"}'},  # gone: nothing to do, not a failure
            {"messageId": "b", "body": "not json"},
        ]
    }
    assert handle_sqs(event, storage, catalog) == {"batchItemFailures": [{"itemIdentifier": "b"}]}


def test_sqs_queue_sends_one_message_and_never_raises(moto_server: MotoServer) -> None:
    """Through moto's SQS server: one message per instance; a dead endpoint is logged, never raised (the upload it
    belongs to stands and its original is served)."""
    import boto3
    from botocore.config import Config

    from gateway.derive import SqsQueue

    def client(endpoint: str) -> object:
        quick = Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1})
        return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                            aws_secret_access_key="s", config=quick)  # fmt: skip

    sqs: Any = client(moto_server.endpoint)
    url = sqs.create_queue(QueueName="derive-test")["QueueUrl"]
    SqsQueue(url, client=sqs).enqueue("1.2.3")
    (message,) = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
    assert message["Body"] == '{"sop_uid": "1.2.3"}'
    dead = start_moto()
    dead_client = client(dead.endpoint)
    dead.stop()
    SqsQueue(url, client=dead_client).enqueue("1.2.4")  # no exception


def test_worker_outlives_a_catalog_outage_in_the_middle_of_a_job(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog goes away after a job is claimed (a PostgreSQL restart): the worker neither records nor
    finishes it, and it does not exit either (it used to, and `stack up` then stopped every process); the job
    comes back when its lease ends."""
    catalog.enqueue_derivative(SOP)
    down = {"now": False}
    claim = catalog.claim_derivative

    def claim_then_outage(**kwargs: Any) -> Any:
        if down["now"]:
            raise CatalogUnavailable("catalog unavailable (OperationalError)")
        down["now"] = True  # the database dies right after this claim
        return claim(**kwargs)

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise CatalogUnavailable("catalog unavailable (OperationalError)")

    monkeypatch.setattr(catalog, "claim_derivative", claim_then_outage)
    for name in ("get_instance", "fail_derivative", "finish_derivative", "require_current_schema"):
        monkeypatch.setattr(catalog, name, unavailable if name != "require_current_schema" else lambda: None)
    monkeypatch.setattr(derive_module, "Catalog", lambda url: catalog)
    settings = SimpleNamespace(storage_url=f"file://{tmp_path}", database_url="unused", tmp_dir="")
    assert derive_module.work(settings, threading.Event(), once=True) == 1  # type: ignore[arg-type]
    monkeypatch.undo()
    job = catalog.derivative_job(SOP)
    assert job is not None and job.attempts == 1  # still there: the lease brings it back
