"""Write checked objects into a node's own collection and release them: the one path of ``load`` and ``import``.

The objects are stored in one transaction (all or nothing), then released under policy
to every partner (``exchange.sharing.release``).  A node whose server is running has a
background releaser doing the same work: the two take turns on a node-wide lock
(``Store.try_exclusive``), and what the other releaser does is reported, never
silently left out of the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exchange.node.ops import OpenNode
from exchange.sharing.release import Released, release_all
from exchange.storage.store import AddResult


@dataclass
class LoadOutcome:
    """What a load wrote and what its release did (or left to the node's background releaser)."""

    added: AddResult
    released: dict[str, Released] = field(default_factory=dict)
    left_to_background: bool = False  # another releaser (a running server) held the release lock: it releases these rows
    by_background: dict[str, int] = field(default_factory=dict)  # per partner: loaded rows another releaser had already judged

    def summary(self) -> str:
        """One line on what was released, and what the background releaser does."""
        if self.left_to_background:
            return (f"release of the {self.added.added} new objects left to the node's background releaser "
                    "(a running server is releasing; `cti-exchange report` shows its decisions)")
        parts = []
        for p, r in self.released.items():
            text = f"{p}: {r.shared} shared, {r.redacted} redacted, {r.withheld} withheld"
            if self.by_background.get(p):
                text += f" ({self.by_background[p]} more released by the node's background releaser)"
            parts.append(text)
        return ", ".join(parts)


def load_and_release(opened: OpenNode, collection_id: str, objects: list[dict], *, origin: str = "local:cli") -> LoadOutcome:
    """Store ``objects`` (already checked) in ``collection_id`` in one transaction, then release under policy.

    A re-post of an identical object is a success that writes nothing (TAXII 2.1 s5.5).
    """
    added = opened.store.add_objects(collection_id, objects, origin=origin)
    outcome = LoadOutcome(added=added)
    with opened.store.try_exclusive() as mine:
        if not mine:
            outcome.left_to_background = True
            return outcome
        outcome.released = release_all(opened)
    cfg = opened.node.config
    source = next((c for c in cfg.release_sources if c.id == collection_id), None)
    if source is not None:
        for p in cfg.recipients_of(source):
            judged_here = outcome.released[p].evaluated if p in outcome.released else 0
            if added.added > judged_here:
                outcome.by_background[p] = added.added - judged_here
    return outcome
