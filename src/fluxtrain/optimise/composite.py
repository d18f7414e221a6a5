"""Rules built from rules: OptimiserChain, AccumGrad, MixedPrecision.

They are ordinary rules (``init``/``apply``), so the tree code knows nothing about them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._backend import namespace
from .._errors import ArgumentError
from .base import Masked, Replace, Rule, concrete, scalar, tree_where, zeros

__all__ = ["OptimiserChain", "AccumGrad", "MixedPrecision"]


@dataclass(frozen=True, init=False)
class OptimiserChain(Rule):
    """Apply rules left to right, each transforming the previous one's delta.

    ``OptimiserChain(*rules)``; the state is a tuple of the rules' states. The empty chain is
    the identity (``delta = g``, i.e. ``Descent(1)``). When a rule returns no update
    (``AccumGrad`` between accumulations) the rest of the chain is skipped and keeps its
    state. ``adjust`` reaches every rule in the chain.

    Example:
        >>> import numpy as np, fluxtrain as ft
        >>> rule = ft.OptimiserChain(ft.ClipGrad(1.0), ft.Descent(0.1))
        >>> s = ft.setup(rule, m := (np.zeros(3),))
        >>> ft.update(s, m, (np.array([0.3, 1.0, 7.0]),))[1][0]   # clips before discounting
        array([-0.03, -0.1 , -0.1 ])
    """

    opts: tuple

    def __init__(self, *opts: Rule) -> None:
        for o in opts:
            if not isinstance(o, Rule):
                raise ArgumentError(f"OptimiserChain takes rules, got {o!r}")
        object.__setattr__(self, "opts", tuple(opts))

    def __repr__(self) -> str:
        return "OptimiserChain(" + ", ".join(map(repr, self.opts)) + ")"

    @property
    def _scalar_state_independent(self) -> bool:  # the state is the members' states
        return all(o._scalar_state_independent for o in self.opts)

    def subrules(self) -> tuple:
        return self.opts

    def init(self, x):
        return tuple(o.init(x) for o in self.opts)

    def apply(self, states, x, g):
        new = list(states)
        delta = g
        for i, o in enumerate(self.opts):
            if delta is None or isinstance(delta, Replace):
                break  # nothing (more) to transform: later rules keep their state
            if isinstance(delta, Masked):  # traced AccumGrad: run the rest, then select
                rest = OptimiserChain(*self.opts[i:])
                rest_states, d = rest.apply(tuple(new[i:]), x, delta.delta)
                new[i:] = tree_where(delta.active, rest_states, tuple(new[i:]))
                if isinstance(d, Masked):
                    d = Masked(d.delta, delta.active & d.active)
                elif d is not None and not isinstance(d, Replace):
                    d = Masked(d, delta.active)
                return tuple(new), d
            new[i], delta = o.apply(states[i], x, delta)
        return tuple(new), delta

    def adjust(self, eta=None, **hyper):
        return OptimiserChain(*(o.adjust(eta, **hyper) for o in self.opts))


@dataclass(frozen=True)
class AccumGrad(Rule):
    """Accumulate the mean of ``n`` gradients; every ``n``-th step pass it on, otherwise
    leave the parameter (and the rest of an ``OptimiserChain``) untouched.

    ``AccumGrad(n)`` (``n >= 1``); use as ``OptimiserChain(AccumGrad(n), rule)``. The state is
    ``(accumulator, counter)`` with the counter a 0-d int32 array, so it works under
    ``jax.jit`` (there the skip is a ``where``).

    Example:
        >>> import numpy as np, fluxtrain as ft
        >>> m = {"x": np.array([1.0], "float32")}
        >>> s = ft.setup(ft.OptimiserChain(ft.AccumGrad(2), ft.Descent(0.1)), m)
        >>> _ = ft.update_(s, m, {"x": np.array([3.0])}); m["x"]
        array([1.], dtype=float32)
        >>> _ = ft.update_(s, m, {"x": np.array([1.0])}); m["x"]
        array([0.8], dtype=float32)
    """

    _scalar_state_independent = True  # the counter steps 1, 2, ..., n, 1, ...

    n: int

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.n, int) or self.n <= 0:
            raise ArgumentError("AccumGrad must accumulate at least one gradient")

    def init(self, x):
        return (zeros(x), scalar(x, 1, dtype=namespace(x).int32))

    def apply(self, state, x, g):
        xp = namespace(x)
        acc, counter = state
        step = g / self.n
        if concrete(counter):
            c = int(counter)
            acc = step if c == 1 else acc + step
            if c == self.n:
                return (acc, scalar(counter, 1)), acc
            return (acc, counter + 1), None
        first = counter == 1
        acc = xp.where(first, step, acc + step)
        done = counter == self.n
        return (acc, xp.where(done, scalar(counter, 1), counter + 1)), Masked(acc, done)


@dataclass(frozen=True, init=False)
class MixedPrecision(Rule):
    """Keep a master copy of each parameter in a higher precision ``T`` (default float32):
    the inner rule updates the master copy, which is then cast back into the parameter.

    ``MixedPrecision([T="float32",] rule)``; ``T`` is a dtype name ("float32", "float64")
    or a NumPy/torch/JAX dtype. The state is ``(master_copy, inner_state)``. Flux writes
    the cast master copy into mutable arrays and, for immutable ones, subtracts
    ``x - T(master)``; fluxtrain always sets the parameter to the cast master copy (exact for
    both), see docs/optimise.md.
    """

    T: str
    rule: Rule

    def __init__(self, *args: Any) -> None:
        if len(args) == 1:
            T, rule = "float32", args[0]
        elif len(args) == 2:
            T, rule = args
        else:
            raise ArgumentError("MixedPrecision takes ([T,] rule)")
        if not isinstance(rule, Rule):
            raise ArgumentError(f"MixedPrecision needs a rule, got {rule!r}")
        name = getattr(T, "__name__", None) if isinstance(T, type) else None
        name = name or str(T)
        name = name.rsplit(".", 1)[-1].replace("<class '", "").rstrip("'>")
        object.__setattr__(self, "T", name)
        object.__setattr__(self, "rule", rule)

    def __repr__(self) -> str:
        return f"MixedPrecision({self.T}, {self.rule!r})"

    @property
    def _scalar_state_independent(self) -> bool:  # the master copy has x's shape
        return self.rule._scalar_state_independent

    def subrules(self) -> tuple:
        return (self.rule,)

    def _dtype(self, xp):
        return getattr(xp, self.T)

    def init(self, x):
        xp = namespace(x)
        xT = xp.astype(x, self._dtype(xp), copy=True)
        return (xT, self.rule.init(xT))

    def apply(self, state, x, g):
        xp = namespace(x)
        xT, st = state
        gT = xp.astype(g, self._dtype(xp))
        st, d = self.rule.apply(st, xT, gT)
        if d is None:
            return (xT, st), None
        if isinstance(d, Replace):
            xT2 = d.value
        elif isinstance(d, Masked):
            xT2 = xp.where(d.active, xT - d.delta, xT)
        else:
            xT2 = xT - d
        return (xT2, st), Replace(xp.astype(xT2, x.dtype))

    def adjust(self, eta=None, **hyper):
        return MixedPrecision(self.T, self.rule.adjust(eta, **hyper))
