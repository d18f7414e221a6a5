"""Data for ``fluxtrain fit``: scikit-learn's bundled data sets or a CSV file, a fixed
train/validation split from the seed, and features standardised with training statistics."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .commands import UserError

__all__ = ["Dataset", "Split", "BUILTIN", "load_dataset", "split_dataset"]

#: Data sets shipped inside scikit-learn (nothing is downloaded) and their task.
BUILTIN = {
    "digits": "multiclass",
    "iris": "multiclass",
    "wine": "multiclass",
    "breast_cancer": "binary",
    "diabetes": "regression",
}
TASKS = ("multiclass", "binary", "regression")
_MAX_AUTO_CLASSES = 20  # an integer CSV target with more distinct values is a regression


@dataclass
class Dataset:
    name: str
    X: np.ndarray            # (n, features) float64
    y: np.ndarray            # (n,) class index (int64) or target value (float64)
    task: str                # 'multiclass', 'binary' or 'regression'
    classes: list = field(default_factory=list)


@dataclass
class Split:
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


def load_dataset(data: str, target: str | None = None, task: str = "auto") -> Dataset:
    """``data`` is a built-in name (:data:`BUILTIN`) or the path of a CSV file with a header
    row, in which case ``target`` names the column to predict."""
    if task not in ("auto",) + TASKS + ("classification",):
        raise UserError(f"--task must be auto, classification, binary, multiclass or regression, got {task!r}")
    if data in BUILTIN:
        if target is not None:
            raise UserError(f"--target is only for CSV files; the {data} data set has its own target")
        ds = _load_builtin(data)
    elif data.lower().endswith(".csv") or os.path.sep in data or os.path.exists(data):
        ds = _load_csv(data, target)
    else:
        raise UserError(f"unknown data set {data!r}; use one of {', '.join(BUILTIN)} or the path of a CSV file")
    return _with_task(ds, task)


def _load_builtin(name: str) -> Dataset:
    try:
        import sklearn.datasets as skd
    except ImportError:
        raise UserError("the built-in data sets need scikit-learn: pip install 'fluxtrain[fit]'") from None
    X, y = getattr(skd, f"load_{name}")(return_X_y=True)
    task = BUILTIN[name]
    X = np.asarray(X, dtype=np.float64)
    if task == "regression":
        return Dataset(name, X, np.asarray(y, dtype=np.float64), task)
    classes, idx = np.unique(y, return_inverse=True)
    return Dataset(name, X, idx.astype(np.int64), task, [c.item() for c in classes])


def _load_csv(path: str, target: str | None) -> Dataset:
    if target is None:
        raise UserError(f"--target COLUMN is required with a CSV file ({path})")
    if not os.path.isfile(path):
        raise UserError(f"no such file: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not rows:
        raise UserError(f"{path} is empty")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if target not in header:
        raise UserError(f"{path} has no column {target!r}; its columns are: {', '.join(header)}")
    if len(body) < 2:
        raise UserError(f"{path} has {len(body)} data row(s); at least 2 are needed")
    if len(header) < 2:
        raise UserError(f"{path} has no feature columns besides the target {target!r}")
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise UserError(f"{path}, line {i}: {len(r)} fields but the header has {len(header)}")
    t = header.index(target)
    features = [j for j in range(len(header)) if j != t]
    X = np.empty((len(body), len(features)), dtype=np.float64)
    for c, j in enumerate(features):
        for i, r in enumerate(body):
            X[i, c] = _number(r[j], path, header[j], i + 2)
    raw = [r[t].strip() for r in body]
    for i, v in enumerate(raw):
        if v == "":
            raise UserError(f"{path}, line {i + 2}: the target column {target!r} is empty")
    try:
        yv = np.asarray([float(v) for v in raw])
        numeric = bool(np.all(np.isfinite(yv)))
    except ValueError:
        numeric = False
    name = os.path.basename(path)
    if numeric:
        integral = bool(np.all(yv == np.round(yv)))
        classes = np.unique(yv)
        if integral and len(classes) <= _MAX_AUTO_CLASSES:
            idx = np.searchsorted(classes, yv)
            labels = [int(c) for c in classes]
            return Dataset(name, X, idx.astype(np.int64), "binary" if len(classes) == 2 else "multiclass", labels)
        return Dataset(name, X, yv.astype(np.float64), "regression")
    classes, idx = np.unique(np.asarray(raw), return_inverse=True)
    return Dataset(name, X, idx.astype(np.int64), "binary" if len(classes) == 2 else "multiclass",
                   [str(c) for c in classes])


def _number(cell: str, path: str, column: str, line: int) -> float:
    s = cell.strip()
    if s == "":
        raise UserError(f"{path}, line {line}: column {column!r} is empty (missing values are not supported)")
    try:
        v = float(s)
    except ValueError:
        raise UserError(f"{path}, line {line}: column {column!r} is not numeric ({s!r})") from None
    if not math.isfinite(v):
        raise UserError(f"{path}, line {line}: column {column!r} is not finite ({s!r})")
    return v


def _with_task(ds: Dataset, task: str) -> Dataset:
    """Apply ``--task`` (``auto`` keeps what the data say)."""
    if task == "auto" or task == ds.task:
        return ds
    if task == "regression":
        if ds.classes and all(isinstance(c, (int, float)) for c in ds.classes):
            return Dataset(ds.name, ds.X, np.asarray(ds.classes, dtype=np.float64)[ds.y], "regression")
        raise UserError(f"--task regression needs a numeric target; {ds.name}'s target has labels")
    # classification of any kind
    if ds.task == "regression":
        values = ds.y
        if not np.all(values == np.round(values)):
            raise UserError(f"--task {task}: {ds.name}'s target is continuous; classification needs class labels")
        classes, idx = np.unique(values, return_inverse=True)
        ds = Dataset(ds.name, ds.X, idx.astype(np.int64), "binary" if len(classes) == 2 else "multiclass",
                     [int(c) for c in classes])
    k = len(ds.classes)
    if task == "classification":
        return ds
    if task == "binary":
        if k != 2:
            raise UserError(f"--task binary: {ds.name}'s target has {k} classes, not 2")
        return Dataset(ds.name, ds.X, ds.y, "binary", ds.classes)
    if k < 2:
        raise UserError(f"--task multiclass: {ds.name}'s target has only {k} class")
    return Dataset(ds.name, ds.X, ds.y, "multiclass", ds.classes)


def split_dataset(ds: Dataset, seed: int, val_fraction: float = 0.2) -> Split:
    """A fixed random split (from ``seed``), features standardised with the training split's
    mean and standard deviation (a regression target too). Returns float32 features."""
    n = len(ds.y)
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_val < 1:
        raise UserError(f"{ds.name} has too few rows ({n}) for a validation split")
    perm = np.random.default_rng([seed, 1]).permutation(n)
    val, tr = perm[:n_val], perm[n_val:]
    mu = ds.X[tr].mean(axis=0)
    sd = ds.X[tr].std(axis=0)
    sd[sd == 0] = 1.0  # constant columns stay constant (zero) instead of dividing by zero

    def fx(idx):
        return ((ds.X[idx] - mu) / sd).astype(np.float32)

    y = ds.y
    if ds.task == "regression":
        ym, ys = y[tr].mean(), y[tr].std()
        y = ((y - ym) / (ys if ys > 0 else 1.0)).astype(np.float32)
    return Split(fx(tr), y[tr], fx(val), y[val])
