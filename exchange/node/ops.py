"""Operations on one node: open its store, apply its configuration, manage accounts.

Used by the CLI and by the server factory; no HTTP here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from exchange.config import LoadedNode, load_node
from exchange.errors import ConfigError, StorageError
from exchange.node.accounts import Account, hash_password
from exchange.storage.store import Login, Store

log = logging.getLogger(__name__)


@dataclass
class OpenNode:
    """A node's validated configuration and its open store."""

    node: LoadedNode
    store: Store

    def close(self) -> None:
        self.store.close()


def open_node(name: str, data_dir: Path | None = None, database: str | None = None, *, wait: float = 0.0) -> OpenNode:
    """Load ``name``'s config, open (or create) its store, and apply the config's account grants.

    ``wait``: seconds to keep retrying while a database server is not reachable yet
    (e.g. starting alongside the node); 0 fails at once.
    """
    node = load_node(name)
    deadline = time.monotonic() + wait
    while True:
        try:
            store = Store.open(data_dir=data_dir, database=database)
            break
        except StorageError as exc:
            if database is None or time.monotonic() >= deadline:
                raise
            log.warning("database not reachable yet (%s); retrying", exc)
            time.sleep(1.0)
    store.bind_node(node.name)
    apply_config_accounts(node, store)
    return OpenNode(node=node, store=store)


def apply_config_accounts(node: LoadedNode, store: Store) -> None:
    """Declarative grants from ``node.yaml`` (source ``config``) replace the previous config grants."""
    cfg = node.config
    for acct in cfg.accounts:
        store.upsert_account(
            acct.name,
            partner=acct.partner,
            read=[cfg.collection(ref).id for ref in acct.read],
            write=[cfg.collection(ref).id for ref in acct.write],
            source="config",
        )


def add_account(
    opened: OpenNode,
    name: str,
    password: str | None,
    read: list[str],
    write: list[str],
    partner: str | None = None,
) -> None:
    """Create or update an account (``cti-exchange account add``): password hash and CLI grants."""
    cfg = opened.node.config
    if partner is not None and partner not in cfg.partners:
        raise ConfigError(f"node {cfg.node!r} has no partner {partner!r} (known: {', '.join(cfg.partners) or 'none'})")
    read_ids = [cfg.collection(ref).id for ref in read]
    write_ids = [cfg.collection(ref).id for ref in write]
    grants_given = bool(read or write)
    opened.store.upsert_account(
        name,
        password_hash=hash_password(password) if password is not None else None,
        partner=partner,
        read=read_ids if grants_given else None,
        write=write_ids if grants_given else None,
        source="cli",
    )


def load_account(store: Store, name: str) -> tuple[str | None, Account] | None:
    """``(password_hash, Account)`` for ``name``, or ``None`` if there is no such account."""
    found = store.login(name)
    return (found.password_hash, account_of(name, found)) if found.exists else None


def account_of(name: str, found: Login) -> Account:
    """The ``Account`` of what ``Store.login`` read for ``name``."""
    return Account(name=name, readable=found.readable, writable=found.writable, partner=found.partner)
