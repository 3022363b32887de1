"""The demo (``cti-exchange demo``, real node processes) runs over HTTPS with mutual TLS by default.

Its ``--plain-http`` variant is in test_demo_plain_http.py: a file of its own, so that ``--dist loadfile``
can run the two demos on both test processes at once.
"""

from __future__ import annotations

import subprocess
import sys


def _demo(*args: str) -> dict:
    import json

    out = subprocess.run([sys.executable, "-m", "exchange", "demo", "--json", *args], capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_the_demo_runs_over_https_with_mutual_tls_by_default():
    result = _demo()
    assert result["ok"] and result["leak_check"]["ok"]
    assert result["transport"] == "https (mutual TLS)"
    assert all(url.startswith("https://127.0.0.1:") for url in result["nodes"].values())
    assert {"ok", "nodes", "data_dir", "transfers", "decisions", "attribution", "leak_check", "seconds"} <= set(result)
    assert [r["round"] for r in result["attribution"]] == ["concur", "dissent"] and all(r["ok"] for r in result["attribution"])
