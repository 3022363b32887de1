"""The process's log lines on stderr, as text or as one JSON object a line (``python-json-logger``).

Kept apart from ``exchange.node.observe`` (which needs Flask for the access log and ``/metrics``)
so that a command that only logs, such as the sync agent, does not import the web framework.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMATS = ("text", "json")


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Log lines on stderr: ``text`` (time, level, logger, message) or ``json`` (one object a line, extras as keys)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
