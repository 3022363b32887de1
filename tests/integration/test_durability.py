"""Acknowledged data survives kill -9; any worker serves any page."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from taxii2client.v21 import Collection, as_pages

from tests.conftest import PASSWORDS, NodeProcess, new_indicator, node_args, provision


def _pull_ids(url: str) -> list[str]:
    coll = Collection(url, user="analyst", password=PASSWORDS["analyst"])
    ids: list[str] = []
    for env in as_pages(coll.get_objects, per_request=500, version="all"):
        ids += [o["id"] for o in env.get("objects", [])]
    return ids


def test_acknowledged_objects_survive_kill_9_exactly_once(tmp_path, database):
    data = tmp_path / "us"
    provision("us", data, database=database)
    node = NodeProcess("us", data, extra_args=node_args(database)).start()
    url = node.collection_url("us-intel")
    coll = Collection(url, user="analyst", password=PASSWORDS["analyst"])
    acknowledged: list[str] = []
    stop = threading.Event()

    def pusher() -> None:
        i = 0
        while not stop.is_set():
            batch = [new_indicator(i + k) for k in range(200)]
            i += 200
            try:
                status = coll.add_objects({"objects": batch})
            except Exception:  # the server died under us: this envelope was never acknowledged
                return
            if status.status == "complete":
                acknowledged.extend(s["id"] for s in status.successes)

    thread = threading.Thread(target=pusher)
    thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 2000 and time.monotonic() < deadline:
        time.sleep(0.05)
    node.kill9()  # mid-stream: the pusher is almost certainly inside a request now
    stop.set()
    thread.join(timeout=30)
    assert len(acknowledged) >= 2000

    restarted = NodeProcess("us", data, extra_args=node_args(database)).start()
    try:
        ids = _pull_ids(restarted.collection_url("us-intel"))
    finally:
        restarted.stop()
    assert len(ids) == len(set(ids)), "an object came back twice"
    missing = set(acknowledged) - set(ids)
    assert not missing, f"{len(missing)} acknowledged objects lost"


def _multi_worker_node(tmp_path, database, workers: int, threads: int):
    data = tmp_path / "us"
    provision("us", data, database=database)
    node = NodeProcess("us", data, extra_args=("--workers", str(workers), "--threads", str(threads), *node_args(database))).start()
    yield node
    node.stop()


@pytest.fixture
def two_worker_node(tmp_path, database):
    yield from _multi_worker_node(tmp_path, database, workers=2, threads=2)


def test_next_cursor_works_whichever_worker_answers(two_worker_node):
    url = two_worker_node.collection_url("us-intel")
    coll = Collection(url, user="analyst", password=PASSWORDS["analyst"])
    objs = [new_indicator(i) for i in range(600)]
    coll.add_objects({"objects": objs})
    # fresh connections each page, so pages land on both workers
    got: list[str] = []
    params = {"limit": "25"}
    while True:
        resp = requests.get(
            url + "objects/", params=params, headers={"Accept": "application/taxii+json;version=2.1", "Connection": "close"},
            auth=("analyst", PASSWORDS["analyst"]), timeout=10,
        )
        assert resp.status_code == 200
        env = resp.json()
        got += [o["id"] for o in env.get("objects", [])]
        if not env.get("more"):
            break
        params = {"limit": "25", "next": env["next"]}
    assert sorted(got) == sorted(o["id"] for o in objs)


@pytest.fixture
def three_worker_node(tmp_path, database):
    yield from _multi_worker_node(tmp_path, database, workers=3, threads=4)


def test_concurrent_pushers_and_pullers_across_workers_lose_and_duplicate_nothing(three_worker_node):
    """4 clients push (each re-sending part of another's objects) while 2 page through, all at once."""
    import concurrent.futures

    url = three_worker_node.collection_url("us-intel")
    batches = [[new_indicator(i) for i in range(400)] for _ in range(4)]
    # every pusher also re-sends the first 50 objects of the next pusher's batch: same object, twice, concurrently
    plans = [batches[k] + batches[(k + 1) % 4][:50] for k in range(4)]
    deadline = time.monotonic() + 60

    def push(objs: list[dict]) -> int:
        coll = Collection(url, user="analyst", password=PASSWORDS["analyst"])
        ok = 0
        for i in range(0, len(objs), 90):
            status = coll.add_objects({"objects": objs[i : i + 90]})
            ok += status.success_count
            assert status.failure_count == 0, status.failures
        return ok

    def pull_until_done() -> int:
        walks = 0
        while time.monotonic() < deadline and walks < 20:
            ids = _pull_ids(url)
            assert len(ids) == len(set(ids)), "a page repeated an object"
            walks += 1
        return walks

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        pushes = [pool.submit(push, plan) for plan in plans]
        pulls = [pool.submit(pull_until_done) for _ in range(2)]
        assert [f.result(timeout=120) for f in pushes] == [len(p) for p in plans]
        assert all(f.result(timeout=120) >= 1 for f in pulls)
    final = _pull_ids(url)
    assert len(final) == len(set(final))
    assert set(final) == {o["id"] for b in batches for o in b}


@pytest.fixture
def four_worker_node(tmp_path, database):
    yield from _multi_worker_node(tmp_path, database, workers=4, threads=4)


def test_keep_alive_clients_spread_over_the_workers(four_worker_node):
    """4 partners' keep-alive connections opened at once land on different workers, not on one.

    gunicorn's workers race for each connection; without the worker's accept pause one
    worker usually won 3 or all 4 of them (14 of 20 rounds; 4 different workers in none),
    and those clients then shared one interpreter lock for as long as they stayed connected.
    """
    import base64
    import http.client
    from collections import Counter
    from urllib.parse import urlsplit

    import psutil

    parts = urlsplit(four_worker_node.collection_url("us-intel"))
    headers = {
        "Accept": "application/taxii+json;version=2.1",
        "Authorization": "Basic " + base64.b64encode(f"analyst:{PASSWORDS['analyst']}".encode()).decode(),
    }
    master = psutil.Process(four_worker_node.proc.pid)
    deadline = time.monotonic() + 30
    while len(master.children()) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = master.children()
    assert len(workers) == 4
    spread = 0
    for _ in range(10):
        conns = [http.client.HTTPConnection(parts.hostname, parts.port, timeout=10) for _ in range(4)]
        for c in conns:
            c.connect()
        for c in conns:
            c.request("GET", parts.path + "objects/?limit=10", headers=headers)
        for c in conns:
            assert c.getresponse().read()
        ports = {c.sock.getsockname()[1] for c in conns}
        held = Counter(w.pid for w in workers for k in w.net_connections(kind="tcp") if k.raddr and k.raddr.port in ports)
        assert sum(held.values()) == 4
        spread += len(held) == 4
        for c in conns:
            c.close()
        time.sleep(0.2)
    assert spread >= 7, f"the 4 connections went to 4 different workers in only {spread} of 10 rounds"


def test_failed_login_limit_holds_across_workers(four_worker_node):
    """``max_failed_logins`` (10 by default) is per node, not per worker process.

    Each attempt is a new connection, so the attempts land on different workers; when
    each worker kept its own counts, a guesser got up to 4 x 10 tries per window here.
    """
    discovery = four_worker_node.base + "taxii2/"

    def attempt(password: str) -> requests.Response:
        return requests.get(
            discovery, headers={"Accept": "application/taxii+json;version=2.1", "Connection": "close"},
            auth=("jp", password), timeout=10,
        )

    assert [attempt(f"wrong-{i}").status_code for i in range(10)] == [401] * 10
    after = [attempt(PASSWORDS["jp"] if i % 2 else f"wrong-more-{i}") for i in range(12)]
    assert [r.status_code for r in after] == [429] * 12, "a worker let a locked account name try again"
    assert all(1 <= int(r.headers["Retry-After"]) <= 300 for r in after)
    ok = requests.get(discovery, headers={"Accept": "application/taxii+json;version=2.1"}, auth=("analyst", PASSWORDS["analyst"]), timeout=10)
    assert ok.status_code == 200  # other accounts are unaffected
