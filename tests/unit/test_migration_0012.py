"""Migration 0012 (``version_bodies``: each version's text under its version's key; ``bodies`` only for texts a row has
of its own), up from a revision 0011 database and back, on both backends; then a ``Store`` serves the upgraded rows.

The 0011 database is made by the real migrations: a 0010 database (``tests/unit/legacy_db.py``) upgraded to 0011."""

from __future__ import annotations

from collections import Counter

import orjson
from sqlalchemy import create_engine, inspect

from exchange.storage import migrate
from exchange.storage.integrity import known_revisions, tables_at
from exchange.storage.migrate import current
from exchange.storage.store import DB_FILE, Selection, Store, normalise_url
from tests.conftest import new_indicator
from tests.unit.legacy_db import downgrade, legacy_database
from tests.unit.test_migration_0011 import _AT_0011, OWN, READ_A, READ_B, _digest, _read, _refs, _rows_0010

# every row with its collection's id and its text, as 0012 stores them (the row's own text, else its version's)
_AT_0012 = ("SELECT o.seq, c.collection_id, v.stix_id, o.stix_type, v.version, v.version_key, v.spec_version, o.date_added, "
            "o.is_first, o.is_last, COALESCE(b.body, vb.body), o.encrypt_in_transit, o.origin FROM objects o "
            "JOIN collections c ON c.key = o.coll JOIN versions v ON v.key = o.ver JOIN version_bodies vb ON vb.key = v.key "
            "LEFT JOIN bodies b ON b.hash = o.body_hash ORDER BY o.seq")


def _at_0011(tmp_path, database, rows):  # type: ignore[no-untyped-def]
    """A database at 0011 holding ``rows``, where a ``Store`` on ``tmp_path`` (or ``database``) opens it."""
    legacy_database(database or tmp_path / DB_FILE, "0010", "us", rows)
    engine = create_engine(normalise_url(database) if database else f"sqlite:///{tmp_path / DB_FILE}")
    migrate.upgrade(engine, "0011")
    return engine


def _check_0012(engine, before: list[tuple]) -> None:  # type: ignore[no-untyped-def]
    """The upgraded database holds ``before`` (0011's rows read through its join) by the 0012 rules."""
    assert _read(engine, _AT_0012) == before
    # one text per version, the one 0011 had for it (its hash), keyed by the version
    texts = _read(engine, "SELECT v.key, v.body_hash, vb.body FROM versions v JOIN version_bodies vb ON vb.key = v.key ORDER BY v.key")
    assert [k for k, _, _ in texts] == [k for (k,) in _read(engine, "SELECT key FROM versions ORDER BY key")]
    assert all(bytes(h) == _digest(b) for _, h, b in texts)
    assert _read(engine, "SELECT COUNT(*) FROM version_bodies") == [(len(texts),)]
    # bodies: the texts rows have of their own, each counted once per such row, nothing else
    own = Counter(bytes(h) for (h,) in _read(engine, "SELECT body_hash FROM objects WHERE body_hash IS NOT NULL"))
    assert _refs(engine) == dict(own)


def test_a_revision_0011_database_moves_each_versions_text_under_its_version_and_back(tmp_path, database):
    rows, objs = _rows_0010()
    engine = _at_0011(tmp_path, database, rows)
    try:
        before, refs_before = _read(engine, _AT_0011), _refs(engine)
        assert len(before) == 9 and len(refs_before) == 5  # 4 versions' texts (the SCO's two share one) + the redacted copy
        migrate.upgrade(engine, "0012")
        assert current(engine) == "0012"
        _check_0012(engine, before)
        redacted = _digest(orjson.dumps(objs["redacted"]).decode())
        assert _refs(engine) == {redacted: 1}  # the only text a row has of its own
        assert _read(engine, "SELECT COUNT(*) FROM version_bodies") == [(5,)]  # first, second, amber, the SCO twice
        downgrade(engine, "0011")
        assert current(engine) == "0011"
        with engine.connect() as conn:
            assert "version_bodies" not in inspect(conn).get_table_names()
        assert _read(engine, _AT_0011) == before and _refs(engine) == refs_before
        migrate.upgrade(engine, "0012")  # and up again: the same as the first time
        _check_0012(engine, before)
    finally:
        engine.dispose()


def test_a_version_whose_text_a_row_also_has_of_its_own_keeps_both(tmp_path, database):
    """A version first stored redacted (0011 gave the redacted text to the version): the full copies keep the full
    text as their own in ``bodies``; the redacted text moves under the version; back down, 0011's counts return."""
    full = new_indicator(3)
    redacted = {k: v for k, v in full.items() if k != "name"}
    engine = _at_0011(tmp_path, database, [(READ_B, redacted), (OWN, full), (READ_A, full)])
    try:
        before, refs_before = _read(engine, _AT_0011), _refs(engine)
        full_hash, redacted_hash = _digest(orjson.dumps(full).decode()), _digest(orjson.dumps(redacted).decode())
        assert refs_before == {redacted_hash: 1, full_hash: 2}
        migrate.upgrade(engine, "0012")
        _check_0012(engine, before)
        assert _refs(engine) == {full_hash: 2}
        assert _read(engine, "SELECT body FROM version_bodies") == [(orjson.dumps(redacted).decode(),)]
        downgrade(engine, "0011")
        assert _read(engine, _AT_0011) == before and _refs(engine) == refs_before
    finally:
        engine.dispose()


def test_a_store_serves_the_upgraded_rows_and_writes_on(tmp_path, database):
    rows, objs = _rows_0010()
    engine = _at_0011(tmp_path, database, rows)
    before = _read(engine, _AT_0011)
    engine.dispose()
    store = Store.open(data_dir=tmp_path, database=database)  # upgrades to the newest revision itself
    try:
        assert current(store.engine) == known_revisions()[-1]
        for cid in (OWN, READ_A, READ_B):
            served = [r.body for r in store.iter_rows(Selection(cid, versions=("all",)))]
            assert served == [r[10] for r in before if r[1] == cid]
        assert store.latest(READ_B, objs["first"]["id"]) == objs["redacted"]
        assert store.add_objects(READ_B, [objs["second"]]).added == 1  # a migrated version: no new text
        assert _read(store.engine, "SELECT COUNT(*) FROM version_bodies") == [(5,)]
        fresh = new_indicator(11)
        assert store.add_objects(OWN, [fresh]).added == 1
        assert store.latest(OWN, fresh["id"]) == fresh
        assert _read(store.engine, "SELECT COUNT(*) FROM version_bodies") == [(6,)]
    finally:
        store.close()


def test_0012_follows_0011_and_adds_version_bodies():
    assert known_revisions().index("0012") == known_revisions().index("0011") + 1
    assert tables_at("0012") - tables_at("0011") == {"version_bodies"}
