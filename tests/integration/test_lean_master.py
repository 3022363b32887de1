"""The node's gunicorn master stays lean (issue 21: server memory): the web stack, the database
driver and the crypto library live in the workers only, and the API root is announced once every
worker can serve."""

from __future__ import annotations

from pathlib import Path

import psutil
from taxii2client.v21 import Collection

from tests.conftest import PASSWORDS, NodeProcess, new_indicator, provision

# shared objects only a process that imported them maps: SQLite (storage), cryptography (TLS, signatures)
_HEAVY = ("_sqlite3", "cryptography/hazmat/bindings/_rust")


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_master_holds_no_database_driver_or_crypto_only_its_workers_do(tmp_path):
    data = tmp_path / "us"
    provision("us", data)
    node = NodeProcess("us", data, extra_args=("--workers", "2", "--threads", "2")).start()
    try:
        master = psutil.Process(node.proc.pid)
        assert "exchange.node.master" in " ".join(master.cmdline())  # the serve command became the lean master, same pid
        workers = master.children()
        assert len(workers) == 2  # the URL was printed after both had built their app
        coll = Collection(node.collection_url("us-intel"), user="analyst", password=PASSWORDS["analyst"])
        status = coll.add_objects({"objects": [new_indicator(1)]})
        assert status.success_count == 1
        maps = _mapped(master.pid)
        assert not [lib for lib in _HEAVY if lib in maps], "the master imported the storage or crypto stack"
        for w in workers:
            assert all(lib in _mapped(w.pid) for lib in _HEAVY)
    finally:
        node.stop()
