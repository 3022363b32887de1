"""Databases as an earlier schema revision left them: made by the real migrations up to that revision, rows
written with that revision's columns (what a node running that release would have stored)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

from exchange.stix import format_timestamp, object_version, parse_timestamp
from exchange.storage.migrate import upgrade
from exchange.storage.store import normalise_url


def legacy_database(
    where: Path | str, revision: str, node: str | None, rows: Sequence[tuple[str, dict] | tuple[str, dict, dict]], *,
    stamp: int = 1_767_225_600_000_000,
) -> None:
    """Make the database at ``where`` (an SQLite file path or a database URL) at ``revision``, holding ``rows``
    (collection id, object[, extra columns]): with one full body per row, as every revision up to 0006 stored them, or
    from 0007 on (``bodies``) each row referencing its text by hash, with the collection's id in the row up to 0008 and
    its key (``collections``, made in the order of each collection's first row) from 0009 on.  Row ``i`` is added at
    ``stamp + i``; an object without ``modified``/``created`` (an SCO) is versioned by that, as the store does.  The
    extra columns of a row (a dict, e.g. ``{"encrypt_in_transit": True, "origin": "pull:us"}``) are written as given
    (columns of that revision: ``encrypt_in_transit`` from 0002, ``origin`` from 0006)."""
    if revision > "0010":
        raise ValueError(f"legacy_database makes revisions up to 0010, not {revision}")
    url = normalise_url(where) if isinstance(where, str) else f"sqlite:///{where}"
    engine = create_engine(url)
    try:
        upgrade(engine, revision)
        with engine.begin() as conn:
            if node is not None:
                conn.execute(text("INSERT INTO meta (key, value) VALUES ('node', :n)"), {"n": node})
            versions: dict[tuple[str, str], list[int]] = {}
            hashed = revision >= "0007"
            keyed = revision >= "0009"  # objects.coll (collections.key) instead of objects.collection_id
            keys: dict[str, int] = {}
            for i, (cid, obj, *more) in enumerate(rows):
                extra = dict(more[0]) if more else {}
                version = object_version(obj)
                if version is None:
                    version = format_timestamp(stamp + i)
                vkey = parse_timestamp(version)
                versions.setdefault((cid, obj["id"]), []).append(vkey)
                body = orjson.dumps(obj).decode()
                if hashed:
                    digest = hashlib.sha256(body.encode()).digest()
                    if conn.execute(text("UPDATE bodies SET refs = refs + 1 WHERE hash = :h"), {"h": digest}).rowcount == 0:
                        conn.execute(text("INSERT INTO bodies (hash, body, refs) VALUES (:h, :b, 1)"), {"h": digest, "b": body})
                if keyed and cid not in keys:
                    conn.execute(text("INSERT INTO collections (collection_id) VALUES (:c)"), {"c": cid})
                    keys[cid] = conn.execute(text("SELECT key FROM collections WHERE collection_id = :c"), {"c": cid}).scalar_one()
                names = "".join(f", {n}" for n in extra)
                conn.execute(
                    text(
                        f"INSERT INTO objects ({'coll' if keyed else 'collection_id'}, stix_id, stix_type, version, version_key, "
                        f"spec_version, date_added, is_first, is_last, {'body_hash' if hashed else 'body'}{names}) "
                        f"VALUES (:c, :i, :t, :v, :k, :s, :d, false, false, :b{''.join(f', :x_{n}' for n in extra)})"
                    ),
                    {"c": keys[cid] if keyed else cid, "i": obj["id"], "t": obj["type"], "v": version, "k": vkey,
                     "s": obj.get("spec_version", "2.1"), "d": stamp + i, "b": digest if hashed else body,
                     **{f"x_{n}": v for n, v in extra.items()}},
                )
            for (cid, sid), kept in versions.items():
                conn.execute(
                    text("UPDATE objects SET is_first = (version_key = :lo), is_last = (version_key = :hi) "
                         f"WHERE {'coll' if keyed else 'collection_id'} = :c AND stix_id = :i"),
                    {"lo": min(kept), "hi": max(kept), "c": keys[cid] if keyed else cid, "i": sid},
                )
    finally:
        engine.dispose()


def downgrade(engine, target: str) -> None:  # type: ignore[no-untyped-def]
    """Run the real migrations down to ``target`` (what an operator's ``alembic downgrade`` does)."""
    from alembic import command
    from alembic.config import Config

    from exchange.storage.migrate import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, target)
