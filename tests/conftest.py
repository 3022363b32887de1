"""Shared fixtures: real node processes on 127.0.0.1 ephemeral ports, real data dirs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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


@dataclass
class NodeProcess:
    """One ``cti-exchange serve`` subprocess in its own process group."""

    node: str
    data_dir: Path
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None
    url: str = ""
    base: str = ""
    log: list[str] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> "NodeProcess":
        cmd = [sys.executable, "-m", "exchange", "serve", self.node, "--data-dir", str(self.data_dir), "--port", "0", *self.extra_args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=REPO
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"node {self.node} exited: {''.join(self.log)}")
                continue
            self.log.append(line)
            if line.startswith("API root: "):
                self.url = line.split(": ", 1)[1].strip()
                self.base = self.url.rsplit("/", 2)[0] + "/"
                # drain further output in the background so the pipe never fills
                import threading

                threading.Thread(target=self._drain, daemon=True).start()
                return self
        raise RuntimeError(f"node {self.node} did not start: {''.join(self.log)}")

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def kill9(self) -> None:
        """SIGKILL the whole server (master and workers) at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def collection_url(self, alias: str) -> str:
        from exchange.config import load_node

        return f"{self.url}collections/{load_node(self.node).config.collection(alias).id}/"


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
