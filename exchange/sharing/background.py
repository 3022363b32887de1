"""The node's server with background release: the TAXII app of ``exchange.node`` wired to ``release_all``.

The node layer knows nothing of the sharing flow; this module is where the two
meet. ``data_dir_factory`` builds, in each gunicorn worker, a node app whose
acknowledged writes wake a ``BackgroundReleaser`` that releases them under
policy to every partner's read collection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask

from exchange.errors import ExchangeError
from exchange.node.ops import open_node
from exchange.node.server import Served, create_app
from exchange.sharing.release import newest_write, pending, release_all
from exchange.storage.store import now_us

log = logging.getLogger(__name__)

_LIGHT_READS = 0.25  # GETs in flight for less than this share of a release batch's time do not pause the release
# while a bulk pull keeps the worker busy, a release pass sleeps this many times as long as its last batch ran: it takes
# at most a sixth of the time (at 3, a quarter, a pull during a 100k release kept 0.62-0.88x of the quiet rate on 2
# shared cores, under the 0.75 of issue 21 in most runs; at 5, 0.78-0.99x)
_READ_YIELD = 5


class BackgroundReleaser:
    """Releases new objects under policy in a background thread, after the write was acknowledged.

    Writes only ``notify()``; the thread coalesces any number of notifications
    into one ``release_all`` run, which resumes from its bookmarks, so nothing
    is missed and a burst of envelopes costs one release pass, not one each.
    Every ``poll`` seconds it also checks (read-only) for rows written by
    another process, such as a sync agent storing what it pulled from a partner,
    so those go onward under policy without the agent doing it.

    Acknowledged writes come first: while envelopes keep arriving the thread
    waits until writes have been quiet for a moment (at most ``max_delay``
    seconds), and a release pass that is running when writes come in leaves
    them the write lock between its batches for twice as long as its last
    batch held it, so it takes at most about a third of the lock while a push
    goes on (and still gets through a backlog under a never-ending one).

    Quiet means no POST under way in this worker (one may be reading its body
    or waiting for the write lock), ``quiet`` seconds since this worker's last
    write, and ``quiet_elsewhere`` seconds since the newest row's ``date_added``
    for rows newer than that write, served by the node's other workers or
    written by another process (a sync agent). That stamp is taken when the
    rows are inserted, a whole push cycle (parse, check, insert, answer, the
    client's next envelope) before the next one: 0.2-0.5 s for 1,000 objects on
    a busy 2-core machine. With 0.2 s for both, a worker that saw another's
    push only through the database took its gaps for quiet and released during
    the push (1 pusher on 4 workers: 4,000 objects/s against 9,600 on 1).

    Reads come before the release too (issue 21): while GET requests keep this
    worker busy (a partner paging), a release pass pauses between its batches for
    up to five times as long as its last batch ran (``_READ_YIELD``), by the share
    of that time a GET was in flight, so it takes at most about a sixth of the time
    while a bulk pull goes on (and still gets through a backlog under a never-ending one).
    The releaser shares the worker's interpreter with the request threads: a batch
    running beside a pull would otherwise take half of it (a partner pulling during
    a 100k release got a third of the quiet rate); a GET in flight half of the time
    or more counts as fully busy (the client parses each page before asking for the
    next). A partner that only polls for
    what is being released (a sync agent's short pages every half second) keeps
    the worker busy a small share of the time and barely slows the release it is
    waiting for: under ``_LIGHT_READS`` of the batch's time, no pause at all.
    Nor does a partner that reads what this very pass released (a GET whose last
    row is in a partner's read collection and newer than the pass's start): it
    follows the release, and a pause would only hold back what it is waiting for
    (a US->ROK live sync at 100,000 objects took 20.7 s with those pauses, 15.1 s
    without), so its time does not count as reading.
    """

    def __init__(
        self, opened: Any, *, poll: float = 1.0, quiet: float = 0.2, quiet_elsewhere: float = 1.0, max_delay: float = 30.0,
    ) -> None:
        self._opened = opened
        self._poll = poll
        self._quiet = quiet
        self._quiet_elsewhere = max(quiet, quiet_elsewhere)
        self._max_delay = max_delay
        self._last_write = 0.0
        self._last_write_us = 0  # wall clock of that write's acknowledgement: rows stamped before it are not news
        self._writing = 0  # POSTs under way in this worker
        self._writing_lock = threading.Lock()
        self._reading = 0  # GETs under way in this worker
        self._read_busy = 0.0  # seconds with at least one GET under way here, up to the last time none was
        self._busy_since = 0.0  # when the GETs under way now began to overlap
        self._busy_at_batch = 0.0  # _read_busy when the running release batch began
        self._batch_began = 0.0
        self._follow_busy = 0.0  # seconds of GETs that read what the running pass released, up to the last one
        self._follow_at_batch = 0.0  # _follow_busy when the running release batch began
        self._pass_began_us: int | None = None  # when the running release pass began (None: none runs)
        cfg = opened.node.config
        self._targets = {cfg.partner_collection(p, "partner-read").id for p in cfg.partners}  # where the releaser writes
        self._last_problem: tuple[str, float] | None = None  # the last failed pass's error and when it was logged
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cti-exchange-release", daemon=True)
        self._thread.start()
        self._wake.set()  # catch up on anything written while no server ran

    def notify(self, coll: Any) -> None:
        if coll.role in ("own", "partner-inbox"):
            self._last_write = time.monotonic()
            self._last_write_us = now_us()
            self._wake.set()

    def activity(self, started: bool) -> None:
        """A POST began (True) or ended (False) in this worker."""
        with self._writing_lock:
            self._writing += 1 if started else -1
            if not started:
                self._last_write = time.monotonic()

    def serving(self, started: bool, served: Served | None = None) -> None:
        """A GET began (True) or ended (False) in this worker; ``served``: the stored rows it read, if any."""
        with self._writing_lock:
            now = time.monotonic()
            if started:
                if self._reading == 0:
                    self._busy_since = now
                self._reading += 1
            else:
                self._reading -= 1
                if self._reading == 0:
                    self._read_busy += now - self._busy_since
                if served is not None and self._follows(served):
                    self._follow_busy += served.seconds

    def _follows(self, served: Served) -> bool:
        """Whether a GET read rows the running release pass wrote (a partner waiting for the release)."""
        began = self._pass_began_us
        return began is not None and served.collection_id in self._targets and served.newest >= began

    def _read_share(self, since: float, held: float) -> float:
        """The share of the last ``held`` seconds (since ``_read_busy`` was ``since``) with a GET under way here,
        less the GETs that followed the release (``_follows``)."""
        with self._writing_lock:
            busy = self._read_busy - since + (time.monotonic() - self._busy_since if self._reading > 0 else 0.0)
            busy -= self._follow_busy - self._follow_at_batch
        return min(1.0, max(0.0, busy) / held) if held > 0 else 0.0

    def _quiet_in(self) -> float:
        """Seconds until writes to the release sources, here or through another worker, count as quiet (0: now)."""
        if self._writing > 0:
            return self._quiet  # a write is under way here: look again in a moment
        here = self._quiet - (time.monotonic() - self._last_write)
        if here > 0:
            return here
        newest = newest_write(self._opened)  # writes served by the node's other workers (a few index probes)
        if newest is None or newest <= self._last_write_us:
            return 0.0  # nothing newer than this worker's own last write, which is quiet
        return max(0.0, self._quiet_elsewhere - (now_us() - newest) / 1e6)

    def _settle(self) -> None:
        """Wait until writes have been quiet, or ``max_delay`` passed."""
        deadline = time.monotonic() + self._max_delay
        while (now := time.monotonic()) < deadline:
            wait = self._quiet_in()
            if wait <= 0:
                return
            time.sleep(min(max(wait, 0.02), deadline - now))

    def _pause(self) -> None:
        """Between release batches: while writes are arriving, leave them the write lock twice as long as the
        last batch held it; while reads keep the worker busy, up to ``_READ_YIELD`` times as long as it ran (by their share)."""
        held = time.monotonic() - self._batch_began
        if self._quiet_in() > 0:
            time.sleep(min(max(2 * held, 0.05), 3.0))
        elif (share := self._read_share(self._busy_at_batch, held)) >= _LIGHT_READS:
            # a bulk pull (busy half the time or more: the client parses between pages) gets all of it
            time.sleep(min(max(_READ_YIELD * held * min(1.0, 2 * share), 0.05), 10.0))
        self._mark_batch()

    def _mark_batch(self) -> None:
        """A release batch begins: its time, and how long GETs had been under way here until then."""
        with self._writing_lock:
            self._batch_began = time.monotonic()
            self._busy_at_batch = self._read_busy + (self._batch_began - self._busy_since if self._reading > 0 else 0.0)
            self._follow_at_batch = self._follow_busy

    def _report(self, problem: str) -> None:
        """Log a failed pass in one line; the same problem again only once a minute (a pass is retried every poll)."""
        now = time.monotonic()
        if self._last_problem is not None and self._last_problem[0] == problem and now - self._last_problem[1] < 60.0:
            return
        self._last_problem = (problem, now)
        log.error("background release failed: %s", problem)

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self._poll)
            self._wake.clear()
            try:
                if woken or pending(self._opened):
                    self._settle()  # also when another worker's writes woke the poll: they may still be arriving
                    # one releaser at a time across the node's workers; one that skips is covered by the
                    # running one, or by its own next poll for what that one's last batch did not see
                    with self._opened.store.try_exclusive() as mine:
                        if mine:
                            self._pass_began_us = now_us()  # the rows this pass writes are stamped from now on
                            self._mark_batch()
                            try:
                                release_all(self._opened, pause=self._pause)
                            finally:
                                self._pass_began_us = None
            except ExchangeError as exc:  # one line (a refused audit append, the database gone): retried on the next wake-up
                self._report(str(exc))
            except Exception:  # never let the thread die: the next notification retries from the bookmarks
                log.exception("background release failed")


def data_dir_factory(
    node_name: str, data_dir: Path | None, database: str | None, *, certfile: str | None = None, client_ca: str | None = None, **kwargs: Any
) -> Callable[[], Flask]:
    """A zero-argument factory (runs in each worker) building the node's app, with its analysts' web page at ``/ui/``.

    ``certfile``/``client_ca``: the files the node serves TLS with, shown (subject, expiry) on the page.
    """

    data_dir = Path(data_dir) if data_dir is not None else None  # a string when the lean master passes it

    def factory() -> Flask:
        from exchange.sharing.ui import register_ui

        opened = open_node(node_name, data_dir=data_dir, database=database)
        releaser = BackgroundReleaser(opened)
        app = create_app(opened.node, opened.store, after_write=releaser.notify, write_activity=releaser.activity,
                         read_activity=releaser.serving, **kwargs)
        register_ui(app, opened, tls=bool(kwargs.get("tls")), certfile=certfile, client_ca=client_ca)
        return app

    return factory
