"""Databases as an earlier schema revision left them: made by the real migrations up to that revision, rows
written with that revision's columns (what a node running that release would have stored)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

from exchange.stix import object_version, parse_timestamp
from exchange.storage.migrate import upgrade
from exchange.storage.store import normalise_url


def legacy_database(
    where: Path | str, revision: str, node: str | None, rows: Sequence[tuple[str, dict]], *, stamp: int = 1_767_225_600_000_000,
) -> None:
    """Make the database at ``where`` (an SQLite file path or a database URL) at ``revision``, holding ``rows``
    (collection id, object): with one full body per row, as every revision up to 0006 stored them, or from 0007 on
    (``bodies``) each row referencing its text by hash, with the collection's id in the row up to 0008."""
    url = normalise_url(where) if isinstance(where, str) else f"sqlite:///{where}"
    engine = create_engine(url)
    try:
        upgrade(engine, revision)
        with engine.begin() as conn:
            if node is not None:
                conn.execute(text("INSERT INTO meta (key, value) VALUES ('node', :n)"), {"n": node})
            versions: dict[tuple[str, str], list[int]] = {}
            hashed = revision >= "0007"
            if revision > "0008":
                raise ValueError(f"legacy_database makes revisions up to 0008, not {revision}")
            for i, (cid, obj) in enumerate(rows):
                vkey = parse_timestamp(object_version(obj))
                versions.setdefault((cid, obj["id"]), []).append(vkey)
                body = orjson.dumps(obj).decode()
                if hashed:
                    digest = hashlib.sha256(body.encode()).digest()
                    if conn.execute(text("UPDATE bodies SET refs = refs + 1 WHERE hash = :h"), {"h": digest}).rowcount == 0:
                        conn.execute(text("INSERT INTO bodies (hash, body, refs) VALUES (:h, :b, 1)"), {"h": digest, "b": body})
                conn.execute(
                    text(
                        "INSERT INTO objects (collection_id, stix_id, stix_type, version, version_key, spec_version, date_added, "
                        f"is_first, is_last, {'body_hash' if hashed else 'body'}) VALUES (:c, :i, :t, :v, :k, '2.1', :d, false, false, :b)"
                    ),
                    {"c": cid, "i": obj["id"], "t": obj["type"], "v": object_version(obj), "k": vkey, "d": stamp + i,
                     "b": digest if hashed else body},
                )
            for (cid, sid), keys in versions.items():
                conn.execute(
                    text("UPDATE objects SET is_first = (version_key = :lo), is_last = (version_key = :hi) "
                         "WHERE collection_id = :c AND stix_id = :i"),
                    {"lo": min(keys), "hi": max(keys), "c": cid, "i": sid},
                )
    finally:
        engine.dispose()
