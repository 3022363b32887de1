"""Each object version's JSON text stored once (issue 21): ``bodies`` keyed by the SHA-256 of the text's bytes,
``objects.body_hash`` referencing it instead of ``objects.body`` holding a copy per collection.

Existing rows are carried over in ``seq`` order, a chunk at a time, inside the upgrade's one transaction (a
crash rolls it back whole; the next open redoes it): every distinct text becomes one body, its ``refs`` the
number of rows that held it.  ``objects.body`` is dropped afterwards (SQLite >= 3.35 drops a column in place;
the freed pages are reused by later writes).  On SQLite ``body_hash`` stays nullable at the SQL level (a column
added in place cannot be NOT NULL without a default); the store always writes it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_CHUNK = 2000


def upgrade() -> None:
    op.create_table(
        "bodies",
        sa.Column("hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("refs", sa.BigInteger, nullable=False),
    )
    op.add_column("objects", sa.Column("body_hash", sa.LargeBinary(32), nullable=True))  # in place, no table copy
    conn = op.get_bind()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    put = (f"INSERT INTO bodies (hash, body, refs) VALUES ({mark}, {mark}, {mark}) "
           "ON CONFLICT (hash) DO UPDATE SET refs = bodies.refs + excluded.refs")
    point = f"UPDATE objects SET body_hash = {mark} WHERE seq = {mark}"
    after = -1
    while True:
        rows = conn.execute(
            sa.text("SELECT seq, body FROM objects WHERE seq > :after ORDER BY seq LIMIT :n"), {"after": after, "n": _CHUNK}
        ).all()
        if not rows:
            break
        texts: dict[bytes, list] = {}
        links = []
        for seq, body in rows:
            h = hashlib.sha256(body.encode("utf-8")).digest()
            links.append((h, seq))
            entry = texts.setdefault(h, [body, 0])
            entry[1] += 1
        conn.exec_driver_sql(put, [(h, b, n) for h, (b, n) in texts.items()])
        conn.exec_driver_sql(point, links)
        after = rows[-1][0]
    if conn.dialect.name == "postgresql":
        op.alter_column("objects", "body_hash", nullable=False)
    op.drop_column("objects", "body")


def downgrade() -> None:
    op.add_column("objects", sa.Column("body", sa.Text, nullable=True))
    conn = op.get_bind()
    conn.execute(sa.text("UPDATE objects SET body = (SELECT b.body FROM bodies b WHERE b.hash = objects.body_hash)"))
    op.drop_column("objects", "body_hash")
    op.drop_table("bodies")
