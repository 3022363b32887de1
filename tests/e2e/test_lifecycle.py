"""When intelligence changes (issue 16), end to end: both nodes as subprocesses over mutual TLS, the real
sync agents, the Japan account reading both nodes.  Re-marking, deletion and joint revocation are withdrawn
from every recipient; conflicting corrections are refused and audited."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from exchange.node.ops import open_node
from exchange.sharing import attribution as attr
from exchange.stix import parse_timestamp
from exchange.storage import audit
from exchange.storage.store import Selection
from tests.e2e.attribution_flow import cli_json, new_subject_and_actor, sync_round
from tests.e2e.conftest import Pair, _pair, load_and_release

US = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
RED = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"
# (node, account, collection): every place a partner reads what the US released, directly or onward
READERS = [("us", "rok", "rok-read"), ("us", "jp", "jp-read"), ("rok", "analyst", "us-inbox"), ("rok", "jp", "jp-read")]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[Pair]:
    """Both nodes, accounts only, HTTPS with mutual TLS (attribution needs it); each test uses its own objects."""
    yield from _pair(tmp_path_factory.mktemp("lifecycle"), seed=False, tls=True)


def indicator(tag: str, marking: str = GREEN, *, modified: str = "2025-03-01T00:00:00.000Z", **extra: object) -> dict:
    return {
        "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, tag)}",
        "created": "2025-03-01T00:00:00.000Z", "modified": modified, "created_by_ref": US,
        "name": f"C2 address {tag}", "description": "EXERCISE DATA: DPRK command-and-control address",
        "indicator_types": ["malicious-activity"], "pattern": "[ipv4-addr:value = '198.51.100.23']", "pattern_type": "stix",
        "valid_from": "2025-03-01T00:00:00Z", "object_marking_refs": [marking], **extra,
    }


def latest(pair: Pair, node: str, account: str, coll: str, oid: str) -> dict | None:
    """What a plain TAXII client gets from Get Objects (``match[version]`` defaults to ``last``, TAXII 2.1 s3.4.2)."""
    client = pair.exchange.client(node, account)
    try:
        found = client.collection(coll).get_objects(id=oid).get("objects") or []
    finally:
        client.close()
    assert len(found) <= 1
    return found[0] if found else None


def one_cycle(pair: Pair) -> None:
    """One sync cycle of each agent (the US pushes and pulls, then ROK)."""
    pair.sync("us", "--once")
    pair.sync("rok", "--once")


def assert_withdrawn_everywhere(pair: Pair, shared: dict, restricted: dict | None) -> None:
    for node, account, coll in READERS:
        got = latest(pair, node, account, coll, shared["id"])
        assert got is not None and got.get("revoked") is True, f"{node}/{coll}: latest is {got}"
        assert parse_timestamp(got["modified"]) > parse_timestamp(shared["modified"])
        # nothing but what the partner held already (required properties, creator, its marking)
        for key, value in got.items():
            if key not in ("modified", "revoked"):
                assert shared[key] == value, f"{node}/{coll}: {key}"
        assert set(got) < set(shared) | {"revoked"} and "description" not in got and "name" not in got
        if restricted is not None:
            assert restricted["description"] not in json.dumps(got) and RED not in json.dumps(got)


def test_remarked_green_to_red_is_withdrawn_at_rok_and_japan_in_one_cycle(nodes):
    green = indicator("remark")
    load_and_release(nodes, "us", [green])
    one_cycle(nodes)
    for node, account, coll in READERS:
        assert latest(nodes, node, account, coll, green["id"]) == green, (node, coll)
    red = dict(green, modified="2025-04-01T00:00:00.000Z", object_marking_refs=[RED],
               description="RED ONLY: the source asks for a tighter marking")
    load_and_release(nodes, "us", [red])
    one_cycle(nodes)
    assert_withdrawn_everywhere(nodes, green, red)
    # ROK stops re-releasing the GREEN version onward: Japan's collection at ROK holds GREEN and the withdrawal only
    opened = open_node("rok", data_dir=nodes.procs["rok"].data_dir)
    try:
        jp_read = opened.node.config.partner_collection("jp", "partner-read").id
        rows, _ = opened.store.page(Selection(jp_read, ids=(green["id"],), versions=("all",)), limit=10)
        assert [r.version for r in rows][0] == green["modified"] and len(rows) == 2
        withdraws = [e for e in audit.entries(opened.store) if e["event"] == "withdraw" and e["object_id"] == green["id"]]
        assert {e["partner"] for e in withdraws} == {"jp"} and withdraws[0]["detail"]["action"] == "relayed"
    finally:
        opened.close()


def test_deleted_object_is_withdrawn_from_every_recipient(nodes):
    obj = indicator("delete")
    load_and_release(nodes, "us", [obj])
    one_cycle(nodes)
    assert latest(nodes, "rok", "jp", "jp-read", obj["id"]) == obj
    client = nodes.exchange.client("us", "analyst")
    try:
        client.collection("us-intel").delete_object(obj["id"])  # TAXII 2.1 s5.7, as an analyst would
    finally:
        client.close()
    one_cycle(nodes)
    assert_withdrawn_everywhere(nodes, obj, None)
    opened = open_node("us", data_dir=nodes.procs["us"].data_dir)
    try:
        entries = [e for e in audit.entries(opened.store) if e["event"] == "withdraw" and e["object_id"] == obj["id"]]
        assert {e["partner"] for e in entries} == {"rok", "jp"}
        assert all(e["detail"]["reason"] == "deleted by an analyst" and e["clauses"] for e in entries)
    finally:
        opened.close()


def test_conflicting_correction_is_refused_listed_and_audited(nodes):
    first, second = indicator("conflict-1"), indicator("conflict-2")
    load_and_release(nodes, "us", [first, second])
    changed = [dict(first, description="corrected: a CDN address"), dict(second, name="corrected name")]
    fresh = indicator("conflict-3")
    path = nodes.tmp / "corrections.json"
    path.write_text(json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [*changed, fresh]}))
    data = str(nodes.procs["us"].data_dir)
    out = subprocess.run([sys.executable, "-m", "exchange", "load", "us", str(path), "--data-dir", data],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and first["id"] in out.stderr and second["id"] in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    opened = open_node("us", data_dir=nodes.procs["us"].data_dir)
    try:
        own = opened.node.config.own_collection.id
        assert opened.store.latest(own, fresh["id"]) is None, "nothing written"
        conflicts = [e for e in audit.entries(opened.store) if e["event"] == "conflict"]
        assert {e["object_id"] for e in conflicts} >= {first["id"], second["id"]}
    finally:
        opened.close()
    out = subprocess.run([sys.executable, "-m", "exchange", "load", "us", str(path), "--data-dir", data, "--on-conflict", "new-version"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    opened = open_node("us", data_dir=nodes.procs["us"].data_dir)
    try:
        now = opened.store.latest(opened.node.config.own_collection.id, first["id"])
        assert now["description"] == "corrected: a CDN address" and parse_timestamp(now["modified"]) > parse_timestamp(first["modified"])
    finally:
        opened.close()
    # over TAXII: a status failure naming the stored version
    client = nodes.exchange.client("us", "analyst")
    try:
        status = client.push("us-intel", [dict(first, description="another edit")])
    finally:
        client.close()
    [failure] = status["failures"]
    assert failure["id"] == first["id"] and first["modified"] in failure["message"] and "conflict" in failure["message"]
    report = subprocess.run([sys.executable, "-m", "exchange", "report", "--data-dir", data, "--json"],
                            capture_output=True, text=True, timeout=120)
    assert json.loads(report.stdout)["conflicts"]["us"] >= 3


def test_dissent_after_concurrence_withdraws_the_joint_attribution_at_japan(nodes):
    subject, actor = new_subject_and_actor(nodes, "revoke")
    proposed = cli_json(nodes, "us", "attribution", "propose", "--subject", subject, "--actor", actor, "--confidence", "80")
    rel = proposed["relationship"]  # type: ignore[index]
    sync_round(nodes)
    cli_json(nodes, "rok", "attribution", "respond", "--relationship", rel["id"], "--opinion", "agree")
    sync_round(nodes)
    jrel_id = attr.joint_relationship_id(rel["id"])
    report_id = attr.joint_report_id(rel["id"], rel["modified"])
    held = {node: latest(nodes, node, "jp", "jp-read", jrel_id) for node in ("us", "rok")}
    assert all(h is not None and not h.get("revoked") for h in held.values())
    answered = cli_json(nodes, "rok", "attribution", "respond", "--relationship", rel["id"], "--opinion", "disagree",
                        "--explanation", "EXERCISE DATA: new evidence points to a criminal group")
    assert answered["state"] == "dissent"  # type: ignore[index]
    one_cycle(nodes)
    for node in ("us", "rok"):
        for oid in (jrel_id, report_id):
            got = latest(nodes, node, "jp", "jp-read", oid)
            assert got is not None and got.get("revoked") is True, (node, oid, got)
            assert "description" not in got and "confidence" not in got
        st = [e for e in cli_json(nodes, node, "attribution", "status") if e["relationship"] == rel["id"]][0]  # type: ignore[union-attr]
        assert st["state"] == "dissent" and "jp" in st["joint_withdrawn_from"]
