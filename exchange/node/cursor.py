"""Stateless, tamper-evident, opaque keyset cursors for TAXII ``next`` (TAXII 2.1 s3.4).

A cursor is the position after the last row served, ``(date_added, seq)``, bound to
a digest of the request it continues (endpoint, collection, filters).  Any worker can
serve the next page; rows that share one ``date_added`` are ordered by ``seq`` so none
is skipped or repeated; a forged, truncated or re-targeted token is refused with 400.

The position is encrypted, not only signed: ``seq`` is the node-wide row id, so a
readable one would let a partner count what the node wrote to other collections
between two of its pages.  Token (v2), base64url without padding::

    version (1 byte, 2) | nonce (12 random bytes) | AES-256-GCM(date_added, seq as two
    signed 64-bit big-endian integers) with its 16-byte tag

60 characters whatever the position.  The key is HKDF-SHA256 of the node secret; the
associated data is the version byte and the request digest, so a token minted for one
request does not open for another.  Tokens of the old format (``base64(JSON).HMAC``,
before v2) are refused like any other invalid one: the client starts again without
``next``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
import struct
from collections.abc import Iterable

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from exchange.errors import BadRequest

VERSION = 2
_KEY_INFO = b"cti-exchange cursor v2"
_NONCE_BYTES = 12
_POSITION = struct.Struct(">qq")  # date_added (microseconds), seq
_TOKEN_BYTES = 1 + _NONCE_BYTES + _POSITION.size + 16  # version, nonce, ciphertext, GCM tag
_TOKEN_CHARS = -(-_TOKEN_BYTES * 4 // 3)  # base64url without padding
_B64URL = re.compile(r"[A-Za-z0-9_-]+")

INVALID = "invalid 'next' value: the next token is not valid for this request; start again without 'next'"


def request_digest(parts: Iterable[object]) -> str:
    """A short digest of what a page request selects (not including ``limit``/``next``)."""
    return hashlib.sha256(orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


def encode(secret: bytes, date_added: int, seq: int, digest: str) -> str:
    """The ``next`` token for the page after row ``(date_added, seq)``.

    ``ValueError`` if either does not fit a signed 64-bit integer (no row position does).
    """
    try:
        plain = _POSITION.pack(date_added, seq)
    except struct.error as exc:
        raise ValueError(f"cursor position out of range: {exc}") from None
    nonce = secrets.token_bytes(_NONCE_BYTES)
    header = bytes([VERSION])
    sealed = _aead(secret).encrypt(nonce, plain, header + digest.encode("utf-8"))
    return base64.urlsafe_b64encode(header + nonce + sealed).decode("ascii").rstrip("=")


def decode(secret: bytes, token: str, digest: str) -> tuple[int, int]:
    """``(date_added, seq)`` from a token, or ``BadRequest`` if it is forged, of an old
    format, or for another request (endpoint, collection, filters)."""
    if not isinstance(token, str) or len(token) != _TOKEN_CHARS or not _B64URL.fullmatch(token):
        raise BadRequest(INVALID)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise BadRequest(INVALID) from None
    if len(raw) != _TOKEN_BYTES or raw[0] != VERSION:
        raise BadRequest(INVALID)
    header, nonce, sealed = raw[:1], raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
    try:
        plain = _aead(secret).decrypt(nonce, sealed, header + digest.encode("utf-8"))
    except InvalidTag:  # forged, another node's secret, or minted for another request: the same to the client
        raise BadRequest(INVALID) from None
    date_added, seq = _POSITION.unpack(plain)
    return date_added, seq


@functools.lru_cache(maxsize=8)
def _aead(secret: bytes) -> AESGCM:
    """The AES-256-GCM cipher keyed from the node secret (cached: one node, one secret)."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(secret)
    return AESGCM(key)
