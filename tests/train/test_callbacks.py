"""Callbacks with Flux's semantics: throttle (with a fake clock), patience, early_stopping,
plateau; the edge cases of their comparisons."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from fluxtrain import early_stopping, patience, plateau, throttle


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def recorder():
    calls = []

    def f(i):
        calls.append(i)
        return i
    return f, calls


def test_throttle_leading_only_flux_docstring():
    # Flux's doctest: called every second with timeout 2, it runs every other call
    clock = FakeClock()
    f, calls = recorder()
    a = throttle(f, 2, clock=clock)
    out = []
    for i in range(4):
        out.append(a(i))
        clock.now += 1.0
    assert calls == [0, 2] and out == [0, 0, 2, 2]


def test_throttle_trailing_runs_the_last_deferred_call():
    clock = FakeClock()
    f, calls = recorder()
    a = throttle(f, 2.0, trailing=True, clock=clock)
    results = []
    for now, arg in [(0.0, 0), (0.5, 1), (1.0, 2), (2.5, 3), (5.0, 4), (9.0, 5)]:
        clock.now = now
        results.append(a(arg))
    # 1 was superseded by 2; each deferred call ran when its period ended
    assert calls == [0, 2, 3, 4, 5]
    assert results == [0, 0, 0, 2, 3, 5]
    clock.now = 9.5
    assert a(6) == 5 and calls[-1] == 5     # deferred, not run yet
    assert a.flush() == 6 and calls[-1] == 6
    assert a.flush() == 6 and calls.count(6) == 1


def test_throttle_leading_false():
    clock = FakeClock()
    f, calls = recorder()
    a = throttle(f, 2.0, leading=False, clock=clock)
    out = []
    for now, arg in [(0.0, 0), (1.0, 1), (3.0, 2), (5.0, 3)]:
        clock.now = now
        out.append(a(arg))
    # the first call is deferred to the end of its period; as in Flux its result is not kept
    assert calls == [0] and out == [None] * 4
    clock.now = 7.5
    a(4)
    assert calls == [0, 3]


def test_throttle_passes_arguments_and_validates():
    clock = FakeClock()
    seen = []
    a = throttle(lambda *args, **kw: seen.append((args, kw)) or len(seen), 1.0, clock=clock)
    assert a(1, k=2) == 1 and seen == [((1,), {"k": 2})]
    with pytest.raises(ValueError, match="timeout"):
        throttle(print, -1)
    with pytest.raises(ValueError, match="timeout"):
        throttle(print, math.nan)
    with pytest.raises(TypeError, match="callable"):
        throttle(3, 1.0)


def test_throttle_with_the_real_clock_runs_the_first_call():
    f, calls = recorder()
    a = throttle(f, 3600.0)
    a(1)
    a(2)
    assert calls == [1]


def test_patience():
    trigger = patience(lambda x: x > 0, 2)
    assert [trigger(x) for x in (1, 0, 1, 1, 1, 0, 1)] == [False, False, False, True, True, False, False]
    assert trigger.count == 1
    trigger.reset()
    assert trigger.count == 0
    seen = []
    t = patience(lambda *a, **k: seen.append((a, k)) or True, 1)
    assert t(1, y=2) is True and seen == [((1,), {"y": 2})]
    with pytest.raises(ValueError, match="wait must be >= 1"):
        patience(bool, 0)
    with pytest.raises(TypeError, match="wait"):
        patience(bool, 1.5)


def scores(*values):
    it = iter(values)
    return lambda: next(it)


def test_early_stopping_equal_score_does_not_count():
    es = early_stopping(scores(1.0, 1.0, 1.0, 1.0), 1)
    assert [es() for _ in range(4)] == [False] * 4


def test_early_stopping_init_score_default_inf():
    # increasing losses: the first call sets the best score and never counts
    es = early_stopping(scores(1, 2, 3, 4), 3)
    assert [es() for _ in range(4)] == [False, False, False, True]
    assert es.predicate.best_score == 1
    # Flux < 0.16.8 used init_score = 0, which counts the first call too
    es = early_stopping(scores(1, 2, 3), 3, init_score=0)
    assert [es() for _ in range(3)] == [False, False, True]


def test_early_stopping_min_dist_is_strict_and_small_gains_count():
    es = early_stopping(scores(1.0, 0.95, 0.9, 0.5), 2, min_dist=0.1)
    # a gain of 0.05 < 0.1 counts (and still becomes the best); a gain of 0.4 resets
    assert [es() for _ in range(4)] == [False, False, True, False]
    es = early_stopping(scores(1.0, 0.5), 1, min_dist=0.5)
    assert [es(), es()] == [False, False]    # a gain of exactly min_dist is not < min_dist


def test_early_stopping_custom_distance_for_a_score_to_maximise():
    es = early_stopping(scores(0.5, 0.6, 0.6, 0.55, 0.58), 2,
                        distance=lambda best, s: s - best, init_score=0)
    assert [es() for _ in range(5)] == [False, False, False, False, True]
    assert es.predicate.best_score == 0.6


def test_early_stopping_nan_never_counts():
    es = early_stopping(scores(math.nan, math.nan, math.inf, math.inf), 1)
    assert [es() for _ in range(4)] == [False] * 4


def test_plateau_flux_docstring_and_defaults():
    v = [10.0]

    def f():
        v[0] = v[0] / abs(v[0]) - v[0]
        return v[0]                       # -9, 8, -7, 6, ...
    trigger = plateau(f, 3, init_score=10, min_dist=18)
    assert [trigger() for _ in range(4)] == [False, False, False, True]
    # default init_score = inf: the first call never counts; min_dist = Julia's 1f-6
    p = plateau(scores(1.0, 1.0, 1.0), 2)
    assert [p(), p(), p()] == [False, False, True]
    assert p.predicate.min_dist == float(np.float32(1e-6))
    p = plateau(scores(1.0, 1.0 + 5e-7, 1.0 + 1e-6 + 5e-7, 1.0 + 3e-6), 1)
    assert [p(), p(), p(), p()] == [False, True, False, False]
    with pytest.raises(ValueError, match="width"):
        plateau(bool, 0)


def test_callbacks_pickle():
    es = early_stopping(abs, 2)
    es(3.0)
    back = pickle.loads(pickle.dumps(es))
    assert back.predicate.best_score == 3.0 and back(5.0) is False and back(5.0) is True


def test_docstring_examples():
    import doctest
    from fluxtrain.train import callbacks
    result = doctest.testmod(callbacks)
    assert result.failed == 0 and result.attempted > 0
