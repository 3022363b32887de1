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
    """Create a demo CA in DIRECTORY, a server certificate and an origin-signing key per node, and a client certificate per partner account.

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


@pki.command("rotate")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("node")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True, help="Validity of the new signing certificate.")
def pki_rotate(directory: Path, node: str, days: int) -> None:
    """A new origin-signing key for NODE (DIRECTORY/<node>-signing.key/.crt); the old certificate is kept aside.

    Signatures made with the old key stay valid: each verifies with the certificate valid when it was made.
    """
    from exchange.node.pki import rotate_signing

    new, kept = rotate_signing(directory, node, days=days)
    click.echo(f"new signing key {new}" + (f"; previous certificate kept as {kept}" if kept else ""))


@pki.command("revoke")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("certificate", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--at", "at", help="Revoked from this RFC 3339 time (default: now); signatures made from then on are invalid.")
def pki_revoke(directory: Path, certificate: Path, at: str | None) -> None:
    """Revoke CERTIFICATE in the CA's revocation list DIRECTORY/ca.crl (signatures made at or after --at are invalid)."""
    import datetime as dt

    from exchange.errors import BadRequest
    from exchange.node.pki import revoke
    from exchange.stix import parse_timestamp

    when = None
    if at is not None:
        try:
            when = dt.datetime.fromtimestamp(parse_timestamp(at) / 1e6, dt.UTC)
        except ValueError as exc:
            raise BadRequest(f"--at: {exc}") from None
    click.echo(f"revocation list written: {revoke(directory, certificate, at=when)}")


COMMANDS = [pki]
