"""Hostile input: every case answers a 4xx with a TAXII error body, never a 5xx, and stores nothing.

One node per storage backend (module scope) with small limits where a test needs
them: 3 failed logins per 3 s window, a 2 s request timeout.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import time
import urllib.parse
import uuid
from pathlib import Path

import orjson
import pytest
import requests

from exchange.storage.store import Store
from tests.conftest import BACKENDS, PASSWORDS, NodeProcess, fresh_database, new_indicator, node_args, provision
from tests.integration.hostile import (
    TAXII,
    assert_taxii_error,
    fingerprint,
    node_dir_with,
    raw_request,
    read_response,
)

AUTH = ("analyst", PASSWORDS["analyst"])
REQUEST_TIMEOUT = 2.0
WINDOW = 3.0


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module", params=BACKENDS)
def node(request, tmp_path_factory) -> NodeProcess:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    with fresh_database(request.param, tmp) as database:
        node_dir = str(node_dir_with(tmp, auth={"max_failed_logins": 3, "failed_login_window": WINDOW}))
        data = tmp / "data"
        provision(node_dir, data, database=database)
        proc = NodeProcess(node_dir, data, extra_args=(*node_args(database), "--request-timeout", str(REQUEST_TIMEOUT))).start()
        store = Store.open(data_dir=data, database=database)
        proc.store = store  # type: ignore[attr-defined]
        proc.port = urllib.parse.urlsplit(proc.url).port
        proc.intel = proc.collection_url("us-intel")  # type: ignore[attr-defined]
        proc.intel_path = urllib.parse.urlsplit(proc.intel).path  # type: ignore[attr-defined]
        proc.ids = [c.id for c in _config(proc).collections]  # type: ignore[attr-defined]
        resp = requests.post(
            proc.intel + "objects/", data=orjson.dumps({"objects": [new_indicator(i) for i in range(3)]}),
            headers={"Accept": TAXII, "Content-Type": TAXII}, auth=AUTH, timeout=10,
        )
        assert resp.status_code == 202 and resp.json()["success_count"] == 3
        try:
            yield proc
        finally:
            proc.stop()
            store.close()


def _config(proc: NodeProcess):
    from exchange.config import load_node

    return load_node(proc.node).config


def _fp(node) -> tuple:
    return fingerprint(node.store, node.ids)


def _post(node, body, *, auth=AUTH, headers=None, timeout=60) -> requests.Response:
    return requests.post(
        node.intel + "objects/", data=body, headers={"Accept": TAXII, "Content-Type": TAXII, **(headers or {})}, auth=auth, timeout=timeout
    )


def _taxii_error(resp: requests.Response, status) -> dict:
    return assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, status)


# -- body size -----------------------------------------------------------------------------


def test_oversize_body_is_413(node):
    before = _fp(node)
    limit = _config(node).api_root.max_content_length
    body = b"{\"objects\": [" + b" " * (limit + 1 - 15) + b"]}"  # one byte over the limit
    assert len(body) == limit + 1
    _taxii_error(_post(node, body), 413)
    assert _fp(node) == before


def test_oversize_content_length_is_refused_before_the_body_is_read(node):
    before = _fp(node)
    started = time.monotonic()
    ans = raw_request(
        node.port, "POST", node.intel_path + "objects/", body=b"{}",  # the body never comes
        headers={"Accept": TAXII, "Content-Type": TAXII, "Authorization": _basic(*AUTH), "Content-Length": str(10**12)},
        timeout=10,
    )
    assert_taxii_error(ans.status, ans.headers, ans.body, 413)
    assert time.monotonic() - started < REQUEST_TIMEOUT  # answered at once, not after waiting for 1 TB
    assert _fp(node) == before


def _chunked_post(node, total: int, piece: int = 64 * 1024) -> tuple[bytes, int]:
    """POST a chunked body of ``total`` bytes until the server answers; (response, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    head = (
        f"POST {node.intel_path}objects/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {TAXII}\r\nContent-Type: {TAXII}\r\n"
        f"Authorization: {_basic(*AUTH)}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    frame = b"%x\r\n" % piece + b"x" * piece + b"\r\n"
    sent = 0
    try:
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered already
            sock.sendall(frame)
            sent += piece
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        return read_response(sock, 15), sent
    finally:
        sock.close()


def test_chunked_oversize_body_is_413(node):
    before = _fp(node)
    limit = _config(node).api_root.max_content_length
    data, sent = _chunked_post(node, 3 * limit)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), data[:300]
    assert b"application/taxii+json" in head
    doc = orjson.loads(body)
    assert doc["http_status"] == "413"
    assert sent < 3 * limit  # the server stopped reading at its limit and answered
    assert _fp(node) == before


def test_small_chunked_body_is_accepted(node):
    obj = new_indicator(7)

    def pieces():
        raw = orjson.dumps({"objects": [obj]})
        yield raw[:10]
        yield raw[10:]

    resp = _post(node, pieces())
    assert resp.status_code == 202, resp.text
    assert resp.json()["success_count"] == 1


# -- structure: depth, object count, value count --------------------------------------------


def test_ten_thousand_deep_json_is_rejected_with_400(node):
    before = _fp(node)
    for body in (
        b"[" * 10_000 + b"]" * 10_000,
        b'{"objects": [' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"]}",
    ):
        doc = _taxii_error(_post(node, body), 400)
        assert "JSON" in doc["description"]
    assert _fp(node) == before


def test_object_nested_past_the_depth_limit_is_400_and_envelope_not_stored(node):
    before = _fp(node)
    limit = _config(node).api_root.max_object_depth

    def nested(levels: int) -> dict:
        obj = new_indicator(1)
        inner = obj
        for _ in range(levels - 1):  # the object itself is level 1
            inner["x_nest"] = {}
            inner = inner["x_nest"]
        return obj

    ok, deep = nested(limit), nested(limit + 1)
    doc = _taxii_error(_post(node, orjson.dumps({"objects": [new_indicator(2), deep]})), 400)
    assert f"{limit} levels" in doc["description"]
    assert _fp(node) == before  # the valid object in the same envelope was not stored either
    resp = _post(node, orjson.dumps({"objects": [ok]}))
    assert resp.status_code == 202 and resp.json()["success_count"] == 1


def test_hundred_thousand_object_envelope_is_rejected_and_nothing_stored(node):
    before = _fp(node)
    limit = _config(node).api_root.max_objects_per_envelope
    tiny = orjson.dumps({"objects": [{"type": "indicator"}] * 100_000})  # 1.9 MB: within the size limit
    doc = _taxii_error(_post(node, tiny), 413)
    assert str(limit) in doc["description"]
    valid = orjson.dumps({"objects": [new_indicator(i) for i in range(limit + 1)]})  # valid objects, one too many
    _taxii_error(_post(node, valid), 413)
    assert _fp(node) == before


def _worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(c) for c in children]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker memory from Linux /proc")
def test_json_value_bomb_is_413_before_parsing_and_memory_stays_bounded(node):
    # 10 MB of empty objects parse to ~3.5 million dicts (~300 MB); the node refuses it unparsed
    before = _fp(node)
    workers = _worker_pids(node.proc.pid)
    peak = {pid: _peak_rss_mb(pid) for pid in workers}
    body = b'{"objects":[' + b"{}," * 3_400_000 + b"{}]}"
    doc = _taxii_error(_post(node, body), 413)
    assert "JSON values" in doc["description"]
    grew = max(_peak_rss_mb(pid) - peak[pid] for pid in workers)
    assert grew < 120, f"a worker's peak memory grew by {grew:.0f} MB"
    assert _fp(node) == before


# -- encoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"objects": [{"type": "indicator", "name": "\xff\xfe"}]}',
        b'{"objects": [{"name": "\xc0\xaf"}]}',  # overlong "/"
        b'{"objects": [{"name": "\xed\xa0\x80"}]}',  # an encoded surrogate
        b'{"objects": [{"name": "\\ud800"}]}',  # an escaped lone surrogate
        b"\xef\xbb\xbf" + b'{"objects": []}',  # byte order mark
        '{"objects": []}'.encode("utf-16"),
    ],
    ids=["invalid-bytes", "overlong", "surrogate-bytes", "escaped-surrogate", "bom", "utf-16"],
)
def test_invalid_utf8_body_is_400(node, body):
    before = _fp(node)
    _taxii_error(_post(node, body), 400)
    assert _fp(node) == before


def test_invalid_utf8_in_url_and_credentials_is_a_4xx(node):
    for path in (node.intel_path + "objects/%ff%fe/", node.intel_path + "objects/?match%5Btype%5D=%ff%fe", "/%ff/collections/"):
        ans = raw_request(node.port, "GET", path, headers={"Accept": TAXII, "Authorization": _basic(*AUTH)})
        assert_taxii_error(ans.status, ans.headers, ans.body, (400, 404))
    ans = raw_request(node.port, "GET", "/taxii2/", headers={"Accept": TAXII, "Authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()})
    assert_taxii_error(ans.status, ans.headers, ans.body, 401)


# -- identifiers, filters, next ------------------------------------------------------------------


def test_path_traversal_in_object_id_is_refused(node):
    before = _fp(node)
    objects = node.intel_path + "objects/"
    real = f"indicator--{uuid.uuid4()}"
    cases = [
        objects + "../../../../etc/passwd/",
        objects + "..%2F..%2F..%2Fetc%2Fpasswd/",
        objects + "%2e%2e/",
        objects + "%2e%2e%2f%2e%2e%2fetc%2fpasswd/versions/",
        objects + "..%252F..%252Fetc%252Fpasswd/",
        objects + "..\\..\\windows\\win.ini/",
        objects + real + "%00/",
        objects + real + "%2F..%2F..%2F/versions/",
        objects + "indicator--" + "a" * 5000 + "/",
        objects + "indicator--" + "a" * 9000 + "/",  # past gunicorn's request line limit: 414
        objects + "%E2%80%AE" + real + "/",
        "/us/collections/../../../etc/passwd/objects/",
        "/us/collections/%2e%2e%2f%2e%2e%2fetc%2fpasswd/objects/",
        "/../../etc/passwd/collections/",
        "/us/status/..%2F..%2Fetc%2Fpasswd/",
        "/us/status/%00/",
    ]
    for path in cases:
        for method in ("GET", "DELETE"):
            ans = raw_request(node.port, method, path, headers={"Accept": TAXII, "Authorization": _basic(*AUTH)})
            assert_taxii_error(ans.status, ans.headers, ans.body, (400, 404, 405, 414))
            assert b"root:" not in ans.body
    assert _fp(node) == before


@pytest.mark.parametrize(
    "params",
    [
        {"match[version]": "garbage"},
        {"added_after": "notadate"},
        {"added_after": "0000-01-01T00:00:00Z"},
        {"limit": "-1"},
        {"limit": "1e3"},
        {"match[id]": "indicator--\x00"},
        {"match[id]": "../../etc/passwd"},
        {"match[type]": "indicator\x00"},
        {"match[type]": "x" * 300},
        {"match[spec_version]": "2.1\x00"},
        {"match[version]": "2024-01-01T00:00:00Z\x00"},
    ],
)
def test_bad_filter_values_are_400(node, params):
    resp = requests.get(node.intel + "objects/", params=params, headers={"Accept": TAXII}, auth=AUTH, timeout=10)
    _taxii_error(resp, 400)


def test_huge_limit_is_capped_at_the_page_size(node):
    resp = requests.get(node.intel + "objects/", params={"limit": "99999999999999999999"}, headers={"Accept": TAXII}, auth=AUTH, timeout=10)
    assert resp.status_code == 200
    assert len(resp.json()["objects"]) <= _config(node).max_page_size


def test_forged_next_token_is_400(node):
    url = node.intel + "objects/"
    page = requests.get(url, params={"limit": "1"}, headers={"Accept": TAXII}, auth=AUTH, timeout=10).json()
    token = page["next"]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    for bad in (
        b64(raw[:13] + bytes(16) + raw[29:]),  # another (encrypted) position under the same nonce and tag
        b64(raw[:-1] + bytes([raw[-1] ^ 1])),  # the GCM tag flipped
        b64(bytes([1]) + raw[1:]),  # another version byte
        token[:-1],
        token[1:],
        token + "=",
        "." + token,
        token + "." + token,
        "A" * 600,
        token + "\x00",
        "\u0391" + token[1:],
        "../../etc/passwd",
        "",
    ):
        resp = requests.get(url, params={"next": bad}, headers={"Accept": TAXII}, auth=AUTH, timeout=10)
        if bad == "":  # an empty next is no next: the first page
            assert resp.status_code == 200
            continue
        _taxii_error(resp, 400)
    # the genuine token on another endpoint or collection is refused too
    _taxii_error(requests.get(node.intel + "manifest/", params={"next": token}, headers={"Accept": TAXII}, auth=AUTH, timeout=10), 400)
    other = node.collection_url("rok-inbox") + "objects/"
    _taxii_error(requests.get(other, params={"next": token}, headers={"Accept": TAXII}, auth=AUTH, timeout=10), 400)
    assert requests.get(url, params={"next": token}, headers={"Accept": TAXII}, auth=AUTH, timeout=10).status_code == 200


# -- credentials ---------------------------------------------------------------------------------


def test_repeated_wrong_credentials_are_throttled_per_account(node):
    discovery = node.base + "taxii2/"

    def get(user: str, password: str) -> requests.Response:
        return requests.get(discovery, headers={"Accept": TAXII}, auth=(user, password), timeout=10)

    for i in range(3):
        assert get("jp", f"wrong-password-{i}").status_code == 401
    locked = get("jp", "wrong-password-x")
    doc = _taxii_error(locked, 429)
    wait = int(locked.headers["Retry-After"])
    assert 1 <= wait <= WINDOW
    _taxii_error(get("jp", PASSWORDS["jp"]), 429)  # locked: even the right password is not looked at
    assert get(*AUTH).status_code == 200  # other accounts are unaffected

    # an account that does not exist is treated exactly alike (no enumeration)
    for i in range(3):
        assert get("ghost-account", f"wrong-password-{i}").status_code == 401
    ghost = get("ghost-account", "wrong-password-x")
    assert _taxii_error(ghost, 429) == doc
    assert "Retry-After" in ghost.headers

    # a throttled account changes nothing, even with its right password
    before = _fp(node)
    for i in range(3):
        assert get("rok", f"wrong-password-{i}").status_code == 401
    resp = requests.post(
        node.collection_url("rok-inbox") + "objects/", data=orjson.dumps({"objects": [new_indicator(1)]}),
        headers={"Accept": TAXII, "Content-Type": TAXII}, auth=("rok", PASSWORDS["rok"]), timeout=10,
    )
    _taxii_error(resp, 429)
    assert _fp(node) == before

    time.sleep(wait + 0.5)
    assert get("jp", PASSWORDS["jp"]).status_code == 200  # the window passed


# -- slow clients ----------------------------------------------------------------------------------


def test_slow_client_does_not_block_others(node):
    """More clients trickling their headers than the worker has threads (4): others are served at once."""
    slow = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(8)]
    started = time.monotonic()
    for sock in slow:
        sock.sendall(b"GET /taxii2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for _ in range(4):
        for sock in slow:
            sock.sendall(b"X-Slow: 1\r\n")
        t = time.monotonic()
        resp = requests.get(node.base + "taxii2/", headers={"Accept": TAXII}, auth=AUTH, timeout=10)
        assert resp.status_code == 200
        assert time.monotonic() - t < 1.0
        time.sleep(0.2)
    # each slow connection is answered 408 with a TAXII body and closed, soon after the deadline
    answers: dict[int, bytes] = {}
    while len(answers) < len(slow) and time.monotonic() - started < REQUEST_TIMEOUT + 5:
        for i, sock in enumerate(slow):
            if i in answers:
                continue
            with contextlib.suppress(OSError):
                sock.sendall(b"X-Slow: 1\r\n")
            if select.select([sock], [], [], 0)[0]:
                answers[i] = read_response(sock, 5)
        time.sleep(0.3)
    elapsed = time.monotonic() - started
    for sock in slow:
        sock.close()
    assert len(answers) == len(slow)
    for data in answers.values():
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), data[:200]
        assert orjson.loads(body)["http_status"] == "408"
    assert elapsed < REQUEST_TIMEOUT + 2


def test_slow_body_is_408_and_stores_nothing(node):
    before = _fp(node)
    body = orjson.dumps({"objects": [new_indicator(9)]})
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    head = (
        f"POST {node.intel_path}objects/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {TAXII}\r\nContent-Type: {TAXII}\r\n"
        f"Authorization: {_basic(*AUTH)}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:20])  # and the rest never comes
    _expect_408_within_deadline(sock)
    assert _fp(node) == before


# -- found by the fuzz test ------------------------------------------------------------------------


def test_head_is_served_like_get_without_a_body(node):
    # medallion's views returned nothing for HEAD on objects/ and objects/<id>/ (a 500)
    listing = requests.get(node.intel + "objects/", headers={"Accept": TAXII}, auth=AUTH, timeout=10).json()
    oid = listing["objects"][0]["id"]
    for url in (node.intel + "objects/", node.intel + f"objects/{oid}/", node.intel + f"objects/{oid}/versions/", node.intel + "manifest/"):
        resp = requests.head(url, headers={"Accept": TAXII}, auth=AUTH, timeout=10)
        assert resp.status_code == 200, url
        assert resp.content == b""


def test_non_ascii_basic_token_is_401_not_500(node):
    # werkzeug raises ValueError (not binascii.Error) decoding it
    for value in ("Basic \x80", "BASIC YW\xe9", "Basic \xff\xfe"):
        ans = raw_request(node.port, "GET", "/taxii2/", headers={"Accept": TAXII, "Authorization": value})
        assert_taxii_error(ans.status, ans.headers, ans.body, 401)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /us/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo\r\nContent-Length: 2\r\n\r\n{}",  # gunicorn: 501
        b"GET /taxii2/ HTTP/1.1\r\nHost: x\r\nSCRIPT_NAME: /foo\r\n\r\n",  # gunicorn: 500
        b"GET /taxii2/ HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 10_000 + b"\r\n\r\n",
        b"GET /taxii2/ HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /taxii2/ HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /taxii2/ HTTP/1.1\nHost: x\n\n",
    ],
    ids=["unknown-transfer-coding", "script-name", "huge-header", "many-headers", "long-request-line", "nul-in-header",
         "http2-version", "h2-preface", "bare-lf"],
)
def test_requests_the_http_parser_refuses_get_a_4xx_taxii_body(node, head):
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    sock.sendall(head)
    data = read_response(sock, 10)
    sock.close()
    status_line, _, rest = data.partition(b"\r\n")
    status = int(status_line.split()[1])
    assert 400 <= status < 500, data[:300]
    headers_raw, _, body = rest.partition(b"\r\n\r\n")
    assert b"application/taxii+json" in headers_raw
    assert orjson.loads(body)["http_status"] == str(status)


# -- slow clients over TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory):
    from exchange.node.pki import init_pki

    tmp: Path = tmp_path_factory.mktemp("hostile-tls")
    pki = tmp / "pki"
    init_pki(pki, ("us",), days=2)
    data = tmp / "data"
    provision("us", data)
    proc = NodeProcess(
        "us", data, extra_args=("--certfile", str(pki / "us.crt"), "--keyfile", str(pki / "us.key"), "--request-timeout", str(REQUEST_TIMEOUT))
    ).start()
    proc.port = urllib.parse.urlsplit(proc.url).port
    proc.ca = str(pki / "ca.crt")  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()


def test_stalled_tls_handshake_is_cut_at_the_deadline(tls_node):
    sock = socket.create_connection(("127.0.0.1", tls_node.port), timeout=10)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, and no more
    started = time.monotonic()
    resp = requests.get(tls_node.base + "taxii2/", headers={"Accept": TAXII}, auth=AUTH, verify=tls_node.ca, timeout=10)
    assert resp.status_code == 200  # others are served meanwhile
    data = read_response(sock, REQUEST_TIMEOUT + 5)  # until the server closes it
    elapsed = time.monotonic() - started
    sock.close()
    assert not data.startswith(b"\x16\x03")  # no ServerHello: the handshake never completed
    assert elapsed < REQUEST_TIMEOUT + 2.5


def test_slow_request_head_over_tls_is_408(tls_node):
    import ssl

    ctx = ssl.create_default_context(cafile=tls_node.ca)
    raw = socket.create_connection(("127.0.0.1", tls_node.port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(b"GET /taxii2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and the rest never comes
    _expect_408_within_deadline(sock)


def test_idle_tls_connections_do_not_hold_threads(tls_node):
    # more connections that never send a byte than the worker has threads (4)
    idle = [socket.create_connection(("127.0.0.1", tls_node.port), timeout=10) for _ in range(8)]
    try:
        time.sleep(0.3)
        t = time.monotonic()
        resp = requests.get(tls_node.base + "taxii2/", headers={"Accept": TAXII}, auth=AUTH, verify=tls_node.ca, timeout=10)
        assert resp.status_code == 200
        assert time.monotonic() - t < 1.5
    finally:
        for sock in idle:
            sock.close()


def _expect_408_within_deadline(sock) -> None:
    """The server answers a request that never completes with a 408 TAXII body, soon after the deadline."""
    started = time.monotonic()
    data = read_response(sock, REQUEST_TIMEOUT + 5)
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data[:300]
    assert orjson.loads(body)["http_status"] == "408"
    assert time.monotonic() - started < REQUEST_TIMEOUT + 2


def test_a_nul_in_the_account_name_is_refused_not_a_crash(node):
    """PostgreSQL text cannot hold NUL: such a name is looked up and counted with it replaced."""
    for _ in range(2):
        resp = requests.get(node.base + "taxii2/", headers={"Accept": TAXII}, auth=("jp\x00admin", "x"), timeout=10)
        _taxii_error(resp, 401)
