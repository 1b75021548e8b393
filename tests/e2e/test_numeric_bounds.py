"""Issue 11 defect 5 through the real NGINX on both backends: every integer a client can put in a query string or
a path is bounded, and one out of range is a JSON 400 naming the parameter (it was a 500: OverflowError in
SQLite)."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from PIL import Image

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack

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


def test_a_value_padded_with_spaces_matches_as_stored(odd_numbers: tuple[str, str]) -> None:
    """Leading and trailing spaces of a query value are padding (PS3.5 6.2), as in the file the catalog read the
    value from: ``PatientID=%20H9-PAD%20`` (a value copied from a padded file) matched nothing."""
    root, url = odd_numbers
    sop = url.rsplit("/", 1)[1]
    for query in ("PatientID=%20H9-PAD%20", "AccessionNumber=A28%20%20", "PatientName=Pad%5EDed%20", "Modality=CT%20",
                  "PatientID=H9-PAD%20&AccessionNumber=%20A*", "StudyDate=20240115%20",
                  "StudyDate=20240101-20240131%20", "StudyTime=1200%20"):
        answer = requests.get(f"{root}/instances?{query}", timeout=30)
        assert answer.status_code == 200, (query, answer.text)
        assert [item["00080018"]["Value"] for item in answer.json()] == [[sop]], query
    answer = requests.get(f"{root}/instances?PatientID=%20%20", timeout=30)  # spaces only: an empty value
    assert [item["00080018"]["Value"] for item in answer.json()] == [[sop]]


def _no_json_constant(name: str) -> None:
    raise AssertionError(f"{name} is no JSON value (RFC 8259 6): a browser's JSON.parse refuses the whole body")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def odd_numbers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A stack of its own on each catalog holding one CT slice whose numbers no JSON number holds, written by
    DCMTK's dcmodify (DS, IS) and pydicom (FD, FL); (token root, instance URL)."""
    path = make_series(tmp_path / "odd", modality="CT", slices=1, seed=2801, clean=True)[0]
    ds = pydicom.dcmread(path)
    ds.add_new(0x00189087, "FD", [float("nan"), float("inf")])  # Diffusion b-value
    ds.add_new(0x00460044, "FL", float("-inf"))  # Pupil Size
    ds.save_as(path)
    edits = ["(0018,0050)=1e400", "(0020,1041)=NaN", "(0028,0030)=-0\\-inf", "(0020,0013)=99999999999999999999"]
    edits += ["(0028,1050)=NaN", "(0028,1051)=1e400"]
    edits += ["(0010,0020)=H9-PAD", "(0008,0050)=A28", "(0010,0010)=Pad^Ded"]
    edits += ["(0008,0020)=20240115", "(0008,0030)=1200"]
    subprocess.run(["dcmodify", "-nb", *[a for e in edits for a in ("-i", e)], str(path)], check=True)
    env = {"DICOMGW_DATABASE_URL": request.getfixturevalue("postgres_url")} if request.param == "postgres" else {}
    running = start_stack(tmp_path / "var", "file", None, **env)
    try:
        answer = running.stow([path])
        assert answer.status_code == 200, answer.text
        study, series, sop = uids_of(path)
        root = running.root(running.issue([study])["token"])
        yield root, f"{root}/studies/{study}/series/{series}/instances/{sop}"
    finally:
        running.stack.stop()


def test_numbers_json_holds_no_number_for_are_their_text(odd_numbers: tuple[str, str]) -> None:
    """DS ``1e400``, ``NaN``, ``-inf`` and FD/FL infinities were ``Infinity``/``NaN`` in the metadata, which is no
    JSON, and IS 99999999999999999999 was 100000000000000000000 (pydicom reads IS through a float). DS and IS are
    now their own text, as PS3.18 Table F.2.3-1 allows (CP-1861; dcm4che's dcm2json); FL and FD the strings
    fo-dicom and Azure's DICOM service write."""
    root, url = odd_numbers
    answer = requests.get(f"{url}/metadata", timeout=30)
    assert answer.status_code == 200, answer.text
    (metadata,) = json.loads(answer.text, parse_constant=_no_json_constant)
    assert metadata["00180050"] == {"vr": "DS", "Value": ["1e400"]}
    assert metadata["00201041"] == {"vr": "DS", "Value": ["NaN"]}
    assert metadata["00280030"] == {"vr": "DS", "Value": [0, "-inf"]}
    assert metadata["00200013"] == {"vr": "IS", "Value": ["99999999999999999999"]}
    assert metadata["00189087"] == {"vr": "FD", "Value": ["NaN", "Infinity"]}
    assert metadata["00460044"] == {"vr": "FL", "Value": ["-Infinity"]}
    # QIDO answers the same values; the catalog's Instance Number column holds none (beyond 32 bits)
    answer = requests.get(f"{root}/instances?includefield=00180050&includefield=00201041", timeout=30)
    assert answer.status_code == 200, answer.text
    (found,) = json.loads(answer.text, parse_constant=_no_json_constant)
    assert found["00200013"] == {"vr": "IS", "Value": ["99999999999999999999"]}
    assert (found["00180050"], found["00201041"]) == (metadata["00180050"], metadata["00201041"])
    # a window of such numbers is none: the image is drawn over its own range (it was black: a NaN window)
    answer = requests.get(f"{url}/rendered", headers={"Accept": "image/png"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(answer.content)).getextrema() == (0, 255)
