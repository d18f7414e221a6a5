"""``fluxtrain losses``: the list, one loss with its worked example, and unknown names."""
from __future__ import annotations

import subprocess
import sys

import pytest

import fluxtrain
from fluxtrain.cli import main
from fluxtrain.cli.losses_cmd import EXAMPLES, LOSSES, resolve, run_example

CONTRACT = ["mae", "mse", "msle", "huber_loss", "crossentropy", "logitcrossentropy",
            "binarycrossentropy", "logitbinarycrossentropy", "kldivergence", "poisson_loss",
            "hinge_loss", "squared_hinge_loss", "dice_coeff_loss", "tversky_loss",
            "binary_focal_loss", "focal_loss", "siamese_contrastive_loss", "ctc_loss"]


def test_tables_cover_every_loss():
    assert list(LOSSES) == CONTRACT
    assert set(EXAMPLES) == set(CONTRACT)


def test_list(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("18 losses")
    rows = {line.split()[0]: line for line in out[1:]}
    assert list(rows) == CONTRACT
    for name in CONTRACT:
        first_line = fluxtrain.losses.__dict__[name].__doc__.strip().splitlines()[0].strip()
        assert first_line in rows[name], name
        assert LOSSES[name].split()[0] in rows[name]
    assert "Flux.ctc_loss" in rows["ctc_loss"]


def test_one_loss_prints_docstring_and_seed_example(capsys):
    assert main(["losses", "logitcrossentropy"]) == 0
    out = capsys.readouterr().out
    assert fluxtrain.logitcrossentropy.__doc__.strip().splitlines()[0] in out
    assert "Worked example:" in out
    assert "onehotbatch([2, 1], range(1, 4))" in out
    assert out.rstrip().endswith("0.81781864    (float32)")  # the seed tutorial's value


@pytest.mark.parametrize("name", CONTRACT)
def test_every_example_runs(name):
    _expr, value = run_example(name)
    v = float(value)
    assert v == v and v != float("inf")


def test_example_values():
    assert float(run_example("mse")[1]) == pytest.approx(0.04666666666666663, rel=1e-12)
    assert float(run_example("logitbinarycrossentropy")[1]) == pytest.approx(0.3047555609137673, rel=1e-12)
    assert float(run_example("ctc_loss")[1]) == pytest.approx(3.6990738275138035, rel=1e-12)


def test_flux_spellings_resolve():
    assert resolve("Flux.Losses.mse") == "mse"
    assert resolve("Flux.ctc_loss") == "ctc_loss"
    assert resolve("MSE") == "mse"


def test_unknown_name_is_one_line_with_suggestions(capsys):
    assert main(["losses", "crossentrpy"]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("fluxtrain losses: error: unknown loss 'crossentrpy'; did you mean crossentropy")
    assert cap.out == ""
    assert main(["losses", "qqqq"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_subprocess_entry_point():
    out = subprocess.run([sys.executable, "-m", "fluxtrain.cli", "losses"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "logitcrossentropy" in out.stdout and "ctc_loss" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "fluxtrain.cli", "losses", "nope_loss"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
