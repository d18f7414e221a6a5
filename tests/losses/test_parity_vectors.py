"""Parity with Flux over ``shared/reference/flux-vectors.json``: every entry about a loss
(ctc_loss excepted: tests/losses/test_ctc.py) or a loss helper (xlogx, xlogy, softmax,
label_smoothing), on every backend of the ``backend`` fixture.

Arrays in the JSON are in Julia index order; they are converted to batch-first Python
layout by reversing all axes, and ``dims=d`` becomes ``axis=-d``.

Tolerances (semantics file §9): float64 results rtol 1e-12, float32 results rtol 1e-6,
printed-digit entries at the entry's ``rtol``; "==" doctest values are compared exactly
on NumPy. ``python tests/losses/test_parity_vectors.py`` prints the count of passes.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

if __name__ == "__main__":  # run as a script: make the ``tests`` package importable
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import fluxtrain  # noqa: E402
from tests.util import assert_close  # noqa: E402

FNS = {
    "xlogx", "xlogy", "softmax", "label_smoothing", "mae", "mse", "msle", "huber_loss",
    "crossentropy", "logitcrossentropy", "binarycrossentropy", "logitbinarycrossentropy",
    "kldivergence", "poisson_loss", "hinge_loss", "squared_hinge_loss", "dice_coeff_loss",
    "tversky_loss", "binary_focal_loss", "focal_loss", "siamese_contrastive_loss",
}

_JULIA_DEFAULT_RTOL = {math.sqrt(np.finfo(np.float64).eps), math.sqrt(np.finfo(np.float32).eps)}

# Float32 entries whose literal is a Float64 reference (Flux's test compares with
# isapprox's Float32 default); the Float32 result is ~1.4e-6 away, so the entry's rtol holds.
_FLOAT64_REFERENCE = {"1.1277571935622628"}

# Anonymous ``agg`` functions in the JSON, translated.
_AGGS = {
    "sum": "sum",
    "identity": "none",
    "x -> mean([1.0;2.0;3.0] .* x)":
        lambda x: fluxtrain._backend.namespace(x).mean(
            fluxtrain._backend.namespace(x).asarray([1.0, 2.0, 3.0], dtype=x.dtype) * x),
}

_NP_DTYPES = {"Float64": np.float64, "Float32": np.float32, "Int64": np.int64, "Bool": np.bool_,
              "ComplexF64": np.complex128}


def _reference_path() -> Path | None:
    here = Path(__file__).resolve()
    candidates = [here.parents[3] / "shared" / "reference" / "flux-vectors.json"]
    if os.environ.get("FLUXTRAIN_REFERENCE"):
        env = Path(os.environ["FLUXTRAIN_REFERENCE"])
        candidates.insert(0, env / "flux-vectors.json" if env.is_dir() else env)
    for c in candidates:
        if c.is_file():
            return c
    return None


def _load() -> list[dict]:
    p = _reference_path()
    if p is None:
        return []
    return [e for e in json.loads(p.read_text(encoding="utf-8")) if e["fn"] in FNS]


ENTRIES = _load()


def _julia_to_python(a, dtype: str) -> np.ndarray:
    """A nested list in Julia dims order as a NumPy array in batch-first order."""
    def conv(v):
        if isinstance(v, list):
            return [conv(i) for i in v]
        if isinstance(v, dict):
            return complex(v["re"], v["im"])
        if isinstance(v, str):
            return float(v)
        return v
    arr = np.asarray(conv(a), dtype=_NP_DTYPES[dtype])
    return np.transpose(arr, tuple(reversed(range(arr.ndim))))


def _scalar(v, dtype: str):
    if isinstance(v, dict):
        return complex(v["re"], v["im"])
    if isinstance(v, str):
        return float(v)
    if dtype == "Float32":
        return np.float32(v)
    if dtype == "Float64":
        return float(v)
    if dtype == "Bool":
        return bool(v)
    return int(v)


def _build_args(entry, backend):
    args = []
    for i, (a, shape, dt) in enumerate(zip(entry["args"], entry["shapes"], entry["dtypes"])):
        if shape:
            args.append(backend.asarray(_julia_to_python(a, dt)))
        elif entry["fn"] == "label_smoothing" and i == 1:
            args.append(_scalar(a, dt))  # α: its Julia type decides the result type
        elif backend.lib != "numpy" and (i == 0 or entry["fn"] in ("xlogx", "xlogy")):
            # A scalar prediction (and the helpers' scalars) as a 0-d array of the
            # backend under test; a scalar target stays a Python number.
            args.append(backend.asarray(np.asarray(_scalar(a, dt), dtype=_NP_DTYPES[dt])))
        else:
            args.append(_scalar(a, dt))
    return args


def _build_kwargs(entry) -> dict:
    kw = {}
    kdt = entry.get("kwarg_dtypes", {})
    for k, v in entry.get("kwargs", {}).items():
        if k == "dims":
            kw["axis"] = None if v == 0 else -v
        elif k == "agg":
            kw["agg"] = _AGGS[v]
        else:
            kw[k] = int(v) if kdt.get(k) == "Int64" else float(v)
    return kw


def _expected(entry):
    e = entry["expected"]
    if isinstance(e, list):
        dt = entry.get("expected_dtype", "Float64")
        return _julia_to_python(e, dt if dt in _NP_DTYPES else "Float64")
    return float(e) if isinstance(e, str) else e


def _rtol(entry, result_dtype) -> float:
    given = entry.get("rtol")
    if str(entry["expected"]) in _FLOAT64_REFERENCE:
        return given
    default = 1e-6 if result_dtype == np.float32 else 1e-12
    if given is None or given in _JULIA_DEFAULT_RTOL:
        return default
    return max(given, default)


def _id(i, e):
    return f"{i}-{e['fn']}"


@pytest.mark.skipif(not ENTRIES, reason="shared/reference/flux-vectors.json not found")
@pytest.mark.parametrize("entry", ENTRIES, ids=[_id(i, e) for i, e in enumerate(ENTRIES)])
def test_flux_vector(entry, backend):
    fn = getattr(fluxtrain, entry["fn"])
    args = _build_args(entry, backend)
    kwargs = _build_kwargs(entry)
    check = entry["check"]
    if check == "throws":
        err = getattr(fluxtrain, entry["expected"]["error"])
        with pytest.raises(err, match=entry["expected"]["message"]):
            backend.call(fn, *args, **kwargs)
        return
    out = backend.call(fn, *args, **kwargs)
    got = backend.to_numpy(out)
    want = _expected(entry)
    assert isinstance(out, type(backend.asarray([0.0]))) or backend.lib == "jax", type(out)
    if "expected_dtype" in entry:
        assert got.dtype == _NP_DTYPES[entry["expected_dtype"]], (got.dtype, entry["expected_dtype"])
    elif any(d == "Float32" for d, s in zip(entry["dtypes"], entry["shapes"])):
        assert got.dtype == np.float32
    else:
        assert got.dtype in (np.float64, np.complex128)
    if "expected_shape" in entry:
        assert got.shape == tuple(reversed(entry["expected_shape"]))
    if check == "isnan":
        assert np.isnan(got).all()
    elif check in ("iszero", "== 0") or "exact 0" in check:
        if backend.jit:
            # XLA contracts a*b - c*d into fused multiply-adds, so a cancellation that is
            # exact eagerly (Julia's x ≈ 0 needs an exact 0) leaves a rounding residue.
            np.testing.assert_allclose(got, 0, atol=1e-15)
        else:
            assert np.all(got == 0), got
    elif check.startswith("==") and "exact Float32" in check:
        np.testing.assert_array_equal(got, want)
    elif check.startswith("== (doctest)") or check.startswith("== (docstring"):
        # Printed shortest round-trip values: bit-exact on NumPy (Flux's operation order);
        # other backends' libm may differ by an ulp.
        assert_close(got, want, rtol=0 if backend.lib == "numpy" else 1e-14)
    else:
        assert_close(got, want, rtol=_rtol(entry, got.dtype))


def test_every_helper_and_loss_is_covered():
    if not ENTRIES:
        pytest.skip("shared/reference/flux-vectors.json not found")
    # Every loss of the issue except ctc_loss has at least one vector (coverage guard).
    assert {e["fn"] for e in ENTRIES} == FNS
    assert len(ENTRIES) >= 100


if __name__ == "__main__":  # pragma: no cover
    print(f"{len(ENTRIES)} Flux vectors about losses and helpers, each on every backend")
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
