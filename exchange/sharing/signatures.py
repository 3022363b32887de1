"""Origin signatures on the way out: what a release writes beside the objects it releases.

A version this node originates (its row's origin is local) or redacts is signed by this node
(``exchange.node.signing``); a redacted copy names the version it came from (``derived_from``).
Content that arrived from a partner (its row's origin is that partner's push or our pull) is
relayed with the signature its origin gave it, found in the inbox it came through, never
re-signed as ours.  A release writes one batch signature per up to 128 versions (extension 1.2.0:
``NodeSigner.sign_together``); a relayed batch signature is the origin's, unchanged, even when only some
of its members are relayed (a member verifies with it alone).  Signatures are written just before the
first object they sign (``interleaved``), so a recipient paging in ``date_added`` order always holds a
signature when the object arrives: in the same page or envelope, or in an earlier one, where the
recipient's store finds it by the version's member key (``Store.signatures_covering``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from exchange.node.signing import covered, extension_definition, is_signature, known_signers, load_node_signer, member_of, signature_id
from exchange.policy.markings import OFFICIAL_OBJECTS, SIGNATURE_EXTENSION_ID, SIGNATURE_TYPE
from exchange.stix import object_version
from exchange.storage.store import Store

__all__ = ["interleaved", "is_partner_origin", "is_signature_row", "release_signatures", "without_signature_rows", "without_signatures"]

_PARTNER_KINDS = frozenset({"push", "pull", "partner"})
_has_extension: set[tuple[str, str]] = set()


def is_partner_origin(origin: str | None, source_role: str) -> bool:
    """Whether a stored version came from a partner: by its recorded origin, else (older rows) by its collection's role."""
    if origin is None:
        return source_role == "partner-inbox"
    return origin.split(":", 1)[0] in _PARTNER_KINDS


def without_signatures(rows: Sequence[Any], objs: Sequence[dict]) -> tuple[list[Any], list[dict]]:
    """The rows and objects of a batch that the policy judges: signature objects (and their extension definition)
    travel only beside what they sign."""
    if not any(_infrastructure(o) for o in objs):
        return list(rows), list(objs)
    kept = [(r, o) for r, o in zip(rows, objs, strict=True) if not _infrastructure(o)]
    return [r for r, _ in kept], [o for _, o in kept]


def without_signature_rows(rows: Sequence[Any]) -> tuple[list[Any], list[dict]]:
    """``without_signatures`` on stored rows, deciding by the row's id (a STIX id names its type), so the signature
    rows of a batch are never parsed: the rows and parsed objects the policy judges."""
    kept = [r for r in rows if not is_signature_row(r.stix_id)]
    return without_signatures(kept, [orjson.loads(r.body) for r in kept])


_SIGNATURE_PREFIX = SIGNATURE_TYPE + "--"


def interleaved(signatures: Sequence[dict], objs: Sequence[dict]) -> list[dict]:
    """``objs`` in order, each just after the signatures of its version not written yet (and the extension definition
    first): one write in which a recipient paging in ``date_added`` order, or an envelope cut anywhere, finds a
    version's signature in the same page as the version or in an earlier one.  A batch signature comes once, before
    the first of its members; a signature none of ``objs`` needs comes first."""
    if not signatures:
        return list(objs)
    by_member: dict[str, list[int]] = {}
    head: list[dict] = []
    for i, sig in enumerate(signatures):
        if is_signature(sig):
            for key in dict.fromkeys(covered(sig)):
                by_member.setdefault(key, []).append(i)
        else:
            head.append(sig)  # the extension definition
    body: list[dict] = []
    written: set[int] = set()
    for obj in objs:
        key = member_of(obj)
        for i in by_member.get(key, ()) if key is not None else ():
            if i not in written:
                written.add(i)
                body.append(signatures[i])
        body.append(obj)
    rest = [sig for i, sig in enumerate(signatures) if is_signature(sig) and i not in written]
    return [*head, *rest, *body]


def is_signature_row(stix_id: str) -> bool:
    """Whether a stored row is a signature or the signature extension definition (by its id: a STIX id names its type)."""
    return stix_id.startswith(_SIGNATURE_PREFIX) or stix_id == SIGNATURE_EXTENSION_ID


def _infrastructure(obj: dict) -> bool:
    return is_signature(obj) or obj.get("id") == SIGNATURE_EXTENSION_ID


def release_signatures(
    opened: Any, target_id: str, source: Any, decisions: Sequence[Any], travel: Sequence[dict], relayed: Callable[[str, str], bool],
    leaves: dict[int, tuple[dict, bytes]] | None = None,
) -> list[dict]:
    """The signature objects to write into ``target_id`` with this batch (and the extension definition, the first time).

    ``relayed(id, version)``: whether that version came from a partner (its row's origin); ``leaves``: the Merkle leaves
    of this source batch's objects, shared by its recipients (``NodeSigner.sign_together``).
    """
    cfg = opened.node.config
    signer = load_node_signer(cfg)
    if signer is None:
        return []
    mine: list[tuple[dict, dict | None]] = []  # signed together: one Ed25519 signature over the batch's Merkle root
    relay: list[dict] = []
    for d in decisions:
        obj = d.shared
        if obj is None or object_version(obj) is None:
            continue
        if d.decision == "redact":
            mine.append((obj, {"id": d.id, "modified": d.version}))
        elif relayed(d.id, d.version):
            relay.append(obj)
        else:
            mine.append((obj, None))
    for obj in travel:
        if obj["id"] in OFFICIAL_OBJECTS or object_version(obj) is None:
            continue
        ours = obj["id"] == cfg.identity or obj.get("created_by_ref") == cfg.identity
        if source.role == "partner-inbox" and not ours:
            relay.append(obj)  # a companion of relayed content comes from that partner's inbox: keep its origin's word
        else:
            mine.append((obj, None))
    # not canonicalisable (RFC 8785: e.g. an integer beyond 2**53): left unsigned by sign_batch
    out: list[dict] = signer.sign_together(mine, leaves=leaves) if mine else []
    if relay:
        out += origin_signatures(opened.store, source.id, relay, known_signers(cfg))
    if out and not _extension_present(opened.store, target_id):
        out.insert(0, extension_definition())
    return out


def origin_signatures(store: Store, collection_id: str, objs: Sequence[dict], signers: Sequence[str]) -> list[dict]:
    """The stored signatures of these versions in ``collection_id``: the batch signatures covering any of them, as
    stored (the origin's word, with its other members), and the per-version ones (by any of ``signers`` or the creator)."""
    members = {key: o for o in objs if (key := member_of(o)) is not None}
    out = store.signatures_covering(collection_id, members)
    batch = {key for sig in out for key in covered(sig)}
    wanted: dict[str, tuple[str, str]] = {}  # per-version signatures (written before 1.2.0) of the versions still unsigned
    for key, o in members.items():
        if key in batch:
            continue
        version = object_version(o)
        for who in dict.fromkeys([*signers, o.get("created_by_ref")]):
            if isinstance(who, str):
                wanted[signature_id(o["id"], version, who)] = (o["id"], version)  # type: ignore[arg-type]
    if wanted:
        found = store.latest_many([collection_id], list(wanted))
        out += [s for s in found if (s.get("object_ref"), s.get("object_modified")) == wanted.get(s["id"])]
    return out


def _extension_present(store: Store, target_id: str) -> bool:
    key = (store.url, target_id)
    if key in _has_extension:
        return True
    ext = extension_definition()
    if store.versions_of(target_id, [(SIGNATURE_EXTENSION_ID, ext["modified"])]):
        _has_extension.add(key)
        return True
    return False


def own_signatures(opened: Any, target_id: str, objs: Sequence[dict]) -> list[dict]:
    """Signatures by this node over versions it writes itself outside a release decision (withdrawals,
    withdrawal notes, re-issued copies: ``exchange.sharing.lifecycle``), with the extension definition the first time."""
    signer = load_node_signer(opened.node.config)
    if signer is None:
        return []
    # one signature for the write (a Merkle root); what RFC 8785 cannot canonicalise stays unsigned
    out = signer.sign_together([(obj, None) for obj in objs if object_version(obj) is not None])
    if out and not _extension_present(opened.store, target_id):
        out.insert(0, extension_definition())
    return out


def signed(opened: Any, target_id: str, objs: Sequence[dict]) -> list[dict]:
    """``objs`` preceded by this node's signatures over them (what ``own_signatures`` makes): ready for one add."""
    return [*own_signatures(opened, target_id, objs), *objs]
