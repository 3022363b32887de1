#!/usr/bin/env python3
"""A cti-exchange node on PostgreSQL at 1,000,000 objects: pull and push with 1 and 4 workers (issue 8).

Not a test: it creates a fresh PostgreSQL database, loads N indicators in
process, starts real servers (``cti-exchange serve --database URL --workers W``)
on 127.0.0.1 and drives them with ``taxii2-client``.  Prints a table (and
optionally JSON); method and figures are in ``bench/README.md``.

    python bench/pg_bench.py                 # N = 1,000,000 (~15 min on 2 cores)
    python bench/pg_bench.py --quick         # N = 100,000
    python bench/pg_bench.py --n 300000 --push-n 20000 --json out.json

Needs a PostgreSQL server reachable at --pg (default: the unix socket in
/var/run/postgresql as the current OS user, who must be allowed to create
databases).  The database is dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import node_bench as nb  # noqa: E402  (indicators, client, RSS sampler, medallion launcher)
import psutil  # noqa: E402
from taxii2client.v21 import as_pages  # noqa: E402

REPO = nb.REPO
PAGE = 1000
TARGET_LAST_PAGE_FACTOR = 2.0
TARGET_PULL_SCALE = 1.5
TARGET_RSS_WORKER_MB = 250.0


# ---------------------------------------------------------------------------------------------
# database and data


def psql(pg_host: str, sql: str, db: str = "postgres", timeout: float = 600) -> str:
    done = subprocess.run(
        ["psql", "-h", pg_host, "-d", db, "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
        capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {done.stderr.strip()}")
    return done.stdout


def db_url(pg_host: str, db: str) -> str:
    return f"postgresql:///{db}?host={pg_host}"


def chunks_of_indicators(n: int, batch: int, seed: int):
    """``n`` fresh indicators in lists of ``batch`` (generated per batch: 1M dicts at once would need GBs)."""
    done = 0
    k = 0
    while done < n:
        m = min(batch, n - done)
        yield nb.make_indicators(m, seed * 1_000_003 + k)
        done += m
        k += 1


@dataclass
class Setup:
    n: int
    load_s: float = 0.0
    load_per_s: float = 0.0
    analyze_s: float = 0.0
    db_size_mb: float = 0.0
    collections: dict = field(default_factory=dict)  # alias -> (id, count)


def setup_database(url: str, pg_host: str, db: str, n: int, batch: int, small: dict[str, int], seed: int, analyze: bool) -> Setup:
    """Provision node ``us`` in the database, load ``n`` into us-intel and the small collections, then
    move the release bookmarks to the end so the servers' background releaser has nothing to catch up on."""

    from exchange.node.ops import add_account, open_node

    res = Setup(n=n)
    opened = open_node("us", database=url)
    add_account(opened, nb.USER, nb.PASSWORD, [], [])  # password only: the analyst's grants come from node.yaml
    cfg = opened.node.config
    own = cfg.own_collection.id
    store = opened.store
    t0 = time.perf_counter()
    loaded = 0
    for objs in chunks_of_indicators(n, batch, seed):
        store.add_objects(own, objs)
        loaded += len(objs)
        if loaded % 100_000 < batch:
            el = time.perf_counter() - t0
            print(f"   loaded {loaded:,} ({loaded / el:,.0f}/s)", flush=True)
    res.load_s = time.perf_counter() - t0
    res.load_per_s = n / res.load_s
    res.collections["us-intel"] = (own, n)
    for alias, count in small.items():
        cid = cfg.collection(alias).id
        for objs in chunks_of_indicators(count, batch, seed + 7 + count):
            store.add_objects(cid, objs)
        res.collections[alias] = (cid, count)
    # release bookmarks at the end of every source: objects loaded in process are not for partners here
    ends = {}
    for src in [cfg.own_collection] + [c for c in cfg.collections if c.role == "partner-inbox"]:
        row = store.last_key(src.id)
        if row is not None:
            ends[src] = [row[0], row[1]]
    with store.transaction() as conn:
        for src, end in ends.items():
            for p in cfg.partners:
                if src.role == "partner-inbox" and src.partner == p:
                    continue
                store.set_state(conn, f"release:{p}:{src.id}", json.dumps(end))
    opened.store.close()
    if analyze:
        t0 = time.perf_counter()
        psql(pg_host, "VACUUM ANALYZE objects", db=db, timeout=1800)
        res.analyze_s = time.perf_counter() - t0
    res.db_size_mb = int(psql(pg_host, f"SELECT pg_database_size('{db}')").strip()) / 2**20
    return res


# ---------------------------------------------------------------------------------------------
# server and RSS


class ProcRss:
    """Peak RSS per process of the server tree (gunicorn master = root, workers = children), and tree sum."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak: dict[int, int] = {}
        self.peak_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return []

    def sample(self) -> None:
        total = 0
        for p in self.procs():
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
        self.peak_tree = max(self.peak_tree, total)

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> ProcRss:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
        workers = {pid: v for pid, v in self.peak.items() if pid != self.root.pid}
        return {
            "master_mb": self.peak.get(self.root.pid, 0) / 2**20,
            "worker_peak_mb": max(workers.values(), default=0) / 2**20,
            "workers_mb": sorted(round(v / 2**20, 1) for v in workers.values()),
            "tree_peak_mb": self.peak_tree / 2**20,
        }


def start_server(workers: int, url: str, tmp: Path, threads: int | None):
    from exchange.demo.procs import NodeProcess

    extra = ("--database", url, "--workers", str(workers))
    if threads:
        extra += ("--threads", str(threads))
    srv = NodeProcess("us", tmp, extra_args=extra).start(timeout=120)
    nb._wait_http(srv.url, time.monotonic() + 60)
    return srv


def wait_idle(rss: ProcRss, budget: float, quiet: float = 0.05) -> float:
    """Seconds until the server tree uses < ``quiet`` CPU-seconds per second (background release done)."""
    t0 = time.monotonic()
    last = rss.cpu_seconds()
    while time.monotonic() - t0 < budget:
        time.sleep(1.0)
        now = rss.cpu_seconds()
        if now - last < quiet:
            return time.monotonic() - t0 - 1.0
        last = now
    return float("nan")


# ---------------------------------------------------------------------------------------------
# client work (walks and pushes also run in child processes: the client side is CPU-bound)


def walk(coll, limit: int | None = None) -> tuple[list[dict], int, float]:
    """Timed ``as_pages`` walk; per page: next token, first id, count.  Returns (pages, objects, seconds)."""
    pages: list[dict] = []
    total = 0
    t0 = time.perf_counter()
    for env in as_pages(coll.get_objects, per_request=PAGE):
        objs = env.get("objects", [])
        total += len(objs)
        pages.append({"next": env.get("next"), "count": len(objs), "first": objs[0]["id"] if objs else None})
        if limit is not None and total >= limit:
            break
    return pages, total, time.perf_counter() - t0


def _walk_range(url: str, token: str | None, npages: int, start_at: float, timeout: float) -> dict:
    coll = nb.client_collection(url, timeout=timeout)
    coll.get_objects(limit=1)  # warm the connection (untimed)
    return _timed_walk(lambda tok: coll.get_objects(limit=PAGE, next=tok) if tok else coll.get_objects(limit=PAGE), token, npages, start_at)


def _parsed_page(env: dict) -> tuple[int, list[str] | None, str | None, str | None]:
    """An envelope parsed whole: its object count, ids, first id, and ``next`` if ``more``."""
    ids = [o["id"] for o in env.get("objects", [])]
    return len(ids), ids, ids[0] if ids else None, env.get("next") if env.get("more") else None


_NEXT = re.compile(rb'"next":"([^"]+)"')
_FIRST_ID = re.compile(rb'"id":"([^"]+)"')


def _counted_page(body: bytes) -> tuple[int, list[str] | None, str | None, str | None]:
    """An envelope's bytes, not parsed: objects counted by their ``spec_version`` members, the first
    id and ``next`` found by regex (our envelopes put ``more``/``next`` before ``objects``)."""
    m = _FIRST_ID.search(body, max(0, body.find(b'"objects"')))
    nxt = _NEXT.search(body, 0, 2000)
    return body.count(b'"spec_version"'), None, m.group(1).decode() if m else None, nxt.group(1).decode() if nxt else None


def _timed_walk(fetch, token: str | None, npages: int, start_at: float, page=_parsed_page) -> dict:
    """From ``start_at`` (wall clock), up to ``npages`` pages via ``fetch(next_token)``, read by
    ``page`` and following ``next``: objects, distinct ids (when ``page`` gives ids), the first id,
    wall span and this process's CPU seconds."""
    time.sleep(max(0.0, start_at - time.time()))
    t0, c0 = time.time(), time.process_time()
    total, first, seen, counted_only = 0, None, set(), False
    for _ in range(npages):
        count, ids, head, token = page(fetch(token))
        total += count
        first = first or head
        if ids is None:
            counted_only = True
        else:
            seen.update(ids)
        if not token:
            break
    distinct = total if counted_only else len(seen)
    return {"count": total, "distinct": distinct, "first": first, "t0": t0, "t1": time.time(), "cpu_s": time.process_time() - c0}


def _basic_auth() -> str:
    return "Basic " + base64.b64encode(f"{nb.USER}:{nb.PASSWORD}".encode()).decode()


def _objects_query(token: str | None) -> str:
    """The query string of one page of ``PAGE`` objects, after ``token``."""
    return f"limit={PAGE}" + (f"&next={quote(token, safe='')}" if token else "")


def _walk_raw(url: str, token: str | None, npages: int, start_at: float, timeout: float) -> dict:
    """The same range with a thin client: raw HTTP, no JSON parse (objects counted, token found by regex)."""
    import requests

    sess = requests.Session()
    sess.trust_env = False
    sess.auth = (nb.USER, nb.PASSWORD)
    sess.headers["Accept"] = nb.MEDIA_TAXII
    objects_url = url + "objects/"
    sess.get(objects_url, params={"limit": 1}, timeout=timeout).raise_for_status()

    def fetch(tok: str | None) -> bytes:
        r = sess.get(objects_url, params={"limit": PAGE, **({"next": tok} if tok else {})}, timeout=timeout)
        r.raise_for_status()
        return r.content

    return _timed_walk(fetch, token, npages, start_at, page=_counted_page)


def _walk_lean(url: str, token: str | None, npages: int, start_at: float, timeout: float) -> dict:
    """The same range with a lean TAXII 2.1 client: one keep-alive ``http.client`` connection, Basic
    auth, the TAXII media type checked, every envelope parsed whole with orjson, ``more``/``next``
    followed (TAXII 2.1 section 3.4) and every id collected.  Same work as the taxii2-client walk,
    without ``requests``' 8 KiB chunked body reads and simplejson's slower decoder."""
    import http.client

    import orjson

    parts = urlsplit(url)
    path = parts.path + "objects/"
    headers = {"Accept": nb.MEDIA_TAXII, "Authorization": _basic_auth()}
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def get(query: str) -> dict:
        conn.request("GET", f"{path}?{query}", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or not (resp.getheader("Content-Type") or "").startswith("application/taxii+json"):
            raise RuntimeError(f"GET {path}?{query}: HTTP {resp.status} {body[:200]!r}")
        return orjson.loads(body)

    get("limit=1")  # warm the connection (untimed)
    try:
        return _timed_walk(lambda tok: get(_objects_query(tok)), token, npages, start_at)
    finally:
        conn.close()


def _walk_socket(url: str, token: str | None, npages: int, start_at: float, timeout: float) -> dict:
    """The same range with a load-generator client: one keep-alive socket, the request written as
    bytes, the body read with ``recv_into`` straight into one buffer, no JSON parse (objects counted,
    ``next`` found by regex in the envelope's head).  It spends the least CPU per object of the
    clients here, so the 4-worker figure shows most what the server can do on 2 shared cores."""
    import socket

    parts = urlsplit(url)
    path = parts.path + "objects/"
    head = (
        f"Host: {parts.hostname}:{parts.port}\r\nAccept: {nb.MEDIA_TAXII}\r\n"
        f"Authorization: {_basic_auth()}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    find_length = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")

    def get(query: str) -> bytes:
        nonlocal buf, view
        sock.sendall(f"GET {path}?{query} HTTP/1.1\r\n".encode() + head)
        got = 0
        while (end := buf.find(b"\r\n\r\n", 0, got)) < 0:
            n = sock.recv_into(view[got:])
            if not n:
                raise RuntimeError(f"GET {path}?{query}: connection closed")
            got += n
        status = bytes(buf[9:12])
        m = find_length.search(buf, 0, end + 2)
        if status != b"200" or m is None or b"application/taxii+json" not in buf[:end]:
            raise RuntimeError(f"GET {path}?{query}: {bytes(buf[:min(end, 300)])!r}")
        total = end + 4 + int(m.group(1))
        if total > len(buf):
            buf = buf + bytearray(total - len(buf))
            view = memoryview(buf)
        while got < total:
            n = sock.recv_into(view[got:total])
            if not n:
                raise RuntimeError(f"GET {path}?{query}: connection closed in the body")
            got += n
        return bytes(view[end + 4 : total])

    get("limit=1")  # warm the connection (untimed)
    try:
        return _timed_walk(lambda tok: get(_objects_query(tok)), token, npages, start_at, page=_counted_page)
    finally:
        sock.close()


# the 4-client pull is run with each kind of client.  The issue-8 target (4 workers >= 1.5x 1 worker)
# is read on "socket": the clients share the machine's 2 cores with the server and PostgreSQL, so the
# more CPU a client spends per object, the less of the machine is left for the 4 workers to use and
# the more the ratio measures the clients instead of the server; the other kinds are reported beside it.
TARGET_CLIENT = "socket"
CLIENTS = {
    "lean": (_walk_lean, "lean TAXII clients (http.client keep-alive, orjson)"),
    "taxii2-client": (_walk_range, "taxii2-client"),
    "thin": (_walk_raw, "thin clients (raw HTTP, no JSON parse)"),
    "socket": (_walk_socket, "load-generator clients (raw socket, no JSON parse)"),
}


def _push_range(url: str, n: int, seed: int, envelope: int, start_at: float, timeout: float) -> dict:
    coll = nb.client_collection(url, timeout=timeout)
    objs = nb.make_indicators(n, seed)
    coll.get_objects(limit=1)
    time.sleep(max(0.0, start_at - time.time()))
    t0, c0 = time.time(), time.process_time()
    ok = 0
    each = []
    for i in range(0, n, envelope):
        t1 = time.time()
        st = coll.add_objects({"objects": objs[i : i + envelope]}, wait_for_completion=True, poll_interval=1, timeout=120)
        each.append(time.time() - t1)
        ok += st.success_count or 0
    return {"count": n, "ok": ok, "t0": t0, "t1": time.time(), "envelope_s": each, "cpu_s": time.process_time() - c0}


def cpu_snapshot(rss: ProcRss) -> dict:
    """CPU seconds so far: the server tree, all PostgreSQL processes, the whole machine (busy)."""
    pg = 0.0
    for p in psutil.process_iter(["name"]):
        try:
            if (p.info["name"] or "").startswith("postgres"):
                t = p.cpu_times()
                pg += t.user + t.system
        except psutil.Error:
            pass
    m = psutil.cpu_times()
    busy = sum(m) - m.idle - getattr(m, "iowait", 0.0)
    return {"server": rss.cpu_seconds(), "postgres": pg, "machine": busy, "wall": time.monotonic()}


def cpu_split(before: dict, after: dict, clients_cpu: float) -> dict:
    """Cores used during a phase (CPU seconds / wall seconds), by who."""
    wall = after["wall"] - before["wall"]
    d = {k: (after[k] - before[k]) / wall for k in ("server", "postgres", "machine")}
    d["clients"] = clients_cpu / wall
    d["other"] = d["machine"] - d["server"] - d["postgres"] - d["clients"]
    return {k: round(v, 2) for k, v in d.items()}


def run_parallel(fn, argsets: list[tuple], lead: float, rss: ProcRss) -> tuple[list[dict], float, float, dict]:
    """Run ``fn(*args, start_at)`` in one spawned process each; all start at the same wall time.

    Returns the results, the common start and the last end (wall clock), and the CPU split of that window.
    """
    ctx = mp.get_context("spawn")
    start_at = time.time() + lead
    with ctx.Pool(len(argsets)) as pool:
        asyncs = [pool.apply_async(fn, (*a[:-1], start_at, a[-1])) for a in argsets]
        time.sleep(max(0.0, start_at - time.time()))
        before = cpu_snapshot(rss)
        out = [r.get(timeout=3600) for r in asyncs]
        after = cpu_snapshot(rss)
    end = max(o["t1"] for o in out)
    return out, start_at, end, cpu_split(before, after, sum(o["cpu_s"] for o in out))


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class ServerRun:
    workers: int
    pull_1c_per_s: float | None = None
    pull_1c_s: float | None = None
    pull_1c_objects: int | None = None
    pull_4c: dict = field(default_factory=dict)  # client kind -> {"per_s": median, "reps": [...], "clients": [...]}
    cpu: dict = field(default_factory=dict)  # phase -> cores used by server tree / postgres / clients / other
    last_page_big_s: float | None = None
    last_page_big_all: list = field(default_factory=list)
    last_page_1k_s: float | None = None
    last_page_1k_all: list = field(default_factory=list)
    last_page_2k_next_s: float | None = None
    pull_2k_per_s: float | None = None
    push_1p_per_s: float | None = None
    push_4p_per_s: float | None = None
    push_1p_release_drain_s: float | None = None
    push_4p_release_drain_s: float | None = None
    push_envelope_median_s: dict = field(default_factory=dict)
    rss: dict = field(default_factory=dict)
    loadavg_before: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def timed_reps(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _single_client_phases(run: ServerRun, srv, rss: ProcRss, args, setup: Setup) -> list[dict]:
    """1-client walk of the whole collection, last-page latencies, the 2k walks.  Returns the walk's pages."""
    workers = run.workers
    big = srv.collection_url("us-intel")
    coll = nb.client_collection(big, timeout=args.timeout)
    n = setup.collections["us-intel"][1]
    print(f"   [{workers}w] pull, 1 client, {n:,} objects ...", flush=True)
    before, c0 = cpu_snapshot(rss), time.process_time()
    pages, total, secs = walk(coll)
    run.cpu["pull_1c"] = cpu_split(before, cpu_snapshot(rss), time.process_time() - c0)
    run.pull_1c_objects, run.pull_1c_s, run.pull_1c_per_s = total, secs, total / secs
    if total != n:
        run.notes.append(f"1-client walk got {total:,}, expected {n:,}")
    print(f"      {total / secs:,.0f} obj/s ({secs:.1f} s)", flush=True)
    # last page at N: the next token of the second-to-last page, reused
    tok = pages[-2]["next"]
    got: list[dict] = []
    run.last_page_big_all = timed_reps(lambda: got.append(coll.get_objects(limit=PAGE, next=tok)), args.reps)
    run.last_page_big_s = statistics.median(run.last_page_big_all)
    last = got[-1].get("objects", [])
    if len(last) != pages[-1]["count"] or last[0]["id"] != pages[-1]["first"] or got[-1].get("more"):
        run.notes.append("last page at N: unexpected content")
    # last page at 1k: the only page of rok-inbox (1,000 objects): a plain first request
    small = nb.client_collection(srv.collection_url("rok-inbox"), timeout=args.timeout)
    got1k: list[dict] = []
    run.last_page_1k_all = timed_reps(lambda: got1k.append(small.get_objects(limit=PAGE)), args.reps)
    run.last_page_1k_s = statistics.median(run.last_page_1k_all)
    if len(got1k[-1].get("objects", [])) != setup.collections["rok-inbox"][1] or got1k[-1].get("more"):
        run.notes.append("last page at 1k: unexpected content")
    # 2k (jp-read): pull rate at small N (for the medallion ratio), and a last page by next token
    c2k = nb.client_collection(srv.collection_url("jp-read"), timeout=args.timeout)
    rates = []
    for _ in range(3):
        p2, t2, s2 = walk(c2k)
        rates.append(t2 / s2)
    run.pull_2k_per_s = statistics.median(rates)
    tok2 = p2[-2]["next"]
    run.last_page_2k_next_s = statistics.median(timed_reps(lambda: c2k.get_objects(limit=PAGE, next=tok2), args.reps))
    return pages


def bench_pulls(args, url: str, tmp: Path, setup: Setup) -> dict[int, ServerRun]:
    """The pulls, with a 1-worker and a 4-worker server up at once on the same database.

    The single-client phases run on one server after the other.  The 4-client pulls are
    interleaved: each repetition runs every client kind against 1 worker, then 4 workers, so
    drift in the machine's speed (other jobs on shared cores) hits both sides of the ratio alike.
    The idle server meanwhile only polls for releases once a second.
    """
    runs: dict[int, ServerRun] = {}
    servers: dict[int, tuple] = {}
    try:
        for w in (1, 4):
            runs[w] = ServerRun(workers=w, loadavg_before=[round(x, 2) for x in os.getloadavg()])
            d = tmp / f"pull-{w}w"
            d.mkdir(parents=True, exist_ok=True)
            srv = start_server(w, url, d, args.threads)
            servers[w] = (srv, ProcRss(srv.proc.pid).start())
        time.sleep(1.0)
        pages: list[dict] = []
        for w, (srv, rss) in servers.items():
            pages = _single_client_phases(runs[w], srv, rss, args, setup)
        total = sum(p["count"] for p in pages)
        # 4 clients, disjoint quarters of the collection, each from a next token of the 1-client walk
        per = len(pages) // 4
        starts = [None] + [pages[i * per - 1]["next"] for i in (1, 2, 3)]
        npages = [per, per, per, len(pages) - 3 * per]
        print(f"   pull, 4 clients x ~{per * PAGE:,} objects: {args.pull_reps} rep(s), each client kind on 1 worker then 4 ...", flush=True)
        for rep in range(args.pull_reps):
            for kind in args.clients:
                fn = CLIENTS[kind][0]
                for w, (srv, rss) in servers.items():
                    big = srv.collection_url("us-intel")
                    out, t0, t1, cpu = run_parallel(fn, [(big, starts[i], npages[i], args.timeout) for i in range(4)], 2.0, rss)
                    total4 = sum(o["count"] for o in out)
                    entry = runs[w].pull_4c.setdefault(kind, {"reps": [], "cpu": [], "clients": []})
                    entry["reps"].append(total4 / (t1 - t0))
                    entry["cpu"].append(cpu)
                    entry["clients"].append([round(o["count"] / (o["t1"] - o["t0"])) for o in out])
                    for i, o in enumerate(out):
                        if o["distinct"] != o["count"] or (o["first"] is not None and o["first"] != pages[i * per]["first"]):
                            runs[w].notes.append(f"4 {kind} clients, rep {rep}: client {i} range mismatch")
                    if total4 != total:
                        runs[w].notes.append(f"4 {kind} clients, rep {rep}: got {total4:,} objects, expected {total:,}")
                    print(f"      [{w}w] {kind:>13}: {total4 / (t1 - t0):,.0f} obj/s aggregate ({t1 - t0:.1f} s); cores {cpu}", flush=True)
        for run in runs.values():
            for entry in run.pull_4c.values():
                entry["per_s"] = statistics.median(entry["reps"])
    finally:
        for w, (srv, rss) in servers.items():
            runs[w].rss = rss.stop()
            srv.stop()
    for kind in args.clients:
        r1, r4 = runs[1].pull_4c.get(kind), runs[4].pull_4c.get(kind)
        if r1 and r4:
            r4["paired_ratios"] = [round(b / a, 3) for a, b in zip(r1["reps"], r4["reps"], strict=True)]
    return runs


def bench_pushes(workers: int, args, url: str, tmp: Path, setup: Setup, push_seed: int) -> ServerRun:
    run = ServerRun(workers=workers, loadavg_before=[round(x, 2) for x in os.getloadavg()])
    d = tmp / f"push-{workers}w"
    d.mkdir(parents=True, exist_ok=True)
    srv = start_server(workers, url, d, args.threads)
    rss = ProcRss(srv.proc.pid).start()
    try:
        time.sleep(1.0)
        big = srv.collection_url("us-intel")
        for pushers, attr in ((1, "1p"), (4, "4p")):
            each = args.push_n // pushers
            print(f"   [{workers}w] push, {pushers} pusher(s) x {each:,} ...", flush=True)
            sets = [(big, each, push_seed + 100 * pushers + i, args.envelope, args.timeout) for i in range(pushers)]
            out, t0, t1, run.cpu[f"push_{attr}"] = run_parallel(_push_range, sets, 3.0 + 0.5 * pushers, rss)
            ok = sum(o["ok"] for o in out)
            rate = sum(o["count"] for o in out) / (t1 - t0)
            setattr(run, f"push_{attr}_per_s", rate)
            run.push_envelope_median_s[attr] = statistics.median([e for o in out for e in o["envelope_s"]])
            if ok != pushers * each:
                run.notes.append(f"push {attr}: {ok} of {pushers * each} successes")
            drain = wait_idle(rss, 900)
            setattr(run, f"push_{attr}_release_drain_s", drain)
            print(f"      {rate:,.0f} obj/s; background release busy {drain:.1f} s after the last envelope", flush=True)
    finally:
        run.rss = rss.stop()
        srv.stop()
    return run


def merge_pushes(run: ServerRun, pushed: ServerRun) -> None:
    """Fold a push-only server run into the pull run of the same worker count."""
    for k in ("push_1p_per_s", "push_4p_per_s", "push_1p_release_drain_s", "push_4p_release_drain_s"):
        setattr(run, k, getattr(pushed, k))
    run.push_envelope_median_s = pushed.push_envelope_median_s
    run.cpu.update(pushed.cpu)
    run.notes += pushed.notes
    for k in ("worker_peak_mb", "master_mb", "tree_peak_mb"):
        run.rss[k] = max(run.rss.get(k, 0), pushed.rss.get(k, 0))
    run.rss["workers_mb"] = sorted(run.rss.get("workers_mb", []) + pushed.rss.get("workers_mb", []))


def medallion_ref(n: int, args) -> nb.Result:
    ns = argparse.Namespace(envelope=500, page=PAGE, reps=args.reps, ref_timeout=args.ref_timeout, timeout=args.ref_timeout, keep=False)
    return nb.run_one("medallion", n, ns, nb.make_indicators(n, args.seed + 991))


# ---------------------------------------------------------------------------------------------
# report


def _p4(run: ServerRun, kind: str) -> float | None:
    return run.pull_4c.get(kind, {}).get("per_s")


def _f(v, fmt=",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def _ms(v) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"


def report(setup: Setup, runs: dict[int, ServerRun], ref: nb.Result | None, args) -> dict:
    n = setup.n
    r1, r4 = runs.get(1), runs.get(4)
    print(f"\nSetup: {n:,} indicators loaded in process at {setup.load_per_s:,.0f}/s ({setup.load_s:.1f} s), "
          f"VACUUM ANALYZE {setup.analyze_s:.1f} s, database {setup.db_size_mb:,.0f} MB")
    rows = [
        ("pull, 1 client (obj/s)", _f(r1.pull_1c_per_s), _f(r4.pull_1c_per_s)),
        *[(f"pull, 4 {label}, aggregate (obj/s, median of {args.pull_reps})", _f(_p4(r1, kind)), _f(_p4(r4, kind)))
          for kind, (_fn, label) in CLIENTS.items()],
        ("push, 1 pusher (obj/s)", _f(r1.push_1p_per_s), _f(r4.push_1p_per_s)),
        ("push, 4 pushers, aggregate (obj/s)", _f(r1.push_4p_per_s), _f(r4.push_4p_per_s)),
        ("  background release busy after push 1p/4p (s)",
         f"{_f(r1.push_1p_release_drain_s, '.1f')}/{_f(r1.push_4p_release_drain_s, '.1f')}",
         f"{_f(r4.push_1p_release_drain_s, '.1f')}/{_f(r4.push_4p_release_drain_s, '.1f')}"),
        (f"last page at {n:,} (next token, median of {args.reps})", _ms(r1.last_page_big_s), _ms(r4.last_page_big_s)),
        ("last page at 1,000 (only page, median)", _ms(r1.last_page_1k_s), _ms(r4.last_page_1k_s)),
        ("last page at 2,000 (next token, median)", _ms(r1.last_page_2k_next_s), _ms(r4.last_page_2k_next_s)),
        ("pull 2,000 (obj/s, median of 3)", _f(r1.pull_2k_per_s), _f(r4.pull_2k_per_s)),
        ("peak RSS per worker (MB)", _f(r1.rss.get("worker_peak_mb"), ".1f"), _f(r4.rss.get("worker_peak_mb"), ".1f")),
        ("peak RSS master (MB)", _f(r1.rss.get("master_mb"), ".1f"), _f(r4.rss.get("master_mb"), ".1f")),
        ("peak RSS tree, summed (MB)", _f(r1.rss.get("tree_peak_mb"), ".1f"), _f(r4.rss.get("tree_peak_mb"), ".1f")),
        ("load average before", "/".join(map(str, r1.loadavg_before)), "/".join(map(str, r4.loadavg_before))),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"\n| {'N = ' + format(n, ','):<{w}} | 1 worker | 4 workers |")
    print(f"|{'-' * (w + 2)}|----------|-----------|")
    for a, b, c in rows:
        print(f"| {a:<{w}} | {b:>8} | {c:>9} |")
    for k, r in runs.items():
        print(f"  {k} worker(s): per-worker peak RSS {r.rss.get('workers_mb')}")
        for kind, entry in r.pull_4c.items():
            print(f"    4 {kind} clients: aggregate per rep {[round(x) for x in entry['reps']]}; per client {entry['clients']}")
            mid = sorted(range(len(entry["reps"])), key=lambda i: entry["reps"][i])[len(entry["reps"]) // 2]
            print(f"      cores used (median rep): {entry['cpu'][mid]}")
            if "paired_ratios" in entry:
                print(f"      4w/1w per interleaved pair: {entry['paired_ratios']}")
        for phase, split in r.cpu.items():
            print(f"    cores used during {phase}: {split}")
        for note in r.notes:
            print(f"  NOTE {k}w: {note}")

    def div(a, b):
        return None if a is None or b is None or b == 0 else a / b

    ratios = {}
    if ref is not None:
        ratios = {
            "n": ref.n,
            "medallion_pull_per_s": ref.pull_per_s,
            "medallion_last_page_s": ref.last_page_s,
            "medallion_last_page_method": ref.last_page_method,
            "medallion_rss_mb": ref.rss_peak_mb,
            "pull_ours_over_medallion": div(r1.pull_2k_per_s, ref.pull_per_s),
            "last_page_ours_2k_over_medallion_2k": div(r1.last_page_2k_next_s, ref.last_page_s),
            "last_page_ours_1m_over_medallion_2k": div(r1.last_page_big_s, ref.last_page_s),
            "rss_worker_over_medallion": div(r1.rss.get("worker_peak_mb"), ref.rss_peak_mb),
            "rss_tree_1w_over_medallion": div(r1.rss.get("tree_peak_mb"), ref.rss_peak_mb),
            "notes": ref.notes,
        }
        print(f"\nReference: medallion 3.0.0 memory backend, N = {ref.n:,} (pushed in envelopes of 500, "
              f"push {_f(ref.push_per_s)}/s): pull {_f(ref.pull_per_s)}/s, last page {_ms(ref.last_page_s)} "
              f"({ref.last_page_method}), peak RSS {_f(ref.rss_peak_mb, '.1f')} MB")
        print(f"  ours (PostgreSQL, 1 worker) / medallion: pull 2k {_f(ratios['pull_ours_over_medallion'], '.0f')}x; "
              f"last page 2k {_f(ratios['last_page_ours_2k_over_medallion_2k'], '.4f')}; last page at {n:,} vs medallion at 2k "
              f"{_f(ratios['last_page_ours_1m_over_medallion_2k'], '.4f')}; RSS worker {_f(ratios['rss_worker_over_medallion'], '.2f')}x, "
              f"tree {_f(ratios['rss_tree_1w_over_medallion'], '.2f')}x")
        for note in ref.notes:
            print(f"  medallion note: {note}")

    targets = []
    lp = [div(r.last_page_big_s, r.last_page_1k_s) for r in (r1, r4)]
    targets.append({"target": f"last page at {n:,} <= {TARGET_LAST_PAGE_FACTOR:.0f}x last page at 1k", "value": lp,
                    "met": all(x is not None and x <= TARGET_LAST_PAGE_FACTOR for x in lp)})
    scale = {kind: div(_p4(r4, kind), _p4(r1, kind)) for kind in args.clients}
    paired = {k: statistics.median(r4.pull_4c[k]["paired_ratios"]) for k in args.clients if r4.pull_4c.get(k, {}).get("paired_ratios")}
    t = TARGET_CLIENT
    targets.append({"target": f"aggregate pull, 4 workers >= {TARGET_PULL_SCALE}x 1 worker (4 {t} clients on both)",
                    "value": scale.get(t), "also": {f"median of paired ratios, {t}": paired.get(t),
                                                    **{f"4 {k} clients": v for k, v in scale.items() if k != t},
                                                    **{f"median of paired ratios, {k}": v for k, v in paired.items() if k != t},
                                                    "4w with 4 lean clients over 1w with 1 taxii2-client": div(_p4(r4, "lean"), r1.pull_1c_per_s)},
                    "met": scale.get(t) is not None and scale[t] >= TARGET_PULL_SCALE})
    worst = max(r1.rss.get("worker_peak_mb", 0), r4.rss.get("worker_peak_mb", 0))
    targets.append({"target": f"RSS per worker < {TARGET_RSS_WORKER_MB:.0f} MB", "value": worst, "met": worst < TARGET_RSS_WORKER_MB})
    print("\nIssue 8 targets:")
    for t in targets:
        v = t["value"]
        vs = ", ".join(_f(x, ".2f") for x in v) if isinstance(v, list) else _f(v, ".2f")
        extra = "".join(f"; {k}: {_f(x, '.2f')}" for k, x in t.get("also", {}).items())
        print(f"  [{'MET' if t['met'] else 'MISSED':>6}] {t['target']}: {vs}{extra}")
    return {
        "command": " ".join(["bench/pg_bench.py"] + sys.argv[1:]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "head": nb._git("rev-parse", "HEAD").strip(),
        "uncommitted_in_exchange": [ln[3:] for ln in nb._git("status", "--porcelain", "--", "exchange").splitlines()],
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"n": n, "push_n": args.push_n, "envelope": args.envelope, "page": PAGE, "threads": args.threads, "reps": args.reps,
                     "pull_reps": args.pull_reps},
        "setup": asdict(setup),
        "runs": {k: asdict(v) for k, v in runs.items()},
        "medallion": asdict(ref) if ref is not None else None,
        "ratios": ratios,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="objects in us-intel (default 1,000,000)")
    p.add_argument("--quick", action="store_true", help="N = 100,000 and --push-n 10,000")
    p.add_argument("--push-n", type=int, default=50_000, help="objects pushed per push run (default 50,000)")
    p.add_argument("--envelope", type=int, default=1000, help="objects per add_objects envelope (default 1000)")
    p.add_argument("--load-batch", type=int, default=2000, help="objects per in-process add_objects (default 2000)")
    p.add_argument("--threads", type=int, help="threads per worker (default: serve's default)")
    p.add_argument("--reps", type=int, default=5, help="requests per last-page median (default 5)")
    p.add_argument("--pull-reps", type=int, default=3, help="4-client pulls per client kind and server (default 3; the median is reported)")
    p.add_argument("--clients", default=",".join(CLIENTS),
                   help=f"client kinds for the 4-client pulls, comma-separated "
                        f"(default: all: {','.join(CLIENTS)}; the target is read on {TARGET_CLIENT})")
    p.add_argument("--pg", default="/var/run/postgresql", help="PostgreSQL host or socket directory")
    p.add_argument("--no-analyze", action="store_true", help="skip VACUUM ANALYZE after the bulk load")
    p.add_argument("--no-ref", action="store_true", help="skip medallion")
    p.add_argument("--ref-n", type=int, default=2000)
    p.add_argument("--ref-timeout", type=float, default=180)
    p.add_argument("--timeout", type=float, default=120, help="per-request timeout, seconds")
    p.add_argument("--seed", type=int, default=808)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--keep", action="store_true", help="keep the database (printed) and the temp dir")
    args = p.parse_args(argv)
    if args.quick:
        args.n = 100_000 if args.n == 1_000_000 else args.n
        args.push_n = 10_000 if args.push_n == 50_000 else args.push_n
    args.clients = [k.strip() for k in args.clients.split(",") if k.strip()]
    if unknown := [k for k in args.clients if k not in CLIENTS]:
        p.error(f"--clients: unknown kind(s) {', '.join(unknown)}; known: {', '.join(CLIENTS)}")
    if TARGET_CLIENT not in args.clients:
        args.clients.append(TARGET_CLIENT)
    if args.n < 8 * PAGE:
        p.error("--n must be at least 8,000")

    db = f"ctix_pgbench_{os.getpid()}"
    url = db_url(args.pg, db)
    tmp = Path(tempfile.mkdtemp(prefix="cti-pgbench-"))
    print(f"cti-exchange PostgreSQL benchmark: N = {args.n:,}, push {args.push_n:,} per run, database {db}, {os.cpu_count()} CPUs", flush=True)
    psql(args.pg, f"CREATE DATABASE {db}")
    runs: dict[int, ServerRun] = {}
    ref = None
    try:
        print("-- setup: load in process ...", flush=True)
        setup = setup_database(url, args.pg, db, args.n, args.load_batch, {"rok-inbox": 1000, "jp-read": 2000}, args.seed, not args.no_analyze)
        print(
            f"   {args.n:,} in {setup.load_s:.1f} s = {setup.load_per_s:,.0f}/s; analyze {setup.analyze_s:.1f} s; {setup.db_size_mb:,.0f} MB",
            flush=True,
        )
        if not args.no_ref:
            print(f"-- medallion 3.0.0 memory backend, N = {args.ref_n:,} ...", flush=True)
            ref = medallion_ref(args.ref_n, args)
            print(f"   pull {_f(ref.pull_per_s)}/s, last page {_ms(ref.last_page_s)}, RSS {_f(ref.rss_peak_mb, '.1f')} MB", flush=True)
        # pulls on an unchanged collection first (both servers up, 4-client pulls interleaved), then the pushes
        print("-- pulls: 1 worker and 4 workers", flush=True)
        runs = bench_pulls(args, url, tmp, setup)
        for w, seed in ((4, args.seed + 1), (1, args.seed + 2)):
            print(f"-- {w} worker(s): pushes", flush=True)
            merge_pushes(runs[w], bench_pushes(w, args, url, tmp, setup, seed))
        out = report(setup, runs, ref, args)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
            print(f"\nJSON written to {args.json}")
    finally:
        if args.keep:
            print(f"kept database {db} ({url}) and {tmp}")
        else:
            try:
                psql(args.pg, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            except Exception as exc:  # noqa: BLE001
                print(f"could not drop {db}: {exc}")
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
