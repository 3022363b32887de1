"""The ``cti-exchange`` command line (click).

Every ``ExchangeError`` becomes one line on stderr and a non-zero exit; the
subcommands live in one module per job and are registered here.

Click commands only: argument parsing, output and exit codes. Everything a library
user would need lives in the layers below, which this package may import (node,
storage, policy, sharing, demo); nothing imports ``exchange.cli`` but ``__main__``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from exchange import __version__
from exchange.errors import ExchangeError


class _Group(click.Group):
    """A click group that turns our errors into one-line messages (exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ExchangeError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cti-exchange")
def main() -> None:
    """US-ROK cyber threat information-sharing exchange (TAXII 2.1 + STIX 2.1)."""


def _register() -> None:
    from exchange.cli import attribution, audit, exchange_cmds, importer, node, pki, policy, trace, verify

    for module in (node, exchange_cmds, policy, attribution, pki, importer, verify, audit, trace):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
