"""Two real nodes as subprocesses on loopback, and the sync agent as a subprocess.

``pair``/``bare_pair`` serve plain HTTP; ``tls_pair`` (and ``_pair(..., tls=True)``)
serve HTTPS with mutual TLS under a demo PKI made by ``exchange.node.pki``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from exchange.demo.procs import NodeProcess, start_all, stop_all
from exchange.demo.run import Exchange, NodeHandle, load_bundle_file, seed_files, tls_args
from exchange.node.ops import add_account, open_node
from exchange.sharing.release import release_all

PASSWORDS = {
    "us": {"rok": "rok-account-on-us-node", "jp": "jp-account-on-us-node", "analyst": "us-analyst-password"},
    "rok": {"us": "us-account-on-rok-node", "jp": "jp-account-on-rok-node", "analyst": "rok-analyst-password"},
}
PARTNER = {"us": "rok", "rok": "us"}


def provision(name: str, data: Path, *, seed: bool = True) -> None:
    opened = open_node(name, data_dir=data)
    try:
        for account, password in PASSWORDS[name].items():
            add_account(opened, account, password, [], [])
        if seed:
            for path in seed_files(name):
                load_bundle_file(opened, path)
            release_all(opened)
    finally:
        opened.close()


@dataclass
class Pair:
    """Both nodes running, their data dirs, and a way to run each side's sync agent."""

    tmp: Path
    procs: dict[str, NodeProcess]
    pki: Path | None = None  # HTTPS with mutual TLS under this demo PKI; plain HTTP if None

    @property
    def exchange(self) -> Exchange:
        return Exchange({n: NodeHandle(n, p.url, p.data_dir, PASSWORDS[n], p) for n, p in self.procs.items()}, pki=self.pki)

    def tls_options(self, node: str) -> list[str]:
        """``sync`` options for ``node``'s agent: the CA and its client certificate at the partner."""
        if self.pki is None:
            return []
        stem = self.pki / f"{node}@{PARTNER[node]}"
        return ["--ca-file", str(self.pki / "ca.crt"), "--cert-file", f"{stem}.crt", "--key-file", f"{stem}.key"]

    def password_file(self, node: str) -> Path:
        """The file holding ``node``'s password on its partner's node."""
        partner = PARTNER[node]
        path = self.tmp / f"{node}-on-{partner}.pw"
        path.write_text(PASSWORDS[partner][node] + "\n")
        return path

    def sync_cmd(self, node: str, *extra: str) -> list[str]:
        partner = PARTNER[node]
        return [
            sys.executable, "-m", "exchange", "sync", node, "--partner", partner,
            "--partner-url", self.procs[partner].url, "--password-file", str(self.password_file(node)),
            "--data-dir", str(self.procs[node].data_dir), *self.tls_options(node), *extra,
        ]

    def sync(self, node: str, *extra: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        out = subprocess.run(self.sync_cmd(node, *extra), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise AssertionError(f"sync {node} failed ({out.returncode}): {out.stderr[-2000:]}")
        return out

    def restart(self, node: str) -> NodeProcess:
        old = self.procs[node]
        old.stop()
        port = int(old.url.split(":")[2].split("/")[0])
        self.procs[node] = NodeProcess(node, old.data_dir, extra_args=old.extra_args, port=port).start()
        return self.procs[node]


def _pair(tmp: Path, seed: bool, *, tls: bool = False) -> Iterator[Pair]:
    procs: dict[str, NodeProcess] = {}
    pki = None
    if tls:
        from exchange.node.pki import init_pki

        pki = tmp / "pki"
        init_pki(pki, ("us", "rok"), days=2)
    try:
        for name in ("us", "rok"):
            data = tmp / name
            provision(name, data, seed=seed)
            procs[name] = NodeProcess(name, data, extra_args=tls_args(pki, name) if pki else ())
        start_all(procs.values())  # side by side
        yield Pair(tmp, procs, pki)
    finally:
        stop_all(procs.values())


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """Both nodes, seeded with the ATT&CK, advisory and exercise content."""
    yield from _pair(tmp_path, seed=True)


@pytest.fixture
def bare_pair(tmp_path: Path) -> Iterator[Pair]:
    """Both nodes with accounts but no content."""
    yield from _pair(tmp_path, seed=False)


@pytest.fixture
def tls_pair(tmp_path: Path) -> Iterator[Pair]:
    """Both nodes with accounts but no content, serving HTTPS with mutual TLS (demo PKI in ``pair.pki``)."""
    yield from _pair(tmp_path, seed=False, tls=True)


@pytest.fixture(scope="module")
def synced_pair(tmp_path_factory) -> Iterator[Pair]:
    """Seeded nodes after each side ran its sync agent once (pull and push)."""
    tmp = tmp_path_factory.mktemp("synced")
    for p in _pair(tmp, seed=True):
        p.sync("us", "--once")
        p.sync("rok", "--once")
        p.sync("us", "--once")  # picks up what ROK released after it received ours
        yield p


def load_and_release(pair: Pair, node: str, objs: list[dict]) -> None:
    """Write ``objs`` into ``node``'s own collection (in process, its real database) and release them."""
    opened = open_node(node, data_dir=pair.procs[node].data_dir)
    try:
        opened.store.add_objects(opened.node.config.own_collection.id, objs)
        release_all(opened)
    finally:
        opened.close()
