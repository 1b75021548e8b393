"""`dicom-gateway scan` exit codes and output; `hooks run-incoming` wiring."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from gateway.phi.cli import hooks, scan

try:
    from test_phi_files import clean_dataset, phi_dataset, write
except ImportError:  # collected as a package
    from tests.unit.test_phi_files import clean_dataset, phi_dataset, write

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "phi-policy.toml"


def run(*args: str) -> tuple[int, list[dict[str, object]]]:
    result = CliRunner().invoke(scan, list(args))
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    return result.exit_code, lines


def test_exit_codes_highest_wins(tmp_path: Path) -> None:
    clean = write(clean_dataset(), tmp_path / "clean.dcm")
    phi = write(phi_dataset(), tmp_path / "phi.dcm")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(phi.read_bytes()[:200])  # a PS3.10 file cut inside its header: upload cannot send it
    other = tmp_path / "other.dcm"
    other.write_bytes(b"garbage")  # no DICOM: upload skips it, so scan reports it skipped (exit 0)
    assert run(str(clean))[0] == 0
    assert run(str(clean), str(other))[0] == 0
    assert run(str(clean), str(phi))[0] == 1
    code, lines = run(str(bad), str(other), str(phi), str(clean))
    assert code == 2
    assert [line["status"] for line in lines] == ["unreadable", "skipped", "phi", "clean"]
    assert [line["file"] for line in lines] == [str(bad), str(other), str(phi), str(clean)]
    assert lines[1]["skipped"] == "not a DICOM file" and "skipped" not in lines[0]


def test_a_file_ingest_refuses_is_unreadable_with_ingests_reason(tmp_path: Path) -> None:
    """``scan`` and the upload hooks agree: pydicom reads a truncated file (and scanned it as "phi", exit 1), ingest
    refuses it (0xC000) before any hook runs. The report gives ingest's reason."""
    from pydicom.data import get_testdata_file

    truncated = Path(get_testdata_file("MR_truncated.dcm"))
    code, [line] = run(str(truncated))
    assert code == 2
    assert (line["status"], line["readable"], line["error"]) == (
        "unreadable",
        False,
        "file is truncated inside (7FE0,0010)",
    )
    whole = write(phi_dataset(), tmp_path / "whole.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-40])
    assert run(str(cut))[0] == 2 and run(str(whole))[0] == 1


def test_folders_recurse_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(clean_dataset(), tmp_path / "sub" / "b.dcm")
    write(clean_dataset(), tmp_path / "a.dcm")
    code, lines = run(str(tmp_path))
    assert code == 0 and [line["file"] for line in lines] == [
        str(tmp_path / "a.dcm"),
        str(tmp_path / "sub" / "b.dcm"),
    ]


def test_a_folder_holding_no_file_is_said_so(tmp_path: Path) -> None:
    """README, Command line: ``scan`` on an empty folder printed nothing and exited 0, as if every file were clean.
    It now says, in one line on stderr (stdout stays one JSON report a line), that nothing was scanned there; the
    exit status is still 0 (README: nothing to do is not an error), and the other paths are scanned as before."""
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)  # folders alone hold no file
    result = CliRunner().invoke(scan, [str(empty)])
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == f"no file found under {empty}: nothing was scanned\n"
    phi = write(phi_dataset(), tmp_path / "phi.dcm")
    result = CliRunner().invoke(scan, [str(empty), str(phi)])
    assert result.exit_code == 1 and [json.loads(line)["file"] for line in result.stdout.splitlines()] == [str(phi)]
    assert result.stderr == f"no file found under {empty}: nothing was scanned\n"



def test_a_file_name_that_is_no_utf8_is_printed_with_its_bytes_as_xff(tmp_path: Path) -> None:
    """A name another system wrote (Latin-1's é is the byte 0xe9) is no UTF-8: Python holds such a byte as a
    surrogate escape, and the report said `"file": ".../ct\\udcff.dcm"`, a lone surrogate that JSON readers refuse or
    replace. Every name `scan` prints shows the byte as `\\xff` now: the reports and the notes on stderr."""
    phi = write(phi_dataset(), tmp_path / os.fsdecode(b"ct\xff.dcm"))
    other = tmp_path / os.fsdecode(b"n\xfeo.txt")
    other.write_bytes(b"garbage")
    empty = tmp_path / os.fsdecode(b"empty\xff")
    empty.mkdir()
    result = CliRunner().invoke(scan, [str(phi), str(other), str(empty)])
    assert result.exit_code == 1
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == [
        f"{tmp_path}/ct\\xff.dcm",
        f"{tmp_path}/n\\xfeo.txt",
    ]
    assert result.stderr == f"no file found under {tmp_path}/empty\\xff: nothing was scanned\n"


def test_a_folder_of_links_to_folders_is_scanned_through_them(tmp_path: Path) -> None:
    """`scan staging` where staging holds links to study folders (as `upload` is given them): the linked folders were
    not entered, "no file found under staging: nothing was scanned", exit 0, read as "clean" of a folder whose
    files carry PHI. A linked folder is entered as `upload` enters it, each folder once (a loop is not followed)."""
    study = tmp_path / "archive" / "STUDY1"
    study.mkdir(parents=True)
    phi = write(phi_dataset(), study / "IM000001")
    (study / "UP").symlink_to("..")  # a loop
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "STUDY1").symlink_to(study)
    result = CliRunner().invoke(scan, [str(staging)])
    assert (result.exit_code, result.stderr) == (1, "")
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["file"], r["status"]) for r in reports] == [(str(staging / "STUDY1" / phi.name), "phi")]

def test_policy_changes_what_counts(tmp_path: Path) -> None:
    ds = clean_dataset()
    ds.DeviceSerialNumber = "SN-1"
    path = write(ds, tmp_path / "f.dcm")
    assert run(str(path))[0] == 1
    code, lines = run(str(path), "--policy", str(EXAMPLE))  # rtnDevIdOpt = true
    assert code == 0 and lines[0]["policy_version"] == "2025-06-01"


def test_bad_policy_is_a_usage_error(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("version = 1\nsurprise = true\n")
    result = CliRunner().invoke(scan, [str(tmp_path), "--policy", str(policy)])
    assert result.exit_code == 2 and "surprise" in result.output


def test_run_incoming_needs_s3_storage(tmp_path: Path) -> None:
    env = {
        "DICOMGW_SIGNING_KEYS": "s" * 32,
        "DICOMGW_API_KEYS": "k",
        "DICOMGW_STORAGE_URL": f"file://{tmp_path}",
        "DICOMGW_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
    }
    result = CliRunner().invoke(hooks, ["run-incoming"], env=env)
    assert result.exit_code == 1 and "DICOMGW_STORAGE_URL" in result.output
