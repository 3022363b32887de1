"""The node's /ui/ over plain HTTP, one real node process: object content an IEP marking says must be
encrypted in transit is not shown, and the STIX JSON is only from collections the analyst may read."""

from __future__ import annotations

import pytest
import requests

from exchange.demo.procs import NodeProcess
from exchange.node.ops import open_node
from exchange.sharing.release import release_all
from tests.conftest import PASSWORDS, provision
from tests.policy.vectorlib import expand


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    data = tmp_path_factory.mktemp("ui") / "us"
    provision("us", data)
    objs, ids = expand([
        {"alias": "must", "type": "marking-definition", "iep": {"tlp": "green", "encrypt_in_transit": "must"}},
        {"alias": "secret", "type": "indicator", "creator": "us", "markings": ["@must"], "name": "encrypted-only indicator"},
        {"alias": "open", "type": "indicator", "creator": "us", "tlp": "green", "name": "plain indicator"},
    ])
    opened = open_node("us", data_dir=data)
    try:
        opened.store.add_objects(opened.node.config.own_collection.id, objs)
        release_all(opened)
    finally:
        opened.close()
    proc = NodeProcess("us", data).start()
    yield proc, ids
    proc.stop()


def _get(proc, path, account="analyst"):
    return requests.get(f"{proc.base}ui/{path}", auth=(account, PASSWORDS[account]), timeout=60)


def test_plain_http_page_withholds_content_marked_encrypt_in_transit(node):
    proc, ids = node
    secret = _get(proc, f"objects/{ids['secret']}")
    assert secret.status_code == 200
    assert "Kept off plain HTTP" in secret.text and "encrypted-only indicator" not in secret.text
    shown = _get(proc, f"objects/{ids['open']}")
    assert shown.status_code == 200 and "plain indicator" in shown.text and 'class="stix"' in shown.text
    assert shown.headers["Content-Security-Policy"].startswith("default-src 'none'") and shown.headers["Cache-Control"] == "no-store"


def test_a_partner_account_reads_no_page_and_bad_input_is_an_html_answer(node):
    proc, ids = node
    for path in ("", "decisions", f"objects/{ids['open']}", "partners", "attribution", "clauses/scf.never-automated"):
        answer = _get(proc, path, "rok")
        assert answer.status_code == 403 and ids["open"] not in answer.text and "plain indicator" not in answer.text, path
    assert _get(proc, "decisions?since=yesterday").status_code == 400
    assert _get(proc, "clauses/no-such-clause").status_code == 404
    assert _get(proc, "objects/indicator--00000000-0000-4000-8000-000000000001").status_code == 404
