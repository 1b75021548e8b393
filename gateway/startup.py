"""Start-up work done once per gateway, before gunicorn forks its workers.

``prepare()`` validates every setting and migrates the catalog. ``stack up`` calls it before it starts gunicorn,
the container's gunicorn calls it from ``on_starting`` (docker/gunicorn.conf.py), and ``dicom-gateway db upgrade``
runs it alone. Workers then only check that the schema is current (``gateway.wsgi``), so two workers starting
on an empty catalog never race on a migration. Failures are ``StartupError``: one line for a person.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gateway.config import Settings, env_value
from gateway.errors import ConfigError, GatewayError


class StartupError(RuntimeError):
    """A setting or the catalog keeps the gateway from starting; the message is one readable line."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def check_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings, with the PHI policy loaded once to prove it is valid (and its key long enough)."""
    from gateway.phi.hook import load_checked_policy

    try:
        settings = Settings.from_env(env)
        load_checked_policy(settings)
    except ConfigError as error:
        raise StartupError(_one_line(error)) from None
    return settings


def migrate(settings: Settings) -> str:
    """Upgrade the catalog schema to this version; return the revision it is at."""
    import sqlalchemy as sa
    from alembic.util.exc import CommandError

    from gateway.catalog import Catalog

    try:
        catalog = Catalog(settings.database_url)
    except (sa.exc.ArgumentError, ValueError):
        # never the parser's message: it may repeat the URL, password included
        raise StartupError("DICOMGW_DATABASE_URL: not a database URL this gateway can open") from None
    except ImportError as error:
        raise StartupError(f"DICOMGW_DATABASE_URL: its driver is not installed ({error.name})") from None
    try:
        with catalog.engine.connect():
            pass
    except sa.exc.SQLAlchemyError as error:
        # The driver's reason ("unable to open database file", "password authentication failed for user ..."):
        # a person needs it, and libpq and SQLite name the file, host or user, never the password.
        reason = _one_line(getattr(error, "orig", None) or error)
        catalog.close()
        raise StartupError(f"DICOMGW_DATABASE_URL: cannot open the catalog: {reason}") from None
    try:
        catalog.require_not_newer()
        catalog.migrate()
        return catalog.schema_revision()
    except ConfigError as error:
        raise StartupError(_one_line(error)) from None
    except (GatewayError, CommandError) as error:
        raise StartupError(f"DICOMGW_DATABASE_URL: cannot migrate the catalog: {_one_line(error)}") from None
    finally:
        catalog.close()


def prepare(env: Mapping[str, str] | None = None) -> Settings:
    """Validate the settings, migrate the catalog and make the local storage folders, once, before any worker
    starts (workers never make them: a folder gone at run time is an outage, not a new empty folder)."""
    settings = check_settings(env)
    check_spool(settings)
    check_metrics_dir(env)
    migrate(settings)
    create_storage(settings)
    return settings


def check_spool(settings: Settings) -> None:
    """``DICOMGW_TMP_DIR``, where every upload is spooled, is a folder the workers can write: one that does not exist
    (a typo, a volume not mounted) started a gateway that was ready and answered 503 to every upload. Not made here:
    a spool is meant to be on a chosen disk, and one made on the wrong disk fills it."""
    if not settings.tmp_dir:
        return  # the system temp dir
    spool = Path(settings.tmp_dir)
    if not spool.is_dir():
        raise StartupError(f"DICOMGW_TMP_DIR: no such folder: {spool}")
    if not os.access(spool, os.W_OK | os.X_OK):
        raise StartupError(f"DICOMGW_TMP_DIR: this user cannot write to {spool}")


def check_metrics_dir(env: Mapping[str, str] | None = None) -> None:
    """``PROMETHEUS_MULTIPROC_DIR``, where each worker keeps its counters (prometheus_client's multiprocess mode),
    is a folder the workers can write: one that does not exist (a volume not mounted, a typo) started a gateway
    whose every token decision was a 500, and whose STOW answered 500 after storing the upload. Not made here,
    as the spool is not: it belongs on a chosen (usually memory) file system."""
    value = env_value("PROMETHEUS_MULTIPROC_DIR", env)
    if not value:
        return  # counters per worker
    folder = Path(value)
    if not folder.is_dir():
        raise StartupError(f"PROMETHEUS_MULTIPROC_DIR: no such folder: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StartupError(f"PROMETHEUS_MULTIPROC_DIR: this user cannot write to {folder}")


def not_a_folder(root: Path) -> str | None:
    """Why no storage folder can be at ``root``: it, or a folder above it, is a file (said so: mkdir's "File exists"
    or "Not a directory" did not say which path was wrong). None when it is a folder or can be made there."""
    for path in (root, *root.parents):
        try:
            if not path.exists():
                continue
        except OSError:
            return None  # not to be looked at (permissions): making the folder says why
        if path.is_dir():
            return None
        return f"{root} is not a folder" if path == root else f"cannot make the folder {root}: {path} is not a folder"
    return None


def create_storage(settings: Settings) -> None:
    """The local folders of the storage and of the PHI policy's destinations (nothing for S3)."""
    from gateway.services import build_policy_hooks
    from gateway.storage import open_storage
    from gateway.storage.local import LocalStorage

    if settings.storage_url.startswith("file://"):
        # made here, not by LocalStorage(create=True), which leaves a failure to the first write: a folder that
        # cannot be made (under a file, on a read-only mount) started a gateway that answered 503 to every upload
        root = LocalStorage(settings.storage_url).root
        problem = not_a_folder(root)
        if problem:
            raise StartupError(f"DICOMGW_STORAGE_URL: {problem}")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StartupError(f"DICOMGW_STORAGE_URL: cannot make the folder {root}: {error.strerror}") from None
    build_policy_hooks(settings, open_storage(settings.storage_url, create=True), create=True)
