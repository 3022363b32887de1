"""The demo's story for people: what crossed, what was redacted, what stayed home, and why."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

NAMES = {"us": "United States", "rok": "Republic of Korea", "jp": "Japan (trilateral)"}


def print_narrative(result: dict[str, Any], *, json_mode: bool = False) -> None:
    """Print the narrative (to stderr when the summary JSON goes to stdout)."""
    console = Console(file=sys.stderr if json_mode else sys.stdout, highlight=False)
    console.rule("[bold]cti-exchange demo: US-ROK sharing under the agreed policies")
    for node, url in result["nodes"].items():
        console.print(f"  {NAMES.get(node, node)} node: {url}")
    if result.get("transport"):
        console.print(f"  transport: {result['transport']}")
    for node, partners in result["decisions"].items():
        for partner, tally in sorted(partners.items()):
            console.print()
            console.print(
                f"[bold]{NAMES.get(node, node)} -> {NAMES.get(partner, partner)}[/bold]: "
                f"{tally['share']} shared, {tally['redact']} redacted, {tally['withhold']} stayed home"
            )
            table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
            table.add_column("decision")
            table.add_column("clause")
            table.add_column("objects", justify="right")
            for key, count in sorted(tally["clauses"].items(), key=lambda kv: (-kv[1], kv[0])):
                decision, clause = key.split(":", 1)
                table.add_row(decision, clause, str(count))
            console.print(table)
            for ex in tally["examples"][:6]:
                extra = f" (removed: {', '.join(ex['removed_fields'])})" if ex["removed_fields"] else ""
                console.print(f"   - {ex['decision']}: {ex['type']} {ex['id']}{extra}: {ex['reason']}")
    _print_attribution(console, result.get("attribution"))
    _print_withdrawal(console, result.get("withdrawal"), result.get("withdrawn"))
    _print_sighting(console, result.get("sighting"))
    console.print()
    for direction, summary in result["transfers"].items():
        console.print(f"  sync {direction}: {summary}")
    check = result["leak_check"]
    console.print()
    if check["ok"]:
        console.print(f"[bold green]Leak check passed[/]: {check['checked']} withheld or redacted object versions looked up "
                      "at every place their recipient can read, through every TAXII endpoint; nothing withheld is readable.")
    else:
        console.print(f"[bold red]Leak check FAILED[/]: {len(check['leaks'])} leaks")
        for leak in check["leaks"][:20]:
            console.print(f"   ! {leak}")
    console.print(f"  done in {result['seconds']} s" + (f"; data kept in {result['data_dir']}" if result.get("data_dir") else ""))


def _print_withdrawal(console: Console, w: dict[str, Any] | None, withdrawn: dict[str, int] | None) -> None:
    """The withdrawal round: a released indicator found to be a CDN address (exchange.sharing.lifecycle)."""
    if not w:
        return
    console.print()
    console.print(f"[bold]When intelligence changes[/bold]: the US finds that {w['name']} ({w['object']}) is a CDN address; "
                  "the finding stays internal, so its new version is marked TLP:RED. The node withdraws the released "
                  "version: a revoked version (STIX 2.1 s3.6) carrying only the required properties and the marking the "
                  "partner held; ROK relays the withdrawal to Japan in the same sync cycle.")
    for where, seen in w["latest"].items():
        state = "withdrawn (revoked)" if seen and seen["revoked"] else f"NOT withdrawn: {seen}"
        console.print(f"   - latest at {where}: {state}" + (f", version {seen['version']}" if seen else ""))
    if withdrawn:
        console.print("   withdrawn per direction: " + ", ".join(f"{d} {n}" for d, n in withdrawn.items()))
    console.print("   [green]ok[/green]" if w["ok"] else "   [bold red]the withdrawal did not reach every recipient[/]")


def _print_attribution(console: Console, rounds: list[dict[str, Any]] | None) -> None:
    """The joint-attribution rounds (SCCF consultation): who proposed, who concurred, what was released."""
    console.print()
    if rounds is None:
        return
    if not rounds:
        console.print("[bold]Joint attribution[/bold]: skipped (the rounds need each node's data folder, and TLS: a "
                      "proposal's IEP marking says encrypt_in_transit: must; run `cti-exchange attribution ...` at the nodes)")
        return
    console.print("[bold]Joint attribution (SCCF consultation)[/bold]: an attributed-to proposal goes to the partner only "
                  "(TLP:AMBER, IEP provider attribution must-not); the partner answers with a STIX opinion; only when both "
                  "agree does each node build the same joint report and joint attribution (created by the joint cell, "
                  "TLP:CLEAR, combined confidence = the lower of the two), which then go onward to Japan.")
    for r in rounds:
        us = r["us"]
        stances = ", ".join(f"{NAMES.get(p, p)} {op or 'pending'}" + (f" ({c})" if c is not None else "")
                            for p, (op, c) in us["stances"].items())
        line = (f"   - {r['subject']} -> {r['actor']}"
                + (" (a new version of the exercise proposal)" if r.get("revised_seed_proposal") else "")
                + f": {stances}; [bold]{us['state']}[/bold]")
        if us["state"] == "joint":
            line += (f", combined confidence {us['combined_confidence']}; joint report {us['joint_report']} at both nodes, "
                     f"readable by Japan: {'yes' if r['joint_report_readable_by_jp'] else 'NO'}")
        else:
            line += "; nothing released outside the partnership"
        line += f"; proposal readable by Japan: {'YES' if r['proposal_readable_by_jp'] else 'no'}"
        if not r["ok"]:
            line += " [bold red](unexpected)[/]"
        console.print(line)


def _print_sighting(console: Console, seen: dict[str, Any] | None) -> None:
    """The sighting round trip (CERT MOU feedback): ROK's sighting of a US TLP:AMBER indicator, back to the US only."""
    if not seen:
        return
    console.print()
    where = "reached the US (its producer)" if seen["reached_us"] else "[red]did NOT reach the US[/]"
    jp = "[red]readable by Japan[/]" if seen["readable_by_jp"] else "not readable by Japan (TLP:AMBER, cert.sighting-to-producer)"
    console.print(f"[bold]Sighting back to the producer[/bold]: ROK saw the US indicator {seen['of']} "
                  f"(count {seen['count']}); its sighting {where}, {jp}. "
                  f"`cti-exchange trace {seen['of']} --data-dir <us>` shows it.")
