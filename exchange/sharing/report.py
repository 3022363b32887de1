"""The commitment in practice: a summary of what the audit logs recorded.

``Tally`` folds audit entries one at a time (pure over them), so the node's web
page (``exchange.sharing.ui``) keeps one per process and reads only the entries
appended since its last look; ``build_report`` folds one or more nodes' whole
logs.  Per direction (sender -> recipient) it counts object *versions* (each
release decision is about one version) and *objects* (the decision on each
object's newest decided version) shared, redacted and withheld, every decision
once under its deciding clause (so clause counts add up to the totals; the
clauses a decision also applied are counted apart), by TLP level (public-source
content named as such, with its clause) and by STIX type, what was withdrawn,
what arrived or was refused on arrival, and the time from release at the
sender to arrival at the partner.  With both nodes' logs that time is measured
from the sender's release decision to the receiver's acceptance; with one log,
from the object's version timestamp (its publication) to acceptance.

``render_terminal`` prints rich tables; the HTML report is
``exchange.sharing.ui.render.render_report``, the same Jinja templates and
server-side SVG charts as the node's ``/ui/`` pages, as one self-contained page.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from exchange.storage import audit
from exchange.storage.store import node_data

DECISIONS = ("share", "redact", "withhold")
TLP_ORDER = ("TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED")
ARRIVALS = ("pull", "inbound-accept")
WITHDRAW = "withdraw"
#: the same columns in the terminal, the HTML report and the web page (key in ``summary_row``, label)
SUMMARY_COLUMNS = (
    ("shared", "shared"), ("redacted", "redacted"), ("withheld", "withheld"), ("withdrawn", "withdrawn"),
    ("arrived", "arrived"), ("rejected", "rejected on arrival"), ("in_transit", "kept off plain HTTP"),
)
HOUR_US = 3_600_000_000
CLAUSES_NOTE = (
    "each decision is counted once, under its deciding clause (the release or withholding clause), so these add up to "
    "the versions decided; a redaction also names the clauses that removed fields, counted under 'also applied'"
)


def public_source_clauses() -> frozenset[str]:
    """The ids of the policy's public-source clauses (content that is public, e.g. MITRE ATT&CK, carries no TLP)."""
    from exchange.policy import current_policy

    try:
        return frozenset(c.id for c in current_policy().clauses_of("public-source"))
    except Exception:  # noqa: BLE001 - a report over old logs still works without the policy files
        return frozenset({"scf.public-sources"})


def read_logs(data_dirs: Iterable[Path]) -> dict[str, list[dict]]:
    """``{node name: audit entries}`` for each data dir."""
    logs: dict[str, list[dict]] = {}
    for d in data_dirs:
        with node_data(d) as (store, node):
            logs[node or Path(d).name] = list(audit.entries(store))
    return logs


def _pct(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


class Tally:
    """Audit entries folded into counts; ``add`` one entry at a time, ``summary()`` at any point.

    Keys are ``(node, partner, object id, version)``: a node's *latest* decision on each version
    for each partner counts (a version deferred, then released, counts as released once). The
    per-direction counts are kept up to date as entries arrive (a changed decision moves its
    version from one count to another), so ``summary()`` costs the size of the tables it returns,
    not the length of the log.
    """

    def __init__(self, public_clauses: Iterable[str] | None = None) -> None:
        self.public = frozenset(public_clauses if public_clauses is not None else public_source_clauses())
        self.latest: dict[tuple, tuple[str, str, str, tuple[str, ...]]] = {}  # -> (decision, tlp label, type, clauses)
        self.newest: dict[tuple, tuple[str, str]] = {}  # (node, partner, object id) -> (newest decided version, its decision)
        self.released_at: dict[tuple, int] = {}
        self.arrivals: set[tuple] = set()  # (sender, node, id, version) that arrived
        self.directions: dict[str, dict[str, Any]] = defaultdict(_empty)
        self.events: Counter = Counter()  # (node, event, partner) -> entries: every event type, known or not
        self.last_at: dict[tuple, int] = {}  # (node, event, partner) -> newest entry time
        self.timeline: Counter = Counter()  # (hour, series) -> object versions
        self.nodes: set[str] = set()
        self.entries = 0
        self.refused: set[tuple] = set()  # (sender, recipient, id, version) refused on arrival
        self.receipts_seen: set[tuple] = set()
        self.conflicts: Counter = Counter()  # node -> versions refused as conflicting with a stored version

    def tlp_label(self, tlp: str | None, clauses: Iterable[str]) -> str:
        """The TLP level; unmarked content released as a public source is labelled so, with its clause."""
        if tlp and tlp != "none":
            return tlp
        public = [c for c in clauses if c in self.public]
        return f"public source ({public[0]})" if public else "none (unmarked)"

    def add(self, node: str, e: dict) -> None:
        """Fold one audit entry of ``node``'s log (``audit.entries`` shape)."""
        self.nodes.add(node)
        self.entries += 1
        event, partner, at = e["event"], e["partner"], e["at"]
        key = (node, event, partner)
        self.events[key] += 1
        if at > self.last_at.get(key, 0):
            self.last_at[key] = at
        if event in DECISIONS:
            self._decision(node, e)
        elif event in ARRIVALS:
            self._arrival(node, e)
        elif event in ("inbound-reject", "push-reject") or (event == "receipt" and e["decision"] == "refused"):
            self._refusal(node, e)
            if event == "receipt":
                self._receipt(node, e)
        elif event == "receipt":
            self._receipt(node, e)
        elif event == "conflict":
            self.conflicts[node] += 1
        elif event == "transport-withhold" and partner:
            # released, but not served or pushed to the partner over plain HTTP (IEP encrypt_in_transit 'must')
            self.directions[f"{node}->{partner}"]["in_transit"].add((e["object_id"], e["version"]))
        elif event == WITHDRAW:
            self.directions[f"{node}->{partner}" if partner else f"{node}->*"]["withdrawn"].add((e["object_id"], e["version"]))
            self.timeline[(at // HOUR_US, "withdrawn")] += 1

    def _refusal(self, node: str, e: dict) -> None:
        """A version refused on arrival, counted once per direction whoever logged it (the receiver's
        inbound check, the sender's push status, the receiver's receipt say the same thing)."""
        event, partner = e["event"], e["partner"]
        sender = partner if event == "inbound-reject" else node
        recipient = node if event == "inbound-reject" else partner
        key = (sender, recipient, e["object_id"], e["version"])
        if e["object_id"] is not None and key in self.refused:
            return
        self.refused.add(key)
        self.directions[f"{sender}->{recipient}"]["rejected"][e["clauses"][0] if e["clauses"] else "?"] += 1
        self.timeline[(e["at"] // HOUR_US, "refused on arrival")] += 1

    def _receipt(self, node: str, e: dict) -> None:
        """What the partner says it did with a version ``node`` sent it (``exchange.sharing.receipts``), once per decision."""
        key = (node, e["partner"], e["object_id"], e["version"], e["decision"])
        if key in self.receipts_seen:
            return
        self.receipts_seen.add(key)
        r = self.directions[f"{node}->{e['partner']}"]["receipts"]
        r[e["decision"]] += 1
        if e["decision"] == "refused":
            r["refused by " + (e["clauses"][0] if e["clauses"] else "?")] += 1

    def _decision(self, node: str, e: dict) -> None:
        partner = e["partner"]
        key = (node, partner, e["object_id"], e["version"])
        clauses = tuple(e["clauses"])
        detail = e["detail"]
        decision = e["decision"] or e["event"]
        now = (decision, self.tlp_label(detail.get("tlp"), clauses), detail.get("type", "?"), clauses)
        d = self.directions[f"{node}->{partner}"]
        old = self.latest.get(key)
        if old is not None:
            _count(d, old, -1)
        _count(d, now, +1)
        self.latest[key] = now
        okey = (node, partner, e["object_id"])
        version = e["version"] or ""
        held = self.newest.get(okey)
        if held is None or version >= held[0]:
            if held is not None:
                d["objects"][held[1]] -= 1
            d["objects"][decision] += 1
            self.newest[okey] = (version, decision)
        if decision != "withhold" and key not in self.released_at:
            self.timeline[(e["at"] // HOUR_US, "released")] += 1
            self.released_at[key] = e["at"]

    def _arrival(self, node: str, e: dict) -> None:
        """What ``node`` accepted from a partner (pulled, or pushed into its inbox); a version that came both ways counts once.

        Timed from the sender's release when its log was folded before (``build_report`` folds every
        log's decisions first), else from the version's publication (``latency_s``).
        """
        key = (e["partner"], node, e["object_id"], e["version"])
        if key in self.arrivals:
            return
        self.arrivals.add(key)
        self.timeline[(e["at"] // HOUR_US, "arrived")] += 1
        d = self.directions[f"{e['partner']}->{node}"]
        d["arrived"] += 1
        released = self.released_at.get(key)
        if released is not None:
            seconds, basis = (e["at"] - released) / 1e6, "release-to-arrival"
        elif "latency_s" in e["detail"]:
            seconds, basis = e["detail"]["latency_s"], "publication-to-arrival"
        else:
            return
        d["latency"][e["detail"].get("tlp", "none")].append(max(seconds, 0.0))
        d["latency_basis"].add(basis)

    # -- the summary ---------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The report: ``{"nodes", "directions": {"us->rok": {...}}, "clauses_note"}``."""
        return {
            "nodes": sorted(self.nodes),
            "directions": {name: _summarise(d) for name, d in sorted(self.directions.items())},
            "clauses_note": CLAUSES_NOTE,
            "conflicts": dict(sorted(self.conflicts.items())),
        }

    def timeline_rows(self, *, max_hours: int = 48) -> tuple[str, list[tuple[int, dict[str, int]]]]:
        """``(unit, [(bucket start in µs, {series: versions})])``: per hour over a span up to ``max_hours``, else per day."""
        if not self.timeline:
            return "hour", []
        hours = [h for h, _s in self.timeline]
        span = max(hours) - min(hours) + 1
        step, unit = (1, "hour") if span <= max_hours else (24, "day")
        buckets: dict[int, Counter] = defaultdict(Counter)
        for (hour, series), n in self.timeline.items():
            buckets[hour // step * step][series] += n
        first, last = min(buckets), max(buckets)
        if (last - first) // step > 400:  # a very long history: the newest 400 buckets
            first = last - 400 * step
        return unit, [(b * HOUR_US, dict(buckets.get(b, {}))) for b in range(first, last + 1, step)]


def _count(d: dict[str, Any], decided: tuple[str, str, str, tuple[str, ...]], n: int) -> None:
    """Add (``n`` = 1) or take back (-1) one version's decision in a direction's counts."""
    decision, tlp, typ, clauses = decided
    d["versions"][decision] += n
    d["by_tlp"][tlp][decision] += n
    d["by_type"][typ][decision] += n
    d["clauses"][f"{decision}: {clauses[0] if clauses else '?'}"] += n
    for c in clauses[1:]:
        d["also_applied"][f"{decision}: {c}"] += n


def build_report(logs: dict[str, list[dict]], public_clauses: Iterable[str] | None = None) -> dict[str, Any]:
    """Counts and timings per direction (sender -> recipient) from audit entries."""
    return build_tally(logs, public_clauses).summary()


def build_tally(logs: dict[str, list[dict]], public_clauses: Iterable[str] | None = None) -> Tally:
    """Every log folded into one ``Tally``: decisions of every log first, then the rest (an arrival is
    timed from the sender's release whichever log was read first)."""
    tally = Tally(public_clauses)
    for node, entries in logs.items():
        for e in entries:
            if e["event"] in DECISIONS:
                tally.add(node, e)
    for node, entries in logs.items():
        for e in entries:
            if e["event"] not in DECISIONS:
                tally.add(node, e)
    return tally


def _positive(counts: Counter) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v > 0}


def _summarise(d: dict[str, Any]) -> dict[str, Any]:
    """One direction's tallies as the report shows them (TLP levels in TLP order, clauses most common first)."""
    lat = {}
    for tlp, values in d["latency"].items():
        ordered = sorted(values)
        lat[tlp] = {
            "count": len(ordered),
            "median_s": round(statistics.median(ordered), 3),
            "p90_s": round(_pct(ordered, 0.9), 3),
            "p95_s": round(_pct(ordered, 0.95), 3),
            "max_s": round(ordered[-1], 3),
        }
    every = sorted(v for values in d["latency"].values() for v in values)
    versions = {k: d["versions"].get(k, 0) for k in DECISIONS}
    by_tlp = {k: c for k, v in d["by_tlp"].items() if (c := _positive(v))}
    by_type = {k: c for k, v in d["by_type"].items() if (c := _positive(v))}
    return {
        "decisions": versions,  # object versions (as before; also under "versions")
        "versions": versions,
        "objects": {k: d["objects"].get(k, 0) for k in DECISIONS},
        "withdrawn": {"objects": len({oid for oid, _v in d["withdrawn"]}), "versions": len(d["withdrawn"])},
        "by_tlp": dict(sorted(by_tlp.items(), key=lambda kv: _tlp_rank(kv[0]))),
        "by_type": dict(sorted(by_type.items())),
        "clauses": dict(Counter(_positive(d["clauses"])).most_common()),
        "also_applied": dict(Counter(_positive(d["also_applied"])).most_common()),
        "arrived": d["arrived"],
        "rejected": dict(d["rejected"]),
        "withheld_in_transit": len(d["in_transit"]),
        "latency": {k: lat[k] for k in sorted(lat, key=_tlp_rank)},
        "latency_all": {
            "count": len(every),
            "median_s": round(statistics.median(every), 3) if every else None,
            "p95_s": round(_pct(every, 0.95), 3) if every else None,
        },
        "latency_basis": sorted(d["latency_basis"]),
        **_receipts(d["receipts"]),
    }


def _receipts(r: Counter) -> dict[str, Any]:
    """``{"receipts": {"accepted", "refused", "withdrawn", "refused_by_rule"}}`` when the partner sent any."""
    if not r:
        return {}
    rules = {k.removeprefix("refused by "): v for k, v in sorted(r.items()) if k.startswith("refused by ")}
    return {"receipts": {"accepted": r.get("accepted", 0), "refused": r.get("refused", 0), "withdrawn": r.get("withdrawn", 0),
                         "refused_by_rule": rules}}


def summary_row(d: dict[str, Any]) -> dict[str, int]:
    """One direction's row of the summary table (``SUMMARY_COLUMNS``): object versions."""
    v = d["versions"]
    return {
        "shared": v.get("share", 0), "redacted": v.get("redact", 0), "withheld": v.get("withhold", 0),
        "withdrawn": d["withdrawn"]["versions"], "arrived": d["arrived"], "rejected": sum(d["rejected"].values()),
        "in_transit": d.get("withheld_in_transit", 0),
    }


def _empty() -> dict[str, Any]:
    return {
        "versions": Counter(),
        "objects": Counter(),
        "withdrawn": set(),
        "by_tlp": defaultdict(Counter),
        "by_type": defaultdict(Counter),
        "clauses": Counter(),
        "also_applied": Counter(),
        "arrived": 0,
        "rejected": Counter(),
        "in_transit": set(),
        "latency": defaultdict(list),
        "latency_basis": set(),
        "receipts": Counter(),
    }


def _tlp_rank(name: str) -> int:
    if name in TLP_ORDER:
        return TLP_ORDER.index(name)
    return len(TLP_ORDER) + (0 if name.startswith("public source") else 1)


# ---------------------------------------------------------------- terminal


def render_terminal(report: dict[str, Any], console: Any = None) -> None:
    """Rich tables: one summary row per direction, then objects, clauses, TLP, type and timing per direction."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    summary = Table(title=f"cti-exchange report: {', '.join(report['nodes'])} (object versions)")
    summary.add_column("direction")
    for _key, label in SUMMARY_COLUMNS:
        summary.add_column(label, justify="right")
    for name, d in report["directions"].items():
        row = summary_row(d)
        summary.add_row(name, *(str(row[k]) for k, _label in SUMMARY_COLUMNS))
    console.print(summary)
    if any(d.get("receipts") for d in report["directions"].values()):
        t = Table(title="what each partner says it did with what it received (its receipts)")
        for col in ("direction", "accepted", "refused", "withdrawn", "refused by rule"):
            t.add_column(col)
        for name, d in report["directions"].items():
            if r := d.get("receipts"):
                rules = ", ".join(f"{k}: {v}" for k, v in r["refused_by_rule"].items())
                t.add_row(name, str(r["accepted"]), str(r["refused"]), str(r["withdrawn"]), rules)
        console.print(t)
    if report.get("conflicts"):
        console.print("conflicts (same id and modified, other content; refused): "
                      + ", ".join(f"{n} {c}" for n, c in report["conflicts"].items()))
    for name, d in report["directions"].items():
        for table in _direction_tables(name, d):
            console.print(table)
    console.print(f"[dim]Clause counts: {report.get('clauses_note', CLAUSES_NOTE)}.[/dim]")


def _direction_tables(name: str, d: dict[str, Any]) -> list[Any]:
    """One direction's rich tables: objects and versions, deciding clauses, TLP, STIX type, time to arrival."""
    from rich.table import Table

    out = []
    if sum(d["versions"].values()):
        t = Table(title=f"{name}: objects and object versions decided")
        t.add_column("counted as")
        for k in DECISIONS:
            t.add_column(k, justify="right")
        t.add_row("objects (newest decided version)", *(str(d["objects"][k]) for k in DECISIONS))
        t.add_row("object versions", *(str(d["versions"][k]) for k in DECISIONS))
        out.append(t)
    if d["clauses"]:
        t = Table(title=f"{name}: deciding clause (object versions; adds up to the versions decided)")
        t.add_column("decision: clause")
        t.add_column("versions", justify="right")
        for clause, n in d["clauses"].items():
            t.add_row(clause, str(n))
        for clause, n in d["also_applied"].items():
            t.add_row(f"[dim]also applied: {clause}[/dim]", f"[dim]{n}[/dim]")
        out.append(t)
    for title, rows in ((f"{name}: by TLP (object versions)", d["by_tlp"]), (f"{name}: by STIX type (object versions)", d["by_type"])):
        if rows:
            t = Table(title=title)
            t.add_column(title.split(": by ")[1].split(" (")[0])
            for k in DECISIONS:
                t.add_column(k, justify="right")
            for label, counts in rows.items():
                t.add_row(label, *(str(counts.get(k, 0)) for k in DECISIONS))
            out.append(t)
    if d["latency"]:
        t = Table(title=f"{name}: time to arrival at the partner ({', '.join(d['latency_basis'])})")
        for col in ("TLP", "versions", "median s", "p90 s", "p95 s", "max s"):
            t.add_column(col, justify="right" if col != "TLP" else "left")
        for tlp, v in d["latency"].items():
            t.add_row(tlp, str(v["count"]), f"{v['median_s']:.3f}", f"{v['p90_s']:.3f}", f"{v['p95_s']:.3f}", f"{v['max_s']:.3f}")
        out.append(t)
    return out

