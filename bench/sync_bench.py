#!/usr/bin/env python3
"""Sync benchmark of the exchange: US -> ROK under policy, end to end (issue 4).

Not a test: it provisions real nodes in temporary data dirs, runs the servers
and the sync agents as subprocesses on 127.0.0.1 and prints a table of
figures (optionally also a JSON file).  See ``bench/README.md`` for the
method and the figures.

    python bench/sync_bench.py                 # N = 100,000 (about 5-10 min on 2 cores)
    python bench/sync_bench.py --quick         # N = 10,000
    python bench/sync_bench.py --n 50000 --json out.json --profile prof/

Phases:
  1. load N indicators with mixed TLP 2.0 markings into the US node's own
     collection (in process, batches of 1000, reported separately);
  2. release under policy (``release_all``, in process, timed; partners rok and jp);
  3. pull: the ROK sync agent as a subprocess (``sync rok --direction pull --once``);
  4. push: the US sync agent as a subprocess (``sync us --direction push --once``)
     to a *fresh* ROK node (so the same released set travels again, the other way round);
  5. live exchange: a fresh pair, the US server (releasing in the background) and
     the ROK agent (``--interval 0.5``) started together, timed to the last arrival;
  6. single-object latency: the US agent running with ``--interval 1 --direction push``,
     one GREEN indicator POSTed to ``us-intel`` at a time, polled for in the ROK ``us-inbox``;
  7. reference: ``PartnerClient.pages`` over 2,000 objects from medallion's memory
     backend vs from our node, in the same run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import json
import os
import pstats
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_bench import (  # noqa: E402  (reuse the colleague's helpers: data, medallion, RSS sampling)
    PASSWORD as MED_PASSWORD,
)
from node_bench import (
    USER as MED_USER,
)
from node_bench import (
    RssSampler,
    TimeoutAdapter,
    client_collection,
    make_indicators,
    prepare_source,
    start_medallion,
    stop_process_group,
    wait_idle,
)

from exchange.demo.procs import NodeProcess  # noqa: E402
from exchange.node.ops import add_account, open_node  # noqa: E402
from exchange.sharing.client import PartnerClient  # noqa: E402
from exchange.sharing.release import release_all  # noqa: E402
from exchange.storage.store import Selection  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
US_IDENTITY = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
TLP = {
    "CLEAR": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "GREEN": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "AMBER": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "AMBER+STRICT": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "RED": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
TLP_NAME = {v: k for k, v in TLP.items()}
WITHHELD_FROM_ROK = ("AMBER+STRICT", "RED")
PASSWORDS = {
    "us": {"rok": "pw-rok-on-us-123", "jp": "pw-jp-on-us-123", "analyst": "pw-analyst-us-123"},
    "rok": {"us": "pw-us-on-rok-123", "jp": "pw-jp-on-rok-123", "analyst": "pw-analyst-rok-123"},
}
PARTNER = {"us": "rok", "rok": "us"}

TARGET_E2E = 5_000.0  # objects/s end to end (issue 4)
TARGET_LATENCY = 2.0  # seconds for a single new object (issue 4)


# ---------------------------------------------------------------------------------------------
# data and nodes


def mixed_indicators(n: int, seed: int, mix: dict[str, float]) -> list[dict]:
    """node_bench's ~800-byte indicators, each with one TLP marking drawn to the exact ``mix`` shares."""
    objs = make_indicators(n, seed)
    names: list[str] = []
    for name, share in mix.items():
        names += [name] * int(round(n * share))
    names = (names + ["GREEN"] * n)[:n]
    random.Random(seed).shuffle(names)
    for obj, name in zip(objs, names, strict=True):
        obj["created_by_ref"] = US_IDENTITY
        obj["object_marking_refs"] = [TLP[name]]
    return objs


def provision(node: str, data: Path) -> None:
    opened = open_node(node, data_dir=data)
    try:
        for account, password in PASSWORDS[node].items():
            add_account(opened, account, password, [], [])
    finally:
        opened.close()


def password_file(work: Path, node: str) -> Path:
    """The file holding ``node``'s password on its partner's node (the agent's --password-file)."""
    path = work / f"{node}-on-{PARTNER[node]}.pw"
    path.write_text(PASSWORDS[PARTNER[node]][node] + "\n")
    path.chmod(0o600)
    return path


def sync_cmd(work: Path, node: str, data: Path, partner_url: str, *extra: str) -> list[str]:
    return [
        PY, "-m", "exchange", "sync", node, "--partner", PARTNER[node], "--partner-url", partner_url,
        "--password-file", str(password_file(work, node)), "--data-dir", str(data), *extra,
    ]


def inbox_census(data: Path, node: str, alias: str) -> tuple[set[tuple[str, str]], collections.Counter]:
    """(id, version) of every row in a collection, and a count per TLP name (and per type for the rest)."""
    opened = open_node(node, data_dir=data)
    try:
        coll = opened.node.config.collection(alias)
        keys: set[tuple[str, str]] = set()
        by: collections.Counter = collections.Counter()
        for row in opened.store.iter_rows(Selection(coll.id, versions=("all",))):
            keys.add((row.stix_id, row.version))
            obj = orjson.loads(row.body)
            refs = obj.get("object_marking_refs") or []
            by[TLP_NAME.get(refs[0], "other") if refs else obj.get("type", "?")] += 1
        rows = opened.store.count(coll.id, all_versions=True)
        if rows != len(keys):
            by["(duplicate rows)"] = rows - len(keys)
        return keys, by
    finally:
        opened.close()


# ---------------------------------------------------------------------------------------------
# profiling helpers


def profile_summary_pstats(prof: cProfile.Profile, top: int = 18) -> list[str]:
    """Cumulative-time lines of a cProfile run, restricted to the project's code and SQLite."""
    st = pstats.Stats(prof)
    total = max(st.total_tt, 1e-9)  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, _nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rel = os.path.relpath(file, REPO) if file.startswith(str(REPO)) else None
        if rel is None and not ("sqlite3" in file or "orjson" in func or func.startswith("<method 'execute")):
            continue
        rows.append((ct, tt, f"{rel or file}:{line} {func}"))
    rows.sort(reverse=True)
    return [f"{ct / total:6.1%} cum {tt / total:6.1%} self  {name}" for ct, tt, name in rows[:top]]


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def profile_summary_raw(path: Path, top: int = 22) -> list[str]:
    """Inclusive share per frame of a ``py-spy record --format raw`` file, project frames only."""
    if not path.exists():
        return [f"(no profile at {path})"]
    incl: collections.Counter = collections.Counter()
    selfc: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        seen = set()
        frames = stack.split(";")
        for i, frame in enumerate(frames):
            m = _FRAME.match(frame.strip())
            if not m:
                continue
            f = m.group("file")
            rel = f if f.startswith("exchange/") else (f.split(str(REPO) + "/")[-1] if f.startswith(str(REPO) + "/") else None)
            label = f"{rel or os.path.basename(f)}:{m.group('line')} {m.group('func')}"
            key = (rel or os.path.basename(f), m.group("func"))
            if key not in seen:
                seen.add(key)
                if rel and rel.startswith("exchange/"):
                    incl[label] += n
            if i == len(frames) - 1:
                selfc[f"{rel or f}:{m.group('line')} {m.group('func')}"] += n
    if not total:
        return ["(empty profile)"]
    out = [f"{total} samples; inclusive share of exchange/ frames (file:line of the sampled line):"]
    out += [f"  {c / total:6.1%}  {label}" for label, c in incl.most_common(top)]
    out += ["self time (leaf frames):"]
    out += [f"  {c / total:6.1%}  {label}" for label, c in selfc.most_common(10)]
    return out


def run_agent(cmd: list[str], timeout: float, profile: Path | None, rate: int = 50) -> tuple[float, subprocess.CompletedProcess, float]:
    """Run a sync agent to completion: (wall seconds, completed process, peak RSS MB)."""
    if profile is not None:
        cmd = [str(Path(PY).parent / "py-spy"), "record", "--idle", "--format", "raw", "-r", str(rate), "-o", str(profile), "--", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            cwd=REPO, start_new_session=True)
    sampler = RssSampler(proc.pid).start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stop_process_group(proc)
        raise RuntimeError(f"agent did not finish within {timeout:.0f} s: {' '.join(cmd)}") from exc
    finally:
        sampler.stop()
    wall = time.perf_counter() - t0
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if proc.returncode != 0:
        raise RuntimeError(f"agent failed ({proc.returncode}): {err[-3000:]}")
    return wall, done, sampler.peak_tree / 2**20


def summary_of(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if "sync " in ln and "{" in ln]
    return lines[-1].split(": ", 1)[-1] if lines else ""


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Figures:
    n: int
    mix: dict[str, float]
    load_s: float = 0.0
    release_s: float = 0.0
    release_tally: dict = field(default_factory=dict)
    released_to_rok: int = 0  # rows in rok-read (indicators plus companion marking definitions)
    pull_s: float = 0.0
    pull_summary: str = ""
    pull_agent_rss_mb: float = 0.0
    pull_inbox_rows: int = 0
    pull_inbox_by_tlp: dict = field(default_factory=dict)
    pull_exact: bool = False
    push_s: float = 0.0
    push_summary: str = ""
    push_agent_rss_mb: float = 0.0
    push_inbox_rows: int = 0
    push_inbox_by_tlp: dict = field(default_factory=dict)
    push_exact: bool = False
    rok_push_release_settle_s: float | None = None  # ROK server CPU-busy time after the push (its onward release)
    live_s: float = 0.0  # live exchange: from starting the US server (nothing released yet) to the last object at ROK
    live_release_done_s: float | None = None  # when the US server's releaser had released everything to rok
    live_rows: int = 0
    live_exact: bool = False
    live_cpu_s: dict = field(default_factory=dict)  # CPU seconds (user + system) each process tree used in the live window
    us_server_rss_mb: float = 0.0
    latency_s: list[float] = field(default_factory=list)
    latency_median_s: float | None = None
    latency_max_s: float | None = None
    ref_n: int = 0
    ref_ours_s: list[float] = field(default_factory=list)
    ref_medallion_s: float | None = None
    ref_medallion_push_s: float | None = None
    loadavg: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profiles: dict = field(default_factory=dict)

    def rate(self, secs: float) -> float:
        return self.n / secs if secs else 0.0


def full_sync(args: argparse.Namespace, work: Path, fig: Figures, procs: list) -> tuple[NodeProcess, NodeProcess, Path]:
    us_dir, rok1_dir, rok2_dir = work / "us", work / "rok-pull", work / "rok-push"
    for node, d in (("us", us_dir), ("rok", rok1_dir), ("rok", rok2_dir)):
        provision(node, d)

    print(f"-- generating {fig.n:,} indicators ...", flush=True)
    objs = mixed_indicators(fig.n, args.seed, fig.mix)
    fig.loadavg["start"] = [round(x, 2) for x in os.getloadavg()]

    # 1. load (in process, batches of 1000)
    opened = open_node("us", data_dir=us_dir)
    own = opened.node.config.own_collection.id
    t0 = time.perf_counter()
    for i in range(0, len(objs), 1000):
        res = opened.store.add_objects(own, objs[i : i + 1000])
        if res.failures:
            raise RuntimeError(f"load failures: {res.failures[:3]}")
    fig.load_s = time.perf_counter() - t0
    print(f"   load {fig.load_s:.1f} s ({fig.rate(fig.load_s):,.0f}/s)", flush=True)
    del objs

    # 2. release under policy (in process; before the US server starts, whose background releaser would race it)
    prof = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    tally = release_all(opened)
    if prof:
        prof.disable()
    fig.release_s = time.perf_counter() - t0
    fig.release_tally = {p: asdict(r) for p, r in tally.items()}
    rok_read = opened.node.config.partner_collection("rok", "partner-read").id
    fig.released_to_rok = opened.store.count(rok_read, all_versions=True)
    opened.close()
    if prof:
        fig.profiles["release (cProfile, in process)"] = profile_summary_pstats(prof)
    print(f"   release {fig.release_s:.1f} s ({fig.rate(fig.release_s):,.0f}/s): {fig.release_tally}", flush=True)
    released_keys, released_by = inbox_census(us_dir, "us", "rok-read")

    # 3. pull: the ROK agent pulls from the running US server
    us = NodeProcess("us", us_dir).start()
    procs.append(us)
    us_rss = RssSampler(us.proc.pid).start()  # type: ignore[union-attr]
    wait_idle(us.proc.pid, 60)  # the server's start-up catch-up release (nothing to do: bookmarks are at the end)
    fig.loadavg["before pull"] = [round(x, 2) for x in os.getloadavg()]
    print("-- pull (ROK agent) ...", flush=True)
    prof_path = args.profile / "pull.raw" if args.profile else None
    fig.pull_s, done, fig.pull_agent_rss_mb = run_agent(
        sync_cmd(work, "rok", rok1_dir, us.url, "--once", "--direction", "pull", "--verbose"), args.timeout, prof_path
    )
    fig.pull_summary = summary_of(done.stderr)
    keys, by = inbox_census(rok1_dir, "rok", "us-inbox")
    fig.pull_inbox_rows, fig.pull_inbox_by_tlp, fig.pull_exact = len(keys) + by.get("(duplicate rows)", 0), dict(by), keys == released_keys
    print(f"   pull {fig.pull_s:.1f} s ({fig.rate(fig.pull_s):,.0f} N/s); inbox {dict(by)}; exact={fig.pull_exact}; {fig.pull_summary}", flush=True)
    if prof_path:
        fig.profiles["pull (py-spy, ROK agent)"] = profile_summary_raw(prof_path)

    # 4. push: the US agent pushes the same released set to a fresh ROK node
    rok = NodeProcess("rok", rok2_dir).start()
    procs.append(rok)
    wait_idle(rok.proc.pid, 60)
    fig.loadavg["before push"] = [round(x, 2) for x in os.getloadavg()]
    print("-- push (US agent -> fresh ROK node) ...", flush=True)
    rok_rss = RssSampler(rok.proc.pid).start()  # type: ignore[union-attr]
    prof_path = args.profile / "push.raw" if args.profile else None
    rok_prof = None
    if args.profile:  # the receiving server too: one gunicorn worker
        worker = next(iter(__import__("psutil").Process(rok.proc.pid).children(recursive=True)), None)
        if worker is not None:
            rok_prof = subprocess.Popen(
                [str(Path(PY).parent / "py-spy"), "record", "--format", "raw", "-r", "50", "-o", str(args.profile / "push-rok-server.raw"),
                 "--pid", str(worker.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
    fig.push_s, done, fig.push_agent_rss_mb = run_agent(
        sync_cmd(work, "us", us_dir, rok.url, "--once", "--direction", "push", "--verbose"), args.timeout, prof_path
    )
    fig.push_summary = summary_of(done.stderr)
    t_idle = wait_idle(rok.proc.pid, 600)
    fig.rok_push_release_settle_s = round(t_idle, 1)
    if rok_prof is not None:
        rok_prof.send_signal(signal.SIGINT)
        try:
            rok_prof.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process_group(rok_prof)
        fig.profiles["push (py-spy, receiving ROK server worker, incl. its background release)"] = profile_summary_raw(
            args.profile / "push-rok-server.raw"
        )
    rok_rss.stop()
    keys, by = inbox_census(rok2_dir, "rok", "us-inbox")
    fig.push_inbox_rows, fig.push_inbox_by_tlp, fig.push_exact = len(keys) + by.get("(duplicate rows)", 0), dict(by), keys == released_keys
    print(f"   push {fig.push_s:.1f} s ({fig.rate(fig.push_s):,.0f} N/s); inbox {dict(by)}; exact={fig.push_exact}; {fig.push_summary}; "
          f"ROK server busy {t_idle:.1f} s more after the agent exited", flush=True)
    if prof_path:
        fig.profiles["push (py-spy, US agent)"] = profile_summary_raw(prof_path)
    fig.notes.append(f"released to rok (rok-read rows by TLP): {dict(released_by)}")
    fig.notes.append(f"ROK peak RSS during push: {rok_rss.peak_tree / 2**20:.0f} MB (server tree)")
    us_rss.stop()
    fig.us_server_rss_mb = us_rss.peak_tree / 2**20
    return us, rok, rok2_dir


def green_indicator(i: int) -> dict:
    now = datetime.now(UTC)
    ts = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return {
        "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}", "created_by_ref": US_IDENTITY,
        "created": ts, "modified": ts, "name": f"latency probe {i}", "description": "sync_bench single-object latency probe",
        "indicator_types": ["malicious-activity"], "pattern": f"[domain-name:value = 'probe-{uuid.uuid4().hex[:12]}.example']",
        "pattern_type": "stix", "pattern_version": "2.1", "valid_from": ts, "labels": ["dprk"],
        "object_marking_refs": [TLP["GREEN"]],
    }


def latency(args: argparse.Namespace, work: Path, us: NodeProcess, rok: NodeProcess, us_dir: Path, fig: Figures) -> None:
    from taxii2client.v21 import Collection

    def coll(proc: NodeProcess, alias: str, node: str) -> Collection:
        c = Collection(proc.collection_url(alias), user="analyst", password=PASSWORDS[node]["analyst"])
        c._conn.session.trust_env = False
        c._conn.session.mount("http://", TimeoutAdapter(30))
        return c

    post = coll(us, "us-intel", "us")
    watch = coll(rok, "us-inbox", "rok")
    agent = subprocess.Popen(
        sync_cmd(work, "us", us_dir, rok.url, "--interval", "1", "--direction", "push"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=REPO, start_new_session=True,
    )
    try:
        time.sleep(3)  # the agent's first cycle
        if agent.poll() is not None:
            raise RuntimeError(f"the --interval agent exited: {agent.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        rng = random.Random(args.seed)
        for i in range(args.latency_reps):
            obj = green_indicator(i)
            t0 = time.perf_counter()
            status = post.add_objects({"objects": [obj]}, timeout=30)
            if status.success_count != 1:
                raise RuntimeError(f"probe POST not a success: {status}")
            while True:
                env = watch.get_objects(id=obj["id"])
                if env.get("objects"):
                    break
                if time.perf_counter() - t0 > args.latency_timeout:
                    raise RuntimeError(f"probe {obj['id']} did not reach ROK's us-inbox within {args.latency_timeout:.0f} s")
                time.sleep(0.02)
            fig.latency_s.append(round(time.perf_counter() - t0, 3))
            print(f"   probe {i + 1}: {fig.latency_s[-1]:.2f} s", flush=True)
            time.sleep(rng.uniform(0.3, 1.3))  # land at different points of the agent's 1 s cycle
    finally:
        stop_process_group(agent)
    fig.latency_median_s = statistics.median(fig.latency_s)
    fig.latency_max_s = max(fig.latency_s)


def reference(args: argparse.Namespace, work: Path, fig: Figures) -> None:
    """PartnerClient.pages over the same ``ref_n`` objects: medallion memory backend vs our node."""
    n = fig.ref_n
    objs = make_indicators(n, args.seed + 7)  # all GREEN, US-created
    # ours: us-intel as analyst, loaded (and released) before the server starts
    d = work / "ref-ours"
    provision("us", d)
    opened = open_node("us", data_dir=d)
    opened.store.add_objects(opened.node.config.own_collection.id, objs)
    release_all(opened)
    opened.close()
    ours = NodeProcess("us", d).start()
    try:
        wait_idle(ours.proc.pid, 60)  # type: ignore[union-attr]
        for _ in range(3):
            client = PartnerClient(ours.url, "analyst", PASSWORDS["us"]["analyst"], timeout=60)
            client._conn.session.trust_env = False
            t0 = time.perf_counter()
            got = sum(len(p.objects) for p in client.pages("us-intel"))
            fig.ref_ours_s.append(time.perf_counter() - t0)
            client.close()
            if got != n:
                fig.notes.append(f"reference, ours: pulled {got} of {n}")
    finally:
        ours.stop()
    # medallion 3.0.0 memory backend (node_bench's set-up), the same objects pushed untimed-ish
    med = start_medallion(work)
    try:
        c = client_collection(med.collection_url, timeout=args.ref_timeout)
        t0 = time.perf_counter()
        for i in range(0, n, 500):
            c.add_objects({"objects": objs[i : i + 500]})
        fig.ref_medallion_push_s = time.perf_counter() - t0
        api_root = med.collection_url.split("collections/")[0]
        coll_id = med.collection_url.rstrip("/").rsplit("/", 1)[-1]
        client = PartnerClient(api_root, MED_USER, MED_PASSWORD, timeout=args.ref_timeout)
        client._conn.session.trust_env = False
        t0 = time.perf_counter()
        got = sum(len(p.objects) for p in client.pages(coll_id))
        fig.ref_medallion_s = time.perf_counter() - t0
        client.close()
        if got != n:
            fig.notes.append(f"reference, medallion: pulled {got} of {n}")
    finally:
        stop_process_group(med.proc)


# ---------------------------------------------------------------------------------------------
# report


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its living descendants (0 if gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(p.cpu_times()[:2])
    return total


def live_exchange(args: argparse.Namespace, work: Path, fig: Figures, procs: list, released_keys: set) -> None:
    """End to end as deployed: both servers and the ROK agent run at once, nothing released beforehand.

    A fresh US node holds the N objects unreleased; the ROK server is up; then
    the US server starts (its background releaser judges everything under
    policy) and at the same moment the ROK agent with ``--interval 0.5
    --direction pull``.  Release, serving, pulling and the ROK server's onward
    release to jp overlap.  The clock stops when the ROK ``us-inbox`` holds
    every released object (polled read-only every 0.1 s).
    """
    us_dir, rok_dir = work / "us-live", work / "rok-live"
    provision("us", us_dir)
    provision("rok", rok_dir)
    objs = mixed_indicators(fig.n, args.seed, fig.mix)
    opened = open_node("us", data_dir=us_dir)
    own = opened.node.config.own_collection.id
    rok_read = opened.node.config.partner_collection("rok", "partner-read").id
    for i in range(0, len(objs), 1000):
        opened.store.add_objects(own, objs[i : i + 1000])
    opened.close()
    del objs
    ropened = open_node("rok", data_dir=rok_dir)
    inbox = ropened.node.config.partner_collection("us", "partner-inbox").id
    ropened.close()
    expected = len(released_keys)
    rok = NodeProcess("rok", rok_dir).start()
    procs.append(rok)
    wait_idle(rok.proc.pid, 60)  # type: ignore[union-attr]
    fig.loadavg["before live"] = [round(x, 2) for x in os.getloadavg()]
    print(f"-- live exchange: US server + ROK agent (--interval 0.5) started together, {expected:,} objects to arrive ...", flush=True)
    count = "SELECT count(*) FROM objects WHERE coll = (SELECT key FROM collections WHERE collection_id = ?)"
    rok_cpu0 = tree_cpu(rok.proc.pid)  # type: ignore[union-attr]
    t0 = time.perf_counter()
    us = NodeProcess("us", us_dir).start()
    procs.append(us)
    agent_log = (work / "live-agent.log").open("w")
    agent = subprocess.Popen(
        sync_cmd(work, "rok", rok_dir, us.url, "--interval", "0.5", "--direction", "pull"),
        stdout=subprocess.DEVNULL, stderr=agent_log, stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True,
    )
    rok_db = sqlite3.connect(f"file:{rok_dir / 'cti-exchange.sqlite'}?mode=ro", uri=True)
    us_db = sqlite3.connect(f"file:{us_dir / 'cti-exchange.sqlite'}?mode=ro", uri=True)
    try:
        arrived = 0
        while time.perf_counter() - t0 < args.timeout:
            time.sleep(0.1)
            arrived = rok_db.execute(count, (inbox,)).fetchone()[0]
            if fig.live_release_done_s is None and us_db.execute(count, (rok_read,)).fetchone()[0] >= expected:
                fig.live_release_done_s = time.perf_counter() - t0
            if arrived >= expected:
                break
            if agent.poll() is not None:
                raise RuntimeError(f"live agent exited ({agent.returncode}): {(work / 'live-agent.log').read_text()[-2000:]}")
        fig.live_s = time.perf_counter() - t0
        # where the 2 cores went: at 10,000 objects/s the whole exchange has 2 x N / 10,000 CPU seconds
        fig.live_cpu_s = {
            "us server": round(tree_cpu(us.proc.pid), 1),  # type: ignore[union-attr]
            "rok server": round(tree_cpu(rok.proc.pid) - rok_cpu0, 1),  # type: ignore[union-attr]
            "rok agent": round(tree_cpu(agent.pid), 1),
        }
    finally:
        rok_db.close()
        us_db.close()
        stop_process_group(agent)
        agent_log.close()
        us.stop()
        rok.stop()
    keys, by = inbox_census(rok_dir, "rok", "us-inbox")
    fig.live_rows, fig.live_exact = len(keys) + by.get("(duplicate rows)", 0), keys == released_keys
    print(f"   live {fig.live_s:.1f} s ({fig.rate(fig.live_s):,.0f} N/s); US release done at {fig.live_release_done_s or 0:.1f} s; "
          f"inbox {dict(by)}; exact={fig.live_exact}", flush=True)
    cpu = sum(fig.live_cpu_s.values())
    print(f"   CPU in the live window: {fig.live_cpu_s} = {cpu:.1f} s on {os.cpu_count()} CPUs "
          f"(at most {(os.cpu_count() or 1) * fig.live_s:.1f}); at 10,000 objects/s it would have "
          f"{(os.cpu_count() or 1) * fig.n / 10_000:.1f}", flush=True)


def report(fig: Figures) -> tuple[str, list[dict]]:
    n = fig.n
    e2e_pull = n / (fig.release_s + fig.pull_s) if fig.pull_s else None
    e2e_push = n / (fig.release_s + fig.push_s) if fig.push_s else None
    rows = [
        ("load into us-intel (in process, batches of 1000)", fig.load_s, f"{n / fig.load_s:,.0f}", "reported separately"),
        ("release under policy (release_all: rok + jp)", fig.release_s, f"{n / fig.release_s:,.0f}",
         f"rok: {fig.release_tally.get('rok', {}).get('shared')} shared / {fig.release_tally.get('rok', {}).get('withheld')} withheld; "
         f"jp: {fig.release_tally.get('jp', {}).get('shared')} / {fig.release_tally.get('jp', {}).get('withheld')}"),
        ("pull (ROK agent subprocess, --once)", fig.pull_s, f"{n / fig.pull_s:,.0f}" if fig.pull_s else "-",
         f"{fig.pull_inbox_rows:,} rows in us-inbox, exact match: {fig.pull_exact}; agent peak RSS {fig.pull_agent_rss_mb:.0f} MB"),
        ("push (US agent subprocess, --once, fresh ROK)", fig.push_s, f"{n / fig.push_s:,.0f}" if fig.push_s else "-",
         f"{fig.push_inbox_rows:,} rows in us-inbox, exact match: {fig.push_exact}; agent peak RSS {fig.push_agent_rss_mb:.0f} MB"),
        ("end to end: release + pull", fig.release_s + fig.pull_s, f"{e2e_pull:,.0f}" if e2e_pull else "-", "N / (release + pull)"),
        ("end to end: release + push", fig.release_s + fig.push_s, f"{e2e_push:,.0f}" if e2e_push else "-", "N / (release + push)"),
    ]
    e2e_live = n / fig.live_s if fig.live_s else None
    if e2e_live:
        rows.append((
            "**end to end, live** (US server releasing + ROK agent pulling at once)", fig.live_s, f"{e2e_live:,.0f}",
            f"N / (US server start -> last object at ROK); US release done at {fig.live_release_done_s or 0:.1f} s; "
            f"{fig.live_rows:,} rows, exact match: {fig.live_exact}; CPU s used: {fig.live_cpu_s}",
        ))
    out = [f"| phase (N = {n:,}) | seconds | objects/s (N / s) | check |", "|---|---|---|---|"]
    out += [f"| {a} | {b:.1f} | {c} | {d} |" for a, b, c, d in rows]
    if fig.latency_s:
        out.append(
            f"| single object, --interval 1 (x{len(fig.latency_s)}) "
            f"| median {fig.latency_median_s:.2f}, max {fig.latency_max_s:.2f} | - | {fig.latency_s} |"
        )
    if fig.ref_medallion_s and fig.ref_ours_s:
        ours = statistics.median(fig.ref_ours_s)
        out.append(
            f"| reference: PartnerClient.pages, {fig.ref_n:,} objects, medallion memory | {fig.ref_medallion_s:.2f} "
            f"| {fig.ref_n / fig.ref_medallion_s:,.0f} | 1 walk |"
        )
        out.append(
            f"| reference: same, our node (us-intel) | {ours:.3f} | {fig.ref_n / ours:,.0f} "
            f"| median of 3; ours is {fig.ref_medallion_s / ours:,.0f}x faster |"
        )
    withheld_leaked = {k: v for k, v in {**fig.pull_inbox_by_tlp, **fig.push_inbox_by_tlp}.items() if k in WITHHELD_FROM_ROK}
    targets = [
        {"target": "end to end >= 5,000 objects/s (live: release, serve, pull at once)", "value": e2e_live,
         "met": None if e2e_live is None else e2e_live >= TARGET_E2E},
        {"target": "end to end >= 5,000 objects/s (release + pull)", "value": e2e_pull, "met": None if e2e_pull is None else e2e_pull >= TARGET_E2E},
        {"target": "end to end >= 5,000 objects/s (release + push)", "value": e2e_push, "met": None if e2e_push is None else e2e_push >= TARGET_E2E},
        {"target": "single object < 2 s (max of probes)", "value": fig.latency_max_s,
         "met": None if fig.latency_max_s is None else fig.latency_max_s < TARGET_LATENCY},
        {"target": "ROK inbox == what US released to rok; no AMBER+STRICT / RED", "value": None,
         "met": fig.pull_exact and fig.push_exact and (fig.live_exact or not fig.live_s) and not withheld_leaked},
    ]
    return "\n".join(out), targets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="objects to sync (default 100,000)")
    p.add_argument("--quick", action="store_true", help="N = 10,000")
    p.add_argument("--mix", default="40,30,20,5,5", help="percent CLEAR,GREEN,AMBER,AMBER+STRICT,RED (default 40,30,20,5,5)")
    p.add_argument("--latency-reps", type=int, default=5)
    p.add_argument("--latency-timeout", type=float, default=30.0)
    p.add_argument("--ref-n", type=int, default=2000, help="objects for the medallion reference (default 2,000; 0 = skip)")
    p.add_argument("--ref-timeout", type=float, default=300.0)
    p.add_argument("--timeout", type=float, default=1800.0, help="time limit per agent run, seconds")
    p.add_argument("--seed", type=int, default=4004)
    p.add_argument("--profile", type=Path, metavar="DIR", help="profile: cProfile for release, py-spy for the agents and the receiving server")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    p.add_argument("--no-live", action="store_true", help="skip the live exchange phase (servers and agent at once)")
    args = p.parse_args(argv)
    n = 10_000 if args.quick else args.n
    shares = [float(x) / 100 for x in args.mix.split(",")]
    if len(shares) != 5:
        p.error("--mix needs 5 numbers")
    fig = Figures(n=n, mix=dict(zip(TLP, shares, strict=True)), ref_n=args.ref_n)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    _src, code = prepare_source(None, False)
    changes = f", uncommitted changes in: {', '.join(code['uncommitted_changes'])}" if code["uncommitted_changes"] else ""
    print(f"code under test: working tree at {code['head'][:12]}" + changes)
    print(f"sync benchmark: N={n:,}, mix {fig.mix}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix=f"cti-sync-bench-{n}-"))
    procs: list[NodeProcess] = []
    t_start = time.monotonic()
    try:
        us, rok, _ = full_sync(args, work, fig, procs)
        released_keys, _by = inbox_census(work / "us", "us", "rok-read")
        if args.latency_reps:
            print("-- single-object latency (US agent --interval 1 --direction push) ...", flush=True)
            wait_idle(us.proc.pid, 120)  # type: ignore[union-attr]
            latency(args, work, us, rok, work / "us", fig)
        us.stop()
        rok.stop()
        if not args.no_live:
            live_exchange(args, work, fig, procs, released_keys)
        if args.ref_n:
            print(f"-- reference: PartnerClient.pages over {args.ref_n:,} objects, medallion memory vs ours ...", flush=True)
            fig.loadavg["before reference"] = [round(x, 2) for x in os.getloadavg()]
            reference(args, work, fig)
    finally:
        for proc in procs:
            proc.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"data kept in {work}")
    table, targets = report(fig)
    print()
    print(table)
    print("\nIssue 4 targets:")
    for t in targets:
        mark = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[t["met"]]
        val = "" if t["value"] is None else f": {t['value']:,.2f}"
        print(f"  [{mark:>6}] {t['target']}{val}")
    for note in fig.notes:
        print(f"  note: {note}")
    print(f"  load average: {fig.loadavg}; total wall {time.monotonic() - t_start:.0f} s")
    for name, lines in fig.profiles.items():
        print(f"\nProfile: {name}")
        print("\n".join("  " + ln for ln in lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "when": datetime.now(UTC).isoformat(timespec="seconds"),
                                               "code": code, "figures": asdict(fig), "targets": targets}, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    ok = fig.pull_exact and fig.push_exact and (fig.live_exact or args.no_live)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
