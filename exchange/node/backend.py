"""The medallion ``Backend`` of a cti-exchange node (TAXII 2.1 s4, s5).

medallion's views do the HTTP part (content length, routing; media types and
repeated parameters are checked in front of them, ``exchange.node.server``);
this class answers them from the node's ``Store`` and enforces, per account,
which collections exist for it (404), which it may read or write (403) and
which status resources are its own.  Paging uses stateless signed keyset
cursors (``exchange.node.cursor``), so any worker can serve any ``next``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from flask import g, request
from medallion import auth
from medallion.backends.base import Backend
from medallion.exceptions import ProcessingError

from exchange.config import CollectionConfig, LoadedNode
from exchange.errors import BadRequest, ExchangeError
from exchange.node import cursor, receipts
from exchange.node.accounts import Account
from exchange.node.ops import inbound_rules_for, inbound_signatures, local_copies
from exchange.policy import current_policy
from exchange.policy.markings import tlp_name
from exchange.stix import MEDIA_TYPE_STIX, check_object, check_object_strict, format_timestamp, is_identifier, is_type_name, parse_timestamp
from exchange.storage import audit
from exchange.storage.store import AddResult, Row, Selection, Store, now_us

MEDIA_TYPE_TAXII = "application/taxii+json;version=2.1"

#: Called after objects were committed to a collection (e.g. to release them under policy).
AfterWrite = Callable[[CollectionConfig], None]


@dataclass(frozen=True)
class PageRequest:
    sel: Selection
    limit: int
    after: tuple[int, int] | None
    digest: str
    endpoint: str = ""


class ExchangeBackend(Backend):
    """medallion backend over a ``Store``, with per-account permissions."""

    def __init__(
        self,
        node: LoadedNode,
        store: Store,
        *,
        strict_validation: bool = False,
        after_write: AfterWrite | None = None,
        encrypted_transport: bool = False,
        public_url: str | None = None,
        **_: Any,
    ) -> None:
        self.node = node
        self.config = node.config
        self.store = store
        self.api_root = node.config.api_root.path
        self._secret = store.secret()
        self._check = check_object_strict if strict_validation else check_object
        self._after_write = after_write
        self._rules = {name: inbound_rules_for(node.config, name) for name in node.config.partners}
        self._by_id = {c.id: c for c in node.config.collections}
        # served over plain HTTP: rows flagged encrypt_in_transit are left out of every read endpoint
        self._plain = not encrypted_transport
        self._scheme = "https" if encrypted_transport else "http"
        self.public_url = public_url if public_url is not None else node.config.public_url
        self._withheld_seen: set[tuple] = set()
        self._withheld_lock = threading.Lock()

    # -- who is asking -------------------------------------------------------------

    @staticmethod
    def account() -> Account:
        user = auth.current_user()
        if not isinstance(user, Account):  # views are all login_required; this is a guard
            raise ProcessingError("authentication required", 401)
        return user

    def _visible(self, api_root: str, collection_id: str) -> CollectionConfig | None:
        if api_root != self.api_root:
            return None
        coll = self._by_id.get(collection_id)
        if coll is None or not self.account().can_see(coll.id):
            return None
        return coll

    def _require(self, api_root: str, collection_id: str, perm: str) -> CollectionConfig:
        coll = self._visible(api_root, collection_id)
        if coll is None:
            raise ProcessingError(f"Collection '{collection_id}' not found", 404)
        acct = self.account()
        allowed = acct.can_read(coll.id) if perm == "read" else _may_write(acct, coll)
        if not allowed:
            raise ProcessingError(f"Forbidden to {perm} collection '{collection_id}'", 403)
        return coll

    # -- server information (TAXII 2.1 s4) --------------------------------------------

    def base_url(self) -> str:
        """Where clients reach this node (ends in ``/``): ``public_url``, else the address the server is bound to.

        Never the request's ``Host`` header (it is the client's to set). Under gunicorn the
        bound address is the local end of the connection (``gunicorn.socket``): the listening
        address, or the interface the connection came in on for a wildcard bind. With no
        socket (a test client), ``localhost``.
        """
        if self.public_url:
            return self.public_url
        return bound_url(request.environ.get("gunicorn.socket"), self._scheme)

    def _root_url(self) -> str:
        return self.base_url() + self.api_root + "/"

    def server_discovery(self) -> dict:
        """Discovery resource (s4.1.1)."""
        cfg = self.config
        out = {"title": cfg.title, "default": self._root_url(), "api_roots": [self._root_url()]}
        if cfg.description:
            out["description"] = cfg.description
        if cfg.contact:
            out["contact"] = cfg.contact
        return out

    def get_api_root_information(self, api_root: str) -> dict | None:
        """API root resource (s4.2.1)."""
        if api_root != self.api_root:
            return None
        root = self.config.api_root
        out = {"title": root.title, "versions": [MEDIA_TYPE_TAXII], "max_content_length": root.max_content_length}
        if root.description:
            out["description"] = root.description
        return out

    def get_status(self, api_root: str, status_id: str) -> dict | None:
        """Status resource (s4.3.1); only the account that made the request may read it."""
        if api_root != self.api_root:
            return None
        found = self.store.get_status(api_root, status_id)
        if found is None or found[0] != self.account().name:
            return None
        return found[1]

    # -- collections (s5.1, s5.2) --------------------------------------------------------

    def _collection_resource(self, coll: CollectionConfig) -> dict:
        acct = self.account()
        out = {
            "id": coll.id,
            "title": coll.title,
            "alias": coll.alias,
            "can_read": acct.can_read(coll.id),
            "can_write": _may_write(acct, coll),
            "media_types": [MEDIA_TYPE_STIX],
        }
        if coll.description:
            out["description"] = coll.description
        return out

    def get_collections(self, api_root: str) -> dict | None:
        if api_root != self.api_root:
            return None
        acct = self.account()
        listed = [self._collection_resource(c) for c in self.config.collections if acct.can_see(c.id)]
        return {"collections": listed} if listed else {}

    def get_collection(self, api_root: str, collection_id: str) -> dict | None:
        coll = self._visible(api_root, collection_id)
        return None if coll is None else self._collection_resource(coll)

    # -- reading objects (s5.3, s5.4, s5.6, s5.8) ---------------------------------------------

    def _page_request(
        self, endpoint: str, collection_id: str, filter_args: dict, allowed: Sequence[str], limit: int, object_id: str | None = None
    ) -> PageRequest:
        try:
            sel = parse_filters(collection_id, filter_args, allowed)
        except ExchangeError as exc:
            raise ProcessingError(exc.message, exc.status) from exc
        if self._plain:
            sel = replace(sel, plain_transport=True)
        digest = cursor.request_digest([endpoint, collection_id, object_id, _selection_key(sel)])
        after = None
        token = filter_args.get("next")
        if token:
            try:
                after = cursor.decode(self._secret, token, digest)
            except ExchangeError as exc:
                raise ProcessingError(exc.message, exc.status) from exc
        return PageRequest(sel=sel, limit=limit, after=after, digest=digest, endpoint=endpoint)

    def _fetch(self, req: PageRequest, *, object_id: str | None = None, with_body: bool = True) -> tuple[list[Row], bool, dict]:
        rows, more = self.store.page(req.sel, limit=req.limit, after=req.after, object_id=object_id, with_body=with_body)
        if self._plain:
            upto = (rows[-1].date_added, rows[-1].seq) if more and rows else None
            withheld = self.store.withheld_in_range(req.sel, after=req.after, upto=upto, object_id=object_id)
            if withheld:
                self._audit_withheld(req.sel.collection_id, req.endpoint, withheld)
        headers: dict[str, str] = {}
        if rows:
            headers["X-TAXII-Date-Added-First"] = format_timestamp(rows[0].date_added)
            headers["X-TAXII-Date-Added-Last"] = format_timestamp(rows[-1].date_added)
            g.cti_exchange_newest = rows[-1].date_added  # for a releaser's read hook (exchange.node.server.Served)
        return rows, more, headers

    def _envelope(self, key: str, items: list, rows: list[Row], more: bool, req: PageRequest) -> dict:
        g.cti_exchange_served = len(items)  # for the served-objects counter (exchange.node.observe), without re-parsing the page
        if not items:
            return {}
        out: dict[str, Any] = {"more": more}
        if more:
            out["next"] = cursor.encode(self._secret, rows[-1].date_added, rows[-1].seq, req.digest)
        out[key] = items
        return out

    def get_objects(self, api_root: str, collection_id: str, filter_args: dict, allowed_filters: Sequence[str], limit: int):
        """Envelope of objects (s5.4), ``date_added`` order, with ``more``/``next``."""
        self._require(api_root, collection_id, "read")
        req = self._page_request("objects", collection_id, filter_args, allowed_filters, limit)
        rows, more, headers = self._fetch(req)
        items = [orjson.Fragment(r.body) for r in rows]
        return self._envelope("objects", items, rows, more, req), headers

    def get_object_manifest(self, api_root: str, collection_id: str, filter_args: dict, allowed_filters: Sequence[str], limit: int):
        """Manifest resource (s5.3)."""
        self._require(api_root, collection_id, "read")
        req = self._page_request("manifest", collection_id, filter_args, allowed_filters, limit)
        rows, more, headers = self._fetch(req, with_body=False)
        items = [
            {
                "id": r.stix_id,
                "date_added": format_timestamp(r.date_added),
                "version": r.version,
                "media_type": f"application/stix+json;version={r.spec_version}",
            }
            for r in rows
        ]
        return self._envelope("objects", items, rows, more, req), headers

    def _must_exist(self, collection_id: str, object_id: str, endpoint: str) -> None:
        """404 unless the object has a version this request may see (over plain HTTP: not flagged encrypt_in_transit)."""
        if self.store.exists(collection_id, object_id, plain_transport=self._plain):
            return
        if self._plain:
            sel = Selection(collection_id, versions=("all",))
            withheld = self.store.withheld_in_range(sel, after=None, upto=None, object_id=object_id)
            if withheld:
                self._audit_withheld(collection_id, endpoint, withheld)
        raise ProcessingError(f"Object '{object_id}' not found", 404)

    def _audit_withheld(self, collection_id: str, endpoint: str, withheld: list[tuple[str, str]]) -> None:
        """One audit entry per object version a plain-HTTP request did not get (once per account, endpoint and version)."""

        acct = self.account()
        with self._withheld_lock:
            fresh = [(oid, v) for oid, v in withheld if (acct.name, collection_id, endpoint, oid, v) not in self._withheld_seen]
            if len(self._withheld_seen) > 100_000:
                self._withheld_seen.clear()
            self._withheld_seen.update((acct.name, collection_id, endpoint, oid, v) for oid, v in fresh)
        if not fresh:
            return
        clause = current_policy().one("iep-encrypted-transport")
        coll = self._by_id[collection_id]
        detail = {
            "reason": "IEP encrypt_in_transit 'must': not served over plain HTTP (this node runs without TLS)",
            "account": acct.name, "collection": coll.alias, "endpoint": endpoint, "transport": "http",
        }
        audit.record(self.store, [
            audit.Entry("transport-withhold", acct.partner, oid, v, "withhold", (clause.id,) if clause else (), detail)
            for oid, v in fresh
        ])

    def get_object(self, api_root: str, collection_id: str, object_id: str, filter_args: dict, allowed_filters: Sequence[str], limit: int):
        """Envelope with the versions of one object selected by the filters (s5.6)."""
        self._require(api_root, collection_id, "read")
        self._must_exist(collection_id, object_id, "object")
        req = self._page_request("object", collection_id, filter_args, allowed_filters, limit, object_id)
        rows, more, headers = self._fetch(req, object_id=object_id)
        items = [orjson.Fragment(r.body) for r in rows]
        return self._envelope("objects", items, rows, more, req), headers

    def get_object_versions(self, api_root: str, collection_id: str, object_id: str, filter_args: dict, allowed_filters: Sequence[str], limit: int):
        """Versions resource (s5.8): every version of one object, in ``date_added`` order."""
        self._require(api_root, collection_id, "read")
        self._must_exist(collection_id, object_id, "versions")
        args = dict(filter_args)
        args["match[version]"] = "all"
        req = self._page_request("versions", collection_id, args, tuple(allowed_filters) + ("version",), limit, object_id)
        rows, more, headers = self._fetch(req, object_id=object_id, with_body=False)
        return self._envelope("versions", [r.version for r in rows], rows, more, req), headers

    # -- writing objects (s5.5, s5.7) -------------------------------------------------------

    def add_objects(self, api_root: str, collection_id: str, objs: Any, request_time: Any) -> dict:
        """Check and store an envelope's objects; answers a ``complete`` status (s4.3.1).

        Invalid objects are listed in ``failures`` with what is wrong; valid ones
        in the same envelope still land.  ``complete`` means committed to disk.
        """
        coll = self._require(api_root, collection_id, "write")
        if not isinstance(objs, dict) or not isinstance(objs.get("objects"), list):
            raise ProcessingError("The request body must be a TAXII envelope: a JSON object with an 'objects' list", 400)
        posted = objs["objects"]
        acct = self.account()
        failures: list[dict] = []
        valid: list[dict] = []
        for obj in posted:
            problem = self._check(obj)
            if problem is None:
                valid.append(obj)
            else:
                failures.append(_failure(obj, f"inbound.stix-valid: {problem}"))
        if coll.role == "partner-inbox" and valid:
            refused = self._rules[coll.partner].judge(  # type: ignore[index]
                valid, self.store.resolver(coll.id), local_copies(self.store, self.config, valid, self.node.identities),
                inbound_signatures(self.store, self.config, coll.id, valid),
            )
            for i, reason in sorted(refused.items()):
                failures.append(_failure(valid[i], reason))
            valid = [o for i, o in enumerate(valid) if i not in refused]
        if coll.role == "partner-receipts":  # only the partner's own signed audit heads (exchange.node.receipts)
            ident = self.config.partners[coll.partner].identity  # type: ignore[index]
            failures += [_failure(o, why) for o in valid if (why := receipts.refusal(o, ident)) is not None]
            valid = [o for o in valid if receipts.refusal(o, ident) is None]
        with self.store.transaction() as conn:  # objects, audit and status: one commit, one fsync
            # origin: what this node observed (a partner's push into its inbox, or a local account's write)
            origin = f"push:{coll.partner}" if coll.role == "partner-inbox" else f"local:{acct.name}"
            result = self.store.add_in(conn, collection_id, valid, origin=origin)
            failures += result.failures
            if coll.role == "partner-inbox":
                audit.append(conn, _inbound_entries(coll.partner, valid, failures, result))  # type: ignore[arg-type]
            else:  # corrections are versions: every conflict with a stored version is on the record
                audit.append(conn, [
                    audit.Entry("conflict", None, f["id"], f["version"], "refused", ("stix.same-version-differs",),
                                {"reason": f["message"], "where": f"TAXII add to {coll.alias} by {acct.name}"})
                    for f in result.failures if f["message"].startswith("conflict:")
                ])
            if coll.role == "partner-receipts" and result.successes:  # answer with our receipts and our own signed head
                receipts.on_partner_checkpoint(self.store, self.config, coll.partner, conn)  # type: ignore[arg-type]
            status = {
                "id": str(uuid.uuid4()),
                "status": "complete",
                "request_timestamp": format_timestamp(now_us()),
                "total_count": len(posted),
                "success_count": len(result.successes),
                "failure_count": len(failures),
                "pending_count": 0,
            }
            if result.successes:
                status["successes"] = result.successes
            if failures:
                status["failures"] = failures
            self.store.save_status(api_root, acct.name, status, conn=conn)
        if result.added and self._after_write is not None:
            self._after_write(coll)
        return status

    def delete_object(self, api_root: str, collection_id: str, object_id: str, filter_args: dict, allowed_filters: Sequence[str]) -> None:
        """Delete the selected versions of an object (s5.7); 404 if none matched."""
        coll = self._require(api_root, collection_id, "write")
        if coll.role == "partner-receipts":
            raise ProcessingError("receipts and audit checkpoints are append-only: nothing is deleted from this collection", 403)
        try:
            sel = parse_filters(collection_id, filter_args, allowed_filters)
        except ExchangeError as exc:
            raise ProcessingError(exc.message, exc.status) from exc
        if "match[version]" not in filter_args:
            sel = Selection(collection_id=collection_id, versions=("all",), spec_versions=sel.spec_versions)
        if self.store.delete_object(sel, object_id) == 0:
            raise ProcessingError(f"Object '{object_id}' not found", 404)


def bound_url(sock: Any, scheme: str) -> str:
    """``scheme://host:port/`` of a connection's local end (IPv6 in brackets); ``scheme://localhost/`` without one."""
    try:
        local = sock.getsockname()
    except (AttributeError, OSError, TypeError, ValueError):
        local = None
    if not isinstance(local, tuple) or len(local) < 2:  # no socket, or a unix socket's path
        return f"{scheme}://localhost/"
    host, port = str(local[0]), local[1]
    if ":" in host:
        host = f"[{host.split('%', 1)[0]}]"
    return f"{scheme}://{host}:{port}/"


def _may_write(acct: Account, coll: CollectionConfig) -> bool:
    """A write grant, on any collection but a ``partner-read`` one: only the policy release writes what a partner reads."""
    return coll.role != "partner-read" and acct.can_write(coll.id)


def _inbound_entries(partner: str, accepted: list[dict], failures: list[dict], result: AddResult) -> list[audit.Entry]:
    """Audit entries for a partner's write: one per accepted and one per refused object."""
    refused_ids = {f.get("id") for f in result.failures}
    now = now_us()
    out = []
    for obj in accepted:
        if obj["id"] in refused_ids:
            continue
        version = obj.get("modified") or obj.get("created")
        if isinstance(version, str) and (obj["id"], version) not in result.new:
            continue  # already stored (an earlier push or our pull): one accepted entry per version
        detail: dict[str, Any] = {"type": obj.get("type"), "tlp": tlp_name(obj)}
        if isinstance(version, str):
            detail["latency_s"] = round((now - parse_timestamp(version)) / 1e6, 3)
        out.append(audit.Entry("inbound-accept", partner, obj["id"], version, "accepted", (), detail))
    for f in failures:
        rule = str(f.get("message", "")).split(":", 1)[0]
        out.append(
            audit.Entry("inbound-reject", partner, f.get("id") or None, f.get("version"), "rejected", (rule,), {"reason": f.get("message", "")})
        )
    return out


def _failure(obj: Any, message: str) -> dict:
    out: dict[str, Any] = {"id": obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else "", "message": message}
    if isinstance(obj, dict):
        version = obj.get("modified") or obj.get("created")
        if isinstance(version, str):
            out["version"] = version
    return out


def _selection_key(sel: Selection) -> list:
    """What a ``next`` token is bound to.  Not ``added_after``: the cursor position is
    always later than it, so a client may resend it or not with ``next``."""
    return [sorted(sel.ids), sorted(sel.types), sorted(sel.versions), sorted(sel.spec_versions)]


def _split(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


def parse_filters(collection_id: str, args: Mapping[str, str], allowed: Sequence[str]) -> Selection:
    """TAXII 2.1 s3.4 filters to a ``Selection``; ``BadRequest`` for malformed values.

    ``added_after`` is exclusive; ``match[version]`` defaults to ``last``;
    filters an endpoint does not support are ignored, as s3.4 allows.
    """
    ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    versions: tuple[str, ...] = ("last",)
    spec_versions: tuple[str, ...] = ()
    added_after = None
    if "added_after" in args:
        try:
            added_after = parse_timestamp(args["added_after"])
        except ValueError as exc:
            raise BadRequest(f"added_after: {exc}") from None
    if "id" in allowed and "match[id]" in args:
        ids = _split(args["match[id]"])
        if not ids or not all(is_identifier(i) for i in ids):
            raise BadRequest("match[id]: expected comma-separated STIX identifiers")
    if "type" in allowed and "match[type]" in args:
        types = _split(args["match[type]"])
        if not types or not all(is_type_name(t) for t in types):
            raise BadRequest("match[type]: expected comma-separated STIX types")
    if "version" in allowed and "match[version]" in args:
        versions = _split(args["match[version]"])
        if not versions:
            raise BadRequest("match[version]: expected first, last, all or timestamps")
        for v in versions:
            if v not in ("first", "last", "all"):
                try:
                    parse_timestamp(v)
                except ValueError as exc:
                    raise BadRequest(f"match[version]: {exc}") from None
    if "spec_version" in allowed and "match[spec_version]" in args:
        spec_versions = _split(args["match[spec_version]"])
        if not spec_versions or any(v not in ("2.0", "2.1") for v in spec_versions):
            raise BadRequest("match[spec_version]: expected 2.0 and/or 2.1")
    return Selection(
        collection_id=collection_id, ids=ids, types=types, versions=versions, spec_versions=spec_versions, added_after=added_after
    )
