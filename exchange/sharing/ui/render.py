"""Jinja set-up shared by the node's ``/ui/`` pages and the static ``report --html`` (one set of templates and charts)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from exchange.sharing.report import DECISIONS, SUMMARY_COLUMNS, summary_row
from exchange.sharing.ui import charts

DECISION_LABEL = {"share": "shared", "redact": "redacted", "withhold": "withheld"}


def timestamp(us: int | None) -> str:
    """Microseconds since the epoch as an RFC 3339 UTC time to the second."""
    if us is None:
        return "-"
    return dt.datetime.fromtimestamp(us / 1e6, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """Seconds as a short human duration (``0.42 s``, ``3.1 min``, ``5.0 h``, ``12.3 days``)."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def bucket_label(us: int, unit: str) -> str:
    t = dt.datetime.fromtimestamp(us / 1e6, tz=dt.UTC)
    return t.strftime("%m-%d %H:00") if unit == "hour" else t.strftime("%Y-%m-%d")


def timeline_buckets(timeline: tuple[str, list] | None) -> tuple[str, list[tuple[str, dict[str, int]]]]:
    """``Tally.timeline_rows()`` with readable bucket labels."""
    if not timeline:
        return "hour", []
    unit, rows = timeline
    return unit, [(bucket_label(start, unit), counts) for start, counts in rows]


def configure(env: Environment) -> Environment:
    """The filters and globals every template uses."""
    env.filters.update(ts=timestamp, dur=duration)
    env.globals.update(
        charts=charts, DECISIONS=DECISIONS, DECISION_LABEL=DECISION_LABEL, SUMMARY_COLUMNS=SUMMARY_COLUMNS, summary_row=summary_row,
        DECISION_SERIES=charts.DECISION_SERIES, TIMELINE_SERIES=charts.TIMELINE_SERIES,
    )
    return env


_env: Environment | None = None


def static_env() -> Environment:
    """The templates outside Flask (the HTML report)."""
    global _env
    if _env is None:
        _env = configure(Environment(loader=PackageLoader("exchange.sharing.ui", "templates"), autoescape=select_autoescape(["html"])))
    return _env


def render_report(report: dict[str, Any], timeline: tuple[str, list] | None = None) -> str:
    """The static HTML report: ``report.html`` over ``build_report`` output (no links, no refresh)."""
    unit, buckets = timeline_buckets(timeline)
    return static_env().get_template("report.html").render(
        report=report, unit=unit, buckets=buckets, clause_href=None, object_href=None, generated=timestamp(_now_us()),
    )


def _now_us() -> int:
    from exchange.storage.store import now_us

    return now_us()
