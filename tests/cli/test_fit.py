"""``fluxtrain fit``: end to end on digits (>= 95 % validation accuracy by default), resume
bit-for-bit, every data set kind, CSV input, and one-line errors with exit status 2."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fluxtrain.cli import main
from fluxtrain.cli.commands import UserError
from fluxtrain.cli.fit_parse import parse_rule, parse_schedule
from tests.util import HAVE_JAX, HAVE_TORCH

pytest.importorskip("sklearn")
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="no torch")
needs_jax = pytest.mark.skipif(not HAVE_JAX, reason="no jax")
LIBS = [pytest.param("torch", marks=needs_torch), pytest.param("jax", marks=needs_jax)]


def fit(*args: str) -> int:
    return main(["fit", "--no-progress", *args])


def _history(out) -> list[dict]:
    return json.loads((out / "history.json").read_text())["history"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("fluxtrain fit: error: ")
    return err


@needs_torch
def test_default_digits_reaches_95_percent(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit("--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "digits" in text and "logitcrossentropy" in text and "epoch  10/10" in text
    hist = _history(out)
    assert len(hist) == 10
    assert hist[-1]["val_acc"] >= 0.95
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint.npz").exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "history.json", "loss.png"]


def _checkpoint_arrays(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("lib", LIBS)
def test_resume_is_bit_identical(lib, tmp_path, capsys):
    opts = ["--backend", lib, "--data", "wine", "--batchsize", "16",
            "--schedule", "CosAnneal(l0=0.01, l1=0.001, period=2)"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert fit(*opts, "--epochs", "3", "--out", str(a)) == 0
    assert fit(*opts, "--epochs", "1", "--out", str(b)) == 0
    assert fit(*opts, "--epochs", "3", "--out", str(b), "--resume") == 0
    assert "resuming from epoch 1" in capsys.readouterr().out
    ca, cb = _checkpoint_arrays(a / "checkpoint.npz"), _checkpoint_arrays(b / "checkpoint.npz")
    assert ca.keys() == cb.keys()
    for k in ca:  # model, optimiser state, RNG and the metadata (history) all equal
        np.testing.assert_array_equal(ca[k], cb[k], err_msg=k)
    assert _history(a) == _history(b)


@pytest.mark.parametrize("data,task,score", [
    ("iris", "multi-class", "acc"), ("breast_cancer", "binary", "acc"), ("diabetes", "regression", "R²")])
@pytest.mark.parametrize("lib", LIBS)
def test_other_data_sets(data, task, score, lib, tmp_path, capsys):
    assert fit("--data", data, "--epochs", "4", "--opt", "Adam(0.01)", "--backend", lib,
               "--out", str(tmp_path)) == 0
    text = capsys.readouterr().out
    assert task in text and f"val loss" in text and score in text
    hist = _history(tmp_path)
    key = "val_R²" if score == "R²" else "val_acc"
    assert np.isfinite(hist[-1][key])
    if score == "acc":
        assert 0.8 < hist[-1][key] <= 1.0
    else:
        assert hist[-1][key] > 0.2


@needs_torch
@pytest.mark.parametrize("loss", ["crossentropy", "focal_loss", "mse"])
def test_other_losses_for_classification(loss, tmp_path, capsys):
    assert fit("--data", "iris", "--epochs", "3", "--loss", loss, "--opt", "Adam(0.01)", "--out", str(tmp_path)) == 0
    assert f"loss {loss}" in capsys.readouterr().out


@needs_torch
@pytest.mark.parametrize("loss", ["hinge_loss", "binarycrossentropy"])
def test_other_losses_for_binary(loss, tmp_path):
    assert fit("--data", "breast_cancer", "--epochs", "2", "--loss", loss, "--out", str(tmp_path)) == 0
    assert _history(tmp_path)[-1]["val_acc"] > 0.8


def _write_csv(path, rows):
    path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")


@needs_torch
def test_csv_classification_and_regression(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 3))
    label = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    value = X @ np.array([1.0, -1.0, 2.0])
    rows = [["a", "b", "c", "label", "value"]] + [[*x, l, v] for x, l, v in zip(X, label, value)]
    csv = tmp_path / "data.csv"
    _write_csv(csv, rows)
    # the other target column is a feature: drop it by writing two files
    _write_csv(tmp_path / "cls.csv", [r[:4] for r in rows])
    _write_csv(tmp_path / "reg.csv", [r[:3] + [r[4]] for r in rows])
    assert fit("--data", str(tmp_path / "cls.csv"), "--target", "label", "--epochs", "5",
               "--opt", "Adam(0.01)", "--out", str(tmp_path / "o1")) == 0
    assert "binary classification" in capsys.readouterr().out
    assert _history(tmp_path / "o1")[-1]["val_acc"] > 0.8
    assert fit("--data", str(tmp_path / "reg.csv"), "--target", "value", "--epochs", "5",
               "--opt", "Adam(0.01)", "--out", str(tmp_path / "o2")) == 0
    assert "regression" in capsys.readouterr().out
    assert _history(tmp_path / "o2")[-1]["val_R²"] > 0.5


@pytest.mark.parametrize("args,needle", [
    (["--opt", "Adamm(0.001)"], "unknown optimisation rule 'Adamm'"),
    (["--opt", "Adam(0.001"], "malformed --opt"),
    (["--opt", "__import__('os').system('true')"], "malformed --opt"),
    (["--opt", "Adam(lr=0.1)"], "bad arguments in --opt"),
    (["--opt", "Descent(-1)"], "learning rate cannot be negative"),
    (["--opt", "Adam(eta='fast')"], "--opt \"Adam(eta='fast')\" cannot be used"),
    (["--schedule", "CosAnneal(l0=0.1, l1=0.01, period=0)"], "period must be >= 1"),
    (["--schedule", "Cos(0.1, 0.01, 10)"], "unknown schedule 'Cos'"),
    (["--loss", "nosuchloss"], "unknown loss 'nosuchloss'"),
    (["--data", "diabetes", "--loss", "logitcrossentropy"], "does not fit a regression task"),
    (["--data", "digits", "--loss", "logitbinarycrossentropy"], "does not fit a multi-class"),
    (["--data", "nosuchset"], "unknown data set 'nosuchset'"),
    (["--data", "missing.csv", "--target", "y"], "no such file: missing.csv"),
    (["--data", "missing.csv"], "--target COLUMN is required"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--hidden", "64,x"], "--hidden must be comma-separated integers"),
    (["--backend", "numpy"], "--backend must be torch or jax"),
    (["--resume"], "--resume: no checkpoint at"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path, capsys):
    assert fit("--out", str(tmp_path / "o"), *args) == 2
    assert needle in _error(capsys)


def test_csv_errors(tmp_path, capsys):
    csv = tmp_path / "d.csv"
    _write_csv(csv, [["x", "y"], [1, 0], ["abc", 1], [3, 0]])
    assert fit("--data", str(csv), "--target", "y", "--out", str(tmp_path)) == 2
    assert "line 3: column 'x' is not numeric ('abc')" in _error(capsys)
    assert fit("--data", str(csv), "--target", "z", "--out", str(tmp_path)) == 2
    assert "has no column 'z'; its columns are: x, y" in _error(capsys)
    _write_csv(csv, [["x", "y"], [1, 0], [2], [3, 0]])
    assert fit("--data", str(csv), "--target", "y", "--out", str(tmp_path)) == 2
    assert "line 3: 1 fields but the header has 2" in _error(capsys)
    _write_csv(csv, [["x", "y"], [1, 0], ["", 1], [3, 0]])
    assert fit("--data", str(csv), "--target", "y", "--out", str(tmp_path)) == 2
    assert "column 'x' is empty" in _error(capsys)


@needs_torch
def test_nonfinite_loss_keeps_earlier_files(tmp_path, capsys):
    out = tmp_path / "o"
    assert fit("--data", "iris", "--epochs", "1", "--out", str(out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert fit("--data", "iris", "--epochs", "2", "--opt", "Descent(1e30)", "--out", str(out)) == 2
    err = _error(capsys)
    assert "Loss is nan on data item" in err and "non-finite loss" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing corrupted


@needs_torch
def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    assert fit("--data", "iris", "--epochs", "1", "--out", str(out)) == 0
    capsys.readouterr()
    assert fit("--data", "iris", "--epochs", "2", "--opt", "Descent(0.1)", "--resume", "--out", str(out)) == 2
    assert "different settings (opt='Adam(0.003)')" in _error(capsys)


def test_missing_backend(monkeypatch, tmp_path, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    assert fit("--backend", "jax", "--out", str(tmp_path)) == 2
    assert "jax is not installed" in _error(capsys)


@needs_torch
def test_real_command_line_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fluxtrain.cli", "fit", "--opt", "Adam(", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "malformed --opt" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text,expected", [
    ("Adam(0.001)", "Adam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)"),
    ("ADAM", "Adam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)"),
    ("ADAM(0.001)", "Adam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)"),
    ("SGD(0.1)", "Descent(eta=0.1)"),
    ("RMSProp(0.001, 0.9)", "RMSProp(eta=0.001, rho=0.9, epsilon=1e-08, centred=False)"),
    ("Adam(eta=0.01, beta=(0.8, 0.99))", "Adam(eta=0.01, beta=(0.8, 0.99), epsilon=1e-08)"),
    ("Momentum(0.01, +0.5)", "Momentum(eta=0.01, rho=0.5)"),
])
def test_parse_rule(text, expected):
    with _no_fail():
        assert repr(parse_rule(text)) == expected


class _no_fail:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")  # old names may warn (FutureWarning), as in Flux

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def test_parse_nested_chain():
    from fluxtrain import Adam, ClipNorm, OptimiserChain, WeightDecay
    with _no_fail():
        r = parse_rule("OptimiserChain(ClipNorm(1.0), WeightDecay(1e-4), Adam(eta=1e-3))")
    assert isinstance(r, OptimiserChain)
    assert r == OptimiserChain(ClipNorm(1.0), WeightDecay(1e-4), Adam(1e-3))


@pytest.mark.parametrize("text", ["Adam.__class__", "Adam(0.1)[0]", "Adam(*[1])", "Adam(**{})", "lambda: 1",
                                  "Adam(0.1) + Adam()", "Adam(x=open('f'))", "[Adam()]", "1e-3", ""])
def test_parse_refuses_everything_else(text):
    with pytest.raises(UserError):
        parse_rule(text)


def test_parse_schedule():
    s = parse_schedule("CosAnneal(l0=0.1, l1=0.01, period=10)")
    assert abs(float(s(1)) - 0.1) < 1e-12
    with pytest.raises(UserError, match="unknown schedule 'Adam'"):
        parse_schedule("Adam(0.1)")


@needs_torch
def test_old_rule_name_is_a_one_line_note(tmp_path, capsys):
    assert fit("--data", "iris", "--epochs", "1", "--opt", "ADAM(0.01)", "--out", str(tmp_path)) == 0
    cap = capsys.readouterr()
    assert "opt Adam(eta=0.01" in cap.out
    assert cap.err.strip() == "fluxtrain fit: note: `ADAM` is deprecated, use `Adam` instead (it builds Adam)."
