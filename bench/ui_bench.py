"""The node's web page (issue 20): overview render time with 100,000 release decisions in the audit log.

    .venv/bin/python bench/ui_bench.py [--decisions 100000] [--rounds 20] [--keep DIR]

Makes a US node data folder whose audit log holds N release decisions (share/redact/withhold
for rok and jp over 3 days, STIX types, TLP levels and clauses as the demo's) plus N/10
arrivals, appended through ``exchange.storage.audit.append`` (a real hash chain in a real
SQLite file). Then, in one run:

- **server time**: the node's own Flask app (``data_dir_factory``, as ``serve`` builds it in a
  worker) answers ``GET /ui/`` through Flask's test client, no network: the first render
  (the process folds the whole log: what a worker pays once, started in the background at
  start-up), warm renders (nothing new), and renders after 1,000 new entries; also the
  decisions page (a filter and a page) and an object page;
- **over HTTP**: a real ``serve`` process on 127.0.0.1, as an analyst with ``requests``;
- **reference**: ``build_report(read_logs(...))``, what ``report`` does (read and fold the whole
  log), and ``audit verify`` over the whole chain; the ratios say what the incremental tally saves.
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exchange.node.ops import add_account, open_node  # noqa: E402
from exchange.storage import audit  # noqa: E402

PASSWORD = "bench-analyst-password"
TYPES = ["indicator"] * 6 + ["malware", "attack-pattern", "intrusion-set", "relationship", "report", "identity"]
TLPS = ["TLP:CLEAR", "TLP:GREEN", "TLP:GREEN", "TLP:AMBER", "TLP:RED", "none"]
CLAUSES = {
    "share": [["scf.clear-anyone"], ["scf.public-sources", "scf.clear-anyone"], ["scf.own-release-partner"]],
    "redact": [["scf.own-release-partner", "scf.granular-redact"]],
    "withhold": [["scf.never-automated"], ["scf.unmarked-default"], ["tri.jp-amber-withheld"], ["scf.integrity-required-refs"]],
}


def make_log(data: Path, n: int, seed: int = 7) -> str:
    """N decisions and N/10 arrivals in the node's audit log; returns one object id that has entries."""
    rng = random.Random(seed)
    opened = open_node("us", data_dir=data)
    try:
        add_account(opened, "analyst", PASSWORD, [], [])
        start = int(time.time() * 1e6) - 3 * 86_400_000_000
        step = 3 * 86_400_000_000 // n
        batch = 5000
        first_id = None
        for b in range(0, n, batch):
            entries = []
            for i in range(b, min(n, b + batch)):
                decision = rng.choices(["share", "redact", "withhold"], weights=[90, 3, 7])[0]
                oid = f"{rng.choice(TYPES)}--{i:08x}-0000-4000-8000-{i:012x}"
                first_id = first_id or oid
                entries.append(audit.Entry(decision, rng.choice(["rok", "jp"]), oid, "2026-11-01T00:00:00.000Z", decision,
                                           tuple(rng.choice(CLAUSES[decision])),
                                           {"type": oid.split("--")[0], "tlp": rng.choice(TLPS), "reason": "bench", "removed_fields": [],
                                            "source": "us-intel"}))
                if i % 10 == 0:
                    entries.append(audit.Entry("pull", "rok", f"indicator--{i:08x}-1111-4000-8000-{i:012x}", "2026-11-01T00:00:00.000Z",
                                               "accepted", (), {"type": "indicator", "tlp": "TLP:GREEN", "latency_s": rng.uniform(0.5, 30)}))
            with opened.store.transaction() as conn:
                audit.append(conn, entries, at=start + b * step)
        return first_id or ""
    finally:
        opened.close()


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def fmt(ms: list[float]) -> str:
    return f"median {statistics.median(ms):7.1f} ms  (min {min(ms):.1f}, max {max(ms):.1f}, n={len(ms)})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decisions", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--keep", type=Path, help="keep the data folder here")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ui-bench-")) if args.keep is None else args.keep
    data = tmp / "us"
    t = time.perf_counter()
    object_id = make_log(data, args.decisions)
    print(f"audit log: {args.decisions:,} decisions + {args.decisions // 10:,} arrivals written in {time.perf_counter() - t:.1f} s ({data})")

    from exchange.sharing.background import data_dir_factory
    from exchange.sharing.report import build_report, read_logs
    from exchange.storage.store import Store

    auth = {"Authorization": "Basic " + base64.b64encode(f"analyst:{PASSWORD}".encode()).decode()}
    app = data_dir_factory("us", data, None)()
    client = app.test_client()

    def get(path: str) -> None:
        r = client.get(path, headers=auth)
        assert r.status_code == 200, (path, r.status_code, r.data[:300])

    # the app started folding the log in the background at start-up; the first request waits for it
    first = timed(lambda: get("/ui/"), 1)
    warm = timed(lambda: get("/ui/"), args.rounds)
    opened = open_node("us", data_dir=data)
    try:
        after_new = []
        for _ in range(max(3, args.rounds // 4)):
            with opened.store.transaction() as conn:
                audit.append(conn, [audit.Entry("share", "rok", f"indicator--{i:08x}-2222-4000-8000-000000000000", "v", "share",
                                                ("scf.clear-anyone",), {"type": "indicator", "tlp": "TLP:CLEAR"}) for i in range(1000)])
            after_new += timed(lambda: get("/ui/"), 1)
    finally:
        opened.close()
    decisions = timed(lambda: get("/ui/decisions?partner=rok&decision=withhold&page=3"), args.rounds)
    decisions_all = timed(lambda: get("/ui/decisions?page=100"), args.rounds)
    obj = timed(lambda: get(f"/ui/objects/{object_id}"), args.rounds)

    ref_report = timed(lambda: build_report(read_logs([data])), 3)

    def verify() -> None:
        store = Store.open(data_dir=data)
        try:
            assert audit.verify(store).ok
        finally:
            store.close()

    ref_verify = timed(verify, 3)

    # over HTTP: a real serve process, its first answer after start and warm ones
    proc = subprocess.Popen([sys.executable, "-m", "exchange", "serve", "us", "--data-dir", str(data), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True)
    try:
        import requests

        url = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline() if proc.stdout else ""
            if line.startswith("API root: "):
                url = line.split(": ", 1)[1].strip().rsplit("/", 2)[0] + "/ui/"
        assert url, "the server did not start"
        session = requests.Session()
        session.auth = ("analyst", PASSWORD)
        http_first = timed(lambda: session.get(url, timeout=120).raise_for_status(), 1)
        http_warm = timed(lambda: session.get(url, timeout=60).raise_for_status(), args.rounds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    print(f"\nGET /ui/ (overview), server time, Flask app in process, {args.decisions:,} decisions:")
    print(f"  first request (folds the whole log once per worker)  {fmt(first)}")
    print(f"  warm (nothing new)                                   {fmt(warm)}")
    print(f"  after 1,000 new audit entries each                   {fmt(after_new)}")
    print(f"GET /ui/decisions?partner=rok&decision=withhold&page=3  {fmt(decisions)}")
    print(f"GET /ui/decisions?page=100 (no filter)                  {fmt(decisions_all)}")
    print(f"GET /ui/objects/<id>                                    {fmt(obj)}")
    print(f"over HTTP (serve, 1 worker): first {fmt(http_first)}")
    print(f"                             warm  {fmt(http_warm)}")
    print("reference (same run):")
    print(f"  build_report(read_logs(...)) (report's whole-log read) {fmt(ref_report)}")
    print(f"  audit verify (whole chain)                            {fmt(ref_verify)}")
    w = statistics.median(warm)
    print(f"ratios: warm overview / whole-log report = {w / statistics.median(ref_report):.3f}; "
          f"after 1,000 new / whole-log report = {statistics.median(after_new) / statistics.median(ref_report):.3f}")
    print(f"target: overview < 300 ms server time: warm {w:.0f} ms -> {'met' if w < 300 else 'NOT met'}; "
          f"after new entries {statistics.median(after_new):.0f} ms -> {'met' if statistics.median(after_new) < 300 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
