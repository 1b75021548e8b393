"""QIDO-RS sequence matching on Request Attributes Sequence (PS3.18 Table 10.6.1-5 lists its Scheduled Procedure
Step ID and Requested Procedure ID among the keys a series query must match; PS3.4 C.2.2.2.6: a series matches when
one item matches every key), through the real stack on SQLite and PostgreSQL. A 400 answered these before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack

# Two series of one study: the first was made for two requests, the second for one that shares the first's
# Requested Procedure ID; a third series carries no request at all.
REQUESTS = {
    "two": [("SPS-1", "RP-1"), ("SPS-2", "RP-2")],
    "one": [("SPS-3", "RP-1")],
    "none": [],
}


def _item(step: str, procedure: str) -> Dataset:
    item = Dataset()
    item.ScheduledProcedureStepID, item.RequestedProcedureID = step, procedure
    return item


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def requested(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RunningStack, dict[str, str]]]:
    """A stack of its own on each catalog holding the three series of REQUESTS; the series UID of each name."""
    env = {"DICOMGW_DATABASE_URL": request.getfixturevalue("postgres_url")} if request.param == "postgres" else {}
    running = start_stack(tmp_path / "var", "file", None, **env)
    try:
        files, series = [], {}
        study = None
        for seed, (name, items) in enumerate(REQUESTS.items(), start=9301):
            made = make_series(tmp_path / name, modality="CT", slices=2, seed=seed, clean=True, study_uid=study)
            study = uids_of(made[0])[0]
            for path in made:
                ds = pydicom.dcmread(path)
                if items:
                    ds.RequestAttributesSequence = [_item(step, procedure) for step, procedure in items]
                ds.save_as(path)
            series[name] = uids_of(made[0])[1]
            files += made
        answer = running.stow(files)
        assert answer.status_code == 200, answer.text
        yield running, {**series, "study": study or ""}
    finally:
        running.stack.stop()


def test_series_and_instances_match_the_request_attributes_sequence(
    requested: tuple[RunningStack, dict[str, str]],
) -> None:
    stack, uids = requested
    names = {uid: name for name, uid in uids.items()}

    def found(level: str, params: dict[str, str]) -> list[str]:
        answer = requests.get(f"{stack.url}/dicomweb/{level}", params=params, headers=stack.api_headers, timeout=30)
        assert answer.status_code == 200, answer.text[:300]
        assert answer.headers["Content-Type"] == "application/dicom+json"
        return sorted(names[item["0020000E"]["Value"][0]] for item in answer.json())

    procedure = "RequestAttributesSequence.RequestedProcedureID"
    step = "RequestAttributesSequence.ScheduledProcedureStepID"
    assert found("series", {procedure: "RP-1"}) == ["one", "two"]
    assert found("series", {"00400275.00401001": "RP-2"}) == ["two"]
    assert found("series", {"00400275.00400009": "SPS-3"}) == ["one"]
    assert found("series", {step: "SPS-?"}) == ["one", "two"]  # wildcards, as on any SH
    assert found("series", {procedure: "RP*"}) == ["one", "two"]
    assert found("series", {procedure: "rp-1"}) == []  # SH is case-sensitive (PS3.4 C.2.2.2.1)
    assert found("series", {procedure: " RP-1 "}) == ["one", "two"]  # leading and trailing spaces do not count
    # both keys in one item (PS3.4 C.2.2.2.6): SPS-1 and RP-2 are two items of "two", never one
    assert found("series", {step: "SPS-1", procedure: "RP-2"}) == []
    assert found("series", {step: "SPS-2", procedure: "RP-2"}) == ["two"]
    assert found("series", {step: "SPS-3", "00400275.00401001": "RP-1"}) == ["one"]
    assert found("series", {procedure: "*"}) == ["none", "one", "two"]  # universal matching
    assert found("series", {procedure: "RP-9"}) == []
    assert found("series", {procedure: "RP-1", "Modality": "MR"}) == []
    assert found(f"studies/{uids['study']}/series", {procedure: "RP-2"}) == ["two"]
    # instances match on their series' key (relational, as every series attribute), two slices a series
    assert found("instances", {procedure: "RP-2"}) == ["two", "two"]
    assert found(f"studies/{uids['study']}/series/{uids['one']}/instances", {procedure: "RP-2"}) == []
    # the series answer holds the items it was matched on (PS3.18 Table 10.6.3-4)
    answer = requests.get(
        f"{stack.url}/dicomweb/series", params={procedure: "RP-2"}, headers=stack.api_headers, timeout=30
    ).json()
    assert answer[0]["00400275"] == {
        "vr": "SQ",
        "Value": [
            {"00400009": {"vr": "SH", "Value": ["SPS-1"]}, "00401001": {"vr": "SH", "Value": ["RP-1"]}},
            {"00400009": {"vr": "SH", "Value": ["SPS-2"]}, "00401001": {"vr": "SH", "Value": ["RP-2"]}},
        ],
    }


# What the query still refuses, and why (the detail of each JSON 400): a malformed request.
REFUSED = [
    (
        "studies",
        {"RequestAttributesSequence.RequestedProcedureID": "RP-1"},
        "RequestAttributesSequence.RequestedProcedureID: cannot match an attribute of a lower level in a studies query",
    ),
    (
        "series",
        {"RequestAttributesSequence.RequestedProcedureID": "RP-1", "00400275.00401001": "RP-1"},
        "00400275.00401001: the same attribute as RequestAttributesSequence.RequestedProcedureID, given twice",
    ),
]


def test_misplaced_or_repeated_sequence_keys_are_a_json_400_that_says_why(
    requested: tuple[RunningStack, dict[str, str]],
) -> None:
    stack, _ = requested
    for level, params, detail in REFUSED:
        answer = requests.get(f"{stack.url}/dicomweb/{level}", params=params, headers=stack.api_headers, timeout=30)
        assert answer.status_code == 400, params
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json() == {"error": "bad_request", "detail": detail}


def test_other_sequence_keys_are_ignored_with_a_warning(requested: tuple[RunningStack, dict[str, str]]) -> None:
    """PS3.18 8.3: a key the origin server does not support is ignored, the answer the one without it (a JSON 400
    before), and the Warning names it; a path naming no attribute is a parameter we do not know."""
    stack, _ = requested
    service = f"299 {stack.url}/dicomweb: "
    every = requests.get(f"{stack.url}/dicomweb/series", headers=stack.api_headers, timeout=30)
    for params, warning in (
        (
            {"RequestAttributesSequence.AccessionNumber": "A1"},
            "The following attributes are not supported as query keys and were not matched: "
            "RequestAttributesSequence.AccessionNumber",
        ),
        (
            {"RequestAttributesSequence.NoSuchKeyword": "x"},
            "The following query parameters are not supported and were ignored: "
            "RequestAttributesSequence.NoSuchKeyword",
        ),
    ):
        answer = requests.get(f"{stack.url}/dicomweb/series", params=params, headers=stack.api_headers, timeout=30)
        assert (answer.status_code, answer.json()) == (200, every.json()), params
        assert answer.headers["Warning"] == f'{service}"{warning}"'
