"""One fixture runs every backend: NumPy, PyTorch, JAX and JAX under ``jax.jit``.

A backend whose library is not installed is reported as skipped, never as failed.
"""
from __future__ import annotations

import os

import pytest

# XLA's GPU reductions use atomics and are not reproducible run to run; the resume tests
# assert bit-identical trajectories, as a user who wants them on a GPU must also ask for.
# Set before JAX is imported (a no-op on CPU).
# Two host devices let the CPU-only CI test placement checks across devices.
for _flag in ("--xla_gpu_deterministic_ops=true", "--xla_force_host_platform_device_count=2"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

from tests.util import Backend, HAVE_JAX, HAVE_TORCH

_ALL = ["numpy", "torch", "jax", "jax-jit"]


def _make(name: str) -> Backend:
    lib = "jax" if name.startswith("jax") else name
    if lib == "torch" and not HAVE_TORCH:
        pytest.skip("PyTorch is not installed")
    if lib == "jax" and not HAVE_JAX:
        pytest.skip("JAX is not installed")
    return Backend(name, jit=(name == "jax-jit"))


@pytest.fixture(params=_ALL)
def backend(request) -> Backend:
    """Every backend, jitted JAX included."""
    return _make(request.param)


@pytest.fixture(params=["numpy", "torch", "jax"])
def eager_backend(request) -> Backend:
    """Every backend without jit (for in-place updates and value checks)."""
    return _make(request.param)


@pytest.fixture(params=["torch", "jax", "jax-jit"])
def ad_backend(request) -> Backend:
    """The backends that can differentiate."""
    return _make(request.param)
