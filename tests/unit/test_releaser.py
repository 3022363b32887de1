"""When a node's background releaser yields to writes (``exchange.sharing.background.BackgroundReleaser``).

Only the decisions, with the clock and the database probe replaced: the thread
itself runs in every integration and end-to-end test that pushes.
"""

from __future__ import annotations

import threading
import time

import pytest

import exchange.sharing.background as server
from exchange.sharing.background import BackgroundReleaser
from exchange.storage.store import now_us


@pytest.fixture
def releaser(monkeypatch) -> BackgroundReleaser:
    r = object.__new__(BackgroundReleaser)  # no thread: the decisions only
    r._quiet, r._quiet_elsewhere, r._max_delay = 0.2, 1.0, 30.0
    r._last_write = time.monotonic() - 100  # no write through this worker
    r._last_write_us = 0
    r._writing, r._writing_lock = 0, threading.Lock()
    r._batch_began = time.monotonic()
    r.newest = None
    monkeypatch.setattr(server, "newest_write", lambda opened: r.newest)
    r._opened = None
    return r


def test_writes_through_another_worker_need_a_longer_quiet(releaser):
    """A push served by another worker is seen by its rows' date_added, stamped a whole push
    cycle before the next envelope's: a 0.4 s gap there is a push going on, not quiet."""
    releaser.newest = now_us() - 400_000
    assert 0.5 < releaser._quiet_in() <= 0.6
    releaser.newest = now_us() - 1_500_000
    assert releaser._quiet_in() == 0
    releaser.newest = None  # nothing written anywhere
    assert releaser._quiet_in() == 0


def test_writes_through_this_worker_are_quiet_after_the_short_wait(releaser):
    """The worker that served the write knows when it was acknowledged: a single new object
    goes onward 0.2 s after it was stored (issue 4's latency), not after the longer wait."""
    stamped = now_us() - 300_000
    releaser.newest = stamped
    releaser._last_write, releaser._last_write_us = time.monotonic() - 0.05, stamped + 100_000
    assert 0.1 < releaser._quiet_in() <= 0.15
    releaser._last_write = time.monotonic() - 0.25
    assert releaser._quiet_in() == 0  # its own rows in the database are not news
    releaser.newest = now_us() - 100_000  # ... but a row written since, through another worker, is
    assert 0.8 < releaser._quiet_in() <= 0.9


def test_a_release_pass_leaves_writers_the_lock_twice_as_long_as_its_batch_held_it(releaser, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(server.time, "sleep", slept.append)
    releaser.newest = now_us() - 100_000  # a push is going on
    releaser._batch_began = time.monotonic() - 0.4
    releaser._pause()
    assert len(slept) == 1 and 0.8 <= slept[0] < 0.9  # twice as long: writers get 2/3 of the lock
    releaser.newest = now_us() - 5_000_000  # quiet: no pause
    releaser._batch_began = time.monotonic() - 0.4
    releaser._pause()
    assert len(slept) == 1


def test_a_write_under_way_here_is_never_quiet(releaser):
    """A POST still reading its body or waiting for the lock behind a release batch has not
    written yet: without counting it, a release pass slowed the push it ran beside, and the
    slower envelopes looked like gaps (1 pusher on 1 worker: 2,500 objects/s instead of 9,600)."""
    releaser.activity(True)
    assert releaser._quiet_in() > 0
    releaser._last_write = time.monotonic() - 10
    assert releaser._quiet_in() > 0
    releaser.activity(False)  # ended: quiet counts from now
    assert 0.15 < releaser._quiet_in() <= 0.2
