"""Joint attribution end to end (helpers: tests/e2e/attribution_flow.py): a revised proposal resets the
concurrence, and a new concurrence makes a new joint report and a new version of the joint attribution."""

from __future__ import annotations

from exchange.sharing import attribution as attr
from exchange.stix import parse_timestamp
from tests.e2e.attribution_flow import (
    assert_never_outside,
    assert_no_leak_and_no_inbound_conflicts,
    cli_json,
    jp_objects,
    new_subject_and_actor,
    node_pair,  # noqa: F401 - the fixture `nodes`: this file's own node pair (module scope)
    own_objects,
    status_of,
    sync_round,
)


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


def test_leak_check_and_no_inbound_conflicts_after_the_rounds(nodes):
    """After the rounds above: nothing withheld readable anywhere, and no identical joint product was refused."""
    assert_no_leak_and_no_inbound_conflicts(nodes)
