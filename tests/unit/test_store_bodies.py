"""Each object version's JSON text is stored once (``bodies``, keyed by SHA-256; migration 0007), on both backends."""

from __future__ import annotations

import hashlib

import orjson
from sqlalchemy import inspect, text

from exchange.storage.integrity import known_revisions
from exchange.storage.migrate import current
from exchange.storage.store import DB_FILE, Selection, Store
from tests.conftest import new_indicator
from tests.unit.legacy_db import legacy_database

OWN = "e3a18dc0-a9f3-466f-95d9-d848c4da8e7f"
READ_A = "8b867088-c500-4376-88a7-45a44c42006b"
READ_B = "91ffe069-67d3-4d95-9777-7095f6b0a0d3"


def _open(tmp_path, database) -> Store:
    return Store.open(data_dir=tmp_path, database=database)


def _bodies(store: Store) -> dict[bytes, tuple[str, int]]:
    with store.engine.connect() as conn:
        return {bytes(h): (b, n) for h, b, n in conn.execute(text("SELECT hash, body, refs FROM bodies"))}


def _all(store: Store, cid: str) -> list[dict]:
    return [orjson.loads(r.body) for r in store.iter_rows(Selection(cid, versions=("all",)))]


def test_a_version_held_by_several_collections_is_one_body(tmp_path, database):
    store = _open(tmp_path, database)
    try:
        obj = new_indicator(1)
        redacted = {k: v for k, v in obj.items() if k != "name"}
        for cid in (OWN, READ_A):
            store.add_objects(cid, [obj])
        store.add_objects(READ_B, [redacted])
        held = _bodies(store)
        text_ = orjson.dumps(obj).decode()
        assert held[hashlib.sha256(text_.encode()).digest()] == (text_, 2)
        assert len(held) == 2  # the redacted copy is simply another body
        assert _all(store, OWN) == [obj] and _all(store, READ_A) == [obj] and _all(store, READ_B) == [redacted]
        with store.transaction() as conn:
            assert store.remove_in(conn, READ_A, obj["id"]) == 1
        assert _all(store, OWN) == [obj] and _bodies(store)[hashlib.sha256(text_.encode()).digest()][1] == 1
        assert store.delete_object(Selection(OWN, versions=("all",)), obj["id"]) == 1
        assert hashlib.sha256(text_.encode()).digest() not in _bodies(store)  # the last row took its body along
        assert _all(store, READ_B) == [redacted]
    finally:
        store.close()


def test_migration_moves_every_row_of_a_revision_0006_database_into_bodies(tmp_path, database):
    """A database made by the previous schema (one full body per row) upgrades in place: the same rows serve the
    same objects, in the same keyset order, each distinct text stored once with its reference count."""
    first = new_indicator(1, modified="2024-01-01T00:00:00.000Z")
    second = {**first, "modified": "2024-02-01T00:00:00.000Z", "name": "second version"}
    other = new_indicator(2)
    redacted = {k: v for k, v in other.items() if k != "pattern"} | {"pattern": "[x:y = 'z']"}
    rows = [(OWN, first), (OWN, second), (OWN, other), (READ_A, first), (READ_A, second), (READ_A, other),
            (READ_B, second), (READ_B, redacted)]
    legacy_database(database or tmp_path / DB_FILE, "0006", None, rows)
    store = _open(tmp_path, database)
    try:
        assert current(store.engine) == known_revisions()[-1]  # upgraded through 0007 to the head
        with store.engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("objects")}
        assert "body" not in columns and "body_hash" in columns
        assert _all(store, OWN) == [first, second, other]
        assert _all(store, READ_A) == [first, second, other]
        assert _all(store, READ_B) == [second, redacted]
        assert [orjson.loads(r.body) for r in store.iter_rows(Selection(OWN))] == [second, other]  # is_last carried over
        held = _bodies(store)
        texts = {orjson.dumps(o).decode(): n for o, n in ((first, 2), (second, 3), (other, 2), (redacted, 1))}
        assert {b: n for b, n in held.values()} == texts
        assert all(h == hashlib.sha256(b.encode()).digest() for h, (b, _) in held.items())
        # the store writes on after the migration: a new version shares the migrated bodies' table
        assert store.add_objects(READ_B, [first]).added == 1
        assert _bodies(store)[hashlib.sha256(orjson.dumps(first)).digest()][1] == 3
    finally:
        store.close()
    reopened = _open(tmp_path, database)  # a second open finds nothing to migrate
    try:
        assert _all(reopened, READ_B) == [second, redacted, first]
    finally:
        reopened.close()
