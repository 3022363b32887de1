"""``cti-exchange import``: indicators from CSV or plain lists into a node's own collection, released under policy."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from exchange.cli.node import DATA_DIR, DATABASE, INIT, _need_store
from exchange.sharing.importer import FIELDS, FORMATS, TLP_CHOICES


@click.command("import")
@click.argument("node")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tlp", required=True, type=click.Choice(TLP_CHOICES, case_sensitive=False), help="The TLP 2.0 marking of every object made.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="csv (a header row), text (one indicator a line, defanged or not), stix (a bundle's indicators); auto: by content.")
@click.option("--source-name", help="Where the indicators come from (default: the file's name); part of each indicator's id.")
@click.option("--source-url", help="Where FILE was published: in the import's report, with FILE's SHA-256.")
@click.option("--about", multiple=True, metavar="NAME_OR_ID",
              help="What the indicators indicate: an intrusion set, malware, ... of the node's own collection by name, alias, "
                   "ATT&CK id (G0032) or STIX id; repeatable.")
@click.option("--valid-days", type=click.IntRange(1, 36500), default=365, show_default=True,
              help="Each indicator's valid_until: this many days after its first import.")
@click.option("--columns", metavar="FIELD=COLUMN,...",
              help=f"CSV column names for the known fields ({', '.join(FIELDS)}), e.g. value=indicator,type=kind.")
@click.option("--dry-run", is_flag=True, help="Convert and report, write nothing.")
@click.option("--output", "output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the import's STIX 2.1 bundle to this file.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"indicators", "created", "updated", "unchanged", "refused": [{"line", "value", "reason"}]}.')
@DATA_DIR
@DATABASE
@INIT
def import_(
    node: str, file: Path, tlp: str, fmt: str, source_name: str | None, source_url: str | None, about: tuple[str, ...],
    valid_days: int, columns: str | None, dry_run: bool, output: Path | None, as_json: bool, data_dir: Path | None,
    database: str | None, init: bool,
) -> None:
    """Import indicators from FILE (CSV or a plain list) into NODE's own collection, then release them under policy.

    Each row is one STIX 2.1 indicator created by the node's identity, marked --tlp, grouped
    in one report with --source-name/--source-url. Importing the same row again changes
    nothing; a changed row becomes a new version. Rows that cannot be imported are listed
    (line, value, reason); a file that cannot be read writes nothing.
    """
    from exchange.node.ops import open_node
    from exchange.sharing.importer import ImportOptions, import_file, parse_columns, read_rows

    _need_store(data_dir, database, init=init)
    options = ImportOptions(tlp=tlp.lower(), fmt=fmt, source_name=source_name, source_url=source_url, about=about,
                            valid_days=valid_days, columns=parse_columns(columns), dry_run=dry_run)
    read_rows(file, options)  # an unreadable file fails before the node is opened: nothing written
    opened = open_node(node, data_dir=data_dir, database=database, init=init)
    try:
        result = import_file(opened, file, options)
    finally:
        opened.close()
    if output is not None and result.objects:
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_bytes(orjson.dumps(result.bundle(), option=orjson.OPT_INDENT_2))
        tmp.replace(output)
    if as_json:
        click.echo(orjson.dumps(result.as_json()).decode())
    else:
        for r in result.refused:
            click.echo(f"refused line {r.line}: {r.value!r}: {r.reason}", err=True)
        where = opened.node.config.own_collection.alias
        click.echo(
            f"{'would import' if dry_run else 'imported'} {result.indicators} indicators into {where} "
            f"({result.created} created, {result.updated} updated, {result.unchanged} unchanged, {len(result.refused)} refused)"
            + (f"; {result.loaded.summary()}" if result.loaded is not None else "")
        )
    if not result.indicators and result.refused:
        raise click.ClickException(f"{file}: no indicator imported ({len(result.refused)} rows refused)")


COMMANDS = [import_]
