"""Ingest with its process pool (``DICOMGW_INGEST_PROCESSES``): the index, the PHI hook chain and the digest run in
pool processes whose hooks are built from the settings; the store and the catalog commit stay in this process.
Real storage (a local folder), a real SQLite catalog, real pool processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.hooks import UploadContext
from gateway.services import Services

try:
    from test_phi_files import ORG_ROOT, phi_dataset, write
except ImportError:  # collected as a package
    from tests.unit.test_phi_files import ORG_ROOT, phi_dataset, write

POLICY = """
version = "pool-test"
[destinations.main]
storage = "default"
region = "eu"
identifiable_allowed = true

[[rules]]
id = "hold"
match = { tenant = "hold" }
action = "quarantine"

[[rules]]
id = "allow"
match = { region = "eu" }
action = "allow"
destination = "main"

[default]
action = "reject"
"""


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    (tmp_path / "spool").mkdir()
    settings = Settings.from_mapping(
        {
            "SIGNING_KEYS": "s" * 32,
            "API_KEYS": "api-key",
            "STORAGE_URL": f"file://{tmp_path / 'objects'}",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
            "PHI_POLICY": str(policy),
            "TMP_DIR": str(tmp_path / "spool"),
            "INGEST_PROCESSES": "1",
        }
    )
    built = Services.build(settings)
    yield built
    built.ingestor.close()
    built.catalog.close()


def upload(tmp_path: Path, n: int) -> Path:
    ds = phi_dataset(sop=f"{ORG_ROOT}.3.{n}")
    return write(ds, tmp_path / "spool" / f"part-{n}.dcm")


def pool_pids(services: Services) -> set[int]:
    pool = services.ingestor._pool
    return set() if pool is None else set(pool.pids)


def test_pool_runs_the_hooks_and_the_commit_stays_here(services: Services, tmp_path: Path) -> None:
    ingestor = services.ingestor
    assert ingestor.processes == 1 and pool_pids(services) == set()  # started on the first upload
    context = UploadContext(source="stow", sub="t", region="eu")
    result = ingestor.ingest(upload(tmp_path, 1), context)
    assert (result.status, result.sop_uid) == ("stored", f"{ORG_ROOT}.3.1")
    [pid] = pool_pids(services)
    assert pid != os.getpid()
    # the hook ran (in the pool) and its audit record was committed with the instance (here)
    [audit] = services.catalog.audit_records(sop_uid=f"{ORG_ROOT}.3.1")
    assert (audit["decision"], audit["rule"]) == ("allow", "allow")
    stored = services.catalog.get_instance(f"{ORG_ROOT}.3.1", with_metadata=True)
    assert stored is not None and stored.number_of_frames == 1
    held = ingestor.ingest(upload(tmp_path, 2), UploadContext(source="stow", sub="t", tenant="hold", region="eu"))
    assert held.status == "quarantined" and services.catalog.get_instance(f"{ORG_ROOT}.3.2") is None
    assert ingestor.ingest(upload(tmp_path, 3), UploadContext(source="stow", region="us")).status == "failed"


def test_a_dead_pool_process_costs_no_upload(services: Services, tmp_path: Path) -> None:
    context = UploadContext(source="stow", sub="t", region="eu")
    assert services.ingestor.ingest(upload(tmp_path, 1), context).status == "stored"
    [pid] = pool_pids(services)
    # what the process was writing when killed: a de-identified copy, named for it (gateway.phi.hook)
    from gateway.catalog.owner import _stat
    from gateway.spool import _host_tag

    stat = _stat(pid)
    assert stat is not None
    left = tmp_path / "spool" / f"deid-{_host_tag()}-{pid}-{stat[1]}-x.dcm"
    left.write_bytes(b"half a de-identified copy")
    os.kill(pid, signal.SIGKILL)
    # the broken pool is noticed on the next upload, which is analysed in this process instead
    assert services.ingestor.ingest(upload(tmp_path, 2), context).status == "stored"
    assert not left.exists()  # and what the dead process left is gone
    # and the one after that gets a new pool
    assert services.ingestor.ingest(upload(tmp_path, 3), context).status == "stored"
    assert pool_pids(services) - {pid}
    assert [services.catalog.get_instance(f"{ORG_ROOT}.3.{n}") is not None for n in (1, 2, 3)] == [True] * 3


def test_the_pool_sends_the_metadata_as_text_and_stores_the_same(services: Services, tmp_path: Path) -> None:
    import pickle

    from gateway.catalog.records import InstanceRecord
    from gateway.dicom.index import index_file
    from gateway.ingest import Analysis, analyse

    path = upload(tmp_path, 4)
    expected = index_file(path)  # in this process: the dict, its text made from it
    context = UploadContext(source="stow", sub="t", region="eu")
    analysis = analyse(path, context, None, None, [], 1024)
    assert isinstance(analysis, Analysis) and analysis.indexed is not None
    back = pickle.loads(pickle.dumps(analysis))  # what a pool process answers
    assert back.indexed is not None
    # the texts only: the request's process need not rebuild the dicts
    assert {"metadata", "study_attrs", "series_attrs", "instance_attrs"}.isdisjoint(vars(back.indexed))
    assert back.indexed.metadata_json() == expected.metadata_json()
    for level in ("study", "series", "instance"):
        assert back.indexed.attrs_json(level) == expected.attrs_json(level)
    # parsed back from the texts when asked for
    assert back.indexed.metadata == expected.metadata
    assert (back.indexed.study_attrs, back.indexed.series_attrs, back.indexed.instance_attrs) == (
        expected.study_attrs,
        expected.series_attrs,
        expected.instance_attrs,
    )
    made = {"storage_key": "k", "size": 1, "sha256": "s", "etag": "e"}
    sent = InstanceRecord.from_indexed(back.indexed, **made).values
    assert sent == InstanceRecord.from_indexed(expected, **made).values  # the flat search values computed there
    assert services.ingestor.ingest(path, context).status == "stored"  # through the real pool
    stored = services.catalog.get_instance(f"{ORG_ROOT}.3.4", with_metadata=True)
    assert stored is not None and stored.metadata == expected.metadata_json()
    assert stored.attrs == expected.attrs_json("instance")
