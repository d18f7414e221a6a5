"""Safe parsing of ``--opt "Adam(0.001)"`` and ``--schedule "CosAnneal(l0=..., ...)"``.

The text is parsed with :mod:`ast` and only a tiny language is accepted: a call (or bare
name) of a known constructor, whose arguments are numbers, booleans, ``None``, strings,
tuples/lists of these, and nested calls of known constructors. Nothing is ever evaluated
with ``eval``; attribute access, subscripts, operators other than a sign, lambdas and
comprehensions are refused.
"""
from __future__ import annotations

import ast
from typing import Any, Callable, Mapping

from .commands import UserError

__all__ = ["parse_call", "parse_rule", "parse_schedule"]

def parse_call(text: str, names: Mapping[str, Callable[..., Any]], *, option: str, what: str) -> Any:
    """Build the object described by ``text`` from the constructors in ``names``.

    ``option`` ("--opt") and ``what`` ("optimisation rule") only shape the error messages,
    which are :class:`~fluxtrain.cli.commands.UserError` (one line, exit status 2).
    """
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{option} is empty; expected e.g. {option} \"{_example(option)}\"")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise UserError(f"malformed {option} {text!r}: {e.msg} (expected e.g. \"{_example(option)}\")") from None
    return _build(tree.body, names, option, what, text)


def _example(option: str) -> str:
    return "Adam(0.001)" if option == "--opt" else "CosAnneal(l0=0.01, l1=0.001, period=10)"


def _build(node: ast.AST, names, option, what, text) -> Any:
    if isinstance(node, ast.Call):
        ctor = _ctor(node.func, names, option, what, text)
        args = [_value(a, names, option, what, text) for a in node.args]
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise UserError(f"malformed {option} {text!r}: ** arguments are not allowed")
            kwargs[kw.arg] = _value(kw.value, names, option, what, text)
        try:
            return ctor(*args, **kwargs)
        except (TypeError, ValueError) as e:
            name = node.func.id  # type: ignore[attr-defined]
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"bad arguments in {option} {text!r} for {name}: {msg}") from None
    if isinstance(node, ast.Name):  # a bare name: the constructor with its defaults
        return _build(ast.Call(func=node, args=[], keywords=[]), names, option, what, text)
    raise UserError(f"malformed {option} {text!r}: expected {_a(what)} such as \"{_example(option)}\"")


def _ctor(func: ast.AST, names, option, what, text):
    if not isinstance(func, ast.Name):
        raise UserError(f"malformed {option} {text!r}: only plain names can be called (e.g. \"{_example(option)}\")")
    if func.id in names:
        return names[func.id]
    known = ", ".join(sorted(names))
    raise UserError(f"unknown {what} {func.id!r} in {option} {text!r}; known: {known}")


def _value(node: ast.AST, names, option, what, text) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool, str, type(None))):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float))
            and not isinstance(node.operand.value, bool)):
        v = node.operand.value
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_value(e, names, option, what, text) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, (ast.Call, ast.Name)) and _is_ctor_node(node, names):
        return _build(node, names, option, what, text)
    if isinstance(node, ast.Name):
        raise UserError(f"unknown name {node.id!r} in {option} {text!r} (only numbers, tuples and "
                        f"{what}s are allowed)")
    raise UserError(f"malformed {option} {text!r}: arguments must be numbers, booleans, tuples or "
                    f"nested {what}s")


def _is_ctor_node(node: ast.AST, names) -> bool:
    f = node.func if isinstance(node, ast.Call) else node
    return isinstance(f, ast.Name) and (f.id in names or isinstance(node, ast.Call))


def _rule_names() -> dict[str, Callable[..., Any]]:
    from .. import optimise
    names: dict[str, Callable[..., Any]] = dict(optimise.RULES)
    for old in optimise.OLD_NAMES:  # SGD, ADAM, ...: build the new rule with a FutureWarning
        names.setdefault(old, getattr(optimise, old))
    return names


def parse_rule(text: str, notes: list[str] | None = None) -> Any:
    """``--opt`` text -> an optimisation rule (``fluxtrain.optimise.RULES`` plus the old names
    of ``fluxtrain.optimise.OLD_NAMES``: ``SGD``, ``ADAM``, ...). ``RMSProp(0.001, 0.9)``,
    ``OptimiserChain(ClipNorm(1.0), Adam(1e-3))`` and keyword forms such as
    ``Adam(eta=0.01, beta=(0.9, 0.99))`` all work. Deprecation messages of old names are
    appended to ``notes`` (when given) instead of being emitted as warnings.
    """
    import warnings

    from ..optimise import Rule
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rule = parse_call(text, _rule_names(), option="--opt", what="optimisation rule")
    for w in caught:
        if notes is not None:
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(rule, Rule):
        raise UserError(f"--opt {text!r} does not describe an optimisation rule")
    _probe_rule(rule, text)
    return rule


def _probe_rule(rule: Any, text: str) -> None:
    """One step on a tiny NumPy parameter, so that bad hyper-parameters (``Adam(eta="a")``,
    ``Adam(beta=1)``) are reported now as one line, not as a traceback mid-training."""
    import warnings

    import numpy as np

    from ..optimise import setup, update
    probe = {"w": np.ones(3, dtype=np.float32)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = setup(rule, probe)
            update(state, probe, {"w": np.full(3, 0.5, dtype=np.float32)})
    except Exception as e:  # noqa: BLE001 - any failure here is a bad --opt
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--opt {text!r} cannot be used: {msg}") from None


def _schedule_names() -> dict[str, Callable[..., Any]]:
    from .. import schedules
    out = {}
    for n in schedules.__all__:
        obj = getattr(schedules, n)
        if isinstance(obj, type) and issubclass(obj, schedules.Schedule) and obj is not schedules.Schedule:
            out[n] = obj
    return out


def parse_schedule(text: str) -> Any:
    """``--schedule`` text -> a ParameterSchedulers-style schedule (``CosAnneal(l0=..., l1=...,
    period=...)``, ``Exp(0.01, 0.9)``, ``Sequence(...)``, ...)."""
    from ..schedules import Schedule
    sched = parse_call(text, _schedule_names(), option="--schedule", what="schedule")
    if not isinstance(sched, Schedule):
        raise UserError(f"--schedule {text!r} does not describe a schedule")
    import math
    try:  # the first values must be real numbers (a learning rate per epoch)
        values = [float(sched(t)) for t in (1, 2)]
    except Exception as e:  # noqa: BLE001 - any failure here is a bad --schedule
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--schedule {text!r} cannot be used: {msg}") from None
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"--schedule {text!r} gives a non-finite learning rate ({values})")
    return sched


def _a(what: str) -> str:
    return ("an " if what[:1] in "aeiou" else "a ") + what
