"""The Python dicomweb-client package, unmodified, pointed at the token root `/t/{token}/dicomweb`: what a
third-party DICOMweb client sees of every level, on both storage backends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from gateway.tools.synth import make_series, wsi_tile
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack


@pytest.fixture(scope="module")
def ct_client(stack: RunningStack, synthetic: dict[str, Any]) -> DICOMwebClient:
    study = uids_of(synthetic["ct"][0])[0]
    token = stack.issue([study], actions=["read", "write"])["token"]
    return DICOMwebClient(url=stack.root(token))


def test_search_each_level(ct_client: DICOMwebClient, synthetic: dict[str, Any]) -> None:
    study, series, sop = uids_of(synthetic["ct"][0])
    studies = ct_client.search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in studies] == [study]
    series_list = ct_client.search_for_series(study_instance_uid=study)
    assert series in {s["0020000E"]["Value"][0] for s in series_list}
    instances = ct_client.search_for_instances(study_instance_uid=study, series_instance_uid=series)
    assert sop in {i["00080018"]["Value"][0] for i in instances}
    filtered = ct_client.search_for_instances(search_filters={"SOPInstanceUID": sop})
    assert [i["00080018"]["Value"][0] for i in filtered] == [sop]


def test_retrieve_study_series_instance(ct_client: DICOMwebClient, synthetic: dict[str, Any]) -> None:
    path = synthetic["ct"][0]
    study, series, sop = uids_of(path)
    source = pydicom.dcmread(path)
    instance = ct_client.retrieve_instance(study, series, sop)
    assert instance.SOPInstanceUID == sop
    assert instance.PixelData == source.PixelData
    series_datasets = ct_client.retrieve_series(study, series)
    assert len(series_datasets) == len(synthetic["ct"])
    study_datasets = ct_client.retrieve_study(study)
    assert len(study_datasets) == len(synthetic["ct"]) + len(synthetic["ct_b"])


def test_metadata_frames_and_bulkdata(ct_client: DICOMwebClient, synthetic: dict[str, Any]) -> None:
    path = synthetic["ct"][1]
    study, series, sop = uids_of(path)
    pixels = pydicom.dcmread(path).PixelData
    metadata = ct_client.retrieve_instance_metadata(study, series, sop)
    assert metadata["00080018"]["Value"] == [sop]
    assert len(ct_client.retrieve_series_metadata(study, series)) == len(synthetic["ct"])
    assert len(ct_client.retrieve_study_metadata(study)) == len(synthetic["ct"]) + len(synthetic["ct_b"])
    [frame] = ct_client.retrieve_instance_frames(study, series, sop, frame_numbers=[1])
    assert frame == pixels
    # the URI exactly as the metadata gives it: absolute, under the client's root (a relative one made the
    # unmodified client fail with MissingSchema)
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri == f"{ct_client.base_url}/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010"
    [bulk] = ct_client.retrieve_bulkdata(uri)
    assert bulk == pixels
    # a byte range: the client asks multipart with a Range and reads the one part (it got the whole value)
    [part] = ct_client.retrieve_bulkdata(uri, byte_range=(100, 1099))
    assert part == pixels[100:1100]
    [tail] = ct_client.retrieve_bulkdata(uri, byte_range=(len(pixels) - 10, len(pixels) - 1))
    assert tail == pixels[-10:]
    for instance_metadata in ct_client.retrieve_series_metadata(study, series):
        [bulk] = ct_client.retrieve_bulkdata(instance_metadata["7FE00010"]["BulkDataURI"])
        assert len(bulk) == len(pixels)


def test_retrieve_series_rendered(ct_client: DICOMwebClient, synthetic: dict[str, Any]) -> None:
    """``retrieve_series_rendered`` was an HTTPError 404 (no series-level /rendered): the series is now rendered as
    its middle image (README, HTTP API), with the media type and parameters the client passes."""
    study, series, _ = uids_of(synthetic["ct"][0])
    middle = uids_of(synthetic["ct"][len(synthetic["ct"]) // 2])[2]
    asked: list[tuple[Any, Any]] = [(None, None), (("image/png",), {"viewport": "64,64"})]
    asked.append((("image/jpeg",), {"quality": 30}))
    for media_types, params in asked:
        rendered = ct_client.retrieve_series_rendered(study, series, media_types=media_types, params=params)
        assert rendered[:4] in (b"\xff\xd8\xff\xe0", b"\x89PNG")
        assert rendered == ct_client.retrieve_instance_rendered(
            study, series, middle, media_types=media_types, params=params
        )


def test_a_query_token_in_the_sessions_parameters(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    """The query transport as requests carries it for every call, ``Session.params``: the client then adds the
    token again to a BulkDataURI or RetrieveURL that already ends with ``?token=`` (README, Tokens), and the same
    token twice was the 401 ``token_invalid``, every bulk data and RetrieveURL read refused. It is that token; two
    different tokens are still refused."""
    path = synthetic["ct"][2]
    study, series, sop = uids_of(path)
    token = stack.issue([study], sub="session-params")["token"]
    session = requests.Session()
    session.params = {"token": token}
    client = DICOMwebClient(url=f"{stack.url}/dicomweb", session=session)
    [found] = client.search_for_instances(search_filters={"SOPInstanceUID": sop})
    retrieve_url = found["00081190"]["Value"][0]
    assert retrieve_url.endswith(f"?token={token}")
    metadata = client.retrieve_instance_metadata(study, series, sop)
    bulk = metadata["7FE00010"]["BulkDataURI"]
    assert bulk.endswith(f"/bulkdata/7FE00010?token={token}")
    assert client.retrieve_bulkdata(bulk) == [pydicom.dcmread(path).PixelData]
    instance = session.get(retrieve_url, headers={"Accept": "application/dicom"}, timeout=30)
    assert instance.request.url is not None and instance.request.url.count("token=") == 2
    assert (instance.status_code, instance.headers["Content-Type"]) == (200, "application/dicom")
    assert instance.content == path.read_bytes()

    other = stack.issue([study], sub="session-params")["token"]
    refused = requests.get(f"{bulk}&token={other}", timeout=30)
    assert (refused.status_code, refused.json()) == (
        401, {"error": "token_invalid", "detail": "more than one token in the query"})


def test_wsi_frame_list(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    study, series, sop = uids_of(synthetic["wsi_eot"])
    client = DICOMwebClient(url=stack.root(stack.issue([study])["token"]))
    frames = client.retrieve_instance_frames(
        study, series, sop, frame_numbers=[1, 150, 300], media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),)
    )
    assert frames == [wsi_tile(15, n, frames=300) for n in (1, 150, 300)]


def test_store(stack: RunningStack, tmp_path: Path) -> None:
    [path] = make_series(tmp_path, modality="CT", slices=1, seed=61, clean=True)  # a study of its own
    dataset = pydicom.dcmread(path)
    token = stack.issue([dataset.StudyInstanceUID], actions=["read", "write"])["token"]
    client = DICOMwebClient(url=stack.root(token))
    response = client.store_instances([dataset])
    assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dataset.SOPInstanceUID
    assert "FailedSOPSequence" not in response
    [stored] = client.search_for_instances(search_filters={"SOPInstanceUID": dataset.SOPInstanceUID})
    assert stored["0020000D"]["Value"] == [dataset.StudyInstanceUID]


def test_store_to_the_study_with_a_series_token(stack: RunningStack, tmp_path: Path) -> None:
    """``store_instances(..., study_instance_uid=st)`` POSTs to ``/studies/{st}`` (PS3.18 10.5.1). With a token
    scoped to one series of the study that was the 403 ``out_of_scope`` for the whole request, while the same body
    POSTed to ``/studies`` stored the series: each instance is now checked against the scope as it is stored, as
    there, so the series' instances are stored and one of another series fails alone (README, Tokens)."""
    seed = 2141 if stack.backend == "file" else 2143
    inside = make_series(tmp_path / "in", modality="MR", slices=2, rows=32, columns=32, seed=seed, clean=True)
    study, series, _ = uids_of(inside[0])
    [outside] = make_series(tmp_path / "out", modality="CT", slices=1, rows=32, columns=32, seed=seed, clean=True,
                            study_uid=study)  # fmt: skip
    assert uids_of(outside)[1] != series
    token = stack.issue([study], series=[series], actions=["read", "write"], sub="series-upload")["token"]
    client = DICOMwebClient(url=stack.root(token))
    datasets = [pydicom.dcmread(path) for path in (*inside, outside)]
    with pytest.raises(requests.HTTPError) as refused:  # nothing of the series' own: the 409, not the 403
        client.store_instances(datasets[2:], study_instance_uid=study)
    assert refused.value.response.status_code == 409
    response = client.store_instances(datasets, study_instance_uid=study)
    assert [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence] == [
        uids_of(path)[2] for path in inside
    ]
    [failed] = response.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == uids_of(outside)[2]
    # each attempt is on record in the ingest audit: who tried to store which instance where its token does not
    # reach (the access trail names the two STOWs only)
    audit = requests.get(
        f"{stack.url}/api/v1/admin/audit",
        params={"sop_uid": uids_of(outside)[2]},
        headers=stack.api_headers,
        timeout=10,
    ).json()["items"]
    assert [(i["decision"], i["sub"], i["source"], i["study_uid"], i["tags"]) for i in audit] == [
        ("out-of-scope", "series-upload", "stow", study, [])
    ] * 2
    for path in inside:
        assert client.retrieve_instance(*uids_of(path)) == pydicom.dcmread(path)
    # another study is still outside the token, whatever the body holds
    with pytest.raises(requests.HTTPError) as other:
        client.store_instances(datasets[:1], study_instance_uid=uids_of(stack.uploaded["files"][0])[0])
    assert other.value.response.status_code == 403
    assert other.value.response.json() == {"error": "out_of_scope", "detail": "study outside the token's scope"}


def test_an_empty_value_among_several_is_null(stack: RunningStack, tmp_path: Path) -> None:
    """PS3.18 F.2.5: an empty value of a multi-valued attribute is a null array element (it was ""). The
    unmodified client reads the metadata back into the values the file holds."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=32, columns=32, seed=2131, clean=True)
    dataset = pydicom.dcmread(path)
    dataset.ImageType = ["ORIGINAL", "", "AXIAL"]
    study, series, sop = dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    client = DICOMwebClient(url=stack.root(stack.issue([study], actions=["read", "write"])["token"]))
    assert "FailedSOPSequence" not in client.store_instances([dataset])
    metadata = client.retrieve_instance_metadata(study, series, sop)
    assert metadata["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}
    assert pydicom.Dataset.from_json({"00080008": metadata["00080008"]}).ImageType == ["ORIGINAL", "", "AXIAL"]


@pytest.mark.parametrize(
    ("name", "legacy"), [("MR_small_RLE.dcm", "image/x-dicom-rle"), ("JPEGLSNearLossless_08.dcm", "image/x-jls")]
)
def test_frames_under_the_legacy_media_type_names(stack: RunningStack, name: str, legacy: str) -> None:
    """dicomweb-client lists image/x-dicom-rle and image/x-jls beside the registered names (PS3.18 Table 8.7.3-5):
    asked for by the legacy name, the frames are served (they were a 406), labelled with the registered name."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    study, series, sop = dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    client = DICOMwebClient(url=stack.root(stack.issue([study], actions=["read", "write"])["token"]))
    assert "FailedSOPSequence" not in client.store_instances([dataset])
    count = int(dataset.get("NumberOfFrames") or 1)
    expected = list(generate_frames(dataset.PixelData, number_of_frames=count))
    frames = client.retrieve_instance_frames(study, series, sop, [1], media_types=((legacy,),))
    assert frames == expected[:1]
    answer = requests.get(
        f"{client.base_url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
        headers={"Accept": f'multipart/related; type="{legacy}"'},
        timeout=30,
    )
    assert answer.status_code == 200
    registered = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}[legacy]
    assert answer.headers["Content-Type"].startswith(f'multipart/related; type="{registered}"; boundary=')


def test_study_and_series_includefields_beyond_the_stored_attributes(stack: RunningStack, tmp_path: Path) -> None:
    """PS3.18 8.3.4.3: includefield asks for attributes beyond the defaults. At study and series level they were
    looked up only in the few attributes stored per study or series, so PatientAge or InstitutionName never came
    back. They come from an instance of the study (series) the token may see, for the attributes of that level
    only: an image's own attributes (Slice Thickness) are no study's."""
    first = make_series(tmp_path / "a", modality="CT", slices=1, rows=16, columns=16, seed=2121, clean=True)
    other = make_series(tmp_path / "b", modality="CT", slices=1, rows=16, columns=16, seed=2122, clean=True)
    datasets = [pydicom.dcmread(path) for path in (*first, *other)]
    study = datasets[0].StudyInstanceUID
    for n, dataset in enumerate(datasets):
        dataset.StudyInstanceUID = study
        dataset.PatientAge, dataset.PatientWeight = "042Y", str(80 + 10 * n)
        dataset.InstitutionName, dataset.SliceThickness = f"Hospital {n}", "2.5"
    client = DICOMwebClient(url=stack.root(stack.issue([study], actions=["read", "write"])["token"]))
    assert "FailedSOPSequence" not in client.store_instances(datasets)
    [found] = client.search_for_studies(
        search_filters={"StudyInstanceUID": study}, fields=["PatientAge", "00101030", "SliceThickness"]
    )
    assert found["00101010"] == {"vr": "AS", "Value": ["042Y"]}
    assert found["00101030"]["Value"][0] in (80, 90)
    assert "00180050" not in found
    listed = client.search_for_series(study, fields=["InstitutionName"])
    series = {item["0020000E"]["Value"][0]: item for item in listed}
    for n, dataset in enumerate(datasets):
        assert series[dataset.SeriesInstanceUID]["00080080"] == {"vr": "LO", "Value": [f"Hospital {n}"]}
    # a series token's study row is made from its own series only
    second = datasets[1].SeriesInstanceUID
    narrow = DICOMwebClient(url=stack.root(stack.issue([study], series=[second])["token"]))
    [seen] = narrow.search_for_studies(search_filters={"StudyInstanceUID": study}, fields=["PatientWeight"])
    assert seen["00101030"] == {"vr": "DS", "Value": [90]}
    # includefield=all at study level: the study's attributes, never one instance's
    [every] = client.search_for_studies(search_filters={"StudyInstanceUID": study}, fields=["all"])
    assert "00080018" not in every and "00180050" not in every


def test_implicit_vr_frames_and_bulkdata_are_explicit_vr_little_endian(stack: RunningStack, tmp_path: Path) -> None:
    """PS3.18 8.7.3.3.1 (Table 8.7.3-4): uncompressed frames and bulkdata are little-endian bytes named Explicit VR
    Little Endian, the syntax dicomweb-client asks for. An implicit VR file holds the same pixel bytes, so asking for
    them by that name is no transcoding (it was a 406, and the parts were labelled 1.2.840.10008.1.2)."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=64, columns=64, seed=164, clean=True)
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    study, series, sop = dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    client = DICOMwebClient(url=stack.root(stack.issue([study], actions=["read", "write"])["token"]))
    assert "FailedSOPSequence" not in client.store_instances([dataset])
    explicit = ("application/octet-stream", "1.2.840.10008.1.2.1")
    assert client.retrieve_instance_frames(study, series, sop, [1], media_types=(explicit,)) == [dataset.PixelData]
    base = f"{client.base_url}/studies/{study}/series/{series}/instances/{sop}"
    assert client.retrieve_bulkdata(f"{base}/bulkdata/7FE00010", media_types=(explicit,)) == [dataset.PixelData]
    single = requests.get(f"{base}/frames/1", headers={"Accept": "application/octet-stream"}, timeout=30)
    assert single.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert single.content == dataset.PixelData
    # PS3.18 8.7.3: Implicit VR Little Endian "shall not be used with Web Services"; no frame is sent under its name.
    implicit = requests.get(
        f"{base}/frames/1", headers={"Accept": f"{explicit[0]}; transfer-syntax=1.2.840.10008.1.2"}, timeout=30
    )
    assert implicit.status_code == 406
    # The instance itself is still the stored implicit VR file.
    [whole] = client.retrieve_study(study)
    assert whole.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian


# -- the `dicomweb_client` command-line tool, unmodified, as a subprocess ------------------------------------------
# It always sends `Authorization: Bearer <--bearer-token>` ("Bearer None" without the option), so both ways of
# pointing it at the gateway rely on the Authorization-bearer token transport.

CLI = Path(sys.executable).parent / "dicomweb_client"
CLI_TRANSPORTS = ["path", "bearer"]


def cli_args(stack: RunningStack, token: str, transport: str) -> list[str]:
    if transport == "path":
        return [str(CLI), "--url", stack.root(token)]  # the token root, as a user would paste it
    return [str(CLI), "--url", f"{stack.url}/dicomweb", "--bearer-token", token]


def run_cli(base: list[str], *args: str) -> str:
    done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, check=False)
    # The tool logs the HTTP error (with the URL) and exits 1: keep its words in the failure, not the token.
    token = base[-1] if "--bearer-token" in base else base[2].split("/t/")[1].split("/")[0]
    stderr = done.stderr.replace(token, "***")[-2000:]
    assert done.returncode == 0, f"dicomweb_client {' '.join(args)} exited {done.returncode}: {stderr}"
    return done.stdout


@pytest.mark.third_party
@pytest.mark.parametrize("transport", CLI_TRANSPORTS)
def test_cli_search_metadata_and_retrieve(
    stack: RunningStack, synthetic: dict[str, Any], transport: str, tmp_path: Path
) -> None:
    ct, ct_b = synthetic["ct"], synthetic["ct_b"]
    study, series, _ = uids_of(ct[0])
    token = stack.issue([study], sub="cli")["token"]
    base = cli_args(stack, token, transport)

    studies = json.loads(run_cli(base, "search", "studies"))
    assert [s["0020000D"]["Value"] for s in studies] == [[study]]
    assert studies[0]["00201208"]["Value"] == [len(ct) + len(ct_b)]
    listed = json.loads(run_cli(base, "search", "series", "--study", study))
    assert sorted(s["0020000E"]["Value"][0] for s in listed) == sorted([series, uids_of(ct_b[0])[1]])
    instances = json.loads(run_cli(base, "search", "instances", "--study", study, "--series", series))
    assert sorted(i["00080018"]["Value"][0] for i in instances) == sorted(uids_of(p)[2] for p in ct)

    path = ct[3]
    _, _, sop = uids_of(path)
    source = pydicom.dcmread(path)
    where = ["--study", study, "--series", series, "--instance", sop]
    metadata = json.loads(run_cli(base, "retrieve", "instances", *where, "metadata"))
    assert metadata["00080018"]["Value"] == [sop]
    assert metadata["00280010"]["Value"] == [source.Rows] and metadata["00280011"]["Value"] == [source.Columns]
    root = stack.root(token) if transport == "path" else f"{stack.url}/dicomweb"
    bulk = f"{root}/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010"
    assert metadata["7FE00010"]["BulkDataURI"] == bulk
    series_metadata = json.loads(run_cli(base, "retrieve", "series", "--study", study, "--series", series, "metadata"))
    assert sorted(m["00080018"]["Value"][0] for m in series_metadata) == sorted(uids_of(p)[2] for p in ct)

    # The instance, saved by the tool (it re-encodes with pydicom): the same data set, the same pixels.
    run_cli(base, "retrieve", "instances", *where, "full", "--save", "--output-dir", str(tmp_path))
    saved = pydicom.dcmread(tmp_path / f"{sop}.dcm")
    assert saved == source
    assert saved.PixelData == source.PixelData
    # Frame 1, saved raw: exactly the stored native pixel bytes.
    run_cli(base, "retrieve", "instances", *where, "frames", "--numbers", "1", "--save", "--output-dir", str(tmp_path))
    assert (tmp_path / f"{sop}_1.dat").read_bytes() == source.PixelData


@pytest.mark.third_party
def test_cli_jpeg_frames_of_a_slide(stack: RunningStack, synthetic: dict[str, Any], tmp_path: Path) -> None:
    study, series, sop = uids_of(synthetic["wsi_bot"])
    base = cli_args(stack, stack.issue([study], sub="cli")["token"], "path")
    run_cli(
        base,
        *("retrieve", "instances", "--study", study, "--series", series, "--instance", sop, "frames"),
        *("--numbers", "2", "300", "--media-type", "image/jpeg", "1.2.840.10008.1.2.4.50"),
        *("--save", "--output-dir", str(tmp_path)),
    )
    for number in (2, 300):
        assert (tmp_path / f"{sop}_{number}.jpg").read_bytes() == wsi_tile(13, number, frames=300)


def test_metadata_of_repeated_values_under_other_character_sets(stack: RunningStack, tmp_path: Path) -> None:
    """One STOW of slices that repeat their values (what ingest converts once per process: README, "A value
    converted once is not converted again"), two of them with the same name bytes under another character set,
    and a DS that overflows: what dicomweb-client reads back is pydicom's own reading of each file, and the body
    is strict JSON (a browser's ``JSON.parse`` refuses ``Infinity``)."""
    first, *others = make_series(tmp_path / "src", modality="CT", slices=4, rows=32, columns=32, seed=190, clean=True)
    files = []
    for number, path in enumerate([first, *others], start=1):
        dataset = pydicom.dcmread(path)
        dataset.SpecificCharacterSet = "ISO_IR 192"
        dataset.PatientName = "Müller^Jürgen"
        dataset.SliceThickness = "12345"
        data = _written(dataset, tmp_path / f"{number}.dcm")
        if number > 2:  # the same bytes, read as Latin-1: "MÃ¼ller^JÃ¼rgen"
            data = data.replace(b"ISO_IR 192", b"ISO_IR 100")
        if number == 4:
            data = data.replace(b"12345 ", b"1e999 ")
        (tmp_path / f"{number}.dcm").write_bytes(data)
        files.append(tmp_path / f"{number}.dcm")
    study, series, _ = uids_of(files[0])
    answer = stack.stow(files)
    assert answer.status_code == 200, answer.text
    client = DICOMwebClient(url=stack.root(stack.issue([study])["token"]))
    by_sop = {item["00080018"]["Value"][0]: item for item in client.retrieve_series_metadata(study, series)}
    for number, path in enumerate(files, start=1):
        source = pydicom.dcmread(path)
        stored = by_sop[source.SOPInstanceUID]
        name = "Müller^Jürgen" if number <= 2 else "MÃ¼ller^JÃ¼rgen"
        assert str(source.PatientName) == name
        assert stored["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": name}]}
        assert stored["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192" if number <= 2 else "ISO_IR 100"]}
        assert stored["00180050"] == {"vr": "DS", "Value": [12345 if number < 4 else "1e999"]}

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    raw = requests.get(
        f"{client.base_url}/studies/{study}/series/{series}/metadata",
        headers={"Accept": "application/dicom+json"},
        timeout=30,
    )
    assert raw.status_code == 200
    assert len(json.loads(raw.content, parse_constant=refuse)) == 4


def test_metadata_of_an_overflowing_ds_beside_an_integer_beyond_64_bits(stack: RunningStack, tmp_path: Path) -> None:
    """A Window Center that overflows a float (DS "1e400") in an instance that also holds an integer orjson cannot
    write (IS "99999999999999999999", over-long): the metadata is still strict JSON, each value its own text (PS3.18
    Table F.2.3-1 allows a String for DS and IS; they were null and 100000000000000000000).
    The standard library's fallback wrote ``Infinity`` there, which a browser's ``JSON.parse`` (dicomweb-client in
    OHIF, the bundled viewer) refuses: the series' metadata could not be read at all."""
    [path] = make_series(tmp_path / "src", modality="CT", slices=1, rows=32, columns=32, seed=191, clean=True)
    dataset = pydicom.dcmread(path)
    dataset.WindowCenter, dataset.WindowWidth, dataset.InstanceNumber = "12345", "400", "987654321"
    data = _written(dataset, tmp_path / "huge.dcm")
    data = data.replace(b"12345 ", b"1e400 ").replace(b"987654321 ", b"99999999999999999999")
    data = data.replace(b"IS\x0a\x00" + b"99999999999999999999", b"IS\x14\x00" + b"99999999999999999999")
    (tmp_path / "huge.dcm").write_bytes(data)
    study, series, sop = uids_of(tmp_path / "huge.dcm")
    assert stack.stow([tmp_path / "huge.dcm"]).status_code == 200

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    root = stack.root(stack.issue([study])["token"])
    for url in (f"{root}/studies/{study}/series/{series}/metadata", f"{root}/studies/{study}/metadata"):
        raw = requests.get(url, headers={"Accept": "application/dicom+json"}, timeout=30)
        assert raw.status_code == 200
        [item] = json.loads(raw.content, parse_constant=refuse)
        assert item["00080018"] == {"vr": "UI", "Value": [sop]}
        assert item["00281050"] == {"vr": "DS", "Value": ["1e400"]}
        assert item["00281051"] == {"vr": "DS", "Value": [400]}
        assert item["00200013"] == {"vr": "IS", "Value": ["99999999999999999999"]}


def _written(dataset: pydicom.Dataset, path: Path) -> bytes:
    dataset.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_search_by_a_name_with_its_ideographic_and_phonetic_groups(stack: RunningStack, tmp_path: Path) -> None:
    """A Japanese name has three component groups (PS3.5 H.3); a client searching by the name as pydicom reads it
    from the file got no study, since the catalog keeps the alphabetic group only. The name is matched on its
    alphabetic group; a name that gives none is a 400, never an empty answer that looks like "no such patient"."""
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=7612, clean=True)
    dataset = pydicom.dcmread(path)
    dataset.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    dataset.PatientName = name
    dataset.save_as(path, enforce_file_format=True)
    assert stack.stow([path]).status_code == 200
    study = uids_of(path)[0]
    client = DICOMwebClient(url=stack.root(stack.issue([study])["token"]))
    read = str(pydicom.dcmread(path).PatientName)
    assert read == name
    for value in (read, "YAMADA^TAROU=山田^太郎", "yamada*=山田*"):
        found = client.search_for_studies(search_filters={"PatientName": value})
        assert [s["0020000D"]["Value"][0] for s in found] == [study], value
        assert found[0]["00100010"]["Value"] == [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
        ]
    for value in ("=山田^太郎", "*=山田*"):  # nothing asked of the alphabetic group: no answer could be right
        answer = requests.get(f"{client.base_url}/studies", params={"PatientName": value}, timeout=30)
        assert answer.status_code == 400 and answer.headers["Content-Type"] == "application/json", value
        assert "alphabetic component group" in answer.json()["detail"]
    assert len(client.search_for_studies(search_filters={"PatientName": "*=*"})) == 1  # universal, as "*"
