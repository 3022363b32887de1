"""Each object version is stored once (``versions``, migration 0011); collections hold small rows referencing it.

``Store.add_in_many`` stages a batch once for every collection that holds none of its ids (the
partners of one release group) and writes each one exactly what ``add_in`` alone would.
"""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import text

from exchange.stix import format_timestamp
from exchange.storage.store import DB_FILE, Selection, Store
from tests.conftest import new_indicator

OWN = "e3a18dc0-a9f3-466f-95d9-d848c4da8e7f"
A = "8b867088-c500-4376-88a7-45a44c42006b"
B = "91ffe069-67d3-4d95-9777-7095f6b0a0d3"
C = "5c2b8f0e-3f61-4d7e-9d0b-2f7e1f0a9c11"
D = "0d1c4a9e-8b7f-4e2a-a3c5-6f1e2d3c4b5a"

IEP_ID = "marking-definition--6a0d6f8a-9d5e-4b8e-8a43-1d8f2c7b9e01"
IEP = {  # the official IEP 2.0 example's shape (encrypt_in_transit: may)
    "type": "marking-definition", "spec_version": "2.1", "id": IEP_ID, "created": "2024-01-10T14:52:41.853121Z",
    "name": "IEP data marking", "extensions": {"extension-definition--762e2e97-ee51-43e5-a9ea-165fbb862c4a": {
        "extension_type": "property-extension", "encrypt_in_transit": "may",
        "permitted_actions": "externally-visible-direct-actions", "affected_party_notifications": "may",
        "tlp": "amber", "provider_attribution": "must-not", "unmodified_resale": "must-not",
        "iep_id": "0224bfdf-ea3a-49c3-96f6-66d908bb1845", "iep_version": 2.0,
        "description": "This is a TLP-AMBER Information Exchange Policy", "start_date": "2022-10-01T00:00:00Z"}},
}


def _open(tmp_path, database) -> Store:
    return Store.open(data_dir=tmp_path, database=database)


def _rows(store: Store, cid: str) -> list[tuple]:
    """A collection's rows as a reader sees them, ``date_added`` relative to the collection's first row (and an
    unversioned SCO's version, its ``date_added``, told as such)."""
    rows = list(store.iter_rows(Selection(cid, versions=("all",))))
    base = next((r.date_added for r in rows if r.origin == "release"), 0)  # the batch's first row (earlier rows: None)

    def version(r) -> str:  # type: ignore[no-untyped-def]
        return "its date_added" if r.version == format_timestamp(r.date_added) else r.version

    return [(r.stix_id, version(r), r.spec_version, r.date_added - base if r.origin == "release" else None, r.body,
             r.encrypt_in_transit, r.origin) for r in rows]


def _flags(store: Store, cid: str) -> list[tuple]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT v.stix_id, o.is_first, o.is_last FROM objects o JOIN versions v ON v.key = o.ver "
            "WHERE o.coll = (SELECT key FROM collections WHERE collection_id = :c) ORDER BY o.seq"), {"c": cid})]


def _prepare(store: Store, batch: list[dict]) -> None:
    """C already holds an older version of the batch's second object (so its batch is staged on its own); D holds
    the IEP marking definition the third references, which lets it cross unencrypted (a collection without it
    cannot read the marking and flags that row encrypt_in_transit)."""
    store.add_objects(C, [dict(batch[1], modified="2023-01-01T00:00:00.000Z")])
    store.add_objects(D, [IEP])


SCO = {"type": "ipv4-addr", "spec_version": "2.1", "id": "ipv4-addr--6f8e3a4c-5b1d-4a9e-8c7f-0e2d1b3a4c5d", "value": "198.51.100.7"}


def _batch(with_sco: bool) -> list[dict]:
    """Four indicators, the third marked with ``IEP``; ``with_sco``: and an SCO without a version of its own."""
    return [new_indicator(1), new_indicator(2), new_indicator(3, object_marking_refs=[IEP_ID]), new_indicator(4)] + ([SCO] if with_sco else [])


# (order of the collections, whether the batch holds an unversioned SCO, how many times the batch is staged)
CASES = [("AB", False, 1), ("ABC", False, 2), ("DAB", False, 2), ("AB", True, 2), ("CAB", True, 3)]


@pytest.mark.parametrize("order,with_sco,stagings", CASES)
def test_a_batch_given_to_several_collections_writes_each_what_add_in_alone_would(tmp_path, database, monkeypatch, order, with_sco,
                                                                                    stagings):
    """Collections holding none of the batch's ids, with the same marking definitions at hand, are staged once (A and
    B); one holding an older version (C) or another marking definition (D), or a batch with an unversioned SCO (its
    version is each collection's own stamp), is staged on its own.  Either way each gets exactly its ``add_in``."""
    import exchange.storage.store as store_module

    batch = _batch(with_sco)
    staged: list[int] = []
    real = store_module._stage_versions

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        staged.append(1)
        return real(*args, **kwargs)

    together = _open(tmp_path / "together", database)
    try:
        _prepare(together, batch)
        monkeypatch.setattr(store_module, "_stage_versions", counting)
        with together.transaction() as conn:
            results = together.add_in_many(conn, [(c, batch) for c in [{"A": A, "B": B, "C": C, "D": D}[x] for x in order]],
                                           origin="release")
        monkeypatch.setattr(store_module, "_stage_versions", real)
        got = {c: (_rows(together, c), _flags(together, c)) for c in (A, B, C, D)}
        for x, result in zip(order, results, strict=True):  # each collection's rows start at its own stamp
            first = next(r for r in together.iter_rows(Selection({"A": A, "B": B, "C": C, "D": D}[x], versions=("all",)))
                         if r.origin == "release")
            assert first.date_added == result.date_added
    finally:
        together.close()
    assert len(staged) == stagings
    alone = Store.open(data_dir=tmp_path / "alone")  # on SQLite for either backend: what is compared is what a reader sees
    try:
        _prepare(alone, batch)
        expected_results = []
        for x in order:
            cid = {"A": A, "B": B, "C": C, "D": D}[x]
            with alone.transaction() as conn:
                expected_results.append(alone.add_in(conn, cid, batch, origin="release"))
        want = {c: (_rows(alone, c), _flags(alone, c)) for c in (A, B, C, D)}
    finally:
        alone.close()
    assert got == want
    assert len(got[A][0]) == len(batch) and got[A] == got[B]  # partners of one group: identical rows
    def told(r):  # type: ignore[no-untyped-def]  # the result, the SCO's version (its date_added) masked
        sco = SCO["id"]
        return (r.added, sorted((i, "-" if i == sco else v) for i, v in r.new),
                [{**x, "version": "-"} if x["id"] == sco else x for x in r.successes], r.failures)

    assert [told(r) for r in results] == [told(r) for r in expected_results]
    if "C" in order:
        assert len(got[C][0]) == len(batch) + 1 and not got[C][1][0][2]  # its old version of 2 is no longer the last
    if "D" in order:
        assert {row[0] for row in got[A][0] if row[5]} == {batch[2]["id"]} and not any(row[5] for row in got[D][0])


def test_rows_of_one_version_share_its_version_row_and_count_it(tmp_path, database):
    store = _open(tmp_path, database)
    try:
        batch = [new_indicator(i) for i in range(3)]
        with store.transaction() as conn:
            store.add_in_many(conn, [(OWN, batch), (A, batch), (B, batch)])
        with store.engine.connect() as conn:
            versions = conn.execute(text("SELECT stix_id, rows FROM versions ORDER BY key")).all()
            own_bodies = conn.execute(text("SELECT count(*) FROM objects WHERE body_hash IS NOT NULL")).scalar()
            refs = conn.execute(text("SELECT refs FROM bodies")).scalars().all()
            texts = conn.execute(text("SELECT v.stix_id, vb.body FROM versions v JOIN version_bodies vb ON vb.key = v.key "
                                      "ORDER BY v.key")).all()
        assert [tuple(v) for v in versions] == [(o["id"], 3) for o in batch]
        assert own_bodies == 0 and refs == []  # no row has a text of its own: ``bodies`` holds none
        assert [tuple(t) for t in texts] == [(o["id"], orjson.dumps(o).decode()) for o in batch]  # each version's, once
    finally:
        store.close()


def test_sqlite_finds_ids_in_a_collection_through_the_versions_index(tmp_path):
    """An id lookup in a collection starts from ``versions``' unique index, never from the collection's rows: SQLite
    is told the statistics of a large node (``sqlite_stat1``) and no ANALYZE is needed for that plan."""
    from exchange.storage.schema import objects

    store = Store.open(data_dir=tmp_path)
    try:
        store.add_objects(OWN, [new_indicator(i) for i in range(300)])
        store.add_objects(A, [new_indicator(i) for i in range(100)])
        key = store.collection_key(store.engine.connect(), A)
        stmt = objects.select().with_only_columns(objects.c.seq, objects.c.stix_id).where(
            objects.c.coll == key, objects.c.stix_id.in_([new_indicator(1)["id"], new_indicator(2)["id"]]))
        sql = str(stmt.compile(store.engine, compile_kwargs={"literal_binds": True}))
        with store.engine.connect() as conn:
            plan = [str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql))]
            stats = dict(conn.execute(text("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'versions'")).all())
    finally:
        store.close()
    assert plan[0].startswith("SEARCH versions USING") and "stix_id=?" in plan[0], plan
    assert all("SCAN" not in p for p in plan), plan
    assert stats and all(s.startswith("1000000 ") for s in stats.values()), stats
    assert (tmp_path / DB_FILE).exists()


def test_a_redacted_copy_keeps_a_body_of_its_own_and_both_read_back(tmp_path, database):
    store = _open(tmp_path, database)
    try:
        obj = new_indicator(7)
        redacted = {k: v for k, v in obj.items() if k != "name"}
        with store.transaction() as conn:
            store.add_in_many(conn, [(OWN, [obj]), (A, [redacted]), (B, [obj])])
        assert [orjson.loads(r.body) for r in store.iter_rows(Selection(A))] == [redacted]
        assert [orjson.loads(r.body) for r in store.iter_rows(Selection(B))] == [obj]
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM objects WHERE body_hash IS NOT NULL")).scalar() == 1
    finally:
        store.close()


def test_the_planner_statistics_are_written_once_and_restored_after_a_manual_analyze(tmp_path):
    """Opening a database whose statistics are already the planned ones writes nothing (several workers open at once);
    statistics a manual ``ANALYZE`` left are replaced by the planned ones at the next open."""
    import sqlite3

    def stats() -> set:
        db = sqlite3.connect(tmp_path / DB_FILE)
        try:
            return set(db.execute("SELECT tbl, idx, stat FROM sqlite_stat1 WHERE tbl IN ('objects', 'versions', 'bodies')"))
        finally:
            db.close()

    store = Store.open(data_dir=tmp_path)
    store.add_objects(OWN, [new_indicator(i) for i in range(50)])
    store.close()
    planned = stats()
    assert planned and all(s.startswith("1000000 ") for _, _, s in planned)
    watcher = sqlite3.connect(tmp_path / DB_FILE)
    try:  # PRAGMA data_version changes when another connection commits to the file
        before = watcher.execute("PRAGMA data_version").fetchone()[0]
        Store.open(data_dir=tmp_path).close()
        after = watcher.execute("PRAGMA data_version").fetchone()[0]
    finally:
        watcher.close()
    assert stats() == planned and after == before  # nothing written
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute("ANALYZE")
    db.commit()
    db.close()
    assert stats() != planned  # the real counts of a 50-row node
    Store.open(data_dir=tmp_path).close()
    assert stats() == planned


def _version_texts(store: Store) -> dict[str, tuple[int, str]]:
    """Each stored version's key and text, by its id, as the tables hold them (not through the store's own reads)."""
    with store.engine.connect() as conn:
        got = conn.execute(text("SELECT v.stix_id, v.key, vb.body FROM versions v JOIN version_bodies vb ON vb.key = v.key")).all()
    return {sid: (key, body) for sid, key, body in got}


def test_new_versions_get_consecutive_keys_that_hold_their_own_texts(tmp_path):
    store = _open(tmp_path, None)
    try:
        first = [new_indicator(i) for i in range(5)]
        store.add_objects(OWN, first)
        more = [new_indicator(i) for i in range(5, 12)]
        store.add_objects(A, more + first[:2])  # new versions after stored ones, in one batch
        held = _version_texts(store)
        assert sorted(k for k, _ in held.values()) == list(range(1, 13))
        assert [held[o["id"]][0] for o in first + more] == list(range(1, 13))  # in the order they were written
        assert all(orjson.loads(held[o["id"]][1]) == o for o in first + more)
        assert [store.latest(A, o["id"]) for o in more] == more
    finally:
        store.close()


def test_when_sqlite_picks_random_keys_the_new_versions_are_looked_up(tmp_path):
    """Once the largest possible rowid is taken, SQLite gives new rows random ones: the keys are not assumed."""
    store = _open(tmp_path, None)
    try:
        with store.transaction() as conn:
            conn.exec_driver_sql(
                "INSERT INTO versions (key, stix_id, version_key, version, spec_version, body_hash, rows) "
                "VALUES (9223372036854775807, 'x-top--0b4b5f5e-3c63-4c0e-9e1a-5d2c7f1e9a11', 1, '1', '2.1', x'00', 0)"
            )
        objs = [new_indicator(i) for i in range(20)]
        assert store.add_objects(OWN, objs).added == 20
        held = _version_texts(store)
        keys = [held[o["id"]][0] for o in objs]
        assert keys != list(range(keys[0], keys[0] + 20))  # random, as SQLite documents it
        assert all(orjson.loads(held[o["id"]][1]) == o for o in objs)
        assert [store.latest(OWN, o["id"]) for o in objs] == objs
        assert [r.body for r in store.iter_rows(Selection(OWN, versions=("all",)))] == [orjson.dumps(o).decode() for o in objs]
    finally:
        store.close()
