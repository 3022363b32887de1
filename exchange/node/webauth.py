"""Authentication for pages served next to the TAXII API (the node's ``/ui/``).

The same credentials as every TAXII endpoint: HTTP Basic checked against the
account's salted hash (with the failed-login throttle), or, on a node served
with mutual TLS, the verified client certificate (``exchange.node.server``).
An unauthenticated request gets the node's 401 with a ``WWW-Authenticate``
challenge. Layers above the node use this module instead of medallion's ``auth``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medallion import auth

from exchange.node.accounts import Account


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Flask view: it runs only for an authenticated account (401 otherwise)."""
    return auth.login_required(view)


def current_account() -> Account | None:
    """The account the current request authenticated as (inside a ``login_required`` view)."""
    user = auth.current_user()
    return user if isinstance(user, Account) else None


def is_analyst(account: Account) -> bool:
    """Whether an account has the analyst role: a local account, not a partner's (``partner`` unset)."""
    return account.partner is None
