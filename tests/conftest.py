"""Shared fixtures: real node processes on 127.0.0.1 ephemeral ports, real data dirs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.procs import NodeProcess

__all__ = ["NodeProcess", "PASSWORDS", "new_indicator", "provision"]

PASSWORDS = {
    "analyst": "analyst-password-123",
    "rok": "rok-partner-password",
    "us": "us-partner-password",
    "jp": "jp-partner-password",
}


def new_indicator(i: int = 0, *, modified: str = "2024-01-01T00:00:00.000Z", marking: str | None = None, **extra) -> dict:
    obj = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2024-01-01T00:00:00.000Z",
        "modified": modified,
        "name": f"test indicator {i}",
        "pattern": f"[ipv4-addr:value = '198.51.100.{i % 250}']",
        "pattern_type": "stix",
        "valid_from": "2024-01-01T00:00:00Z",
    }
    if marking:
        obj["object_marking_refs"] = [marking]
    obj.update(extra)
    return obj


def provision(node: str, data_dir: Path, accounts: dict[str, str] | None = None) -> None:
    """Set the passwords of the node's configured accounts (in-process, real DB file)."""
    from exchange.node import add_account, open_node

    opened = open_node(node, data_dir=data_dir)
    try:
        names = [a.name for a in opened.node.config.accounts]
        for name in names:
            password = (accounts or PASSWORDS).get(name)
            if password:
                add_account(opened, name, password, [], [])
    finally:
        opened.close()


@pytest.fixture
def us_node(tmp_path: Path) -> Iterator[NodeProcess]:
    data = tmp_path / "us-data"
    provision("us", data)
    proc = NodeProcess("us", data).start()
    yield proc
    proc.stop()
