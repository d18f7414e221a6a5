"""``DataLoader``: mini-batches of arrays, following MLUtils.jl (Flux's ``DataLoader``),
with observations along the **first** axis (Python's batch-first layout).
"""
from __future__ import annotations

import copy
import numbers
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import numpy as np

from .._backend import device_of, is_array, is_numpy, namespace

__all__ = ["DataLoader"]

RNGLike = Union[None, int, np.random.Generator]


def _flatten(data: Any, path: str, leaves: list, paths: list) -> Callable[[Iterator], Any]:
    """Collect the arrays of ``data`` (depth first) and return a function rebuilding the
    same structure from an iterator of replacement leaves."""
    if is_array(data):
        if getattr(data, "ndim", 0) < 1:
            raise ValueError(f"DataLoader: {path} is a 0-d array; it has no observation axis "
                             "(observations run along the first axis)")
        leaves.append(data)
        paths.append(path)
        return lambda it: next(it)
    if isinstance(data, tuple):
        parts = [_flatten(d, f"{path}[{i}]", leaves, paths) for i, d in enumerate(data)]
        make = getattr(type(data), "_make", None) or tuple  # namedtuples keep their type
        return lambda it: make([p(it) for p in parts])
    if isinstance(data, Mapping):
        keys = list(data.keys())
        parts = [_flatten(data[k], f"{path}[{k!r}]", leaves, paths) for k in keys]
        return lambda it: {k: p(it) for k, p in zip(keys, parts)}
    hint = " (convert it with np.asarray, or pass a tuple of arrays)" if isinstance(data, list) else ""
    raise TypeError(f"DataLoader: data must be an array, a tuple or a dict of arrays; "
                    f"{path} is a {type(data).__name__}{hint}")


def _make_rng(rng: RNGLike) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"DataLoader: rng must be None, an integer seed or a numpy.random.Generator, "
                    f"got {type(rng).__name__}")


def _take(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of ``x``, indexed on ``x``'s own backend and device."""
    xp = namespace(x)
    if is_numpy(xp):
        return x[idx]
    return xp.take(x, xp.asarray(idx, device=device_of(x)), axis=0)


class DataLoader:
    """Iterate over mini-batches of ``data`` (MLUtils.jl's ``DataLoader``, Flux's
    ``Flux.DataLoader``), observations along the first axis.

    Args:
        data: an array, a tuple of arrays or a dict of arrays (nested tuples/dicts too);
            every array must have the same length ``n`` along its first axis. Arrays may
            be NumPy, PyTorch or JAX; each batch keeps its array's backend and device.
        batchsize: observations per batch (default 1, as in Flux); must be >= 1. A batch
            size larger than ``n`` gives one batch of all the data (or none with
            ``partial=False``).
        shuffle: draw a fresh random order at the start of every pass (every ``iter``).
        partial: keep the last, smaller batch (default True); False drops it.
        rng: the loader's own ``numpy.random.Generator``, an integer seed for one, or None
            (fresh entropy). The permutation of each pass is drawn from it, so a seed makes
            the whole sequence of epochs reproducible.
        collate: None (default): a batch is ``data`` indexed by the batch's indices (a
            slice, or the shuffled indices), with the same structure as ``data``. A
            function: called with the list of single observations (each ``data`` indexed by
            one index, e.g. a tuple ``(x[i], y[i])``) and its result is the batch. False: the
            batch is that list. (MLUtils' ``collate=true``, stacking observations, is what the
            default already gives for arrays.)

    ``len(loader)`` is the number of batches: ``ceil(n / batchsize)`` with ``partial=True``,
    ``n // batchsize`` otherwise. The loader can be iterated any number of times.

    Resuming a shuffled run: ``loader.state_dict()`` returns ``{"rng": state}`` (the
    generator's ``bit_generator.state``, a JSON-serialisable dict) and
    ``loader.load_state_dict(d)`` restores it; saved between two passes, the next pass then
    draws the same order as the uninterrupted run would have.

    Deliberate differences from MLUtils: observations along the first axis, not the last;
    ``batchsize < 1`` raises ``ValueError`` (MLUtils' ``batchsize=-1`` yields single
    observations without a batch axis); no ``parallel``/``buffer`` options; shuffling uses
    NumPy's generator, so the orders differ from Julia's.

    Example:
        >>> import numpy as np
        >>> from fluxtrain import DataLoader
        >>> X, Y = np.arange(10.0).reshape(5, 2), np.arange(5)
        >>> loader = DataLoader((X, Y), batchsize=2)
        >>> len(loader)
        3
        >>> [y.tolist() for _, y in loader]
        [[0, 1], [2, 3], [4]]
        >>> [b["y"].tolist() for b in DataLoader({"x": X, "y": Y}, batchsize=2, partial=False)]
        [[0, 1], [2, 3]]
        >>> [y.tolist() for _, y in DataLoader((X, Y), batchsize=5, shuffle=True, rng=0)]
        [[2, 4, 3, 0, 1]]
    """

    def __init__(self, data: Any, batchsize: int = 1, shuffle: bool = False, partial: bool = True,
                 rng: RNGLike = None, collate: Union[None, bool, Callable[[list], Any]] = None):
        if isinstance(batchsize, bool) or not isinstance(batchsize, numbers.Integral):
            raise TypeError(f"DataLoader: batchsize must be an integer >= 1, got {batchsize!r}")
        if batchsize < 1:
            raise ValueError(f"DataLoader: batchsize must be >= 1, got {batchsize}")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"DataLoader: shuffle must be True or False, got {shuffle!r}")
        if not isinstance(partial, (bool, np.bool_)):
            raise TypeError(f"DataLoader: partial must be True or False, got {partial!r}")
        if collate is True:
            collate = None  # stacking observations of arrays == indexing the batch
        if not (collate is None or collate is False or callable(collate)):
            raise TypeError(f"DataLoader: collate must be None, True, False or a function, got {collate!r}")
        leaves: list = []
        paths: list = []
        self._rebuild = _flatten(data, "data", leaves, paths)
        if not leaves:
            raise ValueError("DataLoader: data holds no arrays")
        lengths = [int(x.shape[0]) for x in leaves]
        if len(set(lengths)) > 1:
            detail = ", ".join(f"{p}: {n}" for p, n in zip(paths, lengths))
            raise ValueError("DataLoader: all arrays in data must have the same number of "
                             f"observations along the first axis; got {detail}")
        self.data = data
        self._leaves = leaves
        self.nobs = lengths[0]
        self.batchsize = int(batchsize)
        self.shuffle = bool(shuffle)
        self.partial = bool(partial)
        self.collate = collate
        self.rng = _make_rng(rng)

    def __len__(self) -> int:
        n, b = self.nobs, self.batchsize
        return -(-n // b) if self.partial else n // b

    def __repr__(self) -> str:
        kind = type(self.data).__name__ if not is_array(self.data) else "array"
        return (f"DataLoader({kind} with {self.nobs} observations, batchsize={self.batchsize}, "
                f"shuffle={self.shuffle}, partial={self.partial})")

    def __iter__(self) -> Iterator[Any]:
        # The order is drawn here, when the pass starts, not at the first batch.
        order = self.rng.permutation(self.nobs) if self.shuffle else None
        return self._batches(order)

    def _batches(self, order: Optional[np.ndarray]) -> Iterator[Any]:
        b = self.batchsize
        for k in range(len(self)):
            lo, hi = k * b, min((k + 1) * b, self.nobs)
            if self.collate is None:
                if order is None:
                    parts = [x[lo:hi] for x in self._leaves]
                else:
                    idx = order[lo:hi]
                    parts = [_take(x, idx) for x in self._leaves]
                yield self._rebuild(iter(parts))
            else:
                indices = range(lo, hi) if order is None else order[lo:hi].tolist()
                obs = [self._rebuild(iter([x[i] for x in self._leaves])) for i in indices]
                yield obs if self.collate is False else self.collate(obs)

    def state_dict(self) -> dict:
        """``{"rng": ...}``: the shuffling generator's state (JSON-serialisable)."""
        return {"rng": copy.deepcopy(self.rng.bit_generator.state)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        try:
            rng_state = state["rng"]
        except (KeyError, TypeError):
            raise ValueError("DataLoader.load_state_dict: expected a dict with key 'rng' "
                             "(from DataLoader.state_dict())") from None
        name = type(self.rng.bit_generator).__name__
        if not isinstance(rng_state, Mapping) or rng_state.get("bit_generator") != name:
            got = rng_state.get("bit_generator") if isinstance(rng_state, Mapping) else type(rng_state).__name__
            raise ValueError(f"DataLoader.load_state_dict: the saved state is for {got!r}, "
                             f"this loader's generator is {name}")
        self.rng.bit_generator.state = copy.deepcopy(dict(rng_state))
