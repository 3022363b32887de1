"""Transport hardening (issue 18): real node processes on 127.0.0.1, over plain HTTP and over (mutual) TLS.

A. a body over ``max_content_length`` gets the 413 TAXII error body, with requests and taxii2-client,
   and no ``100 Continue`` goes out before a refusal already decided from the head;
B. credentials and write grants are checked from the head: an unauthenticated or unauthorised POST is
   answered 401/403 without its body being read, and its connection closed; unauthenticated tricklers
   do not delay a partner's requests;
C. workers exit when their master is killed; a port in use is one line on stderr and exit 1.

Every attack goes to loopback only, is bounded in connections and time, and stops with its test.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import orjson
import pytest
import requests

from tests.conftest import PASSWORDS, NodeProcess, new_indicator, provision
from tests.integration.hostile import TAXII, assert_taxii_error

ANALYST = ("analyst", PASSWORDS["analyst"])
LIMIT = 10 * 1024 * 1024  # collections/us/node.yaml: api_root.max_content_length


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- nodes ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    from exchange.node.pki import init_pki

    path = tmp_path_factory.mktemp("transport-pki")
    init_pki(path, ("us",), days=2)
    return path


@pytest.fixture(scope="module", params=["http", "https"])
def node(request, tmp_path_factory, pki) -> NodeProcess:
    """The us node with its default limits and request timeout (30 s: no deadline comes to the rescue here)."""
    from exchange.demo.run import tls_args

    tmp: Path = tmp_path_factory.mktemp(f"transport-{request.param}")
    data = tmp / "data"
    provision("us", data)
    tls = request.param == "https"
    proc = NodeProcess("us", data, extra_args=tls_args(pki, "us") if tls else ()).start()
    proc.tls = tls  # type: ignore[attr-defined]
    proc.ca = str(pki / "ca.crt")  # type: ignore[attr-defined]
    proc.pki = pki  # type: ignore[attr-defined]
    proc.port = urllib.parse.urlsplit(proc.url).port
    proc.intel = proc.collection_url("us-intel")  # type: ignore[attr-defined]
    proc.inbox = proc.collection_url("rok-inbox")  # type: ignore[attr-defined]
    proc.jp_read = proc.collection_url("jp-read")  # type: ignore[attr-defined]
    proc.rok_read = proc.collection_url("rok-read")  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()


def _client(node, account: str) -> dict:
    """``requests`` keyword arguments for ``account``: its client certificate under mutual TLS, else its password."""
    if not node.tls:
        return {"auth": (account, PASSWORDS[account])}
    kwargs: dict = {"verify": node.ca}
    if account in ("rok", "jp"):  # accounts with a certificate_subject must present their certificate
        kwargs["cert"] = (str(node.pki / f"{account}@us.crt"), str(node.pki / f"{account}@us.key"))
    else:
        kwargs["auth"] = (account, PASSWORDS[account])
    return kwargs


def _connect(node, account: str | None = None, timeout: float = 10) -> socket.socket:
    """A raw connection (TLS-wrapped on the https node, with ``account``'s client certificate if it has one)."""
    raw = socket.create_connection(("127.0.0.1", node.port), timeout=timeout)
    if not node.tls:
        return raw
    ctx = ssl.create_default_context(cafile=node.ca)
    if account in ("rok", "jp"):
        ctx.load_cert_chain(str(node.pki / f"{account}@us.crt"), str(node.pki / f"{account}@us.key"))
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float | None]:
    """Everything received until the server closes (``(data, seconds until closed)``) or ``timeout`` (``(data, None)``)."""
    started = time.monotonic()
    data = b""
    while True:
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            return data, None
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, None
        except (ConnectionResetError, ssl.SSLError, OSError):
            return data, time.monotonic() - started
        if not chunk:
            return data, time.monotonic() - started
        data += chunk


def _split(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _head(node, path: str, *, length: int | None = None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nAccept: {TAXII}\r\nContent-Type: {TAXII}\r\n{framing}{extra}\r\n"
    ).encode()


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path


# -- A. the 413 reaches Python clients -------------------------------------------------------------


def _big_envelope(size: int) -> dict:
    """An envelope of valid indicators whose JSON is about ``size`` bytes."""
    per = 512 * 1024
    return {"objects": [new_indicator(i, description="x" * per) for i in range(size // per + 1)]}


def test_body_over_the_limit_gets_the_413_error_body_with_requests(node):
    body = orjson.dumps(_big_envelope(LIMIT + 4 * 1024 * 1024))
    assert len(body) > LIMIT
    for _ in range(3):  # not a lucky race: every time
        resp = requests.post(
            node.intel + "objects/", data=body, headers={"Accept": TAXII, "Content-Type": TAXII}, timeout=30, **_client(node, "analyst")
        )
        doc = assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 413)
        assert "exceeds" in doc["description"] or "max" in doc["description"].lower()


def test_taxii2client_add_objects_over_the_limit_raises_http_error_413(node):
    from taxii2client.v21 import Collection

    kwargs = _client(node, "analyst")
    coll = Collection(node.intel, user=kwargs["auth"][0], password=kwargs["auth"][1], verify=kwargs.get("verify", True))
    coll._conn.session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify= (psf/requests#3829)
    envelope = _big_envelope(LIMIT + 1024 * 1024)
    with pytest.raises(requests.HTTPError) as caught:
        coll.add_objects(envelope)
    resp = caught.value.response
    assert resp is not None and resp.status_code == 413
    assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 413)


@pytest.mark.parametrize("case", ["over-limit", "no-credentials"])
def test_no_100_continue_before_a_refusal_decided_from_the_head(node, case):
    auth = "" if case == "no-credentials" else f"Authorization: {_basic(*ANALYST)}\r\n"
    expected = 401 if case == "no-credentials" else 413
    length = LIMIT + 1 if case == "over-limit" else 1000
    sock = _connect(node)
    try:
        sock.sendall(_head(node, _path(node.intel) + "objects/", length=length, extra=auth + "Expect: 100-continue\r\n"))
        data, closed = _read_until_closed(sock, 5)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 %d" % expected), data[:200]  # not "HTTP/1.1 100 Continue" first
    assert_taxii_error(*_split(data), expected)
    assert closed is not None  # and the unread body's connection is closed


def test_100_continue_is_sent_when_the_body_is_wanted(node):
    body = orjson.dumps({"objects": [new_indicator(1)]})
    sock = _connect(node)
    try:
        extra = f"Authorization: {_basic(*ANALYST)}\r\nExpect: 100-continue\r\n"
        sock.sendall(_head(node, _path(node.intel) + "objects/", length=len(body), extra=extra))
        sock.settimeout(5)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), first[:200]
        sock.sendall(body)
        data = first[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(_split(data)[1].get("Content-Length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    status, _headers, payload = _split(data)
    assert status == 202, data[:300]
    assert orjson.loads(payload)["success_count"] == 1


# -- B. authentication before the body --------------------------------------------------------------


@pytest.mark.parametrize("case", ["no-credentials", "wrong-password-chunked", "no-write-grant"])
def test_refused_post_is_answered_from_the_head_without_reading_the_body(node, case):
    path = _path(node.intel) + "objects/"
    account, auth, length, expected = None, "", 100_000, 401
    if case == "wrong-password-chunked":
        auth, length = f"Authorization: {_basic('analyst', 'not-the-password')}\r\n", None
    elif case == "no-write-grant":  # jp may read jp-read, not write it
        account, expected, path = "jp", 403, _path(node.jp_read) + "objects/"
        auth = "" if node.tls else f"Authorization: {_basic('jp', PASSWORDS['jp'])}\r\n"
    sock = _connect(node, account)
    try:
        started = time.monotonic()
        sock.sendall(_head(node, path, length=length, extra=auth))  # and the body never comes
        data, closed = _read_until_closed(sock, 5)
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    assert data, "no answer"
    assert_taxii_error(*_split(data), expected)
    assert closed is not None and elapsed < 1.5, f"connection closed after {closed} s"  # not kept waiting for a body


def _trickler(node, kind: str, stop: threading.Event, stats: dict) -> None:
    """One unauthenticated client trickling a byte a second; reconnects whenever the server closes on it."""
    intel = _path(node.intel) + "objects/"
    while not stop.is_set():
        try:
            sock = _connect(node, timeout=5)
        except OSError:
            stop.wait(0.2)
            continue
        try:
            if kind == "body":
                sock.sendall(_head(node, intel, length=100_000))
            elif kind == "chunked":
                sock.sendall(_head(node, intel, extra=f"Authorization: {_basic('analyst', 'guessed-password')}\r\n") + b"186a0\r\n")
            else:  # head: never completes its header fields
                sock.sendall(f"POST {intel} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
            stats["connections"] += 1
            while not stop.wait(1.0):
                sock.sendall(b"x" if kind != "head" else b"X")
        except OSError:
            pass
        finally:
            sock.close()


def test_partner_latency_stays_under_a_second_under_sixteen_unauthenticated_tricklers(node):
    log_before = len(node.log)
    stop = threading.Event()
    stats = {"connections": 0}
    kinds = ["body", "chunked", "head", "body"]
    threads = [threading.Thread(target=_trickler, args=(node, kinds[i % 4], stop, stats), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    latencies: list[float] = []
    try:
        time.sleep(1.5)  # every trickler connected and sending
        for i in range(8):
            started = time.monotonic()
            if i % 4 == 3:  # a partner's push (rok into its inbox)
                resp = requests.post(
                    node.inbox + "objects/", data=orjson.dumps({"objects": [new_indicator(i)]}),
                    headers={"Accept": TAXII, "Content-Type": TAXII}, timeout=40, **_client(node, "rok"),
                )
                assert resp.status_code == 202, resp.text
            else:
                resp = requests.get(node.rok_read + "objects/", headers={"Accept": TAXII}, timeout=40, **_client(node, "rok"))
                assert resp.status_code == 200, resp.text
            latencies.append(time.monotonic() - started)
            time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    print(f"partner latencies over {'https' if node.tls else 'http'} under 16 tricklers: "
          f"{', '.join(f'{x:.3f}' for x in latencies)} s; {stats['connections']} trickler connections")
    assert stats["connections"] >= 16
    assert max(latencies) < 1.0, latencies
    assert "Traceback" not in "".join(node.log[log_before:]), "".join(node.log[log_before:])[-3000:]


_FLOOD = """
import socket, sys, time
port, path, count, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
head = f"GET {path} HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n".encode()
socks, opened, closed, ready, end = [None] * count, 0, 0, False, time.monotonic() + seconds
while time.monotonic() < end:
    for i, sock in enumerate(socks):
        try:
            if sock is None:
                sock = socks[i] = socket.create_connection(("127.0.0.1", port), timeout=2)
                sock.sendall(head)
                opened += 1
            else:
                sock.sendall(b"X")  # one more byte of a header that never ends
        except OSError:
            if sock is not None:
                sock.close()
                closed += 1
            socks[i] = None
    if opened >= count and not ready:
        print("ready", flush=True)
        ready = True
    time.sleep(0.5)
"""


@pytest.mark.parametrize("node", ["http"], indirect=True)  # the bound is the same over TLS; 1,100 handshakes would dominate
def test_strangers_cannot_take_every_connection_slot(node):
    """More unauthenticated connections trickling their heads than a worker takes (worker_connections, 1000):
    the oldest are closed, partners still connect and are served at once."""
    log_before = len(node.log)
    warm = requests.get(node.rok_read + "objects/", headers={"Accept": TAXII}, timeout=10, **_client(node, "rok"))
    assert warm.status_code == 200  # the partner logged in before (its password's hash check is cached)
    flood = subprocess.Popen(  # another process: its loop must not compete with the partner's for this one's interpreter lock
        [sys.executable, "-c", _FLOOD, str(node.port), _path(node.rok_read) + "objects/", "1100", "12"],
        stdout=subprocess.PIPE, text=True,
    )
    latencies: list[float] = []
    try:
        assert flood.stdout is not None
        assert flood.stdout.readline().strip() == "ready"  # 1,100 connections opened
        for _ in range(5):
            started = time.monotonic()
            resp = requests.get(node.rok_read + "objects/", headers={"Accept": TAXII}, timeout=40, **_client(node, "rok"))
            assert resp.status_code == 200, resp.text
            latencies.append(time.monotonic() - started)
            time.sleep(0.3)
    finally:
        flood.kill()
        flood.communicate(timeout=20)
    print(f"partner latencies with 1,100 trickling strangers: {', '.join(f'{x:.3f}' for x in latencies)} s")
    assert max(latencies) < 1.0, latencies
    assert "Traceback" not in "".join(node.log[log_before:]), "".join(node.log[log_before:])[-3000:]


# -- C. the master's death, a port in use -----------------------------------------------------------


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie holds no socket


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers in Linux /proc")
def test_workers_exit_when_the_master_is_killed_and_the_port_is_free_again(tmp_path):
    data = tmp_path / "data"
    provision("us", data)
    first = NodeProcess("us", data, extra_args=("--workers", "2")).start()
    first.port = urllib.parse.urlsplit(first.url).port
    workers: list[int] = []
    busy: list[socket.socket] = []
    sessions = [requests.Session() for _ in range(2)]
    second = None
    try:
        for session in sessions:  # idle keep-alive connections
            assert session.get(first.base + "taxii2/", headers={"Accept": TAXII}, auth=ANALYST, timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while len(workers) < 2 and time.monotonic() < deadline:  # the master prints its URL before forking them
            workers = _children(first.proc.pid)
            time.sleep(0.05)
        assert len(workers) == 2
        # requests in flight: authenticated clients trickling their bodies (gunicorn waited 10 s for those)
        head = _head(first, _path(first.collection_url("us-intel")) + "objects/", length=1000, extra=f"Authorization: {_basic(*ANALYST)}\r\n")
        for _ in range(2):
            busy.append(socket.create_connection(("127.0.0.1", first.port), timeout=10))
            busy[-1].sendall(head + b"{")
        time.sleep(0.3)
        os.kill(first.proc.pid, signal.SIGKILL)  # the master only
        first.proc.wait(timeout=10)
        killed = time.monotonic()
        while any(_alive(w) for w in workers) and time.monotonic() < killed + 2.0:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "an orphaned worker is still running"
        second = NodeProcess("us", data, port=first.port).start(timeout=30)  # at once: the port is free
        assert requests.get(second.base + "taxii2/", headers={"Accept": TAXII}, auth=ANALYST, timeout=10).status_code == 200
    finally:
        for sock in busy:
            sock.close()
        for session in sessions:
            session.close()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        first.kill9()
        if second is not None:
            second.stop()


def test_serve_on_a_port_in_use_exits_1_with_one_line_on_stderr(tmp_path):
    data = tmp_path / "data"
    provision("us", data)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "exchange", "serve", "us", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
    finally:
        holder.close()
    assert out.returncode == 1, (out.returncode, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert "in use" in lines[0] and str(port) in lines[0], lines[0]
    assert out.stdout == ""
