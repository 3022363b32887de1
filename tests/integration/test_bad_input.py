"""Bad requests get the right status and a TAXII 2.1 error body, and change nothing."""

from __future__ import annotations

import orjson
import pytest
import requests

from tests.conftest import PASSWORDS, new_indicator

TAXII = "application/taxii+json;version=2.1"
AUTH = ("analyst", PASSWORDS["analyst"])


def _objects_url(node) -> str:
    return node.collection_url("us-intel") + "objects/"


def _count(node) -> int:
    resp = requests.get(
        node.collection_url("us-intel") + "manifest/", params={"match[version]": "all"}, headers={"Accept": TAXII}, auth=AUTH, timeout=10
    )
    assert resp.status_code == 200
    return len(resp.json().get("objects", []))


def _assert_taxii_error(resp: requests.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/taxii+json")
    body = resp.json()
    assert body["http_status"] == str(status)
    assert body["title"] and body["description"]
    return body


@pytest.fixture
def seeded(us_node):
    resp = requests.post(
        _objects_url(us_node),
        data=orjson.dumps({"objects": [new_indicator(1)]}),
        headers={"Accept": TAXII, "Content-Type": TAXII},
        auth=AUTH,
        timeout=10,
    )
    assert resp.status_code == 202
    assert _count(us_node) == 1
    return us_node


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'{"objects": "nope"}', b'"just a string"', b"[" * 10000 + b"]" * 10000],
    ids=["malformed-json", "invalid-utf8", "list-not-envelope", "objects-not-a-list", "string", "deeply-nested"],
)
def test_malformed_envelope_is_400_and_stores_nothing(seeded, body):
    resp = requests.post(
        _objects_url(seeded), data=body, headers={"Accept": TAXII, "Content-Type": TAXII}, auth=AUTH, timeout=10
    )
    _assert_taxii_error(resp, 400)
    assert _count(seeded) == 1


def test_wrong_content_type_is_415(seeded):
    resp = requests.post(
        _objects_url(seeded),
        data=orjson.dumps({"objects": [new_indicator(2)]}),
        headers={"Accept": TAXII, "Content-Type": "application/json"},
        auth=AUTH,
        timeout=10,
    )
    _assert_taxii_error(resp, 415)
    assert _count(seeded) == 1


def test_wrong_accept_is_406(seeded):
    resp = requests.get(_objects_url(seeded), headers={"Accept": "application/xml"}, auth=AUTH, timeout=10)
    _assert_taxii_error(resp, 406)


def test_oversize_body_is_413_and_stores_nothing(seeded):
    big = [new_indicator(i, description="x" * 5000) for i in range(2200)]  # ~11.5 MB > 10 MiB
    resp = requests.post(
        _objects_url(seeded), data=orjson.dumps({"objects": big}), headers={"Accept": TAXII, "Content-Type": TAXII}, auth=AUTH, timeout=30
    )
    _assert_taxii_error(resp, 413)
    assert _count(seeded) == 1


@pytest.mark.parametrize(
    "params",
    [
        {"added_after": "yesterday"},
        {"added_after": "2024-02-30T00:00:00Z"},
        {"match[version]": "newest"},
        {"match[spec_version]": "3.0"},
        {"limit": "many"},
        {"limit": "0"},
        {"limit": "-5"},
    ],
)
def test_bad_filter_is_400(seeded, params):
    resp = requests.get(_objects_url(seeded), params=params, headers={"Accept": TAXII}, auth=AUTH, timeout=10)
    _assert_taxii_error(resp, 400)


def _first_page(node, **params):
    resp = requests.get(_objects_url(node), params={"limit": "1", **params}, headers={"Accept": TAXII}, auth=AUTH, timeout=10)
    assert resp.status_code == 200
    return resp.json()


def test_forged_or_retargeted_next_is_400(seeded):
    requests.post(
        _objects_url(seeded),
        data=orjson.dumps({"objects": [new_indicator(i) for i in range(3)]}),
        headers={"Accept": TAXII, "Content-Type": TAXII},
        auth=AUTH,
        timeout=10,
    )
    page = _first_page(seeded)
    assert page["more"] is True
    token = page["next"]
    forged = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]  # one character of the opaque token
    for bad in (forged, "garbage", token + "x", "a.b.c", "../../etc/passwd"):
        resp = requests.get(_objects_url(seeded), params={"next": bad}, headers={"Accept": TAXII}, auth=AUTH, timeout=10)
        _assert_taxii_error(resp, 400)
    # a real token used with other filters is refused, not silently misapplied
    resp = requests.get(
        _objects_url(seeded), params={"next": token, "match[type]": "malware"}, headers={"Accept": TAXII}, auth=AUTH, timeout=10
    )
    _assert_taxii_error(resp, 400)
    # and the genuine token works
    resp = requests.get(_objects_url(seeded), params={"next": token}, headers={"Accept": TAXII}, auth=AUTH, timeout=10)
    assert resp.status_code == 200 and resp.json()["objects"]


def test_unknown_route_and_method_get_taxii_errors(seeded):
    _assert_taxii_error(requests.get(seeded.base + "nowhere/", headers={"Accept": TAXII}, auth=AUTH, timeout=10), 404)
    _assert_taxii_error(requests.put(_objects_url(seeded), headers={"Accept": TAXII}, auth=AUTH, timeout=10), 405)
    _assert_taxii_error(requests.get(seeded.base + "nope/collections/", headers={"Accept": TAXII}, auth=AUTH, timeout=10), 404)


def test_wrong_credentials_are_401_with_a_challenge(seeded):
    for auth in (("analyst", "wrong-password-000"), ("nobody", "whatever-password"), None):
        resp = requests.get(_objects_url(seeded), headers={"Accept": TAXII}, auth=auth, timeout=10)
        _assert_taxii_error(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
