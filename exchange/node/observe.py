"""Logs and metrics of a node: JSON-lines logs, one access line per request, Prometheus ``/metrics``.

- ``configure_logging("text" | "json")``: the process's log lines on stderr, as text or as one JSON
  object a line (``python-json-logger``); ``serve`` configures it before gunicorn forks its workers, so
  every worker writes the same way.
- ``instrument(app)``: an access log line per request on logger ``exchange.access`` at INFO (method,
  path, status, account, bytes, ms), request and object counters, and ``GET /metrics`` in the Prometheus
  text format (``prometheus-client``), for authenticated *local* accounts only: a partner account gets 403,
  as the counts describe every collection and partner of the node.
- Several gunicorn workers: ``prepare_multiprocess()`` (called by ``serve`` before the workers fork) points
  ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder, so each worker's counters live in files there and any
  worker answering ``/metrics`` adds up all of them (prometheus-client's multiprocess mode). Figures read
  from the database at scrape time (release decisions by clause, audit length, sync lag, push backlog) are
  the same whichever worker answers.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import orjson
from flask import Flask, Response, current_app, g, request

from exchange.node.logs import _MULTIPROC_ENV, LOG_FORMATS, configure_logging, prepare_multiprocess

__all__ = ["LOG_FORMATS", "configure_logging", "instrument", "prepare_multiprocess"]

ACCESS = logging.getLogger("exchange.access")
_EXT = "cti_exchange.observe"


class _Metrics:
    """The process's counters (created once: in multiprocess mode after the env var is set, in the worker)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.requests = Counter("cti_exchange_requests", "TAXII requests answered, by endpoint and status", ["endpoint", "method", "status"])
        self.seconds = Histogram("cti_exchange_request_seconds", "Time to answer a request", ["endpoint"])
        self.added = Counter("cti_exchange_objects_added", "Objects accepted by POST, by collection", ["collection"])
        self.served = Counter("cti_exchange_objects_served", "Objects (or manifest entries, versions) served, by collection",
                              ["collection", "endpoint"])


_METRICS: _Metrics | None = None


def _metrics() -> _Metrics:
    global _METRICS
    if _METRICS is None:
        _METRICS = _Metrics()
    return _METRICS


def instrument(app: Flask, node: Any, store: Any) -> None:
    """Access log, counters and ``GET /metrics`` on a node's app (``exchange.node.server.create_app``)."""
    _metrics()
    app.extensions[_EXT] = (node, store)
    app.before_request_funcs.setdefault(None, []).insert(0, _started)
    app.after_request(_finished)
    from medallion import auth

    app.add_url_rule("/metrics", "metrics", auth.login_required(_scrape), methods=["GET"])


def _started() -> None:
    g.cti_started = time.perf_counter()


def _account() -> str | None:
    try:
        from medallion import auth

        user = auth.current_user()
    except Exception:  # outside an authenticated request
        return None
    return getattr(user, "name", None)


def _finished(response: Response) -> Response:
    ms = (time.perf_counter() - g.get("cti_started", time.perf_counter())) * 1000
    rule = request.url_rule
    endpoint = rule.rule if rule is not None else "(none)"  # the route template, never the raw path: bounded label values
    size = response.calculate_content_length()
    account = _account()
    ACCESS.info(
        "%s %s %s account=%s bytes=%s ms=%.1f", request.method, request.path, response.status_code, account or "-",
        size if size is not None else "-", ms,
        extra={"method": request.method, "path": request.path, "status": response.status_code, "account": account,
               "bytes": size, "ms": round(ms, 1)},
    )
    m = _metrics()
    m.requests.labels(endpoint, request.method, str(response.status_code)).inc()
    m.seconds.labels(endpoint).observe(ms / 1000)
    if rule is not None and response.status_code in (200, 202) and not response.is_streamed:
        _count_objects(m, rule.endpoint, response)
    return response


def _count_objects(m: _Metrics, endpoint: str, response: Response) -> None:
    """Objects added (a POST's status ``success_count``, a small body) and served (the page size the backend noted)."""
    args = request.view_args or {}
    coll = args.get("collection_id")
    if coll is None or not endpoint.startswith(("objects.", "manifest.")):
        return
    if request.method == "GET":  # the backend noted the page's size: no need to parse what it serves
        if g.get("cti_exchange_served") is not None:
            m.served.labels(_alias(coll), endpoint.split(".", 1)[1]).inc(g.cti_exchange_served)
        return
    try:
        body = orjson.loads(response.get_data())
    except orjson.JSONDecodeError:
        return
    if not isinstance(body, dict):
        return
    if request.method == "POST":
        m.added.labels(_alias(coll)).inc(int(body.get("success_count", 0) or 0))


def _alias(collection_id: str) -> str:
    cfg = current_app.extensions[_EXT][0].config
    return next((c.alias for c in cfg.collections if c.id == collection_id), "(unknown)")


def _scrape() -> Response:
    """``GET /metrics``: Prometheus text format; local accounts only (403 for a partner's)."""
    from medallion import auth
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    user = auth.current_user()
    if getattr(user, "partner", None) is not None:
        body = {"title": "Forbidden", "description": "metrics describe the whole node: local accounts only", "http_status": "403"}
        return Response(orjson.dumps(body), status=403, mimetype="application/taxii+json;version=2.1")  # TAXII 2.1 s3.6.1
    node, store = current_app.extensions[_EXT]
    if os.environ.get(_MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        counted = generate_latest(registry)
    else:
        counted = generate_latest(REGISTRY)
    stored = CollectorRegistry()
    stored.register(StoreCollector(node, store))
    return Response(counted + generate_latest(stored), mimetype=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


class StoreCollector:
    """Figures read from the node's database at scrape time: the same whichever worker answers."""

    def __init__(self, node: Any, store: Any) -> None:
        self._node = node
        self._store = store

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from sqlalchemy import func, select, tuple_

        from exchange.storage import audit as audit_log
        from exchange.storage.schema import audit, object_rows, sync_state

        cfg = self._node.config
        decisions = CounterMetricFamily("cti_exchange_release_decisions", "Release decisions in the audit log, by partner, decision and clause",
                                        labels=["partner", "decision", "clause"])
        length = GaugeMetricFamily("cti_exchange_audit_entries", "Entries in the hash-chained audit log")
        held = GaugeMetricFamily("cti_exchange_collection_object_versions", "Object versions stored, by collection", labels=["collection"])
        lag = GaugeMetricFamily("cti_exchange_sync_lag_seconds", "Seconds since the sync agent last completed a cycle with the partner",
                                labels=["partner"])
        backlog = GaugeMetricFamily("cti_exchange_sync_push_backlog_objects", "Object versions released to the partner and not yet pushed",
                                    labels=["partner"])
        tally: dict[tuple[str, str, str], int] = {}
        with self._store.engine.connect() as conn:
            rows = conn.execute(
                select(audit.c.partner, audit.c.partners, audit.c.decision, audit.c.clauses, func.count())
                .where(audit.c.event.in_(("share", "redact", "withhold")))
                .group_by(audit.c.partner, audit.c.partners, audit.c.decision, audit.c.clauses)
            ).all()
            for partner, members, decision, clauses, n in rows:
                # a group entry (exchange.storage.audit.grouped) is one decision for each of its members
                for name in audit_log.partners_of(members) or (partner,):
                    for clause in orjson.loads(clauses or "[]") or ["(none)"]:
                        key = (name or "", decision or "", clause)
                        tally[key] = tally.get(key, 0) + n
            length.add_metric([], conn.execute(select(func.count()).select_from(audit)).scalar() or 0)
            for coll in cfg.collections:
                n = conn.execute(select(func.count()).select_from(object_rows).where(
                    self._store.where_collection(conn, coll.id, on=object_rows))).scalar() or 0
                held.add_metric([coll.alias], n)
            states = dict(conn.execute(select(sync_state.c.name, sync_state.c.value).where(
                sync_state.c.name.like("sync-cycle:%") | sync_state.c.name.like("push:%"))).all())
            for partner in cfg.partners:
                done = states.get(f"sync-cycle:{partner}")
                if done:
                    lag.add_metric([partner], max(0.0, time.time() - orjson.loads(done)["at"]))
                if cfg.partners[partner].push_to:
                    read = cfg.partner_collection(partner, "partner-read")
                    mark = orjson.loads(states[f"push:{partner}"]).get("after") if states.get(f"push:{partner}") else None
                    where = [self._store.where_collection(conn, read.id, on=object_rows)]
                    if mark:
                        where.append(tuple_(object_rows.c.date_added, object_rows.c.seq) > tuple(mark))
                    backlog.add_metric([partner], conn.execute(select(func.count()).select_from(object_rows).where(*where)).scalar() or 0)
        for (partner, decision, clause), n in sorted(tally.items()):
            decisions.add_metric([partner, decision, clause], n)
        yield from (decisions, length, held, lag, backlog)
