"""Rows name their collection by a small integer key (``collections``, ``objects.coll``; migration 0009), on both backends."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import create_engine, inspect, text

from exchange.errors import StorageError
from exchange.storage.integrity import known_revisions
from exchange.storage.migrate import current
from exchange.storage.store import DB_FILE, Selection, Store, normalise_url, now_us
from tests.conftest import new_indicator
from tests.unit.legacy_db import downgrade, legacy_database

OWN = "e3a18dc0-a9f3-466f-95d9-d848c4da8e7f"
READ_A = "8b867088-c500-4376-88a7-45a44c42006b"
READ_B = "91ffe069-67d3-4d95-9777-7095f6b0a0d3"
SIGNATURE = "x-cti-signature--2b6ad2d4-3cbb-4b4e-9d49-2c7a8d1f1a11"


def _open(tmp_path, database) -> Store:
    return Store.open(data_dir=tmp_path, database=database)


def _engine(tmp_path, database):  # type: ignore[no-untyped-def]
    return create_engine(normalise_url(database) if database else f"sqlite:///{tmp_path / DB_FILE}")


def _all(store: Store, cid: str) -> list[dict]:
    return [orjson.loads(r.body) for r in store.iter_rows(Selection(cid, versions=("all",)))]


def _keys(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return dict(conn.execute(text("SELECT collection_id, key FROM collections")).all())


_SNAPSHOT = ("SELECT o.seq, {cid}, o.stix_id, o.stix_type, o.version, o.version_key, o.spec_version, o.date_added, o.is_first, "
             "o.is_last, o.body_hash, o.encrypt_in_transit, o.origin FROM objects o {join} ORDER BY o.seq")


_VERSIONED = ("SELECT o.seq, c.collection_id, v.stix_id, o.stix_type, v.version, v.version_key, v.spec_version, o.date_added, "
              "o.is_first, o.is_last, COALESCE(o.body_hash, v.body_hash), o.encrypt_in_transit, o.origin FROM objects o "
              "JOIN collections c ON c.key = o.coll JOIN versions v ON v.key = o.ver ORDER BY o.seq")


def _rows(engine, keyed: bool, versioned: bool = False) -> list[tuple]:  # type: ignore[no-untyped-def]
    """Every ``objects`` row with its collection's id, whichever way the revision names it (``versioned``: at 0011 or
    later, the version's columns in ``versions``)."""
    sql = _VERSIONED if versioned else _SNAPSHOT.format(cid="c.collection_id", join="JOIN collections c ON c.key = o.coll") if keyed \
        else _SNAPSHOT.format(cid="o.collection_id", join="")
    with engine.connect() as conn:
        return [(*r[:10], bytes(r[10]), *r[11:]) for r in conn.execute(text(sql)).all()]


def test_rows_hold_the_collections_key_and_the_indexes_lead_with_it(tmp_path, database):
    store = _open(tmp_path, database)
    one, two = new_indicator(1), new_indicator(2)
    try:
        store.add_objects(OWN, [one, two])
        store.add_objects(READ_A, [one])
        assert _keys(store) == {OWN: 1, READ_A: 2}  # made by the first write, in order
        with store.engine.connect() as conn:
            insp = inspect(conn)
            columns = [c["name"] for c in insp.get_columns("objects")]
            indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("objects")}
            unique = {u["name"]: u["column_names"] for u in insp.get_unique_constraints("objects")}
            assert store.where_collection(conn, "no-such-collection") is not None
        assert columns[:3] == ["seq", "coll", "ver"] and "collection_id" not in columns and "stix_id" not in columns  # 0011
        assert unique == {"uq_objects_version": ["coll", "ver"]}
        assert {n: c for n, c in indexes.items() if n.startswith("ix_objects")} == {
            "ix_objects_all": ["coll", "date_added", "seq", "is_last", "is_first"],
            "ix_objects_type": ["coll", "stix_type", "is_last", "date_added", "seq"],
            "ix_objects_encrypted": ["coll", "date_added", "seq"],
        }
        assert _all(store, OWN) == [one, two] and _all(store, READ_A) == [one]
        assert store.count(READ_A) == 1 and store.count(OWN) == 2
    finally:
        store.close()


def test_reads_of_a_collection_without_rows_find_nothing_and_make_no_key(tmp_path, database):
    store = _open(tmp_path, database)
    one = new_indicator(1)
    try:
        store.add_objects(OWN, [one])
        oid = one["id"]
        sel = Selection(READ_B, versions=("all",))
        assert store.page(sel, limit=10) == ([], False)
        assert store.page(Selection(READ_B, types=("indicator", "malware")), limit=10) == ([], False)
        assert store.count(READ_B, all_versions=True) == 0 and store.last_key(READ_B) is None
        assert not store.exists(READ_B, oid) and store.latest(READ_B, oid) is None
        assert store.versions_list(READ_B, oid) == [] and store.existing_ids(READ_B, [oid]) == set()
        assert store.latest_many([READ_B, OWN], [oid]) == [one]
        assert store.versions_of(READ_B, [(oid, one["modified"])]) == [] and store.versions_of(OWN, [(oid, one["modified"])]) == [one]
        assert store.withheld_in_range(sel, after=None, upto=None) == []
        assert store.delete_object(sel, oid) == 0
        with store.transaction() as conn:
            assert store.remove_in(conn, READ_B, oid) == 0 and store.latest_in(conn, READ_B, [oid]) == {}
        assert _keys(store) == {OWN: 1}
    finally:
        store.close()


def test_a_key_made_by_a_rolled_back_write_is_not_remembered(tmp_path, database):
    """The write that made a collection's key rolled back: another process may give that number to another
    collection, and this store must not take it for the first one's (keys are cached only once committed)."""
    store = _open(tmp_path, database)
    other = _open(tmp_path, database)
    one, two, three = new_indicator(1), new_indicator(2), new_indicator(3)
    try:
        with pytest.raises(StorageError), store.transaction() as conn:
            store.add_in(conn, READ_A, [one])
            assert store.latest_in(conn, READ_A, [one["id"]]) == {one["id"]: one}  # the write sees its own rows
            conn.execute(text("SELECT * FROM no_such_table"))  # the transaction fails: everything rolls back
        assert store.page(Selection(READ_A), limit=10) == ([], False)
        other.add_objects(READ_B, [two])  # the number READ_A had for a moment
        keys = _keys(store)
        assert list(keys) == [READ_B] and (database is not None or keys[READ_B] == 1)  # SQLite reuses the number
        assert store.page(Selection(READ_A), limit=10) == ([], False) and store.count(READ_A) == 0
        assert _all(store, READ_B) == [two]
        assert store.add_objects(READ_A, [three]).added == 1
        assert _keys(other) == {READ_B: keys[READ_B], READ_A: keys[READ_B] + 1}
        assert _all(other, READ_A) == [three] and _all(store, READ_A) == [three]
        assert _all(store, READ_B) == [two] and _all(other, READ_B) == [two]
    finally:
        store.close()
        other.close()


def test_migration_keys_every_collection_of_a_revision_0008_database_and_back(tmp_path, database):
    """A database made by revision 0008 (the collection's id in every row) upgrades in place: the same rows under the
    same ``seq``, each naming its collection by key; new rows continue the ``seq`` order; the downgrade restores 0008."""
    first = new_indicator(1, modified="2024-01-01T00:00:00.000Z")
    second = {**first, "modified": "2024-02-01T00:00:00.000Z", "name": "second version"}
    other = new_indicator(2)
    rows = [(READ_A, first), (OWN, first), (OWN, second), (OWN, other), (READ_A, second), (READ_B, other)]
    legacy_database(database or tmp_path / DB_FILE, "0008", "us", rows)
    engine = _engine(tmp_path, database)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO signature_members (collection_id, member, signature_id) VALUES (:c, 'm1', :s)"),
                         {"c": OWN, "s": SIGNATURE})
        before = _rows(engine, keyed=False)
        store = _open(tmp_path, database)
        try:
            assert current(store.engine) == known_revisions()[-1]
            assert _keys(store) == {READ_A: 1, OWN: 2, READ_B: 3}  # in the order of each collection's first row
            assert _rows(engine, keyed=True, versioned=True) == before
            assert _all(store, OWN) == [first, second, other] and _all(store, READ_A) == [first, second]
            assert [orjson.loads(r.body) for r in store.iter_rows(Selection(OWN))] == [second, other]  # is_last kept
            assert store.add_objects(READ_B, [first]).added == 1  # a new row: the next seq, the migrated key
            assert store.add_objects("4f1c2a55-1b6e-4b2a-9d35-0c8f43a0e0a1", [other]).added == 1  # a new collection: key 4
            assert _keys(store) == {READ_A: 1, OWN: 2, READ_B: 3, "4f1c2a55-1b6e-4b2a-9d35-0c8f43a0e0a1": 4}
            after = _rows(engine, keyed=True, versioned=True)
            assert after[:-2] == before and [r[0] for r in after[-2:]] == [before[-1][0] + 1, before[-1][0] + 2]
            with store.engine.connect() as conn:
                members = conn.execute(text("SELECT collection_id, member, signature_id FROM signature_members")).all()
            assert [tuple(m) for m in members] == [(OWN, "m1", SIGNATURE)]
        finally:
            store.close()
        downgrade(engine, "0008")
        with engine.connect() as conn:
            assert "collections" not in inspect(conn).get_table_names()
            assert [c["name"] for c in inspect(conn).get_columns("objects")][:2] == ["seq", "collection_id"]
        assert _rows(engine, keyed=False) == after
        reopened = _open(tmp_path, database)  # and up again
        try:
            assert _rows(engine, keyed=True, versioned=True) == after
            assert _all(reopened, READ_B) == [other, first]
            assert reopened.add_objects(OWN, [new_indicator(5)]).added == 1
        finally:
            reopened.close()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "sel,index",
    [
        (Selection(READ_A, added_after=1), "ix_objects_all"),  # last: the flag is in the index (0011)
        (Selection(READ_A, types=("indicator",), added_after=1), "ix_objects_type"),
        (Selection(READ_A, versions=("all",), added_after=1), "ix_objects_all"),
        (Selection(READ_A, versions=("first",), added_after=1), "ix_objects_all"),
        (Selection(READ_A, added_after=1, plain_transport=True), "ix_objects_all"),
    ],
)
def test_a_partners_page_walks_an_index_on_sqlite(tmp_path, sel, index):
    """A partner's page (``added_after``, ``match[type]``, ``match[version]=last``) is an index walk on the key,
    without a scan or a sort, among several collections."""
    store = Store.open(data_dir=tmp_path)
    try:
        for cid in (OWN, READ_A, READ_B):
            store.add_objects(cid, [new_indicator(i) for i in range(200)])
        stmt = store.page_statement(sel, limit=1000, after=(now_us(), 2))
        sql = str(stmt.compile(store.engine, compile_kwargs={"literal_binds": True}))
        assert "coll = 2" in sql
        with store.engine.connect() as conn:
            detail = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
    finally:
        store.close()
    assert f"INDEX {index}" in detail, detail
    assert "TEMP B-TREE" not in detail and "SCAN" not in detail, detail
