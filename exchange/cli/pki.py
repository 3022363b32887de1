"""``cti-exchange pki init``: the demo CA and the node and partner certificates."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def pki() -> None:
    """Certificates for transport security (a demo CA; use your own CA in production)."""


@pki.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--nodes", default="us,rok", show_default=True, help="Comma-separated node names (each gets a server certificate).")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True, help="Validity of every certificate.")
@click.option("--name", "extra_names", multiple=True, metavar="HOST", help="Another DNS name or IP address for every server certificate; repeatable.")
@click.option("--force", is_flag=True, help="Replace an existing PKI in DIRECTORY.")
@click.option("--keep-existing", is_flag=True, help="If DIRECTORY already holds the complete PKI, keep it and exit 0.")
def pki_init(directory: Path, nodes: str, days: int, extra_names: tuple[str, ...], force: bool, keep_existing: bool) -> None:
    """Create a demo CA in DIRECTORY, a server certificate per node and a client certificate per partner account.

    Client certificates are issued for every account with a certificate_subject in
    the node's node.yaml, as DIRECTORY/<account>@<node>.crt/.key (e.g. rok@us: what
    the ROK node's sync agent presents to the US node).  Keys are written 0600.
    """
    from exchange.node.pki import init_pki

    names = [n.strip() for n in nodes.split(",") if n.strip()]
    written = init_pki(directory, names, days=days, force=force, keep_existing=keep_existing, extra_names=extra_names)
    if not written:
        click.echo(f"PKI already present in {directory}; kept")
        return
    certs = sorted(p.name for p in written if p.suffix == ".crt")
    click.echo(f"PKI written to {directory}: {', '.join(certs)} (keys 0600, valid {days} days)")


COMMANDS = [pki]
