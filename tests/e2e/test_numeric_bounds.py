"""Issue 11 defect 5 through the real NGINX on both backends: every integer a client can put in a query string or
a path is bounded, and one out of range is a JSON 400 naming the parameter (it was a 500: OverflowError in
SQLite)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack

HUGE = "9" * 30


@pytest.fixture(scope="module")
def ct(stack: RunningStack, synthetic: dict[str, Any]) -> tuple[str, str]:
    """(token root, instance URL) of a CT slice."""
    study, series, sop = uids_of(synthetic["ct"][0])
    root = stack.root(stack.issue([study])["token"])
    return root, f"{root}/studies/{study}/series/{series}/instances/{sop}"


def assert_400(answer: requests.Response, needle: str) -> None:
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert body["error"] == "bad_request"
    assert needle in body["detail"]


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        (f"/studies?offset={HUGE}", "offset"),
        (f"/studies?limit={HUGE}", "limit"),
        (f"/series?SeriesNumber={HUGE}", "SeriesNumber"),
        (f"/instances?InstanceNumber={HUGE}", "InstanceNumber"),
        (f"/instances?00200013=-{HUGE}", "00200013"),
        ("/studies?offset=2147483648", "offset"),
        ("/series?SeriesNumber=2147483648", "SeriesNumber"),
        # a date or time that names no day or hour matched nothing with a 200; separators only matched everything
        ("/studies?StudyDate=20231301", "StudyDate"),
        ("/studies?StudyDate=99999999", "StudyDate"),
        ("/studies?StudyTime=240000", "StudyTime"),
        ("/studies?StudyInstanceUID=,", "StudyInstanceUID: an empty list"),
        ("/studies?limit=1&limit=3", "limit given more than once"),
        ("/studies?PatientID=a&00100020=b", "the same attribute as PatientID"),
    ],
)
def test_qido_integers_out_of_range_are_400(
    stack: RunningStack, ct: tuple[str, str], path: str, needle: str
) -> None:
    root, _ = ct
    assert_400(requests.get(root + path, timeout=30), needle)


def test_qido_largest_integers_answer_an_empty_page(stack: RunningStack, ct: tuple[str, str]) -> None:
    root, _ = ct
    top = str(2**31 - 1)
    for path in (f"/studies?offset={top}", f"/series?SeriesNumber={top}", f"/instances?InstanceNumber=-{2**31}"):
        answer = requests.get(root + path, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == []


@pytest.mark.parametrize(
    ("suffix", "needle"),
    [
        (f"/frames/{HUGE}", "frame number"),
        ("/frames/1,2147483648", "frame number"),
        (f"/rendered?quality={HUGE}", "quality"),
        ("/rendered?quality=0", "quality"),
        (f"/rendered?viewport={HUGE},{HUGE}", "viewport"),
        ("/rendered?viewport=64", "viewport"),
        ("/rendered?window=nan,400", "window"),
        ("/rendered?window=40,1e999", "window"),
    ],
)
def test_instance_integers_out_of_range_are_400(
    stack: RunningStack, ct: tuple[str, str], suffix: str, needle: str
) -> None:
    _, url = ct
    assert_400(requests.get(url + suffix, headers={"Accept": "*/*"}, timeout=30), needle)


def test_rendered_frame_number_in_the_path_beyond_the_instance_is_404(stack: RunningStack, ct: tuple[str, str]) -> None:
    _, url = ct
    answer = requests.get(f"{url}/frames/2/rendered", timeout=30)
    assert answer.status_code == 404
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == "frame_not_found"
    # beyond 32 bits it is the frames resource's 400 (tests/e2e/test_rendered_params.py)
    assert_400(requests.get(f"{url}/frames/{HUGE}/rendered", timeout=30), "frame number")


def test_wado_uri_frame_number_out_of_range_is_400(
    stack: RunningStack, synthetic: dict[str, Any], ct: tuple[str, str]
) -> None:
    root, _ = ct
    study, series, sop = uids_of(synthetic["ct"][0])
    query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}&frameNumber={HUGE}"
    assert_400(requests.get(f"{root}/wado?{query}", timeout=30), "frameNumber")


def test_audit_limit_out_of_range_is_400(stack: RunningStack) -> None:
    answer = requests.get(f"{stack.url}/api/v1/admin/audit?limit={HUGE}", headers=stack.api_headers, timeout=30)
    assert_400(answer, "limit")
    answer = requests.get(f"{stack.url}/api/v1/admin/audit?limit=ten", headers=stack.api_headers, timeout=30)
    assert_400(answer, "limit")
