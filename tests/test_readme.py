"""The README's code runs as printed (the Losses section has its own value checks in
tests/losses/test_seed_examples.py)."""
import re
from pathlib import Path

import numpy as np
import pytest

import fluxtrain as ft
from tests.util import HAVE_JAX, HAVE_TORCH

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _blocks(section: str) -> list[str]:
    body = README.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
def test_one_screen_torch_loop_learns():
    env: dict = {}
    exec(_blocks("In one screen")[0], env)
    # 100 Adam steps on 32 fixed samples: the loss must have dropped below log(3).
    assert float(env["loss"]) < np.log(3)


@pytest.mark.skipif(not HAVE_JAX, reason="JAX is not installed")
def test_one_screen_jax_step_is_jittable():
    import jax.numpy as jnp
    env: dict = {}
    exec(_blocks("In one screen")[1], env)
    x = jnp.ones((8, 4))
    y = jnp.eye(3)[jnp.array([0, 1, 2, 0, 1, 2, 0, 1])]
    state, params = env["state"], env["params"]
    first = float(env["loss"](params, x, y))
    for _ in range(20):
        state, params = env["step"](state, params, x, y)
    assert float(env["loss"](params, x, y)) < first


def test_schedules_block_runs():
    state = ft.setup(ft.Momentum(0.1), np.zeros(3))
    env = {"state": state, "ft": ft}
    exec(_blocks("Schedules (ParameterSchedulers.jl)")[0], env)
    assert state.rule.eta == pytest.approx(ft.CosAnneal(l0=1e-2, l1=1e-4, period=10)(100))
    assert isinstance(env["rule"], ft.Scheduler)
