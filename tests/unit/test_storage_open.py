"""Opening a store checks the database first: damaged, foreign, empty or unknown-schema databases are refused, on both backends."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest
from sqlalchemy import create_engine, text

from exchange.errors import StorageError
from exchange.storage.integrity import DatabaseRefused, known_revisions, tables_at
from exchange.storage.schema import metadata
from exchange.storage.store import DB_FILE, Store, normalise_url
from tests.conftest import new_indicator

CID = "e3a18dc0-a9f3-466f-95d9-d848c4da8e7f"


def _sql(database: str | None, data, statement: str) -> None:
    engine = create_engine(normalise_url(database) if database else f"sqlite:///{data / DB_FILE}")
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def test_the_revisions_read_from_the_scripts_are_alembics():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from exchange.storage.migrate import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert known_revisions() == tuple(reversed([s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()]))


def test_a_store_at_the_newest_revision_opens_without_loading_alembic(tmp_path):
    import subprocess
    import sys

    Store.open(data_dir=tmp_path).close()  # creates it (through Alembic)
    probe = ("import sys; from exchange.storage.store import Store; Store.open(data_dir=sys.argv[1]).close(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_newest_revision_has_every_table_of_the_schema():
    assert set(tables_at(known_revisions()[-1])) == set(metadata.tables)
    assert "login_failures" not in tables_at("0004")


def test_a_sound_store_reopens(tmp_path, database):
    Store.open(data_dir=tmp_path, database=database).close()
    store = Store.open(data_dir=tmp_path, database=database)
    try:
        assert store.add_objects(CID, [new_indicator(1)]).added == 1
    finally:
        store.close()


def test_a_zero_byte_file_is_refused_unless_init(tmp_path):
    (tmp_path / DB_FILE).write_bytes(b"")
    with pytest.raises(DatabaseRefused, match=r"is empty \(0 bytes\), not a node database; --init \(serve, load, release, sync, account add\) makes"):
        Store.open(data_dir=tmp_path)
    assert (tmp_path / DB_FILE).stat().st_size == 0
    Store.open(data_dir=tmp_path, init=True).close()
    Store.open(data_dir=tmp_path).close()  # a node database now


def test_a_foreign_database_is_refused_unless_init(tmp_path, database):
    _sql(database, tmp_path, "CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    with pytest.raises(DatabaseRefused, match=r"not a cti-exchange database \(it holds tables invoices\); --init \("):
        Store.open(data_dir=tmp_path, database=database)
    Store.open(data_dir=tmp_path, database=database, init=True).close()
    Store.open(data_dir=tmp_path, database=database).close()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_an_empty_postgresql_database_is_a_new_node(tmp_path, database):
    Store.open(database=database).close()


@pytest.mark.parametrize("statement, needle", [
    ("DROP TABLE audit", "lacks table audit"),
    ("DROP TABLE login_failures", "lacks table login_failures"),
    ("UPDATE alembic_version SET version_num = 'abc123'", "records schema revision 'abc123', which this cti-exchange does not know"),
    ("DELETE FROM alembic_version", "records no schema revision"),
])
def test_a_damaged_schema_is_refused_even_with_init(tmp_path, database, statement, needle):
    Store.open(data_dir=tmp_path, database=database).close()
    _sql(database, tmp_path, statement)
    for init in (False, True):
        with pytest.raises(DatabaseRefused, match=needle) as raised:
            Store.open(data_dir=tmp_path, database=database, init=init)
        assert "\n" not in str(raised.value)


def test_an_older_revision_missing_its_own_table_is_refused_before_upgrading(tmp_path):
    Store.open(data_dir=tmp_path).close()
    _sql(None, tmp_path, "UPDATE alembic_version SET version_num = '0003'")
    _sql(None, tmp_path, "DROP TABLE objects")
    with pytest.raises(DatabaseRefused, match=r"lacks table objects \(schema revision 0003\)"):
        Store.open(data_dir=tmp_path)


def test_damaged_pages_are_refused(tmp_path):
    store = Store.open(data_dir=tmp_path)
    store.add_objects(CID, [new_indicator(i) for i in range(2000)])
    store.close()
    db = tmp_path / DB_FILE
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(db, "r+b") as fh:
        fh.seek(db.stat().st_size // 2)
        fh.write(b"\x00\xff" * 4096)
    with pytest.raises(DatabaseRefused, match="the database is corrupt") as raised:
        Store.open(data_dir=tmp_path)
    assert isinstance(raised.value, StorageError) and "\n" not in str(raised.value)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    (tmp_path / DB_FILE).write_text("hello\n" * 1000)
    for init in (False, True):
        with pytest.raises(DatabaseRefused, match="is not an SQLite database"):
            Store.open(data_dir=tmp_path, init=init)


def _open_and_add(path: str, i: int, barrier, results) -> None:
    from pathlib import Path

    barrier.wait()
    try:
        store = Store.open(data_dir=Path(path))
        store.add_objects(CID, [new_indicator(i)])
        store.close()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_data_dir_at_once_all_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(6):
        data, barrier, results = tmp_path / f"new-{round_}", ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_and_add, args=(str(data), i, barrier, results)) for i in range(4)]
        for p in procs:
            p.start()
        outcomes = sorted(results.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        assert outcomes == ["ok"] * 4
        store = Store.open(data_dir=data)
        try:
            assert store.count(CID) == 4
        finally:
            store.close()
