"""PhiHook: the decision for each rule action, failing closed; the hook chain built from Settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.hooks import UploadContext
from gateway.phi.hook import PhiHook
from gateway.phi.policy import Policy, parse_policy
from gateway.phi.scanner import scan_file
from gateway.services import build_policy_hooks
from gateway.spool import spool_prefix
from gateway.storage import open_storage

try:
    from test_phi_files import clean_dataset, phi_dataset, write
except ImportError:  # collected as a package
    from tests.unit.test_phi_files import clean_dataset, phi_dataset, write

KEY = "h" * 40


def make_policy(deidentify: dict[str, Any] | None = None, **options: Any) -> Policy:
    def rule(tenant: str, action: str, destination: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": tenant, "match": {"tenant": tenant}, "action": action}
        if destination:
            body["destination"] = destination
        return body

    return parse_policy(
        {
            "version": "v7",
            "options": options,
            "destinations": {
                "eu": {"storage": "default", "region": "eu-west-1", "identifiable_allowed": True},
                "us": {"storage": "s3://us/dicom", "region": "us-east-1", "identifiable_allowed": True},
                "research": {
                    "storage": "s3://research/x",
                    "region": "eu-west-1",
                    "identifiable_allowed": False,
                },
            },
            "rules": [
                {**rule("reject-me", "reject"), "reason": "tenant is suspended"},
                rule("hold", "quarantine"),
                rule("deid", "deidentify", "research"),
                rule("allow-eu", "allow", "eu"),
                rule("route-eu", "route", "eu"),
                rule("route-us", "route", "us"),
                rule("route-research", "route", "research"),
            ],
            "deidentify": {"dates": "shift", "cleanDescOpt": True, **(deidentify or {})},
        }
    )


def ctx(tenant: str, region: str | None = "eu-west-1") -> UploadContext:
    return UploadContext(source="stow", sub="uploader-1", tenant=tenant, region=region)


@pytest.fixture
def phi_file(tmp_path: Path) -> Path:
    return write(phi_dataset(), tmp_path / "phi.dcm")


@pytest.fixture
def clean_file(tmp_path: Path) -> Path:
    return write(clean_dataset(), tmp_path / "clean.dcm")


def test_reject_rule(phi_file: Path) -> None:
    outcome = PhiHook(make_policy(), KEY)(phi_file, ctx("reject-me"))
    assert outcome.action == "reject" and outcome.reason == "tenant is suspended"
    assert outcome.report["status"] == "phi"
    assert outcome.audit["decision"] == "reject" and outcome.audit["rule"] == "reject-me"
    assert outcome.audit["policy_version"] == "v7" and outcome.audit["destination"] is None
    assert "(0010,0010)" in outcome.audit["tags"]
    assert "DOE" not in repr(outcome.audit) and "DOE" not in repr(outcome.report)


def test_quarantine_rule(phi_file: Path) -> None:
    outcome = PhiHook(make_policy(), KEY)(phi_file, ctx("hold"))
    assert outcome.action == "quarantine" and outcome.audit["decision"] == "quarantine"
    assert outcome.path is None


def test_default_rule_rejects(phi_file: Path) -> None:
    outcome = PhiHook(make_policy(), KEY)(phi_file, ctx("unknown"))
    assert outcome.action == "reject" and outcome.audit["rule"] == "default"


def test_deidentify_accepts_a_new_clean_file(phi_file: Path) -> None:
    before = phi_file.read_bytes()
    policy = make_policy()
    outcome = PhiHook(policy, KEY)(phi_file, ctx("deid"))
    assert outcome.action == "accept" and outcome.destination == "research"
    assert outcome.path is not None and outcome.path != phi_file and outcome.path.parent == phi_file.parent
    # named for the process writing it: a killed ingest process's copy is swept (gateway.spool.sweep_spool)
    assert outcome.path.name.startswith(spool_prefix("deid"))
    assert phi_file.read_bytes() == before
    assert scan_file(outcome.path, policy).clean
    assert pydicom.dcmread(outcome.path).PatientIdentityRemoved == "YES"
    assert outcome.audit["decision"] == "deidentify" and outcome.audit["deidentified"] is True
    assert outcome.audit["destination"] == "research"


def test_deidentify_refuses_output_that_does_not_rescan_clean(tmp_path: Path) -> None:
    ds = phi_dataset()
    ds.Modality = "US"
    del ds.BurnedInAnnotation  # burned-in text cannot be removed by a header de-identifier
    path = write(ds, tmp_path / "us.dcm")
    before = sorted(tmp_path.iterdir())
    outcome = PhiHook(make_policy(), KEY)(path, ctx("deid"))
    assert outcome.action == "reject" and "burned-in-annotation" in outcome.reason
    assert outcome.audit["rescan_paths"] == ["(0028,0301)"]
    assert sorted(tmp_path.iterdir()) == before  # the rejected output was removed
    held = PhiHook(make_policy(on_deidentify_failure="quarantine"), KEY)(path, ctx("deid"))
    assert held.action == "quarantine"


def test_a_kept_element_repeating_the_original_id_fails_the_rescan(tmp_path: Path) -> None:
    """The de-identifier keeps StationName and DeviceSerialNumber (K, rtnDevIdOpt); when they repeat the patient's
    ID the original scan flags them, and so must the re-scan: the output's own ID is emptied, so it is re-scanned
    against the original's names and IDs (it was stored with the ID in two elements)."""
    ds = phi_dataset()
    ds.StationName = ds.PatientID
    ds.DeviceSerialNumber = f"dev {ds.PatientID}"
    path = write(ds, tmp_path / "station.dcm")
    policy = make_policy(deidentify={"rtnDevIdOpt": True})
    assert {f.path for f in scan_file(path, policy).findings} >= {"(0008,1010)", "(0018,1000)"}
    outcome = PhiHook(policy, KEY)(path, ctx("deid"))
    assert outcome.action == "reject" and "free-text-identifier" in outcome.reason, outcome.reason
    assert set(outcome.audit["rescan_paths"]) == {"(0008,1010)", "(0018,1000)"}
    assert str(ds.PatientID) not in repr(outcome.audit) + repr(outcome.report)


def test_deidentify_failure_is_an_outcome(tmp_path: Path) -> None:
    ds = phi_dataset()
    ds.add_new(0x00420011, "OB", b"%PDF-1.4 fake\n")
    outcome = PhiHook(make_policy(), KEY)(write(ds, tmp_path / "doc.dcm"), ctx("deid"))
    assert outcome.action == "reject" and "Encapsulated Document" in outcome.reason


def test_allow_only_where_permitted(phi_file: Path) -> None:
    hook = PhiHook(make_policy(), KEY)
    outcome = hook(phi_file, ctx("allow-eu"))
    assert outcome.action == "accept" and outcome.destination == "eu" and outcome.path is None
    assert outcome.audit["decision"] == "allow"
    elsewhere = hook(phi_file, ctx("allow-eu", region="us-east-1"))
    assert elsewhere.action == "reject" and "region 'us-east-1'" in elsewhere.reason
    unknown = hook(phi_file, ctx("allow-eu", region=None))
    assert unknown.action == "reject" and "declared region" in unknown.reason


def test_route_identifiable_data(phi_file: Path, clean_file: Path) -> None:
    hook = PhiHook(make_policy(), KEY)
    same_region = hook(phi_file, ctx("route-eu"))
    assert same_region.action == "accept" and same_region.destination == "eu"
    forbidden_region = hook(phi_file, ctx("route-us"))  # EU upload routed to a US destination
    assert forbidden_region.action == "reject" and forbidden_region.destination is None
    assert forbidden_region.audit["decision"] == "reject" and forbidden_region.audit["rule_action"] == "route"
    assert "us-east-1" in forbidden_region.reason
    not_allowed = hook(phi_file, ctx("route-research"))
    assert not_allowed.action == "reject" and "may not go to destination 'research'" in not_allowed.reason
    # clean data may go anywhere the rule says
    clean = hook(clean_file, ctx("route-us"))
    assert clean.action == "accept" and clean.destination == "us" and clean.audit["tags"] == []
    assert hook(clean_file, ctx("route-research")).action == "accept"


def test_tag_and_phi_matching_through_the_hook(tmp_path: Path, clean_file: Path) -> None:
    policy = parse_policy(
        {
            "version": 1,
            "destinations": {"eu": {"storage": "default", "region": "eu", "identifiable_allowed": True}},
            "rules": [
                {"id": "us-phi", "match": {"tags.Modality": "US", "phi": True}, "action": "quarantine"},
                {"id": "any", "match": {"region": "eu"}, "action": "route", "destination": "eu"},
            ],
        }
    )
    ds = phi_dataset()
    ds.Modality = "US"
    ds.BurnedInAnnotation = "NO"
    us = write(ds, tmp_path / "us.dcm")
    hook = PhiHook(policy)
    assert hook(us, ctx("t", "eu")).audit["rule"] == "us-phi"
    assert hook(clean_file, ctx("t", "eu")).audit["rule"] == "any"


@pytest.mark.parametrize("choice", ["reject", "quarantine"])
def test_unreadable_file(tmp_path: Path, choice: str) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 300)
    outcome = PhiHook(make_policy(on_unreadable=choice), KEY)(bad, ctx("allow-eu"))
    assert outcome.action == choice and outcome.reason.startswith("unreadable DICOM: ")
    assert outcome.audit["scan"] == "unreadable" and outcome.audit["rule"] is None


def test_unconfigured_destination_is_refused(phi_file: Path) -> None:
    hook = PhiHook(make_policy(), KEY, destination_storages={"us": object()})
    outcome = hook(phi_file, ctx("route-eu"))
    assert outcome.action == "reject" and "not configured" in outcome.reason


def settings(**values: str) -> Settings:
    base = {
        "SIGNING_KEYS": "s" * 32,
        "API_KEYS": "api",
        "STORAGE_URL": "file:///tmp/objects",
        "DATABASE_URL": "sqlite:///tmp/c.db",
    }
    return Settings.from_mapping({**base, **values})


def test_build_hooks(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}/objects", create=True)

    def build_hooks(settings: Settings) -> list[Any]:
        return list(build_policy_hooks(settings, storage)[0])

    assert build_hooks(settings()) == []
    path = tmp_path / "policy.toml"
    path.write_text(
        'version = 1\n[destinations.r]\nstorage = "default"\nregion = "eu"\nidentifiable_allowed = false\n'
        '[default]\naction = "deidentify"\ndestination = "r"\n'
    )
    with pytest.raises(ConfigError) as caught:
        build_hooks(settings(PHI_POLICY=str(path), DEID_KEY="short"))
    assert caught.value.variable == "DICOMGW_DEID_KEY"
    hooks = build_hooks(settings(PHI_POLICY=str(path), DEID_KEY=KEY))
    assert len(hooks) == 1 and isinstance(hooks[0], PhiHook) and hooks[0].name == "phi"
    path.write_text("version = 1\nbogus = 2\n")
    with pytest.raises(ConfigError, match="bogus"):
        build_hooks(settings(PHI_POLICY=str(path), DEID_KEY=KEY))


def test_a_held_file_is_held_where_identifiable_data_of_its_region_may_be(phi_file: Path) -> None:
    """A held file may carry PHI: held in a destination that takes identifiable data of the upload's region (the
    default storage first), else refused as a reject is (docs/phi.md, Decisions)."""
    hook = PhiHook(make_policy(), KEY)
    for region, place in (("eu-west-1", "eu"), ("us-east-1", "us")):
        outcome = hook(phi_file, ctx("hold", region))
        assert (outcome.action, outcome.destination, outcome.audit["destination"]) == ("quarantine", place, place)
    for region, where in (("ap-south-1", "region 'ap-south-1'"), (None, "an upload that declares no region")):
        outcome = hook(phi_file, ctx("hold", region))
        assert (outcome.action, outcome.destination, outcome.audit["decision"]) == ("reject", None, "reject")
        assert outcome.reason == (
            f"policy rule 'hold': quarantine; but no destination may hold identifiable data from {where}"
        )
    # the gateway's own storage first, whatever the policy's order
    second = parse_policy(
        {
            "version": "v8",
            "destinations": {
                "vault": {"storage": "file:///vault", "region": "eu-west-1", "identifiable_allowed": True},
                "own": {"storage": "default", "region": "eu-west-1", "identifiable_allowed": True},
            },
            "rules": [{"id": "hold", "match": {"tenant": "hold"}, "action": "quarantine"}],
        }
    )
    assert PhiHook(second, KEY)(phi_file, ctx("hold")).destination == "own"
    # a destination the gateway has no storage for holds nothing
    configured = PhiHook(make_policy(), KEY, destination_storages={"research": object()})
    assert configured(phi_file, ctx("hold")).action == "reject"


def test_a_release_is_judged_as_the_upload_with_the_reviewers_approval(phi_file: Path, tmp_path: Path) -> None:
    """``approve``: the quarantine rules are passed over, every finding but burned-in text is still PHI, and the
    file goes only where the rule sends it under an upload's checks; it is never rewritten."""
    import dataclasses

    from gateway.phi.policy import Rule

    hook = PhiHook(make_policy(), KEY)
    refused = hook.approve(phi_file, ctx("hold"))  # no rule after the quarantine: the default rejects
    assert (refused.action, refused.reason, refused.audit["decision"]) == ("reject", "no policy rule matched", "reject")
    refused = hook.approve(phi_file, ctx("deid"))  # the identifiable original: research takes no PHI
    assert refused.action == "reject"
    assert refused.reason == "identifiable data may not go to destination 'research'"
    refused = hook.approve(phi_file, ctx("route-us"))
    assert refused.reason == (
        "identifiable data from region 'eu-west-1' may not go to destination 'us' in region 'us-east-1'"
    )
    allowed = hook.approve(phi_file, ctx("route-eu"))
    assert (allowed.action, allowed.destination, allowed.path) == ("accept", "eu", None)
    assert allowed.audit["decision"] == "release"
    # a file whose only finding is burned-in text (held for pixel review): the reviewer looked; to research
    ds = clean_dataset()
    ds.Modality = "US"
    del ds.BurnedInAnnotation
    reviewed = write(ds, tmp_path / "reviewed.dcm")
    assert {f.rule for f in scan_file(reviewed, hook.policy).findings} == {"burned-in-annotation"}
    before = reviewed.read_bytes()
    approved = hook.approve(reviewed, ctx("deid"))
    assert (approved.action, approved.destination, approved.path) == ("accept", "research", None)
    assert reviewed.read_bytes() == before  # stored as held, never de-identified again
    # a [default] that quarantines: released where identifiable data of the region may be, as it was held
    holding = PhiHook(dataclasses.replace(make_policy(), default=Rule(id="default", action="quarantine")), KEY)
    assert holding.approve(phi_file, ctx("nobody", "us-east-1")).destination == "us"
    assert holding.approve(phi_file, ctx("nobody", None)).reason == (
        "no destination may hold identifiable data from an upload that declares no region"
    )
