"""Batch signatures (issue 15): one ``x-cti-signature`` per batch of up to 128 versions (extension 1.2.0) instead of
one per version; ``signature_members`` says which stored batch signature covers which version of a collection
(by the version's member key), so the companion of a version is found without a scan.  Nothing to carry over:
the per-version signatures stored before are found by their name-based ids as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signature_members",
        sa.Column("collection_id", sa.String(64), nullable=False),
        sa.Column("member", sa.String(32), nullable=False),
        sa.Column("signature_id", sa.String(300), nullable=False),
    )
    op.create_index("ix_signature_members", "signature_members", ["collection_id", "member"])


def downgrade() -> None:
    op.drop_index("ix_signature_members", table_name="signature_members")
    op.drop_table("signature_members")
