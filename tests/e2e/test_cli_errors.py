"""The sync agent's one-line answers (issue 19, item 3), against two real nodes serving HTTPS with mutual TLS.

- ``http://`` to a partner that speaks HTTPS: one line naming the cause, at once (no retries);
- ``sync --once`` says what it did, also ``nothing new``;
- Ctrl-C (SIGINT) stops the agent with one line saying where the next run resumes, exit 130.

(A port in use for ``serve`` is one line too: ``tests/integration/test_transport_hardening.py``.)
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import new_indicator
from tests.e2e.conftest import Pair, _pair, load_and_release

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[Pair]:
    """Both nodes over HTTPS with mutual TLS, with accounts and no content (one pair for the module)."""
    yield from _pair(tmp_path_factory.mktemp("cli-errors"), seed=False, tls=True)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_plain_http_to_a_partner_that_speaks_https_is_one_line_without_retries(nodes):
    https = nodes.procs["rok"].url
    plain = "http://" + https[len("https://"):]
    cmd = [sys.executable, "-m", "exchange", "sync", "us", "--partner", "rok", "--partner-url", plain,
           "--password-file", str(nodes.password_file("us")), "--data-dir", str(nodes.procs["us"].data_dir), "--once"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 1, out.stderr
    assert _lines(out.stderr) == [
        f"Error: list collections: partner speaks HTTPS? got a TLS handshake at {plain}: use {https} "
        "-- check --ca-file, --cert-file/--key-file and the partner URL"
    ]


def test_sync_once_says_what_it_did_and_nothing_new_when_there_is_nothing(nodes):
    load_and_release(nodes, "us", [new_indicator(i, created_by_ref=US_ID, marking=GREEN) for i in range(3)])
    first = nodes.sync("us", "--once")
    (line,) = _lines(first.stdout)
    assert line.startswith("sync us<->rok: ") and "pushed " in line and "acknowledged" in line, line
    again = nodes.sync("us", "--once")
    assert _lines(again.stdout) == ["sync us<->rok: nothing new"]


def test_ctrl_c_stops_the_agent_with_where_it_resumes(nodes):
    load_and_release(nodes, "us", [new_indicator(10 + i, created_by_ref=US_ID, marking=GREEN) for i in range(2)])
    proc = subprocess.Popen(nodes.sync_cmd("us", "--interval", "600"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        first = lines.get(timeout=90)  # the first cycle is done: the agent now waits for the next
        assert first.startswith("sync us<->rok: "), first
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, err
    (line,) = _lines(err)
    assert line.startswith("Error: stopped; push resumes from object ") and "(all " in line, line
    assert "pull resumes after the " in line and line.endswith(" on next run"), line
