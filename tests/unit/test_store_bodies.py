"""Each object version's JSON text is stored once (``version_bodies``, keyed by its version, migration 0012; a row's own
text, a redacted copy, in ``bodies`` keyed by SHA-256, migration 0007), on both backends."""

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


def _versions(store: Store) -> dict[str, tuple[bytes, int]]:
    with store.engine.connect() as conn:
        return {sid: (bytes(h), n) for sid, h, n in conn.execute(text("SELECT stix_id, body_hash, rows FROM versions"))}


def _version_texts(store: Store) -> dict[str, str]:
    """Each version's text (``version_bodies``), by id and version."""
    with store.engine.connect() as conn:
        return {f"{sid} {v}": b for sid, v, b in conn.execute(text(
            "SELECT v.stix_id, v.version, vb.body FROM versions v JOIN version_bodies vb ON vb.key = v.key"))}


def _orphan_texts(store: Store) -> int:
    """``version_bodies`` rows of no version (none, ever)."""
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM version_bodies WHERE key NOT IN (SELECT key FROM versions)")).scalar_one()


def _own_bodies(store: Store) -> list:
    with store.engine.connect() as conn:
        return [bytes(h) for (h,) in conn.execute(text("SELECT body_hash FROM objects WHERE body_hash IS NOT NULL"))]


def test_a_version_held_by_several_collections_is_one_body(tmp_path, database):
    """One version, one ``versions`` row and one text, however many collections hold it (migrations 0011, 0012); a
    redacted copy is a body of the row's own; the last row of a version takes the version and its text along."""
    store = _open(tmp_path, database)
    try:
        obj = new_indicator(1)
        redacted = {k: v for k, v in obj.items() if k != "name"}
        for cid in (OWN, READ_A):
            store.add_objects(cid, [obj])
        store.add_objects(READ_B, [redacted])
        held = _bodies(store)
        text_ = orjson.dumps(obj).decode()
        digest = hashlib.sha256(text_.encode()).digest()
        redacted_digest = hashlib.sha256(orjson.dumps(redacted).decode().encode()).digest()
        version = f"{obj['id']} {obj['modified']}"
        assert _version_texts(store) == {version: text_}  # once, under its version, not per row
        assert held == {redacted_digest: (orjson.dumps(redacted).decode(), 1)}  # the redacted copy: the one body of a row's own
        assert _versions(store) == {obj["id"]: (digest, 3)}
        assert _own_bodies(store) == [redacted_digest]  # the only row whose text is not its version's
        assert _all(store, OWN) == [obj] and _all(store, READ_A) == [obj] and _all(store, READ_B) == [redacted]
        with store.transaction() as conn:
            assert store.remove_in(conn, READ_A, obj["id"]) == 1
        assert _all(store, OWN) == [obj] and _version_texts(store) == {version: text_} and _versions(store)[obj["id"]][1] == 2
        assert store.delete_object(Selection(OWN, versions=("all",)), obj["id"]) == 1
        assert _version_texts(store) == {version: text_} and _versions(store)[obj["id"]][1] == 1  # READ_B's row holds the version
        assert _bodies(store) == held
        with store.transaction() as conn:
            assert store.remove_in(conn, READ_B, obj["id"]) == 1
        # the last row took the version, its text and its own body along
        assert _bodies(store) == {} and _versions(store) == {} and _version_texts(store) == {} and _orphan_texts(store) == 0
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
        # since 0012 each version's text is under its version (however many rows hold it) and ``bodies`` holds a row's
        # text only where it differs from its version's (the redacted copy of ``other``, which has its id and version)
        assert {b: n for b, n in held.values()} == {orjson.dumps(redacted).decode(): 1}
        assert all(h == hashlib.sha256(b.encode()).digest() for h, (b, _) in held.items())
        assert sorted(_version_texts(store).values()) == sorted(orjson.dumps(o).decode() for o in (first, second, other))
        with store.engine.connect() as conn:
            counts = dict(conn.execute(text("SELECT version, rows FROM versions WHERE stix_id = :i"), {"i": first["id"]}).all())
        assert counts == {first["modified"]: 2, second["modified"]: 3} and _versions(store)[other["id"]][1] == 3
        # the store writes on after the migration: a new row of a migrated version references it
        assert store.add_objects(READ_B, [first]).added == 1
        assert _bodies(store) == held and len(_version_texts(store)) == 3
    finally:
        store.close()
    reopened = _open(tmp_path, database)  # a second open finds nothing to migrate
    try:
        assert _all(reopened, READ_B) == [second, redacted, first]
    finally:
        reopened.close()
