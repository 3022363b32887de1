#!/usr/bin/env python3
"""Origin-signature benchmark (issue 15): what signing and verifying cost the exchange.

Not a test.  In one run, on the same data:

  A. in process: the policy engine alone (``evaluate`` US -> ROK), signing alone (``NodeSigner.sign_together``
     of the shared copies in batches of 2,000 as a release does: per version RFC 8785 canonical JSON + a Merkle
     leaf, one batch companion and one Ed25519 signature per 128 versions), policy + signing, and verification
     alone (``Verifier.check`` with a fresh verifier, each version finding its companion by member key:
     certificate cached per key id, per version canonical JSON + its leaf, per companion the root over its
     listed leaves and one Ed25519 verify), in objects/s;
  B. end to end with signatures off and on (``CTI_EXCHANGE_SIGNING=off`` / the demo PKI): a fresh pair of
     node processes each time, N indicators loaded into the US node, then timed: the policy release
     (in process) and the US sync agent pushing everything to the ROK node's inbox (a subprocess; the ROK
     node checks every object and, when on, its signature).  Rounds interleave off/on/on/off...; the
     median of each side is compared.

    python bench/signing_bench.py                # N = 10,000, 2 rounds per side
    python bench/signing_bench.py --n 2000 --rounds 1

The target (issue 15): signing and verification together cost at most 15% of end-to-end sync
throughput, i.e. on/off >= 0.85.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync_bench import PASSWORDS, mixed_indicators, provision, sync_cmd  # noqa: E402

from exchange.demo.procs import NodeProcess  # noqa: E402
from exchange.node.ops import open_node  # noqa: E402
from exchange.node.pki import init_pki  # noqa: E402
from exchange.node.signing import PKI_ENV, SWITCH_ENV, Verifier, load_node_signer, member_of, signature_index  # noqa: E402
from exchange.policy import current_policy, evaluate  # noqa: E402
from exchange.sharing.release import release_all  # noqa: E402

RELEASE_BATCH = 2000  # exchange.sharing.release._BATCH: the rows a release judges and signs together
MIX = {"CLEAR": 0.3, "GREEN": 0.4, "AMBER": 0.2, "AMBER+STRICT": 0.05, "RED": 0.05}
TARGET_RATIO = 0.85
assert PASSWORDS  # the accounts provision() sets


def rate(n: int, secs: float) -> float:
    return n / secs if secs > 0 else float("inf")


def in_process(n: int, pki: Path) -> dict[str, float]:
    """Part A: objects/s of policy, signing, policy + signing, verification."""
    os.environ[PKI_ENV] = str(pki)
    os.environ.pop(SWITCH_ENV, None)
    objs = mixed_indicators(n, 11, MIX)
    policy = current_policy()
    from exchange.config import load_node

    cfg = load_node("us").config
    signer = load_node_signer(cfg)
    assert signer is not None
    verifier = Verifier.from_files(pki / "ca.crt")
    t = time.perf_counter()
    decisions = evaluate(objs, policy, "us", "rok")
    t_policy = time.perf_counter() - t
    shared = [d.shared for d in decisions if d.shared is not None]
    t = time.perf_counter()  # as a release signs: one batch (one Ed25519 signature over a Merkle root) per release batch
    sigs = [s for i in range(0, len(shared), RELEASE_BATCH) for s in signer.sign_together([(o, None) for o in shared[i:i + RELEASE_BATCH]])]
    t_sign = time.perf_counter() - t
    t = time.perf_counter()  # each version finds its batch companion by its member key, as an inbound check does
    index = signature_index(sigs)
    states = [verifier.check(o, index[member_of(o)][0]) for o in shared]
    t_verify = time.perf_counter() - t
    assert all(s.status == "valid" for s in states)
    return {
        "objects": n, "shared": len(shared),
        "policy_per_s": rate(n, t_policy),
        "signing_per_s": rate(len(shared), t_sign),
        "policy_and_signing_per_s": rate(n, t_policy + t_sign),
        "verification_per_s": rate(len(shared), t_verify),
    }


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children (the ROK server's master and worker)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    except psutil.Error:
        pass
    return total


def end_to_end(n: int, pki: Path, work: Path, signing: bool) -> tuple[float, float]:
    """Part B: (wall seconds, CPU seconds) for release + push of ``n`` objects to a fresh ROK node.

    CPU seconds: the release (this process), the US agent (a child) and the ROK server tree over the same
    interval; less sensitive than the wall time to the other work on the shared machine."""
    os.environ[PKI_ENV] = str(pki)
    if signing:
        os.environ.pop(SWITCH_ENV, None)
    else:
        os.environ[SWITCH_ENV] = "off"
    us_dir, rok_dir = work / "us", work / "rok"
    provision("us", us_dir)
    provision("rok", rok_dir)
    opened = open_node("us", data_dir=us_dir)
    try:
        objs = mixed_indicators(n, 7, MIX)
        for i in range(0, n, 1000):
            opened.store.add_objects(opened.node.config.own_collection.id, objs[i:i + 1000], origin="local:bench")
    finally:
        opened.close()
    rok = NodeProcess("rok", rok_dir).start()  # inherits CTI_EXCHANGE_SIGNING: verifies inbound signatures when on
    try:
        assert rok.proc is not None
        rok_cpu0, kids0 = _tree_cpu(rok.proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        t, cpu0 = time.perf_counter(), time.process_time()
        opened = open_node("us", data_dir=us_dir)
        try:
            release_all(opened)
        finally:
            opened.close()
        cpu_release = time.process_time() - cpu0
        out = subprocess.run(sync_cmd(work, "us", us_dir, rok.url, "--direction", "push", "--once"),
                             capture_output=True, text=True, timeout=3600)
        secs = time.perf_counter() - t
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_agent = (kids.ru_utime - kids0.ru_utime) + (kids.ru_stime - kids0.ru_stime)
        cpu_rok = _tree_cpu(rok.proc.pid) - rok_cpu0
        cpu = time.process_time() - cpu0 + cpu_agent + cpu_rok
        print(f"   (CPU s: release {cpu_release:.2f}, US agent {cpu_agent:.2f}, ROK server {cpu_rok:.2f})", flush=True)
        if out.returncode != 0:
            raise SystemExit(f"sync failed: {out.stderr[-2000:]}")
        if "'rejected': 0" not in out.stderr and '"rejected": 0' not in out.stderr and "rejected': 0" not in out.stdout:
            print(f"  note: agent output: {(out.stdout + out.stderr)[-300:]}", file=sys.stderr)
    finally:
        rok.stop()
    return secs, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2, help="end-to-end runs per side (interleaved)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="signing-bench-") as tmp:
        root = Path(tmp)
        pki = root / "pki"
        init_pki(pki, ("us", "rok"), days=2)
        a = in_process(args.n, pki)
        print(f"A. in process, {a['objects']} indicators ({a['shared']} shared with ROK)")
        print(f"   policy alone            {a['policy_per_s']:>10,.0f} objects/s")
        print(f"   signing alone           {a['signing_per_s']:>10,.0f} objects/s")
        print(f"   policy + signing        {a['policy_and_signing_per_s']:>10,.0f} objects/s  "
              f"(ratio to policy alone {a['policy_and_signing_per_s'] / a['policy_per_s']:.2f})")
        print(f"   verification alone      {a['verification_per_s']:>10,.0f} objects/s")
        order = [False, True, True, False] * ((args.rounds + 1) // 2)
        order = order[: 2 * args.rounds]
        times: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        for i, on in enumerate(order):
            secs, cpu = end_to_end(args.n, pki, root / f"run{i}", on)
            times[on].append(secs)
            cpus[on].append(cpu)
            print(f"   run {i + 1}: signatures {'on ' if on else 'off'} {secs:7.2f} s  {rate(args.n, secs):8,.0f} objects/s  "
                  f"CPU {cpu:6.2f} s  load {os.getloadavg()[0]:.1f}", flush=True)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        ratio = off / on
        cpu_off, cpu_on = statistics.median(cpus[False]), statistics.median(cpus[True])
        print(f"B. end to end (release + push to ROK, N={args.n}), median of {args.rounds} per side")
        print(f"   signatures off          {rate(args.n, off):>10,.0f} objects/s  (CPU {cpu_off:.2f} s)")
        print(f"   signatures on           {rate(args.n, on):>10,.0f} objects/s  (CPU {cpu_on:.2f} s)")
        print(f"   on/off throughput ratio {ratio:.2f} (target >= {TARGET_RATIO}: signing + verification cost {1 - ratio:.0%})")
        print(f"   CPU-time ratio off/on   {cpu_off / cpu_on:.2f} (release + US agent + ROK server, same interval)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
