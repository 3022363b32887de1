"""Properties of the signed audit chain: every untampered log verifies; every single-row deletion,
insertion or edit is rejected (real SQLite files, the node's Ed25519 head signer)."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.node.audit_key import signer_for
from exchange.storage import audit
from exchange.storage.store import DB_FILE, Store

_KEY_DIR = Path(tempfile.mkdtemp(prefix="audit-key-"))
SIGNER = signer_for(_KEY_DIR)

entry = st.builds(
    audit.Entry,
    event=st.sampled_from(sorted(audit.EVENTS)),
    partner=st.one_of(st.none(), st.sampled_from(["rok", "us", "jp"])),
    object_id=st.one_of(st.none(), st.uuids().map(lambda u: f"indicator--{u}")),
    version=st.one_of(st.none(), st.just("2024-01-01T00:00:00.000Z")),
    decision=st.one_of(st.none(), st.sampled_from(["share", "withhold", "accepted", "refused"])),
    clauses=st.lists(st.sampled_from(["scf.a", "cert.b", "tri.c"]), max_size=2).map(tuple),
    detail=st.dictionaries(st.sampled_from(["reason", "tlp", "n"]), st.one_of(st.text(max_size=8), st.integers(-5, 5)), max_size=2),
)
stream = st.lists(st.lists(entry, min_size=1, max_size=5), min_size=1, max_size=6)  # batches, one transaction each


_DATA = Path(tempfile.mkdtemp(prefix="audit-prop-"))
_STORE = Store.open(data_dir=_DATA)  # one real database for every example: each starts from an empty log
audit.use_signer(_STORE, SIGNER)


def _log(batches: list[list[audit.Entry]]) -> tuple[Path, Store]:
    with _STORE.transaction() as conn:
        conn.execute(audit.audit.delete())
        conn.execute(audit.meta.delete().where(audit.meta.c.key == audit.HEAD_KEY))
    for batch in batches:
        audit.record(_STORE, batch)
    return _DATA, _STORE


def _ok(store: Store) -> bool:
    return audit.verify(store, check=SIGNER.verify).ok


SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(stream)
def test_every_untampered_log_verifies(batches):
    _data, store = _log(batches)
    verdict = audit.verify(store, check=SIGNER.verify)
    assert verdict.ok and verdict.entries == sum(map(len, batches)), verdict.problem


def _mutate(data: Path, kind: str, pick: int, replacement: audit.Entry) -> None:
    db = sqlite3.connect(data / DB_FILE)
    db.row_factory = sqlite3.Row
    rows = db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
    row = rows[pick % len(rows)]
    with db:
        if kind == "delete":
            db.execute("DELETE FROM audit WHERE seq = ?", (row["seq"],))
        elif kind == "edit":
            changed = orjson.dumps({**orjson.loads(row["detail"]), "tampered": True}).decode()
            db.execute("UPDATE audit SET detail = ? WHERE seq = ?", (changed, row["seq"]))
        elif kind == "append":  # a correctly chained extra entry at the end, as anyone without the key can compute
            seq = rows[-1]["seq"] + 1
            h = audit._digest(rows[-1]["hash"], seq, rows[-1]["at"], replacement)
            db.execute(
                "INSERT INTO audit (seq, at, event, partner, object_id, version, decision, clauses, detail, prev, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, rows[-1]["at"], replacement.event, replacement.partner, replacement.object_id, replacement.version,
                 replacement.decision, orjson.dumps(list(replacement.clauses)).decode(),
                 orjson.dumps(replacement.detail, option=orjson.OPT_SORT_KEYS).decode(), rows[-1]["hash"], h),
            )
        else:  # insert in the middle: the later entries move up one, the new one chained onto its predecessor
            at = row["seq"]
            db.execute("UPDATE audit SET seq = -(seq + 1) WHERE seq >= ?", (at,))
            db.execute("UPDATE audit SET seq = -seq WHERE seq < 0")
            prev = rows[at - 2]["hash"] if at > 1 else audit.GENESIS
            h = audit._digest(prev, at, row["at"], replacement)
            db.execute(
                "INSERT INTO audit (seq, at, event, partner, object_id, version, decision, clauses, detail, prev, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (at, row["at"], replacement.event, replacement.partner, replacement.object_id, replacement.version,
                 replacement.decision, orjson.dumps(list(replacement.clauses)).decode(),
                 orjson.dumps(replacement.detail, option=orjson.OPT_SORT_KEYS).decode(), prev, h),
            )
    db.close()


@SETTINGS
@given(stream, st.sampled_from(["delete", "edit", "append", "insert"]), st.integers(0, 1000), entry)
def test_every_single_row_deletion_insertion_or_edit_is_rejected(batches, kind, pick, replacement):
    data, store = _log(batches)
    assert _ok(store)
    _mutate(data, kind, pick, replacement)
    verdict = audit.verify(store, check=SIGNER.verify)
    assert not verdict.ok, (kind, pick)
    assert "entry" in verdict.problem


def _digest_as_first_written(prev: str, seq: int, at: int, e: audit.Entry) -> str:
    """The chain hash as the log has always been written: SHA-256 of ``prev|`` and the whole field list's JSON."""
    import hashlib

    fields = [seq, at, e.event, e.partner, e.object_id, e.version, e.decision, list(e.clauses), e.detail]
    if e.partners:
        fields.append(list(e.partners))
    return hashlib.sha256(prev.encode("ascii") + b"|" + orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


detail_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
any_entry = st.builds(
    audit.Entry,
    event=st.sampled_from(sorted(audit.EVENTS)),
    partner=st.one_of(st.none(), st.text(max_size=6)),
    object_id=st.one_of(st.none(), st.text(max_size=20)),
    version=st.one_of(st.none(), st.text(max_size=24)),
    decision=st.one_of(st.none(), st.text(max_size=8)),
    clauses=st.lists(st.text(max_size=8), max_size=3).map(tuple),
    detail=st.dictionaries(st.text(max_size=8), detail_value, max_size=4),
    partners=st.one_of(st.just(()), st.lists(st.text(min_size=1, max_size=5), min_size=2, max_size=3, unique=True).map(tuple)),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(any_entry, st.integers(1, 2**40), st.integers(0, 2**62))
def test_the_chain_hash_of_any_entry_is_the_one_the_log_has_always_had(e, seq, at):
    """The detail's text is made once per row and spliced into the hashed list: byte for byte the same hash."""
    prev = "0" * 64
    expected = _digest_as_first_written(prev, seq, at, e)
    assert audit._digest(prev, seq, at, e) == expected
    assert audit._digest(prev, seq, at, e, orjson.dumps(e.detail, option=orjson.OPT_SORT_KEYS)) == expected
