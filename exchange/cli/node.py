"""``cti-exchange serve | account | collections``: run and administer a node."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from exchange.errors import BadRequest, ConfigError

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The node's data folder (SQLite file, secrets).",
)
WAIT_DB = click.option(
    "--wait-db", type=click.FloatRange(0, 3600), default=0, envvar="CTI_EXCHANGE_WAIT_DB", show_default=True,
    help="Seconds to keep retrying while the database server is not reachable yet (env CTI_EXCHANGE_WAIT_DB).",
)
DATABASE = click.option(
    "--database", metavar="URL", envvar="CTI_EXCHANGE_DATABASE",
    help="A database URL (e.g. postgresql://user@host/db) instead of the SQLite file under --data-dir; env CTI_EXCHANGE_DATABASE.",
)
INIT = click.option(
    "--init", is_flag=True,
    help="Also make a new node database of an existing empty (0-byte) database file or of a database holding other tables "
         "than cti-exchange's; without it those are refused. A new data dir (no database file yet) is created either way.",
)


LOG_FORMAT = click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", envvar="CTI_EXCHANGE_LOG_FORMAT", show_default=True,
    help="Log lines on stderr as text or as JSON lines (one object a line; env CTI_EXCHANGE_LOG_FORMAT).",
)


def _need_store(data_dir: Path | None, database: str | None, *, init: bool = False, create: bool = False) -> None:
    """A store is named; a ``--data-dir`` that does not exist is refused unless ``--init`` (or ``create``: ``account add``)."""
    if data_dir is None and database is None:
        raise click.UsageError("give --data-dir DIR (or --database URL)")
    if database is None and data_dir is not None and not data_dir.exists() and not (init or create):
        raise ConfigError(f"--data-dir {data_dir}: no such folder (a typo?); `--init` or `cti-exchange account add` makes a new node there")


@click.command()
@click.argument("node")
@DATA_DIR
@DATABASE
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=6100, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free port).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Server worker processes.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 256), help="Threads per worker.")
@click.option(
    "--request-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
    help="Seconds a client has to send a whole request (head and body); later: 408 and disconnected.",
)
@click.option("--strict-validation", is_flag=True, help="Also run the full stix2 parser (pattern grammar) on every posted object.")
@click.option(
    "--accounts-from", type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Set each configured account's password from DIR/<account> (a secrets mount) before serving.",
)
@click.option("--certfile", "--cert-file", "certfile", type=click.Path(dir_okay=False, path_type=Path),
              envvar=["CTI_EXCHANGE_CERT_FILE", "CTI_EXCHANGE_CERTFILE"],
              help="Serve HTTPS only, with this server certificate (PEM; env CTI_EXCHANGE_CERT_FILE, old name CTI_EXCHANGE_CERTFILE).")
@click.option("--keyfile", "--key-file", "keyfile", type=click.Path(dir_okay=False, path_type=Path),
              envvar=["CTI_EXCHANGE_KEY_FILE", "CTI_EXCHANGE_KEYFILE"],
              help="The server certificate's private key (PEM; env CTI_EXCHANGE_KEY_FILE, old name CTI_EXCHANGE_KEYFILE).")
@click.option("--client-ca", type=click.Path(dir_okay=False, path_type=Path), envvar="CTI_EXCHANGE_CLIENT_CA",
              help="Mutual TLS: verify client certificates against this CA bundle; a certificate identifies the account "
                   "whose certificate_subject it has, and those accounts must present it (env CTI_EXCHANGE_CLIENT_CA).")
@click.option("--public-url", metavar="URL", envvar="CTI_EXCHANGE_PUBLIC_URL", callback=lambda _ctx, _param, value: _public_url(value),
              help="The base URL partners reach this node at, named in discovery (overrides node.yaml's public_url; "
                   "default: the address the server is bound to; env CTI_EXCHANGE_PUBLIC_URL).")
@LOG_FORMAT
@WAIT_DB
@INIT
def serve(
    node: str, data_dir: Path | None, database: str | None, host: str, port: int, workers: int, threads: int,
    strict_validation: bool, accounts_from: Path | None, certfile: Path | None, keyfile: Path | None,
    client_ca: Path | None, wait_db: float, request_timeout: float, public_url: str | None, init: bool, log_format: str,
) -> None:
    """Run NODE's TAXII 2.1 server (gunicorn); prints the API root URL.

    Without --certfile the node speaks plain HTTP and withholds every object whose
    IEP marking says encrypt_in_transit: must from all read endpoints.
    """
    from exchange.node.logs import configure_logging
    from exchange.node.master import MasterSpec, exec_master, listening_socket
    from exchange.node.ops import add_account, open_node
    from exchange.node.tls import check_files

    _need_store(data_dir, database, init=init)
    if certfile is None and (keyfile is not None or client_ca is not None):
        raise click.UsageError("--keyfile and --client-ca need --certfile (TLS)")
    check_files(certfile, keyfile, ca=client_ca)
    configure_logging(log_format)  # the checks' lines; the master configures its own (exec_master)
    opened = open_node(node, data_dir=data_dir, database=database, wait=wait_db, init=init)  # fail fast, before forking workers
    if accounts_from is not None:
        for acct in opened.node.config.accounts:
            path = accounts_from / acct.name
            if path.is_file():
                add_account(opened, acct.name, _read_password_file(path), [], [])
    api_root = opened.node.config.api_root.path
    opened.close()
    listener = listening_socket(host, port)  # a port in use: one line, exit 1 (not gunicorn's retries)
    tls = {"certfile": _text(certfile), "client_ca": _text(client_ca)}
    exec_master(MasterSpec(  # this process becomes a lean gunicorn master; each worker builds the app (exchange.node.master)
        fd=listener.detach(), api_root=api_root, workers=workers, threads=threads, request_timeout=request_timeout,
        keyfile=_text(keyfile), log_format=log_format, **tls,
        factory="exchange.sharing.background:data_dir_factory",
        factory_args=[node, _text(data_dir), database],
        factory_kwargs={"strict_validation": strict_validation, "tls": certfile is not None,
                        "client_certificates": client_ca is not None, "public_url": public_url, **tls},
    ))


def _text(path: Path | None) -> str | None:
    """A path option as the master's spec carries it (JSON text), ``None`` when not given."""
    return str(path) if path else None


def _public_url(value: str | None) -> str | None:
    from exchange.config import check_public_url

    try:
        return None if value is None else check_public_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--public-url'") from None


def _read_password_file(path: Path) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{path}: cannot read the password: {exc}") from exc
    if not value:
        raise BadRequest(f"{path}: the password file is empty")
    return value


@click.group()
def account() -> None:
    """Manage a node's accounts (passwords are stored only as salted hashes)."""


@account.command("add")
@click.argument("node")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), help="Read the password from a file (e.g. a secrets mount).")
@click.option("--read", "read", multiple=True, metavar="COLLECTION", help="Grant read on a collection (id or alias); repeatable.")
@click.option("--write", "write", multiple=True, metavar="COLLECTION", help="Grant write on a collection (id or alias); repeatable.")
@click.option("--partner", help="The partner this account stands for (a name under partners: in node.yaml).")
@DATA_DIR
@DATABASE
@INIT
def account_add(
    node: str, name: str, password_stdin: bool, password_file: Path | None, read: tuple[str, ...], write: tuple[str, ...],
    partner: str | None, data_dir: Path | None, database: str | None, init: bool,
) -> None:
    """Create or update account NAME on NODE."""
    import re

    from exchange.node.ops import add_account, open_node

    _need_store(data_dir, database, create=True)
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", name):
        raise BadRequest(f"account name {name!r}: use lower-case letters, digits, '-' and '_' (at most 63)")
    password = None
    if password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise BadRequest("--password-stdin: no password on stdin")
    elif password_file is not None:
        password = _read_password_file(password_file)
    opened = open_node(node, data_dir=data_dir, database=database, init=init)
    try:
        add_account(opened, name, password, list(read), list(write), partner=partner)
    finally:
        opened.close()
    click.echo(f"account {name!r} saved on node {node!r}" + (" (password set)" if password else ""))


@account.command("list")
@click.argument("node")
@DATA_DIR
@DATABASE
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def account_list(node: str, data_dir: Path | None, database: str | None, as_json: bool) -> None:
    """List NODE's accounts and their grants."""
    from exchange.node.ops import open_node

    _need_store(data_dir, database)
    opened = open_node(node, data_dir=data_dir, database=database)
    try:
        cfg = opened.node.config
        alias = {c.id: c.alias for c in cfg.collections}
        rows = [
            {
                "name": name,
                "password_set": has_pw,
                "partner": partner,
                "read": sorted(alias.get(c, c) for c in readable),
                "write": sorted(alias.get(c, c) for c in writable),
            }
            for name, has_pw, partner, readable, writable in opened.store.accounts()
        ]
    finally:
        opened.close()
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"accounts on {node}")
    for col in ("account", "password", "partner", "read", "write"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], "set" if r["password_set"] else "-", r["partner"] or "-", ", ".join(r["read"]), ", ".join(r["write"]))
    Console().print(table)


@click.command()
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@DATA_DIR
@DATABASE
def collections(node: str, as_json: bool, data_dir: Path | None, database: str | None) -> None:
    """List NODE's collections: id, alias, title, who may read and write.

    Without --data-dir, the grants come from node.yaml alone; with it, grants
    added by `account add` are included.
    """
    from exchange.config import load_node

    loaded = load_node(node)
    cfg = loaded.config
    readers: dict[str, set[str]] = {c.id: set() for c in cfg.collections}
    writers: dict[str, set[str]] = {c.id: set() for c in cfg.collections}
    if data_dir is not None or database is not None:
        from exchange.node.ops import open_node

        opened = open_node(node, data_dir=data_dir, database=database)
        try:
            for name, _has_pw, _partner, readable, writable in opened.store.accounts():
                for cid in readable:
                    readers.setdefault(cid, set()).add(name)
                for cid in writable:
                    writers.setdefault(cid, set()).add(name)
        finally:
            opened.close()
    else:
        for acct in cfg.accounts:
            for ref in acct.read:
                readers[cfg.collection(ref).id].add(acct.name)
            for ref in acct.write:
                writers[cfg.collection(ref).id].add(acct.name)
    rows = [
        {
            "id": c.id,
            "alias": c.alias,
            "title": c.title,
            "role": c.role,
            "partner": c.partner,
            "read": sorted(readers.get(c.id, ())),
            "write": sorted(writers.get(c.id, ())),
        }
        for c in cfg.collections
    ]
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.title}: API root /{cfg.api_root.path}/")
    for col in ("id", "alias", "title", "read", "write"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["id"], r["alias"], r["title"], ", ".join(r["read"]) or "-", ", ".join(r["write"]) or "-")
    Console().print(table)


COMMANDS = [serve, account, collections]
