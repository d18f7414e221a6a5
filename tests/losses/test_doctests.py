"""Every docstring example of the losses and math helpers runs and prints what it says."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "fluxtrain._backend.math", "fluxtrain.losses.regression", "fluxtrain.losses.classification",
    "fluxtrain.losses.margin", "fluxtrain.losses.segmentation", "fluxtrain.losses.utils",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0
    assert result.attempted > 0 or name.endswith("utils")


def test_every_loss_has_formula_defaults_and_example():
    import fluxtrain.losses as L
    for name in L.__all__:
        if name == "ctc_loss":
            continue
        doc = getattr(L, name).__doc__ or ""
        assert ">>>" in doc, f"{name} has no example"
        assert "``" in doc, f"{name} has no formula line"
