"""A small demonstration PKI (``cti-exchange pki init DIR``), built with ``cryptography``.

One CA signs, for each node, a server certificate and a client certificate per
account that ``node.yaml`` maps to a certificate (``certificate_subject``)::

    DIR/ca.crt, DIR/ca.key                 the demo CA (key 0600)
    DIR/us.crt, DIR/us.key                 the US node's server certificate: SAN us-node, us, localhost,
                                           127.0.0.1, ::1 (the compose service name and loopback)
    DIR/rok@us.crt, DIR/rok@us.key         the client certificate the ROK node's sync agent presents to
                                           the US node (subject CN=rok@us, the account ``rok`` there)
    ...

Keys are ECDSA P-256, written 0600.  Existing files are never replaced
without ``force``.  This is a demo and test PKI: a real deployment uses each
partner's own CA and keeps the CA key off the nodes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exchange.errors import BadRequest, ConfigError

__all__ = ["Issued", "init_pki", "issue", "new_ca", "planned_files", "write_key", "write_cert"]

CA_NAME = "cti-exchange demo CA"
DEFAULT_DAYS = 365
_SKEW = dt.timedelta(minutes=5)  # not-before slightly in the past: clocks of the two nodes differ a little


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_ca(name: str = CA_NAME, *, days: int = DEFAULT_DAYS, not_before: dt.datetime | None = None) -> Issued:
    """A self-signed CA certificate (path length 0: it signs only end-entity certificates)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cti-exchange")])
    start = not_before or (_now() - _SKEW)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    subject: str,
    *,
    server_names: Sequence[str] = (),
    client: bool = False,
    days: int = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """An end-entity certificate signed by ``ca``.

    ``subject``: an RFC 4514 name (``CN=rok@us``); ``server_names``: DNS names and
    IP addresses for the subject alternative name (a server certificate);
    ``client``: usable as a TLS client certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - _SKEW)
    end = not_after or (start + dt.timedelta(days=days))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_names else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if not usages:
        raise BadRequest("a certificate needs server names or client use")
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=True, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for name in dict.fromkeys(server_names):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def server_names(node: str, extra: Iterable[str] = ()) -> list[str]:
    """What a node's server certificate names: its compose service, its name, loopback, and ``extra``."""
    return [f"{node}-node", node, "localhost", "127.0.0.1", "::1", *extra]


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """A PEM private key, created 0600 (never readable by others, not even for a moment)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(path, data, 0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _client_accounts(node: str) -> list[tuple[str, str]]:
    """``(account, certificate subject)`` of a node's accounts that authenticate by certificate."""
    from exchange.config import load_node

    return [(a.name, a.certificate_subject) for a in load_node(node).config.accounts if a.certificate_subject]


def planned_files(directory: Path, nodes: Sequence[str]) -> list[Path]:
    """Every file ``init_pki`` writes for ``nodes``."""
    d = Path(directory)
    out = [d / "ca.crt", d / "ca.key"]
    for node in nodes:
        out += [d / f"{node}.crt", d / f"{node}.key"]
        for account, _subject in _client_accounts(node):
            out += [d / f"{account}@{node}.crt", d / f"{account}@{node}.key"]
    return out


def init_pki(
    directory: Path, nodes: Sequence[str] = ("us", "rok"), *, days: int = DEFAULT_DAYS, force: bool = False,
    keep_existing: bool = False, extra_names: Sequence[str] = (),
) -> list[Path]:
    """Create the demo CA, a server certificate per node and the partner accounts' client certificates.

    Returns the files written.  Refuses (``ConfigError``) to replace any existing
    file unless ``force``; with ``keep_existing`` a complete existing set is kept
    as it is (nothing written), for a setup step that runs at every start.
    """
    if not nodes:
        raise BadRequest("give at least one node")
    if days < 1:
        raise BadRequest("--days must be at least 1")
    d = Path(directory)
    files = planned_files(d, nodes)
    present = [f for f in files if f.exists()]
    if present and not force:
        if keep_existing and len(present) == len(files):
            return []
        raise ConfigError(f"{present[0]} already exists; use --force to replace the PKI in {d}")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {d}: {exc.strerror or exc}") from None
    ca = new_ca(days=days)
    written: list[Path] = []

    def save(stem: str, issued: Issued) -> None:
        write_key(d / f"{stem}.key", issued.key)
        write_cert(d / f"{stem}.crt", issued.cert)
        written.extend([d / f"{stem}.crt", d / f"{stem}.key"])

    try:
        save("ca", ca)
        for node in nodes:
            save(node, issue(ca, f"CN={node}-node", server_names=server_names(node, extra_names), days=days))
            for account, subject in _client_accounts(node):
                save(f"{account}@{node}", issue(ca, subject, client=True, days=days))
    except OSError as exc:
        raise ConfigError(f"cannot write the PKI in {d}: {exc.strerror or exc}") from None
    return written
