"""Policy loading: errors name the key; rules match tenant, region, source, phi and tag values in order."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.hooks import UploadContext
from gateway.phi.policy import load_policy, loads_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "phi-policy.toml"

BASE: dict[str, Any] = {
    "version": 3,
    "destinations": {
        "eu": {"storage": "default", "region": "eu-west-1", "identifiable_allowed": True},
        "research": {"storage": "s3://research/deid", "region": "eu-west-1", "identifiable_allowed": False},
    },
    "rules": [
        {"id": "no-tenant", "match": {"tenant": ""}, "action": "reject"},
        {
            "id": "research",
            "match": {"tenant": "research-*"},
            "action": "deidentify",
            "destination": "research",
        },
        {"id": "us-review", "match": {"tags.Modality": ["US", "SC"], "phi": True}, "action": "quarantine"},
        {
            "id": "eu",
            "match": {"region": "eu-*", "tags.InstitutionName": "Example*"},
            "action": "route",
            "destination": "eu",
        },
    ],
    "default": {"action": "reject", "reason": "nothing matched"},
}


def ctx(tenant: str | None = "acme", region: str | None = "eu-west-1") -> UploadContext:
    return UploadContext(source="stow", tenant=tenant, region=region)


def test_example_policy_loads() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.version == "2025-06-01"
    assert [rule.id for rule in policy.rules] == [
        "no-tenant",
        "research-deid",
        "ultrasound-review",
        "eu-clinical",
        "us-clinical",
    ]
    assert policy.default.action == "reject"
    assert policy.on_unreadable == "quarantine"
    assert policy.deidentify.dates == "shift"
    assert policy.deidentify.options == frozenset(
        {"rtnLongModifDatesOpt", "rtnDevIdOpt", "rtnPatCharsOpt", "cleanDescOpt", "rtnSafePrivOpt"}
    )
    assert policy.is_private_safe("SIEMENS MED", 0x00191008)
    assert not policy.is_private_safe("SIEMENS MED", 0x00191009)
    assert policy.tag_keywords == frozenset({"Modality", "InstitutionName"})
    assert policy.storage_url("clinical-eu", "file:///srv/objects") == "file:///srv/objects"
    assert policy.storage_url("research", "file:///srv/objects") == "s3://example-research/deid"


# -- the policy snippets of the documentation, as a user copies them ------------------------------------------------
# README's [retention] block left out the `version` every policy needs (and the destination it names): pasted alone,
# it was "version: is required". Every ```toml block of README.md and docs/*.md now loads as written; a block meant as
# a fragment would have to say so in its document and be completed here, explicitly.

_TOML_FENCE = re.compile(r"^([ \t]*)```toml[ \t]*\n(.*?)^\1```[ \t]*$", re.M | re.S)


def documented_policies() -> list[tuple[str, str]]:
    """(``file:line``, the block as a user copies it, its list-item indent removed) for each ```toml block."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for match in _TOML_FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", textwrap.dedent(match[2])))
    return found


DOCUMENTED = documented_policies()


def test_the_documentation_holds_policy_snippets() -> None:
    assert any(where.startswith("README.md:") and "[retention]" in block for where, block in DOCUMENTED), DOCUMENTED


@pytest.mark.parametrize(("where", "block"), DOCUMENTED, ids=[where for where, _ in DOCUMENTED])
def test_each_documented_policy_snippet_loads_as_written(where: str, block: str) -> None:
    loads_policy(block)  # a ConfigError names the key, e.g. "version: is required"


def test_readmes_retention_snippet_says_what_readme_says() -> None:
    """README, Lifecycle: by the tenant, else the destination, else ``days``."""
    (block,) = [block for where, block in DOCUMENTED if where.startswith("README.md:") and "[retention]" in block]
    retention = loads_policy(block).retention
    assert (retention.days, dict(retention.destinations), dict(retention.tenants)) == (
        3650,
        {"research": 365},
        {"trial-portal": 30},
    )
    assert [retention.days_for("trial-portal", "research"), retention.days_for(None, "research")] == [30, 365]
    assert retention.days_for("other", None) == 3650


def test_rules_evaluated_in_order() -> None:
    policy = parse_policy(BASE)
    tags = {"Modality": "CT", "InstitutionName": "Example Hospital"}
    assert policy.select(ctx(tenant=None), tags, phi=True).id == "no-tenant"
    assert policy.select(ctx(tenant="research-7"), tags, phi=True).id == "research"
    assert policy.select(ctx(), {"Modality": "US", "InstitutionName": "Example"}, phi=True).id == "us-review"
    assert policy.select(ctx(), {"Modality": "US", "InstitutionName": "Example"}, phi=False).id == "eu"
    assert policy.select(ctx(), tags, phi=True).id == "eu"
    assert policy.select(ctx(region="us-east-1"), tags, phi=True).id == "default"
    assert policy.select(ctx(), {"Modality": "CT", "InstitutionName": "Other"}, phi=True).id == "default"
    assert policy.select(ctx(), {}, phi=True).id == "default"  # missing tags match as ""


def test_glob_is_case_sensitive_and_whole_value() -> None:
    policy = parse_policy(BASE)
    assert policy.select(ctx(tenant="Research-7"), {}, phi=True).id == "default"
    assert policy.select(ctx(tenant="xresearch-7"), {}, phi=True).id == "default"


def _with(**changes: Any) -> dict[str, Any]:
    data = {**BASE, **changes}
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"destinations": {}}, "version: is required"),
        (_with(colour="blue"), "colour: unknown key"),
        (_with(version=True), "version: must be"),
        (_with(rules=[{"action": "explode"}]), "rules[0].action: must be one of"),
        (_with(rules=[{"action": "route"}]), "rules[0].destination: is required for action 'route'"),
        (
            _with(rules=[{"action": "route", "destination": "mars"}]),
            "rules[0].destination: no [destinations.mars]",
        ),
        (
            _with(rules=[{"action": "allow", "destination": "research"}]),
            "rules[0].destination: action 'allow'",
        ),
        (_with(rules=[{"action": "reject", "destination": "eu"}]), "rules[0].destination: makes no sense"),
        (
            _with(rules=[{"action": "reject", "match": {"colour": "x"}}]),
            "rules[0].match.colour: unknown match key",
        ),
        (
            _with(rules=[{"action": "reject", "match": {"tags.NotAKeyword": "x"}}]),
            "rules[0].match.tags.NotAKeyword",
        ),
        (
            _with(rules=[{"action": "reject", "match": {"phi": "yes"}}]),
            "rules[0].match.phi: must be true or false",
        ),
        (
            _with(rules=[{"id": "a", "action": "reject"}, {"id": "a", "action": "reject"}]),
            "duplicate rule ids: a",
        ),
        (
            _with(destinations={"x": {"storage": "ftp://x", "region": "r", "identifiable_allowed": True}}),
            "destinations.x.storage",
        ),
        (
            _with(destinations={"x": {"storage": "default", "identifiable_allowed": True}}),
            "destinations.x.region",
        ),
        (_with(deidentify={"cleanGraphOpt": True}), "deidentify.cleanGraphOpt: is not supported"),
        (_with(deidentify={"dates": "blur"}), "deidentify.dates: must be one of"),
        (
            _with(deidentify={"dates": "remove", "rtnLongModifDatesOpt": True}),
            "deidentify.rtnLongModifDatesOpt",
        ),
        (_with(deidentify={"max_shift_days": 0}), "deidentify.max_shift_days"),
        (_with(deidentify={"rtnDevIdOpt": "yes"}), "deidentify.rtnDevIdOpt: must be true or false"),
        (
            _with(private={"safe": [{"creator": "A", "element": "0008,xx01"}]}),
            "private.safe[0].element: the group",
        ),
        (
            _with(private={"safe": [{"creator": "A", "element": "0009,1001"}]}),
            "private.safe[0].element: must look",
        ),
        (_with(options={"on_unreadable": "ignore"}), "options.on_unreadable"),
    ],
)
def test_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(data)
    assert caught.value.variable == "DICOMGW_PHI_POLICY"
    assert message in str(caught.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        loads_policy("version = ")
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")


def test_date_mode_implies_the_option() -> None:
    assert (
        parse_policy({"version": 1, "deidentify": {"rtnLongModifDatesOpt": True}}).deidentify.dates == "shift"
    )
    keep = parse_policy({"version": 1, "deidentify": {"dates": "keep"}}).deidentify
    assert keep.options == frozenset({"rtnLongFullDatesOpt"})
    assert parse_policy({"version": 1}).deidentify.options == frozenset()
