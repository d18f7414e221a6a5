"""The Adam family: Adam, RAdam, AdaMax, OAdam, AMSGrad, NAdam, AdamW, AdaBelief.

As in Optimisers.jl, the bias corrections use running products ``beta^t`` kept in the
state as 0-d arrays of the parameter dtype (``bt <- bt * beta`` each step), not a step
count, so float32 parameters give Flux's float32 numbers bit for bit. Every expression
follows Optimisers.jl's operation order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .._backend import namespace
from .base import Rule, caster, eps_cast, full, scalar, zeros

__all__ = ["Adam", "RAdam", "AdaMax", "OAdam", "AMSGrad", "NAdam", "AdamW", "AdaBelief"]


def _hyper(rule, x):
    """``T``, the namespace, and ``T.((eta, beta[1], beta[2]))`` with ``_eps(T, epsilon)``:
    the hyper-parameters rounded to ``x``'s dtype, as every rule here starts."""
    T = caster(x)
    return T, namespace(x), T(rule.eta), T(rule.beta[0]), T(rule.beta[1]), eps_cast(T, rule.epsilon)


def _betas(rule, x):
    """``T.(beta)`` as a pair of 0-d arrays (the running products start at beta)."""
    T = caster(x)
    return (scalar(x, T(rule.beta[0])), scalar(x, T(rule.beta[1])))


def _div(a, b):
    """``a / b`` with IEEE semantics for Python floats (Julia's: ``2 / 0.0 == Inf``), as the
    same division of arrays gives; e.g. ``1 - beta`` is 0 when ``beta`` rounds to 1 in
    bfloat16."""
    if type(b) is float and b == 0.0:
        return math.copysign(math.inf, b) * a if a else math.nan
    return a / b


def _advance(bt, b1, b2):
    return (bt[0] * b1, bt[1] * b2)


def _moments(m, v, g, b1, b2, T):
    m = b1 * m + T(1 - b1) * g
    v = b2 * v + T(1 - b2) * (g * g)
    return m, v


@dataclass(frozen=True)
class Adam(Rule):
    """Adam: ``m <- b1*m + (1-b1)*g``; ``v <- b2*v + (1-b2)*g^2``;
    ``delta = m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) * eta`` (eps outside the sqrt, as torch).

    ``Adam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-8)``; equals ``torch.optim.Adam`` and
    ``optax.adam`` (same defaults) up to rounding order.

    Example:
        >>> import numpy as np, fluxtrain as ft
        >>> x = np.array([1.0, -2.0, 0.5]); s = ft.setup(ft.Adam(), x)
        >>> s, x = ft.update_(s, x, np.array([0.1, -0.2, 0.0])); x
        array([ 0.999, -1.999,  0.5  ])
    """

    _scalar_state_independent = True  # beta^t <- beta^t * beta

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-8

    def init(self, x):
        return (zeros(x), zeros(x), _betas(self, x))

    def apply(self, state, x, g):
        T, xp, eta, b1, b2, eps = _hyper(self, x)
        m, v, bt = state
        m, v = _moments(m, v, g, b1, b2, T)
        delta = m / (1 - bt[0]) / (xp.sqrt(v / (1 - bt[1])) + eps) * eta
        return (m, v, _advance(bt, b1, b2)), delta


@dataclass(frozen=True)
class RAdam(Rule):
    """Rectified Adam. With ``rho_inf = 2/(1-b2) - 1`` and
    ``rho = rho_inf - 2t*b2^t/(1-b2^t)``: if ``rho > 4`` (torch uses 5),
    ``delta = m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) * eta * r`` with
    ``r = sqrt((rho-4)(rho-2)rho_inf / ((rho_inf-4)(rho_inf-2)rho))``, else
    ``delta = m/(1-b1^t) * eta``. The branch is a ``where``, so it is jit-able.

    ``RAdam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-8)``.
    """

    _scalar_state_independent = True  # beta^t <- beta^t * beta; t <- t + 1

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-8

    def init(self, x):
        return (zeros(x), zeros(x), _betas(self, x), scalar(x, 1, dtype=namespace(x).int32))

    def apply(self, state, x, g):
        T, xp, eta, b1, b2, eps = _hyper(self, x)
        rinf = T(T(_div(2, T(1 - b2))) - 1)
        m, v, bt, t = state
        m, v = _moments(m, v, g, b1, b2, T)
        tt = xp.astype(t, x.dtype)
        rho = rinf - (2 * tt) * bt[1] / (1 - bt[1])
        ok = rho > 4
        safe = xp.where(ok, rho, scalar(rho, 5.0))  # keeps sqrt's argument positive off-branch
        r = xp.sqrt((safe - 4) * (safe - 2) * rinf / (T(T(rinf - 4) * T(rinf - 2)) * safe))
        mhat = m / (1 - bt[0])
        rect = mhat / (xp.sqrt(v / (1 - bt[1])) + eps) * eta * r
        delta = xp.where(ok, rect, mhat * eta)
        return (m, v, _advance(bt, b1, b2), t + 1), delta


@dataclass(frozen=True)
class AdaMax(Rule):
    """AdaMax: ``u <- max(b2*u, |g|)``; ``delta = (eta/(1-b1^t)) * m / (u + eps)``.

    ``AdaMax(eta=0.001, beta=(0.9, 0.999), epsilon=1e-8)``. torch's ``Adamax`` adds eps
    inside the max (``u <- max(b2*u, |g| + eps)``, ``delta = eta/(1-b1^t) * m/u``), so the two
    agree only when ``u`` is far above eps; see docs/optimise.md.
    """

    _scalar_state_independent = True  # beta^t <- beta^t * beta

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-8

    def init(self, x):
        return (zeros(x), zeros(x), _betas(self, x))

    def apply(self, state, x, g):
        T, xp, eta, b1, b2, eps = _hyper(self, x)
        m, u, bt = state
        m = b1 * m + T(1 - b1) * g
        u = xp.maximum(b2 * u, xp.abs(g))
        delta = (eta / (1 - bt[0])) * m / (u + eps)
        return (m, u, _advance(bt, b1, b2)), delta


@dataclass(frozen=True)
class OAdam(Rule):
    """Optimistic Adam: ``term = eta*m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)``;
    ``delta = 2*term - term_prev``.

    ``OAdam(eta=0.001, beta=(0.5, 0.9), epsilon=1e-8)``.
    """

    _scalar_state_independent = True  # beta^t <- beta^t * beta

    eta: float = 0.001
    beta: tuple = (0.5, 0.9)
    epsilon: float = 1e-8

    def init(self, x):
        return (zeros(x), zeros(x), _betas(self, x), zeros(x))

    def apply(self, state, x, g):
        T, xp, eta, b1, b2, eps = _hyper(self, x)
        m, v, bt, prev = state
        m, v = _moments(m, v, g, b1, b2, T)
        term = eta * m / (1 - bt[0]) / (xp.sqrt(v / (1 - bt[1])) + eps)
        return (m, v, _advance(bt, b1, b2), term), 2 * term - prev


@dataclass(frozen=True)
class AMSGrad(Rule):
    """AMSGrad: Adam's moments, ``vhat <- max(vhat, v)``; ``delta = eta*m / (sqrt(vhat) + eps)``
    (no bias correction). As in Optimisers.jl **all three states start at epsilon**.

    ``AMSGrad(eta=0.001, beta=(0.9, 0.999), epsilon=1e-8)``. torch's ``Adam(amsgrad=True)``
    starts at 0 and bias-corrects, so it differs; optax's ``amsgrad`` also bias-corrects.
    """

    _scalar_state_independent = True  # no 0-d state (arrays shaped like x)

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-8

    def init(self, x):
        e = caster(x)(self.epsilon)
        return (full(x, e), full(x, e), full(x, e))

    def apply(self, state, x, g):
        T, xp, eta, b1, b2, eps = _hyper(self, x)
        m, v, vhat = state
        m, v = _moments(m, v, g, b1, b2, T)
        vhat = xp.maximum(vhat, v)
        return (m, v, vhat), eta * m / (xp.sqrt(vhat) + eps)


@dataclass(frozen=True)
class NAdam(Rule):
    """Nesterov Adam (Optimisers.jl's form, not torch's, which has a momentum schedule):
    ``delta = (b1*m/(1-b1*b1^t) + (1-b1)*g/(1-b1^t)) / (sqrt(v*b2/(1-b2^t)) + eps) * eta``.

    ``NAdam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-8)``.
    """

    _scalar_state_independent = True  # beta^t <- beta^t * beta

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-8

    def init(self, x):
        return (zeros(x), zeros(x), _betas(self, x))

    def apply(self, state, x, g):
        T, xp, eta, b1, b2, eps = _hyper(self, x)
        m, v, bt = state
        m, v = _moments(m, v, g, b1, b2, T)
        num = b1 * m / (1 - b1 * bt[0]) + T(1 - b1) * g / (1 - bt[0])
        delta = num / (xp.sqrt(v * b2 / (1 - bt[1])) + eps) * eta
        return (m, v, _advance(bt, b1, b2)), delta


@dataclass(frozen=True)
class AdamW(Rule):
    """AdamW as in Optimisers.jl 0.4: with ``a = m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)``,
    ``delta = eta*(a + lambda_*x)`` when ``couple`` (the default; = ``torch.optim.AdamW``),
    else ``delta = eta*a + lambda_*x``.

    ``AdamW(eta=0.001, beta=(0.9, 0.999), lambda_=0.0, epsilon=1e-8, *, couple=True)``.
    Flux's keyword ``lambda`` is ``lambda_`` here. Note the default decay is 0 (torch's is
    0.01), and epsilon is not clamped for 16-bit floats (as in Flux). Old Flux's
    ``ADAMW(eta, beta, decay)`` meant ``OptimiserChain(Adam(eta, beta), WeightDecay(decay))``,
    which is a different rule.
    """

    _scalar_state_independent = True  # beta^t <- beta^t * beta

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    lambda_: float = 0.0
    epsilon: float = 1e-8
    couple: bool = field(default=True, kw_only=True)

    def init(self, x):
        return (zeros(x), zeros(x), _betas(self, x))

    def apply(self, state, x, g):
        T = caster(x)
        xp = namespace(x)
        eta, b1, b2 = T(self.eta), T(self.beta[0]), T(self.beta[1])
        eps, lam = T(self.epsilon), T(self.lambda_)
        m, v, bt = state
        m, v = _moments(m, v, g, b1, b2, T)
        a = m / (1 - bt[0]) / (xp.sqrt(v / (1 - bt[1])) + eps)
        delta = eta * (a + lam * x) if self.couple else eta * a + lam * x
        return (m, v, _advance(bt, b1, b2)), delta


@dataclass(frozen=True)
class AdaBelief(Rule):
    """AdaBelief: ``m <- b1*m + (1-b1)*g``; ``s <- b2*s + (1-b2)*(g-m)^2 + eps`` (new m);
    ``delta = eta*m/(1-b1^t) / (sqrt(s/(1-b2^t)) + eps)``.

    ``AdaBelief(eta=0.001, beta=(0.9, 0.999), epsilon=1e-16)``. Equals ``optax.adabelief``
    with ``eps=epsilon, eps_root=epsilon``.
    """

    _scalar_state_independent = True  # beta^t <- beta^t * beta

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-16

    def init(self, x):
        return (zeros(x), zeros(x), _betas(self, x))

    def apply(self, state, x, g):
        T, xp, eta, b1, b2, eps = _hyper(self, x)
        m, s, bt = state
        m = b1 * m + T(1 - b1) * g
        d = g - m
        s = b2 * s + T(1 - b2) * (d * d) + eps
        delta = eta * m / (1 - bt[0]) / (xp.sqrt(s / (1 - bt[1])) + eps)
        return (m, s, _advance(bt, b1, b2)), delta
