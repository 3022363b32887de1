"""Alembic environment: run by ``exchange.storage.migrate`` on the store's own connection."""

from __future__ import annotations

from alembic import context

from exchange.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the store runs migrations
    raise RuntimeError("cti-exchange migrations run through exchange.storage.migrate, on an open connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
