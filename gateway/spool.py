"""The upload spool (``DICOMGW_TMP_DIR``): where STOW bodies are written before ingest reads them.

A spool file names the process writing it (host, pid, start time, as upload reservations do), so that what a worker
killed mid-upload left can be told from what a live one is writing, and removed: each is a copy of uploaded DICOM
(PHI included) that no DELETE or erasure reaches. A spool folder that fails is the gateway's fault, never the
client's: ``StorageUnavailable`` (503, a retry is safe), and no partial file is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.catalog.owner import Owner, host_identity, is_gone, this_process
from gateway.errors import StorageUnavailable

Buffer = bytes | memoryview
# upload parts, single-part bodies, the de-identifier's outputs (written in an ingest pool process), the
# derivative worker's folders (a copy of the stored instance and its encoding, gateway.derive), a direct upload's
# download (gateway.phi.s3event), a held file's copy for its release or preview (gateway.quarantine) and an orphan's
# for its registration (gateway.reconcile)
_SPOOL_NAME = re.compile(r"(?:part|stow|deid|derive|incoming|release|reconcile)-([0-9a-f]{8})-([0-9]+)-([0-9]+)-")


def _host_tag() -> str:
    identity = host_identity()
    return hashlib.sha256(identity.encode()).hexdigest()[:8] if identity else ""


def spool_prefix(kind: str) -> str:
    """``{kind}-{host}-{pid}-{start time}-``: a spool file names the process writing it, so that what a killed
    worker left can be told from what a live one is writing (``sweep_spool``)."""
    me = this_process()
    return f"{kind}-{_host_tag() or 'x'}-{me.pid}-{me.started}-"


def sweep_spool(spool_dir: Path) -> int:
    """Remove the spool files of processes of this host that are gone: a worker killed in the middle of an upload
    (kill -9, the OOM killer) left its parts there, never to be ingested, each a copy of uploaded DICOM (PHI
    included) that no DELETE or erasure reaches, and a folder that only grows; so did a derivative worker killed
    mid-encode, its folder. Returns how many were removed."""
    tag = _host_tag()
    try:
        names = os.listdir(spool_dir)
    except OSError:
        return 0
    removed = 0
    for name in names:
        match = _SPOOL_NAME.match(name)
        if tag and match and match[1] == tag and is_gone(Owner(host_identity(), int(match[2]), int(match[3]))):
            path = spool_dir / name
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
    return removed


def spool_unavailable(exc: OSError) -> StorageUnavailable:
    """A spool folder that is full, gone or read-only: the gateway's fault, never the client's (503, a retry is
    safe), named by its errno only (its message names the path)."""
    return StorageUnavailable(f"upload spool write failed ({errno.errorcode.get(exc.errno or 0, 'error')})")


@contextlib.contextmanager
def spool_folder(spool_dir: Path, kind: str) -> Iterator[Path]:
    """A new folder in ``spool_dir`` named for this process (``sweep_spool`` removes it once the process is gone),
    removed with what is in it after the block. An ``OSError`` of the spool in the block is the caller's to map with
    ``spool_unavailable``; one making the folder is mapped here."""
    try:
        made = tempfile.TemporaryDirectory(dir=spool_dir, prefix=spool_prefix(kind))
    except OSError as exc:
        raise spool_unavailable(exc) from None
    with made as folder:
        yield Path(folder)


@contextlib.contextmanager
def spool_file(spool_dir: Path, kind: str, suffix: str) -> Iterator[tuple[Path, Callable[[Buffer], None]]]:
    """A new file in ``spool_dir`` and a function that appends to it; the file is removed when anything fails
    before the block ends. A spool folder that is full, gone or read-only is the gateway's fault, not the
    client's: ``StorageUnavailable`` (503, retry is safe), never a 500, and no partial file left to fill the
    folder for every later upload."""

    try:
        fd, name = tempfile.mkstemp(prefix=spool_prefix(kind), suffix=suffix, dir=spool_dir)
    except OSError as exc:
        raise spool_unavailable(exc) from None
    path = Path(name)
    out = os.fdopen(fd, "wb")

    def write(chunk: Buffer) -> None:
        try:
            out.write(chunk)
        except OSError as exc:
            raise spool_unavailable(exc) from None

    try:
        yield path, write
        try:
            out.flush()
        except OSError as exc:
            raise spool_unavailable(exc) from None
    except BaseException:
        with contextlib.suppress(OSError):  # what is still buffered cannot be written either
            out.close()
        path.unlink(missing_ok=True)
        raise
    out.close()
