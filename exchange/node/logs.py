"""A node process's log lines and metric files, without the web stack (the lean gunicorn master uses them).

``exchange.node.observe`` re-exports both; see its docstring.
"""

from __future__ import annotations

import logging
import os
import sys

LOG_FORMATS = ("text", "json")
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

__all__ = ["LOG_FORMATS", "configure_logging", "prepare_multiprocess"]


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


def prepare_multiprocess() -> str:
    """A fresh folder for the workers' metric files (prometheus-client multiprocess mode), removed at exit."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="cti-exchange-metrics-")
    os.environ[_MULTIPROC_ENV] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
