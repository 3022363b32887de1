"""Each version's text keyed by the version (issue 21): ``version_bodies`` holds a stored version's JSON text under its
``versions.key``; ``bodies`` keeps only the texts that rows have of their own (``objects.body_hash``: a redacted copy),
and ``bodies.refs`` counts those rows alone.  A push's new versions then append their texts in key order instead of
inserting each into a random place of ``bodies``' hash index (bench/wal_bench.py: 487 of the 1,275 pages one envelope
wrote at 100,000 stored objects).  ``versions.body_hash`` stays: it tells a row's text from its version's.

The upgrade, in the upgrade's one transaction (a crash rolls it back whole, the next open redoes it):

1. ``version_bodies`` is made and filled in one ``INSERT ... SELECT``: each version's text from ``bodies`` by its
   ``body_hash``, in key order.
2. ``bodies.refs`` is recounted from the rows' own ``body_hash`` (grouped counts in a temporary table), and a body no
   row has of its own (a version's text, now in ``version_bodies``) is deleted.

The downgrade puts every version's text back into ``bodies`` (a text a row also has of its own: one body), recounts
``bodies.refs`` by 0011's rule (the versions and the rows of their own) and drops ``version_bodies``.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _recount_bodies(references: str) -> None:
    """Set every body's ``refs`` to the number of times its hash appears in ``references`` (a ``SELECT`` of one
    column ``h``, one row per reference) and delete the bodies it does not name (0011's step, frozen here)."""
    conn = op.get_bind()
    blob = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
    conn.execute(sa.text(f"CREATE TEMPORARY TABLE body_refs (hash {blob} PRIMARY KEY, n BIGINT NOT NULL)"))
    conn.execute(sa.text(f"INSERT INTO body_refs (hash, n) SELECT h, COUNT(*) FROM ({references}) r GROUP BY h"))
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ANALYZE body_refs"))
    conn.execute(sa.text("UPDATE bodies SET refs = r.n FROM body_refs r WHERE r.hash = bodies.hash AND bodies.refs <> r.n"))
    conn.execute(sa.text("DELETE FROM bodies WHERE NOT EXISTS (SELECT 1 FROM body_refs r WHERE r.hash = bodies.hash)"))
    conn.execute(sa.text("DROP TABLE body_refs"))


def upgrade() -> None:
    conn = op.get_bind()
    op.create_table(
        "version_bodies",
        sa.Column("key", _SEQ, primary_key=True, autoincrement=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    conn.execute(sa.text(
        "INSERT INTO version_bodies (key, body) SELECT v.key, b.body FROM versions v JOIN bodies b ON b.hash = v.body_hash ORDER BY v.key"
    ))
    _recount_bodies("SELECT body_hash AS h FROM objects WHERE body_hash IS NOT NULL")
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ANALYZE version_bodies, bodies"))


def downgrade() -> None:
    conn = op.get_bind()
    # each version's text back under its hash: once per hash (an SCO's versions in two collections have one text), and
    # not where some row has it of its own (there already)
    conn.execute(sa.text(
        "INSERT INTO bodies (hash, body, refs) SELECT v.body_hash, MIN(vb.body), 0 FROM versions v JOIN version_bodies vb ON vb.key = v.key "
        "WHERE NOT EXISTS (SELECT 1 FROM bodies b WHERE b.hash = v.body_hash) GROUP BY v.body_hash"
    ))
    _recount_bodies("SELECT body_hash AS h FROM versions UNION ALL SELECT body_hash AS h FROM objects WHERE body_hash IS NOT NULL")
    op.drop_table("version_bodies")
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ANALYZE bodies"))
