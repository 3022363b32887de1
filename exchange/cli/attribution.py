"""``cti-exchange attribution propose | respond | status``: joint attribution (SCCF consultation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from exchange.cli.node import DATA_DIR, DATABASE, _need_store
from exchange.stix import OPINIONS

OPINION_CHOICES = ["agree", "strongly-agree", "neutral", "disagree", "strongly-disagree"]
assert set(OPINION_CHOICES) == OPINIONS


@click.group()
def attribution() -> None:
    """Joint attribution: propose an attributed-to relationship, concur or dissent, release the joint report."""


def _released(released: dict[str, Any]) -> str:
    return ", ".join(f"{p}: {r.shared + r.redacted} released, {r.withheld} withheld" for p, r in released.items())


@attribution.command()
@click.argument("node")
@click.option("--subject", required=True, metavar="ID", help="The intrusion-set or campaign being attributed.")
@click.option("--actor", required=True, metavar="ID", help="The threat-actor (or, for a campaign, intrusion-set) it is attributed to.")
@click.option("--confidence", required=True, type=click.IntRange(0, 100), help="STIX 2.1 confidence, 0-100.")
@click.option("--rationale", metavar="TEXT", help="Why (goes to the partner only, never into the joint products).")
@click.option("--json", "as_json", is_flag=True, help="Print the created objects as JSON.")
@DATA_DIR
@DATABASE
def propose(node: str, subject: str, actor: str, confidence: int, rationale: str | None, as_json: bool,
            data_dir: Path | None, database: str | None) -> None:
    """Propose attributing SUBJECT to ACTOR to the partner (TLP:AMBER + IEP, partner only).

    Proposing again the same subject and actor revises this node's proposal (a
    new version), which resets the partner's concurrence.
    """
    from exchange.node.ops import open_node
    from exchange.sharing import attribution as attr
    from exchange.sharing.release import release_all

    _need_store(data_dir, database)
    opened = open_node(node, data_dir=data_dir, database=database)
    try:
        rel, op, revised = attr.propose(opened, subject=subject, actor=actor, confidence=confidence, rationale=rationale)
        released = release_all(opened)
    finally:
        opened.close()
    if as_json:
        click.echo(orjson.dumps({"relationship": rel, "opinion": op, "revised": revised}, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{'revised' if revised else 'proposed'} {rel['id']} (version {rel['modified']}, confidence {confidence}); "
               f"own opinion {op['id']}; {_released(released)}")


@attribution.command()
@click.argument("node")
@click.option("--relationship", required=True, metavar="ID", help="The proposed attributed-to relationship.")
@click.option("--opinion", required=True, type=click.Choice(OPINION_CHOICES), help="This node's stance.")
@click.option("--confidence", type=click.IntRange(0, 100), help="STIX 2.1 confidence, 0-100 (default: the proposal's).")
@click.option("--explanation", metavar="TEXT", help="Why (goes to the partner only).")
@click.option("--json", "as_json", is_flag=True, help="Print the opinion and the assessment as JSON.")
@DATA_DIR
@DATABASE
def respond(node: str, relationship: str, opinion: str, confidence: int | None, explanation: str | None, as_json: bool,
            data_dir: Path | None, database: str | None) -> None:
    """Concur with or dissent from a proposal (a STIX opinion, shared back to the partner)."""
    from exchange.node.ops import open_node
    from exchange.sharing import attribution as attr
    from exchange.sharing.release import release_all

    _need_store(data_dir, database)
    opened = open_node(node, data_dir=data_dir, database=database)
    try:
        op, assessment = attr.respond(opened, relationship=relationship, opinion=opinion, confidence=confidence,
                                      explanation=explanation)
        released = release_all(opened)
    finally:
        opened.close()
    if as_json:
        click.echo(orjson.dumps({"opinion": op, "state": assessment.state, "combined_confidence": assessment.combined_confidence,
                                 "stances": [s.as_json() for s in assessment.stances]}, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{opinion} on {relationship}: {op['id']}; attribution is {assessment.state}"
               + (f" (combined confidence {assessment.combined_confidence})" if assessment.state == "joint" else "")
               + f"; {_released(released)}")


@attribution.command()
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@DATA_DIR
@DATABASE
def status(node: str, as_json: bool, data_dir: Path | None, database: str | None) -> None:
    """Every proposal NODE knows: each partner's stance and confidence, joint or not, and where it was released."""
    from rich.console import Console
    from rich.table import Table

    from exchange.node.ops import open_node
    from exchange.sharing import attribution as attr

    _need_store(data_dir, database)
    opened = open_node(node, data_dir=data_dir, database=database)
    try:
        entries = attr.status(opened)
    finally:
        opened.close()
    if as_json:
        click.echo(orjson.dumps(entries, option=orjson.OPT_INDENT_2).decode())
        return
    if not entries:
        click.echo(f"{node}: no attribution proposals")
        return
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("proposal", "subject -> actor", "by", "stances", "state", "conf.", "released"):
        table.add_column(col)
    for e in entries:
        stances = ", ".join(
            f"{s['party']}: {s['opinion'] or 'pending'}" + (f" {s['confidence']}" if s["confidence"] is not None else "")
            for s in e["stances"]
        )
        where = []
        if e["proposal_released_to"]:
            where.append("proposal -> " + ",".join(e["proposal_released_to"]))
        if e["joint_report"]:
            where.append("joint -> " + (",".join(e["joint_released_to"]) or "not yet"))
        if e.get("joint_withdrawn_from"):
            where.append("joint withdrawn from " + ",".join(e["joint_withdrawn_from"]))
        table.add_row(
            f"{e['relationship']}\n  v {e['version']}",
            f"{e['subject_name'] or e['subject']} -> {e['actor_name'] or e['actor']}",
            e["proposer"], stances, e["state"],
            str(e["combined_confidence"] if e["combined_confidence"] is not None else e["proposed_confidence"]),
            "; ".join(where) or "-",
        )
    Console(highlight=False, width=200).print(table)


COMMANDS = [attribution]
