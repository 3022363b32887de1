"""Origin per stored version (``objects.origin``, migration 0006): what the node observed, carried over for old rows."""

from __future__ import annotations

import sqlite3

from exchange.node.ops import open_node
from exchange.sharing.signatures import is_partner_origin
from exchange.storage.store import DB_FILE, Selection
from tests.conftest import new_indicator
from tests.unit.legacy_db import legacy_database

GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


def _origins(data_dir) -> dict[str, set]:
    db = sqlite3.connect(data_dir / DB_FILE)
    try:
        out: dict[str, set] = {}
        for cid, origin in db.execute("SELECT c.collection_id, o.origin FROM objects o JOIN collections c ON c.key = o.coll"):
            out.setdefault(cid, set()).add(origin)
        return out
    finally:
        db.close()


def test_migration_carries_existing_rows_over_inbox_rows_are_partner_origin(tmp_path):
    from exchange.config import load_node

    cfg = load_node("us").config
    own, inbox, read = cfg.own_collection.id, cfg.collection("rok-inbox").id, cfg.collection("rok-read").id
    # a database made by revision 0005 (no origin column), the node's rows written as that schema had them
    legacy_database(tmp_path / DB_FILE, "0005", "us", [(own, new_indicator(1, marking=GREEN)), (inbox, new_indicator(2, marking=GREEN)),
                                                       (read, new_indicator(3, marking=GREEN))])
    open_node("us", data_dir=tmp_path).close()  # upgrades to 0006 and on
    assert _origins(tmp_path) == {own: {"local"}, inbox: {"partner:rok"}, read: {"release"}}


def test_each_write_path_records_its_origin(tmp_path):
    opened = open_node("us", data_dir=tmp_path)
    try:
        own = opened.node.config.own_collection.id
        opened.store.add_objects(own, [new_indicator(4, marking=GREEN)], origin="local:cli")
        rows, _ = opened.store.page(Selection(own, versions=("all",)), limit=10)
        assert [r.origin for r in rows] == ["local:cli"]
    finally:
        opened.close()


def test_partner_origin_is_read_from_the_row_not_the_collection():
    assert is_partner_origin("push:rok", "own") and is_partner_origin("pull:rok", "own") and is_partner_origin("partner:rok", "own")
    assert not is_partner_origin("local:analyst", "partner-inbox")
    assert is_partner_origin(None, "partner-inbox") and not is_partner_origin(None, "own")  # rows without a recorded origin
