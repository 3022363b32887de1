"""Operations on one node: open its store, apply its configuration, manage accounts.

Used by the CLI and by the server factory; no HTTP here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exchange.config import LoadedNode, load_node, write_to_partner_read
from exchange.errors import ConfigError, StorageError
from exchange.node.accounts import Account, hash_password
from exchange.node.audit_key import signer_for
from exchange.policy.inbound import InboundRules
from exchange.stix import object_version
from exchange.storage import audit
from exchange.storage.integrity import DatabaseRefused
from exchange.storage.store import Login, Store

log = logging.getLogger(__name__)


@dataclass
class OpenNode:
    """A node's validated configuration and its open store."""

    node: LoadedNode
    store: Store

    def close(self) -> None:
        self.store.close()


def open_node(name: str, data_dir: Path | None = None, database: str | None = None, *, wait: float = 0.0, init: bool = False) -> OpenNode:
    """Load ``name``'s config, open (or create) its store, and apply the config's account grants.

    ``wait``: seconds to keep retrying while a database server is not reachable yet
    (e.g. starting alongside the node); 0 fails at once.  A database that is checked
    and refused (damaged, foreign, unknown schema: ``DatabaseRefused``) fails at once.
    ``init``: also make a node database of an existing empty or foreign one (``--init``).
    """
    node = load_node(name)
    deadline = time.monotonic() + wait
    while True:
        try:
            store = Store.open(data_dir=data_dir, database=database, init=init)
            break
        except DatabaseRefused:
            raise
        except StorageError as exc:
            if database is None or time.monotonic() >= deadline:
                raise
            log.warning("database not reachable yet (%s); retrying", exc)
            time.sleep(1.0)
    store.bind_node(node.name)
    audit.use_signer(store, signer_for(data_dir))  # every head this process writes is signed with the node key
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
    for ref in write:
        if cfg.collection(ref).role == "partner-read":
            raise ConfigError(write_to_partner_read(name, cfg.collection(ref)))
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


def inbound_rules_for(config: Any, partner: str) -> InboundRules:
    """The inbound rules of this node for ``partner``: it speaks in its own name only (``exchange.policy.inbound``)."""
    from exchange.node.signing import signing_parties

    others = {config.identity, *(p.identity for name, p in config.partners.items() if name != partner)}
    return InboundRules(
        config=config.inbound, partner_identity=config.partners[partner].identity, joint_identity=config.joint_identity,
        other_parties=frozenset(others), node_identity=config.identity, signing_parties=signing_parties(config),
    )


def inbound_signatures(store: Store, config: Any, inbox_id: str, objs: list[dict]) -> Any:
    """``signatures`` for ``InboundRules.judge``: each object's origin-signature state, from the batch and the inbox."""
    from exchange.node.signing import batch_states, known_signers, node_verifier

    def stored(ids: list[str]) -> list[dict]:
        return store.latest_many([inbox_id], ids)

    def covering(members: list[str]) -> list[dict]:
        return store.signatures_covering(inbox_id, members)

    return batch_states(node_verifier(config), objs, stored, known_signers(config), covering)


def local_copies(store: Store, config: Any, objs: list[dict], declared: Mapping[str, dict] | None = None) -> Callable[[dict], bool]:
    """``held_locally`` for ``InboundRules.judge``: whether a public source's object or an identity is exactly a version held here.

    Held here: loaded into one of the node's own collections (what its analysts loaded; never an inbox:
    one query per batch), or ``declared``: the identities of the node's configuration
    (``identities.json``, held by every party), so an exact copy a partner relays is accepted whether
    or not this node's analysts loaded it yet.
    """
    public = set(config.inbound.public_sources)
    keys = [
        (o["id"], object_version(o)) for o in objs
        if isinstance(o.get("id"), str) and (o.get("created_by_ref") in public or o.get("type") == "identity")
    ]
    if not keys:
        return lambda _obj: False
    held: dict[tuple[str, str | None], dict] = {
        (o["id"], object_version(o)): o for o in (declared or {}).values() if isinstance(o.get("id"), str)
    }
    for coll in config.collections:
        if coll.role == "own":
            held.update({(o["id"], object_version(o)): o for o in store.versions_of(coll.id, keys)})

    def held_locally(obj: dict) -> bool:
        return held.get((obj.get("id"), object_version(obj))) == obj

    return held_locally
