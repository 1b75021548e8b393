"""The catalog (SQLite or PostgreSQL) and QIDO-RS search over it."""

from __future__ import annotations

from gateway.catalog.catalog import Catalog
from gateway.catalog.qido import QidoQuery, parse_qido
from gateway.catalog.records import InstanceRecord, InstanceRow, search_values

__all__ = ["Catalog", "InstanceRecord", "InstanceRow", "QidoQuery", "parse_qido", "search_values"]
