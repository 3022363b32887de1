"""Joint attribution end to end: both nodes as subprocesses, the real CLI and the real sync agent.

Propose at one node, concur or dissent at the other, and check what each node
holds and what the Japan partner can read (every TAXII read endpoint).
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
from exchange.stix import parse_timestamp
from tests.e2e.conftest import Pair, _pair

US = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
ROK = "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
JOINT = "identity--9909a483-dc4f-404a-96a0-33f5fd316e10"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[Pair]:
    """Both nodes with accounts and no content, over HTTPS with mutual TLS (a proposal's IEP marking says
    encrypt_in_transit: must); each test uses its own subject and actor."""
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


def test_propose_concur_joint_report_at_both_nodes_and_onward_to_japan(nodes):
    subject, actor = new_subject_and_actor(nodes, "concur")
    proposed = cli_json(nodes, "us", "attribution", "propose", "--subject", subject, "--actor", actor,
                        "--confidence", "80", "--rationale", "EXERCISE DATA: shared infrastructure and tooling")
    rel, us_opinion = proposed["relationship"], proposed["opinion"]  # type: ignore[index]
    assert rel["relationship_type"] == "attributed-to" and rel["created_by_ref"] == US
    assert attr.TLP_AMBER in rel["object_marking_refs"] and len(rel["object_marking_refs"]) == 2
    sync_round(nodes)

    # ROK holds the proposal; nothing outside the partnership, at any endpoint
    at_rok = status_of(nodes, "rok", rel["id"])
    assert at_rok["state"] == "pending" and {s["party"]: s["opinion"] for s in at_rok["stances"]} == {"us": "agree", "rok": None}
    assert status_of(nodes, "us", rel["id"])["proposal_released_to"] == ["rok"]
    assert_never_outside(nodes, rel["id"], us_opinion["id"])
    for node in ("us", "rok"):
        assert_not_publishable(nodes, node, rel["id"])
    assert jp_sees(nodes, "us", subject), "the subject itself (TLP:GREEN) does go to Japan"

    answered = cli_json(nodes, "rok", "attribution", "respond", "--relationship", rel["id"], "--opinion", "agree",
                        "--confidence", "70", "--explanation", "EXERCISE DATA: consistent with our holdings")
    assert answered["state"] == "joint" and answered["combined_confidence"] == 70  # type: ignore[index]
    rok_opinion = answered["opinion"]  # type: ignore[index]
    sync_round(nodes)

    report_id = attr.joint_report_id(rel["id"], rel["modified"])
    jrel_id = attr.joint_relationship_id(rel["id"])
    reports = {}
    for node in ("us", "rok"):
        st = status_of(nodes, node, rel["id"])
        assert st["state"] == "joint" and st["combined_confidence"] == 70
        assert {s["party"]: (s["opinion"], s["confidence"]) for s in st["stances"]} == {"us": ("agree", 80), "rok": ("agree", 70)}
        assert st["joint_report"] == report_id and "jp" in st["joint_released_to"]
        [report] = own_objects(nodes, node, report_id)
        assert report["created_by_ref"] == JOINT and report["confidence"] == 70
        assert report["object_refs"] == [rel["id"], us_opinion["id"], rok_opinion["id"], US, ROK, jrel_id]
        assert "lower of the partners' confidences" in report["description"]
        reports[node] = report
        # the partner's identical copy arrived too (an idempotent success, not a conflict)
        assert inbox_objects(nodes, node, report_id) == [report]
        # Japan reads the joint attribution and the joint report, without the partners' own objects
        [jrel_at_jp] = jp_objects(nodes, node, jrel_id)
        assert jrel_at_jp["created_by_ref"] == JOINT and (jrel_at_jp["source_ref"], jrel_at_jp["target_ref"]) == (subject, actor)
        [report_at_jp] = jp_objects(nodes, node, report_id)
        assert report_at_jp["object_refs"] == [US, ROK, jrel_id]
    assert reports["us"] == reports["rok"]
    # the proposal, the rationale and both opinions never left the partnership
    assert_never_outside(nodes, rel["id"], us_opinion["id"], rok_opinion["id"])


def test_dissent_blocks_release(nodes):
    subject, actor = new_subject_and_actor(nodes, "dissent")
    proposed = cli_json(nodes, "us", "attribution", "propose", "--subject", subject, "--actor", actor, "--confidence", "60")
    rel, us_opinion = proposed["relationship"], proposed["opinion"]  # type: ignore[index]
    sync_round(nodes)
    answered = cli_json(nodes, "rok", "attribution", "respond", "--relationship", rel["id"], "--opinion", "disagree",
                        "--explanation", "EXERCISE DATA: the infrastructure overlaps with a criminal group")
    assert answered["state"] == "dissent"  # type: ignore[index]
    sync_round(nodes)
    report_id = attr.joint_report_id(rel["id"], rel["modified"])
    jrel_id = attr.joint_relationship_id(rel["id"])
    for node in ("us", "rok"):
        st = status_of(nodes, node, rel["id"])
        assert st["state"] == "dissent" and st["joint_report"] is None and st["joint_released_to"] == []
        assert {s["party"]: s["opinion"] for s in st["stances"]} == {"us": "agree", "rok": "disagree"}
        assert own_objects(nodes, node, report_id) == [] and own_objects(nodes, node, jrel_id) == []
    assert_never_outside(nodes, rel["id"], us_opinion["id"], answered["opinion"]["id"], report_id, jrel_id)  # type: ignore[index]
    # the text status lists it too
    text = cli(nodes, "us", "attribution", "status").stdout
    assert "dissent" in text and "Exercise cluster dissent" in text


def test_a_revised_proposal_resets_concurrence(nodes):
    subject, actor = new_subject_and_actor(nodes, "revise")
    v1 = cli_json(nodes, "us", "attribution", "propose", "--subject", subject, "--actor", actor, "--confidence", "50")
    rel_id = v1["relationship"]["id"]  # type: ignore[index]
    sync_round(nodes)
    cli_json(nodes, "rok", "attribution", "respond", "--relationship", rel_id, "--opinion", "agree")
    sync_round(nodes)
    assert status_of(nodes, "us", rel_id)["state"] == "joint"

    # the US revises its proposal: ROK's agreement was about the previous version
    v2 = cli_json(nodes, "us", "attribution", "propose", "--subject", subject, "--actor", actor, "--confidence", "85",
                  "--rationale", "EXERCISE DATA: new reporting")
    assert v2["revised"] and v2["relationship"]["id"] == rel_id  # type: ignore[index]
    v2_version = v2["relationship"]["modified"]  # type: ignore[index]
    sync_round(nodes)
    report_v2 = attr.joint_report_id(rel_id, v2_version)
    for node in ("us", "rok"):
        st = status_of(nodes, node, rel_id)
        assert st["version"] == v2_version and st["state"] == "pending" and st["superseded_opinions"] >= 1
        assert {s["party"]: s["opinion"] for s in st["stances"]} == {"us": "agree", "rok": None}
        assert own_objects(nodes, node, report_v2) == []
        assert "jp" in st["joint_withdrawn_from"]  # and the partner, which received it too
    assert_never_outside(nodes, report_v2)

    # ROK concurs with the revision: a new joint report, and a new version of the joint attribution
    cli_json(nodes, "rok", "attribution", "respond", "--relationship", rel_id, "--opinion", "strongly-agree", "--confidence", "75")
    sync_round(nodes)
    jrel_id = attr.joint_relationship_id(rel_id)
    for node in ("us", "rok"):
        st = status_of(nodes, node, rel_id)
        assert st["state"] == "joint" and st["combined_confidence"] == 75 and st["joint_report"] == report_v2
        assert [o["type"] for o in jp_objects(nodes, node, report_v2)] == ["report"]
        # the revision withdrew the first joint attribution (sccf.joint-revocation) before the second was made
        versions = sorted(jp_objects(nodes, node, jrel_id), key=lambda o: parse_timestamp(o["modified"]))
        assert [o.get("confidence", "revoked" if o.get("revoked") else None) for o in versions] == [50, "revoked", 75]


def test_bad_requests_are_one_line_errors(nodes):
    out = cli(nodes, "us", "attribution", "propose", "--subject", f"intrusion-set--{uuid.uuid4()}",
              "--actor", f"threat-actor--{uuid.uuid4()}", "--confidence", "50", check=False)
    assert out.returncode != 0 and "no such object" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = cli(nodes, "rok", "attribution", "respond", "--relationship", f"relationship--{uuid.uuid4()}",
              "--opinion", "agree", check=False)
    assert out.returncode != 0 and "no attribution proposal" in out.stderr


def test_leak_check_and_no_inbound_conflicts_after_the_rounds(nodes):
    """After the rounds above: nothing withheld readable anywhere, and no identical joint product was refused."""
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
