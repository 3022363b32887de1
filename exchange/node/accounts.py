"""Account passwords: salted scrypt hashes and a safe verification cache.

Passwords are stored only as ``scrypt$N$r$p$salt$hash`` strings (RFC 7914
parameters, 16-byte random salt).  Verifying scrypt on every TAXII request
would cost tens of milliseconds per page, so a successful verification is
cached for a short time under an HMAC of the credentials keyed by a per-process
random secret: the cache never holds the password, and a changed password
misses it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass, field

from exchange.errors import BadRequest

_N, _R, _P = 2**14, 8, 1
_MIN_PASSWORD = 12


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password``."""
    if len(password) < _MIN_PASSWORD:
        raise BadRequest(f"password too short: at least {_MIN_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash string."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest + "==")
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.urlsafe_b64decode(salt + "=="),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class Account:
    """An authenticated account and what it may do, per collection id."""

    name: str
    readable: frozenset[str]
    writable: frozenset[str]
    partner: str | None = None

    def can_read(self, collection_id: str) -> bool:
        return collection_id in self.readable

    def can_write(self, collection_id: str) -> bool:
        return collection_id in self.writable

    def can_see(self, collection_id: str) -> bool:
        return collection_id in self.readable or collection_id in self.writable


@dataclass
class VerificationCache:
    """Successful logins cached by HMAC(secret, name NUL password) for ``ttl`` seconds."""

    ttl: float = 60.0
    max_entries: int = 4096
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _entries: dict[bytes, tuple[float, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _key(self, name: str, password: str, stored: str) -> bytes:
        msg = b"\0".join((name.encode("utf-8", "surrogatepass"), password.encode("utf-8", "surrogatepass"), stored.encode()))
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def check(self, name: str, password: str, stored: str) -> bool:
        """True if these credentials match ``stored``; slow scrypt only on a cache miss."""
        key = self._key(name, password, stored)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] > now:
                return True
        if not verify_password(password, stored):
            return False
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[key] = (now + self.ttl, name)
        return True


@dataclass(frozen=True)
class LoginThrottle:
    """Failed logins per account name: ``limit`` failures within ``window`` seconds lock the name.

    While locked, ``retry_after`` is the number of seconds until the oldest of
    those ``limit`` failures is ``window`` seconds old (the server answers 429
    with that ``Retry-After`` without checking the password); then one more
    attempt is allowed, and so on, so a guesser gets at most ``limit`` tries
    per window.  Every name counts the same, configured or not, so the answers
    do not tell which accounts exist.  A successful login does not reset the
    count: a partner's agent logging in every few seconds would otherwise give
    a guesser a fresh budget each time.

    Pure: the failures live in the node's database (``Store.note_failed_login``),
    shared by all workers; this says which of them count and for how long.
    Times are integer microseconds since the epoch.
    """

    limit: int = 10
    window: float = 300.0

    @staticmethod
    def key(name: str) -> str:
        """The name as counted and looked up: its first 256 characters (a 10,000-character name is
        one short row), NUL replaced (PostgreSQL text cannot hold it; no account name has one)."""
        return name[:256].replace("\x00", "\ufffd")

    @property
    def window_us(self) -> int:
        return int(self.window * 1_000_000)

    def since(self, now: int) -> int:
        """Failures after this time (µs) count."""
        return now - self.window_us

    def retry_after(self, locking_failure: int | None, now: int) -> int:
        """0 if the name may try to log in, else the seconds to wait.

        ``locking_failure``: the time of the ``limit``-th newest failure within the
        window (``Store.login``), or ``None`` if there are fewer.
        """
        if locking_failure is None:
            return 0
        left = locking_failure + self.window_us - now
        return max(1, math.ceil(left / 1_000_000)) if left > 0 else 0
