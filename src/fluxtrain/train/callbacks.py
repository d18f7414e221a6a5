"""Callback helpers for hand-written training loops, with Flux's semantics:
``throttle``, ``patience``, ``early_stopping`` and ``plateau``.

Each returns a small callable object (not a closure) that keeps its state in plain
attributes, so it can be inspected, reset and pickled.
"""
from __future__ import annotations

import math
import numbers
import operator
import time
from typing import Any, Callable, Optional

__all__ = ["throttle", "patience", "early_stopping", "plateau"]

_F32_1E_6 = 9.999999974752427e-07  # Julia's 1f-6, as Float64


def _check_count(value: Any, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    return int(value)


class Throttled:
    """The callable returned by :func:`throttle` (see there)."""

    def __init__(self, f: Callable[..., Any], timeout: float, leading: bool, trailing: bool,
                 clock: Callable[[], float]):
        self.f = f
        self.timeout = timeout
        self.leading = leading
        self.trailing = trailing
        self.clock = clock
        self.result: Any = None
        self._cooling = False     # Flux's `cooldown == false`
        self._wake = 0.0          # when Flux's background task next wakes up
        self._later: Optional[Callable[[], None]] = None

    def __repr__(self) -> str:
        return (f"throttle({self.f!r}, {self.timeout!r}, leading={self.leading}, "
                f"trailing={self.trailing})")

    def _catch_up(self, now: float) -> None:
        # Flux runs a task that sleeps `timeout`, runs the pending trailing call if any and
        # sleeps again, or ends the cool-down when nothing is pending. Julia tasks are
        # cooperative, so the task runs when the loop yields: here, at the next call.
        while self._cooling and self._wake <= now:
            if self._later is not None:
                later, self._later = self._later, None
                later()
                self._wake += self.timeout
            else:
                self._cooling = False

    def flush(self) -> Any:
        """Run a pending trailing call now (e.g. after the loop) and return the result."""
        if self._later is not None:
            later, self._later = self._later, None
            later()
        return self.result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        now = self.clock()
        self._catch_up(now)
        if not self._cooling:
            if self.leading:
                self.result = self.f(*args, **kwargs)
            else:
                # Flux's leading=false closure does not store its result.
                self._later = lambda: self.f(*args, **kwargs)
            self._cooling = True
            self._wake = now + self.timeout
        elif self.trailing:
            def later():
                self.result = self.f(*args, **kwargs)
            self._later = later
        return self.result


def throttle(f: Callable[..., Any], timeout: float, *, leading: bool = True,
             trailing: bool = False, clock: Callable[[], float] = time.monotonic) -> Throttled:
    """Flux's ``throttle``: a wrapper of ``f`` that runs it at most once per ``timeout``
    seconds, returning the result of the last run.

    - ``leading=True``: a call that starts a quiet period runs ``f`` at once.
    - ``trailing=True``: the last call made during a quiet period is remembered and run
      when the period ends (with its own arguments), which starts another period.
    - ``leading=False, trailing=False``: as in Flux, the first call is deferred to the end
      of the period and its result is not returned by later calls.

    Deliberate difference: Flux runs the deferred (trailing) call from a background task
    when its timer fires; Julia's tasks are cooperative, so that happens at the loop's next
    yield point, typically the next throttled call. fluxtrain has no background thread: the
    deferred call runs at the next call to the wrapper after its time has come, or when you
    call ``.flush()``. ``clock`` (default ``time.monotonic``) can be replaced, e.g. by a fake
    clock in tests.

    Example:
        >>> from fluxtrain import throttle
        >>> now = [0.0]
        >>> log = throttle(lambda i: i, 2.0, clock=lambda: now[0])
        >>> out = []
        >>> for i in range(5):
        ...     out.append(log(i)); now[0] += 1.0
        >>> out
        [0, 0, 2, 2, 4]
    """
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout >= 0 \
            or not math.isfinite(timeout):
        raise ValueError(f"throttle: timeout must be a finite number of seconds >= 0, got {timeout!r}")
    if not callable(f):
        raise TypeError(f"throttle: f must be callable, got {type(f).__name__}")
    return Throttled(f, float(timeout), bool(leading), bool(trailing), clock)


class Patience:
    """The callable returned by :func:`patience` (see there)."""

    def __init__(self, predicate: Callable[..., Any], wait: int):
        self.predicate = predicate
        self.wait = wait
        self.count = 0

    def __repr__(self) -> str:
        return f"patience({self.predicate!r}, {self.wait}) [count={self.count}]"

    def reset(self) -> None:
        self.count = 0

    def __call__(self, *args: Any, **kwargs: Any) -> bool:
        self.count = self.count + 1 if self.predicate(*args, **kwargs) else 0
        return self.count >= self.wait


def patience(predicate: Callable[..., Any], wait: int) -> Patience:
    """Flux's ``patience``: a function that returns True once ``predicate(...)`` has been
    true ``wait`` times in a row (a false resets the count).

    Deliberate difference: Flux accepts ``wait < 1`` (then it is always true); fluxtrain
    raises ``ValueError``.

    Example:
        >>> from fluxtrain import patience
        >>> trigger = patience(lambda x: x > 0, 2)
        >>> [trigger(x) for x in (1, 0, 1, 1, 1)]
        [False, False, False, True, True]
    """
    if not callable(predicate):
        raise TypeError(f"patience: predicate must be callable, got {type(predicate).__name__}")
    return Patience(predicate, _check_count(wait, "wait", "patience"))


class _NoImprovement:
    """early_stopping's predicate: distance(best, score) < min_dist."""

    def __init__(self, f, distance, init_score, min_dist):
        self.f, self.distance, self.min_dist = f, distance, min_dist
        self.best_score = init_score

    def __repr__(self) -> str:
        return f"<no improvement on {self.f!r}, best={self.best_score!r}>"

    def __call__(self, *args, **kwargs) -> bool:
        score = self.f(*args, **kwargs)
        delta = self.distance(self.best_score, score)
        self.best_score = self.best_score if delta < 0 else score
        return delta < self.min_dist


class _Flat:
    """plateau's predicate: |distance(last, score)| < min_dist."""

    def __init__(self, f, distance, init_score, min_dist):
        self.f, self.distance, self.min_dist = f, distance, min_dist
        self.last_score = init_score

    def __repr__(self) -> str:
        return f"<plateau of {self.f!r}, last={self.last_score!r}>"

    def __call__(self, *args, **kwargs) -> bool:
        score = self.f(*args, **kwargs)
        delta = abs(self.distance(self.last_score, score))
        self.last_score = score
        return delta < self.min_dist


def early_stopping(f: Callable[..., Any], delay: int, *,
                   distance: Callable[[Any, Any], Any] = operator.sub,
                   init_score: Any = math.inf, min_dist: Any = 0) -> Patience:
    """Flux's ``early_stopping``: True once ``f(...)`` has failed to improve ``delay`` times
    in a row.

    Each call computes ``score = f(...)`` and ``Δ = distance(best_score, score)`` (default
    ``best - score``: lower is better; use ``distance=lambda best, s: s - best`` for an
    accuracy). The best score becomes ``score`` unless ``Δ < 0``; the step counts as "no
    improvement" when ``Δ < min_dist``, **strictly** (Flux's docstring says ``<=``, its code
    ``<``). So with the defaults an equal score does *not* count, and a NaN distance (e.g. an
    infinite score) never counts. ``init_score`` defaults to ``inf`` (Flux >= 0.16.8; it was
    0 before).

    The returned object's ``.predicate.best_score`` is the best score so far.

    Example:
        >>> from fluxtrain import early_stopping
        >>> losses = iter([3.0, 2.0, 2.0, 2.5, 2.1, 2.2])
        >>> es = early_stopping(lambda: next(losses), 3)
        >>> [es() for _ in range(6)]
        [False, False, False, False, False, True]
    """
    if not callable(f):
        raise TypeError(f"early_stopping: f must be callable, got {type(f).__name__}")
    delay = _check_count(delay, "delay", "early_stopping")
    return Patience(_NoImprovement(f, distance, init_score, min_dist), delay)


def plateau(f: Callable[..., Any], width: int, *,
            distance: Callable[[Any, Any], Any] = operator.sub,
            init_score: Any = math.inf, min_dist: Any = _F32_1E_6) -> Patience:
    """Flux's ``plateau``: True once ``f(...)`` has stayed within ``min_dist`` of its
    previous value ``width`` times in a row.

    Each call computes ``score = f(...)``, ``Δ = |distance(last_score, score)|`` and then
    sets ``last_score = score``; the step counts when ``Δ < min_dist`` (strict).
    ``init_score`` defaults to ``inf`` (so the first call never counts) and ``min_dist`` to
    Flux's ``1f-6``, the float32 nearest 1e-6 (9.999999974752427e-07).

    Example (Flux's docstring: scores -9, 8, -7, 6, ...):
        >>> from fluxtrain import plateau
        >>> v = [10.0]
        >>> def f():
        ...     v[0] = v[0] / abs(v[0]) - v[0]; return v[0]
        >>> trigger = plateau(f, 3, init_score=10, min_dist=18)
        >>> [trigger() for _ in range(4)]
        [False, False, False, True]
    """
    if not callable(f):
        raise TypeError(f"plateau: f must be callable, got {type(f).__name__}")
    width = _check_count(width, "width", "plateau")
    return Patience(_Flat(f, distance, init_score, min_dist), width)
