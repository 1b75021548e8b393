"""gateway.startup: settings validated and the catalog migrated once before gunicorn's workers; workers only check
the schema; every failure is one line that never repeats a password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.catalog import Catalog
from gateway.errors import ConfigError
from gateway.startup import StartupError, prepare

KEY = "k" * 40
REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **changes: str) -> dict[str, str]:
    return {
        "DICOMGW_SIGNING_KEYS": KEY,
        "DICOMGW_API_KEYS": KEY,
        "DICOMGW_STORAGE_URL": f"file://{tmp_path / 'objects'}",
        "DICOMGW_DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        **changes,
    }


def test_prepare_migrates_and_workers_then_accept_the_schema(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    with pytest.raises(ConfigError, match=r"^DICOMGW_DATABASE_URL: the catalog schema is at revision \(none\)"):
        catalog.require_current_schema()
    prepare(_env(tmp_path))
    catalog.require_current_schema()
    assert catalog.schema_revision() != ""
    prepare(_env(tmp_path))  # a second start: nothing to do
    catalog.close()


def test_workers_refuse_a_catalog_a_newer_version_migrated_and_prepare_leaves_it(tmp_path: Path) -> None:
    """The image rolled back after an upgrade: the workers said to run `db upgrade`, which cannot migrate a catalog
    back (Alembic: "Can't locate revision"). Both say what happened, and nothing is migrated."""
    prepare(_env(tmp_path))
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    with catalog.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    newer = r"the catalog schema is at revision 0099, newer than this version's \d{4}: a newer dicom-gateway"
    with pytest.raises(ConfigError, match=rf"^DICOMGW_DATABASE_URL: {newer}"):
        catalog.require_current_schema()
    with pytest.raises(StartupError, match=rf"^DICOMGW_DATABASE_URL: {newer}"):
        prepare(_env(tmp_path))
    assert catalog.schema_revision() == "0099"
    catalog.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"DICOMGW_API_KEYS": ""}, "DICOMGW_API_KEYS: is required but not set"),
        ({"DICOMGW_PHI_POLICY": "/nonexistent.toml"}, "DICOMGW_PHI_POLICY: no such file: /nonexistent.toml"),
        (
            {"DICOMGW_DATABASE_URL": "postgresql://dgw:s3cret-pass@db.example:notaport/dgw"},
            "DICOMGW_DATABASE_URL: not a database URL this gateway can open",
        ),
        (
            {"DICOMGW_DATABASE_URL": "sqlite:////nonexistent-folder/catalog.db"},
            "DICOMGW_DATABASE_URL: cannot open the catalog: unable to open database file",
        ),
        (  # issue 13: a presigned path must outlive the read plan NGINX caches it in
            {"DICOMGW_STORAGE_URL": "s3://bucket", "DICOMGW_S3_PRESIGN_TTL": "900"},
            "DICOMGW_S3_PRESIGN_TTL: 900 s is shorter than twice DICOMGW_PLAN_CACHE_SECONDS (600 s): a cached read "
            "plan would outlive its presigned storage paths; raise the one or lower the other",
        ),
    ],
)
def test_failures_are_one_line(tmp_path: Path, changes: dict[str, str], message: str) -> None:
    with pytest.raises(StartupError) as failure:
        prepare(_env(tmp_path, **changes))
    assert str(failure.value) == message


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"DICOMGW_API_KEYS": ""}, 4),  # a wrong setting: gunicorn's "App failed to load", the master stops
        ({"DICOMGW_DATABASE_URL": "postgresql://dgw@127.0.0.1:1/dgw"}, 1),  # a database out: the master retries
    ],
)
def test_worker_exit_status_says_whether_a_retry_can_help(tmp_path: Path, changes: dict[str, str], status: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMGW_")}
    env.update({"PYTHONPATH": str(REPO), "DICOMGW_MODE": "production", **_env(tmp_path, **changes)})
    loaded = subprocess.run(
        [sys.executable, "-c", "import gateway.wsgi"], env=env, capture_output=True, text=True, timeout=60
    )
    assert loaded.returncode == status, loaded.stderr
    [line] = loaded.stderr.strip().splitlines()
    assert line.startswith("dicom-gateway: ")
