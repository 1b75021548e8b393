"""The bundled viewer as phones and portals really run it (session 22): real Chromium against the real stack, with
the network a phone has (3G, a few seconds offline mid-load through the DevTools protocol) and the storage outages
a server has (the local folder gone, as an unmounted volume: reads answer 503 or fail their transfer).

What a user must never get: a blank stage, a spinner that never ends, or an error screen that stays after the
network is back while the token is still good (the address bar no longer holds the token, so a reload cannot help:
the page is the only way back to the images).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.tools.synth import make_series, make_wsi
from gateway.tools.synth.tiles import _grid, _layout
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack, storage_unmounted
from tests.e2e.test_viewer import (  # noqa: F401 - browser is a fixture
    NetworkLog,
    assert_not_blank,
    browser,
    changed_fraction,
    open_page,
    settle,
    snap,
    wait_ready,
)

pytestmark = pytest.mark.browser

SLICES = 60
# a slide of more tiles than the viewer prefetches whole (PREFETCH_ALL in viewer/src/main.js): 20 rows of 32
TILES = 640
SLIDE_SEED = 31
# Chromium's "Slow 3G" preset, as DevTools applies it: 400 ms latency, ~50 KB/s each way.
SLOW_3G = {"offline": False, "latency": 400, "downloadThroughput": 50_000, "uploadThroughput": 50_000}
# a fast 3G phone: 150 ms latency, ~500 KB/s down
FAST_3G = {"offline": False, "latency": 150, "downloadThroughput": 500_000, "uploadThroughput": 100_000}
ONLINE = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
OFFLINE = {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0}


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningStack, str]]:
    """A stack of its own (file backend: its folder can be unmounted) holding one CT series of 40 small slices."""
    base = tmp_path_factory.mktemp("viewer-outside")
    files = make_series(base / "ct", modality="CT", slices=SLICES, rows=512, columns=512, seed=31, clean=True)
    running = start_stack(base / "var", "file", None)
    try:
        answer = running.stow(files)
        assert answer.status_code == 200, answer.text
        yield running, uids_of(files[0])[0]
    finally:
        running.stack.stop()


@pytest.fixture(scope="module")
def slide(outside: tuple[RunningStack, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[RunningStack, str]:
    """A whole-slide image of TILES tiles, stored in the same stack (a study of its own)."""
    running, _ = outside
    path = make_wsi(tmp_path_factory.mktemp("viewer-slide"), frames=TILES, seed=SLIDE_SEED, clean=True)
    answer = running.stow([path])
    assert answer.status_code == 200, answer.text
    return running, uids_of(path)[0]


def dataset(page: Any) -> dict[str, str]:
    result: dict[str, str] = page.evaluate("() => ({...document.getElementById('viewport').dataset})")
    return result


def wait_all_loaded(page: Any, timeout: float = 90_000) -> None:
    """Every frame settled (a failed one counts until it is asked again) and no outage message left."""
    page.wait_for_function(
        f"() => {{ const d = document.getElementById('viewport').dataset;"
        f" return d.state === 'ready' && d.loaded === '{SLICES}' && document.getElementById('progress').hidden"
        f" && document.getElementById('status').textContent === '' && document.getElementById('error').hidden; }}",
        timeout=timeout,
    )


def assert_every_slice_shows(page: Any, name: str) -> None:
    """The first and the last slice are on screen (the last one was among the frames lost to the outage)."""
    assert page.locator("#error").is_hidden()
    assert page.inner_text("#status") == ""
    assert_not_blank(snap(page, f"{name}-first"))
    page.keyboard.press("End")
    page.wait_for_function(f"() => document.getElementById('viewport').dataset.index === '{SLICES - 1}'")
    assert_not_blank(snap(page, f"{name}-last"))


def test_offline_for_seconds_mid_load_keeps_the_images_and_finishes_the_series_fixed(
    outside: tuple[RunningStack, str], browser: Any  # noqa: F811
) -> None:
    """A phone (390x844 at 3x, touch) on 3G loses the network for 4 s just after the first image: the images on
    screen stay with "Connection lost. Retrying…", and once the network is back the rest of the series loads by
    itself. It was the "image server is not reachable" screen over the loaded images, for good: nothing retried,
    and a reload could not help (the token is scrubbed from the address bar: "Open the study again")."""
    running, study = outside
    issued = running.issue([study], ttl=600)
    log = NetworkLog()
    page = open_page(
        browser, log, viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True, device_scale_factor=3
    )
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", FAST_3G)
    page.goto(issued["viewer_url"])
    page.wait_for_selector("#viewport[data-state=ready]", timeout=120_000)
    assert int(dataset(page).get("loaded") or 0) < SLICES, "the series loaded before the network went"
    cdp.send("Network.emulateNetworkConditions", OFFLINE)
    page.wait_for_function("() => document.getElementById('status').textContent === 'Connection lost. Retrying…'")
    page.wait_for_timeout(4000)
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    assert page.inner_text("#status") == "Connection lost. Retrying…"
    assert_not_blank(snap(page, "outside-offline"))
    cdp.send("Network.emulateNetworkConditions", ONLINE)
    wait_all_loaded(page)
    assert_every_slice_shows(page, "outside-offline-back")
    page.context.close()


def test_a_phone_shows_the_status_line_while_it_says_something_fixed(
    outside: tuple[RunningStack, str], browser: Any  # noqa: F811
) -> None:
    """On a phone (390x844 at 3x, touch) the status line was hidden (`display: none` under 640 px): "Connection lost.
    Retrying…" over the images (README, Viewer and embedding) reached no phone user, who saw the series stop loading
    with nothing said. It is now a line of its own under the buttons, on screen, while it says something, and takes
    no room when empty."""
    running, study = outside
    issued = running.issue([study], ttl=600)
    page = open_page(
        browser, NetworkLog(), viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True,
        device_scale_factor=3,
    )
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", FAST_3G)
    page.goto(issued["viewer_url"])
    page.wait_for_selector("#viewport[data-state=ready]", timeout=120_000)
    assert page.locator("#status").is_hidden()  # empty: no line of its own
    stage_height = page.locator("#viewport").bounding_box()["height"]
    cdp.send("Network.emulateNetworkConditions", OFFLINE)
    page.wait_for_function("() => document.getElementById('status').textContent === 'Connection lost. Retrying…'")
    status = page.locator("#status")
    assert status.is_visible()
    box = status.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["height"] > 10
    assert box["y"] + box["height"] <= page.locator("#viewport").bounding_box()["y"]  # above the image, not over it
    assert_not_blank(snap(page, "outside-phone-status"))
    cdp.send("Network.emulateNetworkConditions", ONLINE)
    wait_all_loaded(page)
    assert page.locator("#status").is_hidden()
    assert page.locator("#viewport").bounding_box()["height"] == stage_height
    page.context.close()


def test_a_storage_outage_at_open_says_unavailable_then_shows_the_study_fixed(
    outside: tuple[RunningStack, str], browser: Any  # noqa: F811
) -> None:
    """Storage gone when the study opens (the local folder unmounted: frame reads fail, QIDO and metadata are
    served): the viewer said "These images cannot be shown here ... stored in a format this viewer cannot display",
    for good. It now says the server is not reachable and that the page retries, and shows the study by itself once
    storage is back."""
    running, study = outside
    issued = running.issue([study], ttl=600)
    page = open_page(browser, NetworkLog())
    with storage_unmounted(running):
        page.goto(issued["viewer_url"])
        page.wait_for_selector("#error[data-kind]:not([hidden])")
        assert page.get_attribute("#error", "data-kind") == "unavailable"
        assert page.inner_text("#error-title") == "The image server is not reachable"
        assert page.inner_text("#error-text").endswith("This page retries by itself.")
    page.wait_for_selector("#error", state="hidden", timeout=60_000)
    assert page.is_visible("#app")
    wait_all_loaded(page)
    assert_every_slice_shows(page, "outside-storage-back")
    page.context.close()


def test_the_slice_on_screen_lost_to_an_outage_is_drawn_once_its_prefetch_loads_it_fixed(
    outside: tuple[RunningStack, str], browser: Any  # noqa: F811
) -> None:
    """The storage outage at open as the test above meets it by chance (a CI run did): the screen's own request
    for the first slice fails (503), storage comes back, and the prefetch's request for that slice, sent later,
    loads it. Nothing drew it: the outage's message went and the study stayed black, with no message, for good.
    Now it is drawn, and the series' thumbnail, lost to the outage too, is asked again. The browser holds the
    prefetch's requests until storage is back; every answer is the real stack's."""
    running, study = outside
    issued = running.issue([study], ttl=600)
    page = open_page(browser, NetworkLog())
    screen: list[str] = []  # the stage's own request for the first slice, which the outage answers
    held: list[Any] = []  # the prefetch's requests while storage is away
    again: list[str] = []  # the frames asked for once storage is back
    back = threading.Event()

    def frame_request(route: Any) -> None:  # run on this thread, while it waits on the page
        if back.is_set():
            again.append(route.request.url)
            route.continue_()
        elif not screen:
            screen.append(route.request.url)
            route.continue_()
        else:
            held.append(route)

    page.route(re.compile(r"/frames/\d+$"), frame_request)  # not the derivative probe (a query), nor rendered
    with storage_unmounted(running):
        page.goto(issued["viewer_url"])
        page.wait_for_selector("#error[data-kind]:not([hidden])")
        assert page.get_attribute("#error", "data-kind") == "unavailable"
    back.set()
    for route in held:
        again.append(route.request.url)
        route.continue_()
    page.wait_for_selector("#error", state="hidden", timeout=60_000)
    wait_all_loaded(page)
    # the prefetch asked for the slice on screen once storage was back (held until then, or sent after)
    assert screen[0] in again
    assert_every_slice_shows(page, "outside-screen-lost")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#series img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.context.close()


def test_offline_while_the_study_opens_then_back_opens_it_fixed(
    outside: tuple[RunningStack, str], browser: Any  # noqa: F811
) -> None:
    """A phone on slow 3G loses the network while the page opens the study (Cornerstone's ~1 MB of code on its way,
    the series list asked), then gets it back. The "not reachable" screen stayed for good (and a reload says "Open
    the study again": the token is gone from the address bar); it now says the page retries, and the study opens."""
    running, study = outside
    issued = running.issue([study], ttl=600)
    log = NetworkLog()
    page = open_page(
        browser, log, viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True,
        device_scale_factor=3,
    )
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", SLOW_3G)
    with page.expect_request(lambda request: "/viewer/assets/stage-" in request.url, timeout=60_000):
        page.goto(issued["viewer_url"], wait_until="commit")
    cdp.send("Network.emulateNetworkConditions", OFFLINE)
    page.wait_for_selector("#error[data-kind]:not([hidden])")
    assert page.get_attribute("#error", "data-kind") == "unavailable"
    assert page.inner_text("#error-text").endswith("This page retries by itself.")
    page.wait_for_timeout(3000)
    cdp.send("Network.emulateNetworkConditions", ONLINE)
    wait_all_loaded(page)
    assert_every_slice_shows(page, "outside-offline-at-open")
    page.context.close()


def test_a_tile_moved_to_in_a_storage_outage_is_drawn_once_storage_is_back_fixed(
    slide: tuple[RunningStack, str], browser: Any  # noqa: F811
) -> None:
    """A whole-slide image is browsed with the keyboard while storage is away: the tiles moved to, beyond those
    the viewer prefetched around the first, fail (503). The page must say "Connection lost. Retrying…" (never
    "Some images could not be loaded." for an outage) and keep the tile on screen, and once storage is back it
    must draw the tile moved to by itself, with the overlay naming the tile drawn."""
    running, study = slide
    rows, columns = _grid(TILES)
    layout = _layout(SLIDE_SEED, TILES)
    start = (rows // 2) * columns + columns // 2  # the viewer opens a slide at its centre tile
    target = start + columns + 1  # down a row, then right: 33 tiles on, beyond the 8 prefetched either side
    # three different tiles of tissue: each one drawn tells itself apart on screen
    assert len({int(layout[i]) for i in (start, start + columns, target)}) == 3 and 0 not in layout[[start, target]]
    issued = running.issue([study], ttl=600)
    page = open_page(browser, NetworkLog())
    page.goto(issued["viewer_url"])
    wait_ready(page)
    assert dataset(page)["index"] == str(start)
    # the first tile and the 16 prefetched around it have arrived (not lost to the outage below)
    page.wait_for_function(
        "() => performance.getEntriesByType('resource')"
        ".filter(e => /\\/frames\\/\\d+$/.test(e.name) && e.responseEnd > 0).length >= 17"
    )
    before = snap(page, "outside-slide-start")
    assert_not_blank(before)
    page.evaluate(
        "() => { window.statuses = []; const el = document.getElementById('status');"
        " new MutationObserver(() => window.statuses.push(el.textContent))"
        ".observe(el, {childList: true, characterData: true, subtree: true}); }"
    )
    with storage_unmounted(running):
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowRight")
        page.wait_for_function("() => document.getElementById('status').textContent === 'Connection lost. Retrying…'")
        # past the first retry (2 s): still away, still saying so, the tile on screen kept
        page.wait_for_timeout(3000)
        assert page.inner_text("#status") == "Connection lost. Retrying…"
        assert page.locator("#error").is_hidden(), page.inner_text("#error")
        assert changed_fraction(before, snap(page, "outside-slide-away")) < 0.01
    page.wait_for_function(
        f"() => document.getElementById('viewport').dataset.index === '{target}'"
        " && document.getElementById('status').textContent === ''",
        timeout=60_000,
    )
    settle(page)
    assert f"Tile {target + 1} / {TILES}" in page.inner_text("#overlay-br")
    drawn = snap(page, "outside-slide-back")
    assert changed_fraction(before, drawn) > 0.02, "the tile from before the outage is still on screen"
    # the tile drawn is the one the overlay names: left and back draws the same picture
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"() => document.getElementById('viewport').dataset.index === '{target - 1}'")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"() => document.getElementById('viewport').dataset.index === '{target}'")
    settle(page)
    assert changed_fraction(drawn, snap(page, "outside-slide-again")) < 0.01
    statuses = page.evaluate("() => window.statuses")
    assert "Some images could not be loaded." not in statuses, statuses
    assert page.locator("#error").is_hidden()
    page.context.close()
