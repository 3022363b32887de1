"""End to end, both directions, push and pull, with the seeded content (two node processes)."""

from __future__ import annotations

import sqlite3

import orjson
import pytest
from click.testing import CliRunner

from exchange.cli import main
from exchange.demo.run import decisions, leak_check
from exchange.stix import parse_timestamp
from exchange.storage import audit
from exchange.storage.store import Store
from tests.e2e.conftest import PARTNER, PASSWORDS

RED = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"
STRICT = "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"


def _released(pair, node: str, recipient: str) -> set[tuple[str, str]]:
    released = {(d["object_id"], d["version"]) for d in decisions(pair.procs[node].data_dir)
                if d["partner"] == recipient and d["decision"] != "withhold"}
    return released | _withdrawals(pair, node, recipient)


def _withdrawals(pair, node: str, recipient: str) -> set[tuple[str, str]]:
    """The withdrawals (revoked versions) and re-issued versions the node wrote for ``recipient`` (issue 16)."""
    store = Store.open(data_dir=pair.procs[node].data_dir)
    try:
        return {(e["object_id"], e["version"]) for e in audit.entries(store)
                if e["event"] == "withdraw" and e["partner"] == recipient and e["detail"].get("action") in ("revoked-version", "reissued")}
    finally:
        store.close()


def _arrived(pair, node: str) -> list[tuple[str, str]]:
    """(id, version) of every object version in ``node``'s inbox from its partner, via the manifest."""
    client = pair.exchange.client(node, "analyst")
    try:
        return [(m["id"], m["version"]) for m in client.manifest(f"{PARTNER[node]}-inbox")]
    finally:
        client.close()


@pytest.mark.parametrize("sender", ["us", "rok"])
def test_what_the_policy_releases_arrives_exactly_once(synced_pair, sender):
    receiver = PARTNER[sender]
    expected = _released(synced_pair, sender, receiver)
    arrived = _arrived(synced_pair, receiver)
    assert len(arrived) == len(set(arrived)), "an object version arrived twice"
    # objects without created/modified (SCOs) are versioned by date_added at each node (TAXII 2.1 s3.4.3)
    unversioned = {oid for oid, version in expected if version is None}
    assert {(oid, None if oid in unversioned else v) for oid, v in arrived} == expected
    assert len(expected) > 100


def test_nothing_withheld_is_readable_at_the_partner_by_any_endpoint(synced_pair):
    result = leak_check(synced_pair.exchange)
    assert result["ok"], result["leaks"]
    assert result["checked"] >= 20


def _exercise(pair, node: str, name: str) -> list[dict]:
    from exchange.config import collections_dir

    bundle = orjson.loads((collections_dir() / node / "seed" / "exercise.json").read_bytes())
    return [o for o in bundle["objects"] if o.get("name") == name]


@pytest.mark.parametrize("sender", ["us", "rok"])
def test_amber_strict_and_red_never_reach_partner(synced_pair, sender):
    receiver = PARTNER[sender]
    from exchange.config import collections_dir

    bundle = orjson.loads((collections_dir() / sender / "seed" / "exercise.json").read_bytes())
    kept_home = {o["id"] for o in bundle["objects"] if {RED, STRICT} & set(o.get("object_marking_refs", ()))}
    assert kept_home
    client = synced_pair.exchange.client(receiver, "analyst")
    try:
        for oid in kept_home:
            shown = client.reveal(f"{sender}-inbox", oid)
            # an object with several versions may have a GREEN version at the partner, never a RED/STRICT one
            for obj in shown["objects"] + shown["object"]:
                assert not ({RED, STRICT} & set(obj.get("object_marking_refs", ()))), oid
    finally:
        client.close()


def test_only_the_green_version_of_a_later_red_object_crosses(synced_pair):
    v1, v2 = sorted(_exercise(synced_pair, "us", "Versioned indicator (exercise)"), key=lambda o: o["modified"])
    client = synced_pair.exchange.client("rok", "analyst")
    try:
        shown = client.reveal("us-inbox", v1["id"])
    finally:
        client.close()
    # the RED version never crosses; being the newest, it withdraws the GREEN one (issue 16): the partner's
    # latest is a revoked version with nothing of the RED version (exchange.sharing.lifecycle)
    assert shown["versions"][0] == v1["modified"] and len(shown["versions"]) == 2
    green, withdrawal = sorted(shown["object"], key=lambda o: parse_timestamp(o["modified"]))
    assert green == v1 and withdrawal["revoked"] is True and parse_timestamp(withdrawal["modified"]) > parse_timestamp(v2["modified"])
    assert all(withdrawal[k] == v1[k] for k in withdrawal if k not in ("modified", "revoked"))
    assert v2["modified"] not in {m["version"] for m in shown["manifest"]}


def test_granular_and_personal_fields_are_removed_at_the_partner(synced_pair):
    client = synced_pair.exchange.client("rok", "analyst")
    try:
        report = _exercise(synced_pair, "us", "DPRK job-lure campaign summary (exercise)")[0]
        got = client.reveal("us-inbox", report["id"])["object"][0]
        assert "description" not in got  # marked AMBER+STRICT inside a GREEN report
        assert set(got["object_refs"]) < set(report["object_refs"])  # withheld indicators dropped
        assert got["created_by_ref"] == report["created_by_ref"]
        pii = [o for o in client.reveal("us-inbox", "email-addr--11fb2785-b0c9-5ed4-b963-43326094757f")["object"]]
        assert pii and "display_name" not in pii[0] and pii[0]["value"]
    finally:
        client.close()


def test_provider_attribution_must_not_is_never_named_onward(synced_pair):
    """IEP 2.0 provider_attribution must-not binds redistribution: the partner gets it, a third party never with the provider."""
    ind = _exercise(synced_pair, "us", "Provider-protected lure domain (exercise)")[0]
    rok = synced_pair.exchange.client("rok", "analyst")
    jp = synced_pair.exchange.client("rok", "jp")
    try:
        direct = rok.reveal("us-inbox", ind["id"])["object"]
        onward = jp.reveal("jp-read", ind["id"])["object"]
    finally:
        rok.close()
        jp.close()
    assert [o["created_by_ref"] for o in direct] == [ind["created_by_ref"]]
    assert all("created_by_ref" not in o for o in onward)


def test_partner_accounts_never_read_the_internal_collection(synced_pair):
    import requests

    for node in ("us", "rok"):
        proc = synced_pair.procs[node]
        own = f"{node}-intel"
        for account in (PARTNER[node], "jp"):
            resp = requests.get(
                proc.collection_url(own) + "objects/",
                headers={"Accept": "application/taxii+json;version=2.1"},
                auth=(account, PASSWORDS[node][account]),
                timeout=10,
            )
            assert resp.status_code == 404


def test_audit_chains_verify_after_the_exchange(synced_pair):
    for node in ("us", "rok"):
        result = CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(synced_pair.procs[node].data_dir)])
        assert result.exit_code == 0, result.output
        assert "audit chain OK" in result.output


def test_tampering_with_one_audit_line_is_detected(pair, tmp_path):
    pair.sync("us", "--once")
    data = pair.procs["us"].data_dir
    runner = CliRunner()
    assert runner.invoke(main, ["audit", "verify", "--data-dir", str(data)]).exit_code == 0
    db = sqlite3.connect(data / "cti-exchange.sqlite")
    with db:
        db.execute("UPDATE audit SET decision = 'share' WHERE seq = (SELECT MIN(seq) FROM audit WHERE decision = 'withhold')")
    db.close()
    result = runner.invoke(main, ["audit", "verify", "--data-dir", str(data)])
    assert result.exit_code != 0
    assert "BROKEN" in result.output and "edited" in result.output


def test_deleting_an_audit_line_is_detected(pair):
    data = pair.procs["rok"].data_dir
    db = sqlite3.connect(data / "cti-exchange.sqlite")
    with db:
        db.execute("DELETE FROM audit WHERE seq = 5")
    db.close()
    result = CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(data)])
    assert result.exit_code != 0 and "missing" in result.output


def test_truncating_the_audit_log_is_detected(pair):
    data = pair.procs["rok"].data_dir
    db = sqlite3.connect(data / "cti-exchange.sqlite")
    with db:
        db.execute("DELETE FROM audit WHERE seq > 3")
    db.close()
    result = CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(data)])
    assert result.exit_code != 0 and "removed" in result.output
