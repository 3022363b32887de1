#!/usr/bin/env python3
"""Where a push's writes go: the WAL pages of one 500-object envelope, by table and index, at growing N (issue 21).

Not a test.  For each N it makes a US node (SQLite, real files) holding N indicators in its own
collection, then POSTs ``--reps`` more envelopes of ``--envelope`` new indicators to the node's
TAXII app (``exchange.node.server.create_app``, Flask's test client: the push path with its input
checks, audit entry and durable commit, without HTTP).  Before each timed envelope the WAL is
checkpointed and truncated and automatic checkpoints are off, so after it the WAL holds exactly the
pages that envelope's commit wrote; each frame's page number is mapped to its B-tree (``dbstat``).
The smallest N is the reference in the same run: figures are per envelope, ratios against it.

    python bench/wal_bench.py                      # N = 10,000 and 100,000, 5 envelopes each
    python bench/wal_bench.py --sizes 1000,10000,100000 --reps 3 --json out.json
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import shutil
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_bench import make_indicators  # noqa: E402

from exchange.node.ops import add_account, open_node  # noqa: E402
from exchange.node.server import create_app  # noqa: E402
from exchange.storage.store import DB_FILE  # noqa: E402

PASSWORD = "wal-bench-analyst-123"
TAXII = "application/taxii+json;version=2.1"


def _frames(wal: Path) -> collections.Counter:
    """Page number -> frames of that page in a WAL file (format: sqlite.org/fileformat.html#the_write_ahead_log)."""
    data = wal.read_bytes() if wal.exists() else b""
    out: collections.Counter = collections.Counter()
    if len(data) < 32:
        return out
    page_size = struct.unpack(">I", data[8:12])[0]
    off = 32
    while off + 24 + page_size <= len(data):
        out[struct.unpack(">I", data[off : off + 4])[0]] += 1
        off += 24 + page_size
    return out


def _btree_of(db: Path) -> dict[int, str]:
    conn = sqlite3.connect(db)
    try:
        return {pageno: name for name, pageno in conn.execute("SELECT name, pageno FROM dbstat")}
    finally:
        conn.close()


def _checkpoint(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def run_size(n: int, envelope: int, reps: int, seed: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"wal-bench-{n}-"))
    try:
        data = root / "data"
        opened = open_node("us", data_dir=data)
        add_account(opened, "analyst", PASSWORD, [], [])
        own = opened.node.config.own_collection
        objs = make_indicators(n + envelope * (reps + 1), seed)
        for i in range(0, n, 1000):
            opened.store.add_objects(own.id, objs[i : min(i + 1000, n)], origin="local:bench")
        # automatic checkpoints off for this process's connections: the WAL keeps every page each commit wrote
        opened.store.engine.dispose()
        from sqlalchemy import event

        @event.listens_for(opened.store.engine, "connect")
        def _no_autocheckpoint(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")

        client = create_app(opened.node, opened.store).test_client()
        auth = "Basic " + base64.b64encode(f"analyst:{PASSWORD}".encode()).decode()
        headers = {"Authorization": auth, "Content-Type": TAXII, "Accept": TAXII}
        url = f"/{opened.node.config.api_root.path}/collections/{own.id}/objects/"
        db, wal = data / DB_FILE, data / (DB_FILE + "-wal")
        per: list[dict] = []
        for k in range(reps + 1):  # the first envelope warms the app and the page cache: not counted
            body = orjson.dumps({"objects": objs[n + k * envelope : n + (k + 1) * envelope]})
            opened.store.engine.dispose()
            _checkpoint(db)
            t0 = time.perf_counter()
            resp = client.post(url, data=body, headers=headers)
            took = time.perf_counter() - t0
            if resp.status_code != 202 or resp.get_json().get("success_count") != envelope:
                raise SystemExit(f"push failed at N={n}: {resp.status_code} {resp.data[:300]!r}")
            frames = _frames(wal)
            if k == 0:
                continue
            names = _btree_of(db)
            by: collections.Counter = collections.Counter()
            for page, count in frames.items():
                by[names.get(page, "(freelist or new)")] += count
            per.append({"ms": took * 1000, "frames": sum(frames.values()), "by": dict(by)})
        opened.close()
        page_size = 4096
        frames_median = statistics.median(p["frames"] for p in per)
        btrees = sorted({b for p in per for b in p["by"]})
        return {
            "n": n, "envelope": envelope, "reps": reps,
            "ms_median": statistics.median(p["ms"] for p in per),
            "frames_median": frames_median, "wal_mib": frames_median * (page_size + 24) / 2**20,
            "by": {b: statistics.median(p["by"].get(b, 0) for p in per) for b in btrees},
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="N objects stored before the envelopes (default 10000,100000)")
    p.add_argument("--envelope", type=int, default=500)
    p.add_argument("--reps", type=int, default=5, help="timed envelopes per N (median reported)")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    results = []
    for n in sizes:
        print(f"-- N = {n:,} ...", flush=True)
        results.append(run_size(n, args.envelope, args.reps, args.seed))
    ref = results[0]
    print(f"\n| N | envelope ms | vs N={ref['n']:,} | WAL pages | WAL MiB | vs N={ref['n']:,} | pages by B-tree (median) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        top = ", ".join(f"{b} {v:g}" for b, v in sorted(r["by"].items(), key=lambda kv: -kv[1]) if v)
        print(f"| {r['n']:,} | {r['ms_median']:.1f} | {r['ms_median'] / ref['ms_median']:.2f}x | {r['frames_median']:g} "
              f"| {r['wal_mib']:.2f} | {r['frames_median'] / ref['frames_median']:.2f}x | {top} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
