"""The threads the NumPy kernels share a group's pieces among (``fast_numpy._run``).

Our own blocking threads rather than numba's ``parallel=True``: numba's OpenMP threads
spin-wait after each region and, on a machine with few cores, starve torch's threads (its
own OpenMP runtime) and everything else for milliseconds after every step (torch's fused
Adam measured 7x slower right after a numba parallel step). These threads sleep when idle.

Each worker is woken on a CPU other than the caller's (``_steer``). Linux places a woken
thread near its waker when it judges the other CPUs busy, and when the caller is one of
XLA's threads (the JAX custom call, run asynchronously) while the main thread has just been
busy, it put both halves of a group on one CPU for milliseconds: Adam on 100 arrays of
10 M floats in all took 16-20 ms a step instead of 12 (``docs/performance.md``). The
worker takes its full CPU mask back as soon as it runs, so it is steered, never pinned.
"""
from __future__ import annotations

import ctypes
import os
import queue
import threading
from typing import Callable

_LOCK = threading.Lock()
_POOL: "_Pool | None" = None


def _sched_getcpu() -> Callable[[], int] | None:
    if not hasattr(os, "sched_setaffinity"):  # not on Linux
        return None
    try:
        f = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
    f.restype, f.argtypes = ctypes.c_int, []
    return f


_GETCPU = _sched_getcpu()


class _Pool:
    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked child has none of these threads
        self.workers: list[tuple[int, queue.SimpleQueue]] = []

    def grow(self, n: int) -> None:
        """At least ``n`` workers (the threads already started stay in use)."""
        for i in range(len(self.workers), n):
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            started: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(jobs, started), name=f"fluxtrain-{i}", daemon=True).start()
            self.workers.append((started.get(), jobs))


def _serve(jobs: queue.SimpleQueue, started: queue.SimpleQueue) -> None:
    started.put(threading.get_native_id())
    while True:
        fn, args, done, mask = jobs.get()
        if mask is not None:
            try:
                os.sched_setaffinity(0, mask)
            except OSError:
                pass
        try:
            fn(*args)
            done.put(None)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            done.put(e)


def _pool(n: int) -> _Pool:
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _Pool()
        _POOL.grow(n)
        return _POOL


def _steer(tids: list[int]) -> set[int] | None:
    """Let the workers ``tids`` run anywhere but on the caller's CPU; return the caller's
    mask, which each worker takes back when it starts (None: nothing was changed)."""
    if _GETCPU is None:
        return None
    try:
        mine = os.sched_getaffinity(0)
        rest = mine - {_GETCPU()}
        if not rest:
            return None
        for t in tids:
            os.sched_setaffinity(t, rest)
        return mine
    except OSError:  # a restricted container: leave placement to the OS
        return None


def run(fn: Callable, arglists: list[tuple]) -> None:
    """``fn(*args)`` for each of ``arglists``: the first on the calling thread, the others
    on workers at the same time; returns when all are done, raising the first error."""
    if len(arglists) <= 1:
        for args in arglists:
            fn(*args)
        return
    workers = _pool(len(arglists) - 1).workers[:len(arglists) - 1]
    mask = _steer([tid for tid, _ in workers])
    done: queue.SimpleQueue = queue.SimpleQueue()
    for (_, jobs), args in zip(workers, arglists[1:]):
        jobs.put((fn, args, done, mask))
    err = None
    try:
        fn(*arglists[0])
    except BaseException as e:  # noqa: BLE001 - the workers still write: wait for them first
        err = e
    for _ in workers:
        e = done.get()
        err = err or e
    if err is not None:
        raise err
