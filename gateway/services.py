"""The long-lived objects one gateway process needs, built once from Settings (storage, catalog, tokens...)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.auth import Authorizer
from gateway.catalog import Catalog
from gateway.config import Settings
from gateway.hooks import Hook
from gateway.ingest import Ingestor
from gateway.plan import Planner
from gateway.storage import Storage, open_storage
from gateway.tokens import TokenService


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

    @classmethod
    def build(cls, settings: Settings, hooks: list[Hook] | None = None) -> Services:
        storage = open_storage(settings.storage_url)
        catalog = Catalog(settings.database_url)
        catalog.migrate()
        tokens = TokenService(settings.signing_keys, settings.token_max_ttl, settings.token_default_ttl)
        authorizer = Authorizer(tokens, settings.api_keys, catalog.revoked_jtis, settings.revocation_refresh)
        planner = Planner(catalog.get_instance, catalog.instances_of, storage.origin_path)
        if hooks is None:
            from gateway.phi.hook import build_hooks

            hooks = build_hooks(settings)
        spool_dir = Path(settings.tmp_dir or tempfile.gettempdir())
        ingestor = Ingestor(settings, storage, catalog, hooks, spool_dir=spool_dir)
        return cls(settings, storage, catalog, tokens, authorizer, planner, ingestor, spool_dir)
