"""Run a node server as a child process (demo, tests, benchmarks).

Each server runs in its own process group so that it (gunicorn master and
workers) can be stopped, or killed with SIGKILL, as one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from exchange.errors import ExchangeError


@dataclass
class NodeProcess:
    """One ``cti-exchange serve`` child process on 127.0.0.1 and an ephemeral port."""

    node: str
    data_dir: Path
    extra_args: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen | None = None
    url: str = ""
    base: str = ""
    log: list[str] = field(default_factory=list)

    def start(self, timeout: float = 60.0) -> NodeProcess:
        """Start the server and wait until it prints its API root URL."""
        start_all([self], timeout)
        return self

    def _spawn(self) -> None:
        cmd = [
            sys.executable, "-m", "exchange", "serve", self.node, "--data-dir", str(self.data_dir),
            "--host", self.host, "--port", str(self.port), *self.extra_args,
        ]
        self.log = []
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True
        )

    def _await_ready(self, deadline: float, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise ExchangeError(f"node {self.node} exited: {''.join(self.log).strip()}")
                continue
            self.log.append(line)
            if line.startswith("API root: "):
                self.url = line.split(": ", 1)[1].strip()
                self.base = self.url.rsplit("/", 2)[0] + "/"
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.kill9()
        raise ExchangeError(f"node {self.node} did not start within {timeout:.0f}s: {''.join(self.log).strip()}")

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole server (master and workers) at once."""
        if self.running:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), SIGKILL after 15 s."""
        stop_all([self])

    def _terminate(self) -> None:
        if self.running:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)

    def _wait_or_kill(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self.kill9()

    def collection_url(self, alias: str) -> str:
        from exchange.config import load_node

        return f"{self.url}collections/{load_node(self.node).config.collection(alias).id}/"


def start_all(procs: Iterable[NodeProcess], timeout: float = 60.0) -> None:
    """Start several servers at once and wait until each prints its API root URL (within ``timeout`` seconds).

    They start side by side (each takes about a second to import and bind), not one after the other.
    If one fails, those already started are stopped and the error is raised.
    """
    procs = list(procs)
    for p in procs:
        p._spawn()
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p._await_ready(deadline, timeout)
    except BaseException:
        stop_all(procs)
        raise


def stop_all(procs: Iterable[NodeProcess], timeout: float = 15.0) -> None:
    """Graceful stop (SIGTERM) of several servers at once: each gets ``timeout`` seconds to exit, then SIGKILL.

    The servers wind down together (a gunicorn server takes about a second), not one after the other.
    """
    procs = list(procs)
    for p in procs:
        p._terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        p._wait_or_kill(deadline)
