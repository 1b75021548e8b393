"""The STOW-RS Store Instances Response (gateway/dicomweb/stow_response.py): exact DICOM JSON and status."""

from __future__ import annotations

import json

import pytest

from gateway.dicomweb.stow_response import (
    COERCION_OF_DATA_ELEMENTS,
    SOP_CLASS_NOT_SUPPORTED,
    StowItem,
    build_stow_response,
    reason_name,
)
from gateway.errors import InvalidUID
from gateway.uids import InstanceId

CT = "1.2.840.10008.5.1.4.1.1.2"
ST = "1.2.3"
SE = "1.2.3.4"
ROOT = "/t/TOKEN/dicomweb/"


def stored(sop: str, status: str = "stored", study: str = ST, **kw: object) -> StowItem:
    return StowItem(status, CT, InstanceId(study, SE, sop), None, str(kw.pop("detail", "")), **kw)  # type: ignore[arg-type]


def private(outcome: str, text: str = "") -> dict[str, object]:
    out: dict[str, object] = {"00090010": {"vr": "LO", "Value": ["DICOMGW"]}}
    if text:
        out["00091001"] = {"vr": "LT", "Value": [text]}
    out["00091002"] = {"vr": "CS", "Value": [outcome]}
    return out


def ref(sop: str, outcome: str = "STORED", **extra: object) -> dict[str, object]:
    return {
        "00081150": {"vr": "UI", "Value": [CT]},
        "00081155": {"vr": "UI", "Value": [sop]},
        "00081190": {"vr": "UR", "Value": [f"/t/TOKEN/dicomweb/studies/{ST}/series/{SE}/instances/{sop}"]},
        **extra,
        **private(outcome),
    }


def test_all_stored() -> None:
    response = build_stow_response([stored("1.1"), stored("1.2", "duplicate")], ROOT)
    assert response.status == 200
    assert response.content_type == "application/dicom+json"
    assert response.body == {
        "00081190": {"vr": "UR", "Value": [f"/t/TOKEN/dicomweb/studies/{ST}"]},
        "00081199": {"vr": "SQ", "Value": [ref("1.1"), ref("1.2", "DUPLICATE")]},
    }
    assert json.loads(response.to_bytes()) == response.body
    raw = response.to_bytes()
    assert raw.startswith(b'{"00081190":{"vr":"UR","Value":["/t/TOKEN/dicomweb/studies/1.2.3"]},"00081199":')
    # tags in ascending order inside each item, as PS3.18 F.2 recommends
    first = response.body["00081199"]["Value"][0]
    assert list(first) == ["00081150", "00081155", "00081190", "00090010", "00091002"]


def test_mixed_with_failures_and_quarantine() -> None:
    items = [
        stored("1.1"),
        StowItem(
            "failed", "1.2.840.10008.5.1.4.1.1.9999", InstanceId(ST, SE, "1.2"), SOP_CLASS_NOT_SUPPORTED, "unknown"
        ),
        StowItem("quarantined", CT, InstanceId(ST, SE, "1.3"), None, "PHI found in tags the policy forbids"),
        StowItem("failed", None, InstanceId("", "", "not a uid"), None, "not a DICOM file"),
    ]
    response = build_stow_response(items, ROOT)
    assert response.status == 202
    assert response.body == {
        "00081190": {"vr": "UR", "Value": [f"/t/TOKEN/dicomweb/studies/{ST}"]},
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.9999"]},
                    "00081155": {"vr": "UI", "Value": ["1.2"]},
                    "00081197": {"vr": "US", "Value": [0x0122]},
                    **private("FAILED", "unknown"),
                },
                {
                    "00081150": {"vr": "UI", "Value": [CT]},
                    "00081155": {"vr": "UI", "Value": ["1.3"]},
                    "00081197": {"vr": "US", "Value": [0xC4F0]},
                    **private("QUARANTINED", "PHI found in tags the policy forbids"),
                },
                {"00081197": {"vr": "US", "Value": [0x0110]}, **private("FAILED", "not a DICOM file")},
            ],
        },
        "00081199": {"vr": "SQ", "Value": [ref("1.1")]},
    }


def test_all_failed_is_409() -> None:
    items = [StowItem("failed", CT, InstanceId("9.9", SE, "1.1"), 0xC409, "study instance UID does not match the URL")]
    response = build_stow_response(items, "/dicomweb", study_uid=ST)
    assert response.status == 409
    assert response.body == {
        "00081190": {"vr": "UR"},  # nothing stored: no study to retrieve (it named ST, which received nothing)
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [CT]},
                    "00081155": {"vr": "UI", "Value": ["1.1"]},
                    "00081197": {"vr": "US", "Value": [0xC409]},
                    **private("FAILED", "study instance UID does not match the URL"),
                }
            ],
        },
    }


def test_the_study_url_names_where_the_instances_were_stored() -> None:
    """A de-identifying policy stores an upload to /studies/{ST} under a remapped study UID: the top-level
    RetrieveURL names that study (it named ST, which holds nothing: a 404)."""
    response = build_stow_response([stored("1.1", study="2.25.9")], "/dicomweb", study_uid=ST)
    assert response.body["00081190"] == {"vr": "UR", "Value": ["/dicomweb/studies/2.25.9"]}


def test_warning_makes_202() -> None:
    response = build_stow_response([stored("1.1", warning_reason=COERCION_OF_DATA_ELEMENTS)], "/dicomweb")
    assert response.status == 202
    item = response.body["00081199"]["Value"][0]
    assert item["00081196"] == {"vr": "US", "Value": [0xB000]}


def test_several_studies_leave_the_study_url_empty() -> None:
    response = build_stow_response([stored("1.1"), stored("1.2", study="1.2.4")], "/dicomweb")
    assert response.status == 200
    assert response.body["00081190"] == {"vr": "UR"}


def test_empty_request_is_400() -> None:
    response = build_stow_response([], "/dicomweb")
    assert (response.status, response.body) == (400, {"00081190": {"vr": "UR"}})


def test_stored_item_needs_valid_uids() -> None:
    with pytest.raises(InvalidUID):
        build_stow_response([StowItem("stored", CT, InstanceId("../x", SE, "1.1"), None, "")], "/dicomweb")


def test_reason_names() -> None:
    assert reason_name(0xA700) == reason_name(0xA7FF) == "refused: out of resources"
    assert reason_name(0xA905) == "data set does not match SOP class"
    assert reason_name(0xC123) == "cannot understand"
    assert reason_name(0xC122) == "transfer syntax not supported"
    assert reason_name(0x0272) == "status 0x0272"
