"""The master's ConnectionBoard: which worker holds how many connections (exchange.node.worker)."""

from __future__ import annotations

import os
from types import SimpleNamespace

from exchange.node.worker import ConnectionBoard


def test_workers_get_distinct_slots_and_a_freed_slot_is_reused():
    board = ConnectionBoard(4)
    live: list = []
    for _ in range(3):
        w = SimpleNamespace()
        board.assign(w, live)
        live.append(w)
    assert [w.board_slot for w in live] == [0, 1, 2]
    board.release(live[1])
    gone = live.pop(1)
    assert board.get(gone.board_slot) == -1
    replacement = SimpleNamespace()
    board.assign(replacement, live)
    assert replacement.board_slot == 1 and board.get(1) == 0


def test_no_slot_when_every_slot_is_held():
    board = ConnectionBoard(1)
    first, second = SimpleNamespace(), SimpleNamespace()
    board.assign(first, [])
    board.assign(second, [first])
    assert second.board_slot is None
    board.release(second)  # nothing to free
    assert board.get(0) == 0


def test_fewest_besides_looks_only_at_other_live_workers():
    board = ConnectionBoard(4)
    board.set(0, 3)
    board.set(1, 1)
    board.set(2, 5)  # slot 3 stays -1: no worker there
    assert board.fewest_besides(0) == 1
    assert board.fewest_besides(1) == 3
    board.set(0, -1)
    board.set(2, -1)
    assert board.fewest_besides(1) is None


def test_a_forked_child_writes_what_the_parent_reads():
    board = ConnectionBoard(2)
    pid = os.fork()
    if pid == 0:  # the child: as a worker publishing its count
        board.set(1, 7)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert board.get(1) == 7
