"""Joint attribution end to end (helpers: tests/e2e/attribution_flow.py): the US proposes, ROK concurs,
the joint report at both nodes and onward to Japan; and bad requests."""

from __future__ import annotations

import uuid

from exchange.sharing import attribution as attr
from tests.e2e.attribution_flow import (
    JOINT,
    ROK,
    US,
    assert_never_outside,
    assert_no_leak_and_no_inbound_conflicts,
    assert_not_publishable,
    cli,
    cli_json,
    inbox_objects,
    jp_objects,
    jp_sees,
    new_subject_and_actor,
    node_pair,  # noqa: F401 - the fixture `nodes`: this file's own node pair (module scope)
    own_objects,
    status_of,
    sync_round,
)


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


def test_bad_requests_are_one_line_errors(nodes):
    out = cli(nodes, "us", "attribution", "propose", "--subject", f"intrusion-set--{uuid.uuid4()}",
              "--actor", f"threat-actor--{uuid.uuid4()}", "--confidence", "50", check=False)
    assert out.returncode != 0 and "no such object" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = cli(nodes, "rok", "attribution", "respond", "--relationship", f"relationship--{uuid.uuid4()}",
              "--opinion", "agree", check=False)
    assert out.returncode != 0 and "no attribution proposal" in out.stderr


def test_leak_check_and_no_inbound_conflicts_after_the_rounds(nodes):
    """After the rounds above: nothing withheld readable anywhere, and no identical joint product was refused."""
    assert_no_leak_and_no_inbound_conflicts(nodes)
