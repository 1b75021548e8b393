"""Orthanc (Debian's `orthanc` + `orthanc-dicomweb`), unmodified, as a DICOMweb client of the gateway.

Orthanc is configured the way a user configures it: `DicomWeb.Servers` entries in its JSON configuration, one whose
Url is the token root (`/t/{token}/dicomweb/`), one whose Url is `/dicomweb/` with the token in
`HttpHeaders: {"Authorization": "Bearer ..."}`. Everything then goes through Orthanc's own REST API: QIDO through
the plugin, a study retrieved into Orthanc and compared byte for byte (Orthanc stores what it receives unchanged),
and a STOW from Orthanc (its HTTP client sends a 73-character multipart boundary) with a write-only token.

The fixture starts its own `Orthanc` process per stack: its own configuration, storage folder, and free HTTP and
DICOM ports on loopback; the Debian service is never used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.tools import orthanc as orthanc_tool
from gateway.tools.orthanc import Orthanc
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack
from tests.requirements import require

pytestmark = pytest.mark.third_party

# (server name in Orthanc's configuration, how it carries the token): every scenario runs through both.
TRANSPORTS = ["path", "bearer"]


def start_orthanc(folder: Path, servers: dict[str, dict[str, Any]]) -> Orthanc:
    try:
        return orthanc_tool.start_orthanc(folder, servers)
    except orthanc_tool.OrthancMissing as missing:
        require(False, f"{missing} (`make test` installs Debian's orthanc and orthanc-dicomweb with apt)")
        raise


@pytest.fixture(scope="module")
def orthanc(
    stack: RunningStack, synthetic: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Orthanc]:
    """Orthanc with four DICOMweb servers pointing at this stack: read and write, each by path token and by
    `Authorization: Bearer`. Tokens: read-only on the CT study, write-only on two new studies."""
    folder = tmp_path_factory.mktemp(f"orthanc-{stack.backend}")
    seed = {"file": 71, "s3": 73}[stack.backend]
    stow_files = {
        transport: make_series(folder / f"stow-{transport}", modality="MR", slices=2, seed=seed + i, clean=True)
        for i, transport in enumerate(TRANSPORTS)
    }
    read = stack.issue([uids_of(synthetic["ct"][0])[0]], actions=["read"], sub="orthanc")["token"]
    write = stack.issue(
        [uids_of(files[0])[0] for files in stow_files.values()], actions=["write"], sub="orthanc-upload"
    )["token"]
    servers: dict[str, dict[str, Any]] = {}
    for token, suffix in ((read, ""), (write, "-upload")):
        servers[f"gateway{suffix}"] = {"Url": f"{stack.root(token)}/"}
        servers[f"gateway-bearer{suffix}"] = {
            "Url": f"{stack.url}/dicomweb/",
            "HttpHeaders": {"Authorization": f"Bearer {token}"},
        }
    running = start_orthanc(folder, servers)
    running.stow_files = stow_files
    try:
        yield running
    finally:
        running.stop()


def server(transport: str, upload: bool = False) -> str:
    return ("gateway" if transport == "path" else "gateway-bearer") + ("-upload" if upload else "")


def values(answer: list[dict[str, Any]], tag: str) -> list[str]:
    return sorted(item[tag]["Value"][0] for item in answer)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_qido_through_orthanc(orthanc: Orthanc, synthetic: dict[str, Any], transport: str) -> None:
    """The plugin's QIDO (`/qido` answers Orthanc's rendering, `/get` the gateway's JSON) sees exactly the
    catalog within the token's scope: one study, its two series, their instances."""
    study = uids_of(synthetic["ct"][0])[0]
    series = {uids_of(files[0])[1]: files for files in (synthetic["ct"], synthetic["ct_b"])}
    name = server(transport)

    answer = orthanc.post(f"/dicom-web/servers/{name}/qido", {"Uri": "/studies"})
    assert answer.status_code == 200, answer.text
    assert [item["0020000D"]["Value"] for item in answer.json()] == [study]  # Orthanc's form: "Value" is a string
    studies = orthanc.post(f"/dicom-web/servers/{name}/get", {"Uri": "/studies"}).json()
    assert values(studies, "0020000D") == [study]
    assert studies[0]["00201208"]["Value"] == [len(synthetic["ct"]) + len(synthetic["ct_b"])]

    listed = orthanc.post(f"/dicom-web/servers/{name}/get", {"Uri": f"/studies/{study}/series"}).json()
    assert values(listed, "0020000E") == sorted(series)
    for series_uid, files in series.items():
        instances = orthanc.post(
            f"/dicom-web/servers/{name}/get",
            {"Uri": f"/studies/{study}/series/{series_uid}/instances"},
        ).json()
        assert values(instances, "00080018") == sorted(uids_of(path)[2] for path in files)
    # Query arguments pass through the plugin too.
    sop = uids_of(synthetic["ct"][2])[2]
    found = orthanc.post(
        f"/dicom-web/servers/{name}/get", {"Uri": "/instances", "Arguments": {"SOPInstanceUID": sop}}
    ).json()
    assert values(found, "00080018") == [sop]


def test_orthanc_asks_for_dicom_xml(orthanc: Orthanc, synthetic: dict[str, Any]) -> None:
    """Orthanc's plugin sends the Accept it is given (`HttpHeaders`) and gets PS3.19 XML for a search and a series'
    metadata: one NativeDicomModel part per match and per instance (PS3.18 Tables 10.4.4-1 and 10.6.4-1)."""
    from tests.e2e.test_dicom_xml import XML_PARTS, flatten, xml_parts

    study, series, _ = uids_of(synthetic["ct"][0])
    accept = {"Accept": XML_PARTS}
    for uri, count in (("/studies", 1), (f"/studies/{study}/series/{series}/metadata", len(synthetic["ct"]))):
        answer = orthanc.post(f"/dicom-web/servers/{server('path')}/get", {"Uri": uri, "HttpHeaders": accept})
        assert answer.status_code == 200, answer.text[:300]
        documents = xml_parts(answer)
        assert len(documents) == count
        assert all(flatten(document)["0020000D"] == ("UI", [study]) for document in documents)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_retrieve_study_into_orthanc_is_byte_identical(
    orthanc: Orthanc, synthetic: dict[str, Any], transport: str
) -> None:
    files = [*synthetic["ct"], *synthetic["ct_b"]]
    study = uids_of(files[0])[0]
    orthanc.clear()
    answer = orthanc.post(f"/dicom-web/servers/{server(transport)}/retrieve", {"Resources": [{"Study": study}]})
    assert answer.status_code == 200, answer.text
    assert int(answer.json()["ReceivedInstancesCount"]) == len(files)

    stored = orthanc.get("/instances").json()
    assert len(stored) == len(files)
    uploaded = {uids_of(path)[2]: path.read_bytes() for path in files}
    for instance in stored:
        data = orthanc.get(f"/instances/{instance}/file").content
        sop = orthanc.get(f"/instances/{instance}/simplified-tags").json()["SOPInstanceUID"]
        # Orthanc keeps the received file as is, so the whole chain (STOW, storage, multipart retrieve, Orthanc's
        # multipart parser) must hand over exactly the uploaded bytes.
        assert data == uploaded.pop(sop), sop
    assert uploaded == {}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stow_from_orthanc_with_a_write_token(orthanc: Orthanc, stack: RunningStack, transport: str) -> None:
    files = orthanc.stow_files[transport]
    study, series, _ = uids_of(files[0])
    resources = []
    for path in files:
        put = requests.post(f"{orthanc.url}/instances", data=path.read_bytes(), timeout=60)
        assert put.status_code == 200, put.text
        resources.append(put.json()["ParentSeries"])
    assert len(set(resources)) == 1

    answer = orthanc.post(f"/dicom-web/servers/{server(transport, upload=True)}/stow", {"Resources": resources[:1]})
    assert answer.status_code == 200, f"{answer.text}\n{orthanc.log.read_text(errors='replace')[-2000:]}"
    assert int(answer.json()["InstancesCount"]) == len(files)

    # What the gateway now holds, asked with the API key: the series, instance by instance, byte for byte.
    root = f"{stack.url}/dicomweb"
    listed = requests.get(f"{root}/studies/{study}/series/{series}/instances", headers=stack.api_headers, timeout=30)
    assert listed.status_code == 200, listed.text
    assert values(listed.json(), "00080018") == sorted(uids_of(path)[2] for path in files)
    for path in files:
        sop = uids_of(path)[2]
        got = requests.get(
            f"{root}/studies/{study}/series/{series}/instances/{sop}",
            headers={**stack.api_headers, "Accept": "application/dicom"},
            timeout=30,
        )
        assert got.status_code == 200
        assert got.headers["Content-Type"] == "application/dicom"
        assert got.content == path.read_bytes()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_orthanc_gets_a_series_and_a_study_rendered(
    orthanc: Orthanc, stack: RunningStack, synthetic: dict[str, Any], transport: str
) -> None:
    """The plugin's `/get` of `/studies/{st}[/series/{se}]/rendered` (which Orthanc itself serves with one instance's
    rendering) was the gateway's JSON 404, passed on as Orthanc's error: it is the representative image's rendering,
    the series' middle image, the study's first series' (README, HTTP API)."""
    study, series, _ = uids_of(synthetic["ct"][0])
    by_series = {uids_of(files[0])[1]: files for files in (synthetic["ct"], synthetic["ct_b"])}
    first = by_series[min(by_series)]  # both are Series Number 2: listed by Series Instance UID then

    def rendered(files: list[Path]) -> bytes:
        _, series_uid, sop = uids_of(files[len(files) // 2])
        answer = requests.get(
            f"{stack.url}/dicomweb/studies/{study}/series/{series_uid}/instances/{sop}/rendered",
            headers=stack.api_headers,
            timeout=30,
        )
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/jpeg")
        return answer.content

    wholes = ((f"/studies/{study}/series/{series}/rendered", synthetic["ct"]), (f"/studies/{study}/rendered", first))
    for uri, files in wholes:
        answer = orthanc.post(f"/dicom-web/servers/{server(transport)}/get", {"Uri": uri})
        assert answer.status_code == 200, answer.text[:300]
        assert answer.content == rendered(files), uri
