"""Transport security helpers shared by the server, the sync agent and the PKI (no Flask, no taxii2client).

* certificate subjects: RFC 4514 distinguished names, normalised so that the
  ``certificate_subject`` of an account in ``node.yaml`` and the subject of a
  presented client certificate compare exactly;
* ``CertificateMap``: the client certificate of a mutual-TLS connection -> the
  account it stands for (with a small cache keyed by the DER bytes);
* ``check_files``: one-line errors for unreadable, mismatched, not yet valid
  or expired certificate and key files, before a server or agent starts;
* ``explain_ssl_error``: a readable reason for an ``ssl`` failure (wrong CA,
  expired certificate, refused client certificate, ...).
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from collections.abc import Iterable
from pathlib import Path

from exchange.config import normalise_subject
from exchange.errors import ConfigError

__all__ = [
    "CertificateMap", "check_files", "classify_ssl_error", "explain_ssl_error", "normalise_subject", "server_context", "subject_of_der",
]


def subject_of_der(der: bytes) -> str:
    """The normalised subject of a DER-encoded certificate."""
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


class CertificateMap:
    """Which account a verified client certificate authenticates (``certificate_subject`` in node.yaml)."""

    def __init__(self, subjects: dict[str, str]) -> None:
        """``subjects``: normalised subject -> account name."""
        self._by_subject = dict(subjects)
        self._cache: dict[bytes, tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_accounts(cls, accounts: Iterable) -> CertificateMap:
        return cls({a.certificate_subject: a.name for a in accounts if getattr(a, "certificate_subject", None)})

    def accounts_with_certificates(self) -> frozenset[str]:
        return frozenset(self._by_subject.values())

    def lookup(self, der: bytes) -> tuple[str, str | None]:
        """``(subject, account or None)`` for a client certificate in DER form."""
        with self._lock:
            hit = self._cache.get(der)
        if hit is not None:
            return hit
        subject = subject_of_der(der)
        found = (subject, self._by_subject.get(subject))
        with self._lock:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[der] = found
        return found


def _load_cert(path: Path, what: str):  # type: ignore[no-untyped-def]
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{what} {path}: not a PEM certificate") from None


def check_validity(path: Path, what: str, *, now: dt.datetime | None = None) -> None:
    """``ConfigError`` if the (first) certificate in ``path`` is not valid at ``now``."""
    cert = _load_cert(path, what)
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise ConfigError(
            f"{what} {path} ({cert.subject.rfc4514_string()}) expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if cert.not_valid_before_utc > now:
        raise ConfigError(
            f"{what} {path} ({cert.subject.rfc4514_string()}) is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )


def check_files(certfile: Path | None, keyfile: Path | None, *, ca: Path | None = None, role: str = "server") -> None:
    """One-line ``ConfigError`` unless the certificate, its key and the CA bundle load and are in date."""
    if certfile is None and keyfile is not None:
        raise ConfigError(f"a {role} key file needs its certificate file too")
    if certfile is not None:
        check_validity(Path(certfile), f"{role} certificate")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT if role == "client" else ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
        except FileNotFoundError as exc:
            raise ConfigError(f"{role} certificate/key: {exc.filename}: no such file") from None
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{role} certificate {certfile} and key {keyfile or '(in the certificate file)'} do not load together: "
                f"{getattr(exc, 'reason', None) or exc}"
            ) from None
    if ca is not None:
        _load_cert(Path(ca), "CA bundle")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"CA bundle {ca}: {getattr(exc, 'reason', None) or exc}") from None


def server_context(certfile: str, keyfile: str | None, client_ca: str | None) -> ssl.SSLContext:
    """The server's TLS context: TLS 1.2+, and with ``client_ca`` client certificates verified against it.

    Client certificates are *optional* at the TLS layer (analysts and health checks
    log in with passwords); a presented certificate must verify against
    ``client_ca`` or the handshake fails, and accounts mapped to a certificate
    subject must present theirs (enforced per request, see ``exchange.node.server``).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    if client_ca:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


# OpenSSL reasons and alerts -> what a person should check
_REASONS = (
    ("certificate has expired", "the partner's certificate has expired"),
    ("certificate is not yet valid", "the partner's certificate is not valid yet"),
    ("self-signed certificate", "the partner's certificate is not signed by the configured CA (--ca-file)"),
    ("unable to get local issuer certificate", "the partner's certificate is not signed by the configured CA (--ca-file)"),
    ("unable to get issuer certificate", "the partner's certificate is not signed by the configured CA (--ca-file)"),
    ("hostname mismatch", "the partner's certificate does not name this host"),
    ("ip address mismatch", "the partner's certificate does not name this address"),
    ("alert certificate expired", "the partner refused our client certificate: it has expired"),
    ("alert unknown ca", "the partner refused our client certificate: not signed by a CA it trusts"),
    ("alert bad certificate", "the partner refused our client certificate"),
    ("alert certificate required", "the partner requires a client certificate (--cert-file/--key-file)"),
    ("alert certificate unknown", "the partner refused our client certificate"),
    ("alert handshake failure", "TLS handshake refused by the partner"),
    ("alert protocol version", "no TLS version in common with the partner"),
    ("wrong version number", "the partner does not speak TLS on this port (is the URL http:// ?)"),
    ("record layer failure", "the partner does not speak TLS on this port (is the URL http:// ?)"),
)


def explain_ssl_error(exc: BaseException) -> str:
    """A readable one-line reason for a TLS failure (walks the exception's causes for the ssl error)."""
    return classify_ssl_error(exc)[0]


def classify_ssl_error(exc: BaseException) -> tuple[str, bool]:
    """``(reason, fatal)``: fatal for certificate and protocol problems that a retry cannot fix
    (wrong CA, expired or refused certificate, not TLS at all); not fatal for anything else
    (e.g. the connection closed mid-handshake while the partner restarts)."""
    seen: set[int] = set()
    texts: list[str] = []
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        texts.append(str(cur))
        for arg in getattr(cur, "args", ()):
            if isinstance(arg, BaseException):
                texts.append(str(arg))
                inner = getattr(arg, "reason", None)
                if inner is not None:
                    texts.append(str(inner))
        cur = cur.__cause__ or cur.__context__
    blob = " ".join(texts).lower()
    for needle, meaning in _REASONS:
        if needle in blob:
            return meaning, True
    if "certificate verify failed" in blob:
        return "the partner's certificate could not be verified against the configured CA (--ca-file)", True
    inner = [t for t in texts if t and "(_ssl.c:" in t]
    first = (inner or [t for t in texts if t] or [type(exc).__name__])[-1]
    return first.splitlines()[0][:200], False
