"""Crash safety, partner outages, inbound rejections and refused credentials, with real processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import orjson
import pytest
import requests
from click.testing import CliRunner

from exchange.cli import main
from exchange.node.ops import open_node
from tests.e2e.conftest import PASSWORDS, load_and_release

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
ROK_ID = "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
TAXII = "application/taxii+json;version=2.1"


def _indicators(n: int, creator: str, tag: str) -> list[dict]:
    import uuid

    return [
        {
            "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}", "created_by_ref": creator,
            "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z",
            "name": f"{tag} {i}", "pattern": f"[ipv4-addr:value = '192.0.2.{i % 250}']", "pattern_type": "stix",
            "valid_from": "2026-11-01T00:00:00Z", "object_marking_refs": [GREEN],
        }
        for i in range(n)
    ]


def _inbox(pair, node: str, partner: str) -> list[tuple[str, str]]:
    opened = open_node(node, data_dir=pair.procs[node].data_dir)
    try:
        from exchange.storage.store import Selection

        coll = opened.node.config.partner_collection(partner, "partner-inbox")
        return [(r.stix_id, r.version) for r in opened.store.iter_rows(Selection(coll.id, versions=("all",)))]
    finally:
        opened.close()


def _verify(pair, node: str) -> None:
    result = CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(pair.procs[node].data_dir)])
    assert result.exit_code == 0, result.output


def _start_agent(pair, node: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        pair.sync_cmd(node, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, start_new_session=True,
    )


def _kill(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    return out or ""


@pytest.mark.slow
def test_killing_agents_and_the_receiving_node_mid_transfer_loses_and_duplicates_nothing(bare_pair):
    pair = bare_pair
    objs = _indicators(5000, US_ID, "crash-test")
    load_and_release(pair, "us", objs)
    rng = random.Random(20231126)
    progress: list[int] = []
    for round_no in range(4):
        # ROK pulls from the US while the US pushes to ROK; both agents die at random points,
        # and every other round the receiving node itself is killed with SIGKILL too
        puller = _start_agent(pair, "rok", "--interval", "0.2", "--page-size", "100", "--direction", "pull")
        pusher = _start_agent(pair, "us", "--interval", "0.2", "--envelope-size", "100", "--direction", "push", "--retries", "3")
        time.sleep(rng.uniform(0.4, 1.6))
        if round_no % 2 == 1:
            pair.procs["rok"].kill9()
        time.sleep(rng.uniform(0.1, 0.8))
        _kill(puller)
        _kill(pusher)
        if not pair.procs["rok"].running:
            pair.restart("rok")
        progress.append(len(_inbox(pair, "rok", "us")))
    print("inbox size after each crash round:", progress)
    assert progress[0] < len(objs), "the first round should have been cut short"
    pair.sync("rok", "--once", "--direction", "pull")
    pair.sync("us", "--once", "--direction", "push")
    arrived = _inbox(pair, "rok", "us")
    assert len(arrived) == len(set(arrived)), "duplicate object versions after crashes"
    ids = {oid for oid, _ in arrived}
    assert {o["id"] for o in objs} <= ids, f"{len({o['id'] for o in objs} - ids)} objects lost"
    assert len(ids - {o["id"] for o in objs}) <= 3  # only the companions (the US identity)
    _verify(pair, "us")
    _verify(pair, "rok")


@pytest.mark.slow
def test_partner_down_then_back_the_agent_catches_up_with_no_loss(bare_pair):
    pair = bare_pair
    objs = _indicators(400, US_ID, "outage-test")
    load_and_release(pair, "us", objs)
    rok = pair.procs["rok"]
    port = int(rok.url.split(":")[2].split("/")[0])
    rok.stop()
    agent = _start_agent(pair, "us", "--interval", "0.3", "--direction", "push", "--retries", "2")
    try:
        time.sleep(3.0)
        assert agent.poll() is None, "the agent must keep running while the partner is down"
        from exchange.demo.procs import NodeProcess

        pair.procs["rok"] = NodeProcess("rok", rok.data_dir, port=port).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_inbox(pair, "rok", "us")) < len(objs):
            time.sleep(0.5)
    finally:
        log = _kill(agent)
    arrived = _inbox(pair, "rok", "us")
    assert {o["id"] for o in objs} <= {oid for oid, _ in arrived}
    assert len(arrived) == len(set(arrived))
    assert "unreachable" in log  # the outage was logged clearly


def test_once_with_the_partner_down_fails_clearly_and_loses_nothing(bare_pair):
    pair = bare_pair
    load_and_release(pair, "us", _indicators(50, US_ID, "down"))
    pair.procs["rok"].stop()
    out = pair.sync("us", "--once", "--direction", "push", "--retries", "2", check=False)
    assert out.returncode != 0
    assert "unavailable" in out.stderr and "unreachable" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_wrong_partner_password_stops_with_a_clear_message(bare_pair):
    pair = bare_pair
    path = pair.tmp / "wrong.pw"
    path.write_text("not-the-password-at-all\n")
    cmd = pair.sync_cmd("us", "--once")
    cmd[cmd.index("--password-file") + 1] = str(path)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert "refused account 'us' (401)" in out.stderr


def _post(pair, node: str, account: str, alias: str, objs: list[dict]) -> dict:
    resp = requests.post(
        pair.procs[node].collection_url(alias) + "objects/",
        data=orjson.dumps({"objects": objs}),
        headers={"Accept": TAXII, "Content-Type": TAXII},
        auth=(account, PASSWORDS[node][account]),
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_inbound_rejects_forged_creator_and_unmarked_objects_with_the_rule(bare_pair):
    pair = bare_pair
    good, forged, unmarked = _indicators(3, ROK_ID, "inbound")
    forged["created_by_ref"] = US_ID  # ROK claims the US wrote it
    del unmarked["object_marking_refs"]
    status = _post(pair, "us", "rok", "rok-inbox", [good, forged, unmarked])
    assert status["success_count"] == 1 and status["failure_count"] == 2
    reasons = {f["id"]: f["message"] for f in status["failures"]}
    assert reasons[forged["id"]].startswith("inbound.creator-is-partner")
    assert reasons[unmarked["id"]].startswith("inbound.tlp-required")
    # the accepted object keeps its markings and provenance untouched
    client = pair.exchange.client("us", "analyst")
    try:
        stored = client.reveal("rok-inbox", good["id"])["object"]
    finally:
        client.close()
    assert stored == [good]
    from exchange.storage import audit
    from exchange.storage.store import Store

    store = Store.open(data_dir=pair.procs["us"].data_dir)
    try:
        rejected = [e for e in audit.entries(store) if e["event"] == "inbound-reject"]
    finally:
        store.close()
    assert {e["object_id"] for e in rejected} == {forged["id"], unmarked["id"]}
    assert {e["clauses"][0] for e in rejected} == {"inbound.creator-is-partner", "inbound.tlp-required"}


def test_later_multi_page_pulls_resume_from_the_bookmark(bare_pair):
    """Each walk after the first uses added_after + next across several pages: nothing is missed."""
    pair = bare_pair
    first = _indicators(1500, US_ID, "walk-1")
    load_and_release(pair, "us", first)
    pair.sync("rok", "--once", "--direction", "pull", "--page-size", "200")
    second = _indicators(2300, US_ID, "walk-2")
    load_and_release(pair, "us", second)
    pair.sync("rok", "--once", "--direction", "pull", "--page-size", "200")
    ids = [oid for oid, _ in _inbox(pair, "rok", "us")]
    assert len(ids) == len(set(ids))
    assert {o["id"] for o in first + second} <= set(ids)


def test_a_refused_saved_cursor_restarts_from_the_last_completed_walk(bare_pair):
    pair = bare_pair
    objs = _indicators(300, US_ID, "cursor")
    load_and_release(pair, "us", objs)
    opened = open_node("rok", data_dir=pair.procs["rok"].data_dir)
    try:
        with opened.store.transaction() as conn:  # as if the partner's data (and its cursor secret) had been reset
            opened.store.set_state(conn, "pull:us", orjson.dumps({"added_after": None, "next": "forged.token"}).decode())
    finally:
        opened.close()
    out = pair.sync("rok", "--once", "--direction", "pull")
    assert "restarting from added_after" in out.stderr
    assert {o["id"] for o in objs} <= {oid for oid, _ in _inbox(pair, "rok", "us")}
