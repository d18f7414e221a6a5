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

from .._backend import is_writeable
from .._errors import ArgumentError, DomainError
from .gradient import _first, _is_jax_array, _is_torch_module, tree_leaves_with_path, withgradient

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


def _step(loss: Callable, model: Any, batch: Any, state: Any) -> tuple[Any, float, Any, Any]:
    """One gradient + update; ``(val, loss_value, state, model)``; no update when not finite."""
    from ..optimise import update_
    args = _batch_args(batch)
    val, (g,) = withgradient(lambda m: loss(m, *args), model)
    lval = _loss_value(val)
    if math.isfinite(lval):
        state, model = update_(state, model, g)
    return val, lval, state, model


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
          progress: bool = True, cb: Any = None) -> tuple[Any, Any]:
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
    items = _progress(data, progress)
    try:
        for i, batch in enumerate(items, start=1):
            _, lval, new_state, new_model = _step(loss, model, batch, state)
            if not math.isfinite(lval):
                err = DomainError(f"Loss is {lval} on data item {i}, stopping training")
                err.state, err.model = state, model  # type: ignore[attr-defined]
                raise err
            state, model = new_state, new_model
    finally:
        if items is not data and hasattr(items, "close"):
            items.close()
    return state, model
