"""Alembic environment, driven programmatically by ``Catalog.migrate()`` (no alembic.ini at run time).

The caller passes an open connection in ``config.attributes["connection"]``; it already holds the migration
lock (SQLite ``BEGIN IMMEDIATE`` / PostgreSQL advisory lock), so several workers starting at once migrate
exactly once.
"""

from __future__ import annotations

from alembic import context

from gateway.catalog.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through gateway.catalog.Catalog.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things: copy-and-move
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
