"""``cti-exchange serve | account | collections``: run and administer a node."""

from __future__ import annotations

COMMANDS: list = []
