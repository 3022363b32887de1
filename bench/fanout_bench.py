#!/usr/bin/env python3
"""Release fan-out benchmark: release cost and storage of one node with 1, 2, 4 and 8 partner accounts.

Not a test. For each partner count K it generates, in a temp folder, a node configuration modelled on
``collections/us/node.yaml`` (the own collection, one ``partner-read`` collection and one read-only
account per partner; the partners are parties of a copy of ``policies/`` in the bilateral and
trilateral communities), loads N indicators of mixed TLP (CLEAR, GREEN, AMBER, AMBER+STRICT, RED)
into the own collection through the store, then times ``release_all`` to every partner and counts
the rows and bytes stored (the SQLite file after a checkpoint, and per table through ``dbstat``).
Every (code, K) run is a fresh process on a fresh data folder, one after another in one run (at each K
the working tree, then the code compared with).

    python bench/fanout_bench.py                       # N = 100,000; K = 1,2,4,8; working tree and main
    python bench/fanout_bench.py --n 10000 --rev main  # quicker; --rev: the code to compare with
    python bench/fanout_bench.py --no-rev --json out.json

Targets (issue 21): release time at 8 partners <= 2x that at 1; storage at 8 partners <= 1.3x that at 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
MARKINGS = [  # TLP 2.0: clear, green, amber, amber+strict, red (round robin: a mixed-TLP node)
    "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
]
TARGET_TIME = 2.0
TARGET_STORAGE = 1.3


# ---------------------------------------------------------------- configuration


def _partner_id(i: int) -> str:
    return f"identity--{uuid.uuid5(uuid.NAMESPACE_URL, f'cti-exchange-bench-partner-{i}')}"


def make_config(root: Path, partners: int) -> tuple[Path, Path]:
    """A ``collections/`` folder with node ``us`` (``partners`` partners p1..pK) and a ``policies/`` copy knowing them."""
    import yaml

    coll_dir = root / "collections"
    (coll_dir / "us").mkdir(parents=True)
    bundle = json.loads((REPO / "collections" / "identities.json").read_text())
    base = json.loads(json.dumps(bundle))
    for i in range(1, partners + 1):
        base["objects"].append({
            "type": "identity", "spec_version": "2.1", "id": _partner_id(i), "created": "2023-04-26T00:00:00.000Z",
            "modified": "2023-04-26T00:00:00.000Z", "name": f"Bench partner {i}", "identity_class": "organization",
        })
    (coll_dir / "identities.json").write_text(json.dumps(base, indent=1))
    node = yaml.safe_load((REPO / "collections" / "us" / "node.yaml").read_text())
    own = next(c for c in node["collections"] if c["role"] == "own")
    node["partners"] = {f"p{i}": {"name": f"Bench partner {i}", "identity": _partner_id(i), "read_only": True}
                        for i in range(1, partners + 1)}
    node["collections"] = [own] + [
        {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-read-{i}")), "alias": f"p{i}-read", "title": f"Released to p{i}",
         "description": f"What the policy releases to bench partner {i}.", "role": "partner-read", "partner": f"p{i}"}
        for i in range(1, partners + 1)
    ]
    node["accounts"] = [{"name": f"p{i}", "partner": f"p{i}", "description": f"bench partner {i}", "read": [f"p{i}-read"]}
                        for i in range(1, partners + 1)]
    node["accounts"].append({"name": "analyst", "description": "analysts", "read": [own["alias"]], "write": [own["alias"]]})
    node.pop("joint_identity", None)
    (coll_dir / "us" / "node.yaml").write_text(yaml.safe_dump(node, sort_keys=False))
    pol_dir = root / "policies"
    shutil.copytree(REPO / "policies", pol_dir)
    parties = yaml.safe_load((pol_dir / "parties.yaml").read_text())
    for i in range(1, partners + 1):
        parties["parties"][f"p{i}"] = {"name": f"Bench partner {i}", "identity": _partner_id(i)}
        for community in ("bilateral", "trilateral"):
            parties["communities"][community]["members"].append(f"p{i}")
    (pol_dir / "parties.yaml").write_text(yaml.safe_dump(parties, sort_keys=False))
    return coll_dir, pol_dir


def make_objects(n: int, seed: int = 21) -> list[dict]:
    """``n`` distinct indicators of about 800 bytes, by this node, TLP round robin."""
    rng = random.Random(seed)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        created = base + timedelta(seconds=rng.randrange(0, 365 * 86400), milliseconds=rng.randrange(1000))
        ts = created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z"
        value = f"{rng.getrandbits(40):010x}-update.{rng.choice(['com', 'net', 'org'])}"
        out.append({
            "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.UUID(int=rng.getrandbits(128), version=4)}",
            "created_by_ref": US_ID, "created": ts, "modified": ts, "name": f"DPRK infrastructure: domain {value}",
            "description": ("Observed in DPRK-nexus activity against financial services targets. Source: joint analysis. "
                            "Block at the perimeter; hunt for past connections in proxy, DNS and EDR logs (90 days). "
                            f"Ref {i:07d}."),
            "indicator_types": ["malicious-activity"], "pattern": f"[domain-name:value = '{value}']", "pattern_type": "stix",
            "pattern_version": "2.1", "valid_from": ts, "confidence": rng.choice([50, 70, 85, 95]), "labels": ["dprk"],
            "object_marking_refs": [MARKINGS[i % len(MARKINGS)]],
        })
    return out


# ---------------------------------------------------------------- one run (a child process on the code under test)


def worker(data_dir: Path, n: int) -> dict:
    """Load ``n`` objects, release them to every partner (timed), count what is stored. Runs inside the code under test."""
    from exchange.node.ops import open_node
    from exchange.sharing.release import release_all
    from exchange.storage.store import DB_FILE

    os.environ["CTI_EXCHANGE_SIGNING"] = "off"  # signatures are another issue's cost: the same for both codes
    opened = open_node("us", data_dir=data_dir)
    own = opened.node.config.own_collection.id
    objs = make_objects(n)
    t0 = time.perf_counter()
    for i in range(0, n, 1000):
        opened.store.add_objects(own, objs[i : i + 1000], origin="local:bench")
    load_s = time.perf_counter() - t0
    del objs  # a node does not hold what it loaded: N parsed objects kept alive here made every garbage collection scan them
    before = _stored(data_dir / DB_FILE)
    t0 = time.perf_counter()
    totals = release_all(opened)
    release_s = time.perf_counter() - t0
    opened.close()
    after = _stored(data_dir / DB_FILE)
    return {
        "load_s": load_s, "release_s": release_s, "before": before, "after": after,
        "released": {p: {"shared": t.shared, "redacted": t.redacted, "withheld": t.withheld} for p, t in totals.items()},
    }


def _stored(db: Path) -> dict:
    """Rows per table and bytes: the file after a WAL checkpoint, and per table with its indexes (``dbstat``)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        rows = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        per_table: dict[str, int] = {}
        try:
            owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')").fetchall())
            for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                key = owner.get(name, name)
                per_table[key] = per_table.get(key, 0) + size
        except sqlite3.OperationalError:  # no dbstat in this SQLite build
            pass
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        used = (conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]) * page_size
    finally:
        conn.close()
    return {"rows": rows, "bytes_file": db.stat().st_size, "bytes_used": used, "bytes_per_table": per_table}


# ---------------------------------------------------------------- driver


def prepare(rev: str | None) -> tuple[Path, str]:
    """The code to run: the working tree, or a clean ``git archive`` snapshot of ``rev``."""
    if rev is None:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        return REPO, f"working tree ({head})"
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"], capture_output=True, text=True,
                            check=True).stdout.strip()
    snap = Path(tempfile.mkdtemp(prefix="fanout-rev-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(snap)], input=archive, check=True)
    return snap, f"{rev} ({commit[:7]})"


def run_one(code: Path, partners: int, n: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"fanout-{partners}-"))
    try:
        coll_dir, pol_dir = make_config(root, partners)
        env = {**os.environ, "PYTHONPATH": str(code), "CTI_EXCHANGE_COLLECTIONS": str(coll_dir),
               "CTI_EXCHANGE_POLICIES": str(pol_dir), "CTI_EXCHANGE_SIGNING": "off"}
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(root / "data"), "--n", str(n)],
            env=env, cwd=str(code), capture_output=True, text=True, check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"worker failed ({code}, {partners} partners):\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="objects loaded into the own collection (default 100,000)")
    p.add_argument("--partners", default="1,2,4,8", help="partner counts (default 1,2,4,8)")
    p.add_argument("--rev", default="main", help="the code to compare with, as a git archive (default main)")
    p.add_argument("--no-rev", action="store_true", help="only the working tree")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.n)))
        return
    counts = [int(x) for x in args.partners.split(",")]
    codes = [prepare(None)] + ([] if args.no_rev else [prepare(args.rev)])
    results: dict[str, dict[int, dict]] = {}
    print(f"N = {args.n:,}; load average {os.getloadavg()[0]:.1f}", flush=True)
    for _code, label in codes:
        results[label] = {}
    for k in counts:  # the codes side by side at each partner count: the machine's noise falls on both alike
        for code, label in codes:
            r = results[label][k] = run_one(code, k, args.n)
            a, b = r["after"], r["before"]
            print(f"{label:>24} K={k}: release {r['release_s']:7.2f} s  objects rows {a['rows'].get('objects', 0):>9,}  "
                  f"bodies {a['rows'].get('bodies', 0):>8,}  audit {a['rows'].get('audit', 0):>9,}  "
                  f"used {a['bytes_used'] / 1e6:8.1f} MB (before release {b['bytes_used'] / 1e6:.1f})", flush=True)
    print()
    print("| code | partners | release s | vs 1 partner | rows (objects / bodies / audit) | bytes used | vs 1 partner | "
          "release bytes | objects+bodies+indexes | shared/redacted/withheld per partner |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, by_k in results.items():
        one = by_k.get(counts[0])
        for k, r in by_k.items():
            a, b = r["after"], r["before"]
            rows = a["rows"]
            pt = a["bytes_per_table"]
            data = pt.get("objects", 0) + pt.get("bodies", 0)
            rel = next(iter(r["released"].values()))
            print(f"| {label} | {k} | {r['release_s']:.2f} | {r['release_s'] / one['release_s']:.2f}x | "
                  f"{rows.get('objects', 0):,} / {rows.get('bodies', 0):,} / {rows.get('audit', 0):,} | "
                  f"{a['bytes_used'] / 1e6:.1f} MB | {a['bytes_used'] / one['after']['bytes_used']:.2f}x | "
                  f"{(a['bytes_used'] - b['bytes_used']) / 1e6:.1f} MB | {data / 1e6:.1f} MB | "
                  f"{rel['shared']}/{rel['redacted']}/{rel['withheld']} |")
    if len(results) == 2:
        (mine, theirs) = results.values()
        print()
        for k in counts:
            print(f"K={k}: release time {mine[k]['release_s'] / theirs[k]['release_s']:.2f}x of {list(results)[1]}, "
                  f"bytes {mine[k]['after']['bytes_used'] / theirs[k]['after']['bytes_used']:.2f}x")
    mine = next(iter(results.values()))
    if counts[0] == 1 and 8 in mine:
        t = mine[8]["release_s"] / mine[1]["release_s"]
        s = mine[8]["after"]["bytes_used"] / mine[1]["after"]["bytes_used"]
        print(f"\ntargets: release 8/1 = {t:.2f}x (<= {TARGET_TIME}x: {'met' if t <= TARGET_TIME else 'NOT met'}); "
              f"storage 8/1 = {s:.2f}x (<= {TARGET_STORAGE}x: {'met' if s <= TARGET_STORAGE else 'NOT met'})")
    for code, _label in codes[1:]:
        shutil.rmtree(code, ignore_errors=True)  # the git archive snapshot
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "results": {lbl: {str(k): v for k, v in r.items()} for lbl, r in results.items()}},
                                        indent=1))


if __name__ == "__main__":
    main()
