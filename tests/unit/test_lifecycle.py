"""Deletion on the real catalog (SQLite and PostgreSQL) and the real local storage: what hide() makes invisible in
one transaction, what Deleter removes from storage (everything under an instance's name, nothing of its
neighbours or of an instance stored again), and how reconcile finishes a deletion a crash interrupted."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest

from gateway.catalog import Catalog
from gateway.catalog.deletions import Patient, Target
from gateway.catalog.schema import instances
from gateway.config import Settings
from gateway.errors import CatalogUnavailable, ConfigError
from gateway.lifecycle import Deleter, instance_of, summary
from gateway.phi.policy import Retention, parse_policy
from gateway.reconcile import reconcile
from gateway.retention import expired
from gateway.storage.local import LocalStorage
from gateway.tools.synth import make_series
from tests.fixtures.catalog_data import make_instance, record

ST, ST2 = "1.2.3.1", "1.2.3.2"
SE1, SE2 = "1.2.3.1.1", "1.2.3.1.2"
SOP1, SOP2, SOP3 = "1.2.3.1.1.1", "1.2.3.1.1.11", "1.2.3.1.2.1"


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(f"file://{tmp_path / 'objects'}", create=True)


def put(storage: LocalStorage, tmp_path: Path, key: str) -> None:
    source = tmp_path / "blob"
    source.write_bytes(key.encode())
    storage.put_file(key, source)


def store(catalog: Catalog, storage: LocalStorage, tmp_path: Path, study: str, series: str, sop: str, **kw: str) -> str:
    instance = make_instance(study, series, sop, **kw)  # type: ignore[arg-type]
    catalog.register_instance(record(instance))
    put(storage, tmp_path, instance.ids.key)
    return instance.ids.key


@pytest.fixture
def stored(catalog: Catalog, storage: LocalStorage, tmp_path: Path) -> dict[str, str]:
    keys = {
        SOP1: store(catalog, storage, tmp_path, ST, SE1, SOP1),
        SOP2: store(catalog, storage, tmp_path, ST, SE1, SOP2),
        SOP3: store(catalog, storage, tmp_path, ST, SE2, SOP3),
    }
    # derived objects next to SOP1: a thumbnail and a folder of derivatives
    base = keys[SOP1].removesuffix(".dcm")
    put(storage, tmp_path, base + ".thumb.jpg")
    put(storage, tmp_path, base + "/htj2k/1.jph")
    return keys


def deleter(catalog: Catalog, storage: LocalStorage) -> Deleter:
    return Deleter(catalog, storage, settle=0, sleep=lambda _: None)


def test_instance_of_tells_neighbours_apart() -> None:
    folder = "studies/1/series/2/instances/"
    assert instance_of(folder + "1.2.3.dcm") == (folder, "1.2.3")
    assert instance_of(folder + "1.2.3.thumb.jpg") == (folder, "1.2.3")
    assert instance_of(folder + "1.2.3/htj2k/1.jph") == (folder, "1.2.3")
    assert instance_of(folder + "1.2.3.4.dcm") == (folder, "1.2.3.4")
    assert instance_of("quarantine/x.dcm") is None


def test_delete_instance_removes_it_and_its_derivatives_only(
    catalog: Catalog, storage: LocalStorage, stored: dict[str, str]
) -> None:
    removed = deleter(catalog, storage).delete([Target(ST, SE1, SOP1)], sub="portal", reason="withdrawn")
    assert [r.sop_uids for r in removed] == [(SOP1,)]
    assert catalog.get_instance(SOP1) is None and catalog.get_instance(SOP2) is not None
    assert sorted(storage.list("studies/")) == sorted([stored[SOP2], stored[SOP3]])
    (record_,) = catalog.deletion_records()
    assert record_["level"] == "instance" and record_["sub"] == "portal" and record_["reason"] == "withdrawn"
    assert record_["instances"] == 1 and record_["finished_at"] is not None and "keys" not in record_
    assert catalog.study_version(ST) is not None  # the study stays with its other instances


def test_delete_series_then_study_recounts_and_is_idempotent(
    catalog: Catalog, storage: LocalStorage, stored: dict[str, str]
) -> None:
    d = deleter(catalog, storage)
    (series_removed,) = d.delete([Target(ST, SE1)], sub="k", reason="")
    assert set(series_removed.sop_uids) == {SOP1, SOP2}
    assert catalog.study_version(ST) == (1, 1, catalog.study_version(ST)[2])  # type: ignore[index]
    assert d.delete([Target(ST, SE1)], sub="k", reason="") == []  # nothing left there
    (study_removed,) = d.delete([Target(ST)], sub="k", reason="")
    assert study_removed.sop_uids == (SOP3,)
    assert catalog.study_version(ST) is None and list(storage.list("studies/")) == []
    assert d.delete([Target(ST)], sub="k", reason="") == []
    gens = catalog.generations(0)
    assert gens == {ST: study_removed.id} and study_removed.id > series_removed.id


def test_patient_erasure_by_id_and_issuer(catalog: Catalog, storage: LocalStorage, tmp_path: Path) -> None:
    store(catalog, storage, tmp_path, ST, SE1, SOP1, patient_id="PAT-9")
    store(catalog, storage, tmp_path, ST2, "1.2.3.2.1", "1.2.3.2.1.1", patient_id="PAT-9")
    store(catalog, storage, tmp_path, "1.2.3.3", "1.2.3.3.1", "1.2.3.3.1.1", patient_id="OTHER")
    assert catalog.studies_of_patient("PAT-9") == [ST, ST2]
    assert catalog.studies_of_patient("PAT-9", "NO-SUCH-ISSUER") == []
    removed = deleter(catalog, storage).delete(
        [Target(s) for s in catalog.studies_of_patient("PAT-9")], sub="k", reason="erasure"
    )
    result = summary(removed)
    assert result["studies"] == [ST, ST2] and result["instances"] == 2 and result["series"] == 2
    assert len({r["request_id"] for r in catalog.deletion_records()}) == 1  # one call, one request id
    assert catalog.studies_of_patient("PAT-9") == [] and catalog.studies_of_patient("OTHER") == ["1.2.3.3"]


def test_a_reupload_during_the_settle_time_keeps_its_objects(
    catalog: Catalog, storage: LocalStorage, tmp_path: Path, stored: dict[str, str]
) -> None:
    def reupload(_: float) -> None:
        store(catalog, storage, tmp_path, ST, SE1, SOP1)

    Deleter(catalog, storage, settle=0, sleep=reupload).delete([Target(ST)], sub="k", reason="")
    # SOP1 is stored again: its objects stay (its derivatives are rebuilt from the new bytes on demand)
    assert all(instance_of(key) == (stored[SOP1].rsplit("/", 1)[0] + "/", SOP1) for key in storage.list("studies/"))
    assert stored[SOP1] in storage.list("studies/") and stored[SOP2] not in storage.list("studies/")
    assert catalog.get_instance(SOP1) is not None


def test_reconcile_finishes_an_interrupted_deletion(
    catalog: Catalog, storage: LocalStorage, stored: dict[str, str], catalog_url: str
) -> None:
    catalog.hide([Target(ST, SE1)], sub="k", reason="", now=1000)  # the crash: hidden, objects still there
    settings = Settings.from_mapping(
        {
            "SIGNING_KEYS": "s" * 32,
            "API_KEYS": "a" * 32,
            "STORAGE_URL": storage.url,
            "DATABASE_URL": catalog_url,
        }
    )
    report = reconcile(settings, repair=False)
    assert report["orphans"] == []  # objects of a deletion are never taken for orphans
    assert [d["study_uid"] for d in report["unfinished_deletions"]] == [ST]
    assert len(list(storage.list("studies/"))) == 5
    report = reconcile(settings, repair=True)
    assert report["registered"] == [] and [d["removed"] for d in report["finished_deletions"]] == [4]
    assert list(storage.list("studies/")) == [stored[SOP3]]
    assert catalog.unfinished_deletions() == []
    assert reconcile(settings, repair=True)["unfinished_deletions"] == []


def test_reconcile_leaves_a_deletion_still_in_its_settle_to_its_delete(
    catalog: Catalog, storage: LocalStorage, stored: dict[str, str], catalog_url: str
) -> None:
    """A DELETE waiting out its settle has hidden its rows and not yet removed their objects, as a crashed one has:
    `reconcile` reported it as a deletion a crash interrupted (exit 1, an alarm for a monitor) while it ran. Only a
    record older than the settle is one; the younger one's objects are still no orphans."""
    catalog.hide([Target(ST, SE1)], sub="k", reason="")  # now: the DELETE is in its settle
    settings = Settings.from_mapping(
        {
            "SIGNING_KEYS": "s" * 32,
            "API_KEYS": "a" * 32,
            "STORAGE_URL": storage.url,
            "DATABASE_URL": catalog_url,
            "DELETE_SETTLE": "60",
        }
    )
    for repair in (False, True):
        report = reconcile(settings, repair=repair)
        assert (report["unfinished_deletions"], report["finished_deletions"], report["orphans"]) == ([], [], [])
    assert len(list(storage.list("studies/"))) == 5 and len(catalog.unfinished_deletions()) == 1


def test_reconcile_repair_beats_the_orphans_lease_while_it_registers_it(
    catalog: Catalog, storage: LocalStorage, tmp_path: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repair held its orphan's reservation for the lease alone (60 s), never beaten: a large object (a whole-slide
    image downloaded from S3, then indexed) outlasted it, and an upload of the instance took the reservation over
    while the repair was still registering the orphan. The repair now holds it as an upload does."""
    monkeypatch.setattr("gateway.catalog.admin.LEASE_SECONDS", 1)
    monkeypatch.setattr("gateway.catalog.admin.HEARTBEAT_SECONDS", 0.05)
    [orphan] = make_series(tmp_path / "orphan", slices=1, rows=16, columns=16, seed=5, clean=True)
    ds = pydicom.dcmread(orphan)
    key = f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}.dcm"
    storage.put_file(key, orphan)
    downloading = threading.Event()
    download = LocalStorage.download

    def slow_download(self: LocalStorage, name: str, local: Path) -> None:
        download(self, name, local)
        downloading.set()
        time.sleep(3.5)  # past the 1 s lease, as a large object's download and index outlast 60 s

    monkeypatch.setattr(LocalStorage, "download", slow_download)
    settings = Settings.from_mapping(
        {"SIGNING_KEYS": "s" * 32, "API_KEYS": "a" * 32, "STORAGE_URL": storage.url, "DATABASE_URL": catalog_url}
    )
    with ThreadPoolExecutor(1) as pool:
        repairing = pool.submit(reconcile, settings, repair=True)
        assert downloading.wait(30)
        waited = 0
        while not repairing.done():  # an upload of the instance, trying to reserve it meanwhile
            [claim] = catalog.reserve_many([str(ds.SOPInstanceUID)])
            if claim is not None:
                catalog.release(claim)
                # won only once the repair's registration ended the reservation: it then finds the orphan stored
                assert claim.stored is not None, f"an upload took the orphan over after {waited} attempts"
                break
            waited += 1
            time.sleep(0.1)
        report = repairing.result()
    assert waited > 20  # the whole download, past the lease
    assert report["registered"] == [key]
    assert catalog.get_instance(str(ds.SOPInstanceUID)) is not None


# -- retention --------------------------------------------------------------------------------------------------


def test_retention_policy_section_is_validated() -> None:
    policy = parse_policy(
        {
            "version": 1,
            "destinations": {"eu": {"storage": "default", "region": "eu", "identifiable_allowed": False}},
            "retention": {"days": 3650, "destinations": {"eu": 365}, "tenants": {"trial": 30}},
        }
    )
    assert policy.retention.days_for("trial", "eu") == 30
    assert policy.retention.days_for("other", "eu") == 365
    assert policy.retention.days_for(None, None) == 3650
    assert parse_policy({"version": 1}).retention.configured is False
    for bad, where in (
        ({"days": 0}, "retention.days"),
        ({"days": "30"}, "retention.days"),
        ({"destinations": {"nowhere": 3}}, "retention.destinations"),
        ({"tenants": {"t": True}}, "retention.tenants.t"),
        ({"weeks": 3}, "retention"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse_policy({"version": 1, "retention": bad})
        assert where in str(caught.value)


def test_retention_removes_what_its_rule_expired(catalog: Catalog, storage: LocalStorage, tmp_path: Path) -> None:
    day = 86400
    now = 1_000 * day
    whole = make_instance(ST, SE1, SOP1)
    catalog.register_instance(record_with(whole, tenant="trial"))
    put(storage, tmp_path, whole.ids.key)
    for sop, tenant in ((SOP2, "trial"), ("1.2.3.2.1.2", None)):
        inst = make_instance(ST2, "1.2.3.2.1", sop if sop != SOP2 else "1.2.3.2.1.1")
        catalog.register_instance(record_with(inst, tenant=tenant))
        put(storage, tmp_path, inst.ids.key)
    backdate(catalog, now - 40 * day)
    retention = Retention(days=3650, tenants={"trial": 30})
    found = expired(catalog, retention, now)
    assert [(t.level, t.study, reason) for t, reason in found] == [
        ("study", ST, "retention: older than 30 days"),  # its one instance expired: the whole study goes
        ("instance", ST2, "retention: older than 30 days"),  # one of two: only that instance
    ]
    assert expired(catalog, retention, now - 11 * day) == []  # 29 days old: nothing yet
    assert expired(catalog, Retention(), now) == []
    removed = Deleter(catalog, storage, settle=0, sleep=lambda _: None).delete(
        [t for t, _ in found], sub="retention", reason=found[0][1]
    )
    assert len(removed) == 2 and catalog.get_instance("1.2.3.2.1.2") is not None
    assert [key for key in storage.list("studies/")] == [f"studies/{ST2}/series/1.2.3.2.1/instances/1.2.3.2.1.2.dcm"]


def record_with(instance: Any, *, tenant: str | None) -> Any:
    rec = record(instance)
    rec.tenant = tenant
    return rec


def backdate(catalog: Catalog, when: int) -> None:
    with catalog._write() as conn:
        conn.execute(instances.update().values(created_at=when))


def test_the_lambda_entry_point_runs_retention(
    catalog: Catalog, storage: LocalStorage, stored: dict[str, str], catalog_url: str, tmp_path: Path
) -> None:
    from gateway.lambda_handler import retention

    backdate(catalog, 1000)  # stored in 1970: far older than any retention
    policy = tmp_path / "policy.toml"
    policy.write_text("version = 1\n[retention]\ndays = 1\n")
    mapping = {"SIGNING_KEYS": "s" * 32, "API_KEYS": "a" * 32, "STORAGE_URL": storage.url, "DATABASE_URL": catalog_url}
    report = retention(
        {}, None, settings=Settings.from_mapping({**mapping, "PHI_POLICY": str(policy)}).with_changes(delete_settle=0.0)
    )
    assert report["studies"] == [ST] and report["instances"] == 3
    assert list(storage.list("studies/")) == [] and catalog.study_version(ST) is None
    assert retention({}, None, settings=Settings.from_mapping(mapping)) == {
        "configured": False,
        "dry_run": False,
        "removed": [],
    }


def test_quarantine_of_patient_finds_held_files_by_patient_and_by_study(catalog: Catalog) -> None:
    catalog.add_quarantine("quarantine/a.dcm", study_uid=ST)  # recorded before migration 0012: no patient known
    catalog.add_quarantine("quarantine/b.dcm", study_uid=ST2)
    catalog.add_quarantine("quarantine/c.dcm")  # unreadable: no study known
    catalog.add_quarantine("quarantine/d.dcm", study_uid="1.2.99", patient=(" P-1 ", "HOSP"))
    catalog.add_quarantine("quarantine/e.dcm", study_uid="1.2.98", patient=("P-1", ""))
    catalog.add_quarantine("quarantine/f.dcm", study_uid="1.2.97", patient=("", ""))
    found = ["quarantine/a.dcm", "quarantine/d.dcm", "quarantine/e.dcm"]
    assert catalog.quarantine_of_patient("P-1", None, [ST]) == found
    assert catalog.quarantine_of_patient(" P-1", " HOSP ", []) == ["quarantine/d.dcm"]
    assert catalog.quarantine_of_patient("P-1", "", []) == []  # as for a study: "" is no issuer to match
    assert catalog.quarantine_of_patient("P-2", None, []) == []
    assert "patient_id" not in catalog.get_quarantine("quarantine/d.dcm")  # type: ignore[operator]


def test_quarantine_of_patient_leaves_another_patients_file_held_under_an_erased_study(catalog: Catalog) -> None:
    """Only the patient's: a held file naming another patient stays, though its Study Instance UID is an erased
    study's; one naming no patient (or no issuer) there is the study's patient's, as an upload of it merges."""
    catalog.add_quarantine("quarantine/mine.dcm", study_uid=ST, patient=("P-1", "HOSP"))
    catalog.add_quarantine("quarantine/theirs.dcm", study_uid=ST, patient=("P-2", "HOSP"))
    catalog.add_quarantine("quarantine/other-issuer.dcm", study_uid=ST, patient=("P-1", "ELSEWHERE"))
    catalog.add_quarantine("quarantine/no-issuer.dcm", study_uid=ST, patient=("P-1", ""))
    catalog.add_quarantine("quarantine/nobody.dcm", study_uid=ST, patient=("", ""))
    catalog.add_quarantine("quarantine/old.dcm", study_uid=ST)  # before 0012: by its study, as before
    catalog.add_quarantine("quarantine/nobody-elsewhere.dcm", study_uid=ST2, patient=("", ""))
    assert catalog.quarantine_of_patient("P-1", "HOSP", [ST]) == [
        "quarantine/mine.dcm",
        "quarantine/no-issuer.dcm",
        "quarantine/nobody.dcm",
        "quarantine/old.dcm",
    ]
    assert catalog.quarantine_of_patient("P-1", None, [ST]) == [
        "quarantine/mine.dcm",
        "quarantine/no-issuer.dcm",
        "quarantine/nobody.dcm",
        "quarantine/old.dcm",
        "quarantine/other-issuer.dcm",
    ]


def test_tombstones_outlive_every_cached_plan() -> None:
    """A tombstone must outlast any plan NGINX cached before the delete, or the pre-delete cache key would come back
    (generation 0) while that plan is still fresh."""
    from gateway import auth
    from gateway.dicomweb import wado
    from gateway.tools.nginxconf import REPO_ROOT

    snippets = REPO_ROOT / "nginx/templates/snippets"
    assert "proxy_cache_valid 200 206 10m;" in (snippets / "dgw-plan.conf.template").read_text()
    for keyed in ("dgw-plan-key.conf.template", "dgw-frame.conf.template"):  # a frame's own plan, a block's
        key = next(line for line in (snippets / keyed).read_text().splitlines() if line.startswith("proxy_cache_key"))
        assert key.endswith('|$dgw_gen";'), key
    assert auth.TOMBSTONE_SECONDS > max(wado.STABLE_PLAN_SECONDS, 600)


def test_retention_command_once_with_a_heartbeat(
    catalog: Catalog, storage: LocalStorage, catalog_url: str, tmp_path: Path
) -> None:
    import json

    from click.testing import CliRunner

    from gateway.cli import main

    heartbeat = tmp_path / "retention.ok"
    env = {
        "DICOMGW_SIGNING_KEYS": "s" * 32,
        "DICOMGW_API_KEYS": "a" * 32,
        "DICOMGW_STORAGE_URL": storage.url,
        "DICOMGW_DATABASE_URL": catalog_url,
    }
    result = CliRunner().invoke(main, ["retention", "run", "--dry-run", "--heartbeat", str(heartbeat)], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"configured": False, "dry_run": True, "would_remove": []}
    assert heartbeat.exists()


def test_a_retried_delete_finishes_the_deletion_its_first_attempt_left(
    catalog: Catalog, storage: LocalStorage, stored: dict[str, str]
) -> None:
    """A DELETE interrupted after hiding (a killed worker, an outage answered 503 "retry"): the retry found nothing
    visible and answered 404, leaving the objects to reconcile. It finishes the recorded deletion now, after the
    settle time counted from the first attempt; a DELETE of something else still finds nothing."""
    first = catalog.hide([Target(ST, SE1)], sub="portal", reason="withdrawn")  # step 1, then the crash
    assert [r.sop_uids for r in first] == [(SOP1, SOP2)]
    assert len(list(storage.list("studies/"))) == 5  # nothing removed yet
    waited: list[float] = []
    patient = Deleter(catalog, storage, settle=30, sleep=waited.append)
    assert patient.delete([Target(ST, SE2, "9.9.9")], sub="portal", reason="") == []
    again = patient.delete([Target(ST, SE1)], sub="portal", reason="withdrawn")
    finished = [(r.id, r.target, r.sop_uids, r.series_uids) for r in again]
    assert finished == [(first[0].id, Target(ST, SE1), (SOP1, SOP2), (SE1,))]
    assert 25 < waited[-1] <= 30  # what is left of the first attempt's settle
    assert sorted(storage.list("studies/")) == [stored[SOP3]]
    assert catalog.unfinished_deletions() == []
    assert patient.delete([Target(ST, SE1)], sub="portal", reason="") == []  # finished: nothing left to do


def test_an_erasure_sent_again_finds_the_deletions_of_the_one_interrupted(
    catalog: Catalog, storage: LocalStorage, stored: dict[str, str]
) -> None:
    """An erasure interrupted after hiding left records no Patient ID leads back to (the study rows are gone): the
    same call found nothing and was a 404. Its records keep the call's keyed digests: the same Patient ID finds
    them, with the same issuer or none (an erasure of every issuer), never with another issuer or another patient;
    the audit lists neither digest."""
    call = Patient("digest-of-P", "digest-of-I")
    (first,) = catalog.hide([Target(ST)], sub="portal", reason="art. 17", rebuild=True, patient=call)
    waited: list[float] = []
    erasure = Deleter(catalog, storage, settle=30, sleep=waited.append)
    assert erasure.delete([], sub="portal", reason="", patient=Patient("digest-of-Q")) == []
    assert erasure.delete([], sub="portal", reason="", patient=Patient("digest-of-P", "digest-of-J")) == []
    assert waited == [] and len(list(storage.list("studies/"))) == 5
    assert [r["id"] for r in catalog.unfinished_erasures(Patient("digest-of-P", "digest-of-I"))] == [first.id]
    again = erasure.delete([], sub="portal", reason="art. 17", patient=Patient("digest-of-P"))
    assert [(r.id, r.target, r.sop_uids) for r in again] == [(first.id, Target(ST), (SOP1, SOP2, SOP3))]
    assert 25 < waited[-1] <= 30  # what is left of the first attempt's settle
    assert list(storage.list("studies/")) == [] and catalog.unfinished_deletions() == []
    assert erasure.delete([], sub="portal", reason="", patient=call) == []  # finished: nothing left to do
    (audit,) = catalog.deletion_records()
    assert "patient_id" not in audit and "issuer_of_patient_id" not in audit and "keys" not in audit


def test_a_delete_that_hides_more_also_finishes_the_interrupted_one_inside_it(
    catalog: Catalog, storage: LocalStorage, stored: dict[str, str]
) -> None:
    """A series DELETE interrupted after hiding, then a DELETE of its study: the study's other series is hidden and
    removed, and so are the series' objects (they waited for reconcile when the second DELETE found something)."""
    (first,) = catalog.hide([Target(ST, SE1)], sub="portal", reason="")
    waited: list[float] = []
    removed = Deleter(catalog, storage, settle=30, sleep=waited.append).delete([Target(ST)], sub="portal", reason="")
    assert [(r.target, r.sop_uids) for r in removed] == [(Target(ST), (SOP3,)), (Target(ST, SE1), (SOP1, SOP2))]
    assert removed[1].id == first.id and waited == [30]
    assert list(storage.list("studies/")) == [] and catalog.unfinished_deletions() == []


def test_reconcile_with_the_catalog_unreachable_is_one_line(storage: LocalStorage) -> None:
    """It printed a traceback (retention said the same in one line)."""
    from click.testing import CliRunner

    from gateway.cli import main

    env = {
        "DICOMGW_SIGNING_KEYS": "s" * 32,
        "DICOMGW_API_KEYS": "a" * 32,
        "DICOMGW_STORAGE_URL": storage.url,
        "DICOMGW_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",  # nothing listens on port 9
    }
    result = CliRunner().invoke(main, ["reconcile", "--dry-run"], env=env)
    assert result.exit_code == 1
    assert result.output == "Error: catalog_unavailable: catalog unavailable (OperationalError)\n"


@pytest.mark.parametrize(
    "flags", [["--dry-run", "--repair"], ["--repair", "--dry-run"]], ids=["dry-first", "repair-first"]
)
def test_reconcile_refuses_dry_run_with_repair(flags: list[str], storage: LocalStorage, tmp_path: Path) -> None:
    """``--repair/--dry-run`` was one option whose last flag won, silently: ``--dry-run --repair`` repaired. Both
    together are now a usage error naming both (exit 2, one line), before any setting or the catalog is read;
    each flag alone does what it did (``--dry-run`` reports and exits 1 on findings, ``--repair`` repairs)."""
    from click.testing import CliRunner

    from gateway.cli import main

    refused = CliRunner().invoke(main, ["reconcile", *flags], env={"DICOMGW_DATABASE_URL": "sqlite:///nowhere"})
    assert (refused.exit_code, refused.output) == (2, "Error: --dry-run and --repair cannot be used together\n")
    env = {
        "DICOMGW_SIGNING_KEYS": "s" * 32,
        "DICOMGW_API_KEYS": "a" * 32,
        "DICOMGW_STORAGE_URL": storage.url,
        "DICOMGW_DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
    }
    migrated = Catalog(env["DICOMGW_DATABASE_URL"])  # what `db upgrade` did: reconcile never migrates
    migrated.migrate()
    migrated.close()
    put(storage, tmp_path, "studies/1.2.3.9/series/1.2.3.9.1/instances/1.2.3.9.1.1.dcm")  # an unreadable orphan
    for flag, code, orphans in [("--dry-run", 1, 1), ("", 1, 1), ("--repair", 0, 1), ("--dry-run", 0, 0)]:
        result = CliRunner().invoke(main, ["reconcile", *([flag] if flag else [])], env=env)
        assert result.exit_code == code, (flag, result.output)
        assert len(json.loads(result.output)["orphans"]) == orphans, (flag, result.output)


DAMAGED = "Error: catalog_unavailable: catalog unavailable (the SQLite file is not a database, or is damaged)\n"


@pytest.mark.parametrize(
    "command",
    [["reconcile", "--dry-run"], ["retention", "run", "--dry-run"], ["audit", "collect", "--log", "access.log"]],
    ids=["reconcile", "retention", "audit-collect"],
)
def test_a_catalog_file_that_is_no_database_is_one_line(
    storage: LocalStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """/readyz says such a catalog is ``catalog_unavailable``; reconcile, retention and the collector ended with
    SQLAlchemy's traceback ("file is not a database", from the connection's first PRAGMA)."""
    from click.testing import CliRunner

    from gateway.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "access.log").write_text("")
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(bytes(range(256)) * 32)
    env = {
        "DICOMGW_SIGNING_KEYS": "s" * 32,
        "DICOMGW_API_KEYS": "a" * 32,
        "DICOMGW_STORAGE_URL": storage.url,
        "DICOMGW_DATABASE_URL": f"sqlite:///{damaged}",
    }
    result = CliRunner().invoke(main, command, env=env)
    assert (result.exit_code, result.output) == (1, DAMAGED)


def test_a_damaged_catalog_is_unavailable_to_a_read_and_a_write(tmp_path: Path) -> None:
    """The web path answers what /readyz says (a JSON 503 ``catalog_unavailable``), not a 500 ``internal_error``."""
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"garbage" * 2000)
    catalog = Catalog(f"sqlite:///{damaged}")
    try:
        with pytest.raises(CatalogUnavailable, match=r"not a database, or is damaged"):
            catalog.schema_revision()
        with pytest.raises(CatalogUnavailable, match=r"not a database, or is damaged"):
            catalog.revoke("jti", 2**31)
    finally:
        catalog.close()


def test_erasure_of_a_study_holding_other_patients_instances_keeps_them_under_the_earliest(catalog: Catalog) -> None:
    """An older catalog stored patients B, D and C in patient A's study (migration 0013 recorded them), and the study's
    row took values of theirs. Erasing C removed C's instance and left C's Study Description in the study's row;
    erasing A took the study whole, B and D with it. Now the study left is rebuilt from its remaining instances:
    erasing C leaves A's values, erasing A then B's (the earliest stored patient's), D's instance still recorded as
    another patient's; erasing B leaves D's, and erasing D removes the study."""
    import sqlalchemy as sa

    from gateway.catalog.schema import studies

    sop_b, sop_d, sop_c = "1.2.3.1.1.5", "1.2.3.1.1.6", "1.2.3.1.1.7"
    catalog.register_instance(record(make_instance(ST, SE1, SOP1, patient_id="P-A", patient_name="A^Al")))
    catalog.register_instance(record(make_instance(ST, SE2, SOP3, patient_id="P-A", patient_name="A^Al")))
    with catalog.engine.begin() as conn:
        row = conn.execute(sa.select(studies.c.attrs).where(studies.c.study_uid == ST)).one()
    for sop, patient in ((sop_b, "P-B"), (sop_d, "P-D"), (sop_c, "P-C")):
        with catalog.engine.begin() as conn:  # as the older catalog let them in
            conn.execute(studies.update().where(studies.c.study_uid == ST).values(patient_id=None))
        name = patient[-1] + "^" + patient[-1]
        catalog.register_instance(
            record(make_instance(ST, SE1, sop, patient_id=patient, patient_name=name, study_desc=f"{patient}-DESC"))
        )
        with catalog.engine.begin() as conn:  # ... and migration 0013 found them
            conn.execute(studies.update().where(studies.c.study_uid == ST).values(patient_id="P-A", attrs=row.attrs))
            conn.execute(
                instances.update()
                .where(instances.c.sop_uid == sop)
                .values(other_patient_id=patient, other_issuer_of_patient_id="")
            )

    def erase(patient: str) -> tuple[Any, list[Any]]:
        catalog.hide(catalog.erasure_plan(patient).targets, sub="k", reason="", rebuild=True)
        with catalog.engine.begin() as conn:
            study = conn.execute(
                sa.select(studies.c.patient_id, studies.c.patient_name, studies.c.study_description, studies.c.attrs)
            ).one()
            flags = conn.execute(
                sa.select(instances.c.sop_uid, instances.c.other_patient_id).order_by(instances.c.sop_uid)
            ).all()
        return study, [tuple(flag) for flag in flags]

    assert catalog.erasure_plan("P-C").targets == [Target(ST, SE1, sop_c)]
    study, flags = erase("P-C")
    assert (study.patient_id, study.patient_name, study.study_description) == ("P-A", "A^Al", "CHEST")
    assert flags == [(SOP1, None), (sop_b, "P-B"), (sop_d, "P-D"), (SOP3, None)]

    plan = catalog.erasure_plan("P-A")
    assert plan.studies == [ST] and plan.kept == {ST: (sop_b, sop_d)}
    assert plan.targets == [Target(ST, SE2), Target(ST, SE1, SOP1)]
    study, flags = erase("P-A")
    assert (study.patient_id, study.patient_name, study.study_description) == ("P-B", "B^B", "P-B-DESC")
    assert "A^Al" not in study.attrs and "P-A" not in study.attrs and "P-D" not in study.attrs
    assert flags == [(sop_b, None), (sop_d, "P-D")]
    assert catalog.studies_of_patient("P-A") == [] and catalog.instances_of_patient_elsewhere("P-A") == []

    plan = catalog.erasure_plan("P-B")
    assert plan.kept == {ST: (sop_d,)} and plan.targets == [Target(ST, SE1, sop_b)]
    study, flags = erase("P-B")
    assert (study.patient_id, study.patient_name, study.study_description) == ("P-D", "D^D", "P-D-DESC")
    assert flags == [(sop_d, None)]
    plan = catalog.erasure_plan("P-D")
    assert plan.kept == {} and plan.targets == [Target(ST)]


def test_a_removal_whose_wait_for_an_upload_fails_ends_the_claims_it_won(
    catalog: Catalog, storage: LocalStorage, stored: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog failing while a removal waits for an upload of one of its instances: the claims it had won are
    ended, not left for their lease, in which a retried DELETE waited for them and kept their objects for good."""
    [upload] = catalog.reserve_many([SOP2])  # an upload of SOP2 under way
    assert upload is not None
    calls: list[list[str]] = []
    real = catalog.reserve_many

    def failing(sop_uids: list[str]) -> list[Any]:
        calls.append(list(sop_uids))
        if len(calls) > 1:
            raise CatalogUnavailable("the catalog went away")
        return real(sop_uids)

    monkeypatch.setattr(catalog, "reserve_many", failing)
    with pytest.raises(CatalogUnavailable):
        deleter(catalog, storage).delete([Target(ST, SE1)], sub="portal", reason="withdrawn")
    assert calls[0] == [SOP1, SOP2]
    assert catalog.in_flight([SOP1, SOP2]) == {SOP2}  # the upload's alone: SOP1's claim was ended
