"""QIDO-RS: parsing (no database) and search on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.catalog import Catalog
from gateway.catalog.schema import series as series_table
from gateway.catalog.schema import studies as studies_table
from gateway.dicomweb.qido import DEFAULT_LIMIT, IGNORED_TEXTS, MAX_LIMIT, UNSUPPORTED_OPTIONS, Match, parse_qido
from gateway.errors import BadRequest
from gateway.scope import Scope
from tests.fixtures.catalog_data import SR_DOC, make_instance, record

# --- parsing ------------------------------------------------------------------------------------------------


def one(level: str, **args: str) -> Match:
    query = parse_qido(level, {k: [v] for k, v in args.items()})  # type: ignore[arg-type]
    assert len(query.matches) == 1
    return query.matches[0]


def test_keyword_and_tag_are_the_same_attribute() -> None:
    by_keyword, by_tag = one("studies", PatientID="P1"), one("studies", **{"00100020": "P1"})
    assert by_keyword == by_tag
    assert (by_keyword.op, by_keyword.values) == ("eq", ("P1",))
    assert one("studies", **{"0020000d": "1.2"}).attr.keyword == "StudyInstanceUID"


def test_wildcards_become_escaped_like() -> None:
    match = one("studies", PatientName="Do?^J*")
    assert (match.op, match.values) == ("like", ("Do_^J%",))
    assert one("studies", AccessionNumber="A%_\\*").values == ("A\\%\\_\\\\%",)


def test_universal_matching_adds_no_filter() -> None:
    assert parse_qido("studies", {"PatientID": [""], "PatientName": ["*"]}).matches == ()
    # of a lower level than the query's too: a return key, as includefield names one (a value there is a 400)
    lower = parse_qido("studies", {"Modality": [""], "SOPInstanceUID": [""]})
    assert (lower.matches, lower.include) == ((), frozenset({"00080060", "00080018"}))


def test_request_attributes_keys_are_one_item_match() -> None:
    """Both keys of RequestAttributesSequence, by keyword or tag, become one match: they must hold in one item."""
    query = parse_qido(
        "series",
        {"RequestAttributesSequence.ScheduledProcedureStepID": ["SPS*"], "00400275.00401001": [" RP1 "]},
    )
    [match] = query.matches
    assert (match.attr.keyword, match.op) == ("RequestAttributesSequence", "item")
    assert match.values == (("00400009", "like", "SPS%"), ("00401001", "eq", "RP1"))
    assert parse_qido("series", {"00400275.00401001": ["*"]}).matches == ()  # universal matching


def test_an_empty_value_of_an_attribute_not_matched_is_a_return_key() -> None:
    # PS3.4 C.2.2.2.3: universal matching asks only for the attribute, as C-FIND-style clients do (a 400 before)
    query = parse_qido("instances", {"PatientAge": [""], "00280008": [""], "ImageType": ["", ""]})
    assert (query.matches, query.include) == ((), frozenset({"00101010", "00280008", "00080008"}))
    # a value of it is not matched (PS3.18 8.3: ignored, with a Warning); the attribute is still returned
    query = parse_qido("studies", {"PatientAge": ["045Y"]})
    assert (query.matches, query.include) == ((), frozenset({"00101010"}))
    assert query.warnings == (
        "The following attributes are not supported as query keys and were not matched: PatientAge",
    )


def test_date_and_time_ranges() -> None:
    assert one("studies", StudyDate="20200101").values == ("20200101", "20200101")
    assert one("studies", StudyDate="20200101-20201231").values == ("20200101", "20201231")
    assert one("studies", StudyDate="-2020").values == (None, "20209999")
    assert one("studies", StudyDate="2020-").values == ("20200000", None)
    assert one("studies", StudyDate="202003").values == ("20200300", "20200399")
    assert one("studies", StudyTime="0800-1200").values == ("080000.000000", "120099.999999")
    # a single time is the range of what it names, in the catalog's time keys (gateway.dicom.times)
    assert one("studies", StudyTime="101500.000").values == ("101500.000000", "101500.000999")
    assert one("studies", StudyTime="1015").values == ("101500.000000", "101599.999999")
    assert one("studies", PatientBirthDate="-19800101").values == (None, "19800101")
    # the form before DICOM 3.0 (PS3.5 6.2 DA), as the catalog keys it (gateway.dicom.times.date_key)
    assert one("studies", StudyDate="1993.03.04").values == ("19930304", "19930304")
    assert one("studies", StudyDate="1993.03.01-1993.03.31").values == ("19930301", "19930331")


def test_uid_lists() -> None:
    assert one("studies", StudyInstanceUID="1.2,1.3\\1.4").values == ("1.2", "1.3", "1.4")
    query = parse_qido("series", {"SeriesInstanceUID": ["1.5", "1.6,1.5"]})
    assert query.matches[0].values == ("1.5", "1.6")


def test_a_code_key_repeated_is_its_list() -> None:
    """``Modality=CT&Modality=MR`` (dicomweb-client's list) is ``Modality=CT,MR``; it was a 400."""
    [match] = parse_qido("series", {"Modality": ["CT", "MR,CT"]}).matches
    assert (match.op, match.values) == ("in", ("CT", "MR"))
    [match] = parse_qido("studies", {"PatientSex": ["F", "", "O"]}).matches
    assert (match.op, match.values) == ("in", ("F", "O"))
    assert parse_qido("series", {"Modality": ["", ""]}).matches == ()  # universal matching, as one empty value


def test_includefield_limit_offset() -> None:
    query = parse_qido(
        "instances",
        {
            "includefield": ["00180050,ImageType", "Rows"],
            "limit": ["5"],
            "offset": ["10"],
            "fuzzymatching": ["true"],
        },
    )
    assert query.include == frozenset({"00180050", "00080008", "00280010"}) and not query.include_all
    assert (query.limit, query.offset) == (5, 10)
    assert query.warnings == (UNSUPPORTED_OPTIONS["fuzzymatching"],)  # ignored, but the view must say so
    options = {name: ["true"] for name in ("multiplevaluematching", "emptyvaluematching")}
    assert set(parse_qido("studies", options).warnings) == {UNSUPPORTED_OPTIONS[name] for name in options}
    assert parse_qido("studies", {"fuzzymatching": ["false"], "emptyvaluematching": ["false"]}).warnings == ()
    assert parse_qido("studies", {"includefield": ["all"]}).include_all
    # a path into a sequence names its sequence, returned whole (PS3.18 8.3.4.1's attribute)
    path = parse_qido("instances", {"includefield": ["ReferencedImageSequence.ReferencedSOPInstanceUID,00101002.x"]})
    assert (path.include, path.warnings) == (frozenset({"00081140"}), (IGNORED_TEXTS["include"] + "00101002.x",))
    default = parse_qido("studies", {"token": ["abc"], "accept": ["application/dicom+json"]})
    assert (default.limit, default.offset, default.matches) == (DEFAULT_LIMIT, 0, ())
    assert parse_qido("studies", {"limit": ["100000"]}).limit == MAX_LIMIT


@pytest.mark.parametrize("name", ["fuzzymatching", "emptyvaluematching", "multiplevaluematching"])
def test_a_matching_option_is_true_or_false(name: str) -> None:
    """PS3.18 8.3.4: the matching options are booleans. `fuzzymatching=maybe` was ignored without a word (a client
    that meant `true` was never told its matching was literal): any value but `true` or `false` is now the 400 that
    names it, as a bad `limit` is. The words are read in any case, blanks around them left out, as they were; an
    empty value is the option not given."""
    for value in ("maybe", "1", "yes", "tru", "true,false", "on"):
        with pytest.raises(BadRequest) as caught:
            parse_qido("studies", {name: [value]})
        assert caught.value.detail == f"{name}: expected true or false", value
    for value in ("true", "TRUE", "True", " true "):
        assert parse_qido("studies", {name: [value]}).warnings == (UNSUPPORTED_OPTIONS[name],), value
    for value in ("false", "FALSE", ""):
        assert parse_qido("studies", {name: [value]}).warnings == (), value


def test_limit_zero_is_no_limit_asked() -> None:
    """`limit=0` is read as no limit given (as Orthanc and dcm4chee read it): the server's page, 100 matches, with
    the Warning that says how many more there are (`server_limit`), never an empty page (no client asks for one)."""
    assert parse_qido("studies", {"limit": ["0"]}) == parse_qido("studies", {})
    zero = parse_qido("studies", {"limit": ["0"]})
    assert (zero.limit, zero.server_limit) == (DEFAULT_LIMIT, True)


def test_path_uids_are_validated() -> None:
    query = parse_qido("instances", {}, study_uid="1.2", series_uid="1.2.3")
    assert (query.study_uid, query.series_uid) == ("1.2", "1.2.3")
    with pytest.raises(BadRequest):
        parse_qido("series", {}, study_uid="1.2.x")


@pytest.mark.parametrize(
    ("args", "include", "warning"),
    [
        (
            {"NoSuchAttribute": ["x"], "_": ["1712345678"]},
            set(),
            "query parameters are not supported and were ignored: NoSuchAttribute",
        ),
        ({"ImageType": ["ORIGINAL"]}, {"00080008"}, "not supported as query keys and were not matched: ImageType"),
        ({"00400275.00321060": ["x"]}, set(), "not supported as query keys and were not matched: 00400275.00321060"),
        ({"Vendor.Thing": ["x"]}, set(), "query parameters are not supported and were ignored: Vendor.Thing"),
        ({"includefield": ["NotAKeyword,PatientAge"]}, {"00101010"}, "name no attribute and were ignored: NotAKeyword"),
        ({"a\r\nb": ["x"], "c d": ["y"]}, set(), "query parameters are not supported and were ignored: 2 others"),
    ],
)
def test_unsupported_parameters_are_ignored_with_a_warning(
    args: dict[str, list[str]], include: set[str], warning: str
) -> None:
    """PS3.18 8.3: a parameter, key or value the origin server does not support is ignored (the request is answered
    as if it were absent); the answer's Warning names it, when its name is plain. A 400 before."""
    query = parse_qido("studies", args)
    assert (query.matches, set(query.include)) == ((), include)
    assert [text for text in query.warnings if warning in text] == [query.warnings[0]]
    assert len(query.warnings) == 1


@pytest.mark.parametrize(
    ("level", "args", "needle"),
    [
        ("studies", {"Modality": ["CT"]}, "lower level"),
        ("studies", {"SOPInstanceUID": ["1.2"]}, "lower level"),
        ("series", {"InstanceNumber": ["1"]}, "lower level"),
        ("studies", {"StudyDate": ["2020-01-01"]}, "StudyDate"),
        ("studies", {"StudyDate": ["-"]}, "empty date range"),
        ("studies", {"StudyTime": ["25:00"]}, "StudyTime"),
        # dates and times that name no day or time of day matched nothing, silently, with a 200
        ("studies", {"StudyDate": ["20231301"]}, "StudyDate"),
        ("studies", {"StudyDate": ["99999999"]}, "StudyDate"),
        ("studies", {"StudyDate": ["20230230"]}, "StudyDate"),
        ("studies", {"StudyDate": ["20230101-20231332"]}, "StudyDate"),
        ("studies", {"StudyTime": ["240000"]}, "StudyTime"),
        ("studies", {"StudyTime": ["1260"]}, "StudyTime"),
        # one attribute by keyword and by tag was ANDed, a repeated limit took the last value
        ("studies", {"PatientName": ["a"], "00100010": ["b"]}, "00100010: the same attribute as PatientName"),
        ("studies", {"limit": ["1", "3"]}, "limit given more than once"),
        ("studies", {"offset": ["0", "10"]}, "offset given more than once"),
        # a list of separators only matched everything
        ("studies", {"StudyInstanceUID": [","]}, "StudyInstanceUID: an empty list"),
        ("studies", {"ModalitiesInStudy": ["\\"]}, "ModalitiesInStudy: an empty list"),
        ("studies", {"StudyInstanceUID": ["1.2.*"]}, "not a valid UID"),
        ("studies", {"limit": ["ten"]}, "limit"),
        ("studies", {"offset": ["-1"]}, "offset"),
        ("series", {"SeriesNumber": ["one"]}, "integer"),
        # issue 11 defect 5: integers beyond what the catalog stores were a 500 (OverflowError in SQLite)
        ("studies", {"offset": ["999999999999999999999999999999"]}, "offset: expected an integer from 0"),
        ("studies", {"limit": ["999999999999999999999999999999"]}, "limit: expected an integer from 0"),
        ("series", {"SeriesNumber": ["9" * 30]}, "SeriesNumber: expected an integer from -2147483648"),
        ("instances", {"InstanceNumber": ["9" * 30]}, "InstanceNumber"),
        ("instances", {"00200013": ["-2147483649"]}, "00200013"),
        ("instances", {"InstanceNumber": ["2147483648"]}, "InstanceNumber"),
        ("studies", {"offset": ["2147483648"]}, "offset"),
        ("studies", {"offset": ["1_0"]}, "offset"),  # int() would take these; a query string must not
        ("studies", {"limit": [" 5"]}, "limit"),
        ("series", {"SeriesNumber": ["\u0665"]}, "SeriesNumber"),  # ARABIC-INDIC DIGIT FIVE
        ("series", {"SeriesNumber": ["9" * 5000]}, "SeriesNumber"),  # beyond int()'s digit limit
        ("studies", {"PatientID": ["a", "b"]}, "more than once"),
        ("series", {"Modality": ["CT", "M*"]}, "Modality: a list takes plain codes"),
        ("studies", {"StudyDate": ["2020", "2021"]}, "StudyDate given more than once"),
        ("studies", {"ModalitiesInStudy": ["C'T"]}, "modality"),
        ("studies", {"ModalitiesInStudy": ["mr"]}, "ModalitiesInStudy: expected modality codes such as CT,MR, in up"),
        ("series", {"Modality": ["mr"]}, "Modality: expected a code in upper case, such as CT"),
        ("series", {"00080060": ["m*"]}, "00080060: expected a code in upper case"),
        ("studies", {"PatientSex": ["f"]}, "PatientSex: expected a code in upper case, such as F"),
        # a test per code in the SQL: a few hundred were a 503 (SQLite's expression depth), never the client's 400
        ("studies", {"ModalitiesInStudy": [",".join(f"M{n}" for n in range(129))]}, "at most 128 codes (129 given)"),
        ("bogus", {}, "level"),
    ],
)
def test_bad_parameters_are_400(level: str, args: dict[str, list[str]], needle: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_qido(level, args)  # type: ignore[arg-type]
    assert info.value.status == 400
    assert needle in info.value.detail


# --- search -------------------------------------------------------------------------------------------------

S1, S2, S3, S4, S5, S6 = "1.2.10", "1.2.20", "1.2.30", "1.2.40", "1.2.50", "1.2.60"


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog(catalog_url)
    cat.migrate()
    add = cat.register_instance
    for i in range(3):
        add(
            record(
                make_instance(
                    S1,
                    S1 + ".1",
                    f"{S1}.1.{i}",
                    instance_number=3 - i,
                    accession="ACC%1",
                    study_date="20200115",
                )
            )
        )
    add(
        record(
            make_instance(
                S1,
                S1 + ".2",
                S1 + ".2.1",
                modality="SR",
                series_number=2,
                sop_class=SR_DOC,
                accession="ACC%1",
                study_date="20200115",
            )
        )
    )
    for i in range(2):
        add(
            record(
                make_instance(
                    S2,
                    S2 + ".1",
                    f"{S2}.1.{i}",
                    study_date="20210601",
                    study_time="083000",
                    accession="ACCX1",
                    modality="MR",
                    instance_number=i + 1,
                )
            )
        )
    add(
        record(
            make_instance(
                S3,
                S3 + ".1",
                S3 + ".1.1",
                patient_id="P2",
                patient_name="Smith^Anna",
                study_date="20191231",
                study_time="235959",
                accession="A_2",
                sex="F",
            )
        )
    )
    add(
        record(
            make_instance(
                S4,
                S4 + ".1",
                S4 + ".1.1",
                patient_id="P3",
                patient_name="doe^jane",
                study_date="20200115",
                study_time="120000",
                accession="B3",
                modality="US",
            )
        )
    )
    add(
        record(
            make_instance(
                S5,
                S5 + ".1",
                S5 + ".1.1",
                patient_id="p1",
                patient_name="Roe^Richard",
                study_date=None,
                modality="MR",
            )
        )
    )
    add(
        record(
            make_instance(
                S6,
                S6 + ".1",
                S6 + ".1.1",
                patient_id="P4",
                patient_name="Müller^Jürgen",
                study_date="20220202",
                referring="Who^Else",
            )
        )
    )
    # S1 and S4 share a study date: ordering must fall back to the study UID
    yield cat
    cat.close()


def find(catalog: Catalog, level: str, scope: Scope | None = None, /, **kw: Any) -> list[dict[str, Any]]:
    study_uid, series_uid = kw.pop("study_uid", None), kw.pop("series_uid", None)
    args = {k: v if isinstance(v, list) else [v] for k, v in kw.items()}
    query = parse_qido(level, args, study_uid=study_uid, series_uid=series_uid)  # type: ignore[arg-type]
    return catalog.search(query, scope)


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [r[tag]["Value"][0] for r in results]


ALL_STUDIES = [S6, S2, S1, S4, S3, S5]  # study_date desc (no date last), then study UID


def test_study_order_and_paging(catalog: Catalog) -> None:
    assert uids(find(catalog, "studies")) == ALL_STUDIES
    assert uids(find(catalog, "studies", limit="0")) == ALL_STUDIES  # no limit asked: the server's page
    pages = [uids(find(catalog, "studies", limit=str(2), offset=str(o))) for o in (0, 2, 4, 6)]
    assert pages == [ALL_STUDIES[0:2], ALL_STUDIES[2:4], ALL_STUDIES[4:6], []]


def test_integer_bounds_reach_the_database(catalog: Catalog) -> None:
    """The largest accepted integers run on SQLite and PostgreSQL alike (an empty page, not an error)."""
    top, bottom = str(2**31 - 1), str(-(2**31))
    assert find(catalog, "studies", offset=top, limit=top) == []
    assert find(catalog, "series", SeriesNumber=top) == []
    assert find(catalog, "instances", InstanceNumber=bottom) == []
    assert len(find(catalog, "instances", InstanceNumber="+1")) == len(find(catalog, "instances", InstanceNumber="1"))


def test_exact_and_case_sensitivity(catalog: Catalog) -> None:
    assert uids(find(catalog, "studies", PatientID="P1")) == [S2, S1]
    assert uids(find(catalog, "studies", **{"00100020": "p1"})) == [S5]  # non-PN: case-sensitive
    assert uids(find(catalog, "studies", PatientID="P*")) == [S6, S2, S1, S4, S3]
    assert uids(find(catalog, "studies", PatientSex="F")) == [S3]
    assert uids(find(catalog, "studies", StudyID="S1", PatientID="P3")) == [S4]


def test_person_names_case_insensitive_with_wildcards(catalog: Catalog) -> None:
    assert uids(find(catalog, "studies", PatientName="DOE^*")) == [S2, S1, S4]
    assert uids(find(catalog, "studies", PatientName="doe^john")) == [S2, S1]
    assert uids(find(catalog, "studies", PatientName="?oe^*")) == [S2, S1, S4, S5]
    assert uids(find(catalog, "studies", PatientName="Müller*")) == [S6]
    assert uids(find(catalog, "studies", PatientName="MÜLLER^jürgen")) == [S6]
    assert uids(find(catalog, "studies", ReferringPhysicianName="who*")) == [S6]
    assert uids(find(catalog, "studies", PatientName="Doe^Jane^^^")) == [S4]  # stored "doe^jane"
    assert uids(find(catalog, "studies", PatientName="Müller^Jürgen^")) == [S6]


def test_wildcard_escaping(catalog: Catalog) -> None:
    # "%" and "_" are literal characters in DICOM values, not SQL wildcards
    assert uids(find(catalog, "studies", AccessionNumber="ACC%1")) == [S1]
    assert uids(find(catalog, "studies", AccessionNumber="ACC%*")) == [S1]
    assert uids(find(catalog, "studies", AccessionNumber="A_*")) == [S3]
    assert uids(find(catalog, "studies", AccessionNumber="ACC?1")) == [S2, S1]


def test_date_time_ranges(catalog: Catalog) -> None:
    assert uids(find(catalog, "studies", StudyDate="20200115")) == [S1, S4]
    assert uids(find(catalog, "studies", StudyDate="20200101-20201231")) == [S1, S4]
    assert uids(find(catalog, "studies", StudyDate="-2020")) == [S1, S4, S3]
    assert uids(find(catalog, "studies", StudyDate="2021-")) == [S6, S2]
    assert uids(find(catalog, "studies", StudyDate="2019")) == [S3]
    assert uids(find(catalog, "studies", StudyTime="0800-1200")) == [S6, S2, S1, S4, S5]
    assert uids(find(catalog, "studies", StudyTime="2300-")) == [S3]
    assert uids(find(catalog, "studies", StudyDate="20200115", StudyTime="-1100")) == [S1]


def test_times_match_as_times_not_texts(catalog_url: str) -> None:
    """PS3.4 C.2.2.2: a TM value may omit trailing components and carry a fraction, so ``101500.000``, ``101500``
    and ``1015`` name one time, and a stored ``1015`` or ``10:15:30`` (the form before DICOM 3.0) is a time too.
    Compared as texts, ``StudyTime=101500.000`` missed a stored ``101500``, and ``101500`` a stored ``1015``. The
    answer still gives each study's time as its file has it."""
    stored = {"1.2.71": "101500", "1.2.72": "1015", "1.2.73": "101500.25", "1.2.74": "10:15:30", "1.2.75": "1016"}
    stored["1.2.76"] = "0915"
    catalog = Catalog(catalog_url)
    catalog.migrate()
    try:
        for study, time_text in stored.items():
            catalog.register_instance(record(make_instance(study, study + ".1", study + ".1.1", study_time=time_text)))

        def times(value: str) -> set[str]:
            return {r["00080030"]["Value"][0] for r in find(catalog, "studies", StudyTime=value)}

        assert times("101500.000") == {"101500", "1015"}
        assert times("101500") == {"101500", "101500.25", "1015"}
        assert times("1015") == times("10:15") == {"101500", "101500.25", "1015", "10:15:30"}
        assert times("101500.25") == {"101500.25"}
        assert times("101530") == {"10:15:30"}
        assert times("1015-101500.5") == {"101500", "101500.25", "1015"}
        assert times("-0959") == {"0915"}
        assert times("1016-") == {"1016"}
        assert times("10") == {"101500", "101500.25", "1015", "10:15:30", "1016"}
    finally:
        catalog.close()


def test_uid_list_and_modalities(catalog: Catalog) -> None:
    assert uids(find(catalog, "studies", StudyInstanceUID=f"{S3},{S1}\\{S5}")) == [S1, S3, S5]
    assert uids(find(catalog, "studies", ModalitiesInStudy="MR")) == [S2, S5]
    assert uids(find(catalog, "studies", ModalitiesInStudy="SR,US")) == [S1, S4]
    assert uids(find(catalog, "studies", ModalitiesInStudy="XA")) == []


def test_study_result_attributes(catalog: Catalog) -> None:
    (result,) = find(catalog, "studies", StudyInstanceUID=S1)
    assert result["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert result["00100020"] == {"vr": "LO", "Value": ["P1"]}
    assert result["00080020"] == {"vr": "DA", "Value": ["20200115"]}
    assert result["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert result["00201206"] == {"vr": "IS", "Value": [2]}
    assert result["00201208"] == {"vr": "IS", "Value": [4]}
    assert result["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert "0020000E" not in result and "00180050" not in result
    assert list(result) == sorted(result)
    (no_date,) = find(catalog, "studies", StudyInstanceUID=S5)
    assert no_date["00080020"] == {"vr": "DA"}  # required attribute, returned empty


def test_series_level(catalog: Catalog) -> None:
    in_study = find(catalog, "series", study_uid=S1)
    assert uids(in_study, "0020000E") == [S1 + ".1", S1 + ".2"]
    assert [r["00080060"]["Value"][0] for r in in_study] == ["CT", "SR"]
    assert [r["00201209"]["Value"][0] for r in in_study] == [3, 1]
    assert all(r["0020000D"]["Value"] == [S1] for r in in_study)
    assert "00100020" not in in_study[0]  # the path fixed the study: no study attributes
    everywhere = find(catalog, "series", Modality="MR")
    assert uids(everywhere, "0020000E") == [S2 + ".1", S5 + ".1"]
    assert everywhere[0]["00100020"]["Value"] == ["P1"]  # /series without a study: study attributes too
    assert everywhere[0]["00201208"]["Value"] == [2]
    assert uids(find(catalog, "series", SeriesNumber="2"), "0020000E") == [S1 + ".2"]
    assert uids(find(catalog, "series", PatientID="P3"), "0020000E") == [S4 + ".1"]  # study attribute match


def test_instance_level_and_includefield(catalog: Catalog) -> None:
    in_series = find(catalog, "instances", study_uid=S1, series_uid=S1 + ".1")
    assert uids(in_series, "00080018") == [f"{S1}.1.2", f"{S1}.1.1", f"{S1}.1.0"]  # by instance number
    first = in_series[0]
    assert first["00200013"] == {"vr": "IS", "Value": [1]}
    assert first["00280010"] == {"vr": "US", "Value": [4]}
    assert first["00280008"] == {"vr": "IS", "Value": [1]}
    assert first["0020000E"]["Value"] == [S1 + ".1"] and first["0020000D"]["Value"] == [S1]
    assert "00180050" not in first and "00100020" not in first
    extra = find(catalog, "instances", study_uid=S1, series_uid=S1 + ".1", includefield="SliceThickness")
    assert extra[0]["00180050"] == {"vr": "DS", "Value": ["2.5"]}
    everything = find(catalog, "instances", study_uid=S1, includefield="all")
    assert len(everything) == 4
    assert everything[0]["00180050"] == {"vr": "DS", "Value": ["2.5"]}
    assert "7FE00010" not in everything[0]  # bulk data never appears in QIDO
    assert uids(find(catalog, "instances", SOPClassUID=SR_DOC), "00080018") == [S1 + ".2.1"]
    assert uids(find(catalog, "instances", study_uid=S2, InstanceNumber="2"), "00080018") == [S2 + ".1.1"]
    top = find(catalog, "instances", PatientID="P4")
    assert top[0]["00100020"]["Value"] == ["P4"] and top[0]["00080060"]["Value"] == ["CT"]


def test_an_instance_without_pixel_data_has_no_number_of_frames(catalog: Catalog) -> None:
    """PS3.18 Table 10.6.3-5 returns Number of Frames (0028,0008) "if known": an SR or a waveform has no frames, and 0
    is no valid value of it (PS3.3 C.7.6.6); the catalog's 0 ("no pixel data") was answered as `"Value": [0]`."""
    sop = "1.2.70.1.1"
    catalog.register_instance(
        record(make_instance("1.2.70", "1.2.70.1", sop, modality="SR", sop_class=SR_DOC, frames=0))
    )
    [found] = find(catalog, "instances", SOPInstanceUID=sop)
    assert "00280008" not in found and found["00080018"]["Value"] == [sop]
    assert find(catalog, "instances", study_uid=S1, series_uid=S1 + ".1")[0]["00280008"] == {"vr": "IS", "Value": [1]}


def test_study_scope_sees_only_its_study_at_every_level(catalog: Catalog) -> None:
    scope = Scope(frozenset({S2}))
    assert uids(find(catalog, "studies", scope)) == [S2]
    assert uids(find(catalog, "studies", scope, PatientID="P1")) == [S2]
    assert uids(find(catalog, "series", scope)) == [S2]
    assert uids(find(catalog, "series", scope, study_uid=S1)) == []
    assert uids(find(catalog, "instances", scope)) == [S2, S2]
    assert uids(find(catalog, "instances", scope, study_uid=S1)) == []
    assert find(catalog, "studies", Scope(frozenset())) == []


def test_series_scope(catalog: Catalog) -> None:
    scope = Scope(frozenset({S1}), frozenset({S1 + ".2"}))
    (study,) = find(catalog, "studies", scope)
    # counts and modalities describe what the credential can see, not the whole study
    assert study["00201206"]["Value"] == [1] and study["00201208"]["Value"] == [1]
    assert study["00080061"]["Value"] == ["SR"]
    assert find(catalog, "studies", scope, ModalitiesInStudy="CT") == []
    assert uids(find(catalog, "series", scope, study_uid=S1), "0020000E") == [S1 + ".2"]
    assert uids(find(catalog, "instances", scope, study_uid=S1), "00080018") == [S1 + ".2.1"]
    assert find(catalog, "instances", scope, study_uid=S1, series_uid=S1 + ".1") == []


def test_scope_is_applied_before_the_limit(catalog: Catalog) -> None:
    scope = Scope(frozenset({S3, S4, S5}))
    assert uids(find(catalog, "studies", scope, limit="2")) == [S4, S3]
    assert uids(find(catalog, "studies", scope, limit="2", offset="2")) == [S5]


# --- B5-style timing ----------------------------------------------------------------------------------------


def test_qido_on_100k_studies_finds_every_query(tmp_path: Path) -> None:
    started = time.perf_counter()
    catalog = Catalog(f"sqlite:///{tmp_path / 'big.db'}")
    catalog.migrate()
    rng = random.Random(5)
    modalities = ["CT", "MR", "US", "CR", "DX", "MG", "PT", "NM"]
    study_rows, series_rows = [], []
    for n in range(100_000):
        study = f"1.2.826.0.1.{n}"
        date = f"{rng.randint(2000, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        modality = modalities[n % len(modalities)]
        study_rows.append(
            {
                "study_uid": study,
                "patient_id": f"PID{n % 20_000:05d}",
                "patient_name": f"Name{n % 20_000}^Given",
                "study_date": date,
                "study_time": "101500",
                "accession_number": f"ACC{n}",
                "modalities_in_study": modality,
                "num_series": 1,
                "num_instances": 10,
                "attrs": "{}",
                "updated_at": 0,
            }
        )
        series_rows.append(
            {
                "series_uid": study + ".1",
                "study_uid": study,
                "modality": modality,
                "num_instances": 10,
                "attrs": "{}",
            }
        )
    with catalog.engine.begin() as conn:
        conn.execute(sa.insert(studies_table), study_rows)
        conn.execute(sa.insert(series_table), series_rows)
        conn.exec_driver_sql("ANALYZE")
    loaded = time.perf_counter() - started
    queries = [
        {"PatientID": ["PID00042"], "limit": ["100"]},
        {"StudyDate": ["20100101-20101231"], "limit": ["100"]},
        {"ModalitiesInStudy": ["MR"], "limit": ["100"]},
        {
            "PatientID": ["PID00042"],
            "StudyDate": ["2000-2024"],
            "ModalitiesInStudy": ["CT,US"],
            "limit": ["100"],
        },
        {"PatientName": ["name1234*"], "limit": ["100"]},
        {"limit": ["100"]},
    ]
    report = []
    for args in queries:
        query = parse_qido("studies", args)
        assert catalog.search(query, None)  # warm-up, and every query finds something
        samples = []
        for _ in range(15):
            start = time.perf_counter()
            catalog.search(query, None)
            samples.append(time.perf_counter() - start)
        p50 = statistics.median(samples)
        report.append(f"{'&'.join(f'{k}={v[0]}' for k, v in args.items())}: p50 {p50 * 1000:.2f} ms")
    catalog.close()
    print(f"\nQIDO over 100,000 studies (SQLite; load {loaded:.1f} s):\n  " + "\n  ".join(report))


# --- exact answers (issue 15: faster shaping, same JSON) ------------------------------------------------------


def _pn(value: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": value}]}


STUDY_S1 = {
    "00080020": {"vr": "DA", "Value": ["20200115"]},
    "00080030": {"vr": "TM", "Value": ["101500"]},
    "00080050": {"vr": "SH", "Value": ["ACC%1"]},
    "00080056": {"vr": "CS", "Value": ["ONLINE"]},
    "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
    "00080090": _pn("Ref^Doctor"),
    "00081030": {"vr": "LO", "Value": ["CHEST"]},
    "00100010": _pn("Doe^John"),
    "00100020": {"vr": "LO", "Value": ["P1"]},
    "00100030": {"vr": "DA", "Value": ["19700101"]},
    "00100040": {"vr": "CS", "Value": ["M"]},
    "0020000D": {"vr": "UI", "Value": [S1]},
    "00200010": {"vr": "SH", "Value": ["S1"]},
    "00201206": {"vr": "IS", "Value": [2]},
    "00201208": {"vr": "IS", "Value": [4]},
}


def exact(results: list[dict[str, Any]]) -> list[list[tuple[str, Any]]]:
    """The results with their key order (a dict comparison ignores it; the JSON answer keeps it)."""
    return [list(result.items()) for result in results]


def test_exact_study_answer(catalog: Catalog) -> None:
    assert exact(find(catalog, "studies", StudyInstanceUID=S1)) == exact([STUDY_S1])
    # no StudyDate stored: the required attribute comes back empty, in its place
    (no_date,) = find(catalog, "studies", StudyInstanceUID=S5)
    assert list(no_date) == list(STUDY_S1) and no_date["00080020"] == {"vr": "DA"}
    # a series scope: counts and ModalitiesInStudy of the visible series only, the rest unchanged
    scoped = find(catalog, "studies", Scope(frozenset({S1}), frozenset({S1 + ".2"})))
    counts = {"00080061": {"vr": "CS", "Value": ["SR"]}, "00201206": {"vr": "IS", "Value": [1]}}
    assert exact(scoped) == exact([{**STUDY_S1, **counts, "00201208": {"vr": "IS", "Value": [1]}}])


def test_exact_series_answer_with_study_attributes(catalog: Catalog) -> None:
    first = find(catalog, "series", Modality="MR")[0]
    study = {
        **STUDY_S1,
        "00080020": {"vr": "DA", "Value": ["20210601"]},
        "00080030": {"vr": "TM", "Value": ["083000"]},
        "00080050": {"vr": "SH", "Value": ["ACCX1"]},
        "00080061": {"vr": "CS", "Value": ["MR"]},
        "0020000D": {"vr": "UI", "Value": [S2]},
        "00201206": {"vr": "IS", "Value": [1]},
        "00201208": {"vr": "IS", "Value": [2]},
    }
    series = {
        "00080060": {"vr": "CS", "Value": ["MR"]},
        "0008103E": {"vr": "LO", "Value": ["AXIAL"]},
        "0020000E": {"vr": "UI", "Value": [S2 + ".1"]},
        "00200011": {"vr": "IS", "Value": [1]},
        "00201209": {"vr": "IS", "Value": [2]},
        # matching keys of PS3.18 Table 10.6.1-5, returned empty when the series has none
        "00400244": {"vr": "DA"},
        "00400245": {"vr": "TM"},
    }
    assert exact([first]) == exact([dict(sorted({**study, **series}.items()))])


def test_exact_instance_answer_with_includefield(catalog: Catalog) -> None:
    found = find(catalog, "instances", study_uid=S1, series_uid=S1 + ".1", includefield="SliceThickness", limit="1")
    assert exact(found) == exact(
        [
            {
                "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                "00080018": {"vr": "UI", "Value": [f"{S1}.1.2"]},
                "00080056": {"vr": "CS", "Value": ["ONLINE"]},
                "00180050": {"vr": "DS", "Value": ["2.5"]},
                "0020000D": {"vr": "UI", "Value": [S1]},
                "0020000E": {"vr": "UI", "Value": [S1 + ".1"]},
                "00200013": {"vr": "IS", "Value": [1]},
                "00280008": {"vr": "IS", "Value": [1]},
                "00280010": {"vr": "US", "Value": [4]},
                "00280011": {"vr": "US", "Value": [4]},
                "00280100": {"vr": "US", "Value": [16]},
            }
        ]
    )
    # includefield of a tag no level stores adds nothing; of a series attribute at study level, adds nothing
    # either (a study row has no series)
    study = find(catalog, "studies", StudyInstanceUID=S1, includefield=["00180050,SeriesDescription", "Modality"])
    assert exact(study) == exact([STUDY_S1])


def test_modalities_in_study_matches_whole_codes(catalog: Catalog) -> None:
    """ModalitiesInStudy is matched on the study's "CT\\SR" list (the order index carries it): whole codes only,
    "_" literal, any of several values; a series scope still sees its own series only."""
    assert uids(find(catalog, "studies", ModalitiesInStudy="CT")) == [S6, S1, S3]
    assert uids(find(catalog, "studies", ModalitiesInStudy="SR")) == [S1]
    for part in ("C", "T", "S", "C_", "_", "CT SR"):
        assert find(catalog, "studies", ModalitiesInStudy=part) == [], part
    assert uids(find(catalog, "studies", ModalitiesInStudy="US,MR,XA")) == [S2, S4, S5]
    assert uids(find(catalog, "studies", ModalitiesInStudy="SR", PatientName="doe*", StudyDate="2020")) == [S1]
    scope = Scope(frozenset({S1, S2}), frozenset({S1 + ".2", S2 + ".1"}))
    assert uids(find(catalog, "studies", scope, ModalitiesInStudy="CT")) == []
    assert uids(find(catalog, "studies", scope, ModalitiesInStudy="SR,MR")) == [S2, S1]
    # wildcards (PS3.4 C.2.2.2.4 allows them on CS) match one series' modality, never a stretch of the list
    assert uids(find(catalog, "studies", ModalitiesInStudy="S*")) == [S1]
    assert uids(find(catalog, "studies", ModalitiesInStudy="?R")) == [S2, S1, S5]
    assert uids(find(catalog, "studies", ModalitiesInStudy="*T,U?")) == [S6, S1, S4, S3]
    assert find(catalog, "studies", ModalitiesInStudy="C*R") == []  # "CT\\SR" holds C...R only across codes
    assert find(catalog, "studies", ModalitiesInStudy="_*") == []  # "_" is literal
    assert len(find(catalog, "studies", ModalitiesInStudy="*")) == 6  # universal
    assert uids(find(catalog, "studies", scope, ModalitiesInStudy="C*,M*")) == [S2]


def test_paging_edges_with_index_filters(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """PatientName wildcards and ModalitiesInStudy take the page's UIDs first: the same pages as a plain scan,
    at offset 0, across the end, past the end, with limit 1."""
    from gateway.catalog import search

    for deep in (10**9, 1):  # the plain form for deep pages too, and every page by its UIDs first
        monkeypatch.setattr(search, "DEEP_OFFSET", deep)
        doe = [S2, S1, S4]
        assert [uids(find(catalog, "studies", PatientName="DOE*", limit="1", offset=str(o))) for o in range(4)] == [
            [S2],
            [S1],
            [S4],
            [],
        ]
        assert uids(find(catalog, "studies", PatientName="d*", limit="2", offset="1")) == doe[1:]
        assert uids(find(catalog, "studies", PatientName="d*", offset="3")) == []
        assert uids(find(catalog, "studies", ModalitiesInStudy="MR", limit="1", offset="1")) == [S5]
        assert uids(find(catalog, "studies", ModalitiesInStudy="MR", offset="2")) == []


def test_fastjson_falls_back_where_orjson_refuses() -> None:
    """What the standard library wrote or holds (NaN, integers beyond 64 bits) still reads and encodes; the
    normal answer is compact UTF-8 in the dict's order."""
    from gateway import fastjson

    assert fastjson.loads('{"00280030": {"vr": "DS", "Value": [NaN, 1.5]}}')["00280030"]["Value"][1] == 1.5
    assert fastjson.dumps({"a": [2**70]}) == b'{"a":[1180591620717411303424]}'
    assert fastjson.dumps({"b": 1, "a": "Müller"}) == '{"b":1,"a":"Müller"}'.encode()
