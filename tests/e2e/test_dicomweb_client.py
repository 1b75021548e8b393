"""The Python dicomweb-client package, unmodified, pointed at the token root `/t/{token}/dicomweb`: what a
third-party DICOMweb client sees of every level, on both storage backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from gateway.synth import make_series, wsi_tile
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
    base = f"{ct_client.base_url}/studies/{study}/series/{series}/instances/{sop}/"
    [bulk] = ct_client.retrieve_bulkdata(base + metadata["7FE00010"]["BulkDataURI"])
    assert bulk == pixels


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
