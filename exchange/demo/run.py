"""The demo exchange: two partner nodes, seeded, syncing under policy, then a leak check.

``run_demo`` starts the US and ROK nodes as local server processes on free
loopback ports (embedded default: SQLite under a temporary or ``--keep`` dir),
gives every configured account a random password, loads the seed content,
runs pull and push both ways through ``taxii2-client``, and then proves the
policy held: every object version the audit log says was withheld is looked
up at the partner through every TAXII read endpoint, and every redacted field
is checked absent.  ``Exchange`` abstracts where the nodes run, so the
docker-compose ``demo`` service drives containers with the same code.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from exchange.config import collections_dir
from exchange.demo.changes import cdn_withdrawal, withdrawal_leaks, withdrawn_counts
from exchange.demo.procs import NodeProcess, start_all, stop_all
from exchange.demo.sightings import sighting_round
from exchange.errors import ConfigError, ExchangeError
from exchange.node.ops import OpenNode, add_account, open_node
from exchange.sharing.client import PartnerClient
from exchange.sharing.release import release_all
from exchange.sharing.sync import run_cycle
from exchange.stix import SCO_TYPES
from exchange.storage import audit
from exchange.storage.store import DB_FILE, Store

NODES = ("us", "rok")
PARTNER_OF = {"us": "rok", "rok": "us"}


def seed_files(node: str) -> list[Path]:
    """The bundles a node is seeded with: ATT&CK, published indicators, exercise content.

    Each node loads ATT&CK itself, as each CERT takes it from MITRE: a partner's copy of a
    public source's object is accepted only as an exact copy of a version the node loaded
    (``inbound.creator-is-partner``), so nobody can pass off text as MITRE's.
    """
    return shared_seed_files() + sorted((collections_dir() / node / "seed").glob("*.json"))


def shared_seed_files() -> list[Path]:
    """The bundles every node loads alike: the parties' identities and MITRE ATT&CK (a public source)."""
    base = collections_dir()
    return [base / "identities.json", base / "attack-dprk" / "attack-dprk.json"]


def load_bundle_file(opened: OpenNode, path: Path) -> int:
    """Load one bundle into the node's own collection (objects are checked first); new rows."""
    from exchange.errors import BadRequest
    from exchange.stix import check_object, read_bundle

    objects = read_bundle(path)
    bad = [(o, p) for o in objects if (p := check_object(o)) is not None]
    if bad:
        raise BadRequest(f"{path}: {len(bad)} invalid objects; first: {bad[0][1]}")
    return opened.store.add_objects(opened.node.config.own_collection.id, objects, origin="local:cli").added


@dataclass
class NodeHandle:
    """A running node the demo can reach: its API root URL and data."""

    name: str
    url: str
    data_dir: Path | None
    passwords: dict[str, str]
    process: NodeProcess | None = None
    database: str | None = None  # a database URL, when the node does not use the SQLite file in data_dir


@dataclass
class Exchange:
    """Both nodes of a demo exchange."""

    nodes: dict[str, NodeHandle] = field(default_factory=dict)
    pki: Path | None = None  # the demo PKI (``cti-exchange pki init``) when the nodes serve HTTPS

    def client(self, node: str, account: str) -> PartnerClient:
        """A taxii2-client connection to ``node`` as ``account`` (over HTTPS: verified, with the account's client certificate if it has one)."""
        handle = self.nodes[node]
        return PartnerClient(handle.url, account, handle.passwords.get(account, ""), **self.tls_options(node, account))

    def tls_options(self, node: str, account: str) -> dict[str, Any]:
        """``verify``/``cert`` for a connection to ``node`` as ``account``."""
        if self.pki is None or not self.nodes[node].url.lower().startswith("https://"):
            return {}
        out: dict[str, Any] = {"verify": str(self.pki / "ca.crt")}
        cert = self.pki / f"{account}@{node}.crt"
        if cert.is_file():
            out["cert"] = (str(cert), str(self.pki / f"{account}@{node}.key"))
        return out

    @property
    def transport(self) -> str:
        https = all(h.url.lower().startswith("https://") for h in self.nodes.values())
        return "https (mutual TLS)" if https and self.pki is not None else "https" if https else "http"


def provision(name: str, data_dir: Path) -> dict[str, str]:
    """Random passwords for every configured account of a node; seed its collections."""
    opened = open_node(name, data_dir=data_dir)
    passwords = {}
    try:
        for acct in opened.node.config.accounts:
            passwords[acct.name] = secrets.token_urlsafe(18)
            add_account(opened, acct.name, passwords[acct.name], [], [])
        for path in seed_files(name):
            load_bundle_file(opened, path)
        release_all(opened)
    finally:
        opened.close()
    return passwords


def tls_args(pki: Path, node: str) -> tuple[str, ...]:
    """``serve`` options for ``node`` with the demo PKI: HTTPS and mutual TLS."""
    return ("--certfile", str(pki / f"{node}.crt"), "--keyfile", str(pki / f"{node}.key"), "--client-ca", str(pki / "ca.crt"))


@contextmanager
def local_exchange(workdir: Path, *, plain_http: bool = False) -> Iterator[Exchange]:
    """Both nodes as local server processes with data under ``workdir`` (HTTPS and mutual TLS unless ``plain_http``)."""
    from exchange.node.pki import init_pki

    ex = Exchange()
    pki = workdir / ("signing-pki" if plain_http else "pki")  # origin-signing keys either way; TLS unless plain_http
    init_pki(pki, NODES, days=2)
    if not plain_http:
        ex.pki = pki
    try:
        with signing_pki(pki):
            yield from _start_nodes(ex, workdir)
    finally:
        stop_all(h.process for h in ex.nodes.values() if h.process is not None)


@contextmanager
def signing_pki(pki: Path) -> Iterator[None]:
    """Nodes started and stores opened inside sign with the keys in ``pki`` (``CTI_EXCHANGE_PKI_DIR``, restored after)."""
    from exchange.node.signing import PKI_ENV

    old = os.environ.get(PKI_ENV)
    os.environ[PKI_ENV] = str(pki)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PKI_ENV, None)
        else:
            os.environ[PKI_ENV] = old


def _start_nodes(ex: Exchange, workdir: Path) -> Iterator[Exchange]:
    try:
        procs = {}
        for name in NODES:
            data = workdir / name
            procs[name] = (NodeProcess(name, data, extra_args=tls_args(ex.pki, name) if ex.pki else ()), provision(name, data))
        start_all(proc for proc, _passwords in procs.values())  # side by side
        for name, (proc, passwords) in procs.items():
            ex.nodes[name] = NodeHandle(name, proc.url, proc.data_dir, passwords, proc)
        yield ex
    finally:
        stop_all(h.process for h in ex.nodes.values() if h.process is not None)


def read_secrets(secrets_dir: Path, node: str) -> dict[str, str]:
    """Account passwords of ``node`` from ``DIR/<node>/<account>`` files (see ``write_secrets``)."""
    folder = Path(secrets_dir) / node
    if not folder.is_dir():
        raise ConfigError(f"no credentials for node {node!r} in {folder}")
    return {f.name: f.read_text(encoding="utf-8").strip() for f in sorted(folder.iterdir()) if f.is_file() and not f.name.endswith(".tmp")}


def write_secrets(secrets_dir: Path) -> list[Path]:
    """Random passwords for every configured account of both nodes, as ``DIR/<node>/<account>`` (0600).

    Existing files are kept, so running it again never changes a deployment's credentials.
    """
    from exchange.config import load_node

    written = []
    for name in NODES:
        folder = Path(secrets_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        for acct in load_node(name).config.accounts:
            path = folder / acct.name
            if not path.exists():
                _write_private(path, secrets.token_urlsafe(18) + "\n")
                written.append(path)
    # PostgreSQL superuser passwords for the optional `postgres` compose profile, and libpq
    # password files (one per node, one for the demo) so no password appears in a URL
    db = Path(secrets_dir) / "db"
    db.mkdir(parents=True, exist_ok=True)
    lines = {}
    for name in NODES:
        path = db / name
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(18) + "\n")
            written.append(path)
        lines[name] = f"{name}-db:5432:*:postgres:{path.read_text().strip()}\n"
        _write_private(db / f"{name}.pgpass", lines[name])
    _write_private(db / "all.pgpass", "".join(lines.values()))
    return written


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (0600), replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def remote_exchange(
    urls: dict[str, str], secrets_dir: Path, data_dirs: dict[str, Path] | None = None, databases: dict[str, str | None] | None = None
) -> Exchange:
    """Nodes that run elsewhere (e.g. containers), with passwords from ``secrets_dir`` (and its ``pki/``, if any)."""
    ex = Exchange(pki=Path(secrets_dir) / "pki" if (Path(secrets_dir) / "pki" / "ca.crt").is_file() else None)
    for name in NODES:
        ex.nodes[name] = NodeHandle(
            name, urls[name], (data_dirs or {}).get(name), read_secrets(secrets_dir, name), database=(databases or {}).get(name) or None
        )
    return ex


def seed_over_taxii(ex: Exchange, *, envelope: int = 500) -> dict[str, int]:
    """Post each node's seed bundles to its own collection as its analyst (the node releases them).

    What every node loads alike (identities, ATT&CK) goes to every node first: a partner's copy of
    it is accepted only once the receiving node holds the same version itself, so the sync agents,
    already running, would otherwise deliver some of it before the receiver loaded it (refused:
    ``inbound.creator-is-partner``; ``wait_for_agents`` counts such refusals).
    """
    from exchange.stix import read_bundle

    counts = dict.fromkeys(NODES, 0)
    plan = [(name, path) for name in NODES for path in shared_seed_files()]
    plan += [(name, path) for name in NODES for path in seed_files(name) if path not in shared_seed_files()]
    clients = {name: ex.client(name, "analyst") for name in NODES}
    try:
        for name, path in plan:
            objects = read_bundle(path)
            for i in range(0, len(objects), envelope):
                status = clients[name].push(f"{name}-intel", objects[i : i + envelope])
                if status["failure_count"]:
                    raise ExchangeError(f"seeding {name} from {path.name}: {status['failures'][0]}")
                counts[name] += len(objects[i : i + envelope])
    finally:
        for client in clients.values():
            client.close()
    return counts


def wait_for_agents(ex: Exchange, *, timeout: float = 180.0, settle: float = 3.0) -> dict[str, Any]:
    """Wait until each node's inbox holds everything the partner's read collection offers it.

    An offered version the receiving node's inbound policy refused (its audit's ``inbound-reject``,
    read where the demo can open that node's data) counts as settled and is reported as ``refused``.
    """
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    stable_since = None
    missing: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        state = {}
        for name in NODES:
            partner = PARTNER_OF[name]
            offered = _manifest_keys(ex, name, partner, f"{partner}-read")
            arrived = _manifest_keys(ex, partner, "analyst", f"{name}-inbox") & offered
            refused = (_refused_keys(ex.nodes[partner], name) & offered) - arrived
            state[f"{name}->{partner}"] = {"offered": len(offered), "arrived": len(arrived)} | ({"refused": len(refused)} if refused else {})
            missing[f"{name}->{partner}"] = sorted(i for i, _v in offered - arrived - refused)[:5]
        done = all(v["offered"] and v["arrived"] + v.get("refused", 0) == v["offered"] for v in state.values())
        if state != last:
            stable_since, last = time.monotonic(), state
        if done and stable_since is not None and time.monotonic() - stable_since >= settle:
            return state
        time.sleep(1.0)
    lost = {k: v for k, v in missing.items() if v}
    raise ExchangeError(
        f"the sync agents did not deliver everything within {timeout:.0f}s: {last}; not arrived (first ids): {lost}"
        " (the receiving node's `cti-exchange audit show --event inbound-reject` tells whether its policy refused them)"
    )


def _refused_keys(receiver: NodeHandle, sender: str) -> set[tuple[str, str | None]]:
    """The object versions ``receiver``'s inbound policy refused from ``sender`` (empty where its data cannot be opened here)."""
    if receiver.database is None and (receiver.data_dir is None or not (Path(receiver.data_dir) / DB_FILE).exists()):
        return set()
    store = Store.open(data_dir=receiver.data_dir, database=receiver.database)
    try:
        return {
            (e["object_id"], None if e["object_id"].split("--")[0] in SCO_TYPES else e["version"])
            for e in audit.select_entries(store, event=("inbound-reject",), partner=sender) if isinstance(e["object_id"], str)
        }
    finally:
        store.close()


def _manifest_keys(ex: Exchange, node: str, account: str, alias: str) -> set[tuple[str, str]]:
    client = ex.client(node, account)
    try:
        # objects without created/modified (SCOs) are versioned by date_added at each node: compare their ids
        return {(m["id"], None if m["id"].split("--")[0] in SCO_TYPES else m["version"]) for m in client.manifest(alias)}
    finally:
        client.close()


def sync_both_ways(ex: Exchange, *, rounds: int = 2) -> dict[str, Any]:
    """Each node runs its sync agent against the other (pull and push), ``rounds`` times."""
    summary: dict[str, Any] = {}
    for round_no in range(1, rounds + 1):
        for name in NODES:
            partner = PARTNER_OF[name]
            handle = ex.nodes[name]
            opened = open_node(name, data_dir=handle.data_dir)
            client = ex.client(partner, name)
            try:
                summary[f"round {round_no}: {name}<->{partner}"] = run_cycle(opened, partner, client)
            finally:
                client.close()
                opened.close()
    return summary


def decisions(data_dir: Path | None, database: str | None = None) -> list[dict]:
    """The release decisions in a node's audit log (latest per object version and partner)."""
    store = Store.open(data_dir=data_dir, database=database)
    try:
        latest: dict[tuple, dict] = {}
        for e in audit.entries(store):
            if e["event"] in ("share", "redact", "withhold"):
                latest[(e["partner"], e["object_id"], e["version"])] = e
        return list(latest.values())
    finally:
        store.close()


def leak_check(ex: Exchange) -> dict[str, Any]:
    """Nothing withheld is readable at the recipient by any endpoint; redacted fields are absent.

    For each node and each decision in its audit log that withheld or redacted
    an object version for a recipient, look where that recipient can read:
    the partner node's inbox for this node (what arrived by push or pull) and
    this node's read collection for the recipient (what is offered to pull),
    through Get Objects and Get Object Manifests (all versions, every page) and
    Get An Object and Get Object Versions for the object itself.
    """
    checked = 0
    leaks: list[str] = []
    for name in NODES:
        handle = ex.nodes[name]
        if handle.data_dir is None and handle.database is None:
            continue
        partner = PARTNER_OF[name]
        views = {
            partner: [(partner, "analyst", f"{name}-inbox"), (name, partner, f"{partner}-read")],
            "jp": [(name, "jp", "jp-read")],
        }
        judged = [d for d in decisions(handle.data_dir, handle.database) if d["decision"] in ("withhold", "redact")]
        originals = _originals(name, handle.data_dir, [d for d in judged if d["decision"] == "redact"], handle.database)
        for recipient, places in views.items():
            mine = [d for d in judged if d["partner"] == recipient]
            for node, account, alias in places:
                client = ex.client(node, account)
                try:
                    listed = [o for page in client.pages(alias) for o in page.objects]
                    manifest = {(m["id"], m["version"]) for m in client.manifest(alias)}
                    by_version = {(o["id"], o.get("modified") or o.get("created")): o for o in listed}
                    for d in mine:
                        key = (d["object_id"], d["version"])
                        checked += 1
                        where = f"{alias} on {node} (as {account})"
                        if d["decision"] == "withhold":
                            if key in by_version or key in manifest:
                                leaks.append(f"{key[0]} {key[1]} withheld for {recipient} is listed in {where}")
                            shown = client.reveal(alias, d["object_id"], endpoints=("object", "versions"))
                            if any(_matches_version(i, d["version"]) for items in shown.values() for i in items):
                                leaks.append(f"{key[0]} {key[1]} withheld for {recipient} is readable in {where}")
                        elif key in by_version:
                            original = originals.get((d["detail"].get("source"), key))
                            for path in d["detail"].get("removed_fields", []):
                                if _still_there(original, by_version[key], path):
                                    leaks.append(f"{key[0]}: field {path} redacted for {recipient} is present in {where}")
                finally:
                    client.close()
    # withdrawals (exchange.sharing.lifecycle): no recipient's latest version is one its origin withdrew
    w_checked, w_leaks = withdrawal_leaks(ex, PARTNER_OF)
    checked += w_checked
    leaks += w_leaks
    return {"checked": checked, "leaks": leaks, "ok": not leaks, "withdrawals_checked": w_checked}


def _matches_version(item: Any, version: str | None) -> bool:
    if isinstance(item, str):  # a versions list entry
        return item == version
    if isinstance(item, dict):
        return (item.get("version") or item.get("modified") or item.get("created")) == version
    return False


def _originals(node: str, data_dir: Path | None, redactions: list[dict], database: str | None = None) -> dict[tuple, dict]:
    """The sender's own copies of redacted object versions, keyed by (source alias, (id, version))."""
    opened = open_node(node, data_dir=data_dir, database=database)
    out: dict[tuple, dict] = {}
    try:
        by_source: dict[str, list] = defaultdict(list)
        for d in redactions:
            by_source[d["detail"].get("source")].append((d["object_id"], d["version"]))
        for alias, keys in by_source.items():
            coll = opened.node.config.collection(alias)
            for obj in opened.store.versions_of(coll.id, keys):
                out[(alias, (obj["id"], obj.get("modified") or obj.get("created")))] = obj
    finally:
        opened.close()
    return out


def _still_there(original: dict | None, shared: dict, path: str) -> bool:
    """Whether a removed field (or list element) of ``original`` is still in ``shared``."""
    from exchange.policy.engine import _exists, _get, parse_selector

    parsed = parse_selector(path)
    if parsed is None:
        return False
    if isinstance(parsed[-1], int):  # a removed list element: its value must be gone from that list
        if original is None or not _exists(original, parsed):
            return False
        value = _get(original, parsed)
        parent = parsed[:-1]
        return _exists(shared, parent) and value in _get(shared, parent)
    return _exists(shared, parsed)


def narrative(ex: Exchange) -> dict[str, Any]:
    """What crossed, what was redacted, what stayed home, and why (by clause), per direction."""
    out: dict[str, Any] = {}
    for name in NODES:
        handle = ex.nodes[name]
        if handle.data_dir is None and handle.database is None:
            continue
        per_partner: dict[str, Any] = defaultdict(lambda: {"share": 0, "redact": 0, "withhold": 0, "clauses": Counter(), "examples": []})
        for d in decisions(handle.data_dir, handle.database):
            slot = per_partner[d["partner"]]
            slot[d["decision"]] += 1
            for c in d["clauses"]:
                slot["clauses"][f"{d['decision']}:{c}"] += 1
            if d["decision"] != "share" and len(slot["examples"]) < 12 and d["detail"].get("source") != "attack-dprk":
                slot["examples"].append(
                    {"id": d["object_id"], "type": d["detail"].get("type"), "decision": d["decision"], "clauses": d["clauses"],
                     "reason": d["detail"].get("reason", ""), "removed_fields": d["detail"].get("removed_fields", [])}
                )
        out[name] = {p: {**v, "clauses": dict(v["clauses"])} for p, v in per_partner.items()}
    return out


LAZARUS = "intrusion-set--c93fccb1-e8e8-42cf-ae33-2ad1d183913a"  # MITRE ATT&CK G0032
MOONSTONE_SLEET = "intrusion-set--e6db1e55-b199-4b6b-8633-989345ee45e0"  # MITRE ATT&CK G1036
RGB_ACTOR = "threat-actor--64b0d10e-a214-53f8-b996-a631ec20d718"  # exercise threat actor (collections/us/seed)


def _cycle(ex: Exchange, name: str) -> dict[str, Any]:
    """One sync cycle of ``name``'s agent against its partner (settles joint attributions, releases, pulls, pushes)."""
    partner = PARTNER_OF[name]
    opened = open_node(name, data_dir=ex.nodes[name].data_dir)
    client = ex.client(partner, name)
    try:
        return run_cycle(opened, partner, client)
    finally:
        client.close()
        opened.close()


def _with_node(ex: Exchange, name: str, fn: Any, *, release: bool = True) -> Any:
    opened = open_node(name, data_dir=ex.nodes[name].data_dir)
    try:
        out = fn(opened)
        if release:
            release_all(opened)
        return out
    finally:
        opened.close()


def attribution_rounds(ex: Exchange) -> list[dict[str, Any]]:
    """Two joint-attribution rounds (needs the nodes' data folders, as an analyst at each node would run the CLI).

    1. The US proposes attributing ATT&CK's Lazarus Group to the exercise DPRK
       RGB threat actor, the ROK concurs: the joint report and the joint
       attribution are released, and reach the Japan partner.
    2. The US proposes attributing Moonstone Sleet to the same actor, the ROK
       dissents: nothing leaves the partnership.
    """
    from exchange.sharing import attribution as attr

    plans = [
        {"round": "concur", "subject": LAZARUS, "confidence": 85, "answer": "agree", "answer_confidence": 75,
         "rationale": "EXERCISE DATA: shared infrastructure with RGB-tasked operations.",
         "explanation": "EXERCISE DATA: consistent with ROK holdings."},
        {"round": "dissent", "subject": MOONSTONE_SLEET, "confidence": 55, "answer": "disagree", "answer_confidence": 60,
         "rationale": "EXERCISE DATA: tooling overlap with Lazarus Group.",
         "explanation": "EXERCISE DATA: the overlap is better explained by a separate unit; more consultation needed."},
    ]
    out = []
    for plan in plans:
        rel, _op, revised = _with_node(ex, "us", lambda o, p=plan: attr.propose(
            o, subject=p["subject"], actor=RGB_ACTOR, confidence=p["confidence"], rationale=p["rationale"]))
        _cycle(ex, "us")  # the proposal reaches the ROK inbox
        rok_before = _jp_can_read(ex, rel["id"])
        _with_node(ex, "rok", lambda o, p=plan, r=rel: attr.respond(
            o, relationship=r["id"], opinion=p["answer"], confidence=p["answer_confidence"], explanation=p["explanation"]))
        _cycle(ex, "rok")  # the opinion (and, if joint, the joint products) reach the US
        _cycle(ex, "us")  # the US settles the same joint products and releases them onward
        entry: dict[str, Any] = {"round": plan["round"], "relationship": rel["id"], "version": rel["modified"],
                                 "revised_seed_proposal": revised, "proposal_readable_by_jp_before": rok_before}
        for name in NODES:
            [st] = [e for e in _with_node(ex, name, attr.status, release=False) if e["relationship"] == rel["id"]]
            entry[name] = {k: st[k] for k in ("state", "combined_confidence", "joint_report", "joint_released_to")}
            entry[name]["stances"] = {s["party"]: [s["opinion"], s["confidence"]] for s in st["stances"]}
        entry["subject"], entry["actor"] = st["subject_name"], st["actor_name"]
        report = entry["us"]["joint_report"]
        entry["joint_report_readable_by_jp"] = bool(report) and all(_jp_can_read(ex, report, node) for node in NODES)
        entry["proposal_readable_by_jp"] = _jp_can_read(ex, rel["id"])
        expected_joint = plan["round"] == "concur"
        entry["ok"] = (
            all(entry[n]["state"] == ("joint" if expected_joint else "dissent") for n in NODES)
            and entry["joint_report_readable_by_jp"] == expected_joint
            and not entry["proposal_readable_by_jp"] and not rok_before
        )
        out.append(entry)
    return out


def _jp_can_read(ex: Exchange, object_id: str, node: str | None = None) -> bool:
    """Whether the Japan partner's account sees ``object_id`` through any read endpoint (at ``node``, or at either)."""
    for name in ([node] if node else NODES):
        client = ex.client(name, "jp")
        try:
            if any(client.reveal("jp-read", object_id).values()):
                return True
        finally:
            client.close()
    return False


def run_demo(
    keep: Path | None = None, *, plain_http: bool = False, hold: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """The whole demo (HTTPS with mutual TLS unless ``plain_http``); returns the machine-readable summary.

    ``hold(summary)``: called with the summary while both nodes still run (``demo --keep-running``:
    it tells where their ``/ui/`` pages are and waits); the nodes stop when it returns.
    """
    started = time.monotonic()
    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="cti-exchange-demo-"))
    if keep and workdir.exists() and any(workdir.iterdir()):
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with local_exchange(workdir, plain_http=plain_http) as ex:
            transfers = sync_both_ways(ex)
            # attribution proposals carry an IEP marking with encrypt_in_transit: must: over plain HTTP they stay home
            joint = attribution_rounds(ex) if ex.pki is not None else []
            withdrawal = cdn_withdrawal(ex, _cycle)  # an indicator found to be a CDN address is re-marked TLP:RED
            seen = sighting_round(ex, _jp_can_read)  # ROK's seeded sighting went back to the US only
            story = narrative(ex)
            check = leak_check(ex)
            withdrawn = withdrawn_counts(ex)
            result = {
                "ok": check["ok"] and all(r["ok"] for r in joint) and withdrawal["ok"] and seen["ok"],
                "nodes": {name: h.url for name, h in ex.nodes.items()},
                "ui": ui_urls(ex),
                "data_dir": str(workdir) if keep else None,
                "transfers": transfers,
                "decisions": story,
                "attribution": joint,
                "sighting": seen,
                "leak_check": check,
                "withdrawal": withdrawal,
                "withdrawn": withdrawn,
                "seconds": round(time.monotonic() - started, 1),
                "transport": ex.transport,
            }
            if hold is not None:
                hold(result | {"analyst_passwords": {n: h.passwords.get("analyst", "") for n, h in ex.nodes.items()}})
        return result
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def ui_urls(ex: Exchange) -> dict[str, str]:
    """Each node's web page for its analysts (``/ui/`` on the node's own port)."""
    return {name: h.url.rstrip("/").rsplit("/", 1)[0] + "/ui/" for name, h in ex.nodes.items()}


def run_remote_demo(
    urls: dict[str, str], secrets_dir: Path, data_dirs: dict[str, Path], *, timeout: float = 180.0,
    databases: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """The demo against nodes and sync agents that already run (docker-compose): seed, wait, tell, check."""
    started = time.monotonic()
    ex = remote_exchange(urls, secrets_dir, data_dirs, databases)
    seeded = seed_over_taxii(ex)
    delivered = wait_for_agents(ex, timeout=timeout)
    return {
        "ok": None,
        "nodes": urls,
        "data_dir": None,
        "transfers": {"seeded": seeded, "delivered by the sync agents": delivered},
        "decisions": narrative(ex),
        "attribution": [],  # the attribution rounds need each node's data folder (see attribution_rounds)
        "leak_check": (check := leak_check(ex)),
        "seconds": round(time.monotonic() - started, 1),
        "transport": ex.transport,
    } | {"ok": check["ok"]}


def summary_json(result: dict[str, Any]) -> str:
    return orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
