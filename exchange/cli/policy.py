"""``cti-exchange policy ...``: check, explain and lint sharing policies."""

from __future__ import annotations

import click


@click.group()
def policy() -> None:
    """Sharing policies: check a bundle, explain a decision, lint the files."""


COMMANDS = [policy]
