"""The per-type memos of the update_ walk must not turn per-array facts into per-type ones."""
import numpy as np
import pytest

import fluxtrain as ft


def test_read_only_numpy_array_beside_writeable_ones_is_rebound_not_written():
    ro = np.array([1.0, 2.0])
    ro.flags.writeable = False
    model = {"a": np.array([1.0, 2.0]), "b": ro, "c": np.array([3.0])}
    a_obj = model["a"]
    state = ft.setup(ft.Descent(0.5), model)
    grad = {"a": np.ones(2), "b": np.ones(2), "c": np.ones(1)}
    for _ in range(2):  # second step runs with the memos already filled
        state, model = ft.update_(state, model, grad)
    assert model["a"] is a_obj
    np.testing.assert_array_equal(model["a"], [0.0, 1.0])
    np.testing.assert_array_equal(ro, [1.0, 2.0])  # never written
    assert model["b"] is not ro
    np.testing.assert_array_equal(model["b"], [0.0, 1.0])
    np.testing.assert_array_equal(model["c"], [2.0])


def test_bad_gradient_after_warm_steps_still_raises_before_any_write():
    model = [np.array([1.0, 2.0]), np.array([3.0])]
    state = ft.setup(ft.Momentum(), model)
    good = [np.ones(2), np.ones(1)]
    state, model = ft.update_(state, model, good)
    before = [m.copy() for m in model]
    for bad in ([np.ones(2), np.float64(1.0)], [np.ones(2), np.ones(2)], [np.ones(2), [1.0]]):
        with pytest.raises((ValueError, TypeError)):
            ft.update_(state, model, bad)
        for m, b in zip(model, before):
            np.testing.assert_array_equal(m, b)


def test_torch_requires_grad_and_2d_parameters_update_in_place():
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.ones(3, 4))
    b = torch.ones(4)
    model = [w, b]
    state = ft.setup(ft.Momentum(0.1, 0.9), model)
    grad = [torch.full((3, 4), 0.5), torch.full((4,), 0.5)]
    state, model = ft.update_(state, model, grad)
    assert model[0] is w and model[1] is b
    assert torch.allclose(w.detach(), torch.full((3, 4), 1 - 0.05))
    assert torch.allclose(b, torch.full((4,), 1 - 0.05))
