"""Joint attribution end to end: both nodes as subprocesses, the real CLI and the real sync agent.

Propose at one node, concur or dissent at the other, and check what each node
holds and what the Japan partner can read (every TAXII read endpoint).

The flows are in ``test_attribution_*.py``, one file each, so that ``--dist loadfile``
can run them on both test processes at once; each file has its own node pair
(``nodes``, module-scoped) and ends with the leak check over that pair.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from exchange.node.ops import open_node
from exchange.policy import evaluate, load_policy
from exchange.sharing import attribution as attr
from tests.e2e.conftest import Pair, _pair

US = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
ROK = "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
JOINT = "identity--9909a483-dc4f-404a-96a0-33f5fd316e10"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


@pytest.fixture(scope="module", name="nodes")
def node_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Each importing file's node pair: both nodes with accounts and no content, over HTTPS with mutual TLS
    (a proposal's IEP marking says encrypt_in_transit: must); each test uses its own subject and actor."""
    yield from _pair(tmp_path_factory.mktemp("attribution"), seed=False, tls=True)


def cli(pair: Pair, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "exchange", *args[:2], node, *args[2:], "--data-dir", str(pair.procs[node].data_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args[:2])} {node} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out


def cli_json(pair: Pair, node: str, *args: str) -> object:
    return json.loads(cli(pair, node, *args, "--json").stdout)


def new_subject_and_actor(pair: Pair, tag: str) -> tuple[str, str]:
    """A TLP:GREEN intrusion set and threat actor created by the US, loaded at the US node."""
    now = "2025-01-01T00:00:00.000Z"
    iset = {"type": "intrusion-set", "spec_version": "2.1", "id": f"intrusion-set--{uuid.uuid4()}", "created": now,
            "modified": now, "name": f"Exercise cluster {tag}", "created_by_ref": US, "object_marking_refs": [GREEN]}
    actor = {"type": "threat-actor", "spec_version": "2.1", "id": f"threat-actor--{uuid.uuid4()}", "created": now,
             "modified": now, "name": f"Exercise DPRK unit {tag}", "threat_actor_types": ["nation-state"],
             "created_by_ref": US, "object_marking_refs": [GREEN]}
    path = pair.tmp / f"subject-{tag}.json"
    path.write_text(json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [iset, actor]}))
    out = subprocess.run([sys.executable, "-m", "exchange", "load", "us", str(path), "--data-dir", str(pair.procs["us"].data_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return iset["id"], actor["id"]


def sync_round(pair: Pair) -> None:
    """Each side's sync agent once, then the US again (picks up what ROK produced from ours)."""
    pair.sync("us", "--once")
    pair.sync("rok", "--once")
    pair.sync("us", "--once")


def status_of(pair: Pair, node: str, rel_id: str) -> dict:
    entries = cli_json(pair, node, "attribution", "status")
    [entry] = [e for e in entries if e["relationship"] == rel_id]  # type: ignore[union-attr]
    return entry


def jp_sees(pair: Pair, node: str, object_id: str) -> list:
    """Everything the Japan partner's account can read of ``object_id`` at ``node``, by every endpoint."""
    client = pair.exchange.client(node, "jp")
    try:
        shown = client.reveal("jp-read", object_id)
    finally:
        client.close()
    return [item for items in shown.values() for item in items]


def jp_objects(pair: Pair, node: str, object_id: str) -> list[dict]:
    """The versions of ``object_id`` the Japan partner gets from Get Objects at ``node``."""
    client = pair.exchange.client(node, "jp")
    try:
        return client.reveal("jp-read", object_id, endpoints=("objects",))["objects"]
    finally:
        client.close()


def own_objects(pair: Pair, node: str, object_id: str) -> list[dict]:
    client = pair.exchange.client(node, "analyst")
    try:
        return client.reveal(f"{node}-intel", object_id, endpoints=("objects",))["objects"]
    finally:
        client.close()


def inbox_objects(pair: Pair, node: str, object_id: str) -> list[dict]:
    partner = {"us": "rok", "rok": "us"}[node]
    client = pair.exchange.client(node, "analyst")
    try:
        return client.reveal(f"{partner}-inbox", object_id, endpoints=("objects",))["objects"]
    finally:
        client.close()


def assert_never_outside(pair: Pair, *ids: str) -> None:
    for node in ("us", "rok"):
        for oid in ids:
            assert jp_sees(pair, node, oid) == [], f"{oid} is readable by the Japan partner at {node}"


def assert_not_publishable(pair: Pair, node: str, rel_id: str) -> None:
    """The proposal as stored at ``node`` would not be released to the public (there is no public collection)."""
    opened = open_node(node, data_dir=pair.procs[node].data_dir)
    try:
        rel = attr.find(opened, rel_id)
        context = [attr.build_iep_marking(US, "us"), attr.build_iep_marking(ROK, "rok")]
    finally:
        opened.close()
    assert rel is not None
    [d] = evaluate([rel], load_policy(), node, "public", context=context, held={rel["source_ref"], rel["target_ref"]})
    assert d.decision == "withhold"


def assert_no_leak_and_no_inbound_conflicts(nodes: Pair) -> None:
    """After a file's rounds: nothing withheld readable anywhere, and no identical joint product was refused."""
    from exchange.demo.run import leak_check
    from exchange.storage import audit
    from exchange.storage.store import Store

    result = leak_check(nodes.exchange)
    assert result["ok"], result["leaks"]
    for node in ("us", "rok"):
        store = Store.open(data_dir=nodes.procs[node].data_dir)
        try:
            rejected = [e for e in audit.entries(store) if e["event"] in ("inbound-reject", "push-reject")]
        finally:
            store.close()
        assert rejected == [], rejected[:3]
