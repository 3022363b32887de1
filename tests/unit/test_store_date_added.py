"""``date_added`` strictly increases row by row within a collection (inside an envelope and across them), on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from exchange.stix import format_timestamp
from exchange.storage.schema import objects
from exchange.storage.store import Selection, Store
from tests.conftest import new_indicator

CID = "e3a18dc0-a9f3-466f-95d9-d848c4da8e7f"
OTHER = "1e0c3f4f-3c41-4b8e-9e0b-1d0f7b1c2a33"


@pytest.fixture
def store(tmp_path, database):
    s = Store.open(data_dir=tmp_path, database=database)
    yield s
    s.close()


def _stamps(store: Store, cid: str) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(objects.c.date_added).where(store.where_collection(conn, cid)).order_by(objects.c.seq)).scalars())


def _strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))


def test_every_object_of_one_envelope_gets_its_own_date_added(store):
    result = store.add_objects(CID, [new_indicator(i) for i in range(1200)])
    stamps = _stamps(store, CID)
    assert len(stamps) == 1200 and _strictly_increasing(stamps)
    assert stamps[-1] - stamps[0] == 1199  # microsecond steps
    assert result.date_added == stamps[0]


def test_date_added_keeps_increasing_across_envelopes_even_if_the_clock_goes_back(store):
    store.add_objects(CID, [new_indicator(i) for i in range(300)], date_added=2_000_000_000_000_000)
    store.add_objects(CID, [new_indicator(i) for i in range(300)], date_added=1_000_000_000_000_000)
    store.add_objects(CID, [new_indicator(i) for i in range(300)])
    stamps = _stamps(store, CID)
    assert len(stamps) == 900 and _strictly_increasing(stamps)


def test_several_adds_in_one_transaction_keep_the_order(store):
    """The release path: one transaction writes batch after batch into a collection (and into others)."""
    with store.transaction() as conn:
        for _ in range(3):
            store.add_in(conn, CID, [new_indicator(i) for i in range(100)])
            store.add_in(conn, OTHER, [new_indicator(i) for i in range(10)])
    assert _strictly_increasing(_stamps(store, CID)) and len(_stamps(store, CID)) == 300
    assert _strictly_increasing(_stamps(store, OTHER)) and len(_stamps(store, OTHER)) == 30


def test_added_after_a_row_date_added_returns_exactly_the_rows_after_it(store):
    objs = [new_indicator(i) for i in range(50)]
    store.add_objects(CID, objs)
    rows, _ = store.page(Selection(CID), limit=100)
    for k in (0, 6, 48):
        after, _ = store.page(Selection(CID, added_after=rows[k].date_added), limit=100)
        assert [r.stix_id for r in after] == [o["id"] for o in objs[k + 1:]]


def test_unversioned_scos_are_versioned_by_their_own_date_added(store):
    scos = [{"type": "ipv4-addr", "spec_version": "2.1", "id": f"ipv4-addr--{i:08d}-6336-5bc5-b98d-13d6226742dd", "value": f"198.51.100.{i}"}
            for i in range(3)]
    first = store.add_objects(CID, [new_indicator(0), *scos, scos[0]])  # the same SCO twice: one version
    assert first.added == 4 and not first.failures and len(first.successes) == 5
    rows, _ = store.page(Selection(CID, versions=("all",)), limit=100)
    assert [r.version for r in rows[1:]] == [format_timestamp(r.date_added) for r in rows[1:]]
    assert first.successes[4]["version"] == first.successes[1]["version"] == rows[1].version
    again = store.add_objects(CID, scos)  # identical: no new version, the stored one is reported
    assert again.added == 0 and [s["version"] for s in again.successes] == [r.version for r in rows[1:]]
    changed = store.add_objects(CID, [dict(scos[1], value="203.0.113.9"), dict(scos[2], value="203.0.113.10")])
    assert changed.added == 2
    rows, _ = store.page(Selection(CID, versions=("all",)), limit=100)
    assert len(rows) == 6 and _strictly_increasing([r.date_added for r in rows])
    assert [r.version for r in rows[1:]] == [format_timestamp(r.date_added) for r in rows[1:]]
    assert [s["version"] for s in changed.successes] == [r.version for r in rows[4:]]
    last, _ = store.page(Selection(CID, ids=(scos[1]["id"],)), limit=10)
    assert [r.body for r in last] and "203.0.113.9" in last[0].body
