"""``PartnerClient.pages(prefetch=True)`` against a real node: the next page is asked for while the
caller handles this one, and the walk is the same walk, page for page, as without it."""

from __future__ import annotations

import threading

import orjson
import requests

from exchange.sharing.client import PartnerClient
from tests.conftest import PASSWORDS, new_indicator

TAXII = "application/taxii+json;version=2.1"


def _post(url: str, objs: list[dict]) -> None:
    resp = requests.post(
        url + "objects/", data=orjson.dumps({"objects": objs}), headers={"Accept": TAXII, "Content-Type": TAXII},
        auth=("analyst", PASSWORDS["analyst"]), timeout=60,
    )
    assert resp.status_code == 202, resp.text


def _client(node) -> PartnerClient:
    return PartnerClient(node.url, "analyst", PASSWORDS["analyst"], timeout=30)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cti-exchange-prefetch")]


def _walk(client: PartnerClient, **kwargs) -> list[tuple]:
    return [(tuple(o["id"] for o in p.objects), p.more, p.next is not None, p.date_added_first, p.date_added_last)
            for p in client.pages("us-intel", limit=7, **kwargs)]


def test_a_prefetching_walk_is_the_same_walk_page_for_page(us_node):
    objs = [new_indicator(i) for i in range(40)]
    for start in range(0, len(objs), 9):  # envelopes of 9: pages cut through runs sharing one date_added
        _post(us_node.collection_url("us-intel"), objs[start : start + 9])
    client = _client(us_node)
    try:
        plain, ahead = _walk(client), _walk(client, prefetch=True)
        first = plain[0][4]
        later_plain, later_ahead = _walk(client, added_after=first), _walk(client, added_after=first, prefetch=True)
    finally:
        client.close()
    assert [p[:3] for p in ahead] == [p[:3] for p in plain]  # the same objects, in the same pages, with ``more``
    assert [p[3:] for p in ahead] == [p[3:] for p in plain]  # and each page's own X-TAXII-Date-Added-* headers
    assert [o for p in ahead for o in p[0]] == [o["id"] for o in objs]
    assert len(ahead) == 6 and ahead[-1][1] is False
    assert later_ahead == later_plain and 0 < len(later_ahead) < len(ahead)
    assert _prefetch_threads() == []  # a finished walk leaves no thread behind


def test_a_prefetching_walk_left_early_lets_the_client_go_on(us_node):
    _post(us_node.collection_url("us-intel"), [new_indicator(i) for i in range(30)])
    client = _client(us_node)
    try:
        walk = client.pages("us-intel", limit=5, prefetch=True)
        first = next(walk)  # the second page is on its way now
        assert len(first.objects) == 5 and first.more
        walk.close()  # the caller gives up (an error storing the page): the request in flight is waited for
        assert _prefetch_threads() == []
        again = [o["id"] for p in client.pages("us-intel", limit=5, next_token=first.next, prefetch=True) for o in p.objects]
        assert len(again) == 25 and not set(again) & {o["id"] for o in first.objects}  # resumed from the page's ``next``
        assert client.collection("us-intel").id  # and other calls are answered as before
    finally:
        client.close()
