"""The seed tutorial example runs as a script and prints the tutorial's values."""
from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

from tests.util import HAVE_JAX, HAVE_TORCH

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "examples" / "seed_tutorial.py"


def _load():
    spec = importlib.util.spec_from_file_location("seed_tutorial", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not (HAVE_TORCH or HAVE_JAX), reason="needs torch or jax")
def test_seed_tutorial_script_runs():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # flux-semantics.md §9: the tutorial's values
    expected = {"mse": "0.04666666666666663", "logitbinarycrossentropy": "0.3047555609137673",
                "binarycrossentropy": "0.30475556091376704", "logitcrossentropy": "0.81781864",
                r"crossentropy\(softmax\)": "0.8178184"}
    for name, value in expected.items():
        assert re.search(rf"^{name}\s+{re.escape(value)}$", out, re.M), (name, out)
    acc = float(re.search(r"final accuracy ([0-9.]+)", out).group(1))
    assert acc >= 0.9
    assert "Part 3" in out and "Traceback" not in r.stderr


@pytest.mark.skipif(not (HAVE_TORCH and HAVE_JAX), reason="needs torch and jax")
def test_seed_tutorial_same_on_jax_and_torch(capsys):
    mod = _load()
    a_t = mod.part2_train("torch", epochs=3)
    a_j = mod.part2_train("jax", epochs=3)
    assert abs(a_t - a_j) < 0.02 and a_t > 0.8
