"""``train`` and ``trainstep``: Flux's ``train!`` and ``trainstep!``.

One step is ``withgradient`` of ``loss(model, *batch)`` with respect to the model, then
``update_`` of the model and optimiser state; ``train`` runs one step per item of ``data``
(one epoch). The same thing by hand, which is just as supported::

    for x, y in loader:
        val, (g,) = withgradient(lambda m: loss(m, x, y), model)
        state, model = update_(state, model, g)
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable

from .._backend import fast, is_writeable
from .._errors import ArgumentError, DomainError
from .gradient import (_check_jax_scalar, _detached, _first, _is_jax_array, _is_torch_module, _torch_value_grads_recorded,
                       tree_leaves_with_path, withgradient)

__all__ = ["train", "trainstep"]


def _batch_args(batch: Any) -> tuple:
    """Flux: a Tuple batch is splatted, anything else is passed as one argument.
    (A NamedTuple is not a Julia Tuple, so it is passed whole, as are dicts.)"""
    if isinstance(batch, tuple) and not hasattr(batch, "_fields"):
        return batch
    return (batch,)


def _loss_value(val: Any) -> float:
    """The scalar loss as a Python float (the first element when ``loss`` returns aux)."""
    y = _first(val)
    try:
        return float(y.item()) if hasattr(y, "item") else float(y)
    except (TypeError, ValueError):
        raise ArgumentError(f"the loss must return a real scalar (or a tuple whose first element is one), "
                            f"got {type(y).__name__}") from None


def _step(loss: Callable, model: Any, batch: Any, state: Any,
          jitted: "_JaxStep | None" = None) -> tuple[Any, float, Any, Any]:
    """One gradient + update; ``(val, loss_value, state, model)``; no update when not finite."""
    from ..optimise import update_
    args = _batch_args(batch)
    if jitted is None and _is_torch_module(model):
        done = _torch_module_step(loss, model, args, state)
        if done is not None:
            return done
    res = jitted(model, args) if jitted is not None else None
    if res is not None:
        val, g = res
    else:
        val, (g,) = withgradient(lambda m: loss(m, *args), model)
        if jitted is not None:
            jitted.observe(val)
    lval = _loss_value(val)
    if math.isfinite(lval):
        state, model = update_(state, model, g)
    return val, lval, state, model


def _torch_module_step(loss: Callable, model: Any, args: tuple, state: Any):
    """``_step`` for a ``torch.nn.Module`` through the torch backend's plan of the module
    (:mod:`fluxtrain._backend.fast_torch_tree`): the parameters to differentiate, their
    gradients and the update in plan order, without building the gradient tree that
    ``withgradient`` returns and ``update_`` walks again. The same values as
    ``withgradient`` + ``update_`` (tests compare them); None when the module or state has
    no plan, or repeats a parameter (the generic step then runs)."""
    flat = fast.lookup_backend("module_state", "torch")
    upd = fast.lookup_backend("update_flat", "torch")
    got = None if flat is None or upd is None else flat(model, state)
    if got is None:
        return None
    xs, ls = got
    n = len(xs)
    if len(set(map(id, xs))) != n:
        return None  # a tied parameter: withgradient decides where its gradient goes
    diff = [i for i, x in enumerate(xs) if x.requires_grad and x.is_floating_point()]
    out, grads = _torch_value_grads_recorded(lambda m: loss(m, *args), [model], [xs[i] for i in diff])
    val = _detached(out)
    lval = _loss_value(val)
    if math.isfinite(lval):
        gs: list = [None] * n
        for i, g in zip(diff, grads):
            gs[i] = g
        if not upd(xs, ls, gs):  # the walker, with the gradient tree withgradient gives
            from ..optimise import update_
            from ..optimise.tree import module_tree
            by_id = {id(x): g for x, g in zip(xs, gs)}
            state, model = update_(state, model, module_tree(model, lambda p: by_id.get(id(p))))
    return val, lval, state, model


# --------------------------------------------------------------------------------------
# JAX: the gradient step compiled with jax.jit
# --------------------------------------------------------------------------------------

_JIT_CACHE: dict = {}   # (id(loss), treedef, kinds, id(statics)...) -> (loss, statics, jitted fn)
_JIT_CACHE_MAX = 64
_STATIC_TYPES = (int, bool, str, bytes, type(None))
_FLOATING: dict = {}  # dtype -> is it a floating dtype (differentiated)?


def _trace_errors() -> tuple:
    """JAX's errors for Python code that needs concrete values (``float(x)``, ``if x > 0``,
    ``np.asarray(x)``) or returns non-array values: the loss cannot be traced."""
    import jax
    e = jax.errors
    return tuple(getattr(e, n) for n in ("ConcretizationTypeError", "TracerArrayConversionError",
                                          "TracerIntegerConversionError", "TracerBoolConversionError")
                 if hasattr(e, n))


class _JaxStep:
    """``value_and_grad`` of ``loss(model, *batch)`` w.r.t. the model's floating JAX arrays,
    compiled once per (loss, model structure) and by ``jax.jit`` per batch shapes/dtypes.

    Calling it returns ``(val, grad_tree)`` like ``withgradient``, or ``None`` when this
    model / batch cannot go through the compiled path (then the eager path is used). The
    first step of a new (loss, structure) runs eagerly and ``observe`` checks that the loss
    returns only JAX arrays (a string in the aux output cannot come out of ``jax.jit``).
    After a loss that cannot be traced it warns once and returns ``None`` from then on."""

    def __init__(self, loss: Callable):
        self.loss = loss
        self.disabled = False
        self._pending: list | None = None

    def _plan(self, model: Any):
        """``(entry, treedef, kinds, leaves)`` for this model, or ``None`` when it cannot be
        compiled: every leaf must be a JAX array or a plain constant (a Python float would be
        differentiated by the eager path, a NumPy array or a container jax does not know
        would be baked in as a constant)."""
        import jax
        import jax.numpy as jnp
        leaves, treedef = jax.tree_util.tree_flatten(model)
        kinds, statics = [], []
        for x in leaves:
            if _is_jax_array(x):
                f = _FLOATING.get(x.dtype)
                if f is None:  # (jnp.issubdtype costs microseconds, per leaf and step)
                    f = _FLOATING[x.dtype] = bool(jnp.issubdtype(x.dtype, jnp.floating))
                kinds.append("d" if f else "c")
            elif (isinstance(x, _STATIC_TYPES) or callable(x)) and not hasattr(x, "shape"):
                kinds.append("s")
                statics.append(x)
            else:
                return None
        if not any(k == "d" for k in kinds):
            return None
        kinds = tuple(kinds)
        key = (id(self.loss), treedef, kinds) + tuple(id(x) for x in statics)
        hit = _JIT_CACHE.get(key)
        if hit is not None and hit[0] is self.loss and all(a is b for a, b in zip(hit[1], statics)):
            return hit, treedef, kinds, leaves
        loss, statics_t = self.loss, tuple(statics)

        def step(diff, consts, args):
            def f(d):
                it, it_c, it_s = iter(d), iter(consts), iter(statics_t)
                full = [next(it) if k == "d" else next(it_c) if k == "c" else next(it_s) for k in kinds]
                out = loss(jax.tree_util.tree_unflatten(treedef, full), *args)
                return _check_jax_scalar(_first(out)), out
            (_, out), g = jax.value_and_grad(f, has_aux=True)(list(diff))
            return out, g

        fn = jax.jit(step)
        if len(_JIT_CACHE) >= _JIT_CACHE_MAX:
            _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
        # [loss, statics, fn, verified]: verified once an eager step showed that the loss
        # returns only JAX arrays (a string or Python number in the output would come back
        # changed from a compiled function)
        entry = _JIT_CACHE[key] = [loss, statics_t, fn, False]
        return entry, treedef, kinds, leaves

    def __call__(self, model: Any, args: tuple):
        if self.disabled:
            return None
        import jax
        import numpy as np
        if not all(_is_jax_array(a) or isinstance(a, (np.ndarray, np.generic))
                   for a in jax.tree_util.tree_leaves(args)):
            return None
        plan = self._plan(model)
        if plan is None:
            return None
        entry, treedef, kinds, leaves = plan
        if not entry[3]:
            self._pending = entry  # run this step eagerly; `observe` checks its output
            return None
        fn = entry[2]
        diff = [x for x, k in zip(leaves, kinds) if k == "d"]
        consts = [x for x, k in zip(leaves, kinds) if k == "c"]
        try:
            out, g = fn(diff, consts, args)
        except (TypeError, *_trace_errors()) as e:
            # a TypeError is re-raised unless it is jax refusing a non-array input/output
            # (a string in the aux output, say)
            if type(e) is TypeError and "not a valid JAX type" not in str(e):
                raise
            self.disabled = True
            warnings.warn(
                f"train: the loss could not be compiled with jax.jit ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); running it eagerly instead, which is "
                "much slower. Make the loss traceable (no float()/if on array values, no NumPy "
                "calls on them) or pass train(..., jit=False) to silence this.",
                UserWarning, stacklevel=4)
            return None
        it = iter(g)
        grad = jax.tree_util.tree_unflatten(treedef, [next(it) if k == "d" else None for k in kinds])
        return out, grad

    def observe(self, val: Any) -> None:
        """After an eager step: compile from the next step on when ``val`` (what the loss
        returned) is all JAX arrays; otherwise stay eager for this call, silently."""
        entry, self._pending = self._pending, None
        if entry is None:
            return
        import jax
        if all(_is_jax_array(v) for v in jax.tree_util.tree_leaves(val)):
            entry[3] = True
        else:
            self.disabled = True


def _updates_in_place(model: Any) -> bool:
    """Can ``update_`` change ``model`` so that the caller's reference sees it? True for
    torch modules and mutable containers (dict, list, non-frozen dataclass) at the root, and
    for any tree whose arrays are all writeable (NumPy, torch)."""
    from ..optimise.tree import children
    if _is_torch_module(model):
        return True
    ch = children(model)
    if ch is not None and (ch[0] in ("dict", "list") or (
            ch[0] == "dataclass" and not type(model).__dataclass_params__.frozen)):
        return True
    arrays = [x for _, x in tree_leaves_with_path(model) if hasattr(x, "shape") and hasattr(x, "dtype")]
    return all(is_writeable(x) and not _is_jax_array(x) for x in arrays)


def _as_state(state: Any, model: Any) -> Any:
    """A bare rule becomes a temporary state, with Flux's warning when it keeps state."""
    from ..optimise import Rule, setup
    from ..optimise.tree import leaves
    if isinstance(state, type) and issubclass(state, Rule):
        raise ArgumentError(f"train: pass a rule instance such as {state.__name__}() or a state from setup, "
                            f"not the class {state.__name__}")
    if not isinstance(state, Rule):
        return state
    rule = state
    state = setup(rule, model)
    name = type(rule).__name__
    if any(leaf.state is not None for _, leaf in leaves(state)):
        warnings.warn(
            f"Optimiser {name} has state which will be discarded after `train` finishes. "
            f"Please run `state = setup({name}(), model)` and pass this `state` to `train`.",
            UserWarning, stacklevel=3)
    return state


def _holds_jax(model: Any) -> bool:
    return any(_is_jax_array(x) for _, x in tree_leaves_with_path(model))


def _trainmode(model: Any) -> None:
    # Flux 0.16.11's train! calls trainmode!(model) (persists afterwards); torch's equivalent
    if _is_torch_module(model):
        model.train()


def _progress(data: Iterable, progress: bool):
    if not progress:
        return data
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is optional (pip install fluxtrain[fit])
        return data
    try:
        total = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None
    # disable=None: a bar on terminals only, nothing in logs or captured output
    return tqdm(data, total=total, disable=None, leave=False, desc="train", unit="batch")


def trainstep(loss: Callable[..., Any], model: Any, batch: Any, state: Any) -> Any:
    """One training step, Flux's ``trainstep!``: gradient of ``loss(model, *batch)`` (a tuple
    ``batch`` is splatted, anything else passed whole) and an in-place ``update_`` of
    ``model`` and ``state``. Returns what ``loss`` returned (the loss, or ``(loss, aux...)``).

    When the loss is not finite (NaN or ±Inf) the update is skipped and no error is raised,
    as in Flux. ``state`` must come from ``setup``.

    The model must be updatable in place: a ``torch.nn.Module``, a dict/list/non-frozen
    dataclass at the root, or a tree of writeable arrays. A JAX model in an immutable
    container (tuple, equinox module) raises ``ArgumentError`` before anything changes; use
    :func:`train` (which returns the new model) or ``state, model = update_(state, model, g)``.

    >>> import torch
    >>> from fluxtrain import setup, trainstep, Descent
    >>> model = {"w": torch.tensor([1.0, 2.0])}
    >>> state = setup(Descent(0.1), model)
    >>> float(trainstep(lambda m, x: (m["w"] * x).sum(), model, (torch.tensor([1.0, 1.0]),), state))
    3.0
    >>> model["w"].tolist()
    [0.8999999761581421, 1.899999976158142]
    """
    from ..optimise import Rule
    if isinstance(state, Rule):
        raise ArgumentError("trainstep needs the optimiser state: `state = setup(rule, model)` first")
    if not _updates_in_place(model):
        raise ArgumentError(
            f"trainstep: the model ({type(model).__name__} holding immutable JAX arrays) cannot be "
            "updated in place; use `state, model = train(...)` or "
            "`state, model = update_(state, model, gradient(...)[0])`, which return the new model")
    val, _, _, _ = _step(loss, model, batch, state)
    return val


def train(loss: Callable[..., Any], model: Any, data: Iterable, state: Any, *,
          progress: bool = True, cb: Any = None, jit: bool = True) -> tuple[Any, Any]:
    """One pass over ``data``, updating ``model`` and ``state``: Flux's ``train!``.

    For each item ``d`` of ``data`` (1-based index ``i``), the gradient of
    ``loss(model, *d)`` (``loss(model, d)`` when ``d`` is not a tuple) with respect to the
    model is taken with :func:`withgradient` and applied with ``update_``. The loss may
    return ``(loss, aux...)``; only the first element is used and checked.

    - A non-finite loss (NaN, ±Inf) skips that update and raises
      ``DomainError("Loss is nan on data item i, stopping training")``; ``model`` and
      ``state`` then hold the values of the last good step (also attached to the error as
      ``err.model`` and ``err.state``, for JAX models that cannot be updated in place).
    - ``state`` is the tree from ``setup``. A bare rule (``train(..., Descent(0.1))``) makes a
      temporary state; a warning says that state is discarded when the rule keeps any.
    - A ``torch.nn.Module`` is put in training mode first (``model.train()``) and left so,
      as Flux 0.16.11's ``train!`` does with ``trainmode!``.
    - ``jit`` (JAX models): the gradient step is compiled with ``jax.jit`` (value and
      gradient of the loss w.r.t. the model's floating arrays), cached per loss, model
      structure and batch shapes/dtypes. The first step of a new loss/structure runs
      eagerly (it checks that the loss returns only arrays); Python side effects in the loss
      then happen only when it is traced. A loss that cannot be traced (``float(x)``,
      ``if x > 0`` on arrays) falls back to eager with a warning; ``jit=False`` opts out.
      Models with Python floats or NumPy arrays among their leaves, and batches holding
      anything but arrays, always run eagerly. ``update_`` itself is not compiled.
    - ``progress``: a tqdm bar on terminals (needs tqdm, ``pip install fluxtrain[fit]``;
      without it, no bar). ``cb`` is refused as in Flux.

    Returns ``(state, model)`` (Flux returns ``nothing``). Torch modules and models in
    mutable containers are updated in place, so the result can be ignored; a JAX model
    held in an immutable container (a tuple, an equinox module) is only available as the
    returned ``model``.

    >>> import torch
    >>> from fluxtrain import setup, train, Momentum
    >>> lin = torch.nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = lin.weight.fill_(1.0), lin.bias.zero_()
    >>> state = setup(Momentum(0.1), lin)
    >>> x1, y1 = torch.tensor([0.2, -0.3]), torch.tensor([0.4])
    >>> loss = lambda m, x, y: (torch.nn.functional.leaky_relu(m(x)) - y).abs().sum() * 100
    >>> state, lin = train(loss, lin, [(x1, y1), (x1, y1)], state, progress=False)
    >>> round(lin.bias.item(), 4)
    10.19
    """
    if cb is not None:
        raise ArgumentError("train does not support callback functions. "
                            "For more control use a loop with `gradient` and `update_`.")
    state = _as_state(state, model)
    _trainmode(model)
    jitted = _JaxStep(loss) if jit and _holds_jax(model) else None
    items = _progress(data, progress)
    try:
        for i, batch in enumerate(items, start=1):
            _, lval, new_state, new_model = _step(loss, model, batch, state, jitted)
            if not math.isfinite(lval):
                err = DomainError(f"Loss is {lval} on data item {i}, stopping training")
                err.state, err.model = state, model  # type: ignore[attr-defined]
                raise err
            state, model = new_state, new_model
    finally:
        if items is not data and hasattr(items, "close"):
            items.close()
    return state, model
