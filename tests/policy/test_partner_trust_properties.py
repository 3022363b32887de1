"""Property: whatever a partner pushes, no partner-read collection says anything in another party's name.

For any sequence of ROK pushes into the US node's inbox (objects claiming any party as creator,
identities of any party, official marking ids, ids of US objects), run through the node's inbound
rules exactly as a TAXII add is and then released: every object in every ``partner-read``
collection has a creator (and every identity a version) that the node observed that party
produce: its own content or configuration, ROK's own pushes, an official object, or an exact copy
of a public object loaded locally.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.node.ops import inbound_rules_for, local_copies, open_node
from exchange.policy.markings import OFFICIAL_OBJECTS
from exchange.sharing.release import release_all
from exchange.stix import object_version

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
ROK_ID = "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
JP_ID = "identity--1a0aa608-42e5-4348-afbb-9c3a6e11535e"
JOINT_ID = "identity--9909a483-dc4f-404a-96a0-33f5fd316e10"
MITRE_ID = "identity--c78cb6e5-0c4b-4611-8297-d1b8b55e40b5"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
CLEAR = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"
PARTIES = [US_ID, ROK_ID, JP_ID, JOINT_ID, MITRE_ID, None]
US_OWN = [f"indicator--{uuid.UUID(int=i)}" for i in range(1, 4)]

_counter = iter(range(10**9))


def _stamp() -> str:
    n = next(_counter)
    return f"2026-11-01T00:{(n // 60) % 60:02d}:{n % 60:02d}.{n % 1000:03d}Z"


@st.composite
def pushed_object(draw) -> dict:
    kind = draw(st.sampled_from(["indicator", "identity", "marking", "relationship"]))
    creator = draw(st.sampled_from(PARTIES))
    marking = draw(st.sampled_from([[GREEN], [CLEAR], []]))
    stamp = _stamp()
    if kind == "identity":
        oid = draw(st.sampled_from([US_ID, ROK_ID, JP_ID, JOINT_ID, MITRE_ID, f"identity--{uuid.uuid4()}"]))
        obj = {"type": "identity", "spec_version": "2.1", "id": oid, "created": "2023-01-01T00:00:00.000Z",
               "modified": stamp, "name": "pushed by ROK", "identity_class": "organization"}
    elif kind == "marking":
        oid = draw(st.sampled_from(sorted(OFFICIAL_OBJECTS)))
        obj = dict(OFFICIAL_OBJECTS[oid], name="pushed by ROK")
        return obj
    elif kind == "relationship":
        obj = {"type": "relationship", "spec_version": "2.1", "id": f"relationship--{uuid.uuid4()}",
               "created": stamp, "modified": stamp, "relationship_type": draw(st.sampled_from(["indicates", "attributed-to"])),
               "source_ref": draw(st.sampled_from(US_OWN)), "target_ref": f"malware--{uuid.uuid4()}"}
    else:
        oid = draw(st.sampled_from([*US_OWN, f"indicator--{uuid.uuid4()}"]))
        obj = {"type": "indicator", "spec_version": "2.1", "id": oid, "created": "2026-11-01T00:00:00.000Z", "modified": stamp,
               "name": "pushed by ROK", "pattern": "[ipv4-addr:value = '198.51.100.9']", "pattern_type": "stix",
               "valid_from": "2026-11-01T00:00:00Z"}
    if creator:
        obj["created_by_ref"] = creator
    if marking:
        obj["object_marking_refs"] = marking
    return obj


def _us_content() -> list[dict]:
    return [
        {"type": "indicator", "spec_version": "2.1", "id": oid, "created_by_ref": US_ID, "created": "2026-10-01T00:00:00.000Z",
         "modified": "2026-10-01T00:00:00.000Z", "name": "US indicator", "pattern": "[domain-name:value = 'example.com']",
         "pattern_type": "stix", "valid_from": "2026-10-01T00:00:00Z", "object_marking_refs": [GREEN]}
        for oid in US_OWN
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pushes=st.lists(st.lists(pushed_object(), min_size=1, max_size=6), min_size=1, max_size=4))
def test_no_partner_read_collection_holds_a_version_no_party_produced(tmp_path_factory, pushes):
    data = Path(tmp_path_factory.mktemp("trust"))
    opened = open_node("us", data_dir=data)
    try:
        cfg = opened.node.config
        own = cfg.own_collection.id
        inbox = cfg.partner_collection("rok", "partner-inbox").id
        opened.store.add_objects(own, _us_content())
        rules = inbound_rules_for(cfg, "rok")
        accepted: list[dict] = []
        for envelope in pushes:
            refused = rules.judge(envelope, opened.store.resolver(inbox), local_copies(opened.store, cfg, envelope))
            ok = [o for i, o in enumerate(envelope) if i not in refused]
            opened.store.add_objects(inbox, ok)
            accepted += ok
        release_all(opened)
        observed_rok = {(o["id"], object_version(o)) for o in accepted}
        for coll in cfg.collections:
            if coll.role != "partner-read":
                continue
            for row in opened.store.versions_of(coll.id, [(o["id"], object_version(o)) for envelope in pushes for o in envelope]):
                key = (row["id"], object_version(row))
                if row["id"] in OFFICIAL_OBJECTS:
                    assert row == OFFICIAL_OBJECTS[row["id"]], (coll.alias, row)
                    continue
                speaker = row["id"] if row["type"] == "identity" and "created_by_ref" not in row else row.get("created_by_ref")
                if key in observed_rok:
                    # ROK's pushes reach a third party only in ROK's own name (or as proven joint attribution products)
                    assert speaker in (ROK_ID, JOINT_ID) or (row["type"] == "identity" and row.get("created_by_ref") == ROK_ID), (
                        coll.alias, row)
                    if speaker == JOINT_ID:
                        assert row["type"] in ("relationship", "opinion", "report"), row
                    if row["type"] == "identity" and row["id"] != ROK_ID:
                        assert row["id"] not in (US_ID, JP_ID, JOINT_ID, MITRE_ID), row
                else:
                    assert speaker == US_ID or row["id"] == US_ID, (coll.alias, row)
    finally:
        opened.close()
