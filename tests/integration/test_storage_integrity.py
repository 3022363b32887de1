"""Storage integrity (issue 18): ``date_added`` order for ``added_after`` paging, ASCII timestamps, start-up checks.

Wire behaviour is tested against a real node process on 127.0.0.1 (ephemeral
port); start-up checks run the real ``cti-exchange`` command line on real
database files (and PostgreSQL databases, where the check applies to both).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import requests
from sqlalchemy import create_engine, select, text

from exchange.node.ops import open_node
from exchange.sharing.release import release_all
from exchange.storage.schema import collections, objects
from exchange.storage.store import DB_FILE, normalise_url
from tests.conftest import PASSWORDS, NodeProcess, new_indicator, node_args, provision

TAXII = "application/taxii+json;version=2.1"
AUTH = ("analyst", PASSWORDS["analyst"])
BUNDLE = str(Path(__file__).resolve().parents[2] / "collections" / "us" / "seed" / "exercise.json")
US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
FULL_WIDTH = "\uff12\uff10\uff12\uff16-11-01T00:00:00.000Z"  # "２０２６-11-01T00:00:00.000Z"


def _post(url: str, objs: list[dict]) -> dict:
    resp = requests.post(
        url + "objects/", data=orjson.dumps({"objects": objs}), auth=AUTH,
        headers={"Content-Type": TAXII, "Accept": TAXII}, timeout=120,
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


def _get(url: str, **params: str) -> requests.Response:
    return requests.get(url + "objects/", params=params, auth=AUTH, headers={"Accept": TAXII}, timeout=60)


# -- 1. date_added strictly increasing: added_after = X-TAXII-Date-Added-Last misses nothing -------------


def test_paging_by_date_added_last_alone_gets_every_object_exactly_once(us_node):
    url = us_node.collection_url("us-intel")
    posted: list[str] = []
    for start in range(0, 10_000, 500):
        batch = [new_indicator(start + i) for i in range(500)]
        status = _post(url, batch)
        assert status["success_count"] == 500
        posted += [o["id"] for o in batch]
    seen: list[str] = []
    added_after: str | None = None
    with requests.Session() as http:
        http.auth = AUTH
        while True:
            params = {"limit": "7"} | ({"added_after": added_after} if added_after else {})
            resp = http.get(url + "objects/", params=params, headers={"Accept": TAXII}, timeout=60)
            assert resp.status_code == 200, resp.text
            page = resp.json().get("objects", [])
            if not page:
                break
            seen += [o["id"] for o in page]
            last = resp.headers["X-TAXII-Date-Added-Last"]
            assert added_after is None or last > added_after, "X-TAXII-Date-Added-Last did not move forward"
            added_after = last
            assert len(seen) <= len(posted), "paging repeats objects"
    assert len(seen) == len(set(seen)), "an object came back twice"
    assert set(seen) == set(posted), f"{len(set(posted) - set(seen))} of {len(posted)} objects were skipped"
    assert seen == posted  # date_added order is posting order


def test_next_paging_and_date_added_first_last_headers_agree(us_node):
    url = us_node.collection_url("us-intel")
    objs = [new_indicator(i) for i in range(40)]
    _post(url, objs)
    seen, token, previous_last = [], None, ""
    while True:
        resp = _get(url, limit="7", **({"next": token} if token else {}))
        body = resp.json()
        seen += [o["id"] for o in body["objects"]]
        first, last = resp.headers["X-TAXII-Date-Added-First"], resp.headers["X-TAXII-Date-Added-Last"]
        assert previous_last < first <= last  # pages never share a date_added
        if len(body["objects"]) > 1:
            assert first < last
        previous_last = last
        if not body.get("more"):
            break
        token = body["next"]
    assert seen == [o["id"] for o in objs]


def _date_added_by_collection(url: str | None, data_dir: Path) -> dict[str, list[int]]:
    engine = create_engine(normalise_url(url) if url else f"sqlite:///{data_dir / DB_FILE}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(collections.c.collection_id, objects.c.date_added)
                .select_from(objects.join(collections, collections.c.key == objects.c.coll)).order_by(objects.c.seq)
            ).all()
    finally:
        engine.dispose()
    out: dict[str, list[int]] = {}
    for cid, added in rows:
        out.setdefault(cid, []).append(added)
    return out


def test_date_added_strictly_increases_in_own_and_released_collections(tmp_path, database):
    data = tmp_path / "us"
    opened = open_node("us", data_dir=data, database=database)
    try:
        own = opened.node.config.own_collection.id
        for start in range(0, 1200, 400):
            batch = [new_indicator(start + i, created_by_ref=US_ID, marking=GREEN) for i in range(400)]
            assert opened.store.add_objects(own, batch).added == 400
        release_all(opened)  # writes the shared copies into each partner's read collection, batch by batch
        opened.store.add_objects(own, [new_indicator(5000 + i, created_by_ref=US_ID, marking=GREEN) for i in range(50)])
        release_all(opened)
    finally:
        opened.close()
    by_collection = _date_added_by_collection(database, data)
    assert len(by_collection[own]) == 1250
    released = {cid: stamps for cid, stamps in by_collection.items() if cid != own}
    assert released and max(len(s) for s in released.values()) >= 1250  # the indicators (and their companions) were released
    for cid, stamps in by_collection.items():
        assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False)), f"date_added not strictly increasing in {cid}"


# -- 2. timestamps use ASCII digits (RFC 3339) ------------------------------------------------------------


def test_full_width_digits_in_a_timestamp_are_refused_on_the_wire(us_node):
    url = us_node.collection_url("us-intel")
    bad = new_indicator(1, created=FULL_WIDTH, modified=FULL_WIDTH, valid_from=FULL_WIDTH)
    arabic = new_indicator(2, valid_from="\u0662\u0660\u0662\u0666-11-01T00:00:00Z")  # Arabic-Indic digits
    good = new_indicator(3)
    status = _post(url, [bad, arabic, good])
    assert status["success_count"] == 1 and status["failure_count"] == 2
    messages = {f["id"]: f["message"] for f in status["failures"]}
    assert messages[bad["id"]] == "inbound.stix-valid: 'created': timestamp must use ASCII digits (RFC 3339)"
    assert messages[arabic["id"]] == "inbound.stix-valid: 'valid_from': timestamp must use ASCII digits (RFC 3339)"
    stored = _get(url).json()["objects"]
    assert [o["id"] for o in stored] == [good["id"]]

    resp = _get(url, added_after=FULL_WIDTH)
    assert resp.status_code == 400
    assert resp.headers["Content-Type"].startswith("application/taxii+json")
    assert "added_after: timestamp must use ASCII digits (RFC 3339)" in resp.json()["description"]
    resp = _get(url, **{"match[version]": FULL_WIDTH})
    assert resp.status_code == 400
    assert _get(url, added_after="2026-11-01T00:00:00.000Z\n").status_code == 400  # nothing after the Z either


# -- 3. start-up integrity: a damaged or foreign database is refused in one line ---------------------------


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exchange", *args], input=stdin, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )


def _one_line_failure(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _serve(data: Path, database: str | None, *extra: str) -> subprocess.CompletedProcess:
    """``serve`` on a damaged database must exit before it listens (one that serves is stopped after 30 s: a failure)."""
    cmd = [sys.executable, "-m", "exchange", "serve", "us", "--data-dir", str(data), "--port", "0", *node_args(database), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"serve started on a database it should have refused: {out.strip()} {err.strip()[-500:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _node_with_data(tmp_path: Path, database: str | None, n: int = 3000) -> Path:
    data = tmp_path / "us"
    provision("us", data, database=database)
    opened = open_node("us", data_dir=data, database=database)
    try:
        opened.store.add_objects(opened.node.config.own_collection.id, [new_indicator(i, created_by_ref=US_ID, marking=GREEN) for i in range(n)])
        release_all(opened)
    finally:
        opened.close()
    return data


def _sql(database: str | None, data: Path, statement: str) -> None:
    engine = create_engine(normalise_url(database) if database else f"sqlite:///{data / DB_FILE}")
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def test_random_bytes_in_the_sqlite_file_stop_the_start_in_one_line(tmp_path):
    data = _node_with_data(tmp_path, None)
    db = data / DB_FILE
    with sqlite3.connect(db) as conn:  # everything into the main file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = db.stat().st_size
    assert size > 1_000_000
    with open(db, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(os.urandom(16384))
    _one_line_failure(_serve(data, None), "corrupt", str(db))
    _one_line_failure(_cli("audit", "verify", "--data-dir", str(data)), "corrupt")
    _one_line_failure(_cli("release", "us", "--data-dir", str(data)), "corrupt")
    _one_line_failure(_serve(data, None, "--init"), "corrupt")  # --init never writes over a damaged database


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    data = tmp_path / "us"
    data.mkdir()
    (data / DB_FILE).write_bytes(b"this is a text file, not an SQLite database\n" * 200)
    _one_line_failure(_serve(data, None), "not an SQLite database")
    _one_line_failure(_cli("audit", "verify", "--data-dir", str(data)), "not an SQLite database")
    _one_line_failure(_cli("account", "add", "us", "someone", "--data-dir", str(data), "--init"), "not an SQLite database")


def test_a_dropped_table_stops_the_start_in_one_line(tmp_path, database):
    data = _node_with_data(tmp_path, database, n=50)
    _sql(database, data, "DROP TABLE audit")
    _one_line_failure(_serve(data, database), "audit")
    _one_line_failure(_cli("audit", "verify", "--data-dir", str(data), *node_args(database)), "audit")
    _one_line_failure(_serve(data, database, "--init"), "audit")


def test_an_unknown_schema_revision_stops_the_start_in_one_line(tmp_path, database):
    data = _node_with_data(tmp_path, database, n=10)
    _sql(database, data, "UPDATE alembic_version SET version_num = '9999_from_the_future'")
    _one_line_failure(_serve(data, database), "9999_from_the_future")
    _one_line_failure(_cli("account", "add", "us", "someone", "--data-dir", str(data), *node_args(database)), "9999_from_the_future")


def test_a_zero_byte_database_file_is_refused_without_init(tmp_path):
    data = tmp_path / "us"
    data.mkdir()
    db = data / DB_FILE
    db.write_bytes(b"")
    _one_line_failure(_serve(data, None), "empty", "--init")
    _one_line_failure(_cli("account", "add", "us", "someone", "--data-dir", str(data)), "empty", "--init")
    _one_line_failure(_cli("release", "us", "--data-dir", str(data)), "empty", "--init")
    _one_line_failure(_cli("audit", "verify", "--data-dir", str(data)), "empty")
    assert db.stat().st_size == 0  # refused, and left as it was
    added = _cli("account", "add", "us", "analyst", "--password-stdin", "--data-dir", str(data), "--init", stdin=PASSWORDS["analyst"] + "\n")
    assert added.returncode == 0, added.stderr
    node = NodeProcess("us", data).start()  # initialised now: serves without --init
    try:
        assert _get(node.collection_url("us-intel")).status_code == 200
    finally:
        node.stop()


def test_a_foreign_database_is_refused_without_init(tmp_path, database):
    data = tmp_path / "us"
    data.mkdir()
    _sql(database, data, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount INTEGER)")
    _sql(database, data, "INSERT INTO invoices VALUES (1, 100)")
    _one_line_failure(_serve(data, database), "invoices", "--init")
    _one_line_failure(_cli("load", "us", BUNDLE, "--data-dir", str(data), *node_args(database)), "--init")
    added = _cli("account", "add", "us", "someone", "--data-dir", str(data), "--init", *node_args(database))
    assert added.returncode == 0, added.stderr
    listed = _cli("account", "list", "us", "--data-dir", str(data), "--json", *node_args(database))
    assert listed.returncode == 0 and "someone" in listed.stdout


def test_a_new_data_dir_is_still_created_without_init(tmp_path, database):
    data = tmp_path / "brand-new"
    added = _cli("account", "add", "us", "analyst", "--password-stdin", "--data-dir", str(data), *node_args(database),
                 stdin=PASSWORDS["analyst"] + "\n")
    assert added.returncode == 0, added.stderr
    loaded = _cli("load", "us", BUNDLE, "--data-dir", str(data), *node_args(database))
    assert loaded.returncode == 0, loaded.stderr
    verified = _cli("audit", "verify", "--data-dir", str(data), *node_args(database))
    assert verified.returncode == 0 and "audit chain OK" in verified.stdout, verified.stderr


@pytest.mark.parametrize("damage", ["drop-objects", "corrupt"])
def test_audit_verify_never_tracebacks(tmp_path, damage):
    data = _node_with_data(tmp_path, None, n=200)
    if damage == "drop-objects":
        _sql(None, data, "DROP TABLE objects")
    else:
        db = data / DB_FILE
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(db, "r+b") as fh:
            fh.seek(4096)  # page 2 onwards
            fh.write(b"\xff" * 8192)
    _one_line_failure(_cli("audit", "verify", "--data-dir", str(data)))


def test_a_running_node_never_extends_a_trimmed_audit_log(tmp_path, database):
    """Seen in CI: a test trimmed a running node's log, that node's releaser then chained new entries on the cut tail
    and signed a new head over them, and ``audit verify`` passed. The node now refuses to extend a log that does not
    end at its head: an audited write is answered with a TAXII error and writes nothing, and the releaser stops with
    one log line; the cut stays visible."""
    data = _node_with_data(tmp_path, database, n=20)
    _sql(database, data, "DELETE FROM audit WHERE seq > 3")
    proc = NodeProcess("us", data, extra_args=node_args(database)).start()
    try:
        url = proc.collection_url("us-intel")
        fresh = [new_indicator(500 + i, created_by_ref=US_ID, marking=GREEN) for i in range(3)]
        assert _post(url, fresh)["success_count"] == 3  # the own collection's writes are not audited: accepted
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("background release failed" in line for line in proc.log):
            time.sleep(0.1)
        failed = [line for line in proc.log if "background release failed" in line]
        assert failed and "does not end at its signed head" in failed[0] and "its head says" in failed[0], "".join(proc.log)
        assert "Traceback" not in "".join(proc.log)
        rok = requests.get(proc.collection_url("rok-read") + "objects/", params={"match[id]": fresh[0]["id"]},
                           auth=("rok", PASSWORDS["rok"]), headers={"Accept": TAXII}, timeout=60)
        assert rok.status_code == 404 or fresh[0]["id"] not in {o["id"] for o in rok.json().get("objects", [])}
        # a correction under a stored version is audited (a conflict entry): refused whole, nothing of the envelope lands
        stored = _get(url, limit="1").json()["objects"][0]
        changed = {**stored, "name": "changed under the same version"}
        other = new_indicator(900, created_by_ref=US_ID, marking=GREEN)
        resp = requests.post(url + "objects/", data=orjson.dumps({"objects": [changed, other]}), auth=AUTH,
                             headers={"Content-Type": TAXII, "Accept": TAXII}, timeout=60)
        assert resp.status_code == 500, resp.text
        assert resp.headers["Content-Type"].startswith("application/taxii+json")
        body = resp.json()
        assert body["title"] == "AuditChainBroken" and "its head says" in body["description"]
        gone = _get(url, **{"match[id]": other["id"]})
        assert gone.status_code == 404 or not gone.json().get("objects"), gone.text
    finally:
        proc.stop()
    result = subprocess.run([sys.executable, "-m", "exchange", "audit", "verify", "--data-dir", str(data), *node_args(database)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "removed" in result.stdout + result.stderr
