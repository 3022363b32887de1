"""``cti-exchange policy ...``: check, explain and lint sharing policies."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from exchange.errors import BadRequest


def _console():
    from rich.console import Console

    width = None if sys.stdout.isatty() else 200
    return Console(width=width, highlight=False, soft_wrap=False)


def load_bundle(path: str) -> list[dict]:
    """The objects of a STIX bundle (or a JSON list of objects); ``BadRequest`` in one line otherwise."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise BadRequest(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{path}: not valid JSON: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict):
        if data.get("type") != "bundle" or not isinstance(data.get("objects", []), list):
            raise BadRequest(f"{path}: not a STIX bundle (expected type 'bundle' with an 'objects' list)")
        objects = data.get("objects", [])
    elif isinstance(data, list):
        objects = data
    else:
        raise BadRequest(f"{path}: not a STIX bundle")
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str) or not isinstance(obj.get("id"), str):
            raise BadRequest(f"{path}: object {i} is not a STIX object (needs 'type' and 'id')")
    from exchange.stix import check_object

    # what `load` refuses (e.g. a STIX 2.0 bundle) is refused here too: no verdict on objects a node would never hold
    problems = [(o, p) for o in objects if (p := check_object(o)) is not None]
    if problems:
        obj, problem = problems[0]
        raise BadRequest(f"{path}: {len(problems)} of {len(objects)} objects are invalid, as `load` would refuse them; "
                         f"nothing judged. First: {obj.get('id', '?')}: {problem}")
    return objects


def _policy(path: str | None):
    from exchange.policy import load_policy

    return load_policy(path)


def _route_options(f: Any) -> Any:
    f = click.option("--now", "now", default=None, metavar="TIMESTAMP",
                     help="Judge IEP validity windows at this STIX timestamp (default: now).")(f)
    f = click.option("--policy", "policy_path", default=None, metavar="FILE_OR_DIR",
                     help="Policy file or directory (default: $CTI_EXCHANGE_POLICIES or the repository's policies/).")(f)
    f = click.option("--to", "recipient", required=True, help="Recipient party (us, rok, jp, cri, public ...).")(f)
    f = click.option("--from", "sender", required=True, help="Sending party (us, rok ...).")(f)
    return f


@click.group()
def policy() -> None:
    """Sharing policies: check a bundle, explain a decision, lint the files."""


@policy.command("check")
@click.argument("bundle", type=click.Path(dir_okay=False))
@_route_options
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON list of decisions.")
@click.option("--transport", type=click.Choice(["tls", "plain"]), default="tls", show_default=True,
              help="The channel: over 'plain' HTTP, objects whose IEP marking says encrypt_in_transit: must are withheld.")
def check(bundle: str, sender: str, recipient: str, policy_path: str | None, now: str | None, as_json: bool, transport: str) -> None:
    """Evaluate every object of BUNDLE for release from one party to another."""
    from exchange.policy import evaluate
    from exchange.sharing.attribution import concurred_in

    objects = load_bundle(bundle)
    pol = _policy(policy_path)
    # joint attribution products count as concurred if the bundle holds the concurrence (proposal and opinions)
    decisions = evaluate(objects, pol, sender, recipient, now=now, concurred=concurred_in(objects, pol, sender), transport=transport)
    if as_json:
        click.echo(json.dumps([d.as_json() for d in decisions], ensure_ascii=False))
        return
    from rich.table import Table

    table = Table(title=f"{bundle}: {sender} -> {recipient}", show_lines=False)
    table.add_column("id", no_wrap=True)
    table.add_column("type")
    table.add_column("decision")
    table.add_column("clause")
    table.add_column("removed")
    style = {"share": "green", "redact": "yellow", "withhold": "red"}
    for d in decisions:
        table.add_row(d.id, d.type, f"[{style[d.decision]}]{d.decision}[/]", ", ".join(d.clauses),
                      ", ".join(d.removed_fields))
    console = _console()
    console.print(table)
    totals = Counter(d.decision for d in decisions)
    console.print(
        f"total {len(decisions)}: share {totals['share']}, redact {totals['redact']}, withhold {totals['withhold']}"
    )


@policy.command("explain")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.argument("object_id")
@_route_options
def explain_cmd(bundle: str, object_id: str, sender: str, recipient: str, policy_path: str | None, now: str | None) -> None:
    """Show step by step how one object of BUNDLE is judged."""
    from exchange.policy import explain
    from exchange.sharing.attribution import concurred_in

    objects = load_bundle(bundle)
    pol = _policy(policy_path)
    result = explain(object_id, objects, pol, sender, recipient, now=now, concurred=concurred_in(objects, pol, sender))
    console = _console()
    d = result.decision
    console.print(f"{d.id} ({d.type}, version {d.version}) {sender} -> {recipient}", markup=False)
    for i, step in enumerate(result.steps, 1):
        console.print(f"  {i}. {step}", markup=False)
    console.print(f"reason: {d.reason}", markup=False)
    for cid in d.clauses:
        clause = pol.clause(cid)
        console.print(f"[{cid}] {clause.statement}", markup=False)
        console.print(f"    source ({clause.source.framework}): \"{clause.source.quote}\"", markup=False)
        if clause.conservative:  # a local choice where the framework text is silent, not a framework mandate
            console.print(f"    conservative: true (a local reading, not the framework's words): {clause.conservative_note.strip()}", markup=False)
    if d.removed_fields:
        console.print(f"removed: {', '.join(d.removed_fields)}", markup=False)


@policy.command("lint")
@click.argument("directory", required=False, type=click.Path())
def lint(directory: str | None) -> None:
    """Check the policy files (schema, sources quoted verbatim, names) and list the clauses."""
    from exchange.policy.model import default_policy_dir

    pol = _policy(directory)
    console = _console()
    from rich.table import Table

    table = Table(title=f"{directory or default_policy_dir()}")
    table.add_column("clause", no_wrap=True)
    table.add_column("framework")
    table.add_column("rule")
    table.add_column("conservative")
    for c in pol.clauses:
        table.add_row(c.id, c.source.framework, c.rule.kind, "yes" if c.conservative else "")
    console.print(table)
    console.print(f"ok: {len(pol.files)} files, {len(pol.parties)} parties, {len(pol.communities)} communities, "
                  f"{len(pol.clauses)} clauses")


COMMANDS = [policy]
