"""fluxtrain: Flux.jl's training toolkit for NumPy, PyTorch and JAX arrays.

Losses (``Flux.Losses``), optimisation rules and state trees (Optimisers.jl), schedules
(ParameterSchedulers.jl) and the training API (``gradient``, ``setup``, ``update_``,
``train``, ``DataLoader``, callbacks, one-hot helpers), with Flux's numbers.

Importing fluxtrain never imports torch or JAX; a backend is used only when your arrays
come from it.
"""
from ._errors import ArgumentError, DimensionMismatch, DomainError
from . import losses, optimise, schedules, train
from .losses import *  # noqa: F401,F403
from .optimise import *  # noqa: F401,F403
from .schedules import *  # noqa: F401,F403
from .train import *  # noqa: F401,F403
from .onehot import onehot, onehotbatch, onecold

__version__ = "0.1.0"

# ``train`` is both a subpackage and Flux's ``train`` function; the star import above binds
# the function, so the subpackage's names are read from sys.modules.
import sys as _sys

__all__ = (
    ["ArgumentError", "DimensionMismatch", "DomainError", "losses", "optimise", "schedules", "train"]
    + ["onehot", "onehotbatch", "onecold"]
    + losses.__all__ + optimise.__all__ + schedules.__all__ + _sys.modules[__name__ + ".train"].__all__
)
