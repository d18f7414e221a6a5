"""fluxtrain benchmark suite: optimiser steps, losses and ``train``, beside their peers.

Every comparison runs in one process, side by side, with interleaved repetitions and
medians; the output is Markdown (``BENCHMARKS.md`` at the repository root by default).

    python bench/run.py                      # everything, full size (~10 min on 2 cores)
    python bench/run.py --quick              # 1 M parameters, 3 repetitions (~5 min)
    python bench/run.py --groups optim --rules Adam,Lion --splits 1,1000
    python bench/run.py --groups losses --libs torch --out -   # print, do not write

    # BENCHMARKS.md as committed: three runs of a few minutes each
    python bench/run.py --groups optim --rules Adam --reps 7          # Adam and AdamW
    python bench/run.py --groups optim --rules Momentum,Lion,Chain --reps 7 --append
    python bench/run.py --groups schedule,losses,train --append

Most of the time at 1,000 arrays is JAX compilation (warm-up, not timed).

Timings on a shared machine are noisy: each table reports the median spread, and ratios
of cases measured in the same interleaved run are more trustworthy than absolute times.
A ratio of two cases of one run is the median of their per-repetition ratios (paired: both
ran within the same repetition), so that a slow spell of the machine divides out. Each
timed block follows one untimed call of the same case, so that no case pays for waking
threads that slept through its predecessor (~1 ms on these machines).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, md_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("optim", "schedule", "losses", "train")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 M parameters, 3 repetitions")
    p.add_argument("--groups", default=",".join(GROUPS), help="comma list of " + ", ".join(GROUPS))
    p.add_argument("--rules", default="", help="optimiser rules to run, by name prefix: Adam,Lion,Chain (default: all)")
    p.add_argument("--splits", default="1,100,1000", help="numbers of arrays for the optimiser steps")
    p.add_argument("--libs", default="torch,jax,numpy", help="backends to run")
    p.add_argument("--params", type=float, default=None, help="parameter count (default 10e6, 1e6 quick)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 9, 3 quick)")
    p.add_argument("--generic", default="Adam",
                   help="rules whose fluxtrain generic (fast paths off) path is also timed: a comma list, 'all' or ''")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for torch and numba (default: their own default, all cores)")
    p.add_argument("--append", action="store_true",
                   help="append these sections to an existing --out file (run groups separately, "
                        "each a few minutes, into one report)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="output file, '-' for stdout")
    a = p.parse_args(argv)

    groups = [g for g in a.groups.split(",") if g]
    for g in groups:
        if g not in GROUPS:
            p.error(f"unknown group {g!r}; choose from {', '.join(GROUPS)}")
    libs = [x for x in a.libs.split(",") if x]
    n = int(a.params or (1e6 if a.quick else 10e6))
    reps = a.reps or (3 if a.quick else 9)
    splits = [int(s) for s in a.splits.split(",") if s]
    rules = [r for r in a.rules.split(",") if r] or None

    if a.threads:
        try:
            import torch
            torch.set_num_threads(a.threads)
        except ImportError:
            pass
        try:
            import numba
            numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
        except ImportError:
            pass
    info = machine()
    if a.threads:
        info["threads (--threads)"] = str(a.threads)
    t0 = time.time()
    parts = []
    if "optim" in groups:
        import optim
        parts.append(optim.run(n, splits, reps, rules, libs, a.generic))
    if "schedule" in groups:
        import schedule
        parts.append(schedule.run(n, splits, reps, libs))
    if "losses" in groups:
        import losses
        shapes = [(4096, 1000), (4096, 1)] if not a.quick else [(1024, 1000), (1024, 1)]
        parts.append(losses.run(shapes, reps, libs))
    if "train" in groups:
        import train
        parts.append(train.run(a.quick, reps, libs))
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["suite wall time"] = f"{time.time() - t0:.0f} s"
    cmd = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])

    head = ["# fluxtrain benchmarks\n",
            f"Generated by `{cmd.strip()}`. Medians of interleaved repetitions, all cases of a "
            "table timed in one process, each timed block right after one untimed call of "
            "the same case; a ratio is the median of the two cases' "
            "per-repetition ratios (paired). Regenerate with the same command; see "
            "`docs/performance.md` for what is accelerated and how.\n",
            "## Machine and versions\n",
            md_table(["", ""], [[k, v] for k, v in info.items()]), ""]
    text = "\n".join(head) + "\n" + "\n".join(parts)
    if a.append and a.out != "-" and Path(a.out).exists():
        note = (f"*Appended by `{cmd.strip()}` at {info['date (UTC)']} UTC; load average "
                f"{info['load average at start']} at start, {info['load average at end']} at end; "
                f"{info['suite wall time']}.*\n")
        text = Path(a.out).read_text().rstrip("\n") + "\n\n" + note + "\n" + "\n".join(parts)
    if a.out == "-":
        print(text)
    else:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
