"""Timing and machine description shared by the benchmark groups.

Every group builds a list of *cases* (name -> zero-argument callable doing one timed unit
of work and blocking until it is done) and hands them to :func:`interleaved`, which runs
them interleaved, in a new random order each repetition, so that slow drifts of a shared
machine and the after-effects of one case on the next hit every case alike, and reports
the median of the repetitions.
"""
from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Timing:
    median: float  # seconds
    q1: float
    q3: float
    n: int
    samples: tuple = ()  # every repetition's time, in repetition order (interleaved runs)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (noise indicator)."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else float("nan")


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    if len(xs) < 4:
        return xs[0], statistics.median(xs), xs[-1]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


def interleaved(cases: dict[str, Callable[[], object]], reps: int, warmup: int = 2,
                inner: int = 1, prime: int = 1) -> dict[str, Timing]:
    """Median time of each case over ``reps`` interleaved repetitions.

    ``warmup`` untimed calls per case come first (JIT compilation, allocator warm-up); a
    case that raises during warm-up is dropped and reported by name on stderr. ``inner``
    calls are timed together and divided (for sub-millisecond cases). ``prime`` untimed
    calls of the same case come right before each timed block, so that a case starts with
    its library's threads awake, as in a loop of its own.
    """
    live: dict[str, Callable[[], object]] = {}
    for name, fn in cases.items():
        try:
            for _ in range(warmup):
                fn()
            live[name] = fn
        except Exception as e:  # a peer missing a feature must not stop the suite
            print(f"  [skip] {name}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
    times: dict[str, list[float]] = {k: [] for k in live}
    names = list(live)
    gc_was = gc.isenabled()
    gc.disable()
    # a new random order every repetition: on a shared 2-core machine one library's threads
    # (torch's OpenMP, XLA's pool) can still be busy or asleep when the next case starts, so
    # a fixed rotation (A B C, B C A, ...) would give each case mostly the same predecessor
    # and a bias of its own; random predecessors spread that evenly
    order = random.Random(0)
    try:
        for r in range(reps):
            for name in order.sample(names, len(names)):
                fn = live[name]
                # a library's threads that slept through its predecessor (or the collector
                # below) take ~1 ms to wake on these machines: charged to whichever case came
                # first, that skewed paired ratios of small or few cases (4096x1 losses read
                # 2x where steady calls differ by 1.2x)
                for _ in range(prime):
                    fn()
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                times[name].append((time.perf_counter() - t0) / inner)
            gc.collect()
    finally:
        if gc_was:
            gc.enable()
    out = {}
    for name, ts in times.items():
        q1, med, q3 = _quartiles(ts)
        out[name] = Timing(med, q1, q3, len(ts), tuple(ts))
    return out


def torch_mlp(d_in: int, hidden: int, d_out: int):
    """The benchmarks' torch MLP: ``d_in → hidden → hidden → d_out`` with ReLUs."""
    import torch
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.ReLU(), torch.nn.Linear(hidden, d_out))


def cuda_time(fn: Callable[[], object], n: int, warmup: int = 1) -> float:
    """Seconds per call of ``fn`` on a CUDA device, pipelined: ``warmup`` calls, then ``n``
    calls between two synchronisations (the GPU's queue is drained before and after)."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "?"


def _version(mod: str) -> str:
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception:
        return "not installed"


def machine() -> dict[str, str]:
    info = {
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores visible": str(os.cpu_count()),
        "memory": _mem_gib(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": sys.version.split()[0],
    }
    for mod in ("fluxtrain", "numpy", "torch", "jax", "optax", "numba", "numexpr"):
        info[mod] = _version(mod)
    try:
        import torch
        info["torch threads"] = str(torch.get_num_threads())
    except Exception:
        pass
    return info


def fmt_ms(t: Timing | None) -> str:
    if t is None:
        return "n/a"
    ms = t.median * 1e3
    return f"{ms:.3g}" if ms < 10 else f"{ms:.1f}"


def ratio(a: Timing, b: Timing) -> float:
    """``a`` / ``b``: for two cases of one interleaved run, the median of the per-repetition
    ratios (both ran within the same repetition, so a slow spell of a shared machine
    divides out); otherwise the ratio of the medians."""
    if a.samples and len(a.samples) == len(b.samples):
        return statistics.median(x / y for x, y in zip(a.samples, b.samples))
    return a.median / b.median


def fmt_ratio(a: Timing | None, b: Timing | None) -> str:
    if a is None or b is None:
        return "n/a"
    return f"{ratio(a, b):.2f}×"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
