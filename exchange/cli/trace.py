"""``cti-exchange trace`` and ``cti-exchange sighting``: follow one object; sightings back to the producer."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from exchange.cli.node import DATA_DIR, DATABASE, _need_store


@click.command()
@click.argument("object_id")
@click.option("--data-dir", "data_dirs", multiple=True, required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A node's data folder; give both nodes' folders to join their records.")
@click.option("--json", "as_json", is_flag=True, help='JSON: {"id", "versions": [{"modified", "events": [...]}]}.')
def trace(object_id: str, data_dirs: tuple[Path, ...], as_json: bool) -> None:
    """OBJECT_ID's journey version by version: loads, release decisions, transfers, receipts, withdrawals, sightings."""
    from exchange.sharing.trace import trace_dirs

    built = trace_dirs(object_id, data_dirs)
    if as_json:
        click.echo(orjson.dumps(built, option=orjson.OPT_INDENT_2).decode())
        return
    if not built["versions"]:
        click.echo(f"{object_id}: no record of it in {', '.join(map(str, data_dirs))}")
        return
    click.echo(object_id)
    for v in built["versions"]:
        click.echo(f"  version {v['modified']}")
        for e in v["events"]:
            what = " ".join(x for x in (e["event"], f"-> {e['partner']}" if e["partner"] else "", e["decision"] or "") if x)
            clauses = f" [{', '.join(e['clauses'])}]" if e["clauses"] else ""
            reason = e["detail"].get("reason")
            removed = e["detail"].get("removed_fields")
            extra = (f": {reason}" if reason else "") + (f" (removed: {', '.join(removed)})" if removed else "")
            if "sighting" in e["detail"]:
                extra += f" (sighting {e['detail']['sighting']} by {e['detail'].get('by')})"
            click.echo(f"    {e['at']}  {e['node']:<4} {what}{clauses}{extra}")


@click.group()
def sighting() -> None:
    """Sightings (STIX 2.1 s4.10) of what partners shared, released back to the producer under policy."""


@sighting.command("add")
@click.argument("node")
@click.option("--of", "of_id", required=True, metavar="INDICATOR_ID", help="The sighted indicator (or other object) id.")
@click.option("--count", type=click.IntRange(0, 999_999_999), help="How many times it was seen (s4.10 count).")
@click.option("--first-seen", metavar="T", help="First seen (a STIX timestamp).")
@click.option("--last-seen", metavar="T", help="Last seen (a STIX timestamp).")
@click.option("--where-sighted", metavar="IDENTITY", help="Identity id of where it was sighted (where_sighted_refs).")
@DATA_DIR
@DATABASE
@click.option("--json", "as_json", is_flag=True, help="Print the sighting and what was released as JSON.")
def sighting_add(node: str, of_id: str, count: int | None, first_seen: str | None, last_seen: str | None, where_sighted: str | None,
                 data_dir: Path | None, database: str | None, as_json: bool) -> None:
    """Record a sighting of --of by NODE's identity, then release it under policy."""
    from exchange.node.ops import open_node
    from exchange.sharing.sightings import record_sighting

    _need_store(data_dir, database)
    opened = open_node(node, data_dir=data_dir, database=database)
    try:
        made, released = record_sighting(opened, of_id, count=count, first_seen=first_seen, last_seen=last_seen, where_sighted=where_sighted)
    finally:
        opened.close()
    if as_json:
        click.echo(orjson.dumps({"sighting": made, "released": {p: r.__dict__ for p, r in released.items()}}, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"sighting {made['id']} of {of_id} recorded; "
               + ", ".join(f"{p}: {r.shared + r.redacted} released, {r.withheld} withheld" for p, r in released.items()))


@sighting.command("list")
@click.argument("node")
@click.option("--of", "of_id", metavar="ID", help="Only the sightings of this object.")
@DATA_DIR
@DATABASE
@click.option("--json", "as_json", is_flag=True)
def sighting_list(node: str, of_id: str | None, data_dir: Path | None, database: str | None, as_json: bool) -> None:
    """Sightings held by NODE (made here or received from partners), per sighted object."""
    from exchange.node.ops import open_node
    from exchange.sharing.sightings import sightings_of

    _need_store(data_dir, database)
    opened = open_node(node, data_dir=data_dir, database=database)
    try:
        found = sightings_of(opened, of_id)
    finally:
        opened.close()
    if as_json:
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    for target, items in sorted(found.items()):
        click.echo(f"{target}: {len(items)} sightings")
        for s in items:
            click.echo(f"  {s['id']} by {s['by']} ({s['collection']}, {s['tlp']}) count={s['count']} "
                       f"first_seen={s['first_seen']} last_seen={s['last_seen']}")


COMMANDS = [trace, sighting]
