"""Stateless, tamper-evident keyset cursors for TAXII ``next`` (TAXII 2.1 s3.4).

A cursor is the position after the last row served, ``(date_added, seq)``,
plus a digest of the request it continues (endpoint, collection, filters),
signed with the node's secret.  Any worker can serve the next page; rows that
share one ``date_added`` are ordered by ``seq`` so none is skipped or repeated;
a forged, truncated or re-targeted token is refused with 400.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

import orjson

from exchange.errors import BadRequest

_MAC_BYTES = 16


def request_digest(parts: Iterable[object]) -> str:
    """A short digest of what a page request selects (not including ``limit``/``next``)."""
    return hashlib.sha256(orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


def encode(secret: bytes, date_added: int, seq: int, digest: str) -> str:
    """The ``next`` token for the page after row ``(date_added, seq)``."""
    payload = orjson.dumps([date_added, seq, digest])
    mac = hmac.new(secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return _b64(payload) + "." + _b64(mac)


def decode(secret: bytes, token: str, digest: str) -> tuple[int, int]:
    """``(date_added, seq)`` from a token, or ``BadRequest`` if it is forged or for another request."""
    if not isinstance(token, str) or len(token) > 512 or token.count(".") != 1:
        raise BadRequest("invalid 'next' value")
    body, mac = token.split(".")
    try:
        payload = _unb64(body)
        given = _unb64(mac)
    except ValueError:
        raise BadRequest("invalid 'next' value") from None
    expected = hmac.new(secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]
    if not hmac.compare_digest(given, expected):
        raise BadRequest("invalid 'next' value: signature does not match")
    try:
        date_added, seq, token_digest = orjson.loads(payload)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise BadRequest("invalid 'next' value") from None
    if token_digest != digest:
        raise BadRequest("'next' belongs to a request with other filters or another collection")
    if not isinstance(date_added, int) or not isinstance(seq, int):
        raise BadRequest("invalid 'next' value")
    return date_added, seq


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(raw) != text:  # one spelling per token: no set padding bits, no stray length
        raise ValueError("not canonical base64url")
    return raw
