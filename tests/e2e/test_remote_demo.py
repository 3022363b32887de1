"""The demo against nodes whose sync agents already run (what docker-compose's demo service does).

Seen in the compose demo under load: a partner's copy of a public source's object (ATT&CK) reached
the other node before that node had loaded the same version itself; its inbound policy refused it
(``inbound.creator-is-partner``, rightly) and the demo waited for it until its timeout and failed.
"""

from __future__ import annotations

import uuid

import orjson

from exchange.demo.run import collections_dir, wait_for_agents
from tests.e2e.conftest import load_and_release

ROK_ID = "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
CLEAR = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"


def _attack_pattern() -> list[dict]:
    """One ATT&CK technique with MITRE's identity and statement marking (as the node loads them from ATT&CK)."""
    objs = orjson.loads((collections_dir() / "attack-dprk" / "attack-dprk.json").read_bytes())["objects"]
    technique = next(o for o in objs if o["type"] == "attack-pattern")
    wanted = {technique["created_by_ref"], *technique.get("object_marking_refs", ())}
    return [o for o in objs if o["id"] in wanted] + [technique]


def _rok_indicator() -> dict:
    return {
        "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}", "created_by_ref": ROK_ID,
        "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "name": "ROK clear",
        "pattern": "[ipv4-addr:value = '198.51.100.9']", "pattern_type": "stix", "valid_from": "2026-11-01T00:00:00Z",
        "object_marking_refs": [CLEAR],
    }


def test_the_demo_wait_settles_on_what_the_receivers_policy_refused(bare_pair):
    pair = bare_pair
    load_and_release(pair, "us", _attack_pattern())  # ROK never loads it: the US's copy is refused there
    load_and_release(pair, "rok", [_rok_indicator()])
    pair.sync("rok", "--once")
    pair.sync("us", "--once")
    state = wait_for_agents(pair.exchange, timeout=60, settle=0.5)
    assert state["us->rok"]["refused"] >= 1, state
    assert state["us->rok"]["arrived"] + state["us->rok"]["refused"] == state["us->rok"]["offered"], state
    assert state["rok->us"] == {"offered": state["rok->us"]["offered"], "arrived": state["rok->us"]["offered"]}, state
