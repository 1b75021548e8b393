"""gateway.dicomweb.paths: the ``/t/{token}`` prefix split and every DICOMweb path shape and refusal (moved from
test_auth.py with the URL grammar; assertions unchanged)."""

from __future__ import annotations

import pytest

from gateway.dicomweb.paths import Target, parse_target, split_token
from gateway.errors import InvalidPath

ST = "1.2.840.113619.2.1"
ST2 = "1.2.840.113619.2.2"
SE = "1.2.840.113619.2.1.1"
IN = "1.2.840.113619.2.1.1.1"


# -- split_token ---------------------------------------------------------------------------------------------------


def test_split_token() -> None:
    assert split_token("/t/abc.DEF-_9/dicomweb/studies?x=1") == ("abc.DEF-_9", "/dicomweb/studies?x=1")
    assert split_token("/dicomweb/studies") == (None, "/dicomweb/studies")
    assert split_token("/tx/abc/dicomweb") == (None, "/tx/abc/dicomweb")
    with pytest.raises(InvalidPath) as caught:
        split_token("/t/abc")
    assert caught.value.detail == "token path prefix without a path"



# -- parse_target --------------------------------------------------------------------------------------------------

STUDY_PATH = f"/dicomweb/studies/{ST}"
SERIES_PATH = f"{STUDY_PATH}/series/{SE}"
INSTANCE_PATH = f"{SERIES_PATH}/instances/{IN}"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/dicomweb", Target("/", None, None, None, "")),
        ("/dicomweb/", Target("/", None, None, None, "")),
        ("/dicomweb/studies", Target("/studies", None, None, None, "studies")),
        ("/dicomweb/series", Target("/series", None, None, None, "series")),
        ("/dicomweb/instances", Target("/instances", None, None, None, "instances")),
        (STUDY_PATH, Target(f"/studies/{ST}", ST, None, None, "")),
        (f"{STUDY_PATH}/metadata", Target(f"/studies/{ST}/metadata", ST, None, None, "metadata")),
        (f"{STUDY_PATH}/series", Target(f"/studies/{ST}/series", ST, None, None, "series")),
        (f"{STUDY_PATH}/instances", Target(f"/studies/{ST}/instances", ST, None, None, "instances")),
        (SERIES_PATH, Target(f"/studies/{ST}/series/{SE}", ST, SE, None, "")),
        (f"{SERIES_PATH}/instances", Target(f"/studies/{ST}/series/{SE}/instances", ST, SE, None, "instances")),
        (f"{SERIES_PATH}/rendered", Target(f"/studies/{ST}/series/{SE}/rendered", ST, SE, None, "rendered")),
        (INSTANCE_PATH, Target(f"/studies/{ST}/series/{SE}/instances/{IN}", ST, SE, IN, "")),
        (f"{INSTANCE_PATH}/metadata", Target(INSTANCE_PATH[9:] + "/metadata", ST, SE, IN, "metadata")),
        (f"{INSTANCE_PATH}/frames/1,2", Target(INSTANCE_PATH[9:] + "/frames/1,2", ST, SE, IN, "frames/1,2")),
        (f"{INSTANCE_PATH}/bulkdata/a/b", Target(INSTANCE_PATH[9:] + "/bulkdata/a/b", ST, SE, IN, "bulkdata/a/b")),
        (f"{INSTANCE_PATH}/thumbnail", Target(INSTANCE_PATH[9:] + "/thumbnail", ST, SE, IN, "thumbnail")),
    ],
)
def test_parse_target_shapes(path: str, expected: Target) -> None:
    assert parse_target(path) == expected


def test_parse_target_keeps_the_query_and_decodes_once() -> None:
    query = f"requestType=WADO&studyUID={ST}"
    assert parse_target("/dicomweb/wado", query) == Target("/wado", None, None, None, "wado", query)
    # percent-encoded digits decode to the same UID
    assert parse_target("/dicomweb/studies/1%2E2%2E3").study == "1.2.3"


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        (f"{STUDY_PATH}/../{ST2}", "path is not canonical"),
        (f"{STUDY_PATH}/%2e%2e/{ST2}", "path is not canonical"),
        (f"{STUDY_PATH}/./series", "path is not canonical"),
        (f"{STUDY_PATH}/.", "path is not canonical"),
        ("/dicomweb//studies", "path is not canonical"),
        (f"{STUDY_PATH}//series/{SE}", "path is not canonical"),
        (f"{STUDY_PATH}%2Fseries%2F{SE}", "encoded slashes and backslashes are not allowed"),
        (f"{STUDY_PATH}%2fseries", "encoded slashes and backslashes are not allowed"),
        (f"{STUDY_PATH}%5Cseries", "encoded slashes and backslashes are not allowed"),
        (f"{STUDY_PATH}%5cseries", "encoded slashes and backslashes are not allowed"),
        (f"{STUDY_PATH}\\series", "encoded slashes and backslashes are not allowed"),
        (f"{STUDY_PATH}%252Fseries", "double-encoded paths are not allowed"),
        (f"{STUDY_PATH}%255Cseries", "double-encoded paths are not allowed"),
        ("/dicomweb/studies/abc", "a UID path segment is not a valid DICOM UID"),
        ("/dicomweb/studies/1..2", "a UID path segment is not a valid DICOM UID"),
        ("/dicomweb/studies/series", "a UID path segment is not a valid DICOM UID"),
        (f"/dicomweb/studies/1.{'2' * 63}", "a UID path segment is not a valid DICOM UID"),
        (f"{STUDY_PATH}/series/x{SE}", "a UID path segment is not a valid DICOM UID"),
        (f"{SERIES_PATH}/instances/1.2.", "a UID path segment is not a valid DICOM UID"),
        ("/studies", "not a DICOMweb path"),
        ("/api/v1/tokens", "not a DICOMweb path"),
        ("/dicomwebx/studies", "not a DICOMweb path"),
        ("/t/abc/dicomweb/studies", "not a DICOMweb path"),
    ],
)
def test_parse_target_refusals(path: str, detail: str) -> None:
    with pytest.raises(InvalidPath) as caught:
        parse_target(path)
    assert caught.value.detail == detail


def test_a_64_character_uid_is_accepted() -> None:
    uid = "1." + "2" * 62
    assert parse_target(f"/dicomweb/studies/{uid}").study == uid
