"""Issue 4 through the real stack on both backends: STOW-RS responses, idempotency, broken input, storage outage
mid-upload, bounded memory for a 2 GB instance, and the upload CLI."""

from __future__ import annotations

import email
import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pydicom
import pytest
import requests

from gateway.dicomweb.multipart import encode_multipart
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, gunicorn_peak_growth_mb, padded_file, start_stack
from tests.fixtures.servers import start_moto


def referenced(answer: requests.Response) -> list[dict[str, Any]]:
    values: list[dict[str, Any]] = answer.json().get("00081199", {}).get("Value", [])
    return values


def failed(answer: requests.Response) -> list[dict[str, Any]]:
    values: list[dict[str, Any]] = answer.json().get("00081198", {}).get("Value", [])
    return values


def test_response_and_idempotent_retry(stack: RunningStack, tmp_path: Path) -> None:
    files = make_series(tmp_path / "a", modality="CT", slices=2, seed=51, clean=True)
    study, series, sop = uids_of(files[0])
    first = stack.stow(files)
    assert first.status_code == 200
    assert first.headers["Content-Type"] == "application/dicom+json"
    body = first.json()
    assert body["00081190"]["Value"] == [f"{stack.url}/dicomweb/studies/{study}"]  # on DICOMGW_PUBLIC_URL
    refs = referenced(first)
    assert len(refs) == 2 and not failed(first)
    ref = next(r for r in refs if r["00081155"]["Value"] == [sop])
    assert ref["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert ref["00081190"]["Value"] == [f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"]
    again = stack.stow(files)  # same bytes: success, nothing duplicated
    assert again.status_code == 200
    assert len(referenced(again)) == 2
    token = stack.issue([study])["token"]
    assert len(requests.get(f"{stack.root(token)}/studies/{study}/instances", timeout=10).json()) == 2


def test_same_uid_different_bytes_is_refused(stack: RunningStack, tmp_path: Path) -> None:
    [path] = make_series(tmp_path / "b", modality="CT", slices=1, seed=52, clean=True)
    assert stack.stow([path]).status_code == 200
    ds = pydicom.dcmread(path)
    ds.InstanceNumber = 99
    ds.save_as(path)
    answer = stack.stow([path])
    assert answer.status_code == 409
    [failure] = failed(answer)
    assert failure["00081197"]["Value"] == [0x0111]
    assert failure["00081155"]["Value"] == [uids_of(path)[2]]


def test_one_request_naming_an_instance_twice_gets_a_duplicate_or_a_conflict(
    stack: RunningStack, tmp_path: Path
) -> None:
    """A client that sends one file twice in one request (its parts are ingested concurrently) gets what a second
    request would get: the same bytes are a success for both parts, other bytes a 0x0111 for one of them. Never
    0xA700 "retry shortly", which a retry of the same body meets again."""
    [path] = make_series(tmp_path / "twice", modality="CT", slices=1, rows=32, columns=32, seed=192, clean=True)
    study, series, sop = uids_of(path)
    same = stack.stow([path, path])
    assert same.status_code == 200, same.text
    assert [r["00081155"]["Value"] for r in referenced(same)] == [[sop], [sop]] and not failed(same)

    [path2] = make_series(tmp_path / "twice2", modality="CT", slices=1, rows=32, columns=32, seed=193, clean=True)
    sop2 = uids_of(path2)[2]
    ds2 = pydicom.dcmread(path2)
    ds2.InstanceNumber = 77
    other2 = tmp_path / "other2.dcm"
    ds2.save_as(other2)
    differ = stack.stow([path2, other2])
    assert differ.status_code == 202, differ.text
    assert [r["00081155"]["Value"] for r in referenced(differ)] == [[sop2]]
    [failure] = failed(differ)
    assert failure["00081155"]["Value"] == [sop2]
    assert failure["00081197"]["Value"] == [0x0111]
    stored = requests.get(
        f"{stack.url}/dicomweb/studies/{uids_of(path2)[0]}/series/{uids_of(path2)[1]}/instances/{sop2}",
        headers={**stack.api_headers, "Accept": "application/dicom; transfer-syntax=*"},
        timeout=30,
    )
    assert stored.status_code == 200
    assert stored.content in (path2.read_bytes(), other2.read_bytes())
    listed = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/instances", headers=stack.api_headers, timeout=30
    ).json()
    assert [item["00080018"]["Value"] for item in listed] == [[sop]]


def test_mixed_request_is_202_and_non_dicom_is_a_failure(stack: RunningStack, tmp_path: Path) -> None:
    [good] = make_series(tmp_path / "c", modality="CT", slices=1, seed=53, clean=True)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all" * 100)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:600])
    answer = stack.stow([good, junk, truncated])
    assert answer.status_code == 202
    assert len(referenced(answer)) == 1
    reasons = sorted(f["00081197"]["Value"][0] for f in failed(answer))
    assert reasons == [0xC000, 0xC000]
    # PS3.18 10.5.3: a failure item names the instance; a truncated file still names its UIDs, junk names none
    by_reason = {f["00091001"]["Value"][0]: f for f in failed(answer)}
    cut = next(f for text, f in by_reason.items() if not text.startswith("not a DICOM"))
    assert cut["00081155"]["Value"] == [uids_of(good)[2]]
    assert cut["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    junk_item = next(f for text, f in by_reason.items() if text.startswith("not a DICOM"))
    assert "00081155" not in junk_item and "00081150" not in junk_item


def test_an_empty_part_is_named_empty_and_the_rest_stored(stack: RunningStack, tmp_path: Path) -> None:
    """A part with nothing in it (a browser client's file that failed to read, appended as an empty Blob) was
    failed as "not a DICOM Part 10 file (no 'DICM' prefix after the 128-byte preamble)", which sent its user looking
    at the file's format: it now says the part is empty. The other parts are stored."""
    [good] = make_series(tmp_path, modality="CT", slices=1, rows=32, columns=32, seed=2704, clean=True)
    boundary = "stow-empty-2704"
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = head + b"\r\n" + head + good.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    content_type = f"multipart/related; type=application/dicom; boundary={boundary}"
    answer = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=body,
        headers={**stack.api_headers, "Content-Type": content_type},
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    assert [r["00081155"]["Value"] for r in referenced(answer)] == [[uids_of(good)[2]]]
    [empty] = failed(answer)
    assert empty == {
        "00081197": {"vr": "US", "Value": [0xC000]},
        "00090010": {"vr": "LO", "Value": ["DICOMGW"]},
        "00091001": {"vr": "LT", "Value": ["not a DICOM Part 10 file (it is empty: 0 bytes)"]},
        "00091002": {"vr": "CS", "Value": ["FAILED"]},
    }


def test_a_data_set_naming_an_element_twice_is_refused_and_the_rest_stored(
    stack: RunningStack, tmp_path: Path
) -> None:
    """PS3.5 7.1: an element appears at most once in a data set. Readers disagree on a file that names one twice
    (pydicom keeps the last, DCMTK the first), so a viewer could show a name the PHI scan never saw: refused with
    a reason naming the tag, never stored; the other parts of the request are."""
    good, other = make_series(tmp_path / "d", modality="CT", slices=2, rows=32, columns=32, seed=191, clean=True)
    data = other.read_bytes()
    name = struct.pack("<HH", 0x0010, 0x0010) + b"PN"
    at = data.index(name)
    length = struct.unpack_from("<H", data, at + 6)[0]
    twice = tmp_path / "twice.dcm"
    twice.write_bytes(data[: at + 8 + length] + name + struct.pack("<H", 8) + b"EVIL^EVE" + data[at + 8 + length :])
    answer = stack.stow([good, twice])
    assert answer.status_code == 202
    [stored] = referenced(answer)
    assert stored["00081155"]["Value"] == [uids_of(good)[2]]
    [failure] = failed(answer)
    assert failure["00081197"]["Value"] == [0xC000]
    assert failure["00091001"]["Value"] == ["element (0010,0010) appears twice in one data set"]
    study, series, sop = uids_of(other)
    found = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances",
        params={"SOPInstanceUID": sop},
        headers=stack.api_headers,
        timeout=30,
    )
    assert found.status_code == 204 or found.json() == []


@pytest.mark.parametrize("declared", [100, 0x7FFFFFFF])
def test_a_wrong_file_meta_group_length_is_refused(stack: RunningStack, tmp_path: Path, declared: int) -> None:
    """PS3.10 7.1: (0002,0000) counts the file meta elements after it. pydicom ignores a wrong value, DCMTK moves
    elements past it into the data set (or gives up): the readers disagree on the file, so it is refused, as a
    data set naming an element twice is. It was stored and served as is."""
    [path] = make_series(tmp_path / "gl", modality="CT", slices=1, rows=16, columns=16, seed=196, clean=True)
    data = bytearray(path.read_bytes())
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, first after the DICM prefix
    actual = struct.unpack_from("<I", data, 140)[0]
    struct.pack_into("<I", data, 140, declared)
    path.write_bytes(bytes(data))
    answer = stack.stow([path])
    assert answer.status_code == 409
    [failure] = failed(answer)
    assert failure["00081197"]["Value"] == [0xC000]
    assert failure["00081155"]["Value"] == [uids_of(path)[2]]
    assert failure["00091001"]["Value"] == [
        f"the File Meta Information Group Length (0002,0000) is {declared} bytes, but the file meta elements after "
        f"it take {actual}"
    ]


@pytest.mark.parametrize("stack", ["file"], indirect=True)  # refused before storage: one backend is enough
def test_a_refused_file_is_named_from_its_first_elements_only(stack: RunningStack, tmp_path: Path) -> None:
    """A refused file's failure item names it (PS3.18 10.5.3) from the data set up to its Series Instance UID, never
    further: pydicom read the whole rest of it. Sequences nested 5000 deep after the UIDs raised its RecursionError,
    so a file whose meta has no Media Storage SOP Instance UID was named by nothing; and a 32 KB deflated upload of
    32 MB of zero bytes (a deflate bomb: 200 KB of it held a worker for two minutes) was inflated whole and parsed
    as four million elements."""
    [path] = make_series(tmp_path / "named", modality="CT", slices=1, rows=16, columns=16, seed=197, clean=True)
    study, series, sop = uids_of(path)
    data = path.read_bytes()
    group_end = 144 + struct.unpack_from("<I", data, 140)[0]
    meta = pydicom.filereader.read_file_meta_info(path)
    del meta.MediaStorageSOPInstanceUID
    meta_bytes = pydicom.filebase.DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(meta_bytes, meta, enforce_standard=False)
    after_series = data.index(b"\x20\x00\x10\x00", group_end)  # (0020,0010) Study ID follows the Series UID
    nested = (b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * 5000
    path.write_bytes(data[:128] + b"DICM" + meta_bytes.getvalue() + data[group_end:after_series] + nested)
    meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    meta_bytes = pydicom.filebase.DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(meta_bytes, meta, enforce_standard=False)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = deflater.compress(data[group_end:after_series] + bytes(32 << 20)) + deflater.flush()
    (tmp_path / "bomb.dcm").write_bytes(data[:128] + b"DICM" + meta_bytes.getvalue() + bomb)
    answer = stack.stow([path, tmp_path / "bomb.dcm"])
    assert answer.status_code == 409, answer.text
    assert [(item["00081197"]["Value"], item["00081155"]["Value"]) for item in failed(answer)] == [
        ([0xC000], [sop]),
        ([0xC000], [sop]),
    ]
    assert requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata",
        headers=stack.api_headers,
        timeout=30,
    ).status_code == 404


def test_study_in_url_must_match(stack: RunningStack, tmp_path: Path) -> None:
    """Nothing stored, no study to retrieve: the top-level RetrieveURL is empty (it named /studies/1.2.3.4, which
    received nothing and answers 404), in JSON and in XML."""
    [path] = make_series(tmp_path / "d", modality="CT", slices=1, seed=54, clean=True)
    from gateway.dicomweb.multipart import encode_multipart

    body = encode_multipart([path])
    answer = requests.post(
        f"{stack.url}/dicomweb/studies/1.2.3.4",
        data=body,
        headers={**stack.api_headers, "Content-Type": body.content_type},
        timeout=60,
    )
    assert answer.status_code == 409
    assert failed(answer)[0]["00081197"]["Value"] == [0xC409]
    assert answer.json()["00081190"] == {"vr": "UR"}
    assert "00081199" not in answer.json()
    as_xml = requests.post(
        f"{stack.url}/dicomweb/studies/1.2.3.4",
        data=body,
        headers={**stack.api_headers, "Content-Type": body.content_type, "Accept": "application/dicom+xml"},
        timeout=60,
    )
    assert as_xml.status_code == 409
    assert b'<DicomAttribute tag="00081190" vr="UR" keyword="RetrieveURL" />' in as_xml.content
    assert b"1.2.3.4" not in as_xml.content


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("multipart/related; type=application/dicom", b"--x\r\n\r\nabc\r\n--x--\r\n", 400),  # no boundary
        (
            'multipart/related; type="application/dicom"; boundary=x',
            b"--x\r\nContent-Type: application/dicom\r\n\r\nDICM",
            400,
        ),
        ("multipart/related; type=application/dicom; boundary=x", b"no delimiter at all", 400),
        ("multipart/related; type=application/dicom; boundary=x", b"--x--\r\n", 400),  # no part: say so
        ("multipart/related; type=image/png; boundary=x", b"--x--\r\n", 415),
        ("text/plain", b"hello", 415),
        # two boundaries are two readings of one body (the first silently won)
        ("multipart/related; type=application/dicom; boundary=x; boundary=y", b"--x--\r\n", 415),
    ],
)
def test_broken_multipart_gives_a_clear_error(stack: RunningStack, content_type: str, body: bytes, status: int) -> None:
    answer = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=body,
        headers={**stack.api_headers, "Content-Type": content_type},
        timeout=30,
    )
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert set(answer.json()) == {"error", "detail"}
    assert answer.json()["error"] in ("malformed_multipart", "unsupported_media_type")


def test_body_broken_after_a_stored_part_lists_what_was_stored(stack: RunningStack, tmp_path: Path) -> None:
    """A multipart body that breaks after its first part arrived whole (a client gone, a proxy cutting it): that
    part is stored, so the answer is no 400 (PS3.18 Table 10.5.3-1: nothing stored) but a 202 naming it, the
    broken rest as a failed item (0xC000) and a Warning; the retry of the whole request stores the rest."""
    first, second = make_series(tmp_path / "broken", modality="CT", slices=2, seed=171, clean=True)
    part = b"--x\r\nContent-Type: application/dicom\r\n\r\n"
    whole = first.read_bytes()
    body = part + whole + b"\r\n" + part + second.read_bytes()[:300]  # no close delimiter: the body ends in a part
    headers = {**stack.api_headers, "Content-Type": "multipart/related; type=application/dicom; boundary=x"}
    answer = requests.post(f"{stack.url}/dicomweb/studies", data=body, headers=headers, timeout=60)
    assert answer.status_code == 202, answer.text
    assert answer.headers["Content-Type"] == "application/dicom+json"
    study, series, sop = uids_of(first)
    [stored] = referenced(answer)
    assert stored["00081155"]["Value"] == [sop] and "00081196" not in stored
    [rest] = failed(answer)
    assert rest["00081197"] == {"vr": "US", "Value": [0xC000]} and "00081155" not in rest
    assert rest["00091001"]["Value"][0].startswith("the rest of the body: ")
    assert answer.headers["Warning"] == (
        f'299 {stack.url}/dicomweb: "the body broke after 1 stored: {rest["00091001"]["Value"][0][22:]}"'
    )
    instance = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    got = requests.get(instance, headers={**stack.api_headers, "Accept": "application/dicom"}, timeout=30)
    assert got.status_code == 200 and got.content == whole
    retry = part + whole + b"\r\n" + part + second.read_bytes() + b"\r\n--x--\r\n"
    again = requests.post(f"{stack.url}/dicomweb/studies", data=retry, headers=headers, timeout=60)
    assert again.status_code == 200, again.text
    assert [o["00091002"]["Value"][0] for o in referenced(again)] == ["DUPLICATE", "STORED"]
    # broken before any part is whole: nothing stored, the 400 it always was
    cut = requests.post(f"{stack.url}/dicomweb/studies", data=part + whole[:300], headers=headers, timeout=60)
    assert cut.status_code == 400 and cut.json()["error"] == "malformed_multipart"


@pytest.mark.parametrize("content_type", ["application/dicom", "multipart/related; type=application/dicom; boundary=x"])
def test_compressed_body_is_a_clear_415(stack: RunningStack, tmp_path: Path, content_type: str) -> None:
    """A body with a Content-Encoding (gzip) is refused as such (RFC 9110 15.5.16), not read as DICOM (a 409 "not a
    DICOM Part 10 file") or as multipart (a 400 "no opening boundary")."""
    [file] = make_series(tmp_path / "gz", modality="CT", slices=1, seed=167, clean=True)
    data = file.read_bytes()
    if content_type.startswith("multipart"):
        data = b"--x\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--x--\r\n"
    answer = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=gzip.compress(data),
        headers={**stack.api_headers, "Content-Type": content_type, "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert answer.status_code == 415, answer.text
    assert answer.headers["Accept-Encoding"] == "identity"  # RFC 9110 15.5.16: the coding it does accept
    assert answer.json() == {
        "error": "unsupported_media_type",
        "detail": "Content-Encoding gzip is not supported: send the body uncompressed",
    }


def stow_one_accepting(stack: RunningStack, tmp_path: Path, seed: int, accept: str) -> tuple[Path, requests.Response]:
    """A one-instance multipart STOW sent with ``accept``: the file and the answer."""
    [path] = make_series(tmp_path / f"accept-{seed}", modality="CT", slices=1, seed=seed, clean=True)
    body = b"--x\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--x--\r\n"
    headers = {
        **stack.api_headers,
        "Content-Type": "multipart/related; type=application/dicom; boundary=x",
        "Accept": accept,
    }
    return path, requests.post(f"{stack.url}/dicomweb/studies", data=body, headers=headers, timeout=30)


@pytest.mark.parametrize("accept", ["application/dicom+xml", 'multipart/related; type="application/dicom+xml"'])
def test_stow_answers_xml_to_a_client_that_asks_for_it(stack: RunningStack, tmp_path: Path, accept: str) -> None:
    """PS3.18 10.5.3: the Store Instances Response as PS3.19 Native DICOM Model XML for a client that asks for it,
    as dcm4che's stowrs does by default (``Accept: application/dicom+xml``); single part or the one part of a
    multipart/related answer, as the Accept says."""
    from xml.etree import ElementTree

    path, answer = stow_one_accepting(stack, tmp_path, 178 if accept.startswith("application") else 179, accept)
    study, series, sop = uids_of(path)
    assert answer.status_code == 200, answer.text
    xml = answer.content
    if accept.startswith("multipart"):
        content_type = answer.headers["Content-Type"]
        assert content_type.startswith('multipart/related; type="application/dicom+xml"; boundary=')
        message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + answer.content)
        [part] = message.get_payload()
        assert part["Content-Type"] == "application/dicom+xml"
        xml = part.get_payload(decode=True)
    else:
        assert answer.headers["Content-Type"] == "application/dicom+xml; charset=utf-8"
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    root = ElementTree.fromstring(xml)
    assert root.tag == "{http://dicom.nema.org/PS3.19/models/NativeDICOM}NativeDicomModel"
    study_url = root.find("d:DicomAttribute[@keyword='RetrieveURL']/d:Value", ns)
    assert study_url is not None and study_url.text == f"{stack.url}/dicomweb/studies/{study}"
    [item] = root.findall("d:DicomAttribute[@tag='00081199']/d:Item", ns)
    values = {a.get("keyword") or a.get("tag"): a.findtext("d:Value", namespaces=ns) for a in item}
    assert values["ReferencedSOPInstanceUID"] == sop
    assert values["RetrieveURL"] == f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    # (0009,1002) in XML: named by its creator and its number in the block, as DCMTK's dcm2xml writes private tags
    outcome = item.find("d:DicomAttribute[@tag='00090002'][@privateCreator='DICOMGW']/d:Value", ns)
    assert outcome is not None and outcome.text == "STORED"
    instance = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    stored = requests.get(instance, headers={**stack.api_headers, "Accept": "application/dicom"}, timeout=30)
    assert stored.status_code == 200 and stored.content == path.read_bytes()


def test_stow_answers_application_json_to_a_client_that_refuses_dicom_json(stack: RunningStack, tmp_path: Path) -> None:
    """``application/json`` is negotiated for a client that refuses application/dicom+json with q=0; the response
    now says so (it said application/dicom+json, which the client had refused), with the same DICOM JSON body."""
    path, answer = stow_one_accepting(stack, tmp_path, 183, "application/dicom+json;q=0, application/json")
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/json"), answer.text
    [item] = referenced(answer)
    assert item["00081155"]["Value"] == [uids_of(path)[2]]


@pytest.mark.parametrize("accept", ["application/dicom+json;q=0, application/dicom+xml;q=0", "text/html"])
def test_stow_for_a_client_that_takes_neither_json_nor_xml_is_a_406_before_anything_is_stored(
    stack: RunningStack, tmp_path: Path, accept: str
) -> None:
    """A client that accepts neither representation got JSON and its instance stored; now its 406 comes first."""
    path, answer = stow_one_accepting(stack, tmp_path, 173, accept)
    study, series, sop = uids_of(path)
    assert answer.status_code == 406, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == "not_acceptable"
    instance = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    stored = requests.get(instance, headers={**stack.api_headers, "Accept": "application/dicom"}, timeout=30)
    assert stored.status_code == 404


def test_stow_body_shapes_hand_made_clients_send(stack: RunningStack, tmp_path: Path) -> None:
    """An empty application/dicom body is a 400 saying so (it was a 409 naming nothing); a part without its own
    Content-Type is read as the body's type and stored (it was refused as "not application/dicom"); a body written
    with bare LF line ends is a 400 that says so (it said "header line longer than 1024 bytes")."""
    headers = {**stack.api_headers, "Content-Type": "application/dicom"}
    empty = requests.post(f"{stack.url}/dicomweb/studies", data=b"", headers=headers, timeout=30)
    assert empty.status_code == 400, empty.text
    assert empty.json() == {"error": "bad_request", "detail": "the body is empty: send one DICOM Part 10 file"}

    [path] = make_series(tmp_path / "bare", modality="CT", slices=1, seed=174, clean=True)
    multipart = {**stack.api_headers, "Content-Type": "multipart/related; type=application/dicom; boundary=x"}
    bare = b"--x\r\n\r\n" + path.read_bytes() + b"\r\n--x--\r\n"
    answer = requests.post(f"{stack.url}/dicomweb/studies", data=bare, headers=multipart, timeout=30)
    assert answer.status_code == 200, answer.text
    assert referenced(answer)[0]["00081155"]["Value"] == [uids_of(path)[2]]

    lf = b"--x\nContent-Type: application/dicom\n\n" + path.read_bytes() + b"\n--x--\n"
    answer = requests.post(f"{stack.url}/dicomweb/studies", data=lf, headers=multipart, timeout=30)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "malformed_multipart",
        "detail": "a boundary delimiter line ends in a bare LF: multipart lines end in CRLF",
    }


def test_a_part_header_in_latin_1_is_opaque_text_and_the_part_is_stored(stack: RunningStack, tmp_path: Path) -> None:
    """A part whose headers hold a byte that is no UTF-8 (a file name in ISO-8859-1, as Java's Apache HttpClient
    writes it in its browser-compatible mode with that charset) made the whole STOW a 400 "part 1: header is not
    UTF-8", for a header the gateway never reads; Orthanc 1.10 stores the same body. RFC 9110 5.5: such octets are
    opaque data; they are read as ISO-8859-1 and the part is stored. A Content-Type that is no media type is still
    the 400 it was."""
    files = make_series(tmp_path / "latin1", modality="CT", slices=2, rows=32, columns=32, seed=2652, clean=True)
    multipart = {
        **stack.api_headers,
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=x',
        "Accept": "application/dicom+json",
    }
    head = 'Content-Type: application/dicom\r\nContent-Disposition: attachment; filename="Müller.dcm"\r\n\r\n'
    body = b"".join(b"--x\r\n" + head.encode("latin-1") + path.read_bytes() + b"\r\n" for path in files)
    answer = requests.post(f"{stack.url}/dicomweb/studies", data=body + b"--x--\r\n", headers=multipart, timeout=30)
    assert answer.status_code == 200, answer.text
    assert [item["00081155"]["Value"] for item in referenced(answer)] == [[uids_of(p)[2]] for p in files]

    bad_type = b"--x\r\nContent-Type: application/dic\xf6m\r\n\r\n" + files[0].read_bytes() + b"\r\n--x--\r\n"
    answer = requests.post(f"{stack.url}/dicomweb/studies", data=bad_type, headers=multipart, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "error": "malformed_multipart",
        "detail": "part 1: Content-Type application/dic: expected ';' at offset 15",
    }


@pytest.mark.parametrize("stack", ["file"], indirect=True)
def test_a_stow_of_more_parts_than_a_request_takes_keeps_what_it_stored_and_names_the_rest(
    stack: RunningStack, tmp_path: Path
) -> None:
    """A multipart STOW of tiny parts: each part's result was held until the answer, with no bound on their number,
    so 660 KB of 60,000 one-byte parts held a worker for a minute and took it from 136 to 350 MB (a body of
    DICOMGW_MAX_BODY, 8 GB, of them every worker's memory). A request takes 10,000 parts: what it stored before
    is answered (202) with the rest as one failed item, 0xA700 and a ``Warning``, and nothing stored is a 413."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=32, columns=32, seed=2703, clean=True)
    boundary = "stow-parts-2703"
    tiny = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nx\r\n".encode()
    close = f"--{boundary}--\r\n".encode()
    first = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
    headers = {
        **stack.api_headers,
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    rest = "more than 10000 parts in one request: send the parts from 10001 on in another"
    answer = requests.post(
        f"{stack.url}/dicomweb/studies", data=first + tiny * 10_005 + close, headers=headers, timeout=300
    )
    assert answer.status_code == 202, answer.text[:500]
    [stored] = referenced(answer)
    assert stored["00081155"]["Value"] == [uids_of(path)[2]]
    failures = failed(answer)
    assert len(failures) == 10_000  # parts 2 to 10,000 (no DICOM), then the rest
    assert {f["00081197"]["Value"][0] for f in failures[:-1]} == {0xC000}
    assert failures[-1]["00081197"]["Value"] == [0xA700]
    assert failures[-1]["00091001"]["Value"] == [f"the rest of the body: {rest}"]
    assert answer.headers["Warning"] == f'299 {stack.url}/dicomweb: "the body broke after 1 stored: {rest}"'
    refused = requests.post(f"{stack.url}/dicomweb/studies", data=tiny * 10_001 + close, headers=headers, timeout=300)
    assert refused.status_code == 413 and refused.headers["Content-Type"] == "application/json"
    assert refused.json() == {"error": "payload_too_large", "detail": rest}


def test_boundary_longer_than_rfc_2046_is_accepted_up_to_a_bound(stack: RunningStack, tmp_path: Path) -> None:
    """Orthanc 1.10 sends a 73-character boundary (two UUIDs): stored. Past 200 characters: 400 JSON."""
    from gateway.dicomweb.multipart import encode_multipart

    [path] = make_series(tmp_path / "b", modality="CT", slices=1, seed=57, clean=True)
    orthanc_style = "0f8c1b0e-8d3a-4a4e-9a57-3c1f2e6b7d90-5e2d9c41-7b6a-4f08-8c3e-1a2b3c4d5e6f"
    body = encode_multipart([path], boundary=orthanc_style)
    answer = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=b"".join(body),
        headers={**stack.api_headers, "Content-Type": body.content_type, "Accept": "application/dicom+json"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert referenced(answer)[0]["00081155"]["Value"] == [uids_of(path)[2]]
    study, series, sop = uids_of(path)
    stored = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers={**stack.api_headers, "Accept": "application/dicom"},
        timeout=30,
    )
    assert stored.status_code == 200 and stored.content == path.read_bytes()

    too_long = "b" * 201
    raw = path.read_bytes()
    answer = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=b"--" + too_long.encode() + b"\r\n\r\n" + raw + b"\r\n--" + too_long.encode() + b"--\r\n",
        headers={**stack.api_headers, "Content-Type": f"multipart/related; boundary={too_long}"},
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == "malformed_multipart"
    assert "1-200 printable ASCII" in answer.json()["detail"]


def test_single_part_application_dicom(stack: RunningStack, tmp_path: Path) -> None:
    [path] = make_series(tmp_path / "e", modality="MR", slices=1, seed=55, clean=True)
    answer = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=path.read_bytes(),
        headers={**stack.api_headers, "Content-Type": "application/dicom"},
        timeout=30,
    )
    assert answer.status_code == 200
    assert referenced(answer)[0]["00081155"]["Value"] == [uids_of(path)[2]]


def test_single_part_body_cut_short_is_not_stored_and_the_retry_is(stack: RunningStack, tmp_path: Path) -> None:
    """A client that goes away in the middle of an application/dicom body: the gateway reads a short body (NGINX
    closes, gunicorn reads EOF). Cut where the file still parses (before its trailing padding here; any element
    boundary of a file without pixel data), it was stored as if whole, and the client's retry of the whole file
    was refused with 0x0111 (other bytes under that UID). Nothing is stored now, and the retry is."""
    [source] = make_series(tmp_path / "cut", modality="CT", slices=1, seed=166, clean=True)  # a study of its own
    data, cut = padded_file(source)
    parsed = urlparse(stack.url)
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {stack.stack.api_key}\r\n"
        f"Content-Type: application/dicom\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as connection:
        connection.sendall(head.encode() + data[:cut])
    retry = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=data,
        headers={**stack.api_headers, "Content-Type": "application/dicom"},
        timeout=60,
    )
    assert retry.status_code == 200, retry.text
    study, series, sop = uids_of(source)
    stored = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers={**stack.api_headers, "Accept": "application/dicom"},
        timeout=30,
    )
    assert stored.status_code == 200 and stored.content == data


def test_a_chunked_body_cut_short_is_a_clean_400_and_the_retry_stores_all(stack: RunningStack, tmp_path: Path) -> None:
    """A client that goes away in the middle of a chunked multipart body: NGINX closes the upstream connection and
    gunicorn's chunked reader raises on the missing bytes. That was an unhandled error (a traceback in the log);
    it is now a broken body like any other (400), nothing half-received is stored, and the retry stores all."""
    whole, partial = make_series(tmp_path / "chunked", modality="CT", slices=2, seed=168, clean=True)
    boundary = "dgw-test-boundary-168"
    part = f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    first = part + whole.read_bytes() + part  # a whole part and the next one's delimiter, in chunks of 64 KiB
    chunks = b"".join(
        f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        for piece in (first[i : i + 65536] for i in range(0, len(first), 65536))
    )
    cut = partial.read_bytes()[:1000]  # then a chunk announced 5,000 bytes longer than what is sent
    parsed = urlparse(stack.url)
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {stack.stack.api_key}\r\n"
        f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}\r\n'
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    log = stack.stack.gunicorn_log
    before = log.read_text(errors="replace") if log.exists() else ""
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as connection:
        connection.sendall(head.encode() + chunks + f"{len(cut) + 5000:x}\r\n".encode() + cut)
        time.sleep(0.5)  # NGINX has passed the bytes on
    study, series, sop = uids_of(partial)
    cut_instance = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata"
    stack.settle_access_log()  # the broken request has been answered and logged
    assert requests.get(cut_instance, headers=stack.api_headers, timeout=30).status_code == 404
    after = log.read_text(errors="replace") if log.exists() else ""
    assert "Traceback" not in after[len(before) :], after[len(before) :][-2000:]
    retry = stack.stow([whole, partial])
    assert retry.status_code == 200, retry.text
    assert len(referenced(retry)) == 2
    assert requests.get(cut_instance, headers=stack.api_headers, timeout=30).status_code == 200


def test_upload_cli_with_a_write_token(stack: RunningStack, tmp_path: Path) -> None:
    files = make_series(tmp_path / "cli", modality="CT", slices=3, seed=56, clean=True)
    (tmp_path / "cli" / "notes.txt").write_text("not DICOM")
    study = uids_of(files[0])[0]
    token = stack.issue([study], actions=["read", "write"])["token"]
    command = [sys.executable, "-m", "gateway.cli", "upload", str(tmp_path / "cli"), "--url", stack.root(token)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert token not in first.stdout + first.stderr
    second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0
    assert "already" in second.stdout.lower()
    listed = requests.get(f"{stack.root(token)}/studies/{study}/instances", timeout=10).json()
    assert len(listed) == 3


def test_upload_cli_names_each_broken_files_own_reason(stack: RunningStack, tmp_path: Path) -> None:
    """Two files the server cannot read, in one request: each line of the CLI's report gives that file's reason
    (the failure items name the UIDs each file claims), not both reasons for both."""
    one, two = make_series(tmp_path / "broken", modality="CT", slices=2, rows=32, columns=32, seed=194, clean=True)
    one.write_bytes(one.read_bytes()[:-100])  # truncated inside the pixel data
    ds = pydicom.dcmread(two)
    del ds.StudyInstanceUID
    ds.save_as(two)
    folder = str(tmp_path / "broken")
    command = [sys.executable, "-m", "gateway.cli", "upload", folder, "--url", f"{stack.url}/dicomweb"]
    env = {**os.environ, "DICOMGW_API_KEY": stack.stack.api_key, "COLUMNS": "400"}  # one table row a line
    ran = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert ran.returncode != 0
    lines = {name: line for line in ran.stdout.splitlines() for name in (one.name, two.name) if name in line}
    assert "truncated" in lines[one.name] and "missing" not in lines[one.name], ran.stdout
    assert "Study Instance UID (0020,000D) is missing" in lines[two.name] and "truncated" not in lines[two.name]


# -- a stack of its own: the S3 server dies mid-upload ------------------------------------------------------------


@pytest.fixture
def fragile_stack(tmp_path: Path) -> Iterator[tuple[RunningStack, Any]]:
    moto = start_moto()
    running = start_stack(tmp_path / "stack", "s3", moto)
    try:
        yield running, moto
    finally:
        running.stack.stop()
        moto.stop()


def test_storage_outage_mid_upload_leaves_nothing_visible_and_retry_succeeds(
    fragile_stack: tuple[RunningStack, Any], tmp_path: Path
) -> None:
    running, moto = fragile_stack
    files = make_series(tmp_path / "f", modality="CT", slices=3, seed=57, clean=True)
    study = uids_of(files[0])[0]
    moto.stop()  # storage goes away
    answer = running.stow(files)
    assert answer.status_code == 503
    assert answer.json()["error"] == "storage_unavailable"
    assert answer.headers["Retry-After"] == "5"
    listed = requests.get(
        f"{running.url}/dicomweb/studies", params={"StudyInstanceUID": study}, headers=running.api_headers, timeout=10
    )
    assert listed.status_code == 200 and listed.json() == []
    # the same server comes back on the same port (moto keeps no state: recreate the bucket)
    from tests.fixtures.servers import create_bucket

    port = moto.endpoint.rsplit(":", 1)[1]
    revived = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                requests.get(moto.endpoint + "/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        create_bucket(moto.endpoint, running.stack.storage_url[len("s3://") :].split("/")[0])
        retry = running.stow(files)
        assert retry.status_code == 200
        assert len(referenced(retry)) == 3
    finally:
        revived.terminate()
        revived.wait(10)


def big_native_file(path: Path, frames: int, side: int = 1024) -> Path:
    """A native 8-bit multi-frame instance of ``frames`` MiB: header by pydicom, Pixel Data written sparse."""
    [template] = make_series(path.parent / "template", modality="CT", slices=1, seed=58, clean=True)
    ds = pydicom.dcmread(template)
    del ds.PixelData
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.58" + str(frames)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(path, enforce_file_format=True)
    length = frames * side * side
    with path.open("ab") as handle:
        handle.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, length))
        handle.truncate(handle.tell() + length)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["file"], indirect=True)  # S3 multipart upload is covered by the storage tests
def test_two_gigabyte_instance_with_bounded_memory(stack: RunningStack, tmp_path: Path) -> None:
    """A 2 GiB native multi-frame instance streams through STOW without the gateway's memory growing."""
    path = big_native_file(tmp_path / "big.dcm", frames=2048)

    def send() -> requests.Response:
        with path.open("rb") as handle:
            return requests.post(
                f"{stack.url}/dicomweb/studies",
                data=handle,
                headers={**stack.api_headers, "Content-Type": "application/dicom"},
                timeout=900,
            )

    growth, answer = gunicorn_peak_growth_mb(stack, send)
    assert answer.status_code == 200, answer.text
    print(f"gunicorn RSS grew by {growth:.0f} MB during the 2 GiB STOW")
    assert growth < 150
    study, series, sop = uids_of(path)
    token = stack.issue([study])["token"]
    frame = requests.get(
        f"{stack.root(token)}/studies/{study}/series/{series}/instances/{sop}/frames/3",
        headers={"Accept": "application/octet-stream"},
        timeout=60,
    )
    assert frame.status_code == 200
    with path.open("rb") as handle:
        ds = pydicom.dcmread(handle, stop_before_pixels=True)
        frame_bytes = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
    assert len(frame.content) == frame_bytes


def test_concurrent_uploads_of_one_new_instance_keep_the_acknowledged_bytes(
    stack: RunningStack, tmp_path: Path
) -> None:
    """Two uploads of the same new SOP Instance UID with different bytes, at the same time: whichever is
    acknowledged with 200 is exactly what is stored and served; the other fails."""
    from concurrent.futures import ThreadPoolExecutor

    [template] = make_series(tmp_path / "race", modality="CT", slices=1, seed=59, clean=True)
    study, series, _ = uids_of(template)
    token = stack.issue([study])["token"]
    for attempt in range(5):
        variants = []
        for flavour in (1, 2):
            ds = pydicom.dcmread(template)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.5900{attempt}"
            ds.InstanceNumber = flavour
            path = tmp_path / f"race-{attempt}-{flavour}.dcm"
            ds.save_as(path, enforce_file_format=True)
            variants.append(path)
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda p: stack.stow([p]), variants))
        winners = [path for path, answer in zip(variants, answers, strict=True) if answer.status_code == 200]
        assert len(winners) == 1, [a.status_code for a in answers]
        served = requests.get(
            f"{stack.root(token)}/studies/{study}/series/{series}/instances/2.25.5900{attempt}",
            headers={"Accept": "application/dicom"},
            timeout=30,
        )
        assert served.content == winners[0].read_bytes()


def test_reconcile_finds_and_repairs_a_crash_between_store_and_commit(stack: RunningStack, tmp_path: Path) -> None:
    """An object written to storage whose catalog commit never happened is invisible; reconcile registers it."""
    import json

    [path] = make_series(tmp_path / "orphan", modality="CT", slices=1, seed=62, clean=True)
    study, series, sop = uids_of(path)
    key = f"studies/{study}/series/{series}/instances/{sop}.dcm"
    stack.storage().put_file(key, path)  # what the crashed upload left behind
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not DICOM")
    stack.storage().put_file(f"studies/{study}/series/{series}/instances/2.25.62.dcm", garbage)
    token = stack.issue([study])["token"]
    instances_url = f"{stack.root(token)}/studies/{study}/series/{series}/instances"
    invisible = requests.get(instances_url, timeout=10)  # the catalog does not know the series: a JSON 404
    assert (invisible.status_code, invisible.json()["error"]) == (404, "not_found")
    env = {**os.environ, **stack.stack.gateway_env(), **stack.stack.extra_env}
    command = [sys.executable, "-m", "gateway.cli", "reconcile"]
    report = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 1, report.stderr  # orphans found, nothing changed
    assert key in json.loads(report.stdout)["orphans"]
    repaired = subprocess.run([*command, "--repair"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert repaired.returncode == 0, repaired.stderr
    result = json.loads(repaired.stdout)
    assert key in result["registered"]
    assert f"studies/{study}/series/{series}/instances/2.25.62.dcm" in result["deleted"]
    assert [i["00080018"]["Value"][0] for i in requests.get(instances_url, timeout=10).json()] == [sop]


# -- a stack of its own: the upload spool folder fails ------------------------------------------------------------


def test_spool_folder_gone_is_a_503_and_the_retry_is_stored(tmp_path: Path) -> None:
    """The folder uploads are spooled to (DICOMGW_TMP_DIR) removed under a running gateway (a temp cleaner; a
    full disk takes the same path, unit-tested in test_multipart): a JSON 503 with Retry-After for a multipart
    and a single-part body, never a 500; back in place, the same upload is stored and no spool file is left."""
    spool = tmp_path / "spool"
    spool.mkdir()
    running = start_stack(tmp_path / "var", "file", None, DICOMGW_TMP_DIR=str(spool))
    try:
        files = make_series(tmp_path / "f", modality="CT", slices=2, seed=59, clean=True)
        spool.rmdir()
        single = requests.post(
            f"{running.url}/dicomweb/studies",
            data=files[0].read_bytes(),
            headers={**running.api_headers, "Content-Type": "application/dicom"},
            timeout=60,
        )
        for answer in (running.stow(files), single):
            assert answer.status_code == 503, answer.text
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.json() == {"error": "storage_unavailable", "detail": "upload spool write failed (ENOENT)"}
            assert answer.headers["Retry-After"] == "5"
        spool.mkdir()
        retry = running.stow(files)
        assert retry.status_code == 200, retry.text
        assert len(referenced(retry)) == 2
        assert [p for p in spool.iterdir() if p.name.startswith(("stow-", "part-"))] == []
    finally:
        running.stack.stop()


def _refused_from_the_head(
    stack: RunningStack,
    head: str,
    body: bytes,
    detail: str,
    status: str = "415 Unsupported Media Type",
    code: str = "unsupported_media_type",
) -> list[str]:
    """``head`` (a STOW's request line and headers, without the blank line) is the JSON ``status`` with ``code`` and
    ``detail`` before any body: sent with ``Expect: 100-continue``, no "100 Continue" comes first; sent with its
    body, the answer keeps the connection, which then serves the next request (a 400, after which NGINX closes every
    connection, says so: ``Connection: close``). The first answer's head and body lines."""
    parsed = urlparse(stack.url)
    refusal = f'{{"error":"{code}","detail":"{detail}"}}'
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as connection:
        connection.sendall(f"{head}Expect: 100-continue\r\n\r\n".encode())
        answer = _first_answer(connection).decode()
        assert answer.startswith(f"HTTP/1.1 {status}\r\n"), answer[:200]
        assert "Content-Type: application/json" in answer.split("\r\n") and answer.endswith(refusal), answer
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as connection:
        connection.sendall(f"{head}\r\n".encode() + body)
        kept = _first_answer(connection).decode()
        assert kept.startswith(f"HTTP/1.1 {status[:3]} ") and kept.endswith(refusal), kept
        if status.startswith("400 "):
            assert "Connection: close" in kept.split("\r\n"), kept
            return answer.split("\r\n")
        assert "Connection: keep-alive" in kept.split("\r\n"), kept
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert _first_answer(connection).endswith(b'\r\n\r\n{"status":"ok"}\n')
    return answer.split("\r\n")


def _first_answer(connection: socket.socket, data: bytes = b"") -> bytes:
    """What the server sends before the client sends any body: the head of its first answer (a 100 or a final
    one), read until its blank line, and a final answer's body when it gives its length (``data``: what was
    already read of it)."""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lengths = [int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    length = lengths[0] if lengths else 0
    while len(rest) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def test_expect_100_continue_is_refused_before_any_body_is_asked_for(stack: RunningStack, tmp_path: Path) -> None:
    """A STOW sent with ``Expect: 100-continue`` and a credential NGINX refuses got "100 Continue" first, then the
    401 or 403: the client sent its whole body for nothing. The refusal now comes first, alone; an allowed upload
    still gets its 100 and is stored."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=32, columns=32, seed=1651, clean=True)
    body = path.read_bytes()
    study = uids_of(path)[0]
    parsed = urlparse(stack.url)
    reader = urlparse(stack.root(stack.issue([study])["token"])).path
    writer = urlparse(stack.root(stack.issue([study], actions=["read", "write"])["token"])).path

    def head(root: str, method: str = "POST", length: int = len(body)) -> str:
        return (
            f"{method} {root}/studies HTTP/1.1\r\nHost: gw\r\nContent-Type: application/dicom\r\n"
            f"Accept: application/dicom+json\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
        )

    for request, status, detail in (
        (head("/dicomweb"), "401 Unauthorized", '{"error":"token_missing","detail":"no token in the path, the query,'),
        (head("/t/garbage/dicomweb"), "401 Unauthorized", '{"error":"token_invalid","detail":"'),
        (head(reader), "403 Forbidden", '{"error":"insufficient_scope","detail":"token does not allow write"}'),
        (head(writer, "PUT"), "405 Not Allowed", '{"error":"method_not_allowed","detail":"method not allowed here"}'),
        (
            head(writer, length=1 << 40),
            "413 Request Entity Too Large",
            '"error":"payload_too_large","detail":"the request body is larger than',
        ),
        # a study UID that is no UID: the client's mistake, the auth step's 400 (it was its 403), alone as well
        (
            head(writer).replace("/studies HTTP/1.1", "/studies/1.2.x HTTP/1.1"),
            "400 Bad Request",
            '{"error":"invalid_path","detail":"a UID path segment is not a valid DICOM UID"}',
        ),
    ):
        with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as connection:
            connection.sendall(request.encode())
            answer = _first_answer(connection).decode()
        assert answer.startswith(f"HTTP/1.1 {status}\r\n"), answer[:200]
        assert detail in answer.partition("\r\n\r\n")[2], answer
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as connection:
        connection.sendall(head(writer).encode())
        assert _first_answer(connection) == b"HTTP/1.1 100 Continue\r\n\r\n"
        connection.sendall(body)
        assert _first_answer(connection).startswith(b"HTTP/1.1 200 OK\r\n")



STOW_TAKES = 'multipart/related; type=\\"application/dicom\\" (one DICOM Part 10 file per part) or application/dicom'


@pytest.mark.parametrize("stack", ["file"], indirect=True)
def test_a_body_of_a_type_stow_does_not_take_is_refused_before_it_is_sent(
    stack: RunningStack, tmp_path: Path
) -> None:
    """An upload whose Content-Type STOW-RS never takes (``application/x-www-form-urlencoded``, what ``curl
    --data-binary`` sends unless told, ``text/plain``, a single DICOM JSON body, none at all) sent with ``Expect:
    100-continue`` (curl's default over 1 MB, .NET's and Java's clients) got "100 Continue" and the client sent its
    whole body before the JSON 415. Sent without it,
    the 415 said ``Connection: keep-alive`` and NGINX then closed the connection, the body unread: the client's
    next request on it had no answer. The 415 now comes first, alone, and the connection serves the next request."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=32, columns=32, seed=2611, clean=True)
    body = path.read_bytes()
    metadata = (
        "STOW-RS of metadata and bulk data (application/dicom+json, PS3.18 10.5.2) is not supported: send each "
        f"instance as its DICOM Part 10 file, {STOW_TAKES}"
    )
    study = uids_of(path)[0]
    takes = f"STOW-RS takes {STOW_TAKES}"
    for target, content_type, detail in (
        ("/dicomweb/studies", "Content-Type: application/x-www-form-urlencoded\r\n", takes),
        ("/dicomweb/studies", "Content-Type: text/plain\r\n", takes),
        (f"/dicomweb/studies/{study}", "Content-Type: multipart/form-data; boundary=x\r\n", takes),
        ("/dicomweb/studies", "", takes),
        ("/dicomweb/studies", "Content-Type: Application/DICOM+JSON\r\n", metadata),
    ):
        head = (
            f"POST {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {stack.stack.api_key}\r\n"
            f"{content_type}Content-Length: {len(body)}\r\n"
        )
        _refused_from_the_head(stack, head, body, detail)
    # the types STOW takes still reach it, however their names are written
    for content_type in ("APPLICATION/DICOM", "application/dicom ; charset=x"):
        stored = requests.post(
            f"{stack.url}/dicomweb/studies",
            data=body,
            headers={**stack.api_headers, "Content-Type": content_type, "Accept": "application/dicom+json"},
            timeout=30,
        )
        assert stored.status_code == 200, (content_type, stored.text)


@pytest.mark.parametrize("stack", ["file"], indirect=True)
def test_a_stow_of_parts_or_a_coding_stow_does_not_take_is_refused_before_it_is_sent(
    stack: RunningStack, tmp_path: Path
) -> None:
    """The head of a multipart STOW that names parts STOW never takes (``type="application/dicom+json"``, the
    metadata and bulk data form of PS3.18 10.5.2; ``type=image/jpeg``) or a compressed body (``Content-Encoding:
    gzip``) is enough to refuse it, but Python refused it: sent with ``Expect: 100-continue`` the client got "100
    Continue" and sent its whole body for nothing, and without it the 415 said ``Connection: keep-alive`` and NGINX
    closed the connection, the body unread (http.client's next request: RemoteDisconnected). The 415 now comes from
    the request's head, alone, and the connection serves the next request; the type= spellings STOW takes still
    store."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=32, columns=32, seed=2651, clean=True)
    boundary = "stow-head-2651"
    body = b"".join(encode_multipart([path], boundary=boundary))

    def metadata(media_type: str) -> str:
        return (
            f"STOW-RS of metadata and bulk data ({media_type}, PS3.18 10.5.2) is not supported: send each "
            f"instance as its DICOM Part 10 file, {STOW_TAKES}"
        )

    coding = "Content-Encoding gzip is not supported: send the body uncompressed"
    dicom = f'multipart/related; type="application/dicom"; boundary={boundary}'
    for headers, detail in (
        (
            f'Content-Type: multipart/related; type="application/dicom+json"; boundary={boundary}\r\n',
            metadata("application/dicom+json"),
        ),
        (
            f"Content-Type: Multipart/Related; boundary={boundary}; type=application/dicom+xml\r\n",
            metadata("application/dicom+xml"),
        ),
        (f'Content-Type: multipart/related;type="image/jpeg";boundary={boundary}\r\n', f"STOW-RS takes {STOW_TAKES}"),
        (f"Content-Type: {dicom}\r\nContent-Encoding: gzip\r\n", coding),
    ):
        head = (
            f"POST /dicomweb/studies HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {stack.stack.api_key}\r\n"
            f"{headers}Content-Length: {len(body)}\r\n"
        )
        lines = _refused_from_the_head(stack, head, body, detail)
        # RFC 9110 15.5.16: the 415 for a coding names the one the server takes
        assert ("Accept-Encoding: identity" in lines) == (detail == coding), lines
    # the multipart heads STOW takes still reach it: type= quoted, unquoted, in capitals, absent, after other
    # parameters, a start parameter, Content-Encoding: identity
    for content_type, extra in (
        (dicom, {}),
        (f"multipart/related; type=application/dicom; boundary={boundary}", {}),
        (f'multipart/related; boundary="{boundary}"; start="<a@b>"; type="Application/DICOM"', {}),
        (f"multipart/related; boundary={boundary}", {"Content-Encoding": "identity"}),
    ):
        stored = requests.post(
            f"{stack.url}/dicomweb/studies",
            data=body,
            headers={**stack.api_headers, "Content-Type": content_type, "Accept": "application/dicom+json", **extra},
            timeout=30,
        )
        assert stored.status_code == 200, (content_type, stored.text)


@pytest.mark.parametrize("stack", ["file"], indirect=True)
def test_a_content_type_python_cannot_read_is_refused_before_the_body_is_sent(
    stack: RunningStack, tmp_path: Path
) -> None:
    """A STOW whose Content-Type breaks the media type grammar (an unterminated quote, a parameter without "=" or
    value, one given twice, a comma for a ";") was Python's JSON 415 after NGINX's "100 Continue": the client sent
    its whole body for nothing, and sent without it the 415 said ``Connection: keep-alive`` and NGINX closed the
    connection, the body unread. NGINX now reads the value as Python does and answers the 415 from the request's
    head, in Python's words (checked against ``parse_content_type`` itself), before a compressed body's 415 as
    Python orders them; a value Python reads still reaches it and is stored."""
    from gateway.dicomweb.multipart import parse_content_type
    from gateway.errors import UnsupportedMediaType

    [path] = make_series(tmp_path, modality="CT", slices=1, rows=32, columns=32, seed=2808, clean=True)
    boundary = "stow-grammar-2808"
    body = b"".join(encode_multipart([path], boundary=boundary))
    for content_type, extra in (
        (f'multipart/related; type="application/dicom; boundary={boundary}', ""),
        (f'multipart/related; type=application/dicom; boundary="{boundary}', ""),
        ("multipart/related; type=application/dicom; boundary=", ""),
        (f"multipart/related; boundary={boundary}; foo", ""),
        (f'multipart/related; boundary={boundary}; type="application/dicom"x', ""),
        (f"multipart/related; boundary={boundary}, type=application/dicom", ""),
        (f"multipart/related; boundary={boundary}; Boundary=other", ""),
        (f"multipart/related; boundary={boundary}; constructor=a; CONSTRUCTOR=b", ""),
        ("application/dicom; x", "Content-Encoding: gzip\r\n"),
        ("text/plain; charset", ""),
    ):
        with pytest.raises(UnsupportedMediaType) as python:
            parse_content_type(content_type)
        head = (
            f"POST /dicomweb/studies HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {stack.stack.api_key}\r\n"
            f"Content-Type: {content_type}\r\n{extra}Content-Length: {len(body)}\r\n"
        )
        lines = _refused_from_the_head(stack, head, body, python.value.detail)
        assert not any(line.startswith("Accept-Encoding:") for line in lines), lines  # the grammar's 415, not gzip's
    # what Python reads is Python's: an empty parameter, a parameter repeated with its value, one of any name
    for content_type in (
        f"multipart/related;; boundary={boundary};",
        f'multipart/related; boundary={boundary}; BOUNDARY="{boundary}"; constructor=a',
    ):
        stored = requests.post(
            f"{stack.url}/dicomweb/studies",
            data=body,
            headers={**stack.api_headers, "Content-Type": content_type, "Accept": "application/dicom+json"},
            timeout=30,
        )
        assert stored.status_code == 200, (content_type, stored.text)


@pytest.mark.parametrize("stack", ["file"], indirect=True)
def test_a_content_type_too_long_for_nginx_to_judge_is_pythons(stack: RunningStack, tmp_path: Path) -> None:
    """NGINX's reading of a Content-Type's grammar sliced the rest of the value at each parameter: a header of
    32,000 empty parameters (";") cost one request half a GB of njs memory, before any auth. A value longer than
    1,024 characters is now Python's to judge: "100 Continue" comes, then Python's own 415 after the body."""
    from gateway.dicomweb.multipart import parse_content_type
    from gateway.errors import UnsupportedMediaType

    [path] = make_series(tmp_path, modality="CT", slices=1, rows=32, columns=32, seed=2809, clean=True)
    boundary = "stow-long-2809"
    body = b"".join(encode_multipart([path], boundary=boundary))
    content_type = f"multipart/related; boundary={boundary}" + ";" * 1100 + " foo"
    with pytest.raises(UnsupportedMediaType) as python:
        parse_content_type(content_type)
    parsed = urlparse(stack.url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as connection:
        connection.sendall(
            f"POST /dicomweb/studies HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {stack.stack.api_key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        data = _first_answer(connection)
        continued = b"HTTP/1.1 100 Continue\r\n\r\n"
        assert data.startswith(continued), data[:200]
        # Python may judge the head it was streamed before the body comes: its 415 then follows the 100 at once
        if data == continued:
            connection.sendall(body)
        answer = _first_answer(connection, data[len(continued):]).decode()
    assert answer.startswith("HTTP/1.1 415 "), answer[:200]
    assert json.loads(answer.split("\r\n\r\n", 1)[1]) == {
        "error": "unsupported_media_type", "detail": python.value.detail}


@pytest.mark.parametrize("stack", ["file"], indirect=True)
def test_a_stow_refused_for_its_path_accept_or_boundary_is_refused_before_it_is_sent(
    stack: RunningStack, tmp_path: Path
) -> None:
    """A STOW to ``.../studies/`` (a base URL joined with a "/" too many), one whose Accept takes no answer STOW
    gives (``Accept: application/dicom``, the body's type) and a multipart one without a boundary parameter were
    Python's 404, 406 and 400: sent with ``Expect: 100-continue`` the client got "100 Continue" and sent its whole
    body for nothing, and without it the 404 and 406 said ``Connection: keep-alive`` and NGINX then closed the
    connection, the body unread (http.client's next request: RemoteDisconnected). Each now comes from the request's
    head, alone, in Python's words; what Python may still store (every Accept line, the accept query parameter)
    reaches it and is stored."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=32, columns=32, seed=2702, clean=True)
    study = uids_of(path)[0]
    body = path.read_bytes()
    key = f"Authorization: Bearer {stack.stack.api_key}\r\n"
    dicom = f"Content-Type: application/dicom\r\nContent-Length: {len(body)}\r\n"
    slash = "no such resource: ask for it without the trailing '/' (.../studies, not .../studies/)"
    answered_as = (
        "this resource is answered as application/dicom+json, application/json, application/dicom+xml or "
        'multipart/related; type=\\"application/dicom+xml\\"'
    )
    for head, status, code, detail in (
        (f"POST /dicomweb/studies/ HTTP/1.1\r\nHost: gw\r\n{key}{dicom}", "404 Not Found", "not_found", slash),
        (f"POST /dicomweb/studies/{study}/ HTTP/1.1\r\nHost: gw\r\n{key}{dicom}", "404 Not Found", "not_found", slash),
        (
            f"POST /dicomweb/studies HTTP/1.1\r\nHost: gw\r\n{key}Accept: application/dicom\r\n{dicom}",
            "406 Not Acceptable",
            "not_acceptable",
            answered_as,
        ),
        (
            f"POST /dicomweb/studies/{study} HTTP/1.1\r\nHost: gw\r\n{key}Accept: text/html, image/png\r\n{dicom}",
            "406 Not Acceptable",
            "not_acceptable",
            answered_as,
        ),
        (
            f"POST /dicomweb/studies HTTP/1.1\r\nHost: gw\r\n{key}"
            f'Content-Type: multipart/related; type="application/dicom"\r\nContent-Length: {len(body)}\r\n',
            "400 Bad Request",
            "malformed_multipart",
            "multipart body without a boundary parameter",
        ),
    ):
        _refused_from_the_head(stack, head, body, detail, status, code)
    # an Accept NGINX cannot rule out is Python's: a second line that takes JSON, the accept query parameter
    parsed = urlparse(stack.url)
    for target, accepts in (
        ("/dicomweb/studies", "Accept: image/png\r\nAccept: application/dicom+json\r\n"),
        ("/dicomweb/studies?accept=application/dicom%2Bjson", "Accept: image/png\r\n"),
    ):
        with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as connection:
            connection.sendall(f"POST {target} HTTP/1.1\r\nHost: gw\r\n{key}{accepts}{dicom}\r\n".encode() + body)
            stored = _first_answer(connection).decode()
        assert stored.startswith("HTTP/1.1 200 OK\r\n"), stored
        assert "Content-Type: application/dicom+json" in stored.split("\r\n"), stored


def test_expect_100_continue_gets_the_503_alone_when_the_gateway_is_down(tmp_path: Path) -> None:
    """gunicorn down: an upload sent with ``Expect: 100-continue`` got "100 Continue" and then the JSON 503 (answered
    from a named location), so the client sent its whole body for nothing. The 503 now comes first, alone, for an
    API key and a token alike."""
    running = start_stack(tmp_path / "var", "file", None)
    try:
        writer = urlparse(running.root(running.issue(["1.2.3"], actions=["read", "write"])["token"])).path
        running.stack.kill("gunicorn")
        parsed = urlparse(running.url)
        for path, credential in (
            ("/dicomweb/studies", f"Authorization: Bearer {running.stack.api_key}\r\n"),
            (f"{writer}/studies", ""),
            (f"{writer}/studies/1.2.3", ""),
        ):
            request = (
                f"POST {path} HTTP/1.1\r\nHost: gw\r\n{credential}Content-Type: application/dicom\r\n"
                "Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
            )
            with socket.create_connection((parsed.hostname, parsed.port), timeout=15) as connection:
                connection.sendall(request.encode())
                answer = _first_answer(connection).decode()
            head, _, body = answer.partition("\r\n\r\n")
            assert head.startswith("HTTP/1.1 503 Service Temporarily Unavailable\r\n"), (path, answer[:200])
            lines = head.split("\r\n")
            assert "Retry-After: 5" in lines and "Content-Type: application/json" in lines, head
            assert body == '{"error":"gateway_unavailable","detail":"the gateway is unavailable, try again shortly"}'
    finally:
        running.stack.stop()
