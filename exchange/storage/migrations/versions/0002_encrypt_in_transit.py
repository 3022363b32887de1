"""objects.encrypt_in_transit: object versions that must never be served or pushed over plain HTTP.

Set on write from the object's markings (an IEP 2.0 marking with
``encrypt_in_transit: must``, or a marking that cannot be resolved); existing
rows are backfilled from the IEP marking definitions already stored.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.add_column(sa.Column("encrypt_in_transit", sa.Boolean, nullable=False, server_default=sa.false()))
    _backfill()


def _backfill() -> None:
    import orjson

    from exchange.policy.markings import IEP2_EXTENSION_ID, parse_iep

    conn = op.get_bind()
    objects = sa.table(
        "objects", sa.column("seq"), sa.column("collection_id"), sa.column("stix_type"), sa.column("body"),
        sa.column("encrypt_in_transit", sa.Boolean),
    )
    must: dict[str, set[str]] = {}  # collection -> ids of IEP marking definitions saying encrypt_in_transit: must
    rows = conn.execute(
        sa.select(objects.c.collection_id, objects.c.body).where(
            objects.c.stix_type == "marking-definition", objects.c.body.like(f"%{IEP2_EXTENSION_ID}%")
        )
    )
    for collection_id, body in rows:
        try:
            md = orjson.loads(body)
            iep = parse_iep(md)
        except ValueError:
            continue
        if iep is not None and iep.encrypt_in_transit == "must":
            must.setdefault(collection_id, set()).add(md["id"])
    for collection_id, ids in must.items():
        for mid in ids:
            conn.execute(
                sa.update(objects)
                .where(objects.c.collection_id == collection_id, objects.c.stix_type != "marking-definition", objects.c.body.like(f"%{mid}%"))
                .values(encrypt_in_transit=True)
            )


def downgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.drop_column("encrypt_in_transit")
