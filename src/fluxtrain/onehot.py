"""One-hot encoding: ``onehot``, ``onehotbatch`` and ``onecold`` (OneHotArrays.jl, re-exported
by Flux as ``Flux.onehot`` etc.).

Python layout: the one-hot axis is the **last** one. Flux's ``onehotbatch(xs, labels)`` is an
L×N matrix (column k = sample k); here it is an (N, L) array, the same memory. Results are
plain bool arrays (NumPy by default, or the backend of an array ``xs``), not a sparse type.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from ._backend import device_of, is_array, is_eager, namespace, to_numpy
from ._errors import ArgumentError, DimensionMismatch

__all__ = ["onehot", "onehotbatch", "onecold"]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _is_nan(v: Any) -> bool:
    try:
        return isinstance(v, (float, np.floating)) and math.isnan(v)
    except TypeError:
        return False


def _label_list(labels: Any) -> list:
    """``labels`` as a Python list (a string gives its characters, an array its entries)."""
    if isinstance(labels, str):
        return list(labels)
    if is_array(labels):
        return to_numpy(labels).tolist()
    if isinstance(labels, (list, tuple, range)):
        return list(labels)
    try:
        return list(labels)
    except TypeError:
        raise TypeError(f"labels must be a sequence (list, tuple, range, string or 1-D "
                        f"array), got {type(labels).__name__}") from None


class _Finder:
    """First index of a value in labels, with Julia's ``isequal`` (NaN matches NaN)."""

    def __init__(self, labels: list):
        self.labels = labels
        self.index: dict = {}
        self.nan: int | None = None
        self.unhashable: list[tuple[int, Any]] = []
        for i, v in enumerate(labels):
            if _is_nan(v):
                if self.nan is None:
                    self.nan = i
                continue
            try:
                self.index.setdefault(v, i)
            except TypeError:
                self.unhashable.append((i, v))

    def __call__(self, x: Any) -> int | None:
        if _is_nan(x):
            return self.nan
        try:
            i = self.index.get(x)
        except TypeError:
            i = None
        if self.unhashable:  # a list or array label: compare one by one, keep the first
            for j, v in self.unhashable:
                if (i is None or j < i) and _equal(x, v):
                    return j
        return i


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError):
        return bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)))


def _scalar(x: Any) -> Any:
    """A 0-d array of any backend as a Python scalar; other values unchanged."""
    if is_array(x) and len(getattr(x, "shape", ())) == 0:
        return to_numpy(x).item()
    return x


def onehot(x: Any, labels: Any, default: Any = _MISSING) -> Any:
    """A bool vector of length ``len(labels)``, True at the first ``i`` with ``labels[i] == x``.

    Flux's ``onehot(x, labels[, default])``. Equality is Julia's ``isequal`` (NaN matches
    NaN). If ``x`` is not a label, ``default`` is encoded instead; without a default a
    ``ValueError("Value x is not in labels")`` is raised (Flux's ``ErrorException``).
    ``labels`` is any sequence: list, tuple, ``range``, string (its characters) or 1-D
    array. The result is a NumPy bool array, or a bool array of ``x``'s backend when ``x``
    is a 0-d torch/JAX array.

    Example::

        >>> onehot("b", ["a", "b", "c"]).tolist()
        [False, True, False]
        >>> onehot("z", ["a", "b", "c"], "c").tolist()
        [False, False, True]
    """
    like = x if is_array(x) else None
    labs = _label_list(labels)
    find = _Finder(labs)
    i = find(_scalar(x))
    if i is None:
        if default is _MISSING:
            raise ValueError(f"Value {_scalar(x)} is not in labels")
        i = find(_scalar(default))
        if i is None:
            raise ValueError(f"Default value {_scalar(default)} is not in labels")
    out = np.arange(len(labs)) == i
    return _to_backend(out, like)


def _to_backend(out: np.ndarray, like: Any) -> Any:
    if like is None or isinstance(like, np.ndarray):
        return out
    xp = namespace(like)
    return xp.asarray(out, device=device_of(like))


def _data(xs: Any) -> np.ndarray:
    """Non-array data as a NumPy array: a string gives its characters, mixed lists stay
    Python objects (np.asarray would turn ``['a', 1]`` into strings)."""
    if isinstance(xs, str):
        return np.array(list(xs), dtype=object)
    if isinstance(xs, np.ndarray):
        return xs
    if isinstance(xs, range):
        return np.arange(xs.start, xs.stop, xs.step)
    items = list(xs) if not isinstance(xs, (list, tuple)) else xs
    try:
        a = np.asarray(items)
    except ValueError:  # ragged
        a = None
    if a is None or (a.dtype.kind in "USO" and a.ndim == 1 and not all(isinstance(v, str) for v in items)):
        a = np.empty(len(items), dtype=object)
        a[:] = list(items)
    return a


def _numeric_labels(labs: list) -> np.ndarray | None:
    """Labels as a numeric NumPy vector when they are all real numbers without NaN."""
    if not labs or not all(isinstance(v, (int, float, np.integer, np.floating, bool, np.bool_))
                           for v in labs):
        return None
    arr = np.asarray(labs)
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        return None
    return arr


def onehotbatch(xs: Any, labels: Any, default: Any = _MISSING) -> Any:
    """One-hot encode every element of ``xs``: a bool array of shape ``xs.shape + (L,)``.

    Flux's ``onehotbatch(xs, labels[, default])``, in Python layout: for a 1-D ``xs`` of
    length N the result is (N, L), row k = ``onehot(xs[k], labels)`` (Flux's L×N matrix
    transposed, the same memory). A string ``xs`` gives its characters. Values not in
    ``labels`` are encoded as ``default``; without one a ``ValueError("Value v not found in
    labels")`` names the value (for integer data and ``range`` labels the smallest value
    below the range is reported first, then the largest above, like Flux). A default that
    is not a label raises ``ValueError("Default value d is not in labels")``.

    Numeric data with numeric labels (e.g. ``range``) is encoded vectorised, in the backend
    of ``xs``: a torch or JAX ``xs`` gives that backend's bool array, and works under
    ``jax.jit`` (where a value that is not a label cannot be reported: its row is all False,
    or the default's). Other data is encoded on the host and returned as NumPy.

    Example::

        >>> onehotbatch([2, 1], range(1, 4)).astype(int).tolist()
        [[0, 1, 0], [1, 0, 0]]
        >>> onehotbatch("abracadabra", "abcde", "e").shape
        (11, 5)
    """
    labs = _label_list(labels)
    find = _Finder(labs)
    if default is not _MISSING:
        d_index = find(_scalar(default))
        if d_index is None:
            raise ValueError(f"Default value {_scalar(default)} is not in labels")
    L = len(labs)
    num = _numeric_labels(labs)
    backend = is_array(xs) and not isinstance(xs, np.ndarray)
    data = xs if backend else _data(xs)
    xp = namespace(data)
    if num is not None and xp.isdtype(data.dtype, ("bool", "integral", "real floating")):
        dev = device_of(data)
        first = np.zeros(L, dtype=bool)
        first[np.unique(num, return_index=True)[1]] = True  # duplicates: first one wins
        lab = xp.asarray(num, device=dev)
        eq = (data[..., None] == lab) & xp.asarray(first, device=dev)
        hit = xp.any(eq, axis=-1, keepdims=True)
        if default is not _MISSING:
            return xp.where(hit, eq, xp.asarray(np.arange(L) == d_index, device=dev))
        if is_eager(data) and not bool(xp.all(hit)):
            vals = to_numpy(data)
            missing = vals[~to_numpy(hit)[..., 0]]
            bad = missing.flat[0]
            if isinstance(labels, range) and len(labels):
                lo, hi = min(labels), max(labels)
                if vals.min() < lo:
                    bad = vals.min()
                elif vals.max() > hi:
                    bad = vals.max()
            raise ValueError(f"Value {bad.item() if hasattr(bad, 'item') else bad} "
                             "not found in labels")
        return eq
    if backend:
        if not is_eager(xs):
            raise TypeError("onehotbatch: under jit, data must be numeric with numeric labels")
        data = to_numpy(xs)
    idx = np.empty(data.shape, dtype=np.int64)
    flat = idx.reshape(-1)
    for k, v in enumerate(data.reshape(-1).tolist() if data.dtype != object else data.reshape(-1)):
        i = find(v)
        if i is None:
            if default is _MISSING:
                raise ValueError(f"Value {v} not found in labels")
            i = d_index
        flat[k] = i
    return _to_backend(idx[..., None] == np.arange(L), xs if backend else None)


def onecold(y: Any, labels: Any = None) -> Any:
    """Inverse of :func:`onehotbatch`: the argmax along the **last** axis, mapped through
    ``labels``.

    Flux's ``onecold(y, labels = 1:size(y,1))`` with Python's axis order: a 1-D ``y``
    returns one label; a ``(..., C)`` array returns an array of shape ``y.shape[:-1]``.
    Without ``labels`` the result is the **0-based** index (Flux's default ``1:C`` is
    1-based). Ties go to the first maximum. ``labels`` may be a list, tuple, string,
    ``range`` or array; ``len(labels) != y.shape[-1]`` raises ``DimensionMismatch``.
    Bool ``y`` works. Indices and ``range``/array labels stay in ``y``'s backend (jit-able);
    labels from a Python list give a NumPy array.

    NaN, as in Flux: a 1-D ``y`` containing NaN raises ``ArgumentError("maximum value found
    by onecold is NaN")`` (eagerly; under ``jax.jit`` the first NaN's position is returned);
    for more than one dimension the first NaN of a row is that row's maximum, no error.

    Example::

        >>> onecold([0.3, 0.2, 0.5], ["a", "b", "c"])
        'c'
        >>> onecold([False, True, False])
        1
    """
    if not is_array(y):
        y = np.asarray(y)
    xp = namespace(y)
    shape = tuple(y.shape)
    if len(shape) == 0:
        raise ValueError("onecold: y must have at least one dimension (the classes, last)")
    C = shape[-1]
    if labels is not None:
        n = len(labels)
        if n != C:
            raise DimensionMismatch(f"onecold got {n} labels for {C} classes (y.shape[-1] = "
                                    f"{C}), these must agree")
    if C == 0:
        raise ValueError("onecold: y has no classes (its last axis is empty)")
    if xp.isdtype(y.dtype, "bool"):
        y = xp.astype(y, xp.int8)
    idx = xp.argmax(y, axis=-1)
    eager = is_eager(y)
    if len(shape) == 1 and eager and xp.isdtype(y.dtype, ("real floating", "complex floating")):
        if bool(xp.any(xp.isnan(y))):
            raise ArgumentError("maximum value found by onecold is NaN")
    if len(shape) == 1 and eager:
        i = int(idx)
        return i if labels is None else labels[i]
    if labels is None:
        return idx
    if isinstance(labels, range):
        return labels.start + labels.step * idx
    if is_array(labels) and _same_backend(labels, y):
        return xp.reshape(xp.take(labels, xp.reshape(idx, (-1,)), axis=0), idx.shape)
    if not eager:
        raise TypeError("onecold: under jit, labels must be None, a range or an array of "
                        "y's backend")
    lab = to_numpy(labels) if is_array(labels) else _data(labels)
    return lab[to_numpy(idx)]


def _same_backend(a: Any, b: Any) -> bool:
    try:
        namespace(a, b)
    except TypeError:
        return False
    return True
