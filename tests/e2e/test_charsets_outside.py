"""Character sets and names from the wider world through the real stack (session 26, h1): files whose text is
written in the character sets clinics use (ISO_IR 100, 126, 144 and 148, UTF-8, GB18030) and names as modalities and
RIS write them (trailing delimiters, capitals), stored by STOW-RS, searched, read back and de-identified as their
users do it. Each ``*_fixed`` test failed before its fix (CHANGELOG, session 26)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.charset import python_encoding
from pydicom.uid import generate_uid

from gateway.tools.synth import make_series
from tests.e2e.harness import RunningStack, start_stack

# De-identify whatever has PHI, keeping descriptions that repeat no identifier (PS3.15's Clean Descriptors
# Option): the free-text rule decides which descriptions are emptied.
CLEAN_DESCRIPTIONS_POLICY = """
version = "charsets-1"
[options]
on_unreadable = "reject"
on_deidentify_failure = "reject"

[destinations.main]
storage = "default"
region = "eu-west-1"
identifiable_allowed = false

[[rules]]
id = "deidentify"
match = { phi = true }
action = "deidentify"
destination = "main"

[default]
action = "reject"
reason = "no policy rule covers this upload"

[deidentify]
dates = "remove"
cleanDescOpt = true
"""


def with_text(folder: Path, charset: str | None, values: dict[str, bytes]) -> Path:
    """A one-slice CT whose Specific Character Set and text ``values`` (keyword: bytes) are written as given,
    byte for byte (pydicom would encode a str itself): as a modality in that character set wrote them."""
    path = make_series(folder, modality="CT", slices=1, seed=2600, clean=True)[0]
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del ds.SpecificCharacterSet
    if charset is not None:
        ds.SpecificCharacterSet = charset  # the placeholders below are ASCII, written alike in every one here
    placeholders: dict[bytes, bytes] = {}
    for i, (keyword, value) in enumerate(values.items()):
        value += b" " * (len(value) % 2)
        placeholder = (f"Q{i}" + "Z" * len(value))[: len(value)]
        setattr(ds, keyword, placeholder)
        placeholders[placeholder.encode("ascii")] = value
    ds.save_as(path)
    data = path.read_bytes()
    for placeholder, value in placeholders.items():
        assert data.count(placeholder) == 1, placeholder
        data = data.replace(placeholder, value)
    path.write_bytes(data)
    return path


def stored_metadata(stack: RunningStack, path: Path) -> dict[str, Any]:
    """The metadata of the instance one STOW of ``path`` stored (its UIDs are the de-identifier's)."""
    answer = stack.stow([path], **{"X-DICOMGW-Tenant": "clinic", "X-DICOMGW-Region": "eu-west-1"})
    assert answer.status_code in (200, 202), answer.text
    assert "00081198" not in answer.json(), answer.text
    (stored,) = answer.json()["00081199"]["Value"]
    metadata = requests.get(
        f"{stored['00081190']['Value'][0]}/metadata",
        headers={**stack.api_headers, "Accept": "application/dicom+json"},
        timeout=30,
    )
    assert metadata.status_code == 200, metadata.text
    result: dict[str, Any] = metadata.json()[0]
    return result


@pytest.fixture(scope="module")
def deid_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    base = tmp_path_factory.mktemp("charsets-deid")
    policy = base / "policy.toml"
    policy.write_text(CLEAN_DESCRIPTIONS_POLICY)
    running = start_stack(base / "stack", "file", None, DICOMGW_PHI_POLICY=str(policy))
    try:
        yield running
    finally:
        running.stack.stop()


@pytest.mark.parametrize(
    ("charset", "name", "description", "kept"),
    [
        # a two-letter name inside a longer word of a cased alphabet is no repetition of it, as "LI" is none in
        # "CLINIC" (Cyrillic "Ли" in "Поликлиника", polyclinic; "Ия" ends "томография"; "Ma" begins "Maßnahme")
        pytest.param("ISO_IR 144", "Ли^Анна", "Поликлиника КТ", True, id="cyrillic-inside-word"),
        pytest.param("ISO_IR 192", "Петрова^Ия", "Компьютерная томография", True, id="cyrillic-word-end"),
        pytest.param("ISO_IR 100", "Ma^Lin", "Maßnahme Kontrolle", True, id="latin1-inside-word"),
        pytest.param("ISO_IR 126", "Ιω^Νικος", "Ιωνική ακτινογραφία", True, id="greek-inside-word"),
        # the same names as words of the text: emptied, in any case and any alphabet
        pytest.param("ISO_IR 144", "Ли^Анна", "КТ, пациентка ЛИ А.", False, id="cyrillic-word"),
        pytest.param("ISO_IR 126", "Διονυσιος^Νικος", "ΔΙΟΝΥΣΙΟΣ εξέταση", False, id="greek-word-uppercase"),
        pytest.param("ISO_IR 100", "Weiß^Jürgen", "Kontrolle (JÜRGEN)", False, id="latin1-word-uppercase"),
        # Cyrillic and Greek decline a name by a case ending after it: "снимок Иванова" is the image of Иванов,
        # "εξέταση Μαρίας" Μαρία's examination (a name part of 4 or more letters; fail closed)
        pytest.param("ISO_IR 144", "Иванов^Пётр", "КТ: снимок Иванова", False, id="cyrillic-declined"),
        pytest.param("ISO_IR 126", "Μαρία^Ελένη", "εξέταση Μαρίας", False, id="greek-declined"),
        pytest.param("ISO_IR 144", "Ли^Анна", "Лицевой череп", True, id="cyrillic-short-part-starts-a-word"),
        # scripts that join honorifics, particles and prefixes to a name: found inside a longer run of letters
        pytest.param("ISO_IR 192", "Yamada^Tarou=山田^太郎", "山田太郎様 頭部CT", False, id="japanese-honorific"),
        pytest.param("ISO_IR 192", "김희중", "김희중님 흉부", False, id="korean-particle"),
        pytest.param("ISO_IR 192", "שרון^דבורה", "בדיקה לשרון", False, id="hebrew-prefix"),
        # a Chinese name of one-character components, written whole as Chinese writes it (王伟, 李娜)
        pytest.param("ISO_IR 192", "Wang^Wei=王^伟", "王伟 头部CT平扫", False, id="chinese-full-name"),
        pytest.param("GB18030", "Li^Na=李^娜", "患者李娜头颅CT", False, id="chinese-full-name-gb18030"),
        pytest.param("ISO_IR 192", "Wang^Wei=王^伟", "王府井院区 头部CT", True, id="chinese-one-character"),
        # Japanese writes one name in half-width or full-width letters (JIS X 0201 katakana, as ISO 2022 IR 13
        # holds a name, and the full-width forms of Latin and katakana that Japanese text uses)
        pytest.param("ISO_IR 192", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎", "ヤマダ タロウ様 頭部CT", False, id="katakana-widths"),
        pytest.param("ISO_IR 192", "Yamada^Tarou=山田^太郎", "ＹＡＭＡＤＡ様 頭部", False, id="fullwidth-latin"),
    ],
)
def test_description_repeating_a_name_part_fixed(
    deid_stack: RunningStack,
    tmp_path: Path,
    charset: str,
    name: str,
    description: str,
    kept: bool,
) -> None:
    """A description repeats the patient's name when a name part is one of its words (docs/phi.md: whole-word,
    case-insensitive). Only ASCII letters counted as word characters, so a name part of two Cyrillic, Greek or
    accented Latin letters was "repeated" by any word holding them: a Russian clinic's "Поликлиника КТ" for a
    patient Ли, a German "Maßnahme" for a patient Ma, were emptied by de-identification (a finding under
    ``cleanDescOpt``: rejected or quarantined under a policy that does not de-identify)."""
    codec = python_encoding[charset]
    values = {"PatientName": name.encode(codec), "StudyDescription": description.encode(codec)}
    ct = with_text(tmp_path / "ct", charset, values)
    metadata = stored_metadata(deid_stack, ct)
    assert metadata["00080005"] == {"vr": "CS", "Value": [charset]}
    assert "Value" not in metadata["00100010"]  # the name itself is always emptied (Z)
    if kept:
        assert metadata["00081030"] == {"vr": "LO", "Value": [description]}
    else:
        assert metadata.get("00081030", {"vr": "LO"}) == {"vr": "LO"}


@pytest.fixture(scope="module")
def latin1_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack holding one study of a patient Müller, written in ISO_IR 100."""
    folder = tmp_path_factory.mktemp("charsets-latin1")
    values = {"PatientName": "Müller^Jürgen".encode("latin-1"), "StudyDescription": "Schädel nativ".encode("latin-1")}
    ct = with_text(folder / "ct", "ISO_IR 100", values)
    running = start_stack(folder / "stack", "file", None)
    try:
        answer = running.stow([ct])
        assert answer.status_code == 200, answer.text
        running.uploaded["study"] = pydicom.dcmread(ct).StudyInstanceUID
        yield running
    finally:
        running.stack.stop()


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("PatientName=M%FCller*", "PatientName"),  # ISO-8859-1, as Java's URLEncoder.encode(s, "ISO-8859-1") writes
        ("StudyDescription=Sch%E4del*", "StudyDescription"),
        ("PatientName=%CC%FE%EA*", "PatientName"),  # windows-1251 "Люк*"
        ("includefield=00100010&PatientName=%C3", "PatientName"),  # a UTF-8 sequence cut short
        ("Patient%FCName=x", "a query parameter's name"),
    ],
)
def test_a_percent_encoded_value_that_is_no_utf8_is_a_400_fixed(
    latin1_stack: RunningStack, query: str, name: str
) -> None:
    """PS3.18 8.3.1 and RFC 3986 3.4: a query's characters are UTF-8, percent-encoded. A raw byte that is not UTF-8
    was already a JSON 400; the same byte percent-encoded was read as U+FFFD, so `PatientName=M%FCller*` (a client
    that percent-encodes ISO-8859-1) was a 200 with no match for a patient Müller who is stored: an empty answer
    the client took for "no such patient". It is the same 400, naming the parameter (never its value)."""
    answer = requests.get(f"{latin1_stack.url}/dicomweb/studies?{query}", headers=latin1_stack.api_headers, timeout=30)
    assert (answer.status_code, answer.headers["Content-Type"]) == (400, "application/json"), answer.text
    assert answer.json() == {
        "error": "bad_request",
        "detail": f"{name} is not UTF-8 once its %XX escapes are decoded (percent-encode the value's UTF-8 bytes)",
    }


def test_percent_encoded_utf8_finds_the_latin1_study(latin1_stack: RunningStack) -> None:
    """The same searches in UTF-8 find the study, case-insensitively (docs/catalog.md), and answer its values in
    UTF-8 as pydicom decodes the ISO_IR 100 file."""
    for query in ("PatientName=M%C3%BCller*", "PatientName=M%C3%9CLLER%5EJ%C3%9CRGEN", "StudyDescription=Sch%C3%A4*"):
        answer = requests.get(
            f"{latin1_stack.url}/dicomweb/studies?{query}&includefield=00081030",
            headers=latin1_stack.api_headers,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        (study,) = answer.json()
        assert study["0020000D"]["Value"] == [latin1_stack.uploaded["study"]]
        assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}
        assert study["00081030"] == {"vr": "LO", "Value": ["Schädel nativ"]}


# Names as modalities and RIS bridges write them: with their trailing empty components spelled out (PS3.5 6.2:
# "Trailing null components and their delimiters may be omitted", so each is the name without them), in capitals
PADDED_NAMES = {
    "doe": (None, b"DOE^JOHN^^^", b"Smith^Anna^^Dr^"),
    "strasse": ("ISO_IR 192", "Straße^Jörg^^^".encode(), b""),
    "roe": (None, b"Roe^Jane", b""),
    "greek": ("ISO_IR 126", "ΔΙΟΝΥΣΙΟΣ^ΝΙΚΟΣ".encode("iso8859_7"), b""),
    "turkish": ("ISO_IR 148", "YILDIZ^İBRAHİM".encode("iso8859_9"), b""),
    "latin9": ("ISO_IR 203", "ŠIMKOVÁ^ŽOFIE".encode("iso8859_15"), b""),
}


@pytest.fixture(scope="module")
def padded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    folder = tmp_path_factory.mktemp("charsets-padded")
    files = {}
    for key, (charset, name, physician) in PADDED_NAMES.items():
        values = {"PatientName": name, **({"ReferringPhysicianName": physician} if physician else {})}
        files[key] = with_text(folder / key, charset, values)
    running = start_stack(folder / "stack", "file", None)
    try:
        answer = running.stow(list(files.values()))
        assert answer.status_code == 200, answer.text
        running.uploaded.update({key: pydicom.dcmread(path).StudyInstanceUID for key, path in files.items()})
        yield running
    finally:
        running.stack.stop()


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("PatientName=DOE%5EJOHN", ["doe"]),
        ("PatientName=doe%5Ejohn%5E", ["doe"]),
        ("PatientName=Stra%C3%9Fe%5EJ%C3%B6rg", ["strasse"]),
        ("PatientName=STRA%C3%9FE%5EJ%C3%96RG%5E%5E", ["strasse"]),
        ("PatientName=Roe%5EJane%5E%5E%5E", ["roe"]),  # the query spelled out, the file not
        ("ReferringPhysicianName=Smith%5EAnna%5E%5EDr", ["doe"]),
        # a name is all its components: the family name alone, or another given name, is another name
        ("PatientName=DOE", []),
        ("PatientName=DOE%5EJOHN%5EX", []),
        # wildcards alike (a trailing * always covered the delimiters)
        ("PatientName=*%5EJOHN", ["doe"]),
        ("PatientName=D?E%5EJOHN", ["doe"]),
        ("PatientName=DOE%5EJ*", ["doe"]),
    ],
)
def test_a_name_matches_without_its_trailing_delimiters_fixed(
    padded_stack: RunningStack, query: str, found: list[str]
) -> None:
    """A study whose Patient's Name a modality wrote `DOE^JOHN^^^` was not found by `PatientName=DOE^JOHN`, the name
    as a viewer shows it and a user types it (nor `Straße^Jörg^^^` by `Straße^Jörg`), and a query spelled out
    found no name stored without them. PS3.5 6.2 makes trailing empty components and their delimiters optional:
    both spellings are one name, and exact matching finds it in either."""
    answer = requests.get(f"{padded_stack.url}/dicomweb/studies?{query}", headers=padded_stack.api_headers, timeout=30)
    assert answer.status_code == 200, answer.text
    uids = {padded_stack.uploaded[key]: key for key in PADDED_NAMES}
    assert sorted(uids[study["0020000D"]["Value"][0]] for study in answer.json()) == found
    for study in answer.json():  # the answer keeps the name as the file wrote it
        key = uids[study["0020000D"]["Value"][0]]
        charset, name, _ = PADDED_NAMES[key]
        assert study["00100010"]["Value"] == [{"Alphabetic": name.decode(python_encoding[charset or ""])}]


def search_by_name(stack: RunningStack, query: str) -> requests.Response:
    """The studies QIDO finds for ``PatientName=query`` (a 200)."""
    answer = requests.get(
        f"{stack.url}/dicomweb/studies", params={"PatientName": query}, headers=stack.api_headers, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("Διονυσιος^Νικος", id="as-typed"),
        pytest.param("διονυσιος^νικος", id="small"),
        pytest.param("ΔΙΟΝΥΣΙΟΣ^ΝΙΚΟΣ", id="capitals"),
        pytest.param("Διονυσιος*", id="prefix"),
        pytest.param("*ος^Νικος", id="suffix"),
    ],
)
def test_a_greek_name_in_capitals_is_found_in_small_letters_fixed(padded_stack: RunningStack, query: str) -> None:
    """Greek ends a word in small letters with ς, not σ: `ΔΙΟΝΥΣΙΟΣ^ΝΙΚΟΣ`, a name in capitals as Greek RIS write
    it, is `Διονυσιος^Νικος` as a user types it. Lower-casing the stored name gave `διονυσιοσ^νικος` (PostgreSQL
    always, Python before the "^"), the query `διονυσιος^νικος`: no match, where `MÜLLER` finds `Müller`."""
    answer = search_by_name(padded_stack, query)
    assert [study["0020000D"]["Value"][0] for study in answer.json()] == [padded_stack.uploaded["greek"]]
    assert answer.json()[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "ΔΙΟΝΥΣΙΟΣ^ΝΙΚΟΣ"}]}


@pytest.mark.parametrize("query", ["Yildiz^İbrahim", "YILDIZ^İBRAHİM", "*^İbrahim", "Yildiz^İ*"])
def test_a_turkish_name_in_capitals_is_found_as_typed_fixed(padded_stack: RunningStack, query: str) -> None:
    """`İ` (Turkish capital dotted I, ISO_IR 148) lower-cased by Python is `i̇`, an i and a combining dot above:
    `YILDIZ^İBRAHİM` in capitals was `yildiz^i̇brahi̇m` to the catalog, `Yildiz^İbrahim` as typed `yildiz^i̇brahim`,
    and no match; PostgreSQL's lower() made it `i`, so the two databases disagreed. Both fold it to `i`."""
    answer = search_by_name(padded_stack, query)
    assert [study["0020000D"]["Value"][0] for study in answer.json()] == [padded_stack.uploaded["turkish"]]


@pytest.mark.parametrize("query", ["Šimková^Žofie", "ŠIMKOVÁ^ŽOFIE", "šimk*", "*^Žofie"])
def test_a_latin9_name_is_found_as_typed_fixed(padded_stack: RunningStack, query: str) -> None:
    """ISO_IR 203 (Latin alphabet No. 9, ISO 8859-15: Š, Ž, Œ and €) was decoded as the default repertoire, so
    `ŠIMKOVÁ^ŽOFIE` was stored and shown as `¦IMKOVÁ^´OFIE` and no query typed with Š found it."""
    answer = search_by_name(padded_stack, query)
    assert [study["0020000D"]["Value"][0] for study in answer.json()] == [padded_stack.uploaded["latin9"]]
    assert answer.json()[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "ŠIMKOVÁ^ŽOFIE"}]}
