"""Start-up checks of a node's database, before anything is served from it or written to it.

``Store`` runs them on every open:

- SQLite: ``PRAGMA quick_check`` (the b-tree structure of every page: a file
  with damaged pages is refused, not served with 500s), on a plain connection
  that changes nothing in the file (the store's own connections switch a file
  to WAL mode, which a foreign file must not undergo before it is refused);
- the schema: an ``alembic_version`` this code knows, and every table that
  revision has (a dropped table is refused; after the upgrade, every table of
  the current schema must be there);
- what an open may create: a missing SQLite file (a new data dir) and an
  empty PostgreSQL database become a new node database; an existing SQLite
  file with no tables (a zero-byte file) and a database holding other tables
  than cti-exchange's are refused unless ``init`` is given (``--init``).

Each failure is one ``DatabaseRefused`` (a ``StorageError``) with one line that
names the database and what is wrong.  Not transient: ``open_node`` does not
retry it while waiting for a database server.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from exchange.errors import StorageError
from exchange.storage.schema import metadata

# the tables each revision has (those of earlier revisions included); a migration that adds a table adds it here
# (tests/unit/test_storage_open.py checks that the newest revision has every table of schema.py)
_TABLES_SINCE: dict[str, frozenset[str]] = {
    "0001": frozenset({"objects", "statuses", "accounts", "grants", "meta", "sync_state", "audit"}),
    "0005": frozenset({"login_failures"}),
    "0007": frozenset({"bodies"}),
    "0008": frozenset({"signature_members"}),
    "0009": frozenset({"collections"}),
    "0011": frozenset({"versions"}),
    "0012": frozenset({"version_bodies"}),
}
_INIT_HINT = "--init (serve, load, release, sync, account add) makes a new node database of it"
# files (device, inode) that passed quick_check: by which process (a server worker inherits its parent's notes), and when
_checked: dict[tuple[int, int], tuple[int, float]] = {}
_CHECK_MEMO_S = 60.0


class DatabaseRefused(StorageError):
    """The database is damaged, foreign or from an unknown schema revision: the node does not open it."""


def known_revisions() -> tuple[str, ...]:
    """Every schema revision of ``exchange/storage/migrations``, oldest first."""
    from exchange.storage.migrate import revisions

    return revisions()


def tables_at(revision: str) -> frozenset[str]:
    """The tables a database at a known ``revision`` has."""
    order = known_revisions()
    at = order.index(revision)
    out: frozenset[str] = frozenset()
    for since, names in _TABLES_SINCE.items():
        if order.index(since) <= at:
            out |= names
    return out


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (``None`` for another dialect or an in-memory database)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:") or str(parsed.database).startswith("file:"):
        return None
    return Path(parsed.database)


@contextmanager
def creating(path: Path | None) -> Iterator[None]:
    """Serialise opening an SQLite file against its creation by another process (``flock`` on a file beside it).

    A process that finds the file missing or empty creates it under an exclusive
    lock, held until the schema is committed; one that finds it with content
    takes a shared lock, so it never sees a file that another process has just
    created (its header written, its tables not yet committed) and takes it for
    an abandoned empty one.  Opens of existing files do not wait for each other.
    """
    if path is None:
        yield
        return
    new = not path.exists() or path.stat().st_size == 0
    try:
        fh = open(f"{path}.open-lock", "a+b")  # noqa: SIM115 - held across the yield
    except OSError:  # a read-only data dir: nothing can be created there anyway
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX if new else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_sqlite_file(path: Path, *, init: bool) -> None:
    """Refuse a damaged, foreign or empty SQLite file (see the module docstring); a missing file is left to be created."""
    if not path.exists():
        return
    where = str(path)
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None)  # never creates a file
    except sqlite3.Error as exc:
        raise DatabaseRefused(f"{where}: cannot open the database: {exc}") from exc
    try:
        _quick_check(conn, path, where)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        revision = _sqlite_revision(conn) if "alembic_version" in tables else None
    except sqlite3.DatabaseError as exc:
        raise _unreadable(where, exc) from exc
    finally:
        conn.close()
    empty = f"{where} is empty (0 bytes)" if path.stat().st_size == 0 else f"{where} holds no tables"
    judge(where, tables, revision, init=init, empty=empty)


def _quick_check(conn: sqlite3.Connection, path: Path, where: str) -> None:
    """``PRAGMA quick_check``: every page's b-tree structure (100k objects released to two partners, 430 MB: 0.7 s cached, 6 s cold).

    Not again in a server's workers: forked right after ``serve`` checked the file,
    they inherit the note of it and skip the check (within ``_CHECK_MEMO_S``).  The
    process that checked checks again on each open.
    """
    st = path.stat()
    key = (st.st_dev, st.st_ino)
    by, at = _checked.get(key, (0, -_CHECK_MEMO_S))
    if by != os.getpid() and time.monotonic() - at < _CHECK_MEMO_S:
        return
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(10)")]
    if problems != ["ok"]:
        # one row may hold several lines ("*** in database main ***\nPage 12: ..."): one line out
        lines = [ln.strip() for p in problems for ln in str(p).splitlines() if ln.strip() and not ln.strip().startswith("***")]
        first = lines[0][:200] if lines else "failed"
        more = f", and {len(lines) - 1} more problems" if len(lines) > 1 else ""
        raise DatabaseRefused(
            f"{where}: the database is corrupt (SQLite quick_check: {first}{more}); restore it from a backup, or move it away to start a new node"
        )
    _checked[key] = (os.getpid(), time.monotonic())


def _sqlite_revision(conn: sqlite3.Connection) -> str | None:
    rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return rows[0][0] if len(rows) == 1 else None


def _unreadable(where: str, exc: sqlite3.DatabaseError) -> DatabaseRefused:
    message = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
    if "not a database" in message or "encrypted" in message:
        return DatabaseRefused(f"{where} is not an SQLite database ({message}); not a node's data: move it away or give another --data-dir")
    return DatabaseRefused(f"{where}: the database is corrupt ({message}); restore it from a backup, or move it away to start a new node")


def check_schema(conn: Connection, where: str, *, init: bool) -> None:
    """The same judgement over a SQLAlchemy connection (PostgreSQL: an empty database is a new one)."""
    from alembic.runtime.migration import MigrationContext

    tables = set(inspect(conn).get_table_names())
    revision = MigrationContext.configure(conn).get_current_revision() if "alembic_version" in tables else None
    judge(where, tables, revision, init=init, empty=None)


def judge(where: str, tables: set[str], revision: str | None, *, init: bool, empty: str | None) -> None:
    """Refuse what must not be opened.  ``empty``: how to name a database without tables, if that is refused (SQLite)."""
    if "alembic_version" in tables:
        known = known_revisions()
        if revision not in known:
            said = f"schema revision {revision[:64]!r}" if revision else "no schema revision"
            raise DatabaseRefused(
                f"{where}: the database records {said}, which this cti-exchange does not know (it knows {known[0]}..{known[-1]}): "
                "a newer cti-exchange's database or a damaged one; refusing to open it"
            )
        missing = sorted(tables_at(revision) - tables)  # type: ignore[arg-type]
        if missing:
            raise DatabaseRefused(
                f"{where}: the database lacks table {', '.join(missing)} (schema revision {revision}): damaged or edited; restore it from a backup"
            )
        return
    if init:
        return
    if not tables:
        if empty is not None:
            raise DatabaseRefused(f"{empty}, not a node database; {_INIT_HINT}")
        return
    shown = ", ".join(n[:64] if n.isprintable() else repr(n[:64]) for n in sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    raise DatabaseRefused(f"{where} is not a cti-exchange database (it holds tables {shown}); {_INIT_HINT}")


def check_complete(conn: Connection, where: str) -> None:
    """After the upgrade: every table of the current schema is there."""
    missing = sorted(set(metadata.tables) - set(inspect(conn).get_table_names()))
    if missing:
        raise DatabaseRefused(f"{where}: the database lacks table {', '.join(missing)}: damaged or edited; restore it from a backup")
