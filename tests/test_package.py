import subprocess
import sys

import numpy as np
import pytest

import fluxtrain
from fluxtrain import _backend as B


def test_import_is_light():
    # A fresh interpreter: importing fluxtrain must not import torch or jax.
    code = "import sys, fluxtrain; print('torch' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_errors_are_value_errors():
    for e in (fluxtrain.DimensionMismatch, fluxtrain.DomainError, fluxtrain.ArgumentError):
        assert issubclass(e, ValueError)


def test_namespace_rejects_mixed_backends():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="mix array libraries"):
        B.namespace(np.zeros(2), torch.zeros(2))


def test_put_writes_in_place_or_rebinds(eager_backend):
    x = eager_backend.asarray([1.0, 2.0])
    y = eager_backend.asarray([3.0, 4.0])
    out = B.put(x, y)
    np.testing.assert_array_equal(eager_backend.to_numpy(out), [3.0, 4.0])
    if eager_backend.lib != "jax":
        assert out is x
    ro = np.array([1.0, 2.0])
    ro.flags.writeable = False
    out = B.put(ro, np.array([5.0, 6.0]))
    assert out is not ro and ro[0] == 1.0


def test_eps_and_float_dtype(eager_backend):
    xp = eager_backend.xp
    assert B.eps_for(xp.float32, xp) == float(np.finfo(np.float32).eps)
    assert B.float_dtype(eager_backend.asarray([1, 2]), xp) == xp.float64
    assert B.float_dtype(eager_backend.asarray([1.0], "float32"), xp) == xp.float32


def test_fast_registry_dispatch_and_disable():
    from fluxtrain._backend import fast
    key = object()
    fast.register(key, "numpy")(lambda: "fast")
    assert fast.lookup(key, B.namespace(np.zeros(1)))() == "fast"
    with fast.disabled():
        assert fast.lookup(key, B.namespace(np.zeros(1))) is None


def test_cli_without_command_prints_help(capsys):
    from fluxtrain.cli import main
    assert main([]) == 0
    assert "fluxtrain" in capsys.readouterr().out


def test_cli_survives_a_closed_pipe():
    # `fluxtrain losses | head -1` must not print a BrokenPipeError traceback.
    out = subprocess.run(f"{sys.executable} -m fluxtrain.cli losses | head -1", shell=True,
                         capture_output=True, text=True)
    assert out.stdout.strip() and "Traceback" not in out.stderr
