"""The node's gunicorn worker: gthread with a time limit on receiving each request.

gunicorn's threaded worker gives a connection a thread once its first bytes
arrive and then reads the request head and body with blocking reads that have
no overall time limit: a client trickling a byte now and then keeps a thread
for as long as it likes, and a handful of them stop the node.
``worker_class(request_timeout)`` returns a ``ThreadWorker`` subclass in which

* each request has a deadline, ``request_timeout`` seconds after its first
  bytes were taken up: every read of its head and body waits at most until
  then, and a request not received in time is answered ``408`` with a TAXII
  error body and its connection closed (``SlowClient``; inside the app, the
  Flask handler in ``exchange.node.server`` answers it);
* over plain HTTP, the request head is collected without a thread: a thread
  reads what has arrived without blocking and, while the head is incomplete,
  hands the connection back to the worker's poller until more arrives (needs
  gunicorn >= 27, which has that hand-back), so clients trickling their
  headers hold no thread at all;
* a TLS handshake not completed by the deadline is cut by the worker's main
  loop (gunicorn performs it in the thread, without a timeout), and a new TLS
  connection that has sent nothing yet waits on the poller, not in a thread;
* closing a connection (FIN, then reading until the client closes, at most
  2 s) happens on the poller instead of blocking the worker's main loop;
* with several workers, a worker that has just accepted a connection leaves
  the next ones to the others for a few milliseconds (longer the more it
  holds): gunicorn's workers race for each connection on the shared socket,
  and a few keep-alive clients (partners' sync agents) would otherwise often
  all stick to one worker and share its interpreter lock while the rest idle;
* the errors gunicorn answers itself (request line or headers too large,
  malformed request line or headers, bad chunked encoding) carry TAXII error
  bodies (``application/taxii+json``) instead of HTML, and the two it answers
  with a 5xx although the client caused them (an unknown transfer coding: 501;
  a ``SCRIPT_NAME`` header the path does not start with: 500) are 400s.

A client trickling its *body* (or, over TLS, its head) still holds a thread
until its deadline: ``--threads`` bounds how many of those a worker absorbs,
``--request-timeout`` for how long.  Idle connections are gunicorn's to close
(``keepalive``, 5 s).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from typing import Any

import orjson
from gunicorn import util as gunicorn_util
from gunicorn.http.errors import ConfigurationProblem, UnsupportedTransferCoding
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers import gthread

MEDIA_TYPE_TAXII = "application/taxii+json;version=2.1"
DEFAULT_REQUEST_TIMEOUT = 30.0
_DEFER = getattr(gthread, "_DEFER", None)  # gunicorn >= 27: "put this connection back on the poller"
_MAX_HEAD = 1024 * 1024  # beyond this, the parser's own limits answer (request line, header fields)
_LINGER_SECONDS, _LINGER_BYTES = 2.0, 64 * 1024  # as gunicorn's close_graceful
_SPREAD_PAUSE, _SPREAD_PAUSE_MAX = 0.005, 0.05  # seconds per connection held, and at most (see accept)


class SlowClient(Exception):
    """The client did not send its request within the request timeout (answered 408).

    Deliberately not an ``OSError``: werkzeug would turn that into a 400
    "client disconnected", gunicorn into a logged socket error.
    """


def taxii_error_response(status: int, reason: str, description: str) -> bytes:
    """A complete HTTP/1.1 response with a TAXII 2.1 error body (s3.6.1); closes the connection."""
    body = orjson.dumps({"title": reason.replace(" ", ""), "http_status": str(status), "description": description or reason})
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {MEDIA_TYPE_TAXII}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Replaces ``gunicorn.util.write_error`` (its only caller is ``Worker.handle_error``) in our workers."""
    gunicorn_util.write_nonblock(sock, taxii_error_response(status_int, reason, mesg))


class _DeadlineSocket:
    """The connection's socket as the request parser sees it: each ``recv`` waits at most until the deadline."""

    def __init__(self, sock: Any, conn: Any) -> None:
        self._sock = sock
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv(self, size: int, *flags: int) -> bytes:
        deadline = self._conn.deadline
        if deadline is None:
            return self._sock.recv(size, *flags)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._expired()
        prior = self._sock.gettimeout()
        own = prior is not None and prior < remaining  # gunicorn's body drain sets a shorter one: keep its meaning
        self._sock.settimeout(prior if own else remaining)
        try:
            return self._sock.recv(size, *flags)
        except TimeoutError:  # socket.timeout
            if own:
                raise
            raise self._expired() from None
        finally:
            self._sock.settimeout(prior)

    def _expired(self) -> Exception:
        if self._conn.responded:  # draining the body after the answer: gunicorn closes the connection
            return TimeoutError("request timeout")
        return SlowClient(f"the request was not received within {self._conn.request_timeout:g} s")


def worker_class(request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> type:
    """A gthread worker class whose requests must arrive within ``request_timeout`` seconds."""

    class ExchangeWorker(_ExchangeWorker):
        pass

    ExchangeWorker.request_timeout = float(request_timeout)
    return ExchangeWorker


class _ExchangeWorker(gthread.ThreadWorker):
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    def init_process(self) -> None:
        worker = self

        class Conn(gthread.TConn):
            deadline: float | None = None
            responded = False
            request_timeout = worker.request_timeout
            early = b""  # bytes read before the parser existed (see _head_incomplete)

            def init(self) -> None:
                if self.initialized:
                    return
                tls = bool(self.cfg.is_ssl) and self.parser is None
                if tls:
                    worker._watch(self)
                try:
                    super().init()
                finally:
                    if tls:
                        worker._unwatch(self)
                unreader = getattr(self.parser, "unreader", None)
                if isinstance(unreader, SocketUnreader) and not isinstance(unreader.sock, _DeadlineSocket):
                    unreader.sock = _DeadlineSocket(unreader.sock, self)
                if self.early and unreader is not None:
                    unreader.unread(self.early)
                    self.early = b""

            def close(self, graceful: bool = False) -> None:
                if graceful:  # only ever from finish_request(), on the main loop
                    worker._linger(self.sock)
                else:
                    super().close()

        # this worker process is ours alone: accept() builds connections from the module's
        # TConn, and handle_error() writes through util.write_error
        gthread.TConn = Conn  # type: ignore[misc]
        gunicorn_util.write_error = _write_error
        self._watched: dict[Any, tuple[int, float]] = {}
        self._lingering: dict[Any, list] = {}
        self._watch_lock = threading.Lock()
        self._spread = self.cfg.workers > 1
        self._accept_paused_until = 0.0
        super().init_process()

    # -- spreading connections over the workers ----------------------------------------------

    def accept(self, listener: Any) -> None:
        """Accept one connection; with other workers about, then stop accepting for a moment.

        Every worker polls the one listening socket and the first to call
        ``accept()`` gets the connection, so a worker that has just served one
        tends to win the next too: long-lived keep-alive clients then pile up on
        it and share one interpreter lock while other workers idle.  Pausing
        ``_SPREAD_PAUSE`` per connection this worker holds (at most
        ``_SPREAD_PAUSE_MAX``) leaves new connections to less busy workers; an
        idle worker never pauses, and a paused one resumes within the pause.
        """
        super().accept(listener)
        if self._spread and self.nr_conns > 0:
            self._accept_paused_until = time.monotonic() + min(_SPREAD_PAUSE * self.nr_conns, _SPREAD_PAUSE_MAX)
            self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and time.monotonic() < self._accept_paused_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        paused_for = self._accept_paused_until - time.monotonic()
        if paused_for > 0 and not self._accepting:
            # wake up when the pause ends, not only on the next event or after a second (once
            # it has ended, a worker not accepting is full or stopping: gunicorn's timeout holds)
            timeout = min(timeout, paused_for)
        super().wait_for_and_dispatch_events(timeout)

    # -- per-request deadline ----------------------------------------------------------

    def handle(self, conn: Any) -> Any:
        now = time.monotonic()
        if conn.deadline is None:
            conn.deadline = now + self.request_timeout
            conn.responded = False
        if _DEFER is not None and not conn.is_http2:
            if not self.cfg.is_ssl:
                if self._head_incomplete(conn):
                    if now < conn.deadline:
                        return _DEFER  # the poller hands it back when more arrives (or closes it after keepalive s idle)
                    slow = SlowClient(f"the request head was not received within {self.request_timeout:g} s")
                    self.handle_error(None, conn.sock, conn.client, slow)
                    return False
                if not conn.initialized:
                    conn.data_ready = True  # its bytes are in conn.early: gunicorn must not wait for the socket
            elif not conn.initialized and not conn.data_ready:
                # TLS: nothing sent yet: back to the poller at once rather than a thread waiting 5 s for it
                if not self._readable_now(conn.sock):
                    conn.deadline = None
                    return _DEFER
                conn.data_ready = True
        result = super().handle(conn)
        # the next request on a kept-alive connection gets its own deadline
        conn.deadline = None
        return result

    @staticmethod
    def _readable_now(sock: Any) -> bool:
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"" (closed) counts: gunicorn meets it
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True  # let gunicorn meet the error

    @staticmethod
    def _head_incomplete(conn: Any) -> bool:
        """Take up what the client sent, without blocking; True while the request head is incomplete."""
        unreader = getattr(conn.parser, "unreader", None) if conn.initialized else None
        if conn.initialized and unreader is None:
            return False
        held = unreader.buf.getvalue() if unreader is not None else conn.early
        scanned = 0
        while True:
            start = max(0, scanned - 3)
            if b"\n\n" in held[start:] or b"\n\r\n" in held[start:] or len(held) > _MAX_HEAD:
                return False
            scanned = len(held)
            try:
                chunk = conn.sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False  # the parser meets the error again and gunicorn handles it
            if unreader is not None:
                unreader.buf.seek(0, os.SEEK_END)
                unreader.buf.write(chunk)
            else:
                conn.early += chunk
            held += chunk
            if not chunk:
                return False  # end of stream: the parser sees it

    def handle_request(self, req: Any, conn: Any) -> Any:
        try:
            return super().handle_request(req, conn)
        finally:
            conn.responded = True

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, SlowClient):
            self.log.info("Request timeout from %s: %s", (addr or ("",))[0], exc)
            self._answer(client, 408, "Request Timeout", exc)
            return
        if isinstance(exc, (UnsupportedTransferCoding, ConfigurationProblem)):
            # gunicorn answers these 501 and 500; they are the client's doing (a transfer coding
            # other than chunked, a SCRIPT_NAME header its path does not start with): 400
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
            self._answer(client, 400, "Bad Request", exc)
            return
        super().handle_error(req, client, addr, exc)

    def _answer(self, client: Any, status: int, title: str, exc: BaseException) -> None:
        """Write a TAXII error answer without blocking; the client may already be gone."""
        try:
            gunicorn_util.write_nonblock(client, taxii_error_response(status, title, str(exc)))
        except Exception:  # noqa: BLE001 - the client may be gone
            self.log.debug("Failed to send the %s answer.", status)

    # -- TLS handshakes: cut by the main loop at the deadline -----------------------------

    def _watch(self, conn: Any) -> None:
        with self._watch_lock:
            self._watched[conn] = (conn.sock.fileno(), conn.deadline or time.monotonic() + self.request_timeout)

    def _unwatch(self, conn: Any) -> None:
        with self._watch_lock:
            self._watched.pop(conn, None)

    # -- closing: gunicorn's graceful close without blocking the main loop ----------------------

    def _linger(self, sock: Any) -> None:
        """Send FIN, then read and discard until the client closes (RFC 9112 s9.6), from the poller.

        gunicorn's ``close_graceful`` does this with a blocking read of up to 2 s on
        the main loop: a client that never closes its end stalled accepting and
        every other connection for that long, once per connection.
        """
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._linger_readable)
        except (OSError, ValueError, KeyError):
            gunicorn_util.close(sock)
            return
        self._lingering[sock] = [time.monotonic() + _LINGER_SECONDS, 0]

    def _linger_readable(self, sock: Any) -> None:
        entry = self._lingering.get(sock)
        if entry is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        entry[1] += len(data)
        if not data or entry[1] >= _LINGER_BYTES:
            self._end_linger(sock)

    def _end_linger(self, sock: Any) -> None:
        self._lingering.pop(sock, None)
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.poller.unregister(sock)
        gunicorn_util.close(sock)

    def murder_pending(self) -> None:  # called by the main loop at least once a second
        super().murder_pending()
        now = time.monotonic()
        for sock, (deadline, _read) in list(self._lingering.items()):
            if now >= deadline:
                self._end_linger(sock)
        with self._watch_lock:  # held while cutting: the handshake thread cannot close the fd meanwhile
            for conn, (fd, deadline) in list(self._watched.items()):
                if now < deadline:
                    continue
                del self._watched[conn]
                try:
                    cut = socket.socket(fileno=os.dup(fd))
                    try:
                        cut.shutdown(socket.SHUT_RDWR)
                    finally:
                        cut.close()
                    self.log.info("TLS handshake not completed within %g s: connection cut", self.request_timeout)
                except OSError:
                    pass
