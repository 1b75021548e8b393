"""Fixtures for the end-to-end tests: one real stack per storage backend per session, synthetic data made once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.tools.synth import make_series, make_wsi
from tests.e2e.harness import RunningStack, nginx_alarms, nginx_start_warnings, start_stack
from tests.fixtures.servers import MotoServer

BACKENDS = ["file", "s3"]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Small but complete synthetic data: a CT series, and whole-slide instances for every index variant."""
    base = tmp_path_factory.mktemp("synthetic")
    ct = make_series(base / "ct", modality="CT", slices=6, seed=11, clean=True)
    study = uids_of(ct[0])[0]
    data: dict[str, Any] = {
        "ct": ct,
        # a second series in the same study, for series-scoped tokens
        "ct_b": make_series(base / "ct-b", modality="CT", slices=2, seed=19, clean=True, study_uid=study),
        "mr": make_series(base / "mr", modality="MR", slices=3, seed=12, clean=True),
        "wsi_bot": make_wsi(base / "wsi-bot", frames=300, offsets="bot", seed=13, clean=True),
        "wsi_empty": make_wsi(base / "wsi-empty", frames=300, offsets="empty", seed=14, clean=True),
        "wsi_eot": make_wsi(base / "wsi-eot", frames=300, offsets="eot", seed=15, clean=True),
        "wsi_frag": make_wsi(base / "wsi-frag", frames=200, offsets="bot", fragments_per_frame=3, seed=16, clean=True),
        "wsi_empty_frag": make_wsi(
            base / "wsi-empty-frag", frames=200, offsets="empty", fragments_per_frame=2, seed=17, clean=True
        ),
        "wsi_native": make_wsi(base / "wsi-native", frames=12, native=True, seed=18, clean=True),
    }
    return data


@pytest.fixture(scope="session", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, synthetic: dict[str, Any]
) -> Iterator[RunningStack]:
    """The real stack on one storage backend, with the synthetic data stored through STOW-RS."""
    backend = request.param
    moto: MotoServer | None = request.getfixturevalue("moto_server") if backend == "s3" else None
    running = start_stack(tmp_path_factory.mktemp(f"stack-{backend}"), backend, moto)
    try:
        assert not nginx_start_warnings(running), nginx_start_warnings(running)
        files = [*synthetic["ct"], *synthetic["ct_b"], *synthetic["mr"]] + [
            synthetic[k] for k in synthetic if k.startswith("wsi")
        ]
        answer = running.stow(files)
        assert answer.status_code == 200, answer.text
        running.uploaded["files"] = files
        yield running
    finally:
        running.stack.stop()
    # it ran for the whole session (NGINX's cache loader walks the caches a minute after the start)
    assert not nginx_alarms(running), nginx_alarms(running)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Attach the stack's server logs to a failing test."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "stack" in getattr(item, "funcargs", {}):
        running = item.funcargs["stack"]
        if isinstance(running, RunningStack):
            report.sections.append(("server logs", running.logs()))


def uids_of(path: Path) -> tuple[str, str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
