"""The ``/ui/`` pages: overview, decisions, object, clause, attribution, partners.

Only accounts with the analyst role (a local account: ``exchange.node.webauth.is_analyst``)
see them, authenticated as on every TAXII endpoint (HTTP Basic or the client
certificate); a partner's account gets 403 and learns nothing else, an
unauthenticated request 401. Object content is shown only from the collections
the viewer's account may read, and never, over plain HTTP, a version whose IEP
marking says ``encrypt_in_transit: must``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, abort, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from exchange.node.accounts import Account
from exchange.node.ops import OpenNode
from exchange.node.webauth import current_account, is_analyst, login_required
from exchange.sharing.report import ARRIVALS, DECISIONS
from exchange.sharing.ui import data
from exchange.sharing.ui.render import configure, timeline_buckets
from exchange.stix import is_identifier
from exchange.storage.store import now_us

PER_PAGE = 50
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"


class UI:
    """What the pages read, built once per server process (worker)."""

    def __init__(self, opened: OpenNode, *, tls: bool, certfile: str | None, client_ca: str | None, refresh: int) -> None:
        self.opened = opened
        self.node = opened.node
        self.store = opened.store
        self.tls = tls
        self.certfile = certfile
        self.client_ca = client_ca
        self.refresh = refresh
        self.audit = data.AuditView(opened.store, opened.node.name)
        self.aliases = {c.id: c.alias or c.id for c in opened.node.config.collections}
        # read the log once in the background, so the first look is not the one that pays for it
        threading.Thread(target=self._warm, name="cti-exchange-ui-warm", daemon=True).start()

    def _warm(self) -> None:
        with contextlib.suppress(Exception):  # the first request retries
            self.audit.refresh()


def register_ui(app: Flask, opened: OpenNode, *, tls: bool = False, certfile: str | None = None, client_ca: str | None = None,
                refresh: int = 30) -> UI:
    """Mount ``/ui/`` on the node's app. ``refresh``: seconds between automatic reloads of a page (0: none)."""
    app.template_folder = None  # templates come from the package only, never from the working directory
    ui = UI(opened, tls=tls, certfile=certfile, client_ca=client_ca, refresh=refresh)
    bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")
    _routes(bp, ui)
    bp.after_request(_headers)
    bp.register_error_handler(HTTPException, _html_error)
    app.register_blueprint(bp)
    configure(app.jinja_env)
    return ui


def _headers(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = _CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def _html_error(exc: HTTPException) -> tuple[str, int]:
    """A bad filter or an unknown object or clause on a page: an HTML answer, not a TAXII error body."""
    return render_template("ui/error.html", status=exc.code or 500, message=exc.description or exc.name), exc.code or 500


def _page(ui: UI, template: str, account: Account, status: int = 200, **ctx: Any) -> tuple[str, int]:
    ctx.setdefault("refresh", ui.refresh)
    return render_template(template, node=ui.node, viewer=account.name, tls=ui.tls,
                           clause_href=lambda c: url_for("ui.clause", clause_id=c),
                           object_href=lambda o: url_for("ui.object_page", object_id=o) if o and is_identifier(o) else None,
                           now=now_us(), **ctx), status


def _analyst(ui: UI) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A view for analysts only: 401 without credentials (the node's answer), 403 for a partner's account."""

    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def inner(*args: Any, **kwargs: Any) -> Any:
            account = current_account()
            if account is None or not is_analyst(account):
                return render_template("ui/error.html", status=403, refresh=0, message=(
                    "This page is for the node's analysts. A partner's account reads what was released to it through TAXII only.")), 403
            return view(account, *args, **kwargs)

        return login_required(inner)

    return wrap


def _routes(bp: Blueprint, ui: UI) -> None:
    analyst = _analyst(ui)

    @bp.route("/", methods=["GET"])
    @analyst
    def overview(account: Account) -> Any:
        return _page(ui, "ui/overview.html", account, **overview_context(ui))

    @bp.route("/decisions", methods=["GET"])
    @analyst
    def decisions(account: Account) -> Any:
        return _page(ui, "ui/decisions.html", account, **decisions_context(ui))

    @bp.route("/objects/<object_id>", methods=["GET"])
    @analyst
    def object_page(account: Account, object_id: str) -> Any:
        return _page(ui, "ui/object.html", account, **object_context(ui, account, object_id))

    @bp.route("/clauses/<clause_id>", methods=["GET"])
    @analyst
    def clause(account: Account, clause_id: str) -> Any:
        return _page(ui, "ui/clause.html", account, **clause_context(ui, clause_id))

    @bp.route("/attribution", methods=["GET"])
    @analyst
    def attribution(account: Account) -> Any:
        return _page(ui, "ui/attribution.html", account, **attribution_context(ui))

    @bp.route("/partners", methods=["GET"])
    @analyst
    def partners(account: Account) -> Any:
        return _page(ui, "ui/partners.html", account, **partners_context(ui))


# -- page contexts --------------------------------------------------------------------------------


def overview_context(ui: UI) -> dict[str, Any]:
    """Per partner: what was decided (objects and versions), what arrived, timing, sync; the timeline; the chain."""
    snap = ui.audit.snapshot()
    report = snap.report
    me = ui.node.name
    now = now_us()
    partners = []
    for p in ui.node.config.partners:
        out = report["directions"].get(f"{me}->{p}")
        inc = report["directions"].get(f"{p}->{me}")
        last_ok = max((snap.last_at.get((me, ev, p), 0) for ev in (*ARRIVALS, "push")), default=0) or None
        last_err = snap.last_at.get((me, "sync-error", p))
        partners.append({"name": p, "out": out, "in": inc, "last_ok": last_ok, "lag_s": (now - last_ok) / 1e6 if last_ok else None,
                         "last_error": last_err if last_err and (not last_ok or last_err > last_ok) else None})
    events: dict[str, dict[str, int]] = {}
    for (_node, event, partner), n in sorted(snap.events.items(), key=lambda kv: (kv[0][1], kv[0][2] or "")):
        events.setdefault(event, {})[partner or "-"] = n
    unit, buckets = timeline_buckets(snap.timeline)
    return {"report": report, "partners": partners, "events": events, "unit": unit, "buckets": buckets, "chain": ui.audit.chain()}


def _time_arg(name: str, *, end: bool = False) -> int | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        t = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        abort(400, f"{name}: not a date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM)")
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    if end and len(raw) == 10:  # a whole day
        t += dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    return int(t.timestamp() * 1e6)


def decisions_context(ui: UI) -> dict[str, Any]:
    """The decision records matching the filters, one page of them."""
    args = request.args
    flt = data.DecisionFilter(
        partner=args.get("partner", ""), decision=args.get("decision", ""), clause=args.get("clause", ""), tlp=args.get("tlp", ""),
        type=args.get("type", ""), since=_time_arg("since"), until=_time_arg("until", end=True),
    )
    if flt.decision and flt.decision not in DECISIONS:
        abort(400, f"decision: one of {', '.join(DECISIONS)}")
    try:
        page = max(1, int(args.get("page", "1")))
    except ValueError:
        page = 1
    rows, total = data.decisions_page(ui.store, flt, page, PER_PAGE)
    report = ui.audit.summary()
    options = {
        "partner": sorted(ui.node.config.partners),
        "decision": list(DECISIONS),
        "clause": sorted({k.split(": ", 1)[1] for d in report["directions"].values() for k in (*d["clauses"], *d["also_applied"])}),
        "tlp": sorted({(t if t.startswith("TLP:") else "none") for d in report["directions"].values() for t in d["by_tlp"]}),
        "type": sorted({t for d in report["directions"].values() for t in d["by_type"]}),
    }
    for r in rows:
        r["tlp_label"] = ui.audit.tlp_label(r["detail"].get("tlp"), r["clauses"])
    pages = max(1, -(-total // PER_PAGE))
    query = {k: v for k, v in args.items() if k != "page" and v}
    return {"rows": rows, "total": total, "page": page, "pages": pages, "options": options, "args": args, "query": query,
            "per_page": PER_PAGE}


def object_context(ui: UI, account: Account, object_id: str) -> dict[str, Any]:
    """One object's versions the viewer may read and its journey through this node's audit log."""
    versions = data.versions(ui.store, ui.aliases, account.readable, object_id, tls=ui.tls)
    journey = data.journey(ui.store, object_id)
    if not versions and not journey:
        abort(404, f"this node knows nothing about {object_id} that you may see")
    per_partner: dict[tuple[str, str], dict] = {}
    for e in journey:
        if e["event"] in DECISIONS:
            per_partner[(e["partner"], e["version"] or "")] = e  # the latest decision per partner and version
    shown = [v for v in versions if v.body is not None]
    name = next((v.body.get("name") for v in reversed(shown) if v.body.get("name")), None)
    return {
        "object_id": object_id, "name": name, "versions": versions, "journey": journey,
        "decisions": sorted(per_partner.values(), key=lambda e: (e["version"] or "", e["partner"] or "")),
        "sightings": data.sightings(ui.store, ui.aliases, account.readable, object_id, tls=ui.tls),
        "event_types": sorted({e["event"] for e in journey}),
        "pretty": lambda obj: orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(),
        "standard_keys": {"type", "reason", "removed_fields", "source", "tlp"},
    }


def clause_context(ui: UI, clause_id: str) -> dict[str, Any]:
    """A clause's statement, the framework text it operationalises, and whether it is a local conservative choice."""
    from exchange.policy import current_policy

    policy = current_policy()
    try:
        c = policy.clause(clause_id)
    except KeyError:
        abort(404, f"no clause {clause_id!r} in the policy in force")
    framework = policy.frameworks.get(c.source.framework)
    where = policy.clause_files.get(c.id)
    counts: dict[str, dict[str, int]] = {}
    for name, d in ui.audit.summary()["directions"].items():
        for key, n in (*d["clauses"].items(), *d["also_applied"].items()):
            dec, cid = key.split(": ", 1)
            if cid == clause_id:
                counts.setdefault(name, {})[dec] = counts.get(name, {}).get(dec, 0) + n
    return {"clause": c, "framework": framework, "where": f"{Path(where[0]).name}:{where[1]}" if where else None, "counts": counts,
            "kind": c.rule.kind}


def attribution_context(ui: UI) -> dict[str, Any]:
    """Every joint-attribution proposal this node knows (``exchange.sharing.attribution.status``) and any withdrawals of them."""
    from exchange.sharing import attribution

    proposals = attribution.status(ui.opened)
    for p in proposals:
        ids = [i for i in (p["relationship"], p.get("joint_report"), p.get("joint_relationship")) if i]
        p["revocations"] = [e for i in ids for e in data.journey(ui.store, i) if e["event"] in ("withdraw", "revoke")]
    return {"proposals": proposals}


def partners_context(ui: UI) -> dict[str, Any]:
    """Accounts and grants, certificates, each partner's configuration and the sync agent's state."""
    cfg = ui.node.config
    subjects = {a.name: a.certificate_subject for a in cfg.accounts}
    accounts = [
        {"name": name, "role": "partner" if partner else "analyst", "partner": partner, "password": has_pw, "subject": subjects.get(name),
         "read": sorted(ui.aliases.get(c, c) for c in read), "write": sorted(ui.aliases.get(c, c) for c in write)}
        for name, has_pw, partner, read, write in ui.store.accounts()
    ]
    last_at = ui.audit.snapshot().last_at
    me = ui.node.name
    sync = []
    for p in cfg.partners:
        last = {ev: last_at.get((me, ev, p)) for ev in ("pull", "push", "inbound-accept", "inbound-reject", "sync-error")}
        sync.append({"partner": p, "config": cfg.partners[p], "last": last,
                     "states": [(k, v) for k, v in data.sync_states(ui.store) if k.split(":")[1:2] == [p]]})
    certs = data.certificates(ui.certfile, "this node's server certificate") + data.certificates(ui.client_ca, "client CA (mutual TLS)")
    return {"accounts": accounts, "sync": sync, "certs": certs, "mutual_tls": ui.client_ca is not None}
