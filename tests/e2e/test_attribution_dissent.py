"""Joint attribution end to end (helpers: tests/e2e/attribution_flow.py): ROK dissents, nothing is released."""

from __future__ import annotations

from exchange.sharing import attribution as attr
from tests.e2e.attribution_flow import (
    assert_never_outside,
    assert_no_leak_and_no_inbound_conflicts,
    cli,
    cli_json,
    new_subject_and_actor,
    node_pair,  # noqa: F401 - the fixture `nodes`: this file's own node pair (module scope)
    own_objects,
    status_of,
    sync_round,
)


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


def test_leak_check_and_no_inbound_conflicts_after_the_rounds(nodes):
    """After the rounds above: nothing withheld readable anywhere, and no identical joint product was refused."""
    assert_no_leak_and_no_inbound_conflicts(nodes)
