"""``cti-exchange load | sync | release | audit``: move intelligence between the nodes."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click
import orjson

from exchange.cli.node import DATA_DIR, DATABASE, INIT, LOG_FORMAT, WAIT_DB, _need_store
from exchange.errors import BadRequest, ConfigError, PartnerAuthError, PartnerError, PartnerTLSError, PartnerUnavailable
from exchange.stix import read_bundle

log = logging.getLogger("exchange.cli")


def _configure_logging(verbose: bool, fmt: str = "text") -> None:
    from exchange.node.logs import configure_logging  # not observe: the agent needs no Flask

    configure_logging(fmt, logging.DEBUG if verbose else logging.INFO)


@click.command()
@click.argument("node")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--collection", "collection_ref", help="Target collection (id or alias); default: the node's own collection.")
@click.option("--strict-validation", is_flag=True, help="Also run the full stix2 parser (pattern grammar).")
@click.option(
    "--on-conflict", type=click.Choice(["refuse", "skip", "new-version"]), default="refuse", show_default=True,
    help="Objects with a stored id and modified but other content: refuse the bundle, skip them, or write a corrected "
         "version with a fresh modified (objects this node created only).",
)
@DATA_DIR
@DATABASE
@INIT
def load(
    node: str, bundle: Path, collection_ref: str | None, strict_validation: bool, on_conflict: str, data_dir: Path | None,
    database: str | None, init: bool,
) -> None:
    """Load a STIX 2.1 BUNDLE into NODE's own collection (all or nothing), then release it under policy."""
    from exchange.node.ops import open_node
    from exchange.sharing.loading import load_and_release
    from exchange.stix import check_object, check_object_strict

    _need_store(data_dir, database, init=init)
    objects = read_bundle(bundle)
    check = check_object_strict if strict_validation else check_object
    problems = [(o, p) for o in objects if (p := check(o)) is not None]
    if problems:
        obj, problem = problems[0]
        oid = obj.get("id", "?") if isinstance(obj, dict) else "?"
        raise BadRequest(f"{bundle}: {len(problems)} of {len(objects)} objects are invalid; nothing loaded. First: {oid}: {problem}")
    opened = open_node(node, data_dir=data_dir, database=database, init=init)
    try:
        coll = opened.node.config.collection(collection_ref) if collection_ref else opened.node.config.own_collection
        if coll.role != "own" and collection_ref:
            raise BadRequest(f"load writes only to a node's own collection; {coll.alias!r} is a {coll.role} collection")
        from exchange.sharing.attribution import stix_now
        from exchange.sharing.lifecycle import resolve_conflicts

        objects = resolve_conflicts(opened, coll.id, objects, on_conflict, str(bundle), stix_now())  # corrections are versions
        outcome = load_and_release(opened, coll.id, objects, origin="local:cli")
        result = outcome.added
        if result.failures:
            first = result.failures[0]
            click.echo(f"warning: {len(result.failures)} objects conflict with stored versions; first: {first['id']}: {first['message']}", err=True)
    finally:
        opened.close()
    click.echo(f"loaded {len(objects)} objects into {coll.alias} ({result.added} new); {outcome.summary()}")


@click.command()
@click.argument("node")
@DATA_DIR
@DATABASE
@INIT
def release(node: str, data_dir: Path | None, database: str | None, init: bool) -> None:
    """Evaluate NODE's new objects under policy into each partner's read collection."""
    from exchange.node.ops import open_node
    from exchange.sharing.release import release_all

    _need_store(data_dir, database, init=init)
    opened = open_node(node, data_dir=data_dir, database=database, init=init)
    try:
        released = release_all(opened)
    finally:
        opened.close()
    for partner, r in released.items():
        click.echo(f"{partner}: {r.evaluated} evaluated, {r.shared} shared, {r.redacted} redacted, {r.withheld} withheld")


def _password(password_file: Path | None, password_stdin: bool, *, optional: bool = False) -> str:
    if password_file is not None:
        try:
            value = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BadRequest(f"--password-file {password_file}: {exc.strerror}") from exc
    elif password_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    else:
        value = os.environ.get("CTI_EXCHANGE_PARTNER_PASSWORD", "")
    if not value and not optional:
        raise BadRequest("no partner password: give --password-file, --password-stdin or CTI_EXCHANGE_PARTNER_PASSWORD")
    return value


class _Stopped(click.ClickException):
    """Ctrl-C: one line saying where the next run resumes; exit 130 (128 + SIGINT), as shells report it."""

    exit_code = 130


@click.command()
@click.argument("node")
@click.option("--partner", required=True, help="The partner to sync with (a name under partners: in node.yaml).")
@click.option("--partner-url", envvar="CTI_EXCHANGE_PARTNER_URL", required=True, help="The partner's API root URL (or discovery URL).")
@click.option("--user", help="Our account on the partner's node (default: this node's name).")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding that account's password.")
@click.option("--password-stdin", is_flag=True, help="Read that account's password from stdin.")
@click.option("--once", "mode", flag_value="once", default=True, help="One cycle, then exit (default).")
@click.option("--interval", type=click.FloatRange(0.1, 86400), help="Repeat every SECONDS until stopped.")
@click.option("--direction", type=click.Choice(["both", "pull", "push"]), default="both", show_default=True)
@click.option("--envelope-size", type=click.IntRange(1, 10000), default=500, show_default=True,
              help="Objects per pushed envelope (their origin signatures ride along, not counted).")
@click.option("--page-size", type=click.IntRange(1, 10000), default=1000, show_default=True, help="Objects per pulled page.")
@click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path), envvar="CTI_EXCHANGE_CA_FILE",
              help="CA bundle to verify the partner's certificate (https:// URLs; default: the system's; env CTI_EXCHANGE_CA_FILE).")
@click.option("--cert-file", type=click.Path(dir_okay=False, path_type=Path), envvar="CTI_EXCHANGE_CERT_FILE",
              help="Our client certificate for mutual TLS (PEM; env CTI_EXCHANGE_CERT_FILE).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), envvar="CTI_EXCHANGE_KEY_FILE",
              help="The client certificate's private key (PEM; env CTI_EXCHANGE_KEY_FILE).")
@click.option("--retries", type=click.IntRange(1, 100), default=8, show_default=True, help="Attempts per transfer on transient failures.")
@click.option("--verbose", "-v", is_flag=True)
@DATA_DIR
@DATABASE
@WAIT_DB
@INIT
@LOG_FORMAT
def sync(
    node: str, partner: str, partner_url: str, user: str | None, password_file: Path | None, password_stdin: bool,
    mode: str, interval: float | None, direction: str, envelope_size: int, page_size: int, ca_file: Path | None,
    cert_file: Path | None, key_file: Path | None, retries: int, verbose: bool, data_dir: Path | None, database: str | None,
    wait_db: float, init: bool, log_format: str,
) -> None:
    """Pull from and push to PARTNER under policy, incrementally and resumably.

    Over an https:// URL the partner's certificate is verified (--ca-file) and
    --cert-file/--key-file present our client certificate (mutual TLS; the password
    is then optional). Over http:// nothing whose IEP marking says
    encrypt_in_transit: must is pushed.
    """
    from exchange.node.ops import open_node
    from exchange.sharing.client import PartnerClient
    from exchange.sharing.sync import Backoff, describe_cycle, interrupted, record_cycle, run_cycle

    _configure_logging(verbose, log_format)
    _need_store(data_dir, database, init=init)
    if key_file is not None and cert_file is None:
        raise click.UsageError("--key-file needs --cert-file")
    cert = (str(cert_file), str(key_file)) if key_file else (str(cert_file) if cert_file else None)
    password = _password(password_file, password_stdin, optional=cert is not None)
    opened = open_node(node, data_dir=data_dir, database=database, wait=wait_db, init=init)
    if partner not in opened.node.config.partners:
        raise ConfigError(f"node {node!r} has no partner {partner!r} (known: {', '.join(opened.node.config.partners)})")
    client = PartnerClient.connect(partner_url, user or node, password, verify=str(ca_file) if ca_file else True, cert=cert)
    backoff = Backoff(attempts=retries)
    try:
        while True:
            try:
                summary = run_cycle(opened, partner, client, direction=direction, backoff=backoff,
                                    envelope_size=envelope_size, page_size=page_size, show_progress=sys.stderr.isatty())
                record_cycle(opened, partner)  # the node's /metrics reports the time since (sync lag)
                said = describe_cycle(summary)
                if interval is None or said != "nothing new":  # --once always says what it did; a repeating agent, when it did something
                    click.echo(f"sync {node}<->{partner}: {said}")
                log.debug("sync %s<->%s: %s", node, partner, summary)
            except KeyboardInterrupt:
                raise _Stopped(interrupted(opened, partner)) from None
            except PartnerTLSError as exc:
                raise click.ClickException(f"{exc} -- check --ca-file, --cert-file/--key-file and the partner URL") from exc
            except PartnerAuthError as exc:
                raise click.ClickException(f"{exc} -- check the account and its password (or client certificate) on the partner's node") from exc
            except PartnerUnavailable as exc:
                if interval is None:
                    raise click.ClickException(f"partner unavailable after {retries} attempts: {exc}") from exc
                log.error("partner unavailable after %d attempts: %s; next cycle in %.1fs", retries, exc, interval)
            except PartnerError as exc:
                if interval is None:
                    raise
                log.error("%s; next cycle in %.1fs", exc, interval)
            if interval is None:
                return
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                raise _Stopped(interrupted(opened, partner)) from None
    finally:
        client.close()
        opened.close()


@click.group()
def audit() -> None:
    """The node's hash-chained, signed audit log."""


# audit verify | show | export: exchange/cli/audit.py


COMMANDS = [load, release, sync, audit]


@click.command()
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), help="Keep both nodes' data in DIR for inspection.")
@click.option("--json", "as_json", is_flag=True, help="End with a machine-readable summary (JSON) on stdout.")
@click.option("--remote", is_flag=True, help="Drive nodes and sync agents that already run (docker-compose) instead of starting them.")
@click.option("--us-url", help="--remote: the US node's API root URL.")
@click.option("--rok-url", help="--remote: the ROK node's API root URL.")
@click.option(
    "--secrets", "secrets_dir", type=click.Path(file_okay=False, path_type=Path), help="--remote: credentials folder (DIR/<node>/<account>)."
)
@click.option("--us-data", type=click.Path(file_okay=False, path_type=Path), help="--remote: the US node's data folder (for its audit log).")
@click.option("--rok-data", type=click.Path(file_okay=False, path_type=Path), help="--remote: the ROK node's data folder.")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=180, show_default=True, help="--remote: how long to wait for the agents.")
@click.option("--us-database", help="--remote: the US node's database URL, if not the SQLite file in --us-data.")
@click.option("--rok-database", help="--remote: the ROK node's database URL, if not the SQLite file in --rok-data.")
@click.option("--plain-http", is_flag=True, help="Run the local nodes over plain HTTP instead of HTTPS with mutual TLS (a demo PKI in the work dir).")
@click.option("--keep-running", is_flag=True, help="Keep both nodes up after the demo (until Ctrl-C) and print their /ui/ web pages.")
def demo(
    keep: Path | None, as_json: bool, remote: bool, us_url: str | None, rok_url: str | None, secrets_dir: Path | None,
    us_data: Path | None, rok_data: Path | None, timeout: float, us_database: str | None, rok_database: str | None,
    plain_http: bool, keep_running: bool,
) -> None:
    """Run the demo exchange: US and ROK nodes, seeded, syncing under policy, then a leak check.

    Locally both nodes serve HTTPS with mutual TLS (a demo CA and certificates made
    by `pki init` in the work dir) unless --plain-http. With --remote, the
    credentials folder's pki/ (if present) verifies the nodes and holds the client certificates.
    """
    from exchange.demo.narrative import print_narrative
    from exchange.demo.run import run_demo, run_remote_demo, summary_json

    if remote:
        needed = (("--us-url", us_url), ("--rok-url", rok_url), ("--secrets", secrets_dir), ("--us-data", us_data), ("--rok-data", rok_data))
        missing = [n for n, v in needed if not v]
        if missing:
            raise click.UsageError(f"--remote needs {', '.join(missing)}")
        result = run_remote_demo(
            {"us": us_url, "rok": rok_url}, secrets_dir, {"us": us_data, "rok": rok_data}, timeout=timeout,  # type: ignore[arg-type,dict-item]
            databases={"us": us_database or None, "rok": rok_database or None},
        )
    else:
        from exchange.demo.hold import hold_nodes

        result = run_demo(keep, plain_http=plain_http, hold=(lambda r: hold_nodes(r, json_mode=as_json)) if keep_running else None)
    if not keep_running or remote:
        print_narrative(result, json_mode=as_json)
    if as_json:
        click.echo(summary_json(result))
    if not result["ok"]:
        raise click.ClickException(f"leak check FAILED: {len(result['leak_check']['leaks'])} leaks")


@click.command("demo-secrets")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def demo_secrets(directory: Path) -> None:
    """Random passwords for every configured account of both nodes, as DIRECTORY/<node>/<account> (kept if present)."""
    from exchange.demo.run import write_secrets

    written = write_secrets(directory)
    click.echo(f"{len(written)} credentials written under {directory}" if written else f"credentials already present under {directory}")


COMMANDS.append(demo_secrets)
COMMANDS.append(demo)


@click.command()
@click.option(
    "--data-dir", "data_dirs", multiple=True, required=True, type=click.Path(file_okay=False, path_type=Path),
    help="A node's data folder; repeat to report over both nodes.",
)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write a self-contained HTML page with charts.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
def report(data_dirs: tuple[Path, ...], html_path: Path | None, as_json: bool) -> None:
    """Summarise the commitment in practice from the nodes' audit logs."""
    from exchange.sharing.report import build_tally, read_logs, render_terminal
    from exchange.sharing.ui.render import render_report

    tally = build_tally(read_logs(data_dirs))
    built = tally.summary()
    if as_json:
        click.echo(orjson.dumps(built, option=orjson.OPT_INDENT_2).decode())
    else:
        render_terminal(built)
    if html_path is not None:
        tmp = html_path.with_name(html_path.name + ".tmp")
        tmp.write_text(render_report(built, tally.timeline_rows()), encoding="utf-8")
        tmp.replace(html_path)  # never a half-written page
        if not as_json:
            click.echo(f"HTML report written to {html_path}")


COMMANDS.append(report)
