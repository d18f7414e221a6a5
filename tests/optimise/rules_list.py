"""One list of every rule drives the generic tests (as Optimisers.jl's test suite does)."""
import dataclasses

import fluxtrain as ft

ALL_RULES = [
    ft.Descent(0.1), ft.Momentum(), ft.Nesterov(), ft.RMSProp(), ft.RMSProp(centred=True),
    ft.Adam(), ft.RAdam(), ft.AdaMax(), ft.OAdam(), ft.AdaGrad(), ft.AdaDelta(), ft.AMSGrad(),
    ft.NAdam(), ft.AdamW(lambda_=0.01), ft.AdamW(couple=False, lambda_=1e-3), ft.AdaBelief(),
    ft.Lion(), ft.Rprop(),
    ft.OptimiserChain(ft.WeightDecay(), ft.Adam()), ft.OptimiserChain(ft.SignDecay(), ft.Descent()),
    ft.OptimiserChain(ft.ClipGrad(0.5), ft.Momentum()), ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam()),
    ft.OptimiserChain(ft.AccumGrad(2), ft.Adam()), ft.OptimiserChain(),
    ft.MixedPrecision("float64", ft.Adam()),
]

# Rules that need larger learning rates / more steps to converge on a small quadratic.
CONVERGE = {
    "Descent": 0.1, "Momentum": 0.05, "Nesterov": 0.05, "RMSProp": 0.01, "Adam": 0.05,
    "RAdam": 0.05, "AdaMax": 0.05, "OAdam": 0.05, "AdaGrad": 0.5, "AMSGrad": 0.05,
    "NAdam": 0.05, "AdamW": 0.05, "AdaBelief": 0.05, "Lion": 0.01, "Rprop": 0.01,
}


def rid(rule) -> str:
    return repr(rule)[:60]


def map_hyper(rule, f):
    """``rule`` with ``f`` applied to every float hyper-parameter (alone or in a tuple, as
    ``beta``), in chains and wrappers too, except the fields that select code
    (``_static_fields``, e.g. ClipNorm's ``p``)."""
    if isinstance(rule, ft.OptimiserChain):
        return ft.OptimiserChain(*[map_hyper(o, f) for o in rule.opts])
    if isinstance(rule, ft.MixedPrecision):
        return ft.MixedPrecision(rule.T, map_hyper(rule.rule, f))
    changes = {}
    for fl in dataclasses.fields(rule):
        v = getattr(rule, fl.name)
        if fl.name in type(rule)._static_fields:
            continue
        if type(v) is float:
            changes[fl.name] = f(v)
        elif type(v) is tuple and v and all(type(e) is float for e in v):
            changes[fl.name] = tuple(map(f, v))
    return dataclasses.replace(rule, **changes)
