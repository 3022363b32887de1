"""Permission matrix: every account x every collection x every endpoint answers exactly what the configuration grants."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import requests

from exchange.config import load_node
from exchange.node.ops import add_account, open_node
from tests.conftest import BACKENDS, PASSWORDS, NodeProcess, fresh_database, new_indicator, node_args, provision

TAXII = "application/taxii+json;version=2.1"
EXTRA = ("auditor", "auditor-password-123")  # an account added by the CLI path, with its own grants


@pytest.fixture(scope="module", params=BACKENDS)
def matrix_node(request, tmp_path_factory) -> NodeProcess:
    with fresh_database(request.param, tmp_path_factory.mktemp("db")) as database:
        yield from _matrix_node(tmp_path_factory, database)


def _matrix_node(tmp_path_factory, database):
    data: Path = tmp_path_factory.mktemp("perm") / "us"
    provision("us", data, database=database)
    opened = open_node("us", data_dir=data, database=database)
    try:
        add_account(opened, EXTRA[0], EXTRA[1], read=["rok-inbox"], write=["us-intel"])  # no write grant on a partner-read exists
        seeded = {}
        for coll in opened.node.config.collections:
            obj = new_indicator(1)
            opened.store.add_objects(coll.id, [obj])
            seeded[coll.id] = obj["id"]
        grants = {
            name: (readable, writable) for name, _pw, _partner, readable, writable in opened.store.accounts()
        }
    finally:
        opened.close()
    proc = NodeProcess("us", data, extra_args=node_args(database)).start()
    proc.seeded = seeded  # type: ignore[attr-defined]
    proc.grants = grants  # type: ignore[attr-defined]
    yield proc
    proc.stop()


CONFIG = load_node("us").config
ACCOUNTS = {**{a.name: PASSWORDS[a.name] for a in CONFIG.accounts}, EXTRA[0]: EXTRA[1]}
CASES = [(acct, coll.alias) for acct in sorted(ACCOUNTS) for coll in CONFIG.collections]


def _expected(can_read: bool, can_write: bool, need: str) -> int:
    if not (can_read or can_write):
        return 404
    ok = {"read": can_read, "write": can_write, "both": can_read and can_write}[need]
    return {"read": 200, "write": 202, "both": 200}[need] if ok else 403


@pytest.mark.parametrize("account,alias", CASES)
def test_each_answer_is_exactly_what_the_configuration_grants(matrix_node, account, alias):
    coll = CONFIG.collection(alias)
    readable, writable = matrix_node.grants[account]
    can_read, can_write = coll.id in readable, coll.id in writable
    base = matrix_node.collection_url(alias)
    oid = matrix_node.seeded[coll.id]
    auth = (account, ACCOUNTS[account])
    get = lambda url: requests.get(url, headers={"Accept": TAXII}, auth=auth, timeout=10)  # noqa: E731

    info = get(base)
    assert info.status_code == (200 if (can_read or can_write) else 404)
    if info.status_code == 200:
        assert (info.json()["can_read"], info.json()["can_write"]) == (can_read, can_write)
    for url in (base + "objects/", base + "manifest/", f"{base}objects/{oid}/", f"{base}objects/{oid}/versions/"):
        assert get(url).status_code == _expected(can_read, can_write, "read"), url
    post = requests.post(
        base + "objects/",
        data=orjson.dumps({"objects": [new_indicator(2)]}),
        headers={"Accept": TAXII, "Content-Type": TAXII},
        auth=auth,
        timeout=10,
    )
    assert post.status_code == _expected(can_read, can_write, "write")
    missing = "indicator--00000000-0000-4000-8000-000000000000"
    delete = requests.delete(f"{base}objects/{missing}/", headers={"Accept": TAXII}, auth=auth, timeout=10)
    expected_delete = _expected(can_read, can_write, "both")
    if coll.role == "partner-receipts" and expected_delete == 200:
        expected_delete = 403  # receipts and checkpoints are append-only: nobody deletes from them
    assert delete.status_code == (404 if expected_delete == 200 else expected_delete)
    # and wrong credentials are 401 everywhere, whatever exists
    assert requests.get(base + "objects/", headers={"Accept": TAXII}, auth=(account, "wrong-password-xyz"), timeout=10).status_code == 401


def test_the_matrix_covers_config_and_cli_grants(matrix_node):
    readable, writable = matrix_node.grants["rok"]
    assert {CONFIG.collection(c).alias for c in readable} == {"rok-read", "rok-receipts"}
    assert {CONFIG.collection(c).alias for c in writable} == {"rok-inbox", "rok-receipts"}
    readable, writable = matrix_node.grants[EXTRA[0]]
    assert {CONFIG.collection(c).alias for c in readable} == {"rok-inbox"}
    assert {CONFIG.collection(c).alias for c in writable} == {"us-intel"}


def test_partners_never_see_the_internal_collection(matrix_node):
    own = CONFIG.own_collection
    for account in ("rok", "jp"):
        resp = requests.get(
            matrix_node.url + "collections/", headers={"Accept": TAXII}, auth=(account, ACCOUNTS[account]), timeout=10
        )
        assert own.id not in {c["id"] for c in resp.json().get("collections", [])}
