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
  Flask handler in ``exchange.node.server`` answers it); a connection waiting
  on the poller past its deadline is answered (or, mid-handshake, cut) by the
  main loop;
* the TLS handshake and the request head are collected without a thread: a
  thread takes up what has arrived without blocking and, while the handshake
  or the head is incomplete, hands the connection back to the worker's poller
  until more arrives (gunicorn >= 27's hand-back), so clients trickling their
  handshake or headers, over plain HTTP or TLS, hold no thread at all;
* the application sees the request before its body is read: no ``100
  Continue`` goes out until it reads the body (a request refused from its
  head, 401/403/413, is answered without it, RFC 9110 s10.1.1), and a
  response given while the body is still unread closes the connection after
  it; the body is then read and discarded from the poller, up to
  ``_DRAIN_BYTES`` within ``_DRAIN_SECONDS``, so that a client still sending
  it (requests, urllib3, taxii2-client) gets to read the answer instead of a
  reset;
* connections that have not yet produced an authenticated request (the
  application calls ``environ[AUTHENTICATED]()`` once it has verified the
  credentials) get at most half the threads at a time, the others waiting on
  the poller for their turn, and at most ``worker_connections // 4`` of them
  stay open per worker: beyond that the oldest one waiting on the poller is
  closed, so idle or trickling strangers cannot take the connection slots
  partners need;
* closing a connection (FIN, then reading until the client closes, at most
  2 s) happens on the poller instead of blocking the worker's main loop;
* with several workers, a worker that has just accepted a connection leaves
  the next ones to the others for a few milliseconds (longer the more it
  holds): gunicorn's workers race for each connection on the shared socket,
  and a few keep-alive clients (partners' sync agents) would otherwise often
  all stick to one worker and share its interpreter lock while the rest idle;
* a worker dies with its master: on Linux the kernel kills it when the master
  dies (``PR_SET_PDEATHSIG``); elsewhere the main loop notices within a second
  that its parent changed, closes the listening socket at once and exits
  within ``_ORPHAN_GRACE`` seconds, so a restarted node can bind the port;
* the errors gunicorn answers itself (request line or headers too large,
  malformed request line or headers, bad chunked encoding) carry TAXII error
  bodies (``application/taxii+json``) instead of HTML, and the two it answers
  with a 5xx although the client caused them (an unknown transfer coding: 501;
  a ``SCRIPT_NAME`` header the path does not start with: 500) are 400s.

An authenticated client trickling its body still holds a thread until its
deadline: ``--threads`` bounds how many of those a worker absorbs,
``--request-timeout`` for how long.  Idle connections are gunicorn's to close
(``keepalive``, 5 s).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import functools
import mmap
import os
import select
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from gunicorn import http as gunicorn_http
from gunicorn import sock as gunicorn_sock
from gunicorn import util as gunicorn_util
from gunicorn.http.errors import ConfigurationProblem, UnsupportedTransferCoding
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers import gthread

MEDIA_TYPE_TAXII = "application/taxii+json;version=2.1"
DEFAULT_REQUEST_TIMEOUT = 30.0
#: environ key: a callable the application calls once it has verified the request's credentials
AUTHENTICATED = "cti_exchange.authenticated"
_DEFER = gthread._DEFER  # gunicorn >= 27: "put this connection back on the poller"
_MAX_HEAD = 1024 * 1024  # beyond this, the parser's own limits answer (request line, header fields)
_LINGER_SECONDS, _LINGER_BYTES = 2.0, 64 * 1024  # as gunicorn's close_graceful
_DRAIN_SECONDS, _DRAIN_BYTES = 5.0, 64 * 1024 * 1024  # after answering a request whose body was not read
_MAX_LINGERING = 512  # closing sockets per worker; beyond, the oldest is closed at once
_ACCEPT_BATCH = 64  # connections accepted per turn of the main loop (one with several workers: see accept)
_SPREAD_PAUSE, _SPREAD_PAUSE_MAX = 0.005, 0.1  # seconds between looks at the board while deferring, and at most (see accept)
_ORPHAN_GRACE = 1.0  # seconds a worker whose master died has to finish in-flight requests (no PR_SET_PDEATHSIG)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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


def die_with_parent(ppid: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != ppid:  # the parent died before prctl took effect
        os._exit(1)


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


class _Body:
    """``wsgi.input``: gunicorn's body, sending ``100 Continue`` on the first read and noting whether it was read to its end."""

    def __init__(self, body: Any, environ: dict, on_first_read: Callable[[], None]) -> None:
        self._body = body
        self._on_first_read: Callable[[], None] | None = on_first_read
        length = environ.get("CONTENT_LENGTH")
        self._left = int(length) if length and length.isdigit() else None
        self._eof = self._left == 0 or (self._left is None and "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower())

    @property
    def consumed(self) -> bool:
        return self._eof or self._left == 0

    def _begin(self) -> None:
        if self._on_first_read is not None:
            first, self._on_first_read = self._on_first_read, None
            first()

    def _took(self, data: bytes, size: int | None) -> bytes:
        if self._left is not None:
            self._left = max(0, self._left - len(data))
        if size is None or size < 0 or len(data) < size:
            self._eof = True  # gunicorn's Body.read returns less than asked only at the end
        return data

    def read(self, size: int | None = None) -> bytes:
        self._begin()
        return self._took(self._body.read(size), size)

    def readline(self, size: int | None = None) -> bytes:
        self._begin()
        data = self._body.readline(size)
        return self._took(data, None if not data else len(data))

    def readlines(self, size: int | None = None) -> list[bytes]:
        self._begin()
        lines = self._body.readlines(size)
        self._eof = True
        self._left = 0 if self._left is not None else None
        return lines

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class ConnectionBoard:
    """How many connections each worker holds, in memory the master maps before it forks them.

    One signed 64-bit count per slot (-1: no live worker there).  The master gives each
    worker a slot before forking it (``assign``) and frees it when the worker exits
    (``release``); the worker publishes its count on every turn of its main loop and after
    each accept, and defers accepting while another worker holds fewer (see
    ``_ExchangeWorker.accept``).  Aligned 8-byte stores and loads: a reader sees an old or a
    new count, never a torn one.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, 8 * slots)  # anonymous and MAP_SHARED: the forked workers see the same pages
        for slot in range(slots):
            self.set(slot, -1)

    def set(self, slot: int, count: int) -> None:
        struct.pack_into("q", self._map, 8 * slot, count)

    def get(self, slot: int) -> int:
        return struct.unpack_from("q", self._map, 8 * slot)[0]

    def fewest_besides(self, slot: int) -> int | None:
        """The fewest connections a live worker other than ``slot``'s holds (None: no other)."""
        counts = [c for i in range(self.slots) if i != slot and (c := self.get(i)) >= 0]
        return min(counts) if counts else None

    def assign(self, worker: Any, others: Any) -> None:
        """Give ``worker`` (not yet forked) the first slot no worker of ``others`` holds (none if all are held)."""
        held = {getattr(w, "board_slot", None) for w in others}
        worker.board_slot = next((i for i in range(self.slots) if i not in held), None)
        if worker.board_slot is not None:
            self.set(worker.board_slot, 0)

    def release(self, worker: Any) -> None:
        slot = getattr(worker, "board_slot", None)
        if slot is not None:
            self.set(slot, -1)


def worker_class(request_timeout: float = DEFAULT_REQUEST_TIMEOUT, board: ConnectionBoard | None = None) -> type:
    """A gthread worker class whose requests must arrive within ``request_timeout`` seconds.

    ``board``: the master's ``ConnectionBoard`` (several workers): a worker holding more
    connections than another leaves new ones to it.
    """

    class ExchangeWorker(_ExchangeWorker):
        pass

    ExchangeWorker.request_timeout = float(request_timeout)
    ExchangeWorker.board = board
    return ExchangeWorker


class _ExchangeWorker(gthread.ThreadWorker):
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    board: ConnectionBoard | None = None
    board_slot: int | None = None  # set by the master before the fork (ConnectionBoard.assign)

    def init_process(self) -> None:
        die_with_parent(self.ppid)
        worker = self

        class Conn(gthread.TConn):
            deadline: float | None = None
            responded = False
            request_timeout = worker.request_timeout
            early = b""  # bytes read before the parser existed (see _head_incomplete)
            tls_done = False  # TLS: the handshake is complete (see _tls_handshake)
            authenticated = False  # a request on it was authenticated (environ[AUTHENTICATED])
            known = False  # counted among the worker's connections (see enqueue_req)
            in_lane = False  # holds one of the threads for unauthenticated connections
            parked: Any = None  # the deque of gunicorn's it waits in on the poller, if any
            closed = False
            expect_continue = False  # the client asked for "100 Continue", not sent yet
            started = False  # the response has begun
            unread_body = False  # answered before its body was read to the end

            def init(self) -> None:
                if self.initialized:
                    return
                if self.tls_done and self.parser is None:
                    # gunicorn's TConn.init without the TLS wrap: the worker did the handshake
                    self.initialized = True
                    self.sock.setblocking(True)
                    self.parser = gunicorn_http.get_parser(self.cfg, self.sock, self.client)
                else:
                    super().init()
                unreader = getattr(self.parser, "unreader", None)
                if isinstance(unreader, SocketUnreader) and not isinstance(unreader.sock, _DeadlineSocket):
                    unreader.sock = _DeadlineSocket(unreader.sock, self)
                if self.early and unreader is not None:
                    unreader.unread(self.early)
                    self.early = b""

            def close(self, graceful: bool = False) -> None:
                worker._forget(self)
                if graceful:  # only ever from finish_request(), on the main loop
                    worker._linger(self.sock, drain=self.unread_body)
                else:
                    super().close()

        # this worker process is ours alone: accept() builds connections from the module's
        # TConn, and handle_error() writes through util.write_error
        gthread.TConn = Conn  # type: ignore[misc]
        gunicorn_util.write_error = _write_error
        self._lingering: dict[Any, list] = {}
        self._spread = self.cfg.workers > 1
        self._accept_paused_until = 0.0
        self._local = threading.local()
        self._strangers: dict[Any, None] = {}  # connections without an authenticated request, oldest first
        self._max_strangers = max(2 * self.cfg.threads, self.cfg.worker_connections // 4)
        self._lane_size = max(1, (self.cfg.threads + 1) // 2)
        self._lane_busy = 0
        self._lane_waiting: collections.deque = collections.deque()
        self._orphan = False
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self._app = self.wsgi
        self.wsgi = self._serve

    # -- the master's death ---------------------------------------------------------------------

    def is_parent_alive(self) -> bool:  # called by the main loop at least once a second
        if os.getppid() == self.ppid:
            return True
        self.log.warning("Master %s is gone: worker %s closes its listening socket and exits", self.ppid, self.pid)
        self.set_accept_enabled(False)
        for listener in self.sockets:
            with contextlib.suppress(OSError):
                listener.close()
        self._orphan = True
        timer = threading.Timer(_ORPHAN_GRACE, os._exit, (1,))  # requests still in flight get this long
        timer.daemon = True
        timer.start()
        return False

    def run(self) -> None:
        super().run()
        if self._orphan:
            os._exit(1)  # not the interpreter's shutdown: it takes seconds (and the timer cannot fire meanwhile)

    # -- spreading connections over the workers ----------------------------------------------

    def accept(self, listener: Any) -> None:
        """Accept the connections waiting (up to ``_ACCEPT_BATCH``), or one with other workers about; then leave new ones to a worker holding fewer.

        gunicorn accepts one connection per turn of the main loop: under a flood of
        connections, a partner's waited its turn behind all of them.

        Every worker polls the one listening socket and the first to call
        ``accept()`` gets the connection, so a worker that has just served one
        tends to win the next too: long-lived keep-alive clients then pile up on
        it and share one interpreter lock while other workers idle.  After each
        accept a worker stops accepting while another live worker holds fewer
        connections (the master's ``ConnectionBoard``, looked at every
        ``_SPREAD_PAUSE``), for at most ``_SPREAD_PAUSE_MAX``: a busy machine may
        schedule the less loaded worker late, but a fixed short pause then let the
        first worker take the connection anyway.  A worker holding as few as any
        other never defers.
        """
        for _ in range(_ACCEPT_BATCH):
            try:
                client, addr = listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                    raise
                break
            self.nr_conns += 1
            client.setblocking(True)
            self.enqueue_req(gthread.TConn(self.cfg, client, addr, listener.getsockname()))
            if self._spread or self.nr_conns >= self.worker_connections:
                break
        self._publish()
        if self._spread and self.nr_conns > 0:
            boarded = self.board is not None and self.board_slot is not None
            # without a board (a worker class used on its own): a fixed pause per connection held
            hold = _SPREAD_PAUSE_MAX if boarded else min(_SPREAD_PAUSE * self.nr_conns, _SPREAD_PAUSE_MAX / 2)
            self._accept_paused_until = time.monotonic() + hold
            if self._defers():
                self.set_accept_enabled(False)

    def _publish(self) -> None:
        if self.board is not None and self.board_slot is not None:
            self.board.set(self.board_slot, self.nr_conns if self.alive else -1)

    def _defers(self) -> bool:
        """True while this worker should leave new connections to another (see ``accept``)."""
        if time.monotonic() >= self._accept_paused_until:
            return False
        if self.board is None or self.board_slot is None:
            return True
        fewest = self.board.fewest_besides(self.board_slot)
        return fewest is not None and fewest < self.nr_conns

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and self._defers():
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        self._publish()
        if not self._accepting and time.monotonic() < self._accept_paused_until:
            # look at the board again soon, not only on the next event or after a second (once the
            # deferral has ended, a worker not accepting is full or stopping: gunicorn's timeout holds)
            timeout = min(timeout, _SPREAD_PAUSE)
        super().wait_for_and_dispatch_events(timeout)

    # -- connections without an authenticated request (main loop) --------------------------------

    def enqueue_req(self, conn: Any) -> None:
        """Hand ``conn`` to a thread once its request head is in; one not yet authenticated waits while its share of the threads is taken."""
        conn.parked = None
        if not conn.known:
            conn.known = True
            self._strangers[conn] = None
            self._evict_strangers()
        if self._gather(conn):
            return
        if not conn.authenticated:
            if self._lane_busy >= self._lane_size:
                self._lane_waiting.append(conn)
                return
            self._lane_busy += 1
            conn.in_lane = True
        super().enqueue_req(conn)

    def _gather(self, conn: Any) -> bool:
        """Take up what has arrived of the request head, on the main loop; True if it is incomplete and the connection waits on the poller.

        A TLS handshake still under way is left to a thread (``_tls_handshake``): OpenSSL does
        it without the interpreter lock, the main loop would do it with.
        """
        if conn.is_http2 or not self.alive or (self.cfg.is_ssl and not conn.tls_done):
            return False
        now = time.monotonic()
        if conn.deadline is None:
            conn.deadline = now + self.request_timeout
            conn.responded = False
        if not self._head_incomplete(conn) or now >= conn.deadline:
            return False  # complete, or the thread answers 408
        conn.sock.setblocking(False)
        conn.timeout = now + self.cfg.keepalive  # closed by murder_pending() if nothing more comes for that long
        self.pending_conns.append(conn)
        conn.parked = self.pending_conns
        self.poller.register(conn.sock, selectors.EVENT_READ, functools.partial(self.on_pending_socket_readable, conn))
        return True

    def finish_request(self, conn: Any, fs: Any) -> None:
        self._leave_lane(conn)
        super().finish_request(conn, fs)
        for waiting in (self.pending_conns, self.keepalived_conns):
            if waiting and waiting[-1] is conn:
                conn.parked = waiting

    def _leave_lane(self, conn: Any) -> None:
        if conn.in_lane:
            conn.in_lane = False
            self._lane_busy -= 1
        while self._lane_waiting and self._lane_busy < self._lane_size:
            self.enqueue_req(self._lane_waiting.popleft())

    def _authenticated(self, conn: Any) -> None:
        """From the application's thread: this connection produced an authenticated request."""
        if conn.authenticated:
            return
        conn.authenticated = True
        self.method_queue.defer(self._welcome, conn)

    def _welcome(self, conn: Any) -> None:
        self._strangers.pop(conn, None)
        self._leave_lane(conn)

    def _forget(self, conn: Any) -> None:
        conn.closed = True
        self._strangers.pop(conn, None)

    def on_pending_socket_readable(self, conn: Any, client: Any) -> None:
        if not conn.closed:  # evicted earlier in the same turn of the main loop: a stale event
            super().on_pending_socket_readable(conn, client)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        if not conn.closed:
            super().on_client_socket_readable(conn, client)

    def _evict_strangers(self) -> None:
        """Close the oldest unauthenticated connections waiting on the poller while there are too many."""
        while len(self._strangers) > self._max_strangers:
            for conn in self._strangers:  # oldest first
                if conn.parked is not None:
                    break
            else:
                return  # all in threads or waiting for one: not now
            with contextlib.suppress(ValueError):
                conn.parked.remove(conn)
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()
            self.log.info("Closed an unauthenticated connection: more than %d open", self._max_strangers)

    # -- per-request deadline; handshake and head without a thread --------------------------------

    def handle(self, conn: Any) -> Any:
        now = time.monotonic()
        if conn.deadline is None:
            conn.deadline = now + self.request_timeout
            conn.responded = False
        if not conn.is_http2:
            if self.cfg.is_ssl and not conn.tls_done:
                step = self._tls_handshake(conn)
                if step is not None:
                    return step
            if self._head_incomplete(conn):
                if now < conn.deadline:
                    return _DEFER  # the poller hands it back when more arrives (see also murder_pending)
                slow = SlowClient(f"the request head was not received within {self.request_timeout:g} s")
                self.handle_error(None, conn.sock, conn.client, slow)
                return False
            if not conn.initialized:
                conn.data_ready = True  # its bytes are in conn.early: gunicorn must not wait for the socket
        result = super().handle(conn)
        # the next request on a kept-alive connection gets its own deadline
        conn.deadline = None
        return result

    def _tls_handshake(self, conn: Any) -> Any:
        """Advance the TLS handshake without blocking: ``None`` once complete, ``_DEFER`` for more bytes, ``False`` if it failed."""
        sock = conn.sock
        if not isinstance(sock, ssl.SSLSocket):
            if not self._readable_now(sock):
                conn.deadline = None  # nothing sent yet: no request has begun
                return _DEFER
            sock.setblocking(False)
            try:
                sock = conn.sock = gunicorn_sock.ssl_context(self.cfg).wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False, suppress_ragged_eofs=self.cfg.suppress_ragged_eofs
                )
            except (OSError, ValueError) as exc:
                self.log.debug("TLS: cannot wrap the connection from %s: %s", conn.client, exc)
                return False
        sock.setblocking(False)
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                return _DEFER
            except ssl.SSLWantWriteError:  # our flight does not fit the socket buffer: wait for room, at most until the deadline
                left = (conn.deadline or 0) - time.monotonic()
                if left <= 0 or not select.select([], [sock], [], left)[1]:
                    return False
            except (ssl.SSLError, OSError) as exc:
                self.log.debug("TLS handshake with %s failed: %s", conn.client, exc)
                return False
        conn.tls_done = True
        return None

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
    def _recv_now(sock: Any) -> bytes | None:
        """What has arrived (b"" at the end of the stream), without blocking; ``None`` if nothing has."""
        if isinstance(sock, ssl.SSLSocket):
            sock.setblocking(False)
            try:
                return sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return None
        try:
            return sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None

    @classmethod
    def _head_incomplete(cls, conn: Any) -> bool:
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
                chunk = cls._recv_now(conn.sock)
            except OSError:
                return False  # the parser meets the error again and gunicorn handles it
            if chunk is None:
                return True
            if unreader is not None:
                unreader.buf.seek(0, os.SEEK_END)
                unreader.buf.write(chunk)
            else:
                conn.early += chunk
            held += chunk
            if not chunk:
                return False  # end of stream: the parser sees it

    # -- the request as the application sees it ---------------------------------------------------

    def handle_request(self, req: Any, conn: Any) -> Any:
        # "100 Continue" only once the application reads the body (see _serve)
        conn.expect_continue = bool(getattr(req, "_expected_100_continue", False))
        if conn.expect_continue:
            req._expected_100_continue = False
        conn.started = conn.unread_body = False
        self._local.conn = conn
        try:
            return super().handle_request(req, conn)
        finally:
            self._local.conn = None
            conn.responded = True

    def _serve(self, environ: dict, start_response: Callable) -> Any:
        """The WSGI application, with a ``wsgi.input`` that knows whether it was read and an ``AUTHENTICATED`` callback."""
        conn = getattr(self._local, "conn", None)
        if conn is None:  # HTTP/2 (not offered by this node)
            return self._app(environ, start_response)
        body = _Body(environ["wsgi.input"], environ, lambda: self._continue(conn))
        environ["wsgi.input"] = body
        environ[AUTHENTICATED] = lambda: self._authenticated(conn)

        def start(status: str, headers: list, exc_info: Any = None) -> Any:
            conn.started = True
            if not body.consumed:  # the client may still be sending it: answer, then close (see _linger)
                conn.unread_body = True
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if force_close is not None:
                    force_close()
            return start_response(status, headers, exc_info)

        return self._app(environ, start)

    @staticmethod
    def _continue(conn: Any) -> None:
        if conn.expect_continue and not conn.started:
            conn.expect_continue = False
            conn.sock.sendall(_CONTINUE)

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

    # -- closing: gunicorn's graceful close without blocking the main loop ----------------------

    def _linger(self, sock: Any, drain: bool = False) -> None:
        """Send FIN, then read and discard until the client closes (RFC 9112 s9.6), from the poller.

        gunicorn's ``close_graceful`` does this with a blocking read of up to 2 s on
        the main loop: a client that never closes its end stalled accepting and
        every other connection for that long, once per connection.  ``drain``: the
        request's body was not read (answered from its head): the client may be
        sending megabytes still, and closing before it is done would reset the
        connection under the answer, so read up to ``_DRAIN_BYTES`` for up to
        ``_DRAIN_SECONDS``.  Over TLS the read is of the raw stream (``shutdown``
        leaves the TLS layer), nothing is decrypted.
        """
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._linger_readable)
        except (OSError, ValueError, KeyError):
            gunicorn_util.close(sock)
            return
        while len(self._lingering) >= _MAX_LINGERING:
            self._end_linger(next(iter(self._lingering)))
        seconds, limit = (_DRAIN_SECONDS, _DRAIN_BYTES) if drain else (_LINGER_SECONDS, _LINGER_BYTES)
        self._lingering[sock] = [time.monotonic() + seconds, limit]

    def _linger_readable(self, sock: Any) -> None:
        entry = self._lingering.get(sock)
        if entry is None:
            return
        for _ in range(16):  # up to 1 MiB per turn of the main loop
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            entry[1] -= len(data)
            if not data or entry[1] <= 0:
                self._end_linger(sock)
                return

    def _end_linger(self, sock: Any) -> None:
        self._lingering.pop(sock, None)
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.poller.unregister(sock)
        gunicorn_util.close(sock)

    def murder_pending(self) -> None:  # called by the main loop at least once a second
        super().murder_pending()
        now = time.monotonic()
        for sock, (deadline, _left) in list(self._lingering.items()):
            if now >= deadline:
                self._end_linger(sock)
        expired = [c for c in self.pending_conns if c.deadline is not None and now >= c.deadline]
        for conn in expired:
            self.pending_conns.remove(conn)
            conn.parked = None
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            self._expire(conn)

    def _expire(self, conn: Any) -> None:
        """A connection waiting on the poller is past its request deadline: 408, or cut mid-handshake."""
        if self.cfg.is_ssl and not conn.tls_done:
            self.log.info("TLS handshake not completed within %g s: connection cut", self.request_timeout)
            conn.close()
            return
        unreader = getattr(conn.parser, "unreader", None)
        if conn.early or (unreader is not None and unreader.buf.getvalue()):
            self._answer(conn.sock, 408, "Request Timeout", SlowClient(f"the request head was not received within {self.request_timeout:g} s"))
            conn.close(graceful=True)
        else:
            conn.close()
