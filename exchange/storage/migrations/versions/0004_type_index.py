"""An index by type within a collection: ``match[type]`` pages and the attribution
scan (relationships and opinions among many indicators) probe only the rows of
those types instead of walking the whole collection.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_objects_type", "objects", ["collection_id", "stix_type", "is_last", "date_added", "seq"])


def downgrade() -> None:
    op.drop_index("ix_objects_type", table_name="objects")
