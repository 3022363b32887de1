"""No partner speaks for another: attacks a partner's operator could try, against two real nodes.

ROK pushes into the US node's ``rok-inbox`` over TAXII as its ``rok`` account; Japan reads the
US node's ``jp-read`` over TAXII as ``jp``; ROK's node pulls and pushes with its sync agent.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import requests

from exchange.node.ops import open_node
from exchange.sharing.release import release_all
from tests.e2e.conftest import PASSWORDS, load_and_release

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
ROK_ID = "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
JP_ID = "identity--1a0aa608-42e5-4348-afbb-9c3a6e11535e"
JOINT_ID = "identity--9909a483-dc4f-404a-96a0-33f5fd316e10"
MITRE_ID = "identity--c78cb6e5-0c4b-4611-8297-d1b8b55e40b5"
MITRE_STATEMENT = "marking-definition--fa42a846-8d90-4e51-bc29-71d5b4802168"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
CLEAR = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"
AMBER_STRICT = "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"
TAXII = "application/taxii+json;version=2.1"
REPO = Path(__file__).resolve().parents[2]


def _indicator(name: str, creator: str | None, markings: list[str] | None, **extra) -> dict:
    obj = {
        "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z",
        "name": name, "pattern": "[ipv4-addr:value = '203.0.113.7']", "pattern_type": "stix",
        "valid_from": "2026-11-01T00:00:00Z",
    }
    if creator:
        obj["created_by_ref"] = creator
    if markings:
        obj["object_marking_refs"] = markings
    obj.update(extra)
    return obj


def _forged_identity(identity_id: str) -> dict:
    return {
        "type": "identity", "spec_version": "2.1", "id": identity_id, "created": "2023-01-01T00:00:00.000Z",
        "modified": "2030-01-01T00:00:00.000Z", "name": "FORGED BY ROK", "identity_class": "organization",
    }


def _push_as_rok(pair, objs: list[dict]) -> dict:
    resp = requests.post(
        pair.procs["us"].collection_url("rok-inbox") + "objects/", data=orjson.dumps({"objects": objs}),
        headers={"Accept": TAXII, "Content-Type": TAXII}, auth=("rok", PASSWORDS["us"]["rok"]), timeout=30,
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


def _release(pair, node: str) -> None:
    opened = open_node(node, data_dir=pair.procs[node].data_dir)
    try:
        release_all(opened)
    finally:
        opened.close()


def _read_all(pair, node: str, account: str, alias: str) -> list[dict]:
    """Every version of every object ``account`` can read in ``alias`` (Get Objects, paged with ``next``)."""
    url = pair.procs[node].collection_url(alias) + "objects/"
    out: list[dict] = []
    params: dict[str, str] = {"match[version]": "all", "limit": "1000"}
    for _ in range(100):
        resp = requests.get(url, params=params, headers={"Accept": TAXII}, auth=(account, PASSWORDS[node][account]), timeout=30)
        assert resp.status_code == 200, resp.text
        env = resp.json()
        out += env.get("objects", [])
        if not env.get("more"):
            return out
        params["next"] = env["next"]
    raise AssertionError("paging did not end")


def _failures(status: dict) -> dict[str, str]:
    return {f["id"]: f["message"] for f in status.get("failures", [])}


def test_forged_identity_never_reaches_japan(bare_pair):
    pair = bare_pair
    forged = [_forged_identity(i) for i in (US_ID, JOINT_ID, JP_ID, MITRE_ID)]
    status = _push_as_rok(pair, forged)
    assert status["success_count"] == 0, status
    assert all(m.startswith("inbound.identity-not-partner") for m in _failures(status).values()), status
    # US content that references the US identity, released to ROK and Japan
    load_and_release(pair, "us", [_indicator("us green", US_ID, [GREEN]), _indicator("us clear", US_ID, [CLEAR])])
    for account, alias in (("jp", "jp-read"), ("rok", "rok-read")):
        served = _read_all(pair, "us", account, alias)
        assert served, f"nothing released to {alias}"
        assert not [o for o in served if o.get("name") == "FORGED BY ROK"], alias
        identities = [o for o in served if o["type"] == "identity" and o["id"] == US_ID]
        assert identities and all(o["name"] != "FORGED BY ROK" for o in identities)


def test_an_exact_copy_of_a_declared_identity_is_accepted_before_the_node_loads_it(bare_pair):
    """identities.json is held by every party: a partner relaying an exact copy rewrites nothing.

    Seen in the compose demo under load: the US's sync agent delivered ROK's own identity (seeded at
    the US) before ROK's analyst had loaded it, ROK refused it for good, and the demo waited in vain.
    """
    declared = {o["id"]: o for o in orjson.loads((REPO / "collections" / "identities.json").read_bytes())["objects"]}
    exact = [declared[i] for i in (US_ID, JP_ID, JOINT_ID)]
    altered = dict(declared[JP_ID], modified="2031-01-01T00:00:00.000Z", name="Japan (as ROK says)")
    status = _push_as_rok(bare_pair, [*exact, altered])
    assert _failures(status) == {JP_ID: _failures(status)[JP_ID]}, status
    assert _failures(status)[JP_ID].startswith("inbound.identity-not-partner"), status
    assert status["success_count"] == 3, status


def test_partner_cannot_version_an_official_marking_definition(bare_pair):
    altered = {
        "type": "marking-definition", "spec_version": "2.1", "id": GREEN, "created": "2022-10-01T00:00:00.000Z",
        "name": "TLP:CLEAR", "extensions": {"extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {
            "extension_type": "property-extension", "tlp_2_0": "clear"}},
    }
    status = _push_as_rok(bare_pair, [altered])
    assert _failures(status)[GREEN].startswith("inbound.official-definition"), status


def test_false_creators_are_refused_and_never_relayed_to_japan(bare_pair):
    pair = bare_pair
    as_mitre = _indicator("claims MITRE", MITRE_ID, None)
    as_joint = _indicator("claims the joint cell", JOINT_ID, [CLEAR])
    as_us = _indicator("claims the US", US_ID, [GREEN])
    as_japan = _indicator("claims Japan", JP_ID, [CLEAR])
    own = _indicator("ROK's own", ROK_ID, [CLEAR])
    status = _push_as_rok(pair, [as_mitre, as_joint, as_us, as_japan, own])
    reasons = _failures(status)
    assert set(reasons) == {as_mitre["id"], as_joint["id"], as_us["id"], as_japan["id"]}, status
    assert all(m.startswith("inbound.creator-is-partner") for m in reasons.values())
    _release(pair, "us")
    at_japan = {o["id"] for o in _read_all(pair, "us", "jp", "jp-read")}
    assert own["id"] in at_japan  # ROK's own TLP:CLEAR indicator goes onward under its own name
    assert not at_japan & set(reasons)


def test_a_public_source_statement_marking_alone_is_not_public(bare_pair):
    pair = bare_pair
    statement = _indicator("US indicator with only MITRE's copyright statement", US_ID, [MITRE_STATEMENT])
    load_and_release(pair, "us", [statement])
    for account, alias in (("rok", "rok-read"), ("jp", "jp-read")):
        assert statement["id"] not in {o["id"] for o in _read_all(pair, "us", account, alias)}, alias
    bundle = pair.tmp / "statement.json"
    bundle.write_bytes(orjson.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [statement]}))
    out = subprocess.run(
        [sys.executable, "-m", "exchange", "policy", "check", str(bundle), "--from", "us", "--to", "rok", "--json"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert '"withhold"' in out.stdout and "scf.unmarked-default" in out.stdout


def test_ids_pushed_by_a_partner_do_not_release_a_deferred_relationship(bare_pair):
    pair = bare_pair
    secret = _indicator("AMBER+STRICT indicator", US_ID, [AMBER_STRICT])
    malware = {
        "type": "malware", "spec_version": "2.1", "id": f"malware--{uuid.uuid4()}", "created_by_ref": US_ID,
        "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "name": "AppleJeus variant",
        "is_family": True, "object_marking_refs": [GREEN],
    }
    rel = {
        "type": "relationship", "spec_version": "2.1", "id": f"relationship--{uuid.uuid4()}", "created_by_ref": US_ID,
        "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "relationship_type": "indicates",
        "source_ref": secret["id"], "target_ref": malware["id"], "object_marking_refs": [GREEN],
    }
    load_and_release(pair, "us", [secret, malware, rel])
    assert rel["id"] not in {o["id"] for o in _read_all(pair, "us", "rok", "rok-read")}
    # ROK pushes an object of its own under the withheld indicator's id: it proves nothing
    decoy = dict(_indicator("decoy", ROK_ID, [GREEN]), id=secret["id"])
    status = _push_as_rok(pair, [decoy])
    assert status["success_count"] == 1, status
    _release(pair, "us")
    at_rok = {o["id"] for o in _read_all(pair, "us", "rok", "rok-read")}
    assert rel["id"] not in at_rok and secret["id"] not in at_rok


def test_relayed_objects_keep_their_sender_and_companions_come_from_trusted_sources(bare_pair):
    """ROK's content reaches Japan through the US with ROK's identity as ROK sent it; the US identity Japan holds is the US's."""
    pair = bare_pair
    own = _indicator("ROK's shared indicator", ROK_ID, [CLEAR])
    rok_identity = {
        "type": "identity", "spec_version": "2.1", "id": ROK_ID, "created": "2023-01-01T00:00:00.000Z",
        "modified": "2023-01-01T00:00:00.000Z", "name": "ROK partner (as ROK says)", "identity_class": "organization",
    }
    status = _push_as_rok(pair, [rok_identity, own])
    assert status["success_count"] == 2, status
    load_and_release(pair, "us", [_indicator("us clear", US_ID, [CLEAR])])
    served = {(o["id"], o.get("name")) for o in _read_all(pair, "us", "jp", "jp-read")}
    assert (own["id"], own["name"]) in served
    assert (ROK_ID, "ROK partner (as ROK says)") in served
    us_names = {name for oid, name in served if oid == US_ID}
    assert us_names and "FORGED BY ROK" not in us_names


def test_a_partner_relays_a_public_object_only_as_an_exact_copy_of_what_the_node_loaded(bare_pair):
    pair = bare_pair
    group = {
        "type": "intrusion-set", "spec_version": "2.1", "id": f"intrusion-set--{uuid.uuid4()}", "created_by_ref": MITRE_ID,
        "created": "2017-05-31T21:31:49.412Z", "modified": "2025-04-15T19:58:39.154Z", "name": "Lazarus Group (test copy)",
        "object_marking_refs": [MITRE_STATEMENT],
    }
    load_and_release(pair, "us", [group])  # the US analysts loaded it from MITRE
    altered = dict(group, description="Attributed by MITRE to the ROK", modified="2030-01-01T00:00:00.000Z")
    unknown = dict(group, id=f"intrusion-set--{uuid.uuid4()}", name="never published by MITRE")
    status = _push_as_rok(pair, [group, altered, unknown])
    refused = {(f["id"], f.get("version")): f["message"] for f in status.get("failures", [])}
    assert status["success_count"] == 1, status  # the exact copy
    assert set(refused) == {(altered["id"], altered["modified"]), (unknown["id"], unknown["modified"])}, status
    assert all(m.startswith("inbound.creator-is-partner") and "exact copy" in m for m in refused.values())


def test_a_write_grant_on_a_partner_read_collection_is_refused(bare_pair):
    pair = bare_pair
    data = pair.procs["us"].data_dir
    out = subprocess.run(
        [sys.executable, "-m", "exchange", "account", "add", "us", "analyst2", "--password-stdin", "--write", "rok-read",
         "--data-dir", str(data)],
        input="analyst2-password-long\n", capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "analyst2" in lines[0] and "rok-read" in lines[0], out.stderr
    # a grant already in the database (written before this rule) gives no write either
    opened = open_node("us", data_dir=data)
    try:
        rok_read = opened.node.config.collection("rok-read").id
        from exchange.node.accounts import hash_password

        opened.store.upsert_account("legacy", password_hash=hash_password("legacy-password-long"), read=[rok_read],
                                    write=[rok_read], source="cli")
    finally:
        opened.close()
    unmarked = _indicator("unmarked, straight into the partner's read collection", US_ID, None)
    resp = requests.post(
        pair.procs["us"].collection_url("rok-read") + "objects/", data=orjson.dumps({"objects": [unmarked]}),
        headers={"Accept": TAXII, "Content-Type": TAXII}, auth=("legacy", "legacy-password-long"), timeout=30,
    )
    assert resp.status_code == 403, resp.text
    assert resp.json()["http_status"] == "403"
    assert unmarked["id"] not in {o["id"] for o in _read_all(pair, "us", "rok", "rok-read")}
