"""``fluxtrain fit``: train a small multilayer perceptron with fluxtrain's losses, rules,
schedules, ``DataLoader`` and ``train``, on a scikit-learn data set or a CSV file.

Every epoch prints train/validation loss and accuracy (R² for regression) and writes, each
atomically, ``checkpoint.npz`` (model, optimiser state, epoch, shuffling RNG, history),
``history.json`` and ``loss.png`` into ``--out``. ``--resume`` continues from the
checkpoint and gives bit-for-bit the same result as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .._backend import to_numpy
from .._io import atomic_write
from .commands import UserError, command
from .fit_data import BUILTIN, load_dataset, split_dataset
from .fit_model import BACKENDS, make_model
from .fit_parse import parse_rule, parse_schedule

DEFAULTS = {"opt": "Adam(0.003)", "epochs": 10, "batchsize": 32, "hidden": "64", "seed": 0,
            "val_fraction": 0.2}

#: Which losses fit which task, and what is applied to the network's raw output first
#: ("logit": nothing; "softmax"/"sigmoid": probabilities; "pm1": targets in {-1, 1}).
LOSSES: dict[str, dict[str, str]] = {
    "multiclass": {"logitcrossentropy": "logit", "crossentropy": "softmax", "focal_loss": "softmax",
                   "kldivergence": "softmax", "mse": "softmax", "mae": "softmax", "huber_loss": "softmax"},
    "binary": {"logitbinarycrossentropy": "logit", "binarycrossentropy": "sigmoid",
               "binary_focal_loss": "sigmoid", "hinge_loss": "pm1", "squared_hinge_loss": "pm1",
               "mse": "sigmoid", "mae": "sigmoid", "huber_loss": "sigmoid"},
    "regression": {"mse": "logit", "mae": "logit", "huber_loss": "logit"},
}
DEFAULT_LOSS = {"multiclass": "logitcrossentropy", "binary": "logitbinarycrossentropy", "regression": "mse"}
_TASK_WORDS = {"multiclass": "multi-class classification", "binary": "binary classification",
               "regression": "regression"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits",
                   help=f"a scikit-learn data set ({', '.join(BUILTIN)}; default digits) or a CSV file")
    p.add_argument("--target", default=None, help="the CSV column to predict")
    p.add_argument("--task", default="auto", choices=["auto", "classification", "binary", "multiclass", "regression"],
                   help="override the task read from the data (default auto)")
    p.add_argument("--loss", default=None,
                   help="a fluxtrain loss name (default: logitcrossentropy / logitbinarycrossentropy / mse)")
    p.add_argument("--opt", default=DEFAULTS["opt"],
                   help=f'the optimisation rule, Flux spelling (default "{DEFAULTS["opt"]}"; e.g. "Descent(0.1)", '
                        '"OptimiserChain(WeightDecay(1e-4), Adam(0.001))", old names SGD, ADAM accepted)')
    p.add_argument("--schedule", default=None,
                   help='a learning-rate schedule applied per epoch with adjust_, e.g. '
                        '"CosAnneal(l0=0.01, l1=0.0001, period=20)"')
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help=f"epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--batchsize", type=int, default=DEFAULTS["batchsize"],
                   help=f"mini-batch size (default {DEFAULTS['batchsize']})")
    p.add_argument("--hidden", default=DEFAULTS["hidden"],
                   help=f"hidden layer widths, comma-separated (default {DEFAULTS['hidden']})")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed for split, weights, shuffling")
    p.add_argument("--val-fraction", type=float, default=DEFAULTS["val_fraction"],
                   help="fraction held out for validation (default 0.2)")
    p.add_argument("--backend", default="torch", help="torch (default) or jax")
    p.add_argument("--out", default=os.path.join("runs", "fit"), help="output folder (default runs/fit)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: fastest for a small MLP; 0 keeps torch's default)")


# ----------------------------------------------------------------------------- helpers

def _check_args(a: argparse.Namespace) -> list[int]:
    if a.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {a.epochs}")
    if a.batchsize < 1:
        raise UserError(f"--batchsize must be at least 1, got {a.batchsize}")
    if not 0 < a.val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, got {a.val_fraction}")
    if a.backend not in BACKENDS:
        raise UserError(f"--backend must be torch or jax, got {a.backend!r}")
    try:
        hidden = [int(h) for h in a.hidden.split(",") if h.strip()] if a.hidden.strip() else []
    except ValueError:
        raise UserError(f"--hidden must be comma-separated integers such as 64 or 128,64; got {a.hidden!r}") from None
    if any(h < 1 for h in hidden):
        raise UserError(f"--hidden widths must be positive, got {a.hidden!r}")
    return hidden


def _choose_loss(name: str | None, task: str) -> tuple[str, str]:
    from .. import losses
    if name is None:
        name = DEFAULT_LOSS[task]
    if name not in losses.__all__ or not callable(getattr(losses, name, None)):
        known = sorted({n for t in LOSSES.values() for n in t})
        raise UserError(f"unknown loss {name!r}; losses for fit: {', '.join(known)}")
    table = LOSSES[task]
    if name not in table:
        raise UserError(f"--loss {name} does not fit a {_TASK_WORDS[task]} task; use one of "
                        f"{', '.join(table)} (default {DEFAULT_LOSS[task]})")
    return name, table[name]


def _targets(y: np.ndarray, task: str, link: str, k: int) -> np.ndarray:
    """The arrays the loss compares with: one-hot (n, k), or a column (n, 1)."""
    if task == "multiclass":
        out = np.zeros((len(y), k), dtype=np.float32)
        out[np.arange(len(y)), y] = 1.0
        return out
    col = np.asarray(y, dtype=np.float32).reshape(-1, 1)
    return 2 * col - 1 if link == "pm1" else col


def _plot(path: str, history: list[dict], task: str, title: str) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("fluxtrain fit: matplotlib is not installed; no loss curve written "
              "(pip install 'fluxtrain[fit]')", file=sys.stderr)
        return
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas: no display or pyplot state needed
    ax = fig.add_subplot(1, 1, 1)
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(ep, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


# ----------------------------------------------------------------------------- command

@command("fit", "train a small MLP on a scikit-learn data set or a CSV file", add_arguments)
def run(a: argparse.Namespace) -> int:
    if a.threads < 0:
        raise UserError(f"--threads must be 0 or more, got {a.threads}")
    if a.backend == "torch" and a.threads > 0 and _have("torch"):
        import torch
        before = torch.get_num_threads()
        # a small MLP runs fastest on one thread; more threads mostly add contention
        torch.set_num_threads(a.threads)
        try:
            return _run(a)
        finally:
            torch.set_num_threads(before)
    return _run(a)


def _have(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _run(a: argparse.Namespace) -> int:
    # Everything is checked before anything is written.
    hidden = _check_args(a)
    notes: list[str] = []
    rule = parse_rule(a.opt, notes)
    for note in dict.fromkeys(notes):
        print(f"fluxtrain fit: note: {note}", file=sys.stderr)
    schedule = parse_schedule(a.schedule) if a.schedule else None
    ds = load_dataset(a.data, a.target, a.task)
    loss_name, link = _choose_loss(a.loss, ds.task)
    sp = split_dataset(ds, a.seed, a.val_fraction)
    k = len(ds.classes) if ds.task == "multiclass" else 1
    model = make_model(a.backend, [sp.X_train.shape[1], *hidden, k], a.seed)

    from .. import losses
    from ..optimise import adjust_, setup
    from ..train import DataLoader, load_checkpoint, save_checkpoint, train
    from .._errors import DomainError

    lossf = getattr(losses, loss_name)
    fwd = model.forward
    if link == "softmax":
        def predict(m, x):
            return losses.softmax(fwd(m, x), axis=-1)
    elif link == "sigmoid":
        def predict(m, x):
            return losses.sigmoid(fwd(m, x))
    else:
        predict = fwd

    def loss(m, x, y):
        return lossf(predict(m, x), y)

    if model.backend == "jax":
        import jax
        loss = jax.jit(loss)

    Xtr, Xva = model.asarray(sp.X_train), model.asarray(sp.X_val)
    Ytr = model.asarray(_targets(sp.y_train, ds.task, link, k))
    Yva = model.asarray(_targets(sp.y_val, ds.task, link, k))

    config = {"data": a.data, "target": a.target, "task": ds.task, "loss": loss_name, "opt": a.opt,
              "schedule": a.schedule, "batchsize": a.batchsize, "hidden": hidden, "seed": a.seed,
              "val_fraction": a.val_fraction, "backend": a.backend}
    shuffle_rng = np.random.default_rng([a.seed, 3])
    params = model.params
    state = setup(rule, params)
    history: list[dict] = []
    start = 0
    os.makedirs(a.out, exist_ok=True)
    ckpt = os.path.join(a.out, "checkpoint.npz")
    if a.resume:
        if not os.path.exists(ckpt):
            raise UserError(f"--resume: no checkpoint at {ckpt}")
        try:
            ck = load_checkpoint(ckpt, params, state, rng_like=shuffle_rng)
        except (ValueError, KeyError, OSError) as e:
            raise UserError(f"--resume: cannot use {ckpt}: {e}") from None
        saved = (ck.extra or {}).get("config", {})
        diff = [key for key in config if saved.get(key) != config[key]]
        if diff:
            raise UserError(f"--resume: {ckpt} was made with different settings ("
                            + ", ".join(f"{d}={saved.get(d)!r}" for d in diff) + "); use the same options or another --out")
        params, state, start, history = ck.model, ck.state, int(ck.epoch), list(ck.extra["history"])
        shuffle_rng = ck.rng
        print(f"resuming from epoch {start} ({ckpt})")
    loader = DataLoader((Xtr, Ytr), batchsize=a.batchsize, shuffle=True, rng=shuffle_rng)

    task_word = _TASK_WORDS[ds.task]
    print(f"fit: {ds.name} ({task_word}, {len(sp.y_train)} train / {len(sp.y_val)} validation rows), "
          f"MLP {[sp.X_train.shape[1], *hidden, k]}, {a.backend}, loss {loss_name}, opt {rule!r}"
          + (f", schedule {schedule!r}" if schedule else ""))

    def metrics(m, X, Y, y_true):
        with model.no_grad():
            out = fwd(m, X)
            lval = float(loss(m, X, Y))
        o = to_numpy(out).astype(np.float64)
        if ds.task == "multiclass":
            return lval, float(np.mean(np.argmax(o, axis=1) == y_true))
        if ds.task == "binary":
            return lval, float(np.mean((o[:, 0] > 0) == (y_true == 1)))
        yt = np.asarray(y_true, dtype=np.float64)
        ss = float(np.sum((yt - yt.mean()) ** 2))
        return lval, 1.0 - float(np.sum((yt - o[:, 0]) ** 2)) / (ss if ss > 0 else 1.0)

    score = "R²" if ds.task == "regression" else "acc"
    fmt = (lambda v: f"{v:7.4f}") if ds.task == "regression" else (lambda v: f"{100 * v:6.2f}%")
    for epoch in range(start + 1, a.epochs + 1):
        if schedule is not None:
            adjust_(state, float(schedule(epoch)))
        try:
            state, params = train(loss, params, loader, state, progress=not a.no_progress)
        except DomainError as e:
            raise UserError(f"epoch {epoch}: {e} (non-finite loss; try a smaller learning rate). "
                            + (f"The checkpoint of epoch {epoch - 1} in {a.out} is kept."
                               if epoch - 1 > start or a.resume else "Nothing was saved.")) from None
        tl, ta = metrics(params, Xtr, Ytr, sp.y_train)
        vl, va = metrics(params, Xva, Yva, sp.y_val)
        history.append({"epoch": epoch, "train_loss": tl, "val_loss": vl, f"train_{score}": ta, f"val_{score}": va})
        print(f"epoch {epoch:3d}/{a.epochs}  train loss {tl:.4f}  {score} {fmt(ta)}   "
              f"val loss {vl:.4f}  {score} {fmt(va)}", flush=True)
        save_checkpoint(ckpt, params, state, epoch=epoch, step=epoch * len(loader), schedule_position=epoch,
                        rng=loader.rng, extra={"config": config, "history": history})
    atomic_write(os.path.join(a.out, "history.json"),
                  lambda f: f.write(json.dumps({"config": config, "history": history}, indent=1).encode()))
    if history:
        _plot(os.path.join(a.out, "loss.png"), history, ds.task, f"fluxtrain fit: {ds.name} ({loss_name})")
        last = history[-1]
        print(f"done: validation {score} {fmt(last[f'val_{score}']).strip()} after {last['epoch']} epochs; "
              f"wrote {ckpt}, {os.path.join(a.out, 'loss.png')}")
    return 0
