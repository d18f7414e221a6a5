"""The kernels' worker threads (``_backend/workers.py``): every piece runs once, errors
reach the caller after all pieces are done, workers are steered and never left pinned, and
a forked child gets threads of its own."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from fluxtrain._backend import workers


def _record(out: list, i: int) -> None:
    out.append((i, threading.get_native_id()))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_every_piece_runs_once_the_first_on_the_caller(n):
    out: list = []
    workers.run(_record, [(out, i) for i in range(n)])
    assert sorted(i for i, _ in out) == list(range(n))
    tids = dict(out)
    assert tids[0] == threading.get_native_id()
    assert len(set(tids.values())) == n  # each on its own thread


def test_an_error_is_raised_after_every_piece_is_done():
    done: list = []

    def piece(i: int) -> None:
        if i == 1:
            raise ValueError("piece 1")
        time.sleep(0.05)
        done.append(i)

    with pytest.raises(ValueError, match="piece 1"):
        workers.run(piece, [(0,), (1,), (2,)])
    assert sorted(done) == [0, 2]  # nothing still writing when the caller sees the error
    out: list = []
    workers.run(_record, [(out, 0), (out, 1), (out, 2)])  # the pool still serves
    assert len(out) == 3


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs")
def test_workers_are_steered_then_take_the_whole_mask_back():
    seen: list = []

    def piece(i: int) -> None:
        if i:
            seen.append(os.sched_getaffinity(0))

    mine = os.sched_getaffinity(0)
    workers.run(piece, [(0,), (1,)])
    assert seen == [mine]  # not left pinned while running
    tid = workers._pool(1).workers[0][0]
    assert os.sched_getaffinity(tid) == mine
    try:  # the steer itself: all the caller's CPUs but the one it runs on
        assert workers._steer([tid]) == mine
        assert os.sched_getaffinity(tid) < mine and len(os.sched_getaffinity(tid)) == len(mine) - 1
    finally:
        os.sched_setaffinity(tid, mine)


_FORKED = """
import os, threading
from fluxtrain._backend import workers
out = []
workers.run(lambda i: out.append(i), [(0,), (1,)])  # the parent's pool exists
pid = os.fork()
if pid == 0:
    out.clear()
    workers.run(lambda i: out.append(i), [(0,), (1,)])
    os._exit(0 if sorted(out) == [0, 1] else 3)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_gets_its_own_threads():
    # in a fresh interpreter: this one has JAX's and torch's threads, which fork does not mix with
    r = subprocess.run([sys.executable, "-c", _FORKED], timeout=120, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
