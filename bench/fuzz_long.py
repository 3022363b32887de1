"""A longer fuzz run of a live node: ``tests/integration/test_fuzz.py`` with more, randomized examples.

    /tmp/venv/bin/python bench/fuzz_long.py [--examples 5000] [--backend sqlite|postgresql|both]

The test suite runs the same property with 300 derandomized examples per
storage backend; this runs ``--examples`` per backend with fresh randomness
each time (a failure prints hypothesis' ``@reproduce_failure`` blob), then
prints how many requests were sent and the answers by status and by method.
Exit status: pytest's (0: no 5xx, no crash, no leak, no change by a rejected
request).  ``CTI_EXCHANGE_FUZZ_EXAMPLES=N pytest tests/integration/test_fuzz.py``
is the same without the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=5000, help="examples per backend (default 5000)")
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "fuzz.json"
        env = {**os.environ, "CTI_EXCHANGE_FUZZ_EXAMPLES": str(args.examples), "CTI_EXCHANGE_FUZZ_REPORT": str(report)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests/integration/test_fuzz.py")]
        if args.backend != "both":
            cmd += ["-k", args.backend]
        started = time.monotonic()
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        elapsed = time.monotonic() - started
        doc = json.loads(report.read_text()) if report.exists() else {}

    print(f"\nfuzz_long: {args.examples} examples per backend, {elapsed:.0f} s, pytest exit {rc}")
    for backend, res in doc.items():
        print(f"  {backend}: {res['requests']} requests (shrinking included)")
        print("    by status: " + ", ".join(f"{s}: {n}" for s, n in res["by_status"].items()))
        by_method: dict[str, dict[str, int]] = {}
        for key, n in res["by_method_status"].items():
            method, status = key.rsplit(" ", 1)
            by_method.setdefault(method if method in ("GET", "POST", "DELETE", "HEAD") else "other", {}).setdefault(status, 0)
            by_method[method if method in ("GET", "POST", "DELETE", "HEAD") else "other"][status] += n
        for method, statuses in sorted(by_method.items()):
            print(f"    {method:6} " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
        fives = sum(n for s, n in res["by_status"].items() if s.startswith("5"))
        print(f"    5xx answers: {fives}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
