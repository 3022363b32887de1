"""The key that signs this node's audit head: one adapter, so the signing key can move.

For now an Ed25519 key in the node's data folder (``audit-signing-key.pem``,
mode 0600), made on first use, never in the database.  When the node signing
keys of the partner-trust work land, ``signer_for`` returns the node's own
signer instead (``exchange.node.signing.load_node_signer``); nothing else
changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.errors import ConfigError
from exchange.storage.audit import HeadSigner

KEY_FILE = "audit-signing-key.pem"
KEY_DIR_ENV = "CTI_EXCHANGE_AUDIT_KEY_DIR"  # where the key lives when the node has no data folder (PostgreSQL)


def key_path(data_dir: Path | None) -> Path | None:
    """Where the node's audit key is (``None``: nowhere configured)."""
    if data_dir is not None:
        return Path(data_dir) / KEY_FILE
    env = os.environ.get(KEY_DIR_ENV)
    return Path(env) / KEY_FILE if env else None


def signer_for(data_dir: Path | None, *, create: bool = True) -> HeadSigner | None:
    """The node's head signer: its key file in ``data_dir`` (made, 0600, if missing and ``create``)."""
    path = key_path(data_dir)
    if path is None:
        return None
    if not path.exists():
        if not create:
            return None
        _create(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the audit signing key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: the audit signing key must be an Ed25519 key")
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def verify(data: bytes, sig: bytes) -> bool:
        try:
            public.verify(sig, data)
        except InvalidSignature:
            return False
        return True

    return HeadSigner(key_id="ed25519-" + hashlib.sha256(raw).hexdigest()[:16], sign=key.sign, verify=verify)


def _create(path: Path) -> None:
    """Write a new key without ever replacing one (several workers may start at once)."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made it first: theirs is kept
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
