"""The signed audit head: every way of trimming or rewriting the log is caught by ``audit verify``.

Real node databases (SQLite files made by the node's own code); the tampering is done
with ``sqlite3`` as someone with the database file (and, in the last cases, the key) would.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from exchange.cli import main
from exchange.node.audit_key import KEY_FILE, signer_for
from exchange.node.ops import open_node
from exchange.sharing.release import release_all
from exchange.storage import audit
from exchange.storage.store import DB_FILE, Selection, Store
from tests.conftest import new_indicator

GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
US = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"


def _load(data: Path, n: int, start: int = 0) -> None:
    opened = open_node("us", data_dir=data)
    try:
        objs = [new_indicator(start + i, marking=GREEN, created_by_ref=US) for i in range(n)]
        opened.store.add_objects(opened.node.config.own_collection.id, objs)
        release_all(opened)
    finally:
        opened.close()


def _head(data: Path) -> str:
    db = sqlite3.connect(data / DB_FILE)
    try:
        return db.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()[0]
    finally:
        db.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, str]:
    """A US node database: two release runs (the head after the first is kept, as an older signed head)."""
    data = tmp_path_factory.mktemp("audit") / "us"
    _load(data, 5)
    older = _head(data)
    _load(data, 5, start=5)
    return data, older


@pytest.fixture
def data(base, tmp_path) -> Path:
    copy = tmp_path / "us"
    shutil.copytree(base[0], copy)
    return copy


def _sql(data: Path, *statements: tuple) -> None:
    db = sqlite3.connect(data / DB_FILE)
    with db:
        for st in statements:
            db.execute(*st)
    db.close()


def _verify(data: Path, *extra: str):
    return CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(data), *extra])


def _broken(data: Path, *needles: str) -> str:
    result = _verify(data)
    assert result.exit_code != 0, result.output
    out = result.output.strip()
    assert "BROKEN" in out and len(out.splitlines()) == 1, out
    for n in needles:
        assert n in out, out
    return out


def _count(data: Path) -> int:
    db = sqlite3.connect(data / DB_FILE)
    try:
        return db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    finally:
        db.close()


def _rechain(data: Path, from_seq: int) -> tuple[int, str, int]:
    """Recompute every hash from ``from_seq`` on (what anyone can do: the chain itself is unkeyed); returns the new head."""
    db = sqlite3.connect(data / DB_FILE)
    db.row_factory = sqlite3.Row
    with db:
        rows = db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
        prev = audit.GENESIS
        for r in rows:
            if r["seq"] >= from_seq:
                e = audit.Entry(r["event"], r["partner"], r["object_id"], r["version"], r["decision"],
                                tuple(orjson.loads(r["clauses"])), orjson.loads(r["detail"]), audit.partners_of(r["partners"]))
                h = audit._digest(prev, r["seq"], r["at"], e)
                db.execute("UPDATE audit SET prev = ?, hash = ? WHERE seq = ?", (prev, h, r["seq"]))
                prev = h
            else:
                prev = r["hash"]
        last = rows[-1]
    db.close()
    return last["seq"], prev, last["at"]


def test_an_untouched_log_verifies_with_its_signed_head(data):
    result = _verify(data)
    assert result.exit_code == 0, result.output
    assert "audit chain OK" in result.output and "head signed" in result.output
    assert (data / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" not in (data / DB_FILE).read_bytes()  # the key is never in the database


def test_deleting_the_tail_and_fixing_the_head_is_caught(data):
    n = _count(data)
    db = sqlite3.connect(data / DB_FILE)
    seq, h = db.execute("SELECT seq, hash FROM audit WHERE seq = ?", (n - 3,)).fetchone()
    db.close()
    _sql(data, ("DELETE FROM audit WHERE seq > ?", (n - 3,)), ("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"{seq}:{h}",)))
    _broken(data, f"entry {n - 3}", "not signed")


def test_fixing_the_head_but_keeping_its_old_signature_is_caught(data):
    n = _count(data)
    old = audit.Head.decode(_head(data))
    db = sqlite3.connect(data / DB_FILE)
    seq, h = db.execute("SELECT seq, hash FROM audit WHERE seq = ?", (n - 3,)).fetchone()
    db.close()
    forged = audit.Head(seq, h, old.at, old.key_id, old.sig)
    _sql(data, ("DELETE FROM audit WHERE seq > ?", (n - 3,)), ("UPDATE meta SET value = ? WHERE key = 'audit_head'", (forged.encode(),)))
    _broken(data, f"entry {n - 3}", "signature does not verify")


def test_deleting_every_entry_and_the_head_is_caught(data):
    _sql(data, ("DELETE FROM audit",), ("DELETE FROM meta WHERE key = 'audit_head'",))
    _broken(data, "the log is empty but the database holds")


def test_editing_an_entry_and_recomputing_the_chain_is_caught(data):
    old = audit.Head.decode(_head(data))
    _sql(data, ("UPDATE audit SET decision = decision || 'x' WHERE seq = 3",))
    seq, h, at = _rechain(data, 3)
    _sql(data, ("UPDATE meta SET value = ? WHERE key = 'audit_head'", (audit.Head(seq, h, at, old.key_id, old.sig).encode(),)))
    _broken(data, f"entry {seq}", "signature does not verify")


def test_editing_an_entry_without_recomputing_names_it(data):
    _sql(data, ("UPDATE audit SET decision = decision || 'x' WHERE seq = 4",))
    _broken(data, "entry 4", "edited")


def test_reordering_two_entries_is_caught(data):
    db = sqlite3.connect(data / DB_FILE)
    a = db.execute("SELECT event, partner, object_id, version, decision, clauses, detail FROM audit WHERE seq = 2").fetchone()
    b = db.execute("SELECT event, partner, object_id, version, decision, clauses, detail FROM audit WHERE seq = 3").fetchone()
    db.close()
    cols = "event = ?, partner = ?, object_id = ?, version = ?, decision = ?, clauses = ?, detail = ?"
    _sql(data, (f"UPDATE audit SET {cols} WHERE seq = 2", b), (f"UPDATE audit SET {cols} WHERE seq = 3", a))
    _broken(data, "entry 2")


def test_deleting_a_middle_entry_is_caught(data):
    _sql(data, ("DELETE FROM audit WHERE seq = 6",))
    _broken(data, "entry 6 is missing")


def test_an_older_signed_head_in_place_of_the_current_one_is_caught(base, data):
    _sql(data, ("UPDATE meta SET value = ? WHERE key = 'audit_head'", (base[1],)))
    _broken(data, "head says")


def test_trimming_back_to_an_older_signed_head_is_caught(base, data):
    older = audit.Head.decode(base[1])
    _sql(data, ("DELETE FROM audit WHERE seq > ?", (older.seq,)), ("UPDATE meta SET value = ? WHERE key = 'audit_head'", (base[1],)))
    _broken(data, f"signed head (entry {older.seq}) is older than the newest audited object row")


def _rewrite_with_key(data: Path, seq: int) -> None:
    """What the key holder can do: edit an entry, recompute the chain and sign a new head."""
    _sql(data, ("UPDATE audit SET decision = 'withhold', clauses = '[\"scf.no-release-default\"]' WHERE seq = ?", (seq,)))
    last, h, at = _rechain(data, seq)
    head = audit.sign_head(signer_for(data), last, h, at)
    _sql(data, ("UPDATE meta SET value = ? WHERE key = 'audit_head'", (head.encode(),)))


def test_the_key_holder_rewriting_after_a_checkpoint_is_caught_by_the_checkpoint(base, data):
    checkpoint = audit.Checkpoint(audit.Head.decode(base[1]), "rok", "note--example")
    _rewrite_with_key(data, 2)
    assert _verify(data).exit_code == 0  # alone, the key holder's rewrite verifies: that is what checkpoints are for
    store = Store.open(data_dir=data)
    try:
        verdict = audit.verify(store, check=signer_for(data).verify, checkpoints=[checkpoint])
    finally:
        store.close()
    assert not verdict.ok
    assert f"checkpoint at entry {checkpoint.head.seq} held by rok" in verdict.problem and "rewritten" in verdict.problem


def test_a_checkpoint_beyond_a_trimmed_log_is_caught(base, data):
    current = audit.Head.decode(_head(data))
    older = audit.Head.decode(base[1])
    _sql(data, ("DELETE FROM audit WHERE seq > ?", (older.seq,)), ("UPDATE meta SET value = ? WHERE key = 'audit_head'", (base[1],)))
    store = Store.open(data_dir=data)
    try:
        verdict = audit.verify(store, check=signer_for(data).verify, checkpoints=[audit.Checkpoint(current, "rok")])
    finally:
        store.close()
    assert not verdict.ok and f"checkpoint at entry {current.seq}" in verdict.problem and "trimmed" in verdict.problem


def test_a_checkpoint_not_signed_by_this_node_is_refused(data):
    current = audit.Head.decode(_head(data))
    forged = audit.Head(current.seq, current.hash, current.at, current.key_id, "AAAA")
    store = Store.open(data_dir=data)
    try:
        verdict = audit.verify(store, check=signer_for(data).verify, checkpoints=[audit.Checkpoint(forged, "rok")])
    finally:
        store.close()
    assert not verdict.ok and "does not verify" in verdict.problem


def test_without_the_key_file_the_signed_head_cannot_be_checked(data):
    (data / KEY_FILE).unlink()
    result = _verify(data)
    assert result.exit_code != 0 and "no audit signing key" in result.output


def test_a_node_does_not_extend_a_trimmed_log(data):
    """Appending after a trim would chain new entries on the cut tail and sign a new head over it, hiding the trim from
    ``audit verify``: the node refuses, and the release's transaction leaves the log and the partners' rows as they were."""
    n = _count(data)
    _sql(data, ("DELETE FROM audit WHERE seq > ?", (n - 3,)))
    head = _head(data)
    with pytest.raises(audit.AuditChainBroken, match=rf"ends at entry {n - 3} but its head says {n}"):
        _load(data, 2, start=100)
    assert _count(data) == n - 3 and _head(data) == head
    opened = open_node("us", data_dir=data)
    try:
        rok_read = opened.node.config.partner_collection("rok", "partner-read").id
        ids = {r.stix_id for r in opened.store.page(Selection(rok_read, versions=("all",)), limit=1000)[0]}
    finally:
        opened.close()
    assert new_indicator(100)["id"] not in ids  # nothing was released on top of the trimmed log
    _broken(data, "removed")


def test_a_node_does_not_extend_a_log_whose_last_entry_was_replaced(data):
    """The same for a tail whose last hash is not the one the head signed (rows deleted and others written in their place)."""
    _sql(data, ("UPDATE audit SET hash = ? WHERE seq = (SELECT MAX(seq) FROM audit)", ("f" * 64,)))
    with pytest.raises(audit.AuditChainBroken, match="its head says"):
        _load(data, 1, start=200)


def test_an_unreadable_head_stops_appends(data):
    _sql(data, ("UPDATE meta SET value = 'garbage' WHERE key = 'audit_head'",))
    with pytest.raises(audit.AuditChainBroken, match="unreadable"):
        _load(data, 1, start=300)


def test_a_log_without_a_head_yet_is_extended(tmp_path):
    """A database from before signed heads holds entries and no head record: its first append writes one."""
    store = Store.open(data_dir=tmp_path / "n")
    try:
        audit.record(store, [audit.Entry("pull", "rok", "indicator--0", "2024-01-01T00:00:00.000Z", "accepted")])
    finally:
        store.close()
    _sql(tmp_path / "n", ("DELETE FROM meta WHERE key = 'audit_head'",))
    store = Store.open(data_dir=tmp_path / "n")
    try:
        assert audit.record(store, [audit.Entry("pull", "rok", "indicator--1", "2024-01-01T00:00:00.000Z", "accepted")]) == 1
        assert audit.verify(store).ok
    finally:
        store.close()
