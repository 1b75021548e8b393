"""DWV (npm `dwv`, unmodified, installed by `npm ci` in tests/e2e/dwv/) in Debian's Chromium against the token root.

A static page from another origin (`http://localhost:P`, allowed by `DICOMGW_CORS_ORIGINS`; the gateway is
`http://127.0.0.1:Q`) loads one instance and a whole series with DWV's own URL loading, by WADO-URI and by WADO-RS
(DWV's multipart loader for the series), and hands back what DWV decoded: size, per-slice SOP Instance UID, every
stored value and a few rescaled ones. The test compares them with pydicom's decode of the uploaded files, and checks
from both ends (the browser's request events and NGINX's access log) that no preflight was ever sent: every request
is CORS-simple, and really cross-origin (each carried `Origin` and was answered with that origin allowed).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.e2e.conftest import uids_of
from tests.e2e.harness import LoopbackPageServer, RunningStack, folder_page_server, start_stack
from tests.e2e.test_viewer import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, NetworkLog, playwright_sync
from tests.requirements import require

pytestmark = [pytest.mark.browser, pytest.mark.third_party]

PAGE_DIR = Path(__file__).resolve().parent / "dwv"
SERIES_ACCEPT = "multipart/related; type=application/dicom; transfer-syntax=*"  # unquoted: CORS-safelisted

require(
    (PAGE_DIR / "node_modules" / "dwv" / "dist" / "dwv.min.js").exists(),
    "DWV is not installed: run `make dwv` (npm ci in tests/e2e/dwv)",
    module=True,
)



@pytest.fixture(scope="module")
def page_server() -> Iterator[LoopbackPageServer]:
    with folder_page_server(PAGE_DIR) as server:
        yield server


@pytest.fixture(scope="module")
def dwv_stack(
    tmp_path_factory: pytest.TempPathFactory, synthetic: dict[str, Any], page_server: LoopbackPageServer
) -> Iterator[RunningStack]:
    """A stack (file backend) whose only CORS origin is the page's, with the CT series stored."""
    running = start_stack(tmp_path_factory.mktemp("dwv"), "file", None, DICOMGW_CORS_ORIGINS=page_server.origin)
    try:
        assert running.stow(list(synthetic["ct"])).status_code == 200
        yield running
    finally:
        running.stack.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def load(
    chromium: Any, page_server: LoopbackPageServer, urls: list[str], accept: str | None, name: str
) -> tuple[Any, Any]:
    """Open the page, let DWV load ``urls``; returns (what DWV decoded, every request the page sent)."""
    log = NetworkLog()
    context = chromium.new_context(viewport={"width": 600, "height": 600})
    page = context.new_page()
    page.set_default_timeout(30_000)
    log.attach(page)
    # Playwright's request events leave CORS preflights out; the DevTools protocol reports them (type "Preflight").
    wire: list[tuple[str, str, str]] = []
    cdp = context.new_cdp_session(page)
    cdp.on(
        "Network.requestWillBeSent",
        lambda e: wire.append((e["request"]["method"], e["request"]["url"], e.get("type", ""))),
    )
    cdp.send("Network.enable")
    responses: dict[str, Any] = {}
    page.on("response", lambda response: responses.setdefault(response.url, response))
    page.goto(f"{page_server.origin}/index.html")
    page.wait_for_function("() => window.dwvReady === true")
    headers = [{"name": "Accept", "value": accept}] if accept else []
    try:
        result = page.evaluate("([urls, headers]) => window.loadWithDwv(urls, headers)", [urls, headers])
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"dwv-{name}.png"))
    assert [m for m in log.console if m.startswith("pageerror")] == []
    gateway = [
        (method, url, sent, responses[url].all_headers() if url in responses else {})
        for method, url, sent in log.headers()
        if not url.startswith(page_server.origin)
    ]
    context.close()
    preflights = [(method, url) for method, url, kind in wire if method == "OPTIONS" or kind == "Preflight"]
    assert preflights == [], "the browser sent a CORS preflight"
    assert [url for method, url, _ in wire if not url.startswith(page_server.origin)], "CDP saw no gateway request"
    return result, gateway


def assert_decoded_like_pydicom(result: dict[str, Any], files: list[Path]) -> None:
    by_uid = {uids_of(path)[2]: pydicom.dcmread(path) for path in files}
    first = next(iter(by_uid.values()))
    columns, rows = int(first.Columns), int(first.Rows)
    assert result["size"] == [columns, rows, len(files)]
    assert sorted(result["uids"]) == sorted(by_uid)
    dtype = {"Uint16Array": np.uint16, "Int16Array": np.int16, "Uint8Array": np.uint8, "Int8Array": np.int8}
    stored = np.frombuffer(base64.b64decode(result["data"]), dtype=dtype[result["type"]])
    assert stored.size == columns * rows * len(files)
    for k, uid in enumerate(result["uids"]):
        dataset = by_uid[uid]
        expected = dataset.pixel_array
        got = stored[k * rows * columns : (k + 1) * rows * columns].reshape(rows, columns)
        assert np.array_equal(got, expected), f"slice {k} ({uid}): DWV's values differ from pydicom's"
        slope, intercept = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
        corner, centre = expected[0, 0], expected[rows >> 1, columns >> 1]
        assert result["rescaled"][k] == [float(corner) * slope + intercept, float(centre) * slope + intercept]


def assert_cors_simple(gateway: list[tuple[str, str, dict[str, str], dict[str, str]]], origin: str, count: int) -> None:
    """Exactly ``count`` GETs, no preflight; each cross-origin (sent with Origin) and allowed for that origin."""
    assert [url for method, url, _, _ in gateway if method != "GET"] == []
    assert len(gateway) == count, [url for _, url, _, _ in gateway]
    for _, url, sent, answered in gateway:
        assert sent.get("origin") == origin, url
        assert "authorization" not in sent
        assert answered.get("access-control-allow-origin") == origin, url


def wado_uri(stack: RunningStack, token: str, path: Path) -> str:
    study, series, sop = uids_of(path)
    return (
        f"{stack.root(token)}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
        "&contentType=application%2Fdicom"
    )


def wado_rs(stack: RunningStack, token: str, path: Path, level: str) -> str:
    study, series, sop = uids_of(path)
    url = f"{stack.root(token)}/studies/{study}/series/{series}"
    return f"{url}/instances/{sop}" if level == "instance" else url


@pytest.mark.parametrize(
    ("protocol", "level"),
    [("wado-uri", "instance"), ("wado-uri", "series"), ("wado-rs", "instance"), ("wado-rs", "series")],
)
def test_dwv_decodes_what_pydicom_decodes_without_preflight(
    dwv_stack: RunningStack,
    synthetic: dict[str, Any],
    chromium: Any,
    page_server: LoopbackPageServer,
    protocol: str,
    level: str,
) -> None:
    files: list[Path] = list(synthetic["ct"]) if level == "series" else [synthetic["ct"][2]]
    issued = dwv_stack.issue([uids_of(files[0])[0]], sub="dwv")
    token = issued["token"]
    if protocol == "wado-uri":  # one URL per instance, as DWV users list them
        urls, accept = [wado_uri(dwv_stack, token, path) for path in files], None
    elif level == "instance":
        urls, accept = [wado_rs(dwv_stack, token, files[0], "instance")], "application/dicom"
    else:  # the whole series in one multipart response
        urls, accept = [wado_rs(dwv_stack, token, files[0], "series")], SERIES_ACCEPT

    result, gateway = load(chromium, page_server, urls, accept, f"{protocol}-{level}")

    assert_decoded_like_pydicom(result, files)
    assert_cors_simple(gateway, page_server.origin, count=len(urls))
    # NGINX saw the same: only GETs for this token, every one a success, and no OPTIONS at all on this stack (a
    # preflight carries no credentials, so it would not be logged under the token).
    dwv_stack.settle_access_log()
    seen = [(e["method"], e["status"]) for e in dwv_stack.access_log() if e.get("jti") == issued["jti"]]
    assert seen == [("GET", 200)] * len(urls)
    assert [e["uri"] for e in dwv_stack.access_log() if e["method"] == "OPTIONS"] == []
