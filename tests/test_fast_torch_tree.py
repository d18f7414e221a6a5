"""The torch whole-step route for modules (``fluxtrain._backend.fast_torch_tree``): it must
give exactly what the walker gives (same dispatch, same commit: bit for bit), take the
route where it should, and leave every case it cannot vouch for to the walker, including
each thing a module's remembered structure does not pin down (tables changed since the
plan, frozen or tied Leafs, gradients of another shape or dtype, missing gradients).
"""
from __future__ import annotations

import contextlib
import copy

import pytest

import fluxtrain as ft
from fluxtrain import DimensionMismatch, DomainError
from fluxtrain._backend import fast
from tests.util import without_fast

torch = pytest.importorskip("torch")
FT = pytest.importorskip("fluxtrain._backend.fast_torch_tree")
nn = torch.nn

_KEY = ("update_module", "torch")


@pytest.fixture
def routed(monkeypatch):
    """Counts the steps the route completes (its call of the group dispatch)."""
    calls = []
    real = FT.apply_group

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(FT, "apply_group", counting)
    FT._PLANS.clear()
    return calls


def _walker_only():
    return without_fast(_KEY)


def _mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 7, bias=False), nn.Tanh(),
                         nn.Sequential(nn.Linear(7, 3), nn.BatchNorm1d(3))).to(dtype)


def _batch(i, dtype=torch.float32):
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(8, 5, generator=g, dtype=dtype)


def _loss(m, x):
    return (m(x) ** 2).mean()


RULES = {
    "Adam": lambda: ft.Adam(0.01),
    "AdamW": lambda: ft.AdamW(0.01),
    "Momentum": lambda: ft.Momentum(0.01),
    "Lion": lambda: ft.Lion(0.001),
    "Descent": lambda: ft.Descent(0.1),  # no kernel: the generic rule, committed by the route
    "Chain": lambda: ft.OptimiserChain(ft.ClipNorm(0.5), ft.WeightDecay(0.01), ft.Adam(0.01)),
    "RAdam": lambda: ft.RAdam(0.01),
}


def _run(rule, steps, *, via, walker=False, edit=None, dtype=torch.float32):
    """Train a fresh MLP ``steps`` steps; ``via`` 'grad' (withgradient's dict tree) or 'dot'
    (``.grad``); ``edit(i, model, state)`` may change things before step i."""
    model = _mlp(dtype=dtype)
    state = ft.setup(rule, model)
    ctx = _walker_only() if walker else contextlib.nullcontext()
    with ctx:
        for i in range(steps):
            if edit is not None:
                edit(i, model, state)
            x = _batch(i, dtype)
            if via == "grad":
                g = ft.gradient(lambda m: _loss(m, x), model)[0]
                state, model = ft.update_(state, model, g)
            else:
                model.zero_grad(set_to_none=True)
                _loss(model, x).backward()
                state, model = ft.update_(state, model)
    return model, state


def _same(a, b):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def _same_state(s1, s2):
    l1 = [l for _, l in ft.optimise.tree.leaves(s1)]
    l2 = [l for _, l in ft.optimise.tree.leaves(s2)]
    assert len(l1) == len(l2)
    for a, b in zip(l1, l2):
        fa = [t for t in _tensors(a.state)]
        fb = [t for t in _tensors(b.state)]
        assert len(fa) == len(fb)
        for ta, tb in zip(fa, fb):
            assert torch.equal(ta, tb)


def _tensors(s):
    if isinstance(s, torch.Tensor):
        yield s
    elif isinstance(s, (tuple, list)):
        for v in s:
            yield from _tensors(v)


@pytest.mark.parametrize("via", ["grad", "dot"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_route_equals_walker(name, via, routed):
    m1, s1 = _run(RULES[name](), 4, via=via)
    assert len(routed) == 4  # every step took the route
    m2, s2 = _run(RULES[name](), 4, via=via, walker=True)
    assert len(routed) == 4
    _same(m1, m2)
    _same_state(s1, s2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_route_dtypes(dtype, routed):
    m1, _ = _run(ft.Adam(0.01), 3, via="grad", dtype=dtype)
    m2, _ = _run(ft.Adam(0.01), 3, via="grad", dtype=dtype, walker=True)
    assert len(routed) == 3
    _same(m1, m2)


def _check_edit(edit, *, routed_steps, routed, via="grad", steps=4):
    m1, s1 = _run(ft.Adam(0.01), steps, via=via, edit=edit)
    assert len(routed) == routed_steps
    m2, s2 = _run(ft.Adam(0.01), steps, via=via, edit=edit, walker=True)
    _same(m1, m2)
    _same_state(s1, s2)


def test_frozen_and_thawed_leaf(routed):
    def edit(i, model, state):
        if i == 1:
            ft.freeze_(state["0"])
        if i == 3:
            ft.thaw_(state["0"])
    _check_edit(edit, routed_steps=4, routed=routed)


def test_requires_grad_false_skips(routed):
    def edit(i, model, state):
        model[0].bias.requires_grad_(i % 2 == 0)
    _check_edit(edit, routed_steps=4, routed=routed)
    _check_edit(edit, routed_steps=8, routed=routed, via="dot")


def test_every_array_frozen_leaves_it_to_the_walker(routed):
    def edit(i, model, state):
        if i == 2:
            ft.freeze_(state)
    _check_edit(edit, routed_steps=2, routed=routed)


def test_parameter_replaced_between_steps(routed):
    """A new Parameter object under the same name: the plan still fits, and the route
    updates the new one (as the walker does, with the Leaf's state)."""
    def edit(i, model, state):
        if i == 2:
            model[0].weight = nn.Parameter(model[0].weight.detach().clone() * 0.5)
    _check_edit(edit, routed_steps=4, routed=routed)


def test_tables_changed_replans(routed):
    """A module added, or a parameter removed, after setup: the state no longer fits, and
    the walker raises its error; a matching new state takes the route again."""
    model = _mlp()
    state = ft.setup(ft.Adam(0.01), model)
    x = _batch(0)
    g = ft.gradient(lambda m: _loss(m, x), model)[0]
    ft.update_(state, model, g)
    assert len(routed) == 1
    model.append(nn.Linear(3, 2))
    g = ft.gradient(lambda m: _loss(m, x), model)[0]
    with pytest.raises(DimensionMismatch):
        ft.update_(state, model, g)
    assert len(routed) == 1
    state = ft.setup(ft.Adam(0.01), model)
    ft.update_(state, model, g)
    assert len(routed) == 2
    model[2].weight = None  # a parameter set to None
    model[2].register_parameter("weight", None)
    g = ft.gradient(lambda m: m[0](x).sum(), model)[0]
    with _walker_only():
        with pytest.raises(Exception) as walker_err:
            ft.update_(state, model, g)
    with pytest.raises(type(walker_err.value)) as err:
        ft.update_(state, model, g)
    assert str(err.value) == str(walker_err.value)
    assert len(routed) == 2


@pytest.mark.parametrize("change", ["parameter", "child"])
def test_module_grown_after_setup_gets_the_walkers_error(change, routed):
    """The state and a ``.grad`` step still fit the plan, but the module's tables changed:
    the walker's error, not a step that silently leaves the new entry out."""
    model = _mlp()
    state = ft.setup(ft.Adam(0.01), model)
    x = _batch(0)
    _loss(model, x).backward()
    ft.update_(state, model)
    assert len(routed) == 1
    if change == "parameter":
        model[0].extra = nn.Parameter(torch.ones(2))
    else:
        model[0].sub = nn.Linear(2, 2)
    model.zero_grad()
    (_loss(model, x) + sum(p.sum() for p in model[0].parameters())).backward()
    with pytest.raises(DimensionMismatch, match="keys"):
        ft.update_(state, model)
    assert len(routed) == 1


class _Tied(nn.Module):
    """Two layers sharing one weight (setup gives them one Leaf)."""

    def __init__(self, n):
        super().__init__()
        self.a = nn.Linear(n, n)
        self.b = nn.Linear(n, n)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _steps(make, loss_of, walker, *, edit_grad=None, steps=3):
    """``(model, state)`` after ``steps`` Adam ``update_`` steps of ``make()`` on the gradient
    of ``loss_of(model, x)`` (``x`` of shape (8, 6), seeded per step), through the route or
    the walker; ``edit_grad(g)`` may change each gradient tree first."""
    torch.manual_seed(0)
    model = make()
    state = ft.setup(ft.Adam(0.01), model)
    with _walker_only() if walker else contextlib.nullcontext():
        for i in range(steps):
            x = torch.randn(8, 6, generator=torch.Generator().manual_seed(i))
            g = ft.gradient(lambda m: loss_of(m, x), model)[0]
            if edit_grad is not None:
                edit_grad(g)
            state, model = ft.update_(state, model, g)
    return model, state


def test_tied_weights_go_to_the_walker(routed):
    def loss_of(m, x):
        return m(x[:2, :4]).pow(2).sum()
    m1, _ = _steps(lambda: _Tied(4), loss_of, False)
    assert len(routed) == 0
    _same(m1, _steps(lambda: _Tied(4), loss_of, True)[0])


def test_shared_submodule_goes_to_the_walker(routed):
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    state = ft.setup(ft.Adam(0.01), model)
    x = torch.randn(2, 3)
    g = ft.gradient(lambda m: m(x).sum(), model)[0]
    before = lin.weight.detach().clone()
    ft.update_(state, model, g)
    assert len(routed) == 0
    assert not torch.equal(before, lin.weight)


def test_mixed_dtypes_and_rules_go_to_the_walker(routed):
    model = _mlp()
    model[4].double()
    state = ft.setup(ft.Adam(0.01), model)
    x = _batch(0)
    g = ft.gradient(lambda m: m[0](x).sum() + m[4](torch.randn(8, 7, dtype=torch.float64)).sum(), model)[0]
    ft.update_(state, model, g)
    assert len(routed) == 0
    model = _mlp()
    state = ft.setup(ft.Adam(0.01), model)
    state["0"]["weight"] = ft.setup(ft.Momentum(0.1), model[0].weight)
    g = ft.gradient(lambda m: _loss(m, x), model)[0]
    ft.update_(state, model, g)
    assert len(routed) == 0


@pytest.mark.parametrize("bad", ["shape", "dtype", "missing_key", "extra_key", "numpy", "not_a_dict"])
def test_bad_gradients_get_the_walkers_errors(bad, routed):
    model = _mlp()
    state = ft.setup(ft.Adam(0.01), model)
    x = _batch(0)
    g = ft.gradient(lambda m: _loss(m, x), model)[0]
    if bad == "shape":
        g["0"]["weight"] = torch.zeros(3, 3)
    elif bad == "dtype":
        g["0"]["weight"] = g["0"]["weight"].double()
    elif bad == "missing_key":
        del g["2"]["weight"]
    elif bad == "extra_key":
        g["2"]["nope"] = torch.zeros(1)
    elif bad == "numpy":
        g["0"]["bias"] = g["0"]["bias"].numpy()
    else:
        g["4"] = [g["4"]]
    before = copy.deepcopy(model)
    with _walker_only():
        try:
            ft.update_(copy.deepcopy(state), copy.deepcopy(model), copy.deepcopy(g))
            walker_err = None
        except Exception as e:  # noqa: BLE001
            walker_err = e
    if walker_err is None:  # the walker accepts it (a dtype it converts): so must the step
        m2, s2 = copy.deepcopy(model), copy.deepcopy(state)
        with _walker_only():
            ft.update_(s2, m2, copy.deepcopy(g))
        ft.update_(state, model, g)
        _same(model, m2)
    else:
        with pytest.raises(type(walker_err)) as err:
            ft.update_(state, model, g)
        assert str(err.value) == str(walker_err)
        _same(model, before)  # nothing written
    assert len(routed) == 0


def test_none_subtree_in_gradient_skips_it(routed):
    def edit(g):
        g["4"] = None
        g["0"]["bias"] = None

    def loss_of(m, x):
        return _loss(m, x[:, :5])
    m1, s1 = _steps(_mlp, loss_of, False, edit_grad=edit)
    assert len(routed) == 3
    m2, s2 = _steps(_mlp, loss_of, True, edit_grad=edit)
    _same(m1, m2)
    _same_state(s1, s2)
    assert torch.equal(m1[4][0].weight, _mlp()[4][0].weight)


def test_clipnorm_throw_raises_and_writes_nothing(routed):
    model = _mlp()
    state = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam(0.01)), model)
    x = _batch(0)
    g = ft.gradient(lambda m: _loss(m, x), model)[0]
    g["2"]["weight"] = torch.full_like(g["2"]["weight"], float("nan"))
    before = copy.deepcopy(model)
    s_before = [l.state for _, l in ft.optimise.tree.leaves(state)]
    with pytest.raises(DomainError):
        ft.update_(state, model, g)
    _same(model, before)
    assert [l.state for _, l in ft.optimise.tree.leaves(state)] == s_before


def test_update_pure_and_non_modules_do_not_take_it(routed):
    model = _mlp()
    state = ft.setup(ft.Adam(0.01), model)
    x = _batch(0)
    g = ft.gradient(lambda m: _loss(m, x), model)[0]
    s2, m2 = ft.update(state, model, g)
    assert m2 is not model and len(routed) == 0
    params = dict(model.named_parameters())
    tree = {k: v.detach().clone() for k, v in params.items()}
    st = ft.setup(ft.Adam(0.01), tree)
    ft.update_(st, tree, {k: torch.ones_like(v) for k, v in tree.items()})
    assert len(routed) == 0


def test_train_takes_the_route(routed):
    model = _mlp()
    state = ft.setup(ft.Adam(0.01), model)
    data = [(_batch(i),) for i in range(3)]
    ft.train(_loss, model, data, state, progress=False)
    assert len(routed) == 3



# ----------------------------------------------------- train's step for a module (loop.py)

class _generic_step:
    """train's step as withgradient + update_ (the module step of loop.py declined)."""

    def __enter__(self):
        from fluxtrain.train import loop
        self.loop, self.saved = loop, loop._torch_module_step
        loop._torch_module_step = lambda *a: None

    def __exit__(self, *exc):
        self.loop._torch_module_step = self.saved


def _train_run(make, loss, steps, *, disabled, edit=None, rule=None, grad_mode=True):
    model = make()
    state = ft.setup(rule() if rule else ft.Adam(0.01), model)
    data = [(_batch(i).to(next(model.parameters()).dtype),) for i in range(steps)]
    if edit is not None:
        edit(model, state)
    with _generic_step() if disabled else contextlib.nullcontext():
        with torch.enable_grad() if grad_mode else torch.no_grad():
            state, model = ft.train(loss, model, data, state, progress=False)
    return model, state


def _mixed():
    m = _mlp()
    m[4].double()
    return m


def _mixed_loss(m, x):
    return (m[0](x) ** 2).mean() + (m[4](torch.ones(8, 7, dtype=torch.float64)) ** 2).mean()


def _aux_loss(m, x):
    y = m(x)
    return (y ** 2).mean(), {"y": y, "note": "aux"}


def _part_loss(m, x):
    return (m[0](x) ** 2).mean()  # the later layers get no gradient


TRAIN_CASES = {
    "mlp": (_mlp, _loss, None, None),
    "chain": (_mlp, _loss, None, lambda: ft.OptimiserChain(ft.ClipNorm(0.1), ft.Adam(0.01))),
    "aux": (_mlp, _aux_loss, None, None),
    "unused": (_mlp, _part_loss, None, None),
    "frozen": (_mlp, _loss, lambda m, s: (m[0].weight.requires_grad_(False), ft.freeze_(s["2"])), None),
    "mixed_dtypes": (_mixed, _mixed_loss, None, None),  # the route declines: the walker, with the tree
    "momentum": (_mlp, _loss, None, lambda: ft.Momentum(0.01)),
}


@pytest.mark.parametrize("grad_mode", [True, False])
@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_module_step_equals_generic(case, grad_mode):
    make, loss, edit, rule = TRAIN_CASES[case]
    m1, s1 = _train_run(make, loss, 3, disabled=False, edit=edit, rule=rule, grad_mode=grad_mode)
    m2, s2 = _train_run(make, loss, 3, disabled=True, edit=edit, rule=rule, grad_mode=grad_mode)
    _same(m1, m2)
    _same_state(s1, s2)
    assert all(p.grad is None for p in m1.parameters())


def test_train_module_step_takes_the_flat_route(routed, monkeypatch):
    from fluxtrain.train import loop
    seen = []
    real = loop._torch_module_step
    monkeypatch.setattr(loop, "_torch_module_step", lambda *a: seen.append(1) or real(*a))
    model = _mlp()
    state = ft.setup(ft.Adam(0.01), model)
    ft.train(_loss, model, [(_batch(i),) for i in range(3)], state, progress=False)
    assert len(routed) == 3 and len(seen) == 3
    # trainstep too, and it returns what the loss returned
    out = ft.trainstep(_aux_loss, model, (_batch(5),), state)
    assert out[1]["note"] == "aux" and not out[0].requires_grad and len(routed) == 4


def test_train_module_step_nan_loss_stops_and_keeps_the_last_good_step():
    def run(disabled):
        model = _mlp()
        state = ft.setup(ft.Adam(0.01), model)
        data = [(_batch(0),), (_batch(1) * float("nan"),), (_batch(2),)]
        with _generic_step() if disabled else contextlib.nullcontext():
            with pytest.raises(DomainError, match="on data item 2") as err:
                ft.train(_loss, model, data, state, progress=False)
        return model, err.value.state
    (m1, s1), (m2, s2) = run(False), run(True)
    _same(m1, m2)
    _same_state(s1, s2)


def test_train_module_step_tied_weights_use_withgradient():
    def run(disabled):
        torch.manual_seed(0)
        model = _Tied(5)
        state = ft.setup(ft.Adam(0.01), model)
        with _generic_step() if disabled else contextlib.nullcontext():
            ft.train(_loss, model, [(_batch(i),) for i in range(3)], state, progress=False)
        return model, state
    (m1, s1), (m2, s2) = run(False), run(True)
    _same(m1, m2)
    _same_state(s1, s2)


def test_train_module_step_bad_loss_gets_withgradients_error():
    model = _mlp()
    state = ft.setup(ft.Adam(0.01), model)
    with fast.disabled():
        with pytest.raises(ft.ArgumentError) as ref:
            ft.train(lambda m, x: m(x), model, [(_batch(0),)], state, progress=False)
    with pytest.raises(ft.ArgumentError) as err:
        ft.train(lambda m, x: m(x), model, [(_batch(0),)], state, progress=False)
    assert str(err.value) == str(ref.value)


def test_clipnorm_chain_zero_gradient_quietly_unclipped(recwarn):
    """A zero gradient has norm 0: omega/0 = inf, factor 1 (no warning from the host-side
    factors), the same step as the generic path's."""
    def run(disabled):
        model = _mlp()
        state = ft.setup(ft.OptimiserChain(ft.ClipNorm(0.5), ft.Adam(0.01)), model)
        g = ft.gradient(lambda m: _loss(m, _batch(0)), model)[0]
        g["0"]["weight"] = torch.zeros_like(g["0"]["weight"])
        with fast.disabled() if disabled else contextlib.nullcontext():
            ft.update_(state, model, g)
        return model
    m1, m2 = run(False), run(True)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def _zoo():
    from torch.nn.utils import parametrize

    class Sym(nn.Module):
        def forward(self, w):
            return (w + w.T) / 2

    def param_linear():
        lin = nn.Linear(6, 6)
        parametrize.register_parametrization(lin, "weight", Sym())
        return nn.Sequential(lin, nn.Tanh(), nn.Linear(6, 3))

    class Rnn(nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.rnn = cell(6, 5, num_layers=2, batch_first=True)
            self.out = nn.Linear(5, 3)

        def forward(self, x):
            return self.out(self.rnn(x.reshape(2, 4, 6))[0])

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoderLayer(6, 2, dim_feedforward=8, dropout=0.0, batch_first=True)

        def forward(self, x):
            return self.enc(x.reshape(2, 4, 6))

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2)
            self.emb = nn.Embedding(5, 4)

        def forward(self, x):
            y = self.bn(self.c(x.reshape(2, 1, 4, 6)))
            return y.sum() + self.emb(torch.tensor([1, 3])).sum()

    return {"parametrized": param_linear, "lstm": lambda: Rnn(nn.LSTM), "gru": lambda: Rnn(nn.GRU),
            "transformer": Attn, "conv_bn_embedding": Conv}


@pytest.mark.parametrize("name", sorted(_zoo()))
def test_common_modules_route_equals_walker(name, routed):
    """torch's own layers (parametrizations, RNNs with flattened weights, attention, conv,
    batch norm, embeddings) take the route and give the walker's results bit for bit."""
    def loss_of(m, x):
        return (m(x) ** 2).mean()
    m1, s1 = _steps(_zoo()[name], loss_of, False)
    assert len(routed) == 3
    m2, s2 = _steps(_zoo()[name], loss_of, True)
    _same(m1, m2)
    _same_state(s1, s2)
