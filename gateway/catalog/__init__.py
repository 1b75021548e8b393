"""The catalog (SQLite or PostgreSQL) and QIDO-RS search over it (the SQL; ``gateway.dicomweb.qido`` parses the
query parameters)."""

from __future__ import annotations

from gateway.catalog.catalog import Catalog
from gateway.catalog.records import InstanceRecord, InstanceRow, search_values

__all__ = ["Catalog", "InstanceRecord", "InstanceRow", "search_values"]
