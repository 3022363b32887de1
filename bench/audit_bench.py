"""Push throughput with the signed (keyed) audit chain against today's unkeyed chain, in one run.

A script, not a test.  Each round starts a real US node (``cti-exchange serve``, 1 worker) on a
fresh data folder and pushes N distinct TLP:GREEN indicators created by ROK into its ``rok-inbox``
as the ``rok`` partner account through ``taxii2-client`` (envelopes of 500): every object is
checked by the inbound rules and gets its ``inbound-accept`` audit entry, and every envelope's
transaction appends to the chain and (keyed) signs the new head with the node's Ed25519 key.

* **keyed**: the working tree (this branch);
* **today**: a clean ``git archive`` of ``--ref-rev`` (default ``650024d``, the branch point: the
  SHA-256 chain with an unsigned head).

The two kinds alternate round by round (ABAB...), so drift in the shared machine's load hits
both; the figure is the median of the rounds per kind and their ratio.

    python bench/audit_bench.py                      # 5 rounds x 10,000 objects each kind
    python bench/audit_bench.py --rounds 3 --n 5000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_bench as nb  # noqa: E402  (the shared helpers: data, server start/stop, client)

ROK = "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
PASSWORD = "audit-bench-rok-password"

_PROVISION = """
import sys
from exchange.config import load_node
from exchange.node.ops import add_account, open_node
opened = open_node("us", data_dir=sys.argv[1])
add_account(opened, "rok", sys.argv[2], [], [])
opened.close()
print(load_node("us").config.collection("rok-inbox").id)
"""


def _wait_ready(api_root: str, deadline: float) -> None:
    import requests

    with requests.Session() as s:
        s.trust_env = False
        while time.monotonic() < deadline:
            try:
                if s.get(api_root, auth=("rok", PASSWORD), headers={"Accept": nb.MEDIA_TAXII}, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{api_root} did not answer in time")


def start(data_dir: Path, source: Path) -> nb.Server:
    """Provision the ``rok`` account and serve node ``us`` from the code under ``source``."""
    env = nb._source_env(source)
    data_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", _PROVISION, str(data_dir), PASSWORD], cwd=source, env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"provisioning failed: {done.stderr[-2000:]}")
    coll_id = done.stdout.strip().splitlines()[-1]
    log_path = data_dir / "server.log"
    cmd = [sys.executable, "-m", "exchange", "serve", "us", "--data-dir", str(data_dir), "--port", "0", "--host", "127.0.0.1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, cwd=source, env=env, start_new_session=True)
    try:
        api_root = nb._read_line_matching(proc, "API root:", time.monotonic() + 60)
        _wait_ready(api_root, time.monotonic() + 30)
    except Exception as exc:
        nb.stop_process_group(proc)
        raise RuntimeError(f"node did not start; log: {log_path.read_text(errors='replace')[-2000:]}") from exc
    return nb.Server(proc, f"{api_root}collections/{coll_id}/", log_path)


def one_round(source: Path, n: int, envelope: int, seed: int) -> dict:
    objs = nb.make_indicators(n, seed)
    for o in objs:
        o["created_by_ref"] = ROK  # the partner's own intelligence: accepted by the inbound rules
    work = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    server = start(work / "us", source)
    try:
        from taxii2client.v21 import Collection

        coll = Collection(server.collection_url, user="rok", password=PASSWORD)
        t0 = time.perf_counter()
        failures = 0
        for i in range(0, n, envelope):
            env = {"objects": objs[i:i + envelope]}
            status = coll.add_objects(env, wait_for_completion=True, poll_interval=1, timeout=60)
            failures += len(env["objects"]) - (status.success_count or 0)
        seconds = time.perf_counter() - t0
        return {"objects": n, "seconds": round(seconds, 3), "per_s": round(n / seconds, 1), "failures": failures}
    finally:
        nb.stop_process_group(server.proc)
        shutil.rmtree(work, ignore_errors=True)


def write_path(n: int, envelope: int, signed: bool, seed: int) -> float:
    """In process, same code both ways: a push's write transaction per envelope (rows, inbound-accept
    entries, chain, head; durable commit), with the node's signer installed or not.  Objects/s."""
    from exchange.node.audit_key import signer_for
    from exchange.node.backend import _inbound_entries
    from exchange.node.ops import open_node
    from exchange.storage import audit

    objs = nb.make_indicators(n, seed)
    for o in objs:
        o["created_by_ref"] = ROK
    work = Path(tempfile.mkdtemp(prefix="audit-bench-wp-"))
    opened = open_node("us", data_dir=work)
    try:
        audit.use_signer(opened.store, signer_for(work) if signed else None)
        inbox = opened.node.config.collection("rok-inbox").id
        t0 = time.perf_counter()
        for i in range(0, n, envelope):
            batch = objs[i:i + envelope]
            with opened.store.transaction() as conn:
                result = opened.store.add_in(conn, inbox, batch)
                audit.append(conn, _inbound_entries("rok", batch, list(result.failures), result))
        return n / (time.perf_counter() - t0)
    finally:
        opened.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="objects per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds per kind (interleaved)")
    p.add_argument("--envelope", type=int, default=500)
    p.add_argument("--ref-rev", default="650024d", help="today's chain: this revision, as a clean git archive")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--write-rounds", type=int, default=10, help="in-process write-path rounds per kind (0: skip)")
    args = p.parse_args(argv)
    ref_src, ref_info = nb.prepare_source(args.ref_rev, keep=False)
    head = nb._git("rev-parse", "HEAD").strip()
    sources = {"keyed": nb.REPO, "today": ref_src}
    runs: dict[str, list[dict]] = {"keyed": [], "today": []}
    try:
        for r in range(args.rounds):
            order = ("keyed", "today") if r % 2 == 0 else ("today", "keyed")
            for kind in order:
                res = one_round(sources[kind], args.n, args.envelope, seed=1000 + r)
                runs[kind].append(res)
                print(f"round {r + 1} {kind:<6} {res['per_s']:>9,.0f} obj/s  ({res['seconds']} s, failures {res['failures']})", flush=True)
    finally:
        shutil.rmtree(ref_src, ignore_errors=True)
    med = {k: statistics.median(x["per_s"] for x in v) for k, v in runs.items()}
    ratio = med["keyed"] / med["today"]
    print()
    print("| chain | head | rounds | N | median push obj/s | min | max |")
    print("|---|---|---|---|---|---|---|")
    for kind, label in (("keyed", f"keyed (working tree at {head[:7]})"), ("today", f"today ({args.ref_rev})")):
        vals = [x["per_s"] for x in runs[kind]]
        print(f"| {label} | {'signed Ed25519' if kind == 'keyed' else 'unsigned'} | {len(vals)} | {args.n:,} | "
              f"{med[kind]:,.0f} | {min(vals):,.0f} | {max(vals):,.0f} |")
    print(f"\nkeyed / today = {ratio:.3f} (target: within 5%, i.e. >= 0.95): {'met' if ratio >= 0.95 else 'MISSED'}")
    wp: dict[str, list[float]] = {"signed": [], "unsigned": []}
    for r in range(args.write_rounds):
        for kind in (("signed", "unsigned") if r % 2 == 0 else ("unsigned", "signed")):
            wp[kind].append(write_path(args.n, args.envelope, kind == "signed", seed=2000 + r))
    wp_ratio = None
    if args.write_rounds:
        wmed = {k: statistics.median(v) for k, v in wp.items()}
        wp_ratio = wmed["signed"] / wmed["unsigned"]
        print(f"\nwrite path in process (same code, signer on/off, {args.write_rounds} interleaved rounds of {args.n:,}): "
              f"signed {wmed['signed']:,.0f} obj/s, unsigned {wmed['unsigned']:,.0f} obj/s, ratio {wp_ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median_per_s": med, "ratio": ratio, "head": head, "ref": ref_info,
                                         "n": args.n, "envelope": args.envelope, "write_path": wp, "write_path_ratio": wp_ratio},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
