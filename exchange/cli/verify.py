"""``cti-exchange verify``: who signed each object version of a bundle or a TAXII collection."""

from __future__ import annotations

import os
from pathlib import Path

import click
import orjson

from exchange.errors import BadRequest


def _objects_from_url(url: str, user: str | None, password: str, verify: bool | str, cert: tuple[str, str] | None) -> list[dict]:
    """Every object version of a TAXII 2.1 collection, from its objects URL (``.../collections/<id>/objects/``)."""
    from exchange.sharing.client import PartnerClient

    base, sep, rest = url.partition("/collections/")
    ref = rest.split("/", 1)[0]
    if not sep or not ref:
        raise BadRequest(f"{url}: expected a TAXII collection URL such as https://host/us/collections/<id>/objects/")
    client = PartnerClient(base + "/", user or "", password, verify=verify, cert=cert)
    try:
        return [o for page in client.pages(ref) for o in page.objects]
    finally:
        client.close()


def _objects_from_file(path: Path) -> list[dict]:
    from exchange.stix import read_bundle

    return read_bundle(path)


@click.command("verify")
@click.argument("bundle_or_url")
@click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The CA certificate(s) that issue the partners' signing certificates (PEM; default: $CTI_EXCHANGE_PKI_DIR/ca.crt).")
@click.option("--crl", "crls", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A revocation list of that CA (PEM or DER); repeatable (default: ca.crl beside --ca-file, if present).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--user", help="Account on the node (a URL).")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding that account's password.")
@click.option("--password-stdin", is_flag=True, help="Read that account's password from stdin.")
@click.option("--tls-ca-file", type=click.Path(dir_okay=False, path_type=Path),
              help="CA bundle to verify the node's TLS certificate (https:// URLs; default: --ca-file).")
@click.option("--cert-file", type=click.Path(dir_okay=False, path_type=Path), help="Client certificate for mutual TLS (PEM).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), help="The client certificate's private key (PEM).")
def verify(
    bundle_or_url: str, ca_file: Path | None, crls: tuple[Path, ...], as_json: bool, user: str | None, password_file: Path | None,
    password_stdin: bool, tls_ca_file: Path | None, cert_file: Path | None, key_file: Path | None,
) -> None:
    """Check the origin signatures of a STIX bundle file or a TAXII collection's objects URL.

    Reports per object version its signer, valid / invalid / unsigned, and for a redacted copy the version it
    was derived from. Exits 1 if any signature is invalid.
    """
    from exchange.cli.exchange_cmds import _password
    from exchange.node.signing import PKI_ENV, Verifier, verify_report

    if ca_file is None:
        if not os.environ.get(PKI_ENV):
            raise BadRequest(f"give --ca-file (the CA that issues the signing certificates) or set {PKI_ENV}")
        ca_file = Path(os.environ[PKI_ENV]) / "ca.crt"
    if not crls and (ca_file.parent / "ca.crl").is_file():
        crls = (ca_file.parent / "ca.crl",)
    verifier = Verifier.from_files(ca_file, crls)
    if bundle_or_url.lower().startswith(("http://", "https://")):
        if bool(cert_file) != bool(key_file):
            raise BadRequest("--cert-file and --key-file go together")
        cert = (str(cert_file), str(key_file)) if cert_file and key_file else None
        password = _password(password_file, password_stdin, optional=cert is not None)
        objs = _objects_from_url(bundle_or_url, user, password, str(tls_ca_file or ca_file), cert)
    else:
        objs = _objects_from_file(Path(bundle_or_url))
    report = verify_report(objs, verifier)
    reasons = report.pop("_reasons")
    if as_json:
        click.echo(orjson.dumps(report).decode())
    else:
        for row, why in zip(report["objects"], reasons, strict=True):
            line = f"{row['status']:<8} {row['id']} {row['modified'] or '-'}"
            if row["signer"]:
                line += f" signer {row['signer']}"
            if row["derived_from"]:
                line += f" derived from {row['derived_from'].get('id')} {row['derived_from'].get('modified')}"
            if why:
                line += f" ({why})"
            click.echo(line)
        click.echo(f"{report['valid']} valid, {report['invalid']} invalid, {report['unsigned']} unsigned")
    if report["invalid"]:
        raise SystemExit(1)


COMMANDS = [verify]
