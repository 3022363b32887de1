"""Logs and metrics of a serving node (issue 19, item 6): JSON-lines access log, Prometheus ``/metrics`` over HTTP.

One node process with two gunicorn workers (prometheus-client multiprocess mode: whichever worker
answers the scrape adds up both workers' counters) and ``--log-format json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exchange.node.ops import open_node
from exchange.sharing.release import release_all
from tests.conftest import PASSWORDS, NodeProcess, new_indicator, provision

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
RED = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"
TAXII = "application/taxii+json;version=2.1"


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[NodeProcess]:
    data: Path = tmp_path_factory.mktemp("observe") / "us"
    provision("us", data)
    opened = open_node("us", data_dir=data)
    try:  # something released (green) and something withheld (red), with their audit entries
        opened.store.add_objects(opened.node.config.own_collection.id,
                                 [new_indicator(1, created_by_ref=US_ID, marking=GREEN), new_indicator(2, created_by_ref=US_ID, marking=RED)])
        release_all(opened)
    finally:
        opened.close()
    proc = NodeProcess("us", data, extra_args=("--workers", "2", "--log-format", "json")).start()
    yield proc
    proc.stop()


def _scrape(node: NodeProcess, user: str = "analyst") -> dict[tuple[str, tuple], float]:
    resp = requests.get(node.base + "metrics", auth=(user, PASSWORDS[user]), timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbls), v in samples.items() if n == name and all(dict(lbls).get(k) == val for k, val in labels.items()))


def test_metrics_count_requests_objects_and_release_decisions_across_workers(node):
    own = node.collection_url("us-intel")
    before = _scrape(node)
    s = requests.Session()
    s.auth = ("analyst", PASSWORDS["analyst"])
    for _ in range(6):  # several connections: both workers answer some
        r = requests.get(own + "objects/", auth=s.auth, headers={"Accept": TAXII}, timeout=30)
        assert r.status_code == 200
    posted = requests.post(own + "objects/", auth=s.auth, headers={"Accept": TAXII, "Content-Type": TAXII}, timeout=30,
                           data=orjson.dumps({"objects": [new_indicator(3, created_by_ref=US_ID, marking=GREEN)]}))
    assert posted.status_code == 202, posted.text
    after = _scrape(node)
    endpoint = "/<string:api_root>/collections/<string:collection_id>/objects/"
    assert _value(after, "cti_exchange_requests_total", endpoint=endpoint, method="GET", status="200") - \
        _value(before, "cti_exchange_requests_total", endpoint=endpoint, method="GET", status="200") == 6
    assert _value(after, "cti_exchange_objects_served_total", collection="us-intel") - \
        _value(before, "cti_exchange_objects_served_total", collection="us-intel") == 12
    assert _value(after, "cti_exchange_objects_added_total", collection="us-intel") - \
        _value(before, "cti_exchange_objects_added_total", collection="us-intel") == 1
    assert _value(after, "cti_exchange_release_decisions_total", partner="rok", decision="withhold") >= 1
    assert _value(after, "cti_exchange_release_decisions_total", partner="rok", decision="share") >= 1
    assert _value(after, "cti_exchange_audit_entries") >= 4
    assert _value(after, "cti_exchange_sync_push_backlog_objects", partner="rok") >= 1  # released, never pushed


def test_metrics_need_a_local_account(node):
    assert requests.get(node.base + "metrics", timeout=30).status_code == 401
    assert requests.get(node.base + "metrics", auth=("rok", PASSWORDS["rok"]), timeout=30).status_code == 403


def test_each_request_has_one_json_access_line(node):
    url = node.collection_url("us-intel") + "objects/"
    before = len(node.log)  # the module's other tests made the same request: only lines logged after this point count
    r = requests.get(url, auth=("analyst", PASSWORDS["analyst"]), headers={"Accept": TAXII}, timeout=30)
    assert r.status_code == 200
    path = url.split(node.base.rstrip("/"), 1)[1]
    deadline = time.monotonic() + 30  # the line reaches the drained pipe a moment after the answer
    found: list[dict] = []
    while time.monotonic() < deadline and not found:
        for line in list(node.log)[before:]:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("logger") == "exchange.access" and entry.get("path") == path and entry.get("account") == "analyst":
                found.append(entry)
        time.sleep(0.1)
    assert found, "".join(node.log)[-2000:]
    entry = found[-1]
    assert (entry["level"], entry["method"], entry["status"]) == ("INFO", "GET", 200), entry
    assert entry["bytes"] == len(r.content) and isinstance(entry["ms"], (int, float)), entry
