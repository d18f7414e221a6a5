"""The backend layer's helpers that the optimiser walker relies on every step."""
from __future__ import annotations

import numpy as np
import pytest

import fluxtrain as ft
from fluxtrain._backend import device_of, placement


def test_placement_is_a_cheap_stand_in_for_the_device(eager_backend):
    """Equal placements mean the same device; placements are hashable (group keys)."""
    a = eager_backend.asarray(np.zeros(3), "float32")
    b = eager_backend.asarray(np.ones((2, 2)), "float64")
    assert placement(a) == placement(b)
    assert hash(placement(a)) == hash(placement(b))
    assert device_of(a) == device_of(b)
    assert placement(3.0) is None  # not an array: unknown


def test_placement_of_torch_parameters_and_jax_tracers():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(2))
    assert placement(p) == placement(torch.zeros(3)) == "cpu"
    if torch.device("meta").type == "meta":
        assert placement(torch.zeros(2, device="meta")) == torch.device("meta")
    jax = pytest.importorskip("jax")
    seen = []
    jax.jit(lambda z: seen.append(placement(z)) or z)(jax.numpy.zeros(2))
    assert seen == [None]  # a tracer's device is unknown


def test_gradient_on_another_device_is_refused_before_any_change():
    torch = pytest.importorskip("torch")
    model = {"w": torch.zeros(3)}
    state = ft.setup(ft.Adam(0.1), model)
    with pytest.raises(ValueError, match="the gradient is on meta, the parameter on cpu"):
        ft.update_(state, model, {"w": torch.ones(3, device="meta")})
    assert torch.equal(model["w"], torch.zeros(3))
    assert torch.equal(state["w"].state[0], torch.zeros(3))



@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "complex64"])
def test_traced_minus_is_the_same_bits_as_a_subtraction(dtype):
    """``minus`` under jax.jit (``x + delta * -1`` for real floats) against ``x - delta``
    for every pair of special values: zeros of both signs, infinities, the largest finite
    (overflow), the smallest subnormal, NaN."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from fluxtrain._backend import minus
    if dtype == "float64" and not jax.config.jax_enable_x64:
        pytest.skip("float64 needs jax_enable_x64")
    fi = jnp.finfo(dtype)
    special = [0.0, 1.0, 7.0, np.inf, float(fi.max), float(fi.smallest_subnormal), 1.5, np.nan]
    special += [-v for v in special]
    a, b = np.meshgrid(np.array(special), np.array(special))
    x, d = jnp.asarray(a.ravel(), dtype), jnp.asarray(b.ravel(), dtype)
    if dtype == "complex64":
        x, d = x + 1j * d[::-1], d - 1j * x
    got = np.asarray(jax.jit(minus)(x, d))
    want = np.asarray(jax.jit(lambda x, d: x - d)(x, d))
    assert got.dtype == want.dtype
    for part in (np.real, np.imag):  # float64 holds every value of these exactly
        g, w = part(got).astype(np.float64), part(want).astype(np.float64)
        np.testing.assert_array_equal(g, w)  # NaN where NaN
        num = ~np.isnan(w)
        assert np.array_equal(np.signbit(g[num]), np.signbit(w[num]))  # -0.0 where -0.0



def test_traced_minus_is_written_with_a_broadcast():
    """XLA:CPU runs a fusion with no broadcast in it 1.3× slower (``minus``'s docstring):
    traced real floats take ``x + delta * -1``; eager arrays and complex ones one operation."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from fluxtrain._backend import minus

    def prims(dtype):
        z = jnp.zeros(4, dtype)
        return [e.primitive.name for e in jax.make_jaxpr(minus)(z, z).jaxpr.eqns]
    assert prims("float32") == ["mul", "add"]
    assert prims("bfloat16") == ["mul", "add"]
    assert prims("complex64") == ["sub"]
    x = jnp.ones(3)
    assert np.array_equal(minus(x, x), np.zeros(3))
    # both places that write x - delta: the walker (jit(update)) and update_'s programs
    model, grad = {"w": jnp.ones(5)}, {"w": jnp.ones(5)}
    eqns = jax.make_jaxpr(ft.update)(ft.setup(ft.Momentum(), model), model, grad).jaxpr.eqns
    assert "sub" not in [e.primitive.name for e in eqns]
    from fluxtrain._backend import fast_jax
    assert [e.primitive.name for e in jax.make_jaxpr(fast_jax._new_x)(x, x).jaxpr.eqns] == ["mul", "add"]
    assert minus(np.ones(2), np.ones(2)).tolist() == [0.0, 0.0]
