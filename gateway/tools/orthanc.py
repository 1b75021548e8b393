"""A private Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``), for the e2e tests and the B4 benchmark: its
own configuration, storage folder, and free HTTP and DICOM ports on loopback; the Debian service is never used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from gateway.tools.stack import free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


class OrthancMissing(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed; the message says which package to install."""


def dicomweb_plugin() -> Path:
    """Where Debian's orthanc-dicomweb package put the plugin (as `dpkg -L orthanc-dicomweb` lists it)."""
    listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        if "/plugins/" in line and line.endswith(".so"):
            return Path(line)
    raise OrthancMissing("the orthanc-dicomweb package is not installed (apt-get install orthanc-dicomweb)")


@dataclass
class Orthanc:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    stow_files: dict[str, list[Path]] = field(default_factory=dict)  # for tests: what each transport uploads

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", data=json.dumps(body), timeout=120)

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=60)

    def clear(self) -> None:
        for study in self.get("/studies").json():
            assert requests.delete(f"{self.url}/studies/{study}", timeout=30).status_code == 200
        assert self.get("/instances").json() == []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)


def start_orthanc(folder: Path, servers: dict[str, dict[str, Any]] | None = None) -> Orthanc:
    """Orthanc with its default settings plus the DICOMweb plugin (and ``servers`` as its DICOMweb peers)."""
    if not Path(ORTHANC).exists():
        raise OrthancMissing(f"{ORTHANC} is not installed (apt-get install orthanc)")
    plugin = dicomweb_plugin()
    http_port = free_port()
    config = {
        "Name": "dicom-gateway-peer",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": servers or {}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # libcurl would honour a proxy
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [ORTHANC, str(folder / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT, cwd=folder, env=env
        )
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(f"{url}/plugins/dicom-web", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"Orthanc did not answer within 60 s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return Orthanc(process, url, log)
