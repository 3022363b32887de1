"""Shared fixtures: real node processes on 127.0.0.1 ephemeral ports, real data dirs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from exchange.demo.procs import NodeProcess

__all__ = ["NodeProcess", "PASSWORDS", "new_indicator", "provision"]

PASSWORDS = {
    "analyst": "analyst-password-123",
    "rok": "rok-partner-password",
    "us": "us-partner-password",
    "jp": "jp-partner-password",
}


def new_indicator(i: int = 0, *, modified: str = "2024-01-01T00:00:00.000Z", marking: str | None = None, **extra) -> dict:
    obj = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2024-01-01T00:00:00.000Z",
        "modified": modified,
        "name": f"test indicator {i}",
        "pattern": f"[ipv4-addr:value = '198.51.100.{i % 250}']",
        "pattern_type": "stix",
        "valid_from": "2024-01-01T00:00:00Z",
    }
    if marking:
        obj["object_marking_refs"] = [marking]
    obj.update(extra)
    return obj


def provision(node: str, data_dir: Path, accounts: dict[str, str] | None = None, database: str | None = None) -> None:
    """Set the passwords of the node's configured accounts (in-process, real database)."""
    from exchange.node.ops import add_account, open_node

    opened = open_node(node, data_dir=data_dir, database=database)
    try:
        names = [a.name for a in opened.node.config.accounts]
        for name in names:
            password = (accounts or PASSWORDS).get(name)
            if password:
                add_account(opened, name, password, [], [])
    finally:
        opened.close()


# -- order of the files: the long ones first -------------------------------------------------


def _file_rank(item: pytest.Item) -> int:
    """0: the compose test (image build, minutes); 1: the other end-to-end files (real node processes);
    2: integration; 3: the rest (many short tests, which fill in at the end)."""
    if item.get_closest_marker("compose") is not None:
        return 0
    here = Path(__file__).parent
    part = item.path.relative_to(here).parts[0] if item.path.is_relative_to(here) else ""
    return {"e2e": 1, "integration": 2}.get(part, 3)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the long files first, each file's tests together and in their order.

    ``--dist loadfile`` hands each process whole files from a queue in this order
    (``--no-loadscope-reorder`` in pyproject's addopts keeps xdist from reordering it
    by the number of tests per file, most first, which queued the long end-to-end
    files, having few tests each, last: the compose test second to last).
    """
    first: dict[str, int] = {}
    rank: dict[str, int] = {}
    for i, item in enumerate(items):
        path = str(item.path)
        first.setdefault(path, i)
        rank[path] = min(rank.get(path, 3), _file_rank(item))
    items.sort(key=lambda item: (rank[str(item.path)], first[str(item.path)]))


# -- storage backends: every storage-contract test runs on SQLite and on PostgreSQL ----------

PG_ENV = "CTI_EXCHANGE_TEST_PG"
_PG_DEFAULT = "postgresql:///postgres?host=/var/run/postgresql"
_pg_state: dict[str, str | None] = {}


def pg_admin_url() -> tuple[str | None, str]:
    """A PostgreSQL URL allowed to create databases, or ``None`` and why not."""
    if "url" not in _pg_state:
        url = os.environ.get(PG_ENV, _PG_DEFAULT)
        try:
            import psycopg

            with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3, autocommit=True) as conn:
                conn.execute("SELECT 1")
            _pg_state.update(url=url, why="")
        except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL here
            _pg_state.update(url=None, why=f"no PostgreSQL server reachable at {url} ({type(exc).__name__}: {str(exc).strip()[:120]}); "
                                           f"set {PG_ENV} or let .ci/run start one")
    return _pg_state["url"], _pg_state["why"]  # type: ignore[return-value]


def _pg_exec(sql: str) -> None:
    import psycopg

    url, _ = pg_admin_url()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:  # type: ignore[union-attr]
        conn.execute(sql)


@contextmanager
def fresh_database(backend: str, tmp: Path) -> Iterator[str | None]:
    """``None`` (SQLite file under the data dir) or the URL of a new, empty PostgreSQL database."""
    if backend == "sqlite":
        yield None
        return
    url, why = pg_admin_url()
    if url is None:
        pytest.skip(why)
    name = f"ctix_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}"')
    base, _, query = url.partition("?")
    db_url = base.rsplit("/", 1)[0] + "/" + name + (("?" + query) if query else "")
    try:
        yield db_url
    finally:
        _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[str | None]:
    with fresh_database(backend, tmp_path) as url:
        yield url


def node_args(database: str | None) -> tuple[str, ...]:
    return ("--database", database) if database else ()


@pytest.fixture
def us_node(tmp_path: Path, database: str | None) -> Iterator[NodeProcess]:
    data = tmp_path / "us-data"
    provision("us", data, database=database)
    proc = NodeProcess("us", data, extra_args=node_args(database)).start()
    proc.database = database  # type: ignore[attr-defined]
    yield proc
    proc.stop()
