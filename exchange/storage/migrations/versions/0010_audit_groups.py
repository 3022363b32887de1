"""Group audit entries (issue 21): ``audit.partners``, the JSON list of the partners one entry stands for (the
release's decisions for several partners that differ only in the partner, ``exchange.storage.audit.grouped``).
Nothing to carry over: every entry written before is about one partner or none (NULL), and hashes as before.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit", sa.Column("partners", sa.Text(), nullable=True))  # ALTER TABLE ADD COLUMN: no table copy


def downgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("partners")
