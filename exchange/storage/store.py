"""The node's durable store: STIX objects per collection, statuses, accounts.

Plain SQLAlchemy Core, no Flask: the TAXII layer (``backend.py``) and the CLI
both use it.  SQLite (a file under ``--data-dir``) is the embedded default;
dialect differences (write locking, pragmas) are confined to ``_dialect``.

Writes to a collection are serialised (SQLite ``BEGIN IMMEDIATE``; an
advisory lock elsewhere) and ``date_added`` is assigned inside that lock: the
first row of a batch gets ``max(now, latest date_added + 1µs)``, each further
row 1µs more.  So ``date_added`` strictly increases row by row in commit order
within a collection, and a reader paging with ``added_after`` (exclusive) or
``next`` never misses a row nor gets one twice.

A version's JSON text is stored once (``version_bodies``, keyed by the version's
key) however many collections hold it: the own collection and every partner's
read collection that got it unchanged reference one version; a redacted copy is
a body of its row's own (``bodies``, keyed by its SHA-256, stored once however
many rows have it).  ``objects`` rows count their versions (``versions.rows``)
and their own bodies (``bodies.refs``); each goes with the last row referencing
it, in the same transaction.
"""

from __future__ import annotations

import hashlib
import heapq
import operator
import secrets
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import orjson
from sqlalchemy import (
    Connection,
    Table,
    and_,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import FromClause

from exchange.errors import ConfigError, StorageError
from exchange.policy.markings import SIGNATURE_TYPE, signature_members
from exchange.stix import format_timestamp, object_version, parse_timestamp
from exchange.storage.integrity import check_complete, check_schema, check_sqlite_file, creating, sqlite_file
from exchange.storage.schema import BODY as _BODY
from exchange.storage.schema import WITH_BODY as _WITH_BODY
from exchange.storage.schema import (
    accounts,
    bodies,
    body_of,
    collections,
    grants,
    login_failures,
    meta,
    object_rows,
    objects,
    statuses,
    sync_state,
    version_bodies,
    versions,
)
from exchange.storage.schema import signature_members as members_table

DB_FILE = "cti-exchange.sqlite"
_CHUNK = 500
# PostgreSQL: rows this process inserts between two looks at the table's size, and the size (8 KiB
# pages, ~10,000 index rows now that texts live in ``version_bodies``) below which a table is not worth analyzing
# by hand (Store._keep_statistics)
_STATS_CHECK_ROWS = 5_000
_STATS_MIN_PAGES = 250
# failed logins this process records between two sweeps of every name's expired rows
_LOGIN_SWEEP_EVERY = 256
# ``Connection.info`` entry: the collection ids whose keys this connection's open transaction made (not committed yet)
_NEW_KEYS = "cti_new_collection_keys"
# a key no collection has (keys start at 1): the query of a collection without a key finds nothing
_NO_KEY = 0


class Login(NamedTuple):
    """An account name as a login sees it (``Store.login``): one statement, a snapshot."""

    exists: bool
    password_hash: str | None
    partner: str | None
    readable: frozenset[str]
    writable: frozenset[str]
    # the time (µs) of the ``failures_limit``-th newest failed login after ``failures_after``, if
    # there are that many: the name is locked until it leaves the window
    locking_failure: int | None


def now_us() -> int:
    """Wall-clock time in integer microseconds since the epoch."""
    return time.time_ns() // 1000


def _placeholder(conn: Connection) -> str:
    """The driver's parameter mark for plain SQL (``?`` for sqlite3, ``%s`` for psycopg)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict]) -> None:
    """Bulk ``INSERT`` through the driver's ``executemany`` (rows share their keys).

    SQLAlchemy's per-row parameter processing dominated big batches; the
    statement is plain SQL with the dialect's placeholder, the only dialect
    difference here.
    """
    if not rows:
        return
    cols = list(rows[0])
    mark = _placeholder(conn)
    sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})"
    values = operator.itemgetter(*cols)
    conn.exec_driver_sql(sql, [values(r) for r in rows] if len(cols) > 1 else [(r[cols[0]],) for r in rows])


def body_hash(body: str) -> bytes:
    """The key of a stored JSON text (``bodies.hash``): the SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(body.encode("utf-8")).digest()


def _hash_of(text_: str, known: dict[int, bytes]) -> bytes:
    """``body_hash(text_)``, remembered in ``known`` by ``id(text_)`` (one text given for several rows is hashed once)."""
    h = known.get(id(text_))
    if h is None:
        h = known[id(text_)] = body_hash(text_)
    return h


def put_bodies(conn: Connection, texts: Iterable[str], known: dict[int, bytes] | None = None) -> list[bytes]:
    """Store each text once and count one more reference per occurrence (inside ``conn``'s transaction); their hashes, in order.

    A text already stored only gets its ``refs`` raised.  ``known``: hashes by ``id(text)``,
    read and filled (one text object given for several rows is hashed once).
    """
    hashes: list[bytes] = []
    found: dict[bytes, list] = {}
    known = {} if known is None else known
    for text_ in texts:
        h = _hash_of(text_, known)
        hashes.append(h)
        entry = found.get(h)
        if entry is None:
            found[h] = [text_, 1]
        else:
            entry[1] += 1
    if found:
        mark = _placeholder(conn)
        conn.exec_driver_sql(
            f"INSERT INTO bodies (hash, body, refs) VALUES ({mark}, {mark}, {mark}) "
            "ON CONFLICT (hash) DO UPDATE SET refs = bodies.refs + excluded.refs",
            [(h, t, n) for h, (t, n) in found.items()],
        )
    return hashes


def drop_bodies(conn: Connection, hashes: Iterable[bytes]) -> None:
    """One reference less per occurrence in ``hashes`` (rows deleted in ``conn``'s transaction); unreferenced bodies go."""
    counts = Counter(hashes)
    if not counts:
        return
    mark = _placeholder(conn)
    conn.exec_driver_sql(f"UPDATE bodies SET refs = refs - {mark} WHERE hash = {mark}", [(n, h) for h, n in counts.items()])
    for chunk in _chunks(list(counts), _CHUNK):
        conn.execute(delete(bodies).where(bodies.c.hash.in_(chunk), bodies.c.refs <= 0))


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / DB_FILE}"


class Row(NamedTuple):
    """One stored object version, as the TAXII layer needs it (a tuple: a page builds a thousand)."""

    seq: int
    stix_id: str
    version: str
    spec_version: str
    date_added: int
    body: str
    encrypt_in_transit: bool = False  # never served or pushed over plain HTTP
    origin: str | None = None  # what the node observed (schema ``objects.origin``)

    @property
    def date_added_str(self) -> str:
        return format_timestamp(self.date_added)


@dataclass(frozen=True)
class Selection:
    """What a TAXII request selects from one collection (TAXII 2.1 s3.4.1 filters)."""

    collection_id: str
    ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    versions: tuple[str, ...] = ("last",)  # 'first' | 'last' | 'all' | timestamps
    spec_versions: tuple[str, ...] = ()
    added_after: int | None = None
    plain_transport: bool = False  # the request came over plain HTTP: rows flagged encrypt_in_transit are left out


@dataclass
class AddResult:
    """Per-object outcome of an add: ``successes``/``failures`` as TAXII status details."""

    successes: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    added: int = 0  # new rows actually written (re-posts of identical objects are successes, not rows)
    date_added: int | None = None
    new: set[tuple[str, str]] = field(default_factory=set)  # (id, version) of the rows written: one audit entry per new version


def _alembic_command_error(exc: BaseException) -> bool:
    """``exc`` is Alembic's ``CommandError`` (Alembic is loaded only when there is a migration to run)."""
    util = sys.modules.get("alembic.util")
    return util is not None and isinstance(exc, util.CommandError)


class Store:
    """A node's database.  Thread-safe; one per process (or per worker)."""

    def __init__(self, url: str, *, echo: bool = False, init: bool = False) -> None:
        """Open the database at ``url``, check it (``exchange.storage.integrity``) and bring its schema up to date.

        ``init``: also make a node database of an existing SQLite file without tables
        (a zero-byte file) or of a database holding other tables; without it those are
        refused (``DatabaseRefused``), as is a damaged database or an unknown schema.
        """
        url = normalise_url(url)
        self.url = url
        path = sqlite_file(url)
        with creating(path):  # a new SQLite file: one process creates it, the others wait
            if path is not None:
                check_sqlite_file(path, init=init)
            try:
                self.engine: Engine = create_engine(url, echo=echo, future=True, **_engine_options(url))
            except (SQLAlchemyError, ImportError, ValueError) as exc:
                raise ConfigError(f"cannot open database {url!r}: {exc}") from exc
            self.dialect = self.engine.dialect.name
            if self.dialect == "sqlite":
                _configure_sqlite(self.engine)
            _forget_new_keys(self.engine)
            where = str(path) if path is not None else self.engine.url.render_as_string(hide_password=True)
            try:
                self._open_schema(where, init=init, checked=path is not None)
            except BaseException:
                self.engine.dispose()
                raise
        # Reads of one statement need no transaction around them.  On PostgreSQL they run in
        # autocommit mode, which saves the BEGIN and ROLLBACK round trips around each query (a
        # page request was 4 queries and 6 such round trips).  SQLite begins its own (in process).
        self._read_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT") if self.dialect == "postgresql" else self.engine
        self._secret: bytes | None = None
        # collection id -> its key (``collections``), once seen committed: a key never changes nor goes
        self._keys: dict[str, int] = {}
        self._inserted_since_check = 0
        self._failures_noted = 0
        self._counters_lock = threading.Lock()

    def _open_schema(self, where: str, *, init: bool, checked: bool) -> None:
        """Refuse a foreign or damaged schema (``checked``: already done on the SQLite file), upgrade, check the result."""
        from exchange.storage.migrate import upgrade

        try:
            if not checked:
                with self.engine.connect() as conn:
                    check_schema(conn, where, init=init)
            upgrade(self.engine)
            with self.engine.connect() as conn:
                check_complete(conn, where)
            if self.dialect == "sqlite":
                _plan_statistics(self.engine)
        except Exception as exc:
            if not isinstance(exc, SQLAlchemyError) and not _alembic_command_error(exc):
                raise
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise StorageError(f"cannot initialise database {where}: {exc.__class__.__name__}: {first}") from exc

    @classmethod
    def open(cls, data_dir: Path | None = None, database: str | None = None, *, init: bool = False) -> Store:
        """The store under ``data_dir`` (SQLite) or at a database URL (``init``: see ``Store``)."""
        if database:
            return cls(database, init=init)
        if data_dir is None:
            raise ConfigError("give --data-dir (or --database)")
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create data dir {data_dir}: {exc}") from exc
        return cls(sqlite_url(data_dir), init=init)

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions ----------------------------------------------------------

    def _read(self) -> Connection:
        """A connection for a read of one statement (autocommit where the dialect saves by it)."""
        return self._read_engine.connect()

    def _write(self, durable: bool = True) -> Connection:
        """A connection whose transaction takes the write lock up front."""
        return self.engine.connect().execution_options(cti_write=True, cti_durable=durable)

    # -- node identity and secret -----------------------------------------------

    def bind_node(self, node: str) -> None:
        """Record which node owns this database; refuse another node's data."""
        with self.transaction() as conn:
            current = conn.execute(select(meta.c.value).where(meta.c.key == "node")).scalar()
            if current is None:
                conn.execute(insert(meta).values(key="node", value=node))
            elif current != node:
                raise ConfigError(f"this data dir belongs to node {current!r}, not {node!r}")

    def secret(self) -> bytes:
        """The node's signing secret (``next`` cursors), created once and shared by all workers."""
        if self._secret is None:
            with self.transaction() as conn:
                value = conn.execute(select(meta.c.value).where(meta.c.key == "secret")).scalar()
                if value is None:
                    value = secrets.token_hex(32)
                    conn.execute(insert(meta).values(key="secret", value=value))
            self._secret = bytes.fromhex(value)
        return self._secret

    def get_meta(self, key: str) -> str | None:
        with self._read() as conn:
            return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(delete(meta).where(meta.c.key == key))
            conn.execute(insert(meta).values(key=key, value=value))

    # -- accounts -------------------------------------------------------------------

    def upsert_account(
        self,
        name: str,
        *,
        password_hash: str | None = None,
        partner: str | None = None,
        read: Iterable[str] | None = None,
        write: Iterable[str] | None = None,
        source: str = "cli",
    ) -> None:
        """Create or update an account; given ``read``/``write`` replace that source's grants."""
        with self.transaction() as conn:
            existing = conn.execute(select(accounts.c.name, accounts.c.password_hash).where(accounts.c.name == name)).first()
            if existing is None:
                conn.execute(insert(accounts).values(name=name, password_hash=password_hash, partner=partner, updated=now_us()))
            else:
                values: dict = {"updated": now_us()}
                if password_hash is not None:
                    values["password_hash"] = password_hash
                if partner is not None:
                    values["partner"] = partner
                conn.execute(update(accounts).where(accounts.c.name == name).values(**values))
            if read is not None or write is not None:
                conn.execute(delete(grants).where(and_(grants.c.account == name, grants.c.source == source)))
                rows = [
                    {"account": name, "collection_id": cid, "permission": perm, "source": source}
                    for perm, cids in (("read", read or ()), ("write", write or ()))
                    for cid in sorted(set(cids))
                ]
                if rows:
                    conn.execute(insert(grants), rows)

    def account(self, name: str) -> tuple[str | None, str | None, frozenset[str], frozenset[str]] | None:
        """``(password_hash, partner, readable, writable)`` or ``None``: one statement (a snapshot)."""
        found = self.login(name)
        return (found.password_hash, found.partner, found.readable, found.writable) if found.exists else None

    def login(self, name: str, *, failures_after: int | None = None, failures_limit: int = 1) -> Login:
        """The account ``name`` (``exists`` False if there is none) and, if ``failures_after`` is
        given, the failed login that locks the name (see ``Login``), in one statement: the
        account, its grants and its failures are read in the same round trip and snapshot."""
        a, g = accounts.c, grants.c
        cols = [a.name, a.password_hash, a.partner, g.collection_id, g.permission]
        if failures_after is None:
            stmt = select(*cols).select_from(accounts.outerjoin(grants, g.account == a.name)).where(a.name == name)
        else:
            f = login_failures.c
            locking = (
                select(f.at).where(f.name == name, f.at > failures_after)
                .order_by(f.at.desc()).limit(1).offset(max(0, failures_limit - 1)).scalar_subquery()
            )
            # one row even for a name with no account (an unknown name is throttled alike)
            anchor = select(literal(1).label("one")).subquery("anchor")
            stmt = select(*cols, locking.label("locking")).select_from(
                anchor.outerjoin(accounts, a.name == name).outerjoin(grants, g.account == a.name)
            )
        try:
            with self._read() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            raise StorageError(f"reading account failed: {exc.__class__.__name__}") from exc
        if not rows:  # no account, and no failures asked for
            return Login(False, None, None, frozenset(), frozenset(), None)
        first = rows[0]
        locking = first.locking if failures_after is not None else None
        if first.name is None:
            return Login(False, None, None, frozenset(), frozenset(), locking)
        return Login(
            True, first.password_hash, first.partner,
            frozenset(r.collection_id for r in rows if r.permission == "read"),
            frozenset(r.collection_id for r in rows if r.permission == "write"),
            locking,
        )

    def note_failed_login(self, name: str, at: int, *, forget_before: int) -> None:
        """Record a failed login for ``name`` at ``at`` (µs), for every worker on this database.

        Rows at or before ``forget_before`` (out of the throttle's window) are deleted: the
        name's own now, every name's every few hundred failures, so the table stays as small
        as the failures of one window.  Not durable (a power loss may forget the last few) and
        not under the node's write lock: a failed login never waits for a big write.
        """
        f = login_failures.c
        with self._write(durable=False) as conn, conn.begin():
            conn.execute(insert(login_failures).values(name=name, at=at))
            conn.execute(delete(login_failures).where(f.name == name, f.at <= forget_before))
            with self._counters_lock:
                self._failures_noted += 1
                sweep = self._failures_noted % _LOGIN_SWEEP_EVERY == 0
            if sweep:
                conn.execute(delete(login_failures).where(f.at <= forget_before))

    def accounts(self) -> list[tuple[str, bool, str | None, frozenset[str], frozenset[str]]]:
        """Every account: ``(name, has_password, partner, readable, writable)``."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(accounts.c.name, accounts.c.password_hash, accounts.c.partner).order_by(accounts.c.name)).all()
            perms = conn.execute(select(grants.c.account, grants.c.collection_id, grants.c.permission)).all()
        out = []
        for row in rows:
            mine = [(c, p) for a, c, p in perms if a == row.name]
            out.append(
                (
                    row.name,
                    row.password_hash is not None,
                    row.partner,
                    frozenset(c for c, p in mine if p == "read"),
                    frozenset(c for c, p in mine if p == "write"),
                )
            )
        return out

    # -- collection keys --------------------------------------------------------------

    def collection_key(self, conn: Connection, collection_id: str) -> int | None:
        """The integer key of a collection (``collections.key``, what ``objects.coll`` holds), or ``None``: the
        collection never held a row, so a query on it finds nothing.  Read on ``conn`` (inside its transaction, if
        any) and cached once committed; looking a key up never makes one (the first write does, ``_key_for_write``)."""
        key = self._keys.get(collection_id)
        if key is not None:
            return key
        key = conn.execute(select(collections.c.key).where(collections.c.collection_id == collection_id)).scalar()
        if key is not None and collection_id not in conn.info.get(_NEW_KEYS, ()):  # made by this open transaction: not yet
            self._keys[collection_id] = key
        return key

    def collection_keys(self, conn: Connection, collection_ids: Iterable[str]) -> dict[str, int]:
        """The keys of those of ``collection_ids`` that have one (``collection_key``), by collection id."""
        out: dict[str, int] = {}
        for cid in dict.fromkeys(collection_ids):
            key = self.collection_key(conn, cid)
            if key is not None:
                out[cid] = key
        return out

    def where_collection(self, conn: Connection, collection_ids: str | Iterable[str], *, on: FromClause = objects) -> ColumnElement[bool]:
        """The condition on ``objects`` selecting the rows of a collection (a collection id) or of several (an
        iterable of ids): ``objects.coll`` against their keys, false if none has a key.  For modules outside the store
        that query ``objects`` themselves (metrics, the UI, the audit check): they never name the key column.
        ``on``: ``schema.object_rows`` for a query on the rows alone (counts, newest ``date_added``)."""
        if isinstance(collection_ids, str):
            key = self.collection_key(conn, collection_ids)
            return on.c.coll == key if key is not None else false()
        keys = list(self.collection_keys(conn, collection_ids).values())
        return _coll_in(on.c.coll, keys) if keys else false()

    def _key_for_write(self, conn: Connection, collection_id: str) -> int:
        """The collection's key, made inside ``conn``'s write transaction if it has none (it goes if that rolls back)."""
        key = self.collection_key(conn, collection_id)
        if key is None:
            key = conn.execute(insert(collections).values(collection_id=collection_id)).inserted_primary_key[0]
            conn.info.setdefault(_NEW_KEYS, set()).add(collection_id)
        return int(key)

    # -- objects: writing ---------------------------------------------------------

    def add_objects(
        self, collection_id: str, objs: Sequence[dict], *, date_added: int | None = None, origin: str | None = None
    ) -> AddResult:
        """Store already-checked STIX objects in one transaction (TAXII 2.1 s5.5).

        A re-post of an identical object (same ``id`` and version) is a success
        that writes nothing; a *different* object under an existing ``id`` and
        version is a failure (STIX 2.1 s3.6: same id and version must be identical).
        """
        if not objs:
            return AddResult()
        with self.transaction() as conn:
            return self.add_in(conn, collection_id, objs, date_added=date_added, origin=origin)

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Connection]:
        """One write transaction holding the write lock; storage errors become ``StorageError``.

        ``durable`` (the default): the commit is flushed to stable storage before
        it returns, as an acknowledged write must be.  ``durable=False`` is for
        writes that can be redone from what is already durable (releases derived
        from stored objects with their bookmarks, pulled pages with the partner's
        cursor): the commit is still atomic and survives a crash of the process
        (``kill -9``); a power loss may roll back the last few such transactions
        as a whole, data and bookmark together, and the next run redoes them.
        """
        try:
            with self._write(durable) as conn, conn.begin():
                if self.dialect == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7274556)")
                    if not durable:
                        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"storage write failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}") from exc
        if self.dialect == "postgresql" and self._inserted_since_check >= _STATS_CHECK_ROWS:
            self._keep_statistics()

    def _keep_statistics(self) -> None:
        """PostgreSQL: ``ANALYZE objects`` (and the tables it joins) when the table has doubled since it was last analyzed.

        The id lookups of every add (``stix_id IN (...)`` within a collection) are
        planned from the table's statistics.  A table that grew fast since its last
        ANALYZE (a fresh node's first bulk load or first sync from a partner) has
        none that fit, and the planner walks the whole collection for each batch,
        so adds slow down with the collection's size until autovacuum's next
        analyze (a minute or more on a busy node; 1,600 objects/s instead of
        11,000/s at 100k objects, measured).  Analyzing at doubling sizes costs a
        few sample reads over the life of the table.  Best effort: a failure here
        never fails the write that has already committed.
        """
        with self._counters_lock:
            if self._inserted_since_check < _STATS_CHECK_ROWS:
                return
            self._inserted_since_check = 0
        try:
            with self.engine.connect() as conn:
                # relpages: the size at the last ANALYZE or VACUUM (0 before any); the file's size now is exact
                relpages, pages = conn.exec_driver_sql(
                    "SELECT relpages, pg_relation_size(oid) / current_setting('block_size')::int FROM pg_class WHERE oid = 'objects'::regclass"
                ).one()
                if pages < _STATS_MIN_PAGES or pages < 2 * relpages:
                    return
                # one worker analyzes; the others go on (ANALYZE does not block inserts or reads)
                if conn.exec_driver_sql("SELECT pg_try_advisory_xact_lock(7274558)").scalar():
                    conn.exec_driver_sql("ANALYZE objects, versions, version_bodies, bodies")  # the page query joins versions and texts by key
                conn.commit()
        except SQLAlchemyError:
            pass

    @contextmanager
    def try_exclusive(self) -> Iterator[bool]:
        """A node-wide lock held across transactions, taken without waiting: yields whether it was got.

        Lets one of several server workers run the background release while the
        others skip (PostgreSQL: a session advisory lock; SQLite: ``flock`` on a
        file beside the database).
        """
        if self.dialect == "postgresql":
            conn = self.engine.connect()
            got = False
            try:
                got = bool(conn.exec_driver_sql("SELECT pg_try_advisory_lock(7274557)").scalar())
                conn.commit()
                yield got
            finally:
                try:
                    if got:
                        conn.exec_driver_sql("SELECT pg_advisory_unlock(7274557)")
                        conn.commit()
                except SQLAlchemyError:
                    conn.invalidate()  # a session still holding the lock must not go back to the pool
                conn.close()
            return
        import fcntl

        path = f"{self.engine.url.database}.release-lock"
        with open(path, "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def add_in(
        self, conn: Connection, collection_id: str, objs: Sequence[dict], *, date_added: int | None = None, origin: str | None = None,
        index_signatures: bool = True,
    ) -> AddResult:
        """``add_objects`` inside a ``transaction()``.

        Each new row's ``date_added`` is strictly greater than every one stored in
        the collection before it, this batch's earlier rows included (the first
        row gets ``max(now, latest + 1µs)``, the next ones 1µs more each), so a
        reader holding ``added_after`` = the last ``date_added`` it saw misses
        nothing and gets nothing twice.  ``result.date_added`` is the first row's.
        ``origin``: what the node observed about where the rows came from (``schema.objects.origin``).
        ``index_signatures``: record which versions each new batch signature covers (``signature_members``, what
        ``signatures_covering`` reads); ``False`` for a collection no one looks signatures up in (a release target,
        only ever paged in order, where each signature comes before what it signs).
        """
        return self.add_in_many(conn, [(collection_id, objs)], date_added=date_added, origin=origin,
                                index_signatures=index_signatures)[0]

    def add_in_many(
        self, conn: Connection, batches: Sequence[tuple[str, Sequence[dict]]], *, date_added: int | None = None,
        origin: str | None = None, index_signatures: bool = True,
    ) -> list[AddResult]:
        """``add_in`` for several collections in one step (a release to several partners): one result per batch.

        Each collection's rows are exactly what ``add_in`` would write for it; an object
        given to several collections is serialised, hashed and stored as a body once,
        and the rows of every collection are inserted together.
        """
        results = [AddResult() for _ in batches]
        texts: dict[int, str] = {}  # id(object) -> its JSON text, for objects given to several collections
        refs_memo: dict[int, list[str]] = {}  # id(object) -> its marking references, likewise
        # a batch of the same objects (by identity) as an earlier one, where neither collection holds any of their ids:
        # staged alike but for the collection and its stamp, so staged once (partners of one release group)
        alike: dict[tuple[int, ...], tuple[_Staged, AddResult, dict]] = {}
        work: list[tuple[str, Sequence[dict], AddResult, int, _Staged]] = []
        keys = {cid: self._key_for_write(conn, cid) for cid, objs in batches if objs}
        ids_of = [tuple(dict.fromkeys(o["id"] for o in objs)) for _, objs in batches]
        # the stored versions of each batch's ids (``versions``, whatever collection holds them) and which of them each
        # collection holds: one lookup for all the collections given the same ids
        by_ids: dict[tuple[str, ...], list[int]] = {}
        for (cid, objs), ids in zip(batches, ids_of, strict=True):
            if objs:
                by_ids.setdefault(ids, []).append(keys[cid])
        # the versions of every batch's ids in one lookup (a release's partners get overlapping subsets of one batch)
        known = _versions_of(conn, list(dict.fromkeys(i for ids in by_ids for i in ids))) if by_ids else {}
        stored: dict[tuple[int, tuple[str, ...]], dict[str, list]] = {}
        for ids, ks in by_ids.items():
            of_ids = known if len(by_ids) == 1 else _of_ids(known, set(ids))
            stored.update({(k, ids): found for k, found in _stored_versions(conn, ks, of_ids).items()})
        wanted_memo: dict[tuple[int, ...], list[str]] = {}
        for (collection_id, objs), ids, result in zip(batches, ids_of, results, strict=True):
            if not objs:
                continue
            key = keys[collection_id]
            latest = conn.execute(select(func.max(object_rows.c.date_added)).where(object_rows.c.coll == key)).scalar()
            stamp = max(date_added or now_us(), (latest or 0) + 1)
            result.date_added = stamp
            existing = stored[(key, ids)]
            shape = tuple(map(id, objs))
            wanted = wanted_memo.get(shape)
            if wanted is None:
                wanted = wanted_memo[shape] = _wanted_defs(objs, refs_memo)
            defs = _stored_defs(conn, key, wanted)
            prior = alike.get(shape) if not existing else None
            if prior is not None and prior[2] == defs:
                staged = prior[0].moved(key, stamp)
                result.successes, result.failures = list(prior[1].successes), list(prior[1].failures)
            else:
                staged = _Staged(key, stamp, _encryption_check(objs, defs, refs_memo), origin, texts=texts)
                compare = _stage_versions(objs, existing, staged, result)
                _settle_collisions(conn, compare, staged, result)
                if staged.rows:
                    _flag_versions(conn, existing, staged.rows)
                if not existing and not staged.unversioned:  # an unversioned SCO's version is its stamp: not alike
                    alike[shape] = (staged, result, defs)
            if staged.rows:
                work.append((collection_id, objs, result, stamp, staged))
        _insert_versions(conn, [staged for *_, staged in work], known)
        for collection_id, objs, result, stamp, staged in work:
            if index_signatures:
                _index_members(conn, collection_id, objs, staged.rows)
            result.added = len(staged.rows)
            result.new.update((r["stix_id"], r["version"]) for r in staged.rows.values())
            self._inserted_since_check += len(staged.rows)
            # the audit entries of this transaction are stamped no earlier (its signed head covers these rows)
            conn.info["cti_last_date_added"] = max(conn.info.get("cti_last_date_added", 0), stamp + result.added - 1)
        return results

    # -- sync bookmarks -----------------------------------------------------------

    def get_state(self, name: str, conn: Connection | None = None) -> str | None:
        """A persisted sync bookmark (or ``None``)."""
        stmt = select(sync_state.c.value).where(sync_state.c.name == name)
        if conn is not None:
            return conn.execute(stmt).scalar()
        with self._read() as c:
            return c.execute(stmt).scalar()

    def set_state(self, conn: Connection, name: str, value: str) -> None:
        """Persist a bookmark inside the caller's transaction (with the data it covers)."""
        conn.execute(delete(sync_state).where(sync_state.c.name == name))
        conn.execute(insert(sync_state).values(name=name, value=value))

    def delete_object(self, sel: Selection, object_id: str) -> int:
        """Delete the selected versions of one object (TAXII 2.1 s5.7); returns how many.

        The deleted versions are noted (sync state ``deleted:<collection>``, same transaction) so
        that the release withdraws them from whoever they were released to (``exchange.sharing.lifecycle``).
        """
        with self.transaction() as conn:
            key = self.collection_key(conn, sel.collection_id)
            if key is None:
                return 0
            where = self._where(sel, key, object_id=object_id)
            found = conn.execute(select(objects.c.version, *_DROP_COLUMNS).where(*where)).all()
            _drop_rows(conn, found)
            if found:
                _unindex_members(conn, key, sel.collection_id, object_id)
                _refresh_flags(conn, key, object_id)
                key = f"deleted:{sel.collection_id}"
                noted = orjson.loads(self.get_state(key, conn) or "[]")
                self.set_state(conn, key, orjson.dumps([*noted, [object_id, sorted(r.version for r in found)]]).decode())
            return len(found)

    def latest_in_many(self, conn: Connection, collection_ids: Sequence[str], ids: Iterable[str]) -> dict[str, dict[str, dict]]:
        """``latest_in`` for several collections and the same ids, by collection id: one lookup of the ids for all."""
        out: dict[str, dict[str, dict]] = {cid: {} for cid in collection_ids}
        keys = self.collection_keys(conn, collection_ids)
        if not keys:
            return out
        by_key = {k: cid for cid, k in keys.items()}
        coll = _coll_in(objects.c.coll, list(by_key))
        for chunk in _chunks(sorted(set(ids)), _CHUNK):
            for key, sid, body, last in conn.execute(
                select(objects.c.coll, objects.c.stix_id, _BODY, objects.c.is_last).select_from(_WITH_BODY).where(
                    coll, objects.c.stix_id.in_(chunk)
                )
            ):
                if last:
                    out[by_key[key]][sid] = orjson.loads(body)
        return out

    def latest_in(self, conn: Connection, collection_id: str, ids: Iterable[str]) -> dict[str, dict]:
        """The last version of each of ``ids`` in a collection, parsed, read inside ``conn``'s transaction."""
        return self.latest_in_many(conn, [collection_id], ids)[collection_id]

    def versions_list(self, collection_id: str, object_id: str) -> list[str]:
        """The stored versions of one object in a collection."""
        with self._read() as conn:
            key = self.collection_key(conn, collection_id)
            if key is None:
                return []
            return list(conn.execute(
                select(objects.c.version).where(objects.c.coll == key, objects.c.stix_id == object_id)
            ).scalars())

    def remove_in(self, conn: Connection, collection_id: str, object_id: str, versions: Iterable[str] | None = None) -> int:
        """Delete an object's versions (all, or those named) from a collection inside ``conn``'s transaction."""
        key = self.collection_key(conn, collection_id)
        if key is None:
            return 0
        where = [objects.c.coll == key, objects.c.stix_id == object_id]
        if versions is not None:
            where.append(objects.c.version_key.in_([parse_timestamp(v) for v in versions]))
        gone = conn.execute(select(*_DROP_COLUMNS).where(*where)).all()
        _drop_rows(conn, gone)
        n = len(gone)
        if n:
            _unindex_members(conn, key, collection_id, object_id)
            _refresh_flags(conn, key, object_id)
        return n

    # -- objects: reading -----------------------------------------------------------

    def _where(self, sel: Selection, key: int, *, object_id: str | None = None, c=objects.c) -> list:  # type: ignore[no-untyped-def]
        """The conditions of ``sel`` on ``objects``; ``key``: the key of ``sel.collection_id``.

        ``c``: the columns to state them on: ``objects`` (the rows with their versions) or, for a selection
        ``_on_rows_alone`` allows, ``object_rows``.
        """
        where: list = [c.coll == key]
        if object_id is not None:
            where.append(c.stix_id == object_id)
        if sel.ids:
            where.append(c.stix_id.in_(sel.ids))
        if sel.types:
            where.append(c.stix_type.in_(sel.types))
        if "all" not in sel.versions:
            alternatives = []
            # "= true", not "IS TRUE": only the former is an indexable condition on PostgreSQL
            if "last" in sel.versions:
                alternatives.append(c.is_last == True)  # noqa: E712
            if "first" in sel.versions:
                alternatives.append(c.is_first == True)  # noqa: E712
            stamps = [parse_timestamp(v) for v in sel.versions if v not in ("first", "last")]
            if stamps:
                alternatives.append(c.version_key.in_(stamps))
            where.append(or_(*alternatives) if len(alternatives) > 1 else alternatives[0])
        if sel.spec_versions:
            where.append(c.spec_version.in_(sel.spec_versions))
        if sel.added_after is not None:
            where.append(c.date_added > sel.added_after)
        if sel.plain_transport:
            where.append(c.encrypt_in_transit == False)  # noqa: E712
        return where

    def page(
        self,
        sel: Selection,
        *,
        limit: int,
        after: tuple[int, int] | None = None,
        object_id: str | None = None,
        with_body: bool = True,
    ) -> tuple[list[Row], bool]:
        """Up to ``limit`` rows in ``(date_added, seq)`` order after ``after``, and whether there are more.

        Several types (``match[type]=a,b``) are one indexed query per type, merged:
        a single ``IN`` would make the planner walk the whole collection instead.
        """
        if len(sel.types) > 1:
            parts = [self.page(replace(sel, types=(t,)), limit=limit, after=after, object_id=object_id, with_body=with_body)
                     for t in dict.fromkeys(sel.types)]
            merged = list(heapq.merge(*(rows for rows, _ in parts), key=lambda r: (r.date_added, r.seq)))
            return merged[:limit], len(merged) > limit or any(more for _, more in parts)
        try:
            with self._read() as conn:
                key = self.collection_key(conn, sel.collection_id)
                if key is None:  # never held a row
                    return [], False
                stmt = self.page_statement(sel, limit=limit, after=after, object_id=object_id, with_body=with_body, key=key)
                # fetchall: one driver call for the page (iterating the result fetches row by row)
                fetched = conn.execute(stmt).fetchall()
            fetched.sort(key=_keyset)  # already in keyset order but for PostgreSQL's join (``page_statement``): linear then
            rows = list(map(Row._make, fetched)) if with_body else [Row(r[0], r[1], r[2], r[3], r[4], "", r[6], r[7]) for r in fetched]
        except SQLAlchemyError as exc:
            raise StorageError(f"reading objects failed: {exc.__class__.__name__}") from exc
        more = len(rows) > limit
        return rows[:limit], more

    def page_statement(
        self, sel: Selection, *, limit: int, after: tuple[int, int] | None = None, object_id: str | None = None, with_body: bool = True,
        key: int | None = None,
    ):  # type: ignore[no-untyped-def]
        """The query of one page of one type (``page``): ``limit + 1`` rows in keyset order, texts joined by version key.

        ``key``: the collection's key, looked up if not given (a collection without one: a query finding nothing).
        """
        if key is None:
            with self._read() as conn:
                key = self.collection_key(conn, sel.collection_id)
            key = _NO_KEY if key is None else key
        c = objects.c
        cols = [c.seq, c.stix_id, c.version, c.spec_version, c.date_added]
        cols.append(_BODY if with_body else c.stix_type)
        cols.append(c.encrypt_in_transit)
        cols.append(c.origin)
        where = self._where(sel, key, object_id=object_id)
        if after is not None:
            where.append(tuple_(c.date_added, c.seq) > tuple_(*after))
        if not with_body:
            return select(*cols).where(*where).order_by(c.date_added, c.seq).limit(limit + 1)
        if self.dialect == "sqlite":  # the planner walks the keyset index of objects and probes versions and texts by key per row
            return select(*cols).select_from(_WITH_BODY).where(*where).order_by(c.date_added, c.seq).limit(limit + 1)
        # PostgreSQL: the page of rows first (the keyset index walk stopped by the LIMIT), then their versions and texts
        # by key; a plain join let the planner hash-join and sort a whole small collection.  The join may
        # return the page's rows in another order: ``page`` puts them back in keyset order (a sort of at most
        # ``limit + 1`` rows)
        if _on_rows_alone(sel, object_id):
            r = object_rows.c
            where = self._where(sel, key, c=r)
            if after is not None:
                where.append(tuple_(r.date_added, r.seq) > tuple_(*after))
            page = select(r.seq, r.ver, r.date_added, r.body_hash, r.encrypt_in_transit, r.origin).where(*where).order_by(
                r.date_added, r.seq).limit(limit + 1).subquery("page")
            p, v, vb = page.c, versions.c, version_bodies.c
            return select(
                p.seq, v.stix_id, v.version, v.spec_version, p.date_added, body_of(p.body_hash, vb.body), p.encrypt_in_transit, p.origin
            ).select_from(page.join(versions, v.key == p.ver).join(version_bodies, vb.key == p.ver))
        cols[5] = c.own_body_hash
        cols.append(c.ver)
        rows = select(*cols).where(*where).order_by(c.date_added, c.seq).limit(limit + 1).subquery("page")
        r, vb = rows.c, version_bodies.c
        return select(
            r.seq, r.stix_id, r.version, r.spec_version, r.date_added, body_of(r.own_body_hash, vb.body), r.encrypt_in_transit, r.origin
        ).select_from(rows.join(version_bodies, vb.key == r.ver))

    def last_key(self, collection_id: str) -> tuple[int, int] | None:
        """The ``(date_added, seq)`` of a collection's newest row (an index probe), or ``None`` if empty."""
        c = object_rows.c
        with self._read() as conn:
            key = self.collection_key(conn, collection_id)
            if key is None:
                return None
            stmt = select(c.date_added, c.seq).where(c.coll == key).order_by(c.date_added.desc(), c.seq.desc()).limit(1)
            row = conn.execute(stmt).first()
        return (row[0], row[1]) if row is not None else None

    def exists(self, collection_id: str, object_id: str, *, plain_transport: bool = False) -> bool:
        with self._read() as conn:
            key = self.collection_key(conn, collection_id)
            if key is None:
                return False
            where = [objects.c.coll == key, objects.c.stix_id == object_id]
            if plain_transport:
                where.append(objects.c.encrypt_in_transit == False)  # noqa: E712
            return conn.execute(select(objects.c.seq).where(*where).limit(1)).first() is not None

    def withheld_in_range(
        self, sel: Selection, *, after: tuple[int, int] | None, upto: tuple[int, int] | None, object_id: str | None = None, limit: int = 10000
    ) -> list[tuple[str, str]]:
        """``(id, version)`` of the rows a plain-HTTP page left out (flagged ``encrypt_in_transit``) in its keyset range."""
        from dataclasses import replace

        c = objects.c
        with self._read() as conn:
            key = self.collection_key(conn, sel.collection_id)
            if key is None:
                return []
            where = self._where(replace(sel, plain_transport=False), key, object_id=object_id)
            where.append(c.encrypt_in_transit == True)  # noqa: E712
            if after is not None:
                where.append(tuple_(c.date_added, c.seq) > tuple_(*after))
            if upto is not None:
                where.append(tuple_(c.date_added, c.seq) <= tuple_(*upto))
            stmt = select(c.stix_id, c.version).where(*where).order_by(c.date_added, c.seq).limit(limit)
            return [(r[0], r[1]) for r in conn.execute(stmt)]

    def iter_rows(self, sel: Selection, *, after: tuple[int, int] | None = None, batch: int = 1000) -> Iterator[Row]:
        """Every selected row in keyset order, fetched page by page (a full pull streams)."""
        while True:
            rows, more = self.page(sel, limit=batch, after=after)
            yield from rows
            if not more or not rows:
                return
            after = (rows[-1].date_added, rows[-1].seq)

    def latest(self, collection_id: str, object_id: str) -> dict | None:
        """The last version of one object in a collection, parsed, or ``None``."""
        with self._read() as conn:
            key = self.collection_key(conn, collection_id)
            if key is None:
                return None
            body = conn.execute(
                select(_BODY).select_from(_WITH_BODY).where(
                    objects.c.coll == key, objects.c.stix_id == object_id, objects.c.is_last == True  # noqa: E712
                )
            ).scalar()
        return None if body is None else orjson.loads(body)

    def existing_ids(self, collection_id: str, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` have at least one version in ``collection_id``."""
        wanted = list(ids)
        found: set[str] = set()
        with self.engine.connect() as conn:
            key = self.collection_key(conn, collection_id)
            if key is None:
                return found
            for chunk in _chunks(wanted, _CHUNK):
                found.update(
                    conn.execute(
                        select(objects.c.stix_id).where(objects.c.coll == key, objects.c.stix_id.in_(chunk)).distinct()
                    ).scalars()
                )
        return found

    def latest_many(self, collection_ids: Sequence[str], ids: Iterable[str]) -> list[dict]:
        """The last version of each of ``ids`` found in the first of ``collection_ids`` that has it."""
        wanted = list(dict.fromkeys(ids))
        out: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for key in self.collection_keys(conn, collection_ids).values():
                missing = [i for i in wanted if i not in out]
                for chunk in _chunks(missing, _CHUNK):
                    # (coll, stix_id) leads the unique index; is_last is checked here, not in SQL,
                    # so that no planner prefers the date-ordered index and scans the collection
                    for sid, body, last in conn.execute(
                        select(objects.c.stix_id, _BODY, objects.c.is_last).select_from(_WITH_BODY).where(
                            objects.c.coll == key, objects.c.stix_id.in_(chunk)
                        )
                    ):
                        if last:
                            out[sid] = orjson.loads(body)
        return [out[i] for i in wanted if i in out]

    def signatures_covering(self, collection_id: str, members: Iterable[str]) -> list[dict]:
        """The stored batch signatures (``x-cti-signature`` with ``members``) of a collection that cover any of ``members``
        (member keys: ``exchange.policy.markings.signed_member``), last versions, parsed."""
        wanted = sorted(set(members))
        ids: dict[str, None] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(wanted, _CHUNK):
                for (sid,) in conn.execute(
                    select(members_table.c.signature_id).where(members_table.c.collection_id == collection_id, members_table.c.member.in_(chunk))
                ):
                    ids[sid] = None
        return self.latest_many([collection_id], list(ids)) if ids else []

    def versions_of(self, collection_id: str, keys: Sequence[tuple[str, str | None]]) -> list[dict]:
        """Stored object versions by ``(id, version)``, parsed, in ``keys`` order (missing ones skipped)."""
        found: dict[tuple[str, str], dict] = {}
        with self.engine.connect() as conn:
            key = self.collection_key(conn, collection_id)
            for chunk in _chunks(list(keys) if key is not None else [], _CHUNK):
                ids = list({k[0] for k in chunk})
                for sid, version, body in conn.execute(
                    select(objects.c.stix_id, objects.c.version, _BODY).select_from(_WITH_BODY).where(
                        objects.c.coll == key, objects.c.stix_id.in_(ids)
                    )
                ):
                    found[(sid, version)] = orjson.loads(body)
        return [found[(k[0], k[1])] for k in keys if (k[0], k[1]) in found]  # type: ignore[index]

    def resolver(self, collection_id: str):  # type: ignore[no-untyped-def]
        """A function finding an object's last version in ``collection_id`` by id (cached)."""
        cache: dict[str, dict | None] = {}

        def resolve(object_id: str) -> dict | None:
            if object_id not in cache:
                cache[object_id] = self.latest(collection_id, object_id)
            return cache[object_id]

        return resolve

    def count(self, collection_id: str, *, all_versions: bool = False) -> int:
        with self._read() as conn:
            key = self.collection_key(conn, collection_id)
            if key is None:
                return 0
            where = [object_rows.c.coll == key]
            if not all_versions:
                where.append(object_rows.c.is_last == True)  # noqa: E712
            return conn.execute(select(func.count()).select_from(object_rows).where(*where)).scalar() or 0

    # -- statuses ------------------------------------------------------------------

    def save_status(self, api_root: str, account: str, body: dict, *, conn: Connection | None = None) -> None:
        """Store a status resource (TAXII 2.1 s4.3.1), inside ``conn``'s transaction if given."""
        stmt = insert(statuses).values(
            id=body["id"], api_root=api_root, account=account, created=now_us(), body=orjson.dumps(body).decode()
        )
        if conn is not None:
            conn.execute(stmt)
            return
        with self.transaction() as own:
            own.execute(stmt)

    def get_status(self, api_root: str, status_id: str) -> tuple[str, dict] | None:
        """``(account, status)`` for a stored status resource, or ``None``."""
        try:
            uuid.UUID(status_id)
        except ValueError:
            return None
        with self._read() as conn:
            row = conn.execute(
                select(statuses.c.account, statuses.c.body).where(statuses.c.id == status_id, statuses.c.api_root == api_root)
            ).first()
        return None if row is None else (row.account, orjson.loads(row.body))


# -- objects: the steps of Store.add_in_many (each runs once per collection's batch) ---------------------------


def _refs_of(obj: dict, memo: dict[int, list[str]]) -> list[str]:
    """``obj``'s marking references (``exchange.policy.markings.marking_refs``), by ``id(obj)`` in ``memo``."""
    found = memo.get(id(obj))
    if found is None:
        from exchange.policy.markings import marking_refs

        found = memo[id(obj)] = marking_refs(obj)
    return found


def _wanted_defs(objs: Sequence[dict], refs_memo: dict[int, list[str]]) -> list[str]:
    """The marking definitions ``objs`` reference that are neither TLP 2.0's nor in the batch itself."""
    from exchange.policy.markings import LEVEL_OF

    inside = {o["id"] for o in objs if o.get("type") == "marking-definition"}
    return sorted({r for o in objs for r in _refs_of(o, refs_memo) if r not in LEVEL_OF and r not in inside})


def _stored_defs(conn: Connection, key: int, wanted: Sequence[str]) -> dict[str, dict]:
    """Those of the marking definitions ``wanted`` (``_wanted_defs``) that the collection of ``key`` holds, parsed (the
    release and the sync agents store them with the objects)."""
    defs: dict[str, dict] = {}
    for chunk in _chunks(wanted, _CHUNK):
        for sid, body in conn.execute(
            select(objects.c.stix_id, _BODY).select_from(_WITH_BODY).where(objects.c.coll == key, objects.c.stix_id.in_(chunk))
        ):
            defs.setdefault(sid, orjson.loads(body))
    return defs


def _encryption_check(objs: Sequence[dict], stored_defs: dict[str, dict], refs_memo: dict[int, list[str]]) -> Callable[[dict], bool]:
    """A function telling whether an object may cross only encrypted channels (IEP ``encrypt_in_transit``).

    Marking definitions are resolved from the batch itself, then from ``stored_defs``
    (``_stored_defs``: those of the collection written to).
    """
    from exchange.policy.markings import LEVEL_OF, encryption_required

    defs: dict[str, dict | None] = {**stored_defs, **{o["id"]: o for o in objs if o.get("type") == "marking-definition"}}

    def check(obj: dict) -> bool:
        refs = _refs_of(obj, refs_memo)
        return bool(refs) and not all(r in LEVEL_OF for r in refs) and encryption_required(obj, defs)  # TLP alone: never

    return check


class _StoredRow(NamedTuple):
    """A stored version of an id in a collection, as staging needs it (``_stored_versions``)."""

    seq: int
    stix_id: str
    version_key: int
    is_first: bool
    is_last: bool


def _stored_versions(
    conn: Connection, keys: Sequence[int], of_ids: dict[tuple[str, int], tuple[int, bytes]],
) -> dict[int, dict[str, list[_StoredRow]]]:
    """Which of the versions ``of_ids`` (``_versions_of`` the batch's ids) each collection of ``keys`` holds, by key,
    then by id: one read of the rows alone for all the collections."""
    existing: dict[int, dict[str, list[_StoredRow]]] = {k: {} for k in keys}
    by_ver = {ver: version for version, (ver, _) in of_ids.items()}
    c = object_rows.c
    in_colls = _coll_in(c.coll, list(keys))
    for chunk in _chunks(list(by_ver), _CHUNK):
        for coll, seq, ver, is_first, is_last in conn.execute(
            select(c.coll, c.seq, c.ver, c.is_first, c.is_last).where(in_colls, c.ver.in_(chunk))
        ):
            sid, vkey = by_ver[ver]
            existing[coll].setdefault(sid, []).append(_StoredRow(seq, sid, vkey, is_first, is_last))
    return existing


def _new_row(
    obj: dict, vkey: int, vstr: str, date_added: int, needs_encryption: Callable[[dict], bool], origin: str | None,
    texts: dict[int, str] | None = None,
) -> dict:
    """What ``_insert_versions`` needs of one new object version (its collection's key is the ``_Staged``'s;
    ``texts``: JSON texts already made, by ``id(obj)``)."""
    text_ = texts.get(id(obj)) if texts is not None else None
    if text_ is None:
        text_ = orjson.dumps(obj).decode("utf-8")
        if texts is not None:
            texts[id(obj)] = text_
    return {
        "stix_id": obj["id"], "stix_type": obj["type"], "version": vstr, "version_key": vkey,
        "spec_version": obj.get("spec_version", "2.1"), "date_added": date_added, "is_first": False, "is_last": False,
        "body": text_, "encrypt_in_transit": needs_encryption(obj), "origin": origin,
    }


@dataclass
class _Staged:
    """The new versions of one batch, in the order they are written.

    Row ``k`` of a batch gets ``date_added = stamp + k`` (microsecond steps), so
    ``date_added`` strictly increases row by row: a client paging with
    ``added_after`` = the last ``date_added`` it saw (``X-TAXII-Date-Added-Last``)
    never skips the rest of an envelope that shares its page's last stamp.
    """

    key: int  # the collection's (``collections.key``)
    stamp: int
    needs_encryption: Callable[[dict], bool]
    origin: str | None = None
    rows: dict[tuple[str, int], dict] = field(default_factory=dict)  # (id, version_key) -> row values, in date_added order
    unversioned: dict[str, int] = field(default_factory=dict)  # id -> version_key of an unversioned SCO staged in this batch
    texts: dict[int, str] | None = None  # JSON texts by id(object), shared by the collections of one ``add_in_many``
    staged_at: int | None = None  # the stamp the row values were staged at, if another collection's (``moved``)

    def moved(self, key: int, stamp: int) -> _Staged:
        """These staged rows for the collection of ``key`` at ``stamp``: the same row values (shared, not copied), each
        written with that key and ``date_added`` moved by the difference of the stamps (``_insert_versions``)."""
        return _Staged(key, stamp, self.needs_encryption, self.origin, self.rows, self.unversioned, self.texts, self.stamp)

    def add(self, obj: dict, vkey: int | None, vstr: str | None) -> str:
        """Stage ``obj`` as a new version; ``vkey`` ``None``: versioned by its own ``date_added``. Returns the version."""
        date_added = self.stamp + len(self.rows)
        if vkey is None or vstr is None:
            vkey, vstr = date_added, format_timestamp(date_added)
            self.unversioned[obj["id"]] = vkey
        self.rows[(obj["id"], vkey)] = _new_row(obj, vkey, vstr, date_added, self.needs_encryption, self.origin, self.texts)
        return vstr

    def again(self, obj: dict, key: tuple[str, int], result: AddResult) -> None:
        """A second object with the id and version of one staged in this batch: a success if identical, else a failure."""
        prior = self.rows[key]
        if orjson.loads(prior["body"]) == obj:
            result.successes.append({"id": obj["id"], "version": prior["version"]})
        else:
            result.failures.append(
                {"id": obj["id"], "version": prior["version"], "message": "another object with this id and version is in the same envelope"}
            )


def _stage_versions(objs: Sequence[dict], existing: dict[str, list], staged: _Staged, result: AddResult) -> list[tuple[dict, str | None, int]]:
    """Stage the versions not stored yet; returns the posted objects that collide with a stored version.

    An object's version is its ``modified``/``created`` (TAXII 2.1 s3.4.3); an SCO
    without either is versioned by its ``date_added``.  Two different objects with the
    same id and version in one envelope: the second is a failure (STIX 2.1 s3.6).
    """
    compare: list[tuple[dict, str | None, int]] = []  # (posted object, its version or None if unversioned, stored version key)
    for obj in objs:
        sid = obj["id"]
        version = object_version(obj)
        rows = existing.get(sid, [])
        if version is None:  # SCO without created/modified: versioned by date_added
            # identical to the latest stored version of this SCO? then nothing new
            last = next((r for r in rows if r.is_last), None)
            if last is not None:
                compare.append((obj, None, last.version_key))
            elif sid in staged.unversioned:
                staged.again(obj, (sid, staged.unversioned[sid]), result)
            else:
                result.successes.append({"id": sid, "version": staged.add(obj, None, None)})
            continue
        vkey = parse_timestamp(version)
        if any(r.version_key == vkey for r in rows):
            compare.append((obj, version, vkey))
        elif (sid, vkey) in staged.rows:
            staged.again(obj, (sid, vkey), result)
        else:
            result.successes.append({"id": sid, "version": staged.add(obj, vkey, version)})
    return compare


def _settle_collisions(conn: Connection, compare: list[tuple[dict, str | None, int]], staged: _Staged, result: AddResult) -> None:
    """Identical re-posts are successes; different content under a stored version is a failure (STIX 2.1 s3.6).

    A changed SCO without a version of its own is staged as a new version (at its own ``date_added``).
    """
    for chunk in _chunks(compare, _CHUNK):
        # by (coll, stix_id): the unique index; a row-value IN would scan the collection on SQLite
        keys = {(o["id"], k) for o, _, k in chunk}
        stored = {
            (r.stix_id, r.version_key): r.body
            for r in conn.execute(
                select(objects.c.stix_id, objects.c.version_key, _BODY).select_from(_WITH_BODY).where(
                    objects.c.coll == staged.key, objects.c.stix_id.in_(sorted({i for i, _ in keys})),
                )
            )
            if (r.stix_id, r.version_key) in keys
        }
        for obj, vstr, vkey in chunk:
            sid = obj["id"]
            body = stored.get((sid, vkey))
            if vstr is None and sid in staged.unversioned:  # a changed SCO already staged from this batch
                staged.again(obj, (sid, staged.unversioned[sid]), result)
            elif body is not None and orjson.loads(body) == obj:
                result.successes.append({"id": sid, "version": vstr if vstr is not None else format_timestamp(vkey)})
            elif vstr is None:  # a changed SCO: store it as a new version
                result.successes.append({"id": sid, "version": staged.add(obj, None, None)})
            else:
                result.failures.append(
                    {"id": sid, "version": vstr, "message": (
                        f"conflict: a different object with this id and version {_stored_version(body, vstr)} is already stored "
                        "(STIX 2.1 s3.6); a correction is a new version with a later modified")}
                )


def _stored_version(body: str | None, posted: str) -> str:
    """The version string of the stored object a posted one conflicts with (as stored)."""
    if body is None:
        return posted
    return object_version(orjson.loads(body)) or posted


def _flag_versions(conn: Connection, existing: dict[str, list], pending: dict[tuple[str, int], dict]) -> None:
    """Set ``is_first``/``is_last`` of the pending rows and clear them on stored rows no longer first or last (per id)."""
    by_id: dict[str, list[int]] = {}
    for sid, vkey in pending:
        by_id.setdefault(sid, []).append(vkey)
    clear_first: list[int] = []
    clear_last: list[int] = []
    for sid, new_keys in by_id.items():
        rows = existing.get(sid, [])
        all_keys = [r.version_key for r in rows] + new_keys
        lo, hi = min(all_keys), max(all_keys)
        for k in new_keys:
            pending[(sid, k)]["is_first"] = k == lo
            pending[(sid, k)]["is_last"] = k == hi
        clear_first += [r.seq for r in rows if r.is_first and r.version_key != lo]
        clear_last += [r.seq for r in rows if r.is_last and r.version_key != hi]
    for chunk in _chunks(clear_first, _CHUNK):
        conn.execute(update(object_rows).where(object_rows.c.seq.in_(chunk)).values(is_first=False))
    for chunk in _chunks(clear_last, _CHUNK):
        conn.execute(update(object_rows).where(object_rows.c.seq.in_(chunk)).values(is_last=False))


def _insert_versions(conn: Connection, parts: Sequence[_Staged], known: dict[tuple[str, int], tuple[int, bytes]]) -> None:
    """Insert the flagged new rows of one or more collections: each version once (``versions``) with its text
    (``version_bodies``), and a row a body of its own (``put_bodies``) only where its text differs from its version's.
    ``known``: the stored versions of the batches' ids (``_versions_of``); it gets the new ones."""
    rows = [r for part in parts for r in part.rows.values()]
    if not rows:
        return
    hashes: dict[int, bytes] = {}  # id(text) -> its hash: one text given to several collections is hashed once
    first: dict[tuple[str, int], dict] = {}  # each version's first staged row, in order
    for r in rows:
        first.setdefault((r["stix_id"], r["version_key"]), r)
    new = [r for k, r in first.items() if k not in known]
    counts: Counter = Counter((r["stix_id"], r["version_key"]) for r in rows)  # rows per version, new ones made with theirs
    if new:
        made = _new_versions(conn, [
            (r["stix_id"], r["version_key"], r["version"], r["spec_version"], _hash_of(r["body"], hashes),
             counts.pop((r["stix_id"], r["version_key"])))
            for r in new
        ])
        known.update(made)
        mark = _placeholder(conn)
        conn.exec_driver_sql(
            f"INSERT INTO version_bodies (key, body) VALUES ({mark}, {mark})",
            [(made[(r["stix_id"], r["version_key"])][0], r["body"]) for r in new],
        )
    out: list[tuple] = []
    own: list[str] = []
    for part in parts:
        shift = part.stamp - part.staged_at if part.staged_at is not None else 0
        for r in part.rows.values():
            ver, version_hash = known[(r["stix_id"], r["version_key"])]
            text_ = r["body"]
            h = _hash_of(text_, hashes)
            if h == version_hash:
                h = None
            else:
                own.append(text_)
            out.append((part.key, ver, r["stix_type"], r["date_added"] + shift, r["is_first"], r["is_last"], h, r["encrypt_in_transit"],
                        r["origin"]))
    if own:
        put_bodies(conn, own, hashes)
    mark = _placeholder(conn)
    conn.exec_driver_sql(
        f"INSERT INTO objects ({', '.join(_ROW_COLUMNS)}) VALUES ({', '.join([mark] * len(_ROW_COLUMNS))})", out
    )
    if counts:  # versions stored before: one more reference per new row
        conn.exec_driver_sql(f"UPDATE versions SET rows = rows + {mark} WHERE key = {mark}", [(n, known[k][0]) for k, n in counts.items()])


#: the columns of an ``objects`` row as ``_insert_versions`` writes them (``seq`` is the database's)
_ROW_COLUMNS = ("coll", "ver", "stix_type", "date_added", "is_first", "is_last", "body_hash", "encrypt_in_transit", "origin")
#: what ``_drop_rows`` needs of each row it deletes
_DROP_COLUMNS = (objects.c.seq, objects.c.ver, objects.c.own_body_hash, objects.c.version_body_hash)


def _of_ids(known: dict[tuple[str, int], tuple[int, bytes]], ids: set[str]) -> dict[tuple[str, int], tuple[int, bytes]]:
    """The part of ``_versions_of``'s answer that is about ``ids``."""
    return {k: v for k, v in known.items() if k[0] in ids}


def _versions_of(conn: Connection, ids: Sequence[str]) -> dict[tuple[str, int], tuple[int, bytes]]:
    """Every stored version of ``ids`` (``(stix_id, version_key)``), whatever collections hold it: its ``versions.key``
    and body hash."""
    out: dict[tuple[str, int], tuple[int, bytes]] = {}
    mark = _placeholder(conn)
    for chunk in _chunks(ids, _CHUNK):
        # plain SQL, all rows in one driver call: a push's or a release's batch looks up a thousand ids at a time
        found = conn.exec_driver_sql(
            f"SELECT key, stix_id, version_key, body_hash FROM versions WHERE stix_id IN ({', '.join([mark] * len(chunk))})", tuple(chunk)
        ).fetchall()
        for key, sid, vkey, h in found:
            out[(sid, vkey)] = (key, bytes(h))
    return out


def _new_versions(conn: Connection, new: Sequence[tuple[str, int, str, str, bytes, int]]) -> dict[tuple[str, int], tuple[int, bytes]]:
    """Insert ``versions`` rows (``(stix_id, version_key, version, spec_version, body_hash, rows)``, none stored yet,
    no two alike); their keys and body hashes, as ``_versions_of`` gives them."""
    if conn.dialect.name == "sqlite":
        return _new_versions_sqlite(conn, new)
    out: dict[tuple[str, int], tuple[int, bytes]] = {}
    mark = _placeholder(conn)
    one = f"({', '.join([mark] * 6)})"
    for chunk in _chunks(list(new), _CHUNK):
        # one multi-row INSERT ... RETURNING per chunk (SQLite >= 3.35, PostgreSQL): the keys without a second lookup
        got = conn.exec_driver_sql(
            f"INSERT INTO versions (stix_id, version_key, version, spec_version, body_hash, rows) VALUES {', '.join([one] * len(chunk))} "
            "RETURNING key, stix_id, version_key, body_hash",
            tuple(v for row in chunk for v in row),
        ).fetchall()
        for key, sid, vkey, h in got:
            out[(sid, vkey)] = (key, bytes(h))
    return out


def _new_versions_sqlite(
    conn: Connection, new: Sequence[tuple[str, int, str, str, bytes, int]],
) -> dict[tuple[str, int], tuple[int, bytes]]:
    """``_new_versions`` on SQLite: one prepared single-row ``INSERT`` for all (the driver's ``executemany``, 0.4x the
    time of multi-row ``INSERT ... RETURNING`` statements for 1,000 versions), the keys known without reading them back.

    SQLite gives a new row the largest rowid in the table plus one, and this transaction holds the write lock, so the
    rows get consecutive keys in order; checked by the largest key after, else (SQLite picks random rowids once the
    largest possible one is taken) the keys are looked up.
    """
    if not new:
        return {}
    before = conn.exec_driver_sql("SELECT max(key) FROM versions").scalar() or 0
    conn.exec_driver_sql(
        "INSERT INTO versions (stix_id, version_key, version, spec_version, body_hash, rows) VALUES (?, ?, ?, ?, ?, ?)", list(new),
    )
    if conn.exec_driver_sql("SELECT max(key) FROM versions").scalar() == before + len(new):
        return {(sid, vkey): (before + 1 + i, bytes(h)) for i, (sid, vkey, _v, _s, h, _n) in enumerate(new)}
    stored = _versions_of(conn, list(dict.fromkeys(sid for sid, *_ in new)))
    return {(sid, vkey): stored[(sid, vkey)] for sid, vkey, *_ in new}


def _drop_rows(conn: Connection, found: Sequence) -> None:
    """Delete ``objects`` rows (``_DROP_COLUMNS`` of each) with their own bodies; a version (and its text) goes with its
    last row."""
    if not found:
        return
    for chunk in _chunks([r.seq for r in found], _CHUNK):
        conn.execute(delete(object_rows).where(object_rows.c.seq.in_(chunk)))
    drop_bodies(conn, [r.own_body_hash for r in found if r.own_body_hash is not None])
    counts = Counter(r.ver for r in found)
    mark = _placeholder(conn)
    conn.exec_driver_sql(f"UPDATE versions SET rows = rows - {mark} WHERE key = {mark}", [(n, ver) for ver, n in counts.items()])
    gone: list[int] = []
    for chunk in _chunks(list(counts), _CHUNK):
        gone += conn.execute(delete(versions).where(versions.c.key.in_(chunk), versions.c.rows <= 0).returning(versions.c.key)).scalars()
    for chunk in _chunks(gone, _CHUNK):
        conn.execute(delete(version_bodies).where(version_bodies.c.key.in_(chunk)))


def _index_members(conn: Connection, collection_id: str, objs: Sequence[dict], staged: dict[tuple[str, int], dict]) -> None:
    """``signature_members`` rows for the batch signatures among the new rows (one per version each covers)."""
    rows: list[tuple[str, str, str]] = []
    done: set[tuple[str, int]] = set()
    for obj in objs:
        if obj.get("type") != SIGNATURE_TYPE or "members" not in obj:
            continue
        version = object_version(obj)
        key = (obj["id"], parse_timestamp(version)) if version is not None else None
        if key is None or key not in staged or key in done:  # stored before, or repeated in the batch
            continue
        done.add(key)
        rows += [(collection_id, m, obj["id"]) for m in dict.fromkeys(signature_members(obj))]
    if rows:
        mark = _placeholder(conn)
        conn.exec_driver_sql(f"INSERT INTO {members_table.name} (collection_id, member, signature_id) VALUES ({mark}, {mark}, {mark})", rows)


def _unindex_members(conn: Connection, key: int, collection_id: str, object_id: str) -> None:
    """A batch signature's ``signature_members`` rows go once it has no version left in the collection (``key``: its key)."""
    if not object_id.startswith(SIGNATURE_TYPE + "--"):
        return
    left = conn.execute(select(objects.c.seq).where(objects.c.coll == key, objects.c.stix_id == object_id).limit(1)).first()
    if left is None:
        conn.execute(delete(members_table).where(members_table.c.collection_id == collection_id, members_table.c.signature_id == object_id))


def _refresh_flags(conn: Connection, key: int, object_id: str) -> None:
    """Recompute ``is_first``/``is_last`` of an object's remaining versions in the collection of ``key``."""
    rows = conn.execute(select(objects.c.seq, objects.c.version_key).where(objects.c.coll == key, objects.c.stix_id == object_id)).all()
    if not rows:
        return
    first = min(rows, key=lambda r: r.version_key).seq
    last = max(rows, key=lambda r: r.version_key).seq
    c = object_rows.c
    conn.execute(update(object_rows).where(c.seq.in_([r.seq for r in rows])).values(is_first=c.seq == first, is_last=c.seq == last))


def _coll_in(col: ColumnElement, keys: Sequence[int]) -> ColumnElement[bool]:
    """``col`` (a ``coll`` column) is one of ``keys`` (at least one): ``=`` for one, ``IN`` for several."""
    return col == keys[0] if len(keys) == 1 else col.in_(list(keys))


def _on_rows_alone(sel: Selection, object_id: str | None) -> bool:
    """Whether ``sel`` (and ``object_id``) state conditions on a row's own columns only, none on its version's."""
    return object_id is None and not sel.ids and not sel.spec_versions and all(v in ("all", "first", "last") for v in sel.versions)


def _keyset(row: Sequence) -> tuple[int, int]:
    """A fetched page row's place in keyset order: ``(date_added, seq)``."""
    return (row[4], row[0])


def _engine_options(url: str) -> dict:
    """Per-dialect engine settings (the one place where the dialects differ, with the locks)."""
    if url.startswith("postgresql"):
        return {"pool_size": 8, "max_overflow": 8, "pool_pre_ping": True}
    return {}


def normalise_url(url: str) -> str:
    """``postgresql://`` (libpq style) means the psycopg 3 driver here."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


#: SQLite's page cache per connection, KiB. A server worker pools several connections (request threads, the
#: releaser), each filling its cache on a large database: 16 MiB each was ~60 MB of a worker's memory at 100k
#: objects (issue 21). Pages not in it are read from the OS page cache, which holds the file anyway.
SQLITE_CACHE_KIB = 4096


def _forget_new_keys(engine: Engine) -> None:
    """At the end of every transaction, whether committed or rolled back, forget which collection keys it made
    (``Connection.info`` outlives the transaction: it belongs to the pooled connection).  A key read afterwards is a
    committed one and may be cached; one rolled back is not there to read."""

    @event.listens_for(engine, "commit")
    def _on_commit(conn) -> None:  # type: ignore[no-untyped-def]
        conn.info.pop(_NEW_KEYS, None)

    @event.listens_for(engine, "rollback")
    def _on_rollback(conn) -> None:  # type: ignore[no-untyped-def]
        conn.info.pop(_NEW_KEYS, None)


#: what SQLite's planner is told of the row tables (``sqlite_stat1``, written by ``_plan_statistics``): the rows of a
#: large node, and how many distinct values each column of their indexes has
_PLANNED_ROWS = 1_000_000
_PLANNED_DISTINCT = {
    "objects": {"coll": 10, "ver": _PLANNED_ROWS, "date_added": _PLANNED_ROWS, "seq": _PLANNED_ROWS, "stix_type": 20,
                "is_last": 2, "is_first": 2},
    "versions": {"stix_id": _PLANNED_ROWS // 2, "version_key": _PLANNED_ROWS},
    "bodies": {"hash": _PLANNED_ROWS},
}


def _plan_statistics(engine: Engine) -> None:
    """Give SQLite's planner fixed statistics for ``objects``, ``versions`` and ``bodies`` (``sqlite_stat1``).

    Without any, it took ``coll = ?`` for as selective as ``versions.stix_id IN (...)`` and
    answered every lookup of ids in a collection by walking the whole collection, joining
    each row to its version (issue 21: a release batch's stored-version lookup grew with
    the partner's collection).  The figures describe a large node, so the plans are the
    ones that scale: ids through ``versions``' unique index, pages through the keyset index.
    Checked at every open and written when they differ (the first open of a database, or after
    a manual ``ANALYZE``): a read then, never a write, when several workers open at once.  The
    write takes the write lock up front (``BEGIN IMMEDIATE``: a busy wait, never a failed
    upgrade of a read); every connection opened after reads them (the pool is emptied).
    """
    with engine.connect() as conn:
        wanted = _planned_stats(conn)
        have = set()
        if conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").first() is not None:
            have = {tuple(r) for r in conn.exec_driver_sql(
                f"SELECT tbl, idx, stat FROM sqlite_stat1 WHERE tbl IN ({', '.join('?' * len(_PLANNED_DISTINCT))})",
                tuple(_PLANNED_DISTINCT)).all()}
    if have == wanted:
        return
    with engine.connect().execution_options(cti_write=True, cti_durable=True) as conn, conn.begin():
        conn.exec_driver_sql("ANALYZE meta")  # makes sqlite_stat1 if there is none (a tiny table: nothing to scan)
        for table in _PLANNED_DISTINCT:
            conn.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE tbl = ?", (table,))
        for row in sorted(wanted):
            conn.exec_driver_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", row)
        conn.exec_driver_sql("ANALYZE sqlite_master")  # this connection reads them again now
    engine.dispose()  # and every pooled one when it is next opened


def _planned_stats(conn: Connection) -> set[tuple[str, str, str]]:
    """The ``sqlite_stat1`` rows ``_plan_statistics`` gives: ``(table, index, stat)`` for every index of the row tables."""
    out: set[tuple[str, str, str]] = set()
    for table, distinct in _PLANNED_DISTINCT.items():
        for (index,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)).all():
            columns = [r[2] for r in conn.exec_driver_sql(f"PRAGMA index_info('{index}')")]
            stat, left = [_PLANNED_ROWS], _PLANNED_ROWS
            for col in columns:
                left = max(1, left // distinct.get(col, _PLANNED_ROWS))
                stat.append(left)
            out.add((table, index, " ".join(map(str, stat))))
    return out


def _configure_sqlite(engine: Engine) -> None:
    """WAL, full fsync on commit (an acknowledged add survives kill -9 and power loss), busy wait."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA wal_autocheckpoint=8192")  # checkpoint every ~32 MiB of WAL, not every 4 MiB (each one syncs the file)
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        options = conn.get_execution_options()
        immediate = options.get("cti_write", False)
        if immediate:  # WAL: NORMAL commits are atomic and survive kill -9; FULL also survives power loss
            conn.exec_driver_sql("PRAGMA synchronous=" + ("FULL" if options.get("cti_durable", True) else "NORMAL"))
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def node_data(data_dir: Path) -> Iterator[tuple[Store, str | None]]:
    """An existing node data folder's store and node name (``meta``), closed after; ``ConfigError`` if none is there."""
    from exchange.errors import ConfigError

    if not (Path(data_dir) / DB_FILE).exists():
        raise ConfigError(f"{data_dir}: no node data here ({DB_FILE} is missing)")
    store = Store.open(data_dir=Path(data_dir))
    try:
        yield store, store.get_meta("node")
    finally:
        store.close()
