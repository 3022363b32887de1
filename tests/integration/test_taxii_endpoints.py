"""Every TAXII 2.1 endpoint and filter of one node, through taxii2-client on loopback."""

from __future__ import annotations

import pytest
import requests
from taxii2client.v21 import ApiRoot, Collection, Server, as_pages

from tests.conftest import PASSWORDS, new_indicator

TAXII = "application/taxii+json;version=2.1"


def _coll(node, alias: str, account: str = "analyst") -> Collection:
    return Collection(node.collection_url(alias), user=account, password=PASSWORDS[account])


def _all(coll: Collection, per_request: int = 100, **filters) -> list[dict]:
    out: list[dict] = []
    for env in as_pages(coll.get_objects, per_request=per_request, **filters):
        out.extend(env.get("objects", []))
    return out


def test_discovery_names_the_api_root(us_node):
    server = Server(us_node.base + "taxii2/", user="analyst", password=PASSWORDS["analyst"])
    assert server.title == "US CTI Partner Node (exercise)"
    assert server.default.url == us_node.url
    assert [r.url for r in server.api_roots] == [us_node.url]


def test_api_root_information(us_node):
    root = ApiRoot(us_node.url, user="analyst", password=PASSWORDS["analyst"])
    assert root.title == "US partner API root"
    assert root.versions == [TAXII]
    assert root.max_content_length == 10485760


def test_collections_list_only_what_the_account_may_see(us_node):
    analyst = ApiRoot(us_node.url, user="analyst", password=PASSWORDS["analyst"])
    assert sorted(c.alias for c in analyst.collections) == ["jp-read", "rok-inbox", "rok-read", "us-intel"]
    rok = ApiRoot(us_node.url, user="rok", password=PASSWORDS["rok"])
    seen = {c.alias: (c.can_read, c.can_write) for c in rok.collections}
    assert seen == {"rok-read": (True, False), "rok-inbox": (False, True), "rok-receipts": (True, True)}


def test_add_then_get_objects_round_trip(us_node):
    coll = _coll(us_node, "us-intel")
    objs = [new_indicator(i) for i in range(5)]
    status = coll.add_objects({"objects": objs})
    assert status.status == "complete"
    assert status.success_count == 5 and status.failure_count == 0
    got = _all(coll)
    assert {o["id"]: o for o in got} == {o["id"]: o for o in objs}


def test_paging_burst_sharing_one_date_added_skips_and_repeats_nothing(us_node):
    coll = _coll(us_node, "us-intel")
    objs = [new_indicator(i) for i in range(2500)]
    for start in range(0, 2500, 1000):  # three envelopes; each shares one date_added
        assert coll.add_objects({"objects": objs[start : start + 1000]}).success_count == len(objs[start : start + 1000])
    ids = [o["id"] for o in _all(coll, per_request=97)]
    assert len(ids) == 2500
    assert len(set(ids)) == 2500
    assert set(ids) == {o["id"] for o in objs}
    # the manifest pages the same way
    manifest_ids: list[str] = []
    for env in as_pages(coll.get_manifest, per_request=333):
        manifest_ids += [m["id"] for m in env.get("objects", [])]
    assert sorted(manifest_ids) == sorted(ids)


def test_page_headers_give_first_and_last_date_added(us_node):
    coll = _coll(us_node, "us-intel")
    coll.add_objects({"objects": [new_indicator(1)]})
    coll.add_objects({"objects": [new_indicator(2)]})
    resp = requests.get(
        us_node.collection_url("us-intel") + "objects/",
        headers={"Accept": TAXII},
        auth=("analyst", PASSWORDS["analyst"]),
        timeout=10,
    )
    assert resp.status_code == 200
    manifest = coll.get_manifest()["objects"]
    assert resp.headers["X-TAXII-Date-Added-First"] == manifest[0]["date_added"]
    assert resp.headers["X-TAXII-Date-Added-Last"] == manifest[-1]["date_added"]
    assert manifest[0]["date_added"] < manifest[-1]["date_added"]


def test_added_after_is_exclusive(us_node):
    coll = _coll(us_node, "us-intel")
    first = new_indicator(1)
    second = new_indicator(2)
    coll.add_objects({"objects": [first]})
    coll.add_objects({"objects": [second]})
    manifest = coll.get_manifest()["objects"]
    stamp = next(m["date_added"] for m in manifest if m["id"] == first["id"])
    after = _all(coll, added_after=stamp)
    assert [o["id"] for o in after] == [second["id"]]


def test_match_id_type_and_spec_version(us_node):
    coll = _coll(us_node, "us-intel")
    ind = new_indicator(1)
    mal = {
        "type": "malware", "spec_version": "2.1", "id": "malware--2d3e4f50-6a7b-4c8d-9e0f-1a2b3c4d5e6f",
        "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z", "name": "Maui", "is_family": True,
    }
    coll.add_objects({"objects": [ind, mal]})
    assert [o["id"] for o in _all(coll, type="malware")] == [mal["id"]]
    assert [o["id"] for o in _all(coll, id=ind["id"])] == [ind["id"]]
    assert len(_all(coll, type="malware,indicator")) == 2
    assert len(_all(coll, spec_version="2.1")) == 2
    assert _all(coll, spec_version="2.0") == []


def _versions(base: dict, stamps: list[str]) -> list[dict]:
    return [dict(base, modified=s, name=f"{base['name']} @ {s}") for s in stamps]


STAMPS = ["2024-01-01T00:00:00.000Z", "2024-02-01T00:00:00.000Z", "2024-03-01T00:00:00.000Z"]


def test_match_version_first_last_all_and_timestamp(us_node):
    coll = _coll(us_node, "us-intel")
    versions = _versions(new_indicator(7), STAMPS)
    coll.add_objects({"objects": [versions[1], versions[2], versions[0]]})
    oid = versions[0]["id"]
    assert [o["modified"] for o in _all(coll)] == [STAMPS[2]]  # default: last
    assert [o["modified"] for o in _all(coll, version="last")] == [STAMPS[2]]
    assert [o["modified"] for o in _all(coll, version="first")] == [STAMPS[0]]
    assert sorted(o["modified"] for o in _all(coll, version="all")) == STAMPS
    assert [o["modified"] for o in _all(coll, version=STAMPS[1])] == [STAMPS[1]]
    assert sorted(o["modified"] for o in _all(coll, version=f"first,{STAMPS[1]}")) == STAMPS[:2]
    one = coll.get_object(oid, version="all")
    assert sorted(o["modified"] for o in one["objects"]) == STAMPS
    assert coll.get_object(oid)["objects"][0]["modified"] == STAMPS[2]


def test_object_versions_endpoint_lists_every_version(us_node):
    coll = _coll(us_node, "us-intel")
    versions = _versions(new_indicator(8), STAMPS)
    coll.add_objects({"objects": versions})
    got = coll.object_versions(versions[0]["id"])
    assert sorted(got["versions"]) == STAMPS
    assert got["more"] is False


def test_versions_page_with_next(us_node):
    coll = _coll(us_node, "us-intel")
    versions = _versions(new_indicator(9), STAMPS)
    coll.add_objects({"objects": versions})
    page = coll.object_versions(versions[0]["id"], limit=2)
    assert page["more"] is True and len(page["versions"]) == 2
    rest = coll.object_versions(versions[0]["id"], limit=2, next=page["next"])
    assert rest["more"] is False
    assert sorted(page["versions"] + rest["versions"]) == STAMPS


def test_delete_one_version_then_the_object(us_node):
    coll = _coll(us_node, "us-intel")
    versions = _versions(new_indicator(10), STAMPS)
    coll.add_objects({"objects": versions})
    oid = versions[0]["id"]
    coll.delete_object(oid, version=STAMPS[2])
    assert coll.get_object(oid)["objects"][0]["modified"] == STAMPS[1]  # last moved back
    assert sorted(coll.object_versions(oid)["versions"]) == STAMPS[:2]
    coll.delete_object(oid)
    with pytest.raises(requests.HTTPError, match="404"):
        coll.get_object(oid)


def test_get_unknown_object_is_404(us_node):
    coll = _coll(us_node, "us-intel")
    with pytest.raises(requests.HTTPError, match="404"):
        coll.get_object("indicator--00000000-0000-4000-8000-000000000000")


def test_status_resource_belongs_to_its_requester(us_node):
    coll = _coll(us_node, "us-intel")
    status = coll.add_objects({"objects": [new_indicator(1)]}, wait_for_completion=False)
    root = ApiRoot(us_node.url, user="analyst", password=PASSWORDS["analyst"])
    again = root.get_status(status.id)
    assert again.status == "complete" and again.success_count == 1
    # the ROK account may not read the analyst's status
    resp = requests.get(
        f"{us_node.url}status/{status.id}/", headers={"Accept": TAXII}, auth=("rok", PASSWORDS["rok"]), timeout=10
    )
    assert resp.status_code == 404


def test_reposting_an_identical_object_is_a_success(us_node):
    coll = _coll(us_node, "us-intel")
    obj = new_indicator(1)
    tlp = {
        "type": "marking-definition", "spec_version": "2.1", "id": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        "created": "2022-10-01T00:00:00.000Z", "name": "TLP:GREEN",
        "extensions": {"extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {"extension_type": "property-extension", "tlp_2_0": "green"}},
    }
    assert coll.add_objects({"objects": [tlp, obj]}).success_count == 2
    again = coll.add_objects({"objects": [tlp, obj]})
    assert again.success_count == 2 and again.failure_count == 0
    assert len(_all(coll, version="all")) == 2


def test_a_different_object_under_a_stored_version_is_a_failure(us_node):
    coll = _coll(us_node, "us-intel")
    obj = new_indicator(1)
    coll.add_objects({"objects": [obj]})
    status = coll.add_objects({"objects": [dict(obj, name="tampered")]})
    assert status.failure_count == 1 and status.success_count == 0
    assert "already stored" in status.failures[0]["message"]
    assert _all(coll)[0]["name"] == obj["name"]


def test_invalid_objects_fail_with_a_reason_and_valid_ones_land(us_node):
    coll = _coll(us_node, "us-intel")
    good = new_indicator(1)
    bad_id = dict(new_indicator(2), id="indicator--not-a-uuid")
    bad_time = dict(new_indicator(3), modified="yesterday")
    no_pattern = {k: v for k, v in new_indicator(4).items() if k != "pattern"}
    old_spec = dict(new_indicator(5), spec_version="2.0")
    status = coll.add_objects({"objects": [good, bad_id, bad_time, no_pattern, old_spec]})
    assert status.success_count == 1 and status.failure_count == 4
    messages = {f.get("id"): f["message"] for f in status.failures}
    assert "not of the form" in messages[bad_id["id"]]
    assert "modified" in messages[bad_time["id"]]
    assert "'pattern' is required" in messages[no_pattern["id"]]
    assert "2.0" in messages[old_spec["id"]]
    assert [o["id"] for o in _all(coll)] == [good["id"]]


def test_objects_without_created_or_modified_are_versioned_by_date_added(us_node):
    coll = _coll(us_node, "us-intel")
    sco = {"type": "ipv4-addr", "spec_version": "2.1", "id": "ipv4-addr--ff26c055-6336-5bc5-b98d-13d6226742dd", "value": "198.51.100.3"}
    assert coll.add_objects({"objects": [sco]}).success_count == 1
    assert coll.add_objects({"objects": [sco]}).success_count == 1  # identical again: no new version
    assert len(coll.object_versions(sco["id"])["versions"]) == 1
