"""Signed origin between two real nodes: what Japan can check after relay, and what a changed byte costs.

Both nodes sign with the keys ``pki init`` made (``CTI_EXCHANGE_PKI_DIR`` for the node processes, the sync
agents and the in-process loads); Japan reads ``jp-read`` over TAXII as ``jp`` and checks it with
``cti-exchange verify`` run as a subprocess.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid

import orjson
import pytest
import requests

from exchange.node.ops import open_node
from exchange.node.pki import init_pki
from exchange.node.signing import PKI_ENV, covered, member_of
from exchange.storage.store import DB_FILE
from tests.e2e.conftest import PASSWORDS, _pair, load_and_release

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
ROK_ID = "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
CLEAR = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
TAXII = "application/taxii+json;version=2.1"


@pytest.fixture(scope="module")
def signed_pair(tmp_path_factory):
    """Both nodes (no seed content), signing with the demo PKI's keys."""
    tmp = tmp_path_factory.mktemp("signed")
    pki = tmp / "pki"
    init_pki(pki, ("us", "rok"), days=2)
    old = os.environ.get(PKI_ENV)
    os.environ[PKI_ENV] = str(pki)
    try:
        for p in _pair(tmp, seed=False):
            p.pki_dir = pki  # type: ignore[attr-defined]
            yield p
    finally:
        if old is None:
            os.environ.pop(PKI_ENV, None)
        else:
            os.environ[PKI_ENV] = old


def _indicator(name: str, creator: str, marking: str) -> dict:
    return {
        "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "created_by_ref": creator,
        "name": name, "pattern": "[ipv4-addr:value = '203.0.113.9']", "pattern_type": "stix",
        "valid_from": "2026-11-01T00:00:00Z", "object_marking_refs": [marking],
    }


def _read(pair, node: str, account: str, alias: str) -> list[dict]:
    resp = requests.get(pair.procs[node].collection_url(alias) + "objects/", params={"match[version]": "all", "limit": "1000"},
                        headers={"Accept": TAXII}, auth=(account, PASSWORDS[node][account]), timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json().get("objects", [])


def _push_as_rok(pair, objs: list[dict]) -> dict:
    resp = requests.post(pair.procs["us"].collection_url("rok-inbox") + "objects/", data=orjson.dumps({"objects": objs}),
                         headers={"Accept": TAXII, "Content-Type": TAXII}, auth=("rok", PASSWORDS["us"]["rok"]), timeout=30)
    assert resp.status_code == 202, resp.text
    return resp.json()


def _signed_by_rok(pair, name: str) -> tuple[dict, dict]:
    """A ROK object released to the US (in ROK's us-read) and ROK's signature of it."""
    obj = _indicator(name, ROK_ID, GREEN)
    load_and_release(pair, "rok", [obj])
    held = _read(pair, "rok", "analyst", "us-read")
    sig = next(o for o in held if o["type"] == "x-cti-signature" and member_of(obj) in covered(o))  # its batch signature
    assert sig["created_by_ref"] == ROK_ID
    return obj, sig


def _inbound_rejects(pair, node: str, object_id: str) -> list[tuple]:
    opened = open_node(node, data_dir=pair.procs[node].data_dir)
    try:
        with opened.store.engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(
                "SELECT event, clauses FROM audit WHERE object_id = ? AND event = 'inbound-reject'", (object_id,))]
    finally:
        opened.close()


def _verify_jp_read_on_rok(pair) -> subprocess.CompletedProcess:
    """``cti-exchange verify`` of ROK's jp-read collection as Japan's account, with the exchange CA (JSON report)."""
    pw = pair.tmp / "jp-on-rok.pw"
    pw.write_text(PASSWORDS["rok"]["jp"] + "\n")
    return subprocess.run(
        [sys.executable, "-m", "exchange", "verify", pair.procs["rok"].collection_url("jp-read") + "objects/",
         "--ca-file", str(pair.pki_dir / "ca.crt"), "--user", "jp", "--password-file", str(pw), "--json"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


def test_a_us_object_relayed_by_rok_reaches_japan_verified_as_us_signed(signed_pair):
    pair = signed_pair
    obj = _indicator("US-authored, relayed by ROK to Japan", US_ID, CLEAR)
    load_and_release(pair, "us", [obj])
    pair.sync("us", "--once")  # pushes US's rok-read (object and US signature) into ROK's us-inbox
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # ROK's background releaser relays it onward to Japan
        if any(o["id"] == obj["id"] for o in _read(pair, "rok", "jp", "jp-read")):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the US object never reached jp-read on the ROK node")
    out = _verify_jp_read_on_rok(pair)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    row = next(r for r in report["objects"] if r["id"] == obj["id"])
    assert row == {"id": obj["id"], "modified": obj["modified"], "signer": US_ID, "status": "valid", "derived_from": None}
    assert report["invalid"] == 0
    opened = open_node("rok", data_dir=pair.procs["rok"].data_dir)
    try:  # ROK recorded where it came from: the US node's push, whatever the object claims
        inbox = opened.node.config.collection("us-inbox").id
        with opened.store.engine.connect() as conn:
            origin = conn.exec_driver_sql(
                "SELECT o.origin FROM objects o JOIN versions v ON v.key = o.ver "
                "WHERE o.coll = (SELECT key FROM collections WHERE collection_id = ?) AND v.stix_id = ?", (inbox, obj["id"])
            ).scalar()
    finally:
        opened.close()
    assert origin == "push:us"


def test_a_byte_changed_in_transit_is_refused_as_signature_invalid(signed_pair):
    pair = signed_pair
    obj, sig = _signed_by_rok(pair, "ROK indicator, changed on the way")
    tampered = dict(obj, name=obj["name"].replace("changed", "chang3d"))
    status = _push_as_rok(pair, [sig, tampered])
    reasons = {f["id"]: f["message"] for f in status.get("failures", [])}
    assert reasons[obj["id"]].startswith("inbound.signature-invalid"), reasons
    assert ("inbound-reject", '["inbound.signature-invalid"]') in _inbound_rejects(pair, "us", obj["id"])
    assert all(o["id"] != obj["id"] for o in _read(pair, "us", "analyst", "rok-inbox"))
    intact = _push_as_rok(pair, [sig, obj])  # the same object unchanged is accepted with its signature
    assert intact["success_count"] == 2 and not intact.get("failures"), intact


def test_an_unsigned_object_claiming_the_signing_partner_is_refused(signed_pair):
    status = _push_as_rok(signed_pair, [_indicator("unsigned, claims ROK", ROK_ID, GREEN)])
    assert status["failures"][0]["message"].startswith("inbound.signature-required"), status


def test_a_tampered_row_on_the_partners_node_is_refused_when_pulled(signed_pair):
    pair = signed_pair
    obj, _sig = _signed_by_rok(pair, "ROK indicator, row tampered at rest")
    db = sqlite3.connect(pair.procs["rok"].data_dir / DB_FILE, timeout=30)
    try:  # one byte of the released row changes after it was signed (what a proxy or a disk could do)
        with db:  # the version's text (version_bodies) and any row's own copy (bodies)
            changed = db.execute("UPDATE version_bodies SET body = replace(body, 'tampered at rest', 'tampered at r3st') "
                                 "WHERE key IN (SELECT key FROM versions WHERE stix_id = ?)", (obj["id"],)).rowcount
            changed += db.execute("UPDATE bodies SET body = replace(body, 'tampered at rest', 'tampered at r3st') "
                                  "WHERE hash IN (SELECT o.body_hash FROM objects o JOIN versions v ON v.key = o.ver "
                                  "WHERE v.stix_id = ?)", (obj["id"],)).rowcount
        assert changed >= 1
    finally:
        db.close()
    pair.sync("us", "--once", "--direction", "pull")
    assert ("inbound-reject", '["inbound.signature-invalid"]') in _inbound_rejects(pair, "us", obj["id"])
    assert all(o["id"] != obj["id"] for o in _read(pair, "us", "analyst", "rok-inbox"))


def _rejects_of(pair, node: str, ids: set[str]) -> list[tuple]:
    return [r for i in ids for r in _inbound_rejects(pair, node, i)]


def _held_ids(pair, node: str, account: str, alias: str) -> set[str]:
    return {o["id"] for o in _read(pair, node, account, alias)}


def test_a_batch_split_across_pulled_pages_and_pushed_envelopes_verifies_at_the_partner(signed_pair):
    """One batch companion covers all of a release; a page or envelope boundary inside the batch leaves later members
    without it in their page: the partner finds it among what it stored from an earlier page (by member key)."""
    pair = signed_pair
    pulled = [_indicator(f"ROK batch member {i}, pulled in pages of 3", ROK_ID, GREEN) for i in range(10)]
    load_and_release(pair, "rok", pulled)
    held = _read(pair, "rok", "analyst", "us-read")
    batch = [o for o in held if o["type"] == "x-cti-signature" and any(member_of(x) in covered(o) for x in pulled)]
    assert len(batch) == 1 and len(batch[0]["members"]) >= 10  # one companion for the release batch
    pair.sync("us", "--once", "--direction", "pull", "--page-size", "3")
    ids = {o["id"] for o in pulled}
    assert ids <= _held_ids(pair, "us", "analyst", "rok-inbox")
    assert _rejects_of(pair, "us", ids) == []
    pushed = [_indicator(f"ROK batch member {i}, pushed in envelopes of 4", ROK_ID, GREEN) for i in range(9)]
    load_and_release(pair, "rok", pushed)
    pair.sync("rok", "--once", "--direction", "push", "--envelope-size", "4")
    ids = {o["id"] for o in pushed}
    assert ids <= _held_ids(pair, "us", "analyst", "rok-inbox")
    assert _rejects_of(pair, "us", ids) == []


def test_japan_gets_the_origins_batch_companion_unchanged_with_a_subset_and_it_verifies(signed_pair):
    """ROK relays to Japan only some members of a US batch (received AMBER is not relayed); the companion is the US
    node's own, unchanged, and names no id of what Japan does not get."""
    pair = signed_pair
    clear = [_indicator(f"US CLEAR {i}, relayed", US_ID, CLEAR) for i in range(4)]
    amber = [_indicator(f"US AMBER {i}, not relayed", US_ID, "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421")
             for i in range(3)]
    batch = [x for pair_ in zip(clear, amber, strict=False) for x in pair_] + clear[len(amber):]
    load_and_release(pair, "us", batch)
    written = [o for o in _read(pair, "us", "analyst", "rok-read")
               if o["type"] == "x-cti-signature" and any(member_of(x) in covered(o) for x in batch)]
    assert len(written) == 1 and {member_of(x) for x in batch} <= set(covered(written[0]))
    pair.sync("us", "--once")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not {o["id"] for o in clear} <= _held_ids(pair, "rok", "jp", "jp-read"):
        time.sleep(0.5)
    jp = _read(pair, "rok", "jp", "jp-read")
    got = {o["id"] for o in jp}
    assert {o["id"] for o in clear} <= got and not ({o["id"] for o in amber} & got)
    relayed = [o for o in jp if o["type"] == "x-cti-signature" and o["id"] == written[0]["id"]]
    assert relayed == written  # the origin's word, never re-signed by the relayer
    text = json.dumps(jp)
    assert not any(o["id"] in text for o in amber)
    out = _verify_jp_read_on_rok(pair)
    assert out.stdout, out.stderr  # (exit 1 if another test of this module left a tampered row in jp-read)
    rows = {r["id"]: r for r in json.loads(out.stdout)["objects"]}
    assert all(rows[o["id"]]["status"] == "valid" and rows[o["id"]]["signer"] == US_ID for o in clear)
    subset = pair.tmp / "jp-subset.json"  # the companion and only the members Japan got, as a bundle
    subset.write_text(json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}",
                                  "objects": [*relayed, *(o for o in jp if o["id"] in {c["id"] for c in clear})]}))
    alone = subprocess.run([sys.executable, "-m", "exchange", "verify", str(subset), "--ca-file", str(pair.pki_dir / "ca.crt"), "--json"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert json.loads(alone.stdout)["valid"] == len(clear)
