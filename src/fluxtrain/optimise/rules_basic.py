"""Gradient descent, momentum, RMSProp, AdaGrad/AdaDelta, Rprop, Lion, and the gradient
transforms (weight/sign decay, clipping). One array at a time; no tree code.

Each ``apply`` mirrors the Optimisers.jl 0.4 expression operation by operation (same
order, hyper-parameters rounded to the parameter dtype first), so float64 and float32
results match Flux bit for bit where the backend's elementwise ops are correctly rounded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math


import numpy as np

from .._backend import namespace, is_eager, to_numpy
from .._errors import DomainError
from .base import Rule, caster, eps_cast, full, scalar, zeros

__all__ = [
    "Descent", "Momentum", "Nesterov", "RMSProp", "AdaGrad", "AdaDelta", "Rprop", "Lion",
    "WeightDecay", "SignDecay", "ClipGrad", "ClipNorm",
]

_F32_0_1 = float(np.float32(0.1))  # Julia's 0.1f0


@dataclass(frozen=True)
class Descent(Rule):
    """Plain gradient descent: ``delta = eta * g``.

    ``Descent(eta=0.1f0)``. The default is Julia's Float32 ``0.1f0``, which for float64
    parameters is ``0.10000000149011612`` (as in Flux). Unlike Flux, a negative ``eta``
    raises ``DomainError`` here (Flux's ``Descent`` accepts it).

    Example:
        >>> import numpy as np, fluxtrain as ft
        >>> s = ft.setup(ft.Descent(0.5), x := np.array([1.0]))
        >>> ft.update_(s, x, np.array([2.0]))[1]
        array([0.])
    """

    _scalar_state_independent = True  # no state

    eta: float = _F32_0_1

    def apply(self, state, x, g):
        return state, g * caster(x)(self.eta)


@dataclass(frozen=True)
class Momentum(Rule):
    """Gradient descent with momentum: ``v <- rho*v + eta*g``; ``delta = v``.

    ``Momentum(eta=0.01, rho=0.9)``. Equals ``torch.optim.SGD(lr=eta, momentum=rho)``
    (dampening 0) at constant learning rate, and ``optax.sgd(eta, momentum=rho)`` up to the
    placement of ``eta``.
    """

    _scalar_state_independent = True  # no 0-d state (arrays shaped like x)

    eta: float = 0.01
    rho: float = 0.9

    def init(self, x):
        return zeros(x)

    def apply(self, v, x, g):
        T = caster(x)
        v = T(self.rho) * v + T(self.eta) * g
        return v, v


@dataclass(frozen=True)
class Nesterov(Rule):
    """Nesterov momentum: ``delta = -rho^2*v + (1+rho)*eta*g``, then ``v <- rho*v - eta*g``.

    ``Nesterov(eta=0.001, rho=0.9)``. Equals ``torch.optim.SGD(nesterov=True)`` at constant lr.
    """

    _scalar_state_independent = True  # no 0-d state (arrays shaped like x)

    eta: float = 0.001
    rho: float = 0.9

    def init(self, x):
        return zeros(x)

    def apply(self, v, x, g):
        T = caster(x)
        eta, rho = T(self.eta), T(self.rho)
        delta = -T(rho * rho) * v + T(T(1 + rho) * eta) * g
        v = rho * v - eta * g
        return v, delta


@dataclass(frozen=True)
class RMSProp(Rule):
    """RMSProp: ``s <- rho*s + (1-rho)*g^2``; ``delta = eta*g / (sqrt(s - m^2) + eps)``, where
    ``m <- rho*m + (1-rho)*g`` only when ``centred`` (else ``m = 0``).

    ``RMSProp(eta=0.001, rho=0.9, epsilon=1e-8, *, centred=False)`` (``centered`` is accepted
    as a keyword too). Equals ``torch.optim.RMSprop(lr=eta, alpha=rho, eps=epsilon,
    centered=...)``; note torch's default alpha is 0.99. Changing ``centred`` with ``adjust``
    is refused (the variants keep different state).
    """

    _scalar_state_independent = True  # no 0-d state (arrays shaped like x)

    eta: float = 0.001
    rho: float = 0.9
    epsilon: float = 1e-8
    centred: bool = field(default=False, kw_only=True)
    centered: bool = field(default=False, kw_only=True, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if self.centered and not self.centred:
            object.__setattr__(self, "centred", True)
        object.__setattr__(self, "centered", self.centred)

    def init(self, x):
        return (zeros(x), zeros(x) if self.centred else None)

    def apply(self, state, x, g):
        T = caster(x)
        eta, rho, eps = T(self.eta), T(self.rho), eps_cast(T, self.epsilon)
        xp = namespace(x)
        quad, lin = state
        quad = rho * quad + T(1 - rho) * (g * g)
        if self.centred:
            lin = rho * lin + T(1 - rho) * g
            den = xp.sqrt(quad - lin * lin) + eps
        else:
            den = xp.sqrt(quad) + eps
        return (quad, lin), (g * eta) / den

    def adjust(self, eta=None, **hyper):
        if "centred" in hyper or "centered" in hyper:
            from .._errors import ArgumentError
            raise ArgumentError("adjust(RMSProp; centred) is not allowed, as the variants store different states")
        return super().adjust(eta, **hyper)


@dataclass(frozen=True)
class AdaGrad(Rule):
    """AdaGrad: ``acc <- acc + g^2``; ``delta = eta*g / (sqrt(acc) + eps)``.

    ``AdaGrad(eta=0.1, epsilon=1e-8)``. As in Optimisers.jl the accumulator starts at
    ``epsilon`` (not 0); this equals ``torch.optim.Adagrad(lr=eta,
    initial_accumulator_value=epsilon, eps=epsilon)``.
    """

    _scalar_state_independent = True  # no 0-d state (arrays shaped like x)

    eta: float = 0.1
    epsilon: float = 1e-8

    def init(self, x):
        return full(x, caster(x)(self.epsilon))

    def apply(self, acc, x, g):
        T = caster(x)
        acc = acc + g * g
        return acc, (g * T(self.eta)) / (namespace(x).sqrt(acc) + eps_cast(T, self.epsilon))


@dataclass(frozen=True)
class AdaDelta(Rule):
    """AdaDelta (no learning rate): ``acc <- rho*acc + (1-rho)*g^2``;
    ``delta = g*sqrt(dacc + eps)/sqrt(acc + eps)`` (old ``dacc``);
    ``dacc <- rho*dacc + (1-rho)*delta^2``.

    ``AdaDelta(rho=0.9, epsilon=1e-8)``; equals ``torch.optim.Adadelta(lr=1, rho, eps)``.
    """

    _scalar_state_independent = True  # no 0-d state (arrays shaped like x)

    rho: float = 0.9
    epsilon: float = 1e-8

    def init(self, x):
        return (zeros(x), zeros(x))

    def apply(self, state, x, g):
        T = caster(x)
        xp = namespace(x)
        rho, eps = T(self.rho), eps_cast(T, self.epsilon)
        acc, dacc = state
        acc = rho * acc + T(1 - rho) * (g * g)
        delta = (g * xp.sqrt(dacc + eps)) / xp.sqrt(acc + eps)
        dacc = rho * dacc + T(1 - rho) * (delta * delta)
        return (acc, dacc), delta


_RPROP_ELL = (float(np.float32(0.5)), float(np.float32(1.2)))
_RPROP_GAMMA = (float(np.float32(1e-6)), float(np.float32(50.0)))


@dataclass(frozen=True)
class Rprop(Rule):
    """Rprop: each element keeps its own step ``eta_i``; if ``g*g_prev > 0`` it grows to
    ``min(eta_i*ell[1], gamma[1])``, if ``< 0`` it shrinks to ``max(eta_i*ell[0], gamma[0])``
    and the stored gradient is zeroed; ``delta = eta_i * sign(stored g)``.

    ``Rprop(eta=1f-3, ell=(0.5f0, 1.2f0), gamma=(1f-6, 50f0))`` (Float32 defaults as in Flux).
    """

    _scalar_state_independent = True  # no 0-d state (arrays shaped like x)

    eta: float = float(np.float32(1e-3))
    ell: tuple = _RPROP_ELL
    gamma: tuple = _RPROP_GAMMA

    def init(self, x):
        return (zeros(x), full(x, caster(x)(self.eta)))

    def apply(self, state, x, g):
        T = caster(x)
        xp = namespace(x)
        l1, l2 = T(self.ell[0]), T(self.ell[1])
        G1, G2 = T(self.gamma[0]), T(self.gamma[1])
        gp, eta = state
        prod = gp * g
        eta = xp.where(prod > 0, xp.clip(eta * l2, max=G2),
                       xp.where(prod < 0, xp.clip(eta * l1, min=G1), eta))
        gp = xp.where(prod < 0, xp.zeros_like(g), g)
        return (gp, eta), eta * xp.sign(gp)


@dataclass(frozen=True)
class Lion(Rule):
    """Lion, exactly as Optimisers.jl 0.4 codes it: ``s <- beta[1]*g + (1-beta[1])*s`` first,
    then ``delta = eta * sign((beta[1]-beta[0])*g + beta[0]*s)`` with the new ``s``.

    ``Lion(eta=0.001, beta=(0.9, 0.999))``. In the paper's/optax's notation
    (``c = b1*m + (1-b1)*g``, ``m <- b2*m + (1-b2)*g``) this is ``b2 = 1 - beta[1]`` and
    ``b1 = beta[0]*(1-beta[1])/beta[1]``; so ``Lion(eta, (0.9, 0.999))`` is *not*
    ``optax.lion(eta, 0.9, 0.99)``. Optimisers.jl's code is followed for Flux parity.
    """

    _scalar_state_independent = True  # no 0-d state (arrays shaped like x)

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)

    def init(self, x):
        return zeros(x)

    def apply(self, s, x, g):
        T = caster(x)
        b1, b2 = T(self.beta[0]), T(self.beta[1])
        s = b2 * g + T(1 - b2) * s
        return s, T(self.eta) * namespace(x).sign(T(b2 - b1) * g + b1 * s)


@dataclass(frozen=True)
class WeightDecay(Rule):
    """L2 regularisation: ``delta = g + lambda_*x`` (``lambda`` in Flux; ``lambda`` is a
    Python keyword, so the field is ``lambda_``; ``adjust(..., **{"lambda": v})`` works).

    ``WeightDecay(lambda_=5e-4)`` (old Flux's default was 0). ``OptimiserChain(WeightDecay(l),
    rule)`` equals adding ``l/2 * sum(x**2)`` to the loss.
    """

    _scalar_state_independent = True  # no state

    lambda_: float = 5e-4

    def apply(self, state, x, g):
        return state, g + caster(x)(self.lambda_) * x


@dataclass(frozen=True)
class SignDecay(Rule):
    """L1 regularisation: ``delta = g + lambda_*sign(x)``. ``SignDecay(lambda_=1e-3)``."""

    _scalar_state_independent = True  # no state

    lambda_: float = 1e-3

    def apply(self, state, x, g):
        return state, g + caster(x)(self.lambda_) * namespace(x).sign(x)


@dataclass(frozen=True)
class ClipGrad(Rule):
    """Clamp every gradient entry to ``[-delta, delta]``. ``ClipGrad(delta=10.0)``."""

    _scalar_state_independent = True  # no state

    delta: float = 10.0

    def apply(self, state, x, g):
        d = caster(x)(self.delta)
        return state, namespace(x).clip(g, -d, d)


@dataclass(frozen=True)
class ClipNorm(Rule):
    """Rescale the gradient of *each array* so its ``p``-norm is at most ``omega``:
    ``delta = g * min(omega/norm(g, p), 1)``.

    ``ClipNorm(omega=10.0, p=2.0, *, throw=True)``. ``p`` may be any real, ``inf``, ``-inf``
    or 0 (count of non-zeros). With ``throw=True`` a non-finite norm raises ``DomainError``
    on eager backends (NumPy, torch, JAX outside jit); under ``jax.jit`` the value cannot be
    inspected, so no error is raised and the update becomes NaN (use ``throw=False`` there
    to say so explicitly). Unlike torch's ``clip_grad_norm_`` the norm is per array, not over
    the whole model. The norm is ``sqrt(sum(g*g))`` (Flux uses BLAS ``nrm2`` for plain
    arrays, which can differ in the last bit), and ``omega / norm`` is computed in the
    parameter dtype (Flux divides in float64 then rounds), so float32 results can differ from
    Flux by an ulp when clipping is active.
    """

    _scalar_state_independent = True  # no state

    _static_fields = ("p",)  # selects the norm's code

    omega: float = 10.0
    p: float = 2.0
    throw: bool = field(default=True, kw_only=True)

    def norm(self, g):
        """The ``p``-norm of ``g`` exactly as ``apply`` computes it (a 0-d array)."""
        xp = namespace(g)
        p = float(self.p)
        a = xp.abs(g)
        if p == 2:
            nrm = xp.sqrt(xp.sum(g * g))
        elif p == 1:
            nrm = xp.sum(a)
        elif p == float("inf"):
            nrm = xp.max(a) if math.prod(a.shape) else scalar(g, 0.0)
        elif p == float("-inf"):
            nrm = xp.min(a) if math.prod(a.shape) else scalar(g, float("inf"))
        elif p == 0:  # number of non-zero entries, as a float
            nrm = xp.sum(xp.astype(g != 0, g.dtype))
        else:
            q = caster(g)(p)
            nrm = xp.sum(a ** q) ** (1 / q)
        return nrm

    def scale(self, x, g, nrm=None):
        """The factor ``min(omega/norm(g), 1)`` in ``x``'s dtype (0-d), raising the
        ``DomainError`` of ``throw`` on a non-finite norm (eagerly). ``nrm``: ``norm(g)``
        already computed (a fast path's, equal bit for bit), or a 1-d array of several
        arrays' norms (their factors, elementwise; the caller raises for a non-finite one)."""
        xp = namespace(x)
        if nrm is None:
            nrm = self.norm(g)
        if self.throw and is_eager(nrm) and getattr(nrm, "ndim", 0) == 0 and not bool(xp.isfinite(nrm)):
            raise DomainError(f"gradient has {float(self.p)}-norm {float(to_numpy(nrm))}, for array of shape "
                              f"{tuple(x.shape)} and dtype {x.dtype}")
        lam = xp.minimum(caster(x)(self.omega) / nrm, scalar(nrm, 1.0))
        return xp.astype(lam, x.dtype)

    def apply(self, state, x, g):
        return state, g * self.scale(x, g)

