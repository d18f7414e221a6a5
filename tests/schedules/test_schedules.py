"""Schedules: values computed by hand from ParameterSchedulers.jl 0.4.3's formulas, the
cases of its own test suite, properties, iteration, errors and the traced (jit) path."""
from __future__ import annotations

import dataclasses
import doctest
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fluxtrain.schedules as S
from fluxtrain.schedules import (ComposedSchedule, Constant, CosAnneal, Exp, Interpolator, Inv,
                                 Loop, OneCycle, Poly, ScheduleBoundsError, Sequence, Shifted, Sin,
                                 SinDecay2, SinExp, Stateful, Step, Triangle, TriangleDecay2,
                                 TriangleExp, next_, reset_)
from tests.util import HAVE_JAX, HAVE_TORCH

R2 = math.sqrt(2) / 2
approx = lambda v: pytest.approx(v, rel=1e-12, abs=1e-15)  # noqa: E731


def values(s, ts):
    return [s(t) for t in ts]


# ---------------------------------------------------------------- decay schedules

def test_step_repeating_and_blocks():
    assert values(Step(1.0, 0.5, 3), range(1, 8)) == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    # blocks 2 then 3, then constant at start * decay^2
    assert values(Step(2.0, 0.1, [2, 3]), range(1, 9)) == approx([2, 2, 0.2, 0.2, 0.2, 0.02, 0.02, 0.02])


def test_exp_poly_inv_by_hand():
    assert values(Exp(0.1, 0.5), [1, 2, 3, 11]) == [0.1, 0.05, 0.025, 0.1 / 1024]
    assert values(Poly(1.0, 2, 4), [1, 2, 3, 4]) == [1.0, 0.5625, 0.25, 0.0625]
    assert values(Poly(3.0, 1, 10), [1, 6]) == approx([3.0, 1.5])
    assert values(Inv(1.0, 0.5, 2), [1, 2, 3]) == approx([1.0, 1 / 2.25, 0.25])
    assert values(Inv(2.0, 1.0, 1), [1, 4]) == [2.0, 0.5]


def test_parameterschedulers_sequence_case():
    # ParameterSchedulers' own test: iterating past the end of a Sequence
    s = Sequence([(1, 1), (Step(0.1, 0.5, 10), 50)])
    assert s(1) == 1
    assert s(2) == 0.1
    assert s(42) == 0.00625
    assert s(52) == 0.003125


def test_exp_decays_geometrically():
    s = Exp(0.3, 0.9)
    v = list(itertools.islice(s, 20))
    assert [b / a for a, b in zip(v, v[1:])] == approx([0.9] * 19)


def test_poly_is_finite():
    s = Poly(1.0, 2, 4)
    assert len(s) == 4 and len(list(s)) == 4
    with pytest.raises(ScheduleBoundsError, match="max_iter"):
        s(5)
    assert issubclass(ScheduleBoundsError, IndexError)


# ---------------------------------------------------------------- cyclic schedules

def test_triangle_by_hand_and_peak():
    s = Triangle(l0=0.1, l1=1.1, period=4)
    assert values(s, range(1, 10)) == approx([0.1, 0.6, 1.1, 0.6, 0.1, 0.6, 1.1, 0.6, 0.1])
    # the peak is half way through the period
    s = Triangle(l0=2.0, l1=0.0, period=10)
    v = values(s, range(1, 11))
    assert max(v) == approx(2.0) and v.index(max(v)) + 1 == 1 + 10 // 2


def test_triangle_decay2_and_exp():
    s = TriangleDecay2(l0=0.0, l1=1.0, period=2)
    assert values(s, range(1, 9)) == approx([0, 1, 0, 0.5, 0, 0.25, 0, 0.125])
    s = TriangleExp(l0=0.0, l1=2.0, period=2, decay=0.5)
    assert values(s, [1, 2, 3, 4]) == approx([0.0, 1.0, 0.0, 0.25])
    # period 4: tri(2) = 1/2; amplitude range * decay^(t-1)
    s = TriangleExp(1.0, 0.5, 4, 0.9)
    assert s(2) == approx(0.9 * 0.5 + 0.5)


def test_sin_family_by_hand():
    s = Sin(l0=1.0, l1=3.0, period=4)
    assert values(s, [1, 2, 3, 4, 5]) == approx([1.0, 1 + 2 * R2, 3.0, 1 + 2 * R2, 1.0])
    s = SinDecay2(l0=0.0, l1=1.0, period=2)
    assert values(s, range(1, 7)) == approx([0, 1, 0, 0.5, 0, 0.25])
    s = SinExp(1.0, 0.5, 2, 0.9)     # positional: range 1, offset 0.5
    assert values(s, [1, 2, 4]) == approx([0.5, 1.4, 0.9 ** 3 + 0.5])


def test_cosanneal_by_hand_with_and_without_restart():
    s = CosAnneal(l0=0.1, l1=1.1, period=4)
    expected = [1.1, (1 + R2) / 2 + 0.1, 0.6, (1 - R2) / 2 + 0.1]
    assert values(s, range(1, 9)) == approx(expected * 2)
    s = CosAnneal(l0=0.1, l1=1.1, period=4, restart=False)
    assert values(s, [1, 3, 5, 7, 9]) == approx([1.1, 0.6, 0.1, 0.6, 1.1])


def test_cosanneal_positional_form_is_range_offset():
    # the stale-doc pitfall: (1e-4, 1e-2, 10) is range 1e-4 above offset 1e-2
    s = CosAnneal(1e-4, 1e-2, 10)
    assert s.range == 1e-4 and s.offset == 1e-2 and s.restart is True
    assert s(1) == approx(0.0101)
    assert s(6) == approx(0.01005)
    assert min(itertools.islice(s, 50)) >= 0.01
    assert CosAnneal(1.0, 0.0, 4, False) == CosAnneal(l0=0.0, l1=1.0, period=4, restart=False)


@settings(max_examples=30, deadline=None)
@given(l0=st.floats(-10, 10), l1=st.floats(-10, 10), period=st.integers(1, 50))
def test_cosanneal_starts_at_max_and_stays_in_range(l0, l1, period):
    s = CosAnneal(l0=l0, l1=l1, period=period)
    assert s(1) == approx(max(l0, l1))
    assert s(1 + period) == approx(max(l0, l1))
    lo, hi = min(l0, l1), max(l0, l1)
    for v in itertools.islice(s, 2 * period):
        assert lo - 1e-12 <= v <= hi + 1e-12
    for cls in (Triangle, Sin):
        c = cls(l0=l0, l1=l1, period=period)
        assert c(1) == approx(lo) and all(lo - 1e-12 <= v <= hi + 1e-12
                                          for v in itertools.islice(c, 2 * period))


def test_keyword_and_positional_forms_agree():
    assert Triangle(l0=3.0, l1=1.0, period=5) == Triangle(2.0, 1.0, 5)
    assert SinExp(l0=0.0, l1=2.0, period=3, decay=0.5) == SinExp(2.0, 0.0, 3, 0.5)
    assert repr(CosAnneal(l0=0.1, l1=1.0, period=10)) == \
        "CosAnneal(range=0.9, offset=0.1, period=10, restart=True)"


# ---------------------------------------------------------------- composite schedules

def test_sequence_switches_at_the_right_step():
    s = Sequence([(1.0, 2), (Exp(0.5, 0.5), 3)])
    assert values(s, range(1, 8)) == [1.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]
    assert s == Sequence([1.0, Exp(0.5, 0.5)], [2, 3])
    three = Sequence([0.1, 0.2, 0.3], [1, 2, 3])
    assert values(three, range(1, 9)) == [0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3]


def test_loop_repeats():
    s = Loop(Exp(1.0, 0.5), 3)
    assert values(s, range(1, 10)) == [1.0, 0.5, 0.25] * 3
    period = 7
    s = Loop(math.log, period)
    assert all(s(t) == math.log((t - 1) % period + 1) for t in range(1, 60))


def test_interpolator_rescales_t():
    # ParameterSchedulers' test: a schedule in epochs, stepped per batch
    epochs, nbatches = [10, 10, 30], 5
    s = Interpolator(Sequence([1, 2, 3], epochs), nbatches)
    expected = [v for v, n in zip([1, 2, 3], epochs) for _ in range(n * nbatches)]
    assert [s(t) for t in range(1, sum(epochs) * nbatches + 1)] == expected
    # continuous time with the identity instead of the ceiling
    dt = 1e-3
    s = Interpolator(math.sin, dt, lambda x: x)
    assert [s(k * dt) for k in range(1, 101)] == pytest.approx([math.sin(k) for k in range(1, 101)])


def test_shifted():
    base = Triangle(l0=0, l1=1, period=10)
    s = Shifted(base, 5)
    assert values(s, range(1, 51)) == values(base, range(5, 55))


def test_composed_schedule():
    # cosine annealing whose peak halves every period (ParameterSchedulers' cookbook)
    s = ComposedSchedule(CosAnneal(1.0, 0.0, 4), (Step(1.0, 0.5, 4), 0.0, 4))
    assert values(s, [1, 3, 5, 7, 9]) == approx([1.0, 0.5, 0.5, 0.25, 0.25])
    # dict parameters replace fields; a compose_fn builds anything
    s = ComposedSchedule(CosAnneal(1.0, 0.0, 4), {"range": Exp(1.0, 0.5)})
    assert s(2) == approx(0.5 * (1 + R2) / 2)
    s = ComposedSchedule(Exp(1.0, 0.5), (Constant(2.0),), lambda sch, ps: Exp(ps[0], sch.decay))
    assert s(3) == 0.5


def onecycle_reference(t, nsteps, startval, maxval, endval, pct):
    # ParameterSchedulers' test reference, written out
    cyc = lambda a, b, x: abs(a - b) * x + min(a, b)  # noqa: E731
    cos_ = lambda t, p: (1 + math.cos(math.pi * (t - 1) / p)) / 2  # noqa: E731
    w = math.ceil(pct * nsteps)
    d = nsteps - w
    return cyc(startval, maxval, cos_(t + w, w)) if t <= w else cyc(maxval, endval, cos_(t - w, d))


def test_onecycle_matches_reference_and_is_finite():
    s = OneCycle(50, 0.1)
    assert all(s(t) == onecycle_reference(t, 50, 0.1 / 25, 0.1, 0.1 / 1e5, 0.25) for t in range(1, 51))
    with pytest.raises(ScheduleBoundsError):
        s(51)
    assert len(s) == 50 and len(list(s)) == 50
    s = OneCycle(50, 0.1, startval=1e-4, endval=1e-2, percent_start=0.3)
    assert all(s(t) == onecycle_reference(t, 50, 1e-4, 0.1, 1e-2, 0.3) for t in range(1, 51))


def test_onecycle_by_hand_warmup_then_anneal():
    s = OneCycle(8, 1.0, startval=0.0, endval=0.0)
    c6 = math.cos(math.pi / 6)
    assert list(s) == approx([0.0, 0.5, 1.0, (1 + c6) / 2, 0.75, 0.5, 0.25, (1 - c6) / 2])
    s = OneCycle(100, 0.2)
    v = list(s)
    w = s.warmup
    assert w == 25 and v[0] == approx(0.2 / 25) and v[w] == approx(0.2) == max(v)
    assert all(a < b for a, b in zip(v[:w], v[1:w + 1]))        # warm-up rises
    assert all(a > b for a, b in zip(v[w:], v[w + 1:]))         # then anneals
    assert v[-1] > 0.2 / 1e5 and v[-1] == approx(0.2 / 1e5 + (0.2 - 0.2 / 1e5) * (1 - math.cos(math.pi / 75)) / 2)


def test_constant():
    s = Constant(0.3)
    assert all(v == 0.3 for v in itertools.islice(s, 100))
    assert Constant(4)(10) == 4 and isinstance(Constant(4)(10), int)


def test_stateful_next_reset_and_advance():
    it = Stateful(math.log)
    assert all(next_(it) == math.log(i) for i in range(1, 101))
    reset_(it)
    assert next_(it) == math.log(1)
    it = Stateful(math.log, advance=lambda s: s == 1)
    assert [next_(it) for _ in range(3)] == [math.log(1), math.log(2), math.log(2)]
    it = Stateful(Exp(1.0, 0.5))
    assert [next(it), next(it)] == [1.0, 0.5]
    saved = it.state_dict()
    other = Stateful(Exp(1.0, 0.5))
    other.load_state_dict(saved)
    assert next_(other) == 0.25 == next_(it)
    assert list(Stateful(Poly(1.0, 1, 3))) == approx([1.0, 2 / 3, 1 / 3])
    with pytest.raises(TypeError, match="Stateful"):
        next_(Exp(1.0, 0.5))


# ---------------------------------------------------------------- protocol

ALL = [
    Step(1.0, 0.5, 3), Step(1.0, 0.5, [2, 3]), Exp(0.1, 0.9), Poly(1.0, 2, 60), Inv(1.0, 0.1, 2),
    Triangle(l0=0.1, l1=1.0, period=7), TriangleDecay2(l0=0.1, l1=1.0, period=4),
    TriangleExp(l0=0.1, l1=1.0, period=4, decay=0.9), Sin(l0=0.1, l1=1.0, period=6),
    SinDecay2(l0=0.0, l1=1.0, period=5), SinExp(1.0, 0.5, 5, 0.95),
    CosAnneal(l0=0.1, l1=1.0, period=10), CosAnneal(l0=0.1, l1=1.0, period=10, restart=False),
    Sequence([(0.5, 3), (Exp(1.0, 0.5), 4), (CosAnneal(l0=0, l1=1, period=3), 2)]),
    Loop(Exp(1.0, 0.5), 4), Interpolator(Exp(1.0, 0.5), 3), Shifted(Exp(1.0, 0.5), 5),
    ComposedSchedule(CosAnneal(1.0, 0.0, 4), (Step(1.0, 0.5, 4), 0.0, 4)),
    ComposedSchedule(CosAnneal(1.0, 0.0, 4), {"range": Exp(1.0, 0.9)}),
    OneCycle(60, 0.1), Constant(0.3),
]


@pytest.mark.parametrize("s", ALL, ids=lambda s: type(s).__name__)
def test_protocol_iteration_immutability_and_t_checks(s):
    assert list(itertools.islice(s, 30)) == values(s, range(1, 31))
    assert [v for v, _ in zip(s, range(5))] == values(s, range(1, 6))
    assert [v for v, _ in zip(s, range(5))] == values(s, range(1, 6))   # stateless: again
    assert all(isinstance(v, (float, int)) for v in values(s, range(1, 31)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(s, dataclasses.fields(s)[0].name, 1.0)
    assert eval(repr(s), vars(S)) == s or isinstance(s, ComposedSchedule)
    hash(s)
    # Interpolator accepts sub-step times 0 < t < 1 (continuous time)
    for bad in (0, -1, math.nan, math.inf) + (() if isinstance(s, Interpolator) else (0.5,)):
        with pytest.raises(ValueError, match="t must be"):
            s(bad)
    for bad in (True, "1", None):
        with pytest.raises(TypeError, match="t must be"):
            s(bad)


def test_array_t_is_converted_to_python():
    s = CosAnneal(l0=0.1, l1=1.0, period=10)
    assert s(np.int64(3)) == s(np.array(3)) == s(3)
    assert isinstance(s(np.array(3)), float)
    with pytest.raises(ValueError, match="scalar"):
        s(np.array([1, 2]))
    if HAVE_TORCH:
        import torch
        assert s(torch.tensor(3)) == s(3)
    if HAVE_JAX:
        import jax.numpy as jnp
        assert s(jnp.asarray(3)) == s(3)


@pytest.mark.skipif(not HAVE_JAX, reason="JAX is not installed")
@pytest.mark.parametrize("s", ALL, ids=lambda s: type(s).__name__)
def test_traced_t_under_jit_matches_python(s):
    import jax
    import jax.numpy as jnp
    f = jax.jit(lambda t: jnp.asarray(s(t), dtype=jnp.float64))
    got = [float(f(jnp.asarray(t))) for t in range(1, 31)]
    np.testing.assert_allclose(got, values(s, range(1, 31)), rtol=1e-12, atol=1e-15)


def test_constructor_errors():
    with pytest.raises(TypeError, match="l1"):
        Triangle(l0=1.0, period=3)
    with pytest.raises(TypeError, match="not both"):
        CosAnneal(1.0, 0.0, 4, l0=1.0, l1=2.0)
    with pytest.raises(TypeError, match="period is required"):
        Sin(l0=0.0, l1=1.0)
    with pytest.raises(ValueError, match="period must be >= 1"):
        Sin(1.0, 0.0, 0)
    with pytest.raises(TypeError, match="period must be an integer"):
        Triangle(1.0, 0.0, 2.5)
    with pytest.raises(ValueError, match="2 schedules but 1 step"):
        Sequence([1.0, 2.0], [3])
    with pytest.raises(TypeError, match="pairs"):
        Sequence([1.0, 2.0])
    with pytest.raises(ValueError, match="percent_start"):
        OneCycle(10, 1.0, percent_start=1.5)
    with pytest.raises(TypeError, match="start must be a real"):
        Exp("0.1", 0.5)
    with pytest.raises(ValueError, match="rate"):
        Interpolator(Exp(1.0, 0.5), 0)
    with pytest.raises(TypeError, match="restart"):
        CosAnneal(l0=0.0, l1=1.0, period=3, restart=1)
    with pytest.raises(ValueError, match="step_sizes"):
        Step(1.0, 0.5, [])


def test_docstring_examples():
    from fluxtrain.schedules import complex, cyclic, decay, scheduler
    import fluxtrain
    globs = {k: getattr(fluxtrain, k) for k in fluxtrain.__all__}
    for mod in (decay, cyclic, complex, scheduler):
        result = doctest.testmod(mod, extraglobs=globs)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_registry_names_every_schedule():
    assert set(S.SCHEDULES) == {"Step", "Exp", "Poly", "Inv", "Triangle", "TriangleDecay2",
                                "TriangleExp", "Sin", "SinDecay2", "SinExp", "CosAnneal", "Sequence",
                                "Loop", "Interpolator", "Shifted", "ComposedSchedule", "OneCycle",
                                "Constant"}
    assert all(S.SCHEDULES[k].__name__ == k for k in S.SCHEDULES)
