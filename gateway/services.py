"""The long-lived objects one gateway process needs, built once from Settings (storage, catalog, tokens...)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import nginx_contract as nginx
from gateway.auth import Authorizer, cookie_name
from gateway.catalog import Catalog
from gateway.config import Settings
from gateway.dicom.converted import ConvertedReader
from gateway.dicomweb.wado import Planner
from gateway.errors import NotFound
from gateway.hooks import Hook
from gateway.ingest import Ingestor
from gateway.lifecycle import Deleter
from gateway.spool import sweep_spool
from gateway.storage import Storage, open_storage
from gateway.tokens import TokenService


def build_policy_hooks(
    settings: Settings, default: Storage, *, create: bool = False
) -> tuple[list[Hook], dict[str, Storage]]:
    """The PHI hook chain and one storage per policy destination (the same object for "default" URLs), so a
    file routed to a destination is written exactly there; no policy means no hooks and no destinations.
    ``create``: make the destinations' local folders (start-up only)."""
    from gateway.phi.hook import PhiHook, load_checked_policy

    policy = load_checked_policy(settings)
    if policy is None:
        return [], {}
    storages: dict[str, Storage] = {}
    for name in policy.destinations:
        url = policy.storage_url(name, settings.storage_url)
        storages[name] = default if url == settings.storage_url else open_storage(url, create=create)
    hook = PhiHook(policy, settings.deid_key, destination_storages=storages, tmp_dir=settings.tmp_dir or None)
    return [hook], storages


def _metadata_of(catalog: Catalog, sop: str) -> dict[str, Any]:
    """An instance's DICOM JSON (a converted frame needs its Image Pixel module); NotFound if it went meanwhile."""
    row = catalog.get_instance(sop)
    if row is None:
        raise NotFound("no such instance")
    return row.metadata_json()


@dataclass
class Services:
    settings: Settings
    storage: Storage
    catalog: Catalog
    tokens: TokenService
    authorizer: Authorizer
    planner: Planner
    ingestor: Ingestor
    spool_dir: Path

    def deleter(self) -> Deleter:
        """Deletes through this node's storage and catalog; the node forgets its tombstones at once (the others
        within their refresh)."""
        settle = self.settings.delete_settle
        return Deleter(self.catalog, self.storage, settle, on_hidden=self.authorizer.forget_deletions)

    @classmethod
    def build(cls, settings: Settings, hooks: list[Hook] | None = None, *, migrate: bool = True) -> Services:
        """``migrate=False`` (gunicorn workers): only check the schema and never create a storage folder;
        ``gateway.startup`` migrated the schema and made the folders once. Otherwise (in-process) both are done."""
        storage = open_storage(settings.storage_url, create=migrate)
        catalog = Catalog(settings.database_url)
        if migrate:
            catalog.migrate()
        else:
            catalog.require_current_schema()
        tokens = TokenService(
            settings.signing_keys, settings.token_max_ttl, settings.token_default_ttl, settings.verify_keys
        )
        authorizer = Authorizer(
            tokens,
            settings.api_keys,
            catalog.revoked_jtis,
            settings.revocation_refresh,
            load_generations=catalog.generations,
            cookie=cookie_name(settings.tls),
            locate=catalog.locate,
        )
        local = settings.storage_url.startswith("file://")  # NGINX reads the local folder itself
        planner = Planner(
            lambda sop: catalog.get_instance(sop, with_metadata=False),
            lambda study, series: catalog.instances_of(study, series, with_metadata=False),
            storage.origin_path,
            whole_object_prefix=nginx.FILE if local else nginx.WHOLE_SEGMENT,
            range_prefix=nginx.FILE_SEGMENT if local else nginx.SEGMENT,
            study_version=catalog.study_version,
            generation=authorizer.generation,
            plan_seconds=settings.plan_cache_seconds,
            derivatives_for_any=settings.derivatives_for_any,
            converted=ConvertedReader(storage, settings.bulkdata_threshold),
            load_metadata=lambda sop: _metadata_of(catalog, sop),
            # a local stat costs microseconds; on S3 it would be a HEAD, a round trip added to every instance's first
            # frame, for an object that vanished behind the catalog's back (`reconcile` finds those): not checked
            present=(lambda key: storage.head(key) is not None) if local else None,
        )
        destinations: dict[str, Storage] = {}
        # the pool's processes build their hooks from the settings: only for the hooks the settings make
        processes = settings.ingest_processes if hooks is None else 0
        if hooks is None:
            hooks, destinations = build_policy_hooks(settings, storage, create=migrate)
        spool_dir = Path(settings.tmp_dir or tempfile.gettempdir())
        sweep_spool(spool_dir)  # what a worker killed mid-upload left (a new worker starts in its place)
        from gateway.derive import open_offering

        ingestor = Ingestor(
            settings,
            storage,
            catalog,
            hooks,
            spool_dir=spool_dir,
            destinations=destinations,
            derivatives=open_offering(settings, catalog),
            processes=processes,
        )
        return cls(settings, storage, catalog, tokens, authorizer, planner, ingestor, spool_dir)
