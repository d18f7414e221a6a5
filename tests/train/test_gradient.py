"""``gradient`` / ``withgradient`` on PyTorch and JAX, including Flux's docstring values."""
from __future__ import annotations

import dataclasses
import operator
from typing import NamedTuple

import numpy as np
import pytest

from fluxtrain import ArgumentError, gradient, withgradient
from tests.util import HAVE_JAX, HAVE_TORCH, REFERENCE, assert_close, reference_entries


# The docstring vectors of flux-semantics.md §6.1 (the JSON's Flux.gradient / Flux.withgradient
# entries), used when the JSON file is not beside the checkout.
_INLINE = [
    {"fn": "Flux.gradient", "args": ["*", 2.0, 3.0, 5.0], "expected": [15.0, 10.0, 6.0]},
    {"fn": "Flux.gradient", "args": ["x -> sum(abs2, x)", [7.0, 11.0, 13.0]], "expected": [[14.0, 22.0, 26.0]]},
    {"fn": "Flux.withgradient", "args": ["/", 1, 2], "expected": {"val": 0.5, "grad": [0.5, -0.25]}},
    {"fn": "Flux.withgradient", "args": ["x -> (sum(1 ./ x), 1 ./ x)", [1, 2, 4]],
     "expected": {"val": [1.75, [1.0, 0.5, 0.25]], "grad": [[-1.0, -0.25, -0.0625]]}},
]

AD_LIBS = [pytest.param("torch", marks=pytest.mark.skipif(not HAVE_TORCH, reason="no torch")),
           pytest.param("jax", marks=pytest.mark.skipif(not HAVE_JAX, reason="no jax"))]


def _ref_entries(fn: str) -> list[dict]:
    return reference_entries(fn) if REFERENCE.exists() else [e for e in _INLINE if e["fn"] == fn]


def test_inline_vectors_match_the_json():
    if not REFERENCE.exists():
        pytest.skip("flux-vectors.json not available (the inline copy is used)")
    got = reference_entries("Flux.gradient", "Flux.withgradient")
    assert [(e["args"], e["expected"]) for e in got] == [(e["args"], e["expected"]) for e in _INLINE]


# The Julia functions named in the JSON entries, written in Python.
_FUNCS = {
    "*": lambda *xs: xs[0] * xs[1] * xs[2],
    "/": operator.truediv,
    "x -> sum(abs2, x)": lambda x: (x * x).sum(),
    "x -> (sum(1 ./ x), 1 ./ x)": lambda x: ((1 / x).sum(), 1 / x),
}


def _arg(backend, a):
    """JSON argument -> Python float or a float64 array (Julia Int args become floats:
    fluxtrain treats integers as constants, see the docstring of ``gradient``)."""
    if isinstance(a, list):
        return backend.asarray(a, "float64")
    return float(a)


def _lib(backend_name):
    from tests.util import Backend
    return Backend(backend_name)


def _cases(b, fn: str) -> list[tuple]:
    """(function, arguments on backend ``b``, expected) for each reference entry ``fn``."""
    entries = _ref_entries(fn)
    assert entries
    return [(_FUNCS[e["args"][0]], [_arg(b, a) for a in e["args"][1:]], e["expected"]) for e in entries]


@pytest.mark.parametrize("lib", AD_LIBS)
def test_flux_vectors_gradient(lib):
    b = _lib(lib)
    for f, args, expected in _cases(b, "Flux.gradient"):
        g = gradient(f, *args, backend=lib)
        assert len(g) == len(args)
        if all(isinstance(a, float) for a in args):
            assert g == tuple(expected)  # "==" in the JSON: exact
            assert all(type(x) is float for x in g)
        else:
            for gi, exp in zip(g, expected):
                np.testing.assert_array_equal(b.to_numpy(gi), np.asarray(exp))


@pytest.mark.parametrize("lib", AD_LIBS)
def test_flux_vectors_withgradient(lib):
    b = _lib(lib)
    for f, args, exp in _cases(b, "Flux.withgradient"):
        r = withgradient(f, *args, backend=lib)
        assert r.val is r[0] and r.grad is r[1]
        if isinstance(exp["val"], list):  # auxiliary output: (value, aux array)
            assert float(r.val[0]) == exp["val"][0]
            np.testing.assert_array_equal(b.to_numpy(r.val[1]), np.asarray(exp["val"][1]))
            np.testing.assert_array_equal(b.to_numpy(r.grad[0]), np.asarray(exp["grad"][0]))
        else:
            assert r.val == exp["val"] and r.grad == tuple(exp["grad"])


def test_flux_docstring_int_argument_is_constant(ad_backend):
    # Flux: f(x, y, d) = sum(x.^size(x,d) .+ y) at ([7, 11], 0, 1) -> ([14, 22], 2.0, nothing)
    x = ad_backend.asarray([7.0, 11.0], "float64")

    def f(x, y, d):
        return (x ** x.shape[d - 1] + y).sum()

    g = ad_backend.call(lambda x: gradient(f, x, 0.0, 1), x) if ad_backend.jit else gradient(f, x, 0.0, 1)
    np.testing.assert_array_equal(ad_backend.to_numpy(g[0]), [14.0, 22.0])
    assert float(g[1]) == 2.0
    assert g[2] is None


def test_dtype_and_shape_preserved(ad_backend):
    x = ad_backend.asarray([[1.0, 2.0], [3.0, 4.0]], "float32")
    g = gradient(lambda x: (x * x).sum(), x)[0]
    assert tuple(g.shape) == (2, 2)
    assert_close(g, [[2.0, 4.0], [6.0, 8.0]], dtype="float32")


def test_under_jax_jit():
    if not HAVE_JAX:
        pytest.skip("no jax")
    import jax
    import jax.numpy as jnp
    x = jnp.asarray([1.0, 2.0, 3.0])
    g = jax.jit(lambda x: gradient(lambda x: (x ** 3).sum(), x)[0])(x)
    np.testing.assert_allclose(np.asarray(g), [3.0, 12.0, 27.0])


def test_integer_and_non_array_arguments_get_none(ad_backend):
    x = ad_backend.asarray([1.0, 2.0], "float64")
    idx = ad_backend.asarray([0, 1], "int64")
    g = gradient(lambda x, i, name, n: (x[i] * n).sum(), x, idx, "label", 3)
    assert_close(g[0], [3.0, 3.0])
    assert g[1] is None and g[2] is None and g[3] is None


@dataclasses.dataclass
class Affine:
    weight: object
    bias: object
    act: object = None
    name: str = "affine"


class Pair(NamedTuple):
    a: object
    b: object


def test_tree_arguments(ad_backend):
    w = ad_backend.asarray([[1.0, 2.0]], "float64")
    bias = ad_backend.asarray([0.5], "float64")
    x = ad_backend.asarray([3.0, -1.0], "float64")
    model = {"layer": Affine(w, bias), "extra": [bias, 7], "pair": Pair(w, "s")}

    def loss(m, x):
        layer = m["layer"]
        y = (layer.weight * x).sum() + layer.bias.sum()
        return y * m["extra"][0].sum() + (m["pair"].a ** 2).sum()

    g, gx = gradient(loss, model, x)
    assert set(g) == {"layer", "extra", "pair"}
    assert isinstance(g["layer"], Affine) and isinstance(g["pair"], Pair)
    assert g["layer"].act is None and g["layer"].name is None
    y = 1 * 3 + 2 * -1 + 0.5
    assert_close(g["layer"].weight, [[3 * 0.5, -1 * 0.5]])
    assert_close(g["layer"].bias, [0.5])
    assert_close(g["extra"][0], [y])
    assert g["extra"][1] is None
    assert_close(g["pair"].a, [[2.0, 4.0]])
    assert g["pair"].b is None
    assert_close(gx, [0.5, 1.0])


def test_aux_outputs(ad_backend):
    x = ad_backend.asarray([1.0, 2.0], "float64")
    r = withgradient(lambda x: ((x ** 2).sum(), {"aux": x * 10}), x)
    assert float(r.val[0]) == 5.0
    assert_close(r.val[1]["aux"], [10.0, 20.0])
    assert_close(r.grad[0], [2.0, 4.0])
    # dict output: gradient of the first value (Flux: NamedTuple -> first field)
    r = withgradient(lambda x: {"loss": x.sum() * 3, "n": 2}, x)
    assert float(r.val["loss"]) == 9.0 and r.val["n"] == 2
    assert_close(r.grad[0], [3.0, 3.0])


def test_non_scalar_output_is_an_error(ad_backend):
    x = ad_backend.asarray([1.0, 2.0], "float64")
    with pytest.raises(ArgumentError, match="real scalar"):
        gradient(lambda x: x * 2, x)
    with pytest.raises(ArgumentError, match="real scalar"):
        gradient(lambda x: ("loss", x.sum()), x)


def test_numpy_and_no_array_errors():
    with pytest.raises(TypeError, match="PyTorch tensors and JAX arrays"):
        gradient(lambda x: (x ** 2).sum(), np.ones(3))
    with pytest.raises(TypeError, match="backend='torch' or backend='jax'"):
        gradient(operator.mul, 2.0, 3.0)
    with pytest.raises(ArgumentError, match="backend must be"):
        gradient(operator.mul, 2.0, 3.0, backend="numpy")


@pytest.mark.skipif(not (HAVE_TORCH and HAVE_JAX), reason="needs torch and jax")
def test_mixed_backends_error():
    import jax.numpy as jnp
    import torch
    with pytest.raises(TypeError, match="mix PyTorch and JAX"):
        gradient(lambda a, b: a.sum(), torch.ones(2), jnp.ones(2))
    with pytest.raises(ArgumentError, match="backend='jax'"):
        gradient(lambda a: a.sum(), torch.ones(2), backend="jax")


# ----------------------------------------------------------------- torch specifics

if HAVE_TORCH:
    import torch


@pytest.mark.skipif(not HAVE_TORCH, reason="no torch")
def test_torch_module_gradient_tree_and_no_side_effects():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    m[2].bias.requires_grad_(False)  # frozen the torch way -> None
    x = torch.randn(5, 3)
    flags = [p.requires_grad for p in m.parameters()]
    g, gx = gradient(lambda m, x: (m(x) ** 2).sum(), m, x)
    assert set(g) == {"0", "1", "2"} and g["1"] == {}
    assert g["2"]["bias"] is None
    # the same numbers torch's own backward gives
    m.zero_grad()
    xx = x.clone().requires_grad_(True)
    (m(xx) ** 2).sum().backward()
    torch.testing.assert_close(g["0"]["weight"], m[0].weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(g["2"]["weight"], m[2].weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(gx, xx.grad, rtol=0, atol=0)
    # gradient() itself leaves .grad and requires_grad alone
    m.zero_grad(set_to_none=True)
    gradient(lambda m: m(x).sum(), m)
    assert all(p.grad is None for p in m.parameters())
    assert [p.requires_grad for p in m.parameters()] == flags
    assert not x.requires_grad and x.grad is None


@pytest.mark.skipif(not HAVE_TORCH, reason="no torch")
def test_torch_tied_parameter_counted_once():
    a, b = torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False)
    b.weight = a.weight  # one Parameter in two modules
    model = torch.nn.ModuleDict({"a": a, "b": b})
    x = torch.tensor([1.0, 2.0])
    g = gradient(lambda m: m["a"](x).sum() + m["b"](x).sum(), model)[0]
    tie = [g["a"]["weight"], g["b"]["weight"]]
    total = sum(t for t in tie if t is not None)
    torch.testing.assert_close(total, 2 * x.expand(2, 2))
    assert sum(t is None for t in tie) == 1


@pytest.mark.skipif(not HAVE_TORCH, reason="no torch")
def test_torch_val_detached_and_inside_no_grad():
    x = torch.tensor([1.0, 2.0])
    with torch.no_grad():
        r = withgradient(lambda x: ((x ** 2).sum(), x * 2), x)
    assert not r.val[0].requires_grad and not r.val[1].requires_grad
    torch.testing.assert_close(r.grad[0], torch.tensor([2.0, 4.0]))


@pytest.mark.skipif(not HAVE_JAX, reason="no jax")
def test_equinox_module_gradient():
    eqx = pytest.importorskip("equinox")
    import jax
    import jax.numpy as jnp
    lin = eqx.nn.Linear(2, 1, key=jax.random.key(0))
    x = jnp.asarray([1.0, -2.0])
    g = gradient(lambda m: m(x).sum(), lin)[0]
    assert type(g) is type(lin)
    np.testing.assert_allclose(np.asarray(g.weight), [[1.0, -2.0]])
    np.testing.assert_allclose(np.asarray(g.bias), [1.0])


# ----------------------------------------------------------------- properties

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(xs=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=6),
       c=st.floats(-2, 2, allow_nan=False))
def test_property_polynomial_gradient_on_both_backends(xs, c):
    # d/dx sum(c*x^3 + x) = 3c x^2 + 1; d/dc = sum(x^3), on every AD backend available
    x = np.asarray(xs)
    expected_x, expected_c = 3 * c * x ** 2 + 1, float(np.sum(x ** 3))
    for lib in [n for n, ok in (("torch", HAVE_TORCH), ("jax", HAVE_JAX)) if ok]:
        from tests.util import Backend
        xb = Backend(lib).asarray(x, "float64")
        gx, gc = gradient(lambda x, c: (c * x ** 3 + x).sum(), xb, c)
        np.testing.assert_allclose(Backend(lib).to_numpy(gx), expected_x, rtol=1e-12, atol=1e-12)
        assert type(gc) is float
        np.testing.assert_allclose(gc, expected_c, rtol=1e-12, atol=1e-12)
