#!/usr/bin/env python3
"""Push/pull benchmark of a cti-exchange node against medallion's memory backend.

Not a test: it starts real servers on 127.0.0.1, pushes and pulls N STIX 2.1
indicators through ``taxii2-client`` and prints a table of figures (optionally
also a JSON file).  See ``bench/README.md`` for the method and the figures.

    python bench/node_bench.py                 # full run: ours 1k,2k,10k,100k; medallion 1k,2k
    python bench/node_bench.py --quick         # ours 1k,2k,10k; medallion 1k
    python bench/node_bench.py --sizes 1000,100000 --ref-sizes 1000 --json out.json

Per run it measures, the way ``shared/reference/performance-notes.md`` did:
  * push objects/s: envelopes of ``--envelope`` (500) indicators through
    ``Collection.add_objects`` (status checked: every object a success);
  * pull objects/s: ``as_pages(coll.get_objects, per_request=1000)`` over the
    whole collection (count and distinct ids checked);
  * last-page-only fetch: one ``get_objects`` request that returns only the
    last page (see ``_last_page_ours`` / ``_last_page_ref`` for the method);
  * server peak RSS: sum over the server process tree (gunicorn master and
    workers; medallion's single process), sampled every 50 ms by psutil over
    the whole run (start, push, pull, last-page fetches).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - told to the user below
    psutil = None

import requests
from requests.adapters import HTTPAdapter
from taxii2client.v21 import Collection, as_pages

REPO = Path(__file__).resolve().parent.parent
TLP_GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
CREATED_BY = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
MEDIA_TAXII = "application/taxii+json;version=2.1"
MEDIA_STIX = "application/stix+json;version=2.1"
USER, PASSWORD = "analyst", "analyst-password-123"

# Targets from issue 2 (at N = 100k)
TARGET_PULL = 20_000.0
TARGET_PUSH = 5_000.0
TARGET_LAST_PAGE_FACTOR = 2.0
TARGET_RSS_MB = 250.0
TARGET_DURING = 0.75  # issue 21: a pull during the release keeps >= 75% of the quiet rate
TARGET_RSS_MB_21 = 200.0  # issue 21: server RSS at 100k


# ---------------------------------------------------------------------------------------------
# data


_CAMPAIGNS = ["Lazarus Group", "Kimsuky", "Andariel", "APT37 (ScarCrew)", "BlueNoroff", "TraderTraitor"]
_SECTORS = ["financial services", "defence industrial base", "energy", "government", "cryptocurrency exchanges", "telecommunications"]
_SOURCES = ["joint US-ROK analysis", "CISA advisory", "KISA incident response", "partner SOC telemetry", "malware sandbox detonation"]


def make_indicators(n: int, seed: int) -> list[dict]:
    """``n`` distinct, realistic STIX 2.1 indicators of about 800 bytes each (compact JSON)."""
    rng = random.Random(seed)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        sid = f"indicator--{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        created = base + timedelta(seconds=rng.randrange(0, 365 * 86400), milliseconds=rng.randrange(1000))
        ts = created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z"
        kind = i % 4
        if kind == 0:
            value = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            pattern, what = f"[ipv4-addr:value = '{value}']", f"IPv4 address {value}"
        elif kind == 1:
            value = f"{rng.getrandbits(40):010x}-update.{rng.choice(['com', 'net', 'org', 'info'])}"
            pattern, what = f"[domain-name:value = '{value}']", f"domain {value}"
        elif kind == 2:
            value = f"{rng.getrandbits(256):064x}"
            pattern, what = f"[file:hashes.'SHA-256' = '{value}']", f"file SHA-256 {value[:16]}..."
        else:
            value = f"https://cdn{rng.randrange(100)}.{rng.getrandbits(32):08x}.net/dl/{rng.getrandbits(48):012x}.php"
            pattern, what = f"[url:value = '{value}']", f"URL {value}"
        campaign = rng.choice(_CAMPAIGNS)
        obj = {
            "type": "indicator",
            "spec_version": "2.1",
            "id": sid,
            "created_by_ref": CREATED_BY,
            "created": ts,
            "modified": ts,
            "name": f"{campaign} infrastructure: {what}"[:120],
            "description": (
                f"Observed in {campaign} activity against {rng.choice(_SECTORS)} targets. Source: {rng.choice(_SOURCES)}. "
                "Block at the perimeter; hunt for past connections in proxy, DNS and EDR logs (90 days). "
                f"Ref {i:07d}."
            ),
            "indicator_types": ["malicious-activity"],
            "pattern": pattern,
            "pattern_type": "stix",
            "pattern_version": "2.1",
            "valid_from": ts,
            "confidence": rng.choice([50, 70, 85, 95]),
            "labels": ["dprk"],
            "object_marking_refs": [TLP_GREEN],
        }
        out.append(obj)
    return out


# ---------------------------------------------------------------------------------------------
# servers


class TimeoutAdapter(HTTPAdapter):
    """Every request through the client gets a timeout (taxii2-client sets none)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(pool_connections=1, pool_maxsize=1)

    def send(self, request, **kwargs):  # type: ignore[override]
        if not kwargs.get("timeout"):
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


def client_collection(url: str, timeout: float) -> Collection:
    coll = Collection(url, user=USER, password=PASSWORD)
    session = coll._conn.session
    session.trust_env = False  # no proxies from the environment: loopback only
    session.mount("http://", TimeoutAdapter(timeout))
    return coll


class RssSampler:
    """Peak RSS of a process and all its descendants, sampled on a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_tree = 0
        self.peak_single = 0
        self.peak_tree_pss = 0  # proportional set size: pages shared by the gunicorn master and its workers counted once
        self.nprocs = 0
        self._n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            self.peak_single = max(self.peak_single, rss)
        self.peak_tree = max(self.peak_tree, total)
        self.nprocs = max(self.nprocs, len(procs))
        self._n += 1
        if self._n % 5 == 1:  # PSS reads /proc/<pid>/smaps: sample it less often
            pss = 0
            for p in procs:
                try:
                    pss += p.memory_full_info().pss
                except (psutil.Error, AttributeError):
                    continue
            self.peak_tree_pss = max(self.peak_tree_pss, pss)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


def _read_line_matching(proc: subprocess.Popen, prefix: str, deadline: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before printing {prefix!r}")
            if not sel.select(timeout=0.2):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                continue
            buf += chunk
            for line in buf.decode("utf-8", "replace").splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
        raise RuntimeError(f"server did not print {prefix!r} in time")
    finally:
        sel.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, deadline: float) -> None:
    auth = (USER, PASSWORD)
    with requests.Session() as s:
        s.trust_env = False
        while time.monotonic() < deadline:
            try:
                r = s.get(url, auth=auth, headers={"Accept": MEDIA_TAXII}, timeout=2)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in time")


def stop_process_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


@dataclass
class Server:
    proc: subprocess.Popen
    collection_url: str
    log_path: Path


_PROVISION = """
import sys
from exchange.config import load_node
from exchange.node.ops import add_account, open_node
opened = open_node("us", data_dir=sys.argv[1])
add_account(opened, sys.argv[2], sys.argv[3], ["us-intel"], ["us-intel"])
opened.close()
print(load_node("us").config.collection("us-intel").id)
"""


def _source_env(source: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(source) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_ours(data_dir: Path, workers: int | None, threads: int | None, strict: bool, source: Path = REPO) -> Server:
    """Provision account ``analyst`` on node ``us`` and serve it, both from the code under ``source``."""
    env = _source_env(source)
    data_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", _PROVISION, str(data_dir), USER, PASSWORD],
        cwd=source, env=env, capture_output=True, text=True, timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"provisioning failed: {done.stderr[-2000:]}")
    coll_id = done.stdout.strip().splitlines()[-1]
    cmd = [sys.executable, "-m", "exchange", "serve", "us", "--data-dir", str(data_dir), "--port", "0", "--host", "127.0.0.1"]
    if workers:
        cmd += ["--workers", str(workers)]
    if threads:
        cmd += ["--threads", str(threads)]
    if strict:
        cmd.append("--strict-validation")
    log_path = data_dir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, cwd=source, env=env, start_new_session=True)
    try:
        api_root = _read_line_matching(proc, "API root:", time.monotonic() + 60)
        _wait_http(api_root, time.monotonic() + 30)
    except Exception as exc:
        stop_process_group(proc)
        raise RuntimeError(f"our node did not start; log: {log_path.read_text(errors='replace')[-2000:]}") from exc
    return Server(proc, f"{api_root}collections/{coll_id}/", log_path)


def start_medallion(work: Path) -> Server:
    port = _free_port()
    root = f"http://127.0.0.1:{port}/bench/"
    coll_id = str(uuid.uuid4())
    data = {
        "/discovery": {"title": "medallion reference (bench)", "default": root, "api_roots": [root]},
        "bench": {
            "information": {"title": "bench api root", "versions": [MEDIA_TAXII], "max_content_length": 100 * 1024 * 1024},
            "status": [],
            "collections": [
                {
                    "id": coll_id,
                    "title": "bench collection",
                    "can_read": True,
                    "can_write": True,
                    "media_types": [MEDIA_STIX],
                    "objects": [],
                    "manifest": [],
                }
            ],
        },
    }
    data_file = work / "medallion-data.json"
    data_file.write_text(json.dumps(data, indent=1))
    config = {
        "users": {USER: PASSWORD},
        "taxii": {"max_page_size": 1000},
        "backend": {"module": "medallion.backends.memory_backend", "module_class": "MemoryBackend", "filename": str(data_file)},
    }
    config_file = work / "medallion-config.json"
    config_file.write_text(json.dumps(config, indent=1))
    cmd = [sys.executable, "-c", "from medallion.scripts.run import main; main()", "--host", "127.0.0.1", "--port", str(port), str(config_file)]
    log_path = work / "medallion.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/taxii2/", time.monotonic() + 60)
    except Exception as exc:
        stop_process_group(proc)
        raise RuntimeError(f"medallion did not start; log: {log_path.read_text(errors='replace')[-2000:]}") from exc
    return Server(proc, f"{root}collections/{coll_id}/", log_path)


# ---------------------------------------------------------------------------------------------
# measurements


class PhaseTimeout(Exception):
    pass


@dataclass
class Result:
    server: str  # "ours" | "medallion"
    n: int
    envelope: int
    page: int
    push_s: float | None = None
    push_per_s: float | None = None
    push_failures: int = 0
    push_first_tenth_per_s: float | None = None  # rate over the first 10% of envelopes
    push_last_tenth_per_s: float | None = None  # rate over the last 10% (growth of per-envelope cost with N)
    pull_s: float | None = None
    pull_per_s: float | None = None
    pulled: int | None = None
    distinct: int | None = None
    pages: int | None = None
    last_page_s: float | None = None  # median of the timed repeats
    last_page_min_s: float | None = None
    last_page_reps: int = 0
    last_page_count: int | None = None
    last_page_method: str = ""
    last_page_next_s: float | None = None  # medallion only: the one-shot `next` method
    first_page_s: float | None = None
    rss_peak_mb: float | None = None
    rss_peak_single_mb: float | None = None
    rss_peak_pss_mb: float | None = None
    release_settle_s: float | None = None  # ours: seconds the server stayed busy after the push (background release)
    pull_during_per_s: float | None = None  # ours: a full pull started right after the push, while the release runs
    pull_during_s: float | None = None
    rss_idle_mb: float | None = None
    server_procs: int | None = None
    loadavg_before: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def push(coll: Collection, objs: list[dict], envelope: int, deadline: float, res: Result) -> None:
    envelopes = [{"objects": objs[i : i + envelope]} for i in range(0, len(objs), envelope)]
    failures = 0
    each: list[float] = []
    t0 = time.perf_counter()
    for env in envelopes:
        if time.monotonic() > deadline:
            raise PhaseTimeout("push")
        t1 = time.perf_counter()
        status = coll.add_objects(env, wait_for_completion=True, poll_interval=1, timeout=60)
        each.append(time.perf_counter() - t1)
        if status.status != "complete" or status.success_count != len(env["objects"]):
            failures += len(env["objects"]) - (status.success_count or 0)
    res.push_s = time.perf_counter() - t0
    res.push_per_s = len(objs) / res.push_s
    res.push_failures = failures
    k = max(1, len(envelopes) // 10)
    res.push_first_tenth_per_s = sum(len(e["objects"]) for e in envelopes[:k]) / sum(each[:k])
    res.push_last_tenth_per_s = sum(len(e["objects"]) for e in envelopes[-k:]) / sum(each[-k:])
    if failures:
        res.notes.append(f"push: {failures} objects not reported as successes")


def pull(coll: Collection, n: int, page: int, deadline: float, res: Result) -> list[dict]:
    """Timed full pull with ``as_pages``; returns per-page info (next token, ids at the edges, count)."""
    pages: list[dict] = []
    max_pages = n // page + 3

    def recorded(**kwargs: Any) -> dict:
        if time.monotonic() > deadline or len(pages) >= max_pages:
            raise PhaseTimeout("pull")
        env = coll.get_objects(**kwargs)
        objs = env.get("objects", [])
        pages.append({"next": env.get("next"), "more": env.get("more", False), "count": len(objs), "first": objs[0]["id"] if objs else None})
        return env

    seen: set[str] = set()
    total = 0
    t0 = time.perf_counter()
    for env in as_pages(recorded, per_request=page):
        objs = env.get("objects", [])
        total += len(objs)
        seen.update(o["id"] for o in objs)
    res.pull_s = time.perf_counter() - t0
    res.pull_per_s = total / res.pull_s
    res.pulled, res.distinct, res.pages = total, len(seen), len(pages)
    if total != n or len(seen) != n:
        res.notes.append(f"pull: got {total} objects ({len(seen)} distinct), expected {n}")
    return pages


def _timed_repeats(fn: Callable[[], dict], reps: int, budget_s: float) -> tuple[list[float], dict]:
    """Run ``fn`` up to ``reps`` times within ``budget_s`` (at least once); times and last answer."""
    times: list[float] = []
    env: dict = {}
    start = time.monotonic()
    for _ in range(reps):
        t0 = time.perf_counter()
        env = fn()
        times.append(time.perf_counter() - t0)
        if time.monotonic() - start > budget_s:
            break
    return times, env


def _record_last_page(res: Result, times: list[float], env: dict, expected: dict, method: str) -> None:
    objs = env.get("objects", [])
    res.last_page_s = statistics.median(times)
    res.last_page_min_s = min(times)
    res.last_page_reps = len(times)
    res.last_page_count = len(objs)
    res.last_page_method = method
    if len(objs) != expected["count"] or (objs and objs[0]["id"] != expected["first"]) or env.get("more", False):
        res.notes.append(
            f"last page: got {len(objs)} objects (first {objs[0]['id'] if objs else None}, more={env.get('more')}), "
            f"expected {expected['count']} starting {expected['first']}"
        )


def last_page_ours(coll: Collection, pages: list[dict], page: int, reps: int, res: Result) -> None:
    """Ours: the stateless `next` token of the second-to-last page (any worker, any time, reusable).

    With a single page (N <= page size) the last page is the first: a plain request, no token.
    """
    first_times, first_env = _timed_repeats(lambda: coll.get_objects(limit=page), reps, 60)
    res.first_page_s = statistics.median(first_times)
    if len(pages) == 1:
        times, env = first_times, first_env
        method = "single page: plain first request (no next)"
    else:
        token = pages[-2]["next"]
        times, env = _timed_repeats(lambda: coll.get_objects(limit=page, next=token), reps, 60)
        method = "next token of the second-to-last page (from the pull), reused"
    _record_last_page(res, times, env, pages[-1], method)


def last_page_ref(coll: Collection, pages: list[dict], page: int, reps: int, deadline: float, res: Result) -> None:
    """medallion: ``added_after`` = date_added of the last entry before the last page (from the manifest).

    medallion's ``next`` is one-shot server state (the remaining objects, popped per page), so
    it is also measured once: page untimed up to the second-to-last page, then time the `next`
    request that returns the last page.  With a single page both are the plain first request.
    """
    budget = max(1.0, deadline - time.monotonic())
    if len(pages) == 1:
        times, env = _timed_repeats(lambda: coll.get_objects(limit=page), reps, min(budget, 20))
        res.first_page_s = statistics.median(times)
        _record_last_page(res, times, env, pages[-1], "single page: plain first request")
        return
    # manifest, untimed, to find the date_added just before the last page
    manifest: list[dict] = []
    for env in as_pages(coll.get_manifest, per_request=page):
        manifest.extend(env.get("objects", []))
        if time.monotonic() > deadline or len(manifest) > res.n + page:
            raise PhaseTimeout("manifest")
    cut = sum(p["count"] for p in pages[:-1])
    before, at = manifest[cut - 1], manifest[cut]
    if not before["date_added"] < at["date_added"]:
        res.notes.append("last page: page boundary falls inside one date_added; added_after cannot isolate it")
    times, env = _timed_repeats(lambda: coll.get_objects(limit=page, added_after=before["date_added"]), reps, min(budget, 20))
    _record_last_page(res, times, env, pages[-1], f"added_after = date_added of manifest entry {cut} (last before the last page)")
    # the one-shot `next` method
    if time.monotonic() > deadline:
        res.notes.append("last page via next: skipped (time budget used)")
        return
    env = coll.get_objects(limit=page)
    for _ in range(len(pages) - 2):
        if time.monotonic() > deadline:
            res.notes.append("last page via next: skipped (time budget used while paging)")
            return
        env = coll.get_objects(limit=page, next=env["next"])
    t0 = time.perf_counter()
    last = coll.get_objects(limit=page, next=env["next"])
    res.last_page_next_s = time.perf_counter() - t0
    if len(last.get("objects", [])) != pages[-1]["count"]:
        res.notes.append(f"last page via next: got {len(last.get('objects', []))} objects")


def wait_idle(pid: int, limit: float, threshold: float = 5.0) -> float:
    """Wait (at most ``limit`` s) until a process tree uses < ``threshold`` % CPU for 2 s; the seconds waited."""
    t0 = time.monotonic()
    root = psutil.Process(pid)
    quiet = 0
    while time.monotonic() - t0 < limit:
        procs = [root] + root.children(recursive=True)
        before = sum(sum(p.cpu_times()[:2]) for p in procs)
        time.sleep(0.5)
        after = sum(sum(p.cpu_times()[:2]) for p in procs)
        quiet = quiet + 1 if (after - before) / 0.5 * 100 < threshold else 0
        if quiet >= 4:
            break
    return time.monotonic() - t0


def run_one(kind: str, n: int, args: argparse.Namespace, objs: list[dict]) -> Result:
    res = Result(server=kind, n=n, envelope=args.envelope, page=args.page, loadavg_before=[round(x, 2) for x in os.getloadavg()])
    work = Path(tempfile.mkdtemp(prefix=f"cti-bench-{kind}-{n}-"))
    server: Server | None = None
    sampler: RssSampler | None = None
    timeout = args.ref_timeout if kind == "medallion" else args.timeout
    deadline = time.monotonic() + timeout
    try:
        if kind == "ours":
            server = start_ours(work / "data", args.workers, args.threads, args.strict_validation, args.source)
        else:
            server = start_medallion(work)
        sampler = RssSampler(server.proc.pid).start()
        time.sleep(0.3)
        res.rss_idle_mb = sampler.sample() / 2**20
        coll = client_collection(server.collection_url, timeout=max(5.0, min(timeout, 600.0)))
        phase = "push"
        try:
            push(coll, objs, args.envelope, deadline, res)
            if kind == "ours" and not args.no_during:
                # issue 21: a partner pulling while the node releases what was just pushed (the releaser yields to serving)
                phase = "pull during release"
                during = Result(server=kind, n=n, envelope=args.envelope, page=args.page)
                pull(coll, n, args.page, deadline, during)
                res.pull_during_per_s, res.pull_during_s = during.pull_per_s, during.pull_s
                res.notes += [f"pull during release: {note}" for note in during.notes]
            if kind == "ours":
                # our node releases what was pushed to the partners in the background, after acknowledging it;
                # measure serving on a settled node and report the catch-up separately
                res.release_settle_s = round(wait_idle(server.proc.pid, max(30.0, deadline - time.monotonic())), 1)
            phase = "pull"
            pages = pull(coll, n, args.page, deadline, res)
            phase = "last page"
            if kind == "ours":
                last_page_ours(coll, pages, args.page, args.reps, res)
            else:
                last_page_ref(coll, pages, args.page, args.reps, deadline, res)
        except (PhaseTimeout, requests.Timeout) as exc:
            res.notes.append(f"{phase}: stopped, time budget of {timeout:.0f} s exceeded ({type(exc).__name__})")
        except requests.HTTPError as exc:
            body = exc.response.text[:300] if exc.response is not None else ""
            res.notes.append(f"{phase}: HTTP error {exc} {body}")
    finally:
        if sampler is not None:
            sampler.stop()
            res.rss_peak_mb = sampler.peak_tree / 2**20
            res.rss_peak_single_mb = sampler.peak_single / 2**20
            res.rss_peak_pss_mb = sampler.peak_tree_pss / 2**20
            res.server_procs = sampler.nprocs
        if server is not None:
            stop_process_group(server.proc)
            if server.proc.returncode not in (0, -signal.SIGTERM, None):
                res.notes.append(f"server exit code {server.proc.returncode}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------------------------
# reporting


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.1f} ms" if v < 10 else f"{v:.1f} s"


def table(results: list[Result]) -> str:
    head = [
        "server", "N", "push obj/s", "push first→last 10%", "pull obj/s", "pull during release",
        "last page", "(method)", "first page", "peak RSS tree", "procs",
        "load before",
    ]
    rows = []
    for r in results:
        method = "next" if "next token" in r.last_page_method else ("added_after" if "added_after" in r.last_page_method else "1 page")
        rows.append(
            [
                "cti-exchange" if r.server == "ours" else "medallion mem",
                f"{r.n:,}",
                _f(r.push_per_s, ",.0f"),
                f"{_f(r.push_first_tenth_per_s, ',.0f')} → {_f(r.push_last_tenth_per_s, ',.0f')}",
                _f(r.pull_per_s, ",.0f"),
                _f(r.pull_during_per_s, ",.0f")
                + ("" if not (r.pull_during_per_s and r.pull_per_s) else f" ({r.pull_during_per_s / r.pull_per_s:.2f}x)"),
                _ms(r.last_page_s) + (f" (min {_ms(r.last_page_min_s)}, {r.last_page_reps}x)" if r.last_page_reps > 1 else ""),
                method,
                _ms(r.first_page_s),
                _f(r.rss_peak_mb, ".1f") + " MB",
                str(r.server_procs or "-"),
                "/".join(f"{x:.1f}" for x in r.loadavg_before),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def ratios(results: list[Result]) -> list[dict]:
    ours = {r.n: r for r in results if r.server == "ours"}
    out = []
    for ref in (r for r in results if r.server == "medallion"):
        o = ours.get(ref.n)
        if o is None:
            continue

        def div(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None or b == 0 else a / b

        out.append(
            {
                "n": ref.n,
                "push_ours_over_medallion": div(o.push_per_s, ref.push_per_s),
                "pull_ours_over_medallion": div(o.pull_per_s, ref.pull_per_s),
                "last_page_time_ours_over_medallion": div(o.last_page_s, ref.last_page_s),
                "rss_ours_over_medallion": div(o.rss_peak_mb, ref.rss_peak_mb),
            }
        )
    return out


def targets(results: list[Result]) -> list[dict]:
    ours = {r.n: r for r in results if r.server == "ours"}
    if not ours:
        return []
    big_n = 100_000 if 100_000 in ours else max(ours)
    big, small = ours[big_n], ours.get(1000) or ours[min(ours)]
    at = f"N={big_n:,}" + ("" if big_n == 100_000 else " (100k not run)")
    out = []

    def add(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        out.append({"target": name, "at": at, "value": value, "goal": goal, "met": ok})

    add("pull objects/s", big.pull_per_s, f">= {TARGET_PULL:,.0f}", None if big.pull_per_s is None else big.pull_per_s >= TARGET_PULL)
    add(
        "push objects/s (input checks on)", big.push_per_s, f">= {TARGET_PUSH:,.0f}",
        None if big.push_per_s is None else big.push_per_s >= TARGET_PUSH,
    )
    factor = None if big.last_page_s is None or small.last_page_s is None else big.last_page_s / small.last_page_s
    add(
        f"last-page fetch vs N={small.n:,}",
        factor,
        f"<= {TARGET_LAST_PAGE_FACTOR:.0f}x ({_ms(big.last_page_s)} vs {_ms(small.last_page_s)})",
        None if factor is None else factor <= TARGET_LAST_PAGE_FACTOR,
    )
    during = None if not (big.pull_during_per_s and big.pull_per_s) else big.pull_during_per_s / big.pull_per_s
    add("pull during the background release / quiet pull (issue 21)", during, f">= {TARGET_DURING:.2f}",
        None if during is None else during >= TARGET_DURING)
    add("server peak RSS MB (tree)", big.rss_peak_mb, f"< {TARGET_RSS_MB:.0f}", None if big.rss_peak_mb is None else big.rss_peak_mb < TARGET_RSS_MB)
    add("server peak RSS MB (the worker process alone)", big.rss_peak_single_mb, f"< {TARGET_RSS_MB:.0f}",
        None if big.rss_peak_single_mb is None else big.rss_peak_single_mb < TARGET_RSS_MB)
    add("server peak PSS MB (tree, shared pages counted once)", big.rss_peak_pss_mb, f"< {TARGET_RSS_MB:.0f}",
        None if not big.rss_peak_pss_mb else big.rss_peak_pss_mb < TARGET_RSS_MB)
    add("server peak RSS MB (tree), issue 21", big.rss_peak_mb, f"< {TARGET_RSS_MB_21:.0f}",
        None if big.rss_peak_mb is None else big.rss_peak_mb < TARGET_RSS_MB_21)
    return out


def report(results: list[Result], args: argparse.Namespace) -> dict:
    print()
    print(table(results))
    rat = ratios(results)
    if rat:
        print("\nRatios to the reference (medallion 3.0.0 memory backend) at the same N:")
        for r in rat:
            print(
                f"  N={r['n']:,}: push ours/medallion {_f(r['push_ours_over_medallion'], '.1f')}x, "
                f"pull ours/medallion {_f(r['pull_ours_over_medallion'], '.1f')}x, "
                f"last-page time ours/medallion {_f(r['last_page_time_ours_over_medallion'], '.4f')} "
                f"(= {_f(None if not r['last_page_time_ours_over_medallion'] else 1 / r['last_page_time_ours_over_medallion'], ',.0f')}x faster), "
                f"peak RSS ours/medallion {_f(r['rss_ours_over_medallion'], '.2f')}"
            )
    tg = targets(results)
    if tg:
        print("\nTargets (issues 2 and 21):")
        for t in tg:
            mark = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[t["met"]]
            val = "-" if t["value"] is None else (f"{t['value']:,.2f}" if t["value"] < 100 else f"{t['value']:,.0f}")
            print(f"  [{mark:>12}] {t['target']} at {t['at']}: {val} (goal {t['goal']})")
    notes = [(r.server, r.n, note) for r in results for note in r.notes]
    for r in results:
        if r.server == "medallion" and r.last_page_next_s is not None:
            notes.append((r.server, r.n, f"last page via medallion's one-shot next token (after untimed paging): {_ms(r.last_page_next_s)}"))
    if notes:
        print("\nNotes:")
        for server, n, note in notes:
            print(f"  {server} N={n:,}: {note}")
    return {
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform},
        "settings": {
            "envelope": args.envelope,
            "page": args.page,
            "workers": args.workers,
            "threads": args.threads,
            "strict_validation": args.strict_validation,
            "reps": args.reps,
        },
        "code": None,
        "results": [asdict(r) for r in results],
        "ratios": rat,
        "targets": tg,
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def prepare_source(rev: str | None, keep: bool) -> tuple[Path, dict]:
    """The code to benchmark: the working tree, or a clean snapshot of ``rev`` (``git archive``)."""
    if not rev:
        dirty = [line[3:] for line in _git("status", "--porcelain", "--", "exchange", "collections", "policies").splitlines()]
        return REPO, {"code": "working tree", "head": _git("rev-parse", "HEAD").strip(), "uncommitted_changes": dirty}
    commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    if not commit:
        raise SystemExit(f"no such revision: {rev}")
    snap = Path(tempfile.mkdtemp(prefix=f"cti-bench-src-{commit[:10]}-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, timeout=120, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(snap)], input=archive, timeout=120, check=True)
    return snap, {"code": f"git archive of {rev}", "commit": commit, "snapshot": str(snap)}


def _sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        if not part:
            continue
        mult = 1000 if part.endswith("k") else 1
        out.append(int(float(part.rstrip("k")) * mult))
    if any(n <= 0 for n in out):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_sizes, help="N for our node, comma-separated (1k/100k allowed); default 1k,2k,10k,100k")
    p.add_argument("--ref-sizes", type=_sizes, help="N for medallion's memory backend; default 1k,2k ('' for none)")
    p.add_argument("--quick", action="store_true", help="smaller run: ours 1k,2k,10k; medallion 1k")
    p.add_argument("--no-ref", action="store_true", help="skip medallion")
    p.add_argument("--envelope", type=int, default=500, help="objects per add_objects envelope (default 500)")
    p.add_argument("--page", type=int, default=1000, help="per_request page size for the pull (default 1000)")
    p.add_argument("--reps", type=int, default=5, help="timed repeats of the last-page fetch (median reported; default 5)")
    p.add_argument("--workers", type=int, help="gunicorn workers for our node (default: the serve command's default)")
    p.add_argument("--threads", type=int, help="threads per worker for our node (default: the serve command's default)")
    p.add_argument("--strict-validation", action="store_true", help="run our node with --strict-validation (full stix2 parse)")
    p.add_argument("--timeout", type=float, default=900, help="time budget per run of our node, seconds (default 900)")
    p.add_argument("--ref-timeout", type=float, default=300, help="time budget per medallion run, seconds (default 300)")
    p.add_argument("--no-during", action="store_true", help="skip the pull during the background release (our node)")
    p.add_argument("--seed", type=int, default=2117, help="seed for the generated indicators")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dirs and server logs")
    p.add_argument("--rev", help="benchmark a clean snapshot of this git revision (e.g. HEAD) instead of the working tree")
    args = p.parse_args(argv)
    if psutil is None:
        p.error("psutil is required: pip install -e '.[bench]' (or pip install psutil)")
    sizes = args.sizes or ([1000, 2000, 10_000] if args.quick else [1000, 2000, 10_000, 100_000])
    ref_sizes = [] if args.no_ref else (args.ref_sizes if args.ref_sizes is not None else ([1000] if args.quick else [1000, 2000]))

    plan = [("medallion", n) for n in ref_sizes] + [("ours", n) for n in sizes]
    args.source, code = prepare_source(args.rev, args.keep)
    print(f"code under test: {code['code']} ({code.get('commit') or code.get('head', '')[:12]})")
    if code.get("uncommitted_changes"):
        print(f"  with uncommitted changes in: {', '.join(code['uncommitted_changes'])}")
    print(f"cti-exchange node benchmark: {len(plan)} runs, envelopes of {args.envelope}, pages of {args.page}, {os.cpu_count()} CPUs")
    sample = make_indicators(50, args.seed)
    avg = sum(len(json.dumps(o, separators=(",", ":"))) for o in sample) / len(sample)
    print(f"indicator size: ~{avg:.0f} bytes compact JSON (~{sum(len(json.dumps(o)) for o in sample) / len(sample):.0f} as taxii2-client sends it)")
    results: list[Result] = []
    for kind, n in plan:
        objs = make_indicators(n, args.seed + n)
        label = "cti-exchange" if kind == "ours" else "medallion"
        print(f"-- {label} N={n:,} ...", flush=True)
        t0 = time.monotonic()
        res = run_one(kind, n, args, objs)
        del objs
        results.append(res)
        print(
            f"   push {_f(res.push_per_s, ',.0f')}/s, pull {_f(res.pull_per_s, ',.0f')}/s, last page {_ms(res.last_page_s)}, "
            f"peak RSS {_f(res.rss_peak_mb, '.1f')} MB ({time.monotonic() - t0:.0f} s)"
            + (f"; background release after the push: {res.release_settle_s} s" if res.release_settle_s is not None else "")
            + ("".join(f"\n   note: {x}" for x in res.notes)),
            flush=True,
        )
    out = report(results, args)
    out["code"] = code
    if args.rev and not args.keep:
        shutil.rmtree(args.source, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
