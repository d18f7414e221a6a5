"""DataLoader: MLUtils semantics with observations along the first axis, on every backend."""
from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

from fluxtrain import DataLoader


def _data(b, n=10):
    X = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    Y = np.arange(n)
    return X, Y, b.asarray(X), b.asarray(Y)


def _same_backend(batch, like):
    assert type(batch) is type(like)
    if hasattr(like, "device") and not callable(like.device):
        assert batch.device == like.device
    if hasattr(like, "devices"):
        assert batch.devices() == like.devices()


def test_tuple_batches_in_order(eager_backend):
    b = eager_backend
    X, Y, x, y = _data(b)
    loader = DataLoader((x, y), batchsize=3)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(b.to_numpy(yb)) for _, yb in batches] == [3, 3, 3, 1]
    for k, (xb, yb) in enumerate(batches):
        _same_backend(xb, x)
        np.testing.assert_array_equal(b.to_numpy(xb), X[3 * k:3 * k + 3])
        np.testing.assert_array_equal(b.to_numpy(yb), Y[3 * k:3 * k + 3])
        assert b.to_numpy(xb).dtype == np.float32
    # re-iterable: a second pass gives the same batches
    again = list(loader)
    for (x1, _), (x2, _) in zip(batches, again):
        np.testing.assert_array_equal(b.to_numpy(x1), b.to_numpy(x2))


def test_partial_false_drops_the_last_small_batch(eager_backend):
    b = eager_backend
    _, Y, x, y = _data(b)
    loader = DataLoader((x, y), batchsize=3, partial=False)
    assert len(loader) == 3
    assert [b.to_numpy(yb).tolist() for _, yb in loader] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert len(DataLoader(x, batchsize=5, partial=False)) == 2     # exact division keeps all


def test_batchsize_larger_than_the_data(eager_backend):
    b = eager_backend
    X, _, x, _ = _data(b, n=4)
    (only,) = list(DataLoader(x, batchsize=100))
    np.testing.assert_array_equal(b.to_numpy(only), X)
    assert len(DataLoader(x, batchsize=100, partial=False)) == 0
    assert list(DataLoader(x, batchsize=100, partial=False)) == []


def test_default_batchsize_is_one(eager_backend):
    b = eager_backend
    X, _, x, _ = _data(b, n=3)
    batches = list(DataLoader(x))
    assert len(batches) == 3 and all(tuple(xb.shape) == (1, 3) for xb in batches)


def test_dict_single_array_and_nested_structures(eager_backend):
    b = eager_backend
    X, Y, x, y = _data(b)
    for batch in DataLoader({"x": x, "y": y}, batchsize=4):
        assert isinstance(batch, dict) and list(batch) == ["x", "y"]
    xb = next(iter(DataLoader(x, batchsize=4)))
    _same_backend(xb, x)
    Pair = namedtuple("Pair", "features labels")
    batch = next(iter(DataLoader(Pair(x, {"y": y}), batchsize=2)))
    assert isinstance(batch, Pair)
    np.testing.assert_array_equal(b.to_numpy(batch.labels["y"]), [0, 1])


def test_shuffle_is_a_permutation_reproducible_from_a_seed(eager_backend):
    b = eager_backend
    X, Y, x, y = _data(b, n=20)
    loader = DataLoader((x, y), batchsize=6, shuffle=True, rng=42)
    epoch1 = np.concatenate([b.to_numpy(yb) for _, yb in loader])
    epoch2 = np.concatenate([b.to_numpy(yb) for _, yb in loader])
    # each pass draws a fresh permutation from the loader's own generator
    rng = np.random.default_rng(42)
    np.testing.assert_array_equal(epoch1, rng.permutation(20))
    np.testing.assert_array_equal(epoch2, rng.permutation(20))
    assert sorted(epoch1.tolist()) == list(range(20)) and not np.array_equal(epoch1, epoch2)
    # features follow their labels; the batches stay on the arrays' backend
    for xb, yb in DataLoader((x, y), batchsize=6, shuffle=True, rng=1):
        _same_backend(xb, x)
        _same_backend(yb, y)
        np.testing.assert_array_equal(b.to_numpy(xb), X[b.to_numpy(yb)])
    # the same seed gives the same sequence of epochs
    other = DataLoader((x, y), batchsize=6, shuffle=True, rng=42)
    np.testing.assert_array_equal(np.concatenate([b.to_numpy(yb) for _, yb in other]), epoch1)


def test_state_dict_resumes_the_shuffle_order(eager_backend):
    b = eager_backend
    _, _, x, _ = _data(b, n=12)

    def order(loader):
        return np.concatenate([b.to_numpy(xb)[:, 0] for xb in loader])

    full = DataLoader(x, batchsize=5, shuffle=True, rng=7)
    orders = [order(full) for _ in range(3)]
    first = DataLoader(x, batchsize=5, shuffle=True, rng=7)
    order(first)                                  # epoch 1, then "checkpoint"
    saved = first.state_dict()
    import json
    saved = json.loads(json.dumps(saved))         # the state survives a JSON round trip
    resumed = DataLoader(x, batchsize=5, shuffle=True, rng=123)
    resumed.load_state_dict(saved)
    np.testing.assert_array_equal(order(resumed), orders[1])
    np.testing.assert_array_equal(order(resumed), orders[2])
    with pytest.raises(ValueError, match="'rng'"):
        resumed.load_state_dict({})
    mt = DataLoader(x, rng=np.random.Generator(np.random.MT19937(0)))
    with pytest.raises(ValueError, match="MT19937"):
        mt.load_state_dict(saved)


def test_shared_generator_and_unseeded():
    gen = np.random.default_rng(0)
    x = np.arange(8)
    loader = DataLoader(x, batchsize=8, shuffle=True, rng=gen)
    assert loader.rng is gen
    np.testing.assert_array_equal(next(iter(loader)), np.random.default_rng(0).permutation(8))
    assert sorted(next(iter(DataLoader(x, batchsize=8, shuffle=True))).tolist()) == list(range(8))


def test_collate(eager_backend):
    b = eager_backend
    X, Y, x, y = _data(b, n=5)
    obs = next(iter(DataLoader((x, y), batchsize=2, collate=False)))
    assert isinstance(obs, list) and len(obs) == 2
    np.testing.assert_array_equal(b.to_numpy(obs[1][0]), X[1])
    sums = [s for s in DataLoader((x, y), batchsize=2, collate=lambda os: sum(int(o[1]) for o in os))]
    assert sums == [1, 5, 4]
    same = next(iter(DataLoader((x, y), batchsize=2, collate=True)))
    np.testing.assert_array_equal(b.to_numpy(same[0]), X[:2])


def test_bad_input():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match=r"data\[0\]: 10, data\[1\]: 9"):
        DataLoader((x, np.zeros(9)))
    with pytest.raises(ValueError, match=r"\['a'\]: 10, data\['b'\]: 3"):
        DataLoader({"a": x, "b": np.zeros((3, 2))})
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batchsize must be >= 1"):
            DataLoader(x, batchsize=bad)
    with pytest.raises(TypeError, match="batchsize"):
        DataLoader(x, batchsize=2.0)
    with pytest.raises(ValueError, match="0-d"):
        DataLoader((x, np.array(1.0)))
    with pytest.raises(TypeError, match="list"):
        DataLoader([x, x])
    with pytest.raises(TypeError, match="rng"):
        DataLoader(x, rng=np.random.RandomState(0))
    with pytest.raises(TypeError, match="shuffle"):
        DataLoader(x, shuffle="yes")
    with pytest.raises(ValueError, match="no arrays"):
        DataLoader(())


def test_len_and_repr():
    x = np.zeros((10, 2))
    assert [len(DataLoader(x, batchsize=k)) for k in (1, 3, 4, 10, 11)] == [10, 4, 3, 1, 1]
    assert [len(DataLoader(x, batchsize=k, partial=False)) for k in (1, 3, 4, 10, 11)] == [10, 3, 2, 1, 0]
    assert repr(DataLoader((x, x), batchsize=4)) == \
        "DataLoader(tuple with 10 observations, batchsize=4, shuffle=False, partial=True)"
    assert list(DataLoader(np.zeros((0, 2)), batchsize=3)) == []


def test_docstring_examples():
    import doctest
    from fluxtrain.train import data
    result = doctest.testmod(data)
    assert result.failed == 0 and result.attempted > 0
