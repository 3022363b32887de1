"""The sync agent: pull from and push to one partner, incrementally and resumably.

*Pull* fetches the partner's read collection for this node (``added_after``
plus ``next``, to the end), judges each object by this node's inbound rules,
and stores the accepted ones in this node's inbox for that partner.  The
bookmark (the partner's ``next`` token mid-walk, its last ``date_added`` at
the end) is written in the same transaction as the objects, so a crash at any
point resumes with no gap and no duplicate.

*Push* sends what this node's read collection for the partner holds (what
the outbound policy released) to the partner's inbox, in envelopes of bounded
size, checks each status, and advances its keyset bookmark only after the
partner acknowledged the envelope.  Transient failures are retried with
backoff; 401/403 stop the agent with a clear message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from exchange.errors import ConfigError, PartnerError, PartnerUnavailable
from exchange.node.ops import OpenNode, inbound_rules_for, inbound_signatures, local_copies
from exchange.policy import current_policy
from exchange.policy.inbound import InboundRules
from exchange.policy.markings import tlp_name
from exchange.sharing.attribution import settle
from exchange.sharing.client import PartnerClient
from exchange.sharing.receipts import exchange_receipts
from exchange.sharing.release import release_all
from exchange.sharing.signatures import is_signature_row
from exchange.stix import check_object, object_version, parse_timestamp
from exchange.storage import audit
from exchange.storage.store import Selection, now_us

log = logging.getLogger(__name__)
T = TypeVar("T")

Progress = Callable[[int], None]


@dataclass
class Transfer:
    """What one pull or push moved."""

    direction: str
    partner: str
    received: int = 0  # objects seen on the wire
    stored: int = 0  # new rows written here (pull) or acknowledged there (push)
    rejected: int = 0
    pages: int = 0
    retries: int = 0
    lifecycle: int = 0  # pulled withdrawals (revoked versions) and opinions (one may end a joint attribution)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True)
class Backoff:
    """Retry schedule for transient partner failures."""

    first: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    attempts: int = 8

    def delays(self) -> Iterator[float]:
        delay = self.first
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * self.factor, self.cap)


def with_retries(what: str, fn: Callable[[], T], backoff: Backoff, transfer: Transfer) -> T:
    """Run ``fn``; on ``PartnerUnavailable`` wait and retry; auth errors propagate at once."""
    delays = backoff.delays()
    while True:
        try:
            return fn()
        except PartnerUnavailable as exc:
            delay = next(delays, None)
            if delay is None:
                raise
            transfer.retries += 1
            log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
            time.sleep(delay)


def inbound_rules(opened: OpenNode, partner: str) -> InboundRules:
    """This node's inbound rules for objects coming from ``partner``."""
    cfg = opened.node.config
    if partner not in cfg.partners:
        raise ConfigError(f"node {cfg.node!r} has no partner {partner!r}")
    return inbound_rules_for(cfg, partner)


def _state(opened: OpenNode, key: str) -> dict:
    raw = opened.store.get_state(key)
    return orjson.loads(raw) if raw else {}


def pull(
    opened: OpenNode, partner: str, client: PartnerClient, *, backoff: Backoff = Backoff(), page_size: int = 1000,
    progress: Progress | None = None,
) -> Transfer:
    """Fetch what ``partner`` released to this node since the bookmark; store it in the partner's inbox here."""
    cfg = opened.node.config
    pcfg = cfg.partners.get(partner)
    if pcfg is None or not pcfg.pull_from:
        raise ConfigError(f"node {cfg.node!r}: partner {partner!r} has no pull_from collection")
    inbox = cfg.partner_collection(partner, "partner-inbox")
    rules = inbound_rules(opened, partner)
    key = f"pull:{partner}"
    transfer = Transfer("pull", partner)
    delays = backoff.delays()
    while True:  # restart the page walk from the bookmark after a transient failure
        mark = _state(opened, key)
        pages = client.pages(pcfg.pull_from, added_after=mark.get("added_after"), next_token=mark.get("next"), limit=page_size,
                             prefetch=True)  # the next page travels while this one is judged and stored
        try:
            with closing(pages):  # a walk left on an error waits for its prefetched request before the retry
                for page in pages:
                    _store_page(opened, partner, inbox.id, rules, page, mark, key, transfer)
                    if progress:
                        progress(len(page.objects))
            return transfer
        except PartnerError as exc:
            if not isinstance(exc, PartnerUnavailable):
                if exc.status == 400 and mark.get("next"):
                    # the partner no longer honours our saved cursor (e.g. its data was reset):
                    # restart the walk from the last completed one; re-sent objects are idempotent
                    log.warning("pull from %s: saved 'next' refused (%s); restarting from added_after", partner, exc)
                    with opened.store.transaction() as conn:
                        opened.store.set_state(conn, key, orjson.dumps({"added_after": mark.get("added_after"), "next": None}).decode())
                    continue
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            transfer.retries += 1
            log.warning("pull from %s: %s; retrying in %.1fs", partner, exc, delay)
            time.sleep(delay)


def _store_page(opened: OpenNode, partner: str, inbox_id: str, rules: InboundRules, page: Any, mark: dict, key: str, transfer: Transfer) -> None:
    transfer.pages += 1
    transfer.received += len(page.objects)
    entries: list[audit.Entry] = []
    valid: list[dict] = []
    for obj in page.objects:
        problem = check_object(obj)
        if problem is None:
            valid.append(obj)
        else:
            entries.append(_reject(partner, obj, f"inbound.stix-valid: {problem}"))
    cfg = opened.node.config
    refused = rules.judge(
        valid, opened.store.resolver(inbox_id), local_copies(opened.store, cfg, valid, opened.node.identities),
        inbound_signatures(opened.store, cfg, inbox_id, valid),
    )
    accepted = [o for i, o in enumerate(valid) if i not in refused]
    entries += [_reject(partner, valid[i], reason) for i, reason in refused.items()]
    new_mark = {"added_after": mark.get("added_after"), "next": page.next}
    if not page.more:
        new_mark = {"added_after": page.date_added_last or mark.get("added_after"), "next": None}
    # not flushed to stable storage on commit: after a power loss the page and its cursor roll back together and are fetched again
    with opened.store.transaction(durable=False) as conn:
        result = opened.store.add_in(conn, inbox_id, accepted, origin=f"pull:{partner}")
        bad = {f["id"] for f in result.failures}
        for f in result.failures:
            entries.append(
                audit.Entry(
                    "inbound-reject", partner, f["id"], f.get("version"), "rejected", ("inbound.same-version-differs",), {"reason": f["message"]}
                )
            )
        # one accepted entry per version: a version the partner's push already delivered is not logged again
        now = now_us()
        entries += [
            audit.Entry("pull", partner, obj["id"], object_version(obj), "accepted", (), _latency(obj, now))
            for obj in accepted if obj["id"] not in bad and (obj["id"], object_version(obj)) in result.new
        ]
        audit.append(conn, entries)
        opened.store.set_state(conn, key, orjson.dumps(new_mark).decode())
    mark.clear()
    mark.update(new_mark)
    transfer.stored += result.added
    transfer.lifecycle += sum(1 for o in accepted if o.get("revoked") is True or o.get("type") == "opinion")
    transfer.rejected += len(page.objects) - len(accepted) + len(result.failures)


def _reject(partner: str, obj: Any, reason: str) -> audit.Entry:
    oid = obj.get("id") if isinstance(obj, dict) else None
    version = object_version(obj) if isinstance(obj, dict) else None
    rule = reason.split(":", 1)[0]
    return audit.Entry(
        "inbound-reject", partner, oid if isinstance(oid, str) else None, version if isinstance(version, str) else None,
        "rejected", (rule,), {"reason": reason},
    )


def _latency(obj: dict, now_us: int) -> dict:
    """Seconds from the object's publication (its version timestamp) to its arrival here."""
    try:
        published = parse_timestamp(object_version(obj))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return {}
    return {"latency_s": round((now_us - published) / 1e6, 3), "type": obj.get("type"), "tlp": tlp_name(obj)}


def _push_latency(obj: dict, released_at: int | None, now_us: int) -> dict:
    """Seconds from the version's release here (its row's ``date_added`` in the partner's read collection) to the partner's acknowledgement."""
    out = {"type": obj.get("type"), "tlp": tlp_name(obj)} if obj else {}
    if released_at is not None:
        out["latency_s"] = round((now_us - released_at) / 1e6, 3)
        out["latency_from"] = "release"
    return out


def push(
    opened: OpenNode, partner: str, client: PartnerClient, *, backoff: Backoff = Backoff(), envelope_size: int = 500,
    progress: Progress | None = None,
) -> Transfer:
    """Send the objects released to ``partner`` (its read collection here) to its inbox there."""
    cfg = opened.node.config
    pcfg = cfg.partners.get(partner)
    if pcfg is None or not pcfg.push_to:
        raise ConfigError(f"node {cfg.node!r}: partner {partner!r} has no push_to collection")
    source = cfg.partner_collection(partner, "partner-read")
    key = f"push:{partner}"
    transfer = Transfer("push", partner)
    sel = Selection(source.id, versions=("all",))
    plain = client.url.lower().startswith("http://")  # IEP encrypt_in_transit 'must' objects never go over it
    while True:
        mark = _state(opened, key)
        after = tuple(mark["after"]) if mark.get("after") else None
        # envelope_size counts content: the signatures ride along (at most one per version, interleaved before it)
        rows, _more = opened.store.page(sel, limit=2 * envelope_size, after=after)  # type: ignore[arg-type]
        if not rows:
            return transfer
        rows = _envelope_rows(rows, envelope_size)
        objs = [orjson.loads(r.body) for r in rows if not (plain and r.encrypt_in_transit)]
        status = _NOTHING
        if objs:  # this envelope's objs bound as a default argument (with_retries calls it within this iteration only)
            status = with_retries(f"push to {partner}", lambda objs=objs: _push_final(client, pcfg.push_to, objs), backoff, transfer)
        transfer.pages += 1
        transfer.received += len(objs)
        transfer.stored += status["success_count"]
        transfer.rejected += status["failure_count"]
        now = now_us()
        by_id = {o["id"]: o for o in objs}
        released = {(r.stix_id, r.version): r.date_added for r in rows}
        entries = [
            audit.Entry("push", partner, s.get("id"), s.get("version"), "acknowledged", (),
                        _push_latency(by_id.get(s.get("id"), {}), released.get((s.get("id"), s.get("version"))), now))
            for s in status["successes"]
        ]
        entries += [
            audit.Entry(
                "push-reject", partner, f.get("id"), f.get("version"), "rejected",
                (str(f.get("message", "")).split(":", 1)[0],), {"reason": f.get("message", "")},
            )
            for f in status["failures"]
        ]
        entries += _transport_withheld(partner, client.url, [r for r in rows if plain and r.encrypt_in_transit])
        with opened.store.transaction(durable=False) as conn:  # lost only to a power loss: then re-sent, idempotently
            audit.append(conn, entries)
            opened.store.set_state(conn, key, orjson.dumps({"after": [rows[-1].date_added, rows[-1].seq]}).decode())
        if progress:
            progress(len(objs))


def _envelope_rows(rows: list, size: int) -> list:
    """``rows`` up to the ``size``-th content row (signature rows not counted: each comes just before what it signs)."""
    content = 0
    for i, r in enumerate(rows):
        if not is_signature_row(r.stix_id):
            content += 1
            if content == size:
                return rows[: i + 1]
    return rows


_NOTHING = {"success_count": 0, "failure_count": 0, "successes": [], "failures": []}


def _transport_withheld(partner: str, url: str, rows: list) -> list[audit.Entry]:
    """Audit entries for object versions not pushed because the partner URL is plain HTTP."""
    if not rows:
        return []
    clause = current_policy().one("iep-encrypted-transport")
    detail = {"reason": f"IEP encrypt_in_transit 'must': not pushed over plain HTTP to {url}", "transport": "http", "endpoint": "push"}
    return [
        audit.Entry("transport-withhold", partner, r.stix_id, r.version, "withhold", (clause.id,) if clause else (), detail)
        for r in rows
    ]


def _push_final(client: PartnerClient, ref: str, objs: list[dict]) -> dict:
    status = client.push(ref, objs)
    if status["status"] != "complete" or status["pending_count"]:
        raise PartnerUnavailable(f"status {status['id']} still pending after the poll timeout")
    return status


def run_cycle(
    opened: OpenNode,
    partner: str,
    client: PartnerClient,
    *,
    direction: str = "both",
    backoff: Backoff = Backoff(),
    envelope_size: int = 500,
    page_size: int = 1000,
    show_progress: bool = False,
) -> dict:
    """One sync cycle: settle joint attributions and release under policy, pull, settle again, push.

    Onward sharing of what was pulled is the node server's background releaser's job
    (it polls for rows written by this agent); the next cycle's release also catches up.
    """
    summary: dict = {}
    with _progress(show_progress) as bar:
        settle(opened)
        if direction in ("both", "push"):  # what this cycle pushes must be released first; a pull-only agent leaves it to the server
            released = release_all(opened)
            summary["released"] = {p: r.shared + r.redacted for p, r in released.items()}
        if direction in ("both", "pull"):
            task = bar(f"pull from {partner}")
            t = pull(opened, partner, client, backoff=backoff, page_size=page_size, progress=task)
            summary["pulled"] = {"received": t.received, "stored": t.stored, "rejected": t.rejected, "retries": t.retries}
            if t.stored:
                joint = settle(opened)  # a partner's opinion may have made an attribution joint
                if joint:
                    summary["joint"] = len(joint)
                if joint or t.lifecycle:
                    # joint products, and withdrawals (a revoked version, a dissent) go onward in this cycle
                    withdrawn = {p: r.withdrawn for p, r in release_all(opened).items() if r.withdrawn}
                    if withdrawn:
                        summary["withdrawn"] = withdrawn
                # what arrived goes onward (e.g. to Japan) through the node's own releaser, which
                # notices the new rows; keeping it off this path lets the agent pull at full speed
        if direction in ("both", "push"):
            task = bar(f"push to {partner}")
            t = push(opened, partner, client, backoff=backoff, envelope_size=envelope_size, progress=task)
            summary["pushed"] = {"sent": t.received, "acknowledged": t.stored, "rejected": t.rejected, "retries": t.retries}
        if direction == "both":  # receipts both ways and the signed audit heads (exchange.sharing.receipts)
            summary["receipts"] = with_retries(f"receipts with {partner}", lambda: exchange_receipts(opened, partner, client), backoff,
                                               Transfer("receipts", partner))
    return summary


def describe_cycle(summary: dict) -> str:
    """One line for one sync cycle: what it pulled, pushed and released, or ``nothing new``."""
    parts = []
    pulled = summary.get("pulled")
    if pulled and (pulled["received"] or pulled["rejected"]):
        refused = f", {pulled['rejected']} refused" if pulled["rejected"] else ""
        parts.append(f"pulled {pulled['stored']} new of {pulled['received']} received{refused}")
    pushed = summary.get("pushed")
    if pushed and (pushed["sent"] or pushed["rejected"]):
        rejected = f", {pushed['rejected']} rejected" if pushed["rejected"] else ""
        parts.append(f"pushed {pushed['sent']}, {pushed['acknowledged']} acknowledged{rejected}")
    released = {p: n for p, n in (summary.get("released") or {}).items() if n}
    if released:
        parts.append("released " + ", ".join(f"{n} to {p}" for p, n in released.items()))
    if summary.get("joint"):
        parts.append(f"{summary['joint']} attributions became joint")
    retries = sum((summary.get(k) or {}).get("retries", 0) for k in ("pulled", "pushed"))
    text = "; ".join(parts) or "nothing new"
    return text + (f" ({retries} retries)" if retries else "")


def record_cycle(opened: OpenNode, partner: str) -> None:
    """Note that a sync cycle with ``partner`` completed now (``sync-cycle:<partner>``; the node's ``/metrics`` shows the lag)."""
    with opened.store.transaction(durable=False) as conn:
        opened.store.set_state(conn, f"sync-cycle:{partner}", orjson.dumps({"at": time.time()}).decode())


def interrupted(opened: OpenNode, partner: str) -> str:
    """What a stopped agent tells (Ctrl-C): where the next run resumes, from the bookmarks it committed."""
    from sqlalchemy import func, select, tuple_

    from exchange.storage.schema import object_rows as rows

    cfg = opened.node.config
    said = []
    store = opened.store
    read = cfg.partner_collection(partner, "partner-read") if cfg.partners[partner].push_to else None
    if read is not None:
        mark = _state(opened, f"push:{partner}").get("after")
        with store.engine.connect() as conn:
            where = [store.where_collection(conn, read.id, on=rows)]
            total = conn.execute(select(func.count()).select_from(rows).where(*where)).scalar() or 0
            done = 0 if not mark else conn.execute(
                select(func.count()).select_from(rows).where(*where, tuple_(rows.c.date_added, rows.c.seq) <= tuple(mark))
            ).scalar() or 0
        said.append(f"push resumes from object {done + 1} of those released to {partner}"
                    + (f" ({total - done} waiting)" if done < total else f" (all {total} sent so far)"))
    if cfg.partners[partner].pull_from:
        inbox = cfg.partner_collection(partner, "partner-inbox")
        said.append(f"pull resumes after the {store.count(inbox.id, all_versions=True)} object versions stored from {partner}")
    return "stopped; " + "; ".join(said) + " on next run"


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str], Progress | None]]:
    """A rich progress display on a terminal; a no-op elsewhere."""
    if not enabled:
        yield lambda _label: None
        return
    from rich.progress import Progress as Bar
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    with Bar(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed} objects"), TimeElapsedColumn(), transient=False) as bar:

        def make(label: str) -> Progress:
            task = bar.add_task(label, total=None)
            return lambda n: bar.advance(task, n)

        yield make


__all__ = ["Backoff", "Transfer", "describe_cycle", "interrupted", "pull", "record_cycle", "push", "run_cycle", "with_retries"]
