"""A partial index over the rows flagged encrypt_in_transit: a plain-HTTP page finds what it left out
(to audit it) by probing only those rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_objects_encrypted", "objects", ["collection_id", "date_added", "seq"],
        sqlite_where=sa.text("encrypt_in_transit = 1"), postgresql_where=sa.text("encrypt_in_transit"),
    )


def downgrade() -> None:
    op.drop_index("ix_objects_encrypted", table_name="objects")
