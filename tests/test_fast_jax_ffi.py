"""Adam, AdamW, Momentum, Lion and their ClipNorm/WeightDecay chains on the CPU by one custom
call into the numba kernels (``fluxtrain._backend.fast_jax_ffi``): taken where it applies,
in place, equal to the generic path up to rounding, per-array scalars (rules, running
products, clip scales) kept apart, and an error inside it reported, never a silent
success."""
from __future__ import annotations

import contextlib
import copy
import pickle

import numpy as np
import pytest

import fluxtrain as ft
from fluxtrain._backend import fast

jax = pytest.importorskip("jax")
jnp = jax.numpy
pytest.importorskip("numba")
from fluxtrain._backend import fast_jax, fast_jax_ffi, fast_jax_tree  # noqa: E402

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU custom call")

SHAPES = [(), (0,), (3, 4), (70_000,), (1,)]  # 0-d, empty, and more than one kernel chunk


@pytest.fixture(autouse=True)
def small_groups_too(monkeypatch):
    """The call is taken for groups of any size here (it is by default from 2 M elements)."""
    monkeypatch.setattr(fast_jax_ffi, "MIN_ELEMENTS", 0)


class _Calls(list):
    """The kernels of the custom calls that ran; ``flat``: whether each took flat states;
    ``arrays``: how many parameter arrays each stepped."""

    def __init__(self) -> None:
        super().__init__()
        self.flat: list = []
        self.arrays: list = []


@pytest.fixture
def calls(monkeypatch):
    """The kernels of the custom calls that ran (a group's step is one, or a few for many arrays)."""
    seen = _Calls()
    real = fast_jax_ffi._step

    def counting(frame, kind, flat):
        seen.append(kind)
        seen.flat.append(flat)
        seen.arrays.append(fast_jax_ffi.arrays_of(frame.args.size, fast_jax_ffi._NSTATE[kind], flat))
        return real(frame, kind, flat)
    monkeypatch.setattr(fast_jax_ffi, "_step", counting)
    return seen


def _model(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def _run(rule, dtype, steps, *, disabled=False, pure=False, adjust=None):
    model = _model(dtype)
    state = ft.setup(rule, model)
    rng = np.random.default_rng(1)
    for t in range(steps):
        g = [jnp.asarray(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
        if adjust is not None and t == 1:
            adjust(state)
        with fast.disabled() if disabled else contextlib.nullcontext():
            state, model = (ft.update if pure else ft.update_)(state, model, g)
    jax.block_until_ready(model)  # (the calls run asynchronously: all done before counting)
    return state, model


def _close(a, b, dtype):
    rtol = 1e-6 if dtype == "float32" else 1e-12
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * 1e-2)


def _states(state):
    return [leaf.state for leaf in state]


RULES = {
    "Adam": (ft.Adam(1e-2), "adam"),
    "AdamW": (ft.AdamW(1e-2, lambda_=0.1), "adam"),
    "AdamW(couple=false)": (ft.AdamW(1e-2, lambda_=0.1, couple=False), "adam"),
    "Momentum": (ft.Momentum(0.05, 0.8), "momentum"),
    "Lion": (ft.Lion(1e-2), "lion"),
    # clipping active on some arrays (norms above 1.5) and not on others; throw=True takes
    # the route's pre-checked norms, throw=False computes them in the step
    "Chain(ClipNorm,WeightDecay,Adam)": (ft.OptimiserChain(ft.ClipNorm(1.5), ft.WeightDecay(0.1), ft.Adam(1e-2)),
                                         "adam"),
    "Chain(ClipNorm(throw=false),Momentum)": (ft.OptimiserChain(ft.ClipNorm(1.5, throw=False), ft.Momentum()),
                                              "momentum"),
    "Chain(WeightDecay,Lion)": (ft.OptimiserChain(ft.WeightDecay(0.1), ft.Lion(1e-2)), "lion"),
    "Chain(ClipNorm,AdamW)": (ft.OptimiserChain(ft.ClipNorm(1.5), ft.AdamW(1e-2, lambda_=0.1)), "adam"),
}


@pytest.mark.parametrize("pure", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(RULES))
def test_equals_the_generic_path(name, dtype, pure, calls):
    rule, kind = RULES[name]
    s1, m1 = _run(rule, dtype, 4, pure=pure)
    # one call a step for the whole group; update (no donation) keeps XLA's program, which
    # the call, writing copies XLA makes of its buffers first, did not beat
    assert calls == ([] if pure else [kind] * 4)
    if pure and dtype == "float32":
        return  # XLA's own program: a few ulps a step (FMAs), compared in float64 (as in test_fast_jax)
    s2, m2 = _run(rule, dtype, 4, disabled=True, pure=pure)
    _close(m1, m2, dtype)
    _close(_states(s1), _states(s2), dtype)


def test_rules_and_running_products_per_array(calls):
    """Leafs with other learning rates, and one reset to a fresh state (other beta^t): one
    call still, each array with its own scalars."""
    def adjust(state):
        ft.adjust_(state[2], 0.05)
        state[3].state = ft.Adam(1e-2).init(jnp.zeros(SHAPES[3], jnp.float32))
    s1, m1 = _run(ft.Adam(1e-2), "float32", 4, adjust=adjust)
    s2, m2 = _run(ft.Adam(1e-2), "float32", 4, disabled=True, adjust=adjust)
    assert calls
    _close(m1, m2, "float32")
    _close(_states(s1), _states(s2), "float32")
    assert float(s1[3].state[2][0]) != float(s1[0].state[2][0])


def test_chains_of_other_shapes_and_clips_per_array(calls):
    """One group of chains with a ClipNorm of another omega, and a chain with no ClipNorm:
    one call, each array with its own clip scale and prefix."""
    def adjust(state):
        ft.adjust_(state[2], omega=0.5)
        state[3] = ft.setup(ft.OptimiserChain(ft.WeightDecay(0.2), ft.Adam(1e-2)), jnp.zeros(SHAPES[3], jnp.float32))
    rule = ft.OptimiserChain(ft.ClipNorm(1.5), ft.WeightDecay(0.1), ft.Adam(1e-2))

    def run(disabled):
        model = _model("float32")
        state = ft.setup(rule, model)
        adjust(state)
        rng = np.random.default_rng(1)
        for _ in range(3):
            g = [jnp.asarray(rng.standard_normal(s).astype("float32")) for s in SHAPES]
            with fast.disabled() if disabled else contextlib.nullcontext():
                state, model = ft.update_(state, model, g)
        return _states(state), jax.block_until_ready(model)
    s1, m1 = run(False)
    assert calls == ["adam"] * 3
    s2, m2 = run(True)
    _close(m1, m2, "float32")
    _close(s1, s2, "float32")


@pytest.mark.parametrize("rule, kind", [
    (ft.Scheduler(ft.Adam, eta=ft.CosAnneal(l0=1e-2, l1=1e-4, period=3)), "adam"),
    (ft.Scheduler(ft.Momentum, eta=ft.Exp(0.1, 0.5)), "momentum"),
    (ft.Scheduler(ft.AdamW, eta=ft.Exp(1e-2, 0.5), lambda_=ft.Exp(0.1, 0.5)), "adam"),
    (ft.Scheduler(ft.Lion, eta=ft.Step(1e-2, 0.5, 2)), "lion"),
])
def test_scheduled_rules_take_it(rule, kind, calls):
    s1, m1 = _run(rule, "float32", 4)
    assert calls == [kind] * 4
    s2, m2 = _run(rule, "float32", 4, disabled=True)
    _close(m1, m2, "float32")
    _close(_states(s1), _states(s2), "float32")


def test_a_refused_norm_raises_before_any_write(calls):
    """ClipNorm(throw=True) with an infinite gradient: Flux's DomainError, the model and
    the state as they were (the pre-check runs before the call)."""
    model = [jnp.ones(5, jnp.float32), jnp.ones(3, jnp.float32)]
    state = ft.setup(ft.OptimiserChain(ft.ClipNorm(), ft.Adam()), model)
    state, model = ft.update_(state, model, [jnp.ones(5, jnp.float32), jnp.ones(3, jnp.float32)])
    before = [np.asarray(a).copy() for a in jax.tree.leaves((_states(state), model))]
    with pytest.raises(ft.DomainError):
        ft.update_(state, model, [jnp.ones(5, jnp.float32), jnp.full(3, jnp.inf, jnp.float32)])
    after = [np.asarray(a) for a in jax.tree.leaves((_states(state), model))]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert calls == ["adam"]


def test_in_place(calls):
    """The donated parameter and moments are the call's results: the same memory."""
    state, model = _run(ft.Adam(1e-2), "float32", 2)
    before = [model[3].unsafe_buffer_pointer(), *(a.unsafe_buffer_pointer() for a in state[3].state[:2])]
    state, model = ft.update_(state, model, [jnp.ones(s, jnp.float32) for s in SHAPES])
    jax.block_until_ready(model)
    after = [model[3].unsafe_buffer_pointer(), *(a.unsafe_buffer_pointer() for a in state[3].state[:2])]
    assert before == after and calls


def test_other_rules_and_chains_keep_xla(calls):
    """Rules the kernels do not step, chains of other shapes, and a group mixing kernels."""
    for rule in (ft.RMSProp(), ft.Nesterov(), ft.OptimiserChain(ft.Adam(), ft.WeightDecay()),
                 ft.OptimiserChain(ft.ClipGrad(), ft.Adam()), ft.OptimiserChain(ft.ClipNorm(1.0, 1), ft.Adam()),
                 ft.OptimiserChain(ft.WeightDecay(), ft.ClipNorm(), ft.Adam())):
        _run(rule, "float32", 2)
    assert not calls
    model = [jnp.ones(5, jnp.float32), jnp.ones(3, jnp.float32)]
    state = ft.setup(ft.OptimiserChain(ft.WeightDecay(), ft.Adam()), model)
    state[1] = ft.setup(ft.OptimiserChain(ft.WeightDecay(), ft.Momentum()), model[1])
    state, model = ft.update_(state, model, [jnp.ones(5, jnp.float32), jnp.ones(3, jnp.float32)])
    jax.block_until_ready(model)
    assert not calls


def test_an_error_inside_is_raised(monkeypatch):
    """A failure in the handler reaches the caller as an error (XLA's), never as a step
    that silently did nothing."""
    def boom(frame, kind, flat):
        raise RuntimeError("kernel failed")
    monkeypatch.setattr(fast_jax_ffi, "_step", boom)
    model = [jnp.ones(5, jnp.float32)]
    state = ft.setup(ft.Adam(), model)
    with pytest.raises(Exception, match="kernel failed"):
        state, model = ft.update_(state, model, [jnp.ones(5, jnp.float32)])
        jax.block_until_ready(model)


def test_where_it_applies(monkeypatch):
    assert fast_jax_ffi.usable((ft.Adam(),), [jnp.ones(3)])
    assert not fast_jax_ffi.usable((ft.Adam(),), [jnp.ones(3, jnp.bfloat16)])
    assert fast_jax_ffi.usable((ft.AdamW(), ft.Adam(0.1)), [jnp.ones(3)])
    assert not fast_jax_ffi.usable((ft.RMSProp(),), [jnp.ones(3)])
    assert not fast_jax_ffi.usable((ft.Adam(), ft.Momentum()), [jnp.ones(3)])
    monkeypatch.setattr(fast_jax_ffi, "MIN_ELEMENTS", 10)
    assert not fast_jax_ffi.usable((ft.Adam(),), [jnp.ones(3), jnp.ones(6)])
    assert fast_jax_ffi.usable((ft.Adam(),), [jnp.ones(3), jnp.ones(7)])
    # turned off: nothing registered (a fresh record, so the real handler stays as it is)
    monkeypatch.setattr(fast_jax_ffi, "_STATE", {})
    monkeypatch.setenv("FLUXTRAIN_JAX_CUSTOM_CALL", "0")
    assert not fast_jax_ffi.usable((ft.Adam(),), [jnp.ones(300)])
    assert fast_jax_ffi._STATE == {"handler": None}


def test_decided_for_the_arrays_at_hand(calls):
    """A program of one structure is reused for other dtypes: whether the custom call
    applies is decided for each step's arrays, not once for the structure."""
    for dtype, expect in (("bfloat16", 0), ("float32", 2), ("float16", 2), ("float32", 4)):
        model = [jnp.ones(4, dtype), jnp.ones(3, dtype)]
        state = ft.setup(ft.Adam(), model)
        for _ in range(2):
            state, model = ft.update_(state, model, [jnp.ones(4, dtype), jnp.ones(3, dtype)])
        jax.block_until_ready(model)
        assert len(calls) == expect, dtype


def test_arrays_split_over_devices_keep_xla(calls):
    """An array sharded over two CPU devices (the test session has two) is not the call's:
    XLA's program steps it, with the generic path's numbers."""
    if len(jax.devices("cpu")) < 2:
        pytest.skip("needs two host devices")
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    mesh = Mesh(np.array(jax.devices("cpu")[:2]), ("d",))
    sh = NamedSharding(mesh, PartitionSpec("d"))

    def run(disabled):
        model = [jax.device_put(jnp.arange(8, dtype=jnp.float32), sh)]
        state = ft.setup(ft.Adam(0.1), model)
        for _ in range(3):
            with fast.disabled() if disabled else contextlib.nullcontext():
                state, model = ft.update_(state, model, [jax.device_put(jnp.ones(8, jnp.float32), sh)])
        return np.asarray(jax.block_until_ready(model[0]))
    np.testing.assert_allclose(run(False), run(True), rtol=1e-6)
    assert not calls


# ------------------------------------------------------------------ flat states (update_)

FLAT_SHAPES = [(0,), (3, 4), (70_000,), (1,), (2, 3, 2)]  # no 0-d array: the layout applies


def _flat_run(rule, steps, *, dtype="float32", disabled=False, between=None, grads=None):
    """``steps`` update_ steps on FLAT_SHAPES; ``between(t, state, model)`` may
    return a new ``(state, model)`` after step ``t``; ``grads(t, g)`` may alter a gradient."""
    rng = np.random.default_rng(0)
    model = [jnp.asarray(rng.standard_normal(s).astype(dtype)) for s in FLAT_SHAPES]
    state = ft.setup(rule, model)
    rng = np.random.default_rng(1)
    seen = []
    for t in range(steps):
        g = [jnp.asarray(rng.standard_normal(s).astype(dtype)) for s in FLAT_SHAPES]
        if grads is not None:
            g = grads(t, g)
        with fast.disabled() if disabled else contextlib.nullcontext():
            try:
                state, model = ft.update_(state, model, g)
                seen.append("ok")
            except ft.DomainError:
                seen.append("DomainError")
        if between is not None:
            state, model = between(t, state, model)
    jax.block_until_ready(model)
    return state, model, seen


def _store(state):
    return state[0]._store


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(RULES))
def test_flat_states_equal_the_generic_path(name, dtype, calls):
    """From the second step of one store, each state of the call is one flat array for all
    the group's arrays (2 buffers for Adam's moments instead of 2 per array); the steps,
    and the states read between them, equal the generic path's."""
    rule = RULES[name][0]
    reads: dict = {}

    def read(t, state, model):  # Leaf.state copies the flat states' parts
        reads.setdefault(t, []).append(copy.deepcopy(_states(state)))
        return state, model
    s1, m1, _ = _flat_run(rule, 5, dtype=dtype, between=read)
    s2, m2, _ = _flat_run(rule, 5, dtype=dtype, disabled=True, between=read)
    st = _store(s1)
    assert st is not None and st.flat is not None and len(st.flat) == fast_jax_ffi._NSTATE[RULES[name][1]]
    assert all(f.shape == (sum(int(np.prod(s)) for s in FLAT_SHAPES),) and f.dtype == dtype for f in st.flat)
    _close(m1, m2, dtype)
    _close(_states(s1), _states(s2), dtype)
    for t in range(5):
        _close(reads[t][0], reads[t][1], dtype)
    assert len(calls) == 5


def test_flat_states_in_place(calls):
    """The flat arrays are donated and written by the call: the same memory every step."""
    s, m, _ = _flat_run(ft.Adam(1e-2), 3)
    before = [f.unsafe_buffer_pointer() for f in _store(s).flat]
    s, m = ft.update_(s, m, [jnp.ones(sh, jnp.float32) for sh in FLAT_SHAPES])
    jax.block_until_ready(m)
    assert [f.unsafe_buffer_pointer() for f in _store(s).flat] == before


@pytest.mark.parametrize("change", ["new model arrays", "a Leaf's state set", "a frozen Leaf", "a refused norm"])
def test_leaving_the_flat_layout(change, calls):
    """Steps that cannot chain from the flat store (the model's arrays replaced, a Leaf
    detached or frozen, a ClipNorm refusing a gradient) take its states as they are, and
    the run stays equal to the generic path's."""
    rule = ft.OptimiserChain(ft.ClipNorm(50.0), ft.Adam(1e-2))

    def between(t, state, model):
        if t != 2:
            return state, model
        if change == "new model arrays":
            model = [x + 0 for x in model]
        elif change == "a Leaf's state set":
            state[1].state = jax.tree.map(lambda a: a + 0, state[1].state)
        elif change == "a frozen Leaf":
            ft.freeze_(state[2])
        return state, model

    def grads(t, g):
        if change == "a refused norm" and t == 3:
            g[2] = jnp.full_like(g[2], jnp.inf)
        return g
    s1, m1, seen1 = _flat_run(rule, 6, between=between, grads=grads)
    s2, m2, seen2 = _flat_run(rule, 6, disabled=True, between=between, grads=grads)
    assert seen1 == seen2
    _close(m1, m2, "float32")
    _close(_states(s1), _states(s2), "float32")


def test_flat_states_survive_pickling(calls):
    """A state tree pickled from a flat store holds each Leaf's own arrays."""
    s, m, _ = _flat_run(ft.Momentum(0.05, 0.8), 3)
    s2 = pickle.loads(pickle.dumps(s))
    for a, b in zip(s, s2):
        np.testing.assert_array_equal(np.asarray(a.state), np.asarray(b.state))
        assert b._store is None


def test_flat_states_of_models_of_one_structure_and_other_shapes(calls):
    """One compiled plan serves the models of one tree structure whatever their shapes
    (``jax.jit`` traces again): each keeps the flat layout of its own shapes (another's
    would misplace every array's part of the states)."""
    rule = ft.Adam(1e-2)
    rng = np.random.default_rng(0)
    models = {}
    for name, shapes in (("a", FLAT_SHAPES), ("b", FLAT_SHAPES[::-1])):
        m = [jnp.asarray(rng.standard_normal(s).astype("float32")) for s in shapes]
        models[name] = [shapes, m, ft.setup(rule, m), [a + 0 for a in m]]
        models[name].append(ft.setup(rule, models[name][3]))
    for _ in range(4):
        for shapes, m, s, m2, s2 in models.values():
            g = [jnp.asarray(rng.standard_normal(sh).astype("float32")) for sh in shapes]
            m[:] = ft.update_(s, m, g)[1]
            with fast.disabled():
                m2[:] = ft.update_(s2, m2, [a + 0 for a in g])[1]
    for shapes, m, s, m2, s2 in models.values():
        assert _store(s).flat is not None
        _close(m, m2, "float32")
        _close(_states(s), _states(s2), "float32")


def test_states_read_from_flat_arrays_are_their_own(calls):
    """A Leaf's state read from a flat store is its own memory: later steps, which write
    the flat arrays in place, leave it as it was read."""
    s, m, _ = _flat_run(ft.Adam(1e-2), 3)
    held = [leaf.state for leaf in s]
    snap = [np.asarray(a).copy() for st in held for a in jax.tree.leaves(st)]
    for _ in range(2):
        s, m = ft.update_(s, m, [jnp.ones(sh, jnp.float32) for sh in FLAT_SHAPES])
    jax.block_until_ready(m)
    assert _store(s).flat is not None
    for a, b in zip([a for st in held for a in jax.tree.leaves(st)], snap):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_a_new_store_steps_flat_from_its_first_step(calls):
    """The first update_ of a new store already takes the flat call: the per-array program
    (slow to compile with one aliased state buffer per array) is traced, not run."""
    s, m, _ = _flat_run(ft.OptimiserChain(ft.ClipNorm(50.0), ft.Momentum(0.05, 0.8)), 1)
    assert calls.flat == [True] and _store(s).flat is not None
    s2, m2, _ = _flat_run(ft.OptimiserChain(ft.ClipNorm(50.0), ft.Momentum(0.05, 0.8)), 1, disabled=True)
    _close(m, m2, "float32")
    _close(_states(s), _states(s2), "float32")


def test_a_model_replaced_every_step_stays_per_array(calls):
    """Steps that never chain (the model's arrays replaced before each) leave the flat
    layout once and stay per array, rather than joining every state again at each step."""
    def between(t, state, model):
        return state, [x + 0 for x in model]
    s1, m1, _ = _flat_run(ft.Adam(1e-2), 5, between=between)
    s2, m2, _ = _flat_run(ft.Adam(1e-2), 5, disabled=True, between=between)
    assert calls.flat == [True] + [False] * 4
    _close(m1, m2, "float32")
    _close(_states(s1), _states(s2), "float32")


@pytest.mark.parametrize("name", list(RULES))
def test_a_group_in_calls_of_few_aliased_buffers(name, calls, monkeypatch):
    """A group's step is split into calls of at most MAX_ALIASED aliased buffers each (XLA's
    compile time grows faster than linearly in them), flat steps (each call writing its
    arrays' part of the flat states) and per-array steps alike; every step equals the
    generic path's."""
    monkeypatch.setattr(fast_jax_ffi, "MAX_ALIASED", 4)
    for mod, table in ((fast_jax, "_PLANS"), (fast_jax, "_LAST"), (fast_jax_tree, "_ROUTES")):
        monkeypatch.setattr(mod, table, {})  # programs traced by other tests: traced again
    rule, kind = RULES[name]
    ns = fast_jax_ffi._NSTATE[kind]

    def replace(t, state, model):  # from step 2 on the steps cannot chain: per array
        return state, [x + 0 for x in model] if t >= 1 else model
    s1, m1, _ = _flat_run(rule, 4, between=replace)
    s2, m2, _ = _flat_run(rule, 4, disabled=True, between=replace)
    _close(m1, m2, "float32")
    _close(_states(s1), _states(s2), "float32")
    flat = [k for k, f in zip(calls.arrays, calls.flat) if f]
    per_array = [k for k, f in zip(calls.arrays, calls.flat) if not f]
    assert calls.flat[:len(flat)] == [True] * len(flat)  # steps 0 and 1 flat, then per array
    assert max(flat) + ns <= 4 and max(per_array) * (1 + ns) <= 4
    assert sum(flat) == 2 * len(FLAT_SHAPES) and len(flat) > 2 and len(per_array) > 2
