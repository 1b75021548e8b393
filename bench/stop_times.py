"""How long the stack's processes take to exit once told to (SIGTERM to each, as ``Stack.stop`` and a service manager
send it), with gunicorn's own gthread worker as the baseline in the same run (``gateway/gunicorn_worker.py``).

``python -m bench.stop_times [--rounds N]`` starts the production stack (local storage, SQLite, the derivative
worker) 2 x N times, alternating the worker class, asks one QIDO (so a worker has served and holds a keep-alive
connection from NGINX), then times each process from the signal to its exit. Prints the median per process and
worker class. Not a target: the figure behind the CHANGELOG's and README's "stops within a fraction of a second".
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import requests

from gateway.tools.stack import Stack, free_port

CLASSES = {"gthread (gunicorn's)": "gthread", "WokenThreadWorker": "gateway.gunicorn_worker.WokenThreadWorker"}


def exit_times(var_dir: Path, worker_class: str) -> dict[str, float]:
    stack = Stack(var_dir, port=free_port(), derive_worker=True, gunicorn_worker_class=worker_class)
    stack.start(timeout=60)
    try:
        answer = requests.get(f"{stack.url}/dicomweb/studies", headers={"Authorization": f"Bearer {stack.api_key}"},
                              timeout=30)
        assert answer.status_code == 200, answer.text
        processes = dict(stack.processes)
        started = time.monotonic()
        for process in processes.values():
            os.killpg(process.pid, signal.SIGTERM)
        took: dict[str, float] = {}
        while len(took) < len(processes):
            for name, process in processes.items():
                if name not in took and process.poll() is not None:
                    took[name] = time.monotonic() - started
            time.sleep(0.002)
        return took
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    seen: dict[str, dict[str, list[float]]] = {label: {} for label in CLASSES}
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(rounds):
            for label, worker_class in CLASSES.items():
                took = exit_times(Path(tmp) / f"{number}-{worker_class}", worker_class)
                for name, seconds in took.items():
                    seen[label].setdefault(name, []).append(seconds)
    for label, by_process in seen.items():
        medians = ", ".join(f"{name} {statistics.median(times):.2f} s" for name, times in sorted(by_process.items()))
        print(f"{label}: median exit after SIGTERM over {rounds} rounds: {medians}")


if __name__ == "__main__":
    main()
