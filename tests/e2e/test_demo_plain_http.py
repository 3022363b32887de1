"""The demo over plain HTTP (``cti-exchange demo --plain-http --keep-running``, real node processes): no
attribution rounds (their IEP marking says encrypt_in_transit: must), and the nodes' web pages stay up until Ctrl-C.

The default (HTTPS with mutual TLS) run is in test_demo_https.py.
"""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_over_plain_http_says_so_and_keeps_running_until_ctrl_c():
    plain = _demo_kept_running("--plain-http")
    assert plain["ok"] and plain["transport"] == "http" and plain["attribution"] == []
    assert all(url.startswith("http://") for url in plain["nodes"].values())


def _demo_kept_running(*args: str) -> dict:
    """``demo --keep-running``: both nodes stay up and print their /ui/ pages until Ctrl-C (SIGINT), then exit 0."""
    import json
    import re
    import signal

    import requests

    proc = subprocess.Popen([sys.executable, "-m", "exchange", "demo", "--json", "--keep-running", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        pages = {}
        assert proc.stderr is not None
        for line in proc.stderr:  # the narrative goes to stderr with --json; bounded by the process's own end
            if m := re.match(r"Web page of the .* node: (\S+)  \(account analyst, password (\S+)\)", line):
                pages[m.group(1)] = m.group(2)
            if line.startswith("Both nodes keep running"):
                break
        assert len(pages) == 2, pages
        for url, password in pages.items():
            answer = requests.get(url, auth=("analyst", password), timeout=30)
            assert answer.status_code == 200 and "Overview" in answer.text, url
        proc.send_signal(signal.SIGINT)
        out, _err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0
    result = json.loads(out)
    assert set(result["ui"].values()) == set(pages)
    return result
