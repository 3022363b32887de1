"""Origin per stored version (issue 15): what the node observed about where each row came from, never what
the object claims. Existing rows are carried over by their collection's role in the node's configuration
(the node named in ``meta``): the own collection 'local', a partner's inbox 'partner:<partner>' (its pushes and
our pulls were not told apart before), a partner's read collection 'release'. Without a readable configuration
the rows keep NULL, which the node reads by collection role as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _roles(conn: sa.Connection) -> dict[str, str]:
    """collection id -> the origin its existing rows get, from the configuration of the node this database belongs to."""
    node = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'node'")).scalar()
    if node is None:
        return {}
    try:
        from exchange.config import load_node

        cfg = load_node(node).config
    except Exception:  # noqa: BLE001 - no readable configuration here: rows keep NULL (read by collection role)
        return {}
    out: dict[str, str] = {}
    for coll in cfg.collections:
        if coll.role == "own":
            out[coll.id] = "local"
        elif coll.role == "partner-inbox":
            out[coll.id] = f"partner:{coll.partner}"
        else:
            out[coll.id] = "release"
    return out


def upgrade() -> None:
    op.add_column("objects", sa.Column("origin", sa.String(80), nullable=True))  # ALTER TABLE ADD COLUMN: no table copy
    conn = op.get_bind()
    for collection_id, origin in _roles(conn).items():
        conn.execute(sa.text("UPDATE objects SET origin = :o WHERE collection_id = :c"), {"o": origin, "c": collection_id})


def downgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.drop_column("origin")
