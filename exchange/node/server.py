"""The node's WSGI application (Flask app factory) and its production server.

medallion supplies the TAXII 2.1 views; ``create_app`` mounts them on a fresh
Flask app per node with the ``ExchangeBackend``, hashed-password Basic auth
with a verification cache, an orjson JSON provider, and TAXII error bodies
(s3.6.1) for every error, including werkzeug's.  ``serve`` runs it under
gunicorn (threaded workers), never Flask's development server.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from flask import Flask, Request, Response, current_app, request
from flask.json.provider import JSONProvider
from medallion import auth
from medallion.exceptions import MedallionError
from medallion.views import collections as v_collections
from medallion.views import discovery as v_discovery
from medallion.views import manifest as v_manifest
from medallion.views import objects as v_objects
from werkzeug.exceptions import HTTPException

from exchange.config import LoadedNode
from exchange.errors import BadRequest, ExchangeError, Forbidden, PayloadTooLarge, StorageError, TooManyRequests, Unauthorized
from exchange.node.accounts import Account, LoginThrottle, VerificationCache, hash_password
from exchange.node.backend import MEDIA_TYPE_TAXII, AfterWrite, ExchangeBackend
from exchange.node.ops import account_of, load_account
from exchange.node.worker import DEFAULT_REQUEST_TIMEOUT, SlowClient, worker_class
from exchange.stix import deeper_than, is_identifier
from exchange.storage.store import Store, now_us

log = logging.getLogger(__name__)

_EXT = "cti_exchange"
_THROTTLE = "cti_exchange_login_throttle"
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DUMMY_HASH = hash_password("dummy-password-for-timing")


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


def create_app(
    node: LoadedNode,
    store: Store,
    *,
    strict_validation: bool = False,
    after_write: AfterWrite | None = None,
    write_activity: Callable[[bool], None] | None = None,
    tls: bool = False,
    client_certificates: bool = False,
) -> Flask:
    """A Flask app serving one node's TAXII 2.1 API root.

    ``after_write(collection)`` runs after objects were committed; ``write_activity``
    is called with True when a POST begins (before its body is read) and False
    when it ends, so a background releaser can tell a write is under way;
    ``tls``: the server speaks only HTTPS (objects whose IEP marking says
    ``encrypt_in_transit: must`` are withheld from every read endpoint otherwise);
    ``client_certificates``: mutual TLS, a verified client certificate identifies its
    account (``certificate_subject`` in node.yaml).
    """
    app = Flask(f"cti-exchange-{node.name}")
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = node.config.api_root.max_content_length + 64 * 1024
    certs = None
    if client_certificates:
        from exchange.node.tls import CertificateMap

        certs = CertificateMap.from_accounts(node.config.accounts)
    app.extensions[_EXT] = NodeContext(node=node, store=store, certs=certs)
    # medallion's views read these three attributes from current_app
    app.medallion_backend = ExchangeBackend(
        node, store, strict_validation=strict_validation, after_write=after_write, encrypted_transport=tls
    )
    app.taxii_config = {"max_page_size": node.config.max_page_size}
    app.users_backend = {}
    for bp in (v_collections.collections_bp, v_discovery.discovery_bp, v_manifest.manifest_bp, v_objects.objects_bp):
        app.register_blueprint(bp)
    app.register_error_handler(MedallionError, lambda e: taxii_error(e.status, str(e.message), type(e).__name__))
    app.register_error_handler(ExchangeError, lambda e: taxii_error(e.status, e.message, e.title))
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    _guard(app, node)
    if write_activity is not None:
        _track_writes(app, write_activity)
    return app


def _track_writes(app: Flask, activity: Callable[[bool], None]) -> None:
    """Tell ``activity`` when each POST begins and ends (whatever its outcome)."""

    def began() -> None:
        if request.method == "POST":
            request.environ["cti_exchange.write"] = True
            activity(True)

    def ended(_exc: BaseException | None) -> None:
        if request.environ.pop("cti_exchange.write", False):
            activity(False)

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
    try:
        creds = request.authorization
    except ValueError:  # werkzeug raises on non-ASCII in a Basic token: treat it as no credentials (401)
        request.environ.pop("HTTP_AUTHORIZATION", None)
        creds = None
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
    """HTTP Basic credentials against the salted hash in the node's store."""
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


def serve(
    app_factory: Callable[[], Flask],
    *,
    host: str,
    port: int,
    workers: int = 1,
    threads: int = 4,
    api_root: str,
    out: Any = sys.stdout,
    certfile: str | None = None,
    keyfile: str | None = None,
    client_ca: str | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> None:
    """Run the app under gunicorn; print the API root URL once listening.

    ``request_timeout``: seconds a client has to send each request (head and body)
    from its first bytes; later it is answered 408 and disconnected (``exchange.node.worker``).

    ``certfile``/``keyfile``: serve HTTPS only; ``client_ca``: also verify client
    certificates against that CA bundle (mutual TLS; see ``exchange.node.tls.server_context``).
    """
    from gunicorn.app.base import BaseApplication

    scheme = "https" if certfile else "http"

    def when_ready(server: Any) -> None:
        for sock in server.LISTENERS:
            h, p = sock.sock.getsockname()[:2]
            print(f"API root: {scheme}://{h}:{p}/{api_root}/", file=out, flush=True)
            print(f"Discovery: {scheme}://{h}:{p}/taxii2/", file=out, flush=True)

    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": worker_class(request_timeout),  # gthread with a request deadline
        "timeout": 60,
        "graceful_timeout": 10,
        "keepalive": 5,
        "when_ready": when_ready,
        "accesslog": None,
        "loglevel": "warning",
        "proc_name": f"cti-exchange-{api_root}",
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
    }
    if certfile:
        import os

        from exchange.node.tls import server_context

        contexts: dict[int, Any] = {}

        def ssl_context(_conf: Any, _default: Any) -> Any:
            # gunicorn asks for a context per connection: build it once per worker process
            pid = os.getpid()
            if pid not in contexts:
                contexts.clear()
                contexts[pid] = server_context(certfile, keyfile, client_ca)
            return contexts[pid]

        options.update({"certfile": certfile, "keyfile": keyfile, "ssl_context": ssl_context})
        if client_ca:
            options["ca_certs"] = client_ca

    class _App(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return app_factory()

    _App().run()
