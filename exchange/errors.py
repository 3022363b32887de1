"""One exception tree for the exchange; each type carries its HTTP status.

Third-party errors are translated once, at the boundary that meets them
(``raise ... from exc``).  A *policy denial* is not an exception: the policy
engine returns a decision with a reason.
"""

from __future__ import annotations


class ExchangeError(Exception):
    """Root of every error cti-exchange raises on purpose."""

    status: int = 500
    title: str = "ExchangeError"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class ConfigError(ExchangeError):
    """A node configuration or policy file is invalid (names file and key/line)."""

    status = 500
    title = "ConfigError"


class BadRequest(ExchangeError):
    """The request is malformed: bad filter, bad ``next`` cursor, bad envelope (TAXII 2.1 s3.6)."""

    status = 400
    title = "BadRequest"


class Unauthorized(ExchangeError):
    status = 401
    title = "Unauthorized"


class Forbidden(ExchangeError):
    status = 403
    title = "Forbidden"


class NotFound(ExchangeError):
    status = 404
    title = "NotFound"


class NotAcceptable(ExchangeError):
    status = 406
    title = "NotAcceptable"


class PayloadTooLarge(ExchangeError):
    status = 413
    title = "PayloadTooLarge"


class VersionConflict(ExchangeError):
    """Objects with the ``id`` and ``modified`` of stored ones but other content (STIX 2.1 s3.6): a correction needs a new version."""

    status = 409
    title = "Conflict"


class UnsupportedMediaType(ExchangeError):
    status = 415
    title = "UnsupportedMediaType"


class UnprocessableEntity(ExchangeError):
    status = 422
    title = "UnprocessableEntity"


class RequestTimeout(ExchangeError):
    """The client did not send its whole request within the server's request timeout."""

    status = 408
    title = "RequestTimeout"


class TooManyRequests(ExchangeError):
    """Too many failed logins for an account: wait ``retry_after`` seconds."""

    status = 429
    title = "TooManyRequests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageError(ExchangeError):
    """The database failed underneath us."""

    status = 500
    title = "StorageError"


class AuditChainBroken(StorageError):
    """The audit log does not end at its signed head (entries removed or replaced): nothing more is appended to it,
    so that new entries and a new signed head cannot hide what was cut (``cti-exchange audit verify`` says what)."""

    status = 500
    title = "AuditChainBroken"


class PartnerError(ExchangeError):
    """A partner node answered badly or could not be reached (sync agent)."""

    status = 502
    title = "PartnerError"


class PartnerUnavailable(PartnerError):
    """Transient: the partner is unreachable, timed out, or answered 5xx. Retry with backoff."""

    status = 503
    title = "PartnerUnavailable"


class PartnerAuthError(PartnerError):
    """Fatal: the partner refused our credentials (401) or our rights (403)."""

    status = 401
    title = "PartnerAuthError"


class PartnerTLSError(PartnerAuthError):
    """Fatal: TLS with the partner failed (its certificate does not verify against our CA bundle, has
    expired or names another host; or it refused our client certificate).  Not retried."""

    status = 502
    title = "PartnerTLSError"
