"""Catalog on SQLite and on a real PostgreSQL (tests/fixtures/servers.py starts a throwaway cluster)."""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.catalog import Catalog, InstanceRecord, search_values
from gateway.catalog.catalog import PURGE_INTERVAL, Registration, engine_url
from gateway.catalog.deletions import Target
from gateway.catalog.schema import metadata as schema_metadata
from gateway.catalog.schema import revocations
from gateway.dicom.model import BulkRange
from gateway.dicomweb.qido import parse_qido
from gateway.errors import CatalogUnavailable, Conflict, InvalidUID, PatientMismatch
from tests.fixtures.catalog_data import SR_DOC, make_instance, record

ST = "1.2.3.1"
SE1, SE2 = "1.2.3.1.1", "1.2.3.1.2"


def study_row(catalog: Catalog, study: str) -> dict[str, Any] | None:
    results = catalog.search(parse_qido("studies", {"StudyInstanceUID": [study]}), None)
    return results[0] if results else None


def counts(catalog: Catalog, study: str) -> tuple[int, int, list[str]] | None:
    row = study_row(catalog, study)
    if row is None:
        return None
    get = row.__getitem__
    return (get("00201206")["Value"][0], get("00201208")["Value"][0], get("00080061").get("Value", []))


def test_engine_url_uses_psycopg3() -> None:
    assert engine_url("postgresql://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert engine_url("sqlite:///x.db") == "sqlite:///x.db"


def test_migrate_is_idempotent_and_matches_schema(catalog: Catalog) -> None:
    catalog.migrate()  # second run: already at head
    with catalog.engine.connect() as conn, warnings.catch_warnings():
        # SQLAlchemy cannot reflect SQLite's expression indexes (lower(patient_name)): checked below by their DDL
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
        diffs = compare_metadata(MigrationContext.configure(conn), schema_metadata)
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        if catalog.dialect == "sqlite":
            ddl = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'index'").all()
        else:
            ddl = conn.exec_driver_sql("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'studies'").all()
    # the order index is declared by its columns (what SQLite reflects); PostgreSQL reflects its DESC NULLS LAST
    diffs = [d for d in diffs if catalog.dialect == "sqlite" or getattr(d[1], "name", "") != "ix_studies_date_order"]
    assert diffs == []
    assert version == "0019"
    indexes = {name: " ".join(sql.split()) for name, sql in ddl if sql}
    assert "lower(patient_name)" in indexes["ix_studies_patient_name_lower"]
    if catalog.dialect == "postgresql":
        assert "text_pattern_ops" in indexes["ix_studies_patient_name_lower"]
        order = "(study_date DESC NULLS LAST, study_uid) INCLUDE (modalities_in_study, patient_name)"
        assert order in indexes["ix_studies_date_order"]
    else:
        assert "study_date DESC, study_uid, modalities_in_study, patient_name" in indexes["ix_studies_date_order"]
    catalog.check()


def test_migration_0009_fills_the_performed_step_columns_from_stored_series(catalog_url: str) -> None:
    """Series stored before 0009 match on PerformedProcedureStepStartDate/Time at once: the columns are filled from
    the attributes each series row holds, and a series without them stays NULL."""
    from alembic import command
    from alembic.config import Config

    from gateway.catalog.engine import MIGRATIONS

    old = Catalog(catalog_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0008")
        conn.execute(sa.text("INSERT INTO studies (study_uid, attrs, updated_at) VALUES ('1.2.9', '{}', 0)"))
        with_step = {"00400244": {"vr": "DA", "Value": ["20240102"]}, "00400245": {"vr": "TM", "Value": ["0915"]}}
        rows = [("1.2.9.1", json.dumps(with_step)), ("1.2.9.2", json.dumps({"00400244": {"vr": "DA"}}))]
        for uid, attrs in rows:
            conn.execute(
                sa.text("INSERT INTO series (series_uid, study_uid, attrs) VALUES (:u, '1.2.9', :a)"),
                {"u": uid, "a": attrs},
            )
    old.close()
    catalog = Catalog(catalog_url)
    try:
        catalog.migrate()
        with catalog.engine.connect() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT series_uid, performed_procedure_step_start_date, performed_procedure_step_start_time "
                    "FROM series ORDER BY series_uid"
                )
            ).all()
        # the time as 0011 keys it (test_migration_0011_...)
        assert [tuple(row) for row in found] == [
            ("1.2.9.1", "20240102", "091500.000000"),
            ("1.2.9.2", None, None),
        ]
        query = parse_qido("series", {"PerformedProcedureStepStartDate": ["20240101-20240131"]})
        assert [r["0020000E"]["Value"][0] for r in catalog.search(query, None)] == ["1.2.9.1"]
    finally:
        catalog.close()


def test_migration_0010_stores_an_empty_value_among_several_as_null(catalog_url: str) -> None:
    """Metadata and QIDO attributes stored before 0010 held "" for an empty value among several; PS3.18 F.2.5 has
    null. The migration rewrites them (in sequences too) and leaves every other row's text as it was."""
    from alembic import command
    from alembic.config import Config

    from gateway.catalog.engine import MIGRATIONS

    old = Catalog(catalog_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    image_type = {"00080008": {"vr": "CS", "Value": ["ORIGINAL", "", "AXIAL"]}}
    nested = {"00081115": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": ["", "1.2"]}}]}}
    untouched = '{"00080020":{"vr":"DA","Value":["20240102"]},"00081030":{"vr":"LO","Value":[""]}}'
    with old.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0009")
        conn.execute(
            sa.text("INSERT INTO studies (study_uid, attrs, updated_at) VALUES ('1.2.9', :a, 0)"), {"a": untouched}
        )
        conn.execute(
            sa.text("INSERT INTO series (series_uid, study_uid, attrs) VALUES ('1.2.9.1', '1.2.9', :a)"),
            {"a": json.dumps(image_type)},
        )
        conn.execute(
            sa.text(
                "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, transfer_syntax_uid, "
                "storage_key, size, sha256, etag, metadata, attrs, created_at) VALUES "
                "('1.2.9.1.1', '1.2.9', '1.2.9.1', '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', 'k', 1, "
                "'00', 'e', :m, :a, 0)"
            ),
            {"m": json.dumps({**image_type, **nested}), "a": json.dumps(nested)},
        )
    old.close()
    catalog = Catalog(catalog_url)
    try:
        catalog.migrate()
        with catalog.engine.connect() as conn:
            study = conn.execute(sa.text("SELECT attrs FROM studies")).scalar_one()
            series = conn.execute(sa.text("SELECT attrs FROM series")).scalar_one()
            metadata, attrs = conn.execute(sa.text("SELECT metadata, attrs FROM instances")).one()
        null_image_type = {"00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}}
        null_nested = {"00081115": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": [None, "1.2"]}}]}}
        assert study == untouched  # one empty value alone: no list to hold a null, and the text is unchanged
        assert json.loads(series) == null_image_type
        assert json.loads(metadata) == {**null_image_type, **null_nested}
        assert json.loads(attrs) == null_nested
        assert metadata == json.dumps({**null_image_type, **null_nested}, separators=(",", ":"))
    finally:
        catalog.close()


def test_migration_0011_keys_the_stored_times(catalog_url: str) -> None:
    """Study and performed-step times stored before 0011 hold the file's text; QIDO compared those texts, so
    ``StudyTime=101500.000`` missed a stored ``101500``. The migration rewrites them as time keys (a value that is
    no time becomes NULL), and the times match as times at once; the answer keeps the file's text."""
    from alembic import command
    from alembic.config import Config

    from gateway.catalog.engine import MIGRATIONS

    old = Catalog(catalog_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    times = {"1.2.9": "101500", "1.2.8": "1015", "1.2.7": "10:15:00.5", "1.2.6": "noon", "1.2.5": None}
    with old.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0010")
        for uid, text in times.items():
            attrs = json.dumps({"00080030": {"vr": "TM", "Value": [text]}} if text else {})
            conn.execute(
                sa.text("INSERT INTO studies (study_uid, study_time, attrs, updated_at) VALUES (:u, :t, :a, 0)"),
                {"u": uid, "t": text, "a": attrs},
            )
        conn.execute(
            sa.text(
                "INSERT INTO series (series_uid, study_uid, performed_procedure_step_start_time, attrs) "
                "VALUES ('1.2.9.1', '1.2.9', '0915', '{}')"
            )
        )
    old.close()
    catalog = Catalog(catalog_url)
    try:
        catalog.migrate()
        with catalog.engine.connect() as conn:
            keys = dict(conn.execute(sa.text("SELECT study_uid, study_time FROM studies")).all())
            step = conn.execute(sa.text("SELECT performed_procedure_step_start_time FROM series")).scalar_one()
        assert keys == {
            "1.2.9": "101500.000000",
            "1.2.8": "101500.000000",
            "1.2.7": "101500.500000",
            "1.2.6": None,
            "1.2.5": None,
        }
        assert step == "091500.000000"
        found = catalog.search(parse_qido("studies", {"StudyTime": ["101500.000"]}), None)
        answered = {r["0020000D"]["Value"][0]: r["00080030"]["Value"][0] for r in found}
        assert answered == {"1.2.9": "101500", "1.2.8": "1015"}
        query = parse_qido("series", {"PerformedProcedureStepStartTime": ["091500.000"]})
        assert [r["0020000E"]["Value"][0] for r in catalog.search(query, None)] == ["1.2.9.1"]
    finally:
        catalog.close()


def test_migration_0014_keys_the_stored_dates(catalog_url: str) -> None:
    """Dates stored before 0014 hold the file's text; QIDO compared it, so a Study Date ``1993.03.04`` (the form
    PS3.5 6.2 recommends reading) was no day of 1993, and ``00000000`` a day before every other. The migration
    rewrites them as date keys (a value that is no day becomes NULL), and the dates match as dates at once; the
    answer keeps the file's text."""
    from alembic import command
    from alembic.config import Config

    from gateway.catalog.engine import MIGRATIONS

    old = Catalog(catalog_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    dates = {"1.2.9": "1993.03.04", "1.2.8": "19930305", "1.2.7": "00000000", "1.2.6": "1993.3.4", "1.2.5": None}
    with old.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0013")
        for uid, text in dates.items():
            attrs = json.dumps({"00080020": {"vr": "DA", "Value": [text]}} if text else {})
            conn.execute(
                sa.text(
                    "INSERT INTO studies (study_uid, study_date, patient_birth_date, attrs, updated_at) "
                    "VALUES (:u, :d, :d, :a, 0)"
                ),
                {"u": uid, "d": text, "a": attrs},
            )
        conn.execute(
            sa.text(
                "INSERT INTO series (series_uid, study_uid, performed_procedure_step_start_date, attrs) "
                "VALUES ('1.2.9.1', '1.2.9', '1993.03.04', '{}')"
            )
        )
    old.close()
    catalog = Catalog(catalog_url)
    try:
        catalog.migrate()
        with catalog.engine.connect() as conn:
            keys = {uid: (d, b) for uid, d, b in conn.execute(
                sa.text("SELECT study_uid, study_date, patient_birth_date FROM studies")
            ).all()}
            step = conn.execute(sa.text("SELECT performed_procedure_step_start_date FROM series")).scalar_one()
        assert keys == {
            "1.2.9": ("19930304", "19930304"),
            "1.2.8": ("19930305", "19930305"),
            "1.2.7": (None, None),  # names no day: matches nothing
            "1.2.6": (None, None),
            "1.2.5": (None, None),
        }
        assert step == "19930304"
        found = catalog.search(parse_qido("studies", {"StudyDate": ["1993"]}), None)
        answered = {r["0020000D"]["Value"][0]: r["00080020"]["Value"][0] for r in found}
        assert answered == {"1.2.9": "1993.03.04", "1.2.8": "19930305"}
        query = parse_qido("series", {"PerformedProcedureStepStartDate": ["19930304"]})
        assert [r["0020000E"]["Value"][0] for r in catalog.search(query, None)] == ["1.2.9.1"]
    finally:
        catalog.close()


def test_migration_0012_leaves_earlier_quarantine_records_reachable_by_their_study(catalog_url: str) -> None:
    """A file quarantined before 0012 has no patient recorded (it is in the file alone): erasure still reaches it
    through its study, and never by a Patient ID."""
    from alembic import command
    from alembic.config import Config

    from gateway.catalog.engine import MIGRATIONS

    old = Catalog(catalog_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0011")
        conn.execute(
            sa.text("INSERT INTO quarantine (key, study_uid, created_at) VALUES ('quarantine/old.dcm', '1.2.9', 0)")
        )
    old.close()
    catalog = Catalog(catalog_url)
    try:
        catalog.migrate()
        with catalog.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT patient_id, issuer_of_patient_id FROM quarantine")).one()
        assert tuple(row) == (None, None)
        assert catalog.quarantine_of_patient("P-1", None, ["1.2.9"]) == ["quarantine/old.dcm"]
        assert catalog.quarantine_of_patient("P-1", None, []) == []
    finally:
        catalog.close()


def test_migration_0015_leaves_earlier_quarantine_records_held_in_the_default_storage(catalog_url: str) -> None:
    """A file quarantined before 0015 was put in the default storage, and its upload's context was not kept: the
    record names no destination (the admin API looks for the file in the default storage, where it is) and no
    context. A record made now keeps both."""
    from alembic import command
    from alembic.config import Config

    from gateway.catalog.engine import MIGRATIONS
    from gateway.hooks import UploadContext

    old = Catalog(catalog_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0014")
        conn.execute(
            sa.text("INSERT INTO quarantine (key, study_uid, created_at) VALUES ('quarantine/old.dcm', '1.2.9', 0)")
        )
    old.close()
    catalog = Catalog(catalog_url)
    try:
        catalog.migrate()
        record = catalog.get_quarantine("quarantine/old.dcm")
        assert record is not None
        assert [record[k] for k in ("destination", "tenant", "region", "source", "sub")] == [None] * 5
        context = UploadContext(source="stow", sub="portal", tenant="trial-portal", region="eu-west-1")
        catalog.add_quarantine("quarantine/new.dcm", destination="vault", context=context)
        record = catalog.get_quarantine("quarantine/new.dcm")
        assert record is not None
        assert [record[k] for k in ("destination", "tenant", "region", "source", "sub")] == [
            "vault", "trial-portal", "eu-west-1", "stow", "portal"
        ]
    finally:
        catalog.close()


def test_migration_0013_records_the_patient_of_an_instance_in_another_patients_study(catalog_url: str) -> None:
    """Before STOW refused it (0xA778), an instance of patient B could be stored in patient A's study, and the catalog
    kept one Patient ID per study. The migration finds such instances in their metadata (no object is read) and
    records their own patient; every other instance keeps NULL, and the read path is unchanged."""
    from alembic import command
    from alembic.config import Config

    from gateway.catalog.engine import MIGRATIONS

    def patient(pid: str | None, issuer: str | None = None) -> str:
        meta = {"00100020": {"vr": "LO", "Value": [pid]} if pid is not None else {"vr": "LO"}}
        if issuer is not None:
            meta["00100021"] = {"vr": "LO", "Value": [issuer]}
        return json.dumps(meta)

    old = Catalog(catalog_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0012")
        study_attrs = json.dumps({"00100021": {"vr": "LO", "Value": ["HOSP"]}})
        conn.execute(
            sa.text("INSERT INTO studies (study_uid, patient_id, attrs, updated_at) VALUES ('1.2.9', 'PAT-A', :a, 0)"),
            {"a": study_attrs},
        )
        conn.execute(sa.text("INSERT INTO series (series_uid, study_uid, attrs) VALUES ('1.2.9.1', '1.2.9', '{}')"))
        metadata = {
            "1.2.9.1.1": patient("PAT-A", "HOSP"),
            "1.2.9.1.2": patient(" PAT-B ", "HOSP"),  # another patient
            "1.2.9.1.3": patient("PAT-A", "ELSEWHERE"),  # another issuer
            "1.2.9.1.4": patient(None),  # no Patient ID: merged into the study
            "1.2.9.1.5": patient("PAT-A"),  # no issuer: merged
            "1.2.9.1.6": patient("PAT-C"),
            # stored before orjson: the standard library wrote a DS overflow as Infinity, which SQLite's json_extract
            # and PostgreSQL's ::json refuse (the upgrade rolled back)
            "1.2.9.1.7": patient("PAT-D").replace("{", '{"00201041": {"vr": "DS", "Value": [Infinity]}, ', 1),
        }
        for sop, meta in metadata.items():
            conn.execute(
                sa.text(
                    "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, transfer_syntax_uid, "
                    "storage_key, size, sha256, etag, metadata, created_at) "
                    "VALUES (:s, '1.2.9', '1.2.9.1', '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', :k, 1, "
                    "'00', 'e', :m, 0)"
                ),
                {"s": sop, "k": f"studies/1.2.9/series/1.2.9.1/instances/{sop}.dcm", "m": meta},
            )
    old.close()
    catalog = Catalog(catalog_url)
    try:
        catalog.migrate()
        with catalog.engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT sop_uid, other_patient_id, other_issuer_of_patient_id FROM instances ORDER BY sop_uid")
            ).all()
        assert [tuple(row) for row in found] == [
            ("1.2.9.1.1", None, None),
            ("1.2.9.1.2", "PAT-B", "HOSP"),
            ("1.2.9.1.3", "PAT-A", "ELSEWHERE"),
            ("1.2.9.1.4", None, None),
            ("1.2.9.1.5", None, None),
            ("1.2.9.1.6", "PAT-C", ""),
            ("1.2.9.1.7", "PAT-D", ""),
        ]
        assert catalog.instances_of_patient_elsewhere(" PAT-B", "HOSP") == [Target("1.2.9", "1.2.9.1", "1.2.9.1.2")]
        assert catalog.instances_of_patient_elsewhere("PAT-B", "OTHER") == []
        assert catalog.instances_of_patient_elsewhere("PAT-A", "ELSEWHERE") == [
            Target("1.2.9", "1.2.9.1", "1.2.9.1.3")
        ]
        assert catalog.instances_of_patient_elsewhere("PAT-C") == [Target("1.2.9", "1.2.9.1", "1.2.9.1.6")]
        assert catalog.instances_of_patient_elsewhere("PAT-C", "") == []
        row = catalog.get_instance("1.2.9.1.2")
        assert row is not None and json.loads(row.metadata or "")["00100020"]["Value"] == [" PAT-B "]
        assert [r.sop_uid for r in catalog.instances_of("1.2.9", with_metadata=False)] == sorted(metadata)
        assert catalog.instances_of_patient_elsewhere("PAT-D") == [Target("1.2.9", "1.2.9.1", "1.2.9.1.7")]
    finally:
        catalog.close()


def test_sqlite_pragmas(tmp_path: object) -> None:
    cat = Catalog(f"sqlite:///{tmp_path}/c.db")
    cat.migrate()
    with cat.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    cat.close()


def test_reservation_commits_without_flush_and_leaves_connections_durable(tmp_path: object) -> None:
    """An upload reservation is written with synchronous=NORMAL (it need not survive a power cut); the pooled
    connection is FULL again afterwards, for the commits that must."""
    cat = Catalog(f"sqlite:///{tmp_path}/c.db")
    cat.migrate()
    seen: list[int] = []
    real = cat._reserve

    def spy(conn: Any, *args: Any) -> Any:
        seen.append(conn.exec_driver_sql("PRAGMA synchronous").scalar())
        return real(conn, *args)

    cat._reserve = spy  # type: ignore[method-assign]
    reservation = cat.reserve("1.2.3.9")
    assert reservation is not None and seen == [1]  # NORMAL inside the reservation's transaction
    assert cat.reserve("1.2.3.9") is None  # committed: a second upload of the instance waits
    with cat.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    cat.close()


def test_register_and_get_round_trip(catalog: Catalog) -> None:
    inst = make_instance(ST, SE1, "1.2.3.1.1.1", frames=3, instance_number=7)
    rec = record(inst)
    assert catalog.register_instance(rec) is True
    row = catalog.get_instance("1.2.3.1.1.1")
    assert row is not None
    assert (row.sop_uid, row.study_uid, row.series_uid) == ("1.2.3.1.1.1", ST, SE1)
    assert row.sop_class_uid == inst.sop_class_uid
    assert row.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert row.instance_number == 7 and row.number_of_frames == 3
    assert row.storage_key == f"studies/{ST}/series/{SE1}/instances/1.2.3.1.1.1.dcm"
    assert (row.size, row.sha256, row.etag) == (rec.size, rec.sha256, rec.etag)
    assert row.frame_index == b"\x00\x01idx\x001.2.3.1.1.1"
    assert isinstance(row.frame_index, bytes)
    assert row.frame_media_type == "application/octet-stream"
    assert row.bulk_ranges() == [BulkRange("7FE00010", "OW", 1000, 96)]
    assert row.bulk_range("7FE00010") == BulkRange("7FE00010", "OW", 1000, 96)
    assert row.bulk_range("00420011") is None
    assert row.metadata is not None and row.metadata_json() == inst.metadata
    assert json.loads(row.attrs) == inst.instance_attrs
    assert row.thumbnail_key is None and row.created_at > 1_600_000_000
    light = catalog.get_instance("1.2.3.1.1.1", with_metadata=False)
    assert light is not None and light.metadata is None and light.frame_index == row.frame_index
    assert catalog.get_instance("9.9.9") is None


def test_search_values_flattening() -> None:
    values = search_values(make_instance(ST, SE1, "1.1", series_number=None).metadata)
    assert values["patient_name"] == "Doe^John"
    assert values["referring_physician_name"] == "Ref^Doctor"
    assert values["series_number"] is None and values["instance_number"] == 1
    assert values["study_date"] == "20200101" and values["modality"] == "CT"


def test_register_is_idempotent_conflicts_and_replaces(catalog: Catalog) -> None:
    inst = make_instance(ST, SE1, "1.2.3.1.1.1")
    assert catalog.register_instance(record(inst, b"v1")) is True
    before = catalog.get_instance(inst.ids.sop)
    # same bytes: no change at all
    assert catalog.register_instance(record(inst, b"v1")) is False
    assert catalog.get_instance(inst.ids.sop) == before
    assert counts(catalog, ST) == (1, 1, ["CT"])
    # different bytes: conflict, nothing changed
    with pytest.raises(Conflict):
        catalog.register_instance(record(inst, b"v2"))
    assert catalog.get_instance(inst.ids.sop) == before
    # replace: the new bytes win, counts unchanged
    assert catalog.register_instance(record(inst, b"v2", replace=True)) is True
    after = catalog.get_instance(inst.ids.sop)
    assert after is not None and before is not None
    assert after.sha256 == record(inst, b"v2").sha256 != before.sha256
    assert counts(catalog, ST) == (1, 1, ["CT"])


def test_replace_into_another_series_fixes_both(catalog: Catalog) -> None:
    catalog.register_instance(record(make_instance(ST, SE1, "1.2.3.1.1.1")))
    moved = make_instance(ST, SE2, "1.2.3.1.1.1", modality="MR", series_number=2)
    assert catalog.register_instance(record(moved, b"other", replace=True)) is True
    assert counts(catalog, ST) == (1, 1, ["MR"])
    series = catalog.search(parse_qido("series", {}, study_uid=ST), None)
    assert [s["0020000E"]["Value"][0] for s in series] == [SE2]


def test_counts_modalities_and_delete(catalog: Catalog) -> None:
    for i in range(3):
        catalog.register_instance(record(make_instance(ST, SE1, f"1.2.3.1.1.{i}", instance_number=i)))
    sr = make_instance(ST, SE2, "1.2.3.1.2.1", modality="SR", series_number=2, sop_class=SR_DOC)
    catalog.register_instance(record(sr))
    assert counts(catalog, ST) == (2, 4, ["CT", "SR"])
    series = catalog.search(parse_qido("series", {}, study_uid=ST), None)
    assert [(s["0020000E"]["Value"][0], s["00201209"]["Value"][0]) for s in series] == [(SE1, 3), (SE2, 1)]
    catalog.delete_instance("1.2.3.1.2.1")  # last of its series: the series goes
    assert counts(catalog, ST) == (1, 3, ["CT"])
    catalog.delete_instance("1.2.3.1.1.0")
    assert counts(catalog, ST) == (1, 2, ["CT"])
    catalog.delete_instance("1.2.3.1.1.0")  # absent: no error
    catalog.delete_instance("1.2.3.1.1.1")
    catalog.delete_instance("1.2.3.1.1.2")  # last of the study: the study goes
    assert counts(catalog, ST) is None
    assert catalog.instances_of(ST) == []
    assert catalog.search(parse_qido("series", {}), None) == []


def test_instances_of_order(catalog: Catalog) -> None:
    # series 2 registered first; instance numbers out of order; one without a number sorts last
    plan = [(SE2, 2, 1), (SE1, 1, 3), (SE1, 1, None), (SE1, 1, 1), (SE1, 1, 2)]
    for n, (series_uid, series_number, number) in enumerate(plan):
        inst = make_instance(
            ST, series_uid, f"{series_uid}.{n}", series_number=series_number, instance_number=number
        )
        catalog.register_instance(record(inst))
    rows = catalog.instances_of(ST)
    assert [(r.series_uid, r.instance_number) for r in rows] == [
        (SE1, 1),
        (SE1, 2),
        (SE1, 3),
        (SE1, None),
        (SE2, 1),
    ]
    assert all(r.metadata is not None for r in rows)
    only = catalog.instances_of(ST, SE2, with_metadata=False)
    assert [(r.sop_uid, r.metadata) for r in only] == [(f"{SE2}.0", None)]


def test_series_in_two_studies_is_a_conflict(catalog: Catalog) -> None:
    catalog.register_instance(record(make_instance(ST, SE1, "1.2.3.1.1.1")))
    with pytest.raises(Conflict):
        catalog.register_instance(record(make_instance("1.2.3.9", SE1, "1.2.3.9.1")))
    assert counts(catalog, "1.2.3.9") is None
    assert catalog.get_instance("1.2.3.9.1") is None


def test_an_instance_of_another_patient_is_refused_in_a_study(catalog: Catalog) -> None:
    """The catalog keeps one Patient ID (and issuer) per study, which erasure finds the patient by: an instance of
    patient B stored into patient A's study would stay served after B's erasure. It is refused, alone: the rest of
    its batch is stored. An empty Patient ID or issuer differs from none (a study's values merge)."""
    catalog.register_instance(record(make_instance(ST, SE1, f"{SE1}.1", patient_id="PA", issuer="HOSP")))
    batch = [
        make_instance(ST, SE1, f"{SE1}.2", patient_id="PB", issuer="HOSP"),  # another patient
        make_instance(ST, SE1, f"{SE1}.3", patient_id="PA", issuer="CLINIC"),  # same ID, another issuer
        make_instance(ST, SE1, f"{SE1}.4", patient_id="PA"),  # no issuer: A's
        make_instance(ST, SE2, f"{SE2}.1", patient_id="", series_number=2),  # no Patient ID: merges into A's
        make_instance("1.2.3.7", "1.2.3.7.1", "1.2.3.7.1.1", patient_id="PB"),  # B's own study
        make_instance("1.2.3.7", "1.2.3.7.1", "1.2.3.7.1.2", patient_id="PC"),  # into it, in the same batch
    ]
    outcomes = catalog.register_instances([Registration(record(inst)) for inst in batch])
    assert [type(o).__name__ if isinstance(o, Exception) else o for o in outcomes] == [
        "PatientMismatch", "PatientMismatch", True, True, True, "PatientMismatch"
    ]
    assert isinstance(outcomes[0], PatientMismatch) and outcomes[0].status == 409
    assert [r.sop_uid for r in catalog.instances_of(ST)] == [f"{SE1}.1", f"{SE1}.4", f"{SE2}.1"]
    assert counts(catalog, ST) == (2, 3, ["CT"])
    assert catalog.studies_of_patient("PA", "HOSP") == [ST] and catalog.studies_of_patient("PB") == ["1.2.3.7"]
    assert catalog.get_instance(f"{SE1}.2") is None and catalog.get_instance("1.2.3.7.1.2") is None
    with pytest.raises(PatientMismatch):  # one at a time, too
        catalog.register_instance(record(make_instance(ST, SE1, f"{SE1}.5", patient_id="PB")))
    # a replaced instance is checked once the old one is out: the only instance of its study may change patient
    catalog.register_instance(record(make_instance("1.2.3.8", "1.2.3.8.1", "1.2.3.8.1.1", patient_id="PA")))
    replaced = record(make_instance("1.2.3.8", "1.2.3.8.1", "1.2.3.8.1.1", patient_id="PB"), b"v2", replace=True)
    assert catalog.patient_differs(replaced) is False  # what ingest asks before it overwrites the object
    assert catalog.patient_differs(record(make_instance(ST, SE1, f"{SE1}.1", patient_id="PB"))) is True
    assert catalog.register_instance(replaced) is True
    assert catalog.studies_of_patient("PB") == ["1.2.3.7", "1.2.3.8"]


def test_two_patients_uploading_into_one_new_study_at_once(catalog_url: str) -> None:
    """Two writers (two nodes) each storing the first instance of a new study, for two patients: one is stored and
    the other refused, every time. On PostgreSQL a row lock cannot serialise them (neither sees a row to lock):
    both read "no study", and the second upsert replaced the first one's Patient ID, so erasing that patient
    missed their instance."""
    nodes = [Catalog(catalog_url), Catalog(catalog_url)]
    nodes[0].migrate()
    try:
        for n in range(12):
            study = f"1.2.3.50.{n}"
            start = threading.Barrier(2)
            outcomes: list[Any] = [None, None]

            def upload(
                node: int, study: str = study, start: threading.Barrier = start, outcomes: list[Any] = outcomes
            ) -> None:
                inst = make_instance(study, f"{study}.{node}", f"{study}.{node}.1", patient_id=f"P{node}")
                start.wait()
                outcomes[node] = nodes[node].register_instances([Registration(record(inst))])[0]

            threads = [threading.Thread(target=upload, args=(node,)) for node in (0, 1)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(type(o).__name__ for o in outcomes) == ["PatientMismatch", "bool"], (n, outcomes)
            (winner,) = [node for node in (0, 1) if outcomes[node] is True]
            assert study in nodes[0].studies_of_patient(f"P{winner}")
            assert study not in nodes[0].studies_of_patient(f"P{1 - winner}")
            assert counts(nodes[0], study) == (1, 1, ["CT"])
    finally:
        for node in nodes:
            node.close()


def test_invalid_uid_rejected(catalog: Catalog) -> None:
    with pytest.raises(InvalidUID):
        catalog.register_instance(record(make_instance(ST, SE1, "1.2.x'; DROP TABLE studies;--")))


def test_thumbnail_and_all_keys(catalog: Catalog) -> None:
    catalog.register_instance(record(make_instance(ST, SE1, "1.2.3.1.1.1")))
    catalog.register_instance(record(make_instance(ST, SE2, "1.2.3.1.2.1", series_number=2)))
    stored = catalog.get_instance("1.2.3.1.1.1")
    assert stored is not None
    # only for the bytes it was rendered from: not for an instance deleted and stored again meanwhile
    assert not catalog.set_thumbnail("1.2.3.1.1.1", "thumbs/old.jpg", "0" * 64)
    assert catalog.set_thumbnail("1.2.3.1.1.1", "thumbs/a.jpg", stored.sha256)
    row = catalog.get_instance("1.2.3.1.1.1")
    assert row is not None and row.thumbnail_key == "thumbs/a.jpg"
    assert catalog.all_instance_keys() == {
        f"studies/{ST}/series/{SE1}/instances/1.2.3.1.1.1.dcm",
        f"studies/{ST}/series/{SE2}/instances/1.2.3.1.2.1.dcm",
    }


def test_revocations(catalog: Catalog) -> None:
    now = 2_000_000_000
    catalog.revoke("jti-a", now + 100)
    catalog.revoke("jti-b", now + 10)
    catalog.revoke("jti-b", now + 5)  # idempotent; the later expiry wins
    assert catalog.revoked_jtis(now) == {"jti-a", "jti-b"}
    assert catalog.revoked_jtis(now + 10) == {"jti-a"}
    assert catalog.revoked_jtis(now + 100) == set()
    with catalog.engine.connect() as conn:
        remaining = conn.execute(sa.select(sa.func.count()).select_from(revocations)).scalar_one()
    assert remaining == 2  # not purged yet: purges run every PURGE_INTERVAL
    assert catalog.revoked_jtis(now + 11 + PURGE_INTERVAL) == set()
    with catalog.engine.connect() as conn:
        remaining = conn.execute(sa.select(sa.func.count()).select_from(revocations)).scalar_one()
    assert remaining == 0


def test_audit(catalog: Catalog) -> None:
    catalog.add_audit(source="stow", sub="u1", sop_uid="1.1", study_uid=ST, decision="accept", tags=[])
    catalog.add_audit(
        source="s3-event",
        sub=None,
        sop_uid="1.2",
        study_uid=ST,
        decision="quarantine",
        rule="no-names",
        destination="eu",
        tags=["PatientName", "00100010"],
        policy_version="v3",
        created_at=1_700_000_000,
    )
    catalog.add_audit(source="cli", sop_uid="2.1", study_uid="2", decision="reject")
    records = catalog.audit_records(study_uid=ST)
    assert [r["sop_uid"] for r in records] == ["1.2", "1.1"]  # newest first
    second = records[0]
    assert second["tags"] == ["PatientName", "00100010"]
    assert (second["rule"], second["destination"], second["policy_version"]) == ("no-names", "eu", "v3")
    assert second["created_at"] == 1_700_000_000
    assert [r["decision"] for r in catalog.audit_records(sop_uid="2.1")] == ["reject"]
    assert len(catalog.audit_records(limit=2)) == 2
    with pytest.raises(TypeError):
        catalog.add_audit(patient_name="Doe")


def test_quarantine(catalog: Catalog) -> None:
    key = f"quarantine/studies/{ST}/series/{SE1}/instances/1.1.dcm"
    catalog.add_quarantine(
        key, sop_uid="1.1", study_uid=ST, series_uid=SE1, reason="PHI", report={"tags": ["PatientName"]}
    )
    catalog.add_quarantine("quarantine/other.dcm", reason="policy", created_at=1)
    got = catalog.get_quarantine(key)
    assert got is not None
    assert (got["sop_uid"], got["reason"], got["report"]) == ("1.1", "PHI", {"tags": ["PatientName"]})
    assert [q["key"] for q in catalog.list_quarantine()] == [key, "quarantine/other.dcm"]
    catalog.add_quarantine(key, reason="PHI again")  # same key: updated, not duplicated
    assert catalog.get_quarantine(key)["reason"] == "PHI again"  # type: ignore[index]
    catalog.remove_quarantine(key)
    assert catalog.get_quarantine(key) is None
    assert [q["key"] for q in catalog.list_quarantine()] == ["quarantine/other.dcm"]


def test_concurrent_registers_keep_counts_exact(catalog: Catalog) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(8):
                series_uid = f"1.2.3.1.{n % 3}"
                inst = make_instance(
                    ST, series_uid, f"{series_uid}.{n}.{i}", modality=["CT", "MR", "SR"][n % 3]
                )
                catalog.register_instance(record(inst))
                # and everybody races on one shared SOP UID with the same bytes
                catalog.register_instance(record(make_instance(ST, "1.2.3.1.0", "1.2.3.1.0.999")))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert counts(catalog, ST) == (3, 6 * 8 + 1, ["CT", "MR", "SR"])
    assert len(catalog.instances_of(ST, with_metadata=False)) == 49


def test_check_reports_unavailable(tmp_path: object) -> None:
    with pytest.raises(CatalogUnavailable):
        Catalog("sqlite:////nonexistent-dir/sub/catalog.db").check()
    with pytest.raises(CatalogUnavailable):
        Catalog("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2").check()
    fresh = Catalog(f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(CatalogUnavailable):  # reachable but not migrated
        fresh.check()


def test_outage_on_write_is_catalog_unavailable() -> None:
    cat = Catalog("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(CatalogUnavailable):
        cat.register_instance(record(make_instance(ST, SE1, "1.1")))
    with pytest.raises(CatalogUnavailable):
        cat.revoked_jtis(0)


def test_record_from_real_file(catalog: Catalog, tmp_path: object) -> None:
    """A pydicom-written file through ingest's indexer into the catalog and back out through QIDO."""
    index = pytest.importorskip("gateway.dicom.index")
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5.6.7")
    ds.SOPClassUID, ds.SOPInstanceUID = UID("1.2.840.10008.5.1.4.1.1.7"), UID("1.2.3.4.5.6.7")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = UID("1.2.3.4"), UID("1.2.3.4.5")
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = "Roe^Jane", "PX-9", "20210304", "OT"
    ds.SeriesNumber, ds.InstanceNumber = 4, 2
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 8, 8, 7
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = bytes([1, 2, 3, 4])
    path = f"{tmp_path}/x.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    indexed = index.index_file(__import__("pathlib").Path(path))
    rec = InstanceRecord.from_indexed(indexed, storage_key="k", size=1, sha256="0" * 64, etag='"e"')
    assert rec.values["patient_id"] == "PX-9" and rec.values["series_number"] == 4
    assert catalog.register_instance(rec) is True
    found = catalog.search(parse_qido("studies", {"PatientID": ["PX-9"], "StudyDate": ["2021"]}), None)
    assert [f["0020000D"]["Value"] for f in found] == [["1.2.3.4"]]
    assert found[0]["00100010"]["Value"] == [{"Alphabetic": "Roe^Jane"}]
    assert found[0]["00080061"]["Value"] == ["OT"]


def test_patient_name_prefix_same_page_by_name_index_or_by_order(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PN prefix is case-insensitive and answers the same ordered page whichever index drives it: on SQLite a
    prefix matching more than wide_bound studies reads the study order index (lowered here so a few studies
    cross it), a narrower one the lower(patient_name) range; undated studies come last on both backends."""
    from gateway.catalog import search

    monkeypatch.setattr(search, "wide_bound", lambda conn, query: 3)
    names = ["DOE^Jane", "doe^John", "Doe^Ann", "Doering^Max", "Dobson^Al", "O'Doe^X", "Müller^Doe"]
    for i, name in enumerate(names):
        study = f"1.2.9.{i}"
        date = None if i == 1 else f"2020010{i}"
        inst = make_instance(study, f"{study}.1", f"{study}.1.1", patient_name=name, study_date=date)
        catalog.register_instance(record(inst))

    def page(pattern: str, **extra: list[str]) -> list[str]:
        query = parse_qido("studies", {"PatientName": [pattern], **extra})
        if catalog.dialect == "sqlite" and pattern in ("DOE*", "dob*"):  # 'doe' holds 4 > 3 studies, 'dob' 1
            with catalog.engine.connect() as conn:
                assert search.wide_prefixes(conn, query) == ({0} if pattern == "DOE*" else set())
        return [row["00100010"]["Value"][0]["Alphabetic"] for row in catalog.search(query, None)]

    assert page("DOE*") == ["Doering^Max", "Doe^Ann", "DOE^Jane", "doe^John"]
    assert page("doe*", limit=["2"], offset=["1"]) == ["Doe^Ann", "DOE^Jane"]
    assert page("dob*") == ["Dobson^Al"]
    assert page("DO?SON*") == ["Dobson^Al"]
    assert page("o'd*") == ["O'Doe^X"]
    assert page("*doe") == ["Müller^Doe"]


def test_an_exact_name_matches_with_or_without_its_trailing_delimiters(catalog: Catalog) -> None:
    """PS3.5 6.2: trailing empty components and their delimiters may be omitted, so `DOE^JOHN^^^` (as modalities
    write it) and `DOE^JOHN` are one name, found by either spelling, case-insensitively, in any alphabet."""
    names = ["DOE^JOHN^^^", "Doe^John", "doe^john^", "DOE", "DOE^JOHN^X", "Müller^Jörg^^", "müller^jörg"]
    for i, name in enumerate(names):
        study = f"1.2.7.{i}"
        catalog.register_instance(record(make_instance(study, f"{study}.1", f"{study}.1.1", patient_name=name)))

    def found(name: str) -> list[str]:
        query = parse_qido("studies", {"PatientName": [name]})
        return sorted(row["00100010"]["Value"][0]["Alphabetic"] for row in catalog.search(query, None))

    both = ["DOE^JOHN^^^", "Doe^John", "doe^john^"]
    assert found("doe^john") == found("DOE^JOHN^^^") == found("DOE^JOHN^^^^") == found("Doe^John^") == both
    assert found("DOE") == found("DOE^^^^") == ["DOE"]
    assert found("*^john") == found("D?E^JOHN") == found("*OE^JOHN^") == both  # wildcards alike
    assert found("DOE^J*") == sorted([*both, "DOE^JOHN^X"])
    assert found("*^X") == ["DOE^JOHN^X"]
    assert found("MÜLLER^JÖRG") == found("müller^jörg^^^") == ["Müller^Jörg^^", "müller^jörg"]


def test_a_greek_name_matches_in_either_case_on_both_databases(catalog: Catalog) -> None:
    """Greek writes a final small sigma (ς) where the capital Σ ends a word: `ΔΙΟΝΥΣΙΟΣ` in small letters is
    `διονυσιος`. PostgreSQL's lower() writes σ there, and so does Python's (SQLite's unicode_lower) before a "^":
    a name stored in capitals, as Greek RIS write them, was not found by `Διονυσιος^Νικος` on either database."""
    names = ["ΔΙΟΝΥΣΙΟΣ^ΝΙΚΟΣ", "Παπαδόπουλος^Γιώργος", "ΣΙΣΣΥ^ΑΝΝΑ"]
    for i, name in enumerate(names):
        study = f"1.2.6.{i}"
        catalog.register_instance(record(make_instance(study, f"{study}.1", f"{study}.1.1", patient_name=name)))

    def found(name: str) -> list[str]:
        query = parse_qido("studies", {"PatientName": [name]})
        return sorted(row["00100010"]["Value"][0]["Alphabetic"] for row in catalog.search(query, None))

    for query in ("Διονυσιος^Νικος", "διονυσιος^νικος", "ΔΙΟΝΥΣΙΟΣ^ΝΙΚΟΣ", "Διονυσιος*", "*ος^Νικος", "Δ?ονυσιος*"):
        assert found(query) == ["ΔΙΟΝΥΣΙΟΣ^ΝΙΚΟΣ"], query
    for query in ("ΠΑΠΑΔΌΠΟΥΛΟΣ^ΓΙΏΡΓΟΣ", "παπαδόπουλος*", "ΠΑΠΑΔΌΠΟΥΛΟΣ*"):
        assert found(query) == ["Παπαδόπουλος^Γιώργος"], query
    assert found("Σισσυ^Αννα") == found("σισσυ*") == ["ΣΙΣΣΥ^ΑΝΝΑ"]


def test_a_turkish_dotted_capital_i_matches_alike_on_both_databases(catalog: Catalog) -> None:
    """`İ` (U+0130, Turkish capital dotted I) is `i` in small letters to PostgreSQL's lower(), and `i̇` (i and a
    combining dot above) to Python's (the query, SQLite's unicode_lower): `İBRAHİM` stored in capitals, as Turkish
    RIS write names, was found by `İbrahim` on SQLite only. A query in ASCII letters is folded by SQLite's own
    lower(), which leaves `İ` as it is: `ibrahim` finds it on PostgreSQL only (docs/catalog.md)."""
    inst = make_instance("1.2.5.1", "1.2.5.1.1", "1.2.5.1.1.1", patient_name="YILDIZ^İBRAHİM")
    catalog.register_instance(record(inst))

    def found(name: str) -> list[str]:
        query = parse_qido("studies", {"PatientName": [name]})
        return [row["00100010"]["Value"][0]["Alphabetic"] for row in catalog.search(query, None)]

    for query in ("Yildiz^İbrahim", "YILDIZ^İBRAHİM", "yildiz^İ*", "*^İbrahim", "*^İ?rah?m"):
        assert found(query) == ["YILDIZ^İBRAHİM"], query
    assert found("yildiz^ibrahim") == ([] if catalog.dialect == "sqlite" else ["YILDIZ^İBRAHİM"])


def test_deep_study_pages_by_uids_first_match_the_plain_pages(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From DEEP_OFFSET on, a study page is read by its UIDs first: every page, filtered and scoped, is the same
    as the one plain LIMIT/OFFSET gives, in the same order (undated studies last, ties by StudyInstanceUID)."""
    from gateway.catalog import search
    from gateway.scope import Scope

    dates = ["20200105", None, "20200105", "20190101", "20210707", None, "20200105", "20180303", "20220202"]
    for i, date in enumerate(dates):
        study = f"1.2.8.{i}"
        inst = make_instance(study, f"{study}.1", f"{study}.1.1", study_date=date, modality="MR" if i % 3 else "CT")
        catalog.register_instance(record(inst))

    def pages(args: dict[str, list[str]], scope: Scope | None) -> list[list[str]]:
        found = []
        for offset in range(len(dates) + 1):
            query = parse_qido("studies", {**args, "limit": ["2"], "offset": [str(offset)]})
            found.append([row["0020000D"]["Value"][0] for row in catalog.search(query, scope)])
        return found

    scope = Scope(frozenset(f"1.2.8.{i}" for i in (0, 1, 2, 4, 5, 8)))
    for args, visible in (({}, None), ({"ModalitiesInStudy": ["MR"]}, None), ({}, scope)):
        monkeypatch.setattr(search, "DEEP_OFFSET", 10**9)
        plain = pages(args, visible)
        monkeypatch.setattr(search, "DEEP_OFFSET", 1)
        assert pages(args, visible) == plain
    monkeypatch.setattr(search, "DEEP_OFFSET", 1)
    assert pages({}, None)[0] == ["1.2.8.8", "1.2.8.4"]
    assert pages({}, None)[3] == ["1.2.8.2", "1.2.8.6"]
    assert pages({}, None)[6] == ["1.2.8.7", "1.2.8.1"]
    assert pages({}, None)[7] == ["1.2.8.1", "1.2.8.5"]


def test_wide_prefix_bound_grows_with_the_catalog_and_the_page(tmp_path: Path) -> None:
    """SQLite only (PostgreSQL's planner weighs the LIMIT itself): sqrt(N (offset + limit) / 5), N from the
    largest rowid, capped; a first page of 100 among 1,000,000 studies takes the order index above ~4,500."""
    from gateway.catalog import search

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.migrate()
    for i in range(20):
        study = f"1.2.7.{i}"
        catalog.register_instance(record(make_instance(study, f"{study}.1", f"{study}.1.1")))
    with catalog.engine.connect() as conn:
        first = search.wide_bound(conn, parse_qido("studies", {}))
        deeper = search.wide_bound(conn, parse_qido("studies", {"offset": ["400"]}))
        deepest = search.wide_bound(conn, parse_qido("studies", {"offset": ["2147483647"]}))
    assert (first, deeper, deepest) == (20, 44, search.WIDE_PREFIX_MAX)
    catalog.close()


@pytest.mark.postgres
def test_postgres_connections_are_bounded_when_the_database_stops_answering(postgres_url: str) -> None:
    """libpq's defaults wait for TCP (minutes) on a database whose packets vanish (an RDS failover): every
    connection carries a connect timeout, TCP_USER_TIMEOUT and keepalives; a value given in the URL wins."""
    from gateway.catalog.engine import PG_NETWORK_BOUNDS

    def parameters(url: str) -> dict[str, str]:
        catalog = Catalog(url)
        try:
            with catalog.engine.connect() as conn:
                return dict(conn.connection.dbapi_connection.info.get_parameters())  # type: ignore[union-attr]
        finally:
            catalog.close()

    given = parameters(postgres_url)
    assert {name: given.get(name) for name in PG_NETWORK_BOUNDS} == {
        "connect_timeout": "5",
        "tcp_user_timeout": "15000",
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
    }
    assert parameters(f"{postgres_url}?connect_timeout=9")["connect_timeout"] == "9"


def test_a_statement_is_bounded_by_the_databases_silence_not_by_its_length() -> None:
    """``STATEMENT_WAIT`` ends a wait after that much silence from the server (a frozen database), never a statement
    whose answer is still arriving (a large result read over a slow network is no outage)."""
    import time

    from gateway.catalog.engine import _until_silent_for

    class Silent(Exception):
        pass

    def protocol(rounds: int) -> Any:  # a psycopg generator: a state out, the socket's readiness in, per round
        for _ in range(rounds):
            yield "wait-read"
        return "answer"

    def drive(gen: Any, readiness: list[int], pause: float) -> Any:
        state = next(gen)
        try:
            for ready in readiness:
                time.sleep(pause)
                state = gen.send(ready)
        except StopIteration as done:
            return done.value
        return state

    # 8 rounds of 0.03 s, each bringing data: 0.24 s in all, well past the 0.1 s bound
    assert drive(_until_silent_for(protocol(8), 0.1, Silent), [1] * 9, 0.03) == "answer"
    # silence (psycopg's wait timed out: ready 0) for longer than the bound
    with pytest.raises(Silent):
        drive(_until_silent_for(protocol(8), 0.1, Silent), [1, 0, 0, 0, 0, 0, 0, 0, 0], 0.03)
