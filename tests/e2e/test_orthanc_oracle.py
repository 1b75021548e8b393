"""Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) as an outside oracle for QIDO-RS (session 21): the same files
are stored in the gateway (the real stack, STOW-RS) and in a private Orthanc (its DICOMweb STOW), the same searches
sent to both. Where they agree the answer is asserted on both; where they differ PS3.18 decides, and the test
asserts what the standard asks (Orthanc is not always right; its answer is then named in a comment). Each
`test_*_fixed` test failed before its fix (CHANGELOG, session 21)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from gateway.dicomweb.multipart import encode_multipart
from gateway.tools import orthanc as orthanc_tool
from gateway.tools.orthanc import Orthanc
from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_outside_files import image as outside_image
from tests.e2e.test_outside_files import write
from tests.requirements import require

pytestmark = pytest.mark.third_party

# (name, StudyDate, StudyTime): one study each, Patient ID "ORACLE-DT"
DATED = [
    ("jan1-0900", "20240101", "090000"),
    ("jan1-1500", "20240101", "150000"),
    ("jan1-none", "20240101", None),
    ("jan2-1000", "20240102", "100000"),
    ("jan2-1600", "20240102", "160000"),
    ("jan3-1200", "20240103", "120000"),
]

# (Modality, PatientSex): one study each, Patient ID "ORACLE-MOD"
MODALITIES = [("CT", "F"), ("MR", "M"), ("US", "O")]

# (name, Patient's Name as the file writes it): one study each, Patient ID "ORACLE-PN"; a modality or RIS that
# writes every component of a name leaves the trailing ones empty, delimiters kept (PS3.5 6.2.1.1)
NAMES_WRITTEN = [("carets", "Caret^Carla^^^"), ("plain", "Plain^Paula"), ("family", "Family^^^^")]


def image(**values: Any) -> Dataset:
    """test_outside_files' small native secondary capture, numbered (Orthanc lists a series and an instance by
    their numbers), with ``values`` set on it."""
    return outside_image(SeriesNumber=1, InstanceNumber=1, **values)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dataset]:
    folder = tmp_path_factory.mktemp("oracle-files")
    made: dict[str, Dataset] = {}
    for name, date, time in DATED:
        ds = image(PatientID="ORACLE-DT", PatientName=f"Oracle^{name}", StudyDate=date)
        ds.PerformedProcedureStepStartDate = date
        if time is not None:
            ds.StudyTime = ds.PerformedProcedureStepStartTime = time
        ds.filename = str(write(ds, folder))
        made[name] = ds
    private = image(
        PatientID="ORACLE-PRIV",
        PatientName="Oracle^private",
        StudyDate="20240201",
        PatientAge="045Y",
        InstitutionName="Oracle Hospital",
        SliceThickness="2.5",
    )
    private.private_block(0x0009, "ACME 1.0", create=True).add_new(0x01, "LO", "private value")
    private.filename = str(write(private, folder))
    made["private"] = private
    for name, written in NAMES_WRITTEN:
        ds = image(PatientID="ORACLE-PN", PatientName=written, ReferringPhysicianName=written)
        ds.filename = str(write(ds, folder))
        made[name] = ds
    # dates and a time in the form before DICOM 3.0 (yyyy.mm.dd, hh:mm:ss), as old archives hold them
    old = image(PatientID="ORACLE-OLD", PatientName="Oracle^old")
    with warnings.catch_warnings():  # pydicom warns of values PS3.5 no longer defines
        warnings.simplefilter("ignore")
        for tag, vr, value in [
            (0x00080020, "DA", "1993.03.04"),
            (0x00080030, "TM", "10:15:30"),
            (0x00100030, "DA", "1950.07.08"),
            (0x00400244, "DA", "1993.03.04"),
        ]:
            old.add(DataElement(tag, vr, value))
        old.filename = str(write(old, folder))
    made["old"] = old
    # dates that name no day: the placeholder some modalities write for an unknown date, and a thirteenth month
    for name, date in (("zeros", "00000000"), ("month13", "19931301")):
        ds = image(PatientID="ORACLE-NODAY", PatientName=f"Oracle^{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.add(DataElement(0x00080020, "DA", date))
            ds.add(DataElement(0x00100030, "DA", date))
            ds.filename = str(write(ds, folder))
        made[name] = ds
    # a sequence of the Patient module (a study's) and one of an image's own
    seq = image(PatientID="ORACLE-SEQ", PatientName="Oracle^seq")
    other = Dataset()
    other.PatientID, other.TypeOfPatientID = "OTHER-1", "TEXT"
    seq.OtherPatientIDsSequence = [other]
    referenced = Dataset()
    referenced.ReferencedSOPClassUID, referenced.ReferencedSOPInstanceUID = seq.SOPClassUID, "1.2.3.4"
    seq.ReferencedImageSequence = [referenced]
    seq.filename = str(write(seq, folder))
    made["seq"] = seq
    for modality, sex in MODALITIES:
        ds = image(PatientID="ORACLE-MOD", PatientName=f"Oracle^{modality}", Modality=modality, PatientSex=sex)
        ds.filename = str(write(ds, folder))
        made[modality] = ds
    return made


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Dataset]) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("oracle-stack"), "file", None)
    try:
        answer = running.stow([Path(ds.filename) for ds in files.values()])
        assert answer.status_code == 200, answer.text
        yield running
    finally:
        running.stack.stop()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Dataset]) -> Iterator[Orthanc]:
    try:
        running = orthanc_tool.start_orthanc(tmp_path_factory.mktemp("oracle-orthanc"))
    except orthanc_tool.OrthancMissing as missing:
        require(False, f"{missing} (`make test` installs Debian's orthanc and orthanc-dicomweb with apt)")
        raise
    try:
        body = encode_multipart([Path(ds.filename) for ds in files.values()])
        answer = requests.post(
            f"{running.url}/dicom-web/studies",
            data=body,
            headers={"Content-Type": body.content_type, "Accept": "application/dicom+json"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        yield running
    finally:
        running.stop()


def ask(stack: RunningStack, orthanc: Orthanc, query: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same QIDO request to the gateway and to Orthanc: each one's matches (both must answer 200)."""
    mine = requests.get(
        f"{stack.url}/dicomweb{query}", headers={**stack.api_headers, "Accept": "application/dicom+json"}, timeout=30
    )
    theirs = requests.get(f"{orthanc.url}/dicom-web{query}", headers={"Accept": "application/dicom+json"}, timeout=30)
    assert mine.status_code == 200, mine.text
    assert theirs.status_code == 200, theirs.text
    return mine.json(), theirs.json() if theirs.content else []


def tag_of(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


def names(matches: list[dict[str, Any]]) -> list[str]:
    return sorted(m["00100010"]["Value"][0]["Alphabetic"].split("^")[1] for m in matches)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # a date range with a single time, or with no time: each attribute matched on its own (both agree)
        ("StudyDate=20240101-20240102&StudyTime=150000", ["jan1-1500"]),
        ("StudyDate=20240101-20240102", ["jan1-0900", "jan1-1500", "jan1-none", "jan2-1000", "jan2-1600"]),
        ("StudyDate=20240102&StudyTime=090000-120000", ["jan2-1000"]),
        ("StudyTime=1500-", ["jan1-1500", "jan2-1600"]),
    ],
)
def test_date_and_time_matched_alike(stack: RunningStack, orthanc: Orthanc, query: str, expected: list[str]) -> None:
    mine, theirs = ask(stack, orthanc, f"/studies?PatientID=ORACLE-DT&{query}")
    assert names(mine) == names(theirs) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # the 24 hours from Jan 1 14:00 (Orthanc, like the gateway before, answers 14:00 on each day: nothing);
        # a study with no time is matched on its date
        ("StudyDate=20240101-20240102&StudyTime=140000-140000", ["jan1-1500", "jan1-none", "jan2-1000"]),
        # from Jan 2 15:00 on (Orthanc: at or after 15:00 on any day from Jan 2, which leaves Jan 3 12:00 out)
        ("StudyDate=20240102-&StudyTime=150000-", ["jan2-1600", "jan3-1200"]),
        # up to Jan 1 10:00 (Orthanc: at or before 10:00 on any day up to Jan 1)
        ("StudyDate=-20240101&StudyTime=-1000", ["jan1-0900", "jan1-none"]),
    ],
)
def test_a_date_range_and_a_time_range_are_one_span_fixed(
    stack: RunningStack, orthanc: Orthanc, query: str, expected: list[str]
) -> None:
    """PS3.18 8.3.4.1.1: "Combined date-time matching shall be performed" (PS3.4 C.2.2.2.5.4): a Study Date range
    and a Study Time range of the same form are one DT range. Both servers matched each on its own."""
    mine, theirs = ask(stack, orthanc, f"/studies?PatientID=ORACLE-DT&{query}")
    assert names(mine) == expected
    assert names(theirs) != expected  # Orthanc 1.x: independent matching (a difference judged in its disfavour)
    series, _ = ask(stack, orthanc, f"/series?PatientID=ORACLE-DT&{query}")
    instances, _ = ask(stack, orthanc, f"/instances?PatientID=ORACLE-DT&{query}")
    assert names(series) == names(instances) == expected
    performed = query.replace("StudyDate", "PerformedProcedureStepStartDate").replace(
        "StudyTime", "PerformedProcedureStepStartTime"
    )
    series, _ = ask(stack, orthanc, f"/series?PatientID=ORACLE-DT&{performed}")
    assert names(series) == expected  # the series pair of PS3.18 Table 10.6.1-5, alike


@pytest.mark.parametrize("include", ["00091001", "00091001,00090010", "00090010"])
def test_a_private_element_included_comes_with_its_creator_fixed(
    stack: RunningStack, orthanc: Orthanc, include: str
) -> None:
    """PS3.18 10.6.3.3.3: a Private Data Element named by includefield is returned with its Private Creator
    Element; 0009,1001 came alone, which no client can read (its meaning is the creator's). Orthanc returns
    neither (a difference judged in its disfavour: the standard has it supported or ignored, never half)."""
    mine, theirs = ask(stack, orthanc, f"/instances?PatientID=ORACLE-PRIV&includefield={include}")
    assert len(mine) == len(theirs) == 1
    assert mine[0]["00090010"] == {"vr": "LO", "Value": ["ACME 1.0"]}
    if "00091001" in include:
        assert mine[0]["00091001"] == {"vr": "LO", "Value": ["private value"]}
    else:
        assert "00091001" not in mine[0]
    assert "00090010" not in theirs[0] and "00091001" not in theirs[0]


@pytest.mark.parametrize(
    ("level", "named", "tag", "element"),
    [
        ("studies", "PatientAge", "00101010", {"vr": "AS", "Value": ["045Y"]}),
        ("series", "InstitutionName", "00080080", {"vr": "LO", "Value": ["Oracle Hospital"]}),
    ],
)
def test_includefield_all_holds_what_a_named_includefield_gets_fixed(
    stack: RunningStack, orthanc: Orthanc, level: str, named: str, tag: str, element: dict[str, Any]
) -> None:
    """PS3.18 10.6.3.3.1-2: includefield=all is "all available" attributes of the level. A study's Patient's Age
    (a series' Institution Name) was returned when named, and left out under `all`. Orthanc leaves both out (its
    answers hold the attributes it indexes only). One image's own Slice Thickness is no study's or series'."""
    query = f"/{level}?PatientID=ORACLE-PRIV&includefield="
    [by_name], _ = ask(stack, orthanc, query + named)
    [every], [theirs] = ask(stack, orthanc, query + "all")
    assert by_name[tag] == every[tag] == element
    assert "00180050" not in every and "00080018" not in every
    assert tag not in theirs


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("/series?PatientID=ORACLE-MOD&Modality=CT,MR", ["CT", "MR"]),
        ("/series?PatientID=ORACLE-MOD&Modality=MR,PT", ["MR"]),
        ("/studies?PatientID=ORACLE-MOD&PatientSex=F,O", ["CT", "US"]),
    ],
)
def test_a_list_of_codes_matches_any_of_them_fixed(
    stack: RunningStack, orthanc: Orthanc, query: str, expected: list[str]
) -> None:
    """A code string holds no comma or backslash (PS3.5 6.2), so ``Modality=CT,MR`` can only mean either code, as
    ModalitiesInStudy lists do; Orthanc answers so. The gateway matched the list as one value: nothing, in silence."""
    mine, theirs = ask(stack, orthanc, query)
    assert names(mine) == names(theirs) == expected
    # the backslash, DICOM's own separator of values, as ModalitiesInStudy takes it (Orthanc: nothing)
    backslashed, _ = ask(stack, orthanc, query.replace(",", "%5C"))
    assert names(backslashed) == expected


@pytest.mark.parametrize("value", ["CT,M*", "CT,mr", ",", "\\"])
def test_a_list_of_codes_takes_plain_codes(stack: RunningStack, value: str) -> None:
    answer = requests.get(
        f"{stack.url}/dicomweb/series", params={"Modality": value}, headers=stack.api_headers, timeout=30
    )
    assert answer.status_code == 400
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["detail"] == "Modality: a list takes plain codes such as CT,MR (no wildcards)"


@pytest.mark.parametrize(
    ("level", "key", "value", "detail"),
    [
        ("series", "Modality", "mr", "Modality: expected a code in upper case, such as CT"),
        ("series", "Modality", "m*", "Modality: expected a code in upper case, such as CT"),
        ("studies", "PatientSex", "f", "PatientSex: expected a code in upper case, such as F"),
        ("studies", "ModalitiesInStudy", "mr", "ModalitiesInStudy: expected modality codes such as CT,MR, in upper"),
        ("studies", "ModalitiesInStudy", "ct,mr", "ModalitiesInStudy: expected modality codes such as CT,MR, in upp"),
    ],
)
def test_a_code_in_lower_case_is_a_400_on_every_code_key(
    stack: RunningStack, level: str, key: str, value: str, detail: str
) -> None:
    """A code string is upper-case letters, digits, space and underscore (PS3.5 6.2) and matched case-sensitively
    (PS3.4 C.2.2.2: only PN may be matched otherwise), so `mr` can match no stored code. `ModalitiesInStudy=mr` and
    `Modality=CT,mr` were a 400 saying so while `Modality=mr` was `200 []` (Orthanc's answer to all of them): one
    behaviour now, the 400 naming the case, on a single value, a wildcard and a list alike."""
    answer = requests.get(f"{stack.url}/dicomweb/{level}", params={key: value}, headers=stack.api_headers, timeout=30)
    assert answer.status_code == 400
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == "bad_request"
    assert answer.json()["detail"].startswith(detail)
    upper = requests.get(
        f"{stack.url}/dicomweb/{level}", params={key: value.upper()}, headers=stack.api_headers, timeout=30
    )
    assert upper.status_code == 200


@pytest.mark.parametrize(
    ("level", "key", "codes", "expected"),
    [
        ("series", "Modality", ["CT", "MR"], ["CT", "MR"]),
        ("studies", "PatientSex", ["F", "O"], ["CT", "US"]),
        ("studies", "ModalitiesInStudy", ["MR", "US"], ["MR", "US"]),
    ],
)
def test_a_code_key_repeated_is_the_list_of_its_codes_fixed(
    stack: RunningStack, orthanc: Orthanc, level: str, key: str, codes: list[str], expected: list[str]
) -> None:
    """dicomweb-client sends a list of values as the key repeated (``search_filters={"Modality": ["CT", "MR"]}``
    is ``Modality=CT&Modality=MR``), as PS3.18 has a UID key repeated be the list of its UIDs. ``Modality`` and
    ``PatientSex`` answered ``400 "Modality given more than once"`` (the client's HTTPError), while ``CT,MR`` found
    either. The repeated key is now that list: the same bytes as the comma's, Orthanc's answer to the comma
    (Orthanc takes the last of a repeated key: MR alone)."""
    client = DICOMwebClient(url=f"{stack.url}/dicomweb", headers=stack.api_headers)
    search = client.search_for_series if level == "series" else client.search_for_studies
    assert names(search(search_filters={"PatientID": "ORACLE-MOD", key: codes})) == expected
    repeated = "&".join(f"{key}={code}" for code in codes)
    answer = requests.get(
        f"{stack.url}/dicomweb/{level}?PatientID=ORACLE-MOD&{repeated}", headers=stack.api_headers, timeout=30
    )
    listed = requests.get(
        f"{stack.url}/dicomweb/{level}?PatientID=ORACLE-MOD&{key}={','.join(codes)}",
        headers=stack.api_headers,
        timeout=30,
    )
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/dicom+json")
    assert "Warning" not in answer.headers
    assert answer.content == listed.content
    _, theirs = ask(stack, orthanc, f"/{level}?PatientID=ORACLE-MOD&{key}={','.join(codes)}")
    assert names(theirs) == expected


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("/series?Modality=CT&Modality=M*", "Modality: a list takes plain codes such as CT,MR (no wildcards)"),
        ("/studies?PatientID=ORACLE-MOD&PatientID=ORACLE-DT", "PatientID given more than once"),
    ],
)
def test_a_repeated_key_that_is_no_list_stays_a_400(stack: RunningStack, query: str, detail: str) -> None:
    """A list takes plain codes, repeated as with commas; a key other than a UID's or a code's holds one value
    (PS3.18: a query key is unique unless its attribute takes a UID list), so a second one is still a 400."""
    answer = requests.get(f"{stack.url}/dicomweb{query}", headers=stack.api_headers, timeout=30)
    assert (answer.status_code, answer.headers["Content-Type"]) == (400, "application/json")
    assert answer.json() == {"error": "bad_request", "detail": detail}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Caret^Carla", ["Caret^Carla^^^"]),  # stored with its trailing delimiters, asked for without them
        ("caret^carla^", ["Caret^Carla^^^"]),
        ("Plain^Paula^^^", ["Plain^Paula"]),  # stored without them, asked for with them
        ("Family", ["Family^^^^"]),
        ("Family^^^^", ["Family^^^^"]),
        ("*^Carla", ["Caret^Carla^^^"]),  # a wildcard match ending in a component
        ("Caret^Carla^^^*", ["Caret^Carla^^^"]),
        ("Caret", []),  # the family name alone is still not the whole name
    ],
)
def test_trailing_empty_name_components_do_not_change_a_name_fixed(
    stack: RunningStack, orthanc: Orthanc, value: str, expected: list[str]
) -> None:
    """PS3.5 6.2.1.1: trailing null components of a Person Name and their delimiters may be omitted, so
    ``Caret^Carla^^^`` and ``Caret^Carla`` are one name. A file written with the delimiters (or a client sending
    them) found nothing when the other spelling was asked for: the gateway compared the texts. Orthanc does too (a
    difference judged in its disfavour); the gateway now matches the name whichever way either side spells it, on
    both PN keys it matches."""
    for key in ("PatientName", "ReferringPhysicianName"):
        mine, _ = ask(stack, orthanc, f"/studies?PatientID=ORACLE-PN&{key}={quote(value)}")
        assert sorted(m[tag_of(key)]["Value"][0]["Alphabetic"] for m in mine) == expected, key
    mine, theirs = ask(stack, orthanc, f"/studies?PatientID=ORACLE-PN&PatientName={quote(value)}")
    if value in ("Caret^Carla", "Plain^Paula^^^", "Family"):
        assert theirs == []  # Orthanc 1.x: the texts compared


@pytest.mark.parametrize("value", ["^", "^^^^", "*^*", "*^*^^^", "=^^", "^=^"])
def test_a_name_of_delimiters_only_is_universal_matching(stack: RunningStack, value: str) -> None:
    """A name whose components are all empty (``^``, ``^^^^``) is the zero-length name once its trailing empty
    components are left out (PS3.5 6.2), and one whose components are all ``*`` (``*^*``, DCMTK's bug #612) is the
    ``*`` of PS3.4 C.2.2.2.4: both are universal matching (C.2.2.2.3), every study found. ``^`` found none (the
    text compared with the names'), ``*^*`` none written without a ``^``, ``=^^`` was the 400 for a name naming
    only other component groups."""
    everything = requests.get(
        f"{stack.url}/dicomweb/studies", params={"PatientID": "ORACLE-PN"}, headers=stack.api_headers, timeout=30
    )
    assert everything.status_code == 200 and len(everything.json()) >= 3
    for key in ("PatientName", "ReferringPhysicianName"):
        answer = requests.get(
            f"{stack.url}/dicomweb/studies",
            params={"PatientID": "ORACLE-PN", key: value},
            headers=stack.api_headers,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == everything.json(), key


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("StudyDate=19930304", True),
        ("StudyDate=1993", True),
        ("StudyDate=199303", True),
        ("StudyDate=19930101-19931231", True),
        ("StudyDate=19930304-", True),
        ("StudyDate=19930305-", False),
        ("StudyDate=-19930303", False),
        ("StudyDate=1993.03.04", True),  # the value as the answer shows it, pasted into a search
        ("StudyDate=1993.03.01-1993.03.31", True),
        ("StudyDate=19930304-19930304&StudyTime=1015-1016", True),  # combined date-time matching
        ("PatientBirthDate=19500708", True),
        ("PatientBirthDate=-19491231", False),
    ],
)
def test_a_date_in_the_form_before_dicom_3_is_matched_as_a_date_fixed(
    stack: RunningStack, orthanc: Orthanc, query: str, found: bool
) -> None:
    """PS3.5 6.2 (DA) recommends reading the form of the standard before V3.0, ``yyyy.mm.dd``, as old archives
    hold it (its times, ``hh:mm:ss``, were read already). The catalog kept the text, so ``StudyDate=19930304``,
    ``1993`` or a range holding the day found nothing, and open ranges compared the dots as characters. Orthanc
    keeps the text too (a difference judged in its disfavour). The answer keeps the file's value."""
    mine, theirs = ask(stack, orthanc, f"/studies?PatientID=ORACLE-OLD&{query}")
    assert names(mine) == (["old"] if found else [])
    if found:
        assert mine[0]["00080020"] == {"vr": "DA", "Value": ["1993.03.04"]}
    if query == "StudyDate=19930304":
        assert theirs == []  # Orthanc 1.x: the texts compared
    series, _ = ask(stack, orthanc, "/series?PatientID=ORACLE-OLD&PerformedProcedureStepStartDate=19930304")
    assert names(series) == ["old"]


@pytest.mark.parametrize(
    "query",
    ["StudyDate=-20000101", "StudyDate=19000101-", "StudyDate=1993", "PatientBirthDate=-19500101"],
)
def test_a_stored_date_that_names_no_day_matches_no_range_fixed(
    stack: RunningStack, orthanc: Orthanc, query: str
) -> None:
    """A Study Date or Patient's Birth Date that names no calendar day (``00000000``, the placeholder some
    modalities write for an unknown date, or a thirteenth month) is no date (PS3.5 6.2 DA), as a stored time that
    is no time of day matched nothing already. The catalog compared the text, so ``PatientBirthDate=-19500101``
    ("born before 1950") listed every patient of unknown birth date, and ``StudyDate=1993`` a study of month 13.
    Orthanc compares the text too (a difference judged in its disfavour). The answer keeps the file's value."""
    mine, theirs = ask(stack, orthanc, f"/studies?PatientID=ORACLE-NODAY&{query}")
    assert names(mine) == []
    if query == "StudyDate=-20000101":
        assert names(theirs) == ["month13", "zeros"]  # Orthanc 1.x: the texts compared
    if query == "PatientBirthDate=-19500101":
        assert names(theirs) == ["zeros"]
    every, _ = ask(stack, orthanc, "/studies?PatientID=ORACLE-NODAY&StudyDate=")
    assert sorted(m["00080020"]["Value"][0] for m in every) == ["00000000", "19931301"]


@pytest.mark.parametrize(
    ("level", "path", "tag"),
    [
        ("instances", "ReferencedImageSequence.ReferencedSOPInstanceUID", "00081140"),
        ("instances", "00081140.00081155", "00081140"),
        ("studies", "OtherPatientIDsSequence.PatientID", "00101002"),
        ("studies", "00101002.00100020", "00101002"),
    ],
)
def test_an_includefield_path_into_a_sequence_returns_the_sequence_fixed(
    stack: RunningStack, orthanc: Orthanc, level: str, path: str, tag: str
) -> None:
    """PS3.18 8.3.4.3: an includefield value is an attribute, and an attribute may be a path into a sequence
    (``attribute-id *("." attribute-id)``, 8.3.4.1). The gateway ignored such a path with a Warning saying it
    named no attribute (``The following includefield values name no attribute and were ignored:
    ReferencedImageSequence.ReferencedSOPInstanceUID``), and the sequence was not returned. It is now returned
    whole, as naming the sequence returns it. Orthanc returns neither."""
    query = f"/{level}?PatientID=ORACLE-SEQ&includefield="
    [by_path], [theirs] = ask(stack, orthanc, query + path)
    [by_sequence], _ = ask(stack, orthanc, query + tag)
    assert by_path == by_sequence
    assert len(by_path[tag]["Value"]) == 1
    assert tag not in theirs
    answer = requests.get(
        f"{stack.url}/dicomweb{query}{path}", headers={**stack.api_headers, "Accept": "application/dicom+json"},
        timeout=30,
    )
    assert "Warning" not in answer.headers
