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
