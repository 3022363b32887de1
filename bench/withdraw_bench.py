"""Release throughput with withdrawals (issue 16) against today's release path, in the same run.

Set-up (once): a US node whose own collection holds ``--base`` TLP:GREEN indicators, released to ROK
and Japan.  Each trial starts from a copy of that data folder, writes a batch of ``--batch`` new
object versions into the own collection and times ``release_all`` (both partners):

- ``1% re-marked``: 1% of the batch are new TLP:RED versions of released indicators (each one is
  withdrawn from both partners), the rest new TLP:GREEN indicators;
- ``0% re-marked``: the batch is all new indicators (the common case).

Each batch is released twice: with the lifecycle (``exchange.sharing.lifecycle``, as shipped) and
with its three hooks replaced by no-ops, which is today's release path (the RED versions are then
withheld and nothing is withdrawn).  Trials interleave the two; the figure is the median.

    python bench/withdraw_bench.py [--base 10000] [--batch 10000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from exchange.node.ops import open_node
from exchange.sharing import lifecycle
from exchange.sharing.release import release_all

US = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
RED = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"


def indicator(i: int, marking: str = GREEN, modified: str = "2026-01-01T00:00:00.000Z") -> dict:
    return {
        "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.UUID(int=i + 1)}",
        "created": "2026-01-01T00:00:00.000Z", "modified": modified, "created_by_ref": US,
        "name": f"bench indicator {i}", "description": "EXERCISE DATA: benchmark", "indicator_types": ["malicious-activity"],
        "pattern": f"[ipv4-addr:value = '10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}']", "pattern_type": "stix",
        "valid_from": "2026-01-01T00:00:00Z", "object_marking_refs": [marking],
    }


def prepare(root: Path, base: int) -> Path:
    data = root / "base"
    opened = open_node("us", data_dir=data)
    try:
        own = opened.node.config.own_collection.id
        for i in range(0, base, 5000):
            opened.store.add_objects(own, [indicator(j) for j in range(i, min(base, i + 5000))])
        release_all(opened)
    finally:
        opened.close()
    return data


def batch(base: int, size: int, remarked: float) -> list[dict]:
    n_red = int(size * remarked)
    step = max(1, base // max(n_red, 1))
    red = [indicator(j * step, RED, "2026-02-01T00:00:00.000Z") for j in range(n_red)]
    return red + [indicator(base + j) for j in range(size - n_red)]


@contextmanager
def todays_release():
    """The release path before issue 16: the lifecycle hooks do nothing."""
    saved = lifecycle.after_judging, lifecycle.withdraw_deleted, lifecycle.withdraw_joint, lifecycle.deletions_pending
    lifecycle.after_judging = lambda *a, **k: []  # type: ignore[assignment]
    lifecycle.withdraw_deleted = lambda *a, **k: {}  # type: ignore[assignment]
    lifecycle.withdraw_joint = lambda *a, **k: {}  # type: ignore[assignment]
    lifecycle.deletions_pending = lambda *a, **k: False  # type: ignore[assignment]
    try:
        yield
    finally:
        lifecycle.after_judging, lifecycle.withdraw_deleted, lifecycle.withdraw_joint, lifecycle.deletions_pending = saved


def trial(base_dir: Path, root: Path, objs: list[dict], *, today: bool) -> tuple[float, int]:
    data = root / f"trial-{uuid.uuid4().hex[:8]}"
    shutil.copytree(base_dir, data)
    opened = open_node("us", data_dir=data)
    try:
        opened.store.add_objects(opened.node.config.own_collection.id, objs)
        start = time.perf_counter()
        if today:
            with todays_release():
                out = release_all(opened)
        else:
            out = release_all(opened)
        seconds = time.perf_counter() - start
    finally:
        opened.close()
        shutil.rmtree(data, ignore_errors=True)
    return seconds, sum(r.withdrawn for r in out.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="withdraw-bench-"))
    try:
        base_dir = prepare(root, args.base)
        results = {}
        for label, share in (("1% re-marked", 0.01), ("0% re-marked", 0.0)):
            objs = batch(args.base, args.batch, share)
            times: dict[str, list[float]] = {"lifecycle": [], "today": []}
            withdrawn = 0
            for _ in range(args.repeat):
                for today in (False, True):
                    seconds, w = trial(base_dir, root, objs, today=today)
                    times["today" if today else "lifecycle"].append(seconds)
                    withdrawn = withdrawn if today else w
            med = {k: statistics.median(v) for k, v in times.items()}
            best = {k: min(v) for k, v in times.items()}
            results[label] = {
                "objects": len(objs), "withdrawn": withdrawn,
                "lifecycle_obj_s": round(len(objs) / med["lifecycle"]), "today_obj_s": round(len(objs) / med["today"]),
                "ratio": round(med["today"] / med["lifecycle"], 3),  # throughput with lifecycle / today's (medians)
                "ratio_best": round(best["today"] / best["lifecycle"], 3),  # the same, fastest run of each
                "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
            }
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            for label, r in results.items():
                print(f"{label}: {r['objects']} versions, {r['withdrawn']} withdrawals; release with lifecycle "
                      f"{r['lifecycle_obj_s']:,} obj/s, today's {r['today_obj_s']:,} obj/s; ratio {r['ratio']:.3f} "
                      f"(best runs {r['ratio_best']:.3f}; target >= 0.90)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
