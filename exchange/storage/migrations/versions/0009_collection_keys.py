"""Collections by a small integer key (issue 21): ``collections`` gives each collection id (a 36-character UUID string)
an integer ``key``, and ``objects.coll`` holds that key instead of ``objects.collection_id``.  The id was repeated in
every row, in ``uq_objects_version`` and in the five ``ix_objects_*`` indexes: a partner's read collection, an index
of rows referencing shared bodies, cost about 590 bytes a row on SQLite, most of it the id.

The upgrade rebuilds ``objects`` on both backends (SQLite cannot change a column in place; on PostgreSQL an
``UPDATE`` of every row would leave the table twice its size until a vacuum): a new table with ``coll`` where
``collection_id`` was, the rows copied over in ``seq`` order with their key (one ``INSERT ... SELECT`` joining
``collections``), the old table dropped, the new one renamed, its constraint and indexes made under the same names on
``coll``.  ``seq`` values are kept (PostgreSQL: the sequence of the old column moves to the new one).  Everything
runs in the upgrade's one transaction: a crash rolls it back whole, the next open redoes it.  Keys are given in the
order of each collection's first row.  ``signature_members`` keeps its ``collection_id`` (a small table).

The downgrade rebuilds the table the other way and drops ``collections``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# the columns of ``objects`` after the first two (``seq``, then the collection's key or id), at revisions 0008 and 0009
_REST = ("stix_id", "stix_type", "version", "version_key", "spec_version", "date_added", "is_first", "is_last", "body_hash",
         "encrypt_in_transit", "origin")
# (name, columns) of the indexes on ``objects``, the collection column first in each (``None``: its place)
_INDEXES = (
    ("ix_objects_all", (None, "date_added", "seq")),
    ("ix_objects_last", (None, "is_last", "date_added", "seq")),
    ("ix_objects_first", (None, "is_first", "date_added", "seq")),
    ("ix_objects_type", (None, "stix_type", "is_last", "date_added", "seq")),
)


def _objects_table(name: str, collection: sa.Column) -> None:
    """Create the ``objects`` table under ``name`` with ``collection`` as its second column (no indexes yet)."""
    op.create_table(
        name,
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),  # PostgreSQL: the old column's sequence, moved over
        collection,
        sa.Column("stix_id", sa.String(300), nullable=False),
        sa.Column("stix_type", sa.String(250), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("version_key", sa.BigInteger, nullable=False),
        sa.Column("spec_version", sa.String(8), nullable=False),
        sa.Column("date_added", sa.BigInteger, nullable=False),
        sa.Column("is_first", sa.Boolean, nullable=False),
        sa.Column("is_last", sa.Boolean, nullable=False),
        sa.Column("body_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("encrypt_in_transit", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("origin", sa.String(80), nullable=True),
        sa.UniqueConstraint(collection.name, "stix_id", "version_key", name="uq_objects_version"),
    )


def _rebuild(collection: sa.Column, copy: str) -> None:
    """Replace ``objects`` by a copy whose second column is ``collection``, filled by ``copy`` (an ``INSERT ... SELECT``
    into ``objects_new`` from the old table as ``o``), with the constraint and indexes remade on ``collection``."""
    conn = op.get_bind()
    pg = conn.dialect.name == "postgresql"
    for name, _ in _INDEXES:
        op.drop_index(name, table_name="objects")
    op.drop_index("ix_objects_encrypted", table_name="objects")
    if pg:  # constraint names are the schema's on PostgreSQL (SQLite: the table's own, renamed along)
        op.drop_constraint("uq_objects_version", "objects", type_="unique")
    _objects_table("objects_new", collection)
    conn.execute(sa.text(copy))
    if pg:
        sequence = conn.execute(sa.text("SELECT pg_get_serial_sequence('objects', 'seq')")).scalar()
        conn.execute(sa.text(f"ALTER SEQUENCE {sequence} OWNED BY objects_new.seq"))
        conn.execute(sa.text(f"ALTER TABLE objects_new ALTER COLUMN seq SET DEFAULT nextval('{sequence}'::regclass)"))
    op.drop_table("objects")
    op.rename_table("objects_new", "objects")
    if pg:
        conn.execute(sa.text("ALTER TABLE objects RENAME CONSTRAINT objects_new_pkey TO objects_pkey"))
    for name, columns in _INDEXES:
        op.create_index(name, "objects", [collection.name if c is None else c for c in columns])
    op.create_index(
        "ix_objects_encrypted", "objects", [collection.name, "date_added", "seq"],
        sqlite_where=sa.text("encrypt_in_transit = 1"), postgresql_where=sa.text("encrypt_in_transit"),
    )
    if pg:
        conn.execute(sa.text("ANALYZE objects"))  # the page queries are planned from the new table's statistics


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("key", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("collection_id", sa.String(64), nullable=False),
        sa.UniqueConstraint("collection_id", name="uq_collections_id"),
    )
    conn = op.get_bind()
    conn.execute(sa.text(
        "INSERT INTO collections (collection_id) SELECT collection_id FROM objects GROUP BY collection_id ORDER BY MIN(seq)"
    ))
    rest = ", ".join(_REST)
    _rebuild(
        sa.Column("coll", sa.Integer, nullable=False),
        f"INSERT INTO objects_new (seq, coll, {rest}) SELECT o.seq, c.key, {', '.join('o.' + n for n in _REST)} "
        "FROM objects o JOIN collections c ON c.collection_id = o.collection_id ORDER BY o.seq",
    )


def downgrade() -> None:
    rest = ", ".join(_REST)
    _rebuild(
        sa.Column("collection_id", sa.String(64), nullable=False),
        f"INSERT INTO objects_new (seq, collection_id, {rest}) SELECT o.seq, c.collection_id, {', '.join('o.' + n for n in _REST)} "
        "FROM objects o JOIN collections c ON c.key = o.coll ORDER BY o.seq",
    )
    op.drop_table("collections")
