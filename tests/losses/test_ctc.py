"""ctc_loss: Flux's vectors, torch's ctc_loss, brute-force enumeration, finite differences."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fluxtrain
from fluxtrain import ctc_loss
from tests.util import HAVE_JAX, HAVE_TORCH, REFERENCE, assert_close, reference_entries


def _julia(a):
    """A Julia-ordered nested list as a NumPy array in Python order (all axes reversed)."""
    return np.asarray(a, dtype=float).T


def _py_labels(julia_labels):
    return [int(v) - 1 for v in julia_labels]  # Flux's 1-based labels → 0-based


LOSS_ENTRIES = reference_entries("ctc_loss")
GRAD_ENTRIES = reference_entries("gradient(ctc_loss)[1]")


def test_vectors_present():
    if not REFERENCE.exists():
        pytest.skip("flux-vectors.json not available")
    assert len(LOSS_ENTRIES) == 2 and len(GRAD_ENTRIES) == 2


@pytest.mark.parametrize("entry", LOSS_ENTRIES, ids=lambda e: e["source"])
def test_flux_loss_vectors(backend, entry):
    yhat = backend.asarray(_julia(entry["args"][0]))
    out = backend.call(ctc_loss, yhat, _py_labels(entry["args"][1]))
    assert out.shape == ()
    assert_close(out, entry["expected"], rtol=entry["rtol"], dtype="float64")


@pytest.mark.parametrize("entry", GRAD_ENTRIES, ids=lambda e: e["source"])
def test_flux_gradient_vectors(ad_backend, entry):
    yhat = ad_backend.asarray(_julia(entry["args"][0]))
    labels = _py_labels(entry["args"][1])
    (g,) = ad_backend.grad(lambda a: ctc_loss(a, labels), yhat)
    np.testing.assert_allclose(g, _julia(entry["expected"]), rtol=1e-5, atol=1e-5)


def _flux_first():
    return np.array([[1.0, 2, 3], [2, 1, 1], [3, 3, 2]]).T, [0, 1]


def test_float32_in_float32_out(backend):
    x, y = _flux_first()
    out = backend.call(ctc_loss, backend.asarray(x, "float32"), y)
    assert_close(out, 3.6990738275138035, rtol=1e-6, dtype="float32")


def test_float32_gradient_dtype(ad_backend):
    x, y = _flux_first()
    (g,) = ad_backend.grad(lambda a: ctc_loss(a, y), ad_backend.asarray(x, "float32"))
    assert g.dtype == np.float32
    np.testing.assert_allclose(g.sum(axis=-1), 0.0, atol=1e-6)


def test_integer_scores_compute_in_float64(eager_backend):
    x, y = _flux_first()
    out = ctc_loss(eager_backend.asarray(x.astype(np.int64)), y)
    assert_close(out, 3.6990738275138035, rtol=1e-12, dtype="float64")


def test_labels_as_arrays_and_ranges(eager_backend):
    x, _ = _flux_first()
    yhat = eager_backend.asarray(x)
    for y in ([0, 1], (0, 1), range(2), np.array([0, 1]), eager_backend.asarray(np.array([0, 1]))):
        assert_close(ctc_loss(yhat, y), 3.6990738275138035, rtol=1e-12)


def test_traced_labels_under_jit():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    x, y = _flux_first()
    out = jax.jit(ctc_loss)(jnp.asarray(x), jnp.asarray(y))
    assert_close(out, 3.6990738275138035, rtol=1e-12)


# ---------------------------------------------------------------- independent references

def _brute_force(x: np.ndarray, y: list[int]) -> float:
    """-log Σ over every path in C^T that collapses (merge repeats, drop blanks) to y."""
    T, C = x.shape
    lp = x - x.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    total = []
    for path in itertools.product(range(C), repeat=T):
        collapsed = [k for i, k in enumerate(path) if k != C - 1 and (i == 0 or path[i - 1] != k)]
        if collapsed == list(y):
            total.append(sum(lp[t, k] for t, k in enumerate(path)))
    if not total:
        return math.inf
    m = max(total)
    return -(m + math.log(sum(math.exp(v - m) for v in total)))


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 5), C=st.integers(2, 4), data=st.data())
def test_matches_brute_force_enumeration(T, C, data):
    L = data.draw(st.integers(0, 4))
    y = data.draw(st.lists(st.integers(0, C - 2), min_size=L, max_size=L))
    seed = data.draw(st.integers(0, 2**31 - 1))
    x = np.random.default_rng(seed).normal(scale=2.0, size=(T, C))
    expected = _brute_force(x, y)
    out = float(ctc_loss(x, y))
    if math.isinf(expected):
        assert out == math.inf
    else:
        assert out == pytest.approx(expected, rel=1e-10)


def _torch_ctc(x: np.ndarray, y: list[int]):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    t = torch.tensor(x, requires_grad=True)
    C = x.shape[-1]
    lp = torch.log_softmax(t, -1)[:, None, :]
    loss = F.ctc_loss(lp, torch.tensor([y], dtype=torch.long), torch.tensor([x.shape[0]]),
                      torch.tensor([len(y)]), blank=C - 1, reduction="sum")
    loss.backward()
    return float(loss.detach()), t.grad.numpy()


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("seed", range(4))
def test_matches_torch_ctc_loss(ad_backend, seed):
    if ad_backend.jit and seed > 0:
        pytest.skip("JAX runs one jitted core with or without an outer jit: seed 0 covers it")
    rng = np.random.default_rng(seed)
    T, C = int(rng.integers(5, 20)), int(rng.integers(2, 8))
    L = int(rng.integers(0, T // 2 + 1))
    y = rng.integers(0, C - 1, size=L).tolist()
    if seed == 0 and C > 2:
        y = [0, 0, 1, 1][: max(0, min(4, T // 2))]  # repeated labels need a blank between them
    x = rng.normal(scale=3.0, size=(T, C))
    ref, ref_grad = _torch_ctc(x, y)
    assert float(ad_backend.to_numpy(ad_backend.call(ctc_loss, ad_backend.asarray(x), y))) == \
        pytest.approx(ref, rel=1e-10)
    (g,) = ad_backend.grad(lambda a: ctc_loss(a, y), ad_backend.asarray(x))
    np.testing.assert_allclose(g, ref_grad, rtol=1e-8, atol=1e-10)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
def test_torch_gradcheck_float64():
    import torch
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(7, 4)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: ctc_loss(a, [0, 2, 2, 1]), (x,))
    xb = torch.tensor(rng.normal(size=(2, 6, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: ctc_loss(a, [[1, 0], [1]], agg="sum"), (xb,))


@pytest.mark.skipif(not HAVE_JAX, reason="JAX is not installed")
def test_jax_gradient_vs_finite_differences():
    import jax.numpy as jnp
    from jax.test_util import check_grads
    x = jnp.asarray(np.random.default_rng(4).normal(size=(6, 4)))
    check_grads(lambda a: ctc_loss(a, [2, 0, 0]), (x,), order=1, modes=["rev"], eps=1e-6)


def test_gradient_is_softmax_minus_posterior(ad_backend):
    # Posterior occupancy per time step sums to 1, as does softmax: gradient rows sum to 0.
    x = np.random.default_rng(5).normal(size=(8, 5))
    (g,) = ad_backend.grad(lambda a: ctc_loss(a, [3, 1, 3]), ad_backend.asarray(x))
    np.testing.assert_allclose(g.sum(axis=-1), 0.0, atol=1e-12)


# ---------------------------------------------------------------- edges and extensions

def test_empty_labels_is_the_all_blank_path(backend):
    x = np.random.default_rng(6).normal(size=(5, 3))
    lsm = x - np.log(np.exp(x).sum(-1, keepdims=True))
    out = backend.call(ctc_loss, backend.asarray(x), [])
    assert_close(out, -lsm[:, 2].sum(), rtol=1e-12)


def test_impossible_alignment_is_inf_with_zero_gradient(ad_backend):
    x = np.random.default_rng(7).normal(size=(3, 3))
    # [0, 0] needs T >= 3 (a blank between the repeats); [0, 0, 0] needs T >= 5.
    assert np.isfinite(float(ad_backend.to_numpy(ad_backend.call(ctc_loss, ad_backend.asarray(x), [0, 0]))))
    out = ad_backend.call(ctc_loss, ad_backend.asarray(x), [0, 0, 0])
    assert float(ad_backend.to_numpy(out)) == math.inf
    (g,) = ad_backend.grad(lambda a: ctc_loss(a, [0, 0, 0]), ad_backend.asarray(x))
    np.testing.assert_array_equal(g, 0.0)


def test_single_step_and_single_class():
    x = np.array([[0.5, -1.0, 2.0]])
    lsm = x - np.log(np.exp(x).sum())
    out = ctc_loss(x, [1])
    assert isinstance(out, np.ndarray) and out.shape == ()  # a 0-d array, not a NumPy scalar
    assert float(out) == pytest.approx(-lsm[0, 1])
    assert float(ctc_loss(np.zeros((4, 1)), [])) == 0.0  # only the blank exists


def test_batched_form_matches_per_sample(backend):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 9, 5))
    ys = [[0, 1, 1], [], [3, 2, 0, 1]]
    each = np.array([float(ctc_loss(x[i], ys[i])) for i in range(3)])
    xb = backend.asarray(x)
    assert_close(backend.call(ctc_loss, xb, ys, agg="none"), each, rtol=1e-12)
    assert_close(backend.call(ctc_loss, xb, ys), each.mean(), rtol=1e-12)
    assert_close(backend.call(ctc_loss, xb, ys, agg="sum"), each.sum(), rtol=1e-12)
    assert_close(backend.call(ctc_loss, xb, ys, agg=lambda v: v[1]), each[1], rtol=1e-12)
    same = [[0, 1], [2, 2], [3, 0]]
    assert_close(backend.call(ctc_loss, xb, backend.asarray(np.array(same))),
                 np.mean([float(ctc_loss(x[i], same[i])) for i in range(3)]), rtol=1e-12)


def test_batched_gradient_matches_per_sample(ad_backend):
    if ad_backend.jit:
        pytest.skip("JAX runs one jitted core with or without an outer jit: 'jax' covers it")
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 6, 4))
    ys = [[0, 2], [1, 1, 1]]
    (g,) = ad_backend.grad(lambda a: ctc_loss(a, ys, agg="sum"), ad_backend.asarray(x))
    for i in range(2):
        (gi,) = ad_backend.grad(lambda a: ctc_loss(a, ys[i]), ad_backend.asarray(x[i]))
        np.testing.assert_allclose(g[i], gi, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("y, match", [
    ([0.0, 1.0], "integer labels"),
    ([0.5], "integer labels"),
    ([True, False], "integer labels"),
    ([0, 2], r"label 2, outside 0\.\.1.*blank"),   # 2 is the blank of C=3
    ([-1, 0], r"label -1, outside"),
    ([[0, 1]], "1-D"),
    ("ab", "sequence of integer labels"),
    (3, "sequence of integer labels"),
])
def test_bad_labels(y, match):
    x, _ = _flux_first()
    with pytest.raises(ValueError, match=match) as info:
        ctc_loss(x, y)
    assert "y" in str(info.value)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4, 5), (0, 3), (3, 0)])
def test_bad_score_shapes(shape):
    with pytest.raises(ValueError, match="ŷ"):
        ctc_loss(np.zeros(shape), [])


def test_bad_batch_arguments():
    x = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="2 samples but y holds 1"):
        ctc_loss(x, [[0]])
    with pytest.raises(ValueError, match="list of N label sequences"):
        ctc_loss(x, [0, 1] and np.array([0, 1]))
    with pytest.raises(ValueError, match=r"y\[1\] holds label 5"):
        ctc_loss(x, [[0], [5]])
    with pytest.raises(ValueError, match="agg"):
        ctc_loss(x, [[0], [1]], agg="max")
    with pytest.raises(TypeError, match="agg"):
        ctc_loss(x, [[0], [1]], agg=5)


def test_non_finite_scores_propagate():
    x, y = _flux_first()
    x = x.copy()
    x[1, 0] = np.nan
    assert np.isnan(float(ctc_loss(x, y)))


def test_exported_at_top_level():
    assert fluxtrain.ctc_loss is fluxtrain.losses.ctc_loss is ctc_loss


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_fast_path_matches_generic(dtype):
    import torch
    from fluxtrain._backend import fast
    rng = np.random.default_rng(10)
    x = rng.normal(scale=2.0, size=(5, 6, 4)).astype(dtype)
    x[4, 2, 1] = np.inf  # NNlib's logsoftmax rule: that frame must be class 1
    ys = [[0, 1], [], [2, 2, 2, 2], [1, 1, 0], [1]]  # [2, 2, 2, 2] needs T >= 7: inf

    def run():
        a = torch.tensor(x, requires_grad=True)
        loss = ctc_loss(a, ys, agg="none")
        torch.where(torch.isfinite(loss), loss, 0.0).sum().backward()
        return loss.detach().numpy(), a.grad.numpy()

    fast_loss, fast_grad = run()
    with fast.disabled():
        ref_loss, ref_grad = run()
    assert fast_loss.dtype == np.dtype(dtype) and fast_loss[2] == np.inf
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=tol)
    np.testing.assert_allclose(fast_grad, ref_grad, rtol=tol, atol=tol)
    assert np.isfinite(fast_grad).all()


def test_infinite_score_follows_nnlib_logsoftmax(backend):
    x = np.array([[0.5, 1.0, -0.2], [np.inf, 0.0, 1.0], [0.3, 0.1, 0.2]])
    with np.errstate(invalid="ignore"):  # row 1 (inf - inf) is overwritten below
        lsm = x - np.log(np.exp(x).sum(-1, keepdims=True))
    lsm[1] = [0.0, -np.inf, -np.inf]  # +inf entry → 0, the others → -inf
    # Label [0] with frame 1 forced to class 0: paths b0b, 0 0 b, b 0 0, 0 0 0.
    paths = [(2, 0, 2), (0, 0, 2), (2, 0, 0), (0, 0, 0)]
    expected = -np.log(sum(np.exp(sum(lsm[t, k] for t, k in enumerate(p))) for p in paths))
    assert_close(backend.call(ctc_loss, backend.asarray(x), [0]), expected, rtol=1e-12)


@pytest.mark.skipif(not HAVE_JAX, reason="JAX is not installed")
def test_jax_without_x64_float32_no_warnings():
    # The test suite enables x64; JAX users mostly do not. Warnings are errors here, so an
    # int64 request that JAX would truncate fails the test.
    import subprocess
    import sys
    code = (
        "import numpy as np, jax, jax.numpy as jnp\n"
        "from fluxtrain import ctc_loss\n"
        "x = jnp.asarray(np.array([[1., 2, 3], [2, 1, 3], [3, 1, 2]], dtype=np.float32))\n"
        "a = ctc_loss(x, [0, 1]); b = jax.jit(ctc_loss)(x, jnp.array([0, 1]))\n"
        "g = jax.jit(jax.grad(lambda v, y: ctc_loss(v, y, agg='sum')))(jnp.stack([x, x]), jnp.array([[0, 1], [1, 0]]))\n"
        "print(a.dtype, b.dtype, g.dtype, float(a), float(b))\n")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    dts = out.stdout.split()
    assert dts[:3] == ["float32"] * 3
    assert float(dts[3]) == pytest.approx(3.6990738, rel=1e-6) and float(dts[4]) == pytest.approx(3.6990738, rel=1e-6)


def test_docstring_example():
    import doctest
    import fluxtrain.losses.ctc as mod
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 3
