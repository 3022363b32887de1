"""The ``next`` token against a real node: it pages a collection exactly once, says nothing a
partner could count (row sequence, other collections' writes), and one minted before cursor v2
(``base64(JSON[date_added, seq, digest]).HMAC``) is a clean TAXII 400."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit

import orjson
import pytest
import requests

from exchange.node import cursor
from exchange.node.backend import _selection_key
from exchange.storage.store import Selection, Store
from tests.conftest import PASSWORDS, new_indicator

TAXII = "application/taxii+json;version=2.1"
AUTH = ("analyst", PASSWORDS["analyst"])
B64 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _post(url: str, objs: list[dict], auth=AUTH) -> dict:
    resp = requests.post(
        url + "objects/", data=orjson.dumps({"objects": objs}), headers={"Accept": TAXII, "Content-Type": TAXII}, auth=auth, timeout=60
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


def _get(url: str, **params) -> requests.Response:
    return requests.get(url + "objects/", params=params, headers={"Accept": TAXII}, auth=AUTH, timeout=30)


def _taxii_400(resp: requests.Response) -> dict:
    assert resp.status_code == 400, resp.text
    assert resp.headers["Content-Type"].startswith("application/taxii+json")
    body = resp.json()
    assert body["http_status"] == "400" and body["title"] and body["description"]
    return body


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _old_token(secret: bytes, date_added: int, seq: int, digest: str) -> str:
    """What the node minted before cursor v2, byte for byte."""
    payload = orjson.dumps([date_added, seq, digest])
    mac = hmac.new(secret, payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _collection_id(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[1]


@pytest.fixture
def store(us_node):
    opened = Store.open(data_dir=us_node.data_dir, database=us_node.database)
    yield opened
    opened.close()


def test_paging_with_limit_and_next_serves_every_object_exactly_once(us_node, store):
    intel = us_node.collection_url("us-intel")
    inbox = us_node.collection_url("rok-inbox")
    objs = [new_indicator(i) for i in range(95)]
    for start in range(0, len(objs), 40):  # envelopes of 40: pages cut through runs sharing one date_added
        _post(intel, objs[start : start + 40])
    seqs = [row.seq for row in store.page(Selection(_collection_id(intel)), limit=1000, after=None, with_body=False)[0]]
    assert len(seqs) == len(objs)

    seen: list[str] = []
    tokens: list[str] = []
    params = {"limit": "7"}
    while True:
        resp = _get(intel, **params)
        assert resp.status_code == 200, resp.text
        env = resp.json()
        seen.extend(o["id"] for o in env.get("objects", []))
        if not env.get("more"):
            assert "next" not in env
            break
        tokens.append(env["next"])
        # the node goes on writing elsewhere between two pages of this walk
        _post(inbox, [new_indicator(len(tokens))], auth=("rok", PASSWORDS["rok"]))
        params = {"limit": "7", "next": env["next"]}

    assert len(seen) == len(set(seen)) == len(objs)
    assert set(seen) == {o["id"] for o in objs}
    assert len(tokens) == (len(objs) - 1) // 7
    assert len({len(t) for t in tokens}) == 1 and len(tokens[0]) < 100  # nothing to read off the length either
    for token in tokens:
        assert set(token) <= B64, token
        raw = _unb64(token)
        for seq in seqs:
            assert b",%d," % seq not in raw and seq.to_bytes(8, "big") not in raw, (seq, raw)


def test_a_next_token_from_before_the_change_is_a_taxii_400(us_node, store):
    intel = us_node.collection_url("us-intel")
    _post(intel, [new_indicator(i) for i in range(5)])
    coll_id = _collection_id(intel)
    page = _get(intel, limit="2").json()
    assert page["more"] is True and len(page["objects"]) == 2
    # exactly the token the node served for this page before cursor v2: its secret, its digest, its position
    rows, _ = store.page(Selection(coll_id), limit=2, after=None, with_body=False)
    digest = cursor.request_digest(["objects", coll_id, None, _selection_key(Selection(coll_id))])
    old = _old_token(store.secret(), rows[-1].date_added, rows[-1].seq, digest)

    body = _taxii_400(_get(intel, limit="2", next=old))
    assert "start again without 'next'" in body["description"]
    # starting again without next works, and so does the token the node serves now
    assert _get(intel, limit="2").status_code == 200
    rest = _get(intel, limit="2", next=page["next"])
    assert rest.status_code == 200 and [o["id"] for o in rest.json()["objects"]] != [o["id"] for o in page["objects"]]
