"""Measure the delete bound (README "Lifecycle"): how long after a DELETE hid a study NGINX still serves it from a
decision and a plan it cached before, and how long the DELETE takes to answer. Not a benchmark with a target: the
figure the README's bound is checked against.

``python -m bench.delete_bound`` starts the production stack twice (local storage, SQLite): once with
``DICOMGW_DELETE_SETTLE=0`` (objects removed at once: the raw window in which a cached decision still names the old
generation; a read in it fails or aborts), once with the default settle (the DELETE answers after the window; no read
after its answer may succeed, and none in the window may abort). A reader polls a cached frame every 20 ms.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.common import running_stack, uids
from gateway.tools.synth import make_series


def measure(settle: str | None) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as tmp:
        files = make_series(Path(tmp) / "ct", slices=3, rows=64, columns=64, seed=901, clean=True)
        env = {} if settle is None else {"DICOMGW_DELETE_SETTLE": settle}
        with running_stack(Path(tmp) / "var", env) as stack:
            stack.stow(files)
            study, series, sop = uids(files[0])
            token = requests.post(
                f"{stack.url}/api/v1/tokens", json={"sub": "bench", "studies": [study]}, headers=stack.api_headers,
                timeout=30,
            ).json()["token"]
            url = f"{stack.url}/t/{token}/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
            octet = {"Accept": "application/octet-stream"}
            for _ in range(3):
                assert requests.get(url, headers=octet, timeout=30).status_code == 200
            seen: list[tuple[float, str]] = []
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    try:
                        answer = requests.get(url, headers=octet, timeout=30)
                        seen.append((time.monotonic(), str(answer.status_code)))
                    except requests.RequestException:
                        seen.append((time.monotonic(), "aborted"))
                    time.sleep(0.02)

            reader = threading.Thread(target=poll)
            reader.start()
            sent = time.monotonic()
            deleted = requests.delete(f"{stack.url}/dicomweb/studies/{study}", headers=stack.api_headers, timeout=120)
            answered = time.monotonic()
            time.sleep(1.0)
            stop.set()
            reader.join()
            assert deleted.status_code == 204
            after = [status for when, status in seen if when > sent]
            last_served = max((when for when, status in seen if when > sent and status != "404"), default=sent)
            return {
                "delete_seconds": round(answered - sent, 2),
                "served_or_failed_for_seconds_after_sent": round(last_served - sent, 2),
                "non_404_after_answer": sum(1 for when, s in seen if when > answered and s != "404"),
                "aborted": after.count("aborted"),
                "reads": len(after),
            }


if __name__ == "__main__":
    print("settle 0 (raw window):", measure("0"))
    print("default settle:", measure(None))
