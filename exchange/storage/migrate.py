"""Schema creation and upgrades through Alembic (``exchange/storage/migrations/``).

Run once per process that opens a store; under the database's write lock, so
several workers or processes starting together upgrade it exactly once.  A database
already at the newest revision is recognised from its ``alembic_version`` row and the
revision ids of the scripts (read as text), without loading Alembic: every command
that opens a store starts that much sooner.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 7274557


@cache
def revisions() -> tuple[str, ...]:
    """The revision ids of ``migrations/versions``, oldest first, from the scripts' ``revision`` and
    ``down_revision`` assignments (one linear history; tests/unit/test_storage_open.py checks it is Alembic's)."""
    parent: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        found: dict[str, object] = {}
        for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(node, "target", None)
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision") and getattr(node, "value", None) is not None:
                found[target.id] = ast.literal_eval(node.value)  # type: ignore[arg-type]
        if isinstance(found.get("revision"), str):
            parent[found["revision"]] = found.get("down_revision")  # type: ignore[index, assignment]
    order: list[str] = []
    children = {down: rev for rev, down in parent.items()}
    at = children.get(None)
    while at is not None:
        order.append(at)
        at = children.get(at)
    if len(order) != len(parent) or len(children) != len(parent):
        raise RuntimeError(f"{MIGRATIONS / 'versions'}: the revisions do not form one line ({sorted(parent)})")
    return tuple(order)


def at_head(engine: Engine) -> bool:
    """The database records the newest revision (nothing to upgrade)."""
    with engine.connect() as conn:
        if "alembic_version" not in inspect(conn).get_table_names():
            return False
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).fetchall()
    return len(rows) == 1 and rows[0][0] == revisions()[-1]


def upgrade(engine: Engine, target: str = "head") -> None:
    """Bring the database to the newest schema revision (``target``: an earlier one, e.g. to test a migration from it)."""
    if target == "head" and at_head(engine):
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect().execution_options(cti_write=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, target)


def current(engine: Engine) -> str | None:
    """The revision the database is at (``None`` before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
