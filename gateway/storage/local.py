"""Local-folder storage: the one-box backend. NGINX serves the folder as its root, so reads never touch
Python.

Writes are crash-safe: the bytes go to a temporary name in the destination directory, the file is fsynced,
renamed over the key with ``os.replace`` (atomic on POSIX), and the directory is fsynced so the rename itself
survives a power cut. Readers therefore see the old object or the whole new one, never a torn file.

The ETag is NGINX's own static-file ETag (``"<mtime hex>-<size hex>"``, see ``ngx_http_set_etag``), so an ETag
handed out by the catalog matches what NGINX sends and ``If-Match`` / ``If-None-Match`` work through NGINX.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gateway.errors import InvalidPath, NotFound, StorageUnavailable
from gateway.storage.base import StoredObject

# Temporary files carry this suffix (and a leading dot); ``list`` never reports them.
_TMP_SUFFIX = ".partial"
_COPY_CHUNK = 1024 * 1024
# A write whose folder a concurrent delete removed (``LocalStorage._prune``) creates it again, up to this often.
_PLACE_ATTEMPTS = 3


def check_key(key: str) -> str:
    """Reject keys that could escape the storage root or mean different things on different backends.

    A key is a relative, slash-separated path: no leading ``/``, no backslash, no NUL, no empty, ``.`` or
    ``..`` segment. Both backends use this, so a key valid on one is valid on the other.
    """
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidPath("storage key must be a relative path without backslashes")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidPath("storage key has an empty, '.' or '..' segment")
    return key


def nginx_etag(mtime: float, size: int) -> str:
    """NGINX's static ETag: ``"%xT-%xO"`` of the whole-second mtime and the size."""
    return f'"{int(mtime):x}-{size:x}"'


def _mode(key: str) -> int:
    """NGINX serves objects (0644: its workers may be another user); a file held for review it never serves, so it
    is its own user's only (README, "Private at rest"): the file's PHI was world-readable."""
    return 0o600 if key.startswith("quarantine/") else 0o644


def _failed(doing: str, error: OSError) -> StorageUnavailable:
    """The outage an OSError of the folder is, named by its errno code (never its message, which holds the path)."""
    return StorageUnavailable(f"storage {doing} failed ({errno.errorcode.get(error.errno or 0, 'error')})")


def _unlisted(error: OSError) -> None:
    """A folder ``os.walk`` cannot read: pruned since it was seen (a delete's), else the listing is incomplete."""
    if not isinstance(error, FileNotFoundError):
        raise _failed("listing", error)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """``file:///abs/dir``. The root is created only with ``create=True``, which start-up passes once before
    gunicorn forks (``gateway.startup.prepare``), never later: if a mounted volume disappears at run time, writes
    fail with ``StorageUnavailable`` instead of filling the wrong disk. (Every worker used to create it: a worker
    replaced after the folder went made an empty one, and uploads and /readyz said all was well.)"""

    def __init__(self, url: str, *, create: bool = False) -> None:
        if not url.startswith("file://"):
            raise ValueError("LocalStorage needs a file:// URL")
        path = urllib.parse.unquote(url[len("file://") :])
        if not path.startswith("/"):
            raise ValueError("LocalStorage needs an absolute path: file:///abs/dir")
        self.url = url
        self.root = Path(path).resolve()
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # reported by check() and by every write, with the storage-unavailable error

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise StorageUnavailable("storage folder is missing")

    def check(self) -> None:
        """The folder exists and accepts a write (a probe file is created and removed: ``os.access`` lies for
        root and for read-only mounts)."""
        self._require_root()
        probe = self.root / f".readyz-{secrets.token_hex(6)}{_TMP_SUFFIX}"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"ok")
        except OSError as exc:
            raise StorageUnavailable(
                f"storage folder is not writable ({errno.errorcode.get(exc.errno or 0)})"
            ) from None
        finally:  # a full disk fails the write or the close after the create: no probe left behind, on every call
            with contextlib.suppress(OSError):
                probe.unlink()

    def _stat(self, path: Path, key: str) -> StoredObject:
        st = path.stat()
        return StoredObject(key=key, size=st.st_size, etag=nginx_etag(st.st_mtime, st.st_size))

    def put_file(self, key: str, path: Path) -> StoredObject:
        target = self._path(key)
        if not Path(path).is_file():
            raise FileNotFoundError(path)  # a caller bug, not an outage
        self._require_root()
        tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}{_TMP_SUFFIX}"
        try:
            self._place(path, tmp, _mode(key))
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
            return self._stat(target, key)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # the directory itself is gone or read-only: nothing was left behind
            raise _failed("write", exc) from None

    @staticmethod
    def _place(path: Path, tmp: Path, mode: int) -> None:
        """The bytes of ``path`` at ``tmp``, creating its folder. A delete removes folders it empties (``_prune``):
        one emptied between our ``mkdir`` and our write is created again (a few times at most, then it is a fault)."""
        for attempt in range(_PLACE_ATTEMPTS):
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                # Same filesystem (the spool folder usually is): a hard link instead of a second copy of the
                # bytes; the caller removes its own name afterwards. Otherwise the kernel copies (sendfile).
                os.link(path, tmp)
                os.chmod(tmp, mode)  # spool files are private (0600); NGINX must be able to read objects
                return
            except FileNotFoundError:
                if attempt + 1 == _PLACE_ATTEMPTS or not Path(path).is_file():
                    raise
                continue  # the folder was pruned under us
            except OSError:
                pass
            try:
                shutil.copyfile(path, tmp)
                os.chmod(tmp, mode)
                return
            except FileNotFoundError:
                if attempt + 1 == _PLACE_ATTEMPTS or not Path(path).is_file():
                    raise

    def _prune(self, folder: Path) -> None:
        """Remove ``folder`` and its parents up to the root while they are empty: a deleted study leaves no
        empty folders behind. ``rmdir`` refuses a folder that is not empty, so a concurrent write keeps it."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def head(self, key: str) -> StoredObject | None:
        """None for anything but a regular file, as ``_open`` and NGINX read it (a directory or FIFO is no object)."""
        path = self._path(key)
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                return None
            return self._stat(path, key)
        except FileNotFoundError:
            self._require_root()  # an unmounted folder is no proof that every object is gone
            return None
        except NotADirectoryError:
            return None

    def _open(self, key: str) -> BinaryIO:
        """The stored object for reading. Only a regular file is an object (as for NGINX, which answers 404 for
        anything else): a directory, FIFO (which would block the worker) or dangling link is missing; a file that
        cannot be opened is a storage fault."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            self._require_root()  # the whole folder gone (unmounted, moved) is an outage to retry, not a 404
            raise NotFound("object not found") from None
        except OSError as exc:
            raise _failed("read", exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotFound("object not found")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError("negative range")
        with self._open(key) as handle:
            handle.seek(start)
            return handle.read(length)

    def download(self, key: str, path: Path) -> None:
        with self._open(key) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_CHUNK)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            # gone already, unless the whole folder is (unmounted): a deletion that went on then was finished with
            # every object left, and `reconcile --repair` registered them again
            self._require_root()
        except OSError as exc:
            raise _failed("delete", exc) from None
        self._prune(path.parent)

    def move(self, src: str, dst: str) -> StoredObject:
        """A rename: atomic on one filesystem, so the object is always at exactly one of the two keys."""
        source, target = self._path(src), self._path(dst)
        if not source.is_file():
            raise NotFound("object not found")
        try:
            for attempt in range(_PLACE_ATTEMPTS):
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.chmod(source, _mode(dst))
                    os.replace(source, target)
                    break
                except FileNotFoundError:
                    if attempt + 1 == _PLACE_ATTEMPTS or not source.is_file():
                        raise  # the target folder was pruned under us: create it again
            _fsync_dir(target.parent)
            if source.parent != target.parent:
                _fsync_dir(source.parent)
                self._prune(source.parent)
            return self._stat(target, dst)
        except OSError as exc:
            raise _failed("move", exc) from None

    def list(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix`` (a plain string prefix, like S3), sorted, temporary files
        excluded."""
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / base_rel if base_rel else self.root
        if base_rel:
            check_key(base_rel)
        if not base.is_dir():
            self._require_root()  # an empty listing must mean no objects, never a folder unmounted or misnamed
            return
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base, onerror=_unlisted):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def origin_path(self, key: str) -> str:
        """``/`` + the key, percent-encoded outside ``[A-Za-z0-9._/-]`` (NGINX decodes it back to the
        file)."""
        # quote() always leaves "~" alone; encode it too so the path alphabet is exactly the documented one
        return "/" + urllib.parse.quote(check_key(key), safe="/._-").replace("~", "%7E")
