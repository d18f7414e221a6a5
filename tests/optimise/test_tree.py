"""State trees: containers, modules, pytrees, ties, frozen leaves, bad input, save/load."""
from __future__ import annotations

import dataclasses
from collections import namedtuple

import numpy as np
import pytest

import fluxtrain as ft
from fluxtrain.optimise.tree import format_path, module_tree

Layer = namedtuple("Layer", "weight bias")


@dataclasses.dataclass
class Net:
    layers: list
    scale: float = 2.0
    steps: np.ndarray = dataclasses.field(default_factory=lambda: np.arange(3))


def _net(b):
    return Net([Layer(b.asarray(np.ones((2, 3))), b.asarray(np.zeros(2))),
                Layer(b.asarray(np.full((1, 2), 0.5)), b.asarray(np.zeros(1)))])


def _grad(b, fill=1.0):
    return Net([Layer(b.asarray(np.full((2, 3), fill)), b.asarray(np.full(2, fill))),
                Layer(b.asarray(np.full((1, 2), fill)), None)], None, None)


def test_nested_containers_and_untouched_non_trainables(eager_backend):
    b = eager_backend
    model = _net(b)
    state = ft.setup(ft.Descent(0.5), model)
    assert state["scale"] is None and state["steps"] is None
    assert isinstance(state["layers"][0], Layer)
    state, model = ft.update_(state, model, _grad(b))
    np.testing.assert_array_equal(b.to_numpy(model.layers[0].weight), np.full((2, 3), 0.5))
    np.testing.assert_array_equal(b.to_numpy(model.layers[1].bias), [0.0])  # None grad: skipped
    assert model.scale == 2.0 and np.array_equal(b.to_numpy(model.steps), [0, 1, 2])


def test_integer_parameters_untouched():
    m = {"w": np.array([1.0, 2.0]), "idx": np.array([3, 4])}
    s = ft.setup(ft.Adam(), m)
    assert s["idx"] is None
    ft.update_(s, m, {"w": np.ones(2), "idx": np.array([1, 1])})  # Optimisers: ignored
    np.testing.assert_array_equal(m["idx"], [3, 4])


def test_no_trainable_warns():
    with pytest.warns(UserWarning, match="no trainable parameters"):
        ft.setup(ft.Adam(), {"n": 3, "i": np.arange(2)})


def test_tied_weights_share_leaf_and_sum_grads(eager_backend):
    b = eager_backend
    w = b.asarray(np.ones(3))
    model = {"enc": w, "dec": w, "other": b.asarray(np.ones(3))}
    state = ft.setup(ft.Descent(0.1), model)
    assert state["enc"] is state["dec"]
    g = {"enc": b.asarray(np.full(3, 1.0)), "dec": b.asarray(np.full(3, 2.0)), "other": None}
    state, model = ft.update_(state, model, g)
    np.testing.assert_allclose(b.to_numpy(model["enc"]), np.full(3, 1 - 0.1 * 3.0))
    assert model["enc"] is model["dec"]
    assert len(ft.flatten_state(state)) == 0  # Descent keeps no state
    s2 = ft.setup(ft.Momentum(), model)
    assert len(ft.flatten_state(s2)) == 2


def test_frozen_tree_is_skipped(eager_backend):
    b = eager_backend
    model = _net(b)
    state = ft.setup(ft.Momentum(0.1), model)
    ft.freeze_(state)
    before = [b.to_numpy(l.weight).copy() for l in model.layers]
    state2, model2 = ft.update(state, model, _grad(b))
    state, model = ft.update_(state, model, _grad(b))
    for l, l2, w in zip(model.layers, model2.layers, before):
        np.testing.assert_array_equal(b.to_numpy(l.weight), w)
        np.testing.assert_array_equal(b.to_numpy(l2.weight), w)
    ft.thaw_(state["layers"][1])
    state, model = ft.update_(state, model, _grad(b))
    np.testing.assert_array_equal(b.to_numpy(model.layers[0].weight), before[0])
    assert not np.array_equal(b.to_numpy(model.layers[1].weight), before[1])


def test_rule_instead_of_state():
    m = {"w": np.ones(2)}
    with pytest.raises(ft.ArgumentError, match=r"setup\(rule, model\)"):
        ft.update_(ft.Adam(), m, {"w": np.ones(2)})
    with pytest.raises(ft.ArgumentError, match="Invalid input to `update`"):
        ft.update(ft.Adam(), m, {"w": np.ones(2)})
    with pytest.raises(ft.ArgumentError, match="instance"):
        ft.setup(ft.Adam, m)


def _assert_unchanged(state, model, ref_w, ref_m):
    np.testing.assert_array_equal(model.layers[0].weight, ref_w)
    np.testing.assert_array_equal(state["layers"][0].weight.state, ref_m)


@pytest.mark.parametrize("bad,match", [
    ("shape", r"layers\[1\]\.weight.*shape"),
    ("length", r"layers.*length"),
    ("keys", r"keys"),
    ("dtype", r"layers\[1\]\.bias.*dtype"),
    ("type", r"layers\[1\]\.weight.*gradient array"),
    ("library", r"layers\[1\]\.weight.*array library"),
])
def test_bad_gradients_name_the_path_and_change_nothing(bad, match):
    model = Net([Layer(np.ones((2, 3)), np.zeros(2)), Layer(np.full((1, 2), 0.5), np.zeros(1))])
    state = ft.setup(ft.Momentum(0.1), model)
    ft.update_(state, model, Net([Layer(np.ones((2, 3)), np.ones(2)), Layer(np.ones((1, 2)), np.ones(1))], None, None))
    ref_w, ref_m = model.layers[0].weight.copy(), state["layers"][0].weight.state.copy()
    good0 = Layer(np.ones((2, 3)), np.ones(2))
    if bad == "shape":
        g = Net([good0, Layer(np.ones((2, 1)), np.ones(1))], None, None)
    elif bad == "length":
        g = Net([good0], None, None)
    elif bad == "keys":
        g = {"layers": [good0, None], "scale": None, "extra": None}
    elif bad == "dtype":
        g = Net([good0, Layer(np.ones((1, 2)), np.ones(1, complex))], None, None)
    elif bad == "type":
        g = Net([good0, Layer("oops", None)], None, None)
    else:
        torch = pytest.importorskip("torch")
        g = Net([good0, Layer(torch.ones(1, 2, dtype=torch.float64), None)], None, None)
    with pytest.raises((ValueError, TypeError), match=match):
        ft.update_(state, model, g)
    _assert_unchanged(state, model, ref_w, ref_m)


def test_model_structure_changed():
    state = ft.setup(ft.Adam(), {"a": np.ones(2), "b": [np.ones(2)]})
    with pytest.raises(ValueError, match=r"`b`"):
        ft.update_(state, {"a": np.ones(2), "b": np.ones(2)}, {"a": np.ones(2), "b": np.ones(2)})


def test_int_grads_for_float32_are_converted():
    m = {"x": np.array([1.0], np.float32)}
    s = ft.setup(ft.Descent(0.5), m)
    ft.update_(s, m, {"x": np.array([1])})
    assert m["x"].dtype == np.float32 and m["x"][0] == 0.5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_clipnorm_nan_raises_and_changes_nothing(eager_backend):
    b = eager_backend
    model = {"a": b.asarray(np.ones(2)), "b": b.asarray(np.ones(2))}
    state = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam()), model)
    with pytest.raises(ft.DomainError, match="norm"):
        ft.update_(state, model, {"a": b.asarray(np.ones(2)), "b": b.asarray([np.nan, 1.0])})
    np.testing.assert_array_equal(b.to_numpy(model["a"]), [1.0, 1.0])
    assert float(b.to_numpy(state["a"].state[1][2][0])) == 0.9  # beta powers not advanced
    # throw=False: the NaN goes through
    state = ft.setup(ft.ClipNorm(1.0, throw=False), model)
    _, m2 = ft.update(state, model, {"a": b.asarray([np.inf, 1.0]), "b": None})
    assert np.isnan(b.to_numpy(m2["a"])).any()


def test_clipnorm_values():
    x = np.zeros(2)
    g = np.array([3.0, 4.0])
    for p, nrm in [(2, 5.0), (1, 7.0), (np.inf, 4.0), (0, 2.0), (3, (27 + 64) ** (1 / 3))]:
        _, y = ft.update(ft.setup(ft.ClipNorm(1.0, p), x), x, g)
        np.testing.assert_allclose(-y, g / nrm, rtol=1e-14)
    _, y = ft.update(ft.setup(ft.ClipNorm(10.0), x), x, g)
    np.testing.assert_array_equal(-y, g)


def test_format_path():
    assert format_path(("layers", 1, "weight")) == "layers[1].weight"
    assert format_path(("0", "bias")) == "[0].bias"
    assert format_path(()) == "<root>"


def test_torch_module_state_and_dot_grad():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    net[2].weight = net[0].weight.T.contiguous().T if False else net[2].weight
    state = ft.setup(ft.Adam(0.01), net)
    assert set(state) == {"0", "1", "2"} and set(state["0"]) == {"weight", "bias"} and state["1"] == {}
    ref = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    ref.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(ref.parameters(), lr=0.01, eps=1e-8)
    x = torch.randn(5, 3)
    for _ in range(3):
        for m in (net, ref):
            m.zero_grad()
            m(x).pow(2).sum().backward()
        w = net[0].weight
        s2, n2 = ft.update(state, net, module_tree(net, lambda p: p.grad))
        assert n2 is not net and net[0].weight is w
        state, out = ft.update_(state, net)
        assert out is net and net[0].weight is w
        opt.step()
        torch.testing.assert_close(n2[0].weight, net[0].weight)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_torch_tied_module_weights():
    torch = pytest.importorskip("torch")
    emb = torch.nn.Embedding(5, 3)
    out = torch.nn.Linear(3, 5, bias=False)
    out.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "out": out})
    state = ft.setup(ft.Descent(0.1), model)
    assert state["emb"]["weight"] is state["out"]["weight"]
    before = emb.weight.detach().clone()
    g = {"emb": {"weight": torch.ones(5, 3)}, "out": {"weight": torch.full((5, 3), 2.0)}}
    ft.update_(state, model, g)
    torch.testing.assert_close(emb.weight.detach(), before - 0.3)


def test_equinox_module_and_jit_no_recompile():
    jax = pytest.importorskip("jax")
    eqx = pytest.importorskip("equinox")
    import jax.numpy as jnp
    mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0))
    x = jnp.ones((3,))
    loss = lambda m: jnp.sum(m(x) ** 2)  # noqa: E731
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    state = ft.setup(ft.Adam(0.01), params)

    @jax.jit
    def step(state, params):
        g = jax.grad(lambda p: loss(eqx.combine(p, static)))(params)
        return ft.update(state, params, g)

    l0 = loss(mlp)
    for _ in range(5):
        state, params = step(state, params)
    assert step._cache_size() == 1
    assert loss(eqx.combine(params, static)) < l0
    # eager update_ on the whole module (functions and ints inside are left alone)
    st = ft.setup(ft.Descent(0.1), mlp)
    g = eqx.filter_grad(loss)(mlp)
    st, mlp2 = ft.update_(st, mlp, g)
    assert loss(mlp2) < l0 and isinstance(mlp2, eqx.nn.MLP)


def test_jit_accumgrad_and_radam_match_eager():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    rule = ft.OptimiserChain(ft.ClipNorm(5.0), ft.AccumGrad(3), ft.RAdam(0.1))
    m = {"w": jnp.asarray(np.linspace(-1, 1, 4))}
    gs = [{"w": jnp.asarray(np.full(4, 0.1 * i - 0.3))} for i in range(8)]
    s1 = s2 = ft.setup(rule, m)
    m1 = m2 = m
    f = jax.jit(ft.update)
    for g in gs:
        s1, m1 = ft.update(s1, m1, g)
        s2, m2 = f(s2, m2, g)
        np.testing.assert_allclose(np.asarray(m1["w"]), np.asarray(m2["w"]), rtol=1e-13)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_load_resume_bit_identical(tmp_path, eager_backend, suffix):
    b = eager_backend
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    rule = ft.OptimiserChain(ft.AccumGrad(2), ft.RAdam(0.01))
    rng = np.random.default_rng(1)
    gs = [{"w": rng.standard_normal(3), "b": [rng.standard_normal(2)]} for _ in range(10)]
    tob = lambda g: {"w": b.asarray(g["w"], "float32"), "b": [b.asarray(g["b"][0], "float32")]}  # noqa: E731
    fresh = lambda: {"w": b.asarray(np.ones(3), "float32"), "b": [b.asarray(np.zeros(2), "float32")]}  # noqa: E731
    m1 = fresh()
    s1 = ft.setup(rule, m1)
    for g in gs:
        s1, m1 = ft.update_(s1, m1, tob(g))
    m2 = fresh()
    s2 = ft.setup(rule, m2)
    for g in gs[:5]:
        s2, m2 = ft.update_(s2, m2, tob(g))
    path = tmp_path / f"opt{suffix}"
    ft.save_state(path, s2)
    saved_model = {k: np.asarray(b.to_numpy(v)).copy() for k, v in {"w": m2["w"], "b": m2["b"][0]}.items()}
    m3 = {"w": b.asarray(saved_model["w"]), "b": [b.asarray(saved_model["b"])]}
    s3 = ft.load_state(path, ft.setup(rule, m3))
    for g in gs[5:]:
        s3, m3 = ft.update_(s3, m3, tob(g))
    np.testing.assert_array_equal(b.to_numpy(m3["w"]), b.to_numpy(m1["w"]))
    np.testing.assert_array_equal(b.to_numpy(m3["b"][0]), b.to_numpy(m1["b"][0]))
    flat = ft.flatten_state(s3)
    assert "w:0.1" in flat and "b[0]:1.3" in flat


def test_load_state_errors(tmp_path):
    s = ft.setup(ft.Adam(), {"w": np.ones(3)})
    with pytest.raises(ft.ArgumentError, match="no entry"):
        ft.unflatten_state(s, {})
    with pytest.raises(ft.ArgumentError, match="shape"):
        ft.unflatten_state(s, {k: np.ones(7) for k in ft.flatten_state(s)})


def test_mixed_precision_keeps_master_copy():
    x = np.ones(3, np.float16)
    s = ft.setup(ft.MixedPrecision(ft.Descent(1e-4)), x)
    for _ in range(10):
        ft.update_(s, x, np.ones(3, np.float16))
    assert x.dtype == np.float16 and s.state[0].dtype == np.float32
    np.testing.assert_allclose(s.state[0], 1 - 10 * np.float32(1e-4), rtol=1e-6)
    # plain float16 descent would not move at all (1 - 1e-4 rounds back to 1)
    y = np.ones(3, np.float16)
    ft.update_(ft.setup(ft.Descent(1e-4), y), y, np.ones(3, np.float16))
    assert y[0] == 1


def test_update_without_grad_needs_torch():
    with pytest.raises(ft.ArgumentError, match=r"\.grad"):
        ft.update_(ft.setup(ft.Adam(), {"w": np.ones(2)}), {"w": np.ones(2)})


def test_torch_tensors_in_dict_read_dot_grad():
    torch = pytest.importorskip("torch")
    w = torch.ones(3, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)  # no .grad: skipped
    (w * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    model = {"w": w, "b": b}
    state = ft.setup(ft.Descent(0.5), model)
    ft.update_(state, model)
    torch.testing.assert_close(w.detach(), torch.tensor([0.5, 0.0, -0.5]))
    assert model["w"] is w and not w.grad_fn and b.detach().sum() == 0


def test_read_only_numpy_is_rebound_not_written():
    ro = np.ones(3)
    ro.flags.writeable = False
    model = [ro, (np.ones(2),)]
    state = ft.setup(ft.Descent(0.5), model)
    state, out = ft.update_(state, model, [np.ones(3), (np.ones(2),)])
    assert out is model and model[0] is not ro and ro[0] == 1.0
    np.testing.assert_array_equal(model[0], [0.5] * 3)
    np.testing.assert_array_equal(model[1][0], [0.5] * 2)


try:
    from hypothesis import given, settings, strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    from tests.optimise.rules_list import ALL_RULES

    @settings(max_examples=15, deadline=None)
    @given(rule=st.sampled_from(ALL_RULES),
           shapes=st.lists(st.lists(st.integers(1, 3), min_size=0, max_size=2), min_size=1, max_size=3),
           seed=st.integers(0, 2 ** 16))
    def test_property_update_equals_update_in_place(rule, shapes, seed):
        rng = np.random.default_rng(seed)
        model = {f"p{i}": np.asarray(rng.standard_normal(tuple(s))) for i, s in enumerate(shapes)}
        model["nested"] = [rng.standard_normal(2), 3]
        grads = [{k: (np.asarray(rng.standard_normal(np.shape(v))) if k != "nested" else [rng.standard_normal(2), None])
                  for k, v in model.items()} for _ in range(3)]
        s1, m1 = ft.setup(rule, model), model
        m2 = {k: (v.copy() if k != "nested" else [v[0].copy(), 3]) for k, v in model.items()}
        s2 = ft.setup(rule, m2)
        for g in grads:
            s1, m1 = ft.update(s1, m1, g)
            s2, m2 = ft.update_(s2, m2, g)
        for k in model:
            a, b = (m1[k], m2[k]) if k != "nested" else (m1[k][0], m2[k][0])
            np.testing.assert_array_equal(a, b)
        assert all(np.array_equal(x, y) for x, y in zip(ft.flatten_state(s1).values(), ft.flatten_state(s2).values()))


@dataclasses.dataclass(frozen=True)
class _Halve(ft.Rule):
    """A rule defined outside the package: x <- x - eta*g/2, counting its steps."""

    eta: float = 1.0

    def init(self, x):
        return np.zeros((), dtype=np.int64) if isinstance(x, np.ndarray) else None

    def apply(self, state, x, g):
        return (None if state is None else state + 1), g * (self.eta / 2)


def test_new_rule_needs_no_tree_code(tmp_path):
    m = {"a": np.ones(2), "b": [np.ones(3)]}
    s = ft.setup(ft.OptimiserChain(_Halve(), ft.Descent(1.0)), m)
    s, m = ft.update_(s, m, {"a": np.ones(2), "b": [np.ones(3)]})
    np.testing.assert_array_equal(m["a"], [0.5, 0.5])
    s = ft.adjust(s, 0.5)
    s, m = ft.update_(s, m, {"a": np.ones(2), "b": [np.ones(3)]})
    np.testing.assert_array_equal(m["b"][0], [0.375] * 3)  # 0.5 - 0.5*0.5*0.5
    ft.save_state(tmp_path / "s.npz", s)
    s2 = ft.load_state(tmp_path / "s.npz", ft.setup(ft.OptimiserChain(_Halve(), ft.Descent(1.0)), m))
    assert int(s2["a"].state[0]) == 2


def test_fast_kernel_dispatch_and_fallback():
    from fluxtrain._backend import fast
    calls = []

    def kernel(rules, states, xs, gs, *, inplace):
        calls.append((len(xs), inplace))
        if len(xs) == 1:
            return NotImplemented  # falls back to the reference loop
        return [(s, g * 0) for s, g in zip(states, gs)]  # a "kernel" that freezes everything

    fast.register(("update_", _Halve), "numpy")(kernel)
    try:
        m = {"a": np.ones(2), "b": np.ones(2)}
        s = ft.setup(_Halve(), m)
        ft.update_(s, m, {"a": np.ones(2), "b": np.ones(2)})
        assert calls == [(2, True)] and m["a"][0] == 1.0
        ft.update(s, m, {"a": np.ones(2), "b": None})
        assert calls[-1] == (1, False)
        with fast.disabled():
            ft.update_(s, m, {"a": np.ones(2), "b": np.ones(2)})
        assert len(calls) == 2 and m["a"][0] == 0.5
    finally:
        fast._REGISTRY.pop((("update_", _Halve), "numpy"), None)


def test_tied_jax_arrays_survive_jit():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    w = jnp.asarray(np.linspace(-1, 1, 3))
    model = {"enc": w, "dec": w, "other": jnp.ones(2)}
    state = ft.setup(ft.Adam(0.1), model)
    assert state["enc"] is state["dec"] and state["enc"].tie is not None and state["other"].tie is None
    grads = [{"enc": jnp.full(3, 0.1 * i), "dec": jnp.full(3, 1.0 - 0.2 * i), "other": None} for i in range(4)]
    s1, m1 = state, model
    s2, m2 = state, model
    step = jax.jit(ft.update)
    sizes = []
    for g in grads:
        s1, m1 = ft.update(s1, m1, g)
        s2, m2 = step(s2, m2, g)
        sizes.append(step._cache_size())  # jit caches per function: count new entries only
    assert s1["enc"] is s1["dec"]
    np.testing.assert_allclose(np.asarray(m2["enc"]), np.asarray(m1["enc"]), rtol=1e-13)
    np.testing.assert_array_equal(np.asarray(m2["enc"]), np.asarray(m2["dec"]))
    np.testing.assert_array_equal(np.asarray(s2["enc"].state[0]), np.asarray(s2["dec"].state[0]))
    assert sizes[-1] == sizes[0]  # the second and later jitted steps did not recompile


def test_dict_grad_may_omit_non_trainable_fields():
    model = Net([Layer(np.ones((2, 3)), np.zeros(2))])
    state = ft.setup(ft.Descent(0.5), model)
    ft.update_(state, model, {"layers": [{"weight": np.ones((2, 3)), "bias": np.ones(2)}]})
    np.testing.assert_array_equal(model.layers[0].bias, [-0.5, -0.5])
    with pytest.raises(ValueError, match="missing"):
        ft.update_(state, model, {"layers": [{"weight": np.ones((2, 3))}]})
