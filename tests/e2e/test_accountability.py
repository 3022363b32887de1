"""Accountability between the partners (issue 17), two real nodes and their real sync agents.

One exchange for the module: the US releases three indicators (one without
``created_by_ref``, which ROK's inbound rules refuse), both agents sync, ROK records a
sighting of the US's TLP:AMBER indicator, both agents sync again.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import orjson
import pytest
import requests
from click.testing import CliRunner

from exchange.cli import main
from exchange.node.audit_key import KEY_FILE, signer_for
from exchange.storage import audit
from exchange.storage.store import DB_FILE
from tests.conftest import new_indicator
from tests.e2e.conftest import PASSWORDS, _pair, load_and_release

GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
AMBER = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
US = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
TAXII = "application/taxii+json;version=2.1"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def exchanged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accountability")
    for pair in _pair(tmp, seed=False):
        ok = new_indicator(1, marking=GREEN, created_by_ref=US)
        unattributed = new_indicator(2, marking=GREEN)  # no created_by_ref: ROK refuses it (inbound.creator-is-partner)
        amber = new_indicator(3, marking=AMBER, created_by_ref=US)
        load_and_release(pair, "us", [ok, unattributed, amber])
        pair.sync("us", "--once")
        pair.sync("rok", "--once")
        code, out = cli("sighting", "add", "rok", "--of", amber["id"], "--count", "3", "--first-seen", "2026-11-30T01:00:00Z",
                        "--last-seen", "2026-11-30T02:00:00Z", "--data-dir", str(pair.procs["rok"].data_dir), "--json")
        assert code == 0, out
        sighting = json.loads(out)["sighting"]
        pair.sync("rok", "--once")
        pair.sync("us", "--once")
        yield pair, {"ok": ok, "unattributed": unattributed, "amber": amber, "sighting": sighting}


def _dir(pair, node: str) -> str:
    return str(pair.procs[node].data_dir)


def _trace(pair, oid: str, *nodes: str) -> dict:
    args = ["trace", oid, "--json"]
    for n in nodes:
        args += ["--data-dir", _dir(pair, n)]
    code, out = cli(*args)
    assert code == 0, out
    return json.loads(out)


def test_a_refusal_by_rok_inbound_rules_is_visible_at_the_sender_in_trace(exchanged):
    pair, objs = exchanged
    t = _trace(pair, objs["unattributed"]["id"], "us")
    assert set(t) == {"id", "versions"} and t["id"] == objs["unattributed"]["id"]
    [version] = t["versions"]
    assert set(version) == {"modified", "events"} and version["modified"] == objs["unattributed"]["modified"]
    for e in version["events"]:
        assert set(e) == {"at", "node", "event", "partner", "decision", "clauses", "detail"}
    receipts = [e for e in version["events"] if e["event"] == "receipt"]
    assert receipts, version["events"]
    r = receipts[0]
    assert r["node"] == "us" and r["partner"] == "rok" and r["decision"] == "refused"
    assert r["clauses"] == ["inbound.creator-is-partner"] and "created_by_ref" in r["detail"]["reason"]
    shares = [e for e in version["events"] if e["event"] == "share" and e["partner"] == "rok"]
    assert len(shares) == 1 and shares[0]["clauses"]  # the release decision, with its clause
    assert len(receipts) == 1  # refused twice at ROK (our push, its pull): one receipt


def test_the_refusal_is_counted_once_in_the_two_node_report_with_rule_and_reason(exchanged):
    pair, objs = exchanged
    code, out = cli("report", "--data-dir", _dir(pair, "us"), "--data-dir", _dir(pair, "rok"), "--json")
    assert code == 0, out
    us_rok = json.loads(out)["directions"]["us->rok"]
    assert us_rok["rejected"] == {"inbound.creator-is-partner": 1}
    assert us_rok["receipts"]["refused"] == 1 and us_rok["receipts"]["refused_by_rule"] == {"inbound.creator-is-partner": 1}
    assert us_rok["receipts"]["accepted"] >= 2
    code, out = cli("report", "--data-dir", _dir(pair, "us"))  # the sender alone: from the receipts it holds
    assert code == 0 and "inbound.creator-is-partner: 1" in out, out


def test_rok_logs_one_accepted_entry_per_version(exchanged):
    pair, objs = exchanged
    code, out = cli("audit", "show", "--data-dir", _dir(pair, "rok"), "--object", objs["ok"]["id"], "--json-lines")
    assert code == 0, out
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert sum(e in ("pull", "inbound-accept") for e in events) == 1, events


def test_push_latency_is_measured_from_the_release(exchanged):
    pair, objs = exchanged
    code, out = cli("audit", "export", "--data-dir", _dir(pair, "us"), "--event", "push", "--object", objs["ok"]["id"])
    assert code == 0, out
    [push] = [json.loads(line) for line in out.splitlines()]
    assert push["detail"]["latency_from"] == "release"
    assert 0 <= push["detail"]["latency_s"] < 120  # seconds from release, not from 2024's `modified`
    assert set(push) >= {"seq", "at", "node", "event", "partner", "object_id", "version", "decision", "clauses", "detail", "hash"}


def test_a_rok_sighting_reaches_the_us_and_appears_in_trace(exchanged):
    pair, objs = exchanged
    t = _trace(pair, objs["amber"]["id"], "us")
    events = [e for v in t["versions"] for e in v["events"]]
    got = [e for e in events if e["event"] == "sighting-received"]
    assert got and got[0]["partner"] == "rok" and got[0]["detail"]["sighting"] == objs["sighting"]["id"]
    assert got[0]["detail"]["count"] == 3 and got[0]["detail"]["by"] == "rok"
    code, out = cli("sighting", "list", "us", "--of", objs["amber"]["id"], "--data-dir", _dir(pair, "us"), "--json")
    assert code == 0 and json.loads(out)[objs["amber"]["id"]][0]["by"] == "rok", out
    joined = _trace(pair, objs["amber"]["id"], "us", "rok")
    nodes = {(e["node"], e["event"]) for v in joined["versions"] for e in v["events"]}
    assert ("rok", "sighting") in nodes and ("rok", "sighting-share") in nodes and ("us", "sighting-received") in nodes


def test_an_amber_sighting_never_reaches_japan(exchanged):
    pair, objs = exchanged
    sid = objs["sighting"]["id"]
    for node in ("rok", "us"):
        url = pair.procs[node].collection_url("jp-read") + "objects/"
        resp = requests.get(url, headers={"Accept": TAXII}, auth=("jp", PASSWORDS[node]["jp"]), timeout=10)
        assert resp.status_code == 200
        assert sid not in {o["id"] for o in resp.json().get("objects", [])}
    code, out = cli("audit", "show", "--data-dir", _dir(pair, "rok"), "--object", sid, "--partner", "jp", "--json-lines")
    decisions = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and decisions and all(d["decision"] == "withhold" for d in decisions), out


def _password_file(pair, node: str) -> Path:
    return pair.password_file(node)


def test_each_chain_extends_every_checkpoint_the_partner_holds(exchanged):
    pair, _ = exchanged
    for node, partner in (("us", "rok"), ("rok", "us")):
        code, out = cli("audit", "verify", "--data-dir", _dir(pair, node), "--partner-data-dir", _dir(pair, partner))
        assert code == 0 and "checkpoints the partner holds" in out, out
        assert " 0 checkpoints" not in out, out
    code, out = cli("audit", "verify", "--data-dir", _dir(pair, "us"), "--checkpoints-from", pair.procs["rok"].url,
                    "--password-file", str(_password_file(pair, "us")))
    assert code == 0 and "checkpoints the partner holds" in out, out


def _copy_node(src: Path, dst: Path) -> None:
    dst.mkdir()
    shutil.copy(src / KEY_FILE, dst / KEY_FILE)
    with sqlite3.connect(src / DB_FILE) as a, sqlite3.connect(dst / DB_FILE) as b:
        a.backup(b)


def test_a_rewrite_with_the_key_after_a_checkpoint_is_caught_by_the_partner(exchanged, tmp_path):
    pair, _ = exchanged
    copy = tmp_path / "us"
    _copy_node(pair.procs["us"].data_dir, copy)
    db = sqlite3.connect(copy / DB_FILE)
    db.row_factory = sqlite3.Row
    with db:  # the key holder edits entry 2, recomputes the chain and signs a new head
        db.execute("UPDATE audit SET decision = 'withhold' WHERE seq = 2")
        prev = audit.GENESIS
        for r in db.execute("SELECT * FROM audit ORDER BY seq").fetchall():
            e = audit.Entry(r["event"], r["partner"], r["object_id"], r["version"], r["decision"],
                            tuple(orjson.loads(r["clauses"])), orjson.loads(r["detail"]),
                            audit.partners_of(r["partners"]))  # a group entry's members are hashed too
            h = audit._digest(prev, r["seq"], r["at"], e)
            db.execute("UPDATE audit SET prev = ?, hash = ? WHERE seq = ?", (prev, h, r["seq"]))
            prev, last = h, r
        head = audit.sign_head(signer_for(copy), last["seq"], prev, last["at"])
        db.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (head.encode(),))
    db.close()
    code, out = cli("audit", "verify", "--data-dir", str(copy))
    assert code == 0, out  # alone it verifies: the key signs anything
    code, out = cli("audit", "verify", "--data-dir", str(copy), "--partner-data-dir", _dir(pair, "rok"))
    assert code != 0 and "checkpoint at entry" in out and "held by rok" in out and "rewritten" in out, out


def test_checkpoints_and_receipts_are_append_only_for_the_partner(exchanged):
    pair, _ = exchanged
    base = pair.procs["rok"].collection_url("us-receipts")
    auth = ("us", PASSWORDS["rok"]["us"])
    objs = requests.get(base + "objects/", headers={"Accept": TAXII}, auth=auth, timeout=10).json()["objects"]
    assert objs
    resp = requests.delete(base + f"objects/{objs[0]['id']}/", headers={"Accept": TAXII}, auth=auth, timeout=10)
    assert resp.status_code == 403
    forged = dict(objs[0], id="note--5f0c5b1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b", created_by_ref="identity--99da2a3b-3031-468d-b273-2f29aec7f816")
    resp = requests.post(base + "objects/", data=orjson.dumps({"objects": [forged]}), auth=auth, timeout=10,
                         headers={"Accept": TAXII, "Content-Type": TAXII})
    status = resp.json()
    assert status["failure_count"] == 1 and status["failures"][0]["message"].startswith("receipts.checkpoint-only")
