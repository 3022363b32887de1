"""The commitment in practice: a summary of what the audit logs recorded.

``build_report`` reads one or more nodes' audit logs (pure over their
entries) and counts, per direction: objects shared, redacted and withheld,
with the clauses that decided them, by TLP level and by STIX type, and the
time from release at the sender to arrival at the partner.  With both nodes'
logs the arrival time is measured from the sender's release decision to the
receiver's acceptance; with one log, from the object's version timestamp
(its publication) to acceptance.  ``render_terminal`` prints rich tables;
``render_html`` writes one self-contained page with inline SVG charts
(matplotlib).
"""

from __future__ import annotations

import html
import io
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from exchange.errors import ConfigError
from exchange.sharing.lifecycle import lifecycle_report
from exchange.sharing.receipts import add_receipts, receipt_rows
from exchange.storage import audit
from exchange.storage.store import DB_FILE, Store

DECISIONS = ("share", "redact", "withhold")
TLP_ORDER = ("TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED", "none")


def read_logs(data_dirs: Iterable[Path]) -> dict[str, list[dict]]:
    """``{node name: audit entries}`` for each data dir."""
    logs: dict[str, list[dict]] = {}
    for d in data_dirs:
        if not (Path(d) / DB_FILE).exists():
            raise ConfigError(f"{d}: no node data here ({DB_FILE} is missing)")
        store = Store.open(data_dir=Path(d))
        try:
            node = store.get_meta("node") or Path(d).name
            logs[node] = list(audit.entries(store))
        finally:
            store.close()
    return logs


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def build_report(logs: dict[str, list[dict]]) -> dict[str, Any]:
    """Counts and timings per direction (sender -> recipient) from audit entries."""
    directions: dict[str, dict[str, Any]] = {}
    released_at = _tally_decisions(logs, directions)
    refused: set[tuple] = set()  # (sender, recipient, object, version): one refusal counts once, whoever logged it
    for node, entries in logs.items():
        _tally_arrivals(node, entries, directions, released_at)
        _tally_rejections(node, entries, directions, refused)
    out: dict[str, Any] = {"nodes": sorted(logs), "directions": {}}
    for name, d in sorted(directions.items()):
        out["directions"][name] = _summarise(d)
    changes = lifecycle_report(logs)  # withdrawals per direction, conflicts per node (exchange.sharing.lifecycle)
    for name, d in out["directions"].items():
        d["withdrawn"] = changes["withdrawn"].get(name, 0)
    out["conflicts"] = changes["conflicts"]
    add_receipts(out, logs)  # what each partner said it did with what it received (exchange.sharing.receipts)
    return out


def _tally_decisions(logs: dict[str, list[dict]], directions: dict[str, dict[str, Any]]) -> dict[tuple[str, str, str, str | None], int]:
    """Count each node's latest decision per (partner, object version); return when each version was released, by key."""
    released_at: dict[tuple[str, str, str, str | None], int] = {}
    for node, entries in logs.items():
        latest: dict[tuple, dict] = {}
        for e in entries:
            if e["event"] in DECISIONS:
                latest[(e["partner"], e["object_id"], e["version"])] = e
                if e["event"] != "withhold":
                    released_at.setdefault((node, e["partner"], e["object_id"], e["version"]), e["at"])
        for (partner, _oid, _v), e in latest.items():
            d = directions.setdefault(f"{node}->{partner}", _empty())
            d["decisions"][e["decision"]] += 1
            tlp = e["detail"].get("tlp", "none")
            typ = e["detail"].get("type", "?")
            d["by_tlp"][tlp][e["decision"]] += 1
            d["by_type"][typ][e["decision"]] += 1
            if e["decision"] != "share":
                for c in e["clauses"]:
                    d["clauses"][f"{e['decision']}: {c}"] += 1
    return released_at


def _tally_arrivals(
    node: str, entries: list[dict], directions: dict[str, dict[str, Any]], released_at: dict[tuple[str, str, str, str | None], int]
) -> None:
    """Count what ``node`` accepted from a partner (pulled, or pushed into its inbox) and the time it took to arrive.

    An object version that came both ways counts once, at its first arrival.
    """
    seen: set[tuple] = set()
    for e in entries:
        if e["event"] not in ("pull", "inbound-accept"):
            continue
        sender = e["partner"]
        key = (sender, node, e["object_id"], e["version"])
        if key in seen:
            continue
        seen.add(key)
        d = directions.setdefault(f"{sender}->{node}", _empty())
        d["arrived"] += 1
        if key in released_at:
            seconds = (e["at"] - released_at[key]) / 1e6
            basis = "release-to-arrival"
        elif "latency_s" in e["detail"]:
            seconds = e["detail"]["latency_s"]
            basis = "publication-to-arrival"
        else:
            continue
        d["latency"][e["detail"].get("tlp", "none")].append(max(seconds, 0.0))
        d["latency_basis"].add(basis)


def _tally_rejections(node: str, entries: list[dict], directions: dict[str, dict[str, Any]], refused: set[tuple]) -> None:
    """Count the object versions rejected on arrival (once each: push, pull and the partner's receipt say the same),
    and those released but kept off plain HTTP, per direction."""
    for e in entries:
        if e["event"] in ("inbound-reject", "push-reject") or (e["event"] == "receipt" and e["decision"] == "refused"):
            sender = e["partner"] if e["event"] == "inbound-reject" else node
            recipient = node if e["event"] == "inbound-reject" else e["partner"]
            key = (sender, recipient, e["object_id"], e["version"])
            if e["object_id"] is not None and key in refused:
                continue
            refused.add(key)
            d = directions.setdefault(f"{sender}->{recipient}", _empty())
            d["rejected"][e["clauses"][0] if e["clauses"] else "?"] += 1
        elif e["event"] == "transport-withhold" and e["partner"]:
            # released, but not served or pushed to the partner over plain HTTP (IEP encrypt_in_transit 'must')
            d = directions.setdefault(f"{node}->{e['partner']}", _empty())
            d["in_transit"].add((e["object_id"], e["version"]))


def _summarise(d: dict[str, Any]) -> dict[str, Any]:
    """One direction's tallies as the report shows them (TLP levels in TLP order, clauses most common first)."""
    lat = {}
    for tlp, values in d["latency"].items():
        lat[tlp] = {
            "count": len(values),
            "median_s": round(statistics.median(values), 3),
            "p90_s": round(_pct(values, 0.9), 3),
            "max_s": round(max(values), 3),
        }
    return {
        "decisions": dict(d["decisions"]),
        "by_tlp": {k: dict(v) for k, v in sorted(d["by_tlp"].items(), key=lambda kv: _tlp_rank(kv[0]))},
        "by_type": {k: dict(v) for k, v in sorted(d["by_type"].items())},
        "clauses": dict(d["clauses"].most_common()),
        "arrived": d["arrived"],
        "rejected": dict(d["rejected"]),
        "withheld_in_transit": len(d["in_transit"]),
        "latency": {k: lat[k] for k in sorted(lat, key=_tlp_rank)},
        "latency_basis": sorted(d["latency_basis"]),
    }


def _empty() -> dict[str, Any]:
    return {
        "decisions": Counter({k: 0 for k in DECISIONS}),
        "by_tlp": defaultdict(Counter),
        "by_type": defaultdict(Counter),
        "clauses": Counter(),
        "arrived": 0,
        "rejected": Counter(),
        "in_transit": set(),
        "latency": defaultdict(list),
        "latency_basis": set(),
    }


def _tlp_rank(name: str) -> int:
    return TLP_ORDER.index(name) if name in TLP_ORDER else len(TLP_ORDER)


# ---------------------------------------------------------------- terminal


def render_terminal(report: dict[str, Any], console: Any = None) -> None:
    """Rich tables: one summary row per direction, then clauses, TLP and timing per direction."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    summary = Table(title=f"cti-exchange report: {', '.join(report['nodes'])}")
    for col in ("direction", "shared", "redacted", "withheld", "arrived", "rejected on arrival", "kept off plain HTTP"):
        summary.add_column(col, justify="right" if col != "direction" else "left")
    for name, d in report["directions"].items():
        dec = d["decisions"]
        summary.add_row(name, str(dec.get("share", 0)), str(dec.get("redact", 0)), str(dec.get("withhold", 0)),
                        str(d["arrived"]), str(sum(d["rejected"].values())), str(d.get("withheld_in_transit", 0)))
    console.print(summary)
    console.print("withdrawn: " + (", ".join(f"{n} {d.get('withdrawn', 0)}" for n, d in report["directions"].items()) or "none")
                  + "; conflicts: " + (", ".join(f"{n} {c}" for n, c in report.get("conflicts", {}).items()) or "none"))
    if receipt_rows(report):  # receipts hook (exchange.sharing.receipts)
        t = Table(title="what each partner says it did with what it received (its receipts)")
        for col in ("direction", "accepted", "refused", "withdrawn", "refused by rule"):
            t.add_column(col)
        for row in receipt_rows(report):
            t.add_row(*row)
        console.print(t)
    for name, d in report["directions"].items():
        if d["clauses"]:
            t = Table(title=f"{name}: what was withheld or redacted, and by which clause")
            t.add_column("decision: clause")
            t.add_column("objects", justify="right")
            for clause, n in d["clauses"].items():
                t.add_row(clause, str(n))
            console.print(t)
        if d["by_tlp"]:
            t = Table(title=f"{name}: by TLP")
            t.add_column("TLP")
            for k in DECISIONS:
                t.add_column(k, justify="right")
            for tlp, counts in d["by_tlp"].items():
                t.add_row(tlp, *(str(counts.get(k, 0)) for k in DECISIONS))
            console.print(t)
        if d["latency"]:
            t = Table(title=f"{name}: time to arrival at the partner ({', '.join(d['latency_basis'])})")
            for col in ("TLP", "objects", "median s", "p90 s", "max s"):
                t.add_column(col, justify="right" if col != "TLP" else "left")
            for tlp, v in d["latency"].items():
                t.add_row(tlp, str(v["count"]), f"{v['median_s']:.3f}", f"{v['p90_s']:.3f}", f"{v['max_s']:.3f}")
            console.print(t)


# ---------------------------------------------------------------- HTML


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


_COLORS = {"share": "#2e7d32", "redact": "#f9a825", "withhold": "#c62828"}


def _stacked(rows: dict[str, dict[str, int]], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows)
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(labels), 2) + 1.2))
    left = [0] * len(labels)
    for k in DECISIONS:
        values = [rows[label].get(k, 0) for label in labels]
        ax.barh(labels, values, left=left, color=_COLORS[k], label=k)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xscale("symlog")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return _svg(fig)


def _bars(counts: dict[str, int], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(counts)[:15]
    fig, ax = plt.subplots(figsize=(7, 0.4 * max(len(labels), 2) + 1.2))
    ax.barh(labels, [counts[k] for k in labels], color=["#c62828" if k.startswith("withhold") else "#f9a825" for k in labels])
    ax.set_title(title)
    ax.invert_yaxis()
    return _svg(fig)


def _latency(direction: dict[str, Any], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(direction["latency"])
    fig, ax = plt.subplots(figsize=(7, 2.8))
    med = [direction["latency"][k]["median_s"] for k in labels]
    p90 = [direction["latency"][k]["p90_s"] for k in labels]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], med, width=0.4, label="median", color="#1565c0")
    ax.bar([i + 0.2 for i in x], p90, width=0.4, label="p90", color="#90caf9")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("seconds")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _svg(fig)


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page (no external assets) with the tables and SVG charts."""
    e = html.escape
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>cti-exchange report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}"
        "td:first-child,th:first-child{text-align:left}h2{margin-top:2.5rem;border-bottom:2px solid #eee}"
        ".chart svg{max-width:100%;height:auto}</style></head><body>",
        f"<h1>US-ROK sharing in practice</h1><p>Audit logs of: {e(', '.join(report['nodes']))}. "
        "Every count below is a decision the sharing policy recorded in a node's hash-chained audit log.</p>",
        "<table><tr><th>direction</th><th>shared</th><th>redacted</th><th>withheld</th><th>arrived</th><th>rejected on arrival</th></tr>",
    ]
    for name, d in report["directions"].items():
        dec = d["decisions"]
        parts.append(
            f"<tr><td>{e(name)}</td><td>{dec.get('share', 0)}</td><td>{dec.get('redact', 0)}</td>"
            f"<td>{dec.get('withhold', 0)}</td><td>{d['arrived']}</td><td>{sum(d['rejected'].values())}</td></tr>"
        )
    parts.append("</table>")
    overview = {name: d["decisions"] for name, d in report["directions"].items() if sum(d["decisions"].values())}
    if overview:
        parts.append(f"<div class=chart>{_stacked(overview, 'Decisions per direction (log scale)')}</div>")
    for name, d in report["directions"].items():
        parts.append(f"<h2>{e(name)}</h2>")
        if d["by_tlp"]:
            parts.append(f"<div class=chart>{_stacked(d['by_tlp'], f'{name}: decisions by TLP level')}</div>")
        if d["clauses"]:
            parts.append(f"<div class=chart>{_bars(d['clauses'], f'{name}: clauses that withheld or redacted')}</div>")
            parts.append("<table><tr><th>decision: clause</th><th>objects</th></tr>")
            parts += [f"<tr><td>{e(c)}</td><td>{n}</td></tr>" for c, n in d["clauses"].items()]
            parts.append("</table>")
        if d["by_type"]:
            parts.append("<table><tr><th>STIX type</th>" + "".join(f"<th>{k}</th>" for k in DECISIONS) + "</tr>")
            for typ, counts in d["by_type"].items():
                parts.append(f"<tr><td>{e(typ)}</td>" + "".join(f"<td>{counts.get(k, 0)}</td>" for k in DECISIONS) + "</tr>")
            parts.append("</table>")
        if d["latency"]:
            basis = ", ".join(d["latency_basis"])
            parts.append(f"<div class=chart>{_latency(d, f'{name}: time to arrival ({basis})')}</div>")
        if d.get("receipts"):
            r = d["receipts"]
            parts.append(f"<p>The partner's receipts: {r['accepted']} accepted, {r['refused']} refused, {r['withdrawn']} withdrawn</p>")
        if d["rejected"]:
            parts.append("<p>Rejected on arrival: " + ", ".join(f"{e(k)}: {v}" for k, v in d["rejected"].items()) + "</p>")
        if d.get("withheld_in_transit"):
            parts.append(f"<p>Kept off plain HTTP (IEP encrypt_in_transit must): {d['withheld_in_transit']} object versions</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
