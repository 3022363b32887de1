"""Migration 0013 (the audit's object index by runs of ``AUDIT_BUCKET`` entries: ``audit.object_bucket``, computed from
``seq``), up from 0012 and back on both backends, and lookups by object across runs.

The log is written by the real code (``audit.record``) at the newest revision, taken down to 0012 by the real
migrations (the column and its index go, the entries and their hashes stay) and up again."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from exchange.storage import audit, migrate
from exchange.storage.integrity import known_revisions
from exchange.storage.migrate import current
from exchange.storage.schema import AUDIT_BUCKET
from exchange.storage.store import Store
from tests.unit.legacy_db import downgrade

OID = "indicator--0b4b5f5e-3c63-4c0e-9e1a-5d2c7f1e9a11"
OTHER = "indicator--7d0b8f52-2a41-4a8b-bb1f-3f1d6f0c2b22"
V = "2026-12-04T00:00:00.000Z"


def _fill(store: Store) -> None:
    """OID audited in the first run and in the second (entries 1 and AUDIT_BUCKET + 1), OTHER in between."""
    audit.record(store, [audit.Entry("pull", "rok", OID, V, "accepted")])
    audit.record(store, [audit.Entry("pull", "rok", OTHER, V, "accepted")] * (AUDIT_BUCKET - 1))
    audit.record(store, [audit.Entry("share", "jp", OID, V, "share", ("scf.a",), {"reason": "in the second run"})])


def _indexes(store: Store) -> dict[str, list[str]]:
    with store.engine.connect() as conn:
        return {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("audit")}


@pytest.fixture
def store(tmp_path, database):  # type: ignore[no-untyped-def]
    s = Store.open(data_dir=tmp_path / "n", database=database)
    yield s
    s.close()


def test_0013_is_the_newest_revision():
    assert known_revisions()[-1] == "0013" == migrate.revisions()[-1]
    assert known_revisions()[-2] == "0012"


def test_an_object_audited_in_two_runs_is_found_in_both(store):
    _fill(store)
    got = [(e["seq"], e["partner"]) for e in audit.select_entries(store, object_id=OID)]
    assert got == [(1, "rok"), (AUDIT_BUCKET + 1, "jp")]
    assert len(list(audit.select_entries(store, object_id=OTHER))) == AUDIT_BUCKET - 1
    assert list(audit.select_entries(store, object_id="indicator--00000000-0000-4000-8000-000000000000")) == []
    with store.engine.connect() as conn:
        buckets = conn.execute(text("SELECT seq, object_bucket FROM audit WHERE seq IN (1, :a, :b) ORDER BY seq"),
                               {"a": AUDIT_BUCKET - 1, "b": AUDIT_BUCKET + 1}).all()
    assert [tuple(b) for b in buckets] == [(1, 0), (AUDIT_BUCKET - 1, 0), (AUDIT_BUCKET + 1, 1)]


def test_an_empty_log_finds_nothing_by_object(store):
    assert list(audit.select_entries(store, object_id=OID)) == []


def test_a_lookup_by_object_seeks_the_index_instead_of_scanning_the_log(tmp_path):
    s = Store.open(data_dir=tmp_path / "n")
    try:
        _fill(s)
        with s.engine.connect() as conn:
            stmt = audit.audit.select().where(audit.object_filter(conn, OID))
            sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        assert "ix_audit_object_bucket (object_bucket=? AND object_id=?)" in plan, plan
    finally:
        s.close()


def test_down_to_0012_and_up_again_keeps_every_entry_and_its_chain(store):
    _fill(store)
    before = list(audit.entries(store))
    assert _indexes(store)["ix_audit_object_bucket"] == ["object_bucket", "object_id"]
    assert "ix_audit_object" not in _indexes(store)
    downgrade(store.engine, "0012")
    assert current(store.engine) == "0012"
    with store.engine.connect() as conn:
        assert "object_bucket" not in {c["name"] for c in inspect(conn).get_columns("audit")}
    assert _indexes(store)["ix_audit_object"] == ["object_id"] and "ix_audit_object_bucket" not in _indexes(store)
    migrate.upgrade(store.engine)
    assert current(store.engine) == "0013"
    assert list(audit.entries(store)) == before
    assert audit.verify(store).ok
    assert [e["seq"] for e in audit.select_entries(store, object_id=OID)] == [1, AUDIT_BUCKET + 1]
