"""TAXII 2.1 client side of the exchange: the only module that imports ``taxii2client``.

Wraps ``taxii2-client`` 2.3.0 with what a sync agent needs and the library
lacks: a timeout on every request, the ``X-TAXII-Date-Added-*`` headers of
each page, a progress guard against servers that answer ``more`` without
``next``, and one translation of HTTP failures into ``PartnerUnavailable``
(retry) or ``PartnerAuthError`` (stop), and of TLS failures (wrong CA, expired
or refused certificate) into ``PartnerTLSError`` (stop) with a readable reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from taxii2client.common import _HTTPConnection
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import ApiRoot, Collection, Server, Status

from exchange.errors import ConfigError, PartnerAuthError, PartnerError, PartnerTLSError, PartnerUnavailable

__all__ = ["Page", "PartnerClient"]


class _TimeoutAdapter(HTTPAdapter):
    """A timeout on every request, and *our* CA bundle: requests lets ``REQUESTS_CA_BUNDLE`` /
    ``CURL_CA_BUNDLE`` in the environment override a session's ``verify`` (psf/requests#3829)."""

    def __init__(self, timeout: float, verify: bool | str = True, **kwargs: Any) -> None:
        self._timeout = timeout
        self._verify = verify
        super().__init__(**kwargs)

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        if self._verify is not True:
            kwargs["verify"] = self._verify
        return super().send(request, **kwargs)


def speaks_tls(url: str, timeout: float = 3.0) -> bool:
    """Whether the server at ``url``'s host and port completes a TLS handshake (certificate not checked: a probe only)."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=parts.hostname):
            return True
    except (OSError, ssl.SSLError, ValueError):
        return False


@dataclass(frozen=True)
class Page:
    """One page of a partner's collection (TAXII 2.1 s3.7 envelope plus headers)."""

    objects: list[dict]
    more: bool
    next: str | None
    date_added_first: str | None
    date_added_last: str | None


class PartnerClient:
    """A connection to one partner's API root, as one account."""

    def __init__(
        self,
        api_root_url: str,
        user: str,
        password: str,
        *,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = api_root_url if api_root_url.endswith("/") else api_root_url + "/"
        self.user = user
        _check_tls_files(self.url, verify, cert)
        self._conn = _HTTPConnection(user=user, password=password, verify=verify, version="2.1", cert=cert)
        adapter = _TimeoutAdapter(timeout, verify, max_retries=0)
        self._conn.session.mount("http://", adapter)
        self._conn.session.mount("https://", adapter)
        self._last_headers: dict[str, str] = {}
        self._lock = threading.RLock()  # one request at a time (a prefetching page walk runs its requests on a thread)
        self._conn.session.hooks["response"].append(self._remember)
        self._collections: dict[str, Collection] = {}

    @classmethod
    def connect(cls, url: str, user: str, password: str, **kwargs: Any) -> PartnerClient:
        """A client for an API root URL, or for a discovery URL (``.../taxii2/``: its default API root)."""
        if url.rstrip("/").endswith("/taxii2"):
            probe = cls(url, user, password, **kwargs)
            try:
                server = Server(probe.url, conn=probe._conn)
                default = probe._call("discovery", lambda: server.default)
            finally:
                probe.close()
            if default is None:
                raise PartnerError(f"partner {url} names no default API root")
            url = default.url
        return cls(url, user, password, **kwargs)

    def _remember(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._last_headers = dict(resp.headers)

    def close(self) -> None:
        self._conn.close()

    # -- errors ------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            with self._lock:
                return fn(*args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            detail = _error_detail(exc.response)
            if status in (401, 403):
                raise PartnerAuthError(f"{what}: partner {self.url} refused account {self.user!r} ({status}){detail}", status=status) from exc
            if status >= 500 or status in (408, 429):
                raise PartnerUnavailable(f"{what}: partner {self.url} answered {status}{detail}") from exc
            raise PartnerError(f"{what}: partner {self.url} answered {status}{detail}", status=status) from exc
        except requests.ConnectionError as exc:  # requests' SSLError is one
            reason, fatal = classify_ssl_error(exc)
            if fatal:  # a certificate or protocol problem: retrying cannot help
                raise PartnerTLSError(f"{what}: TLS with partner {self.url} failed: {reason}") from exc
            if isinstance(exc, requests.exceptions.SSLError):
                raise PartnerUnavailable(f"{what}: partner {self.url} unreachable: TLS connection failed: {reason}") from exc
            if self.url.lower().startswith("http://") and speaks_tls(self.url):  # retrying plain HTTP cannot help
                https = "https://" + self.url[len("http://"):]
                raise PartnerTLSError(f"{what}: partner speaks HTTPS? got a TLS handshake at {self.url}: use {https}") from exc
            raise PartnerUnavailable(f"{what}: partner {self.url} unreachable: {exc.__class__.__name__}") from exc
        except requests.Timeout as exc:
            raise PartnerUnavailable(f"{what}: partner {self.url} unreachable: {exc.__class__.__name__}") from exc
        except TAXIIServiceException as exc:
            raise PartnerError(f"{what}: partner {self.url}: {str(exc).splitlines()[0]}") from exc
        except ValueError as exc:  # invalid JSON from the partner
            raise PartnerUnavailable(f"{what}: partner {self.url} sent an unreadable answer: {exc}") from exc

    # -- collections ----------------------------------------------------------------

    def collection(self, ref: str) -> Collection:
        """A collection on the partner's API root by id or alias (TAXII 2.1 s5.2)."""
        if ref not in self._collections:
            root = ApiRoot(self.url, conn=self._conn)
            found = self._call("list collections", lambda: root.collections)
            for coll in found:
                self._collections[coll.id] = coll
                if getattr(coll, "alias", None):
                    self._collections[coll.alias] = coll
            if ref not in self._collections:
                raise PartnerError(f"partner {self.url} offers account {self.user!r} no collection {ref!r}", status=404)
        return self._collections[ref]

    def pages(
        self, ref: str, *, added_after: str | None = None, next_token: str | None = None, limit: int = 1000,
        prefetch: bool = False,
    ) -> Iterator[Page]:
        """Pages of objects (all versions) after ``added_after``, following ``next`` to the end (TAXII 2.1 s5.4).

        ``prefetch``: ask for the next page as soon as this one has arrived, on a thread
        of its own, so that what the caller does with a page overlaps the partner's
        work on the next (one page ahead, never more). A walk left unfinished waits
        for that request (bounded by the timeout) and drops its answer; the client
        makes one request at a time, so other calls wait for it too.
        """
        coll = self.collection(ref)

        def params(token: str | None) -> dict[str, Any]:
            # the same filters on every page of a walk, plus ``next`` after the first (TAXII 2.1 s3.4)
            out: dict[str, Any] = {"limit": limit, "version": "all"}
            if added_after:
                out["added_after"] = added_after
            if token:
                out["next"] = token
            return out

        pool = ThreadPoolExecutor(1, thread_name_prefix="cti-exchange-prefetch") if prefetch else None
        ahead: Future | None = None
        seen_tokens: set[str] = set()
        try:
            while True:
                if ahead is not None:
                    envelope, headers = ahead.result()
                    ahead = None
                else:
                    envelope, headers = self._get_page(coll, params(next_token))
                objects = envelope.get("objects", []) or []
                more = bool(envelope.get("more", False))
                token = envelope.get("next")
                if more and (not token or token in seen_tokens):
                    raise PartnerError(f"partner {self.url} said more=true without a new 'next'; stopping to avoid a loop")
                if more:
                    seen_tokens.add(token)
                    next_token = token
                    if pool is not None:
                        ahead = pool.submit(self._get_page, coll, params(token))
                yield Page(
                    objects=objects,
                    more=more,
                    next=token if more else None,
                    date_added_first=headers.get("X-TAXII-Date-Added-First"),
                    date_added_last=headers.get("X-TAXII-Date-Added-Last"),
                )
                if not more:
                    return
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _get_page(self, coll: Collection, params: dict[str, Any]) -> tuple[dict, dict[str, str]]:
        """One Get Objects request (TAXII 2.1 s5.4) and its response's headers."""
        with self._lock:  # the headers of this request, not of one another thread made since
            return self._call("get objects", coll.get_objects, **params), self._last_headers

    def manifest(self, ref: str, *, limit: int = 1000) -> Iterator[dict]:
        """Every manifest entry (all versions) of a collection, following ``next`` (TAXII 2.1 s5.3)."""
        coll = self.collection(ref)
        token: str | None = None
        seen: set[str] = set()
        while True:
            params: dict[str, Any] = {"limit": limit, "version": "all"}
            if token:
                params["next"] = token
            env = self._call("get manifest", coll.get_manifest, **params)
            yield from env.get("objects", []) or []
            token = env.get("next")
            if not env.get("more") or not token or token in seen:
                return
            seen.add(token)

    def reveal(self, ref: str, object_id: str, endpoints: tuple[str, ...] = ("objects", "object", "versions", "manifest")) -> dict[str, list]:
        """What every read endpoint of a collection shows of one object (leak checks, TAXII 2.1 s5.3-s5.8).

        Keys: ``objects`` (Get Objects with ``match[id]``, all versions), ``object``
        (Get An Object, all versions), ``versions`` (Get Object Versions), ``manifest``
        (Get Object Manifests with ``match[id]``).  A 404 counts as nothing shown.
        """
        coll = self.collection(ref)
        out: dict[str, list] = {}

        def grab(key: str, fn: Any, *args: Any, **kwargs: Any) -> None:
            try:
                env = self._call(key, fn, *args, **kwargs)
            except PartnerError as exc:
                if exc.status != 404:
                    raise
                env = {}
            out[key] = list(env.get("versions" if key == "versions" else "objects", []) or [])

        calls = {
            "objects": lambda: grab("objects", coll.get_objects, id=object_id, version="all"),
            "object": lambda: grab("object", coll.get_object, object_id, version="all"),
            "versions": lambda: grab("versions", coll.object_versions, object_id),
            "manifest": lambda: grab("manifest", coll.get_manifest, id=object_id, version="all"),
        }
        for name in endpoints:
            calls[name]()
        return out

    def push(self, ref: str, objects: list[dict], *, poll_timeout: float = 60.0) -> dict:
        """Add objects to a partner collection (TAXII 2.1 s5.5) and wait until the status is final."""
        coll = self.collection(ref)
        status: Status = self._call(
            "add objects", coll.add_objects, {"objects": objects}, wait_for_completion=False
        )
        deadline = time.monotonic() + poll_timeout
        while status.status != "complete" and time.monotonic() < deadline:
            time.sleep(0.5)
            self._call("get status", status.refresh)
        return {
            "id": status.id,
            "status": status.status,
            "success_count": status.success_count,
            "failure_count": status.failure_count,
            "pending_count": status.pending_count,
            "successes": list(status.successes or []),
            "failures": list(status.failures or []),
            "pendings": list(status.pendings or []),
        }


def _check_tls_files(url: str, verify: bool | str, cert: str | tuple[str, str] | None) -> None:
    """One-line errors before any connection: a missing CA bundle, an unreadable or expired client certificate."""
    from exchange.node.tls import check_files

    certfile, keyfile = (cert, None) if isinstance(cert, str) else (cert or (None, None))
    try:
        check_files(certfile, keyfile, ca=verify if isinstance(verify, str) else None, role="client")
    except ConfigError as exc:
        raise PartnerTLSError(f"TLS with partner {url}: {exc}") from exc


def classify_ssl_error(exc: BaseException) -> tuple[str, bool]:
    from exchange.node.tls import classify_ssl_error as classify

    return classify(exc)


def _error_detail(resp: requests.Response | None) -> str:
    if resp is None:
        return ""
    try:
        body = resp.json()
        return f": {body.get('title', '')}: {body.get('description', '')}"
    except ValueError:
        return ""
