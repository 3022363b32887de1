"""Failed logins in the database, so the throttle holds across workers: with
``serve --workers N`` each process used to keep its own counts, and a guesser
got up to N x ``max_failed_logins`` tries per window.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_login_failures_name", "login_failures", ["name", "at"])


def downgrade() -> None:
    op.drop_index("ix_login_failures_name", table_name="login_failures")
    op.drop_table("login_failures")
