"""Initial schema: objects, statuses, accounts, grants, meta, sync_state, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "objects",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("collection_id", sa.String(64), nullable=False),
        sa.Column("stix_id", sa.String(300), nullable=False),
        sa.Column("stix_type", sa.String(250), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("version_key", sa.BigInteger, nullable=False),
        sa.Column("spec_version", sa.String(8), nullable=False),
        sa.Column("date_added", sa.BigInteger, nullable=False),
        sa.Column("is_first", sa.Boolean, nullable=False),
        sa.Column("is_last", sa.Boolean, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.UniqueConstraint("collection_id", "stix_id", "version_key", name="uq_objects_version"),
    )
    op.create_index("ix_objects_all", "objects", ["collection_id", "date_added", "seq"])
    op.create_index("ix_objects_last", "objects", ["collection_id", "is_last", "date_added", "seq"])
    op.create_index("ix_objects_first", "objects", ["collection_id", "is_first", "date_added", "seq"])
    op.create_table(
        "statuses",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("api_root", sa.String(64), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "accounts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("password_hash", sa.String(256), nullable=True),
        sa.Column("partner", sa.String(64), nullable=True),
        sa.Column("updated", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "grants",
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("collection_id", sa.String(64), nullable=False),
        sa.Column("permission", sa.String(8), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.PrimaryKeyConstraint("account", "collection_id", "permission", "source"),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "sync_state",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "audit",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("partner", sa.String(64), nullable=True),
        sa.Column("object_id", sa.String(300), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("decision", sa.String(32), nullable=True),
        sa.Column("clauses", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_object", "audit", ["object_id"])


def downgrade() -> None:
    for table in ("audit", "sync_state", "meta", "grants", "accounts", "statuses", "objects"):
        op.drop_table(table)
