"""The audit's object index by runs of entries (issue 21): ``audit.object_bucket`` (``seq / 8192``, computed by the
database, never written nor hashed) leads the index of ``object_id``.  The entries one transaction appends then go into
the newest run's part of the index instead of random places of an index over the whole log, most of whose leaves a
release batch of 2,000 objects to two partners (3,000 entries) touched: the 51 commits of a release of 100,000 took
0.86-0.99 s with that index and 0.48 s with this one, as without any (bench/README.md).  A lookup by object probes each run
(``exchange.storage.audit.object_filter``).

Nothing to carry over: the column is computed from ``seq`` for every row, old ones included (SQLite: a virtual column
added by ``ALTER TABLE``; PostgreSQL: a stored one, filled by the ``ALTER TABLE``), and the hashes do not cover it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_BUCKET = 8192  # exchange.storage.schema.AUDIT_BUCKET when this revision was made (frozen here)


def upgrade() -> None:
    # SQLite adds only virtual columns by ALTER TABLE (an index on one stores its values); PostgreSQL's must be stored
    stored = True if op.get_bind().dialect.name == "postgresql" else None
    op.add_column("audit", sa.Column("object_bucket", sa.BigInteger(), sa.Computed(f"seq / {_BUCKET}", persisted=stored), nullable=True))
    op.create_index("ix_audit_object_bucket", "audit", ["object_bucket", "object_id"])
    op.drop_index("ix_audit_object", table_name="audit")


def downgrade() -> None:
    op.create_index("ix_audit_object", "audit", ["object_id"])
    op.drop_index("ix_audit_object_bucket", table_name="audit")
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("object_bucket")
