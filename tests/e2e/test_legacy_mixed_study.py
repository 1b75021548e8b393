"""A study an older catalog holds with two patients' instances (stored before STOW refused another patient's
instance with 0xA778 in session 16; migration 0013 marks the other patient's), through the real stack on SQLite and
PostgreSQL.

A study- or series-level ``includefield`` of an attribute the catalog does not index (PatientWeight, PatientAge,
PatientComments) was looked up in some instance of the study: in such a study it could be the other patient's, so
the answer put patient B's weight and comments next to patient A's name. It now comes from an instance of the
study's own patient, or is left out when none is visible. And what a token issued for each patient's studies
reaches of such a study."""

from __future__ import annotations

from pathlib import Path

import pydicom
import requests

from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack
from tests.e2e.test_lifecycle import (  # noqa: F401 - catalog_stack is a fixture
    catalog_stack,
    one_slice,
    store_as_an_older_catalog_did,
)

INCLUDE = "includefield=PatientWeight,PatientAge,PatientComments,OtherPatientNames"


def as_patient(path: Path, name: str, weight: str, age: str, comments: str) -> None:
    """Give the file its patient's values, the non-indexed ones distinct per patient."""
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientWeight, ds.PatientAge, ds.PatientComments = name, weight, age, comments
    ds.OtherPatientNames = f"{name}^ALIAS"
    ds.save_as(path)


def test_a_study_level_includefield_never_takes_another_patients_values(
    catalog_stack: RunningStack,  # noqa: F811 - the fixture from test_lifecycle
    tmp_path: Path,
) -> None:
    stack = catalog_stack
    # B's instance stored first under the study UID; A's later, and the older catalog's merge made the study A's
    # (a later value replaced an earlier one), so migration 0013 marks B's instance as another patient's
    theirs = one_slice(tmp_path / "b", 8101, "MIX-B")
    study, b_series, b_sop = uids_of(theirs[0])
    as_patient(theirs[0], "OTHER^BEATRICE", "97.25", "052Y", "B-ONLY-COMMENT")
    b_own = one_slice(tmp_path / "b2", 8102, "MIX-B")
    as_patient(b_own[0], "OTHER^BEATRICE", "97.25", "052Y", "B-ONLY-COMMENT")
    assert stack.stow([*theirs, *b_own]).status_code == 200
    mine = one_slice(tmp_path / "a", 8103, "MIX-A", study)
    as_patient(mine[0], "OWNER^ANNA", "64", "031Y", "A-COMMENT")
    store_as_an_older_catalog_did(stack, study, mine, keep_study_patient=False)
    _, a_series, a_sop = uids_of(mine[0])
    b_values = ("BEATRICE", "97.25", "052Y", "B-ONLY-COMMENT", "MIX-B")
    a_included = {
        "00101001": {"vr": "PN", "Value": [{"Alphabetic": "OWNER^ANNA^ALIAS"}]},
        "00101010": {"vr": "AS", "Value": ["031Y"]},
        "00101030": {"vr": "DS", "Value": [64]},
        "00104000": {"vr": "LT", "Value": ["A-COMMENT"]},
    }

    def study_answer(root: str, headers: dict[str, str] | None = None) -> dict[str, object]:
        answer = requests.get(f"{root}/studies?StudyInstanceUID={study}&{INCLUDE}", headers=headers, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/dicom+json"), answer.text
        (found,) = answer.json()
        assert not any(value in answer.text for value in b_values), answer.text
        assert found["00100020"] == {"vr": "LO", "Value": ["MIX-A"]}
        assert found["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "OWNER^ANNA"}]}
        return dict(found)

    admin = study_answer(f"{stack.url}/dicomweb", stack.api_headers)
    assert {tag: admin[tag] for tag in a_included} == a_included
    a_token = stack.issue([study], sub="patient-a")["token"]
    a_root = stack.root(a_token)
    retrieve_url = "00081190"  # under the root the client used: the token's path
    assert {**study_answer(a_root), retrieve_url: None} == {**admin, retrieve_url: None}
    # a series of A's study holding only B's instance: no instance of A there, so B's values are left out; A's
    # series carries A's
    series = requests.get(f"{a_root}/studies/{study}/series?{INCLUDE}", timeout=30)
    assert series.status_code == 200, series.text
    by_uid = {item["0020000E"]["Value"][0]: item for item in series.json()}
    assert set(by_uid) == {a_series, b_series}
    assert not any(tag in by_uid[b_series] for tag in a_included)
    assert {tag: by_uid[a_series][tag] for tag in a_included} == a_included
    assert not any(value in series.text for value in b_values), series.text
    every_series = requests.get(
        f"{stack.url}/dicomweb/series?StudyInstanceUID={study}&{INCLUDE}", headers=stack.api_headers, timeout=30
    )
    assert every_series.status_code == 200 and not any(value in every_series.text for value in b_values)

    # a token issued for B's studies (those the catalog names B's) does not reach the study: nothing of it through
    # QIDO, metadata or retrieve, so nothing of A either
    b_token = stack.issue([uids_of(b_own[0])[0]], sub="patient-b")["token"]
    b_root = stack.root(b_token)
    listed = requests.get(f"{b_root}/studies?PatientID=MIX-B&{INCLUDE}", timeout=30)
    assert listed.status_code == 200
    assert [item["0020000D"]["Value"][0] for item in listed.json()] == [uids_of(b_own[0])[0]]
    assert "MIX-A" not in listed.text and "ANNA" not in listed.text
    for path in (
        f"studies/{study}/metadata",
        f"studies/{study}/series/{b_series}/metadata",
        f"studies/{study}/series/{b_series}/instances/{b_sop}",
        f"studies/{study}/series/{a_series}/instances/{a_sop}",
        f"studies/{study}/series",
    ):
        refused = requests.get(f"{b_root}/{path}", headers={"Accept": "*/*"}, timeout=30)
        assert (refused.status_code, refused.headers["Content-Type"]) == (403, "application/json"), path
        assert refused.json()["error"] == "out_of_scope", path
