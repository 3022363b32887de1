"""The node's WSGI application (Flask app factory) and its production server.

medallion supplies the TAXII 2.1 views; ``create_app`` mounts them on a fresh
Flask app per node with the ``ExchangeBackend``, hashed-password Basic auth
with a verification cache, an orjson JSON provider, and TAXII error bodies
(s3.6.1) for every error, including werkzeug's.  ``serve`` runs it under
gunicorn (threaded workers), never Flask's development server.

In front of medallion's views (README "Media types, parameters, public
URL and health"): ``Accept`` and ``Content-Type`` are matched as RFC 9110 reads them
(the unversioned TAXII type is 2.1, TAXII 2.1 s1.6.8; medallion 3.0.0 refuses
it), a filter parameter given twice is a 400, discovery and redirects name the
configured ``public_url`` or the bound address (never the ``Host`` header), and
``GET /healthz`` answers without credentials.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import orjson
from flask import Flask, Request, Response, current_app, g, request
from flask.json.provider import JSONProvider
from medallion import auth
from medallion.exceptions import MedallionError
from medallion.views import collections as v_collections
from medallion.views import discovery as v_discovery
from medallion.views import manifest as v_manifest
from medallion.views import objects as v_objects
from werkzeug.exceptions import HTTPException, NotAcceptable, UnsupportedMediaType
from werkzeug.routing import RequestRedirect

from exchange.config import LoadedNode
from exchange.errors import BadRequest, ExchangeError, Forbidden, PayloadTooLarge, StorageError, TooManyRequests, Unauthorized
from exchange.node.accounts import Account, LoginThrottle, VerificationCache, hash_password
from exchange.node.backend import MEDIA_TYPE_TAXII, AfterWrite, ExchangeBackend
from exchange.node.ops import account_of, load_account
from exchange.node.worker import SlowClient
from exchange.stix import deeper_than, is_identifier
from exchange.storage.store import Store, now_us

log = logging.getLogger(__name__)

_EXT = "cti_exchange"
_THROTTLE = "cti_exchange_login_throttle"
_VERIFIED = "cti_exchange.verified_account"  # environ: the account this request authenticated as
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DUMMY_HASH = hash_password("dummy-password-for-timing")
_TAXII_BLUEPRINTS = (v_collections.collections_bp, v_discovery.discovery_bp, v_manifest.manifest_bp, v_objects.objects_bp)


class OrjsonProvider(JSONProvider):
    """Flask JSON via orjson (``orjson.Fragment`` lets stored JSON pass through unparsed)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode("utf-8")

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


@dataclass
class NodeContext:
    node: LoadedNode
    store: Store
    cache: VerificationCache = field(default_factory=VerificationCache)
    certs: Any = None  # exchange.node.tls.CertificateMap when served with --client-ca (mutual TLS)
    data_dir: Path | None = None  # the folder whose free space /healthz checks (None: no disk check)


def create_app(
    node: LoadedNode,
    store: Store,
    *,
    strict_validation: bool = False,
    after_write: AfterWrite | None = None,
    write_activity: Callable[[bool], None] | None = None,
    read_activity: Callable[..., None] | None = None,
    tls: bool = False,
    client_certificates: bool = False,
    public_url: str | None = None,
    data_dir: Path | None = None,
) -> Flask:
    """A Flask app serving one node's TAXII 2.1 API root.

    ``after_write(collection)`` runs after objects were committed; ``write_activity``
    is called with True when a POST begins (before its body is read) and False
    when it ends, so a background releaser can tell a write is under way; ``read_activity`` the same
    for every GET (a releaser yields to serving), with a ``Served`` at the end of one that served stored rows;
    ``tls``: the server speaks only HTTPS (objects whose IEP marking says
    ``encrypt_in_transit: must`` are withheld from every read endpoint otherwise);
    ``client_certificates``: mutual TLS, a verified client certificate identifies its
    account (``certificate_subject`` in node.yaml);
    ``public_url``: the base URL discovery names (``serve --public-url``; default: node.yaml's
    ``public_url``, else the address the server is bound to);
    ``data_dir``: the folder whose free space ``/healthz`` checks (default: the SQLite file's).
    """
    # no static folder: Flask would serve <working directory>/static/ to anyone, unauthenticated
    app = Flask(f"cti-exchange-{node.name}", static_folder=None)
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = node.config.api_root.max_content_length + 64 * 1024
    certs = None
    if client_certificates:
        from exchange.node.tls import CertificateMap

        certs = CertificateMap.from_accounts(node.config.accounts)
    app.extensions[_EXT] = NodeContext(node=node, store=store, certs=certs, data_dir=data_dir or _sqlite_dir(store))
    # medallion's views read these three attributes from current_app
    app.medallion_backend = ExchangeBackend(
        node, store, strict_validation=strict_validation, after_write=after_write, encrypted_transport=tls, public_url=public_url
    )
    app.taxii_config = {"max_page_size": node.config.max_page_size}
    app.users_backend = {}
    for bp in _TAXII_BLUEPRINTS:
        app.register_blueprint(bp)
    _negotiate_views(app)
    app.add_url_rule("/healthz", "healthz", _healthz, methods=["GET"])
    app.after_request(_redirect_to_own_url)
    app.register_error_handler(MedallionError, lambda e: taxii_error(e.status, str(e.message), type(e).__name__))
    app.register_error_handler(ExchangeError, lambda e: taxii_error(e.status, e.message, e.title))
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    _guard(app, node)
    if write_activity is not None or read_activity is not None:
        _track_activity(app, write_activity, read_activity)
    from exchange.node.observe import instrument

    instrument(app, node, store)  # access log, counters, GET /metrics
    return app


_NOT_TAXII = ("/ui", "/metrics", "/healthz")


class Served(NamedTuple):
    """What a TAXII GET that served stored rows read: passed to ``read_activity`` when it ends."""

    collection_id: str
    newest: int  # the ``date_added`` (microseconds) of the last row served (``X-TAXII-Date-Added-Last``)
    seconds: float  # how long the request took


def _track_activity(
    app: Flask, writes: Callable[[bool], None] | None, reads: Callable[..., None] | None
) -> None:
    """Tell ``writes`` when each POST begins and ends, ``reads`` each TAXII GET (whatever its outcome).

    A GET that served stored rows ends with ``reads(False, Served(...))``; any other with ``reads(False)``.
    The analysts' page, ``/metrics`` and ``/healthz`` are not TAXII reads: a probe or an open page does not slow the release.
    """

    def began() -> None:
        if request.method == "POST":
            hook = writes
        elif request.method == "GET" and not request.path.startswith(_NOT_TAXII):
            hook = reads
        else:
            hook = None
        if hook is not None:
            request.environ["cti_exchange.activity"] = hook
            request.environ["cti_exchange.began"] = time.monotonic()
            hook(True)

    def ended(_exc: BaseException | None) -> None:
        hook = request.environ.pop("cti_exchange.activity", None)
        if hook is None:
            return
        newest = g.get("cti_exchange_newest") if hook is reads else None
        coll = (request.view_args or {}).get("collection_id")
        if newest is None or coll is None:
            hook(False)
            return
        hook(False, Served(coll, newest, time.monotonic() - request.environ["cti_exchange.began"]))

    app.before_request_funcs.setdefault(None, []).insert(0, began)
    app.teardown_request(ended)


def taxii_error(status: int, description: str, title: str | None = None, headers: dict | None = None) -> Response:
    """A TAXII 2.1 error message (s3.6.1) with the taxii media type."""
    body = {"title": title or "Error", "http_status": str(status), "description": description}
    return Response(orjson.dumps(body), status=status, mimetype=MEDIA_TYPE_TAXII, headers=headers)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    return taxii_error(status, exc.description or exc.name, exc.name.replace(" ", ""))


def _internal_error(exc: Exception) -> Response:
    log.exception("unhandled error")
    return taxii_error(500, "internal server error", "InternalError")


# -- media types and parameters (README "Media types, parameters, public URL and health") -------------

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\\r\n]|\\.)*"'
_MEMBER_RE = re.compile(r"(?:" + _QUOTED + r'|[^,"]|")+')  # a stray quote stays in its member (which then does not parse)
_MEDIA_RE = re.compile(rf"[ \t]*({_TOKEN})/({_TOKEN})((?:[ \t]*;[ \t]*(?:{_TOKEN}[ \t]*=[ \t]*(?:{_TOKEN}|{_QUOTED}))?)*)[ \t]*")
_PARAM_RE = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED})")
_QVALUE_RE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
#: the filters a TAXII 2.1 client gives once each (several values: one comma-separated list, s3.4)
SINGLE_PARAMETERS = ("match[id]", "match[type]", "match[version]", "match[spec_version]", "added_after", "limit", "next")


@dataclass(frozen=True)
class MediaRange:
    """One member of an ``Accept`` or ``Content-Type`` field: lower-case type, subtype, parameters; ``q``."""

    type: str
    subtype: str
    params: dict[str, str]
    q: float = 1.0


def parse_media_list(text: str, *, weights: bool = True) -> list[MediaRange | None]:
    """The members of a media-type list (RFC 9110 s12.5.1, s8.3.1); ``None`` for one that does not parse.

    Type, subtype and parameter names are case-insensitive (lower-cased here), values may be
    quoted strings, whitespace around ``;`` and ``=`` is tolerated. With ``weights`` (``Accept``),
    ``q`` is the member's weight and ends the media type's parameters: what follows it
    (accept-extensions) is ignored; a weight that is not a qvalue makes the member unparsable.
    """
    out: list[MediaRange | None] = []
    for member in _MEMBER_RE.findall(text):
        if not member.strip():
            continue  # empty list members ("a, , b") do not count (RFC 9110 s5.6.1)
        m = _MEDIA_RE.fullmatch(member)
        if m is None:
            out.append(None)
            continue
        params: dict[str, str] = {}
        q = 1.0
        for name, value in _PARAM_RE.findall(m.group(3)):
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if weights and name.lower() == "q":
                q = float(value) if _QVALUE_RE.fullmatch(value) else -1.0
                break
            params[name.lower()] = value
        out.append(None if q < 0 else MediaRange(m.group(1).lower(), m.group(2).lower(), params, q))
    return out


def _taxii_params_fit(params: dict[str, str]) -> bool:
    """``version`` (absent: the latest, 2.1) and ``charset`` (JSON is UTF-8) of a TAXII media type this node serves."""
    if set(params) - {"version", "charset"}:
        return False
    return params.get("version", "2.1") == "2.1" and params.get("charset", "utf-8").lower() == "utf-8"


def taxii_acceptable(accept: str | None) -> bool:
    """Whether an ``Accept`` field accepts ``application/taxii+json;version=2.1`` (RFC 9110 s12.5.1).

    No field (or an empty one) accepts anything, as does ``*/*`` or ``application/*``; the most
    specific range that covers the TAXII type decides its weight, and ``q=0`` refuses it.
    """
    if accept is None or not accept.strip():
        return True
    best: tuple[int, int] | None = None
    weight = 0.0
    for rng in parse_media_list(accept):
        if rng is None:
            continue
        if rng.type == "*" and rng.subtype == "*" and not rng.params:
            rank = (0, 0)
        elif rng.type == "application" and rng.subtype == "*" and not rng.params:
            rank = (1, 0)
        elif (rng.type, rng.subtype) == ("application", "taxii+json") and _taxii_params_fit(rng.params):
            rank = (2, len(rng.params))
        else:
            continue
        if best is None or rank > best:
            best, weight = rank, rng.q
        elif rank == best:
            weight = max(weight, rng.q)
    return best is not None and weight > 0


def _unsupported_versions(text: str) -> list[str]:
    found = []
    for rng in parse_media_list(text):
        if rng is not None and (rng.type, rng.subtype) == ("application", "taxii+json") and rng.params.get("version", "2.1") != "2.1":
            found.append(rng.params["version"][:20])
    return found


def taxii_content_type_ok(content_type: str | None) -> bool:
    """Whether a request body's ``Content-Type`` is the TAXII 2.1 media type (parameters ``version``, ``charset=utf-8``)."""
    members = parse_media_list(content_type or "", weights=False)
    if len(members) != 1 or members[0] is None:
        return False
    one = members[0]
    return (one.type, one.subtype) == ("application", "taxii+json") and _taxii_params_fit(one.params)


def _negotiate() -> None:
    """Check ``Accept`` (and a POST's ``Content-Type``), then leave medallion the exact type its checks look for."""
    env = request.environ
    accept = env.get("HTTP_ACCEPT")
    if not taxii_acceptable(accept):
        unsupported = _unsupported_versions(accept or "")
        why = f" (TAXII version {', '.join(unsupported)} is not supported)" if unsupported else ""
        raise NotAcceptable(f"this node answers only {MEDIA_TYPE_TAXII}; the Accept header {str(accept)[:200]!r} does not accept it{why}")
    env["HTTP_ACCEPT"] = MEDIA_TYPE_TAXII
    if request.method == "POST":
        ctype = env.get("CONTENT_TYPE")
        if not taxii_content_type_ok(ctype):
            unsupported = _unsupported_versions(ctype or "")
            why = f" (TAXII version {', '.join(unsupported)} is not supported)" if unsupported else ""
            raise UnsupportedMediaType(
                f"the request body must be {MEDIA_TYPE_TAXII} (charset=utf-8 may be added); got {str(ctype)[:200]!r}{why}"
            )
        env["CONTENT_TYPE"] = MEDIA_TYPE_TAXII


def _single_parameters() -> None:
    """A filter given more than once is a 400 (medallion would silently use the first one)."""
    for name in SINGLE_PARAMETERS:
        n = len(request.args.getlist(name))
        if n > 1:
            how = "one comma-separated list (e.g. match[type]=indicator,malware)" if name.startswith("match[") else "one value"
            raise BadRequest(f"the {name} parameter is given {n} times; it takes {how}")


def _negotiate_views(app: Flask) -> None:
    """Put the media-type and parameter checks between medallion's authentication and each TAXII view."""
    names = {bp.name for bp in _TAXII_BLUEPRINTS}
    for endpoint, view in list(app.view_functions.items()):
        if endpoint.partition(".")[0] not in names:
            continue
        inner = getattr(view, "__wrapped__", None)  # the view inside medallion's auth.login_required

        def checked(*args: Any, _view: Callable = inner or view, **kwargs: Any) -> Any:
            _negotiate()
            _single_parameters()
            return _view(*args, **kwargs)

        checked = functools.wraps(inner or view)(checked)
        app.view_functions[endpoint] = auth.login_required(checked) if inner is not None else checked


def _redirect_to_own_url(response: Response) -> Response:
    """A routing redirect (``/us`` to ``/us/``) points at this node's own URL, not at the request's ``Host``."""
    if not isinstance(request.routing_exception, RequestRedirect) or not 300 <= response.status_code < 400:
        return response
    target = urlsplit(request.routing_exception.new_url)
    path = target.path
    root = request.script_root
    if root and path.startswith(root + "/"):
        path = path[len(root):]
    location = current_app.medallion_backend.base_url().rstrip("/") + path + (f"?{target.query}" if target.query else "")
    return Response(b"", status=response.status_code, headers={"Location": location})


# -- /healthz ------------------------------------------------------------------------------------


def _sqlite_dir(store: Store) -> Path | None:
    """The folder of a SQLite store's file (None for another database)."""
    if store.dialect != "sqlite" or not store.engine.url.database:
        return None
    return Path(store.engine.url.database).parent


def _healthz() -> Response:
    """``GET /healthz`` without credentials: 200 ``{"status": "ok"}`` or 503 naming the failing check."""
    failing = _failing_check(current_app.extensions[_EXT])
    body = {"status": "ok"} if failing is None else {"status": "unavailable", "failing": failing}
    return Response(orjson.dumps(body), status=200 if failing is None else 503, mimetype="application/json", headers={"Cache-Control": "no-store"})


def _failing_check(ctx: NodeContext) -> str | None:
    try:
        ctx.store.get_meta("node")  # a trivial query through the store's pool
    except Exception as exc:  # noqa: BLE001 - whatever the failure, the database check fails
        log.warning("health check: database: %s: %s", type(exc).__name__, str(exc)[:200])
        return "database"
    threshold = ctx.node.config.health.min_free_disk
    if ctx.data_dir is not None and threshold > 0:
        try:
            free = shutil.disk_usage(ctx.data_dir).free
        except OSError as exc:
            log.warning("health check: disk: %s", exc)
            return "disk"
        if free < threshold:
            log.warning("health check: disk: %d bytes free in %s, below %d", free, ctx.data_dir, threshold)
            return "disk"
    return None


# -- hostile input (README "Hostile input") ------------------------------------------------------


class _GuardedRequest(Request):
    """A request whose JSON body is parsed only within the node's limits."""

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        root = current_app.extensions[_EXT].node.config.api_root
        data = self.get_data(cache=True)  # at most MAX_CONTENT_LENGTH bytes (413 beyond)
        # Every JSON value but the outermost is the first element of a container or follows a
        # comma, so this bounds what parsing would build (commas inside strings count too: it
        # errs on the safe side) at the cost of three byte scans.
        values = data.count(b",") + data.count(b"[") + data.count(b"{") + 1
        if values > root.max_json_values:
            raise PayloadTooLarge(
                f"the request body holds up to {values} JSON values; this node accepts at most {root.max_json_values}"
            )
        parsed = super().get_json(force=force, silent=silent, cache=True)
        objects = parsed.get("objects") if isinstance(parsed, dict) else None
        if isinstance(objects, list):
            if len(objects) > root.max_objects_per_envelope:
                raise PayloadTooLarge(
                    f"the envelope holds {len(objects)} objects; this node accepts at most {root.max_objects_per_envelope} per request"
                )
            for i, obj in enumerate(objects):
                if deeper_than(obj, root.max_object_depth):
                    raise BadRequest(f"objects[{i}] nests objects and arrays more than {root.max_object_depth} levels deep")
        return parsed

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:
            raise BadRequest("the request body must be JSON")
        raise BadRequest(f"the request body is not valid JSON: {e}")


def _guard(app: Flask, node: LoadedNode) -> None:
    """Limits on what a request may make the node do before it is answered (README "Hostile input")."""
    app.request_class = _GuardedRequest
    app.extensions[_THROTTLE] = LoginThrottle(limit=node.config.auth.max_failed_logins, window=node.config.auth.failed_login_window)
    app.register_error_handler(SlowClient, lambda e: taxii_error(408, str(e), "RequestTimeout"))
    app.register_error_handler(TooManyRequests, lambda e: taxii_error(429, e.message, e.title, {"Retry-After": str(e.retry_after)}))
    app.before_request(_guard_request)


def _guard_request() -> Response | None:
    if request.method == "HEAD":
        # medallion's views branch on GET/POST/DELETE and return nothing for HEAD (a 500):
        # serve it as GET; werkzeug still sends no body, as the environ says HEAD
        request.method = "GET"
    creds = _authorization()
    # identifiers in the path are STIX ids and UUIDs, nothing a database could choke on (NUL, 100 kB...)
    args = request.view_args or {}
    if "object_id" in args and not is_identifier(args["object_id"]):
        raise BadRequest(f"{args['object_id'][:100]!r} is not a STIX identifier (type--UUID)")
    if "status_id" in args and not _UUID_RE.match(args["status_id"]):
        raise BadRequest(f"{args['status_id'][:100]!r} is not a status identifier (UUID)")
    env = request.environ
    if (
        request.method == "POST"
        and not env.get("CONTENT_LENGTH")
        and "chunked" in env.get("HTTP_TRANSFER_ENCODING", "").lower()
        and creds is not None
    ):
        # a chunked body: read it now, bounded (werkzeug stops at MAX_CONTENT_LENGTH with 413),
        # and state its length for medallion's Content-Length check
        limit = current_app.extensions[_EXT].node.config.api_root.max_content_length
        data = request.get_data(cache=True)
        if len(data) > limit:
            raise PayloadTooLarge(f"the request body exceeds this node's max_content_length ({limit} bytes)")
        env["CONTENT_LENGTH"] = str(len(data))
    return None


def _authorization() -> Any:
    """The request's credentials; werkzeug raises on non-ASCII in a Basic token: treated as none (401)."""
    try:
        return request.authorization
    except ValueError:
        request.environ.pop("HTTP_AUTHORIZATION", None)
        return None


def _note_failed_login() -> None:
    """Count a failed Basic login against its account name, for every worker (``LoginThrottle``)."""
    creds = request.authorization
    if creds is None or not creds.username:
        return
    throttle: LoginThrottle = current_app.extensions[_THROTTLE]
    now = now_us()
    try:
        current_app.extensions[_EXT].store.note_failed_login(throttle.key(creds.username), now, forget_before=throttle.since(now))
    except StorageError as exc:  # the 401 still goes out; the count misses one
        log.warning("could not record a failed login for %r: %s", creds.username[:64], exc)


@auth.verify_password
def _verify(username: str, password: str) -> Account | None:
    """HTTP Basic credentials against the salted hash in the node's store.

    Once per request: a POST is authenticated from its head (``admit_from_the_head``)
    and again by the view's ``login_required``; the second time reuses the first answer.
    """
    verified = request.environ.get(_VERIFIED)
    if verified is not None:
        return verified
    account = _verify_once(username, password)
    if account is not None:
        request.environ[_VERIFIED] = account
    return account


def _verify_once(username: str, password: str) -> Account | None:
    ctx: NodeContext = current_app.extensions[_EXT]
    if ctx.certs is not None:
        by_cert = _certificate_account(ctx, username)
        if by_cert is not None:
            return by_cert if not username else _password_ok(ctx, by_cert, username, password)
    if not username:
        return None
    return _password_ok(ctx, None, username, password)


def _password_ok(ctx: NodeContext, expected: Account | None, username: str, password: str) -> Account | None:
    """Basic credentials against the account's salted hash, after the failed-login throttle.

    The account, its grants and the name's recent failed logins are one read. A name
    that failed too often is refused (429) before its password is looked at; every
    name is treated alike, configured or not (no account enumeration).
    """
    throttle: LoginThrottle = current_app.extensions[_THROTTLE]
    now = now_us()
    found = ctx.store.login(throttle.key(username), failures_after=throttle.since(now), failures_limit=throttle.limit)
    if wait := throttle.retry_after(found.locking_failure, now):
        raise TooManyRequests("too many failed logins for this account: try again later", retry_after=wait)
    if not found.exists or found.password_hash is None:
        ctx.cache.check("", password, _DUMMY_HASH)  # same cost as a real miss: no user enumeration by timing
        return None
    return (expected or account_of(username, found)) if ctx.cache.check(username, password, found.password_hash) else None


def _certificate_account(ctx: NodeContext, username: str) -> Account | None:
    """Mutual TLS: the account of the verified client certificate, or ``None`` if none was presented.

    A certificate not mapped to an account, or presented with Basic credentials of
    another account, is refused (403); an account mapped to a certificate subject
    must present its certificate here (401 with a password alone).
    """
    sock = request.environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    der = getpeercert(binary_form=True) if getpeercert is not None else None
    node = ctx.node.name
    if not der:
        if username and username in ctx.certs.accounts_with_certificates():
            raise Unauthorized(f"account {username!r} must present its client certificate to node {node!r} (mutual TLS)")
        return None
    subject, name = ctx.certs.lookup(der)
    if name is None:
        raise Forbidden(f"the client certificate {subject} is not mapped to any account of node {node!r}")
    if username and username != name:
        raise Forbidden(f"the client certificate {subject} belongs to account {name!r}; it cannot act as account {username!r}")
    found = load_account(ctx.store, name)
    if found is None:
        raise Forbidden(f"the client certificate {subject} names account {name!r}, which node {node!r} does not have")
    return found[1]


@auth.error_handler
def _auth_error(status: int) -> Response:
    if status == 401:
        _note_failed_login()
        return taxii_error(401, "authentication required: valid HTTP Basic credentials for this node", "Unauthorized")
    return taxii_error(status, "forbidden", "Forbidden")


# -- in front of the app under ``serve`` (README "Hostile input"; owned with exchange/node/worker.py) ----


def admit_from_the_head(app: Flask) -> Flask:
    """Check credentials, write grant and size from a request's head, before its body is read.

    ``serve`` puts this in front of every other hook: a request with a body (a POST)
    must carry valid credentials (HTTP Basic, or the client certificate under mutual
    TLS: the same ``_verify`` the views use, failed-login throttle included), and a POST
    of objects also needs the account's write grant on the collection, an acceptable
    ``Content-Type`` and a ``Content-Length`` within ``max_content_length`` (medallion's
    own checks, made earlier); otherwise it is answered 401/403/404/413/415/429 without
    a byte of its body being read, and the worker closes the connection after the
    answer.  The worker is told (``environ[AUTHENTICATED]``) once a request was
    authenticated, so it can keep strangers from taking all its threads.
    """
    app.before_request_funcs.setdefault(None, []).insert(0, _admit_before_body)
    app.teardown_request(_note_authenticated)
    return app


def _has_body(env: dict) -> bool:
    length = env.get("CONTENT_LENGTH") or ""
    return bool(length.strip().lstrip("0")) or "chunked" in env.get("HTTP_TRANSFER_ENCODING", "").lower()


def _admit_before_body() -> Response | None:
    env = request.environ
    if request.method in ("GET", "HEAD", "OPTIONS") or not _has_body(env):
        return None  # nothing to read, or a body the app never reads (the worker discards it)
    _authorization()
    refused = auth.login_required(lambda: None)()
    if refused is not None:
        return refused
    _tell_worker()
    rule = request.url_rule
    if request.method == "POST" and rule is not None and rule.endpoint == "objects.get_or_add_objects":
        from medallion.views.discovery import api_root_exists
        from medallion.views.objects import collection_exists, permission_to_write, validate_size_in_request_body

        args = request.view_args or {}
        _negotiate()
        api_root_exists(args["api_root"])
        collection_exists(args["api_root"], args["collection_id"])
        permission_to_write(args["api_root"], args["collection_id"])
        if env.get("CONTENT_LENGTH"):
            validate_size_in_request_body(args["api_root"])
    return None


def _note_authenticated(_exc: BaseException | None) -> None:
    if isinstance(auth.current_user(), Account):
        _tell_worker()


def _tell_worker() -> None:
    from exchange.node.worker import AUTHENTICATED

    tell = request.environ.get(AUTHENTICATED)
    if callable(tell):
        tell()
