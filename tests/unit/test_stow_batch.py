"""StowBatch: parts ingested on threads, answers in part order, outages stop the batch, spooled files removed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from gateway.dicomweb.stow import StowBatch
from gateway.errors import StorageUnavailable
from gateway.ingest import OUT_OF_RESOURCES, IngestResult
from gateway.uids import InstanceId


def spooled(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = tmp_path / f"part-{index}.dcm"
        path.write_bytes(b"x")
        paths.append(path)
    return paths


def test_results_keep_part_order_and_files_are_removed(tmp_path: Path) -> None:
    def ingest(path: Path, digest: str) -> IngestResult:
        time.sleep(0.02 if path.name.endswith("0.dcm") else 0)  # the first part finishes last
        return IngestResult("stored", ids=InstanceId("1.2", "1.2.3", path.stem))

    batch = StowBatch(ingest, workers=3)
    paths = spooled(tmp_path, 5)
    for path in paths[:2]:
        batch.add(path)
    batch.add_result(IngestResult("failed", failure_reason=0x0122, detail="part is not application/dicom"))
    for path in paths[2:]:
        batch.add(path)
    results = batch.finish()
    assert [r.sop_uid for r in results] == ["part-0", "part-1", None, "part-2", "part-3", "part-4"]
    assert [r.status for r in results] == ["stored", "stored", "failed", "stored", "stored", "stored"]
    assert not any(path.exists() for path in paths)


def test_an_outage_fails_the_rest_fast(tmp_path: Path) -> None:
    calls: list[str] = []

    def ingest(path: Path, digest: str) -> IngestResult:
        calls.append(path.name)
        raise StorageUnavailable("storage down")

    batch = StowBatch(ingest, workers=1)
    for path in spooled(tmp_path, 3):
        batch.add(path)
    results = batch.finish()
    assert calls == ["part-0.dcm"]
    assert [r.failure_reason for r in results] == [OUT_OF_RESOURCES] * 3
    assert isinstance(batch.outage, StorageUnavailable)


def test_in_flight_parts_are_bounded(tmp_path: Path) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def ingest(path: Path, digest: str) -> IngestResult:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return IngestResult("stored")

    batch = StowBatch(ingest, workers=2, in_flight=3)
    on_disk = []
    for index in range(12):  # as the parser does: spool a part, hand it over, spool the next
        path = tmp_path / f"part-{index}.dcm"
        path.write_bytes(b"x")
        batch.add(path)
        on_disk.append(len(list(tmp_path.iterdir())))
    batch.finish()
    assert peak == 2  # the workers ran in parallel, and no more of them than asked
    assert max(on_disk) <= 3  # add() waits while three spooled parts are pending
    assert not list(tmp_path.iterdir())
