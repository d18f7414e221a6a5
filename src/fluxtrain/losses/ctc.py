"""Connectionist temporal classification loss (NNlib's ``ctc_loss``, re-exported by Flux).

One generic implementation against the array API: the Graves forward recursion in log
space, batched over samples, differentiated by the backend's own autodiff (torch autograd,
``jax.grad``). Its gradient with respect to the raw scores is Flux's hand-written one,
``softmax(ŷ) - posterior``, because both are the exact derivative of the same function.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .._backend import fast
from .._backend import device_of, float_dtype, is_array, is_eager, namespace, to_numpy
from .._backend.math import as_result, logsoftmax, stop_gradient
from .utils import aggregate, check_agg

__all__ = ["ctc_loss"]

_NEG_INF = -math.inf


def _log_sum_exp(x: Any, xp) -> Any:
    """log(Σ exp(x)) over the last axis; exactly -inf (gradient 0) when all terms are -inf.

    Written here rather than with the shared logsumexp because impossible or padded CTC
    states are all -inf: the double ``where`` keeps their gradient 0 instead of NaN.
    """
    m = stop_gradient(xp.max(x, axis=-1))  # the shift cancels exactly; keep it out of AD
    m = xp.where(xp.isfinite(m), m, 0.0)
    s = xp.sum(xp.exp(x - m[..., None]), axis=-1)
    dead = s == 0  # NaN stays NaN: only a true zero is the empty sum
    return xp.where(dead, _NEG_INF, m + xp.log(xp.where(dead, 1.0, s)))


def _shift(a: Any, k: int, fill: float | int, xp) -> Any:
    """``a`` moved k places right along the last axis, ``fill`` entering (state u-k → u)."""
    pad = xp.full(a.shape[:-1] + (k,), fill, dtype=a.dtype, device=device_of(a))
    return xp.concat([pad, a], axis=-1)[..., : a.shape[-1]]


def _step(alpha: Any, e_t: Any, skip: Any, xp) -> Any:
    """One time step of the recursion: α(u) ← logaddexp(α(u), α(u-1), α(u-2) if skip) + e_t."""
    prev = xp.stack([alpha, _shift(alpha, 1, _NEG_INF, xp),
                     xp.where(skip, _shift(alpha, 2, _NEG_INF, xp), _NEG_INF)], axis=-1)
    return _log_sum_exp(prev, xp) + e_t


def _forward(e: Any, skip: Any, xp) -> Any:
    """α at the last time step. ``e``: (N, T, S) emission log-probs of the extended
    labels; ``skip``: (N, S) bool, True where the u-2 → u transition is allowed."""
    S = e.shape[-1]
    u = xp.arange(S, device=device_of(e))
    alpha = xp.where(u < 2, e[:, 0, :], _NEG_INF)  # start on the first blank or first label
    loop = fast.lookup("ctc_loss.time_loop", xp)
    if loop is not None and e.shape[1] > 1:
        return loop(lambda a, e_t: _step(a, e_t, skip, xp), alpha, xp.permute_dims(e[:, 1:, :], (1, 0, 2)))
    for t in range(1, e.shape[1]):
        alpha = _step(alpha, e[:, t, :], skip, xp)
    return alpha


@fast.register("ctc_loss.time_loop", "jax")
def _time_loop_jax(step, alpha, es):
    """``lax.scan`` instead of a Python loop: one traced step, so jit compiles in constant
    time and eager JAX avoids per-op dispatch for every time step."""
    import jax
    return jax.lax.scan(lambda a, e_t: (step(a, e_t), None), alpha, es)[0]


def _labels_numpy(y: Any, n_classes: int, name: str) -> np.ndarray:
    """Validate one label sequence (0-based, blank excluded) and return it as int64."""
    if isinstance(y, str) or not (is_array(y) or isinstance(y, (list, tuple, range, np.ndarray))):
        raise ValueError(f"ctc_loss: {name} must be a sequence of integer labels, "
                         f"got {type(y).__name__}")
    a = to_numpy(y) if is_array(y) else np.asarray(list(y) if isinstance(y, range) else y)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1:
        raise ValueError(f"ctc_loss: {name} must be 1-D (one label per output symbol), "
                         f"got shape {tuple(a.shape)}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"ctc_loss: {name} must hold integer labels, got dtype {a.dtype} "
                         f"({a.tolist()[:5]}...)")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > n_classes - 2:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"ctc_loss: {name} holds label {bad}, outside 0..{n_classes - 2}; with "
            f"{n_classes} classes the blank is the last class, {n_classes - 1}, and is not a label")
    return a.astype(np.int64)


def _labels(y: Any, batch: int | None, n_classes: int, xp, device) -> tuple[Any, Any]:
    """Labels as an (N, Lmax) int array on the device, padded with the blank, and the
    (N,) label lengths. Concrete labels are validated; traced (jit) labels are taken as is."""
    blank = n_classes - 1
    if is_array(y) and not is_eager(y):
        # Traced labels (jax.jit): an (L,) or (N, L) integer array, no value checks possible.
        lab = y if batch is not None else y[None, :]
        if batch is not None and lab.ndim != 2:
            raise ValueError("ctc_loss: traced labels for a batch must be an (N, L) array")
        if not xp.isdtype(lab.dtype, "integral"):
            raise ValueError(f"ctc_loss: y must hold integer labels, got dtype {lab.dtype}")
        # The labels' own integer dtype: int64 may not exist (JAX without x64).
        lens = xp.full((lab.shape[0],), lab.shape[1], dtype=lab.dtype, device=device)
        return lab, lens
    if batch is None:
        seqs = [_labels_numpy(y, n_classes, "y")]
    else:
        if is_array(y) and len(y.shape) == 2:
            rows = [y[i] for i in range(y.shape[0])]
        elif is_array(y) or isinstance(y, (str, np.ndarray)) or not hasattr(y, "__len__"):
            raise ValueError("ctc_loss: for a batched ŷ of shape (N, T, C), y must be a list "
                             "of N label sequences or an (N, L) integer array")
        else:
            rows = list(y)
        if len(rows) != batch:
            raise ValueError(f"ctc_loss: ŷ holds {batch} samples but y holds {len(rows)} "
                             "label sequences")
        seqs = [_labels_numpy(r, n_classes, f"y[{i}]") for i, r in enumerate(rows)]
    width = max((len(s) for s in seqs), default=0)
    lab = np.full((len(seqs), width), blank, dtype=np.int64)
    for i, s in enumerate(seqs):
        lab[i, : len(s)] = s
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    return xp.asarray(lab, device=device), xp.asarray(lens, device=device)


def _per_sample(x: Any, lab: Any, lens: Any) -> Any:
    """The (N,) losses of scores ``x`` (N, T, C) for blank-padded labels ``lab`` (N, L)
    with lengths ``lens`` (N,). Pure array code: the JAX fast path jits exactly this."""
    xp = namespace(x)
    dev = device_of(x)
    T, C = x.shape[1], x.shape[2]
    N, L = lab.shape[0], lab.shape[1]
    S = 2 * L + 1
    # Extended labels ℓ′ (N, S): blanks at even positions, labels at odd ones.
    blanks = xp.full((N, L), C - 1, dtype=lab.dtype, device=dev)
    ext = xp.reshape(xp.stack([blanks, lab], axis=-1), (N, 2 * L))
    ext = xp.concat([ext, xp.full((N, 1), C - 1, dtype=lab.dtype, device=dev)], axis=-1)
    same2 = ext == _shift(ext, 2, -1, xp)
    u = xp.arange(S, device=dev)
    skip = (ext != C - 1) & ~same2 & (u >= 2)

    lsm = logsoftmax(x, axis=-1)  # (N, T, C)
    # Gather lsm[n, t, ext[n, u]] through a flat index (take is 1-D in the array API).
    flat = xp.reshape(lsm, (N * T * C,))
    base = xp.reshape(xp.arange(N * T, device=dev) * C, (N, T, 1))
    idx = base + xp.reshape(ext, (N, 1, S))
    e = xp.reshape(xp.take(flat, xp.reshape(idx, (N * T * S,))), (N, T, S))

    alpha = _forward(e, skip, xp)
    end = 2 * lens[:, None]  # position of the final blank per sample
    last = (u == end) | ((u == end - 1) & (lens[:, None] > 0))
    return -_log_sum_exp(xp.where(last, alpha, _NEG_INF), xp)


_JAX_PER_SAMPLE = None


@fast.register("ctc_loss.per_sample", "jax")
def _per_sample_jax(x, lab, lens):
    """:func:`_per_sample` under ``jax.jit`` (compiled once per shape): eager JAX would
    otherwise dispatch every small op of every time step separately."""
    global _JAX_PER_SAMPLE
    if _JAX_PER_SAMPLE is None:
        import jax
        _JAX_PER_SAMPLE = jax.jit(_per_sample)
    return _JAX_PER_SAMPLE(x, lab, lens)


@fast.register("ctc_loss.per_sample", "torch")
def _per_sample_torch(x, lab, lens):
    """PyTorch's native ``ctc_loss`` on ``log_softmax(x)`` (about 10x faster than the
    Python time loop on CPU). Its gradient composed with log_softmax is the same
    softmax - posterior; only first derivatives are available through it.

    Differences made equal to the generic path: torch gives a NaN gradient for a sample
    with no alignment, so ``zero_infinity=True`` is used and the inf is put back here.
    Declines (returns None) when there are no labels at all (a width-0 target tensor)."""
    import torch
    import torch.nn.functional as F
    N, T, C = x.shape
    L = lab.shape[1]
    if L == 0:
        return None
    lp = logsoftmax(x, axis=-1).transpose(0, 1)  # (T, N, C); NNlib's rule for +inf scores
    loss = F.ctc_loss(lp, lab, torch.full((N,), T, dtype=torch.long, device=x.device), lens,
                      blank=C - 1, reduction="none", zero_infinity=True)
    # Shortest alignment: one frame per label plus a blank between equal neighbours.
    pos = torch.arange(1, L, device=x.device)
    repeats = ((lab[:, 1:] == lab[:, :-1]) & (pos < lens[:, None])).sum(dim=1)
    return torch.where(lens + repeats <= T, loss, torch.full_like(loss, math.inf))


def ctc_loss(yhat: Any, y: Any, /, *, agg: str | Callable[[Any], Any] = "mean") -> Any:
    """Connectionist temporal classification loss, Flux's (NNlib's) ``ctc_loss(ŷ, y)``.

    ``yhat`` is a (T, C) array of **raw scores** (time × classes; Flux's C×T column-major
    matrix is the same memory); ``logsoftmax`` over the classes is applied inside, so do not
    pass softmax output. ``y`` is the target label sequence, **0-based** labels in
    ``0..C-2``: the **blank is the last class**, ``C-1`` (Flux's 1-based labels ``1..C-1``
    minus one). The loss is the negative log of the summed probability of every alignment,
    by the Graves forward recursion in log space::

        ℓ′ = [b, y1, b, y2, ..., b]        (S = 2·len(y) + 1 states, b = C-1)
        α₀(u) = logp₀(ℓ′_u) for u < 2, else -inf
        αₜ(u) = logaddexp(αₜ₋₁(u), αₜ₋₁(u-1), [αₜ₋₁(u-2) if ℓ′_u ≠ b and ℓ′_u ≠ ℓ′_{u-2}])
                + logpₜ(ℓ′_u)
        loss  = -logaddexp(α_T(S-1), α_T(S-2))

    The gradient with respect to ``yhat`` (torch autograd or ``jax.grad``) equals Flux's:
    ``softmax(yhat) - posterior``. Float32 in gives float32 out; integer scores compute in
    float64. The result is a 0-d array of ``yhat``'s backend. Flux has no ``agg`` here.

    Extensions beyond Flux:

    * **Empty** ``y`` is allowed (the all-blank path: ``-Σₜ logpₜ(b)``); NNlib throws a
      BoundsError.
    * **Batched** form: ``yhat`` of shape (N, T, C) with ``y`` a list of N label sequences
      (lengths may differ) or an (N, L) integer array. Per-sample losses go to ``agg``:
      ``"mean"`` (default, over samples), ``"sum"``, ``"none"`` (the (N,) vector) or a
      callable. ``agg`` is ignored for 2-D ``yhat``. All samples share T.

    Label sequences too long for T (``T < len(y) + number of repeated neighbours``) have
    no alignment: the loss is ``inf``, as in NNlib and ``torch.nn.functional.ctc_loss``;
    its gradient here is 0 (NNlib's is NaN). Non-finite scores give a NaN/inf loss.

    Labels are validated when they are concrete (lists, NumPy, eager arrays): non-integer
    labels, labels outside ``0..C-2`` (the blank included) and a ``yhat`` that is not
    2-D/3-D raise ``ValueError`` naming the argument. A label array traced by ``jax.jit``
    cannot be checked; pass labels as a Python list (static) there to keep the checks.

    Example::

        >>> import numpy as np
        >>> yhat = np.array([[1., 2, 3], [2, 1, 3], [3, 1, 2]])   # T=3, C=3: blank is 2
        >>> round(float(ctc_loss(yhat, [0, 1])), 10)
        3.6990738275
    """
    if not is_array(yhat):
        if isinstance(yhat, (list, tuple)):
            yhat = np.asarray(yhat)
        else:
            raise ValueError(f"ctc_loss: ŷ must be a (T, C) array of scores, got {type(yhat).__name__}")
    xp = namespace(yhat)
    ndim = len(yhat.shape)
    if ndim not in (2, 3):
        raise ValueError(f"ctc_loss: ŷ must be a 2-D (time, classes) array (or 3-D "
                         f"(batch, time, classes)), got shape {tuple(yhat.shape)}")
    T, C = yhat.shape[-2], yhat.shape[-1]
    if T == 0 or C == 0:
        raise ValueError(f"ctc_loss: ŷ needs at least one time step and one class, got shape "
                         f"{tuple(yhat.shape)}")
    batch = yhat.shape[0] if ndim == 3 else None
    check_agg(agg)
    dev = device_of(yhat)
    x = yhat if ndim == 3 else yhat[None, ...]
    dt = float_dtype(x, xp)
    if x.dtype != dt:
        x = xp.astype(x, dt)

    lab, lens = _labels(y, batch, C, xp, dev)  # (N, L) padded with the blank, (N,)
    kernel = fast.lookup("ctc_loss.per_sample", xp)
    loss = kernel(x, lab, lens) if kernel is not None else None
    if loss is None:  # no kernel, or it declined these inputs
        loss = _per_sample(x, lab, lens)  # (N,)
    if batch is None:
        return as_result(loss[0])
    return aggregate(loss, agg, xp)
