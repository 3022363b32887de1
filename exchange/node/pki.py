"""A small demonstration PKI (``cti-exchange pki init DIR``), built with ``cryptography``.

One CA signs, for each node, a server certificate and a client certificate per
account that ``node.yaml`` maps to a certificate (``certificate_subject``)::

    DIR/ca.crt, DIR/ca.key                 the demo CA (key 0600)
    DIR/us.crt, DIR/us.key                 the US node's server certificate: SAN us-node, us, localhost,
                                           127.0.0.1, ::1 (the compose service name and loopback)
    DIR/rok@us.crt, DIR/rok@us.key         the client certificate the ROK node's sync agent presents to
                                           the US node (subject CN=rok@us, the account ``rok`` there)
    ...

    DIR/us-signing.crt, DIR/us-signing.key the US node's Ed25519 origin-signing key (``exchange.node.signing``):
                                           keyUsage digitalSignature only, the node's STIX identity as a
                                           ``urn:stix:identity--...`` URI; never used for TLS
    DIR/ca.crl                             the CA's revocation list, once a key is revoked (``revoke``)

TLS keys are ECDSA P-256, signing keys Ed25519, written 0600.  Existing files are never replaced
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
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exchange.errors import BadRequest, ConfigError

__all__ = [
    "Issued", "init_pki", "issue", "issue_signing", "new_ca", "planned_files", "revoke", "rotate_signing", "write_key", "write_cert",
]

CA_NAME = "cti-exchange demo CA"
DEFAULT_DAYS = 365
_SKEW = dt.timedelta(minutes=5)  # not-before slightly in the past: clocks of the two nodes differ a little


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


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
        _leaf(ca, x509.Name.from_rfc4514_string(subject), key, start, end, key_agreement=True)
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


def _leaf(ca: Issued, subject: x509.Name, key: Any, start: dt.datetime, end: dt.datetime, *, key_agreement: bool) -> x509.CertificateBuilder:
    """An end-entity certificate issued by ``ca``: not a CA, keyUsage digitalSignature (critical), key agreement for TLS."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=key_agreement, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )


def issue_signing(
    ca: Issued, node: str, identity: str, *, days: int = DEFAULT_DAYS, not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A node's origin-signing certificate: an Ed25519 key, keyUsage digitalSignature only (critical), no TLS use,
    bound to the node's STIX ``identity`` by a ``urn:stix:`` URI in the subject alternative name."""
    from exchange.node.signing import identity_uri

    key = ed25519.Ed25519PrivateKey.generate()
    start = not_before or (_now() - _SKEW)
    end = not_after or (start + dt.timedelta(days=days))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node} origin signing"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cti-exchange")])
    cert = (
        _leaf(ca, subject, key, start, end, key_agreement=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity_uri(identity))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return Issued(cert, key)


def _node_identity(node: str) -> str:
    from exchange.config import load_node

    return load_node(node).config.identity


def load_ca(directory: Path) -> Issued:
    """The CA of a PKI folder (``ca.crt``, ``ca.key``)."""
    d = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the CA in {d}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{d / 'ca.key'}: not the demo CA's ECDSA key")
    return Issued(cert, key)


def rotate_signing(directory: Path, node: str, *, days: int = DEFAULT_DAYS) -> tuple[Path, Path | None]:
    """A new origin-signing key for ``node``; the old certificate is kept as ``<node>-signing-<serial>.crt``.

    Signatures made with the old key stay valid (each verifies with the certificate embedded in it, valid when it
    was made); revoke the old certificate (``revoke``) only if the key was compromised.
    """
    d = Path(directory)
    ca = load_ca(d)
    old = d / f"{node}-signing.crt"
    kept = None
    if old.is_file():
        serial = x509.load_pem_x509_certificate(old.read_bytes()).serial_number
        kept = d / f"{node}-signing-{serial:x}.crt"
        os.replace(old, kept)
    issued = issue_signing(ca, node, _node_identity(node), days=days)
    write_key(d / f"{node}-signing.key", issued.key)
    write_cert(old, issued.cert)
    return old, kept


def revoke(directory: Path, cert_file: Path, *, at: dt.datetime | None = None) -> Path:
    """Add ``cert_file`` to the CA's revocation list ``ca.crl`` (revoked from ``at``, default now); returns the CRL path.

    Signatures made with that key at or after ``at`` are invalid; earlier ones stay valid.
    """
    d = Path(directory)
    ca = load_ca(d)
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the certificate {cert_file}: {getattr(exc, 'strerror', None) or exc}") from None
    when = at or _now()
    crl_path = d / "ca.crl"
    entries: dict[int, dt.datetime] = {}
    if crl_path.is_file():
        for entry in x509.load_pem_x509_crl(crl_path.read_bytes()):
            entries[entry.serial_number] = entry.revocation_date_utc
    entries[cert.serial_number] = when
    now = _now()
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject).last_update(now).next_update(now + dt.timedelta(days=30))
    for serial, date in sorted(entries.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date).build()
        )
    _write(crl_path, builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), 0o644)  # type: ignore[arg-type]
    return crl_path


def server_names(node: str, extra: Iterable[str] = ()) -> list[str]:
    """What a node's server certificate names: its compose service, its name, loopback, and ``extra``."""
    return [f"{node}-node", node, "localhost", "127.0.0.1", "::1", *extra]


def write_key(path: Path, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
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
        out += [d / f"{node}.crt", d / f"{node}.key", d / f"{node}-signing.crt", d / f"{node}-signing.key"]
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
        missing = [f for f in files if not f.exists()]
        if keep_existing and all(f.name.endswith(("-signing.crt", "-signing.key")) for f in missing):
            return _add_signing_keys(d, nodes, days)  # a PKI from before origin signatures: add the signing keys
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
            save(f"{node}-signing", issue_signing(ca, node, _node_identity(node), days=days))
            for account, subject in _client_accounts(node):
                save(f"{account}@{node}", issue(ca, subject, client=True, days=days))
    except OSError as exc:
        raise ConfigError(f"cannot write the PKI in {d}: {exc.strerror or exc}") from None
    return written


def _add_signing_keys(d: Path, nodes: Sequence[str], days: int) -> list[Path]:
    """Issue the missing ``<node>-signing`` keys with the existing CA."""
    ca = load_ca(d)
    written: list[Path] = []
    for node in nodes:
        if (d / f"{node}-signing.crt").exists() and (d / f"{node}-signing.key").exists():
            continue
        issued = issue_signing(ca, node, _node_identity(node), days=days)
        write_key(d / f"{node}-signing.key", issued.key)
        write_cert(d / f"{node}-signing.crt", issued.cert)
        written += [d / f"{node}-signing.crt", d / f"{node}-signing.key"]
    return written
