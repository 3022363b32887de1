"""``cti-exchange audit verify | show | export``: check, list and export the node's signed audit log."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import orjson

from exchange.cli.exchange_cmds import _password, audit
from exchange.cli.node import DATA_DIR, DATABASE, _need_store
from exchange.errors import BadRequest, ConfigError


@contextmanager
def _open(data_dir: Path | None, database: str | None) -> Iterator[tuple[Any, Any]]:
    """``(store, node config)`` of an existing node database, read-only use (nothing is created)."""
    from exchange.config import load_node
    from exchange.storage.store import DB_FILE, Store

    _need_store(data_dir, database)
    if database is None and not (Path(data_dir) / DB_FILE).exists():  # type: ignore[arg-type]
        raise ConfigError(f"{data_dir}: no node data here ({DB_FILE} is missing)")
    store = Store.open(data_dir=data_dir, database=database)
    try:
        name = store.get_meta("node")
        yield store, (load_node(name).config if name else None)
    finally:
        store.close()


def _remote_checkpoints(data_dir: Path | None, database: str | None, url: str, partner: str | None, opts: dict) -> list:
    from exchange.node.ops import open_node
    from exchange.sharing.client import PartnerClient
    from exchange.sharing.receipts import held_by_partner

    with _open(data_dir, database) as (_store, cfg):
        if cfg is None:
            raise ConfigError("this database names no node")
        node = cfg.node
    cert = (str(opts["cert_file"]), str(opts["key_file"])) if opts["key_file"] else (str(opts["cert_file"]) if opts["cert_file"] else None)
    password = _password(opts["password_file"], opts["password_stdin"], optional=cert is not None)
    opened = open_node(node, data_dir=data_dir, database=database)
    try:
        partner = partner or _only_partner(opened.node.config)
        client = PartnerClient.connect(url, opts["user"] or node, password, verify=str(opts["ca_file"]) if opts["ca_file"] else True, cert=cert)
        try:
            return held_by_partner(opened, partner, client)
        finally:
            client.close()
    finally:
        opened.close()


def _only_partner(cfg: Any) -> str:
    with_receipts = [p for p, pc in cfg.partners.items() if pc.receipts]
    if len(with_receipts) != 1:
        raise click.UsageError(f"give --partner (one of: {', '.join(with_receipts) or 'none'})")
    return with_receipts[0]


def _local_checkpoints(partner_dir: Path, node: str) -> list:
    from exchange.node.receipts import held_checkpoints

    with _open(partner_dir, None) as (_store, pcfg):
        if pcfg is None or node not in pcfg.partners:
            raise ConfigError(f"{partner_dir}: not the data of a partner of {node!r}")
        return held_checkpoints(_store, pcfg, of=node)


@audit.command("verify")
@DATA_DIR
@DATABASE
@click.option("--checkpoints-from", "checkpoints_from", metavar="PARTNER_URL",
              help="Also prove the chain extends every checkpoint the partner's node holds (read over TAXII).")
@click.option("--partner-data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also prove the chain extends every checkpoint held in the partner's data folder.")
@click.option("--partner", help="--checkpoints-from: which partner (default: the only one with a receipts collection).")
@click.option("--user", help="--checkpoints-from: our account on the partner's node (default: this node's name).")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--password-stdin", is_flag=True)
@click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cert-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path))
def audit_verify(data_dir: Path | None, database: str | None, checkpoints_from: str | None, partner_data_dir: Path | None,
                 partner: str | None, **opts: Any) -> None:
    """Check the audit chain and its signed head; with a partner, every checkpoint it holds.

    Any edited, removed, inserted or reordered entry, a trimmed tail, a head not
    signed by the node key, or a history that no longer extends a checkpoint the
    partner holds fails with the first bad entry or checkpoint named.
    """
    from exchange.node.audit_key import key_path, signer_for
    from exchange.node.receipts import audited_collections
    from exchange.storage import audit as audit_log

    if checkpoints_from and partner_data_dir:
        raise click.UsageError("give --checkpoints-from or --partner-data-dir, not both")
    checkpoints: list = []
    with _open(data_dir, database) as (store, cfg):
        node = cfg.node if cfg is not None else None
    if partner_data_dir is not None:
        checkpoints = _local_checkpoints(partner_data_dir, node or "")
    elif checkpoints_from:
        checkpoints = _remote_checkpoints(data_dir, database, checkpoints_from, partner, opts)
    signer = signer_for(data_dir, create=False)
    with _open(data_dir, database) as (store, cfg):
        head = audit_log.current_head(store)
        if signer is None and head is not None:
            raise ConfigError(f"no audit signing key at {key_path(data_dir) or '(no data folder)'}: the signed head cannot be checked")
        verdict = audit_log.verify(store, check=signer.verify if signer else None,
                                   audited=audited_collections(cfg) if cfg is not None else (), checkpoints=checkpoints)
    if not verdict.ok:
        raise click.ClickException(f"audit chain BROKEN after {verdict.entries} good entries: {verdict.problem}")
    extra = f"; extends all {verdict.checkpoints} checkpoints the partner holds" if (checkpoints_from or partner_data_dir) else ""
    click.echo(f"audit chain OK: {verdict.entries} entries, head signed{extra}" if verdict.entries else f"audit chain OK: 0 entries{extra}")


def _filters(f: Any) -> Any:
    f = click.option("--since", metavar="T", help="Only entries at or after T (a STIX timestamp, e.g. 2026-12-01T00:00:00Z).")(f)
    f = click.option("--event", "events", multiple=True, metavar="E", help="Only this event (repeatable): share, withhold, pull, receipt, ...")(f)
    f = click.option("--object", "object_id", metavar="ID", help="Only entries about this STIX object id.")(f)
    f = click.option("--partner", metavar="P", help="Only entries about this partner.")(f)
    f = click.option("--after-seq", type=click.IntRange(0), default=0, help="Only entries after this sequence number (incremental export).")(f)
    return f


def _since(value: str | None) -> int | None:
    from exchange.stix import parse_timestamp

    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise BadRequest(f"--since {value!r}: {exc}") from exc


def _selected(store: Any, since: str | None, events: tuple[str, ...], object_id: str | None, partner: str | None, after_seq: int) -> Iterator[dict]:
    from exchange.storage import audit as audit_log

    unknown = [e for e in events if e not in audit_log.EVENTS]
    if unknown:
        raise BadRequest(f"--event {unknown[0]!r}: not an audit event (known: {', '.join(sorted(audit_log.EVENTS))})")
    return audit_log.select_entries(store, since=_since(since), event=events, object_id=object_id, partner=partner, after_seq=after_seq)


def json_line(node: str | None, e: dict) -> bytes:
    """One entry as a JSON Lines record for a SIEM (``at``: RFC 3339; ``at_us``: µs since the epoch)."""
    from exchange.stix import format_timestamp

    return orjson.dumps({
        "seq": e["seq"], "at": format_timestamp(e["at"]), "at_us": e["at"], "node": node, "event": e["event"],
        "partner": e["partner"], "object_id": e["object_id"], "version": e["version"], "decision": e["decision"],
        "clauses": e["clauses"], "detail": e["detail"], "hash": e["hash"],
    }) + b"\n"


@audit.command("show")
@DATA_DIR
@DATABASE
@_filters
@click.option("--json-lines", "json_lines", is_flag=True, help="One JSON object per entry instead of a table.")
def audit_show(data_dir: Path | None, database: str | None, since: str | None, events: tuple[str, ...], object_id: str | None,
               partner: str | None, after_seq: int, json_lines: bool) -> None:
    """List audit entries (every event kind, also those written by other parts, e.g. withdraw)."""
    from rich.console import Console
    from rich.table import Table

    from exchange.stix import format_timestamp

    with _open(data_dir, database) as (store, cfg):
        node = cfg.node if cfg is not None else None
        rows = _selected(store, since, events, object_id, partner, after_seq)
        if json_lines:
            out = sys.stdout.buffer
            for e in rows:
                out.write(json_line(node, e))
            out.flush()
            return
        table = Table(title=f"audit log of {node or data_dir}")
        for col in ("seq", "at", "event", "partner", "object", "version", "decision", "clauses", "detail"):
            table.add_column(col, overflow="fold")
        n = 0
        for e in rows:
            n += 1
            detail = e["detail"].get("reason") or ", ".join(f"{k}={v}" for k, v in sorted(e["detail"].items()) if k not in ("type", "tlp"))[:120]
            table.add_row(str(e["seq"]), format_timestamp(e["at"]), e["event"], e["partner"] or "", e["object_id"] or "", e["version"] or "",
                          e["decision"] or "", ", ".join(e["clauses"]), str(detail))
        Console(width=200 if not sys.stdout.isatty() else None).print(table)
        click.echo(f"{n} entries")


@audit.command("export")
@DATA_DIR
@DATABASE
@_filters
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE (replaced whole) instead of stdout.")
def audit_export(data_dir: Path | None, database: str | None, since: str | None, events: tuple[str, ...], object_id: str | None,
                 partner: str | None, after_seq: int, output: Path | None) -> None:
    """Export audit entries as JSON Lines (one object per line, for SIEM ingestion)."""
    with _open(data_dir, database) as (store, cfg):
        node = cfg.node if cfg is not None else None
        rows = _selected(store, since, events, object_id, partner, after_seq)
        if output is None:
            out = sys.stdout.buffer
            for e in rows:
                out.write(json_line(node, e))
            out.flush()
            return
        tmp = output.with_name(output.name + ".tmp")
        n = 0
        with tmp.open("wb") as fh:
            for e in rows:
                fh.write(json_line(node, e))
                n += 1
        tmp.replace(output)
    click.echo(f"{n} entries written to {output}", err=True)


COMMANDS: list = []  # the commands above are subcommands of the ``audit`` group (exchange_cmds)
