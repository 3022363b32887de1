"""Policy engine throughput: decisions/s over generated indicators with mixed markings.

    /tmp/venv/bin/python bench/policy_bench.py [--n 100000] [--repeat 3]

Indicators are ~830-byte STIX 2.1 objects like the node's test data, created by
the sender, a partner or an unattributed source, marked with TLP 2.0 (all five
levels), TLP 1.0, an IEP 2.0 marking or nothing; 2% carry a granular marking.
Prints decisions/s for each route and the decision mix.  Pure CPU, one core.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exchange.policy import evaluate, load_policy  # noqa: E402
from exchange.policy import markings as mk  # noqa: E402

IEP = {
    "type": "marking-definition", "spec_version": "2.1",
    "id": "marking-definition--da05d443-ad8d-46fc-abf5-31d3d00290f1",
    "created": "2024-01-10T14:52:41.853121Z", "name": "IEP data marking",
    "extensions": {mk.IEP2_EXTENSION_ID: {
        "extension_type": "property-extension", "encrypt_in_transit": "may",
        "permitted_actions": "externally-visible-direct-actions", "affected_party_notifications": "may",
        "tlp": "amber", "provider_attribution": "must-not", "unmodified_resale": "must-not",
        "iep_id": "0224bfdf-ea3a-49c3-96f6-66d908bb1845", "iep_version": 2.0,
        "description": "This is a TLP-AMBER Information Exchange Policy", "start_date": "2022-10-01T00:00:00Z"}},
}
CREATORS = ["identity--371ec1f1-c078-4fd3-9eff-c233c753c388", "identity--99da2a3b-3031-468d-b273-2f29aec7f816",
            "identity--1a0aa608-42e5-4348-afbb-9c3a6e11535e", None]
MARKINGS = [[mk.TLP2_IDS[lvl]] for lvl in range(5)] + [[mk.TLP2_IDS[mk.GREEN], mk.TLP2_IDS[mk.AMBER]]] + \
    [[m] for m in mk.TLP1_MARKINGS] + [[IEP["id"]], []]


def make(n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    out: list[dict] = [IEP]
    for i in range(n):
        obj = {
            "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.UUID(int=rnd.getrandbits(128), version=4)}",
            "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z",
            "name": f"DPRK infrastructure {i}",
            "description": "Lazarus Group command-and-control address observed in a campaign against the financial sector.",
            "indicator_types": ["malicious-activity"],
            "pattern": f"[ipv4-addr:value = '198.51.100.{i % 250}']", "pattern_type": "stix",
            "valid_from": "2024-01-01T00:00:00Z", "labels": ["dprk", "lazarus"],
            "kill_chain_phases": [{"kill_chain_name": "mitre-attack", "phase_name": "command-and-control"}],
        }
        creator = rnd.choice(CREATORS)
        if creator:
            obj["created_by_ref"] = creator
        marks = rnd.choice(MARKINGS)
        if marks:
            obj["object_marking_refs"] = list(marks)
        if rnd.random() < 0.02:
            obj["granular_markings"] = [{"marking_ref": mk.TLP2_IDS[mk.RED], "selectors": ["description"]}]
        out.append(obj)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    policy = load_policy()
    objects = make(args.n)
    size = sum(len(str(o)) for o in objects[1:50]) / 49
    print(f"{len(objects):,} objects (~{size:.0f} chars each as Python repr); best of {args.repeat} runs")
    for sender, recipient in (("us", "rok"), ("rok", "us"), ("us", "jp"), ("rok", "public")):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            decisions = evaluate(objects, policy, sender, recipient, now="2025-01-01T00:00:00Z")
            best = min(best, time.perf_counter() - t0)
        mix = Counter(d.decision for d in decisions)
        print(f"{sender:>3} -> {recipient:<6} {len(objects) / best:>10,.0f} decisions/s  "
              f"({best * 1000:.0f} ms; share {mix['share']:,}, redact {mix['redact']:,}, withhold {mix['withhold']:,})")


if __name__ == "__main__":
    main()
