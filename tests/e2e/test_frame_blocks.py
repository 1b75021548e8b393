"""Issue 15 (distinct frames) through the real NGINX on both storage backends: a single-frame GET without Range, of
frame 100 or later, is answered by NGINX from its block's plan (Python's /_block3 route, cached once for the block's
100 frames), with exactly the status, headers and bytes of Python's per-frame plan; everything else (frames 1-99,
Range, frames outside the instance, blocks Python does not make, a deleted instance) still gets Python's answer."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway import nginx_contract as nginx
from gateway.tools.synth import make_wsi, wsi_tile
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack
from tests.e2e.test_durability import children_of
from tests.e2e.test_lifecycle import assert_gone, delete
from tests.e2e.test_read_path import WSI_VARIANTS, parse_multipart
from tests.requirements import require

BLOCK = nginx.FRAMES_PER_BLOCK
ATTEMPTS = ("first", "second", "cached")
# Headers that differ between any two answers, whoever made them.
VOLATILE = {"date"}


def instance_url(stack: RunningStack, path: Path) -> str:
    study, series, sop = uids_of(path)
    return f"{stack.root(stack.issue([study])['token'])}/studies/{study}/series/{series}/instances/{sop}"


def python_plan(url: str, accept: str) -> requests.Response:
    """The same frame through Python's per-frame plan: the Accept query parameter (PS3.18 8.7) sends it there."""
    return requests.get(url, params={"accept": accept}, headers={"Accept": accept}, timeout=30)


def headers_of(answer: requests.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in answer.headers.items() if k.lower() not in VOLATILE}


def log_lines(stack: RunningStack, suffix: str, agent: str | None = None) -> list[dict[str, Any]]:
    """The access log lines of URIs ending with ``suffix``, only those of requests sent with User-Agent ``agent``
    when given: the stack and its synthetic instances are shared, so another test may have asked for the same
    frame (a test's own agent, not a line count taken before its requests: the log is the one witness)."""
    stack.settle_access_log()
    return [
        line
        for line in stack.access_log()
        if line["uri"].endswith(suffix) and (agent is None or line["user_agent"] == agent)
    ]


def block_of(number: int) -> int:
    return number // BLOCK


def served_from_block(number: int, frames: int, single_ranges: bool) -> bool:
    """Whether NGINX serves ``number`` from its block: frames from 100 on, of a block whose frames all exist and are
    each read in one range."""
    return number >= BLOCK and single_ranges and (block_of(number) + 1) * BLOCK - 1 <= frames


@pytest.mark.parametrize(
    ("variant", "accept", "single_ranges"),
    [
        ("wsi_eot", "image/jpeg", True),
        ("wsi_empty", "application/octet-stream", True),
        ("wsi_frag", "application/octet-stream", False),
        ("wsi_native", "application/octet-stream", True),
    ],
)
def test_block_frames_are_the_per_frame_plans_answers(
    stack: RunningStack, synthetic: dict[str, Any], variant: str, accept: str, single_ranges: bool
) -> None:
    seed, frames, native = WSI_VARIANTS[variant]
    url = instance_url(stack, synthetic[variant])
    sop = uids_of(synthetic[variant])[2]
    # this test's own spelling: plan-cache keys hold the Accept as sent, so no other test's reads of these shared
    # frames made the plans it reads; its own agent marks its lines
    own = f"{accept}; q=0.9"
    agent = f"frame-blocks-{uuid.uuid4().hex}"
    candidates = {1, 2, 99, BLOCK, BLOCK + 1, 2 * BLOCK - 1, 2 * BLOCK, 2 * BLOCK + 1, frames - 1, frames}
    numbers = sorted(n for n in candidates if 1 <= n <= frames)
    for number in numbers:
        expected = wsi_tile(seed, number, frames=frames, native=native)
        reference = python_plan(f"{url}/frames/{number}", accept)
        assert (reference.status_code, reference.content) == (200, expected), number
        for attempt in ATTEMPTS:
            headers = {"Accept": own, "User-Agent": f"{agent}-{attempt}"}
            answer = requests.get(f"{url}/frames/{number}", headers=headers, timeout=30)
            assert answer.status_code == 200, (number, attempt, answer.text[:200])
            assert answer.content == expected, (number, attempt)
            assert answer.headers["Content-Type"] == reference.headers["Content-Type"], (number, attempt)
            assert answer.headers["Content-Type"].split(";")[0] == accept
            assert headers_of(answer) == headers_of(reference), (number, attempt)
    # Which plan answered, from the access log (each request found by its own agent: two NGINX workers may write
    # their lines out of request order): a block's plan is made by Python for the first of its frames asked for
    # (a MISS) and read from the cache for every other request (a HIT); a frame its block does not serve, and a
    # frame below 100, gets its own plan from Python once (a MISS), then from the cache.
    logged = [line for line in log_lines(stack, "") if line["user_agent"].startswith(agent)]
    assert len(logged) == len(ATTEMPTS) * len(numbers), logged
    by_request = {(line["uri"].rpartition("/")[2], line["user_agent"]): line for line in logged}
    assert all(line["uri"].endswith(f"{sop}/frames/{line['uri'].rpartition('/')[2]}") for line in logged), logged
    seen_blocks: set[int] = set()
    refused_blocks: set[int] = set()
    for number in numbers:
        lines = [by_request[(str(number), f"{agent}-{attempt}")] for attempt in ATTEMPTS]
        from_block = served_from_block(number, frames, single_ranges)
        first_of_block = from_block and block_of(number) not in seen_blocks
        seen_blocks |= {block_of(number)} if from_block else set()
        expected = ["MISS" if first_of_block or not from_block else "HIT", "HIT", "HIT"]
        assert [line["cache"] for line in lines] == expected, (number, lines)
        if from_block:
            assert [line["upstream_status"] for line in lines] == ["200" if first_of_block else "", "", ""]
        else:  # its own plan from Python once; from 100 on, after the block's 404 (made, then from the cache)
            first_unserved = number >= BLOCK and block_of(number) not in refused_blocks
            refused_blocks |= {block_of(number)} if number >= BLOCK else set()
            made = "404 : 200" if first_unserved else "200"
            assert [line["upstream_status"] for line in lines] == [made, "", ""], (number, lines)


def test_multipart_single_frames_come_from_blocks_too(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    """What Cornerstone and OHIF ask for: one frame as multipart/related (the plan's body holds CRLFs)."""
    seed, frames, native = WSI_VARIANTS["wsi_empty"]
    url = instance_url(stack, synthetic["wsi_empty"])
    sop = uids_of(synthetic["wsi_empty"])[2]
    accept = 'multipart/related; type="image/jpeg"; transfer-syntax=*; q=0.8'  # its own plans (see above)
    agent = f"frame-blocks-{uuid.uuid4().hex}"
    numbers = (BLOCK + 1, BLOCK + 2, 2 * BLOCK - 1)
    for number in numbers:
        answer = requests.get(f"{url}/frames/{number}", headers={"Accept": accept, "User-Agent": agent}, timeout=30)
        assert answer.status_code == 200, answer.text[:200]
        assert answer.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"; boundary=')
        parts = parse_multipart(answer)
        expected = wsi_tile(seed, number, frames=frames, native=native)
        assert [(ct.split(";")[0], body) for ct, body in parts] == [("image/jpeg", expected)]
    made = [line for n in numbers for line in log_lines(stack, f"{sop}/frames/{n}", agent)]
    assert [(line["cache"], line["upstream_status"]) for line in made] == [("MISS", "200"), ("HIT", ""), ("HIT", "")]


def test_frames_outside_the_instance_are_python_json_errors(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    _, frames, _ = WSI_VARIANTS["wsi_bot"]
    url = instance_url(stack, synthetic["wsi_bot"])
    octet = {"Accept": "application/octet-stream"}
    assert requests.get(f"{url}/frames/{frames}", headers=octet, timeout=30).status_code == 200  # its block cached
    for number in (frames + 1, BLOCK * ((frames + BLOCK) // BLOCK) + 1, 999_999_999):
        answer = requests.get(f"{url}/frames/{number}", headers=octet, timeout=30)
        assert answer.status_code == 404, number
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json()["error"] == "frame_not_found"
    zero = requests.get(f"{url}/frames/0", headers=octet, timeout=30)
    assert (zero.status_code, zero.headers["Content-Type"]) == (400, "application/json")
    # an Accept Python cannot meet: its JSON 406, not a block
    refused = requests.get(f"{url}/frames/3", headers={"Accept": "image/png"}, timeout=30)
    assert (refused.status_code, refused.headers["Content-Type"]) == (406, "application/json")


def test_range_requests_still_get_pythons_206_and_416(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    seed, frames, native = WSI_VARIANTS["wsi_bot"]
    url = instance_url(stack, synthetic["wsi_bot"])
    sop = uids_of(synthetic["wsi_bot"])[2]
    octet = {"Accept": "application/octet-stream"}
    number = BLOCK + 50
    expected = wsi_tile(seed, number, frames=frames, native=native)
    assert requests.get(f"{url}/frames/{number}", headers=octet, timeout=30).content == expected  # block cached
    part = requests.get(f"{url}/frames/{number}", headers={**octet, "Range": "bytes=10-99"}, timeout=30)
    assert (part.status_code, part.content) == (206, expected[10:100])
    assert part.headers["Content-Range"] == f"bytes 10-99/{len(expected)}"
    beyond = requests.get(f"{url}/frames/{number}", headers={**octet, "Range": f"bytes={len(expected)}-"}, timeout=30)
    assert (beyond.status_code, beyond.headers["Content-Type"]) == (416, "application/json")
    ranged = log_lines(stack, f"{sop}/frames/{number}")[-2:]  # Python's per-frame plans
    assert [(line["cache"], line["upstream_status"]) for line in ranged] == [("MISS", "206"), ("MISS", "416")]


def test_deleted_instance_is_gone_even_with_cached_blocks(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    frames = 2 * BLOCK + 10  # block 1 whole
    path = make_wsi(tmp_path_factory.mktemp("blocks-delete"), frames=frames, seed=31, clean=True)
    assert stack.stow([path]).status_code == 200
    study, series, sop = uids_of(path)
    url = instance_url(stack, path)
    octet = {"Accept": "application/octet-stream"}
    agent = f"blocks-delete-{uuid.uuid4().hex}"
    # block 1 cached; frame 1's own plan cached too
    for step, number in enumerate((1, 2, BLOCK + 1, BLOCK + 2, 1, 1)):
        headers = {**octet, "User-Agent": f"{agent}-{step}"}
        answer = requests.get(f"{url}/frames/{number}", headers=headers, timeout=30)
        assert (answer.status_code, answer.content) == (200, wsi_tile(31, number, frames=frames))
    assert [line["cache"] for line in log_lines(stack, f"{sop}/frames/{BLOCK + 2}")] == ["HIT"]
    # in request order by each one's agent: two NGINX workers may write their lines out of request order
    frame_1 = {line["user_agent"]: line["cache"] for line in log_lines(stack, f"{sop}/frames/1")}
    assert [frame_1[f"{agent}-{step}"] for step in (0, 4, 5)] == ["MISS", "HIT", "HIT"], frame_1
    answer = delete(stack, f"studies/{study}/series/{series}/instances/{sop}")
    assert answer.status_code == 204, answer.text
    for number in (1, 2, 3, BLOCK + 1, BLOCK + 3, 2 * BLOCK):
        assert_gone(requests.get(f"{url}/frames/{number}", headers=octet, timeout=30))


def test_an_object_rewritten_under_its_key_is_read_afresh(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """NGINX keeps its cache files open between requests (open_file_cache), never a stored object: an object
    rewritten under the same key (an instance replaced) is read afresh by the very next request."""
    frames = 4
    folder = tmp_path_factory.mktemp("blocks-rewrite")
    path = make_wsi(folder, frames=frames, seed=37, clean=True)
    assert stack.stow([path]).status_code == 200
    study, series, sop = uids_of(path)
    url = instance_url(stack, path)
    octet = {"Accept": "application/octet-stream"}
    tile = wsi_tile(37, 1, frames=frames)
    for _ in range(3):  # the plan cached, the object read through NGINX more than once
        answer = requests.get(f"{url}/frames/1", headers=octet, timeout=30)
        assert (answer.status_code, answer.content) == (200, tile)
    key = f"studies/{study}/series/{series}/instances/{sop}.dcm"
    stored = folder / "stored.dcm"
    stack.storage().download(key, stored)
    data = stored.read_bytes()
    at = data.index(tile)
    other = bytes(255 - b for b in tile)
    (folder / "rewritten.dcm").write_bytes(data[:at] + other + data[at + len(tile) :])
    stack.storage().put_file(key, folder / "rewritten.dcm")
    answer = requests.get(f"{url}/frames/1", headers=octet, timeout=30)
    assert (answer.status_code, answer.content) == (200, other)


def test_a_frame_and_the_end_of_its_body_go_out_in_one_write(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A composed (SSI) body has no Content-Length, so it goes out chunked. Its last, empty chunk leaves with the
    frame, never in a write of its own (postpone_output in dgw-plan.conf): one system call and one client wake-up
    less per frame (docs/bench.md, B2). Watched with strace on the NGINX workers, for a frame whose plan is made
    and for one whose plan is cached, single part and multipart."""
    probe = subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True, check=False)
    require(probe.returncode == 0, f"strace cannot trace here: {probe.stderr.decode(errors='replace')[:200]}")
    folder = tmp_path_factory.mktemp("blocks-one-write")
    path = make_wsi(folder, frames=4, seed=41, clean=True)
    assert stack.stow([path]).status_code == 200
    url = instance_url(stack, path)
    workers = children_of(stack.stack.processes["nginx"].pid)
    assert workers, "NGINX has no workers"
    trace = folder / "trace.txt"
    attach = [argument for pid in workers for argument in ("-p", str(pid))]
    strace = subprocess.Popen(
        ["strace", "-f", "-qq", "-yy", "-s", "16", "-o", str(trace), "-e", "trace=writev", *attach],
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # strace prints nothing when it has attached; give it the time to (the workers are idle)
        for accept in ("application/octet-stream", 'multipart/related; type="application/octet-stream"'):
            for _ in range(3):  # the frame's plan made, then cached
                answer = requests.get(f"{url}/frames/2", headers={"Accept": accept}, timeout=30)
                assert answer.status_code == 200 and wsi_tile(41, 2, frames=4) in answer.content
                assert answer.headers["Transfer-Encoding"] == "chunked"
    finally:
        strace.send_signal(signal.SIGINT)  # detach: the trace file is complete once strace exits
        strace.wait(30)
    # writes to clients only (-yy names each socket: this stack's port on the local side), not to the upstreams
    client = f":{stack.stack.port}->"
    writes = [line for line in trace.read_text().splitlines() if client in line]
    assert sum('iov_base="HTTP/1.1 200 OK' in line for line in writes) == 6, writes
    assert len(writes) == 6, writes
