"""Migration 0011 (``versions``: each stored object version once, ``objects.ver`` referencing it, a row's own
``body_hash`` only where its text differs), up from a revision 0010 database and back, on both backends.

The migration alone is tested here (upgrading to 0011, not to the newest revision), by SQL on the tables (no
``Store``): rows written as a 0010 node wrote them
(``tests/unit/legacy_db.py``), read before the upgrade, read again through the 0011 join after it."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter

import orjson
from sqlalchemy import create_engine, inspect, text

from exchange.storage import migrate
from exchange.storage.integrity import known_revisions, tables_at
from exchange.storage.migrate import current
from exchange.storage.store import normalise_url
from tests.conftest import new_indicator
from tests.unit.legacy_db import downgrade, legacy_database

OWN = "e3a18dc0-a9f3-466f-95d9-d848c4da8e7f"
READ_A = "8b867088-c500-4376-88a7-45a44c42006b"
READ_B = "91ffe069-67d3-4d95-9777-7095f6b0a0d3"
INBOX = "4f1c2a55-1b6e-4b2a-9d35-0c8f43a0e0a1"

# every row with its collection's id and its text, as revision 0010 stores them ...
_AT_0010 = ("SELECT o.seq, c.collection_id, o.stix_id, o.stix_type, o.version, o.version_key, o.spec_version, o.date_added, "
            "o.is_first, o.is_last, b.body, o.encrypt_in_transit, o.origin FROM objects o "
            "JOIN collections c ON c.key = o.coll JOIN bodies b ON b.hash = o.body_hash ORDER BY o.seq")
# ... and as 0011 does (the version's id, version and spec_version; the row's own text, else its version's)
_AT_0011 = ("SELECT o.seq, c.collection_id, v.stix_id, o.stix_type, v.version, v.version_key, v.spec_version, o.date_added, "
            "o.is_first, o.is_last, b.body, o.encrypt_in_transit, o.origin FROM objects o "
            "JOIN collections c ON c.key = o.coll JOIN versions v ON v.key = o.ver "
            "JOIN bodies b ON b.hash = COALESCE(o.body_hash, v.body_hash) ORDER BY o.seq")
_INDEXES_0010 = {
    "ix_objects_all": ["coll", "date_added", "seq"],
    "ix_objects_last": ["coll", "is_last", "date_added", "seq"],
    "ix_objects_first": ["coll", "is_first", "date_added", "seq"],
    "ix_objects_type": ["coll", "stix_type", "is_last", "date_added", "seq"],
    "ix_objects_encrypted": ["coll", "date_added", "seq"],
}
_INDEXES_0011 = {
    "ix_objects_all": ["coll", "date_added", "seq", "is_last", "is_first"],
    "ix_objects_type": ["coll", "stix_type", "is_last", "date_added", "seq"],
    "ix_objects_encrypted": ["coll", "date_added", "seq"],
}
_COLUMNS_0010 = ["seq", "coll", "stix_id", "stix_type", "version", "version_key", "spec_version", "date_added", "is_first",
                 "is_last", "body_hash", "encrypt_in_transit", "origin"]
_COLUMNS_0011 = ["seq", "coll", "ver", "stix_type", "date_added", "is_first", "is_last", "body_hash", "encrypt_in_transit",
                 "origin"]


def _engine(tmp_path, database):  # type: ignore[no-untyped-def]
    return create_engine(normalise_url(database) if database else f"sqlite:///{tmp_path / 'node.db'}")


def _where(tmp_path, database):  # type: ignore[no-untyped-def]
    return database or tmp_path / "node.db"


def _read(engine, sql: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql)).all()]


def _refs(engine) -> dict[bytes, int]:  # type: ignore[no-untyped-def]
    return {bytes(h): n for h, n in _read(engine, "SELECT hash, refs FROM bodies")}


def _digest(body: str) -> bytes:
    return hashlib.sha256(body.encode()).digest()


def _shape(engine) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]], str]:  # type: ignore[no-untyped-def]
    """``objects``: its columns, indexes, unique constraints, and the text of ``ix_objects_encrypted``."""
    with engine.connect() as conn:
        insp = inspect(conn)
        columns = [c["name"] for c in insp.get_columns("objects")]
        # PostgreSQL lists the unique constraint's index too (SQLite: not its autoindex)
        indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("objects") if not i.get("duplicates_constraint")}
        unique = {u["name"]: u["column_names"] for u in insp.get_unique_constraints("objects")}
        if conn.dialect.name == "postgresql":
            partial = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_objects_encrypted'")).scalar_one()
        else:
            partial = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'ix_objects_encrypted'")).scalar_one()
    return columns, indexes, unique, partial


def _rows_0010() -> tuple[list[tuple], dict]:
    """A 0010 node's rows: one version in three collections (READ_B's copy redacted), two versions of one object, an
    SCO without a version of its own (versioned by its ``date_added`` in each collection), rows flagged
    ``encrypt_in_transit`` and with origins."""
    first = new_indicator(1, modified="2024-01-01T00:00:00.000Z")
    second = {**first, "modified": "2024-02-01T00:00:00.000Z", "name": "second version"}
    redacted = {k: v for k, v in first.items() if k != "pattern"} | {"pattern": "[x:y = 'z']"}
    amber = new_indicator(2, marking="marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421")
    sco = {"type": "ipv4-addr", "spec_version": "2.1", "id": f"ipv4-addr--{uuid.uuid4()}", "value": "198.51.100.7"}
    secret = {"encrypt_in_transit": True}
    rows = [
        (OWN, first, {"origin": "local:analyst"}),
        (READ_A, first, {"origin": "release"}),
        (OWN, second, {"origin": "local:analyst"}),
        (READ_B, redacted, {"origin": "release"}),  # after the OWN row: the version's text is the full one
        (OWN, amber, {"origin": "local:analyst", **secret}),
        (INBOX, sco, {"origin": "push:rok"}),
        (READ_A, second, {"origin": "release"}),
        (OWN, sco),  # origin NULL
        (INBOX, amber, {"origin": "push:rok", **secret}),
    ]
    return rows, {"first": first, "second": second, "redacted": redacted, "amber": amber, "sco": sco}


def _check_0011(engine, before: list[tuple], refs_before: dict[bytes, int]) -> None:  # type: ignore[no-untyped-def]
    """The upgraded database holds ``before`` (0010's rows) by the 0011 rules."""
    assert len(before) > 0
    assert _read(engine, _AT_0011) == before  # every row, its seq, its text and its flags
    # one version per (stix_id, version_key), keyed in the order of its first row, with that row's text and the row count
    firsts: dict[tuple, tuple] = {}
    for row in before:
        firsts.setdefault((row[2], row[5]), row)
    counts = Counter((r[2], r[5]) for r in before)
    versions = _read(engine, 'SELECT key, stix_id, version_key, version, spec_version, body_hash, "rows" FROM versions ORDER BY key')
    assert [(k, s, vk, v, sv, bytes(h), n) for k, s, vk, v, sv, h, n in versions] == [
        (i + 1, s, vk, r[4], r[6], _digest(r[10]), counts[(s, vk)]) for i, ((s, vk), r) in enumerate(firsts.items())
    ]
    # a row's own body_hash only where its text is not its version's
    own = {seq: (bytes(h) if h is not None else None) for seq, h in _read(engine, "SELECT seq, body_hash FROM objects")}
    version_text = {key: r[10] for key, r in firsts.items()}
    assert own == {r[0]: (_digest(r[10]) if r[10] != version_text[(r[2], r[5])] else None) for r in before}
    # bodies.refs: the versions and the rows of their own referencing it; every body referenced, no other
    expected = Counter(_digest(r[10]) for r in firsts.values()) + Counter(h for h in own.values() if h is not None)
    assert _refs(engine) == dict(expected)
    assert set(expected) == set(refs_before)  # no body lost, none left behind
    assert _read(engine, "SELECT COUNT(*) FROM bodies WHERE refs <= 0") == [(0,)]


def test_a_revision_0010_database_upgrades_every_row_onto_its_version_and_back(tmp_path, database):
    rows, objs = _rows_0010()
    legacy_database(_where(tmp_path, database), "0010", "us", rows)
    engine = _engine(tmp_path, database)
    try:
        before = _read(engine, _AT_0010)
        refs_before = _refs(engine)
        assert len(before) == len(rows) == 9
        # the 0010 reference rule: one per row
        assert refs_before == dict(Counter(_digest(r[10]) for r in before))
        assert refs_before[_digest(orjson.dumps(objs["first"]).decode())] == 2
        migrate.upgrade(engine, "0011")
        assert current(engine) == "0011"
        _check_0011(engine, before, refs_before)
        after = _read(engine, _AT_0011)
        versions = _read(engine, 'SELECT stix_id, version_key, "rows" FROM versions ORDER BY key')
        first, second, amber, sco = objs["first"], objs["second"], objs["amber"], objs["sco"]
        by_id = Counter(s for s, _, _ in versions)
        # first (3 collections) and second (2) of one object; amber in 2; the SCO once per collection (its date_added)
        assert by_id == {first["id"]: 2, amber["id"]: 1, sco["id"]: 2}
        assert sorted(n for s, _, n in versions if s == first["id"]) == [2, 3]
        assert [n for s, _, n in versions if s == sco["id"]] == [1, 1]
        assert _read(engine, "SELECT COUNT(*) FROM objects") == [(9,)]
        # only the redacted row has a text of its own
        own = _read(engine, "SELECT c.collection_id, o.body_hash FROM objects o JOIN collections c ON c.key = o.coll "
                            "WHERE o.body_hash IS NOT NULL")
        assert [(c, bytes(h)) for c, h in own] == [(READ_B, _digest(orjson.dumps(objs["redacted"]).decode()))]
        # bodies: first's text once (its version; 2 rows at 0010), the redacted text once (its row)
        refs = _refs(engine)
        assert refs[_digest(orjson.dumps(first).decode())] == 1 and refs[_digest(orjson.dumps(objs["redacted"]).decode())] == 1
        assert refs[_digest(orjson.dumps(amber).decode())] == 1 and refs[_digest(orjson.dumps(second).decode())] == 1
        # the flags and origins came along (as written at 0010, row by row)
        assert [(r[1], r[2], bool(r[11]), r[12]) for r in after] == [
            (cid, obj["id"], bool(more[0].get("encrypt_in_transit")) if more else False, more[0].get("origin") if more else None)
            for cid, obj, *more in rows
        ]
        assert sum(bool(r[11]) for r in after) == 2 and sum(r[12] is None for r in after) == 1
        downgrade(engine, "0010")
        assert current(engine) == "0010"
        with engine.connect() as conn:
            assert "versions" not in inspect(conn).get_table_names()
        assert _read(engine, _AT_0010) == before
        assert _refs(engine) == refs_before
        assert _read(engine, "SELECT seq, body_hash FROM objects WHERE body_hash IS NULL") == []

        migrate.upgrade(engine, "0011")  # and up again: the same as the first time
        assert _read(engine, _AT_0011) == after
        _check_0011(engine, before, refs_before)
    finally:
        engine.dispose()


def test_a_version_first_stored_redacted_gives_its_text_to_the_version(tmp_path, database):
    """The first row of a version holds a redacted copy: that text is the version's, and the full copies in the other
    collections keep theirs as their own (one reference from each row, one from the version)."""
    full = new_indicator(3)
    redacted = {k: v for k, v in full.items() if k != "name"}
    rows = [(READ_B, redacted), (OWN, full), (READ_A, full)]
    legacy_database(_where(tmp_path, database), "0010", None, rows)
    engine = _engine(tmp_path, database)
    try:
        before, refs_before = _read(engine, _AT_0010), _refs(engine)
        migrate.upgrade(engine, "0011")
        _check_0011(engine, before, refs_before)
        full_hash, redacted_hash = _digest(orjson.dumps(full).decode()), _digest(orjson.dumps(redacted).decode())
        assert [(bytes(h), n) for h, n in _read(engine, 'SELECT body_hash, "rows" FROM versions')] == [(redacted_hash, 3)]
        assert [bytes(h) if h else None for (h,) in _read(engine, "SELECT body_hash FROM objects ORDER BY seq")] == [
            None, full_hash, full_hash]
        assert _refs(engine) == {redacted_hash: 1, full_hash: 2}
        downgrade(engine, "0010")
        assert _read(engine, _AT_0010) == before and _refs(engine) == refs_before == {redacted_hash: 1, full_hash: 2}
    finally:
        engine.dispose()


def test_the_upgrade_recounts_every_body_and_deletes_one_nothing_references(tmp_path, database):
    """``bodies.refs`` is recounted from the tables, not adjusted from the stored counts: a wrong count is mended, a body
    no row references (a count left over) is deleted."""
    rows, objs = _rows_0010()
    legacy_database(_where(tmp_path, database), "0010", None, rows)
    engine = _engine(tmp_path, database)
    orphan = '{"type":"note"}'
    first = _digest(orjson.dumps(objs["first"]).decode())
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bodies (hash, body, refs) VALUES (:h, :b, 1)"), {"h": _digest(orphan), "b": orphan})
            conn.execute(text("UPDATE bodies SET refs = 40 WHERE hash = :h"), {"h": first})
        before, refs_before = _read(engine, _AT_0010), _refs(engine)
        assert refs_before[first] == 40 and _digest(orphan) in refs_before
        migrate.upgrade(engine, "0011")
        refs = _refs(engine)
        assert _digest(orphan) not in refs and refs[first] == 1
        del refs_before[_digest(orphan)]
        _check_0011(engine, before, refs_before)
        downgrade(engine, "0010")
        assert _refs(engine) == dict(Counter(_digest(r[10]) for r in before)) and _refs(engine)[first] == 2
    finally:
        engine.dispose()


def test_new_rows_and_versions_after_the_upgrade_continue_the_migrated_numbers(tmp_path, database):
    """``seq`` (PostgreSQL: its sequence moved to the new table) and ``versions.key`` go on after the migrated ones; after
    the downgrade ``seq`` still does."""
    rows, _ = _rows_0010()
    legacy_database(_where(tmp_path, database), "0010", "us", rows)
    engine = _engine(tmp_path, database)
    try:
        top = _read(engine, "SELECT MAX(seq) FROM objects")[0][0]
        assert top >= len(rows)
        migrate.upgrade(engine, "0011")
        keys = _read(engine, "SELECT MAX(key), COUNT(*) FROM versions")[0]
        assert keys[0] == keys[1] == 5  # first, second, amber, the SCO twice (see the first test), keyed 1..5
        body = orjson.dumps(new_indicator(9)).decode()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bodies (hash, body, refs) VALUES (:h, :b, 1)"), {"h": _digest(body), "b": body})
            ver = conn.execute(text(
                'INSERT INTO versions (stix_id, version_key, version, spec_version, body_hash, "rows") '
                "VALUES ('indicator--00000000-0000-4000-8000-000000000009', 1, '2024-01-01T00:00:00.000Z', '2.1', :h, 1) "
                "RETURNING key"
            ), {"h": _digest(body)}).scalar_one()
            seq = conn.execute(text(
                "INSERT INTO objects (coll, ver, stix_type, date_added, is_first, is_last) "
                "VALUES (1, :v, 'indicator', 1, true, true) RETURNING seq"
            ), {"v": ver}).scalar_one()
        assert ver == keys[0] + 1
        assert seq == top + 1
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                assert conn.execute(text("SELECT pg_get_serial_sequence('objects', 'seq')")).scalar() is not None
                assert conn.execute(text("SELECT pg_get_serial_sequence('versions', 'key')")).scalar() is not None
        downgrade(engine, "0010")
        assert _refs(engine)[_digest(body)] == 1  # recounted as rows at 0010: the new row, its version's text
        with engine.begin() as conn:
            again = conn.execute(text(
                "INSERT INTO objects (coll, stix_id, stix_type, version, version_key, spec_version, date_added, is_first, "
                "is_last, body_hash) VALUES (1, 'indicator--00000000-0000-4000-8000-000000000010', 'indicator', "
                "'2024-01-01T00:00:00.000Z', 1, '2.1', 2, true, true, :h) RETURNING seq"
            ), {"h": _digest(body)}).scalar_one()
        assert again == top + 2
    finally:
        engine.dispose()


def test_objects_has_the_0011_columns_constraint_and_three_indexes_and_0010s_after_the_downgrade(tmp_path, database):
    rows, _ = _rows_0010()
    legacy_database(_where(tmp_path, database), "0010", None, rows)
    engine = _engine(tmp_path, database)
    try:
        columns, indexes, unique, partial = _shape(engine)
        assert columns == _COLUMNS_0010 and indexes == _INDEXES_0010
        migrate.upgrade(engine, "0011")
        columns, indexes, unique, partial = _shape(engine)
        assert columns == _COLUMNS_0011
        assert indexes == _INDEXES_0011  # ix_objects_last and ix_objects_first are gone
        assert unique == {"uq_objects_version": ["coll", "ver"]}
        assert partial.endswith("WHERE encrypt_in_transit" if engine.dialect.name == "postgresql" else "WHERE encrypt_in_transit = 1")
        with engine.connect() as conn:
            insp = inspect(conn)
            assert [c["name"] for c in insp.get_columns("versions")] == [
                "key", "stix_id", "version_key", "version", "spec_version", "body_hash", "rows"]
            assert {c["name"] for c in insp.get_columns("versions") if c["nullable"]} == set()
            assert {c["name"] for c in insp.get_columns("objects") if c["nullable"]} == {"body_hash", "origin"}
            assert insp.get_pk_constraint("versions")["constrained_columns"] == ["key"]
            assert insp.get_pk_constraint("objects")["constrained_columns"] == ["seq"]
            assert {u["name"]: u["column_names"] for u in insp.get_unique_constraints("versions")} == {
                "uq_versions_id": ["stix_id", "version_key"]}
            assert {i["name"] for i in insp.get_indexes("versions")} <= {"uq_versions_id"}  # PostgreSQL lists it as one
            if conn.dialect.name == "postgresql":
                assert conn.execute(text("SELECT conname FROM pg_constraint WHERE conrelid = 'objects'::regclass ORDER BY conname")
                                    ).scalars().all() == ["objects_pkey", "uq_objects_version"]
            else:
                tmp = conn.execute(text("SELECT name FROM sqlite_temp_master")).scalars().all()
                assert tmp == []  # the temporary counts are gone
        downgrade(engine, "0010")
        columns, indexes, unique, partial = _shape(engine)
        assert columns == _COLUMNS_0010 and indexes == _INDEXES_0010
        assert unique == {"uq_objects_version": ["coll", "stix_id", "version_key"]}
        assert partial.endswith("WHERE encrypt_in_transit" if engine.dialect.name == "postgresql" else "WHERE encrypt_in_transit = 1")
    finally:
        engine.dispose()


def test_an_empty_revision_0010_database_upgrades_and_numbers_from_one(tmp_path, database):
    legacy_database(_where(tmp_path, database), "0010", None, [])
    engine = _engine(tmp_path, database)
    try:
        migrate.upgrade(engine, "0011")
        assert current(engine) == "0011"
        assert _read(engine, "SELECT COUNT(*) FROM versions") == [(0,)] == _read(engine, "SELECT COUNT(*) FROM objects")
        with engine.begin() as conn:
            ver = conn.execute(text(
                'INSERT INTO versions (stix_id, version_key, version, spec_version, body_hash, "rows") '
                "VALUES ('indicator--00000000-0000-4000-8000-000000000001', 1, '2024-01-01T00:00:00.000Z', '2.1', :h, 1) RETURNING key"
            ), {"h": b"\0" * 32}).scalar_one()
            seq = conn.execute(text("INSERT INTO objects (coll, ver, stix_type, date_added, is_first, is_last) "
                                    "VALUES (1, :v, 'indicator', 1, true, true) RETURNING seq"), {"v": ver}).scalar_one()
        assert (ver, seq) == (1, 1)
        downgrade(engine, "0010")
        assert _read(engine, "SELECT seq, stix_id FROM objects") == [(1, "indicator--00000000-0000-4000-8000-000000000001")]
    finally:
        engine.dispose()


def test_0011_follows_0010_and_adds_versions():
    order = known_revisions()
    assert order == migrate.revisions() and order[order.index("0011") - 1] == "0010"
    assert tables_at("0011") - tables_at("0010") == {"versions"}
    assert "versions" not in tables_at("0010")
