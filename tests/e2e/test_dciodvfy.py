"""David Clunie's dicom3tools (Debian's `dicom3tools`) as the outside oracle of every DICOM object the gateway
writes: `dciodvfy` checks each against its IOD (modules, Type 1/2/C attributes, VRs, enumerated values, UIDs),
`dcentvfy` a served study's entities (patient, study, series attributes equal across its instances).

The objects: what `dicom-gateway synth` writes (the CT, MR, whole-slide, ultrasound and secondary-capture files the
tests and `make demo` feed the gateway), and what the stack stores in place of an upload under a PHI policy: the
de-identified instance (`gateway/phi/deidentify.py`), the Clean Pixel Data output (`gateway/phi/pixelfile.py`:
native, RLE and JPEG frames) and the de-identified file held in quarantine for pixel review. Each is retrieved from
the stack (WADO-RS, or storage for the quarantined one) and must carry no `Error -` line that its original does
not: ours have none, a third party's (pydicom's test files) keep theirs and gain none. The gateway converts no
whole instance (Retrieve names the stored file's syntax; only frames and bulk values are converted, PS3.18 8.7.3),
so there is no converted object to check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import RLELossless, generate_uid

from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_real_files import get, multipart_parts, stored_url
from tests.fixtures.compressed import pydicom_file
from tests.requirements import require

pytestmark = pytest.mark.third_party

require(
    bool(shutil.which("dciodvfy") and shutil.which("dcentvfy")),
    "dicom3tools is not installed (`make system-deps` installs Debian's dicom3tools)",
    module=True,
)

# name -> the `dicom-gateway synth` arguments that write it (small sizes: the checks do not depend on them)
SYNTH: dict[str, list[str]] = {
    "ct": ["ct", "--slices", "2", "--seed", "31"],
    "ct-clean": ["ct", "--slices", "2", "--seed", "32", "--clean"],
    "ct-study": ["ct", "--slices", "3", "--seed", "40"],  # uploaded slice by slice for dcentvfy
    "mr": ["mr", "--slices", "2", "--seed", "33"],
    "wsi": ["wsi", "--frames", "16", "--seed", "34"],
    "wsi-empty-offsets": ["wsi", "--frames", "16", "--offsets", "empty", "--fragments-per-frame", "2", "--clean"],
    "wsi-extended-offsets": ["wsi", "--frames", "16", "--offsets", "eot", "--clean", "--seed", "35"],
    "wsi-native": ["wsi", "--frames", "4", "--native", "--clean", "--seed", "36"],
    "us": ["us", "--frames", "3", "--seed", "37"],
    "us-jpeg": ["us", "--frames", "3", "--color", "--jpeg", "--seed", "38"],
    "sc": ["sc", "--seed", "39"],
}
# what the stack writes, by name
DEIDENTIFIED = ["ct", "mr", "wsi"]  # header de-identification only
CLEANED = ["us", "us-jpeg", "us-rle", "sc"]  # burned-in text: Clean Pixel Data too (native, JPEG, RLE re-encoded)
# pydicom's test files, each but CT_small with errors of its own (a UID with leading zeroes, a missing Type 1C): the
# enhanced SEG, the RT plan and dose and the ECG hold D-coded attributes that are Type 1 there
THIRD_PARTY = [
    "CT_small.dcm",
    "MR_small_padded.dcm",
    "693_J2KI.dcm",
    "liver_1frame.dcm",
    "rtplan.dcm",
    "rtdose_rle.dcm",
    "waveform_ecg.dcm",
]

POLICY = """
version = "dciodvfy-1"
[options]
on_deidentify_failure = "reject"

[destinations.main]
storage = "default"
region = "eu-west-1"
identifiable_allowed = false

# a file held for pixel review may still show a name: it is held only where identifiable data of the upload's
# region may be (docs/phi.md), here the same storage
[destinations.held]
storage = "default"
region = "eu-west-1"
identifiable_allowed = true

[[rules]]
id = "research"
match = { tenant = "research" }
action = "deidentify"
destination = "main"
pixels = "clean"

[[rules]]
id = "review"
match = { tenant = "review" }
action = "deidentify"
destination = "main"
pixels = "review"

[default]
action = "reject"

# removed, not shifted: emptied dates are where Type 1 attributes broke (Content Date of a slide)
[deidentify]
dates = "remove"

[pixels]
margin = 4

[[pixels.bands]]
modality = "US"
top = 0
height = 100
"""

# dciodvfy writes each finding on a line of its own: "Error - ..." or, for an element, "(0x0010,0x0010) ... - Error
# - ..."; warnings say "Warning -"
ERROR = re.compile(r"(?:^|\s-\s)Error - ")


def dciodvfy_errors(path: Path) -> list[str]:
    """The `Error -` lines dciodvfy writes about ``path`` (it names the IOD it checked against first)."""
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    assert lines, f"dciodvfy said nothing about {path.name}"
    return [line for line in lines if ERROR.search(line)]


def dcentvfy_errors(paths: list[Path]) -> list[str]:
    done = subprocess.run(["dcentvfy", *map(str, paths)], capture_output=True, text=True, timeout=120)
    return [line for line in (done.stdout + done.stderr).splitlines() if ERROR.search(line)]


def added_errors(written: Path, original: Path) -> list[str]:
    """Error lines of ``written`` that ``original`` did not have: what the gateway's change broke."""
    before = dciodvfy_errors(original)
    return [line for line in dciodvfy_errors(written) if line not in before]


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Each SYNTH entry written by the command line, as a user runs it."""
    base = tmp_path_factory.mktemp("synth")
    files: dict[str, list[Path]] = {}
    for name, arguments in SYNTH.items():
        out = base / name
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "synth", *arguments, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        files[name] = sorted(out.glob("*.dcm"))
        assert files[name], done.stdout
    return files


@pytest.mark.parametrize("name", list(SYNTH))
def test_synth_writes_objects_dciodvfy_finds_no_error_in(synthesized: dict[str, list[Path]], name: str) -> None:
    for path in synthesized[name]:
        assert dciodvfy_errors(path) == [], path.name


def test_the_oracle_finds_what_the_emptied_dummies_broke(synthesized: dict[str, list[Path]], tmp_path: Path) -> None:
    """The parsing can fail: a slide whose D-coded Type 1 attributes were emptied (what de-identification wrote
    before it wrote dummies) gives the exact error lines, and two files of one study naming different patients
    give dcentvfy's."""
    [slide] = synthesized["wsi"]
    ds = pydicom.dcmread(slide)
    ds.SpecimenDescriptionSequence[0].SpecimenIdentifier = ""
    ds.ContainerIdentifier = ""
    broken = tmp_path / "emptied.dcm"
    ds.save_as(broken)
    assert added_errors(broken, slide) == [
        "Error - Empty attribute (no value) Type 1 Required Element=<ContainerIdentifier> Module=<SpecimenMacro>",
        "Error - Empty attribute (no value) Type 1 Required Element=<SpecimenIdentifier> Module=<SpecimenMacro>",
    ]
    first, second = synthesized["ct"]
    other = pydicom.dcmread(second)
    other.PatientID = "SOMEONE-ELSE"
    moved = tmp_path / "other-patient.dcm"
    other.save_as(moved)
    errors = dcentvfy_errors([first, moved])
    assert errors and all("Different PatientID" in line for line in errors), errors


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    base = tmp_path_factory.mktemp("dciodvfy")
    policy = base / "policy.toml"
    policy.write_text(POLICY)
    running = start_stack(base / "stack", "file", None, DICOMGW_PHI_POLICY=str(policy))
    yield running
    running.stack.stop()


def stow(stack: RunningStack, path: Path, tenant: str) -> requests.Response:
    return stack.stow([path], **{"X-DICOMGW-Tenant": tenant, "X-DICOMGW-Region": "eu-west-1"})


def stored_copy(stack: RunningStack, answer: requests.Response, target: Path) -> Path:
    """The instance a STOW answer names, retrieved as a client gets it (WADO-RS, application/dicom)."""
    assert answer.status_code == 202, answer.text  # stored as the policy rewrote it: Warning Reason 0xB000
    [item] = answer.json()["00081199"]["Value"]
    body = get(stack, stored_url(stack, item["00081190"]["Value"][0]), "application/dicom")
    assert body.status_code == 200, body.text[:300]
    target.write_bytes(body.content)
    return target


def rle_copy(source: Path, target: Path) -> Path:
    """``source`` compressed to RLE Lossless by pydicom, as its own instance in its own study."""
    ds = pydicom.dcmread(source)
    ds.compress(RLELossless, generate_instance_uid=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def written(
    stack: RunningStack, synthesized: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path]]:
    """What the stack wrote, by name: (the original uploaded, the object the stack stored or holds)."""
    folder = tmp_path_factory.mktemp("written")
    originals = {name: synthesized[name][0] for name in DEIDENTIFIED + CLEANED if name in synthesized}
    originals["us-rle"] = rle_copy(synthesized["us"][0], folder / "us-rle.source.dcm")
    pairs: dict[str, tuple[Path, Path]] = {}
    for name in DEIDENTIFIED + CLEANED:
        original = originals[name]
        pairs[name] = (original, stored_copy(stack, stow(stack, original, "research"), folder / f"{name}.dcm"))
    for name in THIRD_PARTY:
        original = pydicom_file(name)
        pairs[name] = (original, stored_copy(stack, stow(stack, original, "research"), folder / name))
    # held for pixel review: the de-identified file, as quarantine keeps it
    original = synthesized["sc"][0]
    assert stow(stack, original, "review").status_code == 409
    sop = str(pydicom.dcmread(original, stop_before_pixels=True).SOPInstanceUID)
    listed = requests.get(f"{stack.url}/api/v1/admin/quarantine", headers=stack.api_headers, timeout=10)
    [entry] = [item for item in listed.json()["items"] if item["sop_uid"] == sop]
    held = folder / "quarantined-sc.dcm"
    stack.storage().download(entry["key"], held)
    pairs["quarantined-sc"] = (original, held)
    return pairs


@pytest.mark.parametrize("name", DEIDENTIFIED + CLEANED + ["quarantined-sc"])
def test_what_the_gateway_writes_has_no_error(written: dict[str, tuple[Path, Path]], name: str) -> None:
    original, stored = written[name]
    ds = pydicom.dcmread(stored, stop_before_pixels=True)
    assert ds.PatientIdentityRemoved == "YES"  # the object the gateway wrote, not the upload
    source = pydicom.dcmread(original, stop_before_pixels=True)
    assert ds.SOPInstanceUID != source.SOPInstanceUID
    if name in CLEANED:  # masked and re-encoded in the upload's own syntax
        assert ds.BurnedInAnnotation == "NO" and ds.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert [code.CodeValue for code in ds.DeidentificationMethodCodeSequence] == ["113100", "113101"]
    assert dciodvfy_errors(original) == []
    assert dciodvfy_errors(stored) == []


@pytest.mark.parametrize("name", THIRD_PARTY)
def test_de_identification_adds_no_error_to_a_third_partys_file(
    written: dict[str, tuple[Path, Path]], name: str
) -> None:
    original, stored = written[name]
    assert pydicom.dcmread(stored, stop_before_pixels=True).PatientIdentityRemoved == "YES"
    assert added_errors(stored, original) == []


def test_a_served_de_identified_study_is_one_consistent_entity(
    stack: RunningStack, synthesized: dict[str, list[Path]], tmp_path: Path
) -> None:
    """A study's slices uploaded in separate requests, de-identified each on its own, then the study retrieved
    whole: dcentvfy finds its patient, study and series attributes equal across the instances."""
    slices = synthesized["ct-study"]
    answers = [stow(stack, path, "research") for path in slices]
    assert [answer.status_code for answer in answers] == [202] * len(slices), [answer.text for answer in answers]
    url = stored_url(stack, answers[0].json()["00081199"]["Value"][0]["00081190"]["Value"][0])
    study_url = url.split("/series/")[0]
    parts = multipart_parts(get(stack, study_url, 'multipart/related; type="application/dicom"'))
    assert len(parts) == len(slices)
    files = []
    for index, (media_type, body) in enumerate(parts):
        assert media_type == "application/dicom"
        files.append(tmp_path / f"{index}.dcm")
        files[-1].write_bytes(body)
    assert dcentvfy_errors(slices) == []  # the originals agree with each other
    assert dcentvfy_errors(files) == []
