"""The STOW-RS upload client (gateway/tools/upload.py) against a real HTTP server that parses what it receives."""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from rich.console import Console

from gateway.dicomweb.multipart import iter_parts, multipart_boundary
from gateway.dicomweb.stow_response import DATA_SET_DOES_NOT_MATCH_SOP_CLASS, StowItem, build_stow_response
from gateway.tools.upload import UploadOptions, run_upload, upload
from gateway.uids import InstanceId

ST = "1.2.826.0.1.3680043.8.498.1"
SE = "1.2.826.0.1.3680043.8.498.1.1"


def write_dicom(path: Path, sop: str, *, series: str = SE, frames: int = 1) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = ST
    ds.SeriesInstanceUID = series
    ds.PatientID = "TEST-1"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = 8, 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.NumberOfFrames = frames
    ds.PixelData = bytes(range(128)) * frames
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


class LimitedReader:
    def __init__(self, raw: object, length: int) -> None:
        self._raw = raw
        self._left = length

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data: bytes = self._raw.read(n) if n else b""  # type: ignore[attr-defined]
        self._left -= len(data)
        return data


@dataclass
class ServerState:
    spool: Path
    existing: set[str] = field(default_factory=set)
    reject: dict[str, tuple[int, str]] = field(default_factory=dict)
    fail_posts: int = 0
    posts: int = 0
    received: list[str] = field(default_factory=list)
    qido: list[list[str]] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    authorization: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test server
            pass

        def _note_auth(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            with state.lock:
                state.tokens.update(query.get("token", []))
                if "Authorization" in self.headers:
                    state.authorization.add(self.headers["Authorization"])

        def _send(self, status: int, body: bytes, content_type: str = "application/dicom+json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if status == 503:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._note_auth()
            url = urlsplit(self.path)
            if not re.fullmatch(r"/dicomweb/studies/[\d.]+/series/[\d.]+/instances", url.path):
                self._send(404, b"{}")
                return
            asked = parse_qs(url.query)["SOPInstanceUID"][0].split(",")
            with state.lock:
                state.qido.append(asked)
                found = [uid for uid in asked if uid in state.existing]
            self._send(200, json.dumps([{"00080018": {"vr": "UI", "Value": [u]}} for u in found]).encode())

        def do_POST(self) -> None:
            self._note_auth()
            stream = LimitedReader(self.rfile, int(self.headers["Content-Length"]))
            assert urlsplit(self.path).path == "/dicomweb/studies"
            with state.lock:
                state.posts += 1
                fail = state.fail_posts > 0
                state.fail_posts -= int(fail)
            if fail:
                while stream.read(1 << 16):
                    pass
                self._send(503, b'{"error": "storage_unavailable"}', "application/json")
                return
            boundary = multipart_boundary(self.headers["Content-Type"])
            items = []
            for part in iter_parts(stream, boundary, state.spool, max_part_bytes=1 << 30):
                assert part.content_type == "application/dicom"
                ds = pydicom.dcmread(part.path)
                part.path.unlink()
                sop = ds.SOPInstanceUID
                with state.lock:
                    state.received.append(sop)
                    if sop in state.reject:
                        code, text = state.reject[sop]
                        items.append(StowItem("failed", ds.SOPClassUID, InstanceId(ST, SE, sop), code, text))
                        continue
                    status = "duplicate" if sop in state.existing else "stored"
                    state.existing.add(sop)
                items.append(StowItem(status, ds.SOPClassUID, InstanceId(ds.StudyInstanceUID, SE, sop), None, ""))  # type: ignore[arg-type]
            response = build_stow_response(items, "/dicomweb")
            self._send(response.status, response.to_bytes())

    return Handler


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, ServerState]]:
    spool = tmp_path / "server-spool"
    spool.mkdir()
    state = ServerState(spool=spool)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/dicomweb", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Three instances in nested folders, plus files that are not DICOM."""
    root = tmp_path / "in"
    write_dicom(root / "a.dcm", "1.2.3.1")
    write_dicom(root / "sub" / "b.dcm", "1.2.3.2", frames=3)
    write_dicom(root / "sub" / "deeper" / "c", "1.2.3.3")
    (root / "sub" / "notes.txt").write_text("not dicom\n")
    (root / "sub" / "DICM-but-no-preamble").write_bytes(b"DICM" + b"\0" * 200)
    return root


def invoke(*args: str) -> tuple[int, str, str]:
    runner = CliRunner(env={"COLUMNS": "250"})
    result = runner.invoke(upload, [*args, "--backoff", "0"], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_upload_recurses_skips_non_dicom_and_reports(server: tuple[str, ServerState], tree: Path) -> None:
    url, state = server
    code, out, err = invoke(str(tree), "--url", url, "--token", "TOK", "--api-key", "KEY")
    assert code == 0, out + err
    assert sorted(state.received) == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert state.posts == 1  # all three fit in one batch
    assert state.tokens == {"TOK"} and state.authorization == {"Bearer KEY"}
    assert sorted(state.qido) == [["1.2.3.1", "1.2.3.2", "1.2.3.3"]]
    assert "skipped (not a DICOM file):" in err and "notes.txt" in err and "DICM-but-no-preamble" in err
    cells = [line.split("│") for line in out.splitlines() if "│" in line]
    rows = {c[1].strip(): c[2].strip() for c in cells}
    assert rows["stored"] == "3" and rows["already present"] == "0" and rows["failed"] == "0"
    assert rows["skipped"] == "2"
    assert "TOK" not in out + err and "KEY" not in out + err


def test_resume_does_not_resend_what_the_server_has(server: tuple[str, ServerState], tree: Path) -> None:
    url, state = server
    state.existing.add("1.2.3.2")
    code, out, _ = invoke(str(tree), "--url", url)
    assert code == 0
    assert sorted(state.received) == ["1.2.3.1", "1.2.3.3"]
    assert re.search(r"already present\s*│\s*1\s*│", out)
    # second run: everything is there, nothing is sent
    code, out, _ = invoke(str(tree), "--url", url)
    assert code == 0 and state.posts == 1
    assert re.search(r"already present\s*│\s*3\s*│", out)


def test_identical_reupload_counts_as_present(server: tuple[str, ServerState], tree: Path) -> None:
    url, state = server
    state.existing.add("1.2.3.1")
    code, out, _ = invoke(str(tree / "a.dcm"), "--url", url, "--no-resume")
    assert code == 0 and state.received == ["1.2.3.1"] and state.qido == []
    assert re.search(r"already present\s*│\s*1\s*│", out)


def test_retry_after_503(server: tuple[str, ServerState], tree: Path) -> None:
    url, state = server
    state.fail_posts = 2
    delays: list[float] = []
    report = run_upload(
        [tree],
        UploadOptions(root=url, backoff=0.25, retries=3),
        console=Console(file=io.StringIO()),
        err_console=Console(quiet=True),
        sleep=delays.append,
    )
    assert report.exit_code == 0
    assert state.posts == 3 and sorted(state.received) == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert delays == [0.25, 0.5]  # exponential; Retry-After: 0 does not shorten it
    assert report.responses == 1


def test_retries_exhausted_is_exit_2(server: tuple[str, ServerState], tree: Path) -> None:
    url, state = server
    state.fail_posts = 10
    code, out, _ = invoke(str(tree), "--url", url, "--retries", "2")
    assert code == 2 and state.posts == 3
    assert out.count("HTTP 503: storage_unavailable") == 3


def test_failures_are_reported_with_reasons(server: tuple[str, ServerState], tree: Path) -> None:
    url, state = server
    state.reject["1.2.3.3"] = (DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "missing Rows")
    code, out, _ = invoke(str(tree), "--url", url, "--batch-bytes", "1", "--concurrency", "2")
    assert code == 1
    assert state.posts == 3  # one file per request
    assert re.search(r"stored\s*│\s*2\s*│", out) and re.search(r"failed\s*│\s*1\s*│", out)
    assert "missing Rows (0xA900)" in out and "deeper" in out


def test_nothing_sent_when_the_server_is_down(tmp_path: Path, tree: Path) -> None:
    code, out, _ = invoke(str(tree), "--url", "http://127.0.0.1:9/dicomweb", "--retries", "1")
    assert code == 2
    assert out.count("connection failed (ConnectionError)") == 3
    assert "127.0.0.1:9" not in out


def test_no_dicom_found_is_exit_2(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "x.txt").write_text("hello")
    code, _, err = invoke(str(tmp_path / "x.txt"), "--url", url)
    assert code == 2 and state.posts == 0 and "skipped" in err


def test_duplicate_sop_uid_in_input_is_sent_once(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    write_dicom(tmp_path / "1.dcm", "1.2.3.9")
    write_dicom(tmp_path / "2.dcm", "1.2.3.9")
    code, out, _ = invoke(str(tmp_path), "--url", url)
    assert code == 0 and state.received == ["1.2.3.9"]
    assert re.search(r"skipped\s*│\s*1\s*│", out)


def test_failures_without_uid_are_attributed_to_unacknowledged_files(tmp_path: Path) -> None:
    from gateway.tools.upload import FileEntry, apply_stow_response

    a = FileEntry(path=tmp_path / "a", size=1, sop_uid="1.1")
    b = FileEntry(path=tmp_path / "b", size=1, sop_uid="1.2")
    payload = build_stow_response(
        [
            StowItem("stored", CTImageStorage, InstanceId(ST, SE, "1.1"), None, ""),
            StowItem("failed", None, None, 0xC000, "cannot parse the data set"),
        ],
        "/dicomweb",
    ).body
    apply_stow_response([a, b], payload)
    assert (a.outcome, a.reason) == ("stored", "")
    assert (b.outcome, b.reason) == (
        "failed",
        "not acknowledged in the server's response; server reported: cannot parse the data set (0xC000)",
    )


def test_a_failed_deidentified_file_is_matched_by_the_uid_it_was_sent_with(tmp_path: Path) -> None:
    """A de-identifying policy gives an instance a new SOP Instance UID; when it then fails (another patient's study,
    different bytes already stored) the item names the new UID and, in (0009,1003), the one the file was sent with.
    The file was reported "not acknowledged" and its reason lost."""
    from gateway.tools.upload import FileEntry, apply_stow_response

    sent = FileEntry(path=tmp_path / "a", size=1, sop_uid="1.1")
    text = "the study holds another patient's instances"
    payload = build_stow_response(
        [StowItem("failed", CTImageStorage, InstanceId(ST, SE, "2.25.9"), 0xA778, text, sent_sop_uid="1.1")],
        "/dicomweb",
    ).body
    apply_stow_response([sent], payload)
    assert (sent.outcome, sent.reason) == ("failed", f"{text} (0xA778)")


def test_a_certificate_for_another_name_is_told_apart_from_an_untrusted_one() -> None:
    """Both are ssl's SSLCertVerificationError: every such failure said to name a CA file in REQUESTS_CA_BUNDLE,
    which does nothing for a certificate issued for another name than --url's (a trusted one, seen by its IP)."""
    import ssl

    import requests

    from gateway.tools.upload import UNTRUSTED_CERTIFICATE, certificate_refusal

    def failed(code: int, message: str) -> requests.ConnectionError:
        error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
        error.verify_code, error.verify_message = code, message
        return requests.ConnectionError(requests.packages.urllib3.exceptions.MaxRetryError(None, "/", error))

    mismatch = failed(62, "Hostname mismatch, certificate is not valid for '192.0.2.7'.")
    assert certificate_refusal(mismatch) == (
        "the server's TLS certificate is for another name (Hostname mismatch, certificate is not valid for "
        "'192.0.2.7'.): use its name in --url"
    )
    assert certificate_refusal(failed(18, "self-signed certificate")) == UNTRUSTED_CERTIFICATE
    assert certificate_refusal(requests.ConnectionError("refused")) == ""


def test_the_progress_counts_files_in_files_and_bytes_in_bytes(server: tuple[str, ServerState], tree: Path) -> None:
    """The two rows of the progress bar shared one set of columns: the files row said `3/3  3/3 bytes  ?` (a count
    of files in byte units, and a speed of files in bytes/s) and the bytes row gave its count bare, `2305/2305`,
    beside the kB. Each row now counts in its own unit, and only bytes have a speed."""
    url, _ = server
    code, _, err = invoke(str(tree), "--url", url)
    assert code == 0
    rows = {line.split(" ", 1)[0]: line for line in err.splitlines() if line.startswith(("files ", "bytes "))}
    assert re.fullmatch(r"files ━+ 3/3 files +0:00:00", rows["files"]), rows["files"]
    speed = r"(?:[\d.]+ [kMG]?B/s|\?)"  # "?" until rich has two samples to measure
    assert re.fullmatch(rf"bytes ━+ (\S+)/\1 (?:bytes|kB) {speed} +0:00:00", rows["bytes"]), rows["bytes"]


def test_a_file_name_that_is_no_utf8_is_printed_with_its_bytes_as_xff(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    """A name another system wrote (Latin-1's é is the byte 0xe9) is no UTF-8: Python holds such a byte as a
    surrogate escape, and the notes printed `\\udcff` (the summary, on stdout, the raw byte). Every name `upload`
    prints now shows the byte as `\\xff`: the notes, a repeat's reason and the failed files."""
    url, state = server
    folder = tmp_path / "in"
    write_dicom(folder / os.fsdecode(b"a\xff.dcm"), "1.2.3.7")
    write_dicom(folder / os.fsdecode(b"b\xfe.dcm"), "1.2.3.7")  # the same instance: sent when the first fails
    (folder / os.fsdecode(b"n\xfdo.txt")).write_text("not dicom\n")
    state.reject["1.2.3.7"] = (DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "missing Rows")
    code, out, err = invoke(str(folder), "--url", url)
    assert code == 1
    notes = [line for line in err.splitlines() if not line.startswith(("files ", "bytes "))]
    assert notes == [
        f"skipped (same SOP Instance UID as {folder}/a\\xff.dcm): {folder}/b\\xfe.dcm",
        f"skipped (not a DICOM file): {folder}/n\\xfdo.txt",
        f"sending {folder}/b\\xfe.dcm in place of {folder}/a\\xff.dcm, which failed (same SOP Instance UID)",
    ]
    failed = [[cell.strip() for cell in line.split("│")[1:3]] for line in out.splitlines() if "0xA900" in line]
    assert failed == [
        [f"{folder}/a\\xff.dcm", "missing Rows (0xA900)"],
        [f"{folder}/b\\xfe.dcm", "missing Rows (0xA900)"],
    ]
