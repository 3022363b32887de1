"""The store on a real SQLite file: keyset paging, version flags, idempotent adds."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from exchange.storage.store import Selection, Store
from tests.conftest import fresh_database, new_indicator

CID = "e3a18dc0-a9f3-466f-95d9-d848c4da8e7f"


@pytest.fixture
def store(tmp_path, database):
    s = Store.open(data_dir=tmp_path, database=database)
    yield s
    s.close()


def _page_all(store: Store, sel: Selection, limit: int) -> list[str]:
    ids, after = [], None
    while True:
        rows, more = store.page(sel, limit=limit, after=after)
        ids += [r.stix_id for r in rows]
        if not more:
            return ids
        after = (rows[-1].date_added, rows[-1].seq)


def test_keyset_paging_over_one_shared_date_added(store):
    objs = [new_indicator(i) for i in range(1000)]
    result = store.add_objects(CID, objs)
    assert result.added == 1000
    ids = _page_all(store, Selection(CID), limit=7)
    assert ids == [o["id"] for o in objs]


def test_date_added_never_goes_backwards_even_if_the_clock_does(store):
    first = store.add_objects(CID, [new_indicator(1)], date_added=2_000_000_000_000_000)
    second = store.add_objects(CID, [new_indicator(2)], date_added=1_000_000_000_000_000)
    assert second.date_added >= first.date_added


def test_first_and_last_flags_follow_inserts_and_deletes(store):
    base = new_indicator(1)
    stamps = ["2024-01-01T00:00:00.000Z", "2024-03-01T00:00:00.000Z", "2024-02-01T00:00:00.000Z"]
    for s in stamps:
        store.add_objects(CID, [dict(base, modified=s)])
    last, _ = store.page(Selection(CID, versions=("last",)), limit=10)
    first, _ = store.page(Selection(CID, versions=("first",)), limit=10)
    assert [r.version for r in last] == ["2024-03-01T00:00:00.000Z"]
    assert [r.version for r in first] == ["2024-01-01T00:00:00.000Z"]
    store.delete_object(Selection(CID, versions=("2024-03-01T00:00:00.000Z",)), base["id"])
    last, _ = store.page(Selection(CID, versions=("last",)), limit=10)
    assert [r.version for r in last] == ["2024-02-01T00:00:00.000Z"]


def test_identical_repost_writes_nothing_and_conflict_fails(store):
    obj = new_indicator(1)
    assert store.add_objects(CID, [obj]).added == 1
    again = store.add_objects(CID, [obj, obj])
    assert again.added == 0 and len(again.successes) == 2 and not again.failures
    clash = store.add_objects(CID, [dict(obj, name="changed")])
    assert clash.added == 0 and len(clash.failures) == 1
    assert store.count(CID, all_versions=True) == 1


def test_iter_rows_streams_everything_in_order(store):
    objs = [new_indicator(i) for i in range(2500)]
    store.add_objects(CID, objs[:1200])
    store.add_objects(CID, objs[1200:])
    assert [r.stix_id for r in store.iter_rows(Selection(CID), batch=500)] == [o["id"] for o in objs]


def _page_sql(store: Store, sel: Selection) -> str:
    stmt = store.page_statement(sel, limit=1000, after=(1, 2))  # the page query itself, its bodies joined
    return str(stmt.compile(store.engine, compile_kwargs={"literal_binds": True}))


@pytest.mark.parametrize(
    "sel,index",
    [
        (Selection(CID), "ix_objects_all"),  # the flags are in the index (migration 0011)
        (Selection(CID, versions=("all",)), "ix_objects_all"),
        (Selection(CID, types=("indicator",)), "ix_objects_type"),
    ],
)
def test_sqlite_pages_walk_an_index_without_sorting(tmp_path, sel, index):
    """One page must not scan or sort the collection: the planner walks the keyset index."""
    store = Store.open(data_dir=tmp_path)
    with store.engine.connect() as conn:
        detail = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + _page_sql(store, sel))))
    store.close()
    assert f"INDEX {index}" in detail, detail
    assert "TEMP B-TREE" not in detail and "SCAN" not in detail, detail


def test_postgresql_pages_walk_an_index_without_sorting(tmp_path):
    """On PostgreSQL too, a page is an index range scan in keyset order (no Sort node)."""
    with fresh_database("postgresql", tmp_path) as url:
        store = Store.open(database=url)
        try:
            store.add_objects(CID, [new_indicator(i) for i in range(2000)])
            with store.engine.connect() as conn:
                conn.execute(text("ANALYZE objects, versions, version_bodies, bodies"))
                plan = " ".join(r[0] for r in conn.execute(text("EXPLAIN " + _page_sql(store, Selection(CID)))))
        finally:
            store.close()
    # an index scan of objects in keyset order, stopped by the LIMIT: no sequential scan of the collection, no sort
    # (the page's texts are then found by version key: in a table this small the planner may hash all of them)
    assert "Index Scan using ix_objects_" in plan, plan
    assert "Sort" not in plan and "Seq Scan on objects" not in plan, plan


def test_postgresql_bulk_load_into_a_fresh_table_gets_statistics(tmp_path):
    """A fresh node's first bulk load: the store analyzes ``objects`` itself once the table has grown.

    Without statistics PostgreSQL estimated a collection at a few dozen rows, so each add's
    ``stix_id IN (...)`` lookup walked the whole collection through ``ix_objects_first``
    (1,600 adds/s at 100k objects instead of 11,000/s) until autovacuum got round to it.
    """
    import re

    with fresh_database("postgresql", tmp_path) as url:
        store = Store.open(database=url)
        try:
            for _ in range(12):
                store.add_objects(CID, [new_indicator(i) for i in range(2000)])
            with store.engine.connect() as conn:
                analyzed = conn.execute(text(
                    "SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'objects'"
                )).scalar()
                key = store.collection_key(conn, CID)
                plan = conn.execute(text(f"EXPLAIN SELECT seq FROM objects WHERE coll = {key}")).first()[0]
        finally:
            store.close()
    assert analyzed
    estimate = int(re.search(r"rows=(\d+)", plan).group(1))
    assert 12_000 <= estimate <= 48_000, plan  # 24,000 stored


def test_several_types_page_in_keyset_order_across_types(store):
    """match[type]=a,b is one indexed query per type, merged: same rows and order as one walk, nothing skipped."""
    def rel(i: int) -> dict:
        return {"type": "relationship", "spec_version": "2.1", "id": f"relationship--{i:08d}-0000-4000-8000-000000000000",
                "created": "2026-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z", "relationship_type": "uses",
                "source_ref": "intrusion-set--00000000-0000-4000-8000-000000000000",
                "target_ref": "malware--00000000-0000-4000-8000-000000000000"}

    for i in range(30):  # interleave: indicators, relationships and identities in separate envelopes
        store.add_objects(CID, [new_indicator(i)])
        store.add_objects(CID, [rel(i)])
    expected = [r.stix_id for r in store.iter_rows(Selection(CID)) if not r.stix_id.startswith("identity--")]
    got, after = [], None
    while True:
        rows, more = store.page(Selection(CID, types=("relationship", "indicator")), limit=7, after=after)
        got += [r.stix_id for r in rows]
        if not more:
            break
        after = (rows[-1].date_added, rows[-1].seq)
    assert got == expected and len(got) == 60


def test_failed_logins_are_seen_by_every_store_on_the_database(tmp_path, database):
    """Each worker opens its own Store: a failure one records counts for all (the login throttle)."""
    s = 1_000_000
    one = Store.open(data_dir=tmp_path, database=database)
    other = Store.open(data_dir=tmp_path, database=database)
    try:
        one.upsert_account("jp", password_hash="x", read=[CID])
        for t in (100, 101, 102):
            (one if t % 2 else other).note_failed_login("jp", t * s, forget_before=(t - 60) * s)
        got = other.login("jp", failures_after=50 * s, failures_limit=3)
        assert got.exists and got.readable == {CID}
        assert got.locking_failure == 100 * s  # the 3rd newest failure within the window
        assert other.login("jp", failures_after=100 * s, failures_limit=3).locking_failure is None  # 2 left in it
        assert other.login("jp").locking_failure is None  # no throttle asked for
        # a name without an account is counted alike (no enumeration)
        ghost = one.login("ghost", failures_after=0, failures_limit=1)
        assert not ghost.exists and ghost.locking_failure is None
        other.note_failed_login("ghost", 103 * s, forget_before=43 * s)
        assert one.login("ghost", failures_after=0, failures_limit=1) == ghost._replace(locking_failure=103 * s)
        assert one.account("ghost") is None and one.account("jp")[2] == {CID}
    finally:
        one.close()
        other.close()


def test_failed_logins_out_of_the_window_are_forgotten(store):
    from exchange.storage.schema import login_failures

    s = 1_000_000
    for i in range(300):  # a spray of names: the periodic sweep drops every expired row
        store.note_failed_login(f"spray-{i}", i * s, forget_before=(i - 10) * s)
    with store.engine.connect() as conn:
        left = conn.execute(select(login_failures.c.name)).scalars().all()
    assert len(left) <= 300 - 256 + 10, len(left)
    assert all(int(n.split("-")[1]) >= 256 - 10 for n in left)
