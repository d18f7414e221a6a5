"""onehot / onehotbatch / onecold: Flux's vectors, backends, errors, round trips."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fluxtrain
from fluxtrain import ArgumentError, DimensionMismatch, onecold, onehot, onehotbatch
from tests.util import REFERENCE, reference_entries


ENTRIES = reference_entries("onehot", "onehotbatch", "onecold")


def test_vector_count():
    if not REFERENCE.exists():
        pytest.skip("flux-vectors.json not available")
    assert len(ENTRIES) == 10


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e['fn']}-{e['source'][-25:]}")
def test_flux_vectors(entry):
    fn, args, expected = entry["fn"], entry["args"], entry["expected"]
    if fn == "onehot":
        if isinstance(expected, dict):
            with pytest.raises(ValueError, match=f"^{expected['message']}$"):
                onehot(*args)
            return
        assert onehot(*args).tolist() == expected
    elif fn == "onehotbatch":
        out = onehotbatch(*args)
        assert out.dtype == np.bool_
        assert out.tolist() == np.asarray(expected).T.tolist()  # Julia L×N → (N, L)
    else:
        y = np.asarray(args[0]).T  # Julia C×N → (N, C)
        if len(args) == 1:
            assert onecold(y) == expected - 1  # Julia's default labels are 1-based
        else:
            out = onecold(y, args[1])
            assert (out.tolist() if isinstance(out, np.ndarray) else out) == expected


# ---------------------------------------------------------------- onehot

def test_onehot_first_match_and_isequal():
    assert onehot(2, [1, 2, 2, 3]).tolist() == [False, True, False, False]
    assert onehot(1.0, range(3)).tolist() == [False, True, False]  # 1 == 1.0 (isequal)
    assert onehot(float("nan"), [0.0, float("nan")]).tolist() == [False, True]  # NaN isequal NaN
    assert onehot("c", "abc").tolist() == [False, False, True]
    assert onehot(0, range(0, 3)).dtype == np.bool_


def test_onehot_default_and_errors():
    assert onehot(9, range(3), 0).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="^Value 9 is not in labels$"):
        onehot(9, range(3))
    with pytest.raises(ValueError, match="^Default value 7 is not in labels$"):
        onehot(9, range(3), 7)
    with pytest.raises(TypeError, match="labels must be a sequence"):
        onehot(1, 5)


def test_onehot_of_backend_scalar(eager_backend):
    x = eager_backend.asarray(np.array(2))
    out = onehot(x, range(4))
    np.testing.assert_array_equal(eager_backend.to_numpy(out), [False, False, True, False])
    assert type(out).__module__.split(".")[0] == type(x).__module__.split(".")[0]


# ---------------------------------------------------------------- onehotbatch

def test_onehotbatch_seed_tutorial_and_shapes():
    out = onehotbatch([2, 1], range(1, 4))
    assert out.shape == (2, 3) and out.dtype == np.bool_
    assert out.astype(int).tolist() == [[0, 1, 0], [1, 0, 0]]
    nd = onehotbatch(np.array([[0, 1, 2], [2, 2, 0]]), range(3))
    assert nd.shape == (2, 3, 3)
    assert np.array_equal(nd.argmax(-1), [[0, 1, 2], [2, 2, 0]])
    assert onehotbatch([], range(3)).shape == (0, 3)


def test_onehotbatch_strings_and_objects():
    out = onehotbatch("abracadabra", "abcde", "e")
    assert "".join("abcde"[i] for i in out.argmax(-1)) == "abeacadabea"
    mixed = onehotbatch([1, "a", 2.5], [2.5, "a", 1])  # no coercion of 1 to "1"
    assert mixed.argmax(-1).tolist() == [2, 1, 0]
    assert onehotbatch(["x", "y"], ("y", "x")).argmax(-1).tolist() == [1, 0]
    with pytest.raises(ValueError, match="^Value r not found in labels$"):
        onehotbatch("abracadabra", "abcde")


def test_onehotbatch_range_reports_min_then_max():
    with pytest.raises(ValueError, match="^Value -3 not found in labels$"):
        onehotbatch([0, 5, -3], range(3))
    with pytest.raises(ValueError, match="^Value 5 not found in labels$"):
        onehotbatch([0, 5, 1], range(3))
    with pytest.raises(ValueError, match="^Value 3 not found in labels$"):
        onehotbatch([0, 3], range(0, 6, 2))  # stepped range: 3 falls between labels
    with pytest.raises(ValueError, match="^Default value 9 is not in labels$"):
        onehotbatch([0], range(3), 9)


def test_onehotbatch_duplicate_numeric_labels_first_wins():
    assert onehotbatch([2, 1], [2, 1, 2]).astype(int).tolist() == [[1, 0, 0], [0, 1, 0]]


def test_onehotbatch_backends(backend):
    xs = backend.asarray(np.array([[2, 0], [1, 1]]))
    out = backend.call(onehotbatch, xs, range(3))
    expected = np.eye(3, dtype=bool)[[[2, 0], [1, 1]]]
    got = backend.to_numpy(out)
    assert got.dtype == np.bool_ and got.shape == (2, 2, 3)
    np.testing.assert_array_equal(got, expected)
    labelled = backend.call(onehotbatch, backend.asarray(np.array([30, 10])), [10, 20, 30])
    np.testing.assert_array_equal(backend.to_numpy(labelled), [[0, 0, 1], [1, 0, 0]])
    with_default = backend.call(onehotbatch, backend.asarray(np.array([7, 1])), range(3), 0)
    np.testing.assert_array_equal(backend.to_numpy(with_default), [[1, 0, 0], [0, 1, 0]])


def test_onehotbatch_missing_value_on_backends(backend):
    xs = backend.asarray(np.array([0, 7]))
    if backend.eager:
        with pytest.raises(ValueError, match="^Value 7 not found in labels$"):
            onehotbatch(xs, range(3))
    else:  # under jit the value cannot be reported: its row is all False (documented)
        out = backend.call(onehotbatch, xs, range(3))
        np.testing.assert_array_equal(backend.to_numpy(out), [[1, 0, 0], [0, 0, 0]])


# ---------------------------------------------------------------- onecold

def test_onecold_one_dimensional():
    assert onecold([False, True, False]) == 1
    assert onecold([0.3, 0.2, 0.5], ("a", "b", "c")) == "c"
    assert onecold([1, 3, 3]) == 1  # ties: first maximum
    assert onecold([0.1, 0.9], range(10, 12)) == 11
    assert onecold(np.array([0.1, 0.9]), np.array([5.0, 6.0])) == 6.0


def test_onecold_nan():
    with pytest.raises(ArgumentError, match="maximum value found by onecold is NaN"):
        onecold([0.1, math.nan, 0.3])
    # More than one dimension: the first NaN is that row's maximum, as in Flux's matrix path.
    assert onecold(np.array([[0.1, math.nan, math.nan], [1.0, 0.0, 2.0]])).tolist() == [1, 2]


def test_onecold_dimension_mismatch():
    with pytest.raises(DimensionMismatch, match="onecold got 3 labels for 2 classes.*must agree"):
        onecold(np.zeros((4, 2)), "abc")
    with pytest.raises(ValueError, match="at least one dimension"):
        onecold(np.float64(1.0))


def test_onecold_backends(backend):
    y = backend.asarray(np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    idx = backend.call(onecold, y)
    np.testing.assert_array_equal(backend.to_numpy(idx), [1, 0, 2])
    shifted = backend.call(onecold, y, range(1, 4))  # Flux's 1-based indices
    np.testing.assert_array_equal(backend.to_numpy(shifted), [2, 1, 3])
    labels = backend.asarray(np.array([10.0, 20.0, 30.0]))
    mapped = backend.call(onecold, y, labels)
    np.testing.assert_array_equal(backend.to_numpy(mapped), [20.0, 10.0, 30.0])
    b = backend.asarray(np.array([[False, True], [True, False]]))
    np.testing.assert_array_equal(backend.to_numpy(backend.call(onecold, b)), [1, 0])


def test_onecold_python_labels_from_backend_arrays(eager_backend):
    y = eager_backend.asarray(np.eye(3)[[2, 0]])
    assert onecold(y, ["a", "b", "c"]).tolist() == ["c", "a"]
    assert onecold(eager_backend.asarray(np.array([0.0, 1.0])), "xy") == "y"


def test_onecold_jit_one_dimensional_returns_0d_array():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    out = jax.jit(lambda a: onecold(a, range(1, 4)))(jnp.array([0.0, 3.0, 1.0]))
    assert out.shape == () and int(out) == 2
    with pytest.raises(TypeError, match="under jit"):
        jax.jit(lambda a: onecold(a, ["a", "b", "c"]))(jnp.zeros((2, 3)))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=6, unique=True).flatmap(
    lambda labels: st.tuples(st.just(labels), st.lists(st.sampled_from(labels), max_size=10))))
def test_round_trip(case):
    labels, xs = case
    oh = onehotbatch(xs, labels)
    assert oh.sum(axis=-1).tolist() == [1] * len(xs)
    if xs:
        assert onecold(oh, labels).tolist() == xs
        assert [onecold(onehot(x, labels), labels) for x in xs] == xs


def test_exported_at_top_level():
    for name in ("onehot", "onehotbatch", "onecold"):
        assert name in fluxtrain.__all__ and getattr(fluxtrain, name) is globals()[name]


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(-3, 3), min_size=1, max_size=6),
       xs=st.lists(st.integers(-4, 4), max_size=8), use_default=st.booleans())
def test_vectorised_path_equals_elementwise_onehot(labels, xs, use_default):
    default = labels[-1] if use_default else None
    extra = () if default is None else (default,)

    def each():
        return [onehot(x, labels, *extra).tolist() for x in xs]

    try:
        expected = each()
    except ValueError as e:
        with pytest.raises(ValueError, match="not found in labels"):
            onehotbatch(np.array(xs, dtype=np.int64), labels, *extra)
        assert "is not in labels" in str(e)
        return
    got = onehotbatch(np.array(xs, dtype=np.int64), labels, *extra)  # numeric, vectorised
    objs = np.empty(len(xs), dtype=object)
    objs[:] = [str(x) for x in xs]
    by_host = onehotbatch(objs, [str(v) for v in labels], *(str(d) for d in extra))
    assert got.reshape(len(xs), len(labels)).tolist() == expected
    assert by_host.reshape(len(xs), len(labels)).tolist() == expected


def test_docstring_examples():
    import doctest
    import importlib
    mod = importlib.import_module("fluxtrain.onehot")  # the attribute is the function
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 6
