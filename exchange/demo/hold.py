"""``demo --keep-running``: after the story, leave both nodes up for a person to look at their ``/ui/`` pages."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

from exchange.demo.narrative import NAMES, print_narrative


def hold_nodes(result: dict[str, Any], *, json_mode: bool = False, until: float | None = None) -> None:
    """Print the narrative and each node's web page with the analyst's (random, demo-only) password; wait for Ctrl-C or SIGTERM.

    ``until``: stop after that many seconds instead (tests).
    """
    out = sys.stderr if json_mode else sys.stdout
    passwords = result.get("analyst_passwords", {})
    print_narrative({k: v for k, v in result.items() if k != "analyst_passwords"}, json_mode=json_mode)
    print(file=out)
    for node, url in result.get("ui", {}).items():
        print(f"Web page of the {NAMES.get(node, node)} node: {url}  (account analyst, password {passwords.get(node, '?')})", file=out)
    print("Both nodes keep running; Ctrl-C stops them.", file=out, flush=True)

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    deadline = None if until is None else time.monotonic() + until
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping the nodes", file=out, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
