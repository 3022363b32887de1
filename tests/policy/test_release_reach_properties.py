"""Property (issue 21): for random releases, every row a partner can reach through any TAXII endpoint is one the
releaser wrote for that partner: a version the policy releases to it, as released to it (shared unchanged or its
redacted copy, never another partner's copy nor the original of a redacted one), a companion, a withdrawal or a
signature the releaser audited for it.  Bodies are stored once and shared between collections (``bodies``),
so this checks that sharing a body never shares a row.

The real path throughout: the US node's store on SQLite (objects written as analysts write them), ``release_all``,
and one ``cti-exchange serve`` process on 127.0.0.1 answering the partners' requests (objects with paging, object,
versions, manifest); one node serves every example, with fresh ids per example.  Two nodes: the default US node
(rok and jp, on different routes) and a wide one with two more partners in both communities, whose decisions are
the same for most objects, so the releaser judges them once and stages their rows together (``add_in_many``): the
check must hold across that sharing too.
"""

from __future__ import annotations

import itertools
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.demo.procs import NodeProcess
from exchange.node.ops import OpenNode, open_node
from exchange.node.signing import covered, is_signature, signed_member
from exchange.policy import current_policy, evaluate
from exchange.sharing.lifecycle import COMMON, KEEP, is_withdrawal_note
from exchange.sharing.release import release_all
from exchange.stix import REQUIRED, format_timestamp, object_version
from exchange.storage import audit, schema
from tests.conftest import PASSWORDS, provision

TAXII = "application/taxii+json;version=2.1"
US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
MARKINGS = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
REPO = Path(__file__).resolve().parents[2]
PARTNERS = ("rok", "jp")
EXTRA = ("p1", "p2")  # the wide node's further partners: bilateral and trilateral members, read-only
_clock = itertools.count(1)

VERSION = st.tuples(
    st.sampled_from(sorted(MARKINGS)),  # the version's marking
    st.one_of(st.none(), st.sampled_from(sorted(MARKINGS))),  # a granular marking on its description (a redaction), or none
)
RELEASE = st.lists(st.lists(VERSION, min_size=1, max_size=3), min_size=1, max_size=6)  # objects, each a list of versions


def _extra_id(name: str) -> str:
    return f"identity--{uuid.uuid5(uuid.NAMESPACE_URL, f'cti-exchange-reach-{name}')}"


def _wide_config(root: Path) -> tuple[Path, Path]:
    """A copy of ``collections/`` and ``policies/`` in which node us has partners p1 and p2 besides rok and jp."""
    coll_dir, pol_dir = root / "collections", root / "policies"
    shutil.copytree(REPO / "collections", coll_dir)
    shutil.copytree(REPO / "policies", pol_dir)
    idents = json.loads((coll_dir / "identities.json").read_text())
    node = yaml.safe_load((coll_dir / "us" / "node.yaml").read_text())
    parties = yaml.safe_load((pol_dir / "parties.yaml").read_text())
    for name in EXTRA:
        ident = _extra_id(name)
        idents["objects"].append({"type": "identity", "spec_version": "2.1", "id": ident, "created": "2023-04-26T00:00:00.000Z",
                                  "modified": "2023-04-26T00:00:00.000Z", "name": f"Partner {name}", "identity_class": "organization"})
        node["partners"][name] = {"name": f"Partner {name}", "identity": ident, "read_only": True}
        node["collections"].append({"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"reach-read-{name}")), "alias": f"{name}-read",
                                    "title": f"Released to {name}", "description": f"What the policy releases to {name}.",
                                    "role": "partner-read", "partner": name})
        node["accounts"].append({"name": name, "partner": name, "description": f"partner {name}", "read": [f"{name}-read"]})
        parties["parties"][name] = {"name": f"Partner {name}", "identity": ident}
        for community in ("bilateral", "trilateral"):
            parties["communities"][community]["members"].append(name)
    (coll_dir / "identities.json").write_text(json.dumps(idents, indent=1))
    (coll_dir / "us" / "node.yaml").write_text(yaml.safe_dump(node, sort_keys=False))
    (pol_dir / "parties.yaml").write_text(yaml.safe_dump(parties, sort_keys=False))
    return coll_dir, pol_dir


@pytest.fixture(scope="module", params=["default", "wide"])
def served(request, tmp_path_factory) -> Iterator[tuple[OpenNode, NodeProcess, tuple[str, ...]]]:
    data = tmp_path_factory.mktemp(f"release-reach-{request.param}")
    partners = PARTNERS
    with pytest.MonkeyPatch.context() as env:
        if request.param == "wide":
            coll_dir, pol_dir = _wide_config(data.parent / f"{data.name}-config")
            env.setenv("CTI_EXCHANGE_COLLECTIONS", str(coll_dir))  # this process and the server's
            env.setenv("CTI_EXCHANGE_POLICIES", str(pol_dir))
            partners = (*PARTNERS, *EXTRA)
        provision("us", data, {**PASSWORDS, **{name: f"{name}-partner-password" for name in EXTRA}})
        opened = open_node("us", data_dir=data)
        proc = NodeProcess("us", data).start()
        try:
            yield opened, proc, partners
        finally:
            proc.stop()
            opened.close()


def _password(partner: str) -> str:
    return PASSWORDS.get(partner) or f"{partner}-partner-password"


def _version(oid: str, marking: str, granular: str | None) -> dict:
    stamp = format_timestamp(1_767_225_600_000_000 + next(_clock) * 1000)[:-4] + "Z"
    obj = {
        "type": "indicator", "spec_version": "2.1", "id": oid, "created": "2026-01-01T00:00:00.000Z", "modified": stamp,
        "created_by_ref": US_ID, "name": f"{marking} indicator", "description": f"{granular or marking} ONLY content",
        "pattern": f"[domain-name:value = '{marking}.example']", "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z",
        "object_marking_refs": [MARKINGS[marking]],
    }
    if granular is not None:
        obj["granular_markings"] = [{"marking_ref": MARKINGS[granular], "selectors": ["description"]}]
    return obj


def _get(proc: NodeProcess, partner: str, path: str, params: dict | None = None) -> requests.Response:
    cid = proc.collection_url(f"{partner}-read")
    return requests.get(cid + path, params=params or {}, headers={"Accept": TAXII}, auth=(partner, _password(partner)), timeout=30)


def _reachable(proc: NodeProcess, partner: str, ids: list[str]) -> list[tuple[str, dict, str | None]]:
    """``(endpoint, body, version)`` of every row the partner reaches, by every endpoint (objects paged small;
    manifest and versions give ``{"id": ...}`` for a body)."""
    out: list[tuple[str, dict, str | None]] = []
    params: dict = {"match[version]": "all", "limit": "3"}
    while True:  # objects, paged with next (TAXII 2.1 s3.4, s5.3)
        resp = _get(proc, partner, "objects/", params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        out += [("objects", o, object_version(o)) for o in page.get("objects", [])]
        if not page.get("more"):
            break
        params = {"match[version]": "all", "limit": "3", "next": page["next"]}
    resp = _get(proc, partner, "manifest/", {"match[version]": "all", "limit": "1000"})  # s5.2
    assert resp.status_code == 200, resp.text
    out += [("manifest", {"id": m["id"]}, m["version"]) for m in resp.json().get("objects", [])]
    for oid in ids:
        one = _get(proc, partner, f"objects/{oid}/", {"match[version]": "all"})  # s5.5
        assert one.status_code in (200, 404), one.text
        if one.status_code == 200:
            out += [("object", o, object_version(o)) for o in one.json().get("objects", [])]
        versions = _get(proc, partner, f"objects/{oid}/versions/")  # s5.8
        assert versions.status_code in (200, 404), versions.text
        if versions.status_code == 200:
            out += [("versions", {"id": oid}, v) for v in versions.json().get("versions", [])]
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(RELEASE)
def test_every_row_a_partner_reaches_is_one_the_releaser_wrote_for_it(served, release):
    opened, proc, partners = served
    policy = current_policy()
    own = opened.node.config.own_collection.id
    written: list[dict] = []
    for versions in release:
        oid = f"indicator--{uuid.uuid4()}"
        for marking, granular in versions:
            obj = _version(oid, marking, granular)
            opened.store.add_objects(own, [obj], origin="local:analyst")
            written.append(obj)
    release_all(opened, policy)  # whatever the server's own releaser has not released yet
    ids = sorted({o["id"] for o in written})
    by_key = {(o["id"], o["modified"]): o for o in written}
    for partner in partners:
        # what the releaser wrote for this partner, by its audit: decisions, companions, withdrawals (and their notes)
        audited = {(e["object_id"], e["version"]): e for e in audit.select_entries(opened.store, partner=partner)
                   if e["event"] in ("share", "redact", "withdraw")}
        notes = {e["detail"].get("note") for e in audited.values() if e["event"] == "withdraw"}
        reached = _reachable(proc, partner, ids)
        checked: set[tuple[str, str | None]] = set()  # rows with a body that passed the checks below
        for endpoint, body, version in reached:
            if endpoint in ("manifest", "versions"):
                continue  # ids and versions only: checked against the rows with bodies below
            key = (body["id"], version)
            checked.add(key)
            if is_signature(body):
                # a batch signature covers only versions the releaser wrote for this partner
                assert covered(body) and set(covered(body)) <= {signed_member(*k) for k in audited}, (partner, endpoint, body)
                continue
            if is_withdrawal_note(body):
                assert body["id"] in notes, (partner, endpoint, body)
                continue
            assert key in audited, f"{partner} reaches {key} through {endpoint}, which the releaser never wrote for it"
            entry = audited[key]
            if key in by_key:  # a version of this example: the partner's own copy, exactly
                [decision] = evaluate([by_key[key]], policy, "us", partner)
                assert decision.decision in ("share", "redact"), (partner, key, decision)
                assert entry["event"] == decision.decision
                assert body == decision.shared, (partner, endpoint, key)
            elif entry["event"] == "withdraw":  # a revoked version built from what it held
                assert body.get("revoked") is True
                assert set(body) <= {*COMMON, *REQUIRED.get(body["type"], ()), *KEEP}, (partner, body)
        for endpoint, body, version in reached:  # the manifest and versions endpoints name only those rows
            if endpoint in ("manifest", "versions"):
                assert (body["id"], version) in checked, (partner, endpoint, body, version)
        for obj in written:  # nothing the policy withholds from it is reachable
            [decision] = evaluate([obj], policy, "us", partner)
            if decision.decision == "withhold":
                assert (obj["id"], obj["modified"]) not in checked, (partner, obj["id"], decision.reason)
    if "p1" in partners:  # the wide node: what p1 and p2 both hold of this example is one stored version each
        shared = _stored_versions(opened, "p1-read", ids) & _stored_versions(opened, "p2-read", ids)
        both = [o for o in written if all(evaluate([o], policy, "us", p)[0].decision == "share" for p in EXTRA)]
        assert {(o["id"], o["modified"]) for o in both} <= {(i, v) for i, v, _ver in shared}


def _stored_versions(opened: OpenNode, alias: str, ids: list[str]) -> set[tuple[str, str, int]]:
    """``(id, version, versions.key)`` of the rows of a collection for ``ids``: the key names the stored version."""
    coll = opened.node.config.collection(alias).id
    query = (
        sa.select(schema.versions.c.stix_id, schema.versions.c.version, schema.versions.c.key)
        .select_from(schema.object_rows.join(schema.versions, schema.object_rows.c.ver == schema.versions.c.key)
                     .join(schema.collections, schema.object_rows.c.coll == schema.collections.c.key))
        .where(schema.collections.c.collection_id == coll, schema.versions.c.stix_id.in_(ids))
    )
    with opened.store.engine.connect() as conn:
        return {tuple(row) for row in conn.execute(query)}
